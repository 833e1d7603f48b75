//! The faults a nemesis run draws from, and the seeded plan of which ones, against whom, held how
//! long. Pure: the plan is a function of the seed and the options, so a seed replays the same
//! faults (the cluster's reaction to them is real and may differ run to run).
//!
//! The host faults (freeze, kill, PostgreSQL crash), the DCS faults, the proxy restart and the
//! planned switchover work on the loopback harness; the network faults (silence, partition, one-way
//! partition, slow or lossy link) and the replication-link faults (a replica's stream from the
//! leader slowed, made lossy or cut, through a relay the leader's host redirects it to) need hosts
//! of their own (network namespaces) and are drawn only when the runner is given a
//! [`NetworkFaults`] that can apply them.

use std::fmt;
use std::time::Duration;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// A host's agent, postmaster and backends SIGSTOPped (a hung VM), then SIGCONTed.
    Freeze,
    /// A host dies: agent and postmaster SIGKILLed together; the agent is started again at the
    /// heal.
    Kill,
    /// PostgreSQL crashes (postmaster and children SIGKILLed); the agent, still running, restarts
    /// or fails over.
    PostgresCrash,
    /// One DCS member stopped (the DCS keeps its quorum), started again at the heal.
    DcsMemberStop,
    /// Two of the three DCS members stopped (the DCS loses its quorum), started again at the heal.
    DcsQuorumLoss,
    /// The proxy SIGKILLed and started again on the same ports.
    ProxyRestart,
    /// A host cut off from every other host and client (needs [`NetworkFaults`]).
    Silence,
    /// The hosts split into two sets that cannot reach each other (needs [`NetworkFaults`]).
    Partition,
    /// Packets from one set of hosts to the other dropped, the other way delivered (needs
    /// [`NetworkFaults`]).
    OneWayPartition,
    /// A host's link delayed and lossy (needs [`NetworkFaults`]).
    SlowLink,
    /// A replica's replication link to the leader delayed by [`REPLICATION_DELAY_MS`] each way
    /// (needs hosts of their own: the link goes through a relay in the leader's host).
    ReplicationSlow,
    /// A replica's replication link to the leader lossy: [`REPLICATION_LOSS_PERCENT`] of its chunks
    /// held 200 ms (a retransmission), up to 50 ms of delay (needs hosts of their own).
    ReplicationLossy,
    /// A replica's replication link to the leader cut: its stream closed, a new one left without
    /// an answer until the heal (needs hosts of their own).
    ReplicationCut,
    /// A planned switchover from the leader to a replica (REST `POST /switchover`), as an
    /// operator would run it; instantaneous (the switchover itself is the cluster's reaction).
    Switchover,
    /// Every DCS server frozen (SIGSTOP, then SIGCONT at the heal: unreachable, not restarted, so
    /// the DCS is back the moment the hold ends) for a hold shorter than `retry_timeout` by
    /// [`BLIP_MARGIN`] ([`blip_hold_ms`]): README's "a DCS outage shorter than `retry_timeout`
    /// disturbs no leader", checked by [`super::checker::leader_disturbed`].
    DcsBlip,
    /// The leader's links to every DCS member slowed by [`SLOW_DCS_DELAY_MS`] per packet each way
    /// (a DCS call then takes ~1.5-1.9 s), no loss, held [`SLOW_DCS_HOLD_MS`]: a gray failure, the
    /// link slow but alive (its ZooKeeper session or etcd lease lives on), so the leader can no
    /// longer renew within its demotion deadline yet keeps its lock. The cluster must fail over to
    /// a member with a healthy link while the fault still holds (issue 14; needs
    /// [`NetworkFaults`], the DCS links go through relays).
    SlowDcs,
}

/// The range of the delay (ms per packet, each way) a [`FaultKind::SlowDcs`] adds to the leader's
/// DCS links: a call (a request and its answer, a few packets) then takes ~1.5-1.9 s, more than
/// a leader can afford within `loop_wait + retry_timeout` on the nemesis's timings (a renewal, a
/// loop's read and the next renewal: three calls in 3 s). At +223 ms and +313 ms seed 1's leader
/// still renewed in time at load ~20 and nothing moved (seed 9's +321 ms lapsed at load ~30,
/// with a switchover's calls on top), so the range starts above that, below a call's 2 s bound.
pub const SLOW_DCS_DELAY_MS: std::ops::RangeInclusive<u32> = 380..=460;

