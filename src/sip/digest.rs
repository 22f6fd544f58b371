//! HTTP Digest authentication for SIP (RFC 3261 §22.4 over RFC 2617,
//! RFC 7616 and RFC 8760: `SHA-256` and `MD5`, `qop=auth`).
//!
//! rsipstack's typed auth headers refuse `algorithm=SHA-256`, so the
//! parameters are parsed and printed here from the raw header value.
//!
//! - [`Credentials`]: an `Authorization` / `Proxy-Authorization` value.
//! - [`Challenge`]: a `WWW-Authenticate` / `Proxy-Authenticate` value.
//! - [`DigestVerifier`]: the sans-IO server side (agents REGISTERing):
//!   stateless keyed nonces, nonce lifetime with `stale=true`, nonce-count
//!   replay protection, no user enumeration.
//! - [`DigestClient`]: answers a carrier's 401/407.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use md5::Md5;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

use super::syntax::{self, Header};

/// How long a nonce is accepted after it was issued (RFC 7616 §3.3 leaves
/// the lifetime to the server; after it, a correct response earns a new
/// challenge with `stale=true`).
pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// The most nonces whose nonce-count is remembered at once (bounded memory
/// for the RFC 7616 §3.4 replay check; older nonces are then answered stale).
pub const MAX_TRACKED_NONCES: usize = 1 << 20;

/// Why a digest header value could not be used (RFC 7616 §3.4, RFC 2617 §3.2.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The scheme is not `Digest` (e.g. RFC 4475 `regaut01`'s unknown scheme).
    #[error("authentication scheme is not Digest")]
    NotDigest,
    /// The parameter list is not `name=value` pairs separated by commas.
    #[error("malformed digest parameter list at byte {at}")]
    Syntax {
        /// Byte offset of the fault in the header value.
        at: usize,
    },
    /// A quoted string has no closing quote.
    #[error("unterminated quoted string")]
    UnterminatedQuote,
    /// A parameter appears twice (RFC 7616 §3.4: each at most once).
    #[error("duplicate digest parameter `{0}`")]
    DuplicateParam(String),
    /// A parameter the message must carry is missing.
    #[error("missing digest parameter `{0}`")]
    MissingParam(&'static str),
    /// An algorithm other than `MD5` and `SHA-256` (the `-sess` variants are refused).
    #[error("unsupported digest algorithm `{0}`")]
    UnsupportedAlgorithm(String),
    /// A qop other than `auth` (`auth-int` is not supported).
    #[error("unsupported qop `{0}`")]
    UnsupportedQop(String),
    /// `nc` is not 8 hexadecimal digits (RFC 7616 §3.4).
    #[error("malformed nonce count")]
    BadNonceCount,
}

/// A digest algorithm (RFC 8760 §2: SHA-256 preferred, MD5 for old phones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// `MD5` (RFC 2617), the default when `algorithm` is absent.
    Md5,
    /// `SHA-256` (RFC 7616, RFC 8760).
    Sha256,
}

impl Algorithm {
    /// Parses the `algorithm` token, case-insensitively (RFC 7616 §3.3).
    pub fn parse(token: &str) -> Result<Self, DigestError> {
        if token.eq_ignore_ascii_case("MD5") {
            Ok(Algorithm::Md5)
        } else if token.eq_ignore_ascii_case("SHA-256") {
            Ok(Algorithm::Sha256)
        } else {
            Err(DigestError::UnsupportedAlgorithm(token.to_string()))
        }
    }

    /// The token written in headers.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// `H(data)` as lowercase hex (RFC 7616 §3.4.1).
    pub fn hash_hex(self, data: &[u8]) -> String {
        match self {
            Algorithm::Md5 => hex::encode(Md5::digest(data)),
            Algorithm::Sha256 => hex::encode(Sha256::digest(data)),
        }
    }

    /// `H(part:part:…)` as lowercase hex, the parts fed to the hash one by
    /// one rather than joined into a string first.
    pub fn hash_hex_parts(self, parts: &[&str]) -> String {
        fn run<D: sha2::Digest>(mut h: D, parts: &[&str]) -> String {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    h.update(b":");
                }
                h.update(p.as_bytes());
            }
            hex::encode(h.finalize())
        }
        match self {
            Algorithm::Md5 => run(Md5::new(), parts),
            Algorithm::Sha256 => run(Sha256::new(), parts),
        }
    }

    /// `HA1 = H(username:realm:password)` (RFC 7616 §3.4.2, non-`-sess`).
    pub fn ha1(self, username: &str, realm: &str, password: &str) -> String {
        self.hash_hex(format!("{username}:{realm}:{password}").as_bytes())
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.token())
    }
}

/// The digest `response` (RFC 7616 §3.4.1; RFC 2617 §3.2.2.1 when `qop` is
/// absent): `H(HA1:nonce:nc:cnonce:qop:HA2)` or `H(HA1:nonce:HA2)`, with
/// `HA2 = H(method:uri)`. `nc` is the 8-hex-digit string as sent.
pub fn compute_response(
    algorithm: Algorithm,
    ha1: &str,
    nonce: &str,
    qop_auth: Option<(&str, &str)>,
    method: &str,
    uri: &str,
) -> String {
    let ha2 = algorithm.hash_hex_parts(&[method, uri]);
    match qop_auth {
        Some((nc, cnonce)) => {
            algorithm.hash_hex_parts(&[ha1, nonce, nc, cnonce, "auth", ha2.as_str()])
        }
        None => algorithm.hash_hex_parts(&[ha1, nonce, ha2.as_str()]),
    }
}

