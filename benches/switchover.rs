//! Planned switchovers under load, per proxy port (issue 17): pgbench (tpcb-like, 8 clients, no
//! retries) through the read-write port and through the auto port at once, every client logging in
//! with a SCRAM password (the proxy reads the user's secret from `auth_file`), while `praetor ctl
//! switchover` moves the leader back and forth N times. Per port it prints the transactions
//! pgbench counted as failed, the clients it aborted (an error that ended a connection), and the
//! write gaps: the longest time between two consecutive transaction completions (every tpcb-like
//! transaction writes) around each switchover, from pgbench's per-transaction log.
//!
//! The cluster is two members with `loop_wait` 1, `retry_timeout` 10 and `ttl` 30 (the leader's
//! agent may then wait its full 5 s for transactions in progress), the proxy with `drain_timeout`
//! at its default.
//!
//! Run: `cargo bench --bench switchover` (`PRAETOR_BENCH_SWITCHOVERS`, default 5;
//! `PRAETOR_BENCH_PG=15|18`, default 15). Timings are printed, never asserted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use praetor_harness::cluster::{ClusterOptions, LocalCluster, SUPERUSER, SUPERUSER_PASSWORD};
use praetor_harness::proxy::FullProxy;
use praetor_harness::{wait_for, PgMajor};

/// pgbench clients per port.
const CLIENTS: &str = "8";

fn now_epoch() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

async fn connect(port: u16) -> Result<tokio_postgres::Client, String> {
    let dsn = format!("host=127.0.0.1 port={port} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=5");
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

/// Runs pgbench on `port` with `args`; returns its exit status and output.
async fn pgbench(port: u16, args: Vec<String>) -> (std::process::ExitStatus, String) {
    let out = tokio::process::Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER])
        .args(&args)
        .arg("postgres")
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// The completion times (epoch seconds) of every transaction in pgbench's logs `<prefix>.*`
/// (`client transaction latency_us script epoch_s epoch_us ...`; failed ones are not counted).
fn completions(dir: &Path, prefix: &str) -> Vec<f64> {
    let mut times = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return times;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{prefix}.")) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[2] == "failed" || f[2] == "skipped" {
                continue;
            }
            if let (Ok(s), Ok(us)) = (f[4].parse::<f64>(), f[5].parse::<f64>()) {
                times.push(s + us / 1e6);
            }
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    times
}

/// The longest time between consecutive completions with the later one in `[from, to]` (s).
fn longest_gap(times: &[f64], from: f64, to: f64) -> f64 {
    times
        .windows(2)
        .filter(|w| w[1] >= from && w[1] <= to)
        .map(|w| w[1] - w[0])
        .fold(0.0, f64::max)
}

