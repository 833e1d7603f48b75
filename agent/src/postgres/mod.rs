//! PostgreSQL as the agent drives it: processes, files, queries.
//!
//! - [`files`]: pure parsers and renderers (pg_controldata output, `postmaster.pid`, timeline history
//!   files, postgresql.conf, primary_conninfo, .pgpass). Unit-tested without PostgreSQL.
//! - [`fence`]: stopping a former primary before a replica promotes.
//! - [`postmaster`]: whether the PID in `postmaster.pid` is our postmaster (start time and data
//!   directory), so that a reused PID is never signalled.
//! - [`instance`]: the [`Instance`] that runs initdb, starts/stops/promotes the postmaster, runs
//!   pg_basebackup and pg_rewind, and queries the server's state.
//! - [`version`]: the PostgreSQL major (13 to 18 supported) and the settings that differ by major.

pub mod fence;
pub mod files;
pub mod instance;
pub mod postmaster;
pub mod version;

pub use instance::{Instance, InstanceSettings, PgError, ServerStatus, StartRole};

/// Formats a WAL position (bytes) the way PostgreSQL prints `pg_lsn`: `0/3000060`.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// Parses PostgreSQL's `pg_lsn` text (`16/B374D848`) into bytes.
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
        return None;
    }
    Some((hi << 32) | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(format_lsn((0x16 << 32) | 0xB374D848), "16/B374D848");
        assert_eq!(parse_lsn("nonsense"), None);
        assert_eq!(parse_lsn("1/FFFFFFFFF"), None);
    }
}
