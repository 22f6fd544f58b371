//! Transport drivers (RFC 3261 §18): UDP sockets, TCP connections and TLS
//! connections (§26.2, in `tls`) on the configured addresses. They own the sockets and nothing else: bytes in
//! become [`Inbound`] values on one channel; [`TransportHandle::send`] puts
//! bytes on the wire. Validation and everything above live in the sans-IO
//! cores.

mod tcp;
pub mod tls;
mod udp;

pub use tls::{TlsError, TlsFiles};
pub use udp::UdpReceiver;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

use super::{Peer, TransportKind};
use crate::config::ListenAddr;

/// Receive buffer asked for on UDP sockets: at a few thousand calls/s the
/// default (208 KB) drops datagrams before any code of ours sees them
/// (DESIGN.md "Order and sharding").
const UDP_RCVBUF: usize = 8 * 1024 * 1024;

/// Bytes that arrived: one UDP datagram, or one complete message framed
/// from a TCP stream.
#[derive(Debug)]
pub struct Inbound {
    /// Who sent it and over what.
    pub peer: Peer,
    /// The local socket it arrived on.
    pub local: SocketAddr,
    /// The message bytes (not yet validated).
    pub bytes: Bytes,
}

/// Where inbound messages arrive (see [`TransportHandle::bind_sip`]).
#[derive(Debug)]
pub struct InboundSources {
    /// Every message framed from a TCP or TLS stream, and the datagrams of
    /// UDP sockets other than [`udp`](Self::udp).
    pub channel: mpsc::Receiver<Inbound>,
    /// The sending UDP socket, read by its owner's own task: no channel hop
    /// per datagram.
    pub udp: Option<UdpReceiver>,
}

/// Errors of the transport drivers.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// What the config asked for.
        addr: ListenAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No socket of that transport is configured.
    #[error("no {0} socket is configured")]
    NoSocket(TransportKind),
    /// The send failed.
    #[error("sending to {peer} failed: {source}")]
    Send {
        /// The destination.
        peer: Peer,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A `tls:` address is configured without certificate files.
    #[error("a tls: address needs server.tls_certificate and server.tls_private_key")]
    NoCertificate,
    /// The message is larger than the transport allows.
    #[error("message of {0} bytes is too large for UDP")]
    TooLarge(usize),
}

/// Limits the drivers enforce.
#[derive(Debug, Clone, Copy)]
pub struct TransportLimits {
    /// Largest message accepted (RFC 3261 §18.1.1 sizes; 16 KiB by default).
    pub max_message_size: usize,
    /// A TCP connection with no traffic this long is closed.
    pub tcp_idle_timeout: Duration,
    /// At most this many TCP connections at once; more are refused.
    pub max_tcp_connections: usize,
    /// At most this many TCP connections from one IP address at once.
    pub max_tcp_per_address: usize,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            max_message_size: 16 * 1024,
            tcp_idle_timeout: Duration::from_secs(300),
            max_tcp_connections: 4096,
            max_tcp_per_address: 32,
        }
    }
}

/// Live TCP connections by remote address, for reusing a connection to send
/// responses and requests (RFC 3261 §18.2.2, §18.1.1).
type ConnectionMap = Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Bytes>>>>;

/// A clonable handle to the bound sockets: sends, and tells the local
/// addresses (for Via and Contact).
#[derive(Clone)]
pub struct TransportHandle {
    udp: Option<(SocketAddr, Arc<UdpSocket>)>,
    tcp_local: Option<SocketAddr>,
    tls_local: Option<SocketAddr>,
    connections: ConnectionMap,
    /// TLS connections apart: a TCP peer and a TLS peer never share one.
    tls_connections: ConnectionMap,
    inbound: mpsc::Sender<Inbound>,
    limits: TransportLimits,
    failures: broadcast::Sender<Peer>,
}

impl TransportHandle {
    /// Binds every configured socket and starts their receive tasks.
    /// Returns the handle and the channel every inbound message arrives on.
    pub async fn bind(
        listen: &[ListenAddr],
        limits: TransportLimits,
    ) -> Result<(TransportHandle, mpsc::Receiver<Inbound>), TransportError> {
        Self::bind_with_tls(listen, limits, None).await
    }

    /// Like [`bind`](Self::bind), with the certificate files `tls:`
    /// addresses present (reloaded when they change, see `tls`).
    pub async fn bind_with_tls(
        listen: &[ListenAddr],
        limits: TransportLimits,
        tls: Option<&TlsFiles>,
    ) -> Result<(TransportHandle, mpsc::Receiver<Inbound>), TransportError> {
        let (handle, sources) = Self::bind_sip(listen, limits, tls).await?;
        if let Some(udp) = sources.udp {
            tokio::spawn(udp::receive_loop(udp, handle.inbound.clone()));
        }
        Ok((handle, sources.channel))
    }

