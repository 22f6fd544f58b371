//! Third-party SIP stacks register against `powerdial serve` on its default
//! configuration (the digest offer a new user gets) over UDP and TCP; wrong
//! passwords never get a 200.

use std::time::Duration;

use crate::app::spawn_app;
use crate::peers::{pjsip_register, sipp, Baresip};

fn assert_sipp_ok(out: &std::process::Output, what: &str, app: &crate::app::App) {
    assert!(
        out.status.success(),
        "{what}: sipp failed ({:?})\nstdout:\n{}\nstderr:\n{}\nserver log:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        app.log_text()
    );
}

#[test]
fn sipp_registers_with_digest_over_udp_and_tcp() {
    let app = spawn_app();
    for transport in ["u1", "t1"] {
        let out = sipp(
            &app,
            "register_auth.xml",
            transport,
            "alice",
            "alice-secret",
        );
        assert_sipp_ok(&out, &format!("register over {transport}"), &app);
    }
    let (status, body) = app.http_get("/api/v1/agents/alice");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.matches("\"contact\"").count(),
        2,
        "one binding per transport: {body}"
    );
    // Bindings survive a restart (persisted in the database).
    let mut app = app;
    app.restart();
    let (status, body) = app.http_get("/api/v1/agents/alice");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body.matches("\"contact\"").count(),
        2,
        "after restart: {body}"
    );
}

#[test]
fn sipp_wrong_password_gets_401_again() {
    let app = spawn_app();
    for transport in ["u1", "t1"] {
        let out = sipp(
            &app,
            "register_wrong_password.xml",
            transport,
            "alice",
            "wrong",
        );
        assert_sipp_ok(&out, &format!("wrong password over {transport}"), &app);
        // An unknown user gets the very same treatment (no user enumeration).
        let out = sipp(
            &app,
            "register_wrong_password.xml",
            transport,
            "mallory",
            "x",
        );
        assert_sipp_ok(&out, &format!("unknown user over {transport}"), &app);
    }
    let (status, body) = app.http_get("/api/v1/agents/alice");
    assert_eq!(status, 200, "{body}");
    assert!(
        !body.contains("\"contact\""),
        "no binding was stored: {body}"
    );
}

#[test]
fn pjsip_registers_over_udp_and_tcp_and_unregisters() {
    let app = spawn_app();
    for transport in ["udp", "tcp"] {
        let codes = pjsip_register(&app, transport, "bob", "bob-secret");
        assert_eq!(
            codes.last(),
            Some(&200),
            "pjsip over {transport}: {codes:?}"
        );
    }
    // PJSIP unregisters its account when it shuts down (Expires: 0).
    let (status, body) = app.http_get("/api/v1/agents/bob");
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("\"contact\""), "unregistered: {body}");
    let codes = pjsip_register(&app, "udp", "bob", "nope");
    assert!(
        !codes.contains(&200),
        "wrong password must never get 200: {codes:?}"
    );
    assert!(codes.contains(&401), "{codes:?}");
}

#[test]
fn baresip_registers_over_udp_and_tcp() {
    let app = spawn_app();
    for transport in ["udp", "tcp"] {
        let mut phone = Baresip::start();
        phone.command(
            "uanew",
            &format!(
                "<sip:alice@{sip};transport={transport}>;auth_pass=alice-secret;regint=600;answermode=auto;audio_codecs=PCMU",
                sip = app.sip
            ),
        );
        let ev = phone.wait_event(&["REGISTER_OK", "REGISTER_FAIL"], Duration::from_secs(10));
        let ev = ev.unwrap_or_else(|| panic!("no registration event from baresip ({transport})"));
        assert!(
            ev.contains("REGISTER_OK"),
            "baresip over {transport}: {ev}\nlog:\n{}",
            app.log_text()
        );
    }
    // A wrong password fails.
    let mut phone = Baresip::start();
    phone.command(
        "uanew",
        &format!(
            "<sip:bob@{};transport=udp>;auth_pass=wrong;regint=600",
            app.sip
        ),
    );
    let ev = phone.wait_event(&["REGISTER_OK", "REGISTER_FAIL"], Duration::from_secs(10));
    assert!(
        ev.as_deref().is_some_and(|e| e.contains("REGISTER_FAIL")),
        "{ev:?}"
    );
}
