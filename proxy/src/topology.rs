//! Where connections may go, as read from the DCS: the routable leader and the routable replicas.
//!
//! [`topology_from_cluster`] is a pure function of the cluster view, so every routing rule is a row of
//! a table-driven test. The proxy never guesses: a member is routable only as the DCS describes it.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use praetor_dcs::{Cluster, Member, MemberState, Role};

use crate::settings::LagPolicy;

/// A PostgreSQL server connections can be sent to: a member's name and the host and port of its
/// `conn_url`.
///
/// Equal backends (same member, host and port) carry the same number, given once per process
/// ([`Backend::new`]); equality and hashing compare that number only. The auto port compares the
/// backend of every unit with its session's last one (cancel keys, pooled connections): comparing
/// the names read two strings in allocations of their own, which with many sessions are no longer
/// in the CPU's cache (callgrind, pgbench -S -c 64 through `pool_mode: transaction`: ~4 of 174
/// first-level data misses per transaction).
#[derive(Debug, Clone)]
pub struct Backend {
    /// Shared by every equal backend (see [`Backend::new`]).
    id: u32,
    member: String,
    host: String,
    port: u16,
}

/// The numbers given to backends: one per (member, host, port) this process ever routed to or was
/// told of, a few dozen bytes each (members are few and seldom renamed or moved).
fn backend_ids() -> &'static std::sync::Mutex<BackendIds> {
    static IDS: std::sync::OnceLock<std::sync::Mutex<BackendIds>> = std::sync::OnceLock::new();
    IDS.get_or_init(Default::default)
}

/// [`backend_ids`]'s map: (member, host, port) to its number.
type BackendIds = std::collections::HashMap<(String, String, u16), u32>;

impl Backend {
    /// The backend of member `member` at `host`:`port` (takes a lock to find its number: made when
    /// a topology is read, not per transaction).
    pub fn new(member: impl Into<String>, host: impl Into<String>, port: u16) -> Backend {
        let (member, host) = (member.into(), host.into());
        let mut ids = backend_ids().lock().unwrap_or_else(|p| p.into_inner());
        let next = u32::try_from(ids.len()).expect("fewer than 2^32 backends");
        let id = *ids
            .entry((member.clone(), host.clone(), port))
            .or_insert(next);
        Backend {
            id,
            member,
            host,
            port,
        }
    }

    /// The member's name in the DCS (the `backend` label of the metrics).
    pub fn member(&self) -> &str {
        &self.member
    }

    /// Host from the member's `conn_url`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Port from the member's `conn_url`.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl PartialEq for Backend {
    fn eq(&self, other: &Backend) -> bool {
        self.id == other.id
    }
}

impl Eq for Backend {}

impl std::hash::Hash for Backend {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "{} at [{}]:{}", self.member, self.host, self.port)
        } else {
            write!(f, "{} at {}:{}", self.member, self.host, self.port)
        }
    }
}

/// How far a replica is behind the leader, as far as the DCS tells.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ReplicaLag {
    /// The leader's WAL position minus the replica's replayed position; `None` when either is
    /// unknown.
    pub bytes: Option<u64>,
    /// Seconds since the leader's WAL position first passed the replica's replayed position, as
    /// observed by the feed; `None` when unknown.
    pub seconds: Option<f64>,
}

impl ReplicaLag {
    /// True when within `policy` (an unknown lag is within any limit: the DCS cannot say better).
    pub fn is_fresh(&self, policy: &LagPolicy) -> bool {
        let bytes_ok = match (policy.max_bytes, self.bytes) {
            (Some(max), Some(b)) => b <= max,
            _ => true,
        };
        let seconds_ok = match (policy.max_seconds, self.seconds) {
            (Some(max), Some(s)) => s <= max,
            _ => true,
        };
        bytes_ok && seconds_ok
    }
}

