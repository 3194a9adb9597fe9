//! The idempotency horizon: every command id of a stream, remembered for days.
//!
//! Three layers answer "has this command id been seen on this aggregate?":
//!
//! 1. the aggregate's last 64 command ids (in its state and snapshots) — free;
//! 2. the server's `Nats-Msg-Id` dedupe, for the stream's duplicate window (2 min);
//! 3. this index: a projection of the stream into `gridwork_commands_<stream>`
//!    (subject, command id → sequence), kept for the **horizon** (7 days by
//!    default, `RepositoryOptions::idempotency_horizon`), durable in the read
//!    store, built and rebuilt like any projection, independent of how busy the
//!    aggregate is.
//!
//! The index is asked only what the other two layers cannot answer: for an
//! aggregate that has forgotten command ids (more commits than it remembers),
//! and, for a client's UUIDv7 id, only once the id is older than half the
//! duplicate window (a younger retry is the server's to catch). A process
//! manager's derived id has no time, so it is asked whenever the aggregate has
//! forgotten ids. The aggregate remembers every commit from its oldest
//! remembered one on; the index need only have applied the commits before that
//! one for "not found" to mean "never landed" — not the stream's head, which a
//! reactor holding SQLite's write lock would keep it from reaching. A command
//! id older than the horizon is
//! refused (`StoreError::CommandTooOld`): after the horizon nothing can tell a retry
//! from a new command, and applying it twice is the one answer that is never right.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use sqlx::{AnyConnection, AssertSqlSafe};

use crate::envelope::RecordedCommit;
use crate::error::StoreError;
use crate::projection::{ApplyError, Projection, ReadStore, RunnerHandle, TableDef, Tables};

/// Rows older than the horizon are pruned every this many commits.
const PRUNE_EVERY: u64 = 1024;

/// Rows are kept this much longer than the horizon (more than the largest
/// clock skew a command id's time may have, `RepositoryOptions::max_clock_skew`).
const PRUNE_MARGIN: Duration = Duration::from_secs(3600);

/// Longest a command waits for the index to reach the commits it must vouch
/// for. It lags the stream by a batch; one this far behind is stalled or
/// rebuilding from zero, or blocked by the caller's own write lock.
pub const INDEX_WAIT: Duration = Duration::from_secs(2);

/// The projection that fills a stream's command index.
#[derive(Debug, Clone)]
pub struct CommandIndexProjection {
    name: &'static str,
    tables: &'static [TableDef],
    keep_ms: i64,
}

impl CommandIndexProjection {
    /// The index of `stream`, keeping ids for `horizon`. Made once per process
    /// and stream (its names are leaked to be `'static`, as table definitions are).
    pub fn new(stream: &str, horizon: Duration) -> Self {
        let table: &'static str =
            Box::leak(format!("gridwork_commands_{}", stream.to_ascii_lowercase()).into_boxed_str());
        let name: &'static str = Box::leak(format!("command_index_{}", stream.to_ascii_lowercase()).into_boxed_str());
        let tables: &'static [TableDef] = Box::leak(Box::new([TableDef {
            name: table,
            columns: "(subject TEXT NOT NULL, command_id TEXT NOT NULL, sequence BIGINT NOT NULL, \
                      stored_at_ms BIGINT NOT NULL, PRIMARY KEY (subject, command_id))",
            indexes: &["stored_at_ms"],
        }]));
        // Kept for the horizon and a margin: a client's clock may run ahead of
        // the server's by up to `max_clock_skew`, so an id is accepted until a
        // little after its commit is `horizon` old by the server's clock.
        let keep = horizon + PRUNE_MARGIN;
        Self { name, tables, keep_ms: keep.as_millis() as i64 }
    }
}

impl Projection for CommandIndexProjection {
    fn name(&self) -> &str {
        self.name
    }

    fn tables(&self) -> &'static [TableDef] {
        self.tables
    }

    /// 2: rows keep the server's storage time, not the command's decision
    /// time (which a process manager copies from an older commit).
    fn version(&self) -> u32 {
        2
    }

    /// One row per commit, built on nothing before it: a parked commit must
    /// not hide the aggregate's later command ids.
    fn commits_independent(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        let table = tables.name(self.tables[0].name);
        // The server's clock where the reader gave it (always, from the stream
        // and from a replay of a parked commit).
        let stored_at =
            if commit.stored_at_unix_ms > 0 { commit.stored_at_unix_ms } else { commit.body.decided_at_unix_ms };
        // The first commit of a command id wins; a later one with the same id on
        // the same subject cannot exist (the server dedupes within its window,
        // the repository beyond it).
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {table} (subject, command_id, sequence, stored_at_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (subject, command_id) DO NOTHING"
        )))
        .bind(commit.subject.as_str())
        .bind(commit.command_id())
        .bind(commit.sequence as i64)
        .bind(stored_at)
        .execute(&mut *tx)
        .await?;
        if commit.sequence.is_multiple_of(PRUNE_EVERY) {
            // By the commit's own storage time, so that a rebuild prunes the
            // same rows — not the decision time, which a process manager
            // working through an old backlog copies from days ago.
            sqlx::query(AssertSqlSafe(format!("DELETE FROM {table} WHERE stored_at_ms < $1")))
                .bind(stored_at - self.keep_ms)
                .execute(&mut *tx)
                .await?;
        }
        Ok(())
    }
}

