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

/// Bytes that may start one of [`KEYWORDS`]: `p`, `e`, `d` in either case.
const STARTS: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 3 {
        let c = b"ped"[i];
        t[c as usize] = true;
        t[c.to_ascii_uppercase() as usize] = true;
        i += 1;
    }
    t
};

/// Whether `sql` contains one of [`KEYWORDS`] anywhere (ASCII case-insensitive, not only as a
/// whole word: the parser decides). One pass over the bytes, as this runs for every Query of a
/// session that tracks statements (the raw Query body: before its text is checked as UTF-8): a
/// table lookup per byte, then the first two letters (`| 0x20` lowercases a letter and maps no
/// other byte to one), then the word; in callgrind's profile of pgbench's select the earlier
/// per-byte `match` with a comparison at every `e`, `p`, `d` cost ~900 instructions per Query.
pub(crate) fn mentions_keyword(sql: &[u8]) -> bool {
    let is = |i: usize, word: &[u8]| {
        sql.get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    // The shortest keyword has 7 bytes.
    let Some(last) = sql.len().checked_sub(7) else {
        return false;
    };
    (0..=last).any(|i| {
        STARTS[usize::from(sql[i])]
            && match (sql[i] | 0x20, sql[i + 1] | 0x20) {
                (b'p', b'r') => is(i, KEYWORDS[0]),
                (b'e', b'x') => is(i, KEYWORDS[1]),
                (b'd', b'e') => is(i, KEYWORDS[2]),
                (b'd', b'i') => is(i, KEYWORDS[3]),
                _ => false,
            }
    })
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
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(quote_ident("q"), "\"q\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
