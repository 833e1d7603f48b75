//! The shell around [`crate::reload::plan`]: re-reads the configuration file on SIGHUP, `POST
//! /reload` and `ctl reload`, executes the plan's actions, then rewrites PostgreSQL's files and
//! reloads it. A file that does not parse or validate changes nothing; the error names the key
//! path and is returned to the caller (the REST API answers it with an error status).
//!
//! A child module of `runner`, so its `impl Runner` block reaches the runner's fields.

use std::path::PathBuf;
use std::sync::Arc;

use praetor_dcs::Role;
use tokio_util::sync::CancellationToken;

use super::{hooks, BindHost, Runner};
use crate::api::CommandError;
use crate::ha::StartAs;
use crate::reload::{self, ReloadAction};

/// Applies a new `log.level`, given as a `tracing` filter directive. Errors: the logger refused it.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// How the agent re-reads its configuration file (given by `main`, which owns the file path, the
/// logger and the signal handlers).
pub struct ReloadSource {
    /// The YAML file the agent was started with.
    pub path: PathBuf,
    /// Notified on SIGHUP.
    pub hup: Arc<tokio::sync::Notify>,
    /// Applies a new `log.level`, given as a `tracing` filter directive (`debug`, `info`...).
    /// Errors: the logger refused it.
    pub set_log_level: SetLogLevel,
}

/// The REST API server the loop runs, so a reload can serve it again with new settings.
pub(super) struct ApiServer {
    /// The server task.
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
    /// Stops it.
    pub shutdown: CancellationToken,
    /// How the API reaches the loop.
    pub commands: tokio::sync::mpsc::Sender<crate::api::CommandRequest>,
    /// A `restapi`/`ctl` change waits to be applied (after the reply to the request that caused
    /// it was sent, so that request is not cut off).
    pub restart_pending: bool,
}

/// Whether `restapi`'s TLS files load and its allowlist parses (what serving the API needs).
async fn check_api_settings(r: &praetor_config::RestApi) -> Result<(), String> {
    crate::api::tls::server_config(r)?;
    crate::api::AccessPolicy::from_config(r).await?;
    Ok(())
}

impl Runner {
    /// Re-reads the configuration file (when the agent has one) and applies what changed, then
    /// rewrites PostgreSQL's files and reloads it when it runs (Patroni reloads PostgreSQL on every
    /// reload request). `trigger` names the request in the log (`SIGHUP`, `POST /reload`).
    ///
    /// Errors: [`CommandError::Refused`] when the new file does not parse or validate (the message
    /// names the file and the key path; the running configuration is kept);
    /// [`CommandError::Failed`] when PostgreSQL's files cannot be written or it cannot be
    /// signalled.
    pub(super) async fn reload_config(&mut self, trigger: &str) -> Result<String, CommandError> {
        let mut answer = "reloaded configuration".to_string();
        if let Some(path) = self.reload_source.as_ref().map(|s| s.path.clone()) {
            let read = praetor_config::load_file(&path)
                .and_then(|l| Ok((reload::plan(&self.config, &l.config)?, l)));
            let (actions, loaded) = match read {
                Ok(x) => x,
                Err(e) => {
                    let why = match e {
                        praetor_config::ConfigError::Io { .. } => e.to_string(),
                        other => format!("{}: {other}", path.display()),
                    };
                    let msg = format!(
                        "configuration not reloaded, the running configuration is kept: {why}"
                    );
                    tracing::error!("{trigger}: {msg}");
                    return Err(CommandError::Refused(msg));
                }
            };
            // New REST API settings are checked before anything changes: a certificate that does
            // not load must not leave the member without its API.
            if actions.contains(&ReloadAction::RestartApi) {
                if let Err(e) = check_api_settings(&loaded.config.restapi).await {
                    let msg = format!(
                        "configuration not reloaded, the running configuration is kept: {}: restapi: {e}",
                        path.display()
                    );
                    tracing::error!("{trigger}: {msg}");
                    return Err(CommandError::Refused(msg));
                }
            }
            for w in &loaded.warnings {
                tracing::warn!("{}: {w}", path.display());
            }
            if actions.is_empty() {
                tracing::info!("{trigger}: {}: no change to apply", path.display());
                answer = "configuration unchanged; postgres reloaded".into();
            }
            for action in actions {
                self.apply_reload_action(action, &path, trigger);
            }
            self.config = reload::effective(&self.config, &loaded.config);
        }
        // The role PostgreSQL runs in now, as apply_parameters writes it (not the DCS's view, which
        // may be missing). While a background task (start, clone, rewind) runs or PostgreSQL does
        // not answer, the next cycle writes the files and reloads once it runs.
        let running = match self.pg.postmaster() {
            Some(_) if self.task.is_none() => self.pg.status().await.ok(),
            _ => None,
        };
        if let Some(server) = running {
            let role = if server.in_recovery {
                StartAs::Replica {
                    upstream: server
                        .upstream
                        .clone()
                        .map(|(host, port)| crate::ha::Upstream {
                            member: String::new(),
                            host,
                            port,
                        }),
                }
            } else {
                StartAs::Primary
            };
            self.pg
                .write_config(&self.dynamic, &role)
                .map_err(|e| e.to_string())?;
            self.pg.reload().map_err(|e| e.to_string())?;
            let role = match role {
                StartAs::Primary => Role::Primary,
                StartAs::Replica { .. } => Role::Replica,
            };
            self.callbacks.fire(crate::callbacks::Event::OnReload, role);
        }
        Ok(answer)
    }

