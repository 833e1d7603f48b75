//! [`Proxy`]: binds the listeners, then serves until shutdown.
//!
//! `serve` runs, all tracked by one [`TaskTracker`]: the topology task (applies each topology from the
//! feed to the router, fences, and, with a DCS, runs the fencing handshake and the DCS-contact
//! check), one accept loop per listening socket spawning a task per client, the admin console and
//! the metrics HTTP server.
//!
//! Shutdown drains: stop accepting, let clients finish for up to `shutdown_timeout` (auto-port
//! sessions close at their next idle point, read-write and read-only sessions when their clients
//! leave), then close every connection and wait for the tasks, at most [`SHUTDOWN_GRACE`].
//!
//! ## The fencing handshake (proxy side)
//!
//! With a DCS ([`Proxy::with_dcs`]) the proxy owns `praetor/proxies/<id>` on its own lease, whose TTL
//! is the cluster's `ttl`. When the leader it routes writes to changes from A to B (B may be none):
//! 1. it stops routing to A and fences every connection to A (both ports, and pooled ones);
//! 2. it waits until those connections are closed (sockets dropped), then shuts down by force the
//!    server sockets still open: after `FENCE_CLOSE_TIMEOUT` in a switchover (A was asked to step
//!    down), at once in a failover ([`crate::router::fence_close_wait`]);
//! 3. it writes `{"leader": "B"}` (or `null`) to its key, then reads the DCS again and goes on only
//!    if the `leader` key still names B ([`route_confirmed`]: the route came from an earlier read,
//!    and the lock may have moved on before the key was written);
//! 4. only then does it route writes to B.
//!
//! It rewrites the key every `ttl / 3` (refreshing its lease). If no write has succeeded for
//! `ttl - margin` since it started (computed from the session the DCS granted instead when that is
//! shorter: ZooKeeper clamps session timeouts to its `maxSessionTimeout`), it stops serving: every connection is fenced (server
//! sockets still open are shut down by force at once) and new clients are refused until a write
//! succeeds again. Its lease cannot expire before that moment, so an agent
//! that sees no key naming A (`Cluster::proxies_fenced_from`) knows no statement from this proxy can
//! reach A any more. Limit: a proxy partitioned from the DCS keeps serving its current routes for up
//! to `ttl - margin`; agents must wait up to `ttl` for its key to expire before treating it as gone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use praetor_config::Address;
use praetor_dcs::{Cluster, Dcs, ProxyState};
use prometheus::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::park::{ParkingLot, Resume};
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::conn::{handle_client, ReloadFn, Runtime, Shared};
use crate::error::ProxyError;
use crate::metrics::{ListenerKind, Metrics};
use crate::settings::ProxySettings;
use crate::signal::Signal;
use crate::topology::{Backend, Topology};
use crate::workers::Workers;

/// How long shutdown waits for connection tasks to finish after closing them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long an accept loop pauses after an accept error (out of file descriptors) before retrying.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How long the handshake waits, in a switchover, for the tasks of fenced connections to close them
/// before it shuts their server sockets down by force (a task that does not is stuck writing to a
/// client that does not read); the acknowledgement is written only after that. A failover does not
/// wait ([`crate::router::fence_close_wait`]); neither does it when the proxy stops serving.
const FENCE_CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The TTL assumed until the cluster's configuration is read.
const DEFAULT_TTL_SECS: u32 = 30;

/// A bound proxy, ready to [`serve`](Proxy::serve).
pub struct Proxy {
    read_write: Vec<TcpListener>,
    read_only: Vec<TcpListener>,
    auto: Vec<TcpListener>,
    admin: Vec<TcpListener>,
    metrics_listener: Option<TcpListener>,
    shared: Arc<Shared>,
    dcs: Option<(Arc<dyn Dcs>, String)>,
    /// Session threads to start in `serve`; 0: sessions run on the caller's runtime.
    workers: usize,
}

/// Re-reads the configuration of a running proxy (SIGHUP; the admin console's `RELOAD`).
#[derive(Clone)]
pub struct Reloader(Arc<Shared>);

impl Reloader {
    /// Reloads through the hook given to [`Proxy::with_reload`]; returns notes for the operator
    /// (settings that need a restart). Open connections are not touched.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        self.0.reload()
    }
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

