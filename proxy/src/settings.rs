//! The proxy's settings, resolved from `praetor.proxy` in the configuration file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use praetor_config::{Address, ProxyConfig};
use praetor_protocol::DEFAULT_MAX_MESSAGE_LEN;

use crate::admin_auth::{AdminAccess, AdminAuthMethod};
use crate::auth::{AuthSettings, AuthType, DEFAULT_AUTH_QUERY};
use crate::error::ProxyError;

/// Default of `praetor.proxy.connect_timeout`, in seconds.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u32 = 5;

/// How long a client may take to send its startup packet (PostgreSQL's `authentication_timeout`
/// default): a client that stalls longer is dropped.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of `praetor.proxy.client_message_timeout`: how long an auto-port client may send
/// nothing in the middle of a message (PostgreSQL itself waits forever; the proxy buffers what it
/// routes on, so it does not).
pub const DEFAULT_MESSAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Default of `praetor.proxy.max_client_conn` (PgBouncer's default is 100; the proxy's idle
/// clients cost a few kilobytes each, benches/proxy.rs).
pub const DEFAULT_MAX_CLIENT_CONN: usize = 10_000;

/// Default of `praetor.proxy.shutdown_timeout`: how long a shutdown lets clients finish.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Default of `praetor.proxy.drain_timeout`: how long a transaction on the leader (read-write or
/// auto port) may run on once the DCS asks the leader to step down, before the proxy cancels it.
/// Below the 5 s the
/// stepping-down leader's agent itself waits for transactions in progress before its fast stop, so
/// that the proxy's cancel, with its message naming `drain_timeout`, comes first; PgBouncer-like
/// tens of seconds would never act, the agent's stop coming first.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(4);

/// Where the auto port sends a session's transactions (`praetor.target`, per-database `target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// Everything to the leader.
    Primary,
    /// Everything to a replica (the leader when none is fresh and `reads_on_leader`).
    Replica,
    /// Per transaction: reads to a replica, the rest to the leader.
    #[default]
    Any,
}

impl Target {
    /// `primary` (or `master`, `leader`, `read-write`), `replica` (`standby`, `read-only`), `any`.
    pub fn parse(s: &str) -> Option<Target> {
        match s.trim().to_ascii_lowercase().as_str() {
            "primary" | "master" | "leader" | "read-write" | "read_write" => Some(Target::Primary),
            "replica" | "standby" | "read-only" | "read_only" => Some(Target::Replica),
            "any" | "auto" => Some(Target::Any),
            _ => None,
        }
    }

    /// `primary`, `replica`, `any`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Target::Primary => "primary",
            Target::Replica => "replica",
            Target::Any => "any",
        }
    }
}

/// Default of `praetor.proxy.query_wait_timeout` (PgBouncer's).
pub const DEFAULT_QUERY_WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Default of `praetor.proxy.server_lifetime` (PgBouncer's).
pub const DEFAULT_SERVER_LIFETIME: Duration = Duration::from_secs(3600);

/// Default of `praetor.proxy.server_idle_timeout` (the proxy's pool kept idle connections this
/// long before the setting existed; PgBouncer's default is 600 s).
pub const DEFAULT_SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How the auto port pools server connections (`praetor.proxy.pool_mode`).
///
/// Both modes route transaction by transaction and pool the connections of sessions without
/// session state (a named prepared statement is no session state with `max_prepared_statements`).
/// `databases.<db>.pool_mode` sets it per database ([`ProxySettings::database_pool_modes`]).
/// PgBouncer's `server_reset_query` is not run: PgBouncer skips it in transaction mode too
/// (`server_reset_query_always` off), and sessions with state are never pooled here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PoolMode {
    /// `pool_size` bounds the idle connections kept; a session keeps its connection for
    /// `idle_release_ms` after a transaction and opens one whenever it needs it.
    #[default]
    Auto,
    /// PgBouncer's transaction pooling: `pool_size` bounds every server connection per server
    /// and StartupMessage, a session gives its connection back at the end of each transaction
    /// (`idle_release_ms` is 0), and a transaction that finds none free waits up to
    /// `query_wait_timeout` for one, then gets an error (08006).
    Transaction,
}

impl PoolMode {
    /// `auto` or `transaction`.
    pub fn parse(s: &str) -> Option<PoolMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(PoolMode::Auto),
            "transaction" => Some(PoolMode::Transaction),
            _ => None,
        }
    }

    /// The setting's spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            PoolMode::Auto => "auto",
            PoolMode::Transaction => "transaction",
        }
    }
}

