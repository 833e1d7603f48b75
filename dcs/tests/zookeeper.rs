//! ZooKeeper-specific checks of the ZooKeeper backend against a real ZooKeeper on 127.0.0.1: which
//! znodes are ephemeral and whose, a session expiring behind a partition, znodes left by another
//! session, `set_ttl` and the server's bounds, and a 3-node ensemble losing the node serving the
//! client. The behaviour every backend shares is in `conformance.rs`.

mod support;

use std::time::Duration;

use praetor_dcs::zookeeper::ZooKeeperDcs;
use praetor_dcs::{Dcs, Expect, KeyKind, Keys, MemberData, MemberState, ProxyState, Role};
use praetor_harness::{wait_for, ZooKeeper, ZooKeeperEnsemble};
use serde_json::json;
use support::*;
use zookeeper_client as zk;

async fn client(
    dcs: &mut TestDcs,
    scope: &str,
    member: Option<&str>,
    ttl_secs: u32,
) -> ZooKeeperDcs {
    let endpoint = dcs.zookeeper().endpoint.clone();
    ZooKeeperDcs::connect(&[endpoint], identity(scope, member, ttl_secs))
        .await
        .expect("connect to ZooKeeper")
}

/// The session owning `path` (0: a persistent znode), or `None` when it does not exist. Retries
/// while the raw client's own connection moves to another server.
async fn owner(raw: &zk::Client, path: &str) -> Option<i64> {
    wait_for(
        &format!("the stat of {path}"),
        Duration::from_secs(30),
        || async { raw.check_stat(path).await.map_err(|e| e.to_string()) },
    )
    .await
    .expect("stat")
    .map(|stat| stat.ephemeral_owner)
}

