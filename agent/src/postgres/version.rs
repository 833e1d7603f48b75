//! Which PostgreSQL the agent drives, and the settings that differ between majors.
//!
//! Praetor supports PostgreSQL 13 to 18 (13 is the oldest major the PostgreSQL project still
//! supported when this range was set; 18 the newest tested). The version is read, before anything
//! touches the data directory, from `PG_VERSION` in the data directory when a cluster is there, and
//! from `postgres -V` of `bin_dir` (the programs that will run) always. Older majors are refused:
//! they take recovery settings from `recovery.conf` (before 12) and `wal_keep_segments` (before 13),
//! so an agent writing 13+'s files would fail in obscure ways. A newer `bin_dir` than 18 is allowed
//! with a warning: the settings Praetor writes (`standby.signal`, `primary_conninfo`,
//! `wal_keep_size`) have not changed since 13, and refusing would block upgrades until a release
//! catches up (Patroni also runs majors newer than it knows, with its newest settings list).

use std::collections::BTreeMap;
use std::path::Path;

/// The oldest supported major.
pub const MIN_MAJOR: u32 = 13;
/// The newest tested major.
pub const MAX_TESTED_MAJOR: u32 = 18;

/// A PostgreSQL server version as `server_version_num` spells it: 150004 for 15.4, 180006 for 18.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PgVersion(pub u32);

impl PgVersion {
    /// The major version: 15 for 150004 (9 for 90603, PostgreSQL's pre-10 numbering folded to its
    /// first part, enough to refuse it).
    pub fn major(self) -> u32 {
        self.0 / 10000
    }

    /// `server_version_num` (150004).
    pub fn num(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for PgVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0 >= 100000 {
            write!(f, "{}.{}", self.0 / 10000, self.0 % 10000)
        } else {
            write!(
                f,
                "{}.{}.{}",
                self.0 / 10000,
                self.0 / 100 % 100,
                self.0 % 100
            )
        }
    }
}

/// Parses `postgres -V` output (`postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`,
/// `postgres (PostgreSQL) 18.6`, `postgres (PostgreSQL) 9.6.24`, `... 19devel`, `... 18beta1`) into a
/// version. Errors quote the text.
pub fn parse_postgres_v(text: &str) -> Result<PgVersion, String> {
    let bad = || format!("cannot read a PostgreSQL version from {:?}", text.trim());
    let word = text
        .split_whitespace()
        .skip_while(|w| *w != "(PostgreSQL)")
        .nth(1)
        .ok_or_else(bad)?;
    // The leading digits and dots: `18.6`, `9.6.24`, `19` of `19devel`.
    let numeric: String = word
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let parts: Vec<u32> = numeric
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [] => Err(bad()),
        [major, ..] if *major >= 10 => Ok(PgVersion(major * 10000 + parts.get(1).unwrap_or(&0))),
        [major, minor, rest @ ..] => Ok(PgVersion(
            major * 10000 + minor * 100 + rest.first().unwrap_or(&0),
        )),
        [major] => Ok(PgVersion(major * 10000)),
    }
}

/// Parses a data directory's `PG_VERSION` (`15\n`, or `9.6\n` before 10) into its major (9 for 9.6).
pub fn parse_pg_version_file(text: &str) -> Result<u32, String> {
    let t = text.trim();
    t.split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| format!("PG_VERSION holds {t:?}, not a major version"))
}

/// What the version check found: the version of `bin_dir`'s postgres and a warning to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionCheck {
    /// The server version the agent will run.
    pub version: PgVersion,
    /// A warning (a major newer than [`MAX_TESTED_MAJOR`]).
    pub warning: Option<String>,
}

/// Decides whether the agent may run `binary` (from `postgres -V` of `bin_dir`) on a data directory
/// whose `PG_VERSION` says `data_major` (`None`: no cluster there yet). Refused: a major before 13
/// (of either), and a data directory of another major than the programs (PostgreSQL would refuse to
/// start it; pg_upgrade is the way). A binary newer than 18 is a warning. The errors name the
/// version, where it was read, and the supported range.
pub fn check_versions(
    bin_dir: &Path,
    binary: PgVersion,
    data_dir: &Path,
    data_major: Option<u32>,
) -> Result<VersionCheck, String> {
    let range = format!("Praetor runs PostgreSQL {MIN_MAJOR} to {MAX_TESTED_MAJOR}");
    if let Some(m) = data_major {
        if m < MIN_MAJOR {
            return Err(format!(
                "the data directory {} holds a PostgreSQL {m} cluster (PG_VERSION), which is not supported: {range}; upgrade it with pg_upgrade first",
                data_dir.display()
            ));
        }
    }
    if binary.major() < MIN_MAJOR {
        return Err(format!(
            "postgresql.bin_dir {} holds PostgreSQL {binary}, which is not supported: {range}",
            bin_dir.display()
        ));
    }
    if let Some(m) = data_major {
        if m != binary.major() {
            return Err(format!(
                "the data directory {} holds a PostgreSQL {m} cluster (PG_VERSION) but postgresql.bin_dir {} holds PostgreSQL {binary}: point bin_dir at PostgreSQL {m}'s programs, or upgrade the cluster with pg_upgrade",
                data_dir.display(),
                bin_dir.display()
            ));
        }
    }
    let warning = (binary.major() > MAX_TESTED_MAJOR).then(|| {
        format!(
            "postgresql.bin_dir {} holds PostgreSQL {binary}, newer than tested ({range}); going on with the settings of {MAX_TESTED_MAJOR}",
            bin_dir.display()
        )
    });
    Ok(VersionCheck {
        version: binary,
        warning,
    })
}

