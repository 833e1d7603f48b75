//! The HA decision core: a pure function from what the agent knows to what it must do.
//!
//! [`decide`] is to the agent what etcd's `RawNode` is to raft: no I/O, no clock, no randomness. The
//! runner gathers a [`Cluster`] view from the DCS, a [`LocalState`] from PostgreSQL and its own memory,
//! the [`HaConfig`] and the time, calls [`decide`], and executes the returned [`Action`]s in order.
//! Every rule of Patroni's HA loop (reference/patroni.md section 6) and every row of its failure table
//! (section 7) that applies is a case of `decide`, tested in `tests.rs` by table.
//!
//! Execution contract for [`Decision::actions`]: actions run in order; an action that fails or loses
//! a race (a compare-and-set, the lock) ends the list: the next loop decides again from fresh state.
//! Actions marked *background* start a task and end the list; while it runs, [`LocalState::task`] is
//! set and `decide` only keeps the DCS fresh.

pub mod cadence;
mod decide;
mod election;
pub mod failsafe;
pub mod guards;
pub mod lapsed;
pub mod promotion;
mod reason;
mod rejoin;
pub mod rewind_outcome;
pub mod slots;
pub mod standby;
pub mod sync;
// Issue 14: the fence target from the DCS, and a switchover from a lock holder in recovery.
pub mod former;
mod handover;
#[cfg(test)]
mod tests;

pub use decide::decide;
pub use election::{is_healthiest, PeerStatus};
pub use promotion::Promotion;
pub use reason::Reason;
pub use rejoin::{diverged_vote, rejoin_plan, RejoinPlan};
pub use rewind_outcome::RewindFailure;

use praetor_config::{DynamicConfig, Tags};
pub use praetor_dcs::Cluster;

/// The settings `decide` reads: this member's identity and tags and the cluster's dynamic
/// configuration.
#[derive(Debug, Clone)]
pub struct HaConfig {
    /// This member's name.
    pub name: String,
    /// This member's tags.
    pub tags: Tags,
    /// The dynamic configuration in force (DCS `config`, else `bootstrap.dcs`).
    pub dynamic: DynamicConfig,
    /// `postgresql.remove_data_directory_on_diverged_timelines`: re-clone a member whose timeline
    /// diverged when it cannot be rewound (otherwise it stays stopped).
    pub remove_data_on_diverged: bool,
    /// `praetor.fence_timeout_ms`: how long a promotion waits for a silent former primary to answer
    /// the fence (ms).
    pub fence_timeout_ms: u64,
    /// `postgresql.remove_data_directory_on_rewind_failure`: after pg_rewind failed, remove the data
    /// directory so the member clones again (otherwise it retries the rewind at the failed-task
    /// pace and stays stopped meanwhile).
    pub remove_data_on_rewind_failure: bool,
    /// A replica creation method of `create_replica_methods` works without a leader (`no_leader`):
    /// an empty member of an initialized cluster with no leader clones with it instead of waiting
    /// (Patroni: "bootstrap (without leader)").
    pub clone_without_leader: bool,
    /// The major version of the PostgreSQL this member runs (15, 18; 0 when unknown): which slot
    /// rules apply ([`slots::FAILOVER_SLOTS_MAJOR`]).
    pub pg_major: u32,
}

/// The time as `decide` sees it, supplied by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic milliseconds (any origin), for durations.
    pub mono_ms: u64,
    /// Wall-clock seconds since the Unix epoch, for `scheduled_at`.
    pub unix_secs: i64,
}

/// What is in the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// Missing or empty: this node must bootstrap or clone.
    Empty,
    /// A PostgreSQL data directory with this database system identifier.
    Initialized {
        /// `Database system identifier` from pg_controldata.
        sysid: String,
    },
}

/// `Database cluster state` from pg_controldata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// `shut down`: a primary stopped cleanly.
    ShutDown,
    /// `shut down in recovery`: a replica stopped cleanly.
    ShutDownInRecovery,
    /// `in production`: a primary running, or crashed.
    InProduction,
    /// `in archive recovery`: a replica running, or crashed.
    InArchiveRecovery,
    /// `in crash recovery`: crashed during crash recovery.
    InCrashRecovery,
    /// `shutting down`: crashed during shutdown.
    ShuttingDown,
    /// `starting up` or anything else.
    Other,
}

impl ClusterState {
    /// True when the last run ended with a clean shutdown (a checkpoint that pg_rewind accepts).
    pub fn is_clean_shutdown(self) -> bool {
        matches!(
            self,
            ClusterState::ShutDown | ClusterState::ShutDownInRecovery
        )
    }

    /// True when the data directory was last used as a primary (not in recovery).
    pub fn was_primary(self) -> bool {
        matches!(
            self,
            ClusterState::ShutDown | ClusterState::InProduction | ClusterState::ShuttingDown
        )
    }
}

