//! The auto port's units as a sans-I/O core: where each unit goes, what is outstanding, and when
//! the session may let go of its servers.
//!
//! [`UnitTracker`] is fed what the session reads: each client message's header (and the bodies a
//! decision needs: Query text, Parse, Bind), the transaction status of each ReadyForQuery and
//! whether an ErrorResponse came, and the front of a replica's reply. It answers with decisions:
//! - what a client message does ([`UnitTracker::on_client_message`], a [`ClientStep`]): opens a
//!   unit routed by a [`Decision`] (leader, replica, or the server of the previous unit), goes to
//!   the running unit's server (part of the unit, or a pipelined next unit that server can run),
//!   waits for the running unit to end, or opens nothing (a Flush or Sync at an idle point,
//!   [`praetor_protocol::unit::between_units`]);
//! - when the unit is over ([`UnitTracker::is_unit_over`]): the servers answered every Query, Sync
//!   and FunctionCall and the last ReadyForQuery said `I`;
//! - whether a replica's refusal of a read may be undone by running the read on the leader
//!   ([`UnitTracker::judge_replica_reply`]);
//! - whether the session, idle, may give its server connections back ([`UnitTracker::may_release`])
//!   or leave its task ([`UnitTracker::may_park`]), and when ([`idle_plan`], with the instants the
//!   session passes in); whether losing a server ends it ([`UnitTracker::needs_server`]);
//! - what a unit still running on the leader does while the leader steps down (a switchover):
//!   goes on for the rest of `drain_timeout`, or is cancelled ([`leader_drain`]); and what a
//!   session pinned to that leader does at its idle point: moves, works on until the drain's end,
//!   or ends ([`pinned_drain`]), and what it says when the leader stops ([`pinned_leader_lost`]).
//!
//! `session` owns the sockets: it reads, asks, and executes (opens connections, writes, counts
//! metrics). Nothing here reads a clock or does I/O, so the rules are tested on message traces
//! recorded from PostgreSQL 15 (`proxy/tests/traces/`, replayed by the tests below).

use std::ops::Add;
use std::time::Duration;

use bytes::Bytes;
use praetor_protocol::frontend::{
    query_text, Bind, Parse, BIND, FUNCTION_CALL, PARSE, QUERY, SYNC,
};
use praetor_protocol::unit::{between_units, replica_reply, BetweenUnits, ReplicaReply};
use praetor_protocol::{Class, Classifier, FrontendHeader, PinReason, TxStatus};

use crate::router::BackendRole;
use crate::rw::Drain;
use crate::settings::Target;

/// A read unit up to this size is kept (copied) while it runs on a replica, so that it can run
/// again on the leader when the replica refuses it for a standby's reason (bytes).
pub(crate) const RETRY_UNIT_LIMIT_BYTES: usize = 64 * 1024;

/// A replica's reply to such a read is held back from the client until it shows results, up to
/// this size (bytes): what precedes results (ParseComplete, RowDescription...) is small.
pub(crate) const RETRY_HOLD_LIMIT_BYTES: usize = 16 * 1024;

/// Which of the session's two server connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The connection to the leader.
    Leader,
    /// The connection to a replica.
    Replica,
}

impl Side {
    /// The side a route of `role` serves.
    pub(crate) fn of(role: BackendRole) -> Side {
        match role {
            BackendRole::Leader => Side::Leader,
            BackendRole::Replica => Side::Replica,
        }
    }

    /// `leader` or `replica`, as logs and the admin console show it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Side::Leader => "leader",
            Side::Replica => "replica",
        }
    }

    /// The other connection.
    pub(crate) fn other(self) -> Side {
        match self {
            Side::Leader => Side::Replica,
            Side::Replica => Side::Leader,
        }
    }
}

/// Where the next unit goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// The side wanted (the session may get the leader for a read when no replica is fresh).
    pub side: Side,
    /// The class of the unit's statement (of all its statements for an extended-protocol unit);
    /// [`Class::TxControl`] when it goes where the previous unit went.
    pub class: Class,
    /// The unit creates session state: the session is pinned to the server it runs on.
    pub pin: Option<PinReason>,
    /// Bytes of the whole unit at the front of the client buffer, when they are all there (a Query;
    /// an extended-protocol unit through its Sync).
    pub unit_len: Option<usize>,
}

/// The pin a named prepared statement sets: none when the proxy tracks them per client.
fn prepared_pin(ctx: &Ctx) -> Option<PinReason> {
    (!ctx.tracks_prepared).then_some(PinReason::PreparedStatement)
}

/// The pin a Query of class `class` sets: a SQL `PREPARE` (the weakest pin, see
/// [`Class::Pin`]) sets none when the proxy tracks named statements ([`crate::prepared`]).
fn query_pin(class: Class, ctx: &Ctx) -> Option<PinReason> {
    match class {
        Class::Pin(PinReason::PreparedStatement) => prepared_pin(ctx),
        Class::Pin(r) => Some(r),
        _ => None,
    }
}

/// What the session knows besides the unit state when it asks about a client message.
pub(crate) struct Ctx<'a> {
    /// The statement classifier (`Runtime::classifier`).
    pub classifier: &'a Classifier,
    /// The largest client message accepted (bytes, length field included).
    pub max_message_size: usize,
    /// The session holds a connection to the leader.
    pub has_leader: bool,
    /// The session holds a connection to a replica.
    pub has_replica: bool,
    /// The admin console paused the session's database (`PAUSE`): no next unit starts.
    pub paused: bool,
    /// Named prepared statements are tracked per client (`max_prepared_statements`,
    /// [`crate::prepared`]): they no longer pin the session, and units using them go to the leader
    /// (where a unit never runs twice: a replica's refused read is run again as the client wrote it).
    pub tracks_prepared: bool,
    /// The DCS asks the leader to step down (a switchover,
    /// [`crate::router::Router::is_switching_over`]): no next unit follows on the leader, it is
    /// routed at the idle point, where new leader units wait for the next leader.
    pub leader_stepping_down: bool,
}

impl Ctx<'_> {
    fn has(&self, side: Side) -> bool {
        match side {
            Side::Leader => self.has_leader,
            Side::Replica => self.has_replica,
        }
    }
}

/// What the session does with the client message at the front of its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientStep {
    /// An idle point: the message opens a unit. Get a connection for `decision.side` (the
    /// read-your-writes rule may send a read to the leader, [`UnitTracker::uses_read_your_writes`]),
    /// then [`UnitTracker::start_unit`] and forward the message.
    Route(Decision),
    /// Send the message to the running unit's server ([`UnitTracker::forwarded`] counts it).
    Forward {
        /// The message starts a next unit the client pipelined, and it follows the running one on
        /// the same server: count a unit there.
        next_unit: Option<Side>,
        /// A statement inside the transaction just pinned the session to the running unit's
        /// server: the other connection is of no use any more.
        pinned: Option<PinReason>,
    },
    /// Stop reading the client until the running unit ends: the next unit the client pipelined
    /// must be routed at the idle point (another server, a pin, a `SET` to record, or `PAUSE`).
    Wait,
    /// Consume the message without sending it: a Flush (`whole`: once it is all read; a unit's
    /// Query or Sync makes the server flush anyway), or COPY data at an idle point (with its tail).
    Drop {
        /// Wait for the whole message before consuming it (a running unit's Flush).
        whole: bool,
    },
    /// A Sync at an idle point: answer ReadyForQuery with this status, as the server would.
    AnswerReady(TxStatus),
}

/// What a replica's reply to a read means ([`UnitTracker::judge_replica_reply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplicaVerdict {
    /// Keep the bytes from the client and read more.
    Hold,
    /// Stream the reply to the client as usual.
    Stream,
    /// Drop the first `reply_len` bytes of the reply and run `unit` on the leader (then
    /// [`UnitTracker::ran_on_leader`]); when there is no leader, put the bytes back and stream.
    RetryOnLeader {
        /// Bytes of the reply, through its ReadyForQuery.
        reply_len: usize,
        /// The replica's SQLSTATE.
        sqlstate: &'static str,
        /// The unit's client messages, to send to the leader.
        unit: Bytes,
    },
}

