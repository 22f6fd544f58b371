//! `Idempotency-Key` on the API's POSTs (the IETF HTTPAPI draft
//! "The Idempotency-Key HTTP Header Field"): a client that retries a POST
//! after a lost response — a manual call, a session join, an import — sends
//! the same key and gets the first response again instead of a second call
//! dialed or a second lead created.
//!
//! Keys are scoped by the bearer token (hashed) and the path, kept 24 hours
//! and at most [`MAX_ENTRIES`] at once, in this instance's memory: behind a
//! load balancer a retry must reach the same instance to be recognised.
//! A key reused with a different body is refused (422); a retry while the
//! first request still runs gets 409; a 5xx is not remembered, so a retry
//! after a server error runs again.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState, IMPORT_BODY_LIMIT};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// Set on a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";
/// How long a response is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// Responses remembered at once; the oldest go first.
pub const MAX_ENTRIES: usize = 10_000;
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// Largest response body remembered (API responses are small JSON).
const MAX_RESPONSE: usize = 4 * 1024 * 1024;

type Key = [u8; 32];

#[derive(Debug, Clone)]
enum Entry {
    InFlight {
        fingerprint: Key,
    },
    Done {
        fingerprint: Key,
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
    },
}

/// What to do with a request that carries a key (sans-IO; the caller
/// passes `now`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// First time: run it (the key is now in flight).
    Run,
    /// Seen and answered: send this again.
    Replay {
        /// The first response's status.
        status: StatusCode,
        /// Its content type.
        content_type: Option<HeaderValue>,
        /// Its body.
        body: Bytes,
    },
    /// The first request with this key is still running.
    InFlight,
    /// The key was used for a different request.
    Reused,
}

/// Remembered responses by key.
#[derive(Debug, Default)]
pub struct IdempotencyCache {
    entries: HashMap<Key, (Instant, Entry)>,
    order: VecDeque<(Instant, Key)>,
}

impl IdempotencyCache {
    fn expire(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.order.front() {
            // Keys forgotten after a 5xx leave stale queue slots: bound those too.
            let full = self.entries.len() >= MAX_ENTRIES || self.order.len() > 2 * MAX_ENTRIES;
            if now.duration_since(at) < TTL && !full {
                break;
            }
            self.order.pop_front();
            if self.entries.get(&key).is_some_and(|(t, _)| *t == at) {
                self.entries.remove(&key);
            }
        }
    }

    /// Looks a key up; a new key is marked in flight.
    pub fn begin(&mut self, key: Key, fingerprint: Key, now: Instant) -> Verdict {
        self.expire(now);
        match self.entries.get(&key) {
            None => {
                self.entries
                    .insert(key, (now, Entry::InFlight { fingerprint }));
                self.order.push_back((now, key));
                Verdict::Run
            }
            Some((_, Entry::InFlight { fingerprint: f })) if *f == fingerprint => Verdict::InFlight,
            Some((
                _,
                Entry::Done {
                    fingerprint: f,
                    status,
                    content_type,
                    body,
                },
            )) if *f == fingerprint => Verdict::Replay {
                status: *status,
                content_type: content_type.clone(),
                body: body.clone(),
            },
            Some(_) => Verdict::Reused,
        }
    }

    /// Records the response of a request that [`Verdict::Run`]; a server
    /// error (or an unreadable body) forgets the key so a retry runs again.
    pub fn finish(&mut self, key: Key, outcome: Option<(StatusCode, Option<HeaderValue>, Bytes)>) {
        match outcome {
            Some((status, content_type, body)) if !status.is_server_error() => {
                if let Some((_, entry)) = self.entries.get_mut(&key) {
                    if let Entry::InFlight { fingerprint } = entry {
                        *entry = Entry::Done {
                            fingerprint: *fingerprint,
                            status,
                            content_type,
                            body,
                        };
                    }
                }
            }
            _ => {
                self.entries.remove(&key);
            }
        }
    }
}

