//! Failure-scenario benchmark: for each row of the operators' failure table that interrupts writes,
//! the time from the fault to the first write acknowledged through the proxy again, and the number of
//! acknowledged writes missing afterwards, over N runs (median and max). A client writes through the
//! proxy's read-write port every 10 ms during each run.
//!
//! The frozen-node scenario (agent, postmaster and backends SIGSTOPped, so connections hang instead
//! of being refused, then thawed once writes resumed) runs on a cluster configured as Patroni's
//! example YAML is (a pg_rewind role, no data checksums) and also reports the writes its thawed
//! former primary acknowledged to a direct client after the new leader's first write, and the time
//! from the thaw until it streams from the new leader again (crash recovery, pg_rewind, start).
//!
//! The two `netns:` scenarios run the cluster on hosts in network namespaces (harness::netns, root
//! only): the primary's host blackholed (every packet to and from it dropped, so connects and reads
//! hang as with a dead host behind a switch) against the same host killed (agent and PostgreSQL
//! kill -9, connections refused at once), in the same run, so their ratio is what silence costs.
//!
//! Run: `cargo build --release && cargo bench --bench scenarios` (`PRAETOR_BENCH_RUNS`, default 5;
//! `PRAETOR_BENCH_ONLY=<substring>[,<substring>...]` to run some scenarios; `PRAETOR_BENCH_TTL`,
//! default 5, with loop_wait 1 and retry_timeout 2; `PRAETOR_BENCH_PG=15,18` runs each scenario on
//! each listed PostgreSQL major in the same run, default 15: Debian's, 18 from `.pg/18`, see
//! scripts/setup). Timings are printed, never asserted; each run's line and the table end with the
//! load average (the machine may be shared, and a loaded one stretches every figure).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use praetor_harness::cluster::{ClusterOptions, LocalCluster, SUPERUSER, SUPERUSER_PASSWORD};
use praetor_harness::{wait_for, PgMajor};