/// Splits `Digest name=value, name="quoted"` into names and unescaped
/// values (RFC 7616 §3.3/§3.4 `auth-param`, RFC 3261 §25.1 quoted-string
/// with `\` escapes). Tolerant of whitespace and order. Values borrow
/// from `value` unless they hold escapes (every REGISTER's credentials
/// pass here: SPEC §6).
fn parse_params(value: &str) -> Result<Vec<(&str, Cow<'_, str>)>, DigestError> {
    let s = value.trim_start();
    let offset = value.len() - s.len();
    let scheme_end = s.find(|c: char| c.is_ascii_whitespace()).unwrap_or(s.len());
    if !s[..scheme_end].eq_ignore_ascii_case("Digest") {
        return Err(DigestError::NotDigest);
    }
    let bytes = value.as_bytes();
    let mut i = offset + scheme_end;
    let mut out: Vec<(&str, Cow<'_, str>)> = Vec::with_capacity(10);
    let skip_ws = |i: &mut usize| {
        while *i < bytes.len() && matches!(bytes[*i], b' ' | b'\t' | b'\r' | b'\n') {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        while i < bytes.len() && bytes[i] == b',' {
            i += 1;
            skip_ws(&mut i);
        }
        if i >= bytes.len() {
            break;
        }
        let name_start = i;
        while i < bytes.len() && is_token_byte(bytes[i]) {
            i += 1;
        }
        if i == name_start {
            return Err(DigestError::Syntax { at: i });
        }
        let name = &value[name_start..i];
        skip_ws(&mut i);
        if bytes.get(i) != Some(&b'=') {
            return Err(DigestError::Syntax { at: i });
        }
        i += 1;
        skip_ws(&mut i);
        let param_value = if bytes.get(i) == Some(&b'"') {
            i += 1;
            let start = i;
            let mut escapes = false;
            loop {
                match bytes.get(i) {
                    None => return Err(DigestError::UnterminatedQuote),
                    Some(b'"') => break,
                    Some(b'\\') => {
                        if i + 1 >= bytes.len() {
                            return Err(DigestError::UnterminatedQuote);
                        }
                        escapes = true;
                        i += 2;
                    }
                    Some(_) => i += 1,
                }
            }
            let quoted = &bytes[start..i];
            i += 1;
            if escapes {
                let mut v = Vec::with_capacity(quoted.len());
                let mut j = 0;
                while let Some(&b) = quoted.get(j) {
                    if b == b'\\' {
                        if let Some(&e) = quoted.get(j + 1) {
                            v.push(e);
                        }
                        j += 2;
                    } else {
                        v.push(b);
                        j += 1;
                    }
                }
                Cow::Owned(String::from_utf8(v).map_err(|_| DigestError::Syntax { at: i })?)
            } else {
                // Between two ASCII quotes of a `str`: valid UTF-8.
                Cow::Borrowed(
                    std::str::from_utf8(quoted).map_err(|_| DigestError::Syntax { at: i })?,
                )
            }
        } else {
            let start = i;
            while i < bytes.len() && is_token_byte(bytes[i]) {
                i += 1;
            }
            if i == start {
                return Err(DigestError::Syntax { at: i });
            }
            Cow::Borrowed(&value[start..i])
        };
        if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            return Err(DigestError::DuplicateParam(name.to_ascii_lowercase()));
        }
        out.push((name, param_value));
        skip_ws(&mut i);
        match bytes.get(i) {
            None => break,
            Some(b',') => i += 1,
            Some(_) => return Err(DigestError::Syntax { at: i }),
        }
    }
    Ok(out)
}

/// RFC 3261 §25.1 `token` characters, plus `/`, `:` and `@` so that the
/// unquoted values some phones send (`uri=sip:x@y`, base64 nonces) pass.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'!'
                | b'%'
                | b'*'
                | b'_'
                | b'+'
                | b'`'
                | b'\''
                | b'~'
                | b'/'
                | b':'
                | b'@'
        )
}

/// Writes `s` as an RFC 3261 §25.1 quoted-string.
fn quote(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// Removes and returns the parameter `name` (names compare
/// case-insensitively, RFC 7616 §3.3).
fn take<'a>(params: &mut Vec<(&str, Cow<'a, str>)>, name: &str) -> Option<Cow<'a, str>> {
    let pos = params
        .iter()
        .position(|(n, _)| n.eq_ignore_ascii_case(name))?;
    Some(params.swap_remove(pos).1)
}

/// [`take`] for a parameter the credentials must carry.
fn require<'a>(
    params: &mut Vec<(&str, Cow<'a, str>)>,
    name: &'static str,
) -> Result<Cow<'a, str>, DigestError> {
    take(params, name).ok_or(DigestError::MissingParam(name))
}

/// `qop` and its companions as a request carries them (RFC 7616 §3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QopAuth {
    /// The nonce count as sent (8 hex digits), used verbatim in the hash.
    pub nc_text: String,
    /// The nonce count's value.
    pub nc: u32,
    /// The client nonce.
    pub cnonce: String,
}

/// Digest credentials from an `Authorization` / `Proxy-Authorization`
/// header (RFC 3261 §22.4, RFC 7616 §3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// `username`.
    pub username: String,
    /// `realm`.
    pub realm: String,
    /// `nonce`, as issued by the server.
    pub nonce: String,
    /// `uri` (the digest-uri, the Request-URI as the client saw it).
    pub uri: String,
    /// `response`, lowercase hex.
    pub response: String,
    /// `algorithm`, MD5 when absent.
    pub algorithm: Algorithm,
    /// `qop=auth` with `nc` and `cnonce`, or `None` (RFC 2069 style).
    pub qop: Option<QopAuth>,
    /// `opaque`, returned unchanged.
    pub opaque: Option<String>,
}

impl Credentials {
    /// Parses a credentials header value (RFC 7616 §3.4; `-sess`
    /// algorithms and `qop=auth-int` are refused).
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let mut p = parse_params(value)?;
        let algorithm = match take(&mut p, "algorithm") {
            Some(a) => Algorithm::parse(&a)?,
            None => Algorithm::Md5,
        };
        let qop = match take(&mut p, "qop") {
            Some(q) if q.eq_ignore_ascii_case("auth") => {
                let nc_text = require(&mut p, "nc")?.into_owned();
                if nc_text.len() != 8 {
                    return Err(DigestError::BadNonceCount);
                }
                let nc =
                    u32::from_str_radix(&nc_text, 16).map_err(|_| DigestError::BadNonceCount)?;
                let cnonce = require(&mut p, "cnonce")?.into_owned();
                Some(QopAuth {
                    nc_text,
                    nc,
                    cnonce,
                })
            }
            Some(q) => return Err(DigestError::UnsupportedQop(q.into_owned())),
            None => None,
        };
        Ok(Credentials {
            username: require(&mut p, "username")?.into_owned(),
            realm: require(&mut p, "realm")?.into_owned(),
            nonce: require(&mut p, "nonce")?.into_owned(),
            uri: require(&mut p, "uri")?.into_owned(),
            response: require(&mut p, "response")?.to_ascii_lowercase(),
            algorithm,
            qop,
            opaque: take(&mut p, "opaque").map(Cow::into_owned),
        })
    }
}

impl fmt::Display for Credentials {
    /// Prints the header value (RFC 7616 §3.4; `qop` and `nc` unquoted).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::from("Digest username=");
        quote(&mut s, &self.username);
        s.push_str(", realm=");
        quote(&mut s, &self.realm);
        s.push_str(", nonce=");
        quote(&mut s, &self.nonce);
        s.push_str(", uri=");
        quote(&mut s, &self.uri);
        s.push_str(", response=");
        quote(&mut s, &self.response);
        s.push_str(", algorithm=");
        s.push_str(self.algorithm.token());
        if let Some(q) = &self.qop {
            s.push_str(", cnonce=");
            quote(&mut s, &q.cnonce);
            s.push_str(", qop=auth, nc=");
            s.push_str(&q.nc_text);
        }
        if let Some(o) = &self.opaque {
            s.push_str(", opaque=");
            quote(&mut s, o);
        }
        f.write_str(&s)
    }
}

/// A digest challenge from a `WWW-Authenticate` / `Proxy-Authenticate`
/// header (RFC 3261 §22.4, RFC 7616 §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `realm`.
    pub realm: String,
    /// `nonce`.
    pub nonce: String,
    /// `algorithm`, MD5 when absent.
    pub algorithm: Algorithm,
    /// Whether `qop` offers `auth` (the only qop used here).
    pub qop_auth: bool,
    /// Whether a `qop` list was present at all (then `auth` must be in it
    /// for the challenge to be answerable).
    pub qop_present: bool,
    /// `opaque`, to be echoed.
    pub opaque: Option<String>,
    /// `stale=true`: the previous nonce had expired, the password was right.
    pub stale: bool,
}

