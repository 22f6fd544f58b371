//! R13 across agents and instances: before a lead is dialed, its claim is
//! taken in the database in one atomic step, so no lead rings for two agents
//! at once even with several powerdial instances on one PostgreSQL database.
//!
//! The in-memory queue proposes a lead; the database decides:
//! - `lead_claims` holds one row per attempt; the partial unique index
//!   `lead_claims_live (lead_id) WHERE released_ms IS NULL` allows one live
//!   claim per lead, whatever instance or session asks.
//! - A claim has a lease (`expires_ms`) that its instance renews while the
//!   call lasts ([`renew`]). A claim whose lease expired belongs to a dead
//!   (or partitioned) instance: the next claimer releases it in the same
//!   transaction and takes the lead.
//! - Every change to a claim bumps its `version`; [`renew`] and [`release`]
//!   match `(id, version)`, so an instance that lost its claim (lease expired
//!   and taken over) learns it ([`ClaimError::Lost`]) instead of overwriting
//!   the newer state.
//! - The claim step also refuses a lead called by anyone within `block`
//!   (R4 "by any session": calls of other sessions or logged through the
//!   API; this session's own blocks are the queue's) and a lead this session
//!   recorded as answered (R5, written by another instance of the same
//!   session), so the queue learns of both before anyone dials.
//!
//! Lease times come from the caller's wall clock: instances sharing a
//! database must keep their clocks within a small fraction of the lease.

use super::queue::{LeadHistory, LeadId};
use crate::leads::model::Lead;
use crate::store::claims::{ClaimChecked, ClaimInsert, ClaimRelease, SessionLeadRow, CLAIM_ROWS};
use crate::store::{Store, StoreError};

/// A live claim on a lead held by this instance (R13): renew it while the
/// call lasts, release it when the call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeadClaim {
    /// The `lead_claims` row.
    pub id: i64,
    /// The lead claimed.
    pub lead_id: i64,
    /// The row's version; [`renew`] returns the next one.
    pub version: i64,
    /// End of the lease, epoch ms.
    pub expires_ms: i64,
}

/// What the database said to a claim request (R13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimResult {
    /// The lead is ours until `expires_ms` unless renewed.
    Claimed(LeadClaim),
    /// Another agent or instance holds a live claim on the lead.
    Taken,
    /// The lead was called at `at` (epoch ms), within `block` (R4 by any
    /// session): the queue must hold it until `at + block`.
    RecentlyCalled {
        /// When the latest call to the lead started, epoch ms.
        at: i64,
    },
    /// This session recorded the lead as answered (R5), e.g. by another
    /// instance running the same session.
    Answered,
}

/// Who asks for a claim and for how long.
#[derive(Debug, Clone, Copy)]
pub struct ClaimRequest<'a> {
    /// The lead the queue proposes.
    pub lead_id: i64,
    /// The session (R5 check, and for the record).
    pub session_id: i64,
    /// The agent who will dial it.
    pub agent: &'a str,
    /// This process's id (random per start), for the record and debugging.
    pub instance: &'a str,
    /// Wall clock, epoch ms.
    pub now_ms: i64,
    /// Lease length in ms.
    pub lease_ms: i64,
    /// The R4 block in ms; a lead called by another session (or logged)
    /// after `now_ms - block_ms` is refused. 0 disables the check.
    pub block_ms: i64,
    /// The lead's generation in this session (R7): a lead that left and
    /// re-entered the view is new and not held by an earlier call (R4
    /// exception), nor by an answer of an earlier generation (R5).
    pub reentered: bool,
}

