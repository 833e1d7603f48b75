//! Server connections of the auto port: opening one (TCP, TLS, startup, authentication with the
//! client's SCRAM keys or password), and the pool idle ones wait in between transactions.
//!
//! A [`ServerConn`] carries its [`Route`], so the router fences it like any other connection: a
//! pooled connection to a former leader is dropped by [`Pool::purge_fenced`] right after the
//! topology changes, and a fenced connection is never handed out. Connections are pooled per server
//! and per StartupMessage (user, database, options), and only when they carry no session state.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use praetor_protocol::backend::{
    AUTHENTICATION, BACKEND_KEY_DATA, ERROR_RESPONSE, NEGOTIATE_PROTOCOL_VERSION, NOTICE_RESPONSE,
    PARAMETER_STATUS, READY_FOR_QUERY,
};
use praetor_protocol::frontend::{encode_query, encode_terminate};
use praetor_protocol::{AuthProgress, CancelKey, ErrorFields, FrameHeader, PasswordAuth, SqlState};
use prometheus::IntGauge;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cancel::{CancelRegistry, NotifierSlot};
use crate::conn::GaugeGuard;
use crate::router::{Route, SocketGuard};
use crate::stream::{BackendTls, ServerStream};

/// Initial capacity of a server connection's read buffer.
const SERVER_BUFFER_BYTES: usize = 8 * 1024;

/// One server connection of the auto port, past its startup phase.
pub(crate) struct ServerConn {
    /// Declared first: unregistered before the socket below closes (see `SocketGuard`).
    _socket: SocketGuard,
    pub stream: ServerStream,
    /// Bytes read from the server and not yet handled.
    pub buf: BytesMut,
    /// The server's BackendKeyData.
    pub key: Option<CancelKey>,
    /// How many of the session's replayed `SET`s this connection has run.
    pub applied_sets: usize,
    /// Bytes of a server message still to forward (the message was started in an earlier read).
    pub remaining: usize,
    /// The server let this connection in without asking for a password, and sent these startup
    /// messages (ParameterStatus...): a new client with the same StartupMessage would be let in
    /// the same way, so it may log in on this connection when it is pooled.
    pub trusted_login: Option<Bytes>,
    /// Which auto-port client last ran a unit here, for the PID of this connection's `NOTIFY`s
    /// (a leader's connection, from its first unit on; see [`ServerConn::note_leader_unit`]).
    notifier: Option<NotifierSlot>,
    /// The named prepared statements this connection holds and the replies it owes for them
    /// ([`crate::prepared`]; used with `max_prepared_statements`).
    pub prepared: crate::prepared::ServerStatements,
    /// The server's startup messages (ParameterStatus...), for a client that logs in on this
    /// connection once pooled (`pool_mode: transaction`).
    pub login_messages: Bytes,
    /// When it was opened (`server_lifetime`).
    opened: Instant,
    /// Its place among the `pool_size` connections of its server and StartupMessage
    /// (`pool_mode: transaction`); freed when the connection closes.
    pub slot: Option<Place>,
    /// The idle list of its server and StartupMessage, from its first return to the pool on:
    /// later returns push onto it without looking it up by key. Weak: the list holds the
    /// connection while it is idle.
    idle_list: Option<std::sync::Weak<IdleList>>,
    /// The session thread whose event loop the socket is registered with (the one that opened
    /// it; [`crate::workers::current`]): [`Pool::take`] prefers a connection of the taker's
    /// thread, whose readiness wakes that thread directly instead of through another's.
    home: usize,
    /// Declared last: the socket above closes before the route's fence records the close.
    pub route: Route,
    _gauge: GaugeGuard,
}

impl Drop for ServerConn {
    fn drop(&mut self) {
        // A polite Terminate when it fits in the socket buffer, so the server does not log an
        // unexpected end of file; the socket closes right after either way.
        if let ServerStream::Plain(s) = &self.stream {
            let mut t = BytesMut::with_capacity(5);
            encode_terminate(&mut t);
            let _ = s.try_write(&t);
        }
    }
}

