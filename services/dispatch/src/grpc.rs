//! proto ⇄ domain for dispatch, with field-named errors.

use gridwork_auth::Target;
use gridwork_eventstore::{CommandKey, CommitOutcome};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::dispatch::v1::dispatch_service_server::DispatchService;
use gridwork_proto::gridwork::dispatch::v1::rulebook_service_server::RulebookService;
use gridwork_runtime::Violations;
use gridwork_runtime::request::{access, principal, read_wait};
use tonic::{Request, Response, Status};

use crate::app::Dispatch;
use crate::domain::case::{CaseCommand, CaseEvent, Rater};
use crate::queries::{After, CaseQuery, overdue_scope, queue_scope, summonses_scope};

/// The gRPC face of [`Dispatch`].
pub struct DispatchGrpc {
    dispatch: Dispatch,
}

impl DispatchGrpc {
    /// Serve `dispatch`.
    pub fn new(dispatch: Dispatch) -> Self {
        Self { dispatch }
    }
}

fn position(outcome: &CommitOutcome<CaseEvent>) -> Option<pb::CommitPosition> {
    Some(pb::CommitPosition { sequence: outcome.sequence, replayed: outcome.replayed })
}

/// An owner: a tier and a valid id.
fn owner(v: &mut Violations, field: &str, o: Option<&pb::Owner>) -> pb::Owner {
    match o {
        None => {
            v.add(field, "is required");
            pb::Owner::default()
        }
        Some(o) => {
            if pb::Tier::try_from(o.tier).unwrap_or(pb::Tier::Unspecified) == pb::Tier::Unspecified {
                v.add(format!("{field}.tier"), "must be grid, community, street, department or dispatch centre");
            }
            v.id(&format!("{field}.id"), &o.id);
            o.clone()
        }
    }
}

/// A summoned department's step on a case (progress, completion), parsed.
struct SummonsStep {
    command_id: CommandKey,
    case_id: String,
    department: String,
    notes: String,
}

impl SummonsStep {
    fn parse(
        request: &impl prost::Message,
        command_id: &str,
        case_id: &str,
        department: &str,
        notes: &str,
    ) -> Result<Self, Status> {
        let mut v = Violations::default();
        let step = Self {
            command_id: v.command_id(command_id, request),
            case_id: v.id("case_id", case_id),
            department: v.id("department", department),
            notes: v.text("notes", notes, 1, 2000),
        };
        v.finish()?;
        Ok(step)
    }
}

