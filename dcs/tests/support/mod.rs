//! A real DCS server for one test (etcd or ZooKeeper on 127.0.0.1, started by the harness), clients
//! of it, raw access to its keys behind the clients' backs, and watch helpers.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use praetor_config::DcsEndpoints;
use praetor_dcs::{Dcs, DcsEvent, DcsIdentity, KeyKind, MemberData, MemberState, Role};
use praetor_harness::{wait_for, Etcd, TcpRelay, ZooKeeper};
use tokio::sync::broadcast::{self, error::TryRecvError};
use zookeeper_client as zk;

/// Seconds a test client's request may take (the agents' `retry_timeout` plays this part).
pub const REQUEST_TIMEOUT_SECS: u32 = 2;

/// Which backend a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Etcd,
    ZooKeeper,
}

enum Server {
    Etcd(Etcd),
    ZooKeeper(ZooKeeper),
}

/// A running DCS server and the directory holding its data (removed on drop).
pub struct TestDcs {
    pub kind: Kind,
    server: Server,
    _dir: tempfile::TempDir,
}

impl TestDcs {
    /// Starts a fresh server of `kind`.
    pub async fn start(kind: Kind) -> TestDcs {
        let dir = tempfile::Builder::new()
            .prefix("praetor-dcs-test-")
            .tempdir()
            .expect("temp dir");
        let server = match kind {
            Kind::Etcd => Server::Etcd(Etcd::start(dir.path()).await.expect("etcd starts")),
            Kind::ZooKeeper => Server::ZooKeeper(
                ZooKeeper::start(dir.path())
                    .await
                    .expect("ZooKeeper starts"),
            ),
        };
        TestDcs {
            kind,
            server,
            _dir: dir,
        }
    }

    /// The endpoints a configuration would name.
    pub fn endpoints(&self) -> DcsEndpoints {
        match &self.server {
            Server::Etcd(e) => DcsEndpoints::Etcd(vec![e.endpoint.clone()]),
            Server::ZooKeeper(z) => DcsEndpoints::ZooKeeper(vec![z.endpoint.clone()]),
        }
    }

    /// A client for cluster `scope` as `member` with lease/session TTL `ttl_secs`, through
    /// `praetor_dcs::connect` as the agent, proxy and ctl open it.
    pub async fn client(&self, scope: &str, member: Option<&str>, ttl_secs: u32) -> Arc<dyn Dcs> {
        praetor_dcs::connect(&self.endpoints(), identity(scope, member, ttl_secs))
            .await
            .expect("connect to the DCS")
    }

    /// A relay to the server, to partition the clients opened through it ([`TestDcs::client_via`]).
    pub async fn relay(&self) -> TcpRelay {
        let target = match &self.server {
            Server::Etcd(e) => format!("127.0.0.1:{}", e.port),
            Server::ZooKeeper(z) => z.endpoint.clone(),
        };
        TcpRelay::start(&target).await.expect("relay starts")
    }

    /// A client like [`TestDcs::client`] that reaches the server through `relay`.
    pub async fn client_via(
        &self,
        relay: &TcpRelay,
        scope: &str,
        member: Option<&str>,
        ttl_secs: u32,
    ) -> Arc<dyn Dcs> {
        let endpoints = match self.kind {
            Kind::Etcd => DcsEndpoints::Etcd(vec![format!("http://{}", relay.addr())]),
            Kind::ZooKeeper => DcsEndpoints::ZooKeeper(vec![relay.addr()]),
        };
        praetor_dcs::connect(&endpoints, identity(scope, member, ttl_secs))
            .await
            .expect("connect to the DCS through the relay")
    }

    /// Kills the server; its data stays.
    pub fn stop(&mut self) {
        match &mut self.server {
            Server::Etcd(e) => e.stop(),
            Server::ZooKeeper(z) => z.stop(),
        }
    }

    /// Starts the server again on the same port and data.
    pub async fn restart(&mut self) {
        match &mut self.server {
            Server::Etcd(e) => e.restart().await.expect("etcd restarts"),
            Server::ZooKeeper(z) => z.restart().await.expect("ZooKeeper restarts"),
        }
    }

