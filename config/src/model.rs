//! The YAML model: Patroni's `patroni.yml` keys, plus Praetor's own under `praetor:`.
//!
//! Every section is optional at parse time so that the agent, the proxy and ctl can share one file
//! format; each role then checks what it needs ([`Config::validate_agent`], [`Config::validate_proxy`])
//! and names the missing key path.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dynamic::DynamicConfig;
use crate::value::{lenient_bool, lenient_int, lenient_opt_int, list_or_csv, Address, Parameters};

/// A whole configuration file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Cluster name; the second level of the DCS path (`/<namespace>/<scope>/`). Required.
    pub scope: Option<String>,
    /// First level of the DCS path; Patroni's default `/service/`.
    pub namespace: Option<String>,
    /// This member's name, unique in the cluster (agent only).
    pub name: Option<String>,
    /// The agent's REST API.
    pub restapi: RestApi,
    /// etcd v3 endpoints (Patroni's `etcd3` section).
    pub etcd3: Option<Etcd>,
    /// Patroni's `etcd` section, for etcd's v2 API: refused while parsing, with an error saying to
    /// write `etcd3` ([`refuse_etcd_v2`]). Praetor speaks only the v3 API, whose keys are not the
    /// v2 ones: read as `etcd3`, the same file would put a Patroni node and a Praetor node in two
    /// different clusters.
    #[serde(rename = "etcd", deserialize_with = "refuse_etcd_v2")]
    #[allow(dead_code)] // Never set: its presence is an error.
    etcd_v2: Option<std::convert::Infallible>,
    /// ZooKeeper ensemble.
    pub zookeeper: Option<ZooKeeper>,
    /// Settings used only when this node bootstraps a new cluster.
    pub bootstrap: Bootstrap,
    /// The local PostgreSQL instance.
    pub postgresql: Postgresql,
    /// Member tags (`nofailover`, `noloadbalance`, `clonefrom`, `nosync`, custom ones).
    pub tags: Tags,
    /// The operator CLI's settings (`ctl.{certfile,keyfile,cacert,insecure,authentication}`).
    pub ctl: Ctl,
    /// Logging.
    pub log: Log,
    /// The watchdog armed while this member is leader (`watchdog.{mode,device,safety_margin}`).
    /// Absent or empty: Patroni's default, `mode: automatic` on `/dev/watchdog`.
    #[serde(deserialize_with = "null_as_default")]
    pub watchdog: Watchdog,
    /// Praetor-only settings.
    pub praetor: Praetor,
}

/// `restapi`: the agent's HTTP API.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RestApi {
    /// Address to listen on (`0.0.0.0:8008`). Required for the agent.
    pub listen: Option<Address>,
    /// Address other members and ctl use to reach this API (`10.0.0.1:8008`). Required for the agent.
    pub connect_address: Option<Address>,
    /// Basic-auth credentials protecting unsafe methods.
    pub authentication: Option<Credentials>,
    /// TLS certificate (PEM path).
    pub certfile: Option<PathBuf>,
    /// TLS private key (PEM path).
    pub keyfile: Option<PathBuf>,
    /// CA for client certificates (PEM path).
    pub cafile: Option<PathBuf>,
    /// Client certificate policy (`none`, `optional`, `required`).
    pub verify_client: Option<String>,
    /// Hosts or networks allowed to call unsafe methods.
    pub allowlist: Option<Vec<String>>,
    /// Also allow the cluster's members' hosts.
    #[serde(deserialize_with = "lenient_bool")]
    pub allowlist_include_members: bool,
}

/// `ctl`: how `praetor ctl` reaches the agents' REST APIs (Patroni's `ctl` section).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Ctl {
    /// Skip verification of the agents' TLS certificates.
    #[serde(deserialize_with = "lenient_bool")]
    pub insecure: bool,
    /// CA that signed the agents' certificates (PEM path); default: `restapi.cafile`.
    pub cacert: Option<PathBuf>,
    /// Client certificate presented to agents that verify clients (PEM path).
    pub certfile: Option<PathBuf>,
    /// The client certificate's private key (PEM path).
    pub keyfile: Option<PathBuf>,
    /// Basic-auth credentials for unsafe REST calls; default: `restapi.authentication`.
    pub authentication: Option<Credentials>,
}

/// A user name and password (`username`, `password`).
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Credentials {
    /// Role or user name.
    pub username: String,
    /// Password; never logged (the `Debug` output masks it).
    pub password: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "********"))
            .finish()
    }
}

/// `etcd3`: where the etcd cluster is.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Etcd {
    /// One endpoint, `host:port`.
    pub host: Option<String>,
    /// Several endpoints, as a list or a comma-separated string.
    #[serde(deserialize_with = "list_or_csv")]
    pub hosts: Vec<String>,
    /// `http` (default) or `https` (TLS; needs `cacert`).
    pub protocol: Option<String>,
    /// etcd user name (etcd's authentication, `etcdctl auth enable`).
    pub username: Option<String>,
    /// etcd password; never logged.
    pub password: Option<String>,
    /// CA certificate that signed etcd's server certificates (PEM path); with it, endpoints default
    /// to `https://`.
    pub cacert: Option<PathBuf>,
    /// Client certificate presented to etcd (PEM path), with `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM path).
    pub key: Option<PathBuf>,
}

/// How to authenticate to etcd and secure the connection (`etcd3.{username,password,cacert,cert,
/// key}`); all unset for plain http without authentication.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    /// User name and password for etcd's authentication.
    pub user: Option<(String, String)>,
    /// CA of etcd's server certificates (PEM path): the connection uses TLS.
    pub cacert: Option<PathBuf>,
    /// Client certificate and key (PEM paths).
    pub identity: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for EtcdSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSecurity")
            .field("user", &self.user.as_ref().map(|(u, _)| (u, "********")))
            .field("cacert", &self.cacert)
            .field("identity", &self.identity)
            .finish()
    }
}

