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
//! - **lost with the slot**: a row of the final table never delivered is allowed, and counted
//!   apart, when the slot it was due from was made anew by a leader that held no usable copy
//!   when it was promoted ([`lost_with_the_slot`]): the claim's precondition (a usable copy on
//!   the member promoted) did not hold, so no agent could have kept the slot. Unless the
//!   election passed over a member that held one ([`passed_over_holder`]: as far ahead on WAL,
//!   as eligible, and saying so in `logical_slot_copies`, where the winner said it held none):
//!   then the race's tie-breaker should have chosen the holder, and the loss is a violation.
//! - **skipped past lost commits**: a row of the final table never delivered is allowed, and
//!   counted apart, when the consumer was asked to start past it after it had been sent rows a
//!   failover then discarded, at or past the row's position ([`skipped_past_lost_commits`]):
//!   the position it confirmed lay on the lost timeline, and the new timeline wrote this row
//!   below it, where the server skips every commit. PostgreSQL 17+'s
//!   `synchronized_standby_slots` keeps a consumer from getting ahead of the failover
//!   candidates; before it (and for replicas not listed there) nothing does.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::time::Duration;

use super::checker::{may_lose_async_commits, settled_at, Violation, ViolationKind};
use super::history::{CandidateSample, History, Mode, SlotHistory};

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
    /// Rows of the final table never delivered because the leader promoted while they were due
    /// held no usable copy of the slot, which was made anew past them (allowed:
    /// [`lost_with_the_slot`]).
    pub lost_with_slot: usize,
    /// Rows of the final table never delivered because the consumer restarted past them from a
    /// position it confirmed on a timeline a failover discarded (allowed:
    /// [`skipped_past_lost_commits`]).
    pub skipped_past_lost: usize,
    /// When every replica held a usable copy (from the run's start), if that happened.
    pub copies_usable_at: Option<Duration>,
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
    // Per delivered row missing from the final table: the start of the first run delivering it,
    // that run's index and the row's lsn.
    let mut missing: BTreeMap<i64, (Duration, usize, u64)> = BTreeMap::new();
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
                missing.entry(id).or_insert((run.start, k, lsn));
            }
        }
    }
    tally.delivered = seen.len();
    // Rows delivered then lost that a fault explains: `(lsn, index of the run that sent it)`.
    let mut discarded: Vec<(u64, usize)> = Vec::new();
    for (id, (at, k, lsn)) in missing {
        let explained = history
            .faults
            .iter()
            .zip(&settled)
            .any(|(f, s)| may_lose_async_commits(f) && *s > at);
        if explained {
            tally.delivered_lost_allowed += 1;
            discarded.push((lsn, k));
        } else {
            out.push(violation(
                at,
                format!("row {id} delivered but not in the final table, and no fault explains it"),
            ));
        }
    }
    let promotions = promotions(history);
    let mut lost = Vec::new();
    // Per promotion that passed over a copy holder: why, and the rows lost with the slot there.
    let mut passed: BTreeMap<u32, (Duration, String, usize)> = BTreeMap::new();
    for id in fin.keys().filter(|id| !seen.contains(*id)) {
        if let Some(p) = lost_with_the_slot(slot, &promotions, history.end, fin[id]) {
            match passed_over_holder(slot, p, history.mode, &history.faults) {
                Some(why) => passed.entry(p.timeline).or_insert((p.seen_at, why, 0)).2 += 1,
                None => tally.lost_with_slot += 1,
            }
        } else if skipped_past_lost_commits(slot, &discarded, fin[id]).is_some() {
            tally.skipped_past_lost += 1;
        } else {
            lost.push(*id);
        }
    }
    for (timeline, (at, why, rows)) in passed {
        out.push(violation(
            at,
            format!(
                "{rows} rows lost with the slot at the promotion to timeline {timeline}: elected a \
                 member without the slot while a copy holder was as far ahead ({why})"
            ),
        ));
    }
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
    (out, tally)
}

/// A promotion seen in the history: the member that acknowledged the first write on a timeline
/// past the first, and when (the end of that write: the promotion came before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    /// The new leader.
    pub member: String,
    /// The new timeline.
    pub timeline: u32,
    /// When its first write was acknowledged, from the run's start.
    pub seen_at: Duration,
}

