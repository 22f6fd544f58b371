//! The load driver's own minimal SIP: just enough of RFC 3261 to play a
//! carrier trunk and agent phones against powerdial on loopback — a
//! borrowing parser (first line, headers by name incl. compact forms, body),
//! response and request builders, the SDP lines the driver needs, and MD5
//! digest (RFC 2617 / RFC 8760 with `qop=auth`). It parses only what it
//! reads and allocates one `String` per message it builds.

use std::fmt::Write as _;
use std::net::SocketAddr;

use md5::{Digest, Md5};

/// A received SIP message, borrowed from the receive buffer.
pub struct Msg<'a> {
    /// The request method, or `None` for a response.
    pub method: Option<&'a str>,
    /// The request URI (requests) or the status code (responses).
    pub uri: &'a str,
    pub status: u16,
    head: &'a str,
    pub body: &'a str,
}

fn compact(name: &str) -> Option<&'static str> {
    Some(match name {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        _ => return None,
    })
}

impl<'a> Msg<'a> {
    /// Parses a datagram; `None` when it is not a SIP message.
    pub fn parse(buf: &'a [u8]) -> Option<Msg<'a>> {
        let text = std::str::from_utf8(buf).ok()?;
        let (head, body) = match text.find("\r\n\r\n") {
            Some(i) => (&text[..i], &text[i + 4..]),
            None => (text, ""),
        };
        let first = head.lines().next()?;
        if let Some(rest) = first.strip_prefix("SIP/2.0 ") {
            let status = rest.get(..3)?.parse().ok()?;
            Some(Msg {
                method: None,
                uri: "",
                status,
                head,
                body,
            })
        } else {
            let mut parts = first.split(' ');
            let method = parts.next()?;
            let uri = parts.next()?;
            (parts.next()? == "SIP/2.0").then_some(Msg {
                method: Some(method),
                uri,
                status: 0,
                head,
                body,
            })
        }
    }

    /// Every value of header `name` (case-insensitive, compact forms too).
    pub fn headers<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'a str> + 's {
        self.head.lines().skip(1).filter_map(move |l| {
            let (n, v) = l.split_once(':')?;
            let n = n.trim();
            let hit = n.eq_ignore_ascii_case(name)
                || compact(&n.to_ascii_lowercase()).is_some_and(|c| c.eq_ignore_ascii_case(name));
            hit.then(|| v.trim())
        })
    }

    /// The first value of header `name`.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers(name).next()
    }

    pub fn call_id(&self) -> &'a str {
        self.header("call-id").unwrap_or("")
    }

    /// The CSeq's number and method.
    pub fn cseq(&self) -> (u32, &'a str) {
        let v = self.header("cseq").unwrap_or("");
        let mut it = v.split_whitespace();
        let n = it.next().and_then(|n| n.parse().ok()).unwrap_or(0);
        (n, it.next().unwrap_or(""))
    }

    /// The URI inside `<…>` of header `name` (Contact, From, To).
    pub fn uri_of(&self, name: &str) -> Option<&'a str> {
        let v = self.header(name)?;
        match (v.find('<'), v.find('>')) {
            (Some(a), Some(b)) if a < b => Some(&v[a + 1..b]),
            _ => Some(v.split(';').next()?.trim()),
        }
    }

    /// The user part of the request URI (`sip:USER@host`).
    pub fn ruri_user(&self) -> &'a str {
        let u = self.uri.trim_start_matches("sip:");
        u.split('@').next().unwrap_or("")
    }

    /// The media address of the SDP body (`c=IN IP4` and `m=audio`).
    pub fn sdp_target(&self) -> Option<SocketAddr> {
        let ip = self
            .body
            .lines()
            .find_map(|l| l.strip_prefix("c=IN IP4 "))?
            .trim();
        let port = self
            .body
            .lines()
            .find_map(|l| l.strip_prefix("m=audio "))?
            .split_whitespace()
            .next()?;
        format!("{ip}:{port}").parse().ok()
    }

    /// A response to this request: Via(s), From, To (with `tag` added when
    /// it has none), Call-ID and CSeq copied; `extra` header lines (each
    /// ending in CRLF) and an optional SDP body.
    pub fn response(
        &self,
        code: u16,
        reason: &str,
        tag: &str,
        extra: &str,
        sdp: Option<&str>,
    ) -> String {
        let mut out = String::with_capacity(512 + sdp.map_or(0, str::len));
        let _ = write!(out, "SIP/2.0 {code} {reason}\r\n");
        for v in self.headers("via") {
            let _ = write!(out, "Via: {v}\r\n");
        }
        for v in self.headers("record-route") {
            let _ = write!(out, "Record-Route: {v}\r\n");
        }
        let _ = write!(out, "From: {}\r\n", self.header("from").unwrap_or(""));
        let to = self.header("to").unwrap_or("");
        if to.contains("tag=") || tag.is_empty() {
            let _ = write!(out, "To: {to}\r\n");
        } else {
            let _ = write!(out, "To: {to};tag={tag}\r\n");
        }
        let _ = write!(out, "Call-ID: {}\r\n", self.call_id());
        let _ = write!(out, "CSeq: {}\r\n", self.header("cseq").unwrap_or(""));
        out.push_str(extra);
        body(&mut out, sdp);
        out
    }
}

fn body(out: &mut String, sdp: Option<&str>) {
    match sdp {
        Some(b) => {
            let _ = write!(
                out,
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{b}",
                b.len()
            );
        }
        None => out.push_str("Content-Length: 0\r\n\r\n"),
    }
}

