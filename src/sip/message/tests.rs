//! RFC 4475 torture messages, malformed input, framing, and property tests.

use super::*;
use crate::sip::syntax::{HasHeaders, HeadersExt, Method, Request};

const MAX: usize = DEFAULT_MAX_MESSAGE_SIZE;
/// A domain none of the fixtures address, so `zeromf` is not "for us".
const NOT_US: &[&str] = &["powerdial.invalid"];

macro_rules! fixture {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/fixtures/torture/rfc4475/",
                $name,
                ".dat"
            )) as &[u8],
        )
    };
}

/// All 49 messages of RFC 4475.
const FIXTURES: [(&str, &[u8]); 49] = [
    fixture!("badaspec"),
    fixture!("badbranch"),
    fixture!("baddate"),
    fixture!("baddn"),
    fixture!("badinv01"),
    fixture!("badvers"),
    fixture!("bcast"),
    fixture!("bext01"),
    fixture!("bigcode"),
    fixture!("clerr"),
    fixture!("cparam01"),
    fixture!("cparam02"),
    fixture!("dblreq"),
    fixture!("esc01"),
    fixture!("esc02"),
    fixture!("escnull"),
    fixture!("escruri"),
    fixture!("insuf"),
    fixture!("intmeth"),
    fixture!("inv2543"),
    fixture!("invut"),
    fixture!("longreq"),
    fixture!("ltgtruri"),
    fixture!("lwsdisp"),
    fixture!("lwsruri"),
    fixture!("lwsstart"),
    fixture!("mcl01"),
    fixture!("mismatch01"),
    fixture!("mismatch02"),
    fixture!("mpart01"),
    fixture!("multi01"),
    fixture!("ncl"),
    fixture!("noreason"),
    fixture!("novelsc"),
    fixture!("quotbal"),
    fixture!("regaut01"),
    fixture!("regbadct"),
    fixture!("regescrt"),
    fixture!("scalar02"),
    fixture!("scalarlg"),
    fixture!("sdp01"),
    fixture!("semiuri"),
    fixture!("transports"),
    fixture!("trws"),
    fixture!("unkscm"),
    fixture!("unksm2"),
    fixture!("unreason"),
    fixture!("wsinv"),
    fixture!("zeromf"),
];

fn fixture(name: &str) -> &'static [u8] {
    FIXTURES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, b)| *b)
        .unwrap_or_else(|| panic!("no fixture {name}"))
}

/// The verdict the README of the fixtures gives, as `inspect` +
/// `check_request` must produce it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A request that passes both checks.
    Request,
    /// A valid response.
    Response,
    /// A valid request with an extension method.
    Extension,
    /// `inspect` answers it with this code.
    Reject(u16),
    /// `inspect` passes it, `check_request` answers with this code.
    Answer(u16),
    /// Nothing is sent.
    Drop,
}

use Verdict::*;

const VERDICTS: [(&str, Verdict); 49] = [
    // RFC 4475 §3.1.1: valid.
    ("wsinv", Request),
    ("intmeth", Extension),
    ("esc01", Request),
    ("escnull", Request),
    ("esc02", Extension),
    ("lwsdisp", Request),
    ("longreq", Request),
    ("dblreq", Request),
    ("semiuri", Request),
    ("transports", Request),
    ("mpart01", Request),
    ("unreason", Response),
    ("noreason", Response),
    // §3.1.2: invalid.
    // Its only Via is malformed: answered at the source, the Via echoed verbatim.
    ("badinv01", Reject(400)),
    ("clerr", Reject(400)),
    ("ncl", Reject(400)),
    ("scalar02", Reject(400)),
    ("scalarlg", Drop),
    ("quotbal", Reject(400)),
    ("ltgtruri", Reject(400)),
    ("lwsruri", Reject(400)),
    ("lwsstart", Reject(400)),
    ("trws", Reject(400)),
    ("escruri", Reject(400)),
    ("baddate", Reject(400)),
    ("regbadct", Reject(400)),
    ("badaspec", Reject(400)),
    ("baddn", Reject(400)),
    ("badvers", Reject(505)),
    ("mismatch01", Reject(400)),
    ("mismatch02", Reject(400)),
    ("bigcode", Drop),
    // §3.2: transaction layer.
    ("badbranch", Request),
    // §3.3: application layer.
    ("insuf", Reject(400)),
    ("unkscm", Answer(416)),
    // rsipstack cannot hold `soap.beep://…`: inspect answers the 416.
    ("novelsc", Reject(416)),
    ("unksm2", Request),
    ("bext01", Answer(420)),
    ("invut", Answer(415)),
    ("regaut01", Request),
    ("multi01", Reject(400)),
    ("mcl01", Reject(400)),
    ("bcast", Drop),
    ("zeromf", Answer(483)),
    ("cparam01", Request),
    ("cparam02", Request),
    ("regescrt", Request),
    ("sdp01", Answer(406)),
    // §3.4: backward compatibility.
    ("inv2543", Request),
];

