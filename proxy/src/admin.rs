//! The admin console: a PostgreSQL-protocol port answering PgBouncer-style commands, for
//! `psql -h 127.0.0.1 -p <admin port> -U any praetor`.
//!
//! | command | rows |
//! |---|---|
//! | `SHOW CLIENTS` | one per client connection: id, listener, address, user, database, tls, state, servers, pinned, age |
//! | `SHOW SERVERS` | one per server connection: member, role, listener, client id (or the pool), state |
//! | `SHOW STATS` | one per listener: clients, server connections, bytes, transactions by target, errors |
//! | `SHOW TOPOLOGY` | one per member the proxy routes to: role, address, lag, whether it gets reads |
//! | `SHOW POOLS` | idle pooled server connections per member |
//! | `SHOW VERSION`, `SHOW HELP` | |
//! | `RELOAD` | re-reads the configuration file (as SIGHUP does) |
//!
//! Only the simple query protocol; the console asks for no password, so bind it to a loopback or
//! management address.

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
    info!(%peer, user = startup.user(), "admin console connection");
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
                    run_commands(&shared, &text, &mut out);
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
fn run_commands(shared: &Shared, text: &str, out: &mut BytesMut) {
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
        let words: Vec<String> = c
            .split_whitespace()
            .map(|w| w.to_ascii_uppercase())
            .collect();
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        match words.as_slice() {
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
            Some(l.member.clone()),
            Some("leader".to_string()),
            Some(format!("{}:{}", l.host, l.port)),
            None,
            None,
            Some("writes".to_string()),
        ]);
    }
    for r in &t.replicas {
        let lag = t.lag_of(r);
        rows.push(vec![
            Some(r.member.clone()),
            Some("replica".to_string()),
            Some(format!("{}:{}", r.host, r.port)),
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
