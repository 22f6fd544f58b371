//! The console (SPEC §4 `GET /`) in a real browser: headless Chromium
//! driven by Playwright (`tests/browser/console.mjs`) against a real
//! `powerdial serve`, a PJSIP agent phone and the scripted PJSIP carrier
//! (SPEC §1 flow). The script signs the admin in (a wrong token first) and
//! watches the admin view; the agent opens the session's share link (a
//! wrong one first), which is exchanged for an agent token (R16, SPEC §4),
//! sees the first lead in the call bar when the carrier answers with its
//! details (status, contacts, custom fields, last calls, notes), types a
//! note through the lead's hang-up (the dialer waits in wrap-up, SPEC §1
//! step 5), clicks "Call next lead", sees the next lead, pauses with the
//! keyboard shortcut and resumes, sees the share link in the dialer
//! settings and no admin-only control, and is refused the admin view in
//! words; the admin view must have followed each state live and shows the
//! session's call statistics. Then powerdial restarts: the page must say
//! its live updates were interrupted, reconnect by itself and show the
//! agent's state as the server has it. Here the note is checked in the
//! call record (`GET /api/v1/calls/{id}`) and on the lead (`GET
//! /api/v1/leads/{id}`). Screenshots go to `$CARGO_TARGET_DIR/console/`
//! (else `target/console/`).
//!
//! Needs `node`, Debian's `chromium` and `playwright-core` from npm
//! (`bash .ci/run` installs them): missing under CI is a failure, else a
//! visible SKIPPED line.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::app::{free_port, repo, spawn_app_with, AppOptions};
use crate::peers::{agent_status, carrier_events, spawn_py, wait_for};

/// The carrier hangs each answered call up this long after answering.
const HOLD_S: f64 = 3.0;
/// The session's wrap-up idle time: the dialer moves on this long after
/// the last typing heartbeat.
const WRAP_UP_IDLE_S: f64 = 1.5;

