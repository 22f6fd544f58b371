//! The built-in demo trunk (`[[trunk]] uri = "demo:"`): with one softphone
//! and no carrier account a new user sees leads ring, answer and talk, be
//! busy, or fail — chosen by the number's last digit.

use std::time::Duration;

use serde_json::Value;

use crate::app::{http_request, spawn_app_with, App, AppOptions};
use crate::peers::{agent_status, pj_agent, wait_for};

fn call(app: &App, number: &str) -> i64 {
    let (code, text) = http_request(
        app.http,
        "POST",
        "/api/v1/calls",
        Some(&app.token),
        Some(&format!(r#"{{"agent": "alice", "number": "{number}"}}"#)),
    );
    assert!(code == 201 || code == 202, "{code} {text}");
    serde_json::from_str::<Value>(&text).expect("JSON")["id"]
        .as_i64()
        .expect("id")
}

fn record(app: &App, id: i64) -> Value {
    let (_, text) = app.http_get(&format!("/api/v1/calls/{id}"));
    serde_json::from_str(&text).expect("JSON")
}

fn outcome(app: &App, id: i64) -> Value {
    let mut rec = Value::Null;
    wait_for("the call's outcome", Duration::from_secs(15), || {
        rec = record(app, id);
        !rec["outcome"].is_null()
    });
    rec
}

#[test]
fn the_demo_trunk_answers_talks_is_busy_and_fails_by_the_last_digit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_with(AppOptions {
        extra_toml: "[[trunk]]\nname = \"demo\"\nuri = \"demo:\"\ncaller_id = \"+14155550100\"\n"
            .into(),
        ..AppOptions::default()
    });
    let (_phone, status) = pj_agent(&app, "alice", "alice-secret", dir.path());

    // Ends in 1: rings, answers, talks.
    let id = call(&app, "+14155550101");
    wait_for("the demo lead to answer", Duration::from_secs(10), || {
        !record(&app, id)["answered_at"].is_null()
    });
    let before = agent_status(&status)["rx_pkts"].as_i64().unwrap_or(0);
    std::thread::sleep(Duration::from_millis(1000));
    let after = agent_status(&status)["rx_pkts"].as_i64().unwrap_or(0);
    assert!(
        after >= before + 30,
        "the lead's voice reaches the phone: {before} → {after}"
    );
    let (code, body) = http_request(
        app.http,
        "POST",
        &format!("/api/v1/calls/{id}/hangup"),
        Some(&app.token),
        Some(""),
    );
    assert_eq!(code, 200, "{body}");
    let rec = outcome(&app, id);
    assert_eq!(rec["outcome"], "answered", "{rec}");
    let ring = rec["ring_ms"].as_i64().unwrap_or(0);
    assert!((2500..5000).contains(&ring), "rang {ring} ms");

    // The answer → bridge and ring times are in the metrics.
    let (_, metrics) = app.http_get("/metrics");
    let count = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_count ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    assert!(count("powerdial_bridge_seconds") >= 1, "{metrics}");
    assert!(count("powerdial_ring_seconds") >= 1, "{metrics}");

    // Ends in 6: busy.
    let rec = outcome(&app, call(&app, "+14155550106"));
    assert_eq!(rec["outcome"], "busy", "{rec}");
    assert_eq!(rec["sip_status"], 486, "{rec}");

    // Ends in 9: the carrier is unavailable.
    let rec = outcome(&app, call(&app, "+14155550109"));
    assert_eq!(rec["outcome"], "temporary_error", "{rec}");
    assert_eq!(rec["sip_status"], 503, "{rec}");
}

/// The README's "first call in five minutes", followed literally: its
/// `first.toml` (read out of README.md), `serve --config first.toml` on a
/// fresh data directory with no admin token (the token it prints is the
/// one used), a phone registered as alice, the curl call to a demo lead.
/// Only the listening ports differ (environment overrides), so tests can
/// run side by side.
#[test]
fn the_readme_first_call_steps_work_on_a_fresh_data_directory() {
    use std::io::Read;
    use std::process::{Command, Stdio};

    let readme = std::fs::read_to_string(crate::app::repo().join("README.md")).expect("README");
    let section = readme
        .split("## A first call in five minutes")
        .nth(1)
        .expect("the README section");
    let toml: String = section
        .lines()
        .skip_while(|l| !l.contains("Write `first.toml`"))
        .skip(1)
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| l.trim().is_empty() || l.starts_with("       "))
        .map(|l| format!("{}\n", l.trim()))
        .collect();
    assert!(
        toml.contains("uri = \"demo:\""),
        "first.toml from the README: {toml}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("first.toml");
    std::fs::write(&config, &toml).expect("write first.toml");

    let sip = crate::app::free_port();
    let http = crate::app::free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_powerdial"))
        .args(["serve", "--config"])
        .arg(&config)
        .current_dir(dir.path())
        .env(
            "POWERDIAL_SERVER_SIP_LISTEN",
            format!(r#"["udp:127.0.0.1:{sip}", "tcp:127.0.0.1:{sip}"]"#),
        )
        .env("POWERDIAL_SERVER_HTTP_LISTEN", format!("127.0.0.1:{http}"))
        // The README's call goes to a California number: outside 08:00–21:00
        // there (the default calling hours) it is refused with 409, as the
        // README says; the test runs at any hour.
        .env(
            "POWERDIAL_DIALER_CALLING_HOURS",
            r#"{ start = "00:00", end = "24:00" }"#,
        )
        .env_remove("POWERDIAL_DATABASE_URL")
        .env_remove("POWERDIAL_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("serve");
    let mut stdout = server.stdout.take().expect("stdout");
    let _server = crate::peers::guard(server);
    let mut printed = String::new();
    let mut buf = [0u8; 1024];
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let token = loop {
        if let Some(t) = printed
            .split_whitespace()
            .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
        {
            break t.to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no token printed: {printed}"
        );
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => panic!("serve exited: {printed}"),
            Ok(n) => printed.push_str(&String::from_utf8_lossy(&buf[..n])),
        }
    };
    assert!(
        dir.path().join("data/admin-token").exists(),
        "kept in the fresh data directory"
    );
    let http_addr: std::net::SocketAddr = format!("127.0.0.1:{http}").parse().expect("addr");
    wait_for("the HTTP API", Duration::from_secs(10), || {
        std::net::TcpStream::connect(http_addr).is_ok()
    });

    let status = dir.path().join("alice.json");
    let _phone = crate::peers::spawn_py(
        "pj_agent.py",
        &[
            format!("127.0.0.1:{sip}"),
            "alice".into(),
            "alice-secret".into(),
            status.display().to_string(),
            "60".into(),
        ],
    );
    wait_for("alice's registration", Duration::from_secs(15), || {
        agent_status(&status)["reg"] == 200
    });
    let (code, text) = http_request(
        http_addr,
        "POST",
        "/api/v1/calls",
        Some(&token),
        Some(r#"{"agent":"alice","number":"+14155550101"}"#),
    );
    assert!(code == 201 || code == 202, "{code} {text}");
    let id = serde_json::from_str::<Value>(&text).expect("JSON")["id"]
        .as_i64()
        .expect("id");
    wait_for("the demo lead to answer", Duration::from_secs(10), || {
        let (_, t) = http_request(
            http_addr,
            "GET",
            &format!("/api/v1/calls/{id}"),
            Some(&token),
            None,
        );
        serde_json::from_str::<Value>(&t).is_ok_and(|v| !v["answered_at"].is_null())
    });
}
