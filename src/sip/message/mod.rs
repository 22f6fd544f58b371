//! The SIP message front door: every octet from the network passes here
//! before a transaction sees it.
//!
//! - [`StreamFramer`] cuts a TCP byte stream into messages (RFC 3261 §18.3).
//! - [`inspect`] validates one message (a UDP datagram or a framed TCP
//!   message) against RFC 3261 §7, §8.2, §20 and §25, and turns it into an
//!   `rsipstack` [`syntax::Request`]/[`syntax::Response`], a
//!   [`RawRequest`] for extension methods rsipstack cannot represent, a
//!   ready-made error response, or a drop.
//! - [`check_request`] applies the UAS checks of §8.2.1–§8.2.3 (416, 420,
//!   415, 406, 483) to a request addressed to powerdial.
//! - [`response_to`] builds every response the server sends (§8.2.6).
//! - [`to_wire`] prints a message to octets (§7).
//!
//! rsipstack parses headers lazily and accepts most invalid messages (RFC
//! 4475 `badinv01`, `clerr`, `ncl`, …) while refusing valid ones with an
//! extension method (`intmeth`, `esc02`), so this module does its own light
//! pre-parse (start line, folded header lines, compact and case-insensitive
//! names) and validates on that.
//!
//! Decisions:
//! - A response needs a place to go: a request with no Via is dropped.
//!   One whose Via is malformed (RFC 4475 `badinv01`) gets a 400 that
//!   echoes the Via verbatim when it is printable text; powerdial answers
//!   at the request's source address anyway (see `sip::endpoint`). A request with a good Via but without To,
//!   From or Call-ID (RFC 4475 `insuf`) gets a 400 with what it has: the
//!   client matches it by branch and CSeq method (§17.1.3).
//! - An invalid ACK is dropped: ACK is never answered (§17.1.1.3).
//! - Responses are never answered: an invalid one is dropped, as is one
//!   with more than one Via (we send requests without proxies, §18.1.2,
//!   RFC 4475 `bcast`).
//! - Reasons are given as a `Warning: 399 powerdial "…"` header (§20.43);
//!   the status line keeps its standard phrase.
//! - A header section larger than the size limit is dropped; a message
//!   whose header section fits but whose body does not gets 413.

mod check;
mod framing;
mod grammar;
mod raw;
mod reply;
mod wire;

#[cfg(test)]
mod tests;

pub use check::{check_request, SUPPORTED_EXTENSIONS};
pub use framing::{FramingError, StreamFramer, DEFAULT_MAX_MESSAGE_SIZE};
pub use reply::{derive_to_tag, response_to, response_with_tag};
pub use wire::{request_to_wire, response_to_wire, to_wire};

use super::syntax;
use super::syntax::headers::{make_header, untyped, Header, Headers};
use super::TransportKind;
use grammar::{
    check_uri, is_media_type, is_sip_date, is_token, parse_cseq, parse_digits, parse_via,
    split_top, UriPlace, ViaParm,
};
pub(crate) use grammar::{parse_name_addr, scan_top_via, TopVia};
use raw::RawMessage;
use reply::Echo;

