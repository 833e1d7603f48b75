//! The etcd v3 backend: Patroni's key layout on etcd, with `leader` and `members/<name>` on a lease.
//!
//! How the [`Dcs`] operations map onto etcd (Patroni's `etcd3` scheme: keys with a TTL on a lease,
//! conditions as transaction compares):
//! - one lease per [`EtcdDcs`], granted with `ttl_secs` the first time it is needed
//!   ([`Dcs::acquire_leader`], [`Dcs::renew_leader`], [`Dcs::touch_member`]) and refreshed by those calls
//!   with one keep-alive round trip. When etcd reports the lease gone, a new one is granted and the
//!   member key is written again on it, but `leader` never is: a lost lock stays lost;
//! - every write is a transaction whose compare is the caller's precondition ([`Expect::Absent`]:
//!   `create_revision == 0`, [`Expect::Version`]: `mod_revision == v`, the lock: `value == me`);
//! - [`Dcs::load`] is one range read over the cluster prefix, so the view is one revision;
//! - one background task watches the prefix and fans changes out on a broadcast channel.
//!
//! Every request is bounded by `request_timeout_secs`; a timeout or transport failure is
//! [`DcsError::Unavailable`].
//!
//! Several endpoints (an etcd cluster): each endpoint has a gRPC client of its own, connected (and
//! authenticated) on first use, and every request, the lease keep-alive and the watch go to one
//! preferred endpoint. An endpoint that does not answer within a slice of the request timeout, or
//! answers that it cannot serve (no connection, no etcd leader, a broken HTTP/2 connection), costs
//! that request one attempt: it is sent again to the next endpoint, which becomes the preferred one,
//! as Patroni's etcd3 client moves on to the next member of the cluster on a failed request. So a
//! member that is down (connect refused) or silent (a blackholed host: packets dropped, connects and
//! reads hang) never holds a request for longer than one slice. The watch asks etcd for a progress
//! report every slice, so a watch on a member that went silent is re-opened elsewhere too.
//! The clients reconnect by themselves, so an [`EtcdDcs`] survives etcd restarts without being
//! rebuilt.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, TxnResponse,
    WatchOptions, WatchStream,
};
use tokio::sync::{broadcast, oneshot, Mutex, OnceCell};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

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
/// HTTP/2 ping interval on the gRPC connection. etcd's server answers pings sent more often than every
/// 5 s (`--grpc-keepalive-min-time`) with GOAWAY `too_many_pings`, so this must stay above that.
const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// The etcd v3 backend of [`Dcs`].
///
/// Holds the endpoints' gRPC clients (see [`Endpoints`]), this client's lease and the watch task.
/// Dropping it stops the watch task; the lease then expires after its TTL unless [`Dcs::close`]
/// revoked it first.
pub struct EtcdDcs {
    etcd: Arc<Endpoints>,
    keys: Keys,
    member: Option<String>,
    /// The TTL (seconds) new leases get; changed by [`Dcs::set_ttl`].
    ttl_secs: AtomicU32,
    /// The TTL (seconds) etcd granted the last lease (more than asked below its minimum); 0 before
    /// the first grant.
    granted_secs: AtomicU64,
    /// Serializes every operation that grants, refreshes or replaces the lease.
    lease: Mutex<LeaseState>,
    events: broadcast::Sender<DcsEvent>,
    watch_cancel: CancellationToken,
}

/// The configured etcd endpoints, their clients and the one requests go to first; shared by the
/// requests of an [`EtcdDcs`] and its watch task.
struct Endpoints {
    /// In the configured order.
    list: Vec<Endpoint>,
    /// The options every endpoint's client is connected with.
    options: ConnectOptions,
    /// Index into `list` of the endpoint requests go to first.
    preferred: AtomicUsize,
    /// The bound of one whole request, over every attempt.
    request_timeout: Duration,
    /// The bound of one attempt on one endpoint (see [`attempt_slice`]).
    per_attempt: Duration,
}

/// One etcd endpoint and its gRPC client.
struct Endpoint {
    /// `http://host:port`, `https://host:port` or `host:port`, as configured.
    url: String,
    /// Connected on first use, inside an attempt: etcd-client authenticates while connecting (a
    /// request), so a silent endpoint at start costs one attempt, not the whole connect. An attempt
    /// that times out leaves it empty, and the next use connects again.
    client: OnceCell<Client>,
}

/// The time one attempt on one of `n` endpoints gets: the request timeout split evenly across the
/// endpoints, as Patroni's etcd clients split `retry_timeout` across the members, but at least
/// [`MIN_ATTEMPT`] (a healthy etcd answers in milliseconds; a loaded machine needs some slack).
fn attempt_slice(request_timeout: Duration, n: usize) -> Duration {
    if n > 1 {
        (request_timeout / n as u32).max(MIN_ATTEMPT)
    } else {
        request_timeout
    }
}

/// This client's lease, as far as it knows.
#[derive(Debug, Default)]
struct LeaseState {
    /// The lease id; `None` before the first grant and after [`Dcs::close`].
    id: Option<i64>,
    /// The TTL (seconds) the lease was requested with (etcd may grant more: its minimum TTL).
    ttl_secs: u32,
    /// The last value written to `members/<name>`, written again when the lease is replaced.
    member_json: Option<String>,
    /// Per proxy id, the mod revision of `praetor/proxies/<id>` as this client last wrote or read
    /// it (0: absent); [`Dcs::set_proxy_state`] writes only over it.
    proxy_revisions: BTreeMap<String, i64>,
}

/// How many times [`Dcs::set_proxy_state`] adopts a revision it did not expect and writes again
/// before it gives up with a conflict (each is one of its own earlier writes applied late, or the
/// key's lease expiring: a few at most).
const PROXY_WRITE_CONFLICTS: usize = 3;

/// Why an etcd request failed, keeping apart the one failure some operations recover from.
#[derive(Debug)]
enum Failure {
    /// etcd does not know the lease (it expired or was revoked).
    LeaseGone,
    /// Anything else.
    Dcs(DcsError),
}

