//! Configuration: `sip-config/powerdial.toml` (SPEC §4), with `POWERDIAL_*`
//! environment variables overriding file values, and embedded defaults so
//! `powerdial serve` runs with no file at all.
//!
//! Errors name the file, the line and the key, because the person reading
//! them is a phone-system admin editing a TOML file, not a Rust developer.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::sip::TransportKind;

/// What went wrong while loading or validating a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path given.
        file: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or a value of the wrong type, located in the file.
    #[error("{file}:{line}: {message}")]
    Syntax {
        /// The path given.
        file: String,
        /// 1-based line of the problem.
        line: usize,
        /// What the parser said, including the key.
        message: String,
    },
    /// A value that is well-formed TOML but not acceptable.
    #[error("{file}:{line}: `{key}`: {message}")]
    Invalid {
        /// The path given (or `environment` for an override).
        file: String,
        /// 1-based line of the key (0 when it came from the environment or a default).
        line: usize,
        /// The dotted key, e.g. `server.sip_listen`.
        key: String,
        /// Why it is refused and what is expected instead.
        message: String,
    },
}

/// A number of seconds, possibly fractional, so tests can shrink durations
/// (`ring_timeout = 2`, `block = 0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if !v.is_finite() || v < 0.0 {
            return Err(serde::de::Error::custom(format!(
                "a duration in seconds must be a non-negative number, got {v}"
            )));
        }
        Ok(Seconds(Duration::from_secs_f64(v)))
    }
}

/// One SIP listening socket: `udp:127.0.0.1:5060`, `tcp:[::1]:5060` or
/// `tls:0.0.0.0:5061` (RFC 3261 §26.2; needs the certificate files).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddr {
    /// UDP, TCP or TLS.
    pub transport: TransportKind,
    /// The local address to bind.
    pub addr: SocketAddr,
}

impl ListenAddr {
    /// Parses `udp:IP:PORT` / `tcp:IP:PORT` / `tls:IP:PORT`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (proto, rest) = s.split_once(':').ok_or_else(|| {
            format!("`{s}`: expected `udp:IP:PORT`, `tcp:IP:PORT` or `tls:IP:PORT`")
        })?;
        let transport = match proto.to_ascii_lowercase().as_str() {
            "udp" => TransportKind::Udp,
            "tcp" => TransportKind::Tcp,
            "tls" => TransportKind::Tls,
            other => {
                return Err(format!(
                    "`{s}`: unknown transport `{other}` (use udp, tcp or tls)"
                ))
            }
        };
        let addr = rest
            .parse()
            .map_err(|_| format!("`{s}`: `{rest}` is not an IP:PORT socket address"))?;
        Ok(ListenAddr { transport, addr })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)
    }
}

/// An inclusive range of UDP ports for RTP (`20000-29999`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub first: u16,
    /// Last port, inclusive.
    pub last: u16,
}

impl PortRange {
    /// Parses `FIRST-LAST`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}`: expected FIRST-LAST, e.g. 20000-29999"))?;
        let first: u16 = a
            .trim()
            .parse()
            .map_err(|_| format!("`{a}` is not a port number"))?;
        let last: u16 = b
            .trim()
            .parse()
            .map_err(|_| format!("`{b}` is not a port number"))?;
        if first == 0 || first > last {
            return Err(format!(
                "`{s}`: the range must be non-empty and start above 0"
            ));
        }
        Ok(PortRange { first, last })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    sip_listen: Vec<String>,
    http_listen: String,
    domain: String,
    media_ip: String,
    rtp_ports: String,
    data_dir: PathBuf,
    max_message_size: usize,
    tcp_idle_timeout: Seconds,
    drain_timeout: Seconds,
    t1: Seconds,
    t2: Seconds,
    t4: Seconds,
    digest_algorithms: Vec<String>,
    cors_origins: Vec<String>,
    tls_certificate: Option<PathBuf>,
    tls_private_key: Option<PathBuf>,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            sip_listen: vec!["udp:127.0.0.1:5060".into(), "tcp:127.0.0.1:5060".into()],
            http_listen: "127.0.0.1:8080".into(),
            domain: "127.0.0.1".into(),
            media_ip: "127.0.0.1".into(),
            rtp_ports: "20000-29999".into(),
            data_dir: PathBuf::from("data"),
            max_message_size: 16 * 1024,
            tcp_idle_timeout: Seconds(Duration::from_secs(300)),
            drain_timeout: Seconds(Duration::from_secs(30)),
            t1: Seconds(Duration::from_millis(500)),
            t2: Seconds(Duration::from_secs(4)),
            t4: Seconds(Duration::from_secs(5)),
            // MD5 alone by default: phones in the field (baresip 1.0, SIPp,
            // desk phones that predate RFC 8760) fail to register when a
            // 401 offers SHA-256 at all, even as a second challenge.
            // SHA-256 is opt-in (`["SHA-256", "MD5"]`); see the README.
            digest_algorithms: vec!["MD5".into()],
            cors_origins: Vec::new(),
            tls_certificate: None,
            tls_private_key: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDatabase {
    url: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLeads {
    default_region: String,
}

impl Default for RawLeads {
    fn default() -> Self {
        RawLeads {
            default_region: "US".into(),
        }
    }
}

/// A carrier trunk (`[[trunk]]`): where lead legs go.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// A name for logs and the API.
    pub name: String,
    /// The trunk's SIP URI, e.g. `sip:127.0.0.1:5080` (`;transport=tcp` allowed).
    pub uri: String,
    /// The caller ID (E.164) put in From.
    pub caller_id: String,
    /// Digest username when the carrier challenges.
    #[serde(default)]
    pub username: Option<String>,
    /// Digest password when the carrier challenges.
    #[serde(default)]
    pub password: Option<String>,
    /// Regular expressions over E.164 numbers this trunk may dial; empty = any.
    #[serde(default)]
    pub allow: Vec<String>,
    /// A `P-Asserted-Identity` to send, when the carrier wants one.
    #[serde(default)]
    pub p_asserted_identity: Option<String>,
    /// Trunks are tried by ascending priority (RFC 2782); by default the
    /// trunk's position in the file (1, 2, …), so the first is tried first.
    #[serde(default)]
    pub priority: Option<u32>,
    /// Trunks of one priority share its calls by weight (RFC 2782), ≥ 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Most INVITEs per second on this trunk (fractions allowed); none by default.
    #[serde(default)]
    pub max_cps: Option<f64>,
    /// Most lead calls at once on this trunk; none by default.
    #[serde(default)]
    pub max_calls: Option<u32>,
    /// No response at all to the INVITE (not even 100 Trying) within this
    /// → the next trunk is tried (default 5 s).
    #[serde(default = "default_response_timeout")]
    pub response_timeout: Seconds,
    /// OPTIONS ping interval; 0 turns pings off. Default 30 s when two or
    /// more trunks are configured; off for a single trunk and for `demo:`.
    #[serde(default)]
    pub options_interval: Option<Seconds>,
    /// A ping without a final response within this failed (default 5 s).
    #[serde(default = "default_options_timeout")]
    pub options_timeout: Seconds,
    /// Failed pings in a row (timeout, transport error, 408, 5xx) that mark
    /// the trunk down (default 3).
    #[serde(default = "default_down_after")]
    pub down_after: u32,
    /// Good pings in a row that mark a down trunk up again (default 2).
    #[serde(default = "default_up_after")]
    pub up_after: u32,
    /// RFC 4028 session timer offered in every INVITE to this trunk
    /// (`Supported: timer`, `Session-Expires: N;refresher=uac`), whole
    /// seconds, at least 90 (Min-SE); 0 offers none. When the carrier's
    /// 200 OK takes it, powerdial re-INVITEs every N/2 s and a carrier
    /// that stops hearing refreshes (powerdial crashed) drops the call
    /// after N s; a refresh answered 481/408 ends the call. Default 1800.
    #[serde(default = "default_session_expires")]
    pub session_expires: u32,
    /// In-dialog OPTIONS to the trunk on every answered call, every this
    /// many seconds (RFC 3261 §11); 0 sends none. A 481 (the carrier no
    /// longer has the call) ends the call; a 408 or no answer ends it
    /// with a BYE. Default 60 s for a `sip:` trunk, off for `demo:`.
    #[serde(default)]
    pub keepalive_interval: Option<Seconds>,
}

fn default_weight() -> u32 {
    1
}
fn default_response_timeout() -> Seconds {
    Seconds(Duration::from_secs(5))
}
fn default_options_timeout() -> Seconds {
    Seconds(Duration::from_secs(5))
}
fn default_down_after() -> u32 {
    3
}
fn default_up_after() -> u32 {
    2
}
fn default_session_expires() -> u32 {
    1800
}

/// The default `[[trunk]] keepalive_interval` of a `sip:` trunk. A call the
/// carrier lost is otherwise found only by the session timer (a refresh at
/// half of `session_expires`: 15 min by default, and only when the carrier
/// takes the timer) or never; one OPTIONS a minute bounds what a lost call
/// costs to a minute plus Timer F (32 s) at a cost of one small request
/// per call-minute (5/s at 300 calls up), the order of the in-dialog
/// keepalives SBCs send.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(60);

/// The default `[[trunk]] options_interval` of a `sip:` trunk.
pub const DEFAULT_OPTIONS_INTERVAL: Duration = Duration::from_secs(30);

impl TrunkConfig {
    /// A trunk named `name` at `uri` with every optional key at its default.
    pub fn new(name: &str, uri: &str, caller_id: &str) -> TrunkConfig {
        TrunkConfig {
            name: name.into(),
            uri: uri.into(),
            caller_id: caller_id.into(),
            username: None,
            password: None,
            allow: Vec::new(),
            p_asserted_identity: None,
            priority: None,
            weight: default_weight(),
            max_cps: None,
            max_calls: None,
            response_timeout: default_response_timeout(),
            options_interval: None,
            options_timeout: default_options_timeout(),
            down_after: default_down_after(),
            up_after: default_up_after(),
            session_expires: default_session_expires(),
            keepalive_interval: None,
        }
    }

