//! `powerdial-load`: a load driver for a real `powerdial serve` (SPEC §6).
//!
//! It starts the server (its own temp data dir and config, ephemeral ports
//! on 127.0.0.1, the ring timeout shrunk by config), imports the leads with
//! `powerdial import-leads`, and plays the carrier and N agent phones over
//! real UDP sockets with its own minimal SIP (`sip.rs`, `peers.rs`). Each
//! dialer trial is RFC 7501/7502 style: a fresh server, the trunk paced at
//! one rate (`max_cps`), the whole dialer path (claim → INVITE → 200 →
//! bridge → BYE → call record) for a fixed time with zero wrap-up; the
//! highest rate with zero failures is the result. REGISTER cycles with MD5
//! digest are stepped the same way, with as many distinct agents as cycles,
//! and every binding is checked after a restart (persisted).
//!
//! The driver reports its own CPU time, late timers, refused sends and
//! kernel drops on its sockets, so it says when it was the bottleneck.

#![allow(clippy::disallowed_methods)] // a load driver reads the clock

mod peers;
mod server;
mod sip;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use peers::{
    AgentRtpStats, CarrierConfig, CarrierStats, PhoneStats, RegisterBatch, RegisterResult,
};
use server::{Server, ServerConfig};

#[derive(Parser, Debug)]
#[command(
    name = "powerdial-load",
    about = "Load driver for a real `powerdial serve` (SPEC §6 figures)"
)]
struct Args {
    /// A few seconds with small numbers (CI): asserts only that it ran and produced figures.
    #[arg(long)]
    smoke: bool,
    /// Leads in the view.
    #[arg(long, default_value_t = 20_000)]
    leads: u64,
    /// 1,000,000 leads in the view (overrides --leads).
    #[arg(long)]
    million: bool,
    /// Agent phones in the dialer session.
    #[arg(long, default_value_t = 200)]
    agents: usize,
    /// Trunk pacing (max_cps) per dialer trial, calls/s; "0" runs unpaced.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,200,400,800,1600,3200,0"
    )]
    rates: Vec<f64>,
    /// Seconds per dialer trial (after the agents joined).
    #[arg(long, default_value_t = 10.0)]
    trial: f64,
    /// Keep stepping after an unclean trial.
    #[arg(long)]
    all_rates: bool,
    /// The carrier hangs an answered lead up this long after its 200 OK, s.
    #[arg(long, default_value_t = 0.05)]
    hold: f64,
    /// Ring timeout (config) for the leads that only ring, s.
    #[arg(long, default_value_t = 1.0)]
    ring_timeout: f64,
    /// One lead in this many only rings (ring-timeout accuracy); 0: none.
    #[arg(long, default_value_t = 50)]
    no_answer_every: u64,
    /// RTP both ways for the whole call (carrier every 20 ms, agents echo).
    #[arg(long)]
    rtp: bool,
    /// Hold time of the memory-per-active-call trial, s (0 skips it).
    #[arg(long, default_value_t = 4.0)]
    memory_hold: f64,
    /// Agents (so calls up at once) of the memory-per-active-call trial.
    /// RSS grows in steps of pages and arenas, about ±0.8 MB between runs
    /// of one build: over 200 calls that is ±4 KB per call, over 1,000 it
    /// is under 1 KB (SPEC §6: under 20 KB per active call).
    #[arg(long, default_value_t = 1000)]
    memory_agents: usize,
    /// Distinct agents of the REGISTER trials (one cycle each per step).
    #[arg(long, default_value_t = 10_000)]
    register_agents: usize,
    /// REGISTER cycles/s per step; empty skips.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2000,4000,6000,8000,10000,12000,14000,16000"
    )]
    register_rates: Vec<f64>,
    /// What to run.
    #[arg(long, value_delimiter = ',', default_value = "calls,memory,register")]
    only: Vec<String>,
    /// Also run the REGISTER steps against Kamailio with this config
    /// (benches/peers/kamailio-register.cfg) and print the ratios.
    #[arg(long)]
    peer_kamailio: Option<PathBuf>,
    /// Also run paced INVITE/200/ACK/BYE calls through Kamailio's stateful
    /// proxy with this config (benches/peers/kamailio-proxy.cfg) to the
    /// same carrier, and print the ratio to the dialer path's best.
    #[arg(long)]
    peer_kamailio_proxy: Option<PathBuf>,
    /// Calls/s per step of the proxy comparison.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "500,1000,2000,3000,4000,5000,6000"
    )]
    proxy_rates: Vec<f64>,
    /// Run on PostgreSQL at this URL (a fresh schema per server, dropped
    /// at the end; leads imported per trial) instead of SQLite.
    #[arg(long)]
    postgres: Option<String>,
    /// The powerdial binary (default: beside this one).
    #[arg(long)]
    powerdial: Option<PathBuf>,
    /// POWERDIAL_LOG of the server.
    #[arg(long, default_value = "info")]
    log: String,
    /// Keep the work directory (logs, configs, databases).
    #[arg(long)]
    keep: bool,
    /// Soak sampling: every this many seconds of a dialer trial, print the
    /// server's RSS and open file descriptors with the calls placed so
    /// far; after the trial, sample again once every call's last
    /// transaction timed out (Timer J, 32 s), and summarise the growth
    /// (benches/soak.sh). 0: off.
    #[arg(long, default_value_t = 0.0)]
    sample_every: f64,
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[((s.len() as f64 - 1.0) * p).round() as usize]
}

