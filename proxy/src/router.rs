//! Picks a backend for each new client and fences the former leader.
//!
//! The router keeps the current [`Topology`] and, per backend with open connections, the [`Fence`] of
//! each of them. Picking a backend and registering the connection's fence happen under the same lock
//! as applying a new topology, so a connection either picked the old leader before the change (and is
//! fenced with it) or sees the new topology: no connection can slip through to a former leader
//! unfenced.
//!
//! A [`Fence`] is an atomic flag and a waker, one per connection: the relay checks it on every wakeup
//! with one atomic load (a `CancellationToken` would take two mutexes shared by every connection to the
//! backend, on every poll). Each fence also records when its connection is gone (its [`Route`]
//! dropped, after the socket), so the fencing handshake can wait until every connection to a former
//! leader is really closed before it tells the DCS ([`Closing::close`]); past a deadline it shuts
//! down by force the server sockets of connections that did not close (their tasks are stuck).
//!
//! While the proxy has lost the DCS for too long ([`Router::suspend`]) every connection is fenced and
//! no new one is routed.

use std::collections::HashMap;
use std::future::poll_fn;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::{watch, Notify};

use crate::metrics::ListenerKind;
use crate::settings::LagPolicy;
use crate::topology::{Backend, Topology};

/// How often [`Closing::close`] looks again, past its deadline, for fenced connections still
/// connecting.
const FORCE_RECHECK: Duration = Duration::from_millis(50);

/// The role the chosen backend plays, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackendRole {
    Leader,
    Replica,
}

impl BackendRole {
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendRole::Leader => "leader",
            BackendRole::Replica => "replica",
        }
    }
}

/// The shared half of a connection's fence: set once, never cleared.
#[derive(Default)]
pub(crate) struct FenceSignal {
    fenced: AtomicBool,
    /// The connection is gone (its route dropped).
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
    /// The server socket's descriptor while it is open ([`SocketGuard`]), for a forced close. The
    /// lock is held while shutting it down and while unregistering it (right before the socket
    /// closes), so a descriptor number reused by another socket is never touched.
    socket: Mutex<Option<RawFd>>,
    /// The server socket was shut down by force ([`Closing::close`]).
    forced: AtomicBool,
    /// The client's database, for `RECONNECT db` and `WAIT_CLOSE db` ([`Route::set_database`]).
    database: std::sync::OnceLock<Box<str>>,
}

impl FenceSignal {
    /// Shuts the server socket down both ways if it is still open (the connection's task did not
    /// close it in time: it is stuck writing to its client, or waiting on a silent server). Nothing
    /// more can be sent to the server through it, and its reads see end-of-file. It is also set to
    /// linger 0, so the close that follows resets the connection and the kernel drops what it has
    /// not delivered yet: after a plain shutdown(2), bytes queued for a silent former leader would
    /// still be retransmitted when its network comes back, after this proxy acknowledged that
    /// nothing of its reaches it any more. False when no socket is registered.
    fn force_close(&self) -> bool {
        let socket = self.socket.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = *socket else {
            return false;
        };
        abort_on_close(fd);
        // SAFETY: `fd` is open: it is unregistered (under this lock) before its socket closes.
        // shutdown(2) neither closes nor frees the descriptor; the owner still does that.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
        self.forced.store(true, Ordering::Release);
        true
    }

    /// Closed by its task, or shut down by force.
    fn is_done(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.forced.load(Ordering::Acquire)
    }

    fn fence(&self) {
        self.fenced.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// One connection's fence: resolves when its backend is fenced (lost the leader key) or the proxy
/// shuts down. Polling it costs one atomic load unless the task's waker changed.
pub(crate) struct Fence {
    signal: Arc<FenceSignal>,
    registered: Option<Waker>,
}

impl Fence {
    fn new() -> (Fence, Arc<FenceSignal>) {
        let signal = Arc::new(FenceSignal::default());
        (
            Fence {
                signal: signal.clone(),
                registered: None,
            },
            signal,
        )
    }

    /// True once fenced.
    pub fn is_fenced(&self) -> bool {
        self.signal.fenced.load(Ordering::Acquire)
    }

    /// Ready once the backend is fenced (or the proxy shuts down); registers `cx`'s waker
    /// otherwise. For poll functions; [`Fence::fenced`] is the future.
    pub fn poll_fenced(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_fenced() {
            return Poll::Ready(());
        }
        if !self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            let waker = cx.waker().clone();
            *self.signal.waker.lock().unwrap_or_else(|p| p.into_inner()) = Some(waker.clone());
            self.registered = Some(waker);
            // A fence between the check above and the registration found no waker to wake.
            if self.is_fenced() {
                return Poll::Ready(());
            }
        }
        Poll::Pending
    }

    /// Resolves when fenced.
    pub async fn fenced(&mut self) {
        poll_fn(|cx| self.poll_fenced(cx)).await
    }
}

/// Registers a server socket for a forced close ([`Route::watch_socket`]) until dropped; it must be
/// dropped before the socket closes (declare it after the stream, or drop it first).
pub(crate) struct SocketGuard(Arc<FenceSignal>);

impl Drop for SocketGuard {
    /// Unregisters the socket, right before it closes; a fenced connection's socket is set to
    /// reset on that close ([`abort_on_close`]), so nothing still queued for the former leader
    /// reaches it later.
    fn drop(&mut self) {
        let mut socket = self.0.socket.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(fd) = *socket {
            if self.0.fenced.load(Ordering::Acquire) {
                abort_on_close(fd);
            }
        }
        *socket = None;
    }
}

/// Sets socket `fd` to linger 0: its close resets the connection and the kernel drops what it
/// has not delivered yet. A plain close (or shutdown(2)) keeps retransmitting the send queue: to a
/// silent former leader, bytes written before the fence would be delivered once its network came
/// back, after the proxy acknowledged that nothing of its reaches that server any more (on
/// loopback, up to 4 MiB: the unit tests below). `fd` must be an open socket of the caller's.
fn abort_on_close(fd: RawFd) {
    let abort = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the caller holds `fd` open; setsockopt(2) neither closes nor frees it. `abort`
    // outlives the call and its size is the one passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&abort as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "cannot set SO_LINGER on a fenced server socket");
    }
}

