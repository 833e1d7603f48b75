//! The logical slot workload of a nemesis run (`PRAETOR_NEMESIS_SLOTS`): a [`Writer`] and a
//! [`Consumer`] of the permanent slot [`SLOT`] ([`crate::logical`]), both through the multi-host
//! read-write connection string over every member, and a poller recording when each replica's
//! copy of the slot is usable ([`copy_state`]), which the runner waits for before the first fault.
//! [`SlotWorkload::finish`] drains the consumer to the final leader's WAL end and hands back the
//! [`SlotHistory`] that [`super::slot_feed`] judges.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::history::{CandidateSample, SlotHistory, SlotRun};
use crate::logical::{
    copy_state, delivered, format_lsn, leader_dsn, Consumer, CopyState, Writer, CREATE_TABLE, TABLE,
};
use crate::wait_for;

/// The permanent slot's name in the cluster's dynamic configuration.
pub const SLOT: &str = "queue";

/// Rows the writer sends a second (one per transaction).
const WRITES_PER_SECOND: u32 = 50;

/// The latest copy state per member.
type States = Arc<Mutex<BTreeMap<String, CopyState>>>;

/// The running slot workload.
pub struct SlotWorkload {
    writer: Option<Writer>,
    consumer: Consumer,
    poll_stop: CancellationToken,
    poller: tokio::task::JoinHandle<()>,
    states: States,
    copies: Arc<Mutex<Vec<(String, Duration, bool)>>>,
    /// One task per member reading its `/patroni` each second ([`poll_candidates`]).
    candidate_pollers: Vec<tokio::task::JoinHandle<()>>,
    candidates: Arc<Mutex<Vec<CandidateSample>>>,
    t0: Instant,
    ready_at: Option<Duration>,
}

/// Creates the writer's table through `addr` (`ip:port`, the proxy's read-write port).
pub async fn create_table(addr: &str) -> Result<(), String> {
    let client = super::workload::connect(addr)
        .await
        .map_err(|e| super::workload::pg_error(&e))?;
    client
        .batch_execute(CREATE_TABLE)
        .await
        .map_err(|e| format!("creating {TABLE}: {}", super::workload::pg_error(&e)))
}

impl SlotWorkload {
    /// Starts the writer, the consumer (`bin/pg_recvlogical`, its files in `dir`) and the copy
    /// poller over `members` (`(name, ip:port)`), on PostgreSQL `major`, and a poller of each
    /// member's `/patroni` at `apis` (`(name, ip:port)` of its REST API); times from `t0`.
    pub fn start(
        members: &[(String, String)],
        apis: &[(String, String)],
        bin: PathBuf,
        major: u32,
        dir: PathBuf,
        t0: Instant,
    ) -> Result<SlotWorkload, String> {
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let addrs: Vec<String> = members.iter().map(|(_, a)| a.clone()).collect();
        let dsn = leader_dsn(&addrs);
        let writer = Writer::start(dsn.clone(), WRITES_PER_SECOND);
        let consumer = Consumer::start(bin, dsn, SLOT.into(), dir, t0);
        let states: States = Arc::default();
        let copies: Arc<Mutex<Vec<(String, Duration, bool)>>> = Arc::default();
        let poll_stop = CancellationToken::new();
        let poller = tokio::spawn(poll_copies(
            members.to_vec(),
            major,
            t0,
            states.clone(),
            copies.clone(),
            poll_stop.clone(),
        ));
        let candidates: Arc<Mutex<Vec<CandidateSample>>> = Arc::default();
        let candidate_pollers = apis
            .iter()
            .map(|(name, api)| {
                tokio::spawn(poll_candidates(
                    name.clone(),
                    api.clone(),
                    t0,
                    candidates.clone(),
                    poll_stop.clone(),
                ))
            })
            .collect();
        Ok(SlotWorkload {
            writer: Some(writer),
            consumer,
            poll_stop,
            poller,
            states,
            copies,
            candidate_pollers,
            candidates,
            t0,
            ready_at: None,
        })
    }

    /// Waits until every member but the primary holds a usable copy of the slot (the claim's
    /// precondition: a failover before that may lose the slot by design), for up to `timeout`.
    /// Errors: a replica still without one, with why, at the deadline.
    pub async fn wait_for_copies(
        &mut self,
        replicas: usize,
        timeout: Duration,
    ) -> Result<Duration, String> {
        let states = self.states.clone();
        wait_for(
            "a usable copy of the slot on every replica",
            timeout,
            || async {
                let states = states.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let usable = states.values().filter(|s| **s == CopyState::Usable).count();
                if usable >= replicas {
                    Ok(())
                } else {
                    Err(format!("{states:?}"))
                }
            },
        )
        .await?;
        let at = self.t0.elapsed();
        self.ready_at = Some(at);
        Ok(at)
    }

    /// Stops the writer (the first step of the run's end, with the other clients).
    pub async fn stop_writer(&mut self) -> usize {
        match self.writer.take() {
            Some(w) => w.stop().await.len(),
            None => 0,
        }
    }

