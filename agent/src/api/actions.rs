//! The unsafe methods, with Patroni's messages and codes (`patroni/api.py`):
//! `POST /restart` (conditions, schedule), `DELETE /restart`, `POST /reload`, `POST /reinitialize`,
//! `POST /switchover` and `/failover` (200 done, 202 scheduled, 400 bad input, 412 not possible,
//! 422 past schedule, 503 DCS trouble), `DELETE /switchover`, `PATCH /config` (merge patch,
//! 409 on a concurrent change), `PUT /config`, `POST /failsafe`.
//!
//! Validation is done by pure functions ([`parse_restart_request`], [`restart_matches`],
//! [`static_failover_check`], [`candidate_limitation`]) before anything is written, so a refused
//! request changes nothing in the DCS.

use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use praetor_config::{DynamicConfig, SyncMode};
use praetor_dcs::{Cluster, Expect, Failover, Role};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

use super::schedule::{format_iso, parse_schedule, RestartFilter, ScheduledRestart};
use super::{
    AgentCommand, ApiContext, CommandError, CommandRequest, FailsafeContact, NodeStatus, Query,
    Reply,
};

/// Reads a JSON object body. An empty body is `{}` when `optional`; anything that is not a JSON
/// object is 400.
pub fn read_json(body: &Bytes, optional: bool) -> Result<Map<String, Value>, Reply> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if optional {
            Ok(Map::new())
        } else {
            Err(Reply::text(
                StatusCode::BAD_REQUEST,
                "a JSON object body is required",
            ))
        };
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) if optional || !m.is_empty() => Ok(m),
        Ok(Value::Object(_)) => Err(Reply::text(
            StatusCode::BAD_REQUEST,
            "the JSON object must not be empty",
        )),
        Ok(other) => Err(Reply::text(
            StatusCode::BAD_REQUEST,
            format!("expected a JSON object, got {other}"),
        )),
        Err(e) => Err(Reply::text(
            StatusCode::BAD_REQUEST,
            format!("malformed JSON body: {e}"),
        )),
    }
}

fn parse_bool(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.to_ascii_lowercase().as_str(), "true" | "on" | "yes" | "1"),
        Value::Number(n) => n.as_i64().is_some_and(|n| n != 0),
        _ => false,
    }
}

/// Patroni's `postgres_version_to_int`: `15.3` → 150003, `9.6.3` → 90603.
pub fn postgres_version_to_int(v: &str) -> Result<i32, String> {
    let bad = || format!("Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {v}");
    let parts: Vec<i32> = v
        .split('.')
        .map(|p| p.trim().parse::<i32>().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let parts = match parts.as_slice() {
        [major, minor] if *major >= 10 => vec![*major, 0, *minor],
        [_, _, _] => parts.clone(),
        _ => return Err(bad()),
    };
    if parts.iter().any(|p| !(0..100).contains(p)) {
        return Err(bad());
    }
    Ok(parts[0] * 10000 + parts[1] * 100 + parts[2])
}

/// Parses a `POST /restart` body into its filter and schedule (Patroni's checks, in its order).
pub fn parse_restart_request(
    req: &Map<String, Value>,
    paused: bool,
    now: OffsetDateTime,
) -> Result<(RestartFilter, Option<OffsetDateTime>), (StatusCode, String)> {
    if paused && req.contains_key("schedule") {
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            "Can't schedule restart in the paused state".into(),
        ));
    }
    let mut f = RestartFilter::default();
    let mut at = None;
    for (k, v) in req {
        match k.as_str() {
            "schedule" => {
                let s = v.as_str().unwrap_or_default();
                at = Some(parse_schedule(s, "restart", now)?);
            }
            "role" => {
                f.role =
                    match v.as_str() {
                        Some("primary") | Some("master") => Some(Role::Primary),
                        Some("standby_leader") => Some(Role::StandbyLeader),
                        Some("replica") => Some(Role::Replica),
                        _ => return Err((
                            StatusCode::BAD_REQUEST,
                            "PostgreSQL role should be either primary, standby_leader, or replica"
                                .into(),
                        )),
                    }
            }
            "postgres_version" => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                f.postgres_version =
                    Some(postgres_version_to_int(&text).map_err(|e| (StatusCode::BAD_REQUEST, e))?);
            }
            "timeout" => {
                let secs = match v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().trim_end_matches('s').trim().parse().ok(),
                    _ => None,
                };
                match secs {
                    Some(s) if s > 0.0 => f.timeout = Some(s.ceil() as u64),
                    _ => {
                        return Err((
                            StatusCode::BAD_REQUEST,
                            "Timeout should be a positive number of seconds".into(),
                        ))
                    }
                }
            }
            "restart_pending" => f.restart_pending = parse_bool(v),
            other => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!("Unknown filter for the scheduled restart: {other}"),
                ))
            }
        }
    }
    Ok((f, at))
}

/// Patroni's `restart_matches`: `Err(reason)` when a condition does not hold.
pub fn restart_matches(f: &RestartFilter, st: &NodeStatus) -> Result<(), &'static str> {
    if let Some(role) = f.role {
        if st.postgres_role() != Some(role) {
            return Err("host role mismatch");
        }
    }
    if let Some(v) = f.postgres_version {
        let running = st.server.as_ref().map(|s| s.server_version).unwrap_or(0);
        if v <= running {
            return Err("postgres version mismatch");
        }
    }
    if f.restart_pending && !st.pending_restart {
        return Err("pending restart flag is not set");
    }
    Ok(())
}

/// Sends `command` to the loop and waits (up to 60 s) for its answer.
pub async fn send_command(ctx: &ApiContext, command: AgentCommand) -> Result<String, CommandError> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    ctx.commands
        .send(CommandRequest { command, reply })
        .await
        .map_err(|_| CommandError::from("the HA loop is not running"))?;
    match tokio::time::timeout(Duration::from_secs(60), answer).await {
        Ok(Ok(r)) => r,
        _ => Err("no answer from the HA loop".into()),
    }
}

