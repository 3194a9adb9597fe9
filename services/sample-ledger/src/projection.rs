//! The `accounts` read model.

use gridwork_eventstore::RecordedCommit;
use gridwork_eventstore::projection::{ApplyError, Projection, TableDef, Tables, pg_array};
use std::collections::HashMap;

use sqlx::{AnyConnection, AssertSqlSafe};

use crate::events::LedgerEvent;

/// Projects accounts and their balances.
#[derive(Debug, Clone, Copy, Default)]
pub struct Accounts;

/// The table.
pub const ACCOUNTS: TableDef = TableDef {
    name: "sample_accounts",
    columns: "(account_id TEXT PRIMARY KEY, owner TEXT NOT NULL, balance BIGINT NOT NULL, \
              movements BIGINT NOT NULL, position BIGINT NOT NULL, last_trace_id TEXT NOT NULL)",
    indexes: &["owner"],
};

impl Projection for Accounts {
    fn name(&self) -> &str {
        "sample_accounts"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[ACCOUNTS]
    }

    /// On PostgreSQL, a batch folded in memory, one row per account, written with one
    /// `UNNEST` insert of the accounts it opened and one `UPDATE … FROM UNNEST` of
    /// the rest (chunks of [`ROWS_PER_STATEMENT`]): the rows a commit-by-commit
    /// apply would leave, in a round trip or two per batch instead of one per commit. An account opened twice, or moved
    /// before it was opened, refuses the batch (the runner then finds the
    /// commit one at a time).
    async fn apply_batch(
        &self,
        tx: &mut AnyConnection,
        tables: Tables,
        commits: &[&RecordedCommit],
    ) -> Result<(), ApplyError> {
        if tx.backend_name().eq_ignore_ascii_case("sqlite") {
            // An embedded database has no round trips to save; its prepared
            // single-row statements beat one large statement per batch.
            for commit in commits {
                self.apply(&mut *tx, tables, commit).await?;
            }
            return Ok(());
        }
        let table = tables.name(ACCOUNTS.name);
        let mut rows: Vec<Row> = Vec::new();
        let mut index: HashMap<&str, usize> = HashMap::new();
        for commit in commits {
            let events = commit.decode_events::<LedgerEvent>()?;
            if events.is_empty() {
                continue; // a no-op or a refusal: nothing to show
            }
            let id = commit.aggregate_id();
            let row = match index.get(id) {
                Some(&i) => &mut rows[i],
                None => {
                    index.insert(id, rows.len());
                    rows.push(Row { account_id: id.to_string(), ..Row::default() });
                    rows.last_mut().ok_or_else(|| ApplyError::Invalid("unreachable".into()))?
                }
            };
            for event in events {
                match event {
                    LedgerEvent::Opened { owner } => {
                        if row.opened.is_some() || row.movements > 0 {
                            return Err(ApplyError::Invalid(format!("account {id} opened after it was used")));
                        }
                        row.opened = Some(owner);
                    }
                    LedgerEvent::Deposited { balance_after, .. } | LedgerEvent::Withdrawn { balance_after, .. } => {
                        row.balance = balance_after;
                        row.movements += 1;
                    }
                }
            }
            row.position = commit.sequence as i64;
            row.trace_id = trace_id_of(commit);
        }
        // Accounts opened in this batch are inserted (one opened twice breaks
        // the primary key: poison, as a commit-by-commit apply finds it); the
        // others are updated in place, which costs the server less than an
        // upsert's attempted insert per row.
        let (opened, moved): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.opened.is_some());
        for chunk in opened.chunks(ROWS_PER_STATEMENT) {
            insert(tx, &table, chunk).await?;
        }
        for chunk in moved.chunks(ROWS_PER_STATEMENT) {
            if update(tx, &table, chunk).await? != chunk.len() as u64 {
                return Err(ApplyError::Invalid("a movement on an unknown account in this batch".into()));
            }
        }
        Ok(())
    }

    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        let table = tables.name(ACCOUNTS.name);
        let id = commit.aggregate_id();
        let position = commit.sequence as i64;
        let trace_id = trace_id_of(commit);
        for event in commit.decode_events::<LedgerEvent>()? {
            match event {
                LedgerEvent::Opened { owner } => {
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {table} (account_id, owner, balance, movements, position, last_trace_id) \
                         VALUES ($1, $2, 0, 0, $3, $4)"
                    )))
                    .bind(id)
                    .bind(owner)
                    .bind(position)
                    .bind(&trace_id)
                    .execute(&mut *tx)
                    .await?;
                }
                LedgerEvent::Deposited { balance_after, .. } | LedgerEvent::Withdrawn { balance_after, .. } => {
                    let updated = sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {table} SET balance = $1, movements = movements + 1, position = $2, \
                         last_trace_id = $3 WHERE account_id = $4"
                    )))
                    .bind(balance_after)
                    .bind(position)
                    .bind(&trace_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    if updated.rows_affected() != 1 {
                        return Err(ApplyError::Invalid(format!("movement on unknown account {id}")));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Rows per statement (each column one array parameter).
const ROWS_PER_STATEMENT: usize = 1000;

/// One account's change over a batch.
#[derive(Debug, Default)]
struct Row {
    account_id: String,
    /// Opened in this batch, by this owner.
    opened: Option<String>,
    balance: i64,
    /// Movements in this batch.
    movements: i64,
    position: i64,
    trace_id: String,
}

/// The trace the commit was made under (its `traceparent`), recorded so tests
/// can prove the trace started at the RPC reached the projection. Empty for
/// commits made outside any trace, so a rebuild reproduces the rows exactly.
fn trace_id_of(commit: &RecordedCommit) -> String {
    commit
        .header(gridwork_eventstore::envelope::headers::TRACEPARENT)
        .and_then(|t| t.split('-').nth(1))
        .filter(|id| id.len() == 32 && *id != "00000000000000000000000000000000")
        .map(str::to_string)
        .unwrap_or_default()
}

/// Accounts opened in the batch, with what else the batch did to them. One
/// statement, one parameter per column (PostgreSQL arrays, unnested by the
/// server).
async fn insert(tx: &mut AnyConnection, table: &str, rows: &[&Row]) -> Result<(), ApplyError> {
    let sql = format!(
        "INSERT INTO {table} (account_id, owner, balance, movements, position, last_trace_id) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::text[])"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(pg_array::text(rows.iter().map(|r| Some(r.account_id.as_str()))))
        .bind(pg_array::text(rows.iter().map(|r| r.opened.as_deref())))
        .bind(pg_array::bigint(rows.iter().map(|r| r.balance)))
        .bind(pg_array::bigint(rows.iter().map(|r| r.movements)))
        .bind(pg_array::bigint(rows.iter().map(|r| r.position)))
        .bind(pg_array::text(rows.iter().map(|r| Some(r.trace_id.as_str()))))
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// Known accounts take the batch's last balance, position and trace, and add
/// its movements; returns how many rows were updated (fewer than `rows` when
/// one of them is not there).
async fn update(tx: &mut AnyConnection, table: &str, rows: &[&Row]) -> Result<u64, ApplyError> {
    let sql = format!(
        "UPDATE {table} AS t SET balance = u.balance, movements = t.movements + u.movements, \
         position = u.position, last_trace_id = u.trace_id \
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[]) \
         AS u(account_id, balance, movements, position, trace_id) WHERE t.account_id = u.account_id"
    );
    let updated = sqlx::query(AssertSqlSafe(sql))
        .bind(pg_array::text(rows.iter().map(|r| Some(r.account_id.as_str()))))
        .bind(pg_array::bigint(rows.iter().map(|r| r.balance)))
        .bind(pg_array::bigint(rows.iter().map(|r| r.movements)))
        .bind(pg_array::bigint(rows.iter().map(|r| r.position)))
        .bind(pg_array::text(rows.iter().map(|r| Some(r.trace_id.as_str()))))
        .execute(&mut *tx)
        .await?;
    Ok(updated.rows_affected())
}
