//! The demo trunk (`[[trunk]] uri = "demo:"`, or `powerdial serve --demo`):
//! a carrier inside powerdial that behaves like leads do, so a new user can
//! watch a session dial with one softphone and no carrier account.
//!
//! It is a small SIP UAS on 127.0.0.1 that the engine dials like any trunk.
//! What a lead does depends on the last digit of the number dialed, so a
//! demo list shows every outcome and a test can choose one:
//!
//! | last digit | the "lead" |
//! |---|---|
//! | 0–5 | rings 2–4 s, answers, talks (speech-like audio) for 20–40 s, hangs up |
//! | 6, 7 | rings 3 s, busy (486) |
//! | 8 | rings until powerdial gives up (no answer, R8) |
//! | 9 | the carrier is unavailable (503, R10) |
//!
//! Hand-written because it is a test double of a carrier, not a SIP stack:
//! it answers the few requests a trunk sees (INVITE, ACK, CANCEL, BYE,
//! OPTIONS) with the server's own response builder.

#![allow(clippy::disallowed_methods)] // a driver: it owns sockets and the clock.

use std::collections::HashMap;
use std::f32::consts::TAU;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::wire::{header, reply, sdp_body};
use crate::media::g711::G711Law;
use crate::media::sdp::{self, SessionDescription};
use crate::sip::message::response_to;
use crate::sip::syntax::{Method, Request, SipMessage};

/// The URI that names the demo trunk in `[[trunk]] uri`.
pub const DEMO_URI: &str = "demo:";

/// What the lead dialed will do (by the number's last digit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Answer after `ring`, talk for `talk`, then hang up.
    Answer {
        /// Ringing before the answer.
        ring: Duration,
        /// The conversation before the lead hangs up.
        talk: Duration,
    },
    /// 486 Busy Here after `ring`.
    Busy {
        /// Ringing before the busy.
        ring: Duration,
    },
    /// Ring until cancelled.
    NoAnswer,
    /// 503 at once.
    Unavailable,
}

impl Plan {
    /// The plan for a dialed number (its last digit, see the module docs).
    pub fn for_number(number: &str) -> Plan {
        let digit = number
            .chars()
            .rev()
            .find(char::is_ascii_digit)
            .and_then(|c| c.to_digit(10))
            .unwrap_or(0);
        match digit {
            0..=5 => Plan::Answer {
                ring: Duration::from_secs(2 + u64::from(digit % 3)),
                talk: Duration::from_secs(20 + 4 * u64::from(digit)),
            },
            6 | 7 => Plan::Busy {
                ring: Duration::from_secs(3),
            },
            8 => Plan::NoAnswer,
            _ => Plan::Unavailable,
        }
    }
}

enum Phase {
    Ringing {
        until: Option<Instant>,
    },
    Talking {
        until: Instant,
        stop: CancellationToken,
    },
    Done {
        forget_at: Instant,
    },
}

struct DemoCall {
    invite: Request,
    peer: SocketAddr,
    to_tag: String,
    plan: Plan,
    phase: Phase,
    last: Option<Bytes>,
}

/// Starts the demo carrier on `ip` (an ephemeral port) until `shutdown`;
/// returns its SIP address for the trunk's URI.
pub async fn start(ip: IpAddr, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let socket = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
    let addr = socket.local_addr()?;
    tokio::spawn(run(socket, addr, shutdown));
    tracing::info!(%addr, "demo trunk ready: numbers ending 0-5 answer, 6-7 busy, 8 no answer, 9 unavailable");
    Ok(addr)
}

async fn run(socket: UdpSocket, me: SocketAddr, shutdown: CancellationToken) {
    let mut calls: HashMap<String, DemoCall> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let next = calls
            .values()
            .filter_map(|c| match &c.phase {
                Phase::Ringing { until } => *until,
                Phase::Talking { until, .. } => Some(*until),
                Phase::Done { forget_at } => Some(*forget_at),
            })
            .min();
        let timer = async {
            match next {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {
                for c in calls.values() {
                    if let Phase::Talking { stop, .. } = &c.phase {
                        stop.cancel();
                    }
                }
                return;
            }
            _ = timer => on_timer(&socket, me, &mut calls, Instant::now()).await,
            got = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = got else { continue };
                let Ok(msg) = SipMessage::try_from(buf[..n].to_vec()) else { continue };
                if let SipMessage::Request(req) = msg {
                    on_request(&socket, me, &mut calls, req, from).await;
                }
            }
        }
    }
}

async fn send(socket: &UdpSocket, to: SocketAddr, bytes: Bytes) {
    if let Err(e) = socket.send_to(&bytes, to).await {
        tracing::debug!(error = %e, %to, "demo trunk: send failed");
    }
}

fn respond(
    req: &Request,
    code: u16,
    reason: &str,
    tag: &str,
    body: Option<&[u8]>,
) -> Option<Bytes> {
    let contact = ["Contact: <sip:demo@127.0.0.1>".to_string()];
    let r = reply(
        req,
        code,
        reason,
        tag,
        if code < 300 { &contact } else { &[] },
        body.map(|b| ("application/sdp", b)),
    )
    .ok()?;
    Some(Bytes::from(r.to_string()))
}

