//! HA benchmark on real clusters (a DCS + 3 agents + proxy on 127.0.0.1), printed as a table.
//!
//! The DCS is one etcd, or one ZooKeeper with `PRAETOR_BENCH_DCS=zookeeper` (same ttl and loop_wait,
//! so the two can be compared run for run).
//!
//! For each of N runs (default 5, `PRAETOR_BENCH_RUNS`):
//! - switchover gap: a client writes through the proxy's read-write port every 10 ms (one connection,
//!   reconnecting after an error) while `praetor ctl switchover --force` runs; the longest time between
//!   two acknowledged writes, and the number of failed statements/connects;
//! - failover time: the leader's agent and postmaster are killed with SIGKILL together; the time from
//!   the kill to the first acknowledged write through the proxy.
//!
//! Then, once: pgbench select-only TPS through the proxy's read-write port and directly to the leader,
//! same scale, clients and duration, and their ratio.
//!
//! Run: `cargo bench --bench ha` (after scripts/setup). Timings are printed, never asserted.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use praetor_harness::cluster::{
    ClusterOptions, DcsKind, LocalCluster, SUPERUSER, SUPERUSER_PASSWORD,
};
use praetor_harness::wait_for;

fn binary() -> PathBuf {
    praetor_harness::praetor_beside_current_exe()
}

fn dsn(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=2")
}

