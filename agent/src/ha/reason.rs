//! Why `decide` chose what it chose. `Display` gives Patroni's log messages (operators grep for them).

use std::fmt;

/// The outcome of one HA loop, as a value. `me` and member names are carried so `Display` can write
/// Patroni's sentences verbatim in meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Leader holding the lock, nothing to do.
    LeaderWithLock {
        /// This member.
        me: String,
    },
    /// Standby cluster: the standby leader holding the lock and replicating from the remote
    /// (Patroni's words).
    StandbyLeaderWithLock {
        /// This member.
        me: String,
    },
    /// Standby cluster: the lock holder points its PostgreSQL at the remote (it was following
    /// someone else, or nobody).
    BecomingStandbyLeader,
    /// Standby cluster: took the free lock; following the remote instead of promoting.
    StandbyLeaderByAcquiringLock,
    /// Standby cluster: the lock holder's PostgreSQL is stopped; starting it as the standby leader.
    StartingAsStandbyLeader,
    /// Standby cluster: a primary here is demoted (the section was added: `demote-cluster`).
    CannotBePrimaryInStandbyCluster,
    /// Standby cluster: the stopped lock holder holds WAL past the point where the remote primary's
    /// timeline forked off its own (a former primary demoted after the other cluster's promotion):
    /// pg_rewind from the remote before starting as the standby leader.
    RewindingFromRemote {
        /// The remote's host (`standby_cluster.host`).
        host: String,
        /// Its port.
        port: u16,
    },
    /// Standby cluster: `primary_slot_name`, `restore_command`, `archive_cleanup_command` or
    /// `recovery_min_apply_delay` of the section differ from what the running standby leader was
    /// configured with: rewriting its recovery settings and reloading.
    ApplyingStandbyClusterSettings,
    /// Standby cluster without a leader: replicas follow the remote meanwhile.
    FollowingRemoteWhileUnlocked,
    /// Standby cluster: won the `initialize` race, cloning the standby leader from the remote.
    BootstrappingStandbyLeader,
    /// Replica following the leader, nothing to do.
    Following {
        /// This member.
        me: String,
        /// The leader.
        leader: String,
    },
    /// Won the `initialize` race, running initdb.
    BootstrappingNewCluster,
    /// Bootstrap finished: published the system identifier and took the lock.
    InitializedNewCluster,
    /// Someone else is bootstrapping, or no leader to clone from yet.
    WaitingForLeaderToBootstrap,
    /// Cloning from a member.
    BootstrapFromLeader {
        /// The source member.
        source: String,
    },
    /// No leader, cloning with a replica creation method that needs none (a restore from backup,
    /// `no_leader`).
    BootstrapWithoutLeader,
    /// A background task is still running.
    TaskInProgress {
        /// What it is.
        task: super::Task,
    },
    /// A background task failed lately: it is not started again before its retry pace allows (see
    /// [`task_retry_after_ms`](super::task_retry_after_ms)); `inner` is what it would do.
    RetryingTaskLater {
        /// The task that failed.
        task: super::Task,
        /// Milliseconds until it may run again.
        in_ms: u64,
        /// The decision it would otherwise carry out now.
        inner: Box<Reason>,
    },
    /// The data directory belongs to another cluster.
    SysidMismatch {
        /// Local system identifier.
        local: String,
        /// The cluster's (`initialize`).
        cluster: String,
    },
    /// `initialize` was missing; published the local system identifier.
    PublishedSystemIdentifier,
    /// Took the free lock and promoted (or already was primary).
    PromotedByAcquiringLock,
    /// Held the lock while a replica: promoted.
    PromotedBecauseHadLock,
    /// Took the free lock as a running primary.
    AcquiredLockAsLeader,
    /// Another member holds the lock while PostgreSQL here is a primary.
    DemotingNoLock {
        /// The new leader, if any.
        leader: Option<String>,
    },
    /// The lock could not be renewed within `loop_wait + retry_timeout` (see
    /// [`demote_deadline_ms`](super::demote_deadline_ms)).
    DemotingDcsInaccessible,
    /// The DCS is unreachable; nothing to do (replica).
    DcsInaccessible,
    /// The DCS is unreachable but every member confirmed this leader (`failsafe_mode`).
    FailsafeKeepsLeader,
    /// `failsafe_mode` is on and this member is missing from the non-empty `failsafe` key: it may
    /// not take the lock (see [`super::failsafe::may_race`]).
    NotInFailsafeKey,
    /// `failsafe_mode` is on and this member confirmed the leader over `POST /failsafe` less than
    /// `ttl` ago: it keeps out of the race (see [`super::failsafe::promised`]).
    ConfirmedFailsafeLeader,
    /// `failsafe_mode` is on, this member is a switchover's candidate missing from the `failsafe`
    /// key, and `member` of that key did not answer the race: it may be a leader still running on
    /// its members' confirmations (see [`super::failsafe::unheard_member`]).
    FailsafeMemberUnheard {
        /// The member of the `failsafe` key that did not answer.
        member: String,
    },
    /// A switchover asks this leader to step down for `candidate`.
    ManualFailoverDemoting {
        /// The candidate.
        candidate: String,
    },
    /// A switchover asks this lock holder, still in recovery, to step down for `candidate`, which
    /// holds all its WAL: it hands the lock over without promoting first (see `ha::handover`).
    ManualFailoverHandingOver {
        /// The candidate.
        candidate: String,
    },
    /// A switchover request cannot be carried out; it is removed.
    ManualFailoverImpossible {
        /// Why.
        why: String,
    },
    /// A scheduled switchover is not due yet.
    ManualFailoverScheduled {
        /// When (as written in the request).
        at: String,
    },
    /// Cleared a finished or moot switchover request.
    ClearedFailoverKey,
    /// PostgreSQL is stopped and there is no leader: started read-only.
    StartingAsSecondary,
    /// The lock holder's PostgreSQL is down: restarting it as primary.
    StartingPrimaryAfterFailure,
    /// The lock holder's PostgreSQL is down and its data directory was last a replica's (it
    /// stopped before its promotion): started read-only, to be promoted onto a new timeline.
    StartingReadOnlyWithLock,
    /// PostgreSQL is stopped; starting it as a replica of the leader.
    StartingAsReplicaOf {
        /// The leader.
        leader: String,
    },
    /// Re-pointed a running replica at the leader.
    ChangingPrimaryConninfo {
        /// The new upstream.
        leader: String,
    },
    /// Not eligible for the leader race (tags).
    NotAllowedToPromote,
    /// Synchronous replication is on and this member is not a listed synchronous standby (in quorum
    /// mode: the `sync` key lists no voter).
    NotSynchronousStandby,
    /// Quorum mode: too few of the `sync` key's members answered at or behind this member's WAL
    /// position to show it holds every acknowledged commit.
    QuorumNotReached {
        /// Votes needed (the key's `quorum`, one more for a member that is not a voter).
        needed: u32,
        /// The key's members that voted.
        voters: Vec<String>,
    },
    /// Lagging too far behind the last known leader position.
    NotHealthyEnough {
        /// This member's position (bytes).
        wal_position: u64,
        /// The last known leader position (bytes).
        leader_optime: u64,
    },
    /// `check_timeline`: this member's timeline is older than the cluster's last known one.
    TimelineBehind {
        /// This member's timeline.
        mine: u32,
        /// The history key's last timeline + 1.
        cluster: u32,
    },
    /// Another member is ahead (or equally ahead with a higher priority, or still primary).
    NotHealthiest {
        /// Who.
        better: String,
    },
    /// This member stepped down for a switchover: it leaves the lock to the other members.
    SteppedDownForSwitchover,
    /// A switchover candidate other than this member is healthy; waiting for it.
    WaitingForCandidate {
        /// The candidate.
        candidate: String,
    },
    /// Leader asked to step down: the candidate does not stream from it (yet), so a fast shutdown
    /// would not hand it the last WAL (PostgreSQL sends it only to connected standbys). The leader
    /// keeps leading until it does, at most [`switchover_wait_ms`](super::switchover_wait_ms).
    WaitingForCandidateToStream {
        /// The candidate.
        candidate: String,
        /// Milliseconds waited so far.
        waited_ms: u64,
    },
    /// A leader stepped down for a switchover and published its last LSN (`status.optime`, the
    /// shutdown checkpoint), and this member has not received that far: promoting it would drop the
    /// old leader's last commits from the new timeline. It stays out of the race while a member
    /// holding that WAL can take over, and while the old leader's agent answers at most
    /// [`switchover_wait_ms`](super::switchover_wait_ms) (then, or with the old leader gone,
    /// Patroni's behaviour: the race goes on without the check).
    MissingLastLsn {
        /// This member's WAL position (bytes).
        mine: u64,
        /// The published last LSN (bytes).
        last_lsn: u64,
        /// The member that stepped down.
        leader: String,
    },
    /// Running pg_rewind against the leader.
    Rewinding {
        /// The leader.
        leader: String,
    },
    /// Running single-user crash recovery before deciding whether to rewind.
    CrashRecovery,
    /// The local timeline diverged from the leader's and rewind is off: staying stopped.
    DivergedNoRewind {
        /// Local end of WAL (bytes).
        local_lsn: u64,
        /// Where the leader's timeline forked (bytes).
        switch_lsn: u64,
        /// Local timeline.
        timeline: u32,
    },
    /// The leader's timeline history does not say where our timeline ended yet (or, for a
    /// timeline this data directory's record says another member created under the leader's
    /// timeline number, who created the leader's: see [`super::promotion::unattributed`]).
    WaitingForHistory,
    /// This data directory's timeline is a branch its promotion record says another member
    /// created under the number the DCS `history` gives to `leader` (two promotions from one point,
    /// see [`super::promotion`]): it is not started, nor kept running, as a replica.
    BranchOfAnotherLeader {
        /// The timeline number.
        timeline: u32,
        /// The leader `history` credits with it.
        leader: String,
        /// Whether it is stopping a running replica for that (else staying stopped).
        stopping: bool,
    },
    /// A `required` watchdog could not be armed while this member leads.
    DemotingWatchdogUnavailable,
    /// pg_rewind failed and `remove_data_directory_on_rewind_failure` is set: clone again.
    RemovingDataDirectoryAfterRewindFailure,
    /// pg_rewind failed after it began changing the data directory ([`super::RewindFailure::Damaged`])
    /// and `remove_data_directory_on_rewind_failure` is off: PostgreSQL is not started on it, no
    /// pg_rewind is tried again; an operator must reinitialize the member (or set the key).
    RewindDamaged {
        /// This member.
        me: String,
        /// What pg_rewind said (its error line), or why the marker says so.
        error: String,
        /// This member holds the lock and gives it up (its data directory cannot serve).
        releasing_lock: bool,
    },
    /// This member holds WAL past the point where the cluster left its timeline (DCS `history`):
    /// it is not started (nor kept running) as a replica until it can be rewound from a leader.
    Diverged {
        /// Its timeline.
        timeline: u32,
        /// Where the cluster left that timeline (bytes).
        switch_lsn: u64,
        /// Whether it is stopping a running replica for that (else waiting for a leader).
        stopping: bool,
    },
    /// PostgreSQL is starting; waiting.
    WaitingForPostgres,
    /// Maintenance mode: what would have been done is not (Patroni prefixes `PAUSE: `).
    Paused {
        /// The decision without maintenance mode.
        inner: Box<Reason>,
    },
    /// The lock holder's PostgreSQL did not start within `primary_start_timeout`: giving up the lock.
    PrimaryStartTimedOut {
        /// The timeout in seconds.
        timeout_secs: u32,
    },
    /// `primary_start_timeout` is 0: a stopped primary fails over at once.
    ReleasingLockPrimaryStopped,
    /// This member's lock renewals lapsed (its demotion deadline stopped PostgreSQL) and it still
    /// holds the lock: it gives the lock up for a member with a healthier DCS link (see
    /// [`super::lapsed`]).
    ReleasingLockRenewalsLapsed,
    /// This member's lock renewals lapsed, it still holds the lock, and its last `failed` releases
    /// of it failed in a row (the DCS did not answer within `retry_timeout`): it gives up its DCS
    /// session (ZooKeeper) or lease (etcd), and the lock on it, instead ([`super::Action::DropDcsSession`],
    /// see [`super::lapsed`]).
    DroppingDcsSessionReleasesFailed {
        /// Consecutive failed releases so far.
        failed: u32,
    },
    /// This member's renewals lapsed, and its DCS reads kept failing for `failed` cycles in a row
    /// while the lock may still live on its session (a slow link whose pings keep a ZooKeeper
    /// session alive, or whose small writes refresh an etcd lease): it gives the session up, the
    /// lock with it, without seeing the lock (see [`super::lapsed::drops_unseen_lock`]).
    DroppingDcsSessionDcsUnreadable {
        /// Consecutive failed attempts (reads or releases) so far.
        failed: u32,
    },
    /// This member's lock renewals lapsed less than the hold-off ago: it keeps out of the leader
    /// race for `in_ms` more ms (see [`super::lapsed`]).
    HoldingOffAfterLapsedRenewals {
        /// The ms left of the hold-off.
        in_ms: u64,
    },
    /// pg_rewind is configured but the data directory has neither data checksums nor wal_log_hints.
    NotRewindable {
        /// Our timeline.
        timeline: u32,
    },
    /// Diverged, no rewind, and `remove_data_directory_on_diverged_timelines`: re-cloning.
    RemovingDivergedDataDirectory,
    /// The new leader has not finished its checkpoint after promotion; pg_rewind must wait for it.
    WaitingForLeaderCheckpoint,
    /// The leader published no `conn_url`: nothing to follow yet.
    LeaderNotReachable {
        /// The leader.
        leader: String,
    },
}