/// Every promotion the history's acknowledged writes show, in time order: per timeline above 1
/// (1 is the bootstrap leader's), the member and end of its earliest acknowledged write.
pub fn promotions(history: &History) -> Vec<Promotion> {
    let mut first: BTreeMap<u32, (Duration, &str)> = BTreeMap::new();
    for op in &history.ops {
        let Some((server, timeline)) = op.acked_on() else {
            continue;
        };
        if timeline <= 1 {
            continue;
        }
        let e = first.entry(timeline).or_insert((op.end, server));
        if op.end < e.0 {
            *e = (op.end, server);
        }
    }
    let mut out: Vec<Promotion> = first
        .into_iter()
        .map(|(timeline, (seen_at, member))| Promotion {
            member: member.to_string(),
            timeline,
            seen_at,
        })
        .collect();
    out.sort_by_key(|p| p.seen_at);
    out
}

/// Whether `member` held a usable copy of the slot at `at`, from `copies` (the last entry for it
/// before `at`; none at all: no usable copy).
pub fn usable_copy_at(copies: &[(String, Duration, bool)], member: &str, at: Duration) -> bool {
    copies
        .iter()
        .filter(|(m, t, _)| m == member && *t < at)
        .max_by_key(|(_, t, _)| *t)
        .is_some_and(|(_, _, usable)| *usable)
}

/// The promotion that lost the row at `lsn` (never delivered) with the slot, if one did: the
/// consumer's last run started from a position before the row (run `k`) delivered, as its
/// first row (or the first of the runs after it, if it delivered none), one past it (the slot
/// it read started past the row: made anew), and a member without a usable copy
/// ([`usable_copy_at`]) was promoted after the run that confirmed run `k`'s start position
/// started (the last run before `k` with another start position: runs between with the same
/// start delivered nothing) and before run `k + 1` started (or `end`). A run `k` whose first row lies before the row read a slot that held it: the row
/// committed after that slot's start, and its loss stays a violation; so does a row whose
/// window holds only promotions of members with usable copies (the agent should have kept the
/// slot).
pub fn lost_with_the_slot<'a>(
    slot: &SlotHistory,
    promotions: &'a [Promotion],
    end: Duration,
    lsn: u64,
) -> Option<&'a Promotion> {
    let k = slot
        .runs
        .iter()
        .rposition(|r| r.startpos.unwrap_or(0) < lsn)?;
    // Later runs start past the row (run `k` confirmed past it), so the first row from run `k`
    // on is where the slot it read started.
    let first = slot.runs[k..].iter().find_map(|r| r.rows.first())?;
    if first.1 <= lsn {
        return None;
    }
    // The run that confirmed run `k`'s start position: the last before it that started
    // elsewhere. Runs between them with the same start delivered nothing (they failed to
    // connect, or found no slot on a new leader): a promotion during them is in the window
    // (nemesis etcd strict PG 18 seed 1, slotjudge2: four runs failed while pg1 was promoted).
    let pos = slot.runs[k].startpos;
    let after = slot.runs[..k]
        .iter()
        .rposition(|r| r.startpos != pos)
        .map_or(Duration::ZERO, |j| slot.runs[j].start);
    let before = slot.runs.get(k + 1).map_or(end, |r| r.start);
    promotions.iter().find(|p| {
        p.seen_at > after
            && p.seen_at <= before
            && !usable_copy_at(&slot.copies, &p.member, p.seen_at)
    })
}

/// How long before the winner's last answer on its old timeline a candidate's answer still
/// counts as its state at the promotion: one poll round (each member is read about once a
/// second) and a second of slack for a slow answer.
pub const SAME_ROUND: Duration = Duration::from_secs(2);

