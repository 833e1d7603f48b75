//! `decide`: one HA loop's decision (Patroni's `_run_cycle`, as a pure function).

use praetor_dcs::{Cluster, Failover, Versioned};

use super::election::{is_healthiest, ranks_first_on_tie};
use super::rejoin::{rejoin_plan, RejoinPlan};
use super::{
    demote_deadline_ms, drain_budget_ms, upstream_of, Action, DataDir, Decision, HaConfig,
    LocalState, Now, Postgres, Reason, Running, StartAs, StopMode, Upstream,
};
use super::{failsafe, lapsed, promotion, slots, standby, sync};

/// Decides what this member does now.
///
/// `view` is the cluster as just read from the DCS, `None` when the DCS could not be read. The rules, in
/// the order Patroni applies them:
/// 1. a background task runs: only keep the lock fresh;
/// 2. DCS unreachable: a leader keeps retrying until [`demote_deadline_ms`] (`loop_wait +
///    retry_timeout` after its last renewal) and then demotes, a primary without the lock demotes,
///    replicas do nothing; with `failsafe_mode` a leader every member confirmed keeps leading (see
///    [`super::failsafe`]);
/// 3. the lock holder's renewals lapsed (its demotion deadline stopped PostgreSQL while the lock
///    lived on, a DCS link slow but alive): it gives the lock up whenever it sees it (never takes
///    it back as its own, however late), and holds off the race for `ttl` unless another member
///    led since (see [`lapsed`]); a member with a healthier link leads;
/// 4. data directory empty: race for `initialize` and bootstrap, or clone from the leader (prefer a
///    member tagged `clonefrom`); system identifier mismatch is fatal;
/// 5. PostgreSQL stopped: the lock holder restarts it as primary; others start it as a replica of the
///    leader (crash recovery / pg_rewind first when their timeline diverged) or read-only when there is
///    no leader;
/// 6. PostgreSQL running and this member holds the lock: renew it, publish `status`, keep slots and
///    `history`, promote if still a replica, carry out a switchover that names it;
/// 7. another member holds the lock: demote if primary, else follow it;
/// 8. nobody holds the lock: race if this member is the healthiest (see [`is_healthiest`]; a peer
///    holding off after rule 3 is not waited for), and with `failsafe_mode` only if the `failsafe`
///    key lists it, not within a hold-off of rule 3.
pub fn decide(view: Option<&Cluster>, local: &LocalState, cfg: &HaConfig, now: Now) -> Decision {
    let d = decide_unpaused(view, local, cfg, now);
    let d = if cfg.dynamic.pause {
        paused(d, view, local, cfg)
    } else {
        d
    };
    let d = pace_failed_task(d, local, cfg, now);
    with_watchdog(d, local, cfg)
}

/// The watchdog comes before the lock (Patroni's `watchdog.activate()` before taking it): the
/// decision arms it right before taking the lock, and before renewing it while not armed (an agent
/// restarted as leader, or `automatic` mode that found no device). A leader whose `required`
/// watchdog refused to arm steps down (stop first, then give the lock back): a frozen agent could
/// not be stopped in time; not while paused (no automatic demotion in maintenance mode).
///
/// The watchdog stays armed while paused, unlike Patroni (which disables it): a leader frozen
/// during a pause still holds a lease renewed without a watchdog when the cluster resumes, its
/// lease then expires and a member promotes while the frozen node's PostgreSQL still accepts
/// writes (sim seed 1656: `TwoWritable`). The agent's clean shutdown stops PostgreSQL and disarms
/// it, also while paused, so maintenance of the agent does not reset the node.
fn with_watchdog(d: Decision, local: &LocalState, cfg: &HaConfig) -> Decision {
    use super::WatchdogState::*;
    // A standby leader is no primary: Patroni arms the watchdog only when it promotes.
    if local.watchdog == Off || standby::is_standby_cluster(cfg) {
        return d;
    }
    // A decision that keeps the lock starts by renewing it.
    let keeps_lock = d.actions.first() == Some(&Action::RenewLeader);
    if local.watchdog == Refused && keeps_lock && cfg.dynamic.pause {
        return d;
    }
    if local.watchdog == Refused && keeps_lock {
        return decision(
            vec![Action::Stop(StopMode::Immediate), Action::ReleaseLeader],
            Reason::DemotingWatchdogUnavailable,
        );
    }
    let needs_arming = |a: &Action| match a {
        Action::AcquireLeader => true,
        Action::RenewLeader => local.watchdog != Armed,
        _ => false,
    };
    let Some(i) = d.actions.iter().position(needs_arming) else {
        return d;
    };
    let mut actions = d.actions;
    actions.insert(i, Action::ArmWatchdog);
    decision(actions, d.reason)
}

/// A background task that failed is not started again before [`task_retry_after_ms`]: the decision is
/// cut before it (what comes first, such as renewing the lock, still runs), never a tight loop.
fn pace_failed_task(d: Decision, local: &LocalState, cfg: &HaConfig, now: Now) -> Decision {
    let Some((failed, at_ms)) = local.failed_task else {
        return d;
    };
    // A rewind is followed by a start in the same task; the runner reports a failure of that
    // start as `Start` (so it does not count as a failed pg_rewind), but the next decision is a
    // rewind again: pace it too (a "no rewind required" then a failing start once looped ~4
    // times a second).
    let paced = |t: Option<super::Task>| {
        t == Some(failed) || (failed == super::Task::Start && t == Some(super::Task::Rewind))
    };
    let Some(i) = d.actions.iter().position(|a| paced(a.task())) else {
        return d;
    };
    let due = at_ms.saturating_add(super::task_retry_after_ms(failed, &cfg.dynamic));
    if now.mono_ms >= due {
        return d;
    }
    let mut actions = d.actions;
    actions.truncate(i);
    decision(
        actions,
        Reason::RetryingTaskLater {
            task: failed,
            in_ms: due - now.mono_ms,
            inner: Box::new(d.reason),
        },
    )
}

/// Maintenance mode (`pause`): no automatic start, stop, promote or failover. The decision is cut at
/// the first action that would do one, unless a manual switchover/failover involving this member is
/// under way (those still work). The lock and the member key stay fresh.
///
/// Of a manual request, only its candidate may take the lock and promote (Patroni's
/// `manual_failover_process_no_leader` answers `False` to every other member while paused): the
/// leader it names may step down and restart as a replica, but not race for the lock as a replica
/// and promote. A request outlives the leader it named (restarted, say, after a watchdog reset),
/// and that member used to run the whole unpaused decision, which is a failover (sim seeds 379,
/// 3426: `PromotedWhilePaused`).
fn paused(d: Decision, view: Option<&Cluster>, local: &LocalState, cfg: &HaConfig) -> Decision {
    let me = cfg.name.as_str();
    let request = view.and_then(|v| v.failover_request());
    if request.is_some_and(|f| f.value.member.as_deref() == Some(me)) {
        return d;
    }
    let stepping_down = request.is_some_and(|f| f.value.leader.as_deref() == Some(me));
    let is_primary = local.postgres.running().is_some_and(|r| r.is_primary);
    let allowed = |a: &Action| match a {
        // Re-taking an expired lock as the running primary is not a failover.
        Action::AcquireLeader => is_primary,
        Action::Promote { .. } | Action::FencePrimary { .. } | Action::AwaitProxies { .. } => false,
        // The leader named by a manual request steps down and rejoins as a replica.
        Action::Start(_)
        | Action::Stop(_)
        | Action::Rewind(_)
        | Action::CrashRecovery
        | Action::AbortTask
        | Action::RemoveDataDirectory
        | Action::ReleaseLeader
        | Action::DropDcsSession => stepping_down,
        _ => true,
    };
    let actions: Vec<Action> = d.actions.into_iter().take_while(allowed).collect();
    Decision {
        actions,
        reason: Reason::Paused {
            inner: Box::new(d.reason),
        },
    }
}

