//! The OpenAPI document (SPEC §4 `GET /api/v1/openapi.json`): served
//! without the token, OpenAPI 3.1, and complete: every route registered in
//! `src/http` is in it with every method the router answers, and every
//! operation it lists is a route of the router, behind the token unless it
//! is one of the public paths.

mod common;

use std::collections::BTreeSet;

use powerdial::http::openapi::{document, operations_of, PUBLIC_PATHS};
use powerdial::http::{router, AppState};
use reqwest::{Client, Method, StatusCode};
use serde_json::Value;

const TOKEN: &str = "test-token-openapi";

async fn serve() -> (String, common::TestDb) {
    let db = common::sqlite_db().await;
    let state = AppState::new(db.store.clone(), TOKEN, "US");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router(state)).await.unwrap();
    });
    (format!("http://{addr}"), db)
}

/// The paths of every `.route("…", …)` call in `src/http`: what the router
/// registers, read from the source so a route added without its
/// `#[utoipa::path]` fails here.
fn registered_paths() -> BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
    let re = regex::Regex::new(r#"\.route\(\s*"([^"]+)""#).unwrap();
    let mut paths = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for c in re.captures_iter(&text) {
                paths.insert(c[1].to_string());
            }
        }
    }
    assert!(paths.len() > 10, "found only {paths:?} in {dir:?}");
    paths
}

/// A concrete URL for a templated path (`{id}` → 1).
fn concrete(path: &str) -> String {
    let re = regex::Regex::new(r"\{([^}]+)\}").unwrap();
    re.replace_all(path, |c: &regex::Captures| match &c[1] {
        "action" => "pause".to_string(),
        "username" | "agent" => "nobody".to_string(),
        _ => "1".to_string(),
    })
    .into_owned()
}

#[tokio::test]
async fn the_document_is_public_openapi_3_1_and_lists_every_route() {
    let (base, _db) = serve().await;
    let client = Client::new();

    // Served without a token, as JSON.
    let resp = client
        .get(format!("{base}/api/v1/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let doc: Value = resp.json().await.unwrap();
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "openapi {version}");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert_eq!(doc["security"][0]["bearer"], serde_json::json!([]));

    // Every registered route is documented, and nothing else is.
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let registered = registered_paths();
    let missing: Vec<_> = registered.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&registered).collect();
    assert!(
        missing.is_empty(),
        "routes without a #[utoipa::path]: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "documented paths no route serves: {extra:?}"
    );

    // The document the server sends is the one the code builds.
    let built = serde_json::to_value(document()).unwrap();
    assert_eq!(built, doc);

    // Every documented operation is routed (no 404 "no such route", no
    // 405), answers 401 without the token unless public, and declares its
    // error body.
    let ops = operations_of(&document());
    for (method, path) in &ops {
        let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let url = format!("{base}{}", concrete(path));
        let public = PUBLIC_PATHS.contains(&path.as_str());
        let op = &doc["paths"][path][method];
        let resp = client.request(m.clone(), &url).send().await.unwrap();
        if public {
            assert_ne!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            assert_eq!(op["security"], serde_json::json!([]), "{method} {path}");
        } else {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{method} {path}");
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path}: no 401"
            );
        }
        let resp = client
            .request(m, &url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(
            body["error"]["message"], "no such route",
            "{method} {path} is documented but not routed"
        );
        if path.contains('{') {
            assert!(
                op["responses"]["404"].is_object(),
                "{method} {path}: no 404"
            );
        }
        if op["requestBody"]["content"]["application/json"].is_object() {
            for s in ["400", "413", "415", "422"] {
                assert!(op["responses"][s].is_object(), "{method} {path}: no {s}");
            }
        }
        let documented: Vec<&String> = op["responses"].as_object().unwrap().keys().collect();
        assert!(
            documented.iter().any(|s| s.starts_with('2')),
            "{method} {path}: no success status"
        );
    }
    // Each method the router answers on a path is documented: a method
    // the document omits must get 405 from the router.
    for path in &registered {
        let url = format!("{base}{}", concrete(path));
        for m in ["GET", "POST", "PATCH", "DELETE", "PUT"] {
            let listed = ops
                .iter()
                .any(|(om, op)| op == path && om.eq_ignore_ascii_case(m));
            if listed {
                continue;
            }
            let resp = client
                .request(Method::from_bytes(m.as_bytes()).unwrap(), &url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                StatusCode::METHOD_NOT_ALLOWED,
                "{m} {path} is routed but not documented"
            );
        }
    }
}