/// Why promotion `p` broke the leader race's slot tie-breaker, if it did
/// (`agent/src/ha/election.rs`, `ranks_first_on_tie`: at equal timeline, WAL and
/// `failover_priority`, a member publishing `logical_slot_copies: true` ranks before one
/// publishing `false`): from `slot.candidates`, the winner's last answer before `p.seen_at` on a
/// timeline before `p.timeline` (its state when it was elected) said `logical_slot_copies: false`,
/// and another member's last answer before `p.seen_at`, no more than [`SAME_ROUND`] older,
/// showed it a replica on the same timeline, at the winner's WAL position or past it, with a
/// `failover_priority` above 0 and not below the winner's, listed in the `sync` key when `mode`
/// is synchronous (only the synchronous standby may be promoted), and `logical_slot_copies:
/// true`. Such a member could have been elected and should have been preferred.
///
/// Conservative, so that a violation is certain: no answer from the winner (or one without the
/// field: a Patroni member, which the tie-breaker neither prefers nor passes over) judges
/// nothing; a candidate named in the target of a fault that held between the winner's last
/// answer and `p.seen_at` is left out (silenced, partitioned, frozen or killed: the winner's
/// race may not have seen it, and a partition's target names both sides, so any partition
/// then spares the election). Returns the holder and both positions, for the violation's text.
pub fn passed_over_holder(
    slot: &SlotHistory,
    p: &Promotion,
    mode: Mode,
    faults: &[super::history::FaultRecord],
) -> Option<String> {
    let last = |member: &str, pred: &dyn Fn(&CandidateSample) -> bool| {
        slot.candidates
            .iter()
            .filter(|c| c.member == member && c.at < p.seen_at && pred(c))
            .max_by_key(|c| c.at)
    };
    let winner = last(&p.member, &|c| c.timeline < p.timeline)?;
    if winner.slot_copies != Some(false) {
        return None;
    }
    let mut others: Vec<&str> = slot
        .candidates
        .iter()
        .map(|c| c.member.as_str())
        .filter(|m| *m != p.member)
        .collect();
    others.sort_unstable();
    others.dedup();
    others.into_iter().find_map(|m| {
        let c = last(m, &|_| true)?;
        let hit = faults
            .iter()
            .any(|f| f.start <= p.seen_at && f.heal >= winner.at && f.target.contains(m));
        let eligible = !hit
            && !c.primary
            && c.at + SAME_ROUND >= winner.at
            && c.timeline == winner.timeline
            && c.wal >= winner.wal
            && c.failover_priority > 0
            && c.failover_priority >= winner.failover_priority
            && (!mode.is_synchronous() || c.sync_standby)
            && c.slot_copies == Some(true);
        eligible.then(|| {
            format!(
                "{m} held a usable copy at {} on timeline {}, {} at {} without one",
                crate::logical::format_lsn(c.wal),
                c.timeline,
                p.member,
                crate::logical::format_lsn(winner.wal)
            )
        })
    })
}

/// The consumer run that skipped the row at `lsn` (never delivered), if one did because of
/// commits a failover discarded: the first run asked to start past the row (`--startpos`
/// above `lsn`) follows a run that was sent a row at or past `lsn` which the final table lacks
/// and a fault explains (`discarded`: `(lsn, index of the run that sent it)`). That row was on a
/// timeline the failover dropped, so the consumer confirmed positions that the new timeline
/// reuses for other rows, this one among them, and the server skips commits below the start
/// position. A row the consumer was never asked to start past, or with no discarded row at or
/// past it sent before, stays a violation.
pub fn skipped_past_lost_commits(
    slot: &SlotHistory,
    discarded: &[(u64, usize)],
    lsn: u64,
) -> Option<usize> {
    let j = slot
        .runs
        .iter()
        .position(|r| r.startpos.is_some_and(|p| p > lsn))?;
    discarded
        .iter()
        .any(|&(l, k)| k < j && l >= lsn)
        .then_some(j)
}

#[cfg(test)]
mod tests {
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
                candidates: vec![],
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

