//! Can a stopped node start as a replica of the leader as it is, or must it be rewound first?
//!
//! A former primary whose timeline ended after the point where the leader's timeline forked off holds
//! WAL the leader never saw: started as a replica it would not stream ("requested timeline is not a
//! child of this server's history"). pg_rewind repairs that; without it the node must stay stopped
//! (never delete data to "fix" state). The rule compares pg_controldata's last checkpoint with the
//! switch point recorded in the DCS `history` (Patroni does the same with the leader's timeline
//! history file).

use praetor_dcs::HistoryEntry;

use super::ControlData;

/// What a stopped node must do before it can follow the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RejoinPlan {
    /// Start as a replica as it is.
    StartAsReplica,
    /// A former primary did not shut down cleanly: run crash recovery to learn where its WAL ends.
    CrashRecoveryFirst,
    /// Run pg_rewind from the leader (diverged, or unknown and pg_rewind will tell).
    Rewind,
    /// Diverged and pg_rewind is off: stay stopped.
    Diverged {
        /// Local last checkpoint (bytes).
        local_lsn: u64,
        /// Where the leader's history says our timeline ended (bytes).
        switch_lsn: u64,
        /// Our timeline.
        timeline: u32,
    },
    /// The leader's `history` does not cover our timeline yet (it is written right after promotion).
    WaitForHistory,
    /// Rewind would be needed (or cannot be ruled out) and `use_pg_rewind` is set, but the data
    /// directory has neither data checksums nor wal_log_hints.
    NotRewindable {
        /// Our timeline.
        timeline: u32,
    },
}

/// Plans the rejoin of a stopped node with pg_controldata `control` to a leader on `leader_timeline`
/// whose DCS `history` is `history`.
pub fn rejoin_plan(
    control: Option<&ControlData>,
    leader_timeline: Option<u32>,
    history: &[HistoryEntry],
    use_pg_rewind: bool,
) -> RejoinPlan {
    match plan(control, leader_timeline, history, use_pg_rewind) {
        RejoinPlan::Rewind if control.is_some_and(|c| !c.rewindable) => RejoinPlan::NotRewindable {
            timeline: control.map(|c| c.timeline).unwrap_or_default(),
        },
        other => other,
    }
}

/// How far a stopped data directory's WAL goes on its checkpoint's timeline, as pg_controldata
/// tells: its last checkpoint, or for a replica the minimum recovery ending location when that is
/// later (how far it replayed) and on the same timeline.
fn replayed(cd: &ControlData) -> u64 {
    if cd.min_recovery_end_timeline == 0 || cd.min_recovery_end_timeline == cd.timeline {
        cd.checkpoint_lsn.max(cd.min_recovery_end_lsn)
    } else {
        cd.checkpoint_lsn
    }
}

/// The switch point (bytes) past which a stopped data directory on a former timeline holds WAL the
/// cluster's later timelines do not have, from the DCS `history`; `None` when it did not diverge or
/// `history` does not tell. A former primary's shutdown checkpoint at or after the switch point is
/// its own WAL (the new leader replayed up to, not including, the switch point); a replica diverged
/// when it replayed beyond it.
pub fn diverged_at(cd: &ControlData, history: &[HistoryEntry]) -> Option<u64> {
    let e = history.iter().find(|e| e.timeline == cd.timeline)?;
    let diverged = if cd.state.was_primary() {
        cd.checkpoint_lsn >= e.lsn
    } else if cd.min_recovery_end_timeline > cd.timeline {
        // It already replays a later timeline (it followed the switch, or pg_rewind rewound it
        // there): no restartpoint on it yet, but nothing of the old timeline past the fork either.
        false
    } else {
        replayed(cd) > e.lsn
    };
    diverged.then_some(e.lsn)
}

/// What a stopped member whose data directory diverged from the cluster's history answers for a
/// quorum vote ([`super::PeerStatus::diverged`]): its timeline and the switch point (bytes) where
/// the cluster left that timeline, per the DCS `history`. `None` when PostgreSQL is not stopped,
/// pg_controldata is unreadable, or it did not diverge (then its end of WAL is unknown while
/// stopped: a replica may have received and confirmed WAL past its last restartpoint).
///
/// Why a diverged member may vote: its WAL up to the switch point is the cluster's history, shared
/// by every later timeline; its WAL past that point holds no commit acknowledged under synchronous
/// replication, since the member promoted at the switch point held every acknowledged commit (the
/// rule this vote serves), so none lay beyond it. A candidate at or past (timeline, switch point)
/// holds everything the member can have acknowledged. Without its vote, two members diverged and
/// stopped (nobody can rewind them without a leader) left the third without the vote it needed,
/// and the cluster without a leader for good (the simulation's seeds 9,506 and 13,377; Patroni
/// starts such members read-only, where they vote, but Praetor keeps them stopped, see `decide`).
pub fn diverged_vote(postgres: &super::Postgres, history: &[HistoryEntry]) -> Option<(u32, u64)> {
    let super::Postgres::Stopped { control: Some(cd) } = postgres else {
        return None;
    };
    diverged_at(cd, history).map(|switch_lsn| (cd.timeline, switch_lsn))
}

