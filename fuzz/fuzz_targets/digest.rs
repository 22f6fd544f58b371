//! Digest header values (RFC 7616, RFC 8760): the credentials phones send
//! (`Authorization`), the challenges carriers send (`WWW-Authenticate`),
//! and the verifier checking a REGISTER carrying fuzzed credentials.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use powerdial::sip::digest::{Challenge, Credentials, DigestClient, DigestVerifier};
use powerdial::sip::message::inspect;
use powerdial::sip::message::Inspected;
use powerdial::sip::TransportKind;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = Credentials::parse(text);
    let _ = Challenge::parse(text);
    let _ = DigestClient::pick(text.split('\n'));
    // The same value as the Authorization of a REGISTER, through the
    // verifier (CR and LF would end the header: those inputs stop here).
    if text.contains(['\r', '\n']) {
        return;
    }
    let register = format!(
        "REGISTER sip:127.0.0.1 SIP/2.0\r\n\
Via: SIP/2.0/UDP 203.0.113.7:5060;branch=z9hG4bK-f1\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@127.0.0.1>;tag=1\r\n\
To: <sip:alice@127.0.0.1>\r\n\
Call-ID: fuzz-1\r\n\
CSeq: 1 REGISTER\r\n\
Contact: <sip:alice@203.0.113.7>\r\n\
Authorization: {text}\r\n\
Content-Length: 0\r\n\r\n"
    );
    let t0 = Instant::now();
    if let Inspected::Request(r) = inspect(register.as_bytes(), TransportKind::Udp, 16 * 1024) {
        let mut v = DigestVerifier::new("127.0.0.1", [3; 32], t0);
        v.set_password("alice", "alice-secret");
        let _ = v.verify_request(t0, &r, false);
    }
});
