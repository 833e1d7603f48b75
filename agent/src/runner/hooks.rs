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
/// reload; `wal_probe` reads the local server's WAL positions for `GET /patroni`.
/// `failsafe_record` (this member's data directory and name) is where an accepted `POST
/// /failsafe` is recorded, and whence the last one is taken back ([`crate::failsafe_record`]).
/// Errors: unusable `restapi` TLS or allowlist settings.
#[allow(clippy::too_many_arguments)]
pub(super) async fn start_api(
    config: &Config,
    listener: tokio::net::TcpListener,
    status: watch::Receiver<Arc<NodeStatus>>,
    commands: mpsc::Sender<CommandRequest>,
    dcs: Arc<dyn Dcs>,
    metrics: Arc<Metrics>,
    restarts: Option<Arc<RestartSchedule>>,
    wal_probe: Arc<dyn api::WalProbe>,
    failsafe_record: (std::path::PathBuf, String),
    shutdown: CancellationToken,
) -> anyhow::Result<(tokio::task::JoinHandle<std::io::Result<()>>, Ops)> {
    let mut ctx = ApiContext::new(status, commands);
    restore_failsafe_confirmation(&ctx, &failsafe_record.0, &failsafe_record.1);
    ctx.failsafe_record = Some(failsafe_record);
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
    ctx.wal_probe = Some(wal_probe);
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

/// Takes back the failsafe confirmation this member recorded in `data_dir`
/// ([`crate::failsafe_record`]) as the API's last contact, so that its promise
/// ([`crate::ha::failsafe::promised`]) outlives a restart of the agent or of its API. A record older
/// than any `ttl` (86,400 s) is left alone. When the host has not been up for the record's age, no
/// `Instant` is that old: the contact counts as given now, a longer promise, the safe side.
fn restore_failsafe_confirmation(ctx: &ApiContext, data_dir: &std::path::Path, me: &str) {
    let Some(c) = crate::failsafe_record::load(data_dir, me) else {
        return;
    };
    let now_ms = crate::failsafe_record::now_unix_ms();
    let age = crate::failsafe_record::age(c.at_unix_ms, now_ms);
    if age >= std::time::Duration::from_secs(86_400) {
        return;
    }
    let now = Instant::now();
    tracing::info!(
        leader = %c.leader,
        age_ms = age.as_millis() as u64,
        "took back this member's last failsafe confirmation from the data directory: it stays out of the leader race for ttl after it"
    );
    *ctx.failsafe.lock().unwrap_or_else(|p| p.into_inner()) = Some(api::FailsafeContact {
        at: now.checked_sub(age).unwrap_or(now),
        body: serde_json::json!({ "name": c.leader }),
    });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A confirmation recorded before a restart is the new API's last contact, as old as recorded;
    /// another member's record (copied by pg_basebackup) is not.
    #[test]
    fn a_recorded_failsafe_confirmation_is_taken_back_at_its_age() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        let now_ms = crate::failsafe_record::now_unix_ms();
        crate::failsafe_record::store(dir.path(), "pg2", "pg1", now_ms - 5_000).unwrap();
        let ctx = || {
            let (_tx, rx) = watch::channel(Arc::new(NodeStatus::default()));
            let (cmd, _) = mpsc::channel(1);
            ApiContext::new(rx, cmd)
        };
        let theirs = ctx();
        restore_failsafe_confirmation(&theirs, dir.path(), "pg3");
        assert!(theirs.failsafe.lock().unwrap().is_none());
        let mine = ctx();
        restore_failsafe_confirmation(&mine, dir.path(), "pg2");
        let contact = mine.failsafe.lock().unwrap().clone().expect("taken back");
        assert_eq!(contact.body["name"], "pg1");
        // As old as recorded (this host has been up longer than 5 s).
        let age = contact.at.elapsed();
        assert!(age >= std::time::Duration::from_millis(4_900), "{age:?}");
    }
}