/// The range of a [`FaultKind::SlowDcs`]'s hold (ms): long enough that a failover must happen
/// while it holds (the bound is about `ttl + loop_wait` and a start).
pub const SLOW_DCS_HOLD_MS: std::ops::RangeInclusive<u64> = 20_000..=30_000;

/// The range of the delay (ms, each way) a [`FaultKind::ReplicationSlow`] adds: from what a
/// cross-region link costs to longer than most commit timeouts would tolerate.
pub const REPLICATION_DELAY_MS: std::ops::RangeInclusive<u32> = 200..=1000;

/// The range of the share of chunks (percent) a [`FaultKind::ReplicationLossy`] "loses".
pub const REPLICATION_LOSS_PERCENT: std::ops::RangeInclusive<u32> = 10..=50;

/// How much shorter than `retry_timeout` a [`FaultKind::DcsBlip`] is held at most.
///
/// The leader's demotion deadline is `loop_wait + retry_timeout` after its last successful
/// renewal (`ha::demote_deadline_ms`), and its cycles keep a cadence of `loop_wait` from their
/// starts (`ha::cadence`), so its renewals are `loop_wait` apart give or take the jitter of the
/// work before them. The worst blip starts while a renewal is in flight: the DCS must then answer
/// it within about `retry_timeout` of its start (the deadline of the renewal before it), less that
/// jitter and the thawed DCS's first answers; past that margin a demotion is the rule working, not
/// a disturbance. It was 1 s for a while: ZooKeeper strict seed 33 (`9e22c5a`) saw the leader
/// replaced after a 1.5 s blip at `retry_timeout` 2 s, and seed 10 (with logs) showed why: the
/// agent waited `loop_wait` after a cycle's *end*, so a new leader whose first cycle took ~2 s
/// slept until 200 ms before its deadline and demoted itself with no fault. With the cadence from
/// the cycle's start (as Patroni's loop) the margin is back to 500 ms.
pub const BLIP_MARGIN: std::time::Duration = std::time::Duration::from_millis(500);

/// The shortest [`FaultKind::DcsBlip`] hold, ms: long enough that every agent's next DCS call
/// lands in it.
pub const BLIP_MIN_MS: u64 = 200;

/// The range (ms) a [`FaultKind::DcsBlip`]'s hold is drawn from under `retry_timeout_secs`:
/// [`BLIP_MIN_MS`] to `retry_timeout -` [`BLIP_MARGIN`] (at least the minimum).
pub fn blip_hold_ms(retry_timeout_secs: u32) -> std::ops::RangeInclusive<u64> {
    let max = (u64::from(retry_timeout_secs) * 1000).saturating_sub(BLIP_MARGIN.as_millis() as u64);
    BLIP_MIN_MS..=max.max(BLIP_MIN_MS)
}

impl FaultKind {
    /// Every kind, in the order tables list them.
    pub const ALL: [FaultKind; 16] = [
        FaultKind::Freeze,
        FaultKind::Kill,
        FaultKind::PostgresCrash,
        FaultKind::DcsMemberStop,
        FaultKind::DcsQuorumLoss,
        FaultKind::ProxyRestart,
        FaultKind::Silence,
        FaultKind::Partition,
        FaultKind::OneWayPartition,
        FaultKind::SlowLink,
        FaultKind::ReplicationSlow,
        FaultKind::ReplicationLossy,
        FaultKind::ReplicationCut,
        FaultKind::Switchover,
        FaultKind::DcsBlip,
        FaultKind::SlowDcs,
    ];

    /// The kinds drawn before the replication-link faults and the switchover existed. A seed's
    /// plan depends on the list it draws from, so a seed found with these replays its faults only
    /// when drawn from them (`PRAETOR_NEMESIS_FAULTS`, or [`super::runner::NemesisOptions::kinds`]).
    pub const FIRST_TEN: &'static [FaultKind] = Self::ALL.split_at(10).0;

    /// The kinds drawn before [`FaultKind::DcsBlip`] existed (the 100-seed tables of
    /// `docs/nemesis-tables.md`, the CI seeds of `tests/nemesis.rs`): a seed found with them
    /// replays its faults only when drawn from them, as for [`FaultKind::FIRST_TEN`].
    pub const FIRST_FOURTEEN: &'static [FaultKind] = Self::ALL.split_at(14).0;

