//! The dynamic (cluster-wide) configuration: the DCS `config` key.
//!
//! `bootstrap.dcs` in the YAML seeds it once, when the cluster is initialized; from then on the DCS copy
//! is the truth and every agent applies it each loop (Patroni: "dynamic configuration", reference
//! section 4). Field names and defaults are Patroni's.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::value::{lenient_bool, lenient_int, lenient_opt_int, Parameters};

/// Cluster-wide settings stored in the DCS `config` key (and seeded from `bootstrap.dcs`).
///
/// Times are in seconds, lags in bytes. Unknown keys are kept by the DCS layer as raw JSON; this struct
/// holds the ones Praetor acts on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DynamicConfig {
    /// Leader lock TTL in seconds (Patroni default 30). The lock expires when not renewed for this long.
    /// Accepted: [`TTL_MIN`] to [`TIMING_MAX`].
    #[serde(deserialize_with = "ttl_secs")]
    pub ttl: u32,
    /// Seconds between HA loop runs when nothing wakes the loop earlier (Patroni default 10).
    /// Accepted: 0 (read as 1) to [`TIMING_MAX`].
    #[serde(deserialize_with = "timing_secs")]
    pub loop_wait: u32,
    /// Seconds a DCS or PostgreSQL operation is retried before it counts as failed (Patroni default 10).
    /// Accepted: 0 (read as 1) to [`TIMING_MAX`].
    #[serde(deserialize_with = "timing_secs")]
    pub retry_timeout: u32,
    /// A replica lagging more than this many bytes behind the leader's last known position is not
    /// eligible for failover (Patroni default 1048576).
    #[serde(deserialize_with = "lenient_int")]
    pub maximum_lag_on_failover: u64,
    /// Seconds the lock holder waits for its PostgreSQL to start before giving up the lock; 0 means fail
    /// over at once (Patroni default 300; `master_start_timeout` is the old name).
    #[serde(alias = "master_start_timeout", deserialize_with = "lenient_int")]
    pub primary_start_timeout: u32,
    /// Seconds to wait for PostgreSQL to stop before it is killed; 0 means wait for ever (default 0).
    #[serde(alias = "master_stop_timeout", deserialize_with = "lenient_int")]
    pub primary_stop_timeout: u32,
    /// Synchronous replication mode: off, on, or quorum.
    pub synchronous_mode: SyncMode,
    /// With synchronous mode, block writes rather than fall back to asynchronous replication.
    #[serde(deserialize_with = "lenient_bool")]
    pub synchronous_mode_strict: bool,
    /// Number of synchronous standbys to keep (default 1).
    #[serde(deserialize_with = "lenient_int")]
    pub synchronous_node_count: u32,
    /// Keep the primary running while the DCS is down if every member confirms it (default false).
    #[serde(deserialize_with = "lenient_bool")]
    pub failsafe_mode: bool,
    /// Maintenance mode: no automatic start, stop, promote or failover (set by `ctl pause`).
    #[serde(deserialize_with = "lenient_bool")]
    pub pause: bool,
    /// Check that a failover candidate is on the leader's timeline (default false).
    #[serde(deserialize_with = "lenient_bool")]
    pub check_timeline: bool,
    /// Seconds a replication slot of a vanished member is kept (default 1800).
    #[serde(deserialize_with = "lenient_int")]
    pub member_slots_ttl: u32,
    /// Maximum bytes of lag of a synchronous standby before it is replaced (unset = no limit).
    #[serde(
        deserialize_with = "lenient_opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub maximum_lag_on_syncnode: Option<i64>,
    /// Permanent replication slots (`slots`): name → `{type: physical}` (or logical, with `database`
    /// and `plugin`). The leader keeps them; replicas keep copies advanced to the leader's position so
    /// they survive a failover. Only physical slots are managed by this version.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub slots: BTreeMap<String, SlotSpec>,
    /// Slots the agent never drops (`ignore_slots`): each entry matches on the fields it gives
    /// (`name`, `type`, `database`, `plugin`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignore_slots: Vec<BTreeMap<String, String>>,
    /// The `postgresql` section of the dynamic configuration.
    pub postgresql: DynamicPostgresql,
    /// `standby_cluster`: this cluster replicates from another one (Patroni's standby cluster). Its
    /// leader is a *standby leader*, never promoted while the section is in force (see
    /// [`StandbyCluster::is_active`]); removing the section promotes it.
    #[serde(
        deserialize_with = "standby_section",
        skip_serializing_if = "Option::is_none"
    )]
    pub standby_cluster: Option<StandbyCluster>,
}

