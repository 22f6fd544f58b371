//! SDES key exchange in SDP (RFC 4568) for the agent leg: our offer gets
//! an `a=crypto` line with our key, the phone's answer (or re-INVITE
//! offer) carries its own; each side encrypts with its own key (§6.1).
//!
//! Policy (`security.srtp`, see `config::SrtpPolicy`): keys are only put
//! in SDP that travels over TLS — in clear signalling they would protect
//! nothing. "optional" offers `RTP/AVP` with `a=crypto` (the best-effort
//! form phones such as baresip's `mediaenc=srtp` and most desk phones
//! accept: a phone without SRTP ignores the attribute and answers plain
//! RTP); "required" offers `RTP/SAVP` (RFC 3711 §12), and an answer
//! without a key ends the leg.

use super::sdp::SessionDescription;
use super::srtp::{CryptoAttr, MasterKey, AES_CM_128_HMAC_SHA1_80};

const SAVP: &str = "RTP/SAVP";

/// The tag of our one offered crypto line.
const OUR_TAG: u32 = 1;

/// Adds our key to the audio stream of `offer`; with `mandatory`, the
/// stream's profile becomes `RTP/SAVP`.
pub fn add_to_offer(offer: &mut SessionDescription, ours: &MasterKey, mandatory: bool) {
    if let Some(m) = offer.media.iter_mut().find(|m| m.media == "audio") {
        if mandatory {
            m.proto = SAVP.into();
        }
        m.other
            .push(format!("a=crypto:{}", CryptoAttr::print(OUR_TAG, ours)));
    }
}

/// The first usable `AES_CM_128_HMAC_SHA1_80` key of the audio stream,
/// with its tag.
pub fn key_of(sd: &SessionDescription) -> Option<(u32, MasterKey)> {
    let (_, m) = sd.audio()?;
    m.other.iter().find_map(|line| {
        let a = CryptoAttr::parse(line.strip_prefix("a=crypto:")?).ok()?;
        if a.suite != AES_CM_128_HMAC_SHA1_80 {
            return None;
        }
        Some((a.tag, a.key?))
    })
}

/// Makes `answer` (built by `sdp::answer` for `offer`) the SRTP answer to
/// an offer that carries a key: the offer's profile, and our key under the
/// tag of the offer's line (RFC 4568 §5.1.2). Returns the phone's key, or
/// `None` (answer unchanged) when the offer has no usable one.
pub fn answer_offer(
    offer: &SessionDescription,
    answer: &mut SessionDescription,
    ours: &MasterKey,
) -> Option<MasterKey> {
    let (tag, theirs) = key_of(offer)?;
    let (_, om) = offer.audio()?;
    let proto = om.proto.clone();
    let m = answer
        .media
        .iter_mut()
        .find(|m| m.media == "audio" && m.port != 0)?;
    m.proto = proto;
    m.other
        .push(format!("a=crypto:{}", CryptoAttr::print(tag, ours)));
    Some(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::sdp;

    #[test]
    fn offer_answer_carry_each_sides_key() {
        let ours = MasterKey::random();
        let mut offer = sdp::make_offer("127.0.0.1".parse().expect("ip"), 4000, 1);
        add_to_offer(&mut offer, &ours, false);
        let text = String::from_utf8(offer.to_bytes()).expect("utf8");
        assert!(text.contains("m=audio 4000 RTP/AVP "), "{text}");
        assert!(
            text.contains(&format!(
                "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{}\r\n",
                ours.inline()
            )),
            "{text}"
        );
        // It parses back with our key, and the phone's answer negotiates.
        let reparsed = SessionDescription::parse(text.as_bytes()).expect("parse");
        assert_eq!(
            key_of(&reparsed).map(|(t, k)| (t, k == ours)),
            Some((1, true))
        );

        let theirs = MasterKey::random();
        let phone = format!(
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio 5000 RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
             a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{}\r\na=sendrecv\r\n",
            theirs.inline()
        );
        let phone = SessionDescription::parse(phone.as_bytes()).expect("parse");
        // An SAVP stream is usable audio.
        assert!(sdp::negotiated(&offer, &phone).is_ok());
        assert_eq!(
            key_of(&phone).map(|(t, k)| (t, k == theirs)),
            Some((7, true))
        );

        // Answering the phone's offer: its profile, its tag, our key.
        let mut answer = sdp::answer(&phone, "127.0.0.1".parse().expect("ip"), 4000, 2)
            .expect("answer")
            .sdp;
        let got = answer_offer(&phone, &mut answer, &ours).expect("their key");
        assert!(got == theirs);
        let text = String::from_utf8(answer.to_bytes()).expect("utf8");
        assert!(text.contains("m=audio 4000 RTP/SAVP 0"), "{text}");
        assert!(
            text.contains(&format!(
                "a=crypto:7 AES_CM_128_HMAC_SHA1_80 inline:{}",
                ours.inline()
            )),
            "{text}"
        );

        // Mandatory: the offer's profile is SAVP.
        let mut offer = sdp::make_offer("127.0.0.1".parse().expect("ip"), 4000, 1);
        add_to_offer(&mut offer, &ours, true);
        assert!(String::from_utf8(offer.to_bytes())
            .expect("utf8")
            .contains("RTP/SAVP"));

        // A plain offer: no key, the answer untouched.
        let plain = sdp::make_offer("127.0.0.1".parse().expect("ip"), 6000, 1);
        let mut answer = sdp::answer(&plain, "127.0.0.1".parse().expect("ip"), 4000, 2)
            .expect("answer")
            .sdp;
        let before = answer.clone();
        assert!(answer_offer(&plain, &mut answer, &ours).is_none());
        assert_eq!(answer, before);
    }
}