    /// The in-dialog OPTIONS interval of answered calls, `None` when off
    /// (`0`, or the `demo:` trunk by default).
    pub fn keepalive(&self) -> Option<Duration> {
        match self.keepalive_interval {
            Some(Seconds(d)) if d.is_zero() => None,
            Some(Seconds(d)) => Some(d),
            None if self.uri == crate::call::demo::DEMO_URI => None,
            None => Some(DEFAULT_KEEPALIVE_INTERVAL),
        }
    }

    /// The OPTIONS ping interval, `None` when pings are off (`0`, or the
    /// `demo:` trunk by default).
    pub fn ping_interval(&self) -> Option<Duration> {
        match self.options_interval {
            Some(Seconds(d)) if d.is_zero() => None,
            Some(Seconds(d)) => Some(d),
            None if self.uri == crate::call::demo::DEMO_URI => None,
            None => Some(DEFAULT_OPTIONS_INTERVAL),
        }
    }
}

impl fmt::Debug for TrunkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The password never reaches a log.
        f.debug_struct("TrunkConfig")
            .field("name", &self.name)
            .field("uri", &self.uri)
            .field("caller_id", &self.caller_id)
            .field("username", &self.username)
            .field("allow", &self.allow)
            .field("priority", &self.priority)
            .field("weight", &self.weight)
            .field("max_cps", &self.max_cps)
            .field("max_calls", &self.max_calls)
            .finish_non_exhaustive()
    }
}

/// An agent (`[[agent]]`): a SIP phone user that registers with digest auth.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The SIP username (the user part of the AOR) and digest username.
    pub username: String,
    /// The digest password. Turned into HA1 at start-up; never logged.
    pub password: String,
    /// Shown in the console.
    #[serde(default)]
    pub display_name: Option<String>,
}

impl fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentConfig")
            .field("username", &self.username)
            .field("display_name", &self.display_name)
            .finish_non_exhaustive()
    }
}

/// Dialer timings (SPEC §2); seconds, fractions allowed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DialerConfig {
    /// R8: ring timeout from the INVITE to the trunk.
    pub ring_timeout: Seconds,
    /// R8: ring timeout with the session's "reduced ring time" on.
    pub reduced_ring_timeout: Seconds,
    /// R4: a lead is not called twice within this.
    pub block: Seconds,
    /// R6: the view is re-read at least this often.
    pub refresh_interval: Seconds,
    /// Wrap-up: move on after this long without typing heartbeats.
    pub wrap_up_idle: Seconds,
    /// A hard maximum length of one call.
    pub max_call_length: Seconds,
    /// An answered lead leg whose RTP stops this long is hung up; an agent
    /// leg's ends as if the phone hung up (the agent pauses). Held legs
    /// (`a=sendonly`/`inactive`) are exempt. Read by the media relay.
    pub rtp_timeout: Seconds,
    /// Allows `ring_timeout` / `reduced_ring_timeout` below
    /// [`RING_FLOOR`]: for tests that shrink durations, never for dialing
    /// real people.
    pub allow_short_ring_timeout: bool,
    /// When a lead answers, tell the agent's phone whom it talks to with a
    /// page-mode MESSAGE (RFC 3428), for desk phones without a screen
    /// nearby; `false` for phones that ring or beep on every MESSAGE.
    pub lead_on_phone: bool,
    /// When every trunk that may dial a number is at its `max_calls` or
    /// `max_cps`, how long a dial waits for one to free before it is
    /// refused (the lead stays queued, the agent is paused). 0: no wait.
    pub trunk_wait: Seconds,
    /// Calling hours in each lead's local time (SPEC §4), `{ start =
    /// "08:00", end = "21:00" }`; a session's own `calling_hours` replaces
    /// it. `end = "24:00"` runs to midnight.
    pub calling_hours: crate::dialer::hours::Window,
    /// Local dates (`YYYY-MM-DD`) on which no lead is called.
    pub holidays: Vec<String>,
    /// What a caller calling one of our caller IDs gets when no agent is
    /// free (SPEC §1 "Leads calling back"): `"busy"` (486 Busy Here, the
    /// carrier plays its busy tone) or `"unavailable"` (480 Temporarily
    /// Unavailable, many carriers offer their voicemail then).
    pub callback_fallback: CallbackFallback,
    /// Local presence: caller IDs (E.164) from which each lead is called
    /// with the one of its NANP area code, else of its country; none
    /// matching, the session's caller ID, else the trunk's. Calls to these
    /// numbers are callbacks too.
    pub caller_id_pool: Vec<String>,
}