/// Every `$ref` in the document points at a schema it defines.
#[test]
fn every_reference_resolves() {
    let doc = serde_json::to_value(document()).unwrap();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    let mut refs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    if k == "$ref" {
                        out.push(v.as_str().unwrap_or_default().to_string());
                    } else {
                        walk(v, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "dangling $ref {r}");
    }
    for name in [
        "Lead",
        "CallRecord",
        "SessionView",
        "QueueEntryView",
        "ErrorBody",
    ] {
        assert!(schemas.contains_key(name), "no schema {name}");
    }
}

/// `POWERDIAL_DUMP_OPENAPI=FILE` writes the document there (to read it).
#[test]
fn dump_when_asked() {
    if let Some(path) = std::env::var_os("POWERDIAL_DUMP_OPENAPI") {
        let text = serde_json::to_string_pretty(&document()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// Found by schemathesis: a path segment that does not decode (`%FF`) and
/// a repeated query key were answered by axum's own plain-text 400. Every
/// route answers them with a JSON error now: 404 for the segment (it names
/// no object), 400 `bad_parameter` for the query.
#[tokio::test]
async fn undecodable_paths_and_repeated_query_keys_get_json_errors() {
    let (base, _db) = serve().await;
    let client = Client::new();
    let doc = serde_json::to_value(document()).unwrap();
    let segment = regex::Regex::new(r"\{[^}]+\}").unwrap();
    for (method, path) in operations_of(&document()) {
        let m = Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
        let op = &doc["paths"][&path][&method];
        if path.contains('{') {
            let url = format!("{base}{}", segment.replace(&path, "%FF"));
            let resp = client
                .request(m.clone(), &url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {url}");
            let body: Value = resp.json().await.unwrap();
            assert_eq!(body["error"]["code"], "not_found", "{method} {url}: {body}");
        }
        let query = op["parameters"].as_array().and_then(|ps| {
            ps.iter()
                .find(|p| p["in"] == "query")
                .and_then(|p| p["name"].as_str())
        });
        if let Some(q) = query {
            let url = format!("{base}{}?{q}=1&{q}=2", concrete(&path));
            let resp = client
                .request(m, &url)
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body: Value = resp.json().await.unwrap();
            // Refused before the handler runs (this app has no dialer, so
            // the session routes would answer 404 after it).
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {url}: {body}");
            assert_eq!(
                body["error"]["code"], "bad_parameter",
                "{method} {url}: {body}"
            );
        }
    }
}

/// Each operation has its own `operationId` (clients generated from the
/// document name their methods after them).
#[test]
fn operation_ids_are_unique() {
    let doc = serde_json::to_value(document()).unwrap();
    let mut seen = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let id = op["operationId"].as_str().unwrap_or_default().to_string();
            assert!(!id.is_empty(), "{method} {path}: no operationId");
            assert!(
                seen.insert(id.clone()),
                "{method} {path}: operationId {id} twice"
            );
        }
    }
}

/// Found by schemathesis: serde reads a struct from a JSON array, field by
/// field, so `["name", "query"]` made a Smart View. A body the document
/// says is an object is refused as anything else (422), and nothing is
/// stored.
#[tokio::test]
async fn an_array_is_not_an_object() {
    let (base, _db) = serve().await;
    let client = Client::new();
    for (path, body) in [
        ("/api/v1/smart-views", r#"["all", ""]"#),
        ("/api/v1/custom-fields", r#"["Source", "text"]"#),
        ("/api/v1/leads", r#"[["Acme"]]"#),
        ("/api/v1/dnc", r#"["+14155550134", "spam"]"#),
        ("/api/v1/dnc", r#"[["+14155550134"]]"#),
    ] {
        let resp = client
            .post(format!("{base}{path}"))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let e: Value = resp.json().await.unwrap();
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {e}"
        );
        assert_eq!(e["error"]["code"], "unprocessable", "{e}");
        let list = path.replace("/leads", "/leads?limit=10");
        let page: Value = client
            .get(format!("{base}{list}"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(page["data"], serde_json::json!([]), "{path}: {page}");
    }
}
