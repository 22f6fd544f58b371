//! The UDP driver: one receive loop per socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::{Inbound, UDP_RCVBUF};
use crate::sip::{Peer, TransportKind};

/// Binds a UDP socket with a large receive buffer.
pub(super) fn bind(addr: SocketAddr) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    if let Err(e) = socket.set_recv_buffer_size(UDP_RCVBUF) {
        tracing::debug!(error = %e, "could not enlarge the UDP receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Receives datagrams until the inbound channel closes. Oversized datagrams
/// are dropped here (RFC 3261 §18.1.1 leaves room; SPEC §5 wants a bound).
pub(super) async fn receive_loop(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    max_message_size: usize,
) {
    // One byte more than allowed tells a too-large datagram from a full one.
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP port unreachable surfaces here on some systems; keep going.
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        if len > max_message_size {
            tracing::debug!(%from, len, "dropping oversized UDP datagram");
            continue;
        }
        let datagram = &buf[..len];
        // CRLF keep-alives (RFC 5626 §3.5.1) carry no message.
        if datagram.iter().all(|b| *b == b'\r' || *b == b'\n') {
            continue;
        }
        let msg = Inbound {
            peer: Peer {
                transport: TransportKind::Udp,
                addr: from,
            },
            local,
            bytes: Bytes::copy_from_slice(datagram),
        };
        if inbound.send(msg).await.is_err() {
            return;
        }
    }
}
