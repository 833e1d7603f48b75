//! The summary of many runs: one row per fault kind (runs, violations, recoveries over the bound,
//! recovery p50/p99/max) and the seed of every violation.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use super::checker::Report;
use super::fault::FaultKind;
use super::history::History;

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
fn attribute(history: &History, at: Duration) -> Option<FaultKind> {
    history
        .faults
        .iter()
        .rev()
        .find(|f| f.start <= at)
        .map(|f| f.kind)
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
/// seeds whose run could not be carried out (setup errors), with the error.
pub fn render(runs: &[RunResult], failed: &[(u64, String)], bound: Duration) -> String {
    #[derive(Default)]
    struct Row {
        applied: usize,
        violations: usize,
        over: usize,
        recoveries: Vec<Duration>,
    }
    let mut rows: BTreeMap<Option<FaultKind>, Row> = BTreeMap::new();
    let mut lines = String::new();
    let mut lost_allowed = 0;
    for r in runs {
        lost_allowed += r.report.lost_async_allowed;
        for rec in &r.report.recoveries {
            let row = rows.entry(Some(rec.kind)).or_default();
            row.applied += 1;
            row.over += usize::from(rec.over_bound);
            row.recoveries.extend(rec.after);
        }
        for v in &r.report.violations {
            let kind = attribute(&r.history, v.at);
            rows.entry(kind).or_default().violations += 1;
            let _ = writeln!(
                lines,
                "  seed {} [{}] {} at {:.1}s: {}",
                r.seed,
                kind.map(FaultKind::name).unwrap_or("before any fault"),
                v.kind,
                v.at.as_secs_f64(),
                v.detail
            );
        }
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<18} {:>5} {:>10} {:>10} {:>8} {:>8} {:>8}",
        "fault", "runs", "violations", "over bound", "p50 s", "p99 s", "max s"
    );
    for (kind, row) in &mut rows {
        row.recoveries.sort();
        let _ = writeln!(
            out,
            "{:<18} {:>5} {:>10} {:>10} {:>8} {:>8} {:>8}",
            kind.map(FaultKind::name).unwrap_or("(none)"),
            row.applied,
            row.violations,
            row.over,
            secs(quantile(&row.recoveries, 0.5)),
            secs(quantile(&row.recoveries, 0.99)),
            secs(row.recoveries.last().copied()),
        );
    }
    let acked: usize = runs.iter().map(|r| r.report.acknowledged).sum();
    let _ = writeln!(
        out,
        "{} runs, {} acknowledged operations, lost (async, allowed): {}; recovery bound ttl + loop_wait + 1 s = {}s",
        runs.len(),
        acked,
        lost_allowed,
        bound.as_secs()
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
