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

use praetor_dcs::{Cluster, HistoryEntry};

use super::decide::{asks_me_to_step_down, decision, lock_holder_upkeep, switchover_from_leader};
use super::rejoin::{rejoin_plan, RejoinPlan};
use super::{
    slots, Action, ControlData, Decision, HaConfig, LocalState, Now, Reason, Running, StartAs,
    StopMode, Upstream,
};

/// What the runner learnt of a standby cluster's remote primary, over SQL as the rewind user (the
/// credentials pg_rewind would use): its current timeline (from the name of its current WAL file)
/// and the switch points of its timeline history file (`pg_wal/<timeline>.history`). The remote's
/// history stands for the DCS `history` in a standby cluster, which has no promotion of its own:
/// Patroni's `Rewind._check_timeline_and_lsn` reads the same over a replication connection
/// (`IDENTIFY_SYSTEM`, `TIMELINE_HISTORY`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteTimeline {
    /// The remote primary's current timeline.
    pub timeline: u32,
    /// Its timeline history: each former timeline and where it ended (bytes), oldest first; empty
    /// on timeline 1.
    pub history: Vec<HistoryEntry>,
}

/// The settings of `standby_cluster` a standby leader's recovery configuration carries besides
/// `primary_conninfo` (Patroni's `get_remote_member` and `_get_node_to_follow`): compared with
/// what the running server was configured with, a change is applied at once (rewrite and reload:
/// all four are reloadable in PostgreSQL 14+), as Patroni's `check_recovery_conf` does.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RemoteRecovery {
    /// `primary_slot_name` on the remote.
    pub primary_slot_name: Option<String>,
    /// `restore_command`.
    pub restore_command: Option<String>,
    /// `archive_cleanup_command`.
    pub archive_cleanup_command: Option<String>,
    /// `recovery_min_apply_delay` (PostgreSQL units, as written in the section).
    pub recovery_min_apply_delay: Option<String>,
}

/// The recovery settings `dynamic`'s `standby_cluster` asks of the standby leader; `None` outside
/// a standby cluster. Empty strings count as unset.
pub fn remote_recovery(dynamic: &praetor_config::DynamicConfig) -> Option<RemoteRecovery> {
    let sc = dynamic.standby()?;
    let set = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    Some(RemoteRecovery {
        primary_slot_name: set(&sc.primary_slot_name),
        restore_command: set(&sc.restore_command),
        archive_cleanup_command: set(&sc.archive_cleanup_command),
        recovery_min_apply_delay: set(&sc.recovery_min_apply_delay),
    })
}