impl DynamicConfig {
    /// The `standby_cluster` section when it makes this a standby cluster (Patroni's
    /// `global_config.is_standby_cluster`: a map with `host`, `port` or `restore_command` set).
    pub fn standby(&self) -> Option<&StandbyCluster> {
        self.standby_cluster.as_ref().filter(|s| s.is_active())
    }
}

/// The `standby_cluster` section (Patroni 4's keys): where the standby leader replicates from and
/// how. Every key is optional; Patroni treats the section as in force when `host`, `port` or
/// `restore_command` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct StandbyCluster {
    /// Host of the remote primary (or of any member of the remote cluster) to stream and clone from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Its port (default 5432 when only `host` is given).
    #[serde(
        deserialize_with = "lenient_opt_int",
        skip_serializing_if = "Option::is_none"
    )]
    pub port: Option<u16>,
    /// The physical replication slot on the remote to stream through (none by default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary_slot_name: Option<String>,
    /// `restore_command` of every member of the standby cluster (WAL from the remote's archive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_command: Option<String>,
    /// `archive_cleanup_command` of every member of the standby cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub archive_cleanup_command: Option<String>,
    /// `recovery_min_apply_delay` of the standby leader (PostgreSQL units: `5min`, or ms).
    #[serde(deserialize_with = "opt_text", skip_serializing_if = "Option::is_none")]
    pub recovery_min_apply_delay: Option<String>,
    /// How the standby leader's data directory is created, in order (names of
    /// `postgresql.<method>` sections, or `basebackup`, the default: pg_basebackup from the remote).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub create_replica_methods: Option<Vec<String>>,
}

impl StandbyCluster {
    /// True when the section is in force (Patroni: `host`, `port` or `restore_command` set).
    pub fn is_active(&self) -> bool {
        self.host.as_deref().is_some_and(|h| !h.is_empty())
            || self.port.is_some_and(|p| p != 0)
            || self
                .restore_command
                .as_deref()
                .is_some_and(|c| !c.is_empty())
    }

    /// The remote's host and port to stream from: `host` (default: none, so no streaming, only
    /// `restore_command`) and `port` (default 5432).
    pub fn remote(&self) -> Option<(String, u16)> {
        let host = self.host.as_deref().filter(|h| !h.is_empty())?;
        Some((
            host.to_string(),
            self.port.filter(|p| *p != 0).unwrap_or(5432),
        ))
    }
}

/// `standby_cluster`: absent, null or a map; every text value on one line (it ends up in
/// postgresql.conf or a libpq connection string).
fn standby_section<'de, D: Deserializer<'de>>(d: D) -> Result<Option<StandbyCluster>, D::Error> {
    let s: Option<StandbyCluster> = Option::deserialize(d)?;
    if let Some(s) = &s {
        for (key, v) in [
            ("host", &s.host),
            ("primary_slot_name", &s.primary_slot_name),
            ("restore_command", &s.restore_command),
            ("archive_cleanup_command", &s.archive_cleanup_command),
            ("recovery_min_apply_delay", &s.recovery_min_apply_delay),
        ] {
            if v.as_deref().is_some_and(|v| v.contains(['\n', '\r'])) {
                return Err(de::Error::custom(format!(
                    "{key}: a value with a line break is refused"
                )));
            }
        }
        if let Some(slot) = &s.primary_slot_name {
            let ok = !slot.is_empty()
                && slot.len() <= 63
                && slot
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(de::Error::custom(format!(
                    "primary_slot_name: {slot:?} is not a replication slot name \
                     (lower-case letters, digits and _, at most 63)"
                )));
            }
        }
    }
    Ok(s)
}