impl Etcd {
    /// Endpoint URLs (`http://host:port`) from `host` and `hosts`; `https://` when `protocol` says
    /// so or a `cacert` is given.
    pub fn endpoints(&self) -> Vec<String> {
        let scheme = self
            .protocol
            .as_deref()
            .unwrap_or(if self.cacert.is_some() {
                "https"
            } else {
                "http"
            });
        self.host
            .iter()
            .chain(self.hosts.iter())
            .map(|h| {
                if h.contains("://") {
                    h.clone()
                } else {
                    format!("{scheme}://{h}")
                }
            })
            .collect()
    }
}

/// `zookeeper`: the ensemble.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ZooKeeper {
    /// `host:port` of each server, as a list or a comma-separated string.
    #[serde(deserialize_with = "list_or_csv")]
    pub hosts: Vec<String>,
    /// TLS towards ZooKeeper: only `false` is accepted (TLS is refused while parsing,
    /// [`crate::keys::check_raw`]).
    #[serde(deserialize_with = "lenient_bool")]
    pub use_ssl: bool,
}

/// Which DCS a configuration points at, after the `etcd3`/`zookeeper` sections are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DcsEndpoints {
    /// etcd v3 endpoint URLs (`http://127.0.0.1:2379`).
    Etcd(Vec<String>),
    /// ZooKeeper servers (`127.0.0.1:2181`).
    ZooKeeper(Vec<String>),
}

/// `bootstrap`: used once, by the member that initializes the cluster.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Bootstrap {
    /// Seeds the DCS `config` key.
    pub dcs: DynamicConfig,
    /// How the cluster is created: only `initdb` (Patroni's default); another method is refused
    /// while parsing ([`crate::keys::check_raw`]).
    pub method: Option<String>,
    /// initdb options: `- data-checksums` (a switch) or `- encoding: UTF8` (an option with a value).
    pub initdb: Vec<InitdbOption>,
    /// pg_hba.conf lines written after initdb.
    pub pg_hba: Vec<String>,
    /// Extra roles created after initdb.
    pub users: BTreeMap<String, BootstrapUser>,
    /// A command run after the cluster is created, given the connection URL (Patroni's `post_init`,
    /// alias `post_bootstrap`).
    #[serde(alias = "post_bootstrap")]
    pub post_init: Option<String>,
}

/// One item of `bootstrap.initdb`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum InitdbOption {
    /// A switch such as `data-checksums` → `--data-checksums`.
    Flag(String),
    /// An option with a value such as `encoding: UTF8` → `--encoding=UTF8`.
    Value(BTreeMap<String, String>),
}

impl InitdbOption {
    /// The initdb command-line arguments for this item.
    pub fn to_args(&self) -> Vec<String> {
        match self {
            InitdbOption::Flag(f) => vec![format!("--{}", f.trim_start_matches('-'))],
            InitdbOption::Value(m) => m
                .iter()
                .map(|(k, v)| format!("--{}={}", k.trim_start_matches('-'), v))
                .collect(),
        }
    }
}

/// A role from `bootstrap.users`.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct BootstrapUser {
    /// Password; never logged.
    pub password: Option<String>,
    /// Role options such as `createrole`, `createdb`.
    pub options: Vec<String>,
}

impl std::fmt::Debug for BootstrapUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapUser")
            .field("password", &self.password.as_ref().map(|_| "********"))
            .field("options", &self.options)
            .finish()
    }
}

/// `postgresql`: the local instance.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Postgresql {
    /// Addresses and port PostgreSQL listens on (`0.0.0.0:5432`). Required for the agent.
    pub listen: Option<Address>,
    /// Address others connect to (`10.0.0.1:5432`); goes into `conn_url`. Required for the agent.
    pub connect_address: Option<Address>,
    /// The data directory. Required for the agent.
    pub data_dir: Option<PathBuf>,
    /// Directory of PostgreSQL's programs (initdb, pg_ctl, postgres, pg_basebackup, pg_rewind);
    /// default: found on PATH, then /usr/lib/postgresql/<newest>/bin.
    pub bin_dir: Option<PathBuf>,
    /// Where the agent writes the password file it hands to libpq programs (mode 0600).
    pub pgpass: Option<PathBuf>,
    /// Roles the agent uses.
    pub authentication: Authentication,
    /// Local PostgreSQL parameters (override the dynamic ones except the cluster-wide set). Refused
    /// while parsing: invalid names, values with line breaks, recovery and promotion settings
    /// ([`crate::guc::checked_parameters`]).
    #[serde(deserialize_with = "crate::guc::checked_parameters")]
    pub parameters: Parameters,
    /// pg_hba.conf lines (override `bootstrap.pg_hba` and the dynamic ones).
    pub pg_hba: Option<Vec<String>>,
    /// Callback scripts by event (`on_start`, `on_stop`, `on_restart`, `on_reload`, `on_role_change`);
    /// any other event name is refused while parsing ([`crate::keys::check_raw`]).
    pub callbacks: BTreeMap<String, String>,
    /// pg_basebackup options, as a list like `initdb` or a map (`max-rate: 100M`, `checkpoint: fast`).
    pub basebackup: Option<serde_yaml::Value>,
    /// Connect to the local PostgreSQL over its unix socket.
    #[serde(deserialize_with = "lenient_bool")]
    pub use_unix_socket: bool,
    /// Seconds pg_ctl-like operations wait (default 60).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub pg_ctl_timeout: Option<u32>,
    /// When a rewind fails, remove the data directory and clone again (not a lock holder's). Without
    /// it, a rewind that failed before changing the data directory is retried at the failed-task
    /// pace, and one that failed after (README, "A pg_rewind that failed after it began changing
    /// the data directory") leaves the member stopped in state `rewind failed` for an operator.
    #[serde(deserialize_with = "lenient_bool")]
    pub remove_data_directory_on_rewind_failure: bool,
    /// When timelines diverged and rewind is not possible, remove the data directory and clone again.
    #[serde(deserialize_with = "lenient_bool")]
    pub remove_data_directory_on_diverged_timelines: bool,
    /// Where postgresql.conf is. Only the data directory itself is accepted (Patroni files often
    /// repeat it here); another directory is refused while parsing ([`crate::keys::check_raw`]).
    pub config_dir: Option<PathBuf>,
    /// Replica creation methods, tried in order (default `[basebackup]`); each other name has its
    /// section `postgresql.<name>` (`command`, `keep_data`, `no_leader`, options). Resolved into
    /// [`Postgresql::replica_methods`].
    pub create_replica_methods: Option<Vec<String>>,
    /// The methods of `create_replica_methods` with their sections ([`crate::replica`]), set while
    /// parsing.
    #[serde(skip)]
    pub replica_methods: Vec<crate::replica::ReplicaMethod>,
    /// Extra recovery settings of a replica (`restore_command`, `recovery_min_apply_delay`, ...),
    /// written to its postgresql.conf over the dynamic `postgresql.recovery_conf`; never on a primary.
    /// Checked by [`crate::guc::checked_recovery_conf`].
    #[serde(deserialize_with = "crate::guc::checked_recovery_conf")]
    pub recovery_conf: Parameters,
}