/// The timeline history members of this cluster rejoin against: in a standby cluster the remote's,
/// when the runner learnt it ([`LocalState::remote`]), since the standby leader replays the
/// remote's timelines; otherwise the DCS `history`.
pub fn rejoin_history<'a>(
    view: &'a Cluster,
    local: &'a LocalState,
    cfg: &HaConfig,
) -> &'a [HistoryEntry] {
    match &local.remote {
        Some(rt) if is_standby_cluster(cfg) => &rt.history,
        _ => view
            .history
            .as_ref()
            .map(|h| h.value.as_slice())
            .unwrap_or(&[]),
    }
}

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
///
/// A data directory that went past the point where the remote's timeline forked off its own (a
/// former primary demoted with `demote-cluster` after the other cluster was promoted, and written
/// to meanwhile) could never stream from the remote: judged as a rejoin
/// ([`rejoin_plan`]) against the remote's timeline and history ([`LocalState::remote`]), it is
/// rewound from the remote when `use_pg_rewind` is on (Patroni's `_handle_rewind_or_reinitialize`
/// with the remote member), recovered first when it crashed, and otherwise kept stopped with the
/// reason, the lock kept (re-judged every loop; a failed pg_rewind is retried at the failed-task
/// pace). Nothing is deleted: Patroni never reinitializes a diverged standby leader
/// (`remove_data_directory_on_diverged_timelines` is ignored in a standby cluster), and
/// `remove_data_directory_on_rewind_failure` is not applied to the standby leader here either (it
/// would have no one to clone from but the remote; see README). When the remote is not known (it
/// does not answer, or is itself in recovery) it starts as it is, as Patroni does.
pub(super) fn start_standby_leader(
    local: &LocalState,
    cfg: &HaConfig,
    control: Option<&ControlData>,
) -> Option<Decision> {
    if !is_standby_cluster(cfg) {
        return None;
    }
    let remote = remote_upstream(cfg);
    let start = || {
        decision(
            vec![
                Action::RenewLeader,
                Action::Start(StartAs::Replica {
                    upstream: remote.clone(),
                }),
            ],
            Reason::StartingAsStandbyLeader,
        )
    };
    let (Some(up), Some(rt)) = (remote.clone(), local.remote.as_ref()) else {
        return Some(start());
    };
    let plan = rejoin_plan(
        control,
        Some(rt.timeline),
        &rt.history,
        cfg.dynamic.postgresql.use_pg_rewind,
    );
    let keep = |reason| decision(vec![Action::RenewLeader], reason);
    Some(match plan {
        RejoinPlan::StartAsReplica => start(),
        RejoinPlan::CrashRecoveryFirst => decision(
            vec![Action::RenewLeader, Action::CrashRecovery],
            Reason::CrashRecovery,
        ),
        RejoinPlan::Rewind => decision(
            vec![Action::RenewLeader, Action::Rewind(up.clone())],
            Reason::RewindingFromRemote {
                host: up.host,
                port: up.port,
            },
        ),
        RejoinPlan::Diverged {
            local_lsn,
            switch_lsn,
            timeline,
        } => keep(Reason::DivergedNoRewind {
            local_lsn,
            switch_lsn,
            timeline,
        }),
        // The remote's history is complete: a timeline of ours it does not list is not one of its
        // ancestors, so this data directory diverged (Patroni: `need_rewind = True`).
        RejoinPlan::WaitForHistory => keep(Reason::DivergedNoRewind {
            local_lsn: control.map(|c| c.checkpoint_lsn).unwrap_or_default(),
            switch_lsn: 0,
            timeline: control.map(|c| c.timeline).unwrap_or_default(),
        }),
        RejoinPlan::NotRewindable { timeline } => keep(Reason::NotRewindable { timeline }),
    })
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
        // Stopped only: the next loop judges the stopped data directory against the remote
        // ([`start_standby_leader`]), which rewinds it first when it went past the remote's fork.
        return Some(decision(
            vec![Action::RenewLeader, Action::Stop(StopMode::Fast)],
            Reason::CannotBePrimaryInStandbyCluster,
        ));
    }
    if let Some(d) = diverged_from_remote(local, r) {
        return Some(d);
    }
    let request = view.failover_request();
    if let Some(req) = request {
        if asks_me_to_step_down(&req.value, me) {
            return Some(switchover_from_leader(view, local, cfg, r, req, now));
        }
    }
    let mut actions = lock_holder_upkeep(view, local, cfg, r);
    let reason = if !streams_from(r, remote.as_ref()) {
        actions.push(Action::Follow(remote));
        Reason::BecomingStandbyLeader
    } else if remote.is_some() && local.remote_recovery != remote_recovery(&cfg.dynamic) {
        // `primary_slot_name`, `restore_command`, `archive_cleanup_command` or
        // `recovery_min_apply_delay` changed in the section (or the agent restarted and does not
        // know what the server runs with): rewrite and reload, as Patroni's `follow` does when
        // `check_recovery_conf` finds a change.
        actions.push(Action::Follow(remote));
        Reason::ApplyingStandbyClusterSettings
    } else {
        Reason::StandbyLeaderWithLock { me: me.to_string() }
    };
    if let Some(req) = request {
        // Done or moot (names this member as candidate, or a leader that is gone).
        actions.push(Action::ClearFailover(req.version));
    }
    Some(decision(actions, reason))
}

/// A standby leader running in recovery on a timeline the remote left, with WAL past the remote's
/// switch point (it was started before the remote could be asked, or the remote was promoted
/// meanwhile while this one had gone further): it can never stream from the remote as it is. Stop
/// it (fast), keeping the lock, so that [`start_standby_leader`] rewinds it from the remote.
fn diverged_from_remote(local: &LocalState, r: &Running) -> Option<Decision> {
    let rt = local.remote.as_ref()?;
    if r.timeline >= rt.timeline {
        return None;
    }
    let e = rt.history.iter().find(|e| e.timeline == r.timeline)?;
    (r.wal_position > e.lsn).then(|| {
        decision(
            vec![Action::RenewLeader, Action::Stop(StopMode::Fast)],
            Reason::Diverged {
                timeline: r.timeline,
                switch_lsn: e.lsn,
                stopping: true,
            },
        )
    })
}

/// True when this member's own member key says it is the standby leader: a lock holder in recovery
/// that followed the remote of a standby cluster. Once the section is removed it promotes with
/// nothing of this cluster to fence: its upstream is the other cluster's primary.
pub fn was_standby_leader(view: &Cluster, me: &str) -> bool {
    view.member(me)
        .is_some_and(|m| m.data.role == praetor_dcs::Role::StandbyLeader)
}