/// How fresh a replica must be to get reads (`max_replica_lag`, `max_replica_lag_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LagPolicy {
    /// Bytes behind the leader's WAL position; `None`: no limit.
    pub max_bytes: Option<u64>,
    /// Seconds behind; `None`: no limit.
    pub max_seconds: Option<f64>,
    /// When no replica qualifies, reads go to the leader (`reads_on_leader`, default true).
    pub reads_on_leader: bool,
}

/// What [`crate::Proxy::bind`] needs. Listener addresses are `host:port` as in the YAML file; `host` may
/// be an IP address, a name, `*` (all IPv4 interfaces) or a comma-separated list of those; port 0 picks a
/// free port (see [`crate::Proxy::rw_addr`]).
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// `praetor.proxy.read_write.listen`: connections go to the leader.
    pub read_write: Option<Address>,
    /// `praetor.proxy.read_only.listen`: connections round-robin over running replicas, falling back
    /// to the leader when there is none.
    pub read_only: Option<Address>,
    /// `praetor.proxy.auto.listen`: transactions routed one by one.
    pub auto: Option<Address>,
    /// `praetor.proxy.admin.listen`: the admin console.
    pub admin: Option<Address>,
    /// `praetor.proxy.metrics.listen`: Prometheus metrics at `GET /metrics`.
    pub metrics: Option<Address>,
    /// `praetor.proxy.connect_timeout`: how long a client waits for a routable backend, and then how
    /// long the TCP connection to it may take.
    pub connect_timeout: Duration,
    /// `praetor.proxy.authentication_timeout`: how long a client may take to send its startup
    /// packet, and on the auto port to answer the password request (60 s).
    pub startup_timeout: Duration,
    /// `praetor.proxy.client_message_timeout`: how long an auto-port client may pause in the
    /// middle of a message (60 s).
    pub message_timeout: Duration,
    /// `praetor.proxy.max_client_conn`: client connections at once (10000).
    pub max_client_conn: usize,
    /// `praetor.proxy.classifier_cache_size`: bytes of the classifier's cache (16 MiB).
    pub classifier_cache_bytes: usize,
    /// `praetor.proxy.id`: the proxy's name in the DCS; `None`: `<hostname>-<first port>`.
    pub id: Option<String>,
    /// `praetor.proxy.tls`: certificate, key, and whether clients must use TLS.
    pub tls: Option<(PathBuf, PathBuf, bool)>,
    /// `praetor.proxy.backend_tls`: mode and CA file.
    pub backend_tls: (Option<String>, Option<PathBuf>),
    /// Which replicas get reads.
    pub lag: LagPolicy,
    /// `praetor.proxy.max_message_size` (auto port), bytes.
    pub max_message_size: usize,
    /// `praetor.proxy.shutdown_timeout`.
    pub shutdown_timeout: Duration,
    /// `praetor.proxy.drain_timeout` (default [`DEFAULT_DRAIN_TIMEOUT`]; 0: cancel at once), in
    /// whole seconds: how long a transaction running on the leader when the DCS asks it to step
    /// down (a switchover) may go on, counted from the moment the proxy sees the switchover, before
    /// the proxy sends its server a CancelRequest, relays the server's answer (a result still
    /// streaming ends with the server's error, [`crate::conn::drain_end`]) and ends its session
    /// with `FATAL 57P01` naming drain_timeout ([`crate::rw::drained_message`]). A session pinned
    /// to that leader moves, or works on there until the leader stops or this passes, then ends at
    /// its idle point ([`crate::units::pinned_drain`]). Every
    /// port that reaches the leader: the
    /// read-write port's transaction ([`crate::rw::drain`]) and the auto port's unit on the leader
    /// ([`crate::units::leader_drain`]).
    pub drain_timeout: Duration,
    /// `praetor.proxy.read_only_functions`.
    pub read_only_functions: Vec<String>,
    /// `praetor.proxy.databases.<db>.target`.
    pub database_targets: HashMap<String, Target>,
    /// `praetor.proxy.read_your_writes` (default true): see [`crate::ryw`].
    pub read_your_writes: bool,
    /// `praetor.proxy.databases.<db>.read_your_writes`, where given.
    pub database_read_your_writes: HashMap<String, bool>,
    /// `praetor.proxy.pool_size` (20): with `pool_mode: auto`, idle server connections kept per
    /// server and StartupMessage (user, database, options); with `pool_mode: transaction`, every
    /// server connection to a server per StartupMessage, idle or in use (PgBouncer's
    /// `default_pool_size`).
    pub pool_size: usize,
    /// `praetor.proxy.pool_mode`: see [`PoolMode`].
    pub pool_mode: PoolMode,
    /// `praetor.proxy.databases.<db>.pool_mode`, where given: the database's sessions pool as
    /// this says (`pool_mode` is the default). `pool_size` and `query_wait_timeout` are shared.
    pub database_pool_modes: HashMap<String, PoolMode>,
    /// `praetor.proxy.max_prepared_statements` (0): named prepared statements tracked per server
    /// connection (PgBouncer's setting, see [`crate::prepared`]; SQL-level `PREPARE`d ones are
    /// counted apart); 0 leaves them pinning the session.
    pub max_prepared_statements: usize,
    /// `praetor.proxy.query_wait_timeout` (120 s): how long a transaction waits for a server
    /// connection in `pool_mode: transaction`.
    pub query_wait_timeout: Duration,
    /// `praetor.proxy.server_lifetime` (3600 s; 0 disables it): a pooled connection older than
    /// this is closed instead of pooled.
    pub server_lifetime: Option<Duration>,
    /// `praetor.proxy.server_idle_timeout` (60 s): how long an idle pooled connection is kept.
    pub server_idle_timeout: Duration,
    /// `praetor.proxy.idle_release_ms`: idle time after which an auto-port client's server
    /// connections return to the pool (0 with `pool_mode: transaction`).
    pub idle_release: Duration,
    /// `praetor.proxy.idle_release_ms` as configured (default 1 s): the release time of the
    /// databases whose `databases.<db>.pool_mode` is `auto` when `pool_mode` is `transaction`.
    pub auto_idle_release: Duration,
    /// `praetor.proxy.admin_users`, `auth_file`, `admin_auth`: who may use the admin console.
    /// This struct's default trusts every user (for tests on loopback listeners); the
    /// configuration file's default is SCRAM-SHA-256 ([`ProxySettings::from_config`]).
    pub admin_access: AdminAccess,
    /// `praetor.proxy.auth_type`, `auth_file`, `auth_query`, `auth_user`, `auth_password`: how
    /// the auto port authenticates clients.
    pub auth: AuthSettings,
}

