//! SIP bans over HTTP (SPEC §4, §5): `GET /api/v1/bans` lists the source
//! addresses the SIP front door drops (too many requests, or a scanner's
//! User-Agent) and the usernames locked out of an address after failed
//! passwords; `DELETE /api/v1/bans/{address}` lifts both for an address
//! (an office that tripped the limit, say). Admin only.

use std::net::IpAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{DateTime, Utc};

use super::openapi::ErrorBody;
use super::{ApiError, ApiPath, AppState};
use crate::sip::flood::BanReason;

/// The routes of this module.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/bans", get(list))
        .route("/api/v1/bans/{address}", delete(remove))
}

/// A source address whose SIP messages are dropped.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SourceBan {
    /// The IP address.
    #[schema(value_type = String, example = "203.0.113.9")]
    pub address: IpAddr,
    /// Why: `rate_limit` (more requests than `security.rate_limit` per
    /// `security.rate_window`) or `scanner` (a scanner's User-Agent).
    pub reason: BanReason,
    /// When the ban started.
    pub since: DateTime<Utc>,
    /// When it lifts by itself.
    pub until: DateTime<Utc>,
    /// Messages dropped since it started.
    pub dropped: u64,
}

/// A username refused from one address after failed passwords (the same
/// answer as a wrong password, so a guesser cannot tell).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct AccountBan {
    /// The username the guesses named (it may not exist).
    pub username: String,
    /// The address they came from.
    #[schema(value_type = String, example = "203.0.113.9")]
    pub address: IpAddr,
    /// When the lockout lifts by itself.
    pub until: DateTime<Utc>,
}

/// The bans in force.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct BanList {
    /// Source addresses dropped, oldest ban first.
    pub sources: Vec<SourceBan>,
    /// Usernames locked out of an address.
    pub accounts: Vec<AccountBan>,
}

/// `GET /api/v1/bans`: the SIP bans in force.
#[utoipa::path(
    get,
    path = "/api/v1/bans",
    operation_id = "list_bans",
    tag = "security",
    responses(
        (status = 200, description = "The bans in force", body = BanList),
        (status = 401, description = "No or wrong admin token", body = ErrorBody),
    )
)]
pub(super) async fn list(State(st): State<AppState>) -> Json<BanList> {
    let bans = match &st.sip {
        Some(sip) => sip.bans().await,
        None => Default::default(),
    };
    Json(BanList {
        sources: bans
            .sources
            .into_iter()
            .map(|b| SourceBan {
                address: b.address,
                reason: b.reason,
                since: b.since.into(),
                until: b.until.into(),
                dropped: b.dropped,
            })
            .collect(),
        accounts: bans
            .accounts
            .into_iter()
            .map(|a| AccountBan {
                username: a.username,
                address: a.address,
                until: a.until.into(),
            })
            .collect(),
    })
}

/// `DELETE /api/v1/bans/{address}`: lifts the ban on an address and every
/// username lockout from it.
#[utoipa::path(
    delete,
    path = "/api/v1/bans/{address}",
    operation_id = "remove_ban",
    tag = "security",
    params(("address" = String, Path, description = "The banned IP address")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 400, description = "Not an IP address", body = ErrorBody),
        (status = 404, description = "The address is not banned", body = ErrorBody),
    )
)]
pub(super) async fn remove(
    State(st): State<AppState>,
    ApiPath(raw): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    let address: IpAddr = raw.trim().parse().map_err(|_| ApiError::BadParam {
        param: "address",
        reason: "not an IP address (e.g. 203.0.113.9 or 2001:db8::1)",
    })?;
    let lifted = match &st.sip {
        Some(sip) => sip.unban(address).await,
        None => false,
    };
    if lifted {
        tracing::info!(%address, "SIP ban lifted through the API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("{address} is not banned")))
    }
}
