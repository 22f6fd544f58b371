//! The UAS checks of RFC 3261 §8.2 on a valid request addressed to
//! powerdial, in the order §8.2 gives them.

use super::grammar::parse_digits;
use super::reply::{assemble, echo_of};
use super::syntax::headers::{untyped, Header};
use super::syntax::{HasHeaders, Method, Request, Response, Scheme};

/// Option tags powerdial implements (RFC 3261 §8.2.2.3, §19.2): none yet,
/// so any `Require` of a request it must honour is answered 420.
pub const SUPPORTED_EXTENSIONS: &[&str] = &[];

/// The application-level checks for a request [`super::inspect`] let
/// through, addressed to powerdial; `Some(response)` means "send this and
/// stop". In order (RFC 3261 §8.2.2–§8.2.3):
///
/// 1. Request-URI scheme not sip/sips/tel → 416 (§8.2.2.1).
/// 2. `Max-Forwards: 0` for a Request-URI host not in `our_domains` → 483
///    (§16.3 step 3; a request for powerdial itself, such as OPTIONS with
///    Max-Forwards 0, is answered normally, §11).
/// 3. `Require` with an option tag not in [`SUPPORTED_EXTENSIONS`] → 420
///    with `Unsupported` (§8.2.2.3; not for CANCEL).
/// 4. A body that is not `application/sdp` on INVITE/UPDATE → 415 with
///    `Accept: application/sdp` (§8.2.3).
/// 5. An `Accept` on INVITE/OPTIONS that excludes `application/sdp` → 406
///    (§21.4.7).
///
/// ACK is never answered (§17.1.1.3): for an ACK this returns `None`; an
/// ACK with an unusable body is the dialog's to end with BYE (RFC 3264 §5).
pub fn check_request(req: &Request, our_domains: &[&str]) -> Option<Response> {
    if req.method == Method::Ack {
        return None;
    }
    let scheme_ok = match &req.uri.scheme {
        Some(Scheme::Sip | Scheme::Sips) => true,
        Some(Scheme::Other(s)) => s.eq_ignore_ascii_case("tel"),
        None => false,
    };
    if !scheme_ok {
        return Some(reply(req, 416, "Unsupported URI Scheme", Vec::new()));
    }
    let max_forwards = req.headers().iter().find_map(|h| match h {
        Header::MaxForwards(mf) => parse_digits(mf.value().trim()),
        _ => None,
    });
    if max_forwards == Some(0) && !is_ours(req, our_domains) {
        return Some(reply(req, 483, "Too Many Hops", Vec::new()));
    }
    if req.method != Method::Cancel {
        let unsupported: Vec<String> = req
            .headers()
            .iter()
            .filter_map(|h| match h {
                Header::Require(r) => Some(r.value()),
                _ => None,
            })
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .filter(|t| {
                !SUPPORTED_EXTENSIONS
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(t))
            })
            .map(str::to_string)
            .collect();
        if !unsupported.is_empty() {
            let header = Header::Unsupported(untyped::Unsupported::new(unsupported.join(", ")));
            return Some(reply(req, 420, "Bad Extension", vec![header]));
        }
    }
    let offers_sdp = matches!(req.method, Method::Invite | Method::Update);
    if offers_sdp && !req.body.is_empty() {
        let content_type = req.headers().iter().find_map(|h| match h {
            Header::ContentType(ct) => Some(ct.value()),
            _ => None,
        });
        if !content_type.is_some_and(is_sdp) {
            let accept = Header::Accept(untyped::Accept::new("application/sdp"));
            return Some(reply(req, 415, "Unsupported Media Type", vec![accept]));
        }
    }
    if matches!(req.method, Method::Invite | Method::Options) {
        let accepts: Vec<&str> = req
            .headers()
            .iter()
            .filter_map(|h| match h {
                Header::Accept(a) => Some(a.value()),
                _ => None,
            })
            .collect();
        // An Accept header that lists nothing (§20.1: an empty Accept
        // means no body) cannot take an SDP answer either.
        if !accepts.is_empty() && !accepts.iter().any(|a| accepts_sdp(a)) {
            return Some(reply(req, 406, "Not Acceptable", Vec::new()));
        }
    }
    None
}

fn reply(req: &Request, code: u16, reason: &str, extra: Vec<Header>) -> Response {
    assemble(echo_of(req.headers()), code, reason, None, extra)
}

/// Whether the Request-URI names powerdial: its host (with or without the
/// port) is one of `our_domains`, compared case-insensitively (§19.1.4).
fn is_ours(req: &Request, our_domains: &[&str]) -> bool {
    let host = req.uri.host().to_string();
    let host_port = req.uri.host_with_port.to_string();
    our_domains
        .iter()
        .any(|d| d.eq_ignore_ascii_case(&host) || d.eq_ignore_ascii_case(&host_port))
}

fn media_type(v: &str) -> &str {
    v.split(';').next().unwrap_or_default().trim()
}

fn is_sdp(content_type: &str) -> bool {
    media_type(content_type).eq_ignore_ascii_case("application/sdp")
}

/// Whether one Accept value admits `application/sdp` (§20.1: ranges
/// `*/*`, `application/*`; `q=0` excludes).
fn accepts_sdp(value: &str) -> bool {
    value.split(',').any(|range| {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or_default().trim();
        let matches = ["application/sdp", "application/*", "*/*"]
            .iter()
            .any(|m| m.eq_ignore_ascii_case(media));
        let refused = parts.any(|p| {
            p.split_once('=').is_some_and(|(k, v)| {
                k.trim().eq_ignore_ascii_case("q")
                    && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            })
        });
        matches && !refused
    })
}
