//! The REST API: Patroni's paths, status codes and JSON fields (reference/patroni.md section 2), so
//! HAProxy checks, patronictl and dashboards written for Patroni work unchanged.
//!
//! The loop publishes a [`NodeStatus`] snapshot after every cycle; requests are answered from the
//! latest snapshot by the pure [`respond`], never by touching PostgreSQL or the DCS.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use praetor_dcs::{summary, Cluster, MemberState, Role, Tags};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

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
}

impl NodeStatus {
    fn holds_lock(&self) -> bool {
        self.cluster
            .as_ref()
            .and_then(|c| c.leader.as_ref())
            .is_some_and(|l| l.name == self.name)
    }

    fn is_running(&self) -> bool {
        self.state == MemberState::Running && self.server.is_some()
    }

    fn is_primary(&self) -> bool {
        self.is_running() && self.server.as_ref().is_some_and(|s| !s.in_recovery)
    }

    fn is_replica(&self) -> bool {
        self.is_running() && self.server.as_ref().is_some_and(|s| s.in_recovery)
    }

    fn wal_position(&self) -> Option<u64> {
        self.server.as_ref().map(ServerStatus::wal_position)
    }

    /// Bytes this member lags behind the leader's last known position.
    fn lag(&self) -> Option<u64> {
        let optime = self.cluster.as_ref()?.leader_optime()?;
        Some(optime.saturating_sub(self.wal_position()?))
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
        }
        if let Some(t) = self.dcs_last_seen {
            v["dcs_last_seen"] = json!(t);
        }
        if self.pause {
            v["pause"] = json!(true);
        }
        v
    }
}

/// A request from the REST API to the HA loop (the loop owns PostgreSQL; the API never touches it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentCommand {
    /// Restart PostgreSQL in its current role (Patroni's `POST /restart`).
    Restart,
    /// Rewrite the configuration files and reload PostgreSQL (`POST /reload`).
    Reload,
    /// A leader, cut off from the DCS in `failsafe_mode`, asks this member to confirm it
    /// (`POST /failsafe`).
    Failsafe {
        /// The leader asking.
        leader: String,
    },
    /// Remove this replica's data directory and clone it again (`POST /reinitialize`); refused on the
    /// leader.
    Reinitialize {
        /// Also when PostgreSQL is running (stopped first).
        force: bool,
        /// Clone from the leader rather than a `clonefrom` member.
        from_leader: bool,
    },
}

