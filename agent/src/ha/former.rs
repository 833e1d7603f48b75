//! Which former leader to fence: the agent's own memory, or a newer one the DCS names.
//!
//! The agent remembers the last leader it saw (kept across restarts in the data directory, see
//! `crate::former_leader`). A member whose agent was down through a whole leadership never saw
//! that leader: back up with no leader key, its memory names an older one, and before it promotes
//! it would fence that older leader and wait for the proxies to leave it, while the newer one may
//! still run as a primary and the proxies still route to it. The DCS `history` names the leader of
//! every timeline (the last line's `new_leader` created the newest one); when that leader is newer
//! than the remembered one it is the fence target.

use praetor_dcs::Cluster;

use super::{upstream_of, Upstream};

/// A leader this member saw, or the DCS names, with the timeline it led.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormerLeader {
    /// The member and its PostgreSQL address (from its member key).
    pub leader: Upstream,
    /// The timeline it led: for a leader seen holding the lock, its member key's timeline when it
    /// was seen (the timeline its own promotion created, or an older one when seen before it
    /// promoted); for one the `history` names, the timeline it created. `None`: not known (a
    /// record written before the timeline was kept).
    pub timeline: Option<u32>,
}

/// The newest former leader the DCS names when it is newer than `remembered` (this member's own
/// memory), for member `me` reading `view`; `None` to keep `remembered`.
///
/// Only while nobody holds the lock (a lock holder other than `me` is what the agent records
/// anyway). The DCS's candidate is the last `history` line's `new_leader`, which created timeline
/// `line.timeline + 1`. It replaces `remembered` when it is another member than `me` and than the
/// remembered one, that one's timeline is unknown or older than the candidate's, and the
/// candidate's member key still gives its address (the fence needs host and port; without them
/// the remembered target stays, as before). A remembered leader seen on a timeline at least as new
/// stays: it may have promoted after the last `history` line was written (a leader writes its
/// line in its first loop after the promotion and may die before).
pub fn newer_in_dcs(
    view: &Cluster,
    me: &str,
    remembered: Option<&FormerLeader>,
) -> Option<FormerLeader> {
    if view.leader.is_some() {
        return None;
    }
    let last = view.history.as_ref()?.value.last()?;
    let name = last.new_leader.as_deref()?;
    let created = last.timeline.saturating_add(1);
    if name == me {
        return None;
    }
    if let Some(r) = remembered {
        if r.leader.member == name || r.timeline.is_some_and(|t| t >= created) {
            return None;
        }
    }
    Some(FormerLeader {
        leader: upstream_of(view, name)?,
        timeline: Some(created),
    })
}

#[cfg(test)]
mod tests {
    use praetor_dcs::{HistoryEntry, Leader, Member, MemberData, Versioned};

    use super::*;

    fn member(name: &str, port: u16) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                conn_url: Some(format!("postgres://10.0.0.1:{port}/postgres")),
                ..Default::default()
            },
            version: 1,
        }
    }

    fn line(timeline: u32, new_leader: Option<&str>) -> HistoryEntry {
        HistoryEntry {
            timeline,
            lsn: u64::from(timeline) * 1000,
            reason: "no recovery target specified".into(),
            timestamp: None,
            new_leader: new_leader.map(str::to_string),
        }
    }

    /// No leader; members pg1 (me), pg2, pg3; `history` as given.
    fn view(history: Option<Vec<HistoryEntry>>) -> Cluster {
        Cluster {
            members: vec![
                member("pg1", 5431),
                member("pg2", 5432),
                member("pg3", 5433),
            ],
            history: history.map(|value| Versioned { value, version: 1 }),
            ..Default::default()
        }
    }

    fn former(name: &str, port: u16, timeline: Option<u32>) -> FormerLeader {
        FormerLeader {
            leader: Upstream {
                member: name.into(),
                host: "10.0.0.1".into(),
                port,
            },
            timeline,
        }
    }

    #[test]
    fn the_dcs_former_leader_replaces_the_remembered_one_only_when_newer() {
        let pg3_on_2 = Some(vec![line(1, Some("pg3"))]);
        // (case, view, remembered, the fence target the DCS gives instead)
        type Row = (
            &'static str,
            Cluster,
            Option<FormerLeader>,
            Option<FormerLeader>,
        );
        let rows: Vec<Row> = vec![
            (
                "agent down while pg3 led timeline 2: pg3 replaces pg2 (seen on timeline 1)",
                view(pg3_on_2.clone()),
                Some(former("pg2", 5432, Some(1))),
                Some(former("pg3", 5433, Some(2))),
            ),
            (
                "a record without a timeline (older file) is older than any history line",
                view(pg3_on_2.clone()),
                Some(former("pg2", 5432, None)),
                Some(former("pg3", 5433, Some(2))),
            ),
            (
                "nothing remembered: the DCS's",
                view(pg3_on_2.clone()),
                None,
                Some(former("pg3", 5433, Some(2))),
            ),
            (
                "the remembered leader is the one the history names last: kept",
                view(pg3_on_2.clone()),
                Some(former("pg3", 5433, Some(2))),
                None,
            ),
            (
                "the remembered leader was seen on a newer timeline than the history's last \
                 (it promoted and died before writing its line): kept",
                view(pg3_on_2.clone()),
                Some(former("pg2", 5432, Some(3))),
                None,
            ),
            (
                "the remembered leader was seen on the timeline the history's last leader \
                 created: kept",
                view(pg3_on_2.clone()),
                Some(former("pg2", 5432, Some(2))),
                None,
            ),
            (
                "this member led last: nobody newer to fence",
                view(Some(vec![line(1, Some("pg3")), line(2, Some("pg1"))])),
                Some(former("pg3", 5433, Some(2))),
                None,
            ),
            (
                "the newest leader's member key is gone: no address, the remembered one stays",
                with_members(view(pg3_on_2.clone()), &["pg1", "pg2"]),
                Some(former("pg2", 5432, Some(1))),
                None,
            ),
            (
                "a leader holds the lock: the agent records that one",
                Cluster {
                    leader: Some(Leader {
                        name: "pg2".into(),
                        version: 1,
                    }),
                    ..view(pg3_on_2.clone())
                },
                Some(former("pg2", 5432, Some(1))),
                None,
            ),
            (
                "no history key, or a last line naming nobody (an older Patroni): kept",
                view(Some(vec![line(1, None)])),
                Some(former("pg2", 5432, Some(1))),
                None,
            ),
        ];
        for (case, view, remembered, want) in rows {
            assert_eq!(
                newer_in_dcs(&view, "pg1", remembered.as_ref()),
                want,
                "{case}"
            );
        }
    }

    fn with_members(mut v: Cluster, names: &[&str]) -> Cluster {
        v.members.retain(|m| names.contains(&m.name.as_str()));
        v
    }
}
