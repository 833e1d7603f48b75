//! Helpers shared by the acceptance tests: start a cluster, connect, write and read rows.

#![allow(dead_code)]

use std::time::Duration;

pub use praetor_harness::cluster::{ClusterOptions, LocalCluster, SUPERUSER, SUPERUSER_PASSWORD};
pub use praetor_harness::wait_for;

/// The praetor binary cargo built for these tests.
pub fn binary() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_praetor"))
}

/// Starts a cluster with `options` and waits until it has a leader and every other member streams.
/// On failure the cluster's directory is kept and its path is in the error.
pub async fn healthy_cluster(options: ClusterOptions) -> LocalCluster {
    let replicas = options.nodes - 1;
    let mut c = LocalCluster::start(&binary(), options)
        .await
        .expect("cluster processes start");
    if let Err(e) = c.wait_healthy(replicas, Duration::from_secs(120)).await {
        let kept = c.work.keep();
        panic!(
            "cluster did not become healthy: {e}\nlogs kept in {}",
            kept.display()
        );
    }
    c
}

/// A libpq key=value string for 127.0.0.1:`port` as the superuser.
pub fn dsn(port: u16) -> String {
    format!(
        "host=127.0.0.1 port={port} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=5"
    )
}

/// Connects with tokio-postgres (no TLS) and drives the connection in the background.
pub async fn connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&dsn(port), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Connects, retrying until `timeout`.
pub async fn connect_retry(port: u16, timeout: Duration) -> tokio_postgres::Client {
    wait_for(&format!("a connection to port {port}"), timeout, || async {
        connect(port).await.map_err(|e| e.to_string())
    })
    .await
    .expect("connect")
}

/// Creates table `t (id int primary key)` and inserts ids `from..to` one per statement (each one a
/// committed, acknowledged write). Returns the ids acknowledged.
pub async fn insert_rows(client: &tokio_postgres::Client, from: i32, to: i32) -> Vec<i32> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS t (id int PRIMARY KEY, at timestamptz DEFAULT now())",
        )
        .await
        .expect("create table");
    let mut acked = Vec::new();
    for id in from..to {
        client
            .execute("INSERT INTO t (id) VALUES ($1)", &[&id])
            .await
            .expect("insert");
        acked.push(id);
    }
    acked
}

/// All ids in `t`.
pub async fn read_ids(client: &tokio_postgres::Client) -> Vec<i32> {
    client
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .expect("select ids")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Prints each node's log tail when a test fails (call in a failure path).
pub fn dump_logs(c: &LocalCluster) {
    for n in &c.nodes {
        let log = n.log();
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        eprintln!("===== {} =====", n.name);
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
    if let Some(p) = &c.proxy {
        eprintln!("===== proxy =====\n{}", p.log());
    }
}
