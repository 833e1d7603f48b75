//! A switchover from a lock holder whose PostgreSQL is still in recovery: the lock goes to the
//! candidate directly, without a promotion of the holder first.
//!
//! A lock holder runs in recovery after PostgreSQL was restarted read-only (the demotion when the
//! DCS was gone, a data directory last used by a replica) or while its agent starts. Its next
//! step is a promotion ([`super::decide`], `PromotedBecauseHadLock`). With a switchover request
//! naming another member pending, that promotion is wasted: the new timeline lives for one loop,
//! the holder then stops for the switchover and rejoins with a rewind (or a new copy), and the
//! cluster waits twice (a fence, the proxies' handshake and a promotion, then the switchover). A
//! holder that has acknowledged nothing the candidate lacks hands the lock over instead: it
//! publishes its WAL position as the switchover's last LSN and releases the lock, and the
//! candidate's own rules take it from there (it waits for that LSN, fences, promotes).

use praetor_dcs::Cluster;

use super::decide::{asks_me_to_step_down, parse_iso8601, switchover_candidate, write_status};
use super::{Action, Decision, HaConfig, LocalState, Now, PeerStatus, Reason, Running};

/// The decision of lock holder `r`, still in recovery, when a due switchover request asks it to
/// step down for a member that has all its WAL ([`has_all_wal_of`]): publish its WAL position in
/// `status` (the last LSN the candidate and the other members wait for, as after a primary's
/// clean stop) and release the lock. PostgreSQL keeps running read-only; without the lock it
/// follows the new leader, on the timeline the candidate creates from a point at or past its own.
///
/// `None` (today's rule: promote, then carry out the switchover as a primary) when the holder is a
/// primary or a standby cluster's leader, when no request asks it to step down, when the request
/// is scheduled later (or its time does not parse), while paused unless the request names this
/// leader and a candidate (only those may act then, see `decide::paused`), when the candidate
/// the switchover path would choose ([`switchover_candidate`]: healthy, listed in `sync` under
/// synchronous replication) does not exist, when this holder's data directory may hold WAL it has
/// not replayed yet ([`wrote_its_timeline`]), and when the candidate lacks some of its WAL.
pub(super) fn from_recovery(
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
    r: &Running,
    now: Now,
) -> Option<Decision> {
    let me = cfg.name.as_str();
    if r.is_primary || super::standby::is_standby_cluster(cfg) {
        return None;
    }
    let req = &view.failover_request()?.value;
    if !asks_me_to_step_down(req, me) {
        return None;
    }
    if let Some(at) = &req.scheduled_at {
        if parse_iso8601(at).is_none_or(|t| t > now.unix_secs) {
            return None;
        }
    }
    if cfg.dynamic.pause && (req.leader.as_deref() != Some(me) || req.member.is_none()) {
        return None;
    }
    let peers = local.peers.as_deref().unwrap_or(&[]);
    let candidate = switchover_candidate(view, cfg, r, req, peers).ok()?;
    if !wrote_its_timeline(view, local, me, r) || !has_all_wal_of(candidate, r) {
        return None;
    }
    let mut actions: Vec<Action> = write_status(view, cfg, r).into_iter().collect();
    actions.push(Action::ReleaseLeader);
    Some(Decision {
        actions,
        reason: Reason::ManualFailoverHandingOver {
            candidate: candidate.name.clone(),
        },
    })
}

/// True when `candidate` holds every byte of WAL lock holder `r` holds: the same timeline, at or
/// past its position. Then the candidate has every commit the holder ever acknowledged on it, and
/// the holder can follow the candidate's new timeline without a rewind.
fn has_all_wal_of(candidate: &PeerStatus, r: &Running) -> bool {
    candidate.timeline == r.timeline && candidate.wal_position >= r.wal_position
}

/// True when member `me` created the timeline its PostgreSQL `r` runs on (its promotion record
/// says so, or the DCS `history` credits it), so every byte of WAL on that timeline is its own.
/// Only then is `r.wal_position` (where replay stands) the end of its WAL: PostgreSQL started in
/// recovery on a data directory a primary left (crashed or stopped by its deadline guard) replays
/// all of `pg_wal` before it accepts connections, and a clean stop leaves nothing past its
/// checkpoint. A data directory a replica left may still hold WAL received from the former
/// leader and not replayed when connections open: compared at the replay position, a candidate
/// missing that WAL would be chosen, and those commits, which today's promotion keeps, lost. Such
/// a holder (and one on timeline 1, which nobody's promotion created) keeps today's rule.
fn wrote_its_timeline(view: &Cluster, local: &LocalState, me: &str, r: &Running) -> bool {
    let recorded = local
        .promoted
        .as_ref()
        .is_some_and(|p| p.member == me && p.timeline == r.timeline);
    let history = view.history.as_ref().map_or(&[][..], |h| &h.value[..]);
    recorded || super::promotion::creator(history, r.timeline) == Some(me)
}
