//! The commands that act on members through their REST APIs, with patronictl's selection
//! (names, `-r role`, prompt), confirmation and messages: restart, reload, reinit, flush, version,
//! pause/resume; and query/dsn, which connect to a member's PostgreSQL.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use praetor_dcs::{Cluster, Member, Role};
use serde_json::{json, Value};

use super::{confirm, prompt, render, timestamp, Ctx, RoleFilter};

/// Whether `m` has the role `role` in `cluster`.
fn has_role(cluster: &Cluster, m: &Member, role: RoleFilter) -> bool {
    let is_leader = cluster.leader.as_ref().is_some_and(|l| l.name == m.name);
    match role {
        RoleFilter::Any => true,
        RoleFilter::Leader => is_leader,
        RoleFilter::Primary => is_leader && m.data.role != Role::StandbyLeader,
        RoleFilter::StandbyLeader => is_leader && m.data.role == Role::StandbyLeader,
        RoleFilter::Replica => !is_leader,
    }
}

/// patronictl's `get_members`: the members of `role`, narrowed to `names` (asked for when none
/// are given and not `force`), each checked to exist.
fn select_members(
    ctx: &Ctx,
    cluster: &Cluster,
    names: Vec<String>,
    role: RoleFilter,
    force: bool,
    action: &str,
) -> anyhow::Result<Vec<Member>> {
    let members: Vec<Member> = cluster
        .members
        .iter()
        .filter(|m| has_role(cluster, m, role))
        .cloned()
        .collect();
    if members.is_empty() {
        bail!("{} cluster doesn't have any members", ctx.scope);
    }
    if !force {
        print!(
            "{}",
            render::render_list(&ctx.scope, cluster, render::Format::Pretty, false, false)
        );
    }
    let mut names = names;
    if names.is_empty() && !force && role == RoleFilter::Any {
        let all: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        let answer = prompt(
            &format!("Which member do you want to {action} [{}]?", all.join(", ")),
            Some("all"),
        )?;
        if answer != "all" {
            names = answer
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
        }
    }
    for n in &names {
        if !members.iter().any(|m| &m.name == n) {
            if cluster.member(n).is_some() {
                bail!("No {role:?} among provided members: {n}");
            }
            bail!("{n} is not a member of cluster");
        }
    }
    Ok(members
        .into_iter()
        .filter(|m| names.is_empty() || names.contains(&m.name))
        .collect())
}

fn confirm_members(members: &[Member], force: bool, action: &str) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    if !confirm(&format!(
        "Are you sure you want to {action} members {}?",
        names.join(", ")
    ))? {
        bail!("Aborted {action}");
    }
    Ok(())
}

/// `restart`'s options.
pub struct RestartArgs {
    pub names: Vec<String>,
    pub role: RoleFilter,
    pub any: bool,
    pub pending: bool,
    pub scheduled: Option<String>,
    pub pg_version: Option<String>,
    pub timeout: Option<u64>,
    pub force: bool,
}

