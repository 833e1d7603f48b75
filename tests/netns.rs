//! Faults a loopback cluster cannot show, on hosts in network namespaces (harness::netns): a
//! blackholed primary host, a primary partitioned from the DCS but not from its clients, one-way
//! loss. Each test runs real etcd (3 members), agents with PostgreSQL and a proxy, each in a host
//! of its own. Needs root, `ip` and `nft` (scripts/setup); without them the tests fail with the
//! reason, never skip.
//!
//! The split-brain check: a writer per member inserts straight into that member's PostgreSQL
//! (bypassing the proxy, as applications with a stale address do) and records when each
//! acknowledged write started and ended. Two members must never acknowledge writes in overlapping
//! time: every write the old primary acknowledged ended before the first write any other member
//! acknowledged started.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use praetor_harness::cluster::DcsKind;
use praetor_harness::dcs::DcsServers;
use praetor_harness::netns::Network;
use tokio_util::sync::CancellationToken;

/// A cluster of 3 members on hosts of their own, ttl 6, loop_wait 1, retry_timeout 2.
async fn netns_cluster(scope: &str) -> LocalCluster {
    healthy_cluster(ClusterOptions {
        scope: scope.into(),
        netns: true,
        ..Default::default()
    })
    .await
}

/// One acknowledged write: its row's id, the member, when the INSERT was sent and when its
/// answer came.
#[derive(Clone, Debug)]
struct Ack {
    id: i64,
    member: String,
    start: Instant,
    end: Instant,
}

