//! One client connection, from its first byte to close. The decisions are made by the protocol crate
//! (what the client sent), the [`Router`] (where it goes) and the connection's [`Fence`] (when it must stop);
//! this module only moves bytes between them.
//!
//! 1. Startup phase: decode the client's packets with [`StartupPhase`]; answer SSLRequest with `S`
//!    and a TLS handshake when TLS is configured (`N` otherwise) and GSSENCRequest with `N`; forward a
//!    CancelRequest to the backend that issued its key; stop at the StartupMessage. Garbage or an
//!    oversized packet closes this client with an ErrorResponse. Auto-port clients continue in
//!    `session`; the read-write and read-only ports go on here.
//! 2. Route and connect: pick a backend (waiting up to `connect_timeout` for one), connect with
//!    `connect_timeout` and TCP_NODELAY; on failure answer `FATAL 08006` naming the backend.
//! 3. Backend startup: forward the StartupMessage unchanged, relay authentication both ways, watch the
//!    server's messages for BackendKeyData (registered for cancel requests) until the first
//!    ReadyForQuery. A server that answers "not accepting connections" (57P03: shutting down or
//!    starting up, as during a switchover) before anything reached the client holds the client and
//!    retries, up to `connect_timeout`.
//! 4. Relay: copy bytes both ways unchanged, one buffer per direction, until either side closes,
//!    the backend is fenced or the proxy shuts down. The bytes are walked for message headers
//!    ([`crate::rw`]) so that a read-write session follows a switchover (held at its transaction
//!    boundary, drained, moved to the new leader), and `PAUSE` and `RECONNECT` act at a
//!    transaction boundary on both ports.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::pin;
use std::sync::{Arc, RwLock};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use praetor_protocol::backend::{
    AUTHENTICATION, BACKEND_KEY_DATA, ERROR_RESPONSE, READY_FOR_QUERY,
};
use praetor_protocol::frontend::strip_channel_binding;
use praetor_protocol::startup::check_truncated;
use praetor_protocol::{
    encode_error_response, CancelKey, Classifier, ErrorFields, FrameHeader, PasswordAuth, Severity,
    SqlState, StartupMessage, StartupPacket, StartupPhase, ENCRYPTION_REFUSED,
};
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::cancel::{CancelRegistry, Registration};
use crate::clients::{ClientGuard, Clients};
use crate::error::ProxyError;
use crate::metrics::{ListenerKind, Metrics, RoutingError};
use crate::on_wake::Branches;
use crate::pool::{open, OpenError, Pool, ServerConn};
use crate::router::{Fence, Route, Router, Want};
use crate::rw::{
    after_server_end, drain, scan_unasked, should_hold, should_reconnect, Drain, Next, RwTracker,
    ServerEnd, Unasked,
};
use crate::rw_auth::{relogin, LoginWatch, Relogin};
use crate::settings::{ProxySettings, Target};
use crate::signal::Signal;
use crate::stream::{client_tls, BackendTls, ClientStream, ClientTls, ServerStream};
use crate::topology::Backend;

/// Capacity of each relay buffer (one per direction), in bytes: large enough that a big result set
/// moves in few reads, small enough for thousands of connections.
const RELAY_BUFFER_BYTES: usize = 64 * 1024;

/// Initial capacity of the startup-phase read buffer, in bytes.
const STARTUP_BUFFER_BYTES: usize = 1024;

/// How long writing a final ErrorResponse to a client may take before the proxy just closes.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times a client whose backend was fenced while connecting is routed again.
const MAX_ROUTE_ATTEMPTS: usize = 3;

/// How often a client held by a server that is not accepting connections (57P03) retries, at most.
const NOT_READY_RETRY: Duration = Duration::from_millis(200);

/// The settings a reload can change, in the form connections use them. Connections take the
/// current one when they start.
pub(crate) struct Runtime {
    pub connect_timeout: Duration,
    pub startup_timeout: Duration,
    pub tls: Option<ClientTls>,
    pub backend_tls: BackendTls,
    pub max_message_size: usize,
    /// `client_message_timeout`: how long an auto-port client may pause in the middle of a message.
    pub message_timeout: Duration,
    /// `max_client_conn`: client connections over all listeners (the admin console aside).
    pub max_client_conn: usize,
    pub classifier: Arc<Classifier>,
    pub database_targets: HashMap<String, Target>,
    /// `read_your_writes`, and per database where given.
    pub read_your_writes: bool,
    pub database_read_your_writes: HashMap<String, bool>,
    pub pool_size: usize,
    pub pool_mode: crate::settings::PoolMode,
    /// `databases.<db>.pool_mode`, where given.
    pub database_pool_modes: HashMap<String, crate::settings::PoolMode>,
    /// `max_prepared_statements`: 0 leaves named statements pinning sessions.
    pub max_prepared_statements: usize,
    pub query_wait_timeout: Duration,
    pub idle_release: Duration,
    /// `idle_release_ms` for databases pooled in `auto` mode under a global `transaction`.
    pub auto_idle_release: Duration,
    pub shutdown_timeout: Duration,
    /// `drain_timeout`: how long a transaction on the leader (read-write port, auto port) may run
    /// on during a switchover before the proxy cancels it ([`crate::rw::drain`],
    /// [`crate::units::leader_drain`]).
    pub drain_timeout: Duration,
    /// The auto port's authentication: `auth_type`, `auth_file` read, `auth_query`.
    pub auth: crate::auth::AuthRuntime,
}

impl Runtime {
    /// Loads certificates, reads `auth_file` and builds the classifier. Errors name the
    /// configuration key.
    pub fn from_settings(s: &ProxySettings) -> Result<Runtime, ProxyError> {
        let tls = match &s.tls {
            Some((cert, key, required)) => Some(client_tls(cert, key, *required)?),
            None => None,
        };
        Ok(Runtime {
            connect_timeout: s.connect_timeout,
            startup_timeout: s.startup_timeout,
            tls,
            backend_tls: BackendTls::from_config(
                s.backend_tls.0.as_deref(),
                s.backend_tls.1.as_deref(),
            )?,
            max_message_size: s.max_message_size,
            message_timeout: s.message_timeout,
            max_client_conn: s.max_client_conn,
            classifier: Arc::new(Classifier::with_cache_bytes(
                &s.read_only_functions,
                s.classifier_cache_bytes,
            )),
            database_targets: s.database_targets.clone(),
            read_your_writes: s.read_your_writes,
            database_read_your_writes: s.database_read_your_writes.clone(),
            pool_size: s.pool_size,
            pool_mode: s.pool_mode,
            database_pool_modes: s.database_pool_modes.clone(),
            max_prepared_statements: s.max_prepared_statements,
            query_wait_timeout: s.query_wait_timeout,
            idle_release: s.idle_release,
            auto_idle_release: s.auto_idle_release,
            shutdown_timeout: s.shutdown_timeout,
            drain_timeout: s.drain_timeout,
            auth: crate::auth::AuthRuntime::from_settings(&s.auth)?,
        })
    }
}

impl Runtime {
    /// `database`'s pool mode: `databases.<db>.pool_mode`, else `pool_mode`.
    pub fn pool_mode_for(&self, database: &str) -> crate::settings::PoolMode {
        self.database_pool_modes
            .get(database)
            .copied()
            .unwrap_or(self.pool_mode)
    }

    /// How long an idle session of `database` keeps its server connections: 0 in transaction
    /// mode, `idle_release_ms` in auto mode.
    pub fn idle_release_for(&self, database: &str) -> Duration {
        match self.database_pool_modes.get(database) {
            None => self.idle_release,
            Some(crate::settings::PoolMode::Transaction) => Duration::ZERO,
            Some(crate::settings::PoolMode::Auto) => self.auto_idle_release,
        }
    }
}

/// Re-reads the configuration for `RELOAD` and SIGHUP.
pub type ReloadFn = Arc<dyn Fn() -> Result<ProxySettings, String> + Send + Sync>;

