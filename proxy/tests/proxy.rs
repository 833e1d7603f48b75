//! The proxy against real PostgreSQL 15 servers on 127.0.0.1, with real clients (tokio-postgres, psql).
//!
//! Two standalone servers stand in for a leader and a replica; each test feeds the proxy a topology
//! through a `watch` channel it controls (the DCS-driven feed is covered by the acceptance tests with a
//! real etcd). Nothing sleeps: every wait is a condition polled up to a deadline.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use praetor_config::Address;
use praetor_harness::postgres::Postgres;
use praetor_harness::{free_port, http_get, wait_for, WorkDir};
use praetor_protocol::backend::ERROR_RESPONSE;
use praetor_protocol::{split_frame, ErrorFields};
use praetor_proxy::{Backend, Proxy, ProxySettings, Topology};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{MakeTlsConnect, NoTlsStream, TlsConnect};
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;

/// Generous deadline for conditions that normally hold within milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "praetor_proxy=debug".into()))
        .try_init();
}

fn backend(member: &str, pg: &Postgres) -> Backend {
    Backend {
        member: member.into(),
        host: "127.0.0.1".into(),
        port: pg.port(),
    }
}

/// A backend nothing listens on.
fn dead_backend(member: &str) -> Backend {
    Backend {
        member: member.into(),
        host: "127.0.0.1".into(),
        port: free_port(),
    }
}

fn topology(leader: Option<&Backend>, replicas: &[&Backend]) -> Arc<Topology> {
    Arc::new(Topology::new(
        leader.cloned(),
        replicas.iter().map(|b| (*b).clone()).collect(),
    ))
}

/// A proxy serving on 127.0.0.1 (all three listeners on free ports), fed by `feed`.
struct TestProxy {
    rw: SocketAddr,
    ro: SocketAddr,
    metrics: SocketAddr,
    feed: watch::Sender<Arc<Topology>>,
    shutdown: CancellationToken,
    served: Option<JoinHandle<Result<(), praetor_proxy::ProxyError>>>,
}

impl TestProxy {
    async fn start(initial: Arc<Topology>, connect_timeout: Duration) -> TestProxy {
        init_tracing();
        let local = || {
            Some(Address {
                host: "127.0.0.1".into(),
                port: 0,
            })
        };
        let settings = ProxySettings {
            read_write: local(),
            read_only: local(),
            metrics: local(),
            connect_timeout,
            ..ProxySettings::default()
        };
        let proxy = Proxy::bind(settings).await.expect("bind on 127.0.0.1:0");
        let (rw, ro, metrics) = (
            proxy.rw_addr().unwrap(),
            proxy.ro_addr().unwrap(),
            proxy.metrics_addr().unwrap(),
        );
        let (feed, rx) = watch::channel(initial);
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(proxy.serve(rx, shutdown.clone()));
        TestProxy {
            rw,
            ro,
            metrics,
            feed,
            shutdown,
            served: Some(served),
        }
    }

    fn set(&self, t: Arc<Topology>) {
        self.feed.send_replace(t);
    }

    async fn metrics(&self) -> String {
        http_get(&self.metrics.to_string(), "/metrics")
            .await
            .expect("GET /metrics")
            .1
    }

    /// Waits until the metrics show `line` (a full sample line such as `name{labels} 1`).
    async fn wait_metric(&self, line: &str) {
        let addr = self.metrics.to_string();
        wait_for(&format!("metric {line}"), DEADLINE, || {
            let addr = addr.clone();
            let line = line.to_string();
            async move {
                let body = http_get(&addr, "/metrics").await?.1;
                if body.lines().any(|l| l == line) {
                    Ok(())
                } else {
                    Err(body
                        .lines()
                        .filter(|l| !l.starts_with('#'))
                        .collect::<Vec<_>>()
                        .join("; "))
                }
            }
        })
        .await
        .unwrap();
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn conn_config(addr: SocketAddr) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(addr.port())
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(30));
    c
}

