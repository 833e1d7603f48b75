//! Where a statement may run: read-only on a replica, or on the leader, or does it need the session
//! pinned to one server. The auto port's routing decision, as a pure function of the SQL text.
//!
//! Two stages, both erring toward the leader:
//!
//! 1. A lexer that knows PostgreSQL's quoting (strings, `E''` escapes, dollar quotes, quoted
//!    identifiers, nested comments) decides the common cases in well under a microsecond: a single
//!    `SELECT`/`VALUES`/`TABLE`/`WITH`/`SHOW` whose tokens contain no locking clause (`FOR UPDATE`,
//!    `FOR SHARE`, ...), no `INTO`, no data-modifying keyword and no call of a function outside a list
//!    of known read-only ones is a read; a single `INSERT`/`UPDATE`/`DELETE`/... is a write.
//! 2. Everything else goes through PostgreSQL's own parser (`pg_query`, libpg_query): transaction
//!    statements and their `READ ONLY`/isolation options, `SET` versus `SET LOCAL`, temporary
//!    tables, `LISTEN`, `PREPARE`, cursors `WITH HOLD`, `EXPLAIN ANALYZE`, `COPY` directions,
//!    several statements in one query. Results of this stage are cached by text, in an LRU cache
//!    bounded in bytes (`praetor.proxy.classifier_cache_size`, [`DEFAULT_CACHE_BYTES`]).
//!
//! A function the lexer does not know might write (`nextval`, a user's PL/pgSQL), so a call to it
//! sends the statement to the leader; `praetor.proxy.read_only_functions` extends the list. A
//! schema-qualified call is read-only only when qualified with `pg_catalog` (`app.count()` is a
//! user's function, whatever its name).
//!
//! Where the text cannot be read with certainty, the statement goes to the leader:
//! - a plain string constant containing a backslash: with `standard_conforming_strings = off`
//!   (a session setting the proxy does not follow) `'it\'s'` is one string, while the lexer and
//!   the parser read it as PostgreSQL's default (`on`) does, so where strings end is uncertain: a
//!   read goes to the leader, a `BEGIN READ ONLY` to the leader, a session `SET` pins;
//! - field selection on a parenthesized expression, `(f(x)).col` or `(t).fullname`: PostgreSQL's
//!   function-call attribute notation makes `(t).fullname` a call of `fullname(t)`.
//!
//! Known limit, by choice: `t.fullname` on a plain qualified name is either a column or (when no
//! column `fullname` exists) a call of `fullname(t)`; only the catalog tells, so it is read as a
//! column. Treating every qualified name as a possible call would send ORMs' table-qualified
//! column references (`"users"."id"`) to the leader. A function so called that writes is refused
//! by the replica with 25006 before any row is sent, and the auto port then runs the statement on
//! the leader (`unit::RETRY_ON_LEADER`); one that writes only after rows were sent fails as on a
//! standby (or list the database under `databases: {<db>: {target: primary}}`).

use std::collections::HashSet;
use std::fmt;
use std::sync::Mutex;

use hashlink::LruCache;
use pg_query::protobuf::{self, node::Node as N};
use smallvec::SmallVec;

/// Where one statement (or one Query message of several statements) can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Only reads: a replica can run it.
    Read,
    /// Writes, or might: the leader.
    Write,
    /// `BEGIN` / `START TRANSACTION`; `read_only` when declared `READ ONLY` and not `SERIALIZABLE`
    /// (a hot standby refuses serializable transactions).
    Begin {
        /// The transaction declared it only reads.
        read_only: bool,
    },
    /// `COMMIT`, `ROLLBACK`, `SAVEPOINT`, `SET LOCAL`, ...: runs where the transaction runs.
    TxControl,
    /// A session-level `SET`/`RESET`/`DISCARD`: runs on the leader, and is replayed on every other
    /// server the session uses.
    SessionSet,
    /// Creates session state a later statement depends on: the session stays on one server.
    Pin(PinReason),
}

/// Why a session is pinned to one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PinReason {
    /// A named prepared statement (protocol-level Parse, or SQL `PREPARE`).
    PreparedStatement,
    /// `CREATE TEMP TABLE` (or sequence, view).
    TempObject,
    /// `LISTEN` / `UNLISTEN`.
    Listen,
    /// A session-level advisory lock function.
    AdvisoryLock,
    /// `DECLARE ... WITH HOLD`.
    HoldCursor,
    /// `SET SESSION CHARACTERISTICS`, `set_config(..., false)` and the like.
    SessionSetting,
    /// A session-level `SET` inside a transaction block or a multi-statement query.
    SetInTransaction,
    /// A COPY or function call sub-protocol the proxy does not follow across servers.
    Protocol,
}

impl fmt::Display for PinReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PinReason::PreparedStatement => "named prepared statement",
            PinReason::TempObject => "temporary object",
            PinReason::Listen => "LISTEN",
            PinReason::AdvisoryLock => "session advisory lock",
            PinReason::HoldCursor => "cursor WITH HOLD",
            PinReason::SessionSetting => "session characteristics",
            PinReason::SetInTransaction => "SET in a transaction block or multi-statement query",
            PinReason::Protocol => "function call protocol",
        })
    }
}

impl Class {
    /// True when a replica can run it.
    pub fn is_read(&self) -> bool {
        matches!(self, Class::Read | Class::Begin { read_only: true })
    }

    /// Combines the classes of several statements of one message: a pin wins, then anything
    /// that needs the leader; a set of reads is a read. A named prepared statement is the weakest
    /// pin (a proxy that tracks them per client drops it): any other pin, or a session `SET`,
    /// wins over it.
    fn combine(self, other: Class) -> Class {
        use Class::*;
        match (self, other) {
            (Pin(PinReason::PreparedStatement), o) | (o, Pin(PinReason::PreparedStatement)) => {
                match o {
                    Pin(r) => Pin(r),
                    SessionSet => Pin(PinReason::SetInTransaction),
                    _ => Pin(PinReason::PreparedStatement),
                }
            }
            (Pin(r), _) | (_, Pin(r)) => Pin(r),
            (SessionSet, _) | (_, SessionSet) => Pin(PinReason::SetInTransaction),
            (Read, Read) => Read,
            (Read | TxControl, TxControl) | (TxControl, Read) => Read,
            (Begin { read_only: true }, Read | TxControl) => Begin { read_only: true },
            _ => Write,
        }
    }
}

