//! The admin console: a PostgreSQL-protocol port answering PgBouncer-style commands, for
//! `psql -h 127.0.0.1 -p <admin port> -U <admin user> praetor`.
//!
//! | command | rows |
//! |---|---|
//! | `SHOW CLIENTS` | one per client connection: id, listener, address, user, database, tls, state, servers, pinned, age |
//! | `SHOW SERVERS` | one per server connection: member, role, listener, client id (or the pool), state |
//! | `SHOW STATS` | one per listener: clients, server connections, bytes, transactions by target, errors |
//! | `SHOW TOPOLOGY` | one per member the proxy routes to: role, address, lag, whether it gets reads |
//! | `SHOW POOLS` | idle pooled server connections per member |
//! | `SHOW CONFIG` | one per setting: key, value, default, changeable |
//! | `SHOW VERSION`, `SHOW HELP` | |
//! | `PAUSE [db]`, `RESUME [db]` | hold new transactions at their boundary (the switchover's hold), release them |
//! | `KILL [db]` | close the clients now; the database stays paused |
//! | `RECONNECT [db]`, `WAIT_CLOSE [db]` | close server connections when released (read-write and read-only sessions: at their next transaction, when they can log in again); wait until they are |
//! | `RELOAD` | re-reads the configuration file (as SIGHUP does) |
//!
//! Semantics follow PgBouncer's admin console (its `usage.rst`). Only the simple query protocol.
//! Who may log in: `admin_auth` (`admin_users`, `auth_file`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::BytesMut;
use praetor_protocol::frontend::{
    encode_auth_ok, encode_command_complete, encode_data_row, encode_empty_query,
    encode_parameter_status, encode_ready_for_query, encode_row_description, query_text, QUERY,
    SYNC, TERMINATE,
};
use praetor_protocol::{
    encode_error_response, FrontendHeader, Severity, SqlState, StartupPacket, StartupPhase,
    TxStatus, ENCRYPTION_REFUSED,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::conn::{send_fatal, Shared};
use crate::metrics::ListenerKind;

/// The longest message the console reads.
const MAX_ADMIN_MESSAGE: usize = 64 * 1024;

/// Serves one admin console connection.
pub(crate) async fn serve_admin(
    shared: Arc<Shared>,
    mut socket: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let _ = socket.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(1024);
    let mut phase = StartupPhase::new();
    let startup = loop {
        match phase.decode(&mut buf) {
            Ok(Some(StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                if socket.write_all(&[ENCRYPTION_REFUSED]).await.is_err() {
                    return;
                }
            }
            Ok(Some(StartupPacket::CancelRequest(_))) => return,
            Ok(Some(StartupPacket::Startup(m))) => break m,
            Ok(None) => {
                let read = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tokio::time::timeout(Duration::from_secs(10), socket.read_buf(&mut buf)) => r,
                };
                match read {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => return,
                }
            }
            Err(e) => {
                send_fatal(&mut socket, e.sqlstate(), &e.to_string()).await;
                return;
            }
        }
    };
    let access = shared
        .settings
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .admin_access
        .clone();
    let authenticated = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(
            Duration::from_secs(10),
            crate::admin_auth::authenticate(&mut socket, &mut buf, &access, startup.user()),
        ) => r,
    };
    match authenticated {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            warn!(%peer, user = startup.user(), "admin console login refused: {reason}");
            return;
        }
        Err(_) => {
            warn!(%peer, user = startup.user(), "admin console login timed out");
            return;
        }
    }
    info!(%peer, user = startup.user(), method = access.method.as_str(), "admin console connection");
    let mut out = BytesMut::with_capacity(512);
    encode_auth_ok(&mut out);
    for (k, v) in [
        ("server_version", "15.0 (praetor proxy)"),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        (
            "application_name",
            startup.parameter("application_name").unwrap_or(""),
        ),
    ] {
        encode_parameter_status(&mut out, k, v);
    }
    encode_ready_for_query(&mut out, TxStatus::Idle);
    if socket.write_all(&out).await.is_err() {
        return;
    }
    let mut skipping = false;
    loop {
        loop {
            let h = match FrontendHeader::peek(&buf, MAX_ADMIN_MESSAGE) {
                Ok(Some(h)) if buf.len() >= h.frame_len => h,
                Ok(_) => break,
                Err(e) => {
                    send_fatal(&mut socket, e.sqlstate(), &e.to_string()).await;
                    return;
                }
            };
            let frame = buf.split_to(h.frame_len);
            let mut out = BytesMut::new();
            match h.tag {
                TERMINATE => return,
                QUERY => {
                    let text = query_text(&frame[5..]).unwrap_or("").to_string();
                    run_commands(&shared, &text, &mut out).await;
                    encode_ready_for_query(&mut out, TxStatus::Idle);
                }
                SYNC => {
                    skipping = false;
                    encode_ready_for_query(&mut out, TxStatus::Idle);
                }
                _ if skipping => {}
                _ => {
                    skipping = true;
                    encode_error_response(
                        &mut out,
                        Severity::Error,
                        SqlState::FEATURE_NOT_SUPPORTED,
                        "the admin console speaks only the simple query protocol",
                    );
                }
            }
            if socket.write_all(&out).await.is_err() {
                return;
            }
        }
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.capacity() > 4 * MAX_ADMIN_MESSAGE && buf.is_empty() {
            buf = BytesMut::with_capacity(1024);
        }
    }
}

