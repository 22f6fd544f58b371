//! A real `powerdial serve` under test: its config, its process, a minimal
//! blocking HTTP/1.1 client for its API, and its CPU time and RSS from
//! /proc.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

pub const TOKEN: &str = "load-token";

/// A free port for UDP and TCP on 127.0.0.1.
pub fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1")
}

/// What goes into a trial's config.
pub struct ServerConfig<'a> {
    pub dir: &'a Path,
    pub sip_port: u16,
    pub http_port: u16,
    pub carrier: SocketAddr,
    pub ring_timeout: f64,
    pub max_cps: Option<f64>,
    /// `database.url`.
    pub database: &'a str,
    /// `[[agent]]` entries: (username, password).
    pub agents: &'a [(String, String)],
}

impl ServerConfig<'_> {
    pub fn toml(&self) -> String {
        let mut s = format!(
            r#"[server]
sip_listen = ["udp:127.0.0.1:{sip}"]
http_listen = "127.0.0.1:{http}"
domain = "127.0.0.1"
media_ip = "127.0.0.1"
data_dir = "{dir}/data"
digest_algorithms = ["MD5"]
drain_timeout = 1

[database]
url = "{database}"

[admin]
token = "{TOKEN}"

[security]
# One address plays every phone and the carrier: no per-address limit.
rate_limit = 0

[dialer]
ring_timeout = {rt}
reduced_ring_timeout = {rt}
allow_short_ring_timeout = true
wrap_up_idle = 0
# A benchmark dials whatever the hour in the leads' zones (SPEC calling
# hours would hold every lead at night).
calling_hours = {{ start = "00:00", end = "24:00" }}

[[trunk]]
name = "carrier"
uri = "sip:{carrier}"
caller_id = "+442079460999"
"#,
            sip = self.sip_port,
            http = self.http_port,
            dir = self.dir.display(),
            rt = self.ring_timeout,
            carrier = self.carrier,
            database = self.database,
        );
        if let Some(cps) = self.max_cps {
            s.push_str(&format!("max_cps = {cps}\n"));
        }
        for (u, p) in self.agents {
            s.push_str(&format!(
                "\n[[agent]]\nusername = \"{u}\"\npassword = \"{p}\"\n"
            ));
        }
        s
    }
}

/// A running `powerdial serve`.
pub struct Server {
    child: Child,
    pub http: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    pub fn start(
        bin: &Path,
        config: &Path,
        http: SocketAddr,
        sip: SocketAddr,
        log_level: &str,
    ) -> Result<Server> {
        let log = config.with_extension("log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config)
            .env("POWERDIAL_LOG", log_level)
            .env_remove("POWERDIAL_DATABASE_URL")
            .env_remove("POWERDIAL_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let _ = sip;
        let mut s = Server { child, http, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok((200, _)) = s.get("/api/v1/agents") {
                return Ok(s);
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                bail!("powerdial exited ({st}); log: {}", s.log.display());
            }
            if Instant::now() > deadline {
                let _ = s.child.kill();
                bail!("powerdial did not come up; log: {}", s.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then SIGKILL after 15 s.
    pub fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http(self.http, "GET", path, None)
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<(u16, serde_json::Value)> {
        let (code, text) = http(self.http, "POST", path, Some(body.to_string().as_bytes()))?;
        Ok((
            code,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        ))
    }

    pub fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let (code, text) = self.get(path)?;
        if code != 200 {
            bail!("GET {path}: {code} {text}");
        }
        Ok(serde_json::from_str(&text)?)
    }

    /// (CPU seconds, RSS bytes) of the process.
    pub fn usage(&self) -> (f64, u64) {
        proc_usage(self.child.id())
    }

    /// Heap bytes in use of the process as its `/metrics` reports them
    /// (`powerdial_heap_bytes`, glibc's mallinfo2), or `None` when the
    /// server does not say (an older build, another allocator).
    pub fn heap(&self) -> Option<u64> {
        let (code, text) = self.get("/metrics").ok()?;
        if code != 200 {
            return None;
        }
        heap_of_metrics(&text)
    }

    /// Open file descriptors of the server (sockets, the database, logs).
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `powerdial_heap_bytes` gauge of a `/metrics` text; `None` when
/// absent or 0 (the server cannot tell).
pub fn heap_of_metrics(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("powerdial_heap_bytes "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&v| v > 0)
}

/// The value of the counter `name` (`NAME VALUE` line) of a `/metrics`
/// text; `None` when absent.
pub fn counter(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let v = l.strip_prefix(name)?.strip_prefix(' ')?;
        Some(v.trim().parse::<f64>().ok()? as u64)
    })
}

/// (CPU seconds, RSS bytes) of `pid` from /proc.
pub fn proc_usage(pid: u32) -> (f64, u64) {
    let tck = 100.0; // USER_HZ on Linux
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // utime and stime are fields 14 and 15; `rest` starts at field 3.
            Some((f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?) / tck)
        })
        .unwrap_or(0.0);
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            l.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}

/// CPU seconds of `pid` and its children (Kamailio's worker processes).
pub fn tree_cpu(pid: u32) -> f64 {
    let mut total = proc_usage(pid).0;
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                });
            if ppid == Some(pid) {
                total += proc_usage(child).0;
            }
        }
    }
    total
}

