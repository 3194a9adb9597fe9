//! proto ⇄ domain. Every request is parsed here, with errors naming the field;
//! the only place `Status` is built (through `gridwork_runtime::status`).

use gridwork_eventstore::CommitOutcome;
use gridwork_proto::gridwork::sample::v1 as pb;
use gridwork_proto::gridwork::sample::v1::ledger_service_server::LedgerService;
use gridwork_runtime::Violations;
use gridwork_runtime::request::{principal, read_wait};
use tonic::{Request, Response, Status};

use crate::app::Ledgers;
use crate::domain::ledger::LedgerCommand;
use crate::events::LedgerEvent;

/// The gRPC face of [`Ledgers`].
pub struct LedgerGrpc {
    ledgers: Ledgers,
}

impl LedgerGrpc {
    /// Serve `ledgers`.
    pub fn new(ledgers: Ledgers) -> Self {
        Self { ledgers }
    }
}

fn position(outcome: &CommitOutcome<LedgerEvent>) -> Option<pb::CommitPosition> {
    Some(pb::CommitPosition { sequence: outcome.sequence, replayed: outcome.replayed })
}

/// The balance after the commit, read from its last event so that a replayed
/// command answers exactly as the original did.
fn balance_after(outcome: &CommitOutcome<LedgerEvent>) -> i64 {
    outcome
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            LedgerEvent::Deposited { balance_after, .. } | LedgerEvent::Withdrawn { balance_after, .. } => {
                Some(*balance_after)
            }
            LedgerEvent::Opened { .. } => None,
        })
        .unwrap_or(0)
}

#[tonic::async_trait]
impl LedgerService for LedgerGrpc {
    async fn open_account(
        &self,
        request: Request<pb::OpenAccountRequest>,
    ) -> Result<Response<pb::OpenAccountResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("account_id", &r.account_id);
        let owner = r.owner.trim().to_string();
        if owner.is_empty() || owner.chars().count() > 100 {
            v.add("owner", "must be 1-100 characters");
        }
        v.finish()?;
        let outcome = self.ledgers.execute(&id, LedgerCommand::Open { owner }, command_id, who).await?;
        Ok(Response::new(pb::OpenAccountResponse { position: position(&outcome) }))
    }

    async fn deposit(&self, request: Request<pb::DepositRequest>) -> Result<Response<pb::DepositResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("account_id", &r.account_id);
        let amount = v.positive("amount", r.amount);
        v.finish()?;
        let outcome = self.ledgers.execute(&id, LedgerCommand::Deposit { amount }, command_id, who).await?;
        Ok(Response::new(pb::DepositResponse { position: position(&outcome), balance: balance_after(&outcome) }))
    }

    async fn withdraw(&self, request: Request<pb::WithdrawRequest>) -> Result<Response<pb::WithdrawResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("account_id", &r.account_id);
        let amount = v.positive("amount", r.amount);
        v.finish()?;
        let outcome = self.ledgers.execute(&id, LedgerCommand::Withdraw { amount }, command_id, who).await?;
        Ok(Response::new(pb::WithdrawResponse { position: position(&outcome), balance: balance_after(&outcome) }))
    }

    async fn post_entries(
        &self,
        request: Request<pb::PostEntriesRequest>,
    ) -> Result<Response<pb::PostEntriesResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("account_id", &r.account_id);
        if r.amounts.is_empty() || r.amounts.len() > 100 {
            v.add("amounts", "must hold 1-100 entries");
        }
        for (i, a) in r.amounts.iter().enumerate() {
            if *a == 0 {
                v.add(format!("amounts[{i}]"), "must not be 0");
            }
        }
        v.finish()?;
        let outcome = self.ledgers.execute(&id, LedgerCommand::Post { amounts: r.amounts }, command_id, who).await?;
        Ok(Response::new(pb::PostEntriesResponse {
            position: position(&outcome),
            balance: balance_after(&outcome),
            event_count: outcome.events.len() as u32,
        }))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        let id = v.id("account_id", &r.account_id);
        v.finish()?;
        let a = self.ledgers.account(&id, r.min_position, wait).await?;
        Ok(Response::new(pb::GetAccountResponse {
            account_id: a.account_id,
            owner: a.owner,
            balance: a.balance,
            movements: a.movements,
            position: a.position as u64,
        }))
    }
}
