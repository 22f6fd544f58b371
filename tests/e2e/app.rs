//! `spawn_app()`: a real `powerdial serve` process on ephemeral ports with a
//! fresh SQLite file in a temp dir, killed when dropped.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server and what tests need to reach it.
pub struct App {
    child: Child,
    _dir: tempfile::TempDir,
    config: PathBuf,
    pub sip: SocketAddr,
    pub http: SocketAddr,
    pub log: PathBuf,
    pub token: String,
    /// Runs with the whole day open for calls (see [`spawn_app_with`]).
    whole_day: bool,
}

/// Agents every app has: (username, password).
pub const AGENTS: &[(&str, &str)] = &[("alice", "alice-secret"), ("bob", "bob-secret")];

/// A port free on 127.0.0.1 for both UDP and TCP at the time of the call,
/// and not handed out before in this test process: the kernel may give a
/// port it just released to the next bind to port 0, so two calls in a row
/// (an app's SIP and HTTP ports) could otherwise get the same one.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind udp");
        let port = udp.local_addr().expect("addr").port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.push(port);
            return port;
        }
    }
    panic!("no free port for UDP+TCP on 127.0.0.1");
}

/// The first port of `len` UDP ports in a row free on 127.0.0.1, even,
/// below the kernel's ephemeral range (32768 and up) and the default
/// `rtp_ports`, so sockets other tests bind to port 0 meanwhile cannot
/// take them.
pub fn free_rtp_range(len: u16) -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread the tests of one run over the region.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 11_000 + (std::process::id() % 200) as u16 * 40;
    for _ in 0..200 {
        let step = NEXT.fetch_add(1, Ordering::Relaxed) % 200;
        let base = (start + step * 40) % 8_000 + 11_000;
        let base = base & !1;
        if (base..base + len).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no {len} free UDP ports in a row below 19000");
}

/// Options for [`spawn_app_with`]: extra TOML appended to the config.
#[derive(Default)]
pub struct AppOptions {
    /// Lines added to the `[server]` table.
    pub server_toml: String,
    /// Tables appended to the config.
    pub extra_toml: String,
    pub database_url: Option<String>,
    /// More `server.sip_listen` entries (e.g. `tls:127.0.0.1:PORT`).
    pub extra_sip_listen: Vec<String>,
}

pub fn spawn_app() -> App {
    spawn_app_with(AppOptions::default())
}

pub fn spawn_app_with(opts: AppOptions) -> App {
    let dir = tempfile::tempdir().expect("tempdir");
    let sip_port = free_port();
    let http_port = free_port();
    let token = "test-token".to_string();
    let db = opts
        .database_url
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("powerdial.db").display()));
    // Calling hours (SPEC §4, default 08:00–21:00 in each lead's zone)
    // would make every test that dials pass or fail by the time of day: a
    // test that is not about them runs with the whole day open; the tests
    // about them set `calling_hours` themselves.
    let whole_day = !opts.extra_toml.contains("calling_hours");
    let mut agents = String::new();
    for (u, p) in AGENTS {
        agents.push_str(&format!(
            "[[agent]]\nusername = \"{u}\"\npassword = \"{p}\"\n\n"
        ));
    }
    let config = format!(
        r#"[server]
sip_listen = ["udp:127.0.0.1:{sip_port}", "tcp:127.0.0.1:{sip_port}"{more_listen}]
http_listen = "127.0.0.1:{http_port}"
domain = "127.0.0.1"
media_ip = "127.0.0.1"
data_dir = "{data}"
{server_extra}

[database]
url = "{db}"

[admin]
token = "{token}"

{agents}
{extra}
"#,
        data = dir.path().join("data").display(),
        extra = opts.extra_toml,
        server_extra = opts.server_toml,
        more_listen = opts
            .extra_sip_listen
            .iter()
            .map(|l| format!(", \"{l}\""))
            .collect::<String>(),
    );
    let cfg_path = dir.path().join("powerdial.toml");
    std::fs::write(&cfg_path, config).expect("write config");
    let log = dir.path().join("powerdial.log");
    let log_file = std::fs::File::create(&log).expect("log file");
    let mut command = Command::new(env!("CARGO_BIN_EXE_powerdial"));
    if whole_day {
        command.env(
            "POWERDIAL_DIALER_CALLING_HOURS",
            r#"{ start = "00:00", end = "24:00" }"#,
        );
    }
    let child = command
        .args(["serve", "--config"])
        .arg(&cfg_path)
        .env("POWERDIAL_LOG", "debug")
        .env_remove("POWERDIAL_DATABASE_URL")
        .env_remove("POWERDIAL_ADMIN_TOKEN")
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("spawn powerdial");
    let app = App {
        child,
        _dir: dir,
        config: cfg_path,
        sip: SocketAddr::from(([127, 0, 0, 1], sip_port)),
        http: SocketAddr::from(([127, 0, 0, 1], http_port)),
        log,
        token,
        whole_day,
    };
    app.wait_ready();
    app
}