fn plan(
    control: Option<&ControlData>,
    leader_timeline: Option<u32>,
    history: &[HistoryEntry],
    use_pg_rewind: bool,
) -> RejoinPlan {
    // The leader's member key can lag its promotion (written at its next loop, or not at all while
    // the DCS is unreachable), while `history` already says our timeline ended: a replica that
    // trusted the stale timeline started "as a replica" over and over and PostgreSQL refused it
    // ("requested timeline N does not contain minimum recovery point", nemesis ZooKeeper strict
    // seed 23). The cluster's timeline is at least one past the last timeline `history` ends.
    let from_history = history.iter().map(|e| e.timeline + 1).max();
    let leader_timeline = leader_timeline.max(from_history);
    let (Some(cd), Some(leader_tl)) = (control, leader_timeline) else {
        return RejoinPlan::StartAsReplica;
    };
    if cd.timeline > leader_tl {
        // This node is on a timeline the leader never had (it was promoted by hand, or was a leader
        // whose promotion the others did not follow): it diverged for sure.
        return if use_pg_rewind {
            RejoinPlan::Rewind
        } else {
            RejoinPlan::Diverged {
                local_lsn: cd.checkpoint_lsn,
                switch_lsn: 0,
                timeline: cd.timeline,
            }
        };
    }
    if cd.timeline == leader_tl {
        return RejoinPlan::StartAsReplica;
    }
    if !cd.state.was_primary() {
        // A replica on a former timeline that replayed past the switch point holds WAL from the
        // former primary that the leader never had: it cannot follow without a rewind.
        return match diverged_at(cd, history) {
            Some(switch_lsn) if use_pg_rewind => {
                let _ = switch_lsn;
                RejoinPlan::Rewind
            }
            Some(switch_lsn) => RejoinPlan::Diverged {
                local_lsn: replayed(cd),
                switch_lsn,
                timeline: cd.timeline,
            },
            None => RejoinPlan::StartAsReplica,
        };
    }
    if !cd.state.is_clean_shutdown() {
        // Recover first, with the node's own parameters, to read a trustworthy end of WAL. pg_rewind
        // (PostgreSQL 13+) could run crash recovery itself, but it starts the server without the
        // parameters the agent passes on the command line: without data checksums that run has
        // wal_log_hints off, and pg_rewind then refuses the target (Patroni's rewind.py likewise
        // runs `postgres --single` with the server's parameters before pg_rewind).
        return RejoinPlan::CrashRecoveryFirst;
    }
    match history.iter().find(|e| e.timeline == cd.timeline) {
        // A clean shutdown checkpoint the new leader replayed lies before the switch point (which is
        // the end of the last record replayed); at or after it, this node wrote WAL the leader lacks.
        Some(e) if cd.checkpoint_lsn < e.lsn => RejoinPlan::StartAsReplica,
        Some(_) if use_pg_rewind => RejoinPlan::Rewind,
        Some(e) => RejoinPlan::Diverged {
            local_lsn: cd.checkpoint_lsn,
            switch_lsn: e.lsn,
            timeline: cd.timeline,
        },
        None if use_pg_rewind => RejoinPlan::Rewind,
        None => RejoinPlan::WaitForHistory,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::ClusterState::{self, *};

    fn cd(state: ClusterState, timeline: u32, checkpoint_lsn: u64) -> ControlData {
        ControlData {
            state,
            timeline,
            checkpoint_lsn,
            min_recovery_end_lsn: 0,
            min_recovery_end_timeline: 0,
            rewindable: true,
        }
    }

    fn hist(timeline: u32, lsn: u64) -> HistoryEntry {
        HistoryEntry {
            timeline,
            lsn,
            reason: "no recovery target specified".into(),
            timestamp: None,
            new_leader: None,
        }
    }

    #[test]
    fn rejoin_table() {
        use RejoinPlan::*;
        let h = vec![hist(1, 1000)];
        // (case, pg_controldata, leader timeline, use_pg_rewind, expected plan)
        type Case = (
            &'static str,
            Option<ControlData>,
            Option<u32>,
            bool,
            RejoinPlan,
        );
        let cases: Vec<Case> = vec![
            ("no controldata", None, Some(2), false, StartAsReplica),
            (
                "same timeline",
                Some(cd(ShutDown, 2, 5000)),
                Some(2),
                false,
                StartAsReplica,
            ),
            (
                "replica shut down in recovery before the switch point",
                Some(cd(ShutDownInRecovery, 1, 900)),
                Some(2),
                false,
                StartAsReplica,
            ),
            (
                "replica on a former timeline that replayed past the switch point, rewind on",
                Some(cd(ShutDownInRecovery, 1, 5000)),
                Some(2),
                true,
                Rewind,
            ),
            (
                "replica that followed the switch, no restartpoint on the new timeline yet",
                Some(ControlData {
                    min_recovery_end_lsn: 7000,
                    min_recovery_end_timeline: 2,
                    ..cd(ShutDownInRecovery, 1, 900)
                }),
                Some(2),
                true,
                StartAsReplica,
            ),
            (
                "replica past the switch point (crashed in recovery), rewind off: diverged",
                Some(ControlData {
                    min_recovery_end_lsn: 1200,
                    ..cd(InArchiveRecovery, 1, 900)
                }),
                Some(2),
                false,
                Diverged {
                    local_lsn: 1200,
                    switch_lsn: 1000,
                    timeline: 1,
                },
            ),
            (
                "leader's member key still shows our timeline, history says it ended: rewind",
                Some(ControlData {
                    min_recovery_end_lsn: 1200,
                    min_recovery_end_timeline: 1,
                    ..cd(ShutDownInRecovery, 1, 900)
                }),
                Some(1),
                true,
                Rewind,
            ),
            (
                "leader's timeline unknown, history says ours ended past our replay: rewind",
                Some(ControlData {
                    min_recovery_end_lsn: 1200,
                    min_recovery_end_timeline: 1,
                    ..cd(ShutDownInRecovery, 1, 900)
                }),
                None,
                true,
                Rewind,
            ),
            (
                "leader's member key stale, replica stopped before the switch point: start",
                Some(cd(ShutDownInRecovery, 1, 900)),
                Some(1),
                false,
                StartAsReplica,
            ),
            (
                "switchover: clean stop before switch point",
                Some(cd(ShutDown, 1, 900)),
                Some(2),
                false,
                StartAsReplica,
            ),
            (
                "clean stop after switch point, rewind on",
                Some(cd(ShutDown, 1, 1000)),
                Some(2),
                true,
                Rewind,
            ),
            (
                "clean stop after switch point, rewind off",
                Some(cd(ShutDown, 1, 1500)),
                Some(2),
                false,
                Diverged {
                    local_lsn: 1500,
                    switch_lsn: 1000,
                    timeline: 1,
                },
            ),
            (
                "crashed primary, rewind on: recover first (pg_rewind's own recovery lacks the node's parameters)",
                Some(cd(InProduction, 1, 10)),
                Some(2),
                true,
                CrashRecoveryFirst,
            ),
            (
                "crashed primary, rewind off",
                Some(cd(InProduction, 1, 10)),
                Some(2),
                false,
                CrashRecoveryFirst,
            ),
            (
                "history missing, rewind on",
                Some(cd(ShutDown, 3, 10)),
                Some(4),
                true,
                Rewind,
            ),
            (
                "history missing, rewind off",
                Some(cd(ShutDown, 3, 10)),
                Some(4),
                false,
                WaitForHistory,
            ),
        ];
        for (name, c, tl, rewind, want) in cases {
            assert_eq!(rejoin_plan(c.as_ref(), tl, &h, rewind), want, "{name}");
        }
    }

    #[test]
    fn rewind_needs_checksums_or_wal_log_hints() {
        let c = ControlData {
            rewindable: false,
            ..cd(ShutDown, 1, 1500)
        };
        assert_eq!(
            rejoin_plan(Some(&c), Some(2), &[hist(1, 1000)], true),
            RejoinPlan::NotRewindable { timeline: 1 }
        );
        // Not diverged: no rewind needed, so none is attempted.
        let c = ControlData {
            rewindable: false,
            ..cd(ShutDown, 1, 900)
        };
        assert_eq!(
            rejoin_plan(Some(&c), Some(2), &[hist(1, 1000)], true),
            RejoinPlan::StartAsReplica
        );
    }
}
