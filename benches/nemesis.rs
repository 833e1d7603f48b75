//! Nemesis benchmark: seeded runs, each drawing faults (freeze, kill, PostgreSQL crash, a DCS
//! member stopped, the DCS quorum lost, the proxy restarted; network faults on a harness with
//! hosts of their own) against a 3-member cluster on a 3-server DCS with a proxy, under a workload
//! of unique inserts and read-modify-writes through the proxy's read-write and auto ports and
//! direct inserts into every member. Each run's history is checked (lost acknowledged writes per
//! replication mode, split brain, deposed primary, convergence) and the recovery of each fault
//! measured; prints a table per fault kind and the seed of each violation.
//!
//! Run: `cargo build --release && cargo bench --bench nemesis`.
//! - `PRAETOR_NEMESIS_SEEDS` (default 100): seeds 1..=N; `PRAETOR_NEMESIS_SEED=N` replays one.
//! - `PRAETOR_NEMESIS_DCS=etcd|zookeeper`, `PRAETOR_NEMESIS_MODE=async|sync|strict`,
//!   `PRAETOR_NEMESIS_FAULTS=kill,freeze,...`, `PRAETOR_NEMESIS_FAULTS_PER_RUN` (default 3).
//! - `PRAETOR_NEMESIS_NETNS=1`: every host in a network namespace of its own (root, `ip`, `nft`),
//!   and the network faults (silence, partition, one-way partition) drawn too.
//!
//! Timings are printed, never asserted; a violation makes the benchmark exit non-zero.

use std::time::{Duration, Instant};

use praetor_harness::cluster::DcsKind;
use praetor_harness::nemesis::checker::recovery_bound;
use praetor_harness::nemesis::history::Mode;
use praetor_harness::nemesis::runner::{options_from_env, series, NemesisOptions};
use praetor_harness::nemesis::table::render;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name}: {v:?} is not a number"))
    })
}

#[tokio::main]
async fn main() {
    let options = match options_from_env(NemesisOptions::new(DcsKind::EtcdCluster3, Mode::Async)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let seeds: Vec<u64> = match env_u64("PRAETOR_NEMESIS_SEED") {
        Some(s) => vec![s],
        None => (1..=env_u64("PRAETOR_NEMESIS_SEEDS").unwrap_or(100)).collect(),
    };
    let binary = praetor_harness::praetor_beside_current_exe();
    let kinds: Vec<&str> = options
        .applicable_kinds()
        .iter()
        .map(|k| k.name())
        .collect();
    println!(
        "nemesis: {} seeds, DCS {}, mode {}, {} faults per run from {}",
        seeds.len(),
        options.dcs.family(),
        options.mode.name(),
        options.faults,
        kinds.join(",")
    );
    let started = Instant::now();
    let (runs, failed) = series(&binary, &options, seeds).await;
    let bound = Duration::from_secs(u64::from(options.ttl_secs + options.loop_wait_secs) + 1);
    debug_assert!(runs.iter().all(|r| recovery_bound(&r.history) == bound));
    print!("{}", render(&runs, &failed, bound));
    println!("wall time: {:.0}s", started.elapsed().as_secs_f64());
    if runs.iter().any(|r| !r.report.violations.is_empty()) || !failed.is_empty() {
        std::process::exit(1);
    }
}