async fn connect(port: u16) -> Result<tokio_postgres::Client, String> {
    let (c, conn) = tokio_postgres::connect(&dsn(port), tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

struct Writes {
    acked: Vec<Instant>,
    errors: usize,
}

/// Writes every 10 ms through `port` until `stop`; records acknowledgement times and errors.
fn spawn_writer(
    port: u16,
    stop: tokio_util::sync::CancellationToken,
) -> (Arc<Mutex<Writes>>, tokio::task::JoinHandle<()>) {
    let w = Arc::new(Mutex::new(Writes {
        acked: vec![],
        errors: 0,
    }));
    let w2 = w.clone();
    let h = tokio::spawn(async move {
        let mut client: Option<tokio_postgres::Client> = None;
        while !stop.is_cancelled() {
            if client.is_none() {
                match connect(port).await {
                    Ok(c) => client = Some(c),
                    Err(_) => w2.lock().unwrap().errors += 1,
                }
            }
            if let Some(c) = &client {
                match c
                    .execute("INSERT INTO bench_writes VALUES (now())", &[])
                    .await
                {
                    Ok(_) => w2.lock().unwrap().acked.push(Instant::now()),
                    Err(_) => {
                        w2.lock().unwrap().errors += 1;
                        client = None;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (w, h)
}

fn longest_gap(times: &[Instant]) -> Duration {
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

async fn one_run(
    bin: &PathBuf,
    opts: &ClusterOptions,
) -> Result<(Duration, usize, Duration), String> {
    let mut c = LocalCluster::start(bin, opts.clone()).await?;
    c.wait_healthy(2, Duration::from_secs(120)).await?;
    let rw = c.proxy.as_ref().unwrap().rw_port;
    let setup = wait_for("proxy", Duration::from_secs(30), || connect(rw)).await?;
    setup
        .batch_execute("CREATE TABLE IF NOT EXISTS bench_writes (at timestamptz)")
        .await
        .map_err(|e| e.to_string())?;

    // Switchover gap.
    let stop = tokio_util::sync::CancellationToken::new();
    let (writes, h) = spawn_writer(rw, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = c.leader().await.ok_or("no leader")?;
    let out = Command::new(bin)
        .args(["ctl", "-c"])
        .arg(&c.nodes[0].config)
        .args(["switchover", "--force", "--leader", &leader])
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "switchover failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    h.await.map_err(|e| e.to_string())?;
    let (gap, errors) = {
        let w = writes.lock().unwrap();
        (longest_gap(&w.acked), w.errors)
    };
    c.wait_healthy(2, Duration::from_secs(60)).await?;

    // Failover after SIGKILL of the leader's agent and postmaster.
    let leader = c.leader().await.ok_or("no leader")?;
    let node = c.node_mut(&leader);
    let started = Instant::now();
    node.kill_agent();
    node.kill_postmaster();
    wait_for(
        "a write after the kill",
        Duration::from_secs(60),
        || async {
            let cl = connect(rw).await?;
            cl.execute("INSERT INTO bench_writes VALUES (now())", &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        },
    )
    .await?;
    let failover = started.elapsed();
    c.shutdown().await;
    Ok((gap, errors, failover))
}

fn pgbench(port: u16, args: &[&str]) -> Result<f64, String> {
    let out = Command::new("pgbench")
        .args(args)
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            SUPERUSER,
            "postgres",
        ])
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("pgbench: {}", String::from_utf8_lossy(&out.stderr)));
    }
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| "no tps in pgbench output".to_string())
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], *v.last().unwrap())
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("PRAETOR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let bin = binary();
    let dcs = match std::env::var("PRAETOR_BENCH_DCS").as_deref() {
        Err(_) | Ok("") | Ok("etcd") => DcsKind::Etcd,
        Ok("zookeeper") | Ok("zk") => DcsKind::ZooKeeper,
        Ok(other) => panic!("PRAETOR_BENCH_DCS={other}: use etcd (default) or zookeeper"),
    };
    let opts = ClusterOptions {
        scope: "bench".into(),
        ttl: 5,
        loop_wait: 1,
        retry_timeout: 2,
        dcs,
        ..Default::default()
    };
    let mut gaps = vec![];
    let mut failovers = vec![];
    let mut errors = vec![];
    for i in 0..runs {
        match one_run(&bin, &opts).await {
            Ok((gap, errs, fo)) => {
                println!(
                    "run {}: switchover gap {gap:?} ({errs} errors), kill -9 failover {fo:?}",
                    i + 1
                );
                gaps.push(gap);
                errors.push(errs);
                failovers.push(fo);
            }
            Err(e) => println!("run {}: failed: {e}", i + 1),
        }
    }
    if !gaps.is_empty() {
        let (gm, gx) = stats(gaps);
        let (fm, fx) = stats(failovers);
        println!();
        println!(
            "DCS {}, ttl {} s, loop_wait {} s, {} runs",
            opts.dcs.family(),
            opts.ttl,
            opts.loop_wait,
            errors.len()
        );
        println!("| measure                                   | median   | max      |");
        println!("|-------------------------------------------|----------|----------|");
        println!(
            "| kill -9 leader: first write via proxy     | {:>6.2} s | {:>6.2} s |",
            fm.as_secs_f64(),
            fx.as_secs_f64()
        );
        println!(
            "| switchover: longest write gap (10 ms loop)| {:>6.2} s | {:>6.2} s |",
            gm.as_secs_f64(),
            gx.as_secs_f64()
        );
        println!(
            "| switchover: client errors                 | {:>8} | {:>8} |",
            {
                let mut e = errors.clone();
                e.sort();
                e[e.len() / 2]
            },
            errors.iter().max().unwrap()
        );
    }

    // Proxy overhead through a real cluster.
    let c = LocalCluster::start(&bin, opts.clone())
        .await
        .expect("cluster");
    let leader = c
        .wait_healthy(2, Duration::from_secs(120))
        .await
        .expect("healthy");
    let direct = c.node(&leader).pg_port;
    let rw = c.proxy.as_ref().unwrap().rw_port;
    pgbench(direct, &["-i", "-s", "10", "-q"])
        .map(|_| ())
        .or_else(|e| if e.contains("no tps") { Ok(()) } else { Err(e) })
        .expect("pgbench -i");
    let secs = std::env::var("PRAETOR_BENCH_SECS").unwrap_or_else(|_| "15".into());
    let args = ["-S", "-n", "-c", "8", "-j", "2", "-T", secs.as_str()];
    let tps_direct = pgbench(direct, &args).expect("pgbench direct");
    let tps_proxy = pgbench(rw, &args).expect("pgbench via proxy");
    println!();
    println!("pgbench -S -c 8 -j 2 -T {secs} (scale 10), same run:");
    println!("| path                        | TPS      | ratio |");
    println!("|-----------------------------|----------|-------|");
    println!("| direct to the leader        | {tps_direct:>8.0} | 1.00  |");
    println!(
        "| proxy read-write port       | {tps_proxy:>8.0} | {:.2}  |",
        tps_proxy / tps_direct
    );
}
