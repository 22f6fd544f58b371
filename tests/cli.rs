//! The `powerdial` command line as a user runs it.

use std::process::Command;

fn powerdial() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_powerdial"));
    c.env_remove("POWERDIAL_DATABASE_URL")
        .env_remove("POWERDIAL_ADMIN_TOKEN");
    c
}

#[test]
fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["check-config", "--help"],
        vec!["import-leads", "--help"],
    ] {
        let out = powerdial().args(&args).output().expect("run");
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
}

#[test]
fn check_config_accepts_the_example() {
    let out = powerdial()
        .args(["check-config", "sip-config/powerdial.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn check_config_points_at_the_bad_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\ndomain = \"example.com\"\nrtp_ports = \"30000-20000\"\n",
    )
    .expect("write");
    let out = powerdial()
        .arg("check-config")
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml:3") && err.contains("server.rtp_ports"),
        "{err}"
    );
}

#[test]
fn import_leads_reports_bad_rows_by_line_and_keeps_good_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("leads.csv");
    std::fs::write(
        &csv,
        "name,status,contact,phone\n\
         Acme,Potential,Ann,+1 415 555 0134\n\
         Bad Phone Inc,Potential,Bob,not-a-number\n\
         Globex,Qualified,Cy,(212) 555-0199\n",
    )
    .expect("write");
    let cfg = dir.path().join("p.toml");
    std::fs::write(
        &cfg,
        format!(
            "[database]\nurl = \"sqlite://{}\"\n",
            dir.path().join("db/p.db").display()
        ),
    )
    .expect("write");
    let out = powerdial()
        .arg("import-leads")
        .arg(&csv)
        .arg("--config")
        .arg(&cfg)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("imported 2 leads, 1 rows failed"),
        "{stdout}"
    );
    assert!(stderr.contains("leads.csv:3:"), "{stderr}");
}

/// Starts `powerdial serve` with no config and no token on ephemeral ports
/// in `data`; once ready, sends `GET /api/v1/leads` with `token` (or the
/// one the server printed, when `None`) and then stops it. Returns what it
/// printed on stdout and the HTTP status line.
fn serve_fresh(data: &std::path::Path, token: Option<&str>) -> (String, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut child = powerdial()
        .arg("serve")
        .env("POWERDIAL_SERVER_DATA_DIR", data)
        .env("POWERDIAL_SERVER_SIP_LISTEN", r#"["udp:127.0.0.1:0"]"#)
        .env("POWERDIAL_SERVER_HTTP_LISTEN", "127.0.0.1:0")
        .env("POWERDIAL_SERVER_RTP_PORTS", "40000-40099")
        .env("NO_COLOR", "1")
        .env_remove("POWERDIAL_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let mut http = None;
    let mut ready = false;
    for line in BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        let plain: String = {
            // Strip ANSI colour sequences whatever the subscriber decided.
            let mut out = String::new();
            let mut esc = false;
            for c in line.chars() {
                match (esc, c) {
                    (false, '\u{1b}') => esc = true,
                    (true, 'm') => esc = false,
                    (true, _) => {}
                    (false, c) => out.push(c),
                }
            }
            out
        };
        if let Some(at) = plain.find("http=") {
            http = plain[at + 5..]
                .split_whitespace()
                .next()
                .map(str::to_string);
        }
        if plain.contains("powerdial ready") {
            ready = true;
            break;
        }
    }
    assert!(ready, "serve did not come up");
    let http = http.expect("the HTTP address in the log");
    let mut out = String::new();
    let mut stdout = child.stdout.take().expect("stdout");
    let token = match token {
        Some(t) => t.to_string(),
        None => {
            let mut buf = [0u8; 4096];
            let n = stdout.read(&mut buf).unwrap_or(0);
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
            out.split_whitespace()
                .find(|w| w.len() == 64 && w.chars().all(|c| c.is_ascii_hexdigit()))
                .unwrap_or("")
                .to_string()
        }
    };
    let mut s = std::net::TcpStream::connect(&http).expect("connect http");
    write!(
        s,
        "GET /api/v1/leads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let status = resp.lines().next().unwrap_or("").to_string();
    let _ = child.kill();
    let _ = child.wait();
    let _ = stdout.read_to_string(&mut out);
    (out, status)
}

/// SPEC §4: with no admin token configured the first start generates one,
/// keeps it under data_dir with mode 0600 and prints it once with the
/// console's URL; the API takes it; the next start reads it back and
/// prints nothing.
#[test]
fn first_start_generates_prints_and_keeps_the_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let (out, status) = serve_fresh(&data, None);
    let file = data.join("admin-token");
    let token = std::fs::read_to_string(&file).expect("token file");
    let token = token.trim();
    assert_eq!(token.len(), 64, "{token}");
    assert!(out.contains(token), "the token is printed once: {out}");
    assert!(out.contains("Console: http://127.0.0.1:"), "{out}");
    assert!(
        status.contains(" 200 "),
        "the API takes the printed token: {status}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only its owner may read the token");
    }
    let (out, status) = serve_fresh(&data, Some(token));
    assert!(
        !out.contains(token),
        "printed again on a later start: {out}"
    );
    assert!(
        status.contains(" 200 "),
        "the kept token still works: {status}"
    );
    let (_, status) = serve_fresh(&data, Some("wrong"));
    assert!(
        status.contains(" 401 "),
        "a wrong token is refused: {status}"
    );
}
