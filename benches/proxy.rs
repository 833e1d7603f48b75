//! Proxy benchmark: pgbench through the proxy's read-write and auto ports, directly to PostgreSQL,
//! through HAProxy (TCP mode) and through PgBouncer (transaction pooling), in one run on one server;
//! and the memory each proxy needs per idle client connection. Prints one table.
//!
//! `cargo bench -p praetor --bench proxy`. Needs `haproxy` and `pgbouncer` (scripts/setup installs
//! them), PostgreSQL 15 and etcd. It starts one PostgreSQL (harness, trust authentication), runs
//! `pgbench -i -s $SCALE`, starts etcd holding a one-member cluster whose leader is that server, the
//! real `praetor proxy` binary following it, HAProxy and PgBouncer; then, for select-only (`-S`) and
//! tpcb-like, each without and with `-C` (a new connection per transaction), runs `pgbench -c C -j J
//! -T T` against every target, rotating the order each round, and prints medians and the ratio to
//! direct. Last, it opens 5000 idle client connections (startup completed) to the proxy's auto port
//! and to PgBouncer and reports the growth of each process's RSS per connection.
//!
//! Nothing is asserted: speed is measured, not tested. Environment: `PRAETOR_BENCH_SECS` (10),
//! `PRAETOR_BENCH_CLIENTS` (8), `PRAETOR_BENCH_THREADS` (2), `PRAETOR_BENCH_ROUNDS` (1),
//! `PRAETOR_BENCH_SCALE` (10), `PRAETOR_BENCH_IDLE` (5000), `PRAETOR_BENCH_MODES` (a comma-separated
//! subset of `select-only`, `select-only -C`, `tpcb-like`, `tpcb-like -C`; all when unset),
//! `PRAETOR_BENCH_TARGETS` (a comma-separated subset of `proxy rw`, `proxy auto`, `haproxy`,
//! `pgbouncer`; all when unset; `direct` always runs), `PRAETOR_BENCH_IDLE=0` skips the memory part,
//! `PRAETOR_BENCH_PROXY_THREADS` (the proxy's `--threads` and HAProxy's `nbthread`; both run one
//! thread per CPU when unset; PgBouncer always runs one),
//! `PRAETOR_BENCH_PROTOCOL` (pgbench's `-M`: `simple`, the default, `extended` or `prepared`),
//! `PRAETOR_BENCH_IDLE_RELEASE_MS` (the TPS proxy's `idle_release_ms`; its default when unset),
//! `PRAETOR_BENCH_PIN` (`1`: PostgreSQL and pgbench on CPU 0, each proxy alone on CPU 1, which
//! measures what a proxy adds when it does not take CPU from the database; unset: no pinning).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use praetor_harness::postgres::Postgres;
use praetor_harness::{
    as_postgres, free_port, http_get, wait_for, write_file, Etcd, Process, WorkDir,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The CPU a process of `kind` runs on under `PRAETOR_BENCH_PIN=1`: PostgreSQL and pgbench share
/// CPU 0 and every proxy gets CPU 1 to itself, as when the proxy runs on its own cores or host.
/// `None` (no pinning) by default: everything shares every CPU.
fn pinned_cpu(kind: Kind) -> Option<&'static str> {
    std::env::var("PRAETOR_BENCH_PIN")
        .ok()
        .filter(|v| v == "1")?;
    Some(match kind {
        Kind::Database => "0",
        Kind::Proxy => "1",
    })
}

#[derive(Clone, Copy)]
enum Kind {
    /// PostgreSQL and its client, pgbench.
    Database,
    /// Any proxy under test.
    Proxy,
}