/// What pg_controldata says about a stopped instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlData {
    /// How the last run ended.
    pub state: ClusterState,
    /// `Latest checkpoint's TimeLineID`.
    pub timeline: u32,
    /// `Latest checkpoint location` (bytes).
    pub checkpoint_lsn: u64,
    /// `Minimum recovery ending location` (bytes; 0 when unset).
    pub min_recovery_end_lsn: u64,
    /// `Min recovery ending loc's timeline` (0 when unset): a replica that already replays a later
    /// timeline than its last checkpoint's followed the switch.
    pub min_recovery_end_timeline: u32,
    /// Data checksums or `wal_log_hints` are on, as pg_rewind requires.
    pub rewindable: bool,
}

/// Where a replica streams from: a member and the host/port of its `conn_url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// Member name (also the name of this replica's slot there is *our* name, not this).
    pub member: String,
    /// Host of the member's `conn_url`.
    pub host: String,
    /// Port of the member's `conn_url`.
    pub port: u16,
}

/// PostgreSQL as observed this loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Postgres {
    /// No postmaster. `control` is pg_controldata's view when the data directory exists.
    Stopped {
        /// pg_controldata, when readable.
        control: Option<ControlData>,
    },
    /// A postmaster exists but does not accept connections yet (starting, crash recovery).
    Starting,
    /// Accepting connections.
    Running(Running),
}

/// A running PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// `pg_is_in_recovery()` is false.
    pub is_primary: bool,
    /// Current timeline.
    pub timeline: u32,
    /// Primary: current WAL write position. Replica: max(received, replayed). Bytes.
    pub wal_position: u64,
    /// Replica: host and port of `primary_conninfo` (whom it is told to follow).
    pub upstream: Option<(String, u16)>,
    /// Primary: its standbys as `pg_stat_replication` shows them.
    pub standbys: Vec<sync::Standby>,
    /// The current `synchronous_standby_names`.
    pub sync_standby_names: String,
    /// Its replication slots.
    pub slots: Vec<slots::Slot>,
}

impl Postgres {
    /// The running instance, if any.
    pub fn running(&self) -> Option<&Running> {
        match self {
            Postgres::Running(r) => Some(r),
            _ => None,
        }
    }
}

/// A long operation the runner executes in the background.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// initdb, configuration, start as primary, users.
    Bootstrap,
    /// pg_basebackup from a member, then start as replica.
    Clone,
    /// pg_rewind from the leader, then start as replica.
    Rewind,
    /// Single-user crash recovery, to learn where a crashed primary's WAL ends.
    CrashRecovery,
    /// Starting PostgreSQL and waiting until it accepts connections.
    Start,
}

