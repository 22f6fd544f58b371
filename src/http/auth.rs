//! Bearer-token authentication of `/api` (SPEC §4: `Authorization: Bearer
//! TOKEN`), compared in constant time.

use axum::extract::{Request, State};
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

/// Middleware: lets a request through only with the admin token. An empty
/// configured token lets nobody in rather than everybody.
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
    match given {
        Some(token)
            if !state.admin_token.is_empty()
                && constant_time_eq(token.as_bytes(), state.admin_token.as_bytes()) =>
        {
            next.run(req).await
        }
        _ => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compares_whole_tokens() {
        assert!(constant_time_eq(b"change-me", b"change-me"));
        assert!(!constant_time_eq(b"change-me", b"change-mf"));
        assert!(!constant_time_eq(b"change-me", b"change-me-too"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
