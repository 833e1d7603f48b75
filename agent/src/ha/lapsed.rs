//! A leader whose renewals lapsed steps aside: the gray failure of a DCS link that stays slow but
//! alive (issue 14).
//!
//! The demotion deadline ([`super::demote_deadline_ms`]) stops a primary that could not renew its
//! lock within `loop_wait + retry_timeout`. When the link to the DCS is slow but alive, the lock
//! outlives that stop: a ZooKeeper session is kept alive by pings (slow ones too) and so is its
//! ephemeral leader znode; an etcd lease is kept alive by keep-alives that succeed, only late. The
//! member then still holds the lock at its next successful read, restarts PostgreSQL (read-only,
//! or as primary after a crash-like immediate stop), promotes it because "the lock is its own",
//! misses the next renewal again, and is stopped again: a new timeline every few seconds and no
//! writes for as long as the link stays slow, while members with a healthy link could lead (the
//! nemesis's ZooKeeper strict seed 9: timelines 2 to 5 within 22 s, ~35 s without writes).
//!
//! The rule: a member whose renewals lapsed (the runner stopped, or found stopped, its writable
//! PostgreSQL because the deadline passed without a renewal: [`super::LocalState::renewals_lapsed_ms`])
//! gives the lock up when it next sees it still holds it, and keeps out of the leader race for a
//! hold-off ([`hold_off_ms`]) unless another member led since (the runner forgets the lapse when it
//! reads another leader). A member with a healthy link takes over. When every member's link is
//! slow (the DCS itself is slow), each leader in turn lapses and steps aside; the hold-off ends
//! after `ttl`, so the cluster always ends up with a leader again (which may lapse again: no
//! member can keep a lease on such a DCS).
//!
//! The give-up has no time limit: a member whose renewals lapsed never takes back, as "the lock is
//! its own", the lock it held at the lapse; it releases it whenever it sees it, however long its
//! DCS reads failed first. The lapse is forgotten only when another member leads or this member
//! takes the lock anew (an acquisition, a healthy round trip of its own); the hold-off counts
//! again from a release the DCS confirmed. Why: on ZooKeeper the leader znode is ephemeral and
//! lives as long as the session, and a slow link that still carries the session's pings keeps it
//! alive for ever, so only this member's delete frees the lock for the others. The old rule gave
//! up the lock only within the hold-off (counted from the lapse): when the DCS reads timed out for
//! all of it, the next successful read found the lock still its own and the member promoted again
//! (nemesis ZooKeeper strict seed 1, slow-dcs: lapse at 9.3 s, timeline 4 "because I had the
//! session lock" at 21.2 s, lapse again, release at 26.2 s: a 12.29 s write gap, nobody else could
//! lead meanwhile).
//!
//! When the release itself keeps failing (the read that finds the lock its own gets through, the
//! delete does not, within `retry_timeout`) while the session lives, the lock would stay held for
//! ever: nobody else can lead and this member cannot write. After
//! [`releases_before_dropping_session`] failed releases in a row, the member gives up its DCS
//! session instead ([`super::Action::DropDcsSession`]): on ZooKeeper the session is closed (the
//! ephemeral lock goes at once) or, when the close does not get through either, abandoned (no
//! more pings: the servers expire it, and the lock, one session timeout later); on etcd the lease
//! is revoked, or forgotten so that it expires (each `touch_member` would otherwise refresh the
//! lease the lock lives on). The next DCS call opens a new session and writes the member key
//! again, never the lock. This is Patroni's stance on ZooKeeper, where a session that cannot renew
//! is a lost lock; Patroni has no counterpart on etcd (its leader key lives on the lease that
//! `touch_member` refreshes too).
//!
//! Where the hold-off counts from: the release the DCS confirmed, so that another member gets
//! `ttl` to take the lock over; when no other member could (see [`holding_off`]), the lapse itself,
//! since the hold-off then only paces this member's own attempts (sim seed 22,134).
//!
//! The others' side: the member holding off publishes it (`holding_off_ms`, the ms left of
//! [`hold_off_left_ms`], in its `/patroni` answer and its member key), and their race does not defer
//! to it ([`super::PeerStatus::holding_off`], [`super::is_healthiest`]). The former leader is usually
//! the member furthest ahead on WAL under asynchronous replication, so the others found it
//! healthier and waited, and nobody took the lock before its hold-off ended: the outage lasted at
//! least `ttl` for nothing. Synchronous modes keep their rules (only a member the `sync` key allows
//! is promoted), and a member that still runs as primary stops the race, holding off or not.
//!
//! Patroni differs: it demotes a leader whose `update_lock` failed without releasing the lock
//! (`demote('immediate-nolock')`), and the next cycle, still holding the key, promotes again
//! ("promoted self to leader because I had the session lock"), which is the cycle above. Its
//! ZooKeeper renewal makes no request (the session is the lease), so on ZooKeeper it rarely lapses;
//! this agent's renewals are checked requests (a `sync` and a read on ZooKeeper, a keep-alive and
//! a transaction on etcd), so a slow link lapses them, and this rule hands the lock on instead.

