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
    #[serde(deserialize_with = "lenient_int")]
    pub ttl: u32,
    /// Seconds between HA loop runs when nothing wakes the loop earlier (Patroni default 10).
    #[serde(deserialize_with = "lenient_int")]
    pub loop_wait: u32,
    /// Seconds a DCS or PostgreSQL operation is retried before it counts as failed (Patroni default 10).
    #[serde(deserialize_with = "lenient_int")]
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
        }
    }
}

impl DynamicConfig {
    /// Parses the DCS `config` key (JSON). Unknown keys are ignored here; callers keep the raw value.
    ///
    /// Errors name the field path (`postgresql.use_slots: invalid type ...`).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, String> {
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            format!("{path}: {}", e.into_inner())
        })
    }

    /// Applies Patroni's timing rule `loop_wait + 2 * retry_timeout <= ttl`, and the lower bounds
    /// (ttl >= 2, loop_wait >= 1, retry_timeout >= 1), adjusting values that break it. Returns one
    /// warning per adjustment. Patroni additionally refuses ttl < 20; Praetor allows short TTLs (its
    /// aim is an outage of ttl + 1 s with ttl as low as 5 s).
    pub fn adjust_timings(&mut self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.ttl < 2 {
            warnings.push(format!("ttl {} is too small, using 2", self.ttl));
            self.ttl = 2;
        }
        if self.loop_wait < 1 {
            warnings.push("loop_wait 0 is too small, using 1".to_string());
            self.loop_wait = 1;
        }
        if self.retry_timeout < 1 {
            warnings.push("retry_timeout 0 is too small, using 1".to_string());
            self.retry_timeout = 1;
        }
        if self.loop_wait + 2 * self.retry_timeout > self.ttl {
            // Patroni's fix: keep ttl, shrink the others.
            let old = (self.loop_wait, self.retry_timeout);
            self.retry_timeout = ((self.ttl - 1) / 3).max(1);
            self.loop_wait = (self.ttl - 2 * self.retry_timeout).clamp(1, old.0.max(1));
            warnings.push(format!(
                "loop_wait ({}) + 2*retry_timeout ({}) > ttl ({}): using loop_wait {} and retry_timeout {}",
                old.0, old.1, self.ttl, self.loop_wait, self.retry_timeout
            ));
        }
        warnings
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
    /// PostgreSQL parameters applied on every member.
    pub parameters: Parameters,
    /// pg_hba.conf lines written on every member, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pg_hba: Option<Vec<String>>,
}

impl Default for DynamicPostgresql {
    fn default() -> Self {
        DynamicPostgresql {
            use_pg_rewind: false,
            use_slots: true,
            parameters: Parameters::new(),
            pg_hba: None,
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
}