/// Functions known not to write and to work on a hot standby, by lower-case name (a schema
/// qualifier is ignored). Aggregates, window functions and the usual scalar functions.
const READ_ONLY_FUNCTIONS: &[&str] = &[
    "abs",
    "age",
    "array_agg",
    "array_length",
    "array_position",
    "array_to_string",
    "avg",
    "bit_length",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "clock_timestamp",
    "concat",
    "concat_ws",
    "count",
    "cume_dist",
    "current_database",
    "current_schema",
    "current_schemas",
    "current_setting",
    "date_part",
    "date_trunc",
    "decode",
    "dense_rank",
    "encode",
    "every",
    "exp",
    "first_value",
    "floor",
    "format",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "has_table_privilege",
    "inet_server_addr",
    "inet_server_port",
    "initcap",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_set",
    "jsonb_typeof",
    "json_agg",
    "json_array_elements",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_extract_path",
    "json_extract_path_text",
    "json_object_agg",
    "lag",
    "last_value",
    "lead",
    "left",
    "length",
    "ln",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_timestamp",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "octet_length",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    "pg_backend_pid",
    "pg_database_size",
    "pg_is_in_recovery",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_postmaster_start_time",
    "pg_relation_size",
    "pg_size_pretty",
    "pg_sleep",
    "pg_table_size",
    "pg_total_relation_size",
    "pg_typeof",
    "pg_wal_lsn_diff",
    "power",
    "random",
    "rank",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "sign",
    "split_part",
    "sqrt",
    "statement_timestamp",
    "starts_with",
    "stddev",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "sum",
    "timeofday",
    "to_char",
    "to_date",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trunc",
    "unnest",
    "upper",
    "variance",
    "version",
];

/// Keywords that may stand before `(` without being a function call.
const KEYWORDS_BEFORE_PAREN: &[&str] = &[
    "all",
    "and",
    "any",
    "array",
    "as",
    "between",
    "by",
    "case",
    "cast",
    "coalesce",
    "cube",
    "distinct",
    "else",
    "except",
    "exists",
    "extract",
    "filter",
    "from",
    "greatest",
    "grouping",
    "ilike",
    "in",
    "intersect",
    "interval",
    "is",
    "join",
    "lateral",
    "least",
    "like",
    "limit",
    "not",
    "nullif",
    "numeric",
    "decimal",
    "varchar",
    "char",
    "character",
    "bit",
    "offset",
    "on",
    "or",
    "over",
    "overlay",
    "partition",
    "position",
    "rollup",
    "row",
    "select",
    "sets",
    "similar",
    "some",
    "substring",
    "then",
    "timestamp",
    "time",
    "trim",
    "union",
    "using",
    "values",
    "when",
    "where",
    "with",
    "within",
    "float",
    "bpchar",
    "escape",
    "returning",
    "lateral",
    "table",
    "tablesample",
    "repeatable",
    "order",
    "group",
    "having",
    "window",
    "rows",
    "range",
    "groups",
    "only",
    "asc",
    "desc",
    "nulls",
];

/// Session-level advisory lock functions (the `_xact_` variants end with the transaction).
const SESSION_LOCK_FUNCTIONS: &[&str] = &[
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
];

/// Settings whose value on a hot standby differs from the leader's for every session:
/// `transaction_read_only` (forced `on` during recovery, PostgreSQL's
/// `check_transaction_read_only`) and `in_hot_standby` (whose leader value the client got as a
/// ParameterStatus at login). Drivers read them to find a writable server (libpq's
/// `target_session_attrs=read-write` runs `SHOW transaction_read_only` on servers before 14): on
/// the auto port a read naming one (anywhere in its text, lower or upper case) runs on the leader.
/// `pg_is_in_recovery()` is left out on purpose: it shows where a read ran.
pub const LEADER_STATE_NAMES: &[&str] = &["transaction_read_only", "in_hot_standby"];

/// Whether `sql` names one of [`LEADER_STATE_NAMES`] as a whole word (ASCII case-insensitive;
/// `default_transaction_read_only` is the same everywhere and does not count).
fn asks_for_leader_state(sql: &str) -> bool {
    let bytes = sql.as_bytes();
    // This runs for every read the auto port routes. Every name holds an underscore, so a name is
    // compared only where its first underscore would fall on one of the text's underscores, which
    // `memchr` finds (most statements have few or none).
    memchr::memchr_iter(b'_', bytes).any(|underscore| {
        LEADER_STATE_NAMES.iter().any(|name| {
            let name = name.as_bytes();
            let first = name.iter().position(|&c| c == b'_').unwrap_or(0);
            let Some(i) = underscore.checked_sub(first) else {
                return false;
            };
            bytes
                .get(i..i + name.len())
                .is_some_and(|w| w.eq_ignore_ascii_case(name))
                && (i == 0 || !is_ident(bytes[i - 1]))
                && bytes.get(i + name.len()).is_none_or(|&c| !is_ident(c))
        })
    })
}

/// Default of `praetor.proxy.classifier_cache_size`: how many bytes of SQL text (plus
/// [`CACHE_ENTRY_OVERHEAD`] per entry) the parser's result cache keeps, 16 MiB.
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

/// What one cache entry costs besides its text, in bytes (the key's header, the class, the LRU
/// list's links and the hash table's slot, rounded up).
pub const CACHE_ENTRY_OVERHEAD: usize = 64;