/// What every connection task shares.
pub(crate) struct Shared {
    pub router: Router,
    pub cancels: CancelRegistry,
    pub metrics: Metrics,
    pub clients: Arc<Clients>,
    pub pool: Pool,
    runtime: RwLock<Arc<Runtime>>,
    /// Fired when a graceful shutdown starts: auto-port sessions close at their next idle point.
    pub draining: Signal,
    pub reload: Option<ReloadFn>,
    /// The settings the proxy was bound with (listeners cannot change on reload).
    pub settings: RwLock<ProxySettings>,
    /// Where idle auto-port sessions wait (set while the proxy serves; without it they stay in
    /// their tasks).
    pub parking: std::sync::OnceLock<Arc<crate::park::ParkingLot>>,
}

impl Shared {
    pub fn new(
        metrics: Metrics,
        runtime: Runtime,
        settings: ProxySettings,
        reload: Option<ReloadFn>,
    ) -> Shared {
        let router = Router::new();
        router.set_policy(settings.lag);
        let pool = Pool::new(metrics.pool_idle.clone());
        pool.set_timeouts(settings.server_idle_timeout, settings.server_lifetime);
        Shared {
            router,
            cancels: CancelRegistry::default(),
            pool,
            metrics,
            clients: Arc::new(Clients::default()),
            runtime: RwLock::new(Arc::new(runtime)),
            draining: Signal::new(),
            reload,
            settings: RwLock::new(settings),
            parking: std::sync::OnceLock::new(),
        }
    }

    /// The runtime settings in force.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies new settings (reload): everything but the listener addresses takes effect for new
    /// connections and transactions; open connections are not touched. Errors leave the old
    /// settings in force.
    pub fn apply_settings(&self, new: ProxySettings) -> Result<Vec<String>, ProxyError> {
        let runtime = Runtime::from_settings(&new)?;
        let mut notes = Vec::new();
        {
            let old = self.settings.read().unwrap_or_else(|p| p.into_inner());
            for (name, a, b) in [
                ("read_write", &old.read_write, &new.read_write),
                ("read_only", &old.read_only, &new.read_only),
                ("auto", &old.auto, &new.auto),
                ("admin", &old.admin, &new.admin),
                ("metrics", &old.metrics, &new.metrics),
            ] {
                if a.as_ref().map(|x| x.to_string()) != b.as_ref().map(|x| x.to_string()) {
                    notes.push(format!(
                        "praetor.proxy.{name}.listen changed: restart the proxy to apply it"
                    ));
                }
            }
            // The console stays on the listener it was bound to: the new rules must suit it.
            crate::settings::check_admin_access(old.admin.as_ref(), &new.admin_access)?;
        }
        self.router.set_policy(new.lag);
        self.pool
            .set_timeouts(new.server_idle_timeout, new.server_lifetime);
        *self.runtime.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(runtime);
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = new;
        Ok(notes)
    }

    /// Reloads the configuration through the reload hook; returns notes for the operator.
    pub fn reload(&self) -> Result<Vec<String>, String> {
        let Some(hook) = &self.reload else {
            return Err("this proxy has no configuration file to reload".into());
        };
        let result = hook().and_then(|s| self.apply_settings(s).map_err(|e| e.to_string()));
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.reloads_total.with_label_values(&[label]).inc();
        result
    }
}

/// How a client's first packets ended.
enum ClientStart {
    Startup(StartupMessage),
    Cancel(CancelKey),
}

/// Why a relayed session ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    ServerClosed,
    /// The backend lost the leader key (or the proxy is shutting down).
    Fenced,
    Io(io::Error),
    /// The server sent bytes that are not the protocol during the startup phase.
    Protocol(praetor_protocol::ProtocolError),
    /// The server is not accepting connections now (57P03), before anything reached the client:
    /// the ErrorResponse, to send if waiting does not help.
    NotReady(bytes::Bytes),
    /// The server sent a FATAL while the read-write session had nothing outstanding (the former
    /// leader's shutdown in a switchover, or an administrator's `pg_terminate_backend`): the
    /// message, held back from the client until [`crate::rw::after_server_end`] decides.
    ServerEnding(bytes::Bytes),
    /// A read-write session's transaction ran past `drain_timeout` during a switchover
    /// ([`crate::rw::drain`]). True when the relay stopped between two server messages (the
    /// client can be told why), normally after the server's answer to the proxy's CancelRequest;
    /// false when the server's output stayed inside a message for 2 x [`DRAIN_END_WAIT`]
    /// ([`drain_end`]).
    Drained(bool),
    /// A session at a transaction boundary leaves a server connection the admin console's
    /// `RECONNECT` covers, for a new one ([`crate::rw::should_reconnect`]).
    Reconnect,
}

/// A client refused a backend: the metric reason and the text of its `FATAL 08006`.
struct Refusal {
    reason: RoutingError,
    message: String,
}

/// Decrements a connection gauge on drop (when the connection ends).
pub(crate) struct GaugeGuard(pub IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A client past its startup phase: what the session that serves it needs.
pub(crate) struct Accepted {
    pub rt: Arc<Runtime>,
    pub client: ClientStream,
    pub startup: StartupMessage,
    /// What the client sent after its StartupMessage.
    pub leftover: BytesMut,
    /// The console's entry for this client (unregistered on drop).
    pub registered: ClientGuard,
    /// The `client_connections` gauge, decremented on drop.
    pub gauge: GaugeGuard,
}

/// Serves one client connection on `listener` until it ends. Never fails: every outcome is logged
/// (at debug level for ordinary ones) and counted.
///
/// A task's future is as large as its largest state, for as long as the task lives; the startup
/// phase and the read-write port's relay are boxed so that an idle auto-port session carries
/// neither (benches/proxy.rs measures the memory per idle client).
pub(crate) async fn handle_client(
    shared: Arc<Shared>,
    listener: ListenerKind,
    socket: TcpStream,
    peer: SocketAddr,
    shutdown: Signal,
) {
    let Some(accepted) = Box::pin(accept(&shared, listener, socket, peer, &shutdown)).await else {
        return;
    };
    if listener == ListenerKind::Auto {
        crate::session::run(shared, accepted, shutdown).await;
    } else {
        Box::pin(relay_session(&shared, listener, *accepted, &shutdown)).await;
    }
}

/// The startup phase: negotiation (TLS), then the StartupMessage. Cancel requests are forwarded
/// here. `None` when the client is done.
async fn accept(
    shared: &Arc<Shared>,
    listener: ListenerKind,
    socket: TcpStream,
    peer: SocketAddr,
    shutdown: &Signal,
) -> Option<Box<Accepted>> {
    if let Err(e) = socket.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY on the client socket");
    }
    let client_gauge = shared
        .metrics
        .client_connections
        .with_label_values(&[listener.as_str()]);
    client_gauge.inc();
    let gauge = GaugeGuard(client_gauge);
    let registered = shared.clients.register(listener, peer);
    registered
        .info
        .set_socket(std::os::fd::AsRawFd::as_raw_fd(&socket));
    let rt = shared.runtime();
    let mut buf = BytesMut::with_capacity(STARTUP_BUFFER_BYTES);
    let negotiated = tokio::select! {
        _ = shutdown.fired() => None,
        r = tokio::time::timeout(rt.startup_timeout, negotiate(shared, &rt, listener, socket, &mut buf)) => match r {
            Ok(n) => n,
            Err(_) => {
                debug!(timeout = ?rt.startup_timeout, "client sent no complete startup packet in time");
                shared.metrics.client_error(listener, "startup_timeout");
                None
            }
        },
    };
    let (mut client, start) = negotiated?;
    let startup = match start {
        ClientStart::Cancel(key) => {
            forward_cancel(&shared.cancels, key, rt.connect_timeout).await;
            return None;
        }
        ClientStart::Startup(m) => m,
    };
    // PgBouncer's max_client_conn: this client is counted among the registered ones.
    if shared.clients.len() > rt.max_client_conn {
        debug!(
            max_client_conn = rt.max_client_conn,
            "refusing a client: max_client_conn"
        );
        shared.metrics.client_error(listener, "max_client_conn");
        send_fatal(
            &mut client,
            SqlState::TOO_MANY_CONNECTIONS,
            "no more connections allowed (max_client_conn)",
        )
        .await;
        return None;
    }
    debug!(user = startup.user(), database = startup.database(), version = %startup.version, tls = client.is_tls(), "startup");
    let tls = client.is_tls();
    registered.info.update(|st| {
        st.set_names(startup.user(), startup.database());
        st.tls = tls;
    });
    Some(Box::new(Accepted {
        rt,
        client,
        startup,
        leftover: buf,
        registered,
        gauge,
    }))
}