impl Default for ProxySettings {
    /// No listeners, 5 s connect timeout, 60 s startup timeout, no TLS, no lag limit (reads fall back
    /// to the leader), read-your-writes on, 1 GiB messages, 10 s shutdown, pool of 20, release after 1 s.
    fn default() -> ProxySettings {
        ProxySettings {
            read_write: None,
            read_only: None,
            auto: None,
            admin: None,
            metrics: None,
            connect_timeout: Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS.into()),
            startup_timeout: DEFAULT_STARTUP_TIMEOUT,
            message_timeout: DEFAULT_MESSAGE_TIMEOUT,
            max_client_conn: DEFAULT_MAX_CLIENT_CONN,
            classifier_cache_bytes: praetor_protocol::DEFAULT_CLASSIFIER_CACHE_BYTES,
            id: None,
            tls: None,
            backend_tls: (None, None),
            lag: LagPolicy {
                reads_on_leader: true,
                ..LagPolicy::default()
            },
            max_message_size: DEFAULT_MAX_MESSAGE_LEN,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            read_only_functions: Vec::new(),
            database_targets: HashMap::new(),
            read_your_writes: true,
            database_read_your_writes: HashMap::new(),
            pool_size: 20,
            pool_mode: PoolMode::Auto,
            database_pool_modes: HashMap::new(),
            max_prepared_statements: 0,
            query_wait_timeout: DEFAULT_QUERY_WAIT_TIMEOUT,
            server_lifetime: Some(DEFAULT_SERVER_LIFETIME),
            server_idle_timeout: DEFAULT_SERVER_IDLE_TIMEOUT,
            idle_release: Duration::from_millis(1000),
            auto_idle_release: Duration::from_millis(1000),
            admin_access: AdminAccess {
                method: AdminAuthMethod::Trust,
                ..AdminAccess::default()
            },
            auth: AuthSettings::default(),
        }
    }
}

/// Whether every host of `address` is a loopback address (`127.0.0.0/8`, `::1`, `localhost`);
/// `*`, `0.0.0.0` and other names are not.
pub fn is_loopback(address: &Address) -> bool {
    address
        .host
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .all(|h| {
            h.eq_ignore_ascii_case("localhost")
                || h.trim_start_matches('[')
                    .trim_end_matches(']')
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        })
}

