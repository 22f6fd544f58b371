//! The call legs' own timers (DESIGN.md "Timers"): named, one deadline each,
//! the next deadline is the minimum over the table.

use std::time::Instant;

/// A timer of a call leg; the transaction timers (A–K) live in the leg's
/// [`TransactionTable`](crate::sip::transaction::TransactionTable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// R8: from the lead's INVITE; at expiry CANCEL, outcome `no_answer`.
    RingTimeout,
    /// SPEC §1 step 5: the hard maximum length of an answered lead call → BYE.
    MaxCallLength,
    /// How long the agent's phone may ring before the agent leg gives up.
    AnswerTimeout,
    /// `[[trunk]] response_timeout` from the lead's INVITE: no response at
    /// all by then → the INVITE is abandoned (a CANCEL waits for a
    /// provisional, RFC 3261 §9.1) and the next trunk may be tried.
    NoResponse,
    /// RFC 4028 §10: we are the refresher; a session refresh (re-INVITE)
    /// is due at half the session interval.
    SessionRefresh,
    /// RFC 4028 §10: no refresh succeeded by the session interval minus
    /// min(32 s, interval/3) → BYE.
    SessionExpiry,
    /// The next in-dialog OPTIONS to the trunk on an answered call
    /// (`[[trunk]] keepalive_interval`; RFC 3261 §11, §12.2.1.2).
    Keepalive,
}

const ALL: [Timer; 7] = [
    Timer::RingTimeout,
    Timer::MaxCallLength,
    Timer::AnswerTimeout,
    Timer::NoResponse,
    Timer::SessionRefresh,
    Timer::SessionExpiry,
    Timer::Keepalive,
];

impl Timer {
    fn index(self) -> usize {
        match self {
            Timer::RingTimeout => 0,
            Timer::MaxCallLength => 1,
            Timer::AnswerTimeout => 2,
            Timer::NoResponse => 3,
            Timer::SessionRefresh => 4,
            Timer::SessionExpiry => 5,
            Timer::Keepalive => 6,
        }
    }
}

/// One optional deadline per [`Timer`].
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable {
    deadlines: [Option<Instant>; 7],
}

impl TimerTable {
    pub(crate) fn set(&mut self, timer: Timer, at: Instant) {
        self.deadlines[timer.index()] = Some(at);
    }

    pub(crate) fn stop(&mut self, timer: Timer) {
        self.deadlines[timer.index()] = None;
    }

    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.deadlines[timer.index()]
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Instant> {
        self.deadlines.iter().flatten().min().copied()
    }

    /// Removes and returns the earliest timer due at `now`, if any; ties go
    /// in declaration order, so `RingTimeout` is handled first.
    pub(crate) fn pop_expired(&mut self, now: Instant) -> Option<Timer> {
        let timer = ALL
            .into_iter()
            .filter(|t| self.get(*t).is_some_and(|at| at <= now))
            .min_by_key(|t| self.get(*t))?;
        self.stop(timer);
        Some(timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn next_is_the_minimum_and_pop_takes_due_timers_in_order() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::MaxCallLength, t0 + Duration::from_secs(5));
        t.set(Timer::RingTimeout, t0 + Duration::from_secs(2));
        assert_eq!(t.next(), Some(t0 + Duration::from_secs(2)));
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            t.pop_expired(t0 + Duration::from_secs(9)),
            Some(Timer::RingTimeout)
        );
        assert_eq!(
            t.pop_expired(t0 + Duration::from_secs(9)),
            Some(Timer::MaxCallLength)
        );
        assert_eq!(t.pop_expired(t0 + Duration::from_secs(9)), None);
        assert_eq!(t.next(), None);
    }
}
