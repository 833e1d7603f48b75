//! Patroni-compatible configuration for Praetor.
//!
//! One YAML file describes a node, the way Patroni's `patroni.yml` does (same keys, same meaning), so a
//! team moving from Patroni keeps its files. The layout of this crate:
//!
//! - [`model`]: the serde model of the YAML file ([`Config`] and its sections).
//! - [`dynamic`]: the cluster-wide dynamic configuration ([`DynamicConfig`]) that `bootstrap.dcs` seeds
//!   into the DCS `config` key, with Patroni's defaults and the rule `loop_wait + 2*retry_timeout <= ttl`.
//! - [`load`]: reading a file, collecting warnings for unknown keys and errors that name the key path
//!   (`bootstrap.dcs.ttl: invalid type ...`), and the per-role checks ([`Config::validate_agent`]).
//! - [`guc`]: PostgreSQL parameter names and values, and the recovery settings refused in
//!   `parameters`.
//! - [`keys`]: repeated keys (the last wins, as in Patroni) and the treatment of keys Praetor does not
//!   act on (a warning naming the key and saying it has no effect, or an error where ignoring it
//!   would change what the cluster does).
//! - [`replica`]: replica creation methods (`create_replica_methods`).
//! - [`env`]: `PATRONI_*` / `PRAETOR_*` environment variables overriding YAML keys.
//! - [`value`]: small value types shared by the model (PostgreSQL parameter values, host:port
//!   addresses, lenient integers).
#![warn(missing_docs)]

pub mod dynamic;
pub mod env;
pub mod guc;
pub mod keys;
pub mod load;
pub mod model;
pub mod replica;
pub mod value;

pub use dynamic::{DynamicConfig, StandbyCluster, SyncMode};
pub use load::{load_file, parse_str, parse_str_with_env, ConfigError, Loaded};
pub use model::*;
pub use value::{Address, ParamValue, Parameters};
