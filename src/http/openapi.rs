//! The OpenAPI 3.1 document of the HTTP API (SPEC §4: `GET
//! /api/v1/openapi.json`), generated from the code with utoipa: each
//! handler carries a `#[utoipa::path]` with its parameters, body and
//! statuses, the JSON types derive `ToSchema`, and [`ApiDoc`] collects
//! them. The routes stay plain axum `Router`s (a route registered without
//! its `#[utoipa::path]` is caught by the document's completeness test,
//! which walks the `.route(...)` calls of `src/http`).
//!
//! The errors every route shares are added by [`CommonErrors`] rather than
//! repeated on each handler: 401, 403 (an agent token used for another
//! agent or an admin route) and 429 (failed sign-ins) on the routes
//! behind the token, 400, 413, 415 and 422 on the routes with a JSON body,
//! 400 on the routes with query parameters, 404 on the routes with path
//! parameters; and on each POST behind the token the optional
//! `Idempotency-Key` header with its 409 (the first request still runs) and
//! 422 (the key reused with another body).

use std::collections::BTreeMap;

use axum::Json;
use serde::Serialize;
use utoipa::openapi::path::{Operation, ParameterBuilder, ParameterIn};
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, RefOr, Required};
use utoipa::{Modify, OpenApi, ToSchema};

use super::{
    agents, audit, bans, call_notes, calls, console, dnc, events, lead_notes, leads, manual_calls,
    me, session_list, session_stats, sessions, smart_views, trunks, voicemail, webrtc,
};

/// The routes served without the admin token (SPEC §4): the health check,
/// this document, joining a session with a share token (R16: the token is
/// the credential), and the console page with its script and styles (it
/// asks for the token itself). Every other route answers 401 without it.
pub const PUBLIC_PATHS: &[&str] = &[
    "/healthz",
    "/api/v1/openapi.json",
    "/api/v1/sessions/join",
    "/",
    "/console/app.js",
    "/console/app.css",
];

/// The body of every API error (SPEC §4 "Errors: `{error: {code,
/// message}}`").
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The inside of [`ErrorBody`].
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code (`bad_json`, `invalid`, `not_found`,
    /// `conflict`, `bad_query`, …).
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
    /// Validation errors (`invalid`): the offending field (`contacts[0].phones[1]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Smart View query errors (`bad_query`, SPEC §3): the char offset of
    /// the fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// `bad_query`: what the parser expected there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<serde_json::Value>,
    /// `bad_query`: what it found instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub found: Option<serde_json::Value>,
}

/// `GET /healthz`'s body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok` while the server answers.
    pub status: String,
}

/// The document: every path of SPEC §4 that `src/http` serves.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "powerdial",
        description = "A SIP-native power dialer server: leads, Smart Views, dialer sessions, \
                       calls (SPEC §4). Every route under /api needs `Authorization: Bearer \
                       TOKEN` except those whose security is empty.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        super::healthz,
        super::metrics,
        serve,
        leads::create_leads,
        leads::list_leads,
        leads::get_lead,
        leads::patch_lead,
        leads::delete_lead,
        leads::import,
        leads::log_call,
        leads::define_custom_field,
        leads::list_custom_fields,
        lead_notes::lead_calls,
        lead_notes::add_note,
        me::me,
        webrtc::open,
        webrtc::hang_up,
        session_stats::session_stats,
        smart_views::create_view,
        smart_views::list_views,
        smart_views::get_view,
        smart_views::view_leads,
        sessions::create,
        session_list::list,
        sessions::show,
        sessions::patch,
        sessions::rotate_share,
        sessions::revoke_share,
        sessions::reset,
        sessions::join,
        sessions::join_shared,
        sessions::agent,
        sessions::do_not_call,
        sessions::drop_voicemail,
        voicemail::upload,
        voicemail::recording,
        sessions::queue,
        manual_calls::place,
        manual_calls::get_call,
        manual_calls::hangup,
        call_notes::set_notes,
        calls::list_calls,
        events::events,
        agents::list,
        agents::get,
        agents::create,
        agents::patch,
        agents::delete,
        agents::issue_token,
        agents::revoke_tokens,
        dnc::add,
        dnc::list,
        dnc::remove,
        dnc::import,
        bans::list,
        bans::remove,
        trunks::list,
        audit::list,
        console::index,
        console::app_js,
        console::app_css,
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth, &CommonErrors),
    security(("bearer" = [])),
    tags(
        (name = "leads", description = "Leads, CSV import, logged calls, custom fields (SPEC §3, §4)"),
        (name = "smart-views", description = "Smart Views and the leads they select (SPEC §3)"),
        (name = "sessions", description = "Dialer sessions, their agents and queue (SPEC §1, R14–R16)"),
        (name = "calls", description = "Call records and manual calls (R17)"),
        (name = "agents", description = "Agents and their registrations"),
        (name = "dnc", description = "The do-not-call list (SPEC §4)"),
        (name = "security", description = "Bans at the SIP front door (SPEC §5)"),
        (name = "trunks", description = "Carrier trunks and their state (admin only)"),
        (name = "audit", description = "Dials held, restricted or refused before the wire, with their reasons (SPEC §4)"),
        (name = "events", description = "Server-Sent Events of state changes"),
        (name = "meta", description = "Health and this document"),
        (name = "console", description = "The agent and admin console page (SPEC §4 `GET /`)"),
    )
)]
pub struct ApiDoc;

