//! The auto port: one client session routed transaction by transaction.
//!
//! The session authenticates its client itself with SCRAM-SHA-256 against the user's secret from
//! `auth_file` or `auth_query` ([`crate::auth`], [`praetor_protocol::ScramServer`]) and logs in to
//! servers with the client's recovered SCRAM keys, so that it can open more server connections later
//! without a password ([`praetor_protocol::PasswordAuth`]). Without a source of secrets, only servers
//! that ask for no password serve it. With `auth_type: cleartext` (TLS clients only) it asks the
//! client for its password when the first server (the leader, or a replica for
//! `praetor.target=replica`) wants one and lets that server check it. The client gets the server's
//! ParameterStatus messages and a cancel key issued by the proxy.
//!
//! Then, at every *idle point* (the servers answered everything and the last ReadyForQuery said
//! `I`), the first message of the next unit decides where the unit goes:
//! - a Query is classified ([`praetor_protocol::Classifier`]); reads (`SELECT`, `SHOW`, `BEGIN READ
//!   ONLY`) go to a fresh replica, everything else to the leader;
//! - once the session wrote, a read goes to a replica only when that replica has replayed the
//!   session's last commit, to the leader otherwise (read-your-writes, [`crate::ryw`]; the
//!   session executes the rule, `ryw::read_route` makes it);
//! - an extended-protocol unit goes to a replica only when it is wholly in the buffer (up to Sync)
//!   and every Parse in it reads; a unit without Parse goes where the previous unit went;
//! - a session-level `SET`/`RESET`/`DISCARD` runs on the leader and is replayed on every other
//!   server connection before its next use; anything else that creates session state (named
//!   prepared statements, temporary tables, `LISTEN`, session advisory locks, cursors `WITH HOLD`)
//!   pins the session to the server it runs on for the rest of the session; with
//!   `max_prepared_statements`, named statements (protocol-level and SQL `PREPARE`) do not: they
//!   are tracked and prepared on whichever server runs them ([`crate::prepared`], hooks at the end
//!   of this file).
//!
//! Within a unit (and a transaction) every message goes to the same server. Messages of a next unit
//! that the client pipelines before the current one is answered follow it when that server can run
//! them; otherwise the session stops reading the client until the current unit is over.
//!
//! Server connections of a session without session state return to a shared pool after
//! `idle_release` of idleness. When the leader changes, an idle session simply loses its connection
//! to the former leader and opens one to the new leader at its next write: the move is invisible to
//! the client. A session in the middle of a transaction on the former leader, or pinned to it, is
//! closed. With no routable leader a write waits up to `connect_timeout` for one.
//!
//! A switchover (the DCS asks the leader to step down) holds new leader units at the idle point,
//! waiting for the next leader (a unit the client pipelines after one on the leader too); a unit
//! still running on the leader gets `drain_timeout`, counted from the moment the proxy saw the
//! switchover. Past it the session sends the leader connection a CancelRequest, reads the client
//! no more, relays the server's answer (a result still streaming ends with the server's error and
//! ReadyForQuery, bounded: [`crate::conn::drain_end`]) and ends with `FATAL 57P01` naming
//! drain_timeout ([`crate::units::leader_drain`] decides; the serving loop
//! arms the deadline, which also bounds any write the session is blocked in). A session pinned to
//! the leader stepping down moves at its idle point when its pin left no state on the server (the
//! function-call protocol); otherwise it cannot move, and goes on on that leader (its units
//! bounded by the same drain) until the latest safe point: the end of `drain_timeout`, or the
//! leader's stop or fence, whichever comes first; then it ends with `FATAL 57P01` saying what it
//! holds ([`crate::units::pinned_drain`], [`crate::units::pinned_leader_lost`]).
//!
//! A session idle with no server connection and no session state parks out of its task
//! ([`crate::park`], [`Dormant`]) and resumes, in a new task, when its client speaks.
//!
//! The rules above (unit tracking, routing, pipelining, pinning, when to release or park) are the
//! sans-I/O [`crate::units::UnitTracker`]; this module reads, asks it, and executes its answers.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use praetor_protocol::backend::{ERROR_RESPONSE, READY_FOR_QUERY};
use praetor_protocol::frontend::{
    cleartext_password, encode_auth_cleartext, encode_auth_ok, encode_auth_sasl_continue,
    encode_auth_sasl_final, encode_auth_sasl_scram, encode_backend_key_data,
    encode_ready_for_query, sasl_initial_response, BIND, CLOSE, DESCRIBE, FUNCTION_CALL, PARSE,
    PASSWORD, QUERY, SYNC, TERMINATE,
};
use praetor_protocol::unit::{
    answer_signal_backend, may_call_function, signal_backend_call, translate_backend_pid,
    translate_notification_pid, BackendSignal, NOTIFICATION_RESPONSE,
};
use praetor_protocol::{
    encode_error_response, Credential, FrameHeader, FrontendHeader, PasswordAuth, PinReason,
    ScramError, ScramSecret, ScramServer, Severity, SqlState, TxStatus,
};
use prometheus::IntCounter;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::auth::{
    lookup_secret, password_failed, read_password_message, AuthType, PasswordReadError, Secret,
    SecretError,
};
use crate::cancel::{SessionCancel, SessionRegistration};
use crate::clients::{ClientGuard, ClientInfo};
use crate::conn::{
    drain_end, send_fatal, Accepted, DrainEnd, GaugeGuard, Runtime, Shared, DRAIN_END_WAIT,
};
use crate::metrics::ListenerKind;
use crate::pool::{open, OpenError, ServerConn, Slot};
use crate::prepared::ClientStatements;
use crate::router::{NoRoute, Want};
use crate::rw::Drain;
use crate::ryw::{self, read_route, Commit, ReadRoute};
use crate::settings::Target;
use crate::signal::Signal;
use crate::stream::ClientStream;
use crate::units::{
    idle_message, idle_plan, leader_drain, pinned_drain, pinned_leader_lost, ClientStep, Ctx,
    Decision, IdleMessage, IdlePlan, PinnedDrain, ReplicaVerdict, Side, UnitTracker,
};

/// Initial capacity of an auto-port client's read buffer; it grows (doubling) for larger messages.
/// An idle session gives its buffer back (see `poll_read_client`).
const CLIENT_BUFFER_BYTES: usize = 1024;

/// Client messages below this size are gathered into one write to the server per read of the
/// client; larger chunks are written as they are (bytes).
const GATHER_LIMIT_BYTES: usize = 8 * 1024;

/// How long a session stays in its task, idle without server connections, after a unit before it
/// parks. Parking and resuming cost two `epoll_ctl` calls, a task spawn and a small record each way:
/// around every unit of a busy client that was ~30% of the auto port's select-only TPS with
/// `idle_release_ms: 0` (benches/proxy.rs, `PRAETOR_BENCH_IDLE_RELEASE_MS=0`).
const PARK_AFTER: Duration = Duration::from_secs(1);

impl Side {
    /// The side's unit metrics (`Metrics::units` is in `leader`, `replica` order).
    fn unit_metrics(self, m: &crate::metrics::Metrics) -> &crate::metrics::UnitMetrics {
        match self {
            Side::Leader => &m.units[0],
            Side::Replica => &m.units[1],
        }
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    /// The client said Terminate.
    Terminated,
    Io(std::io::Error),
    /// The client broke the protocol (answered with a FATAL with this SQLSTATE).
    Protocol(SqlState, String),
    /// A server connection the session depended on was fenced or lost.
    ServerLost(String),
    /// Shutdown or drain.
    Shutdown,
    /// The client sent nothing for `client_message_timeout` in the middle of a message, did not
    /// finish authenticating within `authentication_timeout`, or failed to authenticate: answered
    /// with a FATAL with this SQLSTATE and message, counted in
    /// `praetor_proxy_client_errors_total` under the reason.
    Refused(SqlState, &'static str, String),
    /// Idle with nothing but the client to wait for: the session leaves its task
    /// ([`crate::park`]).
    Park,
    /// The unit running on the leader ran past `drain_timeout` while the leader stepped down
    /// ([`crate::units::leader_drain`]): the client gets `FATAL 57P01` naming drain_timeout
    /// (`clean`: the session stopped between two messages to the client; else it is closed
    /// without one, which would land inside a message) and the leader connection a CancelRequest.
    Drained {
        /// The client's stream is at a message boundary.
        clean: bool,
    },
}

/// The state of one session.
struct Session<'a> {
    shared: &'a Shared,
    rt: Arc<Runtime>,
    info: Arc<ClientInfo>,
    /// The PID the client got in BackendKeyData (the proxy's, see [`crate::cancel`]).
    client_pid: i32,
    user: String,
    credential: Option<Credential>,
    /// The StartupMessage servers get (the client's, without `praetor.*` options).
    startup: Bytes,
    leader: Option<Box<ServerConn>>,
    replica: Option<Box<ServerConn>>,
    /// The unit state and routing rules ([`crate::units`]).
    units: UnitTracker,
    /// Read-your-writes is on for this session ([`crate::ryw`]).
    read_your_writes: bool,
    /// What the session knows of its last commit, for read-your-writes.
    commit: Commit,
    unit_started: Instant,
    /// Bytes of the client's current message still to stream to the server.
    client_remaining: usize,
    cancel: SessionCancel,
    idle_since: Option<Instant>,
    /// When the session's last unit ended (since it logged in or was resumed).
    unit_ended: Option<Instant>,
    /// Fires `idle_release` after the session went idle holding server connections, or
    /// `PARK_AFTER` after its last unit when it holds none. Boxed and only while armed: most idle
    /// sessions are parked.
    idle_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Fires at the earlier of the stall deadline (`client_message_timeout`) and the drain
    /// deadline; armed only while one of them is set (rarely: mid-message, or a switchover).
    /// Kept across the serving loop's passes, so that a pass does not build (and move, and drop)
    /// a timer future of its own for each deadline.
    deadline_timer: Option<Pin<Box<tokio::time::Sleep>>>,
    c2s: IntCounter,
    s2c: IntCounter,
    /// Client bytes for the current side's server, gathered while one read's messages are handled
    /// and written when they are (empty between wake-ups).
    to_server: BytesMut,
    /// Since when the client, in the middle of a message, has sent nothing
    /// (`praetor.proxy.client_message_timeout` runs from here).
    stalled_since: Option<tokio::time::Instant>,
    /// The client's named prepared statements, when tracked (`max_prepared_statements`).
    prepared: Option<Box<ClientStatements>>,
    /// Topology changes, watched while a unit runs on the leader, to see a switchover start
    /// (created at the first such unit, kept until the session parks).
    leader_watch: Option<tokio::sync::watch::Receiver<u64>>,
    /// The pool's idle list of the session's StartupMessage and the server it last took a
    /// connection from ([`crate::pool::Pool::list`]): taken from at every unit in `pool_mode:
    /// transaction` without a lookup by key (kept until the session parks).
    pool_list: Option<Arc<crate::pool::IdleList>>,
    /// When the unit running on the leader is cancelled: a switchover started and `drain_timeout`
    /// runs ([`crate::units::leader_drain`]); `None` otherwise.
    drain_at: Option<tokio::time::Instant>,
    /// When the session sent its leader a CancelRequest because the running unit passed
    /// `drain_timeout`: from then on the client is not read, and the session ends once the
    /// server answered (a streaming result ends with the server's error), bounded
    /// ([`crate::conn::drain_end`]).
    drain_cancelled: Option<tokio::time::Instant>,
    /// The session, pinned to the leader, saw the DCS ask it to step down and the leader still
    /// leads (or no other leader yet): when that leader's connection ends, the session says what
    /// it holds ([`crate::units::pinned_leader_lost`]).
    pinned_switchover: bool,
    /// A message of the proxy's own is being written to the client ([`Session::write_client_whole`]):
    /// a drain deadline that stops the write leaves the client's stream inside it.
    client_mid_write: bool,
}

/// A logged-in session and what it owns, in one allocation.
struct Live<'a> {
    session: Session<'a>,
    client: ClientStream,
    cbuf: BytesMut,
    _registration: SessionRegistration,
    _registered: ClientGuard,
    _gauge: GaugeGuard,
}

/// Serves one client of the auto port until it ends.
///
/// Memory: the task of an idle session holds this future for as long as the client stays
/// connected, and a future is as large as its largest state. So the session lives in one box
/// ([`Live`]), login and finish are boxed futures, and the handling of a wake-up boxes whatever may
/// wait at length (routing, opening a server connection, `PAUSE`, read-your-writes, a cancel):
/// what remains while idle is the wait for the next event and the handling's small frame.
pub(crate) async fn run(shared: Arc<Shared>, accepted: Box<Accepted>, shutdown: Signal) {
    let Some(live) = Box::pin(start(&shared, *accepted)).await else {
        return;
    };
    drive(&shared, live, &shutdown, true).await;
}

/// Goes on with a session the parking lot gives back because its `client` spoke.
pub(crate) async fn resume(
    shared: Arc<Shared>,
    client: std::net::TcpStream,
    dormant: Box<Dormant>,
    shutdown: Signal,
) {
    let Some(live) = unparked(&shared, client, *dormant) else {
        return;
    };
    live.session.info.update(|st| st.status = "idle");
    // Not straight back to the lot: first read what woke the session.
    drive(&shared, live, &shutdown, false).await;
}

