//! Routes CancelRequests: which backend issued which `(pid, secret)`.
//!
//! A client's CancelRequest arrives on a new connection that names no database, only the key the
//! server sent in BackendKeyData. Each relayed session registers that key with its backend while it is
//! open; a CancelRequest with a known key is forwarded to that backend, an unknown one is dropped (as
//! PostgreSQL does, without an answer).
//!
//! An auto-port session talks to several servers, so the proxy gives its client a key of its own
//! ([`CancelRegistry::register_session`]) and forwards a cancel to whichever server runs the
//! session's current transaction, with that server's key ([`SessionCancel`]). The same registry
//! finds a session by that PID alone ([`CancelRegistry::session_by_pid`]) for
//! `pg_cancel_backend(pid)` and `pg_terminate_backend(pid)`, which the proxy carries out itself.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use praetor_protocol::CancelKey;

use crate::clients::{ClientInfo, CurrentServer};
use crate::topology::Backend;

/// The server running an auto-port session's current transaction, and its cancel key: kept in
/// the client's [`ClientInfo`] (no allocation of its own per session).
#[derive(Clone)]
pub(crate) struct SessionCancel(Arc<ClientInfo>);

impl SessionCancel {
    /// Cancels of `client`'s session.
    pub fn new(client: Arc<ClientInfo>) -> SessionCancel {
        SessionCancel(client)
    }

    /// The session now runs on `backend`, whose key is `key` (`None`: on no server). The record
    /// of the last server is reused when it is the same server (no allocation for a unit on the
    /// server of the unit before, which is every unit of most sessions).
    pub fn set(&self, current: Option<(&Backend, &CancelKey)>) {
        let mut slot = lock(&self.0.current_server);
        let Some((backend, key)) = current else {
            slot.running = false;
            return;
        };
        match &mut slot.last {
            Some(last) if last.0 == *backend => {
                if last.1 != *key {
                    last.1 = key.clone();
                }
            }
            last => *last = Some(Box::new((backend.clone(), key.clone()))),
        }
        slot.running = true;
    }

    /// Runs on no server and forgets the last one (a session that parks keeps nothing it does not
    /// need).
    pub fn clear(&self) {
        *lock(&self.0.current_server) = CurrentServer::default();
    }

    /// The server running the session's current statement and that server's key (`None`: the
    /// session runs nothing).
    pub fn get(&self) -> Option<(Backend, CancelKey)> {
        let slot = lock(&self.0.current_server);
        if !slot.running {
            return None;
        }
        slot.last.as_deref().cloned()
    }

    /// The session's client.
    pub fn client(&self) -> &Arc<ClientInfo> {
        &self.0
    }
}

/// Keys servers issued, for the read-write and read-only ports' relayed sessions: the key the
/// client holds, the server that runs its session and that server's key (the same key, unless the
/// session moved to a new leader in a switchover).
type BackendKeys = HashMap<CancelKey, (Backend, CancelKey)>;

/// Keys the proxy issued to auto-port sessions, as `pid << 32 | secret` (the proxy's secrets are
/// 4 bytes): 16 bytes an entry, so that thousands of idle clients cost little.
type SessionKeys = HashMap<u64, SessionCancel>;

/// The keys of the open sessions.
#[derive(Clone, Default)]
pub(crate) struct CancelRegistry {
    backends: Arc<Mutex<BackendKeys>>,
    sessions: Arc<Mutex<SessionKeys>>,
    issued: Arc<AtomicU64>,
    hasher: Arc<RandomState>,
    notifiers: Arc<Mutex<Notifiers>>,
}

/// How many closed leader connections' last clients are remembered (entries of 12 bytes).
const CLOSED_NOTIFIERS: usize = 4096;

/// The leader server connections auto-port units ran on, keyed by `(hash of the server's host and
/// port, server PID)`.
#[derive(Default)]
struct Notifiers {
    /// Each open connection's [`NotifierSlot`] cell, added on its first leader unit.
    open: HashMap<(u64, i32), Arc<AtomicI32>>,
    /// The last client of recently closed connections, oldest first in `closed_order`: a client
    /// that runs `NOTIFY` and disconnects at once (psycopg2's notify tests do) closes its server
    /// connection before the listeners read the notification, which still shows that client's PID.
    closed: HashMap<(u64, i32), i32>,
    closed_order: VecDeque<(u64, i32)>,
}

/// The auto-port client whose unit last ran on one leader server connection, as the PID the proxy
/// gave that client (0: none yet). The connection carries it, so noting a unit is one atomic store
/// with no lock; the registry finds it by server PID only when a NotificationResponse arrives.
/// Dropping it (with the connection) unregisters it.
pub(crate) struct NotifierSlot {
    pid: Arc<AtomicI32>,
    notifiers: Arc<Mutex<Notifiers>>,
    key: (u64, i32),
}