impl From<Failure> for DcsError {
    fn from(f: Failure) -> DcsError {
        match f {
            Failure::LeaseGone => DcsError::Unavailable("etcd lease not found".into()),
            Failure::Dcs(e) => e,
        }
    }
}

impl From<DcsError> for Failure {
    fn from(e: DcsError) -> Failure {
        Failure::Dcs(e)
    }
}

/// gRPC's status codes (etcd-client does not re-export tonic's `Code`).
const GRPC_CANCELLED: i32 = 1;
const GRPC_UNKNOWN: i32 = 2;
const GRPC_DEADLINE_EXCEEDED: i32 = 4;
const GRPC_NOT_FOUND: i32 = 5;
const GRPC_INTERNAL: i32 = 13;
const GRPC_UNAVAILABLE: i32 = 14;
/// First pause before sending again a request an endpoint could not serve; it doubles up to
/// [`RETRY_PAUSE_MAX`] within one request, so a request retries at a bounded pace while an etcd
/// cluster elects a leader.
const RETRY_PAUSE_MIN: Duration = Duration::from_millis(50);
/// Longest pause between two attempts of one request.
const RETRY_PAUSE_MAX: Duration = Duration::from_millis(400);
/// Shortest time one attempt on one endpoint gets before the request moves on to the next.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// One attempt of a request on endpoint `idx`: unless it succeeded or failed with etcd's own
/// answer (`done`), dropping it (a timeout, an endpoint that cannot serve, or the caller
/// abandoning the request) moves the preferred endpoint on to the next, unless another request did
/// already.
struct Attempt<'a> {
    preferred: &'a AtomicUsize,
    idx: usize,
    n: usize,
    done: bool,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.done {
            move_on(self.preferred, self.idx, self.n);
        }
    }
}

/// Makes the endpoint after `idx` the preferred one, unless the preference already moved away
/// from `idx`.
fn move_on(preferred: &AtomicUsize, idx: usize, n: usize) {
    if n > 1 {
        let _ =
            preferred.compare_exchange(idx, (idx + 1) % n, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// The gRPC status code of `e`, if it is a gRPC status.
fn grpc_code(e: &etcd_client::Error) -> Option<i32> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(i32::from(s.code())),
        _ => None,
    }
}

/// True when `e` says the endpoint could not serve the request, rather than etcd refusing it:
/// gRPC `UNAVAILABLE` (no connection, a member without a leader, "leader changed", a timed-out
/// proposal, an HTTP/2 ping left unanswered), `DEADLINE_EXCEEDED`, `CANCELLED`, `UNKNOWN` and
/// `INTERNAL` (a broken HTTP/2 stream), and transport errors. Such a request is sent again, to
/// the next endpoint; Patroni's etcd3 client likewise retries `Unavailable` and
/// `DeadlineExceeded` within `retry_timeout`.
fn is_transient(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(_) => matches!(
            grpc_code(e),
            Some(
                GRPC_UNAVAILABLE
                    | GRPC_DEADLINE_EXCEEDED
                    | GRPC_CANCELLED
                    | GRPC_UNKNOWN
                    | GRPC_INTERNAL
            )
        ),
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        _ => false,
    }
}

/// True when `e` says the lease is unknown to etcd: a keep-alive answered with TTL 0, or a put on a
/// lease that does not exist (gRPC `NOT_FOUND`, "etcdserver: requested lease not found"; etcd uses that
/// code for nothing else).
fn is_lease_gone(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::LeaseKeepAliveError(_) => true,
        etcd_client::Error::GRpcStatus(_) => grpc_code(e) == Some(GRPC_NOT_FOUND),
        _ => false,
    }
}

/// Converts an etcd-client error into a [`Failure`], naming what was attempted.
fn failure(what: &str, e: etcd_client::Error) -> Failure {
    if is_lease_gone(&e) {
        Failure::LeaseGone
    } else {
        Failure::Dcs(DcsError::Unavailable(format!("{what}: {e}")))
    }
}

/// The compare that makes a write conditional on `expect` for `key`.
/// The transaction [`Dcs::set_proxy_state`] sends: put `json` at `key` on `lease` if the key's mod
/// revision is `expected` (0: absent), else read the key (its revision, to adopt). Public for the
/// tests that replay a late write against a real etcd.
pub fn proxy_write_txn(key: &str, json: &str, lease: i64, expected: i64) -> Txn {
    Txn::new()
        .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
        .and_then([TxnOp::put(
            key,
            json,
            Some(PutOptions::new().with_lease(lease)),
        )])
        .or_else([TxnOp::get(key, None)])
}

fn expect_compare(key: &str, expect: Expect) -> Compare {
    match expect {
        Expect::Absent => Compare::create_revision(key, CompareOp::Equal, 0),
        Expect::Version(v) => Compare::mod_revision(key, CompareOp::Equal, v),
    }
}

/// The wait after `current` before the next attempt to open the watch: doubling, capped at
/// [`WATCH_BACKOFF_MAX`].
fn next_backoff(current: Duration) -> Duration {
    (current * 2).clamp(WATCH_BACKOFF_MIN, WATCH_BACKOFF_MAX)
}

impl Endpoints {
    /// The client of endpoint `idx`, connecting it first if needed (bounded by the caller's
    /// attempt timeout).
    async fn client(&self, idx: usize) -> Result<Client, etcd_client::Error> {
        let e = &self.list[idx];
        let client = e
            .client
            .get_or_try_init(|| Client::connect([e.url.as_str()], Some(self.options.clone())))
            .await?;
        Ok(client.clone())
    }