async fn bind_opt(
    name: &'static str,
    address: &Option<Address>,
) -> Result<Vec<TcpListener>, ProxyError> {
    match address {
        Some(a) => bind_all(name, a).await,
        None => Ok(Vec::new()),
    }
}

impl Proxy {
    /// Binds every configured listener (port 0 picks a free port; see [`Proxy::rw_addr`]), loads
    /// the TLS certificate and creates the metrics registry. Errors: [`ProxyError::Bind`] naming the
    /// listener, [`ProxyError::Config`] for an unusable certificate.
    pub async fn bind(settings: ProxySettings) -> Result<Proxy, ProxyError> {
        let runtime = Runtime::from_settings(&settings)?;
        crate::settings::check_admin_access(settings.admin.as_ref(), &settings.admin_access)?;
        let read_write = bind_opt("read_write", &settings.read_write).await?;
        let read_only = bind_opt("read_only", &settings.read_only).await?;
        let auto = bind_opt("auto", &settings.auto).await?;
        let admin = bind_opt("admin", &settings.admin).await?;
        let metrics_listener = bind_opt("metrics", &settings.metrics)
            .await?
            .into_iter()
            .next();
        let metrics = Metrics::new()?;
        Ok(Proxy {
            read_write,
            read_only,
            auto,
            admin,
            metrics_listener,
            shared: Arc::new(Shared::new(metrics, runtime, settings, None)),
            dcs: None,
            workers: 0,
        })
    }

    /// Runs client sessions on `n` threads of their own, each with a single-threaded runtime (see
    /// the `workers` module: fewer wake-ups per relayed round trip than tokio's multi-threaded
    /// scheduler). Without it, or with 0, sessions are tasks of the runtime that calls `serve`.
    /// `praetor proxy --threads N` sets it (default: one per CPU).
    pub fn with_workers(mut self, n: usize) -> Proxy {
        self.workers = n;
        self
    }

    /// Runs the fencing handshake and the DCS-contact check against `dcs` as proxy `id` (see the
    /// module documentation). Without it the proxy follows its feed only (tests, benchmarks).
    pub fn with_dcs(mut self, dcs: Arc<dyn Dcs>, id: impl Into<String>) -> Proxy {
        self.dcs = Some((dcs, id.into()));
        self
    }

    /// Makes `reload` the way to re-read the configuration (SIGHUP, `RELOAD`).
    pub fn with_reload(mut self, reload: ReloadFn) -> Proxy {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.reload = Some(reload),
            None => warn!("with_reload called after a reloader was handed out; ignored"),
        }
        self
    }

    /// A handle to reload this proxy's configuration while it serves.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.shared.clone())
    }

    /// The read-write listener's address (the first, when the host lists several).
    pub fn rw_addr(&self) -> Option<SocketAddr> {
        first_addr(&self.read_write)
    }

    /// The read-only listener's address (the first, when the host lists several).
    pub fn ro_addr(&self) -> Option<SocketAddr> {
        first_addr(&self.read_only)
    }

    /// The auto listener's address.
    pub fn auto_addr(&self) -> Option<SocketAddr> {
        first_addr(&self.auto)
    }

    /// The admin console's address.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        first_addr(&self.admin)
    }

    /// The metrics listener's address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The registry holding the proxy's metrics (served at `GET /metrics`).
    pub fn registry(&self) -> &Registry {
        &self.shared.metrics.registry
    }

    /// Serves clients, routing by the topologies `feed` publishes, until `shutdown` is cancelled; then
    /// drains (see the module documentation) and returns.
    ///
    /// The topology in `feed` when called is in force at once (after the handshake, with a DCS).
    /// When the feed's sender goes away, the last topology stays in force.
    pub async fn serve(
        self,
        feed: watch::Receiver<Arc<Topology>>,
        shutdown: CancellationToken,
    ) -> Result<(), ProxyError> {
        let shared = self.shared;
        let tracker = TaskTracker::new();
        // Connections are closed by `stop`, after the drain; the listeners by `shutdown`.
        let stop = Signal::new();
        let workers = match self.workers {
            0 => None,
            n => Some(Arc::new(Workers::start(n).map_err(ProxyError::Workers)?)),
        };

        let parking = start_parking(&shared, &tracker, &stop, workers.clone());

        tracker.spawn(topology_task(
            shared.clone(),
            feed,
            self.dcs.clone(),
            stop.child_token(),
        ));

        let listeners = self
            .read_write
            .into_iter()
            .map(|l| (Some(ListenerKind::ReadWrite), l))
            .chain(
                self.read_only
                    .into_iter()
                    .map(|l| (Some(ListenerKind::ReadOnly), l)),
            )
            .chain(self.auto.into_iter().map(|l| (Some(ListenerKind::Auto), l)))
            .chain(self.admin.into_iter().map(|l| (None, l)));
        for (kind, listener) in listeners {
            if let Ok(addr) = listener.local_addr() {
                info!(listener = kind.map_or("admin", |k| k.as_str()), %addr, "accepting clients");
            }
            tracker.spawn(accept_loop(
                listener,
                kind,
                shared.clone(),
                tracker.clone(),
                workers.clone(),
                shutdown.clone(),
                stop.clone(),
            ));
        }

        if let Some(listener) = self.metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, "serving metrics at /metrics");
            }
            let app = axum::Router::new()
                .route("/metrics", get(metrics_handler))
                .with_state(shared.clone());
            let stop = stop.child_token();
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
        // Drain: no new clients (accept loops stop on `shutdown`); auto sessions leave at their next
        // idle point; others until they finish or the timeout.
        shared.draining.fire();
        if let Some(lot) = parking.as_deref() {
            let closed = lot.drain();
            if closed > 0 {
                info!(closed, "shutting down: closed the parked idle clients");
            }
        }
        let timeout = shared.runtime().shutdown_timeout;
        let clients = shared.clients.len();
        if clients > 0 {
            info!(clients, timeout = ?timeout, "shutting down: waiting for clients to finish");
            let deadline = tokio::time::Instant::now() + timeout;
            while shared.clients.len() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let closed = shared.router.fence_all();
        shared.pool.clear();
        stop.fire();
        info!(
            closed,
            "shutting down: closed the remaining client connections"
        );
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
        if let Some((dcs, id)) = &self.dcs {
            // Revoking the lease removes our key at once: agents need not wait for it.
            if let Err(e) = dcs.close().await {
                debug!(%id, error = %e, "cannot revoke the proxy's DCS lease; it will expire");
            }
        }
        Ok(())
    }
}

