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
//! Logical slots are never touched by this version.

use praetor_config::dynamic::slot_is_ignored;
use praetor_dcs::Cluster;

use super::{slot_name, Action, HaConfig, Running};

/// A slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Slot name.
    pub name: String,
    /// Physical (not logical).
    pub physical: bool,
    /// `restart_lsn` (bytes; 0 when unset).
    pub restart_lsn: u64,
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
        }
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
}