/// What a server connection that runs no unit of the session sent on its own: a notice, a
/// parameter change, a notification, or an error before the server closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdleMessage {
    /// Relay it to the client (the session is pinned to that server).
    Relay,
    /// Nothing the client needs: drop it, keep the connection.
    Ignore,
    /// Relay it, then drop the connection (the pinned server's error).
    RelayAndClose,
    /// Drop the connection.
    Close,
}

/// The rule for a message tagged `tag` from a server connection that runs no unit;
/// `pinned_here`: the session is pinned to that server (it gets what a direct client would).
pub(crate) fn idle_message(tag: u8, pinned_here: bool) -> IdleMessage {
    use praetor_protocol::backend::{ERROR_RESPONSE, NOTICE_RESPONSE, PARAMETER_STATUS};
    use praetor_protocol::unit::NOTIFICATION_RESPONSE;
    match tag {
        NOTICE_RESPONSE | PARAMETER_STATUS | NOTIFICATION_RESPONSE if pinned_here => {
            IdleMessage::Relay
        }
        NOTICE_RESPONSE | PARAMETER_STATUS | NOTIFICATION_RESPONSE => IdleMessage::Ignore,
        ERROR_RESPONSE if pinned_here => IdleMessage::RelayAndClose,
        _ => IdleMessage::Close,
    }
}

/// How a unit ended ([`UnitTracker::end_unit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnitEnd {
    /// The unit may have written on the leader: read-your-writes learns where its commit ends.
    pub wrote: bool,
    /// The unit's session-level `SET` succeeded and joined [`UnitTracker::sets`]; the connection
    /// it ran on has applied them all.
    pub set_recorded: bool,
}

/// A read unit running on a replica, kept to run again on the leader.
#[derive(Debug)]
struct Retry {
    /// The unit's client messages.
    unit: Bytes,
    /// Bytes of the unit not forwarded yet: a message forwarded beyond them (a pipelined next
    /// unit) ends the chance of a retry, since the replica would run it first.
    left: usize,
}

/// The unit state of one auto-port session (see the module doc).
#[derive(Debug)]
pub(crate) struct UnitTracker {
    target: Target,
    /// The side running the current unit, if any.
    current: Option<Side>,
    /// Queries, Syncs and FunctionCalls sent and not yet answered with ReadyForQuery.
    outstanding: usize,
    /// The last ReadyForQuery's status.
    tx: TxStatus,
    /// The client has sent the message that ends its current unit (Query, Sync or FunctionCall).
    unit_closed: bool,
    /// The current unit may have written (not only reads or session `SET`s), or ran on the leader
    /// after a replica refused it as a write (25006).
    unit_may_write: bool,
    /// An ErrorResponse came during the current unit.
    unit_error: bool,
    /// Where the last unit ran.
    last_side: Option<Side>,
    pinned: Option<(Side, PinReason)>,
    /// Session-level SET statements to replay on other connections, in order.
    sets: Vec<String>,
    /// The SET text of the current unit, recorded when it succeeds.
    pending_set: Option<String>,
    /// Client messages are being discarded up to the next Sync (a unit that could not be routed).
    discard_until_sync: bool,
    /// The current unit, while it is a read on a replica that may run again on the leader.
    /// Boxed, and only while such a unit runs.
    retry: Option<Box<Retry>>,
    /// The length of the Query message [`UnitTracker::on_client_message`] looked at last, when the
    /// classifier's lexer alone classified it ([`Classifier::classify_lexed`]): one statement that
    /// uses no SQL-level prepared statement, so the pool's statement tracking skips its keyword
    /// scan ([`UnitTracker::take_query_lexed`]).
    query_lexed: Option<usize>,
}

impl UnitTracker {
    /// A session at an idle point with `target` (`praetor.target`) whose last unit ran on
    /// `last_side` (`None`: none yet).
    pub(crate) fn new(target: Target, last_side: Option<Side>) -> UnitTracker {
        UnitTracker {
            target,
            current: None,
            outstanding: 0,
            tx: TxStatus::Idle,
            unit_closed: true,
            unit_may_write: false,
            unit_error: false,
            last_side,
            pinned: None,
            sets: Vec::new(),
            pending_set: None,
            discard_until_sync: false,
            retry: None,
            query_lexed: None,
        }
    }

    /// The session logged in on `side`: a unit that goes where the previous one went goes there.
    pub(crate) fn logged_in_on(&mut self, side: Side) {
        self.last_side = Some(side);
    }

    /// `praetor.target` of the session.
    pub(crate) fn target(&self) -> Target {
        self.target
    }

    /// The side running the current unit (`None` at an idle point).
    pub(crate) fn current(&self) -> Option<Side> {
        self.current
    }

    /// The transaction status of the last ReadyForQuery.
    pub(crate) fn tx(&self) -> TxStatus {
        self.tx
    }

    /// Where the last unit ran.
    pub(crate) fn last_side(&self) -> Option<Side> {
        self.last_side
    }

    /// The server the session is pinned to, and why.
    pub(crate) fn pinned(&self) -> Option<(Side, PinReason)> {
        self.pinned
    }

    /// The session-level `SET`s that succeeded, in order, to replay on other connections.
    pub(crate) fn sets(&self) -> &[String] {
        &self.sets
    }

    /// Client messages are discarded up to the next Sync.
    pub(crate) fn is_discarding(&self) -> bool {
        self.discard_until_sync
    }

    /// A unit could not be routed and its first message was not a Query: drop the client's
    /// messages up to its Sync (answered with ReadyForQuery, see [`UnitTracker::sync_discarded`]).
    pub(crate) fn discard_until_sync(&mut self) {
        self.discard_until_sync = true;
    }

    /// The Sync that ends a discarded unit came: the session answers ReadyForQuery `I`.
    pub(crate) fn sync_discarded(&mut self) {
        self.discard_until_sync = false;
    }

    /// Whether the session is at an idle point, given the bytes of the client's current message
    /// still to stream (`client_remaining`).
    pub(crate) fn is_idle(&self, client_remaining: usize) -> bool {
        self.current.is_none() && client_remaining == 0
    }

    /// Idle, the session may give its server connections back after `idle_release`: it holds no
    /// session state a pooled connection would lose.
    pub(crate) fn may_release(&self) -> bool {
        self.pinned.is_none() && self.sets.is_empty()
    }

    /// Idle and without server connections, the session may park ([`crate::park`]): nothing of
    /// it lives beyond what [`crate::session::Dormant`] keeps.
    pub(crate) fn may_park(&self) -> bool {
        self.may_release() && !self.discard_until_sync && self.tx == TxStatus::Idle
    }

    /// The session's connections are as a new session would find them: they may go back to the
    /// pool when it ends.
    pub(crate) fn is_clean(&self) -> bool {
        self.may_release() && self.current.is_none() && self.tx == TxStatus::Idle
    }

    /// Whether losing the connection on `side` ends the session: it runs the current unit (the
    /// transaction is lost) or the session is pinned to it.
    pub(crate) fn needs_server(&self, side: Side) -> bool {
        self.current == Some(side) || self.pinned.map(|(s, _)| s) == Some(side)
    }

    /// Whether a read routed by `decision` goes through the read-your-writes rule once the session
    /// wrote ([`crate::ryw`]): a read for a replica of a session free to move.
    pub(crate) fn uses_read_your_writes(&self, decision: &Decision) -> bool {
        decision.side == Side::Replica && self.target == Target::Any && self.pinned.is_none()
    }

