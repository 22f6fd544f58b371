//! Transaction matching keys (RFC 3261 §17.1.3, §17.2.3) and branch
//! generation (§8.1.1.7).

use rand::Rng;

use super::TransactionError;
use crate::sip::message::{scan_top_via, TopVia};
use crate::sip::syntax::{prelude::*, Method, Request, Response};

/// The RFC 3261 branch prefix (§8.1.1.7): a branch starting with it is
/// globally unique and matches transactions by itself.
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// A new RFC 3261 branch from 128 random bits: the magic cookie followed by
/// the bits in hex (§8.1.1.7). The caller supplies the randomness, so the
/// core never touches an RNG of its own.
pub fn branch_from_bits(bits: u128) -> String {
    format!("{MAGIC_COOKIE}{bits:032x}")
}

/// A new RFC 3261 branch drawn from `rng` (§8.1.1.7).
pub fn new_branch(rng: &mut impl Rng) -> String {
    branch_from_bits(rng.gen())
}

/// Whether `branch` identifies a transaction by itself: the magic cookie and
/// something after it (RFC 3261 §17.2.3; RFC 4475 §3.2 `badbranch` carries
/// the bare cookie and must be matched the RFC 2543 way).
pub fn is_rfc3261_branch(branch: &str) -> bool {
    branch.len() > MAGIC_COOKIE.len() && branch.starts_with(MAGIC_COOKIE)
}

/// The identity of a server transaction (RFC 3261 §17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TransactionKey {
    /// The top Via carries an RFC 3261 branch: branch + sent-by + method,
    /// with ACK counted as INVITE.
    Branch {
        /// The branch parameter, magic cookie included.
        branch: String,
        /// The top Via sent-by, host lowercased.
        sent_by: String,
        /// The request method; ACK is stored as INVITE.
        method: Method,
    },
    /// RFC 2543 fallback: Request-URI, From tag, Call-ID, CSeq number, top
    /// Via and method (ACK as INVITE). The To tag is compared apart, because
    /// an ACK carries the tag of the response rather than the request's.
    Rfc2543 {
        /// The Request-URI as printed.
        request_uri: String,
        /// The From tag, if any.
        from_tag: Option<String>,
        /// The Call-ID.
        call_id: String,
        /// The CSeq number (not its method).
        cseq: u32,
        /// The whole top Via value, trimmed.
        top_via: String,
        /// The request method; ACK is stored as INVITE.
        method: Method,
    },
}

/// The identity of a server transaction in a [`super::TransactionTable`]
/// (RFC 3261 §17.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerKey(pub TransactionKey);

impl ServerKey {
    /// The key of a request that matches another source's transaction by
    /// §17.2.3 alone (a reused or forged branch): the source is made part of
    /// the identity, so it becomes a transaction of its own instead of
    /// "retransmitting" someone else's (whose responses it would never see).
    pub fn from_source(&self, peer: crate::sip::Peer) -> ServerKey {
        let mut key = self.clone();
        match &mut key.0 {
            TransactionKey::Branch { sent_by, .. } => {
                sent_by.push_str(&format!(" from {peer}"));
            }
            TransactionKey::Rfc2543 { top_via, .. } => {
                top_via.push_str(&format!(" from {peer}"));
            }
        }
        key
    }
}

/// The identity of a client transaction: branch + CSeq method, which is how
/// responses match it (RFC 3261 §17.1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The branch of the top Via the request was sent with.
    pub branch: String,
    /// The request method (the CSeq method of its responses).
    pub method: Method,
}

/// The parts of a request the RFC 2543 rules compare, To tag included.
#[derive(Debug, Clone)]
pub(crate) struct RequestIdentity {
    pub(crate) key: ServerKey,
    /// The To tag, read for RFC 2543 keys only: §17.2.3 compares it for
    /// their ACK alone, and a branch key never looks at To. Every request
    /// would otherwise parse its To once more here, after the validator
    /// (`message::inspect`) already did (SPEC §6, REGISTER per cycle).
    pub(crate) to_tag: Option<String>,
}