/// Looks command ids up in a stream's index (see the module docs).
#[derive(Clone)]
pub struct CommandIndex {
    stream: String,
    store: ReadStore,
    table: &'static str,
    runner: Arc<RunnerHandle>,
}

impl std::fmt::Debug for CommandIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandIndex").field("stream", &self.stream).field("table", &self.table).finish()
    }
}

impl CommandIndex {
    /// Start indexing `stream` into `store`, keeping ids for `horizon`.
    pub async fn start(
        js: jetstream::Context,
        stream: &str,
        store: ReadStore,
        horizon: Duration,
    ) -> Result<Self, crate::projection::runner::RunnerError> {
        let projection = CommandIndexProjection::new(stream, horizon);
        let table = projection.tables[0].name;
        let runner = crate::projection::ProjectionRunner::start(
            js.clone(),
            store.clone(),
            projection,
            // Its dead letters are its stream's service's.
            crate::projection::RunnerConfig {
                dead_letter_owner: Some(stream.to_ascii_lowercase()),
                ..crate::projection::RunnerConfig::new(stream)
            },
        )
        .await?;
        Ok(Self { stream: stream.to_string(), store, table, runner: Arc::new(runner) })
    }

    /// The index's runner (position, rebuild).
    pub fn runner(&self) -> &RunnerHandle {
        &self.runner
    }

    /// The sequence of the commit `command_id` produced on `subject`, if it
    /// is one of the subject's commits up to `through` (the commits after it
    /// are the aggregate's own memory's to know). A missing entry is an
    /// answer only once the index has applied `through`; an index further
    /// behind is waited for, at most [`INDEX_WAIT`], and then the command is
    /// answered unavailable — never decided without the check. A caller that
    /// holds the read store's write lock (a reactor on SQLite) thereby lets go
    /// of it, rolls back and comes again once the index has moved on.
    pub async fn find_through(&self, subject: &str, command_id: &str, through: u64) -> Result<Option<u64>, StoreError> {
        let unavailable = |why: String| {
            StoreError::Unavailable(format!(
                "the command index of {} cannot vouch for {command_id} yet (it must reach {through}): {why}",
                self.stream
            ))
        };
        let find = async {
            // The position before the lookup: read after it, a batch holding
            // the id could commit in between and "not found" would be a lie.
            let applied = self.runner.position();
            if let Some(found) = self.lookup(subject, command_id).await? {
                return Ok(Some(found));
            }
            if applied >= through {
                return Ok(None);
            }
            metrics::counter!("eventstore_command_index_waits_total", "stream" => self.stream.clone()).increment(1);
            self.runner.wait_for(through, INDEX_WAIT).await.map_err(|e| unavailable(e.to_string()))?;
            self.lookup(subject, command_id).await
        };
        // The whole of it, lookups included: on SQLite a lookup can wait for
        // a connection behind runners waiting for the write lock.
        tokio::time::timeout(INDEX_WAIT * 2, find).await.unwrap_or_else(|_| Err(unavailable("timed out".into())))
    }

    async fn lookup(&self, subject: &str, command_id: &str) -> Result<Option<u64>, StoreError> {
        let table = Tables::Live.name(self.table);
        let row: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT sequence FROM {table} WHERE subject = $1 AND command_id = $2"
        )))
        .bind(subject)
        .bind(command_id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(|e| StoreError::Unavailable(format!("command index: {e}")))?;
        Ok(row.map(|(s,)| s as u64))
    }
}

/// The issue time of a UUIDv7 command id, or of one derived from a client's
/// UUIDv7 by [`derived_in_call`], milliseconds since the Unix epoch.
pub fn issued_at_ms(command_id: &str) -> Option<i64> {
    let uuid = command_id.rsplit_once('~').map_or(command_id, |(_, uuid)| uuid);
    let id = uuid::Uuid::parse_str(uuid).ok()?;
    if id.get_version_num() != 7 {
        return None;
    }
    let (secs, nanos) = id.get_timestamp()?.to_unix();
    Some(secs as i64 * 1000 + i64::from(nanos / 1_000_000))
}

