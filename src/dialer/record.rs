//! Persistence of dialer sessions (SPEC §1, R14): settings, share token
//! hash (R16), agents and their pause state (R14), and the queue's per-lead
//! history (R3–R5, R7), so a restart resumes every session without dialing
//! anyone twice. Claims and call records are the truth for calls in flight
//! ([`super::claim`]); this is the session's memory.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::hours::Window;
use super::queue::{LeadHistory, LeadId};
use crate::leads::model::rfc3339;
use crate::media::amd::AmdMode;
use crate::store::claims::{with_pool, with_write_pool};
use crate::store::{Entity, Store, StoreError};

/// A stored dialer session's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SessionRow {
    /// The session id.
    pub id: i64,
    /// The Smart View it calls (R1).
    pub smart_view_id: i64,
    /// R8: `reduced_ring_timeout` instead of `ring_timeout`.
    pub reduced_ring_time: bool,
    /// Wrap-up idle in ms; `None` uses the config's `[dialer] wrap_up_idle`.
    /// Shown as `wrap_up_idle` in seconds, as the API takes it.
    #[serde(rename = "wrap_up_idle", serialize_with = "ms_as_seconds")]
    #[schema(value_type = Option<f64>)]
    pub wrap_up_idle_ms: Option<i64>,
    /// R16: whether a share link is active (the token itself is never stored).
    pub shared: bool,
    /// Creation time, epoch ms (`created`, RFC 3339, in the API).
    #[serde(rename = "created", serialize_with = "rfc3339::serialize_ms")]
    #[schema(value_type = chrono::DateTime<chrono::Utc>)]
    pub created_ms: i64,
    /// The last "reset & call again" (R14), epoch ms (`reset_at`, RFC 3339,
    /// in the API).
    #[serde(rename = "reset_at", serialize_with = "rfc3339::serialize_opt_ms")]
    #[schema(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    pub reset_ms: Option<i64>,
    /// The session's calling hours in each lead's local time (SPEC §4);
    /// `null`: the config's `[dialer] calling_hours` (08:00–21:00 by
    /// default).
    #[schema(value_type = Option<super::hours::WindowSpec>)]
    pub calling_hours: Option<Window>,
    /// The session's caller ID (E.164), shown to leads instead of the
    /// trunk's when no `dialer.caller_id_pool` number is local to them;
    /// `null`: the trunk's.
    pub caller_id: Option<String>,
    /// Answering-machine detection (SPEC §4): `off`, `detect`, `hangup`
    /// or `drop`.
    pub amd: AmdMode,
    /// The message `drop` leaves after the beep, and the one the agent's
    /// drop key leaves (`POST /api/v1/voicemail-drops`).
    pub voicemail_drop_id: Option<i64>,
    /// Whether the session's calls are recorded (SPEC §4).
    pub record: bool,
}

/// A stored window: both columns or neither; a pair that no longer parses
/// (written by hand) counts as none, so the default applies.
fn stored_window(start: Option<String>, end: Option<String>) -> Option<Window> {
    Window::parse(&start?, &end?).ok()
}

/// Milliseconds shown as (fractional) seconds, the unit of every duration
/// in the config and the API (SPEC §4).
fn ms_as_seconds<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_f64(*ms as f64 / 1000.0),
        None => s.serialize_none(),
    }
}

/// A session's agent as stored (R14: pause survives a restart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRow {
    /// The agent's username.
    pub agent: String,
    /// Paused by the agent (or by a hang-up of the agent leg).
    pub paused: bool,
}

/// R16: the stored form of a share token, `sha256(token)` in hex. A leak of
/// the table does not reveal a usable link.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// R16: a new share token: 256 random bits (≥128 required), URL-safe hex.
pub fn new_share_token<R: rand::RngCore>(rng: &mut R) -> String {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

macro_rules! session_from_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let r = $row;
        SessionRow {
            id: r.try_get("id")?,
            smart_view_id: r.try_get("smart_view_id")?,
            reduced_ring_time: r.try_get::<i64, _>("reduced_ring_time")? != 0,
            wrap_up_idle_ms: r.try_get("wrap_up_idle_ms")?,
            shared: r
                .try_get::<Option<String>, _>("share_token_hash")?
                .is_some(),
            created_ms: r.try_get("created_ms")?,
            reset_ms: r.try_get("reset_ms")?,
            calling_hours: stored_window(r.try_get("calling_start")?, r.try_get("calling_end")?),
            caller_id: r.try_get("caller_id")?,
            // A spelling written by hand that no longer parses: off.
            amd: AmdMode::parse(&r.try_get::<String, _>("amd")?).unwrap_or_default(),
            voicemail_drop_id: r.try_get("voicemail_drop_id")?,
            record: r.try_get::<i64, _>("record")? != 0,
        }
    }};
}

