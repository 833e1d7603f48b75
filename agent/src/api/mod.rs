//! The REST API: Patroni's paths, status codes and JSON fields (reference/patroni.md section 2), so
//! HAProxy checks, patronictl and dashboards written for Patroni work unchanged.
//!
//! The loop publishes a [`NodeStatus`] snapshot after every cycle. Read-only requests are answered
//! from it by the pure [`respond`]; requests that change something go through [`ApiContext`]:
//! PostgreSQL actions (restart, reload, reinitialize) are [`AgentCommand`]s to the loop, which owns
//! PostgreSQL; switchover, failover and configuration changes are written to the DCS directly
//! (compare-and-set), as Patroni does, and the loops act on them.
//!
//! - [`health`]: the pure read-only surface (health checks, `/patroni`, `/cluster`, ...).
//! - [`actions`]: the unsafe methods (`POST /switchover`, `PATCH /config`, `POST /restart`, ...).
//! - [`access`]: basic auth, allowlists and client certificates on unsafe methods (401/403).
//! - [`tls`]: rustls server and client configurations from `restapi.*` / `ctl.*`.
//! - [`client`]: a small HTTP(S) client for agents' APIs (used by `praetor ctl`).
//! - [`merge`]: JSON merge patch (RFC 7396) for `PATCH /config`.
//! - [`schedule`]: ISO 8601 schedules and the scheduled restart.

pub mod access;
pub mod actions;
pub mod client;
pub mod health;
pub mod merge;
pub mod schedule;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use praetor_dcs::{Cluster, Dcs, MemberState, Role, Tags};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use access::AccessPolicy;
pub use health::{cluster_json, respond};
pub use merge::merge_patch;
pub use schedule::{parse_schedule, RestartSchedule, ScheduledRestart};

use crate::metrics::Metrics;
use crate::postgres::instance::WalPositions;
use crate::postgres::ServerStatus;

/// Everything the API answers from: the latest state of this node, as of the last HA loop.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    /// Cluster name.
    pub scope: String,
    /// This member.
    pub name: String,
    /// The cluster as last read from the DCS (`None` before the first successful read).
    pub cluster: Option<Arc<Cluster>>,
    /// Unix seconds of the last successful DCS read.
    pub dcs_last_seen: Option<i64>,
    /// PostgreSQL state as published in the member key.
    pub state: MemberState,
    /// PostgreSQL role as published in the member key.
    pub role: Role,
    /// What the running server reported, if running.
    pub server: Option<ServerStatus>,
    /// This member's tags.
    pub tags: Tags,
    /// Unix seconds of the end of the last HA loop.
    pub last_loop: Option<i64>,
    /// Leader lock TTL in force (seconds), for `/liveness`.
    pub ttl: u32,
    /// The last decision's reason.
    pub last_decision: String,
    /// Maintenance mode.
    pub pause: bool,
    /// A parameter change waits for a restart (published as `pending_restart`).
    pub pending_restart: bool,
    /// Why: parameter → `{old_value, new_value}` (Patroni 4's `pending_restart_reason`).
    pub pending_restart_reason: Option<serde_json::Value>,
    /// `loop_wait` in force (seconds).
    pub loop_wait: u32,
    /// Failsafe mode keeps this leader running while the DCS is unreachable.
    pub failsafe_active: bool,
    /// `failsafe_mode` in force (dynamic configuration): `POST /failsafe` answers 502 without it.
    pub failsafe_mode: bool,
    /// PostgreSQL is stopped and its data directory diverged from the cluster's history: its
    /// timeline and the switch point (bytes) where the cluster left it ([`crate::ha::diverged_vote`]),
    /// published in `/patroni` as `timeline` and `xlog.diverged_at` for other members' quorum votes.
    pub diverged: Option<(u32, u64)>,
    /// The ms left of this member's hold-off from the leader race after its lock renewals lapsed
    /// ([`crate::ha::lapsed::hold_off_left_ms`]), as of the last HA loop; `None` when it does not hold
    /// off. Published in `/patroni` as `holding_off_ms` (Praetor's field; Patroni has no hold-off):
    /// other members' leader race reads it and does not defer to this member meanwhile
    /// ([`crate::ha::PeerStatus::holding_off`]).
    pub holding_off_ms: Option<u64>,
    /// Whether this member holds a usable copy of every permanent logical slot
    /// ([`crate::ha::slots::holds_slot_copies`]), as of the last HA loop; `None` when no permanent
    /// logical slot is configured or PostgreSQL is not running. Published in `/patroni` as
    /// `logical_slot_copies` (Praetor's field; Patroni ignores it): other members' leader race
    /// breaks a tie on WAL and `failover_priority` with it ([`crate::ha::PeerStatus::slot_copies`]).
    pub logical_slot_copies: Option<bool>,
}