/// The routing view: where read-write and read-only connections go.
///
/// Equality compares `leader`, `replicas`, `lag`, `ttl_secs` and `switchover` (not the clock).
#[derive(Debug, Clone, Default)]
pub struct Topology {
    /// The member holding the leader key, when it publishes role `primary` and a `conn_url`.
    pub leader: Option<Backend>,
    /// Running replicas with a `conn_url` and without `noloadbalance`, the leader excluded, sorted
    /// by member name.
    pub replicas: Vec<Backend>,
    /// Each replica's lag, by member name (missing: unknown).
    pub lag: BTreeMap<String, ReplicaLag>,
    /// The cluster's `ttl` from the dynamic configuration, when known: the proxy's DCS lease and
    /// how long it may serve without DCS contact.
    pub ttl_secs: Option<u32>,
    /// When the feed that published this topology last read the DCS successfully (shared by all
    /// topologies of one feed; a hand-made topology gets a fresh clock that was never read).
    pub dcs_clock: DcsClock,
    /// A planned switchover asks the routable leader to step down ([`pending_switchover`]): new
    /// transactions wait for the next leader instead of starting on this one.
    pub switchover: Option<Switchover>,
}

/// A switchover the DCS asks for and the leader has not carried out yet: the `failover` key names
/// the current lock holder as `leader` (or names only a `member`, which makes the lock holder step
/// down too: Patroni's failover with a candidate), without a `scheduled_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switchover {
    /// The leader that steps down (the lock holder).
    pub leader: String,
    /// The member to promote, when the request names one.
    pub candidate: Option<String>,
}

/// The switchover pending in `c`, if any (see [`Switchover`]). A scheduled one is not pending until
/// the agent carries it out (the proxy reads no clock here): its hold begins when the leader key
/// goes away. A request naming another member than the lock holder as `leader` is refused by the
/// agents (Patroni: "leader name does not match"), so nothing is held for it.
pub fn pending_switchover(c: &Cluster) -> Option<Switchover> {
    let holder = c.leader.as_ref()?.name.as_str();
    let req = &c.failover_request()?.value;
    if req.scheduled_at.is_some() {
        return None;
    }
    match (&req.leader, &req.member) {
        (Some(l), candidate) if l == holder && candidate.as_deref() != Some(holder) => {
            Some(Switchover {
                leader: holder.to_string(),
                candidate: candidate.clone(),
            })
        }
        (None, Some(m)) if m != holder => Some(Switchover {
            leader: holder.to_string(),
            candidate: Some(m.clone()),
        }),
        _ => None,
    }
}

impl PartialEq for Topology {
    fn eq(&self, other: &Topology) -> bool {
        self.leader == other.leader
            && self.replicas == other.replicas
            && self.lag == other.lag
            && self.ttl_secs == other.ttl_secs
            && self.switchover == other.switchover
    }
}

impl Topology {
    /// A topology with `leader` and `replicas` and a fresh clock (for static feeds and tests).
    pub fn new(leader: Option<Backend>, replicas: Vec<Backend>) -> Topology {
        Topology {
            leader,
            replicas,
            ..Topology::default()
        }
    }

    /// The lag of `replica` (unknown when not reported).
    pub fn lag_of(&self, replica: &Backend) -> ReplicaLag {
        self.lag.get(&replica.member).copied().unwrap_or_default()
    }

    /// The replicas within `policy`, in member-name order.
    pub fn fresh_replicas<'a>(
        &'a self,
        policy: &'a LagPolicy,
    ) -> impl Iterator<Item = &'a Backend> + 'a {
        self.replicas
            .iter()
            .filter(move |r| self.lag_of(r).is_fresh(policy))
    }

    /// True when routing (leader, replica set) differs: lag and ttl changes do not count.
    pub fn routes_differ(&self, other: &Topology) -> bool {
        self.leader != other.leader || self.replicas != other.replicas
    }
}

/// The time of the last successful DCS read, shared between a feed and the topologies it publishes
/// (the feed publishes only changes; the clock moves on every read). Monotonic.
#[derive(Debug, Clone)]
pub struct DcsClock(Arc<ClockInner>);

#[derive(Debug)]
struct ClockInner {
    origin: Instant,
    /// Nanoseconds after `origin` of the last successful read; `u64::MAX` = never.
    last_read_nanos: AtomicU64,
}

