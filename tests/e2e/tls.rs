//! Phones outside the office (SPEC §5; RFC 3261 §26, RFC 4568, RFC 3711):
//! baresip registers over TLS with SDES-keyed SRTP (`mediaenc=srtp`) and
//! takes a manual call to a scripted carrier. A capture of the loopback
//! interface during the call shows no clear SIP on the phone's TLS
//! connection and no clear RTP on its media, while the carrier's leg —
//! plain RTP by design — carries the phone's tone in clear: the capture
//! sees what it should, and none of that audio is on the phone's side.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::Value;

use crate::app::{free_port, free_rtp_range, http_request, spawn_app_with, App, AppOptions};
use crate::capture::{Capture, Packet};
use crate::peers::{wait_for, Baresip, Carrier};

fn record(app: &App, id: i64) -> Value {
    let (code, text) = app.http_get(&format!("/api/v1/calls/{id}"));
    assert_eq!(code, 200, "{text}");
    serde_json::from_str(&text).expect("call JSON")
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn baresip_over_tls_takes_a_call_with_srtp_and_the_wire_shows_neither_sip_nor_audio() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A test-only certificate made now; no key is kept anywhere.
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("rcgen");
    let cert_path = dir.path().join("sip.crt");
    let key_path = dir.path().join("sip.key");
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");

    let carrier = Carrier::start(dir.path(), None);
    let tls_port = free_port();
    let ours = free_rtp_range(40);
    let phone_rtp = free_rtp_range(20);
    let app = spawn_app_with(AppOptions {
        server_toml: format!(
            "tls_certificate = \"{}\"\ntls_private_key = \"{}\"\nrtp_ports = \"{ours}-{}\"",
            cert_path.display(),
            key_path.display(),
            ours + 39
        ),
        extra_toml: carrier.trunk_toml(),
        extra_sip_listen: vec![format!("tls:127.0.0.1:{tls_port}")],
        ..AppOptions::default()
    });

    let capture = Capture::start();
    let mut baresip = Baresip::start_with(
        "ausine,440",
        &format!(
            "module ausine.so\nmodule srtp.so\nausrc_srate 48000\nausrc_channels 2\nrtp_ports {phone_rtp}-{}\nsip_cafile {}",
            phone_rtp + 19,
            cert_path.display()
        ),
    );
    baresip.command(
        "uanew",
        &format!(
            "<sip:alice@127.0.0.1:{tls_port};transport=tls>;auth_pass=alice-secret;regint=600;answermode=auto;audio_codecs=PCMU;mediaenc=srtp"
        ),
    );
    let ev = baresip
        .wait_event(&["REGISTER_OK", "REGISTER_FAIL"], Duration::from_secs(10))
        .expect("a registration event from baresip");
    assert!(
        ev.contains("REGISTER_OK"),
        "baresip over TLS: {ev}\nlog:\n{}",
        app.log_text()
    );

    let (code, text) = http_request(
        app.http,
        "POST",
        "/api/v1/calls",
        Some(&app.token),
        Some(r#"{"agent": "alice", "number": "+442079460200"}"#),
    );
    assert!(
        code == 201 || code == 202,
        "{code} {text}\nlog:\n{}",
        app.log_text()
    );
    let id = serde_json::from_str::<Value>(&text).expect("JSON")["id"]
        .as_i64()
        .expect("id");
    wait_for("the lead to answer", Duration::from_secs(15), || {
        !record(&app, id)["answered_at"].is_null()
    });
    // Audio both ways for a while: the phone's tone to the carrier, the
    // carrier's audio to the phone.
    std::thread::sleep(Duration::from_secs(3));
    let (code, body) = http_request(
        app.http,
        "POST",
        &format!("/api/v1/calls/{id}/hangup"),
        Some(&app.token),
        Some(""),
    );
    assert_eq!(code, 200, "{body}");
    let mut rec = Value::Null;
    wait_for("the call's outcome", Duration::from_secs(10), || {
        rec = record(&app, id);
        !rec["outcome"].is_null()
    });
    assert_eq!(rec["outcome"], "answered", "{rec}");
    let packets = capture.stop();
    let log = app.log_text();
    assert!(log.contains("SRTP on the agent leg"), "log:\n{log}");

    // Signalling: the phone's TLS connection carries records, never SIP
    // text; nothing of alice's crosses the clear SIP port.
    let tls: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.protocol == 6 && (p.src_port == tls_port || p.dst_port == tls_port))
        .collect();
    let tls_bytes: Vec<u8> = tls.iter().flat_map(|p| p.payload.iter().copied()).collect();
    assert!(
        tls_bytes.len() > 2_000,
        "only {} bytes on the TLS port: was it captured?",
        tls_bytes.len()
    );
    assert!(
        tls.iter().any(|p| p.payload.starts_with(&[0x16, 0x03])),
        "no TLS handshake record seen"
    );
    for text in [
        &b"REGISTER sip"[..],
        b"INVITE sip",
        b"SIP/2.0",
        b"alice",
        b"a=crypto",
    ] {
        assert!(
            !contains(&tls_bytes, text),
            "{:?} in clear on the TLS port",
            String::from_utf8_lossy(text)
        );
    }
    let sip_port = app.sip.port();
    assert!(
        !packets
            .iter()
            .any(|p| (p.src_port == sip_port || p.dst_port == sip_port)
                && contains(&p.payload, b"alice")),
        "alice's signalling crossed the clear SIP port"
    );

    // Media: our RTP ports (even) and the phone's or the carrier's.
    let phone = |port: u16| (phone_rtp..phone_rtp + 20).contains(&port);
    let ours_rtp = |port: u16| (ours..ours + 40).contains(&port) && port.is_multiple_of(2);
    let rtp: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.protocol == 17 && p.payload.len() > 12 && p.payload[0] >> 6 == 2)
        .collect();
    let agent: Vec<&&Packet> = rtp
        .iter()
        .filter(|p| {
            (ours_rtp(p.src_port) && phone(p.dst_port))
                || (phone(p.src_port) && ours_rtp(p.dst_port))
        })
        .collect();
    let lead: Vec<&&Packet> = rtp
        .iter()
        .filter(|p| {
            (ours_rtp(p.src_port) && !phone(p.dst_port) && !ours_rtp(p.dst_port))
                || (ours_rtp(p.dst_port) && !phone(p.src_port) && !ours_rtp(p.src_port))
        })
        .collect();
    let from_phone = agent.iter().filter(|p| phone(p.src_port)).count();
    let to_phone = agent.len() - from_phone;
    assert!(
        from_phone >= 50 && to_phone >= 50,
        "too little of the phone's media captured: {from_phone} from it, {to_phone} to it"
    );
    // SRTP framing: a PCMU frame (12 + 160) plus the 80-bit tag.
    assert!(
        agent.iter().all(|p| p.payload.len() == 12 + 160 + 10),
        "a packet on the phone's leg without an SRTP tag: {:?}",
        agent
            .iter()
            .map(|p| p.payload.len())
            .collect::<HashSet<_>>()
    );
    // The carrier's leg is plain and carries audio in clear…
    let clear: HashSet<&[u8]> = lead.iter().map(|p| &p.payload[12..]).collect();
    assert!(
        lead.len() >= 50,
        "the carrier's leg was not captured ({} packets)",
        lead.len()
    );
    // …none of which, nor silence, is on the phone's leg.
    for p in &agent {
        let body = &p.payload[12..p.payload.len() - 10];
        assert!(
            !clear.contains(body),
            "clear audio of the carrier's leg found on the phone's leg"
        );
        assert!(
            body.iter().collect::<HashSet<_>>().len() > 40,
            "a near-constant (clear) payload on the phone's leg"
        );
    }
    eprintln!(
        "captured: {} bytes of TLS, {from_phone} SRTP packets from the phone, {to_phone} to it, {} plain RTP on the carrier's leg",
        tls_bytes.len(),
        lead.len()
    );
    let ev = baresip.wait_event(&["CALL_ESTABLISHED"], Duration::from_secs(1));
    assert!(ev.is_some(), "baresip never reported the call established");
}

