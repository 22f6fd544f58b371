//! The TCP driver: accepted and outgoing connections, each with a reader
//! task (framing by Content-Length, RFC 3261 §18.3) and a writer task.
//! Outgoing connections are made in the background; one that cannot be
//! made, or that fails a write, is announced on the transport's failure
//! channel (RFC 3261 §18.4, §17.1.4).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc};

use super::{ConnectionMap, Inbound, TransportLimits};
use crate::sip::message::{FramingError, StreamFramer};
use crate::sip::{Peer, TransportKind};

/// Accepts connections until the inbound channel closes.
pub(super) async fn accept_loop(
    listener: TcpListener,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    connections: ConnectionMap,
    limits: TransportLimits,
    failures: broadcast::Sender<Peer>,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                // EMFILE and friends: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        if inbound.is_closed() {
            return;
        }
        if !admit(&connections, from, limits) {
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        start_stream(
            stream,
            TransportKind::Tcp,
            from,
            local,
            inbound.clone(),
            connections.clone(),
            limits,
            failures.clone(),
        );
    }
}

/// Whether a connection from `from` may be accepted: the total and the
/// per-address caps (SPEC §5).
pub(super) fn admit(
    connections: &ConnectionMap,
    from: SocketAddr,
    limits: TransportLimits,
) -> bool {
    let (count, from_here) = connections
        .lock()
        .map(|m| {
            let here = m.keys().filter(|a| a.ip() == from.ip()).count();
            (m.len(), here)
        })
        .unwrap_or((0, 0));
    if count >= limits.max_tcp_connections {
        tracing::warn!(%from, count, "refusing connection: too many open");
        return false;
    }
    // One address holding every connection would lock the agents out
    // (SPEC §5); a phone needs one, an office NAT one per phone.
    if from_here >= limits.max_tcp_per_address {
        tracing::warn!(%from, open = from_here, limit = limits.max_tcp_per_address, "refusing connection: too many from this address");
        crate::metrics::metrics().sip_tcp_refused.inc();
        return false;
    }
    true
}

/// Longest wait for an outgoing connection: Timer B's default (64·T1,
/// RFC 3261 §17.1.1.2) — no transaction waits longer for an answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(32);

/// Messages queued per connection (while it is being made, or behind a slow
/// peer) before senders wait.
const QUEUE: usize = 256;

/// Starts a connection to `to` in the background and returns its sender at
/// once: the caller (a call leg's task, the SIP task) never waits for a
/// handshake, and messages queue until the connection is up. A connection
/// that cannot be made drops what was queued and announces `to` on
/// `failures`, for the transactions with that peer (RFC 3261 §17.1.4).
pub(super) fn connect(
    to: SocketAddr,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    connections: ConnectionMap,
    limits: TransportLimits,
    failures: broadcast::Sender<Peer>,
) -> mpsc::Sender<Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    if let Ok(mut m) = connections.lock() {
        m.insert(to, tx.clone());
    }
    let me = tx.clone();
    tokio::spawn(async move {
        let timeout = limits.tcp_idle_timeout.min(CONNECT_TIMEOUT);
        let connected = tokio::time::timeout(timeout, TcpStream::connect(to))
            .await
            .unwrap_or_else(|_| {
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TCP connect timed out",
                ))
            });
        match connected {
            Ok(stream) => run(
                {
                    let _ = stream.set_nodelay(true);
                    stream
                },
                TransportKind::Tcp,
                to,
                local,
                inbound,
                connections,
                limits,
                failures,
                (me, rx),
            ),
            Err(e) => {
                tracing::info!(peer = %to, error = %e, "TCP connection failed");
                forget(&connections, to, &me);
                drop(rx);
                let _ = failures.send(tcp_peer(to));
            }
        }
    });
    tx
}

fn tcp_peer(addr: SocketAddr) -> Peer {
    Peer {
        transport: TransportKind::Tcp,
        addr,
    }
}

/// Forgets the connection unless a newer one to the same address replaced it.
fn forget(connections: &ConnectionMap, remote: SocketAddr, me: &mpsc::Sender<Bytes>) {
    if let Ok(mut m) = connections.lock() {
        if m.get(&remote).is_some_and(|s| s.same_channel(me)) {
            m.remove(&remote);
        }
    }
}

