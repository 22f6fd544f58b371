//! Several carrier trunks (`[[trunk]]`, SPEC §1 "Carrier trunk"), sans-IO:
//! which trunks a lead call may go to and in what order, whether a failed
//! INVITE may go on to the next one, each trunk's limits (calls per second,
//! concurrent calls) and its health from OPTIONS pings (RFC 3261 §11).
//! The clock and the randomness are parameters (DESIGN.md "cores").
//!
//! # Order
//! RFC 2782 (DNS SRV) semantics: trunks are tried by ascending `priority`
//! (by default their position in the file, so the first trunk is tried
//! first); trunks sharing a priority share the load by `weight`, drawn
//! again for every call.
//!
//! # Failover
//! Only when the lead's phone was certainly not reached: a transport
//! error, no response at all, 408 or a 5xx, and only before any
//! provisional response above 100 (a 180/183 means the lead's phone may be
//! ringing: a second INVITE would ring it twice). Never on 404, 486, 603
//! or any other 4xx/6xx: the lead answered the question (busy, declined,
//! no such number). One INVITE per lead per trunk: a trunk already tried
//! for the call is never tried again.
//!
//! # Health
//! A trunk with `options_interval` set is pinged with OPTIONS; after
//! `down_after` failed pings in a row (no final response within
//! `options_timeout`, a transport error, 408 or 5xx) it is down and skipped
//! without an INVITE; after `up_after` good pings in a row (any other
//! final response: a carrier that refuses OPTIONS with 405 is alive) it is
//! up again.
//!
//! # Limits
//! `max_calls` counts lead calls from their INVITE to their outcome;
//! `max_cps` gives INVITEs slots `1 / max_cps` s apart (an even pace
//! never exceeds the rate in any window, which carriers police). A call
//! that takes its slot late (the waiting task woke a few ms after the
//! slot: timer granularity, a busy machine) does not push the next slot
//! back: the schedule advances from the slot, not from the late start, so
//! lateness never accumulates into a lower rate. Only a trunk that was
//! idle for more than a slot starts a new schedule from now. Any window of
//! length W still holds at most W·max_cps + 1 INVITEs, the bound of the
//! exact even pace: each INVITE lies within one slot after its own slot.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// A trunk, by its position in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrunkId(pub usize);

/// OPTIONS pings of one trunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingPolicy {
    /// From one ping to the next.
    pub interval: Duration,
    /// A ping without a final response by then failed.
    pub timeout: Duration,
    /// Failed pings in a row that mark the trunk down.
    pub down_after: u32,
    /// Good pings in a row that mark a down trunk up again.
    pub up_after: u32,
}

/// What the core needs of one `[[trunk]]`.
#[derive(Debug, Clone)]
pub struct TrunkPolicy {
    /// `name`, for logs, metrics and the API.
    pub name: String,
    /// Lower first (RFC 2782).
    pub priority: u32,
    /// Share among trunks of one priority (RFC 2782), at least 1.
    pub weight: u32,
    /// Anchored patterns over E.164 numbers; empty = any number (R11).
    pub allow: Vec<regex::Regex>,
    /// Most INVITEs per second.
    pub max_cps: Option<f64>,
    /// Most lead calls at once.
    pub max_calls: Option<u32>,
    /// OPTIONS pings; `None` = never pinged, always up.
    pub ping: Option<PingPolicy>,
}

/// Whether a trunk takes calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = TrunkHealth)]
pub enum Health {
    /// Takes calls (also before the first ping, and when never pinged).
    Up,
    /// Failed `down_after` pings in a row: skipped without an INVITE.
    Down,
}

/// Why an INVITE to a trunk failed, as far as failover cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrunkFailure {
    /// The request could not be sent (RFC 3261 §17.1.4, §18.4).
    Transport,
    /// Timer B: no final response (§17.1.1.2).
    Timeout,
    /// No response at all, not even 100 Trying, within `response_timeout`.
    NoResponse,
    /// A final response other than 2xx.
    Status(u16),
}