/// `program`, started on the CPU `kind` is pinned to, if any (`taskset`).
fn command(program: impl AsRef<std::ffi::OsStr>, kind: Kind) -> Command {
    match pinned_cpu(kind) {
        Some(cpu) => {
            let mut cmd = Command::new("taskset");
            cmd.args(["-c", cpu]).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// Runs pgbench with `args` against `port`; TPS excluding initial connection time (with `-C`, the
/// figure including connections, which is the point of `-C`).
fn pgbench(port: u16, args: &[String]) -> Result<f64, String> {
    let out = command("pgbench", Kind::Database)
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

/// Resident memory of `pid` in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until something accepts TCP connections on `port`.
async fn wait_listening(what: &str, port: u16, log: impl Fn() -> String) {
    wait_for(what, Duration::from_secs(30), || async move {
        TcpStream::connect(("127.0.0.1", port))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", log()));
}

/// A StartupMessage for user and database `postgres`.
fn startup_message() -> Vec<u8> {
    let body = b"user\0postgres\0database\0postgres\0application_name\0idle\0\0";
    let mut m = ((8 + body.len()) as u32).to_be_bytes().to_vec();
    m.extend_from_slice(&[0, 3, 0, 0]);
    m.extend_from_slice(body);
    m
}

/// Opens `n` client connections to `port`, each through its startup phase (until ReadyForQuery),
/// at most 100 at a time; returns them, idle.
async fn open_idle(port: u16, n: usize) -> Vec<TcpStream> {
    let limit = Arc::new(tokio::sync::Semaphore::new(100));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
        tasks.spawn(async move {
            let _permit = permit;
            let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
            s.write_all(&startup_message()).await?;
            let mut seen = Vec::new();
            let mut buf = [0u8; 2048];
            loop {
                let k = s.read(&mut buf).await?;
                if k == 0 {
                    return Err(std::io::Error::other(format!(
                        "closed during startup: {:?}",
                        String::from_utf8_lossy(&seen)
                    )));
                }
                seen.extend_from_slice(&buf[..k]);
                if seen.ends_with(&[b'Z', 0, 0, 0, 5, b'I']) {
                    return Ok(s);
                }
            }
        });
    }
    let mut open = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        match r.expect("join") {
            Ok(s) => open.push(s),
            Err(e) => panic!("idle connection to port {port} failed: {e}"),
        }
    }
    open
}

/// Per-connection RSS growth of process `pid` with `n` idle connections to `port`, in KiB.
async fn idle_cost(pid: u32, port: u16, n: usize) -> (u64, u64, f64) {
    let before = rss_kib(pid);
    let conns = open_idle(port, n).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_kib(pid);
    drop(conns);
    tokio::time::sleep(Duration::from_secs(1)).await;
    (
        before,
        after,
        after.saturating_sub(before) as f64 / n as f64,
    )
}

/// Starts `praetor proxy` against `etcd` with the given extra `praetor.proxy` YAML; returns the
/// process and its (rw, auto, metrics) ports.
async fn start_proxy(
    binary: &Path,
    dir: &WorkDir,
    name: &str,
    etcd_port: u16,
    extra: &str,
) -> (Process, u16, u16) {
    let (rw, auto, metrics) = (free_port(), free_port(), free_port());
    let config = dir.path().join(format!("{name}.yml"));
    write_file(
        &config,
        &format!(
            "scope: bench\nnamespace: /service/\netcd3:\n  hosts: 127.0.0.1:{etcd_port}\nlog:\n  level: WARNING\npraetor:\n  proxy:\n    id: {name}\n    read_write: {{listen: '127.0.0.1:{rw}'}}\n    auto: {{listen: '127.0.0.1:{auto}'}}\n    metrics: {{listen: '127.0.0.1:{metrics}'}}\n    connect_timeout: 10\n{extra}"
        ),
    )
    .expect("write the proxy config");
    let mut cmd = command(binary, Kind::Proxy);
    cmd.arg("proxy").arg("-c").arg(&config);
    if let Ok(threads) = std::env::var("PRAETOR_BENCH_PROXY_THREADS") {
        cmd.arg("--threads").arg(threads);
    }
    cmd.env("RUST_LOG", "warn");
    let process = Process::spawn(name, cmd, &dir.path().join(format!("{name}.log")))
        .expect("start praetor proxy");
    let addr = format!("127.0.0.1:{metrics}");
    wait_for("the proxy's metrics", Duration::from_secs(30), || {
        let addr = addr.clone();
        async move { http_get(&addr, "/metrics").await.map(|_| ()) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", process.log()));
    // Routable once it acknowledged its route in the DCS.
    wait_for(
        "the proxy to route",
        Duration::from_secs(30),
        || async move {
            let c = tokio_postgres::connect(
                &format!("host=127.0.0.1 port={rw} user=postgres dbname=postgres"),
                tokio_postgres::NoTls,
            )
            .await
            .map_err(|e| e.to_string())?;
            drop(c);
            Ok(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", process.log()));
    (process, rw, auto)
}

/// Whether `name` is in the comma-separated list in the environment variable `var` (everything is
/// when the variable is unset or empty).
fn selected(var: &str, name: &str) -> bool {
    let list = std::env::var(var).unwrap_or_default();
    list.trim().is_empty() || list.split(',').any(|item| item.trim() == name)
}

fn main() {
    let secs = env_or("PRAETOR_BENCH_SECS", 10);
    let clients = env_or("PRAETOR_BENCH_CLIENTS", 8);
    let threads = env_or("PRAETOR_BENCH_THREADS", 2);
    let rounds = env_or("PRAETOR_BENCH_ROUNDS", 1).max(1);
    let scale = env_or("PRAETOR_BENCH_SCALE", 10);
    let idle = env_or("PRAETOR_BENCH_IDLE", 5000) as usize;
    let protocol = std::env::var("PRAETOR_BENCH_PROTOCOL").unwrap_or_else(|_| "simple".into());
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_praetor"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");

    rt.block_on(async move {
        let dir = WorkDir::new("bench-proxies").expect("temp dir");
        let binary = praetor_harness::install_binary(&binary, dir.path()).expect("copy binary");
        let pg = Postgres::start_with(&dir, "pg", &[("max_connections", "400")])
            .await
            .expect("start PostgreSQL");
        let port = pg.port();
        if let Some(cpu) = pinned_cpu(Kind::Database) {
            // Backends are forked by the postmaster and inherit its CPU set.
            let pid = std::fs::read_to_string(pg.data_dir().join("postmaster.pid"))
                .expect("postmaster.pid");
            let pid = pid.lines().next().expect("postmaster pid").trim().to_string();
            let ok = Command::new("taskset")
                .args(["-a", "-p", "-c", cpu, &pid])
                .output()
                .expect("run taskset");
            assert!(ok.status.success(), "{ok:?}");
        }
        eprintln!("pgbench -i -s {scale} on port {port} ...");
        let init = Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
            .output()
            .expect("run pgbench -i");
        assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

        // etcd with a one-member cluster led by `pg`, on a long lease (no agent renews it).
        let etcd = Etcd::start(dir.path()).await.expect("start etcd");
        let dcs = praetor_dcs::connect(
            &praetor_config::DcsEndpoints::Etcd(vec![etcd.endpoint.clone()]),
            praetor_dcs::DcsIdentity {
                namespace: "/service/".into(),
                scope: "bench".into(),
                member: Some("pg".into()),
                ttl_secs: 3600,
                request_timeout_secs: 5,
            },
        )
        .await
        .expect("connect to etcd");
        dcs.touch_member(&praetor_dcs::MemberData {
            conn_url: Some(pg.conn_url()),
            role: praetor_dcs::Role::Primary,
            state: praetor_dcs::MemberState::Running,
            ..Default::default()
        })
        .await
        .expect("write the member");
        assert!(dcs.acquire_leader().await.expect("take the leader key"));

        let tps_extra = match std::env::var("PRAETOR_BENCH_IDLE_RELEASE_MS") {
            Ok(ms) => format!("    idle_release_ms: {ms}\n"),
            Err(_) => String::new(),
        };
        let (proxy, rw, auto) = start_proxy(&binary, &dir, "proxy", etcd.port, &tps_extra).await;

        let haproxy_port = free_port();
        let haproxy_cfg = dir.path().join("haproxy.cfg");
        // HAProxy runs one thread per CPU by default, like the proxy; the same override for both.
        let nbthread = std::env::var("PRAETOR_BENCH_PROXY_THREADS")
            .map(|n| format!("  nbthread {n}\n"))
            .unwrap_or_default();
        write_file(
            &haproxy_cfg,
            &format!(
                "global\n  maxconn 8000\n{nbthread}defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten pg\n  bind 127.0.0.1:{haproxy_port}\n  server pg 127.0.0.1:{port}\n"
            ),
        )
        .unwrap();
        let mut cmd = command("haproxy", Kind::Proxy);
        cmd.arg("-db").arg("-f").arg(&haproxy_cfg);
        let haproxy = Process::spawn("haproxy", cmd, &dir.path().join("haproxy.log"))
            .expect("start haproxy (scripts/setup installs it)");
        wait_listening("haproxy", haproxy_port, || haproxy.log()).await;

        let bouncer_port = free_port();
        let bouncer_dir = dir.subdir("pgbouncer", 0o755).unwrap();
        write_file(&bouncer_dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        write_file(
            &bouncer_dir.join("pgbouncer.ini"),
            &format!(
                "[databases]\npostgres = host=127.0.0.1 port={port} dbname=postgres\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {auth}\npool_mode = transaction\nmax_client_conn = 20000\ndefault_pool_size = {pool}\nlogfile = {log}\npidfile =\n",
                auth = bouncer_dir.join("userlist.txt").display(),
                pool = clients + 2,
                log = bouncer_dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let mut cmd = command("pgbouncer", Kind::Proxy);
        cmd.arg(bouncer_dir.join("pgbouncer.ini"));
        as_postgres(&mut cmd);
        let pgbouncer = Process::spawn("pgbouncer", cmd, &dir.path().join("pgbouncer.out"))
            .expect("start pgbouncer (scripts/setup installs it)");
        let bouncer_log = bouncer_dir.join("pgbouncer.log");
        wait_listening("pgbouncer", bouncer_port, || {
            std::fs::read_to_string(&bouncer_log).unwrap_or_default()
        })
        .await;

        let targets: Vec<(&str, u16)> = vec![
            ("direct", port),
            ("proxy rw", rw),
            ("proxy auto", auto),
            ("haproxy", haproxy_port),
            ("pgbouncer", bouncer_port),
        ];
        // `direct` is the baseline every ratio divides by, so it always runs.
        let targets: Vec<(&str, u16)> = targets
            .into_iter()
            .filter(|(name, _)| *name == "direct" || selected("PRAETOR_BENCH_TARGETS", name))
            .collect();
        let modes: Vec<(&str, Vec<&str>)> = vec![
            ("select-only", vec!["-S"]),
            ("select-only -C", vec!["-S", "-C"]),
            ("tpcb-like", vec![]),
            ("tpcb-like -C", vec!["-C"]),
        ]
        .into_iter()
        .filter(|(name, _)| selected("PRAETOR_BENCH_MODES", name))
        .collect();
        let mut results: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
        for round in 0..rounds {
            for (mi, (mode, extra)) in modes.iter().enumerate() {
                let mut args: Vec<String> = vec![
                    "-n".into(),
                    "-c".into(),
                    clients.to_string(),
                    "-j".into(),
                    threads.to_string(),
                    "-T".into(),
                    secs.to_string(),
                    "-M".into(),
                    protocol.clone(),
                ];
                args.extend(extra.iter().map(|s| s.to_string()));
                for k in 0..targets.len() {
                    let ti = (k + round as usize + mi) % targets.len();
                    let (name, p) = targets[ti];
                    let a = args.clone();
                    let tps = tokio::task::spawn_blocking(move || pgbench(p, &a))
                        .await
                        .expect("join")
                        .unwrap_or_else(|e| panic!("{mode} via {name}: {e}"));
                    eprintln!("round {}, {mode:<15} {name:<11} tps = {tps:.0}", round + 1);
                    results.entry((mi, ti)).or_default().push(tps);
                }
            }
        }

        drop(proxy);
        println!();
        println!(
            "pgbench -c {clients} -j {threads} -T {secs} -M {protocol}, scale {scale}, medians of {rounds} round(s), {} CPUs, one PostgreSQL 15{}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            if pinned_cpu(Kind::Proxy).is_some() {
                "; PostgreSQL and pgbench on CPU 0, each proxy alone on CPU 1"
            } else {
                "; every process on every CPU"
            }
        );
        print!("| {:<15} |", "mode");
        for (name, _) in &targets {
            print!(" {name:>18} |");
        }
        println!();
        print!("|{}|", "-".repeat(17));
        for _ in &targets {
            print!("{}|", "-".repeat(20));
        }
        println!();
        for (mi, (mode, _)) in modes.iter().enumerate() {
            let direct = median(results.get_mut(&(mi, 0)).expect("direct ran"));
            print!("| {mode:<15} |");
            for ti in 0..targets.len() {
                let tps = median(results.get_mut(&(mi, ti)).expect("ran"));
                if ti == 0 {
                    print!(" {tps:>18.0} |");
                } else {
                    print!(" {:>9.0} ({:>4.2}x) |", tps, tps / direct);
                }
            }
            println!();
        }
        if idle > 0 {
            // Memory per idle client connection: a proxy that pools server connections at once
            // (idle_release_ms: 0) against PgBouncer.
            let (mut idle_proxy, _, idle_auto) = start_proxy(
                &binary,
                &dir,
                "idle-proxy",
                etcd.port,
                "    idle_release_ms: 0\n    pool_size: 20\n",
            )
            .await;
            let proxy_pid = idle_proxy.pid();
            eprintln!("opening {idle} idle connections to the proxy's auto port ...");
            let (p_before, p_after, p_per) = idle_cost(proxy_pid, idle_auto, idle).await;
            eprintln!("opening {idle} idle connections to PgBouncer ...");
            let (b_before, b_after, b_per) = idle_cost(pgbouncer.pid(), bouncer_port, idle).await;

            println!();
            println!("| {idle} idle client connections | RSS before | RSS after | per connection |");
            println!("|---|---|---|---|");
            println!(
                "| praetor proxy (auto port, server connections pooled) | {p_before} KiB | {p_after} KiB | {p_per:.2} KiB |"
            );
            println!(
                "| PgBouncer (transaction pooling) | {b_before} KiB | {b_after} KiB | {b_per:.2} KiB |"
            );
            idle_proxy.kill_group();
        }
        drop(haproxy);
        drop(pgbouncer);
        drop(dcs);
    });
}