/// Everything about this node `decide` needs: the data directory, PostgreSQL, and the runner's
/// memory of earlier loops.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalState {
    /// The data directory.
    pub data: DataDir,
    /// PostgreSQL.
    pub postgres: Postgres,
    /// A background task still running.
    pub task: Option<Task>,
    /// This agent created `initialize` (won the bootstrap race) and has not yet published the system
    /// identifier.
    pub won_initialize: bool,
    /// Monotonic ms of this member's last successful lock acquisition or renewal (taken before the
    /// request was sent), or of its last failsafe confirmation round that every member accepted
    /// ([`Action::KeepLeadingInFailsafe`]), while it believes it holds the lock; `None` when it
    /// does not.
    pub lock_renewed_ms: Option<u64>,
    /// The armed watchdog's timeout in seconds; `None` when no watchdog is armed. A leader that
    /// cannot renew demotes before it would fire (see [`demote_deadline_ms`]).
    pub watchdog_timeout_secs: Option<u32>,
    /// Where the watchdog stands (see [`WatchdogState`]).
    pub watchdog: WatchdogState,
    /// Other members' answers from their REST APIs, fetched when a leader race or a switchover needs
    /// them (see [`needs_peers`]); `None` when not fetched this loop.
    pub peers: Option<Vec<PeerStatus>>,
    /// Monotonic ms when this member, holding the lock, began (re)starting its PostgreSQL as primary
    /// after it stopped; `None` otherwise (for `primary_start_timeout`).
    pub primary_start_began_ms: Option<u64>,
    /// The last leader this member saw (other than itself), with its PostgreSQL address: the primary
    /// to fence before promoting when its lock expired.
    pub former_leader: Option<Upstream>,
    /// The leader's WAL position when it last changed `synchronous_standby_names` (bytes): a standby
    /// joins the `sync` key only once it confirmed that far.
    pub sync_catchup_lsn: u64,
    /// Members that left the cluster less than `member_slots_ttl` ago: the leader keeps their slots.
    pub retained_members: Vec<String>,
    /// Standby cluster: what the runner last learnt of the remote primary (`standby_cluster.host`
    /// and `port`): its timeline and timeline history. `None` outside a standby cluster, when the
    /// remote did not answer, or when it is itself in recovery (Patroni's rewind check skips such a
    /// remote too). See [`standby::RemoteTimeline`].
    pub remote: Option<standby::RemoteTimeline>,
    /// Standby cluster: the settings of the section the running standby leader's configuration was
    /// last written with by this agent ([`standby::RemoteRecovery`]); `None` when PostgreSQL does not
    /// run, was last configured to follow someone else, or the agent has not written its
    /// configuration since it started.
    pub remote_recovery: Option<standby::RemoteRecovery>,
    /// A former primary this member promoted (or is promoting) without being able to fence it (it
    /// did not answer within the fence timeout): host and port, until the background fence proves
    /// it down. The leader keeps fencing it ([`Action::FenceInBackground`]) so that a host that
    /// wakes up acknowledges nothing; a candidate whose promotion spans another cycle fences it
    /// again for [`FENCE_RECHECK_MS`] only.
    pub unfenced: Option<(String, u16)>,
    /// The last background task that failed and when (monotonic ms), until one succeeds: `decide`
    /// paces its retries (see [`task_retry_after_ms`]).
    pub failed_task: Option<(Task, u64)>,
    /// With the DCS unreachable and `failsafe_mode` on: whether every member of the last known
    /// `failsafe` key confirmed this leader over `POST /failsafe` this loop (`None`: not asked).
    pub failsafe_confirmed: Option<bool>,
    /// Monotonic ms when this member first waited for the proxies to leave its `former_leader` (the
    /// runner keeps it while that former leader stays the same and every decision since is a
    /// promotion, [`Decision::promotes`]); `None` before the first wait.
    pub proxies_wait_began_ms: Option<u64>,
    /// The session or lease TTL the DCS granted this member ([`praetor_dcs::Dcs::granted_ttl`]), which
    /// bounds how long a proxy keeps serving without DCS contact; `None`: as requested (`ttl`).
    pub granted_ttl: Option<std::time::Duration>,
    /// Monotonic ms when this member began its current switchover wait: as the leader, for the
    /// candidate to stream from it ([`Reason::WaitingForCandidateToStream`]); as a member racing
    /// after a leader stepped down, for the old leader's last WAL ([`Reason::MissingLastLsn`]). The
    /// runner sets it on the first such decision and clears it on any other; `None` otherwise.
    /// Both waits are bounded by [`switchover_wait_ms`] from here.
    pub switchover_wait_began_ms: Option<u64>,
    /// Monotonic ms when this replica last began copying logical slots from the leader
    /// ([`Action::CopyLogicalSlots`]), whatever the outcome; `None` before the first attempt.
    /// `decide` paces the copies with it ([`slots::pace_copies`]).
    pub slot_copy_at_ms: Option<u64>,
    /// Monotonic ms when this member last answered `Accepted` to a leader's `POST /failsafe`
    /// (failsafe mode); `None`: never. An acceptance is a promise to that leader, whose demotion
    /// deadline it extends: this member stays out of the leader race for `ttl` after it
    /// ([`failsafe::promised`]).
    pub failsafe_accepted_ms: Option<u64>,
    /// The background task in `task` starts PostgreSQL read-only ([`Action::starts_read_only`]):
    /// the `Starting` PostgreSQL it brings up cannot accept writes, so a lock holder that loses the
    /// DCS need not abort it at its demotion deadline.
    pub starting_read_only: bool,
    /// The promotion that created this data directory's newest timeline, as recorded in the data
    /// directory ([`Promotion`]); `None` when it never promoted (nor copied a data directory that
    /// did) or the record is unreadable. Compared with the DCS `history` to tell two branches of
    /// one timeline number apart ([`promotion::taken_over_by`]).
    pub promoted: Option<Promotion>,
    /// Monotonic ms when this member's lock renewals last lapsed: the runner stopped (the deadline
    /// guard, the check at a cycle's start) or demoted (DCS unreachable) a PostgreSQL that might
    /// accept writes because its demotion deadline passed without a renewal, or, later, when the
    /// DCS confirmed the release that followed (the hold-off counts from it). The runner forgets
    /// it when it reads another member holding the lock or acquires the lock itself. `decide`
    /// then gives the lock up whenever it sees it its own and holds off the race for a while
    /// ([`lapsed`]); `None`: no lapse (or another member led since, or this one took the lock
    /// anew).
    pub renewals_lapsed_ms: Option<u64>,
    /// Monotonic ms of the lapse itself, while [`LocalState::renewals_lapsed_ms`] is set (which a
    /// confirmed release moves on; this stays). When no other member could take the lock, the
    /// hold-off counts from here ([`lapsed::holding_off`]); `None`: no lapse.
    pub lapsed_at_ms: Option<u64>,
    /// How many attempts to give the lock up failed in a row while this member's renewals were
    /// lapsed: releases ([`Action::ReleaseLeader`]) the DCS did not confirm within `retry_timeout`,
    /// and cycles whose DCS read failed while the lock may still live on this member's session (no
    /// release or session drop done since the lapse, no view since showing the lock not its own).
    /// The runner counts them, and resets the count when a release or an
    /// [`Action::DropDcsSession`] is done, when it reads the lock not its own, and when it forgets
    /// the lapse. `decide` drops the DCS session once it reaches
    /// [`lapsed::releases_before_dropping_session`] ([`lapsed::steps_aside`] with a view,
    /// [`lapsed::drops_unseen_lock`] without one).
    pub lapsed_lock_failures: u32,
    /// PostgreSQL is stopped on a data directory a pg_rewind left damaged (it failed after it
    /// began writing, or was killed mid-way: [`RewindFailure::Damaged`]): the line that says why.
    /// The runner reads it from the rewind marker next to the data directory, so it survives an
    /// agent restart; `None`: no such damage (or PostgreSQL runs, or a task runs).
    pub rewind_damage: Option<String>,
}