/// What the browser test needs, found or reported.
pub(crate) struct Browser {
    pub node: PathBuf,
    pub chromium: PathBuf,
    /// The `node_modules` folder holding `playwright-core`.
    pub modules: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Finds node, Chromium and playwright-core; `None` after a SKIPPED line
/// when one is missing outside CI.
///
/// # Panics
/// When one is missing and `CI` is set.
pub(crate) fn browser(test: &str) -> Option<Browser> {
    let node = std::env::var_os("POWERDIAL_NODE")
        .map(PathBuf::from)
        .or_else(|| on_path("node"));
    let chromium = std::env::var_os("POWERDIAL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let modules = std::env::var_os("POWERDIAL_NODE_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/.cache/node/node_modules"));
    let mut missing = Vec::new();
    if node.is_none() {
        missing.push("node (apt-get install -y nodejs)".to_string());
    }
    if !chromium.is_file() {
        missing.push(format!(
            "Chromium at {} (apt-get install -y chromium, or set POWERDIAL_CHROMIUM)",
            chromium.display()
        ));
    }
    if !modules.join("playwright-core/package.json").is_file() {
        missing.push(format!(
            "playwright-core in {} (npm install playwright-core there, or set POWERDIAL_NODE_PATH)",
            modules.display()
        ));
    }
    if missing.is_empty() {
        return Some(Browser {
            node: node?,
            chromium,
            modules,
        });
    }
    let what = missing.join("; ");
    if std::env::var_os("CI").is_some() {
        panic!("{test}: missing {what}. `bash .ci/run` installs them.");
    }
    let line = format!("\nSKIPPED: {test}: missing {what} (`bash .ci/run` installs them)\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    None
}

pub(crate) fn shots_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"))
        .join("console")
}

#[test]
fn console_drives_a_session_in_chromium() {
    let Some(browser) = browser("console_drives_a_session_in_chromium") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("carrier.jsonl");
    let carrier_port = free_port();
    let _carrier = spawn_py(
        "pj_carrier.py",
        &[
            carrier_port.to_string(),
            events.display().to_string(),
            "180".into(),
            HOLD_S.to_string(),
        ],
    );
    wait_for("the carrier", Duration::from_secs(15), || {
        carrier_events(&events)
            .iter()
            .any(|e| e["event"] == "ready")
    });
    let mut app = spawn_app_with(AppOptions {
        extra_toml: format!(
            r#"[[trunk]]
name = "carrier"
uri = "sip:127.0.0.1:{carrier_port}"
caller_id = "+442079460999"
allow = ['\+44\d+']
"#
        ),
        ..AppOptions::default()
    });
    let status = dir.path().join("alice.json");
    let _phone = spawn_py(
        "pj_agent.py",
        &[
            app.sip.to_string(),
            "alice".into(),
            "alice-secret".into(),
            status.display().to_string(),
            "180".into(),
        ],
    );
    wait_for("alice's registration", Duration::from_secs(15), || {
        agent_status(&status)["reg"] == 200
    });

    let post = |path: &str, body: Value| app.post_ok(path, &body);
    // Three leads the carrier answers at once (…0200), in name order; the
    // first with the details the call bar shows.
    post(
        "/api/v1/custom-fields",
        json!({"name": "Lead Source", "type": "text"}),
    );
    let names = ["Ada Lovelace", "Grace Hopper", "Margaret Hamilton"];
    let leads = post(
        "/api/v1/leads",
        Value::Array(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let mut contacts = vec![json!({"name": n, "phones": [format!("+4420794{}0200", i + 1)]})];
                    if i == 0 {
                        contacts.push(json!({"name": "Charles Babbage", "phones": ["+442079460777", "+442079460778"],
                                             "emails": ["charles@engines.example"]}));
                    }
                    json!({"name": n, "status": "Potential", "contacts": contacts,
                           "custom": if i == 0 { json!({"Lead Source": "Leadgen Team"}) } else { json!({}) }})
                })
                .collect(),
        ),
    );
    let first_lead = leads[0]["id"].as_i64().expect("lead id");
    // A call two days ago (outside the block, R4) and a note from then.
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::days(2)).to_rfc3339();
    post(
        &format!("/api/v1/leads/{first_lead}/calls"),
        json!({"created": two_days_ago, "outcome": "no_answer", "duration_s": 0}),
    );
    let old_note = "Left a voicemail; try mornings.";
    post(
        &format!("/api/v1/leads/{first_lead}/notes"),
        json!({ "body": old_note }),
    );
    let view = post(
        "/api/v1/smart-views",
        json!({"name": "Console test", "query": "sort:name"}),
    );
    let session = post(
        "/api/v1/sessions",
        json!({"smart_view_id": view["id"], "wrap_up_idle": WRAP_UP_IDLE_S}),
    );
    let sid = session["id"].as_i64().expect("session id");

    // A token the admin issues to bob, who signs in with it.
    let bob_token = post("/api/v1/agents/bob/tokens", json!({}))["token"]
        .as_str()
        .expect("bob's token")
        .to_string();

    let shots = shots_dir();
    // The script asks for a restart of powerdial (its event stream drops)
    // by creating this file.
    let restart_request = dir.path().join("restart");
    let input = json!({
        "url": format!("http://{}/", app.http),
        "token": app.token,
        "share_token": session["share_token"],
        "agent_token_bob": bob_token,
        "session_id": sid,
        "agent": "alice",
        "first_lead": names[0],
        "first_lead_id": first_lead,
        "first_lead_details": {
            "status": "Potential",
            "contact_texts": ["Charles Babbage", "+442079460777", "+442079460778", "charles@engines.example", "+442079410200 (dialed)"],
            "custom_value": "Leadgen Team",
            "note": old_note,
        },
        "next_lead": names[1],
        "wrap_up_idle_s": WRAP_UP_IDLE_S,
        "shots_dir": shots,
        "chromium": browser.chromium,
        "playwright": browser.modules,
        "restart_request": restart_request,
    });
    let mut child = Command::new(&browser.node)
        .arg(repo().join("tests/browser/console.mjs"))
        .arg(input.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run node");
    // The script bounds each step; this bounds the whole.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut restarted = false;
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        if !restarted && restart_request.exists() {
            restarted = true;
            app.restart();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("node output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!("the browser script printed no result (timed out or crashed)\nstdout: {stdout}\nstderr: {stderr}")
        });
    let pretty = serde_json::to_string_pretty(&result).unwrap_or_default();
    // What the script saw, beside the screenshots.
    let _ = std::fs::write(shots.join("console-result.json"), &pretty);
    assert_eq!(
        result["ok"],
        true,
        "the console failed in Chromium (screenshots in {}):\n{pretty}\nstderr: {stderr}",
        shots.display()
    );

    // The admin view listed the queue with names, numbers and reasons.
    let queue = result["queue_at_start"].to_string();
    for n in names {
        assert!(
            queue.contains(n),
            "{n} missing from the admin queue: {queue}"
        );
    }

    // The note typed in the browser is the first call's note.
    let typed = result["typed"].as_str().unwrap_or_default();
    assert!(typed.len() > 10, "hardly anything was typed: {pretty}");
    let (code, text) = app.http_get(&format!(
        "/api/v1/calls?session_id={sid}&lead_id={first_lead}"
    ));
    assert_eq!(code, 200, "{text}");
    let calls: Value = serde_json::from_str(&text).expect("JSON");
    let call_id = calls["data"][0]["id"]
        .as_i64()
        .expect("the first lead's call");
    let (code, text) = app.http_get(&format!("/api/v1/calls/{call_id}"));
    assert_eq!(code, 200, "{text}");
    let call: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(call["notes"], typed, "the note in the call record: {call}");
    assert_eq!(call["outcome"], "answered", "{call}");
    // …and on the lead, beside the older note.
    let (code, text) = app.http_get(&format!("/api/v1/leads/{first_lead}"));
    assert_eq!(code, 200, "{text}");
    let lead: Value = serde_json::from_str(&text).expect("JSON");
    let notes = lead["notes"].as_array().expect("notes");
    assert_eq!(notes.len(), 2, "{lead}");
    assert_eq!(notes[0]["body"], typed, "the newest note: {lead}");
    assert_eq!(notes[0]["call_id"], call_id, "{lead}");
    assert_eq!(notes[0]["agent"], "alice", "{lead}");
    assert_eq!(notes[1]["body"], old_note, "{lead}");
}
