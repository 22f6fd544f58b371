//! `GET /metrics` (SPEC §4): counters and gauges in the Prometheus /
//! OpenMetrics text format, for the people who run powerdial. One registry
//! for the process; the parts that count hold handles into it.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The label of a call's outcome (R8–R12).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `answered`, `no_answer`, `busy`, `skipped`, `temporary_error`,
    /// `restricted`.
    pub outcome: String,
}

/// The reason of a SIP source ban (`sip::flood`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BanLabel {
    /// `rate_limit` or `scanner`.
    pub reason: String,
}

/// The label of a carrier trunk (`[[trunk]] name`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrunkLabel {
    /// The trunk's name.
    pub trunk: String,
}

/// The labels of a session's queue size: the session and the leads' state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabel {
    /// The dialer session's id.
    pub session_id: String,
    /// `queued` (may be called now, R1/R3), `blocked` (R4),
    /// `awaiting_refresh` (R10), `calling` (R13), `answered` (R5).
    pub state: String,
}

/// Everything powerdial counts.
pub struct Metrics {
    registry: Registry,
    /// Lead calls ended, by outcome.
    pub calls: Family<OutcomeLabel, Counter>,
    /// Lead calls ringing or connected now.
    pub calls_in_progress: Gauge,
    /// Dials refused because the number is on the do-not-call list.
    pub dnc_refused: Counter,
    /// RTP packets dropped because they came from a host the signalling
    /// does not name (SPEC §5).
    pub rtp_stray_packets: Counter,
    /// Lead RTP packets that arrived before the dial's answer was applied,
    /// held for it (SPEC §5: judged by the latch once the answer names the
    /// media address).
    pub rtp_early_held_packets: Counter,
    /// Of those, packets dropped unjudged: held too long, over the bound,
    /// or the leg closed with no answer.
    pub rtp_early_dropped_packets: Counter,
    /// (username, address) pairs locked out after failed digest responses.
    pub sip_auth_lockouts: Counter,
    /// SIP source addresses banned, by reason (SPEC §5; `sip::flood`).
    pub sip_bans: Family<BanLabel, Counter>,
    /// SIP source addresses banned now.
    pub sip_banned_sources: Gauge,
    /// SIP messages dropped because their source is banned.
    pub sip_dropped_banned: Counter,
    /// SIP requests dropped because their User-Agent names a scanner.
    pub sip_dropped_scanner: Counter,
    /// New SIP requests answered 503 because the transaction table is full.
    pub sip_table_full: Counter,
    /// TCP connections refused because their address holds too many.
    pub sip_tcp_refused: Counter,
    /// TLS handshakes that failed or timed out (RFC 3261 §26.2).
    pub sip_tls_handshake_failures: Counter,
    /// TLS certificate reloads that took effect.
    pub sip_tls_reloads: Counter,
    /// SRTP packets from phones refused: failed authentication or replay
    /// (RFC 3711 §3.3).
    pub srtp_refused: Counter,
    /// Addresses refused after failed sign-ins to the HTTP API.
    pub http_signin_lockouts: Counter,
    /// Registrar binding changes committed to the database.
    pub registrations_saved: Counter,
    /// Binding changes waiting for the database.
    pub registrations_pending: Gauge,
    /// Registrar bindings live now (phones registered), read at each scrape.
    pub registrations_active: Gauge,
    /// Leads of each running session by queue state, read at each scrape.
    pub queue_leads: Family<QueueLabel, Gauge>,
    /// Failed digest responses from phones (wrong password or unknown user).
    pub sip_auth_failures: Counter,
    /// Seconds from the INVITE to the lead's final answer or the ring
    /// timeout (R8), per dialed call.
    pub ring_seconds: Histogram,
    /// Seconds from the lead's answer to its first packet at the agent
    /// (SPEC §6 answer → bridge).
    pub bridge_seconds: Histogram,
    /// Seconds from a lead's ring deadline (R8) to the ring timeout firing
    /// in the process (SPEC §6: the CANCEL within 10 ms).
    pub ring_timeout_late_seconds: Histogram,
    /// INVITEs sent to each trunk (one per lead call per trunk).
    pub trunk_attempts: Family<TrunkLabel, Counter>,
    /// Lead calls that failed on a trunk and went on to the next one.
    pub trunk_failovers: Family<TrunkLabel, Counter>,
    /// 1 while a trunk takes calls, 0 while its OPTIONS pings mark it down.
    pub trunk_up: Family<TrunkLabel, Gauge>,
    /// Lead calls on each trunk now.
    pub trunk_active_calls: Family<TrunkLabel, Gauge>,
    /// Bytes the allocator has handed out and not had back, read at each
    /// scrape ([`crate::allocator::heap_in_use_bytes`]; SPEC §6 memory per call, beside the
    /// RSS an operator sees).
    pub heap_bytes: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("powerdial");
    let calls = Family::<OutcomeLabel, Counter>::default();
    registry.register("calls", "Lead calls ended, by outcome", calls.clone());
    let calls_in_progress = Gauge::default();
    registry.register(
        "calls_in_progress",
        "Lead calls ringing or connected now",
        calls_in_progress.clone(),
    );
    let dnc_refused = Counter::default();
    registry.register(
        "dnc_refused",
        "Dials refused because the number is on the do-not-call list",
        dnc_refused.clone(),
    );
    let rtp_stray_packets = Counter::default();
    registry.register(
        "rtp_stray_packets",
        "RTP packets dropped because they came from a host the signalling does not name",
        rtp_stray_packets.clone(),
    );
    let rtp_early_held_packets = Counter::default();
    registry.register(
        "rtp_early_held_packets",
        "Lead RTP packets that arrived before the answer was applied, held for it",
        rtp_early_held_packets.clone(),
    );
    let rtp_early_dropped_packets = Counter::default();
    registry.register(
        "rtp_early_dropped_packets",
        "Lead RTP packets held for an answer and dropped unjudged (too long, over the bound, the leg closed)",
        rtp_early_dropped_packets.clone(),
    );
    let sip_auth_lockouts = Counter::default();
    registry.register(
        "sip_auth_lockouts",
        "Usernames locked out of an address after failed digest responses",
        sip_auth_lockouts.clone(),
    );
    let sip_bans = Family::<BanLabel, Counter>::default();
    registry.register(
        "sip_bans",
        "SIP source addresses banned, by reason",
        sip_bans.clone(),
    );
    let sip_banned_sources = Gauge::default();
    registry.register(
        "sip_banned_sources",
        "SIP source addresses banned now",
        sip_banned_sources.clone(),
    );
    let sip_dropped_banned = Counter::default();
    registry.register(
        "sip_dropped_banned",
        "SIP messages dropped because their source address is banned",
        sip_dropped_banned.clone(),
    );
    let sip_dropped_scanner = Counter::default();
    registry.register(
        "sip_dropped_scanner",
        "SIP requests dropped because their User-Agent names a scanner",
        sip_dropped_scanner.clone(),
    );
    let sip_table_full = Counter::default();
    registry.register(
        "sip_table_full",
        "New SIP requests answered 503 because the transaction table is full",
        sip_table_full.clone(),
    );
    let sip_tcp_refused = Counter::default();
    registry.register(
        "sip_tcp_refused",
        "SIP TCP connections refused because their address holds too many",
        sip_tcp_refused.clone(),
    );
    let sip_tls_handshake_failures = Counter::default();
    registry.register(
        "sip_tls_handshake_failures",
        "SIP TLS handshakes that failed or timed out",
        sip_tls_handshake_failures.clone(),
    );
    let sip_tls_reloads = Counter::default();
    registry.register(
        "sip_tls_reloads",
        "TLS certificate reloads that took effect",
        sip_tls_reloads.clone(),
    );
    let srtp_refused = Counter::default();
    registry.register(
        "srtp_refused",
        "SRTP packets from phones refused (authentication failed or replayed)",
        srtp_refused.clone(),
    );
    let http_signin_lockouts = Counter::default();
    registry.register(
        "http_signin_lockouts",
        "Addresses refused after failed sign-ins to the HTTP API",
        http_signin_lockouts.clone(),
    );
    let registrations_saved = Counter::default();
    registry.register(
        "registrations_saved",
        "Registrar binding changes committed to the database",
        registrations_saved.clone(),
    );
    let registrations_pending = Gauge::default();
    registry.register(
        "registrations_pending",
        "Registrar binding changes waiting for the database",
        registrations_pending.clone(),
    );
    let registrations_active = Gauge::default();
    registry.register(
        "registrations_active",
        "Registrar bindings live now (registered phones)",
        registrations_active.clone(),
    );
    let queue_leads = Family::<QueueLabel, Gauge>::default();
    registry.register(
        "queue_leads",
        "Leads of each running dialer session by queue state",
        queue_leads.clone(),
    );
    let sip_auth_failures = Counter::default();
    registry.register(
        "sip_auth_failures",
        "Failed digest responses from phones (wrong password or unknown user)",
        sip_auth_failures.clone(),
    );
    let ring_seconds = Histogram::new([1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0]);
    registry.register(
        "ring_seconds",
        "Seconds from the INVITE to the lead's answer, refusal or ring timeout",
        ring_seconds.clone(),
    );
    let bridge_seconds =
        Histogram::new([0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.05]);
    registry.register(
        "bridge_seconds",
        "Seconds from the lead's answer to its first packet at the agent",
        bridge_seconds.clone(),
    );
    let ring_timeout_late_seconds =
        Histogram::new([0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5]);
    registry.register(
        "ring_timeout_late_seconds",
        "Seconds from a lead's ring deadline to the ring timeout firing (the CANCEL follows)",
        ring_timeout_late_seconds.clone(),
    );
    let trunk_attempts = Family::<TrunkLabel, Counter>::default();
    registry.register(
        "trunk_attempts",
        "INVITEs sent to each carrier trunk (one per lead call per trunk)",
        trunk_attempts.clone(),
    );
    let trunk_failovers = Family::<TrunkLabel, Counter>::default();
    registry.register(
        "trunk_failovers",
        "Lead calls that failed on this trunk (transport, no response, 408, 5xx) and went on to the next",
        trunk_failovers.clone(),
    );
    let trunk_up = Family::<TrunkLabel, Gauge>::default();
    registry.register(
        "trunk_up",
        "1 while the trunk takes calls, 0 while its OPTIONS pings mark it down",
        trunk_up.clone(),
    );
    let trunk_active_calls = Family::<TrunkLabel, Gauge>::default();
    registry.register(
        "trunk_active_calls",
        "Lead calls on the trunk now",
        trunk_active_calls.clone(),
    );
    let heap_bytes = Gauge::default();
    registry.register(
        "heap_bytes",
        "Heap bytes in use (the server's jemalloc: stats.allocated; elsewhere glibc mallinfo2: arena chunks in use plus mmapped chunks), read at the scrape; 0 where unknown",
        heap_bytes.clone(),
    );
    Metrics {
        registry,
        heap_bytes,
        trunk_attempts,
        trunk_failovers,
        trunk_up,
        trunk_active_calls,
        sip_auth_failures,
        ring_seconds,
        bridge_seconds,
        ring_timeout_late_seconds,
        calls,
        calls_in_progress,
        dnc_refused,
        rtp_stray_packets,
        rtp_early_held_packets,
        rtp_early_dropped_packets,
        sip_auth_lockouts,
        http_signin_lockouts,
        sip_bans,
        sip_banned_sources,
        sip_dropped_banned,
        sip_dropped_scanner,
        sip_table_full,
        sip_tcp_refused,
        sip_tls_handshake_failures,
        sip_tls_reloads,
        srtp_refused,
        registrations_saved,
        registrations_pending,
        registrations_active,
        queue_leads,
    }
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Sets the queue-size gauges of the running sessions from their counts
/// (`(session id, [(state, leads)])`); sessions no longer running lose
/// their series.
pub fn set_queue_sizes(sessions: &[(i64, Vec<(&'static str, usize)>)]) {
    let family = &metrics().queue_leads;
    family.clear();
    for (id, counts) in sessions {
        for (state, n) in counts {
            family
                .get_or_create(&QueueLabel {
                    session_id: id.to_string(),
                    state: (*state).to_string(),
                })
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }
}

/// Sets [`Metrics::heap_bytes`] from
/// [`crate::allocator::heap_in_use_bytes`] (left at 0 where the allocator
/// cannot tell).
pub fn sample_heap() {
    if let Some(bytes) = crate::allocator::heap_in_use_bytes() {
        metrics()
            .heap_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }
}

/// The text exposition (OpenMetrics 1.0, which Prometheus scrapes).
pub fn render() -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, &metrics().registry).is_err() {
        out.clear();
    }
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_registered_families() {
        metrics()
            .calls
            .get_or_create(&OutcomeLabel {
                outcome: "answered".into(),
            })
            .inc();
        let text = render();
        assert!(
            text.contains("powerdial_calls_total{outcome=\"answered\"}"),
            "{text}"
        );
        assert!(text.contains("powerdial_rtp_stray_packets_total"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        set_queue_sizes(&[(41, vec![("queued", 3), ("blocked", 1)])]);
        let text = render();
        assert!(
            text.contains("powerdial_queue_leads{session_id=\"41\",state=\"queued\"} 3"),
            "{text}"
        );
    }

    /// The heap gauge is exported, set from the allocator.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn exports_the_heap_in_use() {
        let block = std::hint::black_box(vec![0u8; 8 << 20]);
        sample_heap();
        assert!(metrics().heap_bytes.get() >= 8 << 20);
        assert!(render().contains("powerdial_heap_bytes "), "{}", render());
        drop(block);
    }
}
