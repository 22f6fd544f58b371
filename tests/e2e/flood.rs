//! A flood from one address while an agent works (SPEC §5): 5,000
//! malformed datagrams and 2,000 unauthenticated INVITEs at full speed
//! from 127.0.0.2 (not this host's own 127.0.0.1, which the default
//! `security.trusted_networks` exempts). The agent's call goes through,
//! the server's memory stays flat, the flood writes nothing to the
//! database, and the address is banned, visible and removable through the
//! API and counted in `/metrics`. Defaults as shipped: no `[security]`.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::{http_request, metric, options_request, recv_final, spawn_app_with, AppOptions};
use crate::peers::{pj_agent, wait_for, Carrier};

/// Resident memory of `pid` in KiB (Linux `/proc`).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// Malformed datagram number `i`: a rotation of the kinds scanners and
/// broken stacks send.
fn junk(i: usize) -> Vec<u8> {
    match i % 5 {
        0 => format!("INVITE sip:{i}@x SIP/2.0\r\nVia: garbage\r\n\r\n").into_bytes(),
        1 => vec![0xff; 64 + i % 200],
        2 => b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bKx\r\n\r\n".to_vec(),
        3 => format!(
            "REGISTER sip:127.0.0.1 SIP/2.0\r\nContent-Length: 99999\r\nCall-ID: {i}\r\n\r\nx"
        )
        .into_bytes(),
        _ => b"OPTIONS\r\n\r\n".to_vec(),
    }
}

