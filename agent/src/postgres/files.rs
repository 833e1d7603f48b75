//! Pure parsers and renderers for the files and texts the agent exchanges with PostgreSQL.

use std::collections::BTreeMap;

use crate::ha::{ClusterState, ControlData};

use super::parse_lsn;

/// Parses `pg_controldata` output (run with `LC_ALL=C`) into the database system identifier and the
/// fields the HA core needs. Errors name the missing field.
pub fn parse_controldata(text: &str) -> Result<(String, ControlData), String> {
    let fields: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let get = |k: &str| {
        fields
            .get(k)
            .copied()
            .ok_or_else(|| format!("pg_controldata output lacks {k:?}"))
    };
    let sysid = get("Database system identifier")?.to_string();
    let state = match get("Database cluster state")? {
        "shut down" => ClusterState::ShutDown,
        "shut down in recovery" => ClusterState::ShutDownInRecovery,
        "in production" => ClusterState::InProduction,
        "in archive recovery" => ClusterState::InArchiveRecovery,
        "in crash recovery" => ClusterState::InCrashRecovery,
        "shutting down" => ClusterState::ShuttingDown,
        _ => ClusterState::Other,
    };
    let lsn = |k: &str| -> Result<u64, String> {
        let v = get(k)?;
        parse_lsn(v).ok_or_else(|| format!("pg_controldata {k:?}: bad LSN {v:?}"))
    };
    let timeline = get("Latest checkpoint's TimeLineID")?
        .parse()
        .map_err(|_| "pg_controldata: bad TimeLineID".to_string())?;
    Ok((
        sysid,
        ControlData {
            state,
            timeline,
            checkpoint_lsn: lsn("Latest checkpoint location")?,
            min_recovery_end_lsn: lsn("Minimum recovery ending location").unwrap_or(0),
            min_recovery_end_timeline: fields
                .get("Min recovery ending loc's timeline")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0),
            rewindable: fields
                .get("Data page checksum version")
                .is_some_and(|v| *v != "0")
                || fields
                    .get("wal_log_hints setting")
                    .is_some_and(|v| *v == "on"),
        },
    ))
}

/// The contents of `postmaster.pid` (PostgreSQL's `miscadmin.h`, LOCK_FILE_LINE_*).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostmasterPid {
    /// The postmaster's PID.
    pub pid: i32,
    /// Start time, seconds since the epoch.
    pub start_time: i64,
    /// Port.
    pub port: Option<u16>,
    /// Status line: `starting`, `stopping`, `ready`, `standby` (empty while writing).
    pub status: String,
}

/// Parses `postmaster.pid`. `None` when the file is empty or truncated (being written).
pub fn parse_postmaster_pid(text: &str) -> Option<PostmasterPid> {
    let lines: Vec<&str> = text.lines().collect();
    let pid = lines.first()?.trim().parse().ok()?;
    Some(PostmasterPid {
        pid,
        start_time: lines
            .get(2)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0),
        port: lines.get(3).and_then(|l| l.trim().parse().ok()),
        status: lines
            .get(7)
            .map(|l| l.trim().to_string())
            .unwrap_or_default(),
    })
}

/// One line of a timeline history file (`pg_wal/0000000N.history`): timeline `timeline` ended at
/// `lsn` (bytes) for `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryLine {
    /// The parent timeline.
    pub timeline: u32,
    /// Its switch point (bytes).
    pub lsn: u64,
    /// PostgreSQL's reason text.
    pub reason: String,
}

/// Parses a timeline history file: `1\t0/3000060\tno recovery target specified` per line, comments
/// and blank lines ignored.
pub fn parse_timeline_history(text: &str) -> Vec<HistoryLine> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut parts = l.splitn(3, '\t');
            let timeline = parts.next()?.trim().parse().ok()?;
            let lsn = parse_lsn(parts.next()?)?;
            let reason = parts.next().unwrap_or("").trim().to_string();
            Some(HistoryLine {
                timeline,
                lsn,
                reason,
            })
        })
        .collect()
}

