//! The read store: one sqlx `Any` pool plus the [`Backend`] that knows its dialect.
//!
//! Projections write portable SQL (`$1` placeholders, `ON CONFLICT … DO UPDATE`,
//! `BIGINT`, `TEXT`), which SQLite and PostgreSQL both accept; what differs
//! (connection set-up, pool size, table swap) lives in the backend.
//!
//! Three bookkeeping tables live beside the read models: [`CHECKPOINTS`] (each
//! projection's applied position, locked per batch), [`PARKED`] (commits parked
//! as poison, or waiting behind one) and [`REBUILDS`] (who is rebuilding which
//! projection, so that only one rebuild runs at a time).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyConnection, AnyPool, AssertSqlSafe, Connection as _, Executor as _};

use super::{ShadowTag, TableDef, Tables};

/// The dialect-specific parts of a read store.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// `"sqlite"` or `"postgres"`.
    fn name(&self) -> &'static str;
    /// Pool size.
    fn max_connections(&self) -> u32;
    /// Statements run on every new connection.
    fn connection_setup(&self) -> &'static [&'static str];
    /// Statements that replace `live` with `shadow`, run inside one transaction.
    fn swap_statements(&self, live: &str, shadow: &str) -> Vec<String> {
        vec![format!("DROP TABLE IF EXISTS {live}"), format!("ALTER TABLE {shadow} RENAME TO {live}")]
    }
}

/// SQLite: the embedded default, a file under `var/`, WAL journal.
#[derive(Debug)]
pub struct Sqlite;

impl Backend for Sqlite {
    fn name(&self) -> &'static str {
        "sqlite"
    }
    fn max_connections(&self) -> u32 {
        // One writer at a time in SQLite anyway, but every projection runner
        // of a service may be waiting for the write lock at once, each on a
        // connection (intake runs six): readers — a report placing itself,
        // a query — must still find one free rather than time out behind
        // them while another writer holds the lock.
        16
    }
    fn connection_setup(&self) -> &'static [&'static str] {
        &["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", "PRAGMA busy_timeout = 10000"]
    }
}

/// PostgreSQL: the production read store.
#[derive(Debug)]
pub struct Postgres;

impl Backend for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn max_connections(&self) -> u32 {
        10
    }
    fn connection_setup(&self) -> &'static [&'static str] {
        &[]
    }
}