/// `postgresql.authentication`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Authentication {
    /// The superuser the agent connects as. Required for the agent.
    pub superuser: Option<Credentials>,
    /// The role replicas stream and clone with. Required for the agent.
    pub replication: Option<Credentials>,
    /// A role for pg_rewind (defaults to the superuser).
    pub rewind: Option<Credentials>,
}

/// `tags`: how a member takes part in the cluster.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Tags {
    /// Never promote this member.
    #[serde(deserialize_with = "lenient_bool", skip_serializing_if = "is_false")]
    pub nofailover: bool,
    /// Keep this member out of read load balancing (`/replica` answers 503, the proxy skips it).
    #[serde(deserialize_with = "lenient_bool", skip_serializing_if = "is_false")]
    pub noloadbalance: bool,
    /// Prefer this member as the source when cloning a new replica.
    #[serde(deserialize_with = "lenient_bool", skip_serializing_if = "is_false")]
    pub clonefrom: bool,
    /// Never choose this member as a synchronous standby.
    #[serde(deserialize_with = "lenient_bool", skip_serializing_if = "is_false")]
    pub nosync: bool,
    /// Do not stream (WAL from archive only).
    #[serde(deserialize_with = "lenient_bool", skip_serializing_if = "is_false")]
    pub nostream: bool,
    /// Failover priority: 0 never, higher wins ties.
    #[serde(
        deserialize_with = "lenient_opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub failover_priority: Option<i64>,
    /// Stream from this member instead of the leader (cascading replication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicatefrom: Option<String>,
    /// Any other tag, kept and published as given.
    #[serde(flatten)]
    pub custom: BTreeMap<String, serde_json::Value>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// `log`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Log {
    /// Level: `DEBUG`, `INFO` (default), `WARNING`, `ERROR`, `CRITICAL`. Changed at runtime by
    /// SIGHUP after editing the file.
    pub level: Option<String>,
    /// `text` (default) or `json` (one JSON object per line).
    pub format: Option<String>,
    /// Directory for the log file (`<dir>/praetor.log`, appended); unset logs to stderr.
    pub dir: Option<PathBuf>,
}

/// `watchdog`: the device that resets this node when its agent stops sending keepalives while it
/// holds the leader lock (Patroni's `watchdog` section, local to each member).
///
/// While leader, the agent arms the device with a timeout of `ttl - safety_margin` seconds and sends
/// a keepalive after every successful lock renewal, so a frozen agent gets its node reset before the
/// lock expires and another member promotes. See the README section "Watchdog".
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Watchdog {
    /// `off`, `automatic` (default) or `required`.
    pub mode: WatchdogMode,
    /// The Linux watchdog device (default `/dev/watchdog`).
    pub device: PathBuf,
    /// Seconds between the watchdog firing and the leader lock expiring (default 5); `-1` sets the
    /// watchdog timeout to `ttl / 2` instead (Patroni's spelling).
    #[serde(deserialize_with = "safety_margin")]
    pub safety_margin: i64,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            mode: WatchdogMode::Automatic,
            device: PathBuf::from(Watchdog::DEFAULT_DEVICE),
            safety_margin: 5,
        }
    }
}

/// The log line format of `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Log {
    /// The level as a `tracing` filter directive (`warning` → `warn`, `critical` → `error`); `info`
    /// when unset. Errors name the key for anything else.
    pub fn filter_directive(&self) -> Result<String, crate::ConfigError> {
        let level = self.level.as_deref().unwrap_or("INFO").to_ascii_lowercase();
        match level.as_str() {
            "trace" | "debug" | "info" | "error" => Ok(level),
            "warn" | "warning" => Ok("warn".into()),
            "critical" | "fatal" => Ok("error".into()),
            other => Err(crate::ConfigError::Invalid {
                key: "log.level".into(),
                message: format!("unknown level {other:?} (DEBUG, INFO, WARNING, ERROR, CRITICAL)"),
            }),
        }
    }

    /// `log.format`, `text` when unset. Errors name the key.
    pub fn line_format(&self) -> Result<LogFormat, crate::ConfigError> {
        match self
            .format
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("text") | Some("plain") => Ok(LogFormat::Text),
            Some("json") => Ok(LogFormat::Json),
            Some(other) => Err(crate::ConfigError::Invalid {
                key: "log.format".into(),
                message: format!("unknown format {other:?} (text, json)"),
            }),
        }
    }
}

impl Watchdog {
    /// Patroni's default device.
    pub const DEFAULT_DEVICE: &'static str = "/dev/watchdog";

    /// The watchdog timeout for a leader lock of `ttl_secs`: `ttl - safety_margin`, or `ttl / 2` when
    /// `safety_margin` is -1. `None` when that leaves less than one second.
    pub fn timeout_secs(&self, ttl_secs: u32) -> Option<u32> {
        let ttl = i64::from(ttl_secs);
        let timeout = if self.safety_margin == -1 {
            ttl / 2
        } else {
            ttl - self.safety_margin
        };
        u32::try_from(timeout).ok().filter(|t| *t >= 1)
    }
}

/// `watchdog.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchdogMode {
    /// Never touch a watchdog (`off`, `disable`, `disabled`, YAML `false`).
    Off,
    /// Arm the watchdog while leader when it can be opened; otherwise warn and lead without it
    /// (`automatic`, `auto`; Patroni's default).
    #[default]
    Automatic,
    /// Never take the leader lock without an armed watchdog whose timeout expires before the lock
    /// (`required`, `require`).
    Required,
}

