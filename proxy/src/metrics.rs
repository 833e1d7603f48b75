//! The proxy's Prometheus metrics, in a registry owned by the [`crate::Proxy`] (no global registry).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `praetor_proxy_connections` | gauge: server connections open now | `listener`, `backend`, `role` |
//! | `praetor_proxy_connections_total` | counter: server connections opened | `listener`, `backend`, `role` |
//! | `praetor_proxy_client_connections` | gauge: client connections open now | `listener` |
//! | `praetor_proxy_transactions_total` | counter: transactions (or autocommit statements) routed on the auto port | `target` (`leader`, `replica`) |
//! | `praetor_proxy_transaction_duration_seconds` | histogram: auto-port transactions, first message to the ReadyForQuery that ends them | `target` |
//! | `praetor_proxy_pinned_sessions_total` | counter: auto-port sessions pinned to the leader | `reason` |
//! | `praetor_proxy_client_errors_total` | counter: clients closed for an error of theirs or of their session | `listener`, `reason` |
//! | `praetor_proxy_fencing_acks_total` | counter: routes acknowledged in the DCS (`praetor/proxies/<id>`) | |
//! | `praetor_proxy_serving` | gauge: 1 while serving, 0 while stopped for lack of DCS contact | |
//! | `praetor_proxy_pool_idle_connections` | gauge: idle server connections in the auto port's pool | |
//! | `praetor_proxy_parked_clients` | gauge: idle auto-port clients parked out of their tasks (computed at scrape) | |
//! | `praetor_proxy_reloads_total` | counter: configuration reloads | `result` (`ok`, `error`) |
//! | `praetor_proxy_bytes_total` | counter: bytes relayed (counted per read) | `listener`, `direction` |
//! | `praetor_proxy_routing_errors_total` | counter: clients refused | `listener`, `reason` |
//! | `praetor_proxy_fenced_connections_total` | counter: connections closed because their backend lost the leader key | |
//! | `praetor_proxy_seconds_since_last_dcs_event` | gauge: seconds since the last successful DCS read (computed at scrape) | |
//! | `praetor_proxy_leader_changes_total` | counter: changes of the routable leader | |
//! | `praetor_proxy_waiting_clients` | gauge: clients waiting for a routable backend (during a switchover) | `listener` |
//!
//! `listener` is `read_write`, `read_only` or `auto`; `direction` is `client_to_server` or
//! `server_to_client`; `role` is `leader` or `replica`; the routing `reason` is a [`RoutingError`].

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::ProxyError;

/// Which client listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// Connections go to the leader.
    ReadWrite,
    /// Connections go to a replica (round-robin), or to the leader when there is none.
    ReadOnly,
    /// Transactions are routed one by one: reads to a replica, the rest to the leader.
    Auto,
}

impl ListenerKind {
    /// `read_write` / `read_only`, as in the configuration and the `listener` label.
    pub fn as_str(&self) -> &'static str {
        match self {
            ListenerKind::ReadWrite => "read_write",
            ListenerKind::ReadOnly => "read_only",
            ListenerKind::Auto => "auto",
        }
    }
}

/// Why a client was refused a backend (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoutingError {
    /// No routable backend appeared within `connect_timeout`.
    NoBackend,
    /// The TCP connection to the backend was refused or failed.
    ConnectFailed,
    /// The TCP connection to the backend did not complete within `connect_timeout`.
    ConnectTimeout,
}

impl RoutingError {
    /// `no_backend`, `connect_failed`, `connect_timeout`.
    pub fn as_str(&self) -> &'static str {
        match self {
            RoutingError::NoBackend => "no_backend",
            RoutingError::ConnectFailed => "connect_failed",
            RoutingError::ConnectTimeout => "connect_timeout",
        }
    }
}

/// The metrics and the registry holding them.
#[derive(Clone)]
pub(crate) struct Metrics {
    pub registry: Registry,
    pub connections: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub bytes_total: IntCounterVec,
    pub routing_errors_total: IntCounterVec,
    pub fenced_connections_total: IntCounter,
    pub seconds_since_last_dcs_event: Gauge,
    pub leader_changes_total: IntCounter,
    pub waiting_clients: IntGaugeVec,
    pub client_connections: IntGaugeVec,
    pub transactions_total: IntCounterVec,
    /// The unit metrics of the targets `leader` and `replica`, in that order, resolved once: the
    /// auto port counts every unit, and a label lookup hashes and locks.
    pub units: [UnitMetrics; 2],
    pub pinned_total: IntCounterVec,
    /// Auto-port reads a replica refused for a standby's reason and the leader ran again.
    pub leader_retries_total: IntCounterVec,
    /// Auto-port reads of sessions that wrote, by where read-your-writes sent them
    /// (`replica`: the replica was known to have replayed the session's commit; `replica_asked`:
    /// asking the replica showed it had; `leader`: it had not, or nothing was known).
    pub read_your_writes_total: IntCounterVec,
    pub client_errors_total: IntCounterVec,
    pub fencing_acks_total: IntCounter,
    pub serving: IntGauge,
    pub pool_idle: IntGauge,
    pub parked_clients: IntGauge,
    pub reloads_total: IntCounterVec,
}

