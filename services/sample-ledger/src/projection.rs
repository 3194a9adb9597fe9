//! The `accounts` read model.

use gridwork_eventstore::RecordedCommit;
use gridwork_eventstore::projection::{ApplyError, Projection, TableDef, Tables};
use sqlx::{AnyConnection, AssertSqlSafe};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

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

    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        let table = tables.name(ACCOUNTS.name);
        let id = commit.aggregate_id();
        let position = commit.sequence as i64;
        // The trace this commit is applied under, recorded so tests can prove the
        // trace started at the RPC reached the projection. Empty for commits made
        // outside any trace, so a rebuild reproduces the rows exactly.
        let trace_id = if commit.header(gridwork_eventstore::envelope::headers::TRACEPARENT).is_some() {
            use opentelemetry::trace::TraceContextExt as _;
            tracing::Span::current().context().span().span_context().trace_id().to_string()
        } else {
            String::new()
        };
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