/// The read-write and read-only ports: one server connection, bytes relayed as they are.
async fn relay_session(
    shared: &Shared,
    listener: ListenerKind,
    accepted: Accepted,
    shutdown: &Signal,
) {
    let Accepted {
        rt,
        mut client,
        startup,
        leftover: buf,
        registered,
        gauge: _gauge,
    } = accepted;
    let (rt, client, info) = (&*rt, &mut client, &*registered.info);
    let deadline = Instant::now() + rt.connect_timeout;
    let mut client_buf = buf;
    let (c2s, s2c) = shared.metrics.byte_counters(listener);
    loop {
        // `PAUSE`: no new server connection for the database until `RESUME`.
        if !shared
            .router
            .wait_unpaused_unless(startup.database(), || info.is_killed())
            .await
        {
            return;
        }
        let (mut route, mut server) = match connect_backend(shared, rt, listener).await {
            Ok(connected) => connected,
            Err(refusal) => {
                shared.metrics.routing_error(listener, refusal.reason);
                warn!(
                    listener = listener.as_str(),
                    reason = refusal.reason.as_str(),
                    "{}",
                    refusal.message
                );
                send_fatal(client, SqlState::CONNECTION_FAILURE, &refusal.message).await;
                return;
            }
        };
        route.set_database(startup.database());
        // Declared after `server`, so dropped before it on every path (see `SocketGuard`).
        let socket = route.watch_socket(server.as_raw_fd());
        let backend = route.backend.member().to_string();
        tracing::Span::current().record("backend", backend.as_str());
        let gauge = GaugeGuard(shared.metrics.connection_opened(
            listener,
            &backend,
            route.role.as_str(),
        ));
        info.update(|st| {
            st.servers = vec![(backend.clone(), route.role.as_str())];
            st.status = "active";
        });

        // The StartupMessage unchanged, then whatever the client already sent after it.
        let sent = async {
            server.write_all(&startup.raw).await?;
            if !client_buf.is_empty() {
                server.write_all(&client_buf).await?;
            }
            io::Result::Ok(())
        }
        .await;
        if let Err(e) = sent {
            let message = format!(
                "lost the connection to {} {} while sending the startup packet: {e}",
                route.role.as_str(),
                route.backend
            );
            warn!("{message}");
            send_fatal(client, SqlState::CONNECTION_FAILURE, &message).await;
            return;
        }
        let pending_client_bytes = client_buf.len();
        client_buf.clear();
        c2s.inc_by(startup.raw.len() as u64);

        client_buf.reserve(RELAY_BUFFER_BYTES);
        let mut server_buf = BytesMut::with_capacity(RELAY_BUFFER_BYTES);
        // Sessions follow their login, to log in again after a switchover or a `RECONNECT`
        // (`rw_auth`).
        let mut login = Some(LoginWatch::default());
        let registration = match relay_backend_startup(
            &shared.cancels,
            &mut route,
            client,
            &mut server,
            &mut client_buf,
            &mut server_buf,
            (&c2s, &s2c),
            login.as_mut(),
        )
        .await
        {
            Ok(registration) => registration,
            Err(End::NotReady(error)) if Instant::now() < deadline && pending_client_bytes == 0 => {
                debug!(backend = %route.backend, "the server is not accepting connections yet; holding the client");
                drop(socket);
                drop(server);
                drop(route);
                drop(gauge);
                let wait = deadline
                    .saturating_duration_since(Instant::now())
                    .min(NOT_READY_RETRY);
                shared.router.changed(wait).await;
                drop(error);
                continue;
            }
            Err(End::NotReady(error)) => {
                let _ = client.write_all(&error).await;
                log_end(
                    &End::ServerClosed,
                    &route,
                    shutdown,
                    "during authentication",
                );
                return;
            }
            Err(end) => {
                log_end(&end, &route, shutdown, "during authentication");
                return;
            }
        };
        let relogin = match login {
            Some(watch) => Some(relogin_for(shared, rt, &startup, watch).await),
            None => None,
        };
        let relogin = relogin.unwrap_or(Relogin::NoPassword);
        // Sessions are followed (`rw`) so that a switchover can move read-write ones, `PAUSE`
        // holds them at their next transaction boundary and `RECONNECT` acts there.
        let tracker = std::sync::Mutex::new(RwTracker::default());
        // The read-write port relays the server's BackendKeyData: the client's key is the server's.
        let first_key = registration.as_ref().map(|r| r.key().clone());
        let tracking = Tracking {
            tracker: &tracker,
            router: &shared.router,
            classifier: &rt.classifier,
            database: startup.database(),
            info,
            drain_timeout: rt.drain_timeout,
            follows_leader: listener == ListenerKind::ReadWrite,
            connection: route.connection_id(),
            can_log_in: relogin.cannot().is_none(),
            cancel: first_key.as_ref().map(|k| (&route.backend, k)),
        };
        let end = relay(
            client,
            &mut server,
            &mut client_buf,
            &mut server_buf,
            (&c2s, &s2c),
            &mut route.fence,
            Some(tracking),
        )
        .await;
        let client_key = first_key;
        drop(registration);
        // The socket closes before the route records the close (the fencing handshake waits on it).
        drop(socket);
        drop(server);
        log_end(&end, &route, shutdown, "");
        let backend = route.backend.clone();
        drop(route);
        drop(gauge);
        let moved = Moving {
            shared,
            rt,
            listener,
            startup: &startup,
            tracker: &tracker,
            client_key,
            relogin,
            counters: (&c2s, &s2c),
            shutdown,
            info,
        };
        moved
            .follow(client, &mut client_buf, &mut server_buf, end, backend)
            .await;
        return;
    }
}

/// What the proxy can log in to another server with for a client whose login `watch`
/// followed: the rule is [`crate::rw_auth::relogin`]; this reads the user's secret when the login
/// needed a password ([`crate::auth::lookup_secret`]: `auth_file`, then `auth_query`).
async fn relogin_for(
    shared: &Shared,
    rt: &Runtime,
    startup: &StartupMessage,
    watch: LoginWatch,
) -> Relogin {
    let exchange = watch.finish();
    let user = startup.user();
    if !exchange.needs_secret() {
        return relogin(exchange, user, None);
    }
    let (listener, wait) = (ListenerKind::ReadWrite, Duration::ZERO);
    match crate::auth::lookup_secret(shared, rt, listener, user, startup.database(), wait).await {
        Ok(secret) => relogin(exchange, user, secret.as_ref()),
        Err(e) => {
            warn!(
                user,
                "cannot read the user's secret: {e}; this session cannot open another server connection (switchover, RECONNECT)"
            );
            Relogin::Cannot(format!(
                "it logged in with a password and the proxy could not read user \"{user}\"'s \
                 secret ({e})"
            ))
        }
    }
}

/// How long a session whose server sent a FATAL while idle waits for the DCS to show a switchover
/// before it passes the FATAL on (the proxy may learn of the switchover a moment after the server
/// began its shutdown).
const MOVE_CONFIRM_WAIT: Duration = Duration::from_secs(2);

