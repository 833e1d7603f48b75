//! The clients of a nemesis run: unique inserts and read-modify-writes through the proxy's
//! read-write and auto ports, a read-your-writes probe on the auto port (insert a row, then select
//! it in autocommit, a read the proxy may send to a replica), and direct inserts into every member,
//! each operation recorded with its start, end, outcome and the server and timeline that
//! acknowledged it.
//!
//! Every statement is sent with the simple query protocol (no named prepared statements, which
//! would pin an auto-port session to one server) and returns the server's address and port and the
//! timeline of `pg_current_wal_insert_lsn()`, so even a write through the proxy names the member
//! that acknowledged it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_util::sync::CancellationToken;

use super::history::{
    parse_bigint_array, parse_timeline, Channel, FinalState, Op, OpKind, Outcome,
};
use crate::cluster::{SUPERUSER, SUPERUSER_PASSWORD};

/// Keys of `nemesis_kv` the read-modify-writes spread over.
pub const KEYS: i32 = 3;

/// How long one statement may take before it is abandoned as indeterminate.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the clients connect, each as `ip:port`.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// The proxy's read-write port.
    pub rw: String,
    /// The proxy's auto port, when the proxy has one.
    pub auto: Option<String>,
    /// Every member's name and PostgreSQL address (as `inet_server_addr()` and
    /// `inet_server_port()` report it there).
    pub members: Vec<(String, String)>,
}

fn dsn(addr: &str) -> String {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "5432"));
    format!(
        "host={host} port={port} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=2"
    )
}

/// Connects to `addr` (`ip:port`) with tokio-postgres (no TLS), as the superuser, and drives the
/// connection in the background.
pub async fn connect(addr: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::connect(&dsn(addr), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Creates the workload's tables through `addr` (the proxy's read-write port): `nemesis_log`
/// for the unique inserts and `nemesis_kv` with [`KEYS`] empty lists.
pub async fn create_tables(addr: &str) -> Result<(), String> {
    let client = connect(addr).await.map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS nemesis_log (id bigint PRIMARY KEY, client text NOT NULL, at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE IF NOT EXISTS nemesis_kv (k int PRIMARY KEY, v bigint[] NOT NULL DEFAULT '{{}}');
             INSERT INTO nemesis_kv (k) SELECT g FROM generate_series(1, {KEYS}) g ON CONFLICT DO NOTHING;"
        ))
        .await
        .map_err(|e| format!("creating the workload's tables: {e}"))
}

/// Reads what the workload left: every id in `nemesis_log` and every list in `nemesis_kv`, from
/// the PostgreSQL at `addr` (the leader's).
pub async fn read_final_state(addr: &str) -> Result<FinalState, String> {
    let client = connect(addr).await.map_err(|e| pg_error(&e))?;
    let mut fin = FinalState::default();
    for m in client
        .simple_query("SELECT id FROM nemesis_log")
        .await
        .map_err(|e| pg_error(&e))?
    {
        if let SimpleQueryMessage::Row(r) = m {
            let id = r.get(0).and_then(|v| v.parse().ok()).ok_or("bad id")?;
            fin.ids.insert(id);
        }
    }
    for m in client
        .simple_query("SELECT k, v::text FROM nemesis_kv")
        .await
        .map_err(|e| pg_error(&e))?
    {
        if let SimpleQueryMessage::Row(r) = m {
            let k = r.get(0).and_then(|v| v.parse().ok()).ok_or("bad key")?;
            let v = r.get(1).and_then(parse_bigint_array).ok_or("bad list")?;
            fin.lists.insert(k, v);
        }
    }
    Ok(fin)
}

/// A tokio-postgres error with what PostgreSQL said (severity, SQLSTATE, message), which its
/// `Display` leaves out ("db error").
pub fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// Running clients; [`Workload::stop`] ends them and hands back the history.
pub struct Workload {
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    ops: Arc<Mutex<Vec<Op>>>,
    t0: Instant,
    /// The proxy's ports in use.
    channels: Vec<Channel>,
}

