//! Signing in to the HTTP API over a real socket: wrong tokens are 401,
//! and an address that keeps guessing is refused with 429 for the rest of
//! the minute, right token or not, while the server keeps serving others.

use crate::app::{http_request_with_headers, spawn_app};

#[test]
fn guessing_the_token_is_limited_per_address() {
    let app = spawn_app();
    let get = |token: &str| {
        http_request_with_headers(app.http, "GET", "/api/v1/leads", Some(token), None)
    };
    let (status, _, _) = get(&app.token);
    assert_eq!(status, 200);
    for i in 0..10 {
        let (status, _, body) = get(&format!("guess-{i}"));
        assert_eq!(status, 401, "guess {i}: {body}");
    }
    let (status, head, body) = get("guess-10");
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too_many_failures"), "{body}");
    let retry = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("retry-after: ")
                .or_else(|| l.strip_prefix("Retry-After: "))
        })
        .and_then(|v| v.trim().parse::<u32>().ok());
    assert!(
        retry.is_some_and(|s| (1..=60).contains(&s)),
        "Retry-After within the minute: {head}"
    );
    // The right token from the same address waits too: a guess that hits
    // cannot be told from one that misses.
    let (status, _, _) = get(&app.token);
    assert_eq!(status, 429);
    // The open health check still answers.
    let (status, _) = crate::app::http_request(app.http, "GET", "/healthz", None, None);
    assert_eq!(status, 200);
    assert!(
        app.log_text().contains("too many failed sign-ins"),
        "the lockout is logged"
    );
    assert!(
        !app.log_text().contains("guess-"),
        "tokens never reach the log"
    );
}

/// A POST with extra header lines; (status, header block, body).
fn post_with(
    app: &crate::app::App,
    path: &str,
    headers: &str,
    body: &str,
) -> (u16, String, String) {
    crate::app::http_exchange(
        app.http,
        "POST",
        path,
        Some(&app.token),
        headers,
        Some(body),
    )
}