#[tonic::async_trait]
impl DispatchService for DispatchGrpc {
    async fn get_case(&self, request: Request<pb::GetCaseRequest>) -> Result<Response<pb::GetCaseResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        match (r.case_id.is_empty(), r.case_number.is_empty()) {
            (false, true) => {
                v.id("case_id", &r.case_id);
            }
            (true, false) => {
                if r.case_number.len() > 40 || !r.case_number.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    v.add("case_number", "must look like HL-20261123-0042");
                }
            }
            _ => v.add("case_id", "give exactly one of case_id and case_number"),
        }
        v.finish()?;
        self.dispatch.wait(r.min_position, wait).await?;
        let queries = self.dispatch.queries();
        let id = if r.case_id.is_empty() {
            queries.case_id_of_number(&r.case_number.to_ascii_uppercase()).await?
        } else {
            r.case_id
        };
        Ok(Response::new(pb::GetCaseResponse { case: Some(queries.case(&id).await?) }))
    }

    async fn list_cases(
        &self,
        request: Request<pb::ListCasesRequest>,
    ) -> Result<Response<pb::ListCasesResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        if !r.area_id.is_empty() {
            v.id("area_id", &r.area_id);
        }
        for (i, status) in r.statuses.iter().enumerate() {
            if !["assigned", "acknowledged", "resolved", "closed"].contains(&status.as_str()) {
                v.add(format!("statuses[{i}]"), "must be assigned, acknowledged, resolved or closed");
            }
        }
        if !r.category_code.is_empty() {
            v.id("category_code", &r.category_code);
        }
        for (field, t) in
            [("opened_from_unix_ms", r.opened_from_unix_ms), ("opened_before_unix_ms", r.opened_before_unix_ms)]
        {
            if t < 0 {
                v.add(field, "must be a time after 1970 (Unix ms), or 0 for no bound");
            }
        }
        if r.opened_from_unix_ms > 0 && r.opened_before_unix_ms > 0 && r.opened_before_unix_ms <= r.opened_from_unix_ms
        {
            v.add("opened_before_unix_ms", "must be later than opened_from_unix_ms");
        }
        if r.page_size > 500 {
            v.add("page_size", "must be at most 500");
        }
        let query = CaseQuery {
            area_id: r.area_id,
            statuses: r.statuses,
            category_code: r.category_code,
            opened_from_ms: (r.opened_from_unix_ms > 0).then_some(r.opened_from_unix_ms),
            opened_before_ms: (r.opened_before_unix_ms > 0).then_some(r.opened_before_unix_ms),
        };
        let after = After::decode(&mut v, &r.page_token, &query.scope(), 1);
        v.finish()?;
        let page_size = if r.page_size == 0 { 50 } else { r.page_size };
        self.dispatch.wait(r.min_position, wait).await?;
        let page = self.dispatch.queries().list(&query, after.as_ref(), page_size).await?;
        Ok(Response::new(pb::ListCasesResponse { cases: page.items, next_page_token: page.next_page_token }))
    }

    async fn list_work_queue(
        &self,
        request: Request<pb::ListWorkQueueRequest>,
    ) -> Result<Response<pb::ListWorkQueueResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        let owner = owner(&mut v, "owner", r.owner.as_ref());
        let limit = v.limit(r.limit, 50, 500);
        let after = After::decode(&mut v, &r.page_token, &queue_scope(&owner), 1);
        v.finish()?;
        self.dispatch.wait(r.min_position, wait).await?;
        let page = self.dispatch.queries().work_queue(&owner, after.as_ref(), limit).await?;
        Ok(Response::new(pb::ListWorkQueueResponse { cases: page.items, next_page_token: page.next_page_token }))
    }

    async fn list_overdue(
        &self,
        request: Request<pb::ListOverdueRequest>,
    ) -> Result<Response<pb::ListOverdueResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        let limit = v.limit(r.limit, 50, 500);
        if !r.area_id.is_empty() {
            v.id("area_id", &r.area_id);
        }
        let after = After::decode(&mut v, &r.page_token, &overdue_scope(&r.area_id), 1);
        v.finish()?;
        self.dispatch.wait(r.min_position, wait).await?;
        let page = self.dispatch.queries().overdue(&r.area_id, after.as_ref(), limit).await?;
        Ok(Response::new(pb::ListOverdueResponse { cases: page.items, next_page_token: page.next_page_token }))
    }

    async fn list_summonses(
        &self,
        request: Request<pb::ListSummonsesRequest>,
    ) -> Result<Response<pb::ListSummonsesResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        let department = v.id("department", &r.department);
        let limit = v.limit(r.limit, 50, 500);
        let after = After::decode(&mut v, &r.page_token, &summonses_scope(&department, r.include_finished), 2);
        v.finish()?;
        self.dispatch.wait(r.min_position, wait).await?;
        let page = self.dispatch.queries().summonses(&department, r.include_finished, after.as_ref(), limit).await?;
        Ok(Response::new(pb::ListSummonsesResponse { summonses: page.items, next_page_token: page.next_page_token }))
    }

    async fn record_summons_progress(
        &self,
        request: Request<pb::RecordSummonsProgressRequest>,
    ) -> Result<Response<pb::RecordSummonsProgressResponse>, Status> {
        let access = access(&request)?;
        let who = access.subject().to_string();
        let r = request.into_inner();
        let step = SummonsStep::parse(&r, &r.command_id, &r.case_id, &r.department, &r.notes)?;
        access.require(&[Target::Department(&step.department)])?;
        let outcome = self
            .dispatch
            .act(&step.case_id, step.command_id, who, |c| CaseCommand::SummonsProgress {
                department: step.department,
                notes: step.notes,
                now_unix_ms: c.now_unix_ms,
            })
            .await?;
        Ok(Response::new(pb::RecordSummonsProgressResponse { position: position(&outcome) }))
    }

    async fn complete_summons(
        &self,
        request: Request<pb::CompleteSummonsRequest>,
    ) -> Result<Response<pb::CompleteSummonsResponse>, Status> {
        let access = access(&request)?;
        let who = access.subject().to_string();
        let r = request.into_inner();
        let step = SummonsStep::parse(&r, &r.command_id, &r.case_id, &r.department, &r.notes)?;
        access.require(&[Target::Department(&step.department)])?;
        let outcome = self
            .dispatch
            .act(&step.case_id, step.command_id, who, |c| CaseCommand::CompleteSummons {
                department: step.department,
                notes: step.notes,
                now_unix_ms: c.now_unix_ms,
            })
            .await?;
        Ok(Response::new(pb::CompleteSummonsResponse { position: position(&outcome) }))
    }

    async fn release_summons(
        &self,
        request: Request<pb::ReleaseSummonsRequest>,
    ) -> Result<Response<pb::ReleaseSummonsResponse>, Status> {
        let access = access(&request)?;
        let who = access.subject().to_string();
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("case_id", &r.case_id);
        let by = owner(&mut v, "acting_as", r.acting_as.as_ref());
        let department = v.id("department", &r.department);
        let reason = v.text("reason", &r.reason, 1, 500);
        v.finish()?;
        self.dispatch.authorise_as(&access, &by).await?;
        let outcome = self
            .dispatch
            .act(&id, command_id, who, |c| CaseCommand::ReleaseSummons {
                by,
                department,
                reason,
                now_unix_ms: c.now_unix_ms,
            })
            .await?;
        Ok(Response::new(pb::ReleaseSummonsResponse { position: position(&outcome) }))
    }

    async fn acknowledge_case(
        &self,
        request: Request<pb::AcknowledgeCaseRequest>,
    ) -> Result<Response<pb::AcknowledgeCaseResponse>, Status> {
        let access = access(&request)?;
        let who = access.subject().to_string();
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("case_id", &r.case_id);
        let by = owner(&mut v, "acting_as", r.acting_as.as_ref());
        v.finish()?;
        self.dispatch.authorise_as(&access, &by).await?;
        let outcome = self
            .dispatch
            .act(&id, command_id, who, |c| CaseCommand::Acknowledge { by, now_unix_ms: c.now_unix_ms })
            .await?;
        Ok(Response::new(pb::AcknowledgeCaseResponse { position: position(&outcome) }))
    }

    async fn record_progress(
        &self,
        request: Request<pb::RecordProgressRequest>,
    ) -> Result<Response<pb::RecordProgressResponse>, Status> {
        let access = access(&request)?;
        let who = access.subject().to_string();
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("case_id", &r.case_id);
        let by = owner(&mut v, "acting_as", r.acting_as.as_ref());
        let notes = v.text("notes", &r.notes, 1, 2000);
        v.finish()?;
        self.dispatch.authorise_as(&access, &by).await?;
        let outcome = self
            .dispatch
            .act(&id, command_id, who, |c| CaseCommand::RecordProgress { by, notes, now_unix_ms: c.now_unix_ms })
            .await?;
        Ok(Response::new(pb::RecordProgressResponse { position: position(&outcome) }))
    }

    async fn hand_back_case(
        &self,
        request: Request<pb::HandBackCaseRequest>,
    ) -> Result<Response<pb::HandBackCaseResponse>, Status> {
        let access = access(&request)?;
        let who = access.subject().to_string();
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("case_id", &r.case_id);
        let by = owner(&mut v, "acting_as", r.acting_as.as_ref());
        let reason = v.text("reason", &r.reason, 1, 500);
        v.finish()?;
        self.dispatch.authorise_as(&access, &by).await?;
        let outcome =
            self.dispatch.act(&id, command_id, who, |clock| CaseCommand::HandBack { by, reason, clock }).await?;
        Ok(Response::new(pb::HandBackCaseResponse { position: position(&outcome) }))
    }

    async fn assign_case(
        &self,
        request: Request<pb::AssignCaseRequest>,
    ) -> Result<Response<pb::AssignCaseResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("case_id", &r.case_id);
        let expected = owner(&mut v, "expected_owner", r.expected_owner.as_ref());
        let to = owner(&mut v, "to", r.to.as_ref());
        v.finish()?;
        let to_district = match pb::Tier::try_from(to.tier).unwrap_or_default() {
            pb::Tier::Department => {
                self.dispatch.check_departments([("to.id".to_string(), to.id.as_str())]).await?;
                None
            }
            pb::Tier::Grid | pb::Tier::Community | pb::Tier::Street => {
                Some(self.dispatch.check_unit("to.id", &to).await?)
            }
            // A district's own dispatch centre: its id is the district's.
            _ => Some(to.id.clone()),
        };
        let outcome = self
            .dispatch
            .act(&id, command_id, who, |clock| CaseCommand::Reassign { expected, to, to_district, clock })
            .await?;
        Ok(Response::new(pb::AssignCaseResponse { position: position(&outcome) }))
    }

    async fn merge_case(
        &self,
        request: Request<pb::MergeCaseRequest>,
    ) -> Result<Response<pb::MergeCaseResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("case_id", &r.case_id);
        let into = v.id("into_case_id", &r.into_case_id);
        let reason = v.text("reason", &r.reason, 1, 500);
        v.finish()?;
        let outcome = self.dispatch.merge(&id, &into, command_id, who, reason).await?;
        Ok(Response::new(pb::MergeCaseResponse { position: position(&outcome) }))
    }

    async fn blow_whistle(
        &self,
        request: Request<pb::BlowWhistleRequest>,
    ) -> Result<Response<pb::BlowWhistleResponse>, Status> {
        let access = access(&request)?;
        let who = access.subject().to_string();
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("case_id", &r.case_id);
        let by = owner(&mut v, "acting_as", r.acting_as.as_ref());
        if r.departments.is_empty() || r.departments.len() > 10 {
            v.add("departments", "must name 1-10 departments");
        }
        for (i, d) in r.departments.iter().enumerate() {
            v.id(&format!("departments[{i}]"), d);
            if r.departments[..i].contains(d) {
                v.add(format!("departments[{i}]"), format!("{d} is named twice"));
            }
        }
        v.finish()?;
        self.dispatch.authorise_as(&access, &by).await?;
        self.dispatch
            .check_departments(r.departments.iter().enumerate().map(|(i, d)| (format!("departments[{i}]"), d.as_str())))
            .await?;
        let departments = r.departments;
        let outcome = self
            .dispatch
            .act(&id, command_id, who, |clock| CaseCommand::BlowWhistle { by, departments, clock })
            .await?;
        let report_by = outcome
            .events
            .iter()
            .find_map(|e| match e {
                CaseEvent::WhistleBlown(w) => Some(w.acknowledge_by_unix_ms),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Response::new(pb::BlowWhistleResponse { position: position(&outcome), report_by_unix_ms: report_by }))
    }

    async fn report_for_duty(
        &self,
        request: Request<pb::ReportForDutyRequest>,
    ) -> Result<Response<pb::ReportForDutyResponse>, Status> {
        let access = access(&request)?;
        let who = access.subject().to_string();
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("case_id", &r.case_id);
        let department = v.id("department", &r.department);
        v.finish()?;
        access.require(&[Target::Department(&department)])?;
        let outcome = self
            .dispatch
            .act(&id, command_id, who, |c| CaseCommand::ReportForDuty { department, now_unix_ms: c.now_unix_ms })
            .await?;
        Ok(Response::new(pb::ReportForDutyResponse { position: position(&outcome) }))
    }

    async fn resolve_case(
        &self,
        request: Request<pb::ResolveCaseRequest>,
    ) -> Result<Response<pb::ResolveCaseResponse>, Status> {
        let access = access(&request)?;
        let who = access.subject().to_string();
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("case_id", &r.case_id);
        let by = owner(&mut v, "acting_as", r.acting_as.as_ref());
        let notes = v.text("notes", &r.notes, 1, 2000);
        v.finish()?;
        self.dispatch.authorise_as(&access, &by).await?;
        let outcome =
            self.dispatch.act(&id, command_id, who, |clock| CaseCommand::Resolve { by, notes, clock }).await?;
        Ok(Response::new(pb::ResolveCaseResponse { position: position(&outcome) }))
    }

    async fn verify_case(
        &self,
        request: Request<pb::VerifyCaseRequest>,
    ) -> Result<Response<pb::VerifyCaseResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("case_id", &r.case_id);
        let rating = pb::Rating::try_from(r.rating).unwrap_or(pb::Rating::Unspecified);
        if rating == pb::Rating::Unspecified {
            v.add("rating", "must be satisfied, basically satisfied or unsatisfied");
        }
        let solved = match pb::ResolutionAnswer::try_from(r.solved).unwrap_or(pb::ResolutionAnswer::Unspecified) {
            pb::ResolutionAnswer::Solved => true,
            pb::ResolutionAnswer::NotSolved => false,
            pb::ResolutionAnswer::Unspecified => {
                v.add("solved", "must be solved or not solved: asked apart from satisfaction");
                false
            }
        };
        let by = Rater::parse(&r.by);
        if by.is_none() {
            v.add(
                "by",
                "must be \"reporter\", \"staff:<id>\" or a linked report's reporter \"reporter:<report id>\": only they may rate",
            );
        }
        let comment = v.text("comment", &r.comment, 0, 1000);
        v.finish()?;
        let by = by.unwrap_or(Rater::Reporter);
        let (comment, sealed_comment) = self.dispatch.seal_comment(&id, &by, comment).await?;
        let outcome = self
            .dispatch
            .act(&id, command_id, who, |clock| CaseCommand::Verify {
                rating,
                solved,
                by,
                comment,
                sealed_comment,
                clock,
            })
            .await?;
        let reopened = outcome.events.iter().any(|e| matches!(e, CaseEvent::Reopened(_)));
        let closed = outcome.events.iter().any(|e| matches!(e, CaseEvent::Closed(_)));
        Ok(Response::new(pb::VerifyCaseResponse {
            position: position(&outcome),
            outcome: match (reopened, closed) {
                (true, _) => "reopened",
                (_, true) => "closed",
                _ => "recorded",
            }
            .into(),
        }))
    }
}