/// What is wrong with a message (RFC 3261 §25 grammar and §8.2 rules).
/// Its text is the reason given in the `Warning` of a 4xx/5xx.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Defect {
    /// Nothing but keep-alive CRLFs, or no octets at all.
    #[error("Empty message")]
    Empty,
    /// No empty line ends the header section (§7).
    #[error("No end of header section")]
    NoHeaderEnd,
    /// A line ended by a bare LF or CR (§7: CRLF).
    #[error("Line not ended by CRLF")]
    BadLineEnd,
    /// A header line without a colon, or with an invalid name (§7.3.1).
    #[error("Malformed header line")]
    BadHeaderLine,
    /// A NUL octet in a header, outside a quoted-pair (§25.1).
    #[error("NUL octet in a header")]
    NulByte,
    /// A control octet in a header, outside a quoted-pair (§25.1).
    #[error("Control character in a header")]
    ControlChar,
    /// A header that is not UTF-8 (§25.1 TEXT-UTF8).
    #[error("Invalid UTF-8 in a header")]
    InvalidUtf8,
    /// A start line that is neither Request-Line nor Status-Line with
    /// single SP separators (§7.1, §7.2; RFC 4475 `lwsstart`, `trws`).
    #[error("Malformed start line")]
    BadStartLine,
    /// A Request-URI that is not an absolute URI (§19.1; RFC 4475
    /// `ltgtruri`).
    #[error("Malformed Request-URI")]
    BadRequestUri,
    /// A Request-URI carrying `?headers` (§19.1.5; RFC 4475 `escruri`).
    #[error("Request-URI carries headers")]
    RequestUriHeaders,
    /// A URI in a header that does not parse (§19.1).
    #[error("Malformed URI")]
    BadUri,
    /// A SIP version other than 2.0 (§8.2.2: 505; RFC 4475 `badvers`).
    #[error("SIP version not supported")]
    VersionNotSupported,
    /// A status code that is not three digits in 100–699 (§7.2, §21;
    /// RFC 4475 `bigcode`).
    #[error("Status code out of range")]
    BadStatusCode,
    /// A mandatory header is missing (§8.1.1; RFC 4475 `insuf`).
    #[error("Missing {0}")]
    Missing(&'static str),
    /// A header allowed once appears more than once (§7.3.1; RFC 4475
    /// `multi01`, `mcl01`).
    #[error("More than one {0}")]
    Duplicate(&'static str),
    /// A Via that does not parse (§20.42; RFC 4475 `badinv01`).
    #[error("Malformed Via")]
    BadVia,
    /// A response with more than one Via (§18.1.2; RFC 4475 `bcast`).
    #[error("Response with more than one Via")]
    ResponseViaCount,
    /// A CSeq that does not parse (§20.16).
    #[error("Malformed CSeq")]
    BadCSeq,
    /// A CSeq number of 2^31 or more (§8.1.1.5; RFC 4475 `scalar02`).
    #[error("CSeq number too large")]
    CSeqTooLarge,
    /// A CSeq method other than the request's (§8.1.1.5; RFC 4475
    /// `mismatch01`, `mismatch02`).
    #[error("CSeq method does not match the request method")]
    CSeqMethodMismatch,
    /// Max-Forwards not an integer in 0–255 (§20.22).
    #[error("Max-Forwards not in 0-255")]
    BadMaxForwards,
    /// Content-Length not `1*DIGIT` (§20.14; RFC 4475 `ncl`).
    #[error("Malformed Content-Length")]
    BadContentLength,
    /// Fewer body octets than Content-Length says (§18.3; RFC 4475
    /// `clerr`).
    #[error("Body shorter than Content-Length")]
    BodyTooShort {
        /// The Content-Length value.
        declared: u64,
        /// The octets present.
        actual: usize,
    },
    /// Unterminated quoted string (§25.1; RFC 4475 `quotbal`).
    #[error("Unbalanced quotes in {0}")]
    UnbalancedQuotes(&'static str),
    /// `<` without `>` or the reverse (§25.1).
    #[error("Unbalanced angle brackets in {0}")]
    UnbalancedAngles(&'static str),
    /// A name-addr/addr-spec that does not parse (§20.10; RFC 4475
    /// `badaspec`, `regbadct`).
    #[error("Malformed address in {0}")]
    BadAddress(&'static str),
    /// An unquoted display name that is not tokens (§25.1; RFC 4475
    /// `baddn`).
    #[error("Malformed display name in {0}")]
    BadDisplayName(&'static str),
    /// An empty or malformed header parameter (§25.1).
    #[error("Malformed parameter in {0}")]
    BadParam(&'static str),
    /// Expires not `delta-seconds` (§20.19).
    #[error("Malformed Expires")]
    BadExpires,
    /// Date not an RFC 1123 date in GMT (§20.17; RFC 4475 `baddate`).
    #[error("Malformed Date")]
    BadDate,
    /// Content-Type not a media type (§20.15).
    #[error("Malformed Content-Type")]
    BadContentType,
    /// The message is larger than the configured bound.
    #[error("Message of {size} octets over the {limit}-octet limit")]
    TooLarge {
        /// Octets in the message (header section and body).
        size: usize,
        /// The bound.
        limit: usize,
    },
    /// A Request-URI scheme powerdial does not serve (§8.2.2.1: 416;
    /// RFC 4475 `unkscm`, `novelsc`).
    #[error("Unsupported URI scheme")]
    UnsupportedScheme,
}

impl Defect {
    /// The status code a request with this defect is answered with:
    /// 505 (RFC 3261 §21.5.6), 413 (§21.4.11), 416 (§8.2.2.1), else 400
    /// (§21.4.1).
    pub fn status_code(&self) -> u16 {
        match self {
            Defect::VersionNotSupported => 505,
            Defect::TooLarge { .. } => 413,
            Defect::UnsupportedScheme => 416,
            _ => 400,
        }
    }
}

/// A request whose method rsipstack cannot represent (extension methods,
/// RFC 3261 §7.1 `extension-method`; RFC 4475 `intmeth`, `esc02`),
/// otherwise valid. The caller answers it, usually with 501 (§8.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRequest {
    /// The method token, as sent (case-sensitive, §7.1).
    pub method: String,
    /// The Request-URI, as sent.
    pub uri: String,
    /// The headers, unfolded, Via/CSeq/Max-Forwards normalised.
    pub headers: Headers,
    /// The body, cut at Content-Length.
    pub body: Vec<u8>,
}

impl RawRequest {
    /// A response to this request (RFC 3261 §8.2.6), e.g. `501 Not
    /// Implemented` (§8.2.1).
    pub fn response(&self, code: u16, reason: &str) -> syntax::Response {
        reply::assemble(
            reply::echo_of(&self.headers),
            code,
            reason,
            None,
            Vec::new(),
        )
    }
}

/// The verdict of [`inspect`] on one message.
#[derive(Debug, Clone)]
pub enum Inspected {
    /// A valid request with a method rsipstack knows.
    Request(syntax::Request),
    /// A valid response.
    Response(syntax::Response),
    /// A valid request with an extension method (answer 501, §8.2.1).
    Extension(RawRequest),
    /// An invalid request that can be answered: send `response` back
    /// (400, 505, 413, 416), addressed by its Via (§18.2.2).
    Reject {
        /// The error response, built from the request's own headers.
        response: syntax::Response,
        /// What was wrong.
        reason: Defect,
    },
    /// Nothing to answer: an invalid response, an invalid ACK, a request
    /// with no usable Via, keep-alives, garbage. Log and drop.
    Drop {
        /// What was wrong.
        reason: Defect,
    },
}

impl Inspected {
    fn drop(reason: Defect) -> Self {
        Inspected::Drop { reason }
    }
}

/// Inspect one message (a UDP datagram, or a TCP message cut by
/// [`StreamFramer`]) and decide what it is (RFC 3261 §7, §8.2, §16.3
/// syntax, §18.3, §20, §25). On UDP, octets past Content-Length are
/// ignored (§18.3, RFC 4475 `dblreq`) and a missing Content-Length means
/// "the rest of the datagram"; on TCP it is required. Pure: no I/O, no
/// clock, never panics.
pub fn inspect(bytes: &[u8], transport: TransportKind, max_size: usize) -> Inspected {
    let bytes = &bytes[raw::leading_crlf(bytes)..];
    if bytes.is_empty() {
        return Inspected::drop(Defect::Empty);
    }
    // Bounded work: a header section that does not fit is not parsed.
    if bytes.len() > max_size && raw::head_end(&bytes[..max_size.min(bytes.len())]).is_none() {
        return Inspected::drop(Defect::TooLarge {
            size: bytes.len(),
            limit: max_size,
        });
    }
    // A datagram is complete as it stands: one whose last header line ends
    // in CRLF but lacks the empty line (RFC 4475 `baddn`) is read as if it
    // had it, so it can still be answered. A stream must carry the line.
    let patched;
    let bytes = if transport == TransportKind::Udp
        && bytes.ends_with(b"\r\n")
        && !bytes.ends_with(b"\r\n\r\n")
        && raw::head_end(bytes).is_none()
    {
        patched = [bytes, b"\r\n"].concat();
        &patched[..]
    } else {
        bytes
    };
    let mut msg = match raw::split(bytes) {
        Ok(m) => m,
        Err(d) => return Inspected::drop(d),
    };
    if msg.start_line.starts_with(b"SIP/") {
        match response(&mut msg, transport, max_size) {
            Ok(r) => Inspected::Response(r),
            Err(d) => Inspected::drop(d),
        }
    } else {
        request(&mut msg, transport, max_size)
    }
}

/// Validated Via headers: the parms of each Via header line, top first.
type Vias = Vec<Vec<ViaParm>>;

fn vias(msg: &RawMessage<'_>) -> Result<Vias, Defect> {
    let mut out = Vec::new();
    for h in msg.all("Via") {
        if let Some(d) = &h.defect {
            return Err(d.clone());
        }
        out.push(parse_via(&h.value)?);
    }
    if out.is_empty() {
        return Err(Defect::Missing("Via"));
    }
    Ok(out)
}

/// Every Via of a SIP/2.0 message says SIP/2.0 (§20.42).
fn via_versions(vias: &Vias) -> Result<(), Defect> {
    if vias.iter().flatten().all(|p| p.version == "2.0") {
        Ok(())
    } else {
        Err(Defect::BadVia)
    }
}

fn request(msg: &mut RawMessage<'_>, transport: TransportKind, max_size: usize) -> Inspected {
    let start = String::from_utf8_lossy(msg.start_line);
    let method_word = start.split(' ').next().unwrap_or_default();
    let is_ack = method_word == "ACK";
    let vias = match vias(msg) {
        Ok(v) => v,
        // A malformed Via (RFC 4475 `badinv01`) can still be answered: the
        // response goes back to the source address and echoes the Via
        // verbatim, as long as it is printable text.
        Err(d) if !is_ack => match reject_with_raw_vias(msg, &d) {
            Some(response) => {
                return Inspected::Reject {
                    response,
                    reason: d,
                }
            }
            None => return Inspected::drop(d),
        },
        Err(d) => return Inspected::drop(d),
    };
    match validate_request(msg, &vias, transport, max_size) {
        Ok(v) => v,
        Err(d) if is_ack => Inspected::drop(d),
        Err(d) => Inspected::Reject {
            response: reject(msg, &vias, &d),
            reason: d,
        },
    }
}

/// Validates a request and builds it; `msg`'s header values are moved
/// into the result, so it is only read again when this fails (and then
/// before anything was moved).
fn validate_request(
    msg: &mut RawMessage<'_>,
    vias: &Vias,
    transport: TransportKind,
    max_size: usize,
) -> Result<Inspected, Defect> {
    let line = std::str::from_utf8(msg.start_line).map_err(|_| Defect::BadStartLine)?;
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, uri, version] = parts.as_slice() else {
        return Err(Defect::BadStartLine);
    };
    if !is_token(method) || version.is_empty() || uri.is_empty() {
        return Err(Defect::BadStartLine);
    }
    check_version(version)?;
    via_versions(vias)?;
    let scheme = check_uri(uri, UriPlace::RequestLine)?;
    let body = body(msg, transport, max_size)?;
    validate_headers(msg)?;
    let cseq = single(msg, "CSeq")?.ok_or(Defect::Missing("CSeq"))?;
    let (_, cseq_method) = parse_cseq(cseq)?;
    if cseq_method != *method {
        return Err(Defect::CSeqMethodMismatch);
    }
    let known = matches!(
        *method,
        "ACK" | "BYE" | "CANCEL" | "INFO" | "INVITE" | "MESSAGE"
    ) || matches!(
        *method,
        "NOTIFY" | "OPTIONS" | "PRACK" | "PUBLISH" | "REFER" | "REGISTER" | "SUBSCRIBE" | "UPDATE"
    );
    let parsed_method = method.parse::<syntax::Method>().ok().filter(|_| known);
    let Some(method) = parsed_method else {
        let (method, uri) = ((*method).to_string(), (*uri).to_string());
        return Ok(Inspected::Extension(RawRequest {
            method,
            uri,
            headers: build_headers(msg, vias, body.len()),
            body: body.to_vec(),
        }));
    };
    let served = ["sip", "sips", "tel"]
        .iter()
        .any(|s| s.eq_ignore_ascii_case(scheme));
    let uri = match syntax::uri::parse_uri(uri) {
        Ok(u) if served || scheme_of(&u).is_some_and(|s| s.eq_ignore_ascii_case(scheme)) => u,
        _ if served => return Err(Defect::BadRequestUri),
        // rsipstack cannot hold this URI; only a 416 could answer it.
        _ => return Err(Defect::UnsupportedScheme),
    };
    let headers = build_headers(msg, vias, body.len());
    Ok(Inspected::Request(syntax::Request {
        method,
        uri,
        version: syntax::Version::V2,
        headers,
        body: body.to_vec(),
    }))
}

fn scheme_of(uri: &syntax::Uri) -> Option<String> {
    uri.scheme.as_ref().map(ToString::to_string)
}

/// `SIP/2.0`, case-insensitive (§7.1); another `SIP/x.y` is a 505.
fn check_version(v: &str) -> Result<(), Defect> {
    if v.eq_ignore_ascii_case("SIP/2.0") {
        return Ok(());
    }
    // `get` rather than indexing: the word may split a UTF-8 character.
    let looks_like_version = v.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
        && v.get(4..)
            .and_then(|n| n.split_once('.'))
            .is_some_and(|(a, b)| parse_digits(a).is_some() && parse_digits(b).is_some());
    Err(if looks_like_version {
        Defect::VersionNotSupported
    } else {
        Defect::BadStartLine
    })
}

fn response(
    msg: &mut RawMessage<'_>,
    transport: TransportKind,
    max_size: usize,
) -> Result<syntax::Response, Defect> {
    let (version, rest) = split_at_sp(msg.start_line).ok_or(Defect::BadStartLine)?;
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(Defect::VersionNotSupported);
    }
    let (code, reason) = split_at_sp(rest).ok_or(Defect::BadStatusCode)?;
    let code = std::str::from_utf8(code)
        .ok()
        .filter(|c| c.len() == 3)
        .and_then(parse_digits)
        .filter(|c| (100..=699).contains(c))
        .and_then(|c| u16::try_from(c).ok())
        .ok_or(Defect::BadStatusCode)?;
    let reason = std::str::from_utf8(reason).map_err(|_| Defect::InvalidUtf8)?;
    if let Some(d) = grammar::text_defect(reason) {
        return Err(d);
    }
    let vias = vias(msg)?;
    if vias.len() > 1 || vias.iter().any(|v| v.len() > 1) {
        return Err(Defect::ResponseViaCount);
    }
    via_versions(&vias)?;
    let body = body(msg, transport, max_size)?;
    validate_headers(msg)?;
    let cseq = single(msg, "CSeq")?.ok_or(Defect::Missing("CSeq"))?;
    parse_cseq(cseq)?;
    let headers = build_headers(msg, &vias, body.len());
    let status_code = syntax::StatusCode::try_from((code, reason))
        .unwrap_or_else(|_| syntax::StatusCode::Other(code, reason.to_string()));
    let wire_reason = (!reason.is_empty()
        && !matches!(status_code, syntax::StatusCode::Other(..))
        && !reason.eq_ignore_ascii_case(status_code.text()))
    .then(|| reason.to_string());
    Ok(syntax::Response {
        status_code,
        wire_reason,
        version: syntax::Version::V2,
        headers,
        body: body.to_vec(),
    })
}

fn split_at_sp(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == b' ')?;
    Some((&b[..i], &b[i + 1..]))
}

/// The body cut at Content-Length (§18.3, §20.14), and the size bound.
fn body<'a>(
    msg: &RawMessage<'a>,
    transport: TransportKind,
    max_size: usize,
) -> Result<&'a [u8], Defect> {
    let body = match single(msg, "Content-Length")? {
        Some(v) => {
            let n = parse_digits(v).ok_or(Defect::BadContentLength)?;
            let len = usize::try_from(n).ok().filter(|n| *n <= msg.body.len());
            match len {
                Some(len) => &msg.body[..len],
                None => {
                    let size = msg
                        .head_len
                        .saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
                    if size > max_size {
                        return Err(Defect::TooLarge {
                            size,
                            limit: max_size,
                        });
                    }
                    return Err(Defect::BodyTooShort {
                        declared: n,
                        actual: msg.body.len(),
                    });
                }
            }
        }
        None if transport.is_reliable() => return Err(Defect::Missing("Content-Length")),
        None => msg.body,
    };
    let size = msg.head_len + body.len();
    if size > max_size {
        return Err(Defect::TooLarge {
            size,
            limit: max_size,
        });
    }
    Ok(body)
}

