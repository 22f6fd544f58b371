//! A batch of datagrams parsed on two cores and handled in arrival order
//! (SPEC §6: REGISTER with digest at Kamailio's rate; DESIGN.md "Order and
//! sharding").
//!
//! The SIP task is one task: every message passes through it in the order
//! the socket delivered it, which is what keeps each dialog's and each
//! transaction's messages in order. Under load that task is the bound (one
//! core), and its largest step, [`message::inspect`] (about two fifths of
//! a REGISTER cycle's instructions), reads none of the core's state. So a
//! batch read at once ([`Datagrams`]) is shared with a helper thread: the
//! helper parses from the batch's end backwards while the SIP task parses
//! from its start and handles every message in arrival order, taking the
//! helper's verdicts as it reaches them. Each message is parsed exactly
//! once, by whichever side claims it first, so the SIP task never waits
//! longer than the one parse the helper is in the middle of; when the
//! helper is late or absent, the SIP task simply parses everything itself.
//!
//! Below [`SHARE_FROM`] datagrams the helper is not involved (no hand-off,
//! no wake-up: light load costs what it did), and on a single CPU there is
//! no helper at all.

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use super::message::{self, Inspected};
use super::{Peer, TransportKind};

/// Batches of at least this many datagrams are shared with the helper:
/// smaller ones are parsed by the SIP task alone, where a hand-off (one
/// futex wake of the helper) would cost more than it saves.
pub const SHARE_FROM: usize = 8;

/// Free for either side to claim.
const FREE: u8 = 0;
/// Claimed by one side, which parses it now.
const CLAIMED: u8 = 1;
/// Parsed by the helper; the verdict waits in the slot.
const DONE: u8 = 2;
/// Not for the helper (its source is banned, and the SIP task will most
/// likely drop it unparsed); the SIP task parses it if it admits it.
const LOCAL: u8 = 3;

/// One datagram of a batch.
#[derive(Debug)]
struct Slot {
    state: AtomicU8,
    peer: Peer,
    /// Where its octets are in [`Datagrams::octets`].
    range: Range<usize>,
    /// The helper's verdict, once `state` is [`DONE`].
    parsed: Mutex<Option<Inspected>>,
}

/// A batch of UDP datagrams in arrival order, their octets copied end to
/// end into one buffer (one allocation per batch, not per datagram).
#[derive(Debug)]
pub struct Datagrams {
    max_size: usize,
    octets: Vec<u8>,
    slots: Vec<Slot>,
}

