//! Named prepared statements under transaction pooling: which statements each client prepared,
//! which ones each server connection holds, and the rewriting of the extended protocol between
//! them (PgBouncer 1.21+'s `max_prepared_statements`, done as its own code; pure, no I/O).
//!
//! A client's `Parse` with a name is recorded per client (name -> query text and parameter types)
//! and prepared on a server under a name the proxy chooses: `praetor_` and 32 hex digits of the
//! SHA-256 of the text and types, so that clients preparing the same statement share one server
//! statement, and a name a client can only hit on purpose. Then, on whichever server connection
//! the client's next unit runs:
//! - `Bind` and `Describe('S')` get the server name; when that connection lacks the statement, its
//!   `Parse` goes first and the server's ParseComplete is swallowed;
//! - `Close('S')` forgets the client's statement and becomes a `Close` of a name no statement has
//!   (PostgreSQL answers CloseComplete for it): the client gets its CloseComplete in order, and the
//!   server statement stays for other clients;
//! - a server connection holds at most `max_prepared_statements`: the least recently used
//!   statement is closed first (its CloseComplete swallowed).
//!
//! The client sees what PostgreSQL would answer: an unknown name goes to the server as the client
//! wrote it (26000, `prepared statement "x" does not exist`); a duplicate name makes the server
//! itself refuse it (42P05, `prepared statement "x" already exists`): a `Parse` of a trivial
//! statement under the client's name goes first, so the client's `Parse` finds it; that stray
//! statement is closed before the connection's next unit. A client `Parse` of a statement the
//! server already holds runs under a scratch name that is closed at once, so it fails (syntax,
//! aborted transaction) exactly where PostgreSQL would. A statement whose `Parse` failed (no
//! ParseComplete before ReadyForQuery) is forgotten, for the client and the server.
//!
//! Server replies are matched to what was sent with a queue of expected ParseComplete,
//! CloseComplete and ReadyForQuery messages (an error makes the server skip to the next Sync:
//! what was not answered by then did not happen).
//!
//! SQL-level `PREPARE`/`EXECUTE`/`DEALLOCATE` (which PgBouncer does not track) keep the client's
//! own names on the server, since the client's SQL text is not rewritten
//! ([`crate::prepared_sql`] reads which names a Query uses). Per client the proxy records the text
//! of each `PREPARE` that succeeded (its CommandComplete arrived); per server connection, which
//! names it holds and with which text. Before a client's Query goes to a server connection, every
//! name the Query uses is made to match the client's view with statements the proxy sends as
//! Queries of their own, whose CommandComplete and ReadyForQuery it swallows:
//! - a name the client prepared, missing on that connection or held there with another text (by
//!   another client): `DEALLOCATE` (if held) and the client's `PREPARE` text;
//! - a name the client has not prepared that the connection holds (another client's):
//!   `DEALLOCATE`, so the client's `EXECUTE` gets PostgreSQL's 26000 and its `PREPARE` succeeds.
//!
//! So `PREPARE` of a name the client has gets 42P05 from the server, and `DEALLOCATE` of one it
//! has not gets 26000, as without the proxy. An added statement that fails (a table dropped
//! since) passes its ErrorResponse to the client, followed by the answer to the client's Query;
//! in a failed transaction (25P02) it is swallowed, as the client's statement gets the same.
//! The client's own `DEALLOCATE`, `DEALLOCATE ALL` and `DISCARD ALL` take effect when their
//! CommandComplete arrives (the last two forget the client's protocol-level statements too, as
//! PostgreSQL does). A server connection keeps at most `max_prepared_statements` SQL-level
//! statements before each Query (counted apart from the protocol-level ones): the least recently
//! used ones not named in the Query are deallocated first.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use hashlink::LruCache;
use praetor_protocol::frontend::{
    encode_message, Bind, Parse, Target, BIND, CLOSE, DESCRIBE, FUNCTION_CALL, PARSE, QUERY, SYNC,
};
use sha2::{Digest, Sha256};

use crate::prepared_sql::{quote_ident, sql_use, SqlEffect};

/// Prefix of the server-side statement names the proxy chooses.
pub(crate) const SERVER_PREFIX: &str = "praetor_";

/// A statement name the proxy never creates: a client's `Close('S')` becomes a `Close` of it.
const NEVER_NAME: &str = "praetor_none";

/// The scratch name a client `Parse` of a statement the server already holds runs under.
const SCRATCH_NAME: &str = "praetor_scratch";

/// The statement created under the client's name to make the server refuse a duplicate `Parse`.
const DUPLICATE_PROBE: &str = "SELECT";

/// ParseComplete, CloseComplete, ReadyForQuery, CommandComplete and ErrorResponse tags.
const PARSE_COMPLETE: u8 = b'1';
const CLOSE_COMPLETE: u8 = b'3';
const READY_FOR_QUERY: u8 = b'Z';
const COMMAND_COMPLETE: u8 = b'C';
const ERROR_RESPONSE: u8 = b'E';

/// SQLSTATE of a statement refused in a failed transaction.
const IN_FAILED_TRANSACTION: &str = "25P02";

/// One named statement of a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Statement {
    /// The name it has on servers.
    server_name: Arc<str>,
    /// The `Parse` message that creates it on a server (server name, text, types).
    parse: Bytes,
}

impl Statement {
    /// The statement for `query` with `types` (a Parse body's tail: `n: i16 | n * oid`).
    fn new(query: &str, types: &[u8]) -> Statement {
        let mut hash = Sha256::new();
        hash.update(query.as_bytes());
        hash.update([0]);
        hash.update(types);
        let digest = hash.finalize();
        let mut server_name = String::with_capacity(SERVER_PREFIX.len() + 32);
        server_name.push_str(SERVER_PREFIX);
        for b in &digest[..16] {
            server_name.push_str(&format!("{b:02x}"));
        }
        let mut parse = BytesMut::new();
        encode_parse(&mut parse, &server_name, query, types);
        Statement {
            server_name: server_name.into(),
            parse: parse.freeze(),
        }
    }

    /// The name the statement has on servers.
    #[cfg(test)]
    pub fn server_name(&self) -> &str {
        &self.server_name
    }
}

/// The named statements one client prepared: protocol level by the client's name, and SQL level
/// (`PREPARE`) by name with the statement's text. Looked up at every Bind and Describe: keyed
/// with foldhash seeded at random per map (the client chooses the names; as the pool's
/// StartupMessage maps, [`crate::pool`]), where std's SipHash cost ~100 instructions a lookup.
#[derive(Debug, Default)]
pub(crate) struct ClientStatements {
    by_name: foldhash::HashMap<Box<str>, Statement>,
    sql: foldhash::HashMap<Box<str>, Arc<str>>,
}

