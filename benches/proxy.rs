//! Proxy benchmark: pgbench through the proxy's read-write and auto ports and through a second proxy
//! in `pool_mode: transaction` (its auto port, `pool_size` as PgBouncer's pool), directly to
//! PostgreSQL, through HAProxy (TCP mode) and through PgBouncer (transaction pooling), in one run on
//! one server;
//! what each proxy costs in CPU per transaction and in latency at one client; and the memory each
//! proxy needs per idle client connection. Prints one table (issue 17's throughput targets).
//!
//! `cargo bench -p praetor --bench proxy`. Needs `haproxy` and PgBouncer (scripts/setup installs
//! them; the PgBouncer binary `PRAETOR_PGBOUNCER` names, else `pgbouncer`), PostgreSQL 15 and etcd. It starts one PostgreSQL (harness, trust authentication), runs
//! `pgbench -i -s $SCALE`, starts etcd holding a one-member cluster whose leader is that server, the
//! real `praetor proxy` binary following it, HAProxy and PgBouncer. Then, `$ROUNDS` times: for each
//! client count, `pgbench -S -c C -j J -T T` against every target in an order rotated each round
//! (paired rounds: load drift on a shared machine hits every target alike, and a target "wins"
//! against HAProxy or PgBouncer in the rounds where its TPS is higher than theirs in the same
//! round), sampling the proxy process's user + system CPU time from `/proc/<pid>/stat` before and
//! after each run and dividing by the transactions pgbench reports; and `pgbench -S -c 1 --log`
//! against every target, whose per-transaction latencies give p50 and p99, printed as the
//! difference from direct's. The table: TPS per client count (median, ratio to direct), wins,
//! CPU µs per transaction, added latency; with the load average before and after. Then (when
//! `PRAETOR_BENCH_MODES` is set) medians of other pgbench modes; last, it opens 5000 idle client
//! connections (startup completed) to the proxy's auto port and to PgBouncer and reports the
//! growth of each process's RSS per connection.
//!
//! Nothing is asserted: speed is measured, not tested. Environment: `PRAETOR_BENCH_SECS` (10),
//! `PRAETOR_BENCH_CLIENTS` (`8,64`: the client counts of the paired runs; the first one for the
//! other modes), `PRAETOR_BENCH_THREADS` (2, at most the clients), `PRAETOR_BENCH_ROUNDS` (5),
//! `PRAETOR_BENCH_LATENCY_SECS` (3: each round's one-client run per target),
//! `PRAETOR_BENCH_SCALE` (10), `PRAETOR_BENCH_IDLE` (5000), `PRAETOR_PGBOUNCER` (the PgBouncer
//! binary), `PRAETOR_BENCH_MODES` (a
//! comma-separated subset of `select-only`, `select-only -C`, `tpcb-like`, `tpcb-like -C`, run
//! after the paired part; none when unset), `PRAETOR_BENCH_TARGETS` (a comma-separated subset of
//! `proxy rw`, `proxy rw threads=2`, `proxy rw threads=1`, `proxy auto`, `proxy pool`, `haproxy`,
//! `pgbouncer`; all when unset; `direct` always runs; `proxy rw threads=N` is the read-write port
//! of a second proxy process with `--threads N`, run only when N differs from the main proxy's
//! count, so that two session-thread counts are compared in the same paired rounds),
//! `PRAETOR_BENCH_IDLE=0` skips the memory part,
//! `PRAETOR_BENCH_PROXY_THREADS` (the proxy's `--threads` and HAProxy's `nbthread`; when unset
//! each runs its default: the proxy one session thread, HAProxy one per CPU; PgBouncer always
//! runs one),
//! `PRAETOR_BENCH_PROTOCOL` (pgbench's `-M`: `simple`, the default, `extended` or `prepared`),
//! `PRAETOR_BENCH_IDLE_RELEASE_MS` (the TPS proxy's `idle_release_ms`; its default when unset),
//! `PRAETOR_BENCH_PIN` (`1`: PostgreSQL and pgbench on CPU 0, each proxy alone on CPU 1, which
//! measures what a proxy adds when it does not take CPU from the database; unset: no pinning),
//! `PRAETOR_BENCH_HOLD_SECS` (0: when set, once every target listens the bench prints each one's
//! port and process id and waits that long before its runs, for `strace -c -f -p PID` or
//! `perf stat -p PID` with a pgbench of one's own).
//!
//! `PRAETOR_BENCH_CALLGRIND=1` measures instead of all that each proxy's user-space instructions
//! per transaction under valgrind's callgrind (repeatable on a loaded machine), with the Praetor
//! proxy's top functions: see `proxy_callgrind/mod.rs`.

