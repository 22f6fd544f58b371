//! The messages the transaction layer writes itself: 100 Trying (§8.2.6.1),
//! the ACK for a non-2xx final response (§17.1.1.3) and CANCEL (§9.1).

use super::key::cseq;
use super::TransactionError;
use crate::sip::syntax::{
    headers::{Header, Headers},
    prelude::*,
    CSeq, ContentLength, MaxForwards, Method, Request, Response, StatusCode, Version, Via,
};

fn top_via_header(msg: &impl HeadersExt) -> Result<Header, TransactionError> {
    let via = msg
        .top_via_header()
        .map_err(|_| TransactionError::MissingHeader("Via"))?;
    Ok(Header::Via(Via::new(via.value().trim().to_string())))
}

fn required(msg: &impl HasHeaders, name: &'static str) -> Result<Header, TransactionError> {
    msg.headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .cloned()
        .ok_or(TransactionError::MissingHeader(name))
}

fn routes(msg: &impl HasHeaders) -> impl Iterator<Item = Header> + '_ {
    msg.headers()
        .iter()
        .filter(|h| matches!(h, Header::Route(_)))
        .cloned()
}

/// A request sharing `original`'s Request-URI, Call-ID, From, CSeq number and
/// top Via (only), with its Route headers: the common part of ACK and CANCEL.
fn same_hop_request(
    original: &Request,
    method: Method,
    to: Header,
) -> Result<Request, TransactionError> {
    let seq = cseq(original)?.seq;
    let mut headers = Headers::default();
    headers.push(top_via_header(original)?);
    headers.push(required(original, "From")?);
    headers.push(to);
    headers.push(required(original, "Call-ID")?);
    headers.push(Header::CSeq(CSeq::new(format!("{seq} {method}"))));
    for route in routes(original) {
        headers.push(route);
    }
    headers.push(Header::MaxForwards(MaxForwards::new("70")));
    headers.push(Header::ContentLength(ContentLength::new("0")));
    Ok(Request {
        method,
        uri: original.uri.clone(),
        version: Version::V2,
        headers,
        body: Vec::new(),
    })
}

/// The ACK an INVITE client transaction sends for a 300-699 response
/// (RFC 3261 §17.1.1.3): the INVITE's Request-URI, Call-ID, From, CSeq number
/// and top Via (only), its Route headers, and the To of the response (with
/// its tag).
pub fn build_ack_for_non_2xx(
    invite: &Request,
    response: &Response,
) -> Result<Request, TransactionError> {
    same_hop_request(invite, Method::Ack, required(response, "To")?)
}

/// A CANCEL for a pending INVITE (RFC 3261 §9.1): the same Request-URI,
/// Call-ID, From, To, CSeq number and top Via (only) as the INVITE, its Route
/// headers, method CANCEL. It is sent as its own non-INVITE transaction.
pub fn build_cancel(invite: &Request) -> Result<Request, TransactionError> {
    if invite.method != Method::Invite {
        return Err(TransactionError::WrongMethod {
            expected: Method::Invite,
            got: invite.method,
        });
    }
    same_hop_request(invite, Method::Cancel, required(invite, "To")?)
}

/// The 100 Trying an INVITE server transaction sends at once (RFC 3261
/// §17.2.1, §8.2.6.1): the request's Vias, From, To (no tag added), Call-ID,
/// CSeq and Timestamp, no body.
pub fn build_trying(request: &Request) -> Result<Response, TransactionError> {
    let mut headers = Headers::default();
    for h in request.headers.iter() {
        if matches!(h, Header::Via(_)) {
            headers.push(h.clone());
        }
    }
    if headers.is_empty() {
        return Err(TransactionError::MissingHeader("Via"));
    }
    headers.push(required(request, "From")?);
    headers.push(required(request, "To")?);
    headers.push(required(request, "Call-ID")?);
    headers.push(required(request, "CSeq")?);
    if let Some(ts) = request
        .headers
        .iter()
        .find(|h| matches!(h, Header::Timestamp(_)))
    {
        headers.push(ts.clone());
    }
    headers.push(Header::ContentLength(ContentLength::new("0")));
    Ok(Response {
        status_code: StatusCode::Trying,
        wire_reason: None,
        version: Version::V2,
        headers,
        body: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testmsg::{invite, response_to};
    use super::*;
    use crate::sip::syntax::SipMessage;

    #[test]
    fn ack_for_486_follows_17_1_1_3() {
        let inv = invite("z9hG4bKack1");
        let busy = response_to(&inv, 486);
        let ack = build_ack_for_non_2xx(&inv, &busy).unwrap();
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.uri, inv.uri);
        let vias: Vec<_> = ack
            .headers
            .iter()
            .filter(|h| matches!(h, Header::Via(_)))
            .collect();
        assert_eq!(vias.len(), 1);
        assert!(vias[0].value().contains("branch=z9hG4bKack1"));
        assert!(ack.to_header().unwrap().value().contains("tag=b1"));
        assert_eq!(ack.cseq_header().unwrap().value(), "1 ACK");
        assert_eq!(ack.route_headers().len(), 1);
        // Round-trips through the printer and parser.
        let text = String::from_utf8(ack.to_bytes()).unwrap();
        assert!(matches!(
            SipMessage::try_from(text.as_str()),
            Ok(SipMessage::Request(_))
        ));
    }

    #[test]
    fn cancel_follows_9_1() {
        let inv = invite("z9hG4bKcan1");
        let cancel = build_cancel(&inv).unwrap();
        assert_eq!(cancel.method, Method::Cancel);
        assert_eq!(cancel.uri, inv.uri);
        assert_eq!(cancel.cseq_header().unwrap().value(), "1 CANCEL");
        assert_eq!(
            cancel.to_header().unwrap().value(),
            inv.to_header().unwrap().value()
        );
        assert_eq!(
            cancel.call_id_header().unwrap().value(),
            inv.call_id_header().unwrap().value()
        );
        assert!(cancel
            .top_via_header()
            .unwrap()
            .value()
            .contains("z9hG4bKcan1"));
        let bye = super::super::testmsg::non_invite("BYE", "z9hG4bKb");
        assert!(matches!(
            build_cancel(&bye),
            Err(TransactionError::WrongMethod { .. })
        ));
    }

    #[test]
    fn trying_echoes_the_request() {
        let inv = invite("z9hG4bKtry");
        let trying = build_trying(&inv).unwrap();
        assert_eq!(trying.status_code.code(), 100);
        assert_eq!(trying.cseq_header().unwrap().value(), "1 INVITE");
        assert!(!trying.to_header().unwrap().value().contains("tag="));
    }
}