/// Connects through `addr` (tokio-postgres, no TLS) and drives the connection in a task.
async fn connect(addr: SocketAddr) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = conn_config(addr).connect(NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn server_port(client: &Client) -> Result<u16, tokio_postgres::Error> {
    let row = client
        .query_one("SELECT current_setting('port')::int4", &[])
        .await?;
    Ok(row.get::<_, i32>(0) as u16)
}

/// A TLS connector that asks for TLS (`sslmode=prefer` sends an SSLRequest) and can never complete a
/// handshake: with the proxy's `N` answer the client goes on in clear text, as libpq does.
#[derive(Clone, Copy)]
struct AskForTls;

impl<S> MakeTlsConnect<S> for AskForTls {
    type Stream = NoTlsStream;
    type TlsConnect = AskForTls;
    type Error = std::io::Error;

    fn make_tls_connect(&mut self, _: &str) -> Result<AskForTls, std::io::Error> {
        Ok(AskForTls)
    }
}

impl<S> TlsConnect<S> for AskForTls {
    type Stream = NoTlsStream;
    type Error = std::io::Error;
    type Future = std::future::Ready<Result<NoTlsStream, std::io::Error>>;

    fn connect(self, _: S) -> Self::Future {
        std::future::ready(Err(std::io::Error::other(
            "the server accepted TLS, which the proxy never does",
        )))
    }
}

/// Reads what the proxy sends until it closes; returns the ErrorResponse fields it sent, if any.
async fn read_until_closed(stream: &mut TcpStream) -> (Vec<u8>, Option<ErrorFields>) {
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut out))
        .await
        .expect("the proxy closes the connection")
        .ok();
    let mut buf = BytesMut::from(&out[..]);
    let fields = match split_frame(&mut buf) {
        Ok(Some(f)) if f.tag == ERROR_RESPONSE => ErrorFields::parse(f.body()).ok(),
        _ => None,
    };
    (out, fields)
}