/// A session whose relay ended: moves a read-write one to the new leader as often as switchovers
/// require ([`crate::rw::after_server_end`] decides; this only executes), and opens a new server
/// connection for one that left its connection for the admin console's `RECONNECT`.
struct Moving<'a> {
    shared: &'a Shared,
    rt: &'a Runtime,
    listener: ListenerKind,
    startup: &'a StartupMessage,
    tracker: &'a std::sync::Mutex<RwTracker>,
    /// The key the client got at login (the first server's), translated after each move.
    client_key: Option<CancelKey>,
    /// What the proxy logs in to the next leader with ([`crate::rw_auth`]).
    relogin: Relogin,
    counters: (&'a IntCounter, &'a IntCounter),
    shutdown: &'a Signal,
    info: &'a crate::clients::ClientInfo,
}

impl Moving<'_> {
    /// `backend`: the server the session was on.
    async fn follow(
        self,
        client: &mut ClientStream,
        client_buf: &mut BytesMut,
        server_buf: &mut BytesMut,
        mut end: End,
        mut backend: Backend,
    ) {
        loop {
            let reconnect = matches!(end, End::Reconnect);
            if !reconnect && self.listener != ListenerKind::ReadWrite {
                // A read-only session does not move: it ends as its server did.
                if let End::ServerEnding(frame) = &end {
                    let _ =
                        tokio::time::timeout(ERROR_WRITE_TIMEOUT, client.write_all(frame)).await;
                }
                return;
            }
            if !reconnect {
                let server_end = match &end {
                    End::Fenced => ServerEnd::Fenced,
                    End::ServerEnding(_) => ServerEnd::Fatal,
                    End::ServerClosed => ServerEnd::Closed,
                    End::Drained(_) => ServerEnd::Drained(self.rt.drain_timeout),
                    _ => return,
                };
                let mut moving = !self.shared.router.is_routable(&backend, Want::Leader);
                if !moving && server_end == ServerEnd::Fatal {
                    let deadline = Instant::now() + MOVE_CONFIRM_WAIT;
                    while !moving && Instant::now() < deadline {
                        self.shared
                            .router
                            .changed(deadline.saturating_duration_since(Instant::now()))
                            .await;
                        moving = !self.shared.router.is_routable(&backend, Want::Leader);
                    }
                }
                let (at_boundary, unmovable) = {
                    let t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                    (t.is_at_boundary(), t.unmovable().cloned())
                };
                let next = after_server_end(
                    server_end,
                    moving,
                    at_boundary,
                    unmovable.as_ref(),
                    self.relogin.cannot(),
                    self.shutdown.is_fired(),
                );
                match next {
                    Next::Close => {
                        if let End::ServerEnding(frame) = &end {
                            let _ =
                                tokio::time::timeout(ERROR_WRITE_TIMEOUT, client.write_all(frame))
                                    .await;
                        }
                        return;
                    }
                    Next::End(message) => {
                        info!(backend = %backend, "{message}");
                        let drained = matches!(server_end, ServerEnd::Drained(_));
                        let reason = if drained { "drained" } else { "not_moved" };
                        self.shared.metrics.client_error(self.listener, reason);
                        if matches!(end, End::Drained(false)) {
                            // Cut inside a server message: an ErrorResponse would not parse.
                            let _ =
                                tokio::time::timeout(ERROR_WRITE_TIMEOUT, client.shutdown()).await;
                        } else {
                            send_fatal(client, crate::rw::END_CODE, &message).await;
                        }
                        // A drained session's server got its CancelRequest in the relay; the
                        // server's socket closes with the session (an idle transaction ends with
                        // it), and what the cancel stopped rolls back.
                        return;
                    }
                    Next::Move => {}
                }
            }
            let mut conn = match self.open_new(reconnect).await {
                Ok(conn) => conn,
                Err(message) => {
                    warn!(from = %backend, "{message}");
                    self.shared.metrics.client_error(self.listener, "not_moved");
                    send_fatal(client, crate::rw::END_CODE, &message).await;
                    return;
                }
            };
            if reconnect {
                info!(from = %backend, to = %conn.route.backend, "RECONNECT: a session left its server connection for a new one");
            } else {
                info!(from = %backend, to = %conn.route.backend, "moved a read-write session to the new leader");
            }
            backend = conn.route.backend.clone();
            let server_key = conn.key.clone();
            let _registration = match (&self.client_key, &conn.key) {
                (Some(k), Some(server_key)) => Some(self.shared.cancels.register_moved(
                    k.clone(),
                    backend.clone(),
                    server_key.clone(),
                )),
                _ => None,
            };
            let role = conn.route.role.as_str();
            self.info.update(|st| {
                st.servers = vec![(backend.member().to_string(), role)];
            });
            // Bytes the server sent after its ReadyForQuery (none expected) go first.
            if !conn.buf.is_empty() {
                let leftover = std::mem::take(&mut conn.buf);
                if client.write_all(&leftover).await.is_err() {
                    return;
                }
            }
            let conn = &mut *conn;
            let connection = conn.route.connection_id();
            end = relay(
                client,
                &mut conn.stream,
                client_buf,
                server_buf,
                self.counters,
                &mut conn.route.fence,
                Some(Tracking {
                    tracker: self.tracker,
                    router: &self.shared.router,
                    classifier: &self.rt.classifier,
                    database: self.startup.database(),
                    info: self.info,
                    drain_timeout: self.rt.drain_timeout,
                    follows_leader: self.listener == ListenerKind::ReadWrite,
                    connection,
                    can_log_in: self.relogin.cannot().is_none(),
                    cancel: server_key.as_ref().map(|k| (&backend, k)),
                }),
            )
            .await;
            log_end(&end, &conn.route, self.shutdown, "");
        }
    }

    /// Waits (up to `connect_timeout`) for the new leader (a switchover), or for a backend of the
    /// session's port (`reconnect`: the admin console's `RECONNECT`), logs in with the client's
    /// StartupMessage (and, when the first server asked for a password, with what the proxy kept
    /// of the client's login: [`crate::rw_auth`]) and replays the session's SETs. `Err`: the
    /// message for the client's FATAL.
    async fn open_new(&self, reconnect: bool) -> Result<Box<ServerConn>, String> {
        let deadline = Instant::now() + self.rt.connect_timeout;
        let cannot = if reconnect {
            "terminating connection: the admin console's RECONNECT closed this session's server \
             connection and the session could not open a new one"
        } else {
            "terminating connection: the leader stepped down (switchover) and this session \
             could not move to the new leader"
        };
        let want = want_of_listener(self.listener);
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            let route = match self.shared.router.route_want(want, wait).await {
                Ok(route) => route,
                Err(_) => {
                    return Err(format!(
                        "{cannot}: no {} within {:?}",
                        if want == Want::Leader {
                            "leader"
                        } else {
                            "backend"
                        },
                        self.rt.connect_timeout
                    ))
                }
            };
            route.set_database(self.startup.database());
            let described = format!("{} {}", route.role.as_str(), route.backend);
            let gauge = self.shared.metrics.connection_opened(
                self.listener,
                route.backend.member(),
                route.role.as_str(),
            );
            gauge.dec(); // `open` counts it once connected.
            let mut auth =
                PasswordAuth::with_credential(self.startup.user(), self.relogin.credential());
            match open(
                route,
                gauge,
                &self.rt.backend_tls,
                self.rt.connect_timeout,
                &self.startup.raw,
                &mut auth,
            )
            .await
            {
                Ok((mut conn, _)) => {
                    let sets = {
                        let t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
                        t.sets().join(";")
                    };
                    if !sets.is_empty() {
                        if let Err(e) = conn.run_quietly(&sets).await {
                            return Err(format!(
                                "{cannot}: replaying its SETs on {described}: {e:?}"
                            ));
                        }
                    }
                    return Ok(conn);
                }
                Err(OpenError::NotReady(m)) if Instant::now() < deadline => {
                    debug!(backend = %described, "{m}; waiting for the new leader");
                    let wait = deadline
                        .saturating_duration_since(Instant::now())
                        .min(NOT_READY_RETRY);
                    self.shared.router.changed(wait).await;
                }
                Err(OpenError::NeedPassword) => {
                    return Err(format!(
                        "{cannot}: {described} asks for a password and the client logged in \
                         without one; the proxy holds no credentials for user \"{}\"",
                        self.startup.user()
                    ))
                }
                Err(OpenError::Refused(_, f)) => {
                    return Err(format!(
                        "{cannot}: {described} refused the login: {}",
                        f.message().unwrap_or("")
                    ))
                }
                Err(OpenError::NotReady(m) | OpenError::Connect(m) | OpenError::Failed(m)) => {
                    return Err(format!("{cannot}: {described}: {m}"))
                }
            }
        }
    }
}

