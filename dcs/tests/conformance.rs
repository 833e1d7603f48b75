//! The DCS conformance suite: one set of test bodies every backend must pass, each run against a real
//! etcd (`etcd::*`) and a real ZooKeeper (`zookeeper::*`) started on 127.0.0.1 for that test.
//!
//! What a backend promises (the `Dcs` trait's rules, design.md rule 2): one bootstrap winner; one lock
//! holder, renewed and released only by it; keys of a holder that vanished expire after ttl and not
//! at once; every write is compare-and-set; watches wake subscribers within one loop_wait; values
//! round-trip in Patroni's formats; the client rides out a DCS restart, and a DCS unreachable for
//! longer than ttl costs the lock. Backend-specific checks (leases, znode owners) live in `etcd.rs`
//! and `zookeeper.rs`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use praetor_config::DynamicConfig;
use praetor_dcs::{
    Dcs, DcsError, Expect, Failover, HistoryEntry, KeyKind, Keys, MemberData, MemberState,
    ProxyState, Role, Status, SyncState,
};
use praetor_harness::wait_for;
use serde_json::json;
use support::*;

/// The loop_wait a watch event must beat: the acceptance clusters run with loop_wait 1 s; 2 s leaves
/// room for a loaded 2-core machine.
const LOOP_WAIT: Duration = Duration::from_secs(2);

/// Generates `etcd::<test>` and `zookeeper::<test>` for every generic test body below.
macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod etcd {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::TestDcs::start(super::Kind::Etcd).await).await;
                }
            )*
        }
        mod zookeeper {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::TestDcs::start(super::Kind::ZooKeeper).await).await;
                }
            )*
        }
    };
}

conformance!(
    bootstrap_race_on_initialize_has_exactly_one_winner,
    racing_clients_acquire_the_lock_exactly_once,
    only_the_holder_renews_and_releases_the_lock,
    lock_and_member_of_a_vanished_holder_expire_after_ttl_while_a_renewed_lock_survives,
    every_key_rejects_a_stale_compare_and_set,
    watch_delivers_leader_changes_within_one_loop_wait,
    load_round_trips_every_key_in_patronis_formats_and_skips_garbage,
    config_round_trips_every_field_of_the_dynamic_configuration,
    history_appends_keep_every_entry_under_concurrent_writers,
    failover_key_is_set_and_cleared,
    sync_key_round_trips_and_is_compare_and_set,
    failsafe_key_is_written_only_by_the_lock_holder_and_deleted_when_empty,
    proxy_keys_are_listed_and_vanish_with_their_client,
    close_removes_member_leader_and_proxy_at_once,
    delete_member_removes_only_that_member,
    delete_cluster_removes_every_key_of_that_cluster_only,
    client_rides_out_a_dcs_restart_and_keeps_the_lock,
    lock_is_lost_when_the_dcs_is_unreachable_longer_than_ttl,
    a_partitioned_holder_loses_the_lock_to_another_member,
    dropping_the_client_ends_its_watch_task,
    member_operations_need_a_member_name,
    connect_fails_fast_when_the_dcs_is_down,
);

async fn bootstrap_race_on_initialize_has_exactly_one_winner(dcs: TestDcs) {
    let clients = [
        dcs.client("boot", Some("a"), 10).await,
        dcs.client("boot", Some("b"), 10).await,
        dcs.client("boot", Some("c"), 10).await,
    ];
    assert!(clients[0].load().await.unwrap().initialize.is_none());
    let (ra, rb, rc) = tokio::join!(
        clients[0].create_initialize(""),
        clients[1].create_initialize(""),
        clients[2].create_initialize(""),
    );
    let won: Vec<bool> = [ra, rb, rc].into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    let winner = &clients[won.iter().position(|w| *w).unwrap()];
    let loser = &clients[won.iter().position(|w| !*w).unwrap()];
    assert_eq!(loser.load().await.unwrap().initialize.as_deref(), Some(""));

    // Only the placeholder is replaced, once.
    assert!(loser
        .update_initialize("7260332825476436099", "1")
        .await
        .unwrap_err()
        .is_cas_conflict());
    winner
        .update_initialize("", "7260332825476436099")
        .await
        .unwrap();
    assert!(loser
        .update_initialize("", "2")
        .await
        .unwrap_err()
        .is_cas_conflict());
    assert!(loser
        .cancel_initialize("")
        .await
        .unwrap_err()
        .is_cas_conflict());
    assert!(!loser.create_initialize("").await.unwrap());
    assert_eq!(
        loser.load().await.unwrap().initialize.as_deref(),
        Some("7260332825476436099")
    );

    // A failed bootstrap gives the race back.
    winner
        .cancel_initialize("7260332825476436099")
        .await
        .unwrap();
    assert!(loser.load().await.unwrap().initialize.is_none());
    assert!(loser.create_initialize("").await.unwrap());
}

async fn racing_clients_acquire_the_lock_exactly_once(dcs: TestDcs) {
    let a = dcs.client("race", Some("a"), 10).await;
    let b = dcs.client("race", Some("b"), 10).await;
    for round in 0..5 {
        let (ra, rb) = tokio::join!(a.acquire_leader(), b.acquire_leader());
        let (ra, rb) = (ra.expect("a acquires"), rb.expect("b acquires"));
        assert!(
            ra != rb,
            "round {round}: exactly one wins, got a={ra} b={rb}"
        );
        let (winner, loser) = if ra { (&a, &b) } else { (&b, &a) };
        let name = if ra { "a" } else { "b" };
        let cluster = loser.load().await.expect("load");
        assert_eq!(
            cluster.leader.expect("a leader").name,
            name,
            "round {round}"
        );
        assert!(!loser.acquire_leader().await.expect("acquire again"));
        assert!(winner.release_leader().await.expect("release"));
    }
}