impl Reason {
    /// True when only an operator can end this state ([`Reason::RewindDamaged`]), also inside a
    /// paused or paced decision: the runner logs it at error level, once per change.
    pub fn needs_operator(&self) -> bool {
        match self {
            Reason::RewindDamaged { .. } => true,
            Reason::Paused { inner } | Reason::RetryingTaskLater { inner, .. } => {
                inner.needs_operator()
            }
            _ => false,
        }
    }

    /// True when this decision waits in a switchover for WAL to arrive ([`Reason::WaitingForCandidateToStream`],
    /// [`Reason::MissingLastLsn`]), also inside a paused or paced decision: the runner then keeps
    /// [`LocalState::switchover_wait_began_ms`](super::LocalState::switchover_wait_began_ms).
    pub fn is_switchover_wait(&self) -> bool {
        match self {
            Reason::WaitingForCandidateToStream { .. }
            | Reason::MissingLastLsn { .. }
            | Reason::WaitingForCandidate { .. } => true,
            Reason::Paused { inner } | Reason::RetryingTaskLater { inner, .. } => {
                inner.is_switchover_wait()
            }
            _ => false,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Reason::*;
        match self {
            LeaderWithLock { me } => write!(f, "no action. I am ({me}), the leader with the lock"),
            StandbyLeaderWithLock { me } => {
                write!(f, "no action. I am ({me}), the standby leader with the lock")
            }
            BecomingStandbyLeader => {
                f.write_str("promoted self to a standby leader because i had the session lock")
            }
            StandbyLeaderByAcquiringLock => {
                f.write_str("promoted self to a standby leader by acquiring session lock")
            }
            StartingAsStandbyLeader => {
                f.write_str("starting as a standby leader because i had the session lock")
            }
            CannotBePrimaryInStandbyCluster => {
                f.write_str("cannot be a real primary in a standby cluster")
            }
            RewindingFromRemote { host, port } => write!(
                f,
                "running pg_rewind from the remote primary {host}:{port}: this node's timeline went past the point where the remote's forked off"
            ),
            ApplyingStandbyClusterSettings => f.write_str(
                "changing the standby leader's recovery settings to the standby_cluster section's and reloading",
            ),
            FollowingRemoteWhileUnlocked => f.write_str(
                "trying to follow a remote member because standby cluster is unhealthy",
            ),
            BootstrappingStandbyLeader => f.write_str("trying to bootstrap a new standby leader"),
            Following { me, leader } => write!(
                f,
                "no action. I am ({me}), a secondary, and following a leader ({leader})"
            ),
            BootstrappingNewCluster => f.write_str("trying to bootstrap a new cluster"),
            InitializedNewCluster => f.write_str("initialized a new cluster"),
            WaitingForLeaderToBootstrap => f.write_str("waiting for leader to bootstrap"),
            BootstrapFromLeader { source } => {
                write!(f, "trying to bootstrap from leader '{source}'")
            }
            BootstrapWithoutLeader => f.write_str("trying to bootstrap (without leader)"),
            TaskInProgress { task } => write!(f, "{} in progress", task_name(*task)),
            RetryingTaskLater { task, in_ms, inner } => write!(
                f,
                "{inner} (the last {} failed: next attempt in {:.1}s)",
                task_name(*task),
                *in_ms as f64 / 1000.0
            ),
            SysidMismatch { local, cluster } => write!(
                f,
                "system ID mismatch, node belongs to a different cluster: {local} != {cluster}"
            ),
            PublishedSystemIdentifier => {
                f.write_str("initialize key was missing: published the system identifier")
            }
            PromotedByAcquiringLock => {
                f.write_str("promoted self to leader by acquiring session lock")
            }
            PromotedBecauseHadLock => {
                f.write_str("promoted self to leader because I had the session lock")
            }
            AcquiredLockAsLeader => f.write_str("acquired session lock as a leader"),
            DemotingNoLock { leader: Some(l) } => write!(
                f,
                "demoting self because I do not have the lock and I was a leader (new leader: {l})"
            ),
            DemotingNoLock { leader: None } => {
                f.write_str("demoting self because I do not have the lock and I was a leader")
            }
            DemotingDcsInaccessible => {
                f.write_str("demoting self because DCS is not accessible and I was a leader")
            }
            DcsInaccessible => f.write_str("DCS is not accessible"),
            ConfirmedFailsafeLeader => f.write_str(
                "not racing for the leader lock: failsafe mode is enabled and I confirmed the leader less than ttl ago",
            ),
            FailsafeMemberUnheard { member } => write!(
                f,
                "not racing for the leader lock: failsafe mode is enabled, I am not in the failsafe key and {member}, in it, did not answer"
            ),
            NotInFailsafeKey => f.write_str(
                "not racing for the leader lock: failsafe mode is enabled and I am not in the failsafe key",
            ),
            FailsafeKeepsLeader => f.write_str(
                "continue to run as a leader because failsafe mode is enabled and all members are accessible",
            ),
            ManualFailoverDemoting { candidate } => {
                write!(f, "manual failover: demoting myself in favour of {candidate}")
            }
            ManualFailoverHandingOver { candidate } => write!(
                f,
                "manual failover: still in recovery, handing the leader lock to {candidate} without promoting"
            ),
            ManualFailoverImpossible { why } => {
                write!(f, "manual failover: {why}, failover is not possible")
            }
            ManualFailoverScheduled { at } => {
                write!(f, "awaiting the scheduled switchover at {at}")
            }
            ClearedFailoverKey => f.write_str("cleaning up failover key"),
            StartingAsSecondary => f.write_str("starting as a secondary"),
            StartingPrimaryAfterFailure => f.write_str("starting primary after failure"),
            StartingReadOnlyWithLock => {
                f.write_str("starting as readonly because i had the session lock")
            }
            StartingAsReplicaOf { leader } => {
                write!(f, "starting as a secondary following {leader}")
            }
            ChangingPrimaryConninfo { leader } => write!(
                f,
                "changing primary_conninfo and reloading to follow the new leader ({leader})"
            ),
            NotSynchronousStandby => f.write_str(
                "not promoting: synchronous replication is on and I am not a synchronous standby",
            ),
            QuorumNotReached { needed, voters } => write!(
                f,
                "not promoting: quorum commit needs {needed} vote(s) from the sync key's members, got {} ({})",
                voters.len(),
                voters.join(", ")
            ),
            NotAllowedToPromote => f.write_str(
                "following a different leader because I am not allowed to promote",
            ),
            NotHealthyEnough {
                wal_position,
                leader_optime,
            } => write!(
                f,
                "not healthy enough for leader race (wal position {wal_position}, leader optime {leader_optime})"
            ),
            TimelineBehind { mine, cluster } => write!(
                f,
                "not healthy enough for leader race (my timeline {mine} is behind last known cluster timeline {cluster})"
            ),
            NotHealthiest { better } => write!(
                f,
                "following a different leader because I am not the healthiest node ({better} is healthier)"
            ),
            SteppedDownForSwitchover => {
                f.write_str("stepped down for a switchover: leaving the leader race to the others")
            }
            WaitingForCandidate { candidate } => {
                write!(f, "waiting for the switchover candidate {candidate} to take over")
            }
            WaitingForCandidateToStream {
                candidate,
                waited_ms,
            } => write!(
                f,
                "switchover: waiting for {candidate} to stream from me before stepping down, so it receives my last WAL ({:.1} s so far)",
                *waited_ms as f64 / 1000.0
            ),
            MissingLastLsn {
                mine,
                last_lsn,
                leader,
            } => write!(
                f,
                "not promoting: my WAL position {} is behind {}, the last LSN {leader} published when it stepped down for a switchover",
                crate::postgres::format_lsn(*mine),
                crate::postgres::format_lsn(*last_lsn)
            ),
            Rewinding { leader } => write!(f, "running pg_rewind from {leader}"),
            CrashRecovery => f.write_str("doing crash recovery in a single user mode"),
            DivergedNoRewind {
                local_lsn,
                switch_lsn,
                timeline,
            } if *switch_lsn == 0 => write!(
                f,
                "cannot rejoin: this node is on timeline {timeline}, which the leader never had (last checkpoint {}), and use_pg_rewind is off; staying stopped, the data directory is kept",
                crate::postgres::format_lsn(*local_lsn),
            ),
            DivergedNoRewind {
                local_lsn,
                switch_lsn,
                timeline,
            } => write!(
                f,
                "cannot rejoin: timeline {timeline} diverged from the leader's (local end of WAL {} >= switch point {}) and use_pg_rewind is off; staying stopped, the data directory is kept",
                crate::postgres::format_lsn(*local_lsn),
                crate::postgres::format_lsn(*switch_lsn)
            ),
            Diverged {
                timeline,
                switch_lsn,
                stopping,
            } => write!(
                f,
                "holds WAL past {} on timeline {timeline}, where the cluster moved to a new timeline: {}",
                crate::postgres::format_lsn(*switch_lsn),
                if *stopping {
                    "stopping to rewind from the leader"
                } else {
                    "not starting until a leader can rewind it"
                }
            ),
            RewindDamaged {
                me,
                error,
                releasing_lock,
            } => write!(
                f,
                "pg_rewind was interrupted after changing the data directory ({error}): it needs a new base backup: `praetor ctl reinit <cluster> {me}` or set postgresql.remove_data_directory_on_rewind_failure; not starting PostgreSQL on it{}",
                if *releasing_lock {
                    ", releasing the leader lock"
                } else {
                    ""
                }
            ),
            RemovingDataDirectoryAfterRewindFailure => f.write_str(
                "pg_rewind failed: removing the data directory to clone again (remove_data_directory_on_rewind_failure)",
            ),
            DemotingWatchdogUnavailable => {
                f.write_str("demoting self because watchdog could not be activated")
            }
            BranchOfAnotherLeader {
                timeline,
                leader,
                stopping,
            } => write!(
                f,
                "timeline {timeline} here is another promotion's branch than {leader}'s timeline {timeline} (promotion record vs DCS history); pg_rewind cannot rewind between equal timeline numbers: {}",
                if *stopping {
                    "stopping this replica"
                } else {
                    "staying stopped until reinitialized (remove_data_directory_on_diverged_timelines re-clones)"
                }
            ),
            WaitingForHistory => {
                f.write_str("waiting for the leader's timeline history to decide about rewind")
            }
            WaitingForPostgres => f.write_str("waiting for postgres to start"),
            Paused { inner } => write!(f, "PAUSE: {inner}"),
            PrimaryStartTimedOut { timeout_secs } => write!(
                f,
                "primary start has timed out after {timeout_secs} s (primary_start_timeout): stopping it and releasing the leader lock"
            ),
            ReleasingLockRenewalsLapsed => f.write_str(
                "releasing the leader lock: my renewals lapsed (the DCS answers me too slowly to keep the lock)",
            ),
            DroppingDcsSessionReleasesFailed { failed } => write!(
                f,
                "giving up my DCS session and the leader lock on it: my renewals lapsed and my last {failed} releases of the lock failed",
            ),
            DroppingDcsSessionDcsUnreadable { failed } => write!(
                f,
                "giving up my DCS session and the leader lock it may still hold: my renewals lapsed and I could not read the DCS in my last {failed} tries",
            ),
            HoldingOffAfterLapsedRenewals { in_ms } => write!(
                f,
                "not racing for the leader lock for {in_ms} ms more: my renewals lapsed (the DCS answers me too slowly)"
            ),
            ReleasingLockPrimaryStopped => f.write_str(
                "postgres of the leader is not running and primary_start_timeout is 0: releasing the leader lock for a failover",
            ),
            NotRewindable { timeline } => write!(
                f,
                "cannot rejoin: timeline {timeline} diverged and use_pg_rewind is set, but the data directory has neither data checksums nor wal_log_hints (pg_rewind needs one); staying stopped, the data directory is kept"
            ),
            RemovingDivergedDataDirectory => f.write_str(
                "timeline diverged and pg_rewind is not possible: removing the data directory to clone again (remove_data_directory_on_diverged_timelines)",
            ),
            WaitingForLeaderCheckpoint => {
                f.write_str("waiting for the leader to finish its checkpoint after promote")
            }
            LeaderNotReachable { leader } => {
                write!(f, "leader {leader} has no connection address yet")
            }
        }
    }
}

fn task_name(t: super::Task) -> &'static str {
    match t {
        super::Task::Bootstrap => "bootstrap",
        super::Task::Clone => "replica creation (basebackup)",
        super::Task::Rewind => "pg_rewind",
        super::Task::CrashRecovery => "crash recovery",
        super::Task::Start => "postgres start",
    }
}
