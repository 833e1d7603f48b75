//! The DCS as a stream of topologies: [`spawn_dcs_feed`].
//!
//! The feed loads the cluster at start, again on every watch event (a burst of events causes one
//! load), every [`RESYNC_INTERVAL`] as a safety net, and after errors with a growing backoff. It
//! publishes a topology only when it differs from the last one published, and keeps the last one while
//! the DCS cannot be read. The decisions (publish or not, how long to wait) are [`FeedState`], a plain
//! value tested without a DCS; the task around it only does I/O.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use praetor_dcs::{Cluster, Dcs};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::topology::{topology_from_cluster, DcsClock, Topology};

/// How often the cluster is reloaded when no watch event arrives.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(5);

/// The first retry delay after a failed load; doubled on each further failure up to
/// [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);

/// The longest retry delay after failed loads.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How many leader WAL positions the feed remembers to estimate replicas' lag in seconds.
const LSN_HISTORY: usize = 4_096;

/// The feed's decisions, without I/O.
#[derive(Debug, Default)]
pub struct FeedState {
    published: Topology,
    failures: u32,
    /// `(when first seen, leader WAL position)`, increasing positions, oldest first.
    leader_lsns: VecDeque<(Instant, u64)>,
}

impl FeedState {
    /// A feed that has published the empty topology (no leader, no replicas).
    pub fn new() -> FeedState {
        FeedState::default()
    }

    /// A successful load at `now`: the topology to publish when it differs from the last one
    /// published.
    ///
    /// Replica lag in seconds is estimated from the leader's positions seen so far: a replica that
    /// replayed up to `r` is as far behind as the time since the feed first saw the leader beyond
    /// `r` (0 when it has caught up). Its resolution is the agents' update period (`loop_wait`).
    pub fn on_cluster(&mut self, cluster: &Cluster, now: Instant) -> Option<Topology> {
        self.failures = 0;
        let mut topology = topology_from_cluster(cluster);
        match cluster.leader.as_ref().and(cluster.leader_optime()) {
            Some(lsn) => {
                if self.leader_lsns.back().is_none_or(|(_, last)| lsn > *last) {
                    if self.leader_lsns.back().is_some_and(|(_, last)| lsn < *last) {
                        self.leader_lsns.clear();
                    }
                    self.leader_lsns.push_back((now, lsn));
                    if self.leader_lsns.len() > LSN_HISTORY {
                        self.leader_lsns.pop_front();
                    }
                } else if self.leader_lsns.back().is_some_and(|(_, last)| lsn < *last) {
                    // A new leader on a new timeline: positions start over.
                    self.leader_lsns.clear();
                    self.leader_lsns.push_back((now, lsn));
                }
            }
            None => self.leader_lsns.clear(),
        }
        for (name, lag) in topology.lag.iter_mut() {
            let replayed = cluster
                .member(name)
                .and_then(|m| m.data.replay_lsn.or(m.data.xlog_location));
            lag.seconds = match (replayed, self.leader_lsns.back()) {
                (Some(r), Some((_, newest))) if r >= *newest => Some(0.0),
                (Some(r), Some(_)) => self
                    .leader_lsns
                    .iter()
                    .find(|(_, l)| *l > r)
                    .map(|(at, _)| now.saturating_duration_since(*at).as_secs_f64()),
                _ => None,
            };
            // Seconds are only published in whole steps, so that a steady lag does not publish a
            // new topology on every load.
            lag.seconds = lag.seconds.map(f64::floor);
        }
        if topology == self.published {
            return None;
        }
        self.published = topology.clone();
        Some(topology)
    }

    /// A failed load: how long to wait before the next attempt (100 ms, doubling, at most 5 s). The
    /// last published topology stays in force.
    pub fn on_error(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = self.failures.saturating_sub(1).min(16);
        MIN_BACKOFF.saturating_mul(1 << exp).min(MAX_BACKOFF)
    }

