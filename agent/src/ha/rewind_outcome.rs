//! What a failed pg_rewind left behind: a data directory it never wrote (a retry may work) or one
//! it began rewriting (only a new base backup helps).
//!
//! pg_rewind reads everything first and writes last. With `LC_ALL=C` and `--progress` (the agent
//! passes both; without `--progress` only the lines of phases 2, 3's first and `Done!` are printed)
//! it logs each phase on stderr, the same lines in PostgreSQL 15 and 18
//! (`src/bin/pg_rewind/pg_rewind.c`), progress reports (`N/M kB (P%) copied`, ended by `\r`) in
//! between:
//!
//! 1. `connected to server`, then perhaps `executing "..." for target server to complete crash
//!    recovery` (single-user crash recovery: it leaves a cleanly shut down, startable directory);
//! 2. `servers diverged at WAL location ...` (or `no rewind required`, exit 0);
//! 3. `rewinding from last common checkpoint at ...`, `reading source file list`, `reading target
//!    file list`, `reading WAL in target`: still reading;
//! 4. `need to copy N MB (total source directory size is M MB)`: the file map is final and the
//!    copy begins (files copied, truncated, removed), then `creating backup label and updating
//!    control file` (pg_control last), `syncing target data directory`, `Done!`.
//!
//! A run that fails after the line of phase 4 has changed files whose pg_control still describes
//! the old ones (seed 79, docs/nemesis-tables.md: the source stopped mid-copy, a WAL segment was
//! left truncated): PostgreSQL started on it would replay a mixture, and every later pg_rewind
//! fails reading the target's WAL. A run whose error is about the target's own WAL (`could not
//! read WAL record`, `could not find previous WAL record`, `could not read file ".../pg_wal/..."`)
//! cannot succeed on a retry either: nothing changes that WAL while PostgreSQL is stopped (the
//! trace of an earlier interrupted run, or WAL that is gone). Both are [`RewindFailure::Damaged`].
//! Everything else (no connection, another system, not shut down cleanly, no checksums nor
//! `wal_log_hints`, a source that cannot list or send its files before the copy) failed before
//! anything was written: [`RewindFailure::Untouched`].

/// The kind of a failed pg_rewind run (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewindFailure {
    /// It failed before writing to the target: the data directory is as it was; a retry (at the
    /// failed-task pace) may work.
    Untouched,
    /// It failed after it began rewriting the target, or on the target's own WAL: no retry can
    /// help and PostgreSQL must not start on it; only a new base backup (a re-clone) does.
    Damaged,
}

/// The line pg_rewind prints when the copy begins (phase 4 of the module docs).
const COPY_BEGINS: &str = "need to copy ";

/// Errors about the target's own WAL (`src/bin/pg_rewind/parsexlog.c`).
const TARGET_WAL_ERRORS: [&str; 2] = [
    "could not read WAL record at",
    "could not find previous WAL record at",
];

/// Classifies a pg_rewind run that exited with an error or was killed, from its stderr (`output`,
/// every line, split at `\n` and `\r`; with or without the `pg_rewind: ` prefix). Unknown output is
/// [`RewindFailure::Untouched`]: today's retry, as before this classification existed.
pub fn classify(output: &str) -> RewindFailure {
    let lines = || {
        output
            .split(['\n', '\r'])
            .map(|l| l.trim().trim_start_matches("pg_rewind:").trim())
    };
    if lines().any(|l| l.starts_with(COPY_BEGINS)) {
        return RewindFailure::Damaged;
    }
    let target_wal = |l: &str| {
        TARGET_WAL_ERRORS.iter().any(|e| l.contains(e))
            || (l.contains("could not") && l.contains("/pg_wal/") && !l.contains("remote file"))
    };
    if lines().any(target_wal) {
        return RewindFailure::Damaged;
    }
    RewindFailure::Untouched
}

