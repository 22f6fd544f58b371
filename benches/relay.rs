//! RTP relay benchmark on real loopback sockets (SPEC §6).
//!
//! (a) switch latency: from `bridge()` to the first lead packet arriving at
//!     the "agent phone" socket (the carrier sends right after the call);
//! (b) relayed packets/s with N concurrent bridged calls, 50 packets/s each
//!     direction, with loss and added latency (send → receive through the
//!     relay, p50/p99), and the relay's CPU time (its worker threads, read
//!     from /proc) to give packets/s per core.
//!
//! A plain `harness = false` binary: criterion's statistics target
//! micro-benchmarks, this measures a running system.
//!
//! With `--srtp` the agent legs are SRTP (RFC 3711, as for phones on TLS):
//! the "phones" encrypt what they send and decrypt what they receive, the
//! relay does the same on its side.
//!
//! With `--amd` every lead leg runs answering-machine detection for the
//! whole run (relay-side cost of SPEC §4 `amd`, the detector kept
//! listening); with `--record` every call is recorded (frames to a writer
//! task per call, assembled in memory as the real writer does).
//!
//!     cargo bench --bench relay -- [--calls 100,500,1000] [--seconds 5] [--switches 200] [--workers 1] [--srtp] [--amd] [--record]

#![allow(clippy::disallowed_methods)] // a load driver reads the clock

use std::net::{SocketAddr, UdpSocket as StdUdp};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use powerdial::config::PortRange;
use powerdial::media::amd::AmdConfig;
use powerdial::media::g711::G711Law;
use powerdial::media::recording::{Recording, TapFrame};
use powerdial::media::relay::{AgentMedia, CoreConfig, MediaRelay, RelayConfig};
use powerdial::media::sdp::{Codec, Direction, Negotiated};
use powerdial::media::srtp::{MasterKey, SrtpReceiver, SrtpSender, TAG_LEN};

fn neg(remote: SocketAddr) -> Negotiated {
    Negotiated {
        remote,
        remote_rtcp: SocketAddr::new(remote.ip(), remote.port() + 1),
        codec: Codec {
            law: G711Law::Pcmu,
            pt: 0,
        },
        dtmf_pt: Some(101),
        direction: Direction::SendRecv,
        ptime: 20,
    }
}

fn header(buf: &mut [u8], seq: u16, ts: u32, ssrc: u32) {
    buf[0] = 0x80;
    buf[1] = 0;
    buf[2..4].copy_from_slice(&seq.to_be_bytes());
    buf[4..8].copy_from_slice(&ts.to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn big_socket() -> StdUdp {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&a.into()).unwrap();
    s.into()
}

fn relay_cpu_ticks() -> u64 {
    // utime + stime of the relay runtime's worker threads (clock ticks).
    let mut total = 0;
    if let Ok(dir) = std::fs::read_dir("/proc/self/task") {
        for t in dir.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
                continue;
            };
            let Some((_, rest)) = stat.split_once("(relay-worker) ") else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
            total += n(11) + n(12);
        }
    }
    total
}

async fn switch_latency(relay: &MediaRelay, samples: usize) {
    let phone = big_socket();
    phone
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let carrier = big_socket();
    let (media, _events) = relay.open_agent().unwrap();
    let agent = media.agent_leg();
    media
        .set_remote(agent.id, neg(phone.local_addr().unwrap()))
        .unwrap();
    let mut lat = Vec::with_capacity(samples);
    let mut pkt = [0x42u8; 172];
    let mut buf = [0u8; 2048];
    for i in 0..samples {
        let lead = media.open_lead_leg().unwrap();
        let lead_addr: SocketAddr = ([127, 0, 0, 1], lead.local_port).into();
        media
            .set_remote(lead.id, neg(carrier.local_addr().unwrap()))
            .unwrap();
        media.play_tone().unwrap();
        tokio::time::sleep(Duration::from_millis(25)).await;
        header(&mut pkt, i as u16, i as u32 * 160, 0x5EED);
        let t0 = Instant::now();
        media.bridge(lead.id).unwrap();
        carrier.send_to(&pkt, lead_addr).unwrap();
        loop {
            // Generated frames may still be in flight: wait for the lead's bytes.
            match phone.recv_from(&mut buf) {
                Ok((n, _)) if n == 172 && buf[12..n].iter().all(|b| *b == 0x42) => {
                    lat.push(t0.elapsed().as_nanos() as u64);
                    break;
                }
                Ok(_) => continue,
                Err(e) => panic!("lead packet lost in switch sample {i}: {e}"),
            }
        }
        media.close_leg(lead.id).unwrap();
    }
    drop(media);
    let us = |n: u64| n as f64 / 1000.0;
    println!(
        "switch latency (bridge() → first lead packet at the agent socket), {} samples: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        lat.len(),
        us(pct(&mut lat, 0.5)),
        us(pct(&mut lat, 0.99)),
        us(pct(&mut lat, 1.0))
    );
}

