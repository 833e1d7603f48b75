//! The auto port's two decisions around a unit's edges, as pure functions of message tags and
//! bytes: what a client message that does not start a unit does at an idle point
//! ([`between_units`]), and whether a replica's reply to a read may be dropped and the read run
//! again on the leader ([`replica_reply`]). Besides, the statements about backend PIDs the auto
//! port answers itself, since its clients hold PIDs of the proxy's ([`translate_backend_pid`],
//! [`signal_backend_call`] with [`answer_signal_backend`]).
//!
//! Both follow PostgreSQL's own behaviour (`src/backend/tcop/postgres.c`, `PostgresMain`): a Flush
//! makes the server send what it has buffered and nothing else; a Sync outside an
//! extended-protocol unit answers ReadyForQuery with the transaction status; CopyData, CopyDone and
//! CopyFail outside COPY are "accepted but ignored, per protocol spec".

use crate::backend::{
    ErrorFields, FrameHeader, ERROR_RESPONSE, NOTICE_RESPONSE, PARAMETER_STATUS, READY_FOR_QUERY,
};
use bytes::BytesMut;

use crate::frontend::{
    encode_message, encode_query, query_text, Parse, COPY_DATA, COPY_DONE, COPY_FAIL, FLUSH, PARSE,
    QUERY, SYNC,
};
use crate::TxStatus;

/// What the auto port does with a client message that arrives between units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BetweenUnits {
    /// Nothing to send and nothing to answer: consume it. A Flush when every answer was sent
    /// (or the unit's Sync or Query already makes the server flush); CopyData/CopyDone/CopyFail at
    /// an idle point, which the server would ignore.
    Drop,
    /// A Sync at an idle point: answer ReadyForQuery with the session's status, as the server would,
    /// without opening a unit (or a server connection).
    AnswerReady,
    /// Part of the running unit: send it to the unit's server (a Sync after a Query, which the
    /// server answers with its own ReadyForQuery; COPY data after a `COPY ... FROM STDIN`).
    FollowCurrent,
    /// The message starts the next unit: route it.
    StartsUnit,
}

/// What to do with the client message tagged `tag` when the previous unit has been closed by the
/// client (its Query or Sync sent); `running`: that unit's server has not answered it all yet
/// (when false, the session is at an idle point).
///
/// A message that opens no unit must never hold the session on a server: before this rule, a
/// Flush at an idle point opened a unit that no ReadyForQuery could end, and the next read, routed
/// elsewhere, waited for it forever.
pub fn between_units(tag: u8, running: bool) -> BetweenUnits {
    match (tag, running) {
        (FLUSH, _) => BetweenUnits::Drop,
        (SYNC, false) => BetweenUnits::AnswerReady,
        (SYNC, true) => BetweenUnits::FollowCurrent,
        (COPY_DATA | COPY_DONE | COPY_FAIL, false) => BetweenUnits::Drop,
        (COPY_DATA | COPY_DONE | COPY_FAIL, true) => BetweenUnits::FollowCurrent,
        _ => BetweenUnits::StartsUnit,
    }
}

/// SQLSTATEs a hot standby returns for a read the leader would run: `0A000` (temporary or unlogged
/// relations during recovery), `40001` (canceling statement due to conflict with recovery) and
/// `25006` (a statement the classifier took for a read writes: "cannot execute ... in a read-only
/// transaction").
pub const RETRY_ON_LEADER: &[&str] = &["0A000", "40001", "25006"];

/// The verdict on the front of a replica's reply to a read unit that started outside a
/// transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaReply {
    /// Nothing decides yet: keep the bytes (they are all small messages) and read more.
    Hold,
    /// Send the reply to the client as it comes (it has results, an error the leader would give
    /// too, or grew past the hold limit).
    Stream,
    /// The unit failed for a standby's reason before any result: drop the first `reply_len` bytes
    /// (the whole reply, through ReadyForQuery) and run the unit on the leader.
    RetryOnLeader {
        /// Bytes of the reply, through its ReadyForQuery.
        reply_len: usize,
        /// The error's SQLSTATE (one of [`RETRY_ON_LEADER`]).
        sqlstate: &'static str,
    },
}

