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

pub use praetor_protocol::lsn::{format_lsn, parse_lsn};
