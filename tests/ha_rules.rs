//! Acceptance tests of the HA rules (issue: the HA loop, complete): each row of the operators'
//! failure table (reference/patroni.md section 7) and the rules of section 6, on real etcd, real
//! PostgreSQL 15, three agents and the proxy on 127.0.0.1. Run one at a time (`--test-threads=1`).

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use praetor_dcs::{Dcs, DcsIdentity, Expect};
use praetor_harness::cluster::DcsKind;

/// A DCS client of the cluster (not a member), for reading keys and changing the dynamic config.
async fn dcs(c: &LocalCluster) -> Arc<dyn Dcs> {
    dcs_at(
        c,
        praetor_config::DcsEndpoints::Etcd(vec![c.etcd.endpoint.clone()]),
    )
    .await
}

/// A DCS client of the cluster (not a member) at `endpoints`.
async fn dcs_at(c: &LocalCluster, endpoints: praetor_config::DcsEndpoints) -> Arc<dyn Dcs> {
    praetor_dcs::connect(
        &endpoints,
        DcsIdentity {
            namespace: "/service/".into(),
            scope: c.options.scope.clone(),
            member: None,
            ttl_secs: 30,
            request_timeout_secs: 5,
        },
    )
    .await
    .expect("connect to the DCS")
}

/// Changes the dynamic configuration (the DCS `config` key) with `f`, by compare-and-set.
async fn edit_config(c: &LocalCluster, f: impl Fn(&mut serde_json::Value)) {
    let d = dcs(c).await;
    wait_for("the config edit", Duration::from_secs(10), || async {
        let cluster = d.load().await.map_err(|e| e.to_string())?;
        let cfg = cluster.config.ok_or("no config key")?;
        let mut value = cfg.value.clone();
        f(&mut value);
        d.set_config(&value, Expect::Version(cfg.version))
            .await
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap();
}

async fn in_recovery(port: u16) -> Result<bool, String> {
    let c = connect(port).await.map_err(|e| e.to_string())?;
    c.query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| e.to_string())
}

/// Waits (up to `timeout`) until PostgreSQL at `port` no longer runs as a primary (stopped, or in
/// recovery).
async fn no_longer_primary(port: u16, what: &str, timeout: Duration) -> Result<(), String> {
    wait_for(what, timeout, || async {
        match in_recovery(port).await {
            Ok(false) => Err("still a primary".to_string()),
            _ => Ok(()),
        }
    })
    .await
}

fn replicas_of(c: &LocalCluster, leader: &str) -> Vec<String> {
    c.nodes
        .iter()
        .filter(|n| n.name != leader)
        .map(|n| n.name.clone())
        .collect()
}

/// Writes a row directly to `port` every 10 ms (reconnecting after errors), recording when each
/// write was acknowledged, until `stop`.
fn direct_writer(
    port: u16,
    table: &'static str,
    stop: tokio_util::sync::CancellationToken,
) -> (Arc<Mutex<Vec<Instant>>>, tokio::task::JoinHandle<()>) {
    let acks = Arc::new(Mutex::new(Vec::new()));
    let a = acks.clone();
    let h = tokio::spawn(async move {
        let mut client = None;
        while !stop.is_cancelled() {
            if client.is_none() {
                client = connect(port).await.ok();
            }
            if let Some(cl) = &client {
                let sql = format!("INSERT INTO {table} DEFAULT VALUES");
                match cl.execute(sql.as_str(), &[]).await {
                    Ok(_) => a.lock().unwrap().push(Instant::now()),
                    Err(_) => client = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (acks, h)
}

/// A client writing straight to the leader's port every 10 ms (into `table`, which every replica
/// already has), as applications that bypass the proxy do: what a fault test then checks the former
/// primary acknowledged.
struct DirectWrites {
    leader: String,
    port: u16,
    stop: tokio_util::sync::CancellationToken,
    acks: Arc<Mutex<Vec<Instant>>>,
    writer: tokio::task::JoinHandle<()>,
}

async fn writes_to_the_leader(c: &LocalCluster, table: &'static str) -> DirectWrites {
    let leader = c.leader().await.unwrap();
    let port = c.node(&leader).pg_port;
    let setup = connect(port).await.unwrap();
    setup
        .batch_execute(&format!(
            "CREATE TABLE {table} (id serial PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"
        ))
        .await
        .unwrap();
    wait_for_replicas_to_have_table(c, &leader, table).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (acks, writer) = direct_writer(port, table, stop.clone());
    DirectWrites {
        leader,
        port,
        stop,
        acks,
        writer,
    }
}

impl DirectWrites {
    /// Stops the writer; the number of writes the former primary acknowledged after `t`.
    async fn stop_and_count_after(self, t: Instant) -> usize {
        self.stop.cancel();
        self.writer.await.unwrap();
        let acks = self.acks.lock().unwrap();
        acks.iter().filter(|a| **a > t).count()
    }
}

/// The instant of the first write acknowledged through `port` (new connection per try).
async fn first_write_through(port: u16, table: &str, timeout: Duration) -> Instant {
    wait_for("a write through the proxy", timeout, || async {
        let cl = connect(port).await.map_err(|e| e.to_string())?;
        cl.execute(format!("INSERT INTO {table} DEFAULT VALUES").as_str(), &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(Instant::now())
    })
    .await
    .unwrap()
}

async fn healthy_again(c: &LocalCluster) {
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(120)).await {
        dump_logs(c);
        panic!("{e}");
    }
}

// --- §7 replica rows ------------------------------------------------------------------------------

#[tokio::test]
async fn replica_postgres_stop_is_restarted_by_its_agent() {
    let c = healthy_cluster(ClusterOptions::default()).await;
    let leader = c.leader().await.unwrap();
    let r = c.node(&replicas_of(&c, &leader)[0]);
    let before = r.postmaster_pid().expect("replica postmaster");
    r.kill_postmaster();
    wait_for("a new postmaster", Duration::from_secs(60), || async {
        match r.postmaster_pid() {
            Some(pid) if pid != before => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    healthy_again(&c).await;
}

#[tokio::test]
async fn replica_agent_sigterm_stops_its_postgres() {
    let mut c = healthy_cluster(ClusterOptions::default()).await;
    let leader = c.leader().await.unwrap();
    let name = replicas_of(&c, &leader)[0].clone();
    assert!(c.node(&name).postmaster_pid().is_some());
    let code = c
        .node_mut(&name)
        .stop_agent(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
    assert!(
        c.node(&name).postmaster_pid().is_none(),
        "postgres stopped with its agent"
    );
    assert_eq!(
        c.leader().await.as_deref(),
        Some(leader.as_str()),
        "no failover"
    );
}

/// Issue 13 item 7: after a crash (or a reboot) postmaster.pid names a PID that now belongs to
/// another process. The agent must not take it for PostgreSQL nor signal it, and must start
/// PostgreSQL again despite the stale lock file. Two strangers: a `sleep` owned by root, whose
/// working directory the agent (user `postgres`) cannot read, and one owned by `postgres`, which
/// PostgreSQL's own lock check would take for a live postmaster (the agent passes
/// PG_GRANDPARENT_PID).
#[tokio::test]
async fn a_stale_postmaster_pid_naming_another_process_is_never_signalled_and_postgres_starts() {
    let mut c = healthy_cluster(ClusterOptions::default()).await;
    let leader = c.leader().await.unwrap();
    let name = replicas_of(&c, &leader)[0].clone();
    for owner in ["postgres", "root"] {
        let crashed = c.node(&name).postmaster_pid().unwrap();
        c.node_mut(&name).kill_agent();
        c.node(&name).kill_postmaster();
        wait_for("the postmaster to die", Duration::from_secs(30), || async {
            match c.node(&name).postmaster_pid() {
                None => Ok(()),
                Some(pid) => Err(pid.to_string()),
            }
        })
        .await
        .unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("600").current_dir("/tmp");
        if owner == "postgres" {
            praetor_harness::as_postgres(&mut cmd);
        }
        let mut stranger = cmd.spawn().expect("spawn sleep");
        let pid_file = c.node(&name).data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file).expect("stale postmaster.pid");
        let (_, rest) = text.split_once('\n').unwrap();
        std::fs::write(&pid_file, format!("{}\n{rest}", stranger.id())).unwrap();
        c.node_mut(&name).start_agent(&binary()).unwrap();
        wait_for("a new postmaster", Duration::from_secs(60), || async {
            match c.node(&name).postmaster_pid() {
                Some(pid) if pid != crashed && pid != stranger.id() as i32 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
        .unwrap_or_else(|e| {
            dump_logs(&c);
            panic!("{owner}'s stranger: {e}")
        });
        healthy_again(&c).await;
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "{owner}'s process named by the stale postmaster.pid was signalled"
        );
        assert!(
            c.node(&name)
                .log()
                .contains(&format!("process {} from postmaster.pid", stranger.id())),
            "the agent said why"
        );
        stranger.kill().unwrap();
        stranger.wait().unwrap();
    }
}

#[tokio::test]
async fn replica_agent_kill_9_leaves_postgres_streaming() {
    let mut c = healthy_cluster(ClusterOptions::default()).await;
    let leader = c.leader().await.unwrap();
    let name = replicas_of(&c, &leader)[0].clone();
    let pid = c.node(&name).postmaster_pid().unwrap();
    c.node_mut(&name).kill_agent();
    let lc = connect(c.node(&leader).pg_port).await.unwrap();
    lc.batch_execute("CREATE TABLE after_kill AS SELECT 1 AS x")
        .await
        .unwrap();
    let rc = connect_retry(c.node(&name).pg_port, Duration::from_secs(10)).await;
    table_readable(&rc, "after_kill").await;
    assert_eq!(c.node(&name).postmaster_pid(), Some(pid), "same postmaster");
}

#[tokio::test]
async fn replica_that_cannot_reach_the_dcs_keeps_streaming() {
    let c = healthy_cluster(ClusterOptions {
        dcs_relay: true,
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.unwrap();
    let name = replicas_of(&c, &leader)[0].clone();
    c.relay(&name).cut();
    // The DCS forgets the replica (its member key expires) ...
    let d = dcs(&c).await;
    wait_for(
        "the replica's member key to expire",
        Duration::from_secs(30),
        || async {
            let cl = d.load().await.map_err(|e| e.to_string())?;
            if cl.member(&name).is_none() {
                Ok(())
            } else {
                Err("still there".into())
            }
        },
    )
    .await
    .unwrap();
    // ... but its PostgreSQL keeps streaming and nothing else changes.
    let lc = connect(c.node(&leader).pg_port).await.unwrap();
    lc.batch_execute("CREATE TABLE while_cut AS SELECT 1 AS x")
        .await
        .unwrap();
    let rc = connect(c.node(&name).pg_port).await.unwrap();
    table_readable(&rc, "while_cut").await;
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));
    c.relay(&name).restore();
    healthy_again(&c).await;
}

#[tokio::test]
async fn stray_primary_without_the_lock_is_turned_back_into_a_replica() {
    let mut c = healthy_cluster(ClusterOptions::default()).await;
    let leader = c.leader().await.unwrap();
    let name = replicas_of(&c, &leader)[0].clone();
    c.node_mut(&name).kill_agent();
    // Someone promotes the replica by hand: now there are two primaries...
    let rc = connect(c.node(&name).pg_port).await.unwrap();
    rc.query_one("SELECT pg_promote(true, 60)", &[])
        .await
        .unwrap();
    rc.batch_execute("CREATE TABLE stray_write (x int)")
        .await
        .unwrap();
    assert!(!in_recovery(c.node(&name).pg_port).await.unwrap());
    // ... until its agent comes back: it demotes it and it rejoins (rewound) as a replica.
    let bin = c.binary.clone();
    c.node_mut(&name).start_agent(&bin).unwrap();
    healthy_again(&c).await;
    let port = c.node(&name).pg_port;
    wait_for(
        "the stray primary to run as a replica",
        Duration::from_secs(60),
        || async {
            match in_recovery(port).await {
                Ok(true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));
}

// --- §7 primary rows ------------------------------------------------------------------------------

#[tokio::test]
async fn primary_postgres_crash_is_restarted_in_place_without_failover() {
    let c = healthy_cluster(ClusterOptions::default()).await;
    let leader = c.leader().await.unwrap();
    let before = c.node(&leader).postmaster_pid().unwrap();
    c.node(&leader).kill_postmaster();
    wait_for(
        "the primary to be restarted",
        Duration::from_secs(60),
        || async {
            match c.node(&leader).postmaster_pid() {
                Some(pid) if pid != before => {}
                _ => return Err("not yet".to_string()),
            }
            if in_recovery(c.node(&leader).pg_port).await? {
                return Err("in recovery".into());
            }
            Ok(())
        },
    )
    .await
    .unwrap();
    healthy_again(&c).await;
    assert_eq!(
        c.leader().await.as_deref(),
        Some(leader.as_str()),
        "crash recovery before failover"
    );
}

#[tokio::test]
async fn primary_that_cannot_restart_fails_over_after_primary_start_timeout() {
    let c = healthy_cluster(ClusterOptions {
        dcs_extra: vec!["primary_start_timeout: 3".into()],
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.unwrap();
    let port = c.node(&leader).pg_port;
    c.node(&leader).kill_postmaster();
    // Take its port so that it cannot start again.
    let squatter = wait_for("the port to be free", Duration::from_secs(10), || async {
        std::net::TcpListener::bind(("127.0.0.1", port)).map_err(|e| e.to_string())
    })
    .await
    .unwrap();
    let new = new_leader_other_than(&c, &leader, Duration::from_secs(90)).await;
    assert_ne!(new, leader);
    drop(squatter);
}

#[tokio::test]
async fn primary_agent_kill_9_the_old_primary_accepts_no_write_after_the_new_leader_does() {
    let mut c = healthy_cluster(ClusterOptions::default()).await;
    let w = writes_to_the_leader(&c, "fence_w").await;
    let (old, old_port) = (w.leader.clone(), w.port);
    let old_acks = w.acks.clone();
    wait_for("direct writes", Duration::from_secs(10), || async {
        if old_acks.lock().unwrap().len() > 10 {
            Ok(())
        } else {
            Err("few".into())
        }
    })
    .await
    .unwrap();

    // Only the agent dies: its PostgreSQL keeps running and accepting direct writes.
    c.node_mut(&old).kill_agent();
    let new = new_leader_other_than(&c, &old, Duration::from_secs(60)).await;
    let rw = c.proxy.as_ref().unwrap().rw_port;
    let first_new = first_write_through(rw, "fence_w", Duration::from_secs(60)).await;
    wait_for(
        "the old primary to refuse writes",
        Duration::from_secs(30),
        || async {
            match connect(old_port).await {
                Err(_) => Ok(()),
                Ok(cl) => match cl.execute("INSERT INTO fence_w DEFAULT VALUES", &[]).await {
                    Err(_) => Ok(()),
                    Ok(_) => Err("still writable".into()),
                },
            }
        },
    )
    .await
    .unwrap();
    let late = w.stop_and_count_after(first_new).await;
    assert_eq!(
        late, 0,
        "writes acknowledged by the old primary after {new} accepted writes"
    );
    // The old node comes back as a replica of the new leader; the failover is in the history.
    let bin = c.binary.clone();
    c.node_mut(&old).start_agent(&bin).unwrap();
    healthy_again(&c).await;
    let history = dcs_cluster(&c).await.history.expect("history key").value;
    assert_eq!(
        history.last().and_then(|e| e.new_leader.as_deref()),
        Some(new.as_str()),
        "{history:?}"
    );
}

#[tokio::test]
async fn primary_agent_frozen_past_ttl_the_old_primary_accepts_no_write_after_the_new_leader_does()
{
    let c = healthy_cluster(ClusterOptions::default()).await;
    let w = writes_to_the_leader(&c, "frozen_w").await;
    let old = w.leader.clone();
    c.node(&old).signal_agent(Signal::SIGSTOP);
    let new = new_leader_other_than(&c, &old, Duration::from_secs(60)).await;
    let rw = c.proxy.as_ref().unwrap().rw_port;
    let first_new = first_write_through(rw, "frozen_w", Duration::from_secs(60)).await;
    // Let the direct writer keep trying for a while after the new leader's first write.
    wait_for(
        "the writer to try after the failover",
        Duration::from_secs(10),
        || async {
            if first_new.elapsed() > Duration::from_secs(1) {
                Ok(())
            } else {
                Err("wait".into())
            }
        },
    )
    .await
    .unwrap();
    let late = w.stop_and_count_after(first_new).await;
    assert_eq!(
        late, 0,
        "writes acknowledged by the frozen leader's postgres after {new} accepted writes"
    );
    // The agent wakes up, finds another leader and rejoins.
    c.node(&old).signal_agent(Signal::SIGCONT);
    healthy_again(&c).await;
}

/// A frozen primary node (agent, postmaster and backends SIGSTOPped: connections hang instead of
/// being refused) is failed over without waiting a second ttl for its fence to answer, and once it is
/// thawed, its agent stops PostgreSQL before anything else. Seen before the fix (issue 13): the
/// winner waited a whole ttl for the silent fence, and the thawed former primary acknowledged
/// direct writes for 1.6 s.
#[tokio::test]
async fn frozen_primary_node_is_failed_over_and_acknowledges_nothing_once_thawed() {
    let c = healthy_cluster(ClusterOptions {
        scope: "frozen-node".into(),
        ..Default::default()
    })
    .await;
    let w = writes_to_the_leader(&c, "frozen_node_w").await;
    let (old, old_port) = (w.leader.clone(), w.port);
    let pm = c.node(&old).freeze();
    let new = new_leader_other_than(&c, &old, Duration::from_secs(60)).await;
    let rw = c.proxy.as_ref().unwrap().rw_port;
    let first_new = first_write_through(rw, "frozen_node_w", Duration::from_secs(60)).await;
    let frozen_acks = w.acks.lock().unwrap().len();
    // The agent resumes first (the benchmark measures the other order, where the CPU scheduler
    // decides how many statements a thawed primary completes before its agent runs).
    c.node(&old).thaw_agent_first(pm);
    no_longer_primary(
        old_port,
        "the thawed former primary to refuse writes",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let late = w.stop_and_count_after(first_new).await;
    // The statement in flight when the host froze completes when it thaws: no HA tool can take that
    // one back without synchronous replication. Nothing after it may be acknowledged.
    assert!(
        late <= 1,
        "the thawed former primary acknowledged {late} writes after {new} accepted writes ({frozen_acks} before the freeze)"
    );
    // Its agent stopped it (the deadline guard, or the check at the start of the next cycle), not
    // the new leader's background fence.
    let log = c.node(&old).log();
    assert!(
        log.contains("past the demotion deadline")
            || log.contains("the demotion deadline passed without a lock renewal"),
        "the thawed agent did not stop postgres first:\n{log}"
    );
    healthy_again(&c).await;
}

/// A leader whose PostgreSQL runs but refuses its agent's queries (here: the superuser may no
/// longer log in) cannot tell whether it is still a primary; cut off from the DCS as well, it must
/// stop that PostgreSQL at its demotion deadline like an observable primary. Seen before the fix:
/// "postgres is not accepting queries" was taken for "starting", and a leader without the DCS left it
/// running as a primary while another member promoted.
#[tokio::test]
async fn unobservable_primary_cut_off_from_the_dcs_is_stopped_at_the_deadline() {
    let c = healthy_cluster(ClusterOptions {
        scope: "unobservable".into(),
        dcs_relay: true,
        proxy: false,
        ..Default::default()
    })
    .await;
    let old = c.leader().await.unwrap();
    let admin = connect(c.node(&old).pg_port).await.unwrap();
    // The agent's next query needs a new connection, which is refused.
    admin
        .batch_execute(
            "ALTER ROLE postgres NOLOGIN; \
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = 'praetor' AND pid <> pg_backend_pid();",
        )
        .await
        .unwrap();
    wait_for(
        "the agent to lose sight of its postgres",
        Duration::from_secs(30),
        || async {
            if c.node(&old)
                .log()
                .contains("role \"postgres\" is not permitted to log in")
            {
                Ok(())
            } else {
                Err("still observing".to_string())
            }
        },
    )
    .await
    .unwrap();
    let primary_pid = c
        .node(&old)
        .postmaster_pid()
        .expect("the primary's postmaster runs");
    c.relay(&old).cut();
    // The primary's postmaster must go. Its agent may start PostgreSQL again at once, read-only
    // with nobody to follow (Patroni's demotion without the DCS): a new postmaster is fine only
    // with standby.signal in the data directory.
    let stopped = wait_for(
        "the unobservable primary to be stopped",
        Duration::from_secs(30),
        || async {
            match c.node(&old).postmaster_pid() {
                Some(pid) if pid == primary_pid => Err(format!("postmaster {pid} still runs")),
                None => Ok(()),
                Some(_) if c.node(&old).data_dir().join("standby.signal").exists() => Ok(()),
                Some(pid) => Err(format!(
                    "postmaster {pid} started again without standby.signal (writable)"
                )),
            }
        },
    )
    .await;
    if let Err(e) = stopped {
        dump_logs(&c);
        panic!("{e}");
    }
}

#[tokio::test]
async fn primary_that_cannot_reach_the_dcs_demotes_before_another_member_promotes() {
    let c = healthy_cluster(ClusterOptions {
        dcs_relay: true,
        ..Default::default()
    })
    .await;
    let w = writes_to_the_leader(&c, "dcs_w").await;
    let (old, old_port) = (w.leader.clone(), w.port);
    c.relay(&old).cut();
    no_longer_primary(
        old_port,
        "the cut-off primary to stop accepting writes",
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let new = new_leader_other_than(&c, &old, Duration::from_secs(60)).await;
    let rw = c.proxy.as_ref().unwrap().rw_port;
    let first_new = first_write_through(rw, "dcs_w", Duration::from_secs(60)).await;
    let late = w.stop_and_count_after(first_new).await;
    assert_eq!(
        late, 0,
        "the old primary acknowledged writes after {new} did"
    );
    c.relay(&old).restore();
    healthy_again(&c).await;
}

/// A healthy cluster on ZooKeeper with `options` (every member's DCS link through a relay, to
/// slow pg1's), pg1 its caught-up leader, and the test's own DCS client straight to ZooKeeper (not
/// through pg1's relay).
async fn zookeeper_cluster_led_by_pg1(options: ClusterOptions) -> (LocalCluster, Arc<dyn Dcs>) {
    let c = healthy_cluster(ClusterOptions {
        dcs: DcsKind::ZooKeeper,
        dcs_relay: true,
        ..options
    })
    .await;
    make_leader(&c, "pg1").await;
    replicas_caught_up(&c, "pg1").await;
    let (_, hosts) = c.etcd.section_and_hosts();
    let d = dcs_at(&c, praetor_config::DcsEndpoints::ZooKeeper(hosts)).await;
    (c, d)
}

/// Issue 14, the other members' side of a hold-off. The leader's link to the DCS (ZooKeeper)
/// turns slow but alive (its relay delays every chunk 420 ms each way, as the nemesis's
/// `slow-dcs`): its renewals miss the demotion deadline while its session, kept alive by pings,
/// lives on. It gives the lock up and holds off the race for `ttl` (30 s here: its slow cycles
/// took ~14 s to bring PostgreSQL back, and the others need a few more), its PostgreSQL back up
/// read-only. It outranks the others (`failover_priority: 2` at the same WAL position, as a
/// former leader ahead on WAL under asynchronous replication does). The others' agents are stopped
/// (SIGSTOP, their PostgreSQL streaming on) until pg1 has given the lock up and runs read-only
/// within its hold-off, saying so in `/patroni` (`holding_off_ms`): their race then meets it as a
/// healthier member. Under the old rule they deferred to it, nobody took the lock before its
/// hold-off ended, and then pg1 itself did (or nobody: its link is slow). Now the next lock holder
/// is another member.
// Multi-threaded: the relays run on the test's runtime, and `make_leader` runs `praetor ctl`
// (through pg1's relay) with a blocking call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_holding_off_after_lapsed_renewals_is_not_waited_for_by_the_members_it_outranks() {
    let (c, d) = zookeeper_cluster_led_by_pg1(ClusterOptions {
        ttl: 30,
        tags: vec![(0, "failover_priority: 2".into())],
        ..Default::default()
    })
    .await;
    let others = ["pg2", "pg3"];
    for n in others {
        c.node(n).signal_agent(Signal::SIGSTOP);
    }
    c.relay("pg1").set_delay(Duration::from_millis(420));
    let pg1 = c.node("pg1");
    let holding_off = wait_for(
        "pg1 to give the lock up and hold off, read-only",
        Duration::from_secs(90),
        || async {
            let (_, body) = call(pg1, "GET", "/patroni", None).await;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let cl = d.load().await.map_err(|e| e.to_string())?;
            let ready = cl.leader.is_none()
                && cl.member("pg1").is_some()
                && v["state"] == "running"
                && v["role"] == "replica";
            match v["holding_off_ms"].as_u64() {
                Some(ms) if ready => Ok(ms),
                _ => Err(format!(
                    "leader {:?}, pg1 {} {} holding_off_ms {}",
                    cl.leader.map(|l| l.name),
                    v["state"],
                    v["role"],
                    v["holding_off_ms"]
                )),
            }
        },
    )
    .await;
    for n in others {
        c.node(n).signal_agent(Signal::SIGCONT);
    }
    let holding_off = holding_off.unwrap_or_else(|e| {
        dump_logs(&c);
        panic!("{e}")
    });
    let next = wait_for("the next lock holder", Duration::from_secs(60), || async {
        let cl = d.load().await.map_err(|e| e.to_string())?;
        cl.leader
            .map(|l| l.name)
            .ok_or_else(|| "no leader".to_string())
    })
    .await
    .unwrap_or_else(|e| {
        dump_logs(&c);
        panic!("{e}")
    });
    eprintln!("pg1 held off ({holding_off} ms left when seen); next lock holder {next}");
    if next == "pg1" {
        dump_logs(&c);
    }
    assert_ne!(
        next, "pg1",
        "the others waited for pg1 through its hold-off, and it took the lock back"
    );
    c.relay("pg1").set_delay(Duration::ZERO);
    healthy_again(&c).await;
}

/// PostgreSQL's timeline at `port`: the current WAL file's on a primary, the last checkpoint's on a
/// server in recovery (a promotion's new timeline stays there after a demotion).
async fn pg_timeline(port: u16) -> Result<i32, String> {
    let c = connect(port).await.map_err(|e| e.to_string())?;
    c.query_one(
        "SELECT CASE WHEN pg_is_in_recovery() \
                THEN (SELECT timeline_id FROM pg_control_checkpoint()) \
                ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END",
        &[],
    )
    .await
    .map(|r| r.get(0))
    .map_err(|e| e.to_string())
}

/// What the lapsed leader pg1 showed at one poll of [`a_lapsed_leader_that_cannot_read_the_dcs_gives_its_lock_up_while_its_link_is_still_slow`].
struct LapsedPoll {
    /// The leader key, read straight from ZooKeeper (not through pg1's relay).
    leader: Option<String>,
    /// `/patroni`'s `holding_off_ms`.
    holding_off_ms: Option<u64>,
    /// [`is_primary`] of pg1's PostgreSQL.
    writable: Option<bool>,
}

/// Prints every agent's log and fails the test with `e`.
fn fail_with_logs(c: &LocalCluster, e: String) -> ! {
    dump_logs(c);
    panic!("{e}")
}

/// Issue 14 (`relock`, then nemesis ZooKeeper strict seed 3): a leader whose renewals lapsed and
/// whose DCS reads keep failing gives its lock up while its link is still slow, and never promotes
/// on it. pg1 leads on ZooKeeper; the other agents are stopped (SIGSTOP: nobody else can take the
/// lock, so the leader key shows what pg1 did). pg1's DCS link turns slow (its relay delays every
/// chunk 700 ms each way: a round trip of 1.4 s, so every read of two round trips misses the 2 s
/// `retry_timeout`, while the session's pings, answered within the 4 s the client allows at a 10 s
/// session timeout, keep the session and its ephemeral lock alive): its renewals lapse and it
/// demotes. Earlier rules waited for a read that got through: the lock stood as long as the link
/// stayed slow (seed 3: 21.27 s without writes, the whole fault), and the first rule then even
/// renewed it and promoted "because I had the session lock" (seed 1). Now, after
/// `1 + retry_timeout / loop_wait` unreadable cycles, pg1 gives its session up
/// (`ha::lapsed::drops_unseen_lock`: closed, or abandoned to expire) and the lock goes with it,
/// the link still slow. Checked at every poll from the lapse on: pg1's PostgreSQL is not a
/// writable primary holding the lock, its timeline and the DCS history did not move, and its log
/// says no "because I had the session lock".
// Multi-threaded: the relays run on the test's runtime, and `make_leader` runs `praetor ctl`
// (through pg1's relay) with a blocking call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapsed_leader_that_cannot_read_the_dcs_gives_its_lock_up_while_its_link_is_still_slow() {
    let (c, d) = zookeeper_cluster_led_by_pg1(ClusterOptions {
        scope: "relock".into(),
        ttl: 10,
        proxy: false,
        ..Default::default()
    })
    .await;
    let pg1 = c.node("pg1");
    let port = pg1.pg_port;
    let timeline = pg_timeline(port).await.unwrap();
    let history = |cl: &praetor_dcs::Cluster| cl.history.as_ref().map_or(0, |h| h.value.len());
    let history_before = history(&d.load().await.unwrap());
    let log_before = pg1.log().len();
    let others = ["pg2", "pg3"];
    for n in others {
        c.node(n).signal_agent(Signal::SIGSTOP);
    }
    c.relay("pg1").set_delay(Duration::from_millis(700));

    // One poll: `Ok(Err(why))` for a violation (fatal), `Err` for a failed read; the leader key and
    // pg1's hold-off otherwise. pg1 publishes its lapse as `holding_off_ms`; every poll from then
    // on checks it never became a writable primary again on the old lock.
    let lapsed = AtomicBool::new(false);
    let poll = || async {
        let (_, body) = call(pg1, "GET", "/patroni", None).await;
        let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        let holding_off_ms = v["holding_off_ms"].as_u64();
        if holding_off_ms.is_some() {
            lapsed.store(true, Relaxed);
        }
        let cl = d.load().await.map_err(|e| e.to_string())?;
        let leader = cl.leader.as_ref().map(|l| l.name.clone());
        let writable = is_primary(port).await;
        let mut violations: Vec<String> = vec![];
        if lapsed.load(Relaxed) {
            if writable == Some(true) && leader.as_deref() == Some("pg1") {
                violations.push("pg1 is a writable primary again on the old lock".to_string());
            }
            if let Ok(tl) = pg_timeline(port).await {
                if tl != timeline {
                    violations.push(format!("pg1 reached timeline {tl} (was {timeline})"));
                }
            }
            if history(&cl) != history_before {
                violations.push(format!(
                    "the DCS history has {} entries (was {history_before})",
                    history(&cl)
                ));
            }
        }
        let log = pg1.log();
        if log
            .get(log_before..)
            .unwrap_or_default()
            .contains("because I had the session lock")
        {
            violations.push("pg1 logged a promotion \"because I had the session lock\"".into());
        }
        if !violations.is_empty() {
            return Ok::<_, String>(Err(violations.join("; ")));
        }
        Ok(Ok(LapsedPoll {
            leader,
            holding_off_ms,
            writable,
        }))
    };

    // Slow: pg1 lapses and demotes, then gives its session, and the lock with it, up while every
    // read of its still times out.
    let gone = wait_for(
        "pg1 lapsed, not writable, and the lock gone while its link is still slow",
        Duration::from_secs(90),
        || async {
            let p = match poll().await? {
                Ok(p) => p,
                Err(violation) => return Ok(Err(violation)),
            };
            if lapsed.load(Relaxed) && p.leader.is_none() && p.writable != Some(true) {
                Ok(Ok(()))
            } else {
                Err(format!(
                    "leader {:?}, pg1 writable {:?}, holding_off_ms {:?} (a lapse seen: {})",
                    p.leader,
                    p.writable,
                    p.holding_off_ms,
                    lapsed.load(Relaxed)
                ))
            }
        },
    )
    .await;
    for n in others {
        c.node(n).signal_agent(Signal::SIGCONT);
    }
    match gone {
        Ok(Ok(())) => {}
        Ok(Err(e)) | Err(e) => fail_with_logs(&c, e),
    }
    assert!(
        pg1.log()
            .get(log_before..)
            .unwrap_or_default()
            .contains("giving up my DCS session"),
        "the lock went, but not by pg1's session drop"
    );
    c.relay("pg1").set_delay(Duration::ZERO);
    healthy_again(&c).await;
}

/// How many of a member's HA cycles took longer than 2.5 s so far: its
/// `praetor_ha_loop_duration_seconds` histogram's count less its `le="2.5"` bucket.
async fn cycles_longer_than_2_5_s(node: &praetor_harness::cluster::Node) -> Result<u64, String> {
    let (status, body) = call(node, "GET", "/metrics", None).await;
    if status != 200 {
        return Err(format!("GET /metrics: {status} {body}"));
    }
    let value = |prefix: &str, label: &str| {
        body.lines()
            .find(|l| l.starts_with(prefix) && l.contains(label))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("no {prefix} {label} in /metrics"))
    };
    let count = value("praetor_ha_loop_duration_seconds_count", "")?;
    let within = value("praetor_ha_loop_duration_seconds_bucket", "le=\"2.5\"")?;
    Ok(count - within)
}

/// Issue 14 (nemesis ZooKeeper strict seed 10, with logs): a leader whose HA cycles take longer
/// than `retry_timeout` keeps its lock. The agent used to wait `loop_wait` after a cycle's end:
/// its renewals were a cycle plus `loop_wait` apart, and once that passed the demotion window
/// (`loop_wait + retry_timeout`) its next cycle was pulled to 200 ms before its deadline, too
/// late for a DCS read and a renewal; a healthy leader demoted itself with no fault (seed 10: a
/// new leader's ~2 s first cycle at `loop_wait` 1, `retry_timeout` 2). Now its cycles keep a
/// cadence from their starts, as Patroni's loop does (`ha::cadence`), and its renewals stay
/// `loop_wait` apart. Here the leader's DCS link (etcd, through its relay) delays every chunk
/// 250 ms each way, which makes each of its cycles (a read, a renewal of a keep-alive and a
/// transaction, its status and member keys, as a direct writer keeps its WAL moving) take ~3 s
/// at `loop_wait` 4, `retry_timeout` 2: ~0.5 s to the renewal and ~2.6 s after its start, so the
/// former loop's renewals were ~7 s apart against a 6 s window. Premise, asserted: at least
/// [`SLOW_CYCLES`] of its cycles took longer than 2.5 s (its `/metrics` histogram). Checked at
/// every poll meanwhile: the leader key (read straight from etcd) still names it, its PostgreSQL
/// is a writable primary on the same timeline, and its log says no demotion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_cycles_outlast_retry_timeout_keeps_its_lock_on_a_loop_wait_cadence() {
    /// Cycles longer than 2.5 s (> `retry_timeout`) to see before the test ends.
    const SLOW_CYCLES: u64 = 5;
    let c = healthy_cluster(ClusterOptions {
        scope: "cadence".into(),
        ttl: 10,
        loop_wait: 4,
        retry_timeout: 2,
        dcs_relay: true,
        proxy: false,
        ..Default::default()
    })
    .await;
    let d = dcs(&c).await;
    let writes = writes_to_the_leader(&c, "cadence").await;
    let leader = writes.leader.clone();
    let node = c.node(&leader);
    let timeline = pg_timeline(writes.port).await.unwrap();
    let log_before = node.log().len();
    let slow_before = cycles_longer_than_2_5_s(node).await.unwrap();
    c.relay(&leader).set_delay(Duration::from_millis(250));
    let demotion = [
        "demoting self",
        "past the demotion deadline",
        "deadline passed",
    ];
    let outcome = wait_for(
        "the leader's cycles to take longer than 2.5 s while it keeps its lock",
        Duration::from_secs(90),
        || async {
            let mut violations = vec![];
            let holder = d.load().await.map_err(|e| e.to_string())?.leader;
            if holder.as_ref().map(|l| l.name.as_str()) != Some(leader.as_str()) {
                violations.push(format!("the leader key names {:?}", holder.map(|l| l.name)));
            }
            if is_primary(writes.port).await == Some(false) {
                violations.push(format!("{leader} is no longer a primary"));
            }
            if let Ok(tl) = pg_timeline(writes.port).await {
                if tl != timeline {
                    violations.push(format!("{leader} is on timeline {tl} (was {timeline})"));
                }
            }
            let log = node.log();
            let since = log.get(log_before..).unwrap_or_default();
            if let Some(l) = since
                .lines()
                .find(|l| demotion.iter().any(|m| l.contains(m)))
            {
                violations.push(format!("{leader} logged: {l}"));
            }
            if !violations.is_empty() {
                return Ok(Err(violations.join("; ")));
            }
            let slow = cycles_longer_than_2_5_s(node).await? - slow_before;
            if slow >= SLOW_CYCLES {
                Ok(Ok(slow))
            } else {
                Err(format!(
                    "{slow} of {SLOW_CYCLES} cycles longer than 2.5 s so far"
                ))
            }
        },
    )
    .await;
    c.relay(&leader).set_delay(Duration::ZERO);
    writes.stop.cancel();
    match outcome {
        Ok(Ok(slow)) => eprintln!("{leader} kept its lock through {slow} cycles longer than 2.5 s"),
        Ok(Err(violation)) => fail_with_logs(&c, violation),
        Err(e) => fail_with_logs(&c, e),
    }
}

#[tokio::test]
async fn whole_dcs_down_demotes_the_primary_and_it_recovers_when_the_dcs_is_back() {
    let mut c = healthy_cluster(ClusterOptions::default()).await;
    let leader = c.leader().await.unwrap();
    c.etcd.stop();
    wait_for(
        "the primary to be demoted",
        Duration::from_secs(30),
        || async {
            match in_recovery(c.node(&leader).pg_port).await {
                Ok(false) => Err("still primary".to_string()),
                _ => Ok(()),
            }
        },
    )
    .await
    .unwrap();
    c.etcd.restart().await.unwrap();
    healthy_again(&c).await;
}

#[tokio::test]
async fn whole_dcs_down_with_failsafe_mode_keeps_the_primary_while_every_member_confirms() {
    let mut c = healthy_cluster(ClusterOptions {
        dcs_extra: vec!["failsafe_mode: true".into()],
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.unwrap();
    let d = dcs(&c).await;
    wait_for("the failsafe key", Duration::from_secs(30), || async {
        let cl = d.load().await.map_err(|e| e.to_string())?;
        match cl.failsafe {
            Some(f) if f.len() == 3 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    c.etcd.stop();
    // Observe for three TTLs: the primary must stay writable the whole time.
    let until = Instant::now() + Duration::from_secs(18);
    let lc = connect(c.node(&leader).pg_port).await.unwrap();
    lc.batch_execute("CREATE TABLE failsafe_w (id serial)")
        .await
        .unwrap();
    while Instant::now() < until {
        if let Err(e) = lc
            .execute("INSERT INTO failsafe_w DEFAULT VALUES", &[])
            .await
        {
            let kept = c.work.keep();
            panic!(
                "the primary keeps accepting writes in failsafe mode: {e}\nlogs kept in {}",
                kept.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(c
        .node(&leader)
        .log()
        .contains("failsafe mode is enabled and all members are accessible"));
    c.etcd.restart().await.unwrap();
    healthy_again(&c).await;
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));
}

/// Waits until the `failsafe` key lists every member (the leader writes it once `failsafe_mode` is on).
async fn failsafe_key_lists_everyone(c: &LocalCluster) {
    let d = dcs(c).await;
    let n = c.nodes.len();
    wait_for("the failsafe key", Duration::from_secs(30), || async {
        let cl = d.load().await.map_err(|e| e.to_string())?;
        match cl.failsafe {
            Some(f) if f.len() == n => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
}

/// Issue 14 (simulation seed 47,684): a replica whose agent restarts after it confirmed a leader in
/// failsafe mode keeps its promise and stays out of the leader race for `ttl` after that
/// confirmation. Every agent's DCS link is cut (their relays; etcd itself runs, so the leader's
/// lease expires on time); the leader keeps its primary on its replicas' `POST /failsafe`
/// confirmations, which extend its deadline past its lease. Its agent is then killed (SIGKILL: its
/// PostgreSQL keeps running as primary), and so is a replica's, which starts again: it takes its
/// last confirmation back from its data directory (`praetor.failsafe.json`, logged once its link is
/// back). Once the lease has expired (the leader key gone, read straight from etcd) the replicas'
/// links come back.
/// Asserted: no member holds the lock before `ttl` after the restarted replica's last
/// confirmation (its promise: the leader it confirmed may run that long on it). Before the record
/// the restarted agent had forgotten it and took the lock at once (in the simulation, where the
/// link to the old primary was cut too, that made two writable primaries). Premise, asserted: the
/// links came back with the lease gone and the promise still running, so an early lock would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_after_a_failsafe_confirmation_keeps_out_of_the_race_for_ttl() {
    let ttl: i64 = 20;
    let mut c = healthy_cluster(ClusterOptions {
        scope: "fsrecord".into(),
        ttl: ttl as u32,
        dcs_relay: true,
        proxy: false,
        dcs_extra: vec!["failsafe_mode: true".into()],
        ..Default::default()
    })
    .await;
    failsafe_key_lists_everyone(&c).await;
    let d = dcs(&c).await;
    let leader = c.leader().await.unwrap();
    let others = replicas_of(&c, &leader);
    let (restarted, other) = (others[0].clone(), others[1].clone());
    let record = c
        .node(&restarted)
        .data_dir()
        .join(praetor_agent::failsafe_record::FILE_NAME);
    let confirmation = || {
        let text = std::fs::read_to_string(&record).map_err(|e| e.to_string())?;
        serde_json::from_str::<praetor_agent::failsafe_record::Confirmation>(&text)
            .map_err(|e| e.to_string())
    };
    let cut_at = praetor_agent::failsafe_record::now_unix_ms();
    for n in &c.nodes {
        c.relay(&n.name).cut();
    }
    // Confirmations well after the cut: the promise then outlives the lease by several seconds.
    wait_for(
        "the replica's confirmations to go on 8 s after the cut",
        Duration::from_secs(60),
        || async {
            let at = confirmation()?.at_unix_ms;
            if at >= cut_at + 8_000 {
                Ok(())
            } else {
                Err(format!(
                    "last confirmation {} ms after the cut",
                    at - cut_at
                ))
            }
        },
    )
    .await
    .unwrap();
    c.node_mut(&leader).kill_agent();
    c.node_mut(&restarted).kill_agent();
    let promised = confirmation().unwrap();
    assert_eq!(promised.leader, leader, "{promised:?}");
    let promise_ends = promised.at_unix_ms + ttl * 1000;
    let log_before = c.node(&restarted).log().len();
    c.node_mut(&restarted).start_agent(&binary()).unwrap();
    wait_for(
        "the old leader's lease to expire",
        Duration::from_secs(60),
        || async {
            match d.load().await.map_err(|e| e.to_string())?.leader {
                None => Ok(()),
                Some(l) => Err(format!("the leader key still names {}", l.name)),
            }
        },
    )
    .await
    .unwrap_or_else(|e| fail_with_logs(&c, e));
    let back_at = praetor_agent::failsafe_record::now_unix_ms();
    assert!(
        back_at + 3_000 < promise_ends,
        "premise: the links come back {} ms before the promise ends, not enough to show an early lock",
        promise_ends - back_at
    );
    c.relay(&restarted).restore();
    c.relay(&other).restore();
    // The agent starts its REST API, and takes the record back, once it reaches the DCS.
    wait_for(
        "the restarted agent to take its confirmation back",
        Duration::from_secs(30),
        || async {
            let log = c.node(&restarted).log();
            if log[log_before..].contains("took back this member's last failsafe confirmation") {
                Ok(())
            } else {
                Err("not logged yet".to_string())
            }
        },
    )
    .await
    .unwrap_or_else(|e| fail_with_logs(&c, e));
    let (new_leader, locked_at) = wait_for("a new leader", Duration::from_secs(90), || async {
        match d.load().await.map_err(|e| e.to_string())?.leader {
            Some(l) => Ok((l.name, praetor_agent::failsafe_record::now_unix_ms())),
            None => Err("no leader key".to_string()),
        }
    })
    .await
    .unwrap_or_else(|e| fail_with_logs(&c, e));
    if locked_at < promise_ends {
        fail_with_logs(
            &c,
            format!(
                "{new_leader} held the lock {} ms before the end of {restarted}'s promise to {leader}",
                promise_ends - locked_at
            ),
        );
    }
    eprintln!(
        "{new_leader} took the lock {} ms after the end of {restarted}'s promise ({} ms after the links came back)",
        locked_at - promise_ends,
        locked_at - back_at
    );
}

#[tokio::test]
async fn failsafe_mode_does_not_keep_a_primary_cut_off_alone_from_the_dcs() {
    let c = healthy_cluster(ClusterOptions {
        dcs_relay: true,
        dcs_extra: vec!["failsafe_mode: true".into()],
        ..Default::default()
    })
    .await;
    failsafe_key_lists_everyone(&c).await;
    let w = writes_to_the_leader(&c, "fs_alone_w").await;
    let (old, old_port) = (w.leader.clone(), w.port);
    c.relay(&old).cut();
    // The others still read the DCS: once the lock expired there they refuse to confirm the old
    // leader, which demotes itself at its deadline; one of them leads.
    let demoted = no_longer_primary(
        old_port,
        "the cut-off primary to stop accepting writes",
        Duration::from_secs(60),
    )
    .await;
    if let Err(e) = demoted {
        dump_logs(&c);
        panic!("{e}");
    }
    let new = new_leader_other_than(&c, &old, Duration::from_secs(60)).await;
    let rw = c.proxy.as_ref().unwrap().rw_port;
    let first_new = first_write_through(rw, "fs_alone_w", Duration::from_secs(60)).await;
    let late = w.stop_and_count_after(first_new).await;
    assert_eq!(
        late, 0,
        "the old primary acknowledged writes after {new} did"
    );
    // It stopped itself (the decision at its deadline, or the check at the start of a cycle that
    // began past it), not the new leader's fence.
    let log = c.node(&old).log();
    assert!(
        log.contains("demoting self because DCS is not accessible and I was a leader")
            || log.contains("past the demotion deadline"),
        "the cut-off leader demoted itself (not stopped by the new leader's fence)"
    );
    assert!(
        log.contains("failsafe: member did not confirm"),
        "a member that reads the DCS refused to confirm it"
    );
    c.relay(&old).restore();
    healthy_again(&c).await;
}

#[tokio::test]
async fn failsafe_mode_keeps_the_primary_while_no_member_reaches_the_dcs_and_it_retakes_the_expired_lock(
) {
    let c = healthy_cluster(ClusterOptions {
        dcs_relay: true,
        dcs_extra: vec!["failsafe_mode: true".into()],
        ..Default::default()
    })
    .await;
    failsafe_key_lists_everyone(&c).await;
    let leader = c.leader().await.unwrap();
    let node = c.node(&leader);
    let postmaster = node.postmaster_pid().expect("the primary's postmaster");
    let lc = connect(node.pg_port).await.unwrap();
    lc.batch_execute("CREATE TABLE fs_all_w (id serial)")
        .await
        .unwrap();
    // Every agent loses the DCS while etcd runs on: the leases expire there, the leader key too.
    for n in &c.nodes {
        c.relay(&n.name).cut();
    }
    let d = dcs(&c).await;
    let write = || async {
        lc.execute("INSERT INTO fs_all_w DEFAULT VALUES", &[])
            .await
            .map(|_| ())
            .map_err(|e| format!("the primary stopped accepting writes: {e}"))
    };
    let expired = wait_for(
        "the leader key to expire",
        Duration::from_secs(60),
        || async {
            write().await.map_err(|e| format!("FATAL {e}"))?;
            match d.load().await.map_err(|e| e.to_string())?.leader {
                None => Ok(()),
                Some(l) => Err(format!("leader key still names {}", l.name)),
            }
        },
    )
    .await;
    if let Err(e) = expired {
        dump_logs(&c);
        panic!("{e}");
    }
    // A loop or more after the lease expired: the primary still takes writes, in failsafe mode.
    wait_for(
        "failsafe mode reported active",
        Duration::from_secs(10),
        || async {
            write().await?;
            let (_, body) = call(node, "GET", "/patroni", None).await;
            let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if v["failsafe_mode_is_active"] == serde_json::Value::Bool(true) {
                Ok(())
            } else {
                Err(body)
            }
        },
    )
    .await
    .unwrap();
    write().await.unwrap();
    for n in &c.nodes {
        c.relay(&n.name).restore();
    }
    // Back on the DCS, the race includes the failsafe key's members: the running primary is the
    // healthiest and takes the lock again; no replica promotes over it.
    let back = wait_for(
        "the same leader in the DCS",
        Duration::from_secs(60),
        || async {
            match d.load().await.map_err(|e| e.to_string())?.leader {
                Some(l) if l.name == leader => Ok(()),
                other => Err(format!("leader: {other:?}")),
            }
        },
    )
    .await;
    if let Err(e) = back {
        dump_logs(&c);
        panic!("{e}");
    }
    healthy_again(&c).await;
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));
    assert_eq!(
        c.node(&leader).postmaster_pid(),
        Some(postmaster),
        "the primary ran through the outage without a restart, demotion or rewind"
    );
    write().await.unwrap();
}

/// Waits (up to 60 s) until the `sync` key's first synchronous standby is one `accept` takes, and
/// returns it; panics naming `what` with the key last read.
async fn first_synchronous_standby(
    d: &Arc<dyn Dcs>,
    what: &str,
    accept: impl Fn(&str) -> bool,
) -> String {
    wait_for(what, Duration::from_secs(60), || async {
        let cl = d.load().await.map_err(|e| e.to_string())?;
        let s = cl.sync.ok_or("no sync key")?;
        match s.value.members().first() {
            Some(m) if accept(m) => Ok(m.clone()),
            other => Err(format!("sync key names {other:?}")),
        }
    })
    .await
    .unwrap()
}

// --- synchronous replication ------------------------------------------------------------------------

#[tokio::test]
async fn synchronous_mode_strict_loses_no_acknowledged_write_when_the_primary_dies_under_load() {
    let mut c = healthy_cluster(ClusterOptions {
        dcs_extra: vec![
            "synchronous_mode: true".into(),
            "synchronous_mode_strict: true".into(),
        ],
        ..Default::default()
    })
    .await;
    let old = c.leader().await.unwrap();
    let d = dcs(&c).await;
    let sync_member =
        first_synchronous_standby(&d, "a synchronous standby in the sync key", |_| true).await;
    let rw = c.proxy.as_ref().unwrap().rw_port;
    let writer = writer::Writer::start(rw).await;
    writer.wait_more_than(50).await;
    let node = c.node_mut(&old);
    node.kill_agent();
    node.kill_postmaster();
    let new = new_leader_other_than(&c, &old, Duration::from_secs(60)).await;
    assert_eq!(
        new, sync_member,
        "only the synchronous standby may be promoted"
    );
    writer.more(20).await;
    let acked = writer.stop().await;
    let lost = writer::lost_writes(c.node(&new).pg_port, &acked).await;
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// A commit waiting for a synchronous standby that died is released as soon as the leader names
/// the other replica, not at the next WAL some other writer happens to produce. PostgreSQL
/// releases waiters only while it processes a synchronous standby's reply, and a standby replies
/// when its position moves or every `wal_receiver_status_interval`; with the waiting commits the
/// only writers, the next WAL is the background writer's running-transactions record (up to 15 s
/// after the commit, once). Here the leader's agent is stopped until that record is written, and
/// the standbys never reply on their own (a status interval of 2,147,483 s, `wal_sender_timeout`
/// and `wal_receiver_timeout` off), so without the leader's nudge
/// (`Instance::release_synchronous_waiters`) the commit would wait for ever; the nemesis measured
/// 2.4-4.4 s after the leader's change at load 20-30 (issue 14: strict mode, a replica killed or
/// its replication link cut).
#[tokio::test]
async fn synchronous_mode_strict_releases_a_waiting_commit_once_the_leader_names_another_standby() {
    let mut c = healthy_cluster(ClusterOptions {
        // The leader's agent is stopped below until the background writer's next WAL record (up
        // to 15 s after the commit, more if it hibernates): its demotion window
        // (`loop_wait + retry_timeout`) must outlive that, or it stops PostgreSQL as a frozen
        // leader must; ttl as Patroni's rule asks (>= loop_wait + 2 x retry_timeout).
        ttl: 90,
        loop_wait: 2,
        retry_timeout: 40,
        dcs_extra: vec![
            "synchronous_mode: true".into(),
            "synchronous_mode_strict: true".into(),
        ],
        dcs_parameters: vec![
            "wal_receiver_status_interval: 2147483".into(),
            "wal_sender_timeout: 0".into(),
            "wal_receiver_timeout: 0".into(),
            "checkpoint_timeout: 1h".into(),
            "autovacuum: off".into(),
        ],
        proxy: false,
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.unwrap();
    let d = dcs(&c).await;
    let sync_member =
        first_synchronous_standby(&d, "a synchronous standby in the sync key", |_| true).await;
    let observer = connect(c.node(&leader).pg_port).await.unwrap();
    let writer = connect(c.node(&leader).pg_port).await.unwrap();
    writer
        .batch_execute("CREATE TABLE IF NOT EXISTS nudge (id int)")
        .await
        .unwrap();

    // The leader's agent cannot react until the commit waits and the WAL after it is written.
    c.node(&leader).signal_agent(Signal::SIGSTOP);
    let node = c.node_mut(&sync_member);
    node.kill_agent();
    node.kill_postmaster();
    let insert =
        tokio::spawn(async move { writer.batch_execute("INSERT INTO nudge VALUES (1)").await });
    let after_commit: String = wait_for(
        "the insert to wait for the synchronous standby",
        Duration::from_secs(30),
        || async {
            let row = observer
                .query_one(
                    "SELECT count(*), pg_current_wal_insert_lsn()::text FROM pg_stat_activity \
                     WHERE wait_event = 'SyncRep'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?;
            match row.get::<_, i64>(0) {
                1 => Ok(row.get(1)),
                n => Err(format!("{n} sessions wait")),
            }
        },
    )
    .await
    .unwrap();
    wait_for(
        "the background writer's WAL after the waiting commit",
        Duration::from_secs(35),
        || async {
            let moved: bool = observer
                .query_one(
                    "SELECT pg_current_wal_insert_lsn() > $1::text::pg_lsn",
                    &[&after_commit],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if moved {
                Ok(())
            } else {
                Err(format!("still at {after_commit}"))
            }
        },
    )
    .await
    .unwrap();
    assert!(
        !insert.is_finished(),
        "acknowledged without a synchronous standby"
    );

    c.node(&leader).signal_agent(Signal::SIGCONT);
    let other = first_synchronous_standby(
        &d,
        "the leader to name the other replica synchronous",
        |m| m != sync_member,
    )
    .await;
    assert_ne!(other, leader);
    // A deadline for a loaded machine: without the nudge nothing would ever release it.
    let released = tokio::time::timeout(Duration::from_secs(30), insert).await;
    assert!(
        matches!(released, Ok(Ok(Ok(())))),
        "the commit still waits (or failed) 30 s after {other} was named synchronous: {released:?}"
    );
}

// --- maintenance mode, tags, parameters ---------------------------------------------------------------

#[tokio::test]
async fn paused_cluster_does_not_fail_over_when_the_primary_stops() {
    let c = healthy_cluster(ClusterOptions::default()).await;
    let leader = c.leader().await.unwrap();
    edit_config(&c, |v| v["pause"] = serde_json::json!(true)).await;
    let d = dcs(&c).await;
    wait_for(
        "every member to report pause",
        Duration::from_secs(30),
        || async {
            let cl = d.load().await.map_err(|e| e.to_string())?;
            if cl.members.iter().all(|m| m.data.pause) {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    )
    .await
    .unwrap();
    c.node(&leader).kill_postmaster();
    wait_for(
        "the leader to report postgres stopped",
        Duration::from_secs(30),
        || async {
            let cl = d.load().await.map_err(|e| e.to_string())?;
            let m = cl.member(&leader).ok_or("no member key")?;
            if m.data.state == praetor_dcs::MemberState::Stopped
                && c.node(&leader).postmaster_pid().is_none()
            {
                Ok(())
            } else {
                Err(format!("state {}", m.data.state))
            }
        },
    )
    .await
    .unwrap();
    // Observe for two TTLs: the lock stays, nothing restarts or promotes.
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let cl = d.load().await.unwrap();
        assert_eq!(
            cl.leader.as_ref().map(|l| l.name.as_str()),
            Some(leader.as_str())
        );
        assert!(
            c.node(&leader).postmaster_pid().is_none(),
            "no automatic start while paused"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    edit_config(&c, |v| v["pause"] = serde_json::json!(false)).await;
    healthy_again(&c).await;
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));
}

/// Makes `name` the leader with a switchover (the bootstrap winner is whoever won the race).
async fn make_leader(c: &LocalCluster, name: &str) {
    let leader = c.leader().await.unwrap();
    if leader == name {
        return;
    }
    // In synchronous mode the candidate must first be listed in `sync` (the leader adds it once it
    // streams and has caught up): a 412 "not a synchronous standby" until then is not a failure.
    wait_for(
        "a switchover to the chosen leader",
        Duration::from_secs(60),
        || async {
            let out = std::process::Command::new(binary())
                .args(["ctl", "-c"])
                .arg(&c.nodes[0].config)
                .args([
                    "switchover",
                    "--force",
                    "--leader",
                    &leader,
                    "--candidate",
                    name,
                ])
                .output()
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        },
    )
    .await
    .unwrap();
    // `ctl switchover` answers once the leader key names the candidate; its promotion (after the
    // fencing handshake) follows, and the former leader may stream from it before that, on the old
    // timeline. Wait for the promotion itself.
    let port = c.node(name).pg_port;
    wait_for(
        &format!("{name} to be promoted"),
        Duration::from_secs(60),
        || async {
            match in_recovery(port).await? {
                false => Ok(()),
                true => Err("still in recovery".to_string()),
            }
        },
    )
    .await
    .unwrap();
    healthy_again(c).await;
}

/// Starts a cluster with `tags`, makes pg1 the leader, lets the replicas catch up, kills pg1's agent
/// and postmaster, and returns the member that takes over.
async fn winner_after_pg1_dies(tags: Vec<(usize, String)>) -> String {
    let mut c = healthy_cluster(ClusterOptions {
        tags,
        ..Default::default()
    })
    .await;
    make_leader(&c, "pg1").await;
    replicas_caught_up(&c, "pg1").await;
    let node = c.node_mut("pg1");
    node.kill_agent();
    node.kill_postmaster();
    new_leader_other_than(&c, "pg1", Duration::from_secs(60)).await
}

#[tokio::test]
async fn failover_priority_decides_between_equally_advanced_replicas() {
    let new = winner_after_pg1_dies(vec![(2, "failover_priority: 5".into())]).await;
    assert_eq!(new, "pg3", "the higher failover_priority wins a tie");
}

#[tokio::test]
async fn nofailover_member_is_never_promoted() {
    let new = winner_after_pg1_dies(vec![(1, "nofailover: true".into())]).await;
    assert_eq!(new, "pg3", "pg2 is tagged nofailover");
}

#[tokio::test]
async fn cascading_replica_streams_from_its_replicatefrom_member() {
    let c = healthy_cluster(ClusterOptions {
        tags: vec![
            (2, "replicatefrom: pg2".into()),
            (1, "nofailover: true".into()),
        ],
        ..Default::default()
    })
    .await;
    make_leader(&c, "pg1").await;
    let names = |port: u16| async move {
        let cl = connect(port).await.map_err(|e| e.to_string())?;
        let rows = cl
            .query("SELECT application_name FROM pg_stat_replication WHERE state = 'streaming' ORDER BY 1", &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok::<Vec<String>, String>(rows.iter().map(|r| r.get(0)).collect())
    };
    let pg2 = c.node("pg2").pg_port;
    let pg1 = c.node("pg1").pg_port;
    wait_for(
        "pg3 to stream from pg2 and not from the leader",
        Duration::from_secs(60),
        || async {
            let from_pg2 = names(pg2).await?;
            let from_pg1 = names(pg1).await?;
            if from_pg2 == vec!["pg3".to_string()] && from_pg1 == vec!["pg2".to_string()] {
                Ok(())
            } else {
                Err(format!("pg1 feeds {from_pg1:?}, pg2 feeds {from_pg2:?}"))
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_changed_max_connections_sets_pending_restart_until_the_member_restarts() {
    let c = healthy_cluster(ClusterOptions::default()).await;
    let leader = c.leader().await.unwrap();
    edit_config(&c, |v| {
        v["postgresql"]["parameters"]["max_connections"] = serde_json::json!(150)
    })
    .await;
    let d = dcs(&c).await;
    wait_for(
        "pending_restart on every member",
        Duration::from_secs(30),
        || async {
            let cl = d.load().await.map_err(|e| e.to_string())?;
            let all = cl.members.iter().all(|m| {
                m.data.pending_restart
                    && m.data
                        .pending_restart_reason
                        .as_ref()
                        .is_some_and(|r| r["max_connections"]["new_value"] == "150")
            });
            if all {
                Ok(())
            } else {
                Err(format!(
                    "{:?}",
                    cl.members
                        .iter()
                        .map(|m| (&m.name, m.data.pending_restart))
                        .collect::<Vec<_>>()
                ))
            }
        },
    )
    .await
    .unwrap();
    // Restart one replica through its REST API: its flag clears and it runs with the new value.
    let r = c.node(&replicas_of(&c, &leader)[0]);
    let addr = r.api_addr();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST"])
            .arg(format!("http://{addr}/restart"))
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
    let name = r.name.clone();
    let port = r.pg_port;
    wait_for(
        "the restarted member to clear pending_restart",
        Duration::from_secs(60),
        || async {
            let cl = d.load().await.map_err(|e| e.to_string())?;
            let m = cl.member(&name).ok_or("member gone")?;
            if m.data.pending_restart {
                return Err("still pending".into());
            }
            let conn = connect(port).await.map_err(|e| e.to_string())?;
            let v: String = conn
                .query_one("SHOW max_connections", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if v == "150" {
                Ok(())
            } else {
                Err(format!("max_connections {v}"))
            }
        },
    )
    .await
    .unwrap();
}

/// Waits until every replica of `leader` has table `t`.
async fn wait_for_replicas_to_have_table(c: &LocalCluster, leader: &str, t: &str) {
    for n in c.nodes.iter().filter(|n| n.name != leader) {
        let cl = connect_retry(n.pg_port, Duration::from_secs(10)).await;
        table_readable(&cl, t).await;
    }
}

#[tokio::test]
async fn synchronous_mode_without_an_eligible_standby_falls_back_to_async_and_no_automatic_failover(
) {
    // pg2 and pg3 are tagged nosync: with pg1 leading, synchronous mode (not strict) finds nobody to
    // wait for.
    let mut c = healthy_cluster(ClusterOptions {
        dcs_extra: vec!["synchronous_mode: true".into()],
        tags: vec![(1, "nosync: true".into()), (2, "nosync: true".into())],
        ..Default::default()
    })
    .await;
    make_leader(&c, "pg1").await;
    let leader = "pg1".to_string();
    let d = dcs(&c).await;
    wait_for(
        "a sync key listing nobody",
        Duration::from_secs(30),
        || async {
            let cl = d.load().await.map_err(|e| e.to_string())?;
            match cl.sync {
                Some(s)
                    if s.value.leader.as_deref() == Some(leader.as_str())
                        && s.value.members().is_empty() =>
                {
                    Ok(())
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    // Writes are acknowledged without a synchronous standby (asynchronous fallback).
    let lc = connect(c.node(&leader).pg_port).await.unwrap();
    let guc: String = lc
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(guc, "");
    tokio::time::timeout(
        Duration::from_secs(5),
        lc.batch_execute("CREATE TABLE async_w AS SELECT 1 AS x"),
    )
    .await
    .expect("commit does not wait")
    .unwrap();
    // The leader dies: nobody holds every acknowledged commit, so nobody is promoted automatically.
    let node = c.node_mut(&leader);
    node.kill_agent();
    node.kill_postmaster();
    wait_for(
        "the leader key to expire",
        Duration::from_secs(30),
        || async {
            let cl = d.load().await.map_err(|e| e.to_string())?;
            if cl.leader.is_none() {
                Ok(())
            } else {
                Err("still held".into())
            }
        },
    )
    .await
    .unwrap();
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        let cl = d.load().await.unwrap();
        assert!(
            cl.leader.is_none(),
            "no automatic failover without a synchronous standby"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The number of HA cycles member `node` has run, from its `/metrics`.
async fn ha_cycles(node: &praetor_harness::cluster::Node) -> u64 {
    let (_, body) = praetor_harness::http_get(&node.api_addr(), "/metrics")
        .await
        .expect("GET /metrics");
    body.lines()
        .find(|l| l.starts_with("praetor_ha_loop_duration_seconds_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no HA cycle count in\n{body}"))
}

/// §9 of design.md, "an idle cluster is idle": once healthy and without clients, each agent runs one
/// HA cycle per `loop_wait` and writes nothing to the DCS that is unchanged (the leader's renewal is a
/// lease keep-alive, unchanged member and status keys are not rewritten), so no agent is woken by
/// another's (or its own) renewal. Measured before the fix: 65-80 cycles a second per agent and a
/// watch event per renewal, the leader waking itself.
#[tokio::test]
async fn idle_cluster_runs_one_cycle_per_loop_wait_and_writes_nothing() {
    let c = healthy_cluster(ClusterOptions {
        scope: "idle".into(),
        loop_wait: 1,
        proxy: false,
        ..Default::default()
    })
    .await;
    let d = dcs(&c).await;
    // Settle: right after forming, members still publish new state (streaming, slots, checkpoint).
    let mut events = d.watch();
    let settle_by = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), events.recv()).await {
            Err(_) => break,
            Ok(ev) => assert!(
                tokio::time::Instant::now() < settle_by,
                "the cluster never went quiet for two loop_waits; last write: {ev:?}"
            ),
        }
    }
    let before: Vec<u64> = futures::future::join_all(c.nodes.iter().map(ha_cycles)).await;
    let window = Duration::from_secs(6);
    let mut writes = Vec::new();
    let end = tokio::time::Instant::now() + window;
    while let Ok(ev) = tokio::time::timeout_at(end, events.recv()).await {
        writes.push(format!("{ev:?}"));
    }
    let after: Vec<u64> = futures::future::join_all(c.nodes.iter().map(ha_cycles)).await;
    assert!(
        writes.is_empty(),
        "an idle cluster wrote to the DCS within {window:?}: {writes:?}"
    );
    // One cycle per loop_wait (1 s), plus the cycles a slow one shifts: at most 2 a second.
    for ((node, b), a) in c.nodes.iter().zip(&before).zip(&after) {
        let cycles = a - b;
        assert!(
            cycles <= 2 * window.as_secs(),
            "{} ran {cycles} HA cycles in {window:?} with loop_wait 1",
            node.name
        );
    }
}

/// Issue 13 item 2: a promotion whose waits outlast `loop_wait` keeps its lease. A proxy that never
/// acknowledges the leader change (its key keeps naming the dead leader) holds the winner in
/// `AwaitProxies` until the proxies' contact deadline; the winner renews its lock every cycle
/// meanwhile and confirms it right before `pg_promote()`, so exactly one member ends up primary,
/// holding the lock.
#[tokio::test]
async fn a_promotion_that_waits_for_a_silent_proxy_keeps_its_lease_and_promotes_once() {
    let mut c = healthy_cluster(ClusterOptions {
        scope: "lease-wait".into(),
        proxy: false,
        ..Default::default()
    })
    .await;
    let old = c.leader().await.unwrap();
    replicas_caught_up(&c, &old).await;
    // A proxy that routes to the leader and will not answer: its key lives on this client's lease.
    let stuck = dcs(&c).await;
    stuck
        .set_proxy_state(
            "stuck-proxy",
            &praetor_dcs::ProxyState {
                leader: Some(old.clone()),
                since: None,
            },
        )
        .await
        .unwrap();
    let node = c.node_mut(&old);
    node.kill_agent();
    node.kill_postmaster();
    let new = new_leader_other_than(&c, &old, Duration::from_secs(60)).await;
    // The winner promotes only after the proxies' contact deadline (ttl 6: 4.8 s), having waited
    // over several cycles.
    let winner = connect_retry(c.node(&new).pg_port, Duration::from_secs(10)).await;
    wait_for("the winner to promote", Duration::from_secs(60), || async {
        let r = winner.query_one("SELECT pg_is_in_recovery()", &[]).await;
        match r.map(|r| r.get::<_, bool>(0)) {
            Ok(false) => Ok(()),
            other => Err(format!("in recovery: {other:?}")),
        }
    })
    .await
    .unwrap();
    let log = c.node(&new).log();
    assert!(
        log.contains("waiting for proxies to stop routing to"),
        "the winner did not wait for the silent proxy:\n{log}"
    );
    // Exactly one primary, and it holds the lock.
    let mut primaries = vec![];
    for n in c.nodes.iter().filter(|n| n.name != old) {
        if let Ok(false) = in_recovery(n.pg_port).await {
            primaries.push(n.name.clone());
        }
    }
    assert_eq!(primaries, vec![new.clone()]);
    assert_eq!(c.leader().await.as_deref(), Some(new.as_str()));
    drop(stuck);
}
