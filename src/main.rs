//! The `powerdial` command: `serve`, `check-config`, `import-leads`.
//! `anyhow` lives here only; the library's errors are typed.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use powerdial::config::Config;

/// jemalloc (through TiKV's `tikv-jemallocator`) is the server's
/// allocator, in this binary only: the library, its tests, the load driver
/// and the fuzz targets keep the system's.
///
/// Why: the REGISTER path (SPEC §6, REGISTER with digest beside Kamailio)
/// allocates and frees a few dozen small blocks per cycle (the datagram,
/// parsed headers, the digest, the reply, the binding), and under glibc's
/// malloc `malloc`/`free` were about a quarter of the process's CPU in
/// `perf` at 12,000 cycles/s. jemalloc's per-thread caches and size-class
/// slabs serve them in fewer instructions and without the arena locks a
/// block freed on another worker thread takes in glibc. BENCHMARKS.md has
/// the CPU per REGISTER cycle and the memory per call and per lead under
/// each allocator.
///
/// Chosen over mimalloc for its track record in long-running servers
/// (TiKV, Redis's default) and its statistics API, which the heap gauge
/// reads ([`jemalloc_heap_in_use`]); it builds from its vendored C tree
/// with make and the C compiler. Not on MSVC, which jemalloc does not
/// build on.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options (read before `main`, under the prefix
/// tikv-jemalloc-sys gives its symbols; the operator's `_RJEM_MALLOC_CONF`
/// is read after and wins). Chosen by the memory rows of SPEC §6
/// (`powerdial-load --only memory`, BENCHMARKS.md):
/// - `percpu_arena:percpu`: one arena per CPU, picked by the CPU a thread
///   runs on. jemalloc's default is 4 arenas per CPU, and each worker,
///   relay and database thread then keeps its own partly used pages: RSS
///   per active call was 25–27 KB against glibc's 16–23 KB. One per CPU
///   is what the glibc cap ([`powerdial::allocator::limit_arenas`]) does,
///   and it follows the machine; the thread caches still take most
///   allocations without an arena's lock.
/// - `dirty_decay_ms:1000,muzzy_decay_ms:0`: pages freed after a burst of
///   call set-ups go back to the kernel within a second (default 10 s),
///   so the RSS an operator sees follows the calls up.
#[cfg(not(target_env = "msvc"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 57] = b"percpu_arena:percpu,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

/// Bytes jemalloc has handed out and not had back (`stats.allocated`),
/// after advancing its `epoch` so the cached statistics are refreshed;
/// `None` if jemalloc refuses either read. The heap gauge of `/metrics`
/// (SPEC §6 memory per call) reads it at each scrape.
#[cfg(not(target_env = "msvc"))]
fn jemalloc_heap_in_use() -> Option<u64> {
    use tikv_jemalloc_ctl::{epoch, stats};
    epoch::advance().ok()?;
    stats::allocated::read().ok().map(|b| b as u64)
}

/// powerdial — a SIP-native power dialer server.
#[derive(Parser)]
#[command(name = "powerdial", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (SIP registrar and dialer, HTTP API). Without --config
    /// it starts on embedded defaults: SQLite under data/, SIP on
    /// 127.0.0.1:5060 UDP+TCP, HTTP on 127.0.0.1:8080.
    Serve {
        /// A TOML config file (see sip-config/powerdial.toml).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Dial through the built-in demo trunk when no [[trunk]] is
        /// configured: a carrier inside powerdial whose "leads" ring,
        /// answer and talk (numbers ending 0-5), are busy (6-7), do not
        /// answer (8) or fail (9), so a session can be watched with one
        /// softphone and no carrier account.
        #[arg(long)]
        demo: bool,
    },
    /// Validate a config file; errors point at the file, line and key.
    CheckConfig {
        /// The TOML config file to check.
        file: PathBuf,
    },
    /// Import leads from a CSV file into the configured database.
    ///
    /// The header row names the columns: name, status, contact (or
    /// contact_name), phone / phones / phone2…, custom.NAME, created. Bad
    /// rows are reported by line and do not stop the good ones.
    ImportLeads {
        /// The CSV file.
        file: PathBuf,
        /// A TOML config file (for the database URL and default region).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    Ok(match path {
        Some(p) => Config::load(p)?,
        None => Config::from_env()?,
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POWERDIAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config, demo } => {
            // Before any thread starts (SPEC §6 memory per active call).
            let arenas = powerdial::allocator::limit_arenas();
            #[cfg(not(target_env = "msvc"))]
            powerdial::allocator::set_heap_probe(jemalloc_heap_in_use);
            init_logging();
            if let Some(n) = arenas {
                tracing::debug!(arenas = n, "malloc arenas capped");
            }
            let mut config = load_config(config.as_ref())?;
            if demo && config.trunks.is_empty() {
                config.trunks.push(powerdial::config::TrunkConfig::new(
                    "demo",
                    powerdial::call::demo::DEMO_URI,
                    "+15550100000",
                ));
            }
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(powerdial::server::run(config))?;
            Ok(())
        }
        Command::ImportLeads { file, config } => {
            let config = load_config(config.as_ref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(import_leads(&config, &file))
        }
        Command::CheckConfig { file } => {
            let config = Config::load(&file)?;
            println!(
                "{}: OK ({} agent(s), {} trunk(s), database {})",
                file.display(),
                config.agents.len(),
                config.trunks.len(),
                powerdial::server::redacted(&config.database_url)
            );
            Ok(())
        }
    }
}

