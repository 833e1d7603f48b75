//! SQL-level named prepared statements (`PREPARE`, `EXECUTE`, `DEALLOCATE`, `DISCARD ALL`) in a
//! client's Query: which statement names the text uses and what each of its statements does to
//! them. Pure: PostgreSQL's own parser (`pg_query`, libpg_query) reads the text; the tracking that
//! uses the answer is [`crate::prepared`].
//!
//! Text that does not parse is left alone (the server reports the syntax error). A cheap
//! pre-check skips the parser for texts that contain none of the four keywords, so that ordinary
//! queries cost a scan of their bytes only.

use std::sync::Arc;

use pg_query::protobuf::{self, node::Node as N};

/// What one statement of a Query does to the session's named prepared statements, when it
/// succeeds (its CommandComplete arrives).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SqlEffect {
    /// `PREPARE name ... AS ...`: `text` is the whole statement as the client wrote it (it makes
    /// the same statement, under the same name, on another server connection).
    Prepare {
        /// The statement name as PostgreSQL stores it (unquoted names folded to lower case).
        name: Box<str>,
        /// The `PREPARE` statement's text.
        text: Arc<str>,
    },
    /// `DEALLOCATE [PREPARE] name`.
    Deallocate(Box<str>),
    /// `DEALLOCATE [PREPARE] ALL` or `DISCARD ALL`: every prepared statement of the session,
    /// protocol-level ones included.
    DeallocateAll,
}

/// How a Query's text uses SQL-level prepared statements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct SqlUse {
    /// The statement names the text prepares, executes (also under `EXPLAIN` and
    /// `CREATE TABLE ... AS EXECUTE`) or deallocates, in order of first use, each once.
    pub names: Vec<Box<str>>,
    /// Per statement of the text, in order: its effect. PostgreSQL answers each statement of a
    /// simple Query with one CommandComplete (or stops at the first error), so the i-th
    /// CommandComplete confirms `effects[i]`.
    pub effects: Vec<Option<SqlEffect>>,
}

/// Words whose presence sends a text to the parser (ASCII case-insensitive).
const KEYWORDS: [&[u8]; 4] = [b"prepare", b"execute", b"deallocate", b"discard"];

/// The first two letters of each of [`KEYWORDS`], lower case: `pr`, `ex`, `de`, `di`.
const PAIRS: [[u8; 2]; 4] = [*b"pr", *b"ex", *b"de", *b"di"];

/// `0x01` in every byte of a word.
const ONES: u64 = u64::from_ne_bytes([0x01; 8]);

/// `byte` in every byte of a word.
const fn splat(byte: u8) -> u64 {
    ONES * byte as u64
}

/// Whether some byte of `x` is zero (the classic bit trick; exact for the question "any").
const fn has_zero_byte(x: u64) -> bool {
    x.wrapping_sub(ONES) & !x & splat(0x80) != 0
}

/// Whether `sql` contains one of [`KEYWORDS`] anywhere (ASCII case-insensitive, not only as a
/// whole word: the parser decides). This runs for every Query of a session that tracks
/// statements (on the raw Query body, before its text is checked as UTF-8), so it looks at 8
/// positions at a time: a word of the bytes at `i..i + 8` and one of those at `i + 1..i + 9`,
/// lowercased with `| 0x20` (which maps a letter to its lower case and no other byte to a
/// letter), are compared with each keyword's first two letters in every byte at once; only a
/// word where some pair matches is checked position by position. In callgrind's profile of
/// pgbench's select, the byte-at-a-time scan this replaces cost ~1,000 instructions per Query.
pub(crate) fn mentions_keyword(sql: &[u8]) -> bool {
    // The shortest keyword has 7 bytes.
    let Some(last) = sql.len().checked_sub(7) else {
        return false;
    };
    let at = |i: usize| {
        let (a, b) = (sql[i] | 0x20, sql[i + 1] | 0x20);
        PAIRS.iter().zip(KEYWORDS).any(|(p, word)| {
            *p == [a, b]
                && sql
                    .get(i..i + word.len())
                    .is_some_and(|w| w.eq_ignore_ascii_case(word))
        })
    };
    let word = |i: usize| {
        let bytes: [u8; 8] = sql[i..i + 8].try_into().expect("8 bytes");
        u64::from_le_bytes(bytes) | splat(0x20)
    };
    let mut i = 0;
    // Positions `i..i + 8` while their second letters (up to `i + 8`) are in `sql`.
    while i + 9 <= sql.len() && i <= last {
        let (first, second) = (word(i), word(i + 1));
        let maybe = PAIRS
            .iter()
            .any(|[a, b]| has_zero_byte((first ^ splat(*a)) | (second ^ splat(*b))));
        if maybe && (i..(i + 8).min(last + 1)).any(at) {
            return true;
        }
        i += 8;
    }
    (i..=last).any(at)
}

