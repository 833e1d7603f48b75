//! Is the PID in `postmaster.pid` our postmaster? After a host reboot or a crash the file survives
//! while its PID may have been handed to an unrelated process; signalling that process (a stop sends
//! SIGINT or SIGQUIT) would kill something that is not ours, and taking it for a running PostgreSQL
//! would hide that PostgreSQL is down.
//!
//! A PID is ours when the process works in our data directory (its working directory, where the
//! postmaster `chdir`s at start, when we can read it). Only when we cannot (another user's process,
//! so none we started) do its command line's `-D` and its start time both have to match: the start
//! time within Patroni's slack (`postgresql/postmaster.py` `_is_postmaster_process`: under 3 s) of
//! the file's start-time line. A readable working directory is not checked against the start time
//! on purpose: the file's start time is wall-clock, and a clock stepped by more than 3 s after
//! PostgreSQL started (NTP at boot, a resumed VM) would otherwise make the agent lose sight of its
//! own running primary, fail to start another one (PostgreSQL's lock), give the lock up after
//! `primary_start_timeout` and leave two primaries. The matching is [`judge`], a pure function;
//! [`read_process`] is the thin shell over `/proc`.

use std::path::{Path, PathBuf};

use super::files::{parse_postmaster_pid, PostmasterPid};

/// Patroni's slack between the file's start time and the process's: `abs(create_time - start_time)
/// < 3` seconds. PostgreSQL writes whole seconds of `time()`, `/proc/stat`'s `btime` is whole
/// seconds too, and the process's start is in clock ticks: a couple of seconds of rounding.
pub const START_TIME_SLACK_MS: i64 = 3000;

/// What `/proc` tells about a process, gathered by [`read_process`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessFacts {
    /// When it started, milliseconds since the Unix epoch (`btime` + `starttime` / `CLK_TCK`);
    /// `None` when `/proc/<pid>/stat` could not be read or parsed.
    pub start_time_ms: Option<i64>,
    /// Its working directory (`/proc/<pid>/cwd`), canonical; `None` when it cannot be read (a
    /// process of another user, for an agent that is not root: EACCES).
    pub cwd: Option<PathBuf>,
    /// The `-D` directory of its command line (`/proc/<pid>/cmdline`, world-readable), canonical
    /// when it exists; `None` when the command line has no `-D`.
    pub cmdline_data_dir: Option<PathBuf>,
}

/// Why the PID in `postmaster.pid` is not our postmaster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotOurs {
    /// In words, for the log.
    pub reason: String,
    /// The process is known to work in another directory (or in none of ours): it cannot be a
    /// postmaster of this data directory, so a new postmaster may ignore the stale file (PostgreSQL's
    /// `PG_GRANDPARENT_PID`, as Patroni passes it). False when only the start time disagrees: the
    /// process may be our postmaster seen through a stepped clock, and PostgreSQL's own lock check
    /// must stay in force.
    pub elsewhere: bool,
}

/// Decides whether `process` is the postmaster `file` names for `data_dir` (canonical): Ok when its
/// working directory is `data_dir`; when that cannot be read, Ok only when its command line's `-D` is
/// `data_dir` and its start time matches the file's (within [`START_TIME_SLACK_MS`]; a file
/// without a start time never matches). See the module docs for why a readable working directory
/// decides alone.
pub fn judge(file: &PostmasterPid, process: &ProcessFacts, data_dir: &Path) -> Result<(), NotOurs> {
    let pid = file.pid;
    let elsewhere = |what: &str, d: &Path| NotOurs {
        reason: format!(
            "process {pid} from postmaster.pid is not a postmaster of {}: its {what} is {}",
            data_dir.display(),
            d.display()
        ),
        elsewhere: true,
    };
    match (&process.cwd, &process.cmdline_data_dir) {
        (Some(cwd), _) if cwd == data_dir => return Ok(()),
        (Some(cwd), _) => return Err(elsewhere("working directory", cwd)),
        (None, Some(d)) if d != data_dir => return Err(elsewhere("command line's -D", d)),
        (None, Some(_)) => {}
        (None, None) => {
            return Err(NotOurs {
                reason: format!(
                    "process {pid} from postmaster.pid is not a postmaster of {}: its working directory is unreadable and its command line has no -D",
                    data_dir.display()
                ),
                elsewhere: true,
            })
        }
    }
    let file_ms = file.start_time.saturating_mul(1000);
    match process.start_time_ms {
        Some(started) if file.start_time > 0 && (started - file_ms).abs() < START_TIME_SLACK_MS => {
            Ok(())
        }
        started => Err(NotOurs {
            reason: format!(
                "process {pid} from postmaster.pid started at {} ms since the epoch, the file says {} s",
                started.map_or("an unknown time".to_string(), |s| s.to_string()),
                file.start_time
            ),
            elsewhere: false,
        }),
    }
}

