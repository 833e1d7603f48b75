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

/// One acknowledged write: the member, when the INSERT was sent and when its answer came.
#[derive(Clone, Debug)]
struct Ack {
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
                "CREATE TABLE IF NOT EXISTS w (member text, at timestamptz DEFAULT now())",
            )
            .await
            .expect("create w");
        let acks: Arc<Mutex<Vec<Ack>>> = Arc::default();
        let stop = CancellationToken::new();
        let mut tasks = vec![];
        for n in &c.nodes {
            let (dsn, member, acks, stop) = (n.dsn(), n.name.clone(), acks.clone(), stop.clone());
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
                        let r = tokio::time::timeout(
                            Duration::from_secs(3),
                            cl.execute("INSERT INTO w (member) VALUES ($1)", &[&member]),
                        )
                        .await;
                        match r {
                            Ok(Ok(_)) => acks.lock().unwrap().push(Ack {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silenced_primary_host_is_failed_over_and_rejoins_as_a_replica_having_acknowledged_nothing()
{
    let mut c = netns_cluster("ns-silence").await;
    let old = c.leader().await.expect("leader");
    let writers = Writers::start(&c).await;
    let fault = Instant::now();
    c.net().silence(&old).expect("silence the primary's host");
    let first_new = writers.first_ack_elsewhere(&old, fault).await;
    let new = c.leader().await.expect("a new leader");
    assert_ne!(new, old);
    c.net().heal().expect("heal");
    rejoined_as_replica(&c, &old).await;
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