fn verdict(bytes: &[u8]) -> (Verdict, Inspected) {
    let inspected = inspect(bytes, TransportKind::Udp, MAX);
    let v = match &inspected {
        Inspected::Request(req) => match check_request(req, NOT_US) {
            None => Request,
            Some(resp) => Answer(resp.status_code.code()),
        },
        Inspected::Response(_) => Response,
        Inspected::Extension(_) => Extension,
        Inspected::Reject { response, .. } => Reject(response.status_code.code()),
        Inspected::Drop { .. } => Drop,
    };
    (v, inspected)
}

#[test]
fn every_rfc4475_message_gets_its_verdict() {
    let mut wrong = Vec::new();
    for (name, expected) in VERDICTS {
        let (got, inspected) = verdict(fixture(name));
        if got != expected {
            wrong.push(format!(
                "{name}: expected {expected:?}, got {got:?} ({inspected:?})"
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // The table covers every fixture once.
    for (name, _) in FIXTURES {
        assert_eq!(
            VERDICTS.iter().filter(|(n, _)| *n == name).count(),
            1,
            "{name}"
        );
    }
}

fn rejected(name: &str) -> (syntax::Response, Defect) {
    match inspect(fixture(name), TransportKind::Udp, MAX) {
        Inspected::Reject { response, reason } => (response, reason),
        other => panic!("{name}: {other:?}"),
    }
}

fn header_value<'a>(resp: &'a syntax::Response, name: &str) -> Option<&'a str> {
    resp.headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| h.value())
}

#[test]
fn rejections_say_what_was_wrong() {
    let cases = [
        ("insuf", Defect::Missing("To")),
        (
            "clerr",
            Defect::BodyTooShort {
                declared: 9999,
                actual: 154,
            },
        ),
        ("ncl", Defect::BadContentLength),
        ("quotbal", Defect::UnbalancedQuotes("To")),
        ("ltgtruri", Defect::BadRequestUri),
        ("lwsruri", Defect::BadStartLine),
        ("lwsstart", Defect::BadStartLine),
        ("trws", Defect::BadStartLine),
        ("escruri", Defect::RequestUriHeaders),
        ("baddate", Defect::BadDate),
        ("regbadct", Defect::BadAddress("Contact")),
        ("badaspec", Defect::BadAddress("To")),
        ("baddn", Defect::BadDisplayName("To")),
        ("badvers", Defect::VersionNotSupported),
        ("mismatch01", Defect::CSeqMethodMismatch),
        ("mismatch02", Defect::CSeqMethodMismatch),
        ("multi01", Defect::Duplicate("To")),
        ("mcl01", Defect::Duplicate("Content-Length")),
        ("scalar02", Defect::BadMaxForwards),
    ];
    for (name, defect) in cases {
        let (resp, reason) = rejected(name);
        assert_eq!(reason, defect, "{name}");
        let warning = header_value(&resp, "Warning").unwrap_or_default();
        assert_eq!(warning, format!("399 powerdial \"{defect}\""), "{name}");
    }
}

#[test]
fn insuf_is_answered_by_its_via_with_what_it_has() {
    let (resp, _) = rejected("insuf");
    let bytes = resp.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("SIP/2.0 400 Bad Request\r\n"), "{text}");
    assert!(text.contains("Via: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\r\n"));
    assert!(text.contains("CSeq: 193942 INVITE\r\n"));
    assert!(text.contains("Warning: 399 powerdial \"Missing To\"\r\n"));
    assert!(text.contains("Content-Length: 0\r\n"));
    assert!(header_value(&resp, "Call-ID").is_none());
}