/// An [`AgentCommand`] with the channel its answer goes back on: `Ok(message)` or `Err(why)`.
#[derive(Debug)]
pub struct CommandRequest {
    /// What to do.
    pub command: AgentCommand,
    /// Where the loop answers.
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// What the REST API reaches: the loop's latest snapshot and its command channel.
#[derive(Clone)]
pub struct ApiContext {
    /// The latest [`NodeStatus`], published by the loop after every cycle.
    pub status: watch::Receiver<Arc<NodeStatus>>,
    /// Commands to the loop.
    pub commands: mpsc::Sender<CommandRequest>,
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

/// Health paths: each answers 200 or 503 with the status body; HEAD and OPTIONS answer the status only.
const HEALTH_PATHS: &[&str] = &[
    "/",
    "/primary",
    "/master",
    "/read-write",
    "/leader",
    "/standby-leader",
    "/standby_leader",
    "/replica",
    "/read-only",
    "/health",
    "/liveness",
    "/readiness",
    "/sync",
    "/synchronous",
    "/async",
    "/asynchronous",
];

/// Answers one request: status code and JSON body (`None` for no body). Pure: the whole REST
/// surface is tested through this function.
pub fn respond(
    method: &Method,
    path: &str,
    query: &Query,
    st: &NodeStatus,
    now_unix: i64,
) -> (StatusCode, Option<Value>) {
    let path = if path.len() > 1 {
        path.trim_end_matches('/')
    } else {
        path
    };
    if HEALTH_PATHS.contains(&path) {
        if !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return (StatusCode::METHOD_NOT_ALLOWED, None);
        }
        let ok = health(path, query, st, now_unix);
        let code = if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        let body = (*method == Method::GET).then(|| st.patroni_json());
        return (code, body);
    }
    if *method != Method::GET && *method != Method::HEAD {
        return (StatusCode::METHOD_NOT_ALLOWED, None);
    }
    match path {
        "/patroni" => (StatusCode::OK, Some(st.patroni_json())),
        "/cluster" => (StatusCode::OK, Some(cluster_json(st))),
        "/history" => {
            let h = st
                .cluster
                .as_ref()
                .and_then(|c| c.history.as_ref())
                .map(|h| json!(h.value))
                .unwrap_or_else(|| json!([]));
            (StatusCode::OK, Some(h))
        }
        "/config" => match st.cluster.as_ref().and_then(|c| c.config.as_ref()) {
            Some(c) => (StatusCode::OK, Some(c.value.clone())),
            None => (StatusCode::BAD_GATEWAY, None),
        },
        _ => (StatusCode::NOT_FOUND, None),
    }
}

fn health(path: &str, q: &Query, st: &NodeStatus, now_unix: i64) -> bool {
    let tags_match = || {
        q.iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("tag_")?, v)))
            .all(|(k, v)| {
                let tags = serde_json::to_value(&st.tags).unwrap_or(Value::Null);
                match &tags[k] {
                    Value::String(s) => s == v,
                    Value::Null => v.eq_ignore_ascii_case("false"),
                    other => other.to_string().eq_ignore_ascii_case(v),
                }
            })
    };
    let lag_ok = || match q.get("lag").map(|l| parse_lag(l)) {
        None => true,
        Some(None) => false,
        Some(Some(max)) => st.lag().is_some_and(|lag| lag <= max),
    };
    let replication_state_ok = || match q.get("replication_state") {
        None => true,
        Some(want) => {
            let actual = st.server.as_ref().map(|s| {
                if s.streaming {
                    "streaming"
                } else {
                    "in archive recovery"
                }
            });
            actual == Some(want.as_str())
        }
    };
    let sync_members = || {
        st.cluster
            .as_ref()
            .and_then(|c| c.sync.as_ref())
            .map(|s| s.value.members())
            .unwrap_or_default()
    };
    let replica_ok = || {
        st.is_replica()
            && !st.holds_lock()
            && !st.tags.noloadbalance
            && lag_ok()
            && replication_state_ok()
            && tags_match()
    };
    let leader_ok = || st.holds_lock() && st.is_primary() && tags_match();
    match path {
        "/" | "/primary" | "/master" | "/read-write" => leader_ok(),
        "/leader" => st.holds_lock() && tags_match(),
        "/standby-leader" | "/standby_leader" => false,
        "/replica" => replica_ok(),
        "/read-only" => leader_ok() || replica_ok(),
        "/health" => st.is_running(),
        "/liveness" => {
            let limit = if st.holds_lock() { st.ttl } else { st.ttl * 2 };
            st.pause
                || st
                    .last_loop
                    .is_some_and(|t| now_unix - t <= i64::from(limit.max(1)))
        }
        "/readiness" => {
            (st.holds_lock() && st.is_primary())
                || (st.is_replica() && st.server.as_ref().is_some_and(|s| s.streaming) && lag_ok())
        }
        "/sync" | "/synchronous" => replica_ok() && sync_members().contains(&st.name),
        "/async" | "/asynchronous" => replica_ok() && !sync_members().contains(&st.name),
        _ => false,
    }
}

fn cluster_json(st: &NodeStatus) -> Value {
    let Some(c) = &st.cluster else {
        return json!({"members": []});
    };
    let mut v = json!({ "members": summary::summarize(c) });
    if st.pause {
        v["pause"] = json!(true);
    }
    if let Some(f) = c.failover_request() {
        if let Some(at) = &f.value.scheduled_at {
            v["scheduled_switchover"] =
                json!({"at": at, "from": f.value.leader, "to": f.value.member});
        }
    }
    v
}

