//! The driver of the trunks' OPTIONS pings (RFC 3261 §11): one task owns
//! a transaction table for the pings, sends what [`TrunkSet::poll_ping`]
//! says is due, and feeds the final responses, Timer F and transport
//! errors back to the [`TrunkSet`]. Health changes are logged and exported
//! here.

#![allow(clippy::disallowed_methods)] // a driver: this is where the clock is read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::engine::{RouteChange, RoutedMessage};
use super::trunk::{ping_ok, Health, Ping, TrunkSet};
use super::wire::{finish, parse_request};
use super::LocalAddress;
use crate::sip::syntax::Request;
use crate::sip::transaction::{branch_from_bits, ClientKey, Event, TimerConfig, TransactionTable};
use crate::sip::transport::TransportHandle;
use crate::sip::Peer;

/// Where one trunk's pings go.
#[derive(Debug, Clone)]
pub(crate) struct PingTarget {
    /// The trunk's address.
    pub(crate) peer: Peer,
    /// Its configured URI, the OPTIONS Request-URI.
    pub(crate) uri: String,
}

/// What the ping task needs.
pub(crate) struct PingIo {
    pub(crate) trunks: Arc<Mutex<TrunkSet>>,
    pub(crate) targets: Vec<PingTarget>,
    pub(crate) local: LocalAddress,
    pub(crate) timers: TimerConfig,
    pub(crate) transport: TransportHandle,
    pub(crate) routes: mpsc::UnboundedSender<RouteChange>,
}

fn lock(trunks: &Mutex<TrunkSet>) -> std::sync::MutexGuard<'_, TrunkSet> {
    trunks
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An out-of-dialog OPTIONS (RFC 3261 §11.1) to the trunk's URI.
fn build_options(
    rng: &mut StdRng,
    target: &PingTarget,
    local: &LocalAddress,
) -> Result<(Request, String), super::CallError> {
    let call_id = format!("{:032x}", rng.gen::<u128>());
    let text = format!(
        "OPTIONS {uri} SIP/2.0\r\nVia: SIP/2.0/{t} {sent_by};branch={branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:powerdial@{domain}>;tag={tag:016x}\r\nTo: <{uri}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContact: <{contact}>\r\n\
         Accept: application/sdp\r\nUser-Agent: powerdial\r\n",
        uri = target.uri,
        t = target.peer.transport.via_token(),
        sent_by = local.sent_by,
        branch = branch_from_bits(rng.gen()),
        domain = local.domain,
        tag = rng.gen::<u64>(),
        contact = local.contact,
    );
    Ok((parse_request(finish(text, None)?)?, call_id))
}

/// Logs and exports health changes (and the initial state of every trunk).
fn report(set: &mut TrunkSet) {
    let m = crate::metrics::metrics();
    while let Some(change) = set.poll_change() {
        let name = set.name(change.trunk).to_string();
        m.trunk_up
            .get_or_create(&crate::metrics::TrunkLabel {
                trunk: name.clone(),
            })
            .set(i64::from(change.health == Health::Up));
        match change.health {
            Health::Down => {
                tracing::warn!(trunk = %name, "trunk down: its OPTIONS pings failed; calls skip it until pings succeed again")
            }
            Health::Up => tracing::info!(trunk = %name, "trunk up again: OPTIONS pings succeed"),
        }
    }
}

/// Runs the pings until `stop` or `drain` (a stopping server dials nothing).
pub(crate) async fn run(io: PingIo, stop: CancellationToken, drain: CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel::<RoutedMessage>();
    let mut table = TransactionTable::new(io.timers);
    let mut pings: HashMap<ClientKey, (Ping, String)> = HashMap::new();
    let mut rng = StdRng::from_entropy();
    let mut failures = io.transport.subscribe_failures();
    loop {
        let now = Instant::now();
        let due: Vec<Ping> = {
            let mut set = lock(&io.trunks);
            set.handle_timeout(now);
            std::iter::from_fn(|| set.poll_ping(now)).collect()
        };
        for ping in due {
            let Some(target) = io.targets.get(ping.trunk.0) else {
                continue;
            };
            let sent = build_options(&mut rng, target, &io.local).and_then(|(req, call_id)| {
                let _ = io
                    .routes
                    .send(RouteChange::Add(call_id.clone(), tx.clone()));
                let key = table.send_request(now, target.peer, req)?;
                Ok((key, call_id))
            });
            match sent {
                Ok((key, call_id)) => {
                    pings.insert(key, (ping, call_id));
                }
                Err(error) => {
                    tracing::warn!(trunk = %target.uri, %error, "OPTIONS ping not built");
                    lock(&io.trunks).handle_ping(ping, false);
                }
            }
        }
        while let Some(t) = table.poll_transmit() {
            let bytes = Bytes::from(crate::sip::message::to_wire(&t.message));
            if io.transport.send(t.peer, bytes).await.is_err() {
                table.handle_transport_error(Instant::now(), t.peer);
            }
        }
        while let Some(event) = table.poll_event() {
            let (key, ok) = match event {
                Event::Final { key, response } => {
                    let ok = ping_ok(response.status_code.code());
                    (key, ok)
                }
                Event::ClientTimeout { key } | Event::ClientTransportError { key } => (key, false),
                _ => continue,
            };
            if let Some((ping, call_id)) = pings.remove(&key) {
                let _ = io.routes.send(RouteChange::Remove(call_id));
                lock(&io.trunks).handle_ping(ping, ok);
            }
        }
        let deadline = {
            let mut set = lock(&io.trunks);
            report(&mut set);
            [set.poll_timeout(), table.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
        };
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = drain.cancelled() => return,
            _ = timer => table.handle_timeout(Instant::now()),
            m = rx.recv() => {
                if let Some(m) = m {
                    let _ = table.handle_message(Instant::now(), m.peer, *m.message);
                }
            }
            peer = failures.recv() => match peer {
                Ok(peer) => table.handle_transport_error(Instant::now(), peer),
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => stop.cancelled().await,
            },
        }
    }
}
