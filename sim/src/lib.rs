//! Deterministic simulation of Praetor's HA protocol (issue 14, item 3).
//!
//! One seed is one run: N members, each the agent's HA loop around the real, pure
//! [`praetor_agent::ha::decide`], executed against a simulated DCS (leader lease with compare-and-set,
//! member and proxy keys on leases, `sync`, `history`, `failover`, `status`; when it gets its
//! quorum back after an outage, every lease alive at the loss gets its whole `ttl` again, as etcd's
//! and ZooKeeper's new leaders give it: [`Options::lease_refresh`]), simulated PostgreSQL
//! (timelines, WAL as branches of LSN ranges, streaming, commit acknowledgement per
//! `synchronous_standby_names`, promote, fast and immediate stop, crash, pg_rewind, crash recovery),
//! simulated proxies (the routing view is the real [`praetor_proxy::topology_from_cluster`], the
//! fencing handshake and DCS-contact deadline the proxy's, with the real
//! [`praetor_dcs::ProxyState::contact_deadline_within`]), a watchdog and a simulated clock (ms). The
//! seed draws the cluster's shape and settings, message latencies (with spikes up to 8 s, and lost
//! replies to lock acquisitions and renewals the DCS did apply) and faults: PostgreSQL crashes,
//! agents killed or frozen (the process stops, its deadline guard with it), whole hosts frozen (a
//! hung VM: agent, PostgreSQL and watchdog timer; on the thaw the watchdog and the guard are taken
//! to act before any backend, the best case), partitions between a
//! member and the DCS, between members, between a proxy and the DCS or a member, the DCS down, and
//! planned switchovers. All faults heal at one instant; the run goes on after it.
//!
//! After every event the invariants are checked (see [`Violation`]):
//! - at most one PostgreSQL accepts writes (a running primary, whether reached through a proxy or
//!   directly): [`Violation::TwoWritable`];
//! - the fencing handshake: a member promotes only once no proxy still serving routes writes to the
//!   former leader it replaced ([`Violation::PromotedBeforeProxyLeft`]); a proxy's acknowledgement
//!   is a DCS write with latency (and lost replies), and it routes to the new leader only after it;
//! - under `synchronous_mode` (on, strict, quorum), a member that becomes writable holds every commit a client was told
//!   was committed while synchronous replication was active (once a leader wrote the `sync` key);
//! - a writable leader, routed to by a proxy, exists again within `ttl + loop_wait` (plus
//!   [`LIVENESS_ALLOWANCE_MS`] for PostgreSQL starts and message latency) after the faults heal
//!   (and after the last resume: a paused cluster may stay leaderless);
//! - maintenance mode (`pause`, drawn in a quarter of the seeds with [`Options::pause`]): no member
//!   promotes on a view that showed the cluster paused unless that view held a manual
//!   switchover/failover request naming it ([`Violation::PromotedWhilePaused`]);
//! - a planned switchover loses no commit, also in asynchronous mode: the member promoted after a
//!   leader stepped down (stopped cleanly, released the lock) holds every commit that leader
//!   acknowledged on its timeline. Switchovers race WAL receivers that restart (a candidate's
//!   receiver is restarted right before half of the requests naming it), so the rule that a member
//!   lacking the published last LSN does not promote is exercised. One exception, counted in
//!   [`Report::switchover_fallbacks`]: past the wait's bound with no member holding that WAL
//!   reachable, the race goes on as in Patroni (a failover's loss, see `Reason::MissingLastLsn`);
//! - a short DCS outage disturbs no leader (drawn after the heal in a third of the seeds with
//!   [`Options::blips`]: the DCS frozen for less than the leader's demotion window leaves,
//!   calls answered at the thaw within their bound): the leader keeps its lock, its writes and its
//!   proxies' routes, and nobody promotes ([`Violation::LeaderDisturbedByShortOutage`]);
//! - in a standby cluster (one seed in eight with [`Options::standby`]: the lock holder a standby
//!   leader streaming from a remote primary), no member accepts writes and no proxy routes them
//!   ([`Violation::WritableInStandbyCluster`]).
//!
//! What the runner does for each [`Action`] is modelled after `agent/src/runner.rs` (the cycle, the
//! demotion deadline check at the start of a cycle with [`ha::past_demote_deadline`], the deadline
//! guard with [`ha::demote_deadline_ms`], the next cycle's wait, the bounded DCS calls). Not modelled
//! (their rules are not exercised here): bootstrap and clone (the cluster starts initialized), slots,
//! cascading replication and tags other than `nofailover` (a third of the
//! seeds with 3-4 members tag one member; [`Violation::NofailoverPromoted`]), permanent data loss, and the
//! REST API's wire format (a stopped member that diverged answers its switch point, as the agent's
//! `/patroni` does: [`ha::diverged_vote`]). Failsafe mode only with [`Options::failsafe`]: the
//! leader's `POST /failsafe` round to the members of the `failsafe` key, each answering with
//! [`ha::failsafe::answer`] from its own last view, [`Action::KeepLeadingInFailsafe`] renewing from
//! the round, the runner's deadline guard standing aside in failsafe mode, clock skew between hosts (one clock; etcd leases are server-side). The
//! proxy handshake's order (close the former leader's connections, acknowledge, then route) is
//! mirrored from `proxy/src/server.rs`, not called (it lives in the proxy's async task); its timings
//! are the proxy's pure functions ([`praetor_proxy::heartbeat_interval`],
//! [`praetor_dcs::ProxyState::contact_deadline_within`]).
//!
//! Entry points: [`run_seed`] runs one seed; the `praetor-sim` binary runs many and replays one with
//! its trace (`cargo run --release -p praetor-sim -- --seed N --trace`).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::Write as _;

use praetor_agent::ha::{
    self, decide, Action, ClusterState, ControlData, DataDir, HaConfig, LocalState, Now,
    PeerStatus, Postgres, Running, StartAs, StopMode, Task, Upstream, WatchdogState,
};
use praetor_config::{DynamicConfig, StandbyCluster, SyncMode, Tags};
use praetor_dcs::{
    Cluster, Failover, HistoryEntry, Leader, Member, MemberData, MemberState, ProxyState, Role,
    Status, SyncState, Versioned,
};

/// Extra time granted to the liveness invariant beyond `ttl + loop_wait` (ms): a PostgreSQL start
/// and the latencies of the handful of DCS calls and proxy reads between the lease's expiry and a
/// routed, writable leader.
pub const LIVENESS_ALLOWANCE_MS: u64 = 8_000;

/// The system identifier of the simulated cluster.
const SYSID: &str = "7300000000000000001";

/// `watchdog.safety_margin` (s): the watchdog is armed with `ttl - safety_margin`.
const SAFETY_MARGIN_SECS: u32 = 5;

/// A deterministic PRNG (splitmix64): the whole run follows from the seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An invariant broken by a seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// Two PostgreSQL instances accepted writes at the same simulated instant.
    TwoWritable {
        /// Simulated ms.
        at: u64,
        /// The writable members.
        members: Vec<String>,
    },
    /// A member promoted after a planned switchover lacks a commit the leader that stepped down
    /// had acknowledged (asynchronous mode included).
    SwitchoverLostCommit {
        /// Simulated ms.
        at: u64,
        /// The member promoted.
        member: String,
        /// The commit: (the leader that stepped down, LSN).
        commit: (String, u64),
    },
    /// Under `synchronous_mode`, a member became writable without a commit that was acknowledged.
    LostCommit {
        /// Simulated ms.
        at: u64,
        /// The member that became writable.
        member: String,
        /// The commit: (member that acknowledged it, LSN).
        commit: (String, u64),
    },
    /// No writable leader routed by a proxy within `ttl + loop_wait` (+ allowance) after the heal.
    NoLeaderAfterHeal {
        /// When the faults healed (ms).
        healed_at: u64,
        /// The deadline that passed (ms).
        deadline: u64,
    },
    /// A member promoted while a proxy still serving routed writes to the former leader it replaced
    /// (the fencing handshake: every live proxy acknowledges the change, or has stopped serving at
    /// its DCS-contact deadline, before the new leader promotes).
    PromotedBeforeProxyLeft {
        /// Simulated ms.
        at: u64,
        /// The member promoted.
        member: String,
        /// The proxy still routing writes to the former leader.
        proxy: String,
        /// The former leader.
        former: String,
    },
    /// A member tagged `nofailover` was promoted.
    NofailoverPromoted {
        /// Simulated ms.
        at: u64,
        /// The member.
        member: String,
    },
    /// Maintenance mode stops automatic failover: a member promoted on a cluster view read while the
    /// DCS `config` key said `pause: true`, and that view held no manual switchover/failover
    /// request naming it as candidate (nor one naming no candidate).
    PromotedWhilePaused {
        /// Simulated ms.
        at: u64,
        /// The member promoted.
        member: String,
        /// Since when the cluster is paused (ms).
        paused_since: u64,
    },

    /// A short DCS outage disturbed the leader (README: "A DCS outage shorter than `retry_timeout`
    /// disturbs no leader"). The DCS was unavailable to every member and proxy for less than the
    /// leader's demotion window less `loop_wait` and [`BLIP_MARGIN_MS`] (a frozen DCS, see
    /// [`Options::blips`]), with no other fault in flight; from its start to `loop_wait +
    /// retry_timeout + 1 s` after its end, the leader it started under stopped accepting writes,
    /// lost its lock or its proxies' routes, or another member promoted.
    LeaderDisturbedByShortOutage {
        /// Simulated ms.
        at: u64,
        /// The leader when the outage began.
        leader: String,
        /// The outage (from, to) in ms.
        outage: (u64, u64),
        /// What happened.
        what: String,
    },

    /// In a standby cluster ([`Options::standby`]) a member accepted writes (was promoted or
    /// started as a primary), or a proxy routed writes (README: "A standby cluster's leader is
    /// never promoted and its proxy routes no writes").
    WritableInStandbyCluster {
        /// Simulated ms.
        at: u64,
        /// What: the writable member, or the proxy and the member it routes writes to.
        what: String,
    },

    /// `decide` returned an action the simulation does not expect in this cluster (a modelling
    /// gap, or a rule that fired where it must not: bootstrap, clone, data removal, fatal error).
    Unexpected {
        /// Simulated ms.
        at: u64,
        /// The member.
        member: String,
        /// The action.
        action: String,
    },
}

/// Switches that weaken the world on purpose, to show that the invariants catch what they must
/// (tests of the simulation itself). [`Options::default`] is the real configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    /// Members arm a watchdog while they lead (`watchdog.mode: required`, safety margin 5 s). Off, a
    /// frozen leader whose host is cut off from the new leader keeps its primary running.
    pub watchdog: bool,
    /// Check lost acknowledged commits in asynchronous mode too (where losing up to
    /// `maximum_lag_on_failover` is allowed, so this finds losses by design).
    pub check_async_commits: bool,
    /// Carry out the proxies' handshake ([`Action::AwaitProxies`]). Off, a promotion does not wait
    /// for the proxies to leave the former leader, which [`Violation::PromotedBeforeProxyLeft`]
    /// must catch.
    pub await_proxies: bool,
    /// Draw `failsafe_mode` in a third of the seeds (with the members' `POST /failsafe` round
    /// modelled). On by default since its findings were fixed (seeds 978, 2140, 1283, 6204);
    /// `praetor-sim --no-failsafe` turns it off (the other draws of a seed do not change: failsafe
    /// mode is drawn from a generator of its own).
    pub failsafe: bool,
    /// Step 3b of the proxies' handshake ([`praetor_proxy::route_confirmed`]): a proxy takes an
    /// acknowledged route only if a read after the write shows the lock still held by its leader.
    /// Off, it routes as soon as the write returned, which let seeds 8889 and 30815 route writes
    /// to a former leader after a member promoted.
    pub confirm_routes: bool,
    /// A member that confirmed a leader over `POST /failsafe` keeps out of the leader race for
    /// `ttl` ([`ha::failsafe::promised`]). Off, `decide` is told of no confirmation, so a member
    /// may take the lock and promote while the leader it just confirmed still runs on that
    /// confirmation, which [`Violation::TwoWritable`] must catch.
    pub failsafe_promise: bool,
    /// A member's failsafe confirmation survives a restart of its agent (`true`, the agent's
    /// `failsafe_record`: recorded in the data directory before the answer). `false`: a restarted
    /// agent forgets it, as it did before (tests show the invariant then sees seed 47,684's two
    /// writable primaries).
    pub failsafe_record: bool,
    /// Draw maintenance mode in a quarter of the seeds: `pause: true` written into the DCS `config`
    /// key and taken back (`praetor ctl pause`/`resume`) at random times, 1-3 episodes, the last
    /// resume at most 10 s after the heal. Drawn from a generator of its own (seeds without it
    /// replay the schedules they had before it was modelled); `praetor-sim --no-pause` turns it off.
    pub pause: bool,
    /// The members read `pause` from the DCS `config` key, as the agent does. Off (a weakened world),
    /// they ignore it and fail over while paused, which [`Violation::PromotedWhilePaused`] must catch.
    pub members_read_pause: bool,
    /// Draw short DCS outages in a third of the seeds ([`dcs_blips`]): 1-3 times after the heal,
    /// once the cluster recovered, every DCS server freezes (unreachable, not restarted: a call
    /// made meanwhile is answered at the thaw if that comes within the call's bound) for 200 ms to
    /// the leader's demotion window less `loop_wait` and [`BLIP_MARGIN_MS`], checked by
    /// [`Violation::LeaderDisturbedByShortOutage`]. Drawn from a generator of their own, after
    /// every other event of the seed: seeds without them replay the schedules they had before.
    /// `praetor-sim --no-blips` turns them off.
    pub blips: bool,
    /// The leader rides out a short outage: its DCS calls wait for the DCS up to their bound
    /// (the runner's `bounded`). Off (a weakened world), a leader whose DCS call finds the DCS
    /// unavailable stops its PostgreSQL at once (it demotes at the first failed renewal), which
    /// [`Violation::LeaderDisturbedByShortOutage`] must catch.
    pub leader_waits_out_blips: bool,
    /// Draw a standby cluster in one seed of eight ([`standby_cluster`]): the dynamic
    /// configuration has a `standby_cluster` section, the members start as replicas, the first
    /// holding the lock as standby leader and streaming from a remote primary outside the cluster
    /// (whose WAL grows with the remote's clients), the others from it; no `synchronous_mode`.
    /// Checked by [`Violation::WritableInStandbyCluster`] (and the liveness invariant asks for a
    /// standby leader that streams from the remote). Drawn from a generator of its own: seeds
    /// without it replay the schedules they had before. `praetor-sim --no-standby` turns it off.
    pub standby: bool,
    /// The members read the `standby_cluster` section. Off (a weakened world), `decide` is given
    /// the dynamic configuration without it while the cluster still replicates from the remote,
    /// so the lock holder promotes, which [`Violation::WritableInStandbyCluster`] must catch.
    pub members_read_standby: bool,
    /// When the DCS gets its quorum back after [`Fault::DcsDown`], the new DCS leader gives every
    /// lease alive at the loss its whole `ttl` again (etcd's lessor on promotion, ZooKeeper's
    /// session tracker), the leader lock included, as the real servers do. Off, leases ran out
    /// during the outage by the simulated clock, as the simulation had them before.
    pub lease_refresh: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            watchdog: true,
            check_async_commits: false,
            await_proxies: true,
            failsafe: true,
            confirm_routes: true,
            failsafe_promise: true,
            failsafe_record: true,
            pause: true,
            members_read_pause: true,
            blips: true,
            leader_waits_out_blips: true,
            standby: true,
            members_read_standby: true,
            lease_refresh: true,
        }
    }
}

