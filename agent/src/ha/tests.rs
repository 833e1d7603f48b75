//! Table-driven tests of `decide`: one row per Patroni rule (reference/patroni.md §6) and failure-table
//! row (§7) that this version implements. Each row builds a cluster view and local state with the
//! small builders below and states the expected actions and reason.

use praetor_config::{DynamicConfig, SyncMode, Tags};
use praetor_dcs::{
    Cluster, Failover, HistoryEntry, Leader, Member, MemberData, MemberState, Role, Status,
    SyncState, Versioned,
};

use super::*;

const ME: &str = "pg1";

fn member(name: &str, role: Role, port: u16, timeline: u32, xlog: u64) -> Member {
    Member {
        name: name.into(),
        data: MemberData {
            conn_url: Some(format!("postgres://127.0.0.1:{port}/postgres")),
            api_url: Some(format!("http://127.0.0.1:{}/patroni", port + 1000)),
            state: MemberState::Running,
            role,
            timeline: Some(timeline),
            xlog_location: Some(xlog),
            ..Default::default()
        },
        version: 1,
    }
}

fn up(name: &str, port: u16) -> Upstream {
    Upstream {
        member: name.into(),
        host: "127.0.0.1".into(),
        port,
    }
}

/// A three-member cluster: pg1 (me, port 5431), pg2 (5432), pg3 (5433); `leader` names the lock holder.
fn cluster(leader: Option<&str>) -> Cluster {
    let role = |n: &str| {
        if Some(n) == leader {
            Role::Primary
        } else {
            Role::Replica
        }
    };
    Cluster {
        initialize: Some("7000".into()),
        config: None,
        leader: leader.map(|l| Leader {
            name: l.into(),
            version: 7,
        }),
        members: vec![
            member("pg1", role("pg1"), 5431, 1, 1000),
            member("pg2", role("pg2"), 5432, 1, 1000),
            member("pg3", role("pg3"), 5433, 1, 1000),
        ],
        failover: None,
        history: None,
        sync: None,
        // Behind the leader's WAL position (1000), so a leader's row publishes it (WriteStatus).
        status: Some(Status {
            optime: 900,
            ..Default::default()
        }),
        failsafe: None,
        proxies: Default::default(),
    }
}

fn running(is_primary: bool, wal: u64, upstream: Option<u16>) -> Postgres {
    Postgres::Running(Running {
        is_primary,
        timeline: 1,
        wal_position: wal,
        upstream: upstream.map(|p| ("127.0.0.1".to_string(), p)),
        standbys: vec![],
        sync_standby_names: String::new(),
        slots: vec![],
    })
}

/// `postgres` (running) on `timeline`.
fn with_timeline(mut postgres: Postgres, timeline: u32) -> Postgres {
    if let Postgres::Running(r) = &mut postgres {
        r.timeline = timeline;
    }
    postgres
}

fn local(postgres: Postgres) -> LocalState {
    LocalState {
        data: DataDir::Initialized {
            sysid: "7000".into(),
        },
        postgres,
        task: None,
        won_initialize: false,
        lock_renewed_ms: None,
        watchdog_timeout_secs: None,
        watchdog: WatchdogState::Off,
        peers: None,
        primary_start_began_ms: None,
        former_leader: None,
        sync_catchup_lsn: 0,
        failsafe_confirmed: None,
        failed_task: None,
        unfenced: None,
        proxies_wait_began_ms: None,
        switchover_wait_began_ms: None,
        slot_copy_at_ms: None,
        failsafe_accepted_ms: None,
        granted_ttl: None,
        retained_members: vec![],
        remote: None,
        remote_recovery: None,
        starting_read_only: false,
        promoted: None,
        renewals_lapsed_ms: None,
        lapsed_at_ms: None,
        lapsed_lock_failures: 0,
        rewind_damage: None,
    }
}

fn peer(name: &str, wal: u64) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        is_running_primary: false,
        is_running: true,
        wal_position: wal,
        timeline: 1,
        nofailover: false,
        failover_priority: 1,
        diverged: false,
        holding_off: false,
        slot_copies: None,
        cluster_unlocked: false,
    }
}

/// A peer holding off the race after its renewals lapsed (`holding_off_ms` in its `/patroni`).
fn lapsed_peer(name: &str, wal: u64) -> PeerStatus {
    PeerStatus {
        holding_off: true,
        ..peer(name, wal)
    }
}

/// A peer that says in `/patroni` whether it holds usable copies of the permanent logical slots
/// (`logical_slot_copies`).
fn copies_peer(name: &str, wal: u64, copies: bool) -> PeerStatus {
    PeerStatus {
        slot_copies: Some(copies),
        ..peer(name, wal)
    }
}

/// A running replica at `wal` streaming from port 5432 that holds a copy of `queue` (PostgreSQL 15:
/// Praetor's copy-and-advance, confirmed at 800), or none.
fn replica_with_queue_copy(wal: u64, copy: bool) -> Postgres {
    with(running(false, wal, Some(5432)), |p| {
        if let Postgres::Running(r) = p {
            r.slots = if copy { vec![queue_copy(800)] } else { vec![] };
        }
    })
}

fn cfg() -> HaConfig {
    HaConfig {
        name: ME.into(),
        tags: Tags::default(),
        dynamic: DynamicConfig {
            ttl: 6,
            loop_wait: 1,
            retry_timeout: 2,
            ..Default::default()
        },
        remove_data_on_diverged: false,
        fence_timeout_ms: u64::from(praetor_config::DEFAULT_FENCE_TIMEOUT_MS),
        remove_data_on_rewind_failure: false,
        clone_without_leader: false,
        pg_major: 15,
    }
}

/// What pg_rewind printed at each attempt after an interrupted one (nemesis seed 79).
const SEED_79_ERROR: &str = "pg_rewind: error: could not read file \"/tmp/n/pg2/pg_wal/000000020000000000000005\": read 0 of 8192";

const NOW: Now = Now {
    mono_ms: 1_000_000,
    unix_secs: 1_800_000_000,
};

fn primary_with(standbys: &[(&str, &str, u64)], guc: &str) -> Postgres {
    Postgres::Running(Running {
        is_primary: true,
        timeline: 1,
        wal_position: 1000,
        upstream: None,
        standbys: standbys
            .iter()
            .map(|(n, s, flush)| sync::Standby {
                name: n.to_string(),
                state: "streaming".into(),
                sync_state: s.to_string(),
                flush_lsn: *flush,
            })
            .collect(),
        sync_standby_names: guc.into(),
        slots: vec![],
    })
}

fn sync_value(members: &[&str]) -> SyncState {
    SyncState {
        leader: Some(ME.into()),
        sync_standby: (!members.is_empty()).then(|| members.join(",")),
        quorum: None,
    }
}

/// A `sync` key written by this member in quorum mode: `voters` comma-separated, `quorum`.
fn quorum_value(voters: &str, quorum: u32) -> SyncState {
    SyncState {
        leader: Some(ME.into()),
        sync_standby: Some(voters.into()),
        quorum: Some(quorum),
    }
}

fn sync_key(members: &[&str]) -> Action {
    Action::WriteSync(sync_value(members))
}

/// The `sync` key the leader pg2 wrote naming `standby` its synchronous standby (version 9).
fn sync_by_pg2(standby: &str) -> Option<Versioned<SyncState>> {
    Some(Versioned {
        value: SyncState {
            leader: Some("pg2".into()),
            sync_standby: Some(standby.into()),
            quorum: None,
        },
        version: 9,
    })
}

/// The fence before promoting, with the bounds `cfg()` gives: the default fence timeout (1 s, under
/// a quarter of ttl 6) for an answer, half the ttl for a shutdown.
fn fence(port: u16) -> Action {
    Action::FencePrimary {
        host: "127.0.0.1".into(),
        port,
        answer_ms: 1000,
        shutdown_ms: 3000,
    }
}

/// No leader, and proxy `px` still routes writes to the former leader pg2.
fn proxy_on_former_leader() -> Cluster {
    with(cluster(None), |c| {
        c.proxies.insert(
            "px".into(),
            praetor_dcs::ProxyState {
                leader: Some("pg2".into()),
                ..Default::default()
            },
        );
    })
}

/// The healthiest replica (pg3 answers behind it), racing for a free lock.
fn racing_replica() -> LocalState {
    with(local(running(false, 1000, Some(5432))), |l| {
        l.peers = Some(vec![peer("pg3", 900)])
    })
}

/// [`racing_replica`] after leader pg2, having waited `ms` for the proxies to leave pg2.
fn racing_replica_waiting_since(ms: u64) -> LocalState {
    with(racing_replica(), |l| {
        l.former_leader = Some(up("pg2", 5432));
        l.proxies_wait_began_ms = Some(NOW.mono_ms - ms);
    })
}

/// A read-only start with nobody to follow.
fn read_only() -> Action {
    Action::Start(StartAs::Replica { upstream: None })
}

/// A `failsafe` key listing `names` with the api_urls `member()` gives them.
fn failsafe_key(names: &[&str]) -> std::collections::BTreeMap<String, String> {
    names
        .iter()
        .map(|n| {
            let port = 5430 + n[2..].parse::<u16>().unwrap();
            (
                n.to_string(),
                format!("http://127.0.0.1:{}/patroni", port + 1000),
            )
        })
        .collect()
}

/// A lock holder's upkeep under `cfg()`: renew the lock, publish `status`, keep the other
/// members' slots, then `more`.
fn upkeep(more: Vec<Action>) -> Vec<Action> {
    let mut actions = vec![Action::RenewLeader, Action::WriteStatus, slots_for_others()];
    actions.extend(more);
    actions
}

/// `pg_promote()` within the demotion window of the renewal right before it, under `cfg()`:
/// `loop_wait` 1 s + `retry_timeout` 2 s.
fn promote() -> Action {
    Action::Promote { within_ms: 3_000 }
}

/// A replica's promotion under `cfg()`: `lock` (taking or renewing the lock), the slots of the
/// other members, the fence of the former primary on port 5432, `between` (the proxies'
/// handshake, synchronous replication armed), then a renewal right before `pg_promote()`.
fn promoting(lock: Action, between: Vec<Action>) -> Vec<Action> {
    let mut actions = vec![lock, slots_for_others(), fence(5432)];
    actions.extend(between);
    actions.extend([Action::RenewLeader, promote()]);
    actions
}

/// `l` with a promotion record: `member` promoted this data directory to timeline 2 at 5000.
fn created_tl2(mut l: LocalState, member: &str) -> LocalState {
    l.promoted = Some(Promotion {
        member: member.into(),
        timeline: 2,
        lsn: 5000,
    });
    l
}

fn slots_for_others() -> Action {
    Action::EnsureSlots(vec!["pg2".into(), "pg3".into()])
}

fn failover(leader: Option<&str>, member: Option<&str>) -> Option<Versioned<Failover>> {
    Some(Versioned {
        value: Failover {
            leader: leader.map(str::to_string),
            member: member.map(str::to_string),
            scheduled_at: None,
        },
        version: 42,
    })
}

struct Row {
    name: &'static str,
    view: Option<Cluster>,
    local: LocalState,
    cfg: HaConfig,
    actions: Vec<Action>,
    reason: fn(&Reason) -> bool,
}

fn row(name: &'static str, view: Option<Cluster>, local: LocalState) -> Row {
    Row {
        name,
        view,
        local,
        cfg: cfg(),
        actions: vec![],
        reason: |_| true,
    }
}

impl Row {
    fn cfg(mut self, f: impl FnOnce(&mut HaConfig)) -> Row {
        f(&mut self.cfg);
        self
    }
    fn expect(mut self, actions: Vec<Action>, reason: fn(&Reason) -> bool) -> Row {
        self.actions = actions;
        self.reason = reason;
        self
    }
}

/// A permanent logical slot `queue` (`test_decoding` in `postgres`) in the dynamic configuration.
fn with_queue_slot(c: &mut HaConfig) {
    c.dynamic.slots.insert(
        "queue".into(),
        praetor_config::dynamic::SlotSpec {
            slot_type: Some("logical".into()),
            database: Some("postgres".into()),
            plugin: Some("test_decoding".into()),
        },
    );
}

fn queue_slot() -> slots::LogicalSlot {
    slots::LogicalSlot {
        name: "queue".into(),
        database: "postgres".into(),
        plugin: "test_decoding".into(),
        failover: false,
        lost_from: None,
    }
}

/// Leader pg2 publishes the permanent slot `queue` at 800 in `status`.
fn queue_published_at_800() -> Cluster {
    with(cluster(Some("pg2")), |c| {
        c.status = Some(Status {
            optime: 900,
            slots: Some([("queue".to_string(), 800u64)].into()),
            retain_slots: None,
        })
    })
}

/// This member's `queue` slot, confirmed up to `confirmed`.
fn queue_copy(confirmed: u64) -> slots::Slot {
    slots::Slot {
        name: "queue".into(),
        physical: false,
        restart_lsn: confirmed,
        database: Some("postgres".into()),
        plugin: Some("test_decoding".into()),
        confirmed_flush_lsn: confirmed,
        failover: false,
        synced: false,
        invalidated: false,
    }
}

fn with<T>(mut v: T, f: impl FnOnce(&mut T)) -> T {
    f(&mut v);
    v
}