    /// The kinds drawn before [`FaultKind::SlowDcs`] existed: a seed found with them replays its
    /// faults only when drawn from them, as for [`FaultKind::FIRST_TEN`].
    pub const FIRST_FIFTEEN: &'static [FaultKind] = Self::ALL.split_at(15).0;

    /// True for the faults after which the leader must stay undisturbed (README: "a DCS outage
    /// shorter than `retry_timeout` disturbs no leader; losing one DCS member disturbs
    /// nothing"), checked by [`super::checker::leader_disturbed`] when no other fault overlaps.
    pub fn keeps_the_leader(self) -> bool {
        matches!(self, FaultKind::DcsBlip | FaultKind::DcsMemberStop)
    }

    /// True for the faults that need hosts of their own (network namespaces).
    pub fn needs_network(self) -> bool {
        self.healed_with_the_network() || self.is_replication_link()
    }

    /// True for the network faults a single [`NetworkFaults::heal`] removes all at once.
    pub fn healed_with_the_network(self) -> bool {
        matches!(
            self,
            FaultKind::Silence
                | FaultKind::Partition
                | FaultKind::OneWayPartition
                | FaultKind::SlowLink
                | FaultKind::SlowDcs
        )
    }

    /// True for the faults on a replica's replication link to the leader (each healed on its
    /// own relay).
    pub fn is_replication_link(self) -> bool {
        matches!(
            self,
            FaultKind::ReplicationSlow | FaultKind::ReplicationLossy | FaultKind::ReplicationCut
        )
    }

    /// True when writes cannot resume while the fault holds by design, so recovery is measured
    /// from the heal instead of from the fault: without its DCS quorum no member may hold the
    /// leader lock (Patroni demotes the leader once `retry_timeout` passes without the DCS).
    pub fn recovery_from_heal(self) -> bool {
        matches!(self, FaultKind::DcsQuorumLoss)
    }

    /// True when the fault is applied and healed at once (its hold is zero).
    pub fn is_instant(self) -> bool {
        matches!(self, FaultKind::PostgresCrash | FaultKind::Switchover)
    }

    /// The short name tables and `PRAETOR_NEMESIS_FAULTS` use.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Freeze => "freeze",
            FaultKind::Kill => "kill",
            FaultKind::PostgresCrash => "pg-crash",
            FaultKind::DcsMemberStop => "dcs-member-stop",
            FaultKind::DcsQuorumLoss => "dcs-quorum-loss",
            FaultKind::ProxyRestart => "proxy-restart",
            FaultKind::Silence => "silence",
            FaultKind::Partition => "partition",
            FaultKind::OneWayPartition => "one-way",
            FaultKind::SlowLink => "slow-link",
            FaultKind::ReplicationSlow => "repl-slow",
            FaultKind::ReplicationLossy => "repl-lossy",
            FaultKind::ReplicationCut => "repl-cut",
            FaultKind::Switchover => "switchover",
            FaultKind::DcsBlip => "dcs-blip",
            FaultKind::SlowDcs => "slow-dcs",
        }
    }

    /// Parses [`FaultKind::name`].
    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whom a fault hits, resolved against the cluster when it is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The member holding the leader lock at that moment.
    Leader,
    /// The `n`-th replica (modulo their number, in name order) at that moment.
    Replica(usize),
    /// These DCS members (indexes into the DCS's three).
    DcsMembers(Vec<usize>),
    /// The proxy.
    Proxy,
    /// The hosts split into two sets: the leader and `with_leader` other members on one side
    /// (the DCS members `dcs_with_leader` with them), everything else, the proxy included, on the
    /// other.
    Split {
        /// How many replicas stay with the leader (0 or 1).
        with_leader: usize,
        /// The DCS members on the leader's side.
        dcs_with_leader: Vec<usize>,
    },
}

/// One fault of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedFault {
    /// What.
    pub kind: FaultKind,
    /// Whom.
    pub target: Target,
    /// How long it holds before the heal (zero for instantaneous faults).
    pub hold: Duration,
    /// For [`FaultKind::SlowLink`], [`FaultKind::SlowDcs`], [`FaultKind::ReplicationSlow`] and
    /// [`FaultKind::ReplicationLossy`]: added delay (ms, each way) and loss (percent).
    pub degrade: Option<(u32, u32)>,
    /// Quiet time after the cluster converged again, before the next fault.
    pub quiet: Duration,
    /// Applied this long after the previous fault, while that one still holds (only with
    /// [`PlanOptions::overlap`]); `None`: after the previous one healed and the cluster
    /// converged.
    pub overlap: Option<Duration>,
}

