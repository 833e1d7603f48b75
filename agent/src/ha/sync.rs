//! Synchronous replication: which standbys the leader makes synchronous, and the order of the two
//! writes that keep "no acknowledged write is lost" true (Patroni's `synchronous_mode`).
//!
//! The leader keeps two things in step: the `synchronous_standby_names` GUC (which standbys a commit
//! waits for) and the DCS `sync` key (which standbys may be promoted). In `on` mode, adding a
//! standby: the GUC first, then the key once the standby has confirmed every WAL byte written before
//! the GUC took effect (so a promoted member never lacks an acknowledged commit). Removing: the key
//! first, then the GUC.
//! With no eligible standby, `synchronous_mode_strict` sets the GUC to `*` (commits wait for any
//! standby); otherwise replication falls back to asynchronous and, the key listing nobody, no automatic
//! failover happens until a synchronous standby is back (reference/patroni.md section 7, last row).
//!
//! Quorum mode (`synchronous_mode: quorum`) follows other rules, Patroni's `QuorumStateResolver`
//! (patroni/quorum.py): the GUC is `ANY numsync (standbys)`, the key lists voters and a `quorum`, and
//! any `numsync` standbys that acknowledged a commit meet any `quorum + 1` voters that elect a new
//! leader. See [`quorum_plan`] for the ordering, [`may_promote`] for the election and
//! [`before_promote`] for the promoted member's first GUC.

use std::collections::BTreeSet;

use praetor_config::SyncMode;
use praetor_dcs::{Cluster, SyncState};

use super::{Action, HaConfig, PeerStatus, Running};

/// A standby as the primary's `pg_stat_replication` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standby {
    /// Its `application_name` (the member name).
    pub name: String,
    /// `streaming`, `catchup`, ...
    pub state: String,
    /// `async`, `sync`, `quorum`, `potential`.
    pub sync_state: String,
    /// WAL position it confirmed flushed (bytes).
    pub flush_lsn: u64,
}

/// The members named in a `synchronous_standby_names` value we wrote (`FIRST 1 ("a","b")`,
/// `ANY 2 ("a","b","c")`, `*`, or empty). `None` for `*`.
pub fn guc_members(guc: &str) -> Option<Vec<String>> {
    let g = guc.trim();
    if g == "*" {
        return None;
    }
    let inner = match (g.find('('), g.rfind(')')) {
        (Some(a), Some(b)) if b > a => &g[a + 1..b],
        _ => g,
    };
    Some(
        inner
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// Renders the GUC for `members` in `mode` with `count` required confirmations.
pub fn render_guc(mode: SyncMode, count: u32, members: &[String], strict: bool) -> String {
    if members.is_empty() {
        return if strict { "*".into() } else { String::new() };
    }
    let list = members
        .iter()
        .map(|m| format!("\"{}\"", m.replace('"', "")))
        .collect::<Vec<_>>()
        .join(",");
    let n = (count.max(1) as usize).min(members.len());
    match mode {
        SyncMode::Quorum => format!("ANY {n} ({list})"),
        _ => format!("FIRST {n} ({list})"),
    }
}

/// The standbys eligible to be synchronous: streaming, known members, not tagged `nosync` or
/// `nostream`, within `maximum_lag_on_syncnode`; members that may be promoted (no `nofailover`)
/// first, as Patroni's `SyncHandler.current_state` prefers them (a commit acknowledged only by a
/// `nofailover` standby is on no member that can take over), then members already synchronous
/// (stability), then by name.
fn candidates(view: &Cluster, r: &Running, cfg: &HaConfig, current: &[String]) -> Vec<String> {
    let max_lag = cfg.dynamic.maximum_lag_on_syncnode.filter(|l| *l > 0);
    let mut out: Vec<&Standby> = r
        .standbys
        .iter()
        .filter(|s| s.state == "streaming" && s.name != cfg.name)
        .filter(|s| {
            view.member(&s.name)
                .is_some_and(|m| !m.data.tags.nosync && !m.data.tags.nostream)
        })
        .filter(|s| max_lag.is_none_or(|l| r.wal_position.saturating_sub(s.flush_lsn) <= l as u64))
        .collect();
    let nofailover = |name: &str| view.member(name).is_some_and(|m| m.data.tags.nofailover);
    out.sort_by_key(|s| {
        (
            nofailover(&s.name),
            !current.contains(&s.name),
            s.name.clone(),
        )
    });
    out.into_iter().map(|s| s.name.clone()).collect()
}

/// `synchronous_standby_names` as the quorum rules see it: `ANY n (list)` and `FIRST n (list)` both
/// mean "a commit waits for `n` of `list`"; a bare list is `FIRST 1`; empty is `(0, [])`. `None` for
/// `*` (any standby may acknowledge, so no set of members covers the acknowledgements).
pub fn parse_guc(guc: &str) -> Option<(u32, BTreeSet<String>)> {
    let members: BTreeSet<String> = guc_members(guc)?.into_iter().collect();
    if members.is_empty() {
        return Some((0, members));
    }
    let g = guc.trim();
    let head = g.find('(').map_or("", |i| &g[..i]);
    let n = head
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(1);
    Some((n.min(members.len() as u32), members))
}

/// Where quorum replication stands: the `sync` key (`voters` = its `sync_standby` list, `quorum`)
/// and `synchronous_standby_names` (`ANY numsync (sync)`). Names exclude the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuorumState {
    /// `sync.sync_standby`: the members a candidate asks to learn it holds every acknowledged commit.
    pub voters: BTreeSet<String>,
    /// `sync.quorum`: how many of the key's members (its leader and `voters`), other than itself, a
    /// candidate listed in `voters` must see at or behind its own WAL position (one more for a
    /// candidate not listed). `None` when the key has no `quorum` field.
    pub quorum: Option<u32>,
    /// The members `synchronous_standby_names` names; `None` for `*`.
    pub sync: Option<BTreeSet<String>>,
    /// How many of `sync` each commit waits for.
    pub numsync: u32,
}

/// One write of a quorum transition, in the order it must happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumStep {
    /// Write the `sync` key: this leader, `voters`, `quorum`.
    Key {
        /// The new `sync_standby` list.
        voters: BTreeSet<String>,
        /// The new `quorum`.
        quorum: u32,
    },
    /// Set `synchronous_standby_names` to `ANY numsync (sync)` (`sync: None`: `*`; empty: off).
    Guc {
        /// Standbys named.
        sync: Option<BTreeSet<String>>,
        /// Acknowledgements each commit waits for.
        numsync: u32,
    },
}

