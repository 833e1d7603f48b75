//! The read-write port's session, followed just enough to survive a switchover.
//!
//! The read-write port relays bytes unchanged; [`RwTracker`] watches them go by (message headers
//! both ways, and the bodies of the few messages a decision needs) to know three things:
//! - whether the session is at a *transaction boundary*: every request answered (one ReadyForQuery
//!   per Query, Sync and FunctionCall) and the last ReadyForQuery said `I`;
//! - whether it holds state a new server connection would not have ([`Unmovable`]): a named
//!   prepared statement, a temporary object, `LISTEN`, a session advisory lock, a cursor `WITH
//!   HOLD`, session characteristics, or a `SET` the proxy could not follow;
//! - the session-level `SET`/`RESET`/`DISCARD` statements that succeeded, to replay on a new
//!   server connection.
//!
//! What the proxy does with that is [`after_server_end`] and [`should_hold`], pure rules with table
//! tests; `conn` only executes them. While the DCS asks the leader to step down (a switchover), a
//! session at a boundary keeps the bytes of its client's next transaction (it waits); when the former
//! leader then goes away (its shutdown's `FATAL 57P01`, end of file, or the proxy fencing it), a
//! session at a boundary without unmovable state opens a connection to the new leader with its
//! StartupMessage, replays its `SET`s and goes on: the client sees a pause, no error. Any other
//! session ends with `FATAL 57P01` and a message saying why.
//!
//! Cost on the hot path: one header walk per read in each direction, and the classifier only for
//! Query and Parse texts that may create session state ([`may_hold_state`]): ordinary `SELECT`,
//! `INSERT`, `UPDATE`, `DELETE`, `BEGIN`, `COMMIT` are not parsed.

use std::fmt;

use praetor_protocol::frontend::{query_text, Parse};
use praetor_protocol::{Class, Classifier, ErrorFields, FrameHeader, PinReason, SqlState};

/// How many bytes of one Query or Parse message the tracker keeps to classify it; a longer one
/// that may create session state makes the session unmovable (bytes).
const INSPECT_LIMIT_BYTES: usize = 64 * 1024;

/// Why a session cannot move to another server: the text ends "it holds ...".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unmovable {
    /// State the classifier recognised.
    Pinned(PinReason),
    /// A `SET` sent with the extended protocol or pipelined behind other requests: the proxy does
    /// not follow whether it took effect.
    UntrackedSet,
    /// A statement longer than [`INSPECT_LIMIT_BYTES`] that may create session state.
    TooLong,
    /// The client's bytes did not frame as the protocol: the proxy lost track.
    LostTrack,
}

impl fmt::Display for Unmovable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unmovable::Pinned(r) => write!(f, "a {r}"),
            Unmovable::UntrackedSet => {
                f.write_str("a SET sent in a pipeline or with the extended protocol")
            }
            Unmovable::TooLong => f.write_str("a statement too long for the proxy to inspect"),
            Unmovable::LostTrack => f.write_str("messages the proxy could not follow"),
        }
    }
}

/// Walks a byte stream of protocol messages (`tag`, 4-byte length, body) across reads, gathering
/// the messages a caller wants (up to [`INSPECT_LIMIT_BYTES`] of each) and passing over the rest.
#[derive(Debug, Default)]
struct Cursor {
    /// Bytes of the current message still to pass over.
    skip: usize,
    /// The gathered front of the current message (header, then the body when wanted).
    partial: Vec<u8>,
    /// The stream did not frame: nothing more is tracked.
    broken: bool,
}

impl Cursor {
    /// True between two messages.
    fn at_message_start(&self) -> bool {
        self.skip == 0 && self.partial.is_empty()
    }

    /// Walks `data`; calls `f(tag, frame, complete)` for each wanted message once gathered (`frame`
    /// with its header; `complete` false when cut at the limit) and `f(tag, header, true)` for the
    /// others, whose bodies are passed over.
    fn walk(
        &mut self,
        mut data: &[u8],
        wants: fn(u8) -> bool,
        f: &mut impl FnMut(u8, &[u8], bool),
    ) {
        while !self.broken {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
            }
            if data.is_empty() {
                return;
            }
            if self.partial.len() < 5 {
                let n = (5 - self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.partial.len() < 5 {
                    return;
                }
            }
            let tag = self.partial[0];
            let len = u32::from_be_bytes([
                self.partial[1],
                self.partial[2],
                self.partial[3],
                self.partial[4],
            ]) as usize;
            if len < 4 {
                self.broken = true;
                return;
            }
            let frame_len = 1 + len;
            if !wants(tag) {
                f(tag, &self.partial, true);
                self.skip = frame_len - 5;
                self.partial.clear();
                continue;
            }
            let keep = frame_len.min(INSPECT_LIMIT_BYTES);
            let n = (keep - self.partial.len()).min(data.len());
            self.partial.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.partial.len() < keep {
                return;
            }
            f(tag, &self.partial, keep == frame_len);
            self.skip = frame_len - keep;
            self.partial.clear();
        }
    }
}

