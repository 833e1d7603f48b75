//! Physical replication slots: which ones a member keeps, creates, drops and advances.
//!
//! - The leader keeps a slot for every member streaming from it (`use_slots`), for members that
//!   vanished less than `member_slots_ttl` ago (they may come back), and for the permanent slots of
//!   the dynamic configuration (`slots`). Any other physical slot is dropped unless `ignore_slots`
//!   matches it: a forgotten slot retains WAL until the disk fills.
//! - A replica keeps the slots of the members cascading from it (`replicatefrom`) and copies of the
//!   permanent slots, advanced to the leader's position for them (`status.slots`) but never beyond its
//!   own replay position, so that the permanent slots exist, nearly current, on whichever member is
//!   promoted. Other physical slots on a replica are leftovers of its time as leader: dropped.
//!
//!
//! Permanent logical slots (`slots: {name: {type: logical, database, plugin}}`) follow Patroni's
//! rules where PostgreSQL 17+ can keep them itself ([`logical_slot_actions`]):
//! - the leader creates them (`failover => true` from 17 on) and publishes their
//!   `confirmed_flush_lsn` in `status.slots` ([`status_slots`], Patroni's format);
//! - on 17+ every member runs with `sync_replication_slots` and `hot_standby_feedback` on and
//!   `dbname` in `primary_conninfo` ([`failover_slot_parameters`]), so the standbys' slot
//!   synchronization worker keeps a copy of each failover slot at the position the consumer
//!   confirmed; the leader names its streaming failover candidates' physical slots in
//!   `synchronized_standby_slots`, so a consumer never receives a change those standbys lack;
//! - a replica drops logical slots with `failover` set that PostgreSQL did not synchronize (a former
//!   primary's own): PostgreSQL refuses to synchronize over them (Patroni's
//!   `_drop_incorrect_failover_synced_slots`).
//!
//! Before 17 PostgreSQL cannot synchronize logical slots, so Praetor does what Patroni does for
//! 11-16 (`SlotsHandler.copy_logical_slots` and `_ensure_logical_slots_replica`,
//! [`replica_logical_slot_actions`]):
//! - every member runs with `hot_standby_feedback` on ([`failover_slot_parameters`]): the leader
//!   then keeps the catalog rows the replicas' copies need to decode;
//! - a replica that may be promoted (not `nofailover`, not `nostream`, not in a standby cluster)
//!   and lacks a permanent logical slot the leader publishes in `status.slots` copies it: it reads
//!   the slot's state file from the leader (`pg_read_binary_file('pg_replslot/<name>/state')`),
//!   stops, writes it into its own `pg_replslot/<name>/`, and starts again, so PostgreSQL loads it;
//! - every cycle it advances its copy (`pg_replication_slot_advance`, in the slot's database) to
//!   the position the leader published, never beyond its own WAL (PostgreSQL also stops at what
//!   it replayed); a copy PostgreSQL can no longer advance (its WAL was removed, it was
//!   invalidated) is dropped and copied again;
//! - a copy whose database or plugin differs from the configuration is dropped (and copied again).
//!
//! After a failover the new leader's copy is at or before the position its consumer confirmed, so
//! the consumer reconnects with its own position and continues: nothing it confirmed is sent again.

use std::collections::BTreeMap;

use praetor_config::dynamic::{slot_is_ignored, SlotSpec};
use praetor_config::DynamicConfig;
use praetor_dcs::Cluster;

use super::{slot_name, upstream_of, Action, HaConfig, Running};

/// The first major version whose logical slots can be synchronized to standbys (`failover`,
/// `sync_replication_slots`: PostgreSQL 17 release notes).
pub const FAILOVER_SLOTS_MAJOR: u32 = 17;

/// A slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Slot {
    /// Slot name.
    pub name: String,
    /// Physical (not logical).
    pub physical: bool,
    /// `restart_lsn` (bytes; 0 when unset).
    pub restart_lsn: u64,
    /// Logical: its database (`database`).
    pub database: Option<String>,
    /// Logical: its output plugin (`plugin`).
    pub plugin: Option<String>,
    /// Logical: `confirmed_flush_lsn`, what its consumer confirmed (bytes; 0 when unset).
    pub confirmed_flush_lsn: u64,
    /// 17+: `failover`, synchronized to standbys.
    pub failover: bool,
    /// 17+: `synced`, a standby's copy kept by the slot synchronization worker.
    pub synced: bool,
    /// PostgreSQL invalidated it: it can no longer decode or stream (17+: `invalidation_reason`
    /// set; 16: `conflicting` or `wal_status = 'lost'`; 13-15: `wal_status = 'lost'`).
    pub invalidated: bool,
}

/// A logical slot to create, as [`Action::CreateLogicalSlots`] carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalSlot {
    /// Slot name.
    pub name: String,
    /// The database it decodes (the agent connects there to create it).
    pub database: String,
    /// The output plugin (`test_decoding`, `pgoutput`, `wal2json`...).
    pub plugin: String,
    /// Create it with `failover => true` (17+), so standbys synchronize it.
    pub failover: bool,
    /// A leader creating it: the position the cluster's `status` last published for it, when
    /// it did (bytes). The slot existed with a consumer confirmed there, and this member holds no
    /// copy (it was promoted without a usable one: a replica that rejoined, was rewound or
    /// cloned has none until PostgreSQL 17+'s slot synchronization or the pre-17 copy catches
    /// up), so the slot is made anew at this member's position and its consumer misses the
    /// changes in between; the agent warns. `None`: a first creation, or a replica's copy.
    pub lost_from: Option<u64>,
}

