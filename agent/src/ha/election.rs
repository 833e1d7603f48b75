//! The leader race: is this member the healthiest one?

use super::Reason;

/// Another member's state as its REST API (`GET /patroni`) reported it this loop. Members that did not
/// answer are simply absent: an unreachable member cannot be promoted anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Member name.
    pub name: String,
    /// It says it is a running primary (then nobody races: "a member that answers 'I am still
    /// primary' stops the race").
    pub is_running_primary: bool,
    /// PostgreSQL is running.
    pub is_running: bool,
    /// Its best WAL position: max(received, replayed) for a replica (bytes).
    pub wal_position: u64,
    /// Its timeline.
    pub timeline: u32,
    /// Tagged `nofailover` (or `failover_priority: 0`): never promoted.
    pub nofailover: bool,
    /// `failover_priority` (default 1): higher wins ties.
    pub failover_priority: i64,
    /// Its PostgreSQL is stopped and its data directory diverged from the cluster's history (it
    /// holds WAL past the point where the cluster left its timeline; see [`super::diverged_vote`]):
    /// `timeline` is that timeline and `wal_position` the switch point. Such a member cannot be
    /// promoted, but it still votes in a quorum election ([`super::sync::may_promote`]).
    pub diverged: bool,
    /// It keeps out of the leader race after its lock renewals lapsed ([`super::lapsed`]): its
    /// `/patroni` answer carries `holding_off_ms`. It will not take the lock before its hold-off
    /// ends (`ttl`), so nobody defers to it as a healthier member meanwhile (issue 14: the former
    /// leader, usually the member furthest ahead on WAL, kept the others waiting for `ttl`).
    pub holding_off: bool,
    /// Whether it holds a usable copy of every permanent logical slot (`logical_slot_copies` in
    /// its `/patroni` answer, [`super::slots::holds_slot_copies`]): `None` when it did not say
    /// (a Patroni member, or no permanent logical slot is configured). A tie-breaker of the race
    /// ([`ranks_first_on_tie`]).
    pub slot_copies: Option<bool>,
    /// The last DCS view it read had no leader key (Patroni's `cluster_unlocked` in `/patroni`; also
    /// true before its first read). An agent observes PostgreSQL after reading the DCS, so the WAL
    /// position it reports was taken after the leader key was gone: a leader that stepped down had
    /// stopped by then, and its walsenders had sent it all it would ever receive. A switchover
    /// candidate that answers this and still lacks the old leader's last LSN will not get it: nobody
    /// waits for it (sim seed 16,050). Absent from an answer: `false` (it may still be catching up).
    pub cluster_unlocked: bool,
}

impl PeerStatus {
    /// True when this peer may become leader.
    pub fn is_eligible(&self) -> bool {
        self.is_running && !self.nofailover && self.failover_priority > 0
    }
}

/// Whether member `a` comes before member `b` when both stand on the same timeline at the same WAL
/// position: a higher `failover_priority` first (Patroni's `_is_healthiest_node` compares WAL,
/// then `failover_priority`, and nothing after), then, at equal priority, holding a usable copy of
/// every permanent logical slot (`Some(true)`) against a member that says it does not
/// (`Some(false)`). Praetor's addition (issue 14, nemesis etcd async PG 15 seed 3: pg1 held the
/// consumer's slot, pg2 did not and was elected; the slot, and the consumer's position, went with
/// it). It sits after the priority rather than before it: `failover_priority` is the operator's
/// explicit choice and keeps Patroni's meaning exactly, so a copy only decides among members the
/// operator ranked equal; and it is never weighed against WAL, since WAL is data every client
/// wrote and the slot only one consumer's position (the consumer can be recreated, the rows
/// cannot). A member that did not say (`None`: a Patroni member, or no permanent logical slot)
/// neither wins nor loses on it.
pub fn ranks_first_on_tie(
    a_priority: i64,
    a_copies: Option<bool>,
    b_priority: i64,
    b_copies: Option<bool>,
) -> bool {
    a_priority > b_priority
        || a_priority == b_priority && a_copies == Some(true) && b_copies == Some(false)
}