/// The parser's results by SQL text, least recently used first out once over `limit` bytes.
struct Cache {
    map: LruCache<String, Class>,
    bytes: usize,
    limit: usize,
}

impl Cache {
    fn cost(sql: &str) -> usize {
        sql.len() + CACHE_ENTRY_OVERHEAD
    }

    fn get(&mut self, sql: &str) -> Option<Class> {
        self.map.get(sql).copied()
    }

    /// Keeps `class` for `sql` unless the text alone takes more than an eighth of the budget (a
    /// huge statement would evict everything for one entry that is rarely sent twice).
    fn insert(&mut self, sql: &str, class: Class) {
        let cost = Cache::cost(sql);
        if cost > self.limit / 8 {
            return;
        }
        if self.map.insert(sql.to_string(), class).is_some() {
            return; // the same text again: the same cost
        }
        self.bytes += cost;
        while self.bytes > self.limit {
            match self.map.remove_lru() {
                Some((k, _)) => self.bytes -= Cache::cost(&k),
                None => break,
            }
        }
    }
}

/// The statement classifier: the read-only function list and the parser's result cache.
pub struct Classifier {
    read_only_functions: HashSet<String>,
    cache: Mutex<Cache>,
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Classifier")
            .field("read_only_functions", &self.read_only_functions.len())
            .finish()
    }
}

impl Default for Classifier {
    fn default() -> Classifier {
        Classifier::new(&[])
    }
}

impl Classifier {
    /// A classifier that also treats `extra_read_only_functions` (lower-case names) as read-only,
    /// with a cache of [`DEFAULT_CACHE_BYTES`].
    pub fn new(extra_read_only_functions: &[String]) -> Classifier {
        Classifier::with_cache_bytes(extra_read_only_functions, DEFAULT_CACHE_BYTES)
    }

    /// A classifier whose parser-result cache holds at most `cache_bytes` bytes (SQL text plus
    /// [`CACHE_ENTRY_OVERHEAD`] per entry; 0 disables the cache).
    pub fn with_cache_bytes(
        extra_read_only_functions: &[String],
        cache_bytes: usize,
    ) -> Classifier {
        let mut read_only_functions: HashSet<String> =
            READ_ONLY_FUNCTIONS.iter().map(|s| s.to_string()).collect();
        read_only_functions.extend(extra_read_only_functions.iter().map(|f| f.to_lowercase()));
        Classifier {
            read_only_functions,
            cache: Mutex::new(Cache {
                map: LruCache::new_unbounded(),
                bytes: 0,
                limit: cache_bytes,
            }),
        }
    }

    /// Bytes the parser-result cache holds now (SQL text plus the per-entry overhead) and its
    /// number of entries.
    pub fn cache_usage(&self) -> (usize, usize) {
        let c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        (c.bytes, c.map.len())
    }

    /// Classifies the SQL text of a Query or Parse message.
    ///
    /// A read that asks whether the server is a standby (see [`LEADER_STATE_NAMES`]) is a
    /// [`Class::Write`]: it runs on the leader and answers as a direct connection to it would.
    pub fn classify(&self, sql: &str) -> Class {
        self.classify_lexed(sql).0
    }

    /// [`Classifier::classify`], and whether the lexer stage alone decided (`true`). Then `sql`
    /// is one statement (a final `;` aside) whose first word is one the lexer knows (`SELECT`,
    /// `VALUES`, `TABLE`, `WITH`, `SHOW`, `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `TRUNCATE`,
    /// `ALTER`, `DROP`, `GRANT`, `REVOKE`, `COMMIT`, `END`, `ROLLBACK`, `ABORT`, `SAVEPOINT`,
    /// `RELEASE`), or empty: it is no `PREPARE`, `EXECUTE`, `DEALLOCATE` or `DISCARD`, which the
    /// transaction pool's statement tracking needs not look for.
    pub fn classify_lexed(&self, sql: &str) -> (Class, bool) {
        let (class, lexed) = self.classify_statements(sql);
        if class == Class::Read && asks_for_leader_state(sql) {
            return (Class::Write, lexed);
        }
        (class, lexed)
    }

    fn classify_statements(&self, sql: &str) -> (Class, bool) {
        let uncertain = lexing_uncertain(sql);
        if !uncertain {
            if let Some(class) = self.fast(sql) {
                return (class, true);
            }
        }
        let cache = || self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(class) = cache().get(sql) {
            return (class, false);
        }
        let mut class = self.parsed(sql);
        if uncertain {
            // Where strings end is uncertain: nothing that could run elsewhere than the leader.
            class = match class {
                Class::Read => Class::Write,
                Class::Begin { .. } => Class::Begin { read_only: false },
                Class::SessionSet => Class::Pin(PinReason::SessionSetting),
                other => other,
            };
        }
        cache().insert(sql, class);
        (class, false)
    }

    /// The lexer stage: `Some` when the tokens decide, `None` when the parser must.
    fn fast(&self, sql: &str) -> Option<Class> {
        let mut tokens = Tokens::new();
        tokens_into(sql, &mut tokens)?;
        let significant: &[Token] = match tokens.split_last() {
            Some((Token::Punct(b';'), rest)) => rest,
            _ => &tokens,
        };
        if significant.contains(&Token::Punct(b';')) {
            return None; // several statements
        }
        let first = match significant.first() {
            Some(Token::Word(w)) => *w,
            None => return Some(Class::Read), // empty query
            _ => return None,
        };
        let is = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
        if ["select", "values", "table", "with", "show"]
            .iter()
            .any(|k| is(first, k))
        {
            return self.select_tokens(significant);
        }
        if [
            "insert", "update", "delete", "merge", "truncate", "alter", "drop", "grant", "revoke",
        ]
        .iter()
        .any(|k| is(first, k))
        {
            return Some(Class::Write);
        }
        if ["commit", "end", "rollback", "abort", "savepoint", "release"]
            .iter()
            .any(|k| is(first, k))
        {
            let prepared = significant
                .iter()
                .any(|t| matches!(t, Token::Word(w) if is(w, "prepared")));
            return Some(if prepared {
                Class::Write
            } else {
                Class::TxControl
            });
        }
        None
    }