/// The top Via's sent-by and branch, read off its text (every request
/// pays this; SPEC §6 REGISTER at Kamailio's CPU per cycle).
fn top_via_parts(msg: &impl HeadersExt) -> Result<TopVia<'_>, TransactionError> {
    // The first Via header line; its first via-parm is the top one.
    let via = msg
        .via_header()
        .map_err(|_| TransactionError::MissingHeader("Via"))?;
    scan_top_via(via.value()).ok_or(TransactionError::MalformedHeader("Via"))
}

/// The typed CSeq of a message.
pub(crate) fn cseq(
    msg: &impl HeadersExt,
) -> Result<crate::sip::syntax::typed::CSeq, TransactionError> {
    msg.cseq_header()
        .map_err(|_| TransactionError::MissingHeader("CSeq"))?
        .typed()
        .map_err(|_| TransactionError::MalformedHeader("CSeq"))
}

/// The To tag of a message, if it has one (RFC 3261 §19.3), read with the
/// validator's name-addr grammar rather than a typed parse.
pub(crate) fn to_tag(msg: &impl HeadersExt) -> Result<Option<String>, TransactionError> {
    let to = msg
        .to_header()
        .map_err(|_| TransactionError::MissingHeader("To"))?;
    let to = crate::sip::message::parse_name_addr(to.value(), "To", false)
        .map_err(|_| TransactionError::MalformedHeader("To"))?;
    Ok(to.tag().map(str::to_string))
}

fn from_tag(msg: &impl HeadersExt) -> Result<Option<String>, TransactionError> {
    let from = msg
        .from_header()
        .map_err(|_| TransactionError::MissingHeader("From"))?;
    let from = crate::sip::message::parse_name_addr(from.value(), "From", false)
        .map_err(|_| TransactionError::MalformedHeader("From"))?;
    Ok(from.tag().map(str::to_string))
}