impl NotifierSlot {
    /// The auto-port client holding PID `client_pid` runs a unit on this connection now.
    pub fn set(&self, client_pid: i32) {
        self.pid.store(client_pid, Ordering::Relaxed);
    }
}

impl Drop for NotifierSlot {
    fn drop(&mut self) {
        let mut notifiers = lock(&self.notifiers);
        // Only our own entry: a new connection to a restarted server may reuse the PID.
        if notifiers
            .open
            .get(&self.key)
            .is_some_and(|p| Arc::ptr_eq(p, &self.pid))
        {
            notifiers.open.remove(&self.key);
            let client_pid = self.pid.load(Ordering::Relaxed);
            if client_pid != 0 && notifiers.closed.insert(self.key, client_pid).is_none() {
                notifiers.closed_order.push_back(self.key);
                if notifiers.closed_order.len() > CLOSED_NOTIFIERS {
                    if let Some(oldest) = notifiers.closed_order.pop_front() {
                        notifiers.closed.remove(&oldest);
                    }
                }
            }
        }
    }
}

/// A registered server key; dropping it unregisters the key.
pub(crate) struct Registration {
    backends: Arc<Mutex<BackendKeys>>,
    key: CancelKey,
    backend: Backend,
}

/// A key the proxy issued to an auto-port session; dropping it unregisters the key.
pub(crate) struct SessionRegistration {
    sessions: Arc<Mutex<SessionKeys>>,
    key: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update is one map operation: a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The session-map key of a proxy-issued `(pid, secret)`.
fn session_map_key(pid: i32, secret: u32) -> u64 {
    u64::from(pid as u32) << 32 | u64::from(secret)
}

/// The session-map key of `key`, when it can be one the proxy issued (a 4-byte secret).
fn session_key(key: &CancelKey) -> Option<u64> {
    let secret: [u8; 4] = key.secret.as_ref().try_into().ok()?;
    Some(session_map_key(key.pid, u32::from_be_bytes(secret)))
}

impl CancelRegistry {
    /// Remembers that `backend` issued `key`, until the registration is dropped.
    pub fn register(&self, key: CancelKey, backend: Backend) -> Registration {
        self.register_moved(key.clone(), backend, key)
    }

    /// Remembers that the client holding `key` now runs its session on `backend`, whose key is
    /// `server_key` (a read-write session moved to a new leader), until the registration is dropped.
    pub fn register_moved(
        &self,
        key: CancelKey,
        backend: Backend,
        server_key: CancelKey,
    ) -> Registration {
        lock(&self.backends).insert(key.clone(), (backend.clone(), server_key));
        Registration {
            backends: self.backends.clone(),
            key,
            backend,
        }
    }

    /// Issues a key of the proxy's own for an auto-port session (unpredictable: the secret comes
    /// from a hasher seeded by the OS's random source), forwarding its cancels through `session`.
    /// Its pid has bit 30 set, far above any real pid (Linux's `pid_max` is at most 2^22), so it
    /// never shadows a server's key.
    pub fn register_session(&self, session: SessionCancel) -> (CancelKey, SessionRegistration) {
        loop {
            let n = self.issued.fetch_add(1, Ordering::Relaxed);
            let r = self.hasher.hash_one(n);
            let pid = (r >> 33) as i32 | 1 << 30;
            let secret = r as u32;
            let map_key = session_map_key(pid, secret);
            let mut sessions = lock(&self.sessions);
            if sessions.contains_key(&map_key) {
                continue;
            }
            sessions.insert(map_key, session);
            let key = CancelKey {
                pid,
                secret: Bytes::copy_from_slice(&secret.to_be_bytes()),
            };
            return (
                key,
                SessionRegistration {
                    sessions: self.sessions.clone(),
                    key: map_key,
                },
            );
        }
    }

    /// Where a cancel with `key` goes: the server and the key to send it, if the session is open
    /// (and, for an auto-port session, running on a server).
    pub fn lookup(&self, key: &CancelKey) -> Option<(Backend, CancelKey)> {
        if let Some(session) = session_key(key).and_then(|k| lock(&self.sessions).get(&k).cloned())
        {
            return session.get();
        }
        lock(&self.backends).get(key).cloned()
    }