fn decide_unpaused(
    view: Option<&Cluster>,
    local: &LocalState,
    cfg: &HaConfig,
    now: Now,
) -> Decision {
    let me = cfg.name.as_str();
    if let Some(task) = local.task {
        if view.is_none() && local.lock_renewed_ms.is_some() {
            // A leader starting its primary when the DCS went away: the start must not outlive
            // the demotion deadline (it could come up as a primary after the lease expired).
            return dcs_unreachable(local, cfg, now);
        }
        if !view.is_some_and(|v| holds_lock(v, me)) {
            return decision(vec![], Reason::TaskInProgress { task });
        }
        if let Some(d) = view.and_then(|v| lapsed::steps_aside(v, local, cfg)) {
            return d;
        }
        if let Some(d) = primary_start_timed_out(local, cfg, now) {
            return d;
        }
        return decision(vec![Action::RenewLeader], Reason::TaskInProgress { task });
    }
    let Some(view) = view else {
        return dcs_unreachable(local, cfg, now);
    };
    if let Some(d) = lapsed::steps_aside(view, local, cfg) {
        return d;
    }
    match &local.data {
        DataDir::Empty => {
            if let Some(d) = standby::resume_bootstrap(view, local, cfg) {
                return d;
            }
            return empty_data_dir(view, cfg);
        }
        DataDir::Initialized { sysid } => match view.initialize.as_deref() {
            Some(s) if !s.is_empty() && s != sysid => {
                let reason = Reason::SysidMismatch {
                    local: sysid.clone(),
                    cluster: s.to_string(),
                };
                return decision(vec![Action::Fatal(reason.to_string())], reason);
            }
            Some("") if local.won_initialize => {
                return decision(
                    vec![
                        Action::PublishInitialize {
                            sysid: sysid.clone(),
                        },
                        Action::AcquireLeader,
                        Action::WriteStatus,
                    ],
                    Reason::InitializedNewCluster,
                );
            }
            Some("") => return decision(vec![], Reason::WaitingForLeaderToBootstrap),
            None => {
                return decision(
                    vec![Action::CreateInitialize {
                        sysid: sysid.clone(),
                    }],
                    Reason::PublishedSystemIdentifier,
                )
            }
            Some(_) => {}
        },
    }
    match &local.postgres {
        Postgres::Starting => {
            if !holds_lock(view, me) {
                return decision(vec![], Reason::WaitingForPostgres);
            }
            primary_start_timed_out(local, cfg, now)
                .unwrap_or_else(|| decision(vec![Action::RenewLeader], Reason::WaitingForPostgres))
        }
        Postgres::Stopped { control } => stopped(view, local, cfg, control.as_ref(), now),
        Postgres::Running(r) => {
            if holds_lock(view, me) {
                leader(view, local, cfg, r, now)
            } else if let Some(d) = running_branch_of_another(view, local, r) {
                d
            } else if let Some(l) = view.leader.as_ref() {
                follower(view, local, r, &l.name, cfg, now)
            } else {
                election(view, local, cfg, r, now)
            }
        }
    }
}

pub(super) fn decision(actions: Vec<Action>, reason: Reason) -> Decision {
    Decision { actions, reason }
}

/// The lock holder has been (re)starting its PostgreSQL for longer than `primary_start_timeout`:
/// stop trying and give the lock to a replica (Patroni's master_start_timeout).
fn primary_start_timed_out(local: &LocalState, cfg: &HaConfig, now: Now) -> Option<Decision> {
    let began = local.primary_start_began_ms?;
    let timeout = cfg.dynamic.primary_start_timeout;
    if now.mono_ms.saturating_sub(began) < u64::from(timeout) * 1000 {
        return None;
    }
    let mut actions = vec![];
    if local.task.is_some() {
        actions.push(Action::AbortTask);
    }
    actions.extend([Action::Stop(StopMode::Immediate), Action::ReleaseLeader]);
    Some(decision(
        actions,
        Reason::PrimaryStartTimedOut {
            timeout_secs: timeout,
        },
    ))
}

/// Whom this member streams from when `leader` leads: its `replicatefrom` member when that one is
/// running and reachable (cascading replication), else the leader; nobody with `nostream`.
fn upstream_for(view: &Cluster, cfg: &HaConfig, leader: &str) -> Option<Upstream> {
    if cfg.tags.nostream {
        return None;
    }
    if let Some(from) = cfg.tags.replicatefrom.as_deref() {
        let usable = from != cfg.name
            && view
                .member(from)
                .is_some_and(|m| m.data.state == praetor_dcs::MemberState::Running);
        if usable {
            if let Some(up) = upstream_of(view, from) {
                return Some(up);
            }
        }
    }
    upstream_of(view, leader)
}

fn holds_lock(view: &Cluster, me: &str) -> bool {
    view.leader.as_ref().is_some_and(|l| l.name == me)
}

/// The DCS cannot be read. What may still be, or become, a writable primary is stopped at the
/// demotion deadline: a running primary, and, while this member believes it leads, a PostgreSQL that
/// does not answer queries (credentials refused, connection slots full: unobservable is not safe) or
/// a start as primary still under way (aborted first). A start known to be read-only
/// ([`LocalState::starting_read_only`]) goes on: aborting it only to start read-only again kept a
/// lock holder restarting (and its lock, and a switchover, waiting) for 35 s (nemesis seed 9).
fn dcs_unreachable(local: &LocalState, cfg: &HaConfig, now: Now) -> Decision {
    let leading = local.lock_renewed_ms.is_some();
    let read_only_start = local.task.is_some() && local.starting_read_only;
    let may_be_primary = match &local.postgres {
        Postgres::Running(r) => r.is_primary,
        Postgres::Starting => leading && !read_only_start,
        Postgres::Stopped { .. } => leading && local.task.is_some() && !read_only_start,
    };
    if !may_be_primary {
        return lapsed::drops_unseen_lock(local, cfg)
            .unwrap_or_else(|| decision(vec![], Reason::DcsInaccessible));
    }
    if cfg.dynamic.failsafe_mode && local.failsafe_confirmed == Some(true) {
        // Every member's own last view names this leader: nobody else can take the lock, so the
        // confirmation renews like the lock would (and feeds the watchdog).
        return decision(
            vec![Action::KeepLeadingInFailsafe],
            Reason::FailsafeKeepsLeader,
        );
    }
    match demote_deadline_ms(
        local.lock_renewed_ms,
        &cfg.dynamic,
        local.watchdog_timeout_secs,
    ) {
        Some(deadline) if now.mono_ms < deadline => {
            decision(vec![Action::RenewLeader], Reason::DcsInaccessible)
        }
        _ => {
            // Stopped at once (a fast stop's checkpoint could outlast the rest of the lease), then
            // started again read-only with nobody to follow, as Patroni's demotion when the DCS is
            // gone does: reads go on, writes wait for the DCS.
            let mut actions = vec![];
            if local.task.is_some() {
                actions.push(Action::AbortTask);
            }
            actions.push(Action::Stop(StopMode::Immediate));
            actions.push(Action::Start(StartAs::Replica { upstream: None }));
            decision(actions, Reason::DemotingDcsInaccessible)
        }
    }
}

