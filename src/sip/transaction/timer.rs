//! The transaction timers of RFC 3261 §17 (Table 4) and their per-transaction
//! table, in the style of quinn-proto's `connection/timer.rs`.

use std::time::{Duration, Instant};

/// The timer base values of RFC 3261 §17.1.1.1 and Table 4.
///
/// Every transaction timer is derived from these three; tests and
/// deployments with unusual links may shrink or stretch them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// T1, the round-trip time estimate (RFC 3261 §17.1.1.1; default 500 ms).
    pub t1: Duration,
    /// T2, the cap on non-INVITE request and INVITE response retransmit
    /// intervals (RFC 3261 §17.1.2.2; default 4 s).
    pub t2: Duration,
    /// T4, the time a message may linger in the network (RFC 3261 §17.1.2.2;
    /// default 5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    /// The RFC 3261 Table 4 recommended values: T1 500 ms, T2 4 s, T4 5 s.
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// 64*T1: the transaction timeout of timers B, F, H and J (RFC 3261
    /// Table 4), also the 2xx give-up time of §13.3.1.4.
    pub fn timeout(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer D: at least 32 s on unreliable transports, zero on reliable ones
    /// (RFC 3261 §17.1.1.2). Taken as 64*T1, which is 32 s at the default T1
    /// and shrinks with T1 in tests.
    pub fn timer_d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.timeout()
        }
    }

    /// Timers I and K: T4 on unreliable transports, zero on reliable ones
    /// (RFC 3261 §17.1.2.2, §17.2.1).
    pub fn timer_t4_or_zero(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t4
        }
    }

    /// Timer J: 64*T1 on unreliable transports, zero on reliable ones
    /// (RFC 3261 §17.2.2).
    pub fn timer_j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.timeout()
        }
    }

    /// The next retransmit interval after `current` for timers E and G:
    /// doubled, capped at T2 (RFC 3261 §17.1.2.2, §17.2.1).
    pub fn backoff_capped(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.t2)
    }
}

/// The transaction timers of RFC 3261 Table 4 (C is a proxy timer, unused),
/// plus RFC 6026's Timer L.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// A: INVITE client request retransmit, T1 doubling (§17.1.1.2; UDP only).
    A,
    /// B: INVITE client transaction timeout in Calling, 64*T1 (§17.1.1.2).
    B,
    /// D: INVITE client wait for response retransmits in Completed (§17.1.1.2).
    D,
    /// E: non-INVITE client request retransmit, T1 doubling to T2 (§17.1.2.2; UDP only).
    E,
    /// F: non-INVITE client transaction timeout, 64*T1 (§17.1.2.2).
    F,
    /// G: INVITE server final response retransmit, T1 doubling to T2 (§17.2.1; UDP only).
    G,
    /// H: INVITE server wait for ACK in Completed, 64*T1 (§17.2.1).
    H,
    /// I: INVITE server wait for ACK retransmits in Confirmed, T4 (§17.2.1).
    I,
    /// J: non-INVITE server wait for request retransmits in Completed (§17.2.2).
    J,
    /// K: non-INVITE client wait for response retransmits in Completed, T4 (§17.1.2.2).
    K,
    /// L: INVITE server absorbing INVITE retransmits after a 2xx, 64*T1 (RFC 6026 §8.7).
    L,
}

impl Timer {
    const COUNT: usize = 11;
    const ALL: [Timer; Timer::COUNT] = [
        Timer::A,
        Timer::B,
        Timer::D,
        Timer::E,
        Timer::F,
        Timer::G,
        Timer::H,
        Timer::I,
        Timer::J,
        Timer::K,
        Timer::L,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

/// The deadlines of one transaction's timers; the next deadline is the
/// minimum over it (quinn-proto `TimerTable`).
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; Timer::COUNT],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, deadline: Instant) {
        self.deadlines[timer.index()] = Some(deadline);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }

    pub(crate) fn stop_all(&mut self) {
        self.deadlines = [None; Timer::COUNT];
    }

    #[cfg(test)]
    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer.index()]
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Takes the earliest timer that has expired at `now`, stopping it, so
    /// that a late driver still fires timers in deadline order.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let (timer, _) = Timer::ALL
            .iter()
            .filter_map(|t| self.deadlines[t.index()].map(|d| (*t, d)))
            .filter(|(_, d)| *d <= now)
            .min_by_key(|(_, d)| *d)?;
        self.stop(timer);
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_rfc_table_4() {
        let c = TimerConfig::default();
        assert_eq!(c.t1, Duration::from_millis(500));
        assert_eq!(c.t2, Duration::from_secs(4));
        assert_eq!(c.t4, Duration::from_secs(5));
        assert_eq!(c.timeout(), Duration::from_secs(32));
        assert_eq!(c.timer_d(false), Duration::from_secs(32));
        assert_eq!(c.timer_d(true), Duration::ZERO);
        assert_eq!(c.timer_j(true), Duration::ZERO);
        assert_eq!(c.timer_t4_or_zero(true), Duration::ZERO);
        assert_eq!(
            c.backoff_capped(Duration::from_secs(2)),
            Duration::from_secs(4)
        );
        assert_eq!(
            c.backoff_capped(Duration::from_secs(4)),
            Duration::from_secs(4)
        );
    }

    #[test]
    fn table_pops_in_deadline_order() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut table = TimerTable::default();
        table.set(Timer::B, t0 + Duration::from_secs(2));
        table.set(Timer::A, t0 + Duration::from_secs(1));
        assert_eq!(table.next_deadline(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(table.pop_expired(t0), None);
        let late = t0 + Duration::from_secs(5);
        assert_eq!(table.pop_expired(late), Some(Timer::A));
        assert_eq!(table.pop_expired(late), Some(Timer::B));
        assert_eq!(table.pop_expired(late), None);
        assert_eq!(table.next_deadline(), None);
    }
}