/// What a read-write session has said and been answered, as far as switchovers care. Fed with the
/// bytes relayed each way ([`RwTracker::on_client`], [`RwTracker::on_server`]).
#[derive(Debug)]
pub(crate) struct RwTracker {
    client: Cursor,
    server: Cursor,
    /// Requests (Query, Sync, FunctionCall) sent and not yet answered by a ReadyForQuery.
    outstanding: u64,
    /// The last ReadyForQuery's status byte (`I`, `T` or `E`).
    status: u8,
    unmovable: Option<Unmovable>,
    /// Session-level SETs that succeeded, in order, to replay.
    sets: Vec<String>,
    /// A SET sent at a boundary, kept once its ReadyForQuery comes without an error before it.
    pending_set: Option<String>,
    /// An ErrorResponse came since the last ReadyForQuery.
    failed: bool,
    /// [`RwTracker::on_client`]'s messages of one read, kept for the next (empty between calls).
    client_events: Vec<ClientEvent>,
    /// [`RwTracker::on_server`]'s `(tag, ReadyForQuery status)` of one read, kept likewise.
    server_events: Vec<(u8, u8)>,
}

impl Default for RwTracker {
    fn default() -> RwTracker {
        RwTracker {
            client: Cursor::default(),
            server: Cursor::default(),
            outstanding: 0,
            status: b'I',
            unmovable: None,
            sets: Vec::new(),
            pending_set: None,
            failed: false,
            client_events: Vec::new(),
            server_events: Vec::new(),
        }
    }
}

/// Whether `text` may create session state or change a setting, so that it is worth classifying:
/// its first word is one that can (`SET`, `CREATE`, `DECLARE`, `LISTEN`, ...), or it names a
/// function or keyword that can anywhere (`advisory`, `set_config`, `temp`, `hold`). Ordinary
/// reads and writes are not parsed. Case-insensitive.
pub(crate) fn may_hold_state(text: &str) -> bool {
    const FIRST_WORDS: [&str; 12] = [
        "set",
        "reset",
        "discard",
        "create",
        "declare",
        "listen",
        "unlisten",
        "prepare",
        "deallocate",
        "do",
        "call",
        "load",
    ];
    let t = strip_leading_comments(text);
    let first: &str = t
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .next()
        .unwrap_or("");
    if FIRST_WORDS.iter().any(|w| first.eq_ignore_ascii_case(w)) {
        return true;
    }
    // One pass over the text (it runs for every Query and Parse): a word is compared only where
    // a byte matches its first letter.
    let bytes = text.as_bytes();
    (0..bytes.len()).any(|i| {
        let word: &[u8] = match bytes[i].to_ascii_lowercase() {
            b'a' => b"advisory",
            b's' => b"set_config",
            b't' => b"temp",
            b'h' => b"hold",
            _ => return false,
        };
        bytes
            .get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    })
}

/// `text` without leading whitespace, `--` and `/* */` comments.
fn strip_leading_comments(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix("--") {
            text = rest.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(rest) = text.strip_prefix("/*") {
            text = rest.split_once("*/").map_or("", |(_, r)| r);
        } else {
            return text;
        }
    }
}

/// A client message the tracker acts on: its tag, the text of a Query or Parse (or why the session
/// cannot move), and whether it was read whole.
type ClientEvent = (u8, Option<Result<String, Unmovable>>, bool);

fn client_wants(tag: u8) -> bool {
    matches!(tag, b'Q' | b'P')
}

fn server_wants(tag: u8) -> bool {
    tag == b'Z'
}

impl RwTracker {
    /// True at a transaction boundary: nothing outstanding, and not in a transaction block.
    pub fn is_at_boundary(&self) -> bool {
        self.outstanding == 0
            && self.status == b'I'
            && self.client.at_message_start()
            && !self.client.broken
            && !self.server.broken
    }

