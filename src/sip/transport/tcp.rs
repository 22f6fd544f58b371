//! The TCP driver: accepted and outgoing connections, each with a reader
//! task (framing by Content-Length, RFC 3261 §18.3) and a writer task.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

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
        let count = connections.lock().map(|m| m.len()).unwrap_or(0);
        if count >= limits.max_tcp_connections {
            tracing::warn!(%from, count, "refusing TCP connection: too many open");
            drop(stream);
            continue;
        }
        start(
            stream,
            from,
            local,
            inbound.clone(),
            connections.clone(),
            limits,
        );
    }
}

/// Opens a connection to `to` and starts its tasks; returns its sender.
pub(super) async fn connect(
    to: SocketAddr,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    connections: ConnectionMap,
    limits: TransportLimits,
) -> io::Result<mpsc::Sender<Bytes>> {
    let stream = tokio::time::timeout(limits.tcp_idle_timeout, TcpStream::connect(to))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TCP connect timed out"))??;
    Ok(start(stream, to, local, inbound, connections, limits))
}

fn start(
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    connections: ConnectionMap,
    limits: TransportLimits,
) -> mpsc::Sender<Bytes> {
    let _ = stream.set_nodelay(true);
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    if let Ok(mut m) = connections.lock() {
        m.insert(remote, tx.clone());
    }
    let (reader, writer) = stream.into_split();
    let activity = Arc::new(AtomicU64::new(0));
    tokio::spawn(write_loop(writer, rx, activity.clone()));
    let conns = connections.clone();
    let me = tx.clone();
    tokio::spawn(async move {
        read_loop(reader, remote, local, inbound, limits, activity, me.clone()).await;
        // Forget the connection unless a newer one to the same address replaced it.
        if let Ok(mut m) = conns.lock() {
            if m.get(&remote).is_some_and(|s| s.same_channel(&me)) {
                m.remove(&remote);
            }
        }
        tracing::debug!(%remote, "TCP connection closed");
    });
    tx
}

async fn write_loop(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Bytes>,
    activity: Arc<AtomicU64>,
) {
    while let Some(bytes) = rx.recv().await {
        if let Err(e) = writer.write_all(&bytes).await {
            tracing::debug!(error = %e, "TCP write failed");
            break;
        }
        activity.fetch_add(1, Ordering::Relaxed);
    }
    let _ = writer.shutdown().await;
}

async fn read_loop(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    remote: SocketAddr,
    local: SocketAddr,
    inbound: mpsc::Sender<Inbound>,
    limits: TransportLimits,
    activity: Arc<AtomicU64>,
    writer: mpsc::Sender<Bytes>,
) {
    let mut framer = StreamFramer::new(limits.max_message_size);
    let mut buf = vec![0u8; 8192];
    let peer = Peer {
        transport: TransportKind::Tcp,
        addr: remote,
    };
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