/// Applies a topology: counts leader changes, logs and counts fencing, drops fenced pooled
/// connections. Returns the fenced connections still closing.
fn apply_topology(shared: &Shared, topology: Arc<Topology>) -> crate::router::Closing {
    let applied = shared.router.apply(topology.clone());
    if applied.leader_changed {
        shared.metrics.leader_changes_total.inc();
        match &topology.leader {
            Some(b) => info!(leader = %b, "leader changed"),
            None => warn!("no routable leader; read-write clients wait up to connect_timeout"),
        }
    }
    if let Some((former, closed)) = &applied.fenced {
        shared
            .metrics
            .fenced_connections_total
            .inc_by(*closed as u64);
        warn!(former = %former, closed, "fenced the former leader: closed its connections");
    }
    let pooled = shared.pool.purge_fenced();
    if pooled > 0 {
        debug!(pooled, "closed fenced pooled connections");
    }
    applied.closing
}

/// How often a proxy rewrites its `praetor/proxies/<id>` key while its route stays the same: a third
/// of the lease's `ttl_secs`, at least 500 ms, so that two writes can fail before the contact
/// deadline ([`ProxyState::contact_deadline_within`]) stops the proxy. Pure, for the HA simulation.
pub fn heartbeat_interval(ttl_secs: u32) -> Duration {
    (Duration::from_secs(ttl_secs.into()) / 3).max(Duration::from_millis(500))
}

/// Step 3b of the fencing handshake, the rule: an acknowledgement of a route to `leader`, written to
/// the DCS, lets the proxy route writes there only if `after_ack`, a read of the DCS made after the
/// write returned, shows the `leader` key still naming that member. `None` (no leader) routes nothing
/// and needs no confirmation. Pure, for the HA simulation.
///
/// Why: the route comes from an earlier read (the feed's topology, which may be stale by a DCS round
/// trip or by a whole partition). If the lock moved on meanwhile, the member that took it may have
/// read this proxy's key before the write landed, seen no proxy routing to the former leader, and
/// promoted: routing there now would send writes to a former leader (found by the HA simulation,
/// seeds 8889 and 30815). A read after the write that still shows the lock held by `leader` means the
/// lock was not taken over before the key was written, so a member that takes it later reads the key
/// naming `leader` after taking the lock (the agent re-reads the proxies' keys once it holds it) and
/// waits for this proxy to leave.
pub fn route_confirmed(after_ack: &Cluster, leader: Option<&str>) -> bool {
    leader.is_none_or(|l| after_ack.leader.as_ref().is_some_and(|k| k.name == l))
}