impl App {
    /// Waits until an OPTIONS over UDP gets a 200 (the server is up).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(resp) = self.udp_exchange(&options_request(self.sip, "ready"), 200) {
                // The HTTP API binds after the SIP task starts.
                if resp.starts_with("SIP/2.0 200") && self.http_is_up(deadline) {
                    return;
                }
            }
        }
        panic!("powerdial did not come up; log:\n{}", self.log_text());
    }

    /// Waits until the HTTP API accepts connections, or `deadline`.
    fn http_is_up(&self, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(self.http).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Stops the server and starts it again on the same config and data
    /// (a restart keeps registrations and sessions).
    pub fn restart(&mut self) {
        // A graceful stop (SIGTERM): the server saves what it has accepted
        // before it exits, as it would on a service restart.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn();
    }

    /// Kills the server with SIGKILL (a crash: nothing is flushed) and
    /// starts it again on the same config and data.
    pub fn kill_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn();
    }

    fn respawn(&mut self) {
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_powerdial"));
        if self.whole_day {
            command.env(
                "POWERDIAL_DIALER_CALLING_HOURS",
                r#"{ start = "00:00", end = "24:00" }"#,
            );
        }
        self.child = command
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("POWERDIAL_LOG", "debug")
            .env_remove("POWERDIAL_DATABASE_URL")
            .env_remove("POWERDIAL_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("respawn powerdial");
        self.wait_ready();
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `within` for the
    /// process to exit; its exit status, `None` if it did not exit.
    pub fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The server's log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one datagram from a fresh socket and returns the first
    /// response (as text), or `None` after `wait_ms`.
    pub fn udp_exchange(&self, msg: &[u8], wait_ms: u64) -> Option<String> {
        let sock = UdpSocket::bind("127.0.0.1:0").ok()?;
        sock.send_to(msg, self.sip).ok()?;
        recv_final(&sock, wait_ms)
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `GET path` on the HTTP API with the admin token; (status, body).
    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_request(self.http, "GET", path, Some(&self.token), None)
    }

    /// `POST path` with a JSON body and the admin token, asserting a 200
    /// or 201; the JSON answer.
    pub fn post_ok(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        let (code, text) = http_request(
            self.http,
            "POST",
            path,
            Some(&self.token),
            Some(&body.to_string()),
        );
        assert!(code == 200 || code == 201, "POST {path}: {code} {text}");
        serde_json::from_str(&text).expect("JSON")
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- powerdial log ----\n{}", self.log_text());
        }
    }
}

/// Receives datagrams until a non-100 response arrives or `wait_ms` passes.
pub fn recv_final(sock: &UdpSocket, wait_ms: u64) -> Option<String> {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let mut buf = vec![0u8; 65536];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        if left.is_zero() {
            return None;
        }
        sock.set_read_timeout(Some(left)).ok()?;
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("SIP/2.0 100 ") {
            continue;
        }
        return Some(text);
    }
}

/// A minimal valid OPTIONS to powerdial.
pub fn options_request(to: SocketAddr, tag: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:{to} SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-{tag}-{n}\r\n\
         Max-Forwards: 70\r\n\
         To: <sip:{to}>\r\n\
         From: <sip:probe@127.0.0.1>;tag={tag}\r\n\
         Call-ID: {tag}-{n}@probe\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n",
        n = std::process::id() as u64 * 1000 + rand_u16() as u64
    )
    .into_bytes()
}

fn rand_u16() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static N: AtomicU16 = AtomicU16::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// One HTTP/1.1 request (Connection: close) with `extra` header lines
/// (each ending in CRLF); (status, header block, body).
pub fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    extra: &str,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect http");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}{extra}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("write http");
    let mut out = String::new();
    s.read_to_string(&mut out).ok();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (status, head.to_string(), body.to_string())
}

/// [`http_exchange`] without extra headers, keeping the header block.
pub fn http_request_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    http_exchange(addr, method, path, token, "", body)
}

/// A tiny blocking HTTP/1.1 client (Connection: close): (status, body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let (status, _, body) = http_exchange(addr, method, path, token, "", body);
    (status, body)
}

/// Finds a program on PATH or fails with what to install.
pub fn require_program(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "`{name}` is not installed: `apt-get install -y {package}` (or run `bash .ci/run`, which installs every peer)"
    );
}

/// The Python with pjsua2 (POWERDIAL_PYTHON, else the CI venv).
pub fn pjsua_python() -> PathBuf {
    let p = std::env::var_os("POWERDIAL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/.cache/powerdial-venv/bin/python"));
    let ok = Command::new(&p)
        .args(["-c", "import pjsua2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "no Python with pjsua2 at {}: set POWERDIAL_PYTHON or run `bash .ci/run` (it creates the venv)",
        p.display()
    );
    p
}

/// The repository root (fixtures, peer scripts).
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A sample's value in the `/metrics` text, `name` with its labels as
/// printed (`powerdial_sip_bans_total{reason="scanner"}`); 0 when absent.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}