/// Errors opening a read store.
#[derive(Debug, thiserror::Error)]
pub enum ReadStoreError {
    /// The URL names no supported database.
    #[error("unsupported read-store URL {0:?}: use sqlite://… or postgres://…")]
    UnsupportedUrl(String),
    /// The database refused or is unreachable.
    #[error("read store: {0}")]
    Db(#[from] sqlx::Error),
}

/// A read-model database.
#[derive(Debug, Clone)]
pub struct ReadStore {
    pool: AnyPool,
    backend: Arc<dyn Backend>,
    stalls: Arc<Mutex<BTreeMap<String, String>>>,
}

/// The table holding every projection's applied position.
pub const CHECKPOINTS: &str = "gridwork_projection_checkpoints";

/// Commits parked per checkpoint: poison ones (`blocked_by` 0) and later commits
/// of the same subject waiting behind them (`blocked_by` = the poison one's sequence).
pub const PARKED: &str = "gridwork_projection_parked";

/// The one rebuild allowed per projection: its owner, shadow tag and heartbeat.
pub const REBUILDS: &str = "gridwork_projection_rebuilds";

/// Bookkeeping: the [`super::Schema`] each projection's live tables were built with.
pub const SCHEMAS: &str = "gridwork_projection_schemas";

/// A pooled connection idle at least this long is pinged before it is handed
/// out (see [`ReadStore::connect`]).
const PING_AFTER_IDLE: Duration = Duration::from_secs(1);

const BOOKKEEPING: [&str; 4] = [
    "CREATE TABLE IF NOT EXISTS gridwork_projection_checkpoints (projection TEXT PRIMARY KEY, stream TEXT NOT NULL, \
     position BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS gridwork_projection_parked (checkpoint TEXT NOT NULL, sequence BIGINT NOT NULL, \
     subject TEXT NOT NULL, error TEXT NOT NULL, attempts BIGINT NOT NULL, blocked_by BIGINT NOT NULL, \
     parked_at_ms BIGINT NOT NULL, PRIMARY KEY (checkpoint, sequence))",
    "CREATE TABLE IF NOT EXISTS gridwork_projection_rebuilds (projection TEXT PRIMARY KEY, owner TEXT NOT NULL, \
     tag TEXT NOT NULL, heartbeat_ms BIGINT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS gridwork_projection_schemas (projection TEXT PRIMARY KEY, version BIGINT NOT NULL, \
     hash TEXT NOT NULL)",
];

impl ReadStore {
    /// Open `url` (`sqlite://path?mode=rwc` or `postgres://…`).
    pub async fn connect(url: &str) -> Result<Self, ReadStoreError> {
        sqlx::any::install_default_drivers();
        let backend: Arc<dyn Backend> = if let Some(rest) = url.strip_prefix("sqlite://") {
            // The embedded default lives under var/: make its directory.
            let path = rest.split('?').next().unwrap_or(rest);
            if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| ReadStoreError::Db(sqlx::Error::Io(e)))?;
            }
            Arc::new(Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Arc::new(Postgres)
        } else {
            return Err(ReadStoreError::UnsupportedUrl(url.to_string()));
        };
        let setup = backend.connection_setup();
        let pool = AnyPoolOptions::new()
            .max_connections(backend.max_connections())
            .acquire_timeout(Duration::from_secs(10))
            // No ping before each use (a round trip per transaction, while
            // catch-up reuses connections every few milliseconds): a connection
            // is pinged when it goes back to the pool and closed if broken,
            // and only one idle for a while (which a database restart or
            // failover may have ended meanwhile) is pinged before it is handed
            // out, so that the first batch after a quiet spell does not fail
            // and report an outage that is already over.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_AFTER_IDLE {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    for statement in setup {
                        conn.execute(*statement).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        let store = Self { pool, backend, stalls: Arc::default() };
        for statement in BOOKKEEPING {
            store.pool.execute(statement).await?;
        }
        Ok(store)
    }

