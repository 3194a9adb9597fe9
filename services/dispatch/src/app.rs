//! Dispatch's application service: owner and dispatcher commands, the deadline
//! scheduler, and the queries.

use std::sync::Arc;
use std::time::Duration;

use gridwork_eventstore::projection::{ReadStore, RunnerHandle, Tables};
use gridwork_eventstore::{CommandKey, CommandMeta, CommitOutcome, Repository};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_runtime::ServiceError;
use gridwork_runtime::clock::Clock as TimeSource;
use sqlx::AssertSqlSafe;
use tracing::{info, warn};

use crate::domain::calendar::WorkingCalendar;
use crate::domain::case::{Case, CaseCommand, CaseEvent, CaseRejection, Clock};
use crate::domain::routing::sla_plan_for;
use crate::projection::{CASES, DEADLINES, TIMELINE};

/// The dispatch application service.
#[derive(Clone)]
pub struct Dispatch {
    cases: Repository<Case>,
    store: ReadStore,
    projection: Arc<RunnerHandle>,
    incoming: Arc<RunnerHandle>,
    time: Arc<dyn TimeSource>,
    calendar: Arc<WorkingCalendar>,
    /// How long summoned departments have to report (30 minutes by default).
    pub summon_within: time::Duration,
}

#[derive(Debug, sqlx::FromRow)]
struct CaseRow {
    case_id: String,
    status: String,
    owner_tier: i64,
    owner_id: String,
    category_code: String,
    priority: i64,
    emergency: i64,
    grid_id: String,
    community_id: String,
    street_id: String,
    department: String,
    rule_id: String,
    routing: String,
    rating: i64,
    breaches: i64,
    position: i64,
}