/// Quotes a value for postgresql.conf: single quotes, `'` doubled.
pub fn quote_conf(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// Quotes a value for a libpq connection string: bare when safe, else single quotes with `\` and `'`
/// backslash-escaped (libpq's `conninfo` rules).
pub fn quote_conninfo(value: &str) -> String {
    if !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
    {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

/// Builds a libpq connection string from key/value pairs in order, skipping `None` values.
pub fn conninfo(pairs: &[(&str, Option<&str>)]) -> String {
    pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", quote_conninfo(v))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads `host` and `port` out of a libpq key=value connection string (as `SHOW primary_conninfo`
/// prints it). `None` when there is no host.
pub fn conninfo_host_port(conninfo: &str) -> Option<(String, u16)> {
    let mut host = None;
    let mut port = 5432u16;
    let mut chars = conninfo.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars
            .by_ref()
            .take_while(|c| *c != '=')
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                value.push(*c);
                chars.next();
            }
        }
        match key.as_str() {
            "host" | "hostaddr" if host.is_none() || key == "host" => host = Some(value),
            "port" => port = value.parse().ok()?,
            _ => {}
        }
    }
    host.filter(|h| !h.is_empty()).map(|h| (h, port))
}

/// Escapes one field of a .pgpass line (`:` and `\` are backslash-escaped).
fn pgpass_field(s: &str) -> String {
    s.replace('\\', "\\\\").replace(':', "\\:")
}

/// One .pgpass line: `host:port:database:user:password` (`*` wildcards allowed).
pub fn pgpass_line(host: &str, port: &str, db: &str, user: &str, password: &str) -> String {
    format!(
        "{}:{}:{}:{}:{}",
        pgpass_field(host),
        pgpass_field(port),
        pgpass_field(db),
        pgpass_field(user),
        pgpass_field(password)
    )
}

/// Parameters Patroni sets unless the dynamic configuration says otherwise (PostgreSQL 12+), plus one
/// of Praetor's: `wal_retrieve_retry_interval` 1 s (PostgreSQL's default is 5 s). A replica whose
/// primary died retries its connection only that often, even after the agent re-points it at the
/// new leader; under `synchronous_mode_strict` the new leader's commits wait for that reconnection,
/// so the default alone added ~5 s to every such failover (benches/scenarios.rs). Any value in the
/// configuration wins.
pub const DEFAULT_PARAMETERS: &[(&str, &str)] = &[
    ("wal_retrieve_retry_interval", "1s"),
    ("max_connections", "100"),
    ("max_locks_per_transaction", "64"),
    ("max_worker_processes", "8"),
    ("max_prepared_transactions", "0"),
    ("wal_level", "replica"),
    ("track_commit_timestamp", "off"),
    ("max_wal_senders", "10"),
    ("max_replication_slots", "10"),
    ("wal_keep_size", "128MB"),
    ("wal_log_hints", "on"),
    ("hot_standby", "on"),
];

/// Parameters that must be equal on every member, so they come only from the dynamic configuration
/// (reference/patroni.md section 4): a local value is ignored.
pub const CLUSTER_WIDE_PARAMETERS: &[&str] = &[
    "max_connections",
    "max_locks_per_transaction",
    "max_worker_processes",
    "max_prepared_transactions",
    "wal_level",
    "track_commit_timestamp",
    "max_wal_senders",
    "max_replication_slots",
    "wal_keep_size",
    "wal_keep_segments",
    "wal_log_hints",
];

/// Parameters the agent sets itself; user values are ignored.
pub const AGENT_PARAMETERS: &[&str] = &["listen_addresses", "port", "cluster_name", "hot_standby"];

/// Parameters passed on the postmaster's command line rather than in postgresql.conf (Patroni's
/// CMDLINE_OPTIONS): the restart-only cluster-wide ones and the agent's own. On the command line they
/// win over postgresql.auto.conf, so `ALTER SYSTEM` cannot make members disagree on them.
pub const CMDLINE_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "cluster_name",
    "hot_standby",
    "wal_level",
    "max_connections",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "track_commit_timestamp",
    "max_replication_slots",
    "max_worker_processes",
    "wal_log_hints",
];

/// Recovery parameters the agent writes for a replica; user values in `parameters` are ignored.
pub const RECOVERY_PARAMETERS: &[&str] = &[
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target_timeline",
];