impl WatchdogMode {
    /// Patroni's name of the mode: `off`, `automatic`, `required`.
    pub fn as_str(self) -> &'static str {
        match self {
            WatchdogMode::Off => "off",
            WatchdogMode::Automatic => "automatic",
            WatchdogMode::Required => "required",
        }
    }
}

impl std::fmt::Display for WatchdogMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for WatchdogMode {
    type Err = String;

    /// Patroni's spellings, case-insensitive; `false`/`no` also mean `off` (as written in an
    /// environment variable). Unlike Patroni, which disables the watchdog with a warning, anything
    /// else is an error: a typo in `required` must not silently remove the protection.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" | "disable" | "disabled" | "false" | "no" => Ok(WatchdogMode::Off),
            "automatic" | "auto" => Ok(WatchdogMode::Automatic),
            "required" | "require" => Ok(WatchdogMode::Required),
            _ => Err(format!(
                "expected off, automatic or required, got {:?}",
                s.trim()
            )),
        }
    }
}

impl<'de> Deserialize<'de> for WatchdogMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d) {
            Ok(Raw::Bool(false)) => Ok(WatchdogMode::Off),
            Ok(Raw::Bool(true)) => Err(serde::de::Error::custom(
                "expected off, automatic or required, got true (which one is meant?)",
            )),
            Ok(Raw::Str(s)) => s.parse().map_err(serde::de::Error::custom),
            Err(_) => Err(serde::de::Error::custom(
                "expected off, automatic or required",
            )),
        }
    }
}

/// `watchdog.safety_margin`: a lenient integer, at least -1.
fn safety_margin<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v: i64 = lenient_int(d)?;
    if v < -1 {
        return Err(serde::de::Error::custom(format!(
            "must be a number of seconds >= 0, or -1 for ttl/2; got {v}"
        )));
    }
    Ok(v)
}

/// A section written but left empty (`watchdog:` alone is YAML null) means its defaults, as in
/// Patroni (`config.get("watchdog") or {...}`).
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// `restapi.verify_client`: whether the REST API asks TLS clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyClient {
    /// No client certificates.
    None,
    /// Ask for one; unsafe methods then require it (Patroni: 403 without).
    Optional,
    /// Refuse TLS connections without a valid client certificate.
    Required,
}

impl RestApi {
    /// `verify_client` parsed (`none` when unset). Errors name the key.
    pub fn verify_client(&self) -> Result<VerifyClient, crate::ConfigError> {
        match self
            .verify_client
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("none") | Some("") => Ok(VerifyClient::None),
            Some("optional") => Ok(VerifyClient::Optional),
            Some("required") => Ok(VerifyClient::Required),
            Some(other) => Err(crate::ConfigError::Invalid {
                key: "restapi.verify_client".into(),
                message: format!("unknown value {other:?} (none, optional, required)"),
            }),
        }
    }

    /// True when `certfile` is set: the API speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.certfile.is_some()
    }
}

/// `praetor`: settings Patroni does not have.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Praetor {
    /// The proxy (`praetor proxy`).
    pub proxy: Option<ProxyConfig>,
    /// `praetor.fence_timeout_ms`: how long a member about to promote waits for the former primary to
    /// answer the fence (connect, `pg_is_in_recovery()`) before it promotes anyway (milliseconds;
    /// default [`DEFAULT_FENCE_TIMEOUT_MS`]). A silent former primary (a frozen host, a dead network)
    /// never answers: its live agent stopped PostgreSQL at its demotion deadline, before the lock
    /// expired, and the new leader keeps fencing it in the background until it is provably down.
    #[serde(default, deserialize_with = "crate::value::lenient_opt_int")]
    pub fence_timeout_ms: Option<u32>,
    /// `praetor.callback_role_names`: how callbacks name the primary in their role argument —
    /// `patroni4` (default: `primary`, as Patroni 4 passes it) or `patroni3` (`master`, for scripts
    /// written for Patroni 3 and older, such as a VIP script testing `[ "$2" = master ]`). Replicas
    /// are `replica` and a standby cluster's leader `standby_leader` either way.
    pub callback_role_names: CallbackRoleNames,
}

/// [`Praetor::callback_role_names`]: the Patroni version whose role names callbacks receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackRoleNames {
    /// Patroni 4 and later: the primary is `primary`.
    #[default]
    Patroni4,
    /// Patroni 3 and earlier: the primary is `master`.
    Patroni3,
}

/// Default of [`Praetor::fence_timeout_ms`]: a PostgreSQL that is up answers a connection and one
/// query in milliseconds; a longer wait only delays the failover of a silent host (issue 13: the
/// failover of a frozen node within `ttl + loop_wait + 1 s`).
pub const DEFAULT_FENCE_TIMEOUT_MS: u32 = 1000;