/// A claim operation that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The claim was taken over after its lease expired, or released: the
    /// caller is stale and must not act on the lead any more (R13).
    #[error("claim {id} (version {version}) is no longer held")]
    Lost {
        /// The claim row.
        id: i64,
        /// The version the caller held.
        version: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ClaimError {
    fn from(e: sqlx::Error) -> Self {
        ClaimError::Store(StoreError::from(e))
    }
}

/// The atomic claim step (R13, with the R4 and R5 checks): one write
/// transaction that expires a dead instance's lease on the lead, refuses a
/// lead called within `block` or answered in this session, and inserts the
/// claim unless a live one exists (the partial unique index decides races).
pub async fn claim(store: &Store, req: &ClaimRequest<'_>) -> Result<ClaimResult, ClaimError> {
    if let Some(c) = claim_at_once(store, req).await? {
        return Ok(ClaimResult::Claimed(c));
    }
    claim_checked(store, req).await
}

/// [`claim`]'s transaction ([`Store::claim_checked`]): why a lead could
/// not be claimed at once, or the claim after a lease that ran out was
/// released.
async fn claim_checked(store: &Store, req: &ClaimRequest<'_>) -> Result<ClaimResult, ClaimError> {
    let ins = insert_of(req);
    Ok(match store.claim_checked(&ins).await? {
        ClaimChecked::Claimed(id, version) => ClaimResult::Claimed(LeadClaim {
            id,
            lead_id: req.lead_id,
            version,
            expires_ms: ins.expires_ms,
        }),
        ClaimChecked::Taken => ClaimResult::Taken,
        ClaimChecked::RecentlyCalled(at) => ClaimResult::RecentlyCalled { at },
        ClaimChecked::Answered => ClaimResult::Answered,
    })
}

/// The store's claim row of a request: the lease ends `lease_ms` after
/// `now_ms`.
fn insert_of<'a>(req: &ClaimRequest<'a>) -> ClaimInsert<'a> {
    ClaimInsert {
        lead_id: req.lead_id,
        session_id: req.session_id,
        agent: req.agent,
        instance: req.instance,
        now_ms: req.now_ms,
        expires_ms: req.now_ms.saturating_add(req.lease_ms),
        block_ms: req.block_ms,
        reentered: req.reentered,
    }
}

/// The claim as one statement, the common case on the dial path (SPEC §6
/// call setup; [`Store::claim_at_once`]): inserts the claim when no claim
/// is live on the lead and, unless it re-entered the view, it was neither
/// called by another session within `block` (R4) nor answered in this
/// session (R5) — the checks of [`claim`]'s transaction, as conditions of
/// the insert. One round trip, committed on its own: SQLite's one write
/// lock is held for one statement instead of four round trips. `None` when
/// nothing was inserted; [`claim`]'s transaction then says why (and
/// releases a lease that ran out).
async fn claim_at_once(
    store: &Store,
    req: &ClaimRequest<'_>,
) -> Result<Option<LeadClaim>, ClaimError> {
    let ins = insert_of(req);
    let row = store.claim_at_once(&ins).await?;
    Ok(row.map(|(id, version)| LeadClaim {
        id,
        lead_id: req.lead_id,
        version,
        expires_ms: ins.expires_ms,
    }))
}

/// Extends a live claim's lease to `now_ms + lease_ms` (R13: renewed while
/// the call lasts). Fails with [`ClaimError::Lost`] if the claim was taken
/// over or released meanwhile.
pub async fn renew(
    store: &Store,
    claim: &LeadClaim,
    now_ms: i64,
    lease_ms: i64,
) -> Result<LeadClaim, ClaimError> {
    let expires = now_ms.saturating_add(lease_ms);
    let row = store.renew_claim(claim.id, claim.version, expires).await?;
    match row {
        Some(version) => Ok(LeadClaim {
            version,
            expires_ms: expires,
            ..*claim
        }),
        None => Err(ClaimError::Lost {
            id: claim.id,
            version: claim.version,
        }),
    }
}

/// Records the call placed under a claim (for the record and debugging).
pub async fn attach_call(store: &Store, claim: &LeadClaim, call_id: i64) -> Result<(), ClaimError> {
    store.attach_claim_call(claim.id, call_id).await?;
    Ok(())
}