    /// Classifies the tokens of one SELECT-like statement: `Some(Read)`, `Some(Write)`, or `None`
    /// when a session-level function needs the parser's opinion.
    fn select_tokens(&self, tokens: &[Token]) -> Option<Class> {
        let is = |w: &str, k: &str| w.eq_ignore_ascii_case(k);
        for (i, t) in tokens.iter().enumerate() {
            let next = tokens.get(i + 1);
            match t {
                Token::Word(w) => {
                    if is(w, "for")
                        && matches!(next, Some(Token::Word(n)) if ["update", "share", "no", "key"].iter().any(|k| is(n, k)))
                    {
                        return Some(Class::Write); // locking clause
                    }
                    if ["into", "insert", "update", "delete", "merge"]
                        .iter()
                        .any(|k| is(w, k))
                    {
                        return Some(Class::Write);
                    }
                    if next == Some(&Token::Punct(b'(')) {
                        let mut stack = [0u8; 64];
                        let lower = lowercase_in(w, &mut stack);
                        let lower: &str = &lower;
                        // `schema.f(...)`: the known names are pg_catalog's; `app.count()` is not.
                        let qualifier = match i.checked_sub(2).map(|q| (&tokens[q], &tokens[q + 1]))
                        {
                            Some((Token::Word(q), Token::Punct(b'.'))) => Some(Some(*q)),
                            Some((_, Token::Punct(b'.'))) => Some(None),
                            _ => None,
                        };
                        let known = match qualifier {
                            None => true,
                            Some(Some(q)) => q.eq_ignore_ascii_case("pg_catalog"),
                            Some(None) => false,
                        };
                        if known
                            && (KEYWORDS_BEFORE_PAREN.contains(&lower)
                                || self.read_only_functions.contains(lower))
                        {
                            continue;
                        }
                        if SESSION_LOCK_FUNCTIONS.contains(&lower) || lower == "set_config" {
                            return None;
                        }
                        return Some(Class::Write); // a function that might write
                    }
                }
                Token::Quoted if next == Some(&Token::Punct(b'(')) => return Some(Class::Write),
                // `(expr).name`: function-call attribute notation may call `name(expr)`.
                Token::Punct(b')')
                    if next == Some(&Token::Punct(b'.'))
                        && matches!(tokens.get(i + 2), Some(Token::Word(_) | Token::Quoted)) =>
                {
                    return Some(Class::Write)
                }
                _ => {}
            }
        }
        Some(Class::Read)
    }

    /// The parser stage.
    fn parsed(&self, sql: &str) -> Class {
        let Ok(parsed) = pg_query::parse(sql) else {
            return Class::Write; // the leader reports the syntax error
        };
        let mut result: Option<Class> = None;
        for raw in &parsed.protobuf.stmts {
            let Some(node) = raw.stmt.as_ref().and_then(|s| s.node.as_ref()) else {
                continue;
            };
            let text = statement_text(sql, raw.stmt_location, raw.stmt_len);
            let class = self.statement(node, text);
            result = Some(match result {
                None => class,
                Some(r) => r.combine(class),
            });
        }
        result.unwrap_or(Class::Read)
    }

    /// The class of one parsed statement whose text is `text`.
    fn statement(&self, node: &N, text: &str) -> Class {
        match node {
            N::SelectStmt(s) => {
                if s.into_clause.is_some() {
                    return Class::Write;
                }
                self.select_text(text)
            }
            N::VariableShowStmt(_) => Class::Read,
            N::TransactionStmt(t) => transaction(t),
            N::VariableSetStmt(s) => {
                let kind = protobuf::VariableSetKind::try_from(s.kind);
                if s.is_local {
                    Class::TxControl
                } else if kind == Ok(protobuf::VariableSetKind::VarSetMulti) {
                    if s.name.eq_ignore_ascii_case("TRANSACTION") {
                        Class::TxControl
                    } else {
                        Class::Pin(PinReason::SessionSetting)
                    }
                } else {
                    Class::SessionSet
                }
            }
            N::DiscardStmt(_) => Class::SessionSet,
            N::ListenStmt(_) | N::UnlistenStmt(_) => Class::Pin(PinReason::Listen),
            N::PrepareStmt(_) => Class::Pin(PinReason::PreparedStatement),
            N::DeclareCursorStmt(d) => {
                const CURSOR_OPT_HOLD: i32 = 0x0020;
                if d.options & CURSOR_OPT_HOLD != 0 {
                    Class::Pin(PinReason::HoldCursor)
                } else {
                    self.inner(d.query.as_deref(), text)
                }
            }
            N::CreateStmt(c) if is_temp(c.relation.as_ref()) => Class::Pin(PinReason::TempObject),
            N::CreateTableAsStmt(c) if is_temp(c.into.as_ref().and_then(|i| i.rel.as_ref())) => {
                Class::Pin(PinReason::TempObject)
            }
            N::ViewStmt(v) if is_temp(v.view.as_ref()) => Class::Pin(PinReason::TempObject),
            N::CreateSeqStmt(s) if is_temp(s.sequence.as_ref()) => {
                Class::Pin(PinReason::TempObject)
            }
            N::ExplainStmt(e) => {
                let inner = self.inner(e.query.as_deref(), text);
                if inner.is_read() {
                    Class::Read
                } else {
                    Class::Write
                }
            }
            N::CopyStmt(c) => {
                if c.is_from || c.is_program || !c.filename.is_empty() {
                    Class::Write
                } else if c.query.is_some() {
                    match self.inner(c.query.as_deref(), text) {
                        Class::Read => Class::Read,
                        _ => Class::Write,
                    }
                } else {
                    Class::Read
                }
            }
            _ => Class::Write,
        }
    }