async fn start_pair(dir: &WorkDir) -> (Postgres, Postgres) {
    let (a, b) = tokio::join!(Postgres::start(dir, "pg-a"), Postgres::start(dir, "pg-b"));
    (a.expect("start pg-a"), b.expect("start pg-b"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_write_reaches_the_leader_and_read_only_a_replica_or_else_the_leader() {
    let dir = WorkDir::new("proxy-routing").unwrap();
    let (pg_a, pg_b) = start_pair(&dir).await;
    let (a, b) = (backend("a", &pg_a), backend("b", &pg_b));
    let proxy = TestProxy::start(topology(Some(&a), &[&b]), Duration::from_secs(5)).await;

    let rw = connect(proxy.rw).await.unwrap();
    assert_eq!(
        server_port(&rw).await.unwrap(),
        pg_a.port(),
        "RW goes to the leader"
    );
    let ro = connect(proxy.ro).await.unwrap();
    assert_eq!(
        server_port(&ro).await.unwrap(),
        pg_b.port(),
        "RO goes to the replica"
    );

    // No replica left: read-only clients go to the leader.
    proxy.set(topology(Some(&a), &[]));
    wait_for("RO to fall back to the leader", DEADLINE, || async {
        let c = connect(proxy.ro).await.map_err(|e| e.to_string())?;
        match server_port(&c).await.map_err(|e| e.to_string())? {
            p if p == pg_a.port() => Ok(()),
            p => Err(format!("reached port {p}")),
        }
    })
    .await
    .unwrap();
    // The replica session opened earlier is left alone.
    assert_eq!(server_port(&ro).await.unwrap(), pg_b.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_prefer_clients_get_n_and_go_on_in_clear_text() {
    let dir = WorkDir::new("proxy-ssl").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let proxy = TestProxy::start(
        topology(Some(&backend("a", &pg)), &[]),
        Duration::from_secs(5),
    )
    .await;

    // tokio-postgres with sslmode=prefer (its default) and a connector that asks for TLS.
    let (client, conn) = conn_config(proxy.rw).connect(AskForTls).await.unwrap();
    tokio::spawn(conn);
    assert_eq!(server_port(&client).await.unwrap(), pg.port());

    // psql (libpq built with OpenSSL) with sslmode=prefer, and with sslmode=require, which must fail.
    let rw_port = proxy.rw.port();
    let psql = move |sslmode: &str| {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={rw_port} user=postgres dbname=postgres sslmode={sslmode} connect_timeout=10"
            ))
            .args(["-XAtc", "SELECT current_setting('port')"])
            .output()
            .expect("run psql")
    };
    let out = tokio::task::spawn_blocking(move || (psql("prefer"), psql("require")))
        .await
        .unwrap();
    let (prefer, require) = out;
    assert!(prefer.status.success(), "{prefer:?}");
    assert_eq!(
        String::from_utf8_lossy(&prefer.stdout).trim(),
        pg.port().to_string()
    );
    assert!(!require.status.success());
    assert!(
        String::from_utf8_lossy(&require.stderr).contains("does not support SSL"),
        "{require:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_backend_gives_08006_naming_it_and_other_clients_are_served() {
    let dir = WorkDir::new("proxy-refused").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let good = backend("good", &pg);
    let dead = dead_backend("dead");
    let proxy = TestProxy::start(topology(Some(&good), &[&dead]), Duration::from_secs(5)).await;

    let served = connect(proxy.rw).await.unwrap();
    let err = connect(proxy.ro)
        .await
        .expect_err("the replica refuses connections");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    let db = err.as_db_error().expect("an ErrorResponse from the proxy");
    assert!(
        db.message().contains("dead at 127.0.0.1:"),
        "the message names the backend: {}",
        db.message()
    );
    assert_eq!(db.severity(), "FATAL");

    // psql shows it as PostgreSQL's own errors.
    let port = proxy.ro.port();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("psql")
            .arg(format!(
                "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=disable"
            ))
            .args(["-XAtc", "SELECT 1"])
            .output()
            .expect("run psql")
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("FATAL:  could not connect to replica dead at 127.0.0.1:"),
        "{stderr}"
    );

    // The proxy goes on: the open session works, new read-write sessions too.
    assert_eq!(server_port(&served).await.unwrap(), pg.port());
    let again = connect(proxy.rw).await.unwrap();
    assert_eq!(server_port(&again).await.unwrap(), pg.port());
    proxy
        .wait_metric(
            r#"praetor_proxy_routing_errors_total{listener="read_only",reason="connect_failed"} 2"#,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_through_the_proxy_reaches_the_right_backend() {
    let dir = WorkDir::new("proxy-cancel").unwrap();
    let (pg_a, pg_b) = start_pair(&dir).await;
    let (a, b) = (backend("a", &pg_a), backend("b", &pg_b));
    let proxy = TestProxy::start(topology(Some(&a), &[&b]), Duration::from_secs(5)).await;

    let on_leader = Arc::new(connect(proxy.rw).await.unwrap());
    let on_replica = Arc::new(connect(proxy.ro).await.unwrap());
    let observer_b = connect(SocketAddr::from(([127, 0, 0, 1], pg_b.port())))
        .await
        .unwrap();
    let observer_a = connect(SocketAddr::from(([127, 0, 0, 1], pg_a.port())))
        .await
        .unwrap();

    let sleep_on = |c: &Arc<Client>| {
        let c = c.clone();
        tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) })
    };
    let leader_query = sleep_on(&on_leader);
    let replica_query = sleep_on(&on_replica);
    async fn running(observer: &Client) -> Result<(), String> {
        {
            let n: i64 = observer
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'",
                    &[],
                )
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            if n == 1 {
                Ok(())
            } else {
                Err(format!("{n} sleeping sessions"))
            }
        }
    }
    wait_for("pg_sleep on the leader", DEADLINE, || running(&observer_a))
        .await
        .unwrap();
    wait_for("pg_sleep on the replica", DEADLINE, || running(&observer_b))
        .await
        .unwrap();

    // The cancel token holds the address the client connected to: the proxy's RW port.
    on_leader.cancel_token().cancel_query(NoTls).await.unwrap();
    let result = tokio::time::timeout(DEADLINE, leader_query)
        .await
        .expect("cancelled well before pg_sleep(30) ends")
        .unwrap();
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err}");

    // The other backend's session was not touched; cancel it through the RO port.
    assert!(!replica_query.is_finished());
    running(&observer_b).await.unwrap();
    on_replica.cancel_token().cancel_query(NoTls).await.unwrap();
    let err = tokio::time::timeout(DEADLINE, replica_query)
        .await
        .unwrap()
        .unwrap()
        .expect_err("cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED));

    // Both sessions are usable after the cancel.
    assert_eq!(server_port(&on_leader).await.unwrap(), pg_a.port());
    assert_eq!(server_port(&on_replica).await.unwrap(), pg_b.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_change_fences_the_former_leader_and_new_clients_follow() {
    let dir = WorkDir::new("proxy-fencing").unwrap();
    let (pg_a, pg_b) = start_pair(&dir).await;
    let (a, b) = (backend("a", &pg_a), backend("b", &pg_b));
    let proxy = TestProxy::start(topology(Some(&a), &[&b]), Duration::from_secs(5)).await;

    let old_rw = connect(proxy.rw).await.unwrap();
    let old_rw_2 = connect(proxy.rw).await.unwrap();
    let old_ro = connect(proxy.ro).await.unwrap();
    assert_eq!(server_port(&old_rw).await.unwrap(), pg_a.port());
    assert_eq!(server_port(&old_ro).await.unwrap(), pg_b.port());
    let in_transaction = old_rw_2.simple_query("BEGIN").await.unwrap();
    drop(in_transaction);

    // Switchover: b takes the lock, a is gone from the topology.
    proxy.set(topology(Some(&b), &[]));
    wait_for(
        "the old leader's sessions to be closed",
        DEADLINE,
        || async {
            if old_rw.is_closed() && old_rw_2.is_closed() {
                Ok(())
            } else {
                Err(format!(
                    "closed: {}, {}",
                    old_rw.is_closed(),
                    old_rw_2.is_closed()
                ))
            }
        },
    )
    .await
    .unwrap();
    let err = old_rw.simple_query("SELECT 1").await.expect_err("fenced");
    assert!(err.is_closed(), "{err}");
    assert!(old_rw_2.simple_query("COMMIT").await.is_err());

    // The replica session is untouched; new read-write sessions reach b.
    assert_eq!(server_port(&old_ro).await.unwrap(), pg_b.port());
    let new_rw = connect(proxy.rw).await.unwrap();
    assert_eq!(server_port(&new_rw).await.unwrap(), pg_b.port());

    proxy
        .wait_metric("praetor_proxy_fenced_connections_total 2")
        .await;
    proxy
        .wait_metric("praetor_proxy_leader_changes_total 1")
        .await;

    // The leader key vanishes with no successor: b's sessions (RW and RO) are fenced too.
    proxy.set(topology(None, &[]));
    wait_for("b's sessions to be closed", DEADLINE, || async {
        if new_rw.is_closed() && old_ro.is_closed() {
            Ok(())
        } else {
            Err("still open".to_string())
        }
    })
    .await
    .unwrap();
    proxy
        .wait_metric("praetor_proxy_leader_changes_total 2")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_waits_for_a_leader_that_appears_within_connect_timeout() {
    let dir = WorkDir::new("proxy-wait").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let proxy = TestProxy::start(topology(None, &[]), Duration::from_secs(30)).await;

    let rw = proxy.rw;
    let pending = tokio::spawn(async move {
        let c = connect(rw).await?;
        server_port(&c).await
    });
    proxy
        .wait_metric(r#"praetor_proxy_waiting_clients{listener="read_write"} 1"#)
        .await;
    assert!(!pending.is_finished());

    proxy.set(topology(Some(&backend("a", &pg)), &[]));
    let port = tokio::time::timeout(DEADLINE, pending)
        .await
        .expect("connected once the leader appeared")
        .unwrap()
        .unwrap();
    assert_eq!(port, pg.port());
    proxy
        .wait_metric(r#"praetor_proxy_waiting_clients{listener="read_write"} 0"#)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_leader_clients_get_08006_after_connect_timeout() {
    let proxy = TestProxy::start(topology(None, &[]), Duration::from_secs(1)).await;
    let err = connect(proxy.rw).await.expect_err("no leader");
    assert_eq!(err.code(), Some(&SqlState::CONNECTION_FAILURE), "{err}");
    assert!(
        err.as_db_error()
            .unwrap()
            .message()
            .starts_with("no leader is available for read-write connections"),
        "{err}"
    );
    proxy
        .wait_metric(
            r#"praetor_proxy_routing_errors_total{listener="read_write",reason="no_backend"} 1"#,
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_startup_packets_close_only_that_client() {
    let dir = WorkDir::new("proxy-garbage").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let proxy = TestProxy::start(
        topology(Some(&backend("a", &pg)), &[]),
        Duration::from_secs(5),
    )
    .await;
    let session = connect(proxy.rw).await.unwrap();

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            "08P01",
        ),
        (
            "an oversized packet",
            {
                let mut p = 20_000u32.to_be_bytes().to_vec();
                p.extend_from_slice(&[0, 3, 0, 0]);
                p.extend(std::iter::repeat_n(b'x', 100));
                p
            },
            "08P01",
        ),
        (
            "a packet shorter than its header",
            vec![0, 0, 0, 4],
            "08P01",
        ),
        (
            "a bad parameter list",
            {
                let body = b"user\0postgres";
                let mut p = ((8 + body.len()) as u32).to_be_bytes().to_vec();
                p.extend_from_slice(&[0, 3, 0, 0]);
                p.extend_from_slice(body);
                p
            },
            "08P01",
        ),
        ("protocol 2.0", vec![0, 0, 0, 9, 0, 2, 0, 0, 0], "0A000"),
    ];
    for (what, bytes, code) in cases {
        let mut raw = TcpStream::connect(proxy.rw).await.unwrap();
        raw.write_all(&bytes).await.unwrap();
        let (_, fields) = read_until_closed(&mut raw).await;
        let fields = fields.unwrap_or_else(|| panic!("{what}: an ErrorResponse before closing"));
        assert_eq!(fields.severity(), Some("FATAL"), "{what}");
        assert_eq!(fields.code(), Some(code), "{what}: {:?}", fields.message());
    }
    // A client that goes away mid-packet is just dropped.
    let mut raw = TcpStream::connect(proxy.rw).await.unwrap();
    raw.write_all(&[0, 0, 0, 63, 0, 3]).await.unwrap();
    drop(raw);

    // Everyone else is fine.
    assert_eq!(server_port(&session).await.unwrap(), pg.port());
    let fresh = connect(proxy.rw).await.unwrap();
    assert_eq!(server_port(&fresh).await.unwrap(), pg.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_half_written_startup_packet_does_not_block_others() {
    let dir = WorkDir::new("proxy-stall").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let proxy = TestProxy::start(
        topology(Some(&backend("a", &pg)), &[]),
        Duration::from_secs(5),
    )
    .await;

    // An SSLRequest answered, then half a StartupMessage, then nothing.
    let mut stalled = TcpStream::connect(proxy.rw).await.unwrap();
    stalled
        .write_all(&[0, 0, 0, 8, 4, 210, 22, 47])
        .await
        .unwrap();
    let mut answer = [0u8; 1];
    stalled.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, b"N");
    stalled
        .write_all(&[0, 0, 0, 40, 0, 3, 0, 0, b'u', b's'])
        .await
        .unwrap();

    for _ in 0..5 {
        let c = connect(proxy.rw).await.unwrap();
        assert_eq!(server_port(&c).await.unwrap(), pg.port());
    }
    // The stalled client is still waiting (nothing was sent to it).
    let mut probe = [0u8; 1];
    assert!(
        matches!(stalled.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_and_scram_authentication_pass_through() {
    let dir = WorkDir::new("proxy-auth").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let admin = connect(SocketAddr::from(([127, 0, 0, 1], pg.port())))
        .await
        .unwrap();
    admin
        .batch_execute(
            "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN PASSWORD 'md5secret';
             SET password_encryption = 'scram-sha-256'; CREATE ROLE scramuser LOGIN PASSWORD 'scramsecret';",
        )
        .await
        .unwrap();
    let hba = pg.data_dir().join("pg_hba.conf");
    let original = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(
        &hba,
        format!(
            "host all md5user 127.0.0.1/32 md5\nhost all scramuser 127.0.0.1/32 scram-sha-256\n{original}"
        ),
    )
    .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();

    let proxy = TestProxy::start(
        topology(Some(&backend("a", &pg)), &[]),
        Duration::from_secs(5),
    )
    .await;
    let login = |user: &'static str, password: &'static str| {
        let mut c = conn_config(proxy.rw);
        c.user(user).password(password);
        async move {
            let (client, conn) = c.connect(NoTls).await?;
            tokio::spawn(conn);
            let who: String = client
                .query_one("SELECT current_user::text", &[])
                .await?
                .get(0);
            Ok::<_, tokio_postgres::Error>(who)
        }
    };
    wait_for("pg_hba.conf to be reloaded", DEADLINE, || async {
        login("md5user", "wrong")
            .await
            .err()
            .filter(|e| e.code() == Some(&SqlState::INVALID_PASSWORD))
            .map(|_| ())
            .ok_or_else(|| "a wrong password is still accepted".to_string())
    })
    .await
    .unwrap();
    assert_eq!(login("md5user", "md5secret").await.unwrap(), "md5user");
    assert_eq!(
        login("scramuser", "scramsecret").await.unwrap(),
        "scramuser"
    );
    let err = login("scramuser", "nope").await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_the_proxy_metrics() {
    let dir = WorkDir::new("proxy-metrics").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let proxy = TestProxy::start(
        topology(Some(&backend("a", &pg)), &[]),
        Duration::from_secs(5),
    )
    .await;
    let c = connect(proxy.rw).await.unwrap();
    server_port(&c).await.unwrap();
    proxy
        .wait_metric(r#"praetor_proxy_connections{backend="a",listener="read_write"} 1"#)
        .await;
    let body = proxy.metrics().await;
    for name in [
        "praetor_proxy_connections",
        "praetor_proxy_connections_total",
        "praetor_proxy_bytes_total",
        "praetor_proxy_routing_errors_total",
        "praetor_proxy_fenced_connections_total",
        "praetor_proxy_seconds_since_last_dcs_event",
        "praetor_proxy_leader_changes_total",
    ] {
        assert!(
            body.lines()
                .any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "{name} missing from:\n{body}"
        );
    }
    assert!(
        body.contains(r#"praetor_proxy_connections_total{backend="a",listener="read_write"} 1"#)
    );
    let bytes_in = body
        .lines()
        .find(|l| {
            l.starts_with(
                r#"praetor_proxy_bytes_total{direction="server_to_client",listener="read_write"}"#,
            )
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap();
    assert!(bytes_in > 100, "{bytes_in}");

    drop(c);
    proxy
        .wait_metric(r#"praetor_proxy_connections{backend="a",listener="read_write"} 0"#)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_and_serve_returns() {
    let dir = WorkDir::new("proxy-shutdown").unwrap();
    let pg = Postgres::start(&dir, "pg").await.unwrap();
    let mut proxy = TestProxy::start(
        topology(Some(&backend("a", &pg)), &[]),
        Duration::from_secs(5),
    )
    .await;
    let c = connect(proxy.rw).await.unwrap();
    server_port(&c).await.unwrap();
    proxy.shutdown.cancel();
    let served = proxy.served.take().unwrap();
    tokio::time::timeout(DEADLINE, served)
        .await
        .expect("serve returns")
        .unwrap()
        .unwrap();
    wait_for("the client to see the close", DEADLINE, || async {
        if c.is_closed() {
            Ok(())
        } else {
            Err("open".to_string())
        }
    })
    .await
    .unwrap();
    assert!(
        TcpStream::connect(proxy.rw).await.is_err(),
        "no longer listening"
    );
}
