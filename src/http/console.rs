//! `GET /`: the agent and admin console (SPEC §1 "Admin / agent console",
//! SPEC §4), one page of plain HTML, CSS and JavaScript embedded in the
//! binary, no build step and nothing fetched from elsewhere. The page is
//! public; every API call it makes carries the token the user signed in
//! with (the admin token, an agent token, or the agent token a share link
//! was exchanged for), and the event stream is read with `fetch()` so that
//! it can too.

use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::AppState;

const INDEX_HTML: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");

/// Scripts, styles and requests only from powerdial itself; no inline code,
/// no framing (the page holds the admin token).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The console's routes, outside the token-protected `/api`.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/console/app.js", get(app_js))
        .route("/console/app.css", get(app_css))
}

/// One embedded file with its type; revalidated on every load so a new
/// binary's console is seen at once.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                HeaderName::from_static("x-content-type-options"),
                HeaderValue::from_static("nosniff"),
            ),
            (
                HeaderName::from_static("content-security-policy"),
                HeaderValue::from_static(CSP),
            ),
            (
                HeaderName::from_static("referrer-policy"),
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// `GET /`: the console page.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "get_console",
    tag = "console",
    responses((status = 200, description = "The console page", content_type = "text/html", body = String))
)]
pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

/// The console's script.
#[utoipa::path(
    get,
    path = "/console/app.js",
    operation_id = "get_console_script",
    tag = "console",
    responses((status = 200, description = "The console's script", content_type = "text/javascript", body = String))
)]
pub(super) async fn app_js() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

/// The console's style sheet.
#[utoipa::path(
    get,
    path = "/console/app.css",
    operation_id = "get_console_styles",
    tag = "console",
    responses((status = 200, description = "The console's style sheet", content_type = "text/css", body = String))
)]
pub(super) async fn app_css() -> Response {
    asset("text/css; charset=utf-8", APP_CSS)
}
