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