/// Merges parameters: Patroni's defaults, then the dynamic configuration's, then the local ones
/// (except cluster-wide ones), then the agent's own (`listen_addresses`, `port`, `cluster_name`,
/// `hot_standby`). Returns the final set and the local keys that were ignored.
pub fn merge_parameters(
    dynamic: &praetor_config::Parameters,
    local: &praetor_config::Parameters,
    agent: &[(&str, String)],
) -> (BTreeMap<String, String>, Vec<String>) {
    let mut out: BTreeMap<String, String> = DEFAULT_PARAMETERS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut ignored = Vec::new();
    let skip = |k: &str| AGENT_PARAMETERS.contains(&k) || RECOVERY_PARAMETERS.contains(&k);
    for (k, v) in dynamic {
        if !skip(k) {
            out.insert(k.clone(), v.as_pg_text());
        }
    }
    for (k, v) in local {
        if skip(k) || CLUSTER_WIDE_PARAMETERS.contains(&k.as_str()) {
            ignored.push(k.clone());
        } else {
            out.insert(k.clone(), v.as_pg_text());
        }
    }
    for (k, v) in agent {
        out.insert(k.to_string(), v.clone());
    }
    (out, ignored)
}

/// Splits merged parameters into (postgresql.conf ones, command-line ones).
pub fn split_cmdline(
    params: BTreeMap<String, String>,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    params
        .into_iter()
        .partition(|(k, _)| !CMDLINE_PARAMETERS.contains(&k.as_str()))
}

/// True when PostgreSQL's `setting` (from pg_settings) and a configured value mean the same:
/// booleans in any spelling, integers by value, `wal_level`'s old names (`archive`, `hot_standby`
/// are `replica` since 9.6), otherwise case-insensitive text.
pub fn same_setting(name: &str, setting: &str, configured: &str) -> bool {
    fn norm(name: &str, v: &str) -> String {
        let v = v.trim().trim_matches('\'').to_ascii_lowercase();
        match v.as_str() {
            "on" | "true" | "yes" | "1" if name != "max_connections" => return "on".into(),
            "off" | "false" | "no" | "0" if !name.starts_with("max_") => return "off".into(),
            "archive" | "hot_standby" if name == "wal_level" => return "replica".into(),
            _ => {}
        }
        match v.parse::<i64>() {
            Ok(i) => i.to_string(),
            Err(_) => v,
        }
    }
    norm(name, setting) == norm(name, configured)
}

/// What a replica's recovery settings say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbySettings {
    /// libpq connection string to the upstream, or `None` to wait for a leader.
    pub primary_conninfo: Option<String>,
    /// Physical slot on the upstream.
    pub primary_slot_name: Option<String>,
    /// Extra recovery settings (`postgresql.recovery_conf`, local over dynamic): name → value.
    pub recovery_conf: BTreeMap<String, String>,
}

/// Renders postgresql.conf: a header, an include of the initdb-written `postgresql.base.conf`, every
/// parameter, and for a replica its recovery settings (`recovery_target_timeline = 'latest'` so a
/// promotion upstream is followed).
pub fn render_postgresql_conf(
    parameters: &BTreeMap<String, String>,
    standby: Option<&StandbySettings>,
) -> String {
    let mut out = String::from(
        "# Written by praetor. Do not edit: it is rewritten on every start and configuration change.\n\
         # Set parameters in the praetor YAML (postgresql.parameters) or the dynamic configuration.\n\
         include_if_exists 'postgresql.base.conf'\n\n",
    );
    for (k, v) in parameters {
        out.push_str(&format!("{k} = {}\n", quote_conf(v)));
    }
    if let Some(s) = standby {
        out.push_str("\n# recovery\nrecovery_target_timeline = 'latest'\n");
        if let Some(c) = &s.primary_conninfo {
            out.push_str(&format!("primary_conninfo = {}\n", quote_conf(c)));
        }
        if let Some(slot) = &s.primary_slot_name {
            out.push_str(&format!("primary_slot_name = {}\n", quote_conf(slot)));
        }
        for (k, v) in &s.recovery_conf {
            out.push_str(&format!("{k} = {}\n", quote_conf(v)));
        }
    }
    out
}

