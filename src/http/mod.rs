//! The HTTP API (SPEC §4) on axum: bearer-token auth on `/api`, one error
//! type, list paging, and the leads, custom field and Smart View routes.
//!
//! Other parts add their routes by merging a `Router<AppState>` in
//! [`api_routes`] and their handles as fields of [`AppState`].

pub mod admin_token;
pub mod agents;
pub mod audit;
pub mod auth;
pub mod bans;
pub mod call_notes;
pub mod calls;
pub mod console;
pub mod cors;
pub mod dnc;
pub mod error;
pub mod event_log;
pub mod events;
pub mod idempotency;
pub mod json;
pub mod lead_notes;
pub mod leads;
pub mod manual_calls;
pub mod me;
pub mod openapi;
pub mod paging;
pub mod session_list;
pub mod session_stats;
pub mod sessions;
pub mod smart_views;
pub mod trunks;
pub mod voicemail;
pub mod webrtc;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::json;

pub use error::ApiError;
pub use paging::{Page, PageParams};

use crate::store::Store;

/// Largest JSON body accepted (413 above it).
pub const JSON_BODY_LIMIT: usize = 2 * 1024 * 1024;
/// Largest CSV body accepted by `POST /api/v1/leads/import`; bigger files
/// go through `powerdial import-leads`.
pub const IMPORT_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// What the handlers share. Cheap to clone; add fields as features need them.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// The `[admin] token` every `/api` request must bear.
    pub admin_token: Arc<str>,
    /// `[leads] default_region` for numbers written without a country code.
    pub default_region: Arc<str>,
    /// The SIP task (registrar bindings); `None` when the API runs without SIP (tests).
    pub sip: Option<crate::sip::handle::SipHandle>,
    /// The configured agents.
    pub agents: Arc<[crate::config::AgentConfig]>,
    /// The call engine (SPEC §1, R17); `None` when the API runs without SIP (tests).
    pub calls: Option<crate::call::engine::CallEngine>,
    /// The dialer sessions (SPEC §1–§2); `None` when the API runs without them.
    pub sessions: Option<crate::dialer::directory::Sessions>,
    /// Failed sign-ins per client address ([`auth::require_token`]).
    pub login_failures: Arc<std::sync::Mutex<auth::FailedLogins>>,
    /// The numbered events of `GET /api/v1/events` (set by [`router`]
    /// when the dialer runs).
    pub event_log: Option<Arc<event_log::EventLog>>,
    /// `server.cors_origins`: browser origins allowed to call the API.
    pub cors_origins: Arc<[String]>,
    /// The SIP digest realm (`server.domain`): API-created agents' HA1
    /// values are computed for it.
    pub realm: Arc<str>,
    /// Responses remembered by `Idempotency-Key` ([`idempotency`]).
    pub idempotency: Arc<std::sync::Mutex<idempotency::IdempotencyCache>>,
    /// `[dialer] calling_hours` and `holidays`: what manual calls outside
    /// a session are checked against (SPEC §4).
    pub calling_hours: crate::dialer::hours::CallingHours,
    /// Where refused and overridden manual calls are recorded.
    pub audit: crate::store::audit::AuditLog,
    /// `server.data_dir`: voicemail messages and recordings live under it.
    pub data_dir: Arc<std::path::Path>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The admin token never reaches a log.
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("default_region", &self.default_region)
            .field("agents", &self.agents.len())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Builds the state (and loads the numbering plan the handlers read
    /// numbers with).
    pub fn new(store: Store, admin_token: &str, default_region: &str) -> Self {
        crate::leads::phone::load_numbering_plan(default_region);
        AppState {
            store,
            admin_token: admin_token.into(),
            default_region: default_region.into(),
            sip: None,
            agents: Arc::from(Vec::new()),
            calls: None,
            sessions: None,
            login_failures: Arc::default(),
            idempotency: Arc::default(),
            realm: Arc::from("127.0.0.1"),
            cors_origins: Arc::from(Vec::new()),
            event_log: None,
            calling_hours: Default::default(),
            audit: crate::store::audit::AuditLog::disabled(),
            data_dir: Arc::from(std::path::Path::new("data")),
        }
    }

    /// Sets the data directory (voicemail messages, recordings).
    pub fn with_data_dir(mut self, dir: &std::path::Path) -> Self {
        self.data_dir = Arc::from(dir);
        self
    }

    /// Sets the audit log (`GET /api/v1/audit` reads the store).
    pub fn with_audit(mut self, audit: crate::store::audit::AuditLog) -> Self {
        self.audit = audit;
        self
    }

    /// Sets the calling hours manual calls are checked against.
    pub fn with_calling_hours(mut self, hours: crate::dialer::hours::CallingHours) -> Self {
        self.calling_hours = hours;
        self
    }

    /// R6: tells the dialer sessions that leads changed through powerdial,
    /// so their views are re-read within a second.
    pub fn leads_changed(&self) {
        if let Some(sessions) = &self.sessions {
            sessions.leads_changed().poke();
        }
    }

    /// R6 for changes to these leads only: each session checks just them
    /// against its view instead of re-reading it (SPEC §6).
    pub fn leads_changed_ids(&self, ids: &[i64]) {
        if let Some(sessions) = &self.sessions {
            sessions.leads_changed().leads(ids);
        }
    }

    /// Adds the dialer sessions (`/api/v1/sessions`, `/api/v1/events`).
    pub fn with_sessions(mut self, sessions: crate::dialer::directory::Sessions) -> Self {
        self.sessions = Some(sessions);
        self
    }

    /// Adds the SIP task's handle and the configured agents (`/api/v1/agents`).
    pub fn with_sip(
        mut self,
        sip: crate::sip::handle::SipHandle,
        agents: Vec<crate::config::AgentConfig>,
    ) -> Self {
        self.sip = Some(sip);
        self.agents = Arc::from(agents);
        self
    }

    /// The SIP digest realm (`server.domain`).
    pub fn with_realm(mut self, realm: &str) -> Self {
        self.realm = Arc::from(realm);
        self
    }

    /// `server.cors_origins`.
    pub fn with_cors_origins(mut self, origins: Vec<String>) -> Self {
        self.cors_origins = Arc::from(origins);
        self
    }
}