fn dist(v: &[f64]) -> String {
    format!(
        "n {} p50 {:.3} p99 {:.3} max {:.3} ms",
        v.len(),
        pct(v, 0.5),
        pct(v, 0.99),
        pct(v, 1.0)
    )
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn mb(b: f64) -> String {
    format!("{:.1} MB", b / 1e6)
}

struct Ctx {
    args: Args,
    bin: PathBuf,
    work: PathBuf,
    rt: tokio::runtime::Runtime,
    /// The SQLite file with the leads imported, copied into each trial.
    template: Option<PathBuf>,
    failures: u64,
    /// The dialer path's highest clean rate, calls/s.
    dialer_best: Option<f64>,
    /// The leads' CSV (imported per trial on PostgreSQL).
    csv: Option<PathBuf>,
    /// PostgreSQL schemas made, dropped at the end.
    schemas: Mutex<Vec<String>>,
}

/// The driver's peers for one server.
struct Rig {
    carrier: Arc<Mutex<CarrierStats>>,
    rtp: Arc<Mutex<AgentRtpStats>>,
    phones: Arc<Mutex<PhoneStats>>,
    batches: mpsc::Sender<RegisterBatch>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    ports: Vec<u16>,
    carrier_addr: std::net::SocketAddr,
}

impl Drop for Rig {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Ctx {
    fn rig(&self, sip: std::net::SocketAddr, ring_timeout: f64, hold: f64) -> Result<Rig> {
        self.rig_with(sip, ring_timeout, hold, true)
    }

    /// [`Self::rig`]; `media: false` keeps the carrier from sending RTP.
    fn rig_with(
        &self,
        sip: std::net::SocketAddr,
        ring_timeout: f64,
        hold: f64,
        media: bool,
    ) -> Result<Rig> {
        let _g = self.rt.enter();
        let (csip, crtp) = (peers::udp(0)?, peers::udp(0)?);
        let (asip, artp) = (peers::udp(0)?, peers::udp(0)?);
        let ports = [&csip, &crtp, &asip, &artp]
            .iter()
            .filter_map(|s| s.local_addr().ok().map(|a| a.port()))
            .collect::<Vec<_>>();
        let carrier_addr = csip.local_addr()?;
        let artp_port = artp.local_addr()?.port();
        let carrier = Arc::new(Mutex::new(CarrierStats::default()));
        let rtp = Arc::new(Mutex::new(AgentRtpStats::default()));
        let phones = Arc::new(Mutex::new(PhoneStats::default()));
        let (tx, rx) = mpsc::channel(4);
        let (legs_tx, legs_rx) = mpsc::unbounded_channel();
        let cfg = CarrierConfig {
            hold: Duration::from_secs_f64(hold),
            ring_timeout: Duration::from_secs_f64(ring_timeout),
            rtp: self.args.rtp,
            media,
        };
        let tasks = vec![
            self.rt
                .spawn(peers::carrier(csip, crtp, cfg, carrier.clone())),
            self.rt
                .spawn(peers::agent_rtp(artp, self.args.rtp, legs_rx, rtp.clone())),
            self.rt.spawn(peers::phones(
                asip,
                sip,
                artp_port,
                rx,
                legs_tx,
                phones.clone(),
            )),
        ];
        Ok(Rig {
            carrier,
            rtp,
            phones,
            batches: tx,
            tasks,
            ports,
            carrier_addr,
        })
    }

    fn register(
        &self,
        rig: &Rig,
        users: Arc<Vec<(String, String)>>,
        rate: f64,
    ) -> Result<RegisterResult> {
        let (done, rx) = oneshot::channel();
        rig.batches
            .blocking_send(RegisterBatch { users, rate, done })
            .context("phones task gone")?;
        Ok(rx.blocking_recv()?)
    }

    /// A fresh server in `dir` with `agents`, its database copied from
    /// the template when `leads`.
    #[allow(clippy::too_many_arguments)]
    fn server(
        &self,
        dir: &Path,
        rig: &Rig,
        sip_port: u16,
        agents: &[(String, String)],
        max_cps: Option<f64>,
        leads: bool,
        ring_timeout: f64,
    ) -> Result<Server> {
        std::fs::create_dir_all(dir)?;
        let mut fresh_pg = false;
        let database = match &self.args.postgres {
            None => {
                if leads {
                    if let Some(t) = &self.template {
                        for ext in ["", "-wal", "-shm"] {
                            let from = PathBuf::from(format!("{}{ext}", t.display()));
                            if from.exists() {
                                std::fs::copy(&from, dir.join(format!("powerdial.db{ext}")))?;
                            }
                        }
                    }
                }
                format!("sqlite://{}/powerdial.db", dir.display())
            }
            Some(base) => {
                // One schema per server directory: a restart reuses it.
                let marker = dir.join("pg-schema");
                let schema = match std::fs::read_to_string(&marker) {
                    Ok(s) => s,
                    Err(_) => {
                        let mut made = self.schemas.lock().map_err(|_| anyhow::anyhow!("lock"))?;
                        let s = format!("load_{}_{}", std::process::id(), made.len());
                        server::psql(base, &format!("CREATE SCHEMA {s}"))?;
                        std::fs::write(&marker, &s)?;
                        made.push(s.clone());
                        fresh_pg = true;
                        s
                    }
                };
                server::pg_url(base, &schema)
            }
        };
        let http_port = server::free_port()?;
        let cfg = ServerConfig {
            dir,
            sip_port,
            http_port,
            carrier: rig.carrier_addr,
            ring_timeout,
            max_cps,
            database: &database,
            agents,
        };
        let path = dir.join("powerdial.toml");
        std::fs::write(&path, cfg.toml())?;
        if fresh_pg && leads {
            if let Some(csv) = &self.csv {
                self.run_import(&path, csv, "PostgreSQL")?;
            }
        }
        Server::start(
            &self.bin,
            &path,
            ([127, 0, 0, 1], http_port).into(),
            ([127, 0, 0, 1], sip_port).into(),
            &self.args.log,
        )
    }

    /// `powerdial import-leads` of `csv` with `config`; prints the rate.
    fn run_import(&self, config: &Path, csv: &Path, backend: &str) -> Result<()> {
        let n = if self.args.million {
            1_000_000
        } else {
            self.args.leads
        };
        let t0 = Instant::now();
        let out = std::process::Command::new(&self.bin)
            .args(["import-leads", "--config"])
            .arg(config)
            .arg(csv)
            .env("POWERDIAL_LOG", "warn")
            .output()?;
        let secs = t0.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "import-leads failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!(
            "import: {n} leads through `powerdial import-leads` in {secs:.1} s ({:.0} leads/s, {backend}) [load {}]",
            n as f64 / secs,
            loadavg()
        );
        Ok(())
    }

    /// Imports the leads once into a template database.
    fn import(&mut self, n: u64) -> Result<()> {
        let dir = self.work.join("template");
        std::fs::create_dir_all(&dir)?;
        let csv = dir.join("leads.csv");
        {
            use std::io::Write;
            let mut w = std::io::BufWriter::new(std::fs::File::create(&csv)?);
            writeln!(w, "name,phone")?;
            for i in 0..n {
                // +44 20 7… answers, +44 20 8… only rings (the carrier reads it).
                let ring = self.args.no_answer_every > 0
                    && i % self.args.no_answer_every == self.args.no_answer_every - 1;
                writeln!(w, "Lead {i:07},+4420{}{i:07}", if ring { 8 } else { 7 })?;
            }
        }
        self.csv = Some(csv.clone());
        if self.args.postgres.is_some() {
            // Imported into each trial's schema.
            return Ok(());
        }
        let database = format!("sqlite://{}/powerdial.db", dir.display());
        let cfg = ServerConfig {
            dir: &dir,
            sip_port: 0,
            http_port: 0,
            carrier: ([127, 0, 0, 1], 9).into(),
            ring_timeout: 1.0,
            max_cps: None,
            database: &database,
            agents: &[],
        };
        let path = dir.join("powerdial.toml");
        std::fs::write(&path, cfg.toml())?;
        self.run_import(&path, &csv, "SQLite")?;
        self.template = Some(dir.join("powerdial.db"));
        Ok(())
    }
}

fn users(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| (format!("{prefix}{i:05}"), format!("pw-{prefix}{i:05}")))
        .collect()
}

