//! The agent's Prometheus metrics (`GET /metrics`), in a registry the agent owns (no global one).
//!
//! - Patroni's gauges and counters (reference/patroni.md section 5), same names, help texts, types
//!   and `{scope, name}` labels, computed from the latest [`NodeStatus`] at scrape time, so
//!   existing Grafana dashboards work unchanged.
//! - Praetor's own: `praetor_ha_loop_duration_seconds` (histogram of HA cycles),
//!   `praetor_dcs_requests_total` and `praetor_dcs_request_errors_total` by operation,
//!   `praetor_leader_lock_renewals_total` by result. DCS calls are counted by wrapping the backend
//!   in [`MeteredDcs`].

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use praetor_dcs::{
    Cluster, Dcs, DcsError, DcsEvent, Expect, Failover, HistoryEntry, MemberData, ProxyState,
    Status, SyncState, Version,
};
use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, Opts, Registry, TextEncoder};
use tokio::sync::broadcast;

use crate::api::NodeStatus;

/// The agent's metrics registry and the handles the loop updates.
pub struct Metrics {
    registry: Registry,
    current: Arc<Mutex<NodeStatus>>,
    /// Seconds each HA cycle took.
    pub ha_loop_seconds: Histogram,
    /// DCS requests by operation.
    pub dcs_requests: IntCounterVec,
    /// Failed DCS requests by operation.
    pub dcs_errors: IntCounterVec,
    /// Leader lock renewals by result (`renewed`, `lost`, `error`).
    pub lock_renewals: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A registry for member `name` of cluster `scope`.
    pub fn new(scope: &str, name: &str) -> Metrics {
        let registry = Registry::new();
        let current = Arc::new(Mutex::new(NodeStatus {
            scope: scope.to_string(),
            name: name.to_string(),
            ..Default::default()
        }));
        let labels = |o: Opts| o.const_label("scope", scope).const_label("name", name);
        let ha_loop_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "praetor_ha_loop_duration_seconds",
                "Duration of one HA loop cycle (read the DCS, observe PostgreSQL, decide, act, publish).",
            )
            .const_label("scope", scope)
            .const_label("name", name)
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
        )
        .expect("static histogram options are valid");
        let dcs_requests = IntCounterVec::new(
            labels(Opts::new(
                "praetor_dcs_requests_total",
                "DCS requests made by the agent, by operation.",
            )),
            &["operation"],
        )
        .expect("static counter options are valid");
        let dcs_errors = IntCounterVec::new(
            labels(Opts::new(
                "praetor_dcs_request_errors_total",
                "DCS requests that failed (unreachable, timed out, malformed; not CAS conflicts), by operation.",
            )),
            &["operation"],
        )
        .expect("static counter options are valid");
        let lock_renewals = IntCounterVec::new(
            labels(Opts::new(
                "praetor_leader_lock_renewals_total",
                "Leader lock renewals by result: renewed, lost (held by another or gone), error.",
            )),
            &["result"],
        )
        .expect("static counter options are valid");
        for c in [
            Box::new(ha_loop_seconds.clone()) as Box<dyn Collector>,
            Box::new(dcs_requests.clone()),
            Box::new(dcs_errors.clone()),
            Box::new(lock_renewals.clone()),
            Box::new(PatroniCollector::new(current.clone())),
        ] {
            registry
                .register(c)
                .expect("each metric is registered once in a fresh registry");
        }
        Metrics {
            registry,
            current,
            ha_loop_seconds,
            dcs_requests,
            dcs_errors,
            lock_renewals,
        }
    }

    /// Records one HA cycle that started at `started`.
    pub fn observe_cycle(&self, started: Instant) {
        self.ha_loop_seconds
            .observe(started.elapsed().as_secs_f64());
    }

    /// The Prometheus text exposition for the node as `st` describes it.
    pub fn render(&self, st: &NodeStatus) -> String {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = st.clone();
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// One Patroni metric: name, help, counter or gauge.
struct Spec {
    name: &'static str,
    help: &'static str,
    counter: bool,
}

const fn g(name: &'static str, help: &'static str) -> Spec {
    Spec {
        name,
        help,
        counter: false,
    }
}

const fn c(name: &'static str, help: &'static str) -> Spec {
    Spec {
        name,
        help,
        counter: true,
    }
}

/// Patroni's metrics, in Patroni's order, with its help texts.
const PATRONI: &[Spec] = &[
    g("patroni_version", "Patroni semver without periods."),
    g("patroni_postgres_running", "Value is 1 if Postgres is running, 0 otherwise."),
    g("patroni_postmaster_start_time", "Epoch seconds since Postgres started."),
    g("patroni_primary", "Value is 1 if this node is the leader, 0 otherwise."),
    c("patroni_xlog_location", "Current location of the Postgres transaction log, 0 if this node is not the leader."),
    g("patroni_standby_leader", "Value is 1 if this node is the standby_leader, 0 otherwise."),
    g("patroni_replica", "Value is 1 if this node is a replica, 0 otherwise."),
    g("patroni_sync_standby", "Value is 1 if this node is a sync standby replica, 0 otherwise."),
    c("patroni_xlog_received_location", "Current location of the received Postgres transaction log, 0 if this node is not a replica."),
    c("patroni_xlog_replayed_location", "Current location of the replayed Postgres transaction log, 0 if this node is not a replica."),
    g("patroni_xlog_replayed_timestamp", "Current timestamp of the replayed Postgres transaction log, 0 if null."),
    g("patroni_xlog_paused", "Value is 1 if the Postgres xlog is paused, 0 otherwise."),
    g("patroni_postgres_streaming", "Value is 1 if Postgres is streaming, 0 otherwise."),
    g("patroni_postgres_in_archive_recovery", "Value is 1 if Postgres is replicating from archive, 0 otherwise."),
    g("patroni_postgres_server_version", "Version of Postgres (if running), 0 otherwise."),
    g("patroni_cluster_unlocked", "Value is 1 if the cluster is unlocked, 0 if locked."),
    g("patroni_failsafe_mode_is_active", "Value is 1 if failsafe mode is active, 0 if inactive."),
    c("patroni_postgres_timeline", "Postgres timeline of this node (if running), 0 otherwise."),
    g("patroni_dcs_last_seen", "Epoch timestamp when DCS was last contacted successfully by Patroni."),
    g("patroni_pending_restart", "Value is 1 if the node needs a restart, 0 otherwise."),
    g("patroni_is_paused", "Value is 1 if auto failover is disabled, 0 otherwise."),
];

/// `0.1.0` → 100, `4.1.0` → 40100 (Patroni's "semver without periods").
pub fn version_number(v: &str) -> f64 {
    v.split('.')
        .take(3)
        .map(|p| p.parse::<u32>().unwrap_or(0).min(99))
        .fold(0u64, |acc, p| acc * 100 + u64::from(p)) as f64
}

fn epoch(text: Option<&str>) -> f64 {
    text.and_then(|t| crate::api::schedule::parse_iso8601(t).ok())
        .map(|t| t.unix_timestamp_nanos() as f64 / 1e9)
        .unwrap_or(0.0)
}

/// The value of each Patroni metric for `st`, in [`PATRONI`] order.
pub fn patroni_values(st: &NodeStatus) -> Vec<(&'static str, f64)> {
    let s = st.server.as_ref();
    let b = |x: bool| if x { 1.0 } else { 0.0 };
    let role = st.postgres_role();
    let replica = role == Some(praetor_dcs::Role::Replica);
    let values = [
        version_number(env!("CARGO_PKG_VERSION")),
        b(st.is_running()),
        epoch(s.map(|s| s.postmaster_start_time.as_str())),
        b(role == Some(praetor_dcs::Role::Primary)),
        s.filter(|s| !s.in_recovery)
            .and_then(|s| s.current_lsn)
            .unwrap_or(0) as f64,
        b(role == Some(praetor_dcs::Role::StandbyLeader)),
        b(replica),
        b(replica && st.is_sync_standby()),
        s.filter(|s| s.in_recovery)
            .and_then(|s| s.received_lsn)
            .unwrap_or(0) as f64,
        s.filter(|s| s.in_recovery)
            .and_then(|s| s.replayed_lsn)
            .unwrap_or(0) as f64,
        epoch(s.and_then(|s| s.replay_timestamp.as_deref())),
        b(s.is_some_and(|s| s.replay_paused)),
        b(s.is_some_and(|s| s.in_recovery && s.streaming)),
        b(s.is_some_and(|s| s.in_recovery && !s.streaming)),
        s.map(|s| f64::from(s.server_version)).unwrap_or(0.0),
        b(st.cluster.as_ref().is_none_or(|c| c.leader.is_none())),
        b(st.failsafe_active),
        s.map(|s| f64::from(s.timeline)).unwrap_or(0.0),
        st.dcs_last_seen.unwrap_or(0) as f64,
        b(st.pending_restart),
        b(st.pause),
    ];
    PATRONI.iter().map(|m| m.name).zip(values).collect()
}

/// Builds Patroni's metric families from the current snapshot at each scrape.
struct PatroniCollector {
    current: Arc<Mutex<NodeStatus>>,
    descs: Vec<Desc>,
}

impl PatroniCollector {
    fn new(current: Arc<Mutex<NodeStatus>>) -> PatroniCollector {
        let descs = PATRONI
            .iter()
            .map(|m| {
                Desc::new(
                    m.name.to_string(),
                    m.help.to_string(),
                    vec!["scope".into(), "name".into()],
                    Default::default(),
                )
                .expect("static metric descriptions are valid")
            })
            .collect();
        PatroniCollector { current, descs }
    }
}

impl Collector for PatroniCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let st = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let label = |n: &str, v: &str| {
            let mut l = LabelPair::default();
            l.set_name(n.to_string());
            l.set_value(v.to_string());
            l
        };
        PATRONI
            .iter()
            .zip(patroni_values(&st))
            .map(|(spec, (_, value))| {
                let mut m = Metric::default();
                m.set_label(vec![label("name", &st.name), label("scope", &st.scope)]);
                let mut f = MetricFamily::default();
                f.set_name(spec.name.to_string());
                f.set_help(spec.help.to_string());
                if spec.counter {
                    let mut c = Counter::default();
                    c.set_value(value);
                    m.set_counter(c);
                    f.set_field_type(MetricType::COUNTER);
                } else {
                    let mut g = Gauge::default();
                    g.set_value(value);
                    m.set_gauge(g);
                    f.set_field_type(MetricType::GAUGE);
                }
                f.mut_metric().push(m);
                f
            })
            .collect()
    }
}