impl Challenge {
    /// Parses a challenge value. `-sess` algorithms are refused with
    /// [`DigestError::UnsupportedAlgorithm`].
    pub fn parse(value: &str) -> Result<Self, DigestError> {
        let mut p = parse_params(value)?;
        let algorithm = match take(&mut p, "algorithm") {
            Some(a) => Algorithm::parse(&a)?,
            None => Algorithm::Md5,
        };
        let qop = take(&mut p, "qop");
        let qop_auth = qop
            .as_deref()
            .is_some_and(|q| q.split(',').any(|o| o.trim().eq_ignore_ascii_case("auth")));
        Ok(Challenge {
            realm: require(&mut p, "realm")?.into_owned(),
            nonce: require(&mut p, "nonce")?.into_owned(),
            algorithm,
            qop_auth,
            qop_present: qop.is_some(),
            opaque: take(&mut p, "opaque").map(Cow::into_owned),
            stale: take(&mut p, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }
}

impl fmt::Display for Challenge {
    /// Prints the header value (RFC 7616 §3.3).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::from("Digest realm=");
        quote(&mut s, &self.realm);
        s.push_str(", nonce=");
        quote(&mut s, &self.nonce);
        if let Some(o) = &self.opaque {
            s.push_str(", opaque=");
            quote(&mut s, o);
        }
        s.push_str(", algorithm=");
        s.push_str(self.algorithm.token());
        if self.qop_auth {
            s.push_str(", qop=\"auth\"");
        }
        if self.stale {
            s.push_str(", stale=true");
        }
        f.write_str(&s)
    }
}

/// HMAC-SHA-256 (RFC 2104, RFC 4231), for the keyed nonce: the `hmac`
/// crate over the `sha2` hash the digests already use.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length (RFC 2104 §2), so `new_from_slice`
    // cannot fail; the fallback only satisfies the type.
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

/// Compares without an early exit (`subtle`), so timing does not reveal
/// how much of a guessed response or nonce MAC was right. Lengths are
/// public here (hex digests and fixed-size MACs).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// An agent's stored secrets: `HA1 = H(username:realm:password)` per
/// algorithm (RFC 7616 §3.4.2), never the password.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredHa1 {
    /// MD5 HA1, lowercase hex.
    pub md5: String,
    /// SHA-256 HA1, lowercase hex.
    pub sha256: String,
}

impl StoredHa1 {
    /// Derives both HA1 values from a password (RFC 7616 §3.4.2).
    pub fn from_password(username: &str, realm: &str, password: &str) -> Self {
        StoredHa1 {
            md5: Algorithm::Md5.ha1(username, realm, password),
            sha256: Algorithm::Sha256.ha1(username, realm, password),
        }
    }

    fn get(&self, algorithm: Algorithm) -> &str {
        match algorithm {
            Algorithm::Md5 => &self.md5,
            Algorithm::Sha256 => &self.sha256,
        }
    }
}

impl fmt::Debug for StoredHa1 {
    /// Redacted: an HA1 is password-equivalent for its realm.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoredHa1(<redacted>)")
    }
}

/// Why a request was not authenticated. Every variant is answered with a
/// fresh 401/407 challenge ([`DigestVerifier::challenge_headers`]) whose
/// `stale` flag is [`Rejection::stale`]. Unknown users and wrong passwords
/// are the same variant (no user enumeration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// No credentials for our realm (RFC 3261 §22.1: challenge).
    #[error("no credentials")]
    Missing,
    /// Credentials that do not parse.
    #[error("malformed credentials: {0}")]
    Malformed(#[from] DigestError),
    /// A nonce we did not issue (or from before a restart).
    #[error("unknown nonce")]
    UnknownNonce,
    /// The digest-uri is not the Request-URI (RFC 2617 §3.2.2.5).
    #[error("digest uri does not match the Request-URI")]
    UriMismatch,
    /// Credentials for an algorithm we do not offer (no downgrade to MD5
    /// when only SHA-256 is configured, RFC 8760 §2.4).
    #[error("algorithm not offered")]
    AlgorithmNotOffered,
    /// Unknown user or wrong password: indistinguishable on purpose.
    #[error("wrong credentials")]
    WrongCredentials,
    /// Correct response, but the nonce is older than [`NONCE_LIFETIME`]
    /// (RFC 7616 §3.3 `stale=true`).
    #[error("stale nonce")]
    Stale,
    /// Correct response, but the nonce count did not increase (RFC 7616
    /// §3.4 replay check) or a qop-less nonce was used twice.
    #[error("replayed nonce count")]
    Replay,
}

impl Rejection {
    /// Whether the new challenge carries `stale=true`: the password was
    /// right, only the nonce is spent (the UA retries without prompting).
    pub fn stale(&self) -> bool {
        matches!(self, Rejection::Stale | Rejection::Replay)
    }
}

/// What the verifier remembers per used nonce, keyed by its serial.
#[derive(Debug, Clone, Copy)]
struct NonceUse {
    issued_ms: u64,
    /// Highest nc accepted; `u32::MAX` once a qop-less response used it.
    highest_nc: u32,
}

/// The server side of digest authentication (RFC 3261 §22.4, RFC 8760),
/// sans-IO: `now` is a parameter.
///
/// Nonces are stateless: `hex(issued_ms ‖ serial ‖ HMAC-SHA-256(secret,
/// realm ‖ issued_ms ‖ serial)[..16])`, so any nonce can be checked without
/// storing it; only nonces that were *used* are remembered, with their
/// highest nonce count, until they expire (bounded by
/// [`MAX_TRACKED_NONCES`]; nonces older than the oldest remembered one are
/// then answered stale, never accepted unchecked).
pub struct DigestVerifier {
    realm: String,
    /// HMAC-SHA-256 keyed with the secret and fed the realm (RFC 2104):
    /// each nonce clones it and adds only its own 16 octets, instead of
    /// hashing the key pads and realm again.
    nonce_mac: Hmac<Sha256>,
    epoch: Instant,
    next_serial: u64,
    users: HashMap<String, StoredHa1>,
    /// Checked against for unknown users, so they take as long as known ones.
    dummy: StoredHa1,
    used: BTreeMap<u64, NonceUse>,
    /// Serials below this were evicted while unexpired: answer stale.
    floor_serial: u64,
    max_tracked: usize,
    lifetime: Duration,
    /// The algorithms challenged with, most preferred first.
    offered: Vec<Algorithm>,
}

impl fmt::Debug for DigestVerifier {
    /// Redacted: neither the secret nor any HA1 is printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestVerifier")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("tracked_nonces", &self.used.len())
            .finish_non_exhaustive()
    }
}

impl DigestVerifier {
    /// A verifier for `realm` (the SIP domain, SPEC `server.domain`).
    /// `secret` keys the nonces (random per boot is fine: old nonces are
    /// then merely re-challenged); `epoch` is any `Instant` before the
    /// first call, the origin of the time embedded in nonces.
    pub fn new(realm: impl Into<String>, secret: [u8; 32], epoch: Instant) -> Self {
        let realm = realm.into();
        let dummy =
            StoredHa1::from_password("", &realm, &hex::encode(hmac_sha256(&secret, b"dummy")));
        let mut nonce_mac = match <Hmac<Sha256> as Mac>::new_from_slice(&secret) {
            Ok(m) => m,
            // HMAC takes keys of any length (RFC 2104 §2): not reached.
            Err(_) => <Hmac<Sha256> as Mac>::new(&Default::default()),
        };
        nonce_mac.update(realm.as_bytes());
        DigestVerifier {
            dummy,
            realm,
            nonce_mac,
            epoch,
            next_serial: 0,
            users: HashMap::new(),
            used: BTreeMap::new(),
            floor_serial: 0,
            max_tracked: MAX_TRACKED_NONCES,
            lifetime: NONCE_LIFETIME,
            offered: vec![Algorithm::Sha256, Algorithm::Md5],
        }
    }

