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

use crate::domain::case::{Above, Case, CaseCommand, CaseEvent, CaseRejection, Clock};
use crate::domain::deadline::DeadlineId;
use crate::domain::rulebook::{CalendarYear, RulebookCommand, RulebookRejection, Rules, check, check_year};
use crate::events::RulebookEvent;
use crate::policy::{InForce, Policy};
use crate::projection::DEADLINES;
use crate::queries::Queries;

/// The dispatch application service.
#[derive(Clone)]
pub struct Dispatch {
    cases: Repository<Case>,
    store: ReadStore,
    projection: Arc<RunnerHandle>,
    incoming: Arc<RunnerHandle>,
    grid: Arc<RunnerHandle>,
    time: Arc<dyn TimeSource>,
    policy: Policy,
    /// The personal-data key store: reports' accounts are opened when read.
    keys: gridwork_personal::KeyStore,
}

/// The consumers a dispatch service runs.
pub struct Runners {
    /// The cases read model (`DISPATCH`).
    pub cases: Arc<RunnerHandle>,
    /// The process manager (`INTAKE`).
    pub incoming: Arc<RunnerHandle>,
    /// The organisation tree copy (`GRID`).
    pub grid: Arc<RunnerHandle>,
}

impl Dispatch {
    /// Wire the parts together.
    pub fn new(
        cases: Repository<Case>,
        store: ReadStore,
        runners: Runners,
        time: Arc<dyn TimeSource>,
        policy: Policy,
        keys: gridwork_personal::KeyStore,
    ) -> Self {
        Self {
            cases,
            store,
            projection: runners.cases,
            incoming: runners.incoming,
            grid: runners.grid,
            time,
            policy,
            keys,
        }
    }

    /// The copy of the organisation tree.
    pub fn grid(&self) -> &RunnerHandle {
        &self.grid
    }

    /// The rung above `owner` in the tree as dispatch's copy has it: a grid's
    /// community, a community's street. None for other tiers, or a unit the
    /// copy does not hold.
    async fn above(
        &self,
        owner: Option<&gridwork_proto::gridwork::dispatch::v1::Owner>,
    ) -> Result<Option<Above>, ServiceError> {
        use gridwork_proto::gridwork::dispatch::v1 as pb;
        let Some(owner) = owner else { return Ok(None) };
        if ![pb::Tier::Grid as i32, pb::Tier::Community as i32].contains(&owner.tier) {
            return Ok(None);
        }
        let mut conn = self.store.pool().acquire().await?;
        let Some(unit) = crate::grid::unit(&mut conn, &owner.id).await? else { return Ok(None) };
        let Some(parent) = crate::grid::unit(&mut conn, &unit.parent_id).await? else { return Ok(None) };
        Ok(parent.tier().map(|t| Above { of: owner.clone(), parent: pb::Owner { tier: t as i32, id: parent.unit_id } }))
    }

    /// Check that a grid, community or street a dispatcher names exists in
    /// the tree and is of that tier (`INVALID_ARGUMENT` on `field`).
    /// Check that `owner` is a unit of the tree of its tier; its district.
    pub async fn check_unit(
        &self,
        field: &str,
        owner: &gridwork_proto::gridwork::dispatch::v1::Owner,
    ) -> Result<String, ServiceError> {
        let mut found = crate::grid::unit(&mut *self.store.pool().acquire().await?, &owner.id).await?;
        if found.is_none() {
            // Registered a moment ago, perhaps: let the copy reach the head of
            // GRID (bounded) before calling it unknown — holding no
            // connection, which the copy needs to catch up.
            self.grid.wait_for_stream_head(Duration::from_secs(2)).await?;
            found = crate::grid::unit(&mut *self.store.pool().acquire().await?, &owner.id).await?;
        }
        let mut conn = self.store.pool().acquire().await?;
        let tier = gridwork_proto::gridwork::dispatch::v1::Tier::try_from(owner.tier).unwrap_or_default();
        match found {
            None => Err(ServiceError::invalid(field, format!("unit {} is not in the organisation tree", owner.id))),
            Some(u) if u.tier() != Some(tier) => Err(ServiceError::invalid(
                field,
                format!("unit {} is not a {}", owner.id, tier.as_str_name().trim_start_matches("TIER_").to_lowercase()),
            )),
            Some(_) => crate::grid::district_of(&mut conn, &owner.id).await?.ok_or_else(|| {
                ServiceError::invalid(field, format!("unit {} is in no district of the tree", owner.id))
            }),
        }
    }

