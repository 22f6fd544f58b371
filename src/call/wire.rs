//! Building the few messages the legs write by hand: responses to in-dialog
//! requests (RFC 3261 §8.2.6) and the initial INVITE (§8.1.1).

use super::CallError;
use crate::sip::message::response_with_tag;
use crate::sip::syntax::headers::make_header;
use crate::sip::syntax::{Header, HeadersExt, Request, Response};

/// A response to `request` built by the server's one response builder
/// ([`response_with_tag`], RFC 3261 §8.2.6.2: Vias, From, To with
/// `to_tag` when it has none, Call-ID, CSeq), plus `extra` header lines
/// (`Name: value`) and an optional `(content type, body)`.
pub(crate) fn reply(
    request: &Request,
    code: u16,
    reason: &str,
    to_tag: &str,
    extra: &[String],
    body: Option<(&str, &[u8])>,
) -> Result<Response, CallError> {
    let mut response = response_with_tag(request, code, reason, to_tag);
    response
        .headers
        .retain(|h| !matches!(h, Header::ContentLength(_)));
    for line in extra {
        let (name, value) = line
            .split_once(':')
            .ok_or(CallError::Unparsable("header line"))?;
        response
            .headers
            .push(make_header(name.trim(), value.trim().to_string()));
    }
    let bytes = body.map_or(&[][..], |(_, b)| b);
    if let Some((content_type, _)) = body {
        response
            .headers
            .push(make_header("Content-Type", content_type.to_string()));
    }
    response
        .headers
        .push(make_header("Content-Length", bytes.len().to_string()));
    response.body = bytes.to_vec();
    Ok(response)
}

/// Appends Content-Type/Content-Length and the body.
pub(crate) fn finish(mut text: String, body: Option<(&str, &[u8])>) -> Result<Vec<u8>, CallError> {
    let bytes = body.map_or(&[][..], |(_, b)| b);
    if let Some((content_type, _)) = body {
        text.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", bytes.len()));
    let mut wire = text.into_bytes();
    wire.extend_from_slice(bytes);
    Ok(wire)
}

/// Parses bytes we built ourselves as a request.
pub(crate) fn parse_request(bytes: Vec<u8>) -> Result<Request, CallError> {
    Request::try_from(bytes).map_err(|_| CallError::Unparsable("request"))
}

/// The value of the first header named `name` (case-insensitive), trimmed.
pub(crate) fn header<'a>(msg: &'a impl HeadersExt, name: &str) -> Option<&'a str> {
    msg.headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| h.value().trim())
}

/// The body of a message when it is SDP (RFC 3264): an explicit
/// `application/sdp` Content-Type, or a non-empty body without one.
pub(crate) fn sdp_body(msg: &impl HeadersExt, body: &[u8]) -> Option<Vec<u8>> {
    if body.is_empty() {
        return None;
    }
    let is_sdp = header(msg, "Content-Type")
        .or_else(|| header(msg, "c"))
        .is_none_or(|ct| {
            ct.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/sdp"))
        });
    is_sdp.then(|| body.to_vec())
}

/// The Request-URI for `number` at the trunk (SPEC §1 step 3, R2): the trunk URI's
/// host, port and URI parameters (e.g. `;transport=tcp`) with the E.164
/// number as its user part, `sip:+15551234567@carrier:5080;transport=tcp`.
pub fn lead_request_uri(trunk_uri: &str, number: &str) -> Result<String, CallError> {
    let trimmed = trunk_uri.trim();
    let (scheme, rest) = match trimmed.split_once(':') {
        Some((s, r)) if s.eq_ignore_ascii_case("sip") || s.eq_ignore_ascii_case("sips") => {
            (s.to_ascii_lowercase(), r)
        }
        _ => return Err(CallError::BadTrunkUri(trunk_uri.to_string())),
    };
    // A user part in the trunk URI is replaced: it ends at the '@' that
    // comes before any URI parameter or header.
    let stop = rest.find([';', '?']).unwrap_or(rest.len());
    let hostport = match rest[..stop].rfind('@') {
        Some(at) => &rest[at + 1..],
        None => rest,
    };
    let valid_number = number.strip_prefix('+').is_some_and(|digits| {
        !digits.is_empty() && digits.len() <= 15 && digits.bytes().all(|b| b.is_ascii_digit())
    });
    if !valid_number {
        return Err(CallError::NotE164(number.to_string()));
    }
    if hostport.is_empty() || hostport.starts_with([';', '?']) {
        return Err(CallError::BadTrunkUri(trunk_uri.to_string()));
    }
    let uri = format!("{scheme}:{number}@{hostport}");
    crate::sip::syntax::Uri::try_from(uri.as_str())
        .map_err(|_| CallError::BadTrunkUri(trunk_uri.to_string()))?;
    Ok(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_uri_keeps_host_port_and_params() {
        assert_eq!(
            lead_request_uri("sip:127.0.0.1:5080", "+15551234567").unwrap(),
            "sip:+15551234567@127.0.0.1:5080"
        );
        assert_eq!(
            lead_request_uri("sip:trunk@carrier.example;transport=tcp", "+441234567890").unwrap(),
            "sip:+441234567890@carrier.example;transport=tcp"
        );
        assert!(matches!(
            lead_request_uri("http://x", "+1555"),
            Err(CallError::BadTrunkUri(_))
        ));
        assert!(matches!(
            lead_request_uri("sip:h", "15551234567"),
            Err(CallError::NotE164(_))
        ));
        assert!(matches!(
            lead_request_uri("sip:h", "+1555;x"),
            Err(CallError::NotE164(_))
        ));
    }
}