    /// Carries out one action of the reload plan (see [`ReloadAction`]).
    fn apply_reload_action(&mut self, action: ReloadAction, path: &std::path::Path, trigger: &str) {
        match action {
            ReloadAction::KeepRunning { key } => tracing::warn!(
                "{}: {key} changed, but it cannot change while the agent runs: keeping the running value (restart the agent to apply it)",
                path.display()
            ),
            ReloadAction::SetLogLevel(level) => {
                let set = &self
                    .reload_source
                    .as_ref()
                    .expect("a reload plan comes from a configuration file")
                    .set_log_level;
                match set(&level) {
                    Ok(()) => tracing::warn!("{trigger}: log level is now {level}"),
                    Err(e) => tracing::warn!("{trigger}: cannot change the log level: {e}"),
                }
            }
            ReloadAction::SetTags(tags) => {
                tracing::info!(?tags, "tags changed: publishing them");
            }
            ReloadAction::SetLocalPostgres { parameters, pg_hba } => {
                tracing::info!(
                    "postgresql.parameters / pg_hba changed: rewriting the configuration and reloading postgres"
                );
                self.pg.set_local_config(parameters, pg_hba);
            }
            ReloadAction::RestartApi => {
                tracing::info!("restapi changed: serving the REST API again with the new settings");
                self.api.restart_pending = true;
            }
            ReloadAction::SetWatchdog(w) => {
                tracing::info!(mode = %w.mode, "watchdog settings changed");
                if self.watchdog.is_active() {
                    self.disable_watchdog();
                }
                self.watchdog = crate::watchdog::Watchdog::new(&w);
                self.watchdog_refused = false;
            }
            ReloadAction::SetCallbacks {
                scripts,
                role_names,
            } => {
                tracing::info!("callbacks changed: used from the next event");
                self.callbacks = crate::callbacks::Callbacks::new(scripts, &self.settings.scope)
                    .with_role_names(role_names);
            }
        }
    }

    /// Serves the REST API again with the current `restapi` settings, if a reload changed them. A
    /// new `listen` address is bound before the old server stops, so a failure (address in use)
    /// keeps the API where it was; the same address is bound again once the old server let go.
    pub(super) async fn restart_api_if_pending(&mut self) {
        if !std::mem::take(&mut self.api.restart_pending) {
            return;
        }
        let Some(listen) = self.config.restapi.listen.clone() else {
            return;
        };
        let moved = listen != self.settings.api_listen;
        let bind = |a: &praetor_config::Address| {
            let (host, port) = (a.local_bind_host(), a.port);
            async move { tokio::net::TcpListener::bind((host.as_str(), port)).await }
        };
        let listener = if moved {
            match bind(&listen).await {
                Ok(l) => {
                    self.stop_api().await;
                    l
                }
                Err(e) => {
                    tracing::error!(
                        "cannot listen on restapi.listen {listen}: {e}; the REST API stays on {}",
                        self.settings.api_listen
                    );
                    self.config.restapi.listen = Some(self.settings.api_listen.clone());
                    return;
                }
            }
        } else {
            self.stop_api().await;
            match bind(&listen).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("cannot listen on restapi.listen {listen} again: {e}");
                    return;
                }
            }
        };
        let shutdown = CancellationToken::new();
        let started = hooks::start_api(
            &self.config,
            listener,
            self.status_tx.subscribe(),
            self.api.commands.clone(),
            self.dcs.clone(),
            self.ops.metrics.clone(),
            Some(self.ops.restarts.clone()),
            self.pg.clone(),
            (self.settings.data_dir.clone(), self.settings.name.clone()),
            shutdown.clone(),
        )
        .await;
        match started {
            Ok((task, mut ops)) => {
                ops.ready_sent = self.ops.ready_sent;
                self.ops = ops;
                self.api.task = task;
                self.api.shutdown = shutdown;
                self.settings.api_listen = listen;
                if let Some(c) = self.config.restapi.connect_address.clone() {
                    self.settings.api_connect = c;
                }
                tracing::info!("REST API listening on {}", self.settings.api_listen);
            }
            Err(e) => tracing::error!("cannot serve the REST API with the new settings: {e:#}"),
        }
    }

    /// Stops the REST API server and waits (up to its own 5 s grace) until it let go of its
    /// address.
    async fn stop_api(&mut self) {
        self.api.shutdown.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.api.task).await;
    }
}