fn empty_data_dir(view: &Cluster, cfg: &HaConfig) -> Decision {
    if view.initialize.is_none() {
        if cfg.tags.nofailover {
            return decision(vec![], Reason::WaitingForLeaderToBootstrap);
        }
        if let Some(d) = standby::bootstrap(cfg) {
            return d;
        }
        return decision(
            vec![Action::RaceInitialize, Action::Bootstrap],
            Reason::BootstrappingNewCluster,
        );
    }
    let Some(leader) = view.leader_member() else {
        // Patroni: with no leader, a method that needs none (a restore from backup) may create the
        // replica, unless a bootstrap is under way (`initialize` still empty).
        if cfg.clone_without_leader
            && view.leader.is_none()
            && view.initialize.as_deref().is_some_and(|i| !i.is_empty())
        {
            return decision(
                vec![Action::CloneWithoutLeader],
                Reason::BootstrapWithoutLeader,
            );
        }
        return decision(vec![], Reason::WaitingForLeaderToBootstrap);
    };
    let Some(leader_up) = upstream_of(view, &leader.name) else {
        return decision(vec![], Reason::WaitingForLeaderToBootstrap);
    };
    // Prefer a running replica tagged clonefrom, to spare the leader the copy.
    let source = view
        .members
        .iter()
        .filter(|m| m.name != cfg.name && m.data.tags.clonefrom)
        .filter(|m| m.data.state == praetor_dcs::MemberState::Running)
        .find_map(|m| upstream_of(view, &m.name))
        .unwrap_or_else(|| leader_up.clone());
    decision(
        vec![Action::Clone {
            source: source.clone(),
            leader: leader_up,
        }],
        Reason::BootstrapFromLeader {
            source: source.member,
        },
    )
}

fn stopped(
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
    control: Option<&super::ControlData>,
    now: Now,
) -> Decision {
    let me = cfg.name.as_str();
    if let Some(d) = rewind_damaged(view, local, cfg) {
        return d;
    }
    if holds_lock(view, me) {
        if let Some(d) = standby::start_standby_leader(local, cfg, control) {
            return d;
        }
        if cfg.dynamic.primary_start_timeout == 0 {
            return decision(
                vec![Action::ReleaseLeader],
                Reason::ReleasingLockPrimaryStopped,
            );
        }
        if let Some(d) = primary_start_timed_out(local, cfg, now) {
            // Start attempts failed for primary_start_timeout: PostgreSQL is already down.
            let actions = d
                .actions
                .into_iter()
                .filter(|a| *a == Action::ReleaseLeader)
                .collect();
            return decision(actions, d.reason);
        }
        // A data directory last used by a replica (the lock was taken, then PostgreSQL stopped
        // before the promotion): started as a primary it would write on the former leader's
        // timeline, where the former leader may hold WAL this member never received (nemesis
        // seed 1 in namespaces, strict). Started read-only, it is promoted at the next loop onto
        // a timeline of its own. Patroni's recover() likewise starts a primary directly only when
        // pg_controldata shows a primary's state (in production, in crash recovery, shutting
        // down, shut down).
        if control.is_some_and(|c| {
            !c.state.was_primary() && c.state != super::ClusterState::InCrashRecovery
        }) {
            return decision(
                vec![
                    Action::RenewLeader,
                    Action::Start(StartAs::Replica { upstream: None }),
                ],
                Reason::StartingReadOnlyWithLock,
            );
        }
        return decision(
            vec![Action::RenewLeader, Action::Start(StartAs::Primary)],
            Reason::StartingPrimaryAfterFailure,
        );
    }
    if let Some(d) = stopped_branch_of_another(view, local, cfg, control) {
        return d;
    }
    let history = standby::rejoin_history(view, local, cfg);
    let Some(leader) = view.leader.as_ref() else {
        // Read-only without a leader, unless it holds WAL the cluster abandoned: started as a
        // replica it would serve reads nobody else has and then "follow" a leader forever without
        // streaming.
        // A crashed former primary's last checkpoint does not tell where its WAL ends: when the
        // cluster has left its timeline, recover first (with the node's parameters), then judge.
        if control.is_some_and(|cd| {
            cd.state.was_primary()
                && !cd.state.is_clean_shutdown()
                && history.iter().any(|e| e.timeline == cd.timeline)
        }) {
            return decision(vec![Action::CrashRecovery], Reason::CrashRecovery);
        }
        if let Some(switch_lsn) = control.and_then(|cd| super::rejoin::diverged_at(cd, history)) {
            return decision(
                vec![],
                Reason::Diverged {
                    timeline: control.map(|c| c.timeline).unwrap_or_default(),
                    switch_lsn,
                    stopping: false,
                },
            );
        }
        if let Some(upstream) = standby::upstream_while_unlocked(cfg) {
            return decision(
                vec![Action::Start(StartAs::Replica { upstream })],
                Reason::FollowingRemoteWhileUnlocked,
            );
        }
        return decision(
            vec![Action::Start(StartAs::Replica { upstream: None })],
            Reason::StartingAsSecondary,
        );
    };
    let Some(leader_up) = upstream_of(view, &leader.name) else {
        return decision(
            vec![],
            Reason::LeaderNotReachable {
                leader: leader.name.clone(),
            },
        );
    };
    let up = upstream_for(view, cfg, &leader.name);
    let leader_tl = view.member(&leader.name).and_then(|m| m.data.timeline);
    if control.is_some_and(|cd| {
        promotion::unattributed(
            local.promoted.as_ref(),
            cd.timeline,
            dcs_history(view),
            &leader.name,
            leader_tl,
        )
    }) {
        return decision(vec![], Reason::WaitingForHistory);
    }
    match rejoin_plan(
        control,
        leader_tl,
        history,
        cfg.dynamic.postgresql.use_pg_rewind,
    ) {
        RejoinPlan::StartAsReplica => decision(
            vec![Action::Start(StartAs::Replica { upstream: up })],
            Reason::StartingAsReplicaOf {
                leader: leader.name.clone(),
            },
        ),
        RejoinPlan::CrashRecoveryFirst => {
            decision(vec![Action::CrashRecovery], Reason::CrashRecovery)
        }
        RejoinPlan::Rewind
            if view
                .member(&leader.name)
                .is_some_and(|m| m.data.checkpoint_after_promote == Some(false)) =>
        {
            decision(vec![], Reason::WaitingForLeaderCheckpoint)
        }
        RejoinPlan::Rewind
            if cfg.remove_data_on_rewind_failure
                && local
                    .failed_task
                    .is_some_and(|(t, _)| t == super::Task::Rewind) =>
        {
            decision(
                vec![Action::RemoveDataDirectory],
                Reason::RemovingDataDirectoryAfterRewindFailure,
            )
        }
        RejoinPlan::Rewind => decision(
            vec![Action::Rewind(leader_up)],
            Reason::Rewinding {
                leader: leader.name.clone(),
            },
        ),
        RejoinPlan::Diverged {
            local_lsn,
            switch_lsn,
            timeline,
        } if cfg.remove_data_on_diverged => {
            let _ = (local_lsn, switch_lsn, timeline);
            decision(
                vec![Action::RemoveDataDirectory],
                Reason::RemovingDivergedDataDirectory,
            )
        }
        RejoinPlan::Diverged {
            local_lsn,
            switch_lsn,
            timeline,
        } => decision(
            vec![],
            Reason::DivergedNoRewind {
                local_lsn,
                switch_lsn,
                timeline,
            },
        ),
        RejoinPlan::NotRewindable { .. } if cfg.remove_data_on_diverged => decision(
            vec![Action::RemoveDataDirectory],
            Reason::RemovingDivergedDataDirectory,
        ),
        RejoinPlan::NotRewindable { timeline } => {
            decision(vec![], Reason::NotRewindable { timeline })
        }
        RejoinPlan::WaitForHistory => decision(vec![], Reason::WaitingForHistory),
    }
}

