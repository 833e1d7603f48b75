//! The local PostgreSQL instance: programs run, files written, queries asked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use praetor_config::{Address, Bootstrap, Credentials, DynamicConfig, InitdbOption, Parameters};
use thiserror::Error;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use super::files::{
    conninfo, conninfo_host_port, merge_parameters, parse_controldata, parse_timeline_history,
    pgpass_line, render_postgresql_conf, same_setting, split_cmdline, strip_owned_auto_conf,
    HistoryLine, PostmasterPid, StandbySettings,
};
use super::postmaster::{self, PidFile};
use super::version::adapt_wal_keep;
use crate::ha::standby::is_remote_upstream;
use crate::ha::{slot_name, ControlData, DataDir, StartAs, StopMode, Upstream};

/// How to start PostgreSQL (the HA core's [`StartAs`]).
pub type StartRole = StartAs;

/// The outcome of advancing a replica's copy of a logical slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotAdvance {
    /// Advanced (or already there).
    Done,
    /// PostgreSQL can no longer advance it (its message): copy it again.
    Unusable(String),
}

/// A logical slot as read on the primary for a replica's copy.
#[derive(Debug, Clone)]
pub struct LeaderSlotState {
    /// Slot name.
    pub name: String,
    /// Its database.
    pub database: Option<String>,
    /// Its output plugin.
    pub plugin: Option<String>,
    /// The bytes of `pg_replslot/<name>/state`.
    pub state: Vec<u8>,
}

/// Why a PostgreSQL operation failed.
#[derive(Debug, Error)]
pub enum PgError {
    /// A program could not be run or exited with an error.
    #[error("{program} failed: {message}")]
    Command {
        /// The program (`initdb`, `pg_basebackup`, ...).
        program: String,
        /// Exit status and the tail of its output.
        message: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A query failed or the server could not be reached.
    #[error("query failed: {0}")]
    Query(String),
    /// Waiting for the server timed out.
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    /// Something PostgreSQL reported does not make sense.
    #[error("{0}")]
    Unexpected(String),
}

/// The directory of the socket the agent connects to with `use_unix_socket`: the first entry of
/// `unix_socket_directories` (relative to the data directory, as PostgreSQL reads it), or
/// PostgreSQL's default when unset or empty: `/var/run/postgresql` where it exists (Debian's
/// packages), else `/tmp` (PostgreSQL's own default).
pub fn unix_socket_dir(dirs: Option<&str>, data_dir: &Path) -> PathBuf {
    let first = dirs
        .and_then(|d| d.split(',').map(str::trim).find(|d| !d.is_empty()))
        .map(PathBuf::from);
    match first {
        Some(d) if d.is_absolute() => d,
        Some(d) => data_dir.join(d),
        None if Path::new("/var/run/postgresql").is_dir() => PathBuf::from("/var/run/postgresql"),
        None => PathBuf::from("/tmp"),
    }
}

/// The suffix of the rewind marker: `<data_dir>.praetor-rewind`, next to the data directory (see
/// [`Instance::rewind_marker`]).
pub const REWIND_MARKER_SUFFIX: &str = ".praetor-rewind";

/// The promotion record's file name in the data directory (see
/// [`Instance::write_promotion_record`]).
pub const PROMOTION_RECORD: &str = "praetor.promotion";

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PgError + '_ {
    move |source| PgError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Everything the instance needs from the configuration.
#[derive(Debug, Clone)]
pub struct InstanceSettings {
    /// Member name (application_name, slot name).
    pub name: String,
    /// Cluster name (`cluster_name`).
    pub scope: String,
    /// Directory of initdb, postgres, pg_basebackup, pg_rewind, pg_controldata.
    pub bin_dir: PathBuf,
    /// The data directory.
    pub data_dir: PathBuf,
    /// `postgresql.listen`.
    pub listen: Address,
    /// `postgresql.connect_address`.
    pub connect_address: Address,
    /// The superuser the agent connects as.
    pub superuser: Credentials,
    /// The replication role.
    pub replication: Credentials,
    /// The role pg_rewind connects as (default: the superuser).
    pub rewind: Option<Credentials>,
    /// The .pgpass file the agent writes for libpq programs.
    pub pgpass: PathBuf,
    /// `postgresql.parameters` (local), as the agent started; a reload replaces them
    /// ([`Instance::set_local_config`]).
    pub parameters: Parameters,
    /// `postgresql.pg_hba` (local override), as the agent started; a reload replaces it.
    pub pg_hba: Option<Vec<String>>,
    /// Extra pg_basebackup arguments (`--max-rate=100M`).
    pub basebackup_args: Vec<String>,
    /// `postgresql.recovery_conf`: recovery settings of a replica, over the dynamic ones.
    pub recovery_conf: Parameters,
    /// `postgresql.create_replica_methods` resolved (default: basebackup alone).
    pub replica_methods: Vec<praetor_config::replica::ReplicaMethod>,
    /// `postgresql.use_unix_socket`: the agent's own connections go through the first directory of
    /// `unix_socket_directories` instead of TCP (as Patroni's).
    pub use_unix_socket: bool,
    /// Seconds to wait for start/stop/promote (pg_ctl_timeout, default 60).
    pub ctl_timeout: Duration,
    /// The major version of `bin_dir`'s PostgreSQL (15, 18), from [`super::version::detect`]: which
    /// settings exist (`wal_keep_size` from 13 on).
    pub pg_major: u32,
}

/// What a running server reports about itself (one round trip).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStatus {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Current timeline.
    pub timeline: u32,
    /// Primary: `pg_current_wal_lsn()` (bytes).
    pub current_lsn: Option<u64>,
    /// Replica: `pg_last_wal_receive_lsn()` (bytes).
    pub received_lsn: Option<u64>,
    /// Replica: `pg_last_wal_replay_lsn()` (bytes).
    pub replayed_lsn: Option<u64>,
    /// Replica: `pg_last_xact_replay_timestamp()` as text.
    pub replay_timestamp: Option<String>,
    /// Replica: replay paused.
    pub replay_paused: bool,
    /// Replica: the WAL receiver is streaming.
    pub streaming: bool,
    /// Replica: host and port of `primary_conninfo`.
    pub upstream: Option<(String, u16)>,
    /// `server_version_num` (150004).
    pub server_version: i32,
    /// `pg_postmaster_start_time()` as text.
    pub postmaster_start_time: String,
    /// Database system identifier.
    pub system_identifier: String,
    /// Primary: `pg_stat_replication` rows.
    pub replication: Vec<ReplicationRow>,
    /// `synchronous_standby_names` in force.
    pub sync_standby_names: String,
    /// Replication slots.
    pub slots: Vec<SlotRow>,
}

/// One row of `pg_replication_slots`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotRow {
    /// Slot name.
    pub name: String,
    /// Physical (not logical).
    pub physical: bool,
    /// `restart_lsn` (bytes; 0 when unset).
    pub restart_lsn: u64,
    /// Logical: `database`.
    pub database: Option<String>,
    /// Logical: `plugin`.
    pub plugin: Option<String>,
    /// Logical: `confirmed_flush_lsn` (bytes; 0 when unset).
    pub confirmed_flush_lsn: u64,
    /// 17+: `failover`.
    pub failover: bool,
    /// 17+: `synced`.
    pub synced: bool,
    /// Invalidated (see [`crate::ha::slots::Slot::invalidated`]).
    pub invalidated: bool,
}

impl SlotRow {
    /// The slot as the HA core sees it.
    pub fn to_slot(&self) -> crate::ha::slots::Slot {
        crate::ha::slots::Slot {
            name: self.name.clone(),
            physical: self.physical,
            restart_lsn: self.restart_lsn,
            database: self.database.clone(),
            plugin: self.plugin.clone(),
            confirmed_flush_lsn: self.confirmed_flush_lsn,
            failover: self.failover,
            synced: self.synced,
            invalidated: self.invalidated,
        }
    }
}

/// `application_name` of the HA loop's connections to the local server.
pub const AGENT_APPLICATION_NAME: &str = "praetor";
/// `application_name` of the REST API's connection to the local server ([`Instance::wal_positions`]);
/// [`Instance::transactions_in_progress`] does not count it.
pub const API_APPLICATION_NAME: &str = "praetor api";

/// A server's WAL positions at one moment ([`Instance::wal_positions`]), bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalPositions {
    /// `pg_is_in_recovery()`.
    pub in_recovery: bool,
    /// Primary: `pg_current_wal_lsn()`.
    pub current_lsn: Option<u64>,
    /// `pg_last_wal_receive_lsn()` (replica; `None` on a primary and before a WAL receiver ran).
    pub received_lsn: Option<u64>,
    /// `pg_last_wal_replay_lsn()` (replica).
    pub replayed_lsn: Option<u64>,
}

impl ServerStatus {
    /// This status with the WAL positions of `now`, when they describe the same role (in
    /// recovery or not): a server promoted since the status was taken keeps the status's
    /// positions, whose other fields describe the replica it was. Returns whether they were taken.
    pub fn take_positions(&mut self, now: &WalPositions) -> bool {
        if now.in_recovery != self.in_recovery {
            return false;
        }
        self.current_lsn = now.current_lsn;
        self.received_lsn = now.received_lsn;
        self.replayed_lsn = now.replayed_lsn;
        true
    }

    /// Primary: current position. Replica: max(received, replayed). Bytes.
    pub fn wal_position(&self) -> u64 {
        [self.current_lsn, self.received_lsn, self.replayed_lsn]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(0)
    }
}

/// One row of `pg_stat_replication` (field names as Patroni's `/patroni` `replication` list).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReplicationRow {
    /// Role name.
    pub usename: String,
    /// The standby's application_name (its member name).
    pub application_name: String,
    /// Client address.
    pub client_addr: Option<String>,
    /// `streaming`, `catchup`, ...
    pub state: String,
    /// `async`, `sync`, `quorum`, `potential`.
    pub sync_state: String,
    /// Priority in synchronous_standby_names.
    pub sync_priority: i32,
    /// WAL position the standby confirmed flushed (bytes); not part of Patroni's JSON.
    #[serde(skip)]
    pub flush_lsn: u64,
}

/// The local PostgreSQL instance.
pub struct Instance {
    s: InstanceSettings,
    /// `synchronous_standby_names` as the HA loop manages it (synchronous mode), over any configured.
    sync_names: std::sync::Mutex<Option<String>>,
    /// `synchronized_standby_slots` as the HA loop sets it (17+ leaders with permanent logical
    /// slots); `None`: the configured value.
    standby_slots: std::sync::Mutex<Option<String>>,
    client: Mutex<Option<tokio_postgres::Client>>,
    /// The REST API's own connection ([`Instance::wal_positions`]): a request never waits behind
    /// the HA loop's queries, nor the loop behind a request.
    api_client: Mutex<Option<tokio_postgres::Client>>,
    child: Mutex<Option<Child>>,
    /// The last reason logged for a `postmaster.pid` naming another process (logged once per change).
    stranger_logged: std::sync::Mutex<Option<String>>,
    /// `unix_socket_directories` as last written to postgresql.conf (for `use_unix_socket`).
    socket_dirs: std::sync::Mutex<Option<String>>,
    /// The `standby_cluster` settings postgresql.conf was last written with for a standby leader
    /// (following the remote); `None` after a write for any other role, or before the first.
    remote_recovery: std::sync::Mutex<Option<crate::ha::standby::RemoteRecovery>>,
    /// The last parameter translations logged (`wal_keep_segments` → `wal_keep_size`), logged once
    /// per change.
    translations_logged: std::sync::Mutex<Vec<String>>,
    /// Why the data directory is known damaged by a pg_rewind that failed after it began writing
    /// ([`crate::ha::RewindFailure::Damaged`]): kept here too in case the marker file could not be
    /// written ([`Instance::rewind_damage`]).
    rewind_damage: std::sync::Mutex<Option<String>>,
    /// The local `postgresql.parameters` and `pg_hba` in force: the settings' until a reload of the
    /// configuration file replaces them.
    local: std::sync::Mutex<LocalConfig>,
}

