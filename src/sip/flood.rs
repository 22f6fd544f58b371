//! Per-source limits against floods and scanners (SPEC §5: a server that
//! never falls over and never lets a stranger place calls).
//!
//! Every message that is not a response counts against its source
//! address; more than [`FloodConfig::requests`] within
//! [`FloodConfig::window`] bans the address for [`FloodConfig::ban`]
//! (defaults 16 per 2 s, then 300 s, the figures of Kamailio's `pike`
//! module as commonly deployed). A banned address is dropped without an
//! answer: an answer is what a scanner wants, and what an amplifier sends.
//! Requests whose `User-Agent` names a known scanner are dropped and their
//! address banned at once.
//!
//! Exempt: the trunks' addresses (a carrier's INVITE burst is business),
//! and `trusted_networks` (by default this host only: local proxies and
//! monitoring). An office behind one NAT address gets the limit once per
//! agent registered from that address, so twenty phones re-registering
//! together after a router restart are not banned; a stranger has no
//! binding and gets the base limit.
//!
//! Sans-IO: the caller passes `now`; memory is bounded by
//! [`MAX_TRACKED`] sources.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use ipnet::IpNet;

/// Sources counted at once: beyond it, expired entries go first, and if
/// none has expired a new source is not counted (memory stays bounded
/// under a spoofed-source flood; bans already made stay).
pub const MAX_TRACKED: usize = 65_536;

/// Bans kept at once (a ban for each of more addresses than this is an
/// attack from a whole network, which a firewall handles better).
pub const MAX_BANS: usize = 65_536;

/// User-Agent fragments of SIP scanners seen on the Internet (SIPVicious
/// and its forks, sipcli, sundayddr, iWar, smap, VaxSIP-based scanners).
/// Matched case-insensitively as substrings.
pub const DEFAULT_SCANNERS: &[&str] = &[
    "friendly-scanner",
    "sipvicious",
    "sipcli",
    "sip-scan",
    "sipscan",
    "iwar",
    "sundayddr",
    "vaxsipuseragent",
    "smap",
    "pplsip",
];

/// The limits (config `[security]`).
#[derive(Debug, Clone)]
pub struct FloodConfig {
    /// Requests allowed per source within `window`; 0 turns the limit off.
    pub requests: u32,
    /// The window requests are counted in.
    pub window: Duration,
    /// How long a source stays banned.
    pub ban: Duration,
    /// Networks never limited (trunks are added by the endpoint).
    pub trusted: Vec<IpNet>,
    /// User-Agent fragments whose requests are dropped (lowercase).
    pub scanner_user_agents: Vec<String>,
}

impl Default for FloodConfig {
    fn default() -> Self {
        FloodConfig {
            requests: 16,
            window: Duration::from_secs(2),
            ban: Duration::from_secs(300),
            trusted: vec![
                IpNet::from(IpAddr::from([127, 0, 0, 1])),
                IpNet::from(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
            ],
            scanner_user_agents: DEFAULT_SCANNERS.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Why an address is banned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BanReason {
    /// More requests than the limit allows.
    RateLimit,
    /// A request from a known scanner's User-Agent.
    Scanner,
}

impl BanReason {
    /// The label used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            BanReason::RateLimit => "rate_limit",
            BanReason::Scanner => "scanner",
        }
    }
}

/// One banned address.
#[derive(Debug, Clone, PartialEq)]
pub struct BanInfo {
    /// The address.
    pub address: IpAddr,
    /// Why.
    pub reason: BanReason,
    /// When the ban started (wall clock).
    pub since: SystemTime,
    /// When it ends (wall clock).
    pub until: SystemTime,
    /// Messages dropped since the ban started.
    pub dropped: u64,
}

/// What to do with a message from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Handle it.
    Pass,
    /// Drop it: the source is banned.
    Banned,
    /// Drop it: this message started a ban.
    NewBan(BanReason),
}

#[derive(Debug, Clone, Copy)]
struct Tally {
    since: Instant,
    count: u32,
    /// The allowance for this window, once the base limit was passed
    /// (the base times the agents registered from the address).
    allowance: Option<u32>,
}

#[derive(Debug, Clone, Copy)]
struct Ban {
    reason: BanReason,
    until: Instant,
    since_wall: SystemTime,
    until_wall: SystemTime,
    dropped: u64,
}

/// The per-source counters and bans.
#[derive(Debug)]
pub struct SourceGuard {
    cfg: FloodConfig,
    tallies: HashMap<IpAddr, Tally>,
    bans: HashMap<IpAddr, Ban>,
}

impl SourceGuard {
    /// A guard with `cfg`'s limits; `exempt` (the trunks) are added to the
    /// trusted networks.
    pub fn new(mut cfg: FloodConfig, exempt: &[IpAddr]) -> Self {
        cfg.trusted.extend(exempt.iter().copied().map(IpNet::from));
        for s in &mut cfg.scanner_user_agents {
            *s = s.to_ascii_lowercase();
        }
        SourceGuard {
            cfg,
            tallies: HashMap::new(),
            bans: HashMap::new(),
        }
    }