    /// What to do with the client message `h` at the front of `buf` (whole when it is a Query or
    /// Parse; other messages may be partial). Pins the session when a statement inside a
    /// transaction creates session state (reported in [`ClientStep::Forward`]).
    pub(crate) fn on_client_message(
        &mut self,
        buf: &[u8],
        h: FrontendHeader,
        ctx: &Ctx<'_>,
    ) -> ClientStep {
        // Between units (at an idle point, or after the client closed the running unit): a
        // message that opens no unit must not hold the session on a server.
        self.query_lexed = None;
        let running = self.current.is_some();
        let starts_next = self.unit_closed && self.tx == TxStatus::Idle;
        if !running || starts_next {
            match between_units(h.tag, running) {
                BetweenUnits::StartsUnit => {}
                BetweenUnits::FollowCurrent => {
                    return ClientStep::Forward {
                        next_unit: None,
                        pinned: None,
                    }
                }
                BetweenUnits::Drop => return ClientStep::Drop { whole: running },
                BetweenUnits::AnswerReady => return ClientStep::AnswerReady(self.tx),
            }
        }
        let Some(side) = self.current else {
            // An idle point: route the unit.
            return ClientStep::Route(match self.pinned {
                Some((side, _)) => Decision {
                    side,
                    class: Class::Write,
                    pin: None,
                    unit_len: None,
                },
                None => self.decide(buf, h, ctx),
            });
        };
        // A unit is running on `side`.
        let mut next_unit = None;
        let mut pinned = None;
        if starts_next && (ctx.paused || (side == Side::Leader && ctx.leader_stepping_down)) {
            // `PAUSE`: the next unit waits at the idle point. A switchover: a pipelined unit
            // would start a transaction on the leader stepping down, after the hold began; it is
            // routed at the idle point, and waits there for the next leader.
            return ClientStep::Wait;
        }
        if starts_next && self.pinned.is_none() {
            // The client pipelines the next unit: it follows when `side` can run it.
            let decision = self.decide(buf, h, ctx);
            if decision.side != side
                || decision.pin.is_some()
                || decision.class == Class::SessionSet
            {
                // Runs at the next idle point, where it is routed (and recorded) properly.
                return ClientStep::Wait;
            }
            self.unit_may_write |= may_write(decision.class);
            next_unit = Some(side);
        } else if !starts_next {
            pinned = self.watch_in_transaction(buf, h, side, ctx);
        }
        ClientStep::Forward { next_unit, pinned }
    }

    /// The client message `h` went to the current unit's server: counts what it ends.
    pub(crate) fn forwarded(&mut self, h: FrontendHeader) {
        if let Some(r) = self.retry.as_mut() {
            match r.left.checked_sub(h.frame_len) {
                Some(left) => r.left = left,
                None => self.retry = None,
            }
        }
        match h.tag {
            QUERY | SYNC | FUNCTION_CALL => {
                self.outstanding += 1;
                self.unit_closed = true;
            }
            // Parse, Bind, Describe, Execute, Close open an extended-protocol unit that a Sync
            // closes; COPY data and Flush leave the unit as it is.
            PARSE | BIND | b'D' | b'E' | b'C' => self.unit_closed = false,
            _ => {}
        }
    }

    /// A unit routed by `decision` starts on `side` (where the session got a connection) with the
    /// message `h` at the front of `buf`. Returns the pin it set, if the session was not pinned.
    pub(crate) fn start_unit(
        &mut self,
        side: Side,
        decision: &Decision,
        buf: &[u8],
        h: FrontendHeader,
    ) -> Option<PinReason> {
        self.current = Some(side);
        self.unit_error = false;
        self.unit_may_write = may_write(decision.class);
        self.pending_set = None;
        if decision.class == Class::SessionSet && h.tag == QUERY {
            self.pending_set = buf
                .get(5..h.frame_len)
                .and_then(|body| query_text(body).ok())
                .map(str::to_string);
        }
        self.retry = self.retriable(side, decision).and_then(|len| {
            Some(Box::new(Retry {
                unit: Bytes::copy_from_slice(buf.get(..len)?),
                left: len,
            }))
        });
        decision.pin.filter(|reason| self.pin(side, *reason))
    }

    /// Drops the session's pin ([`PinnedDrain::Unpin`]): its units are routed as an unpinned
    /// session's again.
    pub(crate) fn unpin(&mut self) {
        self.pinned = None;
    }

    /// Pins the session to `side` for `reason`; `false` when it was pinned already.
    pub(crate) fn pin(&mut self, side: Side, reason: PinReason) -> bool {
        if self.pinned.is_some() {
            return false;
        }
        self.pinned = Some((side, reason));
        true
    }

    /// The current unit's server answered: `error` when an ErrorResponse was among the messages,
    /// and the status of each ReadyForQuery, in order.
    pub(crate) fn on_server_messages(&mut self, error: bool, readies: &[TxStatus]) {
        if error {
            self.unit_error = true;
        }
        for status in readies {
            self.outstanding = self.outstanding.saturating_sub(1);
            self.tx = *status;
        }
    }

    /// Whether every Query, Sync and FunctionCall sent was answered with ReadyForQuery (the current
    /// unit may still go on: a transaction block, or an extended-protocol unit without its Sync).
    pub(crate) fn awaits_nothing(&self) -> bool {
        self.outstanding == 0
    }

    /// Whether the current unit is over (an idle point follows): everything the client closed it
    /// with was answered, outside a transaction, and no client message is half sent
    /// (`client_remaining`: its bytes still to stream).
    pub(crate) fn is_unit_over(&self, client_remaining: usize) -> bool {
        self.current.is_some()
            && self.outstanding == 0
            && self.tx == TxStatus::Idle
            && self.unit_closed
            && client_remaining == 0
    }

    /// Ends the current unit, which ran on `side`: records its `SET` when it succeeded.
    pub(crate) fn end_unit(&mut self, side: Side) -> UnitEnd {
        let mut set_recorded = false;
        if let Some(set) = self.pending_set.take() {
            if !self.unit_error {
                self.sets.push(set);
                set_recorded = true;
            }
        }
        self.current = None;
        self.retry = None;
        self.last_side = Some(side);
        UnitEnd {
            wrote: side == Side::Leader && self.unit_may_write,
            set_recorded,
        }
    }

    /// Whether the current unit is a read on a replica that may yet run on the leader: its reply
    /// goes through [`UnitTracker::judge_replica_reply`].
    pub(crate) fn may_retry(&self) -> bool {
        self.retry.is_some() && self.current == Some(Side::Replica)
    }

    /// Judges the replica's reply at the front of `buf` ([`replica_reply`]) to a read that may run
    /// again on the leader; `lost`: the replica connection ended (its bytes stream, as they would).
    pub(crate) fn judge_replica_reply(&mut self, buf: &[u8], lost: bool) -> ReplicaVerdict {
        if !self.may_retry() {
            return ReplicaVerdict::Stream;
        }
        match replica_reply(buf, RETRY_HOLD_LIMIT_BYTES) {
            ReplicaReply::Hold if !lost => ReplicaVerdict::Hold,
            ReplicaReply::RetryOnLeader {
                reply_len,
                sqlstate,
            } => {
                let retry = self.retry.take().expect("may_retry checked it");
                ReplicaVerdict::RetryOnLeader {
                    reply_len,
                    sqlstate,
                    unit: retry.unit,
                }
            }
            ReplicaReply::Hold | ReplicaReply::Stream => {
                self.retry = None;
                ReplicaVerdict::Stream
            }
        }
    }

    /// The unit a replica refused with `sqlstate` runs on the leader now.
    pub(crate) fn ran_on_leader(&mut self, sqlstate: &str) {
        self.current = Some(Side::Leader);
        // A statement a replica refused as a write (25006, read_only_sql_transaction) may write
        // on the leader.
        if sqlstate == "25006" {
            self.unit_may_write = true;
        }
    }

    /// The length of the unit to keep for a run on the leader, when the unit just routed to `side`
    /// is a read (not a transaction) the leader could run instead: only on the replica, for a
    /// session free to move (no `praetor.target=replica`, no pin), when the whole unit is here
    /// and small.
    fn retriable(&self, side: Side, decision: &Decision) -> Option<usize> {
        let free = self.target == Target::Any && self.pinned.is_none() && decision.pin.is_none();
        (side == Side::Replica && free && decision.class == Class::Read)
            .then_some(decision.unit_len?)
            .filter(|len| *len <= RETRY_UNIT_LIMIT_BYTES)
    }

    /// Inside a transaction: pins the session when a statement creates session state; returns the
    /// new pin.
    fn watch_in_transaction(
        &mut self,
        buf: &[u8],
        h: FrontendHeader,
        side: Side,
        ctx: &Ctx<'_>,
    ) -> Option<PinReason> {
        let body = buf.get(5..h.frame_len)?;
        let reason = match h.tag {
            QUERY => match query_text(body).map(|q| self.classify_query(q, h, ctx)) {
                Ok(Class::SessionSet) => Some(PinReason::SetInTransaction),
                Ok(class) => query_pin(class, ctx),
                _ => None,
            },
            PARSE => match Parse::decode(body) {
                Ok(p) if !p.name.is_empty() && !ctx.tracks_prepared => {
                    Some(PinReason::PreparedStatement)
                }
                Ok(p) => match ctx.classifier.classify(p.query) {
                    Class::Pin(r) => Some(r),
                    Class::SessionSet => Some(PinReason::SetInTransaction),
                    _ => None,
                },
                Err(_) => None,
            },
            FUNCTION_CALL => Some(PinReason::Protocol),
            _ => None,
        }?;
        self.pin(side, reason).then_some(reason)
    }