use super::decide::decision;
use super::{Action, Decision, HaConfig, LocalState, Now, Postgres, Reason, StopMode};
use praetor_config::DynamicConfig;
use praetor_dcs::Cluster;

/// How long (ms) a member whose renewals lapsed keeps out of the leader race: `ttl` (the time a
/// lock it gave up would have lived anyway), at least one `loop_wait` so the others get a cycle.
pub fn hold_off_ms(dynamic: &DynamicConfig) -> u64 {
    u64::from(dynamic.ttl.max(dynamic.loop_wait).max(1)) * 1000
}

/// The ms left of the hold-off that began when this member's renewals lapsed at monotonic
/// `lapsed_ms` ([`LocalState::renewals_lapsed_ms`]); `None` when there is none (no lapse, or over).
pub fn hold_off_left_ms(
    lapsed_ms: Option<u64>,
    dynamic: &DynamicConfig,
    now_ms: u64,
) -> Option<u64> {
    let at = lapsed_ms?;
    let until = at.saturating_add(hold_off_ms(dynamic));
    (now_ms < until).then(|| until - now_ms)
}

/// How many releases of the lock may fail in a row, while this member's renewals are lapsed,
/// before it drops its DCS session instead: `1 + ceil(retry_timeout / loop_wait)` (2 with
/// Patroni's defaults of 10 s and 10 s; 3 with `loop_wait` 1 and `retry_timeout` 2).
///
/// Why: each release is one attempt per cycle, bounded by `retry_timeout`. One failed attempt is a
/// request the DCS did not answer in time: it may be a blip. Patroni retries a DCS request for
/// `retry_timeout` before it calls the DCS unavailable (its `Retry` with
/// `deadline=retry_timeout`); this loop's next attempts come one `loop_wait` apart, so
/// `retry_timeout / loop_wait` more failures (rounded up) cover that window after the first.
/// Waiting longer costs the cluster its leader (nobody can take the lock meanwhile), while a
/// dropped session costs little: this member already runs read-only and holds off the race, and
/// its member key is written again on the new session.
pub fn releases_before_dropping_session(dynamic: &DynamicConfig) -> u32 {
    1 + dynamic
        .retry_timeout
        .max(1)
        .div_ceil(dynamic.loop_wait.max(1))
}

/// A member whose renewals lapsed and whose DCS reads keep failing gives its DCS session up
/// ([`Action::DropDcsSession`]) once [`releases_before_dropping_session`] attempts failed in a row
/// ([`LocalState::lapsed_lock_failures`]: the runner counts a failed read only while the lock may
/// still live on its session). Without a view it cannot see whether its lock still stands, and
/// it cannot release what it cannot read; waiting for a read that gets through is what cost
/// nemesis ZooKeeper strict seed 3 (build `9e22c5a`) 21.27 s without writes: a `slow-dcs` on
/// the leader held 20.1 s, the slow link's pings kept the session and its ephemeral lock alive
/// while every read timed out, and nobody else could lead until the link healed (with a link
/// that stays slow, for ever). A read-only member loses nothing by it: its member key is written
/// again on the next session. `None` when the rule does not apply: no lapse, fewer failures, or
/// maintenance mode (the last configuration read said paused).
pub fn drops_unseen_lock(local: &LocalState, cfg: &HaConfig) -> Option<Decision> {
    if cfg.dynamic.pause || local.renewals_lapsed_ms.is_none() {
        return None;
    }
    let failed = local.lapsed_lock_failures;
    (failed >= releases_before_dropping_session(&cfg.dynamic)).then(|| {
        decision(
            vec![Action::DropDcsSession],
            Reason::DroppingDcsSessionDcsUnreadable { failed },
        )
    })
}

