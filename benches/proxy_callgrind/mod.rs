//! `PRAETOR_BENCH_CALLGRIND=1`: instructions per transaction of each proxy, counted by valgrind's
//! callgrind instead of timed (wall-clock and CPU seconds are noisy on a shared machine; instruction
//! counts repeat within a percent or two under any load).
//!
//! Each proxy runs under `valgrind --tool=callgrind` in turn: the Praetor proxy (read-write port and
//! auto port in `pool_mode: auto`, with one session thread per CPU, then with `--threads 1`, the
//! default), the Praetor proxy in `pool_mode: transaction` (`pool_size` the clients + 2, as PgBouncer's pool,
//! `max_prepared_statements: 100`), HAProxy (TCP mode, `nbthread` as the proxy's threads) and
//! PgBouncer (transaction pooling; the binary `PRAETOR_PGBOUNCER` names, else `pgbouncer`; with
//! `max_prepared_statements = 100` from 1.21 on). Per target and pgbench protocol: a warm-up run,
//! then two measured runs of `pgbench -n -S -c C -j 2 -t T1` and `-t T2`, each between a
//! `callgrind_control --zero` and a `--dump`; Ir/tx is the difference of their instruction counts
//! over the difference of their transactions, so logins and connection set-up cancel out. Each
//! client count of `PRAETOR_BENCH_CLIENTS` is measured in turn against the same process (the same
//! total transactions at each: T2 per client scales down as C grows). Prints one table (per target
//! and client count: Ir/tx, its ratio to PgBouncer's at the same count, and the calls per
//! transaction of the system-call wrappers `epoll_wait`, `recv`, `send`, ... from the dumps' call
//! counts) and `callgrind_annotate`'s top functions (self cost) of the Praetor targets' measured
//! runs.
//!
//! Reading the table: a relaying proxy's Ir/tx moves with its `epoll_wait` calls per transaction
//! (how often its thread found nothing to do and parked, about 850 Ir each for the proxy's
//! session thread), which depend on how valgrind happens to schedule the processes: two runs of
//! the same binary differed by up to 7% with 1.14 against 1.67 `epoll_wait`/tx. Compare rows
//! with similar `epoll_wait` counts, or repeat.
//!
//! What it does not count: the kernel's instructions (the `recv`/`send` system calls, which are
//! most of a TCP proxy's CPU: see README.md). Valgrind runs one thread at a time, so a
//! multi-threaded proxy's count includes no parallel speed-up and no cross-thread cache effects;
//! it still counts every instruction its threads run (wake-ups of another thread included).
//!
//! Environment: `PRAETOR_BENCH_CALLGRIND_TX` (2000: T2, transactions per client; T1 is a fifth of
//! it, at the first client count), `PRAETOR_BENCH_CLIENTS` (`8`; e.g. `8,64` measures both in one
//! run), `PRAETOR_BENCH_CALLGRIND_PROTOCOLS`
//! (`simple,prepared`), `PRAETOR_BENCH_TARGETS` (a subset of `proxy rw`, `proxy auto`, `proxy rw
//! threads=1`, `proxy auto threads=1`, `proxy transaction`, `proxy transaction baseline`,
//! `proxy rw baseline`, `proxy auto baseline`,
//! `haproxy`, `pgbouncer`), `PRAETOR_BENCH_CALLGRIND_TOP` (15 functions),
//! `PRAETOR_BENCH_CALLGRIND_CACHE` (`1`: callgrind also simulates the caches, `--cache-sim=yes`,
//! and the table adds the data reads and writes per transaction that missed the simulated
//! first-level and last-level caches: how many distinct cache lines a transaction touches once
//! the working set of all sessions outgrows the first level; about twice as slow),
//! `PRAETOR_BENCH_CALLGRIND_BASELINE` (the path of another `praetor` binary, e.g. a copy of the
//! one built before a change: measured in the same run as `proxy transaction baseline`, the
//! pool's before/after on one machine state, and as `proxy rw baseline` and `proxy auto
//! baseline` with one session thread, the relaying ports'; unset: not run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use praetor_harness::{as_postgres, free_port, wait_for, write_file, Process, WorkDir};