impl Datagrams {
    /// An empty batch; `max_size` is [`message::inspect`]'s bound.
    pub fn new(max_size: usize) -> Self {
        Datagrams {
            max_size,
            octets: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// Adds a datagram. `parse_ahead` false keeps it from the helper (a
    /// banned source: the SIP task drops it without parsing it).
    pub fn push(&mut self, peer: Peer, bytes: &[u8], parse_ahead: bool) {
        let start = self.octets.len();
        self.octets.extend_from_slice(bytes);
        self.slots.push(Slot {
            state: AtomicU8::new(if parse_ahead { FREE } else { LOCAL }),
            peer,
            range: start..self.octets.len(),
            parsed: Mutex::new(None),
        });
    }

    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether the batch holds none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    fn bytes(&self, slot: &Slot) -> &[u8] {
        self.octets.get(slot.range.clone()).unwrap_or_default()
    }

    fn inspect(&self, slot: &Slot) -> Inspected {
        message::inspect(self.bytes(slot), TransportKind::Udp, self.max_size)
    }
}

/// A batch being parsed (by the SIP task, and the helper when it was
/// shared). Read it in order: for each index, [`Shared::skip`] or
/// [`Shared::take`].
#[derive(Debug)]
pub struct Shared(Arc<Datagrams>);

impl Shared {
    /// Datagrams in the batch.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the batch holds none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Where datagram `i` came from.
    pub fn peer(&self, i: usize) -> Option<Peer> {
        self.0.slots.get(i).map(|s| s.peer)
    }

    /// Whether datagram `i` starts with `SIP/` (a response: not counted
    /// against its source, `Endpoint::admit_datagram`).
    pub fn is_response(&self, i: usize) -> bool {
        self.0
            .slots
            .get(i)
            .is_some_and(|s| self.0.bytes(s).starts_with(b"SIP/"))
    }

    /// Datagram `i` is dropped unparsed: the helper, if it has not reached
    /// it, will not parse it.
    pub fn skip(&self, i: usize) {
        if let Some(slot) = self.0.slots.get(i) {
            let _ = slot
                .state
                .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// The verdict on datagram `i`: parsed here if no one has claimed it,
    /// else the helper's (waiting for it to finish the one parse it is in).
    pub fn take(&self, i: usize) -> Option<Inspected> {
        let batch = &*self.0;
        let slot = batch.slots.get(i)?;
        let mut spins = 0u32;
        loop {
            let state = slot.state.load(Ordering::Acquire);
            match state {
                FREE | LOCAL => {
                    if slot
                        .state
                        .compare_exchange(state, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        return Some(batch.inspect(slot));
                    }
                }
                DONE => {
                    let parsed = slot
                        .parsed
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    // Taken once only; were it gone, parse again.
                    return Some(parsed.unwrap_or_else(|| batch.inspect(slot)));
                }
                // The helper is parsing it: one parse, some microseconds.
                _ => {
                    spins = spins.saturating_add(1);
                    if spins < 256 {
                        std::hint::spin_loop();
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
        }
    }
}

/// The helper thread, when this machine has a second CPU.
#[derive(Debug)]
pub struct ParseHelper {
    jobs: Option<mpsc::Sender<Arc<Datagrams>>>,
}

impl ParseHelper {
    /// Starts the helper thread (none on a single CPU, or if the thread
    /// cannot be started: the SIP task then parses everything, as before).
    pub fn start() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        if cpus < 2 {
            return ParseHelper { jobs: None };
        }
        let (tx, rx) = mpsc::channel::<Arc<Datagrams>>();
        let started = std::thread::Builder::new()
            .name("sip-parse".into())
            .spawn(move || {
                // Ends when the SIP task (the sender) is gone.
                while let Ok(batch) = rx.recv() {
                    help(&batch);
                }
            });
        match started {
            Ok(_) => ParseHelper { jobs: Some(tx) },
            Err(e) => {
                tracing::warn!(error = %e, "SIP parse helper not started: one core parses");
                ParseHelper { jobs: None }
            }
        }
    }

    /// A helper that never helps (tests, single-CPU machines).
    pub fn none() -> Self {
        ParseHelper { jobs: None }
    }

    /// Starts parsing `batch`: shared with the helper from [`SHARE_FROM`]
    /// datagrams on.
    pub fn share(&self, batch: Datagrams) -> Shared {
        let batch = Arc::new(batch);
        if batch.len() >= SHARE_FROM {
            if let Some(jobs) = &self.jobs {
                // A helper gone (it cannot end while we hold the sender,
                // short of a panic) leaves the whole batch to the SIP task.
                let _ = jobs.send(Arc::clone(&batch));
            }
        }
        Shared(batch)
    }
}

/// The helper's part: from the end backwards until it meets the SIP task
/// (the first slot it cannot claim: the SIP task claims in order, so every
/// slot before it is the SIP task's too).
fn help(batch: &Datagrams) {
    for slot in batch.slots.iter().rev() {
        match slot
            .state
            .compare_exchange(FREE, CLAIMED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {}
            Err(LOCAL) => continue,
            Err(_) => return,
        }
        // `inspect` never panics (it is fuzzed); were it to, the slot is
        // handed back and the SIP task parses it (and meets the same panic
        // there, as it would have without the helper).
        match catch_unwind(AssertUnwindSafe(|| batch.inspect(slot))) {
            Ok(parsed) => {
                *slot.parsed.lock().unwrap_or_else(PoisonError::into_inner) = Some(parsed);
                slot.state.store(DONE, Ordering::Release);
            }
            Err(_) => {
                slot.state.store(FREE, Ordering::Release);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(port: u16) -> Peer {
        Peer {
            transport: TransportKind::Udp,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }

    fn options(n: usize) -> String {
        format!(
            "OPTIONS sip:pd@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{n}\r\n\
             From: <sip:a@127.0.0.1>;tag={n}\r\nTo: <sip:pd@127.0.0.1>\r\nCall-ID: c{n}\r\n\
             CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn call_id(i: &Inspected) -> String {
        match i {
            Inspected::Request(r) => r
                .headers
                .iter()
                .find_map(|h| match h {
                    super::super::syntax::Header::CallId(c) => Some(c.value().to_string()),
                    _ => None,
                })
                .unwrap_or_default(),
            other => format!("{other:?}"),
        }
    }

    /// Every datagram of a shared batch comes out once, in arrival order,
    /// with its own verdict, whichever side parsed it.
    #[test]
    fn a_shared_batch_is_handled_in_arrival_order() {
        let helper = ParseHelper::start();
        for round in 0..50 {
            let n = SHARE_FROM + round % 40;
            let mut batch = Datagrams::new(message::DEFAULT_MAX_MESSAGE_SIZE);
            for i in 0..n {
                // Every fifth from a "banned" source: not parsed ahead.
                batch.push(peer(5000 + i as u16), options(i).as_bytes(), i % 5 != 0);
            }
            let shared = helper.share(batch);
            assert_eq!(shared.len(), n);
            for i in 0..n {
                assert_eq!(shared.peer(i), Some(peer(5000 + i as u16)));
                assert!(!shared.is_response(i));
                if i % 7 == 3 {
                    shared.skip(i);
                    continue;
                }
                let parsed = shared.take(i).map(|p| call_id(&p));
                assert_eq!(parsed.as_deref(), Some(format!("c{i}").as_str()));
            }
            assert!(shared.take(n).is_none());
        }
    }

    /// A small batch, or no helper: the SIP task parses alone, same verdicts.
    #[test]
    fn without_a_helper_every_datagram_is_parsed_in_place() {
        let helper = ParseHelper::none();
        let mut batch = Datagrams::new(message::DEFAULT_MAX_MESSAGE_SIZE);
        batch.push(peer(1), b"SIP/2.0 200 OK\r\n\r\n", true);
        batch.push(peer(2), options(7).as_bytes(), true);
        let shared = helper.share(batch);
        assert!(shared.is_response(0));
        assert!(matches!(shared.take(0), Some(Inspected::Drop { .. })));
        assert_eq!(shared.take(1).map(|p| call_id(&p)).as_deref(), Some("c7"));
    }
}