/// PostgreSQL is stopped on a data directory a pg_rewind left damaged
/// ([`super::RewindFailure::Damaged`], [`LocalState::rewind_damage`]): never started, never
/// rewound again (every later run fails on the truncated WAL, nemesis seed 79). With
/// `remove_data_directory_on_rewind_failure` it is removed at once to clone again, as Patroni's
/// `Rewind.execute` does after a failure; without, the member waits for an operator (`ctl
/// reinit`). Patroni instead retries pg_rewind at each loop after a restart, for ever. A lock holder's
/// directory is never removed: it gives the lock up instead (a standby leader rewinding from its
/// remote; a primary never runs pg_rewind).
fn rewind_damaged(view: &Cluster, local: &LocalState, cfg: &HaConfig) -> Option<Decision> {
    let error = local.rewind_damage.as_ref()?;
    let me = cfg.name.as_str();
    let holds = holds_lock(view, me);
    if cfg.remove_data_on_rewind_failure && !holds {
        return Some(decision(
            vec![Action::RemoveDataDirectory],
            Reason::RemovingDataDirectoryAfterRewindFailure,
        ));
    }
    Some(decision(
        if holds {
            vec![Action::ReleaseLeader]
        } else {
            vec![]
        },
        Reason::RewindDamaged {
            me: me.to_string(),
            error: error.clone(),
            releasing_lock: holds,
        },
    ))
}

/// This member holds the lock and PostgreSQL runs.
fn leader(view: &Cluster, local: &LocalState, cfg: &HaConfig, r: &Running, now: Now) -> Decision {
    let me = cfg.name.as_str();
    if let Some(d) = standby::standby_leader(view, local, cfg, r, now) {
        return d;
    }
    if !r.is_primary {
        if let Some(d) = super::handover::from_recovery(view, local, cfg, r, now) {
            return d;
        }
        return decision(
            promotion(Action::RenewLeader, view, local, cfg, r, now),
            Reason::PromotedBecauseHadLock,
        );
    }
    if let Some(req) = view.failover_request() {
        if asks_me_to_step_down(&req.value, me) {
            let mut d = switchover_from_leader(view, local, cfg, r, req, now);
            // Stepping down in the first loop after the promotion: the `history` line of this
            // timeline is written (or rewritten, when it names another member) before the lock
            // is released, so every member that sees no leader sees it. Until it names this
            // leader, a member that promoted to the same timeline number from the same point and
            // froze cannot tell, by its promotion record, that its branch is not this timeline
            // (see `promotion`): back as a replica it was promoted by the race after the
            // step-down (sim seed 213686).
            if d.actions.contains(&Action::ReleaseLeader) && history_due(view, local, me, r) {
                d.actions.insert(0, Action::UpdateHistory);
            }
            return d;
        }
    }
    let mut actions = lock_holder_upkeep(view, local, cfg, r);
    if history_due(view, local, me, r) {
        actions.push(Action::UpdateHistory);
    }
    actions.extend(sync::sync_actions(view, r, cfg, local.sync_catchup_lsn));
    actions.extend(failsafe_action(view, cfg));
    actions.extend(keep_fencing(local));
    let mut reason = Reason::LeaderWithLock { me: me.to_string() };
    if let Some(req) = view.failover_request() {
        // A request that does not ask this leader to step down is done (it names this member as the
        // candidate, or an old leader that is gone): clean it up as Patroni does.
        actions.push(Action::ClearFailover(req.version));
        reason = Reason::ClearedFailoverKey;
    }
    decision(actions, reason)
}

/// The leader publishes its WAL position and its permanent slots' positions
/// ([`slots::status_slots`]) in `status` when they differ from what the key holds: an idle cluster
/// then writes nothing, so no revision is added and no watcher is woken per cycle.
pub(super) fn write_status(view: &Cluster, cfg: &HaConfig, r: &Running) -> Option<Action> {
    let slots = slots::status_slots(&cfg.dynamic, &r.slots);
    let same = view
        .status
        .as_ref()
        .is_some_and(|s| s.optime == r.wal_position && s.slots == slots);
    (!same).then_some(Action::WriteStatus)
}

/// The leader keeps the `failsafe` key listing every member (with its api_url) while `failsafe_mode`
/// is on, and removes it when off: these are the members that must confirm it when the DCS is gone.
fn failsafe_action(view: &Cluster, cfg: &HaConfig) -> Option<Action> {
    if !cfg.dynamic.failsafe_mode {
        return view
            .failsafe
            .is_some()
            .then(|| Action::WriteFailsafe(Default::default()));
    }
    let members: std::collections::BTreeMap<String, String> = view
        .members
        .iter()
        .filter_map(|m| Some((m.name.clone(), m.data.api_url.clone()?)))
        .collect();
    (view.failsafe.as_ref() != Some(&members)).then_some(Action::WriteFailsafe(members))
}

/// Before a replica promotes, the former primary must accept no more writes: a primary whose agent
/// died or froze keeps running (Patroni's "two primaries" row), so the new leader stops it first. The
/// former primary is the last leader this member saw, else the upstream it was streaming from.
///
/// The waits are bounded by the lease this member just took (ttl from now): an answer within
/// `praetor.fence_timeout_ms` but at most a quarter of the ttl (a silent host never answers; its live
/// agent already stopped PostgreSQL at its own demotion deadline, which is shorter than ttl), and a
/// shutdown that began within half the ttl, which leaves the rest of the lease for the proxies'
/// acknowledgements and the renewal right before `pg_promote()`.
///
/// Not the upstream of a standby leader (its member key says `standby_leader`) promoted by removing
/// `standby_cluster`: it streams from another cluster's primary, which is not this cluster's to
/// stop (see [`standby::was_standby_leader`]).
fn fence_former_primary(
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
    r: &Running,
) -> Option<Action> {
    let (host, port) = match &local.former_leader {
        Some(l) => (l.host.clone(), l.port),
        None if standby::was_standby_leader(view, &cfg.name) => return None,
        None => r.upstream.clone()?,
    };
    let ttl_ms = u64::from(cfg.dynamic.ttl) * 1000;
    let mut answer_ms = cfg.fence_timeout_ms.min(ttl_ms / 4);
    // This target already left a fence unanswered for the whole bound (it waits in `unfenced` for
    // the leader's background fence): a promotion that spans another cycle only checks whether it
    // answers now, which a host that came back does within milliseconds. A second full wait
    // delayed the promotion by the fence timeout again (nemesis ZooKeeper strict seed 27: 1 s of
    // a 14 s write gap after a one-way cut of the leader).
    if local.unfenced.as_ref() == Some(&(host.clone(), port)) {
        answer_ms = answer_ms.min(super::FENCE_RECHECK_MS);
    }
    Some(Action::FencePrimary {
        host,
        port,
        answer_ms,
        shutdown_ms: ttl_ms / 2,
    })
}

