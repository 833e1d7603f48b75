//! Transaction pooling benchmark: pgbench `-M prepared` (and `-M extended` for reference) through
//! the proxy's auto port in `pool_mode: transaction` with `max_prepared_statements: 100`, through
//! PgBouncer in transaction mode (`max_prepared_statements = 100` from PgBouncer 1.21 on; older
//! ones run without it), and directly to PostgreSQL; more clients than server connections. Prints
//! one table: per mode, each target's median TPS and its ratio to direct (the median of the
//! rounds' paired ratios: each round runs every target back to back), and the pool's paired
//! ratio to PgBouncer with the rounds it won.
//!
//! `cargo bench -p praetor --bench pool` (the dev profile works too: `--profile dev`). Needs
//! PostgreSQL 15 and PgBouncer: the binary `PRAETOR_PGBOUNCER` names, else `pgbouncer` (Debian
//! 12's is 1.18; `scripts/build-pgbouncer 1.25.2` builds one that tracks prepared statements into
//! /opt/pgbouncer-1.25.2). It starts one PostgreSQL (harness, trust authentication), runs
//! `pgbench -i -s $SCALE`, serves the proxy in this process (the library, as `praetor proxy` runs
//! it: two worker threads, fed a fixed one-server topology instead of the DCS) and PgBouncer, then
//! for each mode runs `pgbench -c C -T T` against every target, rotating the order each round.
//! Select-only runs with `-j J`; tpcb-like with one pgbench thread per client, since pgbench
//! prepares a statement synchronously at its first use and, with fewer threads than clients, a
//! `BEGIN` waiting for a server connection held by another client of its thread would wait for
//! ever (under any transaction pooler).
//!
//! A target that fails (PgBouncer before 1.21 does not track prepared statements: its clients get
//! `prepared statement "P_0" does not exist`) is shown as `failed` with its first error line.
//! Nothing is asserted: speed is measured, not tested. The table's heading gives the load average
//! before and after (ratios paired in one run are what to compare on a shared machine).
//! Environment: `PRAETOR_PGBOUNCER` (the PgBouncer binary), `PRAETOR_BENCH_SECS` (5),
//! `PRAETOR_BENCH_CLIENTS` (16), `PRAETOR_BENCH_THREADS` (2), `PRAETOR_BENCH_POOL` (4, the server
//! connections of both poolers), `PRAETOR_BENCH_ROUNDS` (3), `PRAETOR_BENCH_SCALE` (1).

