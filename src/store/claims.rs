//! The SQL of R13's lead claims and of a dialer session's writer rounds
//! (`dialer::claim` holds their rules; DESIGN.md: SQL only in the store).
//! Both backends run the same text (`$N` placeholders, `RETURNING`,
//! `ON CONFLICT`, `UPDATE … FROM` and row values mean the same).

use super::{Store, StoreError};
use crate::leads::model::Lead;

/// Runs `$body` with `$p` bound to the backend's pool that `$pool` names
/// (same SQL text for both backends).
macro_rules! on_pool {
    ($store:expr, $pool:ident, $p:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite(s) => {
                let $p = s.$pool();
                $body
            }
            $crate::store::Store::Postgres(s) => {
                let $p = s.$pool();
                $body
            }
        }
    };
}
pub(crate) use on_pool;

/// [`on_pool`] for reads: the connection pool.
macro_rules! with_pool {
    ($store:expr, $p:ident => $body:expr) => {
        $crate::store::claims::on_pool!($store, pool, $p => $body)
    };
}
pub(crate) use with_pool;

/// [`on_pool`] for a single-statement write: SQLite's one writer
/// connection (see `SqliteStore::begin_write`), PostgreSQL's pool.
macro_rules! with_write_pool {
    ($store:expr, $p:ident => $body:expr) => {
        $crate::store::claims::on_pool!($store, write_pool, $p => $body)
    };
}
pub(crate) use with_write_pool;

/// Runs `$body` with `$tx` bound to a write transaction of the backend
/// (SQLite `BEGIN IMMEDIATE`, so the claim step is serialised at once).
macro_rules! with_write_tx {
    ($store:expr, $tx:ident => $body:expr) => {
        match $store {
            Store::Sqlite(s) => {
                let mut $tx = s.begin_write().await?;
                let r = $body;
                $tx.commit().await?;
                r
            }
            Store::Postgres(s) => {
                let mut $tx = s.begin_write().await?;
                let r = $body;
                $tx.commit().await?;
                r
            }
        }
    };
}

/// A claim to insert (R13), with the R4 and R5 conditions it is taken
/// under.
#[derive(Debug, Clone, Copy)]
pub struct ClaimInsert<'a> {
    /// The lead.
    pub lead_id: i64,
    /// The session asking.
    pub session_id: i64,
    /// The agent who will dial it.
    pub agent: &'a str,
    /// This process's id.
    pub instance: &'a str,
    /// Wall clock, epoch ms.
    pub now_ms: i64,
    /// End of the lease, epoch ms.
    pub expires_ms: i64,
    /// The R4 block in ms (0: no check).
    pub block_ms: i64,
    /// The lead re-entered the view (R7): no R4/R5 check.
    pub reentered: bool,
}

/// What [`Store::claim_checked`]'s transaction found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimChecked {
    /// Claimed: the row's `(id, version)`.
    Claimed(i64, i64),
    /// A live claim holds the lead.
    Taken,
    /// Called by another session (or logged) at this time, within the block.
    RecentlyCalled(i64),
    /// Answered in this session (R5).
    Answered,
}

/// A lead's record in a session (`session_leads`), as a writer stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLeadRow {
    /// The session.
    pub session_id: i64,
    /// The lead.
    pub lead_id: i64,
    /// Its generation (R7).
    pub generation: i64,
    /// Unanswered calls (R3).
    pub calls: i64,
    /// Answered (R5).
    pub answered: bool,
    /// End of the block, epoch ms (R4).
    pub blocked_until: Option<i64>,
}

/// A claim's release: `(claim id, version held, now_ms)`.
pub type ClaimRelease = (i64, i64, i64);

/// A claim made in a writer's round: `(lead, agent, claim id, version)`.
pub type RoundClaim = (i64, String, i64, i64);

/// What one writer round ([`Store::session_round`]) did, each part on its
/// own: the leads read, the claims released by the ends, the claims made.
pub type RoundResult = (
    Result<Vec<Lead>, StoreError>,
    Result<Vec<i64>, StoreError>,
    Result<Vec<RoundClaim>, StoreError>,
);

/// Claims one [`claims_sql`] statement takes at most (8 parameters each:
/// under both backends' bounds).
pub const CLAIM_ROWS: usize = 256;

/// Rows of one [`save_histories_sql`] or [`release_claims_sql`] statement
/// (6 parameters each at most: under both backends' bounds).
const END_ROWS: usize = 500;

