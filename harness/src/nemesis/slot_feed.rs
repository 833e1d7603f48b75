//! Judges the logical slot workload of a run ([`SlotHistory`]): the promise of `docs/claims.md`
//! row 13, that a permanent logical slot survives failover, read as what its consumer sees.
//!
//! Rules, each a [`ViolationKind::SlotFeed`] when broken:
//! - **drained**: the consumer confirmed the final leader's WAL end, or delivered every row of
//!   its table, before it was stopped, and the final table was read.
//! - **nothing lost**: every row of the final leader's table was delivered by some run.
//! - **nothing confirmed delivered again**: a row delivered again by a run that started from a
//!   position at or past the next row's `lsn` (the writer's next row, by id, in the final table).
//!   The next row's `lsn` was taken after this row's commit record was flushed (one writer, one
//!   row per transaction, each sent after the previous one's answer), so that position is past
//!   this row's commit, and the server skips a transaction whose commit lies before the start
//!   position. A repeat from an earlier position is allowed (at-least-once) and counted.
//! - **delivered rows survive**: a row delivered but missing from the final table (a change
//!   decoded on a leader that failed over before its replicas had it) is allowed, and counted
//!   apart, only when a fault that may fail over without the leader's last commits
//!   ([`may_lose_async_commits`]) had not settled by the start of the run that delivered it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use super::checker::{may_lose_async_commits, settled_at, Violation, ViolationKind};
use super::history::{History, SlotHistory};

/// What the slot workload of one run amounted to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotTally {
    /// Rows in the final leader's table.
    pub final_rows: usize,
    /// Distinct rows delivered.
    pub delivered: usize,
    /// Consumer runs (one per connection).
    pub runs: usize,
    /// Deliveries of a row already delivered, from a position before its commit (allowed).
    pub repeated: usize,
    /// Rows delivered but missing from the final table where a fault may have lost them
    /// (allowed).
    pub delivered_lost_allowed: usize,
    /// When every replica held a usable copy (from the run's start), if that happened.
    pub copies_usable_at: Option<std::time::Duration>,
}

/// Checks `history`'s slot workload, if it had one; returns the violations and the figures.
pub fn check_slot(history: &History) -> Option<(Vec<Violation>, SlotTally)> {
    let slot = history.slot.as_ref()?;
    Some(judge(history, slot))
}