impl Default for DcsClock {
    fn default() -> DcsClock {
        DcsClock::new()
    }
}

impl DcsClock {
    /// A clock that has seen no read yet.
    pub fn new() -> DcsClock {
        DcsClock(Arc::new(ClockInner {
            origin: Instant::now(),
            last_read_nanos: AtomicU64::new(u64::MAX),
        }))
    }

    /// Records a successful DCS read now.
    pub fn record_read(&self) {
        self.record_read_at(Instant::now());
    }

    /// Records a successful DCS read at `at`.
    pub fn record_read_at(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.0.origin).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.0.last_read_nanos.store(nanos, Ordering::Relaxed);
    }

    /// When the DCS was last read successfully, if ever.
    pub fn last_read(&self) -> Option<Instant> {
        match self.0.last_read_nanos.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(self.0.origin + Duration::from_nanos(n)),
        }
    }

    /// Time since the last successful read at `now`; since the clock was created when there was none
    /// (so the value grows from the start and alerts fire on a feed that never reached the DCS).
    pub fn elapsed_since_read(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_read().unwrap_or(self.0.origin))
    }
}

fn backend_of(m: &Member) -> Option<Backend> {
    let (host, port) = m.data.conn_host_port()?;
    Some(Backend::new(m.name.clone(), host, port))
}

/// Derives the routing view from a cluster as read from the DCS.
///
/// - leader: the member named by the `leader` key, only if its member key exists with role
///   `primary` and a `conn_url` (a lock holder still being promoted is not routable yet);
/// - replicas: members with role `replica`, state `running`, no `noloadbalance` tag and a `conn_url`,
///   excluding the lock holder and members on another timeline than the leader (one still on a
///   former timeline may hold WAL the leader never had), in member-name order. In a standby cluster
///   the lock holder is a standby leader (role `standby_leader`, read-only): no writes go anywhere,
///   and it serves reads with its replicas.
pub fn topology_from_cluster(c: &Cluster) -> Topology {
    let lock_holder = c.leader.as_ref().map(|l| l.name.as_str());
    let leader = c
        .leader_member()
        .filter(|m| m.data.role == Role::Primary)
        .and_then(backend_of);
    let mut replicas: Vec<Backend> = c
        .members
        .iter()
        .filter(|m| {
            let standby_leader =
                m.data.role == Role::StandbyLeader && Some(m.name.as_str()) == lock_holder;
            (m.data.role == Role::Replica && Some(m.name.as_str()) != lock_holder) || standby_leader
        })
        .filter(|m| m.data.state == MemberState::Running)
        .filter(|m| !m.data.tags.noloadbalance)
        .filter(|m| !c.off_leader_timeline(m.data.timeline))
        .filter_map(backend_of)
        .collect();
    replicas.sort_by(|a, b| a.member.cmp(&b.member));
    let leader_lsn = c.leader.as_ref().and(c.leader_optime());
    let lag = replicas
        .iter()
        .filter_map(|r| {
            let m = c.member(&r.member)?;
            let replayed = m.data.replay_lsn.or(m.data.xlog_location);
            let bytes = match (leader_lsn, replayed) {
                (Some(l), Some(r)) => Some(l.saturating_sub(r)),
                _ => None,
            };
            Some((
                r.member.clone(),
                ReplicaLag {
                    bytes,
                    seconds: None,
                },
            ))
        })
        .collect();
    let ttl_secs = c
        .config
        .as_ref()
        .and_then(|v| v.value.get("ttl"))
        .and_then(|t| t.as_u64().or_else(|| t.as_str()?.parse().ok()))
        .and_then(|t| u32::try_from(t).ok());
    Topology {
        switchover: leader.as_ref().and_then(|_| pending_switchover(c)),
        leader,
        replicas,
        lag,
        ttl_secs,
        dcs_clock: DcsClock::new(),
    }
}

