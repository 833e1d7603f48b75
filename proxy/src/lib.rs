//! The Praetor proxy: the application's endpoint to a PostgreSQL HA cluster.
//!
//! Clients connect to a read-write port, whose connections go to the cluster leader, a read-only
//! port, whose connections round-robin over fresh replicas (the leader when there is none), or the
//! auto port, which routes each transaction: reads to a replica, everything else to the leader. The
//! proxy follows the DCS and never guesses (design.md, rule 3): a backend is routable only as the DCS
//! describes it, and when the leader key moves every connection to the former leader is closed at once
//! (fencing), acknowledged in the DCS before the new leader gets any (the fencing handshake, see
//! [`Proxy`]'s module).
//!
//! The pieces, from the DCS to the socket:
//! - [`topology`]: [`topology_from_cluster`], the pure function from a DCS cluster view to a
//!   [`Topology`] (leader and replicas as [`Backend`]s).
//! - [`feed`]: [`spawn_dcs_feed`], which follows the DCS and publishes topologies on a
//!   `tokio::sync::watch` channel (tests and benchmarks feed a channel of their own instead).
//! - `router`: picks a backend per client (replicas within the lag limit) and owns the per-backend
//!   fence tokens.
//! - `stream`: client and server connections, plain or TLS (rustls), and their configuration.
//! - `conn`: one task per client: startup phase (via `praetor-protocol`, TLS), then for the
//!   read-write and read-only ports: connect, authentication relay watching for BackendKeyData, and a
//!   plain byte relay.
//! - `session`: the auto port's per-transaction routing (its I/O); `units`: the sans-I/O core that
//!   session executes (unit tracking, where each unit goes, when to release or park); `pool`: its
//!   server connections; `ryw`: the read-your-writes rule (where a read goes after the session
//!   wrote); `prepared`: named
//!   prepared statements tracked per client and server connection (transaction pooling).
//! - `cancel`: which backend issued which cancel key, to forward CancelRequests.
//! - `admin`: the admin console (`SHOW ...`, `PAUSE`, `RESUME`, `KILL`, `RECONNECT`, `WAIT_CLOSE`,
//!   `RELOAD`, PgBouncer's semantics); [`admin_auth`]: who may log in (`admin_users`, `auth_file`,
//!   SCRAM-SHA-256 or md5); `clients`: what it shows.
//! - [`metrics`]: Prometheus metrics in a registry owned by the proxy, served at `GET /metrics`.
//! - [`Proxy`]: binds the listeners ([`Proxy::bind`]) and serves until shutdown ([`Proxy::serve`]),
//!   with the fencing handshake when given the DCS ([`Proxy::with_dcs`]).
//!
//! Wiring, as `praetor proxy` does it:
//!
//! ```no_run
//! # async fn run(config: praetor_config::ProxyConfig, dcs: std::sync::Arc<dyn praetor_dcs::Dcs>)
//! # -> Result<(), praetor_proxy::ProxyError> {
//! use praetor_proxy::{spawn_dcs_feed, Proxy, ProxySettings};
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! let proxy = Proxy::bind(ProxySettings::from_config(&config)?).await?;
//! let feed = spawn_dcs_feed(dcs, shutdown.clone());
//! proxy.serve(feed, shutdown).await
//! # }
//! ```
#![warn(missing_docs)]

mod admin;
pub mod admin_auth;
pub mod auth;
mod cancel;
mod clients;
mod conn;
mod error;
pub mod feed;
pub mod metrics;
mod on_wake;
mod park;
mod pool;
mod prepared;
mod prepared_sql;
mod router;
mod rw;
mod rw_auth;
mod ryw;
mod server;
mod session;
mod settings;
mod signal;
mod stream;
pub mod topology;
mod units;
mod workers;

pub use conn::ReloadFn;
pub use error::ProxyError;
pub use feed::spawn_dcs_feed;
pub use metrics::{ListenerKind, RoutingError};
pub use server::{heartbeat_interval, route_confirmed, Proxy, Reloader, SHUTDOWN_GRACE};
pub use settings::{
    check_admin_access, is_loopback, LagPolicy, PoolMode, ProxySettings, Target,
    DEFAULT_CONNECT_TIMEOUT_SECS, DEFAULT_SHUTDOWN_TIMEOUT, DEFAULT_STARTUP_TIMEOUT,
};
pub use topology::{
    pending_switchover, topology_from_cluster, Backend, DcsClock, ReplicaLag, Switchover, Topology,
};