fn log_end(end: &End, route: &Route, shutdown: &Signal, phase: &str) {
    match end {
        End::Fenced if shutdown.is_fired() => debug!("closed: the proxy is shutting down"),
        End::Fenced => {
            debug!(backend = %route.backend, "closed: fenced (the backend lost the leader key)")
        }
        End::ClientClosed => debug!("client closed the connection {phase}"),
        End::ServerClosed => debug!("server closed the connection {phase}"),
        End::Io(e) => debug!(error = %e, "connection failed {phase}"),
        End::Protocol(e) => {
            warn!(backend = %route.backend, error = %e, "backend broke the protocol {phase}")
        }
        End::NotReady(_) => debug!("server not accepting connections {phase}"),
        End::ServerEnding(_) => debug!("server ended the session {phase}"),
        End::Drained(_) => debug!("transaction past drain_timeout during a switchover {phase}"),
        End::Reconnect => debug!("leaving the server connection for a new one (RECONNECT) {phase}"),
    }
}

/// Reads the client's startup-phase packets: answers SSLRequest with `S` and a TLS handshake when
/// TLS is configured (`N` otherwise) and GSSENCRequest with `N`. `None` when the client went away,
/// sent garbage (answered with an ErrorResponse) or must use TLS and did not.
async fn negotiate(
    shared: &Shared,
    rt: &Runtime,
    listener: ListenerKind,
    socket: TcpStream,
    buf: &mut BytesMut,
) -> Option<(ClientStream, ClientStart)> {
    let mut phase = StartupPhase::new();
    let mut client = ClientStream::Plain(socket);
    loop {
        match phase.decode(buf) {
            Ok(Some(StartupPacket::SslRequest)) => match (&rt.tls, client) {
                (Some(tls), ClientStream::Plain(tcp)) => {
                    if !buf.is_empty() {
                        // Bytes sent after the SSLRequest, before the handshake, would be
                        // plaintext injected into the encrypted session (CVE-2021-23214).
                        info!("client sent data after SSLRequest before the TLS handshake");
                        shared.metrics.client_error(listener, "protocol");
                        return None;
                    }
                    let mut tcp = tcp;
                    if let Err(e) = tcp.write_all(b"S").await {
                        debug!(error = %e, "cannot answer an SSLRequest");
                        return None;
                    }
                    match tls.acceptor.accept(tcp).await {
                        Ok(stream) => client = ClientStream::Tls(Box::new(stream)),
                        Err(e) => {
                            info!(error = %e, "TLS handshake with the client failed");
                            shared.metrics.client_error(listener, "tls");
                            return None;
                        }
                    }
                }
                (_, mut other) => {
                    if let Err(e) = other.write_all(&[ENCRYPTION_REFUSED]).await {
                        debug!(error = %e, "cannot answer an encryption request");
                        return None;
                    }
                    client = other;
                }
            },
            Ok(Some(StartupPacket::GssEncRequest)) => {
                if let Err(e) = client.write_all(&[ENCRYPTION_REFUSED]).await {
                    debug!(error = %e, "cannot answer an encryption request");
                    return None;
                }
            }
            Ok(Some(StartupPacket::CancelRequest(key))) => {
                return Some((client, ClientStart::Cancel(key)))
            }
            Ok(Some(StartupPacket::Startup(m))) => {
                if rt.tls.as_ref().is_some_and(|t| t.required) && !client.is_tls() {
                    shared.metrics.client_error(listener, "tls_required");
                    send_fatal(
                        &mut client,
                        SqlState::INVALID_AUTHORIZATION,
                        "the proxy accepts only TLS connections: connect with sslmode=require",
                    )
                    .await;
                    return None;
                }
                return Some((client, ClientStart::Startup(m)));
            }
            Ok(None) => match client.read_buf(buf).await {
                Ok(0) => {
                    if let Err(e) = check_truncated(buf) {
                        debug!(error = %e, "client left during the startup phase");
                    }
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "cannot read the startup packet");
                    return None;
                }
            },
            Err(e) => {
                info!(error = %e, "invalid startup packet; closing the client");
                shared.metrics.client_error(listener, "protocol");
                send_fatal(&mut client, e.sqlstate(), &e.to_string()).await;
                return None;
            }
        }
    }
}

/// Sends `FATAL <code> <message>` and gives up after a second (the client may not be reading).
pub(crate) async fn send_fatal<S: AsyncWrite + Unpin>(
    client: &mut S,
    code: SqlState,
    message: &str,
) {
    let mut out = BytesMut::with_capacity(64 + message.len());
    encode_error_response(&mut out, Severity::Fatal, code, message);
    let _ = tokio::time::timeout(ERROR_WRITE_TIMEOUT, async {
        client.write_all(&out).await?;
        client.shutdown().await
    })
    .await;
}

/// Routes the client and opens the backend connection (TLS as `backend_tls` says). A backend
/// fenced while we connect to it is dropped and the client routed again (a switchover in progress).
async fn connect_backend(
    shared: &Shared,
    rt: &Runtime,
    listener: ListenerKind,
) -> Result<(Route, ServerStream), Refusal> {
    let timeout = rt.connect_timeout;
    let deadline = Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let route = match shared.router.try_route(listener) {
            Some(route) => Some(route),
            None => {
                let waiting = GaugeGuard(
                    shared
                        .metrics
                        .waiting_clients
                        .with_label_values(&[listener.as_str()]),
                );
                waiting.0.inc();
                debug!(timeout = ?timeout, "no routable backend; waiting for the DCS");
                let route = shared.router.route(listener, timeout).await;
                drop(waiting);
                route
            }
        };
        let Some(mut route) = route else {
            let wanted = match listener {
                ListenerKind::ReadWrite | ListenerKind::Auto => {
                    "no leader is available for read-write connections"
                }
                ListenerKind::ReadOnly => {
                    "no replica or leader is available for read-only connections"
                }
            };
            let suspended = if shared.router.is_suspended() {
                " (the proxy lost contact with the DCS and stopped serving)"
            } else {
                ""
            };
            return Err(Refusal {
                reason: RoutingError::NoBackend,
                message: format!("{wanted} (waited {timeout:?}){suspended}"),
            });
        };
        let addr = (route.backend.host(), route.backend.port());
        let host = route.backend.host().to_string();
        let connected = tokio::select! {
            biased;
            _ = route.fence.fenced() => None,
            r = tokio::time::timeout(timeout, async {
                let tcp = TcpStream::connect(addr).await?;
                if let Err(e) = tcp.set_nodelay(true) {
                    debug!(error = %e, "cannot set TCP_NODELAY on the server socket");
                }
                rt.backend_tls.connect(tcp, &host).await
            }) => Some(r),
        };
        let described = || format!("{} {}", route.role.as_str(), route.backend);
        match connected {
            Some(Ok(Ok(server))) if !route.fence.is_fenced() => return Ok((route, server)),
            // Fenced between connect and here counts as fenced while connecting.
            Some(Ok(Ok(_))) => {}
            Some(Ok(Err(e))) => {
                // A leader that refuses because it is stepping down (a switchover the proxy sees,
                // or sees a moment later): wait for the next leader rather than fail the client.
                let message = format!("could not connect to {}: {e}", described());
                let waited =
                    want_of_listener(listener) == Want::Leader && Instant::now() < deadline && {
                        let failed = route.backend.clone();
                        drop(route);
                        let wait = deadline
                            .saturating_duration_since(Instant::now())
                            .min(NOT_READY_RETRY);
                        shared.router.changed(wait).await;
                        !shared.router.is_routable(&failed, Want::Leader)
                    };
                if waited {
                    debug!(error = %e, "the leader refused a connection while stepping down; routing again");
                    attempt = 0;
                    continue;
                }
                return Err(Refusal {
                    reason: RoutingError::ConnectFailed,
                    message,
                });
            }
            Some(Err(_)) => {
                return Err(Refusal {
                    reason: RoutingError::ConnectTimeout,
                    message: format!("timed out after {timeout:?} connecting to {}", described()),
                })
            }
            None => {}
        }
        // Fenced while connecting.
        if attempt >= MAX_ROUTE_ATTEMPTS {
            return Err(Refusal {
                reason: RoutingError::NoBackend,
                message: format!(
                    "{} lost the leader key while connecting, {attempt} times",
                    described()
                ),
            });
        }
        debug!(backend = %route.backend, "backend fenced while connecting; routing again");
    }
}