/// Sends `command` to the loop and waits (up to 60 s) for its answer: 200 with the message, or 503
/// with the reason.
async fn run_command(ctx: &ApiContext, command: AgentCommand) -> Response {
    let (reply, answer) = oneshot::channel();
    if ctx
        .commands
        .send(CommandRequest { command, reply })
        .await
        .is_err()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the HA loop is not running",
        )
            .into_response();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(60), answer).await {
        Ok(Ok(Ok(msg))) => (StatusCode::OK, msg).into_response(),
        Ok(Ok(Err(why))) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no answer from the HA loop",
        )
            .into_response(),
    }
}

async fn handle(State(ctx): State<ApiContext>, req: Request<Body>) -> Response {
    if req.method() == Method::POST && req.uri().path() == "/failsafe" {
        let body = match axum::body::to_bytes(req.into_body(), 64 * 1024).await {
            Ok(b) => b,
            Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
        };
        let leader = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["name"].as_str().map(str::to_string));
        let Some(leader) = leader else {
            return (
                StatusCode::BAD_REQUEST,
                "expected a JSON body with \"name\"",
            )
                .into_response();
        };
        return run_command(&ctx, AgentCommand::Failsafe { leader }).await;
    }
    if req.method() == Method::POST {
        let query = parse_query(req.uri().query());
        let flag = |k: &str| query.get(k).is_some_and(|v| v == "true" || v == "1");
        let command = match req.uri().path() {
            "/restart" => Some(AgentCommand::Restart),
            "/reload" => Some(AgentCommand::Reload),
            "/reinitialize" => Some(AgentCommand::Reinitialize {
                force: flag("force"),
                from_leader: flag("from_leader"),
            }),
            _ => None,
        };
        if let Some(c) = command {
            return run_command(&ctx, c).await;
        }
    }
    let st = ctx.status.borrow().clone();
    let query = parse_query(req.uri().query());
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (code, body) = respond(req.method(), req.uri().path(), &query, &st, now);
    match body {
        Some(b) => (code, axum::Json(b)).into_response(),
        None => code.into_response(),
    }
}

