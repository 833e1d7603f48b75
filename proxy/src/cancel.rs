//! Routes CancelRequests: which backend issued which `(pid, secret)`.
//!
//! A client's CancelRequest arrives on a new connection that names no database, only the key the
//! server sent in BackendKeyData. Each relayed session registers that key with its backend while it is
//! open; a CancelRequest with a known key is forwarded to that backend, an unknown one is dropped (as
//! PostgreSQL does, without an answer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use praetor_protocol::CancelKey;

use crate::topology::Backend;

/// The keys of the open sessions.
#[derive(Clone, Default)]
pub(crate) struct CancelRegistry {
    keys: Arc<Mutex<HashMap<CancelKey, Backend>>>,
}

/// A registered key; dropping it unregisters the key.
pub(crate) struct Registration {
    keys: Arc<Mutex<HashMap<CancelKey, Backend>>>,
    key: CancelKey,
    backend: Backend,
}

fn lock(m: &Mutex<HashMap<CancelKey, Backend>>) -> MutexGuard<'_, HashMap<CancelKey, Backend>> {
    // Every update is one map operation: a poisoned lock still holds consistent data.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CancelRegistry {
    /// Remembers that `backend` issued `key`, until the registration is dropped.
    pub fn register(&self, key: CancelKey, backend: Backend) -> Registration {
        lock(&self.keys).insert(key.clone(), backend.clone());
        Registration {
            keys: self.keys.clone(),
            key,
            backend,
        }
    }

    /// The backend that issued `key`, if its session is still open.
    pub fn lookup(&self, key: &CancelKey) -> Option<Backend> {
        lock(&self.keys).get(key).cloned()
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
        if keys.get(&self.key) == Some(&self.backend) {
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
        assert_eq!(reg.lookup(&key(10, 1)), Some(backend("a")));
        assert_eq!(reg.lookup(&key(10, 2)), Some(backend("b")));
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
        assert_eq!(reg.lookup(&key(7, 7)), Some(backend("b")));
    }
}
