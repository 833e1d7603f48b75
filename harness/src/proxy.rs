//! A `praetor proxy` process with every listener (read-write, read-only, auto, admin, metrics) for a
//! [`LocalCluster`], with extra `praetor.proxy` settings: what the proxy's cluster tests and the
//! benchmarks need beyond [`LocalCluster::start_proxy`].

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::cluster::{LocalCluster, SUPERUSER, SUPERUSER_PASSWORD};
use crate::{free_port, wait_for, write_file, Process};

/// A running proxy process and its ports; killed (with its process group) on drop.
pub struct FullProxy {
    /// Read-write port.
    pub rw_port: u16,
    /// Read-only port.
    pub ro_port: u16,
    /// Auto (per-transaction) port.
    pub auto_port: u16,
    /// Admin console port.
    pub admin_port: u16,
    /// Metrics port.
    pub metrics_port: u16,
    /// `praetor.proxy.id`: its key in the DCS is `praetor/proxies/<id>`.
    pub id: String,
    process: Process,
    /// Its configuration file, binary and log, kept for [`FullProxy::restart`].
    config: PathBuf,
    binary: PathBuf,
    log: PathBuf,
}

impl FullProxy {
    /// Starts `praetor proxy` for `cluster` as `id`, with `extra` YAML lines appended under
    /// `praetor.proxy:` (each indented by four spaces, e.g. `"    max_replica_lag: 1MB\n"`), and waits
    /// until its metrics endpoint answers.
    pub async fn start(cluster: &LocalCluster, id: &str, extra: &str) -> Result<FullProxy, String> {
        let (rw, ro, auto, admin, metrics) = (
            free_port(),
            free_port(),
            free_port(),
            free_port(),
            free_port(),
        );
        let config = cluster.work.path().join(format!("proxy-{id}.yml"));
        // The admin console on 127.0.0.1 needs admin_users or an explicit trust.
        let trust = if extra.contains("admin_auth:") || extra.contains("admin_users:") {
            ""
        } else {
            "    admin_auth: trust\n"
        };
        let yaml = format!(
            "scope: {scope}\nnamespace: /service/\n{dcs}praetor:\n  proxy:\n    id: {id}\n    read_write: {{listen: '127.0.0.1:{rw}'}}\n    read_only: {{listen: '127.0.0.1:{ro}'}}\n    auto: {{listen: '127.0.0.1:{auto}'}}\n    admin: {{listen: '127.0.0.1:{admin}'}}\n    metrics: {{listen: '127.0.0.1:{metrics}'}}\n    connect_timeout: 10\n    shutdown_timeout: 2\n    auth_user: {SUPERUSER}\n    auth_password: {SUPERUSER_PASSWORD}\n{trust}{extra}",
            scope = cluster.options.scope,
            dcs = cluster.etcd.yaml_section(),
        );
        write_file(&config, &yaml).map_err(|e| e.to_string())?;
        let log = cluster.work.path().join(format!("proxy-{id}.log"));
        let process = spawn(&cluster.binary, &config, id, &log)?;
        let proxy = FullProxy {
            rw_port: rw,
            ro_port: ro,
            auto_port: auto,
            admin_port: admin,
            metrics_port: metrics,
            id: id.to_string(),
            process,
            config,
            binary: cluster.binary.clone(),
            log,
        };
        proxy.wait_metrics().await?;
        Ok(proxy)
    }

    /// Kills the proxy (SIGKILL to its process group: clients' connections drop) and starts it
    /// again with the same configuration, ports and log; waits until its metrics endpoint answers.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.start_again().await
    }

    /// Kills the proxy (SIGKILL to its process group) without starting it again; see
    /// [`FullProxy::start_again`].
    pub fn kill(&mut self) {
        self.process.kill_group();
    }

    /// Starts the proxy killed by [`FullProxy::kill`] again with the same configuration, ports and
    /// log; waits until its metrics endpoint answers.
    pub async fn start_again(&mut self) -> Result<(), String> {
        let fresh = spawn(&self.binary, &self.config, &self.id, &self.log)?;
        // The old process is already killed and reaped; dropping it would signal its (possibly
        // reused) process group again.
        std::mem::forget(std::mem::replace(&mut self.process, fresh));
        self.wait_metrics().await
    }

    async fn wait_metrics(&self) -> Result<(), String> {
        let addr = format!("127.0.0.1:{}", self.metrics_port);
        wait_for(
            "the proxy's metrics endpoint",
            Duration::from_secs(30),
            || {
                let addr = addr.clone();
                async move { crate::http_get(&addr, "/metrics").await.map(|_| ()) }
            },
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("{e}\nproxy log:\n{}", self.log()))
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// The process (to signal it).
    pub fn process(&mut self) -> &mut Process {
        &mut self.process
    }

    /// The metrics text.
    pub async fn metrics(&self) -> Result<String, String> {
        crate::http_get(&format!("127.0.0.1:{}", self.metrics_port), "/metrics")
            .await
            .map(|(_, body)| body)
    }
}

/// Spawns `praetor proxy -c config` with its output appended to `log`.
fn spawn(
    binary: &std::path::Path,
    config: &std::path::Path,
    id: &str,
    log: &std::path::Path,
) -> Result<Process, String> {
    let mut cmd = Command::new(binary);
    cmd.arg("proxy").arg("-c").arg(config);
    cmd.env(
        "RUST_LOG",
        std::env::var("PRAETOR_TEST_LOG").unwrap_or_else(|_| "info".into()),
    );
    Process::spawn(&format!("proxy-{id}"), cmd, log)
        .map_err(|e| format!("cannot start the proxy: {e}"))
}
