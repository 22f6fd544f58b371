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