    /// The algorithms to challenge with and accept, most preferred first
    /// (RFC 8760 §2.4; default SHA-256 then MD5). Deployments with MD5-only
    /// phones that give up on any SHA-256 challenge (libre 1.x, SIPp 3.6)
    /// pass `[Md5]`; credentials for an algorithm not offered are refused
    /// (no downgrade). An empty list keeps the current one.
    pub fn set_algorithms(&mut self, algorithms: &[Algorithm]) {
        let mut offered: Vec<Algorithm> = Vec::new();
        for a in algorithms {
            if !offered.contains(a) {
                offered.push(*a);
            }
        }
        if !offered.is_empty() {
            self.offered = offered;
        }
    }

    /// Overrides the nonce lifetime (tests shrink it; default [`NONCE_LIFETIME`]).
    pub fn with_lifetime(mut self, lifetime: Duration) -> Self {
        self.lifetime = lifetime;
        self
    }

    /// Overrides the bound on remembered nonces (default [`MAX_TRACKED_NONCES`]).
    pub fn with_max_tracked(mut self, max: usize) -> Self {
        self.max_tracked = max.max(1);
        self
    }

    /// The realm challenges are issued for.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Adds or replaces an agent, keeping only its HA1 values.
    pub fn set_password(&mut self, username: &str, password: &str) {
        let ha1 = StoredHa1::from_password(username, &self.realm, password);
        self.users.insert(username.to_string(), ha1);
    }

    /// Adds or replaces an agent from stored HA1 values (computed for this realm).
    pub fn set_ha1(&mut self, username: &str, ha1: StoredHa1) {
        self.users.insert(username.to_string(), ha1);
    }

    /// Removes an agent: its next request is challenged like an unknown user's.
    pub fn remove_user(&mut self, username: &str) {
        self.users.remove(username);
    }

    fn millis_since_epoch(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn nonce_mac(&self, payload: &[u8; 16]) -> [u8; 32] {
        let mut mac = self.nonce_mac.clone();
        mac.update(payload);
        mac.finalize().into_bytes().into()
    }

    /// Issues a fresh nonce (RFC 7616 §3.3).
    pub fn new_nonce(&mut self, now: Instant) -> String {
        let serial = self.next_serial;
        self.next_serial += 1;
        let mut payload = [0u8; 16];
        payload[..8].copy_from_slice(&self.millis_since_epoch(now).to_be_bytes());
        payload[8..].copy_from_slice(&serial.to_be_bytes());
        let mac = self.nonce_mac(&payload);
        let mut raw = [0u8; 32];
        raw[..16].copy_from_slice(&payload);
        raw[16..].copy_from_slice(&mac[..16]);
        hex::encode(raw)
    }

    /// Checks a nonce's MAC; returns `(issued_ms, serial)`.
    fn open_nonce(&self, nonce: &str) -> Option<(u64, u64)> {
        let mut raw = [0u8; 32];
        hex::decode_to_slice(nonce, &mut raw).ok()?;
        let mut payload = [0u8; 16];
        payload.copy_from_slice(&raw[..16]);
        let mac = self.nonce_mac(&payload);
        if !ct_eq(&mac[..16], &raw[16..]) {
            return None;
        }
        let mut ms = [0u8; 8];
        let mut serial = [0u8; 8];
        ms.copy_from_slice(&payload[..8]);
        serial.copy_from_slice(&payload[8..]);
        Some((u64::from_be_bytes(ms), u64::from_be_bytes(serial)))
    }

    /// The challenge values to send, one per offered algorithm (by default
    /// SHA-256 then MD5: RFC 8760 §2.4, in order of preference), each
    /// `qop="auth"` with its own new nonce (RFC 7616 §3.7).
    pub fn challenges(&mut self, now: Instant, stale: bool) -> Vec<Challenge> {
        let offered = self.offered.clone();
        offered
            .into_iter()
            .map(|algorithm| Challenge {
                realm: self.realm.clone(),
                nonce: self.new_nonce(now),
                algorithm,
                qop_auth: true,
                qop_present: true,
                opaque: None,
                stale,
            })
            .collect()
    }

    /// [`Self::challenges`] as headers: `WWW-Authenticate` for a 401, or
    /// `Proxy-Authenticate` for a 407 when `proxy` (RFC 3261 §22.3).
    /// Each value is written at once, as [`Challenge`]'s printer would
    /// write it (every REGISTER cycle's 401 carries these: SPEC §6).
    pub fn challenge_headers(&mut self, now: Instant, stale: bool, proxy: bool) -> Vec<Header> {
        let mut out = Vec::with_capacity(self.offered.len());
        for i in 0..self.offered.len() {
            let Some(&algorithm) = self.offered.get(i) else {
                break;
            };
            let nonce = self.new_nonce(now);
            let mut v = String::with_capacity(self.realm.len() + nonce.len() + 72);
            v.push_str("Digest realm=");
            quote(&mut v, &self.realm);
            v.push_str(", nonce=");
            quote(&mut v, &nonce);
            v.push_str(", algorithm=");
            v.push_str(algorithm.token());
            v.push_str(", qop=\"auth\"");
            if stale {
                v.push_str(", stale=true");
            }
            out.push(if proxy {
                Header::ProxyAuthenticate(syntax::ProxyAuthenticate::new(v))
            } else {
                Header::WwwAuthenticate(syntax::WwwAuthenticate::new(v))
            });
        }
        out
    }

    /// The whole 401 (or, with `proxy`, 407) answering `request`, with the
    /// two challenges (RFC 3261 §22.1, §8.2.6.2 To tag).
    pub fn challenge_response(
        &mut self,
        now: Instant,
        request: &syntax::Request,
        stale: bool,
        proxy: bool,
    ) -> syntax::Response {
        let status = if proxy {
            syntax::StatusCode::ProxyAuthenticationRequired
        } else {
            syntax::StatusCode::Unauthorized
        };
        let mut r = super::message::response_to(request, status.code(), "");
        let at = r
            .headers
            .iter()
            .position(|h| matches!(h, Header::ContentLength(_)))
            .unwrap_or(r.headers.len());
        for (i, h) in self
            .challenge_headers(now, stale, proxy)
            .into_iter()
            .enumerate()
        {
            r.headers.0.insert(at + i, h);
        }
        r
    }

    fn forget_expired(&mut self, now_ms: u64) {
        let lifetime_ms = u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX);
        // Serials grow with issue time, so the oldest entries come first.
        while let Some((&serial, u)) = self.used.first_key_value() {
            if now_ms.saturating_sub(u.issued_ms) > lifetime_ms {
                self.used.remove(&serial);
            } else {
                break;
            }
        }
    }

    /// Verifies one credentials value for `method` (RFC 7616 §3.4.1,
    /// RFC 3261 §22.4). `request_uri` is the Request-URI as printed; the
    /// digest-uri must name the same user and host. On success returns the
    /// authenticated username.
    pub fn verify(
        &mut self,
        now: Instant,
        method: &str,
        request_uri: &str,
        credentials: &str,
    ) -> Result<String, Rejection> {
        let c = Credentials::parse(credentials)?;
        self.verify_credentials(now, method, request_uri, &c)
    }

