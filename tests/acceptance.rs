//! Acceptance tests: real PostgreSQL 15, three agents and the proxy on 127.0.0.1, on a real etcd and
//! (the `zookeeper_*` tests, the same scenarios) on a real ZooKeeper configured with `zookeeper:
//! hosts:` instead of `etcd3:`. Run one at a time (`--test-threads=1`): each starts a whole cluster
//! and fails over on short timings (ttl 6, loop_wait 1, retry_timeout 2; the ZooKeeper session
//! timeout is the ttl).

mod common;

use std::time::Duration;

use common::*;
use praetor_harness::DcsKind;

fn on(dcs: DcsKind, scope: &str) -> ClusterOptions {
    ClusterOptions {
        scope: scope.into(),
        dcs,
        ..Default::default()
    }
}

async fn bootstrap(dcs: DcsKind) {
    let c = healthy_cluster(on(dcs, &format!("{}boot", dcs.family()))).await;
    let cluster = c.cluster_json().await.expect("/cluster");
    let members = cluster["members"].as_array().expect("members");
    assert_eq!(members.len(), 3, "{cluster}");
    let leaders: Vec<_> = members.iter().filter(|m| m["role"] == "leader").collect();
    assert_eq!(leaders.len(), 1, "{cluster}");
    let leader = leaders[0]["name"].as_str().unwrap().to_string();
    let streaming = members.iter().filter(|m| m["state"] == "streaming").count();
    assert_eq!(streaming, 2, "{cluster}");

    // The cluster lives in the DCS under Patroni's layout.
    let view = dcs_cluster(&c).await;
    assert_eq!(
        view.leader.as_ref().map(|l| l.name.as_str()),
        Some(leader.as_str())
    );
    assert_eq!(view.members.len(), 3, "{view:?}");
    let sysid = view.initialize.clone().expect("initialize");
    assert!(
        !sysid.is_empty() && sysid.chars().all(|c| c.is_ascii_digit()),
        "{sysid}"
    );
    assert!(view.config.is_some(), "bootstrap.dcs seeded the config key");

    // The leader really is a primary, the others really are replicas, each with its own slot.
    for n in &c.nodes {
        let client = connect(n.pg_port).await.expect("connect to member");
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(in_recovery, n.name != leader, "{}", n.name);
        if n.name == leader {
            let slots: Vec<String> = client
                .query(
                    "SELECT slot_name::text FROM pg_replication_slots WHERE active ORDER BY 1",
                    &[],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect();
            assert_eq!(slots, others(&c, &leader), "one active slot per replica");
        }
    }

    // Writes through the proxy reach the replicas through the read-only port.
    let proxy = c.proxy.as_ref().expect("proxy");
    let rw = connect_retry(proxy.rw_port, Duration::from_secs(30)).await;
    let acked = insert_rows(&rw, 0, 100).await;
    let ro = connect_retry(proxy.ro_port, Duration::from_secs(30)).await;
    replica_has_rows(&ro, &acked).await;
}

async fn kill_9(dcs: DcsKind) {
    let mut c = healthy_cluster(on(dcs, &format!("{}failover", dcs.family()))).await;
    let first = c.leader().await.expect("leader");
    let proxy_rw = c.proxy.as_ref().unwrap().rw_port;
    let rw = connect_retry(proxy_rw, Duration::from_secs(30)).await;
    let acked = insert_rows(&rw, 0, 1000).await;
    // The member to kill is the one leading once the rows are on every replica (a lease lost on a
    // loaded machine may have moved the lock meanwhile; CI saw that once, unexplained).
    let old = leader_with_replicas_caught_up(&c).await;
    if old != first {
        eprintln!("the leader moved from {first} to {old} before the fault");
    }
    let old_timeline = member_timeline(&c, &old).await.expect("timeline");

    // The whole primary node dies: agent and postmaster together. Its lease (etcd) or session
    // (ZooKeeper) expires after ttl, and with it the leader key.
    let node = c.node_mut(&old);
    node.kill_agent();
    node.kill_postmaster();
    let took = first_write_through(proxy_rw, 100_000, Duration::from_secs(90)).await;
    eprintln!(
        "{}: kill -9 of the leader: first write through the proxy after {took:?}",
        dcs.family()
    );

    let new = c.leader().await.expect("a new leader");
    assert_ne!(new, old);
    let client = connect_retry(proxy_rw, Duration::from_secs(10)).await;
    let ids = read_ids(&client).await;
    for id in &acked {
        assert!(
            ids.contains(id),
            "acknowledged row {id} lost in the failover"
        );
    }
    assert!(ids.contains(&100_000));

    // The old node comes back and rejoins as a replica on the new timeline.
    let bin = c.binary.clone();
    c.node_mut(&old).start_agent(&bin).unwrap();
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(120)).await {
        dump_logs(&c);
        panic!("{e}");
    }
    let cluster = c.cluster_json().await.unwrap();
    let members = cluster["members"].as_array().unwrap();
    let me = members.iter().find(|m| m["name"] == old.as_str()).unwrap();
    let leader = members.iter().find(|m| m["role"] == "leader").unwrap();
    assert_eq!(me["state"], "streaming", "{cluster}");
    assert_eq!(me["timeline"], leader["timeline"], "{cluster}");
    assert!(
        leader["timeline"].as_u64().unwrap() > old_timeline,
        "{cluster}"
    );
    assert_eq!(is_primary(c.node(&old).pg_port).await, Some(false));
}