/// `dialer.callback_fallback`: the answer to a callback no agent can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackFallback {
    /// 486 Busy Here (RFC 3261 §21.4.24).
    #[default]
    Busy,
    /// 480 Temporarily Unavailable (RFC 3261 §21.4.18).
    Unavailable,
}

impl CallbackFallback {
    /// The SIP status sent to the carrier.
    pub fn status(self) -> u16 {
        match self {
            CallbackFallback::Busy => 486,
            CallbackFallback::Unavailable => 480,
        }
    }
}

/// The shortest ring a lead gets unless `dialer.allow_short_ring_timeout`
/// is set: a phone answered after 3–4 rings must still reach an agent, and
/// regulators count shorter rings as abandoned calls (the FCC's TCPA rules
/// ask for at least 15 s or four rings).
pub const RING_FLOOR: Duration = Duration::from_secs(15);

impl Default for DialerConfig {
    fn default() -> Self {
        DialerConfig {
            ring_timeout: Seconds(Duration::from_secs(32)),
            reduced_ring_timeout: Seconds(Duration::from_secs(20)),
            block: Seconds(Duration::from_secs(3600)),
            refresh_interval: Seconds(Duration::from_secs(300)),
            wrap_up_idle: Seconds(Duration::from_secs(3)),
            max_call_length: Seconds(Duration::from_secs(4 * 3600)),
            rtp_timeout: Seconds(Duration::from_secs(60)),
            allow_short_ring_timeout: false,
            lead_on_phone: true,
            trunk_wait: Seconds(Duration::from_secs(5)),
            calling_hours: crate::dialer::hours::Window::DEFAULT,
            holidays: Vec::new(),
            callback_fallback: CallbackFallback::Busy,
            caller_id_pool: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    database: RawDatabase,
    admin: RawAdmin,
    leads: RawLeads,
    trunk: Vec<TrunkConfig>,
    agent: Vec<AgentConfig>,
    dialer: DialerConfig,
    security: RawSecurity,
    recording: RecordingConfig,
}

/// `[recording]`: what happens to call recordings (SPEC §4 session
/// `record`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingConfig {
    /// Recordings older than this many days are deleted from
    /// `<data_dir>/recordings/` (checked hourly); 0 keeps them forever.
    pub retention_days: u32,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig { retention_days: 90 }
    }
}

/// `[security]`: the SIP front door's limits (SPEC §5; `sip::flood`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSecurity {
    /// Requests per source address within `rate_window`; 0 = no limit.
    rate_limit: u32,
    rate_window: Seconds,
    ban_time: Seconds,
    /// Addresses or networks (CIDR) never limited.
    trusted_networks: Vec<String>,
    scanner_user_agents: Vec<String>,
    max_tcp_connections_per_address: usize,
    max_transactions: usize,
    srtp: String,
}

impl Default for RawSecurity {
    fn default() -> Self {
        let f = crate::sip::flood::FloodConfig::default();
        RawSecurity {
            rate_limit: f.requests,
            rate_window: Seconds(f.window),
            ban_time: Seconds(f.ban),
            trusted_networks: f.trusted.iter().map(|n| n.to_string()).collect(),
            scanner_user_agents: f.scanner_user_agents,
            max_tcp_connections_per_address: 32,
            max_transactions: 500_000,
            srtp: "optional".into(),
        }
    }
}

/// The validated configuration the server runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// SIP sockets to listen on.
    pub sip_listen: Vec<ListenAddr>,
    /// The admin HTTP API's address.
    pub http_listen: SocketAddr,
    /// SIP domain and digest realm of the agents.
    pub domain: String,
    /// The address written into SDP.
    pub media_ip: IpAddr,
    /// RTP port range.
    pub rtp_ports: PortRange,
    /// Where the embedded database and other state live.
    pub data_dir: PathBuf,
    /// Largest SIP message accepted (bytes); larger ones get 413 or are dropped.
    pub max_message_size: usize,
    /// A TCP connection idle this long is closed.
    pub tcp_idle_timeout: Duration,
    /// On SIGTERM, how long connected calls may go on before powerdial
    /// hangs them up and exits (a second SIGTERM ends them at once).
    pub drain_timeout: Duration,
    /// RFC 3261 timer values (T1, T2, T4).
    pub sip_timers: SipTimers,
    /// Digest algorithms offered to phones, preferred first (RFC 8760).
    pub digest_algorithms: Vec<crate::sip::digest::Algorithm>,
    /// Web origins (`https://crm.example.com`) whose pages may call the
    /// HTTP API from a browser (CORS); none by default, so browsers refuse
    /// cross-origin calls.
    pub cors_origins: Vec<String>,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Bearer token for the admin API; `None` means the API refuses every request.
    pub admin_token: Option<String>,
    /// Region for phone numbers written without `+country`.
    pub default_region: String,
    /// Carrier trunks.
    pub trunks: Vec<TrunkConfig>,
    /// Agents from the config file.
    pub agents: Vec<AgentConfig>,
    /// Dialer timings.
    pub dialer: DialerConfig,
    /// The SIP front door's limits (`[security]`).
    pub security: SecurityConfig,
    /// Call recordings (`[recording]`).
    pub recording: RecordingConfig,
    /// Certificate and key of the `tls:` listeners (`server.tls_certificate`,
    /// `server.tls_private_key`), when any is configured.
    pub tls: Option<crate::sip::transport::TlsFiles>,
}

/// `[security]`, validated: per-source limits and bans, scanner drops,
/// connection and transaction caps (SPEC §5).
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    /// Request limit, window, ban time, trusted networks, scanners.
    pub flood: crate::sip::flood::FloodConfig,
    /// TCP connections one address may hold at once.
    pub max_tcp_connections_per_address: usize,
    /// Server transactions held at once (503 with Retry-After beyond).
    pub max_transactions: usize,
    /// SRTP on agent legs (`security.srtp`).
    pub srtp: SrtpPolicy,
}

/// When agent legs use SRTP with SDES keys (RFC 4568). SDES keys travel in
/// the SDP, so they are only offered or accepted over TLS: on a UDP or
/// TCP leg they would be readable by whoever can read the audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpPolicy {
    /// Phones on TLS are offered SRTP; one that declines gets plain RTP.
    #[default]
    Optional,
    /// Phones on TLS must take SRTP; phones off TLS cannot be called.
    Required,
    /// Never: plain RTP everywhere.
    Off,
}

/// RFC 3261 §17 base timer values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipTimers {
    /// RTT estimate (500 ms).
    pub t1: Duration,
    /// Maximum retransmit interval for non-INVITE requests and INVITE responses (4 s).
    pub t2: Duration,
    /// Maximum duration a message remains in the network (5 s).
    pub t4: Duration,
}

/// Keys whose values are always strings, so an override like
/// `POWERDIAL_ADMIN_TOKEN=12345` is not read as a number.
const STRING_KEYS: &[&str] = &[
    "server.http_listen",
    "server.domain",
    "server.media_ip",
    "server.rtp_ports",
    "server.data_dir",
    "server.tls_certificate",
    "server.tls_private_key",
    "database.url",
    "admin.token",
    "leads.default_region",
];