/// Whether a lead call whose INVITE failed with `failure` may be sent to
/// the next trunk: only when the lead's phone was not reached (module docs).
/// `alerted`: a provisional response above 100 arrived.
pub fn fails_over(failure: TrunkFailure, alerted: bool) -> bool {
    if alerted {
        return false;
    }
    match failure {
        TrunkFailure::Transport | TrunkFailure::Timeout | TrunkFailure::NoResponse => true,
        TrunkFailure::Status(s) => s == 408 || (500..=599).contains(&s),
    }
}

/// Whether a final response to OPTIONS shows a live trunk: anything but
/// 408 and 5xx (a 404 or 405 still comes from a working SIP server).
pub fn ping_ok(status: u16) -> bool {
    !(status == 408 || (500..=599).contains(&status))
}

/// Why no trunk was taken ([`TrunkSet::acquire`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoTrunk {
    /// No trunk may dial the number (R11): `restricted`.
    NotAllowed,
    /// Every trunk that may dial it is down.
    AllDown,
    /// Every trunk that may dial it and is up is at its limit; the earliest
    /// instant a calls-per-second limit frees, if only that holds it.
    AtLimit {
        /// When to try again (`None`: when a call ends).
        retry_at: Option<Instant>,
    },
}

/// One trunk as the API and the metrics show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct TrunkStatus {
    /// `[[trunk]] name`.
    pub name: String,
    /// `up` or `down`.
    pub state: Health,
    /// Whether OPTIONS pings watch it.
    pub pinged: bool,
    /// Failed pings in a row.
    pub failed_pings: u32,
    /// `priority`.
    pub priority: u32,
    /// `weight`.
    pub weight: u32,
    /// Lead calls on it now.
    pub active_calls: u32,
    /// `max_calls`, if set.
    pub max_calls: Option<u32>,
    /// `max_cps`, if set.
    pub max_cps: Option<f64>,
}

#[derive(Debug)]
struct TrunkState {
    policy: TrunkPolicy,
    health: Health,
    failed: u32,
    good: u32,
    active: u32,
    /// The earliest instant of the next INVITE under `max_cps` (the
    /// schedule's next slot).
    next_slot: Option<Instant>,
    next_ping: Option<Instant>,
    ping_deadline: Option<Instant>,
    ping_seq: u64,
}

/// One OPTIONS ping to send ([`TrunkSet::poll_ping`]); its result is
/// reported with the same value, so a late answer to an older ping (or its
/// Timer F) never counts for the one in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ping {
    /// The trunk pinged.
    pub trunk: TrunkId,
    /// Which of its pings.
    pub seq: u64,
}

/// A change of a trunk's health, to log and export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthChange {
    /// The trunk.
    pub trunk: TrunkId,
    /// Its new state.
    pub health: Health,
}

/// Every configured trunk's policy and state.
#[derive(Debug)]
pub struct TrunkSet {
    trunks: Vec<TrunkState>,
    changes: VecDeque<HealthChange>,
}

impl TrunkSet {
    /// All trunks up; the first pings are due at `now`.
    pub fn new(policies: Vec<TrunkPolicy>, now: Instant) -> TrunkSet {
        TrunkSet {
            trunks: policies
                .into_iter()
                .map(|policy| TrunkState {
                    next_ping: policy.ping.map(|_| now),
                    policy,
                    health: Health::Up,
                    failed: 0,
                    good: 0,
                    active: 0,
                    next_slot: None,
                    ping_deadline: None,
                    ping_seq: 0,
                })
                .collect(),
            changes: VecDeque::new(),
        }
    }

    /// How many trunks there are.
    pub fn len(&self) -> usize {
        self.trunks.len()
    }

    /// Whether no trunk is configured.
    pub fn is_empty(&self) -> bool {
        self.trunks.is_empty()
    }

    /// A trunk's name.
    pub fn name(&self, id: TrunkId) -> &str {
        self.trunks.get(id.0).map_or("", |t| t.policy.name.as_str())
    }

