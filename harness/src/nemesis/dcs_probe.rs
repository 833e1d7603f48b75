//! When a DCS accepts client requests again after a quorum loss healed, or after its own leader
//! was stopped: the runner probes every server until one answers a request that needs the quorum,
//! so the checker can tell the DCS's own recovery (an election, sessions accepted again) from the
//! agents' ([`super::checker`]: the quorum loss's bound counts from this moment when it comes
//! after the heal, the leader's stop's from this moment after the stop).
//!
//! The requests, each with a short timeout, to one server at a time (no client failover between
//! servers, so each server's answer is its own):
//! - etcd: a `get` of a key that need not exist, linearizable (`serializable = false`, etcd's
//!   default): answered only by a member with a leader and a quorum behind it.
//! - ZooKeeper: a new session on that server alone, then `exists` on `/`: a server grants
//!   sessions only while it leads or follows a quorum (ZooKeeper closes the connection while it
//!   looks for a leader). The session is closed when the client is dropped.

use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

/// How long one request to one server may take before the probe tries again.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);

/// The pause between two attempts on one server that failed at once (a refused connection).
pub const ATTEMPT_PACE: Duration = Duration::from_millis(100);

/// The session timeout the ZooKeeper probe asks for (servers grant 1..60 s:
/// [`crate::dcs::ZOOKEEPER_TICK_MS`]): short, so a probe's session that outlives its client
/// expires soon.
const ZOOKEEPER_PROBE_SESSION: Duration = Duration::from_secs(2);

/// One request that needs the DCS's quorum to server `host` (`ip:port`) of the DCS whose
/// configuration section is `section` (`etcd3` or `zookeeper`, as
/// [`crate::dcs::LocalDcs::section_and_hosts`] names it), within [`ATTEMPT_TIMEOUT`].
///
/// Errors: the server's refusal or the client's error, the timeout, or an unknown `section`.
pub async fn accepts_request(section: &str, host: &str) -> Result<(), String> {
    let request = async {
        match section {
            "etcd3" => {
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(ATTEMPT_TIMEOUT)
                    .with_timeout(ATTEMPT_TIMEOUT);
                let mut client =
                    etcd_client::Client::connect([format!("http://{host}")], Some(options))
                        .await
                        .map_err(|e| format!("connect: {e}"))?;
                // Linearizable unless `with_serializable()` is asked for.
                client
                    .get("/praetor-nemesis-probe", None)
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("get: {e}"))
            }
            "zookeeper" => {
                let client = zookeeper_client::Client::connector()
                    .with_session_timeout(ZOOKEEPER_PROBE_SESSION)
                    .connect(host)
                    .await
                    .map_err(|e| format!("session: {e}"))?;
                client
                    .check_stat("/")
                    .await
                    .map(|_| ())
                    .map_err(|e| format!("exists: {e}"))
            }
            other => Err(format!("no probe for a DCS section {other:?}")),
        }
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, request)
        .await
        .map_err(|_| format!("{section} {host}: no answer within {ATTEMPT_TIMEOUT:?}"))?
        .map_err(|e| format!("{section} {host}: {e}"))
}

/// Probes every server of `hosts` at once, each in a loop ([`accepts_request`], attempts at
/// least [`ATTEMPT_PACE`] apart), until one accepts a request; returns how long after the call
/// that was, or, when none did within `give_up`, the last error of each server.
pub async fn first_acceptance(
    section: &'static str,
    hosts: Vec<String>,
    give_up: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let deadline = started + give_up;
    let mut probes = JoinSet::new();
    for host in hosts {
        probes.spawn(async move {
            let mut last = String::new();
            while Instant::now() < deadline {
                let attempt = Instant::now();
                match accepts_request(section, &host).await {
                    Ok(()) => return Ok(Instant::now()),
                    Err(e) => last = e,
                }
                tokio::time::sleep_until((attempt + ATTEMPT_PACE).min(deadline)).await;
            }
            Err(last)
        });
    }
    let mut errors = Vec::new();
    while let Some(joined) = probes.join_next().await {
        match joined {
            Ok(Ok(at)) => {
                probes.abort_all();
                return Ok(at - started);
            }
            Ok(Err(e)) => errors.push(e),
            Err(e) => errors.push(format!("probe task: {e}")),
        }
    }
    Err(format!(
        "no DCS server accepted a request within {give_up:?}: {}",
        errors.join("; ")
    ))
}