/// Relays the authentication exchange and the server's startup messages, registering the session's
/// BackendKeyData, until the first ReadyForQuery has been forwarded. Client bytes pass through
/// unparsed (passwords, SASL). The server's SASL offer loses `SCRAM-SHA-256-PLUS` (channel binding
/// cannot survive a proxy). A first message that says the server is not accepting connections
/// (57P03) is not forwarded: [`End::NotReady`] lets the caller hold the client and retry. Returns
/// the cancel registration, if the server sent a key. With `watch` (the read-write port), the
/// authentication exchange is also followed ([`LoginWatch`]) for a later relogin.
#[allow(clippy::too_many_arguments)]
async fn relay_backend_startup(
    cancels: &CancelRegistry,
    route: &mut Route,
    client: &mut ClientStream,
    server: &mut ServerStream,
    client_buf: &mut BytesMut,
    server_buf: &mut BytesMut,
    (c2s, s2c): (&IntCounter, &IntCounter),
    mut watch: Option<&mut LoginWatch>,
) -> Result<Option<Registration>, End> {
    let mut registration = None;
    let mut forwarded_any = false;
    loop {
        tokio::select! {
            biased;
            _ = route.fence.fenced() => return Err(End::Fenced),
            r = client.read_buf(client_buf) => {
                let n = r.map_err(End::Io)?;
                if n == 0 {
                    return Err(End::ClientClosed);
                }
                if let Some(w) = watch.as_deref_mut() {
                    w.on_client(client_buf);
                }
                server.write_all(client_buf).await.map_err(End::Io)?;
                client_buf.clear();
                c2s.inc_by(n as u64);
            }
            r = server.read_buf(server_buf) => {
                let n = r.map_err(End::Io)?;
                if n == 0 {
                    // Forward what is there (typically a FATAL ErrorResponse) before closing.
                    let _ = client.write_all(server_buf).await;
                    return Err(End::ServerClosed);
                }
                // Find the complete messages in the buffer, decoding only R, E, K and Z.
                let mut end = 0;
                let mut ready = false;
                while let Some(h) = FrameHeader::peek(&server_buf[end..]).map_err(End::Protocol)? {
                    let Some(body) = h.body(&server_buf[end..]) else { break };
                    match h.tag {
                        ERROR_RESPONSE if !forwarded_any && end == 0 => {
                            let fields = ErrorFields::parse(body).unwrap_or_default();
                            if fields.code() == Some(SqlState::CANNOT_CONNECT_NOW.code()) {
                                return Err(End::NotReady(server_buf.split_to(h.frame_len).freeze()));
                            }
                        }
                        AUTHENTICATION => {
                            if let Some(w) = watch.as_deref_mut() {
                                w.on_server_auth(body);
                            }
                            if let Some(stripped) = strip_channel_binding(body) {
                                // Forward what precedes, then the rewritten offer.
                                if end > 0 {
                                    client.write_all(&server_buf[..end]).await.map_err(End::Io)?;
                                }
                                client.write_all(&stripped).await.map_err(End::Io)?;
                                server_buf.advance(end + h.frame_len);
                                s2c.inc_by((end + stripped.len()) as u64);
                                forwarded_any = true;
                                end = 0;
                                continue;
                            }
                        }
                        BACKEND_KEY_DATA => {
                            let key = CancelKey::from_backend_key_data(body).map_err(End::Protocol)?;
                            registration = Some(cancels.register(key, route.backend.clone()));
                        }
                        READY_FOR_QUERY => ready = true,
                        _ => {}
                    }
                    end += h.frame_len;
                    if ready {
                        break;
                    }
                }
                if ready {
                    // Anything after ReadyForQuery goes along too; from here on bytes are not parsed.
                    end = server_buf.len();
                }
                if end > 0 {
                    client.write_all(&server_buf[..end]).await.map_err(End::Io)?;
                    server_buf.advance(end);
                    s2c.inc_by(end as u64);
                    forwarded_any = true;
                }
                if ready {
                    return Ok(registration);
                }
            }
        }
    }
}

/// What a read-write or read-only relay needs to follow its session ([`crate::rw`]).
#[derive(Clone, Copy)]
struct Tracking<'a> {
    tracker: &'a std::sync::Mutex<RwTracker>,
    router: &'a Router,
    classifier: &'a Classifier,
    /// The session's database (`PAUSE db`) and its registration (`busy`, for `PAUSE`).
    database: &'a str,
    info: &'a crate::clients::ClientInfo,
    /// `drain_timeout` ([`crate::rw::drain`]).
    drain_timeout: Duration,
    /// The read-write port: switchovers hold and drain the session. False on the read-only port
    /// (its sessions are on replicas), where only `PAUSE` holds.
    follows_leader: bool,
    /// The server connection's id, for `RECONNECT` ([`Router::is_stale`]).
    connection: u64,
    /// The proxy can log in to another server for this client ([`crate::rw_auth::Relogin`]).
    can_log_in: bool,
    /// The server and its cancel key, for the CancelRequest of a drain (`None`: the server sent
    /// no key).
    cancel: Option<(&'a Backend, &'a CancelKey)>,
}