/// Why opening a server connection failed.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// TCP or TLS failed, or timed out.
    Connect(String),
    /// The server is not accepting connections now (57P03: starting up or shutting down).
    NotReady(String),
    /// The server refused the login (the ErrorResponse, to pass on).
    Refused(Bytes, ErrorFields),
    /// The server asked for a password and the proxy has none (yet).
    NeedPassword,
    /// The proxy cannot authenticate (unsupported method) or the server broke the protocol.
    Failed(String),
}

/// What a server sent during its startup phase besides authentication.
#[derive(Default)]
pub(crate) struct StartupOutput {
    /// ParameterStatus, NoticeResponse and NegotiateProtocolVersion messages, as sent.
    pub messages: BytesMut,
}

/// Connects to `route`'s server (TCP with `timeout`, TLS as configured), sends `startup` and
/// authenticates with `auth`. Returns the connection, ready for queries, and the server's startup
/// messages for the client.
pub(crate) async fn open(
    route: Route,
    gauge: IntGauge,
    tls: &BackendTls,
    timeout: Duration,
    startup: &[u8],
    auth: &mut PasswordAuth,
) -> Result<(Box<ServerConn>, StartupOutput), OpenError> {
    let addr = (route.backend.host(), route.backend.port());
    let tcp = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(OpenError::Connect(e.to_string())),
        Err(_) => return Err(OpenError::Connect(format!("timed out after {timeout:?}"))),
    };
    let _ = tcp.set_nodelay(true);
    let stream = match tokio::time::timeout(timeout, tls.connect(tcp, route.backend.host())).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(OpenError::Connect(format!("TLS: {e}"))),
        Err(_) => return Err(OpenError::Connect("TLS handshake timed out".into())),
    };
    gauge.inc();
    // Boxed: a session keeps two optional connections and most sessions hold none while idle.
    let mut conn = Box::new(ServerConn {
        _socket: route.watch_socket(stream.as_raw_fd()),
        stream,
        buf: BytesMut::with_capacity(SERVER_BUFFER_BYTES),
        key: None,
        applied_sets: 0,
        remaining: 0,
        trusted_login: None,
        notifier: None,
        prepared: Default::default(),
        login_messages: Bytes::new(),
        opened: Instant::now(),
        slot: None,
        idle_list: None,
        home: crate::workers::current(),
        route,
        _gauge: GaugeGuard(gauge),
    });
    let (out, asked_password) = tokio::time::timeout(timeout, conn.startup(startup, auth))
        .await
        .map_err(|_| {
            OpenError::Connect(format!("no answer to the startup within {timeout:?}"))
        })??;
    conn.login_messages = Bytes::copy_from_slice(&out.messages);
    if !asked_password {
        conn.trusted_login = Some(conn.login_messages.clone());
    }
    Ok((conn, out))
}

impl ServerConn {
    /// Notes that the auto-port client holding PID `client_pid` runs a unit on this connection, a
    /// leader's: one atomic store, after a registration in `cancels` on the connection's first
    /// leader unit (see [`CancelRegistry::notifier_slot`]). Nothing without a BackendKeyData.
    pub fn note_leader_unit(&mut self, cancels: &CancelRegistry, client_pid: i32) {
        if self.notifier.is_none() {
            let Some(key) = &self.key else { return };
            self.notifier = Some(cancels.notifier_slot(&self.route.backend, key.pid));
        }
        if let Some(slot) = &self.notifier {
            slot.set(client_pid);
        }
    }