struct Shared {
    ids: AtomicI64,
    ops: Arc<Mutex<Vec<Op>>>,
    servers: HashMap<String, String>,
    t0: Instant,
    stop: CancellationToken,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Does {
    Insert,
    Append,
    /// An insert, then (once acknowledged, on the same session) a read of its row.
    InsertThenRead,
}

impl Workload {
    /// Starts the clients; times are recorded from `t0`. `seed` picks the keys of the
    /// read-modify-writes.
    pub fn start(endpoints: &Endpoints, t0: Instant, seed: u64) -> Workload {
        let ops = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            ids: AtomicI64::new(1),
            ops: ops.clone(),
            servers: endpoints
                .members
                .iter()
                .map(|(n, a)| (a.clone(), n.clone()))
                .collect(),
            t0,
            stop: stop.clone(),
        });
        let pace = Duration::from_millis(25);
        let rw = &endpoints.rw;
        let mut clients = vec![
            (
                "rw-insert".to_string(),
                Channel::ProxyRw,
                rw.clone(),
                Does::Insert,
                pace,
            ),
            (
                "rw-rmw".into(),
                Channel::ProxyRw,
                rw.clone(),
                Does::Append,
                pace,
            ),
        ];
        if let Some(auto) = &endpoints.auto {
            clients.push((
                "auto-insert".into(),
                Channel::ProxyAuto,
                auto.clone(),
                Does::Insert,
                pace,
            ));
            clients.push((
                "auto-rmw".into(),
                Channel::ProxyAuto,
                auto.clone(),
                Does::Append,
                pace,
            ));
            clients.push((
                "auto-ryw".into(),
                Channel::ProxyAuto,
                auto.clone(),
                Does::InsertThenRead,
                pace,
            ));
        }
        for (name, addr) in &endpoints.members {
            clients.push((
                format!("direct-{name}"),
                Channel::Direct(name.clone()),
                addr.clone(),
                Does::Insert,
                Duration::from_millis(50),
            ));
        }
        let tasks = clients
            .into_iter()
            .enumerate()
            .map(|(i, (name, channel, addr, does, pace))| {
                let rng = fastrand::Rng::with_seed(seed.wrapping_add(i as u64));
                tokio::spawn(client_loop(
                    shared.clone(),
                    name,
                    channel,
                    addr,
                    does,
                    pace,
                    rng,
                ))
            })
            .collect();
        Workload {
            stop,
            tasks,
            ops,
            t0,
            channels: if endpoints.auto.is_some() {
                vec![Channel::ProxyRw, Channel::ProxyAuto]
            } else {
                vec![Channel::ProxyRw]
            },
        }
    }

    /// True once a write sent at or after `since` (from the run's start) was acknowledged through
    /// each of the proxy's ports.
    pub fn acked_through_proxy_since(&self, since: Duration) -> bool {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        self.channels.iter().all(|c| {
            ops.iter()
                .any(|o| &o.channel == c && o.start >= since && o.acked_on().is_some())
        })
    }

    /// Time since the run's start.
    pub fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    /// Stops every client (an operation in flight is abandoned and recorded as indeterminate) and
    /// returns the history.
    ///
    /// Errors: a client task panicked (its history would be incomplete).
    pub async fn stop(self) -> Result<Vec<Op>, String> {
        self.stop.cancel();
        for t in self.tasks {
            t.await
                .map_err(|e| format!("a workload client failed: {e}"))?;
        }
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        Ok(ops.clone())
    }
}

/// One client: connect when needed, run its statement (and, for a read-your-writes probe, the
/// read of its row once the insert was acknowledged, on the same session), record, pause, until
/// stopped.
async fn client_loop(
    shared: Arc<Shared>,
    name: String,
    channel: Channel,
    addr: String,
    does: Does,
    pace: Duration,
    mut rng: fastrand::Rng,
) {
    let mut client: Option<Client> = None;
    while !shared.stop.is_cancelled() {
        let id = shared.ids.fetch_add(1, Ordering::Relaxed);
        let first = match does {
            Does::Insert | Does::InsertThenRead => OpKind::Insert { id },
            Does::Append => OpKind::Append {
                key: rng.i32(1..=KEYS),
                id,
            },
        };
        let mut next = Some(first);
        while let Some(kind) = next.take() {
            if let OpKind::Read { .. } = kind {
                // 0-50 ms after the insert: sometimes before a replica replayed it (the read
                // must then go to the leader), sometimes after (it may go to the replica).
                tokio::time::sleep(Duration::from_millis(rng.u64(0..=50))).await;
            }
            let start = shared.t0.elapsed();
            let outcome = tokio::select! {
                o = run_op(&mut client, &addr, &name, kind, &shared.servers) => o,
                _ = shared.stop.cancelled() => {
                    Outcome::Unknown { message: "abandoned at the end of the run".into() }
                }
            };
            let end = shared.t0.elapsed();
            match outcome {
                Outcome::Unknown { .. } => client = None,
                Outcome::Ok { .. } if does == Does::InsertThenRead => {
                    if let OpKind::Insert { id } = kind {
                        next = Some(OpKind::Read { id });
                    }
                }
                _ => {}
            }
            shared
                .ops
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Op {
                    client: name.clone(),
                    channel: channel.clone(),
                    kind,
                    start,
                    end,
                    outcome,
                });
        }
        tokio::select! {
            _ = tokio::time::sleep(pace) => {}
            _ = shared.stop.cancelled() => {}
        }
    }
}

