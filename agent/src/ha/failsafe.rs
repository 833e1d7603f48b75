//! Failsafe mode (`failsafe_mode` in the dynamic configuration; Patroni 3.0's "DCS failsafe mode",
//! docs/dcs_failsafe_mode.rst): the rules that do not fit one `decide` row, as pure functions.
//!
//! - The leader that cannot reach the DCS asks every other member of the last `failsafe` key it read
//!   (`POST /failsafe`, [`members_to_ask`]); it keeps its primary only while all of them accept
//!   (`decide`: [`super::Action::KeepLeadingInFailsafe`], which counts as a lock renewal and feeds
//!   the watchdog).
//! - A member accepts only when its own last view agrees ([`answer`]): it is no running primary and
//!   the caller is the leader of the last cluster view it read. A member that still reads the DCS
//!   and sees the leader key expired (or naming someone else) refuses, so a leader cut off alone
//!   from the DCS demotes at its deadline and the others elect a new leader (reference/patroni.md
//!   §7 "primary cannot reach the DCS": demote, others fail over). Patroni's replicas accept any
//!   caller while not primary themselves; Praetor lets the DCS decide whenever a member can read it.
//! - A member that accepted stays out of the leader race for `ttl` after it ([`promised`]), as
//!   Patroni's replicas do: its confirmation extended the leader's deadline past its lease. The
//!   acceptance is recorded in the data directory before the answer, so a restarted agent keeps
//!   the promise (`crate::failsafe_record`).
//! - The leader race includes the members of the `failsafe` key, the former leader too
//!   ([`race_contacts`], Patroni's `is_healthiest_node`): after an outage their member keys may have
//!   expired, yet a primary kept running by failsafe mode must be asked (it answers "still running
//!   as primary", so no replica promotes over it and it takes the lock again). A member missing from
//!   a non-empty `failsafe` key does not race ([`may_race`]), unless a switchover names it, and then
//!   only once every member of the key answered the race ([`unheard_member`]).

use praetor_dcs::Cluster;

/// What a member answers to `POST /failsafe` (Patroni's `do_POST_failsafe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailsafeAnswer {
    /// 200 `Accepted`: this member agrees that the caller keeps running as the primary.
    Accepted,
    /// 502: `failsafe_mode` is off in this member's dynamic configuration.
    Disabled,
    /// 500 with the reason: the caller must not count on this member.
    Refused(String),
}

/// This member's answer to a `POST /failsafe` from `caller` (the `name` of the request body).
///
/// `running_primary`: this member's PostgreSQL runs read-write (Patroni: "Running as a leader").
/// `last_leader`: the leader key of the last cluster view this member read (the current one while
/// it reads the DCS, the last one before an outage otherwise; `None`: no leader in that view or no
/// view yet). Accepted only when `last_leader` is the caller: while the DCS is down for everyone
/// every member's last view names the leader that asks, while a member still reads the DCS the
/// leader key is the DCS's word (gone once the caller's lease expired, or another member's).
pub fn answer(
    failsafe_mode: bool,
    running_primary: bool,
    last_leader: Option<&str>,
    caller: &str,
) -> FailsafeAnswer {
    if !failsafe_mode {
        return FailsafeAnswer::Disabled;
    }
    if running_primary {
        return FailsafeAnswer::Refused("Running as a leader".into());
    }
    match last_leader {
        Some(l) if l == caller => FailsafeAnswer::Accepted,
        Some(l) => FailsafeAnswer::Refused(format!(
            "the leader key names {l}, not {caller}, in the last cluster view this member read"
        )),
        None => FailsafeAnswer::Refused(format!(
            "no leader key in the last cluster view this member read: {caller} no longer holds the lock"
        )),
    }
}

/// The members a leader without the DCS must hear `Accepted` from (name, api_url), all but `me`,
/// from the `failsafe` key of `last_view` (its last successful read). `None` when that key is
/// absent or does not list `me` (Patroni's `check_failsafe_topology` gives up at once: it was not
/// the leader of that topology). An empty list (a one-member cluster) needs nobody's answer.
pub fn members_to_ask(last_view: &Cluster, me: &str) -> Option<Vec<(String, String)>> {
    let members = last_view.failsafe.as_ref()?;
    if !members.contains_key(me) {
        return None;
    }
    Some(
        members
            .iter()
            .filter(|(name, _)| name.as_str() != me)
            .map(|(name, api)| (name.clone(), api.clone()))
            .collect(),
    )
}