impl FaultKind {
    /// True when `self` and `other` can hold at the same time without one's heal undoing the
    /// other: different kinds, not both on the DCS servers (a member of both would be started
    /// by the first heal), not both network faults (a network heal removes every rule), not both
    /// on replication links (both may hit the same relay).
    pub fn can_overlap(self, other: FaultKind) -> bool {
        let dcs = |k: FaultKind| {
            matches!(
                k,
                FaultKind::DcsMemberStop | FaultKind::DcsQuorumLoss | FaultKind::DcsBlip
            )
        };
        self != other
            && !(dcs(self) && dcs(other))
            && !(self.healed_with_the_network() && other.healed_with_the_network())
            && !(self.is_replication_link() && other.is_replication_link())
    }
}

/// What a plan is drawn from.
#[derive(Debug, Clone)]
pub struct PlanOptions {
    /// Faults per run.
    pub faults: usize,
    /// The kinds to draw from (the runner leaves out those it cannot apply).
    pub kinds: Vec<FaultKind>,
    /// Leader lock TTL, seconds: holds range from 1 s to `2 × ttl`, so some outlast the lease.
    pub ttl_secs: u32,
    /// DCS retry timeout, seconds: a [`FaultKind::DcsBlip`]'s hold is drawn from
    /// [`blip_hold_ms`] of it.
    pub retry_timeout_secs: u32,
    /// Draw overlapping faults: each fault after the first is, with probability 1/2, applied
    /// while the previous one still holds (at a point drawn within its hold), when the two kinds
    /// [`FaultKind::can_overlap`] and the previous one neither is instantaneous nor overlaps
    /// itself (at most two faults hold at once).
    pub overlap: bool,
}

/// The faults of run `seed`: each kind drawn uniformly from `options.kinds`, targets and holds
/// from the same generator (`fastrand`'s wyrand, seeded), so a seed replays the same plan.
/// Without [`PlanOptions::overlap`] a seed draws the plan it drew before overlaps existed.
pub fn plan(seed: u64, options: &PlanOptions) -> Vec<PlannedFault> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let max_hold_ms = u64::from(options.ttl_secs.max(1)) * 2000;
    let mut faults: Vec<PlannedFault> = (0..options.faults)
        .filter_map(|_| {
            let kind = *options.kinds.get(rng.usize(..options.kinds.len().max(1)))?;
            let on_leader = rng.bool() || rng.bool(); // 3 in 4 hit the leader: the interesting case
            let member = if on_leader {
                Target::Leader
            } else {
                Target::Replica(rng.usize(..2))
            };
            let target = match kind {
                FaultKind::DcsMemberStop => Target::DcsMembers(vec![rng.usize(..3)]),
                FaultKind::DcsQuorumLoss => {
                    let keep = rng.usize(..3);
                    Target::DcsMembers((0..3).filter(|i| *i != keep).collect())
                }
                FaultKind::ProxyRestart => Target::Proxy,
                FaultKind::DcsBlip => Target::DcsMembers(vec![0, 1, 2]),
                FaultKind::SlowDcs => Target::Leader,
                // A replica's link, and a switchover's candidate: always a replica (drawn apart,
                // so the kinds drawn before these existed keep their plans).
                FaultKind::ReplicationSlow
                | FaultKind::ReplicationLossy
                | FaultKind::ReplicationCut
                | FaultKind::Switchover => Target::Replica(rng.usize(..2)),
                FaultKind::Partition | FaultKind::OneWayPartition => {
                    let with_leader = rng.usize(..2);
                    let n = rng.usize(..2);
                    Target::Split {
                        with_leader,
                        dcs_with_leader: (0..n).map(|_| rng.usize(..3)).collect(),
                    }
                }
                _ => member,
            };
            let hold = if kind.is_instant() {
                Duration::ZERO
            } else if kind == FaultKind::ProxyRestart {
                Duration::from_millis(rng.u64(100..=2000))
            } else if kind == FaultKind::DcsBlip {
                Duration::from_millis(rng.u64(blip_hold_ms(options.retry_timeout_secs)))
            } else if kind == FaultKind::SlowDcs {
                Duration::from_millis(rng.u64(SLOW_DCS_HOLD_MS))
            } else {
                Duration::from_millis(rng.u64(1000..=max_hold_ms))
            };
            let degrade = match kind {
                FaultKind::SlowLink => Some((rng.u32(50..=500), rng.u32(0..=30))),
                FaultKind::SlowDcs => Some((rng.u32(SLOW_DCS_DELAY_MS), 0)),
                FaultKind::ReplicationSlow => Some((rng.u32(REPLICATION_DELAY_MS), 0)),
                FaultKind::ReplicationLossy => {
                    Some((rng.u32(0..=50), rng.u32(REPLICATION_LOSS_PERCENT)))
                }
                _ => None,
            };
            let quiet = Duration::from_millis(rng.u64(500..=3000));
            Some(PlannedFault {
                kind,
                target,
                hold,
                degrade,
                quiet,
                overlap: None,
            })
        })
        .collect();
    if options.overlap {
        // Drawn after the plan itself (from a second generator), so the faults are those of the
        // same seed without overlaps.
        let mut rng = fastrand::Rng::with_seed(seed ^ 0x6f76_6572_6c61_7000);
        for i in 1..faults.len() {
            let prev = &faults[i - 1];
            let coin = rng.bool();
            let at = rng.u64(0..=prev.hold.as_millis() as u64);
            if coin
                && prev.overlap.is_none()
                && !prev.hold.is_zero()
                && prev.kind.can_overlap(faults[i].kind)
            {
                faults[i].overlap = Some(Duration::from_millis(at));
            }
        }
    }
    faults
}