/// Judges the replica's reply at the front of `buf`, holding at most `limit` bytes.
///
/// Messages that carry no result (ParseComplete, BindComplete, ParameterDescription,
/// RowDescription, NoData, CloseComplete, NoticeResponse, ParameterStatus) are held; the first
/// ErrorResponse decides: one of [`RETRY_ON_LEADER`] followed by ReadyForQuery `I` retries (the
/// read was not in a transaction and the client saw nothing), anything else streams. Any other
/// message (DataRow, CommandComplete, CopyOutResponse, EmptyQueryResponse...) streams: results
/// reach the client as they would from a direct connection.
pub fn replica_reply(buf: &[u8], limit: usize) -> ReplicaReply {
    let mut at = 0;
    let mut retriable: Option<&'static str> = None;
    loop {
        let h = match FrameHeader::peek(&buf[at..]) {
            Ok(Some(h)) if buf.len() - at >= h.frame_len => h,
            Ok(_) if buf.len() > limit => return ReplicaReply::Stream,
            Ok(_) => return ReplicaReply::Hold,
            Err(_) => return ReplicaReply::Stream, // the shell reports it
        };
        let body = &buf[at + 5..at + h.frame_len];
        at += h.frame_len;
        match (retriable, h.tag) {
            // After the error the server skips to the Sync: ReadyForQuery ends the reply.
            (Some(sqlstate), READY_FOR_QUERY) => {
                return match TxStatus::from_ready_for_query(body) {
                    Ok(TxStatus::Idle) => ReplicaReply::RetryOnLeader {
                        reply_len: at,
                        sqlstate,
                    },
                    _ => ReplicaReply::Stream,
                };
            }
            (Some(_), NOTICE_RESPONSE | PARAMETER_STATUS) => {}
            (Some(_), _) => return ReplicaReply::Stream,
            (None, ERROR_RESPONSE) => {
                // `V` is the severity never translated (PostgreSQL 9.6+); `S` may be.
                let retry = ErrorFields::parse(body).ok().and_then(|f| {
                    let code = f.code()?;
                    let known = RETRY_ON_LEADER.iter().find(|c| **c == code)?;
                    (f.get(b'V').or(f.severity()) == Some("ERROR")).then_some(*known)
                });
                match retry {
                    Some(code) => retriable = Some(code),
                    None => return ReplicaReply::Stream,
                }
            }
            (
                None,
                b'1' | b'2' | b't' | b'T' | b'n' | b'3' | NOTICE_RESPONSE | PARAMETER_STATUS,
            ) => {}
            (None, _) => return ReplicaReply::Stream,
        }
        if at > limit {
            return ReplicaReply::Stream;
        }
    }
}

/// Whether `sql` is the statement `SELECT pg_backend_pid()` alone (any case and spacing, with
/// `pg_catalog.`, an optional `;`): what pools and drivers run to learn their session's PID.
pub fn asks_backend_pid(sql: &str) -> bool {
    if sql.len() > 80 {
        return false;
    }
    // The text without whitespace, lowercased, is compared as it is produced (no copy: this runs
    // for every Query the auto port routes, and most differ from the first word on).
    let is = |target: &str| {
        let mut text = sql
            .chars()
            .filter(|c| !c.is_whitespace())
            .map(|c| c.to_ascii_lowercase());
        let mut target = target.chars();
        loop {
            match (text.next(), target.next()) {
                (Some(a), Some(b)) if a == b => {}
                (None, None) => return true,
                // One `;` may end the statement.
                (Some(';'), None) => return text.next().is_none(),
                _ => return false,
            }
        }
    };
    is("selectpg_backend_pid()") || is("selectpg_catalog.pg_backend_pid()")
}