impl ClientStatements {
    /// The statement the client calls `name`.
    pub fn get(&self, name: &str) -> Option<&Statement> {
        self.by_name.get(name)
    }
}

/// A reply the server owes for a message the proxy sent, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// A ParseComplete; `swallow`: for a Parse the proxy added. `server_name`: the statement the
    /// Parse creates on the server, `client_name`: the client statement it creates.
    Parse {
        swallow: bool,
        server_name: Option<Arc<str>>,
        client_name: Option<Box<str>>,
    },
    /// A CloseComplete; `evicted`: a server statement closed to make room, `stray`: a statement
    /// of a duplicate `Parse` closed.
    Close {
        swallow: bool,
        evicted: Option<Arc<str>>,
        stray: Option<Box<str>>,
    },
    /// A ReadyForQuery (Sync, Query, FunctionCall).
    Ready,
    /// The answer to a client Query that prepares or deallocates SQL-level statements: the i-th
    /// CommandComplete confirms `effects[i]`; then its ReadyForQuery. Everything passes.
    Statements(VecDeque<Option<SqlEffect>>),
    /// The answer to a Query the proxy added (`DEALLOCATE` or `PREPARE`), swallowed through its
    /// ReadyForQuery but for an ErrorResponse; `undo` restores what the proxy assumed if it fails.
    Added { undo: Option<Undo> },
}

/// What to put back in a server connection's SQL-level statements when an added statement fails.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    /// The added `PREPARE` of this name did not happen.
    Unprepare(Box<str>),
    /// The added `DEALLOCATE` did not happen: the statement is still there, with this text.
    Restore(Box<str>, Arc<str>),
}

/// What one server connection holds, and the replies it owes (travels with the connection into
/// the pool).
#[derive(Debug)]
pub(crate) struct ServerStatements {
    /// Server statement names, least recently used first.
    held: LruCache<Arc<str>, ()>,
    /// SQL-level statements by name with the `PREPARE` text that made them, least recently used
    /// first.
    sql: LruCache<Box<str>, Arc<str>>,
    expect: VecDeque<Expect>,
    /// Statements created under a client's name by a duplicate `Parse`, in the current unit.
    strays: Vec<Box<str>>,
    /// Such statements to close before the connection's next message (after a Sync).
    strays_to_close: Vec<Box<str>>,
    /// Bytes of a server message still to pass through (started in an earlier read).
    pass: usize,
    /// Bytes read but not judged yet (an incomplete header, or an incomplete message that must
    /// be whole to be judged), kept out of the read buffer so the session cannot forward them;
    /// they go back in front of the next read's bytes.
    unjudged: BytesMut,
}

impl Default for ServerStatements {
    fn default() -> ServerStatements {
        ServerStatements {
            held: LruCache::new_unbounded(),
            sql: LruCache::new_unbounded(),
            expect: VecDeque::new(),
            strays: Vec::new(),
            strays_to_close: Vec::new(),
            pass: 0,
            unjudged: BytesMut::new(),
        }
    }
}

impl ServerStatements {
    /// Whether the connection owes no tracked reply and holds no stray statement: it may be
    /// pooled for another client.
    pub fn is_settled(&self) -> bool {
        self.expect.is_empty()
            && self.strays.is_empty()
            && self.strays_to_close.is_empty()
            && self.unjudged.is_empty()
            && self.pass == 0
    }

    /// How many statements the server holds (as far as the proxy knows).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether the server holds `server_name`.
    #[cfg(test)]
    pub fn holds(&self, server_name: &str) -> bool {
        self.held.peek(server_name).is_some()
    }

    /// Whether the server holds the SQL-level statement `name` with `text`.
    #[cfg(test)]
    pub fn holds_sql(&self, name: &str, text: &str) -> bool {
        self.sql.peek(name).is_some_and(|t| &**t == text)
    }

    /// Forgets every statement: the session ran `DISCARD ALL` or `DEALLOCATE ALL`.
    pub fn forget_all(&mut self) {
        self.held.clear();
        self.sql.clear();
    }

    /// Records a message that ends with ReadyForQuery and is not rewritten (FunctionCall).
    pub fn note_ready(&mut self) {
        self.note_end(Expect::Ready);
    }

    /// Records the message that ends a unit's part (`end`: what its ReadyForQuery settles).
    fn note_end(&mut self, end: Expect) {
        self.expect.push_back(end);
        let strays = std::mem::take(&mut self.strays);
        self.strays_to_close.extend(strays);
    }

    /// Sends `sql` as a Query of the proxy's own, answered to nobody.
    fn add_query(&mut self, out: &mut BytesMut, sql: &str, undo: Undo) {
        encode_message(out, QUERY, |m| put_cstr(m, sql));
        self.expect.push_back(Expect::Added { undo: Some(undo) });
    }

    /// Makes the SQL-level statements `names` on this connection match `client`'s (see the
    /// module's documentation), appending the Queries that do it to `out`.
    fn match_sql(
        &mut self,
        client: &ClientStatements,
        max: usize,
        names: &[Box<str>],
        out: &mut BytesMut,
    ) {
        // Room first for the names not held: the least recently used statements the Query does
        // not name go.
        let new = names.iter().filter(|n| self.sql.peek(*n).is_none()).count();
        let mut skipped = Vec::new();
        while max > 0 && new > 0 && self.sql.len() + skipped.len() + new > max {
            let Some((name, text)) = self.sql.remove_lru() else {
                break;
            };
            if names.contains(&name) {
                skipped.push((name, text));
                continue;
            }
            let sql = format!("DEALLOCATE {}", quote_ident(&name));
            self.add_query(out, &sql, Undo::Restore(name, text));
        }
        for (name, text) in skipped {
            self.sql.insert(name, text);
        }
        for name in names {
            let wanted = client.sql.get(name);
            let held = self.sql.get(name).cloned();
            if let (Some(w), Some(h)) = (wanted, &held) {
                if w == h {
                    continue;
                }
            }
            if let Some(h) = held {
                let sql = format!("DEALLOCATE {}", quote_ident(name));
                self.sql.remove(name);
                self.add_query(out, &sql, Undo::Restore(name.clone(), h));
            }
            if let Some(w) = wanted {
                self.sql.insert(name.clone(), w.clone());
                self.add_query(out, w, Undo::Unprepare(name.clone()));
            }
        }
    }