fn union_len(a: &BTreeSet<String>, b: Option<&BTreeSet<String>>) -> Option<u32> {
    b.map(|b| a.union(b).count() as u32)
}

/// The smallest `quorum` that keeps the key `voters` safe: every set of standbys that acknowledged a
/// commit meets every group a candidate can gather (Patroni's invariant in quorum.py,
/// `len(voters | sync) <= quorum + numsync`, leader left out of both). Three bounds:
/// - commits acknowledged under the current GUC (`current`) and, when given, under the GUC about to
///   be set (`next`): `|voters ∪ sync| - numsync`;
/// - commits acknowledged under earlier values: either the key gets no easier (`voters` a subset of
///   the current key's, `quorum` not lower: every group it allows, the current key allows), or enough
///   of `voters` are `confirmed` (caught up with the WAL written when the GUC last changed, so each
///   holds every earlier commit): `|voters| - |voters ∩ confirmed|`.
///
/// `None` when no quorum can make it safe (a `*` GUC while voters are named). An empty `voters` is
/// always safe: nobody can be promoted automatically.
fn quorum_needed(
    voters: &BTreeSet<String>,
    state: &QuorumState,
    next: Option<(&Option<BTreeSet<String>>, u32)>,
    confirmed: &BTreeSet<String>,
) -> Option<u32> {
    if voters.is_empty() {
        return Some(0);
    }
    let mut q = union_len(voters, state.sync.as_ref())?.saturating_sub(state.numsync);
    if let Some((sync, numsync)) = next {
        q = q.max(union_len(voters, sync.as_ref())?.saturating_sub(numsync));
    }
    let unconfirmed = voters.difference(confirmed).count() as u32;
    let current_q = state.quorum.unwrap_or(0);
    let cover = if voters.is_subset(&state.voters) {
        unconfirmed.min(current_q)
    } else {
        unconfirmed
    };
    Some(q.max(cover))
}

