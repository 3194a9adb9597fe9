//! Reactors: process managers that turn commits into commands.
//!
//! A [`Reactor`] reads a stream in order, like a projection, and answers
//! commits by sending commands (intake's linker records a "me too" on the
//! original; dispatch opens a case for an accepted incident). What it shares
//! with a projection is run by the same runner ([`ProjectionRunner::start_reactor`]):
//! its own durable position in the read store, committed in one transaction
//! with whatever state it keeps in its own tables; commits in stream order;
//! poison parked with the commits behind it; stalls on the environment.
//!
//! What differs:
//! - **Never rebuilt.** A rebuild replays history; for a reactor that would send
//!   every command again. `rebuild` is refused, and a reactor never runs against
//!   shadow tables. Its tables are its memory, not a read model: changing their
//!   definition stalls it with a message until they are migrated by hand and
//!   its row in `gridwork_projection_schemas` is deleted (the next start
//!   records the new definition).
//! - **Failures say what they are.** A command the store could not take now
//!   (NATS unavailable, an election, a conflict that kept losing) is
//!   [`ApplyError::Unavailable`]: retried without limit, the reactor stalled.
//!   A command that can never be taken (an invalid id, too large) is poison.
//!   A domain refusal is the reactor's to judge: usually "nothing to do".
//! - **Effects are idempotent by construction.** A crash between a command and
//!   the position's commit replays the commit: every command a reactor sends
//!   has an id derived from the commit it reacts to, so the second send is
//!   answered by the first's commit — for the repository's idempotency
//!   horizon (7 days after the first was stored), however long the reactor
//!   was down and however busy the aggregate (the stream's command index is asked for derived ids; on
//!   SQLite, where the reactor's transaction keeps the index from writing, a
//!   send the index cannot vouch for yet is unavailable, and the batch is
//!   rolled back and tried again).
//! - **Unknown event types stall it** by default, as what a reactor skips it
//!   never reacts to (it is never rebuilt); a reactor opts into skipping.

use std::future::Future;

use sqlx::AnyConnection;

use crate::envelope::RecordedCommit;
use crate::error::StoreError;
use crate::projection::runner::{ProjectionRunner, RunnerConfig, RunnerError, RunnerHandle};
use crate::projection::{ApplyError, Projection, ReadStore, TableDef, Tables, UnknownEvents};

/// A process manager over one stream. See the module documentation.
pub trait Reactor: Send + Sync + 'static {
    /// Unique name; keys its stored position and its dead-letter subject.
    fn name(&self) -> &str;

    /// Tables holding what it must remember between commits (written in the
    /// transaction that stores its position). Never rebuilt.
    fn tables(&self) -> &'static [TableDef] {
        &[]
    }

    /// What to do with event types this build does not know. Stall by
    /// default: a reactor is never rebuilt, so what it skips it never reacts
    /// to. Skip only where an unknown type cannot call for a command.
    fn unknown_events(&self) -> UnknownEvents {
        UnknownEvents::Stall
    }

    /// React to one commit: update its own tables inside `tx` and send the
    /// commands the commit calls for, each under an id derived from the commit.
    fn react<'a>(
        &'a self,
        tx: &'a mut AnyConnection,
        commit: &'a RecordedCommit,
    ) -> impl Future<Output = Result<(), ApplyError>> + Send + 'a;
}

impl ApplyError {
    /// A command a reactor sent failed in the store: whether it can ever
    /// succeed decides between poison and a stall.
    pub fn from_store(e: StoreError) -> Self {
        match e {
            StoreError::InvalidId { .. }
            | StoreError::InvalidCommandId(_)
            | StoreError::TooLarge(_)
            | StoreError::CommandTooOld { .. }
            | StoreError::CommandIdReused { .. } => ApplyError::Invalid(e.to_string()),
            // Unavailable, a conflict that kept losing, an election, data from a
            // newer build, a misconfigured or unreadable stream: the environment.
            _ => ApplyError::Unavailable(e.to_string()),
        }
    }
}

/// A [`Reactor`] as the runner sees it. Not rebuildable.
#[doc(hidden)]
pub struct Reacting<R>(pub R);

impl<R: Reactor> Projection for Reacting<R> {
    fn name(&self) -> &str {
        self.0.name()
    }

    fn tables(&self) -> &'static [TableDef] {
        self.0.tables()
    }

    fn unknown_events(&self) -> UnknownEvents {
        self.0.unknown_events()
    }

    fn rebuildable(&self) -> bool {
        false
    }

    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        if !tables.is_live() {
            // The runner never rebuilds a reactor; should it ever try, nothing
            // may be sent twice.
            return Err(ApplyError::Unavailable(format!("reactor {} asked to run against shadow tables", self.name())));
        }
        self.0.react(tx, commit).await
    }
}

/// Most commits in one reactor batch. A batch runs in one transaction that
/// holds the reactor's checkpoint lock (on SQLite, the database's write lock)
/// across one command — a NATS round trip or a cold load — per commit, and a
/// failure late in the batch sends its commands again (answered by replays):
/// a projection's 2,000 would hold the lock for seconds.
pub const REACTOR_BATCH_SIZE: usize = 64;

impl ProjectionRunner {
    /// Start `reactor` on `config.stream`, after its stored position, in
    /// batches of at most [`REACTOR_BATCH_SIZE`] commits.
    pub async fn start_reactor<R: Reactor>(
        js: async_nats::jetstream::Context,
        store: ReadStore,
        reactor: R,
        mut config: RunnerConfig,
    ) -> Result<RunnerHandle, RunnerError> {
        config.batch_size = config.batch_size.min(REACTOR_BATCH_SIZE);
        Self::start(js, store, Reacting(reactor), config).await
    }
}
