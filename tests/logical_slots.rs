//! Permanent logical slots survive failover (issue 16 item 3, seed 001's message-queue feed).
//!
//! Three PostgreSQL members on etcd with a permanent logical slot `queue` (`test_decoding`) in the
//! dynamic configuration, once on PostgreSQL 18 (failover slots kept by PostgreSQL's slot
//! synchronization) and once on 15 (Patroni's copy-and-advance: each replica copies the slot's
//! state file from the leader, restarts once, and advances its copy to the position the leader
//! publishes). A writer inserts rows with unique ids, one per transaction, through a multi-host
//! connection that follows the leader; a consumer runs `pg_recvlogical` on the slot through the
//! leader and, each time it is cut off, starts it again on whichever member leads, from the position
//! it confirmed last (`--startpos`, read from `pg_recvlogical -v`'s "confirming ... flush to"
//! lines), as a consumer that tracks its position does. The leader node is killed (`kill -9` of the
//! agent and every PostgreSQL process) `PRAETOR_LOGICAL_FAILOVERS` times (default 1; the killed node
//! rejoins before the next kill). At the end every row of the final leader's table was delivered
//! (none lost), and no row whose commit lies before the position the consumer restarted from was
//! delivered again; repeats after that position are allowed and counted.
//!
//! Each row stores `pg_current_wal_insert_lsn()` taken inside its own transaction: below its commit
//! record, and (one writer, one row per transaction) at or after the previous row's commit record.
//! So a row whose next row (by id) has `lsn <= startpos` committed before the consumer's confirmed
//! position (a row's own `lsn < startpos` is not enough: a keepalive may confirm a position
//! between a row's insert and its commit, and the transaction is then sent again). The writer,
//! consumer and parsing live in `praetor_harness::logical`, shared with the nemesis' slot
//! workload.
//!
//! Before each kill every replica says in `/patroni` that it holds usable copies
//! (`logical_slot_copies`). A third test (issue 14) checks the leader race's tie-breaker: of two
//! replicas equal on WAL, the one holding a usable copy is promoted.
//!
//! Run: `cargo test -p praetor --test logical_slots -- --test-threads=1 --nocapture` (figures on
//! stderr).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use praetor_harness::logical::{self, delivered, Consumer, Run, Writer};
use praetor_harness::PgMajor;

const SLOT: &str = "queue";

/// The multi-host libpq string that reaches whichever member accepts writes.
fn leader_dsn(c: &LocalCluster) -> String {
    let addrs: Vec<String> = c.nodes.iter().map(|n| n.pg_addr()).collect();
    logical::leader_dsn(&addrs)
}

/// Delivered / lost / duplicated figures of a whole run.
#[derive(Debug, Default)]
struct Tally {
    committed: usize,
    acked_not_committed: usize,
    delivered: usize,
    lost: Vec<i64>,
    /// Delivered rows that are not in the final table (a change that did not survive the failover).
    phantom: usize,
    /// Redelivered rows whose commit lies before the position the consumer restarted from.
    dup_before_confirmed: Vec<i64>,
    /// Redelivered rows after that position (allowed).
    dup_after_confirmed: usize,
}

/// `committed`: the final table, id to lsn.
fn tally(runs: &[Run], committed: &BTreeMap<i64, u64>, acked: &[i64]) -> Tally {
    let mut t = Tally {
        committed: committed.len(),
        acked_not_committed: acked.iter().filter(|i| !committed.contains_key(i)).count(),
        ..Default::default()
    };
    let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
    for run in runs {
        let start = run.startpos.unwrap_or(0);
        for (id, _) in delivered(&run.output) {
            if seen.contains_key(&id) {
                let next = committed.range(id + 1..).next().map(|(_, l)| *l);
                if next.is_some_and(|next| next <= start) {
                    t.dup_before_confirmed.push(id);
                } else {
                    t.dup_after_confirmed += 1;
                }
            }
            *seen.entry(id).or_default() += 1;
        }
    }
    t.delivered = seen.len();
    t.lost = committed
        .keys()
        .filter(|i| !seen.contains_key(i))
        .copied()
        .collect();
    t.phantom = seen.keys().filter(|i| !committed.contains_key(i)).count();
    t
}