/// A [`Dcs`] that counts requests, errors and lock renewals in [`Metrics`].
pub struct MeteredDcs {
    inner: Arc<dyn Dcs>,
    metrics: Arc<Metrics>,
}

impl MeteredDcs {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Dcs>, metrics: Arc<Metrics>) -> MeteredDcs {
        MeteredDcs { inner, metrics }
    }

    fn count<T>(&self, op: &str, r: Result<T, DcsError>) -> Result<T, DcsError> {
        self.metrics.dcs_requests.with_label_values(&[op]).inc();
        if let Err(e) = &r {
            if !e.is_cas_conflict() {
                self.metrics.dcs_errors.with_label_values(&[op]).inc();
            }
        }
        r
    }
}

#[async_trait]
impl Dcs for MeteredDcs {
    async fn load(&self) -> Result<Cluster, DcsError> {
        self.count("load", self.inner.load().await)
    }
    async fn create_initialize(&self, value: &str) -> Result<bool, DcsError> {
        self.count("initialize", self.inner.create_initialize(value).await)
    }
    async fn update_initialize(&self, expected: &str, value: &str) -> Result<(), DcsError> {
        self.count(
            "initialize",
            self.inner.update_initialize(expected, value).await,
        )
    }
    async fn cancel_initialize(&self, expected: &str) -> Result<(), DcsError> {
        self.count("initialize", self.inner.cancel_initialize(expected).await)
    }
    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        self.count("acquire_leader", self.inner.acquire_leader().await)
    }
    async fn renew_leader(&self) -> Result<bool, DcsError> {
        let r = self.count("renew_leader", self.inner.renew_leader().await);
        let result = match &r {
            Ok(true) => "renewed",
            Ok(false) => "lost",
            Err(_) => "error",
        };
        self.metrics
            .lock_renewals
            .with_label_values(&[result])
            .inc();
        r
    }
    async fn release_leader(&self) -> Result<bool, DcsError> {
        self.count("release_leader", self.inner.release_leader().await)
    }
    async fn touch_member(&self, data: &MemberData) -> Result<(), DcsError> {
        self.count("touch_member", self.inner.touch_member(data).await)
    }
    async fn delete_member(&self) -> Result<(), DcsError> {
        self.count("delete_member", self.inner.delete_member().await)
    }
    async fn set_config(&self, value: &serde_json::Value, expect: Expect) -> Result<(), DcsError> {
        self.count("set_config", self.inner.set_config(value, expect).await)
    }
    async fn set_failover(&self, value: &Failover, expect: Expect) -> Result<(), DcsError> {
        self.count("set_failover", self.inner.set_failover(value, expect).await)
    }
    async fn delete_failover(&self, version: Version) -> Result<(), DcsError> {
        self.count("delete_failover", self.inner.delete_failover(version).await)
    }
    async fn set_history(&self, value: &[HistoryEntry], expect: Expect) -> Result<(), DcsError> {
        self.count("set_history", self.inner.set_history(value, expect).await)
    }
    async fn set_status(&self, value: &Status) -> Result<(), DcsError> {
        self.count("set_status", self.inner.set_status(value).await)
    }
    async fn set_sync(&self, value: &SyncState, expect: Expect) -> Result<(), DcsError> {
        self.count("set_sync", self.inner.set_sync(value, expect).await)
    }
    async fn set_failsafe(
        &self,
        members: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), DcsError> {
        self.count("set_failsafe", self.inner.set_failsafe(members).await)
    }
    async fn set_proxy_state(&self, id: &str, state: &ProxyState) -> Result<(), DcsError> {
        self.count(
            "set_proxy_state",
            self.inner.set_proxy_state(id, state).await,
        )
    }
    async fn set_ttl(&self, ttl_secs: u32) -> Result<(), DcsError> {
        self.count("set_ttl", self.inner.set_ttl(ttl_secs).await)
    }
    async fn delete_cluster(&self) -> Result<(), DcsError> {
        self.count("delete_cluster", self.inner.delete_cluster().await)
    }
    fn granted_ttl(&self) -> Option<std::time::Duration> {
        self.inner.granted_ttl()
    }
    fn watch(&self) -> broadcast::Receiver<DcsEvent> {
        self.inner.watch()
    }
    async fn close(&self) -> Result<(), DcsError> {
        self.count("close", self.inner.close().await)
    }
    async fn drop_session(&self) -> Result<(), DcsError> {
        self.count("drop_session", self.inner.drop_session().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::ServerStatus;
    use praetor_dcs::{Leader, MemberState, Role};

    fn replica() -> NodeStatus {
        NodeStatus {
            scope: "demo".into(),
            name: "pg2".into(),
            state: MemberState::Running,
            role: Role::Replica,
            server: Some(ServerStatus {
                in_recovery: true,
                timeline: 3,
                received_lsn: Some(5000),
                replayed_lsn: Some(4000),
                streaming: true,
                server_version: 150004,
                postmaster_start_time: "2030-01-01 00:00:10.5+00".into(),
                ..Default::default()
            }),
            cluster: Some(Arc::new(Cluster {
                leader: Some(Leader {
                    name: "pg1".into(),
                    version: 1,
                }),
                ..Default::default()
            })),
            dcs_last_seen: Some(1_900_000_000),
            pending_restart: true,
            ..Default::default()
        }
    }

    #[test]
    fn renders_patroni_names_types_and_labels() {
        let m = Metrics::new("demo", "pg2");
        m.lock_renewals.with_label_values(&["renewed"]).inc();
        m.observe_cycle(Instant::now());
        let text = m.render(&replica());
        for line in [
            "# TYPE patroni_xlog_received_location counter",
            "patroni_xlog_received_location{name=\"pg2\",scope=\"demo\"} 5000",
            "patroni_xlog_replayed_location{name=\"pg2\",scope=\"demo\"} 4000",
            "patroni_replica{name=\"pg2\",scope=\"demo\"} 1",
            "patroni_primary{name=\"pg2\",scope=\"demo\"} 0",
            "patroni_postgres_streaming{name=\"pg2\",scope=\"demo\"} 1",
            "patroni_postgres_timeline{name=\"pg2\",scope=\"demo\"} 3",
            "patroni_postgres_server_version{name=\"pg2\",scope=\"demo\"} 150004",
            "patroni_cluster_unlocked{name=\"pg2\",scope=\"demo\"} 0",
            "patroni_pending_restart{name=\"pg2\",scope=\"demo\"} 1",
            "patroni_dcs_last_seen{name=\"pg2\",scope=\"demo\"} 1900000000",
            "patroni_postmaster_start_time{name=\"pg2\",scope=\"demo\"} 1893456010.5",
            "# TYPE patroni_version gauge",
            "praetor_leader_lock_renewals_total{name=\"pg2\",result=\"renewed\",scope=\"demo\"} 1",
            "praetor_ha_loop_duration_seconds_count{name=\"pg2\",scope=\"demo\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        for spec in PATRONI {
            assert!(
                text.contains(&format!("# HELP {} ", spec.name)),
                "{} has a help line",
                spec.name
            );
        }
    }

    #[test]
    fn version_without_periods() {
        assert_eq!(version_number("4.1.0"), 40100.0);
        assert_eq!(version_number("0.1.0"), 100.0);
    }
}