/// Writers straight to every member's PostgreSQL, each statement bounded by 3 s (a blackholed
/// server never answers).
struct Writers {
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    async fn start(c: &LocalCluster) -> Writers {
        let leader = c.leader().await.expect("a leader");
        let setup = connect_dsn(&c.node(&leader).dsn()).await.expect("leader");
        setup
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS w (id bigint PRIMARY KEY, member text, at timestamptz DEFAULT now())",
            )
            .await
            .expect("create w");
        // Every replica has the table before any fault: a fault right after the CREATE could
        // otherwise leave the next leader without it, and its writes failing for that reason.
        for n in &c.nodes {
            let dsn = n.dsn();
            wait_for(
                &format!("table w on {}", n.name),
                Duration::from_secs(60),
                || async {
                    let cl = connect_dsn(&dsn).await.map_err(|e| e.to_string())?;
                    let row = cl
                        .query_one("SELECT to_regclass('w') IS NOT NULL", &[])
                        .await
                        .map_err(|e| e.to_string())?;
                    if row.get::<_, bool>(0) {
                        Ok(())
                    } else {
                        Err("not replayed yet".to_string())
                    }
                },
            )
            .await
            .expect("the table reaches every member");
        }
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let stop = CancellationToken::new();
        let mut tasks = vec![];
        for (k, n) in c.nodes.iter().enumerate() {
            let (dsn, member, acks, stop) = (n.dsn(), n.name.clone(), acks.clone(), stop.clone());
            // Ids unique across writers and attempts (a timed-out INSERT may still commit).
            let mut next_id = k as i64 * 1_000_000_000;
            tasks.push(tokio::spawn(async move {
                let mut client = None;
                while !stop.is_cancelled() {
                    if client.is_none() {
                        client = tokio::time::timeout(Duration::from_secs(3), connect_dsn(&dsn))
                            .await
                            .ok()
                            .and_then(Result::ok);
                    }
                    if let Some(cl) = &client {
                        let start = Instant::now();
                        next_id += 1;
                        let id = next_id;
                        let r = tokio::time::timeout(
                            Duration::from_secs(3),
                            cl.execute(
                                "INSERT INTO w (id, member) VALUES ($1, $2)",
                                &[&id, &member],
                            ),
                        )
                        .await;
                        match r {
                            Ok(Ok(_)) => acks.lock().unwrap().push(Ack {
                                id,
                                member: member.clone(),
                                start,
                                end: Instant::now(),
                            }),
                            Ok(Err(e)) if e.as_db_error().is_some() => {} // read-only: a replica
                            _ => client = None,
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
        Writers { acks, stop, tasks }
    }

    fn acks(&self) -> Vec<Ack> {
        self.acks.lock().unwrap().clone()
    }

    /// The first write a member other than `old` acknowledged after `since`.
    async fn first_ack_elsewhere(&self, old: &str, since: Instant) -> Ack {
        wait_for(
            "a write acknowledged by another member",
            Duration::from_secs(120),
            || async {
                self.acks()
                    .into_iter()
                    .find(|a| a.member != old && a.start > since)
                    .ok_or_else(|| "none yet".to_string())
            },
        )
        .await
        .expect("another member takes writes")
    }

    /// Waits for a write `member` acknowledged that started after `since`.
    async fn acks_from_since(&self, member: &str, since: Instant) {
        wait_for(
            &format!("a write acknowledged by {member}"),
            Duration::from_secs(60),
            || async {
                self.acks()
                    .into_iter()
                    .find(|a| a.member == member && a.start > since)
                    .map(|_| ())
                    .ok_or_else(|| "none yet".to_string())
            },
        )
        .await
        .expect("the leader keeps taking writes");
    }

    async fn stop(self) -> Vec<Ack> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        self.acks.lock().unwrap().clone()
    }
}

/// Connects to a libpq key=value string.
async fn connect_dsn(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Asserts no two members acknowledged writes in overlapping time: ordered by start, every switch
/// from one member's acknowledgements to another's happens after the previous one's last answer.
fn assert_one_writer_at_a_time(acks: &[Ack]) {
    let mut acks = acks.to_vec();
    acks.sort_by_key(|a| a.start);
    let mut spans: Vec<(String, Instant, Instant)> = vec![];
    for a in &acks {
        match spans.last_mut() {
            Some((m, _, end)) if *m == a.member => *end = a.end.max(*end),
            _ => spans.push((a.member.clone(), a.start, a.end)),
        }
    }
    for w in spans.windows(2) {
        assert!(
            w[0].2 < w[1].1,
            "{} acknowledged a write until {:?} after {} had started acknowledging writes: two writable members at once",
            w[0].0,
            w[0].2.duration_since(w[1].1),
            w[1].0
        );
    }
    // A member may appear again (the old leader, failed back to later), never interleaved within.
}

/// Asserts every acknowledged write of `acks` is in table `w` on `member`.
async fn assert_no_acknowledged_write_lost(c: &LocalCluster, member: &str, acks: &[Ack]) {
    let cl = connect_dsn(&c.node(member).dsn())
        .await
        .unwrap_or_else(|e| panic!("connect to {member}: {e}"));
    let present: std::collections::HashSet<i64> = cl
        .query("SELECT id FROM w", &[])
        .await
        .expect("read w")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<&Ack> = acks.iter().filter(|a| !present.contains(&a.id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes are missing on {member}, e.g. {:?}",
        lost.len(),
        acks.len(),
        lost.first()
    );
    assert!(!acks.is_empty(), "no write was acknowledged at all");
}

/// Waits until `member` runs as a replica streaming from the leader (healthy, two replicas).
async fn rejoined_as_replica(c: &LocalCluster, member: &str) {
    let leader = c
        .wait_healthy(2, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("the cluster did not heal: {e}"));
    assert_ne!(leader, member, "{member} should have rejoined as a replica");
    let cl = connect_dsn(&c.node(member).dsn()).await.expect("connect");
    let row = cl
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .expect("pg_is_in_recovery");
    assert!(row.get::<_, bool>(0), "{member} is not in recovery");
}

#[test]
fn namespaces_work_and_faults_are_silent() {
    let mut net = Network::new().unwrap_or_else(|e| {
        panic!("hosts in network namespaces are unavailable here, so the partition tests cannot run: {e}")
    });
    let a = net.add_host("a").expect("host a");
    let b = net.add_host("b").expect("host b");
    // A server in host a that answers "ok" to each connection.
    let addr = format!("{}:7000", a.ip);
    let listener = {
        let addr = addr.clone();
        a.run(move || TcpListener::bind(&addr).expect("bind in host a"))
            .expect("enter host a")
    };
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let mut s = s;
            let _ = s.write_all(b"ok");
        }
    });
    let ask = |addr: String| ask_in(&addr);
    assert_eq!(
        ask(addr.clone()).expect("test process reaches host a"),
        "ok"
    );
    let from_b = |addr: String| b.run(move || ask_in(&addr)).expect("enter host b");
    assert_eq!(from_b(addr.clone()).expect("host b reaches host a"), "ok");

    // Silenced: a connect hangs until its own timeout, never refused.
    net.silence("a").expect("silence a");
    let err = ask(addr.clone()).expect_err("a silenced host does not answer");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    net.heal().expect("heal");
    assert_eq!(ask(addr.clone()).expect("healed"), "ok");

    // Partitioned: b cannot reach a, the test process still can.
    net.partition(&["a"], &["b"]).expect("partition");
    let err = from_b(addr.clone()).expect_err("partitioned");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert_eq!(ask(addr.clone()).expect("outside the partition"), "ok");
    net.heal().expect("heal");
    assert_eq!(from_b(addr.clone()).expect("healed"), "ok");

    // One way, b -> a dropped: b's SYN never arrives.
    net.one_way("b", "a").expect("one way");
    let err = from_b(addr.clone()).expect_err("one way");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    net.heal().expect("heal");
    assert_eq!(from_b(addr.clone()).expect("healed"), "ok");

    // A slow link: a relay on the gateway that delays each chunk by 300 ms each way (a lower bound
    // on the answer's time, which is what the relay guarantees; nothing here is a Praetor timing).
    let rt = tokio::runtime::Runtime::new().unwrap();
    let relay = rt
        .block_on(praetor_harness::TcpRelay::start_on(&net.gateway(), &addr))
        .expect("relay");
    relay.set_delay(Duration::from_millis(300));
    let via = relay.addr();
    let t = Instant::now();
    assert_eq!(from_b(via.clone()).expect("through the slow relay"), "ok");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    relay.set_delay(Duration::ZERO);
    relay.set_loss(1.0);
    let t = Instant::now();
    assert_eq!(from_b(via).expect("through the lossy relay"), "ok");
    assert!(
        t.elapsed() >= praetor_harness::relay::LOSS_PENALTY,
        "{:?}",
        t.elapsed()
    );
}

/// [`namespaces_work_and_faults_are_silent`]'s client, for use inside a host's thread.
fn ask_in(addr: &str) -> Result<String, std::io::Error> {
    let mut s = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    Ok(buf)
}

/// Silences `old`'s host under the writers until another member takes writes, heals, waits for
/// `old` to rejoin as a replica, and returns every acknowledgement, having asserted that `old`
/// acknowledged nothing after the new leader's first write and that no two members acknowledged
/// writes at the same time.
async fn silence_the_primary_then_heal(c: &mut LocalCluster, old: &str) -> Vec<Ack> {
    let old = old.to_string();
    let writers = Writers::start(c).await;
    let fault = Instant::now();
    c.net().silence(&old).expect("silence the primary's host");
    let first_new = writers.first_ack_elsewhere(&old, fault).await;
    let new = c.leader().await.expect("a new leader");
    assert_ne!(new, old);
    c.net().heal().expect("heal");
    rejoined_as_replica(c, &old).await;
    let acks = writers.stop().await;
    let late: Vec<&Ack> = acks
        .iter()
        .filter(|a| a.member == old && a.end > first_new.start)
        .collect();
    assert!(
        late.is_empty(),
        "the old primary {old} acknowledged {} writes after {} took writes",
        late.len(),
        first_new.member
    );
    assert_one_writer_at_a_time(&acks);
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silenced_primary_host_is_failed_over_and_rejoins_as_a_replica_having_acknowledged_nothing()
{
    let mut c = netns_cluster("ns-silence").await;
    let old = c.leader().await.expect("leader");
    silence_the_primary_then_heal(&mut c, &old).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn primary_partitioned_from_the_dcs_but_not_from_clients_stops_writes_before_another_is_promoted(
) {
    let mut c = netns_cluster("ns-dcs-part").await;
    let old = c.leader().await.expect("leader");
    let writers = Writers::start(&c).await;
    let fault = Instant::now();
    c.net()
        .partition(&[&old], &["e1", "e2", "e3"])
        .expect("partition the primary from etcd");
    let first_new = writers.first_ack_elsewhere(&old, fault).await;
    let acks = writers.acks();
    let last_old = acks
        .iter()
        .filter(|a| a.member == old)
        .map(|a| a.end)
        .max()
        .expect("the old primary acknowledged writes before the fault");
    eprintln!(
        "{old} acknowledged its last write {:?} before {} acknowledged its first",
        first_new.start.saturating_duration_since(last_old),
        first_new.member
    );
    assert!(
        last_old < first_new.start,
        "the old primary {old} still acknowledged a write {:?} after {} started taking writes",
        last_old.duration_since(first_new.start),
        first_new.member
    );
    c.net().heal().expect("heal");
    rejoined_as_replica(&c, &old).await;
    let acks = writers.stop().await;
    assert_one_writer_at_a_time(&acks);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_way_partitions_end_in_one_writable_leader() {
    let mut c = netns_cluster("ns-one-way").await;
    let old = c.leader().await.expect("leader");
    let writers = Writers::start(&c).await;

    // 1. The leader can send to etcd but hears nothing back.
    let fault = Instant::now();
    for e in ["e1", "e2", "e3"] {
        c.net().one_way(e, &old).expect("one way");
    }
    writers.first_ack_elsewhere(&old, fault).await;
    c.net().heal().expect("heal");
    rejoined_as_replica(&c, &old).await;

    // 2. A replica cannot reach the leader: it cannot stream, but must not take over.
    let leader = c.leader().await.expect("leader");
    let replica = c
        .nodes
        .iter()
        .map(|n| n.name.clone())
        .find(|n| *n != leader)
        .expect("a replica");
    c.net().one_way(&replica, &leader).expect("one way");
    // Three TTLs pass with the same leader all along (checked throughout, not only at the end).
    let cut = Instant::now();
    wait_for("three TTLs", Duration::from_secs(60), || async {
        let now = c.leader().await;
        assert!(
            now.is_none() || now.as_deref() == Some(leader.as_str()),
            "the leader changed from {leader} to {now:?} when only a replica lost it"
        );
        if cut.elapsed() > Duration::from_secs(18) {
            Ok(())
        } else {
            Err(format!("{:?} so far", cut.elapsed()))
        }
    })
    .await
    .unwrap();
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));
    c.net().heal().expect("heal");
    c.wait_healthy(2, Duration::from_secs(120))
        .await
        .expect("healthy after healing");

    // 3. One etcd member down (stopped, then back): the quorum holds, the leader stays.
    c.stop_dcs_member(0);
    let down = Instant::now();
    writers
        .acks_from_since(&leader, down + Duration::from_secs(8))
        .await;
    c.start_dcs_member(0).expect("etcd e1 starts again");
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));

    let acks = writers.stop().await;
    assert!(
        acks.iter()
            .any(|a| a.member == leader && a.start > cut + Duration::from_secs(12)),
        "the leader {leader} stopped taking writes while a replica could not reach it"
    );
    assert_one_writer_at_a_time(&acks);
    c.shutdown().await;
}

/// A cluster like [`netns_cluster`] at Patroni's default `ttl` (30) and `retry_timeout` (10), with a
/// 1 s loop: the timings under which Patroni promises to ride out a DCS hiccup shorter than
/// `retry_timeout`. When the silent etcd member is etcd's own raft leader, the two others first have
/// to elect a new one (etcd's defaults: 1 s election timeout, randomized up to 2 s, then a pre-vote
/// and a vote, over 5 s here on a loaded machine), and until then no etcd member can refresh a lease
/// or commit a write: no client can renew a lock in that window, Patroni's neither. The harness's
/// usual `retry_timeout: 2` is shorter than that window, so it would test etcd, not Praetor.
async fn netns_cluster_patroni_timings(scope: &str, nodes: usize) -> LocalCluster {
    healthy_cluster(ClusterOptions {
        scope: scope.into(),
        netns: true,
        nodes,
        proxy: nodes > 1,
        ttl: 30,
        loop_wait: 1,
        retry_timeout: 10,
        ..Default::default()
    })
    .await
}

/// The longest time between two consecutive writes `member` acknowledged (by start), among `acks`.
fn longest_gap(acks: &[Ack], member: &str) -> Duration {
    let mut starts: Vec<Instant> = acks
        .iter()
        .filter(|a| a.member == member)
        .map(|a| a.start)
        .collect();
    starts.sort();
    starts
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// Each of the three etcd members in turn goes silent (blackholed: its host drops every packet, so
/// connects and reads hang) for 20 s while the other two keep a quorum; one of them is etcd's raft
/// leader, so one phase also includes an etcd leader election. The leader's agent must keep its lock
/// throughout: its requests move on from the silent member after one slice of `retry_timeout`
/// (dcs/src/etcd.rs). Asserted: the same leader and timeline all along, no demotion in its log, and
/// it kept acknowledging writes in every phase (and nobody else acknowledged any). The longest gap
/// between the leader's acknowledged writes is printed (a figure, not asserted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_etcd_member_costs_no_failover_while_the_quorum_answers() {
    let mut c = netns_cluster_patroni_timings("ns-etcd-silent", 3).await;
    let leader = c.leader().await.expect("leader");
    let timeline = member_timeline(&c, &leader).await.expect("leader timeline");
    let writers = Writers::start(&c).await;
    for e in ["e1", "e2", "e3"] {
        c.net().silence(e).expect("silence an etcd member");
        let since = Instant::now();
        wait_for("20 s", Duration::from_secs(90), || async {
            let now = c.leader().await;
            assert!(
                now.is_none() || now.as_deref() == Some(leader.as_str()),
                "the leader changed from {leader} to {now:?} while only {e} was silent"
            );
            if since.elapsed() > Duration::from_secs(20) {
                Ok(())
            } else {
                Err(format!("{:?} so far", since.elapsed()))
            }
        })
        .await
        .unwrap();
        writers
            .acks_from_since(&leader, since + Duration::from_secs(15))
            .await;
        c.net().heal().expect("heal");
        // The healed member catches up before the next one goes silent (two silent members at
        // once would be a lost quorum, another test).
        if let praetor_harness::dcs::DcsServers::EtcdCluster(etcd) = &mut c.dcs().servers {
            etcd.wait_healthy(Duration::from_secs(60))
                .await
                .expect("etcd heals");
        }
    }
    let acks = writers.stop().await;
    eprintln!(
        "longest gap between {leader}'s acknowledged writes: {:?} ({} writes)",
        longest_gap(&acks, &leader),
        acks.len()
    );
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));
    assert_eq!(
        member_timeline(&c, &leader).await,
        Some(timeline),
        "{leader}'s timeline changed"
    );
    let log = c.node(&leader).log();
    assert!(
        !log.contains("demoting self"),
        "{leader} demoted itself while the DCS had a quorum:\n{log}"
    );
    let others: Vec<&Ack> = acks.iter().filter(|a| a.member != leader).collect();
    assert!(
        others.is_empty(),
        "{} writes acknowledged by a member other than {leader}",
        others.len()
    );
    c.shutdown().await;
}

/// An agent started while the first etcd member of its `etcd3.hosts` is already silent (connects
/// hang) opens the DCS through the next member and runs: here a restarted agent of a running
/// primary takes its lock again and keeps leading.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_starts_while_its_first_etcd_member_is_silent() {
    let mut c = netns_cluster_patroni_timings("ns-etcd-start", 1).await;
    let leader = c.leader().await.expect("leader");
    c.node_mut(&leader).kill_agent();
    c.net().silence("e1").expect("silence etcd e1");
    let restarted = Instant::now();
    let before = c.node(&leader).log().len();
    c.node_mut(&leader)
        .start_agent(&binary())
        .expect("agent starts");
    let log = wait_for(
        "the restarted agent leading again",
        Duration::from_secs(90),
        || async {
            let log = c.node(&leader).log();
            let since = &log[before.min(log.len())..];
            if since.contains("cannot open the DCS") {
                panic!("the agent could not open the DCS with one etcd member silent:\n{since}");
            }
            if since.contains("the leader with the lock") {
                Ok(since.to_string())
            } else {
                Err("not yet".to_string())
            }
        },
    )
    .await
    .unwrap();
    eprintln!(
        "the restarted agent led again {:?} after its start",
        restarted.elapsed()
    );
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));
    assert!(!log.contains("demoting self"), "{log}");
    c.net().heal().expect("heal");
    c.shutdown().await;
}