/// Checks the admin console's access rules against its listener: without `admin_users`, only
/// `admin_auth: trust` on a loopback listener is accepted; a password method needs `auth_file`
/// (readable, well-formed). Errors name the key.
pub fn check_admin_access(
    listener: Option<&Address>,
    access: &AdminAccess,
) -> Result<(), ProxyError> {
    let Some(listener) = listener else {
        return Ok(());
    };
    if access.users.is_empty() {
        if access.method != AdminAuthMethod::Trust {
            return Err(ProxyError::Config {
                key: "praetor.proxy.admin_users",
                reason: "the admin console needs admin_users (checked against auth_file), or \
                         admin_auth: trust on a loopback listener"
                    .into(),
            });
        }
        if !is_loopback(listener) {
            return Err(ProxyError::Config {
                key: "praetor.proxy.admin_users",
                reason: format!(
                    "the admin console listens on {listener}, not a loopback address: give \
                     admin_users (and auth_file)"
                ),
            });
        }
    }
    if access.method != AdminAuthMethod::Trust {
        let Some(path) = &access.auth_file else {
            return Err(ProxyError::Config {
                key: "praetor.proxy.auth_file",
                reason: format!(
                    "admin_auth {} needs auth_file (PgBouncer's userlist.txt format)",
                    access.method.as_str()
                ),
            });
        };
        crate::auth::read_auth_file(path)?;
    }
    Ok(())
}