async fn ctl_switchover(dcs: DcsKind) {
    let c = healthy_cluster(on(dcs, &format!("{}switch", dcs.family()))).await;
    let old = c.leader().await.expect("leader");
    let candidate = c.nodes.iter().find(|n| n.name != old).unwrap().name.clone();
    let proxy_rw = c.proxy.as_ref().unwrap().rw_port;
    let before = connect_retry(proxy_rw, Duration::from_secs(30)).await;
    let port: i32 = before
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(port as u16, c.node(&old).pg_port);

    // ctl reads the DCS section of the node's configuration and writes the failover key.
    let out = try_ctl_switchover(&c, &old, &candidate).await;
    if out.code != 0 {
        dump_logs(&c);
    }
    assert_eq!(out.code, 0, "ctl switchover failed:\n{out}");
    assert!(
        out.stdout
            .contains(&format!("Successfully switched over to \"{candidate}\"")),
        "{out}"
    );

    // The proxy closed the connection to the former leader (fencing) ...
    assert!(
        before.query_one("SELECT 1", &[]).await.is_err(),
        "connection to the old leader must be closed"
    );
    // ... and new connections reach the new leader, writable.
    let after = connect_retry(proxy_rw, Duration::from_secs(30)).await;
    let port: i32 = after
        .query_one("SELECT inet_server_port()", &[])
        .await
        .unwrap()
        .get(0);
    if port as u16 != c.node(&candidate).pg_port {
        // Seen once in CI (2026-12-07, port of another member, logs lost): say which member the
        // proxy reached and what the DCS says now, with every log.
        let reached = c.nodes.iter().find(|n| i32::from(n.pg_port) == port);
        let view = dcs_cluster(&c).await;
        dump_logs(&c);
        panic!(
            "after the switchover to {candidate} (port {}), a new read-write connection reached port {port} ({:?}); the DCS now names leader {:?}",
            c.node(&candidate).pg_port,
            reached.map(|n| &n.name),
            view.leader.map(|l| l.name)
        );
    }
    after
        .batch_execute("CREATE TABLE after_switchover (x int)")
        .await
        .unwrap();
    // The former leader follows the new one.
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(60)).await {
        dump_logs(&c);
        panic!("{e}");
    }
    assert_eq!(c.leader().await.as_deref(), Some(candidate.as_str()));
    let out = ctl(&c, &["list"], "").await;
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains(&candidate), "{out}");
}

/// `(pg_current_wal_lsn() - '0/0')` or, on a replica, `pg_last_wal_receive_lsn()`, in bytes.
async fn wal_lsn(client: &tokio_postgres::Client, function: &str) -> u64 {
    let sql = format!("SELECT ({function}() - '0/0')::bigint");
    let v: i64 = client.query_one(&sql, &[]).await.unwrap().get(0);
    v as u64
}

