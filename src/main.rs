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
        /// Threads relaying client traffic, each serving its share of the client sessions on a
        /// single-threaded event loop (default: 1). A proxy host with cores to spare and more
        /// traffic than one core relays may run one per CPU.
        ///
        /// Why one by default: the CPU per transaction (user + system). A relayed round trip is
        /// two reads and two writes (system calls either way) and one `epoll_wait` per wake-up;
        /// one thread gathers more ready sockets per wake-up than two on the same traffic.
        /// pgbench -S -c 8 through the read-write port (`perf stat -p`, a loaded 2-CPU machine):
        /// one thread 5.14 system calls and 0.84 context switches per transaction, 34-38 µs of
        /// CPU; two threads 5.53 and 1.60, 43-44 µs; PgBouncer (one thread) 5.16-5.27 and
        /// 1.28-1.40, 32-37 µs.
        #[arg(long, value_name = "N", env = "PRAETOR_PROXY_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
        threads: Option<u16>,
    },
    /// Operate a cluster like patronictl: list, topology, switchover, failover, edit-config,
    /// show-config, restart, reload, reinit, remove, pause, resume, history, query, dsn, flush,
    /// version.
    Ctl(ctl::CtlArgs),
    /// Start a three-node demo cluster (etcd, three agents with PostgreSQL, the proxy) under a
    /// temporary directory on 127.0.0.1, print how to connect, and stop everything on Ctrl-C.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Everything but the proxy's client sessions waits on I/O and needs little CPU; the sessions
    // get threads of their own (`--threads`, see Proxy::with_workers).
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
                // The PostgreSQL version is part of what makes the configuration usable: an
                // unsupported one is refused here, exit 2, before the data directory is touched.
                let version =
                    praetor_agent::runner::check_server_version(&loaded.config, &settings)
                        .map_err(|e| config_err(format!("{}: {e}", path.display())))?;
                if validate_config {
                    for w in &loaded.warnings {
                        eprintln!("warning: {}: {w}", path.display());
                    }
                    if let Some(w) = &version.warning {
                        eprintln!("warning: {}: {w}", path.display());
                    }
                    println!("{}: configuration is valid", path.display());
                    return Ok(());
                }
                let logging = init_logging(&loaded.config.log, "praetor.log")?;
                for w in &loaded.warnings {
                    tracing::warn!("{}: {w}", path.display());
                }
                let span =
                    tracing::info_span!("agent", scope = %settings.scope, member = %settings.name);
                let _entered = span.enter();
                // SIGHUP wakes the loop, which re-reads the file and applies what changed (as
                // `POST /reload` does).
                let hup = std::sync::Arc::new(tokio::sync::Notify::new());
                let notify = hup.clone();
                let shutdown = shutdown_on_signals(Some(Box::new(move || notify.notify_one())));
                let filter = logging.filter;
                let reload = praetor_agent::runner::ReloadSource {
                    path,
                    hup,
                    set_log_level: Box::new(move |directive| {
                        filter
                            .reload(EnvFilter::new(directive))
                            .map_err(|e| e.to_string())
                    }),
                };
                praetor_agent::runner::run_with(loaded.config, shutdown, Some(reload))
                    .await
                    .map_err(Failure::Other)
            }
            Command::Proxy { config, threads } => {
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
                let logging = init_logging(&loaded.config.log, "praetor-proxy.log")?;
                for w in &loaded.warnings {
                    tracing::warn!("{}: {w}", config.display());
                }
                let on_hup = reload_log_level(logging, config.clone());
                let threads = threads.map_or(1, usize::from);
                run_proxy(
                    settings,
                    threads,
                    scope,
                    loaded.config.namespace(),
                    endpoints,
                    on_hup,
                    config,
                )
                .await
                .map_err(Failure::Other)
            }
            Command::Ctl(args) => {
                quiet_logging();
                ctl::run(args).await
            }
            Command::Demo(args) => {
                quiet_logging();
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

/// The installed logger; its level can be changed while running (SIGHUP).
struct Logging {
    filter: tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>,
}

/// Installs the logger of `log.{level,format,dir}`: level from `log.level`, else `RUST_LOG`, else
/// info; text or JSON lines; to stderr, or appended to `<log.dir>/<file>`. Errors (exit 2): an
/// unknown level or format, a directory that cannot be written.
fn init_logging(log: &praetor_config::Log, file: &str) -> Result<Logging, Failure> {
    use tracing_subscriber::prelude::*;
    let filter = match &log.level {
        Some(_) => EnvFilter::new(
            log.filter_directive()
                .map_err(|e| config_err(e.to_string()))?,
        ),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let format = log.line_format().map_err(|e| config_err(e.to_string()))?;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let writer = match &log.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .map_err(|e| config_err(format!("log.dir: {}: {e}", dir.display())))?;
            let path = dir.join(file);
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| config_err(format!("log.dir: {}: {e}", path.display())))?;
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::sync::Mutex::new(f))
        }
        None => tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr),
    };
    let ansi = log.dir.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt_layer = match format {
        praetor_config::LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(writer)
            .boxed(),
        praetor_config::LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
    };
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt_layer)
        .try_init();
    Ok(Logging { filter: handle })
}

