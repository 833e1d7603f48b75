//! The read-write port's session, followed just enough to survive a switchover (and, on both
//! relaying ports, for the admin console's `PAUSE` and `RECONNECT` to act at a transaction
//! boundary: [`should_hold`], [`should_reconnect`]).
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
//! What the proxy does with that is [`should_hold`], [`drain`] and [`after_server_end`], pure rules
//! with table tests; `conn` only executes them. While the DCS asks the leader to step down (a
//! switchover), a session at a boundary keeps the bytes of its client's next transaction (it
//! waits); a session in a transaction gets up to `drain_timeout` to finish it, after which the
//! proxy cancels it (a CancelRequest to its server, then the session ends: the server rolls the
//! transaction back). When the former leader then goes away (its shutdown's `FATAL 57P01`, end of
//! file, or the proxy fencing it), a session at a boundary without unmovable state opens a
//! connection to the new leader with its StartupMessage, logging in with what the proxy kept of
//! the client's login when the server asks for a password ([`crate::rw_auth`]), replays its `SET`s
//! and goes on: the client sees a pause, no error. Any other session ends with `FATAL 57P01` and a
//! message saying why.
//!
//! `drain_timeout` (default [`crate::settings::DEFAULT_DRAIN_TIMEOUT`]) is counted from the moment
//! the proxy sees the switchover. The leader's agent waits for transactions in progress at most
//! 5 s itself (and at most half the time left before its demotion deadline) before its fast stop;
//! a `drain_timeout` below that lets the proxy's cancel, with its message naming `drain_timeout`,
//! come first, and ends the agent's wait as soon as the transactions are gone.
//!
//! Cost on the hot path: one header walk per read in each direction, and the classifier only for
//! Query and Parse texts that may create session state ([`may_hold_state`]): ordinary `SELECT`,
//! `INSERT`, `UPDATE`, `DELETE`, `BEGIN`, `COMMIT` are not parsed.

use std::fmt;

