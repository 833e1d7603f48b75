//! The proxy's Prometheus metrics, in a registry owned by the [`crate::Proxy`] (no global registry).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `praetor_proxy_connections` | gauge: client connections relayed now | `listener`, `backend` |
//! | `praetor_proxy_connections_total` | counter: client connections given a backend | `listener`, `backend` |
//! | `praetor_proxy_bytes_total` | counter: bytes relayed (counted per read) | `listener`, `direction` |
//! | `praetor_proxy_routing_errors_total` | counter: clients refused | `listener`, `reason` |
//! | `praetor_proxy_fenced_connections_total` | counter: connections closed because their backend lost the leader key | |
//! | `praetor_proxy_seconds_since_last_dcs_event` | gauge: seconds since the last successful DCS read (computed at scrape) | |
//! | `praetor_proxy_leader_changes_total` | counter: changes of the routable leader | |
//! | `praetor_proxy_waiting_clients` | gauge: clients waiting for a routable backend (during a switchover) | `listener` |
//!
//! `listener` is `read_write` or `read_only`; `direction` is `client_to_server` or
//! `server_to_client`; `reason` is a [`RoutingError`].

use prometheus::{
    Encoder, Gauge, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::error::ProxyError;

/// Which client listener a connection came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListenerKind {
    /// Connections go to the leader.
    ReadWrite,
    /// Connections go to a replica (round-robin), or to the leader when there is none.
    ReadOnly,
}

impl ListenerKind {
    /// `read_write` / `read_only`, as in the configuration and the `listener` label.
    pub fn as_str(&self) -> &'static str {
        match self {
            ListenerKind::ReadWrite => "read_write",
            ListenerKind::ReadOnly => "read_only",
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
}

impl Metrics {
    pub fn new() -> Result<Metrics, ProxyError> {
        let registry = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new(
                "praetor_proxy_connections",
                "Client connections currently relayed to a backend.",
            ),
            &["listener", "backend"],
        )?;
        let connections_total = IntCounterVec::new(
            Opts::new(
                "praetor_proxy_connections_total",
                "Client connections given a backend since start.",
            ),
            &["listener", "backend"],
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
        // Label sets known in advance exist from the start (a zero is more useful than no series).
        for l in [ListenerKind::ReadWrite, ListenerKind::ReadOnly] {
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
        })
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

    /// Counts a connection given `backend`; the returned gauge is decremented by the caller's guard.
    pub fn connection_opened(&self, listener: ListenerKind, backend: &str) -> IntGauge {
        self.connections_total
            .with_label_values(&[listener.as_str(), backend])
            .inc();
        let gauge = self
            .connections
            .with_label_values(&[listener.as_str(), backend]);
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