    /// Why the session cannot move, if it cannot.
    pub fn unmovable(&self) -> Option<&Unmovable> {
        self.unmovable.as_ref()
    }

    /// The session-level SETs to replay on a new server connection, in order.
    pub fn sets(&self) -> &[String] {
        &self.sets
    }

    /// True when the next server bytes start a message and nothing is outstanding: a message
    /// there is one the server sent on its own (a notice, or the FATAL of its shutdown).
    pub fn expects_nothing(&self) -> bool {
        self.outstanding == 0 && self.server.at_message_start() && !self.server.broken
    }

    fn mark(&mut self, why: Unmovable) {
        if self.unmovable.is_none() {
            self.unmovable = Some(why);
        }
    }

    /// Follows bytes the client sent (relayed to the server as they are).
    pub fn on_client(&mut self, data: &[u8], classifier: &Classifier) {
        let mut cursor = std::mem::take(&mut self.client);
        // Reused across reads: no allocation per message on the hot path.
        let mut events = std::mem::take(&mut self.client_events);
        cursor.walk(data, client_wants, &mut |tag, frame, complete| match tag {
            b'Q' => {
                let text = query_text(&frame[5..]).ok();
                let item = match text {
                    // Copied only when it may need the classifier (an empty text needs nothing).
                    Some(t) if may_hold_state(t) => Ok(t.to_string()),
                    Some(_) => Ok(String::new()),
                    None if !complete => {
                        // Cut at the limit: judge by what is there.
                        let cut = String::from_utf8_lossy(&frame[5..]).into_owned();
                        if may_hold_state(&cut) {
                            Err(Unmovable::TooLong)
                        } else {
                            Ok(String::new())
                        }
                    }
                    None => Err(Unmovable::LostTrack),
                };
                events.push((tag, Some(item), complete));
            }
            b'P' => {
                let item = match Parse::decode(&frame[5..]) {
                    Ok(p) if !p.name.is_empty() => {
                        Err(Unmovable::Pinned(PinReason::PreparedStatement))
                    }
                    Ok(p) if may_hold_state(p.query) => Ok(p.query.to_string()),
                    Ok(_) => Ok(String::new()),
                    Err(_) if !complete => Err(Unmovable::TooLong),
                    Err(_) => Err(Unmovable::LostTrack),
                };
                events.push((tag, Some(item), complete));
            }
            b'S' | b'F' => events.push((tag, None, true)),
            _ => {}
        });
        if cursor.broken {
            self.mark(Unmovable::LostTrack);
        }
        self.client = cursor;
        for (tag, item, _) in events.drain(..) {
            match (tag, item) {
                (b'Q', Some(Ok(text))) => {
                    let at_boundary = self.outstanding == 0 && self.status == b'I';
                    self.outstanding += 1;
                    if !may_hold_state(&text) {
                        continue;
                    }
                    match classifier.classify(&text) {
                        Class::SessionSet if at_boundary && self.pending_set.is_none() => {
                            self.pending_set = Some(text)
                        }
                        Class::SessionSet => self.mark(Unmovable::UntrackedSet),
                        Class::Pin(r) => self.mark(Unmovable::Pinned(r)),
                        _ => {}
                    }
                }
                (b'Q', Some(Err(why))) => {
                    self.outstanding += 1;
                    self.mark(why);
                }
                (b'P', Some(Ok(text))) if may_hold_state(&text) => {
                    match classifier.classify(&text) {
                        Class::SessionSet => self.mark(Unmovable::UntrackedSet),
                        Class::Pin(r) => self.mark(Unmovable::Pinned(r)),
                        _ => {}
                    }
                }
                (b'P', Some(Err(why))) => self.mark(why),
                (b'S' | b'F', _) => self.outstanding += 1,
                _ => {}
            }
        }
        self.client_events = events;
    }