/// A lock holder whose renewals lapsed gives the lock up, within its hold-off or after it (the
/// lock it sees is the one it held at the lapse: the runner forgets the lapse when it takes the
/// lock anew): whatever might still accept writes is stopped first (a start as primary is aborted;
/// normally the deadline already stopped it), then the leader key is deleted if it is still its
/// own ([`Action::ReleaseLeader`]: a compare-and-delete on etcd, a delete at the znode's version on
/// ZooKeeper), once per cycle (`loop_wait`) until the DCS confirms it. After
/// [`releases_before_dropping_session`] failed releases in a row
/// ([`LocalState::lapsed_lock_failures`]) the DCS session is given up instead
/// ([`Action::DropDcsSession`], [`Reason::DroppingDcsSessionReleasesFailed`]). `None` when the rule
/// does not apply: not the lock holder, no lapse, or maintenance mode (no automatic failover while
/// paused).
pub fn steps_aside(view: &Cluster, local: &LocalState, cfg: &HaConfig) -> Option<Decision> {
    if cfg.dynamic.pause || view.leader.as_ref().is_none_or(|l| l.name != cfg.name) {
        return None;
    }
    local.renewals_lapsed_ms?;
    let mut actions = vec![];
    let primary_start = local.task.is_some() && !local.starting_read_only;
    if primary_start {
        actions.push(Action::AbortTask);
    }
    let may_be_primary = match &local.postgres {
        Postgres::Running(r) => r.is_primary,
        Postgres::Starting => primary_start,
        Postgres::Stopped { .. } => primary_start,
    };
    if may_be_primary {
        actions.push(Action::Stop(StopMode::Immediate));
    }
    let failed = local.lapsed_lock_failures;
    if failed >= releases_before_dropping_session(&cfg.dynamic) {
        actions.push(Action::DropDcsSession);
        return Some(decision(
            actions,
            Reason::DroppingDcsSessionReleasesFailed { failed },
        ));
    }
    actions.push(Action::ReleaseLeader);
    Some(decision(actions, Reason::ReleasingLockRenewalsLapsed))
}

/// Whether this member keeps out of the leader race now: within its hold-off
/// ([`hold_off_left_ms`]), with the ms left. A switchover's candidate races anyway (the operator
/// named it). `another_could_lead`: another member answered that could take the lock (eligible,
/// allowed by the `sync` key; holding off too counts). With one, the hold-off counts from the
/// release the DCS confirmed, so that member gets `ttl` to take the lock over. Without one it
/// counts from the lapse itself ([`LocalState::lapsed_at_ms`]): holding off only paces this
/// member's own attempts then (a slow link lapses again at each), once per `ttl` from lapse to
/// lapse, and a member whose link came back, the DCS's quorum for instance, leads again no later
/// than `ttl` after it lapsed. Counted from the release, it stayed out for `ttl` after a release
/// made at its first read once the quorum was back, the lock having lived on for it (etcd and
/// ZooKeeper give every lease its whole `ttl` again when they elect a new leader): no leader for
/// `ttl` plus that read after the outage (sim seed 22,134, the other members tagged `nofailover`
/// or stopped with a diverged timeline).
pub fn holding_off(
    local: &LocalState,
    cfg: &HaConfig,
    now: Now,
    another_could_lead: bool,
) -> Option<Reason> {
    let from = if another_could_lead {
        local.renewals_lapsed_ms
    } else {
        local.lapsed_at_ms.or(local.renewals_lapsed_ms)
    };
    hold_off_left_ms(from, &cfg.dynamic, now.mono_ms)
        .map(|in_ms| Reason::HoldingOffAfterLapsedRenewals { in_ms })
}
