//! The distributed configuration store (DCS) as Praetor sees it.
//!
//! The DCS is the single source of truth of a cluster: who holds the leader lock, which members exist
//! and how they are doing, the dynamic configuration, the timeline history, pending switchovers. Praetor
//! keeps Patroni's key layout under `/<namespace>/<scope>/` and Patroni's JSON values, so Patroni tools
//! read a Praetor cluster and vice versa.
//!
//! - [`keys`]: the key layout ([`Keys`]) and which key a path is ([`KeyKind`]).
//! - [`model`]: the values ([`MemberData`], [`Failover`], [`HistoryEntry`], [`Status`], [`SyncState`]) and
//!   the whole-cluster view ([`Cluster`]) the agent decides from.
//! - [`Dcs`]: the trait every backend implements; every write is compare-and-set ([`Expect`]).
//! - [`summary`]: the per-member rows of `GET /cluster` and `ctl list`.
//! - [`etcd`]: the etcd v3 backend (leases for `leader` and `members/*`).
//! - [`zookeeper`]: the ZooKeeper backend (ephemeral znodes of a session for `leader` and `members/*`).
//! - [`connect`]: opens the backend a configuration names.
#![warn(missing_docs)]

mod codec;
pub mod error;
pub mod etcd;
pub mod keys;
pub mod model;
pub mod summary;
pub mod zookeeper;

use async_trait::async_trait;
use tokio::sync::broadcast;

pub use error::DcsError;
pub use keys::{KeyKind, Keys};
pub use model::*;

/// The precondition of a compare-and-set write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key must not exist (create-if-absent).
    Absent,
    /// The key must exist with exactly this [`Version`] (as read in a [`Cluster`]).
    Version(Version),
}

/// A change seen by a DCS watch. Consumers reload the cluster view; the kind lets them react at once
/// to what matters (the agent wakes its loop on [`KeyKind::Leader`], the proxy re-routes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcsEvent {
    /// Which key changed. [`KeyKind::Resync`] after the watch reconnected: anything may have changed.
    pub key: KeyKind,
}

/// Who is talking to the DCS: the cluster and, for an agent, the member (which owns `members/<name>` and
/// may hold `leader`).
#[derive(Debug, Clone)]
pub struct DcsIdentity {
    /// `/<namespace>/` (normalized, with slashes).
    pub namespace: String,
    /// Cluster name.
    pub scope: String,
    /// Member name; `None` for read-mostly clients (proxy, ctl), which cannot take the leader lock.
    pub member: Option<String>,
    /// Lease / session TTL in seconds for `leader` and `members/<name>`.
    pub ttl_secs: u32,
    /// Seconds one DCS request may take before it fails with [`DcsError::Unavailable`].
    pub request_timeout_secs: u32,
}

/// A DCS backend. Implementations: [`etcd::EtcdDcs`], [`zookeeper::ZooKeeperDcs`].
///
/// Rules every backend keeps (design.md, rule 2):
/// - every write is compare-and-set: on a failed precondition the call returns
///   [`DcsError::CasConflict`] and changes nothing;
/// - `leader` and `members/<name>` live on this client's lease (etcd) or session (ZooKeeper) of
///   `ttl_secs`, so they vanish when the holder stops renewing;
/// - only the holder renews or releases `leader`, by compare-and-set on its own name;
/// - a request that does not complete within `request_timeout_secs` fails with
///   [`DcsError::Unavailable`].
#[async_trait]
pub trait Dcs: Send + Sync {
    /// Reads the whole cluster under `/<namespace>/<scope>/` in one consistent read.
    async fn load(&self) -> Result<Cluster, DcsError>;

    /// Creates `initialize` with `value` if it does not exist. `Ok(true)`: this call created it (won the
    /// bootstrap race); `Ok(false)`: it already existed.
    async fn create_initialize(&self, value: &str) -> Result<bool, DcsError>;

    /// Replaces `initialize` by `value` if it currently holds `expected` (the bootstrap winner writes the
    /// database system identifier over the empty placeholder). Conflict: [`DcsError::CasConflict`].
    async fn update_initialize(&self, expected: &str, value: &str) -> Result<(), DcsError>;