impl ProxySettings {
    /// Resolves `praetor.proxy`. Errors: no client listener, a `connect_timeout` of 0, TLS without a
    /// certificate or key, an unknown database target.
    pub fn from_config(c: &ProxyConfig) -> Result<ProxySettings, ProxyError> {
        if c.read_write.is_none() && c.read_only.is_none() && c.auto.is_none() {
            return Err(ProxyError::Config {
                key: "praetor.proxy.read_write",
                reason:
                    "give praetor.proxy.read_write.listen, praetor.proxy.read_only.listen and/or praetor.proxy.auto.listen"
                        .into(),
            });
        }
        let secs = c.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECS);
        if secs == 0 {
            return Err(ProxyError::Config {
                key: "praetor.proxy.connect_timeout",
                reason: "must be at least 1 (seconds)".into(),
            });
        }
        let tls = match &c.tls {
            None => None,
            Some(t) => match (&t.certfile, &t.keyfile) {
                (Some(cert), Some(key)) => Some((cert.clone(), key.clone(), t.required)),
                _ => {
                    return Err(ProxyError::Config {
                        key: "praetor.proxy.tls",
                        reason: "give both certfile and keyfile".into(),
                    })
                }
            },
        };
        let mut database_targets = HashMap::new();
        for (db, d) in &c.databases {
            if let Some(t) = &d.target {
                let target = Target::parse(t).ok_or_else(|| ProxyError::Config {
                    key: "praetor.proxy.databases",
                    reason: format!("{db}.target: {t:?} is not primary, replica or any"),
                })?;
                database_targets.insert(db.clone(), target);
            }
        }
        let max_message_size = match c.max_message_size {
            None => DEFAULT_MAX_MESSAGE_LEN,
            Some(n) if n < 1024 => {
                return Err(ProxyError::Config {
                    key: "praetor.proxy.max_message_size",
                    reason: "must be at least 1kB".into(),
                })
            }
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let positive_secs = |v: Option<u32>, key: &'static str, default: Duration| match v {
            None => Ok(default),
            Some(0) => Err(ProxyError::Config {
                key,
                reason: "must be at least 1 (seconds)".into(),
            }),
            Some(n) => Ok(Duration::from_secs(n.into())),
        };
        let startup_timeout = positive_secs(
            c.authentication_timeout,
            "praetor.proxy.authentication_timeout",
            DEFAULT_STARTUP_TIMEOUT,
        )?;
        let message_timeout = positive_secs(
            c.client_message_timeout,
            "praetor.proxy.client_message_timeout",
            DEFAULT_MESSAGE_TIMEOUT,
        )?;
        let pool_mode = match c.pool_mode.as_deref() {
            None => PoolMode::Auto,
            Some(m) => PoolMode::parse(m).ok_or_else(|| ProxyError::Config {
                key: "praetor.proxy.pool_mode",
                reason: format!("{m:?} is not auto or transaction"),
            })?,
        };
        let mut database_pool_modes = HashMap::new();
        for (db, d) in &c.databases {
            if let Some(m) = &d.pool_mode {
                let mode = PoolMode::parse(m).ok_or_else(|| ProxyError::Config {
                    key: "praetor.proxy.databases",
                    reason: format!("{db}.pool_mode: {m:?} is not auto or transaction"),
                })?;
                database_pool_modes.insert(db.clone(), mode);
            }
        }
        let pool_size = c.pool_size.map_or(20, |n| n as usize);
        let any_transaction = pool_mode == PoolMode::Transaction
            || database_pool_modes
                .values()
                .any(|m| *m == PoolMode::Transaction);
        if pool_size == 0 && any_transaction {
            return Err(ProxyError::Config {
                key: "praetor.proxy.pool_size",
                reason: "must be at least 1 with pool_mode: transaction".into(),
            });
        }
        let max_client_conn = match c.max_client_conn {
            None => DEFAULT_MAX_CLIENT_CONN,
            Some(0) => {
                return Err(ProxyError::Config {
                    key: "praetor.proxy.max_client_conn",
                    reason: "must be at least 1".into(),
                })
            }
            Some(n) => n as usize,
        };
        let method = match &c.admin_auth {
            None => AdminAuthMethod::ScramSha256,
            Some(m) => AdminAuthMethod::parse(m).ok_or_else(|| ProxyError::Config {
                key: "praetor.proxy.admin_auth",
                reason: format!("{m:?} is not scram-sha-256, md5 or trust"),
            })?,
        };
        let admin_access = AdminAccess {
            users: c.admin_users.clone(),
            auth_file: c.auth_file.clone(),
            method,
        };
        let admin = c.admin.as_ref().map(|l| l.listen.clone());
        check_admin_access(admin.as_ref(), &admin_access)?;
        let auth_type = match &c.auth_type {
            None => AuthType::default(),
            Some(t) => AuthType::parse(t).ok_or_else(|| ProxyError::Config {
                key: "praetor.proxy.auth_type",
                reason: format!("{t:?} is not scram-sha-256, md5 or cleartext"),
            })?,
        };
        if auth_type == AuthType::Cleartext && c.tls.is_none() {
            return Err(ProxyError::Config {
                key: "praetor.proxy.auth_type",
                reason: "cleartext passwords are accepted only over TLS: configure praetor.proxy.tls, or use scram-sha-256".into(),
            });
        }
        let auth_query = match &c.auth_query {
            None => DEFAULT_AUTH_QUERY.to_string(),
            Some(q) if !q.contains("$1") => {
                return Err(ProxyError::Config {
                    key: "praetor.proxy.auth_query",
                    reason: "must use $1 for the user name".into(),
                })
            }
            Some(q) => q.clone(),
        };
        if c.auth_password.is_some() && c.auth_user.is_none() {
            return Err(ProxyError::Config {
                key: "praetor.proxy.auth_password",
                reason: "is auth_user's password: give praetor.proxy.auth_user too".into(),
            });
        }
        let auth = AuthSettings {
            auth_type,
            auth_file: c.auth_file.clone(),
            auth_query,
            auth_user: c.auth_user.clone().filter(|u| !u.is_empty()),
            auth_password: c.auth_password.clone(),
        };
        Ok(ProxySettings {
            admin_access,
            auth,
            startup_timeout,
            message_timeout,
            max_client_conn,
            classifier_cache_bytes: c
                .classifier_cache_size
                .map_or(praetor_protocol::DEFAULT_CLASSIFIER_CACHE_BYTES, |n| {
                    usize::try_from(n).unwrap_or(usize::MAX)
                }),
            read_write: c.read_write.as_ref().map(|l| l.listen.clone()),
            read_only: c.read_only.as_ref().map(|l| l.listen.clone()),
            auto: c.auto.as_ref().map(|l| l.listen.clone()),
            admin,
            metrics: c.metrics.as_ref().map(|l| l.listen.clone()),
            connect_timeout: Duration::from_secs(secs.into()),
            id: c.id.clone(),
            tls,
            backend_tls: c
                .backend_tls
                .as_ref()
                .map(|b| (b.mode.clone(), b.cafile.clone()))
                .unwrap_or_default(),
            lag: LagPolicy {
                max_bytes: c.max_replica_lag,
                max_seconds: c.max_replica_lag_seconds.map(f64::from),
                reads_on_leader: c.reads_on_leader.unwrap_or(true),
            },
            max_message_size,
            shutdown_timeout: c
                .shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |s| Duration::from_secs(s.into())),
            drain_timeout: c
                .drain_timeout
                .map_or(DEFAULT_DRAIN_TIMEOUT, |s| Duration::from_secs(s.into())),
            read_only_functions: c.read_only_functions.clone(),
            database_targets,
            read_your_writes: c.read_your_writes.unwrap_or(true),
            database_read_your_writes: c
                .databases
                .iter()
                .filter_map(|(db, d)| Some((db.clone(), d.read_your_writes?)))
                .collect(),
            pool_size,
            pool_mode,
            database_pool_modes,
            max_prepared_statements: c.max_prepared_statements.map_or(0, |n| n as usize),
            query_wait_timeout: positive_secs(
                c.query_wait_timeout,
                "praetor.proxy.query_wait_timeout",
                DEFAULT_QUERY_WAIT_TIMEOUT,
            )?,
            server_lifetime: match c.server_lifetime {
                None => Some(DEFAULT_SERVER_LIFETIME),
                Some(0) => None,
                Some(s) => Some(Duration::from_secs(s.into())),
            },
            server_idle_timeout: positive_secs(
                c.server_idle_timeout,
                "praetor.proxy.server_idle_timeout",
                DEFAULT_SERVER_IDLE_TIMEOUT,
            )?,
            idle_release: match pool_mode {
                // PgBouncer's transaction pooling: the connection goes back at once.
                PoolMode::Transaction => Duration::ZERO,
                PoolMode::Auto => Duration::from_millis(c.idle_release_ms.unwrap_or(1000).into()),
            },
            auto_idle_release: Duration::from_millis(c.idle_release_ms.unwrap_or(1000).into()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(yaml: &str) -> ProxyConfig {
        let c = praetor_config::parse_str(yaml).expect("valid yaml");
        c.config.praetor.proxy.expect("praetor.proxy present")
    }

    #[test]
    fn transaction_pooling_keys_follow_pgbouncer() {
        let s = ProxySettings::from_config(&config(
            "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n",
        ))
        .unwrap();
        assert_eq!(s.pool_mode, PoolMode::Auto);
        assert_eq!(s.max_prepared_statements, 0);
        assert_eq!(s.query_wait_timeout, DEFAULT_QUERY_WAIT_TIMEOUT);
        assert_eq!(s.server_lifetime, Some(DEFAULT_SERVER_LIFETIME));
        assert_eq!(s.server_idle_timeout, DEFAULT_SERVER_IDLE_TIMEOUT);
        let s = ProxySettings::from_config(&config(
            "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n    pool_mode: Transaction\n    pool_size: 4\n    idle_release_ms: 500\n    max_prepared_statements: 100\n    query_wait_timeout: 7\n    server_lifetime: 0\n    server_idle_timeout: 9\n",
        ))
        .unwrap();
        assert_eq!(s.pool_mode, PoolMode::Transaction);
        assert_eq!(s.pool_size, 4);
        // PgBouncer's transaction mode: the connection goes back at the end of the transaction.
        assert_eq!(s.idle_release, Duration::ZERO);
        assert_eq!(s.max_prepared_statements, 100);
        assert_eq!(s.query_wait_timeout, Duration::from_secs(7));
        assert_eq!(s.server_lifetime, None);
        assert_eq!(s.server_idle_timeout, Duration::from_secs(9));
        let s = ProxySettings::from_config(&config(
            "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n    pool_mode: transaction\n    idle_release_ms: 500\n    databases: {app: {pool_mode: auto}, jobs: {pool_mode: transaction}, other: {target: primary}}\n",
        ))
        .unwrap();
        assert_eq!(s.database_pool_modes.len(), 2);
        assert_eq!(s.database_pool_modes["app"], PoolMode::Auto);
        assert_eq!(s.database_pool_modes["jobs"], PoolMode::Transaction);
        assert_eq!(s.auto_idle_release, Duration::from_millis(500));
        let bad = config(
            "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n    databases: {app: {pool_mode: session}}\n",
        );
        let err = ProxySettings::from_config(&bad).unwrap_err().to_string();
        assert!(
            err.contains("app.pool_mode") && err.contains("session"),
            "{err}"
        );
        for (yaml, key) in [
            ("databases: {app: {pool_mode: session}}", "databases"),
            (
                "databases: {app: {pool_mode: transaction}}\n    pool_size: 0",
                "pool_size",
            ),
            ("pool_mode: session", "pool_mode"),
            ("pool_mode: transaction\n    pool_size: 0", "pool_size"),
            ("query_wait_timeout: 0", "query_wait_timeout"),
            ("server_idle_timeout: 0", "server_idle_timeout"),
        ] {
            let bad = config(&format!(
                "praetor:\n  proxy:\n    auto: {{listen: '127.0.0.1:5002'}}\n    {yaml}\n"
            ));
            let err = ProxySettings::from_config(&bad).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("praetor.proxy.{key}")),
                "{err}"
            );
        }
    }