async fn only_the_holder_renews_and_releases_the_lock(dcs: TestDcs) {
    let a = dcs.client("holder", Some("a"), 10).await;
    let b = dcs.client("holder", Some("b"), 10).await;
    assert!(!b.renew_leader().await.unwrap(), "nothing to renew yet");
    assert!(!b.release_leader().await.unwrap(), "nothing to release yet");
    assert!(a.acquire_leader().await.unwrap());
    assert!(
        !a.acquire_leader().await.unwrap(),
        "acquire only creates an absent lock"
    );
    let before = a.load().await.unwrap().leader.unwrap();
    assert!(!b.renew_leader().await.unwrap());
    assert!(!b.release_leader().await.unwrap());
    let after = a.load().await.unwrap().leader.unwrap();
    assert_eq!(after.name, before.name);
    assert_eq!(after.version, before.version, "a non-holder wrote nothing");
    assert!(a.renew_leader().await.unwrap());
    assert!(a.renew_leader().await.unwrap());
    assert_eq!(a.load().await.unwrap().leader.unwrap().name, "a");
    assert!(a.release_leader().await.unwrap());
    assert!(a.load().await.unwrap().leader.is_none());
    assert!(!a.renew_leader().await.unwrap(), "a released lock is gone");
    assert!(!a.release_leader().await.unwrap());
}

async fn lock_and_member_of_a_vanished_holder_expire_after_ttl_while_a_renewed_lock_survives(
    dcs: TestDcs,
) {
    const TTL: u32 = 3;
    let lazy = dcs.client("expire", Some("lazy"), TTL).await;
    let busy = dcs.client("survive", Some("busy"), TTL).await;
    let watch_expire = dcs.client("expire", None, TTL).await;
    let watch_survive = dcs.client("survive", None, TTL).await;

    lazy.touch_member(&member_data(MemberState::Running, Role::Primary))
        .await
        .unwrap();
    assert!(lazy.acquire_leader().await.unwrap());
    assert!(busy.acquire_leader().await.unwrap());
    // The holder's process vanishes without closing (kill -9): its keys stay until the TTL runs out.
    drop(lazy);
    let dropped = Instant::now();
    let c = watch_expire.load().await.unwrap();
    assert_eq!(
        c.leader.as_ref().map(|l| l.name.as_str()),
        Some("lazy"),
        "the lock does not vanish with the client"
    );
    assert!(c.member("lazy").is_some());

    let expiry = wait_for(
        "the vanished holder's lock and member key to expire",
        Duration::from_secs(u64::from(TTL) + 10),
        || async {
            match watch_expire.load().await {
                Ok(c) if c.leader.is_none() && c.members.is_empty() => Ok(dropped.elapsed()),
                Ok(c) => Err(format!("still there: {:?} {:?}", c.leader, c.members)),
                Err(e) => Err(e.to_string()),
            }
        },
    );
    // Renew every 500 ms for three TTLs, checking the lock after each renewal.
    let renewing = async {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        for i in 0..(6 * TTL) {
            tick.tick().await;
            assert!(busy.renew_leader().await.unwrap(), "renewal {i} failed");
            let leader = watch_survive.load().await.unwrap().leader;
            assert_eq!(
                leader.map(|l| l.name).as_deref(),
                Some("busy"),
                "renewal {i}"
            );
        }
    };
    let (expired, ()) = tokio::join!(expiry, renewing);
    let after = expired.unwrap();
    eprintln!(
        "{:?}: the lock expired {after:?} after its holder vanished (ttl {TTL} s)",
        dcs.kind
    );
    // The lock is free for the next holder.
    let next = dcs.client("expire", Some("next"), TTL).await;
    assert!(next.acquire_leader().await.unwrap());
}