/// While a former primary could not be fenced before this member promoted, the leader keeps at it.
fn keep_fencing(local: &LocalState) -> Option<Action> {
    let (host, port) = local.unfenced.clone()?;
    Some(Action::FenceInBackground { host, port })
}

/// Before promoting, every live proxy must have stopped routing to the leader this member replaces
/// (issue: fencing handshake): otherwise a statement could still reach the old primary after the new
/// one accepts writes. When some proxy's key, as read this loop, still names that leader, or when
/// this member takes the lock in this cycle (`taking_lock`, [`Action::AcquireLeader`]): its view was read
/// before it held the lock, and a proxy may have acknowledged the former leader after that read
/// while the lock was still that leader's (a proxy confirms a route only while its leader holds the
/// lock, `praetor_proxy::route_confirmed`); the wait re-reads the keys once the lock is held, which
/// then shows every such acknowledgement. Only until the proxies' contact deadline has passed since
/// the first wait: a proxy that has not acknowledged by then has lost the DCS and stopped serving on
/// its own. Each cycle waits at most `loop_wait` (the next one renews the lock first).
fn await_proxies(
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
    now: Now,
    taking_lock: bool,
) -> Option<Action> {
    let former = &local.former_leader.as_ref()?.member;
    if former == &cfg.name || (view.proxies_routing_to(former).is_empty() && !taking_lock) {
        return None;
    }
    let deadline =
        praetor_dcs::ProxyState::contact_deadline_within(cfg.dynamic.ttl, local.granted_ttl);
    let deadline_ms = deadline.as_millis() as u64;
    let waited_ms = local
        .proxies_wait_began_ms
        .map_or(0, |began| now.mono_ms.saturating_sub(began));
    if waited_ms >= deadline_ms {
        return None;
    }
    let loop_ms = u64::from(cfg.dynamic.loop_wait.max(1)) * 1000;
    Some(Action::AwaitProxies {
        former: former.clone(),
        wait_ms: loop_ms.min(deadline_ms - waited_ms),
    })
}

/// What a lock holder does every cycle, primary or standby leader: renew the lock, publish its
/// WAL position and slots in `status` when they changed, keep the replication slots.
pub(super) fn lock_holder_upkeep(
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
    r: &Running,
) -> Vec<Action> {
    let mut actions = vec![Action::RenewLeader];
    actions.extend(write_status(view, cfg, r));
    actions.extend(slots::slot_actions(
        view,
        cfg,
        r,
        &cfg.name,
        &local.retained_members,
    ));
    actions
}

/// True when switchover request `req` asks member `me`, the lock holder, to step down (it names
/// `me` as leader or names no leader, and names another member as candidate).
pub(super) fn asks_me_to_step_down(req: &Failover, me: &str) -> bool {
    let leader_matches = req.leader.as_deref().is_none_or(|l| l == me);
    leader_matches && req.member.as_deref() != Some(me)
}

/// The lock holder writes `history`: the line of its timeline is missing ([`needs_history`]), or
/// names another leader while its promotion record says it created this timeline
/// ([`promotion::history_names_another`]).
fn history_due(view: &Cluster, local: &LocalState, me: &str, r: &Running) -> bool {
    needs_history(view, r)
        || promotion::history_names_another(
            local.promoted.as_ref(),
            me,
            r.timeline,
            dcs_history(view),
        )
}

fn needs_history(view: &Cluster, r: &Running) -> bool {
    if r.timeline <= 1 {
        return false;
    }
    let ended = r.timeline - 1;
    !view
        .history
        .as_ref()
        .is_some_and(|h| h.value.iter().any(|e| e.timeline == ended))
}

/// A switchover (or a failover with a candidate) asks this leader to step down.
pub(super) fn switchover_from_leader(
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
    r: &Running,
    req: &Versioned<Failover>,
    now: Now,
) -> Decision {
    let keep_leading = || {
        let mut actions = vec![Action::RenewLeader];
        actions.extend(write_status(view, cfg, r));
        actions
    };
    if let Some(at) = &req.value.scheduled_at {
        match parse_iso8601(at) {
            Some(t) if t > now.unix_secs => {
                return decision(
                    keep_leading(),
                    Reason::ManualFailoverScheduled { at: at.clone() },
                )
            }
            Some(_) => {}
            None => {
                return impossible(
                    keep_leading(),
                    req,
                    format!("scheduled_at {at:?} is not an ISO 8601 time"),
                )
            }
        }
    }
    // While paused only a named candidate may promote (see [`paused`]): a request without one, left
    // from before the pause (the REST API refuses new ones), would make this leader step down and
    // leave the cluster without a leader until resume. Patroni clears such a request too
    // (`process_manual_failover_from_leader`: "Failover is possible only to a specific candidate in
    // a paused state").
    if cfg.dynamic.pause && req.value.member.is_none() {
        return impossible(
            keep_leading(),
            req,
            "while paused a switchover needs a named candidate".to_string(),
        );
    }
    let peers = local.peers.as_deref().unwrap_or(&[]);
    let candidate = match switchover_candidate(view, cfg, r, &req.value, peers) {
        Ok(p) => p,
        Err(why) => return impossible(keep_leading(), req, why),
    };
    // A standby leader (standby cluster) writes no WAL of its own: its candidate gets everything
    // from the remote cluster too, and its clean stop is a restartpoint ("shut down in recovery"),
    // not a last LSN to publish. Patroni's standby leader likewise just stops and releases.
    if !r.is_primary {
        return decision(
            vec![Action::Stop(StopMode::Fast), Action::ReleaseLeader],
            Reason::ManualFailoverDemoting {
                candidate: candidate.name.clone(),
            },
        );
    }
    // A fast shutdown hands the last WAL, up to the shutdown checkpoint, to the standbys connected
    // at that moment (walsenders wait for their flush before the postmaster exits), and to no one
    // else: a candidate whose WAL receiver is restarting would be promoted without it. Wait for it
    // to stream, bounded; the candidate's own rule (election) covers a disconnect after this check.
    if !streams_from(view, r, &candidate.name) {
        let waited_ms = local
            .switchover_wait_began_ms
            .map_or(0, |began| now.mono_ms.saturating_sub(began));
        let bound_ms = super::switchover_wait_ms(&cfg.dynamic);
        if waited_ms < bound_ms {
            return decision(
                keep_leading(),
                Reason::WaitingForCandidateToStream {
                    candidate: candidate.name.clone(),
                    waited_ms,
                },
            );
        }
        return impossible(
            keep_leading(),
            req,
            format!(
                "candidate {} did not stream from the leader within {} s, so it would not receive the last WAL",
                candidate.name,
                bound_ms / 1000
            ),
        );
    }
    // Proxies hold new transactions once they see the request; what runs now ends soon, so a short
    // wait lets it commit instead of being rolled back by the fast stop (bounded: the lease must
    // outlast the stop).
    let drain = drain_budget_ms(
        now.mono_ms,
        demote_deadline_ms(
            local.lock_renewed_ms,
            &cfg.dynamic,
            local.watchdog_timeout_secs,
        ),
    );
    decision(
        vec![
            Action::DrainTransactions { max_ms: drain },
            Action::Stop(StopMode::Fast),
            Action::WriteLastLsn,
            Action::ReleaseLeader,
        ],
        Reason::ManualFailoverDemoting {
            candidate: candidate.name.clone(),
        },
    )
}