fn judge(history: &History, slot: &SlotHistory) -> (Vec<Violation>, SlotTally) {
    let mut out = Vec::new();
    let mut tally = SlotTally {
        runs: slot.runs.len(),
        copies_usable_at: slot.copies_ready_at,
        ..SlotTally::default()
    };
    let violation = |at, detail: String| Violation {
        kind: ViolationKind::SlotFeed,
        at,
        detail,
    };
    if let Err(e) = &slot.drained {
        out.push(violation(
            history.end,
            format!("the consumer did not drain: {e}"),
        ));
    }
    let Some(fin) = &slot.final_rows else {
        out.push(violation(
            history.end,
            "the final table could not be read".into(),
        ));
        return (out, tally);
    };
    tally.final_rows = fin.len();
    let settled = settled_at(history);
    let mut seen: BTreeSet<i64> = BTreeSet::new();
    // Per delivered row missing from the final table: the start of the first run delivering it.
    let mut missing: BTreeMap<i64, std::time::Duration> = BTreeMap::new();
    for (k, run) in slot.runs.iter().enumerate() {
        let start = run.startpos.unwrap_or(0);
        for &(id, lsn) in &run.rows {
            if !seen.insert(id) {
                let next = fin
                    .range((Bound::Excluded(id), Bound::Unbounded))
                    .next()
                    .map(|(_, l)| *l);
                match next {
                    Some(next) if next <= start => out.push(violation(
                        run.start,
                        format!(
                            "row {id} (lsn {}) delivered again by run {} started from {}, \
                             past its commit (the next row's lsn is {})",
                            crate::logical::format_lsn(lsn),
                            k + 1,
                            crate::logical::format_lsn(start),
                            crate::logical::format_lsn(next)
                        ),
                    )),
                    _ => tally.repeated += 1,
                }
            }
            if !fin.contains_key(&id) {
                missing.entry(id).or_insert(run.start);
            }
        }
    }
    tally.delivered = seen.len();
    let lost: Vec<i64> = fin
        .keys()
        .filter(|id| !seen.contains(id))
        .copied()
        .collect();
    if !lost.is_empty() {
        out.push(violation(
            history.end,
            format!(
                "{} of {} rows of the final table never delivered (first: {})",
                lost.len(),
                fin.len(),
                lost.iter()
                    .take(10)
                    .map(|id| format!("{id} at {}", crate::logical::format_lsn(fin[id])))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    for (id, at) in missing {
        let explained = history
            .faults
            .iter()
            .zip(&settled)
            .any(|(f, s)| may_lose_async_commits(f) && *s > at);
        if explained {
            tally.delivered_lost_allowed += 1;
        } else {
            out.push(violation(
                at,
                format!("row {id} delivered but not in the final table, and no fault explains it"),
            ));
        }
    }
    (out, tally)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::nemesis::fault::FaultKind;
    use crate::nemesis::history::{Convergence, FaultRecord, Mode, SlotRun};

    fn s(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Rows 1..=n at lsn 100 * id.
    fn rows(ids: std::ops::RangeInclusive<i64>) -> Vec<(i64, u64)> {
        ids.map(|i| (i, 100 * i as u64)).collect()
    }

    fn history(runs: Vec<SlotRun>, fin: Vec<(i64, u64)>, faults: Vec<FaultRecord>) -> History {
        History {
            mode: Mode::Async,
            ttl_secs: 6,
            loop_wait_secs: 1,
            retry_timeout_secs: 2,
            ops: vec![],
            convergence: faults
                .iter()
                .map(|_| Convergence::Converged { after: s(5) })
                .collect(),
            faults,
            final_state: None,
            final_read_failures: vec![],
            end: s(100),
            read_your_writes: true,
            slot: Some(SlotHistory {
                runs,
                copies: vec![
                    ("pg2".into(), s(1), false),
                    ("pg2".into(), s(20), true),
                    ("pg3".into(), s(25), true),
                ],
                copies_ready_at: Some(s(25)),
                acknowledged: fin.len(),
                final_rows: Some(fin.into_iter().collect()),
                drained: Ok(()),
            }),
        }
    }

    fn run(start: u64, startpos: Option<u64>, rows: Vec<(i64, u64)>) -> SlotRun {
        SlotRun {
            start: s(start),
            startpos,
            rows,
        }
    }

    fn kill(start: u64) -> FaultRecord {
        FaultRecord {
            kind: FaultKind::Kill,
            target: "pg1".into(),
            start: s(start),
            heal: s(start + 10),
            on_leader: true,
            replica_with_leader: false,
            dcs_available_at: None,
        }
    }

    fn kinds(h: &History) -> (Vec<ViolationKind>, SlotTally) {
        let (v, t) = check_slot(h).expect("a slot history");
        (v.iter().map(|v| v.kind).collect(), t)
    }

    #[test]
    fn a_feed_resumed_from_its_confirmed_position_with_repeats_after_it_passes() {
        // Run 2 starts from 450 (confirmed inside row 4's transaction: row 5's lsn is 500) and
        // repeats row 4: allowed.
        let h = history(
            vec![run(0, None, rows(1..=4)), run(30, Some(450), rows(4..=8))],
            rows(1..=8),
            vec![kill(25)],
        );
        let (v, t) = kinds(&h);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((t.delivered, t.repeated, t.runs), (8, 1, 2));
        assert_eq!(t.copies_usable_at, Some(s(25)));
    }

    #[test]
    fn a_row_redelivered_from_a_position_past_its_commit_is_a_violation() {
        let h = history(
            vec![run(0, None, rows(1..=4)), run(30, Some(500), rows(3..=8))],
            rows(1..=8),
            vec![kill(25)],
        );
        let (v, t) = kinds(&h);
        // Row 3 (row 4 at 400 <= 500) and row 4 (row 5 at 500 <= 500).
        assert_eq!(v, vec![ViolationKind::SlotFeed; 2]);
        assert_eq!(t.repeated, 0);
    }

    #[test]
    fn a_row_of_the_final_table_never_delivered_is_a_violation() {
        let h = history(
            vec![run(0, None, rows(1..=4)), run(30, Some(600), rows(6..=8))],
            rows(1..=8),
            vec![kill(25)],
        );
        let (v, _) = kinds(&h);
        assert_eq!(v, vec![ViolationKind::SlotFeed]);
        let (v, _) = check_slot(&h).unwrap();
        assert!(v[0].detail.contains("1 of 8"), "{}", v[0].detail);
    }

    #[test]
    fn a_delivered_row_lost_in_a_failover_is_allowed_only_where_a_fault_may_lose_commits() {
        let runs = || vec![run(0, None, rows(1..=5)), run(30, Some(450), rows(6..=8))];
        let fin: Vec<(i64, u64)> = rows(1..=4).into_iter().chain(rows(6..=8)).collect();
        let (v, t) = kinds(&history(runs(), fin.clone(), vec![kill(25)]));
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(t.delivered_lost_allowed, 1);
        // A replica's kill hands over nothing: no failover may lose the row.
        let mut replica = kill(25);
        replica.on_leader = false;
        let (v, _) = kinds(&history(runs(), fin, vec![replica]));
        assert_eq!(v, vec![ViolationKind::SlotFeed]);
    }

    #[test]
    fn a_consumer_that_did_not_drain_is_a_violation_and_hides_nothing_else() {
        let mut h = history(vec![run(0, None, rows(1..=8))], rows(1..=8), vec![]);
        h.slot.as_mut().unwrap().drained = Err("confirmed 0/400 of 0/900".into());
        let (v, _) = kinds(&h);
        assert_eq!(v, vec![ViolationKind::SlotFeed]);
        // Not drained and rows missing: both show.
        h.slot.as_mut().unwrap().runs = vec![run(0, None, rows(1..=4))];
        let (v, _) = kinds(&h);
        assert_eq!(v, vec![ViolationKind::SlotFeed; 2]);
        h.slot.as_mut().unwrap().final_rows = None;
        let (v, _) = kinds(&h);
        assert_eq!(v, vec![ViolationKind::SlotFeed; 2]);
    }
}