/// `praetor.proxy`: the proxy's listeners, routing and limits.
///
/// Keys added after the first release (all optional): `auto`, `admin`, `id`, `tls`, `backend_tls`,
/// `max_replica_lag`, `max_replica_lag_seconds`, `reads_on_leader`, `max_message_size`,
/// `shutdown_timeout`, `read_only_functions`, `databases`, `pool_size`, `idle_release_ms`,
/// `authentication_timeout`, `client_message_timeout`, `max_client_conn`, `classifier_cache_size`,
/// `admin_users`, `auth_file`, `admin_auth`, `auth_type`, `auth_query`, `auth_user`, `auth_password`,
/// `drain_timeout`, `pool_mode`, `max_prepared_statements`, `query_wait_timeout`,
/// `server_lifetime`, `server_idle_timeout`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// The read-write listener: every connection goes to the leader.
    pub read_write: Option<Listener>,
    /// The read-only listener: connections round-robin over healthy replicas.
    pub read_only: Option<Listener>,
    /// The auto listener: each transaction goes to a replica when it only reads, to the leader
    /// otherwise.
    pub auto: Option<Listener>,
    /// The admin console (`psql -p <port> praetor`: `SHOW ...`, `PAUSE`, `RESUME`, `KILL`,
    /// `RECONNECT`, `WAIT_CLOSE`, `RELOAD`), for the users in `admin_users`.
    pub admin: Option<Listener>,
    /// Users allowed on the admin console (PgBouncer's `admin_users`), authenticated against
    /// `auth_file`.
    #[serde(deserialize_with = "list_or_csv")]
    pub admin_users: Vec<String>,
    /// PgBouncer's `auth_file` (`userlist.txt`): `"user" "secret"` per line, the secret a
    /// password in plain text, `md5<hex>` or a SCRAM verifier
    /// (`SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`). Read for the admin console's
    /// `admin_users` and for the auto port's clients, as PgBouncer's one file serves both.
    pub auth_file: Option<PathBuf>,
    /// How admin users prove who they are: `scram-sha-256` (default; `md5` entries of the
    /// file use md5), `md5`, or `trust` (no password: only when set explicitly).
    pub admin_auth: Option<String>,
    /// Prometheus metrics (`GET /metrics`).
    pub metrics: Option<Listener>,
    /// Seconds to wait for a backend TCP connection before answering the client with an error
    /// (default 5).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub connect_timeout: Option<u32>,
    /// This proxy's name in the DCS (`praetor/proxies/<id>`); default `<hostname>-<first port>`.
    pub id: Option<String>,
    /// TLS towards clients.
    pub tls: Option<ProxyTls>,
    /// TLS towards PostgreSQL.
    pub backend_tls: Option<BackendTls>,
    /// Replicas further behind the leader than this many bytes get no new reads (`16MB` style
    /// sizes accepted, as in Patroni's `/replica?lag=`). Unset: no byte limit.
    #[serde(deserialize_with = "lenient_opt_size")]
    pub max_replica_lag: Option<u64>,
    /// Replicas further behind than this many seconds get no new reads. Unset: no time limit.
    #[serde(deserialize_with = "lenient_opt_int")]
    pub max_replica_lag_seconds: Option<u32>,
    /// When no replica is fresh enough, reads go to the leader (default true); false refuses them.
    pub reads_on_leader: Option<bool>,
    /// Read-your-writes on the auto port (default true): after a session's write, its reads go to
    /// a replica only once that replica has replayed the write's commit, to the leader until then.
    /// `databases.<db>.read_your_writes` and the client's `praetor.read_your_writes` option
    /// override it.
    pub read_your_writes: Option<bool>,
    /// The largest message a client may send on the auto port, in bytes or as a size (`64MB`);
    /// default 1 GiB like PostgreSQL.
    #[serde(deserialize_with = "lenient_opt_size")]
    pub max_message_size: Option<u64>,
    /// Seconds a shutdown waits for clients to finish before closing them (default 10).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub shutdown_timeout: Option<u32>,
    /// Seconds a transaction on the leader (read-write or auto port) may run on once the DCS asks
    /// the leader to step down (a switchover) before the proxy cancels it and ends its session
    /// with 57P01 (default 4).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub drain_timeout: Option<u32>,
    /// Functions (besides the built-in list) the auto port may send to a replica.
    pub read_only_functions: Vec<String>,
    /// Per-database settings of the auto port, by database name.
    pub databases: BTreeMap<String, ProxyDatabase>,
    /// Idle server connections the auto port keeps per server, user and database (default 20).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub pool_size: Option<u32>,
    /// Milliseconds an auto-port client may stay idle before its server connections return to the
    /// pool (default 1000).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub idle_release_ms: Option<u32>,
    /// Seconds a client has to send its startup packet and, on the auto port, to answer the
    /// password request (PostgreSQL's `authentication_timeout`; default 60).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub authentication_timeout: Option<u32>,
    /// Seconds an auto-port client may send nothing in the middle of a message before it is
    /// closed (default 60).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub client_message_timeout: Option<u32>,
    /// Client connections the proxy accepts at once over all its listeners (PgBouncer's
    /// `max_client_conn`; default 10000); more are refused with 53300.
    #[serde(deserialize_with = "lenient_opt_int")]
    pub max_client_conn: Option<u32>,
    /// Bytes of SQL text the auto port's classifier cache keeps, in bytes or as a size (`16MB`);
    /// default 16 MiB, 0 disables the cache.
    #[serde(deserialize_with = "lenient_opt_size")]
    pub classifier_cache_size: Option<u64>,
    /// How the auto port authenticates clients: `scram-sha-256` (default; the proxy checks the
    /// client against the user's stored SCRAM secret and logs in to servers with the client's
    /// SCRAM keys), `md5` (PgBouncer's: an md5 challenge for users whose secret is an md5 hash
    /// or a password, SCRAM for those with a SCRAM secret) or `cleartext` (asks for the password,
    /// only over TLS).
    pub auth_type: Option<String>,
    /// The query that finds a user's secret, run as `auth_user` in the client's database
    /// (PgBouncer's default: `SELECT usename, passwd FROM pg_shadow WHERE usename=$1`).
    pub auth_query: Option<String>,
    /// The user `auth_query` runs as; unset: no `auth_query`.
    pub auth_user: Option<String>,
    /// `auth_user`'s password, when `auth_file` does not hold it in clear text.
    pub auth_password: Option<String>,
    /// The auto port's pooling: `auto` (default: `pool_size` bounds the idle connections kept,
    /// sessions never wait) or `transaction` (PgBouncer's transaction pooling: `pool_size` bounds
    /// every server connection per server, user and database, a connection returns to the pool
    /// at the end of each transaction, and a transaction waits up to `query_wait_timeout` for
    /// one).
    pub pool_mode: Option<String>,
    /// Named prepared statements (protocol level) the auto port tracks per server connection
    /// (PgBouncer's `max_prepared_statements`): a client's statements are prepared on whichever
    /// server connection runs them. 0 (default): not tracked, a named statement pins the session.
    #[serde(deserialize_with = "lenient_opt_int")]
    pub max_prepared_statements: Option<u32>,
    /// Seconds a transaction waits for a server connection in `pool_mode: transaction` before it
    /// gets an error (PgBouncer's `query_wait_timeout`; default 120).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub query_wait_timeout: Option<u32>,
    /// Seconds after which a pooled server connection is closed rather than reused (PgBouncer's
    /// `server_lifetime`; default 3600, 0: no limit).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub server_lifetime: Option<u32>,
    /// Seconds an idle pooled server connection is kept (PgBouncer's `server_idle_timeout`;
    /// default 60).
    #[serde(deserialize_with = "lenient_opt_int")]
    pub server_idle_timeout: Option<u32>,
}