/// Serves the session until it ends or parks (`may_park`: at its first idle point already).
async fn drive(shared: &Shared, mut live: Box<Live<'_>>, shutdown: &Signal, mut may_park: bool) {
    loop {
        let end = {
            let Live {
                session,
                client,
                cbuf,
                ..
            } = &mut *live;
            session.serve(client, cbuf, shutdown, may_park).await
        };
        let (End::Park, Some(lot)) = (&end, shared.parking.get()) else {
            Box::pin(finish(live, end)).await;
            return;
        };
        let (client, dormant) = match live.into_dormant() {
            Ok(parts) => parts,
            Err(e) => {
                debug!(error = %e, "cannot park an idle session; closing it");
                return;
            }
        };
        // Refused only when the lot's thread failed: go on here, without parking.
        let Err((client, dormant)) = lot.park(client, dormant) else {
            return;
        };
        let Some(taken_back) = unparked(shared, client, *dormant) else {
            return;
        };
        live = taken_back;
        may_park = false;
    }
}

/// A parked session back in a task, its socket in tokio's reactor again. `None` (logged) when
/// tokio cannot take the socket.
fn unparked<'a>(
    shared: &'a Shared,
    client: std::net::TcpStream,
    dormant: Dormant,
) -> Option<Box<Live<'a>>> {
    match tokio::net::TcpStream::from_std(client) {
        Ok(c) => Some(Live::assemble(
            shared,
            ClientStream::Plain(c),
            BytesMut::new(),
            dormant,
        )),
        Err(e) => {
            debug!(error = %e, "cannot take a parked session back");
            None
        }
    }
}

/// What a parked session keeps: enough to log in to servers again and to answer the admin console
/// and cancel requests (~130 bytes, boxed; the user name waits in `registered`, the console's
/// copy).
pub(crate) struct Dormant {
    rt: Arc<Runtime>,
    credential: Option<Credential>,
    startup: Bytes,
    target: Target,
    last_side: Option<Side>,
    read_your_writes: bool,
    commit: Commit,
    prepared: Option<Box<ClientStatements>>,
    cancel: SessionCancel,
    registration: SessionRegistration,
    registered: ClientGuard,
    gauge: GaugeGuard,
    /// The connection's span, for the task that resumes it (only when enabled: a span is 40
    /// bytes).
    span: Option<Box<tracing::Span>>,
}

impl Dormant {
    /// The connection's span (disabled when logs do not record it).
    pub fn span(&self) -> tracing::Span {
        self.span
            .as_deref()
            .cloned()
            .unwrap_or_else(tracing::Span::none)
    }
}

impl<'a> Live<'a> {
    /// A session at an idle point, holding no server connection.
    fn assemble(
        shared: &'a Shared,
        client: ClientStream,
        cbuf: BytesMut,
        dormant: Dormant,
    ) -> Box<Live<'a>> {
        let Dormant {
            rt,
            credential,
            startup,
            target,
            last_side,
            read_your_writes,
            commit,
            prepared,
            cancel,
            registration,
            registered,
            gauge,
            span: _,
        } = dormant;
        let (c2s, s2c) = shared.metrics.byte_counters(ListenerKind::Auto);
        Box::new(Live {
            session: Session {
                shared,
                rt,
                info: registered.info.clone(),
                client_pid: registration.pid(),
                user: registered.info.user(),
                credential,
                startup,
                leader: None,
                replica: None,
                units: UnitTracker::new(target, last_side),
                read_your_writes,
                commit,
                unit_started: Instant::now(),
                client_remaining: 0,
                cancel,
                idle_since: None,
                unit_ended: None,
                idle_timer: None,
                deadline_timer: None,
                c2s,
                s2c,
                to_server: BytesMut::new(),
                stalled_since: None,
                prepared,
                leader_watch: None,
                pool_list: None,
                drain_at: None,
                drain_cancelled: None,
                pinned_switchover: false,
                client_mid_write: false,
            },
            client,
            cbuf,
            _registration: registration,
            _registered: registered,
            _gauge: gauge,
        })
    }

    /// Takes the session out of its task: the client's socket (out of tokio's reactor) and the
    /// state to resume with. Only at a point where `Session::parkable` holds.
    fn into_dormant(self: Box<Self>) -> std::io::Result<(std::net::TcpStream, Box<Dormant>)> {
        let Live {
            session,
            client,
            _registration,
            _registered,
            _gauge,
            ..
        } = *self;
        let ClientStream::Plain(client) = client else {
            return Err(std::io::Error::other("a TLS session cannot park"));
        };
        let client = client.into_std()?;
        session.info.update(|st| st.status = "parked");
        session.cancel.clear();
        Ok((
            client,
            Box::new(Dormant {
                rt: session.rt,
                credential: session.credential,
                startup: session.startup,
                target: session.units.target(),
                last_side: session.units.last_side(),
                read_your_writes: session.read_your_writes,
                commit: session.commit,
                prepared: session.prepared,
                cancel: session.cancel,
                registration: _registration,
                registered: _registered,
                gauge: _gauge,
                span: Some(tracing::Span::current())
                    .filter(|s| !s.is_disabled())
                    .map(Box::new),
            }),
        ))
    }
}

/// Reads the session's options, registers its cancel key and logs the client in. `None` when the
/// session ended there (answered and logged).
async fn start(shared: &Shared, accepted: Accepted) -> Option<Box<Live<'_>>> {
    let Accepted {
        rt,
        mut client,
        startup,
        leftover,
        registered,
        gauge,
    } = accepted;
    let database = startup.database().to_string();
    let (options, kept) = startup.take_options("praetor.");
    let mut target = rt
        .database_targets
        .get(startup.database())
        .copied()
        .unwrap_or_default();
    let mut read_your_writes = rt
        .database_read_your_writes
        .get(startup.database())
        .copied()
        .unwrap_or(rt.read_your_writes);
    for (name, value) in &options {
        if name == "read_your_writes" {
            match parse_bool(value) {
                Some(on) => read_your_writes = on,
                None => {
                    send_fatal(
                        &mut client,
                        SqlState::INVALID_PARAMETER_VALUE,
                        &format!(
                            "invalid value for parameter \"praetor.read_your_writes\": \"{value}\" (use on or off)"
                        ),
                    )
                    .await;
                    return None;
                }
            }
        }
        if name == "target" {
            match Target::parse(value) {
                Some(t) => target = t,
                None => {
                    send_fatal(
                        &mut client,
                        SqlState::INVALID_PARAMETER_VALUE,
                        &format!(
                            "invalid value for parameter \"praetor.target\": \"{value}\" (use primary, replica or any)"
                        ),
                    )
                    .await;
                    return None;
                }
            }
        }
    }
    let server_startup = if options.is_empty() {
        // Moved, not cloned: a clone of these bytes would allocate a shared header per session.
        let mut startup = startup;
        std::mem::take(&mut startup.raw)
    } else {
        startup.encode_with_options(&kept)
    };
    let cancel = SessionCancel::new(registered.info.clone());
    let (key, registration) = shared.cancels.register_session(cancel.clone());
    let prepared = (rt.max_prepared_statements > 0).then(Box::default);
    let mut live = Live::assemble(
        shared,
        client,
        leftover,
        Dormant {
            rt,
            credential: None,
            startup: server_startup,
            target,
            last_side: None,
            read_your_writes,
            commit: Commit::Clean,
            prepared,
            cancel,
            registration,
            registered,
            gauge,
            span: None,
        },
    );
    let Live {
        session: s,
        client,
        cbuf,
        ..
    } = &mut *live;
    cbuf.reserve(CLIENT_BUFFER_BYTES);
    if let Err(end) = s.login(client, cbuf, &key, &database).await {
        if let End::Protocol(code, message) | End::Refused(code, _, message) = &end {
            send_fatal(client, *code, message).await;
        }
        s.log_end(&end, "during login");
        return None;
    }
    s.info.update(|st| st.status = "idle");
    Some(live)
}

/// Tells the client why its session ends, when it should know, and returns the server
/// connections.
async fn finish(mut live: Box<Live<'_>>, end: End) {
    let Live {
        session: s, client, ..
    } = &mut *live;
    if let End::Protocol(code, message) | End::Refused(code, _, message) = &end {
        send_fatal(client, *code, message).await;
    }
    if s.info.is_terminated() && !matches!(end, End::Protocol(..) | End::Refused(..)) {
        send_fatal(
            client,
            SqlState::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )
        .await;
    } else if matches!(end, End::Shutdown) {
        send_fatal(
            client,
            SqlState::ADMIN_SHUTDOWN,
            "terminating connection: the proxy is shutting down",
        )
        .await;
    } else if let End::Drained { clean } = end {
        if clean {
            let message = crate::rw::drained_message(s.rt.drain_timeout);
            send_fatal(client, crate::rw::END_CODE, &message).await;
        } else {
            let _ = client.shutdown().await;
        }
        // The leader connection closes with the session (an idle transaction ends with it); a
        // statement still running stops at the cancel (sent already when the session relayed
        // the server's answer to it), and rolls back.
        if let Some((backend, key)) = s
            .leader
            .as_ref()
            .filter(|_| s.drain_cancelled.is_none())
            .and_then(|c| Some((&c.route.backend, c.key.as_ref()?)))
        {
            crate::conn::send_cancel(backend, key, key.pid, s.rt.connect_timeout).await;
        }
    }
    s.log_end(&end, "");
    s.release_all(true);
}