    /// [`Self::verify`] on parsed credentials.
    pub fn verify_credentials(
        &mut self,
        now: Instant,
        method: &str,
        request_uri: &str,
        c: &Credentials,
    ) -> Result<String, Rejection> {
        if c.realm != self.realm {
            return Err(Rejection::Missing);
        }
        if !self.offered.contains(&c.algorithm) {
            return Err(Rejection::AlgorithmNotOffered);
        }
        let (issued_ms, serial) = self.open_nonce(&c.nonce).ok_or(Rejection::UnknownNonce)?;
        if !same_target(&c.uri, request_uri) {
            return Err(Rejection::UriMismatch);
        }
        // Unknown users cost the same hashing as known ones (no enumeration).
        let ha1 = self
            .users
            .get(&c.username)
            .unwrap_or(&self.dummy)
            .get(c.algorithm);
        let expected = compute_response(
            c.algorithm,
            ha1,
            &c.nonce,
            c.qop
                .as_ref()
                .map(|q| (q.nc_text.as_str(), q.cnonce.as_str())),
            method,
            &c.uri,
        );
        let known = self.users.contains_key(&c.username);
        if !ct_eq(expected.as_bytes(), c.response.as_bytes()) || !known {
            return Err(Rejection::WrongCredentials);
        }
        let now_ms = self.millis_since_epoch(now);
        self.forget_expired(now_ms);
        let lifetime_ms = u64::try_from(self.lifetime.as_millis()).unwrap_or(u64::MAX);
        if now_ms.saturating_sub(issued_ms) > lifetime_ms || serial < self.floor_serial {
            return Err(Rejection::Stale);
        }
        let nc = c.qop.as_ref().map_or(u32::MAX, |q| q.nc);
        match self.used.get_mut(&serial) {
            Some(u) => {
                if nc <= u.highest_nc || u.highest_nc == u32::MAX {
                    return Err(Rejection::Replay);
                }
                u.highest_nc = nc;
            }
            None => {
                if nc == 0 {
                    return Err(Rejection::Replay);
                }
                self.used.insert(
                    serial,
                    NonceUse {
                        issued_ms,
                        highest_nc: nc,
                    },
                );
                while self.used.len() > self.max_tracked {
                    if let Some((evicted, _)) = self.used.pop_first() {
                        self.floor_serial = self.floor_serial.max(evicted + 1);
                    }
                }
            }
        }
        Ok(c.username.clone())
    }

    /// Verifies a request's `Authorization` (or, with `proxy`,
    /// `Proxy-Authorization`) headers: the first one for our realm is used
    /// (RFC 3261 §22.4: several may be present, one per realm).
    pub fn verify_request(
        &mut self,
        now: Instant,
        request: &syntax::Request,
        proxy: bool,
    ) -> Result<String, Rejection> {
        let mut first_error = None;
        for h in request.headers.iter() {
            let value = match (h, proxy) {
                (Header::Authorization(a), false) => a.value(),
                (Header::ProxyAuthorization(a), true) => a.value(),
                _ => continue,
            };
            match Credentials::parse(value) {
                Ok(c) if c.realm == self.realm => {
                    let method = request.method.to_string();
                    let uri = request.uri.to_string();
                    let verdict = self.verify_credentials(now, &method, &uri, &c);
                    if let Ok(user) = &verdict {
                        tracing::debug!(%user, algorithm = c.algorithm.token(), "digest authenticated");
                    }
                    return verdict;
                }
                Ok(_) => {}
                Err(e) => {
                    first_error.get_or_insert(Rejection::Malformed(e));
                }
            }
        }
        Err(first_error.unwrap_or(Rejection::Missing))
    }
}

/// Whether a digest-uri names the same user, host and port as the
/// Request-URI (RFC 2617 §3.2.2.5), compared on parsed URIs because
/// phones and our printer may differ in parameter spelling.
fn same_target(digest_uri: &str, request_uri: &str) -> bool {
    if digest_uri == request_uri {
        return true;
    }
    match (
        syntax::Uri::try_from(digest_uri),
        syntax::Uri::try_from(request_uri),
    ) {
        (Ok(a), Ok(b)) => {
            a.user() == b.user()
                && a.host()
                    .to_string()
                    .eq_ignore_ascii_case(&b.host().to_string())
                && a.host_with_port.port == b.host_with_port.port
        }
        _ => false,
    }
}

/// The client side (RFC 3261 §22.2): answers a 401/407 challenge from a
/// carrier trunk. Keeps the nonce count per nonce so a reused nonce gets
/// an increasing `nc` (RFC 7616 §3.4).
#[derive(Clone)]
pub struct DigestClient {
    username: String,
    password: String,
    last_nonce: String,
    nc: u32,
}