/// Ends a claim (the call ended, or the agent paused before dialing).
/// Fails with [`ClaimError::Lost`] if the claim was no longer ours: the
/// lease had expired and someone else may have taken the lead.
pub async fn release(store: &Store, claim: &LeadClaim, now_ms: i64) -> Result<(), ClaimError> {
    let released = store.release_claim(claim.id, claim.version, now_ms).await?;
    if released {
        Ok(())
    } else {
        Err(ClaimError::Lost {
            id: claim.id,
            version: claim.version,
        })
    }
}

/// A call's end as a session stores it ([`end_call`]): the lead's record
/// in the session and the release of its claim.
#[derive(Debug, Clone, Copy)]
pub struct CallEndWrite {
    /// The session.
    pub session_id: i64,
    /// The lead's history after the call (R3–R5), if the queue has it.
    pub history: Option<(LeadId, LeadHistory)>,
    /// The call's R13 claim.
    pub claim: Option<LeadClaim>,
    /// When the call ended, epoch ms.
    pub now_ms: i64,
}

/// Calls' ends taken in one transaction at most.
const END_BATCH: usize = 256;

/// A claim asked of the session's writer ([`SessionWriter::claim`]).
#[derive(Debug)]
struct ClaimJob {
    lead_id: i64,
    session_id: i64,
    agent: String,
    instance: String,
    now_ms: i64,
    expires_ms: i64,
    block_ms: i64,
    reentered: bool,
    /// `Some`: claimed; `None`: not claimed at once ([`claim_checked`]
    /// says why).
    done: tokio::sync::oneshot::Sender<Option<LeadClaim>>,
}

/// What the session's writer takes.
#[derive(Debug)]
enum Job {
    End(CallEndWrite),
    Claim(ClaimJob),
    /// A lead to read before its claim (R2: its number; its calling hours).
    Lead(i64, tokio::sync::oneshot::Sender<Option<Lead>>),
}

/// A session's writes off its task (DESIGN.md "Writes leave the signalling
/// path in batches"): its agents' claims (R13) with the reads of the leads
/// before them, and its calls' ends. One writer task per session takes
/// what is queued and runs it in one round on one writer connection: the
/// leads asked read by one statement, the ends in one transaction (group
/// commit, no linger), in the order they were handed over, so two calls'
/// records of one lead never overtake each other; then every claim queued
/// meanwhile by one multi-row statement ([`Store::session_round`]), which holds
/// [`claim`]'s conditions for each row. On SQLite each statement is a
/// hand-off to the connection's thread and back, and each return of a
/// pooled connection one more: many agents' claims in one statement and
/// one connection per round cut both (SPEC §6 call setup). Ends go before
/// claims in a round: a claim sees every release and answer handed over
/// before it. Nothing is dropped (the channel is unbounded, and each item
/// is small: one per read, claim or call end). The claims leave the
/// round together, before the trunk's pacing (`max_cps`) spaces the
/// dials; the do-not-call read and the call record, after it, stay one
/// statement per call so a round does not send its INVITEs in a burst.
/// When the handle is dropped the writer stores what is queued, then stops.
#[derive(Debug, Clone)]
pub struct SessionWriter {
    tx: tokio::sync::mpsc::UnboundedSender<Job>,
    store: Store,
}

