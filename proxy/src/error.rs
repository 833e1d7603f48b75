//! The one error type of the crate.

use std::io;

/// What went wrong in the proxy itself (per-client failures are logged and counted, never returned).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A listener could not be bound.
    #[error("cannot listen on {address} for {listener}: {source}")]
    Bind {
        /// `read_write`, `read_only` or `metrics`.
        listener: &'static str,
        /// The address as configured.
        address: String,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// A configuration value the proxy cannot use.
    #[error("{key}: {reason}")]
    Config {
        /// The key path, e.g. `praetor.proxy.connect_timeout`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The session threads could not be started (see [`Proxy::with_workers`](crate::Proxy::with_workers)).
    #[error("cannot start the session threads: {0}")]
    Workers(#[source] io::Error),
    /// A metric could not be registered (a name registered twice).
    #[error("cannot register metric: {0}")]
    Metrics(#[from] prometheus::Error),
}