/// Payload: call index (u32), direction (u8), send time ns since `base` (u64).
/// What else the relay does on every call of the load (`--amd`, `--record`).
#[derive(Clone, Copy)]
struct Extras {
    amd: bool,
    record: bool,
}

fn load(
    relay: &MediaRelay,
    rt: &tokio::runtime::Runtime,
    calls: usize,
    seconds: u64,
    srtp: Option<MasterKey>,
    extras: Extras,
) {
    let phones = Arc::new(big_socket());
    let carriers = Arc::new(big_socket());
    let mut media: Vec<AgentMedia> = Vec::with_capacity(calls);
    let mut agent_ports = Vec::with_capacity(calls);
    let mut lead_ports = Vec::with_capacity(calls);
    rt.block_on(async {
        for _ in 0..calls {
            let (m, events) = relay.open_agent().unwrap();
            drop(events);
            let a = m.agent_leg();
            m.set_remote(a.id, neg(phones.local_addr().unwrap()))
                .unwrap();
            let l = m.open_lead_leg().unwrap();
            m.set_remote(l.id, neg(carriers.local_addr().unwrap()))
                .unwrap();
            m.bridge(l.id).unwrap();
            if extras.amd {
                // Listening for the whole run: never decided.
                let cfg = AmdConfig {
                    initial_silence_ms: u32::MAX / 4,
                    total_analysis_ms: u32::MAX / 4,
                    greeting_ms: u32::MAX / 4,
                    max_words: u32::MAX,
                    ..AmdConfig::default()
                };
                m.start_amd(l.id, cfg, false).unwrap();
            }
            if extras.record {
                // As the call engine's writer does, without the file.
                let (tx, mut rx) = tokio::sync::mpsc::channel::<TapFrame>(500);
                tokio::spawn(async move {
                    let mut rec = Recording::new(Instant::now());
                    while let Some(f) = rx.recv().await {
                        rec.push(&f.decode());
                        std::hint::black_box(rec.take_ready());
                    }
                    std::hint::black_box(rec.seconds());
                });
                m.record(l.id, tx).unwrap();
            }
            if let Some(k) = &srtp {
                m.set_srtp(k.clone(), k.clone()).unwrap();
            }
            agent_ports.push(SocketAddr::from(([127, 0, 0, 1], a.local_port)));
            lead_ports.push(SocketAddr::from(([127, 0, 0, 1], l.local_port)));
            media.push(m);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    });

    let base = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let measure_from = Duration::from_secs(1);
    let measure_to = measure_from + Duration::from_secs(seconds);
    let receiver = |sock: Arc<StdUdp>, dir: u8, stop: Arc<AtomicBool>, key: Option<MasterKey>| {
        std::thread::spawn(move || {
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let mut buf = [0u8; 2048];
            let mut lat = Vec::new();
            let mut generated = 0u64;
            // One SRTP stream per agent leg (its source port).
            let mut streams: std::collections::HashMap<SocketAddr, SrtpReceiver> =
                std::collections::HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let n = match &key {
                    Some(k) => match streams
                        .entry(from)
                        .or_insert_with(|| SrtpReceiver::new(k))
                        .unprotect(&mut buf, n)
                    {
                        Ok(n) => n,
                        Err(_) => continue,
                    },
                    None => n,
                };
                let now = base.elapsed();
                if n < 12 + 13 || buf[16] != dir {
                    generated += 1; // silence frames from before the bridge
                    continue;
                }
                let mut t = [0u8; 8];
                t.copy_from_slice(&buf[17..25]);
                let sent = Duration::from_nanos(u64::from_le_bytes(t));
                if sent >= measure_from && sent < measure_to {
                    lat.push((now - sent).as_nanos() as u64);
                }
            }
            (lat, generated)
        })
    };
    // Agent→lead packets arrive at the carriers' socket and vice versa.
    let rx_lead = receiver(carriers.clone(), 1, stop.clone(), None);
    let rx_agent = receiver(phones.clone(), 2, stop.clone(), srtp.clone());

    let total = measure_to + Duration::from_millis(500);
    let sender = {
        let (phones, carriers) = (phones.clone(), carriers.clone());
        let mut protect: Vec<SrtpSender> = match &srtp {
            Some(k) => (0..calls).map(|_| SrtpSender::new(k)).collect(),
            None => Vec::new(),
        };
        std::thread::spawn(move || {
            let mut pkt = [0xFFu8; 172];
            let mut out = [0u8; 172 + TAG_LEN];
            let mut sent_in_window = 0u64;
            let mut errors = 0u64;
            let slots = 20u32; // 1 ms slots spread each call over the 20 ms frame
            let mut tick = 0u64;
            loop {
                let frame_start = Duration::from_millis(20 * tick);
                if frame_start >= total {
                    break;
                }
                for s in 0..slots {
                    let due = frame_start + Duration::from_millis(u64::from(s));
                    if let Some(wait) = due.checked_sub(base.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    for c in (s as usize..calls).step_by(slots as usize) {
                        for (dir, sock, dest) in [
                            (1u8, &phones, agent_ports[c]),
                            (2u8, &carriers, lead_ports[c]),
                        ] {
                            header(
                                &mut pkt,
                                tick as u16,
                                (tick * 160) as u32,
                                c as u32 * 2 + u32::from(dir),
                            );
                            pkt[12..16].copy_from_slice(&(c as u32).to_le_bytes());
                            pkt[16] = dir;
                            let now = base.elapsed();
                            pkt[17..25].copy_from_slice(&(now.as_nanos() as u64).to_le_bytes());
                            let bytes: &[u8] = match protect.get_mut(c) {
                                Some(tx) if dir == 1 => {
                                    out[..172].copy_from_slice(&pkt);
                                    let n = tx.protect(&mut out, 172).unwrap();
                                    &out[..n]
                                }
                                _ => &pkt,
                            };
                            if sock.send_to(bytes, dest).is_err() {
                                errors += 1;
                            } else if now >= measure_from && now < measure_to {
                                sent_in_window += 1;
                            }
                        }
                    }
                }
                tick += 1;
            }
            (sent_in_window, errors)
        })
    };
    std::thread::sleep(measure_from);
    let cpu0 = relay_cpu_ticks();
    std::thread::sleep(measure_to - measure_from);
    let cpu1 = relay_cpu_ticks();
    let (sent, send_errors) = sender.join().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (mut l1, _) = rx_lead.join().unwrap();
    let (mut l2, _) = rx_agent.join().unwrap();
    let received = (l1.len() + l2.len()) as u64;
    let mut all: Vec<u64> = l1.iter().chain(&l2).copied().collect();
    let hz = 100.0; // USER_HZ on Linux
    let cpu_s = (cpu1 - cpu0) as f64 / hz;
    let pps = received as f64 / seconds as f64;
    println!(
        "{}{}{}{calls} calls: sent {sent}, relayed {received} in {seconds} s = {pps:.0} pkt/s, loss {} ({:.3}%), send errors {send_errors}; \
latency send→receive p50 {:.0} µs, p99 {:.0} µs (agent→lead p99 {:.0} µs, lead→agent p99 {:.0} µs); \
relay CPU {cpu_s:.2} s = {:.0} pkt/s per core",
        if srtp.is_some() { "SRTP agent legs, " } else { "" },
        if extras.amd { "AMD on every lead, " } else { "" },
        if extras.record { "every call recorded, " } else { "" },
        sent.saturating_sub(received),
        100.0 * sent.saturating_sub(received) as f64 / sent.max(1) as f64,
        pct(&mut all, 0.5) as f64 / 1000.0,
        pct(&mut all, 0.99) as f64 / 1000.0,
        pct(&mut l1, 0.99) as f64 / 1000.0,
        pct(&mut l2, 0.99) as f64 / 1000.0,
        if cpu_s > 0.0 { received as f64 / cpu_s } else { f64::NAN },
    );
    rt.block_on(async move {
        drop(media);
        tokio::time::sleep(Duration::from_millis(200)).await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let calls: Vec<usize> = arg("--calls")
        .unwrap_or_else(|| "100,500,1000".into())
        .split(',')
        .filter_map(|c| c.parse().ok())
        .collect();
    let seconds: u64 = arg("--seconds").and_then(|s| s.parse().ok()).unwrap_or(5);
    let switches: usize = arg("--switches")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let workers: usize = arg("--workers").and_then(|s| s.parse().ok()).unwrap_or(1);
    let srtp = args.iter().any(|a| a == "--srtp").then(MasterKey::random);
    let extras = Extras {
        amd: args.iter().any(|a| a == "--amd"),
        record: args.iter().any(|a| a == "--record"),
    };

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("relay-worker")
        .enable_all()
        .build()
        .unwrap();
    let relay = MediaRelay::new(RelayConfig {
        bind_ip: "127.0.0.1".parse().unwrap(),
        ports: PortRange {
            first: 30000,
            last: 39999,
        },
        core: CoreConfig::default(),
        socket_buffer: 1 << 20,
    })
    .unwrap();
    if switches > 0 {
        rt.block_on(switch_latency(&relay, switches));
    }
    for n in calls {
        load(&relay, &rt, n, seconds, srtp.clone(), extras);
    }
}