    /// A statement of a client Query succeeded: what it did to the session's statements.
    fn apply(&mut self, client: &mut ClientStatements, effect: SqlEffect) {
        match effect {
            SqlEffect::Prepare { name, text } => {
                self.sql.insert(name.clone(), text.clone());
                client.sql.insert(name, text);
            }
            SqlEffect::Deallocate(name) => {
                self.sql.remove(&name);
                client.sql.remove(&name);
            }
            SqlEffect::DeallocateAll => {
                self.forget_all();
                client.sql.clear();
                client.by_name.clear();
            }
        }
    }

    /// Makes sure the server holds `stmt`, appending to `out` what creates it (and closes the
    /// least recently used statement when `max` are held).
    fn ensure(&mut self, stmt: &Statement, max: usize, out: &mut BytesMut) {
        if self.held.get(&stmt.server_name).is_some() {
            return;
        }
        self.make_room(max, out);
        out.extend_from_slice(&stmt.parse);
        self.expect.push_back(Expect::Parse {
            swallow: true,
            server_name: Some(stmt.server_name.clone()),
            client_name: None,
        });
        self.held.insert(stmt.server_name.clone(), ());
    }

    /// Closes least recently used statements until one more fits under `max` (0: no bound).
    fn make_room(&mut self, max: usize, out: &mut BytesMut) {
        while max > 0 && self.held.len() >= max {
            let Some((name, ())) = self.held.remove_lru() else {
                return;
            };
            encode_close_statement(out, &name);
            self.expect.push_back(Expect::Close {
                swallow: true,
                evicted: Some(name),
                stray: None,
            });
        }
    }

    /// Closes the stray statements of an earlier duplicate `Parse`.
    fn close_strays(&mut self, out: &mut BytesMut) {
        for name in std::mem::take(&mut self.strays_to_close) {
            encode_close_statement(out, &name);
            self.expect.push_back(Expect::Close {
                swallow: true,
                evicted: None,
                stray: Some(name),
            });
        }
    }

    /// [`ServerStatements::rewrite_into`] into a buffer of its own: `None`, the message as it is.
    #[cfg(test)]
    pub fn rewrite(
        &mut self,
        client: &mut ClientStatements,
        max: usize,
        frame: &[u8],
    ) -> Option<BytesMut> {
        let mut out = BytesMut::new();
        self.rewrite_into(client, max, frame, false, &mut out)
            .then_some(out)
    }

    /// What the server should get for one whole client message `frame` (tag, length, body), for a
    /// client whose statements are `client`, with at most `max` statements per server connection,
    /// appended to `out` (the session's queue for the server: no buffer is allocated per message,
    /// and a Bind of every transaction is rewritten). `false`: nothing appended, the message goes
    /// as it is. Records the replies the server will owe. `lexed_query`: the caller knows `frame`
    /// is a Query of one statement that uses no SQL-level prepared statement
    /// ([`praetor_protocol::Classifier::classify_lexed`]), so its text is not scanned for one.
    pub fn rewrite_into(
        &mut self,
        client: &mut ClientStatements,
        max: usize,
        frame: &[u8],
        lexed_query: bool,
        out: &mut BytesMut,
    ) -> bool {
        let (Some(&tag), Some(body)) = (frame.first(), frame.get(5..)) else {
            return false;
        };
        let start = out.len();
        self.close_strays(out);
        let replaced = match tag {
            PARSE => self.parse(client, max, frame, body, out),
            BIND => match Bind::decode(body) {
                Ok(b) if !b.statement.is_empty() => match client.get(b.statement) {
                    Some(stmt) => {
                        self.ensure(stmt, max, out);
                        let rest = &body[b.portal.len() + 1 + b.statement.len() + 1..];
                        encode_message(out, BIND, |m| {
                            put_cstr(m, b.portal);
                            put_cstr(m, &stmt.server_name);
                            m.extend_from_slice(rest);
                        });
                        true
                    }
                    None => false,
                },
                _ => false,
            },
            DESCRIBE => match Target::decode(body) {
                Ok(Target::Statement(name)) if !name.is_empty() => match client.get(name) {
                    Some(stmt) => {
                        self.ensure(stmt, max, out);
                        encode_message(out, DESCRIBE, |m| {
                            m.put_u8(b'S');
                            put_cstr(m, &stmt.server_name);
                        });
                        true
                    }
                    None => false,
                },
                _ => false,
            },
            CLOSE => {
                self.expect.push_back(Expect::Close {
                    swallow: false,
                    evicted: None,
                    stray: None,
                });
                match Target::decode(body) {
                    Ok(Target::Statement(name)) if client.by_name.remove(name).is_some() => {
                        encode_close_statement(out, NEVER_NAME);
                        true
                    }
                    _ => false,
                }
            }
            QUERY => {
                // Most Queries name no statement: the keyword scan of the raw body spares them
                // the text's NUL search and UTF-8 check, and the classifier's lexer, when it
                // decided the Query, spares them the scan (~480 instructions for pgbench's
                // select, callgrind).
                let used = (!lexed_query && crate::prepared_sql::mentions_keyword(body))
                    .then(|| praetor_protocol::frontend::query_text(body).ok())
                    .flatten()
                    .and_then(sql_use);
                match used {
                    Some(used) => {
                        self.match_sql(client, max, &used.names, out);
                        self.note_end(Expect::Statements(used.effects.into()));
                    }
                    None => self.note_ready(),
                }
                false
            }
            SYNC | FUNCTION_CALL => {
                self.note_ready();
                false
            }
            _ => false,
        };
        if replaced {
            return true;
        }
        if out.len() == start {
            return false;
        }
        out.extend_from_slice(frame);
        true
    }

