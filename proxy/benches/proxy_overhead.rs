//! Proxy overhead: pgbench select-only TPS directly against PostgreSQL vs through the proxy's
//! read-write port, in the same run on the same server.
//!
//! `cargo bench -p praetor-proxy --bench proxy_overhead`. Starts one PostgreSQL (harness), runs
//! `pgbench -i -s 10`, serves the proxy with a static topology in this process, then for each mode
//! (persistent connections, and `-C`: a new connection per transaction) runs
//! `pgbench -S -c 8 -j 2 -T 15` directly and through the proxy, back to back, in rounds that alternate
//! which goes first, and prints the median TPS of each and the median of the per-round ratios (pairs
//! run seconds apart see the same machine load, so their ratio is steadier than either figure).
//! Nothing is asserted: speed is measured, not tested.
//!
//! Environment: `PRAETOR_BENCH_SECS` (default 15), `PRAETOR_BENCH_CLIENTS` (8),
//! `PRAETOR_BENCH_THREADS` (2), `PRAETOR_BENCH_ROUNDS` (3), `PRAETOR_BENCH_WORKERS` (the proxy
//! runtime's worker threads; default: one per CPU).

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use praetor_config::Address;
use praetor_harness::postgres::Postgres;
use praetor_harness::WorkDir;
use praetor_proxy::{Backend, Proxy, ProxySettings, Topology};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs pgbench with `args` against `port`; returns TPS (excluding initial connection time) or the
/// whole output when it cannot be found.
fn pgbench(port: u16, args: &[String]) -> Result<f64, String> {
    let out = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("pgbench failed ({}):\n{text}", out.status));
    }
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no tps line in:\n{text}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn main() {
    let secs = env_or("PRAETOR_BENCH_SECS", 15);
    let clients = env_or("PRAETOR_BENCH_CLIENTS", 8);
    let threads = env_or("PRAETOR_BENCH_THREADS", 2);
    let rounds = env_or("PRAETOR_BENCH_ROUNDS", 3).max(1);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(w) = std::env::var("PRAETOR_BENCH_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        builder.worker_threads(w);
    }
    let rt = builder.build().expect("a tokio runtime");

    rt.block_on(async move {
        let dir = WorkDir::new("bench-proxy").expect("temp dir");
        let pg = Postgres::start_with(&dir, "pg", &[("max_connections", "200")])
            .await
            .expect("start PostgreSQL");
        let port = pg.port();
        eprintln!("pgbench -i -s 10 on port {port} ...");
        let init = tokio::task::spawn_blocking(move || {
            Command::new("pgbench")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .args(["-i", "-s", "10", "-q", "postgres"])
                .output()
        })
        .await
        .expect("join")
        .expect("run pgbench -i");
        assert!(
            init.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );

        let local = || {
            Some(Address {
                host: "127.0.0.1".into(),
                port: 0,
            })
        };
        let proxy = Proxy::bind(ProxySettings {
            read_write: local(),
            connect_timeout: Duration::from_secs(5),
            ..ProxySettings::default()
        })
        .await
        .expect("bind the proxy");
        let proxy_port = proxy.rw_addr().expect("rw listener").port();
        let topology = Topology::new(
            Some(Backend {
                member: "pg".into(),
                host: "127.0.0.1".into(),
                port,
            }),
            vec![],
        );
        let (_feed, rx) = watch::channel(Arc::new(topology));
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(proxy.serve(rx, shutdown.clone()));

        let mut rows = Vec::new();
        for (mode, extra) in [("select-only", None), ("select-only -C", Some("-C"))] {
            let mut args: Vec<String> = ["-S", "-n", "-c"]
                .iter()
                .map(|s| s.to_string())
                .chain([clients.to_string(), "-j".into(), threads.to_string()])
                .chain(["-T".into(), secs.to_string()])
                .collect();
            args.extend(extra.map(str::to_string));
            let (mut direct, mut via, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..rounds {
                let order = if round % 2 == 0 {
                    [("direct", port), ("via proxy", proxy_port)]
                } else {
                    [("via proxy", proxy_port), ("direct", port)]
                };
                let mut pair = [0f64; 2];
                for (target, p) in order {
                    let a = args.clone();
                    eprintln!("{mode}, {target}, round {}: pgbench {}", round + 1, a.join(" "));
                    let tps = tokio::task::spawn_blocking(move || pgbench(p, &a))
                        .await
                        .expect("join")
                        .unwrap_or_else(|e| panic!("{e}"));
                    eprintln!("  tps = {tps:.0}");
                    pair[usize::from(p != port)] = tps;
                }
                direct.push(pair[0]);
                via.push(pair[1]);
                ratios.push(pair[1] / pair[0]);
            }
            rows.push((mode, median(&mut direct), median(&mut via), median(&mut ratios)));
        }

        println!();
        println!(
            "pgbench -c {clients} -j {threads} -T {secs}, scale 10, medians of {rounds} rounds, {} CPUs",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!("{:<16} {:>12} {:>12} {:>7}", "mode", "TPS direct", "TPS proxy", "ratio");
        for (mode, direct, via, ratio) in rows {
            println!("{mode:<16} {direct:>12.0} {via:>12.0} {ratio:>7.3}");
        }
        shutdown.cancel();
        let _ = served.await;
    });
}