async fn every_key_rejects_a_stale_compare_and_set(dcs: TestDcs) {
    let a = dcs.client("cas", Some("a"), 10).await;
    let b = dcs.client("cas", Some("b"), 10).await;

    // config
    a.set_config(&json!({"ttl": 30}), Expect::Absent)
        .await
        .unwrap();
    let v = a.load().await.unwrap().config.unwrap().version;
    a.set_config(&json!({"ttl": 31}), Expect::Version(v))
        .await
        .unwrap();
    let e = b
        .set_config(&json!({"ttl": 32}), Expect::Version(v))
        .await
        .unwrap_err();
    assert!(e.is_cas_conflict(), "{e}");
    let e = b
        .set_config(&json!({"ttl": 33}), Expect::Absent)
        .await
        .unwrap_err();
    assert!(e.is_cas_conflict(), "{e}");
    assert_eq!(
        b.load().await.unwrap().config.unwrap().value,
        json!({"ttl": 31})
    );

    // failover
    let first = Failover {
        leader: Some("a".into()),
        member: Some("b".into()),
        scheduled_at: None,
    };
    let second = Failover {
        leader: None,
        member: Some("c".into()),
        scheduled_at: None,
    };
    a.set_failover(&Failover::default(), Expect::Absent)
        .await
        .unwrap();
    let v = a.load().await.unwrap().failover.unwrap().version;
    a.set_failover(&first, Expect::Version(v)).await.unwrap();
    let e = b
        .set_failover(&second, Expect::Version(v))
        .await
        .unwrap_err();
    assert!(e.is_cas_conflict(), "{e}");
    assert!(b
        .set_failover(&second, Expect::Absent)
        .await
        .unwrap_err()
        .is_cas_conflict());
    let stored = b.load().await.unwrap().failover.unwrap();
    assert_eq!(stored.value, first);
    assert!(b.delete_failover(v).await.unwrap_err().is_cas_conflict());
    assert!(b.load().await.unwrap().failover.is_some());

    // history
    let h1 = vec![HistoryEntry {
        timeline: 1,
        lsn: 100,
        reason: "no recovery target specified".into(),
        timestamp: Some("2024-01-01T00:00:00+00:00".into()),
        new_leader: Some("a".into()),
    }];
    let mut h2 = h1.clone();
    h2[0].new_leader = Some("b".into());
    a.set_history(&[], Expect::Absent).await.unwrap();
    let v = a.load().await.unwrap().history.unwrap().version;
    a.set_history(&h1, Expect::Version(v)).await.unwrap();
    assert!(b
        .set_history(&h2, Expect::Version(v))
        .await
        .unwrap_err()
        .is_cas_conflict());
    assert!(b
        .set_history(&h2, Expect::Absent)
        .await
        .unwrap_err()
        .is_cas_conflict());
    assert_eq!(b.load().await.unwrap().history.unwrap().value, h1);

    // sync
    let s1 = SyncState {
        leader: Some("a".into()),
        sync_standby: Some("b".into()),
        quorum: None,
    };
    let s2 = SyncState {
        leader: Some("b".into()),
        sync_standby: None,
        quorum: None,
    };
    a.set_sync(&SyncState::default(), Expect::Absent)
        .await
        .unwrap();
    let v = a.load().await.unwrap().sync.unwrap().version;
    a.set_sync(&s1, Expect::Version(v)).await.unwrap();
    assert!(b
        .set_sync(&s2, Expect::Version(v))
        .await
        .unwrap_err()
        .is_cas_conflict());
    assert!(b
        .set_sync(&s2, Expect::Absent)
        .await
        .unwrap_err()
        .is_cas_conflict());
    assert_eq!(b.load().await.unwrap().sync.unwrap().value, s1);

    // status: only by the lock holder, and not after the lock moved.
    let st = Status {
        optime: 42,
        slots: None,
        retain_slots: None,
    };
    let e = a.set_status(&st).await.unwrap_err();
    assert!(e.is_cas_conflict(), "no lock yet: {e}");
    assert!(a.acquire_leader().await.unwrap());
    a.set_status(&st).await.unwrap();
    let e = b.set_status(&Status::default()).await.unwrap_err();
    assert!(e.is_cas_conflict(), "{e}");
    assert_eq!(b.load().await.unwrap().status, Some(st.clone()));
    let st2 = Status {
        optime: 43,
        ..st.clone()
    };
    a.set_status(&st2).await.unwrap();
    assert_eq!(b.load().await.unwrap().status, Some(st2.clone()));
    assert!(a.release_leader().await.unwrap());
    assert!(b.acquire_leader().await.unwrap());
    assert!(a.set_status(&st).await.unwrap_err().is_cas_conflict());
    assert_eq!(b.load().await.unwrap().status, Some(st2));

    // leader: renew and release compare the holder's name (see only_the_holder_...), acquire
    // compares absence.
    assert!(!a.acquire_leader().await.unwrap());
    assert_eq!(a.load().await.unwrap().leader.unwrap().name, "b");

    // initialize: create once, update and delete by value (see bootstrap_race_...).
    assert!(a.create_initialize("1").await.unwrap());
    assert!(!b.create_initialize("2").await.unwrap());
    assert!(b
        .update_initialize("2", "3")
        .await
        .unwrap_err()
        .is_cas_conflict());
    assert!(b
        .cancel_initialize("2")
        .await
        .unwrap_err()
        .is_cas_conflict());
    assert_eq!(b.load().await.unwrap().initialize.as_deref(), Some("1"));
}

async fn watch_delivers_leader_changes_within_one_loop_wait(dcs: TestDcs) {
    let a = dcs.client("watched", Some("a"), 10).await;
    let observer = dcs.client("watched", None, 10).await;
    let mut rx = observer.watch();

    assert!(a.acquire_leader().await.unwrap());
    wait_for_event(&mut rx, KeyKind::Leader, LOOP_WAIT)
        .await
        .unwrap();
    a.touch_member(&MemberData::default()).await.unwrap();
    wait_for_event(&mut rx, KeyKind::Member("a".into()), LOOP_WAIT)
        .await
        .unwrap();
    a.touch_member(&member_data(MemberState::Running, Role::Primary))
        .await
        .unwrap();
    wait_for_event(&mut rx, KeyKind::Member("a".into()), LOOP_WAIT)
        .await
        .unwrap();

    assert!(a.release_leader().await.unwrap());
    wait_for_event(&mut rx, KeyKind::Leader, LOOP_WAIT)
        .await
        .unwrap();

    // A deletion by someone else (a raw client) is seen too.
    assert!(a.acquire_leader().await.unwrap());
    wait_for_event(&mut rx, KeyKind::Leader, LOOP_WAIT)
        .await
        .unwrap();
    dcs.raw_delete(&Keys::new("/service/", "watched").leader())
        .await;
    wait_for_event(&mut rx, KeyKind::Leader, LOOP_WAIT)
        .await
        .unwrap();

    // Failover and config changes wake the agents too.
    a.set_failover(
        &Failover {
            leader: Some("a".into()),
            member: None,
            scheduled_at: None,
        },
        Expect::Absent,
    )
    .await
    .unwrap();
    wait_for_event(&mut rx, KeyKind::Failover, LOOP_WAIT)
        .await
        .unwrap();
    a.set_config(&json!({"ttl": 30}), Expect::Absent)
        .await
        .unwrap();
    wait_for_event(&mut rx, KeyKind::Config, LOOP_WAIT)
        .await
        .unwrap();

    // A lock that moves to another member: every step is seen.
    let b = dcs.client("watched", Some("b"), 10).await;
    assert!(a.acquire_leader().await.unwrap());
    wait_for_event(&mut rx, KeyKind::Leader, LOOP_WAIT)
        .await
        .unwrap();
    assert!(a.release_leader().await.unwrap());
    assert!(b.acquire_leader().await.unwrap());
    wait_for_event(&mut rx, KeyKind::Leader, LOOP_WAIT)
        .await
        .unwrap();
    assert_eq!(observer.load().await.unwrap().leader.unwrap().name, "b");
}