const SECTIONS: &[&str] = &[
    "server",
    "database",
    "admin",
    "leads",
    "dialer",
    "recording",
];

impl Config {
    /// Our caller IDs (every `[[trunk]] caller_id` and the
    /// `dialer.caller_id_pool`): a call from a trunk
    /// to one of them is a lead calling back (SPEC §1).
    pub fn callback_numbers(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .trunks
            .iter()
            .map(|t| t.caller_id.trim().to_string())
            .chain(
                self.dialer
                    .caller_id_pool
                    .iter()
                    .map(|n| n.trim().to_string()),
            )
            .filter(|n| !n.is_empty())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The embedded defaults (no file), with environment overrides applied.
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_toml_str("", "<defaults>", std::env::vars())
    }

    /// Loads a file, applies environment overrides and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.display().to_string(),
            source,
        })?;
        Self::from_toml_str(&text, &path.display().to_string(), std::env::vars())
    }

    /// Parses TOML text (named `file` in errors), applies the `POWERDIAL_*`
    /// overrides found in `env`, and validates.
    pub fn from_toml_str(
        text: &str,
        file: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(0);
            ConfigError::Syntax {
                file: file.to_string(),
                line,
                message: e.message().to_string(),
            }
        })?;
        // Type errors carry a span only when deserialised from the text itself.
        if let Err(e) = toml::from_str::<RawConfig>(text) {
            let message = e.message().to_string();
            let line = e
                .span()
                .map(|s| line_of(text, s.start))
                .or_else(|| guess_line(text, &message))
                .unwrap_or(0);
            return Err(ConfigError::Syntax {
                file: file.to_string(),
                line,
                message,
            });
        }
        let overridden = apply_env(&mut table, env)?;
        let raw: RawConfig = RawConfig::deserialize(toml::Value::Table(table)).map_err(|e| {
            // serde's message names the key; find the line of the first key it names.
            let message = e.message().to_string();
            let line = e
                .span()
                .map(|s| line_of(text, s.start))
                .or_else(|| guess_line(text, &message))
                .unwrap_or(0);
            ConfigError::Syntax {
                file: file.to_string(),
                line,
                message,
            }
        })?;
        let locate = |section: &str, key: &str| -> (String, usize) {
            let dotted = format!("{section}.{key}");
            if overridden.contains_key(&dotted) {
                ("environment".to_string(), 0)
            } else {
                (
                    file.to_string(),
                    find_key_line(text, section, key).unwrap_or(0),
                )
            }
        };
        let invalid = |section: &str, key: &str, message: String| {
            let (file, line) = locate(section, key);
            ConfigError::Invalid {
                file,
                line,
                key: format!("{section}.{key}"),
                message,
            }
        };
        Self::validate(raw, &invalid)
    }

    fn validate(
        mut raw: RawConfig,
        invalid: &dyn Fn(&str, &str, String) -> ConfigError,
    ) -> Result<Config, ConfigError> {
        let security = Self::validate_security(&raw.security, invalid)?;
        let s = raw.server;
        if s.sip_listen.is_empty() {
            return Err(invalid(
                "server",
                "sip_listen",
                "at least one `udp:IP:PORT` or `tcp:IP:PORT` is needed".into(),
            ));
        }
        let sip_listen = s
            .sip_listen
            .iter()
            .map(|l| ListenAddr::parse(l))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| invalid("server", "sip_listen", m))?;
        let tls = Self::validate_tls(&s, &sip_listen, invalid)?;
        let http_listen = s.http_listen.parse().map_err(|_| {
            invalid(
                "server",
                "http_listen",
                format!("`{}` is not an IP:PORT socket address", s.http_listen),
            )
        })?;
        if s.domain.trim().is_empty() {
            return Err(invalid("server", "domain", "must not be empty".into()));
        }
        let media_ip = s.media_ip.parse().map_err(|_| {
            invalid(
                "server",
                "media_ip",
                format!("`{}` is not an IP address", s.media_ip),
            )
        })?;
        let rtp_ports =
            PortRange::parse(&s.rtp_ports).map_err(|m| invalid("server", "rtp_ports", m))?;
        if !(1024..=65535).contains(&s.max_message_size) {
            return Err(invalid(
                "server",
                "max_message_size",
                "must be between 1024 and 65535 bytes".into(),
            ));
        }
        if s.t1.0.is_zero() || s.t2.0 < s.t1.0 {
            return Err(invalid("server", "t2", "need 0 < t1 <= t2".into()));
        }
        for o in &s.cors_origins {
            let rest = o
                .strip_prefix("https://")
                .or_else(|| o.strip_prefix("http://"))
                .unwrap_or("");
            if rest.is_empty() || rest.contains('/') || rest.contains('*') {
                return Err(invalid(
                    "server",
                    "cors_origins",
                    format!("`{o}` is not an origin: write scheme://host[:port], e.g. \"https://crm.example.com\" (no path, no wildcard)"),
                ));
            }
        }
        if s.digest_algorithms.is_empty() {
            return Err(invalid(
                "server",
                "digest_algorithms",
                "offer at least one of \"SHA-256\", \"MD5\"".into(),
            ));
        }
        let digest_algorithms = s
            .digest_algorithms
            .iter()
            .map(|a| {
                crate::sip::digest::Algorithm::parse(a).map_err(|_| {
                    invalid(
                        "server",
                        "digest_algorithms",
                        format!("`{a}` is not a supported digest algorithm (use \"SHA-256\" or \"MD5\")"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let database_url = raw.database.url.unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                s.data_dir.join("powerdial.db").to_string_lossy()
            )
        });
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "database",
                "url",
                "use sqlite://PATH or postgres://USER@HOST/DB".into(),
            ));
        }
        let mut seen = BTreeMap::new();
        for (i, a) in raw.agent.iter().enumerate() {
            let ok = !a.username.is_empty()
                && a.username
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c));
            if !ok {
                return Err(invalid(
                    "agent",
                    "username",
                    format!(
                        "agent #{}: `{}` is not a valid SIP user name",
                        i + 1,
                        a.username
                    ),
                ));
            }
            if a.password.is_empty() {
                return Err(invalid(
                    "agent",
                    "password",
                    format!("agent `{}` has an empty password", a.username),
                ));
            }
            if seen.insert(a.username.clone(), i).is_some() {
                return Err(invalid(
                    "agent",
                    "username",
                    format!("agent `{}` is defined twice", a.username),
                ));
            }
        }
        // OPTIONS pings are on by default only where a down trunk can be
        // skipped for another: with a single trunk a down mark could only
        // refuse calls that might still go through, and the demo trunk
        // lives in this process.
        let several = raw.trunk.len() >= 2;
        for t in &mut raw.trunk {
            if t.options_interval.is_none() && (!several || t.uri == crate::call::demo::DEMO_URI) {
                t.options_interval = Some(Seconds(Duration::ZERO));
            }
        }
        let mut trunk_names = BTreeMap::new();
        for (i, t) in raw.trunk.iter().enumerate() {
            validate_trunk(i, t, invalid)?;
            if trunk_names.insert(t.name.clone(), i).is_some() {
                return Err(invalid(
                    "trunk",
                    "name",
                    format!("trunk `{}` is defined twice: names tell trunks apart in logs, metrics and the API", t.name),
                ));
            }
        }
        for t in &raw.trunk {
            if !t.uri.starts_with("sip:") && t.uri != crate::call::demo::DEMO_URI {
                return Err(invalid(
                    "trunk",
                    "uri",
                    format!(
                        "trunk `{}`: `{}` is not a sip: URI (or \"demo:\" for the built-in demo trunk)",
                        t.name, t.uri
                    ),
                ));
            }
            if t.username.is_some() != t.password.is_some() {
                return Err(invalid(
                    "trunk",
                    "password",
                    format!(
                        "trunk `{}`: give both username and password, or neither",
                        t.name
                    ),
                ));
            }
        }
        let d = &raw.dialer;
        for (key, v) in [
            ("ring_timeout", d.ring_timeout),
            ("reduced_ring_timeout", d.reduced_ring_timeout),
            ("refresh_interval", d.refresh_interval),
            ("max_call_length", d.max_call_length),
            ("rtp_timeout", d.rtp_timeout),
        ] {
            if v.0.is_zero() {
                return Err(invalid("dialer", key, "must be greater than 0".into()));
            }
        }
        for (key, v) in [
            ("ring_timeout", d.ring_timeout),
            ("reduced_ring_timeout", d.reduced_ring_timeout),
        ] {
            if v.0 < RING_FLOOR && !d.allow_short_ring_timeout {
                return Err(invalid(
                    "dialer",
                    key,
                    format!(
                        "{} s is below the {} s ring floor: leads who pick up after a few rings would be missed; \
                         set `dialer.allow_short_ring_timeout = true` only for tests",
                        v.0.as_secs_f64(),
                        RING_FLOOR.as_secs()
                    ),
                ));
            }
        }
        crate::dialer::hours::parse_holidays(&d.holidays)
            .map_err(|e| invalid("dialer", "holidays", e.to_string()))?;
        crate::call::caller_id::CallerIdPool::new(&d.caller_id_pool).map_err(|n| {
            invalid(
                "dialer",
                "caller_id_pool",
                format!(
                    "{n:?} is not an E.164 number (+ and the country code, e.g. \"+14155550100\")"
                ),
            )
        })?;
        Ok(Config {
            sip_listen,
            http_listen,
            domain: s.domain,
            media_ip,
            rtp_ports,
            data_dir: s.data_dir,
            max_message_size: s.max_message_size,
            tcp_idle_timeout: s.tcp_idle_timeout.0,
            drain_timeout: s.drain_timeout.0,
            sip_timers: SipTimers {
                t1: s.t1.0,
                t2: s.t2.0,
                t4: s.t4.0,
            },
            digest_algorithms,
            cors_origins: s.cors_origins,
            database_url,
            admin_token: raw.admin.token.filter(|t| !t.is_empty()),
            default_region: raw.leads.default_region,
            trunks: raw.trunk,
            agents: raw.agent,
            dialer: raw.dialer,
            security,
            recording: raw.recording,
            tls,
        })
    }

    /// The certificate files, required with a `tls:` address and read now,
    /// so a wrong path or key fails at start naming its key.
    fn validate_tls(
        s: &RawServer,
        listen: &[ListenAddr],
        invalid: &dyn Fn(&str, &str, String) -> ConfigError,
    ) -> Result<Option<crate::sip::transport::TlsFiles>, ConfigError> {
        if !listen.iter().any(|l| l.transport == TransportKind::Tls) {
            return Ok(None);
        }
        let (Some(certificate), Some(private_key)) = (&s.tls_certificate, &s.tls_private_key)
        else {
            let key = if s.tls_certificate.is_none() {
                "tls_certificate"
            } else {
                "tls_private_key"
            };
            return Err(invalid(
                "server",
                key,
                "a `tls:` address in server.sip_listen needs the PEM certificate chain (tls_certificate) and its private key (tls_private_key)".into(),
            ));
        };
        let files = crate::sip::transport::TlsFiles {
            certificate: certificate.clone(),
            private_key: private_key.clone(),
        };
        if let Err(e) = files.load() {
            let key = match &e {
                crate::sip::transport::TlsError::Read { key, .. }
                | crate::sip::transport::TlsError::NoPem { key, .. } => key,
                crate::sip::transport::TlsError::BadKey { .. } => &"server.tls_private_key",
            };
            let short = key.trim_start_matches("server.");
            // The error names its key; the location prefix names it too.
            let text = e.to_string();
            let message = text
                .strip_prefix(*key)
                .and_then(|m| m.strip_prefix(": "))
                .unwrap_or(&text)
                .to_string();
            return Err(invalid("server", short, message));
        }
        Ok(Some(files))
    }

    fn validate_security(
        r: &RawSecurity,
        invalid: &dyn Fn(&str, &str, String) -> ConfigError,
    ) -> Result<SecurityConfig, ConfigError> {
        let mut trusted = Vec::with_capacity(r.trusted_networks.len());
        for n in &r.trusted_networks {
            let net = n
                .parse::<ipnet::IpNet>()
                .or_else(|_| n.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    invalid(
                        "security",
                        "trusted_networks",
                        format!("`{n}` is not an address or a network: write e.g. \"192.0.2.10\" or \"10.0.0.0/8\""),
                    )
                })?;
            trusted.push(net);
        }
        if r.rate_limit > 0 && r.rate_window.0.is_zero() {
            return Err(invalid(
                "security",
                "rate_window",
                "must be above 0 seconds while rate_limit is set (rate_limit = 0 turns the limit off)".into(),
            ));
        }
        if r.max_tcp_connections_per_address == 0 {
            return Err(invalid(
                "security",
                "max_tcp_connections_per_address",
                "must be at least 1".into(),
            ));
        }
        let srtp = match r.srtp.as_str() {
            "optional" => SrtpPolicy::Optional,
            "required" => SrtpPolicy::Required,
            "off" => SrtpPolicy::Off,
            other => {
                return Err(invalid(
                    "security",
                    "srtp",
                    format!("`{other}`: use \"optional\", \"required\" or \"off\""),
                ))
            }
        };
        if r.max_transactions < 1_000 {
            return Err(invalid(
                "security",
                "max_transactions",
                "must be at least 1000 (each phone needs a few at once)".into(),
            ));
        }
        Ok(SecurityConfig {
            flood: crate::sip::flood::FloodConfig {
                requests: r.rate_limit,
                window: r.rate_window.0,
                ban: r.ban_time.0,
                trusted,
                scanner_user_agents: r.scanner_user_agents.clone(),
            },
            max_tcp_connections_per_address: r.max_tcp_connections_per_address,
            max_transactions: r.max_transactions,
            srtp,
        })
    }
}