    /// Whether trunk `id` may dial `e164` (its `allow` patterns, R11).
    pub fn allows(&self, id: TrunkId, e164: &str) -> bool {
        self.trunks.get(id.0).is_some_and(|t| {
            t.policy.allow.is_empty() || t.policy.allow.iter().any(|re| re.is_match(e164))
        })
    }

    /// The trunks that may dial `e164`, up or not, in the order to try
    /// them: by priority, and by weight within one (RFC 2782), drawing with
    /// `draw(n)` (a number in `0..n`).
    pub fn order(&self, e164: &str, draw: &mut impl FnMut(u32) -> u32) -> Vec<TrunkId> {
        let mut allowed: Vec<TrunkId> = (0..self.trunks.len())
            .map(TrunkId)
            .filter(|id| self.allows(*id, e164))
            .collect();
        allowed.sort_by_key(|id| (self.trunks[id.0].policy.priority, id.0));
        let mut out = Vec::with_capacity(allowed.len());
        let mut rest = allowed.as_slice();
        while let Some(first) = rest.first() {
            let p = self.trunks[first.0].policy.priority;
            let n = rest
                .iter()
                .take_while(|id| self.trunks[id.0].policy.priority == p)
                .count();
            let mut group: Vec<TrunkId> = rest[..n].to_vec();
            rest = &rest[n..];
            // RFC 2782: pick by running sum of weights, remove, repeat.
            while !group.is_empty() {
                let total: u32 = group
                    .iter()
                    .map(|id| self.trunks[id.0].policy.weight.max(1))
                    .sum();
                let r = draw(total).min(total.saturating_sub(1));
                let mut sum = 0;
                let pos = group
                    .iter()
                    .position(|id| {
                        sum += self.trunks[id.0].policy.weight.max(1);
                        sum > r
                    })
                    .unwrap_or(0);
                out.push(group.remove(pos));
            }
        }
        out
    }

    /// Takes the first trunk of `order` (skipping `tried`) that is up and
    /// within its limits, counting the call on it (release it with
    /// [`release`](Self::release)).
    pub fn acquire(
        &mut self,
        order: &[TrunkId],
        tried: &[TrunkId],
        now: Instant,
    ) -> Result<TrunkId, NoTrunk> {
        let mut any = false;
        let mut any_up = false;
        let mut retry_at: Option<Instant> = None;
        let mut only_cps = true;
        for id in order.iter().filter(|id| !tried.contains(id)) {
            let Some(t) = self.trunks.get_mut(id.0) else {
                continue;
            };
            any = true;
            if t.health == Health::Down {
                continue;
            }
            any_up = true;
            if t.policy.max_calls.is_some_and(|m| t.active >= m) {
                only_cps = false;
                continue;
            }
            if let Some(next) = t.next_slot {
                if now < next {
                    retry_at = Some(retry_at.map_or(next, |r| r.min(next)));
                    continue;
                }
            }
            if let Some(cps) = t.policy.max_cps {
                let gap = Duration::from_secs_f64(1.0 / cps);
                // Late within one slot: keep the schedule (see "Limits").
                t.next_slot = Some(match t.next_slot {
                    Some(slot) if now < slot + gap => slot + gap,
                    _ => now + gap,
                });
            }
            t.active += 1;
            return Ok(*id);
        }
        Err(if !any {
            NoTrunk::NotAllowed
        } else if !any_up {
            NoTrunk::AllDown
        } else {
            NoTrunk::AtLimit {
                retry_at: retry_at.filter(|_| only_cps),
            }
        })
    }