/// The line that says why pg_rewind failed: its last `error:` line, else its last line (for the
/// reason shown to operators).
pub fn error_line(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines
        .iter()
        .rev()
        .find(|l| l.contains("error:"))
        .or(lines.last())
        .map(|l| l.to_string())
        .unwrap_or_else(|| "no output".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use RewindFailure::*;

    /// Real pg_rewind 15/18 output (LC_ALL=C), one case per phase.
    #[test]
    fn failures_before_the_copy_are_untouched_after_it_damaged() {
        let cases: &[(&str, &str, RewindFailure)] = &[
            (
                "no connection",
                "pg_rewind: error: could not connect to server: connection to server at \"10.0.0.2\", port 5432 failed: Connection refused",
                Untouched,
            ),
            (
                "another system",
                "pg_rewind: connected to server\npg_rewind: error: source and target clusters are from different systems",
                Untouched,
            ),
            (
                "not shut down cleanly (PostgreSQL 12, or --no-ensure-shutdown)",
                "pg_rewind: connected to server\npg_rewind: error: target server must be shut down cleanly",
                Untouched,
            ),
            (
                "neither checksums nor wal_log_hints",
                "pg_rewind: connected to server\npg_rewind: error: target server needs to use either data checksums or \"wal_log_hints = on\"",
                Untouched,
            ),
            (
                "crash recovery in single-user mode failed",
                "pg_rewind: connected to server\npg_rewind: executing \"/usr/lib/postgresql/15/bin/postgres\" for target server to complete crash recovery\npg_rewind: error: postgres single-user mode in target cluster failed",
                Untouched,
            ),
            (
                "source gone while listing its files",
                "pg_rewind: connected to server\npg_rewind: servers diverged at WAL location 0/3000060 on timeline 1\npg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\npg_rewind: reading source file list\npg_rewind: error: could not fetch file list: server closed the connection unexpectedly",
                Untouched,
            ),
            (
                "killed while reading the target file list",
                "pg_rewind: connected to server\npg_rewind: servers diverged at WAL location 0/3000060 on timeline 1\npg_rewind: rewinding from last common checkpoint at 0/2000060 on timeline 1\npg_rewind: reading source file list\npg_rewind: reading target file list",
                Untouched,
            ),
            ("no output at all (killed at once)", "", Untouched),
            (
                "source stopped mid-copy (seed 79's first run)",
                "pg_rewind: connected to server\npg_rewind: servers diverged at WAL location 0/5000060 on timeline 2\npg_rewind: rewinding from last common checkpoint at 0/4000028 on timeline 2\npg_rewind: reading source file list\npg_rewind: reading target file list\npg_rewind: reading WAL in target\npg_rewind: need to copy 52 MB (total source directory size is 71 MB)\npg_rewind: error: unexpected result while fetching remote files: FATAL:  terminating connection due to administrator command",
                Damaged,
            ),
            (
                "source stopped mid-copy, with progress reports",
                "pg_rewind: connected to server\npg_rewind: servers diverged at WAL location 0/4023F38 on timeline 1\npg_rewind: rewinding from last common checkpoint at 0/2000110 on timeline 1\npg_rewind: reading source file list\npg_rewind: reading target file list\npg_rewind: reading WAL in target\npg_rewind: need to copy 53 MB (total source directory size is 72 MB)\n    0/54316 kB (0%) copied\r12004/54316 kB (22%) copied\rpg_rewind: error: could not fetch remote file \"base/5/1259\": server closed the connection unexpectedly",
                Damaged,
            ),
            (
                "killed mid-copy (no error line)",
                "pg_rewind: reading WAL in target\npg_rewind: need to copy 52 MB (total source directory size is 71 MB)",
                Damaged,
            ),
            (
                "failed after the control file",
                "pg_rewind: need to copy 1 MB (total source directory size is 40 MB)\npg_rewind: creating backup label and updating control file\npg_rewind: syncing target data directory\npg_rewind: error: could not fsync file \"/data/base/1/1259\": Input/output error",
                Damaged,
            ),
            (
                "truncated target WAL (seed 79's later runs)",
                "pg_rewind: connected to server\npg_rewind: servers diverged at WAL location 0/5000060 on timeline 2\npg_rewind: error: could not read file \"/tmp/n/pg2/pg_wal/000000020000000000000005\": read 0 of 8192\npg_rewind: error: could not find previous WAL record at 0/5000060",
                Damaged,
            ),
            (
                "target WAL unreadable while extracting the page map",
                "pg_rewind: reading WAL in target\npg_rewind: error: could not read WAL record at 0/4000100: invalid record length at 0/4000100: expected at least 24, got 0",
                Damaged,
            ),
            (
                "target WAL segment missing",
                "pg_rewind: servers diverged at WAL location 0/5000060 on timeline 2\npg_rewind: error: could not open file \"/var/lib/postgresql/15/main/pg_wal/000000020000000000000004\": No such file or directory",
                Damaged,
            ),
            (
                "a remote file the source could not send before the copy",
                "pg_rewind: connected to server\npg_rewind: error: could not fetch remote file \"global/pg_control\": ERROR:  permission denied for function pg_read_binary_file",
                Untouched,
            ),
        ];
        for (what, output, want) in cases {
            assert_eq!(classify(output), *want, "{what}");
        }
    }

    #[test]
    fn the_error_line_is_the_last_error_else_the_last_line() {
        assert_eq!(
            error_line("pg_rewind: reading WAL in target\npg_rewind: error: could not read WAL record at 0/1\npg_rewind: hint: x\n"),
            "pg_rewind: error: could not read WAL record at 0/1"
        );
        assert_eq!(
            error_line("pg_rewind: need to copy 5 MB (total source directory size is 9 MB)\n"),
            "pg_rewind: need to copy 5 MB (total source directory size is 9 MB)"
        );
        assert_eq!(error_line(""), "no output");
    }
}