    /// A client `Parse` (see the module's documentation). `true`: `out` replaces it.
    fn parse(
        &mut self,
        client: &mut ClientStatements,
        max: usize,
        frame: &[u8],
        body: &[u8],
        out: &mut BytesMut,
    ) -> bool {
        let pass = |server_name, client_name| Expect::Parse {
            swallow: false,
            server_name,
            client_name,
        };
        let Ok(p) = Parse::decode(body) else {
            // The server refuses it as malformed.
            self.expect.push_back(pass(None, None));
            return false;
        };
        if p.name.is_empty() {
            self.expect.push_back(pass(None, None));
            return false;
        }
        if client.by_name.contains_key(p.name) {
            // The server refuses the client's Parse itself, with PostgreSQL's error: a statement
            // of that name exists there first.
            encode_parse(out, p.name, DUPLICATE_PROBE, &[0, 0]);
            self.expect.push_back(Expect::Parse {
                swallow: true,
                server_name: None,
                client_name: None,
            });
            self.strays.push(p.name.into());
            out.extend_from_slice(frame);
            self.expect.push_back(pass(None, None));
            return true;
        }
        let types = &body[p.name.len() + 1 + p.query.len() + 1..];
        let stmt = Statement::new(p.query, types);
        let client_name: Option<Box<str>> = Some(p.name.into());
        if self.held.get(&stmt.server_name).is_some() {
            // The server checks the text under a scratch name, closed at once.
            encode_parse(out, SCRATCH_NAME, p.query, types);
            self.expect.push_back(pass(None, client_name));
            encode_close_statement(out, SCRATCH_NAME);
            self.expect.push_back(Expect::Close {
                swallow: true,
                evicted: None,
                stray: None,
            });
        } else {
            self.make_room(max, out);
            out.extend_from_slice(&stmt.parse);
            self.expect
                .push_back(pass(Some(stmt.server_name.clone()), client_name));
            self.held.insert(stmt.server_name.clone(), ());
        }
        client.by_name.insert(p.name.into(), stmt);
        true
    }

    /// Filters what a server sent: `new` bytes were just read onto the end of `buf` (whose front
    /// the session has not forwarded yet). Drops the replies to the proxy's own messages and
    /// settles the queue at each ReadyForQuery (a statement whose Parse got no ParseComplete is
    /// forgotten, for `client` too). Whole messages only are judged; an incomplete header or
    /// message to judge at the end is taken out of `buf` until the next read (the session
    /// forwards what it sees, partial messages included).
    pub fn filter(&mut self, client: &mut ClientStatements, buf: &mut BytesMut, new: usize) {
        let mut new = new.min(buf.len());
        if !self.unjudged.is_empty() {
            let fresh = buf.split_off(buf.len() - new);
            new += self.unjudged.len();
            buf.extend_from_slice(&self.unjudged);
            buf.extend_from_slice(&fresh);
            self.unjudged.clear();
        }
        let len = buf.len();
        let start = len - new;
        let (mut r, mut w) = (start, start);
        let keep = |buf: &mut BytesMut, r: usize, w: &mut usize, n: usize| {
            if r != *w {
                buf.copy_within(r..r + n, *w);
            }
            *w += n;
        };
        loop {
            if self.pass > 0 {
                let n = self.pass.min(len - r);
                keep(buf, r, &mut w, n);
                r += n;
                self.pass -= n;
                if self.pass > 0 {
                    break;
                }
                continue;
            }
            if len - r < 5 {
                break;
            }
            let tag = buf[r];
            let declared = u32::from_be_bytes([buf[r + 1], buf[r + 2], buf[r + 3], buf[r + 4]]);
            let frame_len = declared as usize + 1;
            if declared < 4 {
                // Malformed: the session reports it; nothing more is judged.
                self.pass = usize::MAX;
                continue;
            }
            let judged = match self.expect.front() {
                // Notices, notifications and parameter changes pass.
                Some(Expect::Added { .. }) => !matches!(tag, b'N' | b'A' | b'S'),
                Some(Expect::Statements(_)) => tag == COMMAND_COMPLETE || tag == READY_FOR_QUERY,
                _ => matches!(tag, PARSE_COMPLETE | CLOSE_COMPLETE | READY_FOR_QUERY),
            };
            if !judged {
                // Passes whole when it is all here (most replies: one step per message), else
                // its tail passes as it comes.
                if len - r >= frame_len {
                    keep(buf, r, &mut w, frame_len);
                    r += frame_len;
                } else {
                    self.pass = frame_len;
                }
                continue;
            }
            if len - r < frame_len {
                break;
            }
            if self.on_reply(tag, &buf[r + 5..r + frame_len], client) {
                keep(buf, r, &mut w, frame_len);
            }
            r += frame_len;
        }
        if r < len {
            self.unjudged.extend_from_slice(&buf[r..len]);
        }
        buf.truncate(w);
    }

    /// Matches one reply (`body` after the header) to the queue; `false`: drop it.
    fn on_reply(&mut self, tag: u8, body: &[u8], client: &mut ClientStatements) -> bool {
        match (tag, self.expect.front_mut()) {
            (ERROR_RESPONSE, Some(Expect::Added { .. })) => {
                // What the proxy assumed did not happen. The client sees why, unless the
                // transaction had failed already: its own statement gets that answer.
                self.undo_added();
                let code = praetor_protocol::ErrorFields::parse(body)
                    .ok()
                    .and_then(|e| e.code().map(|c| c == IN_FAILED_TRANSACTION));
                code != Some(true)
            }
            (PARSE_COMPLETE, Some(Expect::Parse { swallow, .. })) => {
                let swallow = *swallow;
                self.expect.pop_front();
                !swallow
            }
            (CLOSE_COMPLETE, Some(Expect::Close { swallow, .. })) => {
                let swallow = *swallow;
                self.expect.pop_front();
                !swallow
            }
            (COMMAND_COMPLETE, Some(Expect::Statements(effects))) => {
                if let Some(Some(effect)) = effects.pop_front() {
                    self.apply(client, effect);
                }
                true
            }
            (READY_FOR_QUERY, _) => {
                // What was not answered before it was skipped after an error.
                while let Some(e) = self.expect.pop_front() {
                    match e {
                        Expect::Ready | Expect::Statements(_) => return true,
                        Expect::Added { .. } => return false,
                        Expect::Parse {
                            server_name,
                            client_name,
                            ..
                        } => {
                            if let Some(s) = &server_name {
                                self.held.remove(s);
                            }
                            if let Some(c) = client_name {
                                if let Some(s) = client.by_name.get(&c) {
                                    let same =
                                        server_name.as_ref().is_none_or(|n| *n == s.server_name);
                                    if same {
                                        client.by_name.remove(&c);
                                    }
                                }
                            }
                        }
                        Expect::Close { evicted, stray, .. } => {
                            if let Some(s) = evicted {
                                self.held.insert(s, ());
                            }
                            if let Some(s) = stray {
                                self.strays_to_close.push(s);
                            }
                        }
                    }
                }
                true
            }
            (_, Some(Expect::Added { .. })) => false,
            _ => true,
        }
    }

