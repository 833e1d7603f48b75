//! The ZooKeeper backend: Patroni's key layout as znodes, with `leader`, `members/<name>` and
//! `praetor/proxies/<id>` ephemeral on this client's session.
//!
//! How the [`Dcs`] operations map onto ZooKeeper (Patroni's `zookeeper` scheme):
//! - one session per [`ZooKeeperDcs`], requested with a timeout of `ttl_secs`. The client library
//!   pings it in the background, so the ephemeral znodes live exactly as long as the session: a holder
//!   that dies, or is cut off from ZooKeeper for the session timeout, loses them as an unrenewed etcd
//!   lease expires. Session expiry is lock loss;
//! - after a session ended (expired, or closed by [`Dcs::close`]) the next operation opens a new one
//!   and writes `members/<name>` and the proxy keys again on it, never `leader`: a lost lock stays lost,
//!   [`Dcs::renew_leader`] answers `false` and the agent demotes as it does when an etcd lease expired;
//! - every write is conditional on the znode version: [`Expect::Absent`] creates (failing when the
//!   znode exists), [`Expect::Version`] sets the data only at that znode version; writes conditional on
//!   a value (the lock, `initialize`, `status` by the lock holder) read the znode and write at the
//!   version read. A failed condition is [`DcsError::CasConflict`]. [`Versioned::version`] is the znode
//!   version, which restarts at 0 when a znode is deleted and created again;
//! - [`Dcs::load`] is two multi-reads: the fixed keys with the member and proxy lists, then each
//!   member's and proxy's value;
//! - one persistent recursive watch on the cluster prefix (ZooKeeper 3.6 and later) feeds
//!   [`Dcs::watch`]; it is added again after every reconnection, followed by [`KeyKind::Resync`]
//!   (changes made while disconnected are not replayed). Older servers get one-shot watches on `leader`, `failover`, `config`, `sync`,
//!   `initialize` and the member list, armed again after each event (member value changes are then
//!   not reported).
//!
//! Time. ZooKeeper grants a session timeout within its `minSessionTimeout`..`maxSessionTimeout`, by
//! default 2 × `tickTime` .. 20 × `tickTime` (4..40 s with the default `tickTime` of 2 s), and the
//! nearest bound to a ttl outside them (logged as a warning). The client library gives up a silent
//! connection after 2/5 of the timeout and tries the other servers; it declares the session expired
//! itself 7/5 of the timeout after the last answer. A ZooKeeper restart keeps the sessions: a client
//! that reconnects within that time keeps its session and its ephemeral znodes.
//!
//! Every operation is bounded by `request_timeout_secs` ([`DcsError::Unavailable`] after it) and waits
//! meanwhile for a lost connection to come back. Requests are only sent on a connected session, so an
//! operation given up on while ZooKeeper is unreachable is not sent when it comes back (one already
//! sent when the connection broke may still have been applied, as with any DCS).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::{select_all, BoxFuture, FutureExt};
use tokio::sync::{broadcast, oneshot, watch, Mutex, MutexGuard};
use tokio::time::{timeout_at, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use crate::codec::{decode_cluster, to_json};
use crate::{
    Cluster, Dcs, DcsError, DcsEvent, DcsIdentity, Expect, Failover, HistoryEntry, KeyKind, Keys,
    MemberData, ProxyState, Status, SyncState, Version,
};

/// How many watch events a slow subscriber may fall behind before it sees
/// [`broadcast::error::RecvError::Lagged`].
const EVENT_CAPACITY: usize = 1024;
/// First wait before re-opening a broken watch.
const WATCH_BACKOFF_MIN: Duration = Duration::from_millis(200);
/// Longest wait between attempts to re-open a watch.
const WATCH_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often an ephemeral znode that changes under a write is read and written again.
const EPHEMERAL_WRITE_ATTEMPTS: usize = 4;

/// The ZooKeeper backend of [`Dcs`].
///
/// Holds the session (opened again after it ended) and the watch task. Dropping it stops the watch
/// task and the connection but leaves the session to expire after its timeout (the ephemeral znodes
/// with it), as a dropped [`crate::etcd::EtcdDcs`] leaves its lease; [`Dcs::close`] ends it at once.
pub struct ZooKeeperDcs {
    shared: Arc<Shared>,
    watch_cancel: CancellationToken,
}

/// How change notifications are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatchStyle {
    /// One persistent recursive watch on the prefix; one-shot watches when the server has no
    /// persistent watches (before 3.6).
    Auto,
    /// One-shot watches only (tests the fallback against a server that has persistent watches).
    #[cfg_attr(not(test), allow(dead_code))]
    OneShot,
}

/// What the operations and the watch task share.
struct Shared {
    /// `host:port,host:port`.
    connect_string: String,
    keys: Keys,
    member: Option<String>,
    request_timeout: Duration,
    /// The session timeout (seconds) new sessions ask for; changed by [`Dcs::set_ttl`].
    ttl_secs: AtomicU32,
    /// The timeout (ms) the servers granted the last session opened; 0 before the first.
    granted_ms: AtomicU64,
    /// Serializes opening and closing sessions; held only briefly otherwise.
    slot: Mutex<SessionSlot>,
    /// Counts the sessions opened; the watch task waits on it after [`Dcs::close`].
    opened: watch::Sender<u64>,
    events: broadcast::Sender<DcsEvent>,
    watch_style: WatchStyle,
}

/// The current session and what must be written again on a new one.
#[derive(Default)]
struct SessionSlot {
    /// The session's client; `None` before the first session and after [`Dcs::close`].
    client: Option<zk::Client>,
    /// Set by [`Dcs::close`] and cleared when an operation opens a new session: the watch task does
    /// not open one meanwhile (a closing agent must not leave a fresh session behind).
    closed: bool,
    /// The last value written to `members/<name>`.
    member_json: Option<String>,
    /// The last value written to each `praetor/proxies/<id>`.
    proxies: BTreeMap<String, String>,
}

/// Why an attempt failed, keeping apart the failures an operation recovers from.
#[derive(Debug)]
enum Failure {
    /// The session is over (expired, moved, closed): the operation may run again on a new one.
    SessionEnded(String),
    /// [`Dcs::close`] closed the session and nothing opened another (only the watch task asks).
    ClosedByUs,
    /// Anything else.
    Dcs(DcsError),
}

impl From<DcsError> for Failure {
    fn from(e: DcsError) -> Failure {
        Failure::Dcs(e)
    }
}

impl Failure {
    /// The error reported for operation `what`.
    fn into_dcs(self, what: &str) -> DcsError {
        match self {
            Failure::SessionEnded(m) => DcsError::Unavailable(format!("{what}: {m}")),
            Failure::ClosedByUs => {
                DcsError::Unavailable(format!("{what}: the ZooKeeper session was closed"))
            }
            Failure::Dcs(DcsError::Unavailable(m)) => DcsError::Unavailable(format!("{what}: {m}")),
            Failure::Dcs(e) => e,
        }
    }
}

/// Converts a ZooKeeper error into a [`Failure`] (callers handle the errors that mean a failed
/// condition first).
fn failure(e: zk::Error) -> Failure {
    match e {
        zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::ClientClosed => {
            Failure::SessionEnded(e.to_string())
        }
        e => Failure::Dcs(DcsError::Unavailable(e.to_string())),
    }
}