impl Tracking<'_> {
    /// Whether the session leaves its server connection now, before the transaction its client
    /// just started ([`should_reconnect`]).
    fn reconnect_due(&self) -> bool {
        // Hot path (every client read): one atomic load unless a `RECONNECT` ran.
        if !self.router.is_stale(self.connection, self.database) {
            return false;
        }
        let t = self.lock();
        should_reconnect(true, t.is_at_boundary(), t.unmovable(), self.can_log_in)
    }

    /// Returns once the session's transaction has run `drain_timeout` past the moment the proxy
    /// saw the switchover ([`drain`] says cancel); never when none does.
    async fn drain_due(&self) {
        if !self.follows_leader {
            return std::future::pending().await;
        }
        let mut changes = self.router.subscribe();
        let mut since: Option<Instant> = None;
        loop {
            changes.borrow_and_update();
            let switching = self.router.is_switching_over();
            since = if switching {
                since.or_else(|| Some(Instant::now()))
            } else {
                None
            };
            let at_boundary = self.lock().is_at_boundary();
            let wait = match drain(since.map(|s| s.elapsed()), self.drain_timeout, at_boundary) {
                Drain::Cancel => return,
                // The transaction may end any moment: look again soon.
                Drain::Wait(left) => Some(left.min(HOLD_RECHECK)),
                // Held at the boundary: only a new topology changes that.
                Drain::Nothing if switching => Some(HOLD_RECHECK),
                Drain::Nothing => None,
            };
            let changed = match wait {
                Some(w) => tokio::time::timeout(w, changes.changed())
                    .await
                    .unwrap_or(Ok(())),
                None => changes.changed().await,
            };
            if changed.is_err() {
                // The router is gone: the proxy is stopping.
                return std::future::pending().await;
            }
        }
    }

    /// Whether the next transaction must wait: a switchover (read-write port), or the admin
    /// console's `PAUSE`.
    fn hold_requested(&self) -> bool {
        (self.follows_leader && self.router.is_switching_over())
            || self.router.is_paused(self.database)
    }

    /// Publishes whether a transaction runs, for `PAUSE` to wait on.
    fn publish_busy(&self, tracker: &RwTracker) {
        self.info.busy.store(
            !tracker.is_at_boundary(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RwTracker> {
        // Held only while feeding bytes: a poisoned lock still holds a usable tracker.
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How often a client held at a transaction boundary during a switchover checks again, at most
/// (topology changes wake it sooner).
const HOLD_RECHECK: Duration = Duration::from_millis(100);

/// How long a session past `drain_timeout` waits, after the CancelRequest, for its server to
/// answer everything (the cancelled statement's ErrorResponse and ReadyForQuery), and then again
/// for any message boundary, before it ends anyway ([`drain_end`]); and how often it looks.
pub(crate) const DRAIN_END_WAIT: Duration = Duration::from_secs(1);
const DRAIN_END_POLL: Duration = Duration::from_millis(10);

/// How a drained read-write session's relay ends ([`drain_end`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DrainEnd {
    /// Keep relaying the server's output.
    Wait,
    /// Stop between two server messages and send the client the FATAL.
    Fatal,
    /// Stop now, inside a server message: a FATAL there would not parse, so the client's socket
    /// is only shut down.
    Cut,
}

/// When the relay of a session past `drain_timeout` stops (a read-write relay; an auto-port
/// session's unit on the leader, `session`, with `writing` false), its server having been sent a
/// CancelRequest `waited` ago. `answered`: the server answered every request and its output stops
/// at a message boundary ([`RwTracker::expects_nothing`]): the client has read the cancelled
/// statement's ErrorResponse and the ReadyForQuery. `at_message_start`: the server's output stops
/// at a message boundary. `writing`: server bytes are being written to the client (a boundary seen
/// by the tracker is not yet the client's). Up to [`DRAIN_END_WAIT`] only an answered server ends
/// the relay (a streaming result has message boundaries between its rows, where the client would
/// get the FATAL without the server's error); for as long again any boundary does (a server that
/// does not answer the cancel); then the relay is cut.
pub(crate) fn drain_end(
    answered: bool,
    at_message_start: bool,
    writing: bool,
    waited: Duration,
) -> DrainEnd {
    if writing {
        return if waited >= 2 * DRAIN_END_WAIT {
            DrainEnd::Cut
        } else {
            DrainEnd::Wait
        };
    }
    if answered || (at_message_start && waited >= DRAIN_END_WAIT) {
        DrainEnd::Fatal
    } else if waited >= 2 * DRAIN_END_WAIT {
        DrainEnd::Cut
    } else {
        DrainEnd::Wait
    }
}

/// Copies bytes both ways until a side closes, an I/O error, or `fence` resolves. The hot path:
/// one buffer per direction reused for every read, one write per read, one counter increment per
/// read, no locks, no allocation. Plain TCP on both sides splits the sockets without a lock; TLS on
/// either side goes through `tokio::io::split`.
///
/// With `tracking` (the read-write and read-only ports) each read is also walked for message
/// headers ([`RwTracker`]), the client is not read while [`should_hold`] says so, a transaction
/// running past `drain_timeout` in a switchover ends the relay ([`End::Drained`]), a `RECONNECT`
/// ends it at the next transaction boundary ([`End::Reconnect`]), and a FATAL the server sends
/// while nothing is outstanding is held back ([`End::ServerEnding`]).
///
/// When the client closes its side, the server's write side is shut down and the server's remaining
/// output is still relayed until it closes (PostgreSQL ends the session on end-of-file); when the
/// server closes, the session is over.
fn relay<'a>(
    client: &'a mut ClientStream,
    server: &'a mut ServerStream,
    client_buf: &'a mut BytesMut,
    server_buf: &'a mut BytesMut,
    counters: (&'a IntCounter, &'a IntCounter),
    fence: &'a mut Fence,
    tracking: Option<Tracking<'a>>,
) -> impl Future<Output = End> + 'a {
    // Leftover capacity lost to earlier `advance` calls is reclaimed here, once.
    client_buf.reserve(RELAY_BUFFER_BYTES);
    server_buf.reserve(RELAY_BUFFER_BYTES);
    // Not an `async fn`: the relay's future is one of two `relay_halves` futures, with no state
    // machine of its own around it. Each level of a task's nested futures is resumed at every
    // wake-up, and with many sessions its state's tag is a cache miss (callgrind, pgbench -S -c 64:
    // ~1.5 of the read-write port's ~73 simulated first-level data misses per transaction).
    match (client, server) {
        (ClientStream::Plain(c), ServerStream::Plain(s)) => {
            let (cr, cw) = c.split();
            let (sr, sw) = s.split();
            tokio_util::either::Either::Left(relay_halves(
                cr, cw, sr, sw, client_buf, server_buf, counters, fence, tracking,
            ))
        }
        (c, s) => {
            let (cr, cw) = tokio::io::split(c);
            let (sr, sw) = tokio::io::split(s);
            tokio_util::either::Either::Right(relay_halves(
                cr, cw, sr, sw, client_buf, server_buf, counters, fence, tracking,
            ))
        }
    }
}

/// How the client-to-server half ended.
enum ClientSide {
    /// The client closed its side.
    Closed,
    /// At a transaction boundary, for the admin console's `RECONNECT` ([`should_reconnect`]).
    Reconnect,
}

/// How the server-to-client half ended.
enum ServerSide {
    Closed,
    /// A FATAL sent while nothing was outstanding, not relayed.
    Ending(bytes::Bytes),
}

#[allow(clippy::too_many_arguments)]
async fn relay_halves<CR, CW, SR, SW>(
    mut client_rd: CR,
    mut client_wr: CW,
    mut server_rd: SR,
    mut server_wr: SW,
    client_buf: &mut BytesMut,
    server_buf: &mut BytesMut,
    (c2s, s2c): (&IntCounter, &IntCounter),
    fence: &mut Fence,
    tracking: Option<Tracking<'_>>,
) -> End
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    // Set once a transaction ran past drain_timeout: the client's next bytes are not forwarded.
    let drained = std::sync::atomic::AtomicBool::new(false);
    // True while server bytes are being written to the client (the drain waits for the end of a
    // write, so that the client's FATAL never lands inside a message).
    let writing = std::sync::atomic::AtomicBool::new(false);
    // Each branch is polled only when its own event came ([`Branches`]): a wake-up for the
    // server's answer does not poll the idle client read, the switchover watch and the fence.
    let mut client_to_server = pin!(async {
        loop {
            // Bytes held at a boundary by an earlier relay (the session moved) go first.
            if client_buf.is_empty() {
                let n = client_rd.read_buf(client_buf).await?;
                if n == 0 {
                    let _ = server_wr.shutdown().await;
                    return io::Result::Ok(ClientSide::Closed);
                }
            }
            if let Some(t) = &tracking {
                // A switchover: the next transaction waits (its bytes kept in `client_buf`) for
                // the new leader; the relay ends when the former one goes, and the next relay,
                // on the new leader, sends them.
                // `PAUSE` holds the same way, until `RESUME`.
                if should_hold(t.hold_requested(), t.lock().is_at_boundary()) {
                    t.info.update(|st| st.status = "held");
                    while should_hold(t.hold_requested(), t.lock().is_at_boundary()) {
                        if t.info.is_killed() {
                            // What the client sent while held never runs.
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "closed by the admin console's KILL",
                            ));
                        }
                        t.router.changed(HOLD_RECHECK).await;
                    }
                    t.info.update(|st| st.status = "active");
                }
                if t.info.is_killed() {
                    // Bytes read after a KILL (a RESUME may have followed it before this task
                    // ran) are not forwarded: the client is gone.
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "closed by the admin console's KILL",
                    ));
                }
                if drained.load(std::sync::atomic::Ordering::Relaxed) {
                    // The relay ends at the next server message boundary.
                    return std::future::pending().await;
                }
                if t.reconnect_due() {
                    // `RECONNECT`: this transaction starts on a new server connection; its
                    // bytes stay in `client_buf` for the next relay.
                    return Ok(ClientSide::Reconnect);
                }
                let mut tracker = t.lock();
                tracker.on_client(client_buf, t.classifier);
                t.publish_busy(&tracker);
                drop(tracker);
            }
            server_wr.write_all(client_buf).await?;
            c2s.inc_by(client_buf.len() as u64);
            client_buf.clear();
        }
    });
    let mut server_to_client = pin!(async {
        loop {
            let n = server_rd.read_buf(server_buf).await?;
            if n == 0 {
                return io::Result::Ok(ServerSide::Closed);
            }
            if let Some(t) = &tracking {
                let unasked = {
                    let mut tracker = t.lock();
                    let unasked = if tracker.expects_nothing() {
                        scan_unasked(server_buf)
                    } else {
                        Unasked::Relay
                    };
                    if unasked == Unasked::Relay {
                        tracker.on_server(server_buf);
                        t.publish_busy(&tracker);
                    }
                    unasked
                };
                match unasked {
                    Unasked::Relay => {}
                    Unasked::NeedMore => continue,
                    Unasked::Fatal(at) => {
                        if at > 0 {
                            client_wr.write_all(&server_buf[..at]).await?;
                        }
                        return Ok(ServerSide::Ending(server_buf.split_off(at).freeze()));
                    }
                }
            }
            writing.store(true, std::sync::atomic::Ordering::Relaxed);
            client_wr.write_all(server_buf).await?;
            writing.store(false, std::sync::atomic::Ordering::Relaxed);
            s2c.inc_by(server_buf.len() as u64);
            server_buf.clear();
        }
    });
    let mut drain_watch = pin!(async {
        let Some(t) = &tracking else {
            return std::future::pending().await;
        };
        t.drain_due().await;
        drained.store(true, std::sync::atomic::Ordering::Relaxed);
        // Cancel what the server runs, so that a result still streaming stops: the server ends
        // it with its ErrorResponse (57014) and ReadyForQuery, which the relay goes on
        // forwarding meanwhile. Then end where the server answered everything, so that the
        // client reads the server's error and then the proxy's FATAL ([`drain_end`]). The
        // cancel is sent while the relay runs (it waits for the server to read it).
        if let Some((backend, key)) = t.cancel {
            send_cancel(backend, key, key.pid, DRAIN_END_WAIT).await;
        }
        let since = Instant::now();
        loop {
            let (answered, at_message_start) = {
                let tracker = t.lock();
                (tracker.expects_nothing(), tracker.server_at_message_start())
            };
            let writing = writing.load(std::sync::atomic::Ordering::Relaxed);
            match drain_end(answered, at_message_start, writing, since.elapsed()) {
                DrainEnd::Wait => tokio::time::sleep(DRAIN_END_POLL).await,
                DrainEnd::Fatal => return true,
                DrainEnd::Cut => return false,
            }
        }
    });
    // In this order, as a biased select: the fence first.
    const FENCE: u32 = 0;
    const DRAIN: u32 = 1;
    const SERVER: u32 = 2;
    const CLIENT: u32 = 3;
    let mut branches = Branches::new(4);
    let mut client_open = true;
    poll_fn(|cx| {
        let woken = branches.woken(cx);
        let is = |branch: u32| woken & (1 << branch) != 0;
        if is(FENCE) && fence.poll_fenced(&mut branches.context(FENCE)).is_ready() {
            return Poll::Ready(End::Fenced);
        }
        if is(DRAIN) {
            if let Poll::Ready(clean) = drain_watch.as_mut().poll(&mut branches.context(DRAIN)) {
                return Poll::Ready(End::Drained(clean));
            }
        }
        if is(SERVER) {
            if let Poll::Ready(r) = server_to_client
                .as_mut()
                .poll(&mut branches.context(SERVER))
            {
                return Poll::Ready(match r {
                    Ok(ServerSide::Closed) => End::ServerClosed,
                    Ok(ServerSide::Ending(frame)) => End::ServerEnding(frame),
                    // A failed read of the server ends it like its end of file (a write to the
                    // client that failed too: the client is gone either way).
                    Err(_) if tracking.is_some() => End::ServerClosed,
                    Err(e) => End::Io(e),
                });
            }
        }
        if is(CLIENT) && client_open {
            if let Poll::Ready(r) = client_to_server
                .as_mut()
                .poll(&mut branches.context(CLIENT))
            {
                match r {
                    Ok(ClientSide::Closed) => client_open = false,
                    Ok(ClientSide::Reconnect) => return Poll::Ready(End::Reconnect),
                    Err(e) => return Poll::Ready(End::Io(e)),
                }
            }
        }
        Poll::Pending
    })
    .await
}

