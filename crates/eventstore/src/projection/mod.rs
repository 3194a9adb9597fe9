//! Projections: from a stream to SQL read models, exactly once.
//!
//! A [`Projection`] declares its tables and applies commits inside a transaction
//! it is handed. The [`runner`] consumes the stream in batches with an ordered
//! consumer starting after the position stored in the database, and commits the
//! rows **and** the new position in one transaction: a crash at any point leaves
//! the database at a batch boundary, and the next start resumes from exactly
//! there. The database is the acknowledgement; no JetStream ack is involved.
//!
//! - [`store`]: the read store, with SQLite (embedded default, WAL) and
//!   PostgreSQL behind one [`store::Backend`] trait over sqlx's `Any` driver.
//! - [`runner`]: batching, retries, parking poison commits in the `DLQ` stream,
//!   lag metrics, read-your-writes, and rebuild into shadow tables then swap.

pub mod runner;
pub mod store;

use std::future::Future;

use sqlx::AnyConnection;

use crate::aggregate::DecodeError;
use crate::envelope::RecordedCommit;

pub use runner::{ProjectionRunner, ReplayReport, RunnerConfig, RunnerHandle, WaitError};
pub use store::{Backend, ReadStore};

/// One read-model table: its name and the column list of its `CREATE TABLE`.
/// Use portable types (`TEXT`, `BIGINT`, `DOUBLE PRECISION`, `BOOLEAN`).
#[derive(Debug, Clone, Copy)]
pub struct TableDef {
    /// Table name (live); the shadow copy during a rebuild is `<name>__shadow`.
    pub name: &'static str,
    /// The parenthesised column list, e.g. `"(id TEXT PRIMARY KEY, n BIGINT NOT NULL)"`.
    pub columns: &'static str,
    /// Column lists to index, e.g. `&["owner", "grid_id, status"]`.
    pub indexes: &'static [&'static str],
}

/// Which physical tables a projection writes: the live ones, or the shadow set
/// during a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tables {
    /// The tables queries read.
    Live,
    /// The rebuild's copy, swapped in when it catches up.
    Shadow,
}

impl Tables {
    /// The physical name of table `name`.
    pub fn name(self, name: &str) -> String {
        match self {
            Tables::Live => name.to_string(),
            Tables::Shadow => format!("{name}{SHADOW_SUFFIX}"),
        }
    }
}

/// Suffix of shadow tables.
pub const SHADOW_SUFFIX: &str = "__shadow";

/// Why applying a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The commit's events cannot be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The database refused a statement.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The commit contradicts the read model (e.g. an event for an unknown row).
    #[error("{0}")]
    Invalid(String),
}

impl ApplyError {
    /// True when the failure is the database being unreachable rather than
    /// anything about this commit: such failures are retried forever and never
    /// park the commit.
    pub fn is_transient(&self) -> bool {
        if let ApplyError::Db(sqlx::Error::Database(e)) = self {
            // SQLite busy/locked (5, 6, 517 busy-snapshot); PostgreSQL serialization
            // failure and deadlock: contention, not a poison commit.
            return matches!(e.code().as_deref(), Some("5" | "6" | "517" | "40001" | "40P01"));
        }
        matches!(
            self,
            ApplyError::Db(
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

/// A read model built from one stream.
pub trait Projection: Send + Sync + 'static {
    /// Unique name; keys its stored position and its dead-letter subject.
    fn name(&self) -> &str;

    /// The tables it owns.
    fn tables(&self) -> &'static [TableDef];

    /// Apply one commit inside `tx`, writing to `tables`. Must be deterministic:
    /// a rebuild replays the same commits and must reach the same rows.
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        tables: Tables,
        commit: &'a RecordedCommit,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a;
}
