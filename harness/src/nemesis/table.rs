//! The summary of many runs: one row per fault kind and target (the leader, a replica; alone or
//! overlapping another fault): faults applied, violations, recoveries over their bound, the
//! largest bound, recovery p50/p99/max, and the longest write gap in a fault's window
//! ([`super::checker::write_gap`]): how many ran over their bound, the row's largest bound, the
//! longest; and the seed of every violation.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use super::checker::Report;
use super::fault::FaultKind;
use super::history::{FaultRecord, History};

/// One finished run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Its seed.
    pub seed: u64,
    /// What happened.
    pub history: History,
    /// The verdict.
    pub report: Report,
    /// Wall time of the whole run (cluster start to teardown).
    pub wall: Duration,
}

/// The fault a violation at `at` is attributed to: the last one applied at or before it.
fn attribute(history: &History, at: Duration) -> Option<&FaultRecord> {
    history.faults.iter().rev().find(|f| f.start <= at)
}

/// A row's name: the kind, `@leader` or `@replica` for the faults aimed at a member,
/// `@dcs-leader` for a DCS member stop of the DCS's own leader, `+overlap`
/// when another fault held at the same time.
fn label(kind: FaultKind, on_leader: bool, overlapped: bool) -> String {
    let member = matches!(
        kind,
        FaultKind::Freeze
            | FaultKind::Kill
            | FaultKind::PostgresCrash
            | FaultKind::Silence
            | FaultKind::SlowLink
            | FaultKind::SlowDcs
    );
    let mut l = kind.name().to_string();
    if member {
        l.push_str(if on_leader { "@leader" } else { "@replica" });
    }
    if kind == FaultKind::DcsMemberStop && on_leader {
        l.push_str("@dcs-leader");
    }
    if overlapped {
        l.push_str("+overlap");
    }
    l
}

/// The value at quantile `q` (0..=1) of `sorted` (nearest rank).
pub fn quantile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2}", d.as_secs_f64()))
        .unwrap_or_else(|| "-".into())
}

/// Renders the table of `runs` and the list of violations with their seeds; `failed` lists the
/// seeds whose run could not be carried out (setup errors), with the error. Each fault's
/// recovery is compared with its own bound ([`super::checker::recovery_bound`]); the "bound s"
/// column shows the row's largest.
pub fn render(runs: &[RunResult], failed: &[(u64, String)]) -> String {
    #[derive(Default)]
    struct Row {
        applied: usize,
        violations: usize,
        over: usize,
        bound: Duration,
        recoveries: Vec<Duration>,
        gap_over: usize,
        gap_bound: Duration,
        gap_max: Duration,
    }
    // Keyed by (kind, label) so rows list in the kinds' order.
    let mut rows: BTreeMap<(Option<FaultKind>, String), Row> = BTreeMap::new();
    let mut lines = String::new();
    let mut lost_allowed = 0;
    for r in runs {
        lost_allowed += r.report.lost_async_allowed;
        for rec in &r.report.recoveries {
            let key = (
                Some(rec.kind),
                label(rec.kind, rec.on_leader, rec.overlapped),
            );
            let row = rows.entry(key).or_default();
            row.applied += 1;
            row.over += usize::from(rec.over_bound);
            row.bound = row.bound.max(rec.bound);
            row.recoveries.extend(rec.after);
            row.gap_over += usize::from(rec.gap_over_bound);
            row.gap_bound = row.gap_bound.max(rec.gap_bound);
            row.gap_max = row.gap_max.max(rec.gap);
        }
        for v in &r.report.violations {
            let f = attribute(&r.history, v.at);
            let key = match f {
                Some(f) => (
                    Some(f.kind),
                    label(
                        f.kind,
                        f.on_leader,
                        r.history.faults.iter().any(|g| f.overlaps(g)),
                    ),
                ),
                None => (None, "(before any fault)".to_string()),
            };
            let _ = writeln!(
                lines,
                "  seed {} [{}] {} at {:.1}s: {}",
                r.seed,
                key.1,
                v.kind,
                v.at.as_secs_f64(),
                v.detail
            );
            rows.entry(key).or_default().violations += 1;
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<30} {:>5} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>8} {:>11} {:>9}",
        "fault",
        "faults",
        "violations",
        "over bound",
        "bound s",
        "p50 s",
        "p99 s",
        "max s",
        "gap over",
        "gap bound s",
        "gap max s"
    );
    for ((_, name), row) in &mut rows {
        row.recoveries.sort();
        let _ = writeln!(
            out,
            "{:<30} {:>5} {:>10} {:>10} {:>7} {:>7} {:>7} {:>7} {:>8} {:>11} {:>9}",
            name,
            row.applied,
            row.violations,
            row.over,
            secs(Some(row.bound)),
            secs(quantile(&row.recoveries, 0.5)),
            secs(quantile(&row.recoveries, 0.99)),
            secs(row.recoveries.last().copied()),
            row.gap_over,
            secs((row.applied > 0).then_some(row.gap_bound)),
            secs((row.applied > 0).then_some(row.gap_max)),
        );
    }
    let acked: usize = runs.iter().map(|r| r.report.acknowledged).sum();
    let reads: usize = runs.iter().map(|r| r.report.reads.0).sum();
    let on_replicas: usize = runs.iter().map(|r| r.report.reads.1).sum();
    let _ = writeln!(
        out,
        "{} runs, {} acknowledged writes, {} read-your-writes reads ({} on another server than the insert's), lost (async, allowed): {}",
        runs.len(),
        acked,
        reads,
        on_replicas,
        lost_allowed,
    );
    if lines.is_empty() {
        out.push_str("violations: none\n");
    } else {
        out.push_str("violations:\n");
        out.push_str(&lines);
    }
    for (seed, e) in failed {
        let _ = writeln!(out, "  seed {seed}: run failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(quantile(&v, 0.5), Some(Duration::from_secs(50)));
        assert_eq!(quantile(&v, 0.99), Some(Duration::from_secs(99)));
        assert_eq!(quantile(&v[..1], 0.99), Some(Duration::from_secs(1)));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