    /// Follows bytes the server sent (relayed to the client as they are).
    pub fn on_server(&mut self, data: &[u8]) {
        let mut cursor = std::mem::take(&mut self.server);
        // (tag, ReadyForQuery status)
        let mut seen = std::mem::take(&mut self.server_events);
        cursor.walk(data, server_wants, &mut |tag, frame, _| match tag {
            b'Z' => seen.push((tag, frame.get(5).copied().unwrap_or(b'I'))),
            b'E' => seen.push((tag, 0)),
            _ => {}
        });
        self.server = cursor;
        for (tag, status) in seen.drain(..) {
            if tag == b'E' {
                self.failed = true;
                continue;
            }
            self.outstanding = self.outstanding.saturating_sub(1);
            self.status = status;
            if self.outstanding == 0 {
                if let Some(set) = self.pending_set.take() {
                    if !self.failed && status == b'I' {
                        self.sets.push(set);
                    }
                }
            }
            self.failed = false;
        }
        self.server_events = seen;
    }
}

/// What the server sent while nothing was outstanding (`buf` starts at a message).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Unasked {
    /// Ordinary messages (notices, parameter changes, notifications): relay them.
    Relay,
    /// An ErrorResponse not wholly read yet: read more before relaying anything.
    NeedMore,
    /// A FATAL error starting at this offset: the server ends the session (for a switchover, the
    /// former leader's shutdown, `57P01`). What precedes it may be relayed.
    Fatal(usize),
}

/// Looks through what the server sent on its own, for a FATAL that ends the session.
pub(crate) fn scan_unasked(buf: &[u8]) -> Unasked {
    let mut at = 0;
    loop {
        match FrameHeader::peek(&buf[at..]) {
            Ok(Some(h)) if h.tag == b'E' => {
                let Some(body) = h.body(&buf[at..]) else {
                    return Unasked::NeedMore;
                };
                let fields = ErrorFields::parse(body).unwrap_or_default();
                let severity = fields.get(b'V').or(fields.severity());
                if matches!(severity, Some("FATAL" | "PANIC")) {
                    return Unasked::Fatal(at);
                }
                at += h.frame_len;
            }
            Ok(Some(h)) if buf.len() - at >= h.frame_len => at += h.frame_len,
            // A partial header of an unknown message, or bytes past the end: relay.
            _ => return Unasked::Relay,
        }
    }
}

/// How the server side of a read-write session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServerEnd {
    /// The proxy fenced the backend (it lost the leader key, or the proxy stops serving).
    Fenced,
    /// A FATAL ErrorResponse while nothing was outstanding (held back from the client).
    Fatal,
    /// End of file or an error on the server socket.
    Closed,
}

/// What to do once the server side ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// End as before this rule existed: relay the server's FATAL if one was held, and close.
    Close,
    /// Open a connection to the new leader, replay the SETs, go on relaying.
    Move,
    /// End with `FATAL 57P01` and this message.
    End(String),
}

/// The move rule. `leader_moving`: the DCS asked this backend to step down or another member
/// leads now (the backend is not routable as leader). `at_boundary`: [`RwTracker::is_at_boundary`].
/// A server that ends while it still leads ends the session as it would without the proxy (an
/// administrator's `pg_terminate_backend` is not undone).
pub(crate) fn after_server_end(
    end: ServerEnd,
    leader_moving: bool,
    at_boundary: bool,
    unmovable: Option<&Unmovable>,
    shutting_down: bool,
) -> Next {
    if shutting_down {
        return Next::Close;
    }
    if !leader_moving {
        return match end {
            ServerEnd::Fenced => Next::End(
                "terminating connection: the proxy stopped serving this leader".to_string(),
            ),
            ServerEnd::Fatal | ServerEnd::Closed => Next::Close,
        };
    }
    match (at_boundary, unmovable) {
        (true, None) => Next::Move,
        (true, Some(why)) => Next::End(format!(
            "terminating connection: the leader stepped down (switchover) and this session cannot \
             move to the new leader: it holds {why}; reconnect"
        )),
        (false, _) => Next::End(
            "terminating connection: the leader stepped down (switchover) during this \
             transaction, which did not commit; reconnect and retry it"
                .to_string(),
        ),
    }
}

/// Whether the relay holds what the client just sent instead of forwarding it: the session was at a
/// transaction boundary when it came, and the leader is asked to step down (the next transaction
/// waits for the new leader) or the admin console's `PAUSE` holds the database (the transaction
/// waits for `RESUME`): `hold_requested` is either.
pub(crate) fn should_hold(hold_requested: bool, at_boundary: bool) -> bool {
    hold_requested && at_boundary
}