/// Reads the versions and runs [`check_versions`]: `postgres -V` of `bin_dir` (run with `LC_ALL=C`)
/// and `PG_VERSION` of `data_dir` when that file exists. Reads only; touches nothing. Errors: the
/// program cannot run, its output or PG_VERSION cannot be read, or [`check_versions`] refuses.
pub fn detect(bin_dir: &Path, data_dir: &Path) -> Result<VersionCheck, String> {
    let postgres = bin_dir.join("postgres");
    let out = std::process::Command::new(&postgres)
        .arg("-V")
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| {
            format!(
                "cannot run {} -V (postgresql.bin_dir): {e}",
                postgres.display()
            )
        })?;
    if !out.status.success() {
        return Err(format!(
            "{} -V failed ({}): {}",
            postgres.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let binary = parse_postgres_v(&String::from_utf8_lossy(&out.stdout))
        .map_err(|e| format!("{} -V: {e}", postgres.display()))?;
    let file = data_dir.join("PG_VERSION");
    let data_major = match std::fs::read_to_string(&file) {
        Ok(text) => {
            Some(parse_pg_version_file(&text).map_err(|e| format!("{}: {e}", file.display()))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    check_versions(bin_dir, binary, data_dir, data_major)
}

/// The WAL segment size Patroni's `wal_keep_segments` ↔ `wal_keep_size` translation assumes: 16 MB,
/// initdb's default (Patroni's `postgresql/config.py` converts with the same fixed size).
pub const WAL_SEGMENT_MB: u64 = 16;

/// Parses a `wal_keep_size`-like value into MB: a bare number is MB (the parameter's unit), else
/// `kB`, `MB`, `GB`, `TB` (PostgreSQL's memory units). `None` when unreadable.
pub fn parse_size_mb(value: &str) -> Option<u64> {
    let v = value.trim().trim_matches('\'').trim();
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let n: u64 = v[..digits].parse().ok()?;
    match v[digits..].trim() {
        "" | "MB" => Some(n),
        "kB" => Some(n / 1024),
        "GB" => n.checked_mul(1024),
        "TB" => n.checked_mul(1024 * 1024),
        _ => None,
    }
}

/// Keeps only the WAL retention setting `major` has, translating the user's value the way Patroni
/// does: from 13 on, `wal_keep_segments` (removed in 13: the server refuses to start with it) becomes
/// `wal_keep_size` = segments × 16 MB unless `wal_keep_size` was given explicitly (`explicit_size`),
/// which then wins; before 13, `wal_keep_size` becomes `wal_keep_segments` = size / 16 MB (rounded
/// up). Returns a note for the log per translation. `params` is the merged parameter set.
pub fn adapt_wal_keep(
    params: &mut BTreeMap<String, String>,
    major: u32,
    explicit_size: bool,
) -> Vec<String> {
    let mut notes = Vec::new();
    if major >= 13 {
        if let Some(segments) = params.remove("wal_keep_segments") {
            match segments.trim().trim_matches('\'').parse::<u64>() {
                Ok(n) if !explicit_size => {
                    let size = format!("{}MB", n.saturating_mul(WAL_SEGMENT_MB));
                    notes.push(format!(
                        "wal_keep_segments = {n} written as wal_keep_size = {size} (PostgreSQL {major} has no wal_keep_segments)"
                    ));
                    params.insert("wal_keep_size".into(), size);
                }
                Ok(_) => notes.push(format!(
                    "wal_keep_segments = {segments} dropped: wal_keep_size is set, and PostgreSQL {major} has no wal_keep_segments"
                )),
                Err(_) => notes.push(format!(
                    "wal_keep_segments = {segments:?} dropped: not a number of segments, and PostgreSQL {major} has no wal_keep_segments"
                )),
            }
        }
    } else if let Some(size) = params.remove("wal_keep_size") {
        match parse_size_mb(&size) {
            Some(mb) => {
                let segments = mb.div_ceil(WAL_SEGMENT_MB);
                if !params.contains_key("wal_keep_segments") {
                    params.insert("wal_keep_segments".into(), segments.to_string());
                    notes.push(format!(
                        "wal_keep_size = {size} written as wal_keep_segments = {segments} (PostgreSQL {major} has no wal_keep_size)"
                    ));
                }
            }
            None => notes.push(format!(
                "wal_keep_size = {size:?} dropped: not a size, and PostgreSQL {major} has no wal_keep_size"
            )),
        }
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_v_outputs_parse() {
        let v = |t: &str| parse_postgres_v(t).unwrap();
        assert_eq!(
            v("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"),
            PgVersion(150018)
        );
        assert_eq!(v("postgres (PostgreSQL) 18.6\n"), PgVersion(180006));
        assert_eq!(v("postgres (PostgreSQL) 12.22"), PgVersion(120022));
        assert_eq!(v("postgres (PostgreSQL) 9.6.24"), PgVersion(90624));
        assert_eq!(v("postgres (PostgreSQL) 19devel"), PgVersion(190000));
        assert_eq!(v("postgres (PostgreSQL) 18beta1"), PgVersion(180000));
        assert!(parse_postgres_v("bash: postgres: not found").is_err());
        assert_eq!(PgVersion(180006).to_string(), "18.6");
        assert_eq!(PgVersion(90624).to_string(), "9.6.24");
        assert_eq!(PgVersion(90624).major(), 9);
    }

    #[test]
    fn pg_version_file_parses() {
        assert_eq!(parse_pg_version_file("15\n"), Ok(15));
        assert_eq!(parse_pg_version_file("9.6\n"), Ok(9));
        assert!(parse_pg_version_file("").is_err());
    }

    #[test]
    fn versions_before_13_are_refused_naming_the_version_and_the_range() {
        let (bin, data) = (Path::new("/pg/bin"), Path::new("/data"));
        let err = check_versions(bin, PgVersion(120022), data, None).unwrap_err();
        assert!(err.contains("PostgreSQL 12.22"), "{err}");
        assert!(err.contains("13 to 18"), "{err}");
        assert!(err.contains("/pg/bin"), "{err}");
        let err = check_versions(bin, PgVersion(150004), data, Some(10)).unwrap_err();
        assert!(err.contains("PostgreSQL 10 cluster"), "{err}");
        assert!(err.contains("13 to 18"), "{err}");
        assert!(err.contains("/data"), "{err}");
    }

    #[test]
    fn a_data_directory_of_another_major_is_refused() {
        let err = check_versions(
            Path::new("/pg18/bin"),
            PgVersion(180006),
            Path::new("/data"),
            Some(15),
        )
        .unwrap_err();
        assert!(err.contains("PostgreSQL 15 cluster"), "{err}");
        assert!(err.contains("PostgreSQL 18.6"), "{err}");
    }

    #[test]
    fn supported_versions_pass_and_newer_ones_warn() {
        let (bin, data) = (Path::new("/b"), Path::new("/d"));
        for (v, m) in [(130000, None), (150018, Some(15)), (180006, Some(18))] {
            let ok = check_versions(bin, PgVersion(v), data, m).unwrap();
            assert_eq!(ok.version, PgVersion(v));
            assert_eq!(ok.warning, None);
        }
        let newer = check_versions(bin, PgVersion(190000), data, None).unwrap();
        assert!(newer.warning.unwrap().contains("newer than tested"));
    }

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn wal_keep_segments_becomes_wal_keep_size_from_13_on() {
        let mut p = params(&[("wal_keep_segments", "1000"), ("wal_keep_size", "128MB")]);
        let notes = adapt_wal_keep(&mut p, 15, false);
        assert_eq!(p, params(&[("wal_keep_size", "16000MB")]));
        assert_eq!(notes.len(), 1, "{notes:?}");
        // An explicit wal_keep_size wins; the segments are dropped all the same.
        let mut p = params(&[("wal_keep_segments", "8"), ("wal_keep_size", "1GB")]);
        adapt_wal_keep(&mut p, 18, true);
        assert_eq!(p, params(&[("wal_keep_size", "1GB")]));
        // Nothing to translate: untouched.
        let mut p = params(&[("wal_keep_size", "256MB")]);
        assert!(adapt_wal_keep(&mut p, 18, true).is_empty());
        assert_eq!(p, params(&[("wal_keep_size", "256MB")]));
    }

    #[test]
    fn wal_keep_size_becomes_wal_keep_segments_before_13() {
        let mut p = params(&[("wal_keep_size", "1GB")]);
        adapt_wal_keep(&mut p, 12, true);
        assert_eq!(p, params(&[("wal_keep_segments", "64")]));
        let mut p = params(&[("wal_keep_size", "100")]);
        adapt_wal_keep(&mut p, 12, true);
        assert_eq!(p, params(&[("wal_keep_segments", "7")]), "rounded up");
        assert_eq!(parse_size_mb("2048kB"), Some(2));
        assert_eq!(parse_size_mb("lots"), None);
    }
}
