//! Acceptance tests of rejoining (issue 13 item 8): a former primary comes back as a replica of the
//! new leader on clusters configured the way Patroni's own example YAML and the seeds configure them:
//! a dedicated pg_rewind role (`authentication.rewind`) and no data checksums (`wal_log_hints: on`
//! instead). Real etcd, PostgreSQL 15 and agents on 127.0.0.1; run one at a time.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// A cluster of three without a proxy, with `rewind_user` and without data checksums.
fn patroni_like(scope: &str) -> ClusterOptions {
    ClusterOptions {
        scope: scope.into(),
        proxy: false,
        data_checksums: false,
        rewind_user: true,
        ..Default::default()
    }
}

/// How many times `node`'s agent started pg_rewind (the runner logs each background task start).
fn rewind_attempts(c: &LocalCluster, node: &str) -> usize {
    c.node(node)
        .log()
        .lines()
        .filter(|l| l.contains("starting") && l.contains("task=Rewind"))
        .count()
}

/// Waits until `old` runs as a streaming replica of a leader other than itself, with every row of
/// table `t` that `acked` lists.
async fn rejoined_with_rows(c: &LocalCluster, old: &str, acked: &[i32]) {
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(120)).await {
        dump_logs(c);
        panic!("{old} did not rejoin: {e}");
    }
    let port = c.node(old).pg_port;
    let client = connect_retry(port, Duration::from_secs(10)).await;
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "{old} rejoined as a primary");
    let ids = wait_for(
        "the acknowledged rows on the rejoined node",
        Duration::from_secs(30),
        || async {
            let ids = read_ids(&client).await;
            if acked.iter().all(|id| ids.contains(id)) {
                Ok(ids)
            } else {
                Err(format!("{} of {} rows", ids.len(), acked.len()))
            }
        },
    )
    .await
    .unwrap();
    assert!(ids.len() >= acked.len());
}

/// A connection to `port` once it accepts writes (the new leader holds the lock a moment before it
/// has promoted).
async fn writable(port: u16) -> tokio_postgres::Client {
    let client = connect_retry(port, Duration::from_secs(30)).await;
    wait_for(
        "the new leader to accept writes",
        Duration::from_secs(30),
        || async {
            let r = client.query_one("SELECT pg_is_in_recovery()", &[]).await;
            match r.map(|r| r.get::<_, bool>(0)) {
                Ok(false) => Ok(()),
                other => Err(format!("in recovery: {other:?}")),
            }
        },
    )
    .await
    .unwrap();
    client
}

/// [`rejoined_with_rows`], and pg_rewind was started at most once to get there (a failed rewind is
/// retried at a bounded pace, never in a loop).
async fn rejoined_with_one_rewind(c: &LocalCluster, old: &str, acked: &[i32]) {
    rejoined_with_rows(c, old, acked).await;
    let attempts = rewind_attempts(c, old);
    assert!(
        attempts <= 1,
        "{old} started pg_rewind {attempts} times to rejoin once"
    );
}

#[tokio::test]
async fn former_primary_killed_rejoins_with_a_rewind_role_and_without_checksums() {
    let mut c = healthy_cluster(patroni_like("rejoin-kill")).await;
    let old = c.leader().await.unwrap();
    let writer = connect(c.node(&old).pg_port).await.unwrap();
    let mut acked = insert_rows(&writer, 0, 50).await;
    // The whole node dies: agent and postmaster (an unclean shutdown, so the former primary needs
    // crash recovery, and pg_rewind, before it can follow).
    c.node_mut(&old).kill_agent();
    c.node(&old).kill_postmaster();
    let new = new_leader_other_than(&c, &old, Duration::from_secs(60)).await;
    let client = writable(c.node(&new).pg_port).await;
    acked.extend(insert_rows(&client, 50, 100).await);
    let bin = c.binary.clone();
    c.node_mut(&old).start_agent(&bin).unwrap();
    rejoined_with_one_rewind(&c, &old, &acked).await;
}

