//! Messages to octets (RFC 3261 §7): start line, `Name: value` header
//! lines, the empty line, the body verbatim.
//!
//! rsipstack's `Display` prints each header into its own `String`, joins
//! them into another and formats the whole again, and passes the body
//! through `from_utf8_lossy` (a body is octets, §7.4). Every message the
//! SIP task and the call legs send goes through here instead (SPEC §6:
//! REGISTER and call setup at Kamailio's CPU): one buffer, written once.

use super::syntax::{Request, Response, SipMessage, Version};

/// The octets of `message` as sent on the wire.
pub fn to_wire(message: &SipMessage) -> Vec<u8> {
    match message {
        SipMessage::Request(r) => request_to_wire(r),
        SipMessage::Response(r) => response_to_wire(r),
    }
}

/// A request's octets: `Method Request-URI SIP/2.0` (§7.1), then headers
/// and body as [`to_wire`].
pub fn request_to_wire(request: &Request) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(&request.headers.0, request.body.len()));
    // The URI's printer is rsipstack's: one place decides its escaping.
    let start = format!("{} {} ", request.method, request.uri);
    out.extend_from_slice(start.as_bytes());
    version(&mut out, &request.version);
    finish(&mut out, &request.headers.0, &request.body);
    out
}

/// A response's octets: `SIP/2.0 code reason` with the standard phrase
/// for known codes (§7.2, §21), then headers and body as [`to_wire`].
pub fn response_to_wire(response: &Response) -> Vec<u8> {
    let mut out = Vec::with_capacity(estimate(&response.headers.0, response.body.len()));
    version(&mut out, &response.version);
    out.push(b' ');
    decimal(&mut out, response.status_code.code());
    out.push(b' ');
    out.extend_from_slice(response.status_code.text().as_bytes());
    finish(&mut out, &response.headers.0, &response.body);
    out
}

fn estimate(headers: &[super::Header], body: usize) -> usize {
    let head: usize = headers
        .iter()
        .map(|h| h.name().len() + h.value().len() + 4)
        .sum();
    64 + head + body
}

fn version(out: &mut Vec<u8>, v: &Version) {
    match v {
        Version::V2 => out.extend_from_slice(b"SIP/2.0"),
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

fn decimal(out: &mut Vec<u8>, mut n: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + u8::try_from(n % 10).unwrap_or(0);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The start line's CRLF, `Name: value` CRLF per header, the empty line,
/// the body.
fn finish(out: &mut Vec<u8>, headers: &[super::Header], body: &[u8]) {
    out.extend_from_slice(b"\r\n");
    for h in headers {
        out.extend_from_slice(h.name().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::super::syntax::headers::make_header;
    use super::*;

    /// Every header name powerdial may print, in rsipstack's spelling and
    /// compact or odd ones.
    const NAMES: &[&str] = &[
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Authentication-Info",
        "Authorization",
        "CSeq",
        "Call-ID",
        "Call-Info",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Language",
        "Content-Length",
        "Content-Type",
        "Date",
        "Error-Info",
        "Event",
        "Expires",
        "From",
        "In-Reply-To",
        "Max-Forwards",
        "MIME-Version",
        "Min-Expires",
        "Organization",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Record-Route",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "Server",
        "Subject",
        "Subscription-State",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "Warning",
        "WWW-Authenticate",
        "Reason",
        "Refer-To",
        "Referred-By",
        "Session-Expires",
        "Min-SE",
        "P-Asserted-Identity",
        "P-Preferred-Identity",
        "Replaces",
        "RSeq",
        "RAck",
        "Privacy",
        "Path",
        "Service-Route",
        "Identity",
        "User-to-User",
        "Session-ID",
        "History-Info",
        "Diversion",
        "X-Unknown-Extension",
        "i",
        "v",
    ];

    #[test]
    fn each_header_prints_as_rsipstack_prints_it() {
        for name in NAMES {
            let h = make_header(name, "v;x=\"a b\"".to_string());
            let mut out = Vec::new();
            finish(&mut out, std::slice::from_ref(&h), b"");
            let expected = format!("\r\n{h}\r\n\r\n");
            assert_eq!(String::from_utf8_lossy(&out), expected, "{name}");
        }
    }

    #[test]
    fn messages_print_as_rsipstack_prints_them() {
        let request = "REGISTER sip:example.com;transport=udp SIP/2.0\r\n\
            Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport=5060;received=10.0.0.1\r\n\
            Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n\
            Call-ID: c1\r\nCSeq: 2 REGISTER\r\nContact: <sip:a@10.0.0.1>;expires=60\r\n\
            Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
        let parsed = SipMessage::try_from(request).expect("a valid request");
        assert_eq!(to_wire(&parsed), parsed.to_string().into_bytes());
        let SipMessage::Request(req) = &parsed else {
            panic!("a request")
        };
        for code in [100, 180, 200, 401, 403, 423, 481, 500, 503, 599, 699] {
            let response = SipMessage::Response(super::super::response_to(req, code, ""));
            assert_eq!(
                to_wire(&response),
                response.to_string().into_bytes(),
                "{code}"
            );
        }
    }

    #[test]
    fn a_binary_body_is_sent_as_is() {
        let request = "MESSAGE sip:a@example.com SIP/2.0\r\n\
            Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n\
            From: <sip:b@example.com>;tag=1\r\nTo: <sip:a@example.com>\r\n\
            Call-ID: c1\r\nCSeq: 2 MESSAGE\r\nContent-Length: 3\r\n\r\nabc";
        let SipMessage::Request(mut req) = SipMessage::try_from(request).expect("valid") else {
            panic!("a request")
        };
        req.body = vec![0xff, 0x00, 0x80];
        let wire = request_to_wire(&req);
        assert!(wire.ends_with(b"\r\n\r\n\xff\x00\x80"));
    }
}
