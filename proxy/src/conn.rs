//! One client connection, from its first byte to close. The decisions are made by the protocol crate
//! (what the client sent), the [`Router`] (where it goes) and the connection's [`Fence`] (when it must stop);
//! this module only moves bytes between them.
//!
//! 1. Startup phase: decode the client's packets with [`StartupPhase`]; answer SSLRequest and
//!    GSSENCRequest with `N`; forward a CancelRequest to the backend that issued its key; stop at the
//!    StartupMessage. Garbage or an oversized packet closes this client with an ErrorResponse.
//! 2. Route and connect: pick a backend (waiting up to `connect_timeout` for one), connect with
//!    `connect_timeout` and TCP_NODELAY; on failure answer `FATAL 08006` naming the backend.
//! 3. Backend startup: forward the StartupMessage unchanged, relay authentication both ways, watch the
//!    server's messages for BackendKeyData (registered for cancel requests) until the first
//!    ReadyForQuery.
//! 4. Relay: copy bytes both ways with no parsing, one buffer per direction, until either side closes,
//!    the backend is fenced or the proxy shuts down.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use praetor_protocol::backend::{BACKEND_KEY_DATA, READY_FOR_QUERY};
use praetor_protocol::startup::check_truncated;
use praetor_protocol::{
    encode_error_response, CancelKey, FrameHeader, Severity, SqlState, StartupMessage,
    StartupPacket, StartupPhase, ENCRYPTION_REFUSED,
};
use prometheus::{IntCounter, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::cancel::{CancelRegistry, Registration};
use crate::metrics::{ListenerKind, Metrics, RoutingError};
use crate::router::{Fence, Route, Router};

/// Capacity of each relay buffer (one per direction), in bytes: large enough that a big result set
/// moves in few reads, small enough for thousands of connections.
const RELAY_BUFFER_BYTES: usize = 64 * 1024;

/// Initial capacity of the startup-phase read buffer, in bytes.
const STARTUP_BUFFER_BYTES: usize = 1024;

/// How long writing a final ErrorResponse to a client may take before the proxy just closes.
const ERROR_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// How many times a client whose backend was fenced while connecting is routed again.
const MAX_ROUTE_ATTEMPTS: usize = 3;

/// What every connection task shares.
pub(crate) struct Shared {
    pub router: Router,
    pub cancels: CancelRegistry,
    pub metrics: Metrics,
    pub connect_timeout: Duration,
    pub startup_timeout: Duration,
}

/// How a client's first packets ended.
enum ClientStart {
    Startup(StartupMessage),
    Cancel(CancelKey),
}

/// Why a relayed session ended.
#[derive(Debug)]
enum End {
    ClientClosed,
    ServerClosed,
    /// The backend lost the leader key (or the proxy is shutting down).
    Fenced,
    Io(io::Error),
    /// The server sent bytes that are not the protocol during the startup phase.
    Protocol(praetor_protocol::ProtocolError),
}

/// A client refused a backend: the metric reason and the text of its `FATAL 08006`.
struct Refusal {
    reason: RoutingError,
    message: String,
}

/// Decrements the connection gauge when the connection ends.
struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Serves one client connection on `listener` until it ends. Never fails: every outcome is logged
/// (at debug level for ordinary ones) and counted.
pub(crate) async fn handle_client(
    shared: Arc<Shared>,
    listener: ListenerKind,
    mut client: TcpStream,
    shutdown: CancellationToken,
) {
    if let Err(e) = client.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY on the client socket");
    }
    let mut buf = BytesMut::with_capacity(STARTUP_BUFFER_BYTES);
    let start = tokio::select! {
        _ = shutdown.cancelled() => {
            send_fatal(&mut client, SqlState::ADMIN_SHUTDOWN, "the proxy is shutting down").await;
            return;
        }
        r = tokio::time::timeout(shared.startup_timeout, read_startup(&mut client, &mut buf)) => match r {
            Ok(Some(start)) => start,
            Ok(None) => return,
            Err(_) => {
                debug!(timeout = ?shared.startup_timeout, "client sent no complete startup packet in time");
                return;
            }
        },
    };
    let startup = match start {
        ClientStart::Cancel(key) => {
            forward_cancel(&shared.cancels, key, shared.connect_timeout).await;
            return;
        }
        ClientStart::Startup(m) => m,
    };
    debug!(user = startup.user(), database = startup.database(), version = %startup.version, "startup");

    let (mut route, mut server) = match connect_backend(&shared, listener).await {
        Ok(connected) => connected,
        Err(refusal) => {
            shared.metrics.routing_error(listener, refusal.reason);
            warn!(
                listener = listener.as_str(),
                reason = refusal.reason.as_str(),
                "{}",
                refusal.message
            );
            send_fatal(&mut client, SqlState::CONNECTION_FAILURE, &refusal.message).await;
            return;
        }
    };
    let backend = route.backend.member.clone();
    tracing::Span::current().record("backend", backend.as_str());
    let _gauge = GaugeGuard(shared.metrics.connection_opened(listener, &backend));
    let (c2s, s2c) = shared.metrics.byte_counters(listener);

    // The StartupMessage unchanged, then whatever the client already sent after it.
    let sent = async {
        server.write_all(&startup.raw).await?;
        if !buf.is_empty() {
            server.write_all(&buf).await?;
            buf.clear();
        }
        io::Result::Ok(())
    }
    .await;
    if let Err(e) = sent {
        let message = format!(
            "lost the connection to {} {} while sending the startup packet: {e}",
            route.role.as_str(),
            route.backend
        );
        warn!("{message}");
        send_fatal(&mut client, SqlState::CONNECTION_FAILURE, &message).await;
        return;
    }
    c2s.inc_by(startup.raw.len() as u64);

    let mut client_buf = buf;
    client_buf.reserve(RELAY_BUFFER_BYTES);
    let mut server_buf = BytesMut::with_capacity(RELAY_BUFFER_BYTES);
    let registration = match relay_backend_startup(
        &shared.cancels,
        &mut route,
        &mut client,
        &mut server,
        &mut client_buf,
        &mut server_buf,
        (&c2s, &s2c),
    )
    .await
    {
        Ok(registration) => registration,
        Err(end) => {
            log_end(&end, &route, &shutdown, "during authentication");
            return;
        }
    };
    let end = relay(
        &mut client,
        &mut server,
        &mut client_buf,
        &mut server_buf,
        (&c2s, &s2c),
        &mut route.fence,
    )
    .await;
    drop(registration);
    log_end(&end, &route, &shutdown, "");
}

