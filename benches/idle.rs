//! What an idle cluster costs: a 3-member cluster (one etcd, three agents, no clients) left alone
//! for a window, then: HA cycles a second per agent (from `praetor_ha_loop_duration_seconds_count`),
//! etcd revisions a second (each one a write every watcher is woken for), and the CPU the agents and
//! etcd used (from /proc, as a share of one CPU). Design rule 9: one HA cycle per `loop_wait`, no
//! write of an unchanged value.
//!
//! `PRAETOR_BENCH_BASELINE=/path/to/another/praetor` measures that binary the same way in the same
//! run (for instance one built from an earlier commit), printed next to this one with ratios.
//! `PRAETOR_BENCH_SECS` (window, default 60), `PRAETOR_BENCH_RUNS` (default 3; medians are printed).
//!
//! Run: `cargo bench --bench idle` (after scripts/setup). Figures are printed, never asserted.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use praetor_harness::cluster::{ClusterOptions, LocalCluster};

fn binary() -> PathBuf {
    praetor_harness::praetor_beside_current_exe()
}

/// CPU time (user + system) of process `pid` so far, in seconds, from /proc/<pid>/stat.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may contain spaces: count fields after its closing parenthesis.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    ticks as f64 / hz
}

/// etcd's current revision (one per write to any key).
async fn revision(endpoint: &str) -> i64 {
    let mut client = etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect to etcd");
    let resp = client
        .get("/", Some(etcd_client::GetOptions::new().with_count_only()))
        .await
        .expect("read etcd");
    resp.header().map(|h| h.revision()).unwrap_or(0)
}

/// The HA cycles member `node` has run so far.
async fn cycles(node: &praetor_harness::cluster::Node) -> f64 {
    let (_, body) = praetor_harness::http_get(&node.api_addr(), "/metrics")
        .await
        .unwrap_or_default();
    body.lines()
        .find(|l| l.starts_with("praetor_ha_loop_duration_seconds_count"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// One window's figures.
#[derive(Debug, Clone, Copy, Default)]
struct Idle {
    cycles_per_sec: f64,
    revisions_per_sec: f64,
    agents_cpu: f64,
    etcd_cpu: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn measure(bin: &Path, window: Duration) -> Result<Idle, String> {
    let mut c = LocalCluster::start(
        bin,
        ClusterOptions {
            scope: "idle-bench".into(),
            ttl: 10,
            loop_wait: 2,
            retry_timeout: 3,
            proxy: false,
            ..Default::default()
        },
    )
    .await?;
    c.wait_healthy(2, Duration::from_secs(120)).await?;
    // Right after forming, members still publish changes (streaming, slots, the first checkpoint).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let endpoint = c.etcd.endpoint.clone();
    let pids: Vec<u32> = c.nodes.iter_mut().filter_map(|n| n.agent_pid()).collect();
    let etcd_pid = c.dcs().etcd().map(|e| e.process().pid());
    let cpu = |pids: &[u32]| pids.iter().map(|p| cpu_secs(*p)).sum::<f64>();
    let (r0, a0, e0) = (
        revision(&endpoint).await,
        cpu(&pids),
        etcd_pid.map(cpu_secs).unwrap_or(0.0),
    );
    let mut c0 = 0.0;
    for n in &c.nodes {
        c0 += cycles(n).await;
    }
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let secs = t0.elapsed().as_secs_f64();
    let mut c1 = 0.0;
    for n in &c.nodes {
        c1 += cycles(n).await;
    }
    let idle = Idle {
        cycles_per_sec: (c1 - c0) / secs / c.nodes.len() as f64,
        revisions_per_sec: (revision(&endpoint).await - r0) as f64 / secs,
        agents_cpu: (cpu(&pids) - a0) / secs,
        etcd_cpu: (etcd_pid.map(cpu_secs).unwrap_or(0.0) - e0) / secs,
    };
    c.shutdown().await;
    Ok(idle)
}

#[tokio::main]
async fn main() {
    let secs: u64 = std::env::var("PRAETOR_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let runs: usize = std::env::var("PRAETOR_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut binaries = vec![("this build", binary())];
    if let Ok(b) = std::env::var("PRAETOR_BENCH_BASELINE") {
        binaries.push(("baseline", PathBuf::from(b)));
    }
    let window = Duration::from_secs(secs);
    let mut results: Vec<(&str, Vec<Idle>)> = binaries.iter().map(|(n, _)| (*n, vec![])).collect();
    // Alternate the binaries run by run, so both see the same machine state.
    for run in 0..runs {
        for (i, (name, bin)) in binaries.iter().enumerate() {
            match measure(bin, window).await {
                Ok(m) => {
                    println!("run {} {name}: {m:?}", run + 1);
                    results[i].1.push(m);
                }
                Err(e) => println!("run {} {name}: failed: {e}", run + 1),
            }
        }
    }
    println!();
    println!(
        "idle 3-member cluster, ttl 10 s, loop_wait 2 s, one etcd, {secs} s windows, medians of {runs} runs"
    );
    println!("| binary | HA cycles/s per agent | etcd revisions/s | 3 agents, CPU share | etcd, CPU share |");
    println!("|---|---|---|---|---|");
    let mut medians = vec![];
    for (name, ms) in &results {
        if ms.is_empty() {
            continue;
        }
        let m = Idle {
            cycles_per_sec: median(ms.iter().map(|m| m.cycles_per_sec).collect()),
            revisions_per_sec: median(ms.iter().map(|m| m.revisions_per_sec).collect()),
            agents_cpu: median(ms.iter().map(|m| m.agents_cpu).collect()),
            etcd_cpu: median(ms.iter().map(|m| m.etcd_cpu).collect()),
        };
        println!(
            "| {name} | {:.2} | {:.2} | {:.2}% | {:.2}% |",
            m.cycles_per_sec,
            m.revisions_per_sec,
            m.agents_cpu * 100.0,
            m.etcd_cpu * 100.0
        );
        medians.push(m);
    }
    if let [this, base] = medians[..] {
        let ratio = |a: f64, b: f64| if a > 0.0 { b / a } else { f64::INFINITY };
        println!(
            "baseline / this build: cycles x{:.1}, revisions x{:.1}, agents' CPU x{:.1}, etcd's CPU x{:.1}",
            ratio(this.cycles_per_sec, base.cycles_per_sec),
            ratio(this.revisions_per_sec, base.revisions_per_sec),
            ratio(this.agents_cpu, base.agents_cpu),
            ratio(this.etcd_cpu, base.etcd_cpu)
        );
    }
}