impl NodeStatus {
    /// This member holds the leader lock (as of the last DCS read).
    pub fn holds_lock(&self) -> bool {
        self.cluster
            .as_ref()
            .and_then(|c| c.leader.as_ref())
            .is_some_and(|l| l.name == self.name)
    }

    /// PostgreSQL runs and answered the last status query.
    pub fn is_running(&self) -> bool {
        self.state == MemberState::Running && self.server.is_some()
    }

    /// PostgreSQL runs read-write.
    pub fn is_primary(&self) -> bool {
        self.is_running() && self.server.as_ref().is_some_and(|s| !s.in_recovery)
    }

    /// PostgreSQL runs in recovery.
    pub fn is_replica(&self) -> bool {
        self.is_running() && self.server.as_ref().is_some_and(|s| s.in_recovery)
    }

    /// The role PostgreSQL runs in, as Patroni's restart filter names it.
    pub fn postgres_role(&self) -> Option<Role> {
        let s = self.server.as_ref()?;
        Some(if !s.in_recovery {
            Role::Primary
        } else if self.holds_lock() {
            Role::StandbyLeader
        } else {
            Role::Replica
        })
    }

    fn wal_position(&self) -> Option<u64> {
        self.server.as_ref().map(ServerStatus::wal_position)
    }

    /// Bytes this member lags behind the leader's last known position; `None` when unknown, also
    /// when it runs on another timeline than the leader (see [`Cluster::lag_behind_leader`]), so a
    /// health check with `?lag=` fails for a replica left on a former timeline.
    pub fn lag(&self) -> Option<u64> {
        let timeline = self.server.as_ref().map(|s| s.timeline);
        self.cluster
            .as_ref()?
            .lag_behind_leader(self.wal_position(), timeline)
    }

    /// This member is listed in the `sync` key.
    pub fn is_sync_standby(&self) -> bool {
        self.cluster
            .as_ref()
            .and_then(|c| c.sync.as_ref())
            .is_some_and(|s| s.value.members().contains(&self.name))
    }

    /// Patroni's `/patroni` document.
    pub fn patroni_json(&self) -> Value {
        let mut v = json!({
            "state": self.state.to_string(),
            "role": self.role.to_string(),
            "cluster_unlocked": self.cluster.as_ref().is_none_or(|c| c.leader.is_none()),
            "tags": self.tags,
            "patroni": {"version": env!("CARGO_PKG_VERSION"), "scope": self.scope, "name": self.name},
        });
        if let Some(s) = &self.server {
            v["postmaster_start_time"] = json!(s.postmaster_start_time);
            v["server_version"] = json!(s.server_version);
            v["timeline"] = json!(s.timeline);
            v["database_system_identifier"] = json!(s.system_identifier);
            if s.in_recovery {
                v["xlog"] = json!({
                    "received_location": s.received_lsn.or(s.replayed_lsn),
                    "replayed_location": s.replayed_lsn,
                    "replayed_timestamp": s.replay_timestamp,
                    "paused": s.replay_paused,
                });
                v["replication_state"] = json!(if s.streaming {
                    "streaming"
                } else {
                    "in archive recovery"
                });
            } else {
                v["xlog"] = json!({ "location": s.current_lsn });
                if !s.replication.is_empty() {
                    v["replication"] = json!(s.replication);
                }
            }
        } else if let Some((timeline, switch_lsn)) = self.diverged {
            v["timeline"] = json!(timeline);
            v["xlog"] = json!({ "diverged_at": switch_lsn });
        }
        if let Some(t) = self.dcs_last_seen {
            v["dcs_last_seen"] = json!(t);
        }
        if self.pause {
            v["pause"] = json!(true);
        }
        if self.pending_restart {
            v["pending_restart"] = json!(true);
            if let Some(r) = &self.pending_restart_reason {
                v["pending_restart_reason"] = r.clone();
            }
        }
        if self.is_sync_standby() {
            v["sync_standby"] = json!(true);
        }
        if self.failsafe_active {
            v["failsafe_mode_is_active"] = json!(true);
        }
        // Praetor's: why PostgreSQL stays stopped and what ends it (Patroni has no such state).
        if self.state == MemberState::RewindFailed {
            v["rewind_failure"] = json!(self.last_decision);
        }
        if let Some(ms) = self.holding_off_ms {
            v["holding_off_ms"] = json!(ms);
        }
        if let Some(copies) = self.logical_slot_copies {
            v["logical_slot_copies"] = json!(copies);
        }
        v
    }
}