impl fmt::Debug for DigestClient {
    /// Redacted: the password is not printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DigestClient")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl DigestClient {
    /// A client for one trunk account.
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        DigestClient {
            username: username.into(),
            password: password.into(),
            last_nonce: String::new(),
            nc: 0,
        }
    }

    /// Picks the strongest answerable challenge among a response's
    /// `WWW-Authenticate`/`Proxy-Authenticate` values (RFC 8760 §2.4:
    /// SHA-256 over MD5; unsupported ones are skipped).
    pub fn pick<'a, I: IntoIterator<Item = &'a str>>(values: I) -> Result<Challenge, DigestError> {
        let mut best: Option<Challenge> = None;
        let mut first_error = None;
        for v in values {
            match Challenge::parse(v) {
                Ok(c) if c.qop_present && !c.qop_auth => {
                    first_error.get_or_insert(DigestError::UnsupportedQop("auth-int".into()));
                }
                Ok(c) => {
                    let better = best.as_ref().is_none_or(|b| {
                        b.algorithm == Algorithm::Md5 && c.algorithm == Algorithm::Sha256
                    });
                    if better {
                        best = Some(c);
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        best.ok_or(first_error.unwrap_or(DigestError::MissingParam("nonce")))
    }

    /// Builds the `Authorization` / `Proxy-Authorization` value answering
    /// `challenge` for a request `method` to `uri` (RFC 7616 §3.4):
    /// `qop=auth` with `cnonce` and an increasing `nc` when offered, else
    /// the RFC 2069 form. `cnonce` comes from the caller's RNG.
    pub fn authorize(
        &mut self,
        challenge: &Challenge,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> Credentials {
        if challenge.nonce != self.last_nonce {
            self.last_nonce = challenge.nonce.clone();
            self.nc = 0;
        }
        let ha1 = challenge
            .algorithm
            .ha1(&self.username, &challenge.realm, &self.password);
        let qop = if challenge.qop_auth {
            self.nc = self.nc.wrapping_add(1);
            Some(QopAuth {
                nc_text: format!("{:08x}", self.nc),
                nc: self.nc,
                cnonce: cnonce.to_string(),
            })
        } else {
            None
        };
        let response = compute_response(
            challenge.algorithm,
            &ha1,
            &challenge.nonce,
            qop.as_ref()
                .map(|q| (q.nc_text.as_str(), q.cnonce.as_str())),
            method,
            uri,
        );
        Credentials {
            username: self.username.clone(),
            realm: challenge.realm.clone(),
            nonce: challenge.nonce.clone(),
            uri: uri.to_string(),
            response,
            algorithm: challenge.algorithm,
            qop,
            opaque: challenge.opaque.clone(),
        }
    }

    /// Answers a 401 (`WWW-Authenticate` → `Authorization`) or 407
    /// (`Proxy-Authenticate` → `Proxy-Authorization`) response for the
    /// request `method`/`uri` (RFC 3261 §22.2–§22.3); returns the header to add.
    pub fn answer(
        &mut self,
        response: &syntax::Response,
        method: &str,
        uri: &str,
        cnonce: &str,
    ) -> Result<Header, DigestError> {
        let proxy = response.status_code.code() == 407;
        let values = response.headers.iter().filter_map(|h| match (h, proxy) {
            (Header::WwwAuthenticate(w), false) => Some(w.value()),
            (Header::ProxyAuthenticate(p), true) => Some(p.value()),
            _ => None,
        });
        let challenge = Self::pick(values)?;
        let value = self.authorize(&challenge, method, uri, cnonce).to_string();
        Ok(if proxy {
            Header::ProxyAuthorization(syntax::ProxyAuthorization::new(value))
        } else {
            Header::Authorization(syntax::Authorization::new(value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,120}") {
            let _ = Credentials::parse(&s);
            let _ = Challenge::parse(&s);
            let _ = Credentials::parse(&format!("Digest {s}"));
        }

        #[test]
        fn credentials_print_parse_roundtrip(
            user in "\\PC{0,20}",
            realm in "\\PC{0,20}",
            nonce in "[A-Za-z0-9+/=]{1,40}",
            uri in "sip:[a-z0-9@.:;=]{1,30}",
            nc in any::<u32>(),
            cnonce in "\\PC{0,20}",
            sha in any::<bool>(),
        ) {
            let c = Credentials {
                username: user,
                realm,
                nonce,
                uri,
                response: "0123abcd".into(),
                algorithm: if sha { Algorithm::Sha256 } else { Algorithm::Md5 },
                qop: Some(QopAuth { nc_text: format!("{nc:08x}"), nc, cnonce }),
                opaque: None,
            };
            prop_assert_eq!(Credentials::parse(&c.to_string()), Ok(c));
        }
    }

    const SECRET: [u8; 32] = [7u8; 32];

    /// RFC 4475 §3.3.9 `regaut01`, byte-exact.
    const REGAUT01: &str = "REGISTER sip:example.com SIP/2.0\r\n\
To: sip:j.user@example.com\r\n\
From: sip:j.user@example.com;tag=87321hj23128\r\n\
Max-Forwards: 8\r\n\
Call-ID: regaut01.0ha0isndaksdj\r\n\
CSeq: 9338 REGISTER\r\n\
Via: SIP/2.0/TCP 192.0.2.253;branch=z9hG4bKkdjuw\r\n\
Authorization: NoOneKnowsThisScheme opaque-data=here\r\n\
Content-Length:0\r\n\
\r\n";

    /// Test time origin (the only clock read: tests drive time from here).
    #[allow(clippy::disallowed_methods)]
    fn start() -> Instant {
        Instant::now()
    }

    /// RFC 4231 §4.3 (test case 2) and §4.2 (test case 1): the keyed nonce's
    /// HMAC-SHA-256.
    #[test]
    fn hmac_sha256_rfc4231_vectors() {
        assert_eq!(
            hex::encode(hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex::encode(hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    #[test]
    fn ct_eq_compares_whole_values() {
        assert!(ct_eq(b"6629fae4", b"6629fae4"));
        assert!(!ct_eq(b"6629fae4", b"6629fae5"));
        assert!(!ct_eq(b"6629fae4", b"6629fae"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn rfc2617_section_3_5_md5_example() {
        let value = r#"Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let c = Credentials::parse(value).unwrap();
        assert_eq!(c.username, "Mufasa");
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(
            c.opaque.as_deref(),
            Some("5ccc069c403ebaf9f0171e9517f40e41")
        );
        let ha1 = Algorithm::Md5.ha1("Mufasa", "testrealm@host.com", "Circle Of Life");
        let q = c.qop.as_ref().unwrap();
        assert_eq!(q.nc, 1);
        let r = compute_response(
            Algorithm::Md5,
            &ha1,
            &c.nonce,
            Some((&q.nc_text, &q.cnonce)),
            "GET",
            &c.uri,
        );
        assert_eq!(r, "6629fae49393a05397450978507c4ef1");
        assert_eq!(r, c.response);
    }

    fn rfc7616_challenge(algorithm: Algorithm) -> Challenge {
        Challenge::parse(&format!(
            r#"Digest
       realm="http-auth@example.org",
       qop="auth, auth-int",
       algorithm={algorithm},
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#
        ))
        .unwrap()
    }

    #[test]
    fn rfc7616_section_3_9_1_sha256_and_md5_examples() {
        for (alg, expected) in [
            (
                Algorithm::Sha256,
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
            (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
        ] {
            let ch = rfc7616_challenge(alg);
            assert!(ch.qop_auth);
            let mut client = DigestClient::new("Mufasa", "Circle of Life");
            let creds = client.authorize(
                &ch,
                "GET",
                "/dir/index.html",
                "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            );
            assert_eq!(creds.response, expected);
            let printed = creds.to_string();
            assert!(printed.contains(&format!("algorithm={}", alg.token())));
            assert!(printed.contains("nc=00000001"));
            assert!(printed.contains(r#"opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#));
            // Print ∘ parse is the identity on what matters.
            assert_eq!(Credentials::parse(&printed).unwrap(), creds);
        }
    }

    #[test]
    fn parses_escapes_whitespace_and_any_order() {
        let c = Credentials::parse(
            "digest   response=\"abc\",uri=sip:a@b , nc=0000000A,qop=auth,cnonce=\"x\\\"y\",\
             nonce=\"n\" ,realm = \"r\\\\eal\\m\",  username=\"we\\\"ird\", algorithm=sha-256,,",
        )
        .unwrap();
        assert_eq!(c.username, "we\"ird");
        assert_eq!(c.realm, "r\\ealm");
        assert_eq!(c.uri, "sip:a@b");
        assert_eq!(c.algorithm, Algorithm::Sha256);
        let q = c.qop.unwrap();
        assert_eq!((q.nc, q.cnonce.as_str()), (10, "x\"y"));
    }

    #[test]
    fn typed_errors_on_bad_credentials() {
        let base = r#"username="u", realm="r", nonce="n", uri="sip:x", response="00""#;
        assert_eq!(
            Credentials::parse("NoOneKnowsThisScheme opaque-data=here"),
            Err(DigestError::NotDigest)
        );
        assert_eq!(
            Credentials::parse(&format!("Digest {base}, algorithm=MD5-sess")),
            Err(DigestError::UnsupportedAlgorithm("MD5-sess".into()))
        );
        assert_eq!(
            Credentials::parse(&format!("Digest {base}, algorithm=SHA-256-sess")),
            Err(DigestError::UnsupportedAlgorithm("SHA-256-sess".into()))
        );
        assert_eq!(
            Credentials::parse(&format!(
                "Digest {base}, qop=auth-int, nc=00000001, cnonce=\"c\""
            )),
            Err(DigestError::UnsupportedQop("auth-int".into()))
        );
        assert_eq!(
            Credentials::parse(&format!("Digest {base}, qop=auth, nc=1, cnonce=\"c\"")),
            Err(DigestError::BadNonceCount)
        );
        assert_eq!(
            Credentials::parse(&format!(
                "Digest {base}, qop=auth, nc=0000000g, cnonce=\"c\""
            )),
            Err(DigestError::BadNonceCount)
        );
        assert_eq!(
            Credentials::parse(&format!("Digest {base}, qop=auth, nc=00000001")),
            Err(DigestError::MissingParam("cnonce"))
        );
        assert_eq!(
            Credentials::parse(r#"Digest realm="r", nonce="n", uri="u", response="0""#),
            Err(DigestError::MissingParam("username"))
        );
        assert_eq!(
            Credentials::parse(&format!("Digest {base}, realm=\"again\"")),
            Err(DigestError::DuplicateParam("realm".into()))
        );
        assert_eq!(
            Credentials::parse(r#"Digest username="u"#),
            Err(DigestError::UnterminatedQuote)
        );
        assert!(matches!(
            Credentials::parse(r#"Digest username "u""#),
            Err(DigestError::Syntax { .. })
        ));
        assert!(matches!(
            Credentials::parse(r#"Digest username="u" realm="r""#),
            Err(DigestError::Syntax { .. })
        ));
    }

    fn verifier(t0: Instant) -> DigestVerifier {
        let mut v = DigestVerifier::new("127.0.0.1", SECRET, t0);
        v.set_password("alice", "alice-secret");
        v
    }

    const RURI: &str = "sip:127.0.0.1:5060";

    fn answer(v: &mut DigestVerifier, now: Instant, password: &str, alg: Algorithm) -> Credentials {
        let ch = v.challenges(now, false);
        let ch = ch.iter().find(|c| c.algorithm == alg).unwrap();
        DigestClient::new("alice", password).authorize(ch, "REGISTER", RURI, "c0ffee")
    }

    #[test]
    fn challenges_offer_sha256_first_then_md5_with_qop_auth() {
        let t0 = start();
        let mut v = verifier(t0);
        let headers = v.challenge_headers(t0, false, false);
        assert_eq!(headers.len(), 2);
        let text: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
        assert!(text[0].starts_with("WWW-Authenticate: Digest realm=\"127.0.0.1\", nonce=\""));
        assert!(
            text[0].ends_with(", algorithm=SHA-256, qop=\"auth\""),
            "{}",
            text[0]
        );
        assert!(
            text[1].ends_with(", algorithm=MD5, qop=\"auth\""),
            "{}",
            text[1]
        );
        let a = Challenge::parse(headers[0].value()).unwrap();
        let b = Challenge::parse(headers[1].value()).unwrap();
        assert_ne!(a.nonce, b.nonce);
        let stale = v.challenge_headers(t0, true, true);
        assert!(stale[0]
            .to_string()
            .starts_with("Proxy-Authenticate: Digest"));
        assert!(stale[0].value().ends_with("stale=true"));
    }

    #[test]
    fn accepts_both_algorithms_and_rejects_wrong_password() {
        let t0 = start();
        let mut v = verifier(t0);
        for alg in [Algorithm::Sha256, Algorithm::Md5] {
            let c = answer(&mut v, t0, "alice-secret", alg);
            assert_eq!(
                v.verify(t0, "REGISTER", RURI, &c.to_string()),
                Ok("alice".to_string())
            );
            let c = answer(&mut v, t0, "guess", alg);
            assert_eq!(
                v.verify(t0, "REGISTER", RURI, &c.to_string()),
                Err(Rejection::WrongCredentials)
            );
        }
        // Method is part of HA2.
        let c = answer(&mut v, t0, "alice-secret", Algorithm::Sha256);
        assert_eq!(
            v.verify(t0, "INVITE", RURI, &c.to_string()),
            Err(Rejection::WrongCredentials)
        );
    }

    #[test]
    fn unknown_user_is_indistinguishable_from_wrong_password() {
        let t0 = start();
        let mut v = verifier(t0);
        let ch = v.challenges(t0, false);
        let c = DigestClient::new("mallory", "x").authorize(&ch[0], "REGISTER", RURI, "c");
        let unknown = v.verify(t0, "REGISTER", RURI, &c.to_string());
        let c = DigestClient::new("alice", "x").authorize(&ch[0], "REGISTER", RURI, "c");
        let wrong = v.verify(t0, "REGISTER", RURI, &c.to_string());
        assert_eq!(unknown, Err(Rejection::WrongCredentials));
        assert_eq!(unknown, wrong);
        // A user who knows the dummy password still is not let in.
        let dummy_pw = hex::encode(hmac_sha256(&SECRET, b"dummy"));
        let c = DigestClient::new("", dummy_pw).authorize(&ch[0], "REGISTER", RURI, "c");
        assert_eq!(
            v.verify(t0, "REGISTER", RURI, &c.to_string()),
            Err(Rejection::WrongCredentials)
        );
    }

    #[test]
    fn forged_or_foreign_nonce_is_unknown() {
        let t0 = start();
        let mut v = verifier(t0);
        let mut other = DigestVerifier::new("127.0.0.1", [9u8; 32], t0);
        let ch = other.challenges(t0, false);
        let c = DigestClient::new("alice", "alice-secret").authorize(&ch[0], "REGISTER", RURI, "c");
        assert_eq!(
            v.verify(t0, "REGISTER", RURI, &c.to_string()),
            Err(Rejection::UnknownNonce)
        );
        let mut c2 = c.clone();
        c2.nonce = "zz".into();
        assert_eq!(
            v.verify_credentials(t0, "REGISTER", RURI, &c2),
            Err(Rejection::UnknownNonce)
        );
    }

    #[test]
    fn expired_nonce_with_correct_response_is_stale() {
        let t0 = start();
        let mut v = verifier(t0);
        let c = answer(&mut v, t0, "alice-secret", Algorithm::Sha256);
        let later = t0 + NONCE_LIFETIME + Duration::from_secs(1);
        let r = v.verify(later, "REGISTER", RURI, &c.to_string());
        assert_eq!(r, Err(Rejection::Stale));
        assert!(r.unwrap_err().stale());
        // A wrong password on an old nonce is not told it was stale.
        let c = answer(&mut v, t0, "nope", Algorithm::Sha256);
        assert_eq!(
            v.verify(later, "REGISTER", RURI, &c.to_string()),
            Err(Rejection::WrongCredentials)
        );
        // Within the lifetime it is fine.
        let c = answer(&mut v, t0, "alice-secret", Algorithm::Md5);
        assert!(v
            .verify(t0 + NONCE_LIFETIME, "REGISTER", RURI, &c.to_string())
            .is_ok());
    }

    #[test]
    fn nonce_count_must_increase() {
        let t0 = start();
        let mut v = verifier(t0);
        let ch = v.challenges(t0, false);
        let mut client = DigestClient::new("alice", "alice-secret");
        let first = client.authorize(&ch[0], "REGISTER", RURI, "c1");
        let second = client.authorize(&ch[0], "REGISTER", RURI, "c2");
        assert_eq!(second.qop.as_ref().unwrap().nc_text, "00000002");
        assert!(v.verify_credentials(t0, "REGISTER", RURI, &first).is_ok());
        assert_eq!(
            v.verify_credentials(t0, "REGISTER", RURI, &first),
            Err(Rejection::Replay)
        );
        assert!(v.verify_credentials(t0, "REGISTER", RURI, &second).is_ok());
        assert_eq!(
            v.verify_credentials(t0, "REGISTER", RURI, &first),
            Err(Rejection::Replay)
        );
        assert_eq!(
            v.verify_credentials(t0, "REGISTER", RURI, &second),
            Err(Rejection::Replay)
        );
    }

    #[test]
    fn qopless_response_is_single_use() {
        let t0 = start();
        let mut v = verifier(t0);
        let mut ch = v.challenges(t0, false)[1].clone();
        ch.qop_auth = false;
        let c = DigestClient::new("alice", "alice-secret").authorize(&ch, "REGISTER", RURI, "x");
        assert!(c.qop.is_none());
        assert!(!c.to_string().contains("qop"));
        assert!(v.verify_credentials(t0, "REGISTER", RURI, &c).is_ok());
        assert_eq!(
            v.verify_credentials(t0, "REGISTER", RURI, &c),
            Err(Rejection::Replay)
        );
    }

    #[test]
    fn tracked_nonces_are_bounded_and_evicted_ones_answer_stale() {
        let t0 = start();
        let mut v = verifier(t0).with_max_tracked(2);
        let creds: Vec<Credentials> = (0..3)
            .map(|_| answer(&mut v, t0, "alice-secret", Algorithm::Sha256))
            .collect();
        for c in &creds {
            assert!(v.verify_credentials(t0, "REGISTER", RURI, c).is_ok());
        }
        assert_eq!(v.used.len(), 2);
        // The evicted nonce cannot be replayed: it is answered stale.
        assert_eq!(
            v.verify_credentials(t0, "REGISTER", RURI, &creds[0]),
            Err(Rejection::Stale)
        );
        // Expired entries are dropped as time passes.
        let later = t0 + NONCE_LIFETIME * 2;
        let c = answer(&mut v, later, "alice-secret", Algorithm::Md5);
        assert!(v.verify_credentials(later, "REGISTER", RURI, &c).is_ok());
        assert_eq!(v.used.len(), 1);
    }

    #[test]
    fn digest_uri_must_match_request_uri() {
        let t0 = start();
        let mut v = verifier(t0);
        let ch = v.challenges(t0, false);
        let c = DigestClient::new("alice", "alice-secret").authorize(
            &ch[0],
            "REGISTER",
            "sip:evil.example.com",
            "c",
        );
        assert_eq!(
            v.verify_credentials(t0, "REGISTER", RURI, &c),
            Err(Rejection::UriMismatch)
        );
    }

    #[test]
    fn verify_request_finds_our_realm_and_reports_missing() {
        let t0 = start();
        let mut v = verifier(t0);
        let c = answer(&mut v, t0, "alice-secret", Algorithm::Sha256);
        let text = format!(
            "REGISTER {RURI} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
             From: <sip:alice@127.0.0.1>;tag=1\r\nTo: <sip:alice@127.0.0.1>\r\nCall-ID: a\r\n\
             CSeq: 2 REGISTER\r\nAuthorization: Digest username=\"alice\", realm=\"other\", \
             nonce=\"n\", uri=\"{RURI}\", response=\"0\"\r\nAuthorization: {c}\r\n\
             Content-Length: 0\r\n\r\n"
        );
        let req = syntax::Request::try_from(text.as_str()).unwrap();
        assert_eq!(v.verify_request(t0, &req, false), Ok("alice".into()));
        assert_eq!(v.verify_request(t0, &req, true), Err(Rejection::Missing));
        let req = syntax::Request::try_from(REGAUT01).unwrap();
        assert_eq!(
            v.verify_request(t0, &req, false),
            Err(Rejection::Malformed(DigestError::NotDigest))
        );
        // RFC 4475 §3.3.9: regaut01 gets a fresh challenge.
        let wire = v.challenge_response(t0, &req, false, false).to_string();
        assert!(wire.starts_with("SIP/2.0 401 Unauthorized\r\n"), "{wire}");
        assert!(wire.contains("\r\nTo: sip:j.user@example.com;tag="));
        assert!(wire.contains("\r\nCSeq: 9338 REGISTER\r\n"));
        let sha = wire
            .find("WWW-Authenticate: Digest realm=\"127.0.0.1\"")
            .unwrap();
        let md5 = wire
            .rfind("WWW-Authenticate: Digest realm=\"127.0.0.1\"")
            .unwrap();
        assert!(sha < md5);
        assert!(wire[sha..md5].contains("algorithm=SHA-256"));
        assert!(wire.ends_with("algorithm=MD5, qop=\"auth\"\r\nContent-Length: 0\r\n\r\n"));
        assert!(syntax::Response::try_from(wire.as_str()).is_ok());
    }

    #[test]
    fn client_answers_401_preferring_sha256() {
        let t0 = start();
        let mut v = verifier(t0);
        let ch = v.challenge_headers(t0, false, false);
        let text = format!(
            "SIP/2.0 401 Unauthorized\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n\
             From: <sip:alice@127.0.0.1>;tag=1\r\nTo: <sip:alice@127.0.0.1>;tag=2\r\nCall-ID: a\r\n\
             CSeq: 1 REGISTER\r\n{}\r\n{}\r\nContent-Length: 0\r\n\r\n",
            ch[1], ch[0]
        );
        let resp = syntax::Response::try_from(text.as_str()).unwrap();
        let mut client = DigestClient::new("alice", "alice-secret");
        let h = client.answer(&resp, "REGISTER", RURI, "cn").unwrap();
        assert!(matches!(h, Header::Authorization(_)));
        assert!(h.value().contains("algorithm=SHA-256"));
        assert_eq!(
            v.verify(t0, "REGISTER", RURI, h.value()),
            Ok("alice".into())
        );
        let text407 = text
            .replace("401 Unauthorized", "407 Proxy Authentication Required")
            .replace("WWW-Authenticate", "Proxy-Authenticate");
        let resp = syntax::Response::try_from(text407.as_str()).unwrap();
        let h = client.answer(&resp, "INVITE", RURI, "cn").unwrap();
        assert!(h
            .to_string()
            .starts_with("Proxy-Authorization: Digest username=\"alice\""));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let t0 = start();
        let v = verifier(t0);
        let ha1 = StoredHa1::from_password("alice", "127.0.0.1", "alice-secret");
        let dbg = format!("{v:?} {ha1:?} {:?}", DigestClient::new("bob", "pw-123"));
        assert!(!dbg.contains(&ha1.md5));
        assert!(!dbg.contains(&ha1.sha256));
        assert!(!dbg.contains("pw-123"));
        assert!(dbg.contains("redacted"));
    }

    #[test]
    fn challenge_headers_print_as_challenges_do() {
        let t0 = start();
        for stale in [false, true] {
            let mut a = verifier(t0);
            let mut b = verifier(t0);
            let printed: Vec<String> = a
                .challenges(t0, stale)
                .iter()
                .map(ToString::to_string)
                .collect();
            let written: Vec<String> = b
                .challenge_headers(t0, stale, false)
                .iter()
                .map(|h| h.value().to_string())
                .collect();
            assert_eq!(printed, written);
        }
    }
}
