//! The relay driver on real 127.0.0.1 sockets: two plain UDP sockets play the
//! agent's phone and the carrier.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::timeout;

use super::*;
use crate::media::dtmf::TelephoneEvent;
use crate::media::g711::{G711Law, ALAW_TO_ULAW, ULAW_TO_ALAW};
use crate::media::rewrite::{parse_rtp, RtpPacket};
use crate::media::sdp::{Codec, Direction};

fn neg(remote: SocketAddr, law: G711Law, dtmf_pt: u8) -> Negotiated {
    Negotiated {
        remote,
        remote_rtcp: SocketAddr::new(remote.ip(), remote.port() + 1),
        codec: Codec {
            law,
            pt: law.static_pt(),
        },
        dtmf_pt: Some(dtmf_pt),
        direction: Direction::SendRecv,
        ptime: 20,
    }
}

fn rtp(pt: u8, marker: bool, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0x80, pt | if marker { 0x80 } else { 0 }];
    b.extend_from_slice(&seq.to_be_bytes());
    b.extend_from_slice(&ts.to_be_bytes());
    b.extend_from_slice(&ssrc.to_be_bytes());
    b.extend_from_slice(payload);
    b
}

async fn recv(s: &UdpSocket, wait_ms: u64) -> Option<(RtpPacket, Vec<u8>)> {
    let mut buf = [0u8; 2048];
    let (n, _) = timeout(Duration::from_millis(wait_ms), s.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let p = parse_rtp(&buf[..n]).ok()?;
    let payload = buf[p.payload.clone()].to_vec();
    Some((p, payload))
}

fn relay() -> MediaRelay {
    MediaRelay::new(RelayConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        // Away from the default range and other tests; busy ports are skipped.
        ports: PortRange {
            first: 41000,
            last: 41999,
        },
        core: CoreConfig {
            beep: Duration::from_millis(100),
            ..CoreConfig::default()
        },
        socket_buffer: 1 << 18,
    })
    .unwrap()
}