    /// Whether the caller's grants reach `owner`, whom a request acts as: a
    /// street or community acts as itself or any unit of its subtree, a grid
    /// head as its grid, a department as itself — by dispatch's own copy of
    /// the tree. `PERMISSION_DENIED` naming the permission otherwise.
    pub async fn authorise_as(
        &self,
        access: &gridwork_auth::Access,
        owner: &gridwork_proto::gridwork::dispatch::v1::Owner,
    ) -> Result<(), ServiceError> {
        use gridwork_auth::Target;
        use gridwork_proto::gridwork::dispatch::v1::Tier;
        if access.unrestricted() {
            return Ok(());
        }
        match Tier::try_from(owner.tier).unwrap_or_default() {
            Tier::Department => Ok(access.require(&[Target::Department(&owner.id)])?),
            Tier::Grid | Tier::Community | Tier::Street => {
                let chain = self.ancestry(&owner.id).await?;
                Ok(access.require(&[Target::Place(&chain)])?)
            }
            // A district's dispatch centre: only a city-wide grant acts as it.
            _ => Ok(access.require(&[Target::Place(&[])])?),
        }
    }

    /// Unit `id` and its ancestors up to its district, nearest first, from
    /// dispatch's copy of the tree (waiting a moment for a unit registered
    /// just now); empty for a unit the tree does not hold.
    pub async fn ancestry(&self, id: &str) -> Result<Vec<(String, gridwork_auth::Level)>, ServiceError> {
        let chain = {
            let mut conn = self.store.pool().acquire().await?;
            crate::grid::chain(&mut conn, id).await?
        };
        // Waiting holds no connection: the copy needs one to catch up.
        let chain = if chain.is_empty() {
            self.grid.wait_for_stream_head(Duration::from_secs(2)).await?;
            let mut conn = self.store.pool().acquire().await?;
            crate::grid::chain(&mut conn, id).await?
        } else {
            chain
        };
        Ok(chain.into_iter().map(|u| (u.unit_id, gridwork_auth::Level::of_unit_kind(u.kind as i32))).collect())
    }

    /// The rules in force now.
    pub async fn in_force(&self) -> Result<InForce, ServiceError> {
        Ok(self.policy.in_force().await?)
    }

    /// Publish a rulebook version over `expected_version`, checked as a whole.
    pub async fn publish_rulebook(
        &self,
        command_id: CommandKey,
        principal: String,
        book: &gridwork_proto::gridwork::dispatch::v1::Rulebook,
        expected_version: u32,
    ) -> Result<(u32, CommitOutcome<RulebookEvent>), ServiceError> {
        let rules = check(book).map_err(ServiceError::invalid_all)?;
        let now = self.time.now_unix_ms();
        let command = RulebookCommand::Publish {
            rules: Box::new(rules),
            expected_version,
            at_unix_ms: now,
            by: principal.clone(),
            note: book.note.trim().to_string(),
        };
        let outcome = self.policy.execute(&command, &CommandMeta::new(command_id, principal, now)).await?;
        let version = outcome
            .events
            .iter()
            .find_map(|e| match e {
                RulebookEvent::Published(p) => p.rulebook.as_ref().map(|r| r.version),
                RulebookEvent::CalendarYearPublished(_) => None,
            })
            .unwrap_or_default();
        Ok((version, outcome))
    }