    /// Runs one etcd request (`send` builds it for the client it is given) within the request
    /// timeout; returns its answer and the index of the endpoint that gave it.
    ///
    /// The request goes to the preferred endpoint first, for at most one slice of the request
    /// timeout ([`attempt_slice`]). When that endpoint does not answer within the slice, or answers
    /// that it cannot serve ([`is_transient`]), the request is sent again, after a short pause
    /// (doubling from [`RETRY_PAUSE_MIN`] to [`RETRY_PAUSE_MAX`]), to the next endpoint, which becomes
    /// the preferred one for the requests that follow; and so on until the request timeout, cycling
    /// through the endpoints (an etcd cluster electing a new leader answers "no leader" for a while
    /// from every member). An attempt abandoned by the caller's own deadline also moves the
    /// preference on. A request that timed out may have reached etcd; sending it again is safe
    /// for reads, and every write here is a compare-and-set or idempotent (a repeated
    /// compare-and-set that already applied reports a conflict, which callers re-read).
    ///
    /// Errors: etcd's own answer at once (a failed compare is not an error here), otherwise the
    /// last transient failure, or "did not answer", once the request timeout has passed.
    async fn request<T, F, Fut>(&self, what: &str, send: F) -> Result<(T, usize), Failure>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.list.len();
        let deadline = Instant::now() + self.request_timeout;
        let mut pause = RETRY_PAUSE_MIN;
        loop {
            let idx = self.preferred.load(Ordering::Relaxed) % n;
            let mut attempt = Attempt {
                preferred: &self.preferred,
                idx,
                n,
                done: false,
            };
            let began = Instant::now();
            let until = (began + self.per_attempt).min(deadline);
            let answer = tokio::time::timeout_at(until, async {
                let client = self.client(idx).await?;
                send(client).await
            })
            .await;
            let now = Instant::now();
            let error = match answer {
                Ok(Ok(v)) => {
                    attempt.done = true;
                    return Ok((v, idx));
                }
                Ok(Err(e)) if !is_transient(&e) => {
                    attempt.done = true;
                    return Err(failure(what, e));
                }
                Ok(Err(e)) => {
                    debug!(
                        what,
                        endpoint = %self.list[idx].url,
                        took = ?now - began,
                        error = %e,
                        "an etcd endpoint cannot serve the request; sending it to the next"
                    );
                    failure(what, e)
                }
                Err(_) => {
                    debug!(
                        what,
                        endpoint = %self.list[idx].url,
                        "an etcd endpoint did not answer within {:?}; sending the request to the next",
                        now - began
                    );
                    Failure::Dcs(DcsError::Unavailable(format!(
                        "{what}: etcd did not answer within {:?}",
                        self.request_timeout
                    )))
                }
            };
            drop(attempt);
            let resume = if now < until { now + pause } else { now };
            if resume >= deadline {
                return Err(error);
            }
            if now < until {
                // An answer that came at once: pace the retries (a timeout paced itself).
                tokio::time::sleep_until(resume).await;
                pause = (pause * 2).min(RETRY_PAUSE_MAX);
            }
        }
    }
}

impl EtcdDcs {
    /// Connects to `endpoints` (`http://host:port`, or `host:port`) for `identity`, checks that etcd
    /// answers and starts the watch task (waiting up to the request timeout for the watch to be
    /// established, so changes made after this returns reach [`Dcs::watch`] subscribers).
    ///
    /// Needs a tokio runtime. `identity.request_timeout_secs` bounds every request (at least 1 s);
    /// `identity.ttl_secs` is the lease TTL (at least 1 s; etcd raises TTLs below its own minimum,
    /// 2 s with default election settings).
    ///
    /// Errors: [`DcsError::Unavailable`] when the endpoints are invalid or no etcd endpoint answers
    /// within the request timeout (one silent endpoint among several costs one attempt).
    pub async fn connect(endpoints: &[String], identity: DcsIdentity) -> Result<Self, DcsError> {
        Self::connect_secured(endpoints, identity, &Default::default()).await
    }

    /// Like [`EtcdDcs::connect`], with etcd's authentication (user name and password) and TLS (the CA
    /// of etcd's certificates, a client certificate) from `security` (Patroni's `etcd3.{username,
    /// password,cacert,cert,key}`).
    ///
    /// Errors: [`DcsError::Unavailable`] when no endpoint answers, or etcd refuses the credentials;
    /// [`DcsError::Unsupported`] when a certificate or key file cannot be read.
    pub async fn connect_secured(
        endpoints: &[String],
        identity: DcsIdentity,
        security: &praetor_config::EtcdSecurity,
    ) -> Result<Self, DcsError> {
        if endpoints.is_empty() {
            return Err(DcsError::Unavailable("no etcd endpoints configured".into()));
        }
        let request_timeout = Duration::from_secs(u64::from(identity.request_timeout_secs.max(1)));
        let per_attempt = attempt_slice(request_timeout, endpoints.len());
        let options = ConnectOptions::new()
            // A connect to a silent host hangs: it must not take more than the attempt it is in.
            .with_connect_timeout(per_attempt)
            .with_timeout(request_timeout)
            .with_keep_alive(HTTP2_KEEPALIVE_INTERVAL, request_timeout)
            // Pings without an open stream count as abuse for etcd (PermitWithoutStream = false);
            // the watch stream is always open, so pings still flow.
            .with_keep_alive_while_idle(false)
            // Fail (and cancel watches) on an etcd member cut off from its cluster's leader,
            // instead of serving from it.
            .with_require_leader(true)
            // etcd's simple tokens expire after 5 min without use (--auth-token-ttl): authenticate
            // again instead of failing.
            .with_auto_token_refresh(true);
        let options = secure(options, security)?;
        let etcd = Arc::new(Endpoints {
            list: endpoints
                .iter()
                .map(|url| Endpoint {
                    url: url.clone(),
                    client: OnceCell::new(),
                })
                .collect(),
            options,
            preferred: AtomicUsize::new(0),
            request_timeout,
            per_attempt,
        });
        let keys = Keys::new(&identity.namespace, &identity.scope);
        let (events, _) = broadcast::channel(EVENT_CAPACITY);
        let dcs = EtcdDcs {
            etcd,
            keys,
            member: identity.member,
            ttl_secs: AtomicU32::new(identity.ttl_secs.max(1)),
            granted_secs: AtomicU64::new(0),
            lease: Mutex::new(LeaseState::default()),
            events,
            watch_cancel: CancellationToken::new(),
        };
        let leader = dcs.keys.leader();
        let leader = leader.as_str();
        dcs.request("reach etcd", move |client: Client| async move {
            let options = GetOptions::new().with_count_only();
            client.kv_client().get(leader, Some(options)).await
        })
        .await
        .map_err(|f| match DcsError::from(f) {
            DcsError::Unavailable(m) => {
                DcsError::Unavailable(format!("connect to etcd {endpoints:?}: {m}"))
            }
            e => e,
        })?;

        let (created_tx, created_rx) = oneshot::channel();
        let task = WatchTask {
            etcd: dcs.etcd.clone(),
            prefix: dcs.keys.base().to_string(),
            keys: dcs.keys.clone(),
            events: dcs.events.clone(),
            cancel: dcs.watch_cancel.clone(),
        };
        tokio::spawn(task.run(created_tx));
        if !matches!(
            tokio::time::timeout(request_timeout, created_rx).await,
            Ok(Ok(()))
        ) {
            warn!(
                prefix = dcs.keys.base(),
                "the etcd watch is not established yet; it keeps retrying and sends Resync when it is"
            );
        }
        Ok(dcs)
    }

