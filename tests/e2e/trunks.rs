//! Several carrier trunks end to end: two scripted PJSIP carriers
//! (tests/peers/pj_carrier.py) as `[[trunk]]` "first" and "second", a PJSIP
//! agent phone, calls placed with the manual call API (R17) and followed
//! through `GET /api/v1/calls/{id}`, `GET /api/v1/trunks` and `/metrics`.
//!
//! Failover happens only when the first trunk failed the call before the
//! lead's phone could ring (503, no response at all), never on 486; a trunk
//! whose OPTIONS pings fail is skipped without an INVITE. A carrier that
//! "does not answer at all" is the PJSIP carrier stopped with SIGSTOP: its
//! host is up, its SIP server frozen.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::app::{http_request, spawn_app_with, App, AppOptions};
use crate::peers::{carrier_events, pj_agent, wait_for, Carrier};

/// An app whose trunks are `first` (with `first_extra` keys) then
/// `second`, both allowing +44 numbers, and alice's PJSIP phone.
fn rig(
    dir: &Path,
    first: &Carrier,
    first_extra: &str,
    second: &Carrier,
) -> (App, crate::peers::Peer) {
    rig_with(dir, first, first_extra, second, "", "")
}

/// [`rig`] with keys for the second trunk and the `[dialer]` table too.
fn rig_with(
    dir: &Path,
    first: &Carrier,
    first_extra: &str,
    second: &Carrier,
    second_extra: &str,
    dialer_extra: &str,
) -> (App, crate::peers::Peer) {
    let trunk = |name: &str, port: u16, extra: &str| {
        format!(
            "[[trunk]]\nname = \"{name}\"\nuri = \"sip:127.0.0.1:{port}\"\ncaller_id = \"+442079460999\"\n\
             allow = ['\\+44\\d+']\n{extra}\n"
        )
    };
    let app = spawn_app_with(AppOptions {
        extra_toml: format!(
            "[dialer]\nwrap_up_idle = 0.2\n{dialer_extra}\n\n{}{}",
            trunk("first", first.port, first_extra),
            trunk("second", second.port, second_extra)
        ),
        ..AppOptions::default()
    });
    let (phone, _) = pj_agent(&app, "alice", "alice-secret", dir);
    (app, phone)
}

fn place_call(app: &App, number: &str) -> i64 {
    place_call_as(app, "alice", number)
}

fn place_call_as(app: &App, agent: &str, number: &str) -> i64 {
    let (code, text) = post_call(app, agent, number);
    assert!(
        code == 201 || code == 202,
        "POST /api/v1/calls {number}: {code} {text}"
    );
    let body: Value = serde_json::from_str(&text).expect("call JSON");
    body["id"].as_i64().expect("call id")
}

