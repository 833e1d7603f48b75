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
//!
//! The fence stops only a server of this cluster: an address can be reused (a rebuilt host, a test
//! box), so before anything else it reads the target's database system identifier
//! (`pg_control_system()`) and compares it with the cluster's (the DCS `initialize` key). A server of
//! another cluster is left running ([`FenceOutcome::OtherCluster`], see [`judge`]): it cannot
//! acknowledge writes of this cluster, so it does not stand in the way of the promotion either.

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
    /// It runs, but belongs to another cluster (its system identifier is `found`, not ours): left
    /// running, and no former primary of ours is there.
    OtherCluster {
        /// The target's database system identifier.
        found: String,
    },
    /// Neither stopped nor proven down (timeout, authentication refused, ...).
    Unknown(String),
}

impl FenceOutcome {
    /// True when the former primary can no longer acknowledge writes and has finished sending WAL.
    pub fn is_safe(&self) -> bool {
        matches!(
            self,
            FenceOutcome::Stopped
                | FenceOutcome::NotPrimary
                | FenceOutcome::Down
                | FenceOutcome::OtherCluster { .. }
        )
    }
}

/// What to do with a server that answered the fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Ours and a primary: stop it.
    Stop,
    /// Ours (or not checkable) and in recovery: nothing to do.
    NotPrimary,
    /// Not ours: never stop it, whatever its role.
    OtherCluster {
        /// The target's database system identifier.
        found: String,
    },
}

/// The fence's decision for a server that answered: its system identifier `found` and
/// `pg_is_in_recovery()`, against the cluster's system identifier `expected` (the DCS `initialize`
/// key, or this member's own `pg_control` when the key holds none). A different identifier wins over
/// everything: a server of another cluster is never stopped. `expected` `None` or empty (no
/// identifier known, e.g. during bootstrap) skips the check: the fence then behaves as it did before
/// the check existed.
pub fn judge(expected: Option<&str>, found: &str, in_recovery: bool) -> Verdict {
    match expected.map(str::trim).filter(|e| !e.is_empty()) {
        Some(e) if e != found.trim() => Verdict::OtherCluster {
            found: found.trim().to_string(),
        },
        _ if in_recovery => Verdict::NotPrimary,
        _ => Verdict::Stop,
    }
}

/// Fences the PostgreSQL at `host:port` using `superuser`, if it belongs to the cluster whose
/// system identifier is `sysid` (see [`judge`]): each connection and query is bounded by `timeout`
/// (no answer by then: [`FenceOutcome::Unknown`]), and the wait for a primary that was told to stop
/// (or was already shutting down) to be gone by `shutdown`.
pub async fn fence_primary(
    host: &str,
    port: u16,
    superuser: &Credentials,
    sysid: Option<&str>,
    timeout: Duration,
    shutdown: Duration,
) -> FenceOutcome {
    match connect(host, port, superuser, timeout).await {
        Ok(client) => {
            let (found, in_recovery) = match tokio::time::timeout(
                timeout,
                client.query_one(
                    "SELECT system_identifier::text, pg_is_in_recovery() FROM pg_control_system()",
                    &[],
                ),
            )
            .await
            {
                Ok(Ok(row)) => (row.get::<_, String>(0), row.get::<_, bool>(1)),
                Ok(Err(e)) => return classify(&e),
                Err(_) => return FenceOutcome::Unknown("query timed out".into()),
            };
            match judge(sysid, &found, in_recovery) {
                Verdict::OtherCluster { found } => return FenceOutcome::OtherCluster { found },
                Verdict::NotPrimary => return FenceOutcome::NotPrimary,
                Verdict::Stop => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_server_of_this_cluster_is_stopped() {
        let other = |found: &str| Verdict::OtherCluster {
            found: found.into(),
        };
        // (expected sysid, found sysid, in recovery, verdict)
        let rows = [
            (Some("7711"), "7711", false, Verdict::Stop),
            (Some("7711"), "7711", true, Verdict::NotPrimary),
            (Some("7711"), "9999", false, other("9999")),
            (Some("7711"), "9999", true, other("9999")),
            (Some(" 7711\n"), "7711", false, Verdict::Stop),
            // No identifier known (bootstrap placeholder, or none): the role alone decides.
            (Some(""), "9999", false, Verdict::Stop),
            (None, "9999", false, Verdict::Stop),
            (None, "9999", true, Verdict::NotPrimary),
        ];
        for (expected, found, in_recovery, verdict) in rows {
            assert_eq!(
                judge(expected, found, in_recovery),
                verdict,
                "expected {expected:?}, found {found}, in recovery {in_recovery}"
            );
        }
    }

    #[test]
    fn another_cluster_does_not_stand_in_the_way_of_the_promotion() {
        assert!(FenceOutcome::OtherCluster {
            found: "9999".into()
        }
        .is_safe());
    }
}