/// The value of a header allowed at most once.
fn single<'m>(msg: &'m RawMessage<'_>, name: &'static str) -> Result<Option<&'m str>, Defect> {
    let mut it = msg.all(name);
    let first = it.next();
    if it.next().is_some() {
        return Err(Defect::Duplicate(name));
    }
    Ok(first.map(|h| h.value.as_str()))
}

/// Header rules common to requests and responses (§7.3, §8.1.1, §20).
fn validate_headers(msg: &RawMessage<'_>) -> Result<(), Defect> {
    if let Some(d) = &msg.defect {
        return Err(d.clone());
    }
    if let Some(d) = msg.headers.iter().find_map(|h| h.defect.clone()) {
        return Err(d);
    }
    for name in ["To", "From", "Call-ID", "CSeq"] {
        single(msg, name)?.ok_or(Defect::Missing(name))?;
    }
    for name in ["To", "From"] {
        if let Some(v) = single(msg, name)? {
            parse_name_addr(v, name, false)?;
        }
    }
    if single(msg, "Call-ID")?.is_some_and(|v| v.is_empty() || v.contains(char::is_whitespace)) {
        return Err(Defect::BadHeaderLine);
    }
    if let Some(mf) = single(msg, "Max-Forwards")? {
        parse_digits(mf)
            .filter(|n| *n <= 255)
            .ok_or(Defect::BadMaxForwards)?;
    }
    if let Some(e) = single(msg, "Expires")? {
        parse_digits(e).ok_or(Defect::BadExpires)?;
    }
    if let Some(d) = single(msg, "Date")? {
        if !is_sip_date(d) {
            return Err(Defect::BadDate);
        }
    }
    if let Some(ct) = single(msg, "Content-Type")? {
        if !is_media_type(ct) {
            return Err(Defect::BadContentType);
        }
    }
    for (name, brackets) in [
        ("Contact", false),
        ("Route", true),
        ("Record-Route", true),
        ("Reply-To", false),
    ] {
        for h in msg.all(name) {
            if name == "Contact" && h.value == "*" {
                continue;
            }
            for element in split_top(&h.value, b',', name)? {
                parse_name_addr(element, name, brackets)?;
            }
        }
    }
    Ok(())
}