/// The sent-by as compared (§17.2.3): whitespace removed, lowercased
/// (hosts compare case-insensitively, §19.1.4).
fn sent_by(sent_by: &str) -> String {
    sent_by
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// ACK belongs to the INVITE's server transaction; every other method,
/// CANCEL included, is its own (RFC 3261 §17.2.3).
pub(crate) fn matching_method(method: Method) -> Method {
    if method == Method::Ack {
        Method::Invite
    } else {
        method
    }
}

impl ServerKey {
    /// The server transaction key of a request (RFC 3261 §17.2.3), with the
    /// RFC 2543 fallback when the top Via branch lacks the magic cookie.
    pub fn from_request(request: &Request) -> Result<ServerKey, TransactionError> {
        Ok(RequestIdentity::of(request, matching_method(request.method))?.key)
    }

    /// The key of the INVITE server transaction a CANCEL matches: the same
    /// rules as §17.2.3 with the method taken as INVITE (RFC 3261 §9.2).
    pub fn invite_cancelled_by(cancel: &Request) -> Result<ServerKey, TransactionError> {
        Ok(RequestIdentity::of(cancel, Method::Invite)?.key)
    }

    /// Whether the key was made by the RFC 2543 fallback rules.
    pub fn is_rfc2543(&self) -> bool {
        matches!(self.0, TransactionKey::Rfc2543 { .. })
    }
}

impl RequestIdentity {
    pub(crate) fn of(request: &Request, method: Method) -> Result<Self, TransactionError> {
        let via = top_via_parts(request)?;
        let (key, to_tag) = match via.branch {
            Some(branch) if is_rfc3261_branch(branch) => (
                TransactionKey::Branch {
                    branch: branch.to_string(),
                    sent_by: sent_by(via.sent_by),
                    method,
                },
                None,
            ),
            _ => (
                TransactionKey::Rfc2543 {
                    request_uri: request.uri.to_string(),
                    from_tag: from_tag(request)?,
                    call_id: request
                        .call_id_header()
                        .map_err(|_| TransactionError::MissingHeader("Call-ID"))?
                        .value()
                        .trim()
                        .to_string(),
                    cseq: cseq(request)?.seq,
                    top_via: request
                        .top_via_header()
                        .map_err(|_| TransactionError::MissingHeader("Via"))?
                        .value()
                        .trim()
                        .to_string(),
                    method,
                },
                to_tag(request)?,
            ),
        };
        Ok(RequestIdentity {
            key: ServerKey(key),
            to_tag,
        })
    }
}

impl ClientKey {
    /// The client transaction key of a request we are about to send: its top
    /// Via branch must be an RFC 3261 one (§8.1.1.7), as we generate them.
    pub fn from_request(request: &Request) -> Result<ClientKey, TransactionError> {
        let via = top_via_parts(request)?;
        match via.branch {
            Some(branch) if is_rfc3261_branch(branch) => Ok(ClientKey {
                branch: branch.to_string(),
                method: request.method,
            }),
            _ => Err(TransactionError::NoRfc3261Branch),
        }
    }

    /// The client transaction a response belongs to: top Via branch + CSeq
    /// method (RFC 3261 §17.1.3).
    pub fn from_response(response: &Response) -> Result<ClientKey, TransactionError> {
        let via = top_via_parts(response)?;
        let branch = via
            .branch
            .ok_or(TransactionError::MissingHeader("Via branch"))?;
        Ok(ClientKey {
            branch: branch.to_string(),
            method: cseq(response)?.method,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::syntax::SipMessage;
    use rand::SeedableRng;

    fn request(text: &str) -> Request {
        match SipMessage::try_from(text) {
            Ok(SipMessage::Request(r)) => r,
            other => panic!("not a request: {other:?}"),
        }
    }

    fn response(text: &str) -> Response {
        match SipMessage::try_from(text) {
            Ok(SipMessage::Response(r)) => r,
            other => panic!("not a response: {other:?}"),
        }
    }

    /// RFC 4475 §3.2 `badbranch`, byte for byte.
    const BADBRANCH: &str = "OPTIONS sip:user@example.com SIP/2.0\r\n\
To: sip:user@example.com\r\n\
From: sip:caller@example.org;tag=33242\r\n\
Max-Forwards: 3\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK\r\n\
Accept: application/sdp\r\n\
Call-ID: badbranch.sadonfo23i420jv0as0derf3j3n\r\n\
CSeq: 8 OPTIONS\r\n\
l: 0\r\n\r\n";

    #[test]
    fn generated_branches_carry_the_cookie_and_differ() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = new_branch(&mut rng);
        let b = new_branch(&mut rng);
        assert!(is_rfc3261_branch(&a));
        assert_ne!(a, b);
        assert_eq!(
            branch_from_bits(0xab),
            format!("{MAGIC_COOKIE}{:032x}", 0xab)
        );
    }

    #[test]
    fn badbranch_falls_back_to_rfc2543() {
        let key = ServerKey::from_request(&request(BADBRANCH)).unwrap();
        match &key.0 {
            TransactionKey::Rfc2543 {
                cseq,
                from_tag,
                call_id,
                method,
                ..
            } => {
                assert_eq!(*cseq, 8);
                assert_eq!(from_tag.as_deref(), Some("33242"));
                assert_eq!(call_id, "badbranch.sadonfo23i420jv0as0derf3j3n");
                assert_eq!(*method, Method::Options);
            }
            other => panic!("expected 2543 key, got {other:?}"),
        }
        // The same message again (a retransmission) matches; a new CSeq does not.
        assert_eq!(key, ServerKey::from_request(&request(BADBRANCH)).unwrap());
        let next = BADBRANCH.replace("CSeq: 8", "CSeq: 9");
        assert_ne!(key, ServerKey::from_request(&request(&next)).unwrap());
    }

    #[test]
    fn ack_matches_invite_and_cancel_is_its_own() {
        let invite = "INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP A.Example:5060;branch=z9hG4bKabc\r\n\
From: <sip:a@a.example>;tag=1\r\nTo: <sip:bob@b.example>\r\n\
Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let inv = ServerKey::from_request(&request(invite)).unwrap();
        let ack = invite
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK")
            .replace("<sip:bob@b.example>\r\n", "<sip:bob@b.example>;tag=x\r\n")
            // sent-by compares host case-insensitively
            .replace("A.Example", "a.example");
        assert_eq!(inv, ServerKey::from_request(&request(&ack)).unwrap());
        let cancel = invite
            .replace("INVITE sip", "CANCEL sip")
            .replace("1 INVITE", "1 CANCEL");
        let cancel = request(&cancel);
        assert_ne!(inv, ServerKey::from_request(&cancel).unwrap());
        assert_eq!(inv, ServerKey::invite_cancelled_by(&cancel).unwrap());
        let other_host = invite.replace("A.Example:5060", "b.example:5060");
        assert_ne!(inv, ServerKey::from_request(&request(&other_host)).unwrap());
    }

    #[test]
    fn responses_match_by_branch_and_cseq_method() {
        let ok = response(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bKx1\r\n\
From: <sip:a@a.example>;tag=1\r\nTo: <sip:b@b.example>;tag=2\r\n\
Call-ID: c1\r\nCSeq: 4 BYE\r\nContent-Length: 0\r\n\r\n",
        );
        assert_eq!(
            ClientKey::from_response(&ok).unwrap(),
            ClientKey {
                branch: "z9hG4bKx1".into(),
                method: Method::Bye
            }
        );
    }

    #[test]
    fn client_requests_need_a_cookie_branch() {
        let req = request(BADBRANCH);
        assert_eq!(
            ClientKey::from_request(&req),
            Err(TransactionError::NoRfc3261Branch)
        );
    }

    #[test]
    fn the_top_via_is_read_off_its_text() {
        let top = |v| scan_top_via(v).map(|t| (t.sent_by, t.branch));
        assert_eq!(
            top("SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1;rport"),
            Some(("10.0.0.1:5060", Some("z9hG4bK1")))
        );
        // LWS around the slashes and `=` (RFC 4475 `wsinv`), a second
        // via-parm, a quoted parameter holding a comma.
        assert_eq!(
            top("SIP / 2.0 / UDP  host.example ; x=\"a,b\" ; BRANCH = z9hG4bKx , SIP/2.0/TCP o;branch=z9hG4bKo"),
            Some(("host.example", Some("z9hG4bKx")))
        );
        assert_eq!(
            top("SIP/2.0/UDP [2001:db8::1]:5060;branch=z9hG4bKv6"),
            Some(("[2001:db8::1]:5060", Some("z9hG4bKv6")))
        );
        assert_eq!(
            top("SIP/2.0/UDP 192.0.2.1;rport"),
            Some(("192.0.2.1", None))
        );
        assert_eq!(top("SIP/2.0/UDP"), None);
        assert_eq!(top("SIP/2.0/UDP ;branch=z9hG4bK1"), None);
        assert_eq!(top("garbage"), None);
    }

    #[test]
    fn sent_by_spacing_and_case_do_not_split_a_transaction() {
        let invite = "INVITE sip:bob@b.example SIP/2.0\r\n\
Via: SIP/2.0/UDP A.Example:5060;branch=z9hG4bKabc\r\n\
From: <sip:a@a.example>;tag=1\r\nTo: <sip:bob@b.example>\r\n\
Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let key = ServerKey::from_request(&request(invite)).unwrap();
        let spaced = invite.replace("A.Example:5060", "a.example : 5060");
        assert_eq!(key, ServerKey::from_request(&request(&spaced)).unwrap());
        let other_port = invite.replace("A.Example:5060", "a.example:5061");
        assert_ne!(key, ServerKey::from_request(&request(&other_port)).unwrap());
    }

    /// Only an RFC 2543 key carries the To tag (its ACK compares it,
    /// §17.2.3); a branch key never reads To, which the validator has
    /// parsed already: a To that does not parse leaves a branch key whole.
    #[test]
    fn the_to_tag_is_read_for_rfc2543_keys_only() {
        let tagged = BADBRANCH.replace(
            "To: sip:user@example.com\r\n",
            "To: sip:user@example.com;tag=t1\r\n",
        );
        let old = RequestIdentity::of(&request(&tagged), Method::Options).unwrap();
        assert!(old.key.is_rfc2543());
        assert_eq!(old.to_tag.as_deref(), Some("t1"));
        let branch = tagged.replace("branch=z9hG4bK\r\n", "branch=z9hG4bKb1\r\n");
        let new = RequestIdentity::of(&request(&branch), Method::Options).unwrap();
        assert!(!new.key.is_rfc2543());
        assert_eq!(new.to_tag, None);
        let unparsable = branch.replace(
            "To: sip:user@example.com;tag=t1",
            "To: <sip:user@example.com",
        );
        let key = RequestIdentity::of(&request(&unparsable), Method::Options).unwrap();
        assert_eq!(key.key, new.key);
    }
}
