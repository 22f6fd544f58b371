//! Drivers for the third-party SIP stacks the tests run against.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::{free_port, pjsua_python, repo, require_program, App};

/// Runs a SIPp scenario from `fixtures/sipp/` once against the app as `user`.
/// `transport` is `u1` (UDP) or `t1` (TCP).
pub fn sipp(app: &App, scenario: &str, transport: &str, user: &str, password: &str) -> Output {
    let sipp = require_program("sipp", "sip-tester");
    let local_port = free_port();
    let trace_dir = tempfile::tempdir().expect("tempdir");
    Command::new(sipp)
        .current_dir(trace_dir.path())
        .arg("-sf")
        .arg(repo().join("fixtures/sipp").join(scenario))
        .args(["-s", user, "-au", user, "-ap", password])
        .args(["-m", "1", "-t", transport, "-i", "127.0.0.1"])
        .args(["-p", &local_port.to_string()])
        .args([
            "-timeout",
            "15s",
            "-timeout_error",
            "-max_recv_loops",
            "100",
        ])
        .args(["-trace_err", "-trace_msg"])
        .arg(app.sip.to_string())
        .stdin(Stdio::null())
        .output()
        .map(|mut o| {
            // Keep the message trace for failure reports.
            for entry in std::fs::read_dir(trace_dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Ok(t) = std::fs::read_to_string(entry.path()) {
                    o.stderr.extend_from_slice(
                        format!("\n== {}\n{t}", entry.path().display()).as_bytes(),
                    );
                }
            }
            o
        })
        .expect("run sipp")
}

