//! Password guessing is limited per account and address (SPEC §5, a
//! server that "never lets a stranger place calls"): after
//! [`MAX_FAILURES`] failed digest responses for one username from one
//! address within [`WINDOW`], that username is refused from that address
//! for [`BAN`] — even with the right password, and with the very same 401
//! as any failure, so a guesser cannot tell the lock from a wrong guess and
//! a known user from an unknown one. Other addresses (a colleague behind
//! the same office NAT uses another username) are unaffected. Sans-IO: the
//! endpoint passes `now`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed responses allowed per (username, address) within [`WINDOW`].
pub const MAX_FAILURES: u32 = 5;
/// The window the failures are counted in.
pub const WINDOW: Duration = Duration::from_secs(60);
/// How long a (username, address) stays refused.
pub const BAN: Duration = Duration::from_secs(300);
/// Pairs tracked at once: beyond it expired entries go first, and if none
/// has expired new pairs are not counted (memory stays bounded).
pub const MAX_TRACKED: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Tally {
    since: Instant,
    failures: u32,
    banned_until: Option<Instant>,
}

impl Tally {
    fn expired(&self, now: Instant) -> bool {
        let counting = now.duration_since(self.since) < WINDOW;
        let banned = self.banned_until.is_some_and(|u| now < u);
        !counting && !banned
    }
}

/// Failed digest responses per (username, source address).
#[derive(Debug, Default)]
pub struct AuthLimiter {
    tallies: HashMap<(String, IpAddr), Tally>,
}

impl AuthLimiter {
    /// Whether `user` from `addr` is refused for now.
    pub fn is_banned(&self, user: &str, addr: IpAddr, now: Instant) -> bool {
        self.tallies
            .get(&(user.to_string(), addr))
            .and_then(|t| t.banned_until)
            .is_some_and(|u| now < u)
    }

    /// Counts a failed response; true when it starts a ban.
    pub fn record_failure(&mut self, user: &str, addr: IpAddr, now: Instant) -> bool {
        let key = (user.to_string(), addr);
        if !self.tallies.contains_key(&key) && self.tallies.len() >= MAX_TRACKED {
            self.tallies.retain(|_, t| !t.expired(now));
            if self.tallies.len() >= MAX_TRACKED {
                return false;
            }
        }
        let t = self.tallies.entry(key).or_insert(Tally {
            since: now,
            failures: 0,
            banned_until: None,
        });
        if t.banned_until.is_some_and(|u| now < u) {
            return false;
        }
        if t.expired(now) || t.banned_until.is_some() {
            *t = Tally {
                since: now,
                failures: 0,
                banned_until: None,
            };
        }
        t.failures += 1;
        if t.failures >= MAX_FAILURES {
            t.banned_until = Some(now + BAN);
            return true;
        }
        false
    }

    /// Forgets every tally of `ip` (an administrator lifted its ban);
    /// whether a lockout was in force.
    pub fn unlock_address(&mut self, ip: IpAddr, now: Instant) -> bool {
        let mut locked = false;
        self.tallies.retain(|(_, a), t| {
            if *a != ip {
                return true;
            }
            locked |= t.banned_until.is_some_and(|u| now < u);
            false
        });
        locked
    }

    /// Every (username, address) refused now, with the time left.
    pub fn bans(&self, now: Instant) -> Vec<(String, IpAddr, Duration)> {
        self.tallies
            .iter()
            .filter_map(|((u, a), t)| {
                let left = t.banned_until?.checked_duration_since(now)?;
                (!left.is_zero()).then(|| (u.clone(), *a, left))
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // one real instant as the simulated clock's origin
mod tests {
    use super::*;

    #[test]
    fn five_failures_ban_that_user_from_that_address_only() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let mut l = AuthLimiter::default();
        for i in 0..MAX_FAILURES - 1 {
            assert!(!l.record_failure("alice", ip, t0 + Duration::from_secs(u64::from(i))));
        }
        assert!(!l.is_banned("alice", ip, t0 + Duration::from_secs(10)));
        assert!(l.record_failure("alice", ip, t0 + Duration::from_secs(10)));
        assert!(l.is_banned("alice", ip, t0 + Duration::from_secs(11)));
        assert!(
            !l.is_banned("bob", ip, t0 + Duration::from_secs(11)),
            "a colleague behind the same NAT"
        );
        assert!(!l.is_banned("alice", other, t0 + Duration::from_secs(11)));
        assert_eq!(l.bans(t0 + Duration::from_secs(11)).len(), 1);
        assert!(l.is_banned(
            "alice",
            ip,
            t0 + Duration::from_secs(10) + BAN - Duration::from_millis(1)
        ));
        assert!(!l.is_banned("alice", ip, t0 + Duration::from_secs(10) + BAN));
        // After the ban a new window starts from zero.
        assert!(!l.record_failure("alice", ip, t0 + Duration::from_secs(10) + BAN));
    }

    #[test]
    fn failures_spread_over_more_than_the_window_do_not_ban() {
        let t0 = Instant::now();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let mut l = AuthLimiter::default();
        for i in 0..20u64 {
            assert!(!l.record_failure("alice", ip, t0 + WINDOW * u32::try_from(i).unwrap()));
        }
        assert!(!l.is_banned("alice", ip, t0 + WINDOW * 20));
    }

    #[test]
    fn tracking_is_bounded() {
        let t0 = Instant::now();
        let mut l = AuthLimiter::default();
        for i in 0..MAX_TRACKED {
            l.record_failure(&format!("u{i}"), "192.0.2.1".parse().unwrap(), t0);
        }
        l.record_failure("late", "192.0.2.1".parse().unwrap(), t0);
        assert_eq!(l.tallies.len(), MAX_TRACKED);
        l.record_failure("late", "192.0.2.1".parse().unwrap(), t0 + WINDOW);
        assert_eq!(l.tallies.len(), 1, "expired entries make room");
    }
}