/// A request from the REST API to the HA loop (the loop owns PostgreSQL; the API never touches it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    /// Restart PostgreSQL in its current role (Patroni's `POST /restart`; the API checks the
    /// request's conditions first and waits for PostgreSQL to run again).
    Restart,
    /// Rewrite the configuration files and reload PostgreSQL (`POST /reload`).
    Reload,
    /// Remove this replica's data directory and clone it again (`POST /reinitialize`); refused as
    /// [`crate::ha::guards::reinitialize`] says (no leader, this member leads, PostgreSQL primary).
    Reinitialize {
        /// Also when PostgreSQL is running (stopped first).
        force: bool,
        /// Clone from the leader rather than a `clonefrom` member.
        from_leader: bool,
    },
}

/// Why the loop did not carry out an [`AgentCommand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// A guard refused it: not possible in the cluster's or PostgreSQL's current state (for
    /// example [`crate::ha::guards::reinitialize`]). The API answers 412 with the reason.
    Refused(String),
    /// It was tried and failed, or the loop was busy or unreachable. The API answers 503.
    Failed(String),
}

impl std::fmt::Display for CommandError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CommandError::Refused(why) | CommandError::Failed(why) => f.write_str(why),
        }
    }
}

impl From<String> for CommandError {
    fn from(why: String) -> Self {
        CommandError::Failed(why)
    }
}

impl From<&str> for CommandError {
    fn from(why: &str) -> Self {
        CommandError::Failed(why.to_string())
    }
}

/// An [`AgentCommand`] with the channel its answer goes back on: `Ok(message)` or why not.
#[derive(Debug)]
pub struct CommandRequest {
    /// What to do.
    pub command: AgentCommand,
    /// Where the loop answers.
    pub reply: oneshot::Sender<Result<String, CommandError>>,
}

/// The last `POST /failsafe` from the leader (failsafe mode): when, and what it sent.
#[derive(Debug, Clone)]
pub struct FailsafeContact {
    /// When it arrived.
    pub at: Instant,
    /// The leader's body (`{name, conn_url, api_url, slots, ...}`).
    pub body: Value,
}

