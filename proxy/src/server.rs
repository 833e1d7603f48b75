//! [`Proxy`]: binds the listeners, then serves until shutdown.
//!
//! `serve` runs, all tracked by one [`TaskTracker`]: a task applying each topology from the feed to the
//! router (and fencing), one accept loop per listening socket spawning a task per client, and the
//! metrics HTTP server. Shutdown: stop accepting, close every client connection (clients still in the
//! startup phase watch the shutdown token, relayed ones are fenced), then wait for the tasks, at most
//! [`SHUTDOWN_GRACE`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use praetor_config::Address;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::cancel::CancelRegistry;
use crate::conn::{handle_client, Shared};
use crate::error::ProxyError;
use crate::metrics::{ListenerKind, Metrics};
use crate::router::Router;
use crate::settings::ProxySettings;
use crate::topology::Topology;

/// How long shutdown waits for connection tasks to finish after closing them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long an accept loop pauses after an accept error (out of file descriptors) before retrying.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A bound proxy, ready to [`serve`](Proxy::serve).
pub struct Proxy {
    read_write: Vec<TcpListener>,
    read_only: Vec<TcpListener>,
    metrics_listener: Option<TcpListener>,
    settings: ProxySettings,
    metrics: Metrics,
}

/// Binds `address` (each host of a comma-separated list; `*` is every IPv4 interface; names resolve to
/// all their addresses).
async fn bind_all(
    listener: &'static str,
    address: &Address,
) -> Result<Vec<TcpListener>, ProxyError> {
    let bind_error = |source| ProxyError::Bind {
        listener,
        address: address.to_string(),
        source,
    };
    let mut bound = Vec::new();
    for host in address
        .host
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
        let host = if host == "*" { "0.0.0.0" } else { host };
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, address.port))
            .await
            .map_err(bind_error)?
            .collect();
        for addr in addrs {
            bound.push(TcpListener::bind(addr).await.map_err(bind_error)?);
        }
    }
    if bound.is_empty() {
        return Err(bind_error(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no address to listen on",
        )));
    }
    Ok(bound)
}

fn first_addr(listeners: &[TcpListener]) -> Option<SocketAddr> {
    listeners.first().and_then(|l| l.local_addr().ok())
}

impl Proxy {
    /// Binds every configured listener (port 0 picks a free port; see [`Proxy::rw_addr`]) and
    /// creates the metrics registry. Errors: [`ProxyError::Bind`] naming the listener.
    pub async fn bind(settings: ProxySettings) -> Result<Proxy, ProxyError> {
        let read_write = match &settings.read_write {
            Some(a) => bind_all("read_write", a).await?,
            None => Vec::new(),
        };
        let read_only = match &settings.read_only {
            Some(a) => bind_all("read_only", a).await?,
            None => Vec::new(),
        };
        let metrics_listener = match &settings.metrics {
            Some(a) => bind_all("metrics", a).await?.into_iter().next(),
            None => None,
        };
        Ok(Proxy {
            read_write,
            read_only,
            metrics_listener,
            settings,
            metrics: Metrics::new()?,
        })
    }

    /// The read-write listener's address (the first, when the host lists several).
    pub fn rw_addr(&self) -> Option<SocketAddr> {
        first_addr(&self.read_write)
    }

    /// The read-only listener's address (the first, when the host lists several).
    pub fn ro_addr(&self) -> Option<SocketAddr> {
        first_addr(&self.read_only)
    }

    /// The metrics listener's address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The registry holding the proxy's metrics (served at `GET /metrics`).
    pub fn registry(&self) -> &Registry {
        &self.metrics.registry
    }

    /// Serves clients, routing by the topologies `feed` publishes, until `shutdown` is cancelled; then
    /// stops accepting, closes every client connection and waits (at most [`SHUTDOWN_GRACE`]) for
    /// their tasks.
    ///
    /// The topology in `feed` when called is in force at once. When the feed's sender goes away, the
    /// last topology stays in force.
    pub async fn serve(
        self,
        mut feed: watch::Receiver<Arc<Topology>>,
        shutdown: CancellationToken,
    ) -> Result<(), ProxyError> {
        let shared = Arc::new(Shared {
            router: Router::new(),
            cancels: CancelRegistry::default(),
            metrics: self.metrics,
            connect_timeout: self.settings.connect_timeout,
            startup_timeout: self.settings.startup_timeout,
        });
        apply_topology(&shared, feed.borrow_and_update().clone());
        let tracker = TaskTracker::new();

        tracker.spawn({
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        r = feed.changed() => if r.is_err() {
                            warn!("the topology feed ended; keeping the last topology");
                            return;
                        },
                    }
                    let topology = feed.borrow_and_update().clone();
                    apply_topology(&shared, topology);
                }
            }
        });

        let listeners = self
            .read_write
            .into_iter()
            .map(|l| (ListenerKind::ReadWrite, l))
            .chain(
                self.read_only
                    .into_iter()
                    .map(|l| (ListenerKind::ReadOnly, l)),
            );
        for (kind, listener) in listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(listener = kind.as_str(), %addr, "accepting clients");
            }
            tracker.spawn(accept_loop(
                listener,
                kind,
                shared.clone(),
                tracker.clone(),
                shutdown.clone(),
            ));
        }

        if let Some(listener) = self.metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, "serving metrics at /metrics");
            }
            let app = axum::Router::new()
                .route("/metrics", get(metrics_handler))
                .with_state(shared.clone());
            let stop = shutdown.clone();
            tracker.spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = served {
                    warn!(error = %e, "the metrics server stopped");
                }
            });
        }

        shutdown.cancelled().await;
        let closed = shared.router.fence_all();
        info!(closed, "shutting down: closed client connections");
        tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
            .await
            .is_err()
        {
            warn!(
                tasks = tracker.len(),
                "tasks still running after the shutdown grace period"
            );
        }
        Ok(())
    }
}

/// Applies a topology from the feed: counts leader changes, logs and counts fencing.
fn apply_topology(shared: &Shared, topology: Arc<Topology>) {
    let applied = shared.router.apply(topology.clone());
    if applied.leader_changed {
        shared.metrics.leader_changes_total.inc();
        match &topology.leader {
            Some(b) => info!(leader = %b, "leader changed"),
            None => warn!("no routable leader; read-write clients wait up to connect_timeout"),
        }
    }
    if let Some((former, closed)) = applied.fenced {
        shared
            .metrics
            .fenced_connections_total
            .inc_by(closed as u64);
        warn!(former = %former, closed, "fenced the former leader: closed its connections");
    }
}

async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((socket, peer)) => {
                let span = info_span!(
                    "client",
                    listener = kind.as_str(),
                    %peer,
                    backend = tracing::field::Empty
                );
                tracker.spawn(
                    handle_client(shared.clone(), kind, socket, shutdown.clone()).instrument(span),
                );
            }
            Err(e) => {
                // Typically out of file descriptors: pause rather than spin.
                warn!(listener = kind.as_str(), error = %e, "cannot accept a connection");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

async fn metrics_handler(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let since = shared
        .router
        .topology()
        .dcs_clock
        .elapsed_since_read(Instant::now());
    shared
        .metrics
        .seconds_since_last_dcs_event
        .set(since.as_secs_f64());
    debug!("metrics scraped");
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}