/// A failed compare-and-set on `key`.
fn conflict(key: &str) -> Failure {
    Failure::Dcs(DcsError::CasConflict {
        key: key.to_string(),
    })
}

/// The znode version `v` names; `None` when no znode can have it (znode versions are `i32`).
fn znode_version(v: Version) -> Option<i32> {
    i32::try_from(v).ok()
}

/// The znode path of a key prefix (`/service/pg/members/` → `/service/pg/members`).
fn dir(prefix: &str) -> &str {
    prefix.strip_suffix('/').unwrap_or(prefix)
}

/// The library's connect string from configured hosts (`host:port` each, or comma-separated lists).
fn connect_string(hosts: &[String]) -> Result<String, DcsError> {
    let parts: Vec<&str> = hosts
        .iter()
        .flat_map(|h| h.split(','))
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .collect();
    if parts.is_empty() {
        return Err(DcsError::Unavailable(
            "no ZooKeeper hosts configured".into(),
        ));
    }
    Ok(parts.join(","))
}

/// The wait after `current` before the next attempt to open the watch: doubling, capped at
/// [`WATCH_BACKOFF_MAX`].
fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX)
}

/// The fixed keys [`Dcs::load`] reads (besides the member and proxy lists).
fn fixed_keys(keys: &Keys) -> [String; 8] {
    [
        keys.initialize(),
        keys.config(),
        keys.leader(),
        keys.history(),
        keys.sync(),
        keys.failover(),
        keys.status(),
        keys.failsafe(),
    ]
}

/// Creates `path` holding `data`, creating missing (persistent, empty) parents first.
async fn create(
    client: &zk::Client,
    path: &str,
    data: &[u8],
    mode: zk::CreateMode,
) -> Result<zk::Stat, zk::Error> {
    let options = mode.with_acls(zk::Acls::anyone_all());
    match client.create(path, data, &options).await {
        Err(zk::Error::NoNode) => {
            let parent = path
                .rsplit_once('/')
                .map(|(p, _)| p)
                .filter(|p| !p.is_empty())
                .ok_or(zk::Error::NoNode)?;
            let dir_options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
            client.mkdir(parent, &dir_options).await?;
            client
                .create(path, data, &options)
                .await
                .map(|(stat, _)| stat)
        }
        r => r.map(|(stat, _)| stat),
    }
}

/// Writes `data` at `path` as an ephemeral znode of `client`'s session: sets it when the session owns
/// it, creates it when absent, and replaces one left by another session (an expired session of this
/// client, or a stale persistent znode).
async fn upsert_ephemeral(client: &zk::Client, path: &str, data: &[u8]) -> Result<(), Failure> {
    let mine = client.session_id().0;
    for _ in 0..EPHEMERAL_WRITE_ATTEMPTS {
        match client.check_stat(path).await.map_err(failure)? {
            None => match create(client, path, data, zk::CreateMode::Ephemeral).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NodeExists) => continue,
                Err(e) => return Err(failure(e)),
            },
            Some(stat) if stat.ephemeral_owner == mine => {
                match client.set_data(path, data, Some(stat.version)).await {
                    Ok(_) => return Ok(()),
                    Err(zk::Error::BadVersion | zk::Error::NoNode) => continue,
                    Err(e) => return Err(failure(e)),
                }
            }
            Some(stat) => {
                info!(
                    path,
                    owner = %zk::SessionId(stat.ephemeral_owner),
                    session = %client.session_id(),
                    "replacing a znode of another ZooKeeper session"
                );
                match client.delete(path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::BadVersion | zk::Error::NoNode) => continue,
                    Err(e) => return Err(failure(e)),
                }
            }
        }
    }
    Err(conflict(path))
}

/// Writes `data` at `key` if `expect` holds ([`Expect::Absent`]: creates it).
async fn cas_put(
    client: &zk::Client,
    key: &str,
    data: &[u8],
    expect: Expect,
) -> Result<(), Failure> {
    match expect {
        Expect::Absent => match create(client, key, data, zk::CreateMode::Persistent).await {
            Ok(_) => Ok(()),
            Err(zk::Error::NodeExists) => Err(conflict(key)),
            Err(e) => Err(failure(e)),
        },
        Expect::Version(v) => {
            let Some(v) = znode_version(v) else {
                return Err(conflict(key));
            };
            match client.set_data(key, data, Some(v)).await {
                Ok(_) => Ok(()),
                Err(zk::Error::BadVersion | zk::Error::NoNode) => Err(conflict(key)),
                Err(e) => Err(failure(e)),
            }
        }
    }
}

/// The version of `key` when it holds exactly `expected`; `None` when it holds something else or
/// does not exist.
async fn version_if_value(
    client: &zk::Client,
    key: &str,
    expected: &[u8],
) -> Result<Option<i32>, Failure> {
    match client.get_data(key).await {
        Ok((data, stat)) => Ok((data == expected).then_some(stat.version)),
        Err(zk::Error::NoNode) => Ok(None),
        Err(e) => Err(failure(e)),
    }
}

/// Deletes `key` at `version`; a changed or vanished znode is a conflict.
async fn cas_delete(client: &zk::Client, key: &str, version: i32) -> Result<(), Failure> {
    match client.delete(key, Some(version)).await {
        Ok(()) => Ok(()),
        Err(zk::Error::BadVersion | zk::Error::NoNode) => Err(conflict(key)),
        Err(e) => Err(failure(e)),
    }
}