/// `restart`: `POST /restart` on each selected member.
pub async fn restart(ctx: &Ctx, a: RestartArgs) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let mut members = select_members(ctx, &cluster, a.names, a.role, a.force, "restart")?;
    if a.any {
        let pick = (Instant::now().elapsed().subsec_nanos() as usize ^ std::process::id() as usize)
            % members.len();
        members = vec![members.swap_remove(pick)];
    }
    let scheduled = match a.scheduled {
        Some(s) => Some(s),
        None if !a.force => {
            let example = time::OffsetDateTime::now_utc() + time::Duration::hours(1);
            let f = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]");
            Some(prompt(
                &format!(
                    "When should the restart take place (e.g. {}) ",
                    example.format(&f).unwrap_or_default()
                ),
                Some("now"),
            )?)
        }
        None => None,
    };
    let scheduled_at = super::failover::parse_scheduled(scheduled.as_deref())?;
    let version = match a.pg_version {
        Some(v) => Some(v),
        None if !a.force => {
            let v = prompt(
                "Restart if the PostgreSQL version is less than provided (e.g. 15.4) ",
                Some(""),
            )?;
            (!v.is_empty()).then_some(v)
        }
        None => None,
    };
    let mut content = json!({});
    if a.pending {
        content["restart_pending"] = json!(true);
    }
    if let Some(v) = &version {
        praetor_agent::api::actions::postgres_version_to_int(v).map_err(anyhow::Error::msg)?;
        content["postgres_version"] = json!(v);
    }
    if let Some(t) = scheduled_at {
        let paused = cluster
            .config
            .as_ref()
            .is_some_and(|c| c.value["pause"].as_bool() == Some(true));
        if paused {
            bail!("Can't schedule restart in the paused state");
        }
        content["schedule"] = json!(praetor_agent::api::schedule::format_iso(t));
    }
    if let Some(t) = a.timeout {
        content["timeout"] = json!(t);
    }
    confirm_members(&members, a.force, "restart")?;
    let mut failed = false;
    for m in &members {
        if content.get("schedule").is_some()
            && a.force
            && m.data.extra.contains_key("scheduled_restart")
        {
            let r = ctx.call(m, "DELETE", "/restart", None).await;
            report(r, &m.name, "flush scheduled restart");
        }
        match ctx.call(m, "POST", "/restart", Some(&content)).await {
            Ok(r) if r.status == 200 => println!("Success: restart on member {}", m.name),
            Ok(r) if r.status == 202 => {
                println!("Success: restart scheduled on member {}", m.name)
            }
            Ok(r) if r.status == 409 => {
                failed = true;
                println!(
                    "Failed: another restart is already scheduled on member {}",
                    m.name
                )
            }
            other => failed |= !report(other, &m.name, "restart"),
        }
    }
    if failed {
        bail!("restart failed on some members");
    }
    Ok(())
}

/// patronictl's `check_response`: prints Success/Failed; true on success.
fn report(
    r: Result<praetor_agent::api::client::ApiResponse, String>,
    member: &str,
    action: &str,
) -> bool {
    match r {
        Ok(r) if r.status < 400 => {
            println!("Success: {action} for member {member}");
            true
        }
        Ok(r) => {
            println!(
                "Failed: {action} for member {member}, status code={}, ({})",
                r.status, r.body
            );
            false
        }
        Err(e) => {
            println!("Failed: {action} for member {member}, ({e})");
            false
        }
    }
}

/// `reload`: `POST /reload` on each selected member.
pub async fn reload(
    ctx: &Ctx,
    names: Vec<String>,
    role: RoleFilter,
    force: bool,
) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let members = select_members(ctx, &cluster, names, role, force, "reload")?;
    confirm_members(&members, force, "reload")?;
    let loop_wait = cluster
        .config
        .as_ref()
        .and_then(|c| c.value["loop_wait"].as_u64())
        .unwrap_or(10);
    let mut failed = false;
    for m in &members {
        match ctx.call(m, "POST", "/reload", None).await {
            Ok(r) if r.status == 200 => println!("No changes to apply on member {}", m.name),
            Ok(r) if r.status == 202 => println!(
                "Reload request received for member {} and will be processed within {loop_wait} seconds",
                m.name
            ),
            other => failed |= !report(other, &m.name, "reload"),
        }
    }
    if failed {
        bail!("reload failed on some members");
    }
    Ok(())
}