    /// The member name, for operations only an agent may perform.
    fn member_name(&self, what: &str) -> Result<&str, DcsError> {
        self.member.as_deref().ok_or_else(|| {
            DcsError::Unsupported(format!(
                "{what} needs a member name; this DCS client has none"
            ))
        })
    }

    /// Runs one etcd request on the preferred endpoint, moving on from endpoints that cannot
    /// serve it (see [`Endpoints::request`]).
    async fn request<T, F, Fut>(&self, what: &str, send: F) -> Result<T, Failure>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.etcd.request(what, send).await.map(|(v, _)| v)
    }

    /// Runs one transaction.
    async fn txn(&self, what: &str, txn: Txn) -> Result<TxnResponse, Failure> {
        let txn = &txn;
        self.request(what, move |client: Client| async move {
            client.kv_client().txn(txn.clone()).await
        })
        .await
    }

    /// Writes `value` at `key` if `expect` holds; [`DcsError::CasConflict`] otherwise.
    async fn cas_put(&self, key: String, value: String, expect: Expect) -> Result<(), DcsError> {
        let txn = Txn::new()
            .when([expect_compare(&key, expect)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        let resp = self.txn(&format!("write {key}"), txn).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(DcsError::CasConflict { key })
        }
    }

    /// Runs a transaction `compare` → `op` and reports a failed compare as a conflict on `key`.
    async fn cas_op(&self, key: String, compare: Compare, op: TxnOp) -> Result<(), DcsError> {
        let txn = Txn::new().when([compare]).and_then([op]);
        let resp = self.txn(&format!("change {key}"), txn).await?;
        if resp.succeeded() {
            Ok(())
        } else {
            Err(DcsError::CasConflict { key })
        }
    }

    /// Grants a lease of `ttl_secs`; returns its id.
    async fn grant(&self, ttl_secs: u32) -> Result<i64, DcsError> {
        let resp = self
            .request("grant a lease", move |client: Client| async move {
                client.lease_client().grant(i64::from(ttl_secs), None).await
            })
            .await?;
        debug!(
            lease = resp.id(),
            ttl_secs = resp.ttl(),
            "granted an etcd lease"
        );
        self.granted_secs
            .store(resp.ttl().max(0) as u64, Ordering::Relaxed);
        Ok(resp.id())
    }

    /// One keep-alive round trip for lease `id`.
    async fn keep_alive(&self, id: i64) -> Result<(), Failure> {
        // etcd-client's keep_alive sends one request and reads one response (TTL 0 is an error);
        // dropping the keeper and the stream closes the RPC.
        self.request("refresh the lease", move |client: Client| async move {
            client.lease_client().keep_alive(id).await
        })
        .await
        .map(|_| ())
    }

    /// Revokes lease `id`; an unknown lease counts as revoked.
    async fn revoke(&self, id: i64) -> Result<(), DcsError> {
        match self
            .request("revoke the lease", move |client: Client| async move {
                client.lease_client().revoke(id).await
            })
            .await
        {
            Ok(_) | Err(Failure::LeaseGone) => Ok(()),
            Err(Failure::Dcs(e)) => Err(e),
        }
    }

    /// Writes the cached member value on lease `id` (after the lease was replaced).
    async fn put_member_on(&self, st: &LeaseState, id: i64) -> Result<(), DcsError> {
        let (Some(me), Some(json)) = (self.member.as_deref(), st.member_json.as_deref()) else {
            return Ok(());
        };
        let key = self.keys.member(me);
        self.put_on_lease("write the member key", &key, json, id)
            .await?;
        Ok(())
    }

    /// Writes `value` at `key` on lease `lease`.
    async fn put_on_lease(
        &self,
        what: &str,
        key: &str,
        value: &str,
        lease: i64,
    ) -> Result<etcd_client::PutResponse, Failure> {
        self.request(what, move |client: Client| async move {
            let options = PutOptions::new().with_lease(lease);
            client.kv_client().put(key, value, Some(options)).await
        })
        .await
    }

    /// Grants a new lease after the old one was lost; writes the member again on it when
    /// `restore_member` (never the leader: a lost lock stays lost).
    async fn replace_lost_lease(
        &self,
        st: &mut LeaseState,
        restore_member: bool,
    ) -> Result<i64, DcsError> {
        let ttl = self.ttl_secs.load(Ordering::Relaxed);
        let id = self.grant(ttl).await?;
        st.id = Some(id);
        st.ttl_secs = ttl;
        if restore_member {
            self.put_member_on(st, id).await?;
        }
        Ok(id)
    }

    /// Makes sure this client has a live lease with the current TTL, refreshed now; returns its id.
    ///
    /// - no lease yet: grants one;
    /// - TTL changed ([`Dcs::set_ttl`]): grants a lease with the new TTL, moves the member key and
    ///   (if it still names this member) the leader key onto it, revokes the old one;
    /// - otherwise one keep-alive; if etcd no longer knows the lease, grants a new one (and writes the
    ///   member key again on it when `restore_member`).
    async fn refresh_lease(
        &self,
        st: &mut LeaseState,
        restore_member: bool,
    ) -> Result<i64, DcsError> {
        let want = self.ttl_secs.load(Ordering::Relaxed);
        let Some(old) = st.id else {
            return self.replace_lost_lease(st, restore_member).await;
        };
        if st.ttl_secs != want {
            return self.move_to_new_lease(st, old, want).await;
        }
        match self.keep_alive(old).await {
            Ok(()) => Ok(old),
            Err(Failure::LeaseGone) => {
                warn!(
                    lease = old,
                    "the etcd lease expired; granting a new one (keys on the old one are gone)"
                );
                st.id = None;
                self.replace_lost_lease(st, restore_member).await
            }
            Err(Failure::Dcs(e)) => Err(e),
        }
    }

    /// Replaces lease `old` by one of `ttl_secs`, moving this member's keys onto it.
    async fn move_to_new_lease(
        &self,
        st: &mut LeaseState,
        old: i64,
        ttl_secs: u32,
    ) -> Result<i64, DcsError> {
        let new = self.grant(ttl_secs).await?;
        // From here on the new lease is the one refreshed. Should a move below fail, the old lease is
        // left to expire instead of revoked, and the next touch_member/renew_leader moves the key.
        st.id = Some(new);
        st.ttl_secs = ttl_secs;
        self.put_member_on(st, new).await?;
        if let Some(me) = self.member.as_deref() {
            let key = self.keys.leader();
            let txn = Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, me)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    me,
                    Some(PutOptions::new().with_lease(new)),
                )]);
            self.txn("move the leader key to the new lease", txn)
                .await?;
        }
        if let Err(e) = self.revoke(old).await {
            warn!(lease = old, error = %e, "cannot revoke the old etcd lease; it will expire");
        }
        info!(
            old,
            new, ttl_secs, "moved to an etcd lease with the new TTL"
        );
        Ok(new)
    }
}