/// The gRPC face of the rulebook: the city's rules as data.
pub struct RulebookGrpc {
    dispatch: Dispatch,
}

impl RulebookGrpc {
    /// Serve `dispatch`'s rulebook.
    pub fn new(dispatch: Dispatch) -> Self {
        Self { dispatch }
    }
}

#[tonic::async_trait]
impl RulebookService for RulebookGrpc {
    async fn publish_rulebook(
        &self,
        request: Request<pb::PublishRulebookRequest>,
    ) -> Result<Response<pb::PublishRulebookResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let book = r.rulebook.unwrap_or_default();
        if book.note.chars().count() > 2000 {
            v.add("rulebook.note", "must be at most 2000 characters");
        }
        v.finish()?;
        let (version, outcome) = self.dispatch.publish_rulebook(command_id, who, &book, r.expected_version).await?;
        Ok(Response::new(pb::PublishRulebookResponse {
            version,
            position: Some(pb::CommitPosition { sequence: outcome.sequence, replayed: outcome.replayed }),
        }))
    }

    async fn get_rulebook(
        &self,
        request: Request<pb::GetRulebookRequest>,
    ) -> Result<Response<pb::GetRulebookResponse>, Status> {
        let r = request.into_inner();
        let in_force = self.dispatch.in_force().await?;
        // The number to publish over: the last published, even one this
        // build cannot read (the version in force is then the latest it can).
        let current_version = in_force.book.current_version();
        let wanted = if r.version == 0 { in_force.rules().version } else { r.version };
        let rules = in_force.version(wanted).ok_or_else(|| {
            Status::from(gridwork_runtime::ServiceError::NotFound(format!(
                "version: rulebook version {wanted} does not exist (in force: {current_version})"
            )))
        })?;
        Ok(Response::new(pb::GetRulebookResponse { rulebook: Some(rules.published.clone()), current_version }))
    }

    async fn publish_calendar_year(
        &self,
        request: Request<pb::PublishCalendarYearRequest>,
    ) -> Result<Response<pb::PublishCalendarYearResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let year = r.year.unwrap_or_default();
        if year.note.chars().count() > 2000 {
            v.add("year.note", "must be at most 2000 characters");
        }
        v.finish()?;
        let (revision, outcome) = self.dispatch.publish_calendar_year(command_id, who, &year).await?;
        Ok(Response::new(pb::PublishCalendarYearResponse {
            revision,
            position: Some(pb::CommitPosition { sequence: outcome.sequence, replayed: outcome.replayed }),
        }))
    }

    async fn get_calendar_year(
        &self,
        request: Request<pb::GetCalendarYearRequest>,
    ) -> Result<Response<pb::GetCalendarYearResponse>, Status> {
        let r = request.into_inner();
        if !(2000..=2100).contains(&r.year) {
            return Err(gridwork_runtime::ServiceError::invalid("year", "must be 2000-2100").into());
        }
        Ok(Response::new(pb::GetCalendarYearResponse { year: Some(self.dispatch.calendar_year(r.year).await?) }))
    }
}