/// What the REST API reaches: the loop's latest snapshot and its command channel, the DCS for the
/// keys the API writes itself, access control, metrics and the scheduled restart.
#[derive(Clone)]
pub struct ApiContext {
    /// The latest [`NodeStatus`], published by the loop after every cycle.
    pub status: watch::Receiver<Arc<NodeStatus>>,
    /// Commands to the loop.
    pub commands: mpsc::Sender<CommandRequest>,
    /// The DCS (`failover` and `config` writes, fresh reads); `None` in tests of the pure surface.
    pub dcs: Option<Arc<dyn Dcs>>,
    /// The agent's metrics (`GET /metrics`).
    pub metrics: Option<Arc<Metrics>>,
    /// Who may call unsafe methods.
    pub access: Arc<AccessPolicy>,
    /// The restart scheduled with `POST /restart {"schedule": ...}`.
    pub restarts: Arc<RestartSchedule>,
    /// The last `POST /failsafe` (read by the loop in failsafe mode).
    pub failsafe: Arc<Mutex<Option<FailsafeContact>>>,
    /// Where an accepted `POST /failsafe` is recorded before the answer: this member's data
    /// directory and name ([`crate::failsafe_record`]); `None` in tests of the pure surface.
    pub failsafe_record: Option<(std::path::PathBuf, String)>,
    /// TLS for the listener (`restapi.certfile`), `None` for plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How agents' APIs are called (switchover candidate checks).
    pub client: client::ApiClient,
    /// Reads the local server's WAL positions at request time (`GET /patroni`, the health checks:
    /// [`health::reads_positions`]); `None` in tests of the pure surface (the loop's snapshot is
    /// answered).
    pub wal_probe: Option<Arc<dyn WalProbe>>,
}

/// How long `GET /patroni` and a health check wait for the local server's WAL positions before
/// they answer the loop's snapshot: peers read `/patroni` in the leader race and in switchover
/// checks with timeouts of a few seconds, and a health checker must not hang on a server that
/// does not answer.
pub const WAL_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Reads this member's WAL positions from its server when asked, as Patroni's API queries
/// PostgreSQL at every `GET /patroni` and health check (`get_postgresql_status` in Patroni's
/// `api.py`): the loop's snapshot is up to `loop_wait` old, so two members' snapshots taken at
/// different moments compare positions of different moments (a caught-up switchover candidate
/// looked a whole WAL segment behind its leader; under a steady write load a replica's
/// `/replica?lag=` compared its position of one loop with the leader's of another).
#[async_trait::async_trait]
pub trait WalProbe: Send + Sync {
    /// The positions now; `None` when the server did not answer within [`WAL_PROBE_TIMEOUT`].
    async fn wal_positions(&self) -> Option<WalPositions>;
}

#[async_trait::async_trait]
impl WalProbe for crate::postgres::instance::Instance {
    async fn wal_positions(&self) -> Option<WalPositions> {
        match crate::postgres::instance::Instance::wal_positions(self, WAL_PROBE_TIMEOUT).await {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::debug!("the REST API answers the loop's WAL positions: {e}");
                None
            }
        }
    }
}

impl ApiContext {
    /// A context with no DCS, no metrics, open access and plain HTTP.
    pub fn new(
        status: watch::Receiver<Arc<NodeStatus>>,
        commands: mpsc::Sender<CommandRequest>,
    ) -> ApiContext {
        ApiContext {
            status,
            commands,
            dcs: None,
            metrics: None,
            access: Arc::new(AccessPolicy::default()),
            restarts: Arc::new(RestartSchedule::default()),
            failsafe: Arc::new(Mutex::new(None)),
            failsafe_record: None,
            tls: None,
            client: client::ApiClient::plain(Duration::from_secs(3)),
            wal_probe: None,
        }
    }

    /// The latest snapshot with the WAL positions the local server reports now
    /// ([`WalProbe`]), when PostgreSQL runs, answers in time and still has the snapshot's role;
    /// otherwise the snapshot as it is.
    pub async fn live_snapshot(&self) -> Arc<NodeStatus> {
        let snap = self.snapshot();
        let (Some(probe), Some(_)) = (&self.wal_probe, &snap.server) else {
            return snap;
        };
        let Some(now) = probe.wal_positions().await else {
            return snap;
        };
        let mut st = (*snap).clone();
        if st.server.as_mut().is_some_and(|s| s.take_positions(&now)) {
            Arc::new(st)
        } else {
            snap
        }
    }

    /// The latest snapshot.
    pub fn snapshot(&self) -> Arc<NodeStatus> {
        self.status.borrow().clone()
    }

    /// The cluster fresh from the DCS (bounded by a second: health checkers and dashboards must
    /// not hang on a DCS outage), falling back to the snapshot's.
    pub async fn fresh_cluster(&self) -> Option<Arc<Cluster>> {
        if let Some(dcs) = &self.dcs {
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(1), dcs.load()).await {
                return Some(Arc::new(c));
            }
        }
        self.snapshot().cluster.clone()
    }
}

