//! The etcd backend against a real etcd on 127.0.0.1 (one etcd per test, started by the harness).

use std::time::Duration;

use praetor_dcs::etcd::EtcdDcs;
use praetor_dcs::{
    Dcs, DcsEvent, DcsIdentity, Expect, Failover, HistoryEntry, KeyKind, Keys, MemberData,
    MemberState, Role, Status, SyncState,
};
use praetor_harness::{wait_for, Etcd};
use serde_json::json;
use tokio::sync::broadcast::{self, error::TryRecvError};

/// A running etcd and the directory holding its data (removed on drop).
struct TestEtcd {
    etcd: Etcd,
    _dir: tempfile::TempDir,
}

async fn start_etcd() -> TestEtcd {
    let dir = tempfile::Builder::new()
        .prefix("praetor-dcs-etcd-")
        .tempdir()
        .expect("temp dir");
    let etcd = Etcd::start(dir.path()).await.expect("etcd starts");
    TestEtcd { etcd, _dir: dir }
}

fn identity(scope: &str, member: Option<&str>, ttl_secs: u32) -> DcsIdentity {
    DcsIdentity {
        namespace: "/service/".into(),
        scope: scope.into(),
        member: member.map(str::to_string),
        ttl_secs,
        request_timeout_secs: 2,
    }
}

async fn client(etcd: &TestEtcd, scope: &str, member: Option<&str>, ttl_secs: u32) -> EtcdDcs {
    EtcdDcs::connect(
        std::slice::from_ref(&etcd.etcd.endpoint),
        identity(scope, member, ttl_secs),
    )
    .await
    .expect("connect to etcd")
}

async fn raw(etcd: &TestEtcd) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.etcd.endpoint.as_str()], None)
        .await
        .expect("raw etcd client")
}

/// The lease a key is attached to (0: none), or `None` when the key does not exist.
async fn lease_of(raw: &mut etcd_client::Client, key: &str) -> Option<i64> {
    let resp = raw.get(key, None).await.expect("get");
    resp.kvs().first().map(|kv| kv.lease())
}

fn member_data(state: MemberState, role: Role) -> MemberData {
    MemberData {
        conn_url: Some("postgres://127.0.0.1:5432/postgres".into()),
        api_url: Some("http://127.0.0.1:8008/patroni".into()),
        state,
        role,
        version: Some("4.0.0".into()),
        xlog_location: Some(50332624),
        timeline: Some(2),
        ..Default::default()
    }
}

/// Takes every queued event; `Ok` once one of them is `kind`, else the events seen so far.
fn drain_until(
    rx: &mut broadcast::Receiver<DcsEvent>,
    kind: &KeyKind,
    seen: &mut Vec<KeyKind>,
) -> Result<(), String> {
    loop {
        match rx.try_recv() {
            Ok(ev) if ev.key == *kind => return Ok(()),
            Ok(ev) => seen.push(ev.key),
            Err(TryRecvError::Empty) => return Err(format!("no {kind:?} yet; saw {seen:?}")),
            Err(e) => return Err(format!("receiver: {e}; saw {seen:?}")),
        }
    }
}