/// rsipstack headers from validated raw ones: canonical names, Via, CSeq,
/// Max-Forwards and Content-Length rewritten without LWS so the typed
/// parsers downstream read them (`wsinv`). The values are moved out of
/// `msg` (one copy fewer per header line on every message): call it last.
fn build_headers(msg: &mut RawMessage<'_>, vias: &Vias, body_len: usize) -> Headers {
    let mut via_lines = vias.iter();
    let mut headers = Headers::default();
    for h in &mut msg.headers {
        let header = match &*h.name {
            "Via" => match via_lines.next() {
                Some(parms) => Header::Via(untyped::Via::new(join_vias(parms))),
                None => continue,
            },
            "CSeq" => match parse_cseq(&h.value) {
                Ok((n, m)) => Header::CSeq(untyped::CSeq::new(format!("{n} {m}"))),
                Err(_) => make_header(&h.name, std::mem::take(&mut h.value)),
            },
            "Max-Forwards" => match parse_digits(&h.value) {
                Some(n) => Header::MaxForwards(untyped::MaxForwards::new(n.to_string())),
                None => make_header(&h.name, std::mem::take(&mut h.value)),
            },
            "Content-Length" => {
                Header::ContentLength(untyped::ContentLength::new(body_len.to_string()))
            }
            // The headers every REGISTER and call carries, built at once:
            // rsipstack's `make_header` finds a name by comparing it with
            // each one it knows in turn (the names here are canonical
            // already, see `raw::canonical_name`).
            "From" => Header::From(untyped::From::new(std::mem::take(&mut h.value))),
            "To" => Header::To(untyped::To::new(std::mem::take(&mut h.value))),
            "Call-ID" => Header::CallId(untyped::CallId::new(std::mem::take(&mut h.value))),
            "Contact" => Header::Contact(untyped::Contact::new(std::mem::take(&mut h.value))),
            "Authorization" => {
                Header::Authorization(untyped::Authorization::new(std::mem::take(&mut h.value)))
            }
            "Expires" => Header::Expires(untyped::Expires::new(std::mem::take(&mut h.value))),
            _ => make_header(&h.name, std::mem::take(&mut h.value)),
        };
        headers.push(header);
    }
    headers
}