/// Registers with PJSIP (pjsua2) and returns the status codes it reported.
pub fn pjsip_register(app: &App, transport: &str, user: &str, password: &str) -> Vec<u16> {
    let py = pjsua_python();
    let dir = tempfile::tempdir().expect("tempdir");
    let result = dir.path().join("result.jsonl");
    let status = Command::new(py)
        .arg(repo().join("tests/peers/pj_register.py"))
        .arg(app.sip.to_string())
        .arg(transport)
        .arg(user)
        .arg(password)
        .arg(&result)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run pj_register.py");
    let text = std::fs::read_to_string(&result).unwrap_or_default();
    assert!(
        status.code() == Some(0) || !text.is_empty(),
        "pj_register.py timed out with no registration state"
    );
    text.lines()
        .filter_map(|l| {
            let at = l.find("\"code\": ")? + 8;
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

/// A baresip instance controlled over its `ctrl_tcp` module.
pub struct Baresip {
    child: Child,
    ctrl: TcpStream,
    /// baresip's UDP console (module `cons`): what its UI shows, such as
    /// a received MESSAGE, is sent to whoever last wrote to it.
    cons: SocketAddr,
    _dir: tempfile::TempDir,
    buf: Vec<u8>,
}

impl Baresip {
    /// Starts baresip with a config of its own in a temp dir. The ports
    /// are picked free, but another test may take one before baresip binds
    /// it (it then exits): such a start is retried with new ports.
    pub fn start() -> Baresip {
        Baresip::start_with("aubridge,src", "")
    }

    /// Like [`start`](Self::start) with another `audio_source` (e.g.
    /// `ausine,440`: a 440 Hz tone, module `ausine`) and `extra` config
    /// lines (modules such as `srtp.so`, `rtp_ports`).
    pub fn start_with(audio_source: &str, extra: &str) -> Baresip {
        let bin = require_program("baresip", "baresip");
        for _attempt in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let sip_port = free_port();
            let ctrl_port = free_port();
            let cons_port = free_port();
            let config = format!(
                "poll_method epoll\n\
                 sip_listen 127.0.0.1:{sip_port}\n\
                 net_interface 127.0.0.1\n\
                 audio_player aubridge,sink\n\
                 audio_source {audio_source}\n\
                 module_path /usr/lib/baresip/modules\n\
                 module g711.so\n\
                 module aubridge.so\n\
                 module_app menu.so\n\
                 module_app ctrl_tcp.so\n\
                 ctrl_tcp_listen 127.0.0.1:{ctrl_port}\n\
                 module cons.so\n\
                 cons_listen 127.0.0.1:{cons_port}\n\
                 {extra}\n"
            );
            std::fs::write(dir.path().join("config"), config).expect("write config");
            std::fs::write(dir.path().join("accounts"), "").expect("write accounts");
            let mut child = Command::new(&bin)
                .arg("-f")
                .arg(dir.path())
                .args(["-t", "60"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn baresip");
            let deadline = Instant::now() + Duration::from_secs(10);
            let ctrl = loop {
                match TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], ctrl_port))) {
                    Ok(s) => break Some(s),
                    Err(_) if Instant::now() < deadline => {
                        if matches!(child.try_wait(), Ok(Some(_))) {
                            break None; // it exited: a port was taken
                        }
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    Err(_) => break None,
                }
            };
            let Some(ctrl) = ctrl else {
                let _ = child.kill();
                let _ = child.wait();
                continue;
            };
            return Baresip {
                child,
                ctrl,
                cons: SocketAddr::from(([127, 0, 0, 1], cons_port)),
                _dir: dir,
                buf: Vec::new(),
            };
        }
        panic!("baresip did not start in three tries (its control port never opened)");
    }

    /// A socket that receives what baresip's UI shows from now on (its
    /// `cons` module answers the last address that wrote to it; the
    /// newline written here only makes the menu print its help).
    pub fn ui(&self) -> UdpSocket {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind console socket");
        sock.send_to(b"\n", self.cons)
            .expect("write to baresip's console");
        sock
    }

    /// Sends a ctrl_tcp command (netstring-framed JSON).
    pub fn command(&mut self, command: &str, params: &str) {
        let json = format!(
            "{{\"command\":\"{command}\",\"params\":\"{}\",\"token\":\"t\"}}",
            params.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let frame = format!("{}:{},", json.len(), json);
        self.ctrl.write_all(frame.as_bytes()).expect("write ctrl");
    }

    /// Waits for an event whose `type` is one of `types`; returns the JSON.
    pub fn wait_event(&mut self, types: &[&str], timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(msg) = self.next_frame() {
                if types
                    .iter()
                    .any(|t| msg.contains(&format!("\"type\":\"{t}\"")))
                {
                    return Some(msg);
                }
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            self.ctrl
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .ok()?;
            let mut chunk = [0u8; 4096];
            match self.ctrl.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }

    fn next_frame(&mut self) -> Option<String> {
        let colon = self.buf.iter().position(|b| *b == b':')?;
        let len: usize = std::str::from_utf8(&self.buf[..colon]).ok()?.parse().ok()?;
        if self.buf.len() < colon + 1 + len + 1 {
            return None;
        }
        let msg = String::from_utf8_lossy(&self.buf[colon + 1..colon + 1 + len]).into_owned();
        self.buf.drain(..colon + 1 + len + 1);
        Some(msg)
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A peer process killed when dropped.
pub(crate) struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills `child` when the guard is dropped (a failing test leaves no
/// process behind).
pub(crate) fn guard(child: Child) -> Peer {
    Peer(child)
}

pub(crate) fn spawn_py(script: &str, args: &[String]) -> Peer {
    spawn_py_env(script, args, &[])
}

/// [`spawn_py`] with environment variables (e.g. the carrier's audio files).
pub(crate) fn spawn_py_env(script: &str, args: &[String], env: &[(&str, &Path)]) -> Peer {
    let child = Command::new(pjsua_python())
        .arg(repo().join("tests/peers").join(script))
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn pjsua2 peer");
    Peer(child)
}

pub(crate) fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

pub(crate) fn carrier_events(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub(crate) fn agent_status(path: &Path) -> Value {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(Value::Null)
}

/// A scripted PJSIP carrier (tests/peers/pj_carrier.py) on a free port,
/// ready to answer; its events file is in `dir`.
pub(crate) struct Carrier {
    _peer: Peer,
    /// Its UDP port on 127.0.0.1.
    pub port: u16,
    /// One JSON line per INVITE, CANCEL, end (see [`carrier_events`]).
    pub events: std::path::PathBuf,
}

impl Carrier {
    /// Starts the carrier for 90 s; with `hold`, it hangs up each answered
    /// call that many seconds after answering.
    /// The port is picked free, but another test may take it before PJSIP
    /// binds it (the script then exits): such a start is retried.
    pub(crate) fn start(dir: &Path, hold: Option<f64>) -> Carrier {
        Carrier::start_with(dir, "carrier", hold, None)
    }

    /// Like [`Carrier::start`], its events in `DIR/NAME-N.jsonl`; with
    /// `status`, every INVITE is answered with that final status (a
    /// carrier failing every call, e.g. 503).
    pub(crate) fn start_with(
        dir: &Path,
        name: &str,
        hold: Option<f64>,
        status: Option<u16>,
    ) -> Carrier {
        for attempt in 0..3 {
            let events = dir.join(format!("{name}-{attempt}.jsonl"));
            let port = free_port();
            let mut args = vec![port.to_string(), events.display().to_string(), "90".into()];
            args.push(hold.map_or("-".into(), |h| h.to_string()));
            args.extend(status.map(|s| s.to_string()));
            let mut peer = spawn_py("pj_carrier.py", &args);
            let deadline = Instant::now() + Duration::from_secs(15);
            let ready = loop {
                if carrier_events(&events)
                    .iter()
                    .any(|e| e["event"] == "ready")
                {
                    break true;
                }
                if Instant::now() >= deadline || matches!(peer.0.try_wait(), Ok(Some(_))) {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if ready {
                return Carrier {
                    _peer: peer,
                    port,
                    events,
                };
            }
        }
        panic!("the scripted carrier did not start in three tries");
    }

    /// A `[[trunk]]` table pointing at this carrier, allowing +44 numbers.
    pub(crate) fn trunk_toml(&self) -> String {
        format!(
            "[[trunk]]\nname = \"carrier\"\nuri = \"sip:127.0.0.1:{}\"\ncaller_id = \"+442079460999\"\nallow = ['\\+44\\d+']\n",
            self.port
        )
    }

    /// Sends the carrier process a signal (`-STOP`: it hangs, answering
    /// nothing, like a carrier whose SIP server froze; `-CONT`: it goes on
    /// and handles what queued up meanwhile).
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self._peer.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// The numbers the carrier received an INVITE for, in order.
    pub(crate) fn invited(&self) -> Vec<String> {
        carrier_events(&self.events)
            .iter()
            .filter(|e| e["event"] == "invite")
            .filter_map(|e| e["number"].as_str().map(str::to_string))
            .collect()
    }
}

/// Registers an auto-answering PJSIP phone (tests/peers/pj_agent.py) as
/// `user`; returns it with its status file once the REGISTER got its 200.
pub(crate) fn pj_agent(
    app: &App,
    user: &str,
    password: &str,
    dir: &Path,
) -> (Peer, std::path::PathBuf) {
    let status = dir.join(format!("{user}.json"));
    let peer = spawn_py(
        "pj_agent.py",
        &[
            app.sip.to_string(),
            user.into(),
            password.into(),
            status.display().to_string(),
            "90".into(),
        ],
    );
    wait_for(
        &format!("{user}'s registration"),
        Duration::from_secs(15),
        || agent_status(&status)["reg"] == 200,
    );
    (peer, status)
}