/// The member `/cluster` shows as the synchronous standby, waited for (up to 60 s).
async fn sync_standby(c: &LocalCluster) -> String {
    wait_for("a synchronous standby", Duration::from_secs(60), || async {
        let v = c.cluster_json().await?;
        v["members"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["role"] == "sync_standby"))
            .and_then(|m| m["name"].as_str().map(str::to_string))
            .ok_or_else(|| format!("none in {v}"))
    })
    .await
    .expect("a synchronous standby")
}

/// The silenced primary host on ZooKeeper instead of etcd: three ZooKeeper servers in hosts of
/// their own (`e1`..`e3`, [`ClusterOptions::netns`] with a ZooKeeper [`DcsKind`]), with
/// `synchronous_mode` on so that losing no acknowledged write is a promise (asynchronously, a write
/// acknowledged just before the silence may legitimately be missing). The silent primary's agent
/// can no longer reach ZooKeeper, its session expires on the servers and its leader znode goes
/// with it, and a replica takes over. Asserted: a new leader, nothing acknowledged by the old
/// primary after the new one took writes, one writer at a time, the old primary back as a replica
/// once healed, and every acknowledged write on the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_zookeeper_a_silenced_primary_host_is_failed_over_and_no_acknowledged_write_is_lost() {
    let mut c = healthy_cluster(ClusterOptions {
        scope: "ns-zk-silence".into(),
        netns: true,
        dcs: DcsKind::ZooKeeperEnsemble3,
        dcs_extra: vec!["synchronous_mode: true".into()],
        ..Default::default()
    })
    .await;
    // The DCS really is ZooKeeper, one server per DCS host.
    let e1 = c.net().host("e1").ip.clone();
    match &c.dcs().servers {
        DcsServers::ZooKeeperEnsemble(z) => {
            assert_eq!(z.members.len(), 3);
            assert_eq!(z.members[0].endpoint, format!("{e1}:2181"));
        }
        _ => panic!("the cluster does not run on a ZooKeeper ensemble"),
    }
    let old = c.leader().await.expect("leader");
    sync_standby(&c).await;
    let acks = silence_the_primary_then_heal(&mut c, &old).await;
    let leader = c.leader().await.expect("a leader after the heal");
    assert_no_acknowledged_write_lost(&c, &leader, &acks).await;
    c.shutdown().await;
}

