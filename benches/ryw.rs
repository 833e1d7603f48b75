//! Read-your-writes on the auto port: what it costs.
//!
//! A two-member cluster (leader and one streaming replica, etcd, agents) and two `praetor proxy`
//! processes on it, one with `read_your_writes` on (the default) and one with it off. A pgbench
//! script of one autocommit `INSERT` followed by two `SELECT`s of that row runs through each auto
//! port in turn (on, off, on, off, ...), and the bench prints the median TPS of each, their ratio,
//! and the share of the reads each proxy served from the replica (its
//! `praetor_proxy_transactions_total` by target, minus the script's writes) and where
//! read-your-writes sent the reads after a write (`praetor_proxy_read_your_writes_total`).
//!
//! Nothing is asserted: speed is measured, not tested. Environment: `PRAETOR_BENCH_SECS` (10 per
//! run), `PRAETOR_BENCH_CLIENTS` (8), `PRAETOR_BENCH_THREADS` (2), `PRAETOR_BENCH_ROUNDS` (3),
//! `PRAETOR_BENCH_APPLY_DELAY_MS` (the replica's `recovery_min_apply_delay`, 0 by default: plain
//! streaming replication).
//!
//! Run: `cargo bench --bench ryw`.

use std::process::Command;
use std::time::Duration;

use praetor_harness::cluster::{ClusterOptions, LocalCluster, SUPERUSER, SUPERUSER_PASSWORD};
use praetor_harness::proxy::FullProxy;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Runs pgbench on `port` with `args` as the superuser; its TPS.
fn pgbench(port: u16, args: &[String]) -> Result<f64, String> {
    let out = Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
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

/// The proxy's counters this bench reads: units on the leader and on replicas, and reads after a
/// write by read-your-writes route (replica, replica_asked, leader).
async fn counters(proxy: &FullProxy) -> [f64; 5] {
    let text = proxy.metrics().await.expect("metrics");
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    };
    [
        value("praetor_proxy_transactions_total{target=\"leader\"} "),
        value("praetor_proxy_transactions_total{target=\"replica\"} "),
        value("praetor_proxy_read_your_writes_total{route=\"replica\"} "),
        value("praetor_proxy_read_your_writes_total{route=\"replica_asked\"} "),
        value("praetor_proxy_read_your_writes_total{route=\"leader\"} "),
    ]
}

fn main() {
    let secs = env_or("PRAETOR_BENCH_SECS", 10);
    let clients = env_or("PRAETOR_BENCH_CLIENTS", 8);
    let threads = env_or("PRAETOR_BENCH_THREADS", 2);
    let rounds = env_or("PRAETOR_BENCH_ROUNDS", 3).max(1);
    let delay_ms = env_or("PRAETOR_BENCH_APPLY_DELAY_MS", 0);
    let binary = praetor_harness::praetor_beside_current_exe();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    rt.block_on(async move {
        let options = ClusterOptions {
            nodes: 2,
            proxy: false,
            scope: "rywbench".into(),
            ..ClusterOptions::default()
        };
        let c = LocalCluster::start(&binary, options)
            .await
            .expect("cluster processes start");
        c.wait_healthy(1, Duration::from_secs(180))
            .await
            .expect("a leader and a streaming replica");
        if delay_ms > 0 {
            // Through the dynamic configuration, as a DBA would (replicas only, as in Patroni).
            let set = Command::new(&c.binary)
                .arg("ctl")
                .arg("-c")
                .arg(&c.nodes[0].config)
                .args(["edit-config", "-s"])
                .arg(format!(
                    "postgresql.recovery_conf.recovery_min_apply_delay={delay_ms}ms"
                ))
                .arg("--force")
                .output()
                .expect("run praetor ctl");
            assert!(set.status.success(), "{set:?}");
            // The agents apply it at their next loop.
            std::thread::sleep(Duration::from_secs(15));
        }
        let on = FullProxy::start(&c, "ryw-on", "").await.expect("proxy on");
        let off = FullProxy::start(&c, "ryw-off", "    read_your_writes: false\n")
            .await
            .expect("proxy off");
        let dir = c.work.path().to_path_buf();
        let script = dir.join("ryw.sql");
        std::fs::write(
            &script,
            "\\set id random(1, 2000000000)\n\
             INSERT INTO ryw_bench VALUES (:id) ON CONFLICT DO NOTHING;\n\
             SELECT count(*) FROM ryw_bench WHERE id = :id;\n\
             SELECT count(*) FROM ryw_bench WHERE id = :id;\n",
        )
        .expect("write the pgbench script");
        let leader = c.leader().await.expect("leader");
        let create = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &c.node(&leader).pg_port.to_string()])
            .args(["-U", SUPERUSER, "-d", "postgres", "-v", "ON_ERROR_STOP=1"])
            .args(["-c", "CREATE TABLE ryw_bench (id int PRIMARY KEY)"])
            .env("PGPASSWORD", SUPERUSER_PASSWORD)
            .output()
            .expect("run psql");
        assert!(create.status.success(), "{create:?}");
        // Let the replica replay the table before reads go there.
        std::thread::sleep(Duration::from_millis(500 + delay_ms));
        let args: Vec<String> = [
            "-n".to_string(),
            "-f".into(),
            script.display().to_string(),
            "-T".into(),
            secs.to_string(),
            "-c".into(),
            clients.to_string(),
            "-j".into(),
            threads.to_string(),
        ]
        .into();
        let mut tps = [Vec::new(), Vec::new()];
        let mut totals = [[0.0; 5]; 2];
        for round in 0..rounds {
            for (k, proxy) in [&on, &off].into_iter().enumerate() {
                let before = counters(proxy).await;
                let t = pgbench(proxy.auto_port, &args).unwrap_or_else(|e| panic!("{e}"));
                let after = counters(proxy).await;
                for i in 0..5 {
                    totals[k][i] += after[i] - before[i];
                }
                eprintln!(
                    "round {round} read_your_writes {}: {t:.0} tps",
                    ["on", "off"][k]
                );
                tps[k].push(t);
            }
        }
        let (m_on, m_off) = (median(&mut tps[0]), median(&mut tps[1]));
        println!(
            "read_your_writes bench: {clients} clients, {secs} s x {rounds} rounds, apply delay {delay_ms} ms, script INSERT + 2 SELECT (autocommit)"
        );
        println!(
            "median tps: on {m_on:.0}, off {m_off:.0}, on/off {:.3}",
            m_on / m_off
        );
        for (k, name) in ["on", "off"].iter().enumerate() {
            let [leader_units, replica_units, r, ra, l] = totals[k];
            // Each script run is one write and two reads: reads = units - writes.
            let writes = (leader_units + replica_units) / 3.0;
            let reads = leader_units + replica_units - writes;
            println!(
                "read_your_writes {name}: {:.1}% of reads on the replica; reads after a write: {r:.0} replica (known), {ra:.0} replica (asked), {l:.0} leader",
                100.0 * replica_units / reads.max(1.0)
            );
        }
        drop((on, off));
        drop(c);
    });
}