    /// The Query the proxy added failed: its assumption is undone.
    fn undo_added(&mut self) {
        let Some(Expect::Added { undo }) = self.expect.front_mut() else {
            return;
        };
        match undo.take() {
            Some(Undo::Unprepare(name)) => {
                self.sql.remove(&name);
            }
            Some(Undo::Restore(name, text)) => {
                self.sql.insert(name, text);
            }
            None => {}
        }
    }
}

/// Whether a Query body (or SQL text) runs `DISCARD` or `DEALLOCATE` (which drop the server's
/// statements).
pub(crate) fn forgets_statements(body: &[u8]) -> bool {
    let text = body.trim_ascii_start();
    let starts =
        |word: &[u8]| text.len() >= word.len() && text[..word.len()].eq_ignore_ascii_case(word);
    starts(b"discard") || starts(b"deallocate")
}

fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.extend_from_slice(s.as_bytes());
    buf.put_u8(0);
}

/// Appends `Parse(name, query, types)`; `types` is `n: i16 | n * oid`.
fn encode_parse(buf: &mut BytesMut, name: &str, query: &str, types: &[u8]) {
    encode_message(buf, PARSE, |m| {
        put_cstr(m, name);
        put_cstr(m, query);
        m.extend_from_slice(types);
    });
}