    /// The class of a statement nested in `outer_text` (EXPLAIN, DECLARE, COPY): a SELECT is judged
    /// on the whole text's tokens (conservative: they include the outer statement's).
    fn inner(&self, query: Option<&protobuf::Node>, outer_text: &str) -> Class {
        match query.and_then(|q| q.node.as_ref()) {
            Some(N::SelectStmt(s)) if s.into_clause.is_none() => self.select_text(outer_text),
            Some(other) => match self.statement(other, outer_text) {
                Class::Read => Class::Read,
                _ => Class::Write,
            },
            None => Class::Write,
        }
    }

    /// A SELECT judged on its tokens, with session-level functions pinning.
    fn select_text(&self, text: &str) -> Class {
        let mut tokens = Tokens::new();
        if tokens_into(text, &mut tokens).is_none() {
            return Class::Write;
        }
        let start = tokens
            .iter()
            .position(|t| matches!(t, Token::Word(w) if ["select", "values", "table", "with"].iter().any(|k| w.eq_ignore_ascii_case(k))))
            .unwrap_or(0);
        match self.select_tokens(&tokens[start..]) {
            Some(class) => class,
            None => Class::Pin(
                if tokens
                    .iter()
                    .any(|t| matches!(t, Token::Word(w) if w.eq_ignore_ascii_case("set_config")))
                {
                    PinReason::SessionSetting
                } else {
                    PinReason::AdvisoryLock
                },
            ),
        }
    }
}

/// `word` in ASCII lower case, written into `stack` when it fits (function names do: no allocation
/// per call the classifier looks up).
fn lowercase_in<'s>(word: &str, stack: &'s mut [u8; 64]) -> std::borrow::Cow<'s, str> {
    match stack.get_mut(..word.len()) {
        Some(buf) => {
            buf.copy_from_slice(word.as_bytes());
            buf.make_ascii_lowercase();
            // Lowercasing ASCII letters keeps UTF-8 valid: this cannot fail.
            match std::str::from_utf8(buf) {
                Ok(lower) => std::borrow::Cow::Borrowed(lower),
                Err(_) => std::borrow::Cow::Owned(word.to_ascii_lowercase()),
            }
        }
        None => std::borrow::Cow::Owned(word.to_ascii_lowercase()),
    }
}

/// Appends the tokens of `sql` to `tokens`; `None` when the lexer cannot tell them ([`Lexer`]). A
/// typical statement's tokens fit on the stack (no allocation per statement routed); longer ones
/// move to the heap. Filled in place rather than returned: the stack array (~800 bytes) was copied
/// twice on its way out (~200 instructions per statement in callgrind's profile of pgbench's select).
fn tokens_into<'a>(sql: &'a str, tokens: &mut Tokens<'a>) -> Option<()> {
    for token in Lexer::new(sql) {
        tokens.push(token?);
    }
    Some(())
}

/// A statement's tokens, [`TOKENS_ON_STACK`] of them without allocating.
type Tokens<'a> = SmallVec<[Token<'a>; TOKENS_ON_STACK]>;

/// How many tokens [`tokens_into`] keeps on the stack (24 bytes each).
const TOKENS_ON_STACK: usize = 32;

/// Whether a plain (not `E''`) string constant in `sql` contains a backslash: its end depends on
/// `standard_conforming_strings`, which the proxy does not follow. Scans with the lexer's rules for
/// comments, quoted identifiers and dollar quotes; text the lexer cannot tokenize counts as
/// uncertain too.
fn lexing_uncertain(sql: &str) -> bool {
    if memchr::memchr(b'\\', sql.as_bytes()).is_none() {
        return false;
    }
    let mut lexer = Lexer::new(sql);
    lexer.track_backslashes = true;
    for token in lexer.by_ref() {
        if token.is_none() {
            return true;
        }
    }
    lexer.saw_plain_backslash
}

/// The text of one statement of `sql`, from pg_query's `stmt_location` and `stmt_len` (bytes;
/// `len` 0: to the end of `sql`), clamped to `sql`; all of `sql` when the range splits a character.
pub fn statement_text(sql: &str, location: i32, len: i32) -> &str {
    let start = usize::try_from(location).unwrap_or(0).min(sql.len());
    let end = if len <= 0 {
        sql.len()
    } else {
        start.saturating_add(len as usize).min(sql.len())
    };
    sql.get(start..end).unwrap_or(sql)
}

fn is_temp(rel: Option<&protobuf::RangeVar>) -> bool {
    rel.is_some_and(|r| r.relpersistence == "t")
}

fn transaction(t: &protobuf::TransactionStmt) -> Class {
    use protobuf::TransactionStmtKind as K;
    match K::try_from(t.kind) {
        Ok(K::TransStmtBegin | K::TransStmtStart) => {
            let mut read_only = false;
            let mut serializable = false;
            for o in &t.options {
                let Some(N::DefElem(d)) = o.node.as_ref() else {
                    continue;
                };
                let value = d.arg.as_ref().and_then(|a| a.node.as_ref());
                match d.defname.as_str() {
                    "transaction_read_only" => {
                        read_only = matches!(value, Some(N::AConst(c)) if matches!(
                            &c.val,
                            Some(protobuf::a_const::Val::Ival(i)) if i.ival != 0
                        ));
                    }
                    "transaction_isolation" => {
                        serializable = matches!(value, Some(N::AConst(c)) if matches!(
                            &c.val,
                            Some(protobuf::a_const::Val::Sval(s)) if s.sval.eq_ignore_ascii_case("serializable")
                        ));
                    }
                    _ => {}
                }
            }
            Class::Begin {
                read_only: read_only && !serializable,
            }
        }
        Ok(
            K::TransStmtCommit
            | K::TransStmtRollback
            | K::TransStmtSavepoint
            | K::TransStmtRelease
            | K::TransStmtRollbackTo,
        ) => Class::TxControl,
        _ => Class::Write,
    }
}