/// The next writes that move quorum replication towards `desired` (the eligible streaming standbys)
/// with `wanted` acknowledgements per commit (`synchronous_node_count`), never breaking "no
/// acknowledged commit is lost": at every moment any set of standbys that can acknowledge a commit
/// meets every group of key members that can elect a new leader (Patroni's `QuorumStateResolver`).
///
/// The goal is Patroni's: `voters = sync = desired`, `numsync = min(wanted, |desired|)`,
/// `quorum = |desired| - numsync`. The order follows from the invariant (rows in this module's tests):
/// - the GUC changes first when that is safe with the current key: the first standby joins
///   (`ANY 1 (b)` before the key names `b`), `numsync` grows (count 1 → 2: `ANY 2` first, then
///   `quorum` lowered once both standbys confirmed), a gone standby leaves the GUC (`ANY 1 (b)`
///   after `ANY 1 (b,c)`; then the key, with `quorum` lowered once `b` confirmed);
/// - otherwise the key first, then the GUC in the same loop (the key write is confirmed before the
///   GUC changes): a standby joins a non-empty set (`{b,c}`, quorum 1, before `ANY 1 (b,c)`),
///   `numsync` shrinks (count 2 → 1: quorum 0 → 1, then `ANY 1`), the last standby leaves (key empty,
///   then the GUC off);
/// - a key write that must follow a GUC change waits for a later loop, once PostgreSQL shows the
///   new value.
///
/// Returns at most one key write followed by at most one GUC change; empty when nothing is to do
/// or a standby has yet to confirm. `strict` (`synchronous_mode_strict`): with nobody desired the
/// GUC becomes `*` instead of off.
pub fn quorum_plan(
    state: &QuorumState,
    desired: &BTreeSet<String>,
    confirmed: &BTreeSet<String>,
    wanted: u32,
    strict: bool,
) -> Vec<QuorumStep> {
    let numsync = wanted.max(1).min(desired.len() as u32);
    let sync = if desired.is_empty() && strict {
        None
    } else {
        Some(desired.clone())
    };
    let guc_done = state.sync == sync && state.numsync == numsync;
    let key_step = |voters: &BTreeSet<String>, quorum: u32| {
        (state.voters != *voters || state.quorum != Some(quorum)).then(|| QuorumStep::Key {
            voters: voters.clone(),
            quorum,
        })
    };
    // A quorum as large as the voters would let nobody be elected: Patroni never writes one.
    let usable = |voters: &BTreeSet<String>, q: u32| voters.is_empty() || q < voters.len() as u32;
    if guc_done {
        return match quorum_needed(desired, state, None, confirmed) {
            Some(q) if usable(desired, q) => key_step(desired, q).into_iter().collect(),
            _ => vec![],
        };
    }
    let guc = QuorumStep::Guc {
        sync: sync.clone(),
        numsync,
    };
    let guc_safe = state.voters.is_empty()
        || union_len(&state.voters, sync.as_ref())
            .is_some_and(|n| n <= state.quorum.unwrap_or(0) + numsync);
    if guc_safe {
        return vec![guc];
    }
    let kept: BTreeSet<String> = state.voters.intersection(desired).cloned().collect();
    let joined: BTreeSet<String> = state.voters.union(desired).cloned().collect();
    // The goal's voters, else those of the key that stay (none, when every listed standby left),
    // else the key and the newcomers together; none fitting: wait for standbys to confirm.
    for voters in [desired.clone(), kept, joined] {
        let Some(q) = quorum_needed(&voters, state, Some((&sync, numsync)), confirmed) else {
            continue;
        };
        if usable(&voters, q) {
            return key_step(&voters, q).into_iter().chain([guc]).collect();
        }
    }
    vec![]
}

/// What the leader must do this loop to move the GUC and the `sync` key towards the desired set.
/// `catchup_lsn` is the leader's WAL position when it last changed the GUC: a standby joins the key
/// only once it confirmed that far.
pub fn sync_actions(view: &Cluster, r: &Running, cfg: &HaConfig, catchup_lsn: u64) -> Vec<Action> {
    let me = cfg.name.as_str();
    let key: Vec<String> = view
        .sync
        .as_ref()
        .filter(|s| s.value.leader.as_deref() == Some(me))
        .map(|s| s.value.members())
        .unwrap_or_default();
    let key_exists_for_me = view
        .sync
        .as_ref()
        .is_some_and(|s| s.value.leader.as_deref() == Some(me));
    // `on` and `off` keep no quorum (Patroni reads a missing one as 0).
    let write_key = |members: Vec<String>| {
        Action::WriteSync(SyncState {
            leader: Some(me.to_string()),
            sync_standby: (!members.is_empty()).then(|| members.join(",")),
            quorum: None,
        })
    };
    let mode = cfg.dynamic.synchronous_mode;
    if mode == SyncMode::Off {
        let mut actions = vec![];
        if !key.is_empty() {
            actions.push(write_key(vec![]));
        }
        if !r.sync_standby_names.trim().is_empty() {
            actions.push(Action::SetSyncStandbyNames(String::new()));
        }
        return actions;
    }
    if mode == SyncMode::Quorum {
        return quorum_actions(view, r, cfg, catchup_lsn);
    }
    let strict = cfg.dynamic.synchronous_mode_strict;
    let count = cfg.dynamic.synchronous_node_count.max(1);
    let mut desired = candidates(view, r, cfg, &key);
    desired.truncate(count as usize);
    // Removing: the key first.
    let kept: Vec<String> = key
        .iter()
        .filter(|k| desired.contains(k))
        .cloned()
        .collect();
    let guc = render_guc(mode, count, &desired, strict);
    let guc_changes = r.sync_standby_names.trim() != guc;
    if kept.len() != key.len() || !key_exists_for_me {
        // The GUC follows in the same loop, after the key write succeeded (the runner stops at a
        // failed action): the key then lists `kept`, all named by the new GUC, so every listed
        // member still holds every acknowledged commit. A loop later, as it was, left the commits
        // waiting for a lost synchronous standby one more loop under strict mode (the nemesis:
        // a replica killed or its link cut, ~1.2 s of a 5 s outage at load 30).
        let mut actions = vec![write_key(kept)];
        if guc_changes {
            actions.push(Action::SetSyncStandbyNames(guc));
        }
        return actions;
    }
    if guc_changes {
        return vec![Action::SetSyncStandbyNames(guc)];
    }
    // Adding: once the GUC names them and they confirmed everything written before it took effect.
    let caught_up: Vec<String> = desired
        .iter()
        .filter(|d| !key.contains(d))
        .filter(|d| {
            r.standbys.iter().any(|s| {
                &s.name == *d
                    && matches!(s.sync_state.as_str(), "sync" | "quorum")
                    && s.flush_lsn >= catchup_lsn
            })
        })
        .cloned()
        .collect();
    if caught_up.is_empty() {
        return vec![];
    }
    let mut members = key;
    members.extend(caught_up);
    vec![write_key(members)]
}