/// `praetor.proxy.tls`: TLS towards clients.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProxyTls {
    /// Certificate chain (PEM path).
    pub certfile: Option<PathBuf>,
    /// Private key (PEM path).
    pub keyfile: Option<PathBuf>,
    /// Refuse clients that do not ask for TLS.
    #[serde(deserialize_with = "lenient_bool")]
    pub required: bool,
}

/// `praetor.proxy.backend_tls`: TLS towards PostgreSQL.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct BackendTls {
    /// `disable` (default), `prefer`, `require` (encrypt, do not verify) or `verify-full`.
    pub mode: Option<String>,
    /// CA certificates to verify servers with (PEM path; `verify-full`).
    pub cafile: Option<PathBuf>,
}

/// `praetor.proxy.databases.<name>`: settings of one database on the auto port.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ProxyDatabase {
    /// `primary`, `replica` or `any` (the default): where this database's transactions go, unless a
    /// client's `options=-c praetor.target=...` says otherwise.
    pub target: Option<String>,
    /// Read-your-writes for this database (overrides `praetor.proxy.read_your_writes`).
    pub read_your_writes: Option<bool>,
    /// `auto` or `transaction`: how this database's server connections are pooled (overrides
    /// `praetor.proxy.pool_mode`, as PgBouncer's `[databases]` `pool_mode=`).
    pub pool_mode: Option<String>,
}

/// One listener of the proxy.
#[derive(Debug, Clone, Deserialize)]
pub struct Listener {
    /// `host:port` to listen on.
    pub listen: Address,
}

/// A byte count as an integer or a size with a unit (`16MB`, `512kB`, `1GB`; 1024-based, units
/// `B`, `kB`, `MB`, `GB`, `TB`, case-insensitive), as Patroni's `lag=` accepts.
pub fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let number: u64 = t[..digits].parse().ok()?;
    let unit = t[digits..].trim().to_ascii_lowercase();
    let scale: u64 = match unit.as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(scale)
}

fn lenient_opt_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Int(u64),
        Text(String),
    }
    match Option::<Size>::deserialize(d)? {
        None => Ok(None),
        Some(Size::Int(n)) => Ok(Some(n)),
        Some(Size::Text(t)) => parse_size(&t).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid size {t:?}: give bytes or a number with B, kB, MB, GB or TB"
            ))
        }),
    }
}

/// The validated settings the agent needs, with required keys resolved.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// `scope`.
    pub scope: String,
    /// `namespace`, normalized to start and end with `/`.
    pub namespace: String,
    /// `name`.
    pub name: String,
    /// `restapi.listen`.
    pub api_listen: Address,
    /// `restapi.connect_address`.
    pub api_connect: Address,
    /// `postgresql.listen`.
    pub pg_listen: Address,
    /// `postgresql.connect_address`.
    pub pg_connect: Address,
    /// `postgresql.data_dir`.
    pub data_dir: PathBuf,
    /// `postgresql.authentication.superuser`.
    pub superuser: Credentials,
    /// `postgresql.authentication.replication`.
    pub replication: Credentials,
    /// The DCS to use.
    pub dcs: DcsEndpoints,
}

impl Config {
    /// `etcd3`'s authentication and TLS settings (none without an `etcd3` section).
    pub fn etcd_security(&self) -> EtcdSecurity {
        let Some(e) = &self.etcd3 else {
            return EtcdSecurity::default();
        };
        EtcdSecurity {
            user: e
                .username
                .clone()
                .map(|u| (u, e.password.clone().unwrap_or_default())),
            cacert: e.cacert.clone(),
            identity: e.cert.clone().zip(e.key.clone()),
        }
    }

    /// `namespace` normalized to `/<name>/` (Patroni default `/service/`).
    pub fn namespace(&self) -> String {
        normalize_namespace(self.namespace.as_deref().unwrap_or("/service/"))
    }

    /// Resolves the `etcd3` / `zookeeper` sections into one DCS (an `etcd` section was refused while
    /// parsing).
    ///
    /// Errors: none configured, both configured (naming both), or no hosts.
    pub fn dcs_endpoints(&self) -> Result<DcsEndpoints, crate::ConfigError> {
        let given: Vec<&str> = [
            ("etcd3", self.etcd3.is_some()),
            ("zookeeper", self.zookeeper.is_some()),
        ]
        .iter()
        .filter(|(_, set)| *set)
        .map(|(n, _)| *n)
        .collect();
        match given.as_slice() {
            [] => Err(crate::ConfigError::Missing {
                key: "etcd3".to_string(),
                hint: "configure a DCS: etcd3.hosts or zookeeper.hosts".to_string(),
            }),
            [_] => {
                if let Some(z) = &self.zookeeper {
                    return non_empty("zookeeper.hosts", z.hosts.clone())
                        .map(DcsEndpoints::ZooKeeper);
                }
                let e = self.etcd3.as_ref().expect("the one section set is etcd3");
                non_empty("etcd3.hosts", e.endpoints()).map(DcsEndpoints::Etcd)
            }
            many => Err(crate::ConfigError::Invalid {
                key: many.join(", "),
                message: format!(
                    "sections {} are mutually exclusive: configure exactly one DCS",
                    many.join(" and ")
                ),
            }),
        }
    }

