//! WAL positions (LSNs) in PostgreSQL's text form.
//!
//! PostgreSQL prints a `pg_lsn` as two hexadecimal numbers, the high and the low 32 bits of the
//! byte position, separated by a slash (`16/B374D848`; `pg_lsn_out` in PostgreSQL's
//! `src/backend/utils/adt/pg_lsn.c`). The agent reads them from its queries and `pg_controldata`,
//! the proxy from `pg_current_wal_lsn()` answers for read-your-writes, the tests' harness from
//! `test_decoding` output.

/// Parses `pg_lsn` text (`16/B374D848`, surrounding white space allowed) into a byte position.
///
/// `None` when the text is not two hexadecimal halves of at most 32 bits each around one `/`
/// (PostgreSQL rejects the same inputs).
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// Formats a byte position as PostgreSQL prints a `pg_lsn`: `0/3000060`, upper-case hex digits.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_print_as_postgresql_does() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("0/3000060"), Some(0x300_0060));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374_D848));
        assert_eq!(parse_lsn(" FFFFFFFF/FFFFFFFF\n"), Some(u64::MAX));
        assert!(parse_lsn("16/B374D848") > parse_lsn("15/FFFFFFFF"));
        for bad in [
            "",
            "0",
            "x/1",
            "1/",
            "/1",
            "100000000/0",
            "nonsense",
            "'0/1'",
        ] {
            assert_eq!(parse_lsn(bad), None, "{bad:?}");
        }
        assert_eq!(format_lsn((0x16 << 32) | 0xB374_D848), "16/B374D848");
        assert_eq!(format_lsn(0x300_0060), "0/3000060");
        for lsn in [0, 1, 0x1_0000_0000, u64::MAX] {
            assert_eq!(parse_lsn(&format_lsn(lsn)), Some(lsn));
        }
    }
}
