//! The read-only surface: health checks, `/patroni`, `/cluster`, `/history`, `/config`, answered
//! by the pure [`respond`] from a [`NodeStatus`] snapshot (every code is tested without a server).

use axum::http::{Method, StatusCode};
use praetor_dcs::summary;
use serde_json::{json, Value};

use super::NodeStatus;
use super::{parse_lag, Query};

/// Health paths: each answers 200 or 503 with the status body; HEAD and OPTIONS answer the status only.
pub(super) const HEALTH_PATHS: &[&str] = &[
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

/// Whether the answer to `method path?query` shows or depends on this member's WAL positions:
/// `GET /patroni` and every health check's body, and a health check's code with `?lag=`. Those
/// are answered with the positions read at the request ([`super::ApiContext::live_snapshot`]), as
/// Patroni reads them at every such request; a load balancer's plain `OPTIONS /primary` costs no
/// query. `path` as [`super::dispatch`] normalised it (no trailing slash).
pub fn reads_positions(method: &Method, path: &str, query: &Query) -> bool {
    match *method {
        Method::GET => path == "/patroni" || HEALTH_PATHS.contains(&path),
        Method::HEAD | Method::OPTIONS => HEALTH_PATHS.contains(&path) && query.contains_key("lag"),
        _ => false,
    }
}

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
        "/failsafe" => match st.cluster.as_ref().and_then(|c| c.failsafe.as_ref()) {
            Some(f) => (StatusCode::OK, Some(json!(f))),
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
    let standby_leader_ok =
        || st.holds_lock() && st.role == praetor_dcs::Role::StandbyLeader && tags_match();
    match path {
        "/" | "/primary" | "/master" | "/read-write" => leader_ok(),
        "/leader" => st.holds_lock() && tags_match(),
        "/standby-leader" | "/standby_leader" => standby_leader_ok(),
        "/replica" => replica_ok(),
        // Patroni 4 (api.py): the primary or the standby leader, else what /replica says.
        "/read-only" => leader_ok() || standby_leader_ok() || replica_ok(),
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

/// Patroni's `GET /cluster` document.
pub fn cluster_json(st: &NodeStatus) -> Value {
    let Some(c) = &st.cluster else {
        return json!({"members": []});
    };
    let mut members = serde_json::to_value(summary::summarize(c)).unwrap_or_else(|_| json!([]));
    if let Some(list) = members.as_array_mut() {
        for m in list {
            let name = m["name"].as_str().unwrap_or_default().to_string();
            let Some(member) = c.member(&name) else {
                continue;
            };
            if let Some(r) = member.data.extra.get("scheduled_restart") {
                m["scheduled_restart"] = r.clone();
            }
            if let Some(r) = &member.data.pending_restart_reason {
                m["pending_restart_reason"] = r.clone();
            }
        }
    }
    let mut v = json!({ "members": members, "scope": st.scope });
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

#[cfg(test)]
mod tests {
    use super::super::parse_query;
    use super::*;
    use crate::postgres::ServerStatus;
    use praetor_dcs::{Cluster, Leader, Member, MemberData, MemberState, Role, Status};
    use std::sync::Arc;

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
        // The lock holder of a standby cluster: in recovery, role standby_leader.
        let mut standby_leader = node("s", "s", true, 100 << 20);
        standby_leader.role = Role::StandbyLeader;
        let rows: Vec<(&str, &str, &NodeStatus, u16)> = vec![
            ("/standby-leader", "", &standby_leader, 200),
            ("/standby_leader", "", &standby_leader, 200),
            ("/leader", "", &standby_leader, 200),
            ("/primary", "", &standby_leader, 503),
            ("/read-write", "", &standby_leader, 503),
            ("/replica", "", &standby_leader, 503),
            ("/read-only", "", &standby_leader, 200),
            ("/standby-leader", "", &replica, 503),
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

    /// A [`super::super::WalProbe`] answering fixed positions, counting its calls.
    struct FixedProbe(
        Option<crate::postgres::instance::WalPositions>,
        std::sync::atomic::AtomicUsize,
    );

    #[async_trait::async_trait]
    impl super::super::WalProbe for FixedProbe {
        async fn wal_positions(&self) -> Option<crate::postgres::instance::WalPositions> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.0
        }
    }

    /// `method path?query` through [`super::super::dispatch`] with `st` as the loop's snapshot and
    /// `probe` answering: the status code, the `xlog` document and how often the probe was asked.
    async fn ask(
        st: NodeStatus,
        probe: Option<crate::postgres::instance::WalPositions>,
        method: Method,
        path: &str,
        query: Option<&str>,
    ) -> (u16, serde_json::Value, usize) {
        let (_tx, rx) = tokio::sync::watch::channel(Arc::new(st));
        let (cmd, _cmd_rx) = tokio::sync::mpsc::channel(1);
        let mut ctx = super::super::ApiContext::new(rx, cmd);
        let probe = Arc::new(FixedProbe(probe, Default::default()));
        ctx.wal_probe = Some(probe.clone());
        let conn = super::super::ConnInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            client_cert: false,
        };
        let reply = super::super::dispatch(
            &ctx,
            conn,
            &method,
            path,
            query,
            &Default::default(),
            &Default::default(),
        )
        .await;
        let xlog = match reply.body {
            super::super::ReplyBody::Json(v) => v["xlog"].clone(),
            _ => serde_json::Value::Null,
        };
        (
            reply.code.as_u16(),
            xlog,
            probe.1.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    async fn patroni_xlog(
        st: NodeStatus,
        probe: Option<crate::postgres::instance::WalPositions>,
    ) -> (serde_json::Value, usize) {
        let (_, xlog, asked) = ask(st, probe, Method::GET, "/patroni", None).await;
        (xlog, asked)
    }

    #[tokio::test]
    async fn patroni_answers_the_positions_the_server_reports_now_not_the_loops() {
        use crate::postgres::instance::WalPositions;
        let replica_now = WalPositions {
            in_recovery: true,
            current_lsn: None,
            received_lsn: Some(300),
            replayed_lsn: Some(250),
        };
        // A replica whose loop last saw 42: the server's positions now.
        let (xlog, asked) = patroni_xlog(node("b", "a", true, 42), Some(replica_now)).await;
        assert_eq!(
            (
                xlog["received_location"].clone(),
                xlog["replayed_location"].clone(),
                asked
            ),
            (300.into(), 250.into(), 1)
        );
        // A leader: its current position now.
        let leader_now = WalPositions {
            in_recovery: false,
            current_lsn: Some(9000),
            received_lsn: None,
            replayed_lsn: None,
        };
        let (xlog, _) = patroni_xlog(node("a", "a", false, 7), Some(leader_now)).await;
        assert_eq!(xlog["location"], 9000);
        // Promoted since the loop's snapshot: the snapshot's positions, which match its other fields.
        let (xlog, _) = patroni_xlog(node("b", "a", true, 42), Some(leader_now)).await;
        assert_eq!(xlog["received_location"], 42);
        // The server does not answer in time: the snapshot.
        let (xlog, asked) = patroni_xlog(node("b", "a", true, 42), None).await;
        assert_eq!((xlog["received_location"].clone(), asked), (42.into(), 1));
        // PostgreSQL not running: nothing to ask.
        let mut stopped = node("b", "a", true, 42);
        stopped.server = None;
        stopped.state = MemberState::Stopped;
        let (_, asked) = patroni_xlog(stopped, Some(replica_now)).await;
        assert_eq!(asked, 0);
    }

    #[tokio::test]
    async fn a_lag_health_check_compares_the_position_read_now_with_the_leaders() {
        use crate::postgres::instance::WalPositions;
        // The loop saw 99 MiB; the leader's last published position is 100 MiB; the server has
        // received 100.5 MiB by now (the leader wrote on since it published).
        let now = WalPositions {
            in_recovery: true,
            current_lsn: None,
            received_lsn: Some((100 << 20) + (512 << 10)),
            replayed_lsn: Some(100 << 20),
        };
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            let stale = ask(
                node("b", "a", true, 99 << 20),
                None,
                method.clone(),
                "/replica",
                Some("lag=512kB"),
            )
            .await;
            assert_eq!(stale.0, 503, "{method}: 1 MiB behind as the loop saw it");
            let live = ask(
                node("b", "a", true, 99 << 20),
                Some(now),
                method.clone(),
                "/replica",
                Some("lag=512kB"),
            )
            .await;
            assert_eq!(
                (live.0, live.2),
                (200, 1),
                "{method}: caught up as the server says now"
            );
        }
        // A check whose code does not depend on positions asks nothing, unless its body shows them.
        for (method, path, asked) in [
            (Method::OPTIONS, "/primary", 0),
            (Method::GET, "/primary", 1),
            (Method::GET, "/cluster", 0),
        ] {
            let (code, _, n) = ask(
                node("a", "a", false, 7),
                Some(now),
                method.clone(),
                path,
                None,
            )
            .await;
            assert_eq!((code, n), (200, asked), "{method} {path}");
        }
    }
}