/// Deletes `root` and every znode under it, children before their parent.
async fn delete_tree(client: &zk::Client, root: &str) -> Result<(), Failure> {
    // Pre-order walk; deleting in reverse order removes children before parents.
    let mut found = Vec::new();
    let mut pending = vec![root.to_string()];
    while let Some(path) = pending.pop() {
        match client.list_children(&path).await {
            Ok(children) => {
                pending.extend(children.into_iter().map(|c| format!("{path}/{c}")));
                found.push(path);
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(failure(e)),
        }
    }
    for path in found.iter().rev() {
        match client.delete(path, None).await {
            Ok(()) | Err(zk::Error::NoNode) => {}
            Err(zk::Error::NotEmpty) => return Err(conflict(path)),
            Err(e) => return Err(failure(e)),
        }
    }
    Ok(())
}

/// One raw value read under the prefix: key, data, znode version.
type Entry = (String, Vec<u8>, Version);

/// Reads every key of the cluster with two multi-reads (one by one on servers before 3.6).
async fn read_cluster(client: &zk::Client, keys: &Keys) -> Result<Cluster, Failure> {
    let fixed = fixed_keys(keys);
    let lists = [keys.members(), keys.proxies()];
    let mut first = client.new_multi_reader();
    for key in &fixed {
        first.add_get_data(key).map_err(failure)?;
    }
    for list in &lists {
        first.add_get_children(dir(list)).map_err(failure)?;
    }
    let results = match first.commit().await {
        Ok(r) => r,
        Err(zk::Error::Unimplemented) => return read_cluster_one_by_one(client, keys).await,
        Err(e) => return Err(failure(e)),
    };
    let mut entries: Vec<Entry> = Vec::new();
    let mut listed: Vec<String> = Vec::new();
    for (i, result) in results.into_iter().enumerate() {
        match result {
            zk::MultiReadResult::Data { data, stat } => {
                if let Some(key) = fixed.get(i) {
                    entries.push((key.clone(), data, Version::from(stat.version)));
                }
            }
            zk::MultiReadResult::Children { children } => {
                if let Some(prefix) = i.checked_sub(fixed.len()).and_then(|j| lists.get(j)) {
                    listed.extend(children.into_iter().map(|c| format!("{prefix}{c}")));
                }
            }
            zk::MultiReadResult::Error {
                err: zk::Error::NoNode,
            } => {}
            zk::MultiReadResult::Error { err } => return Err(failure(err)),
            _ => {}
        }
    }
    if !listed.is_empty() {
        let mut second = client.new_multi_reader();
        for key in &listed {
            second.add_get_data(key).map_err(failure)?;
        }
        for (key, result) in listed
            .into_iter()
            .zip(second.commit().await.map_err(failure)?)
        {
            match result {
                zk::MultiReadResult::Data { data, stat } => {
                    entries.push((key, data, Version::from(stat.version)))
                }
                // Gone between the two reads.
                zk::MultiReadResult::Error {
                    err: zk::Error::NoNode,
                } => {}
                zk::MultiReadResult::Error { err } => return Err(failure(err)),
                _ => {}
            }
        }
    }
    Ok(decode(keys, &entries))
}

/// [`read_cluster`] for servers without multi-reads: one request per key.
async fn read_cluster_one_by_one(client: &zk::Client, keys: &Keys) -> Result<Cluster, Failure> {
    let mut paths: Vec<String> = fixed_keys(keys).into();
    for list in [keys.members(), keys.proxies()] {
        match client.list_children(dir(&list)).await {
            Ok(children) => paths.extend(children.into_iter().map(|c| format!("{list}{c}"))),
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(failure(e)),
        }
    }
    let reads = futures::future::join_all(paths.iter().map(|p| client.get_data(p))).await;
    let mut entries: Vec<Entry> = Vec::new();
    for (key, read) in paths.into_iter().zip(reads) {
        match read {
            Ok((data, stat)) => entries.push((key, data, Version::from(stat.version))),
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(failure(e)),
        }
    }
    Ok(decode(keys, &entries))
}

fn decode(keys: &Keys, entries: &[Entry]) -> Cluster {
    decode_cluster(
        keys,
        entries
            .iter()
            .map(|(k, v, version)| (k.as_bytes(), v.as_slice(), *version)),
    )
}

/// How long the client waits on a connection that answers nothing before it tries the next
/// one: half the request timeout (`retry_timeout` for an agent), at least 2 s. A server that
/// accepted the connection and never answers (ZooKeeper still starting after a restart, or a host
/// gone silent) is then left in time for a second attempt, at a server that answers, to fit in
/// the request timeout. zookeeper-client's own bound is 2/5 of the session timeout (24 s for a
/// `ttl` of 60), past `retry_timeout`: a leader whose session was reconnecting to a restarted
/// ZooKeeper hung for 24 s and demoted itself after a 4.6 s restart. (Patroni bounds its kazoo
/// connection attempts the same way, to `max(1, retry_timeout / 2)` s, and the wait for a reply to
/// `max(loop_wait - 2, 2)` s.) zookeeper-client also pings at 3/8 of it and drops a connection
/// silent for as long: a dead server is noticed within it too; the 2 s floor keeps a server's
/// short pause (a garbage collection) from dropping connections. It is ignored when over 3/5 of the
/// session timeout (the library's own bound is smaller then).
fn connection_timeout(request_timeout: Duration) -> Duration {
    (request_timeout / 2).max(Duration::from_secs(2))
}

impl Shared {
    /// The member name, for operations only an agent may perform.
    fn member_name(&self, what: &str) -> Result<&str, DcsError> {
        self.member.as_deref().ok_or_else(|| {
            DcsError::Unsupported(format!(
                "{what} needs a member name; this DCS client has none"
            ))
        })
    }

    fn timed_out(&self, what: &str) -> DcsError {
        DcsError::Unavailable(format!(
            "{what}: ZooKeeper ({}) did not answer within {:?}",
            self.connect_string, self.request_timeout
        ))
    }

    /// The session slot, waiting at most the request timeout for it.
    async fn lock_slot(&self) -> Result<MutexGuard<'_, SessionSlot>, DcsError> {
        tokio::time::timeout(self.request_timeout, self.slot.lock())
            .await
            .map_err(|_| self.timed_out("wait for the ZooKeeper session"))
    }

    /// Opens a new session asking for the current ttl as its timeout.
    async fn open_session(&self, deadline: Instant) -> Result<zk::Client, Failure> {
        let ttl = self.ttl_secs.load(Ordering::Relaxed);
        let requested = Duration::from_secs(u64::from(ttl));
        // Detached: dropping the client leaves the session to expire (see `close` for ending it).
        let connect = zk::Client::connector()
            .with_session_timeout(requested)
            .with_connection_timeout(connection_timeout(self.request_timeout))
            .with_detached()
            .connect(&self.connect_string);
        let client = match timeout_at(deadline, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return Err(DcsError::Unavailable(format!(
                    "open a session with ZooKeeper {}: {e}",
                    self.connect_string
                ))
                .into())
            }
            Err(_) => return Err(self.timed_out("open a ZooKeeper session").into()),
        };
        let granted = client.session_timeout();
        self.granted_ms
            .store(granted.as_millis() as u64, Ordering::Relaxed);
        if granted != requested {
            warn!(
                session = %client.session_id(),
                requested_ms = requested.as_millis() as u64,
                granted_ms = granted.as_millis() as u64,
                "ZooKeeper granted a session timeout other than ttl (servers bound it by \
                 minSessionTimeout..maxSessionTimeout, by default 2..20 tickTime)"
            );
        } else {
            info!(session = %client.session_id(), timeout_ms = granted.as_millis() as u64, "opened a ZooKeeper session");
        }
        Ok(client)
    }

    /// Writes the member and proxy values kept in `slot` as ephemeral znodes of `client`'s (new)
    /// session.
    async fn restore_ephemerals(
        &self,
        client: &zk::Client,
        slot: &SessionSlot,
    ) -> Result<(), Failure> {
        if let (Some(me), Some(json)) = (self.member.as_deref(), slot.member_json.as_deref()) {
            upsert_ephemeral(client, &self.keys.member(me), json.as_bytes()).await?;
        }
        for (id, json) in &slot.proxies {
            upsert_ephemeral(client, &self.keys.proxy(id), json.as_bytes()).await?;
        }
        Ok(())
    }

    /// The client of the live session, opening a new session (and writing the member and proxy keys
    /// on it) when there is none or the last one ended. After [`Dcs::close`], only when
    /// `reopen_closed`; otherwise [`Failure::ClosedByUs`].
    async fn session(&self, deadline: Instant, reopen_closed: bool) -> Result<zk::Client, Failure> {
        let mut slot = timeout_at(deadline, self.slot.lock())
            .await
            .map_err(|_| self.timed_out("wait for the ZooKeeper session"))?;
        if let Some(client) = &slot.client {
            let state = client.state();
            if !state.is_terminated() {
                return Ok(client.clone());
            }
            warn!(
                session = %client.session_id(),
                %state,
                "the ZooKeeper session ended and its ephemeral znodes (leader, member) with it; \
                 opening a new session"
            );
            slot.client = None;
        }
        if slot.closed && !reopen_closed {
            return Err(Failure::ClosedByUs);
        }
        let client = self.open_session(deadline).await?;
        slot.closed = false;
        match timeout_at(deadline, self.restore_ephemerals(&client, &slot)).await {
            Ok(Ok(())) => {}
            Ok(Err(f)) => warn!(error = %f.into_dcs("restore the member key"), "the member key is written again on the next touch"),
            Err(_) => warn!("cannot restore the member key within the request timeout; it is written again on the next touch"),
        }
        slot.client = Some(client.clone());
        self.opened.send_modify(|n| *n += 1);
        Ok(client)
    }

    /// Waits until `client` is connected, at most until `deadline`.
    async fn connected(
        &self,
        client: zk::Client,
        deadline: Instant,
    ) -> Result<zk::Client, Failure> {
        let mut states = client.state_watcher();
        let mut state = states.state();
        loop {
            match state {
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    return Ok(client)
                }
                zk::SessionState::Disconnected => {
                    match timeout_at(deadline, states.changed()).await {
                        Ok(s) => state = s,
                        Err(_) => {
                            return Err(DcsError::Unavailable(format!(
                                "not connected to ZooKeeper ({}) within {:?}",
                                self.connect_string, self.request_timeout
                            ))
                            .into())
                        }
                    }
                }
                ended => {
                    return Err(Failure::SessionEnded(format!(
                        "the ZooKeeper session {} is {ended}",
                        client.session_id()
                    )))
                }
            }
        }
    }

    /// Runs `op` on the connected session within the request timeout; when the session turns out to be
    /// over, once more on a new session.
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, DcsError>
    where
        F: Fn(zk::Client) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let deadline = Instant::now() + self.request_timeout;
        let mut retried = false;
        loop {
            let attempt = async {
                let client = self.session(deadline, true).await?;
                let client = self.connected(client, deadline).await?;
                op(client).await
            };
            match timeout_at(deadline, attempt).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(Failure::SessionEnded(message))) if !retried => {
                    debug!(what, %message, "the ZooKeeper session ended; trying on a new one");
                    retried = true;
                }
                Ok(Err(f)) => return Err(f.into_dcs(what)),
                Err(_) => return Err(self.timed_out(what)),
            }
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::SessionEnded(m) => write!(f, "session ended: {m}"),
            Failure::ClosedByUs => f.write_str("session closed"),
            Failure::Dcs(e) => write!(f, "{e}"),
        }
    }
}