/// A client writing about 3 MB of WAL per second straight to `port` (300 rows of 1 kB every
/// 100 ms) until it is stopped or a write fails (the leader stepping down ends it).
fn steady_wal(
    port: u16,
) -> (
    tokio::task::JoinHandle<u64>,
    tokio_util::sync::CancellationToken,
) {
    let stop = tokio_util::sync::CancellationToken::new();
    let until = stop.clone();
    let task = tokio::spawn(async move {
        let client = connect(port).await.expect("connect to the leader");
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS wal_load (x text)")
            .await
            .unwrap();
        let mut batches = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !until.is_cancelled() {
            tick.tick().await;
            let insert =
                "INSERT INTO wal_load SELECT repeat('x', 1000) FROM generate_series(1, 300)";
            if client.batch_execute(insert).await.is_err() {
                break;
            }
            batches += 1;
        }
        batches
    });
    (task, stop)
}

/// Seen in `ctl_switchover` (2 runs in 109 here, before the fix): "switchover is not possible: candidate
/// pg2 is lagging: 16777216 bytes behind the leader" for a candidate that had replayed everything.
/// The switchover check compared the leader's and the candidate's `/patroni` positions, each from
/// its agent's last loop (up to `loop_wait` old, taken at different moments: here just before and
/// just after a WAL segment switch). Patroni's `/patroni` asks PostgreSQL at every request; so
/// does Praetor's now. Under a steady write load the loop's positions of two members differ by up
/// to `loop_wait` times the WAL rate: switchovers refused as lagging, and replicas flapping out of
/// a load balancer's `/replica?lag=` check.
#[tokio::test]
async fn under_write_load_the_api_reports_live_wal_positions_lag_checks_pass_and_a_switchover_is_not_refused(
) {
    let c = healthy_cluster(on(DcsKind::Etcd, "walload")).await;
    let old = leader_with_replicas_caught_up(&c).await;
    let candidate = c.nodes.iter().find(|n| n.name != old).unwrap().name.clone();
    let leader = connect(c.node(&old).pg_port).await.unwrap();
    let (writer, stop) = steady_wal(c.node(&old).pg_port);
    // The load runs before anything is measured: the loop's positions are a cycle old.
    let start = wal_lsn(&leader, "pg_current_wal_lsn").await;
    wait_for("3 MB of WAL written", Duration::from_secs(30), || async {
        let now = wal_lsn(&leader, "pg_current_wal_lsn").await;
        if now >= start + (3 << 20) {
            Ok(())
        } else {
            Err(format!("{} bytes", now - start))
        }
    })
    .await
    .unwrap();

    // Each replica's `/patroni` shows at least the position its server had received before the
    // request: a position read at the request, not at the loop's last cycle (under this load
    // that is ~300 kB further on every 100 ms).
    for n in c.nodes.iter().filter(|n| n.name != old) {
        let replica = connect(n.pg_port).await.unwrap();
        let target = wal_lsn(&leader, "pg_current_wal_lsn").await;
        let received = wait_for(
            &format!("{} to receive the leader's position", n.name),
            Duration::from_secs(30),
            || async {
                let r = wal_lsn(&replica, "pg_last_wal_receive_lsn").await;
                if r >= target {
                    Ok(r)
                } else {
                    Err(format!("{} bytes behind", target - r))
                }
            },
        )
        .await
        .unwrap();
        let (_, body) = praetor_harness::http_get(&n.api_addr(), "/patroni")
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let reported = v["xlog"]["received_location"].as_u64().unwrap_or(0);
        assert!(
            reported >= received,
            "{}'s /patroni reports received_location {reported}, older than the {received} its server had received before the request: {v}",
            n.name
        );
    }

    // A load balancer's lag check (HAProxy with `/replica?lag=1MB`, Patroni's documented use)
    // keeps every replica that keeps up: its position read now is compared with the leader's last
    // published one, as Patroni does, not a position of its last loop with one of the leader's.
    for n in c.nodes.iter().filter(|n| n.name != old) {
        let mut codes = Vec::new();
        for _ in 0..10 {
            let (code, _) = praetor_harness::http_get(&n.api_addr(), "/replica?lag=1MB")
                .await
                .unwrap();
            codes.push(code);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            codes.iter().all(|&c| c == 200),
            "{}'s /replica?lag=1MB under a 3 MB/s load answered {codes:?}",
            n.name
        );
    }

    // The user-visible part: a switchover under the load goes through.
    let out = try_ctl_switchover(&c, &old, &candidate).await;
    stop.cancel();
    let batches = writer.await.unwrap();
    if out.code != 0 {
        dump_logs(&c);
    }
    assert_eq!(
        out.code, 0,
        "ctl switchover under write load failed ({batches} batches written):\n{out}"
    );
    assert!(
        out.stdout
            .contains(&format!("Successfully switched over to \"{candidate}\"")),
        "{out}"
    );
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(60)).await {
        dump_logs(&c);
        panic!("{e}");
    }
    assert_eq!(c.leader().await.as_deref(), Some(candidate.as_str()));
}