/// The member switchover request `req` hands the lock to, among `peers` (the other members'
/// REST answers), as judged by lock holder `r`: the named candidate when it is healthy, else the
/// healthy member that streams from this leader, then with the most WAL, then the highest
/// `failover_priority`. Healthy: eligible, not a running primary, with a member key, at most
/// `maximum_lag_on_failover` bytes behind `r`, and under synchronous replication listed in the
/// `sync` key (it holds every acknowledged commit). `Err` says why no member fits (the request is
/// then impossible).
pub(super) fn switchover_candidate<'a>(
    view: &Cluster,
    cfg: &HaConfig,
    r: &Running,
    req: &Failover,
    peers: &'a [super::PeerStatus],
) -> Result<&'a super::PeerStatus, String> {
    let me = cfg.name.as_str();
    let max_lag = cfg.dynamic.maximum_lag_on_failover;
    let sync_listed: Option<Vec<String>> =
        (cfg.dynamic.synchronous_mode != praetor_config::SyncMode::Off).then(|| {
            view.sync
                .as_ref()
                .map(|s| s.value.members())
                .unwrap_or_default()
        });
    let healthy = |p: &&super::PeerStatus| {
        p.name != me
            && p.is_eligible()
            && !p.is_running_primary
            && view.member(&p.name).is_some()
            && r.wal_position.saturating_sub(p.wal_position) <= max_lag
            && sync_listed.as_ref().is_none_or(|l| l.contains(&p.name))
    };
    match req.member.as_deref() {
        Some(c) => match peers.iter().find(|p| p.name == c) {
            Some(p) if healthy(&p) => Ok(p),
            Some(_) => Err(format!(
                "candidate {c} is not healthy (not running, not allowed to promote, or lagging)"
            )),
            None => Err(format!("candidate {c} did not answer")),
        },
        // Without a named candidate, one that streams from this leader is preferred.
        None => peers
            .iter()
            .filter(healthy)
            .max_by_key(|p| {
                (
                    streams_from(view, r, &p.name),
                    p.wal_position,
                    p.failover_priority,
                )
            })
            .ok_or_else(|| "no healthy members found".to_string()),
    }
}

/// True when member `name` streams from this primary (`pg_stat_replication` shows it `streaming`),
/// or is tagged `replicatefrom` another member (a cascaded standby gets the last WAL through its
/// upstream; the candidate's own rule checks that it did).
fn streams_from(view: &Cluster, r: &Running, name: &str) -> bool {
    r.standbys
        .iter()
        .any(|s| s.name == name && s.state == "streaming")
        || view
            .member(name)
            .is_some_and(|m| m.data.tags.replicatefrom.is_some())
}

fn impossible(mut actions: Vec<Action>, req: &Versioned<Failover>, why: String) -> Decision {
    actions.push(Action::ClearFailover(req.version));
    decision(actions, Reason::ManualFailoverImpossible { why })
}

/// Another member holds the lock and PostgreSQL runs here.
fn follower(
    view: &Cluster,
    local: &LocalState,
    r: &Running,
    leader: &str,
    cfg: &HaConfig,
    now: Now,
) -> Decision {
    if r.is_primary {
        return decision(
            vec![Action::Stop(StopMode::Immediate)],
            Reason::DemotingNoLock {
                leader: Some(leader.to_string()),
            },
        );
    }
    if upstream_of(view, leader).is_none() {
        return decision(
            vec![],
            Reason::LeaderNotReachable {
                leader: leader.to_string(),
            },
        );
    }
    if let Some(d) = running_diverged(view, r, leader, standby::rejoin_history(view, local, cfg)) {
        return d;
    }
    let up = upstream_for(view, cfg, leader);
    let want = up.as_ref().map(|u| (u.host.clone(), u.port));
    if r.upstream != want {
        return decision(
            vec![Action::Follow(up)],
            Reason::ChangingPrimaryConninfo {
                leader: leader.to_string(),
            },
        );
    }
    let actions = slots::pace_copies(
        slots::slot_actions(view, cfg, r, leader, &[]),
        local.slot_copy_at_ms,
        now.mono_ms,
    );
    decision(
        actions,
        Reason::Following {
            me: cfg.name.clone(),
            leader: leader.to_string(),
        },
    )
}

/// A running replica on a timeline the leader left, holding WAL past the switch point (`history`:
/// the DCS `history`, or in a standby cluster the remote's, see [`standby::rejoin_history`]): it
/// can never stream from the leader as it is. Stop it (fast: a clean restartpoint), so the
/// stopped-node rules rewind it.
fn running_diverged(
    view: &Cluster,
    r: &Running,
    leader: &str,
    history: &[praetor_dcs::HistoryEntry],
) -> Option<Decision> {
    let leader_tl = view.member(leader).and_then(|m| m.data.timeline)?;
    if r.timeline >= leader_tl {
        return None;
    }
    let e = history.iter().find(|e| e.timeline == r.timeline)?;
    (r.wal_position > e.lsn).then(|| {
        decision(
            vec![Action::Stop(StopMode::Fast)],
            Reason::Diverged {
                timeline: r.timeline,
                switch_lsn: e.lsn,
                stopping: true,
            },
        )
    })
}

/// The DCS `history` lines (empty when there is no key).
fn dcs_history(view: &Cluster) -> &[praetor_dcs::HistoryEntry] {
    view.history.as_ref().map_or(&[][..], |h| &h.value[..])
}

/// A running replica, without the lock, whose timeline is a branch another member created under
/// the number the cluster's `history` gives to its leader ([`promotion::taken_over_by`]): it can
/// never stream from that leader, and by (timeline, LSN) it could win a race or a switchover with
/// WAL the cluster never had, without the leader's commits (simulation seed 213686). Stop it
/// (fast); the stopped-node rule below keeps it down.
fn running_branch_of_another(view: &Cluster, local: &LocalState, r: &Running) -> Option<Decision> {
    if r.is_primary {
        return None;
    }
    let leader = promotion::taken_over_by(local.promoted.as_ref(), r.timeline, dcs_history(view))?;
    Some(decision(
        vec![Action::Stop(StopMode::Fast)],
        Reason::BranchOfAnotherLeader {
            timeline: r.timeline,
            leader: leader.to_string(),
            stopping: true,
        },
    ))
}

/// A stopped data directory, without the lock, holding another member's branch of the timeline
/// the cluster's `history` gives to its leader ([`promotion::taken_over_by`]). pg_rewind cannot
/// help (it sees the same timeline number on both sides and rewinds nothing): it is removed to be
/// cloned again with `remove_data_directory_on_diverged_timelines`, else it stays stopped (never
/// a candidate: it does not run) for an operator to reinitialize (`praetor ctl reinit`).
fn stopped_branch_of_another(
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
    control: Option<&super::ControlData>,
) -> Option<Decision> {
    let timeline = control?.timeline;
    let leader = promotion::taken_over_by(local.promoted.as_ref(), timeline, dcs_history(view))?;
    if cfg.remove_data_on_diverged {
        return Some(decision(
            vec![Action::RemoveDataDirectory],
            Reason::RemovingDivergedDataDirectory,
        ));
    }
    Some(decision(
        vec![],
        Reason::BranchOfAnotherLeader {
            timeline,
            leader: leader.to_string(),
            stopping: false,
        },
    ))
}

