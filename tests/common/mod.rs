//! Helpers shared by the acceptance tests: start a cluster, connect, write and read rows.

#![allow(dead_code)]

use std::time::Duration;

pub mod writer;

pub use praetor_harness::cluster::{ClusterOptions, LocalCluster, SUPERUSER, SUPERUSER_PASSWORD};
pub use praetor_harness::wait_for;

/// The praetor binary cargo built for these tests (beside the test executable: see
/// [`praetor_harness::praetor_beside_current_exe`]).
pub fn binary() -> std::path::PathBuf {
    praetor_harness::praetor_beside_current_exe()
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
    try_read_ids(client).await.expect("select ids")
}

/// All ids in `t`, or the error (on a replica: `t` does not exist until it replayed the
/// `CREATE TABLE`, so a wait for rows must take the error as "not yet", not panic on it).
pub async fn try_read_ids(client: &tokio_postgres::Client) -> Result<Vec<i32>, String> {
    client
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .map(|rows| rows.iter().map(|r| r.get(0)).collect())
        .map_err(|e| format!("select ids: {e}"))
}

/// Waits until `client` (a replica) has replayed exactly the rows `acked`, and asserts it.
pub async fn replica_has_rows(client: &tokio_postgres::Client, acked: &[i32]) {
    let ids = wait_for(
        &format!("a replica to replay {} rows", acked.len()),
        Duration::from_secs(30),
        || async {
            let ids = try_read_ids(client).await?;
            if ids.len() == acked.len() {
                Ok(ids)
            } else {
                Err(format!("{} rows", ids.len()))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(ids, acked);
}

/// Waits until the server on `client` can read `table` (a replica replayed its creation).
pub async fn table_readable(client: &tokio_postgres::Client, table: &str) {
    let sql = format!("SELECT 1 FROM {table} LIMIT 1");
    wait_for(
        &format!("{table} to be readable"),
        Duration::from_secs(30),
        || async {
            client
                .query(sql.as_str(), &[])
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        },
    )
    .await
    .unwrap();
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

/// What a `praetor` run printed: exit code, stdout, stderr.
#[derive(Debug)]
pub struct Output {
    /// Exit code (-1 when killed).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `praetor ctl -c <first node's config> ARGS` with `stdin` as input (bounded by 180 s).
pub async fn ctl(c: &LocalCluster, args: &[&str], stdin: &str) -> Output {
    ctl_with(&c.nodes[0].config, args, stdin, &[]).await
}

/// `praetor ctl switchover --leader LEADER --candidate CANDIDATE --force`, asserting it succeeded.
pub async fn ctl_switchover(c: &LocalCluster, leader: &str, candidate: &str) -> Output {
    let out = try_ctl_switchover(c, leader, candidate).await;
    assert_eq!(out.code, 0, "ctl switchover {leader} -> {candidate}: {out}");
    out
}

/// `praetor ctl switchover --leader LEADER --candidate CANDIDATE --force`, whatever its outcome
/// (a test that dumps the logs before it fails).
pub async fn try_ctl_switchover(c: &LocalCluster, leader: &str, candidate: &str) -> Output {
    ctl(
        c,
        &[
            "switchover",
            "--leader",
            leader,
            "--candidate",
            candidate,
            "--force",
        ],
        "",
    )
    .await
}

/// Runs `praetor ctl -c CONFIG ARGS` with `stdin` and extra environment variables.
pub async fn ctl_with(
    config: &std::path::Path,
    args: &[&str],
    stdin: &str,
    env: &[(&str, &str)],
) -> Output {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(binary());
    cmd.arg("ctl")
        .arg("-c")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn praetor ctl");
    let mut input = child.stdin.take().expect("piped stdin");
    let data = stdin.to_string();
    tokio::spawn(async move {
        let _ = input.write_all(data.as_bytes()).await;
    });
    let out = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("praetor ctl {args:?} did not finish within 180 s"))
        .expect("praetor ctl output");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A REST client without TLS or credentials.
pub fn api() -> praetor_agent::api::client::ApiClient {
    praetor_agent::api::client::ApiClient::plain(Duration::from_secs(120))
}

/// `METHOD http://127.0.0.1:<node's api port>PATH` with an optional JSON body (raw text, sent as is).
pub async fn call(
    node: &praetor_harness::cluster::Node,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, String) {
    raw_call(&node.api_addr(), method, path, body, None).await
}

/// An HTTP/1.1 request with a raw body (so malformed JSON can be sent) and optional basic auth.
pub async fn raw_call(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    auth: Option<(&str, &str)>,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the REST API");
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    if let Some((u, p)) = auth {
        req.push_str(&format!(
            "Authorization: Basic {}\r\n",
            praetor_agent::api::access::basic_key(u, p)
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("send request");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(150), s.read_to_end(&mut buf))
        .await
        .expect("REST answer in time")
        .expect("read answer");
    let text = String::from_utf8_lossy(&buf).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The cluster read straight from the DCS named in the first node's configuration.
pub async fn dcs_cluster(c: &LocalCluster) -> praetor_dcs::Cluster {
    let loaded = praetor_config::load_file(&c.nodes[0].config).expect("node config");
    let endpoints = loaded.config.dcs_endpoints().expect("DCS in node config");
    let identity = praetor_dcs::DcsIdentity {
        namespace: "/service/".into(),
        scope: c.options.scope.clone(),
        member: None,
        ttl_secs: 30,
        request_timeout_secs: 5,
    };
    // Retried: a DCS of three answers "leader changed" for a moment after losing its leader.
    wait_for("a read of the DCS", Duration::from_secs(20), || async {
        let dcs = praetor_dcs::connect(&endpoints, identity.clone())
            .await
            .map_err(|e| format!("open DCS: {e}"))?;
        dcs.load().await.map_err(|e| format!("read DCS: {e}"))
    })
    .await
    .unwrap()
}

/// Waits until `name` leads (holds the lock, runs) and the other members stream from it.
pub async fn wait_leader(c: &LocalCluster, name: &str) {
    let replicas = c.nodes.len() - 1;
    let got = c
        .wait_healthy(replicas, Duration::from_secs(120))
        .await
        .expect("healthy cluster");
    if got != name {
        wait_for(
            &format!("{name} to lead"),
            Duration::from_secs(120),
            || async {
                match c.wait_healthy(replicas, Duration::from_secs(5)).await {
                    Ok(l) if l == name => Ok(()),
                    Ok(l) => Err(format!("{l} leads")),
                    Err(e) => Err(e),
                }
            },
        )
        .await
        .expect("new leader");
    }
}

/// The names of the members other than `leader`, sorted.
pub fn others(c: &LocalCluster, leader: &str) -> Vec<String> {
    c.nodes
        .iter()
        .filter(|n| n.name != leader)
        .map(|n| n.name.clone())
        .collect()
}

// ---- DCS-neutral helpers for the ZooKeeper acceptance tests and the DCS outage tests ----

/// Waits until every replica has replayed the leader's current WAL position (so killing the leader
/// cannot lose an acknowledged row to asynchronous replication).
pub async fn replicas_caught_up(c: &LocalCluster, leader: &str) {
    let lc = connect(c.node(leader).pg_port).await.expect("leader");
    let lsn: String = lc
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("leader LSN")
        .get(0);
    for n in c.nodes.iter().filter(|n| n.name != leader) {
        let client = connect(n.pg_port).await.expect("replica");
        wait_for(
            &format!("{} to replay {lsn}", n.name),
            Duration::from_secs(60),
            || async {
                if replayed(&client, &lsn).await? {
                    Ok(())
                } else {
                    Err("behind".to_string())
                }
            },
        )
        .await
        .expect("replica catches up");
    }
}

/// Whether the server behind `client` (a replica) has replayed WAL up to `lsn` (text form).
async fn replayed(client: &tokio_postgres::Client, lsn: &str) -> Result<bool, String> {
    Ok(client
        .query_one(
            "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
            &[&lsn],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0))
}

/// The leader at the moment every replica has replayed its current WAL position: [`replicas_caught_up`]
/// for a leader read again at each attempt. If the lock moves before a test's fault (a lease lost
/// under load with `ttl` 6 s; CI once found the member first named leader answering "recovery is
/// in progress", cause not found), the member read first is a replica: a test that kills "the
/// leader" must kill the one that leads when the rows it counts are safe.
pub async fn leader_with_replicas_caught_up(c: &LocalCluster) -> String {
    wait_for(
        "a leader whose WAL position every replica replayed",
        Duration::from_secs(120),
        || async {
            let leader = c.leader().await.ok_or("no leader")?;
            let lc = connect(c.node(&leader).pg_port)
                .await
                .map_err(|e| e.to_string())?;
            let lsn: String = lc
                .query_one("SELECT pg_current_wal_lsn()::text", &[])
                .await
                .map_err(|e| format!("{leader}: {e}"))?
                .get(0);
            for n in c.nodes.iter().filter(|n| n.name != leader) {
                let client = connect(n.pg_port).await.map_err(|e| e.to_string())?;
                if !replayed(&client, &lsn).await? {
                    return Err(format!("{} has not replayed {lsn} of {leader}", n.name));
                }
            }
            Ok(leader)
        },
    )
    .await
    .expect("replicas catch up with the leader")
}

/// Tries `INSERT INTO t (id) VALUES (id)` through `port` (a new connection each time) until one is
/// acknowledged; returns how long that took.
pub async fn first_write_through(port: u16, id: i32, timeout: Duration) -> Duration {
    let start = std::time::Instant::now();
    wait_for("a write through the proxy to succeed", timeout, || async {
        let client = connect(port).await.map_err(|e| e.to_string())?;
        client
            .execute("INSERT INTO t (id) VALUES ($1)", &[&id])
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    })
    .await
    .expect("a write goes through");
    start.elapsed()
}

/// `Some(true)` when the PostgreSQL on `port` accepts writes (not in recovery), `Some(false)` when it
/// is in recovery, `None` when it cannot be reached.
pub async fn is_primary(port: u16) -> Option<bool> {
    let client = connect(port).await.ok()?;
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .ok()?
        .get(0);
    Some(!in_recovery)
}

/// The `dcs_last_seen` (Unix seconds) the agent of `node` reports on `GET /patroni`: when it last read
/// the DCS.
pub async fn dcs_last_seen(node: &praetor_harness::cluster::Node) -> Option<i64> {
    let (_, body) = praetor_harness::http_get(&node.api_addr(), "/patroni")
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["dcs_last_seen"].as_i64()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// The timeline `/cluster` reports for member `name`.
pub async fn member_timeline(c: &LocalCluster, name: &str) -> Option<u64> {
    let cluster = c.cluster_json().await.ok()?;
    cluster["members"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?["timeline"]
        .as_u64()
}

/// Waits (up to `timeout`) until a member other than `old` holds the leader key; its name.
pub async fn new_leader_other_than(c: &LocalCluster, old: &str, timeout: Duration) -> String {
    wait_for("a new leader", timeout, || async {
        match c.leader().await {
            Some(l) if l != old => Ok(l),
            other => Err(format!("leader: {other:?}")),
        }
    })
    .await
    .unwrap()
}