    /// [`acquire`](Self::acquire), or when only calls-per-second limits
    /// hold and a slot comes within `horizon`, that slot reserved: the
    /// call is counted now and its INVITE goes at the returned instant.
    /// Each waiting dial gets its own slot in arrival order, so the pace
    /// is kept without every waiter waking at every slot to race for it
    /// (a thundering herd that made the waiters, not the pace, set the
    /// rate on a busy machine).
    pub fn reserve(
        &mut self,
        order: &[TrunkId],
        tried: &[TrunkId],
        now: Instant,
        horizon: Duration,
    ) -> Result<(TrunkId, Instant), NoTrunk> {
        let at = match self.acquire(order, tried, now) {
            Ok(id) => return Ok((id, now)),
            Err(NoTrunk::AtLimit { retry_at: Some(at) }) if at <= now + horizon => at,
            Err(e) => return Err(e),
        };
        // `retry_at` is set only when no trunk is at `max_calls`: the trunk
        // whose next slot it is may take the call.
        let found = order.iter().filter(|id| !tried.contains(id)).find(|id| {
            self.trunks
                .get(id.0)
                .is_some_and(|t| t.health != Health::Down && t.next_slot == Some(at))
        });
        let Some(id) = found.copied() else {
            return Err(NoTrunk::AtLimit { retry_at: Some(at) });
        };
        let Some(t) = self.trunks.get_mut(id.0) else {
            return Err(NoTrunk::AtLimit { retry_at: Some(at) });
        };
        let gap = t
            .policy
            .max_cps
            .map_or(Duration::ZERO, |cps| Duration::from_secs_f64(1.0 / cps));
        t.next_slot = Some(at + gap);
        t.active += 1;
        Ok((id, at))
    }

    /// A call counted by [`acquire`](Self::acquire) has its outcome.
    pub fn release(&mut self, id: TrunkId) {
        if let Some(t) = self.trunks.get_mut(id.0) {
            t.active = t.active.saturating_sub(1);
        }
    }

    /// Lead calls on trunk `id` now.
    pub fn active(&self, id: TrunkId) -> u32 {
        self.trunks.get(id.0).map_or(0, |t| t.active)
    }

    /// A trunk's health.
    pub fn health(&self, id: TrunkId) -> Health {
        self.trunks.get(id.0).map_or(Health::Down, |t| t.health)
    }

    /// The next ping due at `now`: it is then in flight until
    /// [`handle_ping`](Self::handle_ping) or its timeout.
    pub fn poll_ping(&mut self, now: Instant) -> Option<Ping> {
        let (i, t) =
            self.trunks.iter_mut().enumerate().find(|(_, t)| {
                t.ping_deadline.is_none() && t.next_ping.is_some_and(|at| at <= now)
            })?;
        let ping = t.policy.ping?;
        t.ping_deadline = Some(now + ping.timeout);
        t.next_ping = Some(now + ping.interval);
        t.ping_seq += 1;
        Some(Ping {
            trunk: TrunkId(i),
            seq: t.ping_seq,
        })
    }

    /// A ping ended: a final response (`ok` per [`ping_ok`]) or a
    /// transport error / Timer F (`ok = false`). Only the ping in flight
    /// counts: one that timed out, or an older one, is ignored.
    pub fn handle_ping(&mut self, ping: Ping, ok: bool) {
        let Some(t) = self.trunks.get_mut(ping.trunk.0) else {
            return;
        };
        if t.ping_seq != ping.seq || t.ping_deadline.take().is_none() {
            return;
        }
        self.count_ping(ping.trunk, ok);
    }

    fn count_ping(&mut self, id: TrunkId, ok: bool) {
        let Some(t) = self.trunks.get_mut(id.0) else {
            return;
        };
        let Some(ping) = t.policy.ping else { return };
        if ok {
            t.failed = 0;
            t.good = t.good.saturating_add(1);
            if t.health == Health::Down && t.good >= ping.up_after {
                t.health = Health::Up;
                self.changes.push_back(HealthChange {
                    trunk: id,
                    health: Health::Up,
                });
            }
        } else {
            t.good = 0;
            t.failed = t.failed.saturating_add(1);
            if t.health == Health::Up && t.failed >= ping.down_after {
                t.health = Health::Down;
                self.changes.push_back(HealthChange {
                    trunk: id,
                    health: Health::Down,
                });
            }
        }
    }

