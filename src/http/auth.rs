//! Bearer-token authentication of `/api` (SPEC §4: `Authorization: Bearer
//! TOKEN`), compared in constant time, with failed sign-ins limited per
//! client address so a token cannot be guessed at network speed.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// Compares two secrets without an early exit (`subtle`): both are hashed
/// first so neither the content nor the length of the token leaks through
/// timing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let ha = Sha256::digest(a);
    let hb = Sha256::digest(b);
    bool::from(ha.as_slice().ct_eq(hb.as_slice()))
}

/// Failed sign-ins one address may make within [`FAILURE_WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// The window failures are counted in; an address that reaches
/// [`MAX_FAILURES`] is refused until its window ends.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; beyond it the expired ones are dropped first
/// and, if none has expired, the newest failures are not counted (memory
/// stays bounded under a flood from many addresses).
pub const MAX_TRACKED: usize = 65_536;

/// Failed sign-ins per client address (sans-IO: the caller passes `now`).
#[derive(Debug, Default)]
pub struct FailedLogins {
    by_addr: HashMap<IpAddr, (Instant, u32)>,
}

impl FailedLogins {
    /// How long `addr` must still wait, if it used up its failures.
    pub fn locked_for(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let &(start, n) = self.by_addr.get(&addr)?;
        let left = (start + FAILURE_WINDOW).checked_duration_since(now)?;
        (n >= MAX_FAILURES && !left.is_zero()).then_some(left)
    }

    /// Counts a failure; true when this one locks the address out.
    pub fn record_failure(&mut self, addr: IpAddr, now: Instant) -> bool {
        if !self.by_addr.contains_key(&addr) && self.by_addr.len() >= MAX_TRACKED {
            self.by_addr
                .retain(|_, (start, _)| now.duration_since(*start) < FAILURE_WINDOW);
            if self.by_addr.len() >= MAX_TRACKED {
                return false;
            }
        }
        let entry = self.by_addr.entry(addr).or_insert((now, 0));
        if now.duration_since(entry.0) >= FAILURE_WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        entry.1 == MAX_FAILURES
    }
}

/// Middleware: lets a request through only with the admin token. An empty
/// configured token lets nobody in rather than everybody. An address with
/// [`MAX_FAILURES`] failed sign-ins in [`FAILURE_WINDOW`] gets 429 until
/// the window ends, right token or not. The client address comes from the
/// connection (`ConnectInfo`, as `server.rs` serves); without it (an
/// in-process router in tests) nothing is counted.
#[allow(clippy::disallowed_methods)] // a driver: the limiter's clock.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let now = Instant::now();
    if let Some(addr) = addr {
        let locked = state
            .login_failures
            .lock()
            .ok()
            .and_then(|f| f.locked_for(addr, now));
        if let Some(left) = locked {
            return ApiError::TooManyFailures {
                retry_after_s: u32::try_from(left.as_secs().max(1)).unwrap_or(u32::MAX),
            }
            .into_response();
        }
    }
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    let agent = match given {
        Some(token)
            if !state.admin_token.is_empty()
                && constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) =>
        {
            req.extensions_mut().insert(Caller::Admin);
            return next.run(req).await;
        }
        Some(token) if !token.is_empty() => state
            .store
            .agent_for_token(&token_hash(token))
            .await
            .ok()
            .flatten(),
        _ => None,
    };
    if let Some(agent) = &agent {
        req.extensions_mut().insert(Caller::Agent(agent.clone()));
    }
    match agent {
        Some(agent) => match agent_access(req.method(), req.uri().path(), &agent) {
            Access::Allow => next.run(req).await,
            Access::Deny => forbidden(&agent),
            Access::BodyAgent => {
                let (parts, body) = req.into_parts();
                let Ok(bytes) = axum::body::to_bytes(body, super::JSON_BODY_LIMIT).await else {
                    return ApiError::PayloadTooLarge.into_response();
                };
                let named = serde_json::from_slice::<serde_json::Value>(&bytes)
                    .ok()
                    .and_then(|v| v.get("agent").and_then(|a| a.as_str()).map(str::to_string));
                if named.as_deref() != Some(agent.as_str()) {
                    return forbidden(&agent);
                }
                next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
                    .await
            }
            Access::CallOfAgent(id) => match state.store.get_call(id).await {
                Ok(call) if call.agent.as_deref() != Some(agent.as_str()) => forbidden(&agent),
                // Unknown calls: the handler answers 404.
                _ => next.run(req).await,
            },
        },
        None => {
            if let Some(addr) = addr {
                let locked_now = state
                    .login_failures
                    .lock()
                    .map(|mut f| f.record_failure(addr, now))
                    .unwrap_or(false);
                if locked_now {
                    crate::metrics::metrics().http_signin_lockouts.inc();
                    // The token itself is never logged.
                    tracing::warn!(%addr, failures = MAX_FAILURES, "too many failed sign-ins: address refused for the rest of the minute");
                }
            }
            ApiError::Unauthorized.into_response()
        }
    }
}