fn invite(i: usize, to: std::net::SocketAddr, from: std::net::SocketAddr) -> Vec<u8> {
    format!(
        "INVITE sip:100@{to} SIP/2.0\r\n\
Via: SIP/2.0/UDP {from};branch=z9hG4bK-flood-{i}\r\n\
Max-Forwards: 70\r\n\
From: <sip:{i}@{from}>;tag=f{i}\r\n\
To: <sip:100@{to}>\r\n\
Call-ID: flood-{i}@{from}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:{i}@{from}>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 129\r\n\r\n\
v=0\r\no=- 1 1 IN IP4 127.0.0.2\r\ns=-\r\nc=IN IP4 127.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
    .into_bytes()
}

#[test]
fn a_flood_from_one_address_is_banned_while_an_agent_calls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), None);
    let app = spawn_app_with(AppOptions {
        extra_toml: carrier.trunk_toml(),
        ..AppOptions::default()
    });
    let (_phone, _status) = pj_agent(&app, "alice", "alice-secret", dir.path());
    let (_, metrics) = app.http_get("/metrics");
    let saved_before = metric(&metrics, "powerdial_registrations_saved_total");
    let rss_before = rss_kib(app.pid());

    // The flood, on its own thread, as fast as the socket takes it.
    let sip = app.sip;
    let flood = std::thread::spawn(move || {
        let sock = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
        let me = sock.local_addr().expect("addr");
        let started = Instant::now();
        for i in 0..5_000 {
            let _ = sock.send_to(&junk(i), sip);
        }
        for i in 0..2_000 {
            let _ = sock.send_to(&invite(i, sip, me), sip);
        }
        let sent_in = started.elapsed();
        // Everything that came back.
        sock.set_read_timeout(Some(Duration::from_millis(1_500)))
            .expect("timeout");
        let mut answers = Vec::new();
        let mut buf = vec![0u8; 65_536];
        while let Ok(n) = sock.recv(&mut buf) {
            answers.push(String::from_utf8_lossy(&buf[..n]).to_string());
        }
        (sent_in, answers)
    });

    // Meanwhile the agent's call.
    let (code, text) = http_request(
        app.http,
        "POST",
        "/api/v1/calls",
        Some(&app.token),
        Some(r#"{"agent": "alice", "number": "+442079460200"}"#),
    );
    assert!(code == 201 || code == 202, "{code} {text}");
    let id = serde_json::from_str::<Value>(&text).expect("JSON")["id"]
        .as_i64()
        .expect("id");
    wait_for(
        "the answer during the flood",
        Duration::from_secs(15),
        || {
            let (_, t) = app.http_get(&format!("/api/v1/calls/{id}"));
            serde_json::from_str::<Value>(&t).is_ok_and(|v| !v["answered_at"].is_null())
        },
    );
    let (sent_in, answers) = flood.join().expect("flood thread");
    eprintln!(
        "flood: 7,000 datagrams sent in {:?}; {} answers came back",
        sent_in,
        answers.len()
    );
    // At most the requests before the ban got an answer, and none of them
    // was a provisional or a success: every INVITE answer is a 401 or 400.
    assert!(
        answers.len() <= 16,
        "{} answers: {answers:#?}",
        answers.len()
    );
    assert!(
        answers
            .iter()
            .all(|a| a.starts_with("SIP/2.0 401") || a.starts_with("SIP/2.0 400")),
        "{answers:#?}"
    );

    // Banned, visible through the API.
    let (code, bans) = app.http_get("/api/v1/bans");
    assert_eq!(code, 200, "{bans}");
    let bans: Value = serde_json::from_str(&bans).expect("JSON");
    let ban = bans["sources"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["address"] == "127.0.0.2"))
        .unwrap_or_else(|| panic!("127.0.0.2 is not banned: {bans}"));
    assert_eq!(ban["reason"], "rate_limit", "{ban}");
    // At full speed the kernel itself drops some datagrams when the
    // socket's buffer is full; most reach powerdial and are dropped there.
    assert!(ban["dropped"].as_u64().unwrap_or(0) >= 4_000, "{ban}");
    let (_, metrics) = app.http_get("/metrics");
    assert!(
        metric(&metrics, "powerdial_sip_dropped_banned_total") >= 4_000.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "powerdial_sip_bans_total{reason=\"rate_limit\"}") >= 1.0,
        "{metrics}"
    );

    // Nothing of the flood reached the database: one call (the agent's),
    // no registration written since.
    let (_, calls) = app.http_get("/api/v1/calls");
    let calls: Value = serde_json::from_str(&calls).expect("JSON");
    let items = calls["data"].as_array().expect("data");
    assert_eq!(items.len(), 1, "{calls}");
    assert_eq!(
        metric(&metrics, "powerdial_registrations_saved_total"),
        saved_before,
        "a registration was written during the flood"
    );

    // Memory stayed flat (no transaction, dialog or media port per INVITE).
    let rss_after = rss_kib(app.pid());
    eprintln!("RSS before the flood {rss_before} KiB, after {rss_after} KiB");
    assert!(
        rss_after < rss_before + 16 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );

    // The call is still up and hangs up cleanly.
    let (code, text) = http_request(
        app.http,
        "POST",
        &format!("/api/v1/calls/{id}/hangup"),
        Some(&app.token),
        Some(""),
    );
    assert_eq!(code, 200, "{text}");

    // An administrator lifts the ban; the address is served again.
    let (code, text) = http_request(
        app.http,
        "DELETE",
        "/api/v1/bans/127.0.0.2",
        Some(&app.token),
        None,
    );
    assert_eq!(code, 204, "{text}");
    let sock = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    sock.send_to(&options_request(app.sip, "after-unban"), app.sip)
        .expect("send");
    let answer = recv_final(&sock, 2_000).expect("an answer after the ban is lifted");
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    let (code, _) = http_request(
        app.http,
        "DELETE",
        "/api/v1/bans/127.0.0.2",
        Some(&app.token),
        None,
    );
    assert_eq!(code, 404);
    let (code, _) = http_request(
        app.http,
        "DELETE",
        "/api/v1/bans/not-an-ip",
        Some(&app.token),
        None,
    );
    assert_eq!(code, 400);
    let (code, _) = http_request(app.http, "GET", "/api/v1/bans", None, None);
    assert_eq!(code, 401);
}