impl Drop for EtcdDcs {
    fn drop(&mut self) {
        self.watch_cancel.cancel();
    }
}

#[async_trait]
impl Dcs for EtcdDcs {
    /// One range read of every key under `/<namespace>/<scope>/` (one revision). Values that do not
    /// decode are logged and skipped. Errors: [`DcsError::Unavailable`].
    async fn load(&self) -> Result<Cluster, DcsError> {
        let base = self.keys.base();
        let resp = self
            .request("read the cluster", move |client: Client| async move {
                let options = GetOptions::new().with_prefix();
                client.kv_client().get(base, Some(options)).await
            })
            .await?;
        Ok(decode_cluster(
            &self.keys,
            resp.kvs()
                .iter()
                .map(|kv| (kv.key(), kv.value(), kv.mod_revision())),
        ))
    }

    async fn create_initialize(&self, value: &str) -> Result<bool, DcsError> {
        match self
            .cas_put(self.keys.initialize(), value.to_string(), Expect::Absent)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.is_cas_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn update_initialize(&self, expected: &str, value: &str) -> Result<(), DcsError> {
        let key = self.keys.initialize();
        let compare = Compare::value(key.as_str(), CompareOp::Equal, expected);
        let op = TxnOp::put(key.as_str(), value, None);
        self.cas_op(key, compare, op).await
    }

    async fn cancel_initialize(&self, expected: &str) -> Result<(), DcsError> {
        let key = self.keys.initialize();
        let compare = Compare::value(key.as_str(), CompareOp::Equal, expected);
        let op = TxnOp::delete(key.as_str(), None);
        self.cas_op(key, compare, op).await
    }

    async fn acquire_leader(&self) -> Result<bool, DcsError> {
        let me = self.member_name("acquire_leader")?;
        let key = self.keys.leader();
        let mut st = self.lease.lock().await;
        let mut retried = false;
        loop {
            let lease = self.refresh_lease(&mut st, true).await?;
            let txn = Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    me,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            match self.txn("acquire the leader lock", txn).await {
                Ok(resp) => return Ok(resp.succeeded()),
                // The lease expired between the refresh and the put: take a new one, once.
                Err(Failure::LeaseGone) if !retried => {
                    retried = true;
                    st.id = None;
                }
                Err(f) => return Err(f.into()),
            }
        }
    }

    async fn renew_leader(&self) -> Result<bool, DcsError> {
        let me = self.member_name("renew_leader")?;
        let key = self.keys.leader();
        let mut st = self.lease.lock().await;
        let mut retried = false;
        loop {
            let lease = self.refresh_lease(&mut st, true).await?;
            // The keep-alive above is the renewal. While the key still names this member on this
            // lease nothing is written: a read-only transaction adds no revision and wakes no watcher
            // (Patroni's etcd3 `update_leader` likewise only re-puts the key when its lease changed).
            let held = Txn::new().when([
                Compare::value(key.as_str(), CompareOp::Equal, me),
                Compare::lease(key.as_str(), CompareOp::Equal, lease),
            ]);
            match self.txn("check the leader lock", held).await {
                Ok(resp) if resp.succeeded() => return Ok(true),
                Ok(_) => {}
                Err(f) => return Err(f.into()),
            }
            // Re-attaches the key to the current lease; if the key vanished with a lost lease the
            // compare fails and the lock stays lost.
            let txn = Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, me)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    me,
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            match self.txn("renew the leader lock", txn).await {
                Ok(resp) => return Ok(resp.succeeded()),
                Err(Failure::LeaseGone) if !retried => {
                    retried = true;
                    st.id = None;
                }
                Err(f) => return Err(f.into()),
            }
        }
    }