impl SessionWriter {
    /// Starts the writer task on `store` (within a tokio runtime).
    pub fn start(store: Store) -> SessionWriter {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let writer_store = store.clone();
        tokio::spawn(async move {
            let store = writer_store;
            let mut ends = Vec::new();
            let mut claims = Vec::new();
            let mut reads = Vec::new();
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                while let Some(job) = next.take() {
                    match job {
                        Job::End(w) => ends.push(w),
                        Job::Claim(c) => claims.push(c),
                        Job::Lead(id, done) => reads.push((id, done)),
                    }
                    if ends.len() < END_BATCH
                        && claims.len() < CLAIM_ROWS
                        && reads.len() < crate::store::methods::IN_CHUNK
                    {
                        next = rx.try_recv().ok();
                    }
                }
                store_round(
                    &store,
                    std::mem::take(&mut reads),
                    &ends,
                    std::mem::take(&mut claims),
                )
                .await;
                ends.clear();
            }
        });
        SessionWriter { tx, store }
    }

    /// Queues `w` for the writer's next commit.
    pub fn send(&self, w: CallEndWrite) {
        if let Err(e) = self.tx.send(Job::End(w)) {
            // The writer task is gone (only as the runtime stops): store
            // this end on a task of its own rather than lose it.
            let store = self.store.clone();
            if let Job::End(w) = e.0 {
                tokio::spawn(async move { store_ends(&store, &[w]).await });
            }
        }
    }

    /// Lead `id` (`Store::get_lead`), read in the writer's next round with
    /// the other leads asked by then, in one statement on the writer's
    /// connection; `None` when it is gone or could not be read.
    pub async fn lead(&self, id: i64) -> Option<Lead> {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.tx.send(Job::Lead(id, done)).is_err() {
            return self.store.get_lead(id).await.ok();
        }
        match wait.await {
            Ok(lead) => lead,
            Err(_) => self.store.get_lead(id).await.ok(),
        }
    }

    /// [`claim`] through the writer: the claim goes into the writer's next
    /// round with every other agent's claim queued by then, in one
    /// statement; a lead not claimed at once is asked again by
    /// [`claim`]'s transaction, which says why (or releases a lease that
    /// ran out and claims it).
    pub async fn claim(&self, req: &ClaimRequest<'_>) -> Result<ClaimResult, ClaimError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        let job = ClaimJob {
            lead_id: req.lead_id,
            session_id: req.session_id,
            agent: req.agent.to_string(),
            instance: req.instance.to_string(),
            now_ms: req.now_ms,
            expires_ms: req.now_ms.saturating_add(req.lease_ms),
            block_ms: req.block_ms,
            reentered: req.reentered,
            done,
        };
        if self.tx.send(Job::Claim(job)).is_err() {
            return claim(&self.store, req).await;
        }
        match wait.await {
            Ok(Some(c)) => Ok(ClaimResult::Claimed(c)),
            _ => claim_checked(&self.store, req).await,
        }
    }
}

/// One round of the session's writer: the ends, then the claims, on one
/// writer connection. A refused batch of ends is tried again on its own,
/// then end by end ([`store_ends`]); a refused claim statement (or a lead
/// asked twice in the round) sends the claims to [`claim_checked`], so one
/// bad row loses nothing else.
#[allow(clippy::type_complexity)]
async fn store_round(
    store: &Store,
    reads: Vec<(i64, tokio::sync::oneshot::Sender<Option<Lead>>)>,
    ends: &[CallEndWrite],
    claims: Vec<ClaimJob>,
) {
    let (histories, releases) = end_rows(ends);
    let ids: Vec<i64> = reads.iter().map(|(id, _)| *id).collect();
    // One row per lead: a second claim of a lead in the round is asked on
    // its own (the unique index would refuse it anyway).
    let mut batched: Vec<ClaimJob> = Vec::with_capacity(claims.len());
    let mut again: Vec<ClaimJob> = Vec::new();
    for c in claims {
        if batched.iter().any(|b| b.lead_id == c.lead_id) {
            again.push(c);
        } else {
            batched.push(c);
        }
    }
    let r = write_round(store, &ids, &histories, &releases, &batched).await;
    let (leads, ended, claimed) = match r {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "no writer connection for the round");
            (Ok(Vec::new()), Err(e), Ok(Vec::new()))
        }
    };
    match leads {
        Ok(mut leads) if !ids.is_empty() => {
            for (id, done) in reads {
                let at = leads.iter().position(|l| l.id == id);
                let _ = done.send(at.map(|i| leads.swap_remove(i)));
            }
        }
        // The read failed (or the round had no connection): each lead on
        // its own.
        _ => {
            for (id, done) in reads {
                let _ = done.send(store.get_lead(id).await.ok());
            }
        }
    }
    match ended {
        Ok(lost) => warn_lost(&lost),
        // Refused in the round, or the round had no connection: the ends
        // as a batch of their own, then end by end (`store_ends`).
        Err(e) if !ends.is_empty() => {
            tracing::debug!(error = %e, n = ends.len(), "the round's call ends: again on their own");
            store_ends(store, ends).await;
        }
        Err(_) => {}
    }
    let rows = match claimed {
        Ok(rows) => rows,
        Err(e) => {
            tracing::debug!(error = %e, n = batched.len(), "claims refused together: one by one");
            Vec::new()
        }
    };
    for c in batched {
        let got = rows
            .iter()
            .find(|(lead, agent, _, _)| *lead == c.lead_id && *agent == c.agent)
            .map(|&(_, _, id, version)| LeadClaim {
                id,
                lead_id: c.lead_id,
                version,
                expires_ms: c.expires_ms,
            });
        let _ = c.done.send(got);
    }
    for c in again {
        let _ = c.done.send(None);
    }
}