/// The watchdog as `decide` sees it (`watchdog.mode` and the device, reference/patroni.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchdogState {
    /// `mode: off`: no watchdog.
    #[default]
    Off,
    /// Armed (this member leads with it).
    Armed,
    /// Configured but not armed: arm it before taking or renewing the lock.
    NotArmed,
    /// The last attempt to arm it failed in `required` mode: no lock may be taken or kept.
    Refused,
}

/// The decision of one loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// What to do, in order (see the module docs for the execution contract).
    pub actions: Vec<Action>,
    /// Why, in Patroni's words (logged when it changes, shown by the REST API).
    pub reason: Reason,
}

impl Decision {
    /// True when this loop goes on with a promotion (the actions end with [`Action::Promote`]):
    /// this member is the candidate. The runner keeps [`LocalState::proxies_wait_began_ms`] only
    /// while it is: a member that stops being the candidate before it promotes (another took the
    /// lock, the former leader took it back) forgets when its wait began. Kept, that start would
    /// count against a later candidacy after the same former leader (led again, failed again)
    /// and skip that wait for the proxies: a promotion while a proxy still routes to it.
    pub fn promotes(&self) -> bool {
        self.actions
            .iter()
            .any(|a| matches!(a, Action::Promote { .. }))
    }
}

/// How to stop PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGINT: roll back sessions, checkpoint, and wait until streaming replicas received all WAL.
    Fast,
    /// SIGQUIT: stop at once without a checkpoint (crash recovery on next start).
    Immediate,
}

/// How to start PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAs {
    /// Read-write primary (no standby.signal).
    Primary,
    /// Standby following `upstream` (or nobody yet: read-only, waiting for a leader).
    Replica {
        /// Whom to stream from.
        upstream: Option<Upstream>,
    },
}

