//! etcd-specific checks of the etcd backend against a real etcd on 127.0.0.1: which keys ride on the
//! lease, a lease lost behind the client's back, `set_ttl`, a proxy key written only over its own
//! last revision, and a 3-member cluster losing a member.
//! The behaviour every backend shares is in `conformance.rs`.

mod support;

use std::sync::Arc;
use std::time::Duration;

use praetor_dcs::etcd::{proxy_write_txn, EtcdDcs};
use praetor_dcs::{Dcs, Expect, KeyKind, Keys, MemberData, MemberState, ProxyState, Role};
use praetor_harness::{wait_for, EtcdCluster};
use serde_json::json;
use support::*;
use tokio_util::sync::CancellationToken;

/// A running etcd and the directory holding its data (removed on drop).
async fn start_etcd() -> TestDcs {
    TestDcs::start(Kind::Etcd).await
}

async fn client(etcd: &mut TestDcs, scope: &str, member: Option<&str>, ttl_secs: u32) -> EtcdDcs {
    EtcdDcs::connect(
        std::slice::from_ref(&etcd.etcd().endpoint),
        identity(scope, member, ttl_secs),
    )
    .await
    .expect("connect to etcd")
}

async fn raw(etcd: &mut TestDcs) -> etcd_client::Client {
    raw_etcd(etcd.etcd()).await
}

