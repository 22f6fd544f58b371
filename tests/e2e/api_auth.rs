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
