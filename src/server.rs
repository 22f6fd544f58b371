//! The server driver: binds the sockets, opens the store, and runs the SIP
//! endpoint core and the HTTP API as tasks. Thin by design: decisions live
//! in the sans-IO cores; this module only moves bytes, reads the clock, and
//! persists what the cores report.

#![allow(clippy::disallowed_methods)] // the driver is where the clock is read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use rand::RngCore;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call::engine::{CallEngine, EngineConfigError, EngineIo, RouteChange, RoutedMessage};
use crate::config::Config;
use crate::http::admin_token::AdminToken;
use crate::leads::model::Registration;
use crate::media::relay::{MediaRelay, RelayConfig};
use crate::sip::endpoint::{Endpoint, EndpointConfig, EndpointEvent};
use crate::sip::handle::SipCommand;
use crate::sip::handle::SipHandle;
use crate::sip::parse_share::{Datagrams, ParseHelper};
use crate::sip::registrar::Binding;
use crate::sip::transaction::TimerConfig;
use crate::sip::transport::{InboundSources, TransportError, TransportHandle, TransportLimits};
use crate::sip::TransportKind;
use crate::store::registration_writer::{self, RegistrationChange, RegistrationSender};
use crate::store::StoreError;

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// A SIP socket could not be bound.
    #[error("SIP transport: {0}")]
    Transport(#[from] TransportError),
    /// The HTTP socket could not be bound or served.
    #[error("HTTP on {addr}: {source}")]
    Http {
        /// The configured address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The RTP port range is unusable.
    #[error("media relay: {0}")]
    Media(#[from] crate::media::relay::MediaError),
    /// The call engine's configuration is unusable (trunk URI, allow patterns).
    #[error("calls: {0}")]
    Calls(#[from] EngineConfigError),
    /// Stored dialer sessions could not be resumed.
    #[error("dialer sessions: {0}")]
    Sessions(#[from] crate::dialer::session::SessionError),
    /// The demo trunk's socket could not be bound.
    #[error("demo trunk: {0}")]
    DemoTrunk(std::io::Error),
    /// The generated admin token could not be read or written.
    #[error(transparent)]
    AdminToken(#[from] crate::http::admin_token::AdminTokenError),
    /// No SIP listener: the call engine has no address to write in Via.
    #[error("no SIP listener is configured")]
    NoSipListener,
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The configured path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A started server: its bound addresses, and a way to stop it.
pub struct RunningServer {
    /// The UDP SIP socket, if configured.
    pub sip_udp: Option<SocketAddr>,
    /// The TCP SIP listener, if configured.
    pub sip_tcp: Option<SocketAddr>,
    /// The HTTP API.
    pub http: SocketAddr,
    /// Talks to the SIP task.
    pub sip: SipHandle,
    /// The call engine (SPEC §1).
    pub calls: CallEngine,
    /// The HTTP API's admin token and where it came from.
    pub admin_token: AdminToken,
    shutdown: CancellationToken,
    drain: CancellationToken,
    hurry: CancellationToken,
    drain_timeout: std::time::Duration,
    tasks: TaskTracker,
    /// Flushed before the tasks stop: no audit entry is lost on a stop.
    audit: crate::store::audit::AuditLog,
}

impl RunningServer {
    /// A graceful stop (SIGTERM): no new calls; ringing leads are
    /// cancelled; connected calls may finish for `server.drain_timeout`,
    /// then get a BYE; returns once every call has ended with its outcome
    /// stored. `hurry` (a second SIGTERM) hangs everything up at once.
    pub async fn drain(&self, hurry: impl std::future::Future<Output = ()>) {
        self.drain.cancel();
        tokio::pin!(hurry);
        // The agent tasks end by themselves; this bound only guards
        // against a bug holding the process forever.
        let limit = self.drain_timeout + std::time::Duration::from_secs(15);
        tokio::select! {
            _ = self.calls.drained() => {}
            _ = &mut hurry => {
                tracing::info!("second signal: hanging up every call now");
                self.hurry.cancel();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), self.calls.drained()).await;
            }
            _ = tokio::time::sleep(limit) => {
                tracing::warn!("calls did not end within the drain timeout; stopping anyway");
            }
        }
    }

    /// Stops every task and waits for them.
    pub async fn shutdown(self) {
        self.audit.flush().await;
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Runs until Ctrl-C / SIGTERM.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let server = start(config).await?;
    if let AdminToken::Generated { token, path } = &server.admin_token {
        // Shown once, on the terminal of the first start (never logged):
        // later starts read it from the file.
        println!(
            "\npowerdial: no [admin] token is configured, so one was generated and kept in\n\
             {} (readable by you only). Sign in to the console and the API with it:\n\n    \
             {token}\n\n\
             Console: http://{}/    API: http://{}/api/v1/ (Authorization: Bearer <token>)\n",
            path.display(),
            server.http,
            server.http,
        );
    }
    tracing::info!("powerdial ready");
    wait_for_signal().await;
    tracing::info!(
        drain_timeout_s = server.drain_timeout.as_secs_f64(),
        "stopping: no new calls; connected calls may finish, then get a BYE (send the signal again to end them now)"
    );
    server.drain(wait_for_signal()).await;
    tracing::info!("calls ended; shutting down");
    server.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Opens the store, binds SIP and HTTP, and starts the tasks.
pub async fn start(mut config: Config) -> Result<RunningServer, ServerError> {
    let shutdown = CancellationToken::new();
    std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
        path: config.data_dir.display().to_string(),
        source,
    })?;
    let store = crate::store::connect(&config.database_url).await?;
    tracing::info!(database = %redacted(&config.database_url), "database ready");

    let limits = TransportLimits {
        max_message_size: config.max_message_size,
        tcp_idle_timeout: config.tcp_idle_timeout,
        max_tcp_per_address: config.security.max_tcp_connections_per_address,
        ..TransportLimits::default()
    };
    let (transport, inbound) =
        TransportHandle::bind_sip(&config.sip_listen, limits, config.tls.as_ref()).await?;

    let mut rng = rand::rngs::OsRng;
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut secret);
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    // `[[trunk]] uri = "demo:"`: the built-in demo carrier, dialed on
    // loopback like any trunk.
    for t in config
        .trunks
        .iter_mut()
        .filter(|t| t.uri == crate::call::demo::DEMO_URI)
    {
        let addr = crate::call::demo::start([127, 0, 0, 1].into(), shutdown.clone())
            .await
            .map_err(ServerError::DemoTrunk)?;
        // The demo carrier lives in this process: no OPTIONS pings unless
        // the config asks for them.
        t.options_interval = t
            .options_interval
            .or(Some(crate::config::Seconds(std::time::Duration::ZERO)));
        t.uri = format!("sip:{addr}");
    }
    let mut local_domains = vec![config.domain.clone(), "localhost".to_string()];
    for l in &config.sip_listen {
        local_domains.push(l.addr.ip().to_string());
        local_domains.push(l.addr.to_string());
    }
    local_domains.dedup();
    let trunk_sources = config
        .trunks
        .iter()
        .filter_map(|t| trunk_ip(&t.uri))
        .collect();
    let endpoint_config = EndpointConfig {
        domain: config.domain.clone(),
        local_domains,
        timers: TimerConfig {
            t1: config.sip_timers.t1,
            t2: config.sip_timers.t2,
            t4: config.sip_timers.t4,
        },
        max_message_size: config.max_message_size,
        trunk_sources,
        flood: config.security.flood.clone(),
        max_transactions: config.security.max_transactions,
        callback_numbers: config.callback_numbers(),
    };
    let mut endpoint = Endpoint::new(
        endpoint_config,
        &config.agents,
        secret,
        seed,
        Instant::now(),
    );
    endpoint.set_digest_algorithms(&config.digest_algorithms);
    // Agents created through the API (their HA1 values; the config file's
    // agents win a name clash).
    let mut api_agents = Vec::new();
    for a in store.list_agents().await? {
        if config.agents.iter().any(|c| c.username == a.username) {
            tracing::warn!(agent = %a.username, "an agent created through the API has the name of a config agent: the config's is used");
            continue;
        }
        if a.realm != config.domain {
            tracing::warn!(agent = %a.username, realm = %a.realm, domain = %config.domain, "the agent's password was set for another SIP domain: set it again (PATCH /api/v1/agents/USERNAME with a password)");
            continue;
        }
        endpoint.set_agent(
            &a.username,
            crate::sip::digest::StoredHa1 {
                md5: a.ha1_md5,
                sha256: a.ha1_sha256,
            },
        );
        api_agents.push(a.username);
    }
    let now_ms = epoch_ms(SystemTime::now());
    let removed = store.delete_expired_registrations(now_ms).await?;
    let saved: Vec<Binding> = store
        .load_registrations()
        .await?
        .into_iter()
        .filter_map(binding_from_row)
        .collect();
    tracing::info!(
        bindings = saved.len(),
        expired = removed,
        "registrations restored"
    );
    endpoint.load_bindings(saved);

    let drain = CancellationToken::new();
    let hurry = CancellationToken::new();
    let tasks = TaskTracker::new();
    // Binding changes go to their batch writer; it outlives the SIP task
    // and flushes on shutdown (DESIGN.md "Writes leave the signalling path
    // in batches").
    let (persist_tx, persist_rx) = registration_writer::channel();
    tasks.spawn(registration_writer::run_writer(store.clone(), persist_rx));
    // A REGISTER's 200 OK leaves once its binding is committed (the
    // writer reports what is; SPEC §5).
    endpoint.set_ack_after_persist(true);
    let (cmd_tx, cmd_rx) = mpsc::channel(256);
    let (route_tx, route_rx) = mpsc::unbounded_channel();
    // Calls from a trunk to our caller IDs (SPEC §1 "Leads calling back").
    let (callback_tx, callback_rx) = mpsc::unbounded_channel();
    tasks.spawn(sip_task(
        endpoint,
        transport.clone(),
        inbound,
        cmd_rx,
        (route_rx, callback_tx),
        persist_tx,
        shutdown.clone(),
    ));
    let sip = SipHandle::new(cmd_tx);

    let relay = MediaRelay::new(RelayConfig::from_config(&config))?;
    let sent_by = transport
        .local_addr(TransportKind::Udp)
        .or_else(|| transport.local_addr(TransportKind::Tcp))
        .ok_or(ServerError::NoSipListener)?;
    // Held, restricted and refused dials (SPEC §4), off the signalling path.
    let audit = crate::store::audit::AuditLog::start(store.clone());
    // The leg journal (what ends every live leg after a crash) has its
    // batch writer, like the bindings.
    let (journal_tx, journal_rx) = crate::call::leg_journal::channel();
    tasks.spawn(crate::call::leg_journal::run_writer(
        store.clone(),
        journal_rx,
        shutdown.clone(),
    ));
    let recovery_routes = route_tx.clone();
    let calls = CallEngine::start(
        &config,
        EngineIo {
            audit: audit.clone(),
            store: store.clone(),
            sip: sip.clone(),
            transport: transport.clone(),
            routes: route_tx.clone(),
            relay,
            sent_by,
            shutdown: shutdown.clone(),
            drain: drain.clone(),
            hurry: hurry.clone(),
            journal: journal_tx,
        },
    )?;
    // Before anything dials: end the legs a crash left up and give their
    // calls an outcome (call::recovery).
    let recovered = crate::call::recovery::recover(crate::call::recovery::RecoveryIo {
        store: store.clone(),
        transport: transport.clone(),
        routes: recovery_routes,
        sent_by: sent_by.to_string(),
        timers: crate::sip::transaction::TimerConfig {
            t1: config.sip_timers.t1,
            t2: config.sip_timers.t2,
            t4: config.sip_timers.t4,
        },
        shutdown: shutdown.clone(),
    })
    .await?;

    for name in &api_agents {
        calls.add_agent(name);
    }

    // Dialer sessions (SPEC §1) drive the call engine; stored ones resume.
    let mut session_config = crate::dialer::session::SessionConfig::from_dialer(&config.dialer);
    session_config.audit = audit.clone();
    let calling_hours = session_config.calling_hours.clone();
    let sessions = crate::dialer::directory::Sessions::start(
        store.clone(),
        calls.clone(),
        crate::dialer::session::SystemClock,
        session_config,
    )
    .await?;
    // The sessions learn the outcomes the crash sweep recorded (R3–R5).
    sessions.apply_recovered(&recovered.settled).await;
    // Sessions' own caller IDs are callback numbers too.
    sip.set_session_caller_ids(sessions.caller_ids().await)
        .await;
    tasks.spawn(crate::call::callback::run(
        crate::call::callback::CallbackIo {
            engine: calls.clone(),
            store: store.clone(),
            members: std::sync::Arc::new(sessions.clone()),
            transport: transport.clone(),
            routes: route_tx,
            local: crate::call::LocalAddress {
                contact: format!("sip:powerdial@{sent_by}"),
                sent_by: sent_by.to_string(),
                domain: config.domain.clone(),
            },
            timers: TimerConfig {
                t1: config.sip_timers.t1,
                t2: config.sip_timers.t2,
                t4: config.sip_timers.t4,
            },
            default_region: config.default_region.clone(),
            fallback: config.dialer.callback_fallback,
        },
        callback_rx,
        shutdown.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| ServerError::Http {
            addr: config.http_listen,
            source,
        })?;
    let http = listener.local_addr().map_err(|source| ServerError::Http {
        addr: config.http_listen,
        source,
    })?;
    let admin_token =
        crate::http::admin_token::resolve(config.admin_token.as_deref(), &config.data_dir)?;
    if let AdminToken::Stored { path, .. } = &admin_token {
        tracing::info!(file = %path.display(), "admin token read from the data directory");
    }
    let state =
        crate::http::AppState::new(store.clone(), admin_token.token(), &config.default_region)
            .with_sip(sip.clone(), config.agents.clone())
            .with_realm(&config.domain)
            .with_cors_origins(config.cors_origins.clone())
            .with_calls(calls.clone())
            .with_calling_hours(calling_hours)
            .with_audit(audit.clone())
            .with_data_dir(&config.data_dir)
            .with_sessions(sessions);
    let app = crate::http::router(state);
    let http_shutdown = shutdown.clone();
    tasks.spawn(async move {
        // The client address reaches the auth middleware's limiter.
        let app = app.into_make_service_with_connect_info::<SocketAddr>();
        let stopping = http_shutdown.clone();
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(async move { http_shutdown.cancelled().await });
        // Requests in flight get a moment to finish; long-lived event
        // streams (the console's) would hold a graceful stop forever, so
        // they are closed after it.
        tokio::select! {
            served = serve => {
                if let Err(e) = served {
                    tracing::error!(error = %e, "HTTP server stopped");
                }
            }
            _ = async {
                stopping.cancelled().await;
                tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            } => tracing::debug!("closing the HTTP connections still open"),
        }
    });
    tracing::info!(%http, "HTTP API listening");

    Ok(RunningServer {
        sip_udp: transport.local_addr(TransportKind::Udp),
        sip_tcp: transport.local_addr(TransportKind::Tcp),
        http,
        sip,
        calls,
        admin_token,
        shutdown,
        drain,
        hurry,
        drain_timeout: config.drain_timeout,
        tasks,
        audit,
    })
}

/// Inbound messages processed per wake before timers and commands get a turn.
const BATCH: usize = 64;

/// The SIP task: one endpoint core, one timer, the sending UDP socket
/// (read here, in batches: no receive task and channel hop per datagram)
/// and the transport's inbound channel (streams, other UDP sockets).
/// Messages leave in the order the core produced them.
async fn sip_task(
    mut endpoint: Endpoint,
    transport: TransportHandle,
    inbound: InboundSources,
    mut commands: mpsc::Receiver<SipCommand>,
    (mut route_changes, callbacks): (
        mpsc::UnboundedReceiver<RouteChange>,
        mpsc::UnboundedSender<RoutedMessage>,
    ),
    mut persist: RegistrationSender,
    shutdown: CancellationToken,
) {
    let InboundSources {
        channel: mut inbound,
        udp: mut udp_in,
    } = inbound;
    let mut routes: HashMap<String, mpsc::UnboundedSender<RoutedMessage>> = HashMap::new();
    let mut persisted = persist.persisted();
    // The second core's share of the parsing (`sip::parse_share`).
    let parser = ParseHelper::start();
    // Responses bound for UDP, sent together (`sendmmsg`) in the order the
    // core produced them.
    let mut udp_out: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    loop {
        let deadline = endpoint.poll_timeout();
        let timer = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let udp_ready = async {
            match &udp_in {
                Some(u) => u.ready().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            // Before new input: acknowledgements of stored bindings.
            Ok(()) = persisted.changed() => {
                let committed = *persisted.borrow_and_update();
                endpoint.bindings_persisted(Instant::now(), committed);
            }
            () = udp_ready => {
                // One reading of the clocks per turn, as below.
                let now = Instant::now();
                let wall = SystemTime::now();
                if let Some(u) = udp_in.as_mut() {
                    // Read first, then parsed on two cores when there is
                    // a batch (`sip::parse_share`), and handled here one
                    // by one in arrival order.
                    let mut batch = Datagrams::new(endpoint.max_message_size());
                    u.receive(BATCH, |peer, bytes| {
                        let ahead = !endpoint.is_banned(peer.addr.ip(), now);
                        batch.push(peer, bytes, ahead);
                    });
                    let batch = parser.share(batch);
                    for i in 0..batch.len() {
                        let Some(peer) = batch.peer(i) else { break };
                        // Routes first, before every message: a leg
                        // registers its Call-ID before its first message
                        // leaves, so no answer can overtake it (a response
                        // taken for a stray is lost, and the lead hears
                        // silence until a retransmission).
                        apply_routes(&mut endpoint, &mut routes, &mut route_changes);
                        // Counted against its source before it is read
                        // (`sip::flood`), as `handle_datagram` does.
                        if !endpoint.admit_datagram(now, wall, peer, batch.is_response(i)) {
                            batch.skip(i);
                            continue;
                        }
                        if let Some(inspected) = batch.take(i) {
                            endpoint.handle_inspected(now, wall, peer, inspected);
                        }
                    }
                }
                // The streams' turn as well: a socket that stays readable
                // must not hold TCP and TLS messages back (the select is
                // biased).
                for _ in 0..BATCH {
                    match inbound.try_recv() {
                        Ok(m) => {
                            apply_routes(&mut endpoint, &mut routes, &mut route_changes);
                            endpoint.handle_datagram(now, wall, m.peer, &m.bytes);
                        }
                        Err(_) => break,
                    }
                }
            }
            msg = inbound.recv() => {
                let Some(msg) = msg else { return };
                // Routes first, as above.
                apply_routes(&mut endpoint, &mut routes, &mut route_changes);
                let now = Instant::now();
                let wall = SystemTime::now();
                endpoint.handle_datagram(now, wall, msg.peer, &msg.bytes);
                for _ in 1..BATCH {
                    match inbound.try_recv() {
                        Ok(m) => {
                            apply_routes(&mut endpoint, &mut routes, &mut route_changes);
                            endpoint.handle_datagram(now, wall, m.peer, &m.bytes)
                        }
                        Err(_) => break,
                    }
                }
            }
            _ = timer => endpoint.handle_timeout(Instant::now(), SystemTime::now()),
            cmd = commands.recv() => {
                if let Some(cmd) = cmd {
                    cmd.apply(&mut endpoint, Instant::now(), SystemTime::now());
                }
            }
        }
        while let Some(r) = endpoint.poll_routed() {
            if r.new_call {
                routes.insert(r.call_id.clone(), callbacks.clone());
            }
            match routes.get(&r.call_id) {
                Some(tx) => {
                    let _ = tx.send(RoutedMessage {
                        peer: r.peer,
                        message: Box::new(r.message),
                    });
                }
                None => tracing::debug!(call_id = %r.call_id, "routed message without a leg"),
            }
        }
        while let Some(t) = endpoint.poll_transmit() {
            let bytes = crate::sip::message::to_wire(&t.message);
            if t.peer.transport == TransportKind::Udp {
                udp_out.push((t.peer.addr, bytes));
                continue;
            }
            // What was queued before it leaves before it.
            send_udp(&mut endpoint, &transport, &mut udp_out).await;
            if let Err(e) = transport.send(t.peer, Bytes::from(bytes)).await {
                tracing::debug!(error = %e, "SIP send failed");
                endpoint.handle_transport_error(Instant::now(), t.peer);
            }
        }
        send_udp(&mut endpoint, &transport, &mut udp_out).await;
        // Waits while the writer is behind: backpressure, never loss
        // (SPEC §5 "none is ever dropped").
        while let Some(ev) = endpoint.poll_event() {
            let EndpointEvent::BindingsChanged { ticket, .. } = &ev;
            let ticket = *ticket;
            if let Err(e) = persist.send(changes_from_event(ev), ticket).await {
                tracing::error!(error = %e, "a binding change was not saved");
            }
        }
    }
}

/// Sends the queued UDP datagrams (emptying the queue); the core hears of
/// each peer a datagram could not be sent to (RFC 3261 §18.4).
async fn send_udp(
    endpoint: &mut Endpoint,
    transport: &TransportHandle,
    queue: &mut Vec<(SocketAddr, Vec<u8>)>,
) {
    if queue.is_empty() {
        return;
    }
    let mut failed = Vec::new();
    transport
        .send_udp_batch(queue, |i, e| {
            tracing::debug!(error = %e, "SIP send failed");
            if let Some((addr, _)) = queue.get(i) {
                failed.push(*addr);
            }
        })
        .await;
    queue.clear();
    for addr in failed {
        endpoint.handle_transport_error(
            Instant::now(),
            crate::sip::Peer {
                transport: TransportKind::Udp,
                addr,
            },
        );
    }
}

fn apply_routes(
    endpoint: &mut Endpoint,
    routes: &mut HashMap<String, mpsc::UnboundedSender<RoutedMessage>>,
    changes: &mut mpsc::UnboundedReceiver<RouteChange>,
) {
    while let Ok(change) = changes.try_recv() {
        match change {
            RouteChange::Add(call_id, tx) => {
                endpoint.route_call_id(&call_id);
                routes.insert(call_id, tx);
            }
            RouteChange::Remove(call_id) => {
                endpoint.unroute_call_id(&call_id);
                routes.remove(&call_id);
            }
        }
    }
}

/// The rows a registrar event changes: upserts for added or refreshed
/// bindings, removals for gone ones (RFC 3261 §10.3).
fn changes_from_event(ev: EndpointEvent) -> Vec<RegistrationChange> {
    match ev {
        EndpointEvent::BindingsChanged {
            upserted, removed, ..
        } => removed
            .into_iter()
            .map(|b| RegistrationChange::Remove {
                aor: b.aor,
                contact: b.contact,
            })
            .chain(
                upserted
                    .iter()
                    .map(|b| RegistrationChange::Upsert(row_from_binding(b))),
            )
            .collect(),
    }
}

fn row_from_binding(b: &Binding) -> Registration {
    Registration {
        aor: b.aor.clone(),
        contact: b.contact.clone(),
        expires_ms: b.expires_ms(),
        call_id: b.call_id.clone(),
        cseq: i64::from(b.cseq),
        q: b.q.map(f64::from),
        transport: b.transport.to_string(),
        source: b.source.to_string(),
    }
}

fn binding_from_row(r: Registration) -> Option<Binding> {
    let transport = match r.transport.as_str() {
        "udp" => TransportKind::Udp,
        "tcp" => TransportKind::Tcp,
        "tls" => TransportKind::Tls,
        other => {
            tracing::warn!(
                transport = other,
                "ignoring a saved registration with an unknown transport"
            );
            return None;
        }
    };
    Some(Binding {
        aor: r.aor,
        contact: r.contact,
        expires_at: Binding::time_from_ms(r.expires_ms),
        call_id: r.call_id,
        cseq: u32::try_from(r.cseq).unwrap_or(0),
        q: r.q.map(|q| q as f32),
        transport,
        source: r.source.parse().ok()?,
        // Not persisted: answering at the source is the safe choice behind NAT.
        rport: true,
    })
}

fn epoch_ms(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The IP of a trunk URI like `sip:127.0.0.1:5080;transport=tcp` (names are
/// not resolved here: a trunk given by name is not a trusted source).
fn trunk_ip(uri: &str) -> Option<std::net::IpAddr> {
    let rest = uri.strip_prefix("sip:")?;
    let rest = rest.rsplit_once('@').map(|x| x.1).unwrap_or(rest);
    let hostport = rest.split([';', '?']).next()?;
    if let Ok(sa) = hostport.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    let host = hostport.trim_start_matches('[');
    let host = host.split(']').next()?;
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    };
    host.parse().ok()
}

/// A database URL with its credentials hidden, for logs and messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trunk_ips() {
        assert_eq!(
            trunk_ip("sip:127.0.0.1:5080").map(|i| i.to_string()),
            Some("127.0.0.1".into())
        );
        assert_eq!(
            trunk_ip("sip:gw@10.0.0.2;transport=tcp").map(|i| i.to_string()),
            Some("10.0.0.2".into())
        );
        assert_eq!(
            trunk_ip("sip:[::1]:5080").map(|i| i.to_string()),
            Some("::1".into())
        );
        assert_eq!(trunk_ip("sip:carrier.example.com"), None);
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redacted("postgres://u:pw@h/db"),
            "postgres://***@h/db".to_string()
        );
        assert_eq!(redacted("sqlite://data/x.db"), "sqlite://data/x.db");
    }
}
