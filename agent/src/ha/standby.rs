//! Standby clusters: the rules of `decide` while the dynamic configuration has a `standby_cluster`
//! section in force ([`praetor_config::DynamicConfig::standby`]).
//!
//! Patroni 4.1's behaviour (patroni/ha.py: `bootstrap_standby_leader`, `_get_node_to_follow`,
//! `process_healthy_cluster`, `process_unhealthy_cluster`, `follow`, `recover`):
//! - the member that wins the `initialize` race clones its data directory from the remote (the host
//!   and port of the section, with the section's `create_replica_methods`) and takes the lock: it is
//!   the *standby leader*, a PostgreSQL in recovery streaming from the remote, never promoted;
//! - the lock holder keeps its PostgreSQL pointed at the remote (a primary holding the lock is
//!   demoted to a standby leader: that is how `demote-cluster` works), and manages its replicas'
//!   slots as a leader does;
//! - the other members clone from and stream from the standby leader (cascading), or their
//!   `replicatefrom` member;
//! - with no lock holder, replicas follow the remote meanwhile, and the healthiest takes the lock and
//!   becomes the standby leader by following the remote, without promoting;
//! - removing the section (`promote-cluster`, `edit-config`) makes the standby leader a lock holder
//!   running as a replica, which the ordinary rules promote; its replicas already follow it.
//!
//! The remote is an [`Upstream`] whose member is [`REMOTE_MEMBER`]; the runner writes its
//! `primary_slot_name`, `restore_command`, `archive_cleanup_command` and `recovery_min_apply_delay`
//! from the section (see `postgres::Instance::write_config`).

use praetor_dcs::Cluster;

use super::decide::{asks_me_to_step_down, decision, lock_holder_upkeep, switchover_from_leader};
use super::{
    slots, Action, Decision, HaConfig, LocalState, Now, Reason, Running, StartAs, StopMode,
    Upstream,
};

/// The member name of the remote an [`Upstream`] points at in a standby cluster (Patroni names its
/// `RemoteMember` `remote_member:<uuid>`; no member of a cluster is called so).
pub const REMOTE_MEMBER: &str = "remote_member:standby_cluster";

impl Upstream {
    /// The remote of `standby_cluster`, not a member of this cluster.
    pub fn is_remote(&self) -> bool {
        self.member == REMOTE_MEMBER
    }
}

/// True when `up` is the remote of `dynamic`'s `standby_cluster`: named so by `decide`
/// ([`Upstream::is_remote`]), or at its host and port (the runner rewrites the configuration of a
/// running replica from the `primary_conninfo` it observes, which carries no member name).
pub fn is_remote_upstream(dynamic: &praetor_config::DynamicConfig, up: &Upstream) -> bool {
    up.is_remote()
        || dynamic
            .standby()
            .and_then(|s| s.remote())
            .is_some_and(|(host, port)| host == up.host && port == up.port)
}

/// True when the dynamic configuration makes this a standby cluster.
pub fn is_standby_cluster(cfg: &HaConfig) -> bool {
    cfg.dynamic.standby().is_some()
}

/// The remote to clone and stream from: `standby_cluster.host` and `port` (5432 by default); `None`
/// outside a standby cluster, or when the section has only a `restore_command` (WAL from the archive
/// only).
pub fn remote_upstream(cfg: &HaConfig) -> Option<Upstream> {
    let (host, port) = cfg.dynamic.standby()?.remote()?;
    Some(Upstream {
        member: REMOTE_MEMBER.to_string(),
        host,
        port,
    })
}

/// Whether a running replica already streams from `up` (`None`: from nobody).
fn streams_from(r: &Running, up: Option<&Upstream>) -> bool {
    r.upstream == up.map(|u| (u.host.clone(), u.port))
}

/// Empty data directory and no `initialize` in a standby cluster: race for `initialize`, then clone
/// the standby leader from the remote (Patroni's `bootstrap_standby_leader`), with pg_basebackup or
/// the section's `create_replica_methods`. A section with only `restore_command` clones with the
/// methods that need no connection (`no_leader`). `None` outside a standby cluster.
pub(super) fn bootstrap(cfg: &HaConfig) -> Option<Decision> {
    if !is_standby_cluster(cfg) {
        return None;
    }
    let clone = match remote_upstream(cfg) {
        Some(remote) => Action::Clone {
            source: remote.clone(),
            leader: remote,
        },
        None => Action::CloneWithoutLeader,
    };
    Some(decision(
        vec![Action::RaceInitialize, clone],
        Reason::BootstrappingStandbyLeader,
    ))
}

/// This member won the `initialize` race of a standby cluster and its clone from the remote failed
/// (or was cut by the retry pace): it tries again, at the failed-task pace, holding the race
/// (`initialize` stays empty, so nobody else bootstraps meanwhile). `None` otherwise.
pub(super) fn resume_bootstrap(
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
) -> Option<Decision> {
    if !local.won_initialize || view.initialize.as_deref() != Some("") {
        return None;
    }
    let mut d = bootstrap(cfg)?;
    d.actions.retain(|a| *a != Action::RaceInitialize);
    Some(d)
}