async fn load_round_trips_every_key_in_patronis_formats_and_skips_garbage(dcs: TestDcs) {
    let a = dcs.client("roundtrip", Some("a"), 10).await;
    let b = dcs.client("roundtrip", Some("b"), 10).await;
    let keys = Keys::new("/service/", "roundtrip");

    let mut data_a = member_data(MemberState::Running, Role::Primary);
    data_a.tags.nofailover = true;
    data_a.pending_restart = true;
    data_a.checkpoint_after_promote = Some(true);
    data_a
        .extra
        .insert("a_future_field".into(), json!({"kept": true}));
    let data_b = MemberData {
        receive_lsn: Some(50332624),
        replay_lsn: Some(50332600),
        replication_state: Some("streaming".into()),
        ..member_data(MemberState::Running, Role::Replica)
    };
    let config = json!({"ttl": 30, "loop_wait": 10, "postgresql": {"parameters": {"max_connections": 100}}, "praetor": {"x": 1}});
    let failover = Failover {
        leader: Some("a".into()),
        member: Some("b".into()),
        scheduled_at: Some("2024-01-01T00:00:00+00:00".into()),
    };
    let history = vec![
        HistoryEntry {
            timeline: 1,
            lsn: 50332624,
            reason: "no recovery target specified".into(),
            timestamp: None,
            new_leader: None,
        },
        HistoryEntry {
            timeline: 2,
            lsn: 50332960,
            reason: "no recovery target specified".into(),
            timestamp: Some("2023-07-27T14:52:40.300396+08:00".into()),
            new_leader: Some("b".into()),
        },
    ];
    let sync = SyncState {
        leader: Some("a".into()),
        sync_standby: Some("b".into()),
        quorum: Some(1),
    };
    let status = Status {
        optime: 50332624,
        slots: Some([("b".to_string(), 50332600u64)].into_iter().collect()),
        retain_slots: Some(vec!["b".into()]),
    };

    a.touch_member(&data_a).await.unwrap();
    b.touch_member(&data_b).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    assert!(a.create_initialize("7260332825476436099").await.unwrap());
    a.set_config(&config, Expect::Absent).await.unwrap();
    a.set_failover(&failover, Expect::Absent).await.unwrap();
    a.set_history(&history, Expect::Absent).await.unwrap();
    a.set_sync(&sync, Expect::Absent).await.unwrap();
    a.set_status(&status).await.unwrap();

    dcs.raw_put(&keys.member("garbage"), b"{not json").await;
    dcs.raw_put(&keys.member("binary"), &[0xff, 0xfe]).await;
    dcs.raw_put(&keys.proxy("p1"), b"x").await;
    dcs.raw_put(&format!("{}someone_elses_key", keys.base()), b"?")
        .await;

    let c = b.load().await.unwrap();
    assert_eq!(c.initialize.as_deref(), Some("7260332825476436099"));
    assert_eq!(c.config.as_ref().unwrap().value, config);
    assert_eq!(c.leader.as_ref().unwrap().name, "a");
    let names: Vec<_> = c.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["a", "b"], "garbage skipped, sorted by name");
    assert_eq!(c.members[0].data, data_a);
    assert_eq!(c.members[1].data, data_b);
    assert_eq!(c.failover.as_ref().unwrap().value, failover);
    assert_eq!(c.history.as_ref().unwrap().value, history);
    assert_eq!(c.sync.as_ref().unwrap().value, sync);
    assert_eq!(c.status.as_ref(), Some(&status));
    assert!(c.proxies.is_empty(), "{:?}", c.proxies);

    // Versions are usable for the next compare-and-set.
    let v = c.config.unwrap().version;
    a.set_config(&json!({"ttl": 20}), Expect::Version(v))
        .await
        .unwrap();
    let v2 = b.load().await.unwrap().config.unwrap().version;
    assert_ne!(v2, v, "a write changes the version");

    // On the wire: Patroni's formats (plain leader and initialize, compact JSON elsewhere).
    let raw = |k: String| {
        let dcs = &dcs;
        async move { String::from_utf8(dcs.raw_get(&k).await.expect(&k)).unwrap() }
    };
    assert_eq!(raw(keys.leader()).await, "a");
    assert_eq!(raw(keys.initialize()).await, "7260332825476436099");
    assert_eq!(
        raw(keys.sync()).await,
        r#"{"leader":"a","sync_standby":"b","quorum":1}"#
    );
    assert_eq!(
        raw(keys.history()).await,
        r#"[[1,50332624,"no recovery target specified"],[2,50332960,"no recovery target specified","2023-07-27T14:52:40.300396+08:00","b"]]"#
    );
    assert_eq!(
        raw(keys.failover()).await,
        r#"{"leader":"a","member":"b","scheduled_at":"2024-01-01T00:00:00+00:00"}"#
    );
    assert_eq!(
        raw(keys.status()).await,
        r#"{"optime":50332624,"slots":{"b":50332600},"retain_slots":["b"]}"#
    );
    let member_json = raw(keys.member("b")).await;
    assert!(
        !member_json.contains(": ") && !member_json.contains(", "),
        "{member_json}"
    );
    assert_eq!(
        serde_json::from_str::<MemberData>(&member_json).unwrap(),
        data_b
    );
}