    /// Set one year of the working calendar.
    pub async fn publish_calendar_year(
        &self,
        command_id: CommandKey,
        principal: String,
        year: &gridwork_proto::gridwork::dispatch::v1::CalendarYear,
    ) -> Result<(u32, CommitOutcome<RulebookEvent>), ServiceError> {
        let checked = check_year(year).map_err(ServiceError::invalid_all)?;
        let now = self.time.now_unix_ms();
        let command =
            RulebookCommand::PublishYear { year: checked, note: year.note.trim().to_string(), at_unix_ms: now };
        let outcome = self.policy.execute(&command, &CommandMeta::new(command_id, principal, now)).await?;
        let revision = outcome
            .events
            .iter()
            .find_map(|e| match e {
                RulebookEvent::CalendarYearPublished(p) => p.year.as_ref().map(|y| y.revision),
                RulebookEvent::Published(_) => None,
            })
            .unwrap_or_default();
        Ok((revision, outcome))
    }

    /// One year of the calendar in force, with its revision (0: as shipped).
    pub async fn calendar_year(
        &self,
        year: i32,
    ) -> Result<gridwork_proto::gridwork::dispatch::v1::CalendarYear, ServiceError> {
        let in_force = self.in_force().await?;
        Ok(match in_force.book.years.get(&year) {
            Some((_, published)) => published.clone(),
            None => CalendarYear::from_calendar(self.policy.base_calendar(), year).to_pb(0, "as shipped"),
        })
    }

