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
//!   PostgreSQL behind one [`store::Backend`] trait over sqlx's `Any` driver, and
//!   the bookkeeping tables (checkpoints, parked commits, rebuild owners).
//! - [`runner`]: consuming, batching, the poison policy, stalls, lag metrics,
//!   read-your-writes.
//! - [`parked`]: parking a poison commit (and every later commit of its
//!   aggregate behind it) and replaying them in order once fixed.
//! - [`rebuild`]: rebuilding from zero into uniquely named shadow tables, swapped
//!   in under the live checkpoint's lock.
//!
//! **The poison policy.** Only a failure specific to one commit is poison: it
//! cannot be decoded, its data is invalid for the read model, or a constraint
//! refuses it ([`ApplyError::is_poison`]). Every other failure — the database
//! unreachable, read-only after a failover, full, timing out, a table or column
//! missing — is the environment: the runner retries it without limit, reports
//! the projection stalled (the service goes NOT_SERVING) and never moves its
//! position past it. Parking many different commits in a short time is itself
//! taken as an outage: the runner stops parking and stalls.

mod feed;
pub mod parked;
pub mod rebuild;
pub mod runner;
pub mod store;

use std::future::Future;

use sqlx::AnyConnection;

use crate::aggregate::DecodeError;
use crate::envelope::RecordedCommit;

pub use parked::{ParkedCommit, ReplayReport};
pub use runner::{ProjectionRunner, RunnerConfig, RunnerError, RunnerHandle, WaitError};
pub use store::{Backend, ReadStore, pg_array};

/// One read-model table: its name and the column list of its `CREATE TABLE`.
/// Use portable types (`TEXT`, `BIGINT`, `DOUBLE PRECISION`, `BOOLEAN`).
#[derive(Debug, Clone, Copy)]
pub struct TableDef {
    /// Table name (live); a rebuild's copy is `<name>__shadow_<tag>`.
    pub name: &'static str,
    /// The parenthesised column list, e.g. `"(id TEXT PRIMARY KEY, n BIGINT NOT NULL)"`.
    pub columns: &'static str,
    /// Column lists to index, e.g. `&["owner", "grid_id, status"]`.
    pub indexes: &'static [&'static str],
}

/// The tag that makes one rebuild's shadow tables unique: eight lowercase hex
/// characters, so that two rebuilds (or a rebuild and the leftovers of a crashed
/// one) never write or drop each other's tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShadowTag([u8; 8]);

impl ShadowTag {
    /// A fresh random tag.
    pub fn fresh() -> Self {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&hex.as_bytes()[..8]);
        Self(tag)
    }

    /// Parse a stored tag; `None` unless it is eight lowercase hex characters.
    pub fn parse(s: &str) -> Option<Self> {
        let bytes = s.as_bytes();
        if bytes.len() != 8 || !bytes.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)) {
            return None;
        }
        let mut tag = [0u8; 8];
        tag.copy_from_slice(bytes);
        Some(Self(tag))
    }

    /// The tag as text.
    pub fn as_str(&self) -> &str {
        // Built only from ASCII hex digits (fresh, parse).
        std::str::from_utf8(&self.0).unwrap_or("00000000")
    }
}

/// Which physical tables a projection writes: the live ones, or one rebuild's
/// shadow set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tables {
    /// The tables queries read.
    Live,
    /// A rebuild's copy, swapped in when it has caught up.
    Shadow(ShadowTag),
}

impl Tables {
    /// The physical name of table `name`.
    pub fn name(self, name: &str) -> String {
        match self {
            Tables::Live => name.to_string(),
            Tables::Shadow(tag) => format!("{name}{SHADOW_SUFFIX}{}", tag.as_str()),
        }
    }

    /// True for the tables queries read.
    pub fn is_live(self) -> bool {
        self == Tables::Live
    }
}

/// Shadow tables are `<name>__shadow_<tag>`.
pub const SHADOW_SUFFIX: &str = "__shadow_";

/// Why applying a commit failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The commit's events cannot be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The database refused a statement, or could not be reached.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The commit contradicts the read model (e.g. an event for an unknown row).
    #[error("{0}")]
    Invalid(String),
    /// Something outside the database that applying needs is unavailable now
    /// (a reactor's command could not be stored): retried without limit.
    #[error("unavailable: {0}")]
    Unavailable(String),
}

impl ApplyError {
    /// True only when the failure is about this commit — it cannot be decoded,
    /// its data is invalid for the read model, or a constraint refuses it — so
    /// that retrying it can never succeed while the code stays as it is. Such a
    /// commit is parked. Everything else is the environment and is retried
    /// without limit: an unreachable, read-only, full or timing-out database, a
    /// missing table or column. The list is of what *is* poison, so that an error
    /// nobody thought of stalls (visible, recoverable) instead of silently
    /// skipping a commit.
    pub fn is_poison(&self) -> bool {
        match self {
            // Written by a newer build: not damaged, this replica is behind.
            ApplyError::Decode(e) => !e.newer,
            ApplyError::Invalid(_) => true,
            ApplyError::Unavailable(_) => false,
            ApplyError::Db(e) => is_poison_db_error(e),
        }
    }
}

impl ApplyError {
    /// Written by a newer build: this replica cannot apply it, nor may it skip it.
    pub fn is_newer_data(&self) -> bool {
        matches!(self, ApplyError::Decode(e) if e.newer)
    }
}

