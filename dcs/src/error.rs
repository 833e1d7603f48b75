//! Errors of DCS operations.

use thiserror::Error;

/// Why a DCS operation failed. Callers ask questions ([`DcsError::is_cas_conflict`]) rather than match
/// on messages.
#[derive(Debug, Error)]
pub enum DcsError {
    /// A compare-and-set precondition failed: someone else changed `key` first. Nothing was written.
    #[error("compare-and-set conflict on {key}")]
    CasConflict {
        /// The full key path.
        key: String,
    },
    /// The DCS could not be reached or did not answer in time.
    #[error("DCS unavailable: {0}")]
    Unavailable(String),
    /// A stored value could not be decoded.
    #[error("malformed value at {key}: {message}")]
    Malformed {
        /// The full key path.
        key: String,
        /// What was wrong.
        message: String,
    },
    /// The operation needs something this client does not have (a member name, a backend).
    #[error("{0}")]
    Unsupported(String),
}

impl DcsError {
    /// True for a failed compare-and-set (the caller re-reads and decides again).
    pub fn is_cas_conflict(&self) -> bool {
        matches!(self, DcsError::CasConflict { .. })
    }

    /// True when the DCS could not be reached (the caller retries within `retry_timeout`).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DcsError::Unavailable(_))
    }
}