/// How `sql` uses SQL-level prepared statements; `None` when it uses none (or does not parse).
pub(crate) fn sql_use(sql: &str) -> Option<SqlUse> {
    if !mentions_keyword(sql.as_bytes()) {
        return None;
    }
    let parsed = pg_query::parse(sql).ok()?;
    let mut found = SqlUse::default();
    let mut any = false;
    for raw in &parsed.protobuf.stmts {
        let node = raw.stmt.as_ref().and_then(|s| s.node.as_ref());
        let effect = match node {
            Some(N::PrepareStmt(p)) => {
                found.note(&p.name);
                Some(SqlEffect::Prepare {
                    name: p.name.as_str().into(),
                    text: praetor_protocol::classify::statement_text(
                        sql,
                        raw.stmt_location,
                        raw.stmt_len,
                    )
                    .trim()
                    .into(),
                })
            }
            Some(N::DeallocateStmt(d)) if d.isall || d.name.is_empty() => {
                Some(SqlEffect::DeallocateAll)
            }
            Some(N::DeallocateStmt(d)) => {
                found.note(&d.name);
                Some(SqlEffect::Deallocate(d.name.as_str().into()))
            }
            Some(N::DiscardStmt(d))
                if protobuf::DiscardMode::try_from(d.target)
                    == Ok(protobuf::DiscardMode::DiscardAll) =>
            {
                Some(SqlEffect::DeallocateAll)
            }
            Some(n) => {
                if let Some(name) = executed(n) {
                    found.note(name);
                    any = true;
                }
                None
            }
            None => None,
        };
        any |= effect.is_some();
        found.effects.push(effect);
    }
    any.then_some(found)
}

impl SqlUse {
    fn note(&mut self, name: &str) {
        if !self.names.iter().any(|n| &**n == name) {
            self.names.push(name.into());
        }
    }
}

/// The statement name an `EXECUTE` runs, at the top or under `EXPLAIN` / `CREATE TABLE AS`.
fn executed(node: &N) -> Option<&str> {
    match node {
        N::ExecuteStmt(e) => Some(&e.name),
        N::ExplainStmt(e) => executed(e.query.as_ref()?.node.as_ref()?),
        N::CreateTableAsStmt(c) => executed(c.query.as_ref()?.node.as_ref()?),
        _ => None,
    }
}