impl ZooKeeperDcs {
    /// Connects to `hosts` (`host:port` each, port 2181 when omitted) for `identity`: opens a session
    /// with a timeout of `identity.ttl_secs` and starts the watch task (waiting up to the request
    /// timeout for the watch to be established, so changes made after this returns reach
    /// [`Dcs::watch`] subscribers).
    ///
    /// Needs a tokio runtime. `identity.request_timeout_secs` bounds every operation (at least 1 s);
    /// the session timeout is what the servers grant for `ttl_secs` (at least 1 s; see the module
    /// documentation for ZooKeeper's bounds).
    ///
    /// Errors: [`DcsError::Unavailable`] when no host is configured or no session can be opened within
    /// the request timeout.
    pub async fn connect(hosts: &[String], identity: DcsIdentity) -> Result<Self, DcsError> {
        Self::connect_with(hosts, identity, WatchStyle::Auto).await
    }

    async fn connect_with(
        hosts: &[String],
        identity: DcsIdentity,
        watch_style: WatchStyle,
    ) -> Result<Self, DcsError> {
        let connect_string = connect_string(hosts)?;
        let request_timeout = Duration::from_secs(u64::from(identity.request_timeout_secs.max(1)));
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let (opened, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            connect_string,
            keys: Keys::new(&identity.namespace, &identity.scope),
            member: identity.member,
            request_timeout,
            ttl_secs: AtomicU32::new(identity.ttl_secs.max(1)),
            granted_ms: AtomicU64::new(0),
            slot: Mutex::new(SessionSlot::default()),
            opened,
            events,
            watch_style,
        });
        let deadline = Instant::now() + request_timeout;
        let client = shared
            .session(deadline, true)
            .await
            .map_err(|f| f.into_dcs("connect to ZooKeeper"))?;
        drop(client);

        let dcs = ZooKeeperDcs {
            shared: shared.clone(),
            watch_cancel: CancellationToken::new(),
        };
        let (created_tx, created_rx) = oneshot::channel();
        let task = WatchTask {
            shared,
            cancel: dcs.watch_cancel.clone(),
        };
        tokio::spawn(task.run(created_tx));
        if !matches!(
            tokio::time::timeout(request_timeout, created_rx).await,
            Ok(Ok(()))
        ) {
            warn!(
                prefix = dcs.shared.keys.base(),
                "the ZooKeeper watch is not established yet; it keeps retrying and sends Resync when it is"
            );
        }
        Ok(dcs)
    }
}

impl Drop for ZooKeeperDcs {
    fn drop(&mut self) {
        self.watch_cancel.cancel();
    }
}

impl ZooKeeperDcs {
    /// Sets (`Some`, creating it if absent) or deletes (`None`, absent is fine) the persistent
    /// `key` in one transaction that checks the leader znode still holds this member's name.
    async fn write_as_leader(
        &self,
        what: &'static str,
        key: &str,
        json: Option<&str>,
    ) -> Result<(), DcsError> {
        let me = self.shared.member_name(what)?;
        let leader_key = self.shared.keys.leader();
        let leader_key = leader_key.as_str();
        let json = json.map(str::as_bytes);
        self.shared
            .run(what, |c| async move {
                let Some(leader_version) = version_if_value(&c, leader_key, me.as_bytes()).await?
                else {
                    return Err(conflict(leader_key));
                };
                let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                for create in [false, true] {
                    let mut txn = c.new_multi_writer();
                    txn.add_check_version(leader_key, leader_version)
                        .map_err(failure)?;
                    match json {
                        Some(json) if create => txn.add_create(key, json, &persistent),
                        Some(json) => txn.add_set_data(key, json, None),
                        None => txn.add_delete(key, None),
                    }
                    .map_err(failure)?;
                    match txn.commit().await {
                        Ok(_) => return Ok(()),
                        Err(zk::MultiWriteError::OperationFailed { index: 0, .. }) => {
                            return Err(conflict(leader_key))
                        }
                        Err(zk::MultiWriteError::OperationFailed {
                            source: zk::Error::NoNode,
                            ..
                        }) if json.is_none() => return Ok(()),
                        Err(zk::MultiWriteError::OperationFailed {
                            source: zk::Error::NoNode,
                            ..
                        }) if !create => continue,
                        Err(zk::MultiWriteError::OperationFailed {
                            source: zk::Error::NodeExists,
                            ..
                        }) => return Err(conflict(key)),
                        Err(
                            zk::MultiWriteError::OperationFailed { source, .. }
                            | zk::MultiWriteError::RequestFailed { source },
                        ) => return Err(failure(source)),
                    }
                }
                Err(conflict(key))
            })
            .await
    }
}

#[async_trait]
impl Dcs for ZooKeeperDcs {
    /// Two multi-reads under `/<namespace>/<scope>/`. Values that do not decode are logged and
    /// skipped. Errors: [`DcsError::Unavailable`].
    async fn load(&self) -> Result<Cluster, DcsError> {
        let keys = &self.shared.keys;
        self.shared
            .run("read the cluster", |c| async move {
                read_cluster(&c, keys).await
            })
            .await
    }