fn post_call(app: &App, agent: &str, number: &str) -> (u16, String) {
    http_request(
        app.http,
        "POST",
        "/api/v1/calls",
        Some(&app.token),
        Some(&format!(r#"{{"agent": "{agent}", "number": "{number}"}}"#)),
    )
}

fn record(app: &App, id: i64) -> Value {
    let (code, text) = app.http_get(&format!("/api/v1/calls/{id}"));
    assert_eq!(code, 200, "{text}");
    serde_json::from_str(&text).expect("call JSON")
}

/// Polls the call record until it has an outcome.
fn outcome_of(app: &App, id: i64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (code, text) = app.http_get(&format!("/api/v1/calls/{id}"));
        assert_eq!(code, 200, "{text}");
        let rec: Value = serde_json::from_str(&text).expect("call JSON");
        if !rec["outcome"].is_null() {
            return rec;
        }
        assert!(
            Instant::now() < deadline,
            "call {id} has no outcome within {within:?}: {rec}\n---- log ----\n{}",
            app.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn trunks(app: &App) -> Value {
    let (code, text) = app.http_get("/api/v1/trunks");
    assert_eq!(code, 200, "{text}");
    serde_json::from_str(&text).expect("trunks JSON")
}

fn trunk_state(app: &App, name: &str) -> String {
    let t = trunks(app);
    t["data"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == name))
        .and_then(|t| t["state"].as_str())
        .unwrap_or_default()
        .to_string()
}

/// A sample of `/metrics` (`name{trunk="…"}`), 0 when absent.
fn metric(app: &App, name: &str, trunk: &str) -> f64 {
    let (code, text) = app.http_get("/metrics");
    assert_eq!(code, 200, "{text}");
    crate::app::metric(&text, &format!("{name}{{trunk=\"{trunk}\"}}"))
}

/// The first trunk answers 503: the call goes to the second, which
/// answers; each carrier saw exactly one INVITE for the lead; the record
/// names the second trunk; the metrics count one failover.
#[test]
fn a_503_fails_over_to_the_second_trunk_with_one_invite_per_trunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Carrier::start_with(dir.path(), "first", Some(1.0), Some(503));
    let second = Carrier::start_with(dir.path(), "second", Some(1.0), None);
    let (app, _phone) = rig(dir.path(), &first, "", &second);
    let number = "+442079460200";
    let id = place_call(&app, number);
    let rec = outcome_of(&app, id, Duration::from_secs(15));
    assert_eq!(rec["outcome"], "answered", "{rec}");
    assert_eq!(rec["sip_status"], 200, "{rec}");
    assert_eq!(rec["trunk"], "second", "{rec}");
    wait_for(
        "the second carrier's hang-up",
        Duration::from_secs(10),
        || {
            carrier_events(&second.events)
                .iter()
                .any(|e| e["event"] == "ended")
        },
    );
    let bare = number.trim_start_matches('+');
    assert_eq!(
        first.invited(),
        vec![bare.to_string()],
        "one INVITE to the first"
    );
    assert_eq!(
        second.invited(),
        vec![bare.to_string()],
        "one INVITE to the second"
    );
    assert_eq!(
        metric(&app, "powerdial_trunk_failovers_total", "first"),
        1.0
    );
    assert_eq!(
        metric(&app, "powerdial_trunk_failovers_total", "second"),
        0.0
    );
    assert_eq!(metric(&app, "powerdial_trunk_attempts_total", "first"), 1.0);
    assert_eq!(
        metric(&app, "powerdial_trunk_attempts_total", "second"),
        1.0
    );
    wait_for("no active calls left", Duration::from_secs(10), || {
        metric(&app, "powerdial_trunk_active_calls", "second") == 0.0
    });
    let log = app.log_text();
    assert!(log.contains("trying the next trunk"), "{log}");
}

/// The first trunk does not answer at all (its SIP server frozen): after
/// `response_timeout` the call goes to the second. When the first wakes up
/// and sends its 180 for the abandoned INVITE, it gets a CANCEL (RFC 3261
/// §9.1), so the lead is not rung twice, and it still saw one INVITE.
#[test]
fn no_response_at_all_fails_over_after_the_response_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Carrier::start_with(dir.path(), "first", Some(1.0), None);
    let second = Carrier::start_with(dir.path(), "second", Some(1.0), None);
    let (app, _phone) = rig(
        dir.path(),
        &first,
        "response_timeout = 1\noptions_interval = 0",
        &second,
    );
    first.signal("-STOP");
    // Answered 2 s after its 180 (by either carrier).
    let number = "+442079460002";
    let t0 = Instant::now();
    let id = place_call(&app, number);
    let rec = outcome_of(&app, id, Duration::from_secs(15));
    let took = t0.elapsed();
    assert_eq!(rec["outcome"], "answered", "{rec}");
    assert_eq!(rec["trunk"], "second", "{rec}");
    assert!(
        took >= Duration::from_secs(3),
        "1 s response timeout + 2 s to answer: {took:?}"
    );
    let bare = number.trim_start_matches('+').to_string();
    assert_eq!(second.invited(), vec![bare.clone()]);
    first.signal("-CONT");
    wait_for(
        "the first carrier's CANCEL for its late 180",
        Duration::from_secs(10),
        || {
            carrier_events(&first.events)
                .iter()
                .any(|e| e["event"] == "cancel")
        },
    );
    assert_eq!(
        first.invited(),
        vec![bare.clone()],
        "one INVITE to the first"
    );
    assert!(
        !carrier_events(&first.events)
            .iter()
            .any(|e| e["event"] == "answered"),
        "the first carrier never answered"
    );
    assert_eq!(second.invited(), vec![bare], "one INVITE to the second");
    assert_eq!(
        metric(&app, "powerdial_trunk_failovers_total", "first"),
        1.0
    );
}

/// The first trunk answers 486: the lead is busy, full stop. No failover:
/// the second carrier sees no INVITE.
#[test]
fn a_486_does_not_fail_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Carrier::start_with(dir.path(), "first", None, None);
    let second = Carrier::start_with(dir.path(), "second", None, None);
    let (app, _phone) = rig(dir.path(), &first, "", &second);
    // The carrier answers numbers ending 0486 with 486 Busy Here.
    let number = "+442079460486";
    let id = place_call(&app, number);
    let rec = outcome_of(&app, id, Duration::from_secs(15));
    assert_eq!(rec["outcome"], "busy", "{rec}");
    assert_eq!(rec["sip_status"], 486, "{rec}");
    assert_eq!(rec["trunk"], "first", "{rec}");
    // Anything sent to the second would have arrived by now.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        first.invited(),
        vec![number.trim_start_matches('+').to_string()]
    );
    assert!(second.invited().is_empty(), "{:?}", second.invited());
    assert_eq!(
        metric(&app, "powerdial_trunk_failovers_total", "first"),
        0.0
    );
    assert_eq!(
        metric(&app, "powerdial_trunk_attempts_total", "second"),
        0.0
    );
}