/// The lock holder's PostgreSQL is stopped in a standby cluster: start it following the remote, as
/// the standby leader (no `primary_start_timeout`: it is not a primary). `None` outside a standby
/// cluster.
pub(super) fn start_standby_leader(cfg: &HaConfig) -> Option<Decision> {
    if !is_standby_cluster(cfg) {
        return None;
    }
    Some(decision(
        vec![
            Action::RenewLeader,
            Action::Start(StartAs::Replica {
                upstream: remote_upstream(cfg),
            }),
        ],
        Reason::StartingAsStandbyLeader,
    ))
}

/// Whom a member with no lock holder to follow streams from in a standby cluster: the remote (unless
/// `nostream`). `None` outside a standby cluster.
pub(super) fn upstream_while_unlocked(cfg: &HaConfig) -> Option<Option<Upstream>> {
    if !is_standby_cluster(cfg) {
        return None;
    }
    Some(if cfg.tags.nostream {
        None
    } else {
        remote_upstream(cfg)
    })
}

/// A running replica that does not race for the free lock of a standby cluster follows the remote
/// meanwhile (Patroni's `follow` with no leader: "trying to follow a remote member because standby
/// cluster is unhealthy"). `None` outside a standby cluster or when it already does (nothing to do).
pub(super) fn follow_remote_while_unlocked(cfg: &HaConfig, r: &Running) -> Option<Decision> {
    let up = upstream_while_unlocked(cfg)?;
    if r.is_primary || streams_from(r, up.as_ref()) {
        return None;
    }
    Some(decision(
        vec![Action::Follow(up)],
        Reason::FollowingRemoteWhileUnlocked,
    ))
}

/// The healthiest member took the free lock of a standby cluster: it becomes the standby leader by
/// following the remote, without promoting (Patroni: "promoted self to a standby leader by
/// acquiring session lock"). A primary that wins is demoted the next cycle
/// ([`standby_leader`]). `None` outside a standby cluster.
pub(super) fn won_lock(
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
    r: &Running,
) -> Option<Decision> {
    if !is_standby_cluster(cfg) {
        return None;
    }
    let mut actions = vec![Action::AcquireLeader];
    actions.extend(slots::slot_actions(
        view,
        cfg,
        r,
        &cfg.name,
        &local.retained_members,
    ));
    let remote = remote_upstream(cfg);
    if !r.is_primary && !streams_from(r, remote.as_ref()) {
        actions.push(Action::Follow(remote));
    }
    actions.push(Action::WriteStatus);
    Some(decision(actions, Reason::StandbyLeaderByAcquiringLock))
}

/// The lock holder of a standby cluster with PostgreSQL running. `None` outside a standby cluster.
///
/// - A primary is demoted to a standby leader, keeping the lock (Patroni's `demote('demote-cluster')`
///   when the section appears): a fast stop (a shutdown checkpoint its replicas receive), then a
///   start in recovery following the remote.
/// - A switchover request is carried out as on a primary (stop, release the lock); the member that
///   takes the lock becomes the standby leader.
/// - Otherwise: renew the lock, publish `status`, keep its replicas' slots, and stream from the
///   remote (re-pointed when `host`/`port` changed). No synchronous replication, no `history`: the
///   remote's primary owns those.
pub(super) fn standby_leader(
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
    r: &Running,
    now: Now,
) -> Option<Decision> {
    if !is_standby_cluster(cfg) {
        return None;
    }
    let me = cfg.name.as_str();
    let remote = remote_upstream(cfg);
    if r.is_primary {
        return Some(decision(
            vec![
                Action::RenewLeader,
                Action::Stop(StopMode::Fast),
                Action::Start(StartAs::Replica { upstream: remote }),
            ],
            Reason::CannotBePrimaryInStandbyCluster,
        ));
    }
    let request = view.failover_request();
    if let Some(req) = request {
        if asks_me_to_step_down(&req.value, me) {
            return Some(switchover_from_leader(view, local, cfg, r, req, now));
        }
    }
    let mut actions = lock_holder_upkeep(view, local, cfg, r);
    let reason = if streams_from(r, remote.as_ref()) {
        Reason::StandbyLeaderWithLock { me: me.to_string() }
    } else {
        actions.push(Action::Follow(remote));
        Reason::BecomingStandbyLeader
    };
    if let Some(req) = request {
        // Done or moot (names this member as candidate, or a leader that is gone).
        actions.push(Action::ClearFailover(req.version));
    }
    Some(decision(actions, reason))
}

/// True when this member's own member key says it is the standby leader: a lock holder in recovery
/// that followed the remote of a standby cluster. Once the section is removed it promotes with
/// nothing of this cluster to fence: its upstream is the other cluster's primary.
pub fn was_standby_leader(view: &Cluster, me: &str) -> bool {
    view.member(me)
        .is_some_and(|m| m.data.role == praetor_dcs::Role::StandbyLeader)
}