    /// Checks everything the agent needs and returns it resolved. Errors name the missing key path
    /// (`postgresql.data_dir`).
    pub fn validate_agent(&self) -> Result<AgentSettings, crate::ConfigError> {
        use crate::ConfigError::Missing;
        fn need<T: Clone>(v: &Option<T>, key: &str) -> Result<T, crate::ConfigError> {
            v.clone().ok_or_else(|| Missing {
                key: key.to_string(),
                hint: String::new(),
            })
        }
        let scope = need(&self.scope, "scope")?;
        let name = need(&self.name, "name")?;
        let api_listen = need(&self.restapi.listen, "restapi.listen")?;
        let api_connect = self
            .restapi
            .connect_address
            .clone()
            .unwrap_or_else(|| api_listen.clone());
        let pg_listen = need(&self.postgresql.listen, "postgresql.listen")?;
        let pg_connect = need(
            &self.postgresql.connect_address,
            "postgresql.connect_address",
        )?;
        let data_dir = need(&self.postgresql.data_dir, "postgresql.data_dir")?;
        let superuser = need(
            &self.postgresql.authentication.superuser,
            "postgresql.authentication.superuser",
        )?;
        let replication = need(
            &self.postgresql.authentication.replication,
            "postgresql.authentication.replication",
        )?;
        for (key, c) in [
            ("postgresql.authentication.superuser.username", &superuser),
            (
                "postgresql.authentication.replication.username",
                &replication,
            ),
        ] {
            if c.username.is_empty() {
                return Err(Missing {
                    key: key.to_string(),
                    hint: String::new(),
                });
            }
        }
        check_scope(&scope).map_err(|message| crate::ConfigError::Invalid {
            key: "scope".into(),
            message,
        })?;
        if name.is_empty() || name.contains('/') {
            return Err(crate::ConfigError::Invalid {
                key: "name".into(),
                message: "must be a non-empty name without '/'".into(),
            });
        }
        Ok(AgentSettings {
            scope,
            namespace: self.namespace(),
            name,
            api_listen,
            api_connect,
            pg_listen,
            pg_connect,
            data_dir,
            superuser,
            replication,
            dcs: self.dcs_endpoints()?,
        })
    }

    /// Checks what the proxy needs: `scope`, a DCS, and at least one of `praetor.proxy.read_write` /
    /// `praetor.proxy.read_only`.
    pub fn validate_proxy(&self) -> Result<ProxyConfig, crate::ConfigError> {
        self.validate_dcs_client()?;
        let p = self
            .praetor
            .proxy
            .clone()
            .ok_or(crate::ConfigError::Missing {
                key: "praetor.proxy".into(),
                hint: "give praetor.proxy.read_write.listen and/or praetor.proxy.read_only.listen"
                    .into(),
            })?;
        if p.read_write.is_none() && p.read_only.is_none() && p.auto.is_none() {
            return Err(crate::ConfigError::Missing {
                key: "praetor.proxy.read_write".into(),
                hint: "give praetor.proxy.read_write.listen, praetor.proxy.read_only.listen and/or praetor.proxy.auto.listen"
                    .into(),
            });
        }
        Ok(p)
    }

    /// Checks what a DCS client (ctl, proxy) needs: a valid `scope` ([`check_scope`]) and exactly
    /// one DCS section.
    pub fn validate_dcs_client(&self) -> Result<(String, DcsEndpoints), crate::ConfigError> {
        let scope = self.scope.clone().ok_or(crate::ConfigError::Missing {
            key: "scope".into(),
            hint: String::new(),
        })?;
        check_scope(&scope).map_err(|message| crate::ConfigError::Invalid {
            key: "scope".into(),
            message,
        })?;
        Ok((scope, self.dcs_endpoints()?))
    }
}

/// Checks a cluster name (`scope`, or the cluster named on ctl's command line): it must be non-empty
/// and contain no `/`, since it is a component of every DCS key (`/<namespace>/<scope>/leader`). An
/// empty scope puts the cluster's keys under `/<namespace>//`; one with a `/` nests them inside
/// another cluster's (`a/b` under `a`), whose removal would take them along. Errors: the message,
/// for the caller to put after the key it read the name from.
pub fn check_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() {
        Err(
            "must not be empty: it names the cluster in every DCS key (/<namespace>/<scope>/...)"
                .into(),
        )
    } else if scope.contains('/') {
        Err(format!(
            "{scope:?} contains '/': the cluster name is one component of every DCS key \
             (/<namespace>/<scope>/...), so give a name without '/'"
        ))
    } else {
        Ok(())
    }
}

/// Deserializes an `etcd` section into an error (see [`Config`]'s `etcd` key): Patroni reads it with
/// etcd's v2 API, which Praetor does not speak.
fn refuse_etcd_v2<'de, D: serde::Deserializer<'de>>(
    _: D,
) -> Result<Option<std::convert::Infallible>, D::Error> {
    Err(serde::de::Error::custom(
        "Patroni's etcd section speaks etcd's v2 API, which Praetor does not: write etcd3: \
         instead, with the same keys (a Patroni node must use etcd3 too, to see the same \
         cluster); in the environment, PATRONI_ETCD3_HOSTS instead of PATRONI_ETCD_HOSTS",
    ))
}

/// Normalizes a namespace to `/<name>/` (`service` → `/service/`).
pub fn normalize_namespace(ns: &str) -> String {
    let trimmed = ns.trim_matches('/');
    if trimmed.is_empty() {
        "/".to_string()
    } else {
        format!("/{trimmed}/")
    }
}

