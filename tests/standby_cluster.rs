//! Standby clusters (Patroni's `standby_cluster`, issue 16 item 2) on real PostgreSQL 15 and etcd:
//! two Praetor clusters, each with its own etcd, the second standing by for the first, then
//! promoted; the first, written to after that promotion, is then demoted to stand by for the
//! second (`ctl demote-cluster`) and rewound against it.
//!
//! Run: `cargo test -p praetor --test standby_cluster -- --test-threads=1`.

mod common;

use std::time::Duration;

use common::*;
use praetor_dcs::{MemberState, Role};

/// The standby cluster's lock holder as the DCS shows it, when it is a running standby leader and
/// `replicas` other members run as replicas; its name.
async fn standby_leader_with_replicas(c: &LocalCluster, replicas: usize) -> Result<String, String> {
    let view = dcs_cluster(c).await;
    let leader = view
        .leader_member()
        .ok_or_else(|| "no leader".to_string())?;
    if leader.data.role != Role::StandbyLeader || leader.data.state != MemberState::Running {
        return Err(format!(
            "leader {} is {:?}/{:?}",
            leader.name, leader.data.role, leader.data.state
        ));
    }
    let running = view
        .members
        .iter()
        .filter(|m| m.name != leader.name)
        .filter(|m| m.data.role == Role::Replica && m.data.state == MemberState::Running)
        .count();
    if running < replicas {
        return Err(format!("{running} of {replicas} replicas running"));
    }
    Ok(leader.name.clone())
}

/// Waits until the member on `port` has replayed exactly `ids` (table `t`).
async fn has_rows(port: u16, ids: &[i32]) -> Result<(), String> {
    let client = connect_retry(port, Duration::from_secs(60)).await;
    wait_for(
        &format!("port {port} to replay {} rows", ids.len()),
        Duration::from_secs(120),
        || async {
            let got = match client.query("SELECT id FROM t ORDER BY id", &[]).await {
                Ok(rows) => rows.iter().map(|r| r.get::<_, i32>(0)).collect::<Vec<_>>(),
                Err(e) => return Err(e.to_string()),
            };
            if got == ids {
                Ok(())
            } else {
                Err(format!("{} rows", got.len()))
            }
        },
    )
    .await
}

/// The port the WAL receiver of the member on `port` streams from.
async fn sender_port(port: u16) -> Option<i32> {
    let client = connect(port).await.ok()?;
    let row = client
        .query_opt(
            "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            &[],
        )
        .await
        .ok()??;
    row.get(0)
}

async fn in_recovery(port: u16) -> bool {
    let client = connect_retry(port, Duration::from_secs(60)).await;
    client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery")
        .get(0)
}

/// One scenario, in order: the standby cluster bootstraps from the first cluster's primary; rows
/// written there reach every member (the standby leader from the remote, its replicas cascading
/// from it); the REST API, `ctl list` and the proxy see a standby leader; a change of
/// `standby_cluster.recovery_min_apply_delay` reaches the running standby leader; the standby leader is
/// killed and another member becomes standby leader without promoting; `ctl promote-cluster` then
/// promotes it and the cluster takes writes, through the proxy too, while the first cluster's
/// primary is left alone and takes a write of its own (a branch the promoted cluster never had).
/// Then the role swap is completed: `ctl demote-cluster` on the first cluster makes its primary a
/// standby leader of the second one, rewound against it (pg_rewind from the remote), its replica
/// rewound and cascading from it; rows written on the second cluster reach both, none of its
/// acknowledged rows is lost, and the first cluster's diverged row is gone.
#[tokio::test]
async fn a_standby_cluster_replicates_fails_over_as_standby_and_is_promoted() {
    let mut primary_cluster = healthy_cluster(ClusterOptions {
        scope: "sb-main".into(),
        nodes: 2,
        proxy: false,
        ..Default::default()
    })
    .await;
    let main_leader = primary_cluster.leader().await.expect("leader of sb-main");
    let main_port = primary_cluster.node(&main_leader).pg_port;
    let main = connect_retry(main_port, Duration::from_secs(30)).await;
    let mut acked = insert_rows(&main, 0, 20).await;

    let mut sb = LocalCluster::start(
        &binary(),
        ClusterOptions {
            scope: "sb-standby".into(),
            nodes: 3,
            proxy: true,
            dcs_extra: vec![
                "standby_cluster:".into(),
                "  host: 127.0.0.1".into(),
                format!("  port: {main_port}"),
            ],
            ..Default::default()
        },
    )
    .await
    .expect("standby cluster processes start");
    let result = scenario(&mut sb, &primary_cluster, main_port, &main, &mut acked).await;
    if let Err(e) = result {
        dump_logs(&primary_cluster);
        dump_logs(&sb);
        let kept = sb.work.keep();
        let kept_main = primary_cluster.work.keep();
        panic!(
            "{e}\nlogs kept in {} and {}",
            kept.display(),
            kept_main.display()
        );
    }
    sb.shutdown().await;
    primary_cluster.shutdown().await;
}