impl Topology {
    /// True while a switchover asks this topology's leader to step down: the leader takes no new
    /// transactions (they wait for the next one).
    pub fn is_switching_over(&self) -> bool {
        match (&self.leader, &self.switchover) {
            (Some(l), Some(s)) => l.member == s.leader,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use praetor_dcs::{Leader, MemberData};

    #[test]
    fn backends_are_equal_exactly_when_member_host_and_port_are() {
        let a = Backend::new("pg1", "10.0.0.1", 5432);
        let again = Backend::new(String::from("pg1"), String::from("10.0.0.1"), 5432);
        assert_eq!(a, again);
        assert_eq!(a.id, again.id, "one number per (member, host, port)");
        assert_eq!(a.clone(), a);
        for other in [
            Backend::new("pg2", "10.0.0.1", 5432),
            Backend::new("pg1", "10.0.0.2", 5432),
            Backend::new("pg1", "10.0.0.1", 5433),
        ] {
            assert_ne!(a, other, "{other}");
            assert_ne!(a.id, other.id, "{other}");
        }
        assert_eq!((a.member(), a.host(), a.port()), ("pg1", "10.0.0.1", 5432));
    }

    fn member(name: &str, role: Role, state: MemberState, port: Option<u16>) -> Member {
        Member {
            name: name.into(),
            data: MemberData {
                conn_url: port.map(|p| format!("postgres://10.0.0.1:{p}/postgres")),
                role,
                state,
                ..Default::default()
            },
            version: 1,
        }
    }

    fn no_lb(mut m: Member) -> Member {
        m.data.tags.noloadbalance = true;
        m
    }

    fn cluster(leader: Option<&str>, members: Vec<Member>) -> Cluster {
        Cluster {
            leader: leader.map(|l| Leader {
                name: l.into(),
                version: 1,
            }),
            members,
            ..Default::default()
        }
    }

    use MemberState::{Running, Starting, Stopped};
    use Role::{Demoted, Primary, Replica, StandbyLeader, Uninitialized};

    #[test]
    fn routing_rules() {
        struct Case {
            name: &'static str,
            cluster: Cluster,
            leader: Option<&'static str>,
            replicas: &'static [&'static str],
        }
        let cases = vec![
            Case {
                name: "healthy cluster: primary leads, running replicas read",
                cluster: cluster(
                    Some("a"),
                    vec![
                        member("a", Primary, Running, Some(5432)),
                        member("b", Replica, Running, Some(5433)),
                        member("c", Replica, Running, Some(5434)),
                    ],
                ),
                leader: Some("a"),
                replicas: &["b", "c"],
            },
            Case {
                name: "no leader key: no leader, replicas still readable",
                cluster: cluster(
                    None,
                    vec![
                        member("a", Primary, Running, Some(5432)),
                        member("b", Replica, Running, Some(5433)),
                    ],
                ),
                leader: None,
                replicas: &["b"],
            },
            Case {
                name: "lock holder still a replica (being promoted): not routable, not a replica",
                cluster: cluster(
                    Some("b"),
                    vec![
                        member("a", Demoted, Running, Some(5432)),
                        member("b", Replica, Running, Some(5433)),
                        member("c", Replica, Running, Some(5434)),
                    ],
                ),
                leader: None,
                replicas: &["c"],
            },
            Case {
                name: "lock holder without a member key: no leader",
                cluster: cluster(Some("gone"), vec![member("b", Replica, Running, Some(5433))]),
                leader: None,
                replicas: &["b"],
            },
            Case {
                name: "primary without conn_url: not routable",
                cluster: cluster(Some("a"), vec![member("a", Primary, Running, None)]),
                leader: None,
                replicas: &[],
            },
            Case {
                name: "primary that does not hold the lock: not the leader, not a replica",
                cluster: cluster(
                    Some("b"),
                    vec![
                        member("a", Primary, Running, Some(5432)),
                        member("b", Primary, Running, Some(5433)),
                    ],
                ),
                leader: Some("b"),
                replicas: &[],
            },
            Case {
                name: "standby leader of a standby cluster is not a read-write leader, it serves reads",
                cluster: cluster(
                    Some("s"),
                    vec![
                        member("s", StandbyLeader, Running, Some(5432)),
                        member("t", Replica, Running, Some(5433)),
                    ],
                ),
                leader: None,
                replicas: &["s", "t"],
            },
            Case {
                name: "replicas that are not running, tagged noloadbalance or without conn_url are skipped",
                cluster: cluster(
                    Some("a"),
                    vec![
                        member("a", Primary, Running, Some(5432)),
                        member("b", Replica, Starting, Some(5433)),
                        member("c", Replica, Stopped, Some(5434)),
                        no_lb(member("d", Replica, Running, Some(5435))),
                        member("e", Replica, Running, None),
                        member("f", Uninitialized, Running, Some(5436)),
                        member("g", Replica, Running, Some(5437)),
                    ],
                ),
                leader: Some("a"),
                replicas: &["g"],
            },
            Case {
                name: "leader's role or state does not matter beyond primary: a primary leader is routable",
                cluster: cluster(Some("a"), vec![member("a", Primary, Starting, Some(5432))]),
                leader: Some("a"),
                replicas: &[],
            },
            Case {
                name: "empty cluster",
                cluster: Cluster::default(),
                leader: None,
                replicas: &[],
            },
        ];
        for case in cases {
            let t = topology_from_cluster(&case.cluster);
            assert_eq!(
                t.leader.as_ref().map(|b| b.member.as_str()),
                case.leader,
                "{}: leader",
                case.name
            );
            let replicas: Vec<&str> = t.replicas.iter().map(|b| b.member.as_str()).collect();
            assert_eq!(replicas, case.replicas, "{}: replicas", case.name);
        }
    }

    #[test]
    fn replica_lag_is_the_leaders_position_minus_the_replayed_one() {
        let mut a = member("a", Primary, Running, Some(1));
        a.data.xlog_location = Some(5_000);
        let mut b = member("b", Replica, Running, Some(2));
        b.data.xlog_location = Some(4_900);
        b.data.replay_lsn = Some(1_000);
        let mut c = member("c", Replica, Running, Some(3));
        c.data.xlog_location = Some(6_000);
        let d = member("d", Replica, Running, Some(4));
        let mut cl = cluster(Some("a"), vec![a, b, c, d]);
        cl.config = Some(praetor_dcs::Versioned {
            value: serde_json::json!({"ttl": 6}),
            version: 1,
        });
        let t = topology_from_cluster(&cl);
        assert_eq!(t.lag["b"].bytes, Some(4_000), "replayed, not received");
        assert_eq!(t.lag["c"].bytes, Some(0), "ahead of a stale leader report");
        assert_eq!(t.lag["d"].bytes, None);
        assert_eq!(t.ttl_secs, Some(6));
        let strict = LagPolicy {
            max_bytes: Some(100),
            ..LagPolicy::default()
        };
        let fresh: Vec<&str> = t
            .fresh_replicas(&strict)
            .map(|b| b.member.as_str())
            .collect();
        assert_eq!(fresh, ["c", "d"], "unknown lag counts as fresh");
        assert_eq!(t.fresh_replicas(&LagPolicy::default()).count(), 3);
        let timed = ReplicaLag {
            bytes: Some(0),
            seconds: Some(11.0),
        };
        assert!(!timed.is_fresh(&LagPolicy {
            max_seconds: Some(10.0),
            ..LagPolicy::default()
        }));
        // No leader key: no reference position, so no lag.
        let no_leader = topology_from_cluster(&cluster(None, cl.members.clone()));
        assert_eq!(no_leader.lag["b"].bytes, None);
    }

    #[test]
    fn switchover_pending_rules() {
        use praetor_dcs::{Failover, Versioned};
        let members = || {
            vec![
                member("a", Primary, Running, Some(1)),
                member("b", Replica, Running, Some(2)),
            ]
        };
        let req = |leader: Option<&str>, m: Option<&str>, at: Option<&str>| Failover {
            leader: leader.map(Into::into),
            member: m.map(Into::into),
            scheduled_at: at.map(Into::into),
        };
        // (name, lock holder, request, pending (leader, candidate))
        type Row = (
            &'static str,
            Option<&'static str>,
            Option<Failover>,
            Option<(&'static str, Option<&'static str>)>,
        );
        let rows: Vec<Row> = vec![
            ("no request", Some("a"), None, None),
            (
                "switchover from the leader to b",
                Some("a"),
                Some(req(Some("a"), Some("b"), None)),
                Some(("a", Some("b"))),
            ),
            (
                "switchover from the leader to any member",
                Some("a"),
                Some(req(Some("a"), None, None)),
                Some(("a", None)),
            ),
            (
                "failover with a candidate while a leader runs: it steps down",
                Some("a"),
                Some(req(None, Some("b"), None)),
                Some(("a", Some("b"))),
            ),
            (
                "the request names another leader: refused by the agents, nothing held",
                Some("a"),
                Some(req(Some("b"), None, None)),
                None,
            ),
            (
                "the candidate is the leader already: nothing to do",
                Some("a"),
                Some(req(None, Some("a"), None)),
                None,
            ),
            (
                "scheduled: held only once the leader key goes",
                Some("a"),
                Some(req(Some("a"), Some("b"), Some("2030-01-01T00:00:00+00:00"))),
                None,
            ),
            (
                "Patroni's empty {} after a switchover",
                Some("b"),
                Some(req(None, None, None)),
                None,
            ),
            (
                "no lock holder: no leader to step down",
                None,
                Some(req(Some("a"), Some("b"), None)),
                None,
            ),
        ];
        for (name, holder, request, want) in rows {
            let mut c = cluster(holder, members());
            c.failover = request.map(|value| Versioned { value, version: 1 });
            let got = pending_switchover(&c);
            let got = got
                .as_ref()
                .map(|s| (s.leader.as_str(), s.candidate.as_deref()));
            assert_eq!(got, want, "{name}");
            let t = topology_from_cluster(&c);
            assert_eq!(t.is_switching_over(), want.is_some(), "{name}: topology");
        }
    }

    #[test]
    fn a_replica_on_a_former_timeline_gets_no_reads() {
        let mut a = member("a", Primary, Running, Some(1));
        a.data.timeline = Some(3);
        a.data.xlog_location = Some(5_000);
        let mut b = member("b", Replica, Running, Some(2));
        b.data.timeline = Some(3);
        let mut c = member("c", Replica, Running, Some(3));
        // Still on timeline 2 and past the leader's position: WAL the leader never had.
        c.data.timeline = Some(2);
        c.data.xlog_location = Some(6_000);
        let t = topology_from_cluster(&cluster(Some("a"), vec![a, b, c]));
        let replicas: Vec<&str> = t.replicas.iter().map(|r| r.member.as_str()).collect();
        assert_eq!(replicas, ["b"]);
    }

    #[test]
    fn backends_carry_host_and_port_from_conn_url() {
        let mut m = member("a", Primary, Running, None);
        m.data.conn_url = Some("postgres://u@[::1]:6432/db".into());
        let t = topology_from_cluster(&cluster(Some("a"), vec![m]));
        let leader = t.leader.unwrap();
        assert_eq!((leader.host.as_str(), leader.port), ("::1", 6432));
        assert_eq!(leader.to_string(), "a at [::1]:6432");
    }

    #[test]
    fn equality_ignores_the_clock() {
        let a = Topology::new(None, vec![]);
        let b = Topology::new(None, vec![]);
        b.dcs_clock.record_read();
        assert_eq!(a, b);
    }

    #[test]
    fn clock_reports_time_since_last_read_or_since_creation() {
        let clock = DcsClock::new();
        let start = clock.0.origin;
        assert_eq!(clock.last_read(), None);
        assert_eq!(
            clock.elapsed_since_read(start + Duration::from_secs(3)),
            Duration::from_secs(3)
        );
        clock.record_read_at(start + Duration::from_secs(10));
        assert_eq!(
            clock.elapsed_since_read(start + Duration::from_secs(12)),
            Duration::from_secs(2)
        );
        assert_eq!(clock.elapsed_since_read(start), Duration::ZERO);
    }
}
