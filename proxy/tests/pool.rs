//! Transaction pooling through the auto port (`pool_mode: transaction`, `pool_size`,
//! `max_prepared_statements`) against a real PostgreSQL 15, with real clients: pgbench
//! `-M prepared`, tokio-postgres prepared statements, and a raw protocol client whose answers are
//! compared with PostgreSQL's own. Nothing sleeps: waits are conditions with a deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use praetor_config::Address;
use praetor_harness::postgres::Postgres;
use praetor_harness::WorkDir;
use praetor_protocol::frontend::encode_message;
use praetor_protocol::{split_frame, ErrorFields};
use praetor_proxy::{Backend, PoolMode, Proxy, ProxySettings, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(60);

/// Transactions per pgbench client.
const PGBENCH_TRANSACTIONS: &str = "100";

/// The proxy's auto port in front of `pg`, PgBouncer-style transaction pooling with `pool_size`
/// server connections and 100 tracked statements per connection. Dropping the token stops it.
async fn pooling_proxy(pg: &Postgres, pool_size: usize) -> (SocketAddr, CancellationToken) {
    pooling_proxy_with(pg, pool_size, |_| ()).await
}

/// [`pooling_proxy`] with its settings changed by `tweak` first.
async fn pooling_proxy_with(
    pg: &Postgres,
    pool_size: usize,
    tweak: impl FnOnce(&mut ProxySettings),
) -> (SocketAddr, CancellationToken) {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "praetor_proxy=info".into()))
        .try_init();
    let mut settings = ProxySettings {
        auto: Some(Address {
            host: "127.0.0.1".into(),
            port: 0,
        }),
        pool_mode: PoolMode::Transaction,
        pool_size,
        idle_release: Duration::ZERO,
        max_prepared_statements: 100,
        query_wait_timeout: Duration::from_secs(60),
        read_your_writes: false,
        ..ProxySettings::default()
    };
    tweak(&mut settings);
    let proxy = Proxy::bind(settings).await.expect("bind").with_workers(2);
    let auto = proxy.auto_addr().unwrap();
    let leader = Backend::new("a", "127.0.0.1", pg.port());
    let (feed, rx) = watch::channel(Arc::new(Topology::new(Some(leader), Vec::new())));
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            let _feed = feed;
            proxy.serve(rx, shutdown).await
        }
    });
    (auto, shutdown)
}

fn config(port: u16) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(DEADLINE);
    c
}

