//! The leads HTTP API end to end: a real axum server on 127.0.0.1:0 and a
//! real HTTP client, on SQLite (and PostgreSQL when configured).

mod common;

use powerdial::http::{router, AppState};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const TOKEN: &str = "test-token-123";

struct App {
    base: String,
    client: Client,
    db: common::TestDb,
}

async fn spawn_app(db: common::TestDb) -> App {
    let state = AppState::new(db.store.clone(), TOKEN, "US");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router(state)).await.unwrap();
    });
    App {
        base: format!("http://{addr}"),
        client: Client::new(),
        db,
    }
}

impl App {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(reqwest::Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }
    async fn raw(&self, path: &str, ctype: &str, body: &'static str) -> (StatusCode, Value) {
        self.raw_with(reqwest::Method::POST, path, ctype, body)
            .await
    }
    async fn raw_with(
        &self,
        method: reqwest::Method,
        path: &str,
        ctype: &str,
        body: &'static str,
    ) -> (StatusCode, Value) {
        let resp = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn assert_error(v: &Value, code: &str) {
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
}

async fn api_flow(app: &App) {
    // Health is open; everything under /api needs the token.
    let r = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .client
        .get(format!("{}/api/v1/leads", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_error(&r.json().await.unwrap(), "unauthorized");
    let r = app
        .client
        .get(format!("{}/api/v1/leads", app.base))
        .bearer_auth("test-token-124")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .client
        .get(format!("{}/api/v1/leads", app.base))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Custom fields.
    let (s, f) = app
        .post("/api/v1/custom-fields", json!({"name": "Lead Source", "type": "choices", "choices": ["Leadgen Team", "Website"]}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{f}");
    assert_eq!(f["type"], "choices");
    let (s, f) = app
        .post(
            "/api/v1/custom-fields",
            json!({"name": "lead source", "type": "text"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&f, "conflict");
    let (s, _) = app
        .post(
            "/api/v1/custom-fields",
            json!({"name": "Next Call Date", "type": "date"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, f) = app
        .post(
            "/api/v1/custom-fields",
            json!({"name": "X", "type": "colour"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_error(&f, "unprocessable");

    // Create one.
    let (s, lead) = app
        .post(
            "/api/v1/leads",
            json!({"name": "Acme", "status": "Potential",
                   "contacts": [{"name": "Ann", "phones": ["(415) 555-0134"]}],
                   "custom": {"Lead Source": "Leadgen Team", "Next Call Date": "2026-11-05"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{lead}");
    let id = lead["id"].as_i64().unwrap();
    assert_eq!(lead["contacts"][0]["phones"][0], "+14155550134");
    assert_eq!(lead["custom"]["Next Call Date"], "2026-11-05");
    assert!(lead["created"].as_str().unwrap().ends_with('Z'));

    // Create an array.
    let many: Vec<Value> = (0..5)
        .map(|i| json!({"name": format!("Lead {i}"), "created": "2025-07-01", "contacts": [{"phones": [format!("212-555-01{i:02}")]}]}))
        .collect();
    let (s, created) = app.post("/api/v1/leads", Value::Array(many)).await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(created.as_array().unwrap().len(), 5);
    assert_eq!(created[0]["created"], "2025-07-01T00:00:00.000Z");

    // Validation names the field; nothing of the array is stored.
    let (s, e) = app
        .post(
            "/api/v1/leads",
            json!([{"name": "Fine"}, {"name": "Bad", "contacts": [{"phones": ["garbage!"]}]}]),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&e, "invalid");
    assert_eq!(e["error"]["field"], "[1].contacts[0].phones[0]");
    let (s, e) = app
        .post(
            "/api/v1/leads",
            json!({"name": "X", "custom": {"Lead Source": "Cold"}}),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(e["error"]["field"], "custom.Lead Source");
    let (s, e) = app
        .post("/api/v1/leads", json!({"name": "X", "colour": "red"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");

    // Bad JSON is a 400 and loses nothing.
    let (s, e) = app
        .raw(
            "/api/v1/leads",
            "application/json",
            "{\"name\": \"Broken\",",
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&e, "bad_json");
    let (s, e) = app
        .raw_with(
            reqwest::Method::PATCH,
            &format!("/api/v1/leads/{id}"),
            "application/json",
            "{not json",
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
    let (s, e) = app
        .raw(&format!("/api/v1/leads/{id}"), "application/json", "{}")
        .await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_error(&e, "method_not_allowed");
    let (s, e) = app.raw("/api/v1/leads", "text/plain", "{}").await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_error(&e, "unsupported_media_type");
    let (_, mut still) = app.get(&format!("/api/v1/leads/{id}")).await;
    // GET shows the lead's notes beside it (none here).
    assert_eq!(still["notes"], serde_json::json!([]), "{still}");
    if let Some(o) = still.as_object_mut() {
        o.remove("notes");
    }
    assert_eq!(still, lead);

    // Too large a body: 413.
    let big = "x".repeat(3 * 1024 * 1024);
    let resp = app
        .client
        .post(format!("{}/api/v1/leads", app.base))
        .bearer_auth(TOKEN)
        .json(&json!({"name": big}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_error(&resp.json().await.unwrap(), "payload_too_large");

    // Get / patch / delete.
    let (s, e) = app.get("/api/v1/leads/999999").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&e, "not_found");
    let (s, _) = app.get("/api/v1/leads/abc").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, p) = app
        .send(
            reqwest::Method::PATCH,
            &format!("/api/v1/leads/{id}"),
            Some(json!({"status": "Qualified", "custom": {"Next Call Date": null}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{p}");
    assert_eq!(p["status"], "Qualified");
    assert_eq!(p["name"], "Acme");
    assert!(p["custom"].get("Next Call Date").is_none());
    assert_eq!(p["custom"]["Lead Source"], "Leadgen Team");

    // Log a call made elsewhere.
    let (s, c) = app
        .post(
            &format!("/api/v1/leads/{id}/calls"),
            json!({"created": "2026-10-30T09:00:00Z", "outcome": "answered", "duration_s": 42}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{c}");
    assert_eq!(c["lead_id"], id);
    assert_eq!(c["number"], "+14155550134");
    assert_eq!(c["outcome"], "answered");
    assert_eq!(c["ended_at"], "2026-10-30T09:00:42.000Z");
    assert_eq!(
        common::last_call_ms(&app.db.store, id).await,
        Some(
            chrono::DateTime::parse_from_rfc3339("2026-10-30T09:00:00Z")
                .unwrap()
                .timestamp_millis()
        )
    );
    let (s, _) = app
        .post(
            &format!("/api/v1/leads/{id}/calls"),
            json!({"created": "2026-10-30T09:00:00Z", "outcome": "exploded"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = app
        .post(
            "/api/v1/leads/999999/calls",
            json!({"created": "2026-10-30T09:00:00Z", "outcome": "busy"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // List with paging: 6 leads, pages of 4.
    let (s, page) = app.get("/api/v1/leads?limit=4").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(page["data"].as_array().unwrap().len(), 4);
    let next = page["next"].as_str().unwrap().to_string();
    let (_, page2) = app
        .get(&format!("/api/v1/leads?limit=4&cursor={next}"))
        .await;
    assert_eq!(page2["data"].as_array().unwrap().len(), 2);
    assert!(page2["next"].is_null());
    assert!(page2["data"][0]["id"].as_i64().unwrap() > page["data"][3]["id"].as_i64().unwrap());
    for bad in [
        "/api/v1/leads?limit=0",
        "/api/v1/leads?limit=1001",
        "/api/v1/leads?limit=x",
        "/api/v1/leads?cursor=zz",
    ] {
        let (s, e) = app.get(bad).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad}");
        assert_error(&e, "bad_parameter");
    }

    // Delete.
    let (s, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/leads/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app
        .send(
            reqwest::Method::DELETE,
            &format!("/api/v1/leads/{id}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // CSV import.
    let (s, r) = app
        .raw(
            "/api/v1/leads/import",
            "text/csv",
            "name,phone,custom.Lead Source\nImported,415 555 0150,Website\nBad,xyz,Website\n",
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["imported"], 1);
    assert_eq!(r["failed"][0]["line"], 3);
    let (s, e) = app
        .raw("/api/v1/leads/import", "text/csv", "name,fax\nA,1\n")
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_error(&e, "bad_csv");
    assert!(e["error"]["message"].as_str().unwrap().contains("fax"));
    let (s, _) = app
        .raw("/api/v1/leads/import", "application/json", "{}")
        .await;
    assert_eq!(s, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Smart Views.
    let (s, v) = app
        .post(
            "/api/v1/smart-views",
            json!({"name": "Potential", "query": "lead_status:\"Potential\" opportunities:0"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (s, got) = app.get(&format!("/api/v1/smart-views/{}", v["id"])).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(got, v);
    let (s, _) = app.get("/api/v1/smart-views/424242").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, e) = app
        .post("/api/v1/smart-views", json!({"name": " ", "query": ""}))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(e["error"]["field"], "name");

    // Unknown route: JSON 404.
    let (s, e) = app.get("/api/v1/nothing-here").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&e, "not_found");
}

#[tokio::test]
async fn leads_api_end_to_end() {
    for db in common::all_dbs("leads_api_end_to_end").await {
        let app = spawn_app(db).await;
        api_flow(&app).await;
        app.db.cleanup().await;
    }
}

/// Contacts carry email addresses beside their phones (shown in the
/// console's call bar): stored and read back in order, checked (a bad one
/// is a 400 naming it, nothing stored), replaced by a PATCH of the
/// contacts, and read from a CSV's `email` column.
#[tokio::test]
async fn contacts_keep_their_email_addresses() {
    for db in common::all_dbs("contacts_keep_their_email_addresses").await {
        let app = spawn_app(db).await;
        let (s, lead) = app
            .post(
                "/api/v1/leads",
                json!({"name": "Acme", "contacts": [
                    {"name": "Ann", "phones": ["415 555 0134"], "emails": [" ann@acme.example", "a.smith@acme.co.uk"]},
                    {"name": "Bob", "emails": ["bob@acme.example"]},
                    {"name": "Cy", "phones": ["415 555 0135"]}]}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{lead}");
        let id = lead["id"].as_i64().unwrap();
        let (_, got) = app.get(&format!("/api/v1/leads/{id}")).await;
        assert_eq!(
            got["contacts"][0]["emails"],
            json!(["ann@acme.example", "a.smith@acme.co.uk"]),
            "{got}"
        );
        assert_eq!(
            got["contacts"][1]["emails"],
            json!(["bob@acme.example"]),
            "{got}"
        );
        assert_eq!(got["contacts"][1]["phones"], json!([]), "{got}");
        assert_eq!(got["contacts"][2]["emails"], json!([]), "{got}");

        // A bad address: 400 naming it; nothing stored.
        let (s, e) = app
            .post(
                "/api/v1/leads",
                json!({"name": "Nope", "contacts": [{"emails": ["ok@acme.example", "not an address"]}]}),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert_error(&e, "invalid");
        assert_eq!(e["error"]["field"], "contacts[0].emails[1]", "{e}");
        let (s, e) = app
            .send(
                reqwest::Method::PATCH,
                &format!("/api/v1/leads/{id}"),
                Some(json!({"contacts": [{"name": "Ann", "emails": ["ann@"]}]})),
            )
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        let (_, list) = app.get("/api/v1/leads").await;
        assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
        let (_, same) = app.get(&format!("/api/v1/leads/{id}")).await;
        assert_eq!(
            same["contacts"], got["contacts"],
            "unchanged by the refusal"
        );

        let (s, v) = app
            .send(
                reqwest::Method::PATCH,
                &format!("/api/v1/leads/{id}"),
                Some(json!({"contacts": [{"name": "Ann", "emails": ["ann@new.example"]}]})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            v["contacts"],
            json!([{"name": "Ann", "phones": [], "emails": ["ann@new.example"]}])
        );

        let (s, r) = app
            .raw(
                "/api/v1/leads/import",
                "text/csv",
                "name,phone,email\nImported,415 555 0150,\"dee@acme.example; dee2@acme.example\"\nBad,415 555 0151,dee@\n",
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        assert_eq!(r["imported"], 1, "{r}");
        assert_eq!(r["failed"][0]["line"], 3, "{r}");
        let (_, list) = app.get("/api/v1/leads").await;
        let imported = list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == "Imported")
            .cloned()
            .unwrap_or(Value::Null);
        assert_eq!(
            imported["contacts"][0]["emails"],
            json!(["dee@acme.example", "dee2@acme.example"]),
            "{imported}"
        );
        app.db.cleanup().await;
    }
}