/// Appends `Close('S', name)`.
fn encode_close_statement(buf: &mut BytesMut, name: &str) {
    encode_message(buf, CLOSE, |m| {
        m.put_u8(b'S');
        put_cstr(m, name);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, query: &str) -> BytesMut {
        let mut b = BytesMut::new();
        encode_parse(&mut b, name, query, &[0, 0]);
        b
    }

    fn bind(statement: &str) -> BytesMut {
        let mut b = BytesMut::new();
        encode_message(&mut b, BIND, |m| {
            put_cstr(m, "");
            put_cstr(m, statement);
            m.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        });
        b
    }

    fn target(tag: u8, kind: u8, name: &str) -> BytesMut {
        let mut b = BytesMut::new();
        encode_message(&mut b, tag, |m| {
            m.put_u8(kind);
            put_cstr(m, name);
        });
        b
    }

    fn sync() -> BytesMut {
        let mut b = BytesMut::new();
        encode_message(&mut b, SYNC, |_| {});
        b
    }

    /// The messages in `bytes`, as (tag, first string of the body).
    fn messages(bytes: &[u8]) -> Vec<(char, String)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
            let body = &bytes[at + 5..at + 1 + len];
            let first = match bytes[at] {
                b'D' | b'C' => body.get(1..).unwrap_or(&[]),
                b'B' => &body[body.iter().position(|&b| b == 0).unwrap() + 1..],
                _ => body,
            };
            let s = first.split(|&b| b == 0).next().unwrap_or(&[]);
            out.push((bytes[at] as char, String::from_utf8_lossy(s).into_owned()));
            at += 1 + len;
        }
        out
    }

    /// Sends each frame through `server.rewrite` and returns what the server got.
    fn send(
        server: &mut ServerStatements,
        client: &mut ClientStatements,
        max: usize,
        frames: &[BytesMut],
    ) -> Vec<(char, String)> {
        let mut wire = BytesMut::new();
        for f in frames {
            match server.rewrite(client, max, f) {
                Some(out) => wire.extend_from_slice(&out),
                None => wire.extend_from_slice(f),
            }
        }
        messages(&wire)
    }

    fn reply(tags: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        for &t in tags {
            if t == b'Z' {
                b.extend_from_slice(&[b'Z', 0, 0, 0, 5, b'I']);
            } else {
                b.extend_from_slice(&[t, 0, 0, 0, 4]);
            }
        }
        b
    }

    /// Runs `bytes` through the filter in one read; returns the tags the client gets.
    fn receive(
        server: &mut ServerStatements,
        client: &mut ClientStatements,
        bytes: &[u8],
    ) -> String {
        let mut buf = BytesMut::from(bytes);
        server.filter(client, &mut buf, bytes.len());
        messages(&buf).into_iter().map(|(t, _)| t).collect()
    }

    fn server_name(client: &ClientStatements, name: &str) -> String {
        client.get(name).unwrap().server_name().to_string()
    }

    #[test]
    fn same_text_and_types_share_one_server_name_and_others_do_not() {
        let a = Statement::new("SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let b = Statement::new("SELECT $1", &[0, 1, 0, 0, 0, 23]);
        let c = Statement::new("SELECT $1", &[0, 1, 0, 0, 0, 25]);
        let d = Statement::new("SELECT $2", &[0, 1, 0, 0, 0, 23]);
        assert_eq!(a, b);
        assert_ne!(a.server_name, c.server_name);
        assert_ne!(a.server_name, d.server_name);
        assert!(a.server_name.starts_with(SERVER_PREFIX));
        assert_eq!(a.server_name.len(), SERVER_PREFIX.len() + 32);
    }

    #[test]
    fn parse_bind_describe_get_the_server_name_and_unnamed_ones_pass() {
        let (mut s, mut c) = (ServerStatements::default(), ClientStatements::default());
        let got = send(
            &mut s,
            &mut c,
            10,
            &[
                parse("s1", "SELECT 1"),
                bind("s1"),
                target(DESCRIBE, b'S', "s1"),
                sync(),
            ],
        );
        let name = server_name(&c, "s1");
        assert_eq!(
            got,
            vec![
                ('P', name.clone()),
                ('B', name.clone()),
                ('D', name.clone()),
                ('S', String::new())
            ]
        );
        // The client sees every reply (nothing was added).
        assert_eq!(receive(&mut s, &mut c, &reply(b"12tZ")), "12tZ");
        assert!(s.is_settled());
        let got = send(
            &mut s,
            &mut c,
            10,
            &[parse("", "SELECT 2"), bind(""), sync()],
        );
        assert_eq!(
            got,
            vec![
                ('P', String::new()),
                ('B', String::new()),
                ('S', String::new())
            ]
        );
    }

    #[test]
    fn a_server_without_the_statement_gets_its_parse_first_and_the_client_not_its_reply() {
        let mut c = ClientStatements::default();
        let mut first = ServerStatements::default();
        send(&mut first, &mut c, 10, &[parse("s1", "SELECT 1"), sync()]);
        receive(&mut first, &mut c, &reply(b"1Z"));
        // The next unit runs on another server connection.
        let mut other = ServerStatements::default();
        let name = server_name(&c, "s1");
        let got = send(&mut other, &mut c, 10, &[bind("s1"), sync()]);
        assert_eq!(
            got,
            vec![
                ('P', name.clone()),
                ('B', name.clone()),
                ('S', String::new())
            ]
        );
        assert_eq!(receive(&mut other, &mut c, &reply(b"12nZ")), "2nZ");
        // Now it holds it: no second Parse.
        let got = send(&mut other, &mut c, 10, &[bind("s1"), sync()]);
        assert_eq!(got, vec![('B', name), ('S', String::new())]);
        assert_eq!(receive(&mut other, &mut c, &reply(b"2Z")), "2Z");
        assert!(other.is_settled());
    }

    #[test]
    fn a_second_client_preparing_the_same_text_checks_it_under_a_scratch_name() {
        let mut server = ServerStatements::default();
        let (mut a, mut b) = (ClientStatements::default(), ClientStatements::default());
        send(&mut server, &mut a, 10, &[parse("x", "SELECT 1"), sync()]);
        receive(&mut server, &mut a, &reply(b"1Z"));
        let got = send(&mut server, &mut b, 10, &[parse("y", "SELECT 1"), sync()]);
        assert_eq!(
            got,
            vec![
                ('P', SCRATCH_NAME.to_string()),
                ('C', SCRATCH_NAME.to_string()),
                ('S', String::new())
            ]
        );
        assert_eq!(receive(&mut server, &mut b, &reply(b"13Z")), "1Z");
        assert_eq!(server_name(&a, "x"), server_name(&b, "y"));
        assert_eq!(server.len(), 1);
    }

    #[test]
    fn close_forgets_the_client_statement_and_keeps_the_server_one() {
        let (mut s, mut c) = (ServerStatements::default(), ClientStatements::default());
        send(&mut s, &mut c, 10, &[parse("s1", "SELECT 1"), sync()]);
        receive(&mut s, &mut c, &reply(b"1Z"));
        let got = send(&mut s, &mut c, 10, &[target(CLOSE, b'S', "s1"), sync()]);
        assert_eq!(
            got,
            vec![('C', NEVER_NAME.to_string()), ('S', String::new())]
        );
        assert_eq!(receive(&mut s, &mut c, &reply(b"3Z")), "3Z");
        assert!(c.get("s1").is_none());
        assert_eq!(s.len(), 1);
        // Unknown now: Bind goes as the client wrote it (the server answers 26000); a new Parse
        // of the same name is no duplicate.
        assert_eq!(
            send(&mut s, &mut c, 10, &[bind("s1")]),
            vec![('B', "s1".to_string())]
        );
        let got = send(&mut s, &mut c, 10, &[parse("s1", "SELECT 1"), sync()]);
        assert_eq!(got[0], ('P', SCRATCH_NAME.to_string()));
        // A portal's Close and an unknown statement's pass unchanged.
        let got = send(
            &mut s,
            &mut c,
            10,
            &[target(CLOSE, b'P', "p"), target(CLOSE, b'S', "zz")],
        );
        assert_eq!(got, vec![('C', "p".to_string()), ('C', "zz".to_string())]);
    }

    #[test]
    fn a_duplicate_name_meets_a_statement_of_that_name_on_the_server_which_is_closed_after_sync() {
        let (mut s, mut c) = (ServerStatements::default(), ClientStatements::default());
        send(&mut s, &mut c, 10, &[parse("s1", "SELECT 1"), sync()]);
        receive(&mut s, &mut c, &reply(b"1Z"));
        let got = send(
            &mut s,
            &mut c,
            10,
            &[parse("s1", "SELECT 2"), bind("s1"), sync()],
        );
        let name = server_name(&c, "s1");
        assert_eq!(
            got,
            vec![
                ('P', "s1".to_string()),
                ('P', "s1".to_string()),
                ('B', name),
                ('S', String::new())
            ]
        );
        // The probe's ParseComplete is swallowed; the server refused the client's Parse.
        assert_eq!(receive(&mut s, &mut c, &reply(b"1EZ")), "EZ");
        assert!(!s.is_settled());
        // The client's statement is still the first one.
        assert_eq!(c.get("s1").unwrap(), &Statement::new("SELECT 1", &[0, 0]));
        // Before the next unit: the stray goes.
        let got = send(&mut s, &mut c, 10, &[sync()]);
        assert_eq!(got, vec![('C', "s1".to_string()), ('S', String::new())]);
        assert_eq!(receive(&mut s, &mut c, &reply(b"3Z")), "Z");
        assert!(s.is_settled());
    }

    #[test]
    fn a_failed_parse_is_forgotten_for_the_client_and_the_server() {
        let (mut s, mut c) = (ServerStatements::default(), ClientStatements::default());
        send(
            &mut s,
            &mut c,
            10,
            &[parse("bad", "SELEC 1"), bind("bad"), sync()],
        );
        // Error, then everything up to Sync is skipped.
        assert_eq!(receive(&mut s, &mut c, &reply(b"EZ")), "EZ");
        assert!(c.get("bad").is_none());
        assert_eq!(s.len(), 0);
        assert!(s.is_settled());
    }

    #[test]
    fn an_added_parse_skipped_after_an_error_is_forgotten_on_that_server_only() {
        let mut c = ClientStatements::default();
        let mut first = ServerStatements::default();
        send(&mut first, &mut c, 10, &[parse("s1", "SELECT 1"), sync()]);
        receive(&mut first, &mut c, &reply(b"1Z"));
        let mut other = ServerStatements::default();
        send(&mut other, &mut c, 10, &[bind("s1"), sync()]);
        assert_eq!(receive(&mut other, &mut c, &reply(b"EZ")), "EZ");
        assert_eq!(other.len(), 0);
        assert!(c.get("s1").is_some());
    }

    #[test]
    fn the_least_recently_used_statement_is_closed_beyond_the_bound() {
        let (mut s, mut c) = (ServerStatements::default(), ClientStatements::default());
        send(
            &mut s,
            &mut c,
            2,
            &[parse("a", "SELECT 1"), parse("b", "SELECT 2"), sync()],
        );
        receive(&mut s, &mut c, &reply(b"11Z"));
        // `a` used again: `b` is the least recently used.
        send(&mut s, &mut c, 2, &[bind("a"), sync()]);
        receive(&mut s, &mut c, &reply(b"2Z"));
        let got = send(&mut s, &mut c, 2, &[parse("c", "SELECT 3"), sync()]);
        let (a, b, cc) = (
            server_name(&c, "a"),
            server_name(&c, "b"),
            server_name(&c, "c"),
        );
        assert_eq!(
            got,
            vec![('C', b.clone()), ('P', cc.clone()), ('S', String::new())]
        );
        assert_eq!(receive(&mut s, &mut c, &reply(b"31Z")), "1Z");
        assert!(s.holds(&a) && s.holds(&cc) && !s.holds(&b));
        // `b` is prepared again when used (closing `a` now).
        let got = send(&mut s, &mut c, 2, &[bind("b"), sync()]);
        assert_eq!(
            got,
            vec![('C', a), ('P', b.clone()), ('B', b), ('S', String::new())]
        );
        assert_eq!(receive(&mut s, &mut c, &reply(b"312Z")), "2Z");
    }

    #[test]
    fn replies_split_across_reads_are_judged_whole() {
        let (mut s, mut c) = (ServerStatements::default(), ClientStatements::default());
        send(&mut s, &mut c, 10, &[parse("s1", "SELECT 1"), sync()]);
        receive(&mut s, &mut c, &reply(b"1Z"));
        let mut other = ServerStatements::default();
        send(&mut other, &mut c, 10, &[bind("s1"), sync()]);
        // ParseComplete (swallowed), BindComplete, a DataRow, ReadyForQuery, byte by byte.
        let mut all = reply(b"12");
        all.extend_from_slice(&[b'D', 0, 0, 0, 7, 0, 1, 9]);
        all.extend_from_slice(&reply(b"Z"));
        let mut buf = BytesMut::new();
        let mut client_got = BytesMut::new();
        for b in all.iter() {
            buf.extend_from_slice(&[*b]);
            other.filter(&mut c, &mut buf, 1);
            // The session forwards what it sees, partial messages too.
            client_got.extend_from_slice(&buf.split());
        }
        assert_eq!(
            messages(&client_got)
                .into_iter()
                .map(|(t, _)| t)
                .collect::<String>(),
            "2DZ"
        );
        assert!(other.is_settled());
    }

    #[test]
    fn replies_to_added_queries_split_across_reads_are_swallowed_whole() {
        let mut c = prepared_q(&mut ServerStatements::default());
        let mut complete = BytesMut::new();
        encode_message(&mut complete, COMMAND_COMPLETE, |m| put_cstr(m, "PREPARE"));
        let mut all = complete.clone();
        all.extend_from_slice(&reply(b"Z"));
        all.extend_from_slice(&[b'D', 0, 0, 0, 7, 0, 1, 9]);
        all.extend_from_slice(&complete);
        all.extend_from_slice(&reply(b"Z"));
        for step in [1, 2, 3, 7] {
            let mut other = ServerStatements::default();
            send(&mut other, &mut c, 10, &[query("EXECUTE q(1)")]);
            let (mut buf, mut client_got) = (BytesMut::new(), BytesMut::new());
            for chunk in all.chunks(step) {
                buf.extend_from_slice(chunk);
                other.filter(&mut c, &mut buf, chunk.len());
                client_got.extend_from_slice(&buf.split());
            }
            let tags: String = messages(&client_got).into_iter().map(|(t, _)| t).collect();
            assert_eq!(tags, "DCZ", "reads of {step} bytes");
            assert!(other.is_settled());
        }
    }

    #[test]
    fn discard_all_forgets_the_statements_once_it_succeeded() {
        let (mut s, mut c) = (ServerStatements::default(), ClientStatements::default());
        send(&mut s, &mut c, 10, &[parse("s1", "SELECT 1"), sync()]);
        receive(&mut s, &mut c, &reply(b"1Z"));
        // Refused (in a transaction block): nothing changes.
        send(&mut s, &mut c, 10, &[query("  DISCARD ALL")]);
        assert_eq!(receive(&mut s, &mut c, &reply(b"EZ")), "EZ");
        assert_eq!(s.len(), 1);
        send(&mut s, &mut c, 10, &[query("  DISCARD ALL")]);
        assert_eq!(receive(&mut s, &mut c, &reply(b"CZ")), "CZ");
        assert_eq!(s.len(), 0);
        // As in PostgreSQL, the client's statement is gone too.
        assert!(c.get("s1").is_none());
        assert_eq!(
            send(&mut s, &mut c, 10, &[bind("s1")]),
            vec![('B', "s1".to_string())]
        );
    }

    fn query(sql: &str) -> BytesMut {
        let mut q = BytesMut::new();
        encode_message(&mut q, QUERY, |m| put_cstr(m, sql));
        q
    }

    const PREPARE_Q: &str = "PREPARE q (int) AS SELECT $1";

    /// A client whose `PREPARE q` ran on `server`.
    fn prepared_q(server: &mut ServerStatements) -> ClientStatements {
        let mut c = ClientStatements::default();
        let got = send(server, &mut c, 10, &[query(PREPARE_Q)]);
        assert_eq!(got, vec![('Q', PREPARE_Q.to_string())]);
        assert_eq!(receive(server, &mut c, &reply(b"CZ")), "CZ");
        c
    }

    #[test]
    fn sql_prepare_is_recorded_when_it_succeeds_and_made_again_on_another_connection() {
        let mut first = ServerStatements::default();
        let mut c = prepared_q(&mut first);
        assert!(first.holds_sql("q", PREPARE_Q));
        // The same connection: EXECUTE goes as it is.
        assert_eq!(
            send(&mut first, &mut c, 10, &[query("EXECUTE q(1)")]),
            vec![('Q', "EXECUTE q(1)".to_string())]
        );
        assert_eq!(receive(&mut first, &mut c, &reply(b"TDCZ")), "TDCZ");
        // Another connection: the PREPARE goes first, its answer to nobody.
        let mut other = ServerStatements::default();
        let got = send(&mut other, &mut c, 10, &[query("EXPLAIN EXECUTE q(2)")]);
        assert_eq!(
            got,
            vec![
                ('Q', PREPARE_Q.to_string()),
                ('Q', "EXPLAIN EXECUTE q(2)".to_string())
            ]
        );
        assert_eq!(receive(&mut other, &mut c, &reply(b"CZTDCZ")), "TDCZ");
        assert!(other.holds_sql("q", PREPARE_Q) && other.is_settled());
        // A failed PREPARE is not recorded.
        let got = send(&mut other, &mut c, 10, &[query("PREPARE r AS SELEC")]);
        assert_eq!(got.len(), 1);
        assert_eq!(receive(&mut other, &mut c, &reply(b"EZ")), "EZ");
        assert!(!c.sql.contains_key("r") && other.sql.peek("r").is_none());
    }

    #[test]
    fn another_clients_statement_of_the_same_name_is_deallocated_first() {
        let mut server = ServerStatements::default();
        let _a = prepared_q(&mut server);
        // Client b never prepared q: its EXECUTE must meet no q (26000), its PREPARE no 42P05.
        let mut b = ClientStatements::default();
        let got = send(&mut server, &mut b, 10, &[query("EXECUTE q(1)")]);
        assert_eq!(
            got,
            vec![
                ('Q', "DEALLOCATE \"q\"".to_string()),
                ('Q', "EXECUTE q(1)".to_string())
            ]
        );
        assert_eq!(receive(&mut server, &mut b, &reply(b"CZEZ")), "EZ");
        let other_text = "PREPARE q AS SELECT 2";
        let got = send(&mut server, &mut b, 10, &[query(other_text)]);
        assert_eq!(got, vec![('Q', other_text.to_string())]);
        assert_eq!(receive(&mut server, &mut b, &reply(b"CZ")), "CZ");
        // Client a's q comes back, replacing b's.
        let mut a = prepared_q(&mut ServerStatements::default());
        let got = send(&mut server, &mut a, 10, &[query("EXECUTE q(1)")]);
        assert_eq!(
            got,
            vec![
                ('Q', "DEALLOCATE \"q\"".to_string()),
                ('Q', PREPARE_Q.to_string()),
                ('Q', "EXECUTE q(1)".to_string())
            ]
        );
        assert_eq!(receive(&mut server, &mut a, &reply(b"CZCZDCZ")), "DCZ");
        assert!(server.holds_sql("q", PREPARE_Q));
    }

    #[test]
    fn a_failed_added_prepare_shows_its_error_and_is_not_assumed() {
        let mut c = prepared_q(&mut ServerStatements::default());
        let mut other = ServerStatements::default();
        send(&mut other, &mut c, 10, &[query("EXECUTE q(1)")]);
        assert_eq!(receive(&mut other, &mut c, &reply(b"EZEZ")), "EEZ");
        assert!(other.sql.peek("q").is_none() && other.is_settled());
        // Still the client's: tried again next time.
        assert_eq!(
            send(&mut other, &mut c, 10, &[query("EXECUTE q(1)")]).len(),
            2
        );
    }

    #[test]
    fn in_a_failed_transaction_the_added_statements_error_is_not_shown_twice() {
        let mut server = ServerStatements::default();
        let _a = prepared_q(&mut server);
        let mut b = ClientStatements::default();
        send(&mut server, &mut b, 10, &[query("PREPARE q AS SELECT 2")]);
        let mut failed = BytesMut::new();
        encode_message(&mut failed, ERROR_RESPONSE, |m| {
            for (field, value) in [(b'S', "ERROR"), (b'C', IN_FAILED_TRANSACTION), (b'M', "m")] {
                m.put_u8(field);
                put_cstr(m, value);
            }
            m.put_u8(0);
        });
        let mut answer = failed.clone();
        answer.extend_from_slice(&reply(b"Z"));
        answer.extend_from_slice(&failed);
        answer.extend_from_slice(&reply(b"Z"));
        assert_eq!(receive(&mut server, &mut b, &answer), "EZ");
        // The other client's statement is still there.
        assert!(server.holds_sql("q", PREPARE_Q) && server.is_settled());
    }

    #[test]
    fn deallocate_forgets_for_the_client_and_that_connection_when_it_succeeds() {
        let mut server = ServerStatements::default();
        let mut c = prepared_q(&mut server);
        send(&mut server, &mut c, 10, &[query("DEALLOCATE q")]);
        assert_eq!(receive(&mut server, &mut c, &reply(b"CZ")), "CZ");
        assert!(c.sql.is_empty() && server.sql.is_empty());
        // Then EXECUTE goes as it is, for the server's 26000.
        let mut other = ServerStatements::default();
        assert_eq!(
            send(&mut other, &mut c, 10, &[query("EXECUTE q(1)")]),
            vec![('Q', "EXECUTE q(1)".to_string())]
        );
        // DEALLOCATE ALL, second of two statements: its CommandComplete is the second.
        let mut c = prepared_q(&mut server);
        send(&mut server, &mut c, 10, &[parse("s1", "SELECT 1"), sync()]);
        receive(&mut server, &mut c, &reply(b"1Z"));
        send(
            &mut server,
            &mut c,
            10,
            &[query("EXECUTE q(1); DEALLOCATE ALL")],
        );
        assert_eq!(receive(&mut server, &mut c, &reply(b"DC")), "DC");
        assert!(c.sql.contains_key("q"));
        assert_eq!(receive(&mut server, &mut c, &reply(b"CZ")), "CZ");
        assert!(c.sql.is_empty() && c.get("s1").is_none());
        assert!(server.sql.is_empty() && server.len() == 0);
    }

    #[test]
    fn sql_statements_beyond_the_bound_are_deallocated_unless_the_query_names_them() {
        let mut server = ServerStatements::default();
        let mut c = ClientStatements::default();
        for (name, n) in [("a", 1), ("b", 2)] {
            let text = format!("PREPARE {name} AS SELECT {n}");
            send(&mut server, &mut c, 2, &[query(&text)]);
            receive(&mut server, &mut c, &reply(b"CZ"));
        }
        let mut elsewhere = ServerStatements::default();
        send(&mut elsewhere, &mut c, 2, &[query("PREPARE c AS SELECT 3")]);
        receive(&mut elsewhere, &mut c, &reply(b"CZ"));
        // Held ones: nothing to make room for.
        assert_eq!(send(&mut server, &mut c, 2, &[query("EXECUTE a")]).len(), 1);
        receive(&mut server, &mut c, &reply(b"DCZ"));
        // `b` is now the least recently used.
        let got = send(&mut server, &mut c, 2, &[query("EXECUTE c")]);
        assert_eq!(
            got,
            vec![
                ('Q', "DEALLOCATE \"b\"".to_string()),
                ('Q', "PREPARE c AS SELECT 3".to_string()),
                ('Q', "EXECUTE c".to_string())
            ]
        );
        assert_eq!(receive(&mut server, &mut c, &reply(b"CZCZDCZ")), "DCZ");
        assert!(server.sql.peek("b").is_none());
        assert!(c.sql.contains_key("b"), "still the client's");
        // `a` is the least recently used, but named: `c` goes.
        let got = send(&mut server, &mut c, 2, &[query("EXECUTE b; EXECUTE a")]);
        assert_eq!(
            got,
            vec![
                ('Q', "DEALLOCATE \"c\"".to_string()),
                ('Q', "PREPARE b AS SELECT 2".to_string()),
                ('Q', "EXECUTE b; EXECUTE a".to_string())
            ]
        );
    }
}