#[test]
fn rejections_carry_a_to_tag_stable_across_retransmissions() {
    let (a, _) = rejected("quotbal");
    // quotbal's To cannot be parsed, so it is echoed untouched.
    assert_eq!(
        header_value(&a, "To"),
        Some("\"Mr. J. User <sip:j.user@example.com>")
    );
    let (first, _) = rejected("baddate");
    let (again, _) = rejected("baddate");
    let to = header_value(&first, "To").unwrap_or_default();
    assert!(to.starts_with("sip:user@example.com;tag="), "{to}");
    assert_eq!(header_value(&again, "To"), Some(to));
}

#[test]
fn valid_messages_come_out_whole() {
    let Inspected::Request(wsinv) = inspect(fixture("wsinv"), TransportKind::Udp, MAX) else {
        panic!("wsinv")
    };
    assert_eq!(wsinv.method, Method::Invite);
    assert_eq!(wsinv.body.len(), 150);
    // LWS-laden Via, CSeq and Max-Forwards are normalised for typed use.
    let via = wsinv
        .via_header()
        .map(|v| v.value().to_string())
        .unwrap_or_default();
    assert_eq!(via, "SIP/2.0/UDP 192.0.2.2;branch=390skdjuw");
    assert_eq!(
        wsinv.cseq_header().map(|c| c.value()).ok(),
        Some("9 INVITE")
    );
    assert_eq!(
        wsinv.max_forwards_header().map(|c| c.value()).ok(),
        Some("68")
    );
    assert!(wsinv.top_via_header().is_ok());
    let vias: Vec<_> = wsinv
        .headers()
        .iter()
        .filter(|h| matches!(h, Header::Via(_)))
        .map(|h| h.value().to_string())
        .collect();
    assert_eq!(
        vias[1],
        "SIP/2.0/TCP spindle.example.com;branch=z9hG4bK9ikj8, SIP/2.0/UDP 192.168.255.111;branch=z9hG4bK30239"
    );
    assert!(wsinv.call_id_header().is_ok());

    let Inspected::Request(esc01) = inspect(fixture("esc01"), TransportKind::Udp, MAX) else {
        panic!("esc01")
    };
    assert_eq!(
        esc01.call_id_header().map(|c| c.value()).ok(),
        Some("esc01.239409asdfakjkn23onasd0-3234")
    );

    let Inspected::Extension(intmeth) = inspect(fixture("intmeth"), TransportKind::Tcp, MAX) else {
        panic!("intmeth")
    };
    assert_eq!(
        intmeth.method,
        "!interesting-Method0123456789_*+`.%indeed'~"
    );
    let resp = intmeth.response(501, "Not Implemented");
    assert_eq!(resp.status_code.code(), 501);
    assert!(header_value(&resp, "To").is_some_and(|t| t.contains(";tag=")));

    let Inspected::Response(unreason) = inspect(fixture("unreason"), TransportKind::Udp, MAX)
    else {
        panic!("unreason")
    };
    assert_eq!(unreason.status_code.code(), 200);
    assert!(unreason
        .wire_reason
        .as_deref()
        .is_some_and(|r| r.starts_with("= 2**3 * 5**2")));

    let Inspected::Request(mpart) = inspect(fixture("mpart01"), TransportKind::Udp, MAX) else {
        panic!("mpart01")
    };
    assert_eq!(mpart.body.len(), 553);
}

#[test]
fn dblreq_ignores_octets_past_content_length_on_udp() {
    let Inspected::Request(req) = inspect(fixture("dblreq"), TransportKind::Udp, MAX) else {
        panic!("dblreq")
    };
    assert_eq!(req.method, Method::Register);
    assert!(req.body.is_empty());
    assert_eq!(
        req.call_id_header().map(|c| c.value()).ok(),
        Some("dblreq.0ha0isndaksdj99sdfafnl3lk233412")
    );
}

