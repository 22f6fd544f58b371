//! rtpengine as a peer of the relay bench: the daemon started in the
//! foreground on 127.0.0.1 (userspace forwarding, no kernel module), and a
//! client of its ng control protocol — bencoded dictionaries over UDP, each
//! message `<cookie> <bencoded dict>`, the reply echoing the cookie
//! (rtpengine's docs, "ng Control Protocol"). A call is set up with `offer`
//! (the carrier's SDP) and `answer` (the phone's SDP) and torn down with
//! `delete`, as Kamailio's rtpengine module does.
//!
//! The daemon's settings are `benches/peers/rtpengine.conf`; the bench adds
//! the ng port, the RTP port range and the thread count on the command line.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A bencoded value (BitTorrent's encoding, as the ng protocol uses it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bencode {
    /// `<len>:<bytes>`.
    Bytes(Vec<u8>),
    /// `i<n>e`.
    Int(i64),
    /// `l…e`.
    List(Vec<Bencode>),
    /// `d…e`, keys sorted (the encoding requires it).
    Dict(BTreeMap<Vec<u8>, Bencode>),
}

impl Bencode {
    /// A string value.
    pub fn s(v: &str) -> Self {
        Bencode::Bytes(v.as_bytes().to_vec())
    }

    /// A dictionary of `(key, value)` pairs.
    pub fn dict<'a>(pairs: impl IntoIterator<Item = (&'a str, Bencode)>) -> Self {
        Bencode::Dict(
            pairs
                .into_iter()
                .map(|(k, v)| (k.as_bytes().to_vec(), v))
                .collect(),
        )
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Bencode::Bytes(b) => {
                out.extend_from_slice(b.len().to_string().as_bytes());
                out.push(b':');
                out.extend_from_slice(b);
            }
            Bencode::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(i.to_string().as_bytes());
                out.push(b'e');
            }
            Bencode::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            Bencode::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    Bencode::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }

    /// Decodes one value from the front of `b`; returns it and the rest.
    pub fn decode(b: &[u8]) -> Result<(Bencode, &[u8]), String> {
        let first = *b.first().ok_or("bencode: empty input")?;
        match first {
            b'i' => {
                let end = b
                    .iter()
                    .position(|c| *c == b'e')
                    .ok_or("bencode: open int")?;
                let n = std::str::from_utf8(&b[1..end])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("bencode: bad int")?;
                Ok((Bencode::Int(n), &b[end + 1..]))
            }
            b'l' => {
                let mut rest = &b[1..];
                let mut items = Vec::new();
                while rest.first() != Some(&b'e') {
                    let (v, r) = Bencode::decode(rest)?;
                    items.push(v);
                    rest = r;
                }
                Ok((Bencode::List(items), &rest[1..]))
            }
            b'd' => {
                let mut rest = &b[1..];
                let mut d = BTreeMap::new();
                while rest.first() != Some(&b'e') {
                    let (k, r) = Bencode::decode(rest)?;
                    let Bencode::Bytes(k) = k else {
                        return Err("bencode: dictionary key not a string".into());
                    };
                    let (v, r) = Bencode::decode(r)?;
                    d.insert(k, v);
                    rest = r;
                }
                Ok((Bencode::Dict(d), &rest[1..]))
            }
            b'0'..=b'9' => {
                let colon = b
                    .iter()
                    .position(|c| *c == b':')
                    .ok_or("bencode: no colon")?;
                let len: usize = std::str::from_utf8(&b[..colon])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .ok_or("bencode: bad length")?;
                let body = b
                    .get(colon + 1..colon + 1 + len)
                    .ok_or("bencode: string past the end")?;
                Ok((Bencode::Bytes(body.to_vec()), &b[colon + 1 + len..]))
            }
            c => Err(format!("bencode: unexpected byte {c:#x}")),
        }
    }

    /// A dictionary entry as text.
    pub fn get_str(&self, key: &str) -> Option<String> {
        match self {
            Bencode::Dict(d) => match d.get(key.as_bytes()) {
                Some(Bencode::Bytes(b)) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A running rtpengine daemon (killed when dropped).
pub struct Rtpengine {
    child: Child,
    ng: UdpSocket,
    next_cookie: u64,
}

/// Where a call's media enters rtpengine: the carrier sends to `from_carrier`,
/// the phone to `from_phone`.
#[derive(Debug, Clone, Copy)]
pub struct NgCall {
    /// rtpengine's port facing the carrier (from the `answer` reply's SDP).
    pub from_carrier: SocketAddr,
    /// rtpengine's port facing the phone (from the `offer` reply's SDP).
    pub from_phone: SocketAddr,
}

fn sdp(addr: SocketAddr, session: u64) -> String {
    format!(
        "v=0\r\no=- {session} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=ptime:20\r\na=sendrecv\r\n",
        ip = addr.ip(),
        port = addr.port()
    )
}

/// The `c=` address and the first `m=audio` port of an SDP.
fn media_addr(sdp: &str) -> Option<SocketAddr> {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))?
        .trim()
        .parse()
        .ok()?;
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, port))
}