    /// Like [`bind_with_tls`](Self::bind_with_tls), but the sending UDP
    /// socket's datagrams are read by the caller ([`InboundSources::udp`]):
    /// the SIP task reads them in batches itself rather than through a
    /// receive task and the channel (SPEC §6: REGISTER at no more CPU per
    /// cycle than Kamailio, which reads its socket in the worker that
    /// handles the message).
    pub async fn bind_sip(
        listen: &[ListenAddr],
        limits: TransportLimits,
        tls: Option<&TlsFiles>,
    ) -> Result<(TransportHandle, InboundSources), TransportError> {
        let (tx, rx) = mpsc::channel(16 * 1024);
        // Rare (one per ICMP error); a slow subscriber loses the oldest.
        let (failures, _) = broadcast::channel(256);
        let connections: ConnectionMap = Arc::default();
        let mut udp = None;
        let mut udp_receiver = None;
        let mut tcp_local = None;
        let mut tls_local = None;
        let tls_connections: ConnectionMap = Arc::default();
        let mut acceptor: Option<tls::Acceptor> = None;
        for l in listen {
            match l.transport {
                TransportKind::Udp => {
                    let socket = udp::bind(l.addr)
                        .map_err(|source| TransportError::Bind { addr: *l, source })?;
                    let local = socket
                        .local_addr()
                        .map_err(|source| TransportError::Bind { addr: *l, source })?;
                    let socket = Arc::new(socket);
                    let receiver = UdpReceiver::new(
                        socket.clone(),
                        local,
                        limits.max_message_size,
                        failures.clone(),
                    );
                    tracing::info!(%local, "SIP listening on UDP");
                    // The first UDP socket sends and is read by the
                    // caller; several are allowed for listening.
                    if udp.is_none() {
                        udp = Some((local, socket));
                        udp_receiver = Some(receiver);
                    } else {
                        tokio::spawn(udp::receive_loop(receiver, tx.clone()));
                    }
                }
                TransportKind::Tcp => {
                    let listener = tokio::net::TcpListener::bind(l.addr)
                        .await
                        .map_err(|source| TransportError::Bind { addr: *l, source })?;
                    let local = listener
                        .local_addr()
                        .map_err(|source| TransportError::Bind { addr: *l, source })?;
                    tracing::info!(%local, "SIP listening on TCP");
                    tokio::spawn(tcp::accept_loop(
                        listener,
                        local,
                        tx.clone(),
                        connections.clone(),
                        limits,
                        failures.clone(),
                    ));
                    tcp_local.get_or_insert(local);
                }
                TransportKind::Tls => {
                    let acc = match &acceptor {
                        Some(a) => a.clone(),
                        None => {
                            let a = tls::Acceptor::new(tls.ok_or(TransportError::NoCertificate)?)?;
                            tokio::spawn(tls::reload_loop(a.clone(), tx.clone()));
                            acceptor = Some(a.clone());
                            a
                        }
                    };
                    let listener = tokio::net::TcpListener::bind(l.addr)
                        .await
                        .map_err(|source| TransportError::Bind { addr: *l, source })?;
                    let local = listener
                        .local_addr()
                        .map_err(|source| TransportError::Bind { addr: *l, source })?;
                    tracing::info!(%local, "SIP listening on TLS");
                    tokio::spawn(tls::accept_loop(
                        listener,
                        acc,
                        local,
                        tx.clone(),
                        tls_connections.clone(),
                        limits,
                        failures.clone(),
                    ));
                    tls_local.get_or_insert(local);
                }
            }
        }
        Ok((
            TransportHandle {
                udp,
                tcp_local,
                tls_local,
                connections,
                tls_connections,
                inbound: tx,
                limits,
                failures,
            },
            InboundSources {
                channel: rx,
                udp: udp_receiver,
            },
        ))
    }

    /// The local address of the sending socket of `kind`, if configured.
    pub fn local_addr(&self, kind: TransportKind) -> Option<SocketAddr> {
        match kind {
            TransportKind::Udp => self.udp.as_ref().map(|(a, _)| *a),
            TransportKind::Tcp => self.tcp_local,
            TransportKind::Tls => self.tls_local,
        }
    }

