//! A consumer of a logical replication slot and the writer it is checked against, shared by
//! `tests/logical_slots.rs` and the nemesis' slot workload ([`crate::nemesis::runner`] with
//! `PRAETOR_NEMESIS_SLOTS=1`).
//!
//! - [`Writer`]: inserts `(id, pg_current_wal_insert_lsn())` rows into [`TABLE`], one row per
//!   transaction, through a multi-host connection that follows the leader ([`leader_dsn`]).
//!   `pg_current_wal_insert_lsn()` is taken inside the row's own transaction, so it lies below
//!   the row's commit record, and (one writer, each transaction sent once the previous one was
//!   answered) at or after the previous row's commit record.
//! - [`Consumer`]: `pg_recvlogical` on the slot through the same connection string, started
//!   again after each disconnection from the position it confirmed last (`--startpos`, read from
//!   `pg_recvlogical -v`'s "confirming ... flush to" lines), as a consumer that tracks its
//!   position does; each run ([`Run`]) is kept with its output file.
//! - [`delivered`], [`last_flush`], [`parse_lsn`]: reading what `pg_recvlogical` wrote.
//! - [`copy_state`]: whether a member holds a usable copy of the slot (what a failover to it
//!   needs).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cluster::{SUPERUSER, SUPERUSER_PASSWORD};

/// The table the [`Writer`] fills: `id bigint PRIMARY KEY, lsn pg_lsn NOT NULL`.
pub const TABLE: &str = "slot_feed";

/// The statement that creates [`TABLE`] (idempotent).
pub const CREATE_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS slot_feed (id bigint PRIMARY KEY, lsn pg_lsn NOT NULL)";

/// The `bootstrap.dcs` lines of a permanent logical slot `slot` on database `postgres` with the
/// `test_decoding` plugin (Patroni's `slots:` key).
pub fn permanent_slot_lines(slot: &str) -> Vec<String> {
    vec![
        "slots:".into(),
        format!("  {slot}:"),
        "    type: logical".into(),
        "    database: postgres".into(),
        "    plugin: test_decoding".into(),
    ]
}

pub use praetor_protocol::lsn::{format_lsn, parse_lsn};

/// The multi-host libpq string that reaches whichever of `addrs` (`ip:port`) accepts writes
/// (`target_session_attrs=read-write`), as the superuser on database `postgres`.
pub fn leader_dsn(addrs: &[String]) -> String {
    let (hosts, ports): (Vec<&str>, Vec<&str>) = addrs
        .iter()
        .map(|a| a.rsplit_once(':').unwrap_or((a.as_str(), "5432")))
        .unzip();
    format!(
        "host={} port={} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres \
         target_session_attrs=read-write connect_timeout=3",
        hosts.join(","),
        ports.join(",")
    )
}

/// Inserts rows into [`TABLE`], one per transaction, reconnecting to the leader after each
/// failure; records the ids acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<i64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Starts writing through `dsn` ([`leader_dsn`]) about `per_second` rows a second; ids count
    /// from 1.
    pub fn start(dsn: String, per_second: u32) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let (s, a) = (stop.clone(), acked.clone());
        let pause = Duration::from_millis(1000 / u64::from(per_second.max(1)));
        let task = tokio::spawn(async move {
            let mut id = 0i64;
            let sql =
                format!("INSERT INTO {TABLE} (id, lsn) VALUES ($1, pg_current_wal_insert_lsn())");
            while !s.load(Ordering::SeqCst) {
                let client = match tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await {
                    Ok((client, conn)) => {
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        client
                    }
                    Err(_) => {
                        // Retry pace while no member accepts writes.
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                while !s.load(Ordering::SeqCst) {
                    id += 1;
                    let answer =
                        tokio::time::timeout(Duration::from_secs(5), client.execute(&sql, &[&id]))
                            .await;
                    match answer {
                        Ok(Ok(_)) => a.lock().unwrap_or_else(|p| p.into_inner()).push(id),
                        _ => break,
                    }
                    tokio::time::sleep(pause).await;
                }
            }
        });
        Writer { stop, acked, task }
    }

    /// Stops writing; returns the ids acknowledged.
    pub async fn stop(self) -> Vec<i64> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let v = self.acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v
    }
}

