//! `praetor demo`: a real three-node cluster on this machine, for a first look.
//!
//! Starts etcd, three agents (each bootstrapping or cloning its PostgreSQL) and the proxy under a fresh
//! temporary directory on 127.0.0.1, prints how to connect, and on Ctrl-C (or SIGTERM) stops them all
//! and removes the directory. When run as root, PostgreSQL runs as the `postgres` user.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use praetor_harness::cluster::{ClusterOptions, LocalCluster, SUPERUSER, SUPERUSER_PASSWORD};

/// Arguments of `praetor demo`.
#[derive(Args)]
pub struct DemoArgs {
    /// Number of PostgreSQL nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Leader lock TTL in seconds (how long a dead leader keeps the lock).
    #[arg(long, default_value_t = 10)]
    ttl: u32,
    /// Keep the temporary directory (data, logs) after stopping.
    #[arg(long)]
    keep: bool,
}

/// Runs the demo until Ctrl-C.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.nodes == 0 {
        bail!("--nodes must be at least 1");
    }
    let etcd = praetor_harness::etcd_binary();
    if which(&etcd).is_none() {
        bail!(
            "{} not found: install etcd (scripts/setup does it: sudo scripts/setup)",
            etcd.display()
        );
    }
    let pg = praetor_harness::pg_bin_dir();
    if !pg.join("postgres").is_file() {
        bail!(
            "PostgreSQL not found in {}: install postgresql-15 (scripts/setup does it)",
            pg.display()
        );
    }
    let exe = std::env::current_exe().context("cannot find the praetor binary")?;
    let options = ClusterOptions {
        scope: "demo".into(),
        nodes: args.nodes,
        ttl: args.ttl.max(4),
        loop_wait: 1,
        retry_timeout: ((args.ttl.max(4) - 1) / 3).clamp(1, 10),
        ..Default::default()
    };
    println!(
        "Starting etcd, {} PostgreSQL nodes and the proxy ...",
        args.nodes
    );
    let mut cluster = LocalCluster::start(&exe, options)
        .await
        .map_err(anyhow::Error::msg)?;
    let dir = cluster.work.path().to_path_buf();
    let leader = match cluster
        .wait_healthy(args.nodes - 1, Duration::from_secs(180))
        .await
    {
        Ok(l) => l,
        Err(e) => {
            cluster.work.keep();
            cluster.shutdown().await;
            bail!(
                "the cluster did not come up: {e}\nlogs are in {}",
                dir.display()
            );
        }
    };
    let proxy = cluster
        .proxy
        .as_ref()
        .map(|p| (p.rw_port, p.ro_port, p.metrics_port))
        .unwrap_or_default();
    let url = |port: u16| {
        format!("postgres://{SUPERUSER}:{SUPERUSER_PASSWORD}@127.0.0.1:{port}/postgres")
    };
    let ctl = format!(
        "{} ctl -c {}",
        exe.display(),
        cluster.nodes[0].config.display()
    );
    println!();
    println!(
        "Praetor demo cluster \"demo\" is up: {} members, leader {leader}, etcd at {}",
        args.nodes, cluster.etcd.endpoint
    );
    println!();
    println!("  read-write (leader):     {}", url(proxy.0));
    println!("  read-only (replicas):    {}", url(proxy.1));
    println!();
    println!("Try:");
    println!(
        "  psql '{}' -c 'CREATE TABLE t (x int); INSERT INTO t VALUES (1)'",
        url(proxy.0)
    );
    println!(
        "  psql '{}' -c 'SELECT pg_is_in_recovery(), * FROM t'",
        url(proxy.1)
    );
    println!(
        "  pgbench -i -s 5 '{}' && pgbench -S -T 10 '{}'",
        url(proxy.0),
        url(proxy.0)
    );
    println!("  {ctl} list");
    println!("  {ctl} switchover --force");
    println!("  kill -9 the leader's agent and postgres (see list), and watch the proxy follow the new leader");
    println!();
    println!("Prometheus and REST:");
    println!("  proxy metrics:  http://127.0.0.1:{}/metrics", proxy.2);
    for n in &cluster.nodes {
        println!("  {} REST API:    http://{}/patroni", n.name, n.api_addr());
    }
    println!();
    println!("Data and logs: {}", dir.display());
    println!("Press Ctrl-C to stop everything.");
    wait_for_stop().await;
    println!("Stopping ...");
    cluster.shutdown().await;
    if args.keep {
        let kept = cluster.work.keep();
        println!("Kept {}", kept.display());
    }
    drop(cluster);
    println!("Stopped.");
    Ok(())
}

async fn wait_for_stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn which(program: &std::path::Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_path_buf());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