    /// Pings past their timeout fail.
    pub fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.trunks.len() {
            if self.trunks[i].ping_deadline.is_some_and(|d| d <= now) {
                self.trunks[i].ping_deadline = None;
                self.count_ping(TrunkId(i), false);
            }
        }
    }

    /// The next ping or ping timeout.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.trunks
            .iter()
            .flat_map(|t| {
                [
                    t.ping_deadline,
                    t.next_ping.filter(|_| t.ping_deadline.is_none()),
                ]
            })
            .flatten()
            .min()
    }

    /// The next health change to log and export.
    pub fn poll_change(&mut self) -> Option<HealthChange> {
        self.changes.pop_front()
    }

    /// Every trunk as the API shows it, in configuration order.
    pub fn status(&self) -> Vec<TrunkStatus> {
        self.trunks
            .iter()
            .map(|t| TrunkStatus {
                name: t.policy.name.clone(),
                state: t.health,
                pinged: t.policy.ping.is_some(),
                failed_pings: t.failed,
                priority: t.policy.priority,
                weight: t.policy.weight,
                active_calls: t.active,
                max_calls: t.policy.max_calls,
                max_cps: t.policy.max_cps,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, priority: u32) -> TrunkPolicy {
        TrunkPolicy {
            name: name.into(),
            priority,
            weight: 1,
            allow: Vec::new(),
            max_cps: None,
            max_calls: None,
            ping: None,
        }
    }

    fn pinged(mut p: TrunkPolicy, down_after: u32, up_after: u32) -> TrunkPolicy {
        p.ping = Some(PingPolicy {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(5),
            down_after,
            up_after,
        });
        p
    }

    fn first(_: u32) -> u32 {
        0
    }

    #[test]
    fn failover_only_when_the_lead_was_not_reached() {
        for f in [
            TrunkFailure::Transport,
            TrunkFailure::Timeout,
            TrunkFailure::NoResponse,
            TrunkFailure::Status(408),
            TrunkFailure::Status(500),
            TrunkFailure::Status(503),
            TrunkFailure::Status(504),
            TrunkFailure::Status(599),
        ] {
            assert!(fails_over(f, false), "{f:?}");
            // A 180/183 came: the lead's phone may ring; never twice.
            assert!(!fails_over(f, true), "{f:?} after a 180");
        }
        for s in [
            400, 401, 403, 404, 407, 480, 484, 486, 487, 488, 600, 603, 604, 606,
        ] {
            assert!(!fails_over(TrunkFailure::Status(s), false), "{s}");
        }
    }

    #[test]
    fn order_is_by_priority_then_weight() {
        let t0 = crate::sip::transaction::test_epoch();
        let set = TrunkSet::new(vec![policy("b", 2), policy("a", 1), policy("c", 3)], t0);
        assert_eq!(
            set.order("+15550000000", &mut first),
            vec![TrunkId(1), TrunkId(0), TrunkId(2)]
        );
        // Same priority, weights 1 and 3: draws 0 → the first, 1..=3 → the second.
        let mut a = policy("a", 1);
        a.weight = 1;
        let mut b = policy("b", 1);
        b.weight = 3;
        let set = TrunkSet::new(vec![a, b, policy("z", 5)], t0);
        assert_eq!(
            set.order("+1", &mut |_| 0),
            vec![TrunkId(0), TrunkId(1), TrunkId(2)]
        );
        for r in 1..=3 {
            assert_eq!(
                set.order("+1", &mut |_| r),
                vec![TrunkId(1), TrunkId(0), TrunkId(2)],
                "draw {r}"
            );
        }
        // Over many draws the share follows the weights (1:3).
        let mut seed = 12345u32;
        let mut rng = |n: u32| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 8) % n
        };
        let firsts = (0..4000)
            .filter(|_| set.order("+1", &mut rng)[0] == TrunkId(1))
            .count();
        assert!((2700..3300).contains(&firsts), "{firsts} of 4000");
    }

    #[test]
    fn allow_patterns_restrict_each_trunk() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut uk = policy("uk", 1);
        uk.allow = vec![regex::Regex::new(r"^(?:\+44\d+)$").unwrap()];
        let set = TrunkSet::new(vec![uk, policy("any", 2)], t0);
        assert_eq!(
            set.order("+442079460000", &mut first),
            vec![TrunkId(0), TrunkId(1)]
        );
        assert_eq!(set.order("+15550000000", &mut first), vec![TrunkId(1)]);
        let set = TrunkSet::new(
            vec![TrunkPolicy {
                allow: vec![regex::Regex::new(r"^(?:\+44\d+)$").unwrap()],
                ..policy("uk", 1)
            }],
            t0,
        );
        let mut set = set;
        let order = set.order("+15550000000", &mut first);
        assert_eq!(set.acquire(&order, &[], t0), Err(NoTrunk::NotAllowed));
    }

    #[test]
    fn acquire_skips_tried_and_down_trunks() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut set = TrunkSet::new(vec![pinged(policy("a", 1), 2, 1), policy("b", 2)], t0);
        let order = set.order("+1", &mut first);
        assert_eq!(set.acquire(&order, &[], t0), Ok(TrunkId(0)));
        // Failover: a is tried, b is next; then nothing is left.
        assert_eq!(set.acquire(&order, &[TrunkId(0)], t0), Ok(TrunkId(1)));
        assert_eq!(
            set.acquire(&order, &[TrunkId(0), TrunkId(1)], t0),
            Err(NoTrunk::NotAllowed)
        );
        assert_eq!(set.active(TrunkId(0)), 1);
        set.release(TrunkId(0));
        set.release(TrunkId(1));
        // a goes down after two failed pings: skipped, b takes the call.
        for k in 1..=2 {
            let ping = set.poll_ping(t0 + Duration::from_secs(100 * k)).unwrap();
            set.handle_ping(ping, false);
        }
        assert_eq!(
            set.poll_change(),
            Some(HealthChange {
                trunk: TrunkId(0),
                health: Health::Down
            })
        );
        assert_eq!(set.acquire(&order, &[], t0), Ok(TrunkId(1)));
        assert_eq!(set.active(TrunkId(0)), 0, "no call counted on a down trunk");
        assert_eq!(
            set.acquire(&order, &[TrunkId(1)], t0),
            Err(NoTrunk::AllDown)
        );
    }

    #[test]
    fn concurrent_limit_holds_until_release() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut a = policy("a", 1);
        a.max_calls = Some(2);
        let mut set = TrunkSet::new(vec![a], t0);
        let order = set.order("+1", &mut first);
        assert!(set.acquire(&order, &[], t0).is_ok());
        assert!(set.acquire(&order, &[], t0).is_ok());
        assert_eq!(
            set.acquire(&order, &[], t0),
            Err(NoTrunk::AtLimit { retry_at: None })
        );
        set.release(TrunkId(0));
        assert_eq!(set.acquire(&order, &[], t0), Ok(TrunkId(0)));
    }

    #[test]
    fn calls_per_second_are_paced_and_spill_to_the_next_trunk() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut a = policy("a", 1);
        a.max_cps = Some(4.0);
        let mut set = TrunkSet::new(vec![a.clone()], t0);
        let order = set.order("+1", &mut first);
        assert!(set.acquire(&order, &[], t0).is_ok());
        let next = t0 + Duration::from_millis(250);
        assert_eq!(
            set.acquire(&order, &[], t0 + Duration::from_millis(100)),
            Err(NoTrunk::AtLimit {
                retry_at: Some(next)
            })
        );
        assert!(set.acquire(&order, &[], next).is_ok());
        // With a second trunk, the call goes there instead of waiting.
        let mut set = TrunkSet::new(vec![a, policy("b", 2)], t0);
        assert_eq!(set.acquire(&order, &[], t0), Ok(TrunkId(0)));
        let order = set.order("+1", &mut first);
        assert_eq!(set.acquire(&order, &[], t0), Ok(TrunkId(1)));
        // 4 cps over 10 s of steady demand: 40 calls, never more.
        let mut set = TrunkSet::new(
            vec![TrunkPolicy {
                max_cps: Some(4.0),
                ..policy("a", 1)
            }],
            t0,
        );
        let mut n = 0;
        for ms in (0..10_000).step_by(10) {
            if set
                .acquire(&order[..1], &[], t0 + Duration::from_millis(ms))
                .is_ok()
            {
                n += 1;
            }
        }
        assert_eq!(n, 40);
    }

    /// The pace holds when every waiting dial wakes late: a tokio sleep
    /// ends on the next millisecond tick at best, later on a busy machine.
    /// Scheduling the next slot from the late start (as before) gave
    /// 1 / (gap + lateness): 68 calls/s at `max_cps = 100`.
    #[test]
    fn late_wake_ups_do_not_lower_the_calls_per_second() {
        let t0 = crate::sip::transaction::test_epoch();
        let order = [TrunkId(0)];
        for max_late_ms in [1u64, 3, 5, 9] {
            let mut set = TrunkSet::new(
                vec![TrunkPolicy {
                    max_cps: Some(100.0),
                    ..policy("a", 1)
                }],
                t0,
            );
            // One dial always waiting (steady demand), woken 0..=max_late
            // ms after the instant it was told (a fixed pseudo-random walk).
            let mut lcg: u64 = 7;
            let mut now = t0;
            let mut starts = Vec::new();
            while now < t0 + Duration::from_secs(10) {
                match set.acquire(&order, &[], now) {
                    Ok(id) => {
                        set.release(id);
                        starts.push(now);
                    }
                    Err(NoTrunk::AtLimit { retry_at: Some(at) }) => {
                        lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        let late = (lcg >> 33) % (max_late_ms * 1_000 + 1);
                        now = at + Duration::from_micros(late);
                    }
                    other => panic!("{other:?}"),
                }
            }
            // 10 s at 100 calls/s: 1,000 slots, less the last one or two.
            assert!(
                starts.len() >= 998,
                "late by up to {max_late_ms} ms: {} calls in 10 s",
                starts.len()
            );
            // Never more than the even pace's bound in any 1 s window.
            for (i, s) in starts.iter().enumerate() {
                let in_window = starts[i..]
                    .iter()
                    .take_while(|t| **t <= *s + Duration::from_secs(1))
                    .count();
                assert!(in_window <= 101, "{in_window} INVITEs in 1 s from {s:?}");
            }
        }
        // After an idle spell the schedule starts again from now: no burst
        // of the slots missed.
        let mut set = TrunkSet::new(
            vec![TrunkPolicy {
                max_cps: Some(100.0),
                ..policy("a", 1)
            }],
            t0,
        );
        assert!(set.acquire(&order, &[], t0).is_ok());
        let later = t0 + Duration::from_secs(5);
        assert!(set.acquire(&order, &[], later).is_ok());
        assert_eq!(
            set.acquire(&order, &[], later),
            Err(NoTrunk::AtLimit {
                retry_at: Some(later + Duration::from_millis(10))
            })
        );
    }

    #[test]
    fn waiting_dials_reserve_successive_slots_within_the_horizon() {
        let t0 = crate::sip::transaction::test_epoch();
        let order = [TrunkId(0), TrunkId(1)];
        let mut set = TrunkSet::new(
            vec![
                TrunkPolicy {
                    max_cps: Some(100.0),
                    ..policy("a", 1)
                },
                TrunkPolicy {
                    max_cps: Some(50.0),
                    ..policy("b", 2)
                },
            ],
            t0,
        );
        let h = Duration::from_millis(25);
        let ms = Duration::from_millis;
        // Now on each trunk, then the earliest slot of either, in turn.
        assert_eq!(set.reserve(&order, &[], t0, h), Ok((TrunkId(0), t0)));
        assert_eq!(set.reserve(&order, &[], t0, h), Ok((TrunkId(1), t0)));
        assert_eq!(
            set.reserve(&order, &[], t0, h),
            Ok((TrunkId(0), t0 + ms(10)))
        );
        assert_eq!(
            set.reserve(&order, &[], t0, h),
            Ok((TrunkId(0), t0 + ms(20)))
        );
        assert_eq!(
            set.reserve(&order, &[], t0, h),
            Ok((TrunkId(1), t0 + ms(20)))
        );
        // Beyond the horizon: wait for the next slot, none reserved.
        assert_eq!(
            set.reserve(&order, &[], t0, h),
            Err(NoTrunk::AtLimit {
                retry_at: Some(t0 + ms(30))
            })
        );
        assert_eq!(set.active(TrunkId(0)), 3);
        assert_eq!(set.active(TrunkId(1)), 2);
        // A dial that comes late for its reserved slot does not move the
        // next one.
        assert_eq!(
            set.reserve(&order[..1], &[], t0 + ms(29), h),
            Ok((TrunkId(0), t0 + ms(30)))
        );
        assert_eq!(
            set.reserve(&order[..1], &[], t0 + ms(33), h),
            Ok((TrunkId(0), t0 + ms(40)))
        );
        // A concurrent-calls limit is never waited for by reservation.
        let mut set = TrunkSet::new(
            vec![TrunkPolicy {
                max_cps: Some(100.0),
                max_calls: Some(1),
                ..policy("a", 1)
            }],
            t0,
        );
        assert!(set.reserve(&order[..1], &[], t0, h).is_ok());
        assert_eq!(
            set.reserve(&order[..1], &[], t0, h),
            Err(NoTrunk::AtLimit { retry_at: None })
        );
    }

    #[test]
    fn pings_mark_down_after_n_failures_and_up_after_m_successes() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut set = TrunkSet::new(vec![pinged(policy("a", 1), 3, 2)], t0);
        let id = TrunkId(0);
        let mut now = t0;
        assert_eq!(set.poll_timeout(), Some(now), "first ping at start");
        // Two failures (a 503, a timeout), a success: still up (in a row).
        let p1 = set.poll_ping(now).unwrap();
        assert_eq!(p1.trunk, id);
        assert_eq!(set.poll_ping(now), None, "one ping in flight per trunk");
        set.handle_ping(p1, ping_ok(503));
        now += Duration::from_secs(30);
        let p2 = set.poll_ping(now).unwrap();
        assert_eq!(set.poll_timeout(), Some(now + Duration::from_secs(5)));
        now += Duration::from_secs(5);
        set.handle_timeout(now);
        // A late answer to the timed-out ping is not counted.
        set.handle_ping(p2, true);
        assert_eq!(set.status()[0].failed_pings, 2);
        now += Duration::from_secs(25);
        let p3 = set.poll_ping(now).unwrap();
        // Nor is one that arrives while the next ping is in flight (the
        // old one's Timer F fires long after the interval).
        set.handle_ping(p2, false);
        set.handle_ping(p1, false);
        assert_eq!(set.status()[0].failed_pings, 2);
        set.handle_ping(p3, ping_ok(200));
        assert_eq!(set.status()[0].failed_pings, 0);
        assert_eq!(set.health(id), Health::Up);
        // Three failures in a row: down.
        for _ in 0..3 {
            now += Duration::from_secs(30);
            let p = set.poll_ping(now).unwrap();
            set.handle_ping(p, ping_ok(500));
        }
        assert_eq!(set.health(id), Health::Down);
        assert_eq!(
            set.poll_change(),
            Some(HealthChange {
                trunk: id,
                health: Health::Down
            })
        );
        assert_eq!(set.poll_change(), None);
        // A 405 is a live server; two in a row: up again.
        now += Duration::from_secs(30);
        let p = set.poll_ping(now).unwrap();
        set.handle_ping(p, ping_ok(405));
        assert_eq!(set.health(id), Health::Down);
        now += Duration::from_secs(30);
        let p = set.poll_ping(now).unwrap();
        set.handle_ping(p, ping_ok(200));
        assert_eq!(set.health(id), Health::Up);
        assert_eq!(
            set.poll_change(),
            Some(HealthChange {
                trunk: id,
                health: Health::Up
            })
        );
    }

    #[test]
    fn unpinged_trunks_are_never_pinged() {
        let t0 = crate::sip::transaction::test_epoch();
        let mut set = TrunkSet::new(vec![policy("demo", 1)], t0);
        assert_eq!(set.poll_timeout(), None);
        assert_eq!(set.poll_ping(t0 + Duration::from_secs(3600)), None);
        assert_eq!(set.health(TrunkId(0)), Health::Up);
    }
}
