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
    },
    /// Validate a config file; errors point at the file, line and key.
    CheckConfig {
        /// The TOML config file to check.
        file: PathBuf,
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
        Command::Serve { config } => {
            init_logging();
            let config = load_config(config.as_ref())?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            runtime.block_on(powerdial::server::run(config))?;
            Ok(())
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