async fn config_round_trips_every_field_of_the_dynamic_configuration(dcs: TestDcs) {
    let a = dcs.client("config", Some("a"), 10).await;
    let b = dcs.client("config", None, 10).await;
    // Every field away from its default, so a field lost on the way shows.
    let mut parameters = praetor_config::Parameters::new();
    parameters.insert("max_connections".into(), 200i64.into());
    parameters.insert("wal_keep_size".into(), "256MB".into());
    parameters.insert("hot_standby".into(), true.into());
    let dynamic = DynamicConfig {
        ttl: 21,
        loop_wait: 3,
        retry_timeout: 4,
        maximum_lag_on_failover: 4242,
        primary_start_timeout: 17,
        primary_stop_timeout: 9,
        synchronous_mode: praetor_config::SyncMode::Quorum,
        synchronous_mode_strict: true,
        synchronous_node_count: 2,
        failsafe_mode: true,
        pause: true,
        check_timeline: true,
        member_slots_ttl: 77,
        maximum_lag_on_syncnode: Some(1234),
        slots: [(
            "archiver".to_string(),
            praetor_config::dynamic::SlotSpec {
                slot_type: Some("physical".into()),
                ..Default::default()
            },
        )]
        .into(),
        ignore_slots: vec![[("name".to_string(), "keep_me".to_string())].into()],
        postgresql: praetor_config::dynamic::DynamicPostgresql {
            use_pg_rewind: true,
            use_slots: false,
            parameters,
            pg_hba: Some(vec!["host all all 0.0.0.0/0 scram-sha-256".into()]),
            recovery_conf: [("restore_command".to_string(), "cp /a/%f %p".into())].into(),
        },
        standby_cluster: Some(praetor_config::StandbyCluster {
            host: Some("10.0.0.1".into()),
            port: Some(5432),
            primary_slot_name: Some("dc2".into()),
            restore_command: Some("cp /remote/%f %p".into()),
            archive_cleanup_command: Some("pg_archivecleanup /remote %r".into()),
            recovery_min_apply_delay: Some("5min".into()),
            create_replica_methods: Some(vec!["basebackup".into()]),
        }),
    };
    assert_ne!(dynamic, DynamicConfig::default());
    let mut value = serde_json::to_value(&dynamic).unwrap();
    // Keys Praetor does not know are kept as they are (other tools', newer versions').
    value["praetor"] = json!({"proxy": {"max_lag": 5}});
    a.set_config(&value, Expect::Absent).await.unwrap();

    let stored = b.load().await.unwrap().config.unwrap();
    assert_eq!(stored.value, value);
    assert_eq!(DynamicConfig::from_json(&stored.value).unwrap(), dynamic);

    // ctl edits it by compare-and-set on the version read.
    let mut edited = stored.value.clone();
    edited["ttl"] = json!(22);
    b.set_config(&edited, Expect::Version(stored.version))
        .await
        .unwrap();
    assert!(a
        .set_config(&value, Expect::Version(stored.version))
        .await
        .unwrap_err()
        .is_cas_conflict());
    let again = a.load().await.unwrap().config.unwrap();
    assert_eq!(DynamicConfig::from_json(&again.value).unwrap().ttl, 22);
    assert_eq!(again.value["standby_cluster"]["host"], "10.0.0.1");
}

/// Appends `entry` to `history` the way the agent does: read, append, write at the version read;
/// again on a conflict.
async fn append_history(dcs: &Arc<dyn Dcs>, entry: HistoryEntry) -> usize {
    let mut conflicts = 0;
    loop {
        let current = dcs.load().await.unwrap().history;
        let (mut entries, expect) = match current {
            Some(h) => (h.value, Expect::Version(h.version)),
            None => (Vec::new(), Expect::Absent),
        };
        entries.push(entry.clone());
        match dcs.set_history(&entries, expect).await {
            Ok(()) => return conflicts,
            Err(e) if e.is_cas_conflict() => conflicts += 1,
            Err(e) => panic!("{e}"),
        }
    }
}

async fn history_appends_keep_every_entry_under_concurrent_writers(dcs: TestDcs) {
    let a = dcs.client("history", Some("a"), 10).await;
    let b = dcs.client("history", Some("b"), 10).await;
    let entry = |timeline: u32, leader: &str| HistoryEntry {
        timeline,
        lsn: u64::from(timeline) * 1000,
        reason: "no recovery target specified".into(),
        timestamp: Some("2024-01-01T00:00:00+00:00".into()),
        new_leader: Some(leader.into()),
    };
    append_history(&a, entry(1, "a")).await;
    let (ca, cb) = tokio::join!(
        async {
            let mut c = 0;
            for t in [2, 4, 6] {
                c += append_history(&a, entry(t, "a")).await;
            }
            c
        },
        async {
            let mut c = 0;
            for t in [3, 5, 7] {
                c += append_history(&b, entry(t, "b")).await;
            }
            c
        }
    );
    let h = a.load().await.unwrap().history.unwrap().value;
    let mut timelines: Vec<u32> = h.iter().map(|e| e.timeline).collect();
    assert_eq!(
        timelines.len(),
        7,
        "no append lost ({ca}+{cb} conflicts): {h:?}"
    );
    assert_eq!(timelines[0], 1, "the first entry stays first");
    timelines.sort_unstable();
    assert_eq!(timelines, [1, 2, 3, 4, 5, 6, 7]);
    for e in &h {
        let want = if e.timeline % 2 == 0 { "a" } else { "b" };
        if e.timeline > 1 {
            assert_eq!(e.new_leader.as_deref(), Some(want), "{e:?}");
        }
    }
}