/// The auto port's answer to [`asks_backend_pid`]: the Query or Parse message `frame` (whole,
/// tag included) rewritten so that the statement returns `pid`, the PID the client was given in
/// BackendKeyData, as a column `pg_backend_pid` of type integer, like the function's own result.
/// `None` when `frame` is another message or statement (it goes as it is).
pub fn translate_backend_pid(frame: &[u8], pid: i32) -> Option<BytesMut> {
    if !may_call_function(frame) || !asks_backend_pid(statement_of(frame)?) {
        return None;
    }
    rewrite_statement(frame, &format!("SELECT {pid}::integer AS pg_backend_pid"))
}

/// The statement text of a Query or Parse message `frame` (whole, tag included); `None` for
/// other messages or a malformed one.
fn statement_of(frame: &[u8]) -> Option<&str> {
    let body = frame.get(5..)?;
    match *frame.first()? {
        QUERY => query_text(body).ok(),
        PARSE => Parse::decode(body).ok().map(|p| p.query),
        _ => None,
    }
}

/// The Query or Parse message `frame` (whole) with its statement replaced by `sql` (a Parse keeps
/// its name and parameter types). `None` for other messages.
fn rewrite_statement(frame: &[u8], sql: &str) -> Option<BytesMut> {
    let body = frame.get(5..)?;
    let mut out = BytesMut::new();
    match *frame.first()? {
        QUERY => encode_query(&mut out, sql),
        PARSE => {
            let parse = Parse::decode(body).ok()?;
            // The parameter type list follows the two strings unchanged.
            let rest = &body[parse.name.len() + 1 + parse.query.len() + 1..];
            encode_message(&mut out, PARSE, |b| {
                b.extend_from_slice(parse.name.as_bytes());
                b.extend_from_slice(&[0]);
                b.extend_from_slice(sql.as_bytes());
                b.extend_from_slice(&[0]);
                b.extend_from_slice(rest);
            });
        }
        _ => return None,
    }
    Some(out)
}

/// Which of PostgreSQL's signalling functions a statement calls (`src/backend/storage/ipc/signalfuncs.c`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendSignal {
    /// `pg_cancel_backend(pid)`: cancel the backend's current statement.
    Cancel,
    /// `pg_terminate_backend(pid)`: end the backend's session (FATAL 57P01).
    Terminate,
}

impl BackendSignal {
    /// The function's name: also the name of its result column.
    pub fn function(self) -> &'static str {
        match self {
            BackendSignal::Cancel => "pg_cancel_backend",
            BackendSignal::Terminate => "pg_terminate_backend",
        }
    }
}

/// Whether `sql` is exactly `SELECT pg_cancel_backend(<integer literal>)` or
/// `SELECT pg_terminate_backend(<integer literal>)` (any case and spacing, with `pg_catalog.`, an
/// optional `;`; the literal may be signed or quoted, as psycopg2 and JDBC interpolate it), and
/// which PID it names. Any other statement (a second argument, a column list, a `WHERE`) is
/// `None`: it goes to the server unchanged.
pub fn asks_signal_backend(sql: &str) -> Option<(BackendSignal, i32)> {
    if sql.len() > 120 {
        return None;
    }
    let sql = sql.trim();
    let sql = sql.strip_suffix(';').unwrap_or(sql).trim_end();
    // `SELECT`, then spacing: whitespace is squeezed out of the function name only, never out of
    // the literal (`4 2` is PostgreSQL's syntax error, not 42).
    let (head, args) = sql.split_once('(')?;
    let args = args.strip_suffix(')')?;
    let head = head.to_ascii_lowercase();
    let call = head.strip_prefix("select")?;
    if !call.starts_with(char::is_whitespace) {
        return None;
    }
    let call: String = call.chars().filter(|c| !c.is_whitespace()).collect();
    let call = call.strip_prefix("pg_catalog.").unwrap_or(&call);
    let signal = [BackendSignal::Cancel, BackendSignal::Terminate]
        .into_iter()
        .find(|s| call == s.function())?;
    let literal = args.trim();
    let literal = literal
        .strip_prefix('\'')
        .and_then(|l| l.strip_suffix('\''))
        .unwrap_or(literal);
    let digits = literal.strip_prefix(['+', '-']).unwrap_or(literal);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((signal, literal.parse().ok()?))
}

