//! The call-record writer: a dialer call's answer time and outcome leave
//! the agent tasks for one writer task that commits whatever is queued in
//! one transaction (DESIGN.md "Writes leave the signalling path in
//! batches"). At a few hundred calls per second each call's two updates
//! were two commits of their own (a WAL append each on SQLite, a round
//! trip and a flush each on PostgreSQL); batched, many calls share one.
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
use crate::leads::model::CallEnd;

/// Updates the channel holds before senders wait.
const CHANNEL: usize = 4_096;

/// Most records updated in one transaction.
const MAX_BATCH: usize = 512;

/// Attempts for one record after its batch failed.
const ATTEMPTS: u32 = 4;
const RETRY_MIN: Duration = Duration::from_millis(50);

type Done = oneshot::Sender<Result<(), StoreError>>;

#[derive(Debug)]
struct Item {
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
        let item = Item {
            id,
            end,
            done: Some(done),
        };
        match self.tx.send(item).await {
            Ok(()) => wait.await.unwrap_or_else(|_| {
                // The writer answers every item it takes; it only goes away
                // with the runtime.
                Err(StoreError::Database(sqlx::Error::PoolClosed))
            }),
            Err(mpsc::error::SendError(item)) => {
                self.store.finish_call(item.id, &item.end).await.map(|_| ())
            }
        }
    }

    /// Hands `end` for record `id` to the writer without waiting for the
    /// commit (the answer time, shown at once by `GET /api/v1/calls/{id}`
    /// within a commit). When the channel is full a task waits for room
    /// (backpressure moves off the caller's task; nothing is dropped).
    pub fn finish_soon(&self, id: i64, end: CallEnd) {
        let item = Item {
            id,
            end,
            done: None,
        };
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                let w = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = w.finish(item.id, item.end).await {
                        tracing::warn!(error = %e, call_id = item.id, "call update not stored");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(item)) => {
                let store = self.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.finish_call(item.id, &item.end).await {
                        tracing::warn!(error = %e, call_id = item.id, "call update not stored");
                    }
                });
            }
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

/// A batch: one merged update per record, in the order records first came.
#[derive(Default)]
struct Batch {
    ends: Vec<(i64, CallEnd)>,
    done: Vec<Vec<Done>>,
    at: HashMap<i64, usize>,
}

impl Batch {
    fn push(&mut self, item: Item) {
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
}

async fn run(store: Store, mut rx: mpsc::Receiver<Item>) {
    while let Some(first) = rx.recv().await {
        let mut batch = Batch::default();
        batch.push(first);
        while batch.ends.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        match store.finish_calls(&batch.ends).await {
            Ok(()) => {
                for d in batch.done.into_iter().flatten() {
                    let _ = d.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, records = batch.ends.len(), "call batch refused: storing record by record");
                for ((id, end), done) in batch.ends.into_iter().zip(batch.done) {
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