/// Strict synchronous replication over slow replication links: each replica streams from the
/// leader through a relay in front of the leader's PostgreSQL that delays every chunk by 200 ms
/// each way ([`LocalCluster::relay_replication`]). A commit is acknowledged only once its WAL
/// reached the synchronous standby and the standby's answer came back, so every write the leader
/// acknowledged took at least that delay (a bound the relay guarantees, not a Praetor timing;
/// the fastest and median are printed). Then the primary's host dies (agent and PostgreSQL
/// kill -9): a replica takes over, and every acknowledged write is on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_replication_link_slows_strict_synchronous_commits_and_loses_no_acknowledged_write_when_the_primary_dies(
) {
    let mut c = healthy_cluster(ClusterOptions {
        scope: "ns-slow-repl".into(),
        netns: true,
        dcs_extra: vec![
            "synchronous_mode: true".into(),
            "synchronous_mode_strict: true".into(),
        ],
        ..Default::default()
    })
    .await;
    let leader = c.leader().await.expect("leader");
    let delay = Duration::from_millis(200);
    for r in others(&c, &leader) {
        c.relay_replication(&leader, &r)
            .await
            .unwrap_or_else(|e| panic!("{r}'s replication link through a relay: {e}"))
            .set_delay(delay);
    }
    sync_standby(&c).await;
    let writers = Writers::start(&c).await;
    let slow_since = Instant::now();
    wait_for(
        "10 writes acknowledged over the slow links",
        Duration::from_secs(60),
        || async {
            let n = writers
                .acks()
                .iter()
                .filter(|a| a.member == leader && a.start > slow_since)
                .count();
            (n >= 10).then_some(()).ok_or(format!("{n} so far"))
        },
    )
    .await
    .expect("the leader takes writes over slow links");
    c.node_mut(&leader).kill();
    let fault = Instant::now();
    let first_new = writers.first_ack_elsewhere(&leader, fault).await;
    let acks = writers.stop().await;
    let mut slow: Vec<Duration> = acks
        .iter()
        .filter(|a| a.member == leader && a.start > slow_since)
        .map(|a| a.end - a.start)
        .collect();
    slow.sort();
    eprintln!(
        "{} commits over {delay:?} links: fastest {:?}, median {:?}",
        slow.len(),
        slow[0],
        slow[slow.len() / 2]
    );
    assert!(
        slow[0] >= delay,
        "{leader} acknowledged a commit in {:?}, before its WAL could cross a {delay:?} link",
        slow[0]
    );
    let new = c.leader().await.expect("a new leader");
    assert_ne!(new, leader);
    assert_eq!(new, first_new.member);
    assert_no_acknowledged_write_lost(&c, &new, &acks).await;
    c.shutdown().await;
}