/// A backend chosen for one client; dropping it unregisters the connection's fence.
pub(crate) struct Route {
    pub backend: Backend,
    pub role: BackendRole,
    /// Resolves when the backend is fenced or the proxy shuts down.
    pub fence: Fence,
    _lease: Lease,
}

impl Route {
    /// Registers the server socket `fd` of this route's connection, so that a fence whose
    /// connection does not close in time can shut it down by force ([`Closing::close`]).
    pub fn watch_socket(&self, fd: RawFd) -> SocketGuard {
        *self
            .fence
            .signal
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(fd);
        SocketGuard(self.fence.signal.clone())
    }

    /// Records which database the connection serves (the first call wins).
    pub fn set_database(&self, database: &str) {
        // Copied only when not set yet (a pooled connection is routed again at every unit).
        if self.fence.signal.database.get().is_none() {
            let _ = self.fence.signal.database.set(database.into());
        }
    }

    /// The connection's id: ids grow, so `RECONNECT` marks "older than now" with one number.
    pub fn connection_id(&self) -> u64 {
        self._lease.connection
    }
}

/// What applying a topology did.
#[derive(Default)]
pub(crate) struct Applied {
    /// The routable leader changed (not counted for the first topology).
    pub leader_changed: bool,
    /// The former leader whose connections were closed, and how many were open.
    pub fenced: Option<(Backend, usize)>,
    /// The fenced connections, to wait until they are closed.
    pub closing: Closing,
}

impl std::fmt::Debug for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applied")
            .field("leader_changed", &self.leader_changed)
            .field("fenced", &self.fenced)
            .finish()
    }
}

impl PartialEq for Applied {
    fn eq(&self, other: &Applied) -> bool {
        self.leader_changed == other.leader_changed && self.fenced == other.fenced
    }
}

/// Fenced connections that may still be closing.
#[derive(Default)]
pub(crate) struct Closing {
    signals: Vec<Arc<FenceSignal>>,
    notify: Option<Arc<Notify>>,
}

impl Closing {
    /// Returns once every fenced connection is closed: waits up to `timeout` for their tasks to
    /// close them, then shuts down by force the server sockets still open (a task stuck writing to
    /// a client that does not read). A connection whose socket is not registered yet (TCP or TLS
    /// handshake under way, bounded by the connect timeout) is waited for, and shut down as soon as
    /// it registers. Returns how many were shut down by force.
    pub async fn close(self, timeout: Duration) -> usize {
        let Some(notify) = self.notify else {
            return 0;
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut forced = 0;
        loop {
            let notified = notify.notified();
            if self.signals.iter().all(|s| s.is_done()) {
                return forced;
            }
            if tokio::time::Instant::now() >= deadline {
                forced += self
                    .signals
                    .iter()
                    .filter(|s| !s.is_done() && s.force_close())
                    .count();
                if self.signals.iter().all(|s| s.is_done()) {
                    return forced;
                }
                // Still connecting: check again shortly (registration does not notify).
                let _ = tokio::time::timeout(FORCE_RECHECK, notified).await;
                continue;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// How many connections are still open.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.signals.iter().filter(|s| !s.is_done()).count()
    }
}

/// How long the fencing handshake lets the connections to a former leader close by themselves
/// ([`Closing::close`]) before it shuts their server sockets down by force, when the leader it
/// routes writes to changes away from the leader of `in_force` (the topology routed until now).
/// `graceful`: the wait of a planned handover.
///
/// A connection's task closes its server socket as soon as it sees its fence; the wait only matters
/// for one that does not yet (busy outside its relay: opening a connection, writing to a client
/// that does not read). A forced close resets the socket ([`abort_on_close`]), so nothing unsent
/// reaches the former leader later: forcing is always safe. The wait delays the acknowledgement,
/// which the candidate waits for before it promotes (issue 14: 2 s of a silent-host failover).
/// - `in_force` asked its leader to step down (a switchover, [`Topology::is_switching_over`]):
///   `graceful`. The former leader shuts down in order, its sessions end their transaction or move
///   to the next leader (drain_timeout), and its connections close by themselves.
/// - Otherwise (a failover: the lock expired, was lost or released without a request, or the
///   leader stopped publishing itself as a routable primary): no wait. The former leader is gone,
///   silent, or no longer holds the lock: a connection still open to it can only carry statements
///   that must not run there, and its task is stuck if the fence did not close it already.
///
/// A switchover request pending when the leader fails keeps the graceful wait: the proxy cannot
/// tell that failure from the handover.
pub(crate) fn fence_close_wait(in_force: &Topology, graceful: Duration) -> Duration {
    if in_force.is_switching_over() {
        graceful
    } else {
        Duration::ZERO
    }
}

/// A backend [`Router::pick`] chose, with the topology it is in (no connection registered).
pub(crate) struct Picked {
    topology: Arc<Topology>,
    /// Index in `topology.replicas`; `None`: the leader.
    replica: Option<usize>,
    /// The role the backend plays.
    pub role: BackendRole,
}

impl Picked {
    /// The chosen backend.
    pub fn backend(&self) -> &Backend {
        match self.replica {
            Some(i) => &self.topology.replicas[i],
            // `choose` picks the leader only when there is one.
            None => self
                .topology
                .leader
                .as_ref()
                .expect("a picked leader exists"),
        }
    }
}

/// What a client wants a backend for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Want {
    /// The leader (writes).
    Leader,
    /// A fresh replica, round-robin; the leader when none is fresh and the policy allows.
    Read,
}

/// Why no backend was routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NoRoute {
    /// None is routable now (no leader, no fresh replica).
    NoBackend,
    /// The proxy stopped serving (lost the DCS); the reason.
    Suspended(String),
}

struct State {
    topology: Arc<Topology>,
    initialized: bool,
    /// The fences of the open connections, per backend and connection id.
    fences: crate::pool::BackendMap<HashMap<u64, Arc<FenceSignal>>>,
    /// Set by [`Router::fence_all`]: every later route is fenced at once.
    shut_down: bool,
    /// Set by [`Router::suspend`]: nothing is routed.
    suspended: Option<String>,
    /// Which replicas get reads.
    policy: LagPolicy,
    /// Per replica, the highest replay position (`pg_last_wal_replay_lsn()`, bytes) a session saw
    /// on it, for read-your-writes ([`crate::ryw`]). Forgotten when the leader changes: a member
    /// rewound or rebuilt under a new leader may replay from a lower position.
    replayed: HashMap<Backend, u64>,
    /// The admin console's `PAUSE`: which databases' new transactions wait.
    paused: Paused,
    /// The admin console's `RECONNECT`: connections with a smaller id are closed when released.
    reconnect: ReconnectMarks,
    /// Since when the topology in force asks the leader to step down (the first topology applied
    /// with [`Topology::is_switching_over`]); `None` when it does not.
    switching_since: Option<std::time::Instant>,
}

/// The connection ids current at the last `RECONNECT` (of everything, and per database).
#[derive(Debug, Default)]
struct ReconnectMarks {
    all: u64,
    databases: HashMap<String, u64>,
}

impl ReconnectMarks {
    fn mark_of(&self, database: Option<&str>) -> u64 {
        let db = database.and_then(|d| self.databases.get(d)).copied();
        db.unwrap_or(0).max(self.all)
    }
}

/// What `PAUSE` holds: every database, or those named.
#[derive(Debug, Default, Clone)]
pub(crate) struct Paused {
    pub all: bool,
    pub databases: std::collections::BTreeSet<String>,
}

impl Paused {
    fn holds(&self, database: &str) -> bool {
        self.all || self.databases.contains(database)
    }