    /// The open auto-port session the proxy gave PID `pid` (what `pg_cancel_backend(pid)` and
    /// `pg_terminate_backend(pid)` name: the PID without the secret). A scan of the open
    /// sessions: those statements are rare, and an index would cost every session memory.
    pub fn session_by_pid(&self, pid: i32) -> Option<SessionCancel> {
        if pid & 1 << 30 == 0 {
            return None;
        }
        lock(&self.sessions)
            .iter()
            .find(|(k, _)| (*k >> 32) as u32 == pid as u32)
            .map(|(_, s)| s.clone())
    }

    /// A slot for the leader's server connection `(backend, server_pid)`, in which the session
    /// running a unit there notes its client's PID ([`NotifierSlot::set`]): a notification that
    /// connection sends (its `NOTIFY`, delivered at commit, after the unit) is then shown to other
    /// clients with the PID that client knows as its own (see [`CancelRegistry::notifier_pid`]).
    /// Takes a lock once per server connection; the slot lives as long as the connection.
    pub fn notifier_slot(&self, backend: &Backend, server_pid: i32) -> NotifierSlot {
        let key = self.server_key(backend, server_pid);
        let pid = Arc::new(AtomicI32::new(0));
        {
            let mut notifiers = lock(&self.notifiers);
            // A new connection with a closed one's PID: the closed one's client is history.
            notifiers.closed.remove(&key);
            notifiers.open.insert(key, pid.clone());
        }
        NotifierSlot {
            pid,
            notifiers: self.notifiers.clone(),
            key,
        }
    }

    /// The PID the proxy gave the auto-port client whose unit last ran on `backend`'s server
    /// process `server_pid`, if any: what a NotificationResponse from that process should carry
    /// for the clients of this proxy. Another session taking that pooled connection between the
    /// notifier's commit and the delivery would be named instead (a window of microseconds).
    pub fn notifier_pid(&self, backend: &Backend, server_pid: i32) -> Option<i32> {
        let key = self.server_key(backend, server_pid);
        let notifiers = lock(&self.notifiers);
        match notifiers.open.get(&key) {
            Some(p) => Some(p.load(Ordering::Relaxed)).filter(|&pid| pid != 0),
            None => notifiers.closed.get(&key).copied(),
        }
    }

    /// The key of server process `server_pid` of `backend` in the notifier map.
    fn server_key(&self, backend: &Backend, server_pid: i32) -> (u64, i32) {
        (
            self.hasher.hash_one((&backend.host(), backend.port())),
            server_pid,
        )
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.backends).len() + lock(&self.sessions).len()
    }
}

impl Registration {
    /// The key the client holds.
    pub fn key(&self) -> &CancelKey {
        &self.key
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut backends = lock(&self.backends);
        // Only our own entry: two backends could (very rarely) issue the same key.
        if backends.get(&self.key).map(|(b, _)| b) == Some(&self.backend) {
            backends.remove(&self.key);
        }
    }
}

impl SessionRegistration {
    /// The PID of the key the proxy issued (what the client got in BackendKeyData).
    pub fn pid(&self) -> i32 {
        (self.key >> 32) as u32 as i32
    }
}