fn join_vias(parms: &[ViaParm]) -> String {
    let mut out = String::with_capacity(
        parms
            .iter()
            .map(|p| p.sent_by.len() + p.params.len() + 20)
            .sum(),
    );
    for (i, p) in parms.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        p.write_to(&mut out);
    }
    out
}

/// The error response for an invalid request, from its raw headers: only
/// values that are clean text are echoed.
fn reject(msg: &RawMessage<'_>, vias: &Vias, defect: &Defect) -> syntax::Response {
    let clean = |name: &str| {
        msg.first(name)
            .filter(|h| h.defect.is_none())
            .map(|h| h.value.clone())
    };
    let branch = vias
        .first()
        .and_then(|v| v.first())
        .and_then(ViaParm::branch)
        .unwrap_or_default()
        .to_string();
    let echo = Echo {
        vias: vias.iter().map(|v| join_vias(v)).collect(),
        from: clean("From"),
        to: clean("To"),
        call_id: clean("Call-ID"),
        cseq: clean("CSeq"),
        branch,
        to_checked: false,
    };
    let code = defect.status_code();
    let warning = Header::Warning(untyped::Warning::new(format!("399 powerdial \"{defect}\"")));
    let reason = match code {
        505 => "Version Not Supported",
        413 => "Request Entity Too Large",
        416 => "Unsupported URI Scheme",
        _ => "Bad Request",
    };
    reply::assemble(echo, code, reason, None, vec![warning])
}