/// What the handshake has acknowledged in the DCS.
struct Handshake {
    dcs: Arc<dyn Dcs>,
    id: String,
    /// The leader route last written (`Some(None)`: none); `None`: nothing written yet, or must be
    /// written again.
    acked: Option<Option<Backend>>,
    /// When the last successful write started.
    last_ok: Option<Instant>,
    /// When the proxy started (the DCS-contact check counts from here before the first write).
    started: Instant,
    ttl_secs: u32,
    ttl_set: bool,
}

impl Handshake {
    /// How long the proxy serves without a successful write: from the ttl, or from the session the
    /// DCS granted when that is shorter (its key must not expire while it still serves).
    fn deadline(&self) -> Duration {
        ProxyState::contact_deadline_within(self.ttl_secs, self.dcs.granted_ttl())
    }

    fn interval(&self) -> Duration {
        heartbeat_interval(self.ttl_secs)
    }

    /// Writes the route `leader`; records success.
    async fn write(&mut self, leader: &Option<Backend>) -> bool {
        let started = Instant::now();
        let state = ProxyState {
            leader: leader.as_ref().map(|b| b.member().to_string()),
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs() as i64),
        };
        let limit = self.call_limit(started);
        let written = tokio::time::timeout(limit, self.dcs.set_proxy_state(&self.id, &state)).await;
        match written {
            Ok(Ok(())) => {
                self.last_ok = Some(started);
                true
            }
            Ok(Err(e)) => {
                debug!(id = %self.id, error = %e, "cannot write the proxy's route to the DCS");
                false
            }
            Err(_) => {
                debug!(id = %self.id, "writing the proxy's route to the DCS timed out");
                false
            }
        }
    }

    /// How long one DCS call may take from `started`: never past the moment the proxy must stop
    /// serving (that check must not wait on a call), at least 100 ms, at most the heartbeat interval.
    fn call_limit(&self, started: Instant) -> Duration {
        self.suspend_at()
            .saturating_duration_since(started)
            .clamp(Duration::from_millis(100), self.interval())
    }

    /// Step 3b: after `leader` was written, reads the DCS again and says whether the route may be
    /// taken ([`route_confirmed`]). A failed or late read confirms nothing.
    async fn confirm(&self, leader: &Option<Backend>) -> bool {
        let Some(leader) = leader else {
            return true;
        };
        let limit = self.call_limit(Instant::now());
        match tokio::time::timeout(limit, self.dcs.load()).await {
            Ok(Ok(cluster)) => {
                let confirmed = route_confirmed(&cluster, Some(leader.member()));
                if !confirmed {
                    info!(id = %self.id, leader = %leader.member(), lock = ?cluster.leader.as_ref().map(|l| l.name.as_str()), "acknowledged a route whose leader no longer holds the lock: not routing it");
                }
                confirmed
            }
            Ok(Err(e)) => {
                debug!(id = %self.id, error = %e, "cannot read the DCS to confirm the route");
                false
            }
            Err(_) => {
                debug!(id = %self.id, "reading the DCS to confirm the route timed out");
                false
            }
        }
    }

    /// When the proxy must stop serving unless a write succeeds first.
    fn suspend_at(&self) -> Instant {
        self.last_ok.unwrap_or(self.started) + self.deadline()
    }

    /// True when the proxy has been without a successful write for too long.
    fn out_of_contact(&self, now: Instant) -> bool {
        now >= self.suspend_at()
    }
}