#[path = "pgbouncer/mod.rs"]
mod pgbouncer;
#[path = "proxy_callgrind/mod.rs"]
mod proxy_callgrind;

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

/// What one pgbench run reported.
struct Run {
    /// Transactions per second, excluding initial connection time (with `-C`, the figure
    /// including connections, which is the point of `-C`).
    tps: f64,
    /// Transactions processed.
    transactions: u64,
}

/// Runs pgbench with `args` against `port`, in directory `cwd` (where `--log` writes).
fn pgbench_in(port: u16, args: &[String], cwd: &Path) -> Result<Run, String> {
    let out = command("pgbench", Kind::Database)
        .current_dir(cwd)
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
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no tps line in:\n{text}"))?;
    // "number of transactions actually processed: 123456" (or "123/456" with -t).
    let transactions = text
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no transaction count in:\n{text}"))?;
    Ok(Run { tps, transactions })
}

/// Runs pgbench with `args` against `port`; its TPS.
fn pgbench(port: u16, args: &[String]) -> Result<f64, String> {
    pgbench_in(port, args, Path::new(".")).map(|r| r.tps)
}

/// CPU time `pid` has used so far (user + system, all its threads), in microseconds, from
/// `/proc/<pid>/stat` (fields 14 and 15, in clock ticks of `ticks_per_sec`).
fn cpu_micros(pid: u32, ticks_per_sec: u64) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: count after its end.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    (ticks(11) + ticks(12)) * 1_000_000 / ticks_per_sec.max(1)
}

/// The kernel's clock ticks per second (`getconf CLK_TCK`; 100 on Linux when that fails).
fn clock_ticks() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

/// Per-transaction latencies in microseconds from pgbench's `--log` files in `dir` whose names
/// start with `prefix` (the third field of each line: `client_id transaction_no time ...`).
fn logged_latencies(dir: &Path, prefix: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if !entry.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        out.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2))
                .filter_map(|v| v.parse::<f64>().ok()),
        );
        let _ = std::fs::remove_file(entry.path());
    }
    out
}