/// Whether `name` is a setting the agent owns and so removes from `postgresql.auto.conf` before each
/// start (Patroni does the same, `postgresql/config.py` sanitizing auto.conf): `primary_conninfo`,
/// `primary_slot_name`, `restore_command`, `recovery_target` and `recovery_target_*`. There, as
/// `pg_basebackup -R` or `ALTER SYSTEM` writes them, they would override the agent's postgresql.conf
/// (auto.conf is read last) and a replica would stream from a former leader forever.
pub fn owned_by_agent(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    matches!(
        n.as_str(),
        "primary_conninfo" | "primary_slot_name" | "restore_command" | "recovery_target"
    ) || n.starts_with("recovery_target_")
}

/// Removes the lines setting an [`owned_by_agent`] parameter from `postgresql.auto.conf` text (as
/// `ALTER SYSTEM` and `pg_basebackup -R` write it: `name = 'value'`, one per line; `name value` is
/// read too). Every other line, comments included, is kept byte for byte. Returns the new text and
/// the removed parameter names in file order; the text is unchanged when nothing was removed.
pub fn strip_owned_auto_conf(text: &str) -> (String, Vec<String>) {
    let mut kept = String::with_capacity(text.len());
    let mut removed = Vec::new();
    for line in text.split_inclusive('\n') {
        let body = line.trim_start();
        let name: String = body
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            .collect();
        let rest = body[name.len()..].trim_start();
        let is_setting = !name.is_empty() && (rest.starts_with('=') || rest.starts_with('\''));
        if is_setting && owned_by_agent(&name) {
            removed.push(name);
        } else {
            kept.push_str(line);
        }
    }
    (kept, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_conf_loses_only_the_agents_settings() {
        // What `pg_basebackup -R` (PostgreSQL 15) and ALTER SYSTEM leave behind.
        let text = "# Do not edit this file manually!\n\
                    # It will be overwritten by the ALTER SYSTEM command.\n\
                    work_mem = '8MB'\n\
                    primary_conninfo = 'user=replicator passfile=''/x'' host=127.0.0.1 port=5432'\n\
                    Primary_Slot_Name='pg2'\n\
                    recovery_target_timeline = 'latest'\n\
                    recovery_target 'immediate'\n\
                    restore_command = 'cp /a/%f %p'\n\
                    primary_conninfo_extra = 'not ours'\n\
                    log_line_prefix = '%m primary_conninfo = '\n\
                    \tshared_buffers = 64MB";
        let (kept, removed) = strip_owned_auto_conf(text);
        assert_eq!(
            removed,
            vec![
                "primary_conninfo",
                "Primary_Slot_Name",
                "recovery_target_timeline",
                "recovery_target",
                "restore_command"
            ]
        );
        assert_eq!(
            kept,
            "# Do not edit this file manually!\n\
             # It will be overwritten by the ALTER SYSTEM command.\n\
             work_mem = '8MB'\n\
             primary_conninfo_extra = 'not ours'\n\
             log_line_prefix = '%m primary_conninfo = '\n\
             \tshared_buffers = 64MB"
        );
        let clean = "# header\r\nwork_mem = '8MB'\r\n";
        assert_eq!(strip_owned_auto_conf(clean), (clean.to_string(), vec![]));
    }

    const CONTROLDATA: &str = "pg_control version number:            1300
Database system identifier:           7711591983046744147
Database cluster state:               shut down
Latest checkpoint location:           0/1500718
Latest checkpoint's REDO location:    0/1500718
Latest checkpoint's TimeLineID:       3
Minimum recovery ending location:     0/0
Min recovery ending loc's timeline:   2
wal_log_hints setting:                off
Data page checksum version:           1
";

    #[test]
    fn controldata_parses() {
        let (sysid, cd) = parse_controldata(CONTROLDATA).unwrap();
        assert_eq!(sysid, "7711591983046744147");
        assert_eq!(cd.state, ClusterState::ShutDown);
        assert_eq!(cd.timeline, 3);
        assert_eq!(cd.checkpoint_lsn, 0x1500718);
        assert_eq!(cd.min_recovery_end_timeline, 2);
        assert!(cd.rewindable, "data checksums are on");
        assert!(parse_controldata("garbage").is_err());
    }

    #[test]
    fn postmaster_pid_parses() {
        let text = "4242\n/data\n1700000000\n5432\n/tmp\n127.0.0.1\n  5432001  12345\nready   \n";
        let p = parse_postmaster_pid(text).unwrap();
        assert_eq!(p.pid, 4242);
        assert_eq!(p.port, Some(5432));
        assert_eq!(p.status, "ready");
        assert!(parse_postmaster_pid("").is_none());
    }

    #[test]
    fn timeline_history_parses() {
        let h = parse_timeline_history(
            "1\t0/3000060\tno recovery target specified\n\n2\t0/5000000\tafter switchover\n",
        );
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].timeline, 1);
        assert_eq!(h[0].lsn, 0x3000060);
        assert_eq!(h[1].reason, "after switchover");
    }

    #[test]
    fn conninfo_quotes_and_reads_back() {
        let c = conninfo(&[
            ("host", Some("127.0.0.1")),
            ("port", Some("5433")),
            ("user", Some("rep user")),
            ("password", Some("it's")),
            ("sslmode", None),
        ]);
        assert_eq!(
            c,
            r"host=127.0.0.1 port=5433 user='rep user' password='it\'s'"
        );
        assert_eq!(
            conninfo_host_port(&c),
            Some(("127.0.0.1".to_string(), 5433))
        );
        assert_eq!(conninfo_host_port(""), None);
        assert_eq!(
            conninfo_host_port("user=x host='h 1' port=6000 application_name=a"),
            Some(("h 1".to_string(), 6000))
        );
    }

    #[test]
    fn parameters_merge_in_patronis_precedence() {
        let dynamic: praetor_config::Parameters =
            serde_yaml::from_str("max_connections: 200\nwork_mem: 8MB\nport: 1\n").unwrap();
        let local: praetor_config::Parameters =
            serde_yaml::from_str("work_mem: 16MB\nmax_connections: 5\nshared_buffers: 64MB\n")
                .unwrap();
        let (p, ignored) = merge_parameters(&dynamic, &local, &[("port", "5433".into())]);
        assert_eq!(p["max_connections"], "200");
        assert_eq!(p["work_mem"], "16MB");
        assert_eq!(p["shared_buffers"], "64MB");
        assert_eq!(p["port"], "5433");
        assert_eq!(p["wal_level"], "replica");
        assert_eq!(ignored, vec!["max_connections".to_string()]);
    }

    #[test]
    fn postgresql_conf_renders_replica_settings() {
        let mut p = BTreeMap::new();
        p.insert("port".to_string(), "5433".to_string());
        p.insert("log_line_prefix".to_string(), "%m [%p] it's ".to_string());
        let conf = render_postgresql_conf(
            &p,
            Some(&StandbySettings {
                primary_conninfo: Some("host=h port=1".into()),
                primary_slot_name: Some("pg2".into()),
                recovery_conf: [("restore_command".to_string(), "cp /a/%f '%p'".to_string())]
                    .into(),
            }),
        );
        assert!(
            conf.contains("restore_command = 'cp /a/%f ''%p'''\n"),
            "{conf}"
        );
        assert!(conf.contains("port = '5433'\n"));
        assert!(conf.contains("log_line_prefix = '%m [%p] it''s '\n"));
        assert!(conf.contains("primary_slot_name = 'pg2'\n"));
        assert!(conf.contains("recovery_target_timeline = 'latest'\n"));
    }

    #[test]
    fn cmdline_parameters_are_split_out() {
        let mut p = BTreeMap::new();
        p.insert("max_connections".to_string(), "100".to_string());
        p.insert("work_mem".to_string(), "8MB".to_string());
        p.insert("port".to_string(), "5432".to_string());
        let (conf, cmdline) = split_cmdline(p);
        assert_eq!(conf.keys().collect::<Vec<_>>(), vec!["work_mem"]);
        assert_eq!(
            cmdline.keys().collect::<Vec<_>>(),
            vec!["max_connections", "port"]
        );
    }

    #[test]
    fn settings_compare_by_meaning() {
        assert!(same_setting("wal_log_hints", "on", "true"));
        assert!(same_setting("track_commit_timestamp", "off", "0"));
        assert!(same_setting("max_connections", "100", " 100 "));
        assert!(!same_setting("max_connections", "100", "200"));
        assert!(same_setting("wal_level", "replica", "hot_standby"));
        assert!(!same_setting("wal_level", "replica", "logical"));
    }

    #[test]
    fn pgpass_escapes() {
        assert_eq!(
            pgpass_line("h", "5432", "*", "u", "a:b\\c"),
            r"h:5432:*:u:a\:b\\c"
        );
    }
}