    /// Decides where the unit starting with the message `h` at the front of `buf` goes.
    fn decide(&mut self, buf: &[u8], h: FrontendHeader, ctx: &Ctx<'_>) -> Decision {
        let leader = |class: Class, pin: Option<PinReason>| Decision {
            side: Side::Leader,
            class,
            pin,
            unit_len: None,
        };
        let body = || buf.get(5..h.frame_len).unwrap_or(&[]);
        let class = match h.tag {
            QUERY => match query_text(body()) {
                Ok(q) => self.classify_query(q, h, ctx),
                Err(_) => Class::Write,
            },
            PARSE => return self.decide_extended(buf, ctx),
            FUNCTION_CALL => return leader(Class::Write, Some(PinReason::Protocol)),
            BIND => {
                // A Bind without its Parse: the statement lives where the last unit ran.
                if let Ok(b) = Bind::decode(body()) {
                    if !b.statement.is_empty() {
                        return leader(Class::Write, prepared_pin(ctx));
                    }
                }
                return self.sticky(ctx);
            }
            _ => return self.sticky(ctx),
        };
        let side = match (self.target, class) {
            (Target::Primary, _) => Side::Leader,
            (Target::Replica, _) => Side::Replica,
            (Target::Any, c) if c.is_read() => Side::Replica,
            (Target::Any, Class::TxControl) => return self.sticky(ctx),
            _ => Side::Leader,
        };
        let pin = query_pin(class, ctx);
        Decision {
            side,
            class,
            pin,
            unit_len: Some(h.frame_len),
        }
    }

    /// The class of the text `sql` of the Query `h`; notes whether the lexer alone decided
    /// ([`UnitTracker::take_query_lexed`]).
    fn classify_query(&mut self, sql: &str, h: FrontendHeader, ctx: &Ctx<'_>) -> Class {
        let (class, lexed) = ctx.classifier.classify_lexed(sql);
        self.query_lexed = lexed.then_some(h.frame_len);
        class
    }

    /// Whether the Query `h` about to be forwarded is one the classifier's lexer alone classified
    /// just before (one statement that prepares, executes, deallocates and discards nothing: see
    /// [`Classifier::classify_lexed`]); forgets it. `false` when unknown.
    pub(crate) fn take_query_lexed(&mut self, h: FrontendHeader) -> bool {
        h.tag == QUERY && self.query_lexed.take() == Some(h.frame_len)
    }

    /// A unit that goes where the previous unit went (while the session still holds that
    /// connection), to the leader otherwise.
    fn sticky(&self, ctx: &Ctx<'_>) -> Decision {
        let side = match self.last_side {
            Some(s) if ctx.has(s) => s,
            _ => Side::Leader,
        };
        Decision {
            side,
            class: Class::TxControl,
            pin: None,
            unit_len: None,
        }
    }

    /// An extended-protocol unit: a replica only when the whole unit (through Sync) is buffered and
    /// every statement in it reads.
    fn decide_extended(&self, buf: &[u8], ctx: &Ctx<'_>) -> Decision {
        let leader = |pin| Decision {
            side: if self.target == Target::Replica {
                Side::Replica
            } else {
                Side::Leader
            },
            class: Class::Write,
            pin,
            unit_len: None,
        };
        let mut at = 0;
        let mut all_read = true;
        loop {
            let Ok(Some(h)) = FrontendHeader::peek(&buf[at..], ctx.max_message_size) else {
                return leader(None); // the unit is not all here
            };
            let Some(body) = h.body(&buf[at..]) else {
                return leader(None);
            };
            match h.tag {
                PARSE => match Parse::decode(body) {
                    Ok(p) if !p.name.is_empty() => return leader(prepared_pin(ctx)),
                    Ok(p) => match ctx.classifier.classify(p.query) {
                        Class::Read => {}
                        Class::Pin(r) => return leader(Some(r)),
                        Class::SessionSet => return leader(Some(PinReason::SetInTransaction)),
                        _ => all_read = false,
                    },
                    Err(_) => return leader(None),
                },
                BIND => {
                    if matches!(Bind::decode(body), Ok(b) if !b.statement.is_empty()) {
                        return leader(prepared_pin(ctx));
                    }
                }
                SYNC => {
                    at += h.frame_len;
                    break;
                }
                FUNCTION_CALL => return leader(Some(PinReason::Protocol)),
                _ => {}
            }
            at += h.frame_len;
        }
        let side = match self.target {
            Target::Primary => Side::Leader,
            Target::Replica => Side::Replica,
            Target::Any if all_read => Side::Replica,
            Target::Any => Side::Leader,
        };
        Decision {
            side,
            class: if all_read { Class::Read } else { Class::Write },
            pin: None,
            unit_len: Some(at),
        }
    }
}

/// What an idle session does about its idleness on one pass of its loop ([`idle_plan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdlePlan<I> {
    /// Leave the task now ([`crate::park`]).
    Park,
    /// Give the server connections back to the pool now: `idle_release` is over (or 0), and the
    /// connections are back before the next login looks there.
    Release,
    /// Wait for the client, a server or this instant; then release (`release`), or park on the
    /// next pass.
    Timer {
        /// When the wait ends.
        at: I,
        /// The timer is `idle_release`'s (else the park's).
        release: bool,
    },
    /// Nothing to time.
    NoTimer,
}

/// The park/release rule for a session at an idle point, at `now`.
///
/// `parkable`: the session may leave its task (no server connection, nothing of it beyond what a
/// parked session keeps: [`UnitTracker::may_park`], plain TCP, the parking lot open, nothing
/// buffered from the client). It parks at once when no unit ran since it logged in or resumed
/// (`unit_ended` `None`), otherwise once the client has been quiet for `park_after` since the unit
/// ended: a busy client of a transaction-pooling proxy (`idle_release` 0) then does not leave and
/// re-enter its task around every unit.
///
/// `releasable`: the session holds server connections it may give back
/// ([`UnitTracker::may_release`]); it does `idle_release` after it went idle (`idle_since`).
/// The two exclude each other (parking needs no connection, releasing one).
///
/// `I` is the caller's clock's instant (tokio's in `session`; a `Duration` in tests).
pub(crate) fn idle_plan<I>(
    now: I,
    parkable: bool,
    unit_ended: Option<I>,
    park_after: Duration,
    releasable: bool,
    idle_since: Option<I>,
    idle_release: Duration,
) -> IdlePlan<I>
where
    I: Copy + Ord + Add<Duration, Output = I>,
{
    let park_at = if parkable {
        match unit_ended.map(|t| t + park_after) {
            Some(at) if at > now => Some(at),
            _ => return IdlePlan::Park,
        }
    } else {
        None
    };
    let release_at = idle_since
        .filter(|_| releasable)
        .map(|since| since + idle_release);
    match (release_at, park_at) {
        (Some(at), _) if at <= now => IdlePlan::Release,
        (Some(at), _) => IdlePlan::Timer { at, release: true },
        (None, Some(at)) => IdlePlan::Timer { at, release: false },
        (None, None) => IdlePlan::NoTimer,
    }
}

/// What an auto-port session does about its running unit while the leader steps down (a
/// switchover): the read-write port's drain rule ([`crate::rw::drain`]) applied to the unit.
///
/// `current`: the side running the session's unit ([`UnitTracker::current`], `None` at an idle
/// point). `switching_for`: how long ago the proxy saw the DCS ask the leader to step down
/// ([`crate::router::Router::switching_since`]; `None`: it does not). A unit on the leader (a
/// transaction, or a single statement still running) gets `drain_timeout` from that moment, not
/// from its own start: the leader's agent waits for transactions in progress at most 5 s itself,
/// so the proxy's cancel, with its message naming `drain_timeout`
/// ([`crate::rw::drained_message`]), comes first. Past it ([`Drain::Cancel`]) the session sends
/// its leader connection a CancelRequest and ends with `FATAL 57P01`. A unit on a replica has
/// nothing to drain (the replica does not step down), and an idle session is held instead: its
/// next leader unit waits for the next leader at the idle point ([`Ctx::leader_stepping_down`]).
pub(crate) fn leader_drain(
    current: Option<Side>,
    switching_for: Option<Duration>,
    drain_timeout: Duration,
) -> Drain {
    crate::rw::drain(switching_for, drain_timeout, current != Some(Side::Leader))
}

