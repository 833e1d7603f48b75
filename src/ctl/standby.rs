//! `demote-cluster` and `promote-cluster` (Patroni 4's patronictl `change_cluster_role`): turn a
//! cluster into a standby cluster of another one, or back into a standalone cluster.
//!
//! Both patch the `standby_cluster` section of the dynamic configuration through the leader's
//! `PATCH /config` (so the agent validates it), then wait until the lock holder runs in the target
//! role: `standby_leader` after demotion (the agents demote the primary, keeping the lock), `primary`
//! after promotion (the standby leader promotes; its replicas already follow it).

use std::time::{Duration, Instant};

use anyhow::bail;
use praetor_dcs::{MemberState, Role};
use serde_json::{json, Map, Value};

use super::{confirm, render_list, timestamp, Ctx, Format};

/// What `demote-cluster` puts in `standby_cluster`: the given options only. Errors as Patroni's:
/// at least `--host`, `--port` or `--restore-command` is needed (otherwise the section would not be
/// in force).
pub fn demote_section(
    host: Option<String>,
    port: Option<u16>,
    restore_command: Option<String>,
    primary_slot_name: Option<String>,
) -> anyhow::Result<Value> {
    if host.is_none() && port.is_none() && restore_command.is_none() {
        bail!("At least --host, --port or --restore-command should be specified");
    }
    let mut m = Map::new();
    for (k, v) in [
        ("host", host.map(Value::from)),
        ("port", port.map(Value::from)),
        ("primary_slot_name", primary_slot_name.map(Value::from)),
        ("restore_command", restore_command.map(Value::from)),
    ] {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    }
    Ok(Value::Object(m))
}

/// How long `demote-cluster` / `promote-cluster` wait for the cluster to reach the target role
/// (patronictl waits without a bound; a demotion is a fast stop and a start, a promotion one
/// `pg_promote()`, each within a few HA loops).
const ROLE_CHANGE_TIMEOUT: Duration = Duration::from_secs(300);

/// Demotes (`standby` is the section) or promotes (`None`) the cluster and waits for the result.
/// Refused, as patronictl does, when the cluster has no leader or its leader already has the target
/// role; a failed `PATCH /config` is an error with the agent's status and answer.
pub async fn change_cluster_role(
    ctx: &Ctx,
    force: bool,
    standby: Option<Value>,
) -> anyhow::Result<()> {
    let demote = standby.is_some();
    let action = if demote { "demot" } else { "promot" };
    let target = if demote {
        Role::StandbyLeader
    } else {
        Role::Primary
    };
    let cluster = ctx.cluster().await?;
    let Some(leader) = cluster.leader_member() else {
        bail!("Cluster has no leader, {action}ion is not possible");
    };
    let leader_name = leader.name.clone();
    if leader.data.role == target {
        bail!("Cluster is already in the required state");
    }
    println!("Current cluster topology");
    print!(
        "{}",
        render_list(&ctx.scope, &cluster, Format::Pretty, false, false)
    );
    if !force
        && !confirm(&format!(
            "Are you sure you want to {action}e {} cluster?",
            ctx.scope
        ))?
    {
        bail!("Aborted cluster {action}ion");
    }
    let body = json!({ "standby_cluster": standby.unwrap_or(Value::Null) });
    let r = ctx
        .call(leader, "PATCH", "/config", Some(&body))
        .await
        .map_err(|e| anyhow::anyhow!("Failed to {action}e {} cluster: {e}", ctx.scope))?;
    if r.status != 200 {
        bail!(
            "Failed to {action}e {} cluster: /config PATCH status code={}, ({})",
            ctx.scope,
            r.status,
            r.body
        );
    }
    let deadline = Instant::now() + ROLE_CHANGE_TIMEOUT;
    let mut last = String::new();
    loop {
        let c = ctx.cluster().await?;
        let leader = c.leader_member();
        let role = leader.map(|m| m.data.role);
        let state = leader.map(|m| m.data.state);
        let old_state = c.member(&leader_name).map(|m| m.data.state);
        if role == Some(target)
            && state == Some(MemberState::Running)
            && (!demote || old_state == Some(MemberState::Running))
        {
            println!("{} cluster is successfully {action}ed", timestamp());
            print!(
                "{}",
                render_list(&ctx.scope, &c, Format::Pretty, false, false)
            );
            return Ok(());
        }
        let line = format!(
            "cluster is unlocked: {}, leader role: {}, leader state: {}",
            c.leader.is_none(),
            role.map_or("None".to_string(), |r| r.to_string()),
            state.map_or("None".to_string(), |s| s.to_string()),
        );
        if line != last {
            println!("{} {line}", timestamp());
            last = line;
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not reach the {} role within {} s",
                target,
                ROLE_CHANGE_TIMEOUT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demote_needs_host_port_or_restore_command() {
        let e = demote_section(None, None, None, Some("s".into())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "At least --host, --port or --restore-command should be specified"
        );
        let v =
            demote_section(Some("10.0.0.1".into()), Some(5433), None, Some("s1".into())).unwrap();
        assert_eq!(
            v,
            json!({"host": "10.0.0.1", "port": 5433, "primary_slot_name": "s1"})
        );
    }
}
