//! A client writing one row per transaction and recording what was acknowledged, for the tests
//! that count lost writes and measure write gaps across a failover, switchover or migration.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{connect, connect_retry, wait_for};

/// Writes `INSERT INTO w VALUES (id)` with increasing ids through the PostgreSQL or proxy port it
/// was started on, one transaction each, reconnecting after every error; records each acknowledged
/// id and the instant its acknowledgement arrived.
pub struct Writer {
    acked: Arc<Mutex<Vec<(i32, Instant)>>>,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Creates table `w (id int PRIMARY KEY)` through `port` (retrying the connection up to 30 s)
    /// and starts writing. Panics when the table cannot be created.
    pub async fn start(port: u16) -> Writer {
        let setup = connect_retry(port, Duration::from_secs(30)).await;
        setup
            .batch_execute("CREATE TABLE w (id int PRIMARY KEY)")
            .await
            .unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let task = {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut id = 0;
                let mut client = None;
                while !stop.is_cancelled() {
                    if client.is_none() {
                        client = connect(port).await.ok();
                        if client.is_none() {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                    if let Some(cl) = &client {
                        id += 1;
                        match cl.execute("INSERT INTO w VALUES ($1)", &[&id]).await {
                            Ok(_) => acked.lock().unwrap().push((id, Instant::now())),
                            Err(_) => client = None,
                        }
                    }
                }
            })
        };
        Writer { acked, stop, task }
    }

    /// How many writes were acknowledged so far.
    pub fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits (up to 90 s, then panics) until more than `n` writes in all are acknowledged.
    pub async fn wait_more_than(&self, n: usize) {
        wait_for("acknowledged writes", Duration::from_secs(90), || async {
            let got = self.count();
            if got > n {
                Ok(())
            } else {
                Err(format!("{got} of more than {n}"))
            }
        })
        .await
        .unwrap();
    }

    /// Waits (up to 90 s, then panics) until `n` more writes than now are acknowledged.
    pub async fn more(&self, n: usize) {
        self.wait_more_than((self.count() + n).saturating_sub(1))
            .await
    }

    /// The longest gap between two consecutive acknowledgements after `since` (counting from
    /// `since` itself): the write outage of an event at `since`.
    pub fn longest_gap_after(&self, since: Instant) -> Duration {
        let acked = self.acked.lock().unwrap();
        let mut last = since;
        let mut gap = Duration::ZERO;
        for (_, at) in acked.iter().filter(|(_, at)| *at >= since) {
            gap = gap.max(at.duration_since(last));
            last = *at;
        }
        gap
    }

    /// The longest gap between two consecutive acknowledgements over the whole run.
    pub fn longest_gap(&self) -> Duration {
        let acked = self.acked.lock().unwrap();
        acked
            .windows(2)
            .map(|w| w[1].1.duration_since(w[0].1))
            .max()
            .unwrap_or_default()
    }

    /// Stops writing (the statement in flight ends first) and returns every acknowledged id.
    pub async fn stop(self) -> Vec<i32> {
        self.stop.cancel();
        self.task.await.unwrap();
        let acked = self.acked.lock().unwrap();
        acked.iter().map(|(id, _)| *id).collect()
    }
}

/// The acknowledged ids of `acked` missing from table `w` on the PostgreSQL at `port` (connecting
/// for up to 30 s), in acknowledgement order: the writes a failover lost.
pub async fn lost_writes(port: u16, acked: &[i32]) -> Vec<i32> {
    let client = connect_retry(port, Duration::from_secs(30)).await;
    let stored: std::collections::HashSet<i32> = client
        .query("SELECT id FROM w", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    acked
        .iter()
        .copied()
        .filter(|id| !stored.contains(id))
        .collect()
}