/// What a session pinned to a server does at an idle point while the leader steps down (a
/// switchover), [`pinned_drain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PinnedDrain {
    /// Nothing to do: no switchover, the session is not pinned to the leader, or a unit still runs
    /// there ([`leader_drain`] bounds it).
    Stay,
    /// The pin leaves no state on the server once its unit is over: drop it
    /// ([`UnitTracker::unpin`]); the session's next leader unit waits at the idle point for the
    /// next leader and moves there, as an unpinned session's does.
    Unpin,
    /// The session holds state the next leader would not have, and the drain still runs: it goes
    /// on on the leader (each unit it starts bounded by [`leader_drain`], as a transaction in
    /// progress) for this long still, the rest of `drain_timeout`; it ends earlier when the leader
    /// stops serving it ([`pinned_leader_lost`]).
    Wait(Duration),
    /// The session holds state the next leader would not have and the drain is over: it ends now
    /// with `FATAL 57P01` saying which ([`crate::rw::cannot_move_message`]).
    End(PinReason),
}

/// Whether a pin for `reason` leaves state on the server after its unit: every pin but the
/// function-call protocol's ([`PinReason::Protocol`]). A FunctionCall pins a session because the
/// proxy does not follow that sub-protocol across servers, not for what it leaves behind (a large
/// object descriptor, its usual use, closes with its transaction); the read-write port moves such
/// sessions too (`rw::RwTracker` marks no FunctionCall unmovable).
pub(crate) fn pin_holds_state(reason: PinReason) -> bool {
    reason != PinReason::Protocol
}

/// The switchover rule for a pinned auto-port session (issue 17 item 1), applied at every idle
/// point (`current` `None`) before the next unit is routed, and again when the topology changes
/// or the drain's deadline passes.
///
/// `pinned`: [`UnitTracker::pinned`]. `switching_for`: how long ago the proxy saw the DCS ask the
/// leader to step down ([`crate::router::Router::switching_since`]; `None`: it does not).
/// A session pinned only by the function-call protocol moves ([`pin_holds_state`]). One holding
/// state cannot move, but its leader still serves it until its agent's fast stop: like
/// PgBouncer's `PAUSE`, which waits for a session-pooled client to leave rather than cutting it,
/// the session goes on there (an application finishing its work can), until the latest safe
/// point: the end of `drain_timeout` counted from the switchover, past which nothing new may start
/// on the leader ([`leader_drain`] would cancel it at once), or the leader's stop or fence
/// ([`pinned_leader_lost`]), whichever comes first. Then it ends with `57P01` saying what it
/// holds. A switchover that is called off leaves it where it was. A unit still running on the
/// leader first gets the rest of `drain_timeout` ([`leader_drain`]); the rule applies when it
/// ends. A session pinned to a replica stays.
pub(crate) fn pinned_drain(
    pinned: Option<(Side, PinReason)>,
    current: Option<Side>,
    switching_for: Option<Duration>,
    drain_timeout: Duration,
) -> PinnedDrain {
    match (pinned, switching_for) {
        (Some((Side::Leader, reason)), Some(t)) if current.is_none() => {
            if !pin_holds_state(reason) {
                PinnedDrain::Unpin
            } else if t >= drain_timeout {
                PinnedDrain::End(reason)
            } else {
                PinnedDrain::Wait(drain_timeout - t)
            }
        }
        _ => PinnedDrain::Stay,
    }
}

/// What a session pinned to a server says when its connection on `side` ends at an idle point
/// (the server's FATAL or close, or the proxy's fence): `Some(reason)` when the session is pinned
/// to the leader and saw it asked to step down (`switchover_seen`: a switchover runs, or ran while
/// it was pinned): the leader's stop ended the wait of [`PinnedDrain::Wait`], and the client gets
/// `FATAL 57P01` saying what it holds ([`crate::rw::cannot_move_message`]) instead of the server's
/// `terminating connection due to administrator command`. `None`: the loss ends the session as
/// any lost pinned server does.
pub(crate) fn pinned_leader_lost(
    pinned: Option<(Side, PinReason)>,
    side: Side,
    switchover_seen: bool,
) -> Option<PinReason> {
    match pinned {
        Some((Side::Leader, reason)) if side == Side::Leader && switchover_seen => Some(reason),
        _ => None,
    }
}

/// Whether a unit of this class may write: anything but reads and session-level `SET`s.
pub(crate) fn may_write(class: Class) -> bool {
    !(class.is_read() || class == Class::SessionSet)
}

#[cfg(test)]
mod tests {
    //! Replays the message traces in `proxy/tests/traces/*.trace` (recorded from PostgreSQL 15
    //! with `record.py`; see that directory's README) into a [`UnitTracker`], driven as `session`
    //! drives it, and compares what it decides with the `>` lines of each file. With
    //! `PRAETOR_REWRITE_TRACES=1` the `>` lines are written anew instead, to review as a diff.

    use super::*;
    use bytes::BufMut;