/// The driver's own CPU seconds (all threads).
pub fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
        t(ru.ru_utime) + t(ru.ru_stime)
    }
}

/// Datagrams the kernel dropped on these local UDP ports (full receive
/// buffers), from /proc/net/udp.
pub fn udp_drops(ports: &[u16]) -> u64 {
    let Ok(text) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
            ports
                .contains(&port)
                .then(|| f.last()?.parse::<u64>().ok())?
        })
        .sum()
}

/// One HTTP/1.1 request with the admin token (`Connection: close`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let body = body.unwrap_or(b"");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no HTTP response"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad status line"))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Runs one SQL statement with `psql` (schemas for PostgreSQL trials).
pub fn psql(url: &str, sql: &str) -> Result<()> {
    let ok = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!("psql {sql:?} failed (is psql installed and {url} reachable?)");
    }
    Ok(())
}

/// `base` with its search path set to `schema`.
pub fn pg_url(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// The cumulative buckets `(le, count)` of a Prometheus histogram in a
/// `/metrics` text (OpenMetrics `NAME_bucket{le="…"} N` lines).
pub fn histogram_buckets(text: &str, name: &str) -> Vec<(String, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, rest) = rest.split_once('"')?;
            let n = rest.trim_start_matches('}').trim().split(' ').next()?;
            Some((le.to_string(), n.parse::<f64>().ok()? as u64))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunks() {
        assert_eq!(
            super::dechunk("4\r\nab{}\r\n3\r\n[1]\r\n0\r\n\r\n"),
            "ab{}[1]"
        );
    }

    #[test]
    fn reads_a_histograms_buckets() {
        let text = "# TYPE x histogram\nx_bucket{le=\"0.001\"} 3\nx_bucket{le=\"+Inf\"} 5\nx_sum 0.1\ny_bucket{le=\"1\"} 9\n";
        assert_eq!(
            super::histogram_buckets(text, "x"),
            vec![("0.001".to_string(), 3), ("+Inf".to_string(), 5)]
        );
    }

    #[test]
    fn reads_the_heap_gauge() {
        let text = "# HELP powerdial_heap_bytes Heap bytes.\n# TYPE powerdial_heap_bytes gauge\npowerdial_heap_bytes 12345678\npowerdial_heap_bytes_other 1\n# EOF\n";
        assert_eq!(super::heap_of_metrics(text), Some(12_345_678));
        assert_eq!(super::heap_of_metrics("powerdial_heap_bytes 0\n"), None);
        assert_eq!(super::heap_of_metrics("powerdial_calls_total 3\n"), None);
    }

    #[test]
    fn reads_a_counter() {
        let text = "# TYPE powerdial_rtp_stray_packets counter\npowerdial_rtp_stray_packets_total 7\npowerdial_rtp_stray_packets_created 1.7e9\n";
        assert_eq!(
            super::counter(text, "powerdial_rtp_stray_packets_total"),
            Some(7)
        );
        assert_eq!(super::counter(text, "powerdial_rtp_stray"), None);
    }
}