/// The auto port's series for one target: `praetor_proxy_transactions_total` and
/// `praetor_proxy_transaction_duration_seconds` (seconds from a unit's first message to the
/// ReadyForQuery that ends it).
#[derive(Clone)]
pub(crate) struct UnitMetrics {
    pub transactions: IntCounter,
    pub seconds: Histogram,
}

impl Metrics {
    pub fn new() -> Result<Metrics, ProxyError> {
        let registry = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new(
                "praetor_proxy_connections",
                "Server connections currently open, by client listener.",
            ),
            &["listener", "backend", "role"],
        )?;
        let connections_total = IntCounterVec::new(
            Opts::new(
                "praetor_proxy_connections_total",
                "Server connections opened since start.",
            ),
            &["listener", "backend", "role"],
        )?;
        let client_connections = IntGaugeVec::new(
            Opts::new(
                "praetor_proxy_client_connections",
                "Client connections currently open.",
            ),
            &["listener"],
        )?;
        let transactions_total = IntCounterVec::new(
            Opts::new(
                "praetor_proxy_transactions_total",
                "Transactions (or autocommit statements) routed on the auto port, by target.",
            ),
            &["target"],
        )?;
        let transaction_seconds = HistogramVec::new(
            HistogramOpts::new(
                "praetor_proxy_transaction_duration_seconds",
                "Auto-port transactions from the first message to the ReadyForQuery that ends them.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["target"],
        )?;
        let pinned_total = IntCounterVec::new(
            Opts::new(
                "praetor_proxy_pinned_sessions_total",
                "Auto-port sessions pinned to the leader because they hold session state.",
            ),
            &["reason"],
        )?;
        let leader_retries_total = IntCounterVec::new(
            Opts::new(
                "praetor_proxy_leader_retries_total",
                "Auto-port reads that failed on a replica for a standby's reason (SQLSTATE 0A000, 40001, 25006) before any result and ran again on the leader.",
            ),
            &["sqlstate"],
        )?;
        let read_your_writes_total = IntCounterVec::new(
            Opts::new(
                "praetor_proxy_read_your_writes_total",
                "Auto-port reads of sessions that wrote, by where read-your-writes sent them: replica (known to have replayed the session's last commit), replica_asked (the replica was asked and had), leader (it had not, or nothing was known).",
            ),
            &["route"],
        )?;
        let client_errors_total = IntCounterVec::new(
            Opts::new(
                "praetor_proxy_client_errors_total",
                "Client connections closed for an error (protocol, TLS, size limit, authentication, lost server).",
            ),
            &["listener", "reason"],
        )?;
        let fencing_acks_total = IntCounter::new(
            "praetor_proxy_fencing_acks_total",
            "Routes written to the DCS after fencing (praetor/proxies/<id>).",
        )?;
        let serving = IntGauge::new(
            "praetor_proxy_serving",
            "1 while the proxy serves, 0 while it stopped for lack of DCS contact.",
        )?;
        let pool_idle = IntGauge::new(
            "praetor_proxy_pool_idle_connections",
            "Idle server connections in the auto port's pool.",
        )?;
        let parked_clients = IntGauge::new(
            "praetor_proxy_parked_clients",
            "Idle auto-port clients parked out of their tasks (no server connection held).",
        )?;
        let reloads_total = IntCounterVec::new(
            Opts::new("praetor_proxy_reloads_total", "Configuration reloads."),
            &["result"],
        )?;
        let bytes_total = IntCounterVec::new(
            Opts::new("praetor_proxy_bytes_total", "Bytes relayed."),
            &["listener", "direction"],
        )?;
        let routing_errors_total = IntCounterVec::new(
            Opts::new(
                "praetor_proxy_routing_errors_total",
                "Clients refused because no backend could be reached.",
            ),
            &["listener", "reason"],
        )?;
        let fenced_connections_total = IntCounter::new(
            "praetor_proxy_fenced_connections_total",
            "Connections closed because their backend lost the leader key.",
        )?;
        let seconds_since_last_dcs_event = Gauge::new(
            "praetor_proxy_seconds_since_last_dcs_event",
            "Seconds since the DCS was last read successfully.",
        )?;
        let leader_changes_total = IntCounter::new(
            "praetor_proxy_leader_changes_total",
            "Changes of the routable leader seen in the DCS.",
        )?;
        let waiting_clients = IntGaugeVec::new(
            Opts::new(
                "praetor_proxy_waiting_clients",
                "Clients waiting for a routable backend (no leader during a switchover).",
            ),
            &["listener"],
        )?;
        registry.register(Box::new(waiting_clients.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(connections_total.clone()))?;
        registry.register(Box::new(bytes_total.clone()))?;
        registry.register(Box::new(routing_errors_total.clone()))?;
        registry.register(Box::new(fenced_connections_total.clone()))?;
        registry.register(Box::new(seconds_since_last_dcs_event.clone()))?;
        registry.register(Box::new(leader_changes_total.clone()))?;
        registry.register(Box::new(client_connections.clone()))?;
        registry.register(Box::new(transactions_total.clone()))?;
        registry.register(Box::new(transaction_seconds.clone()))?;
        registry.register(Box::new(pinned_total.clone()))?;
        registry.register(Box::new(leader_retries_total.clone()))?;
        registry.register(Box::new(read_your_writes_total.clone()))?;
        registry.register(Box::new(client_errors_total.clone()))?;
        registry.register(Box::new(fencing_acks_total.clone()))?;
        registry.register(Box::new(serving.clone()))?;
        registry.register(Box::new(pool_idle.clone()))?;
        registry.register(Box::new(parked_clients.clone()))?;
        registry.register(Box::new(reloads_total.clone()))?;
        serving.set(1);
        for route in ["replica", "replica_asked", "leader"] {
            read_your_writes_total.with_label_values(&[route]);
        }
        let units = ["leader", "replica"].map(|t| UnitMetrics {
            transactions: transactions_total.with_label_values(&[t]),
            seconds: transaction_seconds.with_label_values(&[t]),
        });
        for r in ["ok", "error"] {
            reloads_total.with_label_values(&[r]);
        }
        // Label sets known in advance exist from the start (a zero is more useful than no series).
        for l in [
            ListenerKind::ReadWrite,
            ListenerKind::ReadOnly,
            ListenerKind::Auto,
        ] {
            client_connections.with_label_values(&[l.as_str()]);
            waiting_clients.with_label_values(&[l.as_str()]);
            for d in ["client_to_server", "server_to_client"] {
                bytes_total.with_label_values(&[l.as_str(), d]);
            }
            for r in [
                RoutingError::NoBackend,
                RoutingError::ConnectFailed,
                RoutingError::ConnectTimeout,
            ] {
                routing_errors_total.with_label_values(&[l.as_str(), r.as_str()]);
            }
        }
        Ok(Metrics {
            registry,
            connections,
            connections_total,
            bytes_total,
            routing_errors_total,
            fenced_connections_total,
            seconds_since_last_dcs_event,
            leader_changes_total,
            waiting_clients,
            client_connections,
            transactions_total,
            units,
            pinned_total,
            leader_retries_total,
            read_your_writes_total,
            client_errors_total,
            fencing_acks_total,
            serving,
            pool_idle,
            parked_clients,
            reloads_total,
        })
    }

    /// Counts a client closed for `reason` (`protocol`, `tls`, `message_too_large`, `auth`,
    /// `server_lost`, `tls_required`).
    pub fn client_error(&self, listener: ListenerKind, reason: &str) {
        self.client_errors_total
            .with_label_values(&[listener.as_str(), reason])
            .inc();
    }

    /// The two byte counters of a connection on `listener`: (client→server, server→client).
    pub fn byte_counters(&self, listener: ListenerKind) -> (IntCounter, IntCounter) {
        (
            self.bytes_total
                .with_label_values(&[listener.as_str(), "client_to_server"]),
            self.bytes_total
                .with_label_values(&[listener.as_str(), "server_to_client"]),
        )
    }

    pub fn routing_error(&self, listener: ListenerKind, reason: RoutingError) {
        self.routing_errors_total
            .with_label_values(&[listener.as_str(), reason.as_str()])
            .inc();
    }

    /// Counts a server connection to `backend` in `role`; the returned gauge is decremented by the
    /// caller's guard.
    pub fn connection_opened(&self, listener: ListenerKind, backend: &str, role: &str) -> IntGauge {
        self.connections_total
            .with_label_values(&[listener.as_str(), backend, role])
            .inc();
        let gauge = self
            .connections
            .with_label_values(&[listener.as_str(), backend, role]);
        gauge.inc();
        gauge
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on invalid metric families, which the registry rules out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "cannot encode metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}