fn rows() -> Vec<Row> {
    use Action::*;
    let empty = |l: LocalState| LocalState {
        data: DataDir::Empty,
        postgres: Postgres::Stopped { control: None },
        ..l
    };
    let stopped_with = |state, timeline, lsn| {
        local(Postgres::Stopped {
            control: Some(ControlData {
                state,
                timeline,
                checkpoint_lsn: lsn,
                min_recovery_end_lsn: 0,
                min_recovery_end_timeline: 0,
                rewindable: true,
            }),
        })
    };
    let on_tl2 = |mut c: Cluster| {
        for m in &mut c.members {
            m.data.timeline = Some(2);
        }
        c.history = Some(Versioned {
            value: vec![HistoryEntry {
                timeline: 1,
                lsn: 5000,
                reason: "no recovery target specified".into(),
                timestamp: None,
                new_leader: Some("pg2".into()),
            }],
            version: 3,
        });
        c
    };
    vec![
        // --- §6: data directory empty ------------------------------------------------------------
        row(
            "empty data dir, no cluster: race for initialize and bootstrap",
            Some(Cluster::default()),
            empty(local(running(false, 0, None))),
        )
        .expect(vec![RaceInitialize, Bootstrap], |r| {
            *r == Reason::BootstrappingNewCluster
        }),
        row(
            "empty data dir, no cluster, nofailover: do not bootstrap",
            Some(Cluster::default()),
            empty(local(running(false, 0, None))),
        )
        .cfg(|c| c.tags.nofailover = true)
        .expect(vec![], |r| *r == Reason::WaitingForLeaderToBootstrap),
        row(
            "empty data dir, cluster with leader: clone from the leader",
            Some(cluster(Some("pg2"))),
            empty(local(running(false, 0, None))),
        )
        .expect(
            vec![Clone {
                source: up("pg2", 5432),
                leader: up("pg2", 5432),
            }],
            |r| matches!(r, Reason::BootstrapFromLeader { source } if source == "pg2"),
        ),
        row(
            "empty data dir: prefer a running member tagged clonefrom",
            Some(with(cluster(Some("pg2")), |c| {
                c.members[2].data.tags.clonefrom = true
            })),
            empty(local(running(false, 0, None))),
        )
        .expect(
            vec![Clone {
                source: up("pg3", 5433),
                leader: up("pg2", 5432),
            }],
            |_| true,
        ),
        row(
            "empty data dir, no leader: wait for one",
            Some(cluster(None)),
            empty(local(running(false, 0, None))),
        )
        .expect(vec![], |r| *r == Reason::WaitingForLeaderToBootstrap),
        row(
            "empty data dir, no leader, a no_leader replica method: clone without leader",
            Some(cluster(None)),
            empty(local(running(false, 0, None))),
        )
        .cfg(|c| c.clone_without_leader = true)
        .expect(vec![CloneWithoutLeader], |r| {
            *r == Reason::BootstrapWithoutLeader
        }),
        row(
            "empty data dir, bootstrap under way, a no_leader replica method: wait",
            Some(with(cluster(None), |c| c.initialize = Some(String::new()))),
            empty(local(running(false, 0, None))),
        )
        .cfg(|c| c.clone_without_leader = true)
        .expect(vec![], |r| *r == Reason::WaitingForLeaderToBootstrap),
        row(
            "empty data dir, bootstrap under way elsewhere: wait",
            Some(with(cluster(None), |c| c.initialize = Some(String::new()))),
            empty(local(running(false, 0, None))),
        )
        .expect(vec![], |r| *r == Reason::WaitingForLeaderToBootstrap),
        row(
            "system identifier differs from initialize: fatal, never join the wrong cluster",
            Some(with(cluster(Some("pg2")), |c| {
                c.initialize = Some("9999".into())
            })),
            local(running(false, 1000, Some(5432))),
        )
        .expect(
            vec![Fatal(
                "system ID mismatch, node belongs to a different cluster: 7000 != 9999".into(),
            )],
            |r| matches!(r, Reason::SysidMismatch { .. }),
        ),
        row(
            "bootstrap winner finished: publish sysid and take the lock",
            Some(with(cluster(None), |c| c.initialize = Some(String::new()))),
            with(local(running(true, 100, None)), |l| l.won_initialize = true),
        )
        .expect(
            vec![
                PublishInitialize {
                    sysid: "7000".into(),
                },
                AcquireLeader,
                WriteStatus,
            ],
            |r| *r == Reason::InitializedNewCluster,
        ),
        row(
            "data exists but initialize key is missing: publish our sysid",
            Some(with(cluster(None), |c| c.initialize = None)),
            local(running(false, 1000, None)),
        )
        .expect(
            vec![CreateInitialize {
                sysid: "7000".into(),
            }],
            |_| true,
        ),
        // --- background tasks ----------------------------------------------------------------------
        row(
            "task in progress while holding the lock: keep the lock only",
            Some(cluster(Some(ME))),
            with(local(Postgres::Starting), |l| l.task = Some(Task::Start)),
        )
        .expect(vec![RenewLeader], |r| {
            matches!(r, Reason::TaskInProgress { .. })
        }),
        row(
            "task in progress as a replica: nothing",
            Some(cluster(Some("pg2"))),
            with(local(Postgres::Starting), |l| l.task = Some(Task::Clone)),
        )
        .expect(vec![], |r| matches!(r, Reason::TaskInProgress { .. })),
        row(
            "postgres starting while holding the lock: keep the lock",
            Some(cluster(Some(ME))),
            local(Postgres::Starting),
        )
        .expect(vec![RenewLeader], |r| *r == Reason::WaitingForPostgres),
        // --- §6: leader ----------------------------------------------------------------------------
        row(
            "healthy leader: renew, publish status, keep slots",
            Some(cluster(Some(ME))),
            local(running(true, 1000, None)),
        )
        .expect(upkeep(vec![]), |r| {
            r.to_string() == "no action. I am (pg1), the leader with the lock"
        }),
        row(
            "idle leader whose status already holds its WAL position: renew only, write nothing",
            Some(with(cluster(Some(ME)), |c| {
                c.status = Some(Status {
                    optime: 1000,
                    ..Default::default()
                })
            })),
            local(running(true, 1000, None)),
        )
        .expect(vec![RenewLeader, slots_for_others()], |_| true),
        row(
            "leader that promoted over a silent former primary: keeps fencing it in the background",
            Some(cluster(Some(ME))),
            with(local(running(true, 1000, None)), |l| {
                l.unfenced = Some(("127.0.0.1".into(), 5432))
            }),
        )
        .expect(
            vec![
                RenewLeader,
                WriteStatus,
                slots_for_others(),
                FenceInBackground {
                    host: "127.0.0.1".into(),
                    port: 5432,
                },
            ],
            |_| true,
        ),
        row(
            "promotion: the fence's answer wait is bounded by a quarter of the lease",
            Some(cluster(None)),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)])
            }),
        )
        .cfg(|c| c.fence_timeout_ms = 60_000)
        .expect(
            vec![
                AcquireLeader,
                slots_for_others(),
                FencePrimary {
                    host: "127.0.0.1".into(),
                    port: 5432,
                    answer_ms: 1500,
                    shutdown_ms: 3000,
                },
                RenewLeader,
                promote(),
            ],
            |_| true,
        ),
        row(
            "healthy leader without use_slots: no slots",
            Some(cluster(Some(ME))),
            local(running(true, 1000, None)),
        )
        .cfg(|c| c.dynamic.postgresql.use_slots = false)
        .expect(vec![RenewLeader, WriteStatus], |_| true),
        row(
            "leader on a new timeline without history: record it",
            Some(cluster(Some(ME))),
            local(Postgres::Running(Running {
                is_primary: true,
                timeline: 2,
                wal_position: 1000,
                upstream: None,
                standbys: vec![],
                sync_standby_names: String::new(),
                slots: vec![],
            })),
        )
        .expect(
            upkeep(vec![UpdateHistory]),
            |_| true,
        ),
        row(
            "lock holder is still a replica: promote",
            Some(cluster(Some(ME))),
            local(running(false, 1000, Some(5432))),
        )
        .expect(promoting(RenewLeader, vec![]), |r| {
            *r == Reason::PromotedBecauseHadLock
        }),
        row(
            "lock holder still a replica whose former primary left the fence unanswered: the next \
             fence only checks whether it answers now (nemesis ZooKeeper strict seed 27)",
            Some(cluster(Some(ME))),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.unfenced = Some(("127.0.0.1".into(), 5432))
            }),
        )
        .expect(
            vec![
                RenewLeader,
                slots_for_others(),
                FencePrimary {
                    host: "127.0.0.1".into(),
                    port: 5432,
                    answer_ms: crate::ha::FENCE_RECHECK_MS,
                    shutdown_ms: 3000,
                },
                RenewLeader,
                promote(),
            ],
            |r| *r == Reason::PromotedBecauseHadLock,
        ),
        row(
            "lock holder still a replica past its demotion deadline (a DCS slower than the time \
             its promotion's fence and handshake left): not stopped, renews and goes on promoting \
             (nemesis: no convergence while etcd or ZooKeeper answered in >2 s)",
            Some(cluster(Some(ME))),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 5000)
            }),
        )
        .expect(promoting(RenewLeader, vec![]), |r| {
            *r == Reason::PromotedBecauseHadLock
        }),
        row(
            "lock holder still a replica, DCS unreachable past its demotion deadline: nothing to \
             stop (it acknowledges no write)",
            None,
            with(local(running(false, 1000, Some(5432))), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 5000)
            }),
        )
        .expect(vec![], |r| *r == Reason::DcsInaccessible),
        row(
            "§7 primary: PostgreSQL stops: lock holder restarts it as primary",
            Some(cluster(Some(ME))),
            local(Postgres::Stopped { control: None }),
        )
        .expect(vec![RenewLeader, Start(StartAs::Primary)], |r| {
            *r == Reason::StartingPrimaryAfterFailure
        }),
        row(
            "§7 lock holder whose PostgreSQL stopped before its promotion (a replica's data): \
             restarts read-only, to be promoted onto a new timeline (nemesis netns seed 1)",
            Some(cluster(Some(ME))),
            stopped_with(ClusterState::InArchiveRecovery, 1, 6000),
        )
        .expect(
            vec![RenewLeader, Start(StartAs::Replica { upstream: None })],
            |r| *r == Reason::StartingReadOnlyWithLock,
        ),
        row(
            "§7 lock holder whose primary crashed (in production): restarts it as primary",
            Some(cluster(Some(ME))),
            stopped_with(ClusterState::InProduction, 1, 6000),
        )
        .expect(vec![RenewLeader, Start(StartAs::Primary)], |r| {
            *r == Reason::StartingPrimaryAfterFailure
        }),
        // --- a leader whose DCS link is slow but alive (issue 14, `lapsed`) -----------------------
        row(
            "lapsed renewals: the deadline stopped the lock holder's primary but its lock lives on \
             (a slow ZooKeeper link): give the lock up instead of restarting it as primary (the old \
             rule promoted again, a new timeline each cycle; nemesis ZooKeeper strict seed 9)",
            Some(cluster(Some(ME))),
            with(stopped_with(ClusterState::InProduction, 1, 6000), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000)
            }),
        )
        .expect(vec![ReleaseLeader], |r| {
            *r == Reason::ReleasingLockRenewalsLapsed
        }),
        row(
            "lapsed renewals: the lock holder restarted read-only still holds the lock: give it up \
             rather than promote it (the lock is its own, but it cannot keep it)",
            Some(cluster(Some(ME))),
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
                l.lock_renewed_ms = Some(NOW.mono_ms - 500);
            }),
        )
        .expect(vec![ReleaseLeader], |r| {
            *r == Reason::ReleasingLockRenewalsLapsed
        }),
        row(
            "lapsed renewals, a read-only restart under way: give the lock up, the start goes on",
            Some(cluster(Some(ME))),
            with(local(Postgres::Starting), |l| {
                l.task = Some(Task::Start);
                l.starting_read_only = true;
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
            }),
        )
        .expect(vec![ReleaseLeader], |r| {
            *r == Reason::ReleasingLockRenewalsLapsed
        }),
        row(
            "lapsed renewals, a start as primary under way: abort it, stop, then give the lock up \
             (nothing writable without the lock)",
            Some(cluster(Some(ME))),
            with(local(Postgres::Starting), |l| {
                l.task = Some(Task::Start);
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
            }),
        )
        .expect(
            vec![AbortTask, Stop(StopMode::Immediate), ReleaseLeader],
            |r| *r == Reason::ReleasingLockRenewalsLapsed,
        ),
        row(
            "lapsed renewals, the hold-off (ttl) over while the DCS reads timed out, the lock still \
             its own (a ZooKeeper session kept alive by slow pings): give it up, never restart it \
             as primary (the old rule did: nemesis ZooKeeper strict seed 1, timeline 4, 12.29 s \
             write gap)",
            Some(cluster(Some(ME))),
            with(stopped_with(ClusterState::InProduction, 1, 6000), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 30_000)
            }),
        )
        .expect(vec![ReleaseLeader], |r| {
            *r == Reason::ReleasingLockRenewalsLapsed
        }),
        row(
            "lapsed renewals, the hold-off over, restarted read-only with the lock still its own and \
             a renewal just done: give it up rather than promote \"because I had the session lock\"",
            Some(cluster(Some(ME))),
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 30_000);
                l.lock_renewed_ms = Some(NOW.mono_ms - 500);
            }),
        )
        .expect(vec![ReleaseLeader], |r| {
            *r == Reason::ReleasingLockRenewalsLapsed
        }),
        row(
            "lapsed renewals, the hold-off over, a start as primary under way with the lock still \
             its own: abort it, stop, give the lock up",
            Some(cluster(Some(ME))),
            with(local(Postgres::Starting), |l| {
                l.task = Some(Task::Start);
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 30_000);
            }),
        )
        .expect(
            vec![AbortTask, Stop(StopMode::Immediate), ReleaseLeader],
            |r| *r == Reason::ReleasingLockRenewalsLapsed,
        ),
        // --- the release itself keeps failing (issue 14): the session goes instead ---------------
        row(
            "lapsed renewals, the lock still its own and its last 3 releases failed (1 + \
             retry_timeout 2 / loop_wait 1): give up the DCS session, the ephemeral lock with it \
             (the old rule tried the delete again for ever while the slow link's pings kept the \
             ZooKeeper session alive: nobody could lead)",
            Some(cluster(Some(ME))),
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 30_000);
                l.lapsed_lock_failures = 3;
            }),
        )
        .expect(vec![DropDcsSession], |r| {
            *r == Reason::DroppingDcsSessionReleasesFailed { failed: 3 }
        }),
        row(
            "lapsed renewals, 2 failed releases in a row (fewer than 1 + retry_timeout / \
             loop_wait): try the release again",
            Some(cluster(Some(ME))),
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 30_000);
                l.lapsed_lock_failures = 2;
            }),
        )
        .expect(vec![ReleaseLeader], |r| {
            *r == Reason::ReleasingLockRenewalsLapsed
        }),
        row(
            "lapsed renewals, releases failing, retry_timeout 10 and loop_wait 1: 10 more tries \
             (11) before the session goes, so 3 failures try again",
            Some(cluster(Some(ME))),
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
                l.lapsed_lock_failures = 3;
            }),
        )
        .cfg(|c| c.dynamic.retry_timeout = 10)
        .expect(vec![ReleaseLeader], |r| {
            *r == Reason::ReleasingLockRenewalsLapsed
        }),
        row(
            "lapsed renewals, releases failing, a start as primary under way: abort it and stop \
             before the session goes (nothing writable without the lock)",
            Some(cluster(Some(ME))),
            with(local(Postgres::Starting), |l| {
                l.task = Some(Task::Start);
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
                l.lapsed_lock_failures = 5;
            }),
        )
        .expect(
            vec![AbortTask, Stop(StopMode::Immediate), DropDcsSession],
            |r| *r == Reason::DroppingDcsSessionReleasesFailed { failed: 5 },
        ),
        row(
            "lapsed renewals, releases failing, while paused: no automatic failover, the session \
             and the lock are kept",
            Some(cluster(Some(ME))),
            with(local(running(true, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
                l.lapsed_lock_failures = 3;
                l.lock_renewed_ms = Some(NOW.mono_ms - 500);
            }),
        )
        .cfg(|c| c.dynamic.pause = true)
        .expect(upkeep(vec![]), |r| matches!(r, Reason::Paused { .. })),
        // --- the DCS cannot even be read (issue 14, nemesis ZooKeeper strict seed 3): the lock
        // may still live on the session, and nothing would release it before the link heals ---
        row(
            "lapsed renewals, demoted, the DCS unreadable for its last 3 tries (1 + retry_timeout 2 \
             / loop_wait 1) while the lock may still be its own: give up the DCS session unseen \
             (the old rule waited for a read that got through: 21.27 s without writes, for ever \
             on a link that stays slow)",
            None,
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 9_000);
                l.lapsed_lock_failures = 3;
            }),
        )
        .expect(vec![DropDcsSession], |r| {
            *r == Reason::DroppingDcsSessionDcsUnreadable { failed: 3 }
        }),
        row(
            "lapsed renewals, the DCS unreadable for 2 tries: wait for the next read",
            None,
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 6_000);
                l.lapsed_lock_failures = 2;
            }),
        )
        .expect(vec![], |r| *r == Reason::DcsInaccessible),
        row(
            "the DCS unreadable, no lapse (a replica, or a lock given up since): nothing to give up",
            None,
            with(local(running(false, 1000, None)), |l| {
                l.lapsed_lock_failures = 3;
            }),
        )
        .expect(vec![], |r| *r == Reason::DcsInaccessible),
        row(
            "lapsed renewals, the DCS unreadable, the last configuration read paused: no automatic \
             failover, the session is kept",
            None,
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 9_000);
                l.lapsed_lock_failures = 3;
            }),
        )
        .cfg(|c| c.dynamic.pause = true)
        .expect(vec![], |r| matches!(r, Reason::Paused { inner } if **inner == Reason::DcsInaccessible)),
        row(
            "lapsed renewals, the DCS unreadable, a primary still up past its deadline: demote \
             first (the session goes on a later cycle, once nothing may accept writes)",
            None,
            with(local(running(true, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 9_000);
                l.lapsed_lock_failures = 3;
                l.lock_renewed_ms = Some(NOW.mono_ms - 30_000);
            }),
        )
        .expect(
            vec![Stop(StopMode::Immediate), Start(StartAs::Replica { upstream: None })],
            |r| *r == Reason::DemotingDcsInaccessible,
        ),
        row(
            "no lapse (or the lock taken anew since): the lock holder restarts its primary",
            Some(cluster(Some(ME))),
            stopped_with(ClusterState::InProduction, 1, 6000),
        )
        .expect(vec![RenewLeader, Start(StartAs::Primary)], |r| {
            *r == Reason::StartingPrimaryAfterFailure
        }),
        row(
            "lapsed renewals while paused: no automatic failover, the lock is kept",
            Some(cluster(Some(ME))),
            with(local(running(true, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
                l.lock_renewed_ms = Some(NOW.mono_ms - 500);
            }),
        )
        .cfg(|c| c.dynamic.pause = true)
        .expect(upkeep(vec![]), |r| matches!(r, Reason::Paused { .. })),
        row(
            "lapsed renewals, nobody holds the lock: the healthiest member holds off the race, \
             so one with a healthier DCS link leads",
            Some(cluster(None)),
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
                l.peers = Some(vec![peer("pg3", 900)]);
            }),
        )
        .expect(vec![], |r| {
            *r == Reason::HoldingOffAfterLapsedRenewals { in_ms: 5_000 }
        }),
        row(
            "lapsed renewals, released 1 s ago, the lapse itself a ttl ago, and no other member \
             could take the lock (tagged nofailover, stopped): the hold-off counted from the \
             lapse is over, race (sim seed 22,134: counted from the release, ttl without a leader \
             after a DCS outage whose end refreshed the lock)",
            Some(cluster(None)),
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
                l.lapsed_at_ms = Some(NOW.mono_ms - 7000);
                l.peers = Some(vec![
                    PeerStatus { nofailover: true, ..peer("pg3", 900) },
                    PeerStatus { is_running: false, ..peer("pg2", 0) },
                ]);
            }),
        )
        .expect(vec![AcquireLeader, slots_for_others(), RenewLeader, promote()], |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "lapsed renewals, released 1 s ago, the lapse itself a ttl ago, another member could \
             take the lock: the hold-off counts from the release, so that member gets ttl",
            Some(cluster(None)),
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
                l.lapsed_at_ms = Some(NOW.mono_ms - 7000);
                l.peers = Some(vec![peer("pg3", 900)]);
            }),
        )
        .expect(vec![], |r| {
            *r == Reason::HoldingOffAfterLapsedRenewals { in_ms: 5_000 }
        }),
        row(
            "lapsed renewals, nobody holds the lock, the only other member holds off too (every \
             member's DCS link is slow): hold off, the hold-offs pace the turns at leading",
            Some(cluster(None)),
            with(local(running(false, 1000, None)), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 1000);
                l.peers = Some(vec![lapsed_peer("pg3", 900)]);
            }),
        )
        .expect(vec![], |r| {
            *r == Reason::HoldingOffAfterLapsedRenewals { in_ms: 5_000 }
        }),
        row(
            "lapsed renewals, the hold-off over (every member's link is slow): race again, the \
             cluster gets a leader",
            Some(cluster(None)),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.renewals_lapsed_ms = Some(NOW.mono_ms - 30_000);
                l.peers = Some(vec![peer("pg3", 900)]);
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        // --- the others' side of a hold-off (issue 14): nobody defers to a member holding off --------
        row(
            "a peer ahead on WAL holds off after its renewals lapsed (the former leader): not \
             deferred to, this member takes the lock (the old rule found pg2 healthier and waited \
             out its hold-off, ttl without a leader)",
            Some(cluster(None)),
            with(local(running(false, 900, Some(5432))), |l| {
                l.peers = Some(vec![lapsed_peer("pg2", 1000), peer("pg3", 800)]);
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "the same peer ahead not holding off: deferred to, as before",
            Some(cluster(None)),
            with(local(running(false, 900, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 800)]);
            }),
        )
        .expect(vec![], |r| {
            *r == Reason::NotHealthiest {
                better: "pg2".into(),
            }
        }),
        row(
            "a peer holding off is skipped, the next healthiest one is still deferred to",
            Some(cluster(None)),
            with(local(running(false, 900, Some(5432))), |l| {
                l.peers = Some(vec![lapsed_peer("pg2", 1000), peer("pg3", 950)]);
            }),
        )
        .expect(vec![], |r| {
            *r == Reason::NotHealthiest {
                better: "pg3".into(),
            }
        }),
        row(
            "a peer holding off whose PostgreSQL still runs as primary stops the race",
            Some(cluster(None)),
            with(local(running(false, 900, Some(5432))), |l| {
                l.peers = Some(vec![PeerStatus {
                    is_running_primary: true,
                    ..lapsed_peer("pg2", 1000)
                }]);
            }),
        )
        .expect(vec![], |r| {
            matches!(r, Reason::NotHealthiest { better } if better.contains("still running as primary"))
        }),
        row(
            "sync on: a peer holding off is not deferred to, but a member the sync key does not \
             list still may not be promoted",
            Some(with(cluster(None), |c| {
                c.sync = sync_by_pg2("pg3");
            })),
            with(local(running(false, 900, Some(5432))), |l| {
                l.peers = Some(vec![lapsed_peer("pg2", 1000), peer("pg3", 800)]);
            }),
        )
        .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
        .expect(vec![], |r| *r == Reason::NotSynchronousStandby),
        row(
            "sync on: the listed synchronous standby takes the lock while the former leader, \
             ahead, holds off",
            Some(with(cluster(None), |c| {
                c.sync = sync_by_pg2(ME);
            })),
            with(local(running(false, 900, Some(5432))), |l| {
                l.peers = Some(vec![lapsed_peer("pg2", 1000), peer("pg3", 950)]);
            }),
        )
        .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "a switchover's candidate holding off is still waited for (it races anyway)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg3"), Some("pg2"))
            })),
            with(local(running(false, 900, Some(5433))), |l| {
                l.peers = Some(vec![lapsed_peer("pg2", 1000)]);
            }),
        )
        .expect(vec![], |r| {
            *r == Reason::WaitingForCandidate {
                candidate: "pg2".into(),
            }
        }),
        row(
            "the leader that stepped down for a switchover races again when the only other \
             member that could take the lock, ahead of it, holds off (the old rule waited for it)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), None)
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![lapsed_peer("pg2", 1100)]);
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        // --- issue 14: a usable copy of every permanent logical slot breaks a tie on WAL and priority
        row(
            "equal on WAL and priority, only the peer holds a usable copy of `queue`: deferred to \
             (the old rule raced, and the member without the copy could win and lose the slot)",
            Some(cluster(None)),
            with(local(replica_with_queue_copy(1000, false)), |l| {
                l.peers = Some(vec![copies_peer("pg2", 1000, true), copies_peer("pg3", 900, false)]);
            }),
        )
        .cfg(with_queue_slot)
        .expect(vec![], |r| {
            *r == Reason::NotHealthiest {
                better: "pg2".into(),
            }
        }),
        row(
            "equal on WAL and priority, this member holds the copy, the peer not: it takes the lock",
            Some(cluster(None)),
            with(local(replica_with_queue_copy(1000, true)), |l| {
                l.peers = Some(vec![copies_peer("pg2", 1000, false)]);
            }),
        )
        .cfg(with_queue_slot)
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "the copy holder is behind on WAL: it loses, this member (ahead, no copy) takes the lock \
             (the WAL is every client's data, the slot one consumer's position)",
            Some(cluster(None)),
            with(local(replica_with_queue_copy(1000, false)), |l| {
                l.peers = Some(vec![copies_peer("pg2", 999, true)]);
            }),
        )
        .cfg(with_queue_slot)
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "this member holds the copy but is behind on WAL: the peer ahead without one is \
             deferred to",
            Some(cluster(None)),
            with(local(replica_with_queue_copy(999, true)), |l| {
                l.peers = Some(vec![copies_peer("pg2", 1000, false)]);
            }),
        )
        .cfg(with_queue_slot)
        .expect(vec![], |r| {
            *r == Reason::NotHealthiest {
                better: "pg2".into(),
            }
        }),
        row(
            "a Patroni peer (no `logical_slot_copies`) equal on WAL: no preference, this member \
             without a copy races as before",
            Some(cluster(None)),
            with(local(replica_with_queue_copy(1000, false)), |l| {
                l.peers = Some(vec![peer("pg2", 1000)]);
            }),
        )
        .cfg(with_queue_slot)
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "failover_priority decides before copies: a higher-priority peer without a copy is \
             deferred to (Patroni's order: WAL, then priority)",
            Some(cluster(None)),
            with(local(replica_with_queue_copy(1000, true)), |l| {
                l.peers = Some(vec![PeerStatus {
                    failover_priority: 2,
                    ..copies_peer("pg2", 1000, false)
                }]);
            }),
        )
        .cfg(with_queue_slot)
        .expect(vec![], |r| {
            *r == Reason::NotHealthiest {
                better: "pg2".into(),
            }
        }),
        row(
            "sync on: a copy holder the sync key does not list is not deferred to; the listed \
             synchronous standby, without a copy, takes the lock",
            Some(with(cluster(None), |c| {
                c.sync = sync_by_pg2(ME);
            })),
            with(local(replica_with_queue_copy(1000, false)), |l| {
                l.peers = Some(vec![copies_peer("pg3", 1000, true)]);
            }),
        )
        .cfg(|c| {
            with_queue_slot(c);
            c.dynamic.synchronous_mode = SyncMode::On;
        })
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "sync on: a member the sync key does not list may not be promoted, copy or not",
            Some(with(cluster(None), |c| {
                c.sync = sync_by_pg2("pg3");
            })),
            with(local(replica_with_queue_copy(1000, true)), |l| {
                l.peers = Some(vec![copies_peer("pg3", 1000, false)]);
            }),
        )
        .cfg(|c| {
            with_queue_slot(c);
            c.dynamic.synchronous_mode = SyncMode::On;
        })
        .expect(vec![], |r| *r == Reason::NotSynchronousStandby),
        row(
            "the leader that stepped down for a switchover, holding the copy, races again when \
             the only other member is equal on WAL without one (that member waits for it: \
             stepping down for it too left nobody racing)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), None)
            })),
            with(local(replica_with_queue_copy(1000, true)), |l| {
                l.peers = Some(vec![copies_peer("pg2", 1000, false)]);
            }),
        )
        .cfg(with_queue_slot)
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        // --- §6: replica ---------------------------------------------------------------------------
        row(
            "replica following the leader: no action",
            Some(cluster(Some("pg2"))),
            local(running(false, 1000, Some(5432))),
        )
        .expect(vec![], |r| {
            r.to_string() == "no action. I am (pg1), a secondary, and following a leader (pg2)"
        }),
        row(
            "replica following someone else: re-point at the leader",
            Some(cluster(Some("pg2"))),
            local(running(false, 1000, Some(5433))),
        )
        .expect(vec![Follow(Some(up("pg2", 5432)))], |r| {
            matches!(r, Reason::ChangingPrimaryConninfo { .. })
        }),
        row(
            "§7 replica: not leader but PostgreSQL is a primary: demote",
            Some(cluster(Some("pg2"))),
            local(running(true, 1000, None)),
        )
        .expect(vec![Stop(StopMode::Immediate)], |r| {
            matches!(r, Reason::DemotingNoLock { leader: Some(_) })
        }),
        // --- item 11: a member that diverged is rewound, never served as a replica as it is ----------
        row(
            "no leader, stopped data directory past the cluster's switch point: not started read-only",
            Some(with(on_tl2(cluster(None)), |c| c.members.retain(|m| m.name != "pg2"))),
            stopped_with(ClusterState::ShutDownInRecovery, 1, 6000),
        )
        .expect(vec![], |r| {
            matches!(r, Reason::Diverged { timeline: 1, switch_lsn: 5000, stopping: false })
        }),
        row(
            "no leader, crashed former primary on a timeline the cluster left: crash recovery first",
            Some(on_tl2(cluster(None))),
            stopped_with(ClusterState::InProduction, 1, 4000),
        )
        .expect(vec![CrashRecovery], |_| true),
        row(
            "no leader, crashed primary on the latest timeline: started read-only (recovers itself)",
            Some(cluster(None)),
            stopped_with(ClusterState::InProduction, 1, 4000),
        )
        .expect(vec![Start(StartAs::Replica { upstream: None })], |_| true),
        row(
            "no leader, stopped replica before the switch point: started read-only",
            Some(on_tl2(cluster(None))),
            stopped_with(ClusterState::ShutDownInRecovery, 1, 4000),
        )
        .expect(vec![Start(StartAs::Replica { upstream: None })], |r| {
            *r == Reason::StartingAsSecondary
        }),
        row(
            "running replica left on a former timeline past the switch point: stop it to rewind",
            Some(on_tl2(cluster(Some("pg2")))),
            local(running(false, 6000, Some(5432))),
        )
        .expect(vec![Stop(StopMode::Fast)], |r| {
            matches!(r, Reason::Diverged { timeline: 1, switch_lsn: 5000, stopping: true })
        }),
        row(
            "running replica on a former timeline before the switch point: follow",
            Some(on_tl2(cluster(Some("pg2")))),
            local(running(false, 4000, Some(5432))),
        )
        .expect(vec![], |r| matches!(r, Reason::Following { .. })),
        row(
            "stopped replica that replayed past the switch point, leader on timeline 2: rewind",
            Some(on_tl2(cluster(Some("pg2")))),
            stopped_with(ClusterState::ShutDownInRecovery, 1, 6000),
        )
        .cfg(|c| c.dynamic.postgresql.use_pg_rewind = true)
        .expect(vec![Rewind(up("pg2", 5432))], |_| true),
        // --- issue 14: two promotions from one point, one timeline number (sim seed 213686) --------
        row(
            "stopped on timeline 2, which its promotion record says it created, while history says \
             pg2 created timeline 2: another branch under one number, stays stopped (pg_rewind \
             sees the same timeline and would rewind nothing)",
            Some(on_tl2(cluster(Some("pg2")))),
            created_tl2(stopped_with(ClusterState::ShutDown, 2, 6000), ME),
        )
        .cfg(|c| c.dynamic.postgresql.use_pg_rewind = true)
        .expect(vec![], |r| {
            *r == Reason::BranchOfAnotherLeader {
                timeline: 2,
                leader: "pg2".into(),
                stopping: false,
            }
        }),
        row(
            "the same without a leader: not started read-only (it would race with WAL the \
             cluster never had)",
            Some(on_tl2(cluster(None))),
            created_tl2(stopped_with(ClusterState::ShutDown, 2, 6000), ME),
        )
        .expect(vec![], |r| {
            matches!(r, Reason::BranchOfAnotherLeader { stopping: false, .. })
        }),
        row(
            "the same with remove_data_directory_on_diverged_timelines: removed to be cloned again",
            Some(on_tl2(cluster(Some("pg2")))),
            created_tl2(stopped_with(ClusterState::ShutDown, 2, 6000), ME),
        )
        .cfg(|c| c.remove_data_on_diverged = true)
        .expect(vec![RemoveDataDirectory], |r| {
            *r == Reason::RemovingDivergedDataDirectory
        }),
        row(
            "running replica on another promotion's timeline 2: stopped, never followed",
            Some(on_tl2(cluster(Some("pg2")))),
            created_tl2(local(with_timeline(running(false, 6000, Some(5432)), 2)), ME),
        )
        .expect(vec![Stop(StopMode::Fast)], |r| {
            matches!(r, Reason::BranchOfAnotherLeader { timeline: 2, stopping: true, .. })
        }),
        row(
            "running replica on another promotion's timeline 2, no leader: stopped, not racing",
            Some(on_tl2(cluster(None))),
            created_tl2(local(with_timeline(running(false, 6000, None), 2)), ME),
        )
        .expect(vec![Stop(StopMode::Fast)], |r| {
            matches!(r, Reason::BranchOfAnotherLeader { stopping: true, .. })
        }),
        row(
            "a record copied with the leader's data (clone, pg_rewind) names the leader: follow",
            Some(on_tl2(cluster(Some("pg2")))),
            created_tl2(local(with_timeline(running(false, 6000, Some(5432)), 2)), "pg2"),
        )
        .expect(vec![], |r| matches!(r, Reason::Following { .. })),
        row(
            "stopped on timeline 2 it created, leader pg2 on timeline 2, no history line yet: wait \
             for pg2's line (whether both are one branch is known from it)",
            Some(with(on_tl2(cluster(Some("pg2"))), |c| c.history = None)),
            created_tl2(stopped_with(ClusterState::ShutDown, 2, 6000), ME),
        )
        .expect(vec![], |r| *r == Reason::WaitingForHistory),
        row(
            "leader on timeline 2 it created, whose history line names pg2 (it promoted to the \
             same number and wrote it before freezing): the line is rewritten",
            Some(on_tl2(cluster(Some(ME)))),
            created_tl2(local(with_timeline(running(true, 1000, None), 2)), ME),
        )
        .expect(upkeep(vec![UpdateHistory]), |_| true),
        row(
            "§7 replica: PostgreSQL stops: start it again following the leader",
            Some(cluster(Some("pg2"))),
            stopped_with(ClusterState::ShutDownInRecovery, 1, 900),
        )
        .expect(
            vec![Start(StartAs::Replica {
                upstream: Some(up("pg2", 5432)),
            })],
            |_| true,
        ),
        row(
            "stopped, no leader: start read-only and join the race next loop",
            Some(cluster(None)),
            local(Postgres::Stopped { control: None }),
        )
        .expect(vec![Start(StartAs::Replica { upstream: None })], |r| {
            *r == Reason::StartingAsSecondary
        }),
        row(
            "former primary stopped cleanly before the switch point: start as replica",
            Some(on_tl2(cluster(Some("pg2")))),
            stopped_with(ClusterState::ShutDown, 1, 4000),
        )
        .expect(
            vec![Start(StartAs::Replica {
                upstream: Some(up("pg2", 5432)),
            })],
            |_| true,
        ),
        row(
            "former primary diverged, use_pg_rewind on: rewind",
            Some(on_tl2(cluster(Some("pg2")))),
            stopped_with(ClusterState::ShutDown, 1, 6000),
        )
        .cfg(|c| c.dynamic.postgresql.use_pg_rewind = true)
        .expect(vec![Rewind(up("pg2", 5432))], |_| true),
        row(
            "former primary diverged, use_pg_rewind off: stay stopped and say why",
            Some(on_tl2(cluster(Some("pg2")))),
            stopped_with(ClusterState::ShutDown, 1, 6000),
        )
        .expect(vec![], |r| matches!(r, Reason::DivergedNoRewind { .. })),
        row(
            "new leader still checkpointing after promote: wait before pg_rewind",
            Some(with(on_tl2(cluster(Some("pg2"))), |c| {
                c.members[1].data.checkpoint_after_promote = Some(false)
            })),
            stopped_with(ClusterState::ShutDown, 1, 5000),
        )
        .cfg(|c| c.dynamic.postgresql.use_pg_rewind = true)
        .expect(vec![], |r| *r == Reason::WaitingForLeaderCheckpoint),
        row(
            "crashed former primary, rewind off: crash recovery first",
            Some(on_tl2(cluster(Some("pg2")))),
            stopped_with(ClusterState::InProduction, 1, 100),
        )
        .expect(vec![CrashRecovery], |_| true),
        row(
            "crashed former primary, rewind on: crash recovery (with the node's parameters) first",
            Some(on_tl2(cluster(Some("pg2")))),
            stopped_with(ClusterState::InProduction, 1, 100),
        )
        .cfg(|c| c.dynamic.postgresql.use_pg_rewind = true)
        .expect(vec![CrashRecovery], |_| true),
        // --- failed background tasks: retried at a bounded pace, never in a tight loop ----------
        row(
            "rewind failed 2 s ago (loop_wait 1): not started again yet",
            Some(on_tl2(cluster(Some("pg2")))),
            with(stopped_with(ClusterState::ShutDown, 1, 5000), |l| {
                l.failed_task = Some((Task::Rewind, NOW.mono_ms - 2_000))
            }),
        )
        .cfg(|c| c.dynamic.postgresql.use_pg_rewind = true)
        .expect(vec![], |r| {
            matches!(r, Reason::RetryingTaskLater { task: Task::Rewind, in_ms: 13_000, .. })
        }),
        row(
            "the start after a rewind failed 500 ms ago (\"no rewind required\", then a start that fails): the rewind is paced too",
            Some(on_tl2(cluster(Some("pg2")))),
            with(stopped_with(ClusterState::ShutDown, 1, 5000), |l| {
                l.failed_task = Some((Task::Start, NOW.mono_ms - 500))
            }),
        )
        .cfg(|c| c.dynamic.postgresql.use_pg_rewind = true)
        .expect(vec![], |r| {
            matches!(r, Reason::RetryingTaskLater { task: Task::Start, in_ms: 500, .. })
        }),
        row(
            "rewind failed, remove_data_directory_on_rewind_failure: remove the data directory to clone",
            Some(on_tl2(cluster(Some("pg2")))),
            with(stopped_with(ClusterState::ShutDown, 1, 5000), |l| {
                l.failed_task = Some((Task::Rewind, NOW.mono_ms - 1_000))
            }),
        )
        .cfg(|c| {
            c.dynamic.postgresql.use_pg_rewind = true;
            c.remove_data_on_rewind_failure = true;
        })
        .expect(vec![RemoveDataDirectory], |r| {
            *r == Reason::RemovingDataDirectoryAfterRewindFailure
        }),
        row(
            "the start after a rewind failed: the data directory is kept, the start retried",
            Some(on_tl2(cluster(Some("pg2")))),
            with(stopped_with(ClusterState::ShutDown, 1, 5000), |l| {
                l.failed_task = Some((Task::Start, NOW.mono_ms - 1_000))
            }),
        )
        .cfg(|c| {
            c.dynamic.postgresql.use_pg_rewind = true;
            c.remove_data_on_rewind_failure = true;
        })
        .expect(vec![Rewind(up("pg2", 5432))], |_| true),
        row(
            "rewind failed 15 s ago: started again",
            Some(on_tl2(cluster(Some("pg2")))),
            with(stopped_with(ClusterState::ShutDown, 1, 5000), |l| {
                l.failed_task = Some((Task::Rewind, NOW.mono_ms - 15_000))
            }),
        )
        .cfg(|c| c.dynamic.postgresql.use_pg_rewind = true)
        .expect(vec![Rewind(up("pg2", 5432))], |_| true),
        row(
            "rewind failed lately, loop_wait 30: waits a whole loop_wait",
            Some(on_tl2(cluster(Some("pg2")))),
            with(stopped_with(ClusterState::ShutDown, 1, 5000), |l| {
                l.failed_task = Some((Task::Rewind, NOW.mono_ms - 20_000))
            }),
        )
        .cfg(|c| {
            c.dynamic.postgresql.use_pg_rewind = true;
            c.dynamic.loop_wait = 30;
        })
        .expect(vec![], |r| {
            matches!(r, Reason::RetryingTaskLater { in_ms: 10_000, .. })
        }),
        // --- a pg_rewind that failed after it began writing (nemesis seed 79) ------------------
        row(
            "rewind damaged the data directory 15 s ago, no remove_data_directory_on_rewind_failure: no pg_rewind again, no start, say why",
            Some(on_tl2(cluster(Some("pg2")))),
            with(stopped_with(ClusterState::ShutDown, 1, 5000), |l| {
                l.failed_task = Some((Task::Rewind, NOW.mono_ms - 15_000));
                l.rewind_damage = Some(SEED_79_ERROR.into());
            }),
        )
        .cfg(|c| c.dynamic.postgresql.use_pg_rewind = true)
        .expect(vec![], |r| {
            matches!(r, Reason::RewindDamaged { error, releasing_lock: false, .. } if error == SEED_79_ERROR)
                && r.to_string().contains("praetor ctl reinit <cluster> pg1")
                && r.needs_operator()
        }),
        row(
            "agent restarted on a data directory a rewind damaged (marker only), remove_data_directory_on_rewind_failure: remove it to clone at once",
            Some(on_tl2(cluster(Some("pg2")))),
            with(stopped_with(ClusterState::ShutDown, 1, 5000), |l| {
                l.rewind_damage = Some(SEED_79_ERROR.into());
            }),
        )
        .cfg(|c| {
            c.dynamic.postgresql.use_pg_rewind = true;
            c.remove_data_on_rewind_failure = true;
        })
        .expect(vec![RemoveDataDirectory], |r| {
            *r == Reason::RemovingDataDirectoryAfterRewindFailure
        }),
        row(
            "rewind damaged the data directory and the leader is gone: not started read-only either",
            Some(cluster(None)),
            with(stopped_with(ClusterState::ShutDownInRecovery, 1, 5000), |l| {
                l.rewind_damage = Some(SEED_79_ERROR.into());
            }),
        )
        .expect(vec![], |r| matches!(r, Reason::RewindDamaged { .. })),
        row(
            "rewind damaged the data directory, the timeline no longer diverges (the leader went back): not started as a replica",
            Some(cluster(Some("pg2"))),
            with(stopped_with(ClusterState::ShutDownInRecovery, 1, 5000), |l| {
                l.rewind_damage = Some(SEED_79_ERROR.into());
            }),
        )
        .expect(vec![], |r| matches!(r, Reason::RewindDamaged { .. })),
        row(
            "lock holder on a data directory a rewind damaged, remove_data_directory_on_rewind_failure: the lock is given up, the data kept",
            Some(cluster(Some(ME))),
            with(local(Postgres::Stopped { control: None }), |l| {
                l.rewind_damage = Some(SEED_79_ERROR.into());
            }),
        )
        .cfg(|c| c.remove_data_on_rewind_failure = true)
        .expect(vec![ReleaseLeader], |r| {
            matches!(r, Reason::RewindDamaged { releasing_lock: true, .. })
        }),
        row(
            "paused, rewind damaged, remove_data_directory_on_rewind_failure: nothing removed in maintenance mode",
            Some(on_tl2(cluster(Some("pg2")))),
            with(stopped_with(ClusterState::ShutDown, 1, 5000), |l| {
                l.rewind_damage = Some(SEED_79_ERROR.into());
            }),
        )
        .cfg(|c| {
            c.dynamic.pause = true;
            c.dynamic.postgresql.use_pg_rewind = true;
            c.remove_data_on_rewind_failure = true;
        })
        .expect(vec![], |r| matches!(r, Reason::Paused { .. })),
        row(
            "primary start failed 0.5 s ago: keep the lock, start again after loop_wait",
            Some(cluster(Some(ME))),
            with(local(Postgres::Stopped { control: None }), |l| {
                l.failed_task = Some((Task::Start, NOW.mono_ms - 500))
            }),
        )
        .expect(vec![RenewLeader], |r| {
            matches!(r, Reason::RetryingTaskLater { task: Task::Start, in_ms: 500, .. })
        }),
        row(
            "another task failed: a different one is not held back",
            Some(on_tl2(cluster(Some("pg2")))),
            with(stopped_with(ClusterState::InProduction, 1, 100), |l| {
                l.failed_task = Some((Task::Rewind, NOW.mono_ms - 1_000))
            }),
        )
        .expect(vec![CrashRecovery], |_| true),
        // --- §6: no leader (race) ------------------------------------------------------------------
        row(
            "no leader, healthiest replica: take the lock and promote",
            Some(cluster(None)),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)])
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "no leader, check_timeline, my timeline behind the history key's: do not race",
            Some(on_tl2(cluster(None))),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)])
            }),
        )
        .cfg(|c| c.dynamic.check_timeline = true)
        .expect(vec![], |r| {
            *r == Reason::TimelineBehind {
                mine: 1,
                cluster: 2,
            }
        }),
        row(
            "no leader, check_timeline off, timeline behind the history key's: race as before",
            Some(on_tl2(cluster(None))),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)])
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "no leader, check_timeline, on the history key's timeline: race",
            Some(on_tl2(cluster(None))),
            with(
                local(Postgres::Running(Running {
                    is_primary: false,
                    timeline: 2,
                    wal_position: 1000,
                    upstream: Some(("127.0.0.1".to_string(), 5432)),
                    standbys: vec![],
                    sync_standby_names: String::new(),
                    slots: vec![],
                })),
                |l| l.peers = Some(vec![peer("pg3", 900)]),
            ),
        )
        .cfg(|c| c.dynamic.check_timeline = true)
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "no leader, a proxy still routes to the former leader: wait for its acknowledgement",
            Some(with(cluster(None), |c| {
                c.proxies.insert(
                    "proxy-a".into(),
                    praetor_dcs::ProxyState {
                        leader: Some("pg2".into()),
                        since: None,
                    },
                );
                c.proxies.insert("proxy-b".into(), Default::default());
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)]);
                l.former_leader = Some(up("pg2", 5432));
            }),
        )
        .expect(
            promoting(AcquireLeader, vec![AwaitProxies { former: "pg2".into(), wait_ms: 1000 }]),
            |r| *r == Reason::PromotedByAcquiringLock,
        ),
        row(
            "no leader, a proxy still routes to the former leader past its contact deadline: promote",
            // ttl 6: the contact deadline is 6 s less a 1.2 s margin.
            Some(proxy_on_former_leader()),
            racing_replica_waiting_since(4_800),
        )
        .expect(
            promoting(AcquireLeader, vec![]),
            |_| true,
        ),
        row(
            "no leader, a proxy still routes to the former leader, 4.5 s into the wait: wait the rest",
            Some(proxy_on_former_leader()),
            racing_replica_waiting_since(4_500),
        )
        .expect(
            promoting(AcquireLeader, vec![AwaitProxies { former: "pg2".into(), wait_ms: 300 }]),
            |_| true,
        ),
        row(
            "no leader, every proxy had left the former leader when read, before taking the lock: \
             read the proxies' keys again once the lock is held (a proxy may have acknowledged \
             the former leader after that read, while it still held the lock: sim seeds 8889, \
             30815)",
            Some(with(cluster(None), |c| {
                c.proxies.insert("proxy-b".into(), Default::default());
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)]);
                l.former_leader = Some(up("pg2", 5432));
            }),
        )
        .expect(
            promoting(AcquireLeader, vec![AwaitProxies { former: "pg2".into(), wait_ms: 1000 }]),
            |r| *r == Reason::PromotedByAcquiringLock,
        ),
        row(
            "lock holder still a replica, every proxy has left the former leader in a view read \
             while it held the lock: no wait",
            Some(with(cluster(Some(ME)), |c| {
                c.proxies.insert("proxy-b".into(), Default::default());
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.former_leader = Some(up("pg2", 5432));
            }),
        )
        .expect(promoting(RenewLeader, vec![]), |r| {
            *r == Reason::PromotedBecauseHadLock
        }),
        row(
            "lock holder still a replica, a proxy still routes to the former leader: wait",
            Some(with(cluster(Some(ME)), |c| {
                c.proxies.insert(
                    "proxy-a".into(),
                    praetor_dcs::ProxyState {
                        leader: Some("pg2".into()),
                        since: None,
                    },
                );
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.former_leader = Some(up("pg2", 5432));
            }),
        )
        .expect(
            promoting(RenewLeader, vec![AwaitProxies { former: "pg2".into(), wait_ms: 1000 }]),
            |r| *r == Reason::PromotedBecauseHadLock,
        ),
        row(
            "no leader, another replica is ahead: do not race",
            Some(cluster(None)),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 1001)])
            }),
        )
        .expect(
            vec![],
            |r| matches!(r, Reason::NotHealthiest { better } if better == "pg3"),
        ),
        row(
            "no leader, lagging more than maximum_lag_on_failover: do not race",
            Some(with(cluster(None), |c| {
                c.status = Some(Status {
                    optime: 5_000_000,
                    ..Default::default()
                })
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![])
            }),
        )
        .expect(vec![], |r| matches!(r, Reason::NotHealthyEnough { .. })),
        row(
            "no leader, nofailover: do not race",
            Some(cluster(None)),
            with(local(running(false, 1000, None)), |l| {
                l.peers = Some(vec![])
            }),
        )
        .cfg(|c| c.tags.nofailover = true)
        .expect(vec![], |r| *r == Reason::NotAllowedToPromote),
        row(
            "no leader, failover_priority 0: do not race",
            Some(cluster(None)),
            with(local(running(false, 1000, None)), |l| {
                l.peers = Some(vec![])
            }),
        )
        .cfg(|c| c.tags.failover_priority = Some(0))
        .expect(vec![], |r| *r == Reason::NotAllowedToPromote),
        row(
            "no leader, a member still answers as primary: do not race",
            Some(cluster(None)),
            with(local(running(false, 1000, None)), |l| {
                l.peers = Some(vec![PeerStatus {
                    is_running_primary: true,
                    ..peer("pg2", 0)
                }])
            }),
        )
        .expect(vec![], |r| matches!(r, Reason::NotHealthiest { .. })),
        row(
            "no leader, running primary and healthiest: take the lock back without restart",
            Some(cluster(None)),
            with(local(running(true, 1000, None)), |l| {
                l.peers = Some(vec![peer("pg2", 900)])
            }),
        )
        .expect(vec![AcquireLeader, WriteStatus], |r| {
            *r == Reason::AcquiredLockAsLeader
        }),
        row(
            "no leader, primary that may not lead: demote (no writable primary without the lock)",
            Some(cluster(None)),
            with(local(running(true, 1000, None)), |l| l.peers = Some(vec![])),
        )
        .cfg(|c| c.tags.nofailover = true)
        .expect(vec![Stop(StopMode::Immediate)], |r| {
            matches!(r, Reason::DemotingNoLock { leader: None })
        }),
        // --- watchdog: armed before the lock is taken or renewed unarmed; required and refused: step down
        row(
            "watchdog configured: armed right before taking the lock",
            Some(cluster(None)),
            with(racing_replica(), |l| l.watchdog = WatchdogState::NotArmed),
        )
        .expect(
            with(promoting(AcquireLeader, vec![]), |a| a.insert(0, ArmWatchdog)),
            |_| true,
        ),
        row(
            "armed watchdog: a leader renews without arming again",
            Some(cluster(Some(ME))),
            with(local(running(true, 1000, None)), |l| l.watchdog = WatchdogState::Armed),
        )
        .expect(upkeep(vec![]), |_| true),
        row(
            "leader restarted with an unarmed watchdog: arm it before renewing",
            Some(cluster(Some(ME))),
            with(local(running(true, 1000, None)), |l| l.watchdog = WatchdogState::NotArmed),
        )
        .expect(vec![ArmWatchdog, RenewLeader, WriteStatus, slots_for_others()], |_| true),
        row(
            "leader whose required watchdog refused to arm: stop, then release the lock",
            Some(cluster(Some(ME))),
            with(local(running(true, 1000, None)), |l| l.watchdog = WatchdogState::Refused),
        )
        .expect(vec![Stop(StopMode::Immediate), ReleaseLeader], |r| {
            *r == Reason::DemotingWatchdogUnavailable
        }),
        row(
            "refused watchdog, no leader: the candidate tries to arm it again before the race",
            Some(cluster(None)),
            with(racing_replica(), |l| l.watchdog = WatchdogState::Refused),
        )
        .expect(
            with(promoting(AcquireLeader, vec![]), |a| a.insert(0, ArmWatchdog)),
            |_| true,
        ),
        row(
            "lock holder still a replica with an armed watchdog of 2 s: pg_promote() only within \
             1 s of the renewal right before it (the window ends a second before the watchdog)",
            Some(cluster(Some(ME))),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.watchdog = WatchdogState::Armed;
                l.watchdog_timeout_secs = Some(2);
            }),
        )
        .expect(
            with(promoting(RenewLeader, vec![]), |a| {
                *a.last_mut().expect("promote") = Promote { within_ms: 1_000 }
            }),
            |r| *r == Reason::PromotedBecauseHadLock,
        ),
        row(
            "paused: the watchdog is not required",
            Some(cluster(Some(ME))),
            with(local(running(true, 1000, None)), |l| l.watchdog = WatchdogState::Refused),
        )
        .cfg(|c| c.dynamic.pause = true)
        .expect(upkeep(vec![]), |_| true),
        // --- §7: DCS loss --------------------------------------------------------------------------
        row(
            "§7 primary cannot reach the DCS, within loop_wait + retry_timeout: keep trying to renew",
            None,
            with(local(running(true, 1000, None)), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 2900)
            }),
        )
        .expect(vec![RenewLeader], |r| *r == Reason::DcsInaccessible),
        row(
            "§7 primary cannot reach the DCS for loop_wait + retry_timeout: demote",
            None,
            with(local(running(true, 1000, None)), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 3000)
            }),
        )
        .expect(vec![Stop(StopMode::Immediate), read_only()], |r| {
            *r == Reason::DemotingDcsInaccessible
        }),
        row(
            "§7 primary cannot reach the DCS, armed watchdog tighter than the window: demote before it fires",
            None,
            with(local(running(true, 1000, None)), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 2000);
                l.watchdog_timeout_secs = Some(3);
            }),
        )
        .expect(vec![Stop(StopMode::Immediate), read_only()], |r| {
            *r == Reason::DemotingDcsInaccessible
        }),
        row(
            "unobservable leader (postmaster up, queries refused) without the DCS, past the deadline: stop it",
            None,
            with(local(Postgres::Starting), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 3000)
            }),
        )
        .expect(vec![Stop(StopMode::Immediate), read_only()], |r| {
            *r == Reason::DemotingDcsInaccessible
        }),
        row(
            "unobservable leader without the DCS, within the window: keep trying to renew",
            None,
            with(local(Postgres::Starting), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 1000)
            }),
        )
        .expect(vec![RenewLeader], |r| *r == Reason::DcsInaccessible),
        row(
            "unobservable postgres of a non-leader without the DCS: nothing (it is no primary of ours)",
            None,
            local(Postgres::Starting),
        )
        .expect(vec![], |r| *r == Reason::DcsInaccessible),
        row(
            "leader starting its primary when the DCS went away, past the deadline: abort, stop",
            None,
            with(local(Postgres::Starting), |l| {
                l.task = Some(Task::Start);
                l.lock_renewed_ms = Some(NOW.mono_ms - 3500)
            }),
        )
        .expect(vec![AbortTask, Stop(StopMode::Immediate), read_only()], |r| {
            *r == Reason::DemotingDcsInaccessible
        }),
        row(
            "lock holder restarting read-only (demoted, or a replica's data directory) when the DCS went away, past the deadline: the start goes on (nothing writable to stop; aborting it only restarted it, nemesis seed 9)",
            None,
            with(local(Postgres::Starting), |l| {
                l.task = Some(Task::Start);
                l.starting_read_only = true;
                l.lock_renewed_ms = Some(NOW.mono_ms - 3500)
            }),
        )
        .expect(vec![], |r| *r == Reason::DcsInaccessible),
        row(
            "lock holder restarting read-only, the DCS answers: it keeps renewing its lock while PostgreSQL starts",
            Some(cluster(Some(ME))),
            with(local(Postgres::Starting), |l| {
                l.task = Some(Task::Start);
                l.starting_read_only = true;
                l.lock_renewed_ms = Some(NOW.mono_ms - 3500)
            }),
        )
        .expect(vec![RenewLeader], |r| {
            *r == Reason::TaskInProgress { task: Task::Start }
        }),
        row(
            "§7 replica cannot reach the DCS: nothing",
            None,
            local(running(false, 1000, Some(5432))),
        )
        .expect(vec![], |r| *r == Reason::DcsInaccessible),
        // --- failsafe mode (Patroni's DCS failsafe mode) ----------------------------------------------
        row(
            "failsafe: DCS unreachable, every member accepted this leader: keep leading, past the old deadline too (renewal, watchdog fed)",
            None,
            with(local(running(true, 1000, None)), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 3500);
                l.failsafe_confirmed = Some(true);
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(vec![KeepLeadingInFailsafe], |r| {
            *r == Reason::FailsafeKeepsLeader
        }),
        row(
            "failsafe: a member refused (it reads the DCS and the lock expired), past the deadline: demote",
            None,
            with(local(running(true, 1000, None)), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 3000);
                l.failsafe_confirmed = Some(false);
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(vec![Stop(StopMode::Immediate), read_only()], |r| {
            *r == Reason::DemotingDcsInaccessible
        }),
        row(
            "failsafe: a member refused, within the window: keep trying to renew",
            None,
            with(local(running(true, 1000, None)), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 1000);
                l.failsafe_confirmed = Some(false);
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(vec![RenewLeader], |r| *r == Reason::DcsInaccessible),
        row(
            "failsafe: confirmations do not count with failsafe_mode off",
            None,
            with(local(running(true, 1000, None)), |l| {
                l.lock_renewed_ms = Some(NOW.mono_ms - 3000);
                l.failsafe_confirmed = Some(true);
            }),
        )
        .expect(vec![Stop(StopMode::Immediate), read_only()], |r| {
            *r == Reason::DemotingDcsInaccessible
        }),
        row(
            "failsafe: back from an outage that expired the lock, the primary kept running is the healthiest: it takes the lock again",
            Some(with(cluster(None), |c| {
                c.failsafe = Some(failsafe_key(&["pg1", "pg2", "pg3"]))
            })),
            with(local(running(true, 1500, None)), |l| {
                l.peers = Some(vec![peer("pg2", 1500), peer("pg3", 1400)])
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(vec![AcquireLeader, WriteStatus], |r| {
            *r == Reason::AcquiredLockAsLeader
        }),
        row(
            "failsafe: back from an outage, the former leader (asked through the failsafe key) still runs as primary: a replica does not race",
            Some(with(cluster(None), |c| {
                c.members.retain(|m| m.name != "pg2");
                c.failsafe = Some(failsafe_key(&["pg1", "pg2", "pg3"]))
            })),
            with(local(running(false, 1500, Some(5432))), |l| {
                l.peers = Some(vec![
                    PeerStatus {
                        is_running_primary: true,
                        ..peer("pg2", 1500)
                    },
                    peer("pg3", 1400),
                ])
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(vec![], |r| matches!(r, Reason::NotHealthiest { .. })),
        row(
            "failsafe: a member missing from the failsafe key does not race",
            Some(with(cluster(None), |c| {
                c.failsafe = Some(failsafe_key(&["pg2", "pg3"]))
            })),
            with(local(running(false, 2000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)])
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(vec![], |r| *r == Reason::NotInFailsafeKey),
        row(
            "failsafe: a member that confirmed the leader over POST /failsafe less than ttl ago does not race (the leader may still run on that confirmation; sim seeds 978, 2140)",
            Some(with(cluster(None), |c| {
                c.failsafe = Some(failsafe_key(&["pg1", "pg2", "pg3"]))
            })),
            with(local(running(false, 2000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 1000)]);
                l.failsafe_accepted_ms = Some(NOW.mono_ms - 5_000);
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(vec![], |r| *r == Reason::ConfirmedFailsafeLeader),
        row(
            "failsafe: a confirmation ttl ago or more binds nobody: the healthiest member races",
            Some(with(cluster(None), |c| {
                c.failsafe = Some(failsafe_key(&["pg1", "pg2", "pg3"]))
            })),
            with(local(running(false, 2000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 1000)]);
                l.failsafe_accepted_ms = Some(NOW.mono_ms - 6_000);
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "failsafe: with failsafe_mode off a past confirmation binds nobody",
            Some(cluster(None)),
            with(local(running(false, 2000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 1000)]);
                l.failsafe_accepted_ms = Some(NOW.mono_ms - 1_000);
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        // --- switchover ----------------------------------------------------------------------------
        row(
            "switchover to a healthy candidate streaming from me: stop fast, publish the shutdown checkpoint as the last LSN, then release the lock",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), Some("pg2"))
            })),
            with(local(primary_with(&[("pg2", "async", 1000), ("pg3", "async", 1000)], "")), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)])
            }),
        )
        .expect(
            vec![DrainTransactions { max_ms: 5_000 }, Stop(StopMode::Fast), WriteLastLsn, ReleaseLeader],
            |r| matches!(r, Reason::ManualFailoverDemoting { candidate } if candidate == "pg2"),
        ),
        row(
            "switchover in the first loop after my promotion to timeline 2, whose history line \
             names pg2 (it promoted to the same number and wrote its line before it froze): the \
             line is rewritten before the lock is released",
            Some(with(on_tl2(cluster(Some(ME))), |c| {
                c.failover = failover(Some(ME), Some("pg2"))
            })),
            created_tl2(
                with(
                    local(with_timeline(
                        primary_with(&[("pg2", "async", 1000), ("pg3", "async", 1000)], ""),
                        2,
                    )),
                    |l| l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)]),
                ),
                ME,
            ),
        )
        .expect(
            vec![
                UpdateHistory,
                DrainTransactions { max_ms: 5_000 },
                Stop(StopMode::Fast),
                WriteLastLsn,
                ReleaseLeader,
            ],
            |r| matches!(r, Reason::ManualFailoverDemoting { .. }),
        ),
        row(
            "switchover in the first loop after my promotion to timeline 2, no history line yet: \
             it is written before the lock is released (sim seed 213686: another member's \
             unpublished timeline 2 then looked like mine)",
            Some(with(on_tl2(cluster(Some(ME))), |c| {
                c.history = None;
                c.failover = failover(Some(ME), Some("pg2"))
            })),
            with(
                local(with_timeline(
                    primary_with(&[("pg2", "async", 1000), ("pg3", "async", 1000)], ""),
                    2,
                )),
                |l| l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)]),
            ),
        )
        .expect(
            vec![
                UpdateHistory,
                DrainTransactions { max_ms: 5_000 },
                Stop(StopMode::Fast),
                WriteLastLsn,
                ReleaseLeader,
            ],
            |r| matches!(r, Reason::ManualFailoverDemoting { .. }),
        ),
        row(
            "switchover close to the demotion deadline: the wait for transactions in flight takes at most half the time left, the stop the rest",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), Some("pg2"))
            })),
            with(local(primary_with(&[("pg2", "async", 1000)], "")), |l| {
                l.peers = Some(vec![peer("pg2", 1000)]);
                l.lock_renewed_ms = Some(1_000_000);
            }),
        )
        .cfg(|c| {
            c.dynamic.loop_wait = 1;
            c.dynamic.retry_timeout = 2;
        })
        .expect(
            vec![DrainTransactions { max_ms: 1_500 }, Stop(StopMode::Fast), WriteLastLsn, ReleaseLeader],
            |r| matches!(r, Reason::ManualFailoverDemoting { candidate } if candidate == "pg2"),
        ),
        row(
            "switchover without candidate: step down for the healthiest",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), None)
            })),
            with(local(primary_with(&[("pg2", "async", 900), ("pg3", "async", 1000)], "")), |l| {
                l.peers = Some(vec![peer("pg2", 900), peer("pg3", 1000)])
            }),
        )
        .expect(
            vec![DrainTransactions { max_ms: 5_000 }, Stop(StopMode::Fast), WriteLastLsn, ReleaseLeader],
            |r| matches!(r, Reason::ManualFailoverDemoting { candidate } if candidate == "pg3"),
        ),
        row(
            "switchover without candidate: one streaming from me is preferred to one ahead whose WAL receiver restarts",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), None)
            })),
            with(local(primary_with(&[("pg2", "async", 900)], "")), |l| {
                l.peers = Some(vec![peer("pg2", 900), peer("pg3", 1000)])
            }),
        )
        .expect(
            vec![DrainTransactions { max_ms: 5_000 }, Stop(StopMode::Fast), WriteLastLsn, ReleaseLeader],
            |r| matches!(r, Reason::ManualFailoverDemoting { candidate } if candidate == "pg2"),
        ),
        row(
            "switchover to a candidate that does not stream from me (its WAL receiver restarts): keep leading until it does, or it would miss my last WAL",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), Some("pg2"))
            })),
            with(local(primary_with(&[("pg3", "async", 1000)], "")), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)]);
                l.switchover_wait_began_ms = Some(NOW.mono_ms - 2_000);
            }),
        )
        .expect(vec![RenewLeader, WriteStatus], |r| {
            matches!(r, Reason::WaitingForCandidateToStream { candidate, waited_ms: 2_000 } if candidate == "pg2")
        }),
        row(
            "switchover to a candidate that did not stream from me within the bound (15 s): refused, request removed",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), Some("pg2"))
            })),
            with(local(running(true, 1000, None)), |l| {
                l.peers = Some(vec![peer("pg2", 1000)]);
                l.switchover_wait_began_ms = Some(NOW.mono_ms - 15_000);
            }),
        )
        .expect(vec![RenewLeader, WriteStatus, ClearFailover(42)], |r| {
            matches!(r, Reason::ManualFailoverImpossible { why } if why.contains("did not stream"))
        }),
        row(
            "switchover to a cascaded candidate (replicatefrom): it gets the last WAL through its upstream, no streaming wait",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), Some("pg2"));
                c.members[1].data.tags.replicatefrom = Some("pg3".into());
            })),
            with(local(primary_with(&[("pg3", "async", 1000)], "")), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)])
            }),
        )
        .expect(vec![DrainTransactions { max_ms: 5_000 }, Stop(StopMode::Fast), WriteLastLsn, ReleaseLeader], |_| true),
        row(
            "no leader after a switchover, I am the candidate but lack the last LSN pg2 published: do not promote",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some(ME));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![PeerStatus { is_running: false, ..peer("pg2", 0) }]);
            }),
        )
        .expect(vec![], |r| {
            matches!(r, Reason::MissingLastLsn { mine: 1000, last_lsn: 1500, leader } if leader == "pg2")
        }),
        row(
            "the candidate lacking the last LSN keeps out past the bound while the stepped-down leader holds it (it takes the lock back)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some(ME));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg2", 1520)]);
                l.switchover_wait_began_ms = Some(NOW.mono_ms - 60_000);
            }),
        )
        .expect(vec![], |r| matches!(r, Reason::MissingLastLsn { .. })),
        row(
            "the candidate lacking the last LSN, past the bound with nobody holding it reachable: Patroni's race (promote)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some(ME));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![]);
                l.switchover_wait_began_ms = Some(NOW.mono_ms - 15_000);
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |_| true),
        row(
            "the candidate lacking the last LSN, the stepped-down leader gone (does not answer): Patroni's race at once",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some(ME));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)]);
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |_| true),
        row(
            "the leader that stepped down races back when no other member has its last LSN past the bound (the candidate missed it)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), Some("pg2"));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1520, None)), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)]);
                l.switchover_wait_began_ms = Some(NOW.mono_ms - 60_000);
            }),
        )
        .expect(vec![AcquireLeader, slots_for_others(), RenewLeader, promote()], |r| *r == Reason::PromotedByAcquiringLock),
        row(
            "a third member holding the last LSN waits for the candidate that has not replayed it yet (it streams: milliseconds), within the bound",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some("pg3"));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1600, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg2", 1520), peer("pg3", 1000)]);
            }),
        )
        .expect(vec![], |r| matches!(r, Reason::WaitingForCandidate { candidate } if candidate == "pg3")),
        row(
            "past the bound, a third member holding the last LSN leaves out the candidate still lacking it and races",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some("pg3"));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1600, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg2", 1520), peer("pg3", 1000)]);
                l.switchover_wait_began_ms = Some(NOW.mono_ms - 60_000);
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |_| true),
        row(
            "the leader that stepped down waits, within the bound, for its streaming candidate to replay its last LSN instead of racing back",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), Some("pg2"));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1520, None)), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)]);
            }),
        )
        .expect(vec![], |r| matches!(r, Reason::WaitingForCandidate { candidate } if candidate == "pg2")),
        row(
            "within the bound, a third member holding the last LSN does not wait for a candidate lacking it that saw the cluster without a leader: it will not receive it",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some("pg3"));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1600, Some(5432))), |l| {
                l.peers = Some(vec![
                    peer("pg2", 1520),
                    PeerStatus { cluster_unlocked: true, ..peer("pg3", 1000) },
                ]);
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |_| true),
        row(
            "a leader that lost its lock during a switchover request holds WAL its candidate lacks; the candidate saw the cluster without a leader: no wait, the former leader races (sim seed 16,050)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), Some("pg2"));
                c.status = Some(Status { optime: 1520, ..Default::default() });
            })),
            with(local(running(false, 1520, None)), |l| {
                l.peers = Some(vec![
                    PeerStatus { cluster_unlocked: true, ..peer("pg2", 1000) },
                    peer("pg3", 1000),
                ]);
            }),
        )
        .expect(vec![AcquireLeader, slots_for_others(), RenewLeader, promote()], |r| *r == Reason::PromotedByAcquiringLock),
        row(
            "a third member lacking the last LSN does not race: it waits for the candidate within the bound",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some("pg3"));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg2", 1520), peer("pg3", 1000)]);
            }),
        )
        .expect(vec![], |r| matches!(r, Reason::WaitingForCandidate { .. })),
        row(
            "a third member lacking the last LSN does not race past the bound either, while the stepped-down leader holds it",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some("pg3"));
                c.status = Some(Status { optime: 1500, ..Default::default() });
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg2", 1520), peer("pg3", 1000)]);
                l.switchover_wait_began_ms = Some(NOW.mono_ms - 60_000);
            }),
        )
        .expect(vec![], |r| matches!(r, Reason::MissingLastLsn { .. })),
        row(
            "switchover to a lagging candidate: refused, request removed",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), Some("pg2"))
            })),
            with(local(running(true, 50_000_000, None)), |l| {
                l.peers = Some(vec![peer("pg2", 1000)])
            }),
        )
        .expect(vec![RenewLeader, WriteStatus, ClearFailover(42)], |r| {
            matches!(r, Reason::ManualFailoverImpossible { .. })
        }),
        row(
            "switchover to a candidate that does not answer: refused",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), Some("pg2"))
            })),
            with(local(running(true, 1000, None)), |l| l.peers = Some(vec![])),
        )
        .expect(vec![RenewLeader, WriteStatus, ClearFailover(42)], |r| {
            matches!(r, Reason::ManualFailoverImpossible { .. })
        }),
        row(
            "scheduled switchover not due yet: keep leading",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), Some("pg2"));
                c.failover.as_mut().unwrap().value.scheduled_at =
                    Some("2099-01-01T00:00:00+00:00".into());
            })),
            with(local(running(true, 1000, None)), |l| {
                l.peers = Some(vec![peer("pg2", 1000)])
            }),
        )
        .expect(vec![RenewLeader, WriteStatus], |r| {
            matches!(r, Reason::ManualFailoverScheduled { .. })
        }),
        row(
            "switchover done (I am the candidate and leader): clear the request",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some("pg2"), Some(ME))
            })),
            local(running(true, 1000, None)),
        )
        .expect(
            vec![
                RenewLeader,
                WriteStatus,
                slots_for_others(),
                ClearFailover(42),
            ],
            |r| *r == Reason::ClearedFailoverKey,
        ),
        row(
            "no leader, switchover names me: race even if not the healthiest",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some(ME))
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 2000)])
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |_| true),
        row(
            "no leader, switchover names a healthy other member: wait for it",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some("pg3"))
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)])
            }),
        )
        .expect(vec![], |r| matches!(r, Reason::WaitingForCandidate { .. })),
        row(
            "no leader, switchover candidate is unreachable: normal race without it",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some("pg3"))
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![])
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |_| true),
        row(
            "sync on: the leader that stepped down for a switchover races again when the sync key lets no other member take the lock (sim seed 162)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), None);
                c.sync = Some(Versioned { value: sync_value(&[]), version: 9 });
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)])
            }),
        )
        .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
        .expect(promoting(AcquireLeader, vec![]), |_| true),
        row(
            "sync on: the leader that stepped down for a switchover stays out while a listed standby can take the lock",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), None);
                c.sync = Some(Versioned { value: sync_value(&["pg3"]), version: 9 });
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)])
            }),
        )
        .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
        .expect(vec![], |r| *r == Reason::SteppedDownForSwitchover),
        row(
            "failsafe: the leader that stepped down for a switchover races again when the only other member is missing from the failsafe key (sim seed 1283, --failsafe)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), None);
                c.failsafe = Some(failsafe_key(&["pg1", "pg2"]));
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)])
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(promoting(AcquireLeader, vec![]), |_| true),
        row(
            "failsafe: the leader that stepped down for a switchover stays out while a member of the failsafe key can take the lock",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), None);
                c.failsafe = Some(failsafe_key(&["pg1", "pg3"]));
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 1000)])
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(vec![], |r| *r == Reason::SteppedDownForSwitchover),
        row(
            "failsafe: a switchover's candidate missing from the failsafe key does not promote while the key's leader still runs as primary on its confirmations (sim seed 223394)",
            Some(with(cluster(None), |c| {
                c.members.retain(|m| m.name == ME);
                c.failover = failover(Some("pg2"), Some(ME));
                c.failsafe = Some(failsafe_key(&["pg2", "pg3"]));
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![
                    PeerStatus {
                        is_running_primary: true,
                        ..peer("pg2", 1000)
                    },
                    peer("pg3", 1000),
                ])
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(vec![], |r| {
            *r == Reason::NotHealthiest {
                better: "pg2 (still running as primary)".into(),
            }
        }),
        row(
            "failsafe: a switchover's candidate missing from the failsafe key does not race while a member of the key does not answer (it may be a leader kept by failsafe mode)",
            Some(with(cluster(None), |c| {
                c.members.retain(|m| m.name == ME);
                c.failover = failover(Some("pg2"), Some(ME));
                c.failsafe = Some(failsafe_key(&["pg2", "pg3"]));
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 1000)])
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(vec![], |r| {
            *r == Reason::FailsafeMemberUnheard {
                member: "pg2".into(),
            }
        }),
        row(
            "failsafe: a switchover's candidate missing from the failsafe key takes the lock once every member of the key answered and none runs as primary",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some(ME));
                c.failsafe = Some(failsafe_key(&["pg2", "pg3"]));
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)])
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(promoting(AcquireLeader, vec![]), |_| true),
        row(
            "the leader a switchover names stays out while another member holds as much WAL (a tie at equal failover_priority: that member races)",
            Some(with(cluster(None), |c| c.failover = failover(Some(ME), None))),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 900)])
            }),
        )
        .expect(vec![], |r| *r == Reason::SteppedDownForSwitchover),
        row(
            "the leader a switchover names races again when every other member is behind it (they find it healthier and wait for it)",
            Some(with(cluster(None), |c| c.failover = failover(Some(ME), None))),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg2", 950), peer("pg3", 900)])
            }),
        )
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "failsafe: a leader cut off while a switchover was requested lost its lock without stepping down; the others are on the timeline before its promotion: it races again (sim seed 21850)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), None);
                c.failsafe = Some(failsafe_key(&["pg1", "pg2", "pg3"]));
            })),
            with(local(with_timeline(running(false, 1500, Some(5432)), 2)), |l| {
                l.peers = Some(vec![peer("pg2", 1200), peer("pg3", 1200)])
            }),
        )
        .cfg(|c| c.dynamic.failsafe_mode = true)
        .expect(promoting(AcquireLeader, vec![]), |r| {
            *r == Reason::PromotedByAcquiringLock
        }),
        row(
            "the leader a switchover names stays out while the request's candidate can take over, though behind it (the candidate does not compare)",
            Some(with(cluster(None), |c| c.failover = failover(Some(ME), Some("pg3")))),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 950)])
            }),
        )
        .expect(vec![], |r| *r == Reason::SteppedDownForSwitchover),
        row(
            "sync on: a switchover candidate the sync key does not allow is not waited for (sim seed 211)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some("pg2"), Some("pg3"));
                c.sync = sync_by_pg2(ME);
            })),
            with(local(running(false, 1000, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 900)])
            }),
        )
        .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
        .expect(promoting(AcquireLeader, vec![]), |_| true),
        // --- fencing the former primary --------------------------------------------------------------
        row(
            "race winner fences the last leader it saw (not just its upstream) before promoting",
            Some(cluster(None)),
            with(local(running(false, 1000, Some(5433))), |l| {
                l.peers = Some(vec![]);
                l.former_leader = Some(up("pg2", 5432));
            }),
        )
        .expect(
            promoting(AcquireLeader, vec![AwaitProxies { former: "pg2".into(), wait_ms: 1000 }]),
            |_| true,
        ),
        // --- maintenance mode (pause) ----------------------------------------------------------------
        row("pause: healthy leader keeps its lock fresh",
            Some(cluster(Some(ME))), local(running(true, 1000, None)))
            .cfg(|c| c.dynamic.pause = true)
            .expect(upkeep(vec![]),
                    |r| r.to_string() == "PAUSE: no action. I am (pg1), the leader with the lock"),
        row("pause: the leader's PostgreSQL stopped: keep the lock, do not start it",
            Some(cluster(Some(ME))), local(Postgres::Stopped { control: None }))
            .cfg(|c| c.dynamic.pause = true)
            .expect(vec![RenewLeader], |r| matches!(r, Reason::Paused { .. })),
        row("pause: no leader: no failover",
            Some(cluster(None)), with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![])))
            .cfg(|c| c.dynamic.pause = true)
            .expect(vec![], |r| matches!(r, Reason::Paused { .. })),
        row("pause: the running primary may take its expired lock back",
            Some(cluster(None)), with(local(running(true, 1000, None)), |l| l.peers = Some(vec![])))
            .cfg(|c| c.dynamic.pause = true)
            .expect(vec![AcquireLeader, WriteStatus], |_| true),
        row("pause: a primary without the lock is not demoted",
            Some(cluster(Some("pg2"))), local(running(true, 1000, None)))
            .cfg(|c| c.dynamic.pause = true)
            .expect(vec![], |r| matches!(r, Reason::Paused { .. })),
        row("pause: a manual switchover still works",
            Some(with(cluster(Some(ME)), |c| c.failover = failover(Some(ME), Some("pg2")))),
            with(local(primary_with(&[("pg2", "async", 1000)], "")), |l| l.peers = Some(vec![peer("pg2", 1000)])))
            .cfg(|c| c.dynamic.pause = true)
            .expect(vec![DrainTransactions { max_ms: 5_000 }, Stop(StopMode::Fast), WriteLastLsn, ReleaseLeader], |_| true),
        row("pause: a switchover request without a candidate (left from before the pause) is cleared; the leader keeps leading",
            Some(with(cluster(Some(ME)), |c| c.failover = failover(Some(ME), None))),
            with(local(primary_with(&[("pg2", "async", 1000)], "")), |l| l.peers = Some(vec![peer("pg2", 1000)])))
            .cfg(|c| c.dynamic.pause = true)
            .expect(vec![RenewLeader, WriteStatus, ClearFailover(42)],
                    |r| matches!(r, Reason::Paused { inner } if matches!(**inner, Reason::ManualFailoverImpossible { .. }))),
        // sim seeds 379, 3426 (`PromotedWhilePaused`): a request outlived the leader it named; that
        // member, back as a replica, ran the whole unpaused decision: a failover.
        row("pause: the leader a request names does not race as a replica: only its candidate may promote",
            Some(with(cluster(None), |c| c.failover = failover(Some(ME), Some("pg3")))),
            with(local(running(false, 1000, None)), |l| l.peers = Some(vec![])))
            .cfg(|c| c.dynamic.pause = true)
            .expect(vec![], |r| matches!(r, Reason::Paused { .. })),
        // sim seed 1656 (`TwoWritable`): a leader frozen during a pause held a lease renewed without
        // its watchdog when the cluster resumed; it was failed over while its primary ran.
        row("pause: the leader arms its watchdog before renewing, as when not paused",
            Some(cluster(Some(ME))),
            with(local(running(true, 1000, None)), |l| l.watchdog = WatchdogState::NotArmed))
            .cfg(|c| c.dynamic.pause = true)
            .expect(with(upkeep(vec![]), |a| a.insert(0, ArmWatchdog)),
                    |r| matches!(r, Reason::Paused { .. })),
        // --- primary_start_timeout ---------------------------------------------------------------------
        row("§7 primary: PostgreSQL does not come back within primary_start_timeout: fail over",
            Some(cluster(Some(ME))),
            with(local(Postgres::Starting), |l| l.primary_start_began_ms = Some(NOW.mono_ms - 301_000)))
            .expect(vec![Stop(StopMode::Immediate), ReleaseLeader],
                    |r| matches!(r, Reason::PrimaryStartTimedOut { timeout_secs: 300 })),
        row("primary start still running past the timeout: abort it, stop, release",
            Some(cluster(Some(ME))),
            with(local(Postgres::Starting), |l| {
                l.task = Some(Task::Start);
                l.primary_start_began_ms = Some(NOW.mono_ms - 301_000);
            }))
            .expect(vec![AbortTask, Stop(StopMode::Immediate), ReleaseLeader], |_| true),
        row("primary start within the timeout: keep the lock and wait",
            Some(cluster(Some(ME))),
            with(local(Postgres::Starting), |l| l.primary_start_began_ms = Some(NOW.mono_ms - 5_000)))
            .expect(vec![RenewLeader], |r| *r == Reason::WaitingForPostgres),
        row("start attempts failed for primary_start_timeout: release the lock (postgres is down)",
            Some(cluster(Some(ME))),
            with(local(Postgres::Stopped { control: None }), |l| l.primary_start_began_ms = Some(NOW.mono_ms - 301_000)))
            .expect(vec![ReleaseLeader], |r| matches!(r, Reason::PrimaryStartTimedOut { .. })),
        row("primary_start_timeout 0: a stopped primary releases the lock at once",
            Some(cluster(Some(ME))), local(Postgres::Stopped { control: None }))
            .cfg(|c| c.dynamic.primary_start_timeout = 0)
            .expect(vec![ReleaseLeader], |r| *r == Reason::ReleasingLockPrimaryStopped),
        // --- tags: replicatefrom, nostream -------------------------------------------------------------
        row("replicatefrom a running member: stream from it (cascading)",
            Some(cluster(Some("pg2"))), local(running(false, 1000, Some(5432))))
            .cfg(|c| c.tags.replicatefrom = Some("pg3".into()))
            .expect(vec![Follow(Some(up("pg3", 5433)))], |_| true),
        row("replicatefrom a stopped member: stream from the leader",
            Some(with(cluster(Some("pg2")), |c| c.members[2].data.state = MemberState::Stopped)),
            local(running(false, 1000, Some(5432))))
            .cfg(|c| c.tags.replicatefrom = Some("pg3".into()))
            .expect(vec![], |r| matches!(r, Reason::Following { .. })),
        row("nostream: stream from nobody",
            Some(cluster(Some("pg2"))), local(running(false, 1000, Some(5432))))
            .cfg(|c| c.tags.nostream = true)
            .expect(vec![Follow(None)], |_| true),
        row("a replica keeps the slots of the members cascading from it",
            Some(with(cluster(Some("pg2")), |c| c.members[2].data.tags.replicatefrom = Some(ME.into()))),
            local(running(false, 1000, Some(5432))))
            .expect(vec![EnsureSlots(vec!["pg3".into()])], |r| matches!(r, Reason::Following { .. })),
        // --- permanent logical slots before 17: copy-and-advance (Patroni's copy_logical_slots) ------
        row("pg15 replica: copies a permanent logical slot the leader publishes, from the leader",
            Some(queue_published_at_800()),
            local(running(false, 1000, Some(5432))))
            .cfg(with_queue_slot)
            .expect(vec![CopyLogicalSlots { from: up("pg2", 5432), slots: vec![queue_slot()] }],
                    |r| matches!(r, Reason::Following { .. })),
        row("pg15 replica: a copy tried less than a minute ago is not tried again yet (each attempt restarts PostgreSQL)",
            Some(queue_published_at_800()),
            with(local(running(false, 1000, Some(5432))), |l| l.slot_copy_at_ms = Some(NOW.mono_ms - slots::SLOT_COPY_PACE_MS + 1)))
            .cfg(with_queue_slot)
            .expect(vec![], |r| matches!(r, Reason::Following { .. })),
        row("pg15 replica: a minute after the last attempt, the copy is tried again",
            Some(queue_published_at_800()),
            with(local(running(false, 1000, Some(5432))), |l| l.slot_copy_at_ms = Some(NOW.mono_ms - slots::SLOT_COPY_PACE_MS)))
            .cfg(with_queue_slot)
            .expect(vec![CopyLogicalSlots { from: up("pg2", 5432), slots: vec![queue_slot()] }],
                    |r| matches!(r, Reason::Following { .. })),
        row("pg15 replica: a recent copy attempt does not hold back advancing a copy it has",
            Some(queue_published_at_800()),
            with(local(with(running(false, 1000, Some(5432)), |p| if let Postgres::Running(r) = p { r.slots = vec![queue_copy(600)] })),
                 |l| l.slot_copy_at_ms = Some(NOW.mono_ms - 1_000)))
            .cfg(with_queue_slot)
            .expect(vec![AdvanceLogicalSlots(vec![slots::LogicalAdvance { name: "queue".into(), database: "postgres".into(), lsn: 800 }])],
                    |r| matches!(r, Reason::Following { .. })),
        row("pg15 replica: advances its copy to the leader's published position",
            Some(queue_published_at_800()),
            local(with(running(false, 1000, Some(5432)), |p| if let Postgres::Running(r) = p { r.slots = vec![queue_copy(600)] })))
            .cfg(with_queue_slot)
            .expect(vec![AdvanceLogicalSlots(vec![slots::LogicalAdvance { name: "queue".into(), database: "postgres".into(), lsn: 800 }])],
                    |r| matches!(r, Reason::Following { .. })),
        row("pg15 replica streaming from an old upstream: repoints first, copies nothing yet",
            Some(queue_published_at_800()),
            local(running(false, 1000, Some(5433))))
            .cfg(with_queue_slot)
            .expect(vec![Follow(Some(up("pg2", 5432)))], |_| true),
        row("pg15 leader: keeps its slot and publishes its confirmed position",
            Some(cluster(Some(ME))),
            local(with(running(true, 1000, None), |p| if let Postgres::Running(r) = p { r.slots = vec![queue_copy(700)] })))
            .cfg(with_queue_slot)
            .expect(upkeep(vec![]), |_| true),
        row("the leader has no slot for a member cascading from another",
            Some(with(cluster(Some(ME)), |c| c.members[2].data.tags.replicatefrom = Some("pg2".into()))),
            local(running(true, 1000, None)))
            .expect(vec![RenewLeader, WriteStatus, EnsureSlots(vec!["pg2".into()])], |_| true),
        // --- rewind preconditions ----------------------------------------------------------------------
        row("diverged, use_pg_rewind on, but neither checksums nor wal_log_hints: stay stopped, say why",
            Some(on_tl2(cluster(Some("pg2")))),
            local(Postgres::Stopped { control: Some(ControlData { state: ClusterState::ShutDown, timeline: 1, checkpoint_lsn: 6000, min_recovery_end_lsn: 0, min_recovery_end_timeline: 0, rewindable: false }) }))
            .cfg(|c| c.dynamic.postgresql.use_pg_rewind = true)
            .expect(vec![], |r| matches!(r, Reason::NotRewindable { timeline: 1 })),
        // --- synchronous replication --------------------------------------------------------------
        row("sync on: the leader first writes a sync key of its own, then (same loop) the GUC",
            Some(cluster(Some(ME))), local(primary_with(&[("pg2", "async", 1000)], "")))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(upkeep(vec![sync_key(&[]), SetSyncStandbyNames(r#"FIRST 1 ("pg2")"#.into())]), |_| true),
        row("sync on: adding a standby sets the GUC first",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: sync_value(&[]), version: 9 }))),
            local(primary_with(&[("pg2", "async", 1000), ("pg3", "async", 1000)], "")))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(vec![RenewLeader, WriteStatus, slots_for_others(),
                         SetSyncStandbyNames(r#"FIRST 1 ("pg2")"#.into())], |_| true),
        row("sync on: ... and the key once the standby is synchronous and caught up",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: sync_value(&[]), version: 9 }))),
            with(local(primary_with(&[("pg2", "sync", 1000), ("pg3", "async", 1000)], r#"FIRST 1 ("pg2")"#)),
                 |l| l.sync_catchup_lsn = 1000))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(upkeep(vec![sync_key(&["pg2"])]), |_| true),
        row("sync on: a standby not yet caught up stays out of the key",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: sync_value(&[]), version: 9 }))),
            with(local(primary_with(&[("pg2", "sync", 900)], r#"FIRST 1 ("pg2")"#)),
                 |l| l.sync_catchup_lsn = 1000))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(upkeep(vec![]), |_| true),
        row("sync on: a synchronous standby that left is removed from the key first, and the GUC names the other in the same loop (issue 14: a loop later kept strict mode's commits waiting one more loop)",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: sync_value(&["pg2"]), version: 9 }))),
            local(primary_with(&[("pg3", "async", 1000)], r#"FIRST 1 ("pg2")"#)))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(upkeep(vec![sync_key(&[]), SetSyncStandbyNames(r#"FIRST 1 ("pg3")"#.into())]), |_| true),
        row("sync strict: a synchronous standby that left is removed from the key, and the GUC waits for any standby in the same loop",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: sync_value(&["pg2"]), version: 9 }))),
            local(primary_with(&[], r#"FIRST 1 ("pg2")"#)))
            .cfg(|c| { c.dynamic.synchronous_mode = SyncMode::On; c.dynamic.synchronous_mode_strict = true; })
            .expect(upkeep(vec![sync_key(&[]), SetSyncStandbyNames("*".into())]), |_| true),
        row("sync strict without standbys: commits wait for any standby",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: sync_value(&[]), version: 9 }))),
            local(primary_with(&[], "")))
            .cfg(|c| { c.dynamic.synchronous_mode = SyncMode::On; c.dynamic.synchronous_mode_strict = true; })
            .expect(upkeep(vec![SetSyncStandbyNames("*".into())]), |_| true),
        row("sync on: a nosync standby is never synchronous",
            Some(with(cluster(Some(ME)), |c| {
                c.sync = Some(Versioned { value: sync_value(&[]), version: 9 });
                c.members[1].data.tags.nosync = true;
            })),
            local(primary_with(&[("pg2", "async", 1000), ("pg3", "async", 1000)], "")))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(vec![RenewLeader, WriteStatus, slots_for_others(),
                         SetSyncStandbyNames(r#"FIRST 1 ("pg3")"#.into())], |_| true),
        row("§7 sync: no synchronous standby listed: no automatic failover",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: None, quorum: None }, version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(vec![], |r| *r == Reason::NotSynchronousStandby),
        row("sync on: the key's own leader races again when the key lists nobody (it alone holds every acknowledged commit; sim seed 9)",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: sync_value(&[]), version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg3", 2000)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(promoting(AcquireLeader, vec![]), |_| true),
        row("sync on: the key's own leader does not race while the key lists a standby (that one may have been promoted and acknowledged commits)",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: sync_value(&["pg3"]), version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(vec![], |r| *r == Reason::NotSynchronousStandby),
        row("sync on: the key's own leader races again when the key lists only nofailover members (none can have been promoted; sim seed 93)",
            Some(with(cluster(None), |c| {
                c.sync = Some(Versioned { value: sync_value(&["pg3"]), version: 9 });
                c.members[2].data.tags.nofailover = true;
            })),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![with(peer("pg3", 1000), |p| p.nofailover = true)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(promoting(AcquireLeader, vec![]), |_| true),
        row("sync on: a standby that may be promoted replaces a nofailover synchronous standby (Patroni prefers them; sim seed 93)",
            Some(with(cluster(Some(ME)), |c| {
                c.sync = Some(Versioned { value: sync_value(&["pg2"]), version: 9 });
                c.members[1].data.tags.nofailover = true;
            })),
            with(local(primary_with(&[("pg2", "sync", 1000), ("pg3", "async", 1000)], r#"FIRST 1 ("pg2")"#)), |l| l.sync_catchup_lsn = 1000))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            // The key shrinks first, then synchronous_standby_names names pg3 (same loop, after the
            // key write succeeded); the key lists pg3 once it caught up (a later loop).
            .expect(upkeep(vec![sync_key(&[]), SetSyncStandbyNames(r#"FIRST 1 ("pg3")"#.into())]), |_| true),
        row("quorum: the leader that stepped down for a switchover races again when the key lists no voter (no other member may promote; sim seed 85)",
            Some(with(cluster(None), |c| {
                c.failover = failover(Some(ME), Some("pg3"));
                c.sync = Some(Versioned { value: quorum_value("", 0), version: 9 });
            })),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg3", 1000)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(promoting(AcquireLeader, vec![]), |_| true),
        row("sync on: no sync key at all (synchronous replication never activated): the asynchronous race rules apply (sim seed 29328)",
            Some(cluster(None)),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg3", 900)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(promoting(AcquireLeader, vec![]), |_| true),
        row("sync on: no sync key at all: a member behind a peer does not race",
            Some(cluster(None)),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg3", 2000)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(vec![], |r| matches!(r, Reason::NotHealthiest { .. })),
        row("sync strict: the last known primary (the sync key's leader, no standby listed) promotes after coming back as a replica (nemesis seed 12)",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some(ME.into()), sync_standby: None, quorum: None }, version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg2", 900), peer("pg3", 900)])))
            .cfg(|c| { c.dynamic.synchronous_mode = SyncMode::On; c.dynamic.synchronous_mode_strict = true; })
            .expect(promoting(AcquireLeader, vec![SetSyncStandbyNames("*".into())]), |_| true),
        row("sync strict: the listed synchronous standby promotes with synchronous_standby_names '*'",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: Some(ME.into()), quorum: None }, version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg3", 2000)])))
            .cfg(|c| { c.dynamic.synchronous_mode = SyncMode::On; c.dynamic.synchronous_mode_strict = true; })
            .expect(promoting(AcquireLeader, vec![SetSyncStandbyNames("*".into())]), |_| true),
        row("sync on: switchover to an asynchronous standby is refused",
            Some(with(cluster(Some(ME)), |c| {
                c.failover = failover(Some(ME), Some("pg3"));
                c.sync = Some(Versioned { value: sync_value(&["pg2"]), version: 9 });
            })),
            with(local(running(true, 1000, None)), |l| l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
            .expect(vec![RenewLeader, WriteStatus, ClearFailover(42)], |r| matches!(r, Reason::ManualFailoverImpossible { .. })),
        // --- quorum commit (synchronous_mode: quorum; Patroni's quorum.py), one row per step ---
        row("quorum: a second standby joins the sync key (quorum 1) before synchronous_standby_names widens",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: quorum_value("pg2", 0), version: 9 }))),
            with(local(primary_with(&[("pg2", "quorum", 1000), ("pg3", "async", 1000)], r#"ANY 1 ("pg2")"#)),
                 |l| l.sync_catchup_lsn = 1000))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(upkeep(vec![WriteSync(quorum_value("pg2,pg3", 1)),
                         SetSyncStandbyNames(r#"ANY 1 ("pg2","pg3")"#.into())]), |_| true),
        row("quorum: a standby that left leaves synchronous_standby_names before the sync key",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: quorum_value("pg2,pg3", 1), version: 9 }))),
            with(local(primary_with(&[("pg2", "quorum", 1000)], r#"ANY 1 ("pg2","pg3")"#)), |l| l.sync_catchup_lsn = 1000))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(upkeep(vec![SetSyncStandbyNames(r#"ANY 1 ("pg2")"#.into())]), |_| true),
        row("quorum: ... then the sync key shrinks (quorum 0) once the remaining standby confirmed",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: quorum_value("pg2,pg3", 1), version: 9 }))),
            with(local(primary_with(&[("pg2", "quorum", 1000)], r#"ANY 1 ("pg2")"#)), |l| l.sync_catchup_lsn = 1000))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(upkeep(vec![WriteSync(quorum_value("pg2", 0))]), |_| true),
        row("quorum: ... not before (it may lack a commit only the gone standby acknowledged)",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: quorum_value("pg2,pg3", 1), version: 9 }))),
            with(local(primary_with(&[("pg2", "quorum", 900)], r#"ANY 1 ("pg2")"#)), |l| l.sync_catchup_lsn = 1000))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(upkeep(vec![]), |_| true),
        row("quorum: synchronous_node_count 1 -> 2: ANY 2 first",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: quorum_value("pg2,pg3", 1), version: 9 }))),
            with(local(primary_with(&[("pg2", "quorum", 1000), ("pg3", "quorum", 1000)], r#"ANY 1 ("pg2","pg3")"#)),
                 |l| l.sync_catchup_lsn = 1000))
            .cfg(|c| { c.dynamic.synchronous_mode = SyncMode::Quorum; c.dynamic.synchronous_node_count = 2; })
            .expect(upkeep(vec![SetSyncStandbyNames(r#"ANY 2 ("pg2","pg3")"#.into())]), |_| true),
        row("quorum: synchronous_node_count 1 -> 2: then quorum rewritten 1 -> 0 once both standbys confirmed",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: quorum_value("pg2,pg3", 1), version: 9 }))),
            with(local(primary_with(&[("pg2", "quorum", 1000), ("pg3", "quorum", 1000)], r#"ANY 2 ("pg2","pg3")"#)),
                 |l| l.sync_catchup_lsn = 1000))
            .cfg(|c| { c.dynamic.synchronous_mode = SyncMode::Quorum; c.dynamic.synchronous_node_count = 2; })
            .expect(upkeep(vec![WriteSync(quorum_value("pg2,pg3", 0))]), |_| true),
        row("quorum: synchronous_node_count 2 -> 1: quorum rewritten 0 -> 1 before ANY 1",
            Some(with(cluster(Some(ME)), |c| c.sync = Some(Versioned { value: quorum_value("pg2,pg3", 0), version: 9 }))),
            with(local(primary_with(&[("pg2", "quorum", 1000), ("pg3", "quorum", 1000)], r#"ANY 2 ("pg2","pg3")"#)),
                 |l| l.sync_catchup_lsn = 1000))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(upkeep(vec![WriteSync(quorum_value("pg2,pg3", 1)),
                         SetSyncStandbyNames(r#"ANY 1 ("pg2","pg3")"#.into())]), |_| true),
        row("quorum: a voter seeing `quorum` key members at or behind it promotes, synchronous to the others",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: Some("pg1,pg3".into()), quorum: Some(1) }, version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg3", 1000)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(promoting(AcquireLeader, vec![SetSyncStandbyNames(r#"ANY 1 ("pg2","pg3")"#.into())]), |_| true),
        row("quorum: a voter that cannot see `quorum` key members does not promote",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: Some("pg1,pg3".into()), quorum: Some(1) }, version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(vec![], |r| r.to_string().contains("quorum commit needs 1 vote(s)")),
        row("quorum: the key's own leader, back as a replica, promotes when the key lists no voter (it alone acknowledged every commit; sim seed 14)",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some(ME.into()), sync_standby: None, quorum: Some(0) }, version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(promoting(AcquireLeader, vec![]), |_| true),
        row("quorum: the key's own leader, back as a replica, needs quorum votes while the key lists voters (one may have been promoted since with votes, the key not rewritten; sim)",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: quorum_value("pg2,pg3", 1), version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(vec![], |r| r.to_string().contains("quorum commit needs 1 vote(s)")),
        row("quorum: the key's own leader promotes with a vote from a voter at or behind it",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: quorum_value("pg2,pg3", 1), version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg2", 1000)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(promoting(AcquireLeader, vec![SetSyncStandbyNames(r#"ANY 1 ("pg2","pg3")"#.into())]), |_| true),
        row("quorum: a key listing no voter lets no other member promote",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: None, quorum: Some(0) }, version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg3", 1000)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(vec![], |r| *r == Reason::NotSynchronousStandby),
        row("quorum: a member outside the key promotes with quorum + 1 votes",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: Some("pg3".into()), quorum: Some(0) }, version: 9 }))),
            with(local(running(false, 1000, Some(5432))), |l| l.peers = Some(vec![peer("pg3", 1000)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(promoting(AcquireLeader, vec![SetSyncStandbyNames(r#"ANY 2 ("pg2","pg3")"#.into())]), |_| true),
        row("quorum: a voter on a later timeline does not vote for a member left on an earlier one, even at a lower LSN (it holds commits of a promotion this member never saw; the vote compares (timeline, LSN))",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: Some("pg1,pg3".into()), quorum: Some(1) }, version: 9 }))),
            with(local(running(false, 1500, Some(5432))), |l| l.peers = Some(vec![PeerStatus { timeline: 2, nofailover: true, ..peer("pg3", 1200) }])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(vec![], |r| r.to_string().contains("quorum commit needs 1 vote(s)")),
        row("quorum: a voter on an earlier timeline at a higher LSN votes for a member on a later one (its WAL past the switch point holds no acknowledged commit)",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: Some("pg1,pg3".into()), quorum: Some(1) }, version: 9 }))),
            with(local(with_timeline(running(false, 1100, Some(5432)), 2)), |l| l.peers = Some(vec![PeerStatus { timeline: 1, ..peer("pg3", 1500) }])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(promoting(AcquireLeader, vec![SetSyncStandbyNames(r#"ANY 1 ("pg2","pg3")"#.into())]), |_| true),
        row("quorum: a voter whose timeline is unknown does not vote",
            Some(with(cluster(None), |c| c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: Some("pg1,pg3".into()), quorum: Some(1) }, version: 9 }))),
            with(local(running(false, 1500, Some(5432))), |l| l.peers = Some(vec![PeerStatus { timeline: 0, ..peer("pg3", 1200) }])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(vec![], |r| r.to_string().contains("quorum commit needs 1 vote(s)")),
        row("quorum: a switchover candidate that cannot gather its votes (left on an older timeline) is not waited for; this member, voted for, promotes (sim seed 13,377)",
            Some(with(cluster(None), |c| {
                c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: Some("pg1,pg3".into()), quorum: Some(1) }, version: 9 });
                c.failover = failover(Some("pg2"), Some("pg3"));
            })),
            with(local(with_timeline(running(false, 5000, Some(5432)), 3)), |l| l.peers = Some(vec![
                PeerStatus { timeline: 3, ..peer("pg2", 5000) },
                PeerStatus { timeline: 1, ..peer("pg3", 4000) },
            ])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(promoting(AcquireLeader, vec![SetSyncStandbyNames(r#"ANY 1 ("pg2","pg3")"#.into())]), |_| true),
        row("quorum: a switchover candidate that can gather its votes is waited for",
            Some(with(cluster(None), |c| {
                c.sync = Some(Versioned { value: SyncState { leader: Some("pg2".into()), sync_standby: Some("pg1,pg3".into()), quorum: Some(1) }, version: 9 });
                c.failover = failover(Some("pg2"), Some("pg3"));
            })),
            with(local(running(false, 5000, Some(5432))), |l| l.peers = Some(vec![peer("pg2", 5000), peer("pg3", 5000)])))
            .cfg(|c| c.dynamic.synchronous_mode = SyncMode::Quorum)
            .expect(vec![], |r| matches!(r, Reason::WaitingForCandidate { .. })),
        row("diverged, no rewind, remove_data_directory_on_diverged_timelines: re-clone",
            Some(on_tl2(cluster(Some("pg2")))), stopped_with(ClusterState::ShutDown, 1, 6000))
            .cfg(|c| c.remove_data_on_diverged = true)
            .expect(vec![RemoveDataDirectory], |r| *r == Reason::RemovingDivergedDataDirectory),
    ]
}

/// `1 + ceil(retry_timeout / loop_wait)` failed releases in a row before a lapsed leader drops
/// its DCS session (`lapsed::releases_before_dropping_session`).
#[test]
fn failed_releases_before_the_session_goes_cover_retry_timeout() {
    let n = |loop_wait, retry_timeout| {
        crate::ha::lapsed::releases_before_dropping_session(&DynamicConfig {
            loop_wait,
            retry_timeout,
            ..Default::default()
        })
    };
    assert_eq!(n(10, 10), 2, "Patroni's defaults");
    assert_eq!(n(1, 2), 3);
    assert_eq!(n(1, 10), 11);
    assert_eq!(n(10, 25), 4, "rounded up");
    assert_eq!(n(0, 0), 2, "zero values count as 1 s");
}

#[test]
fn decide_table() {
    let mut failures = Vec::new();
    for r in rows() {
        let d = decide(r.view.as_ref(), &r.local, &r.cfg, NOW);
        if d.actions != r.actions || !(r.reason)(&d.reason) {
            failures.push(format!(
                "{}:\n   got {:?} / {}\n  want {:?}",
                r.name, d.actions, d.reason, r.actions
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// The runner keeps when the wait for the proxies began only while `decide` goes on promoting
/// ([`Decision::promotes`]); a member that stops being the candidate forgets it, so that a later
/// candidacy after the same former leader (which led again) waits for the proxies afresh.
#[test]
fn the_proxies_wait_start_is_kept_only_while_the_member_is_the_candidate() {
    let proxy_on_pg2 = |leader: Option<&str>| {
        with(proxy_on_former_leader(), |c| {
            c.leader = cluster(leader).leader;
            c.members = cluster(leader).members;
        })
    };
    let rows = [
        (
            "no leader, 4.5 s into the wait: still the candidate, keep it",
            Some(proxy_on_pg2(None)),
            racing_replica_waiting_since(4_500),
            true,
        ),
        (
            "no leader, past the contact deadline: promotes, keep it (cleared on promotion)",
            Some(proxy_on_pg2(None)),
            racing_replica_waiting_since(4_800),
            true,
        ),
        (
            "the former leader pg2 took the lock back: follows it, forget the start",
            Some(proxy_on_pg2(Some("pg2"))),
            racing_replica_waiting_since(4_500),
            false,
        ),
        (
            "another member, pg3, took the lock: follows it, forget the start",
            Some(proxy_on_pg2(Some("pg3"))),
            racing_replica_waiting_since(4_500),
            false,
        ),
        (
            "the DCS cannot be read: no promotion, forget the start (the next wait is longer, \
             never shorter)",
            None,
            racing_replica_waiting_since(4_500),
            false,
        ),
    ];
    let mut failures = Vec::new();
    for (name, view, local, keeps) in rows {
        let d = decide(view.as_ref(), &local, &cfg(), NOW);
        if d.promotes() != keeps {
            failures.push(format!("{name}: got {:?} / {}", d.actions, d.reason));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn needs_peers_only_for_a_race_or_a_switchover() {
    assert!(needs_peers(Some(&cluster(None)), ME));
    assert!(!needs_peers(Some(&cluster(Some("pg2"))), ME));
    assert!(!needs_peers(Some(&cluster(Some(ME))), ME));
    let sw = with(cluster(Some(ME)), |c| {
        c.failover = failover(Some(ME), Some("pg2"))
    });
    assert!(needs_peers(Some(&sw), ME));
    assert!(!needs_peers(None, ME));
}

#[test]
fn slot_names_follow_postgres_rules() {
    assert_eq!(slot_name("PG-01.east"), "pg_01_east");
    assert_eq!(slot_name(&"x".repeat(80)).len(), 63);
}

/// Every background action is last in its list (the runner starts it and ends the list).
#[test]
fn background_actions_end_their_list() {
    for r in rows() {
        let d = decide(r.view.as_ref(), &r.local, &r.cfg, NOW);
        if let Some(pos) = d.actions.iter().position(Action::is_background) {
            assert_eq!(pos, d.actions.len() - 1, "{}", r.name);
        }
    }
}

#[test]
fn demote_deadline_is_loop_wait_plus_retry_timeout_after_the_renewal_unless_a_watchdog_is_tighter()
{
    let dynamic = cfg().dynamic; // loop_wait 1, retry_timeout 2
    assert_eq!(demote_deadline_ms(None, &dynamic, None), None);
    assert_eq!(
        demote_deadline_ms(Some(10_000), &dynamic, None),
        Some(13_000)
    );
    // Patroni's defaults with safety_margin 5: the 25 s watchdog is looser than the 20 s window.
    let defaults = DynamicConfig {
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        ..Default::default()
    };
    assert_eq!(
        demote_deadline_ms(Some(0), &defaults, Some(25)),
        Some(20_000)
    );
    // A large safety_margin: demote a second before the watchdog would reset the node.
    assert_eq!(
        demote_deadline_ms(Some(0), &defaults, Some(15)),
        Some(14_000)
    );
}

#[test]
fn a_leader_past_its_demotion_deadline_stops_postgres_first() {
    let d = DynamicConfig {
        ttl: 30,
        loop_wait: 10,
        retry_timeout: 10,
        ..Default::default()
    };
    /// (case, last renewal, armed watchdog timeout, now, past the deadline)
    type Row = (&'static str, Option<u64>, Option<u32>, u64, bool);
    let rows: [Row; 6] = [
        ("not leading", None, None, 1_000_000, false),
        ("renewed 19.9 s ago", Some(100_000), None, 119_900, false),
        (
            "renewed loop_wait + retry_timeout ago",
            Some(100_000),
            None,
            120_000,
            true,
        ),
        ("frozen for a minute", Some(100_000), None, 160_000, true),
        (
            "a 15 s watchdog: deadline 14 s",
            Some(100_000),
            Some(15),
            114_000,
            true,
        ),
        (
            "a 25 s watchdog does not move it",
            Some(100_000),
            Some(25),
            119_000,
            false,
        ),
    ];
    for (case, renewed, wd, now, want) in rows {
        assert_eq!(
            past_demote_deadline(renewed, &d, wd, false, now),
            want,
            "{case}"
        );
    }
    assert!(
        !past_demote_deadline(Some(100_000), &d, None, true, 160_000),
        "failsafe mode kept the primary last cycle, or is on and the last cycle's DCS call \
         failed (the DCS died between the read and the renewal): ask the members first"
    );
}

#[test]
fn the_demotion_deadline_stops_only_a_postgres_that_may_accept_writes() {
    let replica = running(false, 1000, Some(5432));
    let primary = running(true, 1000, None);
    /// (case, PostgreSQL last seen, promotion or primary start issued since, a read-only start
    /// task runs, may accept writes)
    type Row = (&'static str, Postgres, bool, bool, bool);
    let rows: [Row; 8] = [
        (
            "a replica in recovery",
            replica.clone(),
            false,
            false,
            false,
        ),
        (
            "a replica whose promotion was issued",
            replica,
            true,
            false,
            true,
        ),
        ("a primary", primary, false, false, true),
        (
            "starting (maybe as primary)",
            Postgres::Starting,
            false,
            false,
            true,
        ),
        (
            "starting read-only (a start as replica or after a rewind)",
            Postgres::Starting,
            false,
            true,
            false,
        ),
        (
            "starting read-only, start as primary issued since",
            Postgres::Starting,
            true,
            true,
            true,
        ),
        (
            "stopped (a start may follow)",
            Postgres::Stopped { control: None },
            false,
            false,
            true,
        ),
        (
            "stopped, start as primary issued",
            Postgres::Stopped { control: None },
            true,
            false,
            true,
        ),
    ];
    for (case, pg, issued, read_only_start, want) in rows {
        assert_eq!(
            may_accept_writes(&pg, issued, read_only_start),
            want,
            "{case}"
        );
    }
}

// --- Standby clusters (ha::standby; Patroni 4.1's ha.py standby leader paths) ---------------------

/// `standby_cluster: {host: 127.0.0.1, port: 6000}`.
fn standby_cfg(c: &mut HaConfig) {
    c.dynamic.standby_cluster = Some(praetor_config::StandbyCluster {
        host: Some("127.0.0.1".into()),
        port: Some(6000),
        ..Default::default()
    });
}

/// The remote of [`standby_cfg`].
fn remote() -> Upstream {
    Upstream {
        member: standby::REMOTE_MEMBER.into(),
        host: "127.0.0.1".into(),
        port: 6000,
    }
}

fn standby_rows() -> Vec<Row> {
    use Action::*;
    let empty = LocalState {
        data: DataDir::Empty,
        postgres: Postgres::Stopped { control: None },
        ..local(Postgres::Stopped { control: None })
    };
    let uninitialized = with(cluster(None), |c| c.initialize = None);
    // The standby leader's own member key says so (published by the runner).
    let standby_led_by_me = with(cluster(Some(ME)), |c| {
        c.members[0].data.role = Role::StandbyLeader
    });
    vec![
        row(
            "standby: empty data directory, no initialize: race, then clone the standby leader from the remote",
            Some(uninitialized.clone()),
            empty.clone(),
        )
        .cfg(standby_cfg)
        .expect(
            vec![
                RaceInitialize,
                Clone {
                    source: remote(),
                    leader: remote(),
                },
            ],
            |r| *r == Reason::BootstrappingStandbyLeader,
        ),
        row(
            "standby: only restore_command: race, then create the replica from the archive (no_leader methods)",
            Some(uninitialized),
            empty.clone(),
        )
        .cfg(|c| {
            c.dynamic.standby_cluster = Some(praetor_config::StandbyCluster {
                restore_command: Some("cp /archive/%f %p".into()),
                ..Default::default()
            })
        })
        .expect(vec![RaceInitialize, CloneWithoutLeader], |r| {
            *r == Reason::BootstrappingStandbyLeader
        }),
        row(
            "standby: the clone from the remote failed after winning the race: it is tried again, keeping the race",
            Some(with(cluster(None), |c| c.initialize = Some(String::new()))),
            with(empty.clone(), |l| l.won_initialize = true),
        )
        .cfg(standby_cfg)
        .expect(
            vec![Clone {
                source: remote(),
                leader: remote(),
            }],
            |r| *r == Reason::BootstrappingStandbyLeader,
        ),
        row(
            "standby: a section with neither host, port nor restore_command is not in force (Patroni)",
            Some(with(cluster(None), |c| c.initialize = None)),
            empty.clone(),
        )
        .cfg(|c| {
            c.dynamic.standby_cluster = Some(praetor_config::StandbyCluster {
                primary_slot_name: Some("s1".into()),
                ..Default::default()
            })
        })
        .expect(vec![RaceInitialize, Bootstrap], |r| {
            *r == Reason::BootstrappingNewCluster
        }),
        row(
            "standby: empty member of an initialized standby cluster clones from the standby leader",
            Some(cluster(Some("pg2"))),
            empty,
        )
        .cfg(standby_cfg)
        .expect(
            vec![Clone {
                source: up("pg2", 5432),
                leader: up("pg2", 5432),
            }],
            |r| matches!(r, Reason::BootstrapFromLeader { .. }),
        ),
        row(
            "standby: the lock holder's PostgreSQL is stopped: start it following the remote, no promotion",
            Some(standby_led_by_me.clone()),
            local(Postgres::Stopped { control: None }),
        )
        .cfg(standby_cfg)
        .expect(
            vec![
                RenewLeader,
                Start(StartAs::Replica {
                    upstream: Some(remote()),
                }),
            ],
            |r| *r == Reason::StartingAsStandbyLeader,
        ),
        row(
            "standby: the standby leader streaming from the remote renews, publishes status, keeps its replicas' slots",
            Some(standby_led_by_me.clone()),
            sl_local(running(false, 1000, Some(6000))),
        )
        .cfg(standby_cfg)
        .expect(
            upkeep(vec![]),
            |r| matches!(r, Reason::StandbyLeaderWithLock { .. }),
        ),
        row(
            "standby: no watchdog is armed for a standby leader (it is no primary)",
            Some(standby_led_by_me.clone()),
            with(sl_local(running(false, 1000, Some(6000))), |l| {
                l.watchdog = WatchdogState::NotArmed
            }),
        )
        .cfg(standby_cfg)
        .expect(
            upkeep(vec![]),
            |r| matches!(r, Reason::StandbyLeaderWithLock { .. }),
        ),
        row(
            "standby: a lock holder streaming from someone else is re-pointed at the remote",
            Some(standby_led_by_me.clone()),
            local(running(false, 1000, Some(5432))),
        )
        .cfg(standby_cfg)
        .expect(
            upkeep(vec![Follow(Some(remote()))]),
            |r| *r == Reason::BecomingStandbyLeader,
        ),
        row(
            "standby: demote-cluster: the primary holding the lock stops (fast), keeping the lock; the next loop judges it against the remote",
            Some(cluster(Some(ME))),
            local(running(true, 1000, None)),
        )
        .cfg(standby_cfg)
        .expect(vec![RenewLeader, Stop(StopMode::Fast)], |r| {
            *r == Reason::CannotBePrimaryInStandbyCluster
        }),
        row(
            "standby: a replica cascades from the standby leader",
            Some(cluster(Some("pg2"))),
            local(running(false, 1000, Some(5432))),
        )
        .cfg(standby_cfg)
        .expect(vec![], |r| matches!(r, Reason::Following { .. })),
        row(
            "standby: no lock holder: the healthiest takes the lock and follows the remote, without promoting or fencing",
            Some(cluster(None)),
            with(racing_replica(), |l| l.former_leader = Some(up("pg2", 5432))),
        )
        .cfg(standby_cfg)
        .expect(
            vec![
                AcquireLeader,
                slots_for_others(),
                Follow(Some(remote())),
                WriteStatus,
            ],
            |r| *r == Reason::StandbyLeaderByAcquiringLock,
        ),
        row(
            "standby: no lock holder: a replica that is not the healthiest follows the remote meanwhile",
            Some(cluster(None)),
            with(local(running(false, 800, Some(5432))), |l| {
                l.peers = Some(vec![peer("pg3", 1000)])
            }),
        )
        .cfg(standby_cfg)
        .expect(vec![Follow(Some(remote()))], |r| {
            *r == Reason::FollowingRemoteWhileUnlocked
        }),
        row(
            "standby: no lock holder: a stopped member starts following the remote",
            Some(cluster(None)),
            local(Postgres::Stopped { control: None }),
        )
        .cfg(standby_cfg)
        .expect(
            vec![Start(StartAs::Replica {
                upstream: Some(remote()),
            })],
            |r| *r == Reason::FollowingRemoteWhileUnlocked,
        ),
        row(
            "standby section removed (promote-cluster): the standby leader promotes and fences nothing (its upstream is the other cluster's primary)",
            Some(standby_led_by_me.clone()),
            sl_local(running(false, 1000, Some(6000))),
        )
        .expect(
            vec![RenewLeader, slots_for_others(), RenewLeader, promote()],
            |r| *r == Reason::PromotedBecauseHadLock,
        ),
        row(
            "a lock holder in recovery whose key says replica (restarted agent, no memory) still fences its upstream",
            Some(cluster(Some(ME))),
            local(running(false, 1000, Some(5432))),
        )
        .expect(
            promoting(RenewLeader, vec![]),
            |r| *r == Reason::PromotedBecauseHadLock,
        ),
        row(
            "standby: a switchover asks the standby leader to step down: stop, release the lock",
            Some(with(standby_led_by_me.clone(), |c| {
                c.failover = failover(Some(ME), Some("pg2"))
            })),
            with(sl_local(running(false, 1000, Some(6000))), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 1000)])
            }),
        )
        .cfg(standby_cfg)
        .expect(vec![Stop(StopMode::Fast), ReleaseLeader], |r| {
            matches!(r, Reason::ManualFailoverDemoting { .. })
        }),
        row(
            "standby: demoted former primary shut down past the remote's fork (it was written to after the other cluster's promotion): pg_rewind from the remote",
            Some(standby_led_by_me.clone()),
            demoted(1500, true, Some(remote_on_tl2())),
        )
        .cfg(standby_rewind_cfg)
        .expect(vec![RenewLeader, Rewind(remote())], |r| {
            matches!(r, Reason::RewindingFromRemote { port: 6000, .. })
        }),
        row(
            "standby: the same with use_pg_rewind off: stays stopped, keeps the lock and its data, says why",
            Some(standby_led_by_me.clone()),
            demoted(1500, true, Some(remote_on_tl2())),
        )
        .cfg(standby_cfg)
        .expect(vec![RenewLeader], |r| {
            *r == Reason::DivergedNoRewind {
                local_lsn: 1500,
                switch_lsn: 1000,
                timeline: 1,
            }
        }),
        row(
            "standby: the same with remove_data_directory_on_diverged_timelines: still kept (Patroni never reinitializes a diverged standby leader)",
            Some(standby_led_by_me.clone()),
            demoted(1500, true, Some(remote_on_tl2())),
        )
        .cfg(|c| {
            standby_cfg(c);
            c.remove_data_on_diverged = true;
            c.remove_data_on_rewind_failure = true;
        })
        .expect(vec![RenewLeader], |r| {
            matches!(r, Reason::DivergedNoRewind { .. })
        }),
        row(
            "standby: a failed pg_rewind from the remote is retried at the failed-task pace, the lock renewed meanwhile",
            Some(standby_led_by_me.clone()),
            with(demoted(1500, true, Some(remote_on_tl2())), |l| {
                l.failed_task = Some((Task::Rewind, NOW.mono_ms - 1000))
            }),
        )
        .cfg(standby_rewind_cfg)
        .expect(vec![RenewLeader], |r| {
            matches!(r, Reason::RetryingTaskLater { task: Task::Rewind, .. })
        }),
        row(
            "standby: diverged from the remote but neither checksums nor wal_log_hints: stays stopped, says why",
            Some(standby_led_by_me.clone()),
            demoted(1500, false, Some(remote_on_tl2())),
        )
        .cfg(standby_rewind_cfg)
        .expect(vec![RenewLeader], |r| {
            *r == Reason::NotRewindable { timeline: 1 }
        }),
        row(
            "standby: a former primary whose shutdown checkpoint lies before the remote's fork starts following the remote as it is",
            Some(standby_led_by_me.clone()),
            demoted(900, true, Some(remote_on_tl2())),
        )
        .cfg(standby_rewind_cfg)
        .expect(
            vec![
                RenewLeader,
                Start(StartAs::Replica {
                    upstream: Some(remote()),
                }),
            ],
            |r| *r == Reason::StartingAsStandbyLeader,
        ),
        row(
            "standby: the remote's timeline is not known (no answer, or in recovery): start following it as it is (Patroni)",
            Some(standby_led_by_me.clone()),
            demoted(1500, true, None),
        )
        .cfg(standby_rewind_cfg)
        .expect(
            vec![
                RenewLeader,
                Start(StartAs::Replica {
                    upstream: Some(remote()),
                }),
            ],
            |r| *r == Reason::StartingAsStandbyLeader,
        ),
        row(
            "standby: the remote's history does not list our timeline (rewind off): diverged, kept",
            Some(standby_led_by_me.clone()),
            with(demoted(1500, true, Some(remote_on_tl2())), |l| {
                if let Postgres::Stopped {
                    control: Some(cd),
                } = &mut l.postgres
                {
                    cd.timeline = 3;
                }
                l.remote = Some(standby::RemoteTimeline {
                    timeline: 4,
                    history: vec![hist_entry(1, 500), hist_entry(2, 800)],
                });
            }),
        )
        .cfg(standby_cfg)
        .expect(vec![RenewLeader], |r| {
            *r == Reason::DivergedNoRewind {
                local_lsn: 1500,
                switch_lsn: 0,
                timeline: 3,
            }
        }),
        row(
            "standby: a running standby leader on a timeline the remote left, past its fork: stop (fast), keeping the lock, to rewind",
            Some(standby_led_by_me.clone()),
            with(sl_local(running(false, 1500, Some(6000))), |l| {
                l.remote = Some(remote_on_tl2())
            }),
        )
        .cfg(standby_rewind_cfg)
        .expect(vec![RenewLeader, Stop(StopMode::Fast)], |r| {
            *r == Reason::Diverged {
                timeline: 1,
                switch_lsn: 1000,
                stopping: true,
            }
        }),
        row(
            "standby: a running standby leader before the remote's fork keeps streaming (it follows the timeline switch)",
            Some(standby_led_by_me.clone()),
            with(sl_local(running(false, 1000, Some(6000))), |l| {
                l.remote = Some(remote_on_tl2())
            }),
        )
        .cfg(standby_rewind_cfg)
        .expect(
            upkeep(vec![]),
            |r| matches!(r, Reason::StandbyLeaderWithLock { .. }),
        ),
        row(
            "standby: primary_slot_name / restore_command / recovery_min_apply_delay changed in the section: rewrite and reload the standby leader's recovery settings",
            Some(standby_led_by_me.clone()),
            sl_local(running(false, 1000, Some(6000))),
        )
        .cfg(|c| {
            standby_cfg(c);
            let sc = c.dynamic.standby_cluster.as_mut().expect("section");
            sc.primary_slot_name = Some("dc2".into());
            sc.restore_command = Some("cp /archive/%f %p".into());
            sc.recovery_min_apply_delay = Some("5min".into());
        })
        .expect(
            upkeep(vec![Follow(Some(remote()))]),
            |r| *r == Reason::ApplyingStandbyClusterSettings,
        ),
        row(
            "standby: the agent restarted next to a running standby leader (settings written unknown): rewrite and reload once",
            Some(standby_led_by_me.clone()),
            local(running(false, 1000, Some(6000))),
        )
        .cfg(standby_cfg)
        .expect(
            upkeep(vec![Follow(Some(remote()))]),
            |r| *r == Reason::ApplyingStandbyClusterSettings,
        ),
        row(
            "standby: a replica on a timeline the standby leader left, past the remote's fork (the remote's history): stop to rewind",
            Some(with(cluster(Some("pg2")), |c| {
                c.members[1].data.role = Role::StandbyLeader;
                c.members[1].data.timeline = Some(2);
            })),
            with(local(running(false, 1500, Some(5432))), |l| {
                l.remote = Some(remote_on_tl2())
            }),
        )
        .cfg(standby_rewind_cfg)
        .expect(vec![Stop(StopMode::Fast)], |r| {
            *r == Reason::Diverged {
                timeline: 1,
                switch_lsn: 1000,
                stopping: true,
            }
        }),
        row(
            "standby: a stopped replica past the remote's fork rewinds from the standby leader (now on the remote's timeline)",
            Some(with(cluster(Some("pg2")), |c| {
                c.members[1].data.role = Role::StandbyLeader;
                c.members[1].data.timeline = Some(2);
            })),
            with(demoted(1500, true, Some(remote_on_tl2())), |l| {
                if let Postgres::Stopped {
                    control: Some(cd),
                } = &mut l.postgres
                {
                    cd.state = ClusterState::ShutDownInRecovery;
                }
            }),
        )
        .cfg(standby_rewind_cfg)
        .expect(vec![Rewind(up("pg2", 5432))], |r| {
            matches!(r, Reason::Rewinding { .. })
        }),
    ]
}

/// [`standby_cfg`] with `use_pg_rewind`.
fn standby_rewind_cfg(c: &mut HaConfig) {
    standby_cfg(c);
    c.dynamic.postgresql.use_pg_rewind = true;
}

/// A running standby leader whose configuration was written with [`standby_cfg`]'s section.
fn sl_local(postgres: Postgres) -> LocalState {
    with(local(postgres), |l| {
        l.remote_recovery = Some(standby::RemoteRecovery::default())
    })
}

/// The remote primary on timeline 2, forked off timeline 1 at 1000.
fn remote_on_tl2() -> standby::RemoteTimeline {
    standby::RemoteTimeline {
        timeline: 2,
        history: vec![hist_entry(1, 1000)],
    }
}

fn hist_entry(timeline: u32, lsn: u64) -> praetor_dcs::HistoryEntry {
    praetor_dcs::HistoryEntry {
        timeline,
        lsn,
        reason: "no recovery target specified".into(),
        timestamp: None,
        new_leader: None,
    }
}

/// A former primary stopped cleanly on timeline 1 with its shutdown checkpoint at `checkpoint_lsn`,
/// and what the runner learnt of the remote.
fn demoted(
    checkpoint_lsn: u64,
    rewindable: bool,
    remote: Option<standby::RemoteTimeline>,
) -> LocalState {
    with(
        local(Postgres::Stopped {
            control: Some(ControlData {
                state: ClusterState::ShutDown,
                timeline: 1,
                checkpoint_lsn,
                min_recovery_end_lsn: 0,
                min_recovery_end_timeline: 0,
                rewindable,
            }),
        }),
        |l| l.remote = remote,
    )
}

#[test]
fn standby_cluster_table() {
    let mut failures = Vec::new();
    for r in standby_rows() {
        let d = decide(r.view.as_ref(), &r.local, &r.cfg, NOW);
        if d.actions != r.actions || !(r.reason)(&d.reason) {
            failures.push(format!(
                "{}:\n   got {:?} / {}\n  want {:?}",
                r.name, d.actions, d.reason, r.actions
            ));
        }
        if let Some(pos) = d.actions.iter().position(Action::is_background) {
            assert_eq!(pos, d.actions.len() - 1, "{}", r.name);
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

/// Lock holder pg1 restarted read-only on timeline 2, which it created (its promotion record), at
/// 1000, with nobody to follow; pg2 and pg3 answer at `pg2` and `pg3` (timeline, LSN).
fn holder_in_recovery(pg2: (u32, u64), pg3: (u32, u64)) -> LocalState {
    let at = |name, (tl, wal): (u32, u64)| with(peer(name, wal), |p| p.timeline = tl);
    with(
        created_tl2(local(with_timeline(running(false, 1000, None), 2)), ME),
        |l| l.peers = Some(vec![at("pg2", pg2), at("pg3", pg3)]),
    )
}

/// [`cluster`] led by pg1 with switchover request (`leader`, `member`) pending.
fn switchover_pending(leader: Option<&str>, member: Option<&str>) -> Cluster {
    with(cluster(Some(ME)), |c| c.failover = failover(leader, member))
}

/// Today's rule for [`holder_in_recovery`]: promote (nobody to fence: it follows nobody and
/// remembers no former leader).
fn promoting_in_place() -> Vec<Action> {
    vec![
        Action::RenewLeader,
        slots_for_others(),
        Action::RenewLeader,
        promote(),
    ]
}

fn handing_over_to_pg2(r: &Reason) -> bool {
    *r == Reason::ManualFailoverHandingOver {
        candidate: "pg2".into(),
    }
}

/// A switchover asks a lock holder still in recovery to step down: it hands the lock over without
/// a promotion of its own when the candidate holds all its WAL (`ha::handover`), and promotes
/// first as before otherwise. Under the old rule every row promoted.
fn handover_rows() -> Vec<Row> {
    use Action::*;
    let handover = vec![WriteStatus, ReleaseLeader];
    vec![
        row(
            "holder in recovery on the timeline it created, switchover to pg2 which has all its \
             WAL: publish the last LSN and release the lock, no promotion",
            Some(switchover_pending(Some(ME), Some("pg2"))),
            holder_in_recovery((2, 1000), (2, 900)),
        )
        .expect(handover.clone(), handing_over_to_pg2),
        row(
            "holder in recovery, the DCS history credits it with its timeline (no promotion \
             record): hand over",
            Some(with(switchover_pending(Some(ME), Some("pg2")), |c| {
                c.history = Some(Versioned {
                    value: vec![with(hist_entry(1, 500), |e| e.new_leader = Some(ME.into()))],
                    version: 1,
                })
            })),
            with(holder_in_recovery((2, 1000), (2, 900)), |l| {
                l.promoted = None
            }),
        )
        .expect(handover.clone(), handing_over_to_pg2),
        row(
            "holder in recovery, request without a leader naming pg2, its last LSN already \
             published: release only",
            Some(with(switchover_pending(None, Some("pg2")), |c| {
                c.status = Some(Status {
                    optime: 1000,
                    ..Default::default()
                })
            })),
            holder_in_recovery((2, 1200), (2, 900)),
        )
        .expect(vec![ReleaseLeader], handing_over_to_pg2),
        row(
            "holder in recovery, switchover without a candidate: the member with the most WAL, \
             as the switchover path chooses",
            Some(switchover_pending(Some(ME), None)),
            holder_in_recovery((2, 1000), (2, 900)),
        )
        .expect(handover.clone(), handing_over_to_pg2),
        row(
            "holder in recovery, strict synchronous mode, the candidate listed in sync: hand over",
            Some(with(switchover_pending(Some(ME), Some("pg2")), |c| {
                c.sync = Some(Versioned {
                    value: sync_value(&["pg2"]),
                    version: 3,
                })
            })),
            holder_in_recovery((2, 1000), (2, 1000)),
        )
        .cfg(|c| {
            c.dynamic.synchronous_mode = SyncMode::On;
            c.dynamic.synchronous_mode_strict = true;
        })
        .expect(handover.clone(), handing_over_to_pg2),
        row(
            "holder in recovery, paused, the request names it and pg2: hand over (a manual \
             switchover works while paused)",
            Some(switchover_pending(Some(ME), Some("pg2"))),
            holder_in_recovery((2, 1000), (2, 900)),
        )
        .cfg(|c| c.dynamic.pause = true)
        .expect(
            handover.clone(),
            |r| matches!(r, Reason::Paused { inner } if handing_over_to_pg2(inner)),
        ),
        row(
            "holder in recovery, the candidate lacks some of its WAL: promote first (today's rule)",
            Some(switchover_pending(Some(ME), Some("pg2"))),
            holder_in_recovery((2, 990), (2, 1000)),
        )
        .expect(promoting_in_place(), |r| {
            *r == Reason::PromotedBecauseHadLock
        }),
        row(
            "holder in recovery, the candidate on an older timeline at a higher LSN: promote first",
            Some(switchover_pending(Some(ME), Some("pg2"))),
            holder_in_recovery((1, 2000), (2, 900)),
        )
        .expect(promoting_in_place(), |r| {
            *r == Reason::PromotedBecauseHadLock
        }),
        row(
            "holder in recovery on timeline 1 (no promotion created it: the data directory may be \
             a replica's, with WAL not replayed yet): promote first",
            Some(switchover_pending(Some(ME), Some("pg2"))),
            with(local(running(false, 1000, None)), |l| {
                l.peers = Some(vec![peer("pg2", 1000), peer("pg3", 900)])
            }),
        )
        .expect(promoting_in_place(), |r| {
            *r == Reason::PromotedBecauseHadLock
        }),
        row(
            "holder in recovery on timeline 2, which pg3 created (its WAL came from pg3, maybe \
             not all replayed): promote first",
            Some(switchover_pending(Some(ME), Some("pg2"))),
            with(holder_in_recovery((2, 1000), (2, 900)), |l| {
                l.promoted = Some(Promotion {
                    member: "pg3".into(),
                    timeline: 2,
                    lsn: 5000,
                })
            }),
        )
        .expect(promoting_in_place(), |r| {
            *r == Reason::PromotedBecauseHadLock
        }),
        row(
            "holder in recovery, synchronous mode on, the candidate not listed in sync: promote \
             first (the primary then finds the request impossible)",
            Some(with(switchover_pending(Some(ME), Some("pg2")), |c| {
                c.sync = Some(Versioned {
                    value: sync_value(&["pg3"]),
                    version: 3,
                })
            })),
            holder_in_recovery((2, 1000), (2, 1000)),
        )
        .cfg(|c| c.dynamic.synchronous_mode = SyncMode::On)
        .expect(promoting_in_place(), |r| {
            *r == Reason::PromotedBecauseHadLock
        }),
        row(
            "holder in recovery, switchover scheduled later: promote first",
            Some(with(switchover_pending(Some(ME), Some("pg2")), |c| {
                c.failover.as_mut().unwrap().value.scheduled_at =
                    Some("2099-01-01T00:00:00+00:00".into())
            })),
            holder_in_recovery((2, 1000), (2, 900)),
        )
        .expect(promoting_in_place(), |r| {
            *r == Reason::PromotedBecauseHadLock
        }),
        row(
            "holder in recovery, the candidate did not answer: promote first",
            Some(switchover_pending(Some(ME), Some("pg2"))),
            with(holder_in_recovery((2, 1000), (2, 900)), |l| {
                l.peers = Some(vec![])
            }),
        )
        .expect(promoting_in_place(), |r| {
            *r == Reason::PromotedBecauseHadLock
        }),
        row(
            "holder in recovery, paused, the request names no leader: no hand-over (the release \
             would be cut while paused and the lock left to expire); today's rule",
            Some(switchover_pending(None, Some("pg2"))),
            holder_in_recovery((2, 1000), (2, 900)),
        )
        .cfg(|c| c.dynamic.pause = true)
        .expect(
            vec![Action::RenewLeader, slots_for_others(), Action::RenewLeader],
            |r| matches!(r, Reason::Paused { .. }),
        ),
    ]
}

#[test]
fn a_lock_holder_in_recovery_hands_the_lock_to_a_switchover_candidate_with_all_its_wal() {
    let mut failures = Vec::new();
    for r in handover_rows() {
        let d = decide(r.view.as_ref(), &r.local, &r.cfg, NOW);
        if d.actions != r.actions || !(r.reason)(&d.reason) {
            failures.push(format!(
                "{}:\n   got {:?} / {}\n  want {:?}",
                r.name, d.actions, d.reason, r.actions
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