/// Nobody holds the lock and PostgreSQL runs here: race if this member is the healthiest.
fn election(view: &Cluster, local: &LocalState, cfg: &HaConfig, r: &Running, now: Now) -> Decision {
    let me = cfg.name.as_str();
    let not_racing = |reason: Reason| {
        // A primary that may not (or need not) lead must not stay writable without the lock.
        if r.is_primary {
            decision(
                vec![Action::Stop(StopMode::Immediate)],
                Reason::DemotingNoLock { leader: None },
            )
        } else {
            standby::follow_remote_while_unlocked(cfg, r)
                .unwrap_or_else(|| decision(vec![], reason))
        }
    };
    let peers = local.peers.as_deref().unwrap_or(&[]);
    let mut exclude = None;
    let mut i_am_candidate = false;
    // Under synchronous replication only the members the `sync` key allows can take the lock (see
    // `sync::may_promote`): the others cannot be waited for. In quorum mode that is a member that
    // can gather its votes, as far as this member sees: from the other members that answered and
    // from this member itself (`sync::could_promote`). Waiting for a member that cannot left the
    // cluster without a leader: a key listing no voter allows its leader alone (the simulation's
    // seed 85), and a switchover candidate left on an older timeline gets no vote from members on
    // the newer one (seed 13,377: the former leader stepped down for it, the others waited).
    let sync_allows = |name: &str| {
        let Some(s) = view.sync.as_ref().map(|s| &s.value) else {
            return true;
        };
        match cfg.dynamic.synchronous_mode {
            praetor_config::SyncMode::On => sync::listed_may_promote(view, s, name),
            praetor_config::SyncMode::Quorum => sync::could_promote(view, cfg, r, peers, name),
            _ => true,
        }
    };
    // Under synchronous replication (`on`) only the standbys listed in `sync` hold every
    // acknowledged commit: only they race, and only against each other. In quorum mode every member
    // races, one that gathers enough votes from the key's members (see `sync::may_promote`).
    // No `sync` key: synchronous replication was never activated (see `sync::may_promote`).
    let sync_listed: Option<Vec<String>> = view
        .sync
        .as_ref()
        .filter(|_| cfg.dynamic.synchronous_mode == praetor_config::SyncMode::On)
        .map(|s| s.value.members());
    // A leader that stepped down for a switchover published its last LSN (`status.optime`, its
    // shutdown checkpoint; Patroni's delete_leader(leader, last_lsn)). A member that has not
    // received that far would drop the old leader's last commits from the new timeline: it does not
    // count as one that can take over, and does not race itself (see below).
    let last = switchover_last_lsn(view);
    let holds_last = |pos: u64| last.as_ref().is_none_or(|(lsn, _)| pos >= *lsn);
    if let Some(req) = view.failover_request() {
        // The leader that stepped down for a switchover does not race back for the lock while any
        // other member can take it (Patroni's manual_failover_process_no_leader; its
        // is_failover_possible counts only synchronous standbys in synchronous mode, and, with
        // `cluster_lsn`, only members that have its shutdown checkpoint). Otherwise a request left
        // behind by a leader that lost its lock kept everyone out (sim seed 162). With failsafe
        // mode, a member missing from the `failsafe` key cannot race unless it is the request's
        // candidate (`failsafe::may_race`): it does not count either (sim seed 1283 with
        // `--failsafe`: the only eligible member was outside the key, nobody led). Nor does a
        // member other than the request's candidate that is behind this one (an older timeline,
        // less WAL, or a tie with a lower `failover_priority`) and compares itself with it (under
        // `on`, only the members the `sync` key lists do): it finds this member healthier
        // (`is_healthiest`) and waits for it, and both waited for good (sim seed 21,850: the
        // request was written while this leader was cut off from the DCS; it lost the lock
        // without stepping down, held alone the timeline it had promoted to, and the published
        // last LSN was an older leader's). Patroni's other members leave the former leader out
        // of their comparison instead (`manual_failover_process_no_leader`), which promotes a
        // member behind it and drops the WAL only it holds; here the healthiest member takes the
        // lock back, and the switchover, still requested, starts again from it.
        // The same comparison as `is_healthiest`, seen from the peer's side (its tie-breakers
        // included: a tie this member wins on slot copies keeps the peer waiting for it too).
        let my_priority = cfg.tags.failover_priority.unwrap_or(1);
        let my_copies =
            slots::holds_slot_copies(&cfg.dynamic, cfg.pg_major, &r.slots, r.is_primary);
        let compared_with_me = sync_listed
            .as_ref()
            .is_none_or(|listed| listed.iter().any(|n| n == me));
        let defers_to_me = |p: &super::PeerStatus| {
            let (theirs, mine) = ((p.timeline, p.wal_position), (r.timeline, r.wal_position));
            compared_with_me
                && (mine > theirs
                    || mine == theirs
                        && ranks_first_on_tie(
                            my_priority,
                            my_copies,
                            p.failover_priority,
                            p.slot_copies,
                        ))
        };
        if req.value.leader.as_deref() == Some(me)
            && req.value.member.as_deref() != Some(me)
            && peers.iter().any(|p| {
                p.name != me
                    && p.is_eligible()
                    && !p.is_running_primary
                    // One holding off after lapsed renewals does not take the lock now (unless
                    // it is the candidate, which races anyway).
                    && (!p.holding_off || req.value.member.as_deref() == Some(p.name.as_str()))
                    && sync_allows(&p.name)
                    && holds_last(p.wal_position)
                    && (req.value.member.as_deref() == Some(p.name.as_str())
                        || !defers_to_me(p)
                            && failsafe::may_race(view, &p.name, cfg.dynamic.failsafe_mode))
            })
        {
            return not_racing(Reason::SteppedDownForSwitchover);
        }
        match req.value.member.as_deref() {
            Some(c) if c == me => i_am_candidate = true,
            Some(c) => {
                // A candidate the sync key does not allow never takes over: not waited for (sim
                // seed 211). One that has not reached the last LSN yet is waited for too, for a
                // bounded time: a streaming candidate replays the shutdown checkpoint milliseconds
                // after another member may have, and overtaking it then turned planned switchovers
                // into switchovers to a third member (found by the acceptance test on an idle
                // machine). Past the bound it is left out, so a candidate whose WAL receiver is
                // down keeps nobody out for good. Nor is it waited for once it answers that it saw
                // the cluster without a leader (`PeerStatus::cluster_unlocked`): the position it
                // reports came after the old leader stopped, so what it lacks it will never
                // receive, and it waits in turn for a member holding that WAL (`MissingLastLsn`).
                // Sim seed 16,050: the request was written while its leader was cut off; that
                // leader demoted on losing the DCS, its last status held WAL only it had, and it
                // and the candidate each waited for the other until the bound, past the liveness
                // deadline after the faults healed.
                let waited_ms = local
                    .switchover_wait_began_ms
                    .map_or(0, |began| now.mono_ms.saturating_sub(began));
                let within_bound = waited_ms < super::switchover_wait_ms(&cfg.dynamic);
                if peers.iter().any(|p| {
                    p.name == c
                        && p.is_eligible()
                        && sync_allows(c)
                        && (holds_last(p.wal_position) || within_bound && !p.cluster_unlocked)
                }) {
                    return not_racing(Reason::WaitingForCandidate {
                        candidate: c.to_string(),
                    });
                }
                exclude = Some(c);
            }
            None => {}
        }
    }
    let priority = cfg.tags.failover_priority.unwrap_or(1);
    if cfg.tags.nofailover || priority <= 0 {
        return not_racing(Reason::NotAllowedToPromote);
    }
    // A member whose renewals lapsed keeps out for a while, so that one with a healthier DCS link
    // leads (see `lapsed`); a switchover's candidate was named by the operator and races. Whether
    // another member could take the lock sets where the hold-off counts from
    // (`lapsed::holding_off`).
    if !i_am_candidate {
        let another_could_lead = peers
            .iter()
            .any(|p| p.name != me && p.is_eligible() && sync_allows(&p.name));
        if let Some(reason) = lapsed::holding_off(local, cfg, now, another_could_lead) {
            return not_racing(reason);
        }
    }
    if let Some((lsn, leader)) = &last {
        if r.wal_position < *lsn {
            // Wait while a member that has the WAL can take over (the old leader restarted
            // read-only, or another standby), and for a bounded time while the old leader's agent
            // answers (it is starting PostgreSQL again). With the old leader gone, or past the
            // bound with nobody holding the WAL, the race goes on as in Patroni, whose candidate
            // never checks: losing those commits is then a failover's loss, not a planned
            // switchover's.
            let holder = peers.iter().any(|p| {
                p.name != me
                    && p.is_eligible()
                    && !p.is_running_primary
                    && sync_allows(&p.name)
                    && p.wal_position >= *lsn
            });
            let waited_ms = local
                .switchover_wait_began_ms
                .map_or(0, |began| now.mono_ms.saturating_sub(began));
            let leader_answers = peers.iter().any(|p| p.name == *leader);
            if holder || leader_answers && waited_ms < super::switchover_wait_ms(&cfg.dynamic) {
                return not_racing(Reason::MissingLastLsn {
                    mine: r.wal_position,
                    last_lsn: *lsn,
                    leader: leader.clone(),
                });
            }
        }
    }
    if !i_am_candidate && !failsafe::may_race(view, me, cfg.dynamic.failsafe_mode) {
        return not_racing(Reason::NotInFailsafeKey);
    }
    // A switchover's candidate skips the comparison below, and a candidate missing from the
    // `failsafe` key races anyway (sim seed 1283): it still waits for every member of that key, one
    // of which may be a leader kept running past its lease by failsafe mode, and it does not
    // promote next to a member that still runs as primary (sim seed 223394 with failsafe mode: the
    // candidate's agent was down while that leader was elected, it took the lock after the DCS
    // came back and promoted while that leader still ran on its last confirmation).
    if i_am_candidate {
        if let Some(member) = failsafe::unheard_member(
            view,
            me,
            cfg.dynamic.failsafe_mode,
            peers.iter().map(|p| p.name.as_str()),
        ) {
            return not_racing(Reason::FailsafeMemberUnheard { member });
        }
        if let Some(p) = peers.iter().find(|p| p.name != me && p.is_running_primary) {
            return not_racing(Reason::NotHealthiest {
                better: format!("{} (still running as primary)", p.name),
            });
        }
    }
    if failsafe::promised(
        cfg.dynamic.failsafe_mode,
        local.failsafe_accepted_ms,
        now.mono_ms,
        cfg.dynamic.ttl,
    ) {
        return not_racing(Reason::ConfirmedFailsafeLeader);
    }
    let peers_in_race: Vec<super::PeerStatus> = match &sync_listed {
        Some(listed) => peers
            .iter()
            .filter(|p| listed.contains(&p.name) || p.is_running_primary)
            .cloned()
            .collect(),
        None => peers.to_vec(),
    };
    if let Err(reason) = sync::may_promote(view, cfg, r.timeline, r.wal_position, peers) {
        return not_racing(reason);
    }
    if !i_am_candidate {
        if let Some(optime) = view.leader_optime() {
            if optime
                > r.wal_position
                    .saturating_add(cfg.dynamic.maximum_lag_on_failover)
            {
                return not_racing(Reason::NotHealthyEnough {
                    wal_position: r.wal_position,
                    leader_optime: optime,
                });
            }
        }
        // Patroni's `check_timeline` (ha.py `_is_healthiest_node`): a member on a timeline older
        // than the cluster's last known one (the history key's last timeline + 1) missed a
        // promotion; its WAL may fork from the cluster's, so it does not race.
        if cfg.dynamic.check_timeline {
            let cluster = cluster_timeline(view);
            if r.timeline < cluster {
                return not_racing(Reason::TimelineBehind {
                    mine: r.timeline,
                    cluster,
                });
            }
        }
        if let Err(reason) = is_healthiest(
            me,
            r.timeline,
            r.wal_position,
            priority,
            slots::holds_slot_copies(&cfg.dynamic, cfg.pg_major, &r.slots, r.is_primary),
            &peers_in_race,
            exclude,
        ) {
            return not_racing(reason);
        }
    }
    if let Some(d) = standby::won_lock(view, local, cfg, r) {
        return d;
    }
    if r.is_primary {
        return decision(
            vec![Action::AcquireLeader, Action::WriteStatus],
            Reason::AcquiredLockAsLeader,
        );
    }
    decision(
        promotion(Action::AcquireLeader, view, local, cfg, r, now),
        Reason::PromotedByAcquiringLock,
    )
}