/// The lease a key is attached to (0: none), or `None` when the key does not exist.
async fn lease_of(raw: &mut etcd_client::Client, key: &str) -> Option<i64> {
    let resp = raw.get(key, None).await.expect("get");
    resp.kvs().first().map(|kv| kv.lease())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_member_ride_on_one_lease_and_the_other_keys_on_none() {
    let mut etcd = start_etcd().await;
    let a = client(&mut etcd, "lease", Some("a"), 10).await;
    let keys = Keys::new("/service/", "lease");
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    a.set_config(&json!({"ttl": 10}), Expect::Absent)
        .await
        .unwrap();
    assert!(a.create_initialize("1").await.unwrap());
    a.set_proxy_state("p", &Default::default()).await.unwrap();
    let mut raw = raw(&mut etcd).await;
    let lease = lease_of(&mut raw, &keys.leader()).await.unwrap();
    assert_ne!(lease, 0);
    assert_eq!(lease_of(&mut raw, &keys.member("a")).await, Some(lease));
    assert_eq!(lease_of(&mut raw, &keys.proxy("p")).await, Some(lease));
    assert_eq!(lease_of(&mut raw, &keys.config()).await, Some(0));
    assert_eq!(lease_of(&mut raw, &keys.initialize()).await, Some(0));
    assert_eq!(
        raw.lease_time_to_live(lease, None)
            .await
            .unwrap()
            .granted_ttl(),
        10
    );
}

/// The proxy key's value and mod revision (`None`: absent).
async fn proxy_key(raw: &mut etcd_client::Client, key: &str) -> Option<(String, i64)> {
    let resp = raw.get(key, None).await.expect("get");
    resp.kvs()
        .first()
        .map(|kv| (kv.value_str().unwrap().to_string(), kv.mod_revision()))
}

fn routing_to(leader: &str) -> ProxyState {
    ProxyState {
        leader: Some(leader.into()),
        since: None,
    }
}

/// A proxy's acknowledgement written while an earlier write of the same key is still in flight
/// (its request timed out, but etcd applies it later: the outcome of a timed-out request is
/// unknown) stays: the late write fails its revision compare. A key changed behind the proxy's
/// back (such a write applied before the next one, or the lease expired) is written over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_proxy_key_write_does_not_replace_a_newer_acknowledgement() {
    let mut etcd = start_etcd().await;
    let p = client(&mut etcd, "proxykey", None, 10).await;
    let key = Keys::new("/service/", "proxykey").proxy("p");
    let mut raw = raw(&mut etcd).await;
    p.set_proxy_state("p", &routing_to("a")).await.unwrap();
    let (_, at_a) = proxy_key(&mut raw, &key).await.expect("written");
    // A write of route "a" built over that revision is sent and times out; the proxy moves on
    // and acknowledges "b" (the late write has not landed yet, so the key is still at `at_a`).
    let late = proxy_write_txn(&key, r#"{"leader":"a"}"#, 0, at_a);
    p.set_proxy_state("p", &routing_to("b")).await.unwrap();
    let (value, at_b) = proxy_key(&mut raw, &key).await.unwrap();
    assert!(value.contains(r#""b""#) && at_b > at_a, "{value} at {at_b}");
    // Now etcd applies the late write: refused.
    let applied = raw.txn(late).await.expect("txn");
    assert!(
        !applied.succeeded(),
        "the late write applied over a newer one"
    );
    assert_eq!(proxy_key(&mut raw, &key).await, Some((value, at_b)));

    // A late write that landed before the next one (a plain put here) is written over.
    raw.put(key.as_str(), r#"{"leader":"a"}"#, None)
        .await
        .unwrap();
    p.set_proxy_state("p", &routing_to("c")).await.unwrap();
    let (value, _) = proxy_key(&mut raw, &key).await.unwrap();
    assert!(value.contains(r#""c""#), "{value}");
    // So is a key that went away (its lease expired or was revoked).
    raw.delete(key.as_str(), None).await.unwrap();
    p.set_proxy_state("p", &ProxyState::default())
        .await
        .unwrap();
    let (value, _) = proxy_key(&mut raw, &key).await.expect("written again");
    assert!(value.contains("null"), "{value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_lease_is_replaced_but_the_lock_is_not_recreated() {
    let mut etcd = start_etcd().await;
    let a = client(&mut etcd, "lost", Some("a"), 60).await;
    let keys = Keys::new("/service/", "lost");
    let mut raw = raw(&mut etcd).await;
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
    let mut etcd = start_etcd().await;
    let a = client(&mut etcd, "ttl", Some("a"), 30).await;
    let keys = Keys::new("/service/", "ttl");
    let mut raw = raw(&mut etcd).await;
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
    assert_eq!(a.granted_ttl(), Some(Duration::from_secs(30)));

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
    assert_eq!(a.granted_ttl(), Some(Duration::from_secs(7)));
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
async fn client_rides_out_the_loss_of_one_member_of_a_three_member_cluster() {
    let dir = tempfile::Builder::new()
        .prefix("praetor-dcs-etcd3-")
        .tempdir()
        .expect("temp dir");
    let mut cluster = EtcdCluster::start(dir.path(), 3)
        .await
        .expect("etcd cluster");
    let a = Arc::new(
        EtcdDcs::connect(&cluster.endpoints(), identity("three", Some("a"), 10))
            .await
            .expect("connect"),
    );
    let observer = EtcdDcs::connect(&cluster.endpoints(), identity("three", None, 10))
        .await
        .expect("connect");
    let mut rx = observer.watch();
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());

    // The holder renews every 500 ms throughout, as an agent does every loop.
    let stop = CancellationToken::new();
    let renewer = tokio::spawn({
        let (a, stop) = (a.clone(), stop.clone());
        async move {
            let (mut renewed, mut failed) = (0u32, Vec::new());
            while !stop.is_cancelled() {
                match a.renew_leader().await {
                    Ok(true) => renewed += 1,
                    Ok(false) => panic!("the lock was lost after {renewed} renewals"),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            (renewed, failed)
        }
    });

    for lost in 0..3 {
        cluster.stop_member(lost);
        // Two members keep the quorum: writes and watches work (requests routed to the lost member
        // go to the others).
        drain(&mut rx);
        wait_for(
            &format!("a member write with member {lost} down"),
            Duration::from_secs(30),
            || async {
                a.touch_member(&MemberData {
                    xlog_location: Some(lost as u64),
                    ..Default::default()
                })
                .await
                .map_err(|e| e.to_string())
            },
        )
        .await
        .unwrap();
        wait_for_event_or_resync(
            &mut rx,
            KeyKind::Member("a".into()),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        let c = observer.load().await.unwrap();
        assert_eq!(c.leader.as_ref().map(|l| l.name.as_str()), Some("a"));
        assert_eq!(c.member("a").unwrap().data.xlog_location, Some(lost as u64));
        cluster.start_member(lost).unwrap();
        cluster.wait_healthy(Duration::from_secs(60)).await.unwrap();
    }
    stop.cancel();
    let (renewed, failed) = renewer.await.expect("the lock was never lost");
    eprintln!("{renewed} renewals, {} failed: {failed:?}", failed.len());
    assert!(renewed > 0);
    assert!(a.renew_leader().await.unwrap());
}

/// `drop_session` (a lapsed leader whose releases keep failing, issue 14) revokes the lease: the
/// lock and the member key go at once (not a ttl of 30 s later); the next `touch_member` writes
/// the member key on a new lease, and the lock is not recreated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_lease_is_revoked_the_lock_gone_and_the_member_written_on_a_new_one() {
    let mut etcd = start_etcd().await;
    let a = client(&mut etcd, "dropped", Some("a"), 30).await;
    let keys = Keys::new("/service/", "dropped");
    a.touch_member(&MemberData::default()).await.unwrap();
    assert!(a.acquire_leader().await.unwrap());
    let mut raw = raw(&mut etcd).await;
    let old = lease_of(&mut raw, &keys.leader()).await.unwrap();

    a.drop_session().await.unwrap();
    assert_eq!(lease_of(&mut raw, &keys.leader()).await, None);
    assert_eq!(lease_of(&mut raw, &keys.member("a")).await, None);
    assert!(a.load().await.unwrap().leader.is_none());

    a.touch_member(&MemberData::default()).await.unwrap();
    let new = lease_of(&mut raw, &keys.member("a")).await.unwrap();
    assert_ne!(new, old);
    assert_ne!(new, 0);
    assert!(!a.renew_leader().await.unwrap());
    assert_eq!(lease_of(&mut raw, &keys.leader()).await, None);
}
