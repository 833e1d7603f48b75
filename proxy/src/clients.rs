//! The open client connections, for the admin console (`SHOW CLIENTS`, `SHOW SERVERS`).
//!
//! Each connection task registers a small [`ClientInfo`] and updates it when its state changes
//! (authenticated, routed, pinned); the console reads a snapshot. One mutex per client, never held
//! across an await, and no allocation on the relay's hot path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use praetor_protocol::{CancelKey, PinReason};

use crate::metrics::ListenerKind;
use crate::topology::Backend;

/// What a client connection is doing, as shown by the admin console.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientState {
    /// `user\0database`: one allocation (thousands of idle clients each keep one).
    names: Box<str>,
    pub tls: bool,
    /// `startup`, `idle`, `active`, `waiting`, `parked`, `held` (its next transaction waits:
    /// `PAUSE` or a switchover).
    pub status: &'static str,
    /// Server connections: `(member, role)`.
    pub servers: Vec<(String, &'static str)>,
    /// Why the session is pinned to the leader, if it is.
    pub pinned: Option<PinReason>,
}

impl ClientState {
    /// The user name from the StartupMessage (empty before it).
    pub fn user(&self) -> &str {
        self.names.split('\0').next().unwrap_or("")
    }

    /// The database name from the StartupMessage (empty before it).
    pub fn database(&self) -> &str {
        self.names.split('\0').nth(1).unwrap_or("")
    }

    /// Records the StartupMessage's user and database.
    pub fn set_names(&mut self, user: &str, database: &str) {
        self.names = format!("{user}\0{database}").into_boxed_str();
    }
}

/// The server an auto-port session runs its unit on ([`crate::cancel::SessionCancel`]).
#[derive(Debug, Default)]
pub(crate) struct CurrentServer {
    /// A unit runs on `last`'s server.
    pub running: bool,
    /// The server of the session's last unit and that server's cancel key, kept between units:
    /// the next unit on the same server allocates nothing. Boxed: most sessions are on no server
    /// (a parked session keeps none).
    pub last: Option<Box<(Backend, CancelKey)>>,
}

/// One client connection.
pub(crate) struct ClientInfo {
    pub id: u64,
    pub listener: ListenerKind,
    pub peer: SocketAddr,
    pub since: SystemTime,
    state: Mutex<ClientState>,
    /// An auto-port session's current server and that server's cancel key
    /// ([`crate::cancel::SessionCancel`]).
    pub(crate) current_server: Mutex<CurrentServer>,
    /// A transaction is running (read-write port: not at a boundary; auto port: a unit runs):
    /// what `PAUSE` waits for.
    pub busy: AtomicBool,
    /// The client's socket, for `KILL` (-1: unknown).
    fd: AtomicI32,
    /// Set by `KILL`: a session held by `PAUSE` ends instead of running what it holds.
    killed: AtomicBool,
    /// Set by `pg_terminate_backend` ([`Clients::terminate`]): the session ends with FATAL 57P01.
    terminated: AtomicBool,
}

impl ClientInfo {
    /// Changes the state under the lock; returns what `f` returns.
    pub fn update<T>(&self, f: impl FnOnce(&mut ClientState) -> T) -> T {
        f(&mut self.lock())
    }

    /// The client's user name (empty before its StartupMessage).
    pub fn user(&self) -> String {
        self.lock().user().to_string()
    }

    /// A copy of the state.
    pub fn state(&self) -> ClientState {
        self.lock().clone()
    }

    fn lock(&self) -> MutexGuard<'_, ClientState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the client's StartupMessage named `database`.
    pub fn database_is(&self, database: &str) -> bool {
        self.lock().database() == database
    }

    /// Whether `KILL` closed this client.
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    /// Whether `pg_terminate_backend` ended this session ([`Clients::terminate`]).
    pub fn is_terminated(&self) -> bool {
        self.terminated.load(Ordering::Acquire)
    }

    /// Records the client's socket, for [`Clients::kill`].
    pub fn set_socket(&self, fd: RawFd) {
        self.fd.store(fd, Ordering::Relaxed);
    }
}

/// The registry.
#[derive(Default)]
pub(crate) struct Clients {
    open: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
    next: AtomicU64,
}