async fn wait_for_event(
    rx: &mut broadcast::Receiver<DcsEvent>,
    kind: KeyKind,
    timeout: Duration,
) -> Result<(), String> {
    let mut seen = Vec::new();
    wait_for(&format!("a {kind:?} watch event"), timeout, || {
        let r = drain_until(rx, &kind, &mut seen);
        async move { r }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_clients_acquire_the_lock_exactly_once() {
    let etcd = start_etcd().await;
    let a = client(&etcd, "race", Some("a"), 10).await;
    let b = client(&etcd, "race", Some("b"), 10).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrenewed_lock_expires_after_ttl_while_renewed_lock_survives() {
    const TTL: u32 = 2;
    let etcd = start_etcd().await;
    let lazy = client(&etcd, "expire", Some("lazy"), TTL).await;
    let busy = client(&etcd, "survive", Some("busy"), TTL).await;
    let watch_expire = client(&etcd, "expire", None, TTL).await;
    let watch_survive = client(&etcd, "survive", None, TTL).await;

    assert!(lazy.acquire_leader().await.unwrap());
    assert!(busy.acquire_leader().await.unwrap());
    let held = watch_expire
        .load()
        .await
        .unwrap()
        .leader
        .expect("held right after acquire");
    assert_eq!(held.name, "lazy");

    let expiry = wait_for(
        "the unrenewed lock to expire",
        Duration::from_secs(u64::from(TTL) + 4),
        || async {
            match watch_expire.load().await {
                Ok(c) if c.leader.is_none() => Ok(()),
                Ok(c) => Err(format!("still held: {:?}", c.leader)),
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
    expired.unwrap();
    // A lock lost to expiry is not renewed back.
    assert!(!lazy.renew_leader().await.unwrap());
    assert!(watch_expire.load().await.unwrap().leader.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_conflicts_are_reported_not_overwritten() {
    let etcd = start_etcd().await;
    let a = client(&etcd, "cas", Some("a"), 10).await;
    let b = client(&etcd, "cas", Some("b"), 10).await;

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
    b.delete_failover(stored.version).await.unwrap();
    assert!(b.load().await.unwrap().failover.is_none());

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

    // status only by the lock holder
    assert!(a.acquire_leader().await.unwrap());
    let st = Status {
        optime: 42,
        slots: None,
        retain_slots: None,
    };
    a.set_status(&st).await.unwrap();
    let e = b.set_status(&Status::default()).await.unwrap_err();
    assert!(e.is_cas_conflict(), "{e}");
    assert_eq!(b.load().await.unwrap().status, Some(st));

    // initialize: create once, update and cancel by value
    assert!(a.create_initialize("").await.unwrap());
    assert!(!b.create_initialize("").await.unwrap());
    assert!(b
        .update_initialize("wrong", "1")
        .await
        .unwrap_err()
        .is_cas_conflict());
    a.update_initialize("", "7260332825476436099")
        .await
        .unwrap();
    assert!(b
        .update_initialize("", "2")
        .await
        .unwrap_err()
        .is_cas_conflict());
    assert!(b.cancel_initialize("").await.unwrap_err().is_cas_conflict());
    assert_eq!(
        b.load().await.unwrap().initialize.as_deref(),
        Some("7260332825476436099")
    );
    a.cancel_initialize("7260332825476436099").await.unwrap();
    assert!(b.load().await.unwrap().initialize.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renew_and_release_by_a_non_holder_fail_and_leave_the_key() {
    let etcd = start_etcd().await;
    let a = client(&etcd, "holder", Some("a"), 10).await;
    let b = client(&etcd, "holder", Some("b"), 10).await;
    assert!(!b.renew_leader().await.unwrap(), "nothing to renew yet");
    assert!(a.acquire_leader().await.unwrap());
    let before = a.load().await.unwrap().leader.unwrap();
    assert!(!b.renew_leader().await.unwrap());
    assert!(!b.release_leader().await.unwrap());
    let after = a.load().await.unwrap().leader.unwrap();
    assert_eq!(after, before, "neither name nor version changed");
    assert!(a.renew_leader().await.unwrap());
    assert!(a.release_leader().await.unwrap());
    assert!(a.load().await.unwrap().leader.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_a_leader_deletion_quickly() {
    let etcd = start_etcd().await;
    let a = client(&etcd, "watched", Some("a"), 10).await;
    let observer = client(&etcd, "watched", None, 10).await;
    let mut rx = observer.watch();

    assert!(a.acquire_leader().await.unwrap());
    wait_for_event(&mut rx, KeyKind::Leader, Duration::from_secs(2))
        .await
        .unwrap();
    a.touch_member(&MemberData::default()).await.unwrap();
    wait_for_event(&mut rx, KeyKind::Member("a".into()), Duration::from_secs(2))
        .await
        .unwrap();

    assert!(a.release_leader().await.unwrap());
    wait_for_event(&mut rx, KeyKind::Leader, Duration::from_secs(2))
        .await
        .unwrap();

    // A deletion by someone else (a raw etcd client) is seen too.
    assert!(a.acquire_leader().await.unwrap());
    wait_for_event(&mut rx, KeyKind::Leader, Duration::from_secs(2))
        .await
        .unwrap();
    let mut raw = raw(&etcd).await;
    raw.delete(Keys::new("/service/", "watched").leader(), None)
        .await
        .unwrap();
    wait_for_event(&mut rx, KeyKind::Leader, Duration::from_secs(2))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_round_trips_every_key_and_skips_garbage() {
    let etcd = start_etcd().await;
    let a = client(&etcd, "roundtrip", Some("a"), 10).await;
    let b = client(&etcd, "roundtrip", Some("b"), 10).await;
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

    let mut raw = raw(&etcd).await;
    raw.put(keys.member("garbage"), "{not json", None)
        .await
        .unwrap();
    raw.put(keys.member("binary"), vec![0xffu8, 0xfe], None)
        .await
        .unwrap();
    raw.put(format!("{}praetor/proxies/p1", keys.base()), "x", None)
        .await
        .unwrap();

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

    // Versions are mod_revisions, usable for the next compare-and-set.
    let v = c.config.unwrap().version;
    a.set_config(&json!({"ttl": 20}), Expect::Version(v))
        .await
        .unwrap();

    // On the wire: Patroni's formats (plain leader and initialize, compact JSON elsewhere).
    let plain =
        |kv: &etcd_client::GetResponse| String::from_utf8(kv.kvs()[0].value().to_vec()).unwrap();
    assert_eq!(plain(&raw.get(keys.leader(), None).await.unwrap()), "a");
    assert_eq!(
        plain(&raw.get(keys.initialize(), None).await.unwrap()),
        "7260332825476436099"
    );
    assert_eq!(
        plain(&raw.get(keys.sync(), None).await.unwrap()),
        r#"{"leader":"a","sync_standby":"b","quorum":1}"#
    );
    assert_eq!(
        plain(&raw.get(keys.history(), None).await.unwrap()),
        r#"[[1,50332624,"no recovery target specified"],[2,50332960,"no recovery target specified","2023-07-27T14:52:40.300396+08:00","b"]]"#
    );
    let member_json = plain(&raw.get(keys.member("b"), None).await.unwrap());
    assert!(
        !member_json.contains(": ") && !member_json.contains(", "),
        "{member_json}"
    );
    // The member and leader keys are on a lease, the others are not.
    assert_ne!(lease_of(&mut raw, &keys.leader()).await, Some(0));
    assert_eq!(
        lease_of(&mut raw, &keys.leader()).await,
        lease_of(&mut raw, &keys.member("a")).await
    );
    assert_eq!(lease_of(&mut raw, &keys.config()).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_removes_member_and_leader_at_once() {
    let etcd = start_etcd().await;
    let a = client(&etcd, "close", Some("a"), 60).await;
    let observer = client(&etcd, "close", None, 60).await;
    a.touch_member(&member_data(MemberState::Running, Role::Primary))
        .await
        .unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let c = observer.load().await.unwrap();
    assert!(c.leader.is_some() && c.member("a").is_some());

    a.close().await.unwrap();
    // No waiting: the lease is revoked when close returns (the TTL is a minute).
    let c = observer.load().await.unwrap();
    assert!(c.leader.is_none(), "{:?}", c.leader);
    assert!(c.members.is_empty(), "{:?}", c.members);
    a.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lease_is_replaced_but_the_lock_is_not_recreated() {
    let etcd = start_etcd().await;
    let a = client(&etcd, "lost", Some("a"), 60).await;
    let keys = Keys::new("/service/", "lost");
    let mut raw = raw(&etcd).await;
    a.touch_member(&member_data(MemberState::Running, Role::Primary))
        .await
        .unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let old = lease_of(&mut raw, &keys.leader()).await.unwrap();

    // The lease expires behind the client's back (revoked here, as an expiry would).
    raw.lease_revoke(old).await.unwrap();
    assert!(!a.renew_leader().await.unwrap(), "a lost lock stays lost");
    let c = a.load().await.unwrap();
    assert!(c.leader.is_none());
    let restored = c
        .member("a")
        .expect("member written again on the new lease");
    assert_eq!(restored.data.role, Role::Primary);
    let new = lease_of(&mut raw, &keys.member("a")).await.unwrap();
    assert_ne!(new, old);
    assert_ne!(new, 0);

    raw.lease_revoke(new).await.unwrap();
    a.touch_member(&member_data(MemberState::Running, Role::Replica))
        .await
        .unwrap();
    assert_eq!(
        a.load().await.unwrap().member("a").unwrap().data.role,
        Role::Replica
    );
    // The lock can be taken again explicitly.
    assert!(a.acquire_leader().await.unwrap());
    assert!(a.renew_leader().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_ttl_moves_keys_to_a_lease_with_the_new_ttl() {
    let etcd = start_etcd().await;
    let a = client(&etcd, "ttl", Some("a"), 30).await;
    let keys = Keys::new("/service/", "ttl");
    let mut raw = raw(&etcd).await;
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let old = lease_of(&mut raw, &keys.leader()).await.unwrap();
    assert_eq!(
        raw.lease_time_to_live(old, None)
            .await
            .unwrap()
            .granted_ttl(),
        30
    );

    a.set_ttl(7).await.unwrap();
    assert!(a.renew_leader().await.unwrap());
    let new = lease_of(&mut raw, &keys.leader()).await.unwrap();
    assert_ne!(new, old);
    assert_eq!(lease_of(&mut raw, &keys.member("a")).await, Some(new));
    assert_eq!(
        raw.lease_time_to_live(new, None)
            .await
            .unwrap()
            .granted_ttl(),
        7
    );
    assert_eq!(
        raw.lease_time_to_live(old, None).await.unwrap().ttl(),
        -1,
        "the old lease is revoked"
    );
    // Nothing moves again while the TTL stays.
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.renew_leader().await.unwrap());
    assert_eq!(lease_of(&mut raw, &keys.leader()).await, Some(new));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_recovers_after_an_etcd_restart() {
    let mut etcd = start_etcd().await;
    let a = client(&etcd, "restart", Some("a"), 30).await;
    let observer = client(&etcd, "restart", None, 30).await;
    let mut rx = observer.watch();
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());

    etcd.etcd.stop();
    let e = a.load().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let e = a.renew_leader().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");

    etcd.etcd.restart().await.unwrap();
    wait_for(
        "the lock to be renewed after the restart",
        Duration::from_secs(20),
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
    wait_for_event(&mut rx, KeyKind::Resync, Duration::from_secs(20))
        .await
        .unwrap();
    assert!(a.release_leader().await.unwrap());
    wait_for_event(&mut rx, KeyKind::Leader, Duration::from_secs(2))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_client_ends_its_watch_task() {
    let etcd = start_etcd().await;
    let observer = client(&etcd, "drop", None, 10).await;
    let mut rx = observer.watch();
    drop(observer);
    // The receiver closes once the last sender (held by the watch task) is gone.
    wait_for("the watch task to end", Duration::from_secs(2), || {
        let r = match rx.try_recv() {
            Err(TryRecvError::Closed) => Ok(()),
            other => Err(format!("{other:?}")),
        };
        async move { r }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_operations_need_a_member_name() {
    let etcd = start_etcd().await;
    let observer = client(&etcd, "anon", None, 10).await;
    assert!(matches!(
        observer.acquire_leader().await,
        Err(praetor_dcs::DcsError::Unsupported(_))
    ));
    assert!(matches!(
        observer.touch_member(&MemberData::default()).await,
        Err(praetor_dcs::DcsError::Unsupported(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_fails_fast_when_etcd_is_down() {
    let mut etcd = start_etcd().await;
    etcd.etcd.stop();
    let r = EtcdDcs::connect(
        std::slice::from_ref(&etcd.etcd.endpoint),
        identity("down", None, 10),
    )
    .await;
    assert!(
        matches!(r, Err(ref e) if e.is_unavailable()),
        "{:?}",
        r.err()
    );
}