/// A text value that may be written as a number (`recovery_min_apply_delay: 300000`).
fn opt_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(de::Error::custom(format!(
                "expected a duration such as 5min or a number of ms, got {other}"
            )))
        }
    })
}

/// One permanent slot of `slots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct SlotSpec {
    /// `physical` (default) or `logical`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub slot_type: Option<String>,
    /// Logical slots: the database.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Logical slots: the output plugin.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
}

impl SlotSpec {
    /// True for a physical slot (the default type).
    pub fn is_physical(&self) -> bool {
        self.slot_type.as_deref().is_none_or(|t| t == "physical")
    }
}

/// True when the physical slot `name` matches an `ignore_slots` entry.
pub fn slot_is_ignored(ignore: &[BTreeMap<String, String>], name: &str) -> bool {
    ignore.iter().any(|m| {
        !m.is_empty()
            && m.iter().all(|(k, v)| match k.as_str() {
                "name" => v == name,
                "type" => v == "physical",
                _ => false,
            })
    })
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10,
            maximum_lag_on_failover: 1_048_576,
            primary_start_timeout: 300,
            primary_stop_timeout: 0,
            synchronous_mode: SyncMode::Off,
            synchronous_mode_strict: false,
            synchronous_node_count: 1,
            failsafe_mode: false,
            pause: false,
            check_timeline: false,
            member_slots_ttl: 1800,
            maximum_lag_on_syncnode: None,
            slots: BTreeMap::new(),
            ignore_slots: Vec::new(),
            postgresql: DynamicPostgresql::default(),
            standby_cluster: None,
        }
    }
}

impl DynamicConfig {
    /// Parses the DCS `config` key (JSON). Unknown keys are ignored here; callers keep the raw value.
    ///
    /// Errors name the field path (`postgresql.use_slots: invalid type ...`). Besides wrong types, it
    /// refuses what must never be applied: a ttl, loop_wait or retry_timeout out of range
    /// ([`TTL_MIN`], [`TIMING_MAX`]), and in `postgresql.parameters` recovery and promotion settings,
    /// invalid names and values with line breaks ([`crate::guc`]). Callers that apply the result
    /// (the agent, `PATCH`/`PUT /config`, `ctl edit-config`) therefore never see such a value.
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }

    /// Applies Patroni's timing rule `loop_wait + 2 * retry_timeout <= ttl` and the lower bounds
    /// (loop_wait >= 1, retry_timeout >= 1), adjusting values that break it the way Patroni does:
    /// keep ttl, shrink the others. Returns one warning per adjustment.
    ///
    /// Parsing has already refused a ttl below [`TTL_MIN`] (no loop_wait and retry_timeout satisfy
    /// the rule then) and any timing above [`TIMING_MAX`]; a value built in code with a smaller ttl
    /// gets ttl [`TTL_MIN`] and a warning. The sums are computed in u64, so nothing overflows.
    /// Patroni additionally refuses ttl < 20; Praetor allows short TTLs (its aim is an outage of
    /// ttl + 1 s with ttl as low as 5 s).
    pub fn adjust_timings(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.ttl < TTL_MIN {
            warnings.push(format!("ttl {} is too small, using {TTL_MIN}", self.ttl));
            self.ttl = TTL_MIN;
        }
        if self.loop_wait < 1 {
            warnings.push("loop_wait 0 is too small, using 1".to_string());
            self.loop_wait = 1;
        }
        if self.retry_timeout < 1 {
            warnings.push("retry_timeout 0 is too small, using 1".to_string());
            self.retry_timeout = 1;
        }
        if u64::from(self.loop_wait) + 2 * u64::from(self.retry_timeout) > u64::from(self.ttl) {
            // Patroni's fix: keep ttl, shrink the others. ttl >= 3 leaves retry_timeout >= 1 and
            // loop_wait = ttl - 2*retry_timeout >= 1.
            let old = (self.loop_wait, self.retry_timeout);
            self.retry_timeout = ((self.ttl - 1) / 3).max(1);
            self.loop_wait = (self.ttl - 2 * self.retry_timeout).clamp(1, old.0);
            warnings.push(format!(
                "loop_wait ({}) + 2*retry_timeout ({}) > ttl ({}): using loop_wait {} and retry_timeout {}",
                old.0, old.1, self.ttl, self.loop_wait, self.retry_timeout
            ));
        }
        warnings
    }
}