/// Middleware for `/api`: runs after the token check.
#[allow(clippy::disallowed_methods)] // a driver: the cache's clock.
pub async fn idempotent_post(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(raw) = req.headers().get(HEADER) else {
        return next.run(req).await;
    };
    let key_text = match raw.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= MAX_KEY_LEN => k.to_string(),
        _ => {
            return ApiError::BadParam {
                param: "Idempotency-Key",
                reason: "must be 1 to 255 visible ASCII characters",
            }
            .into_response()
        }
    };
    let (parts, body) = req.into_parts();
    let Ok(bytes) = to_bytes(body, IMPORT_BODY_LIMIT).await else {
        return ApiError::PayloadTooLarge.into_response();
    };
    let token = parts
        .headers
        .get(AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    let key: Key = Sha256::new()
        .chain_update(Sha256::digest(token))
        .chain_update(parts.uri.path().as_bytes())
        .chain_update([0])
        .chain_update(key_text.as_bytes())
        .finalize()
        .into();
    let fingerprint: Key = Sha256::new()
        .chain_update(parts.uri.path().as_bytes())
        .chain_update([0])
        .chain_update(parts.uri.query().unwrap_or("").as_bytes())
        .chain_update([0])
        .chain_update(&bytes)
        .finalize()
        .into();
    let verdict = match st.idempotency.lock() {
        Ok(mut c) => c.begin(key, fingerprint, Instant::now()),
        Err(_) => return ApiError::Internal("idempotency cache poisoned".into()).into_response(),
    };
    match verdict {
        Verdict::Run => {}
        Verdict::Replay {
            status,
            content_type,
            body,
        } => {
            let mut r = (status, body).into_response();
            if let Some(ct) = content_type {
                r.headers_mut().insert(CONTENT_TYPE, ct);
            }
            r.headers_mut()
                .insert(REPLAYED, HeaderValue::from_static("true"));
            return r;
        }
        Verdict::InFlight => return ApiError::IdempotencyInFlight.into_response(),
        Verdict::Reused => return ApiError::IdempotencyKeyReused.into_response(),
    }
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    let (rparts, rbody) = response.into_parts();
    let rbytes = to_bytes(rbody, MAX_RESPONSE).await.ok();
    let outcome = rbytes
        .clone()
        .map(|b| (rparts.status, rparts.headers.get(CONTENT_TYPE).cloned(), b));
    if let Ok(mut c) = st.idempotency.lock() {
        c.finish(key, outcome);
    }
    match rbytes {
        Some(b) => Response::from_parts(rparts, Body::from(b)),
        None => ApiError::Internal("response too large to keep for Idempotency-Key".into())
            .into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // one real instant as the simulated clock's origin
mod tests {
    use super::*;

    fn k(n: u8) -> Key {
        [n; 32]
    }

    #[test]
    fn first_runs_then_replays_reuse_and_in_flight_are_refused() {
        let t0 = Instant::now();
        let mut c = IdempotencyCache::default();
        assert_eq!(c.begin(k(1), k(10), t0), Verdict::Run);
        assert_eq!(c.begin(k(1), k(10), t0), Verdict::InFlight);
        assert_eq!(c.begin(k(1), k(11), t0), Verdict::Reused);
        c.finish(
            k(1),
            Some((StatusCode::ACCEPTED, None, Bytes::from_static(b"{}"))),
        );
        assert_eq!(
            c.begin(k(1), k(10), t0 + Duration::from_secs(60)),
            Verdict::Replay {
                status: StatusCode::ACCEPTED,
                content_type: None,
                body: Bytes::from_static(b"{}")
            }
        );
        assert_eq!(c.begin(k(1), k(11), t0), Verdict::Reused);
        // After the TTL the key is new again.
        assert_eq!(c.begin(k(1), k(11), t0 + TTL), Verdict::Run);
    }

    #[test]
    fn server_errors_are_not_remembered() {
        let t0 = Instant::now();
        let mut c = IdempotencyCache::default();
        assert_eq!(c.begin(k(2), k(20), t0), Verdict::Run);
        c.finish(
            k(2),
            Some((StatusCode::SERVICE_UNAVAILABLE, None, Bytes::new())),
        );
        assert_eq!(c.begin(k(2), k(20), t0), Verdict::Run, "a retry runs again");
    }

    #[test]
    fn the_cache_is_bounded() {
        let t0 = Instant::now();
        let mut c = IdempotencyCache::default();
        for i in 0..MAX_ENTRIES + 10 {
            let mut key = [0u8; 32];
            key[..8].copy_from_slice(&(i as u64).to_be_bytes());
            assert_eq!(c.begin(key, k(0), t0), Verdict::Run);
        }
        assert!(c.entries.len() <= MAX_ENTRIES, "{}", c.entries.len());
    }
}