fn warn_lost(lost: &[LeadClaim]) {
    for c in lost {
        tracing::warn!(
            claim = c.id,
            lead = c.lead_id,
            "claim lost before the call's end was stored"
        );
    }
}

/// The round's leads read in one statement, its ends in one write
/// transaction (the two statements of [`end_calls`]), then its claims in
/// one statement, on one writer connection taken once
/// ([`Store::session_round`]). The leads, the ends' result (the claims
/// found lost) and the claims' rows `(lead, agent, claim id, version)`
/// come back apart: each fails on its own. `Err` only when no connection
/// could be had.
#[allow(clippy::type_complexity)]
async fn write_round(
    store: &Store,
    reads: &[i64],
    histories: &[(i64, LeadId, LeadHistory)],
    releases: &[(LeadClaim, i64)],
    claims: &[ClaimJob],
) -> Result<
    (
        Result<Vec<Lead>, StoreError>,
        Result<Vec<LeadClaim>, ClaimError>,
        Result<Vec<(i64, String, i64, i64)>, ClaimError>,
    ),
    ClaimError,
> {
    let rows = history_rows(histories);
    let released = release_rows(releases);
    let inserts: Vec<ClaimInsert<'_>> = claims
        .iter()
        .map(|c| ClaimInsert {
            lead_id: c.lead_id,
            session_id: c.session_id,
            agent: &c.agent,
            instance: &c.instance,
            now_ms: c.now_ms,
            expires_ms: c.expires_ms,
            block_ms: c.block_ms,
            reentered: c.reentered,
        })
        .collect();
    let (leads, ended, claimed) = store
        .session_round(reads, &rows, &released, &inserts)
        .await?;
    Ok((
        leads,
        ended
            .map(|ids| lost_of(releases, &ids))
            .map_err(ClaimError::from),
        claimed.map_err(ClaimError::from),
    ))
}

/// The store's rows of the leads' histories.
fn history_rows(histories: &[(i64, LeadId, LeadHistory)]) -> Vec<SessionLeadRow> {
    histories
        .iter()
        .map(|(session, lead, h)| SessionLeadRow {
            session_id: *session,
            lead_id: lead.0,
            generation: i64::from(h.generation),
            calls: i64::from(h.calls),
            answered: h.answered,
            blocked_until: h.blocked_until,
        })
        .collect()
}

/// The store's rows of the claims' releases.
fn release_rows(releases: &[(LeadClaim, i64)]) -> Vec<ClaimRelease> {
    releases
        .iter()
        .map(|(c, now_ms)| (c.id, c.version, *now_ms))
        .collect()
}

