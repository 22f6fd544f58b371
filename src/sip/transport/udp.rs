//! The UDP driver: one receive loop per socket.
//!
//! ICMP errors (RFC 3261 §18.4: "port unreachable" and the like) are asked
//! for with `IP_RECVERR` (ip(7)): without it Linux drops them for an
//! unconnected socket, and a carrier or phone that is gone would show only
//! as a transaction timeout. The kernel queues each error with the
//! destination of the datagram that caused it; the receive loop reads that
//! queue and announces the peer on the transport's failure channel, where
//! the call legs pick it up (§17.1.4).

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

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
    if let Err(e) = report_icmp_errors(&socket, addr.is_ipv6()) {
        tracing::warn!(error = %e, "ICMP errors not reported: an unreachable peer will show only as a timeout");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// `IP_RECVERR` / `IPV6_RECVERR` (ip(7), ipv6(7)): queue ICMP errors of
/// this unconnected socket for [`drain_icmp_errors`].
#[cfg(target_os = "linux")]
fn report_icmp_errors(socket: &socket2::Socket, ipv6: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVERR)
    } else {
        (libc::IPPROTO_IP, libc::IP_RECVERR)
    };
    let on: libc::c_int = 1;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor is open (owned by `socket` for this call) and
    // the option value points at a live `c_int` of the length passed.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::addr_of!(on).cast(),
            len,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn report_icmp_errors(_socket: &socket2::Socket, _ipv6: bool) -> io::Result<()> {
    Ok(())
}

/// Whether a failed `send_to` may be an earlier datagram's ICMP error
/// reported late: with `IP_RECVERR` the kernel hands a pending error to
/// whichever call on the socket comes next (udp(7)), so the send that got
/// it is retried once before it counts as its own failure.
pub(super) fn maybe_deferred_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Reads the socket's error queue (`MSG_ERRQUEUE`) until it is empty and
/// announces the destination of every datagram an ICMP error came back
/// for (RFC 3261 §18.4). Ends with `WouldBlock`, which clears the error
/// readiness.
#[cfg(target_os = "linux")]
fn drain_icmp_errors(socket: &UdpSocket, failures: &broadcast::Sender<Peer>) -> io::Result<()> {
    let sock = socket2::SockRef::from(socket);
    // Only the address matters: the returned payload may be truncated.
    let mut buf = [MaybeUninit::<u8>::uninit(); 64];
    loop {
        let (_, addr) = sock.recv_from_with_flags(&mut buf, libc::MSG_ERRQUEUE)?;
        if let Some(addr) = addr.as_socket() {
            tracing::info!(peer = %addr, "ICMP error: a SIP datagram was not delivered");
            let _ = failures.send(Peer {
                transport: TransportKind::Udp,
                addr,
            });
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn drain_icmp_errors(_socket: &UdpSocket, _failures: &broadcast::Sender<Peer>) -> io::Result<()> {
    Err(io::ErrorKind::WouldBlock.into())
}

/// Receives datagrams until the inbound channel closes. Oversized datagrams
/// are dropped here (RFC 3261 §18.1.1 leaves room; SPEC §5 wants a bound).
pub(super) async fn receive_loop(
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    max_message_size: usize,
    failures: broadcast::Sender<Peer>,
) {
    // One byte more than allowed tells a too-large datagram from a full one.
    let mut buf = vec![0u8; 65_536];
    loop {
        let ready = match socket.ready(Interest::READABLE | Interest::ERROR).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "UDP socket readiness failed");
                continue;
            }
        };
        if ready.is_error() {
            let _ = socket.try_io(Interest::ERROR, || drain_icmp_errors(&socket, &failures));
        }
        if !ready.is_readable() {
            continue;
        }
        let (len, from) = match socket.try_recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // A pending ICMP error reported on this call (IP_RECVERR):
                // the error queue names its peer and is read above.
                tracing::debug!(error = %e, "UDP receive error");
                if let Err(e) =
                    socket.try_io(Interest::ERROR, || drain_icmp_errors(&socket, &failures))
                {
                    tracing::trace!(error = %e, "ICMP error queue");
                }
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