    async fn startup(
        &mut self,
        startup: &[u8],
        auth: &mut PasswordAuth,
    ) -> Result<(StartupOutput, bool), OpenError> {
        let io_err = |e: io::Error| OpenError::Connect(e.to_string());
        self.stream.write_all(startup).await.map_err(io_err)?;
        let mut out = StartupOutput::default();
        let mut answer = BytesMut::new();
        let mut asked_password = false;
        loop {
            let frame = self.next_frame().await?;
            let body = &frame[5..];
            if frame[0] == AUTHENTICATION && body.get(..4) != Some(&[0, 0, 0, 0]) {
                asked_password = true;
            }
            match frame[0] {
                AUTHENTICATION => match auth.step(body, &mut answer) {
                    Ok(AuthProgress::Done) => {}
                    Ok(AuthProgress::Continue) => {
                        if !answer.is_empty() {
                            self.stream.write_all(&answer).await.map_err(io_err)?;
                            answer.clear();
                        }
                    }
                    Err(praetor_protocol::AuthError::NoPassword) => {
                        return Err(OpenError::NeedPassword)
                    }
                    Err(e) => return Err(OpenError::Failed(e.to_string())),
                },
                ERROR_RESPONSE => {
                    let fields = ErrorFields::parse(body).unwrap_or_default();
                    if fields.code() == Some(SqlState::CANNOT_CONNECT_NOW.code()) {
                        return Err(OpenError::NotReady(
                            fields
                                .message()
                                .unwrap_or("not accepting connections")
                                .into(),
                        ));
                    }
                    return Err(OpenError::Refused(frame, fields));
                }
                BACKEND_KEY_DATA => {
                    self.key = CancelKey::from_backend_key_data(body).ok();
                }
                PARAMETER_STATUS | NOTICE_RESPONSE | NEGOTIATE_PROTOCOL_VERSION => {
                    out.messages.extend_from_slice(&frame);
                }
                READY_FOR_QUERY => return Ok((out, asked_password)),
                _ => {}
            }
        }
    }