/// One step the runner executes.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create `initialize` = "" (the bootstrap race). Lost race ends the list.
    RaceInitialize,
    /// *Background*: initdb with `bootstrap.initdb`, write configuration and pg_hba, start as primary,
    /// create the superuser/replication roles and `bootstrap.users`. Needs `RaceInitialize` won.
    Bootstrap,
    /// Create `initialize` = `sysid` if absent (data exists but the key does not). Lost race ends the
    /// list.
    CreateInitialize {
        /// The database system identifier.
        sysid: String,
    },
    /// Replace the bootstrap placeholder "" in `initialize` by `sysid`.
    PublishInitialize {
        /// The database system identifier.
        sysid: String,
    },
    /// Create `leader` = this member (create-if-absent). Lost race ends the list.
    AcquireLeader,
    /// Renew `leader` (CAS on this member's name). Lost lock ends the list.
    RenewLeader,
    /// Delete `leader` if it names this member. PostgreSQL must already be stopped or read-only.
    ReleaseLeader,
    /// Give up this member's DCS session (ZooKeeper) or lease (etcd), and with it `leader` and
    /// `members/<name>`: closed or revoked at once when the DCS answers, otherwise never refreshed
    /// again so that the DCS expires it within the granted ttl; the next DCS call opens a new one
    /// and writes the member key again, never `leader` ([`praetor_dcs::Dcs::drop_session`]). For a
    /// lapsed leader whose releases keep failing ([`lapsed`]). PostgreSQL must already be stopped
    /// or read-only.
    DropDcsSession,
    /// Arm the watchdog for the leader lock (`ttl - safety_margin`); in `required` mode a refusal is
    /// not done (ends the list), and the runner reports [`WatchdogState::Refused`] next cycle.
    ArmWatchdog,
    /// Make sure the former primary at this address accepts no more writes before this member
    /// promotes: if it still runs as a primary, stop it (over SQL, as its superuser) and wait until
    /// it is gone (a fast shutdown first sends its remaining WAL to this standby). Done once it is
    /// stopped, down or not a primary. A former primary that does not answer within `answer_ms` (a
    /// silent host) is left to the background fence: the runner records it in
    /// [`LocalState::unfenced`] and goes on; one that answered and is shutting down is waited for up
    /// to `shutdown_ms`, then likewise. Both bounds come from the lease (see `decide::promotion`).
    FencePrimary {
        /// Host of the former primary (this replica's upstream).
        host: String,
        /// Its port.
        port: u16,
        /// How long to wait for an answer at all (ms).
        answer_ms: u64,
        /// How long to wait for a primary that answered to finish shutting down (ms).
        shutdown_ms: u64,
    },
    /// Leader: keep fencing a former primary that could not be fenced before promoting, in the
    /// background (one attempt a second, each bounded), until it is stopped, down or not a primary;
    /// the runner then clears [`LocalState::unfenced`]. Never ends the list.
    FenceInBackground {
        /// Host of the former primary.
        host: String,
        /// Its port.
        port: u16,
    },
    /// The fencing handshake with the proxies: wait until no live proxy's `praetor/proxies/<id>` key
    /// routes writes to `former` (the leader this member replaces), re-reading the DCS. Done once
    /// none does; ends the list (no promotion this loop) after `wait_ms`. `decide` stops asking
    /// once the proxies' contact deadline ([`praetor_dcs::ProxyState::contact_deadline_within`])
    /// has passed since the first wait ([`LocalState::proxies_wait_began_ms`]): by then a proxy that
    /// did not answer has stopped serving.
    AwaitProxies {
        /// The former leader's member name.
        former: String,
        /// How long to wait this cycle (ms): `loop_wait`, or what is left to the contact deadline.
        wait_ms: u64,
    },
    /// `pg_promote()` and wait for it; PostgreSQL must be a running replica and this member must hold
    /// the lock. `decide` puts a [`Action::RenewLeader`] right before it and sets `within_ms` to that
    /// renewal's demotion window ([`demote_window_ms`]): the runner does not promote (not done, ends
    /// the list) once `within_ms` have passed since the renewal's request was sent (the agent was
    /// frozen, or the renewal was slow), nor without a renewal it knows of, since the lease may no
    /// longer cover the promotion (see [`may_accept_writes`]). A watchdog armed in the same list
    /// does not shorten `within_ms` (its timeout is known once armed): the window still ends
    /// `retry_timeout` before the renewed lease can expire, which is what this check protects, and
    /// the deadline guard stops a primary before the watchdog would fire.
    Promote {
        /// The longest time from the renewal right before to `pg_promote()` (ms).
        within_ms: u64,
    },
    /// Stop PostgreSQL and wait for it to exit.
    Stop(StopMode),
    /// *Background*: write the configuration for `StartAs` and start PostgreSQL.
    Start(StartAs),
    /// Point a running replica at `upstream` (`None`: stream from nobody, `nostream`): rewrite
    /// primary_conninfo / primary_slot_name and reload.
    Follow(Option<Upstream>),
    /// *Background*: pg_basebackup from `source` into the empty data directory, then start as a
    /// replica of `leader`.
    Clone {
        /// The member to copy from.
        source: Upstream,
        /// The leader to stream from afterwards.
        leader: Upstream,
    },
    /// *Background*: with no leader, create the data directory with the replica creation methods
    /// that need none (`no_leader`, a restore from backup), then start as a replica streaming from
    /// nobody until a leader appears.
    CloneWithoutLeader,
    /// *Background*: pg_rewind from the leader, then start as its replica.
    Rewind(Upstream),
    /// *Background*: single-user crash recovery of a primary that did not shut down cleanly, so that
    /// pg_controldata tells where its WAL ends.
    CrashRecovery,
    /// Stop the running background task (a primary start that exceeded `primary_start_timeout`).
    AbortTask,
    /// Remove the data directory so the next loop clones again. Only decided when the configuration
    /// asks for it (`remove_data_directory_on_diverged_timelines`); PostgreSQL is stopped.
    RemoveDataDirectory,
    /// Create these physical replication slots (reserving WAL at once).
    EnsureSlots(Vec<String>),
    /// Drop these physical replication slots (inactive ones; an active slot is left for next time).
    DropSlots(Vec<String>),
    /// Replica: advance these copies of permanent slots to these positions (bytes).
    AdvanceSlots(Vec<(String, u64)>),
    /// Replica before PostgreSQL 17: advance these copies of permanent logical slots, each in its
    /// database. A copy PostgreSQL can no longer advance (SQLSTATE 58P01: its WAL was removed;
    /// 55000: invalidated or unusable, as Patroni's `SlotsAdvanceThread`) is dropped, so the next
    /// cycle copies it again; other failures are logged and retried next cycle.
    AdvanceLogicalSlots(Vec<slots::LogicalAdvance>),
    /// Replica before PostgreSQL 17: copy these permanent logical slots from the leader `from`
    /// (Patroni's `copy_logical_slots`): read each slot's state file there, stop PostgreSQL, write
    /// the files into `pg_replslot/`, start it again as a replica. Costs one restart; a failure is
    /// logged, and `decide` tries the copy again at most once per [`slots::SLOT_COPY_PACE_MS`]
    /// (the runner records each attempt in [`LocalState::slot_copy_at_ms`]).
    CopyLogicalSlots {
        /// The leader to read the slots from.
        from: Upstream,
        /// The slots to copy (`failover` is false).
        slots: Vec<slots::LogicalSlot>,
    },
    /// Leader running as primary: create these permanent logical slots, each connected to its
    /// database (a failure is logged and retried next loop).
    CreateLogicalSlots(Vec<slots::LogicalSlot>),
    /// Leader, PostgreSQL 17+ with permanent logical slots: set `synchronized_standby_slots` to this
    /// value (comma-separated physical slot names; rewrite postgresql.conf and reload when it
    /// changes, nothing otherwise).
    SetSynchronizedStandbySlots(String),
    /// Leader: write `status` with the current WAL position.
    WriteStatus,
    /// Leader stepping down in a planned switchover, before its fast stop: wait until
    /// `pg_stat_activity` shows no transaction in progress, at most `max_ms` (ms; see
    /// [`drain_budget_ms`]), so transactions that proxies let finish are not rolled back by the stop.
    /// Errors (the server does not answer) end the wait; the stop goes ahead either way.
    DrainTransactions {
        /// The longest wait (ms).
        max_ms: u64,
    },
    /// Leader stepping down, PostgreSQL stopped cleanly: write `status` with `optime` = the shutdown
    /// checkpoint's location (pg_controldata's `Latest checkpoint location`, bytes), keeping the
    /// key's `slots` and `retain_slots`, before [`Action::ReleaseLeader`]. Patroni does the same in
    /// `demote()`: `release_leader_key_voluntarily(last_lsn)` → `dcs.delete_leader(leader,
    /// last_lsn)` writes `{"optime": last_lsn}` and then deletes the key. The members racing next
    /// compare their WAL position with it (see `decide`: a planned switchover never promotes a
    /// member that lacks it). Not done (ends the list, the lock is kept) when pg_controldata does
    /// not say `shut down`: an unclean stop leaves no known last LSN to publish.
    WriteLastLsn,
    /// Leader: set `synchronous_standby_names` (rewrite postgresql.conf and reload); the runner notes
    /// the WAL position at that moment for [`LocalState::sync_catchup_lsn`].
    SetSyncStandbyNames(String),
    /// Leader: write the `sync` key.
    WriteSync(praetor_dcs::SyncState),
    /// The DCS is unreachable and every member of the last `failsafe` key accepted this leader
    /// (`POST /failsafe`) this loop: the confirmation counts as a lock renewal. The runner sets
    /// [`LocalState::lock_renewed_ms`] to the instant it began asking (the demotion deadline moves
    /// on from there) and feeds the watchdog, as Patroni's `_handle_dcs_error` calls
    /// `set_is_leader(True)` and `watchdog.keepalive()`. Without it the primary kept running would
    /// be stopped at the old deadline, or the node reset by its watchdog.
    KeepLeadingInFailsafe,
    /// Leader: write the `failsafe` key (member → api_url); empty deletes it.
    WriteFailsafe(std::collections::BTreeMap<String, String>),
    /// Leader: append the promotion that started the current timeline to `history`.
    UpdateHistory,
    /// Delete the `failover` key (request done or impossible) if it still has this version.
    ClearFailover(praetor_dcs::Version),
    /// Stop the agent with an error (e.g. system identifier mismatch): never join the wrong cluster.
    Fatal(String),
}

