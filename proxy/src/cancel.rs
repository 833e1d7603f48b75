//! Routes CancelRequests: which backend issued which `(pid, secret)`.
//!
//! A client's CancelRequest arrives on a new connection that names no database, only the key the
//! server sent in BackendKeyData. Each relayed session registers that key with its backend while it is
//! open; a CancelRequest with a known key is forwarded to that backend, an unknown one is dropped (as
//! PostgreSQL does, without an answer).
//!
//! An auto-port session talks to several servers, so the proxy gives its client a key of its own
//! ([`CancelRegistry::register_session`]) and forwards a cancel to whichever server runs the
//! session's current transaction, with that server's key ([`SessionCancel`]).

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use praetor_protocol::CancelKey;

use crate::topology::Backend;

/// Where a registered key's cancel goes.
#[derive(Clone)]
enum Target {
    /// The server that issued the key.
    Backend(Backend),
    /// An auto-port session: its current server and that server's key.
    Session(SessionCancel),
}

impl PartialEq for Target {
    fn eq(&self, other: &Target) -> bool {
        match (self, other) {
            (Target::Backend(a), Target::Backend(b)) => a == b,
            (Target::Session(a), Target::Session(b)) => Arc::ptr_eq(&a.0, &b.0),
            _ => false,
        }
    }
}

/// The server running an auto-port session's current transaction, and its cancel key.
#[derive(Clone, Default)]
pub(crate) struct SessionCancel(Arc<Mutex<Option<(Backend, CancelKey)>>>);

impl SessionCancel {
    /// The session now runs on `backend`, whose key is `key` (`None`: on no server).
    pub fn set(&self, current: Option<(Backend, CancelKey)>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = current;
    }

    fn get(&self) -> Option<(Backend, CancelKey)> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

type Keys = HashMap<CancelKey, Target>;

/// The keys of the open sessions.
#[derive(Clone, Default)]
pub(crate) struct CancelRegistry {
    keys: Arc<Mutex<Keys>>,
    issued: Arc<AtomicU64>,
    hasher: Arc<RandomState>,
}

/// A registered key; dropping it unregisters the key.
pub(crate) struct Registration {
    keys: Arc<Mutex<Keys>>,
    key: CancelKey,
    target: Target,
}

fn lock(m: &Mutex<Keys>) -> MutexGuard<'_, Keys> {
    // Every update is one map operation: a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CancelRegistry {
    /// Remembers that `backend` issued `key`, until the registration is dropped.
    pub fn register(&self, key: CancelKey, backend: Backend) -> Registration {
        let target = Target::Backend(backend);
        lock(&self.keys).insert(key.clone(), target.clone());
        Registration {
            keys: self.keys.clone(),
            key,
            target,
        }
    }

    /// Issues a key of the proxy's own for an auto-port session (unpredictable: the secret comes
    /// from a hasher seeded by the OS's random source), forwarding its cancels through `session`.
    pub fn register_session(&self, session: SessionCancel) -> (CancelKey, Registration) {
        loop {
            let n = self.issued.fetch_add(1, Ordering::Relaxed);
            let r = self.hasher.hash_one(n);
            let pid = (r >> 33) as i32 | 1 << 30; // positive, far from real pids
            let secret = Bytes::copy_from_slice(&(r as u32).to_be_bytes());
            let key = CancelKey { pid, secret };
            let mut keys = lock(&self.keys);
            if keys.contains_key(&key) {
                continue;
            }
            let target = Target::Session(session.clone());
            keys.insert(key.clone(), target.clone());
            return (
                key.clone(),
                Registration {
                    keys: self.keys.clone(),
                    key,
                    target,
                },
            );
        }
    }

    /// Where a cancel with `key` goes: the server and the key to send it, if the session is open
    /// (and, for an auto-port session, running on a server).
    pub fn lookup(&self, key: &CancelKey) -> Option<(Backend, CancelKey)> {
        let target = lock(&self.keys).get(key).cloned()?;
        match target {
            Target::Backend(b) => Some((b, key.clone())),
            Target::Session(s) => s.get(),
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.keys).len()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut keys = lock(&self.keys);
        // Only our own entry: two backends could (very rarely) issue the same key.
        if keys.get(&self.key) == Some(&self.target) {
            keys.remove(&self.key);
        }
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
        Backend {
            member: name.into(),
            host: "127.0.0.1".into(),
            port: 5432,
        }
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
        let session = SessionCancel::default();
        let (k1, r1) = reg.register_session(session.clone());
        let (k2, _r2) = reg.register_session(SessionCancel::default());
        assert_ne!(k1, k2);
        assert!(k1.pid > 0 && k1.secret.len() == 4);
        assert_eq!(reg.lookup(&k1), None, "not on a server yet");
        session.set(Some((backend("a"), key(99, 5))));
        assert_eq!(reg.lookup(&k1), Some((backend("a"), key(99, 5))));
        drop(r1);
        assert_eq!(reg.lookup(&k1), None);
    }
}
