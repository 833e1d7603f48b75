//! Two branches under one timeline number: this data directory's own promotion against the DCS
//! `history`.
//!
//! PostgreSQL names the timeline a promotion creates after the newest timeline history file it
//! knows (`findNewestTimeLine` + 1: `pg_wal`, and the archive when `restore_command` is set). A
//! member that promoted to timeline N and froze (or was stopped by its deadline guard) before
//! anyone streamed from it leaves no trace of N elsewhere, so the next leader, promoting from the
//! same point, also creates a timeline N: same number, same history file, different WAL. Back as
//! a replica the first one would never stream (or stream garbage), pg_rewind would see "the same
//! timeline" and rewind nothing, and by (timeline, LSN) it could look like the healthiest member
//! at the next switchover and be promoted without the other branch's acknowledged commits
//! (simulation seed 213686). What tells the two branches apart is who created them: each member
//! records its own promotion in its data directory ([`Promotion`], written by the runner right
//! before `pg_promote`), and the DCS `history` names the leader of each timeline (the
//! `new_leader` of the line that ended the timeline before it, Patroni's format).

use praetor_dcs::HistoryEntry;

/// The promotion that created this data directory's newest timeline, as the runner recorded it
/// (`praetor.promotion` in the data directory). pg_basebackup and pg_rewind copy the file with the
/// rest, so a copy names the member whose WAL it copied, which is still the creator of that
/// timeline's branch: the record stays true of the data next to it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Promotion {
    /// The member that promoted.
    pub member: String,
    /// The timeline it promoted to.
    pub timeline: u32,
    /// Where the previous timeline ended: the switch point (bytes).
    pub lsn: u64,
}

/// The member the DCS `history` names as the leader that created `timeline` (the `new_leader` of
/// the line ending `timeline - 1`). `None` when no line ends it yet, or the line names nobody (written
/// by an older Patroni, or not by the timeline's own leader).
pub fn creator(history: &[HistoryEntry], timeline: u32) -> Option<&str> {
    let ended = timeline.checked_sub(1)?;
    history
        .iter()
        .find(|e| e.timeline == ended)
        .and_then(|e| e.new_leader.as_deref())
}

/// The leader the cluster credits with `timeline` when this data directory, on that timeline,
/// holds another member's branch of it: its record says `record.member` promoted to that same
/// timeline number. Such data cannot stream from the cluster's timeline nor be rewound onto it
/// (pg_rewind compares timeline numbers); only a new copy (clone) makes it a replica again, and it
/// must never be a candidate. `None` when the record is of another timeline (it promoted, then
/// followed a later one), or the history does not name the creator.
pub fn taken_over_by<'a>(
    record: Option<&Promotion>,
    timeline: u32,
    history: &'a [HistoryEntry],
) -> Option<&'a str> {
    let record = record.filter(|r| r.timeline == timeline)?;
    creator(history, timeline).filter(|c| *c != record.member)
}

/// Whether this data directory's `timeline` is a branch `record.member` created that the cluster's
/// `history` does not attribute yet (no line ends `timeline - 1`), while `leader`, another
/// member, leads on a timeline of that number, or on one its member key does not show yet (it is
/// published at the end of the loop that promoted): whether the two are one branch is known only
/// once that leader writes its history line, so the data waits for it.
pub fn unattributed(
    record: Option<&Promotion>,
    timeline: u32,
    history: &[HistoryEntry],
    leader: &str,
    leader_timeline: Option<u32>,
) -> bool {
    record.is_some_and(|r| {
        r.timeline == timeline
            && r.member != leader
            && leader_timeline.is_none_or(|t| t == timeline)
            && timeline > 1
            && !history.iter().any(|e| e.timeline == timeline - 1)
    })
}

/// Whether the lock holder `me`, running as primary on `timeline` which its own record says it
/// created, finds the history line of that timeline naming another leader: a member that promoted
/// to the same number and wrote the line before it froze. The line is rewritten with this leader
/// (the runner's `update_history`), so that the other member, comparing its record with it, knows
/// it diverged.
pub fn history_names_another(
    record: Option<&Promotion>,
    me: &str,
    timeline: u32,
    history: &[HistoryEntry],
) -> bool {
    record.is_some_and(|r| r.member == me && r.timeline == timeline)
        && creator(history, timeline).is_some_and(|c| c != me)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(timeline: u32, lsn: u64, leader: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            timeline,
            lsn,
            reason: "no recovery target specified".into(),
            timestamp: Some("2026-12-06T17:00:00.000000+00:00".into()),
            new_leader: leader.map(str::to_string),
        }
    }

    fn rec(member: &str, timeline: u32) -> Promotion {
        Promotion {
            member: member.into(),
            timeline,
            lsn: 100,
        }
    }

    #[test]
    fn taken_over_by_table() {
        let history = vec![line(1, 50, Some("a")), line(2, 100, Some("b"))];
        // (case, record, local timeline, expected)
        let cases: [(&str, Option<Promotion>, u32, Option<&str>); 6] = [
            ("no record", None, 3, None),
            (
                "my own timeline, history names me",
                Some(rec("b", 3)),
                3,
                None,
            ),
            (
                "same number, history names another leader",
                Some(rec("c", 3)),
                3,
                Some("b"),
            ),
            ("record of an earlier timeline", Some(rec("c", 2)), 3, None),
            (
                "timeline not ended nor started in history",
                Some(rec("c", 4)),
                4,
                None,
            ),
            (
                "a copy of the creator's data carries its name",
                Some(rec("a", 2)),
                2,
                None,
            ),
        ];
        for (case, record, timeline, want) in cases {
            assert_eq!(
                taken_over_by(record.as_ref(), timeline, &history),
                want,
                "{case}"
            );
        }
        let legacy = vec![line(2, 100, None)];
        assert_eq!(
            taken_over_by(Some(&rec("c", 3)), 3, &legacy),
            None,
            "a line naming nobody decides nothing"
        );
    }

    #[test]
    fn unattributed_and_history_names_another() {
        let none: Vec<HistoryEntry> = vec![];
        let ended = vec![line(2, 100, Some("b"))];
        assert!(unattributed(Some(&rec("c", 3)), 3, &none, "b", Some(3)));
        assert!(!unattributed(Some(&rec("c", 3)), 3, &ended, "b", Some(3)));
        assert!(!unattributed(Some(&rec("b", 3)), 3, &none, "b", Some(3)));
        assert!(!unattributed(Some(&rec("c", 3)), 3, &none, "b", Some(4)));
        assert!(!unattributed(None, 3, &none, "b", Some(3)));
        assert!(unattributed(Some(&rec("c", 3)), 3, &none, "b", None));
        assert!(history_names_another(Some(&rec("c", 3)), "c", 3, &ended));
        assert!(!history_names_another(Some(&rec("b", 3)), "b", 3, &ended));
        assert!(!history_names_another(Some(&rec("c", 3)), "c", 3, &none));
        assert!(!history_names_another(Some(&rec("b", 3)), "c", 3, &ended));
    }
}