    /// Consecutive failed loads.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Follows the cluster in `dcs` and returns a receiver of its topologies, starting with an empty one
/// (no leader) until the first load. The task stops on `shutdown` or when every receiver is dropped.
///
/// Every topology the feed publishes shares one [`DcsClock`], which records each successful load; the
/// proxy reports it as `praetor_proxy_seconds_since_last_dcs_event`.
pub fn spawn_dcs_feed(
    dcs: Arc<dyn Dcs>,
    shutdown: CancellationToken,
) -> watch::Receiver<Arc<Topology>> {
    let clock = DcsClock::new();
    let initial = Topology {
        dcs_clock: clock.clone(),
        ..Topology::default()
    };
    let (tx, rx) = watch::channel(Arc::new(initial));
    tokio::spawn(run_feed(dcs, tx, clock, shutdown));
    rx
}

fn describe(t: &Topology) -> (String, String) {
    let leader = t
        .leader
        .as_ref()
        .map_or_else(|| "none".to_string(), |b| b.to_string());
    let replicas = t
        .replicas
        .iter()
        .map(|b| b.member())
        .collect::<Vec<_>>()
        .join(",");
    (leader, replicas)
}

async fn run_feed(
    dcs: Arc<dyn Dcs>,
    tx: watch::Sender<Arc<Topology>>,
    clock: DcsClock,
    shutdown: CancellationToken,
) {
    let mut state = FeedState::new();
    let mut events = Some(dcs.watch());
    loop {
        let loaded = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            r = dcs.load() => r,
        };
        let delay = match loaded {
            Ok(cluster) => {
                clock.record_read();
                if state.failures() > 0 {
                    info!(failures = state.failures(), "the DCS is readable again");
                }
                if let Some(topology) = state.on_cluster(&cluster, Instant::now()) {
                    if tx.borrow().is_switching_over() != topology.is_switching_over() {
                        match &topology.switchover {
                            Some(s) if topology.is_switching_over() => info!(
                                leader = %s.leader,
                                candidate = s.candidate.as_deref().unwrap_or("any"),
                                "switchover requested: new transactions wait for the next leader"
                            ),
                            _ => info!("no switchover pending"),
                        }
                    }
                    if tx.borrow().routes_differ(&topology) {
                        let (leader, replicas) = describe(&topology);
                        info!(%leader, %replicas, "topology changed");
                    } else {
                        debug!(lag = ?topology.lag, "replica lag changed");
                    }
                    tx.send_replace(Arc::new(Topology {
                        dcs_clock: clock.clone(),
                        ..topology
                    }));
                }
                RESYNC_INTERVAL
            }
            Err(e) => {
                let delay = state.on_error();
                if state.failures() == 1 {
                    warn!(error = %e, "cannot read the DCS; keeping the last topology");
                } else {
                    debug!(error = %e, failures = state.failures(), retry_in = ?delay, "cannot read the DCS");
                }
                delay
            }
        };
        if events.is_none() {
            // The watch channel closed earlier; try to subscribe again at each reload.
            events = Some(dcs.watch());
        }
        let event = async {
            match events.as_mut() {
                Some(rx) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = tokio::time::sleep(delay) => {}
            r = event => match r {
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // One load for a burst of events.
                    if let Some(rx) = events.as_mut() {
                        while !matches!(rx.try_recv(), Err(broadcast::error::TryRecvError::Empty | broadcast::error::TryRecvError::Closed)) {}
                    }
                }
                Err(broadcast::error::RecvError::Closed) => {
                    debug!("the DCS watch closed; relying on periodic reloads");
                    events = None;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use async_trait::async_trait;
    use praetor_dcs::{
        DcsError, DcsEvent, Expect, Failover, HistoryEntry, KeyKind, Leader, Member, MemberData,
        MemberState, Role, Status, SyncState, Version,
    };

    fn cluster(leader: Option<&str>, members: &[(&str, Role, u16)]) -> Cluster {
        Cluster {
            leader: leader.map(|l| Leader {
                name: l.into(),
                version: 1,
            }),
            members: members
                .iter()
                .map(|(name, role, port)| Member {
                    name: (*name).into(),
                    data: MemberData {
                        conn_url: Some(format!("postgres://127.0.0.1:{port}/postgres")),
                        role: *role,
                        state: MemberState::Running,
                        ..Default::default()
                    },
                    version: 1,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn publishes_only_changes() {
        let mut state = FeedState::new();
        let now = Instant::now();
        assert_eq!(
            state.on_cluster(&Cluster::default(), now),
            None,
            "empty = initial"
        );
        let c1 = cluster(
            Some("a"),
            &[("a", Role::Primary, 1), ("b", Role::Replica, 2)],
        );
        let t1 = state.on_cluster(&c1, now).expect("first real topology");
        assert_eq!(t1.leader.as_ref().map(|b| b.member()), Some("a"));
        assert_eq!(state.on_cluster(&c1, now), None, "same cluster again");
        // A change that does not affect routing (the leader's timeline) publishes nothing.
        let mut c1b = c1.clone();
        c1b.members[0].data.timeline = Some(3);
        assert_eq!(state.on_cluster(&c1b, now), None);
        let c2 = cluster(
            Some("b"),
            &[("a", Role::Replica, 1), ("b", Role::Primary, 2)],
        );
        assert!(state.on_cluster(&c2, now).is_some());
    }

    #[test]
    fn replica_lag_in_seconds_is_the_time_since_the_leader_passed_its_position() {
        let mut state = FeedState::new();
        let t0 = Instant::now();
        let mut c = cluster(
            Some("a"),
            &[("a", Role::Primary, 1), ("b", Role::Replica, 2)],
        );
        let at = |c: &mut Cluster, leader: u64, replica: u64| {
            c.members[0].data.xlog_location = Some(leader);
            c.members[1].data.replay_lsn = Some(replica);
        };
        at(&mut c, 100, 100);
        let t = state.on_cluster(&c, t0).unwrap();
        assert_eq!(t.lag["b"].seconds, Some(0.0));
        assert_eq!(t.lag["b"].bytes, Some(0));
        // The leader moves on at t0+1 s; the replica stops replaying at 100.
        at(&mut c, 200, 100);
        let t = state.on_cluster(&c, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(t.lag["b"].seconds, Some(0.0));
        at(&mut c, 300, 100);
        let t = state
            .on_cluster(&c, t0 + Duration::from_millis(4_500))
            .unwrap();
        assert_eq!(t.lag["b"].seconds, Some(3.0), "behind since t0+1s");
        assert_eq!(t.lag["b"].bytes, Some(200));
        // It catches up to 200: behind since the leader passed 200 (at t0+4.5 s).
        at(&mut c, 300, 200);
        let t = state
            .on_cluster(&c, t0 + Duration::from_millis(6_600))
            .unwrap();
        assert_eq!(t.lag["b"].seconds, Some(2.0));
        at(&mut c, 300, 300);
        let t = state.on_cluster(&c, t0 + Duration::from_secs(7)).unwrap();
        assert_eq!(t.lag["b"].seconds, Some(0.0));
        // A lag that stays the same publishes nothing new.
        assert_eq!(state.on_cluster(&c, t0 + Duration::from_secs(8)), None);
    }

    #[test]
    fn errors_back_off_exponentially_up_to_five_seconds_and_reset_on_success() {
        let mut state = FeedState::new();
        let delays: Vec<u128> = (0..8).map(|_| state.on_error().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        for _ in 0..100 {
            assert_eq!(state.on_error(), MAX_BACKOFF);
        }
        state.on_cluster(&Cluster::default(), Instant::now());
        assert_eq!(state.failures(), 0);
        assert_eq!(state.on_error(), MIN_BACKOFF);
    }

    /// A DCS whose cluster view the test sets; only `load` and `watch` work.
    struct FakeDcs {
        cluster: Mutex<Result<Cluster, String>>,
        events: broadcast::Sender<DcsEvent>,
        loads: AtomicUsize,
    }

    impl FakeDcs {
        fn new(c: Cluster) -> Arc<FakeDcs> {
            Arc::new(FakeDcs {
                cluster: Mutex::new(Ok(c)),
                events: broadcast::channel(16).0,
                loads: AtomicUsize::new(0),
            })
        }
        fn set(&self, c: Result<Cluster, String>) {
            *self.cluster.lock().unwrap() = c;
        }
        fn notify(&self) {
            let _ = self.events.send(DcsEvent {
                key: KeyKind::Leader,
            });
        }
    }

    #[async_trait]
    impl Dcs for FakeDcs {
        async fn load(&self) -> Result<Cluster, DcsError> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            self.cluster
                .lock()
                .unwrap()
                .clone()
                .map_err(DcsError::Unavailable)
        }
        fn granted_ttl(&self) -> Option<std::time::Duration> {
            None
        }
        fn watch(&self) -> broadcast::Receiver<DcsEvent> {
            self.events.subscribe()
        }
        async fn create_initialize(&self, _: &str) -> Result<bool, DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn update_initialize(&self, _: &str, _: &str) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn cancel_initialize(&self, _: &str) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn acquire_leader(&self) -> Result<bool, DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn renew_leader(&self) -> Result<bool, DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn release_leader(&self) -> Result<bool, DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn touch_member(&self, _: &MemberData) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn delete_member(&self) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn set_config(&self, _: &serde_json::Value, _: Expect) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn set_failover(&self, _: &Failover, _: Expect) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn delete_failover(&self, _: Version) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn set_history(&self, _: &[HistoryEntry], _: Expect) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn set_status(&self, _: &Status) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn set_sync(&self, _: &SyncState, _: Expect) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn set_ttl(&self, _: u32) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn set_failsafe(
            &self,
            _: &std::collections::BTreeMap<String, String>,
        ) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
        async fn set_proxy_state(
            &self,
            _: &str,
            _: &praetor_dcs::ProxyState,
        ) -> Result<(), DcsError> {
            Ok(())
        }
        async fn close(&self) -> Result<(), DcsError> {
            unimplemented!("not used by the proxy")
        }
    }

    fn leader_of(rx: &watch::Receiver<Arc<Topology>>) -> Option<String> {
        rx.borrow().leader.as_ref().map(|b| b.member().to_string())
    }

    #[tokio::test(start_paused = true)]
    async fn the_feed_follows_events_keeps_the_last_topology_on_errors_and_stops_on_shutdown() {
        let dcs = FakeDcs::new(cluster(Some("a"), &[("a", Role::Primary, 1)]));
        let shutdown = CancellationToken::new();
        let mut rx = spawn_dcs_feed(dcs.clone(), shutdown.clone());
        assert_eq!(leader_of(&rx), None, "empty until the first load");
        rx.changed().await.unwrap();
        assert_eq!(leader_of(&rx), Some("a".into()));
        let clock = rx.borrow().dcs_clock.clone();
        assert!(clock.last_read().is_some());

        // A switchover, announced by a watch event.
        dcs.set(Ok(cluster(
            Some("b"),
            &[("a", Role::Replica, 1), ("b", Role::Primary, 2)],
        )));
        dcs.notify();
        rx.changed().await.unwrap();
        assert_eq!(leader_of(&rx), Some("b".into()));
        assert_eq!(rx.borrow().replicas.len(), 1);

        // The DCS fails: reloads go on (backoff) but nothing is published.
        dcs.set(Err("connection refused".into()));
        dcs.notify();
        let before = dcs.loads.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(
            dcs.loads.load(Ordering::SeqCst) > before + 3,
            "retries with backoff"
        );
        assert!(!rx.has_changed().unwrap());
        assert_eq!(leader_of(&rx), Some("b".into()));

        // Back, with a change and no event: the periodic reload finds it.
        dcs.set(Ok(cluster(None, &[("a", Role::Replica, 1)])));
        rx.changed().await.unwrap();
        assert_eq!(leader_of(&rx), None);
        assert!(rx.borrow().dcs_clock.last_read().is_some());

        // Unchanged reloads publish nothing.
        tokio::time::sleep(RESYNC_INTERVAL * 4).await;
        assert!(!rx.has_changed().unwrap());

        shutdown.cancel();
        assert!(
            rx.changed().await.is_err(),
            "the sender is dropped on shutdown"
        );
    }
}