/// Runs each `;`-separated command of `text`, appending the replies to `out`.
async fn run_commands(shared: &Shared, text: &str, out: &mut BytesMut) {
    let commands: Vec<&str> = text
        .split(';')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    if commands.is_empty() {
        encode_empty_query(out);
        return;
    }
    for c in commands {
        let original: Vec<&str> = c.split_whitespace().collect();
        let words: Vec<String> = original.iter().map(|w| w.to_ascii_uppercase()).collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        // The database argument, as written (names are case-sensitive); quotes are dropped.
        let db = original.get(1).map(|d| d.trim_matches('"'));
        match words.as_slice() {
            ["PAUSE"] | ["PAUSE", _] => {
                pause(shared, db).await;
                encode_command_complete(out, "PAUSE");
            }
            ["RESUME"] | ["RESUME", _] => {
                if !shared.router.resume_paused(db) {
                    encode_error_response(
                        out,
                        Severity::Error,
                        SqlState::INVALID_PARAMETER_VALUE,
                        &match db {
                            Some(db) => format!("database {db:?} is not paused"),
                            None => "nothing is paused".to_string(),
                        },
                    );
                    return;
                }
                info!(
                    database = db.unwrap_or("*"),
                    "RESUME from the admin console"
                );
                encode_command_complete(out, "RESUME");
            }
            ["KILL"] | ["KILL", _] => {
                // PgBouncer's KILL: the database stays paused, so clients reconnecting wait
                // for RESUME instead of coming straight back.
                shared.router.pause(db);
                let killed = shared
                    .clients
                    .kill(|c| db.is_none_or(|db| c.database_is(db)));
                shared.router.wake_all();
                let pooled = shared.pool.purge_database(db);
                warn!(
                    database = db.unwrap_or("*"),
                    killed,
                    pooled,
                    "KILL from the admin console: closed the clients; the database stays paused until RESUME"
                );
                encode_command_complete(out, "KILL");
            }
            ["RECONNECT"] | ["RECONNECT", _] => {
                let pooled = shared.pool.purge_database(db);
                let open = shared.router.mark_reconnect(db);
                info!(
                    database = db.unwrap_or("*"),
                    pooled,
                    open,
                    "RECONNECT from the admin console: server connections close when released"
                );
                encode_command_complete(out, "RECONNECT");
            }
            ["WAIT_CLOSE"] | ["WAIT_CLOSE", _] => {
                // Polled, as PAUSE: the connections' tasks close them without telling anyone.
                while shared.router.stale_open(db) > 0 {
                    tokio::time::sleep(PAUSE_POLL).await;
                }
                encode_command_complete(out, "WAIT_CLOSE");
            }
            ["SHOW", "CONFIG"] => show_config(shared, out),
            ["SHOW", "CLIENTS"] => show_clients(shared, out),
            ["SHOW", "SERVERS"] => show_servers(shared, out),
            ["SHOW", "STATS"] => show_stats(shared, out),
            ["SHOW", "TOPOLOGY"] => show_topology(shared, out),
            ["SHOW", "POOLS"] => show_pools(shared, out),
            ["SHOW", "VERSION"] => table(
                out,
                &["version"],
                vec![vec![Some(format!("praetor {}", env!("CARGO_PKG_VERSION")))]],
            ),
            ["SHOW", "HELP"] | ["HELP"] => table(
                out,
                &["command"],
                [
                    "PAUSE [db]",
                    "RESUME [db]",
                    "KILL [db]",
                    "RECONNECT [db]",
                    "WAIT_CLOSE [db]",
                    "SHOW CONFIG",
                    "SHOW CLIENTS",
                    "SHOW SERVERS",
                    "SHOW STATS",
                    "SHOW TOPOLOGY",
                    "SHOW POOLS",
                    "SHOW VERSION",
                    "RELOAD",
                ]
                .iter()
                .map(|c| vec![Some(c.to_string())])
                .collect(),
            ),
            ["RELOAD"] => match shared.reload() {
                Ok(notes) => {
                    for n in &notes {
                        warn!("reload: {n}");
                    }
                    info!("configuration reloaded from the admin console");
                    encode_command_complete(out, "RELOAD");
                }
                Err(e) => {
                    warn!("reload failed: {e}");
                    encode_error_response(
                        out,
                        Severity::Error,
                        SqlState::FEATURE_NOT_SUPPORTED,
                        &format!("reload failed: {e}"),
                    );
                    return;
                }
            },
            _ => {
                debug!(command = c, "unknown admin command");
                encode_error_response(
                    out,
                    Severity::Error,
                    SqlState::SYNTAX_ERROR,
                    &format!("unknown command {c:?}: try SHOW HELP"),
                );
                return;
            }
        }
    }
}

