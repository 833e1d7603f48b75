//! Acceptance tests of quorum commit (`synchronous_mode: quorum`, Patroni's quorum.py) on real etcd,
//! PostgreSQL 15 and four agents on 127.0.0.1: the `sync` key and `synchronous_standby_names` the
//! leader keeps, the `quorum` field rewritten when `synchronous_node_count` changes, and a crash of
//! the leader right after a commit only one standby acknowledged. Run one at a time
//! (`--test-threads=1`).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use praetor_harness::cluster::LocalCluster;

/// The `sync` key as (leader, voters, quorum), read from the DCS.
async fn sync_key(c: &LocalCluster) -> Option<(String, BTreeSet<String>, u32)> {
    let s = dcs_cluster(c).await.sync?.value;
    Some((
        s.leader.clone()?,
        s.members().into_iter().collect(),
        s.quorum?,
    ))
}

async fn show_sync_standby_names(port: u16) -> Result<String, String> {
    let cl = connect(port).await.map_err(|e| e.to_string())?;
    cl.query_one("SHOW synchronous_standby_names", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| e.to_string())
}

/// `ANY n ("a","b",...)` as the agent renders it, names sorted.
fn any(n: u32, names: &BTreeSet<String>) -> String {
    let list: Vec<String> = names.iter().map(|m| format!("\"{m}\"")).collect();
    format!("ANY {n} ({})", list.join(","))
}

/// Waits until the key names `leader` with `voters` and `quorum`, and the leader's PostgreSQL runs
/// with `synchronous_standby_names = ANY numsync (voters)`.
async fn wait_quorum_state(
    c: &LocalCluster,
    leader: &str,
    voters: &BTreeSet<String>,
    quorum: u32,
    numsync: u32,
) {
    let want_key = (leader.to_string(), voters.clone(), quorum);
    let want_guc = any(numsync, voters);
    let port = c.node(leader).pg_port;
    let waited = wait_for(
        &format!("sync key {want_key:?} and synchronous_standby_names {want_guc}"),
        Duration::from_secs(60),
        || async {
            let key = sync_key(c).await;
            let guc = show_sync_standby_names(port).await?;
            if key.as_ref() == Some(&want_key) && guc == want_guc {
                Ok(())
            } else {
                Err(format!("key {key:?}, synchronous_standby_names {guc:?}"))
            }
        },
    )
    .await;
    if let Err(e) = waited {
        dump_logs(c);
        panic!("{e}");
    }
}

/// The PID of the WAL receiver of the standby on `port`.
async fn walreceiver_pid(port: u16) -> i32 {
    wait_for(
        &format!("the WAL receiver of port {port}"),
        Duration::from_secs(30),
        || async {
            let cl = connect(port).await.map_err(|e| e.to_string())?;
            let row = cl
                .query_opt("SELECT pid FROM pg_stat_wal_receiver", &[])
                .await
                .map_err(|e| e.to_string())?;
            row.map(|r| r.get::<_, i32>(0))
                .ok_or_else(|| "no WAL receiver".to_string())
        },
    )
    .await
    .unwrap()
}

async fn has_row(port: u16, id: i32) -> Result<bool, String> {
    let cl = connect(port).await.map_err(|e| e.to_string())?;
    cl.query_one("SELECT count(*) FROM quorum_w WHERE id = $1", &[&id])
        .await
        .map(|r| r.get::<_, i64>(0) == 1)
        .map_err(|e| e.to_string())
}

/// A 4-member quorum cluster that went through count 2 -> 1, then wrote row 1 while the WAL
/// receivers of two standbys were stopped (SIGSTOP): `acker` is the only standby that has it.
struct StalledCommit {
    c: LocalCluster,
    leader: String,
    acker: String,
    stalled: Vec<String>,
    frozen: Vec<i32>,
}