fn log_end(end: &End, route: &Route, shutdown: &CancellationToken, phase: &str) {
    match end {
        End::Fenced if shutdown.is_cancelled() => debug!("closed: the proxy is shutting down"),
        End::Fenced => {
            debug!(backend = %route.backend, "closed: fenced (the backend lost the leader key)")
        }
        End::ClientClosed => debug!("client closed the connection {phase}"),
        End::ServerClosed => debug!("server closed the connection {phase}"),
        End::Io(e) => debug!(error = %e, "connection failed {phase}"),
        End::Protocol(e) => {
            warn!(backend = %route.backend, error = %e, "backend broke the protocol {phase}")
        }
    }
}

/// Reads the client's startup-phase packets, answering encryption requests with `N`. `None` when the
/// client went away or sent garbage (answered with an ErrorResponse).
async fn read_startup(client: &mut TcpStream, buf: &mut BytesMut) -> Option<ClientStart> {
    let mut phase = StartupPhase::new();
    loop {
        match phase.decode(buf) {
            Ok(Some(StartupPacket::SslRequest | StartupPacket::GssEncRequest)) => {
                if let Err(e) = client.write_all(&[ENCRYPTION_REFUSED]).await {
                    debug!(error = %e, "cannot answer an encryption request");
                    return None;
                }
            }
            Ok(Some(StartupPacket::CancelRequest(key))) => return Some(ClientStart::Cancel(key)),
            Ok(Some(StartupPacket::Startup(m))) => return Some(ClientStart::Startup(m)),
            Ok(None) => match client.read_buf(buf).await {
                Ok(0) => {
                    if let Err(e) = check_truncated(buf) {
                        debug!(error = %e, "client left during the startup phase");
                    }
                    return None;
                }
                Ok(_) => {}
                Err(e) => {
                    debug!(error = %e, "cannot read the startup packet");
                    return None;
                }
            },
            Err(e) => {
                info!(error = %e, "invalid startup packet; closing the client");
                send_fatal(client, e.sqlstate(), &e.to_string()).await;
                return None;
            }
        }
    }
}