/// The first trunk stops answering OPTIONS: after `down_after` failed
/// pings it is down (the API, the metrics and the log say so), and a call
/// goes straight to the second without any INVITE to the first. When its
/// pings succeed again it is up again.
#[test]
fn a_trunk_down_by_options_is_skipped_without_an_invite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Carrier::start_with(dir.path(), "first", Some(1.0), None);
    let second = Carrier::start_with(dir.path(), "second", Some(1.0), None);
    let (app, _phone) = rig(
        dir.path(),
        &first,
        "options_interval = 0.3\noptions_timeout = 0.3\ndown_after = 2\nup_after = 1",
        &second,
    );
    let t = trunks(&app);
    assert_eq!(t["data"][0]["name"], "first", "{t}");
    assert_eq!(t["data"][0]["pinged"], true, "{t}");
    assert_eq!(t["data"][1]["name"], "second", "{t}");
    wait_for("the first trunk up", Duration::from_secs(5), || {
        trunk_state(&app, "first") == "up"
    });
    // Admin only: no token, no trunks.
    let (code, _) = http_request(app.http, "GET", "/api/v1/trunks", None, None);
    assert_eq!(code, 401);

    first.signal("-STOP");
    wait_for("the first trunk down", Duration::from_secs(5), || {
        trunk_state(&app, "first") == "down"
    });
    assert_eq!(metric(&app, "powerdial_trunk_up", "first"), 0.0);
    assert_eq!(metric(&app, "powerdial_trunk_up", "second"), 1.0);
    assert!(app.log_text().contains("trunk down"), "logged on change");

    let number = "+442079460200";
    let id = place_call(&app, number);
    let rec = outcome_of(&app, id, Duration::from_secs(15));
    assert_eq!(rec["outcome"], "answered", "{rec}");
    assert_eq!(rec["trunk"], "second", "{rec}");
    assert_eq!(metric(&app, "powerdial_trunk_attempts_total", "first"), 0.0);
    assert_eq!(
        metric(&app, "powerdial_trunk_failovers_total", "first"),
        0.0
    );

    // Awake again: the pings succeed, it is up; what queued up while it
    // was frozen holds OPTIONS only.
    first.signal("-CONT");
    wait_for("the first trunk up again", Duration::from_secs(5), || {
        trunk_state(&app, "first") == "up"
    });
    assert!(app.log_text().contains("trunk up again"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(first.invited().is_empty(), "{:?}", first.invited());
    assert_eq!(
        second.invited(),
        vec![number.trim_start_matches('+').to_string()]
    );
}

/// `max_calls = 1` on each trunk: a second call spills over to the second
/// trunk; a third waits (`dialer.trunk_wait`) and takes the first trunk as
/// soon as its call ends; a fourth, with both trunks full for the whole
/// wait, is refused with 503 `trunks_busy` and nothing dialed or stored.
#[test]
fn calls_over_the_limit_spill_over_wait_then_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Carrier::start_with(dir.path(), "first", None, None);
    let second = Carrier::start_with(dir.path(), "second", None, None);
    let (app, _alice) = rig_with(
        dir.path(),
        &first,
        "max_calls = 1",
        &second,
        "max_calls = 1",
        "trunk_wait = 3",
    );
    let (_bob, _) = pj_agent(&app, "bob", "bob-secret", dir.path());
    let (code, text) = http_request(
        app.http,
        "POST",
        "/api/v1/agents",
        Some(&app.token),
        Some(r#"{"username": "carol", "password": "carol-secret"}"#),
    );
    assert_eq!(code, 201, "{text}");
    let (_carol, _) = pj_agent(&app, "carol", "carol-secret", dir.path());

    // Numbers ending 0180 ring until cancelled.
    let a = place_call_as(&app, "alice", "+442079460180");
    wait_for("alice's lead ringing", Duration::from_secs(10), || {
        first.invited().len() == 1
    });
    assert_eq!(record(&app, a)["trunk"], "first");
    let b = place_call_as(&app, "bob", "+442079450180");
    wait_for("bob's lead ringing", Duration::from_secs(10), || {
        second.invited().len() == 1
    });
    assert_eq!(record(&app, b)["trunk"], "second", "spilled over");
    let t = trunks(&app);
    assert_eq!(t["data"][0]["active_calls"], 1, "{t}");
    assert_eq!(t["data"][1]["active_calls"], 1, "{t}");

    // Carol's call waits; alice's call ends 0.5 s into the wait.
    let hangup = {
        let http = app.http;
        let token = app.token.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            http_request(
                http,
                "POST",
                &format!("/api/v1/calls/{a}/hangup"),
                Some(&token),
                Some(""),
            )
        })
    };
    let t0 = Instant::now();
    let c = place_call_as(&app, "carol", "+442079440180");
    let waited = t0.elapsed();
    let (code, text) = hangup.join().expect("hang-up thread");
    assert!((200..300).contains(&code), "hang-up: {code} {text}");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(2900),
        "waited for the first trunk to free: {waited:?}"
    );
    assert_eq!(
        outcome_of(&app, a, Duration::from_secs(10))["outcome"],
        "skipped"
    );
    assert_eq!(record(&app, c)["trunk"], "first", "took the freed trunk");
    wait_for("carol's lead ringing", Duration::from_secs(10), || {
        first.invited().len() == 2
    });

    // Both trunks stay full: alice's next call waits 3 s, then 503.
    let t0 = Instant::now();
    let (code, text) = post_call(&app, "alice", "+442079430180");
    let waited = t0.elapsed();
    assert_eq!(code, 503, "{text}");
    assert!(text.contains("trunks_busy"), "{text}");
    assert!(
        waited >= Duration::from_millis(2900),
        "waited dialer.trunk_wait: {waited:?}"
    );
    let (_, calls) = app.http_get("/api/v1/calls");
    let calls: Value = serde_json::from_str(&calls).expect("calls JSON");
    assert_eq!(
        calls["data"].as_array().map(Vec::len),
        Some(3),
        "nothing stored: {calls}"
    );
    assert_eq!(first.invited().len(), 2);
    assert_eq!(second.invited().len(), 1);
}