/// A host a network fault can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A member (agent and PostgreSQL), by name (`pg1`...).
    Member(String),
    /// A DCS server, by index.
    Dcs(usize),
    /// The proxy.
    Proxy,
}

impl Host {
    /// The host's name in a namespace harness: the member's name, `e1`.. for DCS servers,
    /// `proxy`.
    pub fn name(&self) -> String {
        match self {
            Host::Member(m) => m.clone(),
            Host::Dcs(i) => format!("e{}", i + 1),
            Host::Proxy => "proxy".into(),
        }
    }
}

/// Network faults between hosts, for a harness whose hosts have network interfaces of their own
/// (network namespaces), owned by the cluster it runs. The loopback harness has none: the runner
/// then leaves the network kinds out of the plan. Each call returns once the fault is in place;
/// errors say what could not be set (the run then stops with that error rather than measuring a
/// fault that did not happen). The workload's clients stay reachable from every host a fault does
/// not silence.
pub trait NetworkFaults {
    /// Drops every packet to and from `host`.
    fn silence(&mut self, host: &Host) -> Result<(), String>;
    /// Drops packets between `a` and `b`: both ways, or only from `a` to `b` when `one_way`.
    fn partition(&mut self, a: &[Host], b: &[Host], one_way: bool) -> Result<(), String>;
    /// Delays `host`'s packets by `delay_ms` and drops `loss_percent` of them.
    fn degrade(&mut self, host: &Host, delay_ms: u32, loss_percent: u32) -> Result<(), String>;
    /// Removes every network fault.
    fn heal(&mut self) -> Result<(), String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(kinds: &[FaultKind]) -> PlanOptions {
        PlanOptions {
            faults: 20,
            kinds: kinds.to_vec(),
            ttl_secs: 6,
            retry_timeout_secs: 2,
            overlap: false,
        }
    }

    #[test]
    fn a_seed_replays_the_same_plan_and_another_seed_differs() {
        let o = options(&FaultKind::ALL);
        assert_eq!(plan(7, &o), plan(7, &o));
        assert_ne!(plan(7, &o), plan(8, &o));
    }

    #[test]
    fn plans_draw_only_the_kinds_given_with_targets_that_fit_them() {
        let o = options(&[FaultKind::PostgresCrash, FaultKind::DcsQuorumLoss]);
        for seed in 0..50 {
            for f in plan(seed, &o) {
                match f.kind {
                    FaultKind::PostgresCrash => {
                        assert!(matches!(f.target, Target::Leader | Target::Replica(_)));
                        assert_eq!(f.hold, Duration::ZERO);
                    }
                    FaultKind::DcsQuorumLoss => {
                        let Target::DcsMembers(m) = &f.target else {
                            panic!("{f:?}")
                        };
                        assert_eq!(m.len(), 2, "two of three stopped: {f:?}");
                        assert!(f.hold >= Duration::from_secs(1));
                        assert!(f.hold <= Duration::from_secs(12));
                    }
                    other => panic!("drew {other:?}"),
                }
            }
        }
    }