/// Quorum mode, the leader's part: take the `sync` key over after a failover, then follow
/// [`quorum_plan`] from what the key and PostgreSQL show now.
///
/// After a failover the key still names the former leader: the new leader first writes it with
/// itself as leader and the former leader among the voters in its own place, `quorum` unchanged
/// (Patroni's `leader_wanted != leader` step), matching the GUC [`before_promote`] set; the former
/// leader leaves both later, as any gone standby does. Nothing changes while a walsender still
/// counts a standby the GUC no longer names (PostgreSQL has not applied the last reload yet).
fn quorum_actions(view: &Cluster, r: &Running, cfg: &HaConfig, catchup_lsn: u64) -> Vec<Action> {
    let me = cfg.name.as_str();
    let write = |voters: &BTreeSet<String>, quorum: u32| {
        Action::WriteSync(SyncState {
            leader: Some(me.to_string()),
            sync_standby: (!voters.is_empty())
                .then(|| voters.iter().cloned().collect::<Vec<_>>().join(",")),
            quorum: Some(quorum),
        })
    };
    let key = view.sync.as_ref().map(|s| &s.value);
    let mut voters: BTreeSet<String> = key
        .map(|k| k.members())
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v != me)
        .collect();
    let quorum = key.and_then(|k| k.quorum);
    match key.and_then(|k| k.leader.as_deref()) {
        Some(l) if l == me => {}
        Some(former) => {
            if !voters.is_empty() {
                voters.insert(former.to_string());
            }
            return vec![write(&voters, quorum.unwrap_or(0))];
        }
        None => return vec![write(&BTreeSet::new(), 0)],
    }
    let (numsync, sync) = match parse_guc(&r.sync_standby_names) {
        Some((n, s)) => (n, Some(s)),
        None => (0, None),
    };
    if let Some(named) = &sync {
        let stale = r.standbys.iter().any(|st| {
            matches!(st.sync_state.as_str(), "sync" | "quorum" | "potential")
                && !named.contains(&st.name)
        });
        if stale {
            return vec![];
        }
    }
    let desired: BTreeSet<String> = candidates(view, r, cfg, &[]).into_iter().collect();
    let confirmed: BTreeSet<String> = r
        .standbys
        .iter()
        .filter(|st| {
            matches!(st.sync_state.as_str(), "sync" | "quorum")
                && st.flush_lsn >= catchup_lsn
                && sync.as_ref().is_some_and(|s| s.contains(&st.name))
        })
        .map(|st| st.name.clone())
        .collect();
    let state = QuorumState {
        voters,
        quorum,
        sync,
        numsync,
    };
    let strict = cfg.dynamic.synchronous_mode_strict;
    let wanted = cfg.dynamic.synchronous_node_count;
    quorum_plan(&state, &desired, &confirmed, wanted, strict)
        .into_iter()
        .map(|step| match step {
            QuorumStep::Key { voters, quorum } => write(&voters, quorum),
            QuorumStep::Guc { sync: None, .. } => Action::SetSyncStandbyNames("*".into()),
            QuorumStep::Guc {
                sync: Some(names),
                numsync,
            } => Action::SetSyncStandbyNames(render_guc(
                SyncMode::Quorum,
                numsync,
                &names.into_iter().collect::<Vec<_>>(),
                false,
            )),
        })
        .collect()
}