const SESSION_COLS: &str = "id, smart_view_id, reduced_ring_time, wrap_up_idle_ms, \
                            share_token_hash, created_ms, reset_ms, calling_start, calling_end, caller_id, \
                            amd, voicemail_drop_id, record";

/// Stores a new session with its share token's hash (R16). A Smart View that
/// does not exist is `Invalid` (foreign key).
pub async fn create_session(
    store: &Store,
    smart_view_id: i64,
    reduced_ring_time: bool,
    wrap_up_idle_ms: Option<i64>,
    share_hash: &str,
    now_ms: i64,
) -> Result<SessionRow, StoreError> {
    let sql = format!(
        "INSERT INTO dialer_sessions \
         (smart_view_id, reduced_ring_time, wrap_up_idle_ms, share_token_hash, created_ms) \
         VALUES ($1, $2, $3, $4, $5) RETURNING {SESSION_COLS}"
    );
    let row = with_write_pool!(store, p => {
        let row = sqlx::query(&sql)
            .bind(smart_view_id)
            .bind(i64::from(reduced_ring_time))
            .bind(wrap_up_idle_ms)
            .bind(share_hash)
            .bind(now_ms)
            .fetch_one(p)
            .await
            .map_err(|e| StoreError::from_sqlx(e, Entity::SmartView, smart_view_id))?;
        session_from_row!(&row)
    });
    Ok(row)
}

/// One session, if it exists.
pub async fn get_session(store: &Store, id: i64) -> Result<Option<SessionRow>, StoreError> {
    let sql = format!("SELECT {SESSION_COLS} FROM dialer_sessions WHERE id = $1");
    let row = with_pool!(store, p => {
        match sqlx::query(&sql).bind(id).fetch_optional(p).await? {
            Some(row) => Some(session_from_row!(&row)),
            None => None,
        }
    });
    Ok(row)
}

/// Every session, by id (restart).
pub async fn list_sessions(store: &Store) -> Result<Vec<SessionRow>, StoreError> {
    let sql = format!("SELECT {SESSION_COLS} FROM dialer_sessions ORDER BY id");
    let rows = with_pool!(store, p => {
        let rows = sqlx::query(&sql).fetch_all(p).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push(session_from_row!(r));
        }
        out
    });
    Ok(rows)
}