/// The outcome of one seed.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The first violation, if any.
    pub violation: Option<Violation>,
    /// The trace (every event when tracing, else the last lines before a violation).
    pub trace: Vec<String>,
    /// Commits acknowledged to clients.
    pub acked: usize,
    /// Promotions that happened.
    pub promotions: usize,
    /// Simulated events processed.
    pub events: u64,
    /// ms from the heal until a proxy routed writes to a writable leader (`None`: not reached).
    pub recovered_ms: Option<u64>,
    /// The liveness bound of this seed: `ttl + loop_wait` (ms), without the allowance.
    pub bound_ms: u64,
    /// Planned switchovers whose promotion was checked for lost commits.
    pub switchovers: usize,
    /// Of those, promotions of a member that lacked the published last LSN (the bounded wait ran out
    /// with no member holding it reachable: Patroni's behaviour); their commits are not checked.
    pub switchover_fallbacks: usize,
    /// Pause episodes that reached the DCS (`pause: true` written).
    pub pauses: usize,
    /// Promotions while paused by a member whose view showed the pause (manual switchovers and
    /// failovers, which still work in maintenance mode).
    pub promotions_while_paused: usize,
    /// Short DCS outages drawn ([`Options::blips`]).
    pub blips: usize,
    /// Of those, outages that began under a routed, writable leader with no switchover request
    /// pending, so [`Violation::LeaderDisturbedByShortOutage`] was checked.
    pub blips_checked: usize,
    /// The seed drew a standby cluster ([`Options::standby`]).
    pub standby_cluster: bool,
    /// Decisions of a lock holder still in recovery to promote while a switchover request asked
    /// it to step down for another member (a timeline that lives for one loop, then a rewind).
    pub promotions_before_switchover: usize,
    /// Decisions of a lock holder still in recovery to hand the lock to a switchover candidate
    /// holding all its WAL instead (`praetor_agent::ha::Reason::ManualFailoverHandingOver`).
    pub recovery_handovers: usize,
    /// Lock holders that gave the lock up because their renewals lapsed
    /// (`praetor_agent::ha::Reason::ReleasingLockRenewalsLapsed`).
    pub lapse_releases: usize,
    /// Lock holders that gave up their DCS session because their releases or reads after a lapse
    /// kept failing (`praetor_agent::ha::Reason::DroppingDcsSessionReleasesFailed`,
    /// `DroppingDcsSessionDcsUnreadable`).
    pub lapse_session_drops: usize,
    /// Members that took the lock while a peer that answered was holding off after lapsed
    /// renewals and was at least as far on (timeline, WAL): the old rule deferred to that peer.
    pub won_past_holding_off: usize,
}

/// A range of WAL on one branch of history: the branch id is unique per promotion in the run,
/// `tl` the PostgreSQL timeline number it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seg {
    branch: u32,
    tl: u32,
    start: u64,
    end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PgState {
    Running { primary: bool },
    Stopped { clean: bool, was_primary: bool },
}

#[derive(Debug, Clone)]
struct Pg {
    state: PgState,
    segs: Vec<Seg>,
    /// Member whose PostgreSQL this replica is told to follow.
    upstream: Option<String>,
    /// Member it actually streams from this tick (compatible and reachable).
    streaming_from: Option<String>,
    guc: String,
    /// Last checkpoint (timeline, LSN).
    checkpoint: (u32, u64),
    /// The WAL receiver (re)connects no earlier than this (ms): `wal_retrieve_retry_interval`
    /// after a start or a receiver restart.
    receiver_after: u64,
    /// The data directory's promotion record (`praetor.promotion`, [`ha::Promotion`]): written by
    /// the runner before each promotion, copied with the data by pg_rewind.
    promoted: Option<ha::Promotion>,
}

impl Pg {
    fn tl(&self) -> u32 {
        self.segs.last().map_or(1, |s| s.tl)
    }
    fn lsn(&self) -> u64 {
        self.segs.last().map_or(0, |s| s.end)
    }
    fn writable(&self) -> bool {
        self.state == PgState::Running { primary: true }
    }
    fn running(&self) -> bool {
        matches!(self.state, PgState::Running { .. })
    }
    fn contains(&self, branch: u32, lsn: u64) -> bool {
        self.segs
            .iter()
            .any(|s| s.branch == branch && s.start < lsn && lsn <= s.end)
    }
    /// This replica's WAL is a prefix of `up`'s: it can stream from it.
    fn can_follow(&self, up: &Pg) -> bool {
        let n = self.segs.len();
        if n > up.segs.len() {
            return false;
        }
        for i in 0..n - 1 {
            if self.segs[i] != up.segs[i] {
                return false;
            }
        }
        let (mine, theirs) = (self.segs[n - 1], up.segs[n - 1]);
        mine.branch == theirs.branch && mine.end <= theirs.end
    }
    fn control(&self) -> ControlData {
        let PgState::Stopped { clean, was_primary } = self.state else {
            unreachable!("control data of a stopped instance")
        };
        let state = match (clean, was_primary) {
            (true, true) => ClusterState::ShutDown,
            (true, false) => ClusterState::ShutDownInRecovery,
            (false, true) => ClusterState::InProduction,
            (false, false) => ClusterState::InArchiveRecovery,
        };
        let (min_lsn, min_tl) = if was_primary {
            (0, 0)
        } else {
            (self.lsn(), self.tl())
        };
        ControlData {
            state,
            timeline: self.checkpoint.0,
            checkpoint_lsn: self.checkpoint.1,
            min_recovery_end_lsn: min_lsn,
            min_recovery_end_timeline: min_tl,
            rewindable: true,
        }
    }
}

#[derive(Debug, Clone)]
struct Commit {
    member: String,
    branch: u32,
    lsn: u64,
    /// Acknowledged while synchronous replication was active (a `sync` key existed; before its
    /// first write every commit is acknowledged asynchronously, as Patroni's `sync_mode_is_active`).
    sync_active: bool,
}

#[derive(Debug, Clone)]
enum Phase {
    Idle,
    /// Read the DCS; decide when the read returns.
    Reading {
        view: Option<Cluster>,
    },
    Acting {
        view: Option<Cluster>,
        actions: VecDeque<Action>,
        /// AwaitProxies: when the current wait ends.
        await_until: Option<u64>,
    },
    /// The cycle's DCS read was sent to a frozen DCS that thaws within the call's bound: it is
    /// answered at the thaw ([`Sim::wait_for_thaw`]).
    ReadAtThaw,
}

#[derive(Debug, Clone)]
struct Agent {
    name: String,
    alive: bool,
    frozen_until: u64,
    token: u64,
    phase: Phase,
    lock_renewed_ms: Option<u64>,
    former_leader: Option<Upstream>,
    /// The timeline `former_leader` led ([`ha::former::FormerLeader::timeline`]).
    former_timeline: Option<u32>,
    proxies_wait_since: Option<(String, u64)>,
    switchover_wait_since: Option<u64>,
    sync_catchup_lsn: u64,
    task: Option<(Task, Action)>,
    task_token: u64,
    task_failed: bool,
    failed_task: Option<(Task, u64)>,
    primary_start_began_ms: Option<u64>,
    unfenced: Option<(String, u16)>,
    wd_armed: bool,
    wd_fed: u64,
    /// The kernel's watchdog timer runs (armed by this or an earlier agent process of the node: a
    /// killed agent leaves it running, it fires unless a new agent arms and feeds it).
    wd_kernel: bool,
    /// PostgreSQL may accept writes, as the runner tracks it ([`ha::may_accept_writes`]): from the
    /// last observation, and set before a promotion or a start as primary. The demotion deadline
    /// stops (guard, cycle start, thaw) and hurries (DCS call bounds) only such a PostgreSQL.
    may_write: bool,
    /// The last cluster view this agent read (its `/patroni` and `POST /failsafe` answers use it).
    last_view: Option<Cluster>,
    /// The last cycle ran without the DCS and every failsafe member confirmed this leader.
    failsafe_active: bool,
    /// A DCS call failed since the start of this cycle.
    dcs_failed: bool,
    /// When the last failsafe confirmation round began (ms).
    failsafe_asked_ms: Option<u64>,
    /// When this member last answered `Accepted` to a leader's `POST /failsafe` (ms; the agent's
    /// API keeps it in memory, so a restarted agent forgets it).
    failsafe_accepted_ms: Option<u64>,
    /// Maintenance mode as this agent last read it (see [`Sim::read_pause`]).
    pause: PauseView,
    /// When this member's renewals last lapsed, as the runner records it
    /// ([`ha::LocalState::renewals_lapsed_ms`]): its deadline guard or cycle-start check stopped a
    /// writable PostgreSQL, or it demoted with the DCS unreachable; cleared when it reads another
    /// leader.
    renewals_lapsed_ms: Option<u64>,
    /// When the lapse itself happened, as the runner keeps it ([`ha::LocalState::lapsed_at_ms`]).
    lapsed_at_ms: Option<u64>,
    /// Attempts to give the lapsed lock up that failed in a row (releases, and reads while the lock
    /// may still be its own), as the runner counts them ([`ha::LocalState::lapsed_lock_failures`]).
    lapsed_lock_failures: u32,
    /// As the runner's: when this member's current (or last) cycle started (ms).
    cycle_started_ms: u64,
    /// As the runner's: from the start of the last cycle that renewed or took the lock to that call
    /// (ms), the room of a leader's last attempt (`ha::cadence`).
    pre_renewal_ms: u64,
    /// As the runner's `lapsed_lock_given_up`: set by a done release or session drop after a lapse
    /// and by a view showing the lock not its own, cleared at a lapse and by a view showing it its
    /// own; a failed read counts only while it is clear.
    lapsed_lock_given_up: bool,
}

/// What one agent knows of maintenance mode: the runner's `apply_dynamic_config` parses the DCS
/// `config` key at each read (kept when the DCS cannot be read; a restarted agent starts from
/// its bootstrap configuration, unpaused).
#[derive(Debug, Clone, Copy, Default)]
struct PauseView {
    /// `pause` of the last `config` key parsed.
    paused: bool,
    /// The version of that key (0: none parsed yet).
    version: i64,
    /// When the cycle's view was read (ms).
    read_at: u64,
    /// That view held a manual switchover/failover request naming this member as candidate, or
    /// naming no candidate.
    manual: bool,
}

#[derive(Debug, Clone)]
struct Proxy {
    id: String,
    routed: Option<String>,
    acked: Option<Option<String>>,
    /// The route whose acknowledgement is being written (the DCS write takes latency); the proxy
    /// routes writes to it only once the write returned (and the read after it confirmed it).
    acking: Option<Option<String>>,
    /// When the acknowledgement being confirmed was written (step 3b runs after it).
    acked_at: Option<u64>,
    last_ok: u64,
    suspended: bool,
}

#[derive(Debug, Clone, Default)]
struct Dcs {
    down: bool,
    /// When the DCS lost its quorum ([`Fault::DcsDown`]; not a blip, which freezes every server
    /// and elects nobody); `None` while it has one.
    quorum_lost_at: Option<u64>,
    leader: Option<(String, u64, i64)>,
    members: BTreeMap<String, (MemberData, u64)>,
    sync: Option<Versioned<SyncState>>,
    history: Option<Versioned<Vec<HistoryEntry>>>,
    failover: Option<Versioned<Failover>>,
    status: Option<Status>,
    proxies: BTreeMap<String, (ProxyState, u64)>,
    failsafe: Option<BTreeMap<String, String>>,
    config: Option<Versioned<serde_json::Value>>,
    version: i64,
}

impl Dcs {
    fn bump(&mut self) -> i64 {
        self.version += 1;
        self.version
    }
    /// The quorum is back: a new DCS leader is elected, and it gives every lease or session alive
    /// at the loss its whole `ttl_ms` again (etcd's lessor refreshes every lease when it is
    /// promoted; a ZooKeeper leader starts every session's timeout afresh), the leader lock
    /// included. Keys that expired before the loss stay gone. With `refresh` off (the simulation
    /// before issue 14's twelfth session) leases ran out during the outage as if it had a clock.
    fn quorum_back(&mut self, now: u64, ttl_ms: u64, refresh: bool) {
        self.down = false;
        let Some(lost) = self.quorum_lost_at.take() else {
            return;
        };
        if !refresh {
            return;
        }
        let renew = |exp: &mut u64| {
            if *exp > lost {
                *exp = now + ttl_ms;
            }
        };
        if let Some((_, exp, _)) = self.leader.as_mut() {
            renew(exp);
        }
        for (_, exp) in self.members.values_mut() {
            renew(exp);
        }
        for (_, exp) in self.proxies.values_mut() {
            renew(exp);
        }
    }

