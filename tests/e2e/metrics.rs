//! `GET /metrics` (SPEC §4) counts what an operator watches live: phones
//! registered (`powerdial_registrations_active`, the registrar's live
//! bindings) and each running session's queue by state
//! (`powerdial_queue_leads{session_id, state}`), read at the scrape.

use std::time::Duration;

use serde_json::{json, Value};

use crate::app::{http_request, spawn_app, App};
use crate::peers::{pj_agent, wait_for};

fn post(app: &App, path: &str, body: Value) -> Value {
    let (code, text) = http_request(
        app.http,
        "POST",
        path,
        Some(&app.token),
        Some(&body.to_string()),
    );
    assert!(code == 200 || code == 201, "POST {path}: {code} {text}");
    serde_json::from_str(&text).expect("JSON")
}

/// The value of the series `line_prefix` (name and labels), if exposed.
fn sample(metrics: &str, line_prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(line_prefix))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn metrics_show_registered_phones_and_queue_sizes_per_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app();
    let (code, metrics) = app.http_get("/metrics");
    assert_eq!(code, 200, "{metrics}");
    assert_eq!(
        sample(&metrics, "powerdial_registrations_active "),
        Some(0.0),
        "no phone yet:\n{metrics}"
    );

    let (_alice, _) = pj_agent(&app, "alice", "alice-secret", dir.path());
    let (_bob, _) = pj_agent(&app, "bob", "bob-secret", dir.path());
    let (_, metrics) = app.http_get("/metrics");
    assert_eq!(
        sample(&metrics, "powerdial_registrations_active "),
        Some(2.0),
        "two phones registered:\n{metrics}"
    );

    // Two sessions over views of 3 and 1 leads; nobody dials them.
    let names = ["Ada", "Grace", "Margaret", "Zed"];
    post(
        &app,
        "/api/v1/leads",
        Value::Array(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| json!({"name": n, "contacts": [{"phones": [format!("+1415555{:04}", 100 + i)]}]}))
                .collect(),
        ),
    );
    let three = post(
        &app,
        "/api/v1/smart-views",
        json!({"name": "First three", "query": "name in (\"Ada\", \"Grace\", \"Margaret\")"}),
    );
    let one = post(
        &app,
        "/api/v1/smart-views",
        json!({"name": "Zed", "query": "name:Zed"}),
    );
    let s3 = post(
        &app,
        "/api/v1/sessions",
        json!({"smart_view_id": three["id"]}),
    )["id"]
        .as_i64()
        .expect("id");
    let s1 = post(
        &app,
        "/api/v1/sessions",
        json!({"smart_view_id": one["id"]}),
    )["id"]
        .as_i64()
        .expect("id");
    let mut metrics = String::new();
    wait_for("the queue sizes", Duration::from_secs(10), || {
        metrics = app.http_get("/metrics").1;
        sample(
            &metrics,
            &format!("powerdial_queue_leads{{session_id=\"{s3}\",state=\"queued\"}} "),
        ) == Some(3.0)
            && sample(
                &metrics,
                &format!("powerdial_queue_leads{{session_id=\"{s1}\",state=\"queued\"}} "),
            ) == Some(1.0)
    });
    assert_eq!(
        sample(
            &metrics,
            &format!("powerdial_queue_leads{{session_id=\"{s3}\",state=\"answered\"}} "),
        ),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        metrics.contains("# TYPE powerdial_queue_leads gauge"),
        "{metrics}"
    );
}