/// `PAUSE [db]`: new transactions (and new server connections) of `db` (every database: `None`)
/// wait at their boundary, by the switchover's hold ([`crate::rw::should_hold`] on the
/// read-write port, the idle point on the auto port); returns once no transaction of theirs
/// runs any more. Read-only port sessions are not held (their new connections are).
async fn pause(shared: &Shared, db: Option<&str>) {
    shared.router.pause(db);
    info!(
        database = db.unwrap_or("*"),
        "PAUSE from the admin console: waiting for running transactions"
    );
    let running = || {
        shared
            .clients
            .snapshot()
            .iter()
            .filter(|c| c.busy.load(std::sync::atomic::Ordering::Relaxed))
            .filter(|c| db.is_none_or(|db| c.database_is(db)))
            .count()
    };
    // Polled: sessions publish `busy` with a plain store, with nothing to wake the console.
    while running() > 0 {
        tokio::time::sleep(PAUSE_POLL).await;
    }
    // As PgBouncer's PAUSE disconnects from the servers: a restarted server leaves no stale
    // pooled connection behind.
    let pooled = shared.pool.purge_database(db);
    info!(
        database = db.unwrap_or("*"),
        pooled, "paused: no transaction runs"
    );
}

/// How often `PAUSE` looks whether the running transactions finished.
const PAUSE_POLL: Duration = Duration::from_millis(20);