    #[test]
    fn settings_come_from_praetor_proxy() {
        let c = config(
            "praetor:\n  proxy:\n    read_write: {listen: '0.0.0.0:5000'}\n    read_only: {listen: '*:5001'}\n    metrics: {listen: '127.0.0.1:9187'}\n    connect_timeout: 3\n",
        );
        let s = ProxySettings::from_config(&c).unwrap();
        assert_eq!(s.read_write.unwrap().to_string(), "0.0.0.0:5000");
        assert_eq!(s.read_only.unwrap().host, "*");
        assert_eq!(s.metrics.unwrap().port, 9187);
        assert_eq!(s.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn connect_timeout_defaults_to_five_seconds_and_zero_is_refused() {
        let c = config("praetor:\n  proxy:\n    read_only: {listen: '127.0.0.1:5001'}\n");
        let s = ProxySettings::from_config(&c).unwrap();
        assert_eq!(s.connect_timeout, Duration::from_secs(5));
        assert!(s.read_write.is_none() && s.metrics.is_none());

        let c = config(
            "praetor:\n  proxy:\n    read_only: {listen: '127.0.0.1:5001'}\n    connect_timeout: 0\n",
        );
        let err = ProxySettings::from_config(&c).unwrap_err();
        assert!(
            err.to_string().starts_with("praetor.proxy.connect_timeout"),
            "{err}"
        );
    }

    #[test]
    fn new_keys_resolve_and_bad_targets_are_refused() {
        let c = config(
            "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n    max_replica_lag: 1MB\n    max_replica_lag_seconds: 5\n    reads_on_leader: false\n    databases: {reports: {target: standby}}\n    idle_release_ms: 0\n",
        );
        let s = ProxySettings::from_config(&c).unwrap();
        assert_eq!(s.auto.unwrap().port, 5002);
        assert_eq!(
            s.lag,
            LagPolicy {
                max_bytes: Some(1 << 20),
                max_seconds: Some(5.0),
                reads_on_leader: false
            }
        );
        assert_eq!(s.database_targets["reports"], Target::Replica);
        assert!(s.read_your_writes, "on by default");
        assert!(s.database_read_your_writes.is_empty());
        assert_eq!(s.idle_release, Duration::ZERO);
        assert_eq!(s.max_message_size, DEFAULT_MAX_MESSAGE_LEN);
        assert_eq!(s.startup_timeout, Duration::from_secs(60));
        assert_eq!(s.message_timeout, Duration::from_secs(60));
        assert_eq!(s.max_client_conn, 10_000);
        assert_eq!(s.classifier_cache_bytes, 16 << 20);
        let limits = config(
            "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n    authentication_timeout: 5\n    client_message_timeout: 7\n    max_client_conn: 3\n    classifier_cache_size: 1MB\n",
        );
        let s = ProxySettings::from_config(&limits).unwrap();
        assert_eq!(s.startup_timeout, Duration::from_secs(5));
        assert_eq!(s.message_timeout, Duration::from_secs(7));
        assert_eq!(s.max_client_conn, 3);
        assert_eq!(s.classifier_cache_bytes, 1 << 20);
        for key in [
            "authentication_timeout",
            "client_message_timeout",
            "max_client_conn",
        ] {
            let zero = config(&format!(
                "praetor:\n  proxy:\n    auto: {{listen: '127.0.0.1:5002'}}\n    {key}: 0\n"
            ));
            let err = ProxySettings::from_config(&zero).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("praetor.proxy.{key}")),
                "{err}"
            );
        }
        let bad = config(
            "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n    databases: {x: {target: sideways}}\n",
        );
        assert!(ProxySettings::from_config(&bad).is_err());
        let no_key = config(
            "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n    tls: {certfile: /c}\n",
        );
        assert!(ProxySettings::from_config(&no_key).is_err());
        let ryw = config(
            "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n    read_your_writes: false\n    databases: {app: {read_your_writes: true}}\n",
        );
        let r = ProxySettings::from_config(&ryw).unwrap();
        assert!(!r.read_your_writes);
        assert!(r.database_read_your_writes["app"]);
    }

