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
//! (none lost), and no row whose change lies before the position the consumer restarted from was
//! delivered again; repeats after that position are allowed and counted.
//!
//! Each row stores `pg_current_wal_insert_lsn()` taken inside its own transaction: below its commit
//! record, and (one writer, one row per transaction) at or after the previous row's commit record.
//! So a row with `lsn < startpos` committed before the consumer's confirmed position.
//!
//! Run: `cargo test -p praetor --test logical_slots -- --test-threads=1 --nocapture` (figures on
//! stderr).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use praetor_harness::PgMajor;

const SLOT: &str = "queue";

/// "X/Y" as bytes.
fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().trim_matches('\'').split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

/// The multi-host libpq string that reaches whichever member accepts writes.
fn leader_dsn(c: &LocalCluster) -> String {
    let hosts: Vec<&str> = c.nodes.iter().map(|_| "127.0.0.1").collect();
    let ports: Vec<String> = c.nodes.iter().map(|n| n.pg_port.to_string()).collect();
    format!(
        "host={} port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres \
         target_session_attrs=read-write connect_timeout=3",
        hosts.join(","),
        ports.join(",")
    )
}

/// Inserts `id, pg_current_wal_insert_lsn()` rows, one per transaction, reconnecting to the leader
/// after each failure; records the ids acknowledged.
struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i32>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn start(dsn: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let task = tokio::spawn(async move {
            let mut id = 0i32;
            while !s.load(Ordering::SeqCst) {
                let client = match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
                    Ok((client, conn)) => {
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        client
                    }
                    Err(_) => {
                        // Retry pace while no member accepts writes.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                while !s.load(Ordering::SeqCst) {
                    id += 1;
                    match client
                        .execute(
                            "INSERT INTO q (id, lsn) VALUES ($1, pg_current_wal_insert_lsn())",
                            &[&id],
                        )
                        .await
                    {
                        Ok(_) => a.lock().unwrap().push(id),
                        Err(_) => break,
                    }
                    // About 100 transactions a second: enough to keep changes in flight at the kill.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        Writer { stop, acked, task }
    }

    async fn stop(self) -> Vec<i32> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let v = self.acked.lock().unwrap().clone();
        v
    }
}

/// One `pg_recvlogical` run: where it started and its output.
#[derive(Debug, Clone)]
struct Run {
    startpos: Option<u64>,
    output: PathBuf,
}

/// Runs `pg_recvlogical` on the slot through the leader, again after every disconnection, from the
/// last position it confirmed.
struct Consumer {
    stop: Arc<AtomicBool>,
    runs: Arc<Mutex<Vec<Run>>>,
    task: tokio::task::JoinHandle<()>,
}

/// The last "flush to X" that `pg_recvlogical -v` logged: the position it confirmed.
fn last_flush(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .filter_map(|l| l.split("flush to ").nth(1))
        .filter_map(|rest| parse_lsn(rest.split_whitespace().next()?))
        .max()
}

impl Consumer {
    fn start(bin: PathBuf, dsn: String, dir: PathBuf) -> Consumer {
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), runs.clone());
        let task = tokio::spawn(async move {
            let mut startpos: Option<u64> = None;
            let mut k = 0;
            while !s.load(Ordering::SeqCst) {
                k += 1;
                let output = dir.join(format!("out-{k}.txt"));
                let errpath = dir.join(format!("err-{k}.txt"));
                let mut cmd = tokio::process::Command::new(bin.join("pg_recvlogical"));
                cmd.args(["-d", &dsn, "--slot", SLOT, "--start", "--no-loop", "-v"])
                    .args(["--fsync-interval", "1", "--status-interval", "1", "-f"])
                    .arg(&output)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::fs::File::create(&errpath).expect("stderr file"));
                if let Some(p) = startpos {
                    cmd.arg("--startpos")
                        .arg(format!("{:X}/{:X}", p >> 32, p & 0xffff_ffff));
                }
                r.lock().unwrap().push(Run {
                    startpos,
                    output: output.clone(),
                });
                let mut child = cmd.spawn().expect("pg_recvlogical starts");
                loop {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    if s.load(Ordering::SeqCst) {
                        // SIGINT: pg_recvlogical flushes, confirms and exits.
                        if let Some(pid) = child.id() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGINT,
                            );
                        }
                        let _ = child.wait().await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let err = std::fs::read_to_string(&errpath).unwrap_or_default();
                if let Some(p) = last_flush(&err) {
                    startpos = Some(startpos.map_or(p, |s| s.max(p)));
                }
                // Retry pace while the slot is unreachable (no leader yet).
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Consumer { stop, runs, task }
    }

    fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap().clone()
    }

    async fn stop(self) -> Vec<Run> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let v = self.runs.lock().unwrap().clone();
        v
    }
}