async fn scenario(
    sb: &mut LocalCluster,
    primary_cluster: &LocalCluster,
    main_port: u16,
    main: &tokio_postgres::Client,
    acked: &mut Vec<i32>,
) -> Result<(), String> {
    let standby_leader = wait_for(
        "a standby leader with 2 replicas",
        Duration::from_secs(180),
        || standby_leader_with_replicas(sb, 2),
    )
    .await?;
    let sl_port = sb.node(&standby_leader).pg_port;
    for n in &sb.nodes {
        has_rows(n.pg_port, acked).await?;
    }
    if !in_recovery(sl_port).await {
        return Err("the standby leader is not in recovery".into());
    }
    // The standby leader streams from the remote primary, its replicas from it (cascading).
    let from_remote = wait_for(
        "the standby leader to stream from sb-main",
        Duration::from_secs(60),
        || async {
            match sender_port(sl_port).await {
                Some(p) if p == i32::from(main_port) => Ok(()),
                other => Err(format!("streams from {other:?}")),
            }
        },
    )
    .await;
    from_remote?;
    for name in others(sb, &standby_leader) {
        let port = sb.node(&name).pg_port;
        wait_for(
            &format!("{name} to cascade from the standby leader"),
            Duration::from_secs(60),
            || async {
                match sender_port(port).await {
                    Some(p) if p == i32::from(sl_port) => Ok(()),
                    other => Err(format!("streams from {other:?}")),
                }
            },
        )
        .await?;
    }

    // REST API (Patroni 4's codes) and ctl list.
    let sl_node = sb.node(&standby_leader);
    let replica_node = sb.node(&others(sb, &standby_leader)[0]);
    for (path, on_leader, on_replica) in [
        ("/standby-leader", 200, 503),
        ("/leader", 200, 503),
        ("/primary", 503, 503),
        ("/replica", 503, 200),
        ("/read-only", 200, 200),
    ] {
        let (code, body) = call(sl_node, "GET", path, None).await;
        if code != on_leader {
            return Err(format!("standby leader GET {path}: {code} {body}"));
        }
        let (code, body) = call(replica_node, "GET", path, None).await;
        if code != on_replica {
            return Err(format!("replica GET {path}: {code} {body}"));
        }
    }
    let list = ctl(sb, &["list"], "").await;
    if list.code != 0 || !list.stdout.contains("Standby Leader") {
        return Err(format!("ctl list: {list}"));
    }
    // A change of the section's recovery settings reaches the running standby leader at once
    // (rewrite and reload), as in Patroni, not only at its next start.
    let out = ctl(
        sb,
        &[
            "edit-config",
            "-s",
            "standby_cluster.recovery_min_apply_delay=1ms",
            "--force",
        ],
        "",
    )
    .await;
    if out.code != 0 {
        return Err(format!("ctl edit-config: {out}"));
    }
    let sl = connect_retry(sl_port, Duration::from_secs(60)).await;
    wait_for(
        "the standby leader to run with recovery_min_apply_delay = 1ms",
        Duration::from_secs(60),
        || async {
            let row = sl
                .query_one("SHOW recovery_min_apply_delay", &[])
                .await
                .map_err(|e| e.to_string())?;
            let v: String = row.get(0);
            if v == "1ms" {
                Ok(())
            } else {
                Err(format!("recovery_min_apply_delay = {v}"))
            }
        },
    )
    .await?;
    // demote-cluster refuses what patronictl refuses, changing nothing.
    for (args, why) in [
        (
            &["demote-cluster", "--force"][..],
            "At least --host, --port or --restore-command should be specified",
        ),
        (
            &["demote-cluster", "--host", "127.0.0.1", "--force"][..],
            "Cluster is already in the required state",
        ),
    ] {
        let out = ctl(sb, args, "").await;
        if out.code == 0 || !out.to_string().contains(why) {
            return Err(format!("ctl {args:?}: {out}"));
        }
    }

    // The proxy routes no writes (no writable leader) but reads.
    let proxy = sb.proxy.as_ref().expect("proxy");
    let ro_port = proxy.ro_port;
    let rw_port = proxy.rw_port;
    let ro = connect_retry(ro_port, Duration::from_secs(60)).await;
    let via_proxy = read_ids(&ro).await;
    if via_proxy != *acked {
        return Err(format!("reads through the proxy: {} rows", via_proxy.len()));
    }
    if let Ok(rw) = connect(rw_port).await {
        if rw
            .execute("INSERT INTO t (id) VALUES (-1)", &[])
            .await
            .is_ok()
        {
            return Err("the proxy's read-write port took a write in a standby cluster".into());
        }
    }

    // Failover inside the standby cluster: another member becomes standby leader, not primary.
    acked.extend(insert_rows(main, 20, 40).await);
    sb.node_mut(&standby_leader).kill();
    let new_leader = wait_for("a new standby leader", Duration::from_secs(180), || async {
        match standby_leader_with_replicas(sb, 1).await {
            Ok(l) if l != standby_leader => Ok(l),
            Ok(l) => Err(format!("{l} still leads")),
            Err(e) => Err(e),
        }
    })
    .await?;
    let new_port = sb.node(&new_leader).pg_port;
    acked.extend(insert_rows(main, 40, 60).await);
    let survivors = others(sb, &standby_leader);
    for name in &survivors {
        has_rows(sb.node(name).pg_port, acked).await?;
    }
    if !in_recovery(new_port).await {
        return Err(format!("the new standby leader {new_leader} was promoted"));
    }

    // Promote the standby cluster.
    let out = ctl(sb, &["promote-cluster", "--force"], "").await;
    if out.code != 0 {
        return Err(format!("ctl promote-cluster: {out}"));
    }
    wait_for(
        "the promoted leader to accept writes",
        Duration::from_secs(60),
        || async {
            if in_recovery(new_port).await {
                Err("still in recovery".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await?;
    let out = ctl(sb, &["promote-cluster", "--force"], "").await;
    if out.code == 0
        || !out
            .to_string()
            .contains("Cluster is already in the required state")
    {
        return Err(format!("ctl promote-cluster on a promoted cluster: {out}"));
    }
    let rw = connect_retry(rw_port, Duration::from_secs(60)).await;
    let mut ours = Vec::new();
    for id in 1000..1010 {
        wait_for(
            "a write through the proxy",
            Duration::from_secs(60),
            || async {
                rw.execute(
                    "INSERT INTO t (id) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&id],
                )
                .await
                .map_err(|e| e.to_string())
            },
        )
        .await?;
        ours.push(id);
    }
    let mut expected = acked.clone();
    expected.extend(&ours);
    for name in &survivors {
        has_rows(sb.node(name).pg_port, &expected).await?;
    }
    // The other cluster's primary was not fenced: still a primary, taking writes.
    if in_recovery(main_port).await {
        return Err("sb-main's primary was demoted".into());
    }
    insert_rows(main, 60, 61).await;

    demote_the_first_cluster(sb, primary_cluster, main_port, new_port, &expected).await
}

/// `ctl demote-cluster` on the first cluster (`primary_cluster`, primary on `main_port`, written to
/// after the second one was promoted) towards the second's leader on `new_port`, which holds
/// exactly `expected`.
async fn demote_the_first_cluster(
    sb: &LocalCluster,
    primary_cluster: &LocalCluster,
    main_port: u16,
    new_port: u16,
    expected: &[i32],
) -> Result<(), String> {
    let main_leader = primary_cluster
        .nodes
        .iter()
        .find(|n| n.pg_port == main_port)
        .map(|n| n.name.clone())
        .ok_or("sb-main's primary")?;
    let port = new_port.to_string();
    let args = [
        "demote-cluster",
        "--host",
        "127.0.0.1",
        "--port",
        &port,
        "--force",
    ];
    let out = ctl(primary_cluster, &args, "").await;
    if out.code != 0 {
        return Err(format!("ctl demote-cluster: {out}"));
    }
    // The former primary keeps the lock as the standby leader, rewound onto the promoted
    // cluster's timeline and streaming from its leader; its replica cascades from it.
    let leader = wait_for(
        "sb-main to have a standby leader and a running replica",
        Duration::from_secs(240),
        || standby_leader_with_replicas(primary_cluster, 1),
    )
    .await?;
    if leader != main_leader {
        return Err(format!("{leader} leads sb-main, not {main_leader}"));
    }
    wait_for(
        "sb-main's former primary to stream from sb-standby's leader",
        Duration::from_secs(120),
        || async {
            match sender_port(main_port).await {
                Some(p) if p == i32::from(new_port) => Ok(()),
                other => Err(format!("streams from {other:?}")),
            }
        },
    )
    .await?;
    for name in others(primary_cluster, &main_leader) {
        let port = primary_cluster.node(&name).pg_port;
        wait_for(
            &format!("{name} to cascade from sb-main's standby leader"),
            Duration::from_secs(180),
            || async {
                match sender_port(port).await {
                    Some(p) if p == i32::from(main_port) => Ok(()),
                    other => Err(format!("streams from {other:?}")),
                }
            },
        )
        .await?;
    }
    let list = ctl(primary_cluster, &["list"], "").await;
    if list.code != 0 || !list.stdout.contains("Standby Leader") {
        return Err(format!("ctl list on sb-main: {list}"));
    }
    let out = ctl(primary_cluster, &args, "").await;
    if out.code == 0
        || !out
            .to_string()
            .contains("Cluster is already in the required state")
    {
        return Err(format!("ctl demote-cluster on a demoted cluster: {out}"));
    }

    // Rows written on the promoted cluster reach every member of the demoted one; every row the
    // promoted cluster acknowledged is still there; sb-main's own row 60 (written after the split)
    // was rewound away.
    let b = connect_retry(new_port, Duration::from_secs(60)).await;
    let mut all = expected.to_vec();
    all.extend(insert_rows(&b, 2000, 2010).await);
    for n in &primary_cluster.nodes {
        has_rows(n.pg_port, &all).await?;
    }
    for n in sb.nodes.iter().filter(|n| n.pg_port == new_port) {
        has_rows(n.pg_port, &all).await?;
    }
    if !in_recovery(main_port).await {
        return Err("sb-main's former primary is not in recovery".into());
    }
    Ok(())
}
