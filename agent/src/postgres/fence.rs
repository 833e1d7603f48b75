//! Fencing a former primary before promoting a replica.
//!
//! Patroni's known hole: when the primary's agent dies (kill -9) or freezes, its PostgreSQL keeps
//! accepting writes after another member is promoted, and those writes are lost when it rejoins.
//! Praetor's race winner closes the hole before it promotes: it connects to the former primary as
//! the superuser and, if that server still runs as a primary, stops it (a fast shutdown of its
//! postmaster, run on the old node through `COPY ... TO PROGRAM`, a superuser's right). A fast
//! shutdown refuses new connections and ends every session at once, then sends all remaining WAL to
//! the connected standbys before it exits: the winner, still streaming from it, receives every commit
//! the old primary acknowledged. Only when the former primary is gone (connection refused), or
//! provably not a primary (in recovery), does the winner promote. A former primary that does not
//! answer at all within `praetor.fence_timeout_ms` (a frozen or cut-off host) cannot be proven down:
//! the winner promotes anyway, since a live agent there stopped its PostgreSQL at its demotion
//! deadline (`loop_wait + retry_timeout`, shorter than the ttl that had to expire first), and keeps
//! fencing it in the background until it is provably down, so that a host that wakes up is stopped
//! by whichever comes first: its own agent or the new leader. What remains open (a dead agent on a
//! host the members cannot reach but clients can, without a watchdog) is the watchdog's to close.

use std::time::Duration;

use praetor_config::Credentials;

/// What fencing found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceOutcome {
    /// It was a running primary and is now stopped.
    Stopped,
    /// It runs, but not as a primary (in recovery): nothing to fence.
    NotPrimary,
    /// Nothing accepts connections there (refused, or the server is starting up).
    Down,
    /// It is shutting down (it acknowledges no more writes, but may still be sending WAL).
    ShuttingDown,
    /// Neither stopped nor proven down (timeout, authentication refused, ...).
    Unknown(String),
}

impl FenceOutcome {
    /// True when the former primary can no longer acknowledge writes and has finished sending WAL.
    pub fn is_safe(&self) -> bool {
        matches!(
            self,
            FenceOutcome::Stopped | FenceOutcome::NotPrimary | FenceOutcome::Down
        )
    }
}

/// Fences the PostgreSQL at `host:port` using `superuser`: each connection and query is bounded by
/// `timeout` (no answer by then: [`FenceOutcome::Unknown`]), and the wait for a primary that was
/// told to stop (or was already shutting down) to be gone by `shutdown`.
pub async fn fence_primary(
    host: &str,
    port: u16,
    superuser: &Credentials,
    timeout: Duration,
    shutdown: Duration,
) -> FenceOutcome {
    match connect(host, port, superuser, timeout).await {
        Ok(client) => {
            let in_recovery = match tokio::time::timeout(
                timeout,
                client.query_one("SELECT pg_is_in_recovery()", &[]),
            )
            .await
            {
                Ok(Ok(row)) => row.get::<_, bool>(0),
                Ok(Err(e)) => return classify(&e),
                Err(_) => return FenceOutcome::Unknown("query timed out".into()),
            };
            if in_recovery {
                return FenceOutcome::NotPrimary;
            }
            // The postmaster's PID is the first line of postmaster.pid; SIGINT is a fast shutdown.
            let stop = "DO $$ DECLARE pid text := split_part(pg_read_file('postmaster.pid'), E'\\n', 1); \
                        BEGIN EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'kill -INT ' || pid); END $$";
            if let Ok(Err(e)) = tokio::time::timeout(timeout, client.batch_execute(stop)).await {
                // The shutdown also ends our own session: an error here may be the success.
                tracing::debug!("fencing statement ended with: {e}");
            }
        }
        Err(FenceOutcome::ShuttingDown) => {}
        Err(other) => return other,
    }
    // Wait until it is gone (refuses connections): a shutting-down primary may still be sending the
    // WAL our standby needs before promoting.
    let deadline = tokio::time::Instant::now() + shutdown;
    loop {
        match connect(host, port, superuser, timeout).await {
            Err(FenceOutcome::Down) => return FenceOutcome::Stopped,
            Err(FenceOutcome::ShuttingDown) | Err(FenceOutcome::Unknown(_)) => {}
            Err(other) => return other,
            Ok(c) => {
                if let Ok(Ok(row)) =
                    tokio::time::timeout(timeout, c.query_one("SELECT pg_is_in_recovery()", &[]))
                        .await
                {
                    if row.get::<_, bool>(0) {
                        return FenceOutcome::NotPrimary;
                    }
                }
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return FenceOutcome::Unknown(
                "the former primary did not finish shutting down in time".into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn connect(
    host: &str,
    port: u16,
    superuser: &Credentials,
    timeout: Duration,
) -> Result<tokio_postgres::Client, FenceOutcome> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(host)
        .port(port)
        .user(&superuser.username)
        .dbname("postgres")
        .application_name("praetor-fence")
        .connect_timeout(timeout);
    if let Some(pw) = &superuser.password {
        cfg.password(pw);
    }
    match tokio::time::timeout(timeout, cfg.connect(tokio_postgres::NoTls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Ok(client)
        }
        Ok(Err(e)) => Err(classify(&e)),
        Err(_) => Err(FenceOutcome::Unknown(format!(
            "{host}:{port}: no answer within {timeout:?}"
        ))),
    }
}

/// Maps a connection or query error to what it proves.
fn classify(e: &tokio_postgres::Error) -> FenceOutcome {
    if let Some(db) = e.as_db_error() {
        // 57P03 cannot_connect_now: shutting down, or starting up / in recovery mode; 57P01 admin
        // shutdown: the server is going away. Starting up proves nothing: a primary restarting after
        // a crash (restart_after_crash) comes back as a primary; 57P02 (crash of another backend)
        // announces exactly that restart.
        return match db.code().code() {
            "57P03" if db.message().contains("shutting down") => FenceOutcome::ShuttingDown,
            "57P01" => FenceOutcome::ShuttingDown,
            code => FenceOutcome::Unknown(format!("{code}: {}", db.message())),
        };
    }
    // Only a refused connection proves that no postmaster listens there; a connection that closed
    // may be a server restarting.
    let refused = std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
    if refused {
        FenceOutcome::Down
    } else {
        FenceOutcome::Unknown(e.to_string())
    }
}