    /// Reads the final table and WAL end from the leader at `leader` (`ip:port`), waits until
    /// the consumer confirmed that WAL end (for up to `timeout`), stops everything and returns
    /// the history; `acknowledged` is what [`Self::stop_writer`] returned.
    pub async fn finish(
        mut self,
        leader: Option<String>,
        acknowledged: usize,
        timeout: Duration,
    ) -> SlotHistory {
        if let Some(w) = self.writer.take() {
            w.stop().await;
        }
        let final_read = match &leader {
            None => Err("no leader".to_string()),
            Some(addr) => final_rows(addr).await,
        };
        let drained = match &final_read {
            Err(e) => Err(format!("the final table: {e}")),
            // Drained once it confirmed the WAL end, or delivered every row (its confirmations
            // may stop at the last commit it decoded, short of later WAL).
            Ok((rows, end)) => {
                wait_for(
                    "the consumer to confirm the final leader's WAL end",
                    timeout,
                    || async {
                        let confirmed = self.consumer.confirmed();
                        if confirmed.is_some_and(|c| c >= *end) {
                            return Ok(());
                        }
                        let got: std::collections::BTreeSet<i64> = self
                            .consumer
                            .runs()
                            .iter()
                            .flat_map(|r| delivered(&r.output))
                            .map(|(id, _)| id)
                            .collect();
                        let missing = rows.keys().filter(|id| !got.contains(id)).count();
                        if missing == 0 {
                            return Ok(());
                        }
                        Err(format!(
                            "confirmed {} of {}, {missing} rows not delivered",
                            confirmed.map_or("nothing".into(), format_lsn),
                            format_lsn(*end)
                        ))
                    },
                )
                .await
            }
        };
        let runs = self.consumer.stop().await;
        self.poll_stop.cancel();
        let _ = self.poller.await;
        for p in self.candidate_pollers {
            let _ = p.await;
        }
        let candidates = self
            .candidates
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let copies = self
            .copies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        SlotHistory {
            runs: runs
                .iter()
                .map(|r| SlotRun {
                    start: r.start,
                    startpos: r.startpos,
                    rows: delivered(&r.output),
                })
                .collect(),
            copies,
            copies_ready_at: self.ready_at,
            candidates,
            acknowledged,
            final_rows: final_read.ok().map(|(rows, _)| rows),
            drained,
        }
    }
}

/// Every `(id, lsn)` of the writer's table and `pg_current_wal_lsn()` on the leader at `addr`.
async fn final_rows(addr: &str) -> Result<(BTreeMap<i64, u64>, u64), String> {
    let client = super::workload::connect(addr)
        .await
        .map_err(|e| super::workload::pg_error(&e))?;
    let rows = client
        .query(
            &format!("SELECT id, (lsn - '0/0')::bigint FROM {TABLE}"),
            &[],
        )
        .await
        .map_err(|e| super::workload::pg_error(&e))?;
    let end: i64 = client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await
        .map_err(|e| super::workload::pg_error(&e))?
        .get(0);
    Ok((
        rows.iter()
            .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1) as u64))
            .collect(),
        end as u64,
    ))
}

/// Polls every member's copy of the slot each second until `stop`, keeping the latest state in
/// `states` and each replica's first answer and every change of usability in `copies`.
async fn poll_copies(
    members: Vec<(String, String)>,
    major: u32,
    t0: Instant,
    states: States,
    copies: Arc<Mutex<Vec<(String, Duration, bool)>>>,
    stop: CancellationToken,
) {
    let mut last: BTreeMap<String, bool> = BTreeMap::new();
    while !stop.is_cancelled() {
        for (name, addr) in &members {
            let Ok(state) = copy_state(addr, major, SLOT).await else {
                // Unreachable (killed, frozen, cut off): its copy is what it was.
                states
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(name);
                continue;
            };
            if state != CopyState::Primary {
                let usable = state == CopyState::Usable;
                if last.insert(name.clone(), usable) != Some(usable) {
                    copies.lock().unwrap_or_else(|p| p.into_inner()).push((
                        name.clone(),
                        t0.elapsed(),
                        usable,
                    ));
                }
            }
            states
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(name.clone(), state);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => {}
        }
    }
}

/// Reads `member`'s `/patroni` at `api` (`ip:port`) each second until `stop`, recording each
/// answer that names a timeline in `samples` (what the leader race weighs: the checker's
/// [`super::slot_feed::passed_over_holder`]). One task per member, so that a silent member
/// (its answer timing out) delays only its own samples.
async fn poll_candidates(
    member: String,
    api: String,
    t0: Instant,
    samples: Arc<Mutex<Vec<CandidateSample>>>,
    stop: CancellationToken,
) {
    while !stop.is_cancelled() {
        let answer = tokio::select! {
            a = crate::http_get(&api, "/patroni") => a,
            _ = stop.cancelled() => break,
        };
        let sample = answer
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .and_then(|v| CandidateSample::from_patroni(&member, t0.elapsed(), &v));
        if let Some(s) = sample {
            samples.lock().unwrap_or_else(|p| p.into_inner()).push(s);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.cancelled() => {}
        }
    }
}