    /// Deletes `initialize` if it still holds `expected` (a failed bootstrap gives the race back).
    async fn cancel_initialize(&self, expected: &str) -> Result<(), DcsError>;

    /// Creates `leader` = this member's name on this client's lease, only if absent. `Ok(true)`: this
    /// member now holds the lock. Requires [`DcsIdentity::member`].
    async fn acquire_leader(&self) -> Result<bool, DcsError>;

    /// Renews the lock: refreshes the lease and rewrites `leader` if it still names this member.
    /// `Ok(false)`: the lock is held by someone else or gone (the caller must demote).
    async fn renew_leader(&self) -> Result<bool, DcsError>;

    /// Deletes `leader` if it names this member. `Ok(false)`: it did not.
    async fn release_leader(&self) -> Result<bool, DcsError>;

    /// Writes `members/<name>` on this client's lease (refreshing the lease).
    async fn touch_member(&self, data: &MemberData) -> Result<(), DcsError>;

    /// Deletes `members/<name>` of this member.
    async fn delete_member(&self) -> Result<(), DcsError>;

    /// Writes the dynamic configuration (`config`, JSON) under `expect`.
    async fn set_config(&self, value: &serde_json::Value, expect: Expect) -> Result<(), DcsError>;

    /// Writes `failover` under `expect`.
    async fn set_failover(&self, value: &Failover, expect: Expect) -> Result<(), DcsError>;

    /// Deletes `failover` if it still has `version`.
    async fn delete_failover(&self, version: Version) -> Result<(), DcsError>;

    /// Writes `history` under `expect`.
    async fn set_history(&self, value: &[HistoryEntry], expect: Expect) -> Result<(), DcsError>;

    /// Writes `status` (leader optime, slots), only while this member holds `leader`.
    async fn set_status(&self, value: &Status) -> Result<(), DcsError>;

    /// Writes `failsafe` (member name → api_url), only while this member holds `leader`; an empty map
    /// deletes the key (failsafe mode off).
    async fn set_failsafe(
        &self,
        members: &std::collections::BTreeMap<String, String>,
    ) -> Result<(), DcsError>;

    /// Writes `sync` under `expect`.
    async fn set_sync(&self, value: &SyncState, expect: Expect) -> Result<(), DcsError>;

    /// Writes `praetor/proxies/<id>` on this client's lease/session (a proxy publishing its route).
    async fn set_proxy_state(&self, id: &str, state: &ProxyState) -> Result<(), DcsError>;

    /// Changes the TTL of the lease/session used from now on (dynamic `ttl` changed). etcd: the next
    /// lease refresh moves this member's keys to a lease of the new TTL; ZooKeeper: the next session
    /// gets it (a live session's timeout cannot change, and ending it would drop the lock).
    async fn set_ttl(&self, ttl_secs: u32) -> Result<(), DcsError>;

    /// The TTL the server granted to this client's current lease (etcd) or session (ZooKeeper): what
    /// `leader`, `members/<name>` and `praetor/proxies/<id>` of this client actually live on after its
    /// last contact. It differs from the `ttl_secs` asked for when the server bounds it: ZooKeeper
    /// clamps a session timeout to `minSessionTimeout..maxSessionTimeout` (by default 2..20
    /// tickTime), etcd raises a lease TTL to its minimum. `None` before the first lease or session
    /// (and for backends that do not know). No default: a wrapper that forgot to forward it made the
    /// agent wait out `ttl` for unresponsive proxies where ZooKeeper had granted a shorter session.
    fn granted_ttl(&self) -> Option<std::time::Duration>;
    /// Subscribes to changes under the cluster prefix. The backend keeps one watch running, reconnecting
    /// after errors and sending [`KeyKind::Resync`] when it does.
    fn watch(&self) -> broadcast::Receiver<DcsEvent>;