impl StalledCommit {
    async fn start() -> StalledCommit {
        let c = healthy_cluster(ClusterOptions {
            nodes: 4,
            dcs_extra: vec![
                "synchronous_mode: quorum".into(),
                "synchronous_node_count: 2".into(),
            ],
            ..Default::default()
        })
        .await;
        let leader = c.leader().await.unwrap();
        let standbys: BTreeSet<String> = others(&c, &leader).into_iter().collect();
        // Count 2 of three standbys: ANY 2, and a candidate must see 1 other key member (Patroni's
        // quorum = |voters| - numsync).
        wait_quorum_state(&c, &leader, &standbys, 1, 2).await;

        // Count 2 -> 1: quorum rewritten to 2 (the key first, then ANY 1).
        let (code, body) = call(
            c.node(&leader),
            "PATCH",
            "/config",
            Some(r#"{"synchronous_node_count": 1}"#),
        )
        .await;
        assert_eq!(code, 200, "PATCH /config: {body}");
        wait_quorum_state(&c, &leader, &standbys, 2, 1).await;

        let setup = connect(c.node(&leader).pg_port).await.unwrap();
        setup
            .batch_execute("CREATE TABLE quorum_w (id int PRIMARY KEY)")
            .await
            .unwrap();
        // Everyone has the table before two standbys stop receiving WAL.
        replicas_caught_up(&c, &leader).await;
        let mut names = standbys.iter().cloned();
        let acker = names.next().unwrap();
        let stalled: Vec<String> = names.collect();
        let mut frozen = vec![];
        for s in &stalled {
            let pid = walreceiver_pid(c.node(s).pg_port).await;
            kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
            frozen.push(pid);
        }
        // synchronous_commit on with ANY 1: the commit returns once `acker` flushed it, the only
        // standby still receiving.
        setup
            .execute("INSERT INTO quorum_w VALUES (1)", &[])
            .await
            .unwrap();
        for s in &stalled {
            assert!(
                !has_row(c.node(s).pg_port, 1).await.unwrap(),
                "{s} received WAL with its WAL receiver stopped"
            );
        }
        StalledCommit {
            c,
            leader,
            acker,
            stalled,
            frozen,
        }
    }

    /// Kills -9 the agent and the postmaster of `name`.
    fn crash(&mut self, name: &str) {
        let node = self.c.node_mut(name);
        node.kill_agent();
        node.kill_postmaster();
    }

    fn thaw(&self) {
        for pid in &self.frozen {
            let _ = kill(Pid::from_raw(*pid), Signal::SIGCONT);
        }
    }

    /// Waits for a running leader other than the crashed one; the logs on failure.
    async fn new_leader(&self) -> String {
        let got = wait_for("a new leader", Duration::from_secs(90), || async {
            match self.c.leader().await {
                Some(l) if l != self.leader => Ok(l),
                other => Err(format!("leader {other:?}")),
            }
        })
        .await;
        got.unwrap_or_else(|e| {
            dump_logs(&self.c);
            panic!("{e}");
        })
    }
}

#[tokio::test]
async fn quorum_commit_loses_no_acknowledged_row_when_the_leader_is_killed() {
    let mut t = StalledCommit::start().await;
    let old = t.leader.clone();
    t.crash(&old);
    let new = t.new_leader().await;
    t.thaw();
    assert_eq!(
        new, t.acker,
        "only the standby that acknowledged the commit may be promoted"
    );
    let promoted = t.c.node(&new).pg_port;
    let row = wait_for("the new leader to answer", Duration::from_secs(30), || {
        has_row(promoted, 1)
    })
    .await
    .unwrap();
    assert!(row, "the acknowledged row is lost on {new}");
    // The new leader takes the key over and the former leader leaves it: ANY 1 of the other two,
    // quorum 1.
    let rest: BTreeSet<String> = t.stalled.iter().cloned().collect();
    wait_quorum_state(&t.c, &new, &rest, 1, 1).await;
}

#[tokio::test]
async fn quorum_commit_promotes_nobody_without_the_quorum() {
    let mut t = StalledCommit::start().await;
    let (old, acker) = (t.leader.clone(), t.acker.clone());
    t.crash(&old);
    t.crash(&acker);
    // The two standbys without the row each see one other key member: quorum 2 is not reached.
    for s in &t.stalled {
        let node = t.c.node(s);
        let refused = wait_for(
            &format!("{s} to refuse the race for want of votes"),
            Duration::from_secs(60),
            || async {
                if node.log().contains("quorum commit needs 2 vote(s)") {
                    Ok(())
                } else {
                    Err("not yet".to_string())
                }
            },
        )
        .await;
        if let Err(e) = refused {
            dump_logs(&t.c);
            panic!("{e}");
        }
    }
    assert_eq!(
        t.c.leader().await,
        None,
        "a standby without the acknowledged row was promoted"
    );
    // The acknowledging standby comes back: it gathers its two votes and leads, row and all.
    let binary = binary();
    t.c.node_mut(&acker).start_agent(&binary).unwrap();
    let new = t.new_leader().await;
    t.thaw();
    assert_eq!(new, acker, "the standby with the row leads");
    let promoted = t.c.node(&new).pg_port;
    let row = wait_for("the new leader to answer", Duration::from_secs(30), || {
        has_row(promoted, 1)
    })
    .await
    .unwrap();
    assert!(row, "the acknowledged row is lost on {new}");
}