impl Session<'_> {
    /// Counts a new auto-port server connection on `route` and returns its `connections` gauge.
    fn count_connection(&self, route: &crate::router::Route) -> prometheus::IntGauge {
        let labels = [
            ListenerKind::Auto.as_str(),
            route.backend.member(),
            route.role.as_str(),
        ];
        let metrics = &self.shared.metrics;
        metrics.connections_total.with_label_values(&labels).inc();
        metrics.connections.with_label_values(&labels)
    }

    fn log_end(&self, end: &End, phase: &str) {
        match end {
            End::ClientClosed | End::Terminated => debug!("client closed the session {phase}"),
            End::Io(e) => debug!(error = %e, "session failed {phase}"),
            End::Protocol(_, m) => {
                self.shared
                    .metrics
                    .client_error(ListenerKind::Auto, "protocol");
                info!("closing the client: {m}");
            }
            End::ServerLost(m) => {
                self.shared
                    .metrics
                    .client_error(ListenerKind::Auto, "server_lost");
                info!("closing the client: {m}");
            }
            End::Refused(_, reason, m) => {
                self.shared.metrics.client_error(ListenerKind::Auto, reason);
                info!("closing the client: {m}");
            }
            End::Shutdown => debug!("closed: the proxy is shutting down"),
            End::Park => debug!("parked"),
            End::Drained { clean } => {
                self.shared
                    .metrics
                    .client_error(ListenerKind::Auto, "drained");
                info!(
                    clean,
                    "closing the client: {}",
                    crate::rw::drained_message(self.rt.drain_timeout)
                );
            }
        }
    }

    fn conn(&mut self, side: Side) -> &mut Option<Box<ServerConn>> {
        match side {
            Side::Leader => &mut self.leader,
            Side::Replica => &mut self.replica,
        }
    }

    /// Authenticates the client (SCRAM against the user's stored secret, or its cleartext
    /// password checked by the first server), opens the first server and sends the client the
    /// startup replies.
    async fn login(
        &mut self,
        client: &mut ClientStream,
        cbuf: &mut BytesMut,
        key: &praetor_protocol::CancelKey,
        database: &str,
    ) -> Result<(), End> {
        match self.rt.auth.auth_type {
            AuthType::Cleartext if !client.is_tls() => {
                return Err(End::Refused(
                    SqlState::INVALID_AUTHORIZATION,
                    "auth",
                    "the proxy's auto port takes passwords in clear text (auth_type: cleartext) \
                     only over TLS: connect with sslmode=require"
                        .into(),
                ));
            }
            AuthType::ScramSha256 | AuthType::Md5 if self.rt.auth.has_source() => {
                let limit = self.rt.startup_timeout;
                let done = tokio::time::timeout(limit, self.authenticate(client, cbuf, database))
                    .await
                    .map_err(|_| {
                        End::Refused(
                            SqlState::QUERY_CANCELED,
                            "auth_timeout",
                            format!(
                                "canceling authentication due to timeout: not authenticated within {} s",
                                limit.as_secs()
                            ),
                        )
                    })??;
                self.credential = Some(done);
            }
            _ => {}
        }
        let side = match self.units.target() {
            Target::Replica => Side::Replica,
            _ => Side::Leader,
        };
        if self.shared.router.any_paused() {
            // `PAUSE`: no new server connection for the database until `RESUME`.
            let info = self.info.clone();
            if !self
                .shared
                .router
                .wait_unpaused_unless(self.database(), || info.is_killed())
                .await
            {
                return Err(End::ClientClosed);
            }
        }
        let deadline = Instant::now() + self.rt.connect_timeout;
        loop {
            let want = match side {
                Side::Leader => Want::Leader,
                Side::Replica => Want::Read,
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            let route = match self.shared.router.route_want(want, wait).await {
                Ok(r) => r,
                Err(NoRoute::NoBackend)
                    if side == Side::Leader && self.units.target() == Target::Any =>
                {
                    // No leader: a read-only session is better than none.
                    match self.shared.router.try_route_want(Want::Read) {
                        Ok(r) => r,
                        Err(e) => return Err(self.refuse(client, e).await),
                    }
                }
                Err(e) => return Err(self.refuse(client, e).await),
            };
            route.set_database(self.database());
            let side = Side::of(route.role);
            let gauge = self.count_connection(&route);
            let described = format!("{} {}", route.role.as_str(), route.backend);
            // A pooled connection the server let in without a password serves this client too:
            // same StartupMessage, same server, same answer.
            if let Some(conn) = self.shared.pool.take_trusted(&route.backend, &self.startup) {
                let messages = conn.trusted_login.clone().unwrap_or_default();
                drop(route);
                return self.logged_in(client, key, side, conn, &messages).await;
            }
            let mut place = None;
            match self.login_slot(&route, &mut place).await {
                Ok(Some((conn, messages))) => {
                    drop(route);
                    return self.logged_in(client, key, side, conn, &messages).await;
                }
                Ok(None) => {}
                Err(message) => {
                    send_fatal(client, SqlState::CONNECTION_FAILURE, &message).await;
                    return Err(End::ServerLost(message));
                }
            }
            let mut auth = PasswordAuth::with_credential(&self.user, self.credential.clone());
            let opened = open(
                route,
                gauge,
                &self.rt.backend_tls,
                self.rt.connect_timeout,
                &self.startup,
                &mut auth,
            )
            .await;
            match opened {
                Err(OpenError::NeedPassword) if self.rt.auth.auth_type != AuthType::Cleartext => {
                    // SCRAM or md5 without auth_file or auth_user: the proxy has no secret to check
                    // the client against, so it serves only servers that ask for none.
                    return Err(End::Refused(
                        SqlState::INVALID_AUTHORIZATION,
                        "auth",
                        format!(
                            "{described} asks for a password and the proxy has no secret for user \"{}\" \
                             to authenticate the client with: give praetor.proxy.auth_file or \
                             praetor.proxy.auth_user",
                            self.user
                        ),
                    ));
                }
                Err(OpenError::NeedPassword) if self.credential.is_none() => {
                    // The server wants a password: ask the client once, then log in again with it.
                    let mut login = LoginAuth {
                        client: &mut *client,
                        cbuf: &mut *cbuf,
                    };
                    // PostgreSQL's authentication_timeout: a client that never answers does not
                    // keep its task and socket.
                    let limit = self.rt.startup_timeout;
                    let answered = tokio::time::timeout(limit, login.ask_password()).await;
                    self.credential = Some(Credential::Password(answered.map_err(|_| {
                        End::Refused(
                            SqlState::QUERY_CANCELED,
                            "auth_timeout",
                            format!(
                                "canceling authentication due to timeout: no password within {} s",
                                limit.as_secs()
                            ),
                        )
                    })??));
                }
                Ok((mut conn, startup_messages)) => {
                    conn.slot = place;
                    return self
                        .logged_in(client, key, side, conn, &startup_messages.messages)
                        .await;
                }
                Err(OpenError::NotReady(m)) if Instant::now() < deadline => {
                    debug!(backend = %described, "{m}; waiting for the cluster");
                    let wait = deadline
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(200));
                    self.shared.router.changed(wait).await;
                }
                Err(OpenError::Refused(frame, fields)) => {
                    if fields.code() == Some(SqlState::INVALID_PASSWORD.code()) {
                        self.shared.metrics.client_error(ListenerKind::Auto, "auth");
                    }
                    let _ = client.write_all(&frame).await;
                    return Err(End::ServerLost(format!(
                        "{described} refused the login: {}",
                        fields.message().unwrap_or("")
                    )));
                }
                Err(OpenError::NotReady(m)) | Err(OpenError::Connect(m)) => {
                    let message = format!("could not connect to {described}: {m}");
                    self.shared
                        .metrics
                        .routing_error(ListenerKind::Auto, crate::RoutingError::ConnectFailed);
                    send_fatal(client, SqlState::CONNECTION_FAILURE, &message).await;
                    return Err(End::ServerLost(message));
                }
                Err(OpenError::Failed(m)) => {
                    let message = format!("cannot log in to {described}: {m}");
                    send_fatal(client, SqlState::INVALID_AUTHORIZATION, &message).await;
                    return Err(End::ServerLost(message));
                }
                Err(OpenError::NeedPassword) => {
                    let message =
                        format!("cannot log in to {described}: the client gave no password");
                    send_fatal(client, SqlState::INVALID_PASSWORD, &message).await;
                    return Err(End::ServerLost(message));
                }
            }
        }
    }

    /// Runs SCRAM-SHA-256 with the client against the user's secret (`auth_file` first, then
    /// `auth_query`: [`lookup_secret`]); returns what the proxy logs in to servers with: the client's SCRAM keys, or
    /// the password of a cleartext `auth_file` entry. A user without a usable secret goes through
    /// the whole exchange against a mock secret and fails like a wrong password (as PostgreSQL
    /// does), with PostgreSQL's 28P01 message.
    async fn authenticate(
        &mut self,
        client: &mut ClientStream,
        cbuf: &mut BytesMut,
        database: &str,
    ) -> Result<Credential, End> {
        let found = match lookup_secret(
            self.shared,
            &self.rt,
            ListenerKind::Auto,
            &self.user,
            database,
            self.rt.connect_timeout,
        )
        .await
        {
            Ok(found) => found,
            Err(SecretError::NoServer(e)) => return Err(self.refuse(client, e).await),
            Err(SecretError::Malformed(e)) => {
                warn!(user = %self.user, "auth_query returned a malformed secret: {e}");
                None
            }
            Err(e @ SecretError::Failed(_)) => {
                return Err(End::Refused(
                    SqlState::INVALID_AUTHORIZATION,
                    "auth",
                    format!("cannot look up the user's secret with {e}"),
                ))
            }
        };
        let md5 = self.rt.auth.auth_type == AuthType::Md5;
        if let (true, Some(Secret::Md5(stored) | Secret::Password(stored))) = (md5, &found) {
            // `auth_type: md5` (PgBouncer's): an md5 challenge for md5 and plain-text entries.
            // The hash answers md5 servers only; a clear-text password any.
            let credential = match &found {
                Some(Secret::Password(p)) => Credential::Password(p.clone().into_bytes()),
                _ => Credential::Md5Hash(stored.clone()),
            };
            return match crate::admin_auth::run_md5(client, cbuf, &self.user, stored).await {
                Ok(true) => Ok(credential),
                Ok(false) | Err(crate::admin_auth::Failure::Wrong) => Err(End::Refused(
                    SqlState::INVALID_PASSWORD,
                    "auth",
                    password_failed(&self.user),
                )),
                Err(crate::admin_auth::Failure::Protocol(m)) => {
                    Err(End::Protocol(SqlState::PROTOCOL_VIOLATION, m))
                }
                Err(crate::admin_auth::Failure::Gone) => Err(End::ClientClosed),
            };
        }
        let (secret, password) = match found {
            Some(Secret::Scram(s)) => (s, None),
            Some(Secret::Password(p)) => (ScramSecret::from_password(p.as_bytes()), Some(p)),
            Some(Secret::Md5(_)) => {
                // As PostgreSQL and PgBouncer: the client's login fails like a wrong password
                // (telling it would tell which users exist); the log says why.
                warn!(user = %self.user, "SCRAM authentication failed: the user's secret (auth_file or auth_query) is an MD5 hash, which cannot check a SCRAM client; store its SCRAM secret (password_encryption = scram-sha-256), or set praetor.proxy.auth_type: md5 (PgBouncer's md5 method)");
                (ScramSecret::mock(), None)
            }
            None => {
                debug!(user = %self.user, "no secret for the user");
                (ScramSecret::mock(), None)
            }
        };
        let mut server = ScramServer::new(secret);
        let mut login = LoginAuth {
            client: &mut *client,
            cbuf: &mut *cbuf,
        };
        let mut out = BytesMut::new();
        encode_auth_sasl_scram(&mut out);
        login.client.write_all(&out).await.map_err(End::Io)?;
        let frame = login.read_password_message().await?;
        let (mechanism, data) = sasl_initial_response(&frame[5..])
            .map_err(|e| End::Protocol(e.sqlstate(), e.to_string()))?;
        if mechanism != "SCRAM-SHA-256" {
            return Err(End::Protocol(
                SqlState::PROTOCOL_VIOLATION,
                format!("client selected an invalid SASL authentication mechanism: {mechanism:?}"),
            ));
        }
        let malformed = |e: ScramError| End::Protocol(SqlState::PROTOCOL_VIOLATION, e.to_string());
        let first = server.client_first(data).map_err(malformed)?;
        out.clear();
        encode_auth_sasl_continue(&mut out, &first);
        login.client.write_all(&out).await.map_err(End::Io)?;
        let frame = login.read_password_message().await?;
        let (keys, last) = match server.client_final(&frame[5..]) {
            Ok(done) => done,
            Err(ScramError::WrongProof) => {
                return Err(End::Refused(
                    SqlState::INVALID_PASSWORD,
                    "auth",
                    password_failed(&self.user),
                ))
            }
            Err(e) => return Err(malformed(e)),
        };
        out.clear();
        encode_auth_sasl_final(&mut out, &last);
        login.client.write_all(&out).await.map_err(End::Io)?;
        Ok(match password {
            Some(p) => Credential::Password(p.into_bytes()),
            None => Credential::Scram(Box::new(keys)),
        })
    }

    /// Completes the client's login on `conn` (the session's first server, on `side`): sends
    /// AuthenticationOk, the server's startup `messages` (ParameterStatus...), the proxy's cancel
    /// `key` and ReadyForQuery.
    async fn logged_in(
        &mut self,
        client: &mut ClientStream,
        key: &praetor_protocol::CancelKey,
        side: Side,
        conn: Box<ServerConn>,
        messages: &[u8],
    ) -> Result<(), End> {
        let mut out = BytesMut::with_capacity(512);
        encode_auth_ok(&mut out);
        out.extend_from_slice(messages);
        encode_backend_key_data(&mut out, key);
        encode_ready_for_query(&mut out, TxStatus::Idle);
        client.write_all(&out).await.map_err(End::Io)?;
        let member = conn.route.backend.member().to_string();
        self.info
            .update(|st| st.servers = vec![(member, side.as_str())]);
        *self.conn(side) = Some(conn);
        self.units.logged_in_on(side);
        self.idle_since = Some(Instant::now());
        Ok(())
    }

    async fn refuse(&self, client: &mut ClientStream, e: NoRoute) -> End {
        let message = match e {
            NoRoute::NoBackend => format!(
                "no server is available for this session (waited {:?})",
                self.rt.connect_timeout
            ),
            NoRoute::Suspended(reason) => format!("the proxy is not serving: {reason}"),
        };
        self.shared
            .metrics
            .routing_error(ListenerKind::Auto, crate::RoutingError::NoBackend);
        send_fatal(client, SqlState::CONNECTION_FAILURE, &message).await;
        End::ServerLost(message)
    }

    /// The session's main loop.
    ///
    /// Returns [`End::Park`] at an idle point where the session can park (see `parkable`), unless
    /// `may_park` is false: then not before the first wake-up (a resumed session first reads what
    /// woke it).
    async fn serve(
        &mut self,
        client: &mut ClientStream,
        cbuf: &mut BytesMut,
        shutdown: &Signal,
        mut may_park: bool,
    ) -> End {
        let draining = self.shared.draining.clone();
        // Made once, not at every pass: each registers the task's waker at its first poll and
        // keeps it, so a later pass reads one atomic flag ([`crate::signal`]), where one made per
        // pass registered and unregistered it (a lock each) at every wake-up.
        let drained = draining.fired();
        let stopped = shutdown.fired();
        tokio::pin!(drained, stopped);
        loop {
            // A switchover: a session pinned to the leader stepping down moves, or works on there
            // until the drain's end, at its idle point, before its next unit is routed there
            // ([`pinned_drain`]).
            let mut pinned_drain_at = None;
            if matches!(self.units.pinned(), Some((Side::Leader, _)))
                && self.units.is_idle(self.client_remaining)
                && self.drain_cancelled.is_none()
            {
                let router = &self.shared.router;
                let switching_for = if router.is_switching_over() {
                    router.switching_since().map(|since| since.elapsed())
                } else {
                    None
                };
                // Remembered until the leader leads again (a switchover called off).
                self.pinned_switchover = switching_for.is_some()
                    || (self.pinned_switchover
                        && !self
                            .leader
                            .as_ref()
                            .is_some_and(|c| router.is_routable(&c.route.backend, Want::Leader)));
                match pinned_drain(
                    self.units.pinned(),
                    None,
                    switching_for,
                    self.rt.drain_timeout,
                ) {
                    PinnedDrain::Stay => {}
                    PinnedDrain::Wait(left) => {
                        pinned_drain_at = Some(tokio::time::Instant::now() + left);
                    }
                    PinnedDrain::Unpin => {
                        info!("the leader is stepping down (switchover): a session pinned by the function call protocol moves to the next leader");
                        self.units.unpin();
                        self.update_servers();
                    }
                    PinnedDrain::End(reason) => return pinned_not_moved(reason),
                }
            }
            // Handle what the client sent so far; `blocked`: the next message waits for the
            // current unit to end.
            // With nothing buffered there is nothing to handle.
            // A drain deadline bounds the handling too: a write the other end does not take
            // cannot keep a unit on the former leader past it. (Only while that unit runs: once
            // it ended, the client's next unit may wait here for the next leader.)
            let drain_at = self
                .drain_at
                .filter(|_| self.units.current() == Some(Side::Leader));
            let blocked = if self.drain_cancelled.is_some() {
                // Past drain_timeout: nothing more of the client's runs.
                true
            } else if cbuf.is_empty() {
                false
            } else {
                // Not boxed: what `handle_client` and `handle_server` may wait for at length
                // (routing, opening a connection, `PAUSE`, read-your-writes, a cancel) is boxed
                // inside them, so their futures are small, and a box per wake-up would cost an
                // allocation and a copy of the future at every message. Pinned in place and
                // awaited through the pin: passed by value (to `drained_by`) it was copied twice
                // per message, ~450 bytes written to lines of the session's state that are cold.
                let handled = {
                    let handling = std::pin::pin!(async {
                        let blocked = self.handle_client(client, cbuf).await?;
                        self.flush_current().await?;
                        Ok::<bool, End>(blocked)
                    });
                    drained_by(drain_at, handling).await
                };
                match handled {
                    Ok(b) => b,
                    // The deadline passed while a write was blocked (a server that does not read
                    // its input while it streams to a client that does not read, or a client that
                    // does not take the proxy's own message). Between two messages to the client:
                    // cancel the leader's statement and relay its answer, then the FATAL, bounded
                    // as for any unit past the deadline (below); inside one, close.
                    Err(End::Drained { .. }) if !self.client_mid_write => {
                        if let Err(end) = self.drain_cancel().await {
                            return end;
                        }
                        continue;
                    }
                    Err(end) => return end,
                }
            };
            let idle = self.units.is_idle(self.client_remaining);
            if idle && draining.is_fired() {
                return End::Shutdown;
            }
            // A switchover: the unit running on the leader gets the rest of `drain_timeout`
            // ([`leader_drain`]); the session watches topology changes to see one start.
            let leader_unit = self.units.current() == Some(Side::Leader);
            // Idle and pinned to the leader: a switchover moves or ends the session (above).
            let pinned_idle = idle && matches!(self.units.pinned(), Some((Side::Leader, _)));
            if leader_unit || pinned_idle {
                self.leader_watch
                    .get_or_insert_with(|| self.shared.router.subscribe())
                    .mark_unchanged();
            }
            let router = &self.shared.router;
            let switching_for = if router.is_switching_over() {
                router.switching_since().map(|since| since.elapsed())
            } else {
                None
            };
            if let Some(since) = self.drain_cancelled {
                // The leader's statement was cancelled past drain_timeout: its answer (the
                // server's error, ReadyForQuery) reaches the client whole, then the FATAL.
                let Some(leader) = self.leader.as_ref() else {
                    return End::Drained { clean: true };
                };
                let at_start = leader.remaining == 0;
                let answered = at_start && self.units.awaits_nothing();
                let waited = since.elapsed();
                match drain_end(answered, at_start, false, waited) {
                    DrainEnd::Fatal => return End::Drained { clean: true },
                    DrainEnd::Cut => return End::Drained { clean: false },
                    DrainEnd::Wait => {
                        let stage = if waited < DRAIN_END_WAIT { 1 } else { 2 };
                        self.drain_at = Some(since + stage * DRAIN_END_WAIT);
                    }
                }
            } else {
                self.drain_at = match leader_drain(
                    self.units.current(),
                    switching_for,
                    self.rt.drain_timeout,
                ) {
                    // Idle and pinned to the leader: woken at the drain's end ([`pinned_drain`]).
                    Drain::Nothing => pinned_drain_at.filter(|_| self.units.current().is_none()),
                    Drain::Wait(left) => Some(tokio::time::Instant::now() + left),
                    Drain::Cancel => {
                        if let Err(end) = self.drain_cancel().await {
                            return end;
                        }
                        continue;
                    }
                };
            }
            let watch_switchover = (leader_unit && self.drain_at.is_none()) || pinned_idle;
            // Park or release ([`idle_plan`]): parks at once after login (or a wake-up without a
            // unit), after a unit once the client was quiet for `PARK_AFTER`; releases the
            // server connections after `idle_release`.
            let plan = if idle {
                let releasable =
                    self.units.may_release() && (self.leader.is_some() || self.replica.is_some());
                let parkable = may_park && cbuf.is_empty() && self.parkable(client);
                // The same clock as the timer's: once it fired, its instant is due.
                idle_plan(
                    tokio::time::Instant::now(),
                    parkable,
                    self.unit_ended.map(tokio::time::Instant::from_std),
                    PARK_AFTER,
                    releasable,
                    self.idle_since.map(tokio::time::Instant::from_std),
                    self.idle_release(),
                )
            } else {
                IdlePlan::NoTimer
            };
            if plan == IdlePlan::Park {
                return End::Park;
            }
            may_park = true;
            let (timer_at, release_timer) = match plan {
                IdlePlan::Release => {
                    self.release_idle();
                    continue;
                }
                IdlePlan::Timer { at, release } => (Some(at), release),
                IdlePlan::Park | IdlePlan::NoTimer => (None, false),
            };
            match timer_at {
                // A timer armed for an earlier instant is kept: it wakes the session early, which
                // then arms it for `at` (below). The park timer's instant moves with the end of
                // every unit, and a reset at each (a removal from the runtime's timer wheel and
                // an insertion) cost a busy session more than one early wake-up per `PARK_AFTER`.
                Some(at) => match &mut self.idle_timer {
                    Some(timer) if timer.deadline() <= at => {}
                    Some(timer) => timer.as_mut().reset(at),
                    None => self.idle_timer = Some(Box::pin(tokio::time::sleep_until(at))),
                },
                None if idle => self.idle_timer = None,
                None => {}
            }
            if idle && cbuf.is_empty() && timer_at.is_none() {
                // An idle client keeps no read buffer; `poll_read_client` gets one when bytes arrive.
                // While a park or release timer runs, the buffers stay for the client's next
                // unit (a busy client would otherwise allocate both at every unit) and go when
                // the timer fires.
                drop_buffers(cbuf, &mut self.to_server);
            }
            // A message begun and not finished (its tail to stream, or part of it buffered while
            // the client is read): the client must go on within `client_message_timeout`.
            let mid_message = !blocked && (self.client_remaining > 0 || !cbuf.is_empty());
            let stall_deadline = if mid_message {
                let since = *self
                    .stalled_since
                    .get_or_insert_with(tokio::time::Instant::now);
                Some(since + self.rt.message_timeout)
            } else {
                self.stalled_since = None;
                None
            };
            let deadline = match (stall_deadline, self.drain_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            match deadline {
                Some(at) => match &mut self.deadline_timer {
                    Some(timer) if timer.deadline() == at => {}
                    Some(timer) => timer.as_mut().reset(at),
                    None => self.deadline_timer = Some(Box::pin(tokio::time::sleep_until(at))),
                },
                None => self.deadline_timer = None,
            }
            enum Wake {
                Fenced(Side),
                /// The drain deadline passed, or the topology changed (a switchover may start).
                Drain,
                Client(std::io::Result<usize>),
                Server(Side, std::io::Result<usize>),
                Timer,
                Stalled,
                Shutdown,
            }
            let wake = {
                let (leader, replica) = (&mut self.leader, &mut self.replica);
                let (idle_timer, deadline_timer) = (&mut self.idle_timer, &mut self.deadline_timer);
                let leader_watch = &mut self.leader_watch;
                // Made in place and polled only while a switchover is watched for.
                let mut watch_changed = std::pin::pin!(async {
                    let changed = match leader_watch {
                        Some(w) => w.changed().await.is_ok(),
                        None => false,
                    };
                    if !changed {
                        // The router is gone (the proxy stops): nothing to watch.
                        std::future::pending::<()>().await;
                    }
                });
                // A hand-written select (as `tokio::select!`'s `biased`, in this order): no tuple
                // of branch futures built, moved and dropped at every pass.
                poll_fn(|cx| {
                    // The proxy drains (idle sessions leave) before it stops (every session
                    // leaves): an idle session waits for the first, a busy one for the second.
                    let stop = if idle {
                        drained.as_mut()
                    } else {
                        stopped.as_mut()
                    };
                    if stop.poll(cx).is_ready() {
                        return Poll::Ready(Wake::Shutdown);
                    }
                    if let Poll::Ready(e) = poll_conn(leader, cx) {
                        return Poll::Ready(match e {
                            ConnEvent::Fenced => Wake::Fenced(Side::Leader),
                            ConnEvent::Read(r) => Wake::Server(Side::Leader, r),
                        });
                    }
                    if let Poll::Ready(e) = poll_conn(replica, cx) {
                        return Poll::Ready(match e {
                            ConnEvent::Fenced => Wake::Fenced(Side::Replica),
                            ConnEvent::Read(r) => Wake::Server(Side::Replica, r),
                        });
                    }
                    if !blocked {
                        if let Poll::Ready(r) = poll_read_client(client, cbuf, cx) {
                            return Poll::Ready(Wake::Client(r));
                        }
                    }
                    if let (Some(timer), Some(_)) = (idle_timer.as_mut(), timer_at) {
                        if timer.as_mut().poll(cx).is_ready() {
                            return Poll::Ready(Wake::Timer);
                        }
                    }
                    if let (Some(timer), Some(_)) = (deadline_timer.as_mut(), deadline) {
                        if timer.as_mut().poll(cx).is_ready() {
                            // The stall deadline first when both passed, as before (a biased
                            // order).
                            let now = tokio::time::Instant::now();
                            return Poll::Ready(if stall_deadline.is_some_and(|at| at <= now) {
                                Wake::Stalled
                            } else {
                                Wake::Drain
                            });
                        }
                    }
                    if watch_switchover && watch_changed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Wake::Drain);
                    }
                    Poll::Pending
                })
                .await
            };
            if self.info.is_terminated() {
                // `pg_terminate_backend`: whatever woke the session (the end of its client, or
                // its server's answer to the cancel that came with it), it ends now with 57P01
                // (`finish`), relaying nothing more, as a terminated backend does.
                return End::ClientClosed;
            }
            match wake {
                Wake::Shutdown => return End::Shutdown,
                Wake::Timer => match (&mut self.idle_timer, timer_at) {
                    // Woken early: the timer was armed for an earlier unit's instant (above).
                    (Some(timer), Some(at)) if timer.deadline() < at => timer.as_mut().reset(at),
                    // When it was the park timer, the next pass parks.
                    _ if release_timer => {
                        drop_buffers(cbuf, &mut self.to_server);
                        self.release_idle();
                    }
                    _ => drop_buffers(cbuf, &mut self.to_server),
                },
                // The next pass applies the drain rule.
                Wake::Drain => {}
                Wake::Fenced(side) => {
                    let needed = self.units.needs_server(side);
                    let conn = self.conn(side).take();
                    let backend = conn
                        .as_ref()
                        .map(|c| c.route.backend.to_string())
                        .unwrap_or_default();
                    drop(conn);
                    self.update_servers();
                    if let Some(reason) =
                        pinned_leader_lost(self.units.pinned(), side, self.pinned_switchover)
                            .filter(|_| self.units.current().is_none())
                    {
                        return pinned_not_moved(reason);
                    }
                    if needed {
                        return End::ServerLost(format!(
                            "{} {backend} lost the leader key during a transaction or while the session was pinned to it",
                            side.as_str()
                        ));
                    }
                    debug!(%backend, "fenced an idle server connection; the session moves on");
                }
                Wake::Client(Ok(0)) => return End::ClientClosed,
                Wake::Client(Ok(n)) => {
                    self.c2s.inc_by(n as u64);
                    self.stalled_since = None;
                }
                Wake::Stalled => {
                    return End::Refused(
                        SqlState::PROTOCOL_VIOLATION,
                        "message_timeout",
                        format!(
                            "terminating connection: the client sent no byte of its unfinished message for {} s (client_message_timeout)",
                            self.rt.message_timeout.as_secs()
                        ),
                    )
                }
                Wake::Client(Err(e)) => return End::Io(e),
                Wake::Server(side, r) => {
                    if let Ok(n) = r {
                        self.filter_prepared(side, n);
                    }
                    let lost = match r {
                        Ok(0) => Some("closed the connection".to_string()),
                        Ok(_) => None,
                        Err(e) => Some(e.to_string()),
                    };
                    let handled = match (self.drain_at, self.drain_cancelled) {
                        // A switchover's drain_timeout may pass while a reply is being written
                        // (a result streaming): the write goes on while the server is cancelled.
                        (Some(at), None) => {
                            let cancel = self
                                .leader
                                .as_ref()
                                .and_then(|c| Some((c.route.backend.clone(), c.key.clone()?)));
                            let (handled, cancelled) =
                                Box::pin(cancel_at(at, cancel, self.handle_server(client, side, lost)))
                                    .await;
                            if cancelled {
                                self.drain_cancelled = Some(tokio::time::Instant::now());
                            }
                            handled
                        }
                        // Cancelled: the reply gets until the drain's last bound.
                        (_, Some(since)) => {
                            let bound = since + 2 * DRAIN_END_WAIT;
                            drained_by(Some(bound), self.handle_server(client, side, lost)).await
                        }
                        // A reply of the unit on the leader: most are written at once; one whose
                        // write blocks (a client that does not read) is bounded by a switchover
                        // that starts meanwhile ([`bounded_by_switchover`]).
                        (None, None)
                            if side == Side::Leader
                                && self.units.current() == Some(Side::Leader) =>
                        {
                            let (router, drain_timeout) = (&self.shared.router, self.rt.drain_timeout);
                            let mut watch = self.leader_watch.take();
                            let handled = {
                                let mut handling =
                                    std::pin::pin!(self.handle_server(client, side, lost));
                                match poll_fn(|cx| Poll::Ready(std::future::Future::poll(handling.as_mut(), cx))).await
                                {
                                    Poll::Ready(handled) => handled,
                                    Poll::Pending => {
                                        Box::pin(bounded_by_switchover(
                                            handling,
                                            router,
                                            watch.as_mut(),
                                            drain_timeout,
                                        ))
                                        .await
                                    }
                                }
                            };
                            self.leader_watch = watch;
                            handled
                        }
                        (None, None) => self.handle_server(client, side, lost).await,
                    };
                    if let Err(end) = handled {
                        return end;
                    }
                }
            }
        }
    }

    /// The running unit on the leader passed `drain_timeout`: sends its server a CancelRequest (a
    /// result still streaming stops at the server's error) and marks the session cancelled, so
    /// that the serving loop relays the server's answer, bounded, then ends with the FATAL
    /// ([`crate::conn::drain_end`]). `Err`: no leader connection or cancel key, the session ends
    /// now (with the FATAL when the client's stream is between two messages).
    async fn drain_cancel(&mut self) -> Result<(), End> {
        let key = self
            .leader
            .as_ref()
            .and_then(|c| Some((c.route.backend.clone(), c.key.clone()?)));
        let Some((backend, key)) = key else {
            let clean = self.leader.as_ref().is_none_or(|c| c.remaining == 0);
            return Err(End::Drained { clean });
        };
        Box::pin(crate::conn::send_cancel(
            &backend,
            &key,
            key.pid,
            DRAIN_END_WAIT,
        ))
        .await;
        self.drain_cancelled = Some(tokio::time::Instant::now());
        Ok(())
    }

    /// Writes `out`, whole messages of the proxy's own, to the client. While the write is under
    /// way the client's stream is inside a message ([`Session::client_mid_write`]): a drain
    /// deadline that stops it ends the session without the FATAL, which would not parse.
    async fn write_client_whole(
        &mut self,
        client: &mut ClientStream,
        out: &[u8],
    ) -> Result<(), End> {
        self.client_mid_write = true;
        client.write_all(out).await.map_err(End::Io)?;
        self.client_mid_write = false;
        Ok(())
    }

    /// Whether the session, idle, can leave its task: it holds no server connection and no session
    /// state, its client is plain TCP (TLS state lives in the stream) and the parking lot takes
    /// sessions.
    fn parkable(&self, client: &ClientStream) -> bool {
        self.leader.is_none()
            && self.replica.is_none()
            && self.units.may_park()
            && !client.is_tls()
            && self.shared.parking.get().is_some_and(|lot| lot.is_open())
    }

    fn update_servers(&self) {
        // Called twice per unit: the list is rebuilt (allocated) only when it changed.
        let servers: [Option<(&str, &'static str)>; 2] =
            [(Side::Leader, &self.leader), (Side::Replica, &self.replica)]
                .map(|(s, c)| c.as_ref().map(|c| (c.route.backend.member(), s.as_str())));
        let status = if self.units.current().is_some() {
            "active"
        } else {
            "idle"
        };
        let pinned = self.units.pinned().map(|(_, r)| r);
        self.info.update(|st| {
            let now = servers.iter().flatten().copied();
            if !st.servers.iter().map(|(m, r)| (m.as_str(), *r)).eq(now) {
                // In place: the list keeps its allocation while it empties and fills again
                // (transaction pooling takes and returns a connection at every unit).
                st.servers.clear();
                st.servers
                    .extend(servers.iter().flatten().map(|(m, r)| (m.to_string(), *r)));
            }
            st.status = status;
            st.pinned = pinned;
        });
    }

    /// An idle session's `idle_release` is over: its server connections go back to the pool.
    ///
    /// The idle timer stays: the next pass arms it for the park instant, and a timer armed for
    /// an earlier instant wakes the session early once, which re-arms it ([`Session::serve`]).
    /// With `idle_release` 0 (transaction pooling) this runs after every unit, and a timer
    /// dropped here was made, inserted in the runtime's timer wheel and removed again at every
    /// transaction (~650 instructions under callgrind, pgbench -S -c 64), against one early
    /// wake-up per `PARK_AFTER` of a busy session.
    fn release_idle(&mut self) {
        self.release_all(false);
        self.idle_since = None;
    }

    /// Returns the session's server connections to the pool (`closing`: the session ends; pool them
    /// only when clean).
    fn release_all(&mut self, closing: bool) {
        let clean = self.units.is_clean();
        for side in [Side::Leader, Side::Replica] {
            if let Some(conn) = self.conn(side).take() {
                if clean {
                    self.give_back(conn);
                }
            }
        }
        self.cancel.set(None);
        if !closing {
            self.update_servers();
        }
    }

    /// Handles server bytes read on `side` (or its loss).
    async fn handle_server(
        &mut self,
        client: &mut ClientStream,
        side: Side,
        lost: Option<String>,
    ) -> Result<(), End> {
        let is_current = self.units.current() == Some(side);
        let pinned_here = self.units.pinned().map(|(s, _)| s) == Some(side);
        if !is_current {
            // An idle connection spoke: a notice, a parameter change, a notification, or a FATAL
            // before the server closes it. Pinned sessions get it; others drop the connection when
            // it is not a harmless message. A session pinned to a leader stepping down says what
            // it holds instead of the stop's FATAL ([`pinned_leader_lost`]).
            let switchover_seen = self.pinned_switchover || self.shared.router.is_switching_over();
            let not_moved = pinned_leader_lost(self.units.pinned(), side, switchover_seen)
                .filter(|_| self.units.current().is_none());
            let mut keep = lost.is_none();
            let mut forward = BytesMut::new();
            let client_pid = self.client_pid;
            let shared = self.shared;
            if let Some(conn) = self.conn(side).as_mut() {
                while let Ok(Some(h)) = FrameHeader::peek(&conn.buf) {
                    if conn.buf.len() < h.frame_len {
                        break;
                    }
                    let mut frame = conn.buf.split_to(h.frame_len);
                    if let Some(key) = &conn.key {
                        translate_notification(
                            shared,
                            &mut frame,
                            &conn.route.backend,
                            key.pid,
                            client_pid,
                        );
                    }
                    match idle_message(h.tag, pinned_here) {
                        IdleMessage::Relay => forward.extend_from_slice(&frame),
                        IdleMessage::Ignore => {}
                        IdleMessage::RelayAndClose => {
                            if not_moved.is_none() {
                                forward.extend_from_slice(&frame);
                            }
                            keep = false;
                        }
                        IdleMessage::Close => keep = false,
                    }
                }
                if FrameHeader::peek(&conn.buf).is_err() {
                    keep = false;
                }
            }
            if !forward.is_empty() {
                client.write_all(&forward).await.map_err(End::Io)?;
                self.s2c.inc_by(forward.len() as u64);
            }
            if !keep {
                let conn = self.conn(side).take();
                let backend = conn.as_ref().map(|c| c.route.backend.to_string());
                drop(conn);
                self.update_servers();
                if let Some(reason) = not_moved {
                    return Err(pinned_not_moved(reason));
                }
                if pinned_here {
                    return Err(End::ServerLost(format!(
                        "the server of a pinned session ({}) closed its connection",
                        backend.unwrap_or_default()
                    )));
                }
                debug!(backend = ?backend, "an idle server connection went away; dropped it");
            }
            return Ok(());
        }
        if side == Side::Replica && self.units.may_retry() {
            match self.judge_replica_reply(lost.is_some()).await? {
                Held::Hold | Held::Retried => return Ok(()),
                Held::Stream => {}
            }
        }
        let client_pid = self.client_pid;
        let shared = self.shared;
        let Some(conn) = self.conn(side).as_mut() else {
            return Ok(());
        };
        // Stream complete and partial messages to the client, watching tags for ReadyForQuery and
        // ErrorResponse.
        let mut i = 0;
        // On the stack: a reply holds one ReadyForQuery per Query or Sync (no allocation per unit).
        let mut readies: smallvec::SmallVec<[TxStatus; 4]> = smallvec::SmallVec::new();
        let mut error = false;
        let mut protocol_error = None;
        loop {
            if conn.remaining > 0 {
                let n = conn.remaining.min(conn.buf.len() - i);
                i += n;
                conn.remaining -= n;
                if conn.remaining > 0 {
                    break;
                }
                continue;
            }
            match FrameHeader::peek(&conn.buf[i..]) {
                Ok(None) => break,
                Err(e) => {
                    protocol_error = Some(e.to_string());
                    break;
                }
                Ok(Some(h)) => {
                    if h.tag == READY_FOR_QUERY {
                        if conn.buf.len() - i < h.frame_len {
                            break;
                        }
                        match TxStatus::from_ready_for_query(&conn.buf[i + 5..i + h.frame_len]) {
                            Ok(s) => readies.push(s),
                            Err(e) => {
                                protocol_error = Some(e.to_string());
                                break;
                            }
                        }
                        i += h.frame_len;
                        continue;
                    }
                    if h.tag == NOTIFICATION_RESPONSE {
                        // Whole, to give the session's own notifications the client's PID.
                        if conn.buf.len() - i < h.frame_len {
                            break;
                        }
                        if let Some(key) = &conn.key {
                            let frame = &mut conn.buf[i..i + h.frame_len];
                            translate_notification(
                                shared,
                                frame,
                                &conn.route.backend,
                                key.pid,
                                client_pid,
                            );
                        }
                        i += h.frame_len;
                        continue;
                    }
                    if h.tag == ERROR_RESPONSE {
                        error = true;
                    }
                    conn.remaining = h.frame_len;
                }
            }
        }
        if i > 0 {
            let result = client.write_all(&conn.buf[..i]).await;
            conn.buf.advance(i);
            self.s2c.inc_by(i as u64);
            result.map_err(End::Io)?;
        }
        if let Some(e) = protocol_error {
            return Err(End::ServerLost(format!(
                "the server broke the protocol: {e}"
            )));
        }
        self.units.on_server_messages(error, &readies);
        if let Some(reason) = lost {
            self.conn(side).take();
            return Err(End::ServerLost(format!(
                "the {} server {reason} during a transaction",
                side.as_str()
            )));
        }
        if self.units.is_unit_over(self.client_remaining) {
            self.end_unit(side);
        }
        Ok(())
    }

    /// A read on the replica that the leader could run instead: holds the replica's reply while
    /// it shows no result, and runs the unit on the leader when the replica refused it for a
    /// standby's reason ([`UnitTracker::judge_replica_reply`]). `lost`: the replica connection
    /// ended (its bytes stream, as they would).
    async fn judge_replica_reply(&mut self, lost: bool) -> Result<Held, End> {
        let Some(conn) = self.replica.as_mut() else {
            return Ok(Held::Stream);
        };
        let (reply_len, sqlstate, unit) = match self.units.judge_replica_reply(&conn.buf, lost) {
            ReplicaVerdict::Hold => return Ok(Held::Hold),
            ReplicaVerdict::Stream => return Ok(Held::Stream),
            ReplicaVerdict::RetryOnLeader {
                reply_len,
                sqlstate,
                unit,
            } => (reply_len, sqlstate, unit),
        };
        // The replica answered the whole unit (through ReadyForQuery) and the client saw none of
        // it: the unit runs on the leader; without a leader, the client gets the replica's reply.
        let held = conn.buf.split_to(reply_len);
        let leader = self.ensure_conn(Side::Leader).await;
        if leader != Ok(Side::Leader) {
            // A pooled connection may have been taken ([`Session::conn_at_hand`]).
            self.update_servers();
            debug!(
                ?leader,
                "no leader to run a read the replica refused ({sqlstate})"
            );
            if let Some(conn) = self.replica.as_mut() {
                let rest = std::mem::replace(&mut conn.buf, held);
                conn.buf.unsplit(rest);
            }
            return Ok(Held::Stream);
        }
        debug!(
            sqlstate,
            "the replica refused a read for a standby's reason; running it on the leader"
        );
        self.shared
            .metrics
            .leader_retries_total
            .with_label_values(&[sqlstate])
            .inc();
        self.units.ran_on_leader(sqlstate);
        if let Some(c) = self.leader.as_mut() {
            c.note_leader_unit(&self.shared.cancels, self.client_pid);
        }
        let key = self
            .leader
            .as_ref()
            .and_then(|c| c.key.as_ref().map(|k| (&c.route.backend, k)));
        self.cancel.set(key);
        self.update_servers();
        self.write_server(&unit).await?;
        Ok(Held::Retried)
    }

    /// The current unit is over (idle point).
    fn end_unit(&mut self, side: Side) {
        let ended = self.units.end_unit(side);
        if self.read_your_writes && ended.wrote {
            // Where the commit ends is asked only when a read would go to a replica.
            self.commit = Commit::Unknown;
        }
        // One clock read per unit end: the unit's duration and the idle point's start.
        let now = Instant::now();
        side.unit_metrics(&self.shared.metrics).seconds.observe(
            now.saturating_duration_since(self.unit_started)
                .as_secs_f64(),
        );
        if ended.set_recorded {
            let n = self.units.sets().len();
            if let Some(c) = self.conn(side).as_mut() {
                c.applied_sets = n;
            }
        }
        self.info
            .busy
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.idle_since = Some(now);
        self.unit_ended = Some(now);
        self.cancel.set(None);
        // With `idle_release` 0 (`pool_mode: transaction`) a session that may release does so on
        // the serving loop's next pass, before it waits ([`idle_plan`]: `Release`), or its next
        // unit starts first (buffered): either publishes the list and status, so this one would
        // be overwritten at once (one lock and compare less per transaction).
        if !(self.units.may_release() && self.idle_release().is_zero()) {
            self.update_servers();
        }
    }

    /// Handles the client's buffered messages. `Ok(true)`: stop reading the client until the current
    /// unit ends.
    async fn handle_client(
        &mut self,
        client: &mut ClientStream,
        cbuf: &mut BytesMut,
    ) -> Result<bool, End> {
        loop {
            // The tail of a message being streamed through.
            if self.client_remaining > 0 {
                if cbuf.is_empty() {
                    return Ok(false);
                }
                let n = self.client_remaining.min(cbuf.len());
                let chunk = cbuf.split_to(n);
                self.client_remaining -= n;
                if !self.units.is_discarding() {
                    self.write_current(&chunk).await?;
                }
                continue;
            }
            let h = match FrontendHeader::peek(cbuf, self.rt.max_message_size) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(false),
                Err(e) => {
                    if matches!(e, praetor_protocol::ProtocolError::MessageTooLarge { .. }) {
                        self.shared
                            .metrics
                            .client_error(ListenerKind::Auto, "message_too_large");
                    }
                    return Err(End::Protocol(e.sqlstate(), e.to_string()));
                }
            };
            if self.units.is_discarding() {
                if h.tag == SYNC {
                    if cbuf.len() < h.frame_len {
                        return Ok(false);
                    }
                    cbuf.advance(h.frame_len);
                    self.units.sync_discarded();
                    let mut out = BytesMut::new();
                    encode_ready_for_query(&mut out, TxStatus::Idle);
                    self.write_client_whole(client, &out).await?;
                } else {
                    let n = h.frame_len.min(cbuf.len());
                    cbuf.advance(n);
                    self.client_remaining = h.frame_len - n;
                }
                continue;
            }
            if h.tag == TERMINATE {
                return Err(End::Terminated);
            }
            if h.tag == PASSWORD {
                return Err(End::Protocol(
                    SqlState::PROTOCOL_VIOLATION,
                    "unexpected password message".into(),
                ));
            }
            let needs_whole = matches!(h.tag, QUERY | PARSE) || self.rewrites(h.tag);
            let complete = cbuf.len() >= h.frame_len;
            if needs_whole && !complete {
                // No reservation of the declared length: the buffer grows as the bytes arrive
                // (`poll_read_client`), so a client that declares 1 GiB and sends 5 bytes costs 5 bytes.
                return Ok(false);
            }
            // Both rewrites need a function call, so a `(`: one scan spares the common statement
            // that has none the second.
            if needs_whole && may_call_function(&cbuf[..h.frame_len]) {
                if let Some(answer) = translate_backend_pid(&cbuf[..h.frame_len], self.client_pid) {
                    // `SELECT pg_backend_pid()` answers the PID the client knows: the message is
                    // replaced in the buffer and read again.
                    let rest = cbuf.split_off(h.frame_len);
                    let mut replaced = answer;
                    replaced.extend_from_slice(&rest);
                    *cbuf = replaced;
                    continue;
                }
                if let Some((signal, pid)) = signal_backend_call(&cbuf[..h.frame_len]) {
                    // Boxed, as every rare wait of this function (see `serve`).
                    if let Some(result) = Box::pin(self.signal_session(signal, pid)).await {
                        // Carried out here: the statement becomes `SELECT <result> AS <function>`
                        // for the server to answer, as `SELECT pg_backend_pid()` above.
                        let answer = answer_signal_backend(&cbuf[..h.frame_len], signal, result)
                            .expect("a Query or Parse message");
                        let rest = cbuf.split_off(h.frame_len);
                        let mut replaced = answer;
                        replaced.extend_from_slice(&rest);
                        *cbuf = replaced;
                        continue;
                    }
                }
            }

            // What the message does ([`UnitTracker::on_client_message`]): opens no unit, goes
            // to the running unit's server, waits for it to end, or opens a unit to route.
            let paused = self.paused();
            let ctx = Ctx {
                classifier: &self.rt.classifier,
                max_message_size: self.rt.max_message_size,
                has_leader: self.leader.is_some(),
                has_replica: self.replica.is_some(),
                paused,
                tracks_prepared: self.prepared.is_some(),
                leader_stepping_down: self.shared.router.is_switching_over(),
            };
            let decision = match self.units.on_client_message(cbuf, h, &ctx) {
                ClientStep::Route(decision) => decision,
                ClientStep::Forward { next_unit, pinned } => {
                    if let Some(side) = next_unit {
                        self.begin_unit_stats(side);
                    }
                    if let (Some(reason), Some(side)) = (pinned, self.units.current()) {
                        self.pinned_to(side, reason);
                    }
                    self.forward_message(cbuf, h).await?;
                    continue;
                }
                ClientStep::Wait => return Ok(true),
                ClientStep::Drop { whole: true } => {
                    // Only Flush: the unit's Query or Sync makes the server flush anyway.
                    if !complete {
                        return Ok(false);
                    }
                    cbuf.advance(h.frame_len);
                    continue;
                }
                ClientStep::Drop { whole: false } => {
                    // With no current side, `write_current` drops the message's tail too.
                    let n = h.frame_len.min(cbuf.len());
                    cbuf.advance(n);
                    self.client_remaining = h.frame_len - n;
                    continue;
                }
                ClientStep::AnswerReady(tx) => {
                    if !complete {
                        return Ok(false);
                    }
                    cbuf.advance(h.frame_len);
                    let mut out = BytesMut::new();
                    encode_ready_for_query(&mut out, tx);
                    self.write_client_whole(client, &out).await?;
                    self.s2c.inc_by(out.len() as u64);
                    continue;
                }
            };

            if self.info.is_killed() {
                // KILL (a RESUME may have followed before this session ran): nothing more runs.
                return Err(End::ClientClosed);
            }
            // An idle point: route the unit, after `RESUME` when the database is paused (the
            // client sees a slow statement, no error, as with PgBouncer).
            if self.paused() {
                // One lock, no copy of the state (its names and server list).
                let before = self
                    .info
                    .update(|st| std::mem::replace(&mut st.status, "held"));
                let info = self.info.clone();
                let resumed = Box::pin(
                    self.shared
                        .router
                        .wait_unpaused_unless(self.database(), || info.is_killed()),
                )
                .await;
                self.info.update(|st| st.status = before);
                if !resumed {
                    // KILL: what the client sent while held never runs.
                    return Err(End::ClientClosed);
                }
            }
            let routed =
                if self.units.uses_read_your_writes(&decision) && self.commit != Commit::Clean {
                    Box::pin(self.read_your_writes_conn()).await
                } else {
                    self.ensure_conn(decision.side).await
                };
            match routed {
                Ok(side) => {
                    self.start_unit(side, &decision, cbuf, h);
                    self.forward_message(cbuf, h).await?;
                }
                Err(message) => {
                    // A pooled connection may have been taken ([`Session::conn_at_hand`] does not
                    // publish it).
                    self.update_servers();
                    // Answer the unit with an error and go on.
                    let mut out = BytesMut::new();
                    encode_error_response(
                        &mut out,
                        Severity::Error,
                        SqlState::CONNECTION_FAILURE,
                        &message,
                    );
                    if h.tag == QUERY {
                        cbuf.advance(h.frame_len);
                        encode_ready_for_query(&mut out, self.units.tx());
                    } else {
                        self.units.discard_until_sync();
                    }
                    self.write_client_whole(client, &out).await?;
                    if self.units.pinned().is_some() {
                        return Err(End::ServerLost(message));
                    }
                }
            }
        }
    }

    /// `pg_cancel_backend(pid)` / `pg_terminate_backend(pid)` with a PID this proxy gave an open
    /// auto-port session (PostgreSQL would not know it: "PID ... is not a PostgreSQL backend
    /// process"): carried out here, and the function's result returned. `None`: not such a PID, or
    /// the victim's user is not this session's user; the statement then goes to the server
    /// unchanged, which answers as PostgreSQL does.
    ///
    /// Privilege: PostgreSQL lets a superuser, a member of `pg_signal_backend` or a member of the
    /// victim's role signal it (`signalfuncs.c`, `pg_signal_backend`). The proxy knows no roles,
    /// so it only acts for the same user name (what PostgreSQL allows any role); others get
    /// PostgreSQL's own answer for a PID it does not know.
    ///
    /// Cancel: a CancelRequest to the server running the victim's current statement; `false` when
    /// it runs none (PostgreSQL answers `true` for an idle backend: there the signal is sent and
    /// ignored; here there is nothing to send it to). Terminate: the victim's statement, if any, is
    /// cancelled, and the session ends with FATAL 57P01 ([`crate::clients::Clients::terminate`]);
    /// its server connections close unless idle and clean.
    async fn signal_session(&mut self, signal: BackendSignal, pid: i32) -> Option<bool> {
        let victim = self.shared.cancels.session_by_pid(pid)?;
        if victim.client().user() != self.user {
            debug!(
                pid,
                function = signal.function(),
                "a signal to another user's session: left to the server"
            );
            return None;
        }
        let running = victim.get();
        if signal == BackendSignal::Terminate {
            // First the mark, so that the victim ends with 57P01 rather than relaying the
            // cancel's 57014; the cancel then stops its statement on the server, which would
            // otherwise run on (a backend notices a closed client only when it writes).
            let id = victim.client().id;
            let found = self.shared.clients.terminate(id);
            // A session held by `PAUSE` reads nothing: woken, it sees the mark and ends.
            self.shared.router.wake_all();
            info!(
                pid,
                client = id,
                found,
                "pg_terminate_backend: ending the session"
            );
        }
        if let Some((backend, key)) = &running {
            crate::conn::send_cancel(backend, key, pid, self.rt.connect_timeout).await;
        }
        Some(signal == BackendSignal::Terminate || running.is_some())
    }

    /// Forwards the message at the front of `cbuf` (whole, or what is there of it) to the current
    /// side, counting what it ends.
    async fn forward_message(&mut self, cbuf: &mut BytesMut, h: FrontendHeader) -> Result<(), End> {
        self.units.forwarded(h);
        if self.track_prepared(cbuf, h) {
            // Its replacement is queued for the server already.
            cbuf.advance(h.frame_len);
            return Ok(());
        }
        let n = h.frame_len.min(cbuf.len());
        self.client_remaining = h.frame_len - n;
        if n < GATHER_LIMIT_BYTES {
            // What `write_current` does with a small message, copied straight from the buffer: a
            // split would turn the buffer into a shared one and count references at every message.
            if self.units.current().is_some() {
                self.to_server.extend_from_slice(&cbuf[..n]);
            }
            cbuf.advance(n);
            return Ok(());
        }
        let chunk = cbuf.split_to(n);
        self.write_current(&chunk).await
    }

    /// Queues `bytes` for the current side's server; [`Session::flush_current`] writes them. Small
    /// messages are gathered so that a client's batch (an extended-protocol Parse, Bind, Describe,
    /// Execute, Sync in one packet) costs one write to the server, not one per message; a large
    /// chunk is written at once after what is queued, without a copy.
    async fn write_current(&mut self, bytes: &[u8]) -> Result<(), End> {
        if self.units.current().is_none() {
            return Ok(());
        }
        if bytes.len() < GATHER_LIMIT_BYTES {
            self.to_server.extend_from_slice(bytes);
            return Ok(());
        }
        self.flush_current().await?;
        self.write_server(bytes).await
    }

    /// Writes what [`Session::write_current`] queued for the current side.
    async fn flush_current(&mut self) -> Result<(), End> {
        if self.to_server.is_empty() {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.to_server);
        let result = self.write_server(&queued).await;
        // The buffer is kept for the next batch (cleared, its capacity reused) unless it grew
        // large; an idle session drops it.
        if queued.capacity() <= GATHER_LIMIT_BYTES {
            self.to_server = queued;
            self.to_server.clear();
        }
        result
    }

    async fn write_server(&mut self, bytes: &[u8]) -> Result<(), End> {
        let Some(side) = self.units.current() else {
            return Ok(());
        };
        let Some(conn) = self.conn(side).as_mut() else {
            return Err(End::ServerLost(
                "no server connection for the transaction".into(),
            ));
        };
        if let Err(e) = conn.stream.write_all(bytes).await {
            self.conn(side).take();
            return Err(End::ServerLost(format!(
                "lost the {} server during a transaction: {e}",
                side.as_str()
            )));
        }
        Ok(())
    }

    /// Counts a unit on `side`.
    fn begin_unit_stats(&mut self, side: Side) {
        side.unit_metrics(&self.shared.metrics).transactions.inc();
    }

    /// The session's database (the user's name when the StartupMessage names none).
    fn database(&self) -> &str {
        crate::pool::startup_database(&self.startup).unwrap_or(&self.user)
    }

    /// Returns a released server connection to the pool, or closes it when a `RECONNECT` asked
    /// for new connections.
    fn give_back(&self, conn: Box<ServerConn>) {
        let router = &self.shared.router;
        if router.any_reconnect() && router.is_stale(conn.route.connection_id(), self.database()) {
            debug!(backend = %conn.route.backend, "closing a server connection: RECONNECT");
            return;
        }
        self.shared.pool.put(conn, &self.startup, self.rt.pool_size);
    }

    /// Whether the admin console paused this session's database (`PAUSE`).
    fn paused(&self) -> bool {
        self.shared.router.any_paused() && self.shared.router.is_paused(self.database())
    }

    fn start_unit(&mut self, side: Side, decision: &Decision, cbuf: &BytesMut, h: FrontendHeader) {
        self.info
            .busy
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let pinned = self.units.start_unit(side, decision, cbuf, h);
        self.unit_started = Instant::now();
        self.begin_unit_stats(side);
        if let Some(reason) = pinned {
            self.pinned_to(side, reason);
        }
        if let (Side::Leader, Some(c)) = (side, self.leader.as_mut()) {
            c.note_leader_unit(&self.shared.cancels, self.client_pid);
        }
        let key = self
            .conn_ref(side)
            .and_then(|c| c.key.as_ref().map(|k| (&c.route.backend, k)));
        self.cancel.set(key);
        self.idle_since = None;
        self.update_servers();
    }

    /// The session was just pinned to `side` for `reason` ([`UnitTracker::pin`]): counts it and
    /// gives the other connection back, of no use any more.
    fn pinned_to(&mut self, side: Side, reason: PinReason) {
        self.shared
            .metrics
            .pinned_total
            .with_label_values(&[&reason.to_string()])
            .inc();
        debug!(%reason, side = side.as_str(), "session pinned");
        if let Some(c) = self.conn(side.other()).take() {
            if self.units.sets().is_empty() {
                self.give_back(c);
            }
        }
    }

    fn conn_ref(&self, side: Side) -> Option<&ServerConn> {
        match side {
            Side::Leader => self.leader.as_deref(),
            Side::Replica => self.replica.as_deref(),
        }
    }

    /// Makes sure the session has a usable connection for `side`; returns the side actually used
    /// (reads fall back to the leader when no replica is fresh). Waits up to `connect_timeout` for a
    /// routable server. `Err`: the message for the client.
    async fn ensure_conn(&mut self, side: Side) -> Result<Side, String> {
        // The common case, without awaiting: a connection at hand that has run the session's
        // SETs. What may wait (replaying SETs, routing, opening a connection) is boxed, so that
        // this future, awaited at every unit inside the serving loop's, stays small (a large one
        // is copied into place at each unit).
        match self.conn_at_hand(side) {
            Some(actual) if self.is_caught_up(actual) => Ok(actual),
            Some(actual) => Box::pin(self.catch_up(actual)).await.map(|_| actual),
            None => Box::pin(self.open_conn(side)).await,
        }
    }

    /// Whether the connection on `side` has run every SET of the session ([`Session::catch_up`]
    /// has nothing to do).
    fn is_caught_up(&self, side: Side) -> bool {
        self.conn_ref(side)
            .is_none_or(|c| c.applied_sets >= self.units.sets().len())
    }

    /// The connection [`Session::ensure_conn`] uses without opening one: the session's own on
    /// `side` while it is still a good choice, the leader's for a read when reads go to the
    /// leader, or a pooled connection to the server a route would pick. `None`: a connection must
    /// be opened ([`Session::open_conn`]).
    fn conn_at_hand(&mut self, side: Side) -> Option<Side> {
        let want = match side {
            Side::Leader => Want::Leader,
            Side::Replica => Want::Read,
        };
        // Keep the connection we have while it is still a good choice.
        if let Some(c) = self.conn_ref(side) {
            let router = &self.shared.router;
            let fresh = !(router.any_reconnect()
                && router.is_stale(c.route.connection_id(), self.database()));
            if (fresh && self.shared.router.is_routable(&c.route.backend, want))
                || self.units.pinned().map(|(s, _)| s) == Some(side)
            {
                return Some(side);
            }
            debug!(backend = %c.route.backend, "the server is no longer routable for this session");
            if let Some(c) = self.conn(side).take() {
                if self.units.sets().is_empty() {
                    self.give_back(c);
                }
            }
        }
        if side == Side::Replica {
            if let Some(l) = &self.leader {
                // Reads on the leader connection when the leader is where reads go now.
                if self.shared.router.is_routable(&l.route.backend, Want::Read) {
                    return Some(Side::Leader);
                }
            }
        }
        // A pooled connection to the server a route would pick: it has its own route (registered
        // and fenced with its server), so none is made for this unit (transaction pooling takes
        // one at every unit).
        let picked = self.shared.router.pick(want).ok()?;
        let actual = Side::of(picked.role);
        if actual != side && self.conn_ref(actual).is_some() {
            return Some(actual);
        }
        let conn = self.pool_take(picked.backend())?;
        *self.conn(actual) = Some(conn);
        // Not published here: the unit starts right after ([`Session::start_unit`] publishes the
        // list with the status), or the caller publishes it when none does (one lock and compare
        // less per transaction with `pool_mode: transaction`).
        Some(actual)
    }

    /// A pooled connection to `backend` made with the session's StartupMessage, from the idle
    /// list the session keeps ([`Session::pool_list`]; looked up by key only when the server
    /// changed).
    fn pool_take(&mut self, backend: &crate::topology::Backend) -> Option<Box<ServerConn>> {
        if self
            .pool_list
            .as_ref()
            .is_none_or(|l| l.backend() != backend)
        {
            self.pool_list = Some(self.shared.pool.list(backend, &self.startup));
        }
        self.shared.pool.take_from(self.pool_list.as_deref()?)
    }

    /// [`Session::ensure_conn`] when no connection is at hand: routes (waiting up to
    /// `connect_timeout` for a routable server) and takes a pooled connection or opens one.
    async fn open_conn(&mut self, side: Side) -> Result<Side, String> {
        let want = match side {
            Side::Leader => Want::Leader,
            Side::Replica => Want::Read,
        };
        let deadline = Instant::now() + self.rt.connect_timeout;
        loop {
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return Err(format!(
                    "no {} is available (waited {:?})",
                    side.as_str(),
                    self.rt.connect_timeout
                ));
            }
            let route = match self.shared.router.route_want(want, wait).await {
                Ok(r) => r,
                Err(NoRoute::NoBackend) => {
                    return Err(format!(
                        "no {} is available (waited {:?})",
                        side.as_str(),
                        self.rt.connect_timeout
                    ))
                }
                Err(NoRoute::Suspended(r)) => return Err(format!("the proxy is not serving: {r}")),
            };
            route.set_database(self.database());
            let actual = Side::of(route.role);
            if actual != side && self.conn_ref(actual).is_some() {
                return self.catch_up(actual).await.map(|_| actual);
            }
            if let Some(conn) = self.pool_take(&route.backend) {
                *self.conn(actual) = Some(conn);
                self.update_servers();
                return self.catch_up(actual).await.map(|_| actual);
            }
            let mut place = None;
            if let Some(conn) = self.pool_slot(&route, &mut place).await? {
                *self.conn(actual) = Some(conn);
                self.update_servers();
                return self.catch_up(actual).await.map(|_| actual);
            }
            let described = format!("{} {}", route.role.as_str(), route.backend);
            let gauge = self.count_connection(&route);
            let mut auth = PasswordAuth::with_credential(&self.user, self.credential.clone());
            match open(
                route,
                gauge,
                &self.rt.backend_tls,
                self.rt.connect_timeout,
                &self.startup,
                &mut auth,
            )
            .await
            {
                Ok((mut conn, _)) => {
                    conn.slot = place;
                    *self.conn(actual) = Some(conn);
                    self.update_servers();
                    return self.catch_up(actual).await.map(|_| actual);
                }
                Err(OpenError::NotReady(m)) => {
                    debug!(backend = %described, "{m}; waiting for the cluster");
                    let wait = deadline
                        .saturating_duration_since(Instant::now())
                        .min(std::time::Duration::from_millis(200));
                    self.shared.router.changed(wait).await;
                }
                Err(OpenError::Connect(m) | OpenError::Failed(m)) => {
                    warn!(backend = %described, "cannot open a server connection: {m}");
                    return Err(format!("could not connect to {described}: {m}"));
                }
                Err(OpenError::NeedPassword) => {
                    return Err(format!(
                        "{described} asks for a password the client did not give"
                    ))
                }
                Err(OpenError::Refused(_, f)) => {
                    return Err(format!(
                        "{described} refused the connection: {}",
                        f.message().unwrap_or("")
                    ))
                }
            }
        }
    }

    /// Read-your-writes ([`crate::ryw`]): a read of a session that wrote gets a connection to a
    /// replica that has replayed the session's last commit, or to the leader. Learns the commit's
    /// position from the leader first when it is not known, and asks the replica its replay
    /// position when the one known is behind. `Err`: the message for the client, as
    /// [`Session::ensure_conn`].
    async fn read_your_writes_conn(&mut self) -> Result<Side, String> {
        let count = |s: &Session<'_>, route: &str| {
            s.shared
                .metrics
                .read_your_writes_total
                .with_label_values(&[route])
                .inc();
        };
        if read_route(self.commit, None, false) == ReadRoute::AskLeader {
            match self.ask_lsn(Side::Leader, ryw::LEADER_LSN_QUERY).await {
                Some(lsn) => self.commit = Commit::At(lsn),
                None => {
                    count(self, "leader");
                    return self.ensure_conn(Side::Leader).await;
                }
            }
        }
        // The replica this read would use (or the leader, when reads go there anyway).
        let side = self.ensure_conn(Side::Replica).await?;
        let backend = match (side, &self.replica) {
            (Side::Replica, Some(c)) => c.route.backend.clone(),
            _ => return Ok(side),
        };
        let mut asked = false;
        loop {
            let known = self.shared.router.known_replay(&backend);
            match read_route(self.commit, known, asked) {
                ReadRoute::Replica => {
                    // Still a usable connection to that replica (a topology change while asking
                    // may have made the session route elsewhere: another replica is not known
                    // to have replayed the commit).
                    let side = self.ensure_conn(Side::Replica).await?;
                    let same = self
                        .replica
                        .as_ref()
                        .is_some_and(|c| c.route.backend == backend);
                    if side == Side::Replica && same {
                        count(self, if asked { "replica_asked" } else { "replica" });
                        return Ok(side);
                    }
                    count(self, "leader");
                    return self.ensure_conn(Side::Leader).await;
                }
                ReadRoute::AskReplica => {
                    asked = true;
                    if let Some(lsn) = self.ask_lsn(Side::Replica, ryw::REPLICA_LSN_QUERY).await {
                        self.shared.router.note_replay(&backend, lsn);
                    }
                }
                ReadRoute::AskLeader | ReadRoute::Leader => {
                    count(self, "leader");
                    return self.ensure_conn(Side::Leader).await;
                }
            }
        }
    }

    /// Runs `query` (one of [`crate::ryw`]'s WAL position queries) on the session's idle
    /// connection for `side` and parses its answer; `None` when the connection cannot be had on
    /// that side, the server fails, answers NULL or takes longer than `connect_timeout` (then the
    /// connection is dropped: its state is unknown).
    async fn ask_lsn(&mut self, side: Side, query: &str) -> Option<u64> {
        if self.ensure_conn(side).await != Ok(side) {
            return None;
        }
        let wait = self.rt.connect_timeout;
        let conn = self.conn(side).as_mut()?;
        match tokio::time::timeout(wait, conn.query_value(query)).await {
            Ok(Ok(value)) => value.as_deref().and_then(ryw::parse_lsn),
            Ok(Err(e)) => {
                debug!(
                    side = side.as_str(),
                    "{query}: {e:?}; dropping the connection"
                );
                self.conn(side).take();
                self.update_servers();
                None
            }
            Err(_) => {
                debug!(
                    side = side.as_str(),
                    "{query}: no answer; dropping the connection"
                );
                self.conn(side).take();
                self.update_servers();
                None
            }
        }
    }

    /// Replays the session's SETs the connection on `side` has not run yet.
    async fn catch_up(&mut self, side: Side) -> Result<(), String> {
        let n = self.units.sets().len();
        let (missing, forgets) = match self.conn_ref(side) {
            Some(c) if c.applied_sets < n => (
                self.units.sets()[c.applied_sets..].join(";"),
                self.units.sets()[c.applied_sets..]
                    .iter()
                    .any(|s| crate::prepared::forgets_statements(s.as_bytes())),
            ),
            _ => return Ok(()),
        };
        let Some(conn) = self.conn(side).as_mut() else {
            return Ok(());
        };
        match conn.run_quietly(&missing).await {
            Ok(()) => {
                if forgets {
                    // A replayed `DISCARD ALL` dropped the server's prepared statements.
                    conn.prepared.forget_all();
                }
                conn.applied_sets = n;
                Ok(())
            }
            Err(e) => {
                self.conn(side).take();
                Err(match e {
                    OpenError::Failed(m) | OpenError::Connect(m) | OpenError::NotReady(m) => m,
                    OpenError::Refused(_, f) => f.message().unwrap_or("refused").to_string(),
                    OpenError::NeedPassword => "the server asks for a password".to_string(),
                })
            }
        }
    }
}