use super::{env_or, pgbench_in, pgbouncer, selected, start_proxy_via, wait_listening_for};

/// How long a process started under valgrind on a loaded machine may take to listen.
const VALGRIND_START: Duration = Duration::from_secs(300);

/// One measured target: a port of a process running under callgrind.
struct Target {
    name: String,
    port: u16,
}

/// What one process ran between a `--zero` and a `--dump` (the `totals:` line of the dump), the
/// transactions `run` made, and the dump.
async fn zero_run_dump(
    pid: u32,
    out_prefix: &Path,
    run: impl FnOnce() -> Result<u64, String> + Send + 'static,
) -> Result<(Counts, u64, PathBuf), String> {
    control(pid, &["--zero"])?;
    let tx = tokio::task::spawn_blocking(run)
        .await
        .map_err(|e| e.to_string())??;
    let before = dumps(out_prefix);
    control(pid, &["--dump"])?;
    let dump = wait_for("callgrind's dump", Duration::from_secs(120), || {
        let fresh = dumps(out_prefix)
            .into_iter()
            .filter(|p| !before.contains(p))
            .find_map(|p| totals(&p).map(|ir| (ir, p)));
        async move { fresh.ok_or_else(|| "not written yet".to_string()) }
    })
    .await?;
    Ok((dump.0, tx, dump.1))
}

/// Runs `callgrind_control ARGS PID`, as `postgres` when that user runs the process (vgdb's reply
/// pipe must be one the process can open).
fn control(pid: u32, args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("callgrind_control");
    cmd.args(args).arg(pid.to_string());
    let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| {
                    v.split_whitespace()
                        .next()
                        .and_then(|u| u.parse::<u32>().ok())
                })
        });
    if uid.is_some() && uid == praetor_harness::postgres_ids().map(|(u, _)| u) {
        as_postgres(&mut cmd);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run callgrind_control (valgrind's package): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {args:?} {pid}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Kills `process` (run under valgrind) and removes the pipes valgrind's gdbserver left in `/tmp`
/// for it (a killed valgrind does not).
fn stop(mut process: Process) {
    let pid = process.pid();
    process.kill_group();
    let infix = format!("-{pid}-by-");
    for entry in std::fs::read_dir("/tmp").into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("vgdb-pipe-") && name.contains(&infix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The dump files written so far for `prefix` (`<prefix>.1`, `<prefix>.2`, ...).
fn dumps(prefix: &Path) -> Vec<PathBuf> {
    let dir = prefix.parent().unwrap_or(Path::new("."));
    let stem = format!(
        "{}.",
        prefix.file_name().unwrap_or_default().to_string_lossy()
    );
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&stem))
        .map(|e| e.path())
        .collect()
}

/// What one dump counted: instructions and, with `PRAETOR_BENCH_CALLGRIND_CACHE=1`, the simulated
/// cache's data misses.
#[derive(Clone, Copy, Default)]
struct Counts {
    /// Instructions (Ir).
    ir: u64,
    /// Data reads and writes that missed the simulated first-level data cache (D1mr + D1mw);
    /// `None` without the cache simulation.
    d1_misses: Option<u64>,
    /// Of those, the ones that missed the simulated last-level cache too (DLmr + DLmw).
    ll_misses: Option<u64>,
}

impl Counts {
    fn minus(self, earlier: Counts) -> Counts {
        let sub = |a: Option<u64>, b: Option<u64>| Some(a?.saturating_sub(b?));
        Counts {
            ir: self.ir.saturating_sub(earlier.ir),
            d1_misses: sub(self.d1_misses, earlier.d1_misses),
            ll_misses: sub(self.ll_misses, earlier.ll_misses),
        }
    }
}

/// The counts on a complete dump's `totals:` (or `summary:`) line, named by its `events:` line.
fn totals(dump: &Path) -> Option<Counts> {
    let text = std::fs::read_to_string(dump).ok()?;
    let events: Vec<&str> = text
        .lines()
        .find_map(|l| l.strip_prefix("events:"))
        .map(|e| e.split_whitespace().collect())
        .unwrap_or_else(|| vec!["Ir"]);
    let values: Vec<u64> = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("totals:")
                .or_else(|| l.strip_prefix("summary:"))
        })?
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let get = |name: &str| {
        events
            .iter()
            .position(|e| *e == name)
            .map(|i| values.get(i).copied().unwrap_or(0))
    };
    let sum = |a: &str, b: &str| Some(get(a)? + get(b)?);
    Some(Counts {
        ir: get("Ir")?,
        d1_misses: sum("D1mr", "D1mw"),
        ll_misses: sum("DLmr", "DLmw"),
    })
}