    async fn release_leader(&self) -> Result<bool, DcsError> {
        let me = self.member_name("release_leader")?;
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::value(key.as_str(), CompareOp::Equal, me)])
            .and_then([TxnOp::delete(key.as_str(), None)]);
        Ok(self.txn("release the leader lock", txn).await?.succeeded())
    }

    async fn touch_member(&self, data: &MemberData) -> Result<(), DcsError> {
        let me = self.member_name("touch_member")?;
        let key = self.keys.member(me);
        let json = to_json(&key, data)?;
        let mut st = self.lease.lock().await;
        st.member_json = Some(json.clone());
        let mut retried = false;
        loop {
            let lease = self.refresh_lease(&mut st, false).await?;
            // Written only when its value or lease differs: an unchanged member key costs a read,
            // not a revision and a watch event for every client of the cluster.
            let txn = Txn::new()
                .when([
                    Compare::value(key.as_str(), CompareOp::Equal, json.as_str()),
                    Compare::lease(key.as_str(), CompareOp::Equal, lease),
                ])
                .or_else([TxnOp::put(
                    key.as_str(),
                    json.as_str(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            match self.txn("write the member key", txn).await {
                Ok(_) => return Ok(()),
                Err(Failure::LeaseGone) if !retried => {
                    retried = true;
                    st.id = None;
                }
                Err(f) => return Err(f.into()),
            }
        }
    }

    /// Writes the proxy key on this client's lease, only over the revision this client last wrote
    /// or read (a compare-and-set on its mod revision). etcd may still apply a write whose request
    /// timed out or failed (its outcome is unknown), after a newer write of the same key: a plain
    /// put would then show the agents a route the proxy no longer has (a former leader's name
    /// erased while the proxy still routes to it, or the reverse) until the next heartbeat. Such
    /// a late write fails its compare. When the key is not at the expected revision (one of
    /// those writes landed, or the lease expired), the revision read in the same transaction is
    /// adopted and the write sent again, at most [`PROXY_WRITE_CONFLICTS`] times
    /// ([`DcsError::CasConflict`] then).
    async fn set_proxy_state(&self, id: &str, state: &ProxyState) -> Result<(), DcsError> {
        let key = self.keys.proxy(id);
        let json = to_json(&key, state)?;
        let mut st = self.lease.lock().await;
        let mut retried = false;
        let mut conflicts = 0;
        loop {
            let lease = self.refresh_lease(&mut st, false).await?;
            let expected = st.proxy_revisions.get(id).copied().unwrap_or(0);
            let txn = proxy_write_txn(&key, &json, lease, expected);
            match self.txn("write the proxy key", txn).await {
                Ok(resp) if resp.succeeded() => {
                    // The transaction's revision is the put's.
                    let written = resp.header().map_or(0, |h| h.revision());
                    st.proxy_revisions.insert(id.to_string(), written);
                    return Ok(());
                }
                Ok(resp) => {
                    let current = resp
                        .op_responses()
                        .into_iter()
                        .find_map(|r| match r {
                            etcd_client::TxnOpResponse::Get(g) => {
                                Some(g.kvs().first().map_or(0, |kv| kv.mod_revision()))
                            }
                            _ => None,
                        })
                        .unwrap_or(0);
                    conflicts += 1;
                    debug!(
                        %key,
                        expected, current, "the proxy key changed since this client wrote it"
                    );
                    st.proxy_revisions.insert(id.to_string(), current);
                    if conflicts > PROXY_WRITE_CONFLICTS {
                        return Err(DcsError::CasConflict { key });
                    }
                }
                Err(Failure::LeaseGone) if !retried => {
                    retried = true;
                    st.id = None;
                }
                Err(f) => return Err(f.into()),
            }
        }
    }

    async fn delete_cluster(&self) -> Result<(), DcsError> {
        let base = self.keys.base();
        self.request(
            "delete the cluster's keys",
            move |client: Client| async move {
                let options = etcd_client::DeleteOptions::new().with_prefix();
                client.kv_client().delete(base, Some(options)).await
            },
        )
        .await?;
        Ok(())
    }

    async fn delete_member(&self) -> Result<(), DcsError> {
        let me = self.member_name("delete_member")?;
        let key = self.keys.member(me);
        let mut st = self.lease.lock().await;
        st.member_json = None;
        let key = key.as_str();
        self.request("delete the member key", move |client: Client| async move {
            client.kv_client().delete(key, None).await
        })
        .await?;
        Ok(())
    }

    async fn set_config(&self, value: &serde_json::Value, expect: Expect) -> Result<(), DcsError> {
        let key = self.keys.config();
        let json = to_json(&key, value)?;
        self.cas_put(key, json, expect).await
    }

    async fn set_failover(&self, value: &Failover, expect: Expect) -> Result<(), DcsError> {
        let key = self.keys.failover();
        let json = to_json(&key, value)?;
        self.cas_put(key, json, expect).await
    }

    async fn delete_failover(&self, version: Version) -> Result<(), DcsError> {
        let key = self.keys.failover();
        let compare = expect_compare(&key, Expect::Version(version));
        let op = TxnOp::delete(key.as_str(), None);
        self.cas_op(key, compare, op).await
    }

    async fn set_history(&self, value: &[HistoryEntry], expect: Expect) -> Result<(), DcsError> {
        let key = self.keys.history();
        let json = to_json(&key, value)?;
        self.cas_put(key, json, expect).await
    }

    /// Writes `status` if `leader` names this member; otherwise [`DcsError::CasConflict`] on the
    /// leader key.
    async fn set_status(&self, value: &Status) -> Result<(), DcsError> {
        let me = self.member_name("set_status")?;
        let status_key = self.keys.status();
        let json = to_json(&status_key, value)?;
        let leader_key = self.keys.leader();
        let compare = Compare::value(leader_key.as_str(), CompareOp::Equal, me);
        let op = TxnOp::put(status_key.as_str(), json, None);
        self.cas_op(leader_key, compare, op).await
    }

    async fn set_failsafe(&self, members: &BTreeMap<String, String>) -> Result<(), DcsError> {
        let me = self.member_name("set_failsafe")?;
        let key = self.keys.failsafe();
        let leader_key = self.keys.leader();
        let compare = Compare::value(leader_key.as_str(), CompareOp::Equal, me);
        let op = if members.is_empty() {
            TxnOp::delete(key.as_str(), None)
        } else {
            TxnOp::put(key.as_str(), to_json(&key, members)?, None)
        };
        self.cas_op(leader_key, compare, op).await
    }

    async fn set_sync(&self, value: &SyncState, expect: Expect) -> Result<(), DcsError> {
        let key = self.keys.sync();
        let json = to_json(&key, value)?;
        self.cas_put(key, json, expect).await
    }

    /// The TTL etcd granted the last lease this client obtained (etcd raises a TTL below its minimum);
    /// `None` before the first grant.
    fn granted_ttl(&self) -> Option<Duration> {
        match self.granted_secs.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(Duration::from_secs(secs)),
        }
    }

    /// Stores the TTL (seconds, at least 1); the next lease refresh ([`Dcs::acquire_leader`],
    /// [`Dcs::renew_leader`], [`Dcs::touch_member`]) moves this member's keys to a lease of that TTL.
    /// Never fails.
    async fn set_ttl(&self, ttl_secs: u32) -> Result<(), DcsError> {
        self.ttl_secs.store(ttl_secs.max(1), Ordering::Relaxed);
        Ok(())
    }

    /// A new subscriber of the watch task. A subscriber that falls more than 1024 events behind gets
    /// [`broadcast::error::RecvError::Lagged`] and should treat it like [`KeyKind::Resync`].
    fn watch(&self) -> broadcast::Receiver<DcsEvent> {
        self.events.subscribe()
    }

    async fn close(&self) -> Result<(), DcsError> {
        let mut st = self.lease.lock().await;
        st.member_json = None;
        if let Some(id) = st.id {
            self.revoke(id).await?;
            st.id = None;
        }
        Ok(())
    }

    /// Revokes this client's lease (`leader` and `members/<name>` on it vanish at once) and forgets
    /// it either way (see [`Dcs::drop_session`]): nothing refreshes it again, so a lease whose revoke
    /// did not get through expires within its ttl. Needed on etcd too: each `touch_member` refreshes
    /// the lease `leader` lives on, so a lapsed leader whose releases fail while its member writes
    /// get through would keep the lock alive. The member value is kept: the next
    /// [`Dcs::touch_member`] grants a new lease and writes it there, never `leader`.
    async fn drop_session(&self) -> Result<(), DcsError> {
        let mut st = self.lease.lock().await;
        let Some(id) = st.id.take() else {
            return Ok(());
        };
        warn!(
            lease = id,
            "giving up the etcd lease: the keys on it (the leader lock, the member key) go with it; \
             the next write grants a new one"
        );
        self.revoke(id).await
    }
}

/// The background task behind [`Dcs::watch`]: one etcd watch over the cluster prefix on the
/// preferred endpoint, re-opened (on the next endpoint when that one stopped answering) after
/// errors.
struct WatchTask {
    etcd: Arc<Endpoints>,
    prefix: String,
    keys: Keys,
    events: broadcast::Sender<DcsEvent>,
    cancel: CancellationToken,
}

/// Why a watch stream stopped.
enum WatchEnd {
    Cancelled,
    Broken(String),
}

impl WatchTask {
    /// Runs until cancelled. `created` learns when the first watch is established; every later watch
    /// (a reconnection, or a first one `connect` stopped waiting for) is announced with
    /// [`KeyKind::Resync`].
    async fn run(self, created: oneshot::Sender<()>) {
        let mut created = Some(created);
        let mut backoff = WATCH_BACKOFF_MIN;
        loop {
            let end = match self.open().await {
                Ok((stream, idx)) => {
                    backoff = WATCH_BACKOFF_MIN;
                    let announced = match created.take() {
                        Some(tx) => tx.send(()).is_ok(),
                        None => false,
                    };
                    // Nobody can subscribe before `connect` returns, so while it still waits for
                    // this signal there is nothing to resync; any later watch is a reconnection.
                    if !announced {
                        debug!(prefix = %self.prefix, "etcd watch re-established");
                        let _ = self.events.send(DcsEvent {
                            key: KeyKind::Resync,
                        });
                    }
                    self.pump(stream, idx).await
                }
                Err(end) => end,
            };
            match end {
                WatchEnd::Cancelled => return,
                WatchEnd::Broken(message) => {
                    warn!(prefix = %self.prefix, %message, retry_in = ?backoff, "etcd watch broken");
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = next_backoff(backoff);
        }
    }

    /// Opens the watch and waits for etcd to confirm it; returns the stream and the index of its
    /// endpoint.
    async fn open(&self) -> Result<(WatchStream, usize), WatchEnd> {
        let prefix = self.prefix.as_str();
        let open = self
            .etcd
            .request("open the watch", move |client: Client| async move {
                let options = WatchOptions::new().with_prefix();
                let mut stream = client.watch_client().watch(prefix, Some(options)).await?;
                match stream.message().await? {
                    Some(resp) if resp.created() && !resp.canceled() => Ok(stream),
                    Some(resp) => Err(etcd_client::Error::WatchError(format!(
                        "not created (canceled: {}, reason: {:?})",
                        resp.canceled(),
                        resp.cancel_reason()
                    ))),
                    None => Err(etcd_client::Error::WatchError(
                        "closed before it was created".into(),
                    )),
                }
            });
        tokio::select! {
            _ = self.cancel.cancelled() => Err(WatchEnd::Cancelled),
            r = open => r.map_err(|f| WatchEnd::Broken(DcsError::from(f).to_string())),
        }
    }

    /// Forwards every changed key of `stream` (on endpoint `idx`) to the subscribers until the
    /// stream ends.
    ///
    /// A watch on an idle cluster carries nothing, so silence alone says nothing: every attempt
    /// slice ([`attempt_slice`]) the task asks etcd for a progress report (etcd ≥ 3.4 answers at
    /// once), and a stream
    /// that brought no message at all for two of those intervals is on an endpoint that stopped
    /// answering (a silent host; the HTTP/2 pings would notice only after
    /// [`HTTP2_KEEPALIVE_INTERVAL`] and more). It is then broken, and the next endpoint preferred.
    async fn pump(&self, mut stream: WatchStream, idx: usize) -> WatchEnd {
        let every = self.etcd.per_attempt;
        let mut ask = tokio::time::interval_at(Instant::now() + every, every);
        ask.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut heard = Instant::now();
        loop {
            let msg = tokio::select! {
                _ = self.cancel.cancelled() => return WatchEnd::Cancelled,
                m = stream.message() => m,
                _ = ask.tick() => {
                    if heard.elapsed() >= every * 2 {
                        move_on(&self.etcd.preferred, idx, self.etcd.list.len());
                        return WatchEnd::Broken(format!(
                            "{} sent nothing, not even a progress report, for {:?}",
                            self.etcd.list[idx].url,
                            heard.elapsed()
                        ));
                    }
                    if let Err(e) = stream.request_progress().await {
                        return WatchEnd::Broken(format!("progress request: {e}"));
                    }
                    continue;
                }
            };
            heard = Instant::now();
            let resp = match msg {
                Ok(Some(resp)) => resp,
                Ok(None) => return WatchEnd::Broken("stream ended".into()),
                Err(e) => {
                    if is_transient(&e) {
                        move_on(&self.etcd.preferred, idx, self.etcd.list.len());
                    }
                    return WatchEnd::Broken(e.to_string());
                }
            };
            if resp.canceled() {
                // With require_leader, etcd cancels the watches of a member that lost its leader.
                move_on(&self.etcd.preferred, idx, self.etcd.list.len());
                return WatchEnd::Broken(format!("canceled by etcd: {:?}", resp.cancel_reason()));
            }
            // Only the key matters (event_type() panics on types it does not know).
            for event in resp.events() {
                let Some(kv) = event.kv() else { continue };
                let Ok(key) = std::str::from_utf8(kv.key()) else {
                    continue;
                };
                if let Some(kind) = self.keys.classify(key) {
                    // No subscriber is not an error.
                    let _ = self.events.send(DcsEvent { key: kind });
                }
            }
        }
    }
}

/// Adds `security` to the connection options: the user (etcd's authentication) and TLS.
fn secure(
    mut options: ConnectOptions,
    security: &praetor_config::EtcdSecurity,
) -> Result<ConnectOptions, DcsError> {
    // A file that cannot be read is a setting to fix, not an etcd to wait for: not `Unavailable`
    // (the agent waits for an unavailable DCS at its start).
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            DcsError::Unsupported(format!("etcd3: cannot read {}: {e}", path.display()))
        })
    };
    if let Some((user, password)) = &security.user {
        options = options.with_user(user.clone(), password.clone());
    }
    if security.cacert.is_some() || security.identity.is_some() {
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &security.cacert {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let Some((cert, key)) = &security.identity {
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_two_seconds() {
        let mut b = WATCH_BACKOFF_MIN;
        let mut seen = vec![b];
        for _ in 0..6 {
            b = next_backoff(b);
            seen.push(b);
        }
        let ms: Vec<u128> = seen.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 2000, 2000, 2000]);
    }

    #[test]
    fn expectations_compare_the_right_revision() {
        let absent = format!("{:?}", expect_compare("/k", Expect::Absent));
        assert!(absent.contains("CreateRevision(0)"), "{absent}");
        let version = format!("{:?}", expect_compare("/k", Expect::Version(42)));
        assert!(version.contains("ModRevision(42)"), "{version}");
    }

    #[test]
    fn only_lease_errors_count_as_lease_gone() {
        assert!(is_lease_gone(&etcd_client::Error::LeaseKeepAliveError(
            "lease not found".into()
        )));
        assert!(!is_lease_gone(&etcd_client::Error::WatchError(
            "failed to create lease keeper".into()
        )));
        assert!(is_lease_gone(&etcd_client::Error::GRpcStatus(
            tonic::Status::not_found("etcdserver: requested lease not found")
        )));
        assert!(!is_lease_gone(&etcd_client::Error::GRpcStatus(
            tonic::Status::unavailable("etcdserver: leader changed")
        )));
    }

    #[test]
    fn endpoints_that_cannot_serve_are_transient_etcd_answers_are_not() {
        let status = |s: tonic::Status| etcd_client::Error::GRpcStatus(s);
        for transient in [
            tonic::Status::unavailable("tcp connect error"),
            tonic::Status::unavailable("etcdserver: no leader"),
            tonic::Status::unavailable("etcdserver: leader changed"),
            tonic::Status::deadline_exceeded("context deadline exceeded"),
            tonic::Status::unknown("h2 protocol error: error reading a body from connection"),
            tonic::Status::internal("h2 protocol error"),
            tonic::Status::cancelled("stream reset"),
        ] {
            assert!(is_transient(&status(transient.clone())), "{transient:?}");
        }
        for answer in [
            tonic::Status::not_found("etcdserver: requested lease not found"),
            tonic::Status::invalid_argument("etcdserver: authentication failed"),
            tonic::Status::permission_denied("etcdserver: permission denied"),
            tonic::Status::failed_precondition("etcdserver: authentication is not enabled"),
        ] {
            assert!(!is_transient(&status(answer.clone())), "{answer:?}");
        }
        assert!(!is_transient(&etcd_client::Error::WatchError("x".into())));
    }

    #[test]
    fn an_attempt_gets_a_slice_of_the_request_timeout() {
        let s = |secs, n| attempt_slice(Duration::from_secs(secs), n).as_millis();
        assert_eq!(s(2, 1), 2000);
        assert_eq!(s(2, 3), 666);
        assert_eq!(s(10, 3), 3333);
        assert_eq!(s(1, 3), 500, "at least MIN_ATTEMPT");
    }

    #[test]
    fn failures_name_what_was_attempted() {
        assert!(matches!(
            failure("x", etcd_client::Error::InvalidArgs("bad".into())),
            Failure::Dcs(DcsError::Unavailable(m)) if m.contains("x: ")
        ));
    }
}