/// A boolean option as PostgreSQL spells it (`on`, `off`, `true`, `false`, `yes`, `no`, `1`, `0`).
fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// What [`Session::judge_replica_reply`] did with a replica's reply.
enum Held {
    /// Kept back, waiting for more of it.
    Hold,
    /// To be streamed to the client as usual.
    Stream,
    /// Dropped; the unit runs on the leader.
    Retried,
}

/// What happened on one of the session's server connections.
enum ConnEvent {
    Fenced,
    Read(std::io::Result<usize>),
}

/// Reads the client into `cbuf`. A buffer an idle session gave back (no capacity) is allocated
/// only once bytes are there: a plain TCP client is waited for with `poll_read_ready` first. A poll
/// function, not an `async fn`: the serving loop polls it in place ([`Session::serve`]).
fn poll_read_client(
    client: &mut ClientStream,
    cbuf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if cbuf.capacity() == 0 {
        if let ClientStream::Plain(tcp) = client {
            // `poll_read_ready` rather than `readable()`: no waiter state to store. The read goes
            // through `poll_read`, which, unlike `try_read`, forgets the socket's readiness after a
            // short read, so the next wait does not begin with a read that finds nothing.
            std::task::ready!(tcp.poll_read_ready(cx))?;
            cbuf.reserve(CLIENT_BUFFER_BYTES);
            let read = tokio_util::io::poll_read_buf(Pin::new(&mut *tcp), cx, cbuf);
            if read.is_pending() {
                // The readiness was stale: wait without a buffer again.
                *cbuf = BytesMut::new();
            }
            return read;
        }
        cbuf.reserve(CLIENT_BUFFER_BYTES);
    }
    tokio_util::io::poll_read_buf(Pin::new(client), cx, cbuf)
}

