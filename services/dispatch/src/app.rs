//! Dispatch's application service: owner and dispatcher commands, the deadline
//! scheduler, and the queries.

use std::sync::Arc;
use std::time::Duration;

use gridwork_eventstore::projection::{ReadStore, RunnerHandle, Tables};
use gridwork_eventstore::{CommandKey, CommandMeta, CommitOutcome, Repository};
use gridwork_runtime::ServiceError;
use gridwork_runtime::clock::Clock as TimeSource;
use sqlx::AssertSqlSafe;
use tracing::{info, warn};

use crate::domain::calendar::WorkingCalendar;
use crate::domain::case::{Case, CaseCommand, CaseEvent, CaseRejection, Clock};
use crate::domain::deadline::DeadlineId;
use crate::domain::routing::{Terms, sla_plan_for};
use crate::projection::DEADLINES;
use crate::queries::Queries;

/// The dispatch application service.
#[derive(Clone)]
pub struct Dispatch {
    cases: Repository<Case>,
    store: ReadStore,
    projection: Arc<RunnerHandle>,
    incoming: Arc<RunnerHandle>,
    time: Arc<dyn TimeSource>,
    calendar: Arc<WorkingCalendar>,
    terms: Terms,
}

impl Dispatch {
    /// Wire the parts together.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cases: Repository<Case>,
        store: ReadStore,
        projection: Arc<RunnerHandle>,
        incoming: Arc<RunnerHandle>,
        time: Arc<dyn TimeSource>,
        calendar: Arc<WorkingCalendar>,
        terms: Terms,
    ) -> Self {
        Self { cases, store, projection, incoming, time, calendar, terms }
    }

    /// The cases projection.
    pub fn projection(&self) -> &RunnerHandle {
        &self.projection
    }

    /// The process manager consuming `INTAKE`.
    pub fn incoming(&self) -> &RunnerHandle {
        &self.incoming
    }

    async fn clock_for(&self, case_id: &str) -> Result<Clock, ServiceError> {
        let state = self.cases.load(case_id).await?.state;
        let opened =
            state.opened.ok_or_else(|| ServiceError::NotFound(format!("case_id: case {case_id} does not exist")))?;
        Ok(Clock {
            now_unix_ms: self.time.now_unix_ms(),
            calendar: self.calendar.clone(),
            plan: sla_plan_for(&opened.category_code, opened.priority, opened.emergency, &self.terms),
        })
    }

    /// Run a command on a case; `build` gets the injected clock.
    pub async fn act(
        &self,
        case_id: &str,
        command_id: CommandKey,
        principal: String,
        build: impl FnOnce(Clock) -> CaseCommand,
    ) -> Result<CommitOutcome<CaseEvent>, ServiceError> {
        let clock = self.clock_for(case_id).await?;
        let now = clock.now_unix_ms;
        let command = build(clock);
        let meta = CommandMeta::new(command_id, principal, now);
        Ok(self.cases.execute(case_id, &command, &meta).await?)
    }

    /// Fire every pending deadline that has fallen due (escalate, record a
    /// breach, or close an unrated case). Idempotent: each command id names its
    /// deadline, and `FireDeadline` ignores a deadline that is no longer pending,
    /// so firing again after a crash does nothing more.
    pub async fn fire_due_deadlines(&self) -> Result<usize, ServiceError> {
        // The read model must reflect every commit before we judge what is pending.
        self.projection.wait_for_stream_head(Duration::from_secs(10)).await?;
        let now = self.time.now_unix_ms();
        let table = Tables::Live.name(DEADLINES.name);
        let due: Vec<(String, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT case_id, deadline_id FROM {table} WHERE state = 'pending' AND due_ms <= $1 ORDER BY due_ms LIMIT 1000"
        )))
        .bind(now)
        .fetch_all(self.store.pool())
        .await?;
        let mut fired = 0;
        for (case_id, deadline_id) in due {
            let Some(deadline) = DeadlineId::parse(&deadline_id) else {
                warn!(case = %case_id, deadline = %deadline_id, "a deadline id this build cannot read; skipped");
                continue;
            };
            // A process manager's command: its id names the deadline; no request digest.
            let command_id = CommandKey { id: format!("escalate-{deadline_id}"), request_digest: 0 };
            match self
                .act(&case_id, command_id, "service:dispatch-scheduler".into(), |clock| CaseCommand::FireDeadline {
                    deadline,
                    clock,
                })
                .await
            {
                // A replayed outcome is another replica's (or an earlier run's) escalation.
                Ok(outcome) if !outcome.events.is_empty() && !outcome.replayed => {
                    info!(case = %case_id, deadline = %deadline_id, "deadline passed: acted on");
                    fired += 1;
                }
                Ok(_) => {}
                Err(e) => warn!(case = %case_id, deadline = %deadline_id, error = %e, "escalation failed; will retry"),
            }
        }
        Ok(fired)
    }

    /// Fire due deadlines every `every` until the process stops.
    pub fn spawn_scheduler(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.fire_due_deadlines().await {
                    warn!(error = %e, "deadline scheduler tick failed");
                }
                tokio::time::sleep(every).await;
            }
        })
    }

    /// Wait for `min_position` (read-your-writes), bounded.
    pub async fn wait(&self, min_position: u64, wait: Duration) -> Result<(), ServiceError> {
        if min_position > 0 {
            self.projection.wait_for(min_position, wait).await?;
        }
        Ok(())
    }

    /// The read side.
    pub fn queries(&self) -> Queries<'_> {
        Queries { store: &self.store, now_unix_ms: self.time.now_unix_ms() }
    }
}

impl From<CaseRejection> for ServiceError {
    fn from(r: CaseRejection) -> Self {
        let kind = match &r {
            CaseRejection::InvalidTransition { .. } => "INVALID_TRANSITION",
            CaseRejection::NotOwner { .. } => "NOT_OWNER",
            CaseRejection::OwnerChanged { .. } => "OWNER_CHANGED",
            CaseRejection::AlreadyOwner(_) => "ALREADY_OWNER",
            CaseRejection::CentreAssigns(_) => "CENTRE_ASSIGNS",
            CaseRejection::NotTheStreet => "NOT_THE_STREET",
            CaseRejection::NotSummoned(_) => "NOT_SUMMONED",
            CaseRejection::SummonsNotReported(_) => "SUMMONS_NOT_REPORTED",
            CaseRejection::SummonsOutstanding(_) => "SUMMONS_OUTSTANDING",
        };
        ServiceError::FailedPrecondition { kind: kind.into(), subject: "case".into(), description: r.to_string() }
    }
}
