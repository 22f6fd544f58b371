//! An agent's media events on their way from a relay loop to the call
//! layer: a queue that holds room only while events wait in it.
//!
//! Why not tokio's unbounded channel: it allocates its first block of 32
//! slots with the channel, about 1.6 KB with [`MediaEvent`]s of 48 bytes,
//! held by every joined agent for its whole session, though an agent's
//! media reports a handful of events per call (first packets, a latch, a
//! key press) and they are read at once (SPEC §6: under 20 KB per active
//! call). Here an idle agent's queue is one small shared allocation, and a
//! waiting event's room is given back when the queue is drained.
//!
//! Events are rare, so a mutex around a `VecDeque` serves; the reader
//! waits on a [`Notify`], whose stored permit covers an event sent between
//! the reader finding the queue empty and its wait starting.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::MediaEvent;

struct Shared {
    queue: Mutex<VecDeque<MediaEvent>>,
    notify: Notify,
    /// Live [`EventSender`]s: at 0, and once the queue is drained, the
    /// reader sees the end.
    senders: AtomicUsize,
    /// The [`MediaEvents`] was dropped: events are dropped as they come.
    reader_gone: AtomicBool,
}

impl Shared {
    fn queue(&self) -> MutexGuard<'_, VecDeque<MediaEvent>> {
        // A panic while holding the lock leaves a queue that is still
        // whole (push and pop do not panic half-way).
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side (a relay loop, a voicemail drop's task); dropping the
/// last one ends the events.
pub(crate) struct EventSender {
    shared: Arc<Shared>,
}

/// One agent's media events, in the order they happened; ends (`None`)
/// once the agent's media is closed and every event was read.
pub struct MediaEvents {
    shared: Arc<Shared>,
}

/// A new queue: its sender and its reader.
pub(crate) fn queue() -> (EventSender, MediaEvents) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        notify: Notify::new(),
        senders: AtomicUsize::new(1),
        reader_gone: AtomicBool::new(false),
    });
    (
        EventSender {
            shared: shared.clone(),
        },
        MediaEvents { shared },
    )
}

impl EventSender {
    /// Queues `event` and wakes the reader; with the reader gone the event
    /// is dropped (nobody wants it; the media lives on until its
    /// `AgentMedia` is dropped).
    pub(crate) fn send(&self, event: MediaEvent) {
        if self.shared.reader_gone.load(Ordering::Acquire) {
            return;
        }
        self.shared.queue().push_back(event);
        self.shared.notify.notify_one();
    }
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::Relaxed);
        EventSender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for EventSender {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.notify.notify_one();
        }
    }
}

impl MediaEvents {
    /// The oldest waiting event, if any, without waiting; the queue's room
    /// is freed when its last event leaves.
    pub fn try_recv(&mut self) -> Option<MediaEvent> {
        let mut q = self.shared.queue();
        let event = q.pop_front();
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
        }
        event
    }

    /// The next event, waiting for one; `None` once every sender is gone
    /// and the queue is drained. Cancel-safe: an event is taken from the
    /// queue only in the poll that returns it.
    pub async fn recv(&mut self) -> Option<MediaEvent> {
        loop {
            if let Some(event) = self.try_recv() {
                return Some(event);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                // A last event may have been queued before the count fell.
                return self.try_recv();
            }
            self.shared.notify.notified().await;
        }
    }

    /// Room held by the queue, in events (tests of the memory bound).
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.shared.queue().capacity()
    }
}

impl Drop for MediaEvents {
    fn drop(&mut self) {
        self.shared.reader_gone.store(true, Ordering::Release);
        self.shared.queue().clear();
    }
}

impl std::fmt::Debug for MediaEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaEvents")
            .field("queued", &self.shared.queue().len())
            .field("senders", &self.shared.senders.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::relay::LegId;
    use std::time::Duration;

    fn timeout(leg: u64) -> MediaEvent {
        MediaEvent::RtpTimeout { leg: LegId(leg) }
    }

    #[tokio::test]
    async fn delivers_in_order_then_ends_with_the_last_sender() {
        let (tx, mut rx) = queue();
        let tx2 = tx.clone();
        tx.send(timeout(1));
        tx2.send(timeout(2));
        assert_eq!(rx.recv().await, Some(timeout(1)));
        drop(tx);
        tx2.send(timeout(3));
        assert_eq!(rx.recv().await, Some(timeout(2)));
        assert_eq!(rx.recv().await, Some(timeout(3)));
        assert_eq!(rx.capacity(), 0, "drained: no room held");
        drop(tx2);
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_for_an_event_from_another_thread() {
        let (tx, mut rx) = queue();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            tx.send(timeout(7));
            std::thread::sleep(Duration::from_millis(20));
            // tx dropped here: the end.
        });
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(got, Ok(Some(timeout(7))));
        let end = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
        assert_eq!(end, Ok(None));
        sender.join().unwrap();
    }

    #[tokio::test]
    async fn a_cancelled_wait_loses_nothing() {
        let (tx, mut rx) = queue();
        // A wait abandoned before anything came (a `select!` branch lost).
        let waited = tokio::time::timeout(Duration::from_millis(10), rx.recv()).await;
        assert!(waited.is_err());
        tx.send(timeout(1));
        tx.send(timeout(2));
        assert_eq!(rx.recv().await, Some(timeout(1)));
        assert_eq!(rx.recv().await, Some(timeout(2)));
    }

    #[test]
    fn events_after_the_reader_left_are_dropped() {
        let (tx, rx) = queue();
        tx.send(timeout(1));
        drop(rx);
        tx.send(timeout(2));
        assert!(tx.shared.queue().is_empty());
    }
}
