//! The call-record writer: a dialer call's answer time and outcome leave
//! the agent tasks for one writer task that commits whatever is queued in
//! one transaction (DESIGN.md "Writes leave the signalling path in
//! batches"). At a few hundred calls per second each call's two updates
//! were two commits of their own (a WAL append each on SQLite, a round
//! trip and a flush each on PostgreSQL); batched, many calls share one.
//!
//! A dialer call's record itself (placed under its R13 claim) goes the
//! same way ([`CallWriter::insert_claimed`]): the INVITE waits for its
//! record id, and the calls of many agents that arrive while a round runs
//! are stored by one multi-row insert in the next round. Each round takes
//! the writer connection once for its (at most two) statements: on SQLite
//! each statement is a hand-off to the connection's thread and back, and
//! each return of a pooled connection one more (SPEC §6 call setup).
//!
//! There is no linger: the writer commits as soon as it has something, and
//! what arrives while a commit runs goes into the next one (group commit),
//! so a lone call waits no longer than before. Updates of one record that
//! meet in a batch are merged (a later value wins, as `COALESCE` in
//! [`Store::finish_call`] would have it). Nothing is dropped: the channel
//! is bounded and senders wait while the writer is behind (backpressure);
//! a batch the database refuses is retried record by record, and
//! [`CallWriter::finish`] returns only once its update is committed — the
//! engine publishes a call's end after that, so a graceful stop (which
//! waits for those publications) leaves every outcome stored.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::{Store, StoreError};
use crate::leads::dnc::DncPattern;
use crate::leads::model::{CallEnd, CallRecord, NewCall};

/// Updates the channel holds before senders wait.
const CHANNEL: usize = 4_096;

/// Attempts for one record after its batch failed.
const ATTEMPTS: u32 = 4;
const RETRY_MIN: Duration = Duration::from_millis(50);

type Done = oneshot::Sender<Result<(), StoreError>>;
type Inserted = oneshot::Sender<Result<CallRecord, StoreError>>;
type Matched = oneshot::Sender<Result<Option<DncPattern>, StoreError>>;

/// Numbers one round reads the do-not-call list for at most (each with
/// up to 15 candidate prefixes in one `IN` list).
const DNC_NUMBERS: usize = 256;

/// What the writer takes: a record's end, a dialer call to insert, or a
/// number about to be dialed to look up in the do-not-call list.
#[derive(Debug)]
enum Item {
    End(EndItem),
    Dnc {
        number: String,
        done: Matched,
    },
    Insert {
        call: NewCall,
        claim: i64,
        done: Inserted,
    },
}

#[derive(Debug)]
struct EndItem {
    id: i64,
    end: CallEnd,
    done: Option<Done>,
}

/// The agent tasks' end of the writer (cheap to clone).
#[derive(Debug, Clone)]
pub struct CallWriter {
    tx: mpsc::Sender<Item>,
    store: Store,
}

impl CallWriter {
    /// Starts the writer task on `store` (within a tokio runtime). It ends
    /// once every handle is dropped and what was sent is committed.
    pub fn start(store: Store) -> CallWriter {
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(run(store.clone(), rx));
        CallWriter { tx, store }
    }