/// What a replica sets before `pg_promote()` under synchronous replication, so that it never
/// acknowledges a commit the next election could lose:
/// - `synchronous_mode_strict` in `on` mode: `*` (any standby), narrowed by the next loop;
/// - quorum mode with voters in the key (Patroni's `_process_quorum_prepromote`): `ANY n (the key's
///   leader and voters, less this member)` with `n = |leader and voters| - quorum - 1`, one more
///   when this member was not a voter, at least 1 when strict. That keeps the key's invariant true
///   once [`quorum_actions`] rewrites the key with this member as its leader.
pub fn before_promote(view: &Cluster, cfg: &HaConfig) -> Option<Action> {
    let strict = cfg.dynamic.synchronous_mode_strict;
    match cfg.dynamic.synchronous_mode {
        SyncMode::Off => None,
        SyncMode::On => strict.then(|| Action::SetSyncStandbyNames("*".into())),
        SyncMode::Quorum => {
            let key = view.sync.as_ref().map(|s| &s.value);
            let voters = key.map(|k| k.members()).unwrap_or_default();
            let Some(leader) = key
                .and_then(|k| k.leader.clone())
                .filter(|_| !voters.is_empty())
            else {
                return strict.then(|| Action::SetSyncStandbyNames("*".into()));
            };
            let quorum = key.and_then(|k| k.quorum).unwrap_or(0) as usize;
            let mut members: BTreeSet<String> = voters.iter().cloned().collect();
            members.insert(leader);
            let mut numsync = members.len().saturating_sub(quorum + 1);
            if !members.remove(&cfg.name) {
                numsync += 1;
            }
            let numsync = numsync.max(usize::from(strict)).min(members.len());
            if numsync == 0 || members.is_empty() {
                return strict.then(|| Action::SetSyncStandbyNames("*".into()));
            }
            Some(Action::SetSyncStandbyNames(render_guc(
                SyncMode::Quorum,
                numsync as u32,
                &members.into_iter().collect::<Vec<_>>(),
                false,
            )))
        }
    }
}

/// In `on` mode, whether the `sync` key lets member `name` be promoted: it is listed, or it is the
/// key's leader and the key lists nobody who can have been promoted since, that is nobody, or only
/// members whose keys in `view` say `nofailover` (see [`may_promote`]).
pub fn listed_may_promote(view: &Cluster, sync: &SyncState, name: &str) -> bool {
    let listed = sync.members();
    let promotable = |l: &String| view.member(l).is_none_or(|m| !m.data.tags.nofailover);
    listed.iter().any(|l| l == name)
        || (sync.leader.as_deref() == Some(name) && !listed.iter().any(promotable))
}