/// The smallest ttl accepted, in seconds: with loop_wait and retry_timeout at least 1 s, the rule
/// `loop_wait + 2*retry_timeout <= ttl` needs a ttl of 3.
pub const TTL_MIN: u32 = 3;

/// The largest ttl, loop_wait and retry_timeout accepted, in seconds (one day). Far beyond any useful
/// value, and small enough that no sum or product the agent computes from them (`loop_wait +
/// 2*retry_timeout`, `3*ttl`, milliseconds) can overflow.
pub const TIMING_MAX: u32 = 86_400;

/// `ttl`: a lenient integer from [`TTL_MIN`] to [`TIMING_MAX`] seconds.
fn ttl_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    secs_in_range(
        d,
        TTL_MIN,
        "below 3, no loop_wait and retry_timeout of at least 1 s satisfy loop_wait + 2*retry_timeout <= ttl",
    )
}

/// `loop_wait`, `retry_timeout`: a lenient integer from 0 (read as 1) to [`TIMING_MAX`] seconds.
fn timing_secs<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    secs_in_range(d, 0, "")
}

/// A lenient integer from `min` to [`TIMING_MAX`]; out of range, the error gives the range, and
/// `why_min` when the value is below `min`.
fn secs_in_range<'de, D: Deserializer<'de>>(
    d: D,
    min: u32,
    why_min: &str,
) -> Result<u32, D::Error> {
    let v: i128 = lenient_int(d)?;
    match u32::try_from(v) {
        Ok(secs) if (min..=TIMING_MAX).contains(&secs) => Ok(secs),
        _ => {
            let why = if v < i128::from(min) && !why_min.is_empty() {
                format!(" ({why_min})")
            } else {
                String::new()
            };
            Err(de::Error::custom(format!(
                "{v} is out of range: give {min} to {TIMING_MAX} seconds{why}"
            )))
        }
    }
}

/// `synchronous_mode`: `false`/`off`, `true`/`on`, or `quorum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncMode {
    /// Asynchronous replication (default).
    #[default]
    Off,
    /// Classic synchronous replication with `synchronous_node_count` named standbys.
    On,
    /// Quorum commit (`ANY n (...)`).
    Quorum,
}

impl Serialize for SyncMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SyncMode::Off => s.serialize_bool(false),
            SyncMode::On => s.serialize_bool(true),
            SyncMode::Quorum => s.serialize_str("quorum"),
        }
    }
}

impl<'de> Deserialize<'de> for SyncMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bool(bool),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bool(true) => Ok(SyncMode::On),
            Raw::Bool(false) => Ok(SyncMode::Off),
            Raw::Str(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "on" | "yes" | "1" => Ok(SyncMode::On),
                "false" | "off" | "no" | "0" | "" => Ok(SyncMode::Off),
                "quorum" => Ok(SyncMode::Quorum),
                other => Err(de::Error::custom(format!(
                    "expected true, false or quorum, got {other:?}"
                ))),
            },
        }
    }
}

/// The `postgresql` section of the dynamic configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DynamicPostgresql {
    /// Rewind a former primary with pg_rewind instead of re-cloning it (needs `wal_log_hints` or data
    /// checksums).
    #[serde(deserialize_with = "lenient_bool")]
    pub use_pg_rewind: bool,
    /// Give each replica a physical replication slot on the leader (Patroni default true).
    #[serde(deserialize_with = "lenient_bool")]
    pub use_slots: bool,
    /// PostgreSQL parameters applied on every member. Refused while parsing: invalid names, values
    /// with line breaks, recovery and promotion settings ([`crate::guc::checked_parameters`]).
    #[serde(deserialize_with = "crate::guc::checked_parameters")]
    pub parameters: Parameters,
    /// pg_hba.conf lines written on every member, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_hba: Option<Vec<String>>,
    /// Recovery settings every replica gets (`restore_command`, ...), under the local
    /// `postgresql.recovery_conf` ones (Patroni's `postgresql.recovery_conf`); checked by
    /// [`crate::guc::checked_recovery_conf`].
    #[serde(
        deserialize_with = "crate::guc::checked_recovery_conf",
        skip_serializing_if = "Parameters::is_empty"
    )]
    pub recovery_conf: Parameters,
}