#[tokio::test]
async fn agent_hears_tone_then_exactly_the_lead_and_dtmf_star_is_an_event() {
    let relay = relay();
    let pairs = relay.free_port_pairs();
    let agent_phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let (media, mut events) = relay.open_agent().unwrap();
    let agent_leg = media.agent_leg();
    let agent_port: SocketAddr = ([127, 0, 0, 1], agent_leg.local_port).into();
    media
        .set_remote(
            agent_leg.id,
            neg(agent_phone.local_addr().unwrap(), G711Law::Pcmu, 101),
        )
        .unwrap();
    media.play_tone().unwrap();

    // The agent hears the beep (5 frames of 100 ms), then silence, one stream.
    let mut heard = Vec::new();
    for _ in 0..8 {
        heard.push(recv(&agent_phone, 500).await.expect("generated frame"));
    }
    assert!(heard[..5]
        .iter()
        .all(|(p, pl)| p.pt == 0 && pl.len() == 160 && pl.iter().any(|b| *b != 0xFF)));
    assert!(heard[5..]
        .iter()
        .all(|(_, pl)| pl.iter().all(|b| *b == 0xFF)));
    let ssrc = heard[0].0.ssrc;
    assert!(heard[0].0.marker);

    // Dial: the lead leg, PCMA with event PT 100.
    let lead = media.open_lead_leg().unwrap();
    let lead_port: SocketAddr = ([127, 0, 0, 1], lead.local_port).into();
    assert_eq!(relay.free_port_pairs(), pairs - 2);
    media
        .set_remote(
            lead.id,
            neg(carrier.local_addr().unwrap(), G711Law::Pcma, 100),
        )
        .unwrap();

    // Answer.
    media.bridge(lead.id).unwrap();
    let lead_payloads: Vec<Vec<u8>> = (0..5u8).map(|i| vec![0x10 + i * 16; 160]).collect();
    for (i, pl) in lead_payloads.iter().enumerate() {
        carrier
            .send_to(
                &rtp(
                    8,
                    false,
                    700 + i as u16,
                    90_000 + 160 * i as u32,
                    0xC0FFEE,
                    pl,
                ),
                lead_port,
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Collect everything the agent gets for a while: generated frames sent
    // before the bridge applied, then exactly the lead's five packets.
    while let Some(pkt) = recv(&agent_phone, 150).await {
        heard.push(pkt);
    }
    let first_lead = heard
        .iter()
        .position(|(p, _)| p.marker && p.seq != heard[0].0.seq)
        .expect("switch marked");
    let from_lead = &heard[first_lead..];
    assert_eq!(
        from_lead.len(),
        5,
        "nothing generated after the bridge, nothing lost"
    );
    for ((p, pl), sent) in from_lead.iter().zip(&lead_payloads) {
        assert_eq!(p.pt, 0, "the agent's PT");
        let want: Vec<u8> = sent.iter().map(|b| ALAW_TO_ULAW[usize::from(*b)]).collect();
        assert_eq!(pl, &want, "transcoded A-law → μ-law");
    }
    for w in heard.windows(2) {
        assert_eq!(
            w[1].0.seq,
            w[0].0.seq.wrapping_add(1),
            "one continuous sequence"
        );
        assert_eq!(w[1].0.ssrc, ssrc, "one SSRC");
        assert!(w[1].0.timestamp.wrapping_sub(w[0].0.timestamp) >= 160);
    }

    // The lead hears the agent, with its own PT and our SSRC towards it.
    for i in 0..3u16 {
        agent_phone
            .send_to(
                &rtp(
                    0,
                    false,
                    10 + i,
                    1000 + 160 * u32::from(i),
                    0xA9E,
                    &[0x20 + i as u8; 160],
                ),
                agent_port,
            )
            .await
            .unwrap();
    }
    for i in 0..3u8 {
        let (p, pl) = recv(&carrier, 500).await.expect("agent audio at the lead");
        assert_eq!(p.pt, 8);
        assert_eq!(pl, vec![ULAW_TO_ALAW[usize::from(0x20 + i)]; 160]);
        assert_eq!(p.marker, i == 0);
    }

    // `*` from the agent: an event, not relayed. `5`: relayed with PT 100.
    let ev = |code, end| {
        TelephoneEvent {
            event: code,
            end,
            volume: 10,
            duration: 320,
        }
        .to_bytes()
    };
    for (i, end) in [false, true, true, true].into_iter().enumerate() {
        agent_phone
            .send_to(
                &rtp(101, i == 0, 20 + i as u16, 2000, 0xA9E, &ev(10, end)),
                agent_port,
            )
            .await
            .unwrap();
    }
    assert!(recv(&carrier, 150).await.is_none(), "`*` is not relayed");
    for (i, end) in [false, true, true, true].into_iter().enumerate() {
        agent_phone
            .send_to(
                &rtp(101, i == 0, 30 + i as u16, 4000, 0xA9E, &ev(5, end)),
                agent_port,
            )
            .await
            .unwrap();
    }
    for _ in 0..4 {
        let (p, pl) = recv(&carrier, 500).await.expect("`5` relayed");
        assert_eq!(p.pt, 100);
        assert_eq!(pl[0], 5);
    }

    let mut got = Vec::new();
    while let Ok(Some(e)) = timeout(Duration::from_millis(50), events.recv()).await {
        got.push(e);
    }
    let digits: Vec<_> = got
        .iter()
        .filter_map(|e| match e {
            MediaEvent::Dtmf { leg, digit } => Some((*leg, *digit)),
            _ => None,
        })
        .collect();
    assert_eq!(digits, vec![(agent_leg.id, '*'), (agent_leg.id, '5')]);
    let bridge = got.iter().find_map(|e| match e {
        MediaEvent::BridgeFirstPacket {
            lead: l,
            bridged_at,
            at,
        } => Some((*l, *at - *bridged_at)),
        _ => None,
    });
    assert_eq!(bridge.map(|b| b.0), Some(lead.id));
    assert!(got.contains(&MediaEvent::Latched {
        leg: lead.id,
        addr: carrier.local_addr().unwrap()
    }));

    // Closing frees the ports.
    media.close();
    for _ in 0..50 {
        if relay.free_port_pairs() == pairs {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(relay.free_port_pairs(), pairs);
}

#[tokio::test]
async fn exhausted_range_is_an_error() {
    let relay = MediaRelay::new(RelayConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        ports: PortRange {
            first: 42600,
            last: 42603,
        },
        core: CoreConfig::default(),
        socket_buffer: 1 << 16,
    })
    .unwrap();
    let mut held = Vec::new();
    loop {
        match relay.open_agent() {
            Ok(m) => held.push(m),
            Err(MediaError::Ports(PortError::Exhausted { .. })) => break,
            Err(e) => panic!("unexpected {e}"),
        }
        assert!(held.len() <= 2, "only two pairs in 42600-42603");
    }
}

/// More datagrams than one `recvmmsg` takes, queued at once, beside an
/// RTCP flood on both legs: every RTP packet reaches the phone, in order,
/// and no RTCP is relayed.
#[tokio::test]
async fn a_burst_is_relayed_whole_and_in_order_beside_an_rtcp_flood() {
    let relay = relay();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let carrier = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (media, _events) = relay.open_agent().unwrap();
    let agent = media.agent_leg();
    media
        .set_remote(
            agent.id,
            neg(phone.local_addr().unwrap(), G711Law::Pcmu, 101),
        )
        .unwrap();
    let lead = media.open_lead_leg().unwrap();
    let lead_port: SocketAddr = ([127, 0, 0, 1], lead.local_port).into();
    media
        .set_remote(
            lead.id,
            neg(carrier.local_addr().unwrap(), G711Law::Pcmu, 101),
        )
        .unwrap();
    media.bridge(lead.id).unwrap();
    // An RTCP receiver report header (RFC 3550 §6.4.2), many times.
    let rr = [0x80u8, 201, 0, 1, 0, 0, 0, 7];
    for port in [agent.local_port + 1, lead.local_port + 1] {
        for _ in 0..50 {
            carrier.send_to(&rr, ("127.0.0.1", port)).await.unwrap();
        }
    }
    let n = 3 * RX_BATCH + 1;
    for i in 0..n {
        let pkt = rtp(
            0,
            false,
            1000 + i as u16,
            160 * i as u32,
            0xABC,
            &[i as u8; 160],
        );
        carrier.send_to(&pkt, lead_port).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < n {
        let (p, pl) = recv(&phone, 1000).await.expect("every packet of the burst");
        assert_eq!(p.pt, 0, "only RTP reaches the phone");
        if pl.iter().all(|b| *b == 0xFF) {
            continue; // silence generated before the bridge applied
        }
        got.push(pl[0]);
    }
    assert_eq!(got, (0..n as u8).collect::<Vec<_>>());
}