/// Sends `FATAL <code> <message>` and gives up after a second (the client may not be reading).
async fn send_fatal(client: &mut TcpStream, code: SqlState, message: &str) {
    let mut out = BytesMut::with_capacity(64 + message.len());
    encode_error_response(&mut out, Severity::Fatal, code, message);
    let _ = tokio::time::timeout(ERROR_WRITE_TIMEOUT, async {
        client.write_all(&out).await?;
        client.shutdown().await
    })
    .await;
}

/// Routes the client and opens the backend connection. A backend fenced while we connect to it is
/// dropped and the client routed again (a switchover in progress).
async fn connect_backend(
    shared: &Shared,
    listener: ListenerKind,
) -> Result<(Route, TcpStream), Refusal> {
    let timeout = shared.connect_timeout;
    let mut attempt = 0;
    loop {
        attempt += 1;
        let route = match shared.router.try_route(listener) {
            Some(route) => Some(route),
            None => {
                let waiting = GaugeGuard(
                    shared
                        .metrics
                        .waiting_clients
                        .with_label_values(&[listener.as_str()]),
                );
                waiting.0.inc();
                debug!(timeout = ?timeout, "no routable backend; waiting for the DCS");
                let route = shared.router.route(listener, timeout).await;
                drop(waiting);
                route
            }
        };
        let Some(mut route) = route else {
            let wanted = match listener {
                ListenerKind::ReadWrite => "no leader is available for read-write connections",
                ListenerKind::ReadOnly => {
                    "no replica or leader is available for read-only connections"
                }
            };
            return Err(Refusal {
                reason: RoutingError::NoBackend,
                message: format!("{wanted} (waited {timeout:?})"),
            });
        };
        let addr = (route.backend.host.as_str(), route.backend.port);
        let connected = tokio::select! {
            biased;
            _ = route.fence.fenced() => None,
            r = tokio::time::timeout(timeout, TcpStream::connect(addr)) => Some(r),
        };
        let described = || format!("{} {}", route.role.as_str(), route.backend);
        match connected {
            Some(Ok(Ok(server))) => {
                if let Err(e) = server.set_nodelay(true) {
                    debug!(error = %e, "cannot set TCP_NODELAY on the server socket");
                }
                // Fenced between connect and here counts as fenced while connecting.
                if !route.fence.is_fenced() {
                    return Ok((route, server));
                }
            }
            Some(Ok(Err(e))) => {
                return Err(Refusal {
                    reason: RoutingError::ConnectFailed,
                    message: format!("could not connect to {}: {e}", described()),
                })
            }
            Some(Err(_)) => {
                return Err(Refusal {
                    reason: RoutingError::ConnectTimeout,
                    message: format!("timed out after {timeout:?} connecting to {}", described()),
                })
            }
            None => {}
        }
        // Fenced while connecting.
        if attempt >= MAX_ROUTE_ATTEMPTS {
            return Err(Refusal {
                reason: RoutingError::NoBackend,
                message: format!(
                    "{} lost the leader key while connecting, {attempt} times",
                    described()
                ),
            });
        }
        debug!(backend = %route.backend, "backend fenced while connecting; routing again");
    }
}

/// Relays the authentication exchange and the server's startup messages, registering the session's
/// BackendKeyData, until the first ReadyForQuery has been forwarded. Client bytes pass through
/// unparsed (passwords, SASL). Returns the cancel registration, if the server sent a key.
async fn relay_backend_startup(
    cancels: &CancelRegistry,
    route: &mut Route,
    client: &mut TcpStream,
    server: &mut TcpStream,
    client_buf: &mut BytesMut,
    server_buf: &mut BytesMut,
    (c2s, s2c): (&IntCounter, &IntCounter),
) -> Result<Option<Registration>, End> {
    let mut registration = None;
    loop {
        tokio::select! {
            biased;
            _ = route.fence.fenced() => return Err(End::Fenced),
            r = client.read_buf(client_buf) => {
                let n = r.map_err(End::Io)?;
                if n == 0 {
                    return Err(End::ClientClosed);
                }
                server.write_all(client_buf).await.map_err(End::Io)?;
                client_buf.clear();
                c2s.inc_by(n as u64);
            }
            r = server.read_buf(server_buf) => {
                let n = r.map_err(End::Io)?;
                if n == 0 {
                    // Forward what is there (typically a FATAL ErrorResponse) before closing.
                    let _ = client.write_all(server_buf).await;
                    return Err(End::ServerClosed);
                }
                // Find the complete messages in the buffer, decoding only K and Z.
                let mut end = 0;
                let mut ready = false;
                while let Some(h) = FrameHeader::peek(&server_buf[end..]).map_err(End::Protocol)? {
                    let Some(body) = h.body(&server_buf[end..]) else { break };
                    match h.tag {
                        BACKEND_KEY_DATA => {
                            let key = CancelKey::from_backend_key_data(body).map_err(End::Protocol)?;
                            registration = Some(cancels.register(key, route.backend.clone()));
                        }
                        READY_FOR_QUERY => ready = true,
                        _ => {}
                    }
                    end += h.frame_len;
                    if ready {
                        break;
                    }
                }
                if ready {
                    // Anything after ReadyForQuery goes along too; from here on bytes are not parsed.
                    end = server_buf.len();
                }
                if end > 0 {
                    client.write_all(&server_buf[..end]).await.map_err(End::Io)?;
                    server_buf.advance(end);
                    s2c.inc_by(end as u64);
                }
                if ready {
                    return Ok(registration);
                }
            }
        }
    }
}