/// The id of a second command that one client request sends in the same call
/// (`<prefix>~<client id>`, e.g. a report's placement beside the report):
/// it is issued when the request is, so it carries the request's age. For a
/// young id the server's dedupe window answers a retry, and the command index
/// is not asked even if the aggregate has forgotten ids — as for the client's
/// own id. Not for a process manager's command: that may be sent again long
/// after its origin (a reactor rebuilt from zero), past any horizon.
pub fn derived_in_call(prefix: &str, client_id: &str) -> String {
    format!("{prefix}~{client_id}")
}

/// A command id as an aggregate remembers it (layer 1): 16 bytes, compared
/// and copied without allocating. A canonical UUID string (lowercase,
/// hyphenated, RFC 4122 variant — what clients send) is its own tag; any other
/// id (a process manager's derived id, an uppercase UUID) is hashed with
/// UUIDv5 and its variant bits set to the reserved `111`, which no RFC 4122
/// UUID has — so a hashed tag never equals a parsed one, and two spellings of
/// one UUID stay two command ids, as they are to the server's dedupe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommandTag(u128);

/// Namespace of hashed command tags (a fixed, random UUID).
const TAG_NAMESPACE: uuid::Uuid = uuid::uuid!("5b0f4a56-1d7e-4c55-9a2e-6f1c0f4e8b21");

impl CommandTag {
    /// The tag of `command_id`.
    pub fn of(command_id: &str) -> Self {
        if command_id.len() == uuid::fmt::Hyphenated::LENGTH
            && let Ok(id) = uuid::Uuid::try_parse(command_id)
            && id.get_variant() == uuid::Variant::RFC4122
            && id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()) == command_id
        {
            return Self(id.as_u128());
        }
        let hashed = uuid::Uuid::new_v5(&TAG_NAMESPACE, command_id.as_bytes()).as_u128();
        Self(hashed | (0b111 << 61))
    }

    /// The command id back, where the tag is a canonical UUID (hashed tags
    /// cannot give theirs back).
    pub fn uuid(self) -> Option<uuid::Uuid> {
        let id = uuid::Uuid::from_u128(self.0);
        (id.get_variant() == uuid::Variant::RFC4122).then_some(id)
    }

    /// The tag as stored in a snapshot.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// A tag read back from a snapshot (`None` unless 16 bytes).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Some(Self(u128::from_be_bytes(bytes.try_into().ok()?)))
    }
}

#[cfg(test)]
mod tests {
    use super::{CommandTag, derived_in_call, issued_at_ms};

    #[test]
    fn an_id_derived_in_the_same_call_carries_the_age_of_its_request_and_a_process_managers_does_not() {
        let id = uuid::Uuid::now_v7().to_string();
        let issued = issued_at_ms(&id).expect("a UUIDv7 has a time");
        assert_eq!(issued_at_ms(&derived_in_call("place", &id)), Some(issued));
        assert_eq!(issued_at_ms(&format!("link-{id}")), None);
        assert_eq!(issued_at_ms("place~not-a-uuid"), None);
        assert_ne!(CommandTag::of(&derived_in_call("place", &id)), CommandTag::of(&id));
    }

    #[test]
    fn a_canonical_uuid_is_its_own_tag_and_other_ids_never_collide_with_one() {
        let id = uuid::Uuid::now_v7();
        let canonical = id.to_string();
        assert_eq!(CommandTag::of(&canonical).to_bytes(), *id.as_bytes());
        assert_eq!(CommandTag::of(&canonical).uuid().map(|u| u.to_string()), Some(canonical.clone()));
        // Another spelling of the same UUID is another command id.
        let upper = canonical.to_uppercase();
        assert_ne!(CommandTag::of(&upper), CommandTag::of(&canonical));
        assert_eq!(CommandTag::of(&upper), CommandTag::of(&upper));
        // A hashed tag carries the reserved variant, which no parsed tag has.
        let hashed = CommandTag::of("escalate:case-17:level-2");
        assert_eq!(hashed.to_bytes()[8] >> 5, 0b111);
        assert_eq!(hashed.uuid(), None);
        assert_ne!(hashed, CommandTag::of("escalate:case-17:level-3"));
        assert_eq!(CommandTag::from_bytes(&hashed.to_bytes()), Some(hashed));
        assert_eq!(CommandTag::from_bytes(&[1, 2, 3]), None);
    }
}