impl AppState {
    /// Adds the call engine (`/api/v1/calls`, R17).
    pub fn with_calls(mut self, calls: crate::call::engine::CallEngine) -> Self {
        self.calls = Some(calls);
        self
    }
}

/// A JSON body whose rejections become [`ApiError`]s (400 bad JSON, 422
/// wrong shape, 413 too large, 415 wrong content type); a struct only from
/// a JSON object (see [`json`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

/// Path parameters whose rejections become [`ApiError`]s: a segment that
/// does not decode (`%FF`) names no object, a JSON 404 like [`parse_id`].
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// A query string whose rejections become [`ApiError`]s (400 `bad_parameter`
/// as JSON, e.g. for a repeated key).
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// The wall clock, read by handlers only (they are drivers, DESIGN.md "Ban
/// the clock in cores").
#[allow(clippy::disallowed_methods)]
pub fn now() -> DateTime<Utc> {
    Utc::now()
}

/// The wall clock in epoch milliseconds (the store's unit).
pub fn time_to_ms_now() -> i64 {
    crate::leads::model::time_to_ms(now())
}

/// Every `/api` route, without auth or state: leads, custom fields and
/// Smart Views. Sessions, calls and events merge theirs here.
pub fn api_routes() -> Router<AppState> {
    Router::new()
        .merge(leads::routes())
        .merge(smart_views::routes())
        .merge(manual_calls::routes())
        .merge(sessions::routes())
        .route("/api/v1/events", get(events::events))
        .route("/metrics", get(metrics))
        .route("/api/v1/agents", get(agents::list).post(agents::create))
        .route(
            "/api/v1/agents/{username}",
            get(agents::get).patch(agents::patch).delete(agents::delete),
        )
        .route(
            "/api/v1/agents/{username}/tokens",
            axum::routing::post(agents::issue_token).delete(agents::revoke_tokens),
        )
        .merge(calls::routes())
        .merge(voicemail::routes())
        .merge(dnc::routes())
        .merge(bans::routes())
        .merge(audit::routes())
        .merge(call_notes::routes())
        .merge(session_list::routes())
        .merge(trunks::routes())
        .merge(lead_notes::routes())
        .merge(me::routes())
        .merge(webrtc::routes())
        .merge(session_stats::routes())
}