    fn is_empty(&self) -> bool {
        !self.all && self.databases.is_empty()
    }
}

pub(crate) struct Router {
    state: Arc<Mutex<State>>,
    /// Bumped after every applied topology; clients waiting for a backend watch it.
    version: watch::Sender<u64>,
    round_robin: AtomicUsize,
    next_connection: AtomicU64,
    /// Woken whenever a connection's route is dropped.
    closed: Arc<Notify>,
    /// Mirrors [`Topology::is_switching_over`] of the topology in force, read without the lock by
    /// every read-write relay before it reads its client.
    switching: AtomicBool,
    /// True while anything is paused (`PAUSE`): the relays look at [`Paused`] only then.
    pausing: AtomicBool,
    /// A `RECONNECT` was given once: only then do sessions look at the marks.
    reconnected: AtomicBool,
}

fn want_of(listener: ListenerKind) -> Want {
    match listener {
        ListenerKind::ReadWrite | ListenerKind::Auto => Want::Leader,
        ListenerKind::ReadOnly => Want::Read,
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves consistent data (every update is a single assignment or
    // map operation), so a poisoned lock is still usable.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

struct Lease {
    state: Arc<Mutex<State>>,
    backend: Backend,
    connection: u64,
    signal: Arc<FenceSignal>,
    closed: Arc<Notify>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut st = lock(&self.state);
            if let Some(open) = st.fences.get_mut(&self.backend) {
                // After a fence the entry is gone or new: removing an absent id is a no-op.
                open.remove(&self.connection);
                if open.is_empty() {
                    st.fences.remove(&self.backend);
                }
            }
        }
        self.signal.closed.store(true, Ordering::Release);
        self.closed.notify_waiters();
    }
}

impl Router {
    pub fn new() -> Router {
        Router {
            state: Arc::new(Mutex::new(State {
                topology: Arc::new(Topology::default()),
                initialized: false,
                fences: Default::default(),
                shut_down: false,
                suspended: None,
                replayed: HashMap::new(),
                policy: LagPolicy {
                    reads_on_leader: true,
                    ..LagPolicy::default()
                },
                paused: Paused::default(),
                reconnect: ReconnectMarks::default(),
                switching_since: None,
            })),
            version: watch::channel(0).0,
            round_robin: AtomicUsize::new(0),
            next_connection: AtomicU64::new(0),
            closed: Arc::new(Notify::new()),
            switching: AtomicBool::new(false),
            pausing: AtomicBool::new(false),
            reconnected: AtomicBool::new(false),
        }
    }

    /// `PAUSE [db]`: new transactions of `database` (every database: `None`) wait at their
    /// boundary, as during a switchover, until [`Router::resume_paused`].
    pub fn pause(&self, database: Option<&str>) {
        let mut st = lock(&self.state);
        match database {
            None => st.paused.all = true,
            Some(db) => {
                st.paused.databases.insert(db.to_string());
            }
        }
        self.pausing.store(true, Ordering::Release);
        drop(st);
        self.version.send_modify(|v| *v += 1);
    }

    /// `RESUME [db]`: releases what [`Router::pause`] held. `None` resumes every database; a named
    /// one is released only if it was paused by name (after `PAUSE` of everything, `RESUME db`
    /// changes nothing, as in PgBouncer). Returns whether anything was released.
    pub fn resume_paused(&self, database: Option<&str>) -> bool {
        let mut st = lock(&self.state);
        let released = match database {
            None => {
                let was = !st.paused.is_empty();
                st.paused = Paused::default();
                was
            }
            Some(db) => st.paused.databases.remove(db),
        };
        self.pausing.store(!st.paused.is_empty(), Ordering::Release);
        drop(st);
        if released {
            self.version.send_modify(|v| *v += 1);
        }
        released
    }

    /// Whether `database`'s new transactions wait (`PAUSE`); one atomic load when nothing is.
    pub fn is_paused(&self, database: &str) -> bool {
        self.pausing.load(Ordering::Acquire) && lock(&self.state).paused.holds(database)
    }

    /// `RECONNECT [db]`: every server connection open now (of `database`; all: `None`) is to be
    /// closed when its session releases it, so that new ones are opened (after a DNS or address
    /// change). Returns how many such connections are open.
    pub fn mark_reconnect(&self, database: Option<&str>) -> usize {
        let mark = self.next_connection.load(Ordering::Relaxed);
        let mut st = lock(&self.state);
        match database {
            None => st.reconnect.all = mark,
            Some(db) => {
                st.reconnect.databases.insert(db.to_string(), mark);
            }
        }
        drop(st);
        self.reconnected.store(true, Ordering::Release);
        self.stale_open(database)
    }

    /// Whether any `RECONNECT` ran (one atomic load): until one does, no connection is stale
    /// ([`Router::is_stale`]), and callers need not work out a database name to ask.
    pub fn any_reconnect(&self) -> bool {
        self.reconnected.load(Ordering::Acquire)
    }

    /// Whether connection `id` of `database` was open at a `RECONNECT` that covers it.
    pub fn is_stale(&self, id: u64, database: &str) -> bool {
        if !self.reconnected.load(Ordering::Acquire) {
            return false;
        }
        let st = lock(&self.state);
        id < st.reconnect.mark_of(Some(database))
    }

    /// How many server connections (of `database`; all: `None`) opened before the `RECONNECT`
    /// that covers them are still open: what `WAIT_CLOSE` waits for.
    pub fn stale_open(&self, database: Option<&str>) -> usize {
        let st = lock(&self.state);
        st.fences
            .values()
            .flat_map(|m| m.iter())
            .filter(|(id, signal)| {
                let db = signal.database.get().map(|d| &**d);
                database.is_none_or(|want| db == Some(want))
                    && **id < st.reconnect.mark_of(db)
                    && !signal.is_done()
            })
            .count()
    }

    /// Whether anything is paused (one atomic load).
    pub fn any_paused(&self) -> bool {
        self.pausing.load(Ordering::Acquire)
    }

    /// Waits while `database` is paused (no deadline: `PAUSE` holds until `RESUME`, as in
    /// PgBouncer; the client may give up by closing).
    #[cfg(test)]
    pub async fn wait_unpaused(&self, database: &str) {
        self.wait_unpaused_unless(database, || false).await;
    }

    /// Waits while `database` is paused, unless `stop` says the session was killed (`KILL`):
    /// `stop` is asked at every wake-up ([`Router::wake_all`]). True: not paused (any more);
    /// false: stopped.
    pub async fn wait_unpaused_unless(&self, database: &str, stop: impl Fn() -> bool) -> bool {
        loop {
            let mut changes = self.version.subscribe();
            if stop() {
                return false;
            }
            if !self.is_paused(database) {
                return true;
            }
            if changes.changed().await.is_err() {
                return true;
            }
        }
    }

    /// Wakes every session waiting for a change (after `KILL` marked some).
    pub fn wake_all(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    /// True while the DCS asks the routable leader to step down (one atomic load).
    pub fn is_switching_over(&self) -> bool {
        self.switching.load(Ordering::Acquire)
    }

    /// Since when the DCS asks the routable leader to step down, as the proxy saw it (the first
    /// topology applied that says so); `None` when it does not. The auto port counts
    /// `drain_timeout` from here ([`crate::units::leader_drain`]).
    pub fn switching_since(&self) -> Option<std::time::Instant> {
        lock(&self.state).switching_since
    }

    /// Sets which replicas get reads (reload).
    pub fn set_policy(&self, policy: LagPolicy) {
        lock(&self.state).policy = policy;
        self.version.send_modify(|v| *v += 1);
    }

    /// Fences every connection, now and later (shutdown).
    pub fn fence_all(&self) -> usize {
        let mut st = lock(&self.state);
        st.shut_down = true;
        let mut closed = 0;
        for (_, open) in st.fences.drain() {
            closed += open.len();
            open.values().for_each(|s| s.fence());
        }
        closed
    }

    /// Stops serving: fences every connection and routes nothing until [`Router::resume`]. Returns
    /// the connections fenced (to wait for) and whether this call suspended (false: already was).
    pub fn suspend(&self, reason: &str) -> (Closing, bool) {
        let mut st = lock(&self.state);
        let first = st.suspended.is_none();
        st.suspended = Some(reason.to_string());
        let mut signals = Vec::new();
        for (_, open) in st.fences.drain() {
            for s in open.into_values() {
                s.fence();
                signals.push(s);
            }
        }
        (
            Closing {
                signals,
                notify: Some(self.closed.clone()),
            },
            first,
        )
    }

    /// Serves again after [`Router::suspend`]; true when it was suspended.
    pub fn resume(&self) -> bool {
        let was = lock(&self.state).suspended.take().is_some();
        if was {
            self.version.send_modify(|v| *v += 1);
        }
        was
    }

    /// True while suspended.
    pub fn is_suspended(&self) -> bool {
        lock(&self.state).suspended.is_some()
    }

    /// The topology in force.
    pub fn topology(&self) -> Arc<Topology> {
        lock(&self.state).topology.clone()
    }

    /// Makes `new` the topology in force. When the leader changes from A to anything else, every
    /// connection to A (either listener) is closed at once.
    pub fn apply(&self, new: Arc<Topology>) -> Applied {
        let mut applied = Applied::default();
        {
            let mut st = lock(&self.state);
            let old = std::mem::replace(&mut st.topology, new.clone());
            if old.leader != new.leader {
                st.replayed.clear();
                applied.leader_changed = st.initialized;
                if let Some(former) = &old.leader {
                    if let Some(open) = st.fences.remove(former) {
                        open.values().for_each(|s| s.fence());
                        applied.fenced = Some((former.clone(), open.len()));
                        applied.closing = Closing {
                            signals: open.into_values().collect(),
                            notify: Some(self.closed.clone()),
                        };
                    }
                }
            }
            st.initialized = true;
            st.switching_since = match (new.is_switching_over(), st.switching_since) {
                (false, _) => None,
                (true, since) => since.or_else(|| Some(std::time::Instant::now())),
            };
            self.switching
                .store(new.is_switching_over(), Ordering::Release);
        }
        self.version.send_modify(|v| *v += 1);
        applied
    }

    /// A backend for a new client on `listener` now, if there is one.
    pub fn try_route(&self, listener: ListenerKind) -> Option<Route> {
        self.try_route_want(want_of(listener)).ok()
    }

    /// A backend for `want` now.
    pub fn try_route_want(&self, want: Want) -> Result<Route, NoRoute> {
        let mut st = lock(&self.state);
        let (replica, role) = self.choose(&st, want)?;
        let topology = &st.topology;
        let backend = match replica {
            Some(i) => topology.replicas[i].clone(),
            None => topology.leader.clone().ok_or(NoRoute::NoBackend)?,
        };
        let connection = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let (fence, signal) = Fence::new();
        if st.shut_down {
            signal.fence();
        } else {
            st.fences
                .entry(backend.clone())
                .or_default()
                .insert(connection, signal.clone());
        }
        Ok(Route {
            backend: backend.clone(),
            role,
            fence,
            _lease: Lease {
                state: self.state.clone(),
                backend,
                connection,
                signal,
                closed: self.closed.clone(),
            },
        })
    }

    /// The backend [`Router::try_route_want`] would route `want` to now, without registering a
    /// connection: for a session that takes a pooled connection to it (which has its own route)
    /// and needs no new one. Advances the replicas' round robin as a route does.
    pub fn pick(&self, want: Want) -> Result<Picked, NoRoute> {
        let st = lock(&self.state);
        let (replica, role) = self.choose(&st, want)?;
        Ok(Picked {
            topology: st.topology.clone(),
            replica,
            role,
        })
    }

    /// Where `want` goes in `st`: a replica (its index in the topology's `replicas`) or the leader
    /// (`None`), and its role.
    fn choose(&self, st: &State, want: Want) -> Result<(Option<usize>, BackendRole), NoRoute> {
        if let Some(reason) = &st.suspended {
            return Err(NoRoute::Suspended(reason.clone()));
        }
        let topology = &st.topology;
        let leader = || match topology.leader {
            Some(_) => Ok((None, BackendRole::Leader)),
            None => Err(NoRoute::NoBackend),
        };
        match want {
            // A leader asked to step down takes no new transactions: they wait for the next one.
            Want::Leader if topology.is_switching_over() => Err(NoRoute::NoBackend),
            Want::Leader => leader(),
            Want::Read => {
                // Counted, then the chosen one found again: no list allocated per route.
                let fresh = topology.fresh_replicas(&st.policy).count();
                if fresh == 0 {
                    if !st.policy.reads_on_leader {
                        return Err(NoRoute::NoBackend);
                    }
                    return leader();
                }
                let i = self.round_robin.fetch_add(1, Ordering::Relaxed) % fresh;
                let chosen = topology.fresh_replicas(&st.policy).nth(i);
                let index = chosen
                    .and_then(|c| topology.replicas.iter().position(|r| std::ptr::eq(r, c)))
                    .ok_or(NoRoute::NoBackend)?;
                Ok((Some(index), BackendRole::Replica))
            }
        }
    }

    /// True when `backend` is still a backend `want` may use: the leader for [`Want::Leader`], a
    /// fresh replica (or the leader, when reads fall back to it) for [`Want::Read`].
    pub fn is_routable(&self, backend: &Backend, want: Want) -> bool {
        let st = lock(&self.state);
        if st.suspended.is_some() {
            return false;
        }
        let t = &st.topology;
        let is_leader = t.leader.as_ref() == Some(backend);
        match want {
            Want::Leader => is_leader && !t.is_switching_over(),
            Want::Read => {
                let mut fresh = t.fresh_replicas(&st.policy);
                if fresh.any(|r| r == backend) {
                    return true;
                }
                is_leader
                    && st.policy.reads_on_leader
                    && t.fresh_replicas(&st.policy).next().is_none()
            }
        }
    }

    /// A backend for a new client on `listener`, waiting up to `wait` for one to appear (a switchover
    /// leaves no routable leader for a moment: waiting beats failing; from the moment the DCS asks
    /// the leader to step down, [`Topology::is_switching_over`], leader routes wait for the next
    /// leader). `None` when none appeared.
    pub async fn route(&self, listener: ListenerKind, wait: Duration) -> Option<Route> {
        self.route_want(want_of(listener), wait).await.ok()
    }

    /// A backend for `want`, waiting up to `wait` for one to appear.
    pub async fn route_want(&self, want: Want, wait: Duration) -> Result<Route, NoRoute> {
        // Subscribed before the first try, so a topology applied in between wakes the wait below.
        let mut changes = self.version.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let last = match self.try_route_want(want) {
                Ok(route) => return Ok(route),
                Err(e) => e,
            };
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Err(last),
            }
        }
    }

    /// A receiver that sees every topology applied from now on (and `PAUSE`, `RESUME`, `KILL`).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Waits until the next topology is applied (or `wait` passes); false on timeout.
    pub async fn changed(&self, wait: Duration) -> bool {
        let mut changes = self.version.subscribe();
        matches!(
            tokio::time::timeout(wait, changes.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Open connections per backend, as `(backend, count)` (admin console).
    pub fn open_connections(&self) -> Vec<(Backend, usize)> {
        let st = lock(&self.state);
        let mut v: Vec<(Backend, usize)> = st
            .fences
            .iter()
            .map(|(b, m)| (b.clone(), m.len()))
            .collect();
        v.sort_by(|a, b| a.0.member().cmp(b.0.member()));
        v
    }

    /// The highest replay position (bytes) a session saw on `replica` since the leader last
    /// changed; `None`: none seen.
    pub fn known_replay(&self, replica: &Backend) -> Option<u64> {
        lock(&self.state).replayed.get(replica).copied()
    }

    /// Records that `replica` has replayed up to `lsn` (bytes); a lower value than one already
    /// known is ignored (positions only grow while the leader stays).
    pub fn note_replay(&self, replica: &Backend, lsn: u64) {
        let mut st = lock(&self.state);
        let known = st.replayed.entry(replica.clone()).or_insert(lsn);
        *known = (*known).max(lsn);
    }

    /// The lag policy in force.
    pub fn policy(&self) -> LagPolicy {
        lock(&self.state).policy
    }

    /// Open connections per backend (for tests and logs).
    #[cfg(test)]
    fn live(&self, backend: &Backend) -> usize {
        lock(&self.state).fences.get(backend).map_or(0, |e| e.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;

    /// Neither a forced close nor a fenced connection's own close may let the kernel deliver later
    /// what the former leader has not received yet: the server, which never read, sees a reset,
    /// not the rest of the queue.
    #[test]
    fn a_fenced_server_socket_drops_what_the_server_has_not_received() {
        // Shut down by force (the connection's task is stuck).
        queued_bytes_are_dropped(|signal| assert!(signal.force_close()));
        // Closed by its task after the fence.
        queued_bytes_are_dropped(|signal| {
            signal.fence();
            drop(SocketGuard(signal.clone()));
        });
    }

    /// Fills a loopback connection's send queue, registers its socket with a fence signal, runs
    /// `close` on the signal, closes the socket, and checks what the server receives.
    fn queued_bytes_are_dropped(close: impl FnOnce(&Arc<FenceSignal>)) {
        use std::io::{ErrorKind, Read, Write};
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        // The server reads nothing: its receive buffer fills, then the client's send queue.
        client.set_nonblocking(true).unwrap();
        let chunk = [7u8; 65536];
        let mut sent = 0usize;
        loop {
            match client.write(&chunk) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("write: {e}"),
            }
        }
        let signal = Arc::new(FenceSignal::default());
        *signal.socket.lock().unwrap() = Some(client.as_raw_fd());
        close(&signal);
        *signal.socket.lock().unwrap() = None;
        drop(client);
        server
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (mut received, mut buf) = (0usize, vec![0u8; 65536]);
        let end = loop {
            match server.read(&mut buf) {
                Ok(0) => break "end of file",
                Ok(n) => received += n,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break "reset",
                Err(e) => panic!("read: {e}"),
            }
        };
        assert_eq!(end, "reset", "received {received} of {sent} bytes");
        assert!(received < sent, "received {received} of {sent} bytes");
    }

    fn backend(name: &str, port: u16) -> Backend {
        Backend::new(name, "127.0.0.1", port)
    }

    fn topo(leader: Option<&Backend>, replicas: &[&Backend]) -> Arc<Topology> {
        Arc::new(Topology::new(
            leader.cloned(),
            replicas.iter().map(|b| (*b).clone()).collect(),
        ))
    }

    #[tokio::test]
    async fn pause_holds_a_database_or_all_until_the_matching_resume() {
        let router = Router::new();
        assert!(!router.is_paused("app") && !router.any_paused());
        router.pause(Some("app"));
        assert!(router.is_paused("app") && !router.is_paused("other"));
        assert!(!router.resume_paused(Some("other")));
        let waiter = {
            let mut changes = router.version.subscribe();
            async move { changes.changed().await.is_ok() }
        };
        assert!(router.resume_paused(Some("app")));
        assert!(waiter.await, "RESUME wakes the held sessions");
        router.pause(None);
        assert!(router.is_paused("other"));
        assert!(
            !router.resume_paused(Some("other")),
            "a PAUSE of everything is lifted by RESUME of everything"
        );
        assert!(router.resume_paused(None));
        assert!(!router.any_paused() && !router.is_paused("app"));
        // Not paused: returns at once.
        router.wait_unpaused("app").await;
    }

    #[tokio::test]
    async fn reconnect_marks_the_connections_open_now_per_database() {
        let a = backend("a", 1);
        let router = Router::new();
        router.apply(topo(Some(&a), &[]));
        let old = router.try_route(ListenerKind::ReadWrite).unwrap();
        old.set_database("app");
        let other = router.try_route(ListenerKind::ReadWrite).unwrap();
        other.set_database("other");
        assert!(!router.is_stale(old.connection_id(), "app"));
        assert_eq!(router.mark_reconnect(Some("app")), 1);
        let new = router.try_route(ListenerKind::ReadWrite).unwrap();
        new.set_database("app");
        assert!(router.is_stale(old.connection_id(), "app"));
        assert!(!router.is_stale(new.connection_id(), "app"));
        assert!(!router.is_stale(other.connection_id(), "other"));
        assert_eq!(router.stale_open(Some("app")), 1);
        assert_eq!(router.stale_open(None), 1);
        drop(old);
        assert_eq!(router.stale_open(Some("app")), 0, "WAIT_CLOSE is done");
        assert_eq!(
            router.mark_reconnect(None),
            2,
            "every database: new and other"
        );
    }

    #[tokio::test]
    async fn read_write_goes_to_the_leader_and_read_only_round_robins_over_replicas() {
        let (a, b, c) = (backend("a", 1), backend("b", 2), backend("c", 3));
        let router = Router::new();
        router.apply(topo(Some(&a), &[&b, &c]));
        let rw = router
            .route(ListenerKind::ReadWrite, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            (rw.backend.clone(), rw.role),
            (a.clone(), BackendRole::Leader)
        );
        let picks: Vec<String> = read_only_picks(&router, 4).await;
        assert_eq!(picks, ["b", "c", "b", "c"]);
        router.apply(topo(Some(&a), &[]));
        let ro = router
            .route(ListenerKind::ReadOnly, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!((ro.backend, ro.role), (a, BackendRole::Leader));
    }

    #[tokio::test]
    async fn a_switchover_holds_new_leader_routes_until_the_next_leader_and_keeps_reads() {
        let (a, b) = (backend("a", 1), backend("b", 2));
        let router = Router::new();
        router.apply(topo(Some(&a), &[&b]));
        let open = router.try_route_want(Want::Leader).unwrap();
        let switching = Arc::new(Topology {
            switchover: Some(crate::topology::Switchover {
                leader: "a".into(),
                candidate: Some("b".into()),
            }),
            ..(*topo(Some(&a), &[&b])).clone()
        });
        assert_eq!(router.switching_since(), None);
        assert!(
            router.apply(switching.clone()).fenced.is_none(),
            "nothing is fenced yet"
        );
        assert!(!open.fence.is_fenced(), "a running transaction goes on");
        // drain_timeout counts from the first topology that asks a to step down.
        let since = router.switching_since().expect("switching since");
        router.apply(switching.clone());
        assert_eq!(router.switching_since(), Some(since), "the same switchover");
        assert!(
            !router.is_routable(&a, Want::Leader),
            "no new transaction on a"
        );
        assert_eq!(
            router.try_route_want(Want::Leader).err(),
            Some(NoRoute::NoBackend)
        );
        assert_eq!(router.try_route_want(Want::Read).unwrap().backend, b);
        // A writer waits; the next leader releases it.
        let waiting = router.route_want(Want::Leader, Duration::from_secs(60));
        tokio::pin!(waiting);
        assert!(futures_poll_once(&mut waiting).await.is_none());
        router.apply(topo(Some(&b), &[]));
        assert_eq!(waiting.await.unwrap().backend, b);
        assert_eq!(router.switching_since(), None, "the switchover is over");
        assert!(
            open.fence.is_fenced(),
            "the former leader's connections are fenced"
        );
        // A switchover given up (the request cleared, same leader): routes to it again.
        router.apply(switching);
        router.apply(topo(Some(&a), &[&b]));
        assert_eq!(router.try_route_want(Want::Leader).unwrap().backend, a);
    }

    /// Polls `f` once: `None` when it is pending.
    async fn futures_poll_once<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        poll_fn(|cx| match Pin::new(&mut *f).poll(cx) {
            Poll::Ready(v) => Poll::Ready(Some(v)),
            Poll::Pending => Poll::Ready(None),
        })
        .await
    }

    async fn read_only_picks(router: &Router, n: usize) -> Vec<String> {
        let mut out = Vec::new();
        for _ in 0..n {
            let r = router
                .route(ListenerKind::ReadOnly, Duration::ZERO)
                .await
                .unwrap();
            out.push(r.backend.member().to_string());
        }
        out
    }

    #[tokio::test]
    async fn a_leader_change_fences_every_connection_to_the_former_leader_only() {
        let (a, b, c) = (backend("a", 1), backend("b", 2), backend("c", 3));
        let router = Router::new();
        assert_eq!(router.apply(topo(Some(&a), &[&b])), Applied::default());
        let rw1 = router
            .route(ListenerKind::ReadWrite, Duration::ZERO)
            .await
            .unwrap();
        let rw2 = router
            .route(ListenerKind::ReadWrite, Duration::ZERO)
            .await
            .unwrap();
        let ro = router
            .route(ListenerKind::ReadOnly, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(router.live(&a), 2);

        // Same leader, new replica: nothing fenced.
        let applied = router.apply(topo(Some(&a), &[&b, &c]));
        assert_eq!(applied, Applied::default());
        assert!(!rw1.fence.is_fenced());

        let applied = router.apply(topo(Some(&b), &[&c]));
        assert!(applied.leader_changed);
        assert_eq!(applied.fenced, Some((a.clone(), 2)));
        assert!(rw1.fence.is_fenced() && rw2.fence.is_fenced());
        assert!(!ro.fence.is_fenced(), "replica connections are left alone");
        drop((rw1, rw2));
        assert_eq!(router.live(&a), 0);

        // A new connection to b, then b loses the lock with no successor.
        let rw3 = router
            .route(ListenerKind::ReadWrite, Duration::ZERO)
            .await
            .unwrap();
        assert!(!rw3.fence.is_fenced());
        let applied = router.apply(topo(None, &[&c]));
        assert_eq!(
            applied.fenced,
            Some((b.clone(), 2)),
            "rw3 and the replica-era ro"
        );
        assert!(rw3.fence.is_fenced() && ro.fence.is_fenced());
    }

    #[tokio::test]
    async fn a_former_leader_back_as_replica_gets_fresh_tokens() {
        let (a, b) = (backend("a", 1), backend("b", 2));
        let router = Router::new();
        router.apply(topo(Some(&a), &[]));
        let old = router
            .route(ListenerKind::ReadWrite, Duration::ZERO)
            .await
            .unwrap();
        router.apply(topo(Some(&b), &[&a]));
        assert!(old.fence.is_fenced());
        let ro = router
            .route(ListenerKind::ReadOnly, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(ro.backend, a);
        assert!(!ro.fence.is_fenced());
        drop(old); // the stale lease must not touch the new entry
        assert_eq!(router.live(&a), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_waits_for_a_leader_up_to_the_timeout() {
        let a = backend("a", 1);
        let router = Arc::new(Router::new());
        assert!(router
            .route(ListenerKind::ReadWrite, Duration::from_secs(1))
            .await
            .is_none());

        let waiting = tokio::spawn({
            let router = router.clone();
            async move {
                router
                    .route(ListenerKind::ReadWrite, Duration::from_secs(5))
                    .await
                    .map(|r| r.backend)
            }
        });
        tokio::task::yield_now().await;
        router.apply(topo(None, &[]));
        tokio::time::advance(Duration::from_secs(2)).await;
        router.apply(topo(Some(&a), &[]));
        assert_eq!(waiting.await.unwrap(), Some(a));
    }

    #[tokio::test]
    async fn reads_skip_stale_replicas_and_fall_back_to_the_leader_only_if_allowed() {
        let (a, b, c) = (backend("a", 1), backend("b", 2), backend("c", 3));
        let router = Router::new();
        let mut t = Topology::new(Some(a.clone()), vec![b.clone(), c.clone()]);
        t.lag.insert(
            "b".into(),
            crate::topology::ReplicaLag {
                bytes: Some(10_000_000),
                seconds: None,
            },
        );
        router.apply(Arc::new(t));
        router.set_policy(LagPolicy {
            max_bytes: Some(1_000_000),
            max_seconds: None,
            reads_on_leader: true,
        });
        for _ in 0..4 {
            let r = router.try_route_want(Want::Read).unwrap();
            assert_eq!(r.backend, c, "b is too far behind");
        }
        assert!(router.is_routable(&c, Want::Read));
        assert!(!router.is_routable(&b, Want::Read));
        assert!(
            !router.is_routable(&a, Want::Read),
            "a fresh replica exists"
        );
        assert!(router.is_routable(&a, Want::Leader));
        // c goes away: reads go to the leader, or nowhere.
        let mut t = Topology::new(Some(a.clone()), vec![b.clone()]);
        t.lag.insert(
            "b".into(),
            crate::topology::ReplicaLag {
                bytes: Some(10_000_000),
                seconds: None,
            },
        );
        router.apply(Arc::new(t));
        assert_eq!(router.try_route_want(Want::Read).unwrap().backend, a);
        assert!(router.is_routable(&a, Want::Read));
        router.set_policy(LagPolicy {
            max_bytes: Some(1_000_000),
            max_seconds: None,
            reads_on_leader: false,
        });
        assert_eq!(
            router.try_route_want(Want::Read).err(),
            Some(NoRoute::NoBackend)
        );
    }

    #[test]
    fn replay_positions_only_grow_and_are_forgotten_when_the_leader_changes() {
        let (a, b, c) = (backend("a", 1), backend("b", 2), backend("c", 3));
        let router = Router::new();
        router.apply(topo(Some(&a), &[&b, &c]));
        assert_eq!(router.known_replay(&b), None);
        router.note_replay(&b, 100);
        router.note_replay(&b, 90);
        assert_eq!(router.known_replay(&b), Some(100), "never backwards");
        router.apply(topo(Some(&a), &[&b]));
        assert_eq!(router.known_replay(&b), Some(100), "same leader: kept");
        router.apply(topo(Some(&c), &[&b]));
        assert_eq!(router.known_replay(&b), None, "new leader: forgotten");
    }

    #[test]
    fn the_fencing_wait_is_graceful_only_when_the_former_leader_was_asked_to_step_down() {
        let (a, b) = (backend("a", 1), backend("b", 2));
        let graceful = Duration::from_secs(2);
        let switching = |leader: Option<&Backend>, asked: &str, candidate: Option<&str>| Topology {
            switchover: Some(crate::topology::Switchover {
                leader: asked.into(),
                candidate: candidate.map(String::from),
            }),
            ..(*topo(leader, &[&b])).clone()
        };
        let rows: [(&str, Topology, Duration); 6] = [
            (
                "switchover to a candidate: drain",
                switching(Some(&a), "a", Some("b")),
                graceful,
            ),
            (
                "switchover without a candidate: drain",
                switching(Some(&a), "a", None),
                graceful,
            ),
            (
                "failover (lock expired or lost, no request): force at once",
                (*topo(Some(&a), &[&b])).clone(),
                Duration::ZERO,
            ),
            (
                "a request naming another member than the routed leader (refused by the \
                 agents): force at once",
                switching(Some(&a), "b", None),
                Duration::ZERO,
            ),
            (
                "nothing was routed (no former leader to drain)",
                (*topo(None, &[&b])).clone(),
                Duration::ZERO,
            ),
            (
                "a request with no routable leader",
                switching(None, "a", Some("b")),
                Duration::ZERO,
            ),
        ];
        for (name, in_force, want) in rows {
            assert_eq!(fence_close_wait(&in_force, graceful), want, "{name}");
        }
    }

    #[tokio::test]
    async fn closing_resolves_once_every_fenced_route_is_dropped() {
        let (a, b) = (backend("a", 1), backend("b", 2));
        let router = Router::new();
        router.apply(topo(Some(&a), &[]));
        let r1 = router.try_route_want(Want::Leader).unwrap();
        let r2 = router.try_route_want(Want::Leader).unwrap();
        let applied = router.apply(topo(Some(&b), &[]));
        assert_eq!(applied.closing.open(), 2);
        let waiter = tokio::spawn(applied.closing.close(Duration::from_secs(30)));
        drop(r1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(r2);
        assert_eq!(waiter.await.unwrap(), 0, "none shut down by force");
        assert_eq!(Closing::default().close(Duration::ZERO).await, 0);
    }

    #[tokio::test]
    async fn a_fenced_connection_still_open_at_the_deadline_is_shut_down_by_force() {
        use std::os::fd::AsRawFd;
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_side = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        let (a, b) = (backend("a", 1), backend("b", 2));
        let router = Router::new();
        router.apply(topo(Some(&a), &[]));
        // A connection whose task never reacts to its fence: route and socket stay alive.
        let stuck = router.try_route_want(Want::Leader).unwrap();
        let _guard = stuck.watch_socket(proxy_side.as_raw_fd());
        let applied = router.apply(topo(Some(&b), &[]));
        assert_eq!(applied.closing.close(Duration::from_millis(100)).await, 1);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(10), server_side.read(&mut buf))
            .await
            .expect("the server sees the connection end");
        assert_eq!(read.unwrap(), 0, "end-of-file at the server");
        drop((stuck, proxy_side));
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspended_router_fences_everything_and_routes_nothing_until_resumed() {
        let a = backend("a", 1);
        let router = Router::new();
        router.apply(topo(Some(&a), &[]));
        let r = router.try_route_want(Want::Leader).unwrap();
        let (closing, first) = router.suspend("no DCS contact for 6 s");
        assert!(first && r.fence.is_fenced());
        assert!(!router.suspend("again").1);
        assert!(matches!(
            router
                .route_want(Want::Leader, Duration::from_secs(1))
                .await,
            Err(NoRoute::Suspended(_))
        ));
        drop(r);
        assert_eq!(closing.close(Duration::from_secs(1)).await, 0);
        assert!(router.resume());
        assert!(!router.resume());
        assert!(router.try_route_want(Want::Leader).is_ok());
    }

    #[tokio::test]
    async fn fence_all_fences_open_and_later_connections() {
        let router = Router::new();
        router.apply(topo(Some(&backend("a", 1)), &[&backend("b", 2)]));
        let rw = router
            .route(ListenerKind::ReadWrite, Duration::ZERO)
            .await
            .unwrap();
        let ro = router
            .route(ListenerKind::ReadOnly, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(router.fence_all(), 2);
        assert!(rw.fence.is_fenced() && ro.fence.is_fenced());
        let late = router
            .route(ListenerKind::ReadWrite, Duration::ZERO)
            .await
            .unwrap();
        assert!(late.fence.is_fenced());
    }

    #[tokio::test]
    async fn a_task_waiting_on_its_fence_wakes_when_fenced() {
        let router = Arc::new(Router::new());
        router.apply(topo(Some(&backend("a", 1)), &[]));
        let mut route = router
            .route(ListenerKind::ReadWrite, Duration::ZERO)
            .await
            .unwrap();
        let waiter = tokio::spawn(async move {
            route.fence.fenced().await;
        });
        tokio::task::yield_now().await;
        router.apply(topo(None, &[]));
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
