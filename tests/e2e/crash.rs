//! A crash (`kill -9`) with calls up leaves nothing on the carrier's meter
//! and no call without its outcome, and the sessions go on where they were
//! (SPEC §1, §5; RFC 3261 §15.1.1 BYE, §9.1 CANCEL):
//!
//! 30 agents dial one session over 35 leads: 20 leads answer and stay on
//! the line, 10 ring forever, 5 wait in the queue. Then powerdial is
//! killed with SIGKILL and started again. Within 5 s of the kill every
//! carrier leg receives a BYE (answered) or a CANCEL (ringing), every
//! agent's phone a BYE; the 30 calls have their outcome (`answered` with
//! `answered_at` and `ended_at`, or `skipped`); the agents' phones are
//! called again and the 5 waiting leads are dialed; no lead is dialed twice.
//!
//! The peers are SIPp processes (the scripted PJSIP peers hold at most 4
//! calls each): one plays the 30 agent phones (registered on one port with
//! digest auth), one a carrier whose leads answer
//! (`fixtures/sipp/carrier_answer_hold.xml`), one a carrier whose leads
//! ring (`carrier_ring_forever.xml`), as two `[[trunk]]`s picked by number.
//! What is asserted comes from their own logs and from the call records.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::app::{free_port, http_request, repo, require_program, spawn_app_with, App, AppOptions};
use crate::peers::{guard, wait_for, Peer};
use crate::sessions::PgSchema;

const AGENTS: usize = 30;
/// Leads 0..30: every third one rings forever, the others answer; 30..35
/// answer and wait in the queue until the restart.
const LEADS: usize = 35;

fn agent(i: usize) -> String {
    format!("crash{i:02}")
}

fn rings(i: usize) -> bool {
    i < AGENTS && i % 3 == 2
}

/// E.164 digits (without `+`) of lead `i`: the tail names the carrier.
fn digits(i: usize) -> String {
    format!("442079{i:02}{}", if rings(i) { "0180" } else { "0200" })
}