async fn on_request(
    socket: &UdpSocket,
    me: SocketAddr,
    calls: &mut HashMap<String, DemoCall>,
    req: Request,
    from: SocketAddr,
) {
    let Some(call_id) = header(&req, "Call-ID").map(str::to_string) else {
        return;
    };
    let now = Instant::now();
    match req.method {
        Method::Invite => {
            if let Some(c) = calls.get(&call_id) {
                // A retransmission: the last response again.
                if let Some(b) = c.last.clone() {
                    send(socket, from, b).await;
                }
                return;
            }
            let number = req.uri.user().unwrap_or_default().to_string();
            let plan = Plan::for_number(&number);
            let to_tag = format!("demo{:08x}", rand::random::<u32>());
            tracing::info!(%number, ?plan, "demo trunk: INVITE");
            let (last, phase) = match plan {
                Plan::Unavailable => (
                    respond(&req, 503, "Service Unavailable", &to_tag, None),
                    Phase::Done {
                        forget_at: now + Duration::from_secs(32),
                    },
                ),
                Plan::Answer { ring, .. } | Plan::Busy { ring } => (
                    respond(&req, 180, "Ringing", &to_tag, None),
                    Phase::Ringing {
                        until: Some(now + ring),
                    },
                ),
                Plan::NoAnswer => (
                    respond(&req, 180, "Ringing", &to_tag, None),
                    Phase::Ringing { until: None },
                ),
            };
            if let Some(b) = last.clone() {
                send(socket, from, b).await;
            }
            calls.insert(
                call_id,
                DemoCall {
                    invite: req,
                    peer: from,
                    to_tag,
                    plan,
                    phase,
                    last,
                },
            );
        }
        Method::Cancel => {
            send(
                socket,
                from,
                Bytes::from(response_to(&req, 200, "OK").to_string()),
            )
            .await;
            if let Some(c) = calls.get_mut(&call_id) {
                if matches!(c.phase, Phase::Ringing { .. }) {
                    let terminated = respond(&c.invite, 487, "Request Terminated", &c.to_tag, None);
                    c.last = terminated.clone();
                    c.phase = Phase::Done {
                        forget_at: now + Duration::from_secs(32),
                    };
                    if let Some(b) = terminated {
                        send(socket, c.peer, b).await;
                    }
                }
            }
        }
        Method::Bye => {
            let tag = calls
                .get(&call_id)
                .map(|c| c.to_tag.clone())
                .unwrap_or_default();
            if let Some(b) = respond(&req, 200, "OK", &tag, None) {
                send(socket, from, b).await;
            }
            if let Some(c) = calls.get_mut(&call_id) {
                if let Phase::Talking { stop, .. } = &c.phase {
                    stop.cancel();
                }
                c.phase = Phase::Done {
                    forget_at: now + Duration::from_secs(32),
                };
            }
        }
        Method::Ack => {}
        Method::Options => {
            if let Some(b) = respond(&req, 200, "OK", "demo", None) {
                send(socket, from, b).await;
            }
        }
        _ => {
            send(
                socket,
                from,
                Bytes::from(response_to(&req, 405, "Method Not Allowed").to_string()),
            )
            .await;
        }
    }
    let _ = me;
}

async fn on_timer(
    socket: &UdpSocket,
    me: SocketAddr,
    calls: &mut HashMap<String, DemoCall>,
    now: Instant,
) {
    let mut forget = Vec::new();
    for (call_id, c) in calls.iter_mut() {
        match &c.phase {
            Phase::Ringing { until: Some(t) } if *t <= now => match c.plan {
                Plan::Busy { .. } => {
                    c.last = respond(&c.invite, 486, "Busy Here", &c.to_tag, None);
                    if let Some(b) = c.last.clone() {
                        send(socket, c.peer, b).await;
                    }
                    c.phase = Phase::Done {
                        forget_at: now + Duration::from_secs(32),
                    };
                }
                Plan::Answer { talk, .. } => match answer(socket, c, call_id).await {
                    Some(stop) => {
                        c.phase = Phase::Talking {
                            until: now + talk,
                            stop,
                        };
                    }
                    None => {
                        c.last = respond(&c.invite, 488, "Not Acceptable Here", &c.to_tag, None);
                        if let Some(b) = c.last.clone() {
                            send(socket, c.peer, b).await;
                        }
                        c.phase = Phase::Done {
                            forget_at: now + Duration::from_secs(32),
                        };
                    }
                },
                _ => {}
            },
            Phase::Talking { until, stop } if *until <= now => {
                stop.cancel();
                if let Some(bye) = bye(c, me, call_id) {
                    send(socket, c.peer, bye).await;
                }
                c.phase = Phase::Done {
                    forget_at: now + Duration::from_secs(32),
                };
            }
            Phase::Done { forget_at } if *forget_at <= now => forget.push(call_id.clone()),
            _ => {}
        }
    }
    for id in forget {
        calls.remove(&id);
    }
}

