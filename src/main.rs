//! `praetor`: PostgreSQL high availability in one binary.
//!
//! - `praetor agent -c node.yml`: the HA agent of one PostgreSQL node (Patroni's `patroni node.yml`).
//! - `praetor proxy -c proxy.yml`: the DCS-aware PostgreSQL proxy (read-write and read-only ports).
//! - `praetor ctl ...`: the operator CLI (Patroni's `patronictl`).
//! - `praetor demo`: a three-node cluster with etcd and the proxy on this machine.
//!
//! This file only parses arguments, loads configuration and calls the crates; exit code 2 means the
//! configuration (or the command line) is unusable and nothing was started.

mod ctl;
mod demo;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "praetor",
    version,
    about = "PostgreSQL high availability: HA agent, DCS-aware proxy and operator CLI (Patroni-compatible)",
    long_about = "Praetor keeps a PostgreSQL cluster available: one agent per node holds or watches the leader \
lock in etcd, bootstraps, clones, fails over and rewinds; the proxy routes applications to the leader \
and the replicas; ctl is the operator's tool. Configuration files use Patroni's YAML keys."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HA agent for the PostgreSQL node described by a Patroni-compatible YAML file.
    ///
    /// The agent bootstraps the cluster or clones from the leader, holds or watches the leader lock,
    /// fails over, switches over, rewinds, and serves the REST API on restapi.listen. SIGTERM stops
    /// PostgreSQL cleanly and hands the lock over. Exit code 2: bad configuration (nothing started).
    Agent {
        /// Configuration file (Patroni's patroni.yml format).
        #[arg(
            short = 'c',
            long = "config",
            value_name = "FILE",
            env = "PRAETOR_CONFIG_FILE"
        )]
        config: Option<PathBuf>,
        /// Configuration file, as a positional argument (`praetor agent /etc/patroni.yml`).
        #[arg(value_name = "CONFIG", conflicts_with = "config")]
        config_file: Option<PathBuf>,
        /// Only check the configuration, print warnings, and exit (0 when usable, 2 otherwise).
        #[arg(long)]
        validate_config: bool,
    },
    /// Run the proxy: a read-write port routed to the leader, a read-only port balanced over replicas.
    ///
    /// The proxy watches the DCS named in the file (etcd3 section and scope) and listens where
    /// praetor.proxy.{read_write,read_only,metrics}.listen say. When the leader changes, connections
    /// to the former leader are closed at once. SIGTERM drains and stops.
    Proxy {
        /// Configuration file with scope, namespace, etcd3 and praetor.proxy.
        #[arg(short = 'c', long = "config", value_name = "FILE")]
        config: PathBuf,
    },
    /// Operate a cluster: list its members, switch over (like patronictl).
    Ctl(ctl::CtlArgs),
    /// Start a three-node demo cluster (etcd, three agents with PostgreSQL, the proxy) under a
    /// temporary directory on 127.0.0.1, print how to connect, and stop everything on Ctrl-C.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("praetor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Agent {
                config,
                config_file,
                validate_config,
            } => {
                let Some(path) = config.or(config_file) else {
                    return Err(config_err(
                        "give the configuration file: praetor agent -c FILE",
                    ));
                };
                let loaded = load_config(&path)?;
                let settings = loaded
                    .config
                    .validate_agent()
                    .map_err(|e| config_err(format!("{}: {e}", path.display())))?;
                if validate_config {
                    for w in &loaded.warnings {
                        eprintln!("warning: {}: {w}", path.display());
                    }
                    println!("{}: configuration is valid", path.display());
                    return Ok(());
                }
                init_logging(loaded.config.log.level.as_deref());
                for w in &loaded.warnings {
                    tracing::warn!("{}: {w}", path.display());
                }
                let span =
                    tracing::info_span!("agent", scope = %settings.scope, member = %settings.name);
                let _entered = span.enter();
                let shutdown = shutdown_on_signals();
                praetor_agent::runner::run(loaded.config, shutdown)
                    .await
                    .map_err(Failure::Other)
            }
            Command::Proxy { config } => {
                let loaded = load_config(&config)?;
                let proxy_cfg = loaded
                    .config
                    .validate_proxy()
                    .map_err(|e| config_err(format!("{}: {e}", config.display())))?;
                let (scope, endpoints) = loaded
                    .config
                    .validate_dcs_client()
                    .map_err(|e| config_err(format!("{}: {e}", config.display())))?;
                let settings = praetor_proxy::ProxySettings::from_config(&proxy_cfg)
                    .map_err(|e| config_err(format!("{}: {e}", config.display())))?;
                init_logging(loaded.config.log.level.as_deref());
                for w in &loaded.warnings {
                    tracing::warn!("{}: {w}", config.display());
                }
                run_proxy(settings, scope, loaded.config.namespace(), endpoints)
                    .await
                    .map_err(Failure::Other)
            }
            Command::Ctl(args) => {
                init_logging(Some("warn"));
                ctl::run(args).await
            }
            Command::Demo(args) => {
                init_logging(Some("warn"));
                demo::run(args).await.map_err(Failure::Other)
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("praetor: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("praetor: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Why the command failed: configuration/usage (exit 2, nothing started) or anything else (exit 1).
pub enum Failure {
    /// Bad configuration or command line.
    Config(String),
    /// A runtime failure.
    Other(anyhow::Error),
}

/// A [`Failure::Config`] with this message.
pub fn config_err(msg: impl Into<String>) -> Failure {
    Failure::Config(msg.into())
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// Loads a configuration file; warnings are returned, errors become [`Failure::Config`] naming the
/// file and the key path.
pub fn load_config(path: &std::path::Path) -> Result<praetor_config::Loaded, Failure> {
    praetor_config::load_file(path).map_err(|e| match e {
        praetor_config::ConfigError::Io { .. } => Failure::Config(e.to_string()),
        other => Failure::Config(format!("{}: {other}", path.display())),
    })
}

fn init_logging(level: Option<&str>) {
    let default = match level.map(|l| l.to_ascii_lowercase()) {
        Some(l) if l == "warning" => "warn".to_string(),
        Some(l) if l == "critical" => "error".to_string(),
        Some(l) => l,
        None => "info".to_string(),
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A token cancelled on SIGTERM or SIGINT (only `main` installs signal handlers). SIGHUP is logged:
/// configuration reload is not implemented yet, restart the agent to apply local changes.
fn shutdown_on_signals() -> CancellationToken {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        ) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received"); break }
                _ = int.recv() => { tracing::info!("SIGINT received"); break }
                _ = hup.recv() => {
                    tracing::warn!("SIGHUP received: configuration reload is not supported yet; restart to apply local changes");
                }
            }
        }
        t.cancel();
    });
    token
}

async fn run_proxy(
    settings: praetor_proxy::ProxySettings,
    scope: String,
    namespace: String,
    endpoints: praetor_config::DcsEndpoints,
) -> anyhow::Result<()> {
    let identity = praetor_dcs::DcsIdentity {
        namespace,
        scope: scope.clone(),
        member: None,
        ttl_secs: 30,
        request_timeout_secs: 3,
    };
    let dcs = praetor_dcs::connect(&endpoints, identity)
        .await
        .context("cannot open the DCS")?;
    let proxy = praetor_proxy::Proxy::bind(settings).await?;
    tracing::info!(
        scope = %scope,
        read_write = ?proxy.rw_addr(),
        read_only = ?proxy.ro_addr(),
        metrics = ?proxy.metrics_addr(),
        "proxy listening"
    );
    let shutdown = shutdown_on_signals();
    let feed = praetor_proxy::spawn_dcs_feed(dcs, shutdown.clone());
    proxy.serve(feed, shutdown).await?;
    Ok(())
}