/// The statement of `kind`, returning the server's address, its WAL timeline (0 for a read, which
/// may run on a replica) and (for an append) the list read back, (for a read) the ids seen. A read
/// is a plain `SELECT` in autocommit calling only functions the auto port's classifier knows as
/// read-only (`host()` is not among them, hence `split_part`), so it may go to a replica.
fn sql(kind: OpKind, client: &str) -> String {
    const SERVER_COLUMNS: &str = "host(inet_server_addr()) || ':' || inet_server_port(), \
         substr(pg_walfile_name(pg_current_wal_insert_lsn()), 1, 8)";
    match kind {
        OpKind::Insert { id } => format!(
            "INSERT INTO nemesis_log (id, client) VALUES ({id}, '{client}') RETURNING {SERVER_COLUMNS}"
        ),
        OpKind::Append { key, id } => format!(
            "UPDATE nemesis_kv SET v = v || {id}::bigint WHERE k = {key} RETURNING {SERVER_COLUMNS}, v::text"
        ),
        OpKind::Read { id } => format!(
            "SELECT split_part(inet_server_addr()::text, '/', 1) || ':' || inet_server_port(), '00000000', \
             '{{' || coalesce(string_agg(id::text, ','), '') || '}}' FROM nemesis_log WHERE id = {id}"
        ),
    }
}

async fn run_op(
    client: &mut Option<Client>,
    addr: &str,
    name: &str,
    kind: OpKind,
    servers: &HashMap<String, String>,
) -> Outcome {
    if client.as_ref().is_none_or(Client::is_closed) {
        match tokio::time::timeout(Duration::from_secs(3), connect(addr)).await {
            Ok(Ok(c)) => *client = Some(c),
            // Nothing was sent: certainly not committed.
            Ok(Err(e)) => {
                return Outcome::Failed {
                    sqlstate: e.code().map(|c| c.code().to_string()),
                    message: format!("connect: {e}"),
                }
            }
            Err(_) => {
                return Outcome::Failed {
                    sqlstate: None,
                    message: "connect: timed out".into(),
                }
            }
        }
    }
    let c = client.as_ref().expect("connected just above");
    match tokio::time::timeout(STATEMENT_TIMEOUT, c.simple_query(&sql(kind, name))).await {
        Err(_) => Outcome::Unknown {
            message: format!("no answer within {STATEMENT_TIMEOUT:?}"),
        },
        Ok(Err(e)) => classify(&e),
        Ok(Ok(messages)) => {
            let row = messages.iter().find_map(|m| match m {
                SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            });
            let Some(row) = row else {
                return Outcome::Failed {
                    sqlstate: None,
                    message: "no row returned".into(),
                };
            };
            let column = |i: usize| row.try_get(i).ok().flatten();
            let server = column(0);
            let timeline = column(1).and_then(parse_timeline);
            let value = column(2).and_then(parse_bigint_array);
            match (server, timeline) {
                (Some(s), Some(timeline)) => Outcome::Ok {
                    server: servers.get(s).cloned().unwrap_or_else(|| s.to_string()),
                    timeline,
                    value,
                },
                // Committed, but the answer cannot be read: treat as indeterminate.
                _ => Outcome::Unknown {
                    message: "acknowledged with an unreadable server or timeline".into(),
                },
            }
        }
    }
}

/// An error from a statement: definite when PostgreSQL aborted it with an error (the statement
/// did not commit), indeterminate when the connection broke or the server was shutting down
/// (SQLSTATE classes 08, 57, 58, XX: a commit waiting for a synchronous standby is committed
/// locally when the backend is terminated).
fn classify(e: &tokio_postgres::Error) -> Outcome {
    match e.code().map(|c| c.code()) {
        Some(code)
            if !["08", "57", "58", "XX"]
                .iter()
                .any(|class| code.starts_with(class)) =>
        {
            Outcome::Failed {
                sqlstate: Some(code.to_string()),
                message: e.to_string(),
            }
        }
        _ => Outcome::Unknown {
            message: e.to_string(),
        },
    }
}