impl Action {
    /// True for actions that start a background task (and so end the list).
    pub fn is_background(&self) -> bool {
        matches!(
            self,
            Action::Bootstrap
                | Action::Start(_)
                | Action::Clone { .. }
                | Action::CloneWithoutLeader
                | Action::Rewind(_)
                | Action::CrashRecovery
        )
    }

    /// Whether the background task this action runs brings PostgreSQL up in recovery (a start as
    /// replica, the start after a rewind): until a later [`Action::Promote`], that PostgreSQL
    /// acknowledges no write, so the demotion deadline has nothing to stop or hurry while it starts
    /// (see [`may_accept_writes`]).
    pub fn starts_read_only(&self) -> bool {
        matches!(
            self,
            Action::Start(StartAs::Replica { .. }) | Action::Rewind(_)
        )
    }

    /// The task a background action runs.
    pub fn task(&self) -> Option<Task> {
        Some(match self {
            Action::Bootstrap => Task::Bootstrap,
            Action::Start(_) => Task::Start,
            Action::Clone { .. } | Action::CloneWithoutLeader => Task::Clone,
            Action::Rewind(_) => Task::Rewind,
            Action::CrashRecovery => Task::CrashRecovery,
            _ => return None,
        })
    }
}

/// The monotonic ms by which a leader that cannot renew its lock must have demoted; `None` when this
/// member does not believe it holds the lock.
///
/// Patroni's window: one HA cycle (`loop_wait`) after the last renewal, then `retry_timeout` of
/// retries. Its rule `loop_wait + 2 * retry_timeout <= ttl` leaves another `retry_timeout` to stop
/// PostgreSQL before the lease can expire. The window is one second shorter than an armed watchdog's
/// timeout when that is tighter (`ttl - safety_margin` with a large margin), so a DCS outage stops
/// PostgreSQL rather than resetting the node. The runner bounds its DCS calls by this deadline, so a
/// hung request cannot carry the decision past it.
///
/// `lock_renewed_ms` and `watchdog_timeout_secs` as in [`LocalState`].
pub fn demote_deadline_ms(
    lock_renewed_ms: Option<u64>,
    dynamic: &DynamicConfig,
    watchdog_timeout_secs: Option<u32>,
) -> Option<u64> {
    lock_renewed_ms.map(|at| at + demote_window_ms(dynamic, watchdog_timeout_secs))
}