    #[test]
    fn a_row_skipped_past_a_position_confirmed_on_a_discarded_timeline_is_allowed_only_then() {
        // Asynchronous failover at 25 s: the old leader wrote rows 5..=6 (lsn 500, 600), run 1
        // sent them and the consumer confirmed 650; the new timeline forked at 450 and wrote
        // rows 7..=9 at 460, 520 and 700. Run 2 starts from 650: the server skips 7 and 8.
        let fin = || -> Vec<(i64, u64)> {
            rows(1..=4)
                .into_iter()
                .chain([(7, 460), (8, 520), (9, 700)])
                .collect()
        };
        let runs =
            |sent: Vec<(i64, u64)>| vec![run(0, None, sent), run(30, Some(650), vec![(9, 700)])];
        let sent: Vec<(i64, u64)> = rows(1..=6);
        let (v, t) = kinds(&history(runs(sent.clone()), fin(), vec![kill(25)]));
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((t.skipped_past_lost, t.delivered_lost_allowed), (2, 2));
        // No fault may lose commits (a replica's kill): the discarded rows are themselves a
        // violation, and the skipped ones too.
        let mut replica = kill(25);
        replica.on_leader = false;
        let (v, t) = kinds(&history(runs(sent), fin(), vec![replica]));
        assert_eq!(t.skipped_past_lost, 0);
        assert_eq!(v.len(), 3, "{v:?}");
        // The consumer was sent nothing at or past the rows' positions that the failover
        // dropped (row 5 only, at 500 < 520): only row 7 (460) is explained, row 8 stays lost.
        let sent: Vec<(i64, u64)> = rows(1..=5);
        let (v, t) = kinds(&history(runs(sent), fin(), vec![kill(25)]));
        assert_eq!(t.skipped_past_lost, 1);
        assert_eq!(v, vec![ViolationKind::SlotFeed]);
    }

    /// An insert acknowledged by `member` on `timeline`, ending at `at` seconds.
    fn ack(member: &str, timeline: u32, at: u64) -> crate::nemesis::history::Op {
        use crate::nemesis::history::{Channel, Op, OpKind, Outcome};
        Op {
            client: "rw-insert".into(),
            channel: Channel::ProxyRw,
            kind: OpKind::Insert {
                id: i64::from(timeline),
            },
            start: s(at),
            end: s(at),
            outcome: Outcome::Ok {
                server: member.into(),
                timeline,
                value: None,
            },
        }
    }

    #[test]
    fn promotions_are_the_first_acknowledged_write_on_each_new_timeline() {
        let mut h = history(vec![], rows(1..=2), vec![]);
        h.ops = vec![
            ack("pg1", 1, 1),
            ack("pg3", 3, 50),
            ack("pg2", 2, 31),
            ack("pg2", 2, 29),
            ack("pg1", 1, 30),
        ];
        let p = promotions(&h);
        assert_eq!(
            p.iter()
                .map(|p| (p.member.as_str(), p.timeline, p.seen_at))
                .collect::<Vec<_>>(),
            vec![("pg2", 2, s(29)), ("pg3", 3, s(50))]
        );
    }

