//! RFC 4475 torture messages and our own malformed input against a running
//! server over real sockets: each gets its verdict, nothing crashes or
//! stalls, and a valid OPTIONS is still answered afterwards.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use crate::app::{options_request, recv_final, repo, spawn_app, App};

#[derive(Debug, Clone, Copy)]
enum Verdict {
    /// A valid request: answered, and not with 400 or a 5xx.
    Handled,
    /// Exactly this status code.
    Code(u16),
    /// No response at all (responses that match nothing; unaddressable junk).
    Silent,
}
use Verdict::*;

/// The README of `fixtures/torture/rfc4475/`, as a table.
const TABLE: &[(&str, Verdict)] = &[
    // 3.1.1 valid, though tortuous
    ("wsinv", Handled),
    ("intmeth", Code(501)),
    ("esc01", Handled),
    ("escnull", Handled),
    ("esc02", Code(501)),
    ("lwsdisp", Handled),
    ("longreq", Handled),
    ("dblreq", Handled),
    ("semiuri", Handled),
    ("transports", Handled),
    ("mpart01", Handled),
    ("unreason", Silent),
    ("noreason", Silent),
    // 3.1.2 invalid
    ("badinv01", Code(400)),
    ("clerr", Code(400)),
    ("ncl", Code(400)),
    ("scalar02", Code(400)),
    ("scalarlg", Silent),
    ("quotbal", Code(400)),
    ("ltgtruri", Code(400)),
    ("lwsruri", Code(400)),
    ("lwsstart", Code(400)),
    ("trws", Code(400)),
    ("escruri", Code(400)),
    ("baddate", Code(400)),
    ("regbadct", Code(400)),
    ("badaspec", Code(400)),
    ("baddn", Code(400)),
    ("badvers", Code(505)),
    ("mismatch01", Code(400)),
    ("mismatch02", Code(400)),
    ("bigcode", Silent),
    // 3.2 transaction layer
    ("badbranch", Handled),
    // 3.3 application layer
    ("insuf", Code(400)),
    ("unkscm", Code(416)),
    ("novelsc", Code(416)),
    ("unksm2", Handled),
    ("bext01", Code(420)),
    ("invut", Code(415)),
    ("regaut01", Code(401)),
    ("multi01", Code(400)),
    ("mcl01", Code(400)),
    ("bcast", Silent),
    ("zeromf", Code(483)),
    ("cparam01", Code(401)),
    ("cparam02", Code(401)),
    ("regescrt", Code(401)),
    ("sdp01", Code(406)),
    // 3.4 backward compatibility
    ("inv2543", Handled),
];

fn status_of(resp: &str) -> u16 {
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn assert_still_answers(app: &mut App) {
    assert!(app.is_alive(), "powerdial died; log:\n{}", app.log_text());
    let resp = app
        .udp_exchange(&options_request(app.sip, "after"), 2000)
        .unwrap_or_else(|| {
            panic!(
                "no answer to OPTIONS after torture; log:\n{}",
                app.log_text()
            )
        });
    assert!(resp.starts_with("SIP/2.0 200"), "{resp}");
    // And over TCP.
    let mut tcp = TcpStream::connect(app.sip).expect("tcp connect");
    tcp.set_read_timeout(Some(Duration::from_secs(2))).ok();
    let req = String::from_utf8(options_request(app.sip, "after-tcp"))
        .expect("utf8")
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    tcp.write_all(req.as_bytes()).expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tcp.read(&mut buf).unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("SIP/2.0 200"), "TCP OPTIONS: {text:?}");
}

#[test]
fn rfc4475_torture_messages_get_their_verdicts() {
    let mut app = spawn_app();
    let dir = repo().join("fixtures/torture/rfc4475");
    let mut failures = Vec::new();
    for (name, verdict) in TABLE {
        let bytes = std::fs::read(dir.join(format!("{name}.dat"))).expect("fixture");
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
        sock.send_to(&bytes, app.sip).expect("send");
        let wait = if matches!(verdict, Silent) { 300 } else { 2000 };
        let got = recv_final(&sock, wait);
        let ok = match (verdict, &got) {
            (Silent, None) => true,
            (Code(c), Some(r)) => status_of(r) == *c,
            (Handled, Some(r)) => {
                let s = status_of(r);
                (100..700).contains(&s) && s != 400 && !(500..600).contains(&s)
            }
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "{name}: expected {verdict:?}, got {:?}",
                got.as_deref().map(|r| r.lines().next().unwrap_or(""))
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} torture verdicts wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_still_answers(&mut app);
}

#[test]
fn malformed_input_never_crashes_or_stalls() {
    let mut app = spawn_app();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // Binary garbage, NUL bytes, empty-ish datagrams, a huge datagram.
    let mut garbage: Vec<Vec<u8>> = vec![
        (0..=255u8).cycle().take(1400).collect(),
        b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP x\0y;branch=z9hG4bK1\r\n\r\n".to_vec(),
        b"\0\0\0\0".to_vec(),
        b"\r\n\r\n".to_vec(),
        b"SIP/2.0".to_vec(),
        b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999999999999999\r\n\r\n".to_vec(),
        vec![b'A'; 60_000],
    ];
    let mut rng_state = 0x2545F4914F6CDD1Du64;
    for _ in 0..200 {
        let len = (rng_state % 1500) as usize;
        let mut d = Vec::with_capacity(len);
        for _ in 0..len {
            rng_state ^= rng_state << 13;
            rng_state ^= rng_state >> 7;
            rng_state ^= rng_state << 17;
            d.push(rng_state as u8);
        }
        garbage.push(d);
    }
    for g in &garbage {
        sock.send_to(g, app.sip).expect("send");
    }
    // A 70 KB header section over TCP: refused (413 or closed), never buffered forever.
    let mut tcp = TcpStream::connect(app.sip).expect("tcp");
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut big =
        b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKbig\r\n"
            .to_vec();
    while big.len() < 70 * 1024 {
        big.extend_from_slice(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    let _ = tcp.write_all(&big);
    let mut buf = [0u8; 1024];
    let closed_or_413 = match tcp.read(&mut buf) {
        Ok(0) | Err(_) => true,
        Ok(n) => String::from_utf8_lossy(&buf[..n]).starts_with("SIP/2.0 413"),
    };
    assert!(closed_or_413, "a 70 KB message must be refused");
    // Truncated TCP streams: half a message, then hang up; garbage on TCP.
    for chunk in [
        &b"OPTIONS sip:x@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;bra"[..],
        &b"INVITE sip:x@127.0.0.1 SIP/2.0\r\nContent-Length: 500\r\n\r\nv=0\r\n"[..],
        &[0xffu8; 3000][..],
    ] {
        let mut t = TcpStream::connect(app.sip).expect("tcp");
        let _ = t.write_all(chunk);
        drop(t);
    }
    assert_still_answers(&mut app);
}