    /// Freezes (`true`, SIGSTOP) or resumes the server: unreachable without a restart.
    pub fn set_frozen(&mut self, frozen: bool) {
        let signal = if frozen {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        match &mut self.server {
            Server::Etcd(e) => e.process().signal(signal),
            Server::ZooKeeper(z) => {
                if let Some(p) = z.process() {
                    p.signal(signal)
                }
            }
        }
    }

    /// The raw bytes at `key`, read behind the clients' backs.
    pub async fn raw_get(&self, key: &str) -> Option<Vec<u8>> {
        match &self.server {
            Server::Etcd(e) => {
                let mut c = raw_etcd(e).await;
                let resp = c.get(key, None).await.expect("get");
                resp.kvs().first().map(|kv| kv.value().to_vec())
            }
            Server::ZooKeeper(z) => {
                let c = raw_zk(z).await;
                match c.get_data(key).await {
                    Ok((data, _)) => Some(data),
                    Err(zk::Error::NoNode) => None,
                    Err(e) => panic!("get {key}: {e}"),
                }
            }
        }
    }

    /// Writes `value` at `key` behind the clients' backs (a plain key / a persistent znode).
    pub async fn raw_put(&self, key: &str, value: &[u8]) {
        match &self.server {
            Server::Etcd(e) => {
                raw_etcd(e).await.put(key, value, None).await.expect("put");
            }
            Server::ZooKeeper(z) => {
                let c = raw_zk(z).await;
                let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                if let Some((parent, _)) = key.rsplit_once('/') {
                    c.mkdir(parent, &options).await.expect("mkdir");
                }
                match c.create(key, value, &options).await {
                    Ok(_) => {}
                    Err(zk::Error::NodeExists) => {
                        c.set_data(key, value, None).await.expect("set");
                    }
                    Err(e) => panic!("create {key}: {e}"),
                }
            }
        }
    }

    /// Deletes `key` behind the clients' backs.
    pub async fn raw_delete(&self, key: &str) {
        match &self.server {
            Server::Etcd(e) => {
                raw_etcd(e).await.delete(key, None).await.expect("delete");
            }
            Server::ZooKeeper(z) => {
                let c = raw_zk(z).await;
                match c.delete(key, None).await {
                    Ok(()) | Err(zk::Error::NoNode) => {}
                    Err(e) => panic!("delete {key}: {e}"),
                }
            }
        }
    }

    /// The etcd server (etcd-specific tests).
    pub fn etcd(&mut self) -> &mut Etcd {
        match &mut self.server {
            Server::Etcd(e) => e,
            Server::ZooKeeper(_) => panic!("not an etcd test"),
        }
    }

    /// The ZooKeeper server (ZooKeeper-specific tests).
    pub fn zookeeper(&mut self) -> &mut ZooKeeper {
        match &mut self.server {
            Server::ZooKeeper(z) => z,
            Server::Etcd(_) => panic!("not a ZooKeeper test"),
        }
    }
}

pub async fn raw_etcd(e: &Etcd) -> etcd_client::Client {
    etcd_client::Client::connect([e.endpoint.as_str()], None)
        .await
        .expect("raw etcd client")
}

/// A plain ZooKeeper client (its own session, closed when dropped).
pub async fn raw_zk(z: &ZooKeeper) -> zk::Client {
    zk::Client::connect(&z.endpoint)
        .await
        .expect("raw ZooKeeper client")
}

pub fn identity(scope: &str, member: Option<&str>, ttl_secs: u32) -> DcsIdentity {
    DcsIdentity {
        namespace: "/service/".into(),
        scope: scope.into(),
        member: member.map(str::to_string),
        ttl_secs,
        request_timeout_secs: REQUEST_TIMEOUT_SECS,
    }
}

pub fn member_data(state: MemberState, role: Role) -> MemberData {
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

/// Waits up to `timeout` for a `kind` event on `rx`, or a [`KeyKind::Resync`] (after which a
/// subscriber reloads everything, so a change made while the watch reconnected is not missed).
pub async fn wait_for_event_or_resync(
    rx: &mut broadcast::Receiver<DcsEvent>,
    kind: KeyKind,
    timeout: Duration,
) -> Result<(), String> {
    let mut seen = Vec::new();
    wait_for(
        &format!("a {kind:?} watch event or a resync"),
        timeout,
        || {
            let r = loop {
                match rx.try_recv() {
                    Ok(ev) if ev.key == kind || ev.key == KeyKind::Resync => break Ok(()),
                    Ok(ev) => seen.push(ev.key),
                    Err(TryRecvError::Empty) => break Err(format!("nothing yet; saw {seen:?}")),
                    Err(e) => break Err(format!("receiver: {e}; saw {seen:?}")),
                }
            };
            async move { r }
        },
    )
    .await
}

/// Waits up to `timeout` for a `kind` event on `rx`.
pub async fn wait_for_event(
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

/// Drops every event queued on `rx`.
pub fn drain(rx: &mut broadcast::Receiver<DcsEvent>) {
    while rx.try_recv().is_ok() {}
}