/// Follows the feed; with a DCS, acknowledges each leader change after fencing, heartbeats, and
/// stops serving when out of contact.
async fn topology_task(
    shared: Arc<Shared>,
    mut feed: watch::Receiver<Arc<Topology>>,
    dcs: Option<(Arc<dyn Dcs>, String)>,
    stop: CancellationToken,
) {
    let Some((dcs, id)) = dcs else {
        apply_topology(&shared, feed.borrow_and_update().clone());
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                r = feed.changed() => if r.is_err() {
                    warn!("the topology feed ended; keeping the last topology");
                    return;
                },
            }
            let topology = feed.borrow_and_update().clone();
            apply_topology(&shared, topology);
        }
    };
    let mut hs = Handshake {
        dcs,
        id,
        acked: None,
        last_ok: None,
        started: Instant::now(),
        ttl_secs: DEFAULT_TTL_SECS,
        ttl_set: false,
    };
    // Nothing is routed until the first route is acknowledged.
    apply_topology(
        &shared,
        Arc::new(Topology {
            leader: None,
            ..(**feed.borrow()).clone()
        }),
    );
    let mut feed_open = true;
    let mut next_heartbeat = tokio::time::Instant::now();
    loop {
        let topology = feed.borrow_and_update().clone();
        if let Some(ttl) = topology.ttl_secs {
            if ttl != hs.ttl_secs || !hs.ttl_set {
                hs.ttl_secs = ttl.max(2);
                hs.ttl_set = true;
                if let Err(e) = hs.dcs.set_ttl(hs.ttl_secs).await {
                    debug!(error = %e, "cannot change the proxy's lease TTL");
                }
                hs.acked = None; // rewrite on the new lease
            }
        }
        let routed = shared.router.topology();
        if hs.acked.as_ref() != Some(&topology.leader) {
            // Steps 1 and 2: stop routing to the former leader and wait for its connections.
            if routed.leader.is_some() && routed.leader != topology.leader {
                let wait = crate::router::fence_close_wait(&routed, FENCE_CLOSE_TIMEOUT);
                let closing = apply_topology(
                    &shared,
                    Arc::new(Topology {
                        leader: None,
                        ..(*topology).clone()
                    }),
                );
                let forced = closing.close(wait).await;
                if forced > 0 && wait.is_zero() {
                    info!(forced, "failover: shut down by force the server sockets of the fenced connections to the former leader still open");
                } else if forced > 0 {
                    warn!(forced, "fenced connections to the former leader did not close within {wait:?} (switchover): shut their server sockets down by force");
                }
            }
            // Step 3: acknowledge, and 3b: confirm that the lock did not move on meanwhile.
            if hs.write(&topology.leader).await && hs.confirm(&topology.leader).await {
                shared.metrics.fencing_acks_total.inc();
                info!(id = %hs.id, leader = ?topology.leader.as_ref().map(|b| b.member()), "acknowledged the route in the DCS");
                hs.acked = Some(topology.leader.clone());
                if shared.router.resume() {
                    info!("DCS contact is back; serving again");
                    shared.metrics.serving.set(1);
                }
                // Step 4.
                apply_topology(&shared, topology.clone());
            } else {
                // The write failed or timed out, but it may have landed: what the DCS shows is
                // unknown, so nothing counts as acknowledged until a write succeeds. (Keeping the
                // former acknowledgement let a topology that flipped back be routed without a
                // write while the DCS may name the other leader: found by the HA simulation.) An
                // unconfirmed route (3b) is not taken either; it is retried with the feed's next
                // topology. Keeping a route already taken is safe: its leader's name stayed in the
                // key all along, so no member promotes past it.
                hs.acked = None;
                if routed.leader == topology.leader {
                    // Same route, failed rewrite (lease change): keep serving it.
                    apply_topology(&shared, topology.clone());
                }
            }
            next_heartbeat = tokio::time::Instant::now() + hs.interval();
        } else if *routed != *topology {
            apply_topology(&shared, topology.clone());
        }

        if hs.out_of_contact(Instant::now()) && !shared.router.is_suspended() {
            let (closing, _) = shared
                .router
                .suspend(&format!("no DCS contact for {:?}", hs.deadline()));
            shared.pool.purge_fenced();
            shared.metrics.serving.set(0);
            error!(deadline = ?hs.deadline(), "lost contact with the DCS: stopped serving");
            // At once: agents stop waiting for this proxy at the same deadline, less only a
            // margin of ttl/5 (at least 1 s) before its key expires: a wait of its own would run
            // past that margin.
            let forced = closing.close(Duration::ZERO).await;
            if forced > 0 {
                info!(
                    forced,
                    "shut down by force the server sockets of the connections still open"
                );
            }
            hs.acked = None;
        }

        let retry = if hs.acked.is_none() {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3600)
        };
        let mut wake_at = next_heartbeat.min(tokio::time::Instant::now() + retry);
        if !shared.router.is_suspended() {
            wake_at = wake_at.min(tokio::time::Instant::from_std(hs.suspend_at()));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = feed.changed(), if feed_open => if r.is_err() {
                warn!("the topology feed ended; keeping the last topology");
                feed_open = false;
            },
            _ = tokio::time::sleep_until(wake_at) => {
                if tokio::time::Instant::now() >= next_heartbeat {
                    next_heartbeat = tokio::time::Instant::now() + hs.interval();
                    if let Some(leader) = hs.acked.clone() {
                        if !hs.write(&leader).await {
                            warn!(id = %hs.id, "cannot refresh the proxy's route in the DCS");
                        }
                    }
                }
            }
        }
    }
}