/// `SHOW CONFIG`: one row per setting: key (under `praetor.proxy`), value in force, default,
/// and whether a reload changes it (`yes`; listeners need a restart).
fn show_config(shared: &Shared, out: &mut BytesMut) {
    let s = shared
        .settings
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let d = crate::settings::ProxySettings::default();
    let addr =
        |a: &Option<praetor_config::Address>| a.as_ref().map(|a| a.to_string()).unwrap_or_default();
    let secs = |t: Duration| t.as_secs().to_string();
    let opt = |v: Option<String>| v.unwrap_or_default();
    let mut targets: Vec<String> = s
        .database_targets
        .iter()
        .map(|(db, t)| format!("{db}={}", t.as_str()))
        .collect();
    targets.sort();
    let rows: Vec<(&str, String, String, bool)> = vec![
        (
            "read_write.listen",
            addr(&s.read_write),
            String::new(),
            false,
        ),
        ("read_only.listen", addr(&s.read_only), String::new(), false),
        ("auto.listen", addr(&s.auto), String::new(), false),
        ("admin.listen", addr(&s.admin), String::new(), false),
        ("metrics.listen", addr(&s.metrics), String::new(), false),
        (
            "admin_users",
            s.admin_access.users.join(","),
            String::new(),
            true,
        ),
        (
            "auth_file",
            opt(s
                .admin_access
                .auth_file
                .as_ref()
                .map(|p| p.display().to_string())),
            String::new(),
            true,
        ),
        (
            "admin_auth",
            s.admin_access.method.as_str().into(),
            "scram-sha-256".into(),
            true,
        ),
        (
            "connect_timeout",
            secs(s.connect_timeout),
            secs(d.connect_timeout),
            true,
        ),
        (
            "authentication_timeout",
            secs(s.startup_timeout),
            secs(d.startup_timeout),
            true,
        ),
        (
            "client_message_timeout",
            secs(s.message_timeout),
            secs(d.message_timeout),
            true,
        ),
        (
            "shutdown_timeout",
            secs(s.shutdown_timeout),
            secs(d.shutdown_timeout),
            true,
        ),
        (
            "drain_timeout",
            secs(s.drain_timeout),
            secs(d.drain_timeout),
            true,
        ),
        (
            "max_client_conn",
            s.max_client_conn.to_string(),
            d.max_client_conn.to_string(),
            true,
        ),
        (
            "max_message_size",
            s.max_message_size.to_string(),
            d.max_message_size.to_string(),
            true,
        ),
        (
            "classifier_cache_size",
            s.classifier_cache_bytes.to_string(),
            d.classifier_cache_bytes.to_string(),
            true,
        ),
        (
            "pool_size",
            s.pool_size.to_string(),
            d.pool_size.to_string(),
            true,
        ),
        (
            "idle_release_ms",
            s.idle_release.as_millis().to_string(),
            d.idle_release.as_millis().to_string(),
            true,
        ),
        (
            "pool_mode",
            s.pool_mode.as_str().to_string(),
            d.pool_mode.as_str().to_string(),
            true,
        ),
        (
            "max_prepared_statements",
            s.max_prepared_statements.to_string(),
            d.max_prepared_statements.to_string(),
            true,
        ),
        (
            "query_wait_timeout",
            s.query_wait_timeout.as_secs().to_string(),
            d.query_wait_timeout.as_secs().to_string(),
            true,
        ),
        (
            "server_lifetime",
            s.server_lifetime.map_or(0, |l| l.as_secs()).to_string(),
            d.server_lifetime.map_or(0, |l| l.as_secs()).to_string(),
            true,
        ),
        (
            "server_idle_timeout",
            s.server_idle_timeout.as_secs().to_string(),
            d.server_idle_timeout.as_secs().to_string(),
            true,
        ),
        (
            "max_replica_lag",
            opt(s.lag.max_bytes.map(|b| b.to_string())),
            String::new(),
            true,
        ),
        (
            "max_replica_lag_seconds",
            opt(s.lag.max_seconds.map(|b| b.to_string())),
            String::new(),
            true,
        ),
        (
            "reads_on_leader",
            s.lag.reads_on_leader.to_string(),
            "true".into(),
            true,
        ),
        (
            "read_only_functions",
            s.read_only_functions.join(","),
            String::new(),
            true,
        ),
        ("databases", targets.join(","), String::new(), true),
        (
            "id",
            opt(s.id.clone()),
            "<hostname>-<first port>".into(),
            false,
        ),
        (
            "tls",
            opt(s.tls.as_ref().map(|t| t.0.display().to_string())),
            String::new(),
            true,
        ),
        (
            "backend_tls.mode",
            opt(s.backend_tls.0.clone()),
            "disable".into(),
            true,
        ),
    ];
    let rows = rows
        .into_iter()
        .map(|(k, v, def, changeable)| {
            vec![
                Some(k.to_string()),
                Some(v),
                Some(def),
                Some(if changeable { "yes" } else { "no" }.to_string()),
            ]
        })
        .collect();
    table(out, &["key", "value", "default", "changeable"], rows);
}

fn table(out: &mut BytesMut, columns: &[&str], rows: Vec<Vec<Option<String>>>) {
    encode_row_description(out, columns);
    for r in &rows {
        let values: Vec<Option<&str>> = r.iter().map(|v| v.as_deref()).collect();
        encode_data_row(out, &values);
    }
    encode_command_complete(out, &format!("SHOW {}", rows.len()));
}

fn age_secs(since: SystemTime) -> String {
    SystemTime::now()
        .duration_since(since)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_else(|_| "0".into())
}

fn show_clients(shared: &Shared, out: &mut BytesMut) {
    let rows = shared
        .clients
        .snapshot()
        .iter()
        .map(|c| {
            let st = c.state();
            let servers = st
                .servers
                .iter()
                .map(|(m, r)| format!("{m} ({r})"))
                .collect::<Vec<_>>()
                .join(", ");
            vec![
                Some(c.id.to_string()),
                Some(c.listener.as_str().to_string()),
                Some(c.peer.to_string()),
                Some(st.user().to_string()),
                Some(st.database().to_string()),
                Some(st.tls.to_string()),
                Some(st.status.to_string()),
                Some(servers),
                st.pinned.map(|r| r.to_string()),
                Some(age_secs(c.since)),
            ]
        })
        .collect();
    table(
        out,
        &[
            "id", "listener", "address", "user", "database", "tls", "state", "servers", "pinned",
            "age_s",
        ],
        rows,
    );
}