/// `reinit`: `POST /reinitialize` on each member, `--wait` until they run again.
pub async fn reinit(
    ctx: &Ctx,
    names: Vec<String>,
    force: bool,
    wait: bool,
    from_leader: bool,
) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let members = select_members(ctx, &cluster, names, RoleFilter::Any, force, "reinitialize")?;
    confirm_members(&members, force, "reinitialize")?;
    let body = json!({"force": true, "from_leader": from_leader});
    let mut waiting = Vec::new();
    let mut failed = false;
    for m in &members {
        let r = ctx.call(m, "POST", "/reinitialize", Some(&body)).await;
        if report(r, &m.name, "reinitialize") {
            if wait {
                waiting.push(m.clone());
            }
        } else {
            failed = true;
        }
    }
    if !waiting.is_empty() {
        let names: Vec<&str> = waiting.iter().map(|m| m.name.as_str()).collect();
        println!(
            "Waiting for reinitialize to complete on: {}",
            names.join(", ")
        );
        let deadline = Instant::now() + Duration::from_secs(1800);
        // The data directory is removed first; the member is done once it streams again.
        while !waiting.is_empty() {
            if Instant::now() > deadline {
                bail!("reinitialize did not complete within 30 minutes");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let c = ctx.cluster().await?;
            let summaries = praetor_dcs::summary::summarize(&c);
            waiting.retain(|m| {
                let done = summaries
                    .iter()
                    .any(|s| s.name == m.name && (s.state == "streaming" || s.state == "running"))
                    && c.member(&m.name).is_some_and(|x| x.version != m.version);
                if done {
                    println!("Reinitialize is completed on: {}", m.name);
                }
                !done
            });
        }
    }
    if failed {
        bail!("reinitialize failed on some members");
    }
    Ok(())
}

/// `flush ... restart`: `DELETE /restart` on members with a scheduled restart.
pub async fn flush_restart(
    ctx: &Ctx,
    names: Vec<String>,
    role: RoleFilter,
    force: bool,
) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let members = select_members(ctx, &cluster, names, role, force, "flush scheduled restart")?;
    let mut any = false;
    for m in &members {
        if m.data.extra.contains_key("scheduled_restart") {
            any = true;
            let r = ctx.call(m, "DELETE", "/restart", None).await;
            report(r, &m.name, "flush scheduled restart");
        }
    }
    if !any {
        println!("No scheduled restart");
    }
    Ok(())
}

/// `flush ... switchover`: `DELETE /switchover` on a member, else delete the key.
pub async fn flush_switchover(ctx: &Ctx) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let Some(f) = cluster
        .failover_request()
        .filter(|f| f.value.scheduled_at.is_some())
    else {
        println!("No pending scheduled switchover");
        return Ok(());
    };
    for m in leader_first(&cluster) {
        if let Ok(r) = ctx.call(m, "DELETE", "/switchover", None).await {
            if r.status == 200 || r.status == 404 {
                println!("{}", r.body);
                return Ok(());
            }
            eprintln!(
                "Failed to flush scheduled switchover on {}: {} {}",
                m.name, r.status, r.body
            );
        }
    }
    ctx.dcs
        .delete_failover(f.version)
        .await
        .context("cannot delete the failover key")?;
    println!("Success: scheduled switchover deleted");
    Ok(())
}

fn leader_first(cluster: &Cluster) -> Vec<&Member> {
    let mut v: Vec<&Member> = cluster.members.iter().collect();
    let leader = cluster.leader.as_ref().map(|l| l.name.clone());
    v.sort_by_key(|m| Some(&m.name) != leader.as_ref());
    v
}

/// `version CLUSTER [MEMBER...]`: each member's agent and PostgreSQL versions.
pub async fn versions(ctx: &Ctx, names: &[String]) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    for m in &cluster.members {
        if !names.is_empty() && !names.contains(&m.name) {
            continue;
        }
        match ctx
            .call(m, "GET", "/patroni", None)
            .await
            .and_then(|r| r.json())
        {
            Ok(v) => {
                let pg = v["server_version"]
                    .as_i64()
                    .map(format_pg_version)
                    .unwrap_or_default();
                println!(
                    "{}: Praetor {} PostgreSQL {pg}",
                    m.name,
                    v["patroni"]["version"].as_str().unwrap_or("?")
                );
            }
            Err(e) => println!("{}: failed to get version: {e}", m.name),
        }
    }
    Ok(())
}