/// True when a logical slot matches an `ignore_slots` entry: every key the entry names (`name`,
/// `type`, `database`, `plugin`) equals the slot's (Patroni's `ignore_replication_slot`).
fn logical_slot_is_ignored(ignore: &[BTreeMap<String, String>], s: &Slot) -> bool {
    ignore.iter().any(|m| {
        !m.is_empty()
            && m.iter().all(|(k, v)| match k.as_str() {
                "name" => *v == s.name,
                "type" => v == "logical",
                "database" => s.database.as_deref() == Some(v.as_str()),
                "plugin" => s.plugin.as_deref() == Some(v.as_str()),
                _ => false,
            })
    })
}

/// A replica's copy of a permanent logical slot to advance, as [`Action::AdvanceLogicalSlots`]
/// carries it (before 17).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogicalAdvance {
    /// Slot name.
    pub name: String,
    /// Its database: `pg_replication_slot_advance` of a logical slot runs connected there.
    pub database: String,
    /// The position to advance to (bytes): the leader's published `confirmed_flush_lsn`, at most
    /// this replica's WAL position.
    pub lsn: u64,
}

/// The member a member named `name` streams from: its `replicatefrom` when that member exists and
/// runs, else the leader.
pub fn streams_from<'a>(view: &'a Cluster, name: &str, leader: &'a str) -> &'a str {
    let Some(m) = view.member(name) else {
        return leader;
    };
    match m.data.tags.replicatefrom.as_deref() {
        Some(from) if from != name => match view.member(from) {
            Some(up) if up.data.state == praetor_dcs::MemberState::Running => &up.name,
            _ => leader,
        },
        _ => leader,
    }
}

/// The permanent logical slots of the dynamic configuration that name a database and a plugin
/// (Patroni ignores the others, with an error in its log).
pub fn permanent_logical(dynamic: &DynamicConfig) -> impl Iterator<Item = (&String, &str, &str)> {
    dynamic.slots.iter().filter_map(|(n, s)| match s {
        SlotSpec {
            slot_type: Some(t),
            database: Some(db),
            plugin: Some(plugin),
        } if t == "logical" => Some((n, db.as_str(), plugin.as_str())),
        _ => None,
    })
}

/// Whether PostgreSQL `pg_major` keeps this configuration's permanent logical slots on the standbys
/// itself (17+, with `use_slots`, and at least one permanent logical slot).
pub fn uses_failover_slots(dynamic: &DynamicConfig, pg_major: u32) -> bool {
    pg_major >= FAILOVER_SLOTS_MAJOR
        && dynamic.postgresql.use_slots
        && permanent_logical(dynamic).next().is_some()
}

/// The settings PostgreSQL's slot synchronization needs on every member (a replica promoted later
/// leads, a leader demoted later follows), when [`uses_failover_slots`]: `sync_replication_slots`
/// and `hot_standby_feedback` on (PostgreSQL 17's "Replication Slot Synchronization"; Patroni too
/// turns `hot_standby_feedback` on for permanent logical slots). They win over the configured
/// values. The third requirement, `dbname` in `primary_conninfo`, is [`slot_sync_dbname`]; the
/// fourth, `wal_level = logical`, is the user's setting as with Patroni.
///
/// Before 17 (Patroni's copy-and-advance) only `hot_standby_feedback` is turned on, on every
/// member, whenever permanent logical slots exist (Patroni's `should_enforce_hot_standby_feedback`):
/// a replica's copy reports its `catalog_xmin` to the leader through its physical slot, so the
/// leader's vacuum keeps the catalog rows that copy needs to decode once promoted.
pub fn failover_slot_parameters(
    dynamic: &DynamicConfig,
    pg_major: u32,
) -> Vec<(&'static str, &'static str)> {
    if uses_failover_slots(dynamic, pg_major) {
        return vec![
            ("hot_standby_feedback", "on"),
            ("sync_replication_slots", "on"),
        ];
    }
    if dynamic.postgresql.use_slots && permanent_logical(dynamic).next().is_some() {
        return vec![("hot_standby_feedback", "on")];
    }
    vec![]
}

/// Whether this member keeps copies of the permanent logical slots by copy-and-advance: before
/// PostgreSQL 17, with `use_slots` and at least one permanent logical slot, and when it may lead
/// one day with a copy kept current: not `nofailover`, not `nostream` (no feedback reaches the
/// leader), not in a standby cluster (no logical slots there), as Patroni's
/// `_get_permanent_slots`.
pub fn copies_logical_slots(cfg: &HaConfig) -> bool {
    let d = &cfg.dynamic;
    cfg.pg_major < FAILOVER_SLOTS_MAJOR
        && d.postgresql.use_slots
        && !cfg.tags.nofailover
        && !cfg.tags.nostream
        && d.standby_cluster.is_none()
        && permanent_logical(d).next().is_some()
}