fn binary() -> PathBuf {
    praetor_harness::praetor_beside_current_exe()
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` prints them.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn connect(host: &str, port: u16) -> Result<tokio_postgres::Client, String> {
    let dsn = format!("host={host} port={port} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=2");
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

#[derive(Clone, Copy)]
enum Fault {
    KillAgent,
    KillNode,
    CrashPostgres,
    StopAgent,
    Switchover,
    CutDcs,
    KillNodeSyncStrict,
    FreezeNode,
    NetSilence,
    NetKillNode,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillAgent => "primary agent kill -9 (postgres keeps running)",
            Fault::KillNode => "primary node dies (agent + postgres kill -9)",
            Fault::CrashPostgres => "primary postgres crash (restarted in place)",
            Fault::StopAgent => "primary agent SIGTERM (graceful handover)",
            Fault::Switchover => "planned switchover (ctl)",
            Fault::CutDcs => "primary cut off from the DCS",
            Fault::KillNodeSyncStrict => "primary node dies, synchronous_mode_strict",
            Fault::FreezeNode => "primary node frozen (SIGSTOP), thawed after failover",
            Fault::NetSilence => "netns: primary host blackholed (silent, not refused)",
            Fault::NetKillNode => "netns: primary host kill -9 (agent + postgres)",
        }
    }
}

struct Outcome {
    recover: Duration,
    lost: usize,
    errors: usize,
    /// Frozen node: writes its thawed PostgreSQL acknowledged to a direct client after the new
    /// leader's first write, and the time from the thaw until it streamed from the new leader.
    thawed: Option<(usize, Duration)>,
}

async fn run(bin: &PathBuf, fault: Fault, ttl: u32, pg: PgMajor) -> Result<Outcome, String> {
    let freeze = matches!(fault, Fault::FreezeNode);
    let mut opts = ClusterOptions {
        bin_dir: Some(pg.bin_dir()),
        scope: "scenarios".into(),
        ttl,
        loop_wait: 1,
        retry_timeout: 2,
        dcs_relay: matches!(fault, Fault::CutDcs),
        rewind_user: freeze,
        data_checksums: !freeze,
        netns: matches!(fault, Fault::NetSilence | Fault::NetKillNode),
        ..Default::default()
    };
    if matches!(fault, Fault::KillNodeSyncStrict) {
        opts.dcs_extra = vec![
            "synchronous_mode: true".into(),
            "synchronous_mode_strict: true".into(),
        ];
    }
    let mut c = LocalCluster::start(bin, opts).await?;
    let leader = c.wait_healthy(2, Duration::from_secs(120)).await?;
    let (rw_host, rw) = c
        .proxy
        .as_ref()
        .map(|p| (p.ip.clone(), p.rw_port))
        .ok_or("no proxy")?;
    let setup = wait_for("proxy", Duration::from_secs(30), || connect(&rw_host, rw)).await?;
    setup
        .batch_execute("CREATE TABLE w (id int PRIMARY KEY)")
        .await
        .map_err(|e| e.to_string())?;
    if matches!(fault, Fault::KillNodeSyncStrict) {
        wait_for("a synchronous standby", Duration::from_secs(60), || async {
            let v = c.cluster_json().await?;
            let any = v["members"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["role"] == "sync_standby"));
            if any {
                Ok(())
            } else {
                Err("none yet".into())
            }
        })
        .await?;
    }
    let acked = Arc::new(Mutex::new(Vec::<(i32, Instant)>::new()));
    let errors = Arc::new(Mutex::new(0usize));
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (acked, errors, stop) = (acked.clone(), errors.clone(), stop.clone());
        let rw_host = rw_host.clone();
        tokio::spawn(async move {
            let mut id = 0;
            let mut client = None;
            while !stop.is_cancelled() {
                if client.is_none() {
                    client = connect(&rw_host, rw).await.ok();
                    if client.is_none() {
                        *errors.lock().unwrap() += 1;
                    }
                }
                if let Some(cl) = &client {
                    id += 1;
                    // Bounded: through a proxy whose backend went silent, an INSERT may otherwise
                    // wait for the kernel's TCP timeout.
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                    let insert = cl.execute("INSERT INTO w VALUES ($1)", &params);
                    match tokio::time::timeout(Duration::from_secs(3), insert).await {
                        Ok(Ok(_)) => acked.lock().unwrap().push((id, Instant::now())),
                        Ok(Err(_)) | Err(_) => {
                            *errors.lock().unwrap() += 1;
                            client = None;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    wait_for("writes", Duration::from_secs(10), || async {
        if acked.lock().unwrap().len() > 30 {
            Ok(())
        } else {
            Err("few".into())
        }
    })
    .await?;
    // A client writing straight to the primary, as applications that bypass the proxy do: what its
    // PostgreSQL acknowledges once thawed is lost.
    let direct: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let direct_writer = freeze.then(|| {
        let (acks, stop) = (direct.clone(), stop.clone());
        let (host, port) = (c.node(&leader).ip.clone(), c.node(&leader).pg_port);
        tokio::spawn(async move {
            let mut client = None;
            while !stop.is_cancelled() {
                if client.is_none() {
                    client = connect(&host, port).await.ok();
                }
                if let Some(cl) = &client {
                    match cl
                        .execute("INSERT INTO w VALUES (-1) ON CONFLICT DO NOTHING", &[])
                        .await
                    {
                        Ok(_) => acks.lock().unwrap().push(Instant::now()),
                        Err(_) => client = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    });
    let mut frozen_postmaster = None;
    let started = Instant::now();
    match fault {
        Fault::FreezeNode => frozen_postmaster = Some(c.node(&leader).freeze()),
        Fault::KillAgent => c.node_mut(&leader).kill_agent(),
        Fault::NetSilence => c.net().silence(&leader)?,
        Fault::KillNode | Fault::KillNodeSyncStrict | Fault::NetKillNode => {
            let n = c.node_mut(&leader);
            n.kill_agent();
            n.kill_postmaster();
        }
        Fault::CrashPostgres => c.node(&leader).kill_postmaster(),
        Fault::StopAgent => c.node(&leader).signal_agent(Signal::SIGTERM),
        Fault::Switchover => {
            let out = std::process::Command::new(bin)
                .args(["ctl", "-c"])
                .arg(&c.nodes[0].config)
                .args(["switchover", "--force"])
                .output()
                .map_err(|e| e.to_string())?;
            if !out.status.success() {
                return Err(String::from_utf8_lossy(&out.stderr).into_owned());
            }
        }
        Fault::CutDcs => c.relay(&leader).cut(),
    }
    // Recovered: for a fault that moves the leader, a write acknowledged after the new leader is
    // known; for a crash restarted in place, a write acknowledged after the first failed one.
    let resumed_after = if matches!(fault, Fault::CrashPostgres) {
        wait_for("a failed write", Duration::from_secs(30), || async {
            if *errors.lock().unwrap() > 0 {
                Ok(Instant::now())
            } else {
                Err("none".into())
            }
        })
        .await?
    } else {
        wait_for("a new leader", Duration::from_secs(90), || async {
            match c.leader().await {
                Some(l) if l != leader => Ok(Instant::now()),
                other => Err(format!("{other:?}")),
            }
        })
        .await?
    };
    wait_for("writes to resume", Duration::from_secs(90), || async {
        let last = acked.lock().unwrap().last().map(|(_, t)| *t);
        match last {
            Some(t) if t > resumed_after => Ok(()),
            _ => Err("not yet".into()),
        }
    })
    .await?;
    let mut thawed = None;
    if let Some(pm) = frozen_postmaster {
        let first_new = acked
            .lock()
            .unwrap()
            .iter()
            .find(|(_, t)| *t > resumed_after)
            .map(|(_, t)| *t)
            .ok_or("no write after the failover")?;
        let thaw = Instant::now();
        c.node(&leader).thaw(pm);
        c.wait_healthy(2, Duration::from_secs(120)).await?;
        let rejoin = thaw.elapsed();
        let late = direct
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t > first_new)
            .count();
        thawed = Some((late, rejoin));
    }
    // Let the writer run on a little so the longest gap after the fault is complete.
    let settle = Instant::now();
    wait_for("settle", Duration::from_secs(5), || async {
        if settle.elapsed() > Duration::from_secs(2) {
            Ok(())
        } else {
            Err("wait".into())
        }
    })
    .await?;
    stop.cancel();
    writer.await.map_err(|e| e.to_string())?;
    if let Some(h) = direct_writer {
        h.await.map_err(|e| e.to_string())?;
    }
    let acks = acked.lock().unwrap().clone();
    // The outage: the longest gap between acknowledgements that spans or follows the fault.
    let recover = acks
        .windows(2)
        .filter(|w| w[1].1 > started)
        .map(|w| w[1].1.duration_since(w[0].1.max(started)))
        .max()
        .unwrap_or_default();
    let new_leader = wait_for("a leader", Duration::from_secs(60), || async {
        c.leader().await.ok_or_else(|| "none".to_string())
    })
    .await?;
    let nc = connect(&c.node(&new_leader).ip, c.node(&new_leader).pg_port).await?;
    let present: std::collections::HashSet<i32> = nc
        .query("SELECT id FROM w", &[])
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost = acks.iter().filter(|(id, _)| !present.contains(id)).count();
    let errors = *errors.lock().unwrap();
    c.shutdown().await;
    Ok(Outcome {
        recover,
        lost,
        errors,
        thawed,
    })
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("PRAETOR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let only = std::env::var("PRAETOR_BENCH_ONLY").unwrap_or_default();
    let only: Vec<&str> = only.split(',').filter(|s| !s.is_empty()).collect();
    let ttl: u32 = std::env::var("PRAETOR_BENCH_TTL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let majors: Vec<PgMajor> = std::env::var("PRAETOR_BENCH_PG")
        .unwrap_or_else(|_| "15".into())
        .split(',')
        .map(|m| match m.trim() {
            "15" => PgMajor::Pg15,
            "18" => PgMajor::Pg18,
            other => panic!("PRAETOR_BENCH_PG: {other:?} is not 15 or 18"),
        })
        .collect();
    let bin = binary();
    let faults = [
        Fault::KillAgent,
        Fault::KillNode,
        Fault::CrashPostgres,
        Fault::StopAgent,
        Fault::Switchover,
        Fault::CutDcs,
        Fault::KillNodeSyncStrict,
        Fault::FreezeNode,
        Fault::NetSilence,
        Fault::NetKillNode,
    ];
    let mut table = vec![];
    for (f, pg) in faults
        .into_iter()
        .flat_map(|f| majors.iter().map(move |pg| (f, *pg)))
    {
        if !only.is_empty() && !only.iter().any(|o| f.name().contains(o)) {
            continue;
        }
        let name = format!("PG {}: {}", pg.number(), f.name());
        let mut outcomes = vec![];
        for i in 0..runs {
            match run(&bin, f, ttl, pg).await {
                Ok(o) => {
                    let thawed = o.thawed.map_or(String::new(), |(late, rejoin)| {
                        format!(
                            "; thawed: {late} direct writes acknowledged after the new leader's first, streaming again {:.2} s after the thaw",
                            rejoin.as_secs_f64()
                        )
                    });
                    println!(
                        "{name} run {}: writes resumed after {:.2} s, {} acknowledged writes lost, {} client errors{thawed}; load {}",
                        i + 1,
                        o.recover.as_secs_f64(),
                        o.lost,
                        o.errors,
                        load()
                    );
                    outcomes.push(o);
                }
                Err(e) => println!("{name} run {}: failed: {e}", i + 1),
            }
        }
        if outcomes.is_empty() {
            continue;
        }
        let mut t: Vec<Duration> = outcomes.iter().map(|o| o.recover).collect();
        t.sort();
        let lost_max = outcomes.iter().map(|o| o.lost).max().unwrap_or(0);
        let mut errs: Vec<usize> = outcomes.iter().map(|o| o.errors).collect();
        errs.sort();
        let mut late: Vec<usize> = outcomes
            .iter()
            .filter_map(|o| o.thawed.map(|t| t.0))
            .collect();
        late.sort();
        let mut rejoin: Vec<Duration> = outcomes
            .iter()
            .filter_map(|o| o.thawed.map(|t| t.1))
            .collect();
        rejoin.sort();
        let thawed = if late.is_empty() {
            "".to_string()
        } else {
            format!(
                "{} (max {}) | {:.2} s",
                late[late.len() / 2],
                late.last().unwrap(),
                rejoin[rejoin.len() / 2].as_secs_f64()
            )
        };
        table.push((
            name,
            t[t.len() / 2],
            *t.last().unwrap(),
            lost_max,
            errs[errs.len() / 2],
            outcomes.len(),
            thawed,
        ));
    }
    println!();
    println!(
        "ttl {ttl} s, loop_wait 1 s, retry_timeout 2 s; client writes through the proxy every 10 ms; load {}",
        load()
    );
    println!("| scenario | write outage median | max | acknowledged writes lost (max) | client errors (median) | runs | thawed: late direct acks, median (max) | thawed: rejoin, median |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, med, max, lost, errs, n, thawed) in table {
        let thawed = if thawed.is_empty() {
            " | ".to_string()
        } else {
            thawed
        };
        println!(
            "| {name} | {:.2} s | {:.2} s | {lost} | {errs} | {n} | {thawed} |",
            med.as_secs_f64(),
            max.as_secs_f64()
        );
    }
}