/// See [`ApplyError::is_poison`]; also used for a failed `COMMIT` (a deferred
/// constraint).
pub(crate) fn is_poison_db_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            if !matches!(db.kind(), sqlx::error::ErrorKind::Other) {
                // Unique, foreign-key, not-null or check constraint.
                return true;
            }
            let Some(code) = db.code() else { return false };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // SQLite extended result codes: the primary code is the low byte.
                // 18 TOOBIG, 19 CONSTRAINT (any kind), 20 MISMATCH: about the data.
                return code.parse::<i64>().is_ok_and(|c| matches!(c & 0xff, 18..=20));
            }
            // PostgreSQL SQLSTATE: class 22 "data exception" (a value out of range,
            // invalid text for a type), class 23 integrity constraint violations.
            // Everything else (25006 read-only, 57014 statement timeout, 55P03
            // lock timeout, 53100 disk full, 42P01 undefined table, 08xxx
            // connection) is the environment.
            code.starts_with("22") || code.starts_with("23")
        }
        // A statement found no row it needed: the commit refers to something the
        // read model never saw. A value that cannot be encoded for binding.
        sqlx::Error::RowNotFound | sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// A read model built from one stream.
pub trait Projection: Send + Sync + 'static {
    /// Unique name; keys its stored position and its dead-letter subject.
    fn name(&self) -> &str;

    /// The tables it owns.
    fn tables(&self) -> &'static [TableDef];

    /// The version of what `apply` writes. Raise it whenever the tables or
    /// the meaning of their rows change: on start, a runner whose version is
    /// higher than the database's rebuilds into shadow tables and swaps them in
    /// before applying anything live; one whose version is lower (an old
    /// replica during a rolling deploy) stalls instead of writing old rows into
    /// new tables. The table definitions are hashed too: changing them without
    /// raising the version stalls with a message saying so.
    fn version(&self) -> u32 {
        1
    }

    /// What to do with events this build does not know (a newer replica wrote
    /// them during a rolling deploy, or another context added a type). Never
    /// parked either way. Projections of their own service's stream stall (the
    /// default); readers of another context's stream usually skip.
    fn unknown_events(&self) -> UnknownEvents {
        UnknownEvents::Stall
    }

    /// Whether the runner may rebuild it from zero. Only a
    /// [`crate::reactor::Reactor`] says no: replaying history would send its
    /// commands again.
    fn rebuildable(&self) -> bool {
        true
    }

    /// Whether each commit's rows stand alone, built on no earlier commit of
    /// its subject. Normally not: once a commit of a subject is parked, its
    /// later commits are parked behind it, as applying them would build on a
    /// state the read model never reached. A projection whose rows do not
    /// depend on each other (the command index: one row per commit) says yes,
    /// and keeps applying a subject's later commits — for the command index,
    /// parking them would hide every later command id of the aggregate.
    fn commits_independent(&self) -> bool {
        false
    }

    /// Apply one commit inside `tx`, writing to `tables`. Must be deterministic:
    /// a rebuild replays the same commits and must reach the same rows.
    fn apply<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        tables: Tables,
        commit: &'a RecordedCommit,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a;

    /// Apply a run of commits, in stream order, inside `tx` — what the runner
    /// calls for each batch. The default applies them one by one with
    /// [`Projection::apply`], each under its own span parented on the commit's
    /// trace. A projection that writes many rows overrides it to fold the batch
    /// in memory and write once per table (one `UNNEST` upsert of array
    /// parameters, see [`pg_array`], instead of a round trip per row; see the
    /// sample ledger's `Accounts`), with the same
    /// rows as a commit-by-commit apply would leave. On a poison error the
    /// runner rolls the batch back and applies its commits one at a time with
    /// [`Projection::apply`], so a batch may be refused whole for one bad commit.
    fn apply_batch<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        tables: Tables,
        commits: &'a [&'a RecordedCommit],
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a {
        async move {
            for commit in commits {
                let span = tracing::info_span!("projection.apply", projection = %self.name(),
                    sequence = commit.sequence, subject = %commit.subject);
                crate::trace::set_parent_from(&span, &commit.headers);
                tracing::Instrument::instrument(self.apply(&mut *tx, tables, commit), span).await?;
            }
            Ok(())
        }
    }
}

/// A projection's policy for events this build does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownEvents {
    /// Wait (stalled, NOT_SERVING, retried without limit) until this replica is
    /// upgraded or an upgraded replica applies the commit.
    Stall,
    /// Leave the unknown events out of the commit, count them
    /// (`eventstore_unknown_events_skipped_total`) and apply the rest. A commit
    /// in a newer envelope still stalls: nothing of it can be read.
    Skip,
}

/// What a projection's tables look like to this build: its
/// [`Projection::version`] and a hash of its table definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    /// [`Projection::version`].
    pub version: u32,
    /// FNV-1a 64 of the table names, column lists and indexes, in hex.
    pub hash: String,
}

impl Schema {
    /// The schema of `projection` as built.
    pub fn of<P: Projection>(projection: &P) -> Self {
        let mut text = String::new();
        for def in projection.tables() {
            text.push_str(def.name);
            text.push('\n');
            text.push_str(def.columns);
            text.push('\n');
            for index in def.indexes {
                text.push_str(index);
                text.push('\n');
            }
        }
        Self {
            version: projection.version(),
            hash: format!("{:016x}", crate::envelope::request_digest(text.as_bytes())),
        }
    }
}