#[tokio::test]
async fn leader_cut_off_from_the_dcs_past_ttl_rejoins_without_checksums() {
    let c = healthy_cluster(ClusterOptions {
        dcs_relay: true,
        ..patroni_like("rejoin-cut")
    })
    .await;
    let old = c.leader().await.unwrap();
    let writer = connect(c.node(&old).pg_port).await.unwrap();
    let mut acked = insert_rows(&writer, 0, 50).await;
    c.relay(&old).cut();
    let new = new_leader_other_than(&c, &old, Duration::from_secs(60)).await;
    let client = writable(c.node(&new).pg_port).await;
    acked.extend(insert_rows(&client, 50, 100).await);
    // ttl + 10 s cut off, as the report that found this: the former leader stopped its PostgreSQL
    // long before and has been waiting for the DCS.
    let ttl = Duration::from_secs(u64::from(c.options.ttl));
    tokio::time::sleep(ttl + Duration::from_secs(10)).await;
    c.relay(&old).restore();
    rejoined_with_one_rewind(&c, &old, &acked).await;
}

/// Issue 13 item 11: a former primary that holds WAL the cluster abandoned is never started as a
/// replica while there is no leader (before: started read-only "in archive recovery" past the fork,
/// then "following" the next leader forever without streaming), and is rewound once there is one.
#[tokio::test]
async fn diverged_former_primary_waits_for_a_leader_then_is_rewound() {
    let mut c = healthy_cluster(ClusterOptions {
        tags: vec![(2, "nofailover: true".into())],
        ..patroni_like("rejoin-diverged")
    })
    .await;
    let old = c.leader().await.unwrap();
    let writer = connect(c.node(&old).pg_port).await.unwrap();
    let acked = insert_rows(&writer, 0, 10).await;
    for n in c.nodes.iter().filter(|n| n.name != old) {
        let cl = connect_retry(n.pg_port, Duration::from_secs(10)).await;
        wait_for(
            "the rows on every replica",
            Duration::from_secs(30),
            || async {
                if read_ids(&cl).await.len() >= acked.len() {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await
        .unwrap();
    }
    // Replication stalls (its WAL senders frozen) while the primary acknowledges more: WAL nobody
    // else has. Then the whole node dies.
    let senders: Vec<i32> = writer
        .query("SELECT pid FROM pg_stat_replication", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!senders.is_empty());
    for pid in &senders {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), Signal::SIGSTOP).unwrap();
    }
    insert_rows(&writer, 10, 20).await;
    c.node_mut(&old).kill_agent();
    c.node(&old).kill_postmaster();
    let new = new_leader_other_than(&c, &old, Duration::from_secs(60)).await;
    writable(c.node(&new).pg_port).await;
    wait_for(
        "the history of timeline 1",
        Duration::from_secs(30),
        || async {
            let h = dcs_cluster(&c)
                .await
                .history
                .map(|h| h.value)
                .unwrap_or_default();
            if h.iter().any(|e| e.timeline == 1) {
                Ok(())
            } else {
                Err(format!("{h:?}"))
            }
        },
    )
    .await
    .unwrap();
    // The new leader dies too; the third member may not be promoted: no leader at all.
    c.node_mut(&new).kill_agent();
    c.node(&new).kill_postmaster();
    wait_for(
        "the leader key to expire",
        Duration::from_secs(60),
        || async {
            match c.leader().await {
                None => Ok(()),
                Some(l) => Err(format!("leader {l}")),
            }
        },
    )
    .await
    .unwrap();
    let bin = c.binary.clone();
    c.node_mut(&old).start_agent(&bin).unwrap();
    let waited = wait_for(
        "the diverged member to refuse to start",
        Duration::from_secs(60),
        || async {
            if c.node(&old)
                .log()
                .contains("not starting until a leader can rewind it")
            {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await;
    if let Err(e) = waited {
        dump_logs(&c);
        panic!("{e}");
    }
    assert_eq!(
        c.node(&old).postmaster_pid(),
        None,
        "{old} started its diverged data directory while there was no leader"
    );
    // The member on the new timeline comes back, leads again, and the diverged one is rewound.
    c.node_mut(&new).start_agent(&bin).unwrap();
    rejoined_with_rows(&c, &old, &acked).await;
}
