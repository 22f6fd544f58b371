//! The leg journal's SQL (`call_legs`, migrations 0033 and 0047), written once for
//! both backends like [`super::dnc`]: the state needed to end every live
//! SIP leg after a crash (RFC 3261 §15.1.1 BYE, §9.1 CANCEL), saved in
//! batches by the journal writer (`call::leg_journal`) and read, settled
//! and cleared at start-up (`call::recovery`).

use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, FromRow, IntoArguments, Pool, Row, Type,
};

use super::methods::row_placeholders;
use super::StoreError;

/// One live leg as stored: plain text and numbers, so the store knows
/// nothing of SIP (the call module converts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegRow {
    /// The leg's Call-ID (the key, with `branch`).
    pub call_id: String,
    /// The ringing INVITE's Via branch (one row per INVITE in flight:
    /// every fork of a forked INVITE); empty for a confirmed dialog.
    pub branch: String,
    /// `lead` (towards a trunk) or `agent` (towards a phone).
    pub kind: String,
    /// The call record of a lead leg.
    pub record_id: Option<i64>,
    /// The agent whose task owns the leg.
    pub agent: String,
    /// `udp:IP:PORT` or `tcp:IP:PORT`.
    pub peer: String,
    /// A confirmed dialog (else a ringing INVITE).
    pub answered: bool,
    /// Ringing: the INVITE as sent.
    pub invite: Option<String>,
    /// Answered: our tag.
    pub local_tag: Option<String>,
    /// Answered: the peer's tag.
    pub remote_tag: Option<String>,
    /// Answered: our From address.
    pub local_uri: Option<String>,
    /// Answered: the peer's To address.
    pub remote_uri: Option<String>,
    /// Answered: the Request-URI of in-dialog requests.
    pub remote_target: Option<String>,
    /// Answered: the route set, one `name-addr` per line.
    pub route_set: Option<String>,
    /// Answered: the last CSeq we used.
    pub local_cseq: Option<i64>,
    /// When the call was answered, epoch ms.
    pub answered_ms: Option<i64>,
    /// When this row was written, epoch ms.
    pub updated_ms: i64,
}

const COLUMNS: &str =
    "call_id, branch, kind, record_id, agent, peer, answered, invite, local_tag, \
     remote_tag, local_uri, remote_uri, remote_target, route_set, local_cseq, answered_ms, \
     updated_ms";

/// Rows per multi-row statement: 17 parameters a row stays under SQLite's
/// 32,766 bound parameters (and PostgreSQL's 65,535).
const ROWS: usize = 1_000;

/// Writes one batch: upserts by (Call-ID, branch), then removals of
/// `(call_id, branch)` keys. Each key appears at most once in the batch
/// (the writer coalesces). A batch that is one statement runs on its own
/// (a statement is atomic), so the common batch costs one round trip
/// instead of three; several run in one transaction.
pub(crate) async fn save<DB>(
    pool: &Pool<DB>,
    upserts: &[LegRow],
    removals: &[(String, String)],
) -> Result<(), StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
{
    let statements = upserts.len().div_ceil(ROWS) + removals.len().div_ceil(ROWS);
    let mut conn = pool.acquire().await?;
    if statements <= 1 {
        return write::<DB>(&mut conn, upserts, removals).await;
    }
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    write::<DB>(&mut tx, upserts, removals).await?;
    tx.commit().await?;
    Ok(())
}