/// `PRAETOR_BENCH_CALLGRIND_CACHE=1`: callgrind simulates the caches (`--cache-sim=yes`).
fn cache_sim() -> bool {
    std::env::var("PRAETOR_BENCH_CALLGRIND_CACHE").is_ok_and(|v| v == "1")
}

/// `valgrind --tool=callgrind` with its output under `dir` as `<label>.out`, as a command prefix.
fn valgrind(dir: &Path, label: &str) -> (Vec<String>, PathBuf) {
    let out = dir.join(format!("{}.out", label.replace(' ', "-")));
    (
        vec![
            "valgrind".into(),
            "--tool=callgrind".into(),
            "--dump-instr=no".into(),
            format!("--cache-sim={}", if cache_sim() { "yes" } else { "no" }),
            format!("--callgrind-out-file={}", out.display()),
        ],
        out,
    )
}

/// `callgrind_annotate`'s `top` functions by self cost in `dump`, one per line: by instructions,
/// or with `misses` by first-level data-cache read misses (then write misses; the cache
/// simulation's dumps only).
fn top_functions(dump: &Path, top: usize, misses: bool) -> String {
    let mut cmd = Command::new("callgrind_annotate");
    cmd.args(["--inclusive=no", "--threshold=100"]);
    if misses {
        cmd.args(["--show=D1mr,D1mw,Ir", "--sort=D1mr,D1mw"]);
    }
    let out = cmd.arg(dump).output();
    let text = match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => return format!("cannot run callgrind_annotate: {e}"),
    };
    // The function lines follow the line of dashes after "Ir  file:function". A dump taken while
    // threads are blocked charges the frames on their stacks (thread start, the runtime's
    // `block_on`) with everything since the zeroing: those lines, at 50% or more, are left out.
    text.lines()
        .skip_while(|l| !l.contains("file:function"))
        .skip(2)
        .filter(|l| !l.trim().is_empty())
        .filter(|l| {
            let share = l
                .split_once('(')
                .and_then(|(_, r)| r.split_once('%'))
                .and_then(|(v, _)| v.trim().parse::<f64>().ok());
            share.is_some_and(|s| s < 50.0)
        })
        .take(top)
        .map(|l| {
            let l = strip_paths(l.trim_end());
            let l = l.as_str();
            // Rust's long generic names: keep the front, where the function is named.
            match l.char_indices().nth(180) {
                Some((i, _)) => format!("    {}...", &l[..i]),
                None => format!("    {l}"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One row of the table: a target at one client count, Ir/tx (with its system calls) per protocol
/// or the first line of why it failed.
struct Row {
    name: String,
    clients: u64,
    results: Vec<Result<Measured, String>>,
}

/// What the measured runs share: the client counts, transactions per client at the first count,
/// the protocols.
struct Plan {
    /// `PRAETOR_BENCH_CLIENTS`, in order.
    clients: Vec<u64>,
    /// T2 per client at the first client count; every count runs the same total (see [`Plan::tx`]).
    t2: u64,
    protocols: Vec<String>,
}

impl Plan {
    /// (T1, T2) per client at `clients`: the same total transactions as the first count's, so a
    /// run at -c 64 costs about as much under valgrind as one at -c 8.
    fn tx(&self, clients: u64) -> (u64, u64) {
        let first = self.clients.first().copied().unwrap_or(clients);
        let t2 = (self.t2 * first / clients.max(1)).max(10);
        (t2 / 5, t2)
    }
}

/// [`measure`] for each client count and protocol of `plan` against the target `name`: one
/// [`Row`] per client count.
async fn measure_each(name: &str, pid: u32, out_prefix: &Path, port: u16, plan: &Plan) -> Vec<Row> {
    let mut rows = Vec::new();
    for &clients in &plan.clients {
        let mut results = Vec::new();
        for protocol in &plan.protocols {
            eprintln!("{name} -c {clients} -M {protocol} ...");
            let r = measure(pid, out_prefix, port, clients, plan.tx(clients), protocol).await;
            match &r {
                Ok(m) => eprintln!(
                    "{name} -c {clients} -M {protocol}: {:.0} Ir/tx, D1 misses/tx {:?}, LL misses/tx {:?}, calls/tx {:?}",
                    m.ir, m.d1_misses, m.ll_misses, m.calls
                ),
                Err(e) => eprintln!("{name} -c {clients} -M {protocol}: {e}"),
            }
            results.push(r.map_err(|e| first_line(&e)));
        }
        rows.push(Row {
            name: name.to_string(),
            clients,
            results,
        });
    }
    rows
}

/// The measured runs of one protocol against one target: Ir/tx, or why it failed.
async fn measure(
    pid: u32,
    out_prefix: &Path,
    port: u16,
    clients: u64,
    tx: (u64, u64),
    protocol: &str,
) -> Result<Measured, String> {
    let args = |t: u64| -> Vec<String> {
        [
            "-n",
            "-S",
            "-c",
            &clients.to_string(),
            "-j",
            &2.min(clients).to_string(),
            "-t",
            &t.to_string(),
            "-M",
            protocol,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |t: u64| {
        let a = args(t);
        move || pgbench_in(port, &a, Path::new(".")).map(|r| r.transactions)
    };
    // Warm-up: first logins, pools filled, lazily built state.
    tokio::task::spawn_blocking(run(tx.0.div_ceil(4)))
        .await
        .map_err(|e| e.to_string())??;
    let (ir1, tx1, dump1) = zero_run_dump(pid, out_prefix, run(tx.0)).await?;
    let (ir2, tx2, dump) = zero_run_dump(pid, out_prefix, run(tx.1)).await?;
    if tx2 <= tx1 {
        return Err(format!("transactions {tx2} after {tx1}"));
    }
    let per_tx = (tx2 - tx1) as f64;
    let (calls1, calls2) = (syscall_calls(&dump1), syscall_calls(&dump));
    let calls = calls2
        .iter()
        .map(|(name, n2)| {
            let n1 = calls1.get(name).copied().unwrap_or(0);
            (name.clone(), n2.saturating_sub(n1) as f64 / per_tx)
        })
        .filter(|(_, n)| *n >= 0.005)
        .collect();
    let diff = ir2.minus(ir1);
    Ok(Measured {
        ir: diff.ir as f64 / per_tx,
        d1_misses: diff.d1_misses.map(|m| m as f64 / per_tx),
        ll_misses: diff.ll_misses.map(|m| m as f64 / per_tx),
        calls,
        dump,
    })
}

/// One target's measured Ir/tx at one client count and protocol.
struct Measured {
    /// User-space instructions per transaction.
    ir: f64,
    /// Simulated first-level data-cache misses per transaction (`PRAETOR_BENCH_CALLGRIND_CACHE`).
    d1_misses: Option<f64>,
    /// Simulated last-level data-cache misses per transaction.
    ll_misses: Option<f64>,
    /// Calls per transaction of each libc system-call wrapper in [`SYSCALLS`] the process called.
    calls: BTreeMap<String, f64>,
    /// The dump of the longer measured run (for the top functions).
    dump: PathBuf,
}

/// The libc wrappers of the system calls a relaying proxy makes per message and per wake-up, whose
/// calls per transaction the mode prints (from the call counts in callgrind's dumps, which count
/// every call made in user space: the kernel's side of each is not counted in Ir).
const SYSCALLS: &[&str] = &[
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "recv",
    "recvfrom",
    "read",
    "readv",
    "send",
    "sendto",
    "write",
    "writev",
    "sendmsg",
    "recvmsg",
    "syscall",
    "clock_gettime",
];

/// Calls into each of [`SYSCALLS`] recorded in the callgrind dump `path` (summed over callers;
/// callgrind writes `cfn=(id) name` the first time a function is named, `cfn=(id)` after, and the
/// `calls=N ...` line following a `cfn=`). Functions named with a file or library suffix
/// (`recv'2`) count as the same name. Empty when the dump cannot be read.
fn syscall_calls(path: &Path) -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut names: std::collections::HashMap<String, String> = Default::default();
    let mut out = BTreeMap::new();
    let mut callee: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line
            .strip_prefix("cfn=")
            .or_else(|| line.strip_prefix("fn="))
        {
            let is_call = line.starts_with("cfn=");
            let name = match rest.split_once(") ") {
                Some((id, name)) if rest.starts_with('(') => {
                    names.insert(id.to_string(), name.to_string());
                    Some(name.to_string())
                }
                _ if rest.starts_with('(') => names.get(rest.trim_end_matches(')')).cloned(),
                _ => Some(rest.to_string()),
            };
            callee = if is_call { name } else { None };
        } else if let Some(rest) = line.strip_prefix("calls=") {
            if let Some(name) = callee.take() {
                let base = name.split('\'').next().unwrap_or("");
                if SYSCALLS.contains(&base) {
                    let n: u64 = rest
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    *out.entry(base.to_string()).or_insert(0) += n;
                }
            }
        }
    }
    out
}

/// The callgrind mode (see the module's docs): starts each target under callgrind, measures,
/// prints. `port`: the PostgreSQL server; `etcd_port`: etcd holding a cluster it leads.
pub(crate) async fn run(binary: &Path, dir: &WorkDir, port: u16, etcd_port: u16) {
    let mut client_counts: Vec<u64> = std::env::var("PRAETOR_BENCH_CLIENTS")
        .unwrap_or_default()
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .filter(|&c| c > 0)
        .collect();
    if client_counts.is_empty() {
        client_counts.push(8);
    }
    let max_clients = client_counts.iter().copied().max().unwrap_or(8);
    let t2 = env_or("PRAETOR_BENCH_CALLGRIND_TX", 2000).max(10);
    let top = env_or("PRAETOR_BENCH_CALLGRIND_TOP", 15) as usize;
    let protocols: Vec<String> = std::env::var("PRAETOR_BENCH_CALLGRIND_PROTOCOLS")
        .unwrap_or_else(|_| "simple,prepared".into())
        .split(',')
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect();
    let plan = Plan {
        clients: client_counts,
        t2,
        protocols,
    };
    let default_threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    // Written by processes running as `postgres` (PgBouncer) too.
    let out_dir = dir.subdir("callgrind", 0o777).expect("callgrind dir");
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let mut rows: Vec<Row> = Vec::new();
    // Rows of the Praetor targets (annotated with their top functions).

    // The Praetor proxy: (label, --threads, extra YAML, which of its ports to measure).
    // `PRAETOR_BENCH_CALLGRIND_BASELINE`: another build of praetor measured as `proxy transaction
    // baseline` in the same run (a before/after comparison of the pool on one machine state).
    let baseline = std::env::var_os("PRAETOR_BENCH_CALLGRIND_BASELINE")
        .map(PathBuf::from)
        .map(|b| {
            let to = dir.subdir("baseline", 0o755).expect("baseline dir");
            praetor_harness::install_binary(&b, &to).expect("copy the baseline binary")
        });
    let pool_yaml = format!(
        "    pool_mode: transaction\n    pool_size: {}\n    max_prepared_statements: 100\n",
        max_clients + 2
    );
    let praetor = [
        ("proxy", default_threads, String::new(), &["rw", "auto"][..]),
        ("proxy threads=1", 1, String::new(), &["rw", "auto"][..]),
        (
            "proxy transaction",
            default_threads,
            pool_yaml.clone(),
            &["auto"][..],
        ),
        (
            "proxy transaction baseline",
            default_threads,
            pool_yaml,
            &["auto"][..],
        ),
        // The relaying ports' before/after, with the default one session thread.
        ("proxy baseline", 1, String::new(), &["rw", "auto"][..]),
    ];
    for (label, threads, extra, ports) in praetor {
        let binary = match (label, &baseline) {
            ("proxy transaction baseline" | "proxy baseline", Some(b)) => b.as_path(),
            ("proxy transaction baseline" | "proxy baseline", None) => continue,
            _ => binary,
        };
        let names: Vec<String> = ports
            .iter()
            .map(|p| match (label, *p) {
                ("proxy transaction" | "proxy transaction baseline", _) => label.to_string(),
                ("proxy baseline", p) => format!("proxy {p} baseline"),
                (_, p) if threads == 1 => format!("proxy {p} threads=1"),
                (_, p) => format!("proxy {p}"),
            })
            .collect();
        if !names.iter().any(|n| selected("PRAETOR_BENCH_TARGETS", n)) {
            continue;
        }
        let (prefix, out) = valgrind(&out_dir, label);
        eprintln!("starting {label} under callgrind ...");
        let (process, rw, auto) = start_proxy_via(
            binary,
            dir,
            &label.replace([' ', '='], "-"),
            etcd_port,
            &extra,
            &prefix,
            Some(threads.to_string()),
            VALGRIND_START,
        )
        .await;
        for (p, name) in ports.iter().zip(&names) {
            if !selected("PRAETOR_BENCH_TARGETS", name) {
                continue;
            }
            let target = Target {
                name: name.clone(),
                port: if *p == "rw" { rw } else { auto },
            };
            rows.extend(measure_each(&target.name, process.pid(), &out, target.port, &plan).await);
        }
        stop(process);
    }
    let praetor_rows = 0..rows.len();

    if selected("PRAETOR_BENCH_TARGETS", "haproxy") {
        let haproxy_port = free_port();
        let cfg = dir.path().join("haproxy-callgrind.cfg");
        write_file(
            &cfg,
            &format!(
                "global\n  maxconn 8000\n  nbthread {default_threads}\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten pg\n  bind 127.0.0.1:{haproxy_port}\n  server pg 127.0.0.1:{port}\n"
            ),
        )
        .unwrap();
        let (prefix, out) = valgrind(&out_dir, "haproxy");
        let mut cmd = Command::new(&prefix[0]);
        cmd.args(&prefix[1..])
            .arg("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg);
        let haproxy = Process::spawn("haproxy", cmd, &dir.path().join("haproxy-callgrind.log"))
            .expect("start haproxy under valgrind");
        wait_listening_for("haproxy", haproxy_port, VALGRIND_START, || haproxy.log()).await;
        rows.extend(measure_each("haproxy", haproxy.pid(), &out, haproxy_port, &plan).await);
        stop(haproxy);
    }

    let mut bouncer_version = String::new();
    if selected("PRAETOR_BENCH_TARGETS", "pgbouncer") {
        let program = pgbouncer::program();
        bouncer_version = pgbouncer::version(&program);
        let tracks = pgbouncer::tracks_prepared(&bouncer_version);
        let bouncer_port = free_port();
        let bouncer_dir = dir.subdir("pgbouncer-callgrind", 0o755).unwrap();
        write_file(&bouncer_dir.join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        write_file(
            &bouncer_dir.join("pgbouncer.ini"),
            &format!(
                "[databases]\npostgres = host=127.0.0.1 port={port} dbname=postgres\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {auth}\npool_mode = transaction\nmax_client_conn = 1000\ndefault_pool_size = {pool}\n{prepared}logfile = {log}\npidfile =\n",
                auth = bouncer_dir.join("userlist.txt").display(),
                pool = max_clients + 2,
                prepared = if tracks { "max_prepared_statements = 100\n" } else { "" },
                log = bouncer_dir.join("pgbouncer.log").display(),
            ),
        )
        .unwrap();
        let (prefix, out) = valgrind(&out_dir, "pgbouncer");
        let mut cmd = Command::new(&prefix[0]);
        cmd.args(&prefix[1..])
            .arg(&program)
            .arg(bouncer_dir.join("pgbouncer.ini"));
        as_postgres(&mut cmd);
        let pgbouncer = Process::spawn(
            "pgbouncer",
            cmd,
            &dir.path().join("pgbouncer-callgrind.out"),
        )
        .expect("start pgbouncer under valgrind");
        let log = bouncer_dir.join("pgbouncer.log");
        wait_listening_for("pgbouncer", bouncer_port, VALGRIND_START, || {
            std::fs::read_to_string(&log).unwrap_or_default()
        })
        .await;
        rows.extend(measure_each("pgbouncer", pgbouncer.pid(), &out, bouncer_port, &plan).await);
        stop(pgbouncer);
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let (t1_first, t2_first) = plan.tx(plan.clients[0]);
    println!();
    println!(
        "callgrind: user-space instructions (Ir) per transaction, pgbench -n -S -c C -j 2 -t T2 minus -t T1 (warmed up; T2 {t2_first} and T1 {t1_first} at -c {}, the same total transactions at every other C); valgrind runs a process's threads one at a time; the kernel's instructions are not counted; PgBouncer: {bouncer_version}",
        plan.clients[0],
    );
    println!(
        "load average before: {}; after: {} (instruction counts do not depend on it)",
        load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    );
    print!("| target | clients |");
    for p in &plan.protocols {
        print!(" Ir/tx -M {p} | x PgBouncer | system calls per tx -M {p} |");
        if cache_sim() {
            print!(" D1 / LL data misses per tx -M {p} |");
        }
    }
    println!();
    let columns = if cache_sim() {
        "---|---|---|---|"
    } else {
        "---|---|---|"
    };
    println!("|---|---|{}", columns.repeat(plan.protocols.len()));
    for row in &rows {
        // PgBouncer's row at the same client count, the ratio's base.
        let bouncer = rows
            .iter()
            .find(|r| r.name == "pgbouncer" && r.clients == row.clients);
        print!("| {} | {} |", row.name, row.clients);
        for (i, r) in row.results.iter().enumerate() {
            let base = bouncer
                .and_then(|b| b.results.get(i))
                .and_then(|b| b.as_ref().ok());
            match (r, base) {
                (Ok(m), Some(b)) => print!(" {:.0} | {:.2}x |", m.ir, m.ir / b.ir),
                (Ok(m), None) => print!(" {:.0} | - |", m.ir),
                (Err(e), _) => print!(" failed: {e} | - |"),
            }
            match r {
                Ok(m) => {
                    let calls: Vec<String> =
                        m.calls.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
                    print!(" {} |", calls.join(", "));
                }
                Err(_) => print!(" - |"),
            }
            if cache_sim() {
                match r {
                    Ok(Measured {
                        d1_misses: Some(d1),
                        ll_misses: Some(ll),
                        ..
                    }) => print!(" {d1:.0} / {ll:.1} |"),
                    _ => print!(" - |"),
                }
            }
        }
        println!();
    }
    for row in &rows[praetor_rows] {
        for (protocol, r) in plan.protocols.iter().zip(&row.results) {
            let Ok(m) = r else { continue };
            println!();
            println!(
                "{} -c {}, -M {protocol}: top {top} functions by self cost (Ir) over the -t {} run ({})",
                row.name,
                row.clients,
                plan.tx(row.clients).1,
                m.dump.display()
            );
            println!("{}", top_functions(&m.dump, top, false));
            if cache_sim() {
                println!();
                println!(
                    "{} -c {}, -M {protocol}: top {top} functions by first-level data-cache misses (reads, writes, Ir)",
                    row.name, row.clients
                );
                println!("{}", top_functions(&m.dump, top, true));
            }
        }
    }
}

/// `line` without the long directory prefixes of Cargo's registry and the Rust library sources.
fn strip_paths(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    for word in line.split_inclusive(' ') {
        let w = match (word.find("/src/index.crates.io-"), word.find("/library/")) {
            (Some(i), _) => word[i..]
                .split_once('/')
                .and_then(|(_, r)| r.split_once('/'))
                .and_then(|(_, r)| r.split_once('/'))
                .map_or(word, |(_, r)| r),
            (None, Some(i)) if word.contains("/rustc/") => &word[i + "/library/".len()..],
            _ => word,
        };
        out.push_str(w);
    }
    out
}

fn first_line(e: &str) -> String {
    e.lines()
        .find(|l| l.contains("error") || l.contains("ERROR"))
        .or_else(|| e.lines().next())
        .unwrap_or("")
        .chars()
        .take(100)
        .collect()
}