/// The rows a run delivered, in order: (id, the row's lsn column).
fn delivered(path: &Path) -> Vec<(i32, u64)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("table public.q: INSERT: "))
        .filter_map(|rest| {
            let mut id = None;
            let mut lsn = None;
            for f in rest.split(' ') {
                if let Some(v) = f.strip_prefix("id[integer]:") {
                    id = v.parse().ok();
                } else if let Some(v) = f.strip_prefix("lsn[pg_lsn]:") {
                    lsn = parse_lsn(v);
                }
            }
            Some((id?, lsn?))
        })
        .collect()
}

/// Delivered / lost / duplicated figures of a whole run.
#[derive(Debug, Default)]
struct Tally {
    committed: usize,
    acked_not_committed: usize,
    delivered: usize,
    lost: Vec<i32>,
    /// Delivered rows that are not in the final table (a change that did not survive the failover).
    phantom: usize,
    /// Redelivered rows whose change lies before the position the consumer restarted from.
    dup_before_confirmed: Vec<i32>,
    /// Redelivered rows after that position (allowed).
    dup_after_confirmed: usize,
}

fn tally(runs: &[Run], committed: &BTreeSet<i32>, acked: &[i32]) -> Tally {
    let mut t = Tally {
        committed: committed.len(),
        acked_not_committed: acked.iter().filter(|i| !committed.contains(i)).count(),
        ..Default::default()
    };
    let mut seen: BTreeMap<i32, usize> = BTreeMap::new();
    for run in runs {
        let start = run.startpos.unwrap_or(0);
        for (id, lsn) in delivered(&run.output) {
            if seen.contains_key(&id) {
                if lsn < start {
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
        .iter()
        .filter(|i| !seen.contains_key(i))
        .copied()
        .collect();
    t.phantom = seen.keys().filter(|i| !committed.contains(i)).count();
    t
}

fn delivered_ids(runs: &[Run]) -> BTreeSet<i32> {
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

async fn survives_leader_kill(pg: PgMajor) {
    let failover_slots = pg.number() >= 17;
    let failovers: usize = std::env::var("PRAETOR_LOGICAL_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut c = healthy_cluster(ClusterOptions {
        scope: "logical".into(),
        bin_dir: Some(pg.bin_dir()),
        proxy: false,
        dcs_extra: vec![
            "slots:".into(),
            format!("  {SLOT}:"),
            "    type: logical".into(),
            "    database: postgres".into(),
            "    plugin: test_decoding".into(),
        ],
        dcs_parameters: vec!["wal_level: logical".into()],
        ..Default::default()
    })
    .await;
    let dsn = leader_dsn(&c);
    let leader = c.leader().await.expect("leader");
    let client = connect_retry(c.node(&leader).pg_port, Duration::from_secs(30)).await;
    client
        .batch_execute("CREATE TABLE q (id int PRIMARY KEY, lsn pg_lsn NOT NULL)")
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
    let writer = Writer::start(dsn.clone());
    let consumer = Consumer::start(pg.bin_dir(), dsn.clone(), dir);

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
    let committed: BTreeSet<i32> = client
        .query("SELECT id FROM q", &[])
        .await
        .expect("read q")
        .iter()
        .map(|r| r.get(0))
        .collect();
    // Every committed row reaches the consumer (it is still streaming from the leader).
    let all = wait_for(
        "every committed row delivered",
        Duration::from_secs(120),
        || async {
            let got = delivered_ids(&consumer.runs());
            let missing = committed.difference(&got).count();
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

#[test]
fn parses_lsns_and_pg_recvlogical_lines() {
    assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
    assert_eq!(parse_lsn("'1/A'"), Some((1 << 32) | 10));
    let err = "pg_recvlogical: confirming write up to 0/1, flush to 0/1 (slot queue)\n\
               pg_recvlogical: confirming write up to 0/3000060, flush to 0/3000040 (slot queue)\n";
    assert_eq!(last_flush(err), Some(0x3000040));
}