/// `SELECT pg_current_wal_lsn()` on `dsn`, as text.
async fn current_lsn(dsn: &str) -> String {
    let cl = connect_dsn(dsn).await.expect("connect to the leader");
    cl.query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("pg_current_wal_lsn")
        .get(0)
}

/// Whether the replica at `dsn` replayed WAL up to `lsn`.
async fn replayed(dsn: &str, lsn: &str) -> Result<bool, String> {
    let cl = connect_dsn(dsn).await.map_err(|e| e.to_string())?;
    let row = cl
        .query_one(
            "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, false)",
            &[&lsn],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

/// Writes 10 batches of 200 rows of 100 bytes into `r` on `leader`.
async fn write_batches(leader: &tokio_postgres::Client, from: i32) {
    for b in 0..10 {
        let lo = from + b * 200;
        leader
            .execute(
                "INSERT INTO r SELECT g, repeat('x', 100) FROM generate_series($1::int, $2::int) g",
                &[&lo, &(lo + 199)],
            )
            .await
            .expect("insert a batch");
    }
}

/// One replica's replication link through a relay in front of the leader's PostgreSQL
/// ([`LocalCluster::relay_replication`]), first lossy and slow, then cut. While lossy (30 % of
/// chunks held 200 ms, 20 ms each way) the stream goes on, as TCP does over a lossy path, and the
/// replica replays up to the leader's position. While cut it has none of the WAL written since;
/// once the link heals it reconnects through the relay and replays up to the leader's position
/// again, with every row. Only a replication link failed: the leader stays the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_behind_a_lossy_then_cut_replication_link_reconnects_and_catches_up_once_it_heals(
) {
    let mut c = netns_cluster("ns-cut-repl").await;
    let leader = c.leader().await.expect("leader");
    let replica = others(&c, &leader)[0].clone();
    let (leader_dsn, replica_dsn) = (c.node(&leader).dsn(), c.node(&replica).dsn());
    let leader_ip = c.node(&leader).ip.clone();
    let writer = connect_dsn(&leader_dsn)
        .await
        .expect("connect to the leader");
    writer
        .batch_execute("CREATE TABLE r (id int PRIMARY KEY, pad text)")
        .await
        .expect("create r");
    let relay = c
        .relay_replication(&leader, &replica)
        .await
        .unwrap_or_else(|e| panic!("{replica}'s replication link through a relay: {e}"));
    relay.set_loss(0.3);
    relay.set_delay(Duration::from_millis(20));

    // Lossy: the replica keeps up.
    write_batches(&writer, 0).await;
    let target = current_lsn(&leader_dsn).await;
    wait_for(
        "the replica replaying up to the leader's position over the lossy link",
        Duration::from_secs(120),
        || async {
            replayed(&replica_dsn, &target)
                .await?
                .then_some(())
                .ok_or(format!("not at {target} yet"))
        },
    )
    .await
    .expect("the replica keeps up over a lossy link");

    // Cut: it falls behind.
    c.replication_links[0].2.cut();
    write_batches(&writer, 2000).await;
    let target = current_lsn(&leader_dsn).await;
    assert!(
        !replayed(&replica_dsn, &target).await.expect("replay LSN"),
        "{replica} replayed WAL written after its replication link was cut"
    );

    // Healed: it reconnects through the relay and catches up.
    let relay = &c.replication_links[0].2;
    relay.set_loss(0.0);
    relay.set_delay(Duration::ZERO);
    relay.restore();
    wait_for(
        "the replica streaming through the relay and replaying up to the leader's position",
        Duration::from_secs(120),
        || async {
            let cl = connect_dsn(&leader_dsn).await.map_err(|e| e.to_string())?;
            let streaming = cl
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication \
                     WHERE application_name = $1 AND host(client_addr) = $2 AND state = 'streaming'",
                    &[&replica, &leader_ip],
                )
                .await
                .map_err(|e| e.to_string())?
                .get::<_, i64>(0);
            if streaming == 0 {
                return Err("not streaming through the relay".to_string());
            }
            replayed(&replica_dsn, &target)
                .await?
                .then_some(())
                .ok_or(format!("not at {target} yet"))
        },
    )
    .await
    .expect("the replica catches up once its link heals");
    let rows = |dsn: String| async move {
        let cl = connect_dsn(&dsn).await.expect("connect");
        cl.query_one("SELECT count(*) FROM r", &[])
            .await
            .expect("count r")
            .get::<_, i64>(0)
    };
    assert_eq!(rows(replica_dsn.clone()).await, 4000);
    assert_eq!(rows(leader_dsn.clone()).await, 4000);
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));
    c.shutdown().await;
}