/// Frees an idle session's client read buffer and its queue for the server (each when empty).
fn drop_buffers(cbuf: &mut BytesMut, to_server: &mut BytesMut) {
    if cbuf.is_empty() {
        *cbuf = BytesMut::new();
    }
    if to_server.is_empty() {
        *to_server = BytesMut::new();
    }
}

/// Runs `handling` to its end, or until the drain deadline `at` (then [`End::Drained`], not clean:
/// a write to the client may have stopped inside a message; the caller knows whether it did).
async fn drained_by<T>(
    at: Option<tokio::time::Instant>,
    handling: impl std::future::Future<Output = Result<T, End>>,
) -> Result<T, End> {
    match at {
        Some(at) => tokio::time::timeout_at(at, handling)
            .await
            .unwrap_or(Err(End::Drained { clean: false })),
        None => handling.await,
    }
}

/// Runs `handling`, a reply of the unit on the leader whose write to the client blocked before any
/// switchover, to its end; should the DCS ask the leader to step down meanwhile (`router`,
/// watched through `watch`), only until `drain_timeout` after that plus 2 x [`DRAIN_END_WAIT`]
/// for the write to go on (then the serving loop cancels the statement and relays its answer,
/// [`crate::conn::drain_end`]); past it [`End::Drained`], not clean (the write stopped inside a
/// message): the session closes the client's socket and cancels the statement (`finish`). A
/// client that does not read cannot keep a unit on the former leader past its drain.
async fn bounded_by_switchover<T>(
    handling: Pin<&mut impl std::future::Future<Output = Result<T, End>>>,
    router: &crate::router::Router,
    mut watch: Option<&mut tokio::sync::watch::Receiver<u64>>,
    drain_timeout: std::time::Duration,
) -> Result<T, End> {
    let deadline = async {
        loop {
            if let Some(since) = router
                .switching_since()
                .filter(|_| router.is_switching_over())
            {
                let at = tokio::time::Instant::from_std(since) + drain_timeout + 2 * DRAIN_END_WAIT;
                tokio::time::sleep_until(at).await;
                return;
            }
            let changed = match watch.as_mut() {
                Some(w) => w.changed().await.is_ok(),
                None => false,
            };
            if !changed {
                // Nothing to watch (the router is gone: the proxy stops).
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        handled = handling => handled,
        () = deadline => Err(End::Drained { clean: false }),
    }
}

/// Runs `handling` (a server reply being relayed) to its end; when the drain deadline `at` passes
/// first, sends the leader `cancel` (its backend and key) while `handling` goes on, up to 2 x
/// [`DRAIN_END_WAIT`] more ([`End::Drained`], not clean, past it). Returns the result and whether
/// the cancel was sent; without a key, the deadline ends it as [`drained_by`] does.
async fn cancel_at<T>(
    at: tokio::time::Instant,
    cancel: Option<(crate::topology::Backend, praetor_protocol::CancelKey)>,
    handling: impl std::future::Future<Output = Result<T, End>>,
) -> (Result<T, End>, bool) {
    tokio::pin!(handling);
    tokio::select! {
        handled = &mut handling => return (handled, false),
        _ = tokio::time::sleep_until(at) => {}
    }
    let Some((backend, key)) = cancel else {
        return (Err(End::Drained { clean: false }), false);
    };
    let bound = tokio::time::Instant::now() + 2 * DRAIN_END_WAIT;
    let (handled, ()) = tokio::join!(
        async {
            tokio::time::timeout_at(bound, &mut handling)
                .await
                .unwrap_or(Err(End::Drained { clean: false }))
        },
        crate::conn::send_cancel(&backend, &key, key.pid, DRAIN_END_WAIT),
    );
    (handled, true)
}

/// How a session pinned to the leader stepping down ends ([`pinned_drain`],
/// [`pinned_leader_lost`]): `FATAL 57P01` saying what it holds, which the next leader would not
/// have ([`crate::rw::cannot_move_message`]).
fn pinned_not_moved(reason: praetor_protocol::PinReason) -> End {
    End::Refused(
        crate::rw::END_CODE,
        "not_moved",
        crate::rw::cannot_move_message(&crate::rw::Unmovable::Pinned(reason)),
    )
}

/// Polls `conn` for its fence or bytes (pending forever when there is no connection). A poll
/// function rather than an async fn: the idle session's wait stores no future for it.
fn poll_conn(conn: &mut Option<Box<ServerConn>>, cx: &mut Context<'_>) -> Poll<ConnEvent> {
    let Some(c) = conn.as_mut() else {
        return Poll::Pending;
    };
    let ServerConn {
        stream, buf, route, ..
    } = &mut **c;
    if route.fence.poll_fenced(cx).is_ready() {
        return Poll::Ready(ConnEvent::Fenced);
    }
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf).map(ConnEvent::Read)
}

/// The client half of the auto port's login: the SCRAM exchange's messages, or the password when a
/// server wants one (`auth_type: cleartext`).
struct LoginAuth<'a> {
    client: &'a mut ClientStream,
    cbuf: &'a mut BytesMut,
}