/// The `[[trunk]]` keys of several trunks (failover, limits, pings):
/// errors name the key and the trunk.
fn validate_trunk(
    i: usize,
    t: &TrunkConfig,
    invalid: &dyn Fn(&str, &str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    let who = if t.name.trim().is_empty() {
        return Err(invalid(
            "trunk",
            "name",
            format!("trunk #{}: the name must not be empty", i + 1),
        ));
    } else {
        format!("trunk `{}`", t.name)
    };
    if t.weight == 0 {
        return Err(invalid(
            "trunk",
            "weight",
            format!("{who}: the weight must be at least 1"),
        ));
    }
    if let Some(cps) = t.max_cps {
        if !cps.is_finite() || cps <= 0.0 {
            return Err(invalid(
                "trunk",
                "max_cps",
                format!(
                    "{who}: calls per second must be a number above 0 (leave it out for no limit)"
                ),
            ));
        }
    }
    if t.max_calls == Some(0) {
        return Err(invalid(
            "trunk",
            "max_calls",
            format!("{who}: at least 1 concurrent call (leave it out for no limit)"),
        ));
    }
    if t.session_expires != 0 && t.session_expires < 90 {
        return Err(invalid(
            "trunk",
            "session_expires",
            format!("{who}: must be 0 (off) or at least 90 seconds (RFC 4028 Min-SE)"),
        ));
    }
    if t.response_timeout.0.is_zero() {
        return Err(invalid(
            "trunk",
            "response_timeout",
            format!("{who}: must be greater than 0"),
        ));
    }
    if t.options_timeout.0.is_zero() {
        return Err(invalid(
            "trunk",
            "options_timeout",
            format!("{who}: must be greater than 0"),
        ));
    }
    if let Some(interval) = t.ping_interval() {
        if t.options_timeout.0 > interval {
            return Err(invalid(
                "trunk",
                "options_timeout",
                format!(
                    "{who}: {} s is longer than options_interval ({} s): one ping at a time",
                    t.options_timeout.0.as_secs_f64(),
                    interval.as_secs_f64()
                ),
            ));
        }
    }
    for (key, v) in [("down_after", t.down_after), ("up_after", t.up_after)] {
        if v == 0 {
            return Err(invalid("trunk", key, format!("{who}: at least 1 ping")));
        }
    }
    for p in &t.allow {
        if let Err(e) = regex::Regex::new(&format!("^(?:{p})$")) {
            return Err(invalid(
                "trunk",
                "allow",
                format!("{who}: `{p}` is not a regular expression: {e}"),
            ));
        }
    }
    Ok(())
}

/// Applies `POWERDIAL_SECTION_KEY=value` overrides. Returns the dotted keys
/// that were overridden (errors about them point at the environment).
fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut done = BTreeMap::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("POWERDIAL_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let Some((section, key)) = SECTIONS.iter().find_map(|s| {
            rest.strip_prefix(s)
                .and_then(|k| k.strip_prefix('_'))
                .map(|k| (*s, k.to_string()))
        }) else {
            continue; // e.g. POWERDIAL_TEST_DATABASE_URL: not a setting.
        };
        let dotted = format!("{section}.{key}");
        let parsed = if STRING_KEYS.contains(&dotted.as_str()) {
            toml::Value::String(value.clone())
        } else {
            // Numbers, booleans and arrays are written as TOML values;
            // anything that is not valid TOML is taken as a string.
            format!("v = {value}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(value.clone()))
        };
        let entry = table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, parsed);
            }
            _ => {
                return Err(ConfigError::Invalid {
                    file: "environment".into(),
                    line: 0,
                    key: name,
                    message: format!("`{section}` is not a table in the config file"),
                })
            }
        }
        done.insert(dotted, value);
    }
    Ok(done)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset.min(text.len()))
        .map(|s| s.matches('\n').count() + 1)
        .unwrap_or(1)
}