/// Whether this member (on `my_timeline` at WAL position `my_wal`) may be promoted automatically
/// under synchronous replication; `Err` says why not. `peers` are the members that answered this
/// loop.
///
/// - no `sync` key: synchronous replication was never activated; any member may (asynchronous rules).
/// - `on`: it is listed in the `sync` key (the only members guaranteed to hold every acknowledged
///   commit), or it is the key's leader and the key lists nobody (replication fell back to
///   asynchronous while it led: it alone holds every acknowledged commit) or only `nofailover`
///   members (none of them can have been promoted and acknowledged commits it lacks; without this
///   a leader that lost its lock while its only synchronous standby was tagged `nofailover` left the
///   cluster without a leader for good: the simulation's seed 93).
/// - `quorum` (Patroni's `_is_healthiest_node`): the key's members (its leader and voters) vote; a
///   member votes when it answered with PostgreSQL running as a replica at or behind this member,
///   comparing (timeline, WAL position) as [`super::election::is_healthiest`] does: a voter on a
///   later timeline holds commits of a promotion this member never saw, whatever its LSN (a voter
///   on timeline 2 at LSN 1,200 does not vote for a member left on timeline 1 at LSN 1,500), and a
///   voter whose timeline is unknown (0) does not vote. A stopped voter votes only when it diverged
///   ([`PeerStatus::diverged`], at its switch point: see [`super::diverged_vote`]). A
///   voter needs `quorum` votes, anyone else `quorum + 1`: since every commit was acknowledged by
///   `numsync` of the voters and `quorum + numsync >= |voters|`, one of those groups holds every
///   acknowledged commit and this member is at least as far. The key's own leader (the former
///   primary, back as a replica) counts as a voter: a voter may have been promoted since, with
///   votes, without rewriting the key. A key listing no voter (replication fell back to
///   asynchronous) has quorum 0: its leader needs no vote, and no other member may be promoted
///   automatically. Members ahead are [`super::election::is_healthiest`]'s
///   business.
pub fn may_promote(
    view: &Cluster,
    cfg: &HaConfig,
    my_timeline: u32,
    my_wal: u64,
    peers: &[PeerStatus],
) -> Result<(), super::Reason> {
    let not_sync = Err(super::Reason::NotSynchronousStandby);
    if cfg.dynamic.synchronous_mode == SyncMode::Off {
        return Ok(());
    }
    let Some(sync) = view.sync.as_ref().map(|s| &s.value) else {
        // No `sync` key at all: no leader has activated synchronous replication yet (a leader writes
        // the key before it names any standby in synchronous_standby_names, and nothing deletes
        // it), so every commit so far was acknowledged asynchronously and the asynchronous rules
        // apply (Patroni's `sync_mode_is_active`). Refusing here left a cluster whose leader died
        // before its first key write without a leader for good (sim seed 29328).
        return Ok(());
    };
    let listed = sync.members();
    if cfg.dynamic.synchronous_mode != SyncMode::Quorum {
        // The key's own leader may race when the key lists nobody: replication fell back to
        // asynchronous while it led, so no standby holds its last commits and no other member can
        // have been promoted since (none is listed). Without this, a leader that lost its lock then
        // (a DCS outage, a crash) left the cluster without a leader for good (the simulation's
        // seeds 9 and 150). Patroni lets the key's leader race too (`SyncState.matches(name,
        // check_leader=True)`); Praetor only while the list is empty: a listed standby may have been
        // promoted (and acknowledged commits) before writing the key, which its former leader lacks.
        return if listed_may_promote(view, sync, &cfg.name) {
            Ok(())
        } else {
            not_sync
        };
    }
    let Some(leader) = sync.leader.as_deref() else {
        return not_sync;
    };
    // The key's own leader (the former primary) is one of the voting set, like the voters: it
    // needs `quorum` votes, since a voter may have been promoted with votes (and acknowledged
    // commits it lacks) without rewriting the key, the DCS gone meanwhile (the simulation found a
    // former leader promoted by this key, without its successor's commits). A key listing no voter
    // has quorum 0: the key's leader needs no vote, as it alone acknowledged every commit
    // (replication fell back to asynchronous); refusing it left the cluster without a leader for
    // good (seed 14, quorum mode's twin of seed 9 in `on` mode).
    let in_key = leader == cfg.name || listed.contains(&cfg.name);
    if listed.is_empty() && leader != cfg.name {
        return not_sync;
    }
    let voting = |n: &str| n == leader || listed.iter().any(|l| l == n);
    let voters: Vec<String> = peers
        .iter()
        .filter(|p| p.name != cfg.name && voting(&p.name))
        .filter(|p| (p.is_running || p.diverged) && !p.is_running_primary)
        .filter(|p| {
            p.wal_position > 0
                && p.timeline > 0
                && (p.timeline, p.wal_position) <= (my_timeline, my_wal)
        })
        .map(|p| p.name.clone())
        .collect();
    let needed = sync.quorum.unwrap_or(0) + u32::from(!in_key);
    if voters.len() as u32 >= needed {
        Ok(())
    } else {
        Err(super::Reason::QuorumNotReached { needed, voters })
    }
}

