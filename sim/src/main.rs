//! `praetor-sim`: runs many seeds of the HA simulation and reports seeds per minute, or replays one.
//!
//! ```text
//! praetor-sim --seeds 10000 [--from 0]   # run seeds from..from+N, print seeds/minute, fail on a violation
//! praetor-sim --jobs 1 ...               # worker threads (default: one per CPU)
//! praetor-sim --seed 42 --trace          # replay one seed with its full trace
//! praetor-sim --no-failsafe ...          # never draw failsafe_mode (drawn in a third of the seeds by default)
//! praetor-sim --no-confirm-routes ...    # proxies route an acknowledged leader without reading the lock again
//! praetor-sim --no-pause ...             # never pause the cluster (maintenance mode drawn in a quarter of the seeds)
//! praetor-sim --no-standby ...           # never draw a standby cluster (one seed in eight by default)
//! praetor-sim --no-lease-refresh ...     # leases run out during a DCS outage (the real servers
//!                                        # give them their whole ttl again when the quorum returns)
//! praetor-sim --no-blips ...             # never freeze the DCS briefly after the heal (short outages drawn in a third of the seeds)
//! ```

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use praetor_sim::{Options, Report};

/// mimalloc instead of glibc's malloc: the simulation clones small DCS views at every event, and
/// allocation was about a third of its time under glibc (perf, seeds 30,000-30,149).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Runs seeds `from..from + seeds` on `jobs` threads and returns their reports in seed order.
///
/// Seeds are handed out in increasing order from one counter, and a worker that meets a
/// violation (unless `keep_going`) only stops the others from taking new seeds: every seed below
/// the first failing one still runs to its end, so the reports up to that seed, and the figures
/// made from them, are the same whatever `jobs` is (a seed's run is deterministic). Seeds above
/// it that were already running are returned too; the caller cuts at the first failure.
fn run_seeds(from: u64, seeds: u64, jobs: usize, keep_going: bool, opts: Options) -> Vec<Report> {
    let next = AtomicU64::new(from);
    let stop = AtomicBool::new(false);
    let reports = Mutex::new(Vec::with_capacity(seeds as usize));
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            scope.spawn(|| {
                let mut mine = vec![];
                while !stop.load(Ordering::Relaxed) {
                    let s = next.fetch_add(1, Ordering::Relaxed);
                    if s >= from + seeds {
                        break;
                    }
                    let mut r = praetor_sim::run_seed_with(s, false, opts);
                    if r.violation.is_none() {
                        // Only a failing seed's trace is printed; thousands of kept ones cost memory.
                        r.trace = Vec::new();
                    } else if !keep_going {
                        stop.store(true, Ordering::Relaxed);
                    }
                    mine.push(r);
                }
                reports.lock().expect("no worker panicked").extend(mine);
            });
        }
    });
    let mut reports = reports.into_inner().expect("no worker panicked");
    reports.sort_by_key(|r| r.seed);
    reports
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds: u64 = 10_000;
    let mut from: u64 = 0;
    let mut one: Option<u64> = None;
    let mut trace = false;
    let mut keep_going = false;
    let mut jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut opts = Options::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = |name: &str| -> u64 {
            it.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| {
                eprintln!("{name} needs a number");
                std::process::exit(2)
            })
        };
        match a.as_str() {
            "--seeds" => seeds = num("--seeds"),
            "--from" => from = num("--from"),
            "--seed" => one = Some(num("--seed")),
            "--trace" => trace = true,
            "--keep-going" => keep_going = true,
            "--jobs" => jobs = num("--jobs").max(1) as usize,
            "--failsafe" => opts.failsafe = true,
            "--no-failsafe" => opts.failsafe = false,
            "--no-confirm-routes" => opts.confirm_routes = false,
            "--no-pause" => opts.pause = false,
            "--no-blips" => opts.blips = false,
            "--no-standby" => opts.standby = false,
            "--no-lease-refresh" => opts.lease_refresh = false,
            other => {
                eprintln!("unknown argument {other:?}; usage: praetor-sim [--seeds N] [--from S] [--jobs N] [--keep-going] [--no-failsafe] [--no-confirm-routes] [--no-pause] [--no-blips] [--no-standby] [--no-lease-refresh] | --seed S [--trace] [--no-failsafe] [--no-confirm-routes] [--no-pause] [--no-blips] [--no-standby] [--no-lease-refresh]");
                return ExitCode::from(2);
            }
        }
    }
    if let Some(s) = one {
        let r = praetor_sim::run_seed_with(s, trace, opts);
        if trace || r.violation.is_some() {
            print!("{}", praetor_sim::explain(&r));
        }
        println!(
            "seed {s}: {} events, {} commits acknowledged, {} promotions, violation: {:?}",
            r.events, r.acked, r.promotions, r.violation
        );
        return if r.violation.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        };
    }
    let started = Instant::now();
    let (mut failed, mut acked, mut promotions, mut events) = (vec![], 0usize, 0usize, 0u64);
    let (mut switchovers, mut fallbacks) = (0usize, 0usize);
    let (mut paused_seeds, mut pauses, mut paused_promotions) = (0usize, 0usize, 0usize);
    let (mut blip_seeds, mut blips, mut blips_checked) = (0usize, 0usize, 0usize);
    let mut standby_seeds = 0usize;
    // Lapsed renewals: lock holders that gave the lock up, races won past a peer holding off.
    let (mut lapse_releases, mut won_past_holding_off) = (0usize, 0usize);
    let mut lapse_session_drops = 0usize;
    // Lock holders in recovery asked to step down: promotions first, hand-overs, and the first seed of each.
    let (mut before, mut handovers) = ((0usize, None), (0usize, None));
    // Time from the heal to a routed writable leader, as a fraction of ttl + loop_wait.
    let mut recovery: Vec<f64> = vec![];
    for r in run_seeds(from, seeds, jobs, keep_going, opts) {
        let s = r.seed;
        acked += r.acked;
        promotions += r.promotions;
        events += r.events;
        switchovers += r.switchovers;
        fallbacks += r.switchover_fallbacks;
        paused_seeds += usize::from(r.pauses > 0);
        pauses += r.pauses;
        paused_promotions += r.promotions_while_paused;
        blip_seeds += usize::from(r.blips > 0);
        blips += r.blips;
        blips_checked += r.blips_checked;
        standby_seeds += usize::from(r.standby_cluster);
        lapse_releases += r.lapse_releases;
        lapse_session_drops += r.lapse_session_drops;
        won_past_holding_off += r.won_past_holding_off;
        for (count, n) in [
            (&mut before, r.promotions_before_switchover),
            (&mut handovers, r.recovery_handovers),
        ] {
            count.0 += n;
            count.1 = count.1.or((n > 0).then_some(s));
        }
        if let Some(ms) = r.recovered_ms {
            recovery.push(ms as f64 / r.bound_ms as f64);
        }
        if let Some(v) = &r.violation {
            if failed.is_empty() && !keep_going {
                print!("{}", praetor_sim::explain(&r));
            }
            println!("seed {s}: {v:?}");
            failed.push(s);
            if !keep_going {
                break;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let ran = seeds.min(failed.first().map_or(seeds, |f| f - from + 1));
    let ran = if keep_going { seeds } else { ran };
    println!(
        "{ran} seeds in {secs:.1} s on {jobs} thread(s): {:.0} seeds/minute ({events} events, {acked} commits acknowledged, {promotions} promotions); {} failing: {failed:?}",
        ran as f64 * 60.0 / secs,
        failed.len()
    );
    println!(
        "planned switchovers checked for lost commits: {switchovers} ({fallbacks} promoted without the last LSN after a fault took the stepped-down leader away)"
    );
    println!(
        "maintenance mode: {paused_seeds} seeds paused ({pauses} pauses), {paused_promotions} manual promotions while paused"
    );
    println!(
        "short DCS outages: {blip_seeds} seeds froze the DCS ({blips} outages, {blips_checked} checked under a routed leader)"
    );
    println!("standby clusters: {standby_seeds} seeds (no member writable, no proxy route)");
    println!(
        "lock holders in recovery asked to step down: {} hand-overs (first seed {:?}), {} promotions first (first seed {:?})",
        handovers.0, handovers.1, before.0, before.1
    );
    println!(
        "lapsed renewals: {lapse_releases} lock releases, {lapse_session_drops} sessions dropped after failed releases or reads, {won_past_holding_off} races won while a peer at least as far on held off"
    );
    recovery.sort_by(f64::total_cmp);
    if !recovery.is_empty() {
        let q = |p: f64| recovery[((recovery.len() - 1) as f64 * p) as usize];
        println!(
            "after the heal, a routed writable leader within (ttl + loop_wait) x: median {:.2}, p99 {:.2}, max {:.2}",
            q(0.5),
            q(0.99),
            q(1.0)
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