/// Stores a batch in one transaction; a batch the database refuses is
/// retried end by end, so one bad row loses nothing else.
async fn store_ends(store: &Store, batch: &[CallEndWrite]) {
    match end_calls(store, batch).await {
        Ok(lost) => warn_lost(&lost),
        Err(e) if batch.len() > 1 => {
            tracing::warn!(error = %e, n = batch.len(), "call ends not stored together: one by one");
            for w in batch {
                if let Err(e) = end_calls(store, std::slice::from_ref(w)).await {
                    tracing::warn!(error = %e, lead = ?w.history.map(|h| h.0 .0), "history or claim release not saved");
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "history or claim release not saved");
        }
    }
}

/// The rows of a batch of ends: each lead's latest history in its session
/// (the ends come in the order the session handed them over) and each
/// claim's release `(claim, now_ms)`.
#[allow(clippy::type_complexity)]
fn end_rows(batch: &[CallEndWrite]) -> (Vec<(i64, LeadId, LeadHistory)>, Vec<(LeadClaim, i64)>) {
    let mut histories: Vec<(i64, LeadId, LeadHistory)> = Vec::new();
    for w in batch {
        if let Some((lead, h)) = w.history {
            match histories
                .iter_mut()
                .find(|(s, l, _)| *s == w.session_id && *l == lead)
            {
                Some(slot) => slot.2 = h,
                None => histories.push((w.session_id, lead, h)),
            }
        }
    }
    let claims: Vec<(LeadClaim, i64)> = batch
        .iter()
        .filter_map(|w| w.claim.map(|c| (c, w.now_ms)))
        .collect();
    (histories, claims)
}

/// The claims of `releases` whose release did not happen (`released`: the
/// ids released).
fn lost_of(releases: &[(LeadClaim, i64)], released: &[i64]) -> Vec<LeadClaim> {
    releases
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| !released.contains(&c.id))
        .collect()
}

/// Several calls' ends in one write transaction ([`end_call`] for each);
/// returns the claims that turned out lost. The batch is two statements
/// whatever its size (every lead's history in one multi-row upsert, every
/// claim's release in one multi-row update), so a batch holds SQLite's one
/// write lock for four round trips (SPEC §6 call setup). A lead that ended
/// twice in one batch keeps its later history: the ends come in the order
/// the session handed them over.
pub async fn end_calls(
    store: &Store,
    batch: &[CallEndWrite],
) -> Result<Vec<LeadClaim>, ClaimError> {
    let (histories, claims) = end_rows(batch);
    if histories.is_empty() && claims.is_empty() {
        return Ok(Vec::new());
    }
    let released = store
        .save_ends(&history_rows(&histories), &release_rows(&claims))
        .await?;
    Ok(lost_of(&claims, &released))
}

/// A call's end in the session, in one write transaction instead of two
/// on the session's task: the lead's record in the session (`history`:
/// R3–R5 across restarts) and the release of its R13 claim. The history
/// is saved even when the claim turns out lost ([`ClaimError::Lost`]).
pub async fn end_call(
    store: &Store,
    history: Option<(i64, LeadId, &LeadHistory)>,
    claim: Option<&LeadClaim>,
    now_ms: i64,
) -> Result<(), ClaimError> {
    let w = CallEndWrite {
        session_id: history.map_or(0, |h| h.0),
        history: history.map(|(_, lead, h)| (lead, *h)),
        claim: claim.copied(),
        now_ms,
    };
    match end_calls(store, &[w]).await?.first() {
        Some(c) => Err(ClaimError::Lost {
            id: c.id,
            version: c.version,
        }),
        None => Ok(()),
    }
}

/// Releases every live claim of `instance` (a clean shutdown or a restart of
/// the same instance id); how many.
pub async fn release_instance(
    store: &Store,
    instance: &str,
    now_ms: i64,
) -> Result<u64, ClaimError> {
    let n = store.release_instance_claims(instance, now_ms).await?;
    Ok(n)
}

/// Lead ids with a live, unexpired claim in `session_id` (for a restart:
/// these leads are in a call somewhere and must not be dialed).
pub async fn live_claims(
    store: &Store,
    session_id: i64,
    now_ms: i64,
) -> Result<Vec<i64>, ClaimError> {
    let ids = store.live_claim_leads(session_id, now_ms).await?;
    Ok(ids)
}