/// Whom a leader race asks for their status (name, api_url), all but `me`: every member key with an
/// api_url, and with `failsafe_mode` on also the members of the `failsafe` key that have no member
/// key any more (their keys expired while the DCS was out of reach; the former leader among them).
pub fn race_contacts(view: &Cluster, me: &str, failsafe_mode: bool) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = view
        .members
        .iter()
        .filter(|m| m.name != me)
        .filter_map(|m| Some((m.name.clone(), m.data.api_url.clone()?)))
        .collect();
    if failsafe_mode {
        if let Some(known) = view.failsafe.as_ref() {
            for (name, api) in known {
                if name != me && view.member(name).is_none() {
                    out.push((name.clone(), api.clone()));
                }
            }
        }
    }
    out
}

/// Whether this member still keeps the promise of its last `Accepted` answer to `POST /failsafe`
/// (`accepted_ms`, monotonic ms; `now_ms`; `ttl_secs`): true within `ttl` of it, with
/// `failsafe_mode` on. The leader counts the acceptance as a lock renewal and keeps running up to
/// `loop_wait + retry_timeout` past the round, while the DCS lets its lease expire: a member that
/// accepted and then took the lock could promote while that leader still runs (simulation seeds
/// 978 and 2140 with `--failsafe`: two writable primaries). So an acceptance keeps this member out
/// of the race for `ttl`, longer than any deadline it extended; Patroni's replicas do the same
/// (`Failsafe.is_active()` after `update_failsafe`). A leader that goes on being confirmed goes on
/// being the primary, which is failsafe mode's purpose; one that stops asking is raced for `ttl`
/// after its last confirmation.
pub fn promised(failsafe_mode: bool, accepted_ms: Option<u64>, now_ms: u64, ttl_secs: u32) -> bool {
    failsafe_mode
        && accepted_ms.is_some_and(|at| now_ms.saturating_sub(at) < u64::from(ttl_secs) * 1000)
}

/// With `failsafe_mode` on, only members of a non-empty `failsafe` key may take the lock (Patroni:
/// "If current node is missing in the /failsafe key we immediately disqualify it from the race"):
/// a member that joined while the DCS was out of reach cannot know what the others confirmed.
pub fn may_race(view: &Cluster, me: &str, failsafe_mode: bool) -> bool {
    !failsafe_mode
        || view
            .failsafe
            .as_ref()
            .is_none_or(|m| m.is_empty() || m.contains_key(me))
}