/// The `q` quantile (0..=1) of `v`, nearest rank; 0 when empty.
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// One target's share of a paired round.
struct Paired {
    tps: f64,
    /// The proxy process's CPU time per transaction, µs (`None` for `direct`).
    cpu_per_tx: Option<f64>,
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

/// Waits up to 30 s until something accepts TCP connections on `port`.
async fn wait_listening(what: &str, port: u16, log: impl Fn() -> String) {
    wait_listening_for(what, port, Duration::from_secs(30), log).await
}

/// Waits up to `timeout` until something accepts TCP connections on `port`.
async fn wait_listening_for(what: &str, port: u16, timeout: Duration, log: impl Fn() -> String) {
    wait_for(what, timeout, || async move {
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
/// process and its (rw, auto) ports.
async fn start_proxy(
    binary: &Path,
    dir: &WorkDir,
    name: &str,
    etcd_port: u16,
    extra: &str,
) -> (Process, u16, u16) {
    let threads = std::env::var("PRAETOR_BENCH_PROXY_THREADS").ok();
    start_proxy_via(
        binary,
        dir,
        name,
        etcd_port,
        extra,
        &[],
        threads,
        Duration::from_secs(30),
    )
    .await
}

/// [`start_proxy`], run through `prefix` (a command and its arguments, such as valgrind; empty:
/// none), with `--threads` when given, waiting up to `timeout` for it to route.
#[allow(clippy::too_many_arguments)]
async fn start_proxy_via(
    binary: &Path,
    dir: &WorkDir,
    name: &str,
    etcd_port: u16,
    extra: &str,
    prefix: &[String],
    threads: Option<String>,
    timeout: Duration,
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
    let spawn = || {
        let mut cmd = match prefix.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary);
                cmd
            }
            None => command(binary, Kind::Proxy),
        };
        cmd.arg("proxy").arg("-c").arg(&config);
        if let Some(threads) = &threads {
            cmd.arg("--threads").arg(threads);
        }
        cmd.env("RUST_LOG", "warn");
        Process::spawn(name, cmd, &dir.path().join(format!("{name}.log")))
            .expect("start praetor proxy")
    };
    let mut process = spawn();
    let addr = format!("127.0.0.1:{metrics}");
    let deadline = tokio::time::Instant::now() + timeout;
    // A proxy slowed down (valgrind on a loaded machine) may give up on the DCS at its start
    // (3 s): started again, a few times, until its metrics answer.
    let mut starts = 1;
    while http_get(&addr, "/metrics").await.is_err() {
        if !process.is_running() && starts < 5 {
            eprintln!("{name} exited before serving; starting it again");
            process = spawn();
            starts += 1;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("the proxy's metrics did not answer\n{}", process.log());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Routable once it acknowledged its route in the DCS.
    wait_for("the proxy to route", timeout, || async move {
        let c = tokio_postgres::connect(
            &format!("host=127.0.0.1 port={rw} user=postgres dbname=postgres"),
            tokio_postgres::NoTls,
        )
        .await
        .map_err(|e| e.to_string())?;
        drop(c);
        Ok(())
    })
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
    let client_counts: Vec<u64> = std::env::var("PRAETOR_BENCH_CLIENTS")
        .unwrap_or_else(|_| "8,64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .collect();
    let client_counts = if client_counts.is_empty() {
        vec![8, 64]
    } else {
        client_counts
    };
    let clients = client_counts[0];
    let max_clients = client_counts.iter().copied().max().unwrap_or(clients);
    let threads = env_or("PRAETOR_BENCH_THREADS", 2);
    let rounds = env_or("PRAETOR_BENCH_ROUNDS", 5).max(1);
    let latency_secs = env_or("PRAETOR_BENCH_LATENCY_SECS", 3);
    let ticks = clock_ticks();
    let scale = env_or("PRAETOR_BENCH_SCALE", 10);
    let idle = env_or("PRAETOR_BENCH_IDLE", 5000) as usize;
    let protocol = std::env::var("PRAETOR_BENCH_PROTOCOL").unwrap_or_else(|_| "simple".into());
    let binary = praetor_harness::praetor_beside_current_exe();
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
        if std::env::var("PRAETOR_BENCH_CALLGRIND").is_ok_and(|v| v == "1") {
            proxy_callgrind::run(&binary, &dir, port, etcd.port).await;
            drop(dcs);
            return;
        }

        let tps_extra = match std::env::var("PRAETOR_BENCH_IDLE_RELEASE_MS") {
            Ok(ms) => format!("    idle_release_ms: {ms}\n"),
            Err(_) => String::new(),
        };
        let (proxy, rw, auto) = start_proxy(&binary, &dir, "proxy", etcd.port, &tps_extra).await;
        // The pooling port: its auto port in transaction mode, with PgBouncer's pool size.
        let pooled = if selected("PRAETOR_BENCH_TARGETS", "proxy pool") {
            let extra = format!(
                "    pool_mode: transaction\n    pool_size: {}\n",
                max_clients + 2
            );
            Some(start_proxy(&binary, &dir, "pool-proxy", etcd.port, &extra).await)
        } else {
            None
        };

        // The read-write port with other session-thread counts than the main proxy's, in the same
        // paired rounds: `proxy rw threads=2`, and `proxy rw threads=1` when
        // `PRAETOR_BENCH_PROXY_THREADS` gives the main proxy another count than the default one.
        let main_threads = std::env::var("PRAETOR_BENCH_PROXY_THREADS")
            .ok()
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(1);
        let mut threaded: Vec<(String, Process, u16)> = Vec::new();
        for n in [1u64, 2] {
            let name = format!("proxy rw threads={n}");
            if n == main_threads || !selected("PRAETOR_BENCH_TARGETS", &name) {
                continue;
            }
            let (p, p_rw, _) = start_proxy_via(
                &binary,
                &dir,
                &format!("proxy-threads-{n}"),
                etcd.port,
                &tps_extra,
                &[],
                Some(n.to_string()),
                Duration::from_secs(30),
            )
            .await;
            threaded.push((name, p, p_rw));
        }

        let haproxy_port = free_port();
        let haproxy_cfg = dir.path().join("haproxy.cfg");
        // HAProxy runs one thread per CPU by default; the same override for both.
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
                pool = max_clients + 2,
                log = bouncer_dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let bouncer_program = pgbouncer::program();
        let bouncer_version = pgbouncer::version(&bouncer_program);
        let mut cmd = command(&bouncer_program, Kind::Proxy);
        cmd.arg(bouncer_dir.join("pgbouncer.ini"));
        as_postgres(&mut cmd);
        let pgbouncer = Process::spawn("pgbouncer", cmd, &dir.path().join("pgbouncer.out"))
            .expect("start pgbouncer (scripts/setup installs it)");
        let bouncer_log = bouncer_dir.join("pgbouncer.log");
        wait_listening("pgbouncer", bouncer_port, || {
            std::fs::read_to_string(&bouncer_log).unwrap_or_default()
        })
        .await;

        let mut targets: Vec<(&str, u16, Option<u32>)> = vec![
            ("direct", port, None),
            ("proxy rw", rw, Some(proxy.pid())),
        ];
        for (name, p, p_rw) in &threaded {
            targets.push((name.as_str(), *p_rw, Some(p.pid())));
        }
        targets.push(("proxy auto", auto, Some(proxy.pid())));
        if let Some((p, _, pool_port)) = &pooled {
            targets.push(("proxy pool", *pool_port, Some(p.pid())));
        }
        targets.push(("haproxy", haproxy_port, Some(haproxy.pid())));
        targets.push(("pgbouncer", bouncer_port, Some(pgbouncer.pid())));
        // `direct` is the baseline every ratio divides by, so it always runs.
        let targets: Vec<(&str, u16, Option<u32>)> = targets
            .into_iter()
            .filter(|(name, _, _)| *name == "direct" || selected("PRAETOR_BENCH_TARGETS", name))
            .collect();
        let hold = env_or("PRAETOR_BENCH_HOLD_SECS", 0);
        if hold > 0 {
            for (name, p, pid) in &targets {
                eprintln!(
                    "hold: {name} on port {p}{}",
                    pid.map_or(String::new(), |pid| format!(", pid {pid}"))
                );
            }
            eprintln!("hold: waiting {hold} s before the runs");
            tokio::time::sleep(Duration::from_secs(hold)).await;
        }
        let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

        // Paired select-only runs: each round runs every target once per client count, in an
        // order rotated each round, so that load drift on the shared machine hits all alike and
        // round k of one target can be compared with round k of another.
        let mut paired: BTreeMap<(usize, usize), Vec<Paired>> = BTreeMap::new();
        let mut latencies: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
        let latency_dir = dir.subdir("latency", 0o755).unwrap();
        for round in 0..rounds as usize {
            for (ci, &c) in client_counts.iter().enumerate() {
                let args: Vec<String> = [
                    "-n", "-S", "-c", &c.to_string(), "-j", &threads.min(c).to_string(),
                    "-T", &secs.to_string(), "-M", &protocol,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                for k in 0..targets.len() {
                    let ti = (k + round + ci) % targets.len();
                    let (name, p, pid) = targets[ti];
                    let a = args.clone();
                    let before = pid.map(|pid| cpu_micros(pid, ticks));
                    let run = tokio::task::spawn_blocking(move || pgbench_in(p, &a, Path::new(".")))
                        .await
                        .expect("join")
                        .unwrap_or_else(|e| panic!("select-only -c {c} via {name}: {e}"));
                    let cpu_per_tx = pid.zip(before).map(|(pid, before)| {
                        cpu_micros(pid, ticks).saturating_sub(before) as f64
                            / run.transactions.max(1) as f64
                    });
                    eprintln!(
                        "round {}, select-only -c {c:<3} {name:<11} tps = {:.0}{}",
                        round + 1,
                        run.tps,
                        cpu_per_tx.map_or(String::new(), |u| format!(", {u:.1} µs CPU/tx"))
                    );
                    paired.entry((ci, ti)).or_default().push(Paired {
                        tps: run.tps,
                        cpu_per_tx,
                    });
                }
            }
            // Latency at one client, from pgbench's per-transaction log.
            for k in 0..targets.len() {
                let ti = (k + round) % targets.len();
                let (name, p, _) = targets[ti];
                let prefix = format!("lat{ti}");
                let args: Vec<String> = [
                    "-n", "-S", "-c", "1", "-j", "1", "-T", &latency_secs.to_string(), "-M",
                    &protocol, "--log", "--log-prefix", &prefix,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                let cwd = latency_dir.clone();
                tokio::task::spawn_blocking(move || pgbench_in(p, &args, &cwd))
                    .await
                    .expect("join")
                    .unwrap_or_else(|e| panic!("latency via {name}: {e}"));
                latencies
                    .entry(ti)
                    .or_default()
                    .extend(logged_latencies(&latency_dir, &prefix));
            }
        }
        let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

        println!();
        println!(
            "pgbench -S -n -j {threads} -T {secs} -M {protocol}, scale {scale}, {rounds} paired round(s), {} CPUs, one PostgreSQL 15, {bouncer_version}{}",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            if pinned_cpu(Kind::Proxy).is_some() {
                "; PostgreSQL and pgbench on CPU 0, each proxy alone on CPU 1"
            } else {
                "; every process on every CPU"
            }
        );
        println!(
            "load average (1, 5, 15 min) before: {}; after: {} (the machine may be shared: compare ratios within this run)",
            load_before.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
            load_after.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        );
        println!(
            "TPS: median of the rounds and its ratio to direct's; wins: rounds in which the target's TPS beat HAProxy's / PgBouncer's in the same round; CPU: the proxy process's user + system time over a run divided by its transactions (median of the rounds); latency: pgbench -c 1 --log per-transaction latencies ({latency_secs} s a round), p50 and p99 minus direct's"
        );
        let index = |name: &str| targets.iter().position(|(n, _, _)| *n == name);
        let (haproxy_i, bouncer_i) = (index("haproxy"), index("pgbouncer"));
        let direct_lat = {
            let mut v = latencies.get(&0).cloned().unwrap_or_default();
            (quantile(&mut v, 0.5), quantile(&mut v, 0.99))
        };
        print!("| target |");
        for c in &client_counts {
            print!(" TPS c{c} (x direct) | wins c{c} vs HAProxy / PgBouncer |");
        }
        for c in &client_counts {
            print!(" CPU µs/tx c{c} |");
        }
        println!(" latency p50 / p99 added, µs |");
        println!("|{}", "---|".repeat(2 + 3 * client_counts.len()));
        for (ti, (name, _, _)) in targets.iter().enumerate() {
            print!("| {name} |");
            for ci in 0..client_counts.len() {
                let runs = &paired[&(ci, ti)];
                let mut tps: Vec<f64> = runs.iter().map(|r| r.tps).collect();
                let mut direct: Vec<f64> = paired[&(ci, 0)].iter().map(|r| r.tps).collect();
                let (t, d) = (median(&mut tps), median(&mut direct));
                let wins = |other: Option<usize>| match other {
                    Some(o) if o != ti => {
                        let theirs = &paired[&(ci, o)];
                        let n = runs
                            .iter()
                            .zip(theirs)
                            .filter(|(a, b)| a.tps > b.tps)
                            .count();
                        format!("{n}/{}", runs.len())
                    }
                    _ => "-".into(),
                };
                print!(
                    " {t:.0} ({:.2}x) | {} / {} |",
                    t / d,
                    wins(haproxy_i),
                    wins(bouncer_i)
                );
            }
            for ci in 0..client_counts.len() {
                let mut cpu: Vec<f64> = paired[&(ci, ti)].iter().filter_map(|r| r.cpu_per_tx).collect();
                if cpu.is_empty() {
                    print!(" - |");
                } else {
                    print!(" {:.1} |", median(&mut cpu));
                }
            }
            let mut lat = latencies.get(&ti).cloned().unwrap_or_default();
            let (p50, p99) = (quantile(&mut lat, 0.5), quantile(&mut lat, 0.99));
            if ti == 0 {
                println!(" {p50:.0} / {p99:.0} (absolute) |");
            } else {
                println!(" {:+.0} / {:+.0} |", p50 - direct_lat.0, p99 - direct_lat.1);
            }
        }

        // Other modes (new connections, tpcb-like), when asked for: medians over the rounds at
        // the first client count, as one table.
        let modes: Vec<(&str, Vec<&str>)> = vec![
            ("select-only", vec!["-S"]),
            ("select-only -C", vec!["-S", "-C"]),
            ("tpcb-like", vec![]),
            ("tpcb-like -C", vec!["-C"]),
        ]
        .into_iter()
        .filter(|(name, _)| {
            std::env::var("PRAETOR_BENCH_MODES").is_ok_and(|v| !v.trim().is_empty())
                && selected("PRAETOR_BENCH_MODES", name)
        })
        .collect();
        let mut results: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
        for round in 0..rounds as usize {
            for (mi, (mode, extra)) in modes.iter().enumerate() {
                let mut args: Vec<String> = vec![
                    "-n".into(),
                    "-c".into(),
                    clients.to_string(),
                    "-j".into(),
                    threads.min(clients).to_string(),
                    "-T".into(),
                    secs.to_string(),
                    "-M".into(),
                    protocol.clone(),
                ];
                args.extend(extra.iter().map(|s| s.to_string()));
                for k in 0..targets.len() {
                    let ti = (k + round + mi) % targets.len();
                    let (name, p, _) = targets[ti];
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
        drop(pooled);
        if !modes.is_empty() {
            println!();
            println!(
                "pgbench -c {clients} -j {threads} -T {secs} -M {protocol}, medians of {rounds} round(s)"
            );
            print!("| {:<15} |", "mode");
            for (name, _, _) in &targets {
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
        drop(threaded);
        drop(dcs);
    });
}