/// One answer: a status code and a JSON, text or empty body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The status code.
    pub code: StatusCode,
    /// The body.
    pub body: ReplyBody,
}

/// The body of a [`Reply`].
#[derive(Debug, Clone, PartialEq)]
pub enum ReplyBody {
    /// No body.
    Empty,
    /// `application/json`.
    Json(Value),
    /// A message (Patroni answers actions with plain text).
    Text(String),
    /// Prometheus exposition text.
    Metrics(String),
}

impl Reply {
    /// A text reply.
    pub fn text(code: StatusCode, msg: impl Into<String>) -> Reply {
        Reply {
            code,
            body: ReplyBody::Text(msg.into()),
        }
    }

    /// A JSON reply.
    pub fn json(code: StatusCode, v: Value) -> Reply {
        Reply {
            code,
            body: ReplyBody::Json(v),
        }
    }

    /// A reply without body.
    pub fn empty(code: StatusCode) -> Reply {
        Reply {
            code,
            body: ReplyBody::Empty,
        }
    }

    /// The HTTP response.
    pub fn into_response(self, head_only: bool) -> Response<Full<Bytes>> {
        let (ctype, bytes) = match self.body {
            ReplyBody::Empty => (None, Bytes::new()),
            ReplyBody::Json(v) => (
                Some("application/json"),
                Bytes::from(serde_json::to_vec(&v).unwrap_or_default()),
            ),
            ReplyBody::Text(t) => (Some("text/plain; charset=utf-8"), Bytes::from(t)),
            ReplyBody::Metrics(t) => (
                Some("text/plain; version=0.0.4; charset=utf-8"),
                Bytes::from(t),
            ),
        };
        let mut resp = Response::new(Full::new(if head_only { Bytes::new() } else { bytes }));
        *resp.status_mut() = self.code;
        if let Some(c) = ctype {
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(c));
        }
        if self.code == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Praetor\""),
            );
        }
        resp
    }
}

/// A query string as `key → value`.
pub type Query = BTreeMap<String, String>;

/// Parses `a=1&b=2` (percent-decoding `%XX` and `+`).
pub fn parse_query(q: Option<&str>) -> Query {
    q.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a lag like Patroni's `?lag=`: bytes, or with a unit `kB`, `MB`, `GB`, `TB` (powers of 1024).
pub fn parse_lag(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Who is calling: the peer address and whether it presented a verified client certificate.
#[derive(Debug, Clone, Copy)]
pub struct ConnInfo {
    /// The TCP peer.
    pub peer: SocketAddr,
    /// A client certificate was presented and verified (TLS only).
    pub client_cert: bool,
}

/// Largest request body accepted (a dynamic configuration is a few kB).
const MAX_BODY: usize = 1 << 20;

/// Answers one HTTP request.
pub async fn handle(
    ctx: ApiContext,
    conn: ConnInfo,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (parts, body) = req.into_parts();
    let head_only = parts.method == Method::HEAD;
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            return Ok(Reply::text(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            )
            .into_response(head_only))
        }
    };
    let reply = dispatch(
        &ctx,
        conn,
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &parts.headers,
        &body,
    )
    .await;
    if (reply.code.is_server_error() || reply.code.is_client_error())
        && !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS)
    {
        tracing::info!(
            method = %parts.method,
            path = parts.uri.path(),
            peer = %conn.peer,
            code = reply.code.as_u16(),
            "REST API request refused"
        );
    }
    Ok(reply.into_response(head_only))
}