    #[test]
    fn the_admin_console_needs_users_or_explicit_trust_on_loopback() {
        let base = "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n";
        let err = |extra: &str| {
            ProxySettings::from_config(&config(&format!("{base}{extra}")))
                .unwrap_err()
                .to_string()
        };
        let e = err("    admin: {listen: '127.0.0.1:6432'}\n");
        assert!(e.starts_with("praetor.proxy.admin_users"), "{e}");
        let e = err("    admin: {listen: '0.0.0.0:6432'}\n    admin_auth: trust\n");
        assert!(
            e.starts_with("praetor.proxy.admin_users") && e.contains("0.0.0.0"),
            "{e}"
        );
        let e = err("    admin: {listen: '10.0.0.1:6432'}\n    admin_users: [ops]\n");
        assert!(e.starts_with("praetor.proxy.auth_file"), "{e}");
        let e = err("    admin: {listen: '10.0.0.1:6432'}\n    admin_users: [ops]\n    auth_file: /nonexistent/userlist.txt\n");
        assert!(
            e.starts_with("praetor.proxy.auth_file") && e.contains("/nonexistent"),
            "{e}"
        );
        let e = err("    admin: {listen: '127.0.0.1:6432'}\n    admin_auth: password\n");
        assert!(e.starts_with("praetor.proxy.admin_auth"), "{e}");
        let trusted = config(&format!(
            "{base}    admin: {{listen: 'localhost:6432'}}\n    admin_auth: trust\n"
        ));
        let s = ProxySettings::from_config(&trusted).unwrap();
        assert_eq!(s.admin_access.method, AdminAuthMethod::Trust);
        let dir = std::env::temp_dir().join(format!("praetor-userlist-{}", std::process::id()));
        std::fs::write(&dir, "\"ops\" \"pw\"\n").unwrap();
        let listed = config(&format!(
            "{base}    admin: {{listen: '*:6432'}}\n    admin_users: ops\n    auth_file: {}\n",
            dir.display()
        ));
        let s = ProxySettings::from_config(&listed).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(s.admin_access.users, vec!["ops".to_string()]);
        assert_eq!(s.admin_access.method, AdminAuthMethod::ScramSha256);
    }