    /// Stores `end` on record `id` ([`Store::finish_call`]'s `COALESCE`
    /// update) in the writer's next commit; returns once it is committed.
    pub async fn finish(&self, id: i64, end: CallEnd) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        let item = Item::End(EndItem {
            id,
            end,
            done: Some(done),
        });
        match self.tx.send(item).await {
            Ok(()) => wait.await.unwrap_or_else(|_| {
                // The writer answers every item it takes; it only goes away
                // with the runtime.
                Err(StoreError::Database(sqlx::Error::PoolClosed))
            }),
            Err(mpsc::error::SendError(item)) => match item {
                Item::End(e) => self.store.finish_call(e.id, &e.end).await.map(|_| ()),
                _ => Err(StoreError::Database(sqlx::Error::PoolClosed)),
            },
        }
    }

    /// Stores a dialer call placed under the R13 claim `claim`
    /// ([`Store::insert_claimed_call`]) in the writer's next round, with
    /// the other calls queued by then in one statement; returns the record
    /// once committed. Waits while the writer is behind (backpressure).
    pub async fn insert_claimed(
        &self,
        call: NewCall,
        claim: i64,
    ) -> Result<CallRecord, StoreError> {
        let (done, wait) = oneshot::channel();
        match self.tx.send(Item::Insert { call, claim, done }).await {
            Ok(()) => wait
                .await
                .unwrap_or_else(|_| Err(StoreError::Database(sqlx::Error::PoolClosed))),
            Err(mpsc::error::SendError(item)) => match item {
                Item::Insert { call, claim, .. } => {
                    self.store.insert_claimed_call(&call, claim).await
                }
                _ => Err(StoreError::Database(sqlx::Error::PoolClosed)),
            },
        }
    }

    /// [`Store::dnc_match`] in the writer's next round, with the other
    /// numbers about to be dialed by then in one read (SPEC §4: the list
    /// is read at every dial, so an entry added on any instance holds on
    /// all of them).
    pub async fn dnc_match(&self, e164: &str) -> Result<Option<DncPattern>, StoreError> {
        let (done, wait) = oneshot::channel();
        let item = Item::Dnc {
            number: e164.to_string(),
            done,
        };
        match self.tx.send(item).await {
            Ok(()) => wait
                .await
                .unwrap_or_else(|_| Err(StoreError::Database(sqlx::Error::PoolClosed))),
            Err(_) => self.store.dnc_match(e164).await,
        }
    }

    /// Hands `end` for record `id` to the writer without waiting for the
    /// commit (the answer time, shown at once by `GET /api/v1/calls/{id}`
    /// within a commit). When the channel is full a task waits for room
    /// (backpressure moves off the caller's task; nothing is dropped).
    pub fn finish_soon(&self, id: i64, end: CallEnd) {
        let item = Item::End(EndItem {
            id,
            end,
            done: None,
        });
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(Item::End(item))) => {
                let w = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = w.finish(item.id, item.end).await {
                        tracing::warn!(error = %e, call_id = item.id, "call update not stored");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(Item::End(item))) => {
                let store = self.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.finish_call(item.id, &item.end).await {
                        tracing::warn!(error = %e, call_id = item.id, "call update not stored");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Full(_) | mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}

/// `later`'s values over `into`'s: two `COALESCE` updates in a row.
fn merge(into: &mut CallEnd, later: CallEnd) {
    macro_rules! over {
        ($($f:ident),*) => {$(
            if later.$f.is_some() {
                into.$f = later.$f;
            }
        )*};
    }
    over!(
        answered_ms,
        ended_ms,
        outcome,
        sip_status,
        ring_ms,
        trunk,
        caller_id,
        amd,
        amd_ms,
        recording
    );
}

/// A round: one merged update per record, in the order records first
/// came, and the dialer calls to insert.
#[derive(Default)]
struct Batch {
    ends: Vec<(i64, CallEnd)>,
    done: Vec<Vec<Done>>,
    at: HashMap<i64, usize>,
    inserts: Vec<(NewCall, i64)>,
    inserted: Vec<Inserted>,
    numbers: Vec<String>,
    matched: Vec<Matched>,
}

impl Batch {
    fn push(&mut self, item: Item) {
        let item = match item {
            Item::End(e) => e,
            Item::Insert { call, claim, done } => {
                self.inserts.push((call, claim));
                self.inserted.push(done);
                return;
            }
            Item::Dnc { number, done } => {
                self.numbers.push(number);
                self.matched.push(done);
                return;
            }
        };
        let i = match self.at.get(&item.id) {
            Some(&i) => {
                merge(&mut self.ends[i].1, item.end);
                i
            }
            None => {
                let i = self.ends.len();
                self.at.insert(item.id, i);
                self.ends.push((item.id, item.end));
                self.done.push(Vec::new());
                i
            }
        };
        if let Some(d) = item.done {
            self.done[i].push(d);
        }
    }

    /// Whether the round is as large as one statement of each kind takes.
    fn full(&self) -> bool {
        self.ends.len() >= super::methods::FINISH_CALLS_ROWS
            || self.inserts.len() >= super::methods::INSERT_CALLS_ROWS
            || self.numbers.len() >= DNC_NUMBERS
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Item>) {
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::default();
        batch.push(first);
        while !batch.full() {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let Batch {
            ends,
            done,
            inserts,
            inserted,
            numbers,
            matched,
            ..
        } = batch;
        let (dnc, ins, ended) = match store.write_calls(&numbers, &inserts, &ends).await {
            Ok(w) => (w.dnc, w.inserted, w.ended),
            Err(e) => {
                tracing::debug!(error = %e, "no writer connection for the round: one by one");
                let again = || StoreError::Database(sqlx::Error::Protocol(e.to_string()));
                (Err(again()), Err(again()), Err(e))
            }
        };
        match dnc {
            Ok(found) => {
                for (p, d) in found.into_iter().zip(matched) {
                    let _ = d.send(Ok(p));
                }
            }
            Err(_) => {
                for (n, d) in numbers.iter().zip(matched) {
                    let _ = d.send(store.dnc_match(n).await);
                }
            }
        }
        match ins {
            Ok(records) => {
                for (r, d) in records.into_iter().zip(inserted) {
                    let _ = d.send(r.ok_or(StoreError::Corrupt("calls")));
                }
            }
            Err(e) => {
                if !inserts.is_empty() {
                    tracing::debug!(error = %e, calls = inserts.len(), "call inserts refused together: one by one");
                }
                // The statement is atomic: nothing of it was stored, so each
                // call is stored on its own and only a bad one fails.
                for ((call, claim), d) in inserts.into_iter().zip(inserted) {
                    let _ = d.send(store.insert_claimed_call(&call, claim).await);
                }
            }
        }
        match ended {
            Ok(()) => {
                for d in done.into_iter().flatten() {
                    let _ = d.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, records = ends.len(), "call batch refused: storing record by record");
                for ((id, end), done) in ends.into_iter().zip(done) {
                    let r = one(&store, id, &end).await;
                    if let Err(e) = &r {
                        if done.is_empty() {
                            tracing::warn!(error = %e, call_id = id, "call update not stored");
                        }
                    }
                    for d in done {
                        let _ = d.send(r.as_ref().map(|_| ()).map_err(clone_error));
                    }
                }
            }
        }
    }
}

/// One record's update, retried a few times when the database fails (a
/// missing record is final).
async fn one(store: &Store, id: i64, end: &CallEnd) -> Result<(), StoreError> {
    let mut delay = RETRY_MIN;
    let mut attempt = 1;
    loop {
        match store.finish_call(id, end).await {
            Ok(_) => return Ok(()),
            Err(e @ StoreError::NotFound { .. }) => return Err(e),
            Err(e) if attempt >= ATTEMPTS => return Err(e),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

/// The error for each waiter of a record (errors are not `Clone`).
fn clone_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::NotFound { entity, id } => StoreError::NotFound {
            entity: *entity,
            id: id.clone(),
        },
        other => StoreError::Database(sqlx::Error::Protocol(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leads::model::CallOutcome;

    #[test]
    fn later_values_win_and_missing_ones_keep_the_earlier() {
        let mut a = CallEnd {
            answered_ms: Some(10),
            trunk: Some("t1".into()),
            ..CallEnd::default()
        };
        merge(
            &mut a,
            CallEnd {
                ended_ms: Some(20),
                outcome: Some(CallOutcome::Answered),
                trunk: Some("t2".into()),
                ..CallEnd::default()
            },
        );
        assert_eq!(a.answered_ms, Some(10));
        assert_eq!(a.ended_ms, Some(20));
        assert_eq!(a.outcome, Some(CallOutcome::Answered));
        assert_eq!(a.trunk.as_deref(), Some("t2"));
    }
}