/// Registers an accepted stream (TCP, or TLS after its handshake) in
/// `connections` and starts its reader and writer.
#[allow(clippy::too_many_arguments)]
pub(super) fn start_stream<S>(
    stream: S,
    kind: TransportKind,
    remote: SocketAddr,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    connections: ConnectionMap,
    limits: TransportLimits,
    failures: broadcast::Sender<Peer>,
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    if let Ok(mut m) = connections.lock() {
        m.insert(remote, tx.clone());
    }
    run(
        stream,
        kind,
        remote,
        local,
        inbound,
        connections,
        limits,
        failures,
        (tx, rx),
    );
}

/// Starts the reader and writer tasks of a connection whose sender is
/// already in `connections`.
#[allow(clippy::too_many_arguments)]
fn run<S>(
    stream: S,
    kind: TransportKind,
    remote: SocketAddr,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    connections: ConnectionMap,
    limits: TransportLimits,
    failures: broadcast::Sender<Peer>,
    (me, rx): (mpsc::Sender<Bytes>, mpsc::Receiver<Bytes>),
) where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let peer = Peer {
        transport: kind,
        addr: remote,
    };
    let (reader, writer) = tokio::io::split(stream);
    let activity = Arc::new(AtomicU64::new(0));
    tokio::spawn(write_loop(writer, rx, activity.clone(), peer, failures));
    tokio::spawn(async move {
        read_loop(reader, peer, local, inbound, limits, activity, me.clone()).await;
        forget(&connections, remote, &me);
        tracing::debug!(%peer, "connection closed");
    });
}

async fn write_loop<W: AsyncWrite>(
    writer: W,
    mut rx: mpsc::Receiver<Bytes>,
    activity: Arc<AtomicU64>,
    peer: Peer,
    failures: broadcast::Sender<Peer>,
) {
    tokio::pin!(writer);
    while let Some(bytes) = rx.recv().await {
        if let Err(e) = writer.write_all(&bytes).await {
            // A reset connection: what was queued is lost (§17.1.4).
            tracing::info!(%peer, error = %e, "write failed");
            let _ = failures.send(peer);
            break;
        }
        // TLS buffers records: push them out now.
        if let Err(e) = writer.flush().await {
            tracing::info!(%peer, error = %e, "write failed");
            let _ = failures.send(peer);
            break;
        }
        activity.fetch_add(1, Ordering::Relaxed);
    }
    let _ = writer.shutdown().await;
}

async fn read_loop<R: AsyncRead>(
    reader: R,
    peer: Peer,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    limits: TransportLimits,
    activity: Arc<AtomicU64>,
    writer: mpsc::Sender<Bytes>,
) {
    tokio::pin!(reader);
    let remote = peer.addr;
    let mut framer = StreamFramer::new(limits.max_message_size);
    let mut buf = vec![0u8; 8192];
    let mut writes_seen = 0;
    loop {
        let n = match tokio::time::timeout(limits.tcp_idle_timeout, reader.read(&mut buf)).await {
            Ok(Ok(0)) => return,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::debug!(%remote, error = %e, "TCP read failed");
                return;
            }
            Err(_) => {
                // Idle only if nothing was written either since the last check.
                let writes = activity.load(Ordering::Relaxed);
                if writes == writes_seen {
                    tracing::debug!(%remote, "closing idle TCP connection");
                    return;
                }
                writes_seen = writes;
                continue;
            }
        };
        framer.push(&buf[..n]);
        // RFC 5626 §3.5.1: a CRLFCRLF ping gets a CRLF pong.
        for _ in 0..framer.take_pings() {
            let _ = writer.send(Bytes::from_static(b"\r\n")).await;
        }
        loop {
            match framer.next_message() {
                Ok(Some(message)) => {
                    let msg = Inbound {
                        peer,
                        local,
                        bytes: message,
                    };
                    if inbound.send(msg).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(FramingError::TooLarge { response, .. }) => {
                    tracing::info!(%remote, "closing TCP connection: message over the size limit");
                    // RFC 3261 §21.4.11: answer 413 when the headers could be read.
                    if let Some(r) = response {
                        let _ = writer.send(Bytes::from(r.to_string())).await;
                    }
                    return;
                }
                Err(e) => {
                    tracing::info!(%remote, error = %e, "closing TCP connection: unframeable stream");
                    return;
                }
            }
        }
    }
}