/// Decides whether a member on `my_timeline` at `my_position` with `my_priority` is the healthiest among
/// `peers` (Patroni's `is_healthiest_node` comparison, after the lag check): nobody still runs as primary,
/// and no eligible peer is ahead: on a higher timeline, or on the same timeline at a higher WAL position,
/// or at the same position ranked first ([`ranks_first_on_tie`]: a higher `failover_priority`, then, at
/// equal priority, a usable copy of every permanent logical slot where this member, `my_copies`, has
/// not). Comparing timelines first means a member
/// that saw a promotion is never overtaken by one that did not (whose WAL would fork from it).
/// Peers named in `exclude` are ignored (a switchover candidate that is being skipped), and so are
/// peers holding off the race after their renewals lapsed ([`PeerStatus::holding_off`]: they will
/// not take the lock within their hold-off, so deferring to them left the cluster without a leader
/// for `ttl`), unless they still run as primary. Patroni has no hold-off, so no such exception.
///
/// Returns `Err(Reason::NotHealthiest)` naming the better member.
pub fn is_healthiest(
    me: &str,
    my_timeline: u32,
    my_position: u64,
    my_priority: i64,
    my_copies: Option<bool>,
    peers: &[PeerStatus],
    exclude: Option<&str>,
) -> Result<(), Reason> {
    for p in peers {
        if p.name == me || exclude == Some(p.name.as_str()) {
            continue;
        }
        if p.is_running_primary {
            return Err(Reason::NotHealthiest {
                better: format!("{} (still running as primary)", p.name),
            });
        }
        if !p.is_eligible() || p.holding_off {
            continue;
        }
        let theirs = (p.timeline, p.wal_position);
        let mine = (my_timeline, my_position);
        if theirs > mine
            || (theirs == mine
                && ranks_first_on_tie(p.failover_priority, p.slot_copies, my_priority, my_copies))
        {
            return Err(Reason::NotHealthiest {
                better: p.name.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(name: &str, pos: u64, prio: i64) -> PeerStatus {
        PeerStatus {
            name: name.into(),
            is_running_primary: false,
            is_running: true,
            wal_position: pos,
            timeline: 1,
            nofailover: false,
            failover_priority: prio,
            diverged: false,
            holding_off: false,
            slot_copies: None,
            cluster_unlocked: false,
        }
    }

    #[test]
    fn healthiest_by_position_then_priority() {
        struct Case {
            name: &'static str,
            my_pos: u64,
            my_prio: i64,
            peers: Vec<PeerStatus>,
            healthiest: bool,
        }
        let primary = PeerStatus {
            is_running_primary: true,
            ..peer("old", 0, 1)
        };
        let nofailover = PeerStatus {
            nofailover: true,
            ..peer("nf", 500, 1)
        };
        let stopped = PeerStatus {
            is_running: false,
            ..peer("down", 500, 1)
        };
        let holding_off = PeerStatus {
            holding_off: true,
            ..peer("lapsed", 500, 1)
        };
        let holding_off_primary = PeerStatus {
            holding_off: true,
            is_running_primary: true,
            ..peer("lapsed", 500, 1)
        };
        let cases = [
            Case {
                name: "alone",
                my_pos: 10,
                my_prio: 1,
                peers: vec![],
                healthiest: true,
            },
            Case {
                name: "ahead of everyone",
                my_pos: 10,
                my_prio: 1,
                peers: vec![peer("b", 9, 1), peer("c", 5, 9)],
                healthiest: true,
            },
            Case {
                name: "someone ahead",
                my_pos: 10,
                my_prio: 1,
                peers: vec![peer("b", 11, 1)],
                healthiest: false,
            },
            Case {
                name: "tie, equal priority: both race",
                my_pos: 10,
                my_prio: 1,
                peers: vec![peer("b", 10, 1)],
                healthiest: true,
            },
            Case {
                name: "tie, higher priority wins",
                my_pos: 10,
                my_prio: 1,
                peers: vec![peer("b", 10, 2)],
                healthiest: false,
            },
            Case {
                name: "tie, my priority higher",
                my_pos: 10,
                my_prio: 3,
                peers: vec![peer("b", 10, 2)],
                healthiest: true,
            },
            Case {
                name: "a primary still runs",
                my_pos: 10,
                my_prio: 1,
                peers: vec![primary.clone()],
                healthiest: false,
            },
            Case {
                name: "nofailover peer ahead is ignored",
                my_pos: 10,
                my_prio: 1,
                peers: vec![nofailover.clone()],
                healthiest: true,
            },
            Case {
                name: "priority 0 peer ahead is ignored",
                my_pos: 10,
                my_prio: 1,
                peers: vec![peer("z", 99, 0)],
                healthiest: true,
            },
            Case {
                name: "stopped peer ahead is ignored",
                my_pos: 10,
                my_prio: 1,
                peers: vec![stopped.clone()],
                healthiest: true,
            },
            Case {
                name: "a peer ahead holding off after lapsed renewals is ignored (issue 14)",
                my_pos: 10,
                my_prio: 1,
                peers: vec![holding_off.clone()],
                healthiest: true,
            },
            Case {
                name: "a peer holding off is ignored, the next one ahead still wins",
                my_pos: 10,
                my_prio: 1,
                peers: vec![holding_off.clone(), peer("b", 11, 1)],
                healthiest: false,
            },
            Case {
                name: "a peer holding off that still runs as primary stops the race",
                my_pos: 10,
                my_prio: 1,
                peers: vec![holding_off_primary.clone()],
                healthiest: false,
            },
        ];
        for c in cases {
            let r = is_healthiest("me", 1, c.my_pos, c.my_prio, None, &c.peers, None);
            assert_eq!(r.is_ok(), c.healthiest, "{}: {r:?}", c.name);
        }
    }

    /// Issue 14: a usable copy of every permanent logical slot breaks a tie on WAL and priority,
    /// and only that: never a deficit on WAL, never a lower `failover_priority`; a member that did
    /// not publish it (a Patroni member) neither wins nor loses on it.
    #[test]
    fn slot_copies_break_a_tie_after_wal_and_priority() {
        let copies = |name: &str, pos: u64, prio: i64, c: Option<bool>| PeerStatus {
            slot_copies: c,
            ..peer(name, pos, prio)
        };
        // (name, my position, my priority, my copies, peers, healthiest)
        let cases = [
            (
                "equal WAL and priority, only the peer holds copies: it goes first",
                10,
                1,
                Some(false),
                vec![copies("b", 10, 1, Some(true))],
                false,
            ),
            (
                "equal WAL and priority, only I hold copies: I race",
                10,
                1,
                Some(true),
                vec![copies("b", 10, 1, Some(false))],
                true,
            ),
            (
                "equal WAL and priority, both hold copies: both race",
                10,
                1,
                Some(true),
                vec![copies("b", 10, 1, Some(true))],
                true,
            ),
            (
                "equal WAL and priority, neither holds copies: both race",
                10,
                1,
                Some(false),
                vec![copies("b", 10, 1, Some(false))],
                true,
            ),
            (
                "the copy holder is behind on WAL: it loses (WAL is every client's data)",
                10,
                1,
                Some(false),
                vec![copies("b", 9, 1, Some(true))],
                true,
            ),
            (
                "I hold copies but am behind on WAL: the peer ahead still wins",
                9,
                1,
                Some(true),
                vec![copies("b", 10, 1, Some(false))],
                false,
            ),
            (
                "the copy holder has a lower failover_priority: priority decides first",
                10,
                2,
                Some(false),
                vec![copies("b", 10, 1, Some(true))],
                true,
            ),
            (
                "a higher-priority peer without copies still wins over my copies",
                10,
                1,
                Some(true),
                vec![copies("b", 10, 2, Some(false))],
                false,
            ),
            (
                "a Patroni peer (no field) at equal WAL: no preference, I race",
                10,
                1,
                Some(true),
                vec![copies("patroni", 10, 1, None)],
                true,
            ),
            (
                "a Patroni peer (no field) at equal WAL: it does not lose to me either",
                10,
                1,
                Some(false),
                vec![copies("patroni", 10, 1, None)],
                true,
            ),
            (
                "no permanent logical slot here (None), a peer says it holds copies: no preference",
                10,
                1,
                None,
                vec![copies("b", 10, 1, Some(true))],
                true,
            ),
        ];
        for (name, pos, prio, mine, peers, healthiest) in cases {
            let r = is_healthiest("me", 1, pos, prio, mine, &peers, None);
            assert_eq!(r.is_ok(), healthiest, "{name}: {r:?}");
        }
    }

    #[test]
    fn excluded_peer_is_ignored_and_self_is_skipped() {
        let peers = vec![peer("cand", 99, 1), peer("me", 99, 1)];
        assert!(is_healthiest("me", 1, 10, 1, None, &peers, Some("cand")).is_ok());
        assert!(is_healthiest("me", 1, 10, 1, None, &peers, None).is_err());
    }

    #[test]
    fn a_higher_timeline_wins_over_a_higher_position() {
        let ahead = PeerStatus {
            timeline: 2,
            ..peer("promoted", 5, 1)
        };
        assert!(is_healthiest("me", 1, 10, 1, None, std::slice::from_ref(&ahead), None).is_err());
        assert!(is_healthiest("me", 2, 4, 1, None, std::slice::from_ref(&ahead), None).is_err());
        assert!(is_healthiest("me", 3, 0, 1, None, &[ahead], None).is_ok());
    }
}