fn show_servers(shared: &Shared, out: &mut BytesMut) {
    let mut rows = Vec::new();
    for c in shared.clients.snapshot() {
        let st = c.state();
        for (member, role) in st.servers {
            rows.push(vec![
                Some(member),
                Some(role.to_string()),
                Some(c.listener.as_str().to_string()),
                Some(c.id.to_string()),
                Some(st.status.to_string()),
            ]);
        }
    }
    for (member, role, n) in shared.pool.summary() {
        for _ in 0..n {
            rows.push(vec![
                Some(member.clone()),
                Some(role.to_string()),
                Some(ListenerKind::Auto.as_str().to_string()),
                None,
                Some("idle (pool)".to_string()),
            ]);
        }
    }
    table(
        out,
        &["member", "role", "listener", "client", "state"],
        rows,
    );
}

fn show_stats(shared: &Shared, out: &mut BytesMut) {
    let m = &shared.metrics;
    let open = shared.router.open_connections();
    let rows = [
        ListenerKind::ReadWrite,
        ListenerKind::ReadOnly,
        ListenerKind::Auto,
    ]
    .iter()
    .map(|l| {
        let clients = m.client_connections.with_label_values(&[l.as_str()]).get();
        let (c2s, s2c) = m.byte_counters(*l);
        let tx = |t: &str| {
            if *l == ListenerKind::Auto {
                m.transactions_total
                    .with_label_values(&[t])
                    .get()
                    .to_string()
            } else {
                "".to_string()
            }
        };
        let routing: u64 = ["no_backend", "connect_failed", "connect_timeout"]
            .iter()
            .map(|r| {
                m.routing_errors_total
                    .with_label_values(&[l.as_str(), r])
                    .get()
            })
            .sum();
        vec![
            Some(l.as_str().to_string()),
            Some(clients.to_string()),
            Some(c2s.get().to_string()),
            Some(s2c.get().to_string()),
            Some(tx("leader")),
            Some(tx("replica")),
            Some(routing.to_string()),
        ]
    })
    .chain(std::iter::once(vec![
        Some("all".to_string()),
        Some(shared.clients.len().to_string()),
        None,
        None,
        None,
        None,
        Some(format!(
            "server connections: {}, fenced: {}, leader changes: {}",
            open.iter().map(|(_, n)| n).sum::<usize>(),
            m.fenced_connections_total.get(),
            m.leader_changes_total.get()
        )),
    ]))
    .collect();
    table(
        out,
        &[
            "listener",
            "clients",
            "bytes_received",
            "bytes_sent",
            "transactions_leader",
            "transactions_replica",
            "routing_errors",
        ],
        rows,
    );
}

fn show_topology(shared: &Shared, out: &mut BytesMut) {
    let t = shared.router.topology();
    let policy = shared.router.policy();
    let mut rows = Vec::new();
    if let Some(l) = &t.leader {
        rows.push(vec![
            Some(l.member().to_string()),
            Some("leader".to_string()),
            Some(format!("{}:{}", l.host(), l.port())),
            None,
            None,
            Some("writes".to_string()),
        ]);
    }
    for r in &t.replicas {
        let lag = t.lag_of(r);
        rows.push(vec![
            Some(r.member().to_string()),
            Some("replica".to_string()),
            Some(format!("{}:{}", r.host(), r.port())),
            lag.bytes.map(|b| b.to_string()),
            lag.seconds.map(|s| format!("{s:.0}")),
            Some(
                if lag.is_fresh(&policy) {
                    "reads"
                } else {
                    "too far behind"
                }
                .to_string(),
            ),
        ]);
    }
    table(
        out,
        &[
            "member",
            "role",
            "address",
            "lag_bytes",
            "lag_seconds",
            "serves",
        ],
        rows,
    );
}

fn show_pools(shared: &Shared, out: &mut BytesMut) {
    let rows = shared
        .pool
        .summary()
        .into_iter()
        .map(|(m, r, n)| vec![Some(m), Some(r.to_string()), Some(n.to_string())])
        .collect();
    table(out, &["member", "role", "idle"], rows);
}