/// Finds the line of `key = …` inside `[section]` or `[[section]]`.
fn find_key_line(text: &str, section: &str, key: &str) -> Option<usize> {
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with('[') {
            current = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        if current == section {
            if let Some((k, _)) = l.split_once('=') {
                if k.trim() == key {
                    return Some(i + 1);
                }
            }
        }
    }
    None
}

/// serde errors without a span (e.g. unknown fields) still name the key in
/// backticks; point at the first line that defines it.
fn guess_line(text: &str, message: &str) -> Option<usize> {
    let key = message.split('`').nth(1)?;
    text.lines().enumerate().find_map(|(i, l)| {
        let l = l.trim();
        let k = l.split('=').next()?.trim();
        (k == key || l.trim_matches(|c| c == '[' || c == ']') == key).then_some(i + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_str(
            text,
            "t.toml",
            env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
        )
    }

    #[test]
    fn defaults_match_spec() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.sip_listen.len(), 2);
        assert_eq!(c.sip_listen[0].to_string(), "udp:127.0.0.1:5060");
        assert_eq!(c.sip_listen[1].to_string(), "tcp:127.0.0.1:5060");
        assert_eq!(c.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.database_url, "sqlite://data/powerdial.db");
        assert_eq!(c.dialer.ring_timeout.0, Duration::from_secs(32));
        assert_eq!(c.dialer.reduced_ring_timeout.0, Duration::from_secs(20));
        assert_eq!(c.dialer.block.0, Duration::from_secs(3600));
        assert_eq!(c.sip_timers.t1, Duration::from_millis(500));
        // SPEC §5 interop: the default challenge must register phones that
        // refuse any SHA-256 offer (baresip 1.0), so MD5 alone.
        assert_eq!(
            c.digest_algorithms,
            vec![crate::sip::digest::Algorithm::Md5]
        );
    }

    #[test]
    fn caller_id_pool_and_callback_fallback() {
        let c = load(
            "[dialer]\ncaller_id_pool = [\"+14155550100\"]\ncallback_fallback = \"unavailable\"\n\
             [[trunk]]\nname = \"a\"\nuri = \"sip:127.0.0.1:5080\"\ncaller_id = \"+15550000000\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.dialer.callback_fallback.status(), 480);
        assert_eq!(c.callback_numbers(), ["+14155550100", "+15550000000"]);
        assert_eq!(
            load("", &[]).unwrap().dialer.callback_fallback.status(),
            486
        );
        let e = load("[dialer]\ncaller_id_pool = [\"4155550100\"]\n", &[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("dialer.caller_id_pool"), "{text}");
        assert!(
            text.contains("\"4155550100\" is not an E.164 number"),
            "{text}"
        );
        assert!(load("[dialer]\ncallback_fallback = \"voicemail\"\n", &[]).is_err());
    }

    #[test]
    fn ring_floor_names_the_key_and_the_override() {
        let e = load("[dialer]\nring_timeout = 10\n", &[]).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("dialer.ring_timeout"), "{text}");
        assert!(text.contains("t.toml:2"), "points at the line: {text}");
        assert!(text.contains("allow_short_ring_timeout"), "{text}");
        let e = load("[dialer]\nreduced_ring_timeout = 14.9\n", &[]).unwrap_err();
        assert!(e.to_string().contains("dialer.reduced_ring_timeout"), "{e}");
        let e = load("", &[("POWERDIAL_DIALER_RING_TIMEOUT", "5")]).unwrap_err();
        assert!(e.to_string().contains("ring floor"), "{e}");
        // At the floor, and below it with the explicit override.
        let c = load(
            "[dialer]\nring_timeout = 15\nreduced_ring_timeout = 15\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.dialer.ring_timeout.0, RING_FLOOR);
        let c = load(
            "[dialer]\nring_timeout = 1\nallow_short_ring_timeout = true\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.dialer.ring_timeout.0, Duration::from_secs(1));
    }

    #[test]
    fn calling_hours_default_configure_and_refuse() {
        use crate::dialer::hours::Window;
        let c = load("", &[]).unwrap();
        assert_eq!(c.dialer.calling_hours, Window::DEFAULT, "08:00-21:00");
        assert!(c.dialer.holidays.is_empty());
        let c = load(
            "[dialer]\ncalling_hours = { start = \"09:30\", end = \"20:00\" }\nholidays = [\"2026-12-25\", \"2027-01-01\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.dialer.calling_hours,
            Window::parse("09:30", "20:00").unwrap()
        );
        let s = crate::dialer::session::SessionConfig::from_dialer(&c.dialer);
        assert_eq!(s.calling_hours.holidays.len(), 2);
        // The table form and an environment override.
        let c = load(
            "[dialer.calling_hours]\nstart = \"10:00\"\nend = \"24:00\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.dialer.calling_hours,
            Window::parse("10:00", "24:00").unwrap()
        );
        let c = load(
            "",
            &[(
                "POWERDIAL_DIALER_CALLING_HOURS",
                r#"{ start = "07:00", end = "19:00" }"#,
            )],
        )
        .unwrap();
        assert_eq!(
            c.dialer.calling_hours,
            Window::parse("07:00", "19:00").unwrap()
        );
        // Bad windows and dates name the key and the line.
        let e = load(
            "[dialer]\ncalling_hours = { start = \"21:00\", end = \"08:00\" }\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("t.toml:2") && e.contains("must start before they end"),
            "{e}"
        );
        let e = load(
            "[dialer]\ncalling_hours = { start = \"8am\", end = \"21:00\" }\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("HH:MM"), "{e}");
        let e = load("[dialer]\nholidays = [\"25/12/2026\"]\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("dialer.holidays") && e.contains("t.toml:2"),
            "{e}"
        );
    }

    #[test]
    fn cors_origins_must_be_origins() {
        let c = load(
            "[server]\ncors_origins = [\"https://crm.example.com\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.cors_origins, vec!["https://crm.example.com".to_string()]);
        for bad in ["*", "https://crm.example.com/app", "crm.example.com"] {
            let e = load(&format!("[server]\ncors_origins = [\"{bad}\"]\n"), &[]).unwrap_err();
            assert!(e.to_string().contains("server.cors_origins"), "{bad}: {e}");
        }
        assert!(
            load("", &[]).unwrap().cors_origins.is_empty(),
            "none by default"
        );
    }

    #[test]
    fn sha256_is_opt_in() {
        let c = load(
            "[server]\ndigest_algorithms = [\"SHA-256\", \"MD5\"]\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.digest_algorithms,
            vec![
                crate::sip::digest::Algorithm::Sha256,
                crate::sip::digest::Algorithm::Md5
            ]
        );
    }

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../sip-config/powerdial.toml");
        let c = load(text, &[]).unwrap();
        assert_eq!(c.agents[0].username, "alice");
        assert_eq!(c.trunks[0].name, "carrier");
    }

    #[test]
    fn fractional_durations_shrink_for_tests() {
        let c = load(
            "[dialer]\nring_timeout = 2\nblock = 0.25\nallow_short_ring_timeout = true\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.dialer.ring_timeout.0, Duration::from_secs(2));
        assert_eq!(c.dialer.block.0, Duration::from_millis(250));
    }

    #[test]
    fn env_overrides_file() {
        let c = load(
            "[database]\nurl = \"sqlite://x.db\"\n[dialer]\nblock = 10\n",
            &[
                (
                    "POWERDIAL_DATABASE_URL",
                    "postgres://postgres@127.0.0.1/test",
                ),
                ("POWERDIAL_DIALER_BLOCK", "7.5"),
                ("POWERDIAL_ADMIN_TOKEN", "12345"),
                ("POWERDIAL_SERVER_SIP_LISTEN", "[\"udp:127.0.0.1:0\"]"),
                ("POWERDIAL_TEST_DATABASE_URL", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.database_url, "postgres://postgres@127.0.0.1/test");
        assert_eq!(c.dialer.block.0, Duration::from_millis(7500));
        assert_eq!(c.admin_token.as_deref(), Some("12345"));
        assert_eq!(c.sip_listen.len(), 1);
    }

    #[test]
    fn syntax_error_names_line() {
        let e = load("[server]\ndomain = \"x\"\nhttp_listen = \n", &[]).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.toml:3:"), "{s}");
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let e = load("[server]\ndomain = \"x\"\nsip_lisen = []\n", &[]).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.toml:3:"), "{s}");
        assert!(s.contains("sip_lisen"), "{s}");
    }

    #[test]
    fn dialer_rtp_timeout_is_read_and_must_be_positive() {
        let c = load("[dialer]\nrtp_timeout = 1.5\n", &[]).unwrap();
        assert_eq!(c.dialer.rtp_timeout.0, Duration::from_millis(1500));
        let e = load("[dialer]\nrtp_timeout = 0\n", &[]).unwrap_err();
        assert!(e.to_string().contains("rtp_timeout"), "{e}");
    }

    #[test]
    fn wrong_type_names_line() {
        let e = load("[dialer]\n\nring_timeout = \"long\"\n", &[]).unwrap_err();
        assert!(e.to_string().starts_with("t.toml:3:"), "{e}");
    }

    #[test]
    fn security_defaults_trust_this_host_only() {
        let c = load("", &[]).unwrap();
        let f = &c.security.flood;
        assert_eq!(
            (f.requests, f.window.as_secs(), f.ban.as_secs()),
            (16, 2, 300)
        );
        assert!(f
            .trusted
            .iter()
            .any(|n| n.contains(&"127.0.0.1".parse::<IpAddr>().unwrap())));
        assert!(!f
            .trusted
            .iter()
            .any(|n| n.contains(&"127.0.0.2".parse::<IpAddr>().unwrap())));
        assert_eq!(c.security.max_tcp_connections_per_address, 32);
        let c = load(
            "[security]\ntrusted_networks = [\"10.0.0.0/8\", \"192.0.2.7\"]\nrate_limit = 0\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.security.flood.trusted.len(), 2);
        assert_eq!(c.security.flood.requests, 0);
    }

    #[test]
    fn security_errors_name_the_key() {
        let e = load("[security]\ntrusted_networks = [\"10.0.0.0/33\"]\n", &[]).unwrap_err();
        assert!(e.to_string().contains("security.trusted_networks"), "{e}");
        assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
        let e = load("[security]\nrate_window = 0\n", &[]).unwrap_err();
        assert!(e.to_string().contains("security.rate_window"), "{e}");
        let e = load("[security]\nmax_transactions = 10\n", &[]).unwrap_err();
        assert!(e.to_string().contains("security.max_transactions"), "{e}");
    }

    /// RFC 3261 §26.2 listeners: the certificate files are required and
    /// read at load, and every error names its key and line.
    #[test]
    fn tls_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let tls = "[server]\nsip_listen = [\"tls:127.0.0.1:5061\"]\n";
        let e = load(tls, &[]).unwrap_err().to_string();
        assert!(e.contains("`server.tls_certificate`"), "{e}");
        let missing = dir.path().join("nope.crt");
        let e = load(
            &format!(
                "{tls}tls_certificate = \"{}\"\ntls_private_key = \"{}\"\n",
                missing.display(),
                missing.display()
            ),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("t.toml:3: `server.tls_certificate`: cannot read"),
            "{e}"
        );
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (c, k) = (dir.path().join("a.crt"), dir.path().join("a.key"));
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, "not a key").unwrap();
        let text = format!(
            "{tls}tls_certificate = \"{}\"\ntls_private_key = \"{}\"\n",
            c.display(),
            k.display()
        );
        let e = load(&text, &[]).unwrap_err().to_string();
        assert!(e.starts_with("t.toml:4: `server.tls_private_key`:"), "{e}");
        std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
        let cfg = load(&text, &[]).unwrap();
        assert_eq!(cfg.tls.map(|t| t.certificate), Some(c));
        assert_eq!(cfg.security.srtp, SrtpPolicy::Optional);
        let e = load("[security]\nsrtp = \"always\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("`security.srtp`") && e.contains("always"), "{e}");
        let c = load("[security]\nsrtp = \"required\"\n", &[]).unwrap();
        assert_eq!(c.security.srtp, SrtpPolicy::Required);
    }

    #[test]
    fn invalid_value_names_line_and_key() {
        let e = load("[server]\nsip_listen = [\"sctp:127.0.0.1:5060\"]\n", &[]).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("t.toml:2: `server.sip_listen`"), "{s}");
        assert!(s.contains("sctp"), "{s}");
        let e = load("[server]\n\n\nmedia_ip = \"nope\"\n", &[]).unwrap_err();
        assert!(
            e.to_string().starts_with("t.toml:4: `server.media_ip`"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_agent_refused() {
        let e = load(
            "[[agent]]\nusername = \"a\"\npassword = \"x\"\n[[agent]]\nusername = \"a\"\npassword = \"y\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("defined twice"), "{e}");
    }

    const TWO_TRUNKS: &str =
        "[[trunk]]\nname = \"a\"\nuri = \"sip:127.0.0.1:5080\"\ncaller_id = \"+1\"\n\
        [[trunk]]\nname = \"b\"\nuri = \"sip:127.0.0.1:5082\"\ncaller_id = \"+1\"\n";

    #[test]
    fn several_trunks_with_their_defaults() {
        let c = load(TWO_TRUNKS, &[]).unwrap();
        assert_eq!(c.trunks.len(), 2);
        let a = &c.trunks[0];
        assert_eq!((a.priority, a.weight), (None, 1));
        assert_eq!((a.max_cps, a.max_calls), (None, None));
        assert_eq!(a.response_timeout.0, Duration::from_secs(5));
        assert_eq!(a.ping_interval(), Some(Duration::from_secs(30)));
        assert_eq!(a.options_timeout.0, Duration::from_secs(5));
        assert_eq!((a.down_after, a.up_after), (3, 2));
        assert_eq!(c.dialer.trunk_wait.0, Duration::from_secs(5));
        let demo = load(
            &format!("{TWO_TRUNKS}[[trunk]]\nname = \"d\"\nuri = \"demo:\"\ncaller_id = \"+1\"\n"),
            &[],
        )
        .unwrap();
        assert_eq!(demo.trunks[2].ping_interval(), None, "no pings for demo:");
        let one = load(
            "[[trunk]]\nname = \"a\"\nuri = \"sip:127.0.0.1\"\ncaller_id = \"+1\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(one.trunks[0].ping_interval(), None, "none with one trunk");
        let one = load(
            "[[trunk]]\nname = \"a\"\nuri = \"sip:127.0.0.1\"\ncaller_id = \"+1\"\noptions_interval = 10\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            one.trunks[0].ping_interval(),
            Some(Duration::from_secs(10)),
            "unless asked for"
        );
        let c = load(
            "[[trunk]]\nname = \"a\"\nuri = \"sip:127.0.0.1\"\ncaller_id = \"+1\"\n\
             priority = 2\nweight = 3\nmax_cps = 2.5\nmax_calls = 10\nresponse_timeout = 0.5\n\
             options_interval = 0\n[dialer]\ntrunk_wait = 0\n",
            &[],
        )
        .unwrap();
        let a = &c.trunks[0];
        assert_eq!((a.priority, a.weight), (Some(2), 3));
        assert_eq!((a.max_cps, a.max_calls), (Some(2.5), Some(10)));
        assert_eq!(a.response_timeout.0, Duration::from_millis(500));
        assert_eq!(a.ping_interval(), None, "0 turns pings off");
        assert!(c.dialer.trunk_wait.0.is_zero());
    }

    #[test]
    fn bad_trunk_keys_are_named() {
        for (extra, key) in [
            ("weight = 0", "trunk.weight"),
            ("max_cps = 0", "trunk.max_cps"),
            ("max_cps = -1.5", "trunk.max_cps"),
            ("max_calls = 0", "trunk.max_calls"),
            ("response_timeout = 0", "trunk.response_timeout"),
            ("options_timeout = 0", "trunk.options_timeout"),
            (
                "options_interval = 2\noptions_timeout = 3",
                "trunk.options_timeout",
            ),
            ("down_after = 0", "trunk.down_after"),
            ("up_after = 0", "trunk.up_after"),
            ("allow = ['(+44']", "trunk.allow"),
        ] {
            let text = format!("{TWO_TRUNKS}{extra}\n");
            let e = load(&text, &[]).unwrap_err().to_string();
            assert!(e.contains(&format!("`{key}`")), "{extra}: {e}");
            assert!(e.contains("trunk `b`"), "names the trunk: {e}");
            // The line of the key in the file.
            let line = text
                .lines()
                .position(|l| l.starts_with(key.trim_start_matches("trunk.")))
                .map(|i| i + 1);
            if let Some(line) = line {
                if !extra.contains('\n') {
                    assert!(e.starts_with(&format!("t.toml:{line}:")), "{extra}: {e}");
                }
            }
        }
        let e = load(
            &format!("{TWO_TRUNKS}[[trunk]]\nname = \"a\"\nuri = \"sip:127.0.0.1\"\ncaller_id = \"+1\"\n"),
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("`trunk.name`") && e.contains("defined twice"),
            "{e}"
        );
        let e = load(
            "[[trunk]]\nname = \"a\"\nuri = \"sip:1.2.3.4\"\ncaller_id = \"+1\"\nmax_calls = -1\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("t.toml:5:"),
            "a wrong type points at its line: {e}"
        );
        let e = load(
            "[[trunk]]\nname = \"a\"\nuri = \"sip:1.2.3.4\"\ncaller_id = \"+1\"\nweigth = 2\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("weigth") && e.starts_with("t.toml:5:"), "{e}");
    }

    #[test]
    fn debug_never_prints_passwords() {
        let c = load(
            "[[agent]]\nusername = \"a\"\npassword = \"sekrit\"\n[[trunk]]\nname=\"t\"\nuri=\"sip:1.2.3.4\"\ncaller_id=\"+1\"\nusername=\"u\"\npassword=\"trunkpw\"\n",
            &[],
        )
        .unwrap();
        let d = format!("{c:?}");
        assert!(!d.contains("sekrit") && !d.contains("trunkpw"), "{d}");
    }
}