/// The demotion window of one lock renewal (ms): how long after it a leader that cannot renew
/// again must have demoted (see [`demote_deadline_ms`]), and the longest a promotion may start
/// after the renewal right before it ([`Action::Promote`]). `loop_wait + retry_timeout`, at most
/// one second under an armed watchdog's timeout (`watchdog_timeout_secs`).
pub fn demote_window_ms(dynamic: &DynamicConfig, watchdog_timeout_secs: Option<u32>) -> u64 {
    let mut window_secs = dynamic.loop_wait + dynamic.retry_timeout;
    if let Some(t) = watchdog_timeout_secs {
        window_secs = window_secs.min(t.saturating_sub(1));
    }
    u64::from(window_secs) * 1000
}

/// How long (ms) a candidate waits for a former primary to answer its fence when that former
/// primary already left a fence unanswered for the whole bound ([`LocalState::unfenced`]): enough
/// for a host that came back to accept a connection, far less than a second full wait.
pub const FENCE_RECHECK_MS: u64 = 200;

/// The longest a primary stepping down in a planned switchover waits for its transactions in
/// flight to end before its fast stop (ms).
pub const DRAIN_TIMEOUT_MS: u64 = 5_000;

/// How long (ms) a primary stepping down at monotonic `now_ms` may wait for its transactions
/// ([`Action::DrainTransactions`]): [`DRAIN_TIMEOUT_MS`], and at most half the time left before
/// `demote_deadline_ms` (see [`demote_deadline_ms`]; the rest is for the stop itself, which must
/// end before the lease can expire); 0 past the deadline.
pub fn drain_budget_ms(now_ms: u64, demote_deadline_ms: Option<u64>) -> u64 {
    match demote_deadline_ms {
        Some(deadline) => DRAIN_TIMEOUT_MS.min(deadline.saturating_sub(now_ms) / 2),
        None => DRAIN_TIMEOUT_MS,
    }
}

/// How long after a failed background task of `kind` `decide` starts it again (ms): never more often
/// than once per `loop_wait` (a failing pg_rewind once restarted ~90 times a second). Starts and crash
/// recovery come back after one `loop_wait` (at least 1 s), since every second of a primary not running
/// is an outage and `primary_start_timeout` bounds the attempts anyway; bootstrap, clone and rewind
/// are heavy and wait at least 15 s.
pub fn task_retry_after_ms(kind: Task, dynamic: &DynamicConfig) -> u64 {
    let loop_wait = u64::from(dynamic.loop_wait.max(1));
    let secs = match kind {
        Task::Start | Task::CrashRecovery => loop_wait,
        Task::Bootstrap | Task::Clone | Task::Rewind => loop_wait.max(15),
    };
    secs * 1000
}

/// How long a switchover waits for WAL to arrive where it must before giving up (ms): a leader for
/// its candidate to stream from it before it stops (then the request is refused), a member for the
/// old leader's last LSN (then Patroni's behaviour: see [`Reason::MissingLastLsn`]). `ttl`, at
/// least 15 s: a restarted standby's WAL receiver retries every `wal_retrieve_retry_interval`
/// (5 s by default), and the REST API waits `max(3 * ttl, 30 s)` for the outcome.
pub fn switchover_wait_ms(dynamic: &DynamicConfig) -> u64 {
    u64::from(dynamic.ttl.max(15)) * 1000
}