    /// Whether `ip` is never limited.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.cfg.trusted.iter().any(|n| n.contains(&ip))
    }

    /// Whether `ip` is banned at `now` (bans lapse by themselves).
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        self.bans.get(&canonical(ip)).is_some_and(|b| now < b.until)
    }

    /// A message that is not a response arrived from `ip`: counts it and
    /// says whether to handle it. `agents_at` tells how many agents are
    /// registered from `ip`; it is asked at most once per window, and only
    /// once the base limit is passed.
    pub fn admit(
        &mut self,
        ip: IpAddr,
        now: Instant,
        wall: SystemTime,
        agents_at: impl FnOnce() -> usize,
    ) -> Admit {
        let ip = canonical(ip);
        if let Some(b) = self.bans.get_mut(&ip) {
            if now < b.until {
                b.dropped += 1;
                return Admit::Banned;
            }
            self.bans.remove(&ip);
        }
        if self.cfg.requests == 0 || self.is_trusted(ip) {
            return Admit::Pass;
        }
        if !self.tallies.contains_key(&ip) && self.tallies.len() >= MAX_TRACKED {
            let window = self.cfg.window;
            self.tallies
                .retain(|_, t| now.duration_since(t.since) < window);
            if self.tallies.len() >= MAX_TRACKED {
                return Admit::Pass;
            }
        }
        let t = self.tallies.entry(ip).or_insert(Tally {
            since: now,
            count: 0,
            allowance: None,
        });
        if now.duration_since(t.since) >= self.cfg.window {
            *t = Tally {
                since: now,
                count: 0,
                allowance: None,
            };
        }
        t.count = t.count.saturating_add(1);
        if t.count <= self.cfg.requests {
            return Admit::Pass;
        }
        let base = self.cfg.requests;
        let allowance = *t.allowance.get_or_insert_with(|| {
            let agents = u32::try_from(agents_at()).unwrap_or(u32::MAX);
            base.saturating_mul(agents.max(1))
        });
        if t.count <= allowance {
            return Admit::Pass;
        }
        self.tallies.remove(&ip);
        self.ban(ip, BanReason::RateLimit, now, wall);
        Admit::NewBan(BanReason::RateLimit)
    }

    /// Whether `user_agent` names a known scanner.
    pub fn is_scanner(&self, user_agent: &str) -> bool {
        let ua = user_agent.to_ascii_lowercase();
        self.cfg
            .scanner_user_agents
            .iter()
            .any(|s| !s.is_empty() && ua.contains(s.as_str()))
    }

    /// Bans `ip` for the configured time (not a trusted address: a
    /// scanner's User-Agent from this host is dropped but not banned).
    /// Returns whether a new ban started.
    pub fn ban(&mut self, ip: IpAddr, reason: BanReason, now: Instant, wall: SystemTime) -> bool {
        let ip = canonical(ip);
        if self.is_trusted(ip) || self.is_banned(ip, now) {
            return false;
        }
        if self.bans.len() >= MAX_BANS {
            self.bans.retain(|_, b| now < b.until);
            if self.bans.len() >= MAX_BANS {
                return false;
            }
        }
        self.bans.insert(
            ip,
            Ban {
                reason,
                until: now + self.cfg.ban,
                since_wall: wall,
                until_wall: wall + self.cfg.ban,
                dropped: 0,
            },
        );
        true
    }

    /// Lifts the ban on `ip` (and forgets its count); whether there was one.
    pub fn unban(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical(ip);
        self.tallies.remove(&ip);
        self.bans.remove(&ip).is_some_and(|b| now < b.until)
    }

    /// The bans in force at `now`, oldest first.
    pub fn bans(&self, now: Instant) -> Vec<BanInfo> {
        let mut out: Vec<BanInfo> = self
            .bans
            .iter()
            .filter(|(_, b)| now < b.until)
            .map(|(ip, b)| BanInfo {
                address: *ip,
                reason: b.reason,
                since: b.since_wall,
                until: b.until_wall,
                dropped: b.dropped,
            })
            .collect();
        out.sort_by_key(|b| (b.since, b.address));
        out
    }

    /// How many bans are in force at `now`.
    pub fn ban_count(&self, now: Instant) -> usize {
        self.bans.values().filter(|b| now < b.until).count()
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address (a dual-stack
/// socket reports them so).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // one real instant as the simulated clock's origin
mod tests {
    use super::*;

    const STRANGER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9));

    fn guard() -> SourceGuard {
        SourceGuard::new(FloodConfig::default(), &[])
    }

    #[test]
    fn the_seventeenth_request_within_two_seconds_bans_for_five_minutes() {
        let mut g = guard();
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        for i in 0..16 {
            let at = t0 + Duration::from_millis(100 * i);
            assert_eq!(g.admit(STRANGER, at, w, || 0), Admit::Pass, "request {i}");
        }
        let at = t0 + Duration::from_millis(1_900);
        assert_eq!(
            g.admit(STRANGER, at, w, || 0),
            Admit::NewBan(BanReason::RateLimit)
        );
        assert!(g.is_banned(STRANGER, at));
        assert_eq!(g.admit(STRANGER, at, w, || 0), Admit::Banned);
        let bans = g.bans(at);
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].reason, BanReason::RateLimit);
        assert_eq!(bans[0].until, w + Duration::from_secs(300));
        assert_eq!(bans[0].dropped, 1);
        // One instant before the ban ends it holds; at the end it lifts.
        let end = at + Duration::from_secs(300);
        assert!(g.is_banned(STRANGER, end - Duration::from_millis(1)));
        assert_eq!(g.admit(STRANGER, end, w, || 0), Admit::Pass);
        assert_eq!(g.ban_count(end), 0);
    }

    #[test]
    fn a_steady_phone_is_never_banned() {
        let mut g = guard();
        let t0 = Instant::now();
        // Eight requests a second for ten minutes: half the limit.
        for i in 0..4_800u64 {
            let at = t0 + Duration::from_millis(125 * i);
            assert_eq!(
                g.admit(STRANGER, at, SystemTime::UNIX_EPOCH, || 0),
                Admit::Pass
            );
        }
    }

    #[test]
    fn an_office_nat_gets_the_limit_once_per_registered_agent() {
        let mut g = guard();
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let mut asked = 0;
        // Twenty phones re-register at once: two requests each (401, then
        // the authenticated REGISTER).
        for _ in 0..40 {
            let v = g.admit(STRANGER, t0, w, || {
                asked += 1;
                20
            });
            assert_eq!(v, Admit::Pass);
        }
        assert_eq!(asked, 1, "the registrar is asked once per window");
        // 320 allowed in the window; the 321st bans.
        for _ in 40..320 {
            assert_eq!(g.admit(STRANGER, t0, w, || 20), Admit::Pass);
        }
        assert_eq!(
            g.admit(STRANGER, t0, w, || 20),
            Admit::NewBan(BanReason::RateLimit)
        );
    }

    #[test]
    fn trusted_networks_and_trunks_are_never_limited_or_banned() {
        let trunk: IpAddr = "198.51.100.7".parse().unwrap();
        let mut g = SourceGuard::new(FloodConfig::default(), &[trunk]);
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        for ip in [trunk, "127.0.0.1".parse().unwrap(), "::1".parse().unwrap()] {
            for _ in 0..1_000 {
                assert_eq!(g.admit(ip, t0, w, || 0), Admit::Pass);
            }
            assert!(!g.ban(ip, BanReason::Scanner, t0, w));
        }
        // Another loopback address is not this host's default trust.
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        assert!(!g.is_trusted(other));
    }

    #[test]
    fn ipv4_mapped_addresses_are_the_same_source() {
        let mut g = guard();
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().unwrap();
        assert!(g.ban(mapped, BanReason::Scanner, t0, w));
        assert!(g.is_banned(STRANGER, t0));
        assert!(g.is_trusted("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn scanners_are_known_by_user_agent_case_insensitively() {
        let g = guard();
        assert!(g.is_scanner("friendly-scanner"));
        assert!(g.is_scanner("SIPVicious 0.3.4"));
        assert!(g.is_scanner("sipcli/v1.8"));
        assert!(!g.is_scanner("baresip v1.0.0 (x86_64/linux)"));
        assert!(!g.is_scanner("PJSUA v2.14 Linux"));
        assert!(!g.is_scanner(""));
    }

    #[test]
    fn unban_lifts_a_ban_and_the_count() {
        let mut g = guard();
        let t0 = Instant::now();
        let w = SystemTime::UNIX_EPOCH;
        assert!(g.ban(STRANGER, BanReason::Scanner, t0, w));
        assert!(
            !g.ban(STRANGER, BanReason::Scanner, t0, w),
            "already banned"
        );
        assert!(g.unban(STRANGER, t0));
        assert!(!g.unban(STRANGER, t0));
        assert_eq!(g.admit(STRANGER, t0, w, || 0), Admit::Pass);
    }

    #[test]
    fn a_zero_limit_turns_counting_off() {
        let mut g = SourceGuard::new(
            FloodConfig {
                requests: 0,
                ..FloodConfig::default()
            },
            &[],
        );
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(
                g.admit(STRANGER, t0, SystemTime::UNIX_EPOCH, || 0),
                Admit::Pass
            );
        }
    }

    #[test]
    fn memory_stays_bounded_under_a_spoofed_source_flood() {
        let mut g = guard();
        let t0 = Instant::now();
        for i in 0..(MAX_TRACKED as u32 + 1_000) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            g.admit(ip, t0, SystemTime::UNIX_EPOCH, || 0);
        }
        assert!(g.tallies.len() <= MAX_TRACKED);
    }
}