/// Who a request that passed [`require_token`] acts as: handlers read it
/// as a request extension (`Extension<Caller>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// The admin token.
    Admin,
    /// An agent token of this agent.
    Agent(String),
}

impl Caller {
    /// The agent's username, `None` for the admin.
    pub fn agent(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Agent(a) => Some(a),
        }
    }
}

/// The SHA-256 under which an agent token is stored (hex).
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn forbidden(agent: &str) -> Response {
    ApiError::Forbidden(format!(
        "an agent token acts for agent {agent} only: this needs the admin token or that agent's own token"
    ))
    .into_response()
}

/// What an agent token may do on a route (SPEC §4: "per-agent tokens …
/// limited to the agent's own actions").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anything the console shows an agent: sessions, the queue, leads,
    /// the event stream, its own agent record and session actions.
    Allow,
    /// Only when the JSON body's `agent` is this agent (join, manual call).
    BodyAgent,
    /// Only on a call record of this agent.
    CallOfAgent(i64),
    /// Admin only.
    Deny,
}

/// The rules for an agent token on `method path` (see [`Access`]).
pub fn agent_access(method: &axum::http::Method, path: &str, agent: &str) -> Access {
    use axum::http::Method;
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(3).collect();
    let get = method == Method::GET;
    let post = method == Method::POST;
    match parts.as_slice() {
        ["events"] if get => Access::Allow,
        ["me"] if get => Access::Allow,
        ["sessions"] if get => Access::Allow,
        ["sessions", _] if get => Access::Allow,
        ["sessions", _, "queue"] if get => Access::Allow,
        ["sessions", _, "agents"] if post => Access::BodyAgent,
        ["sessions", _, "agents", a, _] if post && *a == agent => Access::Allow,
        ["leads", _] if get => Access::Allow,
        ["leads", _, "calls"] if get => Access::Allow,
        ["leads", _, "notes"] if post => Access::Allow,
        ["agents", a] if get && *a == agent => Access::Allow,
        // The browser as the agent's own phone (SPEC §4 WebRTC).
        ["agents", a, "webrtc"] if post && *a == agent => Access::Allow,
        ["agents", a, "webrtc", _] if method == Method::DELETE && *a == agent => Access::Allow,
        ["calls"] if post => Access::BodyAgent,
        ["calls", id] if get || method == Method::PATCH => {
            id.parse().map_or(Access::Deny, Access::CallOfAgent)
        }
        ["calls", id, "hangup"] if post => id.parse().map_or(Access::Deny, Access::CallOfAgent),
        _ => Access::Deny,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // one real instant as the simulated clock's origin
mod tests {
    use super::*;

    #[test]
    fn an_address_is_locked_after_its_failures_until_the_window_ends() {
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let mut f = FailedLogins::default();
        for i in 0..MAX_FAILURES - 1 {
            assert!(!f.record_failure(a, t0 + Duration::from_secs(u64::from(i))));
            assert_eq!(
                f.locked_for(a, t0 + Duration::from_secs(u64::from(i))),
                None
            );
        }
        let last = t0 + Duration::from_secs(20);
        assert!(f.record_failure(a, last), "the tenth failure locks");
        assert_eq!(f.locked_for(a, last), Some(Duration::from_secs(40)));
        assert_eq!(f.locked_for(b, last), None, "other addresses unaffected");
        let end = t0 + FAILURE_WINDOW;
        assert_eq!(f.locked_for(a, end), None, "free when the window ends");
        assert!(
            !f.record_failure(a, end),
            "a new window starts counting at 1"
        );
        assert_eq!(f.locked_for(a, end), None);
    }

    #[test]
    fn agent_tokens_reach_their_own_actions_only() {
        use axum::http::Method;
        let a = |m: Method, p: &str| agent_access(&m, p, "alice");
        assert_eq!(a(Method::GET, "/api/v1/sessions/3"), Access::Allow);
        assert_eq!(
            a(Method::POST, "/api/v1/sessions/3/agents/alice/next"),
            Access::Allow
        );
        assert_eq!(
            a(Method::POST, "/api/v1/sessions/3/agents/bob/next"),
            Access::Deny
        );
        assert_eq!(
            a(Method::POST, "/api/v1/sessions/3/agents"),
            Access::BodyAgent
        );
        assert_eq!(a(Method::POST, "/api/v1/calls"), Access::BodyAgent);
        assert_eq!(a(Method::PATCH, "/api/v1/calls/9"), Access::CallOfAgent(9));
        assert_eq!(a(Method::GET, "/api/v1/agents/alice"), Access::Allow);
        assert_eq!(a(Method::GET, "/api/v1/agents/bob"), Access::Deny);
        assert_eq!(
            a(Method::POST, "/api/v1/agents/alice/webrtc"),
            Access::Allow
        );
        assert_eq!(a(Method::POST, "/api/v1/agents/bob/webrtc"), Access::Deny);
        assert_eq!(
            a(Method::DELETE, "/api/v1/agents/alice/webrtc/3"),
            Access::Allow
        );
        assert_eq!(
            a(Method::DELETE, "/api/v1/agents/bob/webrtc/3"),
            Access::Deny
        );
        assert_eq!(a(Method::GET, "/api/v1/agents"), Access::Deny);
        assert_eq!(a(Method::POST, "/api/v1/leads"), Access::Deny);
        assert_eq!(a(Method::POST, "/api/v1/sessions/3/reset"), Access::Deny);
        assert_eq!(a(Method::POST, "/api/v1/agents/alice/tokens"), Access::Deny);
        assert_eq!(a(Method::GET, "/metrics"), Access::Deny);
        assert_eq!(a(Method::GET, "/api/v1/me"), Access::Allow);
        assert_eq!(a(Method::GET, "/api/v1/leads/4/calls"), Access::Allow);
        assert_eq!(a(Method::POST, "/api/v1/leads/4/calls"), Access::Deny);
        assert_eq!(a(Method::POST, "/api/v1/leads/4/notes"), Access::Allow);
        assert_eq!(a(Method::GET, "/api/v1/sessions/3/stats"), Access::Deny);
    }

    #[test]
    fn tracking_is_bounded() {
        let t0 = Instant::now();
        let mut f = FailedLogins::default();
        for i in 0..MAX_TRACKED as u32 {
            f.record_failure(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert_eq!(f.by_addr.len(), MAX_TRACKED);
        let late: IpAddr = "198.51.100.7".parse().unwrap();
        f.record_failure(late, t0);
        assert_eq!(f.by_addr.len(), MAX_TRACKED, "full: not counted, not grown");
        // Once the old entries expire they make room.
        f.record_failure(late, t0 + FAILURE_WINDOW);
        assert_eq!(f.by_addr.len(), 1);
    }

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"change-me", b"change-me"));
        assert!(!constant_time_eq(b"change-me", b"change-mf"));
        assert!(!constant_time_eq(b"change-me", b"change-me-too"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