    /// Deletes every key of the cluster under `/<namespace>/<scope>/` (`ctl remove`, after the
    /// operator confirmed). Backends without it answer [`DcsError::Unsupported`].
    async fn delete_cluster(&self) -> Result<(), DcsError> {
        Err(DcsError::Unsupported(
            "removing a cluster is not supported by this DCS backend".into(),
        ))
    }

    /// Revokes this client's lease/session (its `leader` and `members/<name>` vanish at once). Used on
    /// clean shutdown after PostgreSQL is stopped.
    async fn close(&self) -> Result<(), DcsError>;

    /// Gives up this client's lease (etcd) or session (ZooKeeper) while the client goes on: the
    /// keys on it, `leader` among them, vanish at once when the DCS takes the revoke or close, and
    /// otherwise when it expires (at most the granted ttl later), since nothing refreshes it again.
    /// The next call that needs one gets a new lease or session and writes `members/<name>` (and
    /// the proxy keys) again on it, never `leader`. For a leader whose renewals lapsed and whose
    /// releases keep failing (the agent's `ha::lapsed`): on ZooKeeper the slow link's pings would
    /// keep the session, and the lock with it, alive for ever; on etcd each `touch_member`
    /// refreshes the lease that `leader` lives on. Errors: [`DcsError::Unavailable`] when the
    /// revoke or close was not confirmed (the lease or session is given up all the same). The
    /// default, for clients without a lease of their own (tests' fakes), does nothing.
    async fn drop_session(&self) -> Result<(), DcsError> {
        Ok(())
    }
}

/// Opens the backend named by `endpoints` for `identity`.
///
/// Errors: [`DcsError::Unavailable`] when no endpoint answers within the request timeout.
pub async fn connect(
    endpoints: &praetor_config::DcsEndpoints,
    identity: DcsIdentity,
) -> Result<std::sync::Arc<dyn Dcs>, DcsError> {
    connect_secured(endpoints, identity, &Default::default()).await
}

/// Like [`connect`], with etcd's authentication and TLS settings (`etcd3.{username,password,cacert,
/// cert,key}`, [`praetor_config::Config::etcd_security`]); ZooKeeper ignores them (its TLS and
/// authentication keys are refused while parsing).
pub async fn connect_secured(
    endpoints: &praetor_config::DcsEndpoints,
    identity: DcsIdentity,
    security: &praetor_config::EtcdSecurity,
) -> Result<std::sync::Arc<dyn Dcs>, DcsError> {
    match endpoints {
        praetor_config::DcsEndpoints::Etcd(urls) => Ok(std::sync::Arc::new(
            etcd::EtcdDcs::connect_secured(urls, identity, security).await?,
        )),
        praetor_config::DcsEndpoints::ZooKeeper(hosts) => Ok(std::sync::Arc::new(
            zookeeper::ZooKeeperDcs::connect(hosts, identity).await?,
        )),
    }
}

/// Like [`connect_secured`], waiting out an unavailable DCS: while no endpoint answers
/// ([`DcsError::is_unavailable`]), logs a warning and tries again every `pace`, until `cancel`
/// fires (then `Ok(None)`, also in the middle of an attempt). A process started during a DCS
/// outage (a node rebooted while the DCS has no quorum, a proxy restarted during a partition)
/// comes up once the DCS answers, as Patroni does, instead of exiting.
///
/// Errors: any other [`DcsError`] (a refused login, a bad certificate), at once.
pub async fn connect_when_available(
    endpoints: &praetor_config::DcsEndpoints,
    identity: DcsIdentity,
    security: &praetor_config::EtcdSecurity,
    pace: std::time::Duration,
    cancel: &tokio_util::sync::CancellationToken,
) -> Result<Option<std::sync::Arc<dyn Dcs>>, DcsError> {
    loop {
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            r = connect_secured(endpoints, identity.clone(), security) => r,
        };
        match attempt {
            Ok(dcs) => return Ok(Some(dcs)),
            Err(e) if e.is_unavailable() => {
                tracing::warn!("waiting for the DCS: {e} (retrying in {pace:?})");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(pace) => {}
        }
    }
}