    #[test]
    fn auth_keys_resolve_and_bad_ones_name_their_key() {
        let base = "praetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n";
        let s = ProxySettings::from_config(&config(base)).unwrap();
        assert_eq!(s.auth, AuthSettings::default());
        assert_eq!(s.auth.auth_query, DEFAULT_AUTH_QUERY);
        let s = ProxySettings::from_config(&config(&format!(
            "{base}    auth_type: scram-sha-256\n    auth_file: /etc/userlist.txt\n    auth_user: pgbouncer\n    auth_password: x\n    auth_query: SELECT u, p FROM f($1)\n"
        )))
        .unwrap();
        assert_eq!(s.auth.auth_user.as_deref(), Some("pgbouncer"));
        assert_eq!(s.auth.auth_file, Some(PathBuf::from("/etc/userlist.txt")));
        assert_eq!(s.auth.auth_query, "SELECT u, p FROM f($1)");
        for (extra, key) in [
            ("auth_type: sha1", "praetor.proxy.auth_type"),
            ("auth_type: cleartext", "praetor.proxy.auth_type"),
            ("auth_query: SELECT 1", "praetor.proxy.auth_query"),
            ("auth_password: x", "praetor.proxy.auth_password"),
        ] {
            let err = ProxySettings::from_config(&config(&format!("{base}    {extra}\n")))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(key), "{extra}: {err}");
        }
        let tls = ProxySettings::from_config(&config(&format!(
            "{base}    auth_type: cleartext\n    tls: {{certfile: /c, keyfile: /k}}\n"
        )))
        .unwrap();
        assert_eq!(tls.auth.auth_type, AuthType::Cleartext);
        let md5 =
            ProxySettings::from_config(&config(&format!("{base}    auth_type: md5\n"))).unwrap();
        assert_eq!(md5.auth.auth_type, AuthType::Md5, "PgBouncer's md5");
    }

    #[test]
    fn targets_parse() {
        assert_eq!(Target::parse("PRIMARY"), Some(Target::Primary));
        assert_eq!(Target::parse("replica"), Some(Target::Replica));
        assert_eq!(Target::parse("any"), Some(Target::Any));
        assert_eq!(Target::parse("x"), None);
    }

    #[test]
    fn a_proxy_without_client_listeners_is_refused() {
        let c = config("praetor:\n  proxy:\n    metrics: {listen: '127.0.0.1:9187'}\n");
        assert!(ProxySettings::from_config(&c).is_err());
    }
}
