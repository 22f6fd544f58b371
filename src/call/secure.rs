//! Transport and media security of the agent leg (RFC 3261 §26.2, RFC
//! 4568): which address we write in Via and Contact, and whether the
//! offer carries an SRTP key, from the transports the agent's phones are
//! registered on and `security.srtp` (see `media::sdes` for the policy).

use super::{AgentTarget, LocalAddress};
use crate::config::SrtpPolicy;
use crate::media::srtp::MasterKey;
use crate::sip::TransportKind;

/// What [`plan`] decided for one agent leg.
#[derive(Debug)]
pub(crate) struct AgentPlan {
    /// Our addresses for this leg: over TLS, the TLS listener in Via and a
    /// `sips:` Contact, so in-dialog requests (ACK, BYE) come back over
    /// TLS and never in clear.
    pub local: LocalAddress,
    /// Our SRTP key, when the offer carries one.
    pub key: Option<MasterKey>,
    /// Whether the phone must take SRTP (`RTP/SAVP`).
    pub mandatory: bool,
}

/// Why the agent cannot be called under the policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("security.srtp is \"required\" and the agent's phone is not registered over TLS (SDES keys are never sent in clear signalling)")]
pub(crate) struct NeedsTls;

/// Decides for `targets`: SRTP keys only when every fork goes over TLS
/// (one offer serves all forks, and a key must never reach a clear leg).
pub(crate) fn plan(
    policy: SrtpPolicy,
    targets: &[AgentTarget],
    tls_local: Option<std::net::SocketAddr>,
    local: &LocalAddress,
) -> Result<AgentPlan, NeedsTls> {
    let all_tls = !targets.is_empty()
        && targets
            .iter()
            .all(|t| t.peer.transport == TransportKind::Tls);
    let (Some(addr), true) = (tls_local, all_tls) else {
        if policy == SrtpPolicy::Required {
            return Err(NeedsTls);
        }
        return Ok(AgentPlan {
            local: local.clone(),
            key: None,
            mandatory: false,
        });
    };
    let local = LocalAddress {
        sent_by: addr.to_string(),
        contact: format!("sips:powerdial@{addr}"),
        domain: local.domain.clone(),
    };
    let key = (policy != SrtpPolicy::Off).then(MasterKey::random);
    Ok(AgentPlan {
        local,
        key,
        mandatory: policy == SrtpPolicy::Required,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::Peer;

    fn target(t: TransportKind) -> AgentTarget {
        AgentTarget {
            peer: Peer {
                transport: t,
                addr: "127.0.0.1:5070".parse().expect("addr"),
            },
            contact: "sip:alice@127.0.0.1:5070".into(),
        }
    }

    #[test]
    fn keys_only_over_tls() {
        let local = LocalAddress {
            sent_by: "127.0.0.1:5060".into(),
            contact: "sip:powerdial@127.0.0.1:5060".into(),
            domain: "example.com".into(),
        };
        let tls = Some("127.0.0.1:5061".parse().expect("addr"));
        let p = plan(
            SrtpPolicy::Optional,
            &[target(TransportKind::Tls)],
            tls,
            &local,
        )
        .expect("plan");
        assert!(p.key.is_some() && !p.mandatory);
        assert_eq!(p.local.contact, "sips:powerdial@127.0.0.1:5061");
        assert_eq!(p.local.sent_by, "127.0.0.1:5061");
        // A UDP fork among them: no key, our plain addresses.
        let p = plan(
            SrtpPolicy::Optional,
            &[target(TransportKind::Tls), target(TransportKind::Udp)],
            tls,
            &local,
        )
        .expect("plan");
        assert!(p.key.is_none());
        assert_eq!(p.local, local);
        let p = plan(SrtpPolicy::Off, &[target(TransportKind::Tls)], tls, &local).expect("plan");
        assert!(p.key.is_none());
        assert_eq!(p.local.contact, "sips:powerdial@127.0.0.1:5061");
        let p = plan(
            SrtpPolicy::Required,
            &[target(TransportKind::Tls)],
            tls,
            &local,
        )
        .expect("plan");
        assert!(p.key.is_some() && p.mandatory);
        assert_eq!(
            plan(
                SrtpPolicy::Required,
                &[target(TransportKind::Udp)],
                tls,
                &local
            )
            .err(),
            Some(NeedsTls)
        );
    }
}