async fn failover_key_is_set_and_cleared(dcs: TestDcs) {
    let ctl = dcs.client("failover", None, 10).await;
    let agent = dcs.client("failover", Some("a"), 10).await;
    assert!(agent.load().await.unwrap().failover_request().is_none());

    let request = Failover {
        leader: Some("a".into()),
        member: Some("b".into()),
        scheduled_at: None,
    };
    ctl.set_failover(&request, Expect::Absent).await.unwrap();
    let seen = agent.load().await.unwrap();
    let f = seen.failover_request().expect("a pending switchover");
    assert_eq!(f.value, request);

    // The agent clears it by version once done; a second clear of the same version conflicts.
    agent.delete_failover(f.version).await.unwrap();
    assert!(agent.load().await.unwrap().failover.is_none());
    assert!(agent
        .delete_failover(f.version)
        .await
        .unwrap_err()
        .is_cas_conflict());

    // Patroni leaves `{}` behind, which is no request; a new request replaces it by version.
    ctl.set_failover(&Failover::default(), Expect::Absent)
        .await
        .unwrap();
    let c = agent.load().await.unwrap();
    assert!(c.failover.is_some() && c.failover_request().is_none());
    let failover = Failover {
        leader: None,
        member: Some("c".into()),
        scheduled_at: Some("2030-01-01T00:00:00+00:00".into()),
    };
    ctl.set_failover(&failover, Expect::Version(c.failover.unwrap().version))
        .await
        .unwrap();
    let f = agent
        .load()
        .await
        .unwrap()
        .failover_request()
        .cloned()
        .unwrap();
    assert_eq!(f.value, failover);
    agent.delete_failover(f.version).await.unwrap();
    assert!(ctl.load().await.unwrap().failover.is_none());
}

async fn failsafe_key_is_written_only_by_the_lock_holder_and_deleted_when_empty(dcs: TestDcs) {
    let a = dcs.client("failsafe", Some("a"), 10).await;
    let b = dcs.client("failsafe", Some("b"), 10).await;
    let members: std::collections::BTreeMap<String, String> = [
        ("a".to_string(), "http://127.0.0.1:8008/patroni".to_string()),
        ("b".to_string(), "http://127.0.0.1:8009/patroni".to_string()),
    ]
    .into();
    // Nobody holds the lock: nobody may write it.
    assert!(a
        .set_failsafe(&members)
        .await
        .unwrap_err()
        .is_cas_conflict());
    assert!(a.acquire_leader().await.unwrap());
    a.set_failsafe(&members).await.unwrap();
    assert_eq!(b.load().await.unwrap().failsafe, Some(members.clone()));
    // Another member cannot overwrite it.
    assert!(b
        .set_failsafe(&Default::default())
        .await
        .unwrap_err()
        .is_cas_conflict());
    // The holder rewrites it, then removes it with an empty map (twice: absent is fine).
    let one: std::collections::BTreeMap<String, String> =
        [("a".to_string(), "http://127.0.0.1:8008/patroni".to_string())].into();
    a.set_failsafe(&one).await.unwrap();
    assert_eq!(b.load().await.unwrap().failsafe, Some(one));
    a.set_failsafe(&Default::default()).await.unwrap();
    a.set_failsafe(&Default::default()).await.unwrap();
    assert_eq!(b.load().await.unwrap().failsafe, None);
}