fn count_after(output: &str, prefix: &str) -> Option<u64> {
    output
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// One switchover from the current leader to the other member: asked until the leader accepts it
/// (a candidate whose lag the DCS still shows is refused), then waited for until the former leader
/// streams from the new one again. Returns when the accepted `ctl switchover` started (epoch s)
/// and how long it took (it returns once the new leader is in place).
async fn switchover(c: &LocalCluster, bin: &Path) -> Result<(f64, Duration), String> {
    let leader = c
        .wait_healthy(1, Duration::from_secs(120))
        .await
        .map_err(|e| format!("before the switchover: {e}"))?;
    let candidate = c
        .nodes
        .iter()
        .find(|n| n.name != leader)
        .ok_or("no candidate")?
        .name
        .clone();
    let asked = wait_for(
        "a switchover the leader accepts",
        Duration::from_secs(60),
        || async {
            let at = now_epoch();
            let started = Instant::now();
            let out = tokio::process::Command::new(bin)
                .args(["ctl", "-c"])
                .arg(&c.nodes[0].config)
                .args([
                    "switchover",
                    "--leader",
                    &leader,
                    "--candidate",
                    &candidate,
                    "--force",
                ])
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok((at, started.elapsed()))
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        },
    )
    .await?;
    wait_for("the new leader", Duration::from_secs(60), || async {
        match c.leader().await {
            Some(l) if l == candidate => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await?;
    c.wait_healthy(1, Duration::from_secs(120))
        .await
        .map_err(|e| format!("after the switchover: {e}"))?;
    Ok(asked)
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("PRAETOR_BENCH_SWITCHOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let pg = match std::env::var("PRAETOR_BENCH_PG").as_deref() {
        Ok("18") => PgMajor::Pg18,
        _ => PgMajor::Pg15,
    };
    let bin: PathBuf = praetor_harness::praetor_beside_current_exe();
    let c = LocalCluster::start(
        &bin,
        ClusterOptions {
            bin_dir: Some(pg.bin_dir()),
            nodes: 2,
            proxy: false,
            scope: "switchbench".into(),
            ttl: 30,
            loop_wait: 1,
            retry_timeout: 10,
            ..ClusterOptions::default()
        },
    )
    .await
    .expect("cluster starts");
    let leader = c
        .wait_healthy(1, Duration::from_secs(120))
        .await
        .expect("healthy cluster");
    let direct = wait_for("the leader", Duration::from_secs(30), || {
        connect(c.node(&leader).pg_port)
    })
    .await
    .expect("connect to the leader");
    let secret: String = direct
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&SUPERUSER],
        )
        .await
        .expect("the superuser's secret")
        .get(0);
    let dir = c.work.path().to_path_buf();
    let userlist = dir.join("userlist.txt");
    std::fs::write(&userlist, format!("\"{SUPERUSER}\" \"{secret}\"\n")).unwrap();
    let proxy = FullProxy::start(
        &c,
        "bench",
        &format!("    auth_file: {}\n", userlist.display()),
    )
    .await
    .expect("proxy starts");
    wait_for("the proxy", Duration::from_secs(30), || {
        connect(proxy.rw_port)
    })
    .await
    .expect("the proxy serves");
    let (status, out) = pgbench(
        proxy.rw_port,
        ["-i", "-s", "1", "-q"].map(String::from).to_vec(),
    )
    .await;
    assert!(status.success(), "pgbench -i: {out}");

    // Long enough for every switchover (each takes some seconds, then the former leader rejoins):
    // pgbench's -T is fixed up front. The gaps are read from the logs around each switchover.
    let duration = 20 * n as u64 + 20;
    let logs = dir.join("pgbench-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let run = |port: u16, prefix: &str| {
        let args: Vec<String> = vec![
            "-n".into(),
            "-c".into(),
            CLIENTS.into(),
            "-j".into(),
            "2".into(),
            "-T".into(),
            duration.to_string(),
            "-l".into(),
            format!("--log-prefix={}", logs.join(prefix).display()),
        ];
        tokio::spawn(pgbench(port, args))
    };
    let rw = run(proxy.rw_port, "rw");
    let auto = run(proxy.auto_port, "auto");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut switchovers = Vec::new();
    for i in 0..n {
        match switchover(&c, &bin).await {
            Ok(s) => switchovers.push(s),
            Err(e) => {
                eprintln!("switchover {}: {e}", i + 1);
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    eprintln!(
        "{} switchovers done; pgbench runs until its -T {duration} s ends",
        switchovers.len()
    );
    let (rw_status, rw_out) = rw.await.unwrap();
    let (auto_status, auto_out) = auto.await.unwrap();

    println!(
        "\n{} switchovers under pgbench -c {CLIENTS} -j 2 tpcb-like (no retries) on each port at once, PostgreSQL {}, SCRAM logins (auth_file)",
        switchovers.len(),
        pg.number()
    );
    println!("| port | transactions | failed | aborted clients | pgbench exit | longest gap per switchover (s) | longest gap |");
    println!("|---|---|---|---|---|---|---|");
    for (port, prefix, status, out) in [
        ("read-write", "rw", rw_status, &rw_out),
        ("auto", "auto", auto_status, &auto_out),
    ] {
        let times = completions(&logs, prefix);
        // Each switchover's window: from a second before it was asked until a second before the
        // next one was (30 s after the last).
        let gaps: Vec<f64> = switchovers
            .iter()
            .enumerate()
            .map(|(i, (asked, _))| {
                let until = switchovers.get(i + 1).map_or(asked + 30.0, |n| n.0 - 1.0);
                longest_gap(&times, asked - 1.0, until)
            })
            .collect();
        let longest = gaps.iter().copied().fold(0.0, f64::max);
        let aborted = out.lines().filter(|l| l.contains("aborted")).count();
        println!(
            "| {port} | {} | {} | {aborted} | {} | {} | {longest:.2} |",
            count_after(out, "number of transactions actually processed: ")
                .map_or("?".into(), |n| n.to_string()),
            count_after(out, "number of failed transactions: ")
                .map_or("?".into(), |n| n.to_string()),
            status.code().unwrap_or(-1),
            gaps.iter()
                .map(|g| format!("{g:.2}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        if !status.success() || count_after(out, "number of failed transactions: ") != Some(0) {
            eprintln!("===== pgbench on the {port} port =====\n{out}");
        }
    }
    let took: Vec<String> = switchovers
        .iter()
        .map(|(_, d)| format!("{:.1}", d.as_secs_f64()))
        .collect();
    println!(
        "\n`praetor ctl switchover` (the accepted call) took (s): {}",
        took.join(", ")
    );
}