use praetor_protocol::frontend::Parse;
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
            // A message whose header (and wanted front) is all in `data`, the usual case, is
            // passed as a slice of it, not gathered into `partial`.
            if self.partial.is_empty() && data.len() >= 5 {
                let tag = data[0];
                let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
                if len < 4 {
                    self.broken = true;
                    return;
                }
                let frame_len = 1 + len;
                if !wants(tag) {
                    f(tag, &data[..5], true);
                    self.skip = frame_len - 5;
                    data = &data[5..];
                    continue;
                }
                let keep = frame_len.min(INSPECT_LIMIT_BYTES);
                if data.len() >= keep {
                    f(tag, &data[..keep], keep == frame_len);
                    self.skip = frame_len - keep;
                    data = &data[keep..];
                    continue;
                }
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
    // One pass over the text (it runs for every Query and Parse), eight bytes at a time: a word
    // is compared only where a byte is its first letter and the next its second
    // ([`word_starts`]: `ad`, `se`, `te`, `ho`, either case; the comparison confirms). With
    // messages walked without copies, the read-write port went from 7,425 to 6,785 user-space
    // instructions per transaction (callgrind, pgbench -S -c 8, one thread); marking on two
    // letters instead of one (`a`, `s`, `t`, `h` start a word of most statements) saved ~400
    // more.
    let bytes = text.as_bytes();
    let at = |i: usize, word: &[u8]| {
        bytes
            .get(i..i + word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
    };
    let word_at = |i: usize| match bytes[i] | 0x20 {
        b'a' => at(i, b"advisory"),
        b's' => at(i, b"set_config"),
        b't' => at(i, b"temp"),
        b'h' => at(i, b"hold"),
        _ => false,
    };
    let mut chunks = bytes.chunks_exact(8);
    for (k, chunk) in chunks.by_ref().enumerate() {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks of eight bytes"));
        let next = bytes.get(k * 8 + 8).copied().unwrap_or(0);
        let mut marks = word_starts(word, next);
        while marks != 0 {
            if word_at(k * 8 + (marks.trailing_zeros() / 8) as usize) {
                return true;
            }
            marks &= marks - 1;
        }
    }
    let tail = bytes.len() - chunks.remainder().len();
    (tail..bytes.len()).any(word_at)
}

/// The bytes of `word` (eight bytes of text, little-endian; `next` the byte after them, 0 at the
/// end) that may start one of [`may_hold_state`]'s words: the byte is its first letter and the
/// following byte its second (`ad`visory, `se`t_config, `te`mp, `ho`ld, either case); the high
/// bit of each such byte is set. It may also mark bytes above such a byte that are not (the
/// classic "has a zero byte" test borrows across bytes), never misses one: callers confirm each
/// mark.
fn word_starts(word: u64, next: u8) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let first = word | LOWER;
    // Byte i of `second` is byte i + 1 of the text.
    let second = ((word >> 8) | (u64::from(next) << 56)) | LOWER;
    let zeros = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let pair =
        |a: u8, b: u8| zeros((first ^ (ONES * u64::from(a))) | (second ^ (ONES * u64::from(b))));
    pair(b'a', b'd') | pair(b's', b'e') | pair(b't', b'e') | pair(b'h', b'o')
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

/// The SQL text of a Query body (`text\0`), as `query_text` reads it (`None` where it fails: no
/// terminator, bytes after it, invalid UTF-8), without its byte-by-byte search for the terminator:
/// a well-formed body ends with its only NUL (`contains` is a word-at-a-time search).
fn query_body_text(body: &[u8]) -> Option<&str> {
    match body.split_last() {
        Some((0, text)) if !text.contains(&0) => std::str::from_utf8(text).ok(),
        _ => None,
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

    /// True when the server's next bytes start a message (nothing relayed stops mid-message).
    pub fn server_at_message_start(&self) -> bool {
        self.server.at_message_start()
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
                let text = query_body_text(&frame[5..]);
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
    /// The session's transaction ran past `drain_timeout` (the value) during a switchover
    /// ([`drain`]); the proxy sent its server a CancelRequest.
    Drained(std::time::Duration),
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
/// `cannot_log_in`: why the proxy could not log in to another server for this client (it logged in
/// with a password and the proxy kept nothing to log in with, [`crate::rw_auth::Relogin`]).
/// A server that ends while it still leads ends the session as it would without the proxy (an
/// administrator's `pg_terminate_backend` is not undone).
pub(crate) fn after_server_end(
    end: ServerEnd,
    leader_moving: bool,
    at_boundary: bool,
    unmovable: Option<&Unmovable>,
    cannot_log_in: Option<&str>,
    shutting_down: bool,
) -> Next {
    if shutting_down {
        return Next::Close;
    }
    if let ServerEnd::Drained(timeout) = end {
        return Next::End(drained_message(timeout));
    }
    if !leader_moving {
        return match end {
            ServerEnd::Fenced => Next::End(
                "terminating connection: the proxy stopped serving this leader".to_string(),
            ),
            ServerEnd::Fatal | ServerEnd::Closed | ServerEnd::Drained(_) => Next::Close,
        };
    }
    match (at_boundary, unmovable) {
        (true, None) => match cannot_log_in {
            None => Next::Move,
            Some(why) => Next::End(format!("{CANNOT_MOVE}: {why}; reconnect")),
        },
        (true, Some(why)) => Next::End(cannot_move_message(why)),
        (false, _) => Next::End(
            "terminating connection: the leader stepped down (switchover) during this \
             transaction, which did not commit; reconnect and retry it"
                .to_string(),
        ),
    }
}

/// The start of the message that ends a session that cannot move to the new leader.
const CANNOT_MOVE: &str = "terminating connection: the leader stepped down (switchover) and this \
                           session cannot move to the new leader";

/// The message of the `FATAL 57P01` that ends a session holding `why`, state the new leader would
/// not have, in a switchover: on the read-write port ([`after_server_end`]) and on the auto port
/// (`session`, [`crate::units::pinned_drain`]).
pub(crate) fn cannot_move_message(why: &Unmovable) -> String {
    format!("{CANNOT_MOVE}: it holds {why}; reconnect")
}

/// The message of the `FATAL 57P01` that ends a session whose transaction ran past
/// `drain_timeout` (the value) while its leader stepped down, on the read-write port
/// ([`after_server_end`]) and on the auto port (`session`, [`crate::units::leader_drain`]).
pub(crate) fn drained_message(drain_timeout: std::time::Duration) -> String {
    format!(
        "terminating connection: the leader is stepping down (switchover) and this transaction \
         did not finish within drain_timeout ({} s): the proxy cancelled it and it rolled back; \
         reconnect and retry it",
        drain_timeout.as_secs_f64()
    )
}

/// Whether the relay holds what the client just sent instead of forwarding it: the session was at a
/// transaction boundary when it came, and the leader is asked to step down (the next transaction
/// waits for the new leader) or the admin console's `PAUSE` holds the database (the transaction
/// waits for `RESUME`): `hold_requested` is either.
pub(crate) fn should_hold(hold_requested: bool, at_boundary: bool) -> bool {
    hold_requested && at_boundary
}

/// Whether a read-write or read-only session leaves its server connection for a new one before its
/// next transaction (the admin console's `RECONNECT`): the connection was open at a `RECONNECT`
/// that covers it (`stale`), the session is at a transaction boundary, holds nothing a new
/// connection would not have, and the proxy can log in again for it (`can_log_in`). Otherwise the
/// connection closes when the client leaves, as with PgBouncer's session pooling.
pub(crate) fn should_reconnect(
    stale: bool,
    at_boundary: bool,
    unmovable: Option<&Unmovable>,
    can_log_in: bool,
) -> bool {
    stale && at_boundary && unmovable.is_none() && can_log_in
}

/// What a session does about a transaction running while the leader steps down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drain {
    /// No switchover, or no transaction running (a session at a boundary is held instead,
    /// [`should_hold`]): nothing to do.
    Nothing,
    /// A transaction runs: it may go on for this long still.
    Wait(std::time::Duration),
    /// A transaction ran past `drain_timeout`: cancel it and end the session.
    Cancel,
}

/// The drain rule. `switching_for`: how long the proxy has seen the DCS ask the session's leader to
/// step down (`None`: it does not). `at_boundary`: [`RwTracker::is_at_boundary`]. A transaction
/// running when the switchover starts gets `drain_timeout` to finish (and the leader's agent waits
/// for it, up to its own bound); past it the proxy cancels it, so it neither keeps the switchover
/// waiting nor is cut by the leader's stop without a word.
pub(crate) fn drain(
    switching_for: Option<std::time::Duration>,
    drain_timeout: std::time::Duration,
    at_boundary: bool,
) -> Drain {
    match switching_for {
        None => Drain::Nothing,
        Some(_) if at_boundary => Drain::Nothing,
        Some(t) if t >= drain_timeout => Drain::Cancel,
        Some(t) => Drain::Wait(drain_timeout - t),
    }
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
    /// every message spans reads, and again with each step one read (messages passed as slices
    /// of it): both must end in the same state.
    fn run(steps: &[(bool, Vec<u8>)]) -> RwTracker {
        let split = feed(steps, 3);
        let whole = feed(steps, usize::MAX);
        assert_eq!(
            format!("{split:?}"),
            format!("{whole:?}"),
            "3-byte reads and whole reads tracked alike"
        );
        split
    }

    fn feed(steps: &[(bool, Vec<u8>)], read: usize) -> RwTracker {
        let classifier = Classifier::new(&[]);
        let mut t = RwTracker::default();
        for (from_client, bytes) in steps {
            for chunk in bytes.chunks(read) {
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
            ("SELECT * INTO TeMp t FROM x", true),
            ("SELECT 1 -- hOLd", true),
            ("select pg_try_ADVISORY_lock(1)", true),
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 7;",
                false,
            ),
            ("SELECT 'se' || 'te' || 'ho' || 'ad'", false),
            ("SELECT 1 AS a", false),
            ("SELECT 1 AS h", false),
            ("SELECT 1 AS temps", true),
            ("SELECT 1 AS adviso", false),
            // First words: matched whole, either case, up to the first other character.
            ("DEALLOCATE ALL", true),
            ("deallocatex", false),
            ("do $$ begin end $$", true),
            ("Load 'x'", true),
            ("UnListen *", true),
            ("declared", false),
            ("prepared", false),
            ("sets", false),
            ("set;", true),
            ("_set x", false),
            ("selectdeallocate", false),
            ("seté x", true),
            ("", false),
            ("-- only a comment", false),
        ] {
            assert_eq!(may_hold_state(sql), may, "{sql}");
        }
    }

    #[test]
    fn words_are_found_at_every_offset_and_either_case() {
        // The scan goes eight bytes at a time, then byte by byte: each word at every offset
        // across a chunk boundary and in the tail, alone and after letters it starts with.
        for word in ["advisory", "SET_CONFIG", "Temp", "hOLD"] {
            for pad in 0..20 {
                let sql = format!("SELECT {}{word} x", "ahst".repeat(pad).get(..pad).unwrap());
                assert!(may_hold_state(&sql), "{sql}");
                let sql = format!("SELECT {}{word}", "é".repeat(pad));
                assert!(may_hold_state(&sql), "{sql}");
            }
        }
        for pad in 0..20 {
            // First letters without their second, and words cut at the end.
            let sql = format!("SELECT {} ahst adv", "x".repeat(pad));
            assert!(!may_hold_state(&sql), "{sql}");
            let sql = format!("SELECT {} a.b, tem", "é".repeat(pad));
            assert!(!may_hold_state(&sql), "{sql}");
        }
    }

    #[test]
    fn a_query_body_reads_as_the_protocol_crate_reads_it() {
        for body in [
            &b"SELECT 1\0"[..],
            b"\0",
            b"SELECT 1",
            b"",
            b"SELECT 1\0\0",
            b"SELECT\0 1\0",
            b"SELECT \xff\0",
            "SELECT 'é'\0".as_bytes(),
            // A NUL inside the text, in an eight-byte chunk and in the tail.
            b"SELECT 1234\x005678 FROM t\0",
            b"SELECT 12345678 FROM t\0x\0",
            b"SELECT pg_advisory_lock(1)\0\0",
        ] {
            assert_eq!(
                query_body_text(body),
                praetor_protocol::frontend::query_text(body).ok(),
                "{body:?}"
            );
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
        let no_secret = "it logged in with a password and the proxy holds no credentials";
        let drained = Drained(std::time::Duration::from_secs(4));
        // (end, leader moving, at boundary, unmovable, cannot log in, shutting down) -> next
        type Row<'a> = (
            ServerEnd,
            bool,
            bool,
            Option<&'a Unmovable>,
            Option<&'a str>,
            bool,
            &'a str,
        );
        let rows: Vec<Row> = vec![
            (Fatal, true, true, None, None, false, "move"),
            (Closed, true, true, None, None, false, "move"),
            (Fenced, true, true, None, None, false, "move"),
            (
                Fatal,
                true,
                true,
                Some(&temp),
                None,
                false,
                "end: it holds a temporary object",
            ),
            (
                Fatal,
                true,
                true,
                None,
                Some(no_secret),
                false,
                "end: cannot move to the new leader: it logged in with a password",
            ),
            (
                Fatal,
                true,
                false,
                None,
                None,
                false,
                "end: during this transaction",
            ),
            (
                Fenced,
                true,
                false,
                None,
                None,
                false,
                "end: during this transaction",
            ),
            (
                drained,
                true,
                false,
                None,
                None,
                false,
                "end: did not finish within drain_timeout (4 s)",
            ),
            (
                drained,
                true,
                false,
                Some(&temp),
                Some(no_secret),
                false,
                "end: drain_timeout",
            ),
            (Fatal, false, true, None, None, false, "close"),
            (Closed, false, true, None, Some(no_secret), false, "close"),
            (
                Fenced,
                false,
                true,
                None,
                None,
                false,
                "end: the proxy stopped serving",
            ),
            (Fenced, true, true, None, None, true, "close"),
            (drained, true, false, None, None, true, "close"),
        ];
        for (end, moving, boundary, unmovable, relogin, shutdown, want) in rows {
            let got = after_server_end(end, moving, boundary, unmovable, relogin, shutdown);
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

    #[test]
    fn reconnect_rule_table() {
        let temp = Unmovable::Pinned(PinReason::TempObject);
        // (stale, at boundary, unmovable, can log in) -> reconnect
        let rows = [
            (true, true, None, true, true),
            (false, true, None, true, false),
            (true, false, None, true, false),
            (true, true, Some(&temp), true, false),
            (true, true, None, false, false),
        ];
        for (stale, boundary, unmovable, log_in, want) in rows {
            assert_eq!(
                should_reconnect(stale, boundary, unmovable, log_in),
                want,
                "stale {stale}, boundary {boundary}, {unmovable:?}, can log in {log_in}"
            );
        }
    }

    #[test]
    fn drain_rule_table() {
        let s = std::time::Duration::from_secs;
        let ms = std::time::Duration::from_millis;
        // (switching for, drain_timeout, at boundary) -> drain
        let rows = [
            (None, s(4), false, Drain::Nothing),
            (None, s(4), true, Drain::Nothing),
            (Some(s(1)), s(4), true, Drain::Nothing),
            (Some(s(9)), s(4), true, Drain::Nothing),
            (Some(ms(0)), s(4), false, Drain::Wait(s(4))),
            (Some(ms(2500)), s(4), false, Drain::Wait(ms(1500))),
            (Some(s(4)), s(4), false, Drain::Cancel),
            (Some(s(9)), s(4), false, Drain::Cancel),
            (Some(ms(0)), s(0), false, Drain::Cancel),
        ];
        for (switching, timeout, boundary, want) in rows {
            assert_eq!(
                drain(switching, timeout, boundary),
                want,
                "switching for {switching:?}, drain_timeout {timeout:?}, boundary {boundary}"
            );
        }
    }
}
