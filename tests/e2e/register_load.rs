//! A burst of REGISTERs with digest auth from many distinct agents, then a
//! crash (`kill -9`): every binding whose 200 OK went out before the crash
//! (100 ms before, the budget of the batch writer) is restored at restart
//! (SPEC §5 "A binding is stored before or together with its 200 OK's
//! effects: none is ever dropped, under any load"). Runs on the shipped
//! writer settings.

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::app::{free_port, repo, require_program, spawn_app_with, App, AppOptions};
use crate::sessions::PgSchema;

/// Distinct agents, one registration each.
const AGENTS: usize = 2_000;
/// REGISTER transactions (401 → REGISTER with credentials → 200) per second.
const RATE: usize = 1_000;

fn username(i: usize) -> String {
    format!("load{i:05}")
}

fn password(i: usize) -> String {
    format!("pw-{i}")
}

/// `[[agent]]` tables for every load agent.
fn agents_toml() -> String {
    let mut toml = String::new();
    for i in 0..AGENTS {
        toml.push_str(&format!(
            "[[agent]]\nusername = \"{}\"\npassword = \"{}\"\n\n",
            username(i),
            password(i)
        ));
    }
    toml
}

/// SIPp's injection file: the username, then the whole `[authentication …]`
/// keyword (SIPp 3.6 does not expand fields inside it).
fn injection_csv(path: &Path) {
    let mut csv = String::from("SEQUENTIAL\n");
    for i in 0..AGENTS {
        csv.push_str(&format!(
            "{u};[authentication username={u} password={p}]\n",
            u = username(i),
            p = password(i)
        ));
    }
    std::fs::write(path, csv).expect("write injection file");
}

/// The agents SIPp logged a 200 OK for (`ACK <user> <sec> <usec>` lines of
/// `fixtures/sipp/register_auth_inf.xml`).
fn acknowledged(dir: &Path) -> HashSet<String> {
    let mut acked = HashSet::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().ends_with("_logs.log") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() == Some("ACK") {
                if let Some(user) = words.next() {
                    acked.insert(user.to_string());
                }
            }
        }
    }
    acked
}

/// The agents `GET /api/v1/agents` shows as registered.
fn registered(app: &App) -> HashSet<String> {
    let (status, body) = app.http_get("/api/v1/agents");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("agents JSON");
    v["data"]
        .as_array()
        .expect("data array")
        .iter()
        .filter(|a| a["registered"] == serde_json::Value::Bool(true))
        .filter_map(|a| a["username"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn acknowledged_registrations_survive_kill_9_sqlite() {
    burst_then_kill(None);
}

#[test]
fn acknowledged_registrations_survive_kill_9_postgres() {
    let Some(pg) = PgSchema::create("acknowledged_registrations_survive_kill_9_postgres") else {
        return;
    };
    burst_then_kill(Some(pg.url()));
}

/// Registers every load agent once at [`RATE`], waits until SIPp has its
/// last 200 OK plus 100 ms, kills the server with SIGKILL and checks the
/// restarted server has every acknowledged binding.
fn burst_then_kill(database_url: Option<String>) {
    let mut app = spawn_app_with(AppOptions {
        // SIPp 3.6 answers only MD5 challenges.
        server_toml: "digest_algorithms = [\"MD5\"]".into(),
        extra_toml: agents_toml(),
        database_url,
        ..AppOptions::default()
    });
    let sipp = require_program("sipp", "sip-tester");
    let work = tempfile::tempdir().expect("tempdir");
    let csv = work.path().join("agents.csv");
    injection_csv(&csv);
    let out = Command::new(sipp)
        .current_dir(work.path())
        .arg("-sf")
        .arg(repo().join("fixtures/sipp/register_auth_inf.xml"))
        .arg("-inf")
        .arg(&csv)
        .args(["-m", &AGENTS.to_string(), "-r", &RATE.to_string()])
        .args(["-l", "2000", "-t", "u1", "-i", "127.0.0.1"])
        .args(["-p", &free_port().to_string()])
        .args(["-buff_size", "4194304"])
        .args(["-timeout", "60s", "-timeout_error"])
        .args(["-trace_logs", "-trace_err"])
        .arg(app.sip.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .output()
        .expect("run sipp");
    let acked = acknowledged(work.path());
    assert!(
        out.status.success(),
        "sipp failed ({:?}), {} of {AGENTS} acknowledged\n{}",
        out.status,
        acked.len(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(acked.len(), AGENTS, "every REGISTER got its 200 OK");

    // The last 200 OK left at least 100 ms ago: crash.
    std::thread::sleep(Duration::from_millis(100));
    app.kill_and_restart();

    let restored = registered(&app);
    let mut lost: Vec<&String> = acked.difference(&restored).collect();
    lost.sort();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged bindings lost by kill -9, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}