fn non_empty(key: &str, v: Vec<String>) -> Result<Vec<String>, crate::ConfigError> {
    if v.is_empty() {
        Err(crate::ConfigError::Missing {
            key: key.to_string(),
            hint: "list at least one host:port".into(),
        })
    } else {
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_str;

    fn watchdog(yaml: &str) -> Result<Watchdog, crate::ConfigError> {
        parse_str(yaml).map(|l| {
            assert!(l.warnings.is_empty(), "{:?}", l.warnings);
            l.config.watchdog
        })
    }

    #[test]
    fn watchdog_defaults_are_patronis() {
        for yaml in [
            "scope: x\n",
            "scope: x\nwatchdog:\n",
            "scope: x\nwatchdog: {}\n",
        ] {
            let w = watchdog(yaml).unwrap();
            assert_eq!(w.mode, WatchdogMode::Automatic, "{yaml}");
            assert_eq!(w.device, PathBuf::from("/dev/watchdog"));
            assert_eq!(w.safety_margin, 5);
            assert_eq!(w.timeout_secs(30), Some(25));
        }
    }

    #[test]
    fn watchdog_mode_accepts_patronis_spellings() {
        for (text, mode) in [
            ("off", WatchdogMode::Off),
            ("'off'", WatchdogMode::Off),
            ("false", WatchdogMode::Off),
            ("disable", WatchdogMode::Off),
            ("Disabled", WatchdogMode::Off),
            ("auto", WatchdogMode::Automatic),
            ("automatic", WatchdogMode::Automatic),
            ("require", WatchdogMode::Required),
            ("REQUIRED", WatchdogMode::Required),
        ] {
            let w = watchdog(&format!("watchdog:\n  mode: {text}\n")).unwrap();
            assert_eq!(w.mode, mode, "{text}");
        }
    }

    #[test]
    fn bad_watchdog_mode_is_an_error_naming_watchdog_mode() {
        for text in ["requird", "true", "[required]", "1"] {
            let e = watchdog(&format!("watchdog:\n  mode: {text}\n")).unwrap_err();
            assert_eq!(e.key(), Some("watchdog.mode"), "{text}: {e}");
            assert!(e.to_string().contains("off, automatic or required"), "{e}");
        }
    }

    #[test]
    fn watchdog_device_and_lenient_safety_margin() {
        let w = watchdog(
            "watchdog:\n  mode: required\n  device: /dev/watchdog1\n  safety_margin: '3'\n",
        )
        .unwrap();
        assert_eq!(w.mode, WatchdogMode::Required);
        assert_eq!(w.device, PathBuf::from("/dev/watchdog1"));
        assert_eq!(w.safety_margin, 3);
        assert_eq!(w.timeout_secs(10), Some(7));
    }

    #[test]
    fn bad_safety_margin_is_an_error_naming_it() {
        for text in ["-2", "five"] {
            let e = watchdog(&format!("watchdog:\n  safety_margin: {text}\n")).unwrap_err();
            assert_eq!(e.key(), Some("watchdog.safety_margin"), "{text}: {e}");
        }
    }

    #[test]
    fn watchdog_timeout_is_ttl_minus_margin_or_half_ttl() {
        let mut w = Watchdog::default();
        assert_eq!(w.timeout_secs(30), Some(25));
        assert_eq!(w.timeout_secs(6), Some(1));
        assert_eq!(w.timeout_secs(5), None);
        assert_eq!(w.timeout_secs(0), None);
        w.safety_margin = -1;
        assert_eq!(w.timeout_secs(30), Some(15));
        assert_eq!(w.timeout_secs(5), Some(2));
        assert_eq!(w.timeout_secs(1), None);
        w.safety_margin = 0;
        assert_eq!(w.timeout_secs(30), Some(30));
    }
}

#[cfg(test)]
mod proxy_tests {
    use super::*;

    fn proxy(yaml: &str) -> Result<ProxyConfig, String> {
        let loaded = crate::parse_str(yaml).map_err(|e| e.to_string())?;
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        loaded.config.validate_proxy().map_err(|e| e.to_string())
    }

    #[test]
    fn proxy_keys_parse_with_sizes_and_per_database_targets() {
        let p = proxy(
            "scope: s\netcd3: {hosts: '127.0.0.1:2379'}\npraetor:\n  proxy:\n    auto: {listen: '127.0.0.1:5002'}\n    admin: {listen: '127.0.0.1:6432'}\n    id: proxy-a\n    tls: {certfile: /c.pem, keyfile: /k.pem, required: 'on'}\n    backend_tls: {mode: require}\n    max_replica_lag: 16MB\n    max_replica_lag_seconds: 10\n    reads_on_leader: false\n    max_message_size: 1048576\n    shutdown_timeout: 3\n    read_only_functions: [report]\n    databases:\n      reporting: {target: replica}\n    pool_size: 5\n    idle_release_ms: 0\n",
        )
        .unwrap();
        assert_eq!(p.auto.unwrap().listen.port, 5002);
        assert_eq!(p.admin.unwrap().listen.port, 6432);
        assert_eq!(p.id.as_deref(), Some("proxy-a"));
        let tls = p.tls.unwrap();
        assert!(tls.required && tls.certfile.is_some());
        assert_eq!(p.backend_tls.unwrap().mode.as_deref(), Some("require"));
        assert_eq!(p.max_replica_lag, Some(16 << 20));
        assert_eq!(p.max_replica_lag_seconds, Some(10));
        assert_eq!(p.reads_on_leader, Some(false));
        assert_eq!(p.max_message_size, Some(1 << 20));
        assert_eq!(p.shutdown_timeout, Some(3));
        assert_eq!(p.read_only_functions, ["report"]);
        assert_eq!(p.databases["reporting"].target.as_deref(), Some("replica"));
        assert_eq!((p.pool_size, p.idle_release_ms), (Some(5), Some(0)));
    }

    #[test]
    fn sizes_accept_patroni_units_and_refuse_nonsense() {
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("512kB"), Some(512 << 10));
        assert_eq!(parse_size("1gb"), Some(1 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("100 B"), Some(100));
        assert_eq!(parse_size("MB"), None);
        assert_eq!(parse_size("1PB"), None);
        assert_eq!(parse_size("99999999999TB"), None, "overflow");
        let err = proxy(
            "scope: s\netcd3: {hosts: 'h:1'}\npraetor:\n  proxy:\n    auto: {listen: '127.0.0.1:1'}\n    max_replica_lag: lots\n",
        )
        .unwrap_err();
        assert!(err.contains("max_replica_lag"), "{err}");
    }

    #[test]
    fn an_auto_listener_alone_is_enough() {
        assert!(proxy("scope: s\netcd3: {hosts: 'h:1'}\npraetor:\n  proxy:\n    auto: {listen: '127.0.0.1:1'}\n").is_ok());
        assert!(proxy("scope: s\netcd3: {hosts: 'h:1'}\npraetor:\n  proxy:\n    admin: {listen: '127.0.0.1:1'}\n").is_err());
    }
}
