//! The nemesis: seeded runs that inject faults into a real 3-member cluster (3-server DCS, a
//! proxy) under a recording workload, then check the history for broken promises.
//!
//! - [`history`]: what a run records (operations, faults, convergence, final state): plain data.
//! - [`checker`]: the checks on a history (lost acknowledged writes per replication mode, split
//!   brain, deposed primary, convergence, recovery time): pure, unit-tested on hand-written
//!   histories.
//! - [`fault`]: the fault kinds, the seeded plan, and [`fault::NetworkFaults`], what a harness
//!   with hosts of their own plugs in for the network faults.
//! - [`workload`]: the clients (tokio-postgres) recording every operation.
//! - [`runner`]: one run of one seed.
//! - [`dcs_probe`]: when the DCS accepts requests again after a quorum loss healed.
//! - [`table`]: the summary of many runs per fault kind.
//! - [`slot_workload`]: the logical slot's writer, consumer and copy poller
//!   (`PRAETOR_NEMESIS_SLOTS=1`).
//! - [`slot_feed`]: the check of the logical slot workload (`PRAETOR_NEMESIS_SLOTS=1`).
//!
//! Entry points: `cargo bench --bench nemesis` and the CI test `tests/nemesis.rs`.

pub mod checker;
pub mod dcs_probe;
pub mod fault;
pub mod history;
pub mod runner;
pub mod slot_feed;
pub mod slot_workload;
pub mod table;
pub mod workload;