/// 150004 → `15.4`, 90603 → `9.6.3`.
pub fn format_pg_version(v: i64) -> String {
    if v >= 100000 {
        format!("{}.{}", v / 10000, v % 10000)
    } else {
        format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
    }
}

/// `pause` / `resume`: `PATCH /config {"pause": true|false}` on the first member that answers
/// (the leader first), else the key directly; `--wait` until every member publishes it.
pub async fn toggle_pause(ctx: &Ctx, paused: bool, wait: bool) -> anyhow::Result<()> {
    let cluster = ctx.cluster().await?;
    let is_paused = cluster
        .config
        .as_ref()
        .is_some_and(|c| c.value["pause"].as_bool() == Some(true));
    if is_paused == paused {
        bail!(
            "Cluster is {} paused",
            if paused { "already" } else { "not" }
        );
    }
    let body = json!({ "pause": paused });
    let mut done = false;
    for m in leader_first(&cluster) {
        match ctx.call(m, "PATCH", "/config", Some(&body)).await {
            Ok(r) if r.status == 200 => {
                done = true;
                break;
            }
            Ok(r) => eprintln!(
                "Failed to set pause={paused} for member {}, status: {}, ({})",
                m.name, r.status, r.body
            ),
            Err(e) => eprintln!("Member {} is not accessible: {e}", m.name),
        }
    }
    if !done {
        let Some(cfg) = &cluster.config else {
            bail!("Can not find accessible cluster member");
        };
        let mut v = cfg.value.clone();
        v["pause"] = Value::Bool(paused);
        ctx.dcs
            .set_config(&v, praetor_dcs::Expect::Version(cfg.version))
            .await
            .context(
                "Can not find accessible cluster member, and the config key cannot be written",
            )?;
    }
    if wait {
        println!(
            "'{}' request sent, waiting until it is recognized by all nodes",
            if paused { "pause" } else { "resume" }
        );
        let names: Vec<String> = cluster
            .members
            .iter()
            .filter(|m| m.data.api_url.is_some())
            .map(|m| m.name.clone())
            .collect();
        let loop_wait = cluster
            .config
            .as_ref()
            .and_then(|c| c.value["loop_wait"].as_u64())
            .unwrap_or(10);
        let deadline = Instant::now() + Duration::from_secs(loop_wait * 3 + 10);
        loop {
            let c = ctx.cluster().await?;
            let remaining: Vec<&str> = c
                .members
                .iter()
                .filter(|m| names.contains(&m.name) && m.data.pause != paused)
                .map(|m| m.name.as_str())
                .collect();
            if remaining.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} members didn't recognize pause state after {} seconds",
                    remaining.join(", "),
                    loop_wait * 3 + 10
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    println!(
        "Success: cluster management is {}",
        if paused { "paused" } else { "resumed" }
    );
    Ok(())
}

/// The member for `query`/`dsn`: named, or by role (default the leader).
pub fn pick_member<'a>(
    cluster: &'a Cluster,
    role: Option<super::RoleFilter>,
    member: Option<&str>,
) -> anyhow::Result<&'a Member> {
    if let Some(name) = member {
        return cluster
            .member(name)
            .ok_or_else(|| anyhow!("{name} is not a member of cluster"));
    }
    let role = role.unwrap_or(RoleFilter::Leader);
    cluster
        .members
        .iter()
        .find(|m| has_role(cluster, m, role) && m.data.conn_url.is_some())
        .ok_or_else(|| anyhow!("No connection to member with role {role:?}"))
}

/// `query`'s options.
pub struct QueryArgs {
    pub role: Option<RoleFilter>,
    pub member: Option<String>,
    pub sql: String,
    pub username: Option<String>,
    pub ask_password: bool,
    pub dbname: String,
    pub format: render::Format,
    pub delimiter: String,
    pub watch: Option<Duration>,
}

