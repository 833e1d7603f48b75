//! The proxy on a real replicated cluster: etcd, two agents (a leader and a streaming replica) and a
//! `praetor proxy` process with every listener. Run one at a time like the acceptance tests
//! (`--test-threads=1`).
//!
//! - the auto port sends reads to the replica and writes, `SELECT ... FOR UPDATE` and read-write
//!   transactions to the leader, over SCRAM;
//! - a replica whose replay is paused falls behind `max_replica_lag` and stops getting reads, then
//!   gets them again once it catches up;
//! - a switchover leaves no proxy connection to the old leader, the proxy acknowledges the new route
//!   in the DCS, idle auto-port sessions move to the new leader, and no acknowledged write is lost
//!   or lands on the old leader after the new one took writes (by row order, and by WAL: the old
//!   leader streams the new timeline from a point not past its fork).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use praetor_harness::proxy::FullProxy;
use tokio_postgres::{Client, SimpleQueryMessage};

const DEADLINE: Duration = Duration::from_secs(60);

/// A two-member cluster (leader and one streaming replica) without the default proxy.
async fn pair() -> LocalCluster {
    healthy_cluster(ClusterOptions {
        nodes: 2,
        proxy: false,
        scope: "proxytest".into(),
        ..ClusterOptions::default()
    })
    .await
}

/// The first column of the first row of a simple query.
async fn first(client: &Client, sql: &str) -> Result<String, String> {
    let rows = client.simple_query(sql).await.map_err(|e| e.to_string())?;
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))
}

