//! The `powerdial` command: `serve`, `check-config`, `import-leads`.
//! `anyhow` lives here only; the library's errors are typed.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use powerdial::config::Config;

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