#[path = "pgbouncer/mod.rs"]
mod pgbouncer;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use praetor_harness::postgres::Postgres;
use praetor_harness::{as_postgres, free_port, wait_for, write_file, Process, WorkDir};
use praetor_proxy::{Backend, PoolMode, Proxy, ProxySettings, Topology};
use tokio::net::TcpStream;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs pgbench with `args` against `port`: TPS without the initial connection time, or the
/// first error line.
fn pgbench(port: u16, args: &[String]) -> Result<f64, String> {
    let out = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .output()
        .map_err(|e| format!("cannot run pgbench: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let failed = !stdout.contains("number of failed transactions: 0 ");
    if !out.status.success() || failed {
        let first = stderr
            .lines()
            .find(|l| l.contains("error"))
            .unwrap_or("no error line")
            .to_string();
        return Err(first);
    }
    stdout
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no tps line in:\n{stdout}"))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The median over rounds of `a[r] / b[r]`: a ratio paired round by round, so that load drift on
/// a shared machine (which hits both targets of a round alike) cancels out. Zero when empty.
fn paired_ratio(a: &[f64], b: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    median(&mut ratios)
}

fn main() {
    let secs = env_or("PRAETOR_BENCH_SECS", 5);
    let clients = env_or("PRAETOR_BENCH_CLIENTS", 16);
    let threads = env_or("PRAETOR_BENCH_THREADS", 2);
    let pool = env_or("PRAETOR_BENCH_POOL", 4);
    let rounds = env_or("PRAETOR_BENCH_ROUNDS", 3).max(1);
    let scale = env_or("PRAETOR_BENCH_SCALE", 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");

    rt.block_on(async move {
        let dir = WorkDir::new("bench-pool").expect("temp dir");
        let pg = Postgres::start_with(&dir, "pg", &[("max_connections", "200")])
            .await
            .expect("start PostgreSQL");
        let port = pg.port();
        eprintln!("pgbench -i -s {scale} on port {port} ...");
        let init = Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
            .output()
            .expect("run pgbench -i");
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

        let settings = ProxySettings {
            auto: Some(praetor_config::Address {
                host: "127.0.0.1".into(),
                port: 0,
            }),
            pool_mode: PoolMode::Transaction,
            pool_size: pool as usize,
            idle_release: Duration::ZERO,
            max_prepared_statements: 100,
            read_your_writes: false,
            ..ProxySettings::default()
        };
        let proxy = Proxy::bind(settings)
            .await
            .expect("bind the proxy")
            .with_workers(2);
        let auto = proxy.auto_addr().expect("auto port").port();
        let leader = Backend::new("pg", "127.0.0.1", port);
        let (_feed, rx) =
            tokio::sync::watch::channel(Arc::new(Topology::new(Some(leader), Vec::new())));
        let shutdown = tokio_util::sync::CancellationToken::new();
        let served = tokio::spawn(proxy.serve(rx, shutdown.clone()));

        let bouncer_port = free_port();
        let bouncer_dir = dir.subdir("pgbouncer", 0o755).unwrap();
        write_file(&bouncer_dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        let program = pgbouncer::program();
        let version = pgbouncer::version(&program);
        let tracks = pgbouncer::tracks_prepared(&version);
        let prepared = if tracks {
            "max_prepared_statements = 100\n"
        } else {
            ""
        };
        write_file(
            &bouncer_dir.join("pgbouncer.ini"),
            &format!(
                "[databases]\npostgres = host=127.0.0.1 port={port} dbname=postgres\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {auth}\npool_mode = transaction\nmax_client_conn = 1000\ndefault_pool_size = {pool}\n{prepared}logfile = {log}\npidfile =\n",
                auth = bouncer_dir.join("userlist.txt").display(),
                log = bouncer_dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let version = if tracks {
            format!("{version}, max_prepared_statements = 100")
        } else {
            format!("{version} (no max_prepared_statements before 1.21)")
        };
        let mut cmd = Command::new(&program);
        cmd.arg(bouncer_dir.join("pgbouncer.ini"));
        as_postgres(&mut cmd);
        let pgbouncer = Process::spawn("pgbouncer", cmd, &dir.path().join("pgbouncer.out"))
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        let bouncer_log = bouncer_dir.join("pgbouncer.log");
        wait_for("pgbouncer", Duration::from_secs(30), || async move {
            TcpStream::connect(("127.0.0.1", bouncer_port))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| {
            panic!("{e}\n{}", std::fs::read_to_string(&bouncer_log).unwrap_or_default())
        });

        let targets: Vec<(&str, u16)> = vec![
            ("direct", port),
            ("praetor pool", auto),
            ("pgbouncer", bouncer_port),
        ];
        let modes: Vec<(String, Vec<String>)> = [
            ("select-only prepared", "prepared", true),
            ("select-only extended", "extended", true),
            ("tpcb-like prepared", "prepared", false),
        ]
        .into_iter()
        .map(|(name, protocol, select)| {
            let j = if select { threads } else { clients };
            let mut args: Vec<String> = ["-n", "-c", &clients.to_string(), "-j", &j.to_string()]
                .into_iter()
                .map(String::from)
                .collect();
            args.extend(["-T".into(), secs.to_string(), "-M".into(), protocol.into()]);
            if select {
                args.push("-S".into());
            }
            (name.to_string(), args)
        })
        .collect();
        let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let mut results: BTreeMap<(usize, usize), Vec<Result<f64, String>>> = BTreeMap::new();
        for round in 0..rounds {
            for (mi, (mode, args)) in modes.iter().enumerate() {
                for k in 0..targets.len() {
                    let ti = (k + round as usize + mi) % targets.len();
                    let (name, p) = targets[ti];
                    let a = args.clone();
                    let tps = tokio::task::spawn_blocking(move || pgbench(p, &a))
                        .await
                        .expect("join");
                    eprintln!("round {}, {mode:<21} {name:<12} {tps:?}", round + 1);
                    results.entry((mi, ti)).or_default().push(tps);
                }
            }
        }
        let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        shutdown.cancel();
        let _ = served.await;
        drop(pgbouncer);

        println!();
        println!(
            "pgbench -c {clients} -T {secs} (select-only -j {threads}, tpcb-like -j {clients}), scale {scale}, pool_size {pool} in both poolers, medians of {rounds} round(s) (ratios: medians of the per-round ratios), {} CPUs, one PostgreSQL 15, {version}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
        );
        let load = |l: &str| l.split_whitespace().take(3).collect::<Vec<_>>().join(" ");
        println!(
            "load average (1, 5, 15 min) before: {}; after: {}",
            load(&load_before),
            load(&load_after)
        );
        print!("| {:<21} |", "mode");
        for (name, _) in &targets {
            print!(" {name:>18} |");
        }
        println!(" pool / pgbouncer (wins) |");
        print!("|{}|", "-".repeat(23));
        for _ in &targets {
            print!("{}|", "-".repeat(20));
        }
        println!("{}|", "-".repeat(25));
        let mut failures = Vec::new();
        for (mi, (mode, _)) in modes.iter().enumerate() {
            print!("| {mode:<21} |");
            // Each target's TPS in round order, or None when a run failed.
            let mut per_target: Vec<Option<Vec<f64>>> = Vec::new();
            for (ti, (name, _)) in targets.iter().enumerate() {
                let runs = results.remove(&(mi, ti)).unwrap_or_default();
                if let Some(e) = runs.iter().find_map(|r| r.as_ref().err()) {
                    failures.push(format!("{mode} via {name}: {e}"));
                }
                let ok: Vec<f64> = runs.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
                if ok.len() < runs.len() || ok.is_empty() {
                    print!(" {:>18} |", format!("failed {}/{}", runs.len() - ok.len(), runs.len()));
                    per_target.push(None);
                    continue;
                }
                let tps = median(&mut ok.clone());
                match per_target.first() {
                    None => print!(" {tps:>18.0} |"),
                    Some(direct) => match direct {
                        Some(d) => print!(" {tps:>9.0} ({:>4.2}x) |", paired_ratio(&ok, d)),
                        None => print!(" {tps:>9.0} (    -) |"),
                    },
                }
                per_target.push(Some(ok));
            }
            match (&per_target[1], &per_target[2]) {
                (Some(pool), Some(bouncer)) => {
                    let wins = pool.iter().zip(bouncer).filter(|(p, b)| p > b).count();
                    let ratio = paired_ratio(pool, bouncer);
                    println!(" {:>23} |", format!("{ratio:.2}x ({wins}/{})", pool.len()));
                }
                _ => println!(" {:>23} |", "-"),
            }
        }
        for f in failures {
            println!("{f}");
        }
    });
}