impl Drop for SessionRegistration {
    fn drop(&mut self) {
        // Issued keys are unique among the open sessions: the entry is ours.
        lock(&self.sessions).remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn key(pid: i32, secret: u32) -> CancelKey {
        CancelKey::new(pid, Bytes::copy_from_slice(&secret.to_be_bytes())).unwrap()
    }

    fn backend(name: &str) -> Backend {
        Backend::new(name, "127.0.0.1", 5432)
    }

    #[test]
    fn keys_route_to_their_backend_while_registered() {
        let reg = CancelRegistry::default();
        let r1 = reg.register(key(10, 1), backend("a"));
        let _r2 = reg.register(key(10, 2), backend("b"));
        assert_eq!(reg.lookup(&key(10, 1)), Some((backend("a"), key(10, 1))));
        assert_eq!(reg.lookup(&key(10, 2)), Some((backend("b"), key(10, 2))));
        assert_eq!(reg.lookup(&key(10, 3)), None, "the secret must match");
        drop(r1);
        assert_eq!(reg.lookup(&key(10, 1)), None);
        assert_eq!(reg.len(), 1);
    }

    #[test]
    fn a_stale_registration_does_not_remove_a_newer_one() {
        let reg = CancelRegistry::default();
        let old = reg.register(key(7, 7), backend("a"));
        let _new = reg.register(key(7, 7), backend("b"));
        drop(old);
        assert_eq!(reg.lookup(&key(7, 7)), Some((backend("b"), key(7, 7))));
    }

    #[test]
    fn session_keys_are_distinct_and_follow_the_current_server() {
        let reg = CancelRegistry::default();
        let clients = Arc::new(crate::clients::Clients::default());
        let peer = "127.0.0.1:5555".parse().unwrap();
        let (a, b) = (
            clients.register(crate::metrics::ListenerKind::Auto, peer),
            clients.register(crate::metrics::ListenerKind::Auto, peer),
        );
        let session = SessionCancel::new(a.info.clone());
        let (k1, r1) = reg.register_session(session.clone());
        let (k2, _r2) = reg.register_session(SessionCancel::new(b.info.clone()));
        assert_ne!(k1, k2);
        assert!(k1.pid > 0 && k1.secret.len() == 4);
        assert_eq!(r1.pid(), k1.pid);
        assert_eq!(reg.lookup(&k1), None, "not on a server yet");
        session.set(Some((&backend("a"), &key(99, 5))));
        assert_eq!(reg.lookup(&k1), Some((backend("a"), key(99, 5))));
        session.set(None);
        assert_eq!(reg.lookup(&k1), None, "between units");
        session.set(Some((&backend("a"), &key(98, 6))));
        assert_eq!(
            reg.lookup(&k1),
            Some((backend("a"), key(98, 6))),
            "another connection"
        );
        session.set(Some((&backend("b"), &key(97, 7))));
        assert_eq!(
            reg.lookup(&k1),
            Some((backend("b"), key(97, 7))),
            "another server"
        );
        session.clear();
        assert_eq!(reg.lookup(&k1), None, "parked");
        session.set(Some((&backend("a"), &key(99, 5))));
        // `pg_cancel_backend(pid)` names the session by its PID alone.
        let found = reg.session_by_pid(k1.pid).expect("open");
        assert_eq!(found.client().id, a.info.id);
        assert_eq!(reg.session_by_pid(k2.pid).unwrap().client().id, b.info.id);
        assert!(reg.session_by_pid(k1.pid ^ 1).is_none() || k1.pid ^ 1 == k2.pid);
        assert!(reg.session_by_pid(4242).is_none(), "a server's PID");
        drop(r1);
        assert_eq!(reg.lookup(&k1), None);
        assert!(reg.session_by_pid(k1.pid).is_none(), "closed");
    }

    #[test]
    fn notifications_name_the_client_whose_unit_last_ran_on_the_connection() {
        let reg = CancelRegistry::default();
        assert_eq!(reg.notifier_pid(&backend("a"), 100), None);
        let slot = reg.notifier_slot(&backend("a"), 100);
        assert_eq!(reg.notifier_pid(&backend("a"), 100), None, "no unit yet");
        slot.set(1 << 30 | 7);
        assert_eq!(reg.notifier_pid(&backend("a"), 100), Some(1 << 30 | 7));
        slot.set(1 << 30 | 8);
        assert_eq!(reg.notifier_pid(&backend("a"), 100), Some(1 << 30 | 8));
        let other_port = Backend::new("a", "127.0.0.1", 5433);
        assert_eq!(reg.notifier_pid(&other_port, 100), None, "another server");
        assert_eq!(
            reg.notifier_pid(&backend("a"), 101),
            None,
            "another process"
        );
        // A new connection with the same server PID (a restarted server) replaces the entry, and
        // the old connection closing leaves the new one's.
        let newer = reg.notifier_slot(&backend("a"), 100);
        newer.set(1 << 30 | 9);
        drop(slot);
        assert_eq!(reg.notifier_pid(&backend("a"), 100), Some(1 << 30 | 9));
        // Closed, its last client is remembered: a notifier that disconnects right after its
        // NOTIFY closes the connection before the listeners read the notification.
        drop(newer);
        assert_eq!(
            reg.notifier_pid(&backend("a"), 100),
            Some(1 << 30 | 9),
            "closed"
        );
        // A new connection with that PID forgets it.
        let reused = reg.notifier_slot(&backend("a"), 100);
        assert_eq!(
            reg.notifier_pid(&backend("a"), 100),
            None,
            "reused, no unit yet"
        );
        drop(reused);
        assert_eq!(reg.notifier_pid(&backend("a"), 100), None, "closed unused");
        // Closed connections are remembered up to a bound.
        for pid in 0..(CLOSED_NOTIFIERS as i32 + 10) {
            reg.notifier_slot(&backend("b"), 1000 + pid)
                .set(1 << 30 | pid);
        }
        assert_eq!(reg.notifier_pid(&backend("b"), 1000), None, "evicted");
        let last = 1000 + CLOSED_NOTIFIERS as i32 + 9;
        assert!(reg.notifier_pid(&backend("b"), last).is_some());
        assert!(lock(&reg.notifiers).closed.len() <= CLOSED_NOTIFIERS);
    }
}