impl Rtpengine {
    /// Starts `/usr/bin/rtpengine` with `conf`, its ng port on 127.0.0.1,
    /// RTP ports `ports`, `threads` forwarding threads; logs to `log`.
    /// Waits until it answers `ping`.
    pub fn start(
        conf: &Path,
        ng_port: u16,
        ports: (u16, u16),
        threads: usize,
        log: &Path,
    ) -> io::Result<Self> {
        let log = std::fs::File::create(log)?;
        let child = Command::new("/usr/bin/rtpengine")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--config-section=rtpengine")
            .arg(format!("--listen-ng=127.0.0.1:{ng_port}"))
            .arg(format!("--port-min={}", ports.0))
            .arg(format!("--port-max={}", ports.1))
            .arg(format!("--num-threads={threads}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let ng = UdpSocket::bind("127.0.0.1:0")?;
        ng.connect(("127.0.0.1", ng_port))?;
        ng.set_read_timeout(Some(Duration::from_millis(200)))?;
        let mut r = Rtpengine {
            child,
            ng,
            next_cookie: 1,
        };
        for _ in 0..50 {
            if let Ok(reply) = r.request(&Bencode::dict([("command", Bencode::s("ping"))])) {
                if reply.get_str("result").as_deref() == Some("pong") {
                    return Ok(r);
                }
            }
            if let Some(status) = r.child.try_wait()? {
                return Err(io::Error::other(format!("rtpengine exited: {status}")));
            }
            // Not listening yet (the ping came back as ICMP port unreachable).
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(io::Error::other("rtpengine did not answer ping"))
    }

    /// The daemon's process id (for its CPU time in /proc).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn request(&mut self, msg: &Bencode) -> io::Result<Bencode> {
        let cookie = format!("{}_{}", std::process::id(), self.next_cookie);
        self.next_cookie += 1;
        let mut out = cookie.clone().into_bytes();
        out.push(b' ');
        msg.encode(&mut out);
        let mut buf = vec![0u8; 65536];
        for _ in 0..5 {
            self.ng.send(&out)?;
            loop {
                let n = match self.ng.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::TimedOut =>
                    {
                        break; // resend (UDP)
                    }
                    Err(e) => return Err(e),
                };
                let Some(space) = buf[..n].iter().position(|c| *c == b' ') else {
                    continue;
                };
                if buf[..space] != *cookie.as_bytes() {
                    continue; // a late reply to an earlier try
                }
                let (v, _) = Bencode::decode(&buf[space + 1..n]).map_err(io::Error::other)?;
                return Ok(v);
            }
        }
        Err(io::Error::new(io::ErrorKind::TimedOut, "no ng reply"))
    }

    fn checked(&mut self, msg: &Bencode) -> io::Result<Bencode> {
        let reply = self.request(msg)?;
        match reply.get_str("result").as_deref() {
            Some("ok") => Ok(reply),
            _ => Err(io::Error::other(format!("ng request refused: {reply:?}"))),
        }
    }

    /// Sets up call `id`: the carrier at `carrier` offers, the phone at
    /// `phone` answers.
    pub fn call(
        &mut self,
        id: usize,
        carrier: SocketAddr,
        phone: SocketAddr,
    ) -> io::Result<NgCall> {
        let call_id = format!("bench-{id}");
        let offer = self.checked(&Bencode::dict([
            ("command", Bencode::s("offer")),
            ("call-id", Bencode::s(&call_id)),
            ("from-tag", Bencode::s("carrier")),
            ("sdp", Bencode::s(&sdp(carrier, id as u64))),
        ]))?;
        let from_phone = offer
            .get_str("sdp")
            .as_deref()
            .and_then(media_addr)
            .ok_or_else(|| io::Error::other("offer reply without a media address"))?;
        let answer = self.checked(&Bencode::dict([
            ("command", Bencode::s("answer")),
            ("call-id", Bencode::s(&call_id)),
            ("from-tag", Bencode::s("carrier")),
            ("to-tag", Bencode::s("phone")),
            ("sdp", Bencode::s(&sdp(phone, id as u64))),
        ]))?;
        let from_carrier = answer
            .get_str("sdp")
            .as_deref()
            .and_then(media_addr)
            .ok_or_else(|| io::Error::other("answer reply without a media address"))?;
        Ok(NgCall {
            from_carrier,
            from_phone,
        })
    }

    /// Tears call `id` down.
    pub fn delete(&mut self, id: usize) -> io::Result<()> {
        self.checked(&Bencode::dict([
            ("command", Bencode::s("delete")),
            ("call-id", Bencode::s(&format!("bench-{id}"))),
            ("from-tag", Bencode::s("carrier")),
        ]))
        .map(|_| ())
    }
}

impl Drop for Rtpengine {
    fn drop(&mut self) {
        // Our own child, by its handle.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