/// One `pg_recvlogical` run.
#[derive(Debug, Clone)]
pub struct Run {
    /// When it started, from the consumer's `t0`.
    pub start: Duration,
    /// The position it was started from (`--startpos`), `None` for the first (the slot's own).
    pub startpos: Option<u64>,
    /// Its output (`-f`).
    pub output: PathBuf,
    /// Its stderr (`-v`: the positions it confirmed).
    pub errors: PathBuf,
}

/// The last "flush to X" that `pg_recvlogical -v` logged: the position it confirmed.
pub fn last_flush(stderr: &str) -> Option<u64> {
    stderr
        .lines()
        .filter_map(|l| l.split("flush to ").nth(1))
        .filter_map(|rest| parse_lsn(rest.split_whitespace().next()?))
        .max()
}

/// Runs `pg_recvlogical` on a slot through the leader, again after every disconnection, from the
/// last position it confirmed.
pub struct Consumer {
    stop: Arc<AtomicBool>,
    runs: Arc<Mutex<Vec<Run>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Consumer {
    /// Starts `bin/pg_recvlogical` on `slot` through `dsn` ([`leader_dsn`]), writing each run's
    /// output and stderr into `dir`; run times are from `t0`.
    pub fn start(bin: PathBuf, dsn: String, slot: String, dir: PathBuf, t0: Instant) -> Consumer {
        let stop = Arc::new(AtomicBool::new(false));
        let runs = Arc::new(Mutex::new(Vec::new()));
        let (s, r) = (stop.clone(), runs.clone());
        let task = tokio::spawn(async move {
            let mut startpos: Option<u64> = None;
            let mut k = 0;
            while !s.load(Ordering::SeqCst) {
                k += 1;
                let output = dir.join(format!("out-{k}.txt"));
                let errors = dir.join(format!("err-{k}.txt"));
                let Ok(errfile) = std::fs::File::create(&errors) else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                let mut cmd = tokio::process::Command::new(bin.join("pg_recvlogical"));
                cmd.args(["-d", &dsn, "--slot", &slot, "--start", "--no-loop", "-v"])
                    .args(["--fsync-interval", "1", "--status-interval", "1", "-f"])
                    .arg(&output)
                    .stdout(std::process::Stdio::null())
                    .stderr(errfile)
                    .kill_on_drop(true);
                if let Some(p) = startpos {
                    cmd.arg("--startpos").arg(format_lsn(p));
                }
                r.lock().unwrap_or_else(|p| p.into_inner()).push(Run {
                    start: t0.elapsed(),
                    startpos,
                    output: output.clone(),
                    errors: errors.clone(),
                });
                let Ok(mut child) = cmd.spawn() else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                loop {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    if s.load(Ordering::SeqCst) {
                        // SIGINT: pg_recvlogical flushes, confirms and exits.
                        if let Some(pid) = child.id() {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid as i32),
                                nix::sys::signal::Signal::SIGINT,
                            );
                        }
                        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let err = std::fs::read_to_string(&errors).unwrap_or_default();
                if let Some(p) = last_flush(&err) {
                    startpos = Some(startpos.map_or(p, |s| s.max(p)));
                }
                // Retry pace while the slot is unreachable (no leader yet).
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        Consumer { stop, runs, task }
    }

    /// The runs so far (the last one may still run).
    pub fn runs(&self) -> Vec<Run> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The highest position any run confirmed so far.
    pub fn confirmed(&self) -> Option<u64> {
        self.runs()
            .iter()
            .filter_map(|r| last_flush(&std::fs::read_to_string(&r.errors).ok()?))
            .max()
    }

    /// Stops the consumer (the running `pg_recvlogical` confirms what it wrote and exits);
    /// returns every run.
    pub async fn stop(self) -> Vec<Run> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let v = self.runs.lock().unwrap_or_else(|p| p.into_inner()).clone();
        v
    }
}

/// The [`TABLE`] rows a run's output holds, in order: `(id, the row's lsn column)`, from
/// `test_decoding`'s `table public.slot_feed: INSERT: id[bigint]:N lsn[pg_lsn]:X/Y` lines.
pub fn delivered(path: &Path) -> Vec<(i64, u64)> {
    parse_delivered(&std::fs::read_to_string(path).unwrap_or_default())
}

/// [`delivered`] on the output's text.
pub fn parse_delivered(text: &str) -> Vec<(i64, u64)> {
    let prefix = format!("table public.{TABLE}: INSERT: ");
    text.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .filter_map(|rest| {
            let mut id = None;
            let mut lsn = None;
            for f in rest.split(' ') {
                if let Some(v) = f.strip_prefix("id[bigint]:") {
                    id = v.parse().ok();
                } else if let Some(v) = f.strip_prefix("lsn[pg_lsn]:") {
                    lsn = parse_lsn(v.trim_matches('\''));
                }
            }
            Some((id?, lsn?))
        })
        .collect()
}

/// Whether a member holds a copy of a slot a failover to it would keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyState {
    /// The member is the primary (its slot is the original).
    Primary,
    /// A usable copy: PostgreSQL 17+, a synchronized slot (`synced`) that is not `temporary`;
    /// before 17, a persistent copy with a confirmed position and `hot_standby_feedback` on
    /// (Patroni's copy-and-advance, `ha::slots`).
    Usable,
    /// No usable copy, and why.
    Missing(String),
}

/// The state of `slot`'s copy on the PostgreSQL at `addr` (`ip:port`, major `major`), from
/// `pg_replication_slots`. Errors: the member cannot be reached or queried.
pub async fn copy_state(addr: &str, major: u32, slot: &str) -> Result<CopyState, String> {
    let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "5432"));
    let dsn = format!(
        "host={host} port={port} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=2"
    );
    let query = async {
        let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        if !recovery {
            return Ok(CopyState::Primary);
        }
        let synced = if major >= 17 { "synced" } else { "true" };
        let row = client
            .query_opt(
                &format!(
                    "SELECT {synced}, temporary, confirmed_flush_lsn IS NOT NULL, \
                     current_setting('hot_standby_feedback') FROM pg_replication_slots \
                     WHERE slot_name = $1 AND slot_type = 'logical'"
                ),
                &[&slot],
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(match row {
            None => CopyState::Missing("no copy".into()),
            Some(r) => {
                let (synced, temporary, confirmed, feedback): (bool, bool, bool, String) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                if !synced {
                    CopyState::Missing("not synchronized".into())
                } else if temporary {
                    CopyState::Missing("temporary".into())
                } else if !confirmed {
                    CopyState::Missing("no confirmed position".into())
                } else if feedback != "on" {
                    CopyState::Missing(format!("hot_standby_feedback = {feedback}"))
                } else {
                    CopyState::Usable
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(5), query)
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_recvlogical_lines() {
        let err = "pg_recvlogical: confirming write up to 0/1, flush to 0/1 (slot queue)\n\
                   pg_recvlogical: confirming write up to 0/3000060, flush to 0/3000040 (slot queue)\n";
        assert_eq!(last_flush(err), Some(0x3000040));
        assert_eq!(last_flush("pg_recvlogical: starting log streaming\n"), None);
    }

    #[test]
    fn test_decoding_inserts_parse_into_ids_and_lsns() {
        let out = "BEGIN 750\n\
                   table public.slot_feed: INSERT: id[bigint]:7 lsn[pg_lsn]:'0/3000A8'\n\
                   COMMIT 750\n\
                   table public.other: INSERT: id[bigint]:8 lsn[pg_lsn]:'0/3000B0'\n";
        assert_eq!(parse_delivered(out), vec![(7, 0x3000A8)]);
    }

    #[test]
    fn the_leader_dsn_lists_every_member() {
        let dsn = leader_dsn(&["10.0.0.1:5432".into(), "10.0.0.2:5433".into()]);
        assert!(
            dsn.starts_with("host=10.0.0.1,10.0.0.2 port=5432,5433 "),
            "{dsn}"
        );
        assert!(dsn.contains("target_session_attrs=read-write"));
    }
}
