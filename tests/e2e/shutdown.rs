//! A graceful stop (SIGTERM) leaves no call on the carrier's meter and
//! none without its outcome: a lead still ringing is cancelled at once, a
//! connected call may go on for `server.drain_timeout` and then gets a BYE,
//! and the process exits once every call has ended and been recorded.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::{http_request, spawn_app_with, App, AppOptions};
use crate::peers::{carrier_events, pj_agent, wait_for, Carrier};

fn call(app: &App, agent: &str, number: &str) -> i64 {
    let (code, text) = http_request(
        app.http,
        "POST",
        "/api/v1/calls",
        Some(&app.token),
        Some(&format!(r#"{{"agent": "{agent}", "number": "{number}"}}"#)),
    );
    assert!(code == 201 || code == 202, "{code} {text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    v["id"].as_i64().expect("call id")
}

fn record(app: &App, id: i64) -> Value {
    let (code, text) = app.http_get(&format!("/api/v1/calls/{id}"));
    assert_eq!(code, 200, "{text}");
    serde_json::from_str(&text).expect("JSON")
}

/// The carrier's time of `event` for `digits`.
fn at(events: &[Value], event: &str, digits: &str) -> Option<f64> {
    events
        .iter()
        .find(|e| e["event"] == event && e["number"].as_str().is_some_and(|n| n.contains(digits)))
        .and_then(|e| e["t"].as_f64())
}

#[test]
fn sigterm_cancels_ringing_leads_and_lets_connected_calls_finish_then_byes_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), None);
    let mut app = spawn_app_with(AppOptions {
        server_toml: "drain_timeout = 1.5".into(),
        extra_toml: carrier.trunk_toml(),
        ..AppOptions::default()
    });
    let _alice = pj_agent(&app, "alice", "alice-secret", dir.path());
    let _bob = pj_agent(&app, "bob", "bob-secret", dir.path());

    // alice talks to a lead that answered; bob's lead rings forever.
    let talking = call(&app, "alice", "+442079460200");
    wait_for("alice's lead to answer", Duration::from_secs(10), || {
        !record(&app, talking)["answered_at"].is_null()
    });
    let ringing = call(&app, "bob", "+442079460180");
    wait_for(
        "bob's lead to ring at the carrier",
        Duration::from_secs(10),
        || at(&carrier_events(&carrier.events), "invite", "442079460180").is_some(),
    );

    let stop = Instant::now();
    let status = app.terminate(Duration::from_secs(15));
    let took = stop.elapsed();
    let status =
        status.unwrap_or_else(|| panic!("still running 15 s after SIGTERM\n{}", app.log_text()));
    assert!(status.success(), "exit {status:?}\n{}", app.log_text());
    eprintln!(
        "SIGTERM → exit: {:.3} s (drain_timeout 1.5 s)",
        took.as_secs_f64()
    );
    assert!(
        took >= Duration::from_millis(1400),
        "the connected call was not given its drain time: exited after {took:?}"
    );

    let events = carrier_events(&carrier.events);
    let cancel = at(&events, "cancel", "442079460180").expect("the ringing lead got a CANCEL");
    let bye = at(&events, "ended", "442079460200").expect("the connected call was ended by us");
    eprintln!(
        "carrier: CANCEL of the ringing lead, then BYE of the connected call {:.3} s later",
        bye - cancel
    );
    assert!(
        (1.2..4.0).contains(&(bye - cancel)),
        "CANCEL at the stop, BYE after the drain timeout: {:.3} s apart",
        bye - cancel
    );

    // Every call has its outcome (read after a restart: it was stored
    // before the process exited).
    app.restart();
    // A graceful stop leaves no leg in the leg journal for the next start
    // to end.
    assert!(
        !app.log_text().contains("legs left up by a crash"),
        "the graceful stop left journaled legs"
    );
    let r = record(&app, talking);
    assert_eq!(r["outcome"], "answered", "{r}");
    assert!(!r["ended_at"].is_null(), "{r}");
    let r = record(&app, ringing);
    assert_eq!(r["outcome"], "skipped", "{r}");
    assert!(!r["ended_at"].is_null(), "{r}");
}

/// A second SIGTERM does not wait for the drain timeout: every call is
/// hung up at once (still with a BYE and a recorded outcome).
#[test]
fn a_second_sigterm_hangs_up_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), None);
    let mut app = spawn_app_with(AppOptions {
        server_toml: "drain_timeout = 30".into(),
        extra_toml: carrier.trunk_toml(),
        ..AppOptions::default()
    });
    let _alice = pj_agent(&app, "alice", "alice-secret", dir.path());
    let talking = call(&app, "alice", "+442079460200");
    wait_for("alice's lead to answer", Duration::from_secs(10), || {
        !record(&app, talking)["answered_at"].is_null()
    });
    let stop = Instant::now();
    assert!(
        app.terminate(Duration::from_millis(500)).is_none(),
        "the first SIGTERM waits for the connected call"
    );
    let status = app.terminate(Duration::from_secs(10));
    let took = stop.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        app.log_text()
    );
    assert!(
        took < Duration::from_secs(5),
        "exited {took:?} after the first signal"
    );
    wait_for("the BYE at the carrier", Duration::from_secs(3), || {
        at(&carrier_events(&carrier.events), "ended", "442079460200").is_some()
    });
    app.restart();
    assert!(
        !app.log_text().contains("legs left up by a crash"),
        "the hurried stop left journaled legs"
    );
    let r = record(&app, talking);
    assert_eq!(r["outcome"], "answered", "{r}");
    assert!(!r["ended_at"].is_null(), "{r}");
}
