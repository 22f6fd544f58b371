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
use std::os::fd::AsRawFd;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

use super::{Inbound, UDP_RCVBUF};
use crate::sip::{Peer, TransportKind};
use crate::sockaddr::socket_addr;

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

/// Datagrams one `recvmmsg` reads (recvmmsg(2)) and one `sendmmsg` sends
/// (sendmmsg(2)): one system call for what a loaded socket holds, where a
/// `recvfrom` per datagram costs one each.
const MMSG_BATCH: usize = 32;

/// A UDP socket read in batches by whichever task owns it: the SIP task
/// itself (no channel hop and no task wake-up per datagram between a
/// receive task and the SIP core), or [`receive_loop`] for a socket whose
/// datagrams go to the inbound channel. Datagrams are handed out in the
/// order the kernel queued them (DESIGN.md "Order and sharding").
pub struct UdpReceiver {
    socket: Arc<UdpSocket>,
    local: SocketAddr,
    failures: broadcast::Sender<Peer>,
    /// Largest datagram accepted: each buffer is this long and a longer
    /// datagram comes back truncated (`MSG_TRUNC`) and is dropped.
    max_message_size: usize,
    /// [`MMSG_BATCH`] buffers of `max_message_size` octets, end to end.
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    /// The `recvmmsg` headers, pointing at `bufs` and `names` (set once:
    /// the vectors are never resized, so their heap blocks never move).
    /// The iovecs are only ever read by the kernel, through `hdrs`.
    #[allow(dead_code)]
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
    /// Length and source of each datagram of the last read (`None`: not
    /// usable — truncated, or from an address family we do not use).
    got: Vec<(usize, Option<SocketAddr>)>,
}

// SAFETY: the raw pointers in `iovs` and `hdrs` point into the heap blocks
// of this receiver's own vectors, which move with it and are used only
// through `&mut self`; nothing else holds them.
unsafe impl Send for UdpReceiver {}
// SAFETY: through `&self` the pointers are never read or followed (only
// `socket`, `local` and `failures` are used); reads take `&mut self`.
unsafe impl Sync for UdpReceiver {}

impl std::fmt::Debug for UdpReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpReceiver")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl UdpReceiver {
    pub(super) fn new(
        socket: Arc<UdpSocket>,
        local: SocketAddr,
        max_message_size: usize,
        failures: broadcast::Sender<Peer>,
    ) -> Self {
        // A bound a datagram can reach, whatever the configuration says.
        let size = max_message_size.clamp(1, 65_535);
        let mut bufs = vec![0u8; size * MMSG_BATCH];
        // SAFETY: all-zero bytes are a valid `sockaddr_storage` (family
        // AF_UNSPEC) and a valid `mmsghdr` (null pointers, zero lengths).
        let mut names: Vec<libc::sockaddr_storage> =
            vec![unsafe { std::mem::zeroed() }; MMSG_BATCH];
        let mut iovs: Vec<libc::iovec> = bufs
            .chunks_mut(size)
            .map(|buf| libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            })
            .collect();
        let hdrs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(names.iter_mut())
            .map(|(iov, name)| {
                // SAFETY: as above.
                let mut hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
                hdr.msg_hdr.msg_name = std::ptr::from_mut(name).cast();
                hdr.msg_hdr.msg_iov = std::ptr::from_mut(iov);
                hdr.msg_hdr.msg_iovlen = 1;
                hdr
            })
            .collect();
        UdpReceiver {
            socket,
            local,
            failures,
            max_message_size: size,
            bufs,
            names,
            iovs,
            hdrs,
            got: vec![(0, None); MMSG_BATCH],
        }
    }

    /// The local address of the socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Waits until datagrams (or ICMP errors) wait on the socket; ICMP
    /// errors are read and announced here (RFC 3261 §18.4). Cancel safe.
    pub async fn ready(&self) {
        match self
            .socket
            .ready(Interest::READABLE | Interest::ERROR)
            .await
        {
            Ok(ready) if ready.is_error() => {
                let _ = self.socket.try_io(Interest::ERROR, || {
                    drain_icmp_errors(&self.socket, &self.failures)
                });
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "UDP socket readiness failed"),
        }
    }

    /// Reads what waits on the socket, without waiting, up to about `max`
    /// datagrams (whole `recvmmsg` batches), and hands each message to
    /// `each` in arrival order. Oversized datagrams are dropped (RFC 3261
    /// §18.1.1 leaves room; SPEC §5 wants a bound), as are CRLF
    /// keep-alives (RFC 5626 §3.5.1), which carry no message. Returns the
    /// datagrams read; fewer than `max` means the socket's queue was
    /// found empty (its readiness is cleared then).
    pub fn receive(&mut self, max: usize, mut each: impl FnMut(Peer, &[u8])) -> usize {
        let mut total = 0;
        // Errors (a pending ICMP error reported on the read, IP_RECVERR)
        // end the turn after a few: the next turn reads again.
        let mut errors = 0;
        while total < max && errors < 4 {
            let fd = self.socket.as_raw_fd();
            let got = self.socket.try_io(Interest::READABLE, || {
                recv_batch(fd, &mut self.hdrs, &self.names, &mut self.got)
            });
            let n = match got {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    errors += 1;
                    tracing::debug!(error = %e, "UDP receive error");
                    if let Err(e) = self.socket.try_io(Interest::ERROR, || {
                        drain_icmp_errors(&self.socket, &self.failures)
                    }) {
                        tracing::trace!(error = %e, "ICMP error queue");
                    }
                    continue;
                }
            };
            for (buf, (len, from)) in self
                .bufs
                .chunks(self.max_message_size)
                .zip(self.got.iter())
                .take(n)
            {
                let Some(from) = from else {
                    tracing::debug!(len, "dropping oversized or unaddressed UDP datagram");
                    continue;
                };
                let Some(datagram) = buf.get(..*len) else {
                    continue;
                };
                if datagram.iter().all(|b| *b == b'\r' || *b == b'\n') {
                    continue;
                }
                let peer = Peer {
                    transport: TransportKind::Udp,
                    addr: *from,
                };
                each(peer, datagram);
            }
            total += n;
        }
        total
    }
}