fn write_pair(cert_path: &std::path::Path, key_path: &std::path::Path) -> Vec<u8> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("rcgen");
    // Written beside and renamed, as a certificate tool would: the reload
    // never sees half a file.
    let tmp_c = cert_path.with_extension("crt.new");
    let tmp_k = key_path.with_extension("key.new");
    std::fs::write(&tmp_k, cert.key_pair.serialize_pem()).expect("write key");
    std::fs::write(&tmp_c, cert.cert.pem()).expect("write cert");
    std::fs::rename(&tmp_k, key_path).expect("rename key");
    std::fs::rename(&tmp_c, cert_path).expect("rename cert");
    cert.cert.der().to_vec()
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

/// A TLS client that trusts only `root`; `None` when the handshake fails.
fn tls_client(port: u16, root: &[u8]) -> Option<Tls> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(root.to_vec()))
        .expect("root");
    #[allow(deprecated)] // the server's provider; see src/sip/transport/tls.rs
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let conn = rustls::ClientConnection::new(
        std::sync::Arc::new(config),
        rustls::pki_types::ServerName::try_from("localhost").expect("name"),
    )
    .expect("client");
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).ok()?;
    }
    Some(tls)
}

/// Sends an OPTIONS over the connection and reads the status line.
fn options_over(tls: &mut Tls, port: u16, tag: &str) -> String {
    use std::io::{Read, Write};
    let to = format!("127.0.0.1:{port}");
    let msg = format!(
        "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:9;branch=z9hG4bK-{tag}\r\n\
         Max-Forwards: 70\r\nTo: <sip:{to}>\r\nFrom: <sip:probe@127.0.0.1>;tag={tag}\r\n\
         Call-ID: {tag}@probe\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(msg.as_bytes()).expect("write");
    tls.flush().expect("flush");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A renewed certificate is picked up from the files without a restart:
/// new handshakes get it, a connection made before keeps working.
#[test]
fn a_renewed_certificate_reaches_new_connections_and_keeps_live_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cert_path = dir.path().join("sip.crt");
    let key_path = dir.path().join("sip.key");
    let old = write_pair(&cert_path, &key_path);
    let tls_port = free_port();
    let app = spawn_app_with(AppOptions {
        server_toml: format!(
            "tls_certificate = \"{}\"\ntls_private_key = \"{}\"",
            cert_path.display(),
            key_path.display()
        ),
        extra_sip_listen: vec![format!("tls:127.0.0.1:{tls_port}")],
        ..AppOptions::default()
    });
    let mut live = tls_client(tls_port, &old).expect("handshake with the first certificate");
    assert!(
        options_over(&mut live, tls_port, "a").starts_with("SIP/2.0 200"),
        "log:\n{}",
        app.log_text()
    );

    let new = write_pair(&cert_path, &key_path);
    wait_for("the reload", Duration::from_secs(10), || {
        app.log_text().contains("TLS certificate reloaded")
    });
    assert!(
        tls_client(tls_port, &new).is_some(),
        "a new connection does not get the renewed certificate"
    );
    assert!(
        tls_client(tls_port, &old).is_none(),
        "a new connection still gets the old certificate"
    );
    assert!(
        options_over(&mut live, tls_port, "b").starts_with("SIP/2.0 200"),
        "the connection made before the reload stopped working"
    );
}