#[tokio::test]
async fn three_nodes_bootstrap_with_one_leader_and_two_streaming_replicas() {
    bootstrap(DcsKind::Etcd).await;
}

#[tokio::test]
async fn zookeeper_three_nodes_bootstrap_with_one_leader_and_two_streaming_replicas() {
    bootstrap(DcsKind::ZooKeeper).await;
}

#[tokio::test]
async fn kill_9_of_the_leader_fails_over_loses_no_row_and_the_old_leader_rejoins_on_the_new_timeline(
) {
    kill_9(DcsKind::Etcd).await;
}

#[tokio::test]
async fn zookeeper_kill_9_of_the_leader_fails_over_loses_no_row_and_the_old_leader_rejoins_on_the_new_timeline(
) {
    kill_9(DcsKind::ZooKeeper).await;
}

#[tokio::test]
async fn ctl_switchover_moves_the_leader_and_the_proxy_follows() {
    ctl_switchover(DcsKind::Etcd).await;
}

#[tokio::test]
async fn zookeeper_ctl_switchover_moves_the_leader_and_the_proxy_follows() {
    ctl_switchover(DcsKind::ZooKeeper).await;
}

#[tokio::test]
async fn rows_written_through_the_read_write_port_are_read_from_a_replica_through_the_read_only_port(
) {
    let c = healthy_cluster(ClusterOptions::default()).await;
    let proxy = c.proxy.as_ref().expect("proxy");
    let rw = connect_retry(proxy.rw_port, Duration::from_secs(30)).await;
    let in_recovery: bool = rw
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!in_recovery, "the read-write port reaches the primary");
    let acked = insert_rows(&rw, 0, 1000).await;
    let ro = connect_retry(proxy.ro_port, Duration::from_secs(30)).await;
    let in_recovery: bool = ro
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(in_recovery, "the read-only port reaches a replica");
    replica_has_rows(&ro, &acked).await;
}

#[tokio::test]
async fn sigterm_of_the_leader_agent_hands_over_without_losing_a_committed_row() {
    let mut c = healthy_cluster(ClusterOptions::default()).await;
    let old = c.leader().await.expect("leader");
    let proxy_rw = c.proxy.as_ref().unwrap().rw_port;
    // A client writes continuously, remembering every acknowledged id.
    let writer = writer::Writer::start(proxy_rw).await;
    writer.wait_more_than(20).await;

    let code = c
        .node_mut(&old)
        .stop_agent(Duration::from_secs(60))
        .await
        .expect("agent exits");
    assert_eq!(code, Some(0), "the agent exits cleanly on SIGTERM");
    let new = wait_for("a new leader", Duration::from_secs(30), || async {
        match c.leader().await {
            Some(l) if l != old => Ok(l),
            other => Err(format!("leader {other:?}")),
        }
    })
    .await
    .unwrap();
    writer.more(20).await;
    let acked = writer.stop().await;

    let lost = writer::lost_writes(c.node(&new).pg_port, &acked).await;
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
}

#[tokio::test]
async fn switchover_without_candidate_promotes_exactly_one_member_and_the_old_leader_stays_out_of_the_race(
) {
    let c = healthy_cluster(ClusterOptions::default()).await;
    let old = c.leader().await.expect("leader");
    let out = std::process::Command::new(binary())
        .args(["ctl", "-c"])
        .arg(&c.nodes[0].config)
        .args(["switchover", "--force"])
        .output()
        .expect("run ctl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(60)).await {
        dump_logs(&c);
        panic!("{e}");
    }
    let cluster = c.cluster_json().await.unwrap();
    let members = cluster["members"].as_array().unwrap();
    let leader = members.iter().find(|m| m["role"] == "leader").unwrap();
    assert_ne!(leader["name"], old.as_str(), "{cluster}");
    // One promotion: timeline 1 → 2 on every member, never a second fork.
    for m in members {
        assert_eq!(m["timeline"], 2, "{cluster}");
    }
}
