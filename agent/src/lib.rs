//! The Praetor agent: one per PostgreSQL node.
//!
//! It runs Patroni's HA loop: bootstraps the cluster or clones from the leader, holds or watches the
//! leader lock in the DCS, promotes, demotes, rewinds, follows; it publishes the member's state in the
//! DCS and serves a Patroni-compatible REST API.
//!
//! Layout (design.md rule 1: the decisions are a pure function, I/O lives in thin shells):
//! - [`ha`]: the pure decision core, `decide(view, local, config, now) -> Decision`.
//! - [`postgres`]: PostgreSQL process control, configuration files, queries, basebackup, rewind.
//! - [`former_leader`]: the fence target (the last leader seen), kept across agent restarts.
//! - [`failsafe_record`]: this member's last failsafe confirmation, kept across agent restarts.
//! - [`callbacks`]: operator scripts run on start, stop, role change (`postgresql.callbacks`).
//! - [`api`]: the REST API (health checks, `/patroni`, `/cluster`, switchover, config, restart, ...)
//!   with access control and TLS.
//! - [`metrics`]: the agent's Prometheus registry (Patroni's metric names plus `praetor_*`).
//! - [`peers`]: asking other members' REST APIs for their WAL position during a leader race.
//! - [`reload`]: what re-reading the configuration file changes (SIGHUP, `POST /reload`), pure.
//! - [`runner`]: the loop that reads state, calls `decide`, executes the actions.
//! - [`watchdog`]: `/dev/watchdog`, armed while leader so a frozen agent's node resets in time.
#![warn(missing_docs)]

pub mod api;
pub mod callbacks;
pub mod data_dir_file;
pub mod failsafe_record;
pub mod former_leader;
pub mod ha;
pub mod metrics;
pub mod peers;
pub mod postgres;
pub mod reload;
pub mod runner;
pub mod watchdog;