/// Adds the `bearer` security scheme and clears the requirement on
/// [`PUBLIC_PATHS`].
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The `[admin] token` of the configuration"))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            if PUBLIC_PATHS.contains(&path.as_str()) {
                for op in operations(item) {
                    op.security = Some(Vec::new());
                }
            }
        }
    }
}

/// Adds the shared error statuses to each operation that lacks them.
struct CommonErrors;

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = PUBLIC_PATHS.contains(&path.as_str());
            let has_path_params = path.contains('{');
            if !public {
                if let Some(post) = item.post.as_mut() {
                    idempotency_key(post);
                }
            }
            for op in operations(item) {
                let json_body = op
                    .request_body
                    .as_ref()
                    .is_some_and(|b| b.content.contains_key("application/json"));
                let has_query = op
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| matches!(p.parameter_in, ParameterIn::Query));
                let mut add = |status: &str, description: &str| {
                    op.responses
                        .responses
                        .entry(status.to_string())
                        .or_insert_with(|| error_response(description));
                };
                if !public {
                    add("401", "No or a wrong bearer token");
                    add("403", "An agent token used beyond its agent's own actions");
                    add(
                        "429",
                        "Too many failed sign-ins from this address; `Retry-After` says when to retry",
                    );
                }
                if json_body {
                    add("400", "Malformed JSON, or a field fails validation");
                    add("413", "The body exceeds the size limit");
                    add("415", "Not `Content-Type: application/json`");
                    add(
                        "422",
                        "JSON of the wrong shape (missing or unknown key, wrong type)",
                    );
                }
                if has_query {
                    add("400", "A bad query parameter");
                }
                if has_path_params {
                    add("404", "No such object");
                }
            }
        }
    }
}

/// The optional `Idempotency-Key` header of a POST behind the token, and
/// its answers (see `super::idempotency`).
fn idempotency_key(op: &mut Operation) {
    let header = ParameterBuilder::new()
        .name("Idempotency-Key")
        .parameter_in(ParameterIn::Header)
        .required(Required::False)
        .description(Some(
            "A retry with the same key gets the first response again \
             (`Idempotent-Replayed: true`) instead of running twice; kept 24 h",
        ))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(super::idempotency::MAX_KEY_LEN)),
        ))
        .build();
    op.parameters.get_or_insert_with(Vec::new).push(header);
    for (status, description) in [
        ("400", "A malformed `Idempotency-Key`"),
        (
            "409",
            "A request with this `Idempotency-Key` is still running",
        ),
        ("422", "This `Idempotency-Key` was used with another body"),
    ] {
        op.responses
            .responses
            .entry(status.to_string())
            .or_insert_with(|| error_response(description));
    }
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                ))))
                .build(),
        )
        .into()
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.options.as_mut(),
        item.head.as_mut(),
        item.patch.as_mut(),
        item.trace.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// The document as served.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc
}

/// `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of this API.
///
/// Served without the token: it describes the routes and the shapes of
/// their bodies, as SPEC §4 does in the open, and holds no secret, no
/// configuration and no data; a client or a tool (schemathesis, a code
/// generator) reads it before it has a token, and the routes it describes
/// stay behind the token all the same.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    operation_id = "get_openapi",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
pub async fn serve() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
}

/// The `(method, path)` pairs the document lists, sorted (for tests and
/// tools).
pub fn operations_of(doc: &utoipa::openapi::OpenApi) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        let methods: BTreeMap<&str, bool> = [
            ("get", item.get.is_some()),
            ("put", item.put.is_some()),
            ("post", item.post.is_some()),
            ("delete", item.delete.is_some()),
            ("patch", item.patch.is_some()),
        ]
        .into_iter()
        .collect();
        for (m, present) in methods {
            if present {
                out.push((m.to_string(), path.clone()));
            }
        }
    }
    out.sort();
    out
}