/// A token of SQL text; only what classification needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    /// An unquoted word (keyword or identifier), as written.
    Word(&'a str),
    /// A double-quoted identifier.
    Quoted,
    /// A string or numeric constant, a parameter, an operator.
    Other,
    /// `;`, `(`, `)`, `,`, `.`.
    Punct(u8),
}

/// PostgreSQL's lexical rules, enough to skip what is not code. Yields `None` for text it cannot
/// tokenize with certainty (an unterminated string or comment): the caller then lets the parser
/// decide.
struct Lexer<'a> {
    sql: &'a str,
    at: usize,
    /// Note whether a plain string constant holds a backslash ([`lexing_uncertain`]).
    track_backslashes: bool,
    saw_plain_backslash: bool,
}

impl<'a> Lexer<'a> {
    fn new(sql: &'a str) -> Lexer<'a> {
        Lexer {
            sql,
            at: 0,
            track_backslashes: false,
            saw_plain_backslash: false,
        }
    }

    fn bytes(&self) -> &'a [u8] {
        self.sql.as_bytes()
    }

    /// Skips a quoted run starting at `self.at` (on the opening quote) that ends with `quote`, where
    /// a doubled quote is part of the text and (when `backslash`) `\x` escapes.
    fn skip_quoted(&mut self, quote: u8, backslash: bool) -> Option<()> {
        let b = self.bytes();
        let mut i = self.at + 1;
        loop {
            match b.get(i)? {
                c if *c == quote => {
                    if b.get(i + 1) == Some(&quote) {
                        i += 2;
                    } else {
                        self.at = i + 1;
                        return Some(());
                    }
                }
                b'\\' if backslash => i += 2,
                _ => i += 1,
            }
        }
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Option<Token<'a>>;

    fn next(&mut self) -> Option<Option<Token<'a>>> {
        let b = self.bytes();
        loop {
            // Whitespace, then a word: the commonest bytes, tested before the rest (words never
            // start with a byte the other arms take).
            self.at = run_end(b, self.at, SPACE);
            let c = *b.get(self.at)?;
            if is_ident_start(c) {
                let start = self.at;
                self.at = run_end(b, start + 1, IDENT);
                // A prefix of a string constant (E'', B'', X'', N'', U&'') is not a word.
                if b.get(self.at) == Some(&b'\'') && self.at - start == 1 {
                    continue;
                }
                return Some(Some(Token::Word(&self.sql[start..self.at])));
            }
            let next = b.get(self.at + 1).copied();
            match c {
                b'-' if next == Some(b'-') => match b[self.at..].iter().position(|&x| x == b'\n') {
                    Some(n) => self.at += n + 1,
                    None => self.at = b.len(),
                },
                b'/' if next == Some(b'*') => {
                    let mut depth = 0usize;
                    let mut i = self.at;
                    loop {
                        match (b.get(i), b.get(i + 1)) {
                            (Some(b'/'), Some(b'*')) => {
                                depth += 1;
                                i += 2;
                            }
                            (Some(b'*'), Some(b'/')) => {
                                depth -= 1;
                                i += 2;
                                if depth == 0 {
                                    break;
                                }
                            }
                            (Some(_), _) => i += 1,
                            (None, _) => return Some(None),
                        }
                    }
                    self.at = i;
                }
                b'\'' => {
                    // A string is an escape string when E/e stands right before it.
                    let escape = self.at > 0
                        && matches!(b[self.at - 1], b'e' | b'E')
                        && (self.at < 2 || !is_ident(b[self.at - 2]));
                    let start = self.at;
                    let token = self.skip_quoted(b'\'', escape).map(|_| Token::Other);
                    if self.track_backslashes && !escape && token.is_some() {
                        self.saw_plain_backslash |= b[start..self.at].contains(&b'\\');
                    }
                    return Some(token);
                }
                b'"' => return Some(self.skip_quoted(b'"', false).map(|_| Token::Quoted)),
                b'$' => {
                    // $n parameter, or a dollar-quoted string $tag$...$tag$.
                    let rest = &b[self.at + 1..];
                    let tag_len = rest
                        .iter()
                        .take_while(|&&x| x.is_ascii_alphanumeric() || x == b'_' || x >= 0x80)
                        .count();
                    if rest.get(tag_len) == Some(&b'$')
                        && !rest.first().is_some_and(|x| x.is_ascii_digit())
                    {
                        let delim = &b[self.at..self.at + tag_len + 2];
                        let body = self.at + delim.len();
                        let end = b[body..].windows(delim.len()).position(|w| w == delim);
                        return Some(end.map(|e| {
                            self.at = body + e + delim.len();
                            Token::Other
                        }));
                    }
                    self.at += 1 + tag_len;
                    return Some(Some(Token::Other));
                }
                b';' | b'(' | b')' | b',' | b'.' => {
                    self.at += 1;
                    return Some(Some(Token::Punct(c)));
                }
                c if c.is_ascii_digit() => {
                    self.at = run_end(b, self.at + 1, NUMBER);
                    return Some(Some(Token::Other));
                }
                _ => {
                    self.at += 1;
                    return Some(Some(Token::Other));
                }
            }
        }
    }
}

/// Character classes of the lexer, one table lookup per byte (the lexer runs on every statement
/// the auto port routes): bits [`IDENT_START`], [`IDENT`], [`NUMBER`], [`SPACE`].
const CHAR_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let alpha = b.is_ascii_alphabetic() || b == b'_' || b >= 0x80;
        let mut class = 0;
        if alpha {
            class |= IDENT_START | IDENT;
        }
        if b.is_ascii_digit() || b == b'$' {
            class |= IDENT;
        }
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'.' {
            class |= NUMBER;
        }
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c') {
            class |= SPACE;
        }
        t[c] = class;
        c += 1;
    }
    t
};