    #[test]
    fn names_round_trip_and_network_kinds_are_flagged() {
        for k in FaultKind::ALL {
            assert_eq!(FaultKind::parse(k.name()), Some(k));
        }
        let net: Vec<_> = FaultKind::ALL
            .into_iter()
            .filter(|k| k.needs_network())
            .collect();
        assert_eq!(net.len(), 8);
        assert!(!FaultKind::Switchover.needs_network());
    }

    #[test]
    fn a_slow_dcs_hits_the_leader_without_loss_for_longer_than_a_failover() {
        let o = options(&[FaultKind::SlowDcs]);
        for seed in 0..50 {
            for f in plan(seed, &o) {
                assert_eq!(f.target, Target::Leader, "{f:?}");
                let (delay, loss) = f.degrade.expect("a slow DCS link has a delay");
                assert!(SLOW_DCS_DELAY_MS.contains(&delay) && loss == 0, "{f:?}");
                assert!(
                    SLOW_DCS_HOLD_MS.contains(&(f.hold.as_millis() as u64)),
                    "{f:?}"
                );
            }
        }
        assert!(FaultKind::SlowDcs.healed_with_the_network());
        assert!(!FaultKind::FIRST_FIFTEEN.contains(&FaultKind::SlowDcs));
        assert_eq!(FaultKind::FIRST_FIFTEEN.last(), Some(&FaultKind::DcsBlip));
    }

    #[test]
    fn replication_link_faults_hit_a_replica_with_their_degradation_in_range() {
        let o = options(&[
            FaultKind::ReplicationSlow,
            FaultKind::ReplicationLossy,
            FaultKind::ReplicationCut,
        ]);
        let mut drawn = std::collections::BTreeSet::new();
        for seed in 0..50 {
            for f in plan(seed, &o) {
                drawn.insert(f.kind);
                assert!(matches!(f.target, Target::Replica(n) if n < 2), "{f:?}");
                assert!(f.hold >= Duration::from_secs(1), "{f:?}");
                assert!(f.hold <= Duration::from_secs(12), "{f:?}");
                match (f.kind, f.degrade) {
                    (FaultKind::ReplicationSlow, Some((delay, 0))) => {
                        assert!(REPLICATION_DELAY_MS.contains(&delay), "{f:?}")
                    }
                    (FaultKind::ReplicationLossy, Some((delay, loss))) => {
                        assert!(delay <= 50, "{f:?}");
                        assert!(REPLICATION_LOSS_PERCENT.contains(&loss), "{f:?}");
                    }
                    (FaultKind::ReplicationCut, None) => {}
                    _ => panic!("{f:?}"),
                }
            }
        }
        assert_eq!(drawn.len(), 3, "every kind drawn in 50 plans: {drawn:?}");
    }

    #[test]
    fn a_switchover_is_instantaneous_and_names_a_replica_as_its_candidate() {
        let o = options(&[FaultKind::Switchover]);
        for seed in 0..20 {
            for f in plan(seed, &o) {
                assert_eq!(f.hold, Duration::ZERO, "{f:?}");
                assert!(matches!(f.target, Target::Replica(n) if n < 2), "{f:?}");
                assert_eq!(f.degrade, None);
            }
        }
    }

    /// The plan options of an old series: 3 faults, no overlap, ttl 6, from those of `kinds` the
    /// loopback harness applies (old seeds must keep drawing the plans they were found with).
    fn loopback_plan(kinds: &[FaultKind]) -> PlanOptions {
        PlanOptions {
            faults: 3,
            kinds: kinds
                .iter()
                .copied()
                .filter(|k| !k.needs_network())
                .collect(),
            ttl_secs: 6,
            retry_timeout_secs: 2,
            overlap: false,
        }
    }