/// The signalling call in the Query or Parse message `frame` (whole), per [`asks_signal_backend`].
pub fn signal_backend_call(frame: &[u8]) -> Option<(BackendSignal, i32)> {
    if !may_call_function(frame) {
        return None;
    }
    asks_signal_backend(statement_of(frame)?)
}

/// Whether the message `frame` holds a `(`, as every function call does: a `memchr` scan of the
/// bytes that spares most statements (pgbench's, and most of an ORM's) the UTF-8 check and the
/// text comparisons of [`asks_backend_pid`] and [`asks_signal_backend`], which run for every
/// Query and Parse the auto port routes. [`translate_backend_pid`] and [`signal_backend_call`]
/// check it themselves; a caller that tries both checks it once first.
pub fn may_call_function(frame: &[u8]) -> bool {
    memchr::memchr(b'(', frame).is_some()
}

/// The auto port's answer to a [`signal_backend_call`] it carried out itself: the Query or Parse
/// message `frame` (whole) rewritten so that the statement returns `result` as a boolean column
/// named after the function, as the function's own result (type `bool`, oid 16). The server
/// runs it, so the reply (and the transaction status, or the error in a failed transaction) is
/// PostgreSQL's own.
pub fn answer_signal_backend(
    frame: &[u8],
    signal: BackendSignal,
    result: bool,
) -> Option<BytesMut> {
    rewrite_statement(frame, &format!("SELECT {result} AS {}", signal.function()))
}

/// Tag of NotificationResponse (`A`: pid i32, channel, payload).
pub const NOTIFICATION_RESPONSE: u8 = b'A';