/// The ends' statements on `$tx`, a write transaction of either backend:
/// every history in one multi-row upsert and every release in one
/// multi-row update per [`END_ROWS`]; the ids released.
macro_rules! write_ends {
    ($tx:ident, $histories:expr, $releases:expr) => {{
        for chunk in $histories.chunks(END_ROWS) {
            let sql = save_histories_sql(chunk.len());
            let mut q = sqlx::query(&sql);
            for h in chunk {
                q = q
                    .bind(h.session_id)
                    .bind(h.lead_id)
                    .bind(h.generation)
                    .bind(h.calls)
                    .bind(i64::from(h.answered))
                    .bind(h.blocked_until);
            }
            q.execute(&mut *$tx).await?;
        }
        let mut released: Vec<i64> = Vec::with_capacity($releases.len());
        for chunk in $releases.chunks(END_ROWS) {
            let sql = release_claims_sql(chunk.len());
            let mut q = sqlx::query_scalar::<_, i64>(&sql);
            for (id, version, now_ms) in chunk {
                q = q.bind(*id).bind(*version).bind(*now_ms);
            }
            released.extend(q.fetch_all(&mut *$tx).await?);
        }
        released
    }};
}

impl Store {
    /// The claim as one statement (R13 with the R4 and R5 checks as
    /// conditions of the insert): inserts it when no claim is live on the
    /// lead and, unless it re-entered the view, it was neither called by
    /// another session within the block nor answered in this session.
    /// `(id, version)`, or `None` when nothing was inserted.
    pub async fn claim_at_once(
        &self,
        c: &ClaimInsert<'_>,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let row: Option<(i64, i64)> = with_write_pool!(self, p => sqlx::query_as(
            "INSERT INTO lead_claims \
             (lead_id, session_id, agent, instance, claimed_ms, expires_ms) \
             SELECT $1, $2, $3, $4, $5, $6 \
             WHERE NOT EXISTS (SELECT 1 FROM lead_claims WHERE lead_id = $1 AND released_ms IS NULL) \
             AND ($7 OR (\
               NOT EXISTS (SELECT 1 FROM session_leads \
                           WHERE session_id = $2 AND lead_id = $1 AND answered = 1) \
               AND ($8 <= 0 OR NOT EXISTS (SELECT 1 FROM calls \
                    WHERE lead_id = $1 AND (session_id IS NULL OR session_id <> $2) \
                    AND started_ms > $5 - $8)))) \
             ON CONFLICT DO NOTHING RETURNING id, version",
        )
        .bind(c.lead_id)
        .bind(c.session_id)
        .bind(c.agent)
        .bind(c.instance)
        .bind(c.now_ms)
        .bind(c.expires_ms)
        .bind(c.reentered)
        .bind(c.block_ms)
        .fetch_optional(p)
        .await?);
        Ok(row)
    }

    /// The claim step as a write transaction: releases a lease that ran
    /// out (a dead instance's, bumping its version), then says why the
    /// lead cannot be claimed (a live claim; R4 called by another session
    /// within the block; R5 answered in this session) or claims it (the
    /// unique index `lead_claims_live` settles a race with another
    /// instance).
    pub async fn claim_checked(&self, c: &ClaimInsert<'_>) -> Result<ClaimChecked, StoreError> {
        let r: Result<ClaimChecked, StoreError> = with_write_tx!(self, tx => {
            // The live claim (and when its lease ends), other sessions' and
            // logged calls (R4 "by any session"; this session's own blocks
            // are the queue's, which a reset erases, R14) and this
            // session's answer (R5) in one statement.
            let (live_until, last, answered): (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
                "SELECT \
                 (SELECT expires_ms FROM lead_claims WHERE lead_id = $1 AND released_ms IS NULL), \
                 (SELECT MAX(started_ms) FROM calls \
                  WHERE lead_id = $1 AND (session_id IS NULL OR session_id <> $2)), \
                 (SELECT answered FROM session_leads WHERE session_id = $2 AND lead_id = $1)",
            )
            .bind(c.lead_id)
            .bind(c.session_id)
            .fetch_one(&mut *tx)
            .await?;
            let live = match live_until {
                Some(until) if until <= c.now_ms => {
                    // A lease that ran out belongs to a dead instance:
                    // release it, bumping the version so that instance's
                    // renew or release fails. (Rare: only then a second
                    // statement.)
                    sqlx::query(
                        "UPDATE lead_claims SET released_ms = $2, version = version + 1 \
                         WHERE lead_id = $1 AND released_ms IS NULL AND expires_ms <= $2",
                    )
                    .bind(c.lead_id)
                    .bind(c.now_ms)
                    .execute(&mut *tx)
                    .await?;
                    None
                }
                other => other,
            };
            if live.is_some() {
                Ok(ClaimChecked::Taken)
            } else {
                match last {
                    Some(at) if !c.reentered && c.block_ms > 0 && at > c.now_ms - c.block_ms => {
                        Ok(ClaimChecked::RecentlyCalled(at))
                    }
                    _ if !c.reentered && answered == Some(1) => Ok(ClaimChecked::Answered),
                    _ => {
                        // The unique index settles a race with another
                        // instance: the loser inserts nothing (and, in
                        // PostgreSQL, waits for the winner's commit first).
                        let row: Option<(i64, i64)> = sqlx::query_as(
                            "INSERT INTO lead_claims \
                             (lead_id, session_id, agent, instance, claimed_ms, expires_ms) \
                             VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT DO NOTHING RETURNING id, version",
                        )
                        .bind(c.lead_id)
                        .bind(c.session_id)
                        .bind(c.agent)
                        .bind(c.instance)
                        .bind(c.now_ms)
                        .bind(c.expires_ms)
                        .fetch_optional(&mut *tx)
                        .await?;
                        Ok(match row {
                            Some((id, version)) => ClaimChecked::Claimed(id, version),
                            None => ClaimChecked::Taken,
                        })
                    }
                }
            }
        });
        r
    }

    /// Extends claim `id`'s lease to `expires_ms` if it is still held at
    /// `version` and live; the next version, or `None` when it is not.
    pub async fn renew_claim(
        &self,
        id: i64,
        version: i64,
        expires_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let row: Option<i64> = with_write_pool!(self, p => sqlx::query_scalar(
            "UPDATE lead_claims SET expires_ms = $3, version = version + 1 \
             WHERE id = $1 AND version = $2 AND released_ms IS NULL RETURNING version",
        )
        .bind(id)
        .bind(version)
        .bind(expires_ms)
        .fetch_optional(p)
        .await?);
        Ok(row)
    }

    /// Records the call placed under claim `id`.
    pub async fn attach_claim_call(&self, id: i64, call_id: i64) -> Result<(), StoreError> {
        with_write_pool!(self, p => sqlx::query("UPDATE lead_claims SET call_id = $2 WHERE id = $1")
            .bind(id)
            .bind(call_id)
            .execute(p)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Ends claim `id` if it is still held at `version` and live; whether
    /// it was.
    pub async fn release_claim(
        &self,
        id: i64,
        version: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let n = with_write_pool!(self, p => sqlx::query(
            "UPDATE lead_claims SET released_ms = $3, version = version + 1 \
             WHERE id = $1 AND version = $2 AND released_ms IS NULL",
        )
        .bind(id)
        .bind(version)
        .bind(now_ms)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Calls' ends in one write transaction: the leads' records in their
    /// sessions (one multi-row upsert; no two rows of one `(session,
    /// lead)`) and the claims' releases (one multi-row update, each at its
    /// version and while live); the ids released.
    pub async fn save_ends(
        &self,
        histories: &[SessionLeadRow],
        releases: &[ClaimRelease],
    ) -> Result<Vec<i64>, StoreError> {
        if histories.is_empty() && releases.is_empty() {
            return Ok(Vec::new());
        }
        let released: Vec<i64> = with_write_tx!(self, tx => write_ends!(tx, histories, releases));
        Ok(released)
    }

    /// One round of a session's writer on one writer connection taken
    /// once: the leads `reads` in one statement, the ends in one write
    /// transaction ([`Store::save_ends`]'s statements), then the claims in
    /// one statement ([`claims_sql`]). Each part's result comes back on
    /// its own; `Err` only when no connection could be had.
    pub async fn session_round(
        &self,
        reads: &[i64],
        histories: &[SessionLeadRow],
        releases: &[ClaimRelease],
        claims: &[ClaimInsert<'_>],
    ) -> Result<RoundResult, StoreError> {
        macro_rules! round {
            ($s:ident, $conn:ident, $begin:expr) => {{
                let leads = if reads.is_empty() {
                    Ok(Vec::new())
                } else {
                    $s.get_leads_on(&mut $conn, reads).await
                };
                let ended: Result<Vec<i64>, StoreError> =
                    if histories.is_empty() && releases.is_empty() {
                        Ok(Vec::new())
                    } else {
                        async {
                            let mut tx = $begin.await?;
                            let released = write_ends!(tx, histories, releases);
                            tx.commit().await?;
                            Ok::<_, StoreError>(released)
                        }
                        .await
                    };
                let claimed: Result<Vec<RoundClaim>, StoreError> = if claims.is_empty() {
                    Ok(Vec::new())
                } else {
                    let sql = claims_sql(claims.len());
                    let mut q = sqlx::query_as::<_, RoundClaim>(&sql);
                    for c in claims {
                        q = q
                            .bind(c.lead_id)
                            .bind(c.session_id)
                            .bind(c.agent)
                            .bind(c.instance)
                            .bind(c.now_ms)
                            .bind(c.expires_ms)
                            .bind(c.reentered)
                            .bind(c.block_ms);
                    }
                    q.fetch_all(&mut *$conn).await.map_err(StoreError::from)
                };
                Ok((leads, ended, claimed))
            }};
        }
        match self {
            Store::Sqlite(s) => {
                let mut conn = s.write_pool().acquire().await?;
                // BEGIN IMMEDIATE as `SqliteStore::begin_write`: the lock at
                // once rather than an upgrade that fails with SQLITE_BUSY.
                round!(
                    s,
                    conn,
                    sqlx::Connection::begin_with(&mut *conn, "BEGIN IMMEDIATE")
                )
            }
            Store::Postgres(s) => {
                let mut conn = s.write_pool().acquire().await?;
                round!(s, conn, sqlx::Connection::begin(&mut *conn))
            }
        }
    }

    /// Releases every live claim of `instance`; how many.
    pub async fn release_instance_claims(
        &self,
        instance: &str,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let n = with_write_pool!(self, p => sqlx::query(
            "UPDATE lead_claims SET released_ms = $2, version = version + 1 \
             WHERE instance = $1 AND released_ms IS NULL",
        )
        .bind(instance)
        .bind(now_ms)
        .execute(p)
        .await?
        .rows_affected());
        Ok(n)
    }

    /// Lead ids with a live, unexpired claim in `session_id`, ascending.
    pub async fn live_claim_leads(
        &self,
        session_id: i64,
        now_ms: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let ids: Vec<i64> = with_pool!(self, p => sqlx::query_scalar(
            "SELECT lead_id FROM lead_claims \
             WHERE session_id = $1 AND released_ms IS NULL AND expires_ms > $2 ORDER BY lead_id",
        )
        .bind(session_id)
        .bind(now_ms)
        .fetch_all(p)
        .await?);
        Ok(ids)
    }
}

/// Claims of `rows` leads in one statement, each with
/// [`Store::claim_at_once`]'s conditions (no live claim on the lead;
/// unless it re-entered the view, neither called by another session
/// within its block, R4, nor answered in this session, R5). Each row
/// binds `(lead, session, agent, instance, now, expires, reentered,
/// block)`; the claims made come back as `(lead, agent, id, version)` in
/// no particular order. Two rows of one lead: the unique index
/// `lead_claims_live` lets one in.
fn claims_sql(rows: usize) -> String {
    let values = super::methods::typed_row_placeholders(
        rows,
        &[
            "BIGINT", "BIGINT", "TEXT", "TEXT", "BIGINT", "BIGINT", "BOOLEAN", "BIGINT",
        ],
    );
    format!(
        "WITH v (vlead, vsession, vagent, vinstance, vnow, vexpires, vreentered, vblock) \
         AS (VALUES {values}) \
         INSERT INTO lead_claims \
         (lead_id, session_id, agent, instance, claimed_ms, expires_ms) \
         SELECT vlead, vsession, vagent, vinstance, vnow, vexpires FROM v \
         WHERE NOT EXISTS (SELECT 1 FROM lead_claims \
                           WHERE lead_id = vlead AND released_ms IS NULL) \
         AND (vreentered OR (\
           NOT EXISTS (SELECT 1 FROM session_leads \
                       WHERE session_id = vsession AND lead_id = vlead AND answered = 1) \
           AND (vblock <= 0 OR NOT EXISTS (SELECT 1 FROM calls \
                WHERE lead_id = vlead AND (session_id IS NULL OR session_id <> vsession) \
                AND started_ms > vnow - vblock)))) \
         ON CONFLICT DO NOTHING RETURNING lead_id, agent, id, version"
    )
}

/// Upserts `rows` leads' records in a session in one statement
/// (`dialer::record::save_history` with one row, [`Store::save_ends`]
/// with a batch); no two rows may name the same `(session, lead)`
/// (PostgreSQL refuses to update a row twice in one statement).
pub(crate) fn save_histories_sql(rows: usize) -> String {
    format!(
        "INSERT INTO session_leads \
         (session_id, lead_id, generation, calls, answered, blocked_until_ms) VALUES {} \
         ON CONFLICT (session_id, lead_id) DO UPDATE SET generation = excluded.generation, \
         calls = excluded.calls, answered = excluded.answered, \
         blocked_until_ms = excluded.blocked_until_ms",
        super::methods::row_placeholders(rows, 6)
    )
}

/// Releases `rows` claims `(id, version, now_ms)` in one statement, each
/// only at the version its holder knows and while live (R13); returns the
/// ids released.
fn release_claims_sql(rows: usize) -> String {
    let values = super::methods::typed_row_placeholders(rows, &["BIGINT", "BIGINT", "BIGINT"]);
    format!(
        "WITH v (vid, vversion, vnow) AS (VALUES {values}) \
         UPDATE lead_claims SET released_ms = vnow, version = version + 1 \
         FROM v WHERE lead_claims.id = vid AND lead_claims.version = vversion \
         AND released_ms IS NULL RETURNING lead_claims.id"
    )
}