/// A PCMU-only SDP answer/offer for `127.0.0.1:port`.
pub fn sdp(port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    )
}

/// An in-dialog request (the carrier's BYE): `ruri` is the peer's Contact.
#[allow(clippy::too_many_arguments)]
pub fn request(
    method: &str,
    ruri: &str,
    local: SocketAddr,
    branch: &str,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    extra: &str,
) -> String {
    let mut out = String::with_capacity(512);
    let _ = write!(
        out,
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\n{extra}"
    );
    body(&mut out, None);
    out
}

/// The `param="value"` or `param=value` of a challenge or credentials.
pub fn param<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    let rest = header.trim_start();
    let rest = rest.strip_prefix("Digest").unwrap_or(rest);
    let mut s = rest;
    while !s.is_empty() {
        s = s.trim_start_matches([' ', ',']);
        let eq = s.find('=')?;
        let key = s[..eq].trim();
        let after = &s[eq + 1..];
        let (val, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        if key.eq_ignore_ascii_case(name) {
            return Some(val);
        }
        s = next;
    }
    None
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    hex::encode(h.finalize())
}

/// The `Authorization` header value answering an MD5 `challenge` (the
/// `WWW-Authenticate` value) for `method` `uri` (RFC 2617 §3.2.2, with
/// `qop=auth` when offered).
pub fn authorization(
    challenge: &str,
    user: &str,
    password: &str,
    method: &str,
    uri: &str,
    cnonce: &str,
) -> Option<String> {
    let realm = param(challenge, "realm")?;
    let nonce = param(challenge, "nonce")?;
    if let Some(alg) = param(challenge, "algorithm") {
        if !alg.eq_ignore_ascii_case("MD5") {
            return None;
        }
    }
    let ha1 = md5_hex(&[user, realm, password]);
    let ha2 = md5_hex(&[method, uri]);
    let qop_auth =
        param(challenge, "qop").is_some_and(|q| q.split(',').any(|q| q.trim() == "auth"));
    let mut out = format!(
        "Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm=MD5"
    );
    if qop_auth {
        let nc = "00000001";
        let resp = md5_hex(&[&ha1, nonce, nc, cnonce, "auth", &ha2]);
        let _ = write!(
            out,
            ", response=\"{resp}\", qop=auth, nc={nc}, cnonce=\"{cnonce}\""
        );
    } else {
        let resp = md5_hex(&[&ha1, nonce, &ha2]);
        let _ = write!(out, ", response=\"{resp}\"");
    }
    if let Some(o) = param(challenge, "opaque") {
        let _ = write!(out, ", opaque=\"{o}\"");
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &str = "INVITE sip:+442070000001@127.0.0.1:5080 SIP/2.0\r\n\
        Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKabc;rport\r\n\
        v: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKdef\r\n\
        From: <sip:+44@127.0.0.1>;tag=p1\r\nTo: <sip:+442070000001@127.0.0.1>\r\n\
        i: call-1\r\nCSeq: 7 INVITE\r\nContact: <sip:pd@127.0.0.1:5060>\r\n\
        Content-Type: application/sdp\r\nContent-Length: 61\r\n\r\n\
        v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 20002 RTP/AVP 0\r\n";

    #[test]
    fn parses_a_request_and_builds_its_response() {
        let m = Msg::parse(INVITE.as_bytes()).expect("parses");
        assert_eq!(m.method, Some("INVITE"));
        assert_eq!(m.ruri_user(), "+442070000001");
        assert_eq!(m.call_id(), "call-1");
        assert_eq!(m.cseq(), (7, "INVITE"));
        assert_eq!(m.uri_of("contact"), Some("sip:pd@127.0.0.1:5060"));
        assert_eq!(
            m.sdp_target(),
            Some("127.0.0.1:20002".parse().expect("addr"))
        );
        let r = m.response(200, "OK", "c1", "", Some(&sdp(4000)));
        let p = Msg::parse(r.as_bytes()).expect("response parses");
        assert_eq!(p.status, 200);
        assert_eq!(p.headers("via").count(), 2);
        assert!(p.header("to").expect("to").ends_with(";tag=c1"));
        assert_eq!(
            p.sdp_target(),
            Some("127.0.0.1:4000".parse().expect("addr"))
        );
        assert_eq!(
            p.header("content-length")
                .and_then(|l| l.parse::<usize>().ok()),
            Some(p.body.len())
        );
        assert!(Msg::parse(b"garbage").is_none());
    }

    #[test]
    fn answers_an_md5_challenge_as_rfc_2617_says() {
        // RFC 2617 §3.5's example, with the method and URI as given there.
        let ch = r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#;
        let a = authorization(
            ch,
            "Mufasa",
            "Circle Of Life",
            "GET",
            "/dir/index.html",
            "0a4f113b",
        )
        .expect("answers");
        assert!(
            a.contains("response=\"6629fae49393a05397450978507c4ef1\""),
            "{a}"
        );
        assert!(
            a.contains("opaque=\"5ccc069c403ebaf9f0171e9517f40e41\""),
            "{a}"
        );
        assert_eq!(param(ch, "qop"), Some("auth,auth-int"));
        assert!(authorization(
            "Digest realm=\"r\", nonce=\"n\", algorithm=SHA-256",
            "u",
            "p",
            "REGISTER",
            "sip:x",
            "c"
        )
        .is_none());
    }
}