/// `query`: runs SQL on the member and prints the rows (tsv by default).
pub async fn query(ctx: &Ctx, a: QueryArgs) -> anyhow::Result<()> {
    let superuser = ctx
        .config
        .as_ref()
        .and_then(|c| c.postgresql.authentication.superuser.clone());
    let user = a
        .username
        .clone()
        .or_else(|| superuser.as_ref().map(|s| s.username.clone()));
    let password = if a.ask_password {
        Some(prompt("Password", None)?)
    } else {
        match (&superuser, &user) {
            (Some(s), Some(u)) if s.username == *u => s.password.clone(),
            _ => std::env::var("PGPASSWORD").ok(),
        }
    };
    loop {
        let cluster = ctx.cluster().await?;
        let m = pick_member(&cluster, a.role, a.member.as_deref())?;
        let (host, port) = m
            .data
            .conn_host_port()
            .ok_or_else(|| anyhow!("member {} has no usable conn_url", m.name))?;
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&host)
            .port(port)
            .dbname(&a.dbname)
            .application_name("praetor ctl")
            .connect_timeout(Duration::from_secs(5));
        if let Some(u) = &user {
            cfg.user(u);
        }
        if let Some(p) = &password {
            cfg.password(p);
        }
        if a.watch.is_some() {
            println!("{}", timestamp());
        }
        match run_sql(&cfg, &a.sql).await {
            Ok((cols, rows)) => {
                let headers: Vec<&str> = cols.iter().map(String::as_str).collect();
                let out = match a.format {
                    render::Format::Tsv => {
                        let mut out = String::new();
                        if !headers.is_empty() {
                            out.push_str(&headers.join(&a.delimiter));
                            out.push('\n');
                        }
                        for r in &rows {
                            let cells: Vec<String> = r
                                .iter()
                                .map(|c| match c {
                                    Value::Null => "None".to_string(),
                                    Value::String(s) => s.clone(),
                                    other => other.to_string(),
                                })
                                .collect();
                            out.push_str(&cells.join(&a.delimiter));
                            out.push('\n');
                        }
                        out
                    }
                    fmt => {
                        let align = vec![render::Align::Left; headers.len()];
                        render::output(fmt, None, &headers, &rows, &align)
                    }
                };
                print!("{out}");
            }
            Err(e) => {
                if a.watch.is_none() {
                    bail!("{e}");
                }
                println!("{e}");
            }
        }
        match a.watch {
            Some(every) => tokio::time::sleep(every).await,
            None => return Ok(()),
        }
    }
}

/// Runs `sql` (simple protocol, several statements allowed); returns the last result's columns and
/// rows as text.
async fn run_sql(
    cfg: &tokio_postgres::Config,
    sql: &str,
) -> Result<(Vec<String>, Vec<Vec<Value>>), String> {
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect: {}", pg_error(&e)))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = client.simple_query(sql).await;
    driver.abort();
    let messages = result.map_err(|e| pg_error(&e))?;
    let mut cols = Vec::new();
    let mut rows: Vec<Vec<Value>> = Vec::new();
    for msg in messages {
        match msg {
            tokio_postgres::SimpleQueryMessage::RowDescription(desc) => {
                cols = desc.iter().map(|c| c.name().to_string()).collect();
                rows.clear();
            }
            tokio_postgres::SimpleQueryMessage::Row(r) => {
                if cols.is_empty() {
                    cols = r.columns().iter().map(|c| c.name().to_string()).collect();
                }
                rows.push(
                    (0..r.len())
                        .map(|i| r.get(i).map(|s| json!(s)).unwrap_or(Value::Null))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    Ok((cols, rows))
}

fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_versions() {
        assert_eq!(format_pg_version(150004), "15.4");
        assert_eq!(format_pg_version(90603), "9.6.3");
    }
}