/// Starts the parking lot for idle auto-port sessions ([`crate::park`]); a session it gives back
/// runs again as a task of `tracker`. Without it (the epoll instance or thread cannot be created)
/// idle sessions stay in their tasks.
fn start_parking(
    shared: &Arc<Shared>,
    tracker: &TaskTracker,
    stop: &Signal,
    workers: Option<Arc<Workers>>,
) -> Option<LotGuard> {
    let resume: Resume = {
        let (shared, tracker, stop) = (shared.clone(), tracker.clone(), stop.clone());
        let runtime = tokio::runtime::Handle::current();
        Box::new(move |client, dormant| {
            let span = dormant.span();
            let runtime = workers.as_ref().map_or(&runtime, |w| w.next());
            tracker.spawn_on(
                crate::session::resume(shared.clone(), client, dormant, stop.clone())
                    .instrument(span),
                runtime,
            );
        })
    };
    match ParkingLot::start(resume) {
        Ok(lot) => {
            let _ = shared.parking.set(lot.clone());
            Some(LotGuard(lot))
        }
        Err(e) => {
            warn!(error = %e, "cannot start the parking lot: idle sessions stay in their tasks");
            None
        }
    }
}

/// Stops the parking lot's thread when `serve` ends, however it ends (the thread holds the
/// proxy's shared state).
struct LotGuard(Arc<ParkingLot>);

impl std::ops::Deref for LotGuard {
    type Target = ParkingLot;

    fn deref(&self) -> &ParkingLot {
        &self.0
    }
}

impl Drop for LotGuard {
    fn drop(&mut self) {
        self.0.close();
    }
}

async fn accept_loop(
    listener: TcpListener,
    kind: Option<ListenerKind>,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    workers: Option<Arc<Workers>>,
    shutdown: CancellationToken,
    stop: Signal,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((socket, peer)) => match kind {
                Some(kind) => {
                    let span = info_span!(
                        "client",
                        listener = kind.as_str(),
                        %peer,
                        backend = tracing::field::Empty
                    );
                    let (shared, stop) = (shared.clone(), stop.clone());
                    spawn_session(&tracker, workers.as_deref(), socket, span, move |socket| {
                        handle_client(shared, kind, socket, peer, stop)
                    });
                }
                None => {
                    tracker.spawn(crate::admin::serve_admin(
                        shared.clone(),
                        socket,
                        peer,
                        stop.child_token(),
                    ));
                }
            },
            Err(e) => {
                // Typically out of file descriptors: pause rather than spin.
                warn!(listener = kind.map_or("admin", |k| k.as_str()), error = %e, "cannot accept a connection");
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(ACCEPT_ERROR_PAUSE) => {}
                }
            }
        }
    }
}

/// Spawns the session `serve` makes of a client's socket: on the caller's runtime, or on the next
/// session thread, to which the socket moves (out of this runtime's epoll, into that thread's).
fn spawn_session<F>(
    tracker: &TaskTracker,
    workers: Option<&Workers>,
    socket: TcpStream,
    span: tracing::Span,
    serve: impl FnOnce(TcpStream) -> F + Send + 'static,
) where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(workers) = workers else {
        tracker.spawn(serve(socket).instrument(span));
        return;
    };
    let socket = match socket.into_std() {
        Ok(socket) => socket,
        Err(e) => return warn!(error = %e, "cannot hand a client connection to a session thread"),
    };
    let session = async move {
        match TcpStream::from_std(socket) {
            Ok(socket) => serve(socket).await,
            Err(e) => warn!(error = %e, "cannot register a client connection"),
        }
    };
    tracker.spawn_on(session.instrument(span), workers.next());
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
    let parked = shared.parking.get().map_or(0, |lot| lot.len());
    shared.metrics.parked_clients.set(parked as i64);
    debug!("metrics scraped");
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}
