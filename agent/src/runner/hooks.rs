//! The operator surface's hooks into the loop, kept out of `runner.rs` so the loop stays readable:
//! the REST API's setup (access control, TLS, metrics, metered DCS, the restart scheduler), what
//! happens around each cycle (metrics, systemd readiness and watchdog), the `POST /restart`
//! command, and the fields the API adds to the member key (`scheduled_restart`, an `https`
//! `api_url`).
//!
//! A child module of `runner`, so its `impl Runner` blocks reach the runner's fields; `runner.rs`
//! only calls these functions.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use praetor_config::Config;
use praetor_dcs::{Dcs, MemberData, MemberState};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::Runner;
use crate::api::{self, ApiContext, CommandRequest, NodeStatus, RestartSchedule};
use crate::ha::{self, Action, StartAs, Task};
use crate::metrics::{MeteredDcs, Metrics};

/// What the operator surface shares with the loop.
pub(super) struct Ops {
    /// The agent's metrics.
    pub metrics: Arc<Metrics>,
    /// The scheduled restart (published in the member key).
    pub restarts: Arc<RestartSchedule>,
    /// The API speaks HTTPS.
    pub tls: bool,
    /// systemd was told READY=1.
    pub ready_sent: bool,
    /// systemd's watchdog is on: ping it every cycle.
    pub watchdog: bool,
    /// The last `POST /failsafe` this member accepted (written by the API, read by the loop).
    pub failsafe: Arc<std::sync::Mutex<Option<api::FailsafeContact>>>,
    /// How this agent calls other members' REST APIs (TLS, credentials): the leader race's peer
    /// checks and failsafe confirmations.
    pub client: api::client::ApiClient,
}

/// Wraps the DCS so its requests, errors and lock renewals are counted, and creates the metrics.
pub(super) fn metered(dcs: Arc<dyn Dcs>, scope: &str, name: &str) -> (Arc<dyn Dcs>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new(scope, name));
    let dcs: Arc<dyn Dcs> = Arc::new(MeteredDcs::new(dcs, metrics.clone()));
    (dcs, metrics)
}

/// Starts the REST API (plain or TLS, with access control) and the restart scheduler on
/// `listener`; `restarts` carries a scheduled restart over when the API is served again after a
/// reload. Errors: unusable `restapi` TLS or allowlist settings.
#[allow(clippy::too_many_arguments)]
pub(super) async fn start_api(
    config: &Config,
    listener: tokio::net::TcpListener,
    status: watch::Receiver<Arc<NodeStatus>>,
    commands: mpsc::Sender<CommandRequest>,
    dcs: Arc<dyn Dcs>,
    metrics: Arc<Metrics>,
    restarts: Option<Arc<RestartSchedule>>,
    shutdown: CancellationToken,
) -> anyhow::Result<(tokio::task::JoinHandle<std::io::Result<()>>, Ops)> {
    let mut ctx = ApiContext::new(status, commands);
    if let Some(r) = restarts {
        ctx.restarts = r;
    }
    ctx.tls = api::tls::server_config(&config.restapi).map_err(anyhow::Error::msg)?;
    ctx.access = Arc::new(
        api::AccessPolicy::from_config(&config.restapi)
            .await
            .map_err(anyhow::Error::msg)?,
    );
    // Members ask each other's APIs (switchover candidate checks) with the ctl settings.
    let client_tls = api::tls::client_config(&api::tls::ClientTls {
        cacert: config
            .ctl
            .cacert
            .as_deref()
            .or(config.restapi.cafile.as_deref()),
        certfile: config
            .ctl
            .certfile
            .as_deref()
            .or(config.restapi.certfile.as_deref()),
        keyfile: config
            .ctl
            .keyfile
            .as_deref()
            .or(config.restapi.keyfile.as_deref()),
        insecure: config.ctl.insecure || config.restapi.cafile.is_none(),
    })
    .map_err(anyhow::Error::msg)
    .context("TLS client settings for calling other members")?;
    let auth = config
        .ctl
        .authentication
        .as_ref()
        .or(config.restapi.authentication.as_ref());
    ctx.client = api::client::ApiClient::new(
        Some(client_tls),
        auth.map(|c| (c.username.as_str(), c.password.as_deref().unwrap_or(""))),
        std::time::Duration::from_secs(3),
    );
    ctx.dcs = Some(dcs);
    ctx.metrics = Some(metrics.clone());
    let tls = ctx.tls.is_some();
    let restarts = ctx.restarts.clone();
    let client = ctx.client.clone();
    let failsafe = ctx.failsafe.clone();
    tokio::spawn(api::schedule::run_scheduler(ctx.clone(), shutdown.clone()));
    let task = tokio::spawn(api::serve(listener, ctx, shutdown));
    Ok((
        task,
        Ops {
            metrics,
            restarts,
            tls,
            ready_sent: false,
            watchdog: sd_notify::watchdog_enabled().is_some(),
            client,
            failsafe,
        },
    ))
}

impl Runner {
    /// After each cycle: its duration into the histogram, READY=1 to systemd after the first one
    /// (`Type=notify`), and the watchdog ping.
    pub(super) fn after_cycle(&mut self, started: Instant) {
        self.ops.metrics.observe_cycle(started);
        if !self.ops.ready_sent {
            self.ops.ready_sent = true;
            if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                tracing::debug!("sd_notify READY: {e}");
            }
        }
        if self.ops.watchdog {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    }

    /// `POST /restart`: stop PostgreSQL (fast) and start it again in the role it had, as a
    /// background task the next cycles wait for (so the lock keeps being renewed meanwhile, and it
    /// also works in maintenance mode, where the loop itself never starts PostgreSQL).
    pub(super) async fn restart_command(&mut self) -> Result<String, String> {
        if self.pg.postmaster().is_none() {
            return Err("postgres is not running".into());
        }
        let role = self.current_start_role();
        tracing::info!("restarting postgres (REST API request)");
        self.set_api_state(MemberState::Stopping);
        self.pg
            .stop(ha::StopMode::Fast, None)
            .await
            .map_err(|e| e.to_string())?;
        self.set_api_state(MemberState::Stopped);
        // Its start runs `on_restart` rather than `on_start` (Patroni's `Ha.restart`).
        self.restarting = true;
        self.spawn_task(Task::Start, Action::Start(role));
        Ok("restarting postgres".into())
    }

    /// How PostgreSQL runs now: primary when this member holds the lock, else a replica of the
    /// leader (or its `replicatefrom`).
    pub(super) fn current_start_role(&self) -> StartAs {
        let holds = self
            .last_view
            .as_ref()
            .and_then(|v| v.leader.as_ref())
            .is_some_and(|l| l.name == self.me());
        if holds {
            StartAs::Primary
        } else {
            let upstream = self
                .last_view
                .as_ref()
                .and_then(|v| ha::upstream_of(v, &v.leader.as_ref()?.name));
            StartAs::Replica { upstream }
        }
    }

    /// Adds what the operator surface publishes in `members/<name>`: `scheduled_restart`, and
    /// `https` in `api_url` when the API speaks TLS.
    pub(super) fn decorate_member(&self, data: &mut MemberData) {
        match self.ops.restarts.member_value() {
            Some(v) => {
                data.extra.insert("scheduled_restart".into(), v);
            }
            None => {
                data.extra.remove("scheduled_restart");
            }
        }
        if self.ops.tls {
            if let Some(u) = data.api_url.as_mut() {
                if let Some(rest) = u.strip_prefix("http://") {
                    *u = format!("https://{rest}");
                }
            }
        }
    }
}