    /// One protocol frame: tag, length, body.
    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.put_u32(body.len() as u32 + 4);
        out.extend_from_slice(body);
        out
    }

    fn cstr(out: &mut Vec<u8>, s: &str) {
        out.extend_from_slice(s.as_bytes());
        out.push(0);
    }

    /// The trace's escapes: `\n` and `\\`.
    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match (c, c == '\\') {
                (_, true) => match chars.next() {
                    Some('n') => out.push('\n'),
                    Some(other) => out.push(other),
                    None => out.push('\\'),
                },
                (c, false) => out.push(c),
            }
        }
        out
    }

    /// `-` stands for the empty (unnamed) statement or portal.
    fn name(s: &str) -> &str {
        if s == "-" {
            ""
        } else {
            s
        }
    }

    /// The frames of one trace line (`C Q SELECT 1`, `S Z I`, `S D x3`...).
    fn frames_of(line: &str) -> Vec<u8> {
        let (line, count) = match line.rsplit_once(" x") {
            Some((rest, n)) if n.parse::<usize>().is_ok() => (rest, n.parse().unwrap()),
            _ => (line, 1),
        };
        let mut words = line.splitn(3, ' ');
        let (side, tag, rest) = (
            words.next().unwrap(),
            words.next().expect("a tag").as_bytes()[0],
            words.next().unwrap_or(""),
        );
        let mut body = Vec::new();
        match (side, tag) {
            ("C", QUERY) => cstr(&mut body, &unescape(rest)),
            ("C", PARSE) => {
                let (n, q) = rest.split_once(' ').expect("name and statement");
                cstr(&mut body, name(n));
                cstr(&mut body, &unescape(q));
                body.put_u16(0);
            }
            ("C", BIND) => {
                let (portal, statement) = rest.split_once(' ').expect("portal and statement");
                cstr(&mut body, name(portal));
                cstr(&mut body, name(statement));
                body.put_u16(0);
                body.put_u16(0);
                body.put_u16(0);
            }
            ("S", b'Z') => body.push(rest.as_bytes()[0]),
            ("S", b'E') => {
                let (code, severity) = rest.split_once(' ').expect("SQLSTATE and severity");
                for (field, value) in [(b'S', severity), (b'V', severity), (b'C', code)] {
                    body.push(field);
                    cstr(&mut body, value);
                }
                body.push(b'M');
                cstr(&mut body, "recorded");
                body.push(0);
            }
            _ => {}
        }
        let one = frame(tag, &body);
        one.repeat(count)
    }

    /// A session's side of the replay: the tracker, the client bytes not handled yet, and what
    /// the session would hold.
    struct Replay {
        units: UnitTracker,
        classifier: Classifier,
        client: Vec<u8>,
        blocked: bool,
        has_leader: bool,
        has_replica: bool,
        /// A replica's reply held while it is judged.
        held: Vec<u8>,
        /// ReadyForQuery statuses the session answered itself (a Sync at an idle point): the
        /// recording's next ReadyForQuery is the server's answer to the same Sync, which the
        /// session's must equal.
        answered: std::collections::VecDeque<TxStatus>,
        out: Vec<String>,
        terminated: bool,
    }

    fn describe_decision(d: &Decision) -> String {
        let class = match d.class {
            Class::Read => "a read".to_string(),
            Class::Write => "a write".to_string(),
            Class::TxControl => "where the last unit ran".to_string(),
            Class::SessionSet => "a session SET".to_string(),
            other => format!("{other:?}"),
        };
        format!("{}: {class}", d.side.as_str())
    }

    /// The status letter of ReadyForQuery.
    fn letter(tx: TxStatus) -> char {
        match tx {
            TxStatus::Idle => 'I',
            TxStatus::InTransaction => 'T',
            TxStatus::Failed => 'E',
        }
    }

    impl Replay {
        fn new(target: Target) -> Replay {
            Replay {
                units: UnitTracker::new(target, Some(Side::Leader)),
                classifier: Classifier::default(),
                client: Vec::new(),
                blocked: false,
                has_leader: true,
                has_replica: false,
                held: Vec::new(),
                answered: Default::default(),
                out: Vec::new(),
                terminated: false,
            }
        }

        fn say(&mut self, line: String) {
            self.out.push(format!("> {line}"));
        }

        /// Handles the buffered client messages, as `Session::handle_client` does (every
        /// message of a trace is whole).
        fn handle_client(&mut self) {
            while !self.blocked && !self.terminated {
                let Ok(Some(h)) = FrontendHeader::peek(&self.client, 1 << 30) else {
                    return;
                };
                let tag = h.tag as char;
                if h.tag == b'X' {
                    self.say("X: terminate".into());
                    self.terminated = true;
                    return;
                }
                let ctx = Ctx {
                    classifier: &self.classifier,
                    max_message_size: 1 << 30,
                    has_leader: self.has_leader,
                    has_replica: self.has_replica,
                    paused: false,
                    tracks_prepared: false,
                    leader_stepping_down: false,
                };
                let step = self.units.on_client_message(&self.client, h, &ctx);
                let said = match step {
                    ClientStep::Route(d) => {
                        // Both servers are there: the session gets the side it wants.
                        match d.side {
                            Side::Leader => self.has_leader = true,
                            Side::Replica => self.has_replica = true,
                        }
                        let pinned = self.units.start_unit(d.side, &d, &self.client, h);
                        if pinned.is_some() {
                            // `Session::pinned_to`: the other connection goes.
                            match d.side {
                                Side::Leader => self.has_replica = false,
                                Side::Replica => self.has_leader = false,
                            }
                        }
                        self.units.forwarded(h);
                        let mut s = format!("{tag}: route to the {}", describe_decision(&d));
                        if let Some(r) = pinned {
                            s += &format!(", pinned: {r}");
                        }
                        if self.units.may_retry() {
                            s += &format!(", retriable ({} bytes kept)", d.unit_len.unwrap());
                        }
                        s
                    }
                    ClientStep::Forward { next_unit, pinned } => {
                        self.units.forwarded(h);
                        let mut s = format!("{tag}: forward");
                        if let Some(side) = next_unit {
                            s += &format!(", a pipelined unit following on {}", side.as_str());
                        }
                        if let Some(r) = pinned {
                            s += &format!(", pinned: {r}");
                        }
                        s
                    }
                    ClientStep::Wait => {
                        self.blocked = true;
                        self.say(format!("{tag}: wait for the running unit to end"));
                        return;
                    }
                    ClientStep::Drop { whole } => {
                        format!("{tag}: drop{}", if whole { "" } else { " (idle)" })
                    }
                    ClientStep::AnswerReady(tx) => {
                        self.answered.push_back(tx);
                        format!("{tag}: answer ReadyForQuery {} (no server)", letter(tx))
                    }
                };
                self.say(said);
                self.client.drain(..h.frame_len);
            }
        }

        /// Server bytes for the running unit (or an idle connection), as
        /// `Session::handle_server` takes them.
        fn on_server(&mut self, bytes: &[u8]) {
            let Some(side) = self.units.current() else {
                if let Some(tx) = self.answered.pop_front() {
                    let theirs = TxStatus::from_ready_for_query(&bytes[5..]).expect("a status");
                    assert_eq!(
                        theirs, tx,
                        "the session answered another status than the server"
                    );
                    self.say("the server's answer to that Sync: the same".into());
                    return;
                }
                let mut at = 0;
                while let Ok(Some(h)) = praetor_protocol::FrameHeader::peek(&bytes[at..]) {
                    let pinned_here = self.units.pinned().is_some();
                    let verdict = idle_message(h.tag, pinned_here);
                    self.say(format!(
                        "idle server message {}: {verdict:?}",
                        h.tag as char
                    ));
                    at += h.frame_len;
                }
                return;
            };
            let mut bytes = bytes.to_vec();
            if side == Side::Replica && self.units.may_retry() {
                self.held.extend_from_slice(&bytes);
                match self.units.judge_replica_reply(&self.held, false) {
                    ReplicaVerdict::Hold => {
                        self.say("hold the replica's reply".into());
                        return;
                    }
                    ReplicaVerdict::Stream => bytes = std::mem::take(&mut self.held),
                    ReplicaVerdict::RetryOnLeader {
                        reply_len,
                        sqlstate,
                        unit,
                    } => {
                        self.held.drain(..reply_len);
                        assert!(self.held.is_empty(), "a trace has nothing after the reply");
                        self.units.ran_on_leader(sqlstate);
                        self.has_leader = true;
                        self.say(format!(
                            "the replica refused it ({sqlstate}): run it on the leader ({} bytes sent again)",
                            unit.len()
                        ));
                        return;
                    }
                }
            }
            let mut at = 0;
            let mut error = false;
            let mut readies = Vec::new();
            while let Ok(Some(h)) = praetor_protocol::FrameHeader::peek(&bytes[at..]) {
                match h.tag {
                    b'E' => error = true,
                    b'Z' => readies.push(
                        TxStatus::from_ready_for_query(&bytes[at + 5..at + h.frame_len])
                            .expect("a recorded status"),
                    ),
                    _ => {}
                }
                at += h.frame_len;
            }
            self.units.on_server_messages(error, &readies);
            if readies.is_empty() {
                return;
            }
            if !self.units.is_unit_over(0) {
                let tx = letter(self.units.tx());
                self.say(format!("the unit goes on ({tx})"));
                return;
            }
            let end = self.units.end_unit(side);
            let mut s = format!("unit over on {}", side.as_str());
            if end.wrote {
                s += ", wrote";
            }
            if end.set_recorded {
                s += &format!(", SETs to replay: {:?}", self.units.sets());
            }
            s += if self.units.may_release() {
                ", may release its connections"
            } else {
                ", keeps its connections"
            };
            self.say(s);
            self.blocked = false;
            self.handle_client();
        }
    }

    /// Replays one trace file's text; returns it with the `>` lines the tracker's decisions give.
    fn replay(text: &str) -> String {
        let mut replay = Replay::new(Target::Any);
        let mut lines: Vec<String> = Vec::new();
        // Client lines in a row are one read of the session (as the client wrote them together).
        let mut batch_from: Option<usize> = None;
        let flush = |replay: &mut Replay, lines: &mut Vec<String>, batch: &mut Option<usize>| {
            if batch.take().is_some() {
                replay.handle_client();
                lines.append(&mut replay.out);
            }
        };
        for line in text.lines() {
            if line.starts_with('>') {
                continue;
            }
            if let Some(t) = line.strip_prefix("target ") {
                replay.units = UnitTracker::new(Target::parse(t).expect("a target"), None);
            }
            if line.starts_with("C ") {
                replay.client.extend_from_slice(&frames_of(line));
                batch_from.get_or_insert(lines.len());
                lines.push(line.to_string());
                continue;
            }
            flush(&mut replay, &mut lines, &mut batch_from);
            lines.push(line.to_string());
            if line.starts_with("S ") {
                replay.on_server(&frames_of(line));
                lines.append(&mut replay.out);
            }
        }
        flush(&mut replay, &mut lines, &mut batch_from);
        lines.push(String::new());
        lines.join("\n")
    }

    #[test]
    fn recorded_traces_replay_to_the_expected_decisions() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces");
        let rewrite = std::env::var_os("PRAETOR_REWRITE_TRACES").is_some();
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .expect("proxy/tests/traces")
            .map(|e| e.expect("a directory entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "trace"))
            .collect();
        names.sort();
        assert!(names.len() >= 12, "traces in {}", dir.display());
        let mut failed = Vec::new();
        for path in names {
            let text = std::fs::read_to_string(&path).expect("a trace");
            let got = replay(&text);
            if rewrite {
                std::fs::write(&path, &got).expect("rewrite the trace");
            } else if got != text {
                eprintln!("--- {}: decisions differ; got:\n{got}", path.display());
                failed.push(path.display().to_string());
            }
        }
        assert!(failed.is_empty(), "traces with other decisions: {failed:?}");
    }
}