/// A client that retries a POST after a lost response sends the same
/// `Idempotency-Key` and gets the first answer again: one lead created,
/// one call dialed, never two.
#[test]
fn a_retried_post_with_the_same_idempotency_key_takes_effect_once() {
    use crate::peers::{pj_agent, Carrier};
    let dir = tempfile::tempdir().expect("tempdir");
    let carrier = Carrier::start(dir.path(), None);
    let app = crate::app::spawn_app_with(crate::app::AppOptions {
        extra_toml: carrier.trunk_toml(),
        ..Default::default()
    });
    let _phone = pj_agent(&app, "alice", "alice-secret", dir.path());

    let lead = r#"{"name": "Ada", "contacts": [{"name": "Ada", "phones": ["+442079460200"]}]}"#;
    let key = "Idempotency-Key: lead-1\r\n";
    let (s1, _, b1) = post_with(&app, "/api/v1/leads", key, lead);
    let (s2, h2, b2) = post_with(&app, "/api/v1/leads", key, lead);
    assert_eq!((s1, s2), (201, 201), "{b1} / {b2}");
    assert_eq!(b1, b2, "the same lead, not a second one");
    assert!(
        h2.to_ascii_lowercase()
            .contains("idempotent-replayed: true"),
        "{h2}"
    );
    let (s3, _, b3) = post_with(&app, "/api/v1/leads", key, r#"{"name": "Bob"}"#);
    assert_eq!(s3, 422, "{b3}");
    assert!(b3.contains("idempotency_key_reused"), "{b3}");
    let (_, list) = app.http_get("/api/v1/leads");
    let list: serde_json::Value = serde_json::from_str(&list).expect("JSON");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");

    // The call a retry must not dial twice.
    let call = r#"{"agent": "alice", "number": "+442079460200"}"#;
    let key = "Idempotency-Key: call-7f3a\r\n";
    let (s1, _, b1) = post_with(&app, "/api/v1/calls", key, call);
    let (s2, _, b2) = post_with(&app, "/api/v1/calls", key, call);
    assert!(s1 == 202 || s1 == 201, "{s1} {b1}");
    assert!(
        s2 == s1 || s2 == 409,
        "replayed or still running: {s2} {b2}"
    );
    let id = |b: &str| {
        serde_json::from_str::<serde_json::Value>(b)
            .ok()
            .and_then(|v| v["id"].as_i64())
    };
    if s2 == s1 {
        assert_eq!(id(&b1), id(&b2), "the same call record");
    }
    crate::peers::wait_for(
        "the carrier's INVITE",
        std::time::Duration::from_secs(10),
        || !carrier.invited().is_empty(),
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        carrier.invited().len(),
        1,
        "dialed once: {:?}",
        carrier.invited()
    );
}

/// Agent tokens (SPEC §4): issued by the admin or in exchange for a
/// session's share link, they reach only that agent's own actions; other
/// agents' actions and admin routes are 403, a wrong or revoked token 401.
#[test]
fn agent_tokens_act_for_their_agent_only() {
    let app = crate::app::spawn_app();
    let call = |token: &str, method: &str, path: &str, body: Option<&str>| {
        crate::app::http_request(app.http, method, path, Some(token), body)
    };
    let admin = app.token.clone();
    let (code, body) = call(&admin, "POST", "/api/v1/agents/alice/tokens", None);
    assert_eq!(code, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let alice = v["token"].as_str().expect("token").to_string();
    assert_eq!(
        call(&admin, "POST", "/api/v1/agents/nobody/tokens", None).0,
        404
    );

    assert_eq!(call(&alice, "GET", "/api/v1/agents/alice", None).0, 200);
    for (method, path, body) in [
        ("GET", "/api/v1/agents/bob", None),
        ("GET", "/api/v1/agents", None),
        ("GET", "/metrics", None),
        ("POST", "/api/v1/leads", Some(r#"{"name": "x"}"#)),
        ("POST", "/api/v1/agents/alice/tokens", None),
        (
            "POST",
            "/api/v1/calls",
            Some(r#"{"agent": "bob", "number": "+14155550101"}"#),
        ),
    ] {
        let (code, text) = call(&alice, method, path, body);
        assert_eq!(code, 403, "{method} {path}: {text}");
        assert!(text.contains("forbidden"), "{text}");
    }
    // Her own manual call passes the token check (her phone is not
    // registered, so the call itself is refused with 409).
    let (code, text) = call(
        &alice,
        "POST",
        "/api/v1/calls",
        Some(r#"{"agent": "alice", "number": "+14155550101"}"#),
    );
    assert_eq!(code, 409, "{text}");

    // The share link is exchanged for an agent token on joining.
    let (code, view) = call(
        &admin,
        "POST",
        "/api/v1/smart-views",
        Some(r#"{"name": "all", "query": ""}"#),
    );
    assert_eq!(code, 201, "{view}");
    let view: serde_json::Value = serde_json::from_str(&view).expect("JSON");
    let (code, session) = call(
        &admin,
        "POST",
        "/api/v1/sessions",
        Some(&format!(r#"{{"smart_view_id": {}}}"#, view["id"])),
    );
    assert_eq!(code, 201, "{session}");
    let session: serde_json::Value = serde_json::from_str(&session).expect("JSON");
    let sid = session["id"].as_i64().expect("id");
    let share = session["share_token"].as_str().expect("share token");
    let (code, joined) = crate::app::http_request(
        app.http,
        "POST",
        "/api/v1/sessions/join",
        None,
        Some(&format!(r#"{{"token": "{share}", "agent": "bob"}}"#)),
    );
    assert_eq!(code, 200, "{joined}");
    let joined: serde_json::Value = serde_json::from_str(&joined).expect("JSON");
    let bob = joined["agent_token"]
        .as_str()
        .expect("agent token")
        .to_string();
    assert_eq!(
        call(&bob, "GET", &format!("/api/v1/sessions/{sid}"), None).0,
        200
    );
    assert_eq!(
        call(
            &bob,
            "POST",
            &format!("/api/v1/sessions/{sid}/agents/alice/pause"),
            None
        )
        .0,
        403
    );
    assert_ne!(
        call(
            &bob,
            "POST",
            &format!("/api/v1/sessions/{sid}/agents/bob/pause"),
            None
        )
        .0,
        403
    );
    assert_eq!(
        call(&bob, "POST", &format!("/api/v1/sessions/{sid}/reset"), None).0,
        403
    );

    // Revoked: 401 like any wrong token.
    let (code, text) = call(&admin, "DELETE", "/api/v1/agents/alice/tokens", None);
    assert_eq!(code, 200, "{text}");
    assert_eq!(call(&alice, "GET", "/api/v1/agents/alice", None).0, 401);
    assert_eq!(
        call("not-a-token", "GET", "/api/v1/agents/alice", None).0,
        401
    );
}

/// CORS: another site's page may read the API only when its origin is in
/// `server.cors_origins`; by default no origin is.
#[test]
fn cross_origin_calls_only_from_configured_origins() {
    let preflight = |app: &crate::app::App, origin: &str| {
        crate::app::http_exchange(
            app.http,
            "OPTIONS",
            "/api/v1/leads",
            None,
            &format!(
                "Origin: {origin}\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n"
            ),
            None,
        )
    };
    let allows = |head: &str, origin: &str| {
        head.lines().any(|l| {
            l.to_ascii_lowercase()
                .starts_with("access-control-allow-origin:")
                && l.contains(origin)
        })
    };
    let default = crate::app::spawn_app();
    let (_, head, _) = preflight(&default, "https://crm.example.com");
    assert!(
        !allows(&head, "crm.example.com"),
        "denied by default: {head}"
    );

    let app = crate::app::spawn_app_with(crate::app::AppOptions {
        server_toml: r#"cors_origins = ["https://crm.example.com"]"#.into(),
        ..Default::default()
    });
    let (code, head, _) = preflight(&app, "https://crm.example.com");
    assert_eq!(code, 204, "{head}");
    assert!(allows(&head, "https://crm.example.com"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );
    let (_, head, _) = preflight(&app, "https://evil.example.net");
    assert!(!allows(&head, "evil.example.net"), "{head}");
    // A real request from the allowed origin is readable, with its token.
    let (code, head, _) = crate::app::http_exchange(
        app.http,
        "GET",
        "/api/v1/leads",
        Some(&app.token),
        "Origin: https://crm.example.com\r\n",
        None,
    );
    assert_eq!(code, 200);
    assert!(allows(&head, "https://crm.example.com"), "{head}");
}

/// Reads an SSE response for `for_ms` and returns what arrived.
fn read_events(app: &crate::app::App, path: &str, last_id: Option<&str>, for_ms: u64) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(app.http).expect("connect");
    let resume = last_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n{resume}Accept: text/event-stream\r\n\r\n",
        app.token
    )
    .expect("send");
    s.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .ok();
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(for_ms);
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while std::time::Instant::now() < deadline {
        if let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The event stream resumes with `Last-Event-ID` (nothing missed across a
/// reconnect) and filters by agent.
#[test]
fn the_event_stream_resumes_and_filters() {
    let app = crate::app::spawn_app();
    let admin = app.token.clone();
    let call = |method: &str, path: &str, body: Option<&str>| {
        crate::app::http_request(app.http, method, path, Some(&admin), body)
    };
    let (_, view) = call(
        "POST",
        "/api/v1/smart-views",
        Some(r#"{"name": "all", "query": ""}"#),
    );
    let view: serde_json::Value = serde_json::from_str(&view).expect("JSON");
    let (_, session) = call(
        "POST",
        "/api/v1/sessions",
        Some(&format!(r#"{{"smart_view_id": {}}}"#, view["id"])),
    );
    let session: serde_json::Value = serde_json::from_str(&session).expect("JSON");
    let sid = session["id"].as_i64().expect("id");
    // Events happen while nobody listens: alice and bob join.
    for agent in ["alice", "bob"] {
        let (code, body) = call(
            "POST",
            &format!("/api/v1/sessions/{sid}/agents"),
            Some(&format!(r#"{{"agent": "{agent}"}}"#)),
        );
        assert_eq!(code, 200, "{body}");
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    // A client that saw nothing (Last-Event-ID: 0) gets all of them.
    let all = read_events(&app, "/api/v1/events", Some("0"), 600);
    assert!(all.contains("\"agent\":\"alice\""), "{all}");
    assert!(all.contains("\"agent\":\"bob\""), "{all}");
    let ids: Vec<u64> = all
        .lines()
        .filter_map(|l| l.strip_prefix("id: ").or_else(|| l.strip_prefix("id:")))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    assert!(
        ids.len() >= 2 && ids.windows(2).all(|w| w[0] < w[1]),
        "{ids:?}"
    );
    // Resuming after the first event replays the rest, and nothing before.
    let after_first = read_events(&app, "/api/v1/events", Some(&ids[0].to_string()), 600);
    assert!(
        !after_first.contains(&format!("id: {}\n", ids[0])),
        "{after_first}"
    );
    assert!(
        after_first.contains(&format!("id: {}", ids[1])),
        "{after_first}"
    );
    // Only alice's events.
    let alice = read_events(&app, "/api/v1/events?agent=alice", Some("0"), 600);
    assert!(alice.contains("\"agent\":\"alice\""), "{alice}");
    assert!(!alice.contains("\"agent\":\"bob\""), "{alice}");
}