/// A 400 for a request whose Via headers do not parse, echoing them as
/// received when they are clean printable text; `None` when there is no
/// Via at all or it holds control characters.
fn reject_with_raw_vias(msg: &RawMessage<'_>, defect: &Defect) -> Option<syntax::Response> {
    let raw: Vec<String> = msg
        .all("Via")
        .filter(|h| h.defect.is_none())
        .map(|h| h.value.clone())
        .collect();
    if raw.is_empty()
        || raw
            .iter()
            .any(|v| v.is_empty() || v.chars().any(|c| c.is_control()))
    {
        return None;
    }
    let mut response = reject(msg, &Vec::new(), defect);
    let vias = raw.into_iter().map(|v| Header::Via(untyped::Via::new(v)));
    let mut headers: Vec<Header> = vias.collect();
    headers.extend(response.headers.iter().cloned());
    response.headers = headers.into();
    Some(response)
}

/// The 413 for a stream message whose header section is `head` and whose
/// declared body would exceed the bound, when it can be addressed.
pub(crate) fn oversized_response(
    head: &[u8],
    size: usize,
    limit: usize,
) -> Option<syntax::Response> {
    let msg = raw::split(head).ok()?;
    if msg.start_line.starts_with(b"SIP/") || msg.start_line.starts_with(b"ACK ") {
        return None;
    }
    let vias = vias(&msg).ok()?;
    Some(reject(&msg, &vias, &Defect::TooLarge { size, limit }))
}