/// `name` as a quoted SQL identifier (`"` doubled inside).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(name: &str, text: &str) -> Option<SqlEffect> {
        Some(SqlEffect::Prepare {
            name: name.into(),
            text: text.into(),
        })
    }

    #[test]
    fn names_and_effects_of_each_statement() {
        let names = |v: &[&str]| v.iter().map(|&n| n.into()).collect::<Vec<Box<str>>>();
        let cases: Vec<(&str, Option<SqlUse>)> = vec![
            ("SELECT 1", None),
            ("SELECT 'prepare'", None),
            ("SELEC prepare", None),
            (
                "PREPARE q (int) AS SELECT $1",
                Some(SqlUse {
                    names: names(&["q"]),
                    effects: vec![prepare("q", "PREPARE q (int) AS SELECT $1")],
                }),
            ),
            (
                "  prepare \"Big\" AS select 1 ;",
                Some(SqlUse {
                    names: names(&["Big"]),
                    effects: vec![prepare("Big", "prepare \"Big\" AS select 1")],
                }),
            ),
            (
                "EXECUTE Q(1)",
                Some(SqlUse {
                    names: names(&["q"]),
                    effects: vec![None],
                }),
            ),
            (
                "EXPLAIN (ANALYZE) EXECUTE q(1); CREATE TEMP TABLE t AS EXECUTE r",
                Some(SqlUse {
                    names: names(&["q", "r"]),
                    effects: vec![None, None],
                }),
            ),
            (
                "DEALLOCATE q; DEALLOCATE PREPARE r; EXECUTE q",
                Some(SqlUse {
                    names: names(&["q", "r"]),
                    effects: vec![
                        Some(SqlEffect::Deallocate("q".into())),
                        Some(SqlEffect::Deallocate("r".into())),
                        None,
                    ],
                }),
            ),
            (
                "SELECT 1; DEALLOCATE ALL",
                Some(SqlUse {
                    names: vec![],
                    effects: vec![None, Some(SqlEffect::DeallocateAll)],
                }),
            ),
            (
                "DISCARD ALL",
                Some(SqlUse {
                    names: vec![],
                    effects: vec![Some(SqlEffect::DeallocateAll)],
                }),
            ),
            ("DISCARD PLANS", None),
            // PL/pgSQL's EXECUTE is in a string: no statement name.
            ("DO $$BEGIN EXECUTE 'SELECT 1'; END$$", None),
            ("GRANT EXECUTE ON FUNCTION f() TO public", None),
        ];
        for (sql, want) in cases {
            assert_eq!(sql_use(sql), want, "{sql}");
        }
    }

    /// The transaction pool skips the keyword scan of a Query the classifier's lexer decided
    /// (`Classifier::classify_lexed`): for every such text the parser would find no statement use.
    #[test]
    fn a_query_the_classifiers_lexer_decided_uses_no_prepared_statement() {
        let classifier = praetor_protocol::Classifier::default();
        let cases: &[(&str, bool)] = &[
            ("", true),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 1;", true),
            ("SELECT 'prepare execute deallocate discard'", true),
            ("select prepare, execute, deallocate, discard from t", true),
            ("WITH x AS (SELECT 1) SELECT * FROM x", true),
            ("INSERT INTO execute_log VALUES ('EXECUTE p')", true),
            ("update prepared set discard = 1", true),
            ("COMMIT PREPARED 'deallocate'", true),
            ("ROLLBACK", true),
            ("SHOW discard", true),
            // The parser decides these: the scan runs.
            ("PREPARE p AS SELECT 1", false),
            ("EXECUTE p", false),
            ("EXPLAIN EXECUTE p", false),
            ("CREATE TABLE t AS EXECUTE p", false),
            ("DEALLOCATE ALL", false),
            ("DISCARD ALL", false),
            ("SELECT 1; EXECUTE p", false),
            ("SELECT 1; DEALLOCATE ALL", false),
            ("/* c */ EXECUTE p", false),
            ("(SELECT 1)", false),
        ];
        for (sql, lexed) in cases {
            assert_eq!(classifier.classify_lexed(sql).1, *lexed, "{sql:?}");
            if *lexed {
                assert_eq!(sql_use(sql), None, "{sql:?}");
            }
        }
    }

    #[test]
    fn the_keyword_scan_finds_each_keyword_anywhere_in_any_case() {
        let cases: &[(&str, bool)] = &[
            ("", false),
            ("SELECT 1", false),
            ("prepare", true),
            ("x PrePare", true),
            ("xEXECUTEx", true),
            ("SELECT 'deallocate'", true),
            ("DISCARD", true),
            ("discar", false),
            ("prepar", false),
            ("deallocat discard", true),
            // `| 0x20` maps a control byte to a digit or punctuation, never to a keyword's letter.
            ("\u{10}repare 0xecute", false),
        ];
        for (sql, want) in cases {
            let windowed = KEYWORDS.iter().any(|k| {
                sql.as_bytes()
                    .windows(k.len())
                    .any(|w| w.eq_ignore_ascii_case(k))
            });
            assert_eq!(mentions_keyword(sql.as_bytes()), *want, "{sql:?}");
            assert_eq!(windowed, *want, "{sql:?}: the windowed scan it replaces");
        }
    }

    #[test]
    fn the_word_at_a_time_scan_agrees_with_a_windowed_scan_at_every_position_and_length() {
        let windowed = |sql: &[u8]| {
            KEYWORDS
                .iter()
                .any(|k| sql.windows(k.len()).any(|w| w.eq_ignore_ascii_case(k)))
        };
        // Fillers with near misses (`pr`, `ex`, `de`, `di` starts), upper-case letters, bytes
        // that `| 0x20` moves, and non-ASCII bytes.
        let fillers: &[&[u8]] = &[
            b"x",
            b"pre",
            b"EXEC",
            b"de ",
            b"dI",
            b"\x10\xc3\xa9@P",
            b"SELECT ",
        ];
        for word in [
            "prepare",
            "EXECUTE",
            "DeAllocate",
            "discard",
            "prepar",
            "discar",
        ] {
            for filler in fillers {
                for before in 0..20 {
                    for after in 0..10 {
                        let mut sql = filler
                            .repeat(before)
                            .into_iter()
                            .take(before)
                            .collect::<Vec<_>>();
                        sql.extend_from_slice(word.as_bytes());
                        sql.extend(filler.repeat(after).into_iter().take(after));
                        assert_eq!(mentions_keyword(&sql), windowed(&sql), "{sql:?}");
                        // Cut short at every length too.
                        for len in 0..sql.len() {
                            assert_eq!(mentions_keyword(&sql[..len]), windowed(&sql[..len]));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("q"), "\"q\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