const CASE_COLUMNS: &str = "case_id, status, owner_tier, owner_id, category_code, priority, emergency, grid_id, community_id, \
    street_id, department, rule_id, routing, rating, breaches, position";

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
    ) -> Self {
        Self { cases, store, projection, incoming, time, calendar, summon_within: time::Duration::minutes(30) }
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
            plan: sla_plan_for(&opened.category_code, opened.priority, opened.emergency),
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

    /// Escalate every pending deadline that has fallen due. Idempotent: each
    /// escalation's command id names its deadline, and `Escalate` ignores a deadline
    /// that is no longer pending, so firing again after a crash does nothing more.
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
            // A process manager's command: its id names the deadline; no request digest.
            let command_id = CommandKey { id: format!("escalate-{deadline_id}"), request_digest: 0 };
            match self
                .act(&case_id, command_id, "service:dispatch-scheduler".into(), |clock| CaseCommand::Escalate {
                    deadline_id: deadline_id.clone(),
                    clock,
                })
                .await
            {
                // A replayed outcome is another replica's (or an earlier run's) escalation.
                Ok(outcome) if !outcome.events.is_empty() && !outcome.replayed => {
                    info!(case = %case_id, deadline = %deadline_id, "deadline missed: escalated");
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

    async fn rows(
        &self,
        filter: &str,
        order: &str,
        binds: (&str, i64, i64),
        limit: u32,
    ) -> Result<Vec<pb::Case>, ServiceError> {
        let cases = Tables::Live.name(CASES.name);
        let deadlines = Tables::Live.name(DEADLINES.name);
        let rows: Vec<CaseRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {CASE_COLUMNS} FROM {cases} c WHERE {filter} ORDER BY {order} LIMIT $4"
        )))
        .bind(binds.0)
        .bind(binds.1)
        .bind(binds.2)
        .bind(i64::from(limit))
        .fetch_all(self.store.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let pending: Vec<(String, i64, i64)> = sqlx::query_as(AssertSqlSafe(format!(
                "SELECT deadline_id, kind, due_ms FROM {deadlines} WHERE case_id = $1 AND state = 'pending' ORDER BY due_ms"
            )))
            .bind(&r.case_id)
            .fetch_all(self.store.pool())
            .await?;
            out.push(pb::Case {
                open311_status: if r.status == "closed" { "closed".into() } else { "open".into() },
                case_id: r.case_id,
                status: r.status,
                owner: Some(pb::Owner { tier: r.owner_tier as i32, id: r.owner_id }),
                category_code: r.category_code,
                priority: r.priority as i32,
                emergency: r.emergency != 0,
                grid_id: r.grid_id,
                community_id: r.community_id,
                street_id: r.street_id,
                department: r.department,
                routing: Some(pb::RoutingDecision { rule_id: r.rule_id, explanation: r.routing }),
                pending_deadlines: pending
                    .into_iter()
                    .map(|(id, kind, due)| pb::Deadline { id, kind: kind as i32, due_unix_ms: due })
                    .collect(),
                breaches: r.breaches as u32,
                rating: r.rating as i32,
                timeline: Vec::new(),
                position: r.position as u64,
            });
        }
        Ok(out)
    }

    /// One case with its timeline.
    pub async fn case(&self, case_id: &str) -> Result<pb::Case, ServiceError> {
        let mut case = self
            .rows("c.case_id = $1 AND $2 = $3", "c.case_id", (case_id, 0, 0), 1)
            .await?
            .pop()
            .ok_or_else(|| ServiceError::NotFound(format!("case_id: case {case_id} does not exist")))?;
        let timeline = Tables::Live.name(TIMELINE.name);
        let rows: Vec<(i64, i64, String, String, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT sequence, at_ms, event_type, summary, principal FROM {timeline} WHERE case_id = $1 ORDER BY sequence, idx"
        )))
        .bind(case_id)
        .fetch_all(self.store.pool())
        .await?;
        case.timeline = rows
            .into_iter()
            .map(|(sequence, at, event_type, summary, principal)| pb::TimelineEntry {
                sequence: sequence as u64,
                at_unix_ms: at,
                event_type,
                summary,
                principal,
            })
            .collect();
        Ok(case)
    }

    /// An owner's open cases, soonest pending deadline first.
    pub async fn work_queue(&self, owner: &pb::Owner, limit: u32) -> Result<Vec<pb::Case>, ServiceError> {
        let deadlines = Tables::Live.name(DEADLINES.name);
        self.rows(
            "c.owner_id = $1 AND c.owner_tier = $2 AND c.status <> 'closed' AND $3 = $3",
            &format!("(SELECT MIN(d.due_ms) FROM {deadlines} d WHERE d.case_id = c.case_id AND d.state = 'pending'), c.case_id"),
            (&owner.id, i64::from(owner.tier), 0),
            limit,
        )
        .await
    }

    /// Open cases with a pending deadline already past, most overdue first.
    pub async fn overdue(&self, limit: u32) -> Result<Vec<pb::Case>, ServiceError> {
        let deadlines = Tables::Live.name(DEADLINES.name);
        let now = self.time.now_unix_ms();
        self.rows(
            &format!(
                "$1 = $1 AND c.status <> 'closed' AND EXISTS (SELECT 1 FROM {deadlines} d WHERE d.case_id = c.case_id AND d.state = 'pending' AND d.due_ms <= $2) AND $3 = $3"
            ),
            &format!("(SELECT MIN(d.due_ms) FROM {deadlines} d WHERE d.case_id = c.case_id AND d.state = 'pending'), c.case_id"),
            ("", now, 0),
            limit,
        )
        .await
    }
}

impl From<CaseRejection> for ServiceError {
    fn from(r: CaseRejection) -> Self {
        let kind = match &r {
            CaseRejection::InvalidTransition { .. } => "INVALID_TRANSITION",
            CaseRejection::NotOwner { .. } => "NOT_OWNER",
            CaseRejection::OwnerChanged { .. } => "OWNER_CHANGED",
            CaseRejection::NothingToHandBackTo => "NOTHING_TO_HAND_BACK_TO",
            CaseRejection::NotTheStreet => "NOT_THE_STREET",
            CaseRejection::NotSummoned(_) => "NOT_SUMMONED",
        };
        ServiceError::FailedPrecondition { kind: kind.into(), subject: "case".into(), description: r.to_string() }
    }
}