/// `GET /metrics` (SPEC §4): Prometheus / OpenMetrics text, behind the
/// admin token like the API (scrape with `authorization: {credentials: …}`).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "get_metrics",
    tag = "meta",
    responses((status = 200, description = "OpenMetrics text", content_type = "application/openmetrics-text", body = String))
)]
async fn metrics(State(st): State<AppState>) -> impl axum::response::IntoResponse {
    // Gauges of state other tasks own are read at the scrape.
    crate::metrics::sample_heap();
    if let Some(sip) = &st.sip {
        let live = sip.binding_count().await;
        crate::metrics::metrics()
            .registrations_active
            .set(i64::try_from(live).unwrap_or(i64::MAX));
    }
    if let Some(sessions) = &st.sessions {
        let mut sizes = Vec::new();
        for h in sessions.running() {
            if let Ok(v) = h.view().await {
                let c = &v.counts;
                sizes.push((
                    h.id(),
                    vec![
                        ("queued", c.queued),
                        ("blocked", c.blocked),
                        ("awaiting_refresh", c.awaiting_refresh),
                        ("calling", c.calling),
                        ("answered", c.answered),
                    ],
                ));
            }
        }
        crate::metrics::set_queue_sizes(&sizes);
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            crate::metrics::CONTENT_TYPE,
        )],
        crate::metrics::render(),
    )
}

/// `GET /healthz`: the server answers (open, no token).
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "meta",
    responses((status = 200, description = "The server is up", body = openapi::Health))
)]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn no_route() -> ApiError {
    ApiError::NotFound("no such route".into())
}

async fn wrong_method() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The whole HTTP application: `GET /healthz` open, everything under
/// `/api` behind the bearer token, bodies limited to [`JSON_BODY_LIMIT`]
/// (the CSV import to [`IMPORT_BODY_LIMIT`]), unknown routes answered
/// with a JSON 404.
pub fn router(mut state: AppState) -> Router {
    if let (Some(sessions), None) = (&state.sessions, &state.event_log) {
        state.event_log = Some(event_log::EventLog::start(
            sessions.subscribe(),
            state.calls.as_ref().map(|c| c.subscribe()),
        ));
    }
    // Layers run outside in: the token first, then Idempotency-Key.
    let api = api_routes()
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::idempotent_post,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .merge(sessions::public_routes())
        .merge(console::routes())
        .merge(api)
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(DefaultBodyLimit::max(JSON_BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            cors::cors,
        ))
        .with_state(state)
}

/// The CSV imports' body check: `text/csv` (or `application/csv`, or
/// `text/plain` as curl sends a file), else 415.
pub fn require_csv(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let ctype = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    match ctype.as_deref() {
        Some("text/csv" | "application/csv" | "text/plain") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType("text/csv")),
    }
}

/// `201 Created` with a JSON body.
pub fn created<T: serde::Serialize>(body: T) -> (StatusCode, Json<T>) {
    (StatusCode::CREATED, Json(body))
}

/// Reads an optional count between 1 and `max` (`default` when absent or
/// empty); anything else is a 400 naming the parameter and its `range`.
pub fn bounded_count(
    raw: Option<&str>,
    param: &'static str,
    range: &'static str,
    max: u32,
    default: u32,
) -> Result<u32, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(default),
        Some(s) => match s.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::BadParam {
                param,
                reason: range,
            }),
        },
    }
}

/// Parses a path id; anything but a positive integer is a 404, as no such
/// row can exist.
pub fn parse_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::NotFound(format!("{what} {raw} not found")))
}