/// Field 22 of `/proc/<pid>/stat`, `starttime`: clock ticks after boot. The second field (the
/// command name) is in parentheses and may contain spaces and parentheses itself, so fields are
/// counted after the last `)`.
pub fn parse_stat_starttime(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    // rest starts with field 3 (state): field 22 is the 20th after the `)`.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// `btime` of `/proc/stat`: the boot time, seconds since the Unix epoch.
pub fn parse_btime(proc_stat: &str) -> Option<i64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The data directory a postgres command line names: `-D dir` or `-Ddir` (`/proc/<pid>/cmdline`
/// is NUL-separated).
pub fn parse_cmdline_data_dir(cmdline: &[u8]) -> Option<PathBuf> {
    let mut args = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned());
    while let Some(a) = args.next() {
        if a == "-D" {
            return args.next().map(PathBuf::from);
        }
        if let Some(d) = a.strip_prefix("-D").filter(|d| !d.is_empty()) {
            return Some(PathBuf::from(d));
        }
    }
    None
}

/// What `postmaster.pid` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidFile {
    /// No file, a truncated one (being written), or a PID with no live process.
    Absent,
    /// Our postmaster.
    Ours(PostmasterPid),
    /// A live process that is not our postmaster, and why.
    Stranger(PostmasterPid, NotOurs),
}

/// Reads `data_dir/postmaster.pid` and judges the process it names ([`judge`] over
/// [`read_process`]). The caller reaps its own exited child first: a zombie still has a `/proc`
/// entry.
pub fn inspect(data_dir: &Path) -> PidFile {
    let Ok(text) = std::fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return PidFile::Absent;
    };
    let Some(pm) = parse_postmaster_pid(&text) else {
        return PidFile::Absent;
    };
    let Some(process) = read_process(pm.pid) else {
        return PidFile::Absent;
    };
    let canonical = data_dir
        .canonicalize()
        .unwrap_or_else(|_| data_dir.to_path_buf());
    match judge(&pm, &process, &canonical) {
        Ok(()) => PidFile::Ours(pm),
        Err(why) => PidFile::Stranger(pm, why),
    }
}