#[cfg(test)]
mod rules {
    //! Table tests of the rules the recorded traces do not reach.

    use super::*;

    fn query(sql: &str) -> Vec<u8> {
        let mut out = bytes::BytesMut::new();
        praetor_protocol::frontend::encode_query(&mut out, sql);
        out.to_vec()
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn parse(name: &str, sql: &str) -> Vec<u8> {
        let mut body = Vec::new();
        for s in [name, sql] {
            body.extend_from_slice(s.as_bytes());
            body.push(0);
        }
        body.extend_from_slice(&[0, 0]);
        message(PARSE, &body)
    }

    fn step(units: &mut UnitTracker, buf: &[u8]) -> ClientStep {
        let classifier = Classifier::default();
        let h = FrontendHeader::peek(buf, 1 << 20).unwrap().unwrap();
        units.on_client_message(buf, h, &test_ctx(&classifier, false))
    }

    /// A context with a leader and a replica, nothing paused or tracked; `leader_stepping_down`
    /// as given.
    fn test_ctx(classifier: &Classifier, leader_stepping_down: bool) -> Ctx<'_> {
        Ctx {
            classifier,
            max_message_size: 1 << 20,
            has_leader: true,
            has_replica: true,
            paused: false,
            tracks_prepared: false,
            leader_stepping_down,
        }
    }

    /// The pool's statement tracking skips its keyword scan only for the Query just classified by
    /// the lexer alone, once.
    #[test]
    fn a_query_the_lexer_classified_is_known_once_and_only_for_itself() {
        let header = |buf: &[u8]| FrontendHeader::peek(buf, 1 << 20).unwrap().unwrap();
        let select = query("SELECT 1");
        let mut units = UnitTracker::new(Target::Any, None);
        step(&mut units, &select);
        assert!(units.take_query_lexed(header(&select)));
        assert!(
            !units.take_query_lexed(header(&select)),
            "forgotten once taken"
        );
        step(&mut units, &select);
        let other = query("SELECT 12");
        assert!(!units.take_query_lexed(header(&other)), "another Query");
        for sql in ["EXECUTE p", "SELECT 1; DEALLOCATE ALL", "DISCARD ALL"] {
            let buf = query(sql);
            let mut units = UnitTracker::new(Target::Any, None);
            step(&mut units, &buf);
            assert!(!units.take_query_lexed(header(&buf)), "{sql}");
        }
    }