/// Unregisters its client on drop.
pub(crate) struct ClientGuard {
    clients: Arc<Clients>,
    pub info: Arc<ClientInfo>,
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.clients
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.info.id);
    }
}

impl Clients {
    /// Registers a new connection on `listener` from `peer`.
    pub fn register(self: &Arc<Self>, listener: ListenerKind, peer: SocketAddr) -> ClientGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let info = Arc::new(ClientInfo {
            id,
            listener,
            peer,
            since: SystemTime::now(),
            state: Mutex::new(ClientState {
                status: "startup",
                ..ClientState::default()
            }),
            current_server: Mutex::new(CurrentServer::default()),
            busy: AtomicBool::new(false),
            fd: AtomicI32::new(-1),
            killed: AtomicBool::new(false),
            terminated: AtomicBool::new(false),
        });
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, info.clone());
        ClientGuard {
            clients: self.clone(),
            info,
        }
    }

    /// Every open connection, oldest first.
    pub fn snapshot(&self) -> Vec<Arc<ClientInfo>> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// `KILL`: shuts down the sockets of the clients `which` selects (both directions), under the
    /// registry's lock. The session's next read sees the end of its client, wherever it waits (its
    /// task, a relay, the parking lot), and it ends as when the client closes: its server
    /// connections close and its registration goes. A session held by `PAUSE` reads nothing: it
    /// is marked ([`ClientInfo::is_killed`]) and ends when woken ([`crate::router::Router::wake_all`]),
    /// so what it held never runs. Returns how many were shut down.
    ///
    /// Why a shutdown rather than a signal to each task: it reaches every kind of session at
    /// once (parked ones included) and costs the relays nothing. A descriptor the session closed
    /// meanwhile could be reused by another socket: the peer address is checked first.
    pub fn kill(&self, which: impl Fn(&ClientInfo) -> bool) -> usize {
        self.shut_down(which, std::net::Shutdown::Both)
    }

    /// `pg_terminate_backend` of the session of client `id`: marks it terminated
    /// ([`ClientInfo::is_terminated`]) and killed, and shuts down the reading side of its socket
    /// only. The session wakes wherever it waits, as after [`Clients::kill`], and ends; since it
    /// can still write, it first tells its client `FATAL 57P01 terminating connection due to
    /// administrator command`, as a terminated PostgreSQL backend does. Nothing the client sent
    /// afterwards runs (the killed mark is checked before each unit). False when the client is
    /// gone.
    pub fn terminate(&self, id: u64) -> bool {
        self.shut_down(
            |c| {
                let mine = c.id == id;
                if mine {
                    c.terminated.store(true, Ordering::Release);
                }
                mine
            },
            std::net::Shutdown::Read,
        ) > 0
    }

    /// Marks the clients `which` selects as killed and shuts down their sockets in direction
    /// `how`, under the registry's lock (see [`Clients::kill`]). Returns how many were shut down.
    fn shut_down(&self, which: impl Fn(&ClientInfo) -> bool, how: std::net::Shutdown) -> usize {
        let open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let mut killed = 0;
        for info in open.values().filter(|i| which(i)) {
            info.killed.store(true, Ordering::Release);
            let fd = info.fd.load(Ordering::Relaxed);
            if fd < 0 {
                continue;
            }
            // SAFETY: the registration is removed (under this lock) when the session ends,
            // before or after its socket closes; `ManuallyDrop` never closes the descriptor,
            // and the peer check below keeps a reused descriptor from being touched.
            let socket =
                std::mem::ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
            if socket.peer_addr().ok() == Some(info.peer) {
                let _ = socket.shutdown(how);
                killed += 1;
            }
        }
        killed
    }

    /// How many are open.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_register_update_and_vanish_on_drop() {
        let clients = Arc::new(Clients::default());
        let peer: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let a = clients.register(ListenerKind::Auto, peer);
        let b = clients.register(ListenerKind::ReadWrite, peer);
        a.info.update(|s| {
            s.set_names("alice", "db");
            s.status = "idle";
        });
        let snap = clients.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].state().user(), "alice");
        assert_eq!(snap[0].state().database(), "db");
        assert!(snap[0].id < snap[1].id);
        drop(a);
        assert_eq!(clients.len(), 1);
        drop(b);
        assert_eq!(clients.len(), 0);
    }
}
