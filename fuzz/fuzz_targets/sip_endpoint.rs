//! SIP input as the network delivers it: datagrams (or framed TCP
//! messages) through the whole endpoint — parsing and validation (RFC 3261
//! §7, §8.2), the transaction layer (§17), digest (RFC 8760), the
//! registrar, CANCEL matching and the stateless answers — with time moving
//! between messages. The input is split into messages at `\0\0`, so one
//! input can be an INVITE, its retransmission, a CANCEL and an ACK.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use libfuzzer_sys::fuzz_target;
use powerdial::config::AgentConfig;
use powerdial::sip::endpoint::{Endpoint, EndpointConfig};
use powerdial::sip::flood::FloodConfig;
use powerdial::sip::transaction::TimerConfig;
use powerdial::sip::{Peer, TransportKind};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let cfg = EndpointConfig {
        domain: "127.0.0.1".into(),
        local_domains: vec![
            "127.0.0.1".into(),
            "127.0.0.1:5060".into(),
            "localhost".into(),
        ],
        timers: TimerConfig::default(),
        max_message_size: 16 * 1024,
        trunk_sources: vec!["198.51.100.9".parse().expect("literal")],
        // Off: a long input would otherwise ban its own source early and
        // reach nothing past the front door.
        flood: FloodConfig {
            requests: 0,
            ..FloodConfig::default()
        },
        max_transactions: 64,
        callback_numbers: vec!["+15550000000".into()],
    };
    let agents = [AgentConfig {
        username: "alice".into(),
        password: "alice-secret".into(),
        display_name: None,
    }];
    let mut ep = Endpoint::new(cfg, &agents, [7; 32], [9; 32], t0);
    let mut now = t0;
    let mut wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    for (i, msg) in data
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .enumerate()
    {
        let (transport, addr) = match i % 3 {
            0 => (TransportKind::Udp, "203.0.113.7:5060"),
            1 => (TransportKind::Tcp, "203.0.113.8:40000"),
            _ => (TransportKind::Udp, "198.51.100.9:5060"),
        };
        let peer = Peer {
            transport,
            addr: addr.parse::<SocketAddr>().expect("literal"),
        };
        ep.handle_datagram(now, wall, peer, msg);
        while ep.poll_transmit().is_some() {}
        while ep.poll_event().is_some() {}
        while ep.poll_routed().is_some() {}
        while ep.poll_transaction_event().is_some() {}
        // Time moves: retransmission timers, nonce ageing, expiry.
        let step = Duration::from_millis(u64::from(msg[0]) * 40);
        now += step;
        wall += step;
        if ep.poll_timeout().is_some_and(|d| d <= now) {
            ep.handle_timeout(now, wall);
            while ep.poll_transmit().is_some() {}
            while ep.poll_event().is_some() {}
            while ep.poll_transaction_event().is_some() {}
        }
    }
});