/// The session whose share token hashes to `hash` (R16), if any.
pub async fn find_by_share_hash(store: &Store, hash: &str) -> Result<Option<i64>, StoreError> {
    let id: Option<i64> = with_pool!(store, p => sqlx::query_scalar(
        "SELECT id FROM dialer_sessions WHERE share_token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(p)
    .await?);
    Ok(id)
}

/// Replaces (or with `None`, revokes) the share token's hash (R16); false
/// if there is no such session.
pub async fn set_share_hash(
    store: &Store,
    id: i64,
    hash: Option<&str>,
) -> Result<bool, StoreError> {
    let n = with_write_pool!(store, p => sqlx::query(
        "UPDATE dialer_sessions SET share_token_hash = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(hash)
    .execute(p)
    .await?
    .rows_affected());
    Ok(n == 1)
}

/// Updates the settings (R8 reduced ring time, wrap-up idle); false if
/// there is no such session.
pub async fn update_settings(
    store: &Store,
    id: i64,
    reduced_ring_time: bool,
    wrap_up_idle_ms: Option<i64>,
) -> Result<bool, StoreError> {
    let n = with_write_pool!(store, p => sqlx::query(
        "UPDATE dialer_sessions SET reduced_ring_time = $2, wrap_up_idle_ms = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(i64::from(reduced_ring_time))
    .bind(wrap_up_idle_ms)
    .execute(p)
    .await?
    .rows_affected());
    Ok(n == 1)
}

/// Sets (or with `None`, clears) the session's calling hours (SPEC §4);
/// false if there is no such session.
pub async fn set_calling_hours(
    store: &Store,
    id: i64,
    window: Option<Window>,
) -> Result<bool, StoreError> {
    let start = window.map(|w| w.start().to_string());
    let end = window.map(|w| w.end().to_string());
    let n = with_write_pool!(store, p => sqlx::query(
        "UPDATE dialer_sessions SET calling_start = $2, calling_end = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(start)
    .bind(end)
    .execute(p)
    .await?
    .rows_affected());
    Ok(n == 1)
}

/// Sets (or with `None`, clears) the session's caller ID; false if there
/// is no such session.
pub async fn set_caller_id(
    store: &Store,
    id: i64,
    caller_id: Option<&str>,
) -> Result<bool, StoreError> {
    let n = with_write_pool!(store, p => sqlx::query(
        "UPDATE dialer_sessions SET caller_id = $2 WHERE id = $1",
    )
    .bind(id)
    .bind(caller_id)
    .execute(p)
    .await?
    .rows_affected());
    Ok(n == 1)
}

/// Sets the session's answering-machine and recording settings (SPEC §4);
/// false if there is no such session.
pub async fn set_media_settings(
    store: &Store,
    id: i64,
    amd: AmdMode,
    voicemail_drop_id: Option<i64>,
    record: bool,
) -> Result<bool, StoreError> {
    let n = with_write_pool!(store, p => sqlx::query(
        "UPDATE dialer_sessions SET amd = $2, voicemail_drop_id = $3, record = $4 WHERE id = $1",
    )
    .bind(id)
    .bind(amd.as_str())
    .bind(voicemail_drop_id)
    .bind(i64::from(record))
    .execute(p)
    .await?
    .rows_affected());
    Ok(n == 1)
}

/// R14 "reset & call again": forgets the session's lead history.
pub async fn reset(store: &Store, id: i64, now_ms: i64) -> Result<(), StoreError> {
    with_write_pool!(store, p => {
        sqlx::query("UPDATE dialer_sessions SET reset_ms = $2 WHERE id = $1")
            .bind(id)
            .bind(now_ms)
            .execute(p)
            .await?;
        sqlx::query("DELETE FROM session_leads WHERE session_id = $1")
            .bind(id)
            .execute(p)
            .await?;
    });
    Ok(())
}

/// Adds an agent to a session, or updates its pause flag.
pub async fn upsert_agent(
    store: &Store,
    session_id: i64,
    agent: &str,
    paused: bool,
    now_ms: i64,
) -> Result<(), StoreError> {
    with_write_pool!(store, p => sqlx::query(
        "INSERT INTO session_agents (session_id, agent, paused, joined_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (session_id, agent) DO UPDATE SET paused = excluded.paused",
    )
    .bind(session_id)
    .bind(agent)
    .bind(i64::from(paused))
    .bind(now_ms)
    .execute(p)
    .await
    .map(|_| ())
    .map_err(|e| StoreError::from_sqlx(e, Entity::SmartView, session_id))?);
    Ok(())
}

/// Removes an agent from a session (it left).
pub async fn remove_agent(store: &Store, session_id: i64, agent: &str) -> Result<(), StoreError> {
    with_write_pool!(store, p => sqlx::query("DELETE FROM session_agents WHERE session_id = $1 AND agent = $2")
        .bind(session_id)
        .bind(agent)
        .execute(p)
        .await
        .map(|_| ())?);
    Ok(())
}

/// A session's agents, by join order.
pub async fn list_agents(store: &Store, session_id: i64) -> Result<Vec<AgentRow>, StoreError> {
    let rows: Vec<(String, i64)> = with_pool!(store, p => sqlx::query_as(
        "SELECT agent, paused FROM session_agents WHERE session_id = $1 ORDER BY joined_ms, agent",
    )
    .bind(session_id)
    .fetch_all(p)
    .await?);
    Ok(rows
        .into_iter()
        .map(|(agent, paused)| AgentRow {
            agent,
            paused: paused != 0,
        })
        .collect())
}

/// Writes the session's record of one lead after a report (R3–R5, R9–R12).
pub async fn save_history(
    store: &Store,
    session_id: i64,
    lead: LeadId,
    h: &LeadHistory,
) -> Result<(), StoreError> {
    let sql = crate::store::claims::save_histories_sql(1);
    with_write_pool!(store, p => sqlx::query(&sql)
    .bind(session_id)
    .bind(lead.0)
    .bind(i64::from(h.generation))
    .bind(i64::from(h.calls))
    .bind(i64::from(h.answered))
    .bind(h.blocked_until)
    .execute(p)
    .await
    .map(|_| ())?);
    Ok(())
}

/// The session's stored lead records, for [`super::queue::SessionQueue::restore`].
pub async fn load_histories(
    store: &Store,
    session_id: i64,
) -> Result<Vec<(LeadId, LeadHistory)>, StoreError> {
    let rows: Vec<(i64, i64, i64, i64, Option<i64>)> = with_pool!(store, p => sqlx::query_as(
        "SELECT lead_id, generation, calls, answered, blocked_until_ms FROM session_leads \
         WHERE session_id = $1",
    )
    .bind(session_id)
    .fetch_all(p)
    .await?);
    Ok(rows
        .into_iter()
        .map(|(lead, generation, calls, answered, blocked_until)| {
            (
                LeadId(lead),
                LeadHistory {
                    generation: u32::try_from(generation).unwrap_or(u32::MAX),
                    calls: u32::try_from(calls).unwrap_or(u32::MAX),
                    answered: answered != 0,
                    blocked_until,
                },
            )
        })
        .collect())
}