/// A long-running SIPp UAS on `port` playing `scenario`, logging to `dir`.
fn sipp_uas(scenario: &str, port: u16, dir: &Path) -> Peer {
    let sipp = require_program("sipp", "sip-tester");
    let child = Command::new(sipp)
        .current_dir(dir)
        .arg("-sf")
        .arg(repo().join("fixtures/sipp").join(scenario))
        .args(["-i", "127.0.0.1", "-p", &port.to_string(), "-t", "u1"])
        .args(["-mp", &free_port().to_string()])
        // In-dialog OPTIONS and UPDATE get a 200 (RFC 4028 refreshes).
        .arg("-aa")
        .args(["-nostdin", "-trace_logs", "-trace_err"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sipp");
    guard(child)
}

/// `(what, who, epoch seconds)` from the `<log>` lines of the SIPp runs in `dir`.
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

fn count(log: &[(String, String, f64)], what: &str) -> usize {
    log.iter().filter(|(w, _, _)| w == what).count()
}

fn epoch_s() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn post(app: &App, path: &str, body: &Value) -> (u16, Value) {
    let (code, text) = http_request(
        app.http,
        "POST",
        path,
        Some(&app.token),
        Some(&body.to_string()),
    );
    (code, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn calls(app: &App, session: i64) -> Vec<Value> {
    let (code, text) = app.http_get(&format!("/api/v1/calls?session_id={session}&limit=1000"));
    assert_eq!(code, 200, "{text}");
    let v: Value = serde_json::from_str(&text).expect("JSON");
    v["data"].as_array().cloned().unwrap_or_default()
}

/// Registers every agent's Contact on `port` (one SIPp run, digest auth).
fn register_agents(app: &App, port: u16, dir: &Path) {
    let sipp = require_program("sipp", "sip-tester");
    let csv = dir.join("agents.csv");
    let mut text = String::from("SEQUENTIAL\n");
    for i in 0..AGENTS {
        text.push_str(&format!(
            "{u};[authentication username={u} password=pw-{i}]\n",
            u = agent(i)
        ));
    }
    std::fs::write(&csv, text).expect("write injection file");
    let out = Command::new(sipp)
        .current_dir(dir)
        .arg("-sf")
        .arg(repo().join("fixtures/sipp/register_auth_inf.xml"))
        .arg("-inf")
        .arg(&csv)
        .args(["-m", &AGENTS.to_string(), "-r", "100", "-l", "30"])
        .args(["-t", "u1", "-i", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-timeout",
            "30s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
        ])
        .arg(app.sip.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("run sipp");
    assert!(
        out.status.success(),
        "registering the agents failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kill_9_with_calls_up_ends_every_leg_records_every_call_and_resumes_the_session() {
    crash_and_restart(None);
}

#[test]
fn kill_9_with_calls_up_ends_every_leg_records_every_call_and_resumes_the_session_postgres() {
    let Some(pg) = PgSchema::create(
        "kill_9_with_calls_up_ends_every_leg_records_every_call_and_resumes_the_session_postgres",
    ) else {
        return;
    };
    crash_and_restart(Some(pg.url()));
}

fn crash_and_restart(database_url: Option<String>) {
    let work = tempfile::tempdir().expect("tempdir");
    let (answer_dir, ring_dir, agent_dir) = (
        work.path().join("answer"),
        work.path().join("ring"),
        work.path().join("agents"),
    );
    for d in [&answer_dir, &ring_dir, &agent_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let (answer_port, ring_port, agent_port) = (free_port(), free_port(), free_port());
    let _answer = sipp_uas("carrier_answer_hold.xml", answer_port, &answer_dir);
    let _ring = sipp_uas("carrier_ring_forever.xml", ring_port, &ring_dir);

    let mut agents = String::new();
    for i in 0..AGENTS {
        agents.push_str(&format!(
            "[[agent]]\nusername = \"{}\"\npassword = \"pw-{i}\"\n\n",
            agent(i)
        ));
    }
    let mut app = spawn_app_with(AppOptions {
        // SIPp 3.6 answers only MD5 challenges.
        server_toml: "digest_algorithms = [\"MD5\"]".into(),
        extra_toml: format!(
            r#"[dialer]
ring_timeout = 120
rtp_timeout = 600
lead_on_phone = false

[[trunk]]
name = "answers"
uri = "sip:127.0.0.1:{answer_port}"
caller_id = "+442079460999"
allow = ['\+44\d+0200']
options_interval = 0

[[trunk]]
name = "rings"
uri = "sip:127.0.0.1:{ring_port}"
caller_id = "+442079460999"
allow = ['\+44\d+0180']
options_interval = 0

{agents}"#
        ),
        database_url,
        ..AppOptions::default()
    });
    register_agents(&app, agent_port, &agent_dir);
    let _phones = sipp_uas("agent_answer_hold.xml", agent_port, &agent_dir);

    let leads: Vec<Value> = (0..LEADS)
        .map(|i| {
            json!({"name": format!("Lead {i:02}"),
                   "contacts": [{"name": "Contact", "phones": [format!("+{}", digits(i))]}]})
        })
        .collect();
    let (code, created) = post(&app, "/api/v1/leads", &Value::Array(leads));
    assert_eq!(code, 201, "{created}");
    let (code, view) = post(
        &app,
        "/api/v1/smart-views",
        &json!({"name": "all by name", "query": "sort:name"}),
    );
    assert_eq!(code, 201, "{view}");
    let (code, session) = post(
        &app,
        "/api/v1/sessions",
        &json!({"smart_view_id": view["id"], "reduced_ring_time": false}),
    );
    assert_eq!(code, 201, "{session}");
    let sid = session["id"].as_i64().expect("session id");
    for i in 0..AGENTS {
        let (code, body) = post(
            &app,
            &format!("/api/v1/sessions/{sid}/agents"),
            &json!({ "agent": agent(i) }),
        );
        assert!(
            code == 200 || code == 201,
            "join {}: {code} {body}",
            agent(i)
        );
    }

    // 20 calls connected, 10 ringing.
    let answering = (0..AGENTS).filter(|&i| !rings(i)).count();
    let ringing = AGENTS - answering;
    wait_for(
        "20 leads connected and 10 ringing",
        Duration::from_secs(60),
        || {
            let answered = calls(&app, sid)
                .iter()
                .filter(|c| !c["answered_at"].is_null())
                .count();
            answered == answering
                && count(&sipp_log(&answer_dir), "INVITE") == answering
                && count(&sipp_log(&ring_dir), "INVITE") == ringing
        },
    );
    let before = calls(&app, sid);
    assert_eq!(before.len(), AGENTS, "one call per agent: {before:?}");
    assert!(before.iter().all(|c| c["outcome"].is_null()));
    // The leg journal commits within a few ms of a change.
    std::thread::sleep(Duration::from_millis(300));

    let killed_at = epoch_s();
    app.kill_and_restart();

    // Every carrier leg gets its BYE or CANCEL, every phone its BYE.
    wait_for(
        "a BYE or CANCEL for every leg",
        Duration::from_secs(15),
        || {
            count(&sipp_log(&answer_dir), "BYE") == answering
                && count(&sipp_log(&ring_dir), "CANCEL") == ringing
                && count(&sipp_log(&agent_dir), "BYE") >= AGENTS
        },
    );
    let mut ends: Vec<(String, String, f64)> = sipp_log(&answer_dir)
        .into_iter()
        .filter(|e| e.0 == "BYE")
        .chain(sipp_log(&ring_dir).into_iter().filter(|e| e.0 == "CANCEL"))
        .collect();
    ends.sort_by(|a, b| a.2.total_cmp(&b.2));
    let slowest = ends.last().map_or(0.0, |e| e.2 - killed_at);
    eprintln!(
        "crash: {} carrier legs ended, the last {slowest:.2} s after the kill",
        ends.len()
    );
    assert!(
        slowest <= 5.0,
        "a carrier leg was ended {slowest:.2} s after the kill: {ends:?}"
    );
    let ended: HashSet<&str> = ends.iter().map(|e| e.1.as_str()).collect();
    for i in 0..AGENTS {
        assert!(ended.contains(digits(i).as_str()), "lead {i} not ended");
    }

    // Every call that was up has its outcome.
    let after = calls(&app, sid);
    let by_id: HashMap<i64, &Value> = after
        .iter()
        .map(|c| (c["id"].as_i64().expect("id"), c))
        .collect();
    for c in &before {
        let id = c["id"].as_i64().expect("id");
        let now = by_id[&id];
        let number = now["number"].as_str().unwrap_or_default();
        assert!(!now["ended_at"].is_null(), "call {id} has no end: {now}");
        if number.ends_with("0180") {
            assert_eq!(now["outcome"], "skipped", "ringing at the crash: {now}");
        } else {
            assert_eq!(now["outcome"], "answered", "connected at the crash: {now}");
            assert!(!now["answered_at"].is_null(), "{now}");
        }
    }

    // The session resumes: the phones are called again and the waiting
    // leads are dialed; no lead is dialed twice.
    wait_for(
        "the waiting leads dialed after the restart",
        Duration::from_secs(30),
        || {
            let invited: HashSet<String> = sipp_log(&answer_dir)
                .into_iter()
                .filter(|e| e.0 == "INVITE")
                .map(|e| e.1)
                .collect();
            (AGENTS..LEADS).all(|i| invited.contains(&digits(i)))
        },
    );
    let phones_called_again = sipp_log(&agent_dir)
        .iter()
        .filter(|e| e.0 == "INVITE" && e.2 > killed_at)
        .count();
    assert!(
        phones_called_again >= LEADS - AGENTS,
        "only {phones_called_again} phones called again"
    );
    // The session's queue counts the calls the crash ended: the 20 leads
    // answered before the crash are answered in the session (R5).
    wait_for(
        "the session to count the answered leads",
        Duration::from_secs(10),
        || {
            let (code, text) = app.http_get(&format!("/api/v1/sessions/{sid}"));
            let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            code == 200 && v["counts"]["answered"] == answering
        },
    );
    let mut invites: HashMap<String, usize> = HashMap::new();
    for (_, who, _) in sipp_log(&answer_dir)
        .into_iter()
        .chain(sipp_log(&ring_dir))
        .filter(|e| e.0 == "INVITE")
    {
        *invites.entry(who).or_default() += 1;
    }
    let twice: Vec<_> = invites.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "leads dialed twice: {twice:?}");
    assert_eq!(invites.len(), LEADS, "every lead dialed once: {invites:?}");
    let log = app.log_text();
    assert!(
        log.contains("legs left up by a crash"),
        "no recovery summary in the log"
    );
}

/// Registers one Contact of `user` from `port` (SIPp, digest auth).
fn register_contact(app: &App, user: &str, password: &str, port: u16, dir: &Path) {
    let sipp = require_program("sipp", "sip-tester");
    let out = Command::new(sipp)
        .current_dir(dir)
        .arg("-sf")
        .arg(repo().join("fixtures/sipp/register_auth.xml"))
        .args(["-s", user, "-au", user, "-ap", password])
        .args(["-m", "1", "-t", "u1", "-i", "127.0.0.1"])
        .args(["-p", &port.to_string()])
        .args([
            "-timeout",
            "20s",
            "-timeout_error",
            "-nostdin",
            "-trace_err",
        ])
        .arg(app.sip.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("run sipp");
    assert!(
        out.status.success(),
        "registering {user} from port {port} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An agent with two phones registered (two Contacts): powerdial forks its
/// INVITE to both (RFC 3261 §13.2.2.4 as a forking proxy), and both ring
/// when powerdial is killed with SIGKILL. After the restart each phone
/// receives a CANCEL of the INVITE it was ringing for (its own branch,
/// §9.1) within 5 s of the kill: every fork was journaled, not only the
/// call.
#[test]
fn kill_9_while_an_agents_phones_ring_cancels_every_fork() {
    let work = tempfile::tempdir().expect("tempdir");
    let (dir_a, dir_b, ring_dir) = (
        work.path().join("phone-a"),
        work.path().join("phone-b"),
        work.path().join("ring"),
    );
    for d in [&dir_a, &dir_b, &ring_dir] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    let ring_port = free_port();
    let _ring = sipp_uas("carrier_ring_forever.xml", ring_port, &ring_dir);
    let mut app = spawn_app_with(AppOptions {
        server_toml: "digest_algorithms = [\"MD5\"]".into(),
        extra_toml: format!(
            r#"[[trunk]]
name = "rings"
uri = "sip:127.0.0.1:{ring_port}"
caller_id = "+442079460999"
options_interval = 0
"#
        ),
        ..AppOptions::default()
    });
    let (port_a, port_b) = (free_port(), free_port());
    register_contact(&app, "alice", "alice-secret", port_a, &dir_a);
    register_contact(&app, "alice", "alice-secret", port_b, &dir_b);
    let _phone_a = sipp_uas("phone_ring_forever.xml", port_a, &dir_a);
    let _phone_b = sipp_uas("phone_ring_forever.xml", port_b, &dir_b);
    // Let SIPp bind its ports before powerdial sends the INVITEs.
    std::thread::sleep(Duration::from_millis(300));

    let (code, created) = post(
        &app,
        "/api/v1/leads",
        &json!([{"name": "Lead", "contacts": [{"name": "C", "phones": ["+442079460180"]}]}]),
    );
    assert_eq!(code, 201, "{created}");
    let (code, view) = post(
        &app,
        "/api/v1/smart-views",
        &json!({"name": "all", "query": "sort:name"}),
    );
    assert_eq!(code, 201, "{view}");
    let (code, session) = post(
        &app,
        "/api/v1/sessions",
        &json!({"smart_view_id": view["id"], "reduced_ring_time": false}),
    );
    assert_eq!(code, 201, "{session}");
    let sid = session["id"].as_i64().expect("session id");
    let (code, body) = post(
        &app,
        &format!("/api/v1/sessions/{sid}/agents"),
        &json!({ "agent": "alice" }),
    );
    assert!(code == 200 || code == 201, "join: {code} {body}");

    let invited = |dir: &Path| -> Vec<String> {
        sipp_log(dir)
            .into_iter()
            .filter(|e| e.0 == "INVITE")
            .map(|e| e.1)
            .collect()
    };
    wait_for("both phones ringing", Duration::from_secs(15), || {
        invited(&dir_a).len() == 1 && invited(&dir_b).len() == 1
    });
    let (branch_a, branch_b) = (invited(&dir_a)[0].clone(), invited(&dir_b)[0].clone());
    assert_ne!(branch_a, branch_b, "one branch per fork");
    // The leg journal commits within a few ms of a change.
    std::thread::sleep(Duration::from_millis(300));

    let killed_at = epoch_s();
    app.kill_and_restart();

    let cancel_of = |dir: &Path, branch: &str| {
        sipp_log(dir)
            .into_iter()
            .find(|e| e.0 == "CANCEL" && e.1 == branch)
            .map(|e| e.2)
    };
    wait_for(
        "a CANCEL for each ringing fork",
        Duration::from_secs(15),
        || cancel_of(&dir_a, &branch_a).is_some() && cancel_of(&dir_b, &branch_b).is_some(),
    );
    for (phone, at) in [
        ("A", cancel_of(&dir_a, &branch_a)),
        ("B", cancel_of(&dir_b, &branch_b)),
    ] {
        let after = at.unwrap_or(f64::MAX) - killed_at;
        eprintln!("crash: phone {phone} CANCELled {after:.2} s after the kill");
        assert!(
            after <= 5.0,
            "phone {phone} got its CANCEL {after:.2} s after the kill"
        );
    }
    // The summary line, without the log's colour codes.
    let summary: String = app
        .log_text()
        .lines()
        .filter(|l| l.contains("legs left up by a crash"))
        .map(|l| {
            let mut out = String::new();
            let mut chars = l.chars();
            while let Some(c) = chars.next() {
                if c == '\u{1b}' {
                    chars.by_ref().find(|c| *c == 'm');
                } else {
                    out.push(c);
                }
            }
            out
        })
        .collect();
    assert!(
        summary.contains("agent_cancels=2"),
        "the recovery summary counts both forks: {summary}"
    );
    // Each phone's 487 reaches the sweep, which ACKs it (RFC 3261
    // §17.1.1.3), rather than arriving after the sweep ended as a stray.
    std::thread::sleep(Duration::from_secs(1));
    let strays: Vec<String> = app
        .log_text()
        .lines()
        .filter(|l| {
            l.contains("stray response ignored")
                && l.contains("487")
                && (l.contains(&format!(":{port_a}")) || l.contains(&format!(":{port_b}")))
        })
        .map(str::to_string)
        .collect();
    assert!(strays.is_empty(), "487s the sweep did not ACK: {strays:?}");
}
