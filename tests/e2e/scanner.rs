//! A real scanner against powerdial (SPEC §5), bounded, on loopback:
//! SIPVicious (Debian `sipvicious`: svmap, svwar, svcrack) from addresses
//! other than this host's own 127.0.0.1 (which the default
//! `security.trusted_networks` exempts), first as shipped and then with
//! its User-Agent disguised so that only the limits and the uniform
//! answers stand in its way. It finds no agent, cracks no password from a
//! 1,000-word list that holds the right one, and is banned; a registered
//! agent's call goes through meanwhile. Defaults as shipped.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::app::{http_request, metric, repo, require_program, spawn_app_with, App, AppOptions};
use crate::peers::{pj_agent, wait_for, Carrier};

/// A User-Agent like a softphone's, for the disguised runs.
const DISGUISE: &str = "Z 5.6.1 rv2.10.20";

/// Runs `tool` with `args` from `source` (through tests/peers/sv_run.py);
/// its combined output.
fn sipvicious(app: &App, source: &str, user_agent: &str, tool: &str, args: &[&str]) -> String {
    let script = repo().join("tests/peers/sv_run.py");
    let port = app.sip.port().to_string();
    let out = Command::new("timeout")
        .arg("60")
        .arg("python3")
        .arg(&script)
        .args([source, user_agent, tool, "-p", &port])
        .args(args)
        .arg("127.0.0.1")
        .output()
        .expect("run sipvicious");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("---- {tool} from {source} ({user_agent}) ----\n{text}");
    text
}

fn write_lists(dir: &Path) -> (String, String) {
    // Two real agents among 60 names that are not.
    let mut users = vec!["alice".to_string(), "bob".to_string()];
    users.extend((100..160).map(|n| n.to_string()));
    let users_file = dir.join("users.txt");
    std::fs::write(&users_file, users.join("\n") + "\n").expect("users");
    // 1,000 passwords, the right one 500th.
    let mut words: Vec<String> = (0..1000).map(|i| format!("pass{i:04}")).collect();
    words[499] = "alice-secret".into();
    let words_file = dir.join("words.txt");
    std::fs::write(&words_file, words.join("\n") + "\n").expect("words");
    (
        users_file.display().to_string(),
        words_file.display().to_string(),
    )
}

fn banned(app: &App, address: &str) -> Option<Value> {
    let (_, bans) = app.http_get("/api/v1/bans");
    let bans: Value = serde_json::from_str(&bans).expect("JSON");
    bans["sources"]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["address"] == address).cloned())
}

fn assert_found_nothing(tool: &str, out: &str) {
    assert!(
        !out.contains("alice-secret"),
        "{tool} cracked a password:\n{out}"
    );
    assert!(
        out.contains("found nothing"),
        "{tool} reported a finding:\n{out}"
    );
}

#[test]
fn sipvicious_finds_no_agent_cracks_no_password_and_is_banned() {
    require_program("svwar", "sipvicious");
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), None);
    let app = spawn_app_with(AppOptions {
        extra_toml: carrier.trunk_toml(),
        ..AppOptions::default()
    });
    let (_phone, _status) = pj_agent(&app, "alice", "alice-secret", dir.path());
    let (users, words) = write_lists(dir.path());

    // As shipped ("friendly-scanner"): dropped unanswered, banned at once.
    let out = sipvicious(&app, "127.0.0.2", "-", "svmap", &[]);
    assert!(
        !out.contains("powerdial"),
        "svmap identified powerdial:\n{out}"
    );
    let out = sipvicious(&app, "127.0.0.3", "-", "svwar", &["-d", &users]);
    assert_found_nothing("svwar", &out);
    let out = sipvicious(
        &app,
        "127.0.0.4",
        "-",
        "svcrack",
        &["-u", "alice", "-d", &words, "--maximumtime", "3"],
    );
    assert_found_nothing("svcrack", &out);
    for source in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let ban = banned(&app, source).unwrap_or_else(|| panic!("{source} is not banned"));
        assert_eq!(ban["reason"], "scanner", "{ban}");
    }

    // Disguised: svwar gets the same 401 for alice as for a name that
    // does not exist, and gives up; svcrack's guesses lock the username
    // out of its address after five, and the address is banned after
    // sixteen requests, long before the right password's turn.
    let out = sipvicious(
        &app,
        "127.0.0.5",
        DISGUISE,
        "svwar",
        &["--force", "-d", &users, "--maximumtime", "3"],
    );
    assert_found_nothing("svwar (disguised)", &out);
    let out = sipvicious(
        &app,
        "127.0.0.6",
        DISGUISE,
        "svcrack",
        &["-u", "alice", "-d", &words, "--maximumtime", "3"],
    );
    assert_found_nothing("svcrack (disguised)", &out);
    let ban = banned(&app, "127.0.0.6").expect("the disguised svcrack is banned");
    assert_eq!(ban["reason"], "rate_limit", "{ban}");
    let (_, bans) = app.http_get("/api/v1/bans");
    let bans: Value = serde_json::from_str(&bans).expect("JSON");
    assert!(
        bans["accounts"].as_array().is_some_and(|a| a
            .iter()
            .any(|l| l["username"] == "alice" && l["address"] == "127.0.0.6")),
        "alice is not locked out of 127.0.0.6: {bans}"
    );
    let (_, metrics) = app.http_get("/metrics");
    assert!(
        metric(&metrics, "powerdial_sip_bans_total{reason=\"scanner\"}") >= 3.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "powerdial_sip_bans_total{reason=\"rate_limit\"}") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "powerdial_sip_auth_lockouts_total") >= 1.0,
        "{metrics}"
    );

    // The agent, registered from 127.0.0.1 with the very password the
    // scanner guessed at, still takes calls.
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
        "the agent's call after the scan",
        Duration::from_secs(15),
        || {
            let (_, t) = app.http_get(&format!("/api/v1/calls/{id}"));
            serde_json::from_str::<Value>(&t).is_ok_and(|v| !v["answered_at"].is_null())
        },
    );
    let (code, _) = http_request(
        app.http,
        "POST",
        &format!("/api/v1/calls/{id}/hangup"),
        Some(&app.token),
        Some(""),
    );
    assert_eq!(code, 200);
}