    fn leader_alive(&self, now: u64) -> Option<&str> {
        self.leader
            .as_ref()
            .filter(|(_, exp, _)| *exp > now)
            .map(|(n, _, _)| n.as_str())
    }
    fn view(&self, now: u64) -> Cluster {
        Cluster {
            initialize: Some(SYSID.to_string()),
            config: self.config.clone(),
            leader: self
                .leader
                .as_ref()
                .filter(|(_, exp, _)| *exp > now)
                .map(|(n, _, v)| Leader {
                    name: n.clone(),
                    version: *v,
                }),
            members: self
                .members
                .iter()
                .filter(|(_, (_, exp))| *exp > now)
                .map(|(n, (d, _))| Member {
                    name: n.clone(),
                    data: d.clone(),
                    version: 1,
                })
                .collect(),
            failover: self.failover.clone(),
            history: self.history.clone(),
            sync: self.sync.clone(),
            status: self.status.clone(),
            failsafe: self.failsafe.clone(),
            proxies: self
                .proxies
                .iter()
                .filter(|(_, (_, exp))| *exp > now)
                .map(|(n, (p, _))| (n.clone(), p.clone()))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Ev {
    Cycle(usize, u64),
    Task(usize, u64),
    Guard(usize, u64),
    Tick,
    ProxyTick(usize),
    /// A proxy's acknowledgement write reaches the DCS (step 3 of the handshake).
    ProxyAck(usize),
    /// A proxy's read after its acknowledgement returns (step 3b: is the lock still its route's?).
    ProxyConfirm(usize),
    Client,
    Fault,
    HealFault(Fault),
    Heal,
    Thaw(usize),
    /// `praetor ctl pause` (true) or `resume` (false): the DCS `config` key's `pause`.
    Pause(bool),
    /// The operator tries the last `pause`/`resume` again (the DCS was down).
    PauseRetry,
    /// A short DCS outage begins: every DCS server frozen for this long (ms).
    Blip(u64),
    /// The frozen DCS thaws.
    BlipEnd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    CrashPg(usize),
    KillAgent(usize),
    Freeze(usize, u64),
    /// The whole host freezes (a hung VM): agent, PostgreSQL and the watchdog's timer.
    FreezeHost(usize, u64),
    CutDcs(usize),
    DcsDown,
    CutLink(usize, usize),
    CutProxyDcs(usize),
    CutProxyMember(usize, usize),
    Switchover(Option<usize>),
}

/// A leader that stepped down for a switchover: what its successor must hold.
#[derive(Debug, Clone)]
struct SteppedDown {
    member: String,
    branch: u32,
    /// Its shutdown checkpoint (the published last LSN).
    last_lsn: u64,
    /// A fault touched it since (its agent dead or frozen, its host cut off from the DCS or a
    /// member): its successor may then be promoted without its last WAL, past the wait's bound.
    disturbed: bool,
}

/// The world of one seed.
struct Sim {
    seed: u64,
    /// The member tagged `nofailover`, if any.
    nofailover: Option<usize>,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    dynamic: DynamicConfig,
    dcs: Dcs,
    agents: Vec<Agent>,
    pgs: Vec<Pg>,
    proxies: Vec<Proxy>,
    cut_dcs: Vec<bool>,
    cut_link: Vec<Vec<bool>>,
    cut_proxy_dcs: Vec<bool>,
    cut_proxy_member: Vec<Vec<bool>>,
    pending: Vec<Vec<(u32, u64)>>,
    /// A frozen host's PostgreSQL answers nothing until then (ms).
    host_frozen_until: Vec<u64>,
    acked: Vec<Commit>,
    next_branch: u32,
    promotions: usize,
    faults_until: u64,
    healed_at: Option<u64>,
    leader_seen_after_heal: bool,
    recovered_ms: Option<u64>,
    end: u64,
    violation: Option<Violation>,
    tracing: bool,
    trace: VecDeque<String>,
    nevents: u64,
    last_leader: Option<String>,
    opts: Options,
    stepped_down: Option<SteppedDown>,
    switchovers: usize,
    switchover_fallbacks: usize,
    promotions_before_switchover: usize,
    recovery_handovers: usize,
    lapse_releases: usize,
    lapse_session_drops: usize,
    won_past_holding_off: usize,
    /// Maintenance mode in the DCS: since when `pause: true` is written (`None`: not paused).
    paused_since: Option<u64>,
    /// The operator's last `pause` (true) or `resume` not yet written to the DCS.
    pause_wanted: Option<bool>,
    /// When the cluster was last resumed (ms, 0: never paused).
    resumed_at: u64,
    pauses: usize,
    promotions_while_paused: usize,
    /// A short outage holds the DCS frozen until then (ms): calls made meanwhile are answered at
    /// the thaw when it comes within their bound.
    blip_until: Option<u64>,
    /// Message latencies stay short (no slow DCS call) in these windows (from, to) (ms): from a
    /// demotion window before a short outage to the end of its check, where a slow call would be
    /// another fault (a renewal a slow read delayed leaves less than the margin).
    calm: Vec<(u64, u64)>,
    /// The short outage being checked, if any.
    blip_check: Option<BlipCheck>,
    blips: usize,
    blips_checked: usize,
    /// The remote primary a standby cluster replicates from (`None`: not a standby cluster). Not
    /// a member: never counted as writable, reached at [`REMOTE_HOST`] without faults.
    remote: Option<Pg>,
}

/// A short DCS outage under check ([`Violation::LeaderDisturbedByShortOutage`]).
#[derive(Debug, Clone)]
struct BlipCheck {
    /// The leader at its start.
    leader: usize,
    /// The outage (from, to), ms.
    outage: (u64, u64),
    /// The check ends then (ms): `loop_wait + retry_timeout + 1 s` after the thaw.
    until: u64,
    /// Promotions before it.
    promotions: usize,
    /// The proxies that routed writes to the leader at its start.
    proxies: Vec<usize>,
}

const TRACE_TAIL: usize = 400;

impl Sim {
    fn new(seed: u64, tracing: bool, opts: Options) -> Sim {
        let mut rng = Rng::new(seed);
        // Failsafe mode is drawn apart from `rng`, so that seeds without it replay the schedules
        // they had before it was modelled.
        let mut side = Rng::new(seed ^ 0xFA11_5AFE);
        let n = [2, 3, 3, 3, 4][rng.pick(5)];
        let np = 1 + rng.pick(2);
        let (ttl, loop_wait, retry) = [(30, 10, 10), (20, 5, 5), (15, 5, 5)][rng.pick(3)];
        // Off, on, strict, quorum.
        let mode = rng.pick(4);
        let dynamic = DynamicConfig {
            ttl,
            loop_wait,
            retry_timeout: retry,
            synchronous_mode: match mode {
                0 => SyncMode::Off,
                3 => SyncMode::Quorum,
                _ => SyncMode::On,
            },
            synchronous_mode_strict: mode == 2,
            // A third of the seeds run in failsafe mode, drawn apart from the main generator so
            // that every other seed replays the schedule it had before failsafe mode was modelled.
            failsafe_mode: side.chance(33) && opts.failsafe,
            primary_start_timeout: 300,
            ..DynamicConfig::default()
        };
        let names: Vec<String> = (0..n).map(|i| format!("pg{i}")).collect();
        let seg = Seg {
            branch: 1,
            tl: 1,
            start: 0,
            end: 1000,
        };
        let pgs = (0..n)
            .map(|i| Pg {
                state: PgState::Running { primary: i == 0 },
                segs: vec![seg],
                upstream: (i != 0).then(|| names[0].clone()),
                streaming_from: None,
                receiver_after: 0,
                promoted: None,
                guc: String::new(),
                checkpoint: (1, 1000),
            })
            .collect();
        let agents = names
            .iter()
            .enumerate()
            .map(|(i, name)| Agent {
                name: name.clone(),
                alive: true,
                frozen_until: 0,
                token: 0,
                phase: Phase::Idle,
                lock_renewed_ms: (i == 0).then_some(0),
                former_leader: None,
                former_timeline: None,
                proxies_wait_since: None,
                switchover_wait_since: None,
                sync_catchup_lsn: 0,
                task: None,
                task_token: 0,
                task_failed: false,
                failed_task: None,
                primary_start_began_ms: None,
                unfenced: None,
                wd_armed: i == 0 && opts.watchdog,
                wd_fed: 0,
                wd_kernel: i == 0 && opts.watchdog,
                may_write: true,
                last_view: None,
                failsafe_active: false,
                dcs_failed: false,
                failsafe_asked_ms: None,
                failsafe_accepted_ms: None,
                pause: PauseView::default(),
                renewals_lapsed_ms: None,
                lapsed_at_ms: None,
                lapsed_lock_failures: 0,
                cycle_started_ms: 0,
                pre_renewal_ms: 0,
                lapsed_lock_given_up: false,
            })
            .collect();
        let proxies: Vec<Proxy> = (0..np)
            .map(|i| Proxy {
                id: format!("proxy{i}"),
                routed: Some(names[0].clone()),
                acked: Some(Some(names[0].clone())),
                acking: None,
                acked_at: None,
                last_ok: 0,
                suspended: false,
            })
            .collect();
        let mut dcs = Dcs::default();
        let v = dcs.bump();
        dcs.config = Some(Versioned {
            value: serde_json::json!({"ttl": ttl, "loop_wait": loop_wait, "retry_timeout": retry}),
            version: v,
        });
        let v = dcs.bump();
        dcs.leader = Some((names[0].clone(), u64::from(ttl) * 1000, v));
        for (i, p) in proxies.iter().enumerate() {
            let _ = i;
            dcs.proxies.insert(
                p.id.clone(),
                (
                    ProxyState {
                        leader: Some(names[0].clone()),
                        since: None,
                    },
                    u64::from(ttl) * 1000,
                ),
            );
        }
        let faults_until = rng.range(60_000, 180_000);
        // One seed in three with 3 or more members tags a member other than the first leader
        // `nofailover` (at least one other candidate remains).
        let nofailover = (n >= 3 && rng.chance(33)).then(|| 1 + rng.pick(n - 1));
        let mut sim = Sim {
            seed,
            nofailover,
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            dynamic,
            dcs,
            agents,
            pgs,
            proxies,
            cut_dcs: vec![false; n],
            cut_link: vec![vec![false; n]; n],
            cut_proxy_dcs: vec![false; np],
            cut_proxy_member: vec![vec![false; n]; np],
            pending: vec![vec![]; n],
            host_frozen_until: vec![0; n],
            acked: vec![],
            next_branch: 2,
            promotions: 0,
            faults_until,
            healed_at: None,
            leader_seen_after_heal: false,
            recovered_ms: None,
            end: 0,
            violation: None,
            tracing,
            stepped_down: None,
            switchovers: 0,
            switchover_fallbacks: 0,
            promotions_before_switchover: 0,
            recovery_handovers: 0,
            lapse_releases: 0,
            lapse_session_drops: 0,
            won_past_holding_off: 0,
            paused_since: None,
            pause_wanted: None,
            resumed_at: 0,
            pauses: 0,
            promotions_while_paused: 0,
            blip_until: None,
            calm: vec![],
            blip_check: None,
            blips: 0,
            blips_checked: 0,
            remote: None,
            trace: VecDeque::new(),
            nevents: 0,
            last_leader: None,
            opts,
        };
        sim.end = faults_until + sim.liveness_window() + 20_000;
        for i in 0..n {
            sim.publish(i);
            let at = sim.rng.range(0, 2000);
            sim.schedule(at, Ev::Cycle(i, 0));
        }
        for p in 0..np {
            let at = sim.rng.range(0, 500);
            sim.schedule(at, Ev::ProxyTick(p));
        }
        sim.schedule(100, Ev::Tick);
        sim.schedule(200, Ev::Client);
        let first_fault = sim.rng.range(20_000, 40_000);
        sim.schedule(first_fault, Ev::Fault);
        sim.schedule(faults_until, Ev::Heal);
        let d = &sim.dynamic;
        let line = format!(
            "seed {seed}: {n} members, {np} proxies, ttl {}s loop_wait {}s retry_timeout {}s, synchronous_mode {:?}{}, faults until {} ms",
            d.ttl,
            d.loop_wait,
            d.retry_timeout,
            d.synchronous_mode,
            if d.synchronous_mode_strict { " strict" } else { "" },
            faults_until
        );
        let line = if d.failsafe_mode {
            format!("{line}, failsafe_mode")
        } else {
            line
        };
        let line = match sim.nofailover {
            Some(m) => format!("{line}, pg{m} tagged nofailover"),
            None => line,
        };
        let episodes = if opts.pause {
            pause_episodes(seed, faults_until)
        } else {
            vec![]
        };
        let line = if episodes.is_empty() {
            line
        } else {
            format!("{line}, paused {episodes:?} ms")
        };
        for (from, to) in episodes {
            sim.schedule(from, Ev::Pause(true));
            sim.schedule(to, Ev::Pause(false));
        }
        let blips = if opts.blips {
            let after = faults_until + sim.liveness_window() + 10_000;
            dcs_blips(seed, after, sim.blip_hold_max_ms(), sim.blip_window_ms())
        } else {
            vec![]
        };
        let line = if blips.is_empty() {
            line
        } else {
            format!("{line}, DCS frozen (from, hold) {blips:?} ms")
        };
        let before = ha::demote_window_ms(&sim.dynamic, None) + 1_000;
        for &(at, hold) in &blips {
            sim.schedule(at, Ev::Blip(hold));
            let until = at + hold + sim.blip_window_ms();
            sim.calm.push((at.saturating_sub(before), until));
            sim.end = sim.end.max(until + 1_000);
        }
        let line = if opts.standby && standby_cluster(seed) {
            sim.make_standby_cluster();
            format!("{line}, standby cluster of {REMOTE_HOST} (synchronous_mode off)")
        } else {
            line
        };
        sim.log(line);
        sim
    }

    /// `praetor ctl pause`/`resume`: the `pause` flag of the DCS `config` key (a `PATCH /config`
    /// through a member's API; the operator retries each second while the DCS is down, the last
    /// command winning).
    fn set_pause(&mut self) {
        let Some(on) = self.pause_wanted else {
            return;
        };
        if self.dcs.down {
            self.schedule(1_000, Ev::PauseRetry);
            return;
        }
        self.pause_wanted = None;
        let v = self.dcs.bump();
        let mut value = self
            .dcs
            .config
            .as_ref()
            .map_or_else(|| serde_json::json!({}), |c| c.value.clone());
        value["pause"] = serde_json::Value::Bool(on);
        self.dcs.config = Some(Versioned { value, version: v });
        if on {
            if self.paused_since.is_none() {
                self.pauses += 1;
                self.paused_since = Some(self.now);
            }
        } else if self.paused_since.is_some() {
            self.paused_since = None;
            self.resumed_at = self.now;
        }
        self.log(if on { "PAUSE" } else { "RESUME" }.into());
    }

    /// The runner's `apply_dynamic_config` for `pause`: a view's `config` key, parsed with the
    /// agent's own parser when its version changed; an unparsable key keeps the last value.
    fn read_pause(&mut self, i: usize, view: &Cluster) {
        let me = self.agents[i].name.as_str();
        let manual = view
            .failover_request()
            .is_some_and(|f| f.value.member.is_none() || f.value.member.as_deref() == Some(me));
        let pv = &mut self.agents[i].pause;
        pv.manual = manual;
        let Some(c) = view.config.as_ref().filter(|c| c.version != pv.version) else {
            return;
        };
        pv.version = c.version;
        match DynamicConfig::from_json(&c.value) {
            Ok(d) if d.pause != pv.paused => {
                pv.paused = d.pause;
                let line = format!("{}: reads pause: {}", self.agents[i].name, d.pause);
                self.log(line);
            }
            Ok(_) => {}
            Err(e) => {
                let line = format!("{}: config key refused: {e}", self.agents[i].name);
                self.log(line);
            }
        }
    }

    /// Member `i` runs in maintenance mode (what its `decide` is told).
    fn member_paused(&self, i: usize) -> bool {
        self.agents[i].pause.paused && self.opts.members_read_pause
    }

    /// [`Violation::PromotedWhilePaused`]: member `i` promotes now.
    fn check_pause(&mut self, i: usize) {
        let Some(since) = self.paused_since else {
            return;
        };
        let pv = self.agents[i].pause;
        if pv.read_at < since {
            // Decided on a view read before the pause reached the DCS.
            return;
        }
        if pv.manual {
            self.promotions_while_paused += 1;
            return;
        }
        if self.violation.is_none() {
            self.violation = Some(Violation::PromotedWhilePaused {
                at: self.now,
                member: self.agents[i].name.clone(),
                paused_since: since,
            });
        }
    }

    /// Where the liveness window starts: at the heal `h`, or at the last resume when that came later,
    /// or, with failsafe mode, at the end of the
    /// last promise a member made by confirming a leader over `POST /failsafe` (it stays out of the
    /// race for `ttl` after it, `ha::failsafe::promised`), when that ends later: a leader still cut
    /// off at the heal's instant may be confirmed once more, and the members that confirmed it
    /// wait `ttl` before racing, by design.
    fn liveness_start(&self, h: u64) -> u64 {
        let promise_ends = self
            .agents
            .iter()
            .filter_map(|a| a.failsafe_accepted_ms)
            .max()
            .map_or(0, |at| at + u64::from(self.dynamic.ttl) * 1000);
        h.max(promise_ends).max(self.resumed_at)
    }

    fn liveness_window(&self) -> u64 {
        u64::from(self.dynamic.ttl + self.dynamic.loop_wait) * 1000 + LIVENESS_ALLOWANCE_MS
    }

    fn log(&mut self, line: String) {
        self.trace.push_back(format!("{:>7} {line}", self.now));
        if !self.tracing && self.trace.len() > TRACE_TAIL {
            self.trace.pop_front();
        }
    }

    fn schedule(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((self.now + delay, self.seq)));
        self.events.insert(self.seq, ev);
    }

    fn n(&self) -> usize {
        self.agents.len()
    }

    fn dcs_ok(&self, i: usize) -> bool {
        !self.dcs.down && !self.cut_dcs[i]
    }

    fn link_ok(&self, a: usize, b: usize) -> bool {
        !self.cut_link[a][b] && !self.host_frozen(a) && !self.host_frozen(b)
    }

    /// The host is frozen until its thaw event runs (the thaw is atomic: see [`Sim::thaw_host`]).
    fn host_frozen(&self, i: usize) -> bool {
        self.host_frozen_until[i] != 0
    }

    /// How long this member's agent must still wait (frozen process or host), 0 when it runs.
    fn agent_wait(&self, i: usize) -> u64 {
        let a = self.agents[i].frozen_until.saturating_sub(self.now);
        if a == 0 && self.host_frozen(i) {
            1
        } else {
            a
        }
    }

    /// PostgreSQL accepts writes: a running primary on a host that is not frozen.
    fn accepts_writes(&self, i: usize) -> bool {
        self.pgs[i].writable() && !self.host_frozen(i)
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.name == name)
    }

    fn ttl_ms(&self) -> u64 {
        u64::from(self.dynamic.ttl) * 1000
    }

    fn latency(&mut self) -> u64 {
        if self
            .calm
            .iter()
            .any(|&(from, to)| from <= self.now && self.now < to)
        {
            return self.rng.range(1, 40);
        }
        // Spikes and lost replies are faults: none after the heal.
        let faulty = self.healed_at.is_none();
        if self.rng.chance(1) && faulty {
            self.rng.range(1500, 8000)
        } else if self.rng.chance(5) {
            self.rng.range(200, 1500)
        } else {
            self.rng.range(1, 40)
        }
    }

    fn deadline(&self, i: usize) -> Option<u64> {
        ha::demote_deadline_ms(
            self.agents[i].lock_renewed_ms,
            &self.dynamic,
            self.wd_timeout(i),
        )
    }

    fn wd_timeout(&self, i: usize) -> Option<u32> {
        self.agents[i]
            .wd_armed
            .then(|| self.dynamic.ttl.saturating_sub(SAFETY_MARGIN_SECS))
    }

    /// How long a failed DCS call of member `i` takes: `retry_timeout`, or less near its demotion
    /// deadline (the runner's `bounded`).
    fn dcs_timeout(&self, i: usize) -> u64 {
        let mut limit = u64::from(self.dynamic.retry_timeout.max(1)) * 1000;
        if let Some(d) = self.deadline(i).filter(|_| self.agents[i].may_write) {
            limit = limit.min(d.saturating_sub(self.now).max(200));
        }
        limit
    }

    fn set_lock_renewed(&mut self, i: usize, at: Option<u64>) {
        self.agents[i].lock_renewed_ms = at;
        if let Some(d) = self.deadline(i) {
            let delay = d.saturating_sub(self.now);
            self.schedule(delay, Ev::Guard(i, d));
        }
    }

    fn cfg(&self, i: usize) -> HaConfig {
        HaConfig {
            name: self.agents[i].name.clone(),
            tags: Tags {
                nofailover: self.nofailover == Some(i),
                ..Tags::default()
            },
            dynamic: DynamicConfig {
                pause: self.member_paused(i),
                standby_cluster: self
                    .dynamic
                    .standby_cluster
                    .clone()
                    .filter(|_| self.opts.members_read_standby),
                ..self.dynamic.clone()
            },
            remove_data_on_diverged: false,
            fence_timeout_ms: 5_000,
            remove_data_on_rewind_failure: false,
            clone_without_leader: false,
            pg_major: 15,
        }
    }

    fn ha_now(&self) -> Now {
        Now {
            mono_ms: self.now,
            unix_secs: 1_800_000_000 + (self.now / 1000) as i64,
        }
    }

    // ---------------------------------------------------------------- PostgreSQL

    fn standbys(&self, i: usize) -> Vec<ha::sync::Standby> {
        let guc = &self.pgs[i].guc;
        let parsed = ha::sync::parse_guc(guc);
        let mut out = vec![];
        let mut sync_taken = 0u32;
        for j in 0..self.n() {
            if j == i || self.pgs[j].streaming_from.as_deref() != Some(&self.agents[i].name) {
                continue;
            }
            let name = self.agents[j].name.clone();
            let sync_state = match &parsed {
                None => {
                    // `*`: the first streaming standby is synchronous.
                    sync_taken += 1;
                    if sync_taken == 1 {
                        "sync"
                    } else {
                        "potential"
                    }
                }
                Some((n, set)) if set.contains(&name) => {
                    if guc.trim_start().starts_with("ANY") {
                        "quorum"
                    } else if sync_taken < *n {
                        sync_taken += 1;
                        "sync"
                    } else {
                        "potential"
                    }
                }
                Some(_) => "async",
            };
            out.push(ha::sync::Standby {
                name,
                state: "streaming".into(),
                sync_state: sync_state.into(),
                flush_lsn: self.pgs[j].lsn(),
            });
        }
        out
    }

    fn observe(&self, i: usize) -> (DataDir, Postgres) {
        if self.agents[i].task.is_some() {
            return (DataDir::Empty, Postgres::Starting);
        }
        let data = DataDir::Initialized {
            sysid: SYSID.into(),
        };
        let pg = &self.pgs[i];
        let postgres = match pg.state {
            PgState::Running { primary } => Postgres::Running(Running {
                is_primary: primary,
                timeline: pg.tl(),
                wal_position: pg.lsn(),
                upstream: if primary {
                    None
                } else {
                    pg.upstream.clone().map(|u| (u, 5432))
                },
                standbys: if primary { self.standbys(i) } else { vec![] },
                sync_standby_names: pg.guc.clone(),
                slots: vec![],
            }),
            PgState::Stopped { .. } => Postgres::Stopped {
                control: Some(pg.control()),
            },
        };
        (data, postgres)
    }

    fn stop_pg(&mut self, i: usize, mode: StopMode, why: &str) {
        let PgState::Running { primary } = self.pgs[i].state else {
            return;
        };
        if mode == StopMode::Fast && primary {
            // A fast shutdown sends the remaining WAL to the standbys streaming from it.
            for j in 0..self.n() {
                if self.pgs[j].streaming_from.as_deref() == Some(&self.agents[i].name)
                    && self.pgs[j].can_follow(&self.pgs[i])
                {
                    self.pgs[j].segs = self.pgs[i].segs.clone();
                }
            }
        }
        let clean = mode == StopMode::Fast;
        let pg = &mut self.pgs[i];
        if clean {
            pg.checkpoint = (pg.tl(), pg.lsn());
        }
        pg.state = PgState::Stopped {
            clean,
            was_primary: primary,
        };
        pg.streaming_from = None;
        self.pending[i].clear();
        let name = self.agents[i].name.clone();
        self.log(format!("{name}: postgres stopped ({mode:?}, {why})"));
    }

    fn promote_pg(&mut self, i: usize) {
        let branch = self.next_branch;
        self.next_branch += 1;
        let name = self.agents[i].name.clone();
        let pg = &mut self.pgs[i];
        let at = pg.lsn();
        let tl = pg.tl() + 1;
        pg.promoted = Some(ha::Promotion {
            member: name,
            timeline: tl,
            lsn: at,
        });
        pg.segs.push(Seg {
            branch,
            tl,
            start: at,
            end: at,
        });
        pg.state = PgState::Running { primary: true };
        pg.upstream = None;
        pg.streaming_from = None;
        pg.checkpoint = (tl, at);
        self.promotions += 1;
        let name = self.agents[i].name.clone();
        self.log(format!("{name}: promoted to timeline {tl} at {at}"));
        if self.nofailover == Some(i) && self.violation.is_none() {
            self.violation = Some(Violation::NofailoverPromoted {
                at: self.now,
                member: name.clone(),
            });
        }
        self.check_proxies(i);
        self.check_commits(i);
        self.check_switchover(i);
        self.check_pause(i);
    }

    /// The fencing handshake held: no proxy still serving routes writes to the former leader that
    /// member `i` replaced (the one `decide` fenced and awaited the proxies for).
    fn check_proxies(&mut self, i: usize) {
        if self.violation.is_some() {
            return;
        }
        let Some(former) = self.agents[i]
            .former_leader
            .as_ref()
            .map(|u| u.member.clone())
        else {
            return;
        };
        if former == self.agents[i].name {
            return;
        }
        let still = self
            .proxies
            .iter()
            .find(|p| !p.suspended && p.routed.as_deref() == Some(former.as_str()));
        if let Some(p) = still {
            self.violation = Some(Violation::PromotedBeforeProxyLeft {
                at: self.now,
                member: self.agents[i].name.clone(),
                proxy: p.id.clone(),
                former,
            });
        }
    }

    /// Counts the lapse's hand-overs ([`Report::lapse_releases`]) and the races won while a peer
    /// at least as far on held off ([`Report::won_past_holding_off`]).
    fn count_hold_offs(&mut self, local: &ha::LocalState, d: &ha::Decision) {
        match d.reason {
            ha::Reason::ReleasingLockRenewalsLapsed => self.lapse_releases += 1,
            ha::Reason::DroppingDcsSessionReleasesFailed { .. }
            | ha::Reason::DroppingDcsSessionDcsUnreadable { .. } => self.lapse_session_drops += 1,
            ha::Reason::PromotedByAcquiringLock | ha::Reason::AcquiredLockAsLeader => {
                let Some(r) = local.postgres.running() else {
                    return;
                };
                let mine = (r.timeline, r.wal_position);
                if local.peers.iter().flatten().any(|p| {
                    p.holding_off && p.is_eligible() && (p.timeline, p.wal_position) >= mine
                }) {
                    self.won_past_holding_off += 1;
                }
            }
            _ => {}
        }
    }

    /// Counts what a lock holder still in recovery does about a switchover request asking it to
    /// step down: promote first ([`Report::promotions_before_switchover`]) or hand the lock over
    /// ([`Report::recovery_handovers`]).
    fn count_switchover_from_recovery(
        &mut self,
        view: Option<&Cluster>,
        me: &str,
        reason: &ha::Reason,
    ) {
        let reason = match reason {
            ha::Reason::Paused { inner } => inner,
            r => r,
        };
        match reason {
            ha::Reason::ManualFailoverHandingOver { .. } => self.recovery_handovers += 1,
            ha::Reason::PromotedBecauseHadLock
                if view.and_then(|v| v.failover_request()).is_some_and(|f| {
                    f.value.leader.as_deref().is_none_or(|l| l == me)
                        && f.value.member.as_deref().is_some_and(|m| m != me)
                }) =>
            {
                self.promotions_before_switchover += 1
            }
            _ => {}
        }
    }

    /// A planned switchover loses no commit: the member promoted after a leader stepped down holds
    /// every commit that leader acknowledged on its branch (async mode included), unless it was
    /// promoted without the published last LSN (the bounded wait's fallback, counted apart).
    fn check_switchover(&mut self, i: usize) {
        let Some(sd) = self.stepped_down.take() else {
            return;
        };
        if self.violation.is_some() {
            return;
        }
        self.switchovers += 1;
        let has_last = self.pgs[i]
            .segs
            .iter()
            .any(|s| s.branch == sd.branch && s.end >= sd.last_lsn);
        let name = self.agents[i].name.clone();
        if !has_last && sd.disturbed {
            self.switchover_fallbacks += 1;
            self.log(format!(
                "{name}: promoted without the last LSN {} of {}, which a fault took away",
                sd.last_lsn, sd.member
            ));
            return;
        }
        let lost = if has_last {
            self.acked
                .iter()
                .filter(|c| c.member == sd.member && c.branch == sd.branch)
                .find(|c| !self.pgs[i].contains(c.branch, c.lsn))
                .map(|c| c.lsn)
        } else {
            Some(sd.last_lsn)
        };
        if let Some(lsn) = lost {
            self.violation = Some(Violation::SwitchoverLostCommit {
                at: self.now,
                member: name,
                commit: (sd.member, lsn),
            });
        }
    }

    /// The leader that stepped down can still take the lock back: its agent runs, and reaches the DCS
    /// and every member.
    fn stepped_down_available(&self, m: usize) -> bool {
        self.agents[m].alive
            && self.agents[m].frozen_until <= self.now
            && !self.host_frozen(m)
            && self.dcs_ok(m)
            && (0..self.n()).all(|j| j == m || self.link_ok(m, j))
    }

    /// PostgreSQL started as a primary on a replica's data directory: writable on the timeline it
    /// replayed, with no timeline switch (what PostgreSQL does without standby.signal).
    fn start_replica_data_as_primary(&mut self, i: usize) {
        let branch = self.next_branch;
        self.next_branch += 1;
        let pg = &mut self.pgs[i];
        let at = pg.lsn();
        let tl = pg.tl();
        pg.segs.push(Seg {
            branch,
            tl,
            start: at,
            end: at,
        });
        pg.state = PgState::Running { primary: true };
        pg.upstream = None;
        pg.streaming_from = None;
        let name = self.agents[i].name.clone();
        self.log(format!(
            "{name}: started as primary on a replica's data, still on timeline {tl} at {at}"
        ));
        self.check_commits(i);
    }

    /// Under synchronous replication a member that becomes writable holds every acknowledged commit.
    fn check_commits(&mut self, i: usize) {
        let checked =
            self.dynamic.synchronous_mode != SyncMode::Off || self.opts.check_async_commits;
        if !checked || self.violation.is_some() {
            return;
        }
        let all = self.opts.check_async_commits;
        if let Some(c) = self
            .acked
            .iter()
            .filter(|c| all || c.sync_active)
            .find(|c| !self.pgs[i].contains(c.branch, c.lsn))
        {
            self.violation = Some(Violation::LostCommit {
                at: self.now,
                member: self.agents[i].name.clone(),
                commit: (c.member.clone(), c.lsn),
            });
        }
    }

    // ---------------------------------------------------------------- DCS writes by members

    fn member_data(&self, i: usize, holds: bool) -> MemberData {
        let a = &self.agents[i];
        let pg = &self.pgs[i];
        let (state, role) = match (&a.task, pg.state) {
            (Some(_), _) => (MemberState::Starting, Role::Replica),
            (None, PgState::Running { primary: true }) => (MemberState::Running, Role::Primary),
            (None, PgState::Running { primary: false }) if holds && self.remote.is_some() => {
                (MemberState::Running, Role::StandbyLeader)
            }
            (None, PgState::Running { primary: false }) => (MemberState::Running, Role::Replica),
            (None, PgState::Stopped { .. }) if holds && self.remote.is_some() => {
                (MemberState::Stopped, Role::StandbyLeader)
            }
            (None, PgState::Stopped { .. }) => (
                MemberState::Stopped,
                if holds { Role::Primary } else { Role::Replica },
            ),
        };
        let mut d = MemberData {
            conn_url: Some(format!("postgres://{}:5432/postgres", a.name)),
            api_url: Some(format!("http://{}:8008/patroni", a.name)),
            state,
            role,
            tags: Tags {
                nofailover: self.nofailover == Some(i),
                ..Tags::default()
            },
            holding_off_ms: ha::lapsed::hold_off_left_ms(
                a.renewals_lapsed_ms,
                &self.dynamic,
                self.now,
            ),
            ..Default::default()
        };
        if a.task.is_none() && pg.running() {
            d.timeline = Some(pg.tl());
            d.xlog_location = Some(pg.lsn());
            if role == Role::Replica {
                d.receive_lsn = Some(pg.lsn());
                d.replay_lsn = Some(pg.lsn());
                d.replication_state = Some(
                    if pg.streaming_from.is_some() {
                        "streaming"
                    } else {
                        "in archive recovery"
                    }
                    .into(),
                );
            }
        }
        d
    }

    fn publish(&mut self, i: usize) {
        let holds = self.dcs.leader_alive(self.now) == Some(self.agents[i].name.as_str());
        let d = self.member_data(i, holds);
        let exp = self.now + self.ttl_ms();
        self.dcs
            .members
            .insert(self.agents[i].name.clone(), (d, exp));
    }

    fn wake_watchers(&mut self) {
        for i in 0..self.n() {
            if self.agents[i].alive && matches!(self.agents[i].phase, Phase::Idle) && self.dcs_ok(i)
            {
                self.agents[i].token += 1;
                let t = self.agents[i].token;
                let delay = self.rng.range(5, 300);
                self.schedule(delay, Ev::Cycle(i, t));
            }
        }
    }

    // ---------------------------------------------------------------- the agent's loop

    /// As the runner's `lapse`: member `i`'s renewals lapsed now, its lock possibly still standing.
    fn lapse(&mut self, i: usize) {
        self.agents[i].renewals_lapsed_ms = Some(self.now);
        self.agents[i].lapsed_at_ms = Some(self.now);
        self.agents[i].lapsed_lock_given_up = false;
    }

    fn cycle_event(&mut self, i: usize, token: u64) {
        if !self.agents[i].alive || token != self.agents[i].token {
            return;
        }
        let d = self.agent_wait(i);
        if d > 0 {
            self.schedule(d, Ev::Cycle(i, token));
            return;
        }
        let phase = std::mem::replace(&mut self.agents[i].phase, Phase::Idle);
        match phase {
            Phase::Idle => self.start_cycle(i),
            Phase::Reading { view } => self.decide_and_act(i, view),
            Phase::ReadAtThaw => self.read_view(i),
            Phase::Acting {
                view,
                actions,
                await_until,
            } => self.act(i, view, actions, await_until),
        }
    }

    fn start_cycle(&mut self, i: usize) {
        self.agents[i].cycle_started_ms = self.now;
        let wd = self.wd_timeout(i);
        let dcs_failed = std::mem::take(&mut self.agents[i].dcs_failed);
        let failsafe_round_first =
            self.agents[i].failsafe_active || (self.dynamic.failsafe_mode && dcs_failed);
        if ha::past_demote_deadline(
            self.agents[i].lock_renewed_ms,
            &self.dynamic,
            wd,
            failsafe_round_first,
            self.now,
        ) {
            self.agents[i].lock_renewed_ms = None;
            if self.agents[i].may_write {
                self.lapse(i);
                self.stop_pg(
                    i,
                    StopMode::Immediate,
                    "past the demotion deadline at cycle start",
                );
            } else {
                self.log(format!(
                    "{}: past the demotion deadline, still in recovery: kept running",
                    self.agents[i].name
                ));
            }
        }
        // collect_task
        if self.agents[i].task.is_none() && self.agents[i].task_failed {
            self.agents[i].task_failed = false;
        }
        if let Some(thaw) = self.wait_for_thaw(i) {
            self.agents[i].phase = Phase::ReadAtThaw;
            let t = self.agents[i].token;
            self.schedule(thaw - self.now, Ev::Cycle(i, t));
            return;
        }
        self.read_view(i);
    }

    /// The cycle's DCS read: the view, answered after a latency, or a failure after the call's
    /// bound.
    fn read_view(&mut self, i: usize) {
        let (view, delay) = if self.dcs_ok(i) {
            self.agents[i].pause.read_at = self.now;
            (Some(self.dcs.view(self.now)), self.latency())
        } else {
            self.agents[i].dcs_failed = true;
            (None, self.dcs_timeout(i))
        };
        self.agents[i].phase = Phase::Reading { view };
        let t = self.agents[i].token;
        self.schedule(delay, Ev::Cycle(i, t));
    }

    /// The runner's failsafe round (`failsafe_check`): with the DCS unreachable, `failsafe_mode`
    /// on and this member a running primary that led in the last view it read, it asks every
    /// other member of that view's `failsafe` key (`POST /failsafe`); each reachable member
    /// answers with the agent's own rule ([`ha::failsafe::answer`], from its own last view).
    /// `Some(true)` when all accepted, `None` when no round applies.
    fn failsafe_round(
        &mut self,
        i: usize,
        view: Option<&Cluster>,
        postgres: &Postgres,
    ) -> Option<bool> {
        if view.is_some() || !self.dynamic.failsafe_mode {
            return None;
        }
        if !postgres.running().is_some_and(|r| r.is_primary) {
            return None;
        }
        let me = self.agents[i].name.clone();
        let last = self.agents[i].last_view.as_ref()?;
        if last.leader.as_ref().map(|l| l.name.as_str()) != Some(me.as_str()) {
            return None;
        }
        let members = ha::failsafe::members_to_ask(last, &me);
        self.agents[i].failsafe_asked_ms = Some(self.now);
        let Some(members) = members else {
            return Some(false);
        };
        let mut accepted = 0;
        let mut refused = vec![];
        for (name, _) in &members {
            let answer = self.index(name).filter(|&j| {
                let a = &self.agents[j];
                self.link_ok(i, j) && a.alive && a.frozen_until <= self.now
            });
            let answer = answer.map(|j| {
                let last_leader = self.agents[j]
                    .last_view
                    .as_ref()
                    .and_then(|v| v.leader.as_ref())
                    .map(|l| l.name.as_str());
                ha::failsafe::answer(
                    self.dynamic.failsafe_mode,
                    self.accepts_writes(j),
                    last_leader,
                    &me,
                )
            });
            if answer == Some(ha::failsafe::FailsafeAnswer::Accepted) {
                accepted += 1;
                if let Some(j) = self.index(name) {
                    self.agents[j].failsafe_accepted_ms = Some(self.now);
                }
            } else {
                refused.push(name.clone());
            }
        }
        let confirmed = refused.is_empty();
        self.log(format!(
            "{me}: failsafe round: {accepted} of {} accepted{}",
            members.len(),
            if refused.is_empty() {
                String::new()
            } else {
                format!(", not {refused:?}")
            }
        ));
        Some(confirmed)
    }

    fn peers(&self, i: usize, view: &Cluster) -> Vec<PeerStatus> {
        let mut out = vec![];
        // Whom the race asks: the member keys, and in failsafe mode the `failsafe` key's members
        // whose keys expired during an outage (the agent's own rule).
        let contacts =
            ha::failsafe::race_contacts(view, &self.agents[i].name, self.dynamic.failsafe_mode);
        for j in 0..self.n() {
            if j == i || !self.link_ok(i, j) {
                continue;
            }
            let a = &self.agents[j];
            if !a.alive || a.frozen_until > self.now || !contacts.iter().any(|(n, _)| *n == a.name)
            {
                continue;
            }
            let pg = &self.pgs[j];
            // A stopped member that diverged answers its switch point (the agent's `/patroni`,
            // from its pg_controldata and the `history` of the cluster view it last read).
            let history = view.history.as_ref().map_or(&[][..], |h| &h.value[..]);
            let diverged = if a.task.is_none() {
                ha::diverged_vote(&self.observe(j).1, history)
            } else {
                None
            };
            out.push(PeerStatus {
                name: a.name.clone(),
                is_running_primary: pg.writable(),
                is_running: pg.running() && a.task.is_none(),
                wal_position: diverged.map_or(pg.lsn(), |(_, at)| at),
                timeline: diverged.map_or(pg.tl(), |(tl, _)| tl),
                nofailover: self.nofailover == Some(j),
                failover_priority: 1,
                diverged: diverged.is_some(),
                // As the agent's `/patroni` (`holding_off_ms`): within the hold-off after its
                // renewals lapsed, as the runner publishes it.
                holding_off: ha::lapsed::hold_off_left_ms(
                    a.renewals_lapsed_ms,
                    &self.dynamic,
                    self.now,
                )
                .is_some(),
                // The simulation does not model logical slots (none is configured there).
                slot_copies: None,
                // As the agent's `/patroni`: from the last view it read (none yet: unlocked).
                cluster_unlocked: a.last_view.as_ref().is_none_or(|v| v.leader.is_none()),
            });
        }
        out
    }

    fn decide_and_act(&mut self, i: usize, view: Option<Cluster>) {
        let me = self.agents[i].name.clone();
        if view.is_none()
            && self.agents[i].renewals_lapsed_ms.is_some()
            && !self.agents[i].lapsed_lock_given_up
        {
            // As the runner: a failed read while the lock may still be its own counts for
            // `ha::lapsed::drops_unseen_lock`.
            self.agents[i].lapsed_lock_failures += 1;
        }
        if let Some(v) = &view {
            self.read_pause(i, v);
            self.agents[i].last_view = Some(v.clone());
            let holds = v.leader.as_ref().is_some_and(|l| l.name == me);
            self.agents[i].lapsed_lock_given_up = !holds;
            if !holds {
                self.agents[i].lock_renewed_ms = None;
                self.agents[i].primary_start_began_ms = None;
                self.agents[i].lapsed_lock_failures = 0;
            }
            // As the runner: the lock holder seen, else a newer leader the `history` names.
            if let Some(l) = v.leader.as_ref().filter(|l| l.name != me) {
                // As the runner: another member leads, a hold-off after lapsed renewals is over.
                self.agents[i].renewals_lapsed_ms = None;
                if let Some(up) = ha::upstream_of(v, &l.name) {
                    let timeline = v.member(&l.name).and_then(|m| m.data.timeline);
                    self.agents[i].former_leader = Some(up);
                    self.agents[i].former_timeline = timeline;
                }
            } else {
                let remembered =
                    self.agents[i]
                        .former_leader
                        .clone()
                        .map(|leader| ha::former::FormerLeader {
                            leader,
                            timeline: self.agents[i].former_timeline,
                        });
                if let Some(newer) = ha::former::newer_in_dcs(v, &me, remembered.as_ref()) {
                    self.log(format!(
                        "{me}: the history names a newer former leader, {}",
                        newer.leader.member
                    ));
                    self.agents[i].former_leader = Some(newer.leader);
                    self.agents[i].former_timeline = newer.timeline;
                }
            }
        }
        let (data, postgres) = self.observe(i);
        let starting_read_only = self.agents[i]
            .task
            .as_ref()
            .is_some_and(|t| t.1.starts_read_only());
        self.agents[i].may_write = ha::may_accept_writes(&postgres, false, starting_read_only);
        let peers = if ha::needs_peers(view.as_ref(), &me) {
            Some(self.peers(i, view.as_ref().expect("needs_peers implies a view")))
        } else {
            None
        };
        let failsafe_confirmed = self.failsafe_round(i, view.as_ref(), &postgres);
        self.agents[i].failsafe_active = failsafe_confirmed == Some(true);
        let a = &self.agents[i];
        let local = LocalState {
            data,
            postgres,
            task: a.task.as_ref().map(|t| t.0),
            starting_read_only,
            won_initialize: false,
            lock_renewed_ms: a.lock_renewed_ms,
            watchdog_timeout_secs: self.wd_timeout(i),
            watchdog: match (self.opts.watchdog, a.wd_armed) {
                (false, _) => WatchdogState::Off,
                (true, true) => WatchdogState::Armed,
                (true, false) => WatchdogState::NotArmed,
            },
            peers,
            primary_start_began_ms: a.primary_start_began_ms,
            former_leader: a.former_leader.clone(),
            sync_catchup_lsn: a.sync_catchup_lsn,
            retained_members: vec![],
            remote: self.remote.as_ref().map(|r| ha::standby::RemoteTimeline {
                timeline: r.tl(),
                history: vec![],
            }),
            remote_recovery: self
                .follows_remote(i)
                .then(|| ha::standby::remote_recovery(&self.dynamic))
                .flatten(),
            unfenced: a.unfenced.clone(),
            failed_task: a.failed_task,
            failsafe_confirmed,
            proxies_wait_began_ms: a
                .proxies_wait_since
                .as_ref()
                .filter(|(f, _)| a.former_leader.as_ref().is_some_and(|l| l.member == *f))
                .map(|(_, t)| *t),
            granted_ttl: None,
            switchover_wait_began_ms: a.switchover_wait_since,
            // Not modelled: no permanent logical slots, so no copies to pace.
            slot_copy_at_ms: None,
            failsafe_accepted_ms: a
                .failsafe_accepted_ms
                .filter(|_| self.opts.failsafe_promise),
            promoted: self.pgs[i].promoted.clone(),
            renewals_lapsed_ms: a.renewals_lapsed_ms,
            lapsed_at_ms: a.renewals_lapsed_ms.and(a.lapsed_at_ms),
            lapsed_lock_failures: a.lapsed_lock_failures,
            // Not modelled: the simulated pg_rewind never fails half-way.
            rewind_damage: None,
        };
        let d = decide(view.as_ref(), &local, &self.cfg(i), self.ha_now());
        self.count_switchover_from_recovery(view.as_ref(), &me, &d.reason);
        self.count_hold_offs(&local, &d);
        self.agents[i].switchover_wait_since = if d.reason.is_switchover_wait() {
            self.agents[i].switchover_wait_since.or(Some(self.now))
        } else {
            None
        };
        if !d.promotes() {
            // As the runner: no longer the candidate, a later candidacy waits for the proxies afresh.
            self.agents[i].proxies_wait_since = None;
        }
        if d.reason == ha::Reason::DemotingDcsInaccessible {
            self.lapse(i);
        }
        self.log(format!("{me}: {} -> {:?}", d.reason, d.actions));
        self.act(i, view, d.actions.into(), None);
    }

    /// Executes the next action (one per event, each taking simulated time).
    fn act(
        &mut self,
        i: usize,
        view: Option<Cluster>,
        mut actions: VecDeque<Action>,
        await_until: Option<u64>,
    ) {
        let Some(action) = actions.pop_front() else {
            return self.end_cycle(i, view.is_some());
        };
        if is_dcs_call(&action) || matches!(action, Action::AwaitProxies { .. }) {
            if let Some(thaw) = self.wait_for_thaw(i) {
                // Sent to a frozen DCS: carried out when it thaws.
                actions.push_front(action);
                self.agents[i].phase = Phase::Acting {
                    view,
                    actions,
                    await_until,
                };
                let t = self.agents[i].token;
                self.schedule(thaw - self.now, Ev::Cycle(i, t));
                return;
            }
        }
        let me = self.agents[i].name.clone();
        let now = self.now;
        let ttl = self.ttl_ms();
        let ok = self.dcs_ok(i);
        // (done, time taken)
        let (done, took): (bool, u64) = match &action {
            // The simulated PostgreSQL has no sessions: nothing to wait for.
            Action::DrainTransactions { .. } => (true, 0),
            Action::AcquireLeader => {
                self.agents[i].pre_renewal_ms = now - self.agents[i].cycle_started_ms;
                if !ok {
                    (false, self.dcs_timeout(i))
                } else if self.dcs.leader_alive(now).is_none() {
                    let v = self.dcs.bump();
                    self.dcs.leader = Some((me.clone(), now + ttl, v));
                    self.wake_watchers();
                    if self.rng.chance(2) && self.healed_at.is_none() {
                        // The DCS took the lock but the reply was lost: the agent saw an error.
                        self.log(format!("{me}: acquired the leader lock, reply lost"));
                        let t = self.dcs_timeout(i);
                        actions.clear();
                        self.agents[i].phase = Phase::Acting {
                            view,
                            actions,
                            await_until: None,
                        };
                        let tok = self.agents[i].token;
                        self.schedule(t, Ev::Cycle(i, tok));
                        return;
                    }
                    self.set_lock_renewed(i, Some(now));
                    // As the runner: a lock taken anew ends a lapse before it (`ha::lapsed`).
                    self.agents[i].renewals_lapsed_ms = None;
                    self.agents[i].lapsed_lock_failures = 0;
                    if self.agents[i].wd_armed {
                        self.agents[i].wd_fed = now;
                    }
                    self.log(format!("{me}: acquired the leader lock"));
                    (true, self.latency())
                } else {
                    (false, self.latency())
                }
            }
            Action::RenewLeader => {
                self.agents[i].pre_renewal_ms = now - self.agents[i].cycle_started_ms;
                if !ok {
                    (false, self.dcs_timeout(i))
                } else if self.dcs.leader_alive(now) == Some(me.as_str()) {
                    if let Some(l) = self.dcs.leader.as_mut() {
                        l.1 = now + ttl;
                    }
                    if self.rng.chance(2) && self.healed_at.is_none() {
                        // Renewed, but the reply was lost: the agent keeps its older renewal.
                        self.log(format!("{me}: renewed the leader lock, reply lost"));
                        (false, self.dcs_timeout(i))
                    } else {
                        self.set_lock_renewed(i, Some(now));
                        if self.agents[i].wd_armed {
                            self.agents[i].wd_fed = now;
                        }
                        (true, self.latency())
                    }
                } else {
                    self.set_lock_renewed(i, None);
                    self.log(format!("{me}: lost the leader lock"));
                    (false, self.latency())
                }
            }
            Action::ReleaseLeader => {
                if !ok {
                    if self.agents[i].renewals_lapsed_ms.is_some() {
                        // As the runner: counted for `ha::lapsed`'s session drop.
                        self.agents[i].lapsed_lock_failures += 1;
                    }
                    (false, self.dcs_timeout(i))
                } else {
                    self.agents[i].lapsed_lock_failures = 0;
                    let mine = self.dcs.leader_alive(now) == Some(me.as_str());
                    if mine {
                        self.dcs.leader = None;
                        self.log(format!("{me}: released the leader lock"));
                        if self.agents[i].renewals_lapsed_ms.is_some() {
                            // As the runner: the hold-off counts from a confirmed release after
                            // a lapse (`ha::lapsed`).
                            self.agents[i].renewals_lapsed_ms = Some(now);
                            self.agents[i].lapsed_lock_given_up = true;
                        }
                        let pg = &self.pgs[i];
                        let switchover = self
                            .dcs
                            .failover
                            .as_ref()
                            .is_some_and(|f| f.value.leader.as_deref() == Some(me.as_str()));
                        // A primary after its clean stop hands over its shutdown checkpoint; a
                        // lock holder still in recovery (`ha::handover`) the end of its WAL.
                        let last_lsn = match pg.state {
                            PgState::Stopped {
                                clean: true,
                                was_primary: true,
                            } => Some(pg.checkpoint.1),
                            PgState::Running { primary: false } => Some(pg.lsn()),
                            _ => None,
                        };
                        if let Some(last_lsn) = last_lsn.filter(|_| switchover) {
                            self.stepped_down = Some(SteppedDown {
                                member: me.clone(),
                                branch: pg.segs.last().expect("wal").branch,
                                last_lsn,
                                disturbed: false,
                            });
                        }
                        self.wake_watchers();
                    }
                    self.set_lock_renewed(i, None);
                    (mine, self.latency())
                }
            }
            // As the runner: the session (the simulated DCS's lease) is given up whatever the
            // answer. Reached, the DCS drops the lock at once (a close, a revoke); otherwise the
            // lock expires by itself at the end of its ttl, as the simulated lease always does.
            // The member's own key is not modelled as living on it.
            Action::DropDcsSession => {
                self.agents[i].lapsed_lock_failures = 0;
                self.agents[i].lapsed_lock_given_up = true;
                self.set_lock_renewed(i, None);
                if ok && self.dcs.leader_alive(now) == Some(me.as_str()) {
                    self.dcs.leader = None;
                    self.log(format!(
                        "{me}: dropped its DCS session, the leader lock with it"
                    ));
                    self.wake_watchers();
                    (true, self.latency())
                } else {
                    (true, self.dcs_timeout(i))
                }
            }
            Action::ArmWatchdog => {
                self.agents[i].wd_armed = self.opts.watchdog;
                self.agents[i].wd_fed = now;
                self.agents[i].wd_kernel = self.opts.watchdog;
                (true, 1)
            }
            Action::FencePrimary {
                host, answer_ms, ..
            } => {
                let target = self.index(host);
                match target {
                    Some(t) if t != i && self.link_ok(i, t) => {
                        if self.pgs[t].writable() {
                            self.stop_pg(t, StopMode::Fast, &format!("fenced by {me}"));
                        }
                        (true, self.latency() + 50)
                    }
                    Some(t) if t == i => (true, 1),
                    _ => {
                        self.agents[i].unfenced = Some((host.clone(), 5432));
                        (true, *answer_ms)
                    }
                }
            }
            Action::FenceInBackground { host, .. } => {
                if let Some(t) = self.index(host) {
                    if self.link_ok(i, t) {
                        if self.pgs[t].writable() {
                            self.stop_pg(
                                t,
                                StopMode::Fast,
                                &format!("fenced by {me} in background"),
                            );
                        }
                        self.agents[i].unfenced = None;
                    }
                }
                (true, 1)
            }
            Action::AwaitProxies { .. } if !self.opts.await_proxies => (true, 0),
            Action::AwaitProxies { former, wait_ms } => {
                let until = await_until.unwrap_or(now + wait_ms);
                let clear = ok && self.dcs.view(now).proxies_routing_to(former).is_empty();
                if !clear
                    && !matches!(&self.agents[i].proxies_wait_since, Some((f, _)) if f == former)
                {
                    // The wait begins at the first read that shows a proxy on the former leader
                    // (as the runner records it).
                    self.agents[i].proxies_wait_since = Some((former.clone(), now));
                }
                if clear {
                    (true, self.latency())
                } else if now >= until {
                    (false, 1)
                } else {
                    // Poll again in 50 ms.
                    actions.push_front(action.clone());
                    self.agents[i].phase = Phase::Acting {
                        view,
                        actions,
                        await_until: Some(until),
                    };
                    let t = self.agents[i].token;
                    self.schedule(50, Ev::Cycle(i, t));
                    return;
                }
            }
            Action::Promote { within_ms } => {
                self.agents[i].may_write = true;
                let overdue = self.agents[i]
                    .lock_renewed_ms
                    .is_none_or(|at| now >= at + within_ms);
                if overdue {
                    self.log(format!(
                        "{}: not promoting: past the demotion deadline of the last renewal",
                        self.agents[i].name
                    ));
                    (false, 1)
                } else if self.pgs[i].state == (PgState::Running { primary: false }) {
                    self.promote_pg(i);
                    self.agents[i].proxies_wait_since = None;
                    (true, self.rng.range(50, 500))
                } else {
                    (false, 1)
                }
            }
            Action::Stop(mode) => {
                self.stop_pg(i, *mode, "decided");
                self.set_lock_renewed(i, None);
                self.agents[i].wd_armed = false;
                self.agents[i].wd_kernel = false;
                (true, self.rng.range(50, 500))
            }
            Action::Follow(up) => {
                self.pgs[i].upstream = up.as_ref().map(|u| u.host.clone());
                (true, self.rng.range(5, 50))
            }
            Action::SetSyncStandbyNames(g) => {
                self.pgs[i].guc = g.clone();
                self.agents[i].sync_catchup_lsn = self.pgs[i].lsn();
                self.release_waiters(i);
                (true, self.rng.range(5, 50))
            }
            Action::WriteSync(s) => {
                if ok {
                    let v = self.dcs.bump();
                    self.dcs.sync = Some(Versioned {
                        value: s.clone(),
                        version: v,
                    });
                    (true, self.latency())
                } else {
                    (false, self.dcs_timeout(i))
                }
            }
            Action::WriteStatus => {
                if ok {
                    self.dcs.status = Some(Status {
                        optime: self.pgs[i].lsn(),
                        ..Default::default()
                    });
                    (true, self.latency())
                } else {
                    (false, self.dcs_timeout(i))
                }
            }
            Action::WriteLastLsn => {
                if !ok {
                    (false, self.dcs_timeout(i))
                } else if self.pgs[i].state
                    == (PgState::Stopped {
                        clean: true,
                        was_primary: true,
                    })
                {
                    let kept = self.dcs.status.clone().unwrap_or_default();
                    self.dcs.status = Some(Status {
                        optime: self.pgs[i].checkpoint.1,
                        ..kept
                    });
                    (true, self.latency())
                } else {
                    (false, 1)
                }
            }
            Action::UpdateHistory => {
                if ok {
                    let mut entries = self
                        .dcs
                        .history
                        .as_ref()
                        .map(|h| h.value.clone())
                        .unwrap_or_default();
                    let segs = self.pgs[i].segs.clone();
                    let tl = self.pgs[i].tl();
                    // As the runner: a line naming another leader for the timeline this leader's
                    // record says it created is replaced, and the latest line names this leader.
                    if ha::promotion::history_names_another(
                        self.pgs[i].promoted.as_ref(),
                        &me,
                        tl,
                        &entries,
                    ) {
                        entries.retain(|e| e.timeline + 1 != tl);
                    }
                    for w in segs.windows(2) {
                        if !entries.iter().any(|e| e.timeline == w[0].tl) {
                            entries.push(HistoryEntry {
                                timeline: w[0].tl,
                                lsn: w[0].end,
                                reason: "no recovery target specified".into(),
                                timestamp: None,
                                new_leader: (w[0].tl + 1 == tl).then(|| me.clone()),
                            });
                        }
                    }
                    entries.sort_by_key(|e| e.timeline);
                    let v = self.dcs.bump();
                    self.dcs.history = Some(Versioned {
                        value: entries,
                        version: v,
                    });
                    (true, self.latency())
                } else {
                    (false, self.dcs_timeout(i))
                }
            }
            Action::ClearFailover(version) => {
                if ok {
                    if self
                        .dcs
                        .failover
                        .as_ref()
                        .is_some_and(|f| f.version == *version)
                    {
                        self.dcs.failover = None;
                    }
                    (true, self.latency())
                } else {
                    (false, self.dcs_timeout(i))
                }
            }
            Action::WriteFailsafe(m) => {
                if ok {
                    self.dcs.failsafe = (!m.is_empty()).then(|| m.clone());
                    // As the runner: the written key is the one the next failsafe round asks.
                    if let Some(v) = self.agents[i].last_view.as_mut() {
                        v.failsafe = (!m.is_empty()).then(|| m.clone());
                    }
                    (true, self.latency())
                } else {
                    (false, self.dcs_timeout(i))
                }
            }
            Action::EnsureSlots(_)
            | Action::DropSlots(_)
            | Action::AdvanceSlots(_)
            | Action::AdvanceLogicalSlots(_)
            | Action::CopyLogicalSlots { .. }
            | Action::CreateLogicalSlots(_)
            | Action::SetSynchronizedStandbySlots(_) => (true, 1),
            Action::AbortTask => {
                self.agents[i].task = None;
                self.agents[i].task_token += 1;
                (true, 1)
            }
            Action::Start(_) | Action::Rewind(_) | Action::CrashRecovery => {
                let kind = action.task().expect("background");
                if action == Action::Start(StartAs::Primary) {
                    self.agents[i].may_write = true;
                }
                if action == Action::Start(StartAs::Primary)
                    && self.agents[i].primary_start_began_ms.is_none()
                {
                    self.agents[i].primary_start_began_ms = Some(now);
                }
                self.agents[i].task = Some((kind, action.clone()));
                self.agents[i].task_token += 1;
                let took = match kind {
                    Task::Start => self.rng.range(500, 3000),
                    Task::CrashRecovery => self.rng.range(300, 1500),
                    _ => self.rng.range(1000, 5000),
                };
                let t = self.agents[i].task_token;
                self.schedule(took, Ev::Task(i, t));
                (false, 1)
            }
            Action::KeepLeadingInFailsafe => {
                // The confirmation counts as a renewal from the instant the round began, and
                // feeds the watchdog (the runner's `keep_leading_in_failsafe`).
                let at = self.agents[i].failsafe_asked_ms;
                self.set_lock_renewed(i, at);
                if self.agents[i].wd_armed {
                    self.agents[i].wd_fed = now;
                }
                (true, 1)
            }
            Action::RaceInitialize
            | Action::Bootstrap
            | Action::CreateInitialize { .. }
            | Action::PublishInitialize { .. }
            | Action::Clone { .. }
            | Action::CloneWithoutLeader
            | Action::RemoveDataDirectory
            | Action::Fatal(_) => {
                if self.violation.is_none() {
                    self.violation = Some(Violation::Unexpected {
                        at: now,
                        member: me.clone(),
                        action: format!("{action:?}"),
                    });
                }
                (false, 1)
            }
        };
        if !done {
            if !ok && is_dcs_call(&action) {
                self.agents[i].dcs_failed = true;
            }
            actions.clear();
            self.log(format!("{me}: {action:?} not done: end of the list"));
        }
        self.agents[i].phase = Phase::Acting {
            view,
            actions,
            await_until: None,
        };
        let t = self.agents[i].token;
        self.schedule(took, Ev::Cycle(i, t));
    }

    fn end_cycle(&mut self, i: usize, had_view: bool) {
        let me = self.agents[i].name.clone();
        let holds = self.dcs.leader_alive(self.now) == Some(me.as_str());
        if had_view && !holds && !self.pgs[i].writable() {
            self.agents[i].wd_armed = false;
            self.agents[i].wd_kernel = false;
        }
        if self.pgs[i].writable() {
            self.agents[i].primary_start_began_ms = None;
        }
        if had_view && self.dcs_ok(i) {
            self.publish(i);
        }
        self.agents[i].phase = Phase::Idle;
        // As the runner: on a cadence from the cycle's start, a leader's last attempt in time
        // for its deadline.
        let next = ha::cadence::next_cycle(
            ha::cadence::Cycle {
                started_ms: self.agents[i].cycle_started_ms,
                ended_ms: self.now,
            },
            self.dynamic.loop_wait,
            self.deadline(i),
            self.agents[i].pre_renewal_ms,
        );
        self.agents[i].token += 1;
        let t = self.agents[i].token;
        self.schedule((next.at_ms - self.now).max(1), Ev::Cycle(i, t));
    }

    fn task_event(&mut self, i: usize, token: u64) {
        if token != self.agents[i].task_token || self.agents[i].task.is_none() {
            return;
        }
        if !self.agents[i].alive {
            return;
        }
        let d = self.agent_wait(i);
        if d > 0 {
            self.schedule(d, Ev::Task(i, token));
            return;
        }
        let (kind, action) = self.agents[i].task.take().expect("checked");
        let me = self.agents[i].name.clone();
        let mut failed = false;
        match action {
            Action::Start(StartAs::Primary) => {
                let was_primary = matches!(
                    self.pgs[i].state,
                    PgState::Stopped {
                        was_primary: true,
                        ..
                    }
                );
                if was_primary {
                    self.pgs[i].state = PgState::Running { primary: true };
                    self.pgs[i].upstream = None;
                    self.log(format!("{me}: started as primary"));
                    self.check_commits(i);
                } else {
                    // A replica's data directory started without standby.signal: PostgreSQL ends
                    // crash recovery on the timeline it was on (only the end of archive recovery
                    // picks a new one), so it writes a branch of its former leader's timeline.
                    self.start_replica_data_as_primary(i);
                }
            }
            Action::Start(StartAs::Replica { upstream }) => {
                self.pgs[i].state = PgState::Running { primary: false };
                self.pgs[i].receiver_after = self.now + self.rng.range(0, 3_000);
                self.pgs[i].upstream = upstream.map(|u| u.host);
                self.log(format!("{me}: started as replica"));
            }
            Action::Rewind(up) if up.host == REMOTE_HOST && self.remote.is_some() => {
                self.pgs[i].segs = self.remote.as_ref().expect("checked").segs.clone();
                self.pgs[i].checkpoint = (self.pgs[i].tl(), self.pgs[i].lsn());
                self.pgs[i].state = PgState::Running { primary: false };
                self.pgs[i].upstream = Some(up.host.clone());
                self.log(format!(
                    "{me}: rewound from the remote and started as replica"
                ));
            }
            Action::Rewind(up) => match self.index(&up.host) {
                Some(t) if self.link_ok(i, t) && self.pgs[t].running() => {
                    self.pgs[i].segs = self.pgs[t].segs.clone();
                    self.pgs[i].promoted = self.pgs[t].promoted.clone();
                    self.pgs[i].checkpoint = (self.pgs[i].tl(), self.pgs[i].lsn());
                    self.pgs[i].state = PgState::Running { primary: false };
                    self.pgs[i].upstream = Some(up.host.clone());
                    self.log(format!(
                        "{me}: rewound from {} and started as replica",
                        up.host
                    ));
                }
                _ => failed = true,
            },
            Action::CrashRecovery => {
                if let PgState::Stopped { was_primary, .. } = self.pgs[i].state {
                    self.pgs[i].state = PgState::Stopped {
                        clean: true,
                        was_primary,
                    };
                    self.pgs[i].checkpoint = (self.pgs[i].tl(), self.pgs[i].lsn());
                }
                self.log(format!("{me}: crash recovery done"));
            }
            _ => unreachable!("only these run in the background here"),
        }
        if failed {
            self.agents[i].failed_task = Some((kind, self.now));
            self.log(format!("{me}: {kind:?} failed"));
        } else {
            self.agents[i].failed_task = None;
        }
        // task_done wakes the loop.
        if matches!(self.agents[i].phase, Phase::Idle) {
            self.agents[i].token += 1;
            let t = self.agents[i].token;
            self.schedule(1, Ev::Cycle(i, t));
        }
    }

    fn guard_event(&mut self, i: usize, deadline: u64) {
        let d = self.agent_wait(i);
        if self.agents[i].alive && d > 0 {
            // The guard is a task of the frozen process: its timer fires on the thaw, racing the
            // loop's own next step.
            self.schedule(d, Ev::Guard(i, deadline));
            return;
        }
        let a = &self.agents[i];
        if !a.alive || self.deadline(i) != Some(deadline) {
            return;
        }
        if self.dynamic.failsafe_mode {
            // The runner's guard leaves the deadline to the loop in failsafe mode: the loop's
            // failsafe round may keep the primary (see `deadline_guard`).
            return;
        }
        if self.pgs[i].running() && a.may_write {
            self.lapse(i);
            self.stop_pg(i, StopMode::Immediate, "deadline guard");
        }
    }

    // ---------------------------------------------------------------- replication, clients

    /// Releases commits waiting on `i` whose `synchronous_standby_names` is now satisfied.
    fn release_waiters(&mut self, i: usize) {
        if self.pending[i].is_empty() {
            return;
        }
        let guc = self.pgs[i].guc.clone();
        let standbys = self.standbys(i);
        let parsed = ha::sync::parse_guc(&guc);
        let pending = std::mem::take(&mut self.pending[i]);
        let mut keep = vec![];
        for (branch, lsn) in pending {
            let has = |name: &str| {
                self.index(name)
                    .is_some_and(|j| self.pgs[j].contains(branch, lsn))
            };
            let ok = match &parsed {
                Some((0, _)) => true,
                None => standbys.iter().any(|s| has(&s.name)),
                Some((n, _)) => {
                    let voters: Vec<&ha::sync::Standby> = standbys
                        .iter()
                        .filter(|s| s.sync_state == "sync" || s.sync_state == "quorum")
                        .collect();
                    voters.len() as u32 >= *n
                        && voters.iter().filter(|s| has(&s.name)).count() as u32 >= *n
                }
            };
            if ok {
                let sync_active = self.dcs.sync.is_some();
                self.acked.push(Commit {
                    member: self.agents[i].name.clone(),
                    branch,
                    lsn,
                    sync_active,
                });
            } else {
                keep.push((branch, lsn));
            }
        }
        self.pending[i] = keep;
    }

    fn tick(&mut self) {
        let n = self.n();
        if let Some(m) = self
            .stepped_down
            .as_ref()
            .filter(|sd| !sd.disturbed)
            .and_then(|sd| self.index(&sd.member))
        {
            if !self.stepped_down_available(m) {
                self.stepped_down.as_mut().expect("checked").disturbed = true;
            }
        }
        for j in 0..n {
            let PgState::Running { primary: false } = self.pgs[j].state else {
                continue;
            };
            if self.host_frozen(j) {
                continue;
            }
            if self.follows_remote(j) {
                self.stream_from_remote(j);
                continue;
            }
            let up = self.pgs[j].upstream.clone().and_then(|u| self.index(&u));
            let streaming = up.filter(|&u| {
                u != j
                    && self.now >= self.pgs[j].receiver_after
                    && self.link_ok(j, u)
                    && self.pgs[u].running()
                    && self.pgs[j].can_follow(&self.pgs[u])
            });
            self.pgs[j].streaming_from = streaming.map(|u| self.agents[u].name.clone());
            if let Some(u) = streaming {
                if self.rng.chance(80) {
                    self.pgs[j].segs = self.pgs[u].segs.clone();
                }
            }
        }
        for i in 0..n {
            if self.accepts_writes(i) {
                self.release_waiters(i);
            }
            if self.pgs[i].running() && self.rng.chance(5) {
                let pg = &mut self.pgs[i];
                pg.checkpoint = (pg.tl(), pg.lsn());
            }
            // The watchdog fires when not fed in time (also while the agent is frozen or dead).
            let a = &self.agents[i];
            if a.wd_kernel && !self.host_frozen(i) {
                let timeout = u64::from(self.dynamic.ttl.saturating_sub(SAFETY_MARGIN_SECS)) * 1000;
                if self.now >= a.wd_fed + timeout {
                    self.log(format!("{}: watchdog fired: node reset", a.name));
                    self.stop_pg(i, StopMode::Immediate, "watchdog");
                    self.agents[i].wd_kernel = false;
                    self.restart_agent(i);
                }
            }
        }
        // Lease expiry of the leader key wakes the watchers.
        let leader = self.dcs.leader_alive(self.now).map(str::to_string);
        if leader != self.last_leader {
            if leader.is_none() && self.dcs.leader.is_some() {
                self.log("leader key expired".into());
                self.dcs.leader = None;
                self.wake_watchers();
            }
            self.last_leader = leader;
        }
        self.schedule(100, Ev::Tick);
    }

    fn restart_agent(&mut self, i: usize) {
        let a = &mut self.agents[i];
        a.alive = true;
        a.frozen_until = 0;
        a.token += 1;
        a.phase = Phase::Idle;
        a.lock_renewed_ms = None;
        a.proxies_wait_since = None;
        a.sync_catchup_lsn = 0;
        if a.task.take().is_some() {
            // The task's process died with the node or the agent.
            a.task_token += 1;
        }
        a.failed_task = None;
        a.primary_start_began_ms = None;
        a.unfenced = None;
        a.wd_armed = false;
        a.last_view = None;
        a.failsafe_active = false;
        a.dcs_failed = false;
        a.failsafe_asked_ms = None;
        if !self.opts.failsafe_record {
            a.failsafe_accepted_ms = None;
        }
        a.pause = PauseView::default();
        a.renewals_lapsed_ms = None;
        a.lapsed_lock_failures = 0;
        let t = a.token;
        let d = self.rng.range(500, 3000);
        self.schedule(d, Ev::Cycle(i, t));
    }

    fn client(&mut self) {
        let np = self.proxies.len();
        let n = self.n();
        // The remote's own clients: its WAL grows; this cluster's clients may only read.
        let step = if self.remote.is_some() {
            self.rng.range(8, 400)
        } else {
            0
        };
        if let Some(r) = self.remote.as_mut() {
            r.segs.last_mut().expect("wal").end += step;
        }
        let k = self.rng.pick(np + n);
        let target = if k < np {
            let p = &self.proxies[k];
            if p.suspended {
                None
            } else {
                p.routed
                    .as_deref()
                    .and_then(|m| self.index(m))
                    .filter(|&m| !self.cut_proxy_member[k][m])
            }
        } else {
            Some(k - np)
        };
        if let Some(m) = target {
            if self.accepts_writes(m) {
                let step = self.rng.range(8, 400);
                let seg = self.pgs[m].segs.last_mut().expect("wal");
                seg.end += step;
                let (branch, lsn) = (seg.branch, seg.end);
                self.pending[m].push((branch, lsn));
                self.release_waiters(m);
            }
        }
        let d = self.rng.range(20, 300);
        self.schedule(d, Ev::Client);
    }

    // ---------------------------------------------------------------- proxies

    fn proxy_tick(&mut self, p: usize) {
        let ttl = self.dynamic.ttl;
        let deadline = ProxyState::contact_deadline_within(ttl, None).as_millis() as u64;
        let now = self.now;
        let ok = !self.dcs.down && !self.cut_proxy_dcs[p];
        // While an acknowledgement is written (and confirmed), the proxy's loop waits for it: it
        // neither routes nor heartbeats on the side. (Routing the former acknowledgement again
        // meanwhile, as this mirror once did, let seed 8889 route writes to pg0 while the write in
        // flight then put "no leader" in the proxy's key.)
        if ok && self.proxies[p].acking.is_none() {
            let view = self.dcs.view(now);
            let wanted = praetor_proxy::topology_from_cluster(&view)
                .leader
                .map(|b| b.member().to_string());
            let id = self.proxies[p].id.clone();
            let px = &mut self.proxies[p];
            if px.acked.as_ref() != Some(&wanted) {
                // Steps 1-2: stop routing to the former leader and close its connections
                // (instantly here: no sessions are modelled), then write the acknowledgement.
                if px.routed.is_some() && px.routed != wanted {
                    px.routed = None;
                    self.log(format!("proxy{p}: fenced {:?}", self.proxies[p].acked));
                }
                self.proxies[p].acking = Some(wanted);
                let d = self.latency();
                self.schedule(d, Ev::ProxyAck(p));
            } else if px.routed != wanted && !px.suspended {
                // The acknowledged route is the DCS's again (a failed acknowledgement left the
                // proxy unrouted): route it, as the proxy's loop re-applies its topology.
                px.routed = wanted.clone();
                self.log(format!("proxy{p}: routes writes to {wanted:?} again"));
            } else if now >= px.last_ok + praetor_proxy::heartbeat_interval(ttl).as_millis() as u64
            {
                px.last_ok = now;
                let leader = px.acked.clone().flatten();
                self.dcs.proxies.insert(
                    id,
                    (
                        ProxyState {
                            leader,
                            since: None,
                        },
                        now + u64::from(ttl) * 1000,
                    ),
                );
            }
        }
        let px = &mut self.proxies[p];
        if now >= px.last_ok + deadline && !px.suspended {
            px.suspended = true;
            px.routed = None;
            px.acked = None;
            self.log(format!("proxy{p}: no DCS contact: stopped serving"));
        }
        let d = self.rng.range(100, 700);
        self.schedule(d, Ev::ProxyTick(p));
    }

    /// Step 3 and 4 of the proxy's handshake: the acknowledgement reaches the DCS (when the proxy
    /// can still reach it), and only once the write returned does the proxy route writes to the
    /// acknowledged leader. A lost reply leaves the key written and the proxy unrouted: it
    /// acknowledges again at its next tick, as the real proxy retries every 500 ms.
    fn proxy_ack(&mut self, p: usize) {
        let Some(wanted) = self.proxies[p].acking.take() else {
            return;
        };
        if self.dcs.down || self.cut_proxy_dcs[p] {
            // As the proxy: after a failed write nothing counts as acknowledged.
            self.proxies[p].acked = None;
            self.log(format!("proxy{p}: acknowledgement of {wanted:?} failed"));
            return;
        }
        let ttl = self.dynamic.ttl;
        let now = self.now;
        let id = self.proxies[p].id.clone();
        self.dcs.proxies.insert(
            id,
            (
                ProxyState {
                    leader: wanted.clone(),
                    since: None,
                },
                now + u64::from(ttl) * 1000,
            ),
        );
        if self.rng.chance(2) && self.healed_at.is_none() {
            // The write landed but the proxy saw an error: what the key holds is unknown to it, so
            // nothing counts as acknowledged (keeping the former acknowledgement let the proxy
            // route it again while the key named another route).
            self.proxies[p].acked = None;
            self.log(format!("proxy{p}: acknowledged {wanted:?}, reply lost"));
            return;
        }
        if self.opts.confirm_routes && wanted.is_some() {
            // Step 3b: read the DCS again before routing (a round trip).
            let px = &mut self.proxies[p];
            px.acking = Some(wanted);
            px.acked_at = Some(now);
            let d = self.latency();
            self.schedule(d, Ev::ProxyConfirm(p));
            return;
        }
        self.route_acked(p, wanted, now);
    }

    /// Step 4: the acknowledgement of `wanted`, written at `written`, is in force: route it.
    fn route_acked(&mut self, p: usize, wanted: Option<String>, written: u64) {
        let px = &mut self.proxies[p];
        px.acked = Some(wanted.clone());
        px.routed = wanted.clone();
        px.suspended = false;
        px.last_ok = written;
        self.log(format!("proxy{p}: routes writes to {wanted:?}"));
    }

    /// Step 3b of the proxy's handshake: the read after the acknowledgement returns. The route is
    /// taken only if the lock is still its leader's ([`praetor_proxy::route_confirmed`]); else, as
    /// after a failed write, nothing counts as acknowledged and the next tick acknowledges again
    /// (the write itself succeeded: it counts as DCS contact).
    fn proxy_confirm(&mut self, p: usize) {
        let (Some(wanted), Some(written)) = (
            self.proxies[p].acking.take(),
            self.proxies[p].acked_at.take(),
        ) else {
            return;
        };
        let now = self.now;
        let reachable = !self.dcs.down && !self.cut_proxy_dcs[p];
        if reachable && praetor_proxy::route_confirmed(&self.dcs.view(now), wanted.as_deref()) {
            return self.route_acked(p, wanted, written);
        }
        let px = &mut self.proxies[p];
        px.acked = None;
        px.last_ok = px.last_ok.max(written);
        self.log(format!(
            "proxy{p}: acknowledged {wanted:?}, not confirmed (lock {:?}): not routing it",
            reachable.then(|| self.dcs.leader_alive(now).map(str::to_string))
        ));
    }

    // ---------------------------------------------------------------- faults

    fn draw_fault(&mut self) -> Fault {
        let n = self.n();
        let np = self.proxies.len();
        let m = self.rng.pick(n);
        let other = (m + 1 + self.rng.pick(n - 1)) % n;
        match self.rng.pick(10) {
            0 => Fault::CrashPg(m),
            1 => Fault::KillAgent(m),
            2 if self.rng.chance(50) => Fault::FreezeHost(m, self.rng.range(2_000, 60_000)),
            2 => Fault::Freeze(m, self.rng.range(2_000, 60_000)),
            3 => Fault::CutDcs(m),
            4 => Fault::DcsDown,
            5 => Fault::CutLink(m, other),
            6 => Fault::CutProxyDcs(self.rng.pick(np)),
            7 => Fault::CutProxyMember(self.rng.pick(np), m),
            8 => Fault::Switchover(self.rng.chance(50).then_some(other)),
            _ => Fault::Freeze(
                self.leader_index().unwrap_or(m),
                self.rng.range(5_000, 60_000),
            ),
        }
    }

    fn leader_index(&self) -> Option<usize> {
        self.dcs.leader_alive(self.now).and_then(|l| self.index(l))
    }

    fn fault(&mut self) {
        if self.now >= self.faults_until {
            return;
        }
        let f = self.draw_fault();
        self.log(format!("FAULT {f:?}"));
        match f {
            Fault::CrashPg(m) => self.stop_pg(m, StopMode::Immediate, "crash"),
            Fault::KillAgent(m) => {
                self.agents[m].alive = false;
            }
            Fault::FreezeHost(m, d) => {
                let until = self.agents[m].frozen_until.max(self.now + d);
                self.agents[m].frozen_until = until;
                self.host_frozen_until[m] = until;
                self.schedule(until - self.now, Ev::Thaw(m));
            }
            Fault::Freeze(m, d) => {
                self.agents[m].frozen_until = self.agents[m].frozen_until.max(self.now + d);
            }
            Fault::CutDcs(m) => self.cut_dcs[m] = true,
            Fault::DcsDown => {
                self.dcs.down = true;
                self.dcs.quorum_lost_at.get_or_insert(self.now);
            }
            Fault::CutLink(a, b) => {
                self.cut_link[a][b] = true;
                self.cut_link[b][a] = true;
            }
            Fault::CutProxyDcs(p) => self.cut_proxy_dcs[p] = true,
            Fault::CutProxyMember(p, m) => self.cut_proxy_member[p][m] = true,
            Fault::Switchover(None) if self.paused_since.is_some() => {
                // The API refuses it: "Switchover is possible only to a specific candidate in a
                // paused state".
                self.log("switchover without a candidate refused: paused".into());
            }
            Fault::Switchover(candidate) => {
                if let Some(c) = candidate.filter(|_| self.rng.chance(50)) {
                    // Right before the request, the candidate's WAL receiver restarts (a restart
                    // of its PostgreSQL, a network blip): tests/ha_rules.rs races the same way.
                    self.pgs[c].streaming_from = None;
                    self.pgs[c].receiver_after = self.now + self.rng.range(200, 5_000);
                    let name = self.agents[c].name.clone();
                    self.log(format!("{name}: WAL receiver restarts"));
                }
                if let Some(l) = self.dcs.leader_alive(self.now).map(str::to_string) {
                    let v = self.dcs.bump();
                    self.dcs.failover = Some(Versioned {
                        value: Failover {
                            leader: Some(l),
                            member: candidate.map(|c| self.agents[c].name.clone()),
                            scheduled_at: None,
                        },
                        version: v,
                    });
                    self.wake_watchers();
                }
            }
        }
        // Most faults heal on their own before the global heal.
        if self.rng.chance(60) {
            let d = self.rng.range(1_000, 40_000);
            self.schedule(d, Ev::HealFault(f));
        }
        let d = self.rng.range(2_000, 30_000);
        self.schedule(d, Ev::Fault);
    }

    /// A fault that heals on its own before the global heal.
    fn heal_fault(&mut self, f: Fault) {
        if self.healed_at.is_some() {
            return;
        }
        self.log(format!("heals: {f:?}"));
        match f {
            Fault::KillAgent(m) if !self.agents[m].alive => self.restart_agent(m),
            Fault::CutDcs(m) => self.cut_dcs[m] = false,
            Fault::DcsDown => {
                let (now, ttl) = (self.now, self.ttl_ms());
                self.dcs.quorum_back(now, ttl, self.opts.lease_refresh);
            }
            Fault::CutLink(a, b) => {
                self.cut_link[a][b] = false;
                self.cut_link[b][a] = false;
            }
            Fault::CutProxyDcs(p) => self.cut_proxy_dcs[p] = false,
            Fault::CutProxyMember(p, m) => self.cut_proxy_member[p][m] = false,
            _ => {}
        }
    }

    /// A frozen host runs again. Modelled as the best case: the kernel's watchdog, then the agent's
    /// deadline guard, act before any PostgreSQL backend runs (the window a loaded host leaves is
    /// measured by `cargo bench --bench scenarios`, not here).
    fn thaw_host(&mut self, m: usize) {
        if !self.host_frozen(m) || self.host_frozen_until[m] > self.now {
            return;
        }
        self.host_frozen_until[m] = 0;
        self.log(format!("{}: host thawed", self.agents[m].name));
        let timeout = u64::from(self.dynamic.ttl.saturating_sub(SAFETY_MARGIN_SECS)) * 1000;
        if self.agents[m].wd_kernel && self.now >= self.agents[m].wd_fed + timeout {
            self.log(format!(
                "{}: watchdog fired on the thaw: node reset",
                self.agents[m].name
            ));
            self.stop_pg(m, StopMode::Immediate, "watchdog");
            self.agents[m].wd_kernel = false;
            self.restart_agent(m);
            return;
        }
        if self.deadline(m).is_some_and(|d| self.now >= d)
            && self.pgs[m].running()
            && self.agents[m].may_write
            && !self.dynamic.failsafe_mode
        {
            self.lapse(m);
            self.stop_pg(m, StopMode::Immediate, "deadline guard on the thaw");
        }
    }

    fn heal(&mut self) {
        self.log("HEAL: every fault heals".into());
        let (now, ttl) = (self.now, self.ttl_ms());
        self.dcs.quorum_back(now, ttl, self.opts.lease_refresh);
        for i in 0..self.n() {
            self.cut_dcs[i] = false;
            for j in 0..self.n() {
                self.cut_link[i][j] = false;
            }
            if !self.agents[i].alive {
                self.restart_agent(i);
            }
            if self.host_frozen(i) {
                self.host_frozen_until[i] = self.now;
                self.thaw_host(i);
            }
            if self.agents[i].frozen_until > self.now {
                // Thawed now: its pending steps were postponed to the end of the freeze.
                self.agents[i].frozen_until = self.now;
                self.agents[i].token += 1;
                let t = self.agents[i].token;
                self.schedule(1, Ev::Cycle(i, t));
                if self.agents[i].task.is_some() {
                    let t = self.agents[i].task_token;
                    self.schedule(1, Ev::Task(i, t));
                }
                if let Some(d) = self.deadline(i) {
                    self.schedule(d.saturating_sub(self.now).max(1), Ev::Guard(i, d));
                }
            }
        }
        for p in 0..self.proxies.len() {
            self.cut_proxy_dcs[p] = false;
            for m in 0..self.n() {
                self.cut_proxy_member[p][m] = false;
            }
        }
        self.healed_at = Some(self.now);
    }

    // ---------------------------------------------------------------- standby cluster

    /// Turns this seed's cluster into a standby cluster of a remote primary at [`REMOTE_HOST`]:
    /// the `standby_cluster` section in the dynamic configuration (and the DCS `config` key),
    /// every member a replica, the first the standby leader streaming from the remote (no
    /// watchdog: a standby leader arms none), the proxies routing no writes, no
    /// `synchronous_mode`.
    fn make_standby_cluster(&mut self) {
        self.dynamic.standby_cluster = Some(StandbyCluster {
            host: Some(REMOTE_HOST.into()),
            port: Some(5432),
            ..StandbyCluster::default()
        });
        self.dynamic.synchronous_mode = SyncMode::Off;
        self.dynamic.synchronous_mode_strict = false;
        if let Some(c) = self.dcs.config.as_mut() {
            c.value["standby_cluster"] = serde_json::json!({"host": REMOTE_HOST, "port": 5432});
        }
        let mut remote = self.pgs[0].clone();
        remote.upstream = None;
        self.remote = Some(remote);
        for i in 0..self.n() {
            self.pgs[i].state = PgState::Running { primary: false };
            self.agents[i].wd_armed = false;
            self.agents[i].wd_kernel = false;
            self.agents[i].may_write = false;
        }
        self.pgs[0].upstream = Some(REMOTE_HOST.into());
        for p in 0..self.proxies.len() {
            self.proxies[p].routed = None;
            self.proxies[p].acked = Some(None);
        }
        for (_, (ps, _)) in self.dcs.proxies.iter_mut() {
            ps.leader = None;
        }
        for i in 0..self.n() {
            self.publish(i);
        }
    }

    /// Member `i`'s PostgreSQL is a running replica told to follow the remote.
    fn follows_remote(&self, i: usize) -> bool {
        self.remote.is_some()
            && self.pgs[i].state == PgState::Running { primary: false }
            && self.pgs[i].upstream.as_deref() == Some(REMOTE_HOST)
    }

    /// A replica of the remote streams from it this tick when its WAL is a prefix of the
    /// remote's (the remote is never cut off or frozen: faults are this cluster's).
    fn stream_from_remote(&mut self, j: usize) {
        let remote = self.remote.as_ref().expect("a standby cluster");
        let streaming = self.now >= self.pgs[j].receiver_after && self.pgs[j].can_follow(remote);
        let segs = remote.segs.clone();
        self.pgs[j].streaming_from = streaming.then(|| REMOTE_HOST.to_string());
        if streaming && self.rng.chance(80) {
            self.pgs[j].segs = segs;
        }
    }

    /// [`Violation::WritableInStandbyCluster`].
    fn check_standby_cluster(&mut self) {
        if self.remote.is_none() {
            return;
        }
        let what = (0..self.n())
            .find(|&i| self.accepts_writes(i))
            .map(|i| format!("{} accepts writes", self.agents[i].name))
            .or_else(|| {
                self.proxies
                    .iter()
                    .find(|p| p.routed.is_some())
                    .map(|p| format!("{} routes writes to {:?}", p.id, p.routed))
            });
        if let Some(what) = what {
            self.violation = Some(Violation::WritableInStandbyCluster { at: self.now, what });
        }
    }

    // ---------------------------------------------------------------- short DCS outages

    /// The longest short outage drawn (ms): the leader's demotion window
    /// ([`ha::demote_window_ms`], with the watchdog's timeout when one is armed) less `loop_wait`
    /// (the window runs from the renewal before the outage, a cycle earlier) and
    /// [`BLIP_MARGIN_MS`]. README's "shorter than `retry_timeout`" is this bound when the watchdog
    /// leaves `loop_wait + retry_timeout` whole; a tighter watchdog (`ttl - safety_margin - 1 s`
    /// below it: `ttl` 15, `loop_wait` 5, `retry_timeout` 5 here) shortens it.
    fn blip_hold_max_ms(&self) -> u64 {
        let wd = self
            .opts
            .watchdog
            .then(|| self.dynamic.ttl.saturating_sub(SAFETY_MARGIN_SECS));
        (ha::demote_window_ms(&self.dynamic, wd) - u64::from(self.dynamic.loop_wait) * 1000)
            .saturating_sub(BLIP_MARGIN_MS)
            .max(BLIP_MIN_MS)
    }

    /// How long after the thaw a short outage is checked (ms): `loop_wait + retry_timeout + 1 s`,
    /// past the demotion deadline of any renewal made before it (the nemesis's window).
    fn blip_window_ms(&self) -> u64 {
        u64::from(self.dynamic.loop_wait + self.dynamic.retry_timeout) * 1000 + 1_000
    }

    /// A short outage begins: the DCS freezes for `hold` ms. It is checked when it begins under a
    /// routed, writable leader holding the lock with no switchover request pending and no other
    /// member writable (else it is drawn but not checked: its disturbance could be another's).
    fn blip(&mut self, hold: u64) {
        if self.dcs.down {
            return;
        }
        self.blips += 1;
        let leader = self.leader_index().filter(|&l| {
            self.accepts_writes(l)
                && self.dcs.failover.is_none()
                && (0..self.n()).all(|j| j == l || !self.accepts_writes(j))
        });
        let proxies: Vec<usize> = leader.map_or_else(Vec::new, |l| {
            (0..self.proxies.len())
                .filter(|&p| {
                    !self.proxies[p].suspended
                        && self.proxies[p].routed.as_deref() == Some(self.agents[l].name.as_str())
                })
                .collect()
        });
        let thaw = self.now + hold;
        let until = thaw + self.blip_window_ms();
        match leader.filter(|_| !proxies.is_empty()) {
            Some(l) => {
                self.blips_checked += 1;
                self.blip_check = Some(BlipCheck {
                    leader: l,
                    outage: (self.now, thaw),
                    until,
                    promotions: self.promotions,
                    proxies,
                });
                self.log(format!("DCS FROZEN for {hold} ms under leader {}", self.agents[l].name));
            }
            None => self.log(format!(
                "DCS FROZEN for {hold} ms (not checked: no routed leader alone, or a switchover pending)"
            )),
        }
        self.dcs.down = true;
        self.blip_until = Some(thaw);
        self.schedule(hold, Ev::BlipEnd);
    }

    fn blip_end(&mut self) {
        self.dcs.down = false;
        self.blip_until = None;
        self.log("DCS thawed".into());
    }

    /// When a DCS call member `i` sends now is answered: at the thaw of a frozen DCS that comes
    /// within the call's bound ([`Sim::dcs_timeout`]); `None` when the DCS answers now or the
    /// call fails at its bound. In the weakened world (`leader_waits_out_blips` off) a writable
    /// member stops its PostgreSQL at once instead of waiting.
    fn wait_for_thaw(&mut self, i: usize) -> Option<u64> {
        let thaw = self
            .blip_until
            .filter(|_| self.dcs.down && !self.cut_dcs[i])?;
        if !self.opts.leader_waits_out_blips && self.agents[i].may_write && self.pgs[i].running() {
            self.stop_pg(
                i,
                StopMode::Immediate,
                "weakened world: demotes at the first failed DCS call",
            );
        }
        (thaw <= self.now + self.dcs_timeout(i)).then_some(thaw)
    }

    /// [`Violation::LeaderDisturbedByShortOutage`].
    fn check_blip(&mut self) {
        let Some(bc) = self.blip_check.as_ref() else {
            return;
        };
        if self.now > bc.until {
            self.blip_check = None;
            return;
        }
        let l = bc.leader;
        let name = self.agents[l].name.clone();
        let what = if !self.accepts_writes(l) {
            Some("it stopped accepting writes".to_string())
        } else if self.dcs.leader_alive(self.now) != Some(name.as_str()) {
            Some("it lost the leader lock".to_string())
        } else if self.promotions > bc.promotions {
            Some("another member promoted".to_string())
        } else {
            bc.proxies
                .iter()
                .find(|&&p| self.proxies[p].routed.as_deref() != Some(name.as_str()))
                .map(|&p| format!("{} stopped routing writes to it", self.proxies[p].id))
        };
        if let Some(what) = what {
            self.violation = Some(Violation::LeaderDisturbedByShortOutage {
                at: self.now,
                leader: name,
                outage: bc.outage,
                what,
            });
        }
    }

    // ---------------------------------------------------------------- invariants

    fn check(&mut self) {
        if self.violation.is_some() {
            return;
        }
        self.check_blip();
        if self.violation.is_some() {
            return;
        }
        let writable: Vec<String> = (0..self.n())
            .filter(|&i| self.accepts_writes(i))
            .map(|i| self.agents[i].name.clone())
            .collect();
        if writable.len() > 1 {
            self.violation = Some(Violation::TwoWritable {
                at: self.now,
                members: writable,
            });
            return;
        }
        self.check_standby_cluster();
        if self.violation.is_some() {
            return;
        }
        if let Some(h) = self.healed_at.filter(|_| self.paused_since.is_none()) {
            if !self.leader_seen_after_heal {
                let leader = self.dcs.leader_alive(self.now).map(str::to_string);
                // A standby cluster has recovered once a lock holder streams from the remote
                // (there are no writes to route); any other, once a proxy routes to a writable one.
                let routed = self.remote.is_some()
                    && leader
                        .as_deref()
                        .and_then(|l| self.index(l))
                        .is_some_and(|l| {
                            self.follows_remote(l) && self.pgs[l].streaming_from.is_some()
                        })
                    || self.proxies.iter().any(|p| {
                        !p.suspended
                            && p.routed.is_some()
                            && p.routed == leader
                            && p.routed
                                .as_deref()
                                .and_then(|m| self.index(m))
                                .is_some_and(|m| self.accepts_writes(m))
                    });
                if routed {
                    self.leader_seen_after_heal = true;
                    let from = h.max(self.resumed_at);
                    self.recovered_ms = Some(self.now - from);
                    self.log(format!(
                        "writable leader {leader:?} routed {} ms after the heal (or resume)",
                        self.now - from
                    ));
                } else if self.now > self.liveness_start(h) + self.liveness_window() {
                    self.violation = Some(Violation::NoLeaderAfterHeal {
                        healed_at: h,
                        deadline: self.liveness_start(h) + self.liveness_window(),
                    });
                }
            }
        }
    }

    fn run(mut self) -> Report {
        while let Some(Reverse((at, seq))) = self.queue.pop() {
            if at > self.end || self.violation.is_some() {
                break;
            }
            self.now = at;
            self.nevents += 1;
            let ev = self.events.remove(&seq).expect("event");
            match ev {
                Ev::Cycle(i, t) => self.cycle_event(i, t),
                Ev::Task(i, t) => self.task_event(i, t),
                Ev::Guard(i, d) => self.guard_event(i, d),
                Ev::Tick => self.tick(),
                Ev::ProxyTick(p) => self.proxy_tick(p),
                Ev::ProxyAck(p) => self.proxy_ack(p),
                Ev::ProxyConfirm(p) => self.proxy_confirm(p),
                Ev::Client => self.client(),
                Ev::Fault => self.fault(),
                Ev::HealFault(f) => self.heal_fault(f),
                Ev::Heal => self.heal(),
                Ev::Thaw(m) => self.thaw_host(m),
                Ev::Pause(on) => {
                    self.pause_wanted = Some(on);
                    self.set_pause();
                }
                Ev::PauseRetry => self.set_pause(),
                Ev::Blip(hold) => self.blip(hold),
                Ev::BlipEnd => self.blip_end(),
            }
            self.check();
        }
        if let Some(v) = &self.violation {
            let line = format!("VIOLATION {v:?}");
            self.log(line);
        }
        Report {
            seed: self.seed,
            violation: self.violation.clone(),
            trace: self.trace.into_iter().collect(),
            acked: self.acked.len(),
            promotions: self.promotions,
            events: self.nevents,
            recovered_ms: self.recovered_ms,
            bound_ms: u64::from(self.dynamic.ttl + self.dynamic.loop_wait) * 1000,
            switchovers: self.switchovers,
            switchover_fallbacks: self.switchover_fallbacks,
            pauses: self.pauses,
            promotions_while_paused: self.promotions_while_paused,
            blips: self.blips,
            blips_checked: self.blips_checked,
            standby_cluster: self.remote.is_some(),
            promotions_before_switchover: self.promotions_before_switchover,
            recovery_handovers: self.recovery_handovers,
            lapse_releases: self.lapse_releases,
            lapse_session_drops: self.lapse_session_drops,
            won_past_holding_off: self.won_past_holding_off,
        }
    }
}

/// The maintenance-mode episodes of `seed` ((pause, resume) in ms), none in three seeds of four:
/// 1-3 episodes of 5-120 s, 5-60 s apart, from 5 s on, all starting before the faults end
/// (`faults_until`), the last resume at most 10 s after it. A generator of its own, so that the
/// other draws of a seed do not change.
fn pause_episodes(seed: u64, faults_until: u64) -> Vec<(u64, u64)> {
    let mut rng = Rng::new(seed ^ 0x9A05_E0FF);
    if !rng.chance(25) {
        return vec![];
    }
    let mut out = vec![];
    let mut at = rng.range(5_000, 60_000);
    for _ in 0..1 + rng.pick(3) {
        if at >= faults_until {
            break;
        }
        let resume = (at + rng.range(5_000, 120_000)).min(faults_until + 10_000);
        out.push((at, resume));
        at = resume + rng.range(5_000, 60_000);
    }
    out
}

/// The host of a standby cluster's remote primary ([`Options::standby`]).
pub const REMOTE_HOST: &str = "remote";

/// Whether `seed` draws a standby cluster ([`Options::standby`]): one seed in eight, from a
/// generator of its own.
fn standby_cluster(seed: u64) -> bool {
    Rng::new(seed ^ 0x57A4_DB7C).chance(12)
}

/// The shortest short DCS outage drawn (ms): long enough that a DCS call of a running cycle may
/// land in it (the nemesis's `fault::BLIP_MIN_MS`).
pub const BLIP_MIN_MS: u64 = 200;

/// How much shorter than what the leader's demotion window leaves a short DCS outage is at most
/// (ms): the margin for a cycle's own calls between two renewals (derived in the docstring of the
/// nemesis's `fault::BLIP_MARGIN`, the same 500 ms). Latencies stay at 1-40 ms during a checked
/// outage's window.
pub const BLIP_MARGIN_MS: u64 = 500;

/// The short DCS outages of `seed` ((start, hold) in ms), none in two seeds of three: 1-3 of
/// [`BLIP_MIN_MS`] to `hold_max` ms, the first 0-10 s after `after` (the heal plus the liveness
/// window and 10 s: the cluster recovered, every other fault over), each next one 1-10 s after the
/// previous one's check `window` ended. A generator of its own, so that the other draws of a
/// seed do not change.
fn dcs_blips(seed: u64, after: u64, hold_max: u64, window: u64) -> Vec<(u64, u64)> {
    let mut rng = Rng::new(seed ^ 0xB11F_D0C5);
    if !rng.chance(33) {
        return vec![];
    }
    let mut out = vec![];
    let mut at = after + rng.range(0, 10_000);
    for _ in 0..1 + rng.pick(3) {
        let hold = rng.range(BLIP_MIN_MS, hold_max.max(BLIP_MIN_MS));
        out.push((at, hold));
        at += hold + window + rng.range(1_000, 10_000);
    }
    out
}

/// The actions that are DCS calls (a failure while the DCS is unreachable marks the cycle's DCS
/// call as failed, for the next cycle's failsafe round).
fn is_dcs_call(a: &Action) -> bool {
    matches!(
        a,
        Action::AcquireLeader
            | Action::RenewLeader
            | Action::ReleaseLeader
            | Action::DropDcsSession
            | Action::WriteSync(_)
            | Action::WriteStatus
            | Action::WriteLastLsn
            | Action::UpdateHistory
            | Action::ClearFailover(_)
            | Action::WriteFailsafe(_)
    )
}

/// Runs one seed. With `trace`, the report holds every event; otherwise the last few hundred.
pub fn run_seed(seed: u64, trace: bool) -> Report {
    Sim::new(seed, trace, Options::default()).run()
}

/// Runs one seed with `opts` (see [`Options`]).
pub fn run_seed_with(seed: u64, trace: bool, opts: Options) -> Report {
    Sim::new(seed, trace, opts).run()
}

/// Formats a failing report: the violation, the trace, and the command that replays it.
pub fn explain(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "seed {} violated an invariant: {:?}",
        r.seed, r.violation
    );
    for l in &r.trace {
        let _ = writeln!(s, "{l}");
    }
    let _ = writeln!(
        s,
        "replay: cargo run --release -p praetor-sim -- --seed {} --trace",
        r.seed
    );
    s
}