/// 200 OK with an SDP answer, and the lead's voice from a socket of its
/// own; `None` when the offer is unusable.
async fn answer(socket: &UdpSocket, c: &mut DemoCall, call_id: &str) -> Option<CancellationToken> {
    let offer = sdp_body(&c.invite, &c.invite.body)?;
    let offer = SessionDescription::parse(&offer).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    let rtp = UdpSocket::bind(SocketAddr::new(ip, 0)).await.ok()?;
    let port = rtp.local_addr().ok()?.port();
    let ans = sdp::answer(&offer, ip, port, 1).ok()?;
    c.last = respond(&c.invite, 200, "OK", &c.to_tag, Some(&ans.sdp.to_bytes()));
    if let Some(b) = c.last.clone() {
        send(socket, c.peer, b).await;
    }
    let stop = CancellationToken::new();
    let seed = call_id
        .bytes()
        .fold(0x9E37_79B9u32, |h, b| h.rotate_left(5) ^ u32::from(b));
    tokio::spawn(talk(
        rtp,
        ans.negotiated.remote,
        ans.negotiated.codec.law,
        seed,
        stop.clone(),
    ));
    Some(stop)
}

/// The lead hangs up (RFC 3261 §15.1.1): a BYE in the INVITE's dialog, to
/// the caller's Contact, From and To swapped.
fn bye(c: &DemoCall, me: SocketAddr, call_id: &str) -> Option<Bytes> {
    let contact = header(&c.invite, "Contact")?;
    let target = contact
        .trim()
        .trim_start_matches(|ch| ch != '<')
        .trim_start_matches('<')
        .split('>')
        .next()?
        .to_string();
    let from = header(&c.invite, "From")?;
    let to = header(&c.invite, "To")?;
    let text = format!(
        "BYE {target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bKdemo{:08x}\r\n\
         Max-Forwards: 70\r\n\
         From: {to};tag={tag}\r\n\
         To: {from}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        rand::random::<u32>(),
        tag = c.to_tag,
    );
    Some(Bytes::from(text))
}

/// Speech-like audio, 20 ms PCMU/PCMA packets: voiced syllables (a 110–170
/// Hz glottal tone with three harmonics) of 120–280 ms, short gaps between
/// words and longer pauses between phrases, so meters, the relay and
/// answering-machine style detectors see something like a person talking.
async fn talk(rtp: UdpSocket, to: SocketAddr, law: G711Law, seed: u32, stop: CancellationToken) {
    let mut rng = seed | 1;
    let mut next = move || {
        // xorshift32: variety, not security.
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    let ssrc = next();
    let mut seq: u16 = (next() & 0xFFFF) as u16;
    let mut ts = next();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut phase = 0f32;
    let mut syllable_left = 0u32; // samples
    let mut gap_left = 0u32;
    let mut pitch = 140f32;
    let mut pos = 0u32;
    let mut recv = [0u8; 2048];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            // Whatever powerdial sends is read and dropped.
            _ = rtp.recv_from(&mut recv) => continue,
            _ = tick.tick() => {}
        }
        let mut payload = [0u8; 160];
        for b in payload.iter_mut() {
            if syllable_left == 0 && gap_left == 0 {
                syllable_left = 960 + next() % 1280;
                gap_left = if next() % 6 == 0 {
                    2400 + next() % 3200
                } else {
                    320 + next() % 800
                };
                pitch = 110.0 + (next() % 60) as f32;
                pos = 0;
            }
            let sample = if syllable_left > 0 {
                let total = pos + syllable_left;
                let env = (std::f32::consts::PI * pos as f32 / total as f32).sin();
                phase = (phase + TAU * pitch / 8000.0) % TAU;
                let voice = phase.sin() + 0.5 * (2.0 * phase).sin() + 0.3 * (3.0 * phase).sin();
                syllable_left -= 1;
                pos += 1;
                (voice * env * 6000.0) as i16
            } else {
                gap_left -= 1;
                0
            };
            *b = law.encode(sample);
        }
        let mut pkt = Vec::with_capacity(172);
        pkt.extend_from_slice(&[0x80, law.static_pt()]);
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&ts.to_be_bytes());
        pkt.extend_from_slice(&ssrc.to_be_bytes());
        pkt.extend_from_slice(&payload);
        if rtp.send_to(&pkt, to).await.is_err() {
            return;
        }
        seq = seq.wrapping_add(1);
        ts = ts.wrapping_add(160);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_digit_chooses_the_outcome() {
        assert!(matches!(
            Plan::for_number("+15550100001"),
            Plan::Answer { .. }
        ));
        assert!(matches!(
            Plan::for_number("+15550100006"),
            Plan::Busy { .. }
        ));
        assert_eq!(Plan::for_number("+15550100008"), Plan::NoAnswer);
        assert_eq!(Plan::for_number("+15550100009"), Plan::Unavailable);
    }
}
