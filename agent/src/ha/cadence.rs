//! When the HA loop's next cycle starts: a cadence kept from each cycle's start, and a leader's
//! last attempt before its demotion deadline (issue 14).
//!
//! Patroni keeps its loop on a cadence: the next cycle is due `loop_wait` after the start of the
//! one before (`schedule_next_run` in `patroni/__main__.py`: `next_run += loop_wait`), and a cycle
//! that took longer than `loop_wait` is followed at once, with the warning "Loop time exceeded,
//! rescheduling immediately". A wait counted from a cycle's *end* instead stretches the time
//! between a leader's renewals by the length of its cycle. With `loop_wait` 1 and `retry_timeout`
//! 2 (a 3 s demotion window, [`super::demote_window_ms`]) a healthy new leader whose first cycle
//! took ~2 s (its status, the slots, `synchronous_standby_names` and a reload, on a loaded host)
//! slept until 200 ms before its deadline, could not read the DCS and renew in 200 ms, and demoted
//! itself with no fault at all (the nemesis's ZooKeeper strict series, seed 10 with logs, seed 33
//! without).
//!
//! A member that believes it leads also starts its next cycle early enough for one last attempt to
//! end by its demotion deadline: the cycle's work before its renewal (the DCS read, the look at
//! PostgreSQL, `decide`) as the last cycle measured it, plus [`LAST_ATTEMPT_MS`] for the renewal.
//! Only one cycle is pulled forward per deadline (the cycle that started at or after that point
//! was the last attempt), so a leader whose DCS calls fail at once does not spin until its
//! deadline.

/// The least time (ms) a leader's DCS call gets once its demotion deadline is (nearly) reached:
/// one last read or renewal on a DCS that answers, before it demotes.
pub const LAST_ATTEMPT_MS: u64 = 200;

/// A finished cycle of the HA loop, in the runner's monotonic ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cycle {
    /// When the cycle started.
    pub started_ms: u64,
    /// When it ended (now, when the next cycle is scheduled).
    pub ended_ms: u64,
}

/// When the next cycle starts ([`next_cycle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NextCycle {
    /// Monotonic ms at which it starts (at the earliest `ended_ms`: at once).
    pub at_ms: u64,
    /// The cycle took longer than `loop_wait`: the next one starts at once (Patroni warns "Loop
    /// time exceeded").
    pub overran: bool,
    /// Pulled forward, ahead of the cadence, for a leader's last attempt before its demotion
    /// deadline.
    pub last_attempt: bool,
}

/// When the cycle after `cycle` starts.
///
/// - `loop_wait_secs`: the dynamic `loop_wait` (seconds; read as at least 1).
/// - `demote_deadline_ms`: this member's demotion deadline when it believes it leads
///   ([`super::demote_deadline_ms`]), else `None`.
/// - `pre_renewal_ms`: how long the last cycle that renewed (or tried to) took from its start to
///   its renewal call (ms); 0 when unknown.
///
/// The cadence is `started_ms + loop_wait`, at once when the cycle overran it. A leader whose
/// cadence falls later than `deadline - pre_renewal_ms - LAST_ATTEMPT_MS` starts then instead,
/// unless this cycle itself started at or after that point.
pub fn next_cycle(
    cycle: Cycle,
    loop_wait_secs: u32,
    demote_deadline_ms: Option<u64>,
    pre_renewal_ms: u64,
) -> NextCycle {
    let cadence = cycle.started_ms + u64::from(loop_wait_secs.max(1)) * 1000;
    let overran = cadence <= cycle.ended_ms;
    let last_attempt_at = demote_deadline_ms
        .map(|d| d.saturating_sub(pre_renewal_ms + LAST_ATTEMPT_MS))
        .filter(|&at| at > cycle.started_ms && at < cadence);
    let at = last_attempt_at.unwrap_or(cadence).max(cycle.ended_ms);
    NextCycle {
        at_ms: at,
        overran,
        last_attempt: last_attempt_at.is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cycle(started_ms: u64, ended_ms: u64) -> Cycle {
        Cycle {
            started_ms,
            ended_ms,
        }
    }

    /// (name, cycle, loop_wait s, deadline, pre-renewal ms) → (at, overran, last attempt).
    type Row = (
        &'static str,
        Cycle,
        u32,
        Option<u64>,
        u64,
        (u64, bool, bool),
    );

    #[test]
    fn next_cycle_table() {
        #[rustfmt::skip]
        let rows: &[Row] = &[
            ("a replica's short cycle: loop_wait after its start",
             cycle(10_000, 10_300), 10, None, 0, (20_000, false, false)),
            ("a replica's cycle longer than loop_wait: the next at once",
             cycle(10_000, 21_500), 10, None, 0, (21_500, true, false)),
            ("loop_wait 0 is read as 1 s",
             cycle(10_000, 10_100), 0, None, 0, (11_000, false, false)),
            ("a leader that renewed: its deadline is far, the cadence holds",
             cycle(10_000, 10_400), 10, Some(30_050), 50, (20_000, false, false)),
            // Seed 10: renewed 0.1 s into a 2 s cycle at loop_wait 1 / retry_timeout 2. Waiting
            // loop_wait after the end left 200 ms before the deadline; the cadence runs at once.
            ("a leader's 2 s cycle at loop_wait 1: the next at once, not 200 ms before its deadline",
             cycle(10_000, 12_000), 1, Some(13_100), 100, (12_000, true, false)),
            ("a leader whose renewal failed: pulled forward for its last attempt",
             cycle(10_000, 10_300), 10, Some(15_000), 300, (14_500, false, true)),
            ("the last attempt leaves the measured pre-renewal work room",
             cycle(10_000, 10_300), 10, Some(15_000), 1_000, (13_800, false, true)),
            ("the last attempt is due already: at once",
             cycle(10_000, 14_900), 10, Some(15_000), 300, (14_900, false, true)),
            ("the cycle that just ran was the last attempt: no spinning until the deadline",
             cycle(14_500, 14_510), 10, Some(15_000), 300, (24_500, false, false)),
            ("a deadline past the cadence changes nothing",
             cycle(10_000, 10_300), 5, Some(25_000), 300, (15_000, false, false)),
        ];
        for (name, c, loop_wait, deadline, pre, want) in rows {
            let got = next_cycle(*c, *loop_wait, *deadline, *pre);
            assert_eq!((got.at_ms, got.overran, got.last_attempt), *want, "{name}");
        }
    }
}