/// The local PostgreSQL settings a reload of the configuration file can change.
#[derive(Debug, Clone, Default)]
struct LocalConfig {
    parameters: Parameters,
    pg_hba: Option<Vec<String>>,
}

/// Seconds a replica's replication connection may sit idle before the kernel sends a keepalive
/// probe (`keepalives_idle` in `primary_conninfo`; Linux's default is 7200).
pub const REPLICATION_KEEPALIVES_IDLE: &str = "5";

/// Seconds between unanswered keepalive probes (`keepalives_interval`).
pub const REPLICATION_KEEPALIVES_INTERVAL: &str = "2";

/// Unanswered probes before the connection is dropped (`keepalives_count`): with the two above,
/// a dead peer is noticed within 5 + 2 x 3 = 11 s.
pub const REPLICATION_KEEPALIVES_COUNT: &str = "3";

/// Milliseconds sent data may stay unacknowledged before the connection is dropped
/// (`tcp_user_timeout`, PostgreSQL 12+; every supported major has it): well above a slow link's
/// round trip, below `wal_receiver_timeout`'s default of 60 s.
pub const REPLICATION_TCP_USER_TIMEOUT_MS: &str = "15000";

impl Instance {
    /// An instance with these settings. Nothing is started.
    pub fn new(settings: InstanceSettings) -> Instance {
        Instance {
            local: std::sync::Mutex::new(LocalConfig {
                parameters: settings.parameters.clone(),
                pg_hba: settings.pg_hba.clone(),
            }),
            s: settings,
            sync_names: std::sync::Mutex::new(None),
            standby_slots: std::sync::Mutex::new(None),
            client: Mutex::new(None),
            api_client: Mutex::new(None),
            child: Mutex::new(None),
            stranger_logged: std::sync::Mutex::new(None),
            socket_dirs: std::sync::Mutex::new(None),
            remote_recovery: std::sync::Mutex::new(None),
            translations_logged: std::sync::Mutex::new(Vec::new()),
            rewind_damage: std::sync::Mutex::new(None),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &InstanceSettings {
        &self.s
    }

    /// Replaces the local `postgresql.parameters` and `pg_hba` (a reload of the configuration
    /// file): used by the next [`Instance::write_config`], which a running server then reloads.
    pub fn set_local_config(&self, parameters: Parameters, pg_hba: Option<Vec<String>>) {
        *self.local.lock().unwrap_or_else(|p| p.into_inner()) = LocalConfig { parameters, pg_hba };
    }

    fn local_config(&self) -> LocalConfig {
        self.local.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn bin(&self, program: &str) -> PathBuf {
        self.s.bin_dir.join(program)
    }

    fn data(&self, file: &str) -> PathBuf {
        self.s.data_dir.join(file)
    }

    /// Whether the data directory is empty or holds a cluster (and which, by system identifier).
    pub async fn data_dir_state(&self) -> Result<DataDir, PgError> {
        let has_files = match std::fs::read_dir(&self.s.data_dir) {
            Ok(mut d) => d.next().is_some(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(io_err(&self.s.data_dir)(e)),
        };
        if !has_files || !self.data("global/pg_control").exists() {
            return Ok(DataDir::Empty);
        }
        let (sysid, _) = self.controldata().await?;
        Ok(DataDir::Initialized { sysid })
    }

    /// Runs pg_controldata: (system identifier, control data).
    pub async fn controldata(&self) -> Result<(String, ControlData), PgError> {
        let out = self
            .run_capture("pg_controldata", &[self.s.data_dir.as_os_str()])
            .await?;
        parse_controldata(&out).map_err(PgError::Unexpected)
    }

    /// The running postmaster, from `postmaster.pid`: its PID is alive *and* is a postmaster of this
    /// data directory ([`postmaster::judge`]: start time and data directory match the file). A PID
    /// that a reboot or a crash handed to another process is not ours: `None`, and nothing signals
    /// it (stop, reload and the start-up checks all go through here).
    pub fn postmaster(&self) -> Option<PostmasterPid> {
        match self.pid_file() {
            PidFile::Ours(pm) => Some(pm),
            PidFile::Absent | PidFile::Stranger(..) => None,
        }
    }

    fn pid_file(&self) -> PidFile {
        // A zombie child still has a /proc entry; reap our own child first.
        if let Ok(mut guard) = self.child.try_lock() {
            if let Some(child) = guard.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    *guard = None;
                    return PidFile::Absent;
                }
            }
        }
        let found = postmaster::inspect(&self.s.data_dir);
        if let PidFile::Stranger(_, why) = &found {
            // Called every loop and while waiting: say it once per change, not every poll.
            let mut last = self
                .stranger_logged
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.as_deref() != Some(why.reason.as_str()) {
                tracing::warn!("{}; not treating it as PostgreSQL", why.reason);
                *last = Some(why.reason.clone());
            }
        }
        found
    }

    /// Writes the .pgpass file (mode 0600) with the replication, superuser and rewind credentials, for
    /// pg_basebackup, pg_rewind and walreceiver connections.
    pub fn write_pgpass(&self) -> Result<(), PgError> {
        let mut lines = Vec::new();
        for c in [
            Some(&self.s.replication),
            Some(&self.s.superuser),
            self.s.rewind.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(pw) = &c.password {
                lines.push(pgpass_line("*", "*", "*", &c.username, pw));
            }
        }
        write_private(&self.s.pgpass, &(lines.join("\n") + "\n"))
    }

    /// Runs initdb into the (empty) data directory with `options` and the superuser's name and
    /// password, then moves initdb's postgresql.conf to postgresql.base.conf (included by ours).
    pub async fn initdb(&self, options: &[InitdbOption]) -> Result<(), PgError> {
        let pwfile = self.s.data_dir.with_extension("pwfile");
        let mut args: Vec<std::ffi::OsString> = vec![
            "-D".into(),
            self.s.data_dir.clone().into(),
            format!("--username={}", self.s.superuser.username).into(),
        ];
        if let Some(pw) = &self.s.superuser.password {
            write_private(&pwfile, pw)?;
            args.push(format!("--pwfile={}", pwfile.display()).into());
        }
        for o in options {
            args.extend(o.to_args().into_iter().map(Into::into));
        }
        let arg_refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let result = self.run_capture("initdb", &arg_refs).await;
        let _ = std::fs::remove_file(&pwfile);
        result?;
        let base = self.data("postgresql.base.conf");
        if !base.exists() {
            std::fs::rename(self.data("postgresql.conf"), &base).map_err(io_err(&base))?;
        }
        Ok(())
    }

    /// Writes pg_hba.conf from `lines`.
    pub fn write_pg_hba(&self, lines: &[String]) -> Result<(), PgError> {
        write_private(&self.data("pg_hba.conf"), &hba_text(lines))
    }

    /// The primary_conninfo for streaming from `up`; `dbname` is named for PostgreSQL 17's slot
    /// synchronization worker (streaming itself ignores it).
    pub fn primary_conninfo(&self, up: &Upstream, dbname: Option<&str>) -> String {
        let port = up.port.to_string();
        conninfo(&[
            ("host", Some(&up.host)),
            ("port", Some(&port)),
            ("dbname", dbname),
            ("user", Some(&self.s.replication.username)),
            ("passfile", self.s.pgpass.to_str()),
            ("application_name", Some(&self.s.name)),
            ("sslmode", Some("prefer")),
            ("gssencmode", Some("disable")),
            ("channel_binding", Some("prefer")),
            // A half-open connection must not stall the walreceiver: PostgreSQL's walreceiver
            // waits for the server's answer while it connects with no timeout of its own
            // (libpq's connect_timeout is not applied there; wal_receiver_timeout only once
            // streaming). If the upstream lost the connection's state (its FIN or RST lost in a
            // partition, a rebooted host, a NAT or firewall that forgot the flow), nothing ever
            // arrives and the replica never streams again (nemesis seed 54). Keepalive probes
            // on the idle socket draw an RST from such a peer within
            // idle + interval x count seconds, and tcp_user_timeout ends a connection whose
            // sent data stays unacknowledged (a silent host), so the walreceiver fails and
            // PostgreSQL retries. Patroni sets none of these (its format_dsn drops them).
            ("keepalives", Some("1")),
            ("keepalives_idle", Some(REPLICATION_KEEPALIVES_IDLE)),
            ("keepalives_interval", Some(REPLICATION_KEEPALIVES_INTERVAL)),
            ("keepalives_count", Some(REPLICATION_KEEPALIVES_COUNT)),
            ("tcp_user_timeout", Some(REPLICATION_TCP_USER_TIMEOUT_MS)),
        ])
    }

    /// The parameters for this member: merged (defaults < dynamic < local < agent's) and split into
    /// postgresql.conf ones and command-line ones; plus the local keys that were ignored.
    pub fn parameters(
        &self,
        dynamic: &DynamicConfig,
    ) -> (
        BTreeMap<String, String>,
        BTreeMap<String, String>,
        Vec<String>,
    ) {
        let agent = [
            ("listen_addresses", self.s.listen.host.clone()),
            ("port", self.s.listen.port.to_string()),
            ("cluster_name", self.s.scope.clone()),
            ("hot_standby", "on".to_string()),
        ];
        let local = self.local_config().parameters;
        let (mut params, ignored) =
            merge_parameters(&dynamic.postgresql.parameters, &local, &agent);
        // Only the settings this major has: a user's wal_keep_segments (Patroni YAML written for
        // PostgreSQL 12 or older) becomes wal_keep_size, which 13+ reads instead.
        let explicit_size = dynamic.postgresql.parameters.contains_key("wal_keep_size")
            || local.contains_key("wal_keep_size");
        let notes = adapt_wal_keep(&mut params, self.s.pg_major, explicit_size);
        {
            let mut last = self
                .translations_logged
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if *last != notes {
                for n in &notes {
                    tracing::info!("postgresql parameters: {n}");
                }
                *last = notes;
            }
        }
        if let Some(names) = self
            .sync_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            params.insert("synchronous_standby_names".into(), names);
        }
        for (k, v) in crate::ha::slots::failover_slot_parameters(dynamic, self.s.pg_major) {
            params.insert(k.into(), v.into());
        }
        // Only while permanent failover slots exist: once they are removed from the
        // configuration, the configured value (if any) applies again.
        if let Some(names) = self
            .standby_slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .filter(|_| crate::ha::slots::uses_failover_slots(dynamic, self.s.pg_major))
        {
            params.insert("synchronized_standby_slots".into(), names);
        }
        let (conf, cmdline) = split_cmdline(params);
        (conf, cmdline, ignored)
    }

    /// Sets the `synchronous_standby_names` the HA loop manages (written with the next
    /// [`Instance::write_config`]); `None` leaves the configured value.
    pub fn set_sync_standby_names(&self, names: Option<String>) {
        *self.sync_names.lock().unwrap_or_else(|p| p.into_inner()) = names;
    }

    /// Sets the `synchronized_standby_slots` the HA loop manages (written with the next
    /// [`Instance::write_config`]); `None` leaves the configured value. Returns whether it changed.
    pub fn set_synchronized_standby_slots(&self, names: Option<String>) -> bool {
        let mut cur = self.standby_slots.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *cur != names;
        *cur = names;
        changed
    }

    /// Writes postgresql.conf, pg_hba.conf (when configured) and standby.signal for `role`, each file
    /// only when its contents change, after removing the agent's settings from
    /// postgresql.auto.conf ([`Instance::clean_auto_conf`]). Returns whether one of the
    /// configuration files changed (a running server needs a reload) and the local parameter names
    /// that were ignored.
    pub fn write_config(
        &self,
        dynamic: &DynamicConfig,
        role: &StartRole,
    ) -> Result<ConfigWrite, PgError> {
        let (params, _, ignored) = self.parameters(dynamic);
        *self.socket_dirs.lock().unwrap_or_else(|p| p.into_inner()) =
            params.get("unix_socket_directories").cloned();
        let standby = match role {
            StartAs::Primary => None,
            StartAs::Replica { upstream } => {
                let mut recovery_conf: BTreeMap<String, String> = dynamic
                    .postgresql
                    .recovery_conf
                    .iter()
                    .chain(self.s.recovery_conf.iter())
                    .map(|(k, v)| (k.clone(), v.as_pg_text()))
                    .collect();
                recovery_conf.extend(standby_cluster_recovery(dynamic, upstream.as_ref()));
                Some(StandbySettings {
                    primary_conninfo: upstream.as_ref().map(|u| {
                        self.primary_conninfo(
                            u,
                            crate::ha::slots::slot_sync_dbname(dynamic, self.s.pg_major),
                        )
                    }),
                    primary_slot_name: match upstream {
                        // Standby leader: the remote's slot of `standby_cluster`, if any.
                        Some(u) if is_remote_upstream(dynamic, u) => dynamic
                            .standby()
                            .and_then(|sc| sc.primary_slot_name.clone()),
                        Some(_) if dynamic.postgresql.use_slots => Some(slot_name(&self.s.name)),
                        _ => None,
                    },
                    recovery_conf,
                })
            }
        };
        let remote = match role {
            StartAs::Replica {
                upstream: Some(u), ..
            } if is_remote_upstream(dynamic, u) => crate::ha::standby::remote_recovery(dynamic),
            _ => None,
        };
        // Before every start and every rewrite of the recovery settings (a replica re-pointed at a
        // new leader is reloaded, not restarted): auto.conf is read after postgresql.conf.
        let mut changed = self.clean_auto_conf()?;
        changed |= write_if_changed(
            &self.data("postgresql.conf"),
            &render_postgresql_conf(&params, standby.as_ref()),
        )?;
        let local_hba = self.local_config().pg_hba;
        if let Some(hba) = local_hba.as_ref().or(dynamic.postgresql.pg_hba.as_ref()) {
            changed |= write_if_changed(&self.data("pg_hba.conf"), &hba_text(hba))?;
        }
        let signal = self.data("standby.signal");
        match role {
            StartAs::Primary => remove_if_exists(&signal)?,
            StartAs::Replica { .. } => {
                if !signal.exists() {
                    write_private(&signal, "")?;
                }
            }
        }
        remove_if_exists(&self.data("recovery.signal"))?;
        self.write_pgpass()?;
        *self
            .remote_recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = remote;
        Ok(ConfigWrite { changed, ignored })
    }

    /// Removes the settings the agent owns (`primary_conninfo`, `primary_slot_name`,
    /// `restore_command`, `recovery_target*`: [`super::files::owned_by_agent`]) from `postgresql.auto.conf`, where
    /// `pg_basebackup -R`, `ALTER SYSTEM` or a rewind from a leader holding them leave them and
    /// where they would win over postgresql.conf. The rest of the file is kept byte for byte; the
    /// rewrite is atomic (mode 0600); each removed key is logged. Run by [`Instance::write_config`],
    /// so before every start and every reload of the recovery settings. Returns whether it
    /// rewrote the file (a running server then needs a reload).
    pub fn clean_auto_conf(&self) -> Result<bool, PgError> {
        let path = self.data("postgresql.auto.conf");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&path)(e)),
        };
        let (kept, removed) = strip_owned_auto_conf(&text);
        if removed.is_empty() {
            return Ok(false);
        }
        for name in &removed {
            tracing::info!(
                "removing {name} from postgresql.auto.conf: the agent sets it in postgresql.conf"
            );
        }
        write_private(&path, &kept)?;
        Ok(true)
    }

    /// Parameters whose new value waits for a restart: name → (running value, configured value).
    /// PostgreSQL reports the postgresql.conf ones (`pending_restart`); the command-line ones are
    /// compared here with what the server runs with. Recovery settings and `hot_standby` are not
    /// reported: the agent writes and removes them itself when the role changes (a promoted
    /// replica's postgresql.conf loses `recovery_target_timeline`, which PostgreSQL then flags
    /// `pending_restart` although nothing waits for a restart), as Patroni skips them
    /// (`params_skip_changes` in patroni/postgresql/config.py, `reload_config`).
    pub async fn pending_restart(
        &self,
        dynamic: &DynamicConfig,
    ) -> Result<BTreeMap<String, (String, String)>, PgError> {
        let (conf, cmdline, _) = self.parameters(dynamic);
        let names: Vec<String> = cmdline.keys().cloned().collect();
        let rows = self
            .query(
                "SELECT name, setting, pending_restart, current_setting(name) FROM pg_settings WHERE pending_restart OR name = ANY($1)",
                &[&names],
            )
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let name: String = r.get(0);
            let setting: String = r.get::<_, Option<String>>(1).unwrap_or_default();
            let pending: bool = r.get(2);
            if skips_pending_restart(&name) {
                continue;
            }
            if let Some(want) = cmdline.get(&name) {
                if !same_setting(&name, &setting, want) {
                    out.insert(name, (setting, want.clone()));
                }
            } else if pending {
                // Shown as PostgreSQL prints it with its unit (`32MB`, not `4096` pages), as the
                // configured value is written.
                let running: String = r.get::<_, Option<String>>(3).unwrap_or(setting);
                let want = conf.get(&name).cloned().unwrap_or_else(|| "?".into());
                out.insert(name, (running, want));
            }
        }
        Ok(out)
    }

    /// Writes the configuration for `role`, starts the postmaster in its own process group (so a
    /// signal to the agent's group does not reach it), and waits until it accepts connections.
    pub async fn start(&self, dynamic: &DynamicConfig, role: &StartRole) -> Result<(), PgError> {
        let stale_pid = match self.pid_file() {
            PidFile::Ours(_) => {
                return Err(PgError::Unexpected(
                    "postgres is already running".to_string(),
                ))
            }
            PidFile::Stranger(pm, why) if why.elsewhere => Some(pm.pid),
            PidFile::Stranger(..) | PidFile::Absent => None,
        };
        let ignored = self.write_config(dynamic, role)?.ignored;
        if !ignored.is_empty() {
            tracing::warn!(parameters = ?ignored, "local postgresql.parameters ignored: cluster-wide ones come from the dynamic configuration, agent-managed ones from the agent");
        }
        // A stale lock file of a dead postmaster makes postgres refuse to start only when its PID
        // belongs to a live process; PostgreSQL handles the rest itself.
        let (_, cmdline, _) = self.parameters(dynamic);
        let mut cmd = Command::new(self.bin("postgres"));
        cmd.arg("-D").arg(&self.s.data_dir);
        for (k, v) in &cmdline {
            cmd.arg("-c").arg(format!("{k}={v}"));
        }
        if let Some(pid) = stale_pid {
            // postmaster.pid names a live process that works in another directory (its PID was
            // reused after a reboot or crash). PostgreSQL refuses to start while the file's PID is
            // alive, unless it is its parent or `PG_GRANDPARENT_PID`; Patroni passes that
            // variable for the same reason (postgresql/postmaster.py `start`). Its shared memory
            // interlock still guards against a second postmaster on this directory.
            tracing::info!(
                "telling postgres that it is safe to ignore postmaster.pid naming process {pid}"
            );
            cmd.env("PG_GRANDPARENT_PID", pid.to_string());
        }
        cmd.stdin(Stdio::null())
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| PgError::Command {
            program: "postgres".into(),
            message: e.to_string(),
        })?;
        *self.child.lock().await = Some(child);
        self.wait_ready().await
    }

    async fn wait_ready(&self) -> Result<(), PgError> {
        let deadline = Instant::now() + self.s.ctl_timeout;
        loop {
            {
                let mut guard = self.child.lock().await;
                match guard.as_mut() {
                    Some(child) => {
                        if let Ok(Some(status)) = child.try_wait() {
                            *guard = None;
                            return Err(PgError::Command {
                                program: "postgres".into(),
                                message: format!("exited during start-up: {status}"),
                            });
                        }
                    }
                    // Reaped by another task ([`Instance::postmaster`] reaps the child it finds
                    // exited): stopped during start-up, by the deadline guard for one (nemesis,
                    // etcd strict seed 11: a leader demoted by a partition restarted PostgreSQL,
                    // the guard stopped it again, and this wait went on for `ctl_timeout`, 60 s,
                    // while the agent kept the leader lock and nobody could fail over).
                    None => {
                        return Err(PgError::Command {
                            program: "postgres".into(),
                            message: "exited during start-up (stopped by another task)".into(),
                        })
                    }
                }
            }
            if let Some(pm) = self.postmaster() {
                if (pm.status == "ready" || pm.status == "standby") && self.status().await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(PgError::Timeout(
                    self.s.ctl_timeout,
                    "postgres did not accept connections".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the postmaster with `mode` and waits until it exited. After `timeout` (when set) a fast
    /// stop is escalated to immediate. Ok when it was not running.
    pub async fn stop(&self, mode: StopMode, timeout: Option<Duration>) -> Result<(), PgError> {
        *self.client.lock().await = None;
        let Some(pm) = self.postmaster() else {
            return Ok(());
        };
        let signal = match mode {
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        };
        let pid = Pid::from_raw(pm.pid);
        kill(pid, signal).map_err(|e| PgError::Unexpected(format!("kill {pid}: {e}")))?;
        let started = Instant::now();
        let mut escalated = mode == StopMode::Immediate;
        loop {
            if self.postmaster().is_none() {
                return Ok(());
            }
            if !escalated && timeout.is_some_and(|t| started.elapsed() >= t) {
                tracing::warn!("postgres did not stop within {timeout:?}: stopping it immediately");
                let _ = kill(pid, Signal::SIGQUIT);
                escalated = true;
            }
            if started.elapsed() > self.s.ctl_timeout + timeout.unwrap_or_default() {
                return Err(PgError::Timeout(
                    self.s.ctl_timeout,
                    "postgres did not stop".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends SIGHUP to the postmaster (configuration reload).
    pub fn reload(&self) -> Result<(), PgError> {
        let pm = self
            .postmaster()
            .ok_or_else(|| PgError::Unexpected("postgres is not running".into()))?;
        kill(Pid::from_raw(pm.pid), Signal::SIGHUP)
            .map_err(|e| PgError::Unexpected(format!("kill -HUP {}: {e}", pm.pid)))
    }

    /// Promotes a running replica and waits (up to ctl_timeout) until it is out of recovery.
    pub async fn promote(&self) -> Result<(), PgError> {
        let secs = self.s.ctl_timeout.as_secs().clamp(1, i32::MAX as u64) as i32;
        let rows = self.query("SELECT pg_promote(true, $1)", &[&secs]).await?;
        let done = rows.first().is_some_and(|r| r.get::<_, bool>(0));
        if done {
            Ok(())
        } else {
            Err(PgError::Timeout(
                self.s.ctl_timeout,
                "pg_promote did not finish".into(),
            ))
        }
    }

    /// Runs CHECKPOINT on its own connection (so the agent's status queries are not held up), as a
    /// new primary does right after promotion so that pg_control shows the new timeline.
    pub async fn checkpoint(&self) -> Result<(), PgError> {
        let client = self.connect().await?;
        client
            .batch_execute("CHECKPOINT")
            .await
            .map_err(|e| PgError::Query(db_error_text(&e)))
    }

    /// Points a running replica at `up`, or at nobody (PostgreSQL 13+ applies primary_conninfo on
    /// reload).
    pub fn follow(&self, dynamic: &DynamicConfig, up: Option<&Upstream>) -> Result<(), PgError> {
        self.write_config(
            dynamic,
            &StartAs::Replica {
                upstream: up.cloned(),
            },
        )?;
        self.reload()
    }

    /// Clones the data directory from `from` with pg_basebackup (WAL streamed, fast checkpoint).
    pub async fn basebackup(&self, from: &Upstream) -> Result<(), PgError> {
        self.write_pgpass()?;
        if let Some(parent) = self.s.data_dir.parent() {
            std::fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let port = from.port.to_string();
        let mut args: Vec<std::ffi::OsString> = vec![
            "-D".into(),
            self.s.data_dir.clone().into(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "-h".into(),
            from.host.clone().into(),
            "-p".into(),
            port.into(),
            "-U".into(),
            self.s.replication.username.clone().into(),
            "--no-password".into(),
        ];
        args.extend(self.s.basebackup_args.iter().map(Into::into));
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        self.run_capture("pg_basebackup", &refs).await.map(|_| ())
    }

    /// Creates this replica's data directory with the methods of `create_replica_methods`, in order
    /// until one succeeds ([`praetor_config::replica::next_method`]): pg_basebackup from `from`, or an
    /// operator's command given Patroni's arguments. With no member to clone from (`from` `None`),
    /// only the methods marked `no_leader` run. Returns the name of the method that worked; the error
    /// of the last one otherwise.
    ///
    /// The data directory is empty when a clone starts (decide() clones only then), so what a failed
    /// method left behind is removed before the next one runs (unless it keeps data, `keep_data`).
    ///
    /// `names`: the methods of a standby cluster's `standby_cluster.create_replica_methods` (the
    /// standby leader cloning from the remote), each resolved by name among the configured
    /// `postgresql.<method>` sections (`basebackup` is the built-in; a name without a section is run
    /// as a command, as Patroni does); `None`: `postgresql.create_replica_methods`.
    pub async fn create_replica(
        &self,
        from: Option<&Upstream>,
        names: Option<&[String]>,
    ) -> Result<String, PgError> {
        use praetor_config::replica::{next_method, ReplicaMethod};
        let resolved: Vec<ReplicaMethod>;
        let methods = match names.filter(|n| !n.is_empty()) {
            None => &self.s.replica_methods,
            Some(names) => {
                resolved = names
                    .iter()
                    .map(|n| {
                        if n == "basebackup" {
                            return ReplicaMethod::basebackup();
                        }
                        self.s
                            .replica_methods
                            .iter()
                            .find(|m| &m.name == n)
                            .cloned()
                            .unwrap_or_else(|| ReplicaMethod {
                                name: n.clone(),
                                command: n.clone(),
                                ..ReplicaMethod::basebackup()
                            })
                    })
                    .collect();
                &resolved
            }
        };
        let mut last = PgError::Unexpected(if from.is_some() {
            "no replica creation method configured".into()
        } else {
            "no leader to clone from and no replica creation method with no_leader".into()
        });
        for failed in 0.. {
            let Some(method) = next_method(methods, from.is_some(), failed) else {
                return Err(last);
            };
            let result = match (method.is_basebackup(), from) {
                (true, Some(up)) => {
                    self.empty_data_dir()?;
                    self.basebackup(up).await
                }
                (true, None) => continue, // next_method never offers it without a source.
                (false, _) => {
                    if !method.keep_data {
                        self.empty_data_dir()?;
                    }
                    self.run_replica_method(method, from).await
                }
            };
            match result {
                Ok(()) => {
                    // PostgreSQL refuses a data directory others can read (0700, or 0750 with
                    // group access); a script, or an earlier method, may have created it 0755.
                    use std::os::unix::fs::PermissionsExt;
                    let dir = &self.s.data_dir;
                    let mode = std::fs::metadata(dir)
                        .map_err(io_err(dir))?
                        .permissions()
                        .mode();
                    if mode & 0o777 != 0o700 && mode & 0o777 != 0o750 {
                        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                            .map_err(io_err(dir))?;
                    }
                    tracing::info!("replica has been created using {}", method.name);
                    return Ok(method.name.clone());
                }
                Err(e) => {
                    tracing::error!("error creating replica using method {}: {e}", method.name);
                    last = e;
                }
            }
        }
        Err(last)
    }

    /// Removes what is inside the data directory (the directory itself stays: it may be a mount
    /// point). Only called while cloning, into a directory that was empty when the clone started.
    fn empty_data_dir(&self) -> Result<(), PgError> {
        let dir = &self.s.data_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(dir)(e)),
        };
        for entry in entries {
            let path = entry.map_err(io_err(dir))?.path();
            let removed = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(io_err(&path))?;
        }
        Ok(())
    }

    /// Runs an operator's replica creation command ([`praetor_config::replica::ReplicaMethod::argv`])
    /// with PGPASSFILE set to the agent's password file, as Patroni does; its output is logged.
    async fn run_replica_method(
        &self,
        method: &praetor_config::replica::ReplicaMethod,
        from: Option<&Upstream>,
    ) -> Result<(), PgError> {
        self.write_pgpass()?;
        let connstring = from.map_or(String::new(), |up| {
            let port = up.port.to_string();
            conninfo(&[
                ("dbname", Some("postgres")),
                ("user", Some(&self.s.replication.username)),
                ("host", Some(&up.host)),
                ("port", Some(&port)),
            ])
        });
        let argv = method
            .argv(
                &self.s.scope,
                &self.s.data_dir.to_string_lossy(),
                &connstring,
            )
            .map_err(PgError::Unexpected)?;
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .env("PGPASSFILE", &self.s.pgpass)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| PgError::Command {
                program: argv[0].clone(),
                message: e.to_string(),
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(failed_program(argv[0].clone(), out.status, &stderr));
        }
        Ok(())
    }

    /// The `standby_cluster` settings postgresql.conf was last written with to follow the remote of
    /// a standby cluster ([`crate::ha::LocalState::remote_recovery`]); `None` when it was last
    /// written for another role, or not yet by this agent.
    pub fn remote_recovery_written(&self) -> Option<crate::ha::standby::RemoteRecovery> {
        self.remote_recovery
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Asks a standby cluster's remote (`host`, `port`) for its timeline and timeline history,
    /// over SQL as the rewind user (the superuser when none is configured): `Ok(None)` when it is
    /// in recovery (no primary to judge against, as in Patroni's rewind check). The timeline is
    /// the first 8 hex digits of its current WAL file's name; the history is
    /// `pg_wal/<timeline>.history`, read with `pg_read_binary_file(text)`, which the rewind role is
    /// granted for pg_rewind anyway. Connection and each query are bounded (3 s, 5 s).
    pub async fn remote_timeline(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Option<crate::ha::standby::RemoteTimeline>, PgError> {
        let who = self.s.rewind.as_ref().unwrap_or(&self.s.superuser);
        let client = self.connect_remote(host, port, who).await?;
        let bounded = |q| tokio::time::timeout(Duration::from_secs(5), q);
        let row = bounded(client.query_one(
            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL \
             ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
            &[],
        ))
        .await
        .map_err(|_| PgError::Query(format!("{host}:{port}: no answer within 5 s")))?
        .map_err(|e| PgError::Query(db_error_text(&e)))?;
        if row.get::<_, bool>(0) {
            return Ok(None);
        }
        let hex: String = row.get(1);
        let timeline = u32::from_str_radix(&hex, 16)
            .map_err(|e| PgError::Unexpected(format!("timeline {hex:?}: {e}")))?;
        let mut history = Vec::new();
        if timeline > 1 {
            let file = format!("pg_wal/{timeline:08X}.history");
            let row = bounded(client.query_one(
                "SELECT convert_from(pg_read_binary_file($1), 'UTF8')",
                &[&file],
            ))
            .await
            .map_err(|_| PgError::Query(format!("{host}:{port}: no answer within 5 s")))?
            .map_err(|e| PgError::Query(db_error_text(&e)))?;
            let text: String = row.get(0);
            history = parse_timeline_history(&text)
                .into_iter()
                .map(|l| praetor_dcs::HistoryEntry {
                    timeline: l.timeline,
                    lsn: l.lsn,
                    reason: l.reason,
                    timestamp: None,
                    new_leader: None,
                })
                .collect();
        }
        Ok(Some(crate::ha::standby::RemoteTimeline {
            timeline,
            history,
        }))
    }

    /// A connection to another server's `postgres` database as `who` (bounded: 3 s).
    async fn connect_remote(
        &self,
        host: &str,
        port: u16,
        who: &Credentials,
    ) -> Result<tokio_postgres::Client, PgError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(host)
            .port(port)
            .user(&who.username)
            .dbname("postgres")
            .application_name("praetor")
            .connect_timeout(Duration::from_secs(3));
        if let Some(pw) = &who.password {
            cfg.password(pw);
        }
        let (client, conn) =
            tokio::time::timeout(Duration::from_secs(5), cfg.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| PgError::Query(format!("{host}:{port}: connect timed out")))?
                .map_err(|e| PgError::Query(format!("{host}:{port}: {}", db_error_text(&e))))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Rewinds the stopped data directory to `from` with pg_rewind (which runs crash recovery itself
    /// when the last shutdown was not clean).
    ///
    /// With `checkpoint_source`, a CHECKPOINT is requested on the source first (as the superuser;
    /// a standby cluster shares its credentials with the remote): pg_rewind reads the source's
    /// timeline from its pg_control, which a freshly promoted primary updates only at its first
    /// checkpoint and a standby at its first restartpoint on the new timeline; without it pg_rewind
    /// finds "no rewind required" and the start that follows fails. Patroni's `Rewind.execute`
    /// does the same for a remote member or a leader that publishes no
    /// `checkpoint_after_promote`. A failed CHECKPOINT on a standby cluster's remote fails the
    /// rewind (retried at the failed-task pace); on a member of this cluster it is logged and the
    /// rewind goes ahead, as before (its superuser may not be let in over the network).
    pub async fn rewind(&self, from: &Upstream, checkpoint_source: bool) -> Result<(), PgError> {
        if checkpoint_source {
            let checkpoint = async {
                let client = self
                    .connect_remote(&from.host, from.port, &self.s.superuser)
                    .await?;
                client.simple_query("CHECKPOINT").await.map_err(|e| {
                    PgError::Query(format!(
                        "CHECKPOINT on {}:{}: {}",
                        from.host,
                        from.port,
                        db_error_text(&e)
                    ))
                })
            };
            match checkpoint.await {
                Ok(_) => {}
                // The remote's pg_control is all pg_rewind has to go by: fail, retried later.
                Err(e) if from.is_remote() => return Err(e),
                // A member of this cluster (the superuser may not be let in over the network):
                // go on as before; a stale pg_control makes pg_rewind find nothing to do and the
                // start that follows fail, which is retried at the failed-task pace.
                Err(e) => tracing::warn!("before pg_rewind from {}: {e}", from.member),
            }
        }
        self.write_pgpass()?;
        // Single-user crash recovery (run by pg_rewind) refuses standby mode.
        remove_if_exists(&self.data("standby.signal"))?;
        let who = self.s.rewind.as_ref().unwrap_or(&self.s.superuser);
        let port = from.port.to_string();
        let source = conninfo(&[
            ("host", Some(&from.host)),
            ("port", Some(&port)),
            ("user", Some(&who.username)),
            ("dbname", Some("postgres")),
            ("passfile", self.s.pgpass.to_str()),
        ]);
        let args: Vec<std::ffi::OsString> = vec![
            "-D".into(),
            self.s.data_dir.clone().into(),
            format!("--source-server={source}").into(),
            // Only with --progress does pg_rewind print its phase lines (`need to copy ...` when
            // the copy begins), which tell a failure before the copy from one during it.
            "--progress".into(),
        ];
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        // The marker outlives an agent killed while pg_rewind runs (and the agent's restart): it is
        // written before pg_rewind starts and removed only when the run is known harmless.
        let marker = self.rewind_marker();
        let started = format!(
            "pg_rewind from {} did not finish (the agent stopped while it ran)\n",
            from.member
        );
        if let Err(e) = std::fs::write(&marker, started) {
            tracing::warn!(
                "cannot write {}: {e}; an agent restarted after a pg_rewind interrupted mid-way \
                 would not know the data directory is damaged",
                marker.display()
            );
        }
        let (status, stderr) = self.run_output("pg_rewind", &refs).await?;
        if status.success() {
            tracing::info!("pg_rewind: {}", stderr.trim().replace(['\n', '\r'], " | "));
            self.clear_rewind_damage();
            return Ok(());
        }
        let failure = crate::ha::rewind_outcome::classify(&stderr);
        match failure {
            crate::ha::RewindFailure::Untouched => self.clear_rewind_damage(),
            crate::ha::RewindFailure::Damaged => {
                let line = crate::ha::rewind_outcome::error_line(&stderr);
                if let Err(e) = std::fs::write(&marker, format!("{line}\n")) {
                    tracing::warn!("cannot write {}: {e}", marker.display());
                }
                *self.rewind_damage.lock().unwrap_or_else(|p| p.into_inner()) = Some(line);
            }
        }
        let mut e = failed_program("pg_rewind".into(), status, &stderr);
        if let PgError::Command { message, .. } = &mut e {
            message.push_str(&format!(" (the data directory is {failure:?})"));
        }
        Err(e)
    }

    /// The rewind marker: `<data_dir>.praetor-rewind`, next to the data directory and not in it,
    /// since pg_rewind removes the target's files that the source lacks, in the very phase that
    /// can leave it damaged. It holds the line that says why the directory is damaged.
    pub fn rewind_marker(&self) -> PathBuf {
        let mut name = self
            .s
            .data_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(REWIND_MARKER_SUFFIX);
        self.s.data_dir.with_file_name(name)
    }

    /// Why the data directory cannot be used after a pg_rewind that failed after it began writing
    /// (or was killed: the agent cannot tell how far it got), from the rewind marker or this
    /// agent's memory; `None`: no such damage known.
    pub fn rewind_damage(&self) -> Option<String> {
        let marker = self.rewind_marker();
        match std::fs::read_to_string(&marker) {
            Ok(text) => {
                let line = text.trim();
                return Some(if line.is_empty() {
                    format!("{} exists", marker.display())
                } else {
                    line.to_string()
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot read {}: {e}", marker.display()),
        }
        self.rewind_damage
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Forgets a damage left by pg_rewind: it succeeded, failed without writing, or the data
    /// directory was removed (to clone again, `ctl reinit`).
    pub fn clear_rewind_damage(&self) {
        *self.rewind_damage.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let marker = self.rewind_marker();
        if let Err(e) = std::fs::remove_file(&marker) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", marker.display());
            }
        }
    }

    /// Runs single-user crash recovery on a stopped data directory whose last shutdown was not clean,
    /// leaving it cleanly shut down (pg_controldata then tells where its WAL ends, and pg_rewind
    /// accepts it). It runs with the parameters the agent passes on the command line
    /// (`dynamic`'s cluster-wide ones such as `wal_log_hints`), as a normal start would: the end of
    /// recovery records them in pg_control, where pg_rewind checks `wal_log_hints`.
    pub async fn crash_recovery(&self, dynamic: &DynamicConfig) -> Result<(), PgError> {
        remove_if_exists(&self.data("standby.signal"))?;
        let (_, cmdline, _) = self.parameters(dynamic);
        let mut args: Vec<std::ffi::OsString> = vec![
            "--single".into(),
            "-D".into(),
            self.s.data_dir.clone().into(),
        ];
        for (k, v) in &cmdline {
            args.push("-c".into());
            args.push(format!("{k}={v}").into());
        }
        args.extend(["-c".into(), "archive_mode=off".into(), "template1".into()]);
        let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        self.run_capture("postgres", &refs).await.map(|_| ())
    }

    /// Creates the replication role and `bootstrap.users` (after bootstrap, as the superuser).
    pub async fn create_roles(&self, bootstrap: &Bootstrap) -> Result<(), PgError> {
        let mut statements = Vec::new();
        let repl = &self.s.replication;
        if repl.username != self.s.superuser.username {
            statements.push(role_sql(
                &repl.username,
                repl.password.as_deref(),
                &["REPLICATION".to_string()],
            ));
        }
        if let Some(rw) = &self.s.rewind {
            if rw.username != self.s.superuser.username {
                statements.push(role_sql(&rw.username, rw.password.as_deref(), &[]));
                statements.extend(rewind_grants(&rw.username));
            }
        }
        for (name, user) in &bootstrap.users {
            let opts: Vec<String> = user.options.iter().map(|o| o.to_uppercase()).collect();
            statements.push(role_sql(name, user.password.as_deref(), &opts));
        }
        for sql in statements {
            self.query(&sql, &[]).await?;
        }
        Ok(())
    }

    /// Creates a physical replication slot (reserving WAL at once) for each name that lacks one.
    pub async fn ensure_slots(&self, names: &[String]) -> Result<(), PgError> {
        if names.is_empty() {
            return Ok(());
        }
        let rows = self
            .query(
                "SELECT slot_name::text FROM pg_replication_slots WHERE slot_type = 'physical'",
                &[],
            )
            .await?;
        let existing: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        for name in names.iter().filter(|n| !existing.contains(n)) {
            self.query(
                "SELECT pg_create_physical_replication_slot($1, true)",
                &[name],
            )
            .await?;
            tracing::info!(slot = %name, "created physical replication slot");
        }
        Ok(())
    }

    /// Drops an inactive replication slot; `Ok(false)` when it is in use (dropped another time) or
    /// gone.
    pub async fn drop_slot(&self, name: &str) -> Result<bool, PgError> {
        let rows = self
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&name],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Creates a logical replication slot unless one of that name exists, connected to its database
    /// (`pg_create_logical_replication_slot`, with `failover => true` when asked: PostgreSQL 17+).
    pub async fn create_logical_slot(
        &self,
        slot: &crate::ha::slots::LogicalSlot,
    ) -> Result<(), PgError> {
        let client = self.connect_to(&slot.database).await?;
        let sql = if slot.failover {
            "SELECT pg_create_logical_replication_slot($1, $2, false, false, true) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
        } else {
            "SELECT pg_create_logical_replication_slot($1, $2) \
             WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)"
        };
        tokio::time::timeout(
            self.s.ctl_timeout,
            client.query(sql, &[&slot.name, &slot.plugin]),
        )
        .await
        .map_err(|_| PgError::Timeout(self.s.ctl_timeout, sql.to_string()))?
        .map_err(|e| PgError::Query(db_error_text(&e)))?;
        Ok(())
    }

    /// Advances a slot to `lsn` (bytes), as replicas do with their copies of permanent slots.
    pub async fn advance_slot(&self, name: &str, lsn: u64) -> Result<(), PgError> {
        let text = super::format_lsn(lsn);
        self.query(
            "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
            &[&name, &text],
        )
        .await
        .map(|_| ())
    }

    /// Advances a replica's copy of a permanent logical slot (before 17), connected to its
    /// database as PostgreSQL requires for a logical slot. `Ok(Unusable)` when PostgreSQL can no
    /// longer advance it, so it must be copied again: SQLSTATE 58P01 (the WAL it needs was
    /// removed) or 55000 (invalidated, or not usable in this state), the codes Patroni's
    /// `SlotsAdvanceThread` copies again on. PostgreSQL itself stops at the replayed position.
    pub async fn advance_logical_slot(
        &self,
        a: &crate::ha::slots::LogicalAdvance,
    ) -> Result<SlotAdvance, PgError> {
        let client = self.connect_to(&a.database).await?;
        let text = super::format_lsn(a.lsn);
        match tokio::time::timeout(
            Duration::from_secs(30),
            client.query(
                "SELECT pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&a.name, &text],
            ),
        )
        .await
        {
            Err(_) => Err(PgError::Query(
                "pg_replication_slot_advance timed out".into(),
            )),
            Ok(Ok(_)) => Ok(SlotAdvance::Done),
            Ok(Err(e)) => {
                let code = e.as_db_error().map(|d| d.code().code().to_string());
                match code.as_deref() {
                    Some("58P01") | Some("55000") => Ok(SlotAdvance::Unusable(db_error_text(&e))),
                    _ => Err(PgError::Query(db_error_text(&e))),
                }
            }
        }
    }

    /// Reads the state files of logical slots `names` on the primary `from` (before 17: Patroni's
    /// `copy_logical_slots`), connected as the rewind role (else the superuser), which may call
    /// `pg_read_binary_file` (pg_rewind needs it too). Only slots of a server not in recovery are
    /// returned, with their database and plugin, so that a copy is never taken from a standby.
    pub async fn read_leader_slot_states(
        &self,
        from: &Upstream,
        names: &[String],
    ) -> Result<Vec<LeaderSlotState>, PgError> {
        let who = self.s.rewind.as_ref().unwrap_or(&self.s.superuser);
        let client = self.connect_remote(&from.host, from.port, who).await?;
        let rows = tokio::time::timeout(
            Duration::from_secs(10),
            client.query(
                "SELECT slot_name::text, database::text, plugin::text, \
                        pg_read_binary_file('pg_replslot/' || slot_name || '/state') \
                 FROM pg_replication_slots \
                 WHERE slot_type = 'logical' AND NOT temporary AND NOT pg_is_in_recovery() \
                   AND slot_name = ANY($1)",
                &[&names],
            ),
        )
        .await
        .map_err(|_| PgError::Query("reading the slots' state files timed out".into()))?
        .map_err(|e| PgError::Query(db_error_text(&e)))?;
        Ok(rows
            .iter()
            .map(|r| LeaderSlotState {
                name: r.get(0),
                database: r.get(1),
                plugin: r.get(2),
                state: r.get(3),
            })
            .collect())
    }

    /// Writes a logical slot's state file, read on the primary, into the stopped data directory's
    /// `pg_replslot/<name>/state`, replacing any slot of that name; PostgreSQL loads it at its next
    /// start. As PostgreSQL writes a slot (and Patroni copies one): into `<name>.tmp` first, each
    /// file and directory fsynced, then renamed into place; owned like `pg_replslot`.
    pub fn install_slot_state(&self, name: &str, state: &[u8]) -> Result<(), PgError> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
        if self.postmaster().is_some() {
            return Err(PgError::Query(
                "postgres is running: not writing a slot's state file".into(),
            ));
        }
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(PgError::Query(format!("invalid slot name {name:?}")));
        }
        let replslot = self.data("pg_replslot");
        let meta = std::fs::metadata(&replslot).map_err(io_err(&replslot))?;
        let owner = (Some(meta.uid()), Some(meta.gid()));
        let fsync_dir = |dir: &Path| -> Result<(), PgError> {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io_err(dir))
        };
        let tmp = replslot.join(format!("{name}.tmp"));
        let dst = replslot.join(name);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(io_err(&tmp))?;
        std::os::unix::fs::chown(&tmp, owner.0, owner.1).map_err(io_err(&tmp))?;
        let file = tmp.join("state");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .map_err(io_err(&file))?;
        f.write_all(state).map_err(io_err(&file))?;
        f.sync_all().map_err(io_err(&file))?;
        std::os::unix::fs::chown(&file, owner.0, owner.1).map_err(io_err(&file))?;
        fsync_dir(&tmp)?;
        if dst.exists() {
            std::fs::remove_dir_all(&dst).map_err(io_err(&dst))?;
        }
        std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
        fsync_dir(&dst)?;
        fsync_dir(&replslot)
    }

    /// The data directory's promotion record (`praetor.promotion`, see [`crate::ha::Promotion`]);
    /// `None` when absent or unreadable (an unreadable record is logged: without it the equal
    /// timeline check of `decide` cannot fire, it never blocks a start).
    pub fn promotion_record(&self) -> Option<crate::ha::Promotion> {
        let path = self.data(PROMOTION_RECORD);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("cannot read {}: {e}", path.display());
                return None;
            }
        };
        serde_json::from_str(&text)
            .map_err(|e| tracing::warn!("ignoring {}: {e}", path.display()))
            .ok()
    }

    /// Records, durably and before `pg_promote`, that `member` promotes this data directory from
    /// timeline `from_timeline` at `lsn` (bytes). The new timeline is the one PostgreSQL will pick:
    /// one past the newest `pg_wal/<timeline>.history` from `from_timeline` on (its
    /// `findNewestTimeLine`; history files only in an archive are not seen, and a record naming
    /// the wrong timeline is ignored by `decide`). Written to a temporary file, synced, renamed,
    /// owned like the data directory (pg_basebackup and pg_rewind read it as PostgreSQL's user).
    pub fn write_promotion_record(
        &self,
        member: &str,
        from_timeline: u32,
        lsn: u64,
    ) -> Result<crate::ha::Promotion, PgError> {
        use std::os::unix::fs::MetadataExt as _;
        let mut newest = from_timeline;
        while self
            .data(&format!("pg_wal/{:08X}.history", newest + 1))
            .exists()
        {
            newest += 1;
        }
        let record = crate::ha::Promotion {
            member: member.to_string(),
            timeline: newest + 1,
            lsn,
        };
        let dir = &self.s.data_dir;
        let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
        let text = serde_json::to_string(&record).expect("a promotion record serializes");
        // Owned like the data directory, before it appears: pg_basebackup and pg_rewind of other
        // members read it as the server's user.
        write_file_atomically(
            &self.data(PROMOTION_RECORD),
            &text,
            Some((meta.uid(), meta.gid())),
        )?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
        Ok(record)
    }

    /// Reads `pg_wal/<timeline>.history` (the history of how `timeline` came to be).
    pub fn timeline_history(&self, timeline: u32) -> Result<Vec<HistoryLine>, PgError> {
        let path = self.data(&format!("pg_wal/{timeline:08X}.history"));
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        Ok(parse_timeline_history(&text))
    }

    /// Asks the running server for its state (one query, plus pg_stat_replication on a primary).
    pub async fn status(&self) -> Result<ServerStatus, PgError> {
        const SQL: &str = "SELECT pg_is_in_recovery(),
            CASE WHEN pg_is_in_recovery() THEN NULL ELSE (pg_current_wal_lsn() - '0/0')::bigint END,
            (pg_last_wal_receive_lsn() - '0/0')::bigint,
            (pg_last_wal_replay_lsn() - '0/0')::bigint,
            CASE WHEN pg_is_in_recovery()
                 THEN COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),
                               (SELECT timeline_id FROM pg_control_checkpoint()))
                 ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END,
            COALESCE((SELECT status = 'streaming' FROM pg_stat_wal_receiver), false),
            current_setting('primary_conninfo'),
            current_setting('server_version_num')::int,
            pg_postmaster_start_time()::text,
            (SELECT system_identifier FROM pg_control_system())::text,
            pg_last_xact_replay_timestamp()::text,
            CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
            current_setting('synchronous_standby_names')";
        let rows = self.query(SQL, &[]).await?;
        let row = rows
            .first()
            .ok_or_else(|| PgError::Unexpected("status query returned no row".into()))?;
        let lsn = |i: usize| row.get::<_, Option<i64>>(i).map(|v| v.max(0) as u64);
        let in_recovery: bool = row.get(0);
        let conninfo_text: String = row.get(6);
        let mut st = ServerStatus {
            in_recovery,
            current_lsn: lsn(1),
            received_lsn: lsn(2),
            replayed_lsn: lsn(3),
            timeline: row.get::<_, Option<i32>>(4).unwrap_or(0).max(0) as u32,
            streaming: row.get(5),
            upstream: if in_recovery {
                conninfo_host_port(&conninfo_text)
            } else {
                None
            },
            server_version: row.get(7),
            postmaster_start_time: row.get(8),
            system_identifier: row.get(9),
            replay_timestamp: row.get(10),
            replay_paused: row.get(11),
            sync_standby_names: row.get(12),
            slots: vec![],
            replication: vec![],
        };
        // `failover` and `synced` exist from 17 on (the server's version, not the binaries': an
        // agent may run next to an older server until it restarts it).
        let failover_cols = if st.server_version >= 170000 {
            "failover, synced"
        } else {
            "false, false"
        };
        // Invalidated slots: `invalidation_reason` from 17 on; 16 says `conflicting` (logical slots
        // whose catalog rows a standby removed) and, like 13-15, `wal_status = 'lost'` (WAL
        // removed past `max_slot_wal_keep_size`); before 13 nothing.
        let invalidated_col = match st.server_version {
            v if v >= 170000 => "invalidation_reason IS NOT NULL",
            v if v >= 160000 => {
                "COALESCE(conflicting, false) OR COALESCE(wal_status = 'lost', false)"
            }
            v if v >= 130000 => "COALESCE(wal_status = 'lost', false)",
            _ => "false",
        };
        st.slots = self
            .query(
                &format!(
                    "SELECT slot_name::text, slot_type = 'physical', COALESCE((restart_lsn - '0/0')::bigint, 0),
                            database::text, plugin::text, COALESCE((confirmed_flush_lsn - '0/0')::bigint, 0),
                            {failover_cols}, {invalidated_col}
                     FROM pg_replication_slots WHERE NOT temporary"
                ),
                &[],
            )
            .await?
            .iter()
            .map(|r| SlotRow {
                name: r.get(0),
                physical: r.get(1),
                restart_lsn: r.get::<_, i64>(2).max(0) as u64,
                database: r.get(3),
                plugin: r.get(4),
                confirmed_flush_lsn: r.get::<_, i64>(5).max(0) as u64,
                failover: r.get(6),
                synced: r.get(7),
                invalidated: r.get(8),
            })
            .collect();
        if !in_recovery {
            let rows = self
                .query(
                    "SELECT usename::text, application_name, client_addr::text, state, sync_state, sync_priority,
                            (flush_lsn - '0/0')::bigint
                     FROM pg_stat_replication ORDER BY application_name",
                    &[],
                )
                .await?;
            st.replication = rows
                .iter()
                .map(|r| ReplicationRow {
                    usename: r.get::<_, Option<String>>(0).unwrap_or_default(),
                    application_name: r.get::<_, Option<String>>(1).unwrap_or_default(),
                    client_addr: r.get(2),
                    state: r.get::<_, Option<String>>(3).unwrap_or_default(),
                    sync_state: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    sync_priority: r.get::<_, Option<i32>>(5).unwrap_or(0),
                    flush_lsn: r.get::<_, Option<i64>>(6).unwrap_or(0).max(0) as u64,
                })
                .collect();
        }
        Ok(st)
    }

    /// How many client backends other than the agent's own are inside a transaction (running one,
    /// or idle in one): `pg_stat_activity` rows with an `xact_start`.
    pub async fn transactions_in_progress(&self) -> Result<i64, PgError> {
        let rows = self
            .query(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' \
                 AND xact_start IS NOT NULL AND pid <> pg_backend_pid() \
                 AND application_name <> 'praetor api'",
                &[],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or(0))
    }

    /// The transactions [`Instance::transactions_in_progress`] counts, one line each (state, wait
    /// event, client port, query start), for the log.
    pub async fn transactions_in_progress_detail(&self) -> Result<String, PgError> {
        let rows = self
            .query(
                "SELECT coalesce(string_agg(state || ' ' || coalesce(wait_event, '-') || ' port ' \
                 || coalesce(client_port, 0) || ': ' || left(query, 60), ' | '), '') \
                 FROM pg_stat_activity WHERE backend_type = 'client backend' \
                 AND xact_start IS NOT NULL AND pid <> pg_backend_pid() \
                 AND application_name <> 'praetor api'",
                &[],
            )
            .await?;
        Ok(rows.first().map(|r| r.get(0)).unwrap_or_default())
    }

    /// Makes the standbys a new `synchronous_standby_names` names release the commits waiting for
    /// synchronous replication at once. Returns whether no session waits any more (`false` when
    /// `within` ran out first: the standby is still catching up, or PostgreSQL is slow; the commits
    /// are then released by the standby's next reply, as without this call).
    ///
    /// Why: PostgreSQL releases the sessions waiting for synchronous replication (wait event
    /// `SyncRep`) only while it processes a synchronous standby's reply (`SyncRepReleaseWaiters`,
    /// called for each reply in walsender.c), and a standby replies when its written or flushed
    /// position moves, or every `wal_receiver_status_interval` (10 s by default). When the
    /// synchronous standby goes away, the waiting commits stop all new WAL, so the standby named
    /// next (which already holds their WAL) has nothing to reply about: the nemesis saw the waiters
    /// stay 2.4-4.4 s after the reload at load 20-30 (issue 14, strict mode's repl-cut and replica
    /// kill). A transaction committed with `synchronous_commit = local` waits for no standby and
    /// writes a commit record, which moves every standby's position and so brings its reply. It
    /// is repeated every 50 ms until no session waits, since the first may reach the standby before
    /// its WAL sender read the new setting (the postmaster passes SIGHUP on to every process).
    ///
    /// # Errors
    /// [`PgError`] when the local server cannot be reached or the queries fail (a server in
    /// recovery cannot assign a transaction id).
    pub async fn release_synchronous_waiters(&self, within: Duration) -> Result<bool, PgError> {
        let client = self.connect().await?;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            client
                .batch_execute(
                    "BEGIN; SET LOCAL synchronous_commit TO local; SELECT txid_current(); COMMIT",
                )
                .await
                .map_err(|e| PgError::Query(db_error_text(&e)))?;
            let waiting: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'",
                    &[],
                )
                .await
                .map_err(|e| PgError::Query(db_error_text(&e)))?
                .get(0);
            if waiting == 0 {
                return Ok(true);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs a query on the local server over a cached connection, reconnecting once when the cached
    /// one turns out to be broken (the server restarted).
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, PgError> {
        self.query_on(
            &self.client,
            AGENT_APPLICATION_NAME,
            self.s.ctl_timeout,
            sql,
            params,
        )
        .await
    }

    /// [`Instance::query`] over the connection cached in `slot` (opened with `application_name`),
    /// bounded by `timeout` (the connection is dropped when it runs out).
    async fn query_on(
        &self,
        slot: &Mutex<Option<tokio_postgres::Client>>,
        application_name: &str,
        timeout: Duration,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, PgError> {
        let mut guard = slot.lock().await;
        for attempt in 0..2 {
            if guard.as_ref().is_none_or(|c| c.is_closed()) {
                *guard = Some(self.connect_as_app("postgres", application_name).await?);
            }
            let client = guard.as_ref().expect("connected just above");
            match tokio::time::timeout(timeout, client.query(sql, params)).await {
                Ok(Ok(rows)) => return Ok(rows),
                Ok(Err(e)) if client.is_closed() && attempt == 0 => {
                    tracing::debug!("local connection broken ({e}), reconnecting");
                    *guard = None;
                }
                Ok(Err(e)) => return Err(PgError::Query(db_error_text(&e))),
                Err(_) => {
                    *guard = None;
                    return Err(PgError::Timeout(timeout, sql.to_string()));
                }
            }
        }
        Err(PgError::Query("the local connection keeps breaking".into()))
    }

    /// This member's WAL positions read from PostgreSQL now, over the REST API's own connection
    /// (opened on first use, `application_name` [`API_APPLICATION_NAME`]), within `timeout` (the
    /// wait for that connection and its opening included). What `GET /patroni` answers, as
    /// Patroni's API queries the server at every request: the HA loop's status is up to
    /// `loop_wait` old, and two members' statuses taken at different moments made a caught-up
    /// candidate look 16 MiB behind its leader after a WAL segment switch (a switchover refused
    /// as lagging).
    ///
    /// # Errors
    /// [`PgError`] when the server cannot be reached, or answers later than `timeout`.
    pub async fn wal_positions(&self, timeout: Duration) -> Result<WalPositions, PgError> {
        const SQL: &str = "SELECT pg_is_in_recovery(),
            CASE WHEN pg_is_in_recovery() THEN NULL ELSE (pg_current_wal_lsn() - '0/0')::bigint END,
            (pg_last_wal_receive_lsn() - '0/0')::bigint,
            (pg_last_wal_replay_lsn() - '0/0')::bigint";
        let attempt = self.query_on(&self.api_client, API_APPLICATION_NAME, timeout, SQL, &[]);
        let rows = tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| PgError::Timeout(timeout, SQL.to_string()))??;
        let row = rows
            .first()
            .ok_or_else(|| PgError::Unexpected("WAL position query returned no row".into()))?;
        let lsn = |i: usize| row.get::<_, Option<i64>>(i).map(|v| v.max(0) as u64);
        Ok(WalPositions {
            in_recovery: row.get(0),
            current_lsn: lsn(1),
            received_lsn: lsn(2),
            replayed_lsn: lsn(3),
        })
    }

    async fn connect(&self) -> Result<tokio_postgres::Client, PgError> {
        self.connect_to("postgres").await
    }

    /// A new connection to the local server's database `dbname` as the superuser.
    async fn connect_to(&self, dbname: &str) -> Result<tokio_postgres::Client, PgError> {
        self.connect_as_app(dbname, AGENT_APPLICATION_NAME).await
    }

    /// [`Instance::connect_to`] with another `application_name`.
    async fn connect_as_app(
        &self,
        dbname: &str,
        application_name: &str,
    ) -> Result<tokio_postgres::Client, PgError> {
        let mut cfg = tokio_postgres::Config::new();
        if self.s.use_unix_socket {
            let dirs = self
                .socket_dirs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                // Before the first write (an agent restarted next to a running server): the local
                // setting, the usual place for it.
                .or_else(|| {
                    self.s
                        .parameters
                        .get("unix_socket_directories")
                        .map(|v| v.as_pg_text())
                });
            cfg.host_path(unix_socket_dir(dirs.as_deref(), &self.s.data_dir));
        } else {
            cfg.host(self.s.listen.local_connect_host());
        }
        cfg.port(self.s.listen.port)
            .user(&self.s.superuser.username)
            .dbname(dbname)
            .application_name(application_name)
            .connect_timeout(Duration::from_secs(3));
        if let Some(pw) = &self.s.superuser.password {
            cfg.password(pw);
        }
        let (client, conn) =
            tokio::time::timeout(Duration::from_secs(5), cfg.connect(tokio_postgres::NoTls))
                .await
                .map_err(|_| PgError::Query("connect timed out".into()))?
                .map_err(|e| PgError::Query(db_error_text(&e)))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs one of PostgreSQL's programs with `LC_ALL=C` and PGPASSFILE set; returns stdout, or an
    /// error with the exit status and the last lines of stderr.
    async fn run_capture(
        &self,
        program: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<String, PgError> {
        self.run_capture_both(program, args)
            .await
            .map(|(out, _)| out)
    }

    /// Like [`Instance::run_capture`], returning stdout and stderr.
    /// Runs `program` and returns its exit status and stderr, whatever the status (an error only
    /// when it cannot be run).
    async fn run_output(
        &self,
        program: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<(std::process::ExitStatus, String), PgError> {
        let out = Command::new(self.bin(program))
            .args(args)
            .env("LC_ALL", "C")
            .env("PGPASSFILE", &self.s.pgpass)
            .env("PGAPPNAME", &self.s.name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| PgError::Command {
                program: program.into(),
                message: e.to_string(),
            })?;
        Ok((
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    async fn run_capture_both(
        &self,
        program: &str,
        args: &[&std::ffi::OsStr],
    ) -> Result<(String, String), PgError> {
        let mut cmd = Command::new(self.bin(program));
        cmd.args(args)
            .env("LC_ALL", "C")
            .env("PGPASSFILE", &self.s.pgpass)
            .env("PGAPPNAME", &self.s.name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let out = cmd.output().await.map_err(|e| PgError::Command {
            program: program.into(),
            message: e.to_string(),
        })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(failed_program(program.into(), out.status, &stderr));
        }
        if !stderr.trim().is_empty() {
            tracing::debug!(program, stderr = %stderr.trim(), "program output");
        }
        Ok((
            String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr.into_owned(),
        ))
    }
}

/// The message of a database error (with SQLSTATE) or the error's text.
/// The recovery settings a standby cluster adds (Patroni's `_get_node_to_follow` and
/// `get_remote_member`): every member gets the section's `restore_command` and
/// `archive_cleanup_command` (WAL from the remote's archive); a member streaming from the remote (the
/// standby leader, or any member while the cluster has no leader) also its
/// `recovery_min_apply_delay`. Empty outside a standby cluster. They override
/// `postgresql.recovery_conf`.
pub fn standby_cluster_recovery(
    dynamic: &DynamicConfig,
    upstream: Option<&Upstream>,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(sc) = dynamic.standby() else {
        return out;
    };
    for (k, v) in [
        ("restore_command", &sc.restore_command),
        ("archive_cleanup_command", &sc.archive_cleanup_command),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            out.insert(k.to_string(), v.to_string());
        }
    }
    if upstream.is_some_and(|u| is_remote_upstream(dynamic, u)) {
        if let Some(d) = sc.recovery_min_apply_delay.as_deref() {
            out.insert("recovery_min_apply_delay".into(), d.to_string());
        }
    }
    out
}

fn db_error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{} ({}): {}", db.severity(), db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// `CREATE ROLE` with LOGIN, an optional password and options, quoting the name as an identifier and
/// the password as a literal.
fn role_sql(name: &str, password: Option<&str>, options: &[String]) -> String {
    let mut sql = format!("CREATE ROLE {} WITH LOGIN", quote_ident(name));
    for o in options {
        if o.chars().all(|c| c.is_ascii_alphabetic()) {
            sql.push(' ');
            sql.push_str(o);
        }
    }
    if let Some(pw) = password {
        sql.push_str(&format!(" PASSWORD {}", quote_literal(pw)));
    }
    sql
}

/// The functions pg_rewind calls on its source server, which a role without superuser needs the right
/// to execute (PostgreSQL's pg_rewind documentation; Patroni's bootstrap grants the same to
/// `authentication.rewind`).
const REWIND_FUNCTIONS: [&str; 4] = [
    "pg_ls_dir(text, boolean, boolean)",
    "pg_stat_file(text, boolean)",
    "pg_read_binary_file(text)",
    "pg_read_binary_file(text, bigint, bigint, boolean)",
];

/// `GRANT EXECUTE` on each of [`REWIND_FUNCTIONS`] to `role`.
fn rewind_grants(role: &str) -> Vec<String> {
    REWIND_FUNCTIONS
        .iter()
        .map(|f| {
            format!(
                "GRANT EXECUTE ON FUNCTION pg_catalog.{f} TO {}",
                quote_ident(role)
            )
        })
        .collect()
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// pg_hba.conf contents for `lines`.
fn hba_text(lines: &[String]) -> String {
    format!(
        "# Written by praetor from its configuration.\n{}\n",
        lines.join("\n")
    )
}

/// What [`Instance::write_config`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWrite {
    /// postgresql.conf or pg_hba.conf changed: a running server needs a reload.
    pub changed: bool,
    /// Local parameters that were ignored (cluster-wide or agent-managed).
    pub ignored: Vec<String>,
}

/// Writes `text` to `path` (mode 0600, atomically) unless it already holds exactly that; returns
/// whether it wrote.
fn write_if_changed(path: &Path, text: &str) -> Result<bool, PgError> {
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(false);
    }
    write_private(path, text)?;
    Ok(true)
}

fn write_private(path: &Path, text: &str) -> Result<(), PgError> {
    write_file_atomically(path, text, None)
}

/// Writes `text` to `path` with mode 0600 through a temporary file beside it, synced, given to
/// `owner` (uid, gid) when set, then renamed over `path`: readers see the old contents or the new,
/// never a part.
fn write_file_atomically(
    path: &Path,
    text: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), PgError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("praetor-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    f.sync_all().map_err(io_err(&tmp))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn remove_if_exists(path: &Path) -> Result<(), PgError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The error for a program that exited with `status`: its last 8 lines of stderr, joined with ` | `.
fn failed_program(program: String, status: std::process::ExitStatus, stderr: &str) -> PgError {
    let mut tail: Vec<&str> = stderr.lines().rev().take(8).collect();
    tail.reverse();
    PgError::Command {
        program,
        message: format!("{status}: {}", tail.join(" | ")),
    }
}

/// True for the settings whose `pending_restart` the agent does not report: every recovery setting
/// (PostgreSQL's names, [`praetor_config::guc::RECOVERY_PARAMETERS`]) and `hot_standby`, which it
/// writes and removes itself on promotion and demotion. Patroni's `params_skip_changes`.
fn skips_pending_restart(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name == "hot_standby" || praetor_config::guc::RECOVERY_PARAMETERS.contains(&name.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_settings_and_hot_standby_are_never_pending_a_restart() {
        assert!(skips_pending_restart("recovery_target_timeline"));
        assert!(skips_pending_restart("primary_conninfo"));
        assert!(skips_pending_restart("Hot_Standby"));
        assert!(!skips_pending_restart("shared_buffers"));
    }

    fn instance_in(data_dir: &Path) -> Instance {
        let address = Address {
            host: "127.0.0.1".into(),
            port: 5432,
        };
        Instance::new(InstanceSettings {
            name: "pg1".into(),
            scope: "test".into(),
            bin_dir: "/usr/lib/postgresql/15/bin".into(),
            data_dir: data_dir.to_path_buf(),
            listen: address.clone(),
            connect_address: address,
            superuser: Credentials::default(),
            replication: Credentials::default(),
            rewind: None,
            pgpass: data_dir.join("pgpass"),
            parameters: Parameters::default(),
            pg_hba: None,
            basebackup_args: vec![],
            recovery_conf: Default::default(),
            use_unix_socket: false,
            replica_methods: vec![praetor_config::replica::ReplicaMethod::basebackup()],
            ctl_timeout: Duration::from_secs(5),
            pg_major: 15,
        })
    }

    /// A replica's replication connection carries TCP keepalives and a user timeout, so a
    /// walreceiver whose upstream lost the connection's state is not left waiting forever while it
    /// connects (nemesis seed 54); the keywords are libpq's, which every supported major accepts.
    #[test]
    fn the_replication_conninfo_detects_a_dead_upstream() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pg = instance_in(dir.path());
        let up = crate::ha::Upstream {
            member: "pg2".into(),
            host: "10.0.0.2".into(),
            port: 5433,
        };
        let conninfo = pg.primary_conninfo(&up, None);
        for kv in [
            "host=10.0.0.2",
            "port=5433",
            "keepalives=1",
            "keepalives_idle=5",
            "keepalives_interval=2",
            "keepalives_count=3",
            "tcp_user_timeout=15000",
        ] {
            assert!(
                conninfo.split(' ').any(|w| w == kv),
                "{kv} missing from {conninfo}"
            );
        }
    }

    /// The record names the timeline PostgreSQL will pick: one past the newest history file in
    /// `pg_wal` from the current timeline on, and reads back as written (absent: `None`).
    #[test]
    fn the_promotion_record_names_the_next_timeline_after_the_newest_history_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("pg_wal")).expect("pg_wal");
        let pg = instance_in(dir.path());
        assert_eq!(pg.promotion_record(), None);
        let r = pg.write_promotion_record("pg1", 2, 5000).expect("written");
        assert_eq!(r.timeline, 3);
        assert_eq!(pg.promotion_record(), Some(r));
        // Timeline 3's history file exists here (an earlier promotion's, or restored): PostgreSQL
        // skips to 4.
        std::fs::write(dir.path().join("pg_wal/00000003.history"), "2\t0/1388\tx\n")
            .expect("history");
        let r = pg.write_promotion_record("pg1", 2, 5000).expect("written");
        assert_eq!(r.timeline, 4);
        assert_eq!(pg.promotion_record().map(|p| p.timeline), Some(4));
    }

    fn postmaster_pid_file(pid: u32, data_dir: &Path, start_time: i64) -> String {
        format!(
            "{pid}\n{}\n{start_time}\n5432\n/tmp\n127.0.0.1\n  5432001  12345\nready   \n",
            data_dir.display()
        )
    }

    /// A postmaster stopped while it starts (the deadline guard stops PostgreSQL whatever the HA
    /// loop does) ends the start at once: the stop reaps the child, and the start must not wait
    /// `ctl_timeout` for a server that is gone while the agent holds the leader lock.
    #[tokio::test]
    async fn a_postmaster_stopped_during_start_up_ends_the_start_with_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let bin = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let pid_at = bin.path().join("child.pid");
        // A "postgres" that never gets ready: it writes its PID and sleeps.
        let script = bin.path().join("postgres");
        std::fs::write(
            &script,
            format!("#!/bin/sh\necho $$ > {}\nexec sleep 60\n", pid_at.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut pg = instance_in(data.path());
        pg.s.bin_dir = bin.path().to_path_buf();
        pg.s.ctl_timeout = Duration::from_secs(3600);
        let pg = std::sync::Arc::new(pg);
        let starting = {
            let pg = pg.clone();
            tokio::spawn(async move {
                pg.start(&DynamicConfig::default(), &StartRole::Primary)
                    .await
            })
        };
        // Another task kills it and looks at the data directory (which reaps the child).
        let pid = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_at)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                break pid;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        kill(Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        while pg.child.lock().await.is_some() {
            assert_eq!(pg.postmaster(), None);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let result = tokio::time::timeout(Duration::from_secs(60), starting)
            .await
            .expect("the start ended (before: it waited ctl_timeout, here an hour)")
            .unwrap();
        match result {
            Err(PgError::Command { message, .. }) => {
                assert!(message.contains("exited during start-up"), "{message}")
            }
            other => panic!("expected an exit during start-up, got {other:?}"),
        }
    }

    /// After a reboot or a crash, the PID in a stale postmaster.pid may belong to another process:
    /// the agent must neither take it for its postmaster nor signal it, whether or not its start
    /// time happens to match the file's.
    #[tokio::test]
    async fn a_reused_pid_is_not_our_postmaster_and_is_never_signalled() {
        let dir = tempfile::tempdir().unwrap();
        let mut sleep = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let pg = instance_in(dir.path());
        // (start time in the file, why the PID is not ours)
        for (start_time, case) in [
            (now, "same start time, another data directory"),
            (now - 3600, "start time an hour off"),
            (0, "no start time"),
        ] {
            std::fs::write(
                dir.path().join("postmaster.pid"),
                postmaster_pid_file(sleep.id(), dir.path(), start_time),
            )
            .unwrap();
            assert_eq!(pg.postmaster(), None, "{case}");
            pg.stop(StopMode::Immediate, None)
                .await
                .expect("nothing to stop");
            pg.stop(StopMode::Fast, None)
                .await
                .expect("nothing to stop");
            assert!(pg.reload().is_err(), "{case}: reload has nothing to signal");
            assert!(
                sleep.try_wait().unwrap().is_none(),
                "{case}: the process named by postmaster.pid was signalled"
            );
        }
        sleep.kill().unwrap();
        sleep.wait().unwrap();
    }

    #[test]
    fn rewind_role_gets_the_functions_pg_rewind_calls() {
        let grants = rewind_grants("rewind\"user");
        assert_eq!(grants.len(), 4);
        assert_eq!(
            grants[0],
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO \"rewind\"\"user\""
        );
        assert!(grants[3].contains("pg_read_binary_file(text, bigint, bigint, boolean)"));
    }

    #[test]
    fn role_sql_quotes() {
        assert_eq!(
            role_sql(
                "rep\"l",
                Some("it's"),
                &["REPLICATION".into(), "X; DROP".into()]
            ),
            "CREATE ROLE \"rep\"\"l\" WITH LOGIN REPLICATION PASSWORD 'it''s'"
        );
    }

    #[test]
    fn standby_cluster_recovery_settings() {
        let mut d = DynamicConfig::default();
        let member = Upstream {
            member: "pg2".into(),
            host: "10.0.0.2".into(),
            port: 5432,
        };
        assert!(standby_cluster_recovery(&d, Some(&member)).is_empty());
        d.standby_cluster = Some(praetor_config::StandbyCluster {
            host: Some("10.0.9.1".into()),
            port: Some(5433),
            restore_command: Some("cp /a/%f %p".into()),
            recovery_min_apply_delay: Some("5min".into()),
            ..Default::default()
        });
        // A member of the standby cluster: the archive, not the delay.
        let got = standby_cluster_recovery(&d, Some(&member));
        assert_eq!(
            got.get("restore_command").map(String::as_str),
            Some("cp /a/%f %p")
        );
        assert!(!got.contains_key("recovery_min_apply_delay"));
        // The remote, as decide names it or as observed from primary_conninfo (no member name).
        let observed = Upstream {
            member: String::new(),
            host: "10.0.9.1".into(),
            port: 5433,
        };
        assert!(is_remote_upstream(&d, &observed));
        assert!(!is_remote_upstream(&d, &member));
        let got = standby_cluster_recovery(&d, Some(&observed));
        assert_eq!(
            got.get("recovery_min_apply_delay").map(String::as_str),
            Some("5min")
        );
    }
}