    fn route(target: Target, buf: &[u8]) -> Decision {
        match step(&mut UnitTracker::new(target, None), buf) {
            ClientStep::Route(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn where_units_go_by_target_and_by_what_is_buffered() {
        let sync = message(SYNC, &[]);
        let whole_read = [parse("", "SELECT 1"), sync.clone()].concat();
        let rows: &[(Target, Vec<u8>, Side, Class)] = &[
            (Target::Any, query("SELECT 1"), Side::Replica, Class::Read),
            (
                Target::Any,
                query("DELETE FROM t"),
                Side::Leader,
                Class::Write,
            ),
            (
                Target::Primary,
                query("SELECT 1"),
                Side::Leader,
                Class::Read,
            ),
            (
                Target::Replica,
                query("DELETE FROM t"),
                Side::Replica,
                Class::Write,
            ),
            // An extended-protocol read goes to a replica only when it is here through its Sync.
            (Target::Any, whole_read.clone(), Side::Replica, Class::Read),
            (
                Target::Any,
                parse("", "SELECT 1"),
                Side::Leader,
                Class::Write,
            ),
            (
                Target::Replica,
                parse("", "SELECT 1"),
                Side::Replica,
                Class::Write,
            ),
        ];
        for (target, buf, side, class) in rows {
            let d = route(*target, buf);
            assert_eq!((d.side, d.class), (*side, *class), "{target:?} {buf:?}");
        }
    }

    #[test]
    fn only_a_free_read_outside_a_transaction_on_a_replica_may_run_again_on_the_leader() {
        let retriable = |target: Target, sql: &str| {
            let mut units = UnitTracker::new(target, None);
            let buf = query(sql);
            let ClientStep::Route(d) = step(&mut units, &buf) else {
                panic!("an idle point routes");
            };
            let h = FrontendHeader::peek(&buf, 1 << 20).unwrap().unwrap();
            units.start_unit(d.side, &d, &buf, h);
            units.may_retry()
        };
        assert!(retriable(Target::Any, "SELECT 1"));
        // A transaction's BEGIN READ ONLY: its statements would run again outside it.
        assert!(!retriable(Target::Any, "BEGIN READ ONLY"));
        // praetor.target=replica: the leader is not this session's to use.
        assert!(!retriable(Target::Replica, "SELECT 1"));
        assert!(!retriable(Target::Any, "INSERT INTO t VALUES (1)"));
    }

    #[test]
    fn a_replica_error_inside_a_transaction_or_after_results_streams() {
        let mut units = UnitTracker::new(Target::Any, None);
        let buf = query("SELECT 1");
        let ClientStep::Route(d) = step(&mut units, &buf) else {
            panic!("an idle point routes");
        };
        let h = FrontendHeader::peek(&buf, 1 << 20).unwrap().unwrap();
        units.start_unit(d.side, &d, &buf, h);
        let error = message(b'E', b"SERROR\0VERROR\0C40001\0Mconflict\0\0");
        let ready_t = message(b'Z', b"T");
        // 40001 answered with ReadyForQuery T: the read ran in a transaction block.
        let reply = [error.clone(), ready_t].concat();
        assert_eq!(
            units.judge_replica_reply(&reply, false),
            ReplicaVerdict::Stream
        );
        assert!(
            !units.may_retry(),
            "streamed once: no retry later in the unit"
        );
    }

    #[test]
    fn idle_sessions_park_after_a_quiet_while_and_release_after_idle_release() {
        use IdlePlan::*;
        let s = Duration::from_secs;
        let (park_after, idle_release) = (s(1), s(10));
        // (now, parkable, unit_ended, releasable, idle_since) -> plan
        type Row = (
            u64,
            bool,
            Option<u64>,
            bool,
            Option<u64>,
            IdlePlan<Duration>,
        );
        let rows: &[Row] = &[
            // Just logged in or resumed, no unit since: park at once.
            (100, true, None, false, None, Park),
            // A unit ended 0.5 s ago: wait for the rest of `park_after`...
            (
                100,
                true,
                Some(100),
                false,
                None,
                Timer {
                    at: s(101),
                    release: false,
                },
            ),
            // ...then park.
            (101, true, Some(100), false, None, Park),
            // Connections held: released `idle_release` after the session went idle.
            (
                100,
                false,
                Some(95),
                true,
                Some(95),
                Timer {
                    at: s(105),
                    release: true,
                },
            ),
            (105, false, Some(95), true, Some(95), Release),
            // Pinned or with SETs (not releasable), not parkable: nothing to time.
            (100, false, Some(95), false, Some(95), NoTimer),
        ];
        for &(now, parkable, ended, releasable, since, want) in rows {
            let got = idle_plan(
                s(now),
                parkable,
                ended.map(s),
                park_after,
                releasable,
                since.map(s),
                idle_release,
            );
            assert_eq!(got, want, "now {now} parkable {parkable} ended {ended:?}");
        }
        // `idle_release` 0: due at once.
        assert_eq!(
            idle_plan(s(5), false, None, park_after, true, Some(s(5)), s(0)),
            Release
        );
    }

    #[test]
    fn messages_of_idle_server_connections() {
        use IdleMessage::*;
        let rows: &[(u8, bool, IdleMessage)] = &[
            (b'N', false, Ignore),
            (b'S', false, Ignore),
            (b'A', false, Ignore),
            (b'N', true, Relay),
            (b'A', true, Relay),
            (b'E', true, RelayAndClose),
            (b'E', false, Close),
            (b'Z', true, Close),
        ];
        for (tag, pinned, want) in rows {
            assert_eq!(
                idle_message(*tag, *pinned),
                *want,
                "{} {pinned}",
                *tag as char
            );
        }
    }

    #[test]
    fn a_unit_on_the_leader_gets_drain_timeout_from_the_start_of_the_switchover() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        use Side::*;
        // (side running the unit, switching for, drain_timeout) -> drain
        let rows: &[(Option<Side>, Option<Duration>, Duration, Drain)] = &[
            // No switchover: nothing, wherever the unit runs.
            (Some(Leader), None, s(4), Drain::Nothing),
            (None, None, s(4), Drain::Nothing),
            // An idle session is held at its next unit, not drained.
            (None, Some(s(1)), s(4), Drain::Nothing),
            (None, Some(s(9)), s(4), Drain::Nothing),
            // A unit on a replica: the replica does not step down.
            (Some(Replica), Some(s(9)), s(4), Drain::Nothing),
            // A unit on the leader: the rest of drain_timeout, counted from the switchover...
            (Some(Leader), Some(ms(0)), s(4), Drain::Wait(s(4))),
            (Some(Leader), Some(ms(2500)), s(4), Drain::Wait(ms(1500))),
            // ...then cancel.
            (Some(Leader), Some(s(4)), s(4), Drain::Cancel),
            (Some(Leader), Some(s(9)), s(4), Drain::Cancel),
            // drain_timeout 0: cancel at once.
            (Some(Leader), Some(ms(0)), s(0), Drain::Cancel),
        ];
        for &(current, switching, timeout, want) in rows {
            assert_eq!(
                leader_drain(current, switching, timeout),
                want,
                "{current:?}, switching for {switching:?}, drain_timeout {timeout:?}"
            );
        }
    }

    #[test]
    fn a_pipelined_unit_does_not_follow_on_a_leader_stepping_down() {
        let classifier = Classifier::default();
        // (leader stepping down, side of the running unit) -> the pipelined write follows
        let rows = [
            (false, Side::Leader, true),
            (true, Side::Leader, false),
            // A read unit on a replica: the write goes elsewhere anyway.
            (false, Side::Replica, false),
        ];
        for (stepping_down, side, follows) in rows {
            let mut units = UnitTracker::new(Target::Any, None);
            let first = query(if side == Side::Leader {
                "INSERT INTO t VALUES (1)"
            } else {
                "SELECT 1"
            });
            let ClientStep::Route(d) = step(&mut units, &first) else {
                panic!("an idle point routes");
            };
            let h = FrontendHeader::peek(&first, 1 << 20).unwrap().unwrap();
            units.start_unit(d.side, &d, &first, h);
            units.forwarded(h);
            let next = query("INSERT INTO t VALUES (2)");
            let ctx = test_ctx(&classifier, stepping_down);
            let h = FrontendHeader::peek(&next, 1 << 20).unwrap().unwrap();
            let got = units.on_client_message(&next, h, &ctx);
            let want = if follows {
                ClientStep::Forward {
                    next_unit: Some(side),
                    pinned: None,
                }
            } else {
                ClientStep::Wait
            };
            assert_eq!(got, want, "stepping down {stepping_down}, {side:?}");
        }
    }

    #[test]
    fn a_session_pinned_to_a_leader_stepping_down_moves_or_works_on_until_the_drains_end() {
        use PinnedDrain::{End, Stay, Unpin, Wait};
        let secs = Duration::from_secs;
        let temp = Some((Side::Leader, PinReason::TempObject));
        // (pinned, running unit, switching for, drain_timeout) -> rule
        let rows = [
            (None, None, Some(secs(1)), secs(4), Stay),
            // No switchover (or one called off): nothing changes.
            (temp, None, None, secs(4), Stay),
            // The drain runs: the session goes on on the leader for the rest of drain_timeout.
            (temp, None, Some(secs(0)), secs(4), Wait(secs(4))),
            (temp, None, Some(secs(3)), secs(4), Wait(secs(1))),
            // The drain's end: nothing more may start on the leader, and the session cannot move.
            (
                temp,
                None,
                Some(secs(4)),
                secs(4),
                End(PinReason::TempObject),
            ),
            (
                temp,
                None,
                Some(secs(9)),
                secs(4),
                End(PinReason::TempObject),
            ),
            // drain_timeout 0: at once.
            (
                temp,
                None,
                Some(secs(0)),
                secs(0),
                End(PinReason::TempObject),
            ),
            (
                Some((Side::Leader, PinReason::Listen)),
                None,
                Some(secs(5)),
                secs(4),
                End(PinReason::Listen),
            ),
            (
                Some((Side::Leader, PinReason::PreparedStatement)),
                None,
                Some(secs(5)),
                secs(4),
                End(PinReason::PreparedStatement),
            ),
            (
                Some((Side::Leader, PinReason::HoldCursor)),
                None,
                Some(secs(5)),
                secs(4),
                End(PinReason::HoldCursor),
            ),
            (
                Some((Side::Leader, PinReason::AdvisoryLock)),
                None,
                Some(secs(5)),
                secs(4),
                End(PinReason::AdvisoryLock),
            ),
            (
                Some((Side::Leader, PinReason::SetInTransaction)),
                None,
                Some(secs(1)),
                secs(4),
                Wait(secs(3)),
            ),
            // The function-call protocol leaves nothing behind: the session moves at once.
            (
                Some((Side::Leader, PinReason::Protocol)),
                None,
                Some(secs(0)),
                secs(4),
                Unpin,
            ),
            // A unit (a transaction) still runs: leader_drain bounds it; the rule waits for its end.
            (temp, Some(Side::Leader), Some(secs(9)), secs(4), Stay),
            // A replica does not step down.
            (
                Some((Side::Replica, PinReason::TempObject)),
                None,
                Some(secs(9)),
                secs(4),
                Stay,
            ),
        ];
        for (pinned, current, switching, timeout, want) in rows {
            assert_eq!(
                pinned_drain(pinned, current, switching, timeout),
                want,
                "{pinned:?}, running {current:?}, switching for {switching:?}, drain_timeout {timeout:?}"
            );
        }
        // (pinned, side whose connection ended, switchover seen) -> ends saying what it holds
        let lost = [
            (temp, Side::Leader, true, Some(PinReason::TempObject)),
            // A failover, or a server ending on its own: as any lost pinned server.
            (temp, Side::Leader, false, None),
            (temp, Side::Replica, true, None),
            (
                Some((Side::Replica, PinReason::Listen)),
                Side::Replica,
                true,
                None,
            ),
            (None, Side::Leader, true, None),
        ];
        for (pinned, side, seen, want) in lost {
            assert_eq!(
                pinned_leader_lost(pinned, side, seen),
                want,
                "{pinned:?}, {side:?} lost, switchover seen {seen}"
            );
        }
        let mut units = UnitTracker::new(Target::Any, None);
        assert!(units.pin(Side::Leader, PinReason::Protocol));
        units.unpin();
        assert!(units.pinned().is_none() && units.may_release());
    }

    #[test]
    fn pinned_or_set_sessions_keep_their_connections_and_a_lost_server_ends_them() {
        let mut units = UnitTracker::new(Target::Any, None);
        assert!(units.may_release() && units.may_park() && units.is_clean());
        assert!(!units.needs_server(Side::Leader));
        assert!(units.pin(Side::Replica, PinReason::Listen));
        assert!(
            !units.pin(Side::Leader, PinReason::TempObject),
            "the first pin stays"
        );
        assert!(!units.may_release() && !units.may_park() && !units.is_clean());
        assert!(units.needs_server(Side::Replica) && !units.needs_server(Side::Leader));
        let mut discarding = UnitTracker::new(Target::Any, None);
        discarding.discard_until_sync();
        assert!(discarding.may_release() && !discarding.may_park());
    }
}
