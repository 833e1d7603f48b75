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
            let ids = try_read_ids(&client).await?;
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

/// Writes rows 0..50 on the leader, kills its whole node (agent, then postmaster: an unclean
/// shutdown), waits (60 s) for another member to lead and writes rows 50..100 there. Returns the
/// former leader and every acknowledged row.
async fn kill_the_leader_node_and_write_on_the_next(c: &mut LocalCluster) -> (String, Vec<i32>) {
    let old = c.leader().await.unwrap();
    let writer = connect(c.node(&old).pg_port).await.unwrap();
    let mut acked = insert_rows(&writer, 0, 50).await;
    c.node_mut(&old).kill_agent();
    c.node(&old).kill_postmaster();
    let new = new_leader_other_than(c, &old, Duration::from_secs(60)).await;
    let client = writable(c.node(&new).pg_port).await;
    acked.extend(insert_rows(&client, 50, 100).await);
    (old, acked)
}

#[tokio::test]
async fn former_primary_killed_rejoins_with_a_rewind_role_and_without_checksums() {
    let mut c = healthy_cluster(patroni_like("rejoin-kill")).await;
    // The whole node dies: agent and postmaster (an unclean shutdown, so the former primary needs
    // crash recovery, and pg_rewind, before it can follow).
    let (old, acked) = kill_the_leader_node_and_write_on_the_next(&mut c).await;
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
        // The replica may not have replayed the `CREATE TABLE` yet (a missing table is "not
        // yet": it panicked here once, at load ~5).
        wait_for(
            "the rows on every replica",
            Duration::from_secs(30),
            || async {
                if try_read_ids(&cl).await?.len() >= acked.len() {
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
    // Read from the DCS itself: `c.leader()` also answers `None` when no agent's `/cluster`
    // answered within its 2 s (one agent left, on a loaded machine), which let the test go on
    // while the dead leader's key still stood.
    wait_for(
        "the leader key to expire",
        Duration::from_secs(60),
        || async {
            match dcs_cluster(&c).await.leader {
                None => Ok(()),
                Some(l) => Err(format!("leader {}", l.name)),
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

/// A copy of PostgreSQL's program directory (symbolic links) whose `pg_rewind` fails after it has
/// begun changing the target while the file `interrupt-rewind` exists next to it: it runs the real
/// pg_rewind with `--dry-run` (every phase line, down to `need to copy ...`, nothing written), then
/// empties the target's newest WAL segment, as seed 79's interrupted copy left one, prints the error
/// pg_rewind prints when its source goes away mid-copy and exits 1.
fn interrupting_bin_dir(work: &praetor_harness::WorkDir) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let real = praetor_harness::pg_bin_dir();
    let bin = work.subdir("bin", 0o755).unwrap();
    for entry in std::fs::read_dir(&real).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "pg_rewind" {
            std::os::unix::fs::symlink(entry.path(), bin.join(entry.file_name())).unwrap();
        }
    }
    let script = format!(
        r#"#!/bin/sh
# Test double (tests/rejoin.rs): the real pg_rewind, interrupted mid-copy while the flag exists.
if [ ! -e "$(dirname "$0")/interrupt-rewind" ]; then exec {real}/pg_rewind "$@"; fi
{real}/pg_rewind --dry-run "$@" || exit $?
# The agent passes -D <data_dir> first.
last=$(ls "$2"/pg_wal/0* | sort | tail -n 1)
: > "$last"
echo "pg_rewind: error: unexpected result while fetching remote files: server closed the connection unexpectedly" >&2
exit 1
"#,
        real = real.display()
    );
    let path = bin.join("pg_rewind");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(bin.join("interrupt-rewind"), "").unwrap();
    bin
}

/// `node`'s `/patroni` document.
async fn patroni_doc(c: &LocalCluster, node: &str) -> serde_json::Value {
    let (_, body) = call(c.node(node), "GET", "/patroni", None).await;
    serde_json::from_str(&body).unwrap_or_default()
}

/// Waits until `node`'s log (from byte `from` on) holds `n` lines of the decision that a pg_rewind
/// damaged its data directory (one per HA loop).
async fn damaged_loops(c: &LocalCluster, node: &str, from: usize, n: usize) {
    let r = wait_for(
        "loops deciding the data directory is damaged",
        Duration::from_secs(120),
        || async {
            let log = c.node(node).log();
            let seen = log[from.min(log.len())..]
                .lines()
                .filter(|l| {
                    l.contains("pg_rewind was interrupted after changing the data directory")
                })
                .count();
            if seen >= n {
                Ok(())
            } else {
                Err(format!("{seen} of {n}"))
            }
        },
    )
    .await;
    if let Err(e) = r {
        dump_logs(c);
        panic!("{node}: {e}");
    }
}

/// Issue 14 (nemesis seed 79): a pg_rewind that fails after it began changing the data directory
/// is not run again in a loop, PostgreSQL is not started on the damaged directory (also after an
/// agent restart: the marker next to the data directory), `/patroni` says why; with
/// `remove_data_directory_on_rewind_failure` the member clones again and streams.
#[tokio::test]
async fn rewind_interrupted_after_changing_the_target_is_not_retried_nor_started() {
    let work = praetor_harness::WorkDir::new("rewind-bin").unwrap();
    let bin_dir = interrupting_bin_dir(&work);
    let mut c = healthy_cluster(ClusterOptions {
        bin_dir: Some(bin_dir),
        ..patroni_like("rewind-damaged")
    })
    .await;
    let (old, acked) = kill_the_leader_node_and_write_on_the_next(&mut c).await;
    let bin = c.binary.clone();
    let from = c.node(&old).log().len();
    c.node_mut(&old).start_agent(&bin).unwrap();

    // Several loops after the failure: one pg_rewind, no PostgreSQL, said once at error level.
    damaged_loops(&c, &old, from, 5).await;
    assert_eq!(rewind_attempts(&c, &old), 1, "pg_rewind was run again");
    assert_eq!(
        c.node(&old).postmaster_pid(),
        None,
        "PostgreSQL was started"
    );
    let log = c.node(&old).log();
    let errors = log[from..]
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("pg_rewind was interrupted"))
        .count();
    assert_eq!(errors, 1, "the damaged state is logged at error level once");
    let doc = patroni_doc(&c, &old).await;
    assert_eq!(doc["state"], "rewind failed", "{doc}");
    let why = doc["rewind_failure"].as_str().unwrap_or_default();
    assert!(
        why.contains("unexpected result while fetching remote files")
            && why.contains(&format!("praetor ctl reinit <cluster> {old}")),
        "{doc}"
    );

    // An agent restarted (systemd) finds the marker: still no pg_rewind, no PostgreSQL.
    let marker = c
        .node(&old)
        .data_dir()
        .with_file_name("data.praetor-rewind");
    assert!(marker.exists(), "{} is missing", marker.display());
    c.node_mut(&old).kill_agent();
    let from = c.node(&old).log().len();
    c.node_mut(&old).start_agent(&bin).unwrap();
    damaged_loops(&c, &old, from, 3).await;
    assert_eq!(
        rewind_attempts(&c, &old),
        1,
        "pg_rewind was run after the restart"
    );
    assert_eq!(
        c.node(&old).postmaster_pid(),
        None,
        "PostgreSQL was started"
    );
    assert_eq!(patroni_doc(&c, &old).await["state"], "rewind failed");

    // With remove_data_directory_on_rewind_failure: a new copy, streaming.
    c.node_mut(&old).kill_agent();
    let config = c.node(&old).config.clone();
    let yaml = std::fs::read_to_string(&config).unwrap();
    let yaml = yaml.replacen(
        "\npostgresql:\n",
        "\npostgresql:\n  remove_data_directory_on_rewind_failure: true\n",
        1,
    );
    praetor_harness::write_file(&config, &yaml).unwrap();
    c.node_mut(&old).start_agent(&bin).unwrap();
    rejoined_with_rows(&c, &old, &acked).await;
    assert_eq!(rewind_attempts(&c, &old), 1, "re-cloned, not rewound");
    assert!(
        !marker.exists(),
        "{} outlived the new copy",
        marker.display()
    );
}