/// Runs `nft` inside `host`'s namespace with `args`; panics with its stderr if it fails.
fn nft_in(host: &praetor_harness::netns::Host, args: &[&str]) {
    let out = host.command("nft").args(args).output().expect("run nft");
    assert!(
        out.status.success(),
        "nft {args:?} in {}: {}",
        host.name,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A replica whose walreceiver is connecting to the leader when the leader's side of that
/// connection vanishes unannounced (the reset it sends is lost: here an nftables rule drops what
/// the leader's replication relay sends while it closes the held connection) is left with a
/// half-open connection on which no answer will ever come. PostgreSQL's walreceiver waits for
/// that answer with no timeout of its own; the TCP keepalives in the agent's `primary_conninfo`
/// draw a reset from the leader's host, so the walreceiver fails, reconnects and streams again
/// (nemesis seed 54, where the leader's host was silent when a cut replication link was restored).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_left_connecting_on_a_half_open_connection_streams_again() {
    let mut c = netns_cluster("ns-half-open").await;
    let leader = c.leader().await.expect("leader");
    let replica = others(&c, &leader)[0].clone();
    let (leader_dsn, replica_dsn) = (c.node(&leader).dsn(), c.node(&replica).dsn());
    let leader_host = c.node(&leader).host.clone().expect("netns host");
    let relay_port = c
        .relay_replication(&leader, &replica)
        .await
        .unwrap_or_else(|e| panic!("{replica}'s replication link through a relay: {e}"))
        .port;

    // Cut: the stream ends and the walreceiver's next connection is held unanswered.
    c.replication_links[0].2.cut();
    wait_for(
        "the replica's walreceiver waiting for the leader's answer while it connects",
        Duration::from_secs(60),
        || async {
            let cl = connect_dsn(&replica_dsn).await.map_err(|e| e.to_string())?;
            let n = cl
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walreceiver' \
                     AND wait_event = 'LibPQWalReceiverConnect'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?
                .get::<_, i64>(0);
            (n == 1).then_some(()).ok_or("not connecting".to_string())
        },
    )
    .await
    .expect("the walreceiver connects through the cut link");

    // The relay closes the held connection; its reset never leaves the leader's host.
    let sport = format!("{relay_port}");
    nft_in(
        &leader_host,
        &[
            "add", "rule", "inet", "praetor", "output", "tcp", "sport", &sport, "drop",
        ],
    );
    c.replication_links[0].2.restore();
    let replica_ip = c.node(&replica).ip.clone();
    wait_for(
        "the leader's side of the held connection gone",
        Duration::from_secs(30),
        || async {
            let out = leader_host
                .command("ss")
                .args([
                    "-Htn",
                    "state",
                    "all",
                    "sport",
                    "=",
                    &format!(":{relay_port}"),
                ])
                .output()
                .map_err(|e| e.to_string())?;
            // Earlier connections' TIME-WAIT entries are no state the replica's side could
            // still be told about.
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let held = text
                .lines()
                .any(|l| !l.starts_with("TIME-WAIT") && l.contains(&format!("{replica_ip}:")));
            (!held).then_some(()).ok_or(text)
        },
    )
    .await
    .expect("the relay closes the held connection");
    c.net()
        .heal_host(&leader)
        .expect("remove the rule dropping the relay's packets");

    // The replica's side is still established: only a probe finds the leader has forgotten it.
    wait_for(
        "the replica streaming through the relay again",
        Duration::from_secs(90),
        || async {
            let cl = connect_dsn(&leader_dsn).await.map_err(|e| e.to_string())?;
            let n = cl
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication \
                     WHERE application_name = $1 AND state = 'streaming'",
                    &[&replica],
                )
                .await
                .map_err(|e| e.to_string())?
                .get::<_, i64>(0);
            (n == 1).then_some(()).ok_or("not streaming".to_string())
        },
    )
    .await
    .expect("the replica streams again after its half-open connection");
    assert_eq!(c.leader().await.as_deref(), Some(leader.as_str()));
    c.shutdown().await;
}