/// The cluster as the DCS holds it.
async fn dcs_cluster(c: &LocalCluster) -> Result<praetor_dcs::Cluster, String> {
    let yaml = format!("scope: proxytest\n{}", c.etcd.yaml_section());
    let loaded = praetor_config::parse_str(&yaml).map_err(|e| e.to_string())?;
    let endpoints = loaded.config.dcs_endpoints().map_err(|e| e.to_string())?;
    let dcs = praetor_dcs::connect(
        &endpoints,
        praetor_dcs::DcsIdentity {
            namespace: "/service/".into(),
            scope: "proxytest".into(),
            member: None,
            ttl_secs: 10,
            request_timeout_secs: 3,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    dcs.load().await.map_err(|e| e.to_string())
}

async fn admin(proxy: &FullProxy, sql: &str) -> String {
    let client = connect(proxy.admin_port).await.expect("admin console");
    let rows = client.simple_query(sql).await.expect("admin command");
    rows.iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn auto_port_splits_reads_from_writes_and_a_paused_replica_stops_getting_reads() {
    let c = pair().await;
    let leader = c.leader().await.expect("leader");
    let replica = c.nodes.iter().find(|n| n.name != leader).unwrap();
    // Read-your-writes off: this test checks the split and the lag rule, with reads right after the
    // session's writes (read_your_writes_every_select_sees_its_insert covers the setting).
    let proxy = FullProxy::start(
        &c,
        "split",
        "    max_replica_lag: 1MB\n    read_your_writes: false\n",
    )
    .await
    .unwrap();
    let auto = connect_retry(proxy.auto_port, DEADLINE).await;
    wait_for("reads on the replica", DEADLINE, || async {
        match first(&auto, "SELECT pg_is_in_recovery()").await?.as_str() {
            "t" => Ok(()),
            other => Err(format!("pg_is_in_recovery = {other}")),
        }
    })
    .await
    .unwrap();
    assert_eq!(first(&auto, "SELECT 1").await.unwrap(), "1");
    auto.batch_execute("CREATE TABLE big (id int PRIMARY KEY, pad text)")
        .await
        .unwrap();
    assert_eq!(
        first(
            &auto,
            "INSERT INTO big VALUES (0, '') RETURNING pg_is_in_recovery()"
        )
        .await
        .unwrap(),
        "f",
        "INSERT on the leader"
    );
    assert_eq!(
        first(&auto, "SELECT pg_is_in_recovery() FROM big FOR UPDATE")
            .await
            .unwrap(),
        "f",
        "SELECT ... FOR UPDATE on the leader"
    );
    auto.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        first(&auto, "SELECT pg_is_in_recovery()").await.unwrap(),
        "f",
        "a read-write transaction runs on the leader from its first statement"
    );
    auto.batch_execute("INSERT INTO big VALUES (1, 'x'); COMMIT")
        .await
        .unwrap();
    // A hot standby refuses to read an unlogged table (0A000) and forces transaction_read_only:
    // the auto port runs such a read again on the leader and asks the leader for the setting, so
    // the client sees what a direct connection to the leader shows. (The table needs its creation
    // replayed first: until then the replica's error is one the leader would not give either.)
    auto.batch_execute("CREATE UNLOGGED TABLE scratch (x int); INSERT INTO scratch VALUES (7)")
        .await
        .unwrap();
    wait_for(
        "the unlogged table read through the auto port",
        DEADLINE,
        || async {
            match first(&auto, "SELECT x FROM scratch").await?.as_str() {
                "7" => Ok(()),
                other => Err(format!("x = {other}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(
        first(&auto, "SHOW transaction_read_only").await.unwrap(),
        "off"
    );
    assert_eq!(
        first(&auto, "SELECT pg_is_in_recovery()").await.unwrap(),
        "t",
        "reads still go to the replica"
    );
    // A function called in attribute notation (`o.called_on` is `called_on(o)`) reads as a column
    // to the classifier, so the read goes to the replica, which refuses its INSERT (25006) before
    // any row is sent: the proxy runs the statement on the leader. (Retried until the replica has
    // replayed the function: before that it fails there for a reason the leader would not give.)
    auto.batch_execute(
        "CREATE TABLE one (x int); INSERT INTO one VALUES (1); CREATE TABLE calls (x int);
         CREATE FUNCTION called_on(one) RETURNS boolean VOLATILE LANGUAGE sql AS
           $$ INSERT INTO calls VALUES (1); SELECT pg_is_in_recovery() $$",
    )
    .await
    .unwrap();
    wait_for(
        "a writing function called in attribute notation, run on the leader",
        DEADLINE,
        || async {
            match first(&auto, "SELECT o.called_on FROM one o")
                .await?
                .as_str()
            {
                "f" => Ok(()),
                other => Err(format!("pg_is_in_recovery() = {other}")),
            }
        },
    )
    .await
    .unwrap();

    // Pause replay on the replica and write 3 MB: it falls behind max_replica_lag (1 MB).
    let direct = connect(replica.pg_port).await.unwrap();
    direct
        .batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .unwrap();
    auto.batch_execute(
        "INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(2, 3000) g",
    )
    .await
    .unwrap();
    wait_for("the replica to be too far behind", DEADLINE, || async {
        let topology = admin(&proxy, "SHOW TOPOLOGY").await;
        if topology.contains("too far behind") {
            Ok(())
        } else {
            Err(topology)
        }
    })
    .await
    .unwrap();
    assert_eq!(
        first(&auto, "SELECT pg_is_in_recovery()").await.unwrap(),
        "f",
        "reads fall back to the leader"
    );
    let fresh = connect_retry(proxy.ro_port, DEADLINE).await;
    assert_eq!(
        first(&fresh, "SELECT pg_is_in_recovery()").await.unwrap(),
        "f",
        "the read-only port too"
    );

    direct
        .batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .unwrap();
    wait_for("reads on the replica again", DEADLINE, || async {
        match first(&auto, "SELECT pg_is_in_recovery()").await?.as_str() {
            "t" => Ok(()),
            other => Err(format!("pg_is_in_recovery = {other}")),
        }
    })
    .await
    .unwrap();
    // Within the lag limit the replica may still miss the last rows; it catches up.
    wait_for("the replica to replay every row", DEADLINE, || async {
        match first(&auto, "SELECT count(*) FROM big").await?.as_str() {
            "3001" => Ok(()),
            n => Err(format!("{n} rows")),
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_switchover_fences_the_old_leader_acknowledges_in_the_dcs_and_loses_no_write() {
    let c = pair().await;
    let old = c.leader().await.expect("leader");
    let candidate = c.nodes.iter().find(|n| n.name != old).unwrap().name.clone();
    let old_port = c.node(&old).pg_port;
    let new_port = c.node(&candidate).pg_port;
    let proxy = FullProxy::start(&c, "fence", "").await.unwrap();

    // The proxy acknowledges its route before using it.
    wait_for("the proxy's route in the DCS", DEADLINE, || async {
        let cluster = dcs_cluster(&c).await?;
        match cluster.proxies.get("fence") {
            Some(p) if p.leader.as_deref() == Some(old.as_str()) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    assert!(!dcs_cluster(&c).await.unwrap().proxies_fenced_from(&old));

    let setup = connect_retry(proxy.rw_port, DEADLINE).await;
    setup
        .batch_execute("CREATE TABLE w (id int PRIMARY KEY, port int)")
        .await
        .unwrap();
    let rw_session = connect_retry(proxy.rw_port, DEADLINE).await;
    let idle_auto = connect_retry(proxy.auto_port, DEADLINE).await;
    assert_eq!(
        first(&idle_auto, "SELECT txid_current() * 0 + inet_server_port()")
            .await
            .unwrap(),
        old_port.to_string()
    );

    // A writer through the auto port: one autocommit INSERT after another, each recording the
    // server that ran it. `acked` holds the ids acknowledged, in order; `errors` what failed.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<i32>::new()));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, acked, errors) = (stop.clone(), acked.clone(), errors.clone());
        let port = proxy.auto_port;
        tokio::spawn(async move {
            let mut client = connect_retry(port, DEADLINE).await;
            let mut id = 0;
            while !stop.load(Ordering::SeqCst) {
                id += 1;
                let sql = format!("INSERT INTO w VALUES ({id}, inet_server_port())");
                match client.simple_query(&sql).await {
                    Ok(_) => acked.lock().unwrap().push(id),
                    Err(e) => {
                        errors.lock().unwrap().push(e.to_string());
                        if e.is_closed() {
                            client = connect_retry(port, DEADLINE).await;
                        }
                    }
                }
            }
        })
    };
    wait_for("writes through the auto port", DEADLINE, || async {
        let n = acked.lock().unwrap().len();
        if n >= 20 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await
    .unwrap();

    let out = try_ctl_switchover(&c, &old, &candidate).await;
    if out.code != 0 {
        dump_logs(&c);
        eprintln!("===== proxy =====\n{}", proxy.log());
    }
    assert_eq!(out.code, 0, "{out}");

    // The proxy moved its route to the new leader in the DCS and holds no connection to the old
    // leader as leader; the old leader has no session from the proxy's read-write port left.
    wait_for("the proxy's new route in the DCS", DEADLINE, || async {
        let cluster = dcs_cluster(&c).await?;
        match cluster.proxies.get("fence") {
            Some(p) if p.leader.as_deref() == Some(candidate.as_str()) => {
                if cluster.proxies_fenced_from(&old) {
                    Ok(())
                } else {
                    Err("still routing to the old leader".to_string())
                }
            }
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    let metrics = proxy.metrics().await.unwrap();
    for l in metrics.lines().filter(|l| {
        l.starts_with("praetor_proxy_connections{")
            && l.contains(&format!("backend=\"{old}\""))
            && l.contains("role=\"leader\"")
    }) {
        assert!(l.ends_with(" 0"), "{l}");
    }
    // The idle read-write session logged in with a password the proxy can replay (its SCRAM keys,
    // from `auth_user`'s `auth_query`): it moved to the new leader without an error.
    assert_eq!(
        first(&rw_session, "SELECT inet_server_port()")
            .await
            .expect("the idle read-write session moved to the new leader"),
        new_port.to_string()
    );

    // Writes go on, on the new leader; the idle auto session moved there without an error.
    let before = acked.lock().unwrap().len();
    wait_for("writes on the new leader", DEADLINE, || async {
        let n = acked.lock().unwrap().len();
        if n >= before + 20 {
            Ok(())
        } else {
            Err(format!(
                "{n} acknowledged, errors: {:?}",
                errors.lock().unwrap()
            ))
        }
    })
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    writer.await.unwrap();
    assert_eq!(
        first(&idle_auto, "SELECT txid_current() * 0 + inet_server_port()")
            .await
            .unwrap(),
        new_port.to_string(),
        "the idle auto-port session moved to the new leader"
    );

    // No acknowledged write was lost, and none reached the old leader after the new one took
    // writes: by id, every row on the old leader comes before every row on the new one.
    let new_leader = connect(new_port).await.unwrap();
    let rows = new_leader
        .query("SELECT id, port FROM w ORDER BY id", &[])
        .await
        .unwrap();
    let stored: Vec<(i32, i32)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let stored_ids: std::collections::BTreeSet<i32> = stored.iter().map(|(i, _)| *i).collect();
    for id in acked.lock().unwrap().iter() {
        assert!(stored_ids.contains(id), "acknowledged write {id} was lost");
    }
    let last_on_old = stored
        .iter()
        .filter(|(_, p)| *p == i32::from(old_port))
        .map(|(i, _)| *i)
        .max();
    let first_on_new = stored
        .iter()
        .filter(|(_, p)| *p == i32::from(new_port))
        .map(|(i, _)| *i)
        .min();
    if let (Some(old_max), Some(new_min)) = (last_on_old, first_on_new) {
        assert!(
            old_max < new_min,
            "a write reached the old leader after the new one took writes"
        );
    }
    // The old leader's WAL did not advance past the point where the new leader's timeline forked:
    // it streams the new timeline from where its own WAL ended, which PostgreSQL allows only when
    // that end is not past the fork (otherwise the walreceiver refuses and a rewind is needed).
    let timeline = first(
        &new_leader,
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
    )
    .await
    .unwrap();
    let history = first(
        &new_leader,
        &format!("SELECT pg_read_file('pg_wal/{timeline}.history')"),
    )
    .await
    .unwrap();
    let timeline = i64::from_str_radix(&timeline, 16).unwrap();
    let fork_lsn = history
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .and_then(|l| l.split('\t').nth(1))
        .unwrap_or_else(|| panic!("no fork point in the timeline history: {history:?}"))
        .to_string();
    let old_leader = connect_retry(old_port, DEADLINE).await;
    wait_for("the old leader streaming the new timeline", DEADLINE, || async {
        let state = first(
            &old_leader,
            &format!(
                "SELECT status || ' ' || received_tli || ' ' || (receive_start_lsn <= '{fork_lsn}') \
                 FROM pg_stat_wal_receiver"
            ),
        )
        .await?;
        if state == format!("streaming {timeline} true") {
            Ok(())
        } else {
            Err(format!("{state} (fork at {fork_lsn} on the way to timeline {timeline})"))
        }
    })
    .await
    .unwrap();

    let errors = errors.lock().unwrap().clone();
    eprintln!(
        "switchover through the auto port: {} writes acknowledged, {} client-visible errors: {errors:?}; timeline {timeline} forked at {fork_lsn}",
        stored.len(),
        errors.len(),
    );
    assert!(
        errors.is_empty(),
        "the auto port's writer saw errors in a planned switchover: {errors:?}\n===== proxy =====\n{}",
        proxy.log()
    );
    proxy
        .metrics()
        .await
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("praetor_proxy_fencing_acks_total"))
        .for_each(|l| assert!(!l.ends_with(" 0"), "{l}"));
}

/// Runs pgbench with `args` on `port` (the superuser, over TCP) and returns its exit status and
/// output (stdout then stderr).
async fn pgbench(port: u16, args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = tokio::process::Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", SUPERUSER])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", SUPERUSER_PASSWORD)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status, text)
}

/// pgbench's count of failed transactions (`number of failed transactions: N (...)`).
fn failed_transactions(output: &str) -> Option<u64> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("number of failed transactions: "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A client of the proxy's `port` (as the superuser, with its password) that opened a transaction
/// on the leader and leaves it open, and the task of its connection (which ends with the session).
async fn open_transaction(
    port: u16,
) -> (
    Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(SUPERUSER)
        .password(SUPERUSER_PASSWORD)
        .dbname("postgres")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("a client of port {port}: {e}"));
    let conn = tokio::spawn(conn);
    client
        .batch_execute(
            "BEGIN; INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 0, now())",
        )
        .await
        .unwrap_or_else(|e| panic!("a transaction on port {port}: {e}"));
    (client, conn)
}

/// Asserts that the session of `client` (from [`open_transaction`], on the `port` named) ended with
/// the proxy's FATAL 57P01 naming `drain_timeout` (`secs`); tokio-postgres returns the FATAL from
/// the connection's task.
async fn assert_drained(
    port: &str,
    (client, conn): (
        Client,
        tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    ),
    secs: u32,
    proxy: &FullProxy,
) {
    let ended = tokio::time::timeout(DEADLINE, conn)
        .await
        .unwrap_or_else(|_| panic!("{port} port: the held session ends"))
        .unwrap();
    let err = ended.expect_err("the held session ends with an error");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("{port} port: {err:?}\n===== proxy =====\n{}", proxy.log()));
    assert_eq!(
        db.code(),
        &tokio_postgres::error::SqlState::ADMIN_SHUTDOWN,
        "{port} port: {}",
        db.message()
    );
    assert!(
        db.message()
            .contains(&format!("did not finish within drain_timeout ({secs} s)")),
        "{port} port: {}",
        db.message()
    );
    assert!(client.is_closed(), "{port} port");
}

/// Issue 17: a planned switchover under pgbench (8 clients, tpcb-like, no retries) on the
/// read-write and the auto port, every client logged in with a SCRAM password (the proxy reads the
/// user's secret from auth_file), fails no transaction: read-write sessions log in to the new
/// leader with the ClientKey the proxy recovered from the login it relayed. A transaction held open
/// on the read-write port and one on the auto port past `drain_timeout` are cancelled, each
/// session ending with 57P01 and a message naming drain_timeout.
///
/// The cluster's `retry_timeout` is raised so that the stepping-down leader's agent waits its full
/// 5 s for transactions in progress (with the harness's 2 s it would wait at most 1.5 s, and its
/// fast stop, not the proxy, would end the held transaction).
#[tokio::test]
async fn a_switchover_under_pgbench_with_passwords_fails_no_transaction_and_cancels_those_past_drain_timeout(
) {
    let c = healthy_cluster(ClusterOptions {
        nodes: 2,
        proxy: false,
        scope: "proxytest".into(),
        ttl: 30,
        retry_timeout: 10,
        ..ClusterOptions::default()
    })
    .await;
    let old = c.leader().await.expect("leader");
    let candidate = c.nodes.iter().find(|n| n.name != old).unwrap().name.clone();
    let leader = connect_retry(c.node(&old).pg_port, DEADLINE).await;
    let secret = first(
        &leader,
        &format!("SELECT rolpassword FROM pg_authid WHERE rolname = '{SUPERUSER}'"),
    )
    .await
    .unwrap();
    assert!(secret.starts_with("SCRAM-SHA-256$"), "{secret}");
    let userlist = c.work.path().join("userlist.txt");
    std::fs::write(&userlist, format!("\"{SUPERUSER}\" \"{secret}\"\n")).unwrap();
    let proxy = FullProxy::start(
        &c,
        "zero",
        &format!(
            "    auth_file: {}\n    drain_timeout: 2\n",
            userlist.display()
        ),
    )
    .await
    .unwrap();
    connect_retry(proxy.rw_port, DEADLINE).await;
    let (status, out) = pgbench(proxy.rw_port, &["-i", "-s", "1", "-q"]).await;
    assert!(status.success(), "pgbench -i: {out}");

    // tpcb-like, 8 clients on each port, no retries (`--max-tries` unset: 1): any error a client
    // sees fails its transaction, and an error that ends its connection aborts the client.
    const RUN: &[&str] = &["-n", "-c", "8", "-j", "2", "-T", "25"];
    let rw = tokio::spawn(pgbench(proxy.rw_port, RUN));
    let auto = tokio::spawn(pgbench(proxy.auto_port, RUN));
    wait_for("pgbench transactions on the leader", DEADLINE, || async {
        let n: i64 = first(&leader, "SELECT count(*) FROM pgbench_history")
            .await?
            .parse()
            .map_err(|e| format!("{e}"))?;
        if n >= 200 {
            Ok(())
        } else {
            Err(format!("{n} transactions"))
        }
    })
    .await
    .unwrap();
    // A transaction left open on each port (as the superuser, with its password): the switchover
    // gives it drain_timeout, then the proxy cancels it.
    let held_rw = open_transaction(proxy.rw_port).await;
    let held_auto = open_transaction(proxy.auto_port).await;
    // The candidate's lag in the DCS trails by up to `loop_wait`: a switchover refused as lagging
    // (412, nothing done) is asked again.
    wait_for("a switchover the leader accepts", DEADLINE, || async {
        let args = [
            "switchover",
            "--leader",
            old.as_str(),
            "--candidate",
            candidate.as_str(),
            "--force",
        ];
        let out = ctl(&c, &args, "").await;
        if out.code == 0 {
            Ok(())
        } else {
            Err(format!("{out}"))
        }
    })
    .await
    .unwrap();
    wait_for(
        "the proxy's route to the new leader in the DCS",
        DEADLINE,
        || async {
            let cluster = dcs_cluster(&c).await?;
            match cluster.proxies.get("zero") {
                Some(p) if p.leader.as_deref() == Some(candidate.as_str()) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    let new_leader = connect_retry(c.node(&candidate).pg_port, DEADLINE).await;
    let at_switchover: i64 = first(&new_leader, "SELECT count(*) FROM pgbench_history")
        .await
        .unwrap()
        .parse()
        .unwrap();

    // The held transactions' sessions ended with the proxy's FATAL.
    assert_drained("read-write", held_rw, 2, &proxy).await;
    assert_drained("auto", held_auto, 2, &proxy).await;

    let (rw_status, rw_out) = rw.await.unwrap();
    let (auto_status, auto_out) = auto.await.unwrap();
    let report = format!(
        "===== read-write port =====\n{rw_out}\n===== auto port =====\n{auto_out}\n===== proxy =====\n{}",
        proxy.log()
    );
    eprintln!(
        "pgbench during a switchover: read-write port {:?} failed, auto port {:?} failed",
        failed_transactions(&rw_out),
        failed_transactions(&auto_out)
    );
    let failed = |status: &std::process::ExitStatus, out: &str| {
        !status.success() || failed_transactions(out) != Some(0)
    };
    if failed(&rw_status, &rw_out) || failed(&auto_status, &auto_out) {
        dump_logs(&c);
        for n in &c.nodes {
            for l in n.log().lines().filter(|l| l.contains("switchover")) {
                eprintln!("{}: {l}", n.name);
            }
        }
    }
    for (port, status, out) in [
        ("read-write", rw_status, &rw_out),
        ("auto", auto_status, &auto_out),
    ] {
        assert!(status.success(), "{port} port: pgbench aborted\n{report}");
        assert_eq!(
            failed_transactions(out),
            Some(0),
            "{port} port: failed transactions\n{report}"
        );
    }
    let after: i64 = first(&new_leader, "SELECT count(*) FROM pgbench_history")
        .await
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        after > at_switchover,
        "transactions went on on the new leader ({at_switchover} -> {after})\n{report}"
    );
}

/// How many insert-then-select pairs [`read_your_writes_every_select_sees_its_insert`] runs per
/// proxy: `PRAETOR_RYW_PAIRS`, 300 by default (10,000 for the full check, outside CI).
fn ryw_pairs() -> usize {
    std::env::var("PRAETOR_RYW_PAIRS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// `praetor_proxy_read_your_writes_total{route="..."}` from the proxy's metrics.
async fn ryw_count(proxy: &FullProxy, route: &str) -> u64 {
    let prefix = format!("praetor_proxy_read_your_writes_total{{route=\"{route}\"}} ");
    proxy
        .metrics()
        .await
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0)
}

/// Read-your-writes on the auto port, with the replica applying WAL 200 ms late
/// (`recovery_min_apply_delay` through the cluster's dynamic configuration): each of N
/// insert-then-select pairs in autocommit sees its insert through a proxy with the default
/// (`read_your_writes` on); through a proxy with it off, some do not (the replica is fresh by the
/// DCS and gets the reads), which is the failure the setting prevents. Sessions that did not write,
/// and a writer once the replica has replayed its commit, still read the replica.
#[tokio::test]
async fn read_your_writes_every_select_sees_its_insert() {
    let pairs = ryw_pairs();
    let c = pair().await;
    let leader = c.leader().await.expect("leader");
    let replica = c.nodes.iter().find(|n| n.name != leader).unwrap();
    let set = ctl(
        &c,
        &[
            "edit-config",
            "-s",
            "postgresql.recovery_conf.recovery_min_apply_delay=200ms",
            "--force",
        ],
        "",
    )
    .await;
    assert_eq!(set.code, 0, "{set}");
    let direct = connect_retry(replica.pg_port, DEADLINE).await;
    wait_for("the replica to apply WAL 200 ms late", DEADLINE, || async {
        match first(&direct, "SHOW recovery_min_apply_delay")
            .await?
            .as_str()
        {
            "200ms" => Ok(()),
            other => Err(format!("recovery_min_apply_delay = {other}")),
        }
    })
    .await
    .unwrap();

    let on = FullProxy::start(&c, "ryw-on", "").await.unwrap();
    let off = FullProxy::start(&c, "ryw-off", "    read_your_writes: false\n")
        .await
        .unwrap();
    let setup = connect_retry(on.auto_port, DEADLINE).await;
    setup
        .batch_execute("CREATE TABLE ryw (id int PRIMARY KEY)")
        .await
        .unwrap();
    wait_for("the table on the replica", DEADLINE, || async {
        first(&direct, "SELECT count(*) FROM ryw").await.map(|_| ())
    })
    .await
    .unwrap();

    let mut misses = Vec::new();
    for (k, proxy) in [&on, &off].into_iter().enumerate() {
        let client = connect_retry(proxy.auto_port, DEADLINE).await;
        wait_for(
            "a session that did not write reads the replica",
            DEADLINE,
            || async {
                match first(&client, "SELECT pg_is_in_recovery()").await?.as_str() {
                    "t" => Ok(()),
                    other => Err(format!("pg_is_in_recovery = {other}")),
                }
            },
        )
        .await
        .unwrap();
        let mut missed = 0;
        for i in 0..pairs {
            let id = k * pairs + i;
            client
                .batch_execute(&format!("INSERT INTO ryw VALUES ({id})"))
                .await
                .unwrap();
            let seen = first(
                &client,
                &format!("SELECT count(*) FROM ryw WHERE id = {id}"),
            )
            .await
            .unwrap();
            if seen != "1" {
                missed += 1;
            }
        }
        misses.push(missed);
        if k == 0 {
            // Once the replica has replayed the session's last commit, its reads go there again.
            wait_for(
                "the writer's reads back on the replica",
                DEADLINE,
                || async {
                    match first(&client, "SELECT pg_is_in_recovery()").await?.as_str() {
                        "t" => Ok(()),
                        other => Err(format!("pg_is_in_recovery = {other}")),
                    }
                },
            )
            .await
            .unwrap();
        }
    }
    let (on_replica, on_asked, on_leader) = (
        ryw_count(&on, "replica").await,
        ryw_count(&on, "replica_asked").await,
        ryw_count(&on, "leader").await,
    );
    eprintln!(
        "{pairs} pairs: misses with read_your_writes {} on, {} off; reads after a write (on): {on_replica} replica, {on_asked} replica after asking, {on_leader} leader",
        misses[0], misses[1]
    );
    assert_eq!(
        misses[0], 0,
        "with read_your_writes every select sees its insert"
    );
    assert!(
        misses[1] > 0,
        "without it a delayed replica misses inserts (else this test cannot fail)"
    );
    assert!(
        on_leader >= pairs as u64,
        "the reads behind the delay went to the leader"
    );
    assert_eq!(
        ryw_count(&off, "leader").await,
        0,
        "a proxy with the setting off never applies it"
    );
}

/// Logs into the admin console at `port` as `user` with `password`.
async fn console_login(
    port: u16,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={port} user={user} password={password} dbname=praetor connect_timeout=5"
        ),
        tokio_postgres::NoTls,
    )
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Every row of an admin command, as strings.
async fn console_rows(console: &Client, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let rows = console
        .simple_query(sql)
        .await
        .map_err(|e| match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        })?;
    Ok(rows
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// The admin console (issue 17, item 5): `admin_users` logging in with SCRAM against the
/// `auth_file`; `SHOW CONFIG`; `PAUSE` returns once the open transaction commits and then holds
/// the next transaction of a read-write, an auto-port and a read-only client, without an error,
/// until `RESUME`; after `RECONNECT` the read-write and read-only clients' next transactions run
/// on new server connections and `WAIT_CLOSE` returns once the old ones closed; `KILL` closes the
/// database's clients and keeps it paused until `RESUME`.
#[tokio::test]
async fn the_admin_console_authenticates_pauses_resumes_reconnects_and_kills() {
    let c = pair().await;
    let userlist = c.work.path().join("userlist.txt");
    praetor_harness::write_file(&userlist, "; PgBouncer's format\n\"ops\" \"s3cret\"\n").unwrap();
    let proxy = FullProxy::start(
        &c,
        "console",
        &format!(
            "    admin_users: [ops]\n    auth_file: {}\n",
            userlist.display()
        ),
    )
    .await
    .unwrap();
    let port = proxy.admin_port;
    for (user, password) in [("ops", "wrong"), (SUPERUSER, SUPERUSER_PASSWORD)] {
        match console_login(port, user, password).await {
            Ok(_) => panic!("{user} with {password:?} logged into the admin console"),
            Err(e) => assert_eq!(
                e.code(),
                Some(&tokio_postgres::error::SqlState::INVALID_PASSWORD),
                "{user}: {e}"
            ),
        }
    }
    let console = console_login(port, "ops", "s3cret")
        .await
        .expect("ops logs in with SCRAM-SHA-256");
    let config = console_rows(&console, "SHOW CONFIG").await.unwrap();
    assert!(
        config
            .iter()
            .any(|r| r[0] == "admin_users" && r[1] == "ops"),
        "{config:?}"
    );
    assert!(
        config
            .iter()
            .any(|r| r[0] == "pool_size" && r[1] == "20" && r[2] == "20" && r[3] == "yes"),
        "{config:?}"
    );

    let rw = connect_retry(proxy.rw_port, DEADLINE).await;
    let auto = connect_retry(proxy.auto_port, DEADLINE).await;
    let ro = connect_retry(proxy.ro_port, DEADLINE).await;
    assert_eq!(first(&rw, "SELECT 1").await.unwrap(), "1");
    assert_eq!(first(&auto, "SELECT 1").await.unwrap(), "1");
    assert_eq!(first(&ro, "SELECT 1").await.unwrap(), "1");

    // PAUSE waits for the running transaction.
    rw.batch_execute("BEGIN; CREATE TABLE paused (x int)")
        .await
        .unwrap();
    let pause = {
        let console = console_login(port, "ops", "s3cret").await.unwrap();
        tokio::spawn(async move { console.simple_query("PAUSE").await.map(|_| ()) })
    };
    // Checked without a sleep: a PAUSE that did not wait could only make this fail.
    assert!(!pause.is_finished(), "PAUSE returned during a transaction");
    rw.batch_execute("COMMIT").await.unwrap();
    tokio::time::timeout(DEADLINE, pause)
        .await
        .expect("PAUSE returns once the transaction committed")
        .unwrap()
        .expect("PAUSE");

    // The three clients' next transactions are held, then run after RESUME.
    let rw_next = tokio::spawn(async move {
        let r = first(
            &rw,
            "INSERT INTO paused VALUES (1) RETURNING 'rw after resume'",
        )
        .await;
        (rw, r)
    });
    let auto_next = tokio::spawn(async move {
        let r = first(&auto, "SELECT 'auto after resume'").await;
        (auto, r)
    });
    let ro_next = tokio::spawn(async move {
        let r = first(&ro, "SELECT 'ro after resume'").await;
        (ro, r)
    });
    wait_for("the three clients held by PAUSE", DEADLINE, || async {
        let clients = console_rows(&console, "SHOW CLIENTS").await?;
        let held: Vec<&str> = clients
            .iter()
            .filter(|r| r[6] == "held")
            .map(|r| r[1].as_str())
            .collect();
        if held.len() == 3 {
            Ok(())
        } else {
            Err(format!("clients: {clients:?}"))
        }
    })
    .await
    .unwrap();
    assert!(!rw_next.is_finished() && !auto_next.is_finished() && !ro_next.is_finished());
    console_rows(&console, "RESUME").await.expect("RESUME");
    let (rw, r) = tokio::time::timeout(DEADLINE, rw_next)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap(), "rw after resume");
    let (auto, r) = tokio::time::timeout(DEADLINE, auto_next)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap(), "auto after resume");
    let (ro, r) = tokio::time::timeout(DEADLINE, ro_next)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.unwrap(), "ro after resume");
    let err = console_rows(&console, "RESUME").await.unwrap_err();
    assert!(err.contains("nothing is paused"), "{err}");

    // RECONNECT: WAIT_CLOSE returns once the read-write and read-only sessions' server connections
    // (opened before) are closed, which happens before their next transactions: these run on new
    // server connections (other backends), the clients staying connected.
    let pids = [
        first(&rw, "SELECT pg_backend_pid()").await.unwrap(),
        first(&ro, "SELECT pg_backend_pid()").await.unwrap(),
    ];
    console_rows(&console, "RECONNECT postgres").await.unwrap();
    let wait_close = {
        let console = console_login(port, "ops", "s3cret").await.unwrap();
        tokio::spawn(async move {
            console
                .simple_query("WAIT_CLOSE postgres")
                .await
                .map(|_| ())
        })
    };
    assert!(
        !wait_close.is_finished(),
        "WAIT_CLOSE returned with the old connection open"
    );
    for (client, pid) in [(&rw, &pids[0]), (&ro, &pids[1])] {
        let now = first(client, "SELECT pg_backend_pid()").await.unwrap();
        assert_ne!(
            &now, pid,
            "the transaction after RECONNECT ran on the old connection"
        );
    }
    tokio::time::timeout(DEADLINE, wait_close)
        .await
        .expect("WAIT_CLOSE returns once the old server connections closed")
        .unwrap()
        .expect("WAIT_CLOSE");

    // KILL closes the database's clients at once, a held one included (what it held never
    // runs), and keeps the database paused.
    let rw = connect_retry(proxy.rw_port, DEADLINE).await;
    assert_eq!(first(&rw, "SELECT 1").await.unwrap(), "1");
    console_rows(&console, "PAUSE postgres")
        .await
        .expect("PAUSE db");
    let held = tokio::spawn(async move {
        let r = first(&rw, "INSERT INTO paused VALUES (2) RETURNING 'ran'").await;
        (rw, r)
    });
    wait_for("the read-write client held", DEADLINE, || async {
        let clients = console_rows(&console, "SHOW CLIENTS").await?;
        if clients
            .iter()
            .any(|r| r[1] == "read_write" && r[6] == "held")
        {
            Ok(())
        } else {
            Err(format!("clients: {clients:?}"))
        }
    })
    .await
    .unwrap();
    console_rows(&console, "KILL postgres").await.expect("KILL");
    let (rw, r) = tokio::time::timeout(DEADLINE, held).await.unwrap().unwrap();
    assert!(
        r.is_err(),
        "the held INSERT of a killed client answered {r:?}"
    );
    wait_for("KILL closes the clients", DEADLINE, || async {
        if rw.is_closed() && auto.is_closed() {
            Ok(())
        } else {
            Err(format!(
                "closed: rw {} auto {}",
                rw.is_closed(),
                auto.is_closed()
            ))
        }
    })
    .await
    .unwrap();
    console_rows(&console, "RESUME postgres")
        .await
        .expect("RESUME after KILL");
    let again = connect_retry(proxy.rw_port, DEADLINE).await;
    assert_eq!(
        first(&again, "SELECT count(*) FROM paused").await.unwrap(),
        "1",
        "the held INSERT of the killed client ran; proxy log:\n{}",
        proxy.log()
    );
}

/// A client on `port` as `user` with `password` (tokio-postgres, no TLS), all with one
/// application_name so that only the user tells their server connections apart.
async fn connect_as(
    port: u16,
    user: &str,
    password: &str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user(user)
        .password(password)
        .dbname("postgres")
        .application_name("scram-test")
        .connect_timeout(Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

/// psql (PostgreSQL 18's, whose libpq knows `require_auth`) with `conninfo`; returns whether it
/// succeeded, its output and its errors.
async fn psql18(conninfo: &str, sql: &str) -> (bool, String, String) {
    let psql = praetor_harness::PgMajor::Pg18.bin_dir().join("psql");
    let out = tokio::process::Command::new(psql)
        .args(["-X", "-A", "-t", "-d", conninfo, "-c", sql])
        .kill_on_drop(true)
        .output()
        .await
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// Issue 17: the auto port checks clients with SCRAM-SHA-256 against the user's stored secret
/// (auth_file for alice, auth_query as the superuser for bob), logs in to the leader and the
/// replica with the client's recovered SCRAM keys (the proxy never sees a password), refuses a
/// wrong password and an unknown user with PostgreSQL's 28P01, and never hands one user's server
/// connection to another; `auth_type: cleartext` works over TLS only.
#[tokio::test]
async fn auto_port_authenticates_with_scram_and_keeps_server_connections_per_user() {
    let c = pair().await;
    let leader = c.leader().await.expect("leader");
    let direct = connect_retry(c.node(&leader).pg_port, DEADLINE).await;
    direct
        .batch_execute(
            "CREATE ROLE alice LOGIN PASSWORD 'alice-pw'; CREATE ROLE bob LOGIN PASSWORD 'bob-pw'",
        )
        .await
        .unwrap();
    let secret = first(
        &direct,
        "SELECT rolpassword FROM pg_authid WHERE rolname = 'alice'",
    )
    .await
    .unwrap();
    assert!(secret.starts_with("SCRAM-SHA-256$"), "{secret}");
    let userlist = c.work.path().join("userlist.txt");
    std::fs::write(&userlist, format!("\"alice\" \"{secret}\"\n")).unwrap();
    let proxy = FullProxy::start(
        &c,
        "scram",
        &format!(
            "    auth_file: {}\n    idle_release_ms: 0\n",
            userlist.display()
        ),
    )
    .await
    .unwrap();

    // Both users log in and reach both servers: the replica (a read) and the leader (a write
    // transaction), each connection opened with the client's SCRAM keys.
    for (user, password) in [("alice", "alice-pw"), ("bob", "bob-pw")] {
        let client = connect_as(proxy.auto_port, user, password)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e:?}\n===== proxy =====\n{}", proxy.log()));
        wait_for(
            &format!("{user}'s reads on the replica"),
            DEADLINE,
            || async {
                match first(&client, "SELECT pg_is_in_recovery()").await?.as_str() {
                    "t" => Ok(()),
                    other => Err(format!("pg_is_in_recovery = {other}")),
                }
            },
        )
        .await
        .unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        assert_eq!(
            first(&client, "SELECT pg_is_in_recovery()").await.unwrap(),
            "f"
        );
        assert_eq!(first(&client, "SELECT session_user").await.unwrap(), user);
        client.batch_execute("COMMIT").await.unwrap();
    }

    // Wrong password, unknown user: PostgreSQL's answer, from the proxy.
    for (user, password) in [("alice", "wrong"), ("bob", "wrong"), ("mallory", "x")] {
        let err = connect_as(proxy.auto_port, user, password)
            .await
            .err()
            .unwrap_or_else(|| panic!("{user} logged in with a wrong password"));
        let db = err.as_db_error().unwrap_or_else(|| panic!("{user}: {err}"));
        assert_eq!(
            db.code(),
            &tokio_postgres::error::SqlState::INVALID_PASSWORD
        );
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
    }

    // libpq insisting on SCRAM (require_auth), through the auto port; and refusing cleartext.
    let conninfo = |user: &str, password: &str, require: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} password={password} dbname=postgres sslmode=disable require_auth={require}",
            proxy.auto_port
        )
    };
    let (ok, out, err) = psql18(
        &conninfo("alice", "alice-pw", "scram-sha-256"),
        "SELECT current_user",
    )
    .await;
    assert!(ok && out == "alice", "{out} {err}");
    let (ok, _, err) = psql18(&conninfo("bob", "bob-pw", "password"), "SELECT 1").await;
    assert!(
        !ok && err.contains("authentication method requirement \"password\" failed"),
        "{err}"
    );

    // Users alternate on one pool (same database, same application_name; idle_release_ms 0 returns
    // connections after every unit): every session sees its own user, and every server
    // connection of the test's clients belongs to the user who logged in on it.
    let alice = connect_as(proxy.auto_port, "alice", "alice-pw")
        .await
        .unwrap();
    let bob = connect_as(proxy.auto_port, "bob", "bob-pw").await.unwrap();
    for round in 0..5 {
        for (client, user) in [(&alice, "alice"), (&bob, "bob")] {
            assert_eq!(
                first(client, "SELECT session_user").await.unwrap(),
                user,
                "round {round}"
            );
            client
                .batch_execute("BEGIN; SELECT 1; COMMIT")
                .await
                .unwrap();
        }
    }
    let users = first(
        &direct,
        "SELECT string_agg(DISTINCT usename::text, ',' ORDER BY usename::text) FROM pg_stat_activity WHERE application_name = 'scram-test'",
    )
    .await
    .unwrap();
    assert_eq!(users, "alice,bob");
    let per_conn = first(
        &direct,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'scram-test' AND usename::text NOT IN ('alice', 'bob')",
    )
    .await
    .unwrap();
    assert_eq!(per_conn, "0");

    // auth_type: cleartext takes the password only from TLS clients: a plain connection is
    // refused with the reason before any password is sent; over TLS the login works.
    let dir = c.work.path();
    let (cert, key) = (dir.join("proxy.crt"), dir.join("proxy.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let proxy = FullProxy::start(
        &c,
        "cleartext",
        &format!(
            "    auth_type: cleartext\n    tls: {{certfile: {}, keyfile: {}}}\n",
            cert.display(),
            key.display()
        ),
    )
    .await
    .unwrap();
    let Err(err) = connect_as(proxy.auto_port, SUPERUSER, SUPERUSER_PASSWORD).await else {
        panic!("logged in with cleartext without TLS");
    };
    let refused = err.as_db_error().map(|d| d.message().to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|m| m.contains("only over TLS")),
        "{err}: {refused:?}"
    );
    // Debian's psql: the PostgreSQL 18 wheel's libpq has no TLS.
    let tls = tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-c", "SELECT current_user", "-d"])
        .arg(format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres sslmode=require",
            proxy.auto_port
        ))
        .kill_on_drop(true)
        .output()
        .await
        .expect("run psql");
    let (ok, out, err) = (
        tls.status.success(),
        String::from_utf8_lossy(&tls.stdout).trim().to_string(),
        String::from_utf8_lossy(&tls.stderr).to_string(),
    );
    assert!(ok && out == SUPERUSER, "{out} {err}");
}