/// Copies bytes both ways until a side closes, an I/O error, or `fence` resolves. The hot path:
/// one buffer per direction reused for every read, one write per read, one counter increment per
/// read, no parsing, no locks, no allocation.
///
/// When the client closes its side, the server's write side is shut down and the server's remaining
/// output is still relayed until it closes (PostgreSQL ends the session on end-of-file); when the
/// server closes, the session is over.
async fn relay(
    client: &mut TcpStream,
    server: &mut TcpStream,
    client_buf: &mut BytesMut,
    server_buf: &mut BytesMut,
    (c2s, s2c): (&IntCounter, &IntCounter),
    fence: &mut Fence,
) -> End {
    let (mut client_rd, mut client_wr) = client.split();
    let (mut server_rd, mut server_wr) = server.split();
    // Leftover capacity lost to earlier `advance` calls is reclaimed here, once.
    client_buf.reserve(RELAY_BUFFER_BYTES);
    server_buf.reserve(RELAY_BUFFER_BYTES);

    let client_to_server = async {
        loop {
            let n = client_rd.read_buf(client_buf).await?;
            if n == 0 {
                let _ = server_wr.shutdown().await;
                return io::Result::Ok(());
            }
            server_wr.write_all(client_buf).await?;
            client_buf.clear();
            c2s.inc_by(n as u64);
        }
    };
    let server_to_client = async {
        loop {
            let n = server_rd.read_buf(server_buf).await?;
            if n == 0 {
                return io::Result::Ok(());
            }
            client_wr.write_all(server_buf).await?;
            server_buf.clear();
            s2c.inc_by(n as u64);
        }
    };
    tokio::pin!(client_to_server, server_to_client);
    let mut client_open = true;
    loop {
        tokio::select! {
            biased;
            _ = fence.fenced() => return End::Fenced,
            r = &mut server_to_client => return match r {
                Ok(()) => End::ServerClosed,
                Err(e) => End::Io(e),
            },
            r = &mut client_to_server, if client_open => match r {
                Ok(()) => client_open = false,
                Err(e) => return End::Io(e),
            },
        }
    }
}

/// Forwards a CancelRequest to the backend that issued `key` and waits (up to `timeout`) until that
/// backend closes the connection, as libpq does, so the client's own wait for end-of-file means the
/// request was delivered. An unknown key is dropped silently, like PostgreSQL does.
async fn forward_cancel(cancels: &CancelRegistry, key: CancelKey, timeout: Duration) {
    let Some(backend) = cancels.lookup(&key) else {
        debug!(
            pid = key.pid,
            "cancel request for an unknown session; ignored"
        );
        return;
    };
    let forwarded = tokio::time::timeout(timeout, async {
        let mut server = TcpStream::connect((backend.host.as_str(), backend.port)).await?;
        server.set_nodelay(true)?;
        let mut packet = BytesMut::with_capacity(16);
        key.encode_cancel_request(&mut packet);
        server.write_all(&packet).await?;
        let mut sink = [0u8; 64];
        while server.read(&mut sink).await? > 0 {}
        io::Result::Ok(())
    })
    .await;
    match forwarded {
        Ok(Ok(())) => debug!(pid = key.pid, backend = %backend, "cancel request forwarded"),
        Ok(Err(e)) => {
            info!(pid = key.pid, backend = %backend, error = %e, "cannot forward cancel request")
        }
        Err(_) => info!(pid = key.pid, backend = %backend, "timed out forwarding cancel request"),
    }
}