/// Routes a request with its body already read. Unsafe methods pass access control first.
pub async fn dispatch(
    ctx: &ApiContext,
    conn: ConnInfo,
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &axum::http::HeaderMap,
    body: &Bytes,
) -> Reply {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    let query = parse_query(query);
    if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        let member_ips = if ctx.access.includes_members() {
            let st = ctx.snapshot();
            match &st.cluster {
                Some(c) => access::member_ips(c).await,
                None => vec![],
            }
        } else {
            vec![]
        };
        let auth = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if let Err(denied) = ctx
            .access
            .check(conn.peer.ip(), conn.client_cert, auth, &member_ips)
        {
            return Reply::text(denied.code(), denied.to_string());
        }
    }
    match (method.clone(), path) {
        (Method::POST, "/restart") => actions::restart(ctx, body).await,
        (Method::DELETE, "/restart") => actions::delete_restart(ctx),
        (Method::POST, "/reload") => actions::reload(ctx).await,
        (Method::POST, "/reinitialize") => actions::reinitialize(ctx, body, &query).await,
        (Method::POST, "/switchover") => {
            actions::failover(ctx, body, actions::FailoverKind::Switchover).await
        }
        (Method::POST, "/failover") => {
            actions::failover(ctx, body, actions::FailoverKind::Failover).await
        }
        (Method::DELETE, "/switchover") => actions::delete_switchover(ctx).await,
        (Method::PATCH, "/config") => actions::patch_config(ctx, body).await,
        (Method::PUT, "/config") => actions::put_config(ctx, body).await,
        (Method::POST, "/failsafe") => {
            // An accepted confirmation is recorded and fsynced before the answer
            // (`failsafe_record::store`): blocking file I/O, kept off the async workers.
            let (ctx, body) = (ctx.clone(), body.clone());
            tokio::task::spawn_blocking(move || actions::post_failsafe(&ctx, &body))
                .await
                .unwrap_or_else(|e| {
                    Reply::text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("the failsafe handler failed: {e}"),
                    )
                })
        }
        (Method::GET, "/metrics") | (Method::HEAD, "/metrics") => match &ctx.metrics {
            Some(m) => Reply {
                code: StatusCode::OK,
                body: ReplyBody::Metrics(m.render(&ctx.snapshot())),
            },
            None => Reply::empty(StatusCode::NOT_FOUND),
        },
        (Method::GET, "/config" | "/cluster" | "/history") => {
            let mut st = (*ctx.snapshot()).clone();
            if let Some(c) = ctx.fresh_cluster().await {
                st.cluster = Some(c);
            }
            let (code, body) = respond(method, path, &query, &st, unix_now());
            let body = match (path, body) {
                ("/config", Some(v)) => Some(actions::mask_passwords(v)),
                (_, b) => b,
            };
            reply_of(code, body)
        }
        _ => {
            let st = if health::reads_positions(method, path, &query) {
                ctx.live_snapshot().await
            } else {
                ctx.snapshot()
            };
            let (code, body) = respond(method, path, &query, &st, unix_now());
            reply_of(code, body)
        }
    }
}

fn reply_of(code: StatusCode, body: Option<Value>) -> Reply {
    match body {
        Some(v) => Reply::json(code, v),
        None => Reply::empty(code),
    }
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Serves the API on `listener` until `shutdown` is cancelled: plain HTTP, or HTTPS when
/// `ctx.tls` is set (a failed handshake closes that connection only).
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: ApiContext,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = ctx.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let tracker = tokio_util::task::TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("REST API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let ctx = ctx.clone();
        let acceptor = acceptor.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            match acceptor {
                None => {
                    let conn = ConnInfo {
                        peer,
                        client_cert: false,
                    };
                    serve_connection(tcp, ctx, conn, shutdown).await
                }
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await;
                    match handshake {
                        Ok(Ok(tls)) => {
                            let client_cert = tls
                                .get_ref()
                                .1
                                .peer_certificates()
                                .is_some_and(|c| !c.is_empty());
                            let conn = ConnInfo { peer, client_cert };
                            serve_connection(tls, ctx, conn, shutdown).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    // Free the address at once: a reload that changed other `restapi` settings binds it again.
    drop(listener);
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
    Ok(())
}

async fn serve_connection<S>(
    stream: S,
    ctx: ApiContext,
    conn: ConnInfo,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| handle(ctx.clone(), conn, req));
    let http = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(http);
    tokio::select! {
        r = http.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %conn.peer, "REST API connection: {e}");
            }
        }
        _ = shutdown.cancelled() => {
            http.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
        }
    }
}