    /// Reads one whole message (at most 1 MB here: only startup and replies to the proxy's own
    /// queries are read this way).
    pub async fn next_frame(&mut self) -> Result<Bytes, OpenError> {
        loop {
            match FrameHeader::peek(&self.buf) {
                Ok(Some(h)) if h.frame_len > 1 << 20 => {
                    return Err(OpenError::Failed(format!(
                        "server message {:?} of {} bytes during startup",
                        h.tag as char, h.frame_len
                    )))
                }
                Ok(Some(h)) if self.buf.len() >= h.frame_len => {
                    return Ok(self.buf.split_to(h.frame_len).freeze());
                }
                Ok(_) => {}
                Err(e) => return Err(OpenError::Failed(e.to_string())),
            }
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) => {
                    return Err(OpenError::Connect(
                        "the server closed the connection".into(),
                    ))
                }
                Ok(_) => {}
                Err(e) => return Err(OpenError::Connect(e.to_string())),
            }
        }
    }

    /// Runs `statements` (one simple query) and discards the replies up to ReadyForQuery; an
    /// ErrorResponse fails. Used to replay a session's `SET`s.
    pub async fn run_quietly(&mut self, statements: &str) -> Result<(), OpenError> {
        let mut q = BytesMut::new();
        encode_query(&mut q, statements);
        self.stream
            .write_all(&q)
            .await
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let mut error = None;
        loop {
            let frame = self.next_frame().await?;
            match frame[0] {
                ERROR_RESPONSE => error = Some(ErrorFields::parse(&frame[5..]).unwrap_or_default()),
                READY_FOR_QUERY => {
                    return match error {
                        None => Ok(()),
                        Some(e) => Err(OpenError::Failed(format!(
                            "replaying the session's settings failed: {}",
                            e.message().unwrap_or("error")
                        ))),
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs `query` (one simple query returning one value) and returns the first column of its
    /// first row as text (`None`: no row, or NULL), discarding the rest up to ReadyForQuery. An
    /// ErrorResponse fails. Used for the WAL positions of read-your-writes ([`crate::ryw`]), on an
    /// idle connection only.
    pub async fn query_value(&mut self, query: &str) -> Result<Option<String>, OpenError> {
        let mut q = BytesMut::new();
        encode_query(&mut q, query);
        self.stream
            .write_all(&q)
            .await
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let mut value = None;
        let mut error = None;
        loop {
            let frame = self.next_frame().await?;
            match frame[0] {
                DATA_ROW if value.is_none() => value = Some(first_column(&frame[5..])),
                ERROR_RESPONSE => error = Some(ErrorFields::parse(&frame[5..]).unwrap_or_default()),
                READY_FOR_QUERY => {
                    return match error {
                        None => Ok(value.flatten()),
                        Some(e) => Err(OpenError::Failed(format!(
                            "{query}: {}",
                            e.message().unwrap_or("error")
                        ))),
                    }
                }
                _ => {}
            }
        }
    }

    /// Runs `auth_query` with `$1` = `user` (extended protocol: the name is a parameter, never
    /// SQL text) and returns the second column of its first row (`passwd`); `None` for no row or
    /// a NULL. An ErrorResponse is [`OpenError::Refused`].
    pub async fn query_secret(
        &mut self,
        query: &str,
        user: &str,
    ) -> Result<Option<String>, OpenError> {
        use bytes::BufMut;
        use praetor_protocol::frontend::encode_message;
        let mut q = BytesMut::new();
        encode_message(&mut q, b'P', |b| {
            b.put_u8(0);
            b.put_slice(query.as_bytes());
            b.put_u8(0);
            b.put_u16(0);
        });
        encode_message(&mut q, b'B', |b| {
            b.put_slice(b"\0\0");
            b.put_u16(0);
            b.put_u16(1);
            b.put_u32(user.len() as u32);
            b.put_slice(user.as_bytes());
            b.put_u16(0);
        });
        encode_message(&mut q, b'E', |b| {
            b.put_u8(0);
            b.put_u32(0);
        });
        encode_message(&mut q, b'S', |_| {});
        self.stream
            .write_all(&q)
            .await
            .map_err(|e| OpenError::Connect(e.to_string()))?;
        let (mut error, mut secret, mut got_row) = (None, None, false);
        loop {
            let frame = self.next_frame().await?;
            match frame[0] {
                ERROR_RESPONSE => {
                    error = Some((
                        frame.clone(),
                        ErrorFields::parse(&frame[5..]).unwrap_or_default(),
                    ))
                }
                b'D' if !got_row => {
                    got_row = true;
                    secret = data_row_column(&frame[5..], 1);
                }
                READY_FOR_QUERY => {
                    return match error {
                        None => Ok(secret),
                        Some((frame, fields)) => Err(OpenError::Refused(frame, fields)),
                    }
                }
                _ => {}
            }
        }
    }

    /// A cheap check that an idle connection is still usable: nothing arrived (no FATAL, no end of
    /// file) while it was idle.
    pub fn looks_alive(&mut self) -> bool {
        if !self.buf.is_empty() || self.remaining != 0 || self.route.fence.is_fenced() {
            return false;
        }
        match &self.stream {
            ServerStream::Plain(s) => {
                let mut probe = [0u8; 1];
                matches!(s.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            ServerStream::Tls(_) => true,
        }
    }
}

/// The DataRow message's tag.
const DATA_ROW: u8 = b'D';

/// The first column of a DataRow body as text; `None` for NULL, no column or a malformed row.
fn first_column(body: &[u8]) -> Option<String> {
    data_row_column(body, 0)
}

/// Column `index` of a DataRow body (`int16 count | (int32 len | bytes)*`) as text; `None` for
/// NULL, a malformed row or a column that is not UTF-8.
fn data_row_column(body: &[u8], index: usize) -> Option<String> {
    let (count, mut rest) = body.split_first_chunk::<2>()?;
    if index >= usize::from(u16::from_be_bytes(*count)) {
        return None;
    }
    for i in 0..=index {
        let (len, after) = rest.split_first_chunk::<4>()?;
        let len = i32::from_be_bytes(*len);
        if len < 0 {
            if i == index {
                return None;
            }
            rest = after;
            continue;
        }
        let len = usize::try_from(len).ok()?;
        let value = after.get(..len)?;
        if i == index {
            return String::from_utf8(value.to_vec()).ok();
        }
        rest = &after[len..];
    }
    None
}

/// Idle connections per server, then per StartupMessage, each with the time it was returned.
/// Nested rather than keyed by a pair: a lookup borrows the session's server and bytes instead of
/// cloning them (this runs at every unit of every auto-port session).
///
/// Servers are keyed with foldhash (a fast hash; the DCS names them, not clients); the
/// StartupMessage, which a client writes, with foldhash seeded at random per map
/// ([`StartupMap`]).
///
/// Each list is shared ([`IdleList`]): a session keeps the one of its StartupMessage and server
/// ([`Pool::list`]) and a connection the one it returns to, so that taking and returning a
/// connection at every transaction (`pool_mode: transaction`) looks nothing up by key (four
/// lookups per transaction, ~650 instructions each way in callgrind's profile of pgbench's
/// select). [`Pool::purge_fenced`] removes the empty lists no session holds (so that clients
/// with ever new StartupMessages do not grow the map), marking them retired: a connection
/// returning through its weak reference to one looks its list up again.
type IdleConns = BackendMap<StartupMap<Arc<IdleList>>>;

/// The idle connections of one server and StartupMessage, the one returned last at the end.
pub(crate) struct IdleList {
    backend: crate::topology::Backend,
    conns: Mutex<Vec<(Box<ServerConn>, Instant)>>,
    /// Removed from the pool's map (set and read under `conns`' lock): nothing is added to it.
    retired: std::sync::atomic::AtomicBool,
}

impl IdleList {
    /// The server whose connections it holds.
    pub fn backend(&self) -> &crate::topology::Backend {
        &self.backend
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Box<ServerConn>, Instant)>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A map keyed by StartupMessage, which clients choose: foldhash with a random seed per map
/// (`foldhash::fast::RandomState`; its docs: minimal DoS resistance, enough where an attacker
/// cannot observe hashes or iteration order), hashed at every unit of every auto-port session,
/// where std's SipHash cost ~300 instructions per transaction.
type StartupMap<V> = foldhash::HashMap<Bytes, V>;

/// A map keyed by server ([`IdleConns`] says why foldhash).
pub(crate) type BackendMap<V> = foldhash::HashMap<crate::topology::Backend, V>;

/// The `pool_size` places of one server and StartupMessage (`pool_mode: transaction`).
struct Slots {
    places: Arc<tokio::sync::Semaphore>,
    /// Woken when a connection returns to the pool.
    returned: tokio::sync::Notify,
}

/// What [`Pool::wait_slot`] found for a transaction.
pub(crate) enum Slot {
    /// A pooled connection (it holds its place).
    Idle(Box<ServerConn>),
    /// A free place: open a connection and keep this in [`ServerConn::slot`].
    Open(Place),
}

/// A connection's place among the `pool_size` of its server and StartupMessage, and those
/// places' record (to wake a waiter when the connection returns, without looking it up again).
pub(crate) struct Place {
    _permit: tokio::sync::OwnedSemaphorePermit,
    slots: Arc<Slots>,
}

/// `server_idle_timeout` and `server_lifetime` in nanoseconds (`u64::MAX`: no lifetime limit).
struct Timeouts {
    idle_ns: AtomicU64,
    lifetime_ns: AtomicU64,
}

impl Timeouts {
    fn new(idle: Duration, lifetime: Option<Duration>) -> Timeouts {
        let t = Timeouts {
            idle_ns: AtomicU64::new(0),
            lifetime_ns: AtomicU64::new(u64::MAX),
        };
        t.set(idle, lifetime);
        t
    }

    fn set(&self, idle: Duration, lifetime: Option<Duration>) {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX - 1);
        self.idle_ns.store(ns(idle), Ordering::Relaxed);
        self.lifetime_ns
            .store(lifetime.map_or(u64::MAX, ns), Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        Duration::from_nanos(self.idle_ns.load(Ordering::Relaxed))
    }

    fn lifetime(&self) -> Option<Duration> {
        match self.lifetime_ns.load(Ordering::Relaxed) {
            u64::MAX => None,
            ns => Some(Duration::from_nanos(ns)),
        }
    }
}

/// Idle server connections, per server and StartupMessage.
pub(crate) struct Pool {
    idle: Mutex<IdleConns>,
    gauge: IntGauge,
    /// `server_idle_timeout` and `server_lifetime` (none: no limit), read at every take and return
    /// of a connection: atomics, not a lock.
    timeouts: Timeouts,
    /// Nested like [`IdleConns`], for the same reason.
    slots: Mutex<BackendMap<StartupMap<Arc<Slots>>>>,
}

impl Pool {
    pub fn new(gauge: IntGauge) -> Pool {
        Pool {
            idle: Mutex::new(BackendMap::default()),
            gauge,
            timeouts: Timeouts::new(
                crate::settings::DEFAULT_SERVER_IDLE_TIMEOUT,
                Some(crate::settings::DEFAULT_SERVER_LIFETIME),
            ),
            slots: Mutex::new(BackendMap::default()),
        }
    }

    /// Sets `server_idle_timeout` and `server_lifetime` (none: no limit).
    pub fn set_timeouts(&self, idle: Duration, lifetime: Option<Duration>) {
        self.timeouts.set(idle, lifetime);
    }

    fn idle_timeout(&self) -> Duration {
        self.timeouts.idle()
    }

    /// `pool_mode: transaction`: a pooled connection to `backend` made with `startup`, or a free
    /// place among the `size` of that server and StartupMessage to open one, waiting for either
    /// until `deadline` (`query_wait_timeout`); `None` when it passed. The places of a server and
    /// StartupMessage are counted from the first `size` asked (a reload's new `pool_size` applies
    /// to new pools).
    pub async fn wait_slot(
        &self,
        backend: &crate::topology::Backend,
        startup: &Bytes,
        size: usize,
        deadline: tokio::time::Instant,
    ) -> Option<Slot> {
        let slots = {
            let mut all = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            match all.get(backend).and_then(|m| m.get(startup.as_ref())) {
                Some(s) => s.clone(),
                None => all
                    .entry(backend.clone())
                    .or_default()
                    .entry(startup.clone())
                    .or_insert_with(|| {
                        Arc::new(Slots {
                            places: Arc::new(tokio::sync::Semaphore::new(size)),
                            returned: tokio::sync::Notify::new(),
                        })
                    })
                    .clone(),
            }
        };
        loop {
            // Registered before looking, so that a return in between is not missed.
            let returned = slots.returned.notified();
            tokio::pin!(returned);
            returned.as_mut().enable();
            if let Some(conn) = self.take(backend, startup) {
                return Some(Slot::Idle(conn));
            }
            let place = |permit| {
                Slot::Open(Place {
                    _permit: permit,
                    slots: slots.clone(),
                })
            };
            if let Ok(permit) = slots.places.clone().try_acquire_owned() {
                return Some(place(permit));
            }
            tokio::select! {
                permit = slots.places.clone().acquire_owned() => {
                    return permit.ok().map(place);
                }
                _ = &mut returned => {}
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleConns> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle connection to `backend` made with `startup` that the server let in without a
    /// password, to log a new client in on it.
    pub fn take_trusted(
        &self,
        backend: &crate::topology::Backend,
        startup: &Bytes,
    ) -> Option<Box<ServerConn>> {
        let idle_timeout = self.idle_timeout();
        let list = self.find(backend, startup)?;
        let found = {
            let mut list = list.lock();
            let i = list.iter().rposition(|(c, since)| {
                c.trusted_login.is_some() && since.elapsed() < idle_timeout
            })?;
            list.swap_remove(i).0
        };
        self.gauge.dec();
        let mut conn = found;
        conn.looks_alive().then_some(conn)
    }

    /// An idle connection to `backend` made with `startup`, if one is alive: the one returned
    /// last among those of the calling session thread ([`ServerConn::home`]), else the one
    /// returned last. With two session threads, taking any connection made half of the
    /// transactions through the pool wake their thread from the other's event loop (an `eventfd`
    /// write and a context switch each: 0.62 writes and 1.96 context switches per transaction
    /// against 0.00 and 0.62 with one thread, `perf stat` over pgbench -S -c 8).
    pub fn take(
        &self,
        backend: &crate::topology::Backend,
        startup: &Bytes,
    ) -> Option<Box<ServerConn>> {
        self.take_from(&*self.find(backend, startup)?)
    }

    /// The idle list of `backend` and `startup`, made empty when there is none yet: a session
    /// keeps it to [`Pool::take_from`] it at every transaction without a lookup by key.
    pub fn list(&self, backend: &crate::topology::Backend, startup: &Bytes) -> Arc<IdleList> {
        if let Some(list) = self.find(backend, startup) {
            return list;
        }
        // A copy: a clone would make the session's own bytes shared (one more allocation each
        // session keeps).
        self.lock()
            .entry(backend.clone())
            .or_default()
            .entry(Bytes::copy_from_slice(startup))
            .or_insert_with(|| {
                Arc::new(IdleList {
                    backend: backend.clone(),
                    conns: Mutex::new(Vec::new()),
                    retired: Default::default(),
                })
            })
            .clone()
    }

    /// The idle list of `backend` and `startup`, if there is one.
    fn find(&self, backend: &crate::topology::Backend, startup: &Bytes) -> Option<Arc<IdleList>> {
        self.lock()
            .get(backend)
            .and_then(|m| m.get(startup.as_ref()))
            .cloned()
    }

    /// [`Pool::take`] from a list [`Pool::list`] gave.
    pub fn take_from(&self, list: &IdleList) -> Option<Box<ServerConn>> {
        let mut dropped = Vec::new();
        let idle_timeout = self.idle_timeout();
        let here = crate::workers::current();
        let found = {
            let mut list = list.lock();
            let mut found = None;
            while !list.is_empty() {
                let at = list
                    .iter()
                    .rposition(|(c, _)| c.home == here)
                    .unwrap_or(list.len() - 1);
                let (mut conn, since) = list.swap_remove(at);
                if since.elapsed() < idle_timeout && conn.looks_alive() {
                    found = Some(conn);
                    break;
                }
                dropped.push(conn);
            }
            found
        };
        self.gauge
            .sub(dropped.len() as i64 + i64::from(found.is_some()));
        drop(dropped);
        found
    }

    /// Returns `conn` (made with `startup`) to the pool, or closes it when the pool for its server
    /// holds `limit` already, it is fenced, older than `server_lifetime`, or owes replies for
    /// prepared statements.
    pub fn put(&self, conn: Box<ServerConn>, startup: &Bytes, limit: usize) {
        if conn.route.fence.is_fenced()
            || conn.remaining != 0
            || !conn.buf.is_empty()
            || !conn.prepared.is_settled()
        {
            return;
        }
        let now = Instant::now();
        if self
            .timeouts
            .lifetime()
            .is_some_and(|l| now.saturating_duration_since(conn.opened) >= l)
        {
            return;
        }
        if limit == 0 {
            return;
        }
        let mut conn = conn;
        let slots = conn.slot.as_ref().map(|p| p.slots.clone());
        loop {
            // Looked up by key at a connection's first return only (this runs at the end of
            // every unit), or when its list was retired.
            let list = match conn.idle_list.as_ref().and_then(std::sync::Weak::upgrade) {
                Some(list) => list,
                None => {
                    let list = self.list(&conn.route.backend, startup);
                    conn.idle_list = Some(Arc::downgrade(&list));
                    list
                }
            };
            let mut conns = list.lock();
            if list.retired.load(Ordering::Relaxed) {
                drop(conns);
                conn.idle_list = None;
                continue;
            }
            if conns.len() >= limit {
                drop(conns);
                // Closed outside the lock.
                drop(conn);
                return;
            }
            conns.push((conn, now));
            break;
        }
        self.gauge.inc();
        if let Some(s) = slots {
            s.returned.notify_one();
        }
    }

    /// Closes fenced and expired connections and removes the empty idle lists no session holds;
    /// returns how many connections it closed.
    pub fn purge_fenced(&self) -> usize {
        let mut closed = Vec::new();
        let idle_timeout = self.idle_timeout();
        {
            let mut idle = self.lock();
            for list in idle.values().flat_map(|m| m.values()) {
                let mut list = list.lock();
                let mut i = 0;
                while i < list.len() {
                    if list[i].0.route.fence.is_fenced() || list[i].1.elapsed() >= idle_timeout {
                        closed.push(list.swap_remove(i));
                    } else {
                        i += 1;
                    }
                }
            }
            for by_startup in idle.values_mut() {
                by_startup.retain(|_, list| {
                    // Held by the map alone: no session keeps it (a session takes from its
                    // list without the map's lock, and gets one only under it).
                    if Arc::strong_count(list) > 1 {
                        return true;
                    }
                    let conns = list.lock();
                    if !conns.is_empty() {
                        return true;
                    }
                    list.retired.store(true, Ordering::Relaxed);
                    false
                });
            }
            idle.retain(|_, m| !m.is_empty());
        }
        self.gauge.sub(closed.len() as i64);
        closed.len()
    }

    /// Closes the pooled connections of `database` (every one: `None`), for the admin console's
    /// `KILL`. Returns how many. The database is read from each pool's StartupMessage.
    pub fn purge_database(&self, database: Option<&str>) -> usize {
        let mut closed = Vec::new();
        {
            let idle = self.lock();
            for (startup, list) in idle.values().flat_map(|m| m.iter()) {
                if database.is_none_or(|db| startup_database(startup) == Some(db)) {
                    closed.append(&mut list.lock());
                }
            }
        }
        self.gauge.sub(closed.len() as i64);
        closed.len()
    }

    /// Closes every pooled connection (shutdown).
    pub fn clear(&self) {
        let mut all = Vec::new();
        for list in self.lock().values().flat_map(|m| m.values()) {
            all.append(&mut list.lock());
        }
        self.gauge.set(0);
        drop(all);
    }

    /// `(member, role, idle count)` per server (admin console).
    pub fn summary(&self) -> Vec<(String, &'static str, usize)> {
        let idle = self.lock();
        let mut by: HashMap<(String, &'static str), usize> = HashMap::new();
        for (b, list) in idle
            .iter()
            .flat_map(|(b, m)| m.values().map(move |l| (b, l)))
        {
            let list = list.lock();
            if let Some((c, _)) = list.first() {
                *by.entry((b.member().to_string(), c.route.role.as_str()))
                    .or_default() += list.len();
            }
        }
        let mut v: Vec<_> = by.into_iter().map(|((m, r), n)| (m, r, n)).collect();
        v.sort();
        v
    }
}

/// The database a StartupMessage (`length | version | key\0value\0 ... \0`) names: its
/// `database` parameter, or its `user` when that is absent or empty (PostgreSQL's default).
pub(crate) fn startup_database(startup: &[u8]) -> Option<&str> {
    let mut fields = startup.get(8..)?.split(|&b| b == 0);
    let (mut database, mut user) = (None, None);
    while let Some(key) = fields.next() {
        if key.is_empty() {
            break;
        }
        let value = fields.next()?;
        match key {
            b"database" if !value.is_empty() => database = Some(value),
            b"user" => user = Some(value),
            _ => {}
        }
    }
    std::str::from_utf8(database.or(user)?).ok()
}

#[cfg(test)]
mod tests {
    use super::first_column;

    #[test]
    fn the_first_column_of_a_data_row() {
        let row = |cols: &[Option<&str>]| {
            let mut b = (cols.len() as i16).to_be_bytes().to_vec();
            for c in cols {
                match c {
                    Some(v) => {
                        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
                        b.extend_from_slice(v.as_bytes());
                    }
                    None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                }
            }
            b
        };
        assert_eq!(
            first_column(&row(&[Some("0/3000060"), Some("x")])).as_deref(),
            Some("0/3000060")
        );
        assert_eq!(first_column(&row(&[None])), None);
        assert_eq!(first_column(&row(&[])), None);
        assert_eq!(first_column(&row(&[Some("abc")])[..7]), None, "truncated");
    }
}