impl LoginAuth<'_> {
    /// Sends AuthenticationCleartextPassword and reads the client's PasswordMessage.
    async fn ask_password(&mut self) -> Result<Vec<u8>, End> {
        let mut out = BytesMut::new();
        encode_auth_cleartext(&mut out);
        self.client.write_all(&out).await.map_err(End::Io)?;
        let frame = self.read_password_message().await?;
        cleartext_password(&frame[5..])
            .map(|p| p.as_bytes().to_vec())
            .map_err(|e| End::Protocol(e.sqlstate(), e.to_string()))
    }

    /// Reads the client's next message, which must be a `p` (PasswordMessage, SASLInitialResponse
    /// or SASLResponse), whole.
    async fn read_password_message(&mut self) -> Result<BytesMut, End> {
        read_password_message(self.client, self.cbuf)
            .await
            .map_err(|e| match e {
                PasswordReadError::Protocol(code, message) => End::Protocol(code, message),
                PasswordReadError::Closed => End::ClientClosed,
                PasswordReadError::Io(e) => End::Io(e),
            })
    }
}

/// Gives a NotificationResponse in `frame` (from `backend`'s server process `server_pid`, the one
/// this session runs on) the PID the listening client should see: its own PID for its own
/// `NOTIFY`; for another auto-port client of this proxy, the PID that client was given (see
/// [`crate::cancel::CancelRegistry::notifier_pid`]); otherwise the server's (a direct client's,
/// or a read-write-port client's, which know their real PIDs). Other messages are left alone.
fn translate_notification(
    shared: &Shared,
    frame: &mut [u8],
    backend: &crate::topology::Backend,
    server_pid: i32,
    client_pid: i32,
) {
    translate_notification_pid(frame, server_pid, client_pid);
    if frame.first() != Some(&NOTIFICATION_RESPONSE) {
        return;
    }
    let Some(pid) = frame.get_mut(5..9) else {
        return;
    };
    let sender = i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]);
    if sender == client_pid {
        return;
    }
    if let Some(known) = shared.cancels.notifier_pid(backend, sender) {
        pid.copy_from_slice(&known.to_be_bytes());
    }
}