/// `(what, number, epoch seconds)` from the `<log>` lines of the SIPp runs in `dir`.
fn sipp_log(dir: &Path) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().ends_with("_logs.log") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            if let [what, who, sec, usec] = w[..] {
                if let (Ok(s), Ok(u)) = (sec.parse::<f64>(), usec.parse::<f64>()) {
                    out.push((what.to_string(), who.to_string(), s + u / 1e6));
                }
            }
        }
    }
    out
}

/// A carrier that answers and then forgets the call (SIPp,
/// `fixtures/sipp/carrier_forgets.xml`: the in-dialog OPTIONS gets 481).
/// With `keepalive_interval = 1` powerdial asks about the call a second
/// after the answer, hears 481 and ends it: no BYE to a dialog the carrier
/// no longer has, the outcome stays `answered` with `ended_at` at the 481,
/// the lead is unbridged from the agent, and the agent places the next
/// call.
#[test]
fn a_carrier_that_forgets_a_call_answers_the_keepalive_481_and_the_call_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sipp_dir = dir.path().join("carrier");
    std::fs::create_dir_all(&sipp_dir).expect("mkdir");
    let port = crate::app::free_port();
    let sipp = crate::app::require_program("sipp", "sip-tester");
    let _carrier = crate::peers::guard(
        std::process::Command::new(sipp)
            .current_dir(&sipp_dir)
            .arg("-sf")
            .arg(crate::app::repo().join("fixtures/sipp/carrier_forgets.xml"))
            .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-t", "u1"])
            .args(["-mp", &crate::app::free_port().to_string()])
            .args(["-nostdin", "-trace_logs", "-trace_err"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sipp"),
    );
    let app = spawn_app_with(AppOptions {
        extra_toml: format!(
            "[dialer]\nwrap_up_idle = 0.2\nrtp_timeout = 600\n\n[[trunk]]\nname = \"forgets\"\n\
             uri = \"sip:127.0.0.1:{port}\"\ncaller_id = \"+442079460999\"\n\
             keepalive_interval = 1\n"
        ),
        ..AppOptions::default()
    });
    let (_phone, _) = pj_agent(&app, "alice", "alice-secret", dir.path());
    let first = place_call(&app, "+442079460200");
    let rec = outcome_of(&app, first, Duration::from_secs(20));
    assert_eq!(rec["outcome"], "answered", "{rec}");
    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
            .map(|t| t.timestamp_millis() as f64 / 1000.0)
            .unwrap_or(f64::NAN)
    };
    let talked = at(&rec["ended_at"]) - at(&rec["answered_at"]);
    assert!(
        (0.9..5.0).contains(&talked),
        "ended {talked:.2} s after the answer (a keepalive every 1 s): {rec}"
    );
    let log = sipp_log(&sipp_dir);
    let options: Vec<_> = log.iter().filter(|e| e.0 == "OPTIONS").collect();
    assert_eq!(options.len(), 1, "{log:?}");
    assert!(
        (at(&rec["ended_at"]) - options[0].2).abs() < 1.0,
        "the call ends at the 481: {rec} {options:?}"
    );
    assert!(
        app.log_text().contains("trunk_lost"),
        "the end reason is logged"
    );
    // The agent was freed: the next call is placed and answered.
    let second = place_call(&app, "+442079460201");
    let rec = outcome_of(&app, second, Duration::from_secs(20));
    assert_eq!(rec["outcome"], "answered", "{rec}");
    // No BYE reached the carrier for either call: the dialogs were gone.
    std::thread::sleep(Duration::from_millis(500));
    let byes = sipp_log(&sipp_dir)
        .into_iter()
        .filter(|e| e.0 == "BYE")
        .count();
    assert_eq!(byes, 0, "a BYE for a call the carrier forgot");
}
