//! SDP bodies from phones and carriers (RFC 4566, RFC 3264): parsing, the
//! answer powerdial builds to an offer, the negotiation of an answer to
//! its own offer, and printing: what parses prints into something that
//! parses again.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use powerdial::media::sdp::{answer, make_offer, negotiated, SessionDescription};

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = SessionDescription::parse(data) else {
        return;
    };
    if let Some((_, m)) = sdp.audio() {
        let _ = sdp.direction_of(m);
        let _ = sdp.connection_of(m);
        let _ = m.telephone_event_pt();
        for pt in m.payload_types() {
            let _ = m.rtpmap(pt);
            let _ = m.g711_law(pt);
        }
    }
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let _ = answer(&sdp, ip, 20_000, 1);
    let _ = negotiated(&make_offer(ip, 20_000, 1), &sdp);
    let printed = sdp.to_bytes();
    assert!(
        SessionDescription::parse(&printed).is_ok(),
        "printed SDP does not parse again: {:?}",
        String::from_utf8_lossy(&printed)
    );
});