/// Rewrites a NotificationResponse `frame` (whole) sent by the session's own server backend
/// `server_pid` (the session's own NOTIFY) to carry `client_pid`, the PID the client knows, so
/// that a client can tell its own notifications apart. Notifications of other backends keep their
/// PID. Other messages are left alone.
pub fn translate_notification_pid(frame: &mut [u8], server_pid: i32, client_pid: i32) {
    if frame.first() != Some(&NOTIFICATION_RESPONSE) {
        return;
    }
    let Some(pid) = frame.get_mut(5..9) else {
        return;
    };
    if *pid == server_pid.to_be_bytes() {
        pid.copy_from_slice(&client_pid.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    fn error(severity: &str, code: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for (k, v) in [
            (b'S', severity),
            (b'V', severity),
            (b'C', code),
            (b'M', "boom"),
        ] {
            body.push(k);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        frame(b'E', &body)
    }

    fn ready(status: u8) -> Vec<u8> {
        frame(b'Z', &[status])
    }

    #[test]
    fn messages_between_units_never_open_one() {
        use BetweenUnits::*;
        // (tag, a unit still running, what happens)
        let table: &[(u8, bool, BetweenUnits)] = &[
            (b'H', false, Drop), // the hang of issue 17: login, Flush, SELECT 1
            (b'H', true, Drop),  // a pipeline's trailing "Sync, Flush"
            (b'S', false, AnswerReady),
            (b'S', true, FollowCurrent),
            (b'd', false, Drop),
            (b'c', false, Drop),
            (b'f', false, Drop),
            (b'd', true, FollowCurrent), // COPY FROM STDIN's data after its Query
            (b'c', true, FollowCurrent),
            (b'f', true, FollowCurrent),
            (b'Q', false, StartsUnit),
            (b'Q', true, StartsUnit),
            (b'P', false, StartsUnit),
            (b'B', false, StartsUnit),
            (b'D', false, StartsUnit),
            (b'E', false, StartsUnit),
            (b'C', false, StartsUnit),
            (b'F', false, StartsUnit),
        ];
        for &(tag, running, want) in table {
            assert_eq!(
                between_units(tag, running),
                want,
                "{:?} running={running}",
                tag as char
            );
        }
    }

    #[test]
    fn a_standby_only_error_before_any_result_is_retried_on_the_leader() {
        // Simple query on an unlogged table: ErrorResponse 0A000, ReadyForQuery I.
        let reply = [error("ERROR", "0A000"), ready(b'I')].concat();
        assert_eq!(
            replica_reply(&reply, 8192),
            ReplicaReply::RetryOnLeader {
                reply_len: reply.len(),
                sqlstate: "0A000"
            }
        );
        // Extended protocol: ParseComplete, then the planner's error at Bind, then the Sync's answer.
        let reply = [frame(b'1', &[]), error("ERROR", "40001"), ready(b'I')].concat();
        assert_eq!(
            replica_reply(&reply, 8192),
            ReplicaReply::RetryOnLeader {
                reply_len: reply.len(),
                sqlstate: "40001"
            }
        );
        let reply = [error("ERROR", "25006"), ready(b'I')].concat();
        assert!(matches!(
            replica_reply(&reply, 8192),
            ReplicaReply::RetryOnLeader { .. }
        ));
        // Each prefix of it only holds.
        let reply = [frame(b'1', &[]), error("ERROR", "0A000"), ready(b'I')].concat();
        for cut in 0..reply.len() {
            assert_eq!(
                replica_reply(&reply[..cut], 8192),
                ReplicaReply::Hold,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn results_other_errors_transactions_and_large_replies_stream() {
        // A result: the client gets it as it comes.
        let reply = [frame(b'T', &[0, 0]), frame(b'D', &[0, 0]), ready(b'I')].concat();
        assert_eq!(replica_reply(&reply, 8192), ReplicaReply::Stream);
        // An error the leader would give too.
        let reply = [error("ERROR", "42P01"), ready(b'I')].concat();
        assert_eq!(replica_reply(&reply, 8192), ReplicaReply::Stream);
        // A FATAL recovery conflict ends the connection: not a read to run again here.
        assert_eq!(
            replica_reply(&error("FATAL", "40001"), 8192),
            ReplicaReply::Stream
        );
        // In a transaction (the error aborted it): the client must see it.
        let reply = [error("ERROR", "40001"), ready(b'E')].concat();
        assert_eq!(replica_reply(&reply, 8192), ReplicaReply::Stream);
        // A recorded PostgreSQL 15 reply: RowDescription, then 57014 (canceled by the user).
        let reply = traces::bytes(traces::QUERY_CANCELED_RESPONSE);
        assert_eq!(replica_reply(&reply, 8192), ReplicaReply::Stream);
        // Past the limit the session stops holding.
        let many = frame(b'N', &[0; 100]).repeat(5);
        assert_eq!(replica_reply(&many, 256), ReplicaReply::Stream);
        assert_eq!(replica_reply(&many, 8192), ReplicaReply::Hold);
        // A frame never completes within the limit.
        let big = frame(b'T', &[0; 1000]);
        assert_eq!(replica_reply(&big[..300], 256), ReplicaReply::Stream);
    }

    #[test]
    fn the_backend_pid_statement_answers_the_pid_the_client_was_given() {
        for sql in [
            "SELECT pg_backend_pid()",
            "select pg_backend_pid();",
            "  SELECT pg_catalog.pg_backend_pid ( ) ; ",
        ] {
            assert!(asks_backend_pid(sql), "{sql}");
        }
        for sql in [
            "SELECT pg_backend_pid(), 1",
            "SELECT * FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
            "SELECT pg_terminate_backend(pg_backend_pid())",
            "SELECT pg_backend_pid();;",
            "SELECT pg_backend_pid(); SELECT 1",
            "SELECT pg_backend_pid(",
            "SELECT pg_catalog.pg_backend_pid()x",
            "SELECT",
            "",
            ";",
        ] {
            assert!(!asks_backend_pid(sql), "{sql}");
        }
        let mut query = BytesMut::new();
        encode_query(&mut query, "SELECT pg_backend_pid()");
        let mut want = BytesMut::new();
        encode_query(&mut want, "SELECT 1073741999::integer AS pg_backend_pid");
        assert_eq!(translate_backend_pid(&query, 1_073_741_999), Some(want));
        // Parse keeps its statement name and parameter types.
        let parse = frame(b'P', b"s1\0SELECT pg_backend_pid()\0\0\x01\0\0\0\x17");
        let got = translate_backend_pid(&parse, 7).unwrap();
        assert_eq!(
            &got[..],
            &frame(
                b'P',
                b"s1\0SELECT 7::integer AS pg_backend_pid\0\0\x01\0\0\0\x17"
            )[..]
        );
        let mut other = BytesMut::new();
        encode_query(&mut other, "SELECT 1");
        assert_eq!(translate_backend_pid(&other, 7), None);
        assert_eq!(translate_backend_pid(&frame(b'S', &[]), 7), None);
    }

    #[test]
    fn signalling_calls_with_a_literal_pid_are_recognized() {
        use BackendSignal::*;
        for (sql, want) in [
            (
                "SELECT pg_cancel_backend(1073741999)",
                Some((Cancel, 1_073_741_999)),
            ),
            ("select pg_terminate_backend(42);", Some((Terminate, 42))),
            (
                "  SELECT\n pg_catalog.PG_TERMINATE_BACKEND ( 42 ) ; ",
                Some((Terminate, 42)),
            ),
            ("select pg_terminate_backend('42')", Some((Terminate, 42))),
            ("select pg_cancel_backend(+7)", Some((Cancel, 7))),
            ("select pg_cancel_backend(-7)", Some((Cancel, -7))),
            ("select pg_cancel_backend()", None),
            ("select pg_cancel_backend($1)", None),
            ("select pg_cancel_backend(42, 1000)", None),
            ("select pg_terminate_backend(42, 1000)", None),
            ("select pg_cancel_backend(pid) from pg_stat_activity", None),
            ("select pg_cancel_backend(4 2)", None),
            ("selectpg_cancel_backend(42)", None),
            ("select pg_cancel_backend((42))", None),
            ("select pg_cancel_backend(99999999999)", None),
            ("select pg_cancel_backend(42) as x", None),
            ("select pg_backend_pid()", None),
            ("select 1", None),
        ] {
            assert_eq!(asks_signal_backend(sql), want, "{sql}");
        }
    }

    #[test]
    fn a_signalling_call_is_answered_by_a_boolean_of_the_functions_name() {
        let mut query = BytesMut::new();
        encode_query(&mut query, "select pg_terminate_backend(1073741999)");
        assert_eq!(
            signal_backend_call(&query),
            Some((BackendSignal::Terminate, 1_073_741_999))
        );
        let mut want = BytesMut::new();
        encode_query(&mut want, "SELECT true AS pg_terminate_backend");
        assert_eq!(
            answer_signal_backend(&query, BackendSignal::Terminate, true),
            Some(want)
        );
        let parse = frame(b'P', b"s\0SELECT pg_cancel_backend(9)\0\0\0");
        assert_eq!(
            signal_backend_call(&parse),
            Some((BackendSignal::Cancel, 9))
        );
        let got = answer_signal_backend(&parse, BackendSignal::Cancel, false).unwrap();
        assert_eq!(
            &got[..],
            &frame(b'P', b"s\0SELECT false AS pg_cancel_backend\0\0\0")[..]
        );
        assert_eq!(signal_backend_call(&frame(b'S', &[])), None);
    }

    #[test]
    fn the_sessions_own_notifications_carry_its_pid() {
        let body = [&42i32.to_be_bytes()[..], b"ch\0hi\0"].concat();
        let mut own = frame(b'A', &body);
        translate_notification_pid(&mut own, 42, 1 << 30);
        assert_eq!(&own[5..9], &(1i32 << 30).to_be_bytes());
        assert_eq!(&own[9..], b"ch\0hi\0");
        let mut others = frame(b'A', &body);
        translate_notification_pid(&mut others, 43, 1 << 30);
        assert_eq!(
            &others[5..9],
            &42i32.to_be_bytes(),
            "another backend's PID stays"
        );
        let mut short = vec![b'A', 0, 0, 0, 4];
        translate_notification_pid(&mut short, 0, 1);
        assert_eq!(short, [b'A', 0, 0, 0, 4]);
    }
}
