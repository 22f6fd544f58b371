//! Building responses to requests (RFC 3261 §8.2.6).

use sha2::{Digest, Sha256};

use super::grammar::{parse_checked_name_addr, parse_name_addr};
use super::syntax::headers::{untyped, Header, Headers};
use super::syntax::{HasHeaders, Request, Response, StatusCode, Version};

/// The status for `code`, carrying `reason` when rsipstack has no name for
/// the code. For a code it knows, the wire shows its standard phrase (the
/// printer writes [`StatusCode::text`]); the caller's phrase is kept in
/// `Response::wire_reason` for logs.
fn status(code: u16, reason: &str) -> (StatusCode, Option<String>) {
    match StatusCode::from(code) {
        StatusCode::Other(c, _) => (StatusCode::Other(c, reason.to_string()), None),
        known => {
            let wire = (!reason.is_empty() && !reason.eq_ignore_ascii_case(known.text()))
                .then(|| reason.to_string());
            (known, wire)
        }
    }
}

/// A To tag derived from the Call-ID and the top Via branch, so that a
/// retransmitted request gets the same tag (RFC 3261 §8.2.6.2, §19.3: 64
/// bits from SHA-256, unguessable enough for a tag).
pub fn derive_to_tag(call_id: &str, branch: &str) -> String {
    let mut h = Sha256::new();
    h.update(call_id.as_bytes());
    h.update([0]);
    h.update(branch.as_bytes());
    let digest = h.finalize();
    hex::encode(digest.get(..8).unwrap_or_default())
}

/// The parts of a request a response copies (RFC 3261 §8.2.6.2).
pub(crate) struct Echo {
    /// Via header values, top first.
    pub vias: Vec<String>,
    /// From, as received.
    pub from: Option<String>,
    /// To, as received.
    pub to: Option<String>,
    /// Call-ID.
    pub call_id: Option<String>,
    /// CSeq.
    pub cseq: Option<String>,
    /// The top Via's branch, for deriving a To tag.
    pub branch: String,
    /// Whether `to` comes from a request the validator accepted
    /// (`message::inspect`), so its tag is read without checking its URI
    /// again; false for the raw headers of a rejected request.
    pub to_checked: bool,
}

/// Assemble a response from the echoed headers. A To without a tag gets
/// `tag` (or one derived by [`derive_to_tag`]) when `code > 100`
/// (§8.2.6.2); an unparseable To is echoed untouched.
pub(crate) fn assemble(
    echo: Echo,
    code: u16,
    reason: &str,
    tag: Option<&str>,
    extra: Vec<Header>,
) -> Response {
    // Room for the echoed headers, the extras, Content-Length and the two
    // or three a caller adds (challenges, Contact, Allow) without a regrow.
    let mut headers = Headers(Vec::with_capacity(echo.vias.len() + extra.len() + 8));
    for v in echo.vias {
        headers.push(Header::Via(untyped::Via::new(v)));
    }
    if let Some(from) = echo.from {
        headers.push(Header::From(untyped::From::new(from)));
    }
    if let Some(to) = echo.to {
        let parsed = if echo.to_checked {
            parse_checked_name_addr(&to, "To")
        } else {
            parse_name_addr(&to, "To", false)
        };
        let needs_tag = code > 100 && parsed.is_ok_and(|na| na.tag().is_none());
        let to = if needs_tag {
            let tag = tag.map_or_else(
                || derive_to_tag(echo.call_id.as_deref().unwrap_or_default(), &echo.branch),
                str::to_string,
            );
            let mut tagged = to;
            tagged.reserve(5 + tag.len());
            tagged.push_str(";tag=");
            tagged.push_str(&tag);
            tagged
        } else {
            to
        };
        headers.push(Header::To(untyped::To::new(to)));
    }
    if let Some(call_id) = echo.call_id {
        headers.push(Header::CallId(untyped::CallId::new(call_id)));
    }
    if let Some(cseq) = echo.cseq {
        headers.push(Header::CSeq(untyped::CSeq::new(cseq)));
    }
    for h in extra {
        headers.push(h);
    }
    headers.push(Header::ContentLength(untyped::ContentLength::new("0")));
    let (status_code, wire_reason) = status(code, reason);
    Response {
        status_code,
        wire_reason,
        version: Version::V2,
        headers,
        body: Vec::new(),
    }
}

/// The echo of an already-parsed request's headers.
pub(crate) fn echo_of(headers: &Headers) -> Echo {
    let mut echo = Echo {
        vias: Vec::new(),
        from: None,
        to: None,
        call_id: None,
        cseq: None,
        branch: String::new(),
        // Every request a response is built for passed `inspect` (the
        // only way in from the network) or was built by this stack.
        to_checked: true,
    };
    for h in headers.iter() {
        match h {
            Header::Via(v) => echo.vias.push(v.value().to_string()),
            Header::From(v) if echo.from.is_none() => echo.from = Some(v.value().to_string()),
            Header::To(v) if echo.to.is_none() => echo.to = Some(v.value().to_string()),
            Header::CallId(v) if echo.call_id.is_none() => {
                echo.call_id = Some(v.value().to_string());
            }
            Header::CSeq(v) if echo.cseq.is_none() => echo.cseq = Some(v.value().to_string()),
            _ => {}
        }
    }
    if let Some(branch) = echo
        .vias
        .first()
        .and_then(|top| super::grammar::scan_top_via(top))
        .and_then(|v| v.branch)
    {
        echo.branch = branch.to_string();
    }
    echo
}

/// Build a response to `req` (RFC 3261 §8.2.6): Via(s), From, To (with a
/// tag for codes above 100, derived from Call-ID and branch when the
/// request has none, so retransmissions get the same tag), Call-ID, CSeq,
/// `Content-Length: 0`. Every response the server builds starts here.
pub fn response_to(req: &Request, code: u16, reason: &str) -> Response {
    assemble(echo_of(req.headers()), code, reason, None, Vec::new())
}

/// Like [`response_to`], with the To tag chosen by the caller (a dialog
/// that already has a local tag, RFC 3261 §12.1.1).
pub fn response_with_tag(req: &Request, code: u16, reason: &str, tag: &str) -> Response {
    assemble(echo_of(req.headers()), code, reason, Some(tag), Vec::new())
}
