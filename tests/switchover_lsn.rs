//! Acceptance test of the switchover rule "never promote a candidate that lacks the old primary's
//! last WAL" (Patroni: `demote()` → `release_leader_key_voluntarily(last_lsn)`; Praetor: the leader
//! waits for its candidate to stream, publishes its shutdown checkpoint in `status.optime`, and a
//! member lacking it does not promote). Real etcd and PostgreSQL 15, two agents, on 127.0.0.1.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// How many times `node`'s agent started pg_rewind (the runner logs each background task start).
fn rewind_attempts(c: &LocalCluster, node: &str) -> usize {
    c.node(node)
        .log()
        .lines()
        .filter(|l| l.contains("starting") && l.contains("task=Rewind"))
        .count()
}

/// Writes a row straight to `port` every 10 ms until `stop`, recording the id of each acknowledged
/// (committed) row. Errors (the primary shutting down, read-only) are not acknowledgements.
fn writer(
    port: u16,
    stop: tokio_util::sync::CancellationToken,
) -> (Arc<Mutex<Vec<i32>>>, tokio::task::JoinHandle<()>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let a = acked.clone();
    let h = tokio::spawn(async move {
        let mut client = None;
        while !stop.is_cancelled() {
            if client.is_none() {
                client = connect(port).await.ok();
            }
            if let Some(cl) = &client {
                match cl
                    .query_one("INSERT INTO w DEFAULT VALUES RETURNING id", &[])
                    .await
                {
                    Ok(row) => a.lock().unwrap().push(row.get::<_, i32>(0)),
                    Err(_) => client = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (acked, h)
}

/// Terminates `candidate`'s walsender on the leader (`lc`), waiting until it has one to terminate.
async fn cut_stream(lc: &tokio_postgres::Client, candidate: &str) {
    wait_for("a walsender to cut", Duration::from_secs(30), || async {
        let cut: bool = lc
            .query_one(
                "SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) \
                 FROM pg_stat_replication WHERE application_name = $1",
                &[&candidate],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if cut {
            Ok(())
        } else {
            Err("no walsender".to_string())
        }
    })
    .await
    .expect("the candidate's walsender terminated");
}

/// The race found by tests/reload.rs: the candidate's WAL receiver is down (restarting) when
/// `ctl switchover` runs, while a client commits on the leader. A fast shutdown hands the last WAL
/// only to standbys connected at that moment, so promoting the candidate then dropped the last
/// commits from the new timeline (asynchronous replication) and left the old primary diverged, to
/// be rewound. Now: every acknowledged write is on the new leader, and the old primary rejoins
/// without pg_rewind (it was not diverged).
#[tokio::test(flavor = "multi_thread")]
async fn switchover_while_the_candidates_wal_receiver_restarts_loses_no_write_and_needs_no_rewind()
{
    let c = healthy_cluster(ClusterOptions {
        scope: "switchover-lsn".into(),
        nodes: 2,
        proxy: false,
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.expect("leader");
    let candidate = others(&c, &leader)[0].clone();
    let lc = connect(c.node(&leader).pg_port).await.expect("leader");
    lc.batch_execute("CREATE TABLE w (id serial PRIMARY KEY)")
        .await
        .expect("create table");
    replicas_caught_up(&c, &leader).await;

    let stop = tokio_util::sync::CancellationToken::new();
    let (acked, writes) = writer(c.node(&leader).pg_port, stop.clone());
    wait_for("the first writes", Duration::from_secs(30), || async {
        if acked.lock().unwrap().len() >= 20 {
            Ok(())
        } else {
            Err("fewer than 20 writes".to_string())
        }
    })
    .await
    .expect("writes");

    // Cut the candidate's stream so that it stays down for seconds, longer than a switchover
    // takes: its startup process starts a WAL receiver again at most once per
    // wal_retrieve_retry_interval (counted from the last start), so cut it, let it come back, and
    // cut it again.
    let cc = connect(c.node(&candidate).pg_port)
        .await
        .expect("candidate");
    for sql in [
        "ALTER SYSTEM SET wal_retrieve_retry_interval = '8s'",
        "SELECT pg_reload_conf()",
    ] {
        cc.batch_execute(sql)
            .await
            .expect("set wal_retrieve_retry_interval");
    }
    cut_stream(&lc, &candidate).await;
    wait_for(
        "the candidate to stream again",
        Duration::from_secs(30),
        || async {
            match cc
                .query_opt("SELECT status FROM pg_stat_wal_receiver", &[])
                .await
            {
                Ok(Some(row)) if row.get::<_, String>(0) == "streaming" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .expect("streaming");
    cut_stream(&lc, &candidate).await;

    let began = Instant::now();
    let out = ctl_switchover(&c, &leader, &candidate).await;
    eprintln!(
        "switchover took {:.1} s: {}",
        began.elapsed().as_secs_f64(),
        out.stdout.trim()
    );
    wait_for("the candidate to lead", Duration::from_secs(60), || async {
        match c.leader().await {
            Some(l) if l == candidate => Ok(()),
            other => Err(format!("leader: {other:?}")),
        }
    })
    .await
    .expect("the candidate leads");
    stop.cancel();
    writes.await.expect("writer");
    let acked = acked.lock().unwrap().clone();

    if let Err(e) = c.wait_healthy(1, Duration::from_secs(120)).await {
        dump_logs(&c);
        panic!("the old primary did not rejoin: {e}");
    }
    let nc = connect_retry(c.node(&candidate).pg_port, Duration::from_secs(30)).await;
    let rows: Vec<i32> = nc
        .query("SELECT id FROM w", &[])
        .await
        .expect("read the new leader")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let have: std::collections::HashSet<i32> = rows.into_iter().collect();
    let lost: Vec<i32> = acked
        .iter()
        .copied()
        .filter(|id| !have.contains(id))
        .collect();
    if !lost.is_empty() {
        dump_logs(&c);
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are missing on the new leader {candidate}: {lost:?}",
        lost.len(),
        acked.len()
    );
    assert_eq!(
        rewind_attempts(&c, &leader),
        0,
        "the old primary {leader} was rewound: the candidate was promoted without its last WAL"
    );
    assert_eq!(is_primary(c.node(&leader).pg_port).await, Some(false));
}