/// A replica's permanent logical slots before 17 ([`copies_logical_slots`]), with `leader` the
/// lock holder and `published` the leader's `status.slots`:
/// - a copy whose database or plugin differs from the configuration is dropped;
/// - a missing slot the leader publishes is copied from the leader (the leader publishes only the
///   slots it has: Patroni copies "only slots with feedback in the DCS");
/// - a copy behind the published position is advanced to it, but not beyond this replica's WAL
///   (`wal_position`).
///
/// Any other logical slot on such a replica is dropped unless `ignore_slots` matches it (Patroni's
/// `_drop_incorrect_slots`): a slot nobody advances, such as a former primary's own or a copy kept
/// by a member since tagged `nofailover`, would retain this replica's WAL and, through
/// `hot_standby_feedback`, hold back the leader's vacuum of catalog rows for good.
fn replica_logical_slot_actions(
    view: &Cluster,
    cfg: &HaConfig,
    r: &Running,
    leader: &str,
) -> Vec<Action> {
    let published = view.status.as_ref().and_then(|s| s.slots.as_ref());
    let copies = copies_logical_slots(cfg);
    let mut drop: Vec<String> = r
        .slots
        .iter()
        .filter(|s| !s.physical)
        .filter(|s| !copies || !permanent_logical(&cfg.dynamic).any(|(n, _, _)| *n == s.name))
        .filter(|s| !logical_slot_is_ignored(&cfg.dynamic.ignore_slots, s))
        .map(|s| s.name.clone())
        .collect();
    let mut copy = vec![];
    let mut advance = vec![];
    let permanent = permanent_logical(&cfg.dynamic).filter(|_| copies);
    for (name, database, plugin) in permanent {
        let lsn = published.and_then(|p| p.get(name)).copied();
        match r.slots.iter().find(|s| s.name == *name) {
            Some(s) if s.physical => {}
            Some(s)
                if s.database.as_deref() != Some(database)
                    || s.plugin.as_deref() != Some(plugin) =>
            {
                drop.push(name.clone())
            }
            Some(s) => {
                if let Some(lsn) = lsn {
                    let target = lsn.min(r.wal_position);
                    if s.confirmed_flush_lsn < target {
                        advance.push(LogicalAdvance {
                            name: name.clone(),
                            database: database.to_string(),
                            lsn: target,
                        });
                    }
                }
            }
            None if lsn.is_some() => copy.push(LogicalSlot {
                name: name.clone(),
                database: database.to_string(),
                plugin: plugin.to_string(),
                failover: false,
                lost_from: None,
            }),
            None => {}
        }
    }
    let mut actions = vec![];
    if !drop.is_empty() {
        actions.push(Action::DropSlots(drop));
    }
    if !advance.is_empty() {
        actions.push(Action::AdvanceLogicalSlots(advance));
    }
    if !copy.is_empty() {
        if let Some(from) = upstream_of(view, leader) {
            actions.push(Action::CopyLogicalSlots { from, slots: copy });
        }
    }
    actions
}

/// Whether a member running PostgreSQL `pg_major` under `dynamic` holds a usable copy of every
/// permanent logical slot, with `slots` its non-temporary slots (`pg_replication_slots ... WHERE NOT temporary`) and `is_primary` whether
/// it runs as primary. Published as `logical_slot_copies` (its `/patroni` answer and member key);
/// the leader race breaks a tie on WAL and priority with it ([`super::election::ranks_first_on_tie`]).
/// `None` when there is nothing to compare: `use_slots` off or no permanent logical slot.
///
/// A copy is usable when a failover to this member keeps the slot for its consumer:
/// - it is listed: PostgreSQL 17+'s slot synchronization keeps a copy `temporary` (left out
///   here) while it refuses to make it usable ("the remote slot needs ... catalog xmin ..., but
///   the standby has ...": the consumer has not yet confirmed past what this standby can decode);
/// - logical, of the configured database and plugin, with a confirmed position;
/// - not invalidated ([`Slot::invalidated`]);
/// - on 17+, on a standby, `synced` (a slot the synchronization worker keeps; a former primary's
///   own copy is not, and is dropped, [`logical_slot_actions`]). Before 17 a copy is Praetor's
///   copy-and-advance ([`copies_logical_slots`]), kept only with `hot_standby_feedback` on, which
///   the agent enforces ([`failover_slot_parameters`]).
///
/// A primary's own slots are the originals and count as usable.
pub fn holds_slot_copies(
    dynamic: &DynamicConfig,
    pg_major: u32,
    slots: &[Slot],
    is_primary: bool,
) -> Option<bool> {
    if !dynamic.postgresql.use_slots || permanent_logical(dynamic).next().is_none() {
        return None;
    }
    let need_synced = !is_primary && pg_major >= FAILOVER_SLOTS_MAJOR;
    Some(permanent_logical(dynamic).all(|(name, database, plugin)| {
        slots.iter().any(|s| {
            s.name == *name
                && !s.physical
                && s.database.as_deref() == Some(database)
                && s.plugin.as_deref() == Some(plugin)
                && s.confirmed_flush_lsn > 0
                && !s.invalidated
                && (s.synced || !need_synced)
        })
    }))
}

/// The least time between two attempts to copy logical slots from the leader (ms): a copy costs a
/// restart of the replica, and one that does not take (the leader lacks the slot, its state file
/// cannot be read) must not restart it in a loop. Patroni retries its copy at the HA loop's pace
/// but restarts only once; Praetor allows one attempt a minute, whatever its outcome.
pub const SLOT_COPY_PACE_MS: u64 = 60_000;

/// `actions` without [`Action::CopyLogicalSlots`] while the last copy attempt, begun at monotonic
/// `last_copy_ms` ([`super::LocalState::slot_copy_at_ms`]), is less than [`SLOT_COPY_PACE_MS`]
/// before `now_ms`; unchanged otherwise (and before the first attempt).
pub fn pace_copies(actions: Vec<Action>, last_copy_ms: Option<u64>, now_ms: u64) -> Vec<Action> {
    let due = last_copy_ms.is_none_or(|at| now_ms.saturating_sub(at) >= SLOT_COPY_PACE_MS);
    if due {
        return actions;
    }
    actions
        .into_iter()
        .filter(|a| !matches!(a, Action::CopyLogicalSlots { .. }))
        .collect()
}

/// The database a replica names in `primary_conninfo` for the slot synchronization worker (the
/// first permanent logical slot's), when [`uses_failover_slots`].
pub fn slot_sync_dbname(dynamic: &DynamicConfig, pg_major: u32) -> Option<&str> {
    if !uses_failover_slots(dynamic, pg_major) {
        return None;
    }
    permanent_logical(dynamic).next().map(|(_, db, _)| db)
}