async fn sync_key_round_trips_and_is_compare_and_set(dcs: TestDcs) {
    let a = dcs.client("sync", Some("a"), 10).await;
    let b = dcs.client("sync", Some("b"), 10).await;
    assert!(a.load().await.unwrap().sync.is_none());
    let s1 = SyncState {
        leader: Some("a".into()),
        sync_standby: Some("b,c".into()),
        quorum: Some(1),
    };
    a.set_sync(&s1, Expect::Absent).await.unwrap();
    let got = b.load().await.unwrap().sync.unwrap();
    assert_eq!(got.value, s1);
    assert_eq!(got.value.members(), ["b", "c"]);

    let s2 = SyncState {
        leader: Some("a".into()),
        sync_standby: None,
        quorum: None,
    };
    a.set_sync(&s2, Expect::Version(got.version)).await.unwrap();
    assert!(b
        .set_sync(&s1, Expect::Version(got.version))
        .await
        .unwrap_err()
        .is_cas_conflict());
    let got = b.load().await.unwrap().sync.unwrap();
    assert_eq!(got.value, s2);
    assert!(got.value.members().is_empty());
    assert_eq!(
        dcs.raw_get(&Keys::new("/service/", "sync").sync())
            .await
            .map(String::from_utf8),
        Some(Ok(r#"{"leader":"a","sync_standby":null}"#.to_string()))
    );
}

async fn proxy_keys_are_listed_and_vanish_with_their_client(dcs: TestDcs) {
    let proxy = dcs.client("proxies", None, 60).await;
    let other = dcs.client("proxies", None, 60).await;
    let agent = dcs.client("proxies", Some("a"), 60).await;
    assert!(agent.load().await.unwrap().proxies.is_empty());

    let s1 = ProxyState {
        leader: Some("a".into()),
        since: Some(1_700_000_000),
    };
    proxy.set_proxy_state("p1", &s1).await.unwrap();
    other
        .set_proxy_state("p2", &ProxyState::default())
        .await
        .unwrap();
    let c = agent.load().await.unwrap();
    assert_eq!(c.proxies.len(), 2, "{:?}", c.proxies);
    assert_eq!(c.proxies["p1"], s1);
    assert_eq!(c.proxies["p2"], ProxyState::default());

    let s2 = ProxyState {
        leader: Some("b".into()),
        since: Some(1_700_000_100),
    };
    proxy.set_proxy_state("p1", &s2).await.unwrap();
    assert_eq!(agent.load().await.unwrap().proxies["p1"], s2);

    proxy.close().await.unwrap();
    let c = agent.load().await.unwrap();
    assert_eq!(
        c.proxies.keys().collect::<Vec<_>>(),
        ["p2"],
        "closing removes only the closing proxy's key"
    );
}

async fn close_removes_member_leader_and_proxy_at_once(dcs: TestDcs) {
    let a = dcs.client("close", Some("a"), 60).await;
    let observer = dcs.client("close", None, 60).await;
    let mut rx = observer.watch();
    a.touch_member(&member_data(MemberState::Running, Role::Primary))
        .await
        .unwrap();
    assert!(a.acquire_leader().await.unwrap());
    a.set_proxy_state("pa", &ProxyState::default())
        .await
        .unwrap();
    a.set_config(&json!({"ttl": 60}), Expect::Absent)
        .await
        .unwrap();
    let c = observer.load().await.unwrap();
    assert!(c.leader.is_some() && c.member("a").is_some() && c.proxies.contains_key("pa"));
    drain(&mut rx);

    a.close().await.unwrap();
    // No waiting: the lease/session is gone when close returns (the TTL is a minute).
    let c = observer.load().await.unwrap();
    assert!(c.leader.is_none(), "{:?}", c.leader);
    assert!(c.members.is_empty(), "{:?}", c.members);
    assert!(c.proxies.is_empty(), "{:?}", c.proxies);
    assert!(c.config.is_some(), "persistent keys stay");
    wait_for_event(&mut rx, KeyKind::Leader, LOOP_WAIT)
        .await
        .unwrap();
    a.close().await.unwrap();

    // The client is usable again afterwards (a new lease/session), without the old keys.
    assert!(!a.renew_leader().await.unwrap());
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    assert_eq!(observer.load().await.unwrap().leader.unwrap().name, "a");
}

async fn delete_member_removes_only_that_member(dcs: TestDcs) {
    let a = dcs.client("delete", Some("a"), 60).await;
    let b = dcs.client("delete", Some("b"), 60).await;
    a.touch_member(&MemberData::default()).await.unwrap();
    b.touch_member(&MemberData::default()).await.unwrap();
    a.delete_member().await.unwrap();
    a.delete_member().await.unwrap();
    let names: Vec<String> = b
        .load()
        .await
        .unwrap()
        .members
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(names, ["b"]);
    a.touch_member(&MemberData::default()).await.unwrap();
    assert_eq!(b.load().await.unwrap().members.len(), 2);
}

async fn delete_cluster_removes_every_key_of_that_cluster_only(dcs: TestDcs) {
    let a = dcs.client("doomed", Some("a"), 60).await;
    let ctl = dcs.client("doomed", None, 60).await;
    let neighbour = dcs.client("doomed2", Some("n"), 60).await;
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    assert!(a.create_initialize("1").await.unwrap());
    a.set_config(&json!({"ttl": 60}), Expect::Absent)
        .await
        .unwrap();
    a.set_history(&[], Expect::Absent).await.unwrap();
    a.set_proxy_state("p", &ProxyState::default())
        .await
        .unwrap();
    neighbour
        .touch_member(&MemberData::default())
        .await
        .unwrap();
    assert!(neighbour.create_initialize("2").await.unwrap());

    ctl.delete_cluster().await.unwrap();
    let c = ctl.load().await.unwrap();
    assert_eq!(c, praetor_dcs::Cluster::default(), "nothing left");
    let n = neighbour.load().await.unwrap();
    assert_eq!(
        n.initialize.as_deref(),
        Some("2"),
        "the other cluster is untouched"
    );
    assert_eq!(n.members.len(), 1);
    // Deleting nothing is fine; the cluster can be bootstrapped again.
    ctl.delete_cluster().await.unwrap();
    assert!(a.create_initialize("3").await.unwrap());
}

async fn client_rides_out_a_dcs_restart_and_keeps_the_lock(mut dcs: TestDcs) {
    let a = dcs.client("restart", Some("a"), 30).await;
    let observer = dcs.client("restart", None, 30).await;
    let mut rx = observer.watch();
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());

    dcs.stop();
    let e = a.load().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let e = a.renew_leader().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");

    dcs.restart().await;
    wait_for(
        "the lock to be renewed after the restart",
        Duration::from_secs(30),
        || async {
            match a.renew_leader().await {
                Ok(true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    let c = observer.load().await.unwrap();
    assert!(c.member("a").is_some());
    assert_eq!(c.leader.unwrap().name, "a");

    // The watch re-established itself, announced it, and delivers again.
    wait_for_event(&mut rx, KeyKind::Resync, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(a.release_leader().await.unwrap());
    wait_for_event(&mut rx, KeyKind::Leader, LOOP_WAIT)
        .await
        .unwrap();
}

async fn lock_is_lost_when_the_dcs_is_unreachable_longer_than_ttl(mut dcs: TestDcs) {
    const TTL: u32 = 3;
    let a = dcs.client("unreachable", Some("a"), TTL).await;
    let observer = dcs.client("unreachable", None, 30).await;
    let mut rx = observer.watch();
    a.touch_member(&member_data(MemberState::Running, Role::Primary))
        .await
        .unwrap();
    assert!(a.acquire_leader().await.unwrap());
    assert!(a.renew_leader().await.unwrap());

    // The DCS stops answering (as behind a partition) for twice the TTL; no renewal succeeds.
    dcs.set_frozen(true);
    let frozen = Instant::now();
    let outage = Duration::from_secs(u64::from(2 * TTL));
    let mut failures = 0;
    while frozen.elapsed() < outage {
        match a.renew_leader().await {
            Err(e) if e.is_unavailable() => failures += 1,
            other => panic!("a renewal during the outage answered {other:?}"),
        }
    }
    assert!(failures > 0);
    dcs.set_frozen(false);

    // The lock is lost for good: renewals answer false (after the client reconnects), the key goes.
    wait_for(
        "renewals to report the lock lost",
        Duration::from_secs(30),
        || async {
            match a.renew_leader().await {
                Ok(false) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    wait_for(
        "the lock to vanish",
        Duration::from_secs(u64::from(TTL) + 30),
        || async {
            match observer.load().await {
                Ok(c) if c.leader.is_none() => Ok(()),
                Ok(c) => Err(format!("{:?}", c.leader)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
    .unwrap();
    assert!(!a.renew_leader().await.unwrap(), "a lost lock stays lost");
    // The watch came back too.
    wait_for_event(&mut rx, KeyKind::Leader, Duration::from_secs(30))
        .await
        .unwrap();

    // The member key is written again on the new lease/session; the lock can be taken again
    // explicitly.
    a.touch_member(&member_data(MemberState::Running, Role::Replica))
        .await
        .unwrap();
    let c = observer.load().await.unwrap();
    assert_eq!(
        c.member("a").expect("member written again").data.role,
        Role::Replica
    );
    assert!(a.acquire_leader().await.unwrap());
    assert!(a.renew_leader().await.unwrap());
}

async fn a_partitioned_holder_loses_the_lock_to_another_member(dcs: TestDcs) {
    const TTL: u32 = 3;
    let relay = dcs.relay().await;
    let a = dcs.client_via(&relay, "partition", Some("a"), TTL).await;
    let b = dcs.client("partition", Some("b"), TTL).await;
    a.touch_member(&member_data(MemberState::Running, Role::Primary))
        .await
        .unwrap();
    assert!(a.acquire_leader().await.unwrap());
    assert!(!b.acquire_leader().await.unwrap());

    // Only the holder is cut off; the DCS and the other member carry on. Once the holder's lease /
    // session expired on the server (ttl), the other member takes the lock.
    relay.cut();
    let cut = Instant::now();
    wait_for(
        "the other member to take the lock",
        Duration::from_secs(u64::from(TTL) + 30),
        || async {
            match b.acquire_leader().await {
                Ok(true) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    eprintln!(
        "{:?}: the lock moved {:?} after its holder was cut off (ttl {TTL} s)",
        dcs.kind,
        cut.elapsed()
    );
    let c = b.load().await.unwrap();
    assert!(
        c.member("a").is_none(),
        "the holder's member key expired too"
    );
    let e = a.renew_leader().await.unwrap_err();
    assert!(e.is_unavailable(), "cut off: {e}");

    // Back on the network, the former holder learns that the lock is lost and never takes it back.
    relay.restore();
    wait_for(
        "the former holder to see the lock lost",
        Duration::from_secs(30),
        || async {
            match a.renew_leader().await {
                Ok(false) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    assert!(!a.acquire_leader().await.unwrap());
    assert!(!a.release_leader().await.unwrap());
    assert!(b.renew_leader().await.unwrap());
    let c = b.load().await.unwrap();
    assert_eq!(c.leader.unwrap().name, "b");
    // Its member key comes back on the new lease/session.
    wait_for(
        "the former holder's member key",
        Duration::from_secs(30),
        || async {
            a.touch_member(&member_data(MemberState::Running, Role::Replica))
                .await
                .map_err(|e| e.to_string())?;
            match b.load().await {
                Ok(c) if c.member("a").is_some() => Ok(()),
                Ok(c) => Err(format!("{:?}", c.members)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await
    .unwrap();
}

async fn dropping_the_client_ends_its_watch_task(dcs: TestDcs) {
    use tokio::sync::broadcast::error::TryRecvError;
    let observer = dcs.client("drop", None, 10).await;
    let mut rx = observer.watch();
    drop(observer);
    // The receiver closes once the last sender (held by the watch task) is gone.
    wait_for("the watch task to end", Duration::from_secs(5), || {
        let r = match rx.try_recv() {
            Err(TryRecvError::Closed) => Ok(()),
            other => Err(format!("{other:?}")),
        };
        async move { r }
    })
    .await
    .unwrap();
}

async fn member_operations_need_a_member_name(dcs: TestDcs) {
    let observer = dcs.client("anon", None, 10).await;
    assert!(matches!(
        observer.acquire_leader().await,
        Err(DcsError::Unsupported(_))
    ));
    assert!(matches!(
        observer.renew_leader().await,
        Err(DcsError::Unsupported(_))
    ));
    assert!(matches!(
        observer.touch_member(&MemberData::default()).await,
        Err(DcsError::Unsupported(_))
    ));
    assert!(matches!(
        observer.set_status(&Status::default()).await,
        Err(DcsError::Unsupported(_))
    ));
}

async fn connect_fails_fast_when_the_dcs_is_down(mut dcs: TestDcs) {
    dcs.stop();
    let started = Instant::now();
    let r = praetor_dcs::connect(&dcs.endpoints(), identity("down", None, 10)).await;
    assert!(
        matches!(r, Err(ref e) if e.is_unavailable()),
        "{:?}",
        r.err()
    );
    eprintln!(
        "{:?}: connect gave up after {:?} (request timeout {REQUEST_TIMEOUT_SECS} s, ttl 10 s)",
        dcs.kind,
        started.elapsed()
    );
}