#[test]
fn application_answers_carry_their_headers() {
    let answer = |name: &str, domains: &[&str]| {
        let Inspected::Request(req) = inspect(fixture(name), TransportKind::Udp, MAX) else {
            panic!("{name}")
        };
        check_request(&req, domains)
    };
    let bext = answer("bext01", NOT_US).unwrap_or_default();
    assert_eq!(bext.status_code.code(), 420);
    assert_eq!(
        header_value(&bext, "Unsupported"),
        Some("nothingSupportsThis, nothingSupportsThisEither")
    );
    let invut = answer("invut", NOT_US).unwrap_or_default();
    assert_eq!(header_value(&invut, "Accept"), Some("application/sdp"));
    // zeromf is an OPTIONS for powerdial itself when example.com is ours.
    assert!(answer("zeromf", &["example.com"]).is_none());
    assert!(answer("zeromf", &["EXAMPLE.com"]).is_none());
    assert_eq!(
        answer("zeromf", NOT_US).map(|r| r.status_code.code()),
        Some(483)
    );
}

const GOOD: &str = "OPTIONS sip:user@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP host.example.com;branch=z9hG4bK1\r\n\
To: <sip:user@example.com>\r\n\
From: <sip:caller@example.com>;tag=1\r\n\
Call-ID: good.1\r\n\
CSeq: 1 OPTIONS\r\n\
Max-Forwards: 70\r\n\
Content-Length: 0\r\n\r\n";