struct TrialOut {
    clean: bool,
    rate: f64,
    /// Answered calls that reached an agent: the trial produced figures.
    bridged: u64,
}

/// One dialer trial: fresh server, leads, a session with every agent,
/// `secs` of calls at `max_cps`, then the records checked.
fn dialer_trial(
    ctx: &mut Ctx,
    label: &str,
    max_cps: Option<f64>,
    secs: f64,
    hold: f64,
    memory: bool,
) -> Result<TrialOut> {
    let a = &ctx.args;
    let sample_every = a.sample_every;
    let leads = if a.million { 1_000_000 } else { a.leads };
    let n_agents = if memory { a.memory_agents } else { a.agents };
    let ring_timeout = a.ring_timeout;
    let dir = ctx.work.join(label);
    let sip_port = server::free_port()?;
    let rig = ctx.rig(([127, 0, 0, 1], sip_port).into(), ring_timeout, hold)?;
    let agents = users("agent", n_agents);
    let srv = ctx.server(&dir, &rig, sip_port, &agents, max_cps, true, ring_timeout)?;
    let reg = ctx.register(&rig, Arc::new(agents.clone()), 2000.0)?;
    if reg.ok != n_agents as u64 {
        bail!("{label}: only {} of {n_agents} agents registered", reg.ok);
    }
    // RSS (what an operator sees) and, where the server reports it, the
    // heap in use (what the process's own allocations hold: RSS also
    // keeps what the allocator freed but did not give back).
    let settle = |srv: &Server| {
        std::thread::sleep(Duration::from_millis(300));
        (srv.usage().1, srv.heap())
    };
    let (rss0, heap0) = settle(&srv);
    let (code, view) = srv.post(
        "/api/v1/smart-views",
        &json!({"name": "all", "query": "sort:name"}),
    )?;
    if code != 201 {
        bail!("smart view: {code} {view}");
    }
    let t_sess = Instant::now();
    let (code, sess) = srv.post(
        "/api/v1/sessions",
        &json!({"smart_view_id": view["id"], "wrap_up_idle": 0}),
    )?;
    if code != 201 {
        bail!("session: {code} {sess}");
    }
    let session_ms = t_sess.elapsed().as_secs_f64() * 1e3;
    let sid = sess["id"].as_i64().unwrap_or(0);
    let (rss1, heap1) = settle(&srv);
    let drops0 = server::udp_drops(&[rig.ports.as_slice(), &[sip_port]].concat());
    let send_err0 = peers::SEND_ERRORS.load(std::sync::atomic::Ordering::Relaxed);
    let t_join = Instant::now();
    for (u, _) in &agents {
        let (code, body) = srv.post(
            &format!("/api/v1/sessions/{sid}/agents"),
            &json!({"agent": u}),
        )?;
        if !(200..300).contains(&code) {
            bail!("join {u}: {code} {body}");
        }
    }
    // The trial runs from the last join on (RFC 7501: a steady state, not
    // the ramp-up).
    let join_s = t_join.elapsed().as_secs_f64();
    let (cpu0, _) = srv.usage();
    let dcpu0 = server::self_cpu();
    let t0 = Instant::now();
    let t0_ns = peers::now_ns();
    let mut peak_live = 0i64;
    let mut rss_live = 0u64;
    let mut heap_live = None;
    // (s into the trial, INVITEs so far, RSS bytes, open fds)
    let mut samples: Vec<(f64, usize, u64, usize)> = Vec::new();
    let sample = |srv: &Server, at: f64| {
        let n = rig.carrier.lock().map(|c| c.invites.len()).unwrap_or(0);
        let s = (at, n, srv.usage().1, srv.fds());
        println!(
            "  sample t {:>5.0} s · {:>7} calls · RSS {} · {} fds [load {}]",
            s.0,
            s.1,
            mb(s.2 as f64),
            s.3,
            loadavg()
        );
        s
    };
    while t0.elapsed().as_secs_f64() < secs {
        std::thread::sleep(Duration::from_millis(200));
        if sample_every > 0.0 {
            let at = t0.elapsed().as_secs_f64();
            if samples.last().is_none_or(|s| at >= s.0 + sample_every) {
                samples.push(sample(&srv, at));
            }
        }
        let live = rig.carrier.lock().map(|c| c.live).unwrap_or(0);
        if memory && live > peak_live {
            peak_live = live;
            rss_live = srv.usage().1;
            heap_live = srv.heap();
        }
    }
    let t_end_ns = peers::now_ns();
    let (cpu1, _) = srv.usage();
    let dcpu1 = server::self_cpu();
    let secs = t0.elapsed().as_secs_f64();
    for (u, _) in &agents {
        let _ = srv.post(
            &format!("/api/v1/sessions/{sid}/agents/{u}/pause"),
            &json!({}),
        );
    }
    // Drain: every call ended, then the records settle.
    let deadline = Instant::now() + Duration::from_secs_f64(5.0 + hold + ring_timeout);
    while Instant::now() < deadline {
        let (live, ringing) = rig
            .carrier
            .lock()
            .map(|c| (c.live, c.ringing))
            .unwrap_or((0, 0));
        if live <= 0 && ringing <= 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let rss_after = srv.usage().1;
    let heap_after = srv.heap();
    if sample_every > 0.0 {
        samples.push(sample(&srv, t0.elapsed().as_secs_f64()));
        // Every call's last transaction (the BYE's server side, Timer J =
        // 64·T1 on UDP) is over: what is still held is held for good.
        std::thread::sleep(Duration::from_secs(40));
        samples.push(sample(&srv, t0.elapsed().as_secs_f64()));
    }
    let stats = srv.get_json(&format!("/api/v1/sessions/{sid}/stats"))?;
    // The server's own view of the ring timeouts: how late they fired in the
    // process, before the CANCEL went to the wire (`GET /metrics`).
    let metrics_text = srv
        .get("/metrics")
        .ok()
        .filter(|(code, _)| *code == 200)
        .map(|(_, text)| text)
        .unwrap_or_default();
    let ring_late_server =
        server::histogram_buckets(&metrics_text, "powerdial_ring_timeout_late_seconds");
    // Lead RTP that overtook its 200 OK (held for the answer, SPEC §5),
    // and RTP dropped as from unsignalled hosts; absent from servers
    // without the counters.
    let early_rtp = [
        "powerdial_rtp_early_held_packets_total",
        "powerdial_rtp_early_dropped_packets_total",
        "powerdial_rtp_stray_packets_total",
    ]
    .map(|name| server::counter(&metrics_text, name));
    let drops = server::udp_drops(&[rig.ports.as_slice(), &[sip_port]].concat()) - drops0;
    let send_errs = peers::SEND_ERRORS.load(std::sync::atomic::Ordering::Relaxed) - send_err0;
    let c = rig.carrier.lock().map(|c| c.clone()).unwrap_or_default();
    let r = rig.rtp.lock().map(|r| r.clone()).unwrap_or_default();
    let p = rig.phones.lock().map(|p| p.clone()).unwrap_or_default();
    srv.stop();
    drop(rig);

    // The rate over the window from 1 s after the first INVITE to the end.
    let from = t0_ns;
    let in_window = c
        .invites
        .iter()
        .filter(|&&t| t >= from && t <= t_end_ns)
        .count();
    let window_s = t_end_ns.saturating_sub(from) as f64 / 1e9;
    let rate = if window_s > 0.0 {
        in_window as f64 / window_s
    } else {
        0.0
    };
    let outcome = |k: &str| stats["by_outcome"][k].as_u64().unwrap_or(0);
    let total = stats["calls"].as_u64().unwrap_or(0);
    let mut problems = Vec::new();
    let other: u64 = stats["by_outcome"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "answered" | "no_answer"))
                .map(|(_, v)| v.as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    if other > 0 {
        problems.push(format!(
            "{other} records neither answered nor no_answer: {}",
            stats["by_outcome"]
        ));
    }
    if outcome("answered") != c.answered {
        problems.push(format!(
            "{} answered records for {} answered calls",
            outcome("answered"),
            c.answered
        ));
    }
    if outcome("no_answer") != c.cancelled {
        problems.push(format!(
            "{} no_answer records for {} cancelled calls",
            outcome("no_answer"),
            c.cancelled
        ));
    }
    if total != c.invites.len() as u64 {
        problems.push(format!(
            "{total} call records for {} INVITEs",
            c.invites.len()
        ));
    }
    for (what, n) in [
        ("INVITE retransmissions", c.invite_retrans),
        ("BYE retransmissions", c.bye_retrans),
        ("BYEs not answered 2xx", c.bye_failed),
        ("answered calls without ACK (4 s after the hold)", c.no_ack),
        ("lead calls hung up by powerdial", c.bye_from_powerdial),
        ("agent legs hung up", p.byes),
    ] {
        if n > 0 {
            problems.push(format!("{n} {what}"));
        }
    }
    let bridged = r.bridge_ms.len() as u64;
    if bridged < c.answered {
        problems.push(format!(
            "{} answered calls whose lead RTP never reached the agent",
            c.answered - bridged
        ));
    }
    let paced_ok = max_cps.is_none_or(|m| rate >= 0.95 * m);
    let clean = problems.is_empty() && paced_ok && c.answered > 0;
    let calls = in_window.max(1) as f64;
    println!(
        "\n[{label}] {} · trunk max_cps {} · {n_agents} agents · {leads} leads · hold {hold} s · {secs:.1} s [load {}]",
        if ctx.args.postgres.is_some() { "PostgreSQL" } else { "SQLite" },
        max_cps.map_or("unpaced".into(), |m| format!("{m}")),
        loadavg()
    );
    println!(
        "  calls: {} INVITEs ({} answered, {} rang out) · {rate:.0} calls/s in the {window_s:.1} s window after the joins · {}",
        c.invites.len(),
        c.answered,
        c.cancelled,
        if clean {
            "CLEAN".to_string()
        } else if problems.is_empty() {
            format!("NOT CLEAN: below 95 % of {}/s", max_cps.unwrap_or(0.0))
        } else {
            "FAILED".to_string()
        }
    );
    for pr in &problems {
        println!("    failure: {pr}");
    }
    println!(
        "  powerdial CPU: {:.0} % of a core, {:.0} µs per call (in the window) · session create {:.0} ms · {n_agents} joins {join_s:.1} s",
        (cpu1 - cpu0) / secs * 100.0,
        (cpu1 - cpu0) / calls * 1e6,
        session_ms
    );
    println!("  answer → bridge (200 OK sent or lead packet sent if later → first lead RTP at the agent): {}", dist(&r.bridge_ms));
    println!(
        "    200 OK sent → first lead RTP at the agent (includes the carrier's burst cadence): {}",
        dist(&r.answer_to_first_ms)
    );
    println!(
        "  lead RTP: {} sent, {} reached the agents ({:.2} % not, incl. packets before each bridge) · carrier → agent through the relay {} · {} packets back at the carrier · {:.0} packets/s relayed both ways in the window",
        c.rtp_sent,
        r.lead_packets,
        (1.0 - r.lead_packets as f64 / c.rtp_sent.max(1) as f64) * 100.0,
        dist(&r.relay_ms),
        c.rtp_received,
        (r.lead_packets + c.rtp_received) as f64 / secs
    );
    let shown = |v: Option<u64>| v.map_or("n/a".to_string(), |n| n.to_string());
    println!(
        "    in the server: lead RTP held for its answer {} (dropped unjudged {}) · RTP from unsignalled hosts dropped {}",
        shown(early_rtp[0]),
        shown(early_rtp[1]),
        shown(early_rtp[2])
    );
    println!(
        "  ring timeout ({ring_timeout} s) → CANCEL, late by: {}",
        dist(&c.ring_late_ms)
    );
    if !ring_late_server.is_empty() {
        println!(
            "    in the server (deadline → timer fired, cumulative): {}",
            ring_late_server
                .iter()
                .map(|(le, n)| format!("≤{le} s {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    println!(
        "  memory: RSS {} before the session, {} with {leads} leads queued ({:.0} bytes/lead), {} after the calls ended",
        mb(rss0 as f64),
        mb(rss1 as f64),
        (rss1 as f64 - rss0 as f64) / leads as f64,
        mb(rss_after as f64)
    );
    if memory && peak_live > 0 {
        println!(
            "  memory per active call: {peak_live} calls up at once, RSS {} → {:.0} bytes/call (agent leg + lead leg + relay, over the queued-leads RSS); {} held after they ended",
            mb(rss_live as f64),
            (rss_live as f64 - rss1 as f64) / peak_live as f64,
            mb(rss_after as f64 - rss1 as f64)
        );
        if let (Some(h0), Some(h1), Some(hl), Some(ha)) = (heap0, heap1, heap_live, heap_after) {
            println!(
                "  heap in use (the server's /metrics): {} before the session, {} with the leads queued ({:.0} bytes/lead), {} with {peak_live} calls up → {:.0} bytes/call; {} after they ended",
                mb(h0 as f64),
                mb(h1 as f64),
                (h1 as f64 - h0 as f64) / leads as f64,
                mb(hl as f64),
                (hl as f64 - h1 as f64) / peak_live as f64,
                mb(ha as f64)
            );
        }
    }
    if samples.len() >= 4 {
        // The first sample after a minute (warm: caches and pools filled)
        // against the end of the trial, and the quiet server after it.
        let warm = samples.iter().find(|s| s.0 >= 60.0).unwrap_or(&samples[0]);
        let end = samples[samples.len() - 3];
        let quiet = samples[samples.len() - 1];
        let per_1000 = |a: &(f64, usize, u64, usize), b: &(f64, usize, u64, usize)| {
            (b.2 as f64 - a.2 as f64) / ((b.1 as f64 - a.1 as f64).max(1.0) / 1000.0)
        };
        let max_fds = samples.iter().map(|s| s.3).max().unwrap_or(0);
        println!(
            "  soak: RSS {} at {:.0} s ({} calls) → {} at the end ({} calls): {:+.0} bytes per 1,000 calls; {} quiet 40 s later · fds {} → {} (max {max_fds}), {} quiet",
            mb(warm.2 as f64),
            warm.0,
            warm.1,
            mb(end.2 as f64),
            end.1,
            per_1000(warm, &end),
            mb(quiet.2 as f64),
            warm.3,
            end.3,
            quiet.3
        );
    }
    if c.ack_after_hold > 0 {
        println!(
            "  {} ACKs came after the {hold} s hold (the BYE waited for them)",
            c.ack_after_hold
        );
    }
    let dcpu = dcpu1 - dcpu0;
    let behind = c.late_timers > c.timers / 100 || drops > 0 || send_errs > 0;
    println!(
        "  driver: {:.0} % CPU ({:.0} µs per call), timers late >5 ms {}/{} (max {:.1} ms), refused sends {send_errs}, kernel UDP drops {drops}{}",
        dcpu / secs * 100.0,
        dcpu / calls * 1e6,
        c.late_timers,
        c.timers,
        c.max_late_ms,
        if behind { " — THE DRIVER MAY BE THE BOTTLENECK" } else { "" }
    );
    if !clean {
        ctx.failures += 1;
        if !ctx.args.keep && !ctx.args.smoke {
            println!("  (work dir kept: {})", dir.display());
            ctx.args.keep = true;
        }
    }
    Ok(TrialOut {
        clean,
        rate,
        bridged,
    })
}

/// REGISTER steps' result: the highest clean rate, cycles completed and
/// per step (rate, µs of the registrar's CPU per cycle, clean).
type StepsOut = (Option<f64>, u64, Vec<(f64, f64, bool)>);

/// One clean-or-not REGISTER step per rate against the registrar the rig
/// points at; `cpu` reads the registrar's CPU seconds. Returns the highest
/// clean rate, the cycles completed and (rate, µs of CPU per cycle, clean).
fn register_steps(
    ctx: &Ctx,
    rig: &Rig,
    agents: &Arc<Vec<(String, String)>>,
    rates: &[f64],
    sip_port: u16,
    cpu: impl Fn() -> f64,
) -> Result<StepsOut> {
    let n = agents.len();
    let mut rows = Vec::new();
    let mut best = None;
    let mut done = 0;
    for &rate in rates {
        let drops0 = server::udp_drops(&[rig.ports.as_slice(), &[sip_port]].concat());
        let cpu0 = cpu();
        let d0 = server::self_cpu();
        let r = ctx.register(rig, agents.clone(), rate)?;
        let cpu1 = cpu();
        let d1 = server::self_cpu();
        let drops = server::udp_drops(&[rig.ports.as_slice(), &[sip_port]].concat()) - drops0;
        let achieved = r.ok as f64 / r.elapsed_s.max(1e-9);
        done += r.ok;
        let clean = r.failed == 0 && r.retrans == 0 && r.ok == n as u64 && achieved >= 0.95 * rate;
        println!(
            "  {rate:>6.0}/s asked: {achieved:>6.0}/s done, ok {} failed {} retrans {} · cycle {} · registrar {:.0} µs CPU/cycle ({:.0} % of a core) · driver {:.0} µs/cycle, late ticks {}, drops {drops} · {} [load {}]",
            r.ok,
            r.failed,
            r.retrans,
            dist(&r.cycle_ms),
            (cpu1 - cpu0) / r.ok.max(1) as f64 * 1e6,
            (cpu1 - cpu0) / r.elapsed_s * 100.0,
            (d1 - d0) / r.ok.max(1) as f64 * 1e6,
            r.late_sends,
            if clean { "CLEAN" } else { "not clean" },
            loadavg()
        );
        rows.push((rate, (cpu1 - cpu0) / r.ok.max(1) as f64 * 1e6, clean));
        if clean {
            best = Some(rate);
        } else if !ctx.args.all_rates {
            break;
        }
    }
    Ok((best, done, rows))
}

/// The REGISTER steps; returns the cycles completed.
fn register_trials(ctx: &mut Ctx) -> Result<u64> {
    let a = &ctx.args;
    let n = a.register_agents;
    let rates = a.register_rates.clone();
    let dir = ctx.work.join("register");
    let sip_port = server::free_port()?;
    let rig = ctx.rig(([127, 0, 0, 1], sip_port).into(), 1.0, 1.0)?;
    let agents = Arc::new(users("reg", n));
    let srv = ctx.server(&dir, &rig, sip_port, &agents, None, false, 1.0)?;
    let backend = if ctx.args.postgres.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!("\n[register] {backend} · {n} distinct agents per step, MD5 digest (401 → REGISTER with credentials → 200) [load {}]", loadavg());
    let (best, done, rows) =
        register_steps(ctx, &rig, &agents, &rates, sip_port, || srv.usage().0)?;
    // Every binding persisted: restart and read them back.
    let http = srv.http;
    srv.stop();
    let srv = ctx.server(&dir, &rig, sip_port, &agents, None, false, 1.0)?;
    let v = srv.get_json("/api/v1/agents")?;
    let registered = v["data"]
        .as_array()
        .map(|a| a.iter().filter(|x| x["registered"] == true).count())
        .unwrap_or(0);
    let _ = http;
    srv.stop();
    println!(
        "  highest clean rate: {} · after a restart {registered} of {n} agents registered (bindings persisted){}",
        best.map_or("none".into(), |b| format!("{b:.0} cycles/s")),
        if registered == n { "" } else { " — BINDINGS LOST" }
    );
    if registered != n || best.is_none() {
        ctx.failures += 1;
    }
    if let Some(cfg) = ctx.args.peer_kamailio.clone() {
        kamailio_steps(ctx, &cfg, &agents, &rates, best, &rows)?;
    }
    Ok(done)
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.smoke {
        args.leads = 400;
        args.million = false;
        args.agents = 20;
        args.rates = vec![20.0];
        args.trial = 3.0;
        args.hold = 0.05;
        args.ring_timeout = 0.3;
        args.no_answer_every = 10;
        args.memory_hold = 0.0;
        args.memory_agents = 20;
        args.register_agents = 200;
        args.register_rates = vec![500.0];
    }
    let bin = match &args.powerdial {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("powerdial"))
            .context("no directory of this binary")?,
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it (`cargo build --release --bin powerdial`) or pass --powerdial",
            bin.display()
        );
    }
    let work = std::env::temp_dir().join(format!("powerdial-load-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    peers::now_ns();
    let mut ctx = Ctx {
        args,
        bin,
        work,
        rt,
        template: None,
        failures: 0,
        dialer_best: None,
        csv: None,
        schemas: Mutex::new(Vec::new()),
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    println!(
        "powerdial-load: {} ({} CPUs: {cpu}) [load {}]",
        ctx.bin.display(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        loadavg()
    );
    let only = ctx.args.only.clone();
    let mut produced: Vec<&str> = Vec::new();
    if only.iter().any(|o| o == "calls" || o == "memory") {
        let leads = if ctx.args.million {
            1_000_000
        } else {
            ctx.args.leads
        };
        ctx.import(leads)?;
    }
    if only.iter().any(|o| o == "calls") {
        let mut best: Option<(f64, f64)> = None;
        for rate in ctx.args.rates.clone() {
            let max = (rate > 0.0).then_some(rate);
            let label = format!("calls-{}", max.map_or("unpaced".into(), |m| format!("{m}")));
            let (trial, hold) = (ctx.args.trial, ctx.args.hold);
            let out = dialer_trial(&mut ctx, &label, max, trial, hold, false)?;
            if out.bridged > 0 {
                produced.push("calls");
            }
            if out.clean {
                if best.is_none_or(|(_, r)| out.rate > r) {
                    best = Some((rate, out.rate));
                }
            } else if !ctx.args.all_rates && max.is_some() {
                // RFC 7502: the highest clean step; still run unpaced last.
                if let Some(&last) = ctx.args.rates.last() {
                    if last == 0.0 && rate != 0.0 {
                        let out =
                            dialer_trial(&mut ctx, "calls-unpaced", None, trial, hold, false)?;
                        if out.clean && best.is_none_or(|(_, r)| out.rate > r) {
                            best = Some((0.0, out.rate));
                        }
                    }
                }
                break;
            }
        }
        println!(
            "\nwhole dialer path: highest clean trial {}",
            best.map_or("none".into(), |(m, r)| format!(
                "{r:.0} calls/s (trunk max_cps {})",
                if m > 0.0 {
                    format!("{m}")
                } else {
                    "unpaced".into()
                }
            ))
        );
        ctx.dialer_best = best.map(|(_, r)| r);
        if let Some(cfg) = ctx.args.peer_kamailio_proxy.clone() {
            kamailio_proxy_steps(&ctx, &cfg)?;
        }
    }
    if only.iter().any(|o| o == "memory") && ctx.args.memory_hold > 0.0 {
        let hold = ctx.args.memory_hold;
        let secs = hold + 2.0;
        if dialer_trial(&mut ctx, "memory", None, secs, hold, true)?.bridged > 0 {
            produced.push("memory");
        }
    }
    if only.iter().any(|o| o == "register")
        && !ctx.args.register_rates.is_empty()
        && register_trials(&mut ctx)? > 0
    {
        produced.push("register");
    }
    if let (Some(base), Ok(made)) = (&ctx.args.postgres, ctx.schemas.lock()) {
        for schema in made.iter() {
            let _ = server::psql(base, &format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    }
    if !ctx.args.keep {
        let _ = std::fs::remove_dir_all(&ctx.work);
    } else {
        println!("work dir: {}", ctx.work.display());
    }
    // Smoke (CI): it ran and produced figures; the figures themselves
    // (and clean trials) are not asserted on a shared CI machine.
    let missing: Vec<&String> = only
        .iter()
        .filter(|o| matches!(o.as_str(), "calls" | "register") && !produced.contains(&o.as_str()))
        .collect();
    if !missing.is_empty() {
        bail!("no figures produced for {missing:?}");
    }
    println!(
        "\nfigures produced: {produced:?}; {} unclean trial(s)",
        ctx.failures
    );
    Ok(())
}

/// Starts Kamailio with `cfg` on a free port (tuned as PEERS.md says).
fn start_kamailio(ctx: &Ctx, cfg: &Path, name: &str) -> Result<(std::process::Child, u16)> {
    let port = server::free_port()?;
    let dir = ctx.work.join(name);
    std::fs::create_dir_all(&dir)?;
    let log = std::fs::File::create(dir.join("kamailio.log"))?;
    let mut child = std::process::Command::new("kamailio")
        .args(["-DD", "-E", "-f"])
        .arg(cfg)
        .args(["-l", &format!("udp:127.0.0.1:{port}"), "-Y"])
        .arg(&dir)
        .arg("-P")
        .arg(dir.join("kamailio.pid"))
        .args(["-m", "1024", "-M", "32", "-x", "tlsf", "-X", "fm", "-w"])
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting kamailio (apt-get install kamailio)")?;
    std::thread::sleep(Duration::from_millis(1500));
    if let Ok(Some(st)) = child.try_wait() {
        bail!("kamailio exited: {st}; log in {}", dir.display());
    }
    Ok((child, port))
}

/// The same REGISTER steps against Kamailio (tuned as PEERS.md says), and
/// the ratios to powerdial's.
fn kamailio_steps(
    ctx: &Ctx,
    cfg: &Path,
    agents: &Arc<Vec<(String, String)>>,
    rates: &[f64],
    pd_best: Option<f64>,
    pd_rows: &[(f64, f64, bool)],
) -> Result<()> {
    let (mut child, port) = start_kamailio(ctx, cfg, "kamailio")?;
    let pid = child.id();
    let rig = ctx.rig(([127, 0, 0, 1], port).into(), 1.0, 1.0)?;
    println!("\n[register, Kamailio 5.6 peer] the same steps against pv_www_authenticate + usrloc (memory) [load {}]", loadavg());
    let result = register_steps(ctx, &rig, agents, rates, port, || server::tree_cpu(pid));
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let (k_best, _, k_rows) = result?;
    println!(
        "  highest clean rate: powerdial {} vs Kamailio {}{}",
        pd_best.map_or("none".into(), |b| format!("{b:.0}/s")),
        k_best.map_or("none".into(), |b| format!("{b:.0}/s")),
        match (pd_best, k_best) {
            (Some(p), Some(k)) => format!(" → ratio {:.2}×", p / k),
            _ => String::new(),
        }
    );
    for (rate, k_us, _) in &k_rows {
        if let Some((_, p_us, _)) = pd_rows.iter().find(|(r, ..)| r == rate) {
            println!("  at {rate:.0}/s: CPU per cycle powerdial {p_us:.0} µs vs Kamailio {k_us:.0} µs → {:.2}×", p_us / k_us);
        }
    }
    Ok(())
}

/// Paced calls (INVITE → 180/200 → ACK → the carrier's BYE after the hold)
/// through Kamailio's stateful proxy to the driver's carrier, stepped like
/// the dialer trials; the ratio is the dialer path's best over Kamailio's.
fn kamailio_proxy_steps(ctx: &Ctx, cfg: &Path) -> Result<()> {
    let (mut child, port) = start_kamailio(ctx, cfg, "kamailio-proxy")?;
    let pid = child.id();
    let proxy: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    // Kamailio relays no media: the carrier sends none, so the driver's
    // media costs nothing here.
    let rig = ctx.rig_with(proxy, ctx.args.ring_timeout, ctx.args.hold, false)?;
    let (tx, rx) = mpsc::channel(2);
    let task = {
        let _g = ctx.rt.enter();
        let sock = peers::udp(0)?;
        ctx.rt
            .spawn(peers::caller(sock, proxy, rig.carrier_addr, rx))
    };
    let secs = ctx.args.trial.min(5.0);
    println!(
        "\n[call setup, Kamailio 5.6 stateful proxy peer] INVITE/200/ACK/BYE through t_relay() with record-routing to the same carrier, hold {} s, {secs} s per step [load {}]",
        ctx.args.hold,
        loadavg()
    );
    let mut best = None;
    let snap = |rig: &Rig| rig.carrier.lock().map(|c| c.clone()).unwrap_or_default();
    for &rate in &ctx.args.proxy_rates {
        let calls = (rate * secs) as usize;
        let c0 = snap(&rig);
        let cpu0 = server::tree_cpu(pid);
        let d0 = server::self_cpu();
        let drops0 = server::udp_drops(&[rig.ports.as_slice(), &[port]].concat());
        let (done, wait) = oneshot::channel();
        tx.blocking_send(peers::CallBatch { calls, rate, done })?;
        let r = wait.blocking_recv()?;
        std::thread::sleep(Duration::from_millis(200));
        let c1 = snap(&rig);
        let cpu1 = server::tree_cpu(pid);
        let d1 = server::self_cpu();
        let drops = server::udp_drops(&[rig.ports.as_slice(), &[port]].concat()) - drops0;
        let achieved = r.ok as f64 / r.elapsed_s.max(1e-9);
        let carrier_bad = (c1.invite_retrans - c0.invite_retrans)
            + (c1.bye_retrans - c0.bye_retrans)
            + (c1.bye_failed - c0.bye_failed)
            + (c1.no_ack - c0.no_ack);
        let clean = r.failed == 0
            && r.retrans == 0
            && carrier_bad == 0
            && r.ok == calls as u64
            && achieved >= 0.95 * rate;
        println!(
            "  {rate:>6.0}/s asked: {achieved:>6.0}/s done, ok {} failed {} retrans {} (carrier side {carrier_bad}) · setup {} · Kamailio {:.0} µs CPU/call ({:.0} % of a core) · driver {:.0} µs/call, late ticks {}, drops {drops} · {} [load {}]",
            r.ok,
            r.failed,
            r.retrans,
            dist(&r.setup_ms),
            (cpu1 - cpu0) / r.ok.max(1) as f64 * 1e6,
            (cpu1 - cpu0) / r.elapsed_s * 100.0,
            (d1 - d0) / r.ok.max(1) as f64 * 1e6,
            r.late_ticks,
            if clean { "CLEAN" } else { "not clean" },
            loadavg()
        );
        if clean {
            best = Some(rate);
        } else if !ctx.args.all_rates {
            break;
        }
    }
    task.abort();
    drop(rig);
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    println!(
        "  highest clean rate: powerdial's whole dialer path {} vs Kamailio's stateful proxy {}{}",
        ctx.dialer_best
            .map_or("none".into(), |b| format!("{b:.0} calls/s")),
        best.map_or("none".into(), |b| format!("{b:.0} calls/s")),
        match (ctx.dialer_best, best) {
            (Some(p), Some(k)) => format!(" → ratio {:.2}×", p / k),
            _ => String::new(),
        }
    );
    Ok(())
}