/// Starts an unquoted word: a letter, `_`, or any byte of a multi-byte character.
const IDENT_START: u8 = 1;
/// Continues an unquoted word: those, digits and `$`.
const IDENT: u8 = 2;
/// Continues a numeric constant (as far as the lexer cares): letters, digits, `_`, `.`.
const NUMBER: u8 = 4;
/// Whitespace between tokens.
const SPACE: u8 = 8;

/// Where the run of bytes of `class` that starts at `from` in `b` ends.
#[inline]
fn run_end(b: &[u8], from: usize, class: u8) -> usize {
    let rest = b.get(from..).unwrap_or_default();
    from + rest
        .iter()
        .position(|&x| CHAR_CLASS[x as usize] & class == 0)
        .unwrap_or(rest.len())
}

fn is_ident_start(c: u8) -> bool {
    CHAR_CLASS[c as usize] & IDENT_START != 0
}

fn is_ident(c: u8) -> bool {
    CHAR_CLASS[c as usize] & IDENT != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use Class::*;

    #[test]
    fn routing_table() {
        let c = Classifier::new(&["report_totals".to_string()]);
        let cases: &[(&str, Class)] = &[
            ("SELECT 1", Read),
            ("select 1;", Read),
            ("", Read),
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 12345;",
                Read,
            ),
            ("SELECT count(*), now() FROM t WHERE x IN (SELECT 1)", Read),
            ("SELECT pg_catalog.now()", Read),
            (
                "SELECT * FROM t WHERE s = 'for update' -- for update\n",
                Read,
            ),
            ("SELECT $$ nextval('s') $$, E'it\\'s ( nextval(' ", Read),
            ("SELECT /* a /* nested */ comment insert */ 1", Read),
            ("WITH x AS (SELECT 1) SELECT * FROM x", Read),
            ("SHOW search_path", Read),
            ("VALUES (1), (2)", Read),
            ("TABLE t", Read),
            ("SELECT report_totals(1)", Read),
            ("SELECT * FROM t FOR UPDATE", Write),
            ("SELECT * FROM t FOR NO KEY UPDATE", Write),
            ("select * from t for share", Write),
            ("SELECT nextval('s')", Write),
            ("SELECT my_func()", Write),
            ("SELECT \"MyFunc\"()", Write),
            ("SELECT 1 INTO newtable", Write),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                Write,
            ),
            ("INSERT INTO t VALUES (1)", Write),
            ("UPDATE t SET x = 1", Write),
            ("DELETE FROM t", Write),
            ("CREATE TABLE t (id int)", Write),
            ("CREATE TEMP TABLE t (id int)", Pin(PinReason::TempObject)),
            (
                "CREATE TEMPORARY TABLE t AS SELECT 1",
                Pin(PinReason::TempObject),
            ),
            ("LISTEN ch", Pin(PinReason::Listen)),
            ("NOTIFY ch", Write),
            ("PREPARE p AS SELECT 1", Pin(PinReason::PreparedStatement)),
            // The weakest pin: another pin or a session SET wins.
            (
                "PREPARE p AS SELECT 1; CREATE TEMP TABLE t (a int)",
                Pin(PinReason::TempObject),
            ),
            (
                "CREATE TEMP TABLE t (a int); PREPARE p AS SELECT 1",
                Pin(PinReason::TempObject),
            ),
            (
                "PREPARE p AS SELECT 1; SET work_mem = '8MB'",
                Pin(PinReason::SetInTransaction),
            ),
            ("SELECT pg_advisory_lock(1)", Pin(PinReason::AdvisoryLock)),
            ("SELECT pg_advisory_xact_lock(1)", Write),
            (
                "SELECT set_config('a.b', '1', false)",
                Pin(PinReason::SessionSetting),
            ),
            (
                "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
                Pin(PinReason::HoldCursor),
            ),
            ("DECLARE c CURSOR FOR SELECT 1", Read),
            ("BEGIN", Begin { read_only: false }),
            ("BEGIN READ ONLY", Begin { read_only: true }),
            (
                "START TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ",
                Begin { read_only: true },
            ),
            (
                "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
                Begin { read_only: false },
            ),
            ("BEGIN READ WRITE", Begin { read_only: false }),
            ("COMMIT", TxControl),
            ("END", TxControl),
            ("ROLLBACK TO SAVEPOINT a", TxControl),
            ("COMMIT PREPARED 'x'", Write),
            ("SET search_path = app", SessionSet),
            ("set application_name to 'x'", SessionSet),
            ("RESET ALL", SessionSet),
            ("DISCARD ALL", SessionSet),
            ("SET LOCAL statement_timeout = 0", TxControl),
            ("SET TRANSACTION READ ONLY", TxControl),
            (
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
                Pin(PinReason::SessionSetting),
            ),
            ("EXPLAIN SELECT 1", Read),
            ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", Write),
            ("COPY t TO STDOUT", Read),
            ("COPY (SELECT 1) TO STDOUT", Read),
            ("COPY t FROM STDIN", Write),
            ("SELECT 1; SELECT 2", Read),
            ("SELECT 1; INSERT INTO t VALUES (1)", Write),
            ("BEGIN; SELECT 1; COMMIT", Write),
            ("SET a.b = 1; SELECT 1", Pin(PinReason::SetInTransaction)),
            ("SELEC 1", Write),
            ("SELECT 'unterminated", Write),
            ("VACUUM t", Write),
            // What the leader answers differently from a standby: asked of the leader.
            ("SHOW transaction_read_only", Write),
            ("SELECT current_setting('transaction_read_only')", Write),
            ("SHOW Transaction_Read_Only; SELECT 1", Write),
            ("SELECT current_setting('in_hot_standby')", Write),
            ("SHOW IN_HOT_STANDBY", Write),
            ("SELECT current_setting('xin_hot_standby')", Read),
            ("SELECT pg_is_in_recovery()", Read),
            ("SHOW default_transaction_read_only", Read),
            ("BEGIN READ ONLY", Begin { read_only: true }),
            ("LOCK TABLE t", Write),
            // Misreads of a lexer that does not know the catalog or the session: to the leader.
            ("select app.count()", Write),
            ("SELECT app.now(), 1", Write),
            ("SELECT \"app\".lower('x')", Write),
            ("SELECT pg_catalog.count(*) FROM t", Read),
            ("SELECT PG_CATALOG.lower(name) FROM t", Read),
            ("select (f(x)).col", Write),
            ("select (lower(x)).col from t", Write),
            ("SELECT (t).fullname FROM t", Write),
            ("SELECT (t).\"Full\" FROM t", Write),
            ("SELECT (a).* FROM t a", Read),
            ("SELECT t.col, (x + 1) FROM t", Read),
            // standard_conforming_strings = off: where the strings end is uncertain.
            ("select 'it\\'s'", Write),
            ("SELECT 'a\\', nextval('s') -- '", Write),
            ("SELECT 'C:\\dir' AS path", Write),
            ("SELECT E'it\\'s'", Read),
            ("SELECT 'no backslash', \"a\\b\" FROM t", Read),
            ("SELECT $$a\\b$$", Read),
            ("BEGIN READ ONLY; SELECT 'a\\b'", Begin { read_only: false }),
            ("SET search_path = 'a\\b'", Pin(PinReason::SessionSetting)),
        ];
        for (sql, expected) in cases {
            assert_eq!(c.classify(sql), *expected, "{sql:?}");
            assert_eq!(c.classify(sql), *expected, "{sql:?} from the cache");
        }
    }

    #[test]
    fn leader_state_names_are_found_as_whole_words_anywhere() {
        let cases: &[(&str, bool)] = &[
            ("transaction_read_only", true),
            ("SHOW TRANSACTION_READ_ONLY", true),
            ("select current_setting('in_hot_standby')", true),
            ("select 1 from a_b where c_d = 'In_Hot_Standby'", true),
            ("select x_transaction_read_only", false),
            ("select transaction_read_only_x", false),
            ("select default_transaction_read_only", false),
            ("select in_hot_standbyx, _in_hot_standby", false),
            ("select __, _, transaction_, _read_only", false),
            ("select 1", false),
            ("", false),
            ("_", false),
            ("é_in_hot_standby", false),
            ("é in_hot_standby", true),
        ];
        for (sql, expected) in cases {
            assert_eq!(asks_for_leader_state(sql), *expected, "{sql:?}");
        }
    }

    #[test]
    fn lexer_skips_quotes_and_comments_and_never_panics() {
        let words = |s: &str| -> Option<Vec<String>> {
            Lexer::new(s).collect::<Option<Vec<Token>>>().map(|ts| {
                ts.into_iter()
                    .filter_map(|t| match t {
                        Token::Word(w) => Some(w.to_string()),
                        _ => None,
                    })
                    .collect()
            })
        };
        assert_eq!(
            words("SELECT 'a''b', \"x\"\"y\", $t$ for $t$, e'\\'' /* */ z").unwrap(),
            ["SELECT", "z"]
        );
        assert_eq!(words("SELECT $1, $2"), Some(vec!["SELECT".to_string()]));
        assert_eq!(words("/* open"), None);
        assert_eq!(words("$a$ open"), None);
        // Random bytes: no panic, whatever the verdict.
        let mut state = 0x1234_5678_9abc_def0u64;
        let alphabet = b"sElEcT '\"$;()-/*\\eE1_ x\n";
        let c = Classifier::default();
        for _ in 0..3_000 {
            let len = (state % 24) as usize;
            let s: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize] as char
                })
                .collect();
            let _ = c.classify(&s);
        }
    }

    #[test]
    fn the_cache_is_bounded_in_bytes_and_keeps_recent_entries() {
        let limit = 64 * 1024;
        let c = Classifier::with_cache_bytes(&[], limit);
        // Slow-path statements (BEGIN goes to the parser), each ~1 KiB of text.
        let pad = "x".repeat(1000);
        for i in 0..1_000 {
            c.classify(&format!("BEGIN /* {i} {pad} */"));
            let (bytes, _) = c.cache_usage();
            assert!(bytes <= limit, "{bytes} bytes after {i} inserts");
        }
        let (bytes, entries) = c.cache_usage();
        assert!(bytes > limit / 2, "the cache is used: {bytes}");
        assert!(entries < 64, "{entries} entries");
        // A statement of more than an eighth of the budget is not kept at all.
        let huge = format!("BEGIN /* {} */", "y".repeat(limit));
        assert_eq!(c.classify(&huge), Begin { read_only: false });
        assert_eq!(c.cache_usage(), (bytes, entries));
        // The most recently used entry survives further inserts; the oldest did not.
        let recent = format!("BEGIN /* 999 {pad} */");
        assert!(c.cache.lock().unwrap().get(&recent).is_some());
        assert!(c
            .cache
            .lock()
            .unwrap()
            .get(&format!("BEGIN /* 0 {pad} */"))
            .is_none());
        // A cache of 0 bytes keeps nothing and still classifies.
        let none = Classifier::with_cache_bytes(&[], 0);
        assert_eq!(none.classify("BEGIN READ ONLY"), Begin { read_only: true });
        assert_eq!(none.cache_usage(), (0, 0));
    }

    #[test]
    fn combining_statements_errs_toward_the_leader() {
        assert_eq!(Read.combine(Read), Read);
        assert_eq!(Read.combine(Write), Write);
        assert_eq!(
            Begin { read_only: true }.combine(Read),
            Begin { read_only: true }
        );
        assert_eq!(Begin { read_only: false }.combine(Read), Write);
        assert_eq!(
            Write.combine(Pin(PinReason::Listen)),
            Pin(PinReason::Listen)
        );
        assert!(Begin { read_only: true }.is_read() && !TxControl.is_read());
    }
}