    #[test]
    fn the_first_ten_kinds_draw_what_they_drew_before_the_new_kinds_existed() {
        // Seed 12 of the strict etcd series (a regression seed of tests/nemesis.rs), drawn from
        // the kinds the loopback harness applied then: the plan it was found with.
        let o = loopback_plan(FaultKind::FIRST_TEN);
        let kinds: Vec<FaultKind> = plan(12, &o).iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [FaultKind::PostgresCrash, FaultKind::Kill, FaultKind::Freeze]
        );
    }

    #[test]
    fn a_dcs_blip_freezes_every_dcs_server_for_less_than_retry_timeout_by_the_margin() {
        assert_eq!(blip_hold_ms(2), 200..=1500);
        assert_eq!(blip_hold_ms(10), 200..=9500);
        assert_eq!(blip_hold_ms(0), 200..=200, "never an empty range");
        let o = options(&[FaultKind::DcsBlip]);
        let mut holds = Vec::new();
        for seed in 0..20 {
            for f in plan(seed, &o) {
                assert_eq!(f.target, Target::DcsMembers(vec![0, 1, 2]), "{f:?}");
                assert!(
                    blip_hold_ms(2).contains(&(f.hold.as_millis() as u64)),
                    "{f:?}"
                );
                assert_eq!(f.degrade, None);
                holds.push(f.hold);
            }
        }
        assert!(holds.iter().any(|h| *h < Duration::from_millis(450)));
        assert!(holds.iter().any(|h| *h > Duration::from_millis(750)));
        assert!(
            FaultKind::DcsBlip.keeps_the_leader() && FaultKind::DcsMemberStop.keeps_the_leader()
        );
        assert!(!FaultKind::DcsQuorumLoss.keeps_the_leader());
        assert!(!FaultKind::DcsBlip.can_overlap(FaultKind::DcsMemberStop));
        assert!(FaultKind::DcsBlip.can_overlap(FaultKind::Kill));
    }

    #[test]
    fn the_first_fourteen_kinds_draw_what_they_drew_before_the_dcs_blip_existed() {
        // Seed 10 under async on the loopback harness (ASYNC_SWITCHOVER_SEED of
        // tests/nemesis.rs): a switchover, a freeze, a kill, as it drew when it was chosen.
        let o = loopback_plan(FaultKind::FIRST_FOURTEEN);
        let kinds: Vec<FaultKind> = plan(10, &o).iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            [FaultKind::Switchover, FaultKind::Freeze, FaultKind::Kill]
        );
        assert_eq!(
            FaultKind::FIRST_FOURTEEN.last(),
            Some(&FaultKind::Switchover)
        );
    }

    #[test]
    fn replication_link_faults_overlap_neither_each_other_nor_nothing_else() {
        use FaultKind::*;
        assert!(!ReplicationSlow.can_overlap(ReplicationCut));
        assert!(ReplicationCut.can_overlap(Partition), "healed apart");
        assert!(ReplicationLossy.can_overlap(Kill));
        assert!(Switchover.can_overlap(ReplicationCut));
    }

    #[test]
    fn overlaps_keep_the_plan_and_pair_only_compatible_faults_two_at_a_time() {
        let mut o = options(&FaultKind::ALL);
        o.overlap = true;
        let mut overlapping = 0;
        for seed in 0..50 {
            let with = plan(seed, &o);
            let without = plan(
                seed,
                &PlanOptions {
                    overlap: false,
                    ..o.clone()
                },
            );
            assert_eq!(with.len(), without.len());
            for (i, (a, b)) in with.iter().zip(&without).enumerate() {
                assert_eq!(
                    PlannedFault {
                        overlap: None,
                        ..a.clone()
                    },
                    *b
                );
                if let Some(at) = a.overlap {
                    overlapping += 1;
                    let prev = &with[i - 1];
                    assert!(prev.overlap.is_none(), "at most two at once");
                    assert!(at <= prev.hold);
                    assert!(prev.kind.can_overlap(a.kind), "{prev:?} {a:?}");
                }
            }
        }
        assert!(
            overlapping > 50,
            "{overlapping} overlapping faults in 50 plans of 20"
        );
        assert!(!FaultKind::Silence.can_overlap(FaultKind::Partition));
        assert!(!FaultKind::DcsMemberStop.can_overlap(FaultKind::DcsQuorumLoss));
        assert!(FaultKind::Freeze.can_overlap(FaultKind::DcsQuorumLoss));
    }
}