#[test]
fn malformed_input_never_passes() {
    let drop = |bytes: &[u8]| match inspect(bytes, TransportKind::Udp, MAX) {
        Inspected::Drop { reason } => reason,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
    };
    assert_eq!(drop(b""), Defect::Empty);
    assert_eq!(drop(b"\r\n\r\n\r\n"), Defect::Empty);
    assert_eq!(
        drop(&[0xff, 0x00, 0x13, 0x37, 0x80, 0x7f]),
        Defect::NoHeaderEnd
    );
    let garbage: Vec<u8> = (0..2000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert!(matches!(
        inspect(&garbage, TransportKind::Udp, MAX),
        Inspected::Drop { .. }
    ));
    let mut garbage_head = garbage.clone();
    garbage_head.extend_from_slice(b"\r\n\r\n");
    assert!(matches!(
        inspect(&garbage_head, TransportKind::Udp, MAX),
        Inspected::Drop { .. }
    ));
    // Truncated: a datagram cut inside the header section.
    assert_eq!(drop(&GOOD.as_bytes()[..60]), Defect::NoHeaderEnd);

    // A 70 KB header section is not even parsed.
    let mut big = GOOD.replace("Content-Length: 0\r\n\r\n", "");
    while big.len() < 70_000 {
        big.push_str("X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    big.push_str("Content-Length: 0\r\n\r\n");
    assert!(matches!(drop(big.as_bytes()), Defect::TooLarge { .. }));
    // …unless the bound allows it.
    assert!(matches!(
        inspect(big.as_bytes(), TransportKind::Udp, 100_000),
        Inspected::Request(_)
    ));

    let reject = |text: &str, transport| match inspect(text.as_bytes(), transport, MAX) {
        Inspected::Reject { response, reason } => (response.status_code.code(), reason),
        other => panic!("{text:?}: {other:?}"),
    };
    assert!(matches!(
        inspect(GOOD.as_bytes(), TransportKind::Udp, MAX),
        Inspected::Request(_)
    ));
    assert_eq!(
        reject(
            &GOOD.replace("Call-ID: good.1", "Call-ID: go\0od"),
            TransportKind::Udp
        ),
        (400, Defect::NulByte)
    );
    let mut latin1 = GOOD.as_bytes().to_vec();
    let at = GOOD.find("good.1").unwrap_or_default();
    latin1[at] = 0xe9;
    assert!(matches!(
        inspect(&latin1, TransportKind::Udp, MAX),
        Inspected::Reject {
            reason: Defect::InvalidUtf8,
            ..
        }
    ));
    assert_eq!(
        reject(
            &GOOD.replace(
                "Content-Length: 0",
                "Content-Length: 99999999999999999999999"
            ),
            TransportKind::Udp
        ),
        (
            413,
            Defect::TooLarge {
                size: usize::MAX,
                limit: MAX
            }
        )
    );
    assert_eq!(
        reject(
            &GOOD.replace("Content-Length: 0", "Content-Length: 20"),
            TransportKind::Udp
        ),
        (
            400,
            Defect::BodyTooShort {
                declared: 20,
                actual: 0
            }
        )
    );
    assert_eq!(
        reject(
            &GOOD.replace("Content-Length: 0\r\n", ""),
            TransportKind::Tcp
        ),
        (400, Defect::Missing("Content-Length"))
    );
    assert_eq!(
        reject(
            &GOOD.replace("Max-Forwards: 70", "Max-Forwards: 256"),
            TransportKind::Udp
        )
        .1,
        Defect::BadMaxForwards
    );
    assert_eq!(
        reject(
            &GOOD.replace("CSeq: 1 OPTIONS", "CSeq: 2147483648 OPTIONS"),
            TransportKind::Udp
        )
        .1,
        Defect::CSeqTooLarge
    );
    assert_eq!(
        reject(
            &GOOD.replace("Max-Forwards: 70", "Expires: soon"),
            TransportKind::Udp
        )
        .1,
        Defect::BadExpires
    );
    assert_eq!(
        reject(
            &GOOD.replace("sip:user@example.com SIP", "sip:us%zzer@example.com SIP"),
            TransportKind::Udp
        )
        .1,
        Defect::BadRequestUri
    );
    assert_eq!(
        reject(
            &GOOD.replace("To: <sip:user@example.com>", "To: <sip:user@example.com"),
            TransportKind::Udp
        )
        .1,
        Defect::UnbalancedAngles("To")
    );
    assert_eq!(
        reject(
            &GOOD.replace(
                "Max-Forwards: 70\r\n",
                "Max-Forwards: 70\r\nRoute: sip:p.example.com\r\n"
            ),
            TransportKind::Udp
        )
        .1,
        Defect::BadAddress("Route")
    );
    assert_eq!(
        reject(
            &GOOD.replace("Max-Forwards: 70\r\n", " folded-first\r\nBroken header\r\n"),
            TransportKind::Udp
        )
        .1,
        Defect::BadHeaderLine
    );
    // A version word that splits a UTF-8 character where "SIP/" would end.
    assert_eq!(
        reject(
            &GOOD.replace("SIP/2.0\r\nVia", "SIPé/2.0\r\nVia"),
            TransportKind::Udp
        )
        .1,
        Defect::BadStartLine
    );
    assert_eq!(
        reject(
            &GOOD.replace("SIP/2.0\r\nVia", "SIP/3.0\r\nVia"),
            TransportKind::Udp
        ),
        (505, Defect::VersionNotSupported)
    );
    // A bare LF as a line end.
    assert_eq!(
        reject(
            &GOOD.replace("Call-ID: good.1\r\n", "Call-ID: good.1\n"),
            TransportKind::Udp
        )
        .1,
        Defect::BadLineEnd
    );
    // No Via: nowhere to answer.
    assert_eq!(
        drop(
            GOOD.replace("Via: SIP/2.0/UDP host.example.com;branch=z9hG4bK1\r\n", "")
                .as_bytes()
        ),
        Defect::Missing("Via")
    );
    // An invalid ACK is never answered.
    let ack = GOOD
        .replace("OPTIONS", "ACK")
        .replace("Call-ID: good.1\r\n", "");
    assert_eq!(drop(ack.as_bytes()), Defect::Missing("Call-ID"));
    // Responses: out-of-range codes and extra Vias are dropped.
    let resp = "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n\
        To: <sip:a@example.com>;tag=2\r\nFrom: <sip:b@example.com>;tag=1\r\n\
        Call-ID: r.1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    assert!(matches!(
        inspect(resp.as_bytes(), TransportKind::Udp, MAX),
        Inspected::Response(_)
    ));
    assert_eq!(
        drop(resp.replace("200 OK", "099 Low").as_bytes()),
        Defect::BadStatusCode
    );
    assert_eq!(
        drop(resp.replace("200 OK", "700 High").as_bytes()),
        Defect::BadStatusCode
    );
    assert_eq!(
        drop(
            resp.replace(
                "branch=z9hG4bK1",
                "branch=z9hG4bK1, SIP/2.0/UDP x.example.com"
            )
            .as_bytes()
        ),
        Defect::ResponseViaCount
    );
}

#[test]
fn response_to_copies_what_section_8_2_6_says() {
    let Inspected::Request(req) = inspect(GOOD.as_bytes(), TransportKind::Udp, MAX) else {
        panic!("good")
    };
    let trying = response_to(&req, 100, "Trying");
    assert_eq!(header_value(&trying, "To"), Some("<sip:user@example.com>"));
    let ok = response_to(&req, 200, "OK");
    let again = response_to(&req, 200, "OK");
    let to = header_value(&ok, "To").unwrap_or_default().to_string();
    let tag = derive_to_tag("good.1", "z9hG4bK1");
    assert_eq!(to, format!("<sip:user@example.com>;tag={tag}"));
    assert_eq!(header_value(&again, "To"), Some(to.as_str()));
    let bytes = ok.to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(
        text,
        format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP host.example.com;branch=z9hG4bK1\r\n\
             From: <sip:caller@example.com>;tag=1\r\nTo: {to}\r\nCall-ID: good.1\r\n\
             CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
    );
    let chosen = response_with_tag(&req, 180, "Ringing", "abc");
    assert_eq!(
        header_value(&chosen, "To"),
        Some("<sip:user@example.com>;tag=abc")
    );
    // A To that already has a tag keeps it; an unknown code keeps its phrase.
    let Inspected::Request(tagged) = inspect(
        GOOD.replace("example.com>\r\n", "example.com>;tag=x\r\n")
            .as_bytes(),
        TransportKind::Udp,
        MAX,
    ) else {
        panic!("tagged")
    };
    let odd = response_to(&tagged, 499, "Odd");
    assert_eq!(
        header_value(&odd, "To"),
        Some("<sip:user@example.com>;tag=x")
    );
    assert!(String::from_utf8_lossy(&odd.to_bytes()).starts_with("SIP/2.0 499 Odd\r\n"));
    // Round trip: the response is itself valid.
    assert!(matches!(
        inspect(&ok.to_bytes(), TransportKind::Tcp, MAX),
        Inspected::Response(_)
    ));
}

#[test]
fn check_request_covers_accept_require_and_cancel() {
    let req = |extra: &str, method: &str| -> Request {
        let text = GOOD.replace("OPTIONS", method).replace(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\n{extra}"),
        );
        match inspect(text.as_bytes(), TransportKind::Udp, MAX) {
            Inspected::Request(r) => r,
            other => panic!("{text}: {other:?}"),
        }
    };
    let code = |r: &Request| check_request(r, NOT_US).map(|r| r.status_code.code());
    assert_eq!(code(&req("Accept: application/*\r\n", "OPTIONS")), None);
    assert_eq!(
        code(&req("Accept: application/sdp;q=0\r\n", "OPTIONS")),
        Some(406)
    );
    assert_eq!(code(&req("Accept: text/html, */*\r\n", "INVITE")), None);
    assert_eq!(code(&req("Accept: text/html\r\n", "BYE")), None);
    assert_eq!(code(&req("Require: 100rel\r\n", "INVITE")), Some(420));
    assert_eq!(code(&req("Require: 100rel\r\n", "CANCEL")), None);
    assert_eq!(code(&req("Require: 100rel\r\n", "ACK")), None);
    let tel = GOOD.replace("OPTIONS sip:user@example.com", "OPTIONS tel:+15551234567");
    let Inspected::Request(tel) = inspect(tel.as_bytes(), TransportKind::Udp, MAX) else {
        panic!("tel")
    };
    assert_eq!(code(&tel), None);
}

#[test]
fn framer_cuts_streams() {
    let two = [GOOD.as_bytes(), GOOD.as_bytes()].concat();
    let mut f = StreamFramer::default();
    f.push(b"\r\n\r\n\r\n\r\n");
    f.push(&two);
    for _ in 0..2 {
        let m = f.next_message().ok().flatten().unwrap_or_default();
        assert_eq!(&m[..], GOOD.as_bytes());
        assert!(matches!(
            inspect(&m, TransportKind::Tcp, MAX),
            Inspected::Request(_)
        ));
    }
    assert_eq!(f.take_pings(), 2);
    assert!(matches!(f.next_message(), Ok(None)));
    assert_eq!(f.buffered(), 0);

    // Byte by byte, with a body, compact `l:`.
    let with_body = GOOD.replace("Content-Length: 0\r\n\r\n", "l: 5\r\n\r\nhello");
    let mut f = StreamFramer::new(MAX);
    let mut got = Vec::new();
    for b in with_body.as_bytes().iter().chain(GOOD.as_bytes()) {
        f.push(std::slice::from_ref(b));
        while let Ok(Some(m)) = f.next_message() {
            got.push(m);
        }
    }
    assert_eq!(got.len(), 2);
    assert_eq!(&got[0][..], with_body.as_bytes());
    assert_eq!(&got[1][..], GOOD.as_bytes());

    // Truncated input waits.
    let mut f = StreamFramer::default();
    f.push(&with_body.as_bytes()[..with_body.len() - 1]);
    assert!(matches!(f.next_message(), Ok(None)));
    f.push(b"o");
    assert!(matches!(f.next_message(), Ok(Some(_))));
}

#[test]
fn framer_refuses_what_it_cannot_frame() {
    let err = |bytes: &[u8], max: usize| {
        let mut f = StreamFramer::new(max);
        f.push(bytes);
        let e = f.next_message().err();
        // Errors are final.
        assert!(matches!(f.next_message(), Err(FramingError::Failed)));
        e
    };
    assert!(matches!(
        err(GOOD.replace("Content-Length: 0\r\n", "").as_bytes(), MAX),
        Some(FramingError::MissingContentLength)
    ));
    assert!(matches!(
        err(
            GOOD.replace("Content-Length: 0", "Content-Length: -1")
                .as_bytes(),
            MAX
        ),
        Some(FramingError::BadContentLength)
    ));
    assert!(matches!(
        err(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n", MAX),
        Some(FramingError::NotSip)
    ));
    // A body declared over the bound: a 413 can be sent before closing.
    match err(
        GOOD.replace("Content-Length: 0", "Content-Length: 99999")
            .as_bytes(),
        MAX,
    ) {
        Some(FramingError::TooLarge {
            limit,
            response: Some(resp),
        }) => {
            assert_eq!(limit, MAX);
            assert_eq!(resp.status_code.code(), 413);
            assert!(header_value(&resp, "Via").is_some());
        }
        other => panic!("{other:?}"),
    }
    // A header section over the bound, complete or not.
    assert!(matches!(
        err(GOOD.as_bytes(), 100),
        Some(FramingError::TooLarge { response: None, .. })
    ));
    let mut endless = GOOD.replace("Content-Length: 0\r\n\r\n", "").into_bytes();
    let mut f = StreamFramer::new(1024);
    f.push(&endless);
    assert!(matches!(f.next_message(), Ok(None)));
    endless.clear();
    for _ in 0..40 {
        f.push(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    assert!(matches!(
        f.next_message(),
        Err(FramingError::TooLarge { response: None, .. })
    ));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn inspect_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = inspect(&bytes, TransportKind::Udp, MAX);
            let _ = inspect(&bytes, TransportKind::Tcp, 512);
        }

        #[test]
        fn inspect_never_panics_on_mutated_torture(
            which in 0..FIXTURES.len(),
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>(), 0..3u8), 1..8),
        ) {
            let mut bytes = FIXTURES[which].1.to_vec();
            for (at, byte, op) in edits {
                if bytes.is_empty() {
                    bytes.push(byte);
                    continue;
                }
                let i = at.index(bytes.len());
                match op {
                    0 => bytes[i] = byte,
                    1 => bytes.insert(i, byte),
                    _ => { bytes.remove(i); }
                }
            }
            for transport in [TransportKind::Udp, TransportKind::Tcp] {
                if let Inspected::Request(req) = inspect(&bytes, transport, MAX) {
                    let _ = check_request(&req, NOT_US);
                    let _ = response_to(&req, 200, "OK");
                }
            }
            let mut f = StreamFramer::default();
            f.push(&bytes);
            while let Ok(Some(m)) = f.next_message() {
                let _ = inspect(&m, TransportKind::Tcp, MAX);
            }
        }

        #[test]
        fn inspect_never_panics_on_odd_text_in_every_field(
            fields in proptest::collection::vec("[ -~\\u{80}-\\u{10ffff}<>\"\\\\;,:@?%/]{0,12}", 9),
        ) {
            let text = format!(
                "{} {} {}\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK1\r\nTo: {}\r\nFrom: {};tag=1\r\n\
                 Call-ID: x\r\nCSeq: {}\r\nContact: {}\r\nContent-Length: {}\r\n\r\n",
                fields[0], fields[1], fields[2], fields[3], fields[4], fields[5], fields[6],
                fields[7], fields[8],
            );
            for transport in [TransportKind::Udp, TransportKind::Tcp] {
                match inspect(text.as_bytes(), transport, MAX) {
                    Inspected::Request(req) => {
                        let _ = check_request(&req, NOT_US);
                        let _ = response_to(&req, 180, "Ringing");
                    }
                    Inspected::Extension(raw) => {
                        let _ = raw.response(501, "Not Implemented");
                    }
                    _ => {}
                }
            }
            let resp = text.replacen(&format!("{} {} {}", fields[0], fields[1], fields[2]), &format!("SIP/2.0 {} {}", fields[1], fields[2]), 1);
            let _ = inspect(resp.as_bytes(), TransportKind::Udp, MAX);
        }

        #[test]
        fn framer_is_indifferent_to_chunking(cuts in proptest::collection::vec(0..GOOD.len() * 2, 0..6)) {
            let stream = [GOOD.as_bytes(), b"\r\n\r\n", GOOD.as_bytes()].concat();
            let mut cuts = cuts;
            cuts.push(stream.len());
            cuts.sort_unstable();
            let mut f = StreamFramer::default();
            let mut got = Vec::new();
            let mut from = 0;
            for c in cuts {
                let c = c.min(stream.len());
                f.push(&stream[from.min(c)..c]);
                from = from.max(c);
                while let Ok(Some(m)) = f.next_message() {
                    got.push(m);
                }
            }
            prop_assert_eq!(got.len(), 2);
            prop_assert!(got.iter().all(|m| &m[..] == GOOD.as_bytes()));
        }
    }
}