fn delivered_ids(runs: &[Run]) -> BTreeSet<i64> {
    runs.iter()
        .flat_map(|r| delivered(&r.output))
        .map(|(id, _)| id)
        .collect()
}

/// On `node`: the slot exists as a persistent synchronized copy (`synced`, not temporary).
async fn has_synced_copy(port: u16) -> Result<(), String> {
    let client = connect(port).await.map_err(|e| e.to_string())?;
    let row = client
        .query_opt(
            "SELECT synced, temporary, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
        .map_err(|e| e.to_string())?;
    match row {
        Some(r) if r.get::<_, bool>(0) && !r.get::<_, bool>(1) => Ok(()),
        Some(r) => Err(format!(
            "synced={} temporary={} confirmed={:?}",
            r.get::<_, bool>(0),
            r.get::<_, bool>(1),
            r.get::<_, Option<String>>(2)
        )),
        None => Err("no slot".into()),
    }
}

/// On `port` (PostgreSQL before 17): a persistent copy of the slot, advanced past its creation
/// (`confirmed_flush_lsn` at least `min`), with `hot_standby_feedback` on.
async fn has_advanced_copy(port: u16, min: u64) -> Result<u64, String> {
    let client = connect(port).await.map_err(|e| e.to_string())?;
    let feedback: String = client
        .query_one("SHOW hot_standby_feedback", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    if feedback != "on" {
        return Err(format!("hot_standby_feedback = {feedback}"));
    }
    let row = client
        .query_opt(
            "SELECT temporary, (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots \
             WHERE slot_name = $1 AND slot_type = 'logical'",
            &[&SLOT],
        )
        .await
        .map_err(|e| e.to_string())?;
    match row {
        Some(r) if !r.get::<_, bool>(0) => {
            let at = r.get::<_, Option<i64>>(1).unwrap_or(0).max(0) as u64;
            if at >= min {
                Ok(at)
            } else {
                Err(format!("copy at {at:X}, want at least {min:X}"))
            }
        }
        Some(_) => Err("temporary slot".into()),
        None => Err("no copy".into()),
    }
}

/// The slot's `confirmed_flush_lsn` on the leader at `port` (bytes).
async fn confirmed_on(port: u16) -> Result<u64, String> {
    let client = connect(port).await.map_err(|e| e.to_string())?;
    client
        .query_opt(
            "SELECT (confirmed_flush_lsn - '0/0')::bigint FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
        .map_err(|e| e.to_string())?
        .and_then(|r| r.get::<_, Option<i64>>(0))
        .map(|v| v.max(0) as u64)
        .ok_or_else(|| "no slot".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logical_slot_survives_leader_kill_nothing_lost_nothing_confirmed_redelivered() {
    survives_leader_kill(PgMajor::Pg18).await;
}

/// PostgreSQL 15 has no failover slots: the replicas' copies come from copy-and-advance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg15_logical_slot_copied_to_replicas_survives_leader_kill() {
    survives_leader_kill(PgMajor::Pg15).await;
}

/// A healthy 3-member cluster of `pg` named `scope`, without a proxy, with `wal_level: logical`
/// and the permanent logical slot [`SLOT`] in its dynamic configuration.
async fn slot_cluster(scope: &str, pg: PgMajor) -> LocalCluster {
    healthy_cluster(ClusterOptions {
        scope: scope.into(),
        bin_dir: Some(pg.bin_dir()),
        proxy: false,
        dcs_extra: logical::permanent_slot_lines(SLOT),
        dcs_parameters: vec!["wal_level: logical".into()],
        ..Default::default()
    })
    .await
}

async fn survives_leader_kill(pg: PgMajor) {
    let failover_slots = pg.number() >= 17;
    let failovers: usize = std::env::var("PRAETOR_LOGICAL_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut c = slot_cluster("logical", pg).await;
    let dsn = leader_dsn(&c);
    let leader = c.leader().await.expect("leader");
    let client = connect_retry(c.node(&leader).pg_port, Duration::from_secs(30)).await;
    client
        .batch_execute(logical::CREATE_TABLE)
        .await
        .expect("create table");
    // The leader created the slot, with failover on from 17.
    // (`failover` exists from 17 on.)
    let sql = format!(
        "SELECT {} FROM pg_replication_slots WHERE slot_name = $1 AND slot_type = 'logical'",
        if failover_slots { "failover" } else { "false" }
    );
    let failover_flag = wait_for(
        "the permanent slot on the leader",
        Duration::from_secs(60),
        || async {
            client
                .query_opt(sql.as_str(), &[&SLOT])
                .await
                .map_err(|e| e.to_string())?
                .map(|r| r.get::<_, bool>(0))
                .ok_or_else(|| "no slot yet".to_string())
        },
    )
    .await;
    let failover_flag = match failover_flag {
        Ok(f) => f,
        Err(e) => {
            dump_logs(&c);
            panic!("{e}");
        }
    };
    assert_eq!(
        failover_flag, failover_slots,
        "the permanent slot is a failover slot from 17 on"
    );

    let dir = c.work.path().join("consumer");
    std::fs::create_dir_all(&dir).expect("consumer dir");
    let writer = Writer::start(dsn.clone(), 100);
    let consumer = Consumer::start(pg.bin_dir(), dsn.clone(), SLOT.into(), dir, Instant::now());

    let mut leader = leader;
    for round in 1..=failovers {
        // Before the kill: the consumer streams, and each replica holds a copy of the slot (17+:
        // synchronized by PostgreSQL, and the leader makes logical consumers wait for both
        // replicas; before 17: copied and advanced by the agents).
        let before = delivered_ids(&consumer.runs()).len();
        let progress = wait_for(
            "the consumer receives rows",
            Duration::from_secs(120),
            || async {
                let n = delivered_ids(&consumer.runs()).len();
                if n >= before + 50 {
                    Ok(n)
                } else {
                    Err(format!("{n} delivered"))
                }
            },
        )
        .await;
        if let Err(e) = progress {
            dump_logs(&c);
            panic!("round {round}: {e}");
        }
        if failover_slots {
            for n in c.nodes.iter().filter(|n| n.name != leader) {
                let port = n.pg_port;
                if let Err(e) = wait_for(
                    &format!("{}: a synchronized copy of the slot", n.name),
                    Duration::from_secs(120),
                    || has_synced_copy(port),
                )
                .await
                {
                    dump_logs(&c);
                    panic!("round {round}: {e}");
                }
            }
            let port = c.node(&leader).pg_port;
            let standby_slots = wait_for(
                "synchronized_standby_slots names both replicas",
                Duration::from_secs(60),
                || async {
                    let client = connect(port).await.map_err(|e| e.to_string())?;
                    let v: String = client
                        .query_one("SHOW synchronized_standby_slots", &[])
                        .await
                        .map_err(|e| e.to_string())?
                        .get(0);
                    if v.split(',').filter(|s| !s.is_empty()).count() == 2 {
                        Ok(v)
                    } else {
                        Err(format!("synchronized_standby_slots = {v:?}"))
                    }
                },
            )
            .await;
            if let Err(e) = standby_slots {
                dump_logs(&c);
                panic!("round {round}: {e}");
            }
        } else {
            // Each replica holds a copy advanced to where the consumer had confirmed now (the
            // leader publishes it, the replica advances to it): a copy that follows.
            let lport = c.node(&leader).pg_port;
            let now = match confirmed_on(lport).await {
                Ok(v) => v,
                Err(e) => {
                    dump_logs(&c);
                    panic!("round {round}: the slot on the leader: {e}");
                }
            };
            for n in c.nodes.iter().filter(|n| n.name != leader) {
                let port = n.pg_port;
                match wait_for(
                    &format!("{}: a copy of the slot, advanced", n.name),
                    Duration::from_secs(180),
                    || has_advanced_copy(port, now),
                )
                .await
                {
                    Ok(at) => eprintln!(
                        "round {round}: {} holds a copy at {:X}/{:X} (leader's was at {:X}/{:X})",
                        n.name,
                        at >> 32,
                        at & 0xffff_ffff,
                        now >> 32,
                        now & 0xffff_ffff
                    ),
                    Err(e) => {
                        dump_logs(&c);
                        panic!("round {round}: {e}");
                    }
                }
            }
        }

        // Each replica says so in `/patroni` (`logical_slot_copies`, the leader race's
        // tie-breaker: issue 14).
        for n in c.nodes.iter().filter(|n| n.name != leader) {
            let says = wait_for(
                &format!("{}: /patroni says it holds usable copies", n.name),
                Duration::from_secs(60),
                || async {
                    match race_view(n).await? {
                        (_, Some(true)) => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                },
            )
            .await;
            if let Err(e) = says {
                dump_logs(&c);
                panic!("round {round}: {e}");
            }
        }
        c.node_mut(&leader).kill();
        let new = new_leader_other_than(&c, &leader, Duration::from_secs(120)).await;
        eprintln!("round {round}: killed {leader}, {new} leads");
        // The consumer continues on the new leader.
        let before = delivered_ids(&consumer.runs()).len();
        let resumed = wait_for(
            "the consumer continues on the new leader",
            Duration::from_secs(120),
            || async {
                let n = delivered_ids(&consumer.runs()).len();
                if n >= before + 50 {
                    Ok(n)
                } else {
                    Err(format!("{n} delivered (was {before})"))
                }
            },
        )
        .await;
        if let Err(e) = resumed {
            dump_logs(&c);
            panic!("round {round}: {e}");
        }
        let bin = c.binary.clone();
        c.node_mut(&leader)
            .start_agent(&bin)
            .expect("agent restarts");
        if let Err(e) = c.wait_healthy(2, Duration::from_secs(180)).await {
            dump_logs(&c);
            panic!("round {round}: the killed member did not rejoin: {e}");
        }
        leader = new;
    }

    let acked = writer.stop().await;
    let port = c.node(&leader).pg_port;
    let client = connect_retry(port, Duration::from_secs(30)).await;
    let committed: BTreeMap<i64, u64> = client
        .query(
            &format!("SELECT id, (lsn - '0/0')::bigint FROM {}", logical::TABLE),
            &[],
        )
        .await
        .expect("read the writer's table")
        .iter()
        .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
        .collect();
    // Every committed row reaches the consumer (it is still streaming from the leader).
    let all = wait_for(
        "every committed row delivered",
        Duration::from_secs(120),
        || async {
            let got = delivered_ids(&consumer.runs());
            let missing = committed.keys().filter(|i| !got.contains(i)).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{missing} of {} not delivered yet",
                    committed.len()
                ))
            }
        },
    )
    .await;
    let runs = consumer.stop().await;
    let t = tally(&runs, &committed, &acked);
    eprintln!(
        "logical slot over {failovers} failover(s): committed {} / delivered {} / lost {} / \
         duplicated before the confirmed position {} / repeated after it {} / delivered but not \
         committed {} / acknowledged but not committed {} / consumer runs {}",
        t.committed,
        t.delivered,
        t.lost.len(),
        t.dup_before_confirmed.len(),
        t.dup_after_confirmed,
        t.phantom,
        t.acked_not_committed,
        runs.len()
    );
    if all.is_err() || !t.lost.is_empty() || !t.dup_before_confirmed.is_empty() {
        dump_logs(&c);
        let kept = c.work.keep();
        panic!(
            "lost {:?}, duplicated before the confirmed position {:?} (logs kept in {})",
            &t.lost[..t.lost.len().min(20)],
            &t.dup_before_confirmed[..t.dup_before_confirmed.len().min(20)],
            kept.display()
        );
    }
    assert!(t.committed > 0);
}

/// What `node`'s `/patroni` answers: its WAL position (max of the `xlog` positions, as the leader
/// race reads it) and `logical_slot_copies` (issue 14).
async fn race_view(node: &praetor_harness::cluster::Node) -> Result<(u64, Option<bool>), String> {
    let (code, body) = call(node, "GET", "/patroni", None).await;
    let v: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("{code} {body}: {e}"))?;
    let xlog = &v["xlog"];
    let pos = ["location", "received_location", "replayed_location"]
        .iter()
        .filter_map(|k| xlog[*k].as_u64())
        .max()
        .ok_or_else(|| format!("no xlog position in {body}"))?;
    Ok((pos, v["logical_slot_copies"].as_bool()))
}

/// The state of the slot's copy on `port`, for the test's messages.
async fn copy_row(port: u16) -> String {
    let Ok(client) = connect(port).await else {
        return "unreachable".into();
    };
    match client
        .query_opt(
            "SELECT synced, temporary, confirmed_flush_lsn::text, invalidation_reason \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
    {
        Ok(Some(r)) => format!(
            "synced={} temporary={} confirmed={:?} invalidation={:?}",
            r.get::<_, bool>(0),
            r.get::<_, bool>(1),
            r.get::<_, Option<String>>(2),
            r.get::<_, Option<String>>(3)
        ),
        Ok(None) => "no slot".into(),
        Err(e) => e.to_string(),
    }
}

/// Issue 14 (nemesis etcd async PG 15 seed 3: the member elected had no copy of the permanent slot,
/// the one that had it was passed over, and the consumer lost its slot): two replicas equal on WAL,
/// only one holding a usable copy of the permanent logical slot; the leader stops; the holder is
/// promoted.
///
/// PostgreSQL 18. Both replicas hold a synchronized copy while a consumer runs; the consumer stops
/// (the slot stays at its confirmed position, its `catalog_xmin` and `restart_lsn` held back) and
/// rows are written past it; one replica is cloned again: PostgreSQL's slot synchronization then
/// keeps its copy temporary ("the remote slot needs ... but the standby has ...") until the
/// consumer confirms past what that standby can decode, so only the other replica holds a usable
/// copy, and the agents say so in `/patroni` (`logical_slot_copies`). The leader's agent is
/// killed and its PostgreSQL stopped fast: a fast shutdown sends the last WAL (its shutdown
/// checkpoint) to both streaming replicas, so both end at the same position (checked); after
/// `ttl` both race, and the tie on WAL and `failover_priority` goes to the copy holder. On the
/// rule before issue 14 both raced and either could win (about one run in two passes by chance:
/// the `decide_table` rows are the deterministic check).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_replica_holding_a_usable_slot_copy_wins_a_tie_on_wal_against_one_without() {
    let pg = PgMajor::Pg18;
    let mut c = slot_cluster("slotelect", pg).await;
    let dsn = leader_dsn(&c);
    let leader = c.leader().await.expect("leader");
    let replicas = others(&c, &leader);
    let (holder, recloned) = (replicas[0].clone(), replicas[1].clone());
    let client = connect_retry(c.node(&leader).pg_port, Duration::from_secs(30)).await;
    client
        .batch_execute(logical::CREATE_TABLE)
        .await
        .expect("create table");

    // Both replicas hold a synchronized copy while the consumer streams.
    let dir = c.work.path().join("consumer");
    std::fs::create_dir_all(&dir).expect("consumer dir");
    let writer = Writer::start(dsn.clone(), 100);
    let consumer = Consumer::start(pg.bin_dir(), dsn.clone(), SLOT.into(), dir, Instant::now());
    let mut failed = None;
    if let Err(e) = wait_for(
        "the consumer receives rows",
        Duration::from_secs(120),
        || async {
            let n = delivered_ids(&consumer.runs()).len();
            if n >= 50 {
                Ok(n)
            } else {
                Err(format!("{n} delivered"))
            }
        },
    )
    .await
    {
        failed = Some(e);
    }
    for name in &replicas {
        if failed.is_some() {
            break;
        }
        let port = c.node(name).pg_port;
        if let Err(e) = wait_for(
            &format!("{name}: a synchronized copy of the slot"),
            Duration::from_secs(120),
            || has_synced_copy(port),
        )
        .await
        {
            failed = Some(e);
        }
    }
    // The consumer stops; rows are written past the slot's position.
    consumer.stop().await;
    let acked_before = writer_rows_now(&client).await;
    if failed.is_none() {
        if let Err(e) = wait_for(
            "200 rows written past the stopped consumer",
            Duration::from_secs(60),
            || async {
                let n = writer_rows_now(&client).await;
                if n >= acked_before + 200 {
                    Ok(n)
                } else {
                    Err(format!("{n} rows"))
                }
            },
        )
        .await
        {
            failed = Some(e);
        }
    }
    writer.stop().await;
    if let Some(e) = failed {
        dump_logs(&c);
        panic!("{e}");
    }
    let confirmed = confirmed_on(c.node(&leader).pg_port)
        .await
        .expect("the slot on the leader");

    // One replica is cloned again: its synchronized copy stays temporary.
    let bin = c.binary.clone();
    {
        let node = c.node_mut(&recloned);
        node.stop_agent(Duration::from_secs(60))
            .await
            .expect("agent stops");
        std::fs::remove_dir_all(node.data_dir()).expect("remove the data directory");
        node.start_agent(&bin).expect("agent starts");
    }
    if let Err(e) = c.wait_healthy(2, Duration::from_secs(180)).await {
        dump_logs(&c);
        panic!("{recloned} was not cloned again: {e}");
    }
    let answers = wait_for(
        "only the holder publishes a usable copy",
        Duration::from_secs(120),
        || async {
            let h = race_view(c.node(&holder)).await?;
            let r = race_view(c.node(&recloned)).await?;
            if h.1 == Some(true) && r.1 == Some(false) {
                Ok((h, r))
            } else {
                Err(format!(
                    "{holder} {h:?} ({}), {recloned} {r:?} ({})",
                    copy_row(c.node(&holder).pg_port).await,
                    copy_row(c.node(&recloned).pg_port).await
                ))
            }
        },
    )
    .await;
    if let Err(e) = answers {
        dump_logs(&c);
        panic!("{e}");
    }
    eprintln!(
        "{holder}: {}; {recloned}: {}",
        copy_row(c.node(&holder).pg_port).await,
        copy_row(c.node(&recloned).pg_port).await
    );

    // The leader stops: agent killed (the lock stays until ttl), PostgreSQL stopped fast, which
    // sends both replicas its last WAL.
    c.node_mut(&leader).kill_agent();
    let pm = c
        .node(&leader)
        .postmaster_pid()
        .expect("the leader's postmaster");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pm),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("fast shutdown");
    let stopped = wait_for(
        "the leader's PostgreSQL stops",
        Duration::from_secs(60),
        || async {
            match c.node(&leader).postmaster_pid() {
                None => Ok(()),
                Some(p) => Err(format!("postmaster {p} still runs")),
            }
        },
    )
    .await;
    // Both replicas at the same WAL position, as the race compares it (`/patroni`), before
    // either can take the lock (ttl after the last renewal).
    let equal = wait_for(
        "both replicas at the same WAL position",
        Duration::from_secs(5),
        || async {
            let (h, _) = race_view(c.node(&holder)).await?;
            let (r, _) = race_view(c.node(&recloned)).await?;
            if h == r {
                Ok(h)
            } else {
                Err(format!("{holder} at {h:X}, {recloned} at {r:X}"))
            }
        },
    )
    .await;
    if let Err(e) = stopped.and(equal.as_ref().map(|_| ()).map_err(Clone::clone)) {
        dump_logs(&c);
        panic!("{e}");
    }
    let new = new_leader_other_than(&c, &leader, Duration::from_secs(120)).await;
    let waited: Vec<String> = c
        .node(&recloned)
        .log()
        .lines()
        .filter(|l| l.contains(&format!("({holder} is healthier)")))
        .take(2)
        .map(str::to_string)
        .collect();
    eprintln!(
        "stopped {leader}; both replicas at {:X}; {new} leads; {recloned} waited: {waited:?}",
        equal.unwrap()
    );
    if new != holder {
        dump_logs(&c);
        panic!(
            "{new} was promoted, not {holder}, the only replica holding a usable copy of {SLOT}"
        );
    }
    // The slot survived: the new leader has it, at most at the position the consumer confirmed.
    let at = wait_for(
        "the slot on the new leader",
        Duration::from_secs(60),
        || confirmed_on(c.node(&holder).pg_port),
    )
    .await
    .expect("the new leader keeps the slot");
    assert!(
        at > 0 && at <= confirmed,
        "the copy is at {at:X}, the consumer had confirmed {confirmed:X}"
    );
}

/// How many rows the writer's table holds now (on the leader, through `client`).
async fn writer_rows_now(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {}", logical::TABLE), &[])
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}