/// Transaction pooling: named prepared statements tracked per client and server connection
/// ([`crate::prepared`]) and `pool_mode: transaction`'s bounded pool. Hooks only: the routing
/// above calls them.
impl Session<'_> {
    /// The session's pool mode (`databases.<db>.pool_mode`, else `pool_mode`).
    fn pool_mode(&self) -> crate::settings::PoolMode {
        if self.rt.database_pool_modes.is_empty() {
            return self.rt.pool_mode;
        }
        self.rt.pool_mode_for(self.database())
    }

    /// How long the idle session keeps its server connections (0 in transaction mode).
    fn idle_release(&self) -> Duration {
        if self.rt.database_pool_modes.is_empty() {
            return self.rt.idle_release;
        }
        self.rt.idle_release_for(self.database())
    }

    /// Whether messages with this tag are rewritten (so must be whole before they go on).
    fn rewrites(&self, tag: u8) -> bool {
        self.prepared.is_some() && matches!(tag, BIND | DESCRIBE | CLOSE)
    }

    /// Queues for the current server what it gets instead of the whole message at the front of
    /// `cbuf`, when statements are tracked (`true`; appended to the queue [`Session::flush_current`]
    /// writes, where the message would have gone); `false`: the message goes as it is. Records
    /// the replies the server owes.
    fn track_prepared(&mut self, cbuf: &BytesMut, h: FrontendHeader) -> bool {
        let Some(client) = self.prepared.as_deref_mut() else {
            return false;
        };
        let Some(side) = self.units.current() else {
            return false;
        };
        let lexed_query = self.units.take_query_lexed(h);
        let conn = match side {
            Side::Leader => self.leader.as_deref_mut(),
            Side::Replica => self.replica.as_deref_mut(),
        };
        let Some(conn) = conn else {
            return false;
        };
        match h.tag {
            // It may stream: only its ReadyForQuery matters.
            FUNCTION_CALL => {
                conn.prepared.note_ready();
                false
            }
            // Whole here (`needs_whole`, `rewrites`; a Sync is its header).
            PARSE | BIND | DESCRIBE | CLOSE | SYNC | QUERY => match cbuf.get(..h.frame_len) {
                Some(frame) => conn.prepared.rewrite_into(
                    client,
                    self.rt.max_prepared_statements,
                    frame,
                    lexed_query,
                    &mut self.to_server,
                ),
                None => false,
            },
            _ => false,
        }
    }

    /// Drops, from the `n` bytes just read from `side`'s server, the replies to messages the
    /// proxy added (see [`crate::prepared::ServerStatements::filter`]).
    fn filter_prepared(&mut self, side: Side, n: usize) {
        let Some(client) = self.prepared.as_deref_mut() else {
            return;
        };
        let conn = match side {
            Side::Leader => self.leader.as_deref_mut(),
            Side::Replica => self.replica.as_deref_mut(),
        };
        if let Some(conn) = conn {
            conn.prepared.filter(client, &mut conn.buf, n);
        }
    }

    /// `pool_mode: transaction`: a pooled connection to `route`'s server (`Ok(Some)`), or a place
    /// to open one (`Ok(None)` with `place` set), waiting up to `query_wait_timeout`. In
    /// `pool_mode: auto`: `Ok(None)`, no place. `Err`: the message for the client.
    async fn pool_slot(
        &self,
        route: &crate::router::Route,
        place: &mut Option<crate::pool::Place>,
    ) -> Result<Option<Box<ServerConn>>, String> {
        if self.pool_mode() != crate::settings::PoolMode::Transaction {
            return Ok(None);
        }
        let deadline = tokio::time::Instant::now() + self.rt.query_wait_timeout;
        // One lock, no copy of the state (its names and server list).
        let before = self
            .info
            .update(|st| std::mem::replace(&mut st.status, "waiting"));
        let found = self
            .shared
            .pool
            .wait_slot(&route.backend, &self.startup, self.rt.pool_size, deadline)
            .await;
        self.info.update(|st| st.status = before);
        match found {
            Some(Slot::Idle(conn)) => Ok(Some(conn)),
            Some(Slot::Open(p)) => {
                *place = Some(p);
                Ok(None)
            }
            None => Err(format!(
                "query_wait_timeout: no server connection to {} became free within {} s (pool_size {})",
                route.backend,
                self.rt.query_wait_timeout.as_secs(),
                self.rt.pool_size
            )),
        }
    }

    /// [`Session::pool_slot`] for the login: a pooled connection serves it only when the proxy
    /// checked the client's password itself (SCRAM against `auth_file`/`auth_query`) or the
    /// server let the connection in without one; with its startup messages. Another pooled
    /// connection is closed to make a place for a new one, whose server checks the client.
    async fn login_slot(
        &self,
        route: &crate::router::Route,
        place: &mut Option<crate::pool::Place>,
    ) -> Result<Option<(Box<ServerConn>, Bytes)>, String> {
        let verified = self.rt.auth.auth_type == AuthType::ScramSha256
            && self.rt.auth.has_source()
            && self.credential.is_some();
        loop {
            match self.pool_slot(route, place).await? {
                None => return Ok(None),
                Some(conn) if verified || conn.trusted_login.is_some() => {
                    let messages = conn.login_messages.clone();
                    return Ok(Some((conn, messages)));
                }
                Some(conn) => drop(conn),
            }
        }
    }
}
