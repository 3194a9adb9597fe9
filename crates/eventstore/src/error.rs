//! Errors at the kernel's boundary. Mapping to gRPC status is done once, in
//! `gridwork-runtime::status`.

use crate::aggregate::DecodeError;

/// Failures of the store itself, whatever the aggregate.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The aggregate id cannot be a subject token.
    #[error("invalid aggregate id {id:?}: {reason}")]
    InvalidId {
        /// The id given.
        id: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The command id is empty or too long.
    #[error("invalid command id: {0}")]
    InvalidCommandId(String),
    /// The command id was used before for a different request: a client bug
    /// (an id reused), never to be answered with the other request's result.
    #[error("command id {command_id} was already used for a different request")]
    CommandIdReused {
        /// The command id.
        command_id: String,
    },
    /// The command id was issued (its UUIDv7 time) longer ago than the
    /// idempotency horizon: whether it already landed can no longer be told, so
    /// it is refused rather than risk applying it twice.
    #[error(
        "command id {command_id} was issued {age_s} s ago, beyond the {horizon_s} s idempotency horizon; send the command under a new id"
    )]
    CommandTooOld {
        /// The command id.
        command_id: String,
        /// Its age in seconds.
        age_s: i64,
        /// The horizon in seconds.
        horizon_s: i64,
    },
    /// Others kept writing first; retries ran out.
    #[error("concurrent updates to {subject} kept conflicting after {attempts} attempts")]
    Conflict {
        /// The aggregate's subject.
        subject: String,
        /// How many times the command was decided.
        attempts: u32,
    },
    /// NATS (or a database) is unreachable or timed out: retrying may succeed.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// The commit is larger than the server or stream accepts: retrying the same
    /// command can never succeed.
    #[error("the command's commit is too large to store: {0}")]
    TooLarge(String),
    /// The stream is missing, sealed or otherwise refuses every write: an
    /// operator must act; retrying cannot help.
    #[error("event store misconfigured: {0}")]
    Misconfigured(String),
    /// A stored commit cannot be read.
    #[error("stored data is unreadable: {0}")]
    Corrupt(DecodeError),
    /// A stored commit was written by a newer build (an event type or version
    /// this one does not know; a rolling deploy in progress): an upgraded
    /// replica can answer, so a retry may succeed.
    #[error("stored data was written by a newer version of the service: {0}")]
    NewerData(DecodeError),
    /// The server or configuration is unsafe to run on.
    #[error("unsafe configuration: {0}")]
    Unsafe(String),
}

/// Why a command did not land.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError<R: std::error::Error> {
    /// The aggregate refused the command: a broken domain rule.
    #[error(transparent)]
    Rejected(R),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DecodeError> for StoreError {
    fn from(e: DecodeError) -> Self {
        if e.newer { StoreError::NewerData(e) } else { StoreError::Corrupt(e) }
    }
}