/// Serves the API on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: ApiContext,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new().fallback(handle).with_state(ctx);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { shutdown.cancelled().await })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use praetor_dcs::{Leader, Member, MemberData, Status};

    fn server(in_recovery: bool, pos: u64) -> ServerStatus {
        ServerStatus {
            in_recovery,
            timeline: 1,
            current_lsn: (!in_recovery).then_some(pos),
            received_lsn: in_recovery.then_some(pos),
            replayed_lsn: in_recovery.then_some(pos),
            streaming: in_recovery,
            server_version: 150000,
            ..Default::default()
        }
    }

    fn node(name: &str, leader: &str, in_recovery: bool, pos: u64) -> NodeStatus {
        let cluster = Cluster {
            leader: Some(Leader {
                name: leader.into(),
                version: 1,
            }),
            members: vec![Member {
                name: leader.into(),
                data: MemberData::default(),
                version: 1,
            }],
            status: Some(Status {
                optime: 100 << 20,
                ..Default::default()
            }),
            ..Default::default()
        };
        NodeStatus {
            scope: "demo".into(),
            name: name.into(),
            cluster: Some(Arc::new(cluster)),
            state: MemberState::Running,
            role: if in_recovery {
                Role::Replica
            } else {
                Role::Primary
            },
            server: Some(server(in_recovery, pos)),
            ttl: 30,
            last_loop: Some(1000),
            ..Default::default()
        }
    }

    fn code(method: Method, path: &str, q: &str, st: &NodeStatus) -> u16 {
        respond(&method, path, &parse_query(Some(q)), st, 1005)
            .0
            .as_u16()
    }

    #[test]
    fn health_codes_table() {
        let leader = node("a", "a", false, 100 << 20);
        let replica = node("b", "a", true, 99 << 20);
        let mut noload = node("c", "a", true, 100 << 20);
        noload.tags.noloadbalance = true;
        let mut stopped = node("d", "a", true, 0);
        stopped.state = MemberState::Stopped;
        stopped.server = None;
        let rows: Vec<(&str, &str, &NodeStatus, u16)> = vec![
            ("/primary", "", &leader, 200),
            ("/", "", &leader, 200),
            ("/read-write", "", &leader, 200),
            ("/primary", "", &replica, 503),
            ("/leader", "", &leader, 200),
            ("/leader", "", &replica, 503),
            ("/replica", "", &replica, 200),
            ("/replica", "", &leader, 503),
            ("/replica", "", &noload, 503),
            ("/replica", "", &stopped, 503),
            ("/replica", "lag=2MB", &replica, 200),
            ("/replica", "lag=512kB", &replica, 503),
            ("/replica", "replication_state=streaming", &replica, 200),
            ("/replica", "tag_noloadbalance=false", &replica, 200),
            ("/read-only", "", &leader, 200),
            ("/read-only", "", &replica, 200),
            ("/read-only", "", &noload, 503),
            ("/health", "", &replica, 200),
            ("/health", "", &stopped, 503),
            ("/liveness", "", &leader, 200),
            ("/readiness", "", &replica, 200),
            ("/readiness", "", &stopped, 503),
            ("/async", "", &replica, 200),
            ("/sync", "", &replica, 503),
            ("/standby-leader", "", &leader, 503),
        ];
        for (path, q, st, want) in rows {
            assert_eq!(
                code(Method::GET, path, q, st),
                want,
                "GET {path}?{q} as {}",
                st.name
            );
        }
    }

    #[test]
    fn head_and_options_answer_the_status_without_body() {
        let leader = node("a", "a", false, 1);
        for m in [Method::HEAD, Method::OPTIONS] {
            let (c, body) = respond(&m, "/primary", &Query::new(), &leader, 1005);
            assert_eq!(c, StatusCode::OK);
            assert!(body.is_none());
        }
        let replica = node("b", "a", true, 1);
        assert_eq!(code(Method::OPTIONS, "/primary", "", &replica), 503);
    }

    #[test]
    fn patroni_document_has_patronis_fields() {
        let r = node("b", "a", true, 42);
        let v = r.patroni_json();
        assert_eq!(v["state"], "running");
        assert_eq!(v["role"], "replica");
        assert_eq!(v["xlog"]["received_location"], 42);
        assert_eq!(v["replication_state"], "streaming");
        assert_eq!(v["patroni"]["scope"], "demo");
        let l = node("a", "a", false, 7);
        assert_eq!(l.patroni_json()["xlog"]["location"], 7);
        assert_eq!(l.patroni_json()["role"], "primary");
    }

    #[test]
    fn info_paths() {
        let l = node("a", "a", false, 7);
        assert_eq!(code(Method::GET, "/cluster", "", &l), 200);
        assert_eq!(code(Method::GET, "/history", "", &l), 200);
        assert_eq!(code(Method::GET, "/config", "", &l), 502);
        assert_eq!(code(Method::GET, "/nope", "", &l), 404);
        assert_eq!(code(Method::POST, "/patroni", "", &l), 405);
    }

    #[test]
    fn lag_units() {
        assert_eq!(parse_lag("16MB"), Some(16 << 20));
        assert_eq!(parse_lag("10kB"), Some(10 << 10));
        assert_eq!(parse_lag("123"), Some(123));
        assert_eq!(parse_lag("x"), None);
        assert_eq!(parse_query(Some("lag=16%4DB&a+b=c")), {
            let mut q = Query::new();
            q.insert("lag".into(), "16MB".into());
            q.insert("a b".into(), "c".into());
            q
        });
    }
}