    /// Sends one message. UDP: one datagram. TCP: over the live connection to
    /// that address, or a new one made in the background (its responses
    /// then arrive as inbound; if it cannot be made, the peer is announced
    /// on [`subscribe_failures`](Self::subscribe_failures)).
    pub async fn send(&self, peer: Peer, bytes: Bytes) -> Result<(), TransportError> {
        match peer.transport {
            TransportKind::Udp => {
                let (_, socket) = self
                    .udp
                    .as_ref()
                    .ok_or(TransportError::NoSocket(TransportKind::Udp))?;
                if bytes.len() > 65_507 {
                    return Err(TransportError::TooLarge(bytes.len()));
                }
                let sent = match socket.send_to(&bytes, peer.addr).await {
                    // Another datagram's ICMP error, handed to this call
                    // (see `udp`): this one was not sent; try it again.
                    Err(e) if udp::maybe_deferred_error(&e) => {
                        tracing::debug!(error = %e, %peer, "earlier ICMP error reported on send; sending again");
                        socket.send_to(&bytes, peer.addr).await
                    }
                    r => r,
                };
                sent.map(|_| ())
                    .map_err(|source| TransportError::Send { peer, source })
            }
            TransportKind::Tcp => {
                let existing = self
                    .connections
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&peer.addr).cloned());
                let sender = match existing {
                    Some(s) if !s.is_closed() => s,
                    _ => {
                        let local = self
                            .tcp_local
                            .ok_or(TransportError::NoSocket(TransportKind::Tcp))?;
                        tcp::connect(
                            peer.addr,
                            local,
                            self.inbound.clone(),
                            self.connections.clone(),
                            self.limits,
                            self.failures.clone(),
                        )
                    }
                };
                sender.send(bytes).await.map_err(|_| TransportError::Send {
                    peer,
                    source: io::Error::new(io::ErrorKind::BrokenPipe, "connection closed"),
                })
            }
            // Only over the connection the phone opened (see `tls`).
            TransportKind::Tls => {
                let existing = self
                    .tls_connections
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&peer.addr).cloned())
                    .filter(|s| !s.is_closed());
                let closed = || TransportError::Send {
                    peer,
                    source: io::Error::new(
                        io::ErrorKind::NotConnected,
                        "no TLS connection from this peer",
                    ),
                };
                let sender = existing.ok_or_else(closed)?;
                sender.send(bytes).await.map_err(|_| closed())
            }
        }
    }

    /// Sends UDP datagrams in order from the sending UDP socket, in
    /// `sendmmsg` batches (one system call for many responses); `failed`
    /// hears the index and error of each datagram not sent (the others
    /// still go).
    pub async fn send_udp_batch(
        &self,
        datagrams: &[(SocketAddr, Vec<u8>)],
        mut failed: impl FnMut(usize, TransportError),
    ) {
        let Some((_, socket)) = self.udp.as_ref() else {
            for i in 0..datagrams.len() {
                failed(i, TransportError::NoSocket(TransportKind::Udp));
            }
            return;
        };
        // Runs between datagrams too large for UDP (refused here; the
        // rest still go).
        let mut start = 0;
        for end in 0..=datagrams.len() {
            let too_large = datagrams
                .get(end)
                .map(|(_, b)| b.len())
                .filter(|n| *n > 65_507);
            if end < datagrams.len() && too_large.is_none() {
                continue;
            }
            let run = datagrams.get(start..end).unwrap_or_default();
            udp::send_batch(socket, run, |i, source| {
                let addr = run
                    .get(i)
                    .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |d| d.0);
                let peer = Peer {
                    transport: TransportKind::Udp,
                    addr,
                };
                failed(start + i, TransportError::Send { peer, source });
            })
            .await;
            if let Some(n) = too_large {
                failed(end, TransportError::TooLarge(n));
            }
            start = end + 1;
        }
    }

    /// Peers the transport could not reach after [`send`](Self::send)
    /// returned: a UDP datagram an ICMP error came back for, a TCP
    /// connection that could not be made or failed a write (RFC 3261
    /// §18.4). The call legs tell their transactions with that peer
    /// (§17.1.4). Errors known at once are returned by `send` instead.
    pub fn subscribe_failures(&self) -> broadcast::Receiver<Peer> {
        self.failures.subscribe()
    }

    /// Number of open TCP connections (for metrics and tests).
    pub fn tcp_connection_count(&self) -> usize {
        self.connections.lock().map(|m| m.len()).unwrap_or(0)
    }

    /// Number of open TLS connections.
    pub fn tls_connection_count(&self) -> usize {
        self.tls_connections.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port on 127.0.0.1 with nothing listening on UDP or TCP (at the time).
    fn closed_port() -> u16 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        udp.local_addr().expect("addr").port()
    }

    async fn bound() -> TransportHandle {
        let listen = [
            ListenAddr {
                transport: TransportKind::Udp,
                addr: "127.0.0.1:0".parse().expect("addr"),
            },
            ListenAddr {
                transport: TransportKind::Tcp,
                addr: "127.0.0.1:0".parse().expect("addr"),
            },
        ];
        let (handle, _inbound) = TransportHandle::bind(&listen, TransportLimits::default())
            .await
            .expect("bind");
        handle
    }

    /// RFC 3261 §18.4: the peer a datagram or a connection could not reach
    /// is announced, so its transactions learn of it (§17.1.4).
    #[tokio::test]
    async fn unreachable_peers_are_announced() {
        let handle = bound().await;
        let mut failures = handle.subscribe_failures();
        for transport in [TransportKind::Udp, TransportKind::Tcp] {
            let peer = Peer {
                transport,
                addr: SocketAddr::from(([127, 0, 0, 1], closed_port())),
            };
            // The send itself is accepted: the refusal comes back later
            // (ICMP port unreachable; a refused TCP handshake).
            handle
                .send(peer, Bytes::from_static(b"OPTIONS sip:x SIP/2.0\r\n\r\n"))
                .await
                .expect("send");
            let announced = tokio::time::timeout(Duration::from_secs(2), failures.recv())
                .await
                .expect("announced within 2 s")
                .expect("channel open");
            assert_eq!(announced, peer);
        }
        // A send after an ICMP error is not refused for that error (IP_RECVERR
        // hands a pending error to the next call on the socket).
        let dead = Peer {
            transport: TransportKind::Udp,
            addr: SocketAddr::from(([127, 0, 0, 1], closed_port())),
        };
        let live = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let live_peer = Peer {
            transport: TransportKind::Udp,
            addr: live.local_addr().expect("addr"),
        };
        handle
            .send(dead, Bytes::from_static(b"x"))
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(50)).await;
        handle
            .send(live_peer, Bytes::from_static(b"y"))
            .await
            .expect("the live peer's datagram is sent");
        live.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 8];
        let (n, _) = live.recv_from(&mut buf).expect("received");
        assert_eq!(&buf[..n], b"y");
    }

    /// The sending UDP socket read by its owner: datagrams come out in
    /// arrival order, more than one `recvmmsg` holds in one turn;
    /// keep-alives and datagrams over the size bound are dropped (RFC 5626
    /// §3.5.1; RFC 3261 §18.1.1, SPEC §5).
    #[tokio::test]
    async fn the_sending_udp_socket_is_read_in_batches_in_order() {
        let listen = [ListenAddr {
            transport: TransportKind::Udp,
            addr: "127.0.0.1:0".parse().expect("addr"),
        }];
        let limits = TransportLimits {
            max_message_size: 100,
            ..TransportLimits::default()
        };
        let (handle, sources) = TransportHandle::bind_sip(&listen, limits, None)
            .await
            .expect("bind");
        let mut receiver = sources.udp.expect("the UDP socket is the caller's");
        let to = handle.local_addr(TransportKind::Udp).expect("udp");
        assert_eq!(receiver.local_addr(), to);
        let phone = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let from = phone.local_addr().expect("addr");
        for i in 0..50 {
            phone.send_to(format!("m{i}").as_bytes(), to).expect("send");
            if i == 10 {
                phone.send_to(b"\r\n\r\n", to).expect("keep-alive");
            }
            if i == 20 {
                phone.send_to(&[b'x'; 101], to).expect("oversized");
            }
        }
        let mut got: Vec<String> = Vec::new();
        while got.len() < 50 {
            tokio::time::timeout(Duration::from_secs(2), receiver.ready())
                .await
                .expect("readable within 2 s");
            receiver.receive(64, |peer, bytes| {
                assert_eq!(peer.addr, from);
                assert_eq!(peer.transport, TransportKind::Udp);
                got.push(String::from_utf8_lossy(bytes).into_owned());
            });
        }
        let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
        assert_eq!(got, want);
        // The queue is empty now: a turn reads nothing.
        assert_eq!(receiver.receive(64, |_, _| panic!("nothing waits")), 0);
    }

    /// Datagrams sent in `sendmmsg` batches leave in order, more than one
    /// batch's worth; one too large for UDP is refused by its index and
    /// the rest still go.
    #[tokio::test]
    async fn udp_batches_leave_in_order_and_a_refused_one_does_not_stop_the_rest() {
        let handle = bound().await;
        let phone = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = phone.local_addr().expect("addr");
        let mut datagrams: Vec<(SocketAddr, Vec<u8>)> = (0..70)
            .map(|i| (to, format!("r{i}").into_bytes()))
            .collect();
        datagrams[40].1 = vec![b'x'; 70_000];
        let mut failed = Vec::new();
        handle
            .send_udp_batch(&datagrams, |i, e| failed.push((i, e.to_string())))
            .await;
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(failed[0].0, 40);
        phone
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        for i in (0..70).filter(|i| *i != 40) {
            let (n, _) = phone.recv_from(&mut buf).expect("received");
            assert_eq!(&buf[..n], format!("r{i}").as_bytes());
        }
    }
}