impl Default for DynamicPostgresql {
    fn default() -> Self {
        DynamicPostgresql {
            use_pg_rewind: false,
            use_slots: true,
            parameters: Parameters::new(),
            pg_hba: None,
            recovery_conf: Parameters::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_patronis() {
        let d = DynamicConfig::from_json(&serde_json::json!({})).unwrap();
        assert_eq!((d.ttl, d.loop_wait, d.retry_timeout), (30, 10, 10));
        assert_eq!(d.maximum_lag_on_failover, 1_048_576);
        assert_eq!(d.primary_start_timeout, 300);
        assert!(d.postgresql.use_slots);
    }

    #[test]
    fn master_start_timeout_is_an_alias() {
        let d = DynamicConfig::from_json(&serde_json::json!({"master_start_timeout": 0})).unwrap();
        assert_eq!(d.primary_start_timeout, 0);
    }

    #[test]
    fn numbers_may_be_strings_but_not_words() {
        let d = DynamicConfig::from_json(&serde_json::json!({"ttl": "6"})).unwrap();
        assert_eq!(d.ttl, 6);
        let e = DynamicConfig::from_json(&serde_json::json!({"ttl": "six"})).unwrap_err();
        assert!(e.starts_with("ttl: "), "{e}");
    }

    #[test]
    fn sync_mode_accepts_bool_and_quorum() {
        for (v, want) in [
            (serde_json::json!(true), SyncMode::On),
            (serde_json::json!("off"), SyncMode::Off),
            (serde_json::json!("quorum"), SyncMode::Quorum),
        ] {
            let d =
                DynamicConfig::from_json(&serde_json::json!({ "synchronous_mode": v })).unwrap();
            assert_eq!(d.synchronous_mode, want);
        }
    }

    #[test]
    fn permanent_and_ignored_slots() {
        let d = DynamicConfig::from_json(&serde_json::json!({
            "slots": {"archiver": {"type": "physical"}, "cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"}},
            "ignore_slots": [{"name": "backup_tool"}, {"type": "logical"}]
        }))
        .unwrap();
        assert!(d.slots["archiver"].is_physical());
        assert!(!d.slots["cdc"].is_physical());
        assert!(slot_is_ignored(&d.ignore_slots, "backup_tool"));
        assert!(!slot_is_ignored(&d.ignore_slots, "other"));
    }

    #[test]
    fn timings_are_adjusted_to_patronis_rule() {
        let mut d = DynamicConfig {
            ttl: 6,
            loop_wait: 1,
            retry_timeout: 2,
            ..Default::default()
        };
        assert!(d.adjust_timings().is_empty());
        d.retry_timeout = 10;
        let w = d.adjust_timings();
        assert_eq!(w.len(), 1);
        assert!(d.loop_wait + 2 * d.retry_timeout <= d.ttl);
        assert!(d.loop_wait >= 1 && d.retry_timeout >= 1);
    }

    #[test]
    fn timing_arithmetic_cannot_overflow() {
        // 2147483648 fits a u32, but loop_wait + 2*retry_timeout did not.
        let e = DynamicConfig::from_json(&serde_json::json!({"retry_timeout": 2147483648u64}))
            .unwrap_err();
        assert_eq!(
            e,
            "retry_timeout: 2147483648 is out of range: give 0 to 86400 seconds"
        );
        let e =
            DynamicConfig::from_json(&serde_json::json!({"loop_wait": "4294967295"})).unwrap_err();
        assert!(
            e.starts_with("loop_wait: 4294967295 is out of range"),
            "{e}"
        );
        let e = DynamicConfig::from_json(&serde_json::json!({"ttl": 86401})).unwrap_err();
        assert_eq!(e, "ttl: 86401 is out of range: give 3 to 86400 seconds");
        let mut d = DynamicConfig::from_json(&serde_json::json!({
            "ttl": 86400, "loop_wait": 86400, "retry_timeout": 86400
        }))
        .unwrap();
        assert_eq!(d.adjust_timings().len(), 1);
        assert!(u64::from(d.loop_wait) + 2 * u64::from(d.retry_timeout) <= u64::from(d.ttl));
    }

    #[test]
    fn a_ttl_no_timing_can_satisfy_is_refused() {
        for ttl in [
            serde_json::json!(2),
            serde_json::json!(0),
            serde_json::json!("1"),
        ] {
            let e = DynamicConfig::from_json(&serde_json::json!({ "ttl": ttl })).unwrap_err();
            assert!(
                e.ends_with(
                    "is out of range: give 3 to 86400 seconds (below 3, no loop_wait and \
                     retry_timeout of at least 1 s satisfy loop_wait + 2*retry_timeout <= ttl)"
                ),
                "{e}"
            );
        }
        let mut d = DynamicConfig::from_json(&serde_json::json!({"ttl": 3})).unwrap();
        d.adjust_timings();
        assert_eq!((d.ttl, d.loop_wait, d.retry_timeout), (3, 1, 1));
    }

    #[test]
    fn negative_timings_are_refused_with_the_range() {
        for key in ["ttl", "loop_wait", "retry_timeout"] {
            let e = DynamicConfig::from_json(&serde_json::json!({ key: -1 })).unwrap_err();
            assert!(
                e.starts_with(&format!("{key}: -1 is out of range: give ")),
                "{e}"
            );
        }
        let e = DynamicConfig::from_json(&serde_json::json!({"member_slots_ttl": -5})).unwrap_err();
        assert_eq!(
            e,
            "member_slots_ttl: integer -5 out of range: give 0 to 4294967295"
        );
    }

    #[test]
    fn zero_loop_wait_and_retry_timeout_are_still_adjusted_as_patroni_does() {
        let mut d = DynamicConfig::from_json(&serde_json::json!({
            "ttl": 10, "loop_wait": 0, "retry_timeout": 0
        }))
        .unwrap();
        assert_eq!(d.adjust_timings().len(), 2);
        assert_eq!((d.loop_wait, d.retry_timeout), (1, 1));
    }

    #[test]
    fn recovery_settings_and_bad_parameters_are_refused_naming_the_key() {
        let cases = [
            (
                serde_json::json!({"promote_trigger_file": "/tmp/promote"}),
                "postgresql.parameters.promote_trigger_file: promote_trigger_file is managed by the agent",
            ),
            (
                serde_json::json!({"recovery_target_time": "2026-01-01"}),
                "postgresql.parameters.recovery_target_time: recovery_target_time is a recovery setting",
            ),
            (
                serde_json::json!({"hot_standby": "off"}),
                "postgresql.parameters.hot_standby: hot_standby is managed by the agent",
            ),
            (
                serde_json::json!({"work_mem\nrestore_command": "x"}),
                "postgresql.parameters: \"work_mem\\nrestore_command\" is not a valid parameter name",
            ),
            (
                serde_json::json!({"log_line_prefix": "%m\nrestore_command = 'x'"}),
                "postgresql.parameters.log_line_prefix: the value contains a line break",
            ),
        ];
        for (params, want) in cases {
            let e = DynamicConfig::from_json(
                &serde_json::json!({"postgresql": {"parameters": params}}),
            )
            .unwrap_err();
            assert!(e.starts_with(want), "{e}\nwanted: {want}");
        }
        let d = DynamicConfig::from_json(&serde_json::json!({"postgresql": {"parameters": {
            "hot_standby": "on", "auto_explain.log_min_duration": "1s"
        }}}))
        .unwrap();
        assert_eq!(d.postgresql.parameters.len(), 2);
    }
}