/// [`save`]'s statements on `conn`.
async fn write<DB>(
    conn: &mut DB::Connection,
    upserts: &[LegRow],
    removals: &[(String, String)],
) -> Result<(), StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
{
    // Multi-row statements: one round trip per chunk instead of one per
    // row, so a batch holds SQLite's write lock briefly (SPEC §6).
    for chunk in upserts.chunks(ROWS) {
        let sql = format!(
            "INSERT INTO call_legs ({COLUMNS}) VALUES {} \
             ON CONFLICT (call_id, branch) DO UPDATE SET kind = EXCLUDED.kind, \
             record_id = EXCLUDED.record_id, agent = EXCLUDED.agent, peer = EXCLUDED.peer, \
             answered = EXCLUDED.answered, invite = EXCLUDED.invite, \
             local_tag = EXCLUDED.local_tag, remote_tag = EXCLUDED.remote_tag, \
             local_uri = EXCLUDED.local_uri, remote_uri = EXCLUDED.remote_uri, \
             remote_target = EXCLUDED.remote_target, route_set = EXCLUDED.route_set, \
             local_cseq = EXCLUDED.local_cseq, answered_ms = EXCLUDED.answered_ms, \
             updated_ms = EXCLUDED.updated_ms",
            row_placeholders(chunk.len(), 17)
        );
        let mut q = sqlx::query::<DB>(&sql);
        for r in chunk {
            q = q
                .bind(r.call_id.as_str())
                .bind(r.branch.as_str())
                .bind(r.kind.as_str())
                .bind(r.record_id)
                .bind(r.agent.as_str())
                .bind(r.peer.as_str())
                .bind(i64::from(r.answered))
                .bind(r.invite.as_deref())
                .bind(r.local_tag.as_deref())
                .bind(r.remote_tag.as_deref())
                .bind(r.local_uri.as_deref())
                .bind(r.remote_uri.as_deref())
                .bind(r.remote_target.as_deref())
                .bind(r.route_set.as_deref())
                .bind(r.local_cseq)
                .bind(r.answered_ms)
                .bind(r.updated_ms);
        }
        q.execute(&mut *conn).await?;
    }
    for chunk in removals.chunks(ROWS) {
        let sql = format!(
            "DELETE FROM call_legs WHERE (call_id, branch) IN (VALUES {})",
            row_placeholders(chunk.len(), 2)
        );
        let mut q = sqlx::query::<DB>(&sql);
        for (call_id, branch) in chunk {
            q = q.bind(call_id.as_str()).bind(branch.as_str());
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Every journaled leg. (Read by column: sqlx decodes tuples of at most
/// 16 columns, the row has 17.)
pub(crate) async fn load<DB>(pool: &Pool<DB>) -> Result<Vec<LegRow>, StoreError>
where
    DB: Database,
    for<'c> &'c Pool<DB>: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Option<String>: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> Option<i64>: Decode<'r, DB> + Type<DB>,
{
    let rows = sqlx::query::<DB>(&format!(
        "SELECT {COLUMNS} FROM call_legs ORDER BY updated_ms, call_id, branch"
    ))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(LegRow {
                call_id: r.try_get(0)?,
                branch: r.try_get(1)?,
                kind: r.try_get(2)?,
                record_id: r.try_get(3)?,
                agent: r.try_get(4)?,
                peer: r.try_get(5)?,
                answered: r.try_get::<i64, _>(6)? != 0,
                invite: r.try_get(7)?,
                local_tag: r.try_get(8)?,
                remote_tag: r.try_get(9)?,
                local_uri: r.try_get(10)?,
                remote_uri: r.try_get(11)?,
                remote_target: r.try_get(12)?,
                route_set: r.try_get(13)?,
                local_cseq: r.try_get(14)?,
                answered_ms: r.try_get(15)?,
                updated_ms: r.try_get(16)?,
            })
        })
        .collect()
}

/// A call record settled by [`settle`]: `(id, lead_id, session_id, outcome)`.
pub type Settled = (i64, Option<i64>, Option<i64>, String);

/// Settles the calls of legs lost in a crash, in one transaction: each
/// record still without an outcome gets `outcome` (and `answered_ms` when
/// the leg was answered) and `ended_ms`; the R13 claims attached to those
/// records are released; the journal rows are deleted. Records that have
/// an outcome already (stored before the crash) keep it. Returns the
/// records settled. Rows are deleted by Call-ID: every fork of a call.
pub(crate) async fn settle<DB>(
    pool: &Pool<DB>,
    calls: &[(i64, &str, Option<i64>)],
    call_ids: &[String],
    now_ms: i64,
) -> Result<Vec<Settled>, StoreError>
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'r> (i64, Option<i64>, Option<i64>): FromRow<'r, DB::Row>,
{
    let mut tx = pool.begin().await?;
    let mut settled = Vec::new();
    for (record, outcome, answered_ms) in calls {
        // RETURNING says whether the record was settled, in the same text
        // on both backends.
        let done: Option<(i64, Option<i64>, Option<i64>)> = sqlx::query_as::<DB, _>(
            "UPDATE calls SET outcome = $2, answered_ms = COALESCE(answered_ms, $3), \
             ended_ms = COALESCE(ended_ms, $4) WHERE id = $1 AND outcome IS NULL \
             RETURNING id, lead_id, session_id",
        )
        .bind(*record)
        .bind(*outcome)
        .bind(*answered_ms)
        .bind(now_ms)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some((id, lead, session)) = done {
            settled.push((id, lead, session, (*outcome).to_string()));
        }
        sqlx::query::<DB>(
            "UPDATE lead_claims SET released_ms = $2, version = version + 1 \
             WHERE call_id = $1 AND released_ms IS NULL",
        )
        .bind(*record)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
    }
    for call_id in call_ids {
        sqlx::query::<DB>("DELETE FROM call_legs WHERE call_id = $1")
            .bind(call_id.as_str())
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(settled)
}