/// True when this member believed it held the lock and its demotion deadline ([`demote_deadline_ms`])
/// has passed: the agent was frozen (SIGSTOP, a hung VM, a stalled disk) or a DCS call outlived its
/// bound. Its first act on waking is then to stop PostgreSQL, before any DCS call or query, since the
/// lease may have expired and another member may lead: a thawed primary acknowledges nothing.
/// Not when this cycle's failsafe round decides instead (`failsafe_round_first`): failsafe mode
/// kept the primary on the last cycle (every member confirmed it without the DCS), or failsafe mode
/// is on and the last cycle's DCS call failed (the DCS went away between its read and the renewal,
/// which then hung until the deadline: no round could run yet). The cycle's bounded read, the
/// members' confirmation and `decide` follow at once; an unconfirmed primary is stopped there.
pub fn past_demote_deadline(
    lock_renewed_ms: Option<u64>,
    dynamic: &DynamicConfig,
    watchdog_timeout_secs: Option<u32>,
    failsafe_round_first: bool,
    now_ms: u64,
) -> bool {
    !failsafe_round_first
        && demote_deadline_ms(lock_renewed_ms, dynamic, watchdog_timeout_secs)
            .is_some_and(|deadline| now_ms >= deadline)
}

/// Whether this member's PostgreSQL may accept writes, for the demotion deadline
/// ([`demote_deadline_ms`]): the deadline guard, the check at a cycle's start
/// ([`past_demote_deadline`]) and the bound on a leader's DCS calls stop or hurry only a PostgreSQL
/// that may accept writes. `last_seen` is PostgreSQL as the runner last observed it;
/// `primary_issued` is true once a promotion or a start as primary was issued since then.
///
/// Only a replica seen in recovery, with no promotion issued since, is read-only: the deadline
/// exists so that a primary that cannot renew its lock stops before the lease can expire, and a
/// replica acknowledges no write. A lock holder still in recovery (a new leader fencing the former
/// primary and waiting for the proxies, on a DCS that answers slowly) is therefore not stopped
/// when its deadline passes: it goes on with its promotion at the next cycle, whose renewal right
/// before `pg_promote()` (see `decide::promotion`) gives the promotion a fresh deadline. Stopping
/// it threw the promotion away (restart, fence and handshake again), and on a DCS slower than
/// `retry_timeout` the cluster never got a primary (the nemesis's "no convergence" runs). The
/// runner does not issue `pg_promote()` past the deadline of the renewal `decide` put right before it
/// ([`Action::Promote`]'s `within_ms`), so a promotion is always covered by a renewal. Stopped, starting (maybe as primary, maybe in crash recovery) and unknown
/// states count as writable, except a start the runner knows to be read-only
/// (`starting_read_only`: a background task started by an action that
/// [`Action::starts_read_only`] is still running): treating that start as a primary's made the
/// deadline guard stop, and the DCS read bound fail, a lock holder's read-only restart again and
/// again while a switchover waited (nemesis seed 9, ZooKeeper strict: 35 s without writes).
pub fn may_accept_writes(
    last_seen: &Postgres,
    primary_issued: bool,
    starting_read_only: bool,
) -> bool {
    primary_issued
        || !match last_seen {
            Postgres::Running(r) => !r.is_primary,
            Postgres::Starting => starting_read_only,
            Postgres::Stopped { .. } => false,
        }
}

/// True when `decide` will want other members' REST status this loop: there is no leader (a race may
/// follow), or this member leads and a switchover asks it to step down for a candidate.
pub fn needs_peers(view: Option<&Cluster>, name: &str) -> bool {
    let Some(view) = view else { return false };
    match &view.leader {
        None => view.initialize.is_some(),
        // A switchover or a failover with a candidate asks the leader to step down when it names
        // this leader or no leader at all, and a candidate other than itself (see decide).
        Some(l) if l.name == name => view.failover_request().is_some_and(|f| {
            f.value.leader.as_deref().is_none_or(|l| l == name)
                && f.value.member.as_deref() != Some(name)
        }),
        Some(_) => false,
    }
}

/// The slot name of a member: lower-case, characters other than `[a-z0-9_]` replaced by `_`, at most
/// 63 bytes (Patroni's `slot_name_from_member_name`; PostgreSQL's slot name rules).
pub fn slot_name(member: &str) -> String {
    let mut s: String = member
        .to_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(63);
    s
}

/// The upstream for member `name` of `view`: its `conn_url` host and port.
pub fn upstream_of(view: &Cluster, name: &str) -> Option<Upstream> {
    let m = view.member(name)?;
    let (host, port) = m.data.conn_host_port()?;
    Some(Upstream {
        member: name.to_string(),
        host,
        port,
    })
}
