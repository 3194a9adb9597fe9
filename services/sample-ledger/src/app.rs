//! Load → decide → append, and reads from the projection. No proto types here.

use std::sync::Arc;
use std::time::Duration;

use gridwork_eventstore::projection::{ReadStore, RunnerHandle, Tables};
use gridwork_eventstore::{CommandKey, CommandMeta, CommitOutcome, Repository};
use gridwork_runtime::ServiceError;
use gridwork_runtime::clock::Clock;
use sqlx::AssertSqlSafe;

use crate::domain::ledger::{Ledger, LedgerCommand, LedgerRejection};
use crate::events::LedgerEvent;
use crate::projection::ACCOUNTS;

/// An account as the read model has it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccountView {
    /// Id.
    pub account_id: String,
    /// Owner.
    pub owner: String,
    /// Balance in cents.
    pub balance: i64,
    /// Movements applied.
    pub movements: i64,
    /// Stream position of the last commit applied.
    pub position: i64,
    /// Trace id the last commit was applied under.
    pub last_trace_id: String,
}

/// The ledger application service.
#[derive(Clone)]
pub struct Ledgers {
    repository: Repository<Ledger>,
    store: ReadStore,
    projection: Arc<RunnerHandle>,
    clock: Arc<dyn Clock>,
}

impl Ledgers {
    /// Wire the parts together.
    pub fn new(
        repository: Repository<Ledger>,
        store: ReadStore,
        projection: Arc<RunnerHandle>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { repository, store, projection, clock }
    }

    /// Execute a command on account `id`.
    pub async fn execute(
        &self,
        id: &str,
        command: LedgerCommand,
        command_id: CommandKey,
        principal: String,
    ) -> Result<CommitOutcome<LedgerEvent>, ServiceError> {
        let meta = CommandMeta::new(command_id, principal, self.clock.now_unix_ms());
        Ok(self.repository.execute(id, &command, &meta).await?)
    }

    /// Read an account, first waiting (up to `wait`) for the read model to reach
    /// `min_position`.
    pub async fn account(&self, id: &str, min_position: u64, wait: Duration) -> Result<AccountView, ServiceError> {
        if min_position > 0 {
            self.projection.wait_for(min_position, wait).await?;
        }
        let table = Tables::Live.name(ACCOUNTS.name);
        let row: Option<AccountView> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT account_id, owner, balance, movements, position, last_trace_id FROM {table} WHERE account_id = $1"
        )))
        .bind(id)
        .fetch_optional(self.store.pool())
        .await?;
        row.ok_or_else(|| ServiceError::NotFound(format!("account {id} not found")))
    }

    /// The projection, for rebuilds and position checks.
    pub fn projection(&self) -> &RunnerHandle {
        &self.projection
    }
}

impl From<LedgerRejection> for ServiceError {
    fn from(r: LedgerRejection) -> Self {
        let kind = match r {
            LedgerRejection::AccountAlreadyOpen => "ACCOUNT_ALREADY_OPEN",
            LedgerRejection::AccountNotOpen => "ACCOUNT_NOT_OPEN",
            LedgerRejection::InsufficientFunds { .. } => "INSUFFICIENT_FUNDS",
            LedgerRejection::BalanceOverflow => "BALANCE_OVERFLOW",
        };
        ServiceError::FailedPrecondition { kind: kind.into(), subject: "account".into(), description: r.to_string() }
    }
}