/// Reads [`ProcessFacts`] of `pid` from `/proc`; `None` when there is no such process. Unreadable
/// parts are `None` in the result (see the fields), never a guess.
pub fn read_process(pid: i32) -> Option<ProcessFacts> {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    let start_time_ms = (|| {
        let ticks = parse_stat_starttime(&stat)?;
        let btime = parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
        let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
        let after_boot_ms = i64::try_from(ticks.checked_mul(1000)? / hz).ok()?;
        btime.checked_mul(1000)?.checked_add(after_boot_ms)
    })();
    // /proc/<pid>/cwd is readable only by the process's owner (and root): an agent running as
    // `postgres` gets EACCES for another user's process. That process is no postmaster the agent
    // started, and /proc/<pid>/cmdline (world-readable) still tells which -D it was given.
    let cwd = std::fs::read_link(proc_dir.join("cwd")).ok();
    let cmdline_data_dir = std::fs::read(proc_dir.join("cmdline"))
        .ok()
        .and_then(|c| parse_cmdline_data_dir(&c))
        .map(|d| d.canonicalize().unwrap_or(d));
    Some(ProcessFacts {
        start_time_ms,
        cwd,
        cmdline_data_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const STARTED_S: i64 = 1_700_000_000;

    fn file(start_time: i64) -> PostmasterPid {
        PostmasterPid {
            pid: 4242,
            start_time,
            port: Some(5432),
            status: "ready".into(),
        }
    }

    fn facts(start_ms: Option<i64>, cwd: Option<&str>, d: Option<&str>) -> ProcessFacts {
        ProcessFacts {
            start_time_ms: start_ms,
            cwd: cwd.map(PathBuf::from),
            cmdline_data_dir: d.map(PathBuf::from),
        }
    }

    #[test]
    fn a_pid_is_ours_when_it_works_in_our_data_directory_else_by_command_line_and_start_time() {
        let ms = STARTED_S * 1000;
        // (case, file's start time, process facts, Ok, or Err(elsewhere))
        let rows: Vec<(&str, i64, ProcessFacts, Result<(), bool>)> = vec![
            (
                "our postmaster",
                STARTED_S,
                facts(Some(ms + 400), Some("/pg/data"), Some("/pg/data")),
                Ok(()),
            ),
            (
                "cwd unreadable, -D ours, rounding: 2.9 s early",
                STARTED_S,
                facts(Some(ms - 2900), None, Some("/pg/data")),
                Ok(()),
            ),
            (
                "cwd unreadable, -D ours, rounding: 2.9 s late",
                STARTED_S,
                facts(Some(ms + 2900), None, Some("/pg/data")),
                Ok(()),
            ),
            (
                "working in our data directory, clock stepped 3 s since: ours",
                STARTED_S,
                facts(Some(ms + 3000), Some("/pg/data"), None),
                Ok(()),
            ),
            (
                "working in our data directory, start time unknown: ours",
                STARTED_S,
                facts(None, Some("/pg/data"), None),
                Ok(()),
            ),
            (
                "cwd unreadable, -D ours, 3 s off: not ours (Patroni: < 3)",
                STARTED_S,
                facts(Some(ms + 3000), None, Some("/pg/data")),
                Err(false),
            ),
            (
                "cwd unreadable, -D ours, reused pid after a reboot",
                STARTED_S,
                facts(Some(ms + 86_400_000), None, Some("/pg/data")),
                Err(false),
            ),
            (
                "cwd unreadable, -D ours, start time unknown",
                STARTED_S,
                facts(None, None, Some("/pg/data")),
                Err(false),
            ),
            (
                "cwd unreadable, -D ours, file without start time",
                0,
                facts(Some(0), None, Some("/pg/data")),
                Err(false),
            ),
            (
                "same start time, another process's cwd",
                STARTED_S,
                facts(Some(ms), Some("/root"), None),
                Err(true),
            ),
            (
                "cwd decides over the command line",
                STARTED_S,
                facts(Some(ms), Some("/root"), Some("/pg/data")),
                Err(true),
            ),
            (
                "cwd unreadable (EACCES), -D ours",
                STARTED_S,
                facts(Some(ms), None, Some("/pg/data")),
                Ok(()),
            ),
            (
                "cwd unreadable, -D another directory",
                STARTED_S,
                facts(Some(ms), None, Some("/other/data")),
                Err(true),
            ),
            (
                "cwd unreadable, no -D (sleep 60)",
                STARTED_S,
                facts(Some(ms), None, None),
                Err(true),
            ),
        ];
        for (case, start, process, want) in rows {
            let got = judge(&file(start), &process, Path::new("/pg/data"));
            match (got, want) {
                (Ok(()), Ok(())) => {}
                (Err(e), Err(elsewhere)) => {
                    assert_eq!(e.elsewhere, elsewhere, "{case}: {}", e.reason);
                    assert!(e.reason.contains("4242"), "{case}: {}", e.reason);
                }
                (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn proc_files_parse() {
        let stat = "29926 (my (odd) cmd) R 29923 29923 8729 0 -1 4194304 98 0 0 0 0 0 0 0 20 0 1 0 94481 3133440 382";
        assert_eq!(parse_stat_starttime(stat), Some(94481));
        assert_eq!(parse_stat_starttime("29926 (cat) R 1 2"), None);
        assert_eq!(parse_stat_starttime("garbage"), None);
        assert_eq!(
            parse_btime("cpu  1 2 3\nintr 5\nbtime 1796496695\nprocesses 9\n"),
            Some(1_796_496_695)
        );
        assert_eq!(parse_btime("cpu 1\n"), None);
        let cmd = |args: &[&str]| args.join("\0").into_bytes();
        assert_eq!(
            parse_cmdline_data_dir(&cmd(&[
                "/usr/lib/postgresql/15/bin/postgres",
                "-D",
                "/pg/data",
                "-c",
                "port=5432"
            ])),
            Some(PathBuf::from("/pg/data"))
        );
        assert_eq!(
            parse_cmdline_data_dir(&cmd(&["postgres", "-D/pg/data"])),
            Some(PathBuf::from("/pg/data"))
        );
        assert_eq!(parse_cmdline_data_dir(&cmd(&["sleep", "60"])), None);
        assert_eq!(parse_cmdline_data_dir(&cmd(&["postgres", "-D"])), None);
    }

    /// The shell reads a live process: this test's own, started moments ago, in its own cwd.
    #[test]
    fn read_process_sees_this_process() {
        let me = read_process(std::process::id() as i32).expect("this process exists");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let started = me.start_time_ms.expect("start time readable");
        assert!(
            started <= now_ms + START_TIME_SLACK_MS,
            "{started} vs now {now_ms}"
        );
        assert_eq!(me.cwd, std::env::current_dir().ok());
        assert_eq!(read_process(i32::MAX), None, "no such process");
    }
}