/// Quorum mode, as member `me` (`cfg.name`, PostgreSQL `r`) sees it: whether the other member
/// `name` could gather the votes [`may_promote`] asks of it, counting the members that answered
/// this loop (`peers`) and `me` itself as voters. `false` when `name` did not answer. An estimate
/// for whom to wait for (a switchover candidate, members that may take over after a leader stepped
/// down): each member still decides its own promotion with [`may_promote`].
pub fn could_promote(
    view: &Cluster,
    cfg: &HaConfig,
    r: &Running,
    peers: &[PeerStatus],
    name: &str,
) -> bool {
    let Some(them) = peers.iter().find(|p| p.name == name) else {
        return false;
    };
    let mut voters: Vec<PeerStatus> = peers.iter().filter(|p| p.name != name).cloned().collect();
    voters.push(PeerStatus {
        name: cfg.name.clone(),
        is_running_primary: r.is_primary,
        is_running: true,
        wal_position: r.wal_position,
        timeline: r.timeline,
        nofailover: cfg.tags.nofailover,
        failover_priority: cfg.tags.failover_priority.unwrap_or(1),
        diverged: false,
        // Votes depend on none of these (only `is_healthiest` and the switchover wait read them).
        holding_off: false,
        slot_copies: None,
        cluster_unlocked: false,
    });
    let as_them = HaConfig {
        name: name.to_string(),
        ..cfg.clone()
    };
    may_promote(view, &as_them, them.timeline, them.wal_position, &voters).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guc_round_trip() {
        let m = vec!["a".to_string(), "b".to_string()];
        assert_eq!(
            render_guc(SyncMode::On, 1, &m, false),
            r#"FIRST 1 ("a","b")"#
        );
        assert_eq!(
            render_guc(SyncMode::Quorum, 2, &m, false),
            r#"ANY 2 ("a","b")"#
        );
        assert_eq!(render_guc(SyncMode::On, 1, &[], true), "*");
        assert_eq!(render_guc(SyncMode::On, 1, &[], false), "");
        assert_eq!(guc_members(r#"FIRST 1 ("a","b")"#), Some(m));
        assert_eq!(guc_members("*"), None);
        assert_eq!(guc_members(""), Some(vec![]));
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    /// Key `voters`/`quorum`, GUC `ANY numsync (sync)`.
    fn st(voters: &[&str], quorum: u32, sync: &[&str], numsync: u32) -> QuorumState {
        QuorumState {
            voters: set(voters),
            quorum: Some(quorum),
            sync: Some(set(sync)),
            numsync,
        }
    }

    fn key(voters: &[&str], quorum: u32) -> QuorumStep {
        QuorumStep::Key {
            voters: set(voters),
            quorum,
        }
    }

    fn guc(sync: &[&str], numsync: u32) -> QuorumStep {
        QuorumStep::Guc {
            sync: Some(set(sync)),
            numsync,
        }
    }

    #[test]
    fn parse_guc_reads_count_and_names() {
        assert_eq!(
            parse_guc(r#"ANY 2 ("b","c","d")"#),
            Some((2, set(&["b", "c", "d"])))
        );
        assert_eq!(parse_guc(r#"FIRST 1 ("b")"#), Some((1, set(&["b"]))));
        assert_eq!(parse_guc("b, c"), Some((1, set(&["b", "c"]))));
        assert_eq!(parse_guc(""), Some((0, set(&[]))));
        assert_eq!(parse_guc("*"), None);
    }

    /// Each row is one step of a transition: (name, state, desired, confirmed, wanted, strict,
    /// the writes in order).
    #[test]
    fn quorum_plan_orders_key_and_guc_writes() {
        type Case = (
            &'static str,
            QuorumState,
            &'static [&'static str],
            &'static [&'static str],
            u32,
            bool,
            Vec<QuorumStep>,
        );
        #[rustfmt::skip]
        let rows: Vec<Case> = vec![
            ("first standby: the GUC first (an empty key lets nobody promote)",
             st(&[], 0, &[], 0), &["b"], &[], 1, false, vec![guc(&["b"], 1)]),
            ("first standby: the key waits until it confirmed",
             st(&[], 0, &["b"], 1), &["b"], &[], 1, false, vec![]),
            ("first standby: then the key",
             st(&[], 0, &["b"], 1), &["b"], &["b"], 1, false, vec![key(&["b"], 0)]),
            ("1 -> 2 standbys: the key grows (quorum 1) before the GUC widens",
             st(&["b"], 0, &["b"], 1), &["b", "c"], &["b"], 1, false, vec![key(&["b", "c"], 1), guc(&["b", "c"], 1)]),
            ("2 standbys, steady: nothing",
             st(&["b", "c"], 1, &["b", "c"], 1), &["b", "c"], &["b", "c"], 1, false, vec![]),
            ("2 -> 1 standbys: the GUC narrows first",
             st(&["b", "c"], 1, &["b", "c"], 1), &["b"], &["b"], 1, false, vec![guc(&["b"], 1)]),
            ("2 -> 1 standbys: the key shrinks once the remaining standby confirmed",
             st(&["b", "c"], 1, &["b"], 1), &["b"], &["b"], 1, false, vec![key(&["b"], 0)]),
            ("2 -> 1 standbys: not before",
             st(&["b", "c"], 1, &["b"], 1), &["b"], &[], 1, false, vec![]),
            ("count 1 -> 2: ANY 2 first",
             st(&["b", "c"], 1, &["b", "c"], 1), &["b", "c"], &["b", "c"], 2, false, vec![guc(&["b", "c"], 2)]),
            ("count 1 -> 2: quorum stays 1 while one standby has not confirmed",
             st(&["b", "c"], 1, &["b", "c"], 2), &["b", "c"], &["b"], 2, false, vec![]),
            ("count 1 -> 2: then quorum rewritten to 0",
             st(&["b", "c"], 1, &["b", "c"], 2), &["b", "c"], &["b", "c"], 2, false, vec![key(&["b", "c"], 0)]),
            ("count 2 -> 1: quorum rewritten to 1 first, then ANY 1",
             st(&["b", "c"], 0, &["b", "c"], 2), &["b", "c"], &["b", "c"], 1, false, vec![key(&["b", "c"], 1), guc(&["b", "c"], 1)]),
            ("count 2, a standby of two left: key first (quorum stays 0), then ANY 1",
             st(&["b", "c"], 0, &["b", "c"], 2), &["b"], &[], 2, false, vec![key(&["b"], 0), guc(&["b"], 1)]),
            ("three standbys, count 2: ANY 2 of three, then quorum 1",
             st(&[], 0, &[], 0), &["b", "c", "d"], &[], 2, false, vec![guc(&["b", "c", "d"], 2)]),
            ("three standbys, count 2: the key with quorum 1",
             st(&[], 0, &["b", "c", "d"], 2), &["b", "c", "d"], &["b", "c", "d"], 2, false, vec![key(&["b", "c", "d"], 1)]),
            ("the last standby left: the key empties first, then the GUC",
             st(&["b"], 0, &["b"], 1), &[], &[], 1, false, vec![key(&[], 0), guc(&[], 0)]),
            ("after a failover: the former leader (a) and c leave as c is replaced by d",
             st(&["a", "c"], 1, &["a", "c"], 1), &["d"], &[], 1, false, vec![key(&[], 0), guc(&["d"], 1)]),
        ];
        for (name, state, desired, confirmed, wanted, strict, want) in rows {
            let got = quorum_plan(&state, &set(desired), &set(confirmed), wanted, strict);
            assert_eq!(got, want, "{name}");
        }
        let strict_last = quorum_plan(&st(&["b"], 0, &["b"], 1), &set(&[]), &set(&[]), 1, true);
        assert_eq!(
            strict_last,
            vec![
                key(&[], 0),
                QuorumStep::Guc {
                    sync: None,
                    numsync: 0
                }
            ],
            "strict: the last standby left: the key empties, then '*'"
        );
        let from_first = QuorumState {
            quorum: None,
            ..st(&["b"], 0, &["b"], 1)
        };
        assert_eq!(
            quorum_plan(&from_first, &set(&["b"]), &set(&["b"]), 1, false),
            vec![key(&["b"], 0)],
            "from `on` to quorum: the key gets its quorum field"
        );
    }

    /// Whether `state` keeps Patroni's invariant: any `numsync` of `sync` meet any `quorum + 1` of
    /// `voters`.
    fn overlaps(s: &QuorumState) -> bool {
        if s.voters.is_empty() {
            return true;
        }
        let Some(sync) = &s.sync else { return false };
        s.voters.union(sync).count() as u32 <= s.quorum.unwrap_or(0) + s.numsync
    }

    fn apply(s: &mut QuorumState, step: &QuorumStep) {
        match step.clone() {
            QuorumStep::Key { voters, quorum } => {
                s.voters = voters;
                s.quorum = Some(quorum);
            }
            QuorumStep::Guc { sync, numsync } => {
                s.sync = sync;
                s.numsync = numsync;
            }
        }
    }

    /// From every steady state of up to three standbys to every other desired set and count, the
    /// plan never writes a state that breaks the invariant and reaches Patroni's goal state. A GUC
    /// change leaves every standby unconfirmed for one loop.
    #[test]
    fn quorum_plan_keeps_the_invariant_and_converges() {
        let all = ["b", "c", "d"];
        let subsets: Vec<BTreeSet<String>> = (0..8u8)
            .map(|m| {
                (0..3)
                    .filter(|i| m & (1 << i) != 0)
                    .map(|i| all[i].to_string())
                    .collect()
            })
            .collect();
        for from in &subsets {
            for from_wanted in 1..=3u32 {
                let n = from_wanted.min(from.len() as u32);
                let start = QuorumState {
                    voters: from.clone(),
                    quorum: Some(from.len() as u32 - n),
                    sync: Some(from.clone()),
                    numsync: n,
                };
                for to in &subsets {
                    for wanted in 1..=3u32 {
                        let mut s = start.clone();
                        let mut just_changed = false;
                        let mut done = false;
                        for _ in 0..12 {
                            let confirmed = if just_changed {
                                BTreeSet::new()
                            } else {
                                to.clone()
                            };
                            let steps = quorum_plan(&s, to, &confirmed, wanted, false);
                            just_changed = false;
                            if steps.is_empty() && !confirmed.is_empty()
                                || steps.is_empty() && to.is_empty()
                            {
                                done = true;
                                break;
                            }
                            for step in &steps {
                                apply(&mut s, step);
                                just_changed |= matches!(step, QuorumStep::Guc { .. });
                                assert!(overlaps(&s), "{from:?}/{from_wanted} -> {to:?}/{wanted}: {s:?} after {step:?}");
                            }
                        }
                        let n = wanted.min(to.len() as u32);
                        assert!(
                            done,
                            "{from:?}/{from_wanted} -> {to:?}/{wanted}: no end, at {s:?}"
                        );
                        assert_eq!(
                            (
                                s.voters.clone(),
                                s.quorum.unwrap_or(0),
                                s.sync.clone(),
                                s.numsync
                            ),
                            (to.clone(), to.len() as u32 - n, Some(to.clone()), n),
                            "{from:?}/{from_wanted} -> {to:?}/{wanted}"
                        );
                    }
                }
            }
        }
    }
}