/// Warnings and errors only, to stderr (ctl, demo).
fn quiet_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .try_init();
}

/// What SIGHUP does to the proxy: read `path` again and apply its `log.level` (the agent's loop
/// re-reads its own file, see `praetor_agent::runner::ReloadSource`).
fn reload_log_level(logging: Logging, path: PathBuf) -> Box<dyn Fn() + Send> {
    Box::new(move || {
        let loaded = match praetor_config::load_file(&path) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(
                    "SIGHUP: cannot read {}: {e}; nothing changed",
                    path.display()
                );
                return;
            }
        };
        let directive = match loaded.config.log.filter_directive() {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("SIGHUP: {}: {e}; log level unchanged", path.display());
                return;
            }
        };
        match logging.filter.reload(EnvFilter::new(&directive)) {
            Ok(()) => tracing::warn!("SIGHUP: log level is now {directive}"),
            Err(e) => tracing::warn!("SIGHUP: cannot change the log level: {e}"),
        }
    })
}

/// A token cancelled on SIGTERM or SIGINT (only `main` installs signal handlers); SIGHUP calls
/// `on_hup` (the agent: wake its loop to re-read the configuration file; the proxy: reload).
fn shutdown_on_signals(on_hup: Option<Box<dyn Fn() + Send>>) -> CancellationToken {
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
                _ = term.recv() => { tracing::info!("SIGTERM received"); notify_systemd(sd_notify::NotifyState::Stopping); break }
                _ = int.recv() => { tracing::info!("SIGINT received"); notify_systemd(sd_notify::NotifyState::Stopping); break }
                _ = hup.recv() => match &on_hup {
                    Some(f) => f(),
                    None => tracing::info!("SIGHUP received: nothing to reload"),
                },
            }
        }
        t.cancel();
    });
    token
}

/// Tells systemd (`Type=notify` units, `NOTIFY_SOCKET`) about a state change; without the socket
/// nothing happens. Failures are logged at debug level: the service runs on either way.
fn notify_systemd(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(&[state]) {
        tracing::debug!("sd_notify: {e}");
    }
}