async fn connect(port: u16) -> tokio_postgres::Client {
    let (client, conn) = config(port).connect(NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}

/// Counts, every few milliseconds until `stop`, the server's client backends that run as
/// `application_name`; keeps the largest count.
fn watch_backends(
    pg_port: u16,
    application_name: &'static str,
    stop: Arc<AtomicBool>,
) -> (Arc<AtomicI64>, tokio::task::JoinHandle<()>) {
    let most = Arc::new(AtomicI64::new(0));
    let seen = most.clone();
    let task = tokio::spawn(async move {
        let c = connect(pg_port).await;
        let q = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                 AND pid <> pg_backend_pid() AND application_name = $1";
        while !stop.load(Ordering::SeqCst) {
            let n: i64 = c.query_one(q, &[&application_name]).await.unwrap().get(0);
            seen.fetch_max(n, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    (most, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_prepared_with_16_clients_runs_on_4_server_connections_without_failures() {
    let dir = WorkDir::new("pool-pgbench").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let (auto, _stop_proxy) = pooling_proxy(&pg, 4).await;
    let pgbench = |port: u16, args: Vec<&'static str>| {
        tokio::task::spawn_blocking(move || {
            Command::new("pgbench")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .args(args)
                .arg("postgres")
                .output()
                .expect("run pgbench")
        })
    };
    let init = pgbench(pg.port(), vec!["-i", "-q", "-s", "1"])
        .await
        .unwrap();
    assert!(init.status.success(), "{init:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let (most, watcher) = watch_backends(pg.port(), "pgbench", stop.clone());
    // Select-only with 8 clients per pgbench thread; TPC-B with a thread per client: pgbench
    // prepares a statement synchronously at its first use, blocking its thread, so TPC-B's
    // BEGIN waiting for a server connection held by another client of the same thread, in its
    // transaction, would wait for ever (with PgBouncer as well).
    for args in [
        vec![
            "-n",
            "-S",
            "-M",
            "prepared",
            "-c",
            "16",
            "-j",
            "2",
            "-t",
            PGBENCH_TRANSACTIONS,
        ],
        vec![
            "-n",
            "-M",
            "prepared",
            "-c",
            "16",
            "-j",
            "16",
            "-t",
            PGBENCH_TRANSACTIONS,
        ],
    ] {
        let run = pgbench(auto.port(), args.clone()).await.unwrap();
        let text = String::from_utf8_lossy(&run.stdout);
        assert!(run.status.success(), "{args:?}: {run:?}");
        assert!(text.contains("number of failed transactions: 0"), "{text}");
        assert!(
            text.contains(&format!(
                "number of transactions actually processed: {0}/{0}",
                16 * PGBENCH_TRANSACTIONS.parse::<usize>().unwrap()
            )),
            "{text}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&most),
        "server connections of pgbench: at most {most}, pool_size 4"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_tokio_postgres_clients_prepare_and_execute_on_four_server_connections() {
    let dir = WorkDir::new("pool-orm").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let (auto, _stop_proxy) = pooling_proxy(&pg, 4).await;
    let setup = connect(pg.port()).await;
    setup
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, owner int, n int)")
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (most, watcher) = watch_backends(pg.port(), "orm", stop.clone());
    let mut tasks = Vec::new();
    for t in 0..20i32 {
        tasks.push(tokio::spawn(async move {
            let (c, conn) = config(auto.port())
                .application_name("orm")
                .connect(NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            // The same texts in every client: one server statement each, shared.
            let insert = c
                .prepare("INSERT INTO items (id, owner, n) VALUES ($1, $2, 0)")
                .await
                .unwrap();
            let bump = c
                .prepare("UPDATE items SET n = n + $2 WHERE id = $1 RETURNING n")
                .await
                .unwrap();
            let sum = c
                .prepare("SELECT coalesce(sum(n), 0)::int8 FROM items WHERE owner = $1")
                .await
                .unwrap();
            // And one of its own.
            let own = c.prepare(&format!("SELECT $1::int4 * {t}")).await.unwrap();
            for i in 0..5i32 {
                c.execute(&insert, &[&(t * 100 + i), &t]).await.unwrap();
            }
            let mut expected = 0i64;
            for round in 1..=10i32 {
                let id = t * 100 + round % 5;
                let n: i32 = c.query_one(&bump, &[&id, &round]).await.unwrap().get(0);
                assert!(n >= round, "client {t}: n {n} after adding {round}");
                expected += i64::from(round);
                let got: i64 = c.query_one(&sum, &[&t]).await.unwrap().get(0);
                assert_eq!(got, expected, "client {t} round {round}");
                let v: i32 = c.query_one(&own, &[&round]).await.unwrap().get(0);
                assert_eq!(v, round * t);
            }
            // In a transaction too, and a statement closed and prepared again.
            let mut c = c;
            let tx = c.transaction().await.unwrap();
            let n: i32 = tx.query_one(&bump, &[&(t * 100), &1]).await.unwrap().get(0);
            assert!(n >= 1);
            tx.commit().await.unwrap();
            drop(own);
            let again = c.prepare(&format!("SELECT $1::int4 * {t}")).await.unwrap();
            let v: i32 = c.query_one(&again, &[&3]).await.unwrap().get(0);
            assert_eq!(v, 3 * t);
        }));
    }
    for task in tasks {
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("clients finish")
            .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let total: i64 = setup
        .query_one("SELECT sum(n)::int8 FROM items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 20 * (55 + 1));
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=4).contains(&most),
        "server connections: at most {most}, pool_size 4"
    );
}

/// A raw protocol client: logs in as postgres, then sends messages and reads answers.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

fn cstr(b: &mut BytesMut, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.put_u8(0);
}

fn parse(name: &str, query: &str) -> BytesMut {
    let mut b = BytesMut::new();
    encode_message(&mut b, b'P', |m| {
        cstr(m, name);
        cstr(m, query);
        m.put_i16(0);
    });
    b
}

fn bind(statement: &str) -> BytesMut {
    let mut b = BytesMut::new();
    encode_message(&mut b, b'B', |m| {
        cstr(m, "");
        cstr(m, statement);
        m.put_i16(0);
        m.put_i16(0);
        m.put_i16(0);
    });
    b
}

fn named(tag: u8, kind: u8, name: &str) -> BytesMut {
    let mut b = BytesMut::new();
    encode_message(&mut b, tag, |m| {
        m.put_u8(kind);
        cstr(m, name);
    });
    b
}

fn execute() -> BytesMut {
    let mut b = BytesMut::new();
    encode_message(&mut b, b'E', |m| {
        cstr(m, "");
        m.put_i32(0);
    });
    b
}

fn sync() -> BytesMut {
    let mut b = BytesMut::new();
    encode_message(&mut b, b'S', |_| {});
    b
}

fn query(sql: &str) -> BytesMut {
    let mut b = BytesMut::new();
    encode_message(&mut b, b'Q', |m| cstr(m, sql));
    b
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let mut startup = BytesMut::new();
        startup.put_u32(0);
        startup.put_u32(196608);
        for (k, v) in [("user", "postgres"), ("database", "postgres")] {
            cstr(&mut startup, k);
            cstr(&mut startup, v);
        }
        startup.put_u8(0);
        let len = startup.len() as u32;
        startup[..4].copy_from_slice(&len.to_be_bytes());
        stream.write_all(&startup).await.unwrap();
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
        };
        raw.answers(1).await;
        raw
    }

    /// Sends `messages` and reads the answers through `readies` ReadyForQuery messages, as
    /// comparable lines: tag and body, or for an error its SQLSTATE and message.
    async fn run(&mut self, messages: &[BytesMut], readies: usize) -> Vec<String> {
        let mut out = BytesMut::new();
        for m in messages {
            out.extend_from_slice(m);
        }
        self.stream.write_all(&out).await.unwrap();
        self.answers(readies).await
    }

    async fn answers(&mut self, mut readies: usize) -> Vec<String> {
        let mut seen = Vec::new();
        while readies > 0 {
            match split_frame(&mut self.buf).unwrap() {
                Some(f) => {
                    let line = match f.tag {
                        b'E' => {
                            let e = ErrorFields::parse(f.body()).unwrap();
                            format!("E {:?} {:?}", e.code(), e.message())
                        }
                        // Startup: server parameters and the cancel key differ.
                        b'S' | b'K' | b'R' => continue,
                        tag => format!("{} {:?}", tag as char, f.body()),
                    };
                    if f.tag == b'Z' {
                        readies -= 1;
                    }
                    seen.push(line);
                }
                None => {
                    let n = tokio::time::timeout(DEADLINE, self.stream.read_buf(&mut self.buf))
                        .await
                        .expect("an answer")
                        .unwrap();
                    assert!(n > 0, "closed; got {seen:?}");
                }
            }
        }
        seen
    }
}

/// The statement-name cases, run on one connection: what each step answers.
async fn statement_cases(port: u16) -> Vec<Vec<String>> {
    let mut c = Raw::connect(port).await;
    let mut all = Vec::new();
    // Prepared, used, described.
    all.push(
        c.run(
            &[parse("x", "SELECT 1 AS one"), bind("x"), execute(), sync()],
            1,
        )
        .await,
    );
    all.push(c.run(&[named(b'D', b'S', "x"), sync()], 1).await);
    // A duplicate name: 42P05, and the rest up to Sync is skipped.
    all.push(
        c.run(&[parse("x", "SELECT 2"), bind("x"), execute(), sync()], 1)
            .await,
    );
    // x is still the first statement.
    all.push(c.run(&[bind("x"), execute(), sync()], 1).await);
    // Unknown names: 26000 for Bind and Describe, nothing for Close.
    all.push(c.run(&[bind("nope"), execute(), sync()], 1).await);
    all.push(c.run(&[named(b'D', b'S', "nope"), sync()], 1).await);
    all.push(c.run(&[named(b'C', b'S', "nope"), sync()], 1).await);
    // A statement that does not parse is not created.
    all.push(c.run(&[parse("bad", "SELEC 1"), sync()], 1).await);
    all.push(c.run(&[bind("bad"), execute(), sync()], 1).await);
    // Close, then the name is free again, for another text.
    all.push(c.run(&[named(b'C', b'S', "x"), sync()], 1).await);
    all.push(c.run(&[bind("x"), execute(), sync()], 1).await);
    all.push(
        c.run(
            &[
                parse("x", "SELECT 3 AS three"),
                bind("x"),
                execute(),
                sync(),
            ],
            1,
        )
        .await,
    );
    // In a failed transaction: Parse is refused (25P02) and the name stays free.
    all.push(c.run(&[query("BEGIN"), query("SELECT 1/0")], 2).await);
    all.push(c.run(&[parse("y", "SELECT 1 AS one"), sync()], 1).await);
    all.push(c.run(&[query("ROLLBACK")], 1).await);
    all.push(c.run(&[bind("y"), execute(), sync()], 1).await);
    all.push(
        c.run(
            &[parse("y", "SELECT 1 AS one"), bind("y"), execute(), sync()],
            1,
        )
        .await,
    );
    all
}

/// Each step's answers through the pool equal PostgreSQL's own (`direct`), step by step.
fn assert_same_answers(direct: &[Vec<String>], pooled: &[Vec<String>]) {
    for (i, (d, p)) in direct.iter().zip(pooled).enumerate() {
        assert_eq!(d, p, "step {i}");
    }
    assert_eq!(direct.len(), pooled.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_names_get_postgresql_answers_through_the_pool() {
    let dir = WorkDir::new("pool-names").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let (auto, _stop_proxy) = pooling_proxy(&pg, 1).await;
    let direct = statement_cases(pg.port()).await;
    // Another client prepared the same texts first: the proxy shares its server statement.
    let mut other = Raw::connect(auto.port()).await;
    other
        .run(&[parse("mine", "SELECT 1 AS one"), sync()], 1)
        .await;
    let pooled = statement_cases(auto.port()).await;
    assert_same_answers(&direct, &pooled);
    // The other client's statement still works on the same server connection.
    let got = other.run(&[bind("mine"), execute(), sync()], 1).await;
    assert!(got.iter().any(|l| l.starts_with("C ")), "{got:?}");
}

/// The first column of the first row `sql` returns (simple query protocol).
async fn first_value(
    c: &tokio_postgres::Client,
    sql: &str,
) -> Result<String, tokio_postgres::Error> {
    let messages = c.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_prepare_in_one_transaction_executes_in_later_ones_with_8_clients_on_2_connections() {
    let dir = WorkDir::new("pool-sql-prepare").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let (auto, _stop_proxy) = pooling_proxy(&pg, 2).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (most, watcher) = watch_backends(pg.port(), "sqlprep", stop.clone());
    let mut tasks = Vec::new();
    for t in 1..=8i32 {
        tasks.push(tokio::spawn(async move {
            let (c, conn) = config(auto.port())
                .application_name("sqlprep")
                .connect(NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            // Every client has its own `times` (same name, its own text) and a shared-text
            // `plus`: prepared in one transaction, executed in later ones.
            c.batch_execute(&format!(
                "BEGIN; PREPARE times (int) AS SELECT $1 * {t}; COMMIT"
            ))
            .await
            .unwrap();
            c.simple_query("PREPARE plus (int, int) AS SELECT $1 + $2")
                .await
                .unwrap();
            for round in 1..=20i32 {
                let got = first_value(&c, &format!("EXECUTE times({round})")).await;
                assert_eq!(
                    got.unwrap(),
                    (round * t).to_string(),
                    "client {t} round {round}"
                );
                c.batch_execute("BEGIN").await.unwrap();
                let got = first_value(&c, &format!("EXECUTE plus({round}, {t})")).await;
                assert_eq!(
                    got.unwrap(),
                    (round + t).to_string(),
                    "client {t} round {round}"
                );
                c.batch_execute("COMMIT").await.unwrap();
            }
            // Gone once deallocated, as in PostgreSQL: 26000; the name is free again.
            c.simple_query("DEALLOCATE times").await.unwrap();
            let err = first_value(&c, "EXECUTE times(1)").await.unwrap_err();
            assert_eq!(err.code(), Some(&SqlState::UNDEFINED_PSTATEMENT), "{err}");
            let got = first_value(&c, "EXECUTE plus(1, 1)").await.unwrap();
            assert_eq!(got, "2");
            c.simple_query(&format!("PREPARE times (int) AS SELECT $1 * {t} * 10"))
                .await
                .unwrap();
            let got = first_value(&c, "EXECUTE times(2)").await.unwrap();
            assert_eq!(got, (20 * t).to_string());
            c.simple_query("DEALLOCATE ALL").await.unwrap();
            for name in ["times(1)", "plus(1, 1)"] {
                let err = first_value(&c, &format!("EXECUTE {name}"))
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), Some(&SqlState::UNDEFINED_PSTATEMENT), "{err}");
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(DEADLINE, task)
            .await
            .expect("clients finish")
            .unwrap();
    }
    stop.store(true, Ordering::SeqCst);
    watcher.await.unwrap();
    let most = most.load(Ordering::SeqCst);
    assert!(
        (1..=2).contains(&most),
        "server connections: at most {most}, pool_size 2"
    );
}

/// SQL-level statement cases, run on one connection: what each step answers.
async fn sql_statement_cases(port: u16) -> Vec<Vec<String>> {
    let mut c = Raw::connect(port).await;
    let mut all = Vec::new();
    for sql in [
        "PREPARE x AS SELECT 1 AS one",
        "EXECUTE x",
        // A duplicate: 42P05; x stays the first statement.
        "PREPARE x AS SELECT 2",
        "EXECUTE x",
        "EXPLAIN (COSTS OFF) EXECUTE x",
        "DEALLOCATE x",
        // Unknown: 26000 for both.
        "EXECUTE x",
        "DEALLOCATE x",
        "PREPARE \"X\" (int) AS SELECT $1 + 1 AS two",
        "EXECUTE \"X\"(1); EXECUTE \"X\"(2)",
        "EXECUTE x",
        // In a failed transaction the PREPARE is refused (25P02) and the name stays free.
        "BEGIN",
        "SELECT 1/0",
        "PREPARE y AS SELECT 3",
        "ROLLBACK",
        "EXECUTE y",
        "PREPARE y AS SELECT 3 AS three",
        "DEALLOCATE ALL",
        "EXECUTE y",
        "EXECUTE \"X\"(1)",
    ] {
        all.push(c.run(&[query(sql)], 1).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_statement_names_get_postgresql_answers_through_the_pool() {
    let dir = WorkDir::new("pool-sql-names").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let (auto, _stop_proxy) = pooling_proxy(&pg, 1).await;
    let direct = sql_statement_cases(pg.port()).await;
    // Another client on the one server connection prepared x and y with other texts first.
    let mut other = Raw::connect(auto.port()).await;
    for sql in [
        "PREPARE x AS SELECT 'other'",
        "PREPARE y AS SELECT 'other y'",
    ] {
        let got = other.run(&[query(sql)], 1).await;
        assert!(got.iter().any(|l| l.starts_with("C ")), "{got:?}");
    }
    let pooled = sql_statement_cases(auto.port()).await;
    assert_same_answers(&direct, &pooled);
    // The other client's statements are still its own.
    for (sql, want) in [("EXECUTE x", "other"), ("EXECUTE y", "other y")] {
        let got = other.run(&[query(sql)], 1).await;
        // A DataRow of one column.
        let mut row = vec![0u8, 1];
        row.extend_from_slice(&(want.len() as i32).to_be_bytes());
        row.extend_from_slice(want.as_bytes());
        assert!(got.contains(&format!("D {row:?}")), "{sql}: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_pooled_in_auto_mode_is_not_bounded_by_the_transaction_pool() {
    let dir = WorkDir::new("pool-per-database").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    connect(pg.port())
        .await
        .batch_execute("CREATE DATABASE free")
        .await
        .unwrap();
    // Transaction pooling with one server connection, but `free` pools in auto mode.
    let (auto, _stop_proxy) = pooling_proxy_with(&pg, 1, |s| {
        s.query_wait_timeout = Duration::from_secs(1);
        s.database_pool_modes = HashMap::from([("free".to_string(), PoolMode::Auto)]);
    })
    .await;
    let client = |db: &'static str| async move {
        let (c, conn) = config(auto.port()).dbname(db).connect(NoTls).await.unwrap();
        tokio::spawn(conn);
        c
    };
    // `postgres`: the one connection is in a transaction, so another client's statement waits
    // `query_wait_timeout` and gets 08006.
    let (a, b) = (client("postgres").await, client("postgres").await);
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    let err = b.simple_query("SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains("query_wait_timeout"), "{message}");
    a.batch_execute("COMMIT").await.unwrap();
    assert_eq!(first_value(&b, "SELECT 1").await.unwrap(), "1");
    // `free`: each transaction gets a connection of its own.
    let (a, b) = (client("free").await, client("free").await);
    a.batch_execute("BEGIN; SELECT 1").await.unwrap();
    assert_eq!(
        first_value(&b, "SELECT current_database()").await.unwrap(),
        "free"
    );
    let n = first_value(
        &b,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'free' AND state = 'idle in transaction'",
    )
    .await
    .unwrap();
    assert_eq!(n, "1", "a's transaction runs on its own connection");
    a.batch_execute("COMMIT").await.unwrap();
}