/// `POST /restart`.
pub async fn restart(ctx: &ApiContext, body: &Bytes) -> Reply {
    let req = match read_json(body, true) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let st = ctx.snapshot();
    let (filter, at) = match parse_restart_request(&req, st.pause, OffsetDateTime::now_utc()) {
        Ok(x) => x,
        Err((code, msg)) => return Reply::text(code, msg),
    };
    match at {
        Some(at) => {
            let r = ScheduledRestart {
                at,
                filter,
                postmaster_start_time: st.server.as_ref().map(|s| s.postmaster_start_time.clone()),
            };
            if ctx.restarts.set(r) {
                tracing::info!("restart scheduled at {}", format_iso(at));
                Reply::text(StatusCode::ACCEPTED, "Restart scheduled")
            } else {
                Reply::text(StatusCode::CONFLICT, "Another restart is already scheduled")
            }
        }
        None => {
            let (code, msg) = perform_restart(ctx, &filter).await;
            Reply::text(code, msg)
        }
    }
}

/// Restarts PostgreSQL if `filter` matches and waits until it runs again (up to its `timeout`,
/// default 120 s): Patroni's `Ha.restart` answers.
pub async fn perform_restart(ctx: &ApiContext, filter: &RestartFilter) -> (StatusCode, String) {
    let st = ctx.snapshot();
    if let Err(why) = restart_matches(filter, &st) {
        tracing::info!("not proceeding with the restart: {why}");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "restart conditions are not satisfied".into(),
        );
    }
    let before = st.server.as_ref().map(|s| s.postmaster_start_time.clone());
    if let Err(e) = send_command(ctx, AgentCommand::Restart).await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("restart failed: {e}"),
        );
    }
    let limit = Duration::from_secs(filter.timeout.unwrap_or(120));
    let mut rx = ctx.status.clone();
    let restarted = tokio::time::timeout(limit, async {
        loop {
            {
                let s = rx.borrow_and_update();
                let started = s.server.as_ref().map(|x| x.postmaster_start_time.clone());
                if s.is_running() && started.is_some() && started != before {
                    return true;
                }
            }
            if rx.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    match restarted {
        Ok(true) => (StatusCode::OK, "restarted successfully".into()),
        Ok(false) => (StatusCode::SERVICE_UNAVAILABLE, "restart failed".into()),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "postgres is still starting".into(),
        ),
    }
}

/// `DELETE /restart`.
pub fn delete_restart(ctx: &ApiContext) -> Reply {
    if ctx.restarts.clear() {
        Reply::text(StatusCode::OK, "scheduled restart deleted")
    } else {
        Reply::text(StatusCode::NOT_FOUND, "no restarts are scheduled")
    }
}

/// `POST /reload`: the agent re-reads its configuration file, applies what changed (see
/// [`crate::reload`]), rewrites PostgreSQL's files and reloads it; 202 "reload scheduled" as
/// Patroni. 412 with the reason when the new file is invalid (the running configuration is kept;
/// the reason names the key path), 503 when the loop is busy or PostgreSQL could not be reloaded.
pub async fn reload(ctx: &ApiContext) -> Reply {
    match send_command(ctx, AgentCommand::Reload).await {
        Ok(_) => Reply::text(StatusCode::ACCEPTED, "reload scheduled"),
        Err(CommandError::Refused(why)) => Reply::text(StatusCode::PRECONDITION_FAILED, why),
        Err(e) => Reply::text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /reinitialize {force, from_leader}` (also as query parameters): 200 "reinitialize
/// started" once the data directory is removed (the loop clones it again); 412 with the reason when
/// [`crate::ha::guards::reinitialize`] refuses (Patroni answers these with 503; its words are kept);
/// 503 when the loop is busy or the removal failed.
pub async fn reinitialize(ctx: &ApiContext, body: &Bytes, query: &Query) -> Reply {
    let req = match read_json(body, true) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let flag = |k: &str| {
        req.get(k).is_some_and(parse_bool)
            || query
                .get(k)
                .is_some_and(|v| parse_bool(&Value::String(v.clone())))
    };
    let command = AgentCommand::Reinitialize {
        force: flag("force"),
        from_leader: flag("from_leader"),
    };
    match send_command(ctx, command).await {
        Ok(_) => Reply::text(StatusCode::OK, "reinitialize started"),
        Err(CommandError::Refused(why)) => Reply::text(StatusCode::PRECONDITION_FAILED, why),
        Err(CommandError::Failed(why)) => Reply::text(StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Which request: a switchover (from a named leader) or a failover (to a named candidate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverKind {
    /// `POST /switchover`.
    Switchover,
    /// `POST /failover`.
    Failover,
}

impl FailoverKind {
    fn name(self) -> &'static str {
        match self {
            FailoverKind::Switchover => "switchover",
            FailoverKind::Failover => "failover",
        }
    }

    fn title(self) -> &'static str {
        match self {
            FailoverKind::Switchover => "Switchover",
            FailoverKind::Failover => "Failover",
        }
    }

    fn past(self) -> &'static str {
        match self {
            FailoverKind::Switchover => "switched",
            FailoverKind::Failover => "failed",
        }
    }
}

/// The dynamic configuration in the DCS (defaults when absent or unreadable).
pub fn dynamic_of(cluster: &Cluster) -> DynamicConfig {
    cluster
        .config
        .as_ref()
        .and_then(|c| DynamicConfig::from_json(&c.value).ok())
        .unwrap_or_default()
}

/// The checks on the DCS view alone (Patroni's `is_failover_possible` before asking members):
/// the members whose health decides, or why the request is not possible (412).
pub fn static_failover_check(
    kind: FailoverKind,
    leader: Option<&str>,
    candidate: Option<&str>,
    cluster: &Cluster,
) -> Result<Vec<String>, String> {
    let current = cluster.leader.as_ref().map(|l| l.name.as_str());
    if let Some(l) = leader {
        if current != Some(l) {
            return Err(match current {
                Some(c) => format!("leader name does not match: {l} is not the leader ({c} is)"),
                None => {
                    format!("leader name does not match: {l} is not the leader (there is none)")
                }
            });
        }
    }
    let dynamic = dynamic_of(cluster);
    let sync_mode = dynamic.synchronous_mode != SyncMode::Off;
    let sync: Vec<String> = cluster
        .sync
        .as_ref()
        .map(|s| s.value.members())
        .unwrap_or_default();
    if let Some(c) = candidate {
        if cluster.member(c).is_none() {
            return Err(format!("candidate {c} does not exist"));
        }
        if kind == FailoverKind::Switchover && sync_mode && !sync.iter().any(|s| s == c) {
            return Err(format!(
                "candidate name does not match with sync_standby ({c} is not a synchronous standby)"
            ));
        }
        return Ok(vec![c.to_string()]);
    }
    let members: Vec<String> = if sync_mode {
        sync.into_iter()
            .filter(|s| cluster.member(s).is_some())
            .collect()
    } else {
        cluster
            .members
            .iter()
            .filter(|m| Some(m.name.as_str()) != current && m.data.api_url.is_some())
            .map(|m| m.name.clone())
            .collect()
    };
    if members.is_empty() {
        return Err(if sync_mode {
            format!("{} is not possible: can not find sync_standby", kind.name())
        } else {
            format!(
                "{} is not possible: cluster does not have members except leader",
                kind.name()
            )
        });
    }
    Ok(members)
}

/// Why a member cannot be promoted, from its `/patroni` answer (`None` when it can): not
/// reachable, not allowed to promote (`nofailover`, `failover_priority: 0`), not running, or more
/// than `maximum_lag_on_failover` bytes behind `leader_position`.
pub fn candidate_limitation(
    answer: Option<&Value>,
    leader_position: Option<u64>,
    maximum_lag_on_failover: u64,
) -> Option<String> {
    let Some(v) = answer else {
        return Some("is not reachable".into());
    };
    let tags = &v["tags"];
    if tags["nofailover"].as_bool() == Some(true)
        || tags["nofailover"].as_str() == Some("true")
        || tags["failover_priority"].as_i64() == Some(0)
    {
        return Some("is not allowed to promote (nofailover)".into());
    }
    if v["state"].as_str() != Some("running") {
        return Some(format!(
            "is not running (state: {})",
            v["state"].as_str().unwrap_or("unknown")
        ));
    }
    let xlog = &v["xlog"];
    let position = ["location", "received_location", "replayed_location"]
        .iter()
        .filter_map(|k| xlog[*k].as_u64())
        .max();
    if let (Some(leader), Some(pos)) = (leader_position, position) {
        let lag = leader.saturating_sub(pos);
        if lag > maximum_lag_on_failover {
            return Some(format!(
                "is lagging: {lag} bytes behind the leader (maximum_lag_on_failover is {maximum_lag_on_failover})"
            ));
        }
    }
    None
}

async fn fetch_status(ctx: &ApiContext, cluster: &Cluster, name: &str) -> Option<Value> {
    let url = cluster.member(name)?.data.api_url.clone()?;
    let base = super::client::api_base(&url);
    let r = ctx
        .client
        .request("GET", &format!("{base}/patroni"), None)
        .await
        .ok()?;
    r.json().ok()
}

/// The live part: asks the members how they are; `Ok` when one can be promoted.
async fn live_failover_check(
    ctx: &ApiContext,
    kind: FailoverKind,
    candidate: Option<&str>,
    members: &[String],
    cluster: &Cluster,
) -> Result<(), String> {
    let dynamic = dynamic_of(cluster);
    let leader_position = match cluster.leader.as_ref() {
        Some(l) => match fetch_status(ctx, cluster, &l.name).await {
            Some(v) => v["xlog"]["location"].as_u64(),
            None => cluster.leader_optime(),
        },
        None => None,
    };
    let answers =
        futures::future::join_all(members.iter().map(|m| fetch_status(ctx, cluster, m))).await;
    let mut reasons = Vec::new();
    for (m, a) in members.iter().zip(answers) {
        match candidate_limitation(a.as_ref(), leader_position, dynamic.maximum_lag_on_failover) {
            None => return Ok(()),
            Some(why) => reasons.push(format!("{m} {why}")),
        }
    }
    Err(match candidate {
        Some(_) => format!(
            "{} is not possible: candidate {}",
            kind.name(),
            reasons.join("; ")
        ),
        None => format!(
            "{} is not possible: no good candidates have been found ({})",
            kind.name(),
            reasons.join("; ")
        ),
    })
}

fn text_field(req: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| req.get(*k).and_then(Value::as_str))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// `POST /switchover` and `POST /failover`.
pub async fn failover(ctx: &ApiContext, body: &Bytes, kind: FailoverKind) -> Reply {
    let req = match read_json(body, false) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let leader = text_field(&req, &["leader", "primary", "master"]);
    let candidate = text_field(&req, &["candidate", "member"]);
    let scheduled_at = text_field(&req, &["scheduled_at"]);
    let mut kind = kind;
    tracing::info!(
        "received {} request with leader={} candidate={} scheduled_at={}",
        kind.name(),
        leader.as_deref().unwrap_or("None"),
        candidate.as_deref().unwrap_or("None"),
        scheduled_at.as_deref().unwrap_or("None")
    );
    let bad = |msg: String| Reply::text(StatusCode::BAD_REQUEST, msg);
    if kind == FailoverKind::Failover && candidate.is_none() {
        return bad("Failover could be performed only to a specific candidate".into());
    }
    if kind == FailoverKind::Switchover && leader.is_none() {
        return bad("Switchover could be performed only from a specific leader".into());
    }
    let Some(dcs) = ctx.dcs.clone() else {
        return Reply::text(StatusCode::SERVICE_UNAVAILABLE, "no DCS");
    };
    let cluster = match tokio::time::timeout(Duration::from_secs(5), dcs.load()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("DCS: {e}")),
        Err(_) => return Reply::text(StatusCode::SERVICE_UNAVAILABLE, "DCS: timed out"),
    };
    let paused = dynamic_of(&cluster).pause;
    let mut scheduled = None;
    if let Some(s) = &scheduled_at {
        if kind == FailoverKind::Failover {
            return bad("Failover can't be scheduled".into());
        }
        if paused {
            return bad("Can't schedule switchover in the paused state".into());
        }
        match parse_schedule(s, kind.name(), OffsetDateTime::now_utc()) {
            Ok(t) => scheduled = Some(t),
            Err((code, msg)) => return Reply::text(code, msg),
        }
    }
    if paused && candidate.is_none() {
        return bad("Switchover is possible only to a specific candidate in a paused state".into());
    }
    if kind == FailoverKind::Failover && leader.is_some() {
        tracing::warn!(
            "received failover request with leader specified - performing switchover instead"
        );
        kind = FailoverKind::Switchover;
    }
    if leader.is_some() && leader == candidate {
        return bad("Switchover target and source are the same".into());
    }
    let members =
        match static_failover_check(kind, leader.as_deref(), candidate.as_deref(), &cluster) {
            Ok(m) => m,
            Err(why) => return Reply::text(StatusCode::PRECONDITION_FAILED, why),
        };
    if scheduled.is_none() {
        if let Err(why) =
            live_failover_check(ctx, kind, candidate.as_deref(), &members, &cluster).await
        {
            return Reply::text(StatusCode::PRECONDITION_FAILED, why);
        }
    }
    // A failover while a leader runs is carried out by that leader stepping down for the
    // candidate: name it, so its loop asks the candidate how it is (as for a switchover).
    let key_leader = match (&leader, kind, cluster.leader.as_ref()) {
        (None, FailoverKind::Failover, Some(l)) if Some(&l.name) != candidate.as_ref() => {
            Some(l.name.clone())
        }
        _ => leader.clone(),
    };
    let value = Failover {
        leader: key_leader,
        member: candidate.clone(),
        scheduled_at: scheduled.map(format_iso),
    };
    let expect = match &cluster.failover {
        Some(f) => Expect::Version(f.version),
        None => Expect::Absent,
    };
    if let Err(e) = dcs.set_failover(&value, expect).await {
        tracing::warn!("failed to write failover key into DCS: {e}");
        return Reply::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "failed to write failover key into DCS",
        );
    }
    if scheduled.is_some() {
        return Reply::text(StatusCode::ACCEPTED, format!("{} scheduled", kind.title()));
    }
    let old_leader = cluster.leader.as_ref().map(|l| l.name.clone());
    let dynamic = dynamic_of(&cluster);
    let limit = Duration::from_secs(u64::from((dynamic.ttl * 3).max(30)));
    let (code, msg) = poll_failover_result(ctx, kind, old_leader, candidate, limit).await;
    Reply::text(code, msg)
}

async fn poll_failover_result(
    ctx: &ApiContext,
    kind: FailoverKind,
    old_leader: Option<String>,
    candidate: Option<String>,
    limit: Duration,
) -> (StatusCode, String) {
    let Some(dcs) = ctx.dcs.clone() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "no DCS".into());
    };
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(Ok(c)) = tokio::time::timeout(Duration::from_secs(3), dcs.load()).await else {
            continue;
        };
        if let Some(new) = c.leader.as_ref().map(|l| l.name.clone()) {
            if Some(&new) != old_leader.as_ref() {
                return match &candidate {
                    Some(cand) if *cand != new => (
                        StatusCode::OK,
                        format!(
                            "{}{} over to \"{new}\" instead of \"{cand}\"",
                            kind.past()[..1].to_ascii_uppercase(),
                            &kind.past()[1..]
                        ),
                    ),
                    _ => (
                        StatusCode::OK,
                        format!("Successfully {} over to \"{new}\"", kind.past()),
                    ),
                };
            }
        }
        if c.failover_request().is_none() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("{} failed", kind.title()),
            );
        }
    }
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("{} status unknown", kind.title()),
    )
}

/// `DELETE /switchover`: removes a scheduled switchover.
pub async fn delete_switchover(ctx: &ApiContext) -> Reply {
    let Some(dcs) = ctx.dcs.clone() else {
        return Reply::text(StatusCode::SERVICE_UNAVAILABLE, "no DCS");
    };
    let cluster = match dcs.load().await {
        Ok(c) => c,
        Err(e) => return Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("DCS: {e}")),
    };
    match cluster.failover_request() {
        Some(f) if f.value.scheduled_at.is_some() => match dcs.delete_failover(f.version).await {
            Ok(()) => Reply::text(StatusCode::OK, "scheduled switchover deleted"),
            Err(e) if e.is_cas_conflict() => Reply::text(StatusCode::CONFLICT, e.to_string()),
            Err(e) => Reply::text(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        _ => Reply::text(StatusCode::NOT_FOUND, "no switchover is scheduled"),
    }
}

/// The dotted path of the first key that looks like a password (`*password*`), if any: passwords
/// never go into the DCS.
pub fn find_password(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => m.iter().find_map(|(k, v)| {
            if k.to_ascii_lowercase().contains("password") && !v.is_null() {
                Some(k.clone())
            } else {
                find_password(v).map(|p| format!("{k}.{p}"))
            }
        }),
        Value::Array(a) => a.iter().find_map(find_password),
        _ => None,
    }
}

/// `v` with every password-like value replaced by `********` (configurations written by other
/// tools are shown without their secrets).
pub fn mask_passwords(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if k.to_ascii_lowercase().contains("password") && x.is_string() {
                        *x = json!("********");
                    } else {
                        walk(x);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut v);
    v
}

/// Checks a whole new dynamic configuration: no passwords, and it parses.
pub fn validate_config(v: &Value) -> Result<(), String> {
    if let Some(path) = find_password(v) {
        return Err(format!(
            "{path}: passwords do not belong in the dynamic configuration (it is stored in the DCS in clear)"
        ));
    }
    DynamicConfig::from_json(v)
        .map(|_| ())
        .map_err(|e| format!("invalid configuration: {e}"))
}

/// `PATCH /config`: JSON merge patch onto the DCS `config` key, compare-and-set (409 when it
/// changed in the meantime).
pub async fn patch_config(ctx: &ApiContext, body: &Bytes) -> Reply {
    let patch = match read_json(body, false) {
        Ok(r) => Value::Object(r),
        Err(reply) => return reply,
    };
    let Some(dcs) = ctx.dcs.clone() else {
        return Reply::text(StatusCode::SERVICE_UNAVAILABLE, "no DCS");
    };
    let cluster = match dcs.load().await {
        Ok(c) => c,
        Err(e) => return Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("DCS: {e}")),
    };
    let Some(current) = cluster.config else {
        return Reply::text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the cluster has no configuration in the DCS yet",
        );
    };
    let mut data = current.value.clone();
    let changed = super::merge::merge_patch(&mut data, &patch);
    if let Err(e) = validate_config(&data) {
        return Reply::text(StatusCode::BAD_REQUEST, e);
    }
    if changed {
        match dcs
            .set_config(&data, Expect::Version(current.version))
            .await
        {
            Ok(()) => tracing::info!("dynamic configuration changed through PATCH /config"),
            Err(e) if e.is_cas_conflict() => {
                return Reply::text(
                    StatusCode::CONFLICT,
                    "the configuration changed in the meantime; read it again",
                )
            }
            Err(e) => return Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("DCS: {e}")),
        }
    }
    Reply::json(StatusCode::OK, mask_passwords(data))
}

/// `PUT /config`: replaces the DCS `config` key.
pub async fn put_config(ctx: &ApiContext, body: &Bytes) -> Reply {
    let new = match read_json(body, false) {
        Ok(r) => Value::Object(r),
        Err(reply) => return reply,
    };
    if let Err(e) = validate_config(&new) {
        return Reply::text(StatusCode::BAD_REQUEST, e);
    }
    let Some(dcs) = ctx.dcs.clone() else {
        return Reply::text(StatusCode::SERVICE_UNAVAILABLE, "no DCS");
    };
    for _ in 0..3 {
        let cluster = match dcs.load().await {
            Ok(c) => c,
            Err(e) => return Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("DCS: {e}")),
        };
        let expect = match &cluster.config {
            Some(c) if c.value == new => return Reply::json(StatusCode::OK, mask_passwords(new)),
            Some(c) => Expect::Version(c.version),
            None => Expect::Absent,
        };
        match dcs.set_config(&new, expect).await {
            Ok(()) => {
                tracing::info!("dynamic configuration replaced through PUT /config");
                return Reply::json(StatusCode::OK, mask_passwords(new));
            }
            Err(e) if e.is_cas_conflict() => continue,
            Err(e) => return Reply::text(StatusCode::SERVICE_UNAVAILABLE, format!("DCS: {e}")),
        }
    }
    Reply::text(
        StatusCode::CONFLICT,
        "the configuration keeps changing; try again",
    )
}

/// `POST /failsafe`: the leader's heartbeat while the DCS is down (failsafe mode). Answers 200
/// `Accepted` only when this member's own last view agrees (see [`crate::ha::failsafe::answer`]):
/// 502 when `failsafe_mode` is off, 500 with the reason otherwise (Patroni's `do_POST_failsafe`),
/// 400 when the body has no `name`. An accepted contact is kept for the loop, and recorded in the
/// data directory before the answer ([`crate::failsafe_record`]: the promise outlives an agent
/// restart); 500 when it cannot be recorded, since a promise that may be forgotten is not given.
pub fn post_failsafe(ctx: &ApiContext, body: &Bytes) -> Reply {
    let req = match read_json(body, false) {
        Ok(r) => r,
        Err(reply) => return reply,
    };
    let Some(caller) = req.get("name").and_then(Value::as_str).map(str::to_string) else {
        return Reply::text(
            StatusCode::BAD_REQUEST,
            "name: the calling leader's member name (a string) is required",
        );
    };
    let st = ctx.snapshot();
    let last_leader = st
        .cluster
        .as_ref()
        .and_then(|c| c.leader.as_ref())
        .map(|l| l.name.as_str());
    match crate::ha::failsafe::answer(st.failsafe_mode, st.is_primary(), last_leader, &caller) {
        crate::ha::failsafe::FailsafeAnswer::Accepted => {
            if let Some((data_dir, me)) = &ctx.failsafe_record {
                let now_ms = crate::failsafe_record::now_unix_ms();
                if let Err(e) = crate::failsafe_record::store(data_dir, me, &caller, now_ms) {
                    tracing::warn!("refused the failsafe confirmation asked by {caller}: cannot record it: {e}");
                    return Reply::text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("cannot record the confirmation in the data directory: {e}"),
                    );
                }
            }
            *ctx.failsafe.lock().unwrap_or_else(|p| p.into_inner()) = Some(FailsafeContact {
                at: std::time::Instant::now(),
                body: Value::Object(req),
            });
            Reply::text(StatusCode::OK, "Accepted")
        }
        crate::ha::failsafe::FailsafeAnswer::Disabled => Reply::text(
            StatusCode::BAD_GATEWAY,
            "failsafe_mode is not enabled in the dynamic configuration",
        ),
        crate::ha::failsafe::FailsafeAnswer::Refused(why) => {
            tracing::warn!("refused the failsafe confirmation asked by {caller}: {why}");
            Reply::text(StatusCode::INTERNAL_SERVER_ERROR, why)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::postgres::ServerStatus;
    use praetor_dcs::{Leader, Member, MemberData, SyncState, Versioned};

    fn now() -> OffsetDateTime {
        OffsetDateTime::parse(
            "2030-01-01T00:00:00Z",
            &time::format_description::well_known::Rfc3339,
        )
        .unwrap()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn bodies() {
        assert_eq!(read_json(&Bytes::from_static(b""), true), Ok(Map::new()));
        for bad in [&b""[..], b"{", b"[1]", b"{}", b"\"x\""] {
            let r = read_json(&Bytes::copy_from_slice(bad), false).unwrap_err();
            assert_eq!(r.code, StatusCode::BAD_REQUEST, "{bad:?}");
        }
        assert!(read_json(&Bytes::from_static(b"{\"a\":1}"), false).is_ok());
    }

    #[test]
    fn versions() {
        assert_eq!(postgres_version_to_int("15.3"), Ok(150003));
        assert_eq!(postgres_version_to_int("9.6.3"), Ok(90603));
        assert_eq!(postgres_version_to_int("10.1"), Ok(100001));
        assert!(postgres_version_to_int("15").is_err());
        assert!(postgres_version_to_int("9.6").is_err());
        assert!(postgres_version_to_int("x.y").is_err());
    }

    #[test]
    fn restart_requests_table() {
        let rows: Vec<(Value, bool, Result<(), u16>)> = vec![
            (json!({}), false, Ok(())),
            (
                json!({"restart_pending": true, "role": "replica"}),
                false,
                Ok(()),
            ),
            (
                json!({"role": "master", "postgres_version": "16.1", "timeout": "30s"}),
                false,
                Ok(()),
            ),
            (json!({"role": "leader"}), false, Err(400)),
            (json!({"timeout": 0}), false, Err(400)),
            (json!({"postgres_version": "16"}), false, Err(400)),
            (json!({"bogus": 1}), false, Err(400)),
            (
                json!({"schedule": "2031-01-01T00:00:00+00:00"}),
                false,
                Ok(()),
            ),
            (
                json!({"schedule": "2031-01-01T00:00:00+00:00"}),
                true,
                Err(500),
            ),
            (
                json!({"schedule": "2020-01-01T00:00:00+00:00"}),
                false,
                Err(422),
            ),
            (json!({"schedule": "2031-01-01T00:00:00"}), false, Err(400)),
        ];
        for (body, paused, want) in rows {
            let got = parse_restart_request(&obj(body.clone()), paused, now())
                .map(|_| ())
                .map_err(|(c, _)| c.as_u16());
            assert_eq!(got, want, "{body} paused={paused}");
        }
        let (f, at) =
            parse_restart_request(&obj(json!({"role": "replica", "timeout": 5})), false, now())
                .unwrap();
        assert_eq!(f.role, Some(Role::Replica));
        assert_eq!(f.timeout, Some(5));
        assert_eq!(at, None);
    }

    fn node(in_recovery: bool, version: i32, pending: bool) -> NodeStatus {
        NodeStatus {
            name: "a".into(),
            state: praetor_dcs::MemberState::Running,
            server: Some(ServerStatus {
                in_recovery,
                server_version: version,
                ..Default::default()
            }),
            pending_restart: pending,
            ..Default::default()
        }
    }

    #[test]
    fn restart_conditions() {
        let replica = node(true, 150004, false);
        let f = |role, v, pending| RestartFilter {
            role,
            postgres_version: v,
            restart_pending: pending,
            timeout: None,
        };
        assert_eq!(restart_matches(&f(None, None, false), &replica), Ok(()));
        assert_eq!(
            restart_matches(&f(Some(Role::Primary), None, false), &replica),
            Err("host role mismatch")
        );
        assert_eq!(
            restart_matches(&f(Some(Role::Replica), None, false), &replica),
            Ok(())
        );
        assert_eq!(
            restart_matches(&f(None, Some(160000), false), &replica),
            Ok(())
        );
        assert_eq!(
            restart_matches(&f(None, Some(150004), false), &replica),
            Err("postgres version mismatch")
        );
        assert_eq!(
            restart_matches(&f(None, None, true), &replica),
            Err("pending restart flag is not set")
        );
        assert_eq!(
            restart_matches(&f(None, None, true), &node(true, 1, true)),
            Ok(())
        );
        assert_eq!(
            restart_matches(&f(Some(Role::Primary), None, false), &node(false, 1, false)),
            Ok(())
        );
    }

    fn cluster(sync: Option<&str>, sync_mode: bool) -> Cluster {
        let m = |name: &str| Member {
            name: name.into(),
            data: MemberData {
                api_url: Some(format!("http://127.0.0.1:1/{name}")),
                ..Default::default()
            },
            version: 1,
        };
        Cluster {
            leader: Some(Leader {
                name: "a".into(),
                version: 1,
            }),
            members: vec![m("a"), m("b"), m("c")],
            sync: sync.map(|s| Versioned {
                value: SyncState {
                    leader: Some("a".into()),
                    sync_standby: Some(s.into()),
                    quorum: None,
                },
                version: 1,
            }),
            config: Some(Versioned {
                value: json!({"synchronous_mode": sync_mode}),
                version: 1,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn static_failover_checks() {
        let c = cluster(None, false);
        let sw = FailoverKind::Switchover;
        assert_eq!(
            static_failover_check(sw, Some("a"), Some("b"), &c),
            Ok(vec!["b".to_string()])
        );
        assert_eq!(
            static_failover_check(sw, Some("a"), None, &c),
            Ok(vec!["b".to_string(), "c".to_string()])
        );
        assert!(static_failover_check(sw, Some("b"), None, &c)
            .unwrap_err()
            .starts_with("leader name does not match"));
        assert_eq!(
            static_failover_check(sw, Some("a"), Some("zz"), &c),
            Err("candidate zz does not exist".into())
        );
        let s = cluster(Some("c"), true);
        assert!(static_failover_check(sw, Some("a"), Some("b"), &s)
            .unwrap_err()
            .starts_with("candidate name does not match with sync_standby"));
        assert_eq!(
            static_failover_check(sw, Some("a"), None, &s),
            Ok(vec!["c".to_string()])
        );
        let none = cluster(None, true);
        assert_eq!(
            static_failover_check(sw, Some("a"), None, &none),
            Err("switchover is not possible: can not find sync_standby".into())
        );
    }

    #[test]
    fn candidate_limitations() {
        let ok = json!({"state": "running", "tags": {}, "xlog": {"received_location": 100, "replayed_location": 90}});
        assert_eq!(candidate_limitation(Some(&ok), Some(150), 1000), None);
        assert!(candidate_limitation(Some(&ok), Some(5000), 1000)
            .unwrap()
            .starts_with("is lagging: 4900 bytes"));
        assert!(candidate_limitation(None, None, 0)
            .unwrap()
            .contains("not reachable"));
        let nofail = json!({"state": "running", "tags": {"nofailover": true}});
        assert!(candidate_limitation(Some(&nofail), None, 0)
            .unwrap()
            .contains("nofailover"));
        let prio0 = json!({"state": "running", "tags": {"failover_priority": 0}});
        assert!(candidate_limitation(Some(&prio0), None, 0).is_some());
        let stopped = json!({"state": "stopped", "tags": {}});
        assert!(candidate_limitation(Some(&stopped), None, 0)
            .unwrap()
            .contains("not running"));
    }

    /// A DCS whose every write loses the compare-and-set race.
    struct ConflictingDcs(Cluster);

    #[async_trait::async_trait]
    impl praetor_dcs::Dcs for ConflictingDcs {
        async fn load(&self) -> Result<Cluster, praetor_dcs::DcsError> {
            Ok(self.0.clone())
        }
        async fn create_initialize(&self, _: &str) -> Result<bool, praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn update_initialize(&self, _: &str, _: &str) -> Result<(), praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn cancel_initialize(&self, _: &str) -> Result<(), praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn acquire_leader(&self) -> Result<bool, praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn renew_leader(&self) -> Result<bool, praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn release_leader(&self) -> Result<bool, praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn touch_member(&self, _: &MemberData) -> Result<(), praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn delete_member(&self) -> Result<(), praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn set_config(&self, _: &Value, _: Expect) -> Result<(), praetor_dcs::DcsError> {
            Err(praetor_dcs::DcsError::CasConflict {
                key: "config".into(),
            })
        }
        async fn set_failover(&self, _: &Failover, _: Expect) -> Result<(), praetor_dcs::DcsError> {
            Err(praetor_dcs::DcsError::CasConflict {
                key: "failover".into(),
            })
        }
        async fn delete_failover(&self, _: i64) -> Result<(), praetor_dcs::DcsError> {
            Err(praetor_dcs::DcsError::CasConflict {
                key: "failover".into(),
            })
        }
        async fn set_history(
            &self,
            _: &[praetor_dcs::HistoryEntry],
            _: Expect,
        ) -> Result<(), praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn set_status(&self, _: &praetor_dcs::Status) -> Result<(), praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn set_sync(&self, _: &SyncState, _: Expect) -> Result<(), praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn set_failsafe(
            &self,
            _: &std::collections::BTreeMap<String, String>,
        ) -> Result<(), praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn set_proxy_state(
            &self,
            _: &str,
            _: &praetor_dcs::ProxyState,
        ) -> Result<(), praetor_dcs::DcsError> {
            unreachable!()
        }
        async fn set_ttl(&self, _: u32) -> Result<(), praetor_dcs::DcsError> {
            unreachable!()
        }
        fn granted_ttl(&self) -> Option<std::time::Duration> {
            None
        }
        fn watch(&self) -> tokio::sync::broadcast::Receiver<praetor_dcs::DcsEvent> {
            tokio::sync::broadcast::channel(1).1
        }
        async fn close(&self) -> Result<(), praetor_dcs::DcsError> {
            Ok(())
        }
    }

    fn conflicting_ctx() -> ApiContext {
        let mut c = cluster(None, false);
        c.failover = Some(Versioned {
            value: Failover {
                leader: Some("a".into()),
                member: Some("b".into()),
                scheduled_at: Some("2099-01-01T00:00:00+00:00".into()),
            },
            version: 3,
        });
        let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(NodeStatus::default()));
        let (cmd, _) = tokio::sync::mpsc::channel(1);
        let mut ctx = ApiContext::new(rx, cmd);
        ctx.dcs = Some(std::sync::Arc::new(ConflictingDcs(c)));
        ctx
    }

    #[tokio::test]
    async fn concurrent_changes_answer_409() {
        let ctx = conflicting_ctx();
        let r = patch_config(&ctx, &Bytes::from_static(b"{\"ttl\": 20}")).await;
        assert_eq!(r.code, StatusCode::CONFLICT, "{r:?}");
        let r = put_config(&ctx, &Bytes::from_static(b"{\"ttl\": 20}")).await;
        assert_eq!(r.code, StatusCode::CONFLICT, "{r:?}");
        let r = delete_switchover(&ctx).await;
        assert_eq!(r.code, StatusCode::CONFLICT, "{r:?}");
        // A PATCH that changes nothing writes nothing, so it cannot conflict.
        let r = patch_config(&ctx, &Bytes::from_static(b"{\"synchronous_mode\": false}")).await;
        assert_eq!(r.code, StatusCode::OK, "{r:?}");
    }

    /// The DCS of `conflicting_ctx` refuses every write with 409: a 400 shows the request was refused
    /// before anything was written.
    #[tokio::test]
    async fn recovery_settings_and_impossible_timings_answer_400_before_writing() {
        let ctx = conflicting_ctx();
        for (body, reason) in [
            (
                r#"{"postgresql":{"parameters":{"promote_trigger_file":"/tmp/go"}}}"#,
                "invalid configuration: postgresql.parameters.promote_trigger_file: promote_trigger_file is managed by the agent",
            ),
            (
                r#"{"postgresql":{"parameters":{"recovery_target_lsn":"0/3000000"}}}"#,
                "invalid configuration: postgresql.parameters.recovery_target_lsn: recovery_target_lsn is a recovery setting",
            ),
            (
                r#"{"postgresql":{"parameters":{"work_mem":"1MB\nfsync = off"}}}"#,
                "invalid configuration: postgresql.parameters.work_mem: the value contains a line break",
            ),
            (
                r#"{"retry_timeout":2147483648}"#,
                "invalid configuration: retry_timeout: 2147483648 is out of range: give 0 to 86400 seconds",
            ),
            (r#"{"ttl":2}"#, "invalid configuration: ttl: 2 is out of range: give 3 to 86400 seconds"),
        ] {
            for r in [
                patch_config(&ctx, &Bytes::from(body)).await,
                put_config(&ctx, &Bytes::from(body)).await,
            ] {
                assert_eq!(r.code, StatusCode::BAD_REQUEST, "{body}: {r:?}");
                let crate::api::ReplyBody::Text(text) = &r.body else {
                    panic!("{body}: {r:?}")
                };
                assert!(text.starts_with(reason), "{body}: {text}\nwanted: {reason}");
            }
        }
    }

    #[test]
    fn passwords_are_refused_and_masked() {
        let v = json!({"postgresql": {"authentication": {"superuser": {"password": "x"}}}});
        assert_eq!(
            find_password(&v).as_deref(),
            Some("postgresql.authentication.superuser.password")
        );
        assert!(validate_config(&v).is_err());
        assert_eq!(
            mask_passwords(v)["postgresql"]["authentication"]["superuser"]["password"],
            "********"
        );
        assert!(validate_config(&json!({"ttl": 30, "pause": true})).is_ok());
        assert!(validate_config(&json!({"ttl": "soon"})).is_err());
    }

    /// A replica of `cluster(..)` (leader `a`) with `failsafe_mode` on, whose last view has no
    /// leader key when `leader_key` is false (it reads the DCS and the key expired).
    fn failsafe_ctx(failsafe_mode: bool, leader_key: bool) -> ApiContext {
        let mut c = cluster(None, false);
        if !leader_key {
            c.leader = None;
        }
        let st = NodeStatus {
            cluster: Some(std::sync::Arc::new(c)),
            failsafe_mode,
            ..node(true, 150004, false)
        };
        let (_tx, rx) = tokio::sync::watch::channel(std::sync::Arc::new(st));
        let (cmd, _) = tokio::sync::mpsc::channel(1);
        ApiContext::new(rx, cmd)
    }

    #[test]
    fn post_failsafe_accepts_only_the_leader_of_the_last_view() {
        let body = |name: &str| Bytes::from(format!(r#"{{"name":"{name}","conn_url":"x"}}"#));
        let text = |r: &Reply| match &r.body {
            crate::api::ReplyBody::Text(t) => t.clone(),
            other => panic!("{other:?}"),
        };
        let ctx = failsafe_ctx(true, true);
        let r = post_failsafe(&ctx, &body("a"));
        assert_eq!((r.code, text(&r)), (StatusCode::OK, "Accepted".into()));
        assert!(ctx.failsafe.lock().unwrap().is_some(), "contact kept");
        let r = post_failsafe(&ctx, &body("b"));
        assert_eq!(r.code, StatusCode::INTERNAL_SERVER_ERROR, "{r:?}");
        assert!(text(&r).contains("the leader key names a, not b"), "{r:?}");
        let r = post_failsafe(&failsafe_ctx(true, false), &body("a"));
        assert_eq!(r.code, StatusCode::INTERNAL_SERVER_ERROR, "{r:?}");
        assert!(text(&r).contains("no leader key"), "{r:?}");
        let r = post_failsafe(&failsafe_ctx(false, true), &body("a"));
        assert_eq!(r.code, StatusCode::BAD_GATEWAY, "{r:?}");
        let r = post_failsafe(&ctx, &Bytes::from_static(b"{\"conn_url\":\"x\"}"));
        assert_eq!(r.code, StatusCode::BAD_REQUEST, "{r:?}");
        assert!(text(&r).starts_with("name:"), "{r:?}");
    }

    /// The promise outlives the agent: an accepted confirmation is in the data directory before the
    /// answer, and one that cannot be recorded is refused (the leader must not count on it).
    #[test]
    fn post_failsafe_records_the_confirmation_before_accepting_and_refuses_what_it_cannot_record() {
        let body = Bytes::from_static(br#"{"name":"a","conn_url":"x"}"#);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("PG_VERSION"), "15\n").unwrap();
        let mut ctx = failsafe_ctx(true, true);
        ctx.failsafe_record = Some((dir.path().to_path_buf(), "b".into()));
        let r = post_failsafe(&ctx, &body);
        assert_eq!(r.code, StatusCode::OK, "{r:?}");
        let c = crate::failsafe_record::load(dir.path(), "b").expect("recorded");
        assert_eq!(c.leader, "a");
        // The temporary file's name taken by a directory: the record cannot be written.
        std::fs::create_dir(crate::failsafe_record::path(dir.path()).with_extension("json.tmp"))
            .unwrap();
        let mut ctx = failsafe_ctx(true, true);
        ctx.failsafe_record = Some((dir.path().to_path_buf(), "b".into()));
        let r = post_failsafe(&ctx, &body);
        assert_eq!(r.code, StatusCode::INTERNAL_SERVER_ERROR, "{r:?}");
        assert!(ctx.failsafe.lock().unwrap().is_none(), "no contact kept");
    }
}