    async fn create_initialize(&self, value: &str) -> Result<bool, DcsError> {
        let key = self.shared.keys.initialize();
        let (key, data) = (key.as_str(), value.as_bytes());
        self.shared
            .run("create the initialize key", |c| async move {
                match create(&c, key, data, zk::CreateMode::Persistent).await {
                    Ok(_) => Ok(true),
                    Err(zk::Error::NodeExists) => Ok(false),
                    Err(e) => Err(failure(e)),
                }
            })
            .await
    }

    async fn update_initialize(&self, expected: &str, value: &str) -> Result<(), DcsError> {
        let key = self.shared.keys.initialize();
        let key = key.as_str();
        self.shared
            .run("update the initialize key", |c| async move {
                let Some(version) = version_if_value(&c, key, expected.as_bytes()).await? else {
                    return Err(conflict(key));
                };
                match c.set_data(key, value.as_bytes(), Some(version)).await {
                    Ok(_) => Ok(()),
                    Err(zk::Error::BadVersion | zk::Error::NoNode) => Err(conflict(key)),
                    Err(e) => Err(failure(e)),
                }
            })
            .await
    }

    async fn cancel_initialize(&self, expected: &str) -> Result<(), DcsError> {
        let key = self.shared.keys.initialize();
        let key = key.as_str();
        self.shared
            .run("delete the initialize key", |c| async move {
                match version_if_value(&c, key, expected.as_bytes()).await? {
                    Some(version) => cas_delete(&c, key, version).await,
                    None => Err(conflict(key)),
                }
            })
            .await
    }

    /// Creates `leader` as an ephemeral znode of this session holding the member name.
    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let me = self.shared.member_name("acquire_leader")?;
        let key = self.shared.keys.leader();
        let key = key.as_str();
        self.shared
            .run("acquire the leader lock", |c| async move {
                match create(&c, key, me.as_bytes(), zk::CreateMode::Ephemeral).await {
                    Ok(_) => Ok(true),
                    Err(zk::Error::NodeExists) => Ok(false),
                    Err(e) => Err(failure(e)),
                }
            })
            .await
    }

    /// `true` while the session is alive and `leader` is an ephemeral znode of this very session
    /// holding this member's name. The session renews itself (the library pings it), so this only
    /// checks, after a `sync` that makes the server answering catch up with the ZooKeeper leader.
    ///
    /// An ephemeral znode holding this member's name but owned by another session (this client's
    /// former one, which it gave up for expired while the servers, having lost their quorum, kept it
    /// alive) is deleted at its version, and the answer is `false`: the lock is lost, as it would be once the
    /// servers expire that session, but the leader race can start at once instead of a session
    /// timeout later (every ZooKeeper quorum loss cost a failover `ttl` after the quorum was back:
    /// nemesis seeds 75 and 91, 11.6-12.9 s against a bound of 8 s). Nobody else can have held the
    /// lock while that znode stood. Patroni recreates the znode in its new session instead ("due to
    /// ownership mismatch") and keeps leading; here the member goes through the race like any
    /// other, which its healthiest WAL usually wins.
    async fn renew_leader(&self) -> Result<bool, DcsError> {
        let me = self.shared.member_name("renew_leader")?;
        let key = self.shared.keys.leader();
        let key = key.as_str();
        self.shared
            .run("renew the leader lock", |c| async move {
                c.sync(key).await.map_err(failure)?;
                match c.get_data(key).await {
                    Ok((data, stat)) => {
                        let held = data == me.as_bytes();
                        let ours = stat.ephemeral_owner == c.session_id().0;
                        // A persistent znode (no owner) was written by hand or by another
                        // tool: not a session's lock, left for `release_leader` (the operator's
                        // way out).
                        if !held || ours || stat.ephemeral_owner == 0 {
                            return Ok(held && ours);
                        }
                        warn!(
                            owner = %zk::SessionId(stat.ephemeral_owner),
                            session = %c.session_id(),
                            "the leader znode names this member but belongs to another (lost) \
                             ZooKeeper session: the lock is lost; deleting it so the race can start"
                        );
                        match c.delete(key, Some(stat.version)).await {
                            Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => Ok(false),
                            Err(e) => Err(failure(e)),
                        }
                    }
                    Err(zk::Error::NoNode) => Ok(false),
                    Err(e) => Err(failure(e)),
                }
            })
            .await
    }

    async fn release_leader(&self) -> Result<bool, DcsError> {
        let me = self.shared.member_name("release_leader")?;
        let key = self.shared.keys.leader();
        let key = key.as_str();
        self.shared
            .run("release the leader lock", |c| async move {
                let Some(version) = version_if_value(&c, key, me.as_bytes()).await? else {
                    return Ok(false);
                };
                match c.delete(key, Some(version)).await {
                    Ok(()) => Ok(true),
                    Err(zk::Error::BadVersion | zk::Error::NoNode) => Ok(false),
                    Err(e) => Err(failure(e)),
                }
            })
            .await
    }

    /// Writes `members/<name>` as an ephemeral znode of this session (replacing one left by an
    /// expired session). The value is kept and written again on a new session.
    async fn touch_member(&self, data: &MemberData) -> Result<(), DcsError> {
        let me = self.shared.member_name("touch_member")?;
        let key = self.shared.keys.member(me);
        let json = to_json(&key, data)?;
        self.shared.lock_slot().await?.member_json = Some(json.clone());
        let (key, json) = (key.as_str(), json.as_bytes());
        self.shared
            .run("write the member key", |c| async move {
                upsert_ephemeral(&c, key, json).await
            })
            .await
    }

    async fn delete_member(&self) -> Result<(), DcsError> {
        let me = self.shared.member_name("delete_member")?;
        let key = self.shared.keys.member(me);
        self.shared.lock_slot().await?.member_json = None;
        let key = key.as_str();
        self.shared
            .run("delete the member key", |c| async move {
                match c.delete(key, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                    Err(e) => Err(failure(e)),
                }
            })
            .await
    }

    async fn set_config(&self, value: &serde_json::Value, expect: Expect) -> Result<(), DcsError> {
        let key = self.shared.keys.config();
        let json = to_json(&key, value)?;
        self.cas_put("write the config key", &key, &json, expect)
            .await
    }

    async fn set_failover(&self, value: &Failover, expect: Expect) -> Result<(), DcsError> {
        let key = self.shared.keys.failover();
        let json = to_json(&key, value)?;
        self.cas_put("write the failover key", &key, &json, expect)
            .await
    }

    async fn delete_failover(&self, version: Version) -> Result<(), DcsError> {
        let key = self.shared.keys.failover();
        let key = key.as_str();
        let Some(version) = znode_version(version) else {
            return Err(DcsError::CasConflict {
                key: key.to_string(),
            });
        };
        self.shared
            .run("delete the failover key", |c| async move {
                cas_delete(&c, key, version).await
            })
            .await
    }

    async fn set_history(&self, value: &[HistoryEntry], expect: Expect) -> Result<(), DcsError> {
        let key = self.shared.keys.history();
        let json = to_json(&key, value)?;
        self.cas_put("write the history key", &key, &json, expect)
            .await
    }

    /// Writes `status` in one transaction with a check that `leader` (naming this member) did not
    /// change; otherwise [`DcsError::CasConflict`] on the leader key.
    async fn set_status(&self, value: &Status) -> Result<(), DcsError> {
        let key = self.shared.keys.status();
        let json = to_json(&key, value)?;
        self.write_as_leader("write the status key", &key, Some(&json))
            .await
    }

    /// Writes (or, for an empty map, deletes) `failsafe` in one transaction with a check that
    /// `leader` names this member; otherwise [`DcsError::CasConflict`] on the leader key.
    async fn set_failsafe(&self, members: &BTreeMap<String, String>) -> Result<(), DcsError> {
        let key = self.shared.keys.failsafe();
        if members.is_empty() {
            self.write_as_leader("delete the failsafe key", &key, None)
                .await
        } else {
            let json = to_json(&key, members)?;
            self.write_as_leader("write the failsafe key", &key, Some(&json))
                .await
        }
    }

    async fn set_sync(&self, value: &SyncState, expect: Expect) -> Result<(), DcsError> {
        let key = self.shared.keys.sync();
        let json = to_json(&key, value)?;
        self.cas_put("write the sync key", &key, &json, expect)
            .await
    }

    /// Writes `praetor/proxies/<id>` as an ephemeral znode of this session; kept and written again on
    /// a new session.
    async fn set_proxy_state(&self, id: &str, state: &ProxyState) -> Result<(), DcsError> {
        let key = self.shared.keys.proxy(id);
        let json = to_json(&key, state)?;
        self.shared
            .lock_slot()
            .await?
            .proxies
            .insert(id.to_string(), json.clone());
        let (key, json) = (key.as_str(), json.as_bytes());
        self.shared
            .run("write the proxy key", |c| async move {
                upsert_ephemeral(&c, key, json).await
            })
            .await
    }

    /// Stores the TTL (seconds, at least 1) as the timeout of the next session this client opens
    /// (after the current one expired or was closed). ZooKeeper cannot change the timeout of a live
    /// session, and ending the session to apply it would drop the lock. The server grants a timeout
    /// within its `minSessionTimeout`..`maxSessionTimeout` (by default 2..20 × `tickTime`). Never fails.
    async fn set_ttl(&self, ttl_secs: u32) -> Result<(), DcsError> {
        self.shared
            .ttl_secs
            .store(ttl_secs.max(1), Ordering::Relaxed);
        Ok(())
    }

    /// The timeout the servers granted the last session this client opened (the ttl clamped to
    /// `minSessionTimeout`..`maxSessionTimeout`); `None` before the first session.
    fn granted_ttl(&self) -> Option<Duration> {
        match self.shared.granted_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    /// Deletes the cluster's znode and everything under it, deepest first (ephemeral znodes of live
    /// sessions too). A znode created meanwhile under one being deleted is a conflict.
    async fn delete_cluster(&self) -> Result<(), DcsError> {
        let root = dir(self.shared.keys.base()).to_string();
        let root = root.as_str();
        self.shared
            .run("delete the cluster's znodes", |c| async move {
                delete_tree(&c, root).await
            })
            .await
    }

    /// A new subscriber of the watch task. A subscriber that falls more than 1024 events behind gets
    /// [`broadcast::error::RecvError::Lagged`] and should treat it like [`KeyKind::Resync`].
    fn watch(&self) -> broadcast::Receiver<DcsEvent> {
        self.shared.events.subscribe()
    }

    /// Closes the session: ZooKeeper deletes its ephemeral znodes (`leader`, `members/<name>`, proxy
    /// keys) before it answers. The session was opened detached (so that dropping a client does not
    /// end it), hence the close is sent over a new connection attached to it. An expired session counts
    /// as closed. The next operation opens a new session.
    async fn close(&self) -> Result<(), DcsError> {
        let shared = &self.shared;
        let mut slot = shared.lock_slot().await?;
        slot.member_json = None;
        slot.proxies.clear();
        slot.closed = true;
        let Some(client) = slot.client.take() else {
            return Ok(());
        };
        shared.close_session(client).await
    }

    /// Gives up the session without closing the client (see [`Dcs::drop_session`]): closes it when
    /// ZooKeeper confirms the close within the request timeout (its ephemeral znodes, `leader`
    /// among them, go at once); otherwise abandons it: this client's handle is dropped, the
    /// library's session task ends once no operation holds a handle any more (it is detached: no
    /// close is sent), nothing pings the session again, and the servers expire it, its ephemeral
    /// znodes with it, one session timeout after its last ping. Unlike [`Dcs::close`] the member
    /// and proxy values are kept and the watch task follows the next session: the next operation
    /// opens a new session and writes them again on it, never `leader`.
    async fn drop_session(&self) -> Result<(), DcsError> {
        let client = self.shared.lock_slot().await?.client.take();
        let Some(client) = client else {
            return Ok(());
        };
        warn!(
            session = %client.session_id(),
            "giving up the ZooKeeper session: its ephemeral znodes (the leader lock, the member key) \
             go with it; the next operation opens a new one"
        );
        self.shared.close_session(client).await
    }
}