/// How often a starting proxy tries the DCS again while no endpoint answers (each attempt is itself
/// bounded by the DCS request timeout, 3 s).
const PROXY_DCS_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Runs the proxy until SIGTERM/SIGINT: follows the DCS, acknowledges its routes there
/// (`praetor/proxies/<id>`, the fencing handshake), and on SIGHUP re-reads `config` (log level, and
/// every proxy setting but the listeners) without dropping connections.
async fn run_proxy(
    settings: praetor_proxy::ProxySettings,
    threads: usize,
    scope: String,
    namespace: String,
    endpoints: praetor_config::DcsEndpoints,
    on_hup: Box<dyn Fn() + Send>,
    config: PathBuf,
) -> anyhow::Result<()> {
    let identity = praetor_dcs::DcsIdentity {
        namespace,
        scope: scope.clone(),
        member: None,
        ttl_secs: 30,
        request_timeout_secs: 3,
    };
    // etcd3's authentication and TLS, from the file just validated.
    let security = praetor_config::load_file(&config)
        .map(|l| l.config.etcd_security())
        .unwrap_or_default();
    // A proxy started while the DCS does not answer (restarted during a partition or a quorum
    // loss: nemesis ZooKeeper async seed 11 exited here) waits for it, as the agent does; its
    // listeners open only once it can know the leader. SIGTERM/SIGINT end the wait.
    let waiting = CancellationToken::new();
    let on_signal = tokio::spawn({
        let waiting = waiting.clone();
        async move {
            use tokio::signal::unix::{signal, SignalKind};
            if let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received while waiting for the DCS"),
                    _ = int.recv() => tracing::info!("SIGINT received while waiting for the DCS"),
                }
                waiting.cancel();
            }
        }
    });
    let opened = praetor_dcs::connect_when_available(
        &endpoints,
        identity,
        &security,
        PROXY_DCS_RETRY,
        &waiting,
    )
    .await;
    on_signal.abort();
    let Some(dcs) = opened.context("cannot open the DCS")? else {
        return Ok(());
    };
    let configured_id = settings.id.clone();
    let path = config.clone();
    let reload: praetor_proxy::ReloadFn = std::sync::Arc::new(move || {
        let loaded = praetor_config::load_file(&path).map_err(|e| e.to_string())?;
        let proxy = loaded.config.validate_proxy().map_err(|e| e.to_string())?;
        praetor_proxy::ProxySettings::from_config(&proxy).map_err(|e| e.to_string())
    });
    let proxy = praetor_proxy::Proxy::bind(settings)
        .await?
        .with_reload(reload)
        .with_workers(threads);
    let id = configured_id.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "proxy".into());
        let port = [proxy.rw_addr(), proxy.auto_addr(), proxy.ro_addr()]
            .into_iter()
            .flatten()
            .next()
            .map_or(0, |a| a.port());
        format!("{host}-{port}")
    });
    tracing::info!(
        scope = %scope,
        %id,
        read_write = ?proxy.rw_addr(),
        read_only = ?proxy.ro_addr(),
        auto = ?proxy.auto_addr(),
        admin = ?proxy.admin_addr(),
        metrics = ?proxy.metrics_addr(),
        "proxy listening"
    );
    let reloader = proxy.reloader();
    let on_hup: Box<dyn Fn() + Send> = Box::new(move || {
        // systemd's reload protocol: RELOADING=1 with the monotonic clock, READY=1 when done.
        let mut reloading = vec![sd_notify::NotifyState::Reloading];
        if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
            reloading.push(now);
        }
        if let Err(e) = sd_notify::notify(&reloading) {
            tracing::debug!("sd_notify: {e}");
        }
        on_hup();
        match reloader.reload() {
            Ok(notes) => {
                for n in notes {
                    tracing::warn!("reload: {n}");
                }
                tracing::info!("SIGHUP: proxy configuration reloaded");
            }
            Err(e) => tracing::error!("SIGHUP: cannot reload the proxy configuration: {e}"),
        }
        notify_systemd(sd_notify::NotifyState::Ready);
    });
    let shutdown = shutdown_on_signals(Some(on_hup));
    let feed = praetor_proxy::spawn_dcs_feed(dcs.clone(), shutdown.clone());
    // READY=1 (systemd `Type=notify`) once the listeners are bound (above) and the DCS was read.
    let mut first_view = feed.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        loop {
            if first_view.borrow().dcs_clock.last_read().is_some() {
                tracing::info!("the DCS was read: ready");
                notify_systemd(sd_notify::NotifyState::Ready);
                return;
            }
            // The feed publishes only a changed topology: the clock is looked at again shortly.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = first_view.changed() => {}
                _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
            }
        }
    });
    proxy.with_dcs(dcs, id).serve(feed, shutdown).await?;
    Ok(())
}