    /// Check that every owner a command names exists: a department must be one
    /// of the rulebook in force (an assignment to a department that does not
    /// exist is INVALID_ARGUMENT naming the field).
    pub async fn check_departments<'a>(
        &self,
        named: impl IntoIterator<Item = (String, &'a str)>,
    ) -> Result<(), ServiceError> {
        let in_force = self.in_force().await?;
        let rules: &Rules = in_force.rules();
        let problems: Vec<(String, String)> = named
            .into_iter()
            .filter(|(_, code)| !rules.has_department(code))
            .map(|(field, code)| (field, format!("{code:?} is not a department of rulebook version {}", rules.version)))
            .collect();
        if problems.is_empty() { Ok(()) } else { Err(ServiceError::invalid_all(problems)) }
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
        let in_force = self.in_force().await?;
        let version = opened.routing.as_ref().map_or(0, |r| r.rulebook_version);
        Ok(Clock {
            now_unix_ms: self.time.now_unix_ms(),
            plan: in_force.plan(version, &opened.category_code, opened.priority, opened.emergency),
            calendar: in_force.calendar,
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

    /// Merge `case_id` into `into`: the target's state is read from its
    /// stream's leader just before, and the rule (open, not merged itself) is
    /// the case's to apply.
    pub async fn merge(
        &self,
        case_id: &str,
        into: &str,
        command_id: CommandKey,
        principal: String,
        reason: String,
    ) -> Result<CommitOutcome<CaseEvent>, ServiceError> {
        let target = self.cases.load_current(into).await?.state;
        let target = target.opened.as_ref().map(|opened| crate::domain::case::MergeTarget {
            status: target.status,
            merged_into: target.merged_into.clone(),
            opened_at_unix_ms: opened.opened_at_unix_ms,
        });
        let by = principal.clone();
        let into = into.to_string();
        self.act(case_id, command_id, principal, |clock| CaseCommand::Merge {
            into,
            target,
            by,
            reason,
            now_unix_ms: clock.now_unix_ms,
        })
        .await
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
            // Escalation goes to the rung above whoever holds the case now, as
            // the tree stands.
            // From the leader: another replica may have moved the case since
            // this one's cached copy (an `above` for a former holder is ignored).
            let holder = self.cases.load_current(&case_id).await?.state.owner;
            let above = self.above(holder.as_ref()).await?;
            match self
                .act(&case_id, command_id, "service:dispatch-scheduler".into(), |clock| CaseCommand::FireDeadline {
                    deadline,
                    clock,
                    above,
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

    /// A rating's comment, sealed under the rating reporter's own report key
    /// in intake (the case's incident for the reporter and staff rating for
    /// them, the me-too's for its reporter), so that erasing that reporter's
    /// data erases it too: returns the plain comment to record ("" once
    /// sealed) and the sealed one. A report older than sealing has no key:
    /// its comment stays plain, as its account is. A reporter whose data was
    /// erased gives no comment: FAILED_PRECONDITION.
    pub async fn seal_comment(
        &self,
        case_id: &str,
        by: &crate::domain::case::Rater,
        comment: String,
    ) -> Result<(String, Option<gridwork_personal::Sealed>), ServiceError> {
        use crate::domain::case::Rater;
        if comment.is_empty() {
            return Ok((comment, None));
        }
        let report = match by {
            Rater::Reporter | Rater::Staff(_) => case_id,
            Rater::LinkedReporter(report) => report.as_str(),
        };
        let name = gridwork_personal::report_key(report)?;
        match self.keys.seal_existing(&name, "comment", comment.as_bytes()).await {
            Ok(Some(sealed)) => Ok((String::new(), Some(sealed))),
            Ok(None) => Err(ServiceError::FailedPrecondition {
                kind: "PERSONAL_DATA_ERASED".into(),
                subject: "comment".into(),
                description: format!(
                    "comment: the data of report {report}'s reporter was erased; rate without a comment"
                ),
            }),
            Err(gridwork_personal::PersonalError::Missing(_)) => Ok((comment, None)),
            Err(e) => Err(e.into()),
        }
    }

    /// The read side.
    pub fn queries(&self) -> Queries<'_> {
        Queries { store: &self.store, now_unix_ms: self.time.now_unix_ms(), keys: &self.keys }
    }
}

impl From<RulebookRejection> for ServiceError {
    fn from(r: RulebookRejection) -> Self {
        let kind = match &r {
            RulebookRejection::StaleVersion { .. } => "STALE_VERSION",
            RulebookRejection::Unchanged(_) => "UNCHANGED",
            RulebookRejection::YearUnchanged(_) => "YEAR_UNCHANGED",
        };
        ServiceError::FailedPrecondition { kind: kind.into(), subject: "rulebook".into(), description: r.to_string() }
    }
}

impl From<CaseRejection> for ServiceError {
    fn from(r: CaseRejection) -> Self {
        let kind = match &r {
            CaseRejection::InvalidTransition { .. } => "INVALID_TRANSITION",
            CaseRejection::NotOwner { .. } => "NOT_OWNER",
            CaseRejection::OwnerChanged { .. } => "OWNER_CHANGED",
            CaseRejection::AlreadyOwner(_) => "ALREADY_OWNER",
            CaseRejection::OtherDistrict { .. } => "OTHER_DISTRICT",
            CaseRejection::CentreAssigns(_) => "CENTRE_ASSIGNS",
            CaseRejection::NotTheStreet => "NOT_THE_STREET",
            CaseRejection::NotSummoned(_) => "NOT_SUMMONED",
            CaseRejection::SummonsNotReported(_) => "SUMMONS_NOT_REPORTED",
            CaseRejection::SummonsOutstanding(_) => "SUMMONS_OUTSTANDING",
            CaseRejection::SelfMerge => {
                return ServiceError::InvalidArgument(vec![gridwork_runtime::status::FieldViolation::new(
                    "into_case_id",
                    "a case cannot be merged into itself",
                )]);
            }
            CaseRejection::NotLinked(_) => "NOT_LINKED",
            CaseRejection::AlreadyRated(_) => "ALREADY_RATED",
            CaseRejection::RatingWindowPassed => "RATING_WINDOW_PASSED",
            CaseRejection::TargetUnknown => return ServiceError::NotFound(r.to_string()),
            CaseRejection::TargetNotOpen(_) => "TARGET_NOT_OPEN",
            CaseRejection::TargetMerged(_) => "TARGET_MERGED",
            CaseRejection::TargetNewer(_) => "TARGET_NEWER",
        };
        ServiceError::FailedPrecondition { kind: kind.into(), subject: "case".into(), description: r.to_string() }
    }
}