    #[test]
    fn a_row_never_delivered_is_allowed_only_when_the_new_leader_held_no_usable_copy() {
        // Rows 1..=8 at lsn 100 * id; run 1 delivers 1..=4 and confirms 450; run 2 starts at 30 s
        // from 450. The default copies record: pg2 none at 1 s, usable at 20 s; pg3 usable at
        // 25 s; pg1 never polled.
        struct Case {
            name: &'static str,
            run2: Vec<(i64, u64)>,
            promoted: (&'static str, u64),
            copies: Option<Vec<(String, Duration, bool)>>,
            /// (violations, lost with the slot)
            want: (usize, usize),
        }
        let cases = [
            Case {
                name: "the new leader held a usable copy: the loss stays a violation",
                run2: rows(7..=8),
                promoted: ("pg2", 28),
                copies: None,
                want: (1, 0),
            },
            Case {
                name: "the new leader was never seen with a copy: rows 5 and 6 lost with the slot",
                run2: rows(7..=8),
                promoted: ("pg1", 28),
                copies: None,
                want: (0, 2),
            },
            Case {
                name: "the new leader's copy was unusable when promoted (rejoined, not synced)",
                run2: rows(7..=8),
                promoted: ("pg2", 28),
                copies: Some(vec![
                    ("pg2".into(), s(20), true),
                    ("pg2".into(), s(26), false),
                ]),
                want: (0, 2),
            },
            Case {
                name: "a copy usable only after the promotion does not count",
                run2: rows(7..=8),
                promoted: ("pg2", 28),
                copies: Some(vec![("pg2".into(), s(29), true)]),
                want: (0, 2),
            },
            Case {
                name: "the row committed after the new slot's start (run 2 delivered row 5 first): violation",
                run2: vec![(5, 500), (7, 700), (8, 800)],
                promoted: ("pg1", 28),
                copies: None,
                want: (1, 0),
            },
            Case {
                name: "promoted while a run from the same start failed: still in the window",
                run2: vec![],
                promoted: ("pg1", 28),
                copies: None,
                want: (0, 2),
            },
            Case {
                name: "the promotion came before run 1 confirmed (outside the window): violation",
                run2: rows(7..=8),
                promoted: ("pg1", 0),
                copies: None,
                want: (1, 0),
            },
        ];
        for c in cases {
            // An empty `run2`: run 2 (29 s, from 450, after the promotion at 28 s) delivered
            // nothing (no slot yet on the new leader), and run 3 (30 s, from 450) delivered 7
            // and 8: the window opens at run 1's start, which confirmed 450, not at run 2's.
            let runs = if c.run2.is_empty() {
                vec![
                    run(1, None, rows(1..=4)),
                    run(29, Some(450), vec![]),
                    run(30, Some(450), rows(7..=8)),
                ]
            } else {
                vec![run(1, None, rows(1..=4)), run(30, Some(450), c.run2)]
            };
            let mut h = history(runs, rows(1..=8), vec![kill(25)]);
            h.ops = vec![ack("pg3", 1, 2), ack(c.promoted.0, 2, c.promoted.1)];
            if let Some(copies) = c.copies {
                h.slot.as_mut().unwrap().copies = copies;
            }
            let (v, t) = kinds(&h);
            assert_eq!((v.len(), t.lost_with_slot), c.want, "{}: {v:?}", c.name);
        }
    }

    /// pg1's or pg2's `/patroni` answer at `ms` ms: a replica on timeline 1 at `wal`.
    fn answer(member: &str, ms: u64, wal: u64, copies: Option<bool>) -> CandidateSample {
        CandidateSample {
            member: member.into(),
            at: Duration::from_millis(ms),
            primary: false,
            timeline: 1,
            wal,
            failover_priority: 1,
            sync_standby: false,
            slot_copies: copies,
        }
    }

    #[test]
    fn a_loss_with_the_slot_is_a_violation_when_the_election_passed_over_a_copy_holder() {
        // As above: rows 5 and 6 never delivered; pg3 led timeline 1 and was killed at 25 s; pg1
        // (never seen with a usable copy) was promoted, its first write at 28 s on timeline 2.
        // pg1 answered at 26 s at 0/320 saying it held no copy; pg2 answered at 26.5 s.
        struct Case {
            name: &'static str,
            mode: Mode,
            winner: Option<bool>,
            holder: CandidateSample,
            /// A fault on pg2 while the election ran.
            pg2_hit: bool,
            /// (violations, lost with the slot)
            want: (usize, usize),
        }
        let pg2 = |wal, copies| answer("pg2", 26_500, wal, copies);
        let cases = [
            Case {
                name: "equal WAL, the holder passed over: violation",
                mode: Mode::Async,
                winner: Some(false),
                holder: pg2(800, Some(true)),
                pg2_hit: false,
                want: (1, 0),
            },
            Case {
                name: "the holder further ahead and passed over: violation",
                mode: Mode::Async,
                winner: Some(false),
                holder: pg2(900, Some(true)),
                pg2_hit: false,
                want: (1, 0),
            },
            Case {
                name: "the holder behind on WAL: allowed (WAL comes first)",
                mode: Mode::Async,
                winner: Some(false),
                holder: pg2(700, Some(true)),
                pg2_hit: false,
                want: (0, 2),
            },
            Case {
                name: "nobody held a copy: allowed",
                mode: Mode::Async,
                winner: Some(false),
                holder: pg2(800, Some(false)),
                pg2_hit: false,
                want: (0, 2),
            },
            Case {
                name: "a Patroni member without the field: allowed (the race cannot prefer it)",
                mode: Mode::Async,
                winner: Some(false),
                holder: pg2(800, None),
                pg2_hit: false,
                want: (0, 2),
            },
            Case {
                name: "a Patroni winner without the field: allowed (neither wins nor loses on it)",
                mode: Mode::Async,
                winner: None,
                holder: pg2(800, Some(true)),
                pg2_hit: false,
                want: (0, 2),
            },
            Case {
                name: "the holder at a lower failover_priority: allowed",
                mode: Mode::Async,
                winner: Some(false),
                holder: CandidateSample {
                    failover_priority: 0,
                    ..pg2(800, Some(true))
                },
                pg2_hit: false,
                want: (0, 2),
            },
            Case {
                name: "strict, the holder not in the sync key: allowed",
                mode: Mode::Strict,
                winner: Some(false),
                holder: pg2(800, Some(true)),
                pg2_hit: false,
                want: (0, 2),
            },
            Case {
                name: "strict, the holder the synchronous standby: violation",
                mode: Mode::Strict,
                winner: Some(false),
                holder: CandidateSample {
                    sync_standby: true,
                    ..pg2(800, Some(true))
                },
                pg2_hit: false,
                want: (1, 0),
            },
            Case {
                name: "the holder's last answer a poll round older than the winner's: allowed",
                mode: Mode::Async,
                winner: Some(false),
                holder: answer("pg2", 23_000, 800, Some(true)),
                pg2_hit: false,
                want: (0, 2),
            },
            Case {
                name: "the holder on another timeline: allowed",
                mode: Mode::Async,
                winner: Some(false),
                holder: CandidateSample {
                    timeline: 2,
                    ..pg2(800, Some(true))
                },
                pg2_hit: false,
                want: (0, 2),
            },
            Case {
                name: "the holder hit by a fault during the election: allowed",
                mode: Mode::Async,
                winner: Some(false),
                holder: pg2(800, Some(true)),
                pg2_hit: true,
                want: (0, 2),
            },
        ];
        for c in cases {
            let mut faults = vec![FaultRecord {
                target: "pg3".into(),
                ..kill(25)
            }];
            if c.pg2_hit {
                faults.push(FaultRecord {
                    kind: FaultKind::Silence,
                    target: "pg2".into(),
                    ..kill(24)
                });
            }
            let mut h = history(
                vec![run(1, None, rows(1..=4)), run(30, Some(450), rows(7..=8))],
                rows(1..=8),
                faults,
            );
            h.mode = c.mode;
            h.ops = vec![ack("pg3", 1, 2), ack("pg1", 2, 28)];
            h.slot.as_mut().unwrap().candidates = vec![
                answer("pg1", 20_000, 500, c.winner),
                answer("pg1", 26_000, 800, c.winner),
                // After the promotion: not its state when elected.
                CandidateSample {
                    timeline: 2,
                    primary: true,
                    ..answer("pg1", 29_000, 900, Some(false))
                },
                answer("pg2", 20_000, 500, Some(true)),
                c.holder,
            ];
            let (v, t) = check_slot(&h).expect("a slot history");
            assert_eq!((v.len(), t.lost_with_slot), c.want, "{}: {v:?}", c.name);
            assert!(
                v.iter().all(|v| v.detail.contains(
                    "2 rows lost with the slot at the promotion to timeline 2: elected a member \
                     without the slot while a copy holder was as far ahead (pg2 held"
                )),
                "{}: {v:?}",
                c.name
            );
        }
    }

    #[test]
    fn a_patroni_answer_reads_as_the_race_weighs_it() {
        let v = serde_json::json!({
            "role": "replica", "timeline": 3, "sync_standby": true,
            "xlog": {"received_location": 900, "replayed_location": 800},
            "tags": {"failover_priority": 2}, "logical_slot_copies": true,
        });
        let c = CandidateSample::from_patroni("pg2", s(5), &v).unwrap();
        assert_eq!(
            (
                c.primary,
                c.timeline,
                c.wal,
                c.failover_priority,
                c.sync_standby,
                c.slot_copies
            ),
            (false, 3, 900, 2, true, Some(true))
        );
        let patroni = serde_json::json!({
            "role": "primary", "timeline": 3, "xlog": {"location": 1000},
            "tags": {"nofailover": true},
        });
        let c = CandidateSample::from_patroni("pg1", s(5), &patroni).unwrap();
        assert_eq!(
            (c.primary, c.wal, c.failover_priority, c.slot_copies),
            (true, 1000, 0, None)
        );
        let stopped = serde_json::json!({"role": "replica", "state": "stopped"});
        assert_eq!(CandidateSample::from_patroni("pg3", s(5), &stopped), None);
    }
}