/// One `recvmmsg` (recvmmsg(2)) through `hdrs` (set up by
/// [`UdpReceiver::new`]); `WouldBlock` when nothing waits.
fn recv_batch(
    fd: std::os::fd::RawFd,
    hdrs: &mut [libc::mmsghdr],
    names: &[libc::sockaddr_storage],
    got: &mut [(usize, Option<SocketAddr>)],
) -> io::Result<usize> {
    for hdr in hdrs.iter_mut() {
        // The kernel wrote the last read's address lengths here.
        hdr.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    }
    // SAFETY: every header points at a buffer, an iovec and an address of
    // the receiver that outlive the call, with their true sizes.
    let r = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    let n = usize::try_from(r).map_err(|_| io::Error::last_os_error())?;
    for ((h, name), g) in hdrs.iter().zip(names.iter()).zip(got.iter_mut()).take(n) {
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        *g = (
            h.msg_len as usize,
            if truncated { None } else { socket_addr(name) },
        );
    }
    Ok(n)
}

/// Sends `datagrams` in order, in `sendmmsg` batches (sendmmsg(2)); waits
/// for room when the socket's send buffer is full, as `send_to` does. A
/// datagram the kernel refuses is reported to `failed` by its index and
/// the rest still go; one refused for another datagram's late ICMP error
/// ([`maybe_deferred_error`]) is tried once more first.
pub(super) async fn send_batch(
    socket: &UdpSocket,
    datagrams: &[(SocketAddr, Vec<u8>)],
    mut failed: impl FnMut(usize, io::Error),
) {
    let mut off = 0;
    let mut retried = false;
    while off < datagrams.len() {
        let Some(rest) = datagrams.get(off..) else {
            break;
        };
        match socket.try_io(Interest::WRITABLE, || send_mmsg(socket.as_raw_fd(), rest)) {
            Ok(sent) => {
                off += sent.max(1);
                retried = false;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Err(e) = socket.writable().await {
                    failed(off, e);
                    off += 1;
                }
            }
            Err(e) if maybe_deferred_error(&e) && !retried => {
                tracing::debug!(error = %e, "earlier ICMP error reported on send; sending again");
                retried = true;
            }
            Err(e) => {
                failed(off, e);
                off += 1;
                retried = false;
            }
        }
    }
}

/// One `sendmmsg` of up to [`MMSG_BATCH`] of `datagrams`; the number sent
/// (at least one) or the error of the first. Only the entries used are
/// written (a REGISTER's turn usually sends one or two).
fn send_mmsg(fd: std::os::fd::RawFd, datagrams: &[(SocketAddr, Vec<u8>)]) -> io::Result<usize> {
    let count = datagrams.len().min(MMSG_BATCH);
    let mut names = [const { MaybeUninit::<socket2::SockAddr>::uninit() }; MMSG_BATCH];
    let mut iovs = [const { MaybeUninit::<libc::iovec>::uninit() }; MMSG_BATCH];
    let mut hdrs = [const { MaybeUninit::<libc::mmsghdr>::uninit() }; MMSG_BATCH];
    for (((name, iov), hdr), (to, bytes)) in names
        .iter_mut()
        .zip(iovs.iter_mut())
        .zip(hdrs.iter_mut())
        .zip(datagrams.iter())
    {
        let name = name.write(socket2::SockAddr::from(*to));
        // sendmmsg only reads the octets (the iovec type is shared with
        // reads, hence the `*mut`).
        let iov = iov.write(libc::iovec {
            iov_base: bytes.as_ptr().cast_mut().cast(),
            iov_len: bytes.len(),
        });
        // SAFETY: all-zero bytes are a valid `mmsghdr`.
        let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
        h.msg_hdr.msg_name = name.as_ptr().cast_mut().cast();
        h.msg_hdr.msg_namelen = name.len();
        h.msg_hdr.msg_iov = std::ptr::from_mut(iov);
        h.msg_hdr.msg_iovlen = 1;
        hdr.write(h);
    }
    // SAFETY: the first `count` headers are initialised above and point at
    // octets, iovecs and addresses that outlive the call, with their true
    // sizes; the kernel does not write through them.
    let r = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr().cast::<libc::mmsghdr>(),
            count as libc::c_uint,
            0,
        )
    };
    match usize::try_from(r) {
        Ok(0) | Err(_) => Err(io::Error::last_os_error()),
        Ok(n) => Ok(n),
    }
}

/// Receives datagrams until the inbound channel closes (a UDP socket no
/// task reads itself).
pub(super) async fn receive_loop(mut receiver: UdpReceiver, inbound: mpsc::Sender<Inbound>) {
    let local = receiver.local;
    let mut batch = Vec::with_capacity(MMSG_BATCH);
    loop {
        receiver.ready().await;
        receiver.receive(MMSG_BATCH, |peer, datagram| {
            batch.push(Inbound {
                peer,
                local,
                bytes: Bytes::copy_from_slice(datagram),
            });
        });
        for msg in batch.drain(..) {
            if inbound.send(msg).await.is_err() {
                return;
            }
        }
    }
}