/// A switchover's candidate missing from a non-empty `failsafe` key may take the lock only once
/// every other member of that key answered the race (`answered`: the names of the members that
/// answered `GET /patroni`): the first member of the key that did not, `None` when all did (or
/// when `me` is in the key, or no key applies). The key names whom the last leader asked for its
/// confirmations; a member missing from it cannot know whether that leader still runs on one, past
/// its lease in the DCS (it counts a confirmation as a renewal). Once they all answer, the race's
/// own check stops it while the leader still runs as primary (sim seed 223394 with failsafe mode:
/// a switchover requested to a member whose agent was down while a new leader was elected took the
/// lock after the heal and promoted while that leader, kept by failsafe mode, still ran).
pub fn unheard_member<'a>(
    view: &Cluster,
    me: &str,
    failsafe_mode: bool,
    answered: impl IntoIterator<Item = &'a str>,
) -> Option<String> {
    if may_race(view, me, failsafe_mode) {
        return None;
    }
    let answered: Vec<&str> = answered.into_iter().collect();
    view.failsafe
        .as_ref()?
        .keys()
        .find(|name| name.as_str() != me && !answered.contains(&name.as_str()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use praetor_dcs::{Member, MemberData};
    use std::collections::BTreeMap;

    #[test]
    fn a_member_accepts_only_the_leader_of_its_last_view() {
        struct Case {
            name: &'static str,
            failsafe_mode: bool,
            running_primary: bool,
            last_leader: Option<&'static str>,
            caller: &'static str,
            answer: FailsafeAnswer,
        }
        let refused = |s: &str| FailsafeAnswer::Refused(s.into());
        let cases = [
            Case {
                name: "whole DCS down: the last view names the caller",
                failsafe_mode: true,
                running_primary: false,
                last_leader: Some("pg1"),
                caller: "pg1",
                answer: FailsafeAnswer::Accepted,
            },
            Case {
                name: "this member reads the DCS and the caller's key expired",
                failsafe_mode: true,
                running_primary: false,
                last_leader: None,
                caller: "pg1",
                answer: refused("no leader key in the last cluster view this member read: pg1 no longer holds the lock"),
            },
            Case {
                name: "another member leads in this member's view",
                failsafe_mode: true,
                running_primary: false,
                last_leader: Some("pg2"),
                caller: "pg1",
                answer: refused("the leader key names pg2, not pg1, in the last cluster view this member read"),
            },
            Case {
                name: "this member runs a primary",
                failsafe_mode: true,
                running_primary: true,
                last_leader: Some("pg1"),
                caller: "pg1",
                answer: refused("Running as a leader"),
            },
            Case {
                name: "failsafe_mode off",
                failsafe_mode: false,
                running_primary: false,
                last_leader: Some("pg1"),
                caller: "pg1",
                answer: FailsafeAnswer::Disabled,
            },
        ];
        for c in cases {
            assert_eq!(
                answer(c.failsafe_mode, c.running_primary, c.last_leader, c.caller),
                c.answer,
                "{}",
                c.name
            );
        }
    }

    fn view(members: &[&str], failsafe: Option<&[&str]>) -> Cluster {
        let api = |n: &str| format!("http://{n}:8008/patroni");
        Cluster {
            members: members
                .iter()
                .map(|n| Member {
                    name: n.to_string(),
                    data: MemberData {
                        api_url: Some(api(n)),
                        ..Default::default()
                    },
                    version: 1,
                })
                .collect(),
            failsafe: failsafe.map(|f| {
                f.iter()
                    .map(|n| (n.to_string(), api(n)))
                    .collect::<BTreeMap<_, _>>()
            }),
            ..Default::default()
        }
    }

    fn names(v: Vec<(String, String)>) -> Vec<String> {
        v.into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn the_leader_asks_the_other_members_of_a_failsafe_key_that_lists_it() {
        let three = view(&[], Some(&["pg1", "pg2", "pg3"]));
        assert_eq!(
            names(members_to_ask(&three, "pg1").unwrap()),
            ["pg2", "pg3"]
        );
        assert_eq!(members_to_ask(&three, "pg4"), None, "not in the key");
        assert_eq!(members_to_ask(&view(&[], None), "pg1"), None, "no key");
        let alone = view(&[], Some(&["pg1"]));
        assert_eq!(members_to_ask(&alone, "pg1"), Some(vec![]));
    }

    #[test]
    fn the_race_asks_failsafe_members_whose_member_keys_expired() {
        // pg1's member key expired during the outage; it still runs as primary.
        let after_outage = view(&["pg2", "pg3"], Some(&["pg1", "pg2", "pg3"]));
        assert_eq!(
            names(race_contacts(&after_outage, "pg2", true)),
            ["pg3", "pg1"]
        );
        assert_eq!(
            names(race_contacts(&after_outage, "pg2", false)),
            ["pg3"],
            "failsafe_mode off: member keys only"
        );
        let no_key = view(&["pg1", "pg2", "pg3"], None);
        assert_eq!(names(race_contacts(&no_key, "pg2", true)), ["pg1", "pg3"]);
    }

    #[test]
    fn only_members_of_a_non_empty_failsafe_key_race() {
        let key = view(&[], Some(&["pg1", "pg2"]));
        assert!(may_race(&key, "pg2", true));
        assert!(!may_race(&key, "pg4", true));
        assert!(may_race(&key, "pg4", false), "failsafe_mode off");
        assert!(may_race(&view(&[], None), "pg4", true), "no key");
        assert!(may_race(&view(&[], Some(&[])), "pg4", true), "empty key");
    }

    #[test]
    fn a_candidate_outside_the_failsafe_key_waits_for_every_member_of_the_key() {
        let key = view(&[], Some(&["pg0", "pg2"]));
        assert_eq!(
            unheard_member(&key, "pg1", true, ["pg0"]),
            Some("pg2".to_string()),
            "the key's leader did not answer"
        );
        assert_eq!(unheard_member(&key, "pg1", true, ["pg0", "pg2"]), None);
        assert_eq!(unheard_member(&key, "pg0", true, []), None, "in the key");
        assert_eq!(
            unheard_member(&key, "pg1", false, []),
            None,
            "failsafe_mode off"
        );
        assert_eq!(
            unheard_member(&view(&[], None), "pg1", true, []),
            None,
            "no key"
        );
    }
}