/// The last LSN a leader that stepped down for a switchover published, with its name: with no
/// leader, a `failover` key naming a leader (a switchover, not a failover) and `status.optime` set.
fn switchover_last_lsn(view: &Cluster) -> Option<(u64, String)> {
    if view.leader.is_some() {
        return None;
    }
    let leader = view.failover_request()?.value.leader.clone()?;
    let lsn = view.status.as_ref().map(|s| s.optime).filter(|o| *o > 0)?;
    Some((lsn, leader))
}

/// Promoting a replica that holds (`RenewLeader`) or takes (`AcquireLeader`) the lock: slots first
/// (PostgreSQL creates physical slots on a standby too, so replicas re-pointed at the new leader find
/// theirs at once instead of retrying for wal_retrieve_retry_interval), then the former primary is
/// fenced and the proxies acknowledge, then synchronous replication is armed
/// ([`sync::before_promote`]: strict mode, quorum mode), then promote.
fn promotion(
    lock: Action,
    view: &Cluster,
    local: &LocalState,
    cfg: &HaConfig,
    r: &Running,
    now: Now,
) -> Vec<Action> {
    let mut actions = vec![lock];
    actions.extend(slots::slot_actions(
        view,
        cfg,
        r,
        &cfg.name,
        &local.retained_members,
    ));
    actions.extend(fence_former_primary(view, local, cfg, r));
    let taking_lock = matches!(actions[0], Action::AcquireLeader);
    actions.extend(await_proxies(view, local, cfg, now, taking_lock));
    actions.extend(sync::before_promote(view, cfg));
    // The waits above may have taken a good part of the lease: confirm the lock right before the
    // point of no return, or go back to the race (a failed renewal ends the list).
    // `pg_promote()` only within the demotion window of that renewal: past it (a slow renewal, a
    // frozen agent) the lease may have run out, and another member may be promoting.
    actions.push(Action::RenewLeader);
    actions.push(Action::Promote {
        within_ms: super::demote_window_ms(&cfg.dynamic, local.watchdog_timeout_secs),
    });
    actions
}

/// Seconds since the epoch of an ISO 8601 / RFC 3339 time (`2026-11-24T10:00:00+00:00`).
pub(crate) fn parse_iso8601(s: &str) -> Option<i64> {
    time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// The cluster's last known timeline, as Patroni's `Cluster.timeline`: the last timeline of the
/// `history` key plus one, 1 for an empty history, 0 (nothing known) without the key.
pub(super) fn cluster_timeline(view: &praetor_dcs::Cluster) -> u32 {
    match &view.history {
        Some(h) => h.value.last().map_or(1, |e| e.timeline.saturating_add(1)),
        None => 0,
    }
}