fn want_of_listener(listener: ListenerKind) -> Want {
    match listener {
        ListenerKind::ReadWrite | ListenerKind::Auto => Want::Leader,
        ListenerKind::ReadOnly => Want::Read,
    }
}

/// Forwards a CancelRequest to the backend that issued `key` (for an auto-port session: to the
/// server running its current transaction, with that server's key) and waits (up to `timeout`)
/// until that backend closes the connection, as libpq does, so the client's own wait for
/// end-of-file means the request was delivered. An unknown key is dropped silently, like PostgreSQL
/// does.
async fn forward_cancel(cancels: &CancelRegistry, key: CancelKey, timeout: Duration) {
    let Some((backend, server_key)) = cancels.lookup(&key) else {
        debug!(
            pid = key.pid,
            "cancel request for an unknown session; ignored"
        );
        return;
    };
    send_cancel(&backend, &server_key, key.pid, timeout).await;
}

/// Sends a CancelRequest with `server_key` to `backend` and waits (up to `timeout`) until the
/// server closes the connection (the request was read). `pid`: the PID the client knows, for the
/// log. Failures are logged, not returned: a cancel is a best effort, in PostgreSQL too.
pub(crate) async fn send_cancel(
    backend: &Backend,
    server_key: &CancelKey,
    pid: i32,
    timeout: Duration,
) {
    let forwarded = tokio::time::timeout(timeout, async {
        let mut server = TcpStream::connect((backend.host(), backend.port())).await?;
        server.set_nodelay(true)?;
        let mut packet = BytesMut::with_capacity(16);
        server_key.encode_cancel_request(&mut packet);
        server.write_all(&packet).await?;
        let mut sink = [0u8; 64];
        while server.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
    match forwarded {
        Ok(Ok(())) => debug!(pid, backend = %backend, "cancel request forwarded"),
        Ok(Err(e)) => {
            info!(pid, backend = %backend, error = %e, "cannot forward cancel request")
        }
        Err(_) => info!(pid, backend = %backend, "timed out forwarding cancel request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drained_relay_ends_after_the_servers_answer_then_at_any_boundary_then_cut() {
        use DrainEnd::{Cut, Fatal, Wait};
        let (early, late, over) = (Duration::ZERO, DRAIN_END_WAIT, 2 * DRAIN_END_WAIT);
        // (answered, at a message start, writing to the client, waited since the cancel) -> end
        let rows = [
            // The server answered (the cancel's error and ReadyForQuery, or nothing ran).
            (true, true, false, early, Fatal),
            // Written to the client first.
            (true, true, true, early, Wait),
            // A result streaming: a boundary between rows is not the end yet...
            (false, true, false, early, Wait),
            (false, false, false, early, Wait),
            // ...until the server has had DRAIN_END_WAIT to answer the cancel.
            (false, true, false, late, Fatal),
            (false, false, false, late, Wait),
            (false, false, true, late, Wait),
            // Then the relay is cut, inside a message.
            (false, false, false, over, Cut),
            (false, true, true, over, Cut),
            (true, true, false, over, Fatal),
        ];
        for (answered, at_start, writing, waited, want) in rows {
            assert_eq!(
                drain_end(answered, at_start, writing, waited),
                want,
                "answered {answered}, at a message start {at_start}, writing {writing}, waited {waited:?}"
            );
        }
    }
}