    /// Projections on this store that cannot make progress for a reason that is
    /// not about any one commit (the database down, read-only, full; a table
    /// missing; a burst of poison), with the last error. Readiness reports the
    /// service NOT_SERVING while this is not empty.
    pub fn stalled(&self) -> Vec<(String, String)> {
        self.stalls.lock().map(|s| s.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()
    }

    pub(crate) fn set_stalled(&self, projection: &str, reason: Option<String>) {
        if let Ok(mut stalls) = self.stalls.lock() {
            match reason {
                Some(reason) => stalls.insert(projection.to_string(), reason),
                None => stalls.remove(projection),
            };
        }
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// The backend.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Begin a transaction that takes the write lock before it reads anything.
    /// SQLite (WAL) refuses to upgrade a read transaction whose snapshot another
    /// writer has moved past (`SQLITE_BUSY_SNAPSHOT`, without waiting), so every
    /// transaction that reads and then writes starts with a write; on PostgreSQL
    /// the statement touches no row.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(AssertSqlSafe(format!("UPDATE {CHECKPOINTS} SET position = position WHERE projection = ''")))
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// Cheap liveness probe for health checks.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }

    /// Create `tables` if absent (live set) or afresh (a shadow set).
    pub async fn create_tables(&self, defs: &[TableDef], which: Tables) -> Result<(), sqlx::Error> {
        let mut existing = Vec::new();
        for def in defs {
            let probe = format!("SELECT 1 FROM {} WHERE 1 = 0", which.name(def.name));
            existing.push(sqlx::query(AssertSqlSafe(probe)).execute(&self.pool).await.is_ok());
        }
        let mut tx = self.begin_write().await?;
        for (def, exists) in defs.iter().zip(existing) {
            let name = which.name(def.name);
            // Index names outlive a rename, so each shadow generation has its own.
            let tag = match which {
                Tables::Live if exists => continue, // its indexes exist too, maybe under a rebuild's names
                Tables::Live => "0".to_string(),
                Tables::Shadow(tag) => {
                    tx.execute(AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}"))).await?;
                    tag.as_str().to_string()
                }
            };
            tx.execute(AssertSqlSafe(format!("CREATE TABLE IF NOT EXISTS {name} {}", def.columns))).await?;
            for (i, columns) in def.indexes.iter().enumerate() {
                tx.execute(AssertSqlSafe(format!(
                    "CREATE INDEX IF NOT EXISTS ix_{}_{i}_{tag} ON {name} ({columns})",
                    def.name
                )))
                .await?;
            }
        }
        tx.commit().await
    }

    /// Drop a shadow set (a failed or abandoned rebuild's tables).
    pub async fn drop_tables(&self, defs: &[TableDef], tag: ShadowTag) -> Result<(), sqlx::Error> {
        let mut tx = self.begin_write().await?;
        for def in defs {
            tx.execute(AssertSqlSafe(format!("DROP TABLE IF EXISTS {}", Tables::Shadow(tag).name(def.name)))).await?;
        }
        tx.commit().await
    }

    /// The stored position of `projection` (0 if none).
    pub async fn position(&self, projection: &str) -> Result<u64, sqlx::Error> {
        let row: Option<(i64,)> =
            sqlx::query_as(AssertSqlSafe(format!("SELECT position FROM {CHECKPOINTS} WHERE projection = $1")))
                .bind(projection)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map_or(0, |(p,)| p as u64))
    }
}

/// Lock `projection`'s checkpoint row for the rest of the caller's transaction
/// and read it. Several runners of one projection on one database (replicas of a
/// service on a shared PostgreSQL) then take turns: each applies only commits
/// after the position it finds, so no commit is applied twice and the position
/// never moves back. The touching `UPDATE` takes the row lock on PostgreSQL and
/// the write lock on SQLite, before anything is read.
///
/// A missing row is an error (it would lock nothing): every checkpoint is made
/// by [`ensure_checkpoint`] before it is used.
pub async fn lock_position(conn: &mut AnyConnection, projection: &str) -> Result<u64, sqlx::Error> {
    // One statement both takes the row's lock (a write, so SQLite takes its
    // write lock too) and reads the position under it.
    let row: Option<(i64,)> = sqlx::query_as(AssertSqlSafe(format!(
        "UPDATE {CHECKPOINTS} SET position = position WHERE projection = $1 RETURNING position"
    )))
    .bind(projection)
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some((position,)) => Ok(position as u64),
        None => Err(sqlx::Error::Configuration(format!("no checkpoint row for projection {projection:?}").into())),
    }
}

/// Make sure `projection` has a checkpoint row (position 0 if new), so that
/// [`lock_position`] always has a row to lock.
pub async fn ensure_checkpoint(pool: &sqlx::AnyPool, projection: &str, stream: &str) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {CHECKPOINTS} (projection, stream, position, updated_at_ms) VALUES ($1, $2, 0, 0) \
         ON CONFLICT (projection) DO NOTHING"
    )))
    .bind(projection)
    .bind(stream)
    .execute(pool)
    .await?;
    Ok(())
}

/// Record `projection`'s position inside the caller's transaction.
pub async fn set_position(
    conn: &mut AnyConnection,
    projection: &str,
    stream: &str,
    position: u64,
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {CHECKPOINTS} (projection, stream, position, updated_at_ms) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (projection) DO UPDATE SET position = excluded.position, updated_at_ms = excluded.updated_at_ms"
    )))
    .bind(projection)
    .bind(stream)
    .bind(position as i64)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Wall-clock milliseconds, for bookkeeping timestamps only (never for ordering).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The schema `projection`'s live tables were built with, if recorded.