/// What the leader publishes in `status.slots`: every permanent slot it has, logical ones at their
/// `confirmed_flush_lsn`, physical ones at their `restart_lsn` (bytes), as Patroni's
/// `process_permanent_slots` does; `None` when there is none (the key is left out).
pub fn status_slots(dynamic: &DynamicConfig, slots: &[Slot]) -> Option<BTreeMap<String, u64>> {
    let out: BTreeMap<String, u64> = slots
        .iter()
        .filter_map(|s| {
            let spec = dynamic.slots.get(&s.name)?;
            if spec.is_physical() != s.physical {
                return None;
            }
            let lsn = if s.physical {
                s.restart_lsn
            } else {
                s.confirmed_flush_lsn
            };
            Some((s.name.clone(), lsn))
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// The permanent logical slots' actions of this member (`leader` holds the lock):
/// - the leader, running as primary, creates the missing ones (`failover` on 17+) and drops one
///   whose database or plugin differs from the configuration so that it is created again next
///   loop (Patroni's `_drop_incorrect_slots`); on 17+ it sets `synchronized_standby_slots` to the
///   physical slots of the members streaming from it that may be promoted (`nofailover` unset), so
///   that logical consumers wait for those standbys: a change a consumer confirmed is then on
///   every standby that can take over;
/// - a replica on 17+ drops the logical slots marked `failover` but not `synced` (its own, from
///   its time as primary), which PostgreSQL would otherwise refuse to synchronize over;
/// - a replica before 17 copies and advances them ([`replica_logical_slot_actions`]).
pub fn logical_slot_actions(
    view: &Cluster,
    cfg: &HaConfig,
    r: &Running,
    leader: &str,
) -> Vec<Action> {
    let dynamic = &cfg.dynamic;
    if !dynamic.postgresql.use_slots {
        return vec![];
    }
    let failover = cfg.pg_major >= FAILOVER_SLOTS_MAJOR;
    let i_lead = leader == cfg.name;
    let logical: Vec<&Slot> = r.slots.iter().filter(|s| !s.physical).collect();
    let mut actions = vec![];
    if i_lead && r.is_primary {
        let mut create = vec![];
        let mut drop = vec![];
        for (name, database, plugin) in permanent_logical(dynamic) {
            match logical.iter().find(|s| s.name == *name) {
                None if !r.slots.iter().any(|s| s.name == *name) => create.push(LogicalSlot {
                    name: name.clone(),
                    database: database.to_string(),
                    plugin: plugin.to_string(),
                    failover,
                    lost_from: view
                        .status
                        .as_ref()
                        .and_then(|st| st.slots.as_ref()?.get(name.as_str()).copied()),
                }),
                Some(s)
                    if s.database.as_deref() != Some(database)
                        || s.plugin.as_deref() != Some(plugin) =>
                {
                    drop.push(name.clone())
                }
                _ => {}
            }
        }
        if !drop.is_empty() {
            actions.push(Action::DropSlots(drop));
        }
        if !create.is_empty() {
            actions.push(Action::CreateLogicalSlots(create));
        }
        if uses_failover_slots(dynamic, cfg.pg_major) {
            let mut names: Vec<String> = r
                .standbys
                .iter()
                .filter(|st| st.state == "streaming")
                .filter(|st| {
                    view.member(&st.name)
                        .is_some_and(|m| !m.data.tags.nofailover)
                })
                .map(|st| slot_name(&st.name))
                .filter(|n| r.slots.iter().any(|s| s.physical && s.name == *n))
                .collect();
            names.sort();
            names.dedup();
            actions.push(Action::SetSynchronizedStandbySlots(names.join(",")));
        }
    } else if !i_lead && !r.is_primary && !failover {
        actions.extend(replica_logical_slot_actions(view, cfg, r, leader));
    } else if !i_lead && !r.is_primary && failover {
        let drop: Vec<String> = logical
            .iter()
            .filter(|s| s.failover && !s.synced)
            .map(|s| s.name.clone())
            .collect();
        if !drop.is_empty() {
            actions.push(Action::DropSlots(drop));
        }
    }
    actions
}

fn permanent(cfg: &HaConfig) -> impl Iterator<Item = &String> {
    cfg.dynamic
        .slots
        .iter()
        .filter(|(_, s)| s.is_physical())
        .map(|(n, _)| n)
}

/// The slot actions of this member, with `leader` the lock holder (this member when it leads) and
/// `retained` the members that vanished less than `member_slots_ttl` ago.
pub fn slot_actions(
    view: &Cluster,
    cfg: &HaConfig,
    r: &Running,
    leader: &str,
    retained: &[String],
) -> Vec<Action> {
    if !cfg.dynamic.postgresql.use_slots {
        return vec![];
    }
    let me = cfg.name.as_str();
    let i_lead = leader == me;
    let mut keep: Vec<String> = view
        .members
        .iter()
        .filter(|m| m.name != me && !m.data.tags.nostream)
        .filter(|m| streams_from(view, &m.name, leader) == me)
        .map(|m| slot_name(&m.name))
        .collect();
    if i_lead {
        keep.extend(retained.iter().filter(|n| *n != me).map(|n| slot_name(n)));
    }
    keep.extend(permanent(cfg).cloned());
    keep.sort();
    keep.dedup();

    let existing: Vec<&super::slots::Slot> = r.slots.iter().filter(|s| s.physical).collect();
    let create: Vec<String> = keep
        .iter()
        .filter(|k| !existing.iter().any(|s| s.name == **k))
        .cloned()
        .collect();
    let drop: Vec<String> = existing
        .iter()
        .filter(|s| !keep.contains(&s.name))
        .filter(|s| !slot_is_ignored(&cfg.dynamic.ignore_slots, &s.name))
        .map(|s| s.name.clone())
        .collect();
    let mut actions = vec![];
    if !create.is_empty() {
        actions.push(Action::EnsureSlots(create));
    }
    if !drop.is_empty() {
        actions.push(Action::DropSlots(drop));
    }
    // A copy restarts PostgreSQL: it goes last, after every action that needs it running.
    let (copy, logical): (Vec<Action>, Vec<Action>) = logical_slot_actions(view, cfg, r, leader)
        .into_iter()
        .partition(|a| matches!(a, Action::CopyLogicalSlots { .. }));
    actions.extend(logical);
    if !i_lead {
        let positions = view.status.as_ref().and_then(|s| s.slots.as_ref());
        let advance: Vec<(String, u64)> = permanent(cfg)
            .filter_map(|name| {
                let target = (*positions?.get(name)?).min(r.wal_position);
                let current = existing
                    .iter()
                    .find(|s| s.name == *name)
                    .map(|s| s.restart_lsn)
                    .unwrap_or(0);
                (target > current).then(|| (name.clone(), target))
            })
            .collect();
        if !advance.is_empty() {
            actions.push(Action::AdvanceSlots(advance));
        }
    }
    actions.extend(copy);
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use praetor_dcs::{Leader, Member, MemberData, MemberState};

    fn cluster_of(names: &[&str], leader: Option<&str>) -> Cluster {
        Cluster {
            leader: leader.map(|l| Leader {
                name: l.into(),
                version: 1,
            }),
            members: names
                .iter()
                .map(|n| Member {
                    name: n.to_string(),
                    data: MemberData {
                        state: MemberState::Running,
                        ..Default::default()
                    },
                    version: 1,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn ha_config(name: &str) -> HaConfig {
        HaConfig {
            name: name.into(),
            tags: Default::default(),
            dynamic: Default::default(),
            remove_data_on_diverged: false,
            fence_timeout_ms: 1000,
            remove_data_on_rewind_failure: false,
            clone_without_leader: false,
            pg_major: 18,
        }
    }

    fn running_with_slots(wal_position: u64, slots: Vec<Slot>) -> Running {
        Running {
            is_primary: false,
            timeline: 1,
            wal_position,
            upstream: None,
            standbys: vec![],
            sync_standby_names: String::new(),
            slots,
        }
    }

    fn slot(name: &str, lsn: u64) -> Slot {
        Slot {
            name: name.into(),
            physical: true,
            restart_lsn: lsn,
            ..Default::default()
        }
    }

    fn logical(name: &str, db: &str, plugin: &str, confirmed: u64) -> Slot {
        Slot {
            name: name.into(),
            physical: false,
            restart_lsn: confirmed.saturating_sub(100),
            database: Some(db.into()),
            plugin: Some(plugin.into()),
            confirmed_flush_lsn: confirmed,
            failover: true,
            synced: false,
            invalidated: false,
        }
    }

    fn with_queue(mut cfg: HaConfig) -> HaConfig {
        cfg.dynamic.slots.insert(
            "queue".into(),
            SlotSpec {
                slot_type: Some("logical".into()),
                database: Some("app".into()),
                plugin: Some("test_decoding".into()),
            },
        );
        cfg
    }

    fn standby(name: &str, state: &str) -> super::super::sync::Standby {
        super::super::sync::Standby {
            name: name.into(),
            state: state.into(),
            sync_state: "async".into(),
            flush_lsn: 0,
        }
    }

    /// One row: the member's view of itself and the cluster, and the logical slot actions.
    struct Row {
        name: &'static str,
        pg_major: u32,
        leader: &'static str,
        is_primary: bool,
        slots: Vec<Slot>,
        standbys: Vec<super::super::sync::Standby>,
        nofailover: &'static [&'static str],
        want: Vec<Action>,
    }

    #[test]
    fn permanent_logical_slot_rules() {
        let queue_17 = LogicalSlot {
            name: "queue".into(),
            database: "app".into(),
            plugin: "test_decoding".into(),
            failover: true,
            lost_from: Some(800),
        };
        let rows = vec![
            Row {
                name:
                    "leader creates the missing slot with failover on 17+ and names no standby yet",
                pg_major: 18,
                leader: "me",
                is_primary: true,
                slots: vec![],
                standbys: vec![],
                nofailover: &[],
                want: vec![
                    Action::CreateLogicalSlots(vec![queue_17.clone()]),
                    Action::SetSynchronizedStandbySlots(String::new()),
                ],
            },
            Row {
                name: "leader on 15 creates it without failover and sets no standby slots",
                pg_major: 15,
                leader: "me",
                is_primary: true,
                slots: vec![],
                standbys: vec![],
                nofailover: &[],
                want: vec![Action::CreateLogicalSlots(vec![LogicalSlot {
                    failover: false,
                    ..queue_17.clone()
                }])],
            },
            Row {
                name: "leader waits for streaming failover candidates with a slot, not the others",
                pg_major: 18,
                leader: "me",
                is_primary: true,
                slots: vec![
                    logical("queue", "app", "test_decoding", 500),
                    slot("b", 10),
                    slot("c", 10),
                    slot("d", 10),
                ],
                standbys: vec![
                    standby("c", "streaming"),
                    standby("b", "streaming"),
                    standby("d", "streaming"),
                    standby("e", "streaming"),
                    standby("f", "catchup"),
                ],
                nofailover: &["d"],
                want: vec![Action::SetSynchronizedStandbySlots("b,c".into())],
            },
            Row {
                name: "leader drops a slot whose plugin differs from the configuration",
                pg_major: 18,
                leader: "me",
                is_primary: true,
                slots: vec![logical("queue", "app", "pgoutput", 500)],
                standbys: vec![],
                nofailover: &[],
                want: vec![
                    Action::DropSlots(vec!["queue".into()]),
                    Action::SetSynchronizedStandbySlots(String::new()),
                ],
            },
            Row {
                name: "leader still a standby (promotion under way) creates nothing",
                pg_major: 18,
                leader: "me",
                is_primary: false,
                slots: vec![],
                standbys: vec![],
                nofailover: &[],
                want: vec![],
            },
            Row {
                name: "replica on 17+ drops its own failover slot, keeps the synced copy",
                pg_major: 18,
                leader: "b",
                is_primary: false,
                slots: vec![
                    logical("queue", "app", "test_decoding", 500),
                    Slot {
                        synced: true,
                        ..logical("other", "app", "test_decoding", 400)
                    },
                ],
                standbys: vec![],
                nofailover: &[],
                want: vec![Action::DropSlots(vec!["queue".into()])],
            },
            Row {
                name: "replica on 15: a copy at the leader's published position stays",
                pg_major: 15,
                leader: "b",
                is_primary: false,
                slots: vec![logical("queue", "app", "test_decoding", 800)],
                standbys: vec![],
                nofailover: &[],
                want: vec![],
            },
        ];
        for row in rows {
            let mut view = cluster_of(&["me", "b", "c", "d", "e", "f"], Some(row.leader));
            view.status = Some(praetor_dcs::Status {
                optime: 1000,
                slots: Some([("queue".to_string(), 800u64)].into()),
                retain_slots: None,
            });
            for m in view.members.iter_mut() {
                m.data.tags.nofailover = row.nofailover.contains(&m.name.as_str());
            }
            let mut cfg = with_queue(ha_config("me"));
            cfg.pg_major = row.pg_major;
            let mut r = running_with_slots(1000, row.slots);
            r.is_primary = row.is_primary;
            r.standbys = row.standbys;
            assert_eq!(
                logical_slot_actions(&view, &cfg, &r, row.leader),
                row.want,
                "{}",
                row.name
            );
        }
    }

    /// The leader `b` (conn_url 127.0.0.1:5433) published `queue` at `published`; this replica
    /// (`me`, PostgreSQL `pg_major`) has replayed up to `wal`.
    fn copy_view(published: Option<u64>) -> Cluster {
        let mut view = cluster_of(&["me", "b"], Some("b"));
        view.members[1].data.conn_url = Some("postgres://127.0.0.1:5433/postgres".into());
        view.status = Some(praetor_dcs::Status {
            optime: 9000,
            slots: published.map(|p| [("queue".to_string(), p)].into()),
            retain_slots: None,
        });
        view
    }

    fn queue_15() -> LogicalSlot {
        LogicalSlot {
            name: "queue".into(),
            database: "app".into(),
            plugin: "test_decoding".into(),
            failover: false,
            lost_from: None,
        }
    }

    fn from_b() -> crate::ha::Upstream {
        crate::ha::Upstream {
            member: "b".into(),
            host: "127.0.0.1".into(),
            port: 5433,
        }
    }

    fn advance(lsn: u64) -> Action {
        Action::AdvanceLogicalSlots(vec![LogicalAdvance {
            name: "queue".into(),
            database: "app".into(),
            lsn,
        }])
    }

    /// Patroni's copy-and-advance before 17 (`_ensure_logical_slots_replica`,
    /// `copy_logical_slots`): one row per rule, on a replica `me` following the leader `b`.
    #[test]
    fn replica_before_17_copies_and_advances_permanent_logical_slots() {
        struct Row {
            name: &'static str,
            pg_major: u32,
            published: Option<u64>,
            wal: u64,
            slots: Vec<Slot>,
            cfg: fn(&mut HaConfig),
            want: Vec<Action>,
        }
        let local = |mut s: Slot| {
            s.failover = false;
            s
        };
        let rows = vec![
            Row {
                name: "a missing slot the leader publishes is copied from the leader",
                pg_major: 15,
                published: Some(5000),
                wal: 6000,
                slots: vec![],
                cfg: |_| {},
                want: vec![Action::CopyLogicalSlots {
                    from: from_b(),
                    slots: vec![queue_15()],
                }],
            },
            Row {
                name: "16 copies too",
                pg_major: 16,
                published: Some(5000),
                wal: 6000,
                slots: vec![],
                cfg: |_| {},
                want: vec![Action::CopyLogicalSlots {
                    from: from_b(),
                    slots: vec![queue_15()],
                }],
            },
            Row {
                name: "a slot the leader does not publish (yet) is not copied",
                pg_major: 15,
                published: None,
                wal: 6000,
                slots: vec![],
                cfg: |_| {},
                want: vec![],
            },
            Row {
                name: "a copy behind the published position is advanced to it",
                pg_major: 15,
                published: Some(5000),
                wal: 6000,
                slots: vec![local(logical("queue", "app", "test_decoding", 4000))],
                cfg: |_| {},
                want: vec![advance(5000)],
            },
            Row {
                name: "... but never beyond this replica's WAL",
                pg_major: 15,
                published: Some(5000),
                wal: 4500,
                slots: vec![local(logical("queue", "app", "test_decoding", 4000))],
                cfg: |_| {},
                want: vec![advance(4500)],
            },
            Row {
                name: "a copy at or past the published position is left (it never moves back)",
                pg_major: 15,
                published: Some(5000),
                wal: 6000,
                slots: vec![local(logical("queue", "app", "test_decoding", 5200))],
                cfg: |_| {},
                want: vec![],
            },
            Row {
                name: "a copy with another plugin is dropped (and copied next cycle)",
                pg_major: 15,
                published: Some(5000),
                wal: 6000,
                slots: vec![local(logical("queue", "app", "pgoutput", 4000))],
                cfg: |_| {},
                want: vec![Action::DropSlots(vec!["queue".into()])],
            },
            Row {
                name: "a physical slot of that name is not touched here",
                pg_major: 15,
                published: Some(5000),
                wal: 6000,
                slots: vec![slot("queue", 10)],
                cfg: |_| {},
                want: vec![],
            },
            Row {
                name: "nofailover: no copy (it never leads)",
                pg_major: 15,
                published: Some(5000),
                wal: 6000,
                slots: vec![],
                cfg: |c| c.tags.nofailover = true,
                want: vec![],
            },
            Row {
                name: "nostream: no copy (no feedback reaches the leader)",
                pg_major: 15,
                published: Some(5000),
                wal: 6000,
                slots: vec![],
                cfg: |c| c.tags.nostream = true,
                want: vec![],
            },
            Row {
                name: "nofailover: a copy kept from before is dropped (nobody advances it)",
                pg_major: 15,
                published: Some(5000),
                wal: 6000,
                slots: vec![local(logical("queue", "app", "test_decoding", 4000))],
                cfg: |c| c.tags.nofailover = true,
                want: vec![Action::DropSlots(vec!["queue".into()])],
            },
            Row {
                name: "a logical slot not in the configuration is dropped, an ignored one kept",
                pg_major: 15,
                published: Some(5000),
                wal: 6000,
                slots: vec![
                    local(logical("old_own", "app", "test_decoding", 4000)),
                    local(logical("debezium", "app", "pgoutput", 4000)),
                    local(logical("queue", "app", "test_decoding", 5000)),
                ],
                cfg: |c| {
                    c.dynamic.ignore_slots.push(
                        [
                            ("type".to_string(), "logical".to_string()),
                            ("plugin".to_string(), "pgoutput".to_string()),
                        ]
                        .into(),
                    )
                },
                want: vec![Action::DropSlots(vec!["old_own".into()])],
            },
            Row {
                name: "17+: no copy, PostgreSQL synchronizes failover slots",
                pg_major: 17,
                published: Some(5000),
                wal: 6000,
                slots: vec![],
                cfg: |_| {},
                want: vec![],
            },
        ];
        for row in rows {
            let view = copy_view(row.published);
            let mut cfg = with_queue(ha_config("me"));
            cfg.pg_major = row.pg_major;
            (row.cfg)(&mut cfg);
            let r = running_with_slots(row.wal, row.slots);
            assert_eq!(
                logical_slot_actions(&view, &cfg, &r, "b"),
                row.want,
                "{}",
                row.name
            );
        }
    }

    #[test]
    fn the_copy_goes_after_every_action_that_needs_postgres_running() {
        let view = copy_view(Some(5000));
        let mut cfg = with_queue(ha_config("me"));
        cfg.pg_major = 15;
        cfg.dynamic
            .slots
            .insert("archiver".into(), Default::default());
        let mut view = view;
        view.status.as_mut().unwrap().slots = Some(
            [
                ("queue".to_string(), 5000u64),
                ("archiver".to_string(), 4000),
            ]
            .into(),
        );
        let r = running_with_slots(6000, vec![slot("archiver", 1000)]);
        assert_eq!(
            slot_actions(&view, &cfg, &r, "b", &[]),
            vec![
                Action::AdvanceSlots(vec![("archiver".into(), 4000)]),
                Action::CopyLogicalSlots {
                    from: from_b(),
                    slots: vec![queue_15()],
                },
            ]
        );
    }

    #[test]
    fn a_leader_creating_a_slot_the_cluster_published_says_where_its_consumer_was() {
        let cfg = with_queue(ha_config("me"));
        let mut r = running_with_slots(1000, vec![]);
        r.is_primary = true;
        let created = |view: &Cluster| {
            logical_slot_actions(view, &cfg, &r, "me")
                .into_iter()
                .find_map(|a| match a {
                    Action::CreateLogicalSlots(v) => Some(v),
                    _ => None,
                })
                .expect("the leader creates the missing slot")
        };
        // A previous leader published it at 800: made anew here, its consumer misses 800..here.
        let mut view = cluster_of(&["me", "b"], Some("me"));
        view.status = Some(praetor_dcs::Status {
            optime: 1000,
            slots: Some([("queue".to_string(), 800u64)].into()),
            retain_slots: None,
        });
        assert_eq!(created(&view)[0].lost_from, Some(800));
        // Never published (a first creation): nothing lost.
        view.status.as_mut().unwrap().slots = None;
        assert_eq!(created(&view)[0].lost_from, None);
        view.status = None;
        assert_eq!(created(&view)[0].lost_from, None);
    }

    #[test]
    fn logical_slots_need_use_slots() {
        let view = cluster_of(&["me"], Some("me"));
        let mut cfg = with_queue(ha_config("me"));
        cfg.dynamic.postgresql.use_slots = false;
        let mut r = running_with_slots(1000, vec![]);
        r.is_primary = true;
        assert_eq!(logical_slot_actions(&view, &cfg, &r, "me"), vec![]);
        assert!(failover_slot_parameters(&cfg.dynamic, 18).is_empty());
    }

    #[test]
    fn slot_settings_only_with_a_logical_slot_sync_only_on_17_and_later() {
        let plain = ha_config("me").dynamic;
        let queue = with_queue(ha_config("me")).dynamic;
        assert!(failover_slot_parameters(&plain, 18).is_empty());
        // Before 17: hot_standby_feedback only (Patroni's should_enforce_hot_standby_feedback).
        assert_eq!(
            failover_slot_parameters(&queue, 16),
            vec![("hot_standby_feedback", "on")]
        );
        assert!(failover_slot_parameters(&plain, 15).is_empty());
        assert_eq!(
            failover_slot_parameters(&queue, 17),
            vec![
                ("hot_standby_feedback", "on"),
                ("sync_replication_slots", "on")
            ]
        );
        assert_eq!(slot_sync_dbname(&queue, 18), Some("app"));
        assert_eq!(slot_sync_dbname(&queue, 15), None);
        assert_eq!(slot_sync_dbname(&plain, 18), None);
    }

    #[test]
    fn status_publishes_permanent_slots_in_patronis_format() {
        let mut dynamic = with_queue(ha_config("me")).dynamic;
        dynamic.slots.insert("archiver".into(), Default::default());
        let slots = vec![
            logical("queue", "app", "test_decoding", 5000),
            slot("archiver", 4000),
            slot("pg2", 3000),
            logical("not_permanent", "app", "test_decoding", 1),
        ];
        assert_eq!(
            status_slots(&dynamic, &slots),
            Some([("archiver".to_string(), 4000), ("queue".to_string(), 5000)].into())
        );
        assert_eq!(status_slots(&dynamic, &[slot("pg2", 1)]), None);
        // Patroni's /status value: {"optime": ..., "slots": {"queue": 5000}}.
        let json = serde_json::to_value(praetor_dcs::Status {
            optime: 6000,
            slots: status_slots(&dynamic, &slots[..1]),
            retain_slots: None,
        })
        .expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({"optime": 6000, "slots": {"queue": 5000}})
        );
    }

    #[test]
    fn leader_creates_missing_drops_unknown_keeps_ignored_and_retained() {
        let view = cluster_of(&["me", "b", "c"], Some("me"));
        let mut cfg = ha_config("me");
        cfg.dynamic
            .slots
            .insert("archiver".into(), Default::default());
        cfg.dynamic
            .ignore_slots
            .push([("name".to_string(), "backup".to_string())].into());
        let r = running_with_slots(
            1000,
            vec![
                slot("b", 10),
                slot("stale", 5),
                slot("backup", 5),
                slot("gone", 1),
            ],
        );
        let actions = slot_actions(&view, &cfg, &r, "me", &["gone".into()]);
        assert_eq!(
            actions,
            vec![
                Action::EnsureSlots(vec!["archiver".into(), "c".into()]),
                Action::DropSlots(vec!["stale".into()]),
            ]
        );
    }

    #[test]
    fn replica_copies_and_advances_permanent_slots_but_not_past_its_replay() {
        let mut view = cluster_of(&["me", "b"], Some("b"));
        view.status = Some(praetor_dcs::Status {
            optime: 5000,
            slots: Some([("archiver".to_string(), 4000u64)].into()),
            retain_slots: None,
        });
        let mut cfg = ha_config("me");
        cfg.dynamic
            .slots
            .insert("archiver".into(), Default::default());
        let r = running_with_slots(
            3000,
            vec![slot("archiver", 1000), slot("old_leader_slot", 7)],
        );
        assert_eq!(
            slot_actions(&view, &cfg, &r, "b", &[]),
            vec![
                Action::DropSlots(vec!["old_leader_slot".into()]),
                Action::AdvanceSlots(vec![("archiver".into(), 3000)]),
            ]
        );
    }

    /// What a member publishes as `logical_slot_copies` (issue 14): a usable copy of every
    /// permanent logical slot, by PostgreSQL 17+'s rules on 17+ and the copy-and-advance's before.
    #[test]
    fn a_usable_copy_is_listed_logical_matching_confirmed_not_invalidated_and_synced_on_17() {
        let synced = |s: Slot| Slot { synced: true, ..s };
        let queue = logical("queue", "app", "test_decoding", 500);
        // (name, pg major, primary, slots, expected)
        let cases = [
            (
                "18 standby, synced copy",
                18,
                false,
                vec![synced(queue.clone())],
                Some(true),
            ),
            (
                "18 standby, no copy (temporary ones are not listed)",
                18,
                false,
                vec![],
                Some(false),
            ),
            (
                "18 standby, a former primary's own slot, not synced",
                18,
                false,
                vec![queue.clone()],
                Some(false),
            ),
            (
                "18 standby, synced but invalidated",
                18,
                false,
                vec![Slot {
                    invalidated: true,
                    ..synced(queue.clone())
                }],
                Some(false),
            ),
            (
                "18 standby, synced but another plugin",
                18,
                false,
                vec![synced(logical("queue", "app", "pgoutput", 500))],
                Some(false),
            ),
            (
                "18 standby, a physical slot of that name",
                18,
                false,
                vec![slot("queue", 500)],
                Some(false),
            ),
            (
                "18 primary, its own slot",
                18,
                true,
                vec![queue.clone()],
                Some(true),
            ),
            (
                "15 standby, a copy (never synced before 17)",
                15,
                false,
                vec![Slot {
                    failover: false,
                    ..queue.clone()
                }],
                Some(true),
            ),
            (
                "15 standby, a copy with no confirmed position",
                15,
                false,
                vec![logical("queue", "app", "test_decoding", 0)],
                Some(false),
            ),
            (
                "15 standby, an invalidated copy (wal_status lost)",
                15,
                false,
                vec![Slot {
                    invalidated: true,
                    ..queue.clone()
                }],
                Some(false),
            ),
        ];
        for (name, major, primary, slots, want) in cases {
            let cfg = with_queue(ha_config("me"));
            assert_eq!(
                holds_slot_copies(&cfg.dynamic, major, &slots, primary),
                want,
                "{name}"
            );
        }
        // Every permanent logical slot must have its copy.
        let mut cfg = with_queue(ha_config("me"));
        cfg.dynamic.slots.insert(
            "audit".into(),
            SlotSpec {
                slot_type: Some("logical".into()),
                database: Some("app".into()),
                plugin: Some("test_decoding".into()),
            },
        );
        assert_eq!(
            holds_slot_copies(&cfg.dynamic, 18, &[synced(queue.clone())], false),
            Some(false)
        );
        // Nothing to compare: no permanent logical slot (a physical one does not count), or
        // `use_slots` off.
        let mut cfg = ha_config("me");
        assert_eq!(holds_slot_copies(&cfg.dynamic, 18, &[], false), None);
        cfg.dynamic
            .slots
            .insert("archiver".into(), Default::default());
        assert_eq!(holds_slot_copies(&cfg.dynamic, 18, &[], false), None);
        let mut cfg = with_queue(ha_config("me"));
        cfg.dynamic.postgresql.use_slots = false;
        assert_eq!(
            holds_slot_copies(&cfg.dynamic, 18, &[synced(queue)], false),
            None
        );
    }
}
