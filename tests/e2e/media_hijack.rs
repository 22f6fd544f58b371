//! RTP from a third host during a bridged call reaches neither party
//! (SPEC §5: media latches only to what the signalling names). A stranger
//! on 127.0.0.2 sprays RTP at every port of the call's RTP range; powerdial
//! drops it and says so once, and the call's audio goes on.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::{http_request, spawn_app_with, AppOptions};
use crate::peers::{agent_status, pj_agent, wait_for, Carrier};

#[test]
fn rtp_from_a_third_host_reaches_neither_party() {
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), None);
    let base = crate::app::free_rtp_range(20);
    let app = spawn_app_with(AppOptions {
        server_toml: format!("rtp_ports = \"{base}-{}\"", base + 19),
        extra_toml: carrier.trunk_toml(),
        ..AppOptions::default()
    });
    let (_phone, status) = pj_agent(&app, "alice", "alice-secret", dir.path());
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
    wait_for("the answer", Duration::from_secs(10), || {
        let (_, t) = app.http_get(&format!("/api/v1/calls/{id}"));
        serde_json::from_str::<Value>(&t).is_ok_and(|v| !v["answered_at"].is_null())
    });

    // The stranger: valid-looking PCMU packets of its own SSRC, to every
    // port of the range, for a second.
    let stranger = UdpSocket::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    let before = agent_status(&status)["rx_pkts"].as_i64().unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(1);
    let mut seq: u16 = 0;
    while Instant::now() < until {
        for port in base..base + 20 {
            let mut pkt = vec![0x80, 0x00];
            pkt.extend_from_slice(&seq.to_be_bytes());
            pkt.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
            pkt.extend_from_slice(&0x0BAD_F00Du32.to_be_bytes());
            pkt.extend_from_slice(&[0x55; 160]);
            let _ = stranger.send_to(&pkt, ("127.0.0.1", port));
        }
        seq = seq.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = agent_status(&status)["rx_pkts"].as_i64().unwrap_or(0);
    // The phone kept getting the lead's stream at its usual rate (50/s),
    // not the stranger's extra packets on top.
    assert!(
        (40..=90).contains(&(after - before)),
        "the agent received {} packets in 1.3 s",
        after - before
    );
    let log = app.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("does not name: dropped") && l.contains("127.0.0.2")),
        "the stranger's RTP was not reported as dropped"
    );
    // Counted for the people who run powerdial.
    let (code, metrics) = app.http_get("/metrics");
    assert_eq!(code, 200, "{metrics}");
    let strays: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("powerdial_rtp_stray_packets_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(strays > 10, "stray packets counted: {strays}\n{metrics}");
    let (code, _) = http_request(
        app.http,
        "POST",
        &format!("/api/v1/calls/{id}/hangup"),
        Some(&app.token),
        Some(""),
    );
    assert_eq!(code, 200);
}