impl Shared {
    /// Ends `client`'s session: ZooKeeper deletes its ephemeral znodes before it answers. The
    /// session was opened detached (so that dropping a client does not end it), hence the close is
    /// sent over a new connection attached to it. An expired session counts as closed. Errors:
    /// [`DcsError::Unavailable`] when the close is not confirmed within the request timeout (the
    /// session then expires by itself unless another handle of `client` pings it).
    async fn close_session(&self, client: zk::Client) -> Result<(), DcsError> {
        let session = client.session().clone();
        let id = client.session_id();
        let ended = client.state().is_terminated();
        drop(client);
        if ended {
            return Ok(());
        }
        let closing = async {
            let closer = match zk::Client::connector()
                .with_session(session)
                .connect(&self.connect_string)
                .await
            {
                Ok(c) => c,
                // Already gone, ephemeral znodes with it.
                Err(zk::Error::SessionExpired) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            let mut states = closer.state_watcher();
            // Dropping the last handle of a non-detached client sends closeSession.
            drop(closer);
            loop {
                if states.changed().await.is_terminated() {
                    return Ok(());
                }
            }
        };
        match tokio::time::timeout(self.request_timeout, closing).await {
            Ok(Ok(())) => {
                info!(session = %id, "closed the ZooKeeper session");
                Ok(())
            }
            Ok(Err(e)) => Err(DcsError::Unavailable(format!(
                "close the ZooKeeper session {id}: {e}"
            ))),
            Err(_) => Err(self.timed_out("close the ZooKeeper session")),
        }
    }
}

impl ZooKeeperDcs {
    async fn cas_put(
        &self,
        what: &str,
        key: &str,
        json: &str,
        expect: Expect,
    ) -> Result<(), DcsError> {
        let data = json.as_bytes();
        self.shared
            .run(
                what,
                |c| async move { cas_put(&c, key, data, expect).await },
            )
            .await
    }
}

/// The background task behind [`Dcs::watch`]: one watch over the cluster prefix, re-established after
/// reconnections and on every new session.
struct WatchTask {
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

/// Why a watch stopped.
enum WatchEnd {
    Cancelled,
    /// The connection came back: the watch must be added again (see [`WatchTask::pump`]).
    Reconnected,
    /// [`Dcs::close`] closed the session: wait for an operation to open the next one.
    Closed,
    Broken(String),
}

/// A watch that is established.
enum Watching {
    Persistent(zk::PersistentWatcher),
    /// One-shot watches, armed by [`WatchTask::pump_one_shot`].
    OneShot,
}

/// One armed one-shot watch: the kind it reports and its event.
type Armed = BoxFuture<'static, (KeyKind, zk::WatchedEvent)>;

impl WatchTask {
    /// Runs until cancelled. `created` learns when the first watch is established; every later watch
    /// (a new session, a reconnection, or a first one `connect` stopped waiting for) is announced with
    /// [`KeyKind::Resync`].
    async fn run(self, created: oneshot::Sender<()>) {
        let mut created = Some(created);
        let mut backoff = WATCH_BACKOFF_MIN;
        let mut opened = self.shared.opened.subscribe();
        loop {
            let end = match self.open(&mut opened).await {
                Ok(watching) => {
                    backoff = WATCH_BACKOFF_MIN;
                    let announced = match created.take() {
                        Some(tx) => tx.send(()).is_ok(),
                        None => false,
                    };
                    if !announced {
                        debug!(prefix = %self.shared.keys.base(), "ZooKeeper watch re-established");
                        self.send(KeyKind::Resync);
                    }
                    match watching {
                        Watching::Persistent(watcher) => self.pump(watcher).await,
                        Watching::OneShot => self.pump_one_shot().await,
                    }
                }
                Err(end) => end,
            };
            match end {
                WatchEnd::Cancelled => return,
                WatchEnd::Reconnected => continue,
                WatchEnd::Closed => {
                    debug!("the ZooKeeper session was closed; the watch waits for a new one");
                    tokio::select! {
                        _ = self.cancel.cancelled() => return,
                        r = opened.changed() => if r.is_err() { return },
                    }
                    continue;
                }
                WatchEnd::Broken(message) => {
                    warn!(prefix = %self.shared.keys.base(), %message, retry_in = ?backoff, "ZooKeeper watch broken");
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = next_backoff(backoff);
        }
    }

    fn send(&self, key: KeyKind) {
        // No subscriber is not an error.
        let _ = self.events().send(DcsEvent { key });
    }

    fn events(&self) -> &broadcast::Sender<DcsEvent> {
        &self.shared.events
    }

    /// The connected client of the live session (not opening one after [`Dcs::close`]).
    async fn client(&self, deadline: Instant) -> Result<zk::Client, WatchEnd> {
        let client = match self.shared.session(deadline, false).await {
            Ok(c) => c,
            Err(Failure::ClosedByUs) => return Err(WatchEnd::Closed),
            Err(f) => return Err(WatchEnd::Broken(f.to_string())),
        };
        self.shared
            .connected(client, deadline)
            .await
            .map_err(|f| WatchEnd::Broken(f.to_string()))
    }

    /// Establishes the watch on the live session.
    async fn open(&self, opened: &mut watch::Receiver<u64>) -> Result<Watching, WatchEnd> {
        let deadline = Instant::now() + self.shared.request_timeout;
        let attempt = async {
            opened.borrow_and_update();
            let client = self.client(deadline).await?;
            if self.shared.watch_style == WatchStyle::Auto {
                let prefix = dir(self.shared.keys.base());
                match client
                    .watch(prefix, zk::AddWatchMode::PersistentRecursive)
                    .await
                {
                    Ok(watcher) => return Ok(Watching::Persistent(watcher)),
                    Err(zk::Error::Unimplemented) => {
                        info!("this ZooKeeper has no persistent watches (before 3.6): using one-shot watches")
                    }
                    Err(e) => return Err(WatchEnd::Broken(format!("add the watch: {e}"))),
                }
            }
            Ok(Watching::OneShot)
        };
        tokio::select! {
            _ = self.cancel.cancelled() => Err(WatchEnd::Cancelled),
            r = timeout_at(deadline, attempt) => r.unwrap_or_else(|_| {
                Err(WatchEnd::Broken(format!(
                    "not established within {:?}",
                    self.shared.request_timeout
                )))
            }),
        }
    }

    /// How a watch ends when its session reached the terminal `state`.
    async fn session_end(&self, state: zk::SessionState) -> WatchEnd {
        if state == zk::SessionState::Closed && self.shared.slot.lock().await.closed {
            WatchEnd::Closed
        } else {
            WatchEnd::Broken(format!("the ZooKeeper session is {state}"))
        }
    }

    /// Forwards every changed key under the prefix until the connection breaks and comes back, or the
    /// session ends.
    ///
    /// After a reconnection the watch is added again by [`WatchTask::open`] (with a
    /// [`KeyKind::Resync`]): zookeeper-client 0.11.2 sets only one-shot watches again on a new
    /// connection (its `resend_watches` never picks SetWatches2), so the server forgot a persistent
    /// watch after a ZooKeeper restart or a move to another server; and changes made while
    /// disconnected are not replayed for persistent watches anyway (ZOOKEEPER-4698).
    async fn pump(&self, mut watcher: zk::PersistentWatcher) -> WatchEnd {
        let mut disconnected = false;
        loop {
            let event = tokio::select! {
                _ = self.cancel.cancelled() => return WatchEnd::Cancelled,
                e = watcher.changed() => e,
            };
            if event.event_type != zk::EventType::Session {
                if let Some(kind) = self.shared.keys.classify(&event.path) {
                    self.send(kind);
                }
                continue;
            }
            match event.session_state {
                zk::SessionState::Disconnected => {
                    debug!("lost the ZooKeeper connection; the watch resumes when it is back");
                    disconnected = true;
                }
                zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                    if disconnected {
                        debug!("ZooKeeper connection back; adding the watch again");
                        return WatchEnd::Reconnected;
                    }
                }
                // Terminal: the watcher must not be polled again.
                ended => return self.session_end(ended).await,
            }
        }
    }

    /// Arms one-shot watches on the keys that wake agents and proxies (pipelined: the requests go out
    /// together). Each comes with what it saw when armed, the zxid of the key's last change (the
    /// member list's last child change; -1: absent), so that a change between two armings, which no
    /// watch covers, is still reported.
    async fn arm(&self, client: &zk::Client) -> Result<Vec<(KeyKind, i64, Armed)>, zk::Error> {
        let keys = &self.shared.keys;
        let watched = [
            (keys.leader(), KeyKind::Leader),
            (keys.failover(), KeyKind::Failover),
            (keys.config(), KeyKind::Config),
            (keys.sync(), KeyKind::Sync),
            (keys.initialize(), KeyKind::Initialize),
        ];
        let members = keys.members();
        let members = dir(&members);
        let stats = futures::future::join_all(
            watched
                .iter()
                .map(|(path, _)| client.check_and_watch_stat(path)),
        );
        let (stats, children) =
            futures::future::join(stats, client.get_and_watch_children(members)).await;
        let mut armed = Vec::new();
        for ((_, kind), stat) in watched.into_iter().zip(stats) {
            let (stat, watcher) = stat?;
            let seen = stat.map_or(-1, |s| s.mzxid);
            let reported = kind.clone();
            let fired: Armed = async move { (reported, watcher.changed().await) }.boxed();
            armed.push((kind, seen, fired));
        }
        // The member list: a child watch once the directory exists, an existence watch until then.
        let (seen, watcher) = match children {
            Ok((_, stat, watcher)) => (stat.pzxid, watcher),
            Err(zk::Error::NoNode) => match client.check_and_watch_stat(members).await? {
                (None, watcher) => (-1, watcher),
                // Created meanwhile: arm again with a child watch.
                (Some(_), _) => return Err(zk::Error::NodeExists),
            },
            Err(e) => return Err(e),
        };
        let fired: Armed = async move { (KeyKind::Resync, watcher.changed().await) }.boxed();
        armed.push((KeyKind::Resync, seen, fired));
        Ok(armed)
    }

    /// Waits for the first change among the armed one-shot watches, arms them all again and reports
    /// what changed since the previous arming, and so on until the session ends.
    async fn pump_one_shot(&self) -> WatchEnd {
        let mut previous: Option<Vec<i64>> = None;
        loop {
            let deadline = Instant::now() + self.shared.request_timeout;
            let client = match self.client(deadline).await {
                Ok(c) => c,
                Err(end) => return end,
            };
            let mut states = client.state_watcher();
            let armed = match timeout_at(deadline, self.arm(&client)).await {
                Ok(Ok(armed)) => armed,
                Ok(Err(zk::Error::NodeExists)) => continue,
                Ok(Err(e)) => return WatchEnd::Broken(format!("arm the watches: {e}")),
                Err(_) => return WatchEnd::Broken("arming the watches timed out".into()),
            };
            drop(client);
            let seen: Vec<i64> = armed.iter().map(|(_, seen, _)| *seen).collect();
            if let Some(previous) = &previous {
                for ((kind, _, _), (before, now)) in armed.iter().zip(previous.iter().zip(&seen)) {
                    if before != now {
                        self.send(kind.clone());
                    }
                }
            }
            previous = Some(seen);
            let fired = armed.into_iter().map(|(_, _, fired)| fired);
            tokio::select! {
                _ = self.cancel.cancelled() => return WatchEnd::Cancelled,
                // A node event is reported by the next arming, which sees the change.
                ((_, event), _, _) = select_all(fired) => {
                    if event.event_type == zk::EventType::Session
                        && event.session_state.is_terminated()
                    {
                        return self.session_end(event.session_state).await;
                    }
                }
                state = states.changed() => {
                    if state.is_terminated() {
                        return self.session_end(state).await;
                    }
                    if state == zk::SessionState::Disconnected {
                        // Wait for the connection; then anything may have changed.
                        let back = tokio::select! {
                            _ = self.cancel.cancelled() => return WatchEnd::Cancelled,
                            s = states.changed() => s,
                        };
                        if back.is_terminated() {
                            return self.session_end(back).await;
                        }
                    }
                    // Also when the state watcher shows only the latest state: a disconnection
                    // and the reconnection that followed it can reach it as one change.
                    self.send(KeyKind::Resync);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_connection_is_left_within_half_the_request_timeout() {
        // Patroni's default retry_timeout, this project's DCS outage tests', the proxy's 3 s, and
        // the floor.
        for (request_ms, want_ms) in [
            (10_000, 5_000),
            (25_000, 12_500),
            (3_000, 2_000),
            (1_000, 2_000),
        ] {
            assert_eq!(
                connection_timeout(Duration::from_millis(request_ms)),
                Duration::from_millis(want_ms),
                "request timeout {request_ms} ms"
            );
        }
    }

    #[test]
    fn connect_string_accepts_lists_and_comma_separated_hosts() {
        let hosts = vec![
            "10.0.0.1:2181, 10.0.0.2:2181".to_string(),
            "zk3".to_string(),
        ];
        assert_eq!(
            connect_string(&hosts).unwrap(),
            "10.0.0.1:2181,10.0.0.2:2181,zk3"
        );
        assert!(connect_string(&[" , ".to_string()])
            .unwrap_err()
            .is_unavailable());
    }

    #[test]
    fn versions_beyond_a_znode_version_never_match() {
        assert_eq!(znode_version(7), Some(7));
        assert_eq!(znode_version(i64::from(i32::MAX) + 1), None);
        assert_eq!(znode_version(-2), Some(-2));
    }

    #[test]
    fn prefixes_map_to_znode_paths() {
        let keys = Keys::new("/service/", "pg");
        assert_eq!(dir(keys.base()), "/service/pg");
        assert_eq!(dir(&keys.members()), "/service/pg/members");
        assert_eq!(dir(&keys.proxies()), "/service/pg/praetor/proxies");
        assert_eq!(dir(&keys.leader()), "/service/pg/leader");
    }

    #[test]
    fn session_errors_are_retried_on_a_new_session_and_others_are_unavailable() {
        assert!(matches!(
            failure(zk::Error::SessionExpired),
            Failure::SessionEnded(_)
        ));
        assert!(matches!(
            failure(zk::Error::ClientClosed),
            Failure::SessionEnded(_)
        ));
        let e = failure(zk::Error::ConnectionLoss).into_dcs("write x");
        assert!(e.is_unavailable(), "{e}");
        assert!(e.to_string().contains("write x: "), "{e}");
        assert!(conflict("/k").into_dcs("w").is_cas_conflict());
    }

    /// Waits up to 30 s, the session timeout: after a server restart zookeeper-client reconnects
    /// with a backoff that doubles from 100 ms per failed attempt, so a slow restart can delay the
    /// reconnection (and the Resync) by several seconds.
    async fn wait_for_event(rx: &mut broadcast::Receiver<DcsEvent>, kind: KeyKind) {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match rx.recv().await {
                    Ok(ev) if ev.key == kind => return,
                    Ok(ev) => seen.push(ev.key),
                    Err(e) => panic!("{e}"),
                }
            }
        })
        .await;
        assert!(found.is_ok(), "no {kind:?} event; saw {seen:?}");
    }

    /// The fallback for servers before 3.6, run against a server that has persistent watches.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_shot_watches_report_lock_failover_and_member_list_changes() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("RUST_LOG").unwrap_or_else(|_| "praetor_dcs=debug".into()),
            )
            .with_test_writer()
            .try_init();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = praetor_harness::ZooKeeper::start(dir.path())
            .await
            .expect("ZooKeeper starts");
        let hosts = [server.endpoint.clone()];
        let identity = |member: Option<&str>| DcsIdentity {
            namespace: "/service/".into(),
            scope: "oneshot".into(),
            member: member.map(str::to_string),
            ttl_secs: 30,
            request_timeout_secs: 2,
        };
        let a = ZooKeeperDcs::connect(&hosts, identity(Some("a")))
            .await
            .unwrap();
        let observer = ZooKeeperDcs::connect_with(&hosts, identity(None), WatchStyle::OneShot)
            .await
            .unwrap();
        let mut rx = observer.watch();

        assert!(a.acquire_leader().await.unwrap());
        wait_for_event(&mut rx, KeyKind::Leader).await;
        a.touch_member(&MemberData::default()).await.unwrap();
        wait_for_event(&mut rx, KeyKind::Resync).await;
        a.set_failover(&Failover::default(), Expect::Absent)
            .await
            .unwrap();
        wait_for_event(&mut rx, KeyKind::Failover).await;
        assert!(a.release_leader().await.unwrap());
        wait_for_event(&mut rx, KeyKind::Leader).await;

        // Across a server restart: Resync, then changes are reported again.
        server.restart().await.expect("ZooKeeper restarts");
        wait_for_event(&mut rx, KeyKind::Resync).await;
        praetor_harness::wait_for(
            "the lock after the restart",
            Duration::from_secs(20),
            || async {
                match a.acquire_leader().await {
                    Ok(true) => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await
        .unwrap();
        wait_for_event(&mut rx, KeyKind::Leader).await;
    }

    #[test]
    fn backoff_doubles_up_to_two_seconds() {
        let mut b = WATCH_BACKOFF_MIN;
        for _ in 0..6 {
            b = next_backoff(b);
        }
        assert_eq!(b, WATCH_BACKOFF_MAX);
    }
}