#[allow(clippy::disallowed_methods)] // the CLI is a driver: it reads the clock for progress.
async fn import_leads(config: &Config, file: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    if let Some(dir) = config
        .database_url
        .strip_prefix("sqlite://")
        .and_then(|p| std::path::Path::new(p).parent())
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let store = powerdial::store::connect(&config.database_url)
        .await
        .with_context(|| {
            format!(
                "opening the database {}",
                powerdial::server::redacted(&config.database_url)
            )
        })?;
    let started = std::time::Instant::now();
    let mut last_print = started;
    let report = powerdial::leads::import_csv_file(&store, file, &config.default_region, |rows| {
        let now = std::time::Instant::now();
        if now.duration_since(last_print).as_millis() >= 500 {
            last_print = now;
            let rate = rows as f64 / now.duration_since(started).as_secs_f64().max(0.001);
            eprint!(
                "\rimporting {}: {rows} rows ({rate:.0} rows/s)   ",
                file.display()
            );
            let _ = std::io::stderr().flush();
        }
    })
    .await
    .with_context(|| format!("importing {}", file.display()))?;
    eprintln!();
    for f in &report.failed {
        eprintln!("{}:{}: {}", file.display(), f.line, f.reason);
    }
    if report.failed_total > report.failed.len() as u64 {
        eprintln!(
            "… and {} more failed rows",
            report.failed_total - report.failed.len() as u64
        );
    }
    println!(
        "imported {} leads, {} rows failed, in {:.1} s",
        report.imported,
        report.failed_total,
        started.elapsed().as_secs_f64()
    );
    store.close().await;
    Ok(())
}

#[cfg(all(test, not(target_env = "msvc")))]
mod tests {
    use super::*;

    /// Held by each test here that allocates a large block and reads the
    /// process-wide heap figure: run in parallel, one test's block would
    /// show in (or vanish from) the other's reading.
    static HEAP_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// jemalloc is this binary's allocator and its figure follows it: a
    /// live 64 MiB block shows in it, and is gone from it once freed (16 MiB
    /// of slack for what the other tests of this process allocate
    /// meanwhile). Under glibc's malloc, jemalloc's `stats.allocated` would
    /// not move.
    #[test]
    fn the_heap_figure_is_jemallocs() {
        const BLOCK: u64 = 64 << 20;
        const SLACK: u64 = 16 << 20;
        let _alone = HEAP_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let before = jemalloc_heap_in_use().unwrap();
        let block = std::hint::black_box(vec![0u8; BLOCK as usize]);
        let during = jemalloc_heap_in_use().unwrap();
        assert!(during + SLACK >= before + BLOCK, "{before} → {during}");
        drop(block);
        let after = jemalloc_heap_in_use().unwrap();
        assert!(after + BLOCK <= during + SLACK, "{during} → {after}");
    }

    /// The start-up options are jemalloc's own (the exported symbol has
    /// the name tikv-jemalloc-sys reads): without them its defaults, 10 s
    /// of dirty-page decay and 4 arenas per CPU, would be in force.
    #[test]
    fn the_malloc_conf_is_in_force() {
        // SAFETY: the names are NUL-terminated and the types are the
        // ones jemalloc documents for them (ssize_t, const char *).
        let decay: isize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.dirty_decay_ms\0") }.unwrap();
        assert_eq!(decay, 1000);
        let muzzy: isize =
            unsafe { tikv_jemalloc_ctl::raw::read(b"opt.muzzy_decay_ms\0") }.unwrap();
        assert_eq!(muzzy, 0);
        let percpu: &'static [u8] =
            unsafe { tikv_jemalloc_ctl::raw::read_str(b"opt.percpu_arena\0") }.unwrap();
        assert_eq!(percpu, b"percpu\0");
    }

    /// Once set, the library's heap gauge reads jemalloc's figure.
    #[test]
    fn the_library_reads_the_probe() {
        let _alone = HEAP_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        powerdial::allocator::set_heap_probe(jemalloc_heap_in_use);
        let block = std::hint::black_box(vec![0u8; 32 << 20]);
        let seen = powerdial::allocator::heap_in_use_bytes().unwrap();
        assert!(seen >= 32 << 20, "{seen}");
        drop(block);
    }
}