#[test]
fn typed_headers_of_valid_requests_parse_downstream() {
    use crate::sip::syntax::ToTypedHeader;
    for (name, verdict) in VERDICTS {
        if verdict != Request {
            continue;
        }
        let Inspected::Request(req) = inspect(fixture(name), TransportKind::Udp, MAX) else {
            panic!("{name}")
        };
        // The transaction and dialog layers use rsipstack's typed parsers.
        assert!(req.top_via_header().is_ok(), "{name}: Via");
        assert!(
            req.cseq_header().is_ok_and(|c| c.typed().is_ok()),
            "{name}: CSeq"
        );
        assert!(
            req.from_header().is_ok_and(|h| h.typed().is_ok()),
            "{name}: From"
        );
        assert!(
            req.to_header().is_ok_and(|h| h.typed().is_ok()),
            "{name}: To"
        );
    }
}

/// The response's second read of a validated To skips the URI check and
/// finds the same tag and parameters as the validator's parse; a value the
/// validator refuses for its URI alone is still refused on the reject
/// path, which keeps the full parse.
#[test]
fn a_checked_to_reads_the_same_tag_without_the_uri_check() {
    for to in [
        "<sip:alice@127.0.0.1>",
        "\"Alice; the <first>\" <sip:alice@127.0.0.1;transport=udp>;tag=a1",
        "sip:alice@example.com;tag=b2;x=\"q;uoted\"",
        "Alice <sip:alice@[2001:db8::1]:5060>;TAG=c3",
        "<tel:+15550100>",
    ] {
        let full = grammar::parse_name_addr(to, "To", false).unwrap();
        let light = grammar::parse_checked_name_addr(to, "To").unwrap();
        assert_eq!(full.uri, light.uri, "{to}");
        assert_eq!(full.params, light.params, "{to}");
        assert_eq!(full.tag(), light.tag(), "{to}");
    }
    // Structure is still checked: no URI, unbalanced brackets.
    assert!(grammar::parse_checked_name_addr("<>", "To").is_err());
    assert!(grammar::parse_checked_name_addr("<sip:a@b", "To").is_err());
    // A URI the validator refuses with a sound structure around it: only
    // the full parse refuses it, which is why `reject` keeps that one.
    assert!(grammar::parse_name_addr("<notauri>", "To", false).is_err());
    assert!(grammar::parse_checked_name_addr("<notauri>", "To").is_ok());
}