pub async fn stored_schema(conn: &mut AnyConnection, projection: &str) -> Result<Option<super::Schema>, sqlx::Error> {
    let row: Option<(i64, String)> =
        sqlx::query_as(AssertSqlSafe(format!("SELECT version, hash FROM {SCHEMAS} WHERE projection = $1")))
            .bind(projection)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(version, hash)| super::Schema { version: version as u32, hash }))
}

/// What a batch needs to know under the checkpoint's lock, in one round trip:
/// the schema the live tables were built with (when `schema_of` names a
/// projection; `None` if unrecorded) and the subjects with a parked commit
/// under `checkpoint`, with their earliest one.
pub(super) async fn batch_context(
    conn: &mut AnyConnection,
    schema_of: Option<&str>,
    checkpoint: &str,
) -> Result<(Option<super::Schema>, std::collections::HashMap<String, u64>), sqlx::Error> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
        "SELECT 's', hash, version FROM {SCHEMAS} WHERE projection = $1 \
         UNION ALL SELECT 'b', subject, MIN(sequence) FROM {PARKED} WHERE checkpoint = $2 GROUP BY subject"
    )))
    .bind(schema_of.unwrap_or_default())
    .bind(checkpoint)
    .fetch_all(&mut *conn)
    .await?;
    let mut schema = None;
    let mut blocked = std::collections::HashMap::new();
    for (kind, name, n) in rows {
        if kind == "s" {
            schema = Some(super::Schema { version: n as u32, hash: name });
        } else {
            blocked.insert(name, n as u64);
        }
    }
    Ok((schema, blocked))
}

/// Record the schema of `projection`'s live tables: `only_if_absent` on first
/// start, unconditionally when a rebuild swaps its tables in.
pub async fn record_schema(
    conn: &mut AnyConnection,
    projection: &str,
    schema: &super::Schema,
    only_if_absent: bool,
) -> Result<(), sqlx::Error> {
    let on_conflict =
        if only_if_absent { "DO NOTHING" } else { "DO UPDATE SET version = excluded.version, hash = excluded.hash" };
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {SCHEMAS} (projection, version, hash) VALUES ($1, $2, $3) ON CONFLICT (projection) {on_conflict}"
    )))
    .bind(projection)
    .bind(i64::from(schema.version))
    .bind(schema.hash.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// PostgreSQL array literals, for projections that write a batch with one
/// `UNNEST($1::text[], $2::bigint[], …)` statement through the `Any` driver
/// (which cannot bind arrays): each column goes as one text parameter, cast
/// by the server. The statement's text is the same whatever the batch's size,
/// so it is prepared once; a multi-row `VALUES` list with a parameter per cell
/// was parsed afresh for every batch.
pub mod pg_array {
    use std::fmt::Write as _;

    /// `{"a","b",NULL}`: every element quoted, `"` and `\` escaped; `None` is NULL.
    pub fn text<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> String {
        let mut out = String::from("{");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match value {
                None => out.push_str("NULL"),
                Some(v) => {
                    out.push('"');
                    for c in v.chars() {
                        if c == '"' || c == '\\' {
                            out.push('\\');
                        }
                        out.push(c);
                    }
                    out.push('"');
                }
            }
        }
        out.push('}');
        out
    }

    /// `{1,-2,3}`.
    pub fn bigint(values: impl IntoIterator<Item = i64>) -> String {
        let mut out = String::from("{");
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{value}");
        }
        out.push('}');
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn elements_are_quoted_and_escaped() {
            assert_eq!(
                super::text([Some("a"), None, Some(r#"Lü "Big" \ {Wang}, NULL"#)]),
                r#"{"a",NULL,"Lü \"Big\" \\ {Wang}, NULL"}"#
            );
            assert_eq!(super::text([]), "{}");
            assert_eq!(super::bigint([1, -2, i64::MAX]), "{1,-2,9223372036854775807}");
        }
    }
}