/// The SQLSTATE of every session the move rule ends: `admin_shutdown`, as PostgreSQL's own.
pub(crate) const END_CODE: SqlState = SqlState::ADMIN_SHUTDOWN;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn q(sql: &str) -> Vec<u8> {
        let mut b = BytesMut::new();
        praetor_protocol::frontend::encode_query(&mut b, sql);
        b.to_vec()
    }

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(sql.as_bytes());
        body.push(0);
        body.extend_from_slice(&0i16.to_be_bytes());
        msg(b'P', &body)
    }

    fn rfq(status: u8) -> Vec<u8> {
        msg(b'Z', &[status])
    }

    fn error(severity: &str, code: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (f, v) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', "x"),
        ] {
            body.push(f);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        msg(b'E', &body)
    }

    fn complete() -> Vec<u8> {
        msg(b'C', b"SET\0")
    }

    /// Feeds a conversation, each step client or server bytes, split into 3-byte reads so that
    /// every message spans reads.
    fn run(steps: &[(bool, Vec<u8>)]) -> RwTracker {
        let classifier = Classifier::new(&[]);
        let mut t = RwTracker::default();
        for (from_client, bytes) in steps {
            for chunk in bytes.chunks(3) {
                if *from_client {
                    t.on_client(chunk, &classifier);
                } else {
                    t.on_server(chunk);
                }
            }
        }
        t
    }

    const C: bool = true;
    const S: bool = false;

    #[test]
    fn tracking_table() {
        struct Row {
            name: &'static str,
            steps: Vec<(bool, Vec<u8>)>,
            at_boundary: bool,
            unmovable: Option<Unmovable>,
            sets: &'static [&'static str],
        }
        let rows = vec![
            Row {
                name: "nothing yet",
                steps: vec![],
                at_boundary: true,
                unmovable: None,
                sets: &[],
            },
            Row {
                name: "a query waiting for its answer",
                steps: vec![(C, q("UPDATE t SET a = 1"))],
                at_boundary: false,
                unmovable: None,
                sets: &[],
            },
            Row {
                name: "an autocommit write answered",
                steps: vec![(C, q("UPDATE t SET a = 1")), (S, rfq(b'I'))],
                at_boundary: true,
                unmovable: None,
                sets: &[],
            },
            Row {
                name: "inside a transaction block",
                steps: vec![(C, q("BEGIN")), (S, rfq(b'T'))],
                at_boundary: false,
                unmovable: None,
                sets: &[],
            },
            Row {
                name: "a SET that succeeded is replayed",
                steps: vec![
                    (C, q("SET application_name = 'x'")),
                    (S, [complete(), rfq(b'I')].concat()),
                ],
                at_boundary: true,
                unmovable: None,
                sets: &["SET application_name = 'x'"],
            },
            Row {
                name: "a SET that failed is not",
                steps: vec![
                    (C, q("SET nosuch = 1")),
                    (S, [error("ERROR", "42704"), rfq(b'I')].concat()),
                ],
                at_boundary: true,
                unmovable: None,
                sets: &[],
            },
            Row {
                name: "extended protocol: one answer per Sync",
                steps: vec![
                    (C, [parse("", "SELECT 1"), msg(b'S', &[])].concat()),
                    (C, [parse("", "SELECT 2"), msg(b'S', &[])].concat()),
                    (S, rfq(b'I')),
                ],
                at_boundary: false,
                unmovable: None,
                sets: &[],
            },
            Row {
                name: "a named prepared statement cannot move",
                steps: vec![
                    (C, [parse("s1", "SELECT 1"), msg(b'S', &[])].concat()),
                    (S, rfq(b'I')),
                ],
                at_boundary: true,
                unmovable: Some(Unmovable::Pinned(PinReason::PreparedStatement)),
                sets: &[],
            },
            Row {
                name: "a temporary table cannot move",
                steps: vec![(C, q("CREATE TEMP TABLE x (a int)")), (S, rfq(b'I'))],
                at_boundary: true,
                unmovable: Some(Unmovable::Pinned(PinReason::TempObject)),
                sets: &[],
            },
            Row {
                name: "LISTEN cannot move",
                steps: vec![(C, q("LISTEN ch")), (S, rfq(b'I'))],
                at_boundary: true,
                unmovable: Some(Unmovable::Pinned(PinReason::Listen)),
                sets: &[],
            },
            Row {
                name: "a cursor WITH HOLD cannot move",
                steps: vec![
                    (C, q("DECLARE c CURSOR WITH HOLD FOR SELECT 1")),
                    (S, rfq(b'I')),
                ],
                at_boundary: true,
                unmovable: Some(Unmovable::Pinned(PinReason::HoldCursor)),
                sets: &[],
            },
            Row {
                name: "a session advisory lock cannot move",
                steps: vec![(C, q("SELECT pg_advisory_lock(1)")), (S, rfq(b'I'))],
                at_boundary: true,
                unmovable: Some(Unmovable::Pinned(PinReason::AdvisoryLock)),
                sets: &[],
            },
            Row {
                name: "a SET pipelined behind another query is not followed",
                steps: vec![
                    (C, q("SELECT 1")),
                    (C, q("SET work_mem = '8MB'")),
                    (S, [rfq(b'I'), rfq(b'I')].concat()),
                ],
                at_boundary: true,
                unmovable: Some(Unmovable::UntrackedSet),
                sets: &[],
            },
        ];
        for row in rows {
            let t = run(&row.steps);
            assert_eq!(
                t.is_at_boundary(),
                row.at_boundary,
                "{}: boundary",
                row.name
            );
            assert_eq!(
                t.unmovable(),
                row.unmovable.as_ref(),
                "{}: unmovable",
                row.name
            );
            assert_eq!(t.sets(), row.sets, "{}: sets", row.name);
        }
    }

    #[test]
    fn ordinary_statements_are_not_classified() {
        for (sql, may) in [
            (
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 3",
                false,
            ),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 3", false),
            ("INSERT INTO h VALUES (1)", false),
            ("BEGIN", false),
            ("END", false),
            ("  /* c */ -- d\n set x = 1", true),
            ("SELECT pg_advisory_lock(1)", true),
            ("SELECT * INTO TEMP t FROM x", true),
            ("select set_config('a.b', '1', false)", true),
            ("LISTEN x", true),
        ] {
            assert_eq!(may_hold_state(sql), may, "{sql}");
        }
    }

    #[test]
    fn a_fatal_sent_unasked_is_found_after_what_precedes_it() {
        let notice = msg(b'N', b"SNOTICE\0\0");
        let fatal = error("FATAL", "57P01");
        assert_eq!(scan_unasked(&notice), Unasked::Relay);
        assert_eq!(scan_unasked(&error("ERROR", "XX000")), Unasked::Relay);
        let both = [notice.clone(), fatal.clone()].concat();
        assert_eq!(scan_unasked(&both), Unasked::Fatal(notice.len()));
        assert_eq!(
            scan_unasked(&both[..both.len() - 2]),
            Unasked::NeedMore,
            "half a FATAL: wait for the rest"
        );
    }

    #[test]
    fn move_rule_table() {
        use Next::*;
        use ServerEnd::*;
        let temp = Unmovable::Pinned(PinReason::TempObject);
        // (end, leader moving, at boundary, unmovable, shutting down) -> next
        type Row<'a> = (ServerEnd, bool, bool, Option<&'a Unmovable>, bool, &'a str);
        let rows: Vec<Row> = vec![
            (Fatal, true, true, None, false, "move"),
            (Closed, true, true, None, false, "move"),
            (Fenced, true, true, None, false, "move"),
            (
                Fatal,
                true,
                true,
                Some(&temp),
                false,
                "end: it holds a temporary object",
            ),
            (
                Fatal,
                true,
                false,
                None,
                false,
                "end: during this transaction",
            ),
            (
                Fenced,
                true,
                false,
                None,
                false,
                "end: during this transaction",
            ),
            (Fatal, false, true, None, false, "close"),
            (Closed, false, true, None, false, "close"),
            (
                Fenced,
                false,
                true,
                None,
                false,
                "end: the proxy stopped serving",
            ),
            (Fenced, true, true, None, true, "close"),
        ];
        for (end, moving, boundary, unmovable, shutdown, want) in rows {
            let got = after_server_end(end, moving, boundary, unmovable, shutdown);
            let ok = match (&got, want) {
                (Move, "move") | (Close, "close") => true,
                (End(m), w) => w
                    .strip_prefix("end: ")
                    .is_some_and(|needle| m.contains(needle)),
                _ => false,
            };
            assert!(
                ok,
                "{end:?} moving={moving} boundary={boundary} {unmovable:?}: {got:?}, want {want}"
            );
        }
        assert!(should_hold(true, true));
        assert!(!should_hold(true, false), "a running transaction goes on");
        assert!(!should_hold(false, true));
    }
}
