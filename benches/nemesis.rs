//! Nemesis benchmark: seeded runs, each drawing faults (freeze, kill, PostgreSQL crash, a DCS
//! member stopped, the DCS quorum lost, the proxy restarted, a switchover; network faults and a
//! replica's replication link slowed, made lossy or cut on a harness with hosts of their own)
//! against a 3-member cluster on a 3-server DCS with a proxy, under a workload of unique inserts
//! and read-modify-writes through the proxy's read-write and auto ports, an insert-then-select
//! read-your-writes probe on the auto port and direct inserts into every member. Each run's history
//! is checked (lost acknowledged writes per replication mode, and across a switchover in every
//! mode; split brain, deposed primary, stale reads, convergence) and the recovery of each fault
//! measured; prints a table per fault kind and the seed of each violation.
//!
//! Run: `cargo build --release && cargo bench --bench nemesis`.
//! - `PRAETOR_NEMESIS_SEEDS` (default 100): seeds 1..=N; `PRAETOR_NEMESIS_SEED=N` replays one.
//! - `PRAETOR_NEMESIS_DCS=etcd|zookeeper`, `PRAETOR_NEMESIS_MODE=async|sync|strict`,
//!   `PRAETOR_NEMESIS_FAULTS=kill,freeze,...`, `PRAETOR_NEMESIS_FAULTS_PER_RUN` (default 3).
//! - `PRAETOR_NEMESIS_FIRST_SEED` (default 1): seeds FIRST..FIRST+N instead.
//! - `PRAETOR_NEMESIS_OVERLAP=0`: no overlapping faults (on by default here: each fault after the
//!   first is applied, one time in two, while the previous one still holds).
//! - `PRAETOR_NEMESIS_NETNS=1`: every host in a network namespace of its own (root, `ip`, `nft`),
//!   the DCS servers too (etcd, or ZooKeeper with `PRAETOR_NEMESIS_DCS=zookeeper`), and the
//!   network faults (silence, partition, one-way partition, a member's slow and lossy links to
//!   the DCS, a replica's replication link through a relay) drawn too.
//!
//! - `PRAETOR_NEMESIS_SLOTS=1` (or `18`; `15` for PostgreSQL 15): the logical slot workload, off by
//!   default. The cluster runs that PostgreSQL with `wal_level: logical` and a permanent logical
//!   slot `queue` (`test_decoding`) in its dynamic configuration; a writer inserts rows carrying
//!   their own `pg_current_wal_insert_lsn()` and `pg_recvlogical` consumes the slot through the
//!   multi-host read-write connection string, started again from its confirmed position after each
//!   disconnection. The first fault waits until every replica holds a usable copy of the slot
//!   (the claim's precondition); the run then fails a `logical slot feed broken` check if a row of
//!   the final table was never delivered, a row was sent again from a position past its commit,
//!   or a delivered row vanished with no fault that may lose commits (`nemesis::slot_feed`).
//! - `PRAETOR_NEMESIS_KEEP_SLOW=1`: keep the directory (every process's log) of a run with a
//!   recovery over its bound, not only of a run with a violation.
//!
//! Prints the table every 10 seeds, and the load average (the machine may be shared); each
//! recovery over its bound is printed with its seed (`nemesis seed N: over bound: ...`).
//!
//! Timings are printed, never asserted; a violation makes the benchmark exit non-zero.

use std::time::Instant;

use praetor_harness::cluster::DcsKind;
use praetor_harness::nemesis::history::Mode;
use praetor_harness::nemesis::runner::{options_from_env, series, NemesisOptions};
use praetor_harness::nemesis::table::render;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
    })
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` prints them.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[tokio::main]
async fn main() {
    // Overlapping faults on by default here (PRAETOR_NEMESIS_OVERLAP=0 turns them off).
    let mut defaults = NemesisOptions::new(DcsKind::EtcdCluster3, Mode::Async);
    defaults.overlap = true;
    let options = match options_from_env(defaults) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let first = env_u64("PRAETOR_NEMESIS_FIRST_SEED").unwrap_or(1);
    let seeds: Vec<u64> = match env_u64("PRAETOR_NEMESIS_SEED") {
        Some(s) => vec![s],
        None => (first..first + env_u64("PRAETOR_NEMESIS_SEEDS").unwrap_or(100)).collect(),
    };
    let binary = praetor_harness::praetor_beside_current_exe();
    let kinds: Vec<&str> = options
        .applicable_kinds()
        .iter()
        .map(|k| k.name())
        .collect();
    println!(
        "nemesis: {} seeds, DCS {}, mode {}, {} faults per run from {}{}{}; load {}",
        seeds.len(),
        options.dcs.family(),
        options.mode.name(),
        options.faults,
        kinds.join(","),
        if options.overlap { ", overlapping" } else { "" },
        if options.netns {
            ", hosts in network namespaces"
        } else {
            ""
        },
        load()
    );
    let started = Instant::now();
    let (mut runs, mut failed) = (Vec::new(), Vec::new());
    // A table every 10 seeds, so a series cut short still has its figures.
    let chunks: Vec<&[u64]> = seeds.chunks(10).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let (r, f) = series(&binary, &options, chunk.to_vec()).await;
        runs.extend(r);
        failed.extend(f);
        if i + 1 < chunks.len() {
            println!(
                "after {} seeds ({:.0}s, load {}):\n{}",
                runs.len() + failed.len(),
                started.elapsed().as_secs_f64(),
                load(),
                render(&runs, &failed)
            );
        }
    }
    print!("{}", render(&runs, &failed));
    println!(
        "wall time: {:.0}s; load {}",
        started.elapsed().as_secs_f64(),
        load()
    );
    if runs.iter().any(|r| !r.report.violations.is_empty()) || !failed.is_empty() {
        std::process::exit(1);
    }
}