/// The negotiated timeout (ms) of session `sid` on `server`, from the `cons` four-letter word.
async fn session_timeout_ms(server: &ZooKeeper, sid: i64) -> Result<u64, String> {
    let cons = server.four_letter_word("cons").await?;
    let needle = format!("sid={:#x},", sid);
    let line = cons
        .lines()
        .find(|l| l.contains(&needle))
        .ok_or_else(|| format!("no connection of session {sid:#x} in:\n{cons}"))?;
    line.split(['(', ',', ')'])
        .find_map(|f| f.strip_prefix("to="))
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| format!("no timeout in {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_member_and_proxy_are_ephemeral_znodes_of_one_session_and_the_rest_persistent() {
    let mut dcs = TestDcs::start(Kind::ZooKeeper).await;
    let a = client(&mut dcs, "ephemeral", Some("a"), 10).await;
    let keys = Keys::new("/service/", "ephemeral");
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    a.set_proxy_state("p", &ProxyState::default())
        .await
        .unwrap();
    a.set_config(&json!({"ttl": 10}), Expect::Absent)
        .await
        .unwrap();
    assert!(a.create_initialize("1").await.unwrap());

    let raw = raw_zk(dcs.zookeeper()).await;
    let session = owner(&raw, &keys.leader()).await.unwrap();
    assert_ne!(session, 0);
    assert_eq!(owner(&raw, &keys.member("a")).await, Some(session));
    assert_eq!(owner(&raw, &keys.proxy("p")).await, Some(session));
    assert_eq!(owner(&raw, &keys.config()).await, Some(0));
    assert_eq!(owner(&raw, &keys.initialize()).await, Some(0));
    // The session timeout is the ttl.
    let server = dcs.zookeeper();
    assert_eq!(session_timeout_ms(server, session).await, Ok(10_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_replaced_the_member_restored_and_the_lock_not_recreated() {
    const TTL: u32 = 2;
    let mut dcs = TestDcs::start(Kind::ZooKeeper).await;
    let keys = Keys::new("/service/", "expired");
    let relay = dcs.relay().await;
    let a = dcs.client_via(&relay, "expired", Some("a"), TTL).await;
    a.touch_member(&member_data(MemberState::Running, Role::Primary))
        .await
        .unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let raw = raw_zk(dcs.zookeeper()).await;
    let old = owner(&raw, &keys.leader()).await.unwrap();

    // Cut off, the session expires on the server (its znodes go) while the client cannot tell.
    relay.cut();
    wait_for(
        "the server to expire the session",
        Duration::from_secs(30),
        || async {
            match (
                owner(&raw, &keys.leader()).await,
                owner(&raw, &keys.member("a")).await,
            ) {
                (None, None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    relay.restore();

    // The client learns of the expiry, opens a new session and writes its member key on it, but
    // never the lock.
    wait_for(
        "a renewal to report the lock lost",
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
    let new = wait_for(
        "the member key on a new session",
        Duration::from_secs(30),
        || async {
            match owner(&raw, &keys.member("a")).await {
                Some(s) if s != old && s != 0 => Ok(s),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(owner(&raw, &keys.leader()).await, None);
    let c = a.load().await.unwrap();
    assert_eq!(c.member("a").unwrap().data.role, Role::Primary);
    assert!(c.leader.is_none());
    // Taking the lock again is an explicit acquire, on the new session.
    assert!(a.acquire_leader().await.unwrap());
    assert_eq!(owner(&raw, &keys.leader()).await, Some(new));
    assert!(a.renew_leader().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn znodes_left_by_another_session_are_replaced_by_touch_member_and_are_not_the_lock() {
    let mut dcs = TestDcs::start(Kind::ZooKeeper).await;
    let keys = Keys::new("/service/", "stale");
    // As a former session of this member (or an operator) left them: persistent, same name.
    dcs.raw_put(&keys.member("a"), br#"{"state":"stopped"}"#)
        .await;
    dcs.raw_put(&keys.leader(), b"a").await;
    let a = client(&mut dcs, "stale", Some("a"), 10).await;
    let raw = raw_zk(dcs.zookeeper()).await;

    assert!(
        !a.renew_leader().await.unwrap(),
        "a leader znode of another session is not this session's lock"
    );
    assert!(!a.acquire_leader().await.unwrap());
    a.touch_member(&member_data(MemberState::Running, Role::Replica))
        .await
        .unwrap();
    let session = owner(&raw, &keys.member("a")).await.unwrap();
    assert_ne!(session, 0, "replaced by an ephemeral znode of the session");
    assert_eq!(
        a.load().await.unwrap().member("a").unwrap().data.role,
        Role::Replica
    );
    // Releasing by name still works (an operator's way out), and then the lock is this session's.
    assert!(a.release_leader().await.unwrap());
    assert!(a.acquire_leader().await.unwrap());
    assert_eq!(owner(&raw, &keys.leader()).await, Some(session));
    assert!(a.renew_leader().await.unwrap());
}

/// After a ZooKeeper quorum loss the client library gives its session up for expired and opens a
/// new one while the servers keep the old session, and with it the former leader's ephemeral
/// znode (nemesis seeds 75 and 91). The member's next renewal answers that the lock is lost and
/// deletes that znode, so the race starts at once rather than when the servers expire the old
/// session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_leader_znode_of_a_former_session_naming_this_member_is_deleted_at_renewal() {
    let mut dcs = TestDcs::start(Kind::ZooKeeper).await;
    let keys = Keys::new("/service/", "former");
    // The former session, alive on the servers: a raw client's, kept open below.
    let former = raw_zk(dcs.zookeeper()).await;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let leader = keys.leader();
    let (parent, _) = leader.rsplit_once('/').unwrap();
    former.mkdir(parent, &persistent).await.expect("mkdir");
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    former
        .create(&leader, b"a", &ephemeral)
        .await
        .expect("create");
    let a = client(&mut dcs, "former", Some("a"), 10).await;
    let raw = raw_zk(dcs.zookeeper()).await;
    assert_ne!(owner(&raw, &leader).await, Some(0));

    assert!(
        !a.renew_leader().await.unwrap(),
        "a znode of another session is not this session's lock"
    );
    assert_eq!(
        owner(&raw, &leader).await,
        None,
        "deleted: the race may start"
    );
    assert!(a.acquire_leader().await.unwrap());
    assert!(a.renew_leader().await.unwrap());
    drop(former);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_ttl_applies_to_the_next_session_within_the_servers_bounds() {
    let mut dcs = TestDcs::start(Kind::ZooKeeper).await;
    let keys = Keys::new("/service/", "ttl");
    let a = client(&mut dcs, "ttl", Some("a"), 30).await;
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let raw = raw_zk(dcs.zookeeper()).await;
    let first = owner(&raw, &keys.leader()).await.unwrap();
    assert_eq!(session_timeout_ms(dcs.zookeeper(), first).await, Ok(30_000));
    assert_eq!(a.granted_ttl(), Some(Duration::from_secs(30)));

    // A live session keeps its timeout (changing it would need a new session and lose the lock).
    a.set_ttl(7).await.unwrap();
    assert!(a.renew_leader().await.unwrap());
    a.touch_member(&MemberData::default()).await.unwrap();
    assert_eq!(owner(&raw, &keys.leader()).await, Some(first));
    assert_eq!(session_timeout_ms(dcs.zookeeper(), first).await, Ok(30_000));

    // The next session gets it.
    a.close().await.unwrap();
    a.touch_member(&MemberData::default()).await.unwrap();
    let second = owner(&raw, &keys.member("a")).await.unwrap();
    assert_ne!(second, first);
    assert_eq!(session_timeout_ms(dcs.zookeeper(), second).await, Ok(7_000));
    assert_eq!(a.granted_ttl(), Some(Duration::from_secs(7)));

    // Beyond the server's maxSessionTimeout (60 s here) the server grants its bound.
    a.set_ttl(100).await.unwrap();
    a.close().await.unwrap();
    a.touch_member(&MemberData::default()).await.unwrap();
    let third = owner(&raw, &keys.member("a")).await.unwrap();
    assert_eq!(session_timeout_ms(dcs.zookeeper(), third).await, Ok(60_000));
    // What the proxies' contact deadline is computed from.
    assert_eq!(a.granted_ttl(), Some(Duration::from_secs(60)));
    assert_eq!(
        ProxyState::contact_deadline_within(100, a.granted_ttl()),
        Duration::from_secs(48)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_and_the_watch_survive_the_loss_of_the_ensemble_member_serving_them() {
    let dir = tempfile::Builder::new()
        .prefix("praetor-dcs-zk3-")
        .tempdir()
        .expect("temp dir");
    let mut ensemble = ZooKeeperEnsemble::start(dir.path(), 3)
        .await
        .expect("ZooKeeper ensemble");
    let hosts = ensemble.hosts();
    let keys = Keys::new("/service/", "three");
    let a = ZooKeeperDcs::connect(&hosts, identity("three", Some("a"), 10))
        .await
        .expect("connect");
    let observer = ZooKeeperDcs::connect(&hosts, identity("three", None, 10))
        .await
        .expect("connect");
    let mut rx = observer.watch();
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let raw = zk::Client::connect(&hosts.join(","))
        .await
        .expect("raw client");
    let session = owner(&raw, &keys.leader()).await.unwrap();

    for round in 0..2 {
        // Stop whichever member serves the lock holder's session.
        let mut serving = None;
        for (i, m) in ensemble.members.iter().enumerate() {
            if session_timeout_ms(m, session).await.is_ok() {
                serving = Some(i);
            }
        }
        let serving = serving.expect("a member serves the session");
        ensemble.stop_member(serving);

        // The session moves to another member: same session, lock kept, watch delivering.
        wait_for(
            &format!("round {round}: a renewal after member {serving} stopped"),
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
        assert_eq!(owner(&raw, &keys.leader()).await, Some(session));
        drain(&mut rx);
        wait_for("a member write", Duration::from_secs(30), || async {
            a.touch_member(&MemberData {
                xlog_location: Some(round),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())
        })
        .await
        .unwrap();
        wait_for_event_or_resync(
            &mut rx,
            KeyKind::Member("a".into()),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        ensemble.start_member(serving).unwrap();
        ensemble
            .wait_serving(Duration::from_secs(60))
            .await
            .unwrap();
    }
}

/// `drop_session` (a lapsed leader whose releases keep failing, issue 14) closes the session: the
/// ephemeral lock goes at once, not a session timeout (30 s) later; the next operation opens a new
/// session and writes the member key on it, never the lock; the watch follows the new session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_is_closed_its_lock_gone_at_once_the_member_restored_on_a_new_one() {
    let mut dcs = TestDcs::start(Kind::ZooKeeper).await;
    let keys = Keys::new("/service/", "dropped");
    let a = client(&mut dcs, "dropped", Some("a"), 30).await;
    a.touch_member(&member_data(MemberState::Running, Role::Replica))
        .await
        .unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let raw = raw_zk(dcs.zookeeper()).await;
    let old = owner(&raw, &keys.leader()).await.unwrap();
    let mut events = a.watch();

    a.drop_session().await.unwrap();
    // Closed, not expired: gone now (the request timeout is 2 s, the session timeout 30 s).
    assert_eq!(owner(&raw, &keys.leader()).await, None);
    assert_eq!(owner(&raw, &keys.member("a")).await, None);

    // The next operation opens a new session: the member key is back on it, the lock is not.
    let c = a.load().await.unwrap();
    assert!(c.leader.is_none());
    let new = owner(&raw, &keys.member("a"))
        .await
        .expect("the member key written again on the new session");
    assert_ne!(new, old);
    assert_eq!(c.member("a").unwrap().data.role, Role::Replica);
    assert!(!a.renew_leader().await.unwrap());
    // The watch follows the new session (announced with a resync): another member's acquisition
    // is reported.
    wait_for_event(&mut events, KeyKind::Resync, Duration::from_secs(30))
        .await
        .unwrap();
    drain(&mut events);
    let b = client(&mut dcs, "dropped", Some("b"), 30).await;
    assert!(b.acquire_leader().await.unwrap());
    wait_for_event(&mut events, KeyKind::Leader, Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(a.load().await.unwrap().leader.unwrap().name, "b");
}

/// When the close does not get through in time (a link slow enough that a request misses the
/// 2 s request timeout, while the session's pings still keep it alive), `drop_session` reports
/// the failure but abandons the session all the same: nothing pings it any more, so the servers
/// expire it and the lock with it. A second client on the same slow link keeps its session
/// meanwhile (the slow link alone expires nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_session_whose_close_times_out_is_abandoned_and_expires_with_its_lock() {
    const TTL: u32 = 10;
    let mut dcs = TestDcs::start(Kind::ZooKeeper).await;
    let keys = Keys::new("/service/", "abandoned");
    let relay = dcs.relay().await;
    let a = dcs.client_via(&relay, "abandoned", Some("a"), TTL).await;
    let b = dcs.client_via(&relay, "abandoned", Some("b"), TTL).await;
    a.touch_member(&MemberData::default()).await.unwrap();
    b.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let raw = raw_zk(dcs.zookeeper()).await;
    let a_session = owner(&raw, &keys.leader()).await.unwrap();
    let b_session = owner(&raw, &keys.member("b")).await.unwrap();

    // A round trip of 2.4 s: the close (a handshake, then the close) misses the request timeout;
    // pings, one at a time, still come back within the 4 s the client allows at a 10 s session.
    relay.set_delay(Duration::from_millis(1200));
    let e = a.drop_session().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    wait_for(
        "the abandoned session to expire, the lock with it",
        Duration::from_secs(60),
        || async {
            match owner(&raw, &keys.leader()).await {
                None => Ok(()),
                Some(s) => Err(format!("the lock is still owned by {s:#x}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(owner(&raw, &keys.member("a")).await, None);
    assert_eq!(
        owner(&raw, &keys.member("b")).await,
        Some(b_session),
        "the slow link alone expired b's session (session {a_session:#x} was a's)"
    );
}
