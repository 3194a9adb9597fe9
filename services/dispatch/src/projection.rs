//! Dispatch's consumers.
//!
//! - [`Incoming`] reads `INTAKE`: keeps what routing needs from each report
//!   (`dispatch_incoming`) and, on `IncidentAccepted`, opens the case — the
//!   process manager, a [`Reactor`]: its position is stored with its rows, it
//!   is never rebuilt, and the case command is idempotent (the case id is the
//!   incident id, the command id `open-<incident>`, and `Open` on an open case
//!   does nothing), so a crash between opening and storing the position opens
//!   the case once.
//! - [`Cases`] reads `DISPATCH` into `dispatch_cases`, `dispatch_deadlines` (the
//!   scheduler's input and the overdue list's), `dispatch_summonses` (the
//!   departments' queues), `dispatch_ratings` and `dispatch_timeline`.

use gridwork_eventstore::projection::{ApplyError, Projection, TableDef, Tables, UnknownEvents};
use gridwork_eventstore::{CommandMeta, Reactor, RecordedCommit, Repository};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::intake::v1 as intake_pb;
use prost::Message as _;
use sqlx::{AnyConnection, AssertSqlSafe};

use crate::domain::case::{Case, CaseCommand, CaseEvent, CaseRejection, Clock, Rater, label};
use crate::domain::deadline::DeadlineId;
use crate::domain::routing::{Area, FirstTier, route};
use crate::policy::Policy;

/// What routing needs from a report.
pub const INCOMING: TableDef = TableDef {
    name: "dispatch_incoming",
    columns: "(incident_id TEXT PRIMARY KEY, category_code TEXT NOT NULL, priority BIGINT NOT NULL, emergency BIGINT NOT NULL, \
              district_id TEXT NOT NULL, street_id TEXT NOT NULL, community_id TEXT NOT NULL, grid_id TEXT NOT NULL)",
    indexes: &[],
};

/// The process manager from accepted incidents to cases.
pub struct Incoming {
    /// Cases.
    pub cases: Repository<Case>,
    /// The rules and calendar in force.
    pub policy: Policy,
}

impl Reactor for Incoming {
    fn name(&self) -> &str {
        "dispatch_incoming"
    }

    /// Its memory of what routing needs from each report.
    fn tables(&self) -> &'static [TableDef] {
        &[INCOMING]
    }

    /// Another context's stream: an event type added there is not this
    /// service's business until it is taught to read it. Skipped for good (a
    /// reactor is never rebuilt): cases open on `IncidentAccepted` alone, which
    /// this build reads.
    fn unknown_events(&self) -> UnknownEvents {
        UnknownEvents::Skip
    }

    async fn react(&self, tx: &mut AnyConnection, commit: &RecordedCommit) -> Result<(), ApplyError> {
        if !commit.subject.starts_with("intake.incident.") {
            return Ok(());
        }
        let table = INCOMING.name;
        let id = commit.aggregate_id();
        for e in commit.events_at_version(1)? {
            let decode = |err: prost::DecodeError| gridwork_eventstore::DecodeError::new(e.event_type.clone(), err);
            match e.event_type.as_str() {
                "intake.incident.reported" => {
                    let r = intake_pb::IncidentReported::decode(e.payload.as_slice()).map_err(decode)?;
                    let p = r.grid_path.unwrap_or_default();
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {table} (incident_id, category_code, priority, emergency, district_id, street_id, community_id, grid_id) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (incident_id) DO NOTHING"
                    )))
                    .bind(id)
                    .bind(&r.category_code)
                    .bind(i64::from(r.priority))
                    .bind(i64::from(r.emergency))
                    .bind(&p.district_id)
                    .bind(&p.street_id)
                    .bind(&p.community_id)
                    .bind(&p.grid_id)
                    .execute(&mut *tx)
                    .await?;
                }
                "intake.incident.priority_raised" => {
                    let r = intake_pb::PriorityRaised::decode(e.payload.as_slice()).map_err(decode)?;
                    sqlx::query(AssertSqlSafe(format!("UPDATE {table} SET priority = $1 WHERE incident_id = $2")))
                        .bind(i64::from(r.priority))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    // An accepted incident's case is open: speed it up too. (Before
                    // acceptance the row above is enough: the case opens at the new
                    // priority.) An unopened case makes this a no-op.
                    let command_id = format!("priority-{id}-{}", commit.sequence);
                    let at = commit.body.decided_at_unix_ms;
                    self.raise_priority(tx, table, id, r.priority, &r.reason, at, command_id).await?;
                }
                // Triage's corrections come before acceptance: the case opens
                // with what triage settled on.
                "intake.incident.reclassified" => {
                    let r = intake_pb::IncidentReclassified::decode(e.payload.as_slice()).map_err(decode)?;
                    sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {table} SET category_code = $1, emergency = $2, priority = $3 WHERE incident_id = $4"
                    )))
                    .bind(&r.category_code)
                    .bind(i64::from(r.emergency))
                    .bind(i64::from(r.priority))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                "intake.incident.relocated" => {
                    let r = intake_pb::IncidentRelocated::decode(e.payload.as_slice()).map_err(decode)?;
                    let p = r.grid_path.unwrap_or_default();
                    sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {table} SET district_id = $1, street_id = $2, community_id = $3, grid_id = $4 WHERE incident_id = $5"
                    )))
                    .bind(&p.district_id)
                    .bind(&p.street_id)
                    .bind(&p.community_id)
                    .bind(&p.grid_id)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                "intake.incident.priority_reassessed" => {
                    let r = intake_pb::PriorityReassessed::decode(e.payload.as_slice()).map_err(decode)?;
                    sqlx::query(AssertSqlSafe(format!("UPDATE {table} SET priority = $1 WHERE incident_id = $2")))
                        .bind(i64::from(r.priority))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                "intake.incident.accepted" => {
                    let accepted = intake_pb::IncidentAccepted::decode(e.payload.as_slice()).map_err(decode)?;
                    self.open_case(tx, table, id, accepted.at_unix_ms, accepted.settled).await?;
                }
                // A "me too" linked after acceptance (those before travel with
                // it): its account reaches the handler, and its reporter may
                // rate. Before acceptance there is no case yet: a no-op.
                "intake.incident.report_linked" => {
                    let linked = intake_pb::ReportLinked::decode(e.payload.as_slice()).map_err(decode)?;
                    // Linked while the original awaited triage: no case to
                    // send it to (its acceptance, later on the same subject,
                    // carries the account). Asking would cost round trips per
                    // me-too and hold this reactor back under a busy day.
                    if linked.original_in_triage {
                        continue;
                    }
                    let report = match linked.report {
                        Some(r) => case_report(r),
                        None => pb::CaseReportLinked {
                            report_id: linked.report_id.clone(),
                            reported_at_unix_ms: linked.at_unix_ms,
                            ..Default::default()
                        },
                    };
                    self.link_report(id, report, commit).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A linked report's account as the case keeps it: the source named, each
/// attribute as "code: value", media as their URLs.
fn case_report(r: intake_pb::LinkedReport) -> pb::CaseReportLinked {
    use intake_pb::attribute_value::Value;
    let attributes = r
        .attributes
        .into_iter()
        .map(|a| {
            let value = match a.value {
                Some(Value::Text(t)) => t,
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::DatetimeUnixMs(ms)) => {
                    let t = gridwork_runtime::clock::city_time(ms);
                    format!("{} {:02}:{:02}", t.date(), t.hour(), t.minute())
                }
                Some(Value::Selected(s)) => s.values.join(", "),
                None => String::new(),
            };
            format!("{}: {value}", a.code)
        })
        .collect();
    let source = intake_pb::Source::try_from(r.source).unwrap_or(intake_pb::Source::Unspecified);
    pb::CaseReportLinked {
        report_id: r.report_id,
        source: source.as_str_name().trim_start_matches("SOURCE_").to_lowercase().replace('_', " "),
        description: r.description,
        attributes,
        address_text: r.address_text,
        // Copied sealed, under the report's own key in intake: opened when
        // the case is read, erased with the report.
        sealed_description: r.sealed_description,
        sealed_address_text: r.sealed_address_text,
        media: r.media.into_iter().map(|m| m.url).collect(),
        reported_at_unix_ms: r.reported_at_unix_ms,
    }
}

impl Incoming {
    /// Link `report` to `id`'s case, if it is open (idempotent by report).
    async fn link_report(
        &self,
        id: &str,
        report: pb::CaseReportLinked,
        commit: &RecordedCommit,
    ) -> Result<(), ApplyError> {
        let meta = CommandMeta {
            command_id: format!("link-{id}-{}", report.report_id),
            principal: "service:dispatch".into(),
            decided_at_unix_ms: commit.body.decided_at_unix_ms,
            request_digest: 0,
        };
        match self.cases.execute(id, &CaseCommand::LinkReport { report }, &meta).await {
            Ok(_) => Ok(()),
            // No case: the incident is not accepted (yet, or ever).
            Err(gridwork_eventstore::ExecuteError::Rejected(CaseRejection::InvalidTransition { .. })) => Ok(()),
            Err(gridwork_eventstore::ExecuteError::Rejected(r)) => Err(ApplyError::Invalid(r.to_string())),
            Err(gridwork_eventstore::ExecuteError::Store(s)) => Err(ApplyError::from_store(s)),
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn raise_priority(
        &self,
        tx: &mut AnyConnection,
        table: &str,
        id: &str,
        priority: i32,
        reason: &str,
        at: i64,
        command_id: String,
    ) -> Result<(), ApplyError> {
        let row: Option<(String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT category_code, emergency FROM {table} WHERE incident_id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((category, emergency)) = row else { return Ok(()) };
        // The case keeps the plan of the rulebook version it was routed under.
        let case = self.cases.load(id).await.map_err(ApplyError::from_store)?.state;
        let Some(opened) = case.opened else { return Ok(()) };
        let version = opened.routing.as_ref().map_or(0, |r| r.rulebook_version);
        let in_force = self.policy.in_force().await.map_err(ApplyError::from_store)?;
        let command = CaseCommand::RaisePriority {
            priority,
            reason: reason.to_string(),
            clock: Clock {
                now_unix_ms: at,
                plan: in_force.plan(version, &category, priority, emergency != 0),
                calendar: in_force.calendar.clone(),
            },
        };
        let meta =
            CommandMeta { command_id, principal: "service:dispatch".into(), decided_at_unix_ms: at, request_digest: 0 };
        self.cases.execute(id, &command, &meta).await.map_err(|e| match e {
            gridwork_eventstore::ExecuteError::Store(s) => ApplyError::from_store(s),
            gridwork_eventstore::ExecuteError::Rejected(r) => ApplyError::Invalid(r.to_string()),
        })?;
        Ok(())
    }

    async fn open_case(
        &self,
        tx: &mut AnyConnection,
        table: &str,
        id: &str,
        accepted_at: i64,
        settled: Option<intake_pb::AcceptedIncident>,
    ) -> Result<(), ApplyError> {
        let possibly_same_as = settled.as_ref().map(|s| s.possibly_same_as.clone()).unwrap_or_default();
        // Each linked report's account (the first ones), and the ids of the
        // rest: every linked reporter may rate the case.
        let reports: Vec<pb::CaseReportLinked> = settled
            .as_ref()
            .map(|s| {
                let accounts = s.linked.iter().cloned().map(case_report);
                let more =
                    s.more_linked.iter().map(|id| pb::CaseReportLinked { report_id: id.clone(), ..Default::default() });
                accounts.chain(more).collect()
            })
            .unwrap_or_default();
        type Row = (String, i64, i64, String, String, String, String);
        // What triage settled travels with the acceptance: the case never
        // depends on this reactor having understood every correction before it.
        // Acceptances written before that read the reactor's own row.
        let row: Option<Row> = match settled.filter(|s| !s.category_code.is_empty()) {
            Some(s) => {
                let p = s.grid_path.unwrap_or_default();
                Some((
                    s.category_code,
                    i64::from(s.priority),
                    i64::from(s.emergency),
                    p.district_id,
                    p.street_id,
                    p.community_id,
                    p.grid_id,
                ))
            }
            None => sqlx::query_as(AssertSqlSafe(format!(
                "SELECT category_code, priority, emergency, district_id, street_id, community_id, grid_id FROM {table} \
                     WHERE incident_id = $1"
            )))
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?,
        };
        let (category, priority, emergency, district, street, community, grid) =
            row.ok_or_else(|| ApplyError::Invalid(format!("accepted incident {id} was never reported")))?;
        let emergency = emergency != 0;
        let area = Area {
            district: district.clone(),
            street: street.clone(),
            community: community.clone(),
            grid: grid.clone(),
        };
        let in_force = self.policy.in_force().await.map_err(ApplyError::from_store)?;
        let rules = in_force.rules();
        // Every published rulebook has a catch-all rule, so this finds one.
        let routed = route(&rules.rules, &category, &area)
            .ok_or_else(|| ApplyError::Invalid(format!("no routing rule for {category}")))?;
        let mut first = match routed.rule.first_tier {
            FirstTier::Grid => pb::Owner { tier: pb::Tier::Grid as i32, id: grid.clone() },
            FirstTier::Community => pb::Owner { tier: pb::Tier::Community as i32, id: community.clone() },
            FirstTier::Street => pb::Owner { tier: pb::Tier::Street as i32, id: street.clone() },
        };
        // A grid with no head in post, or whose head's certificate has expired
        // on the day of acceptance, cannot take the case: its community does
        // (兜底), and the case says why. A grid the tree copy does not hold yet
        // keeps the case.
        let mut fallback = String::new();
        if first.tier == pb::Tier::Grid as i32
            && !community.is_empty()
            && let Some(unit) = crate::grid::unit(tx, &grid).await?
            && let Some(why) = unit.no_head(&gridwork_runtime::clock::city_today(accepted_at).to_string())
        {
            fallback = why;
            first = pb::Owner { tier: pb::Tier::Community as i32, id: community.clone() };
        }
        let opened = pb::CaseOpened {
            incident_id: id.to_string(),
            category_code: category.clone(),
            priority: priority as i32,
            emergency,
            grid_id: grid,
            community_id: community,
            street_id: street,
            district_id: district,
            routing: Some(pb::RoutingDecision {
                rule_id: routed.rule.id.clone(),
                explanation: match fallback.as_str() {
                    "" => format!("{} (rulebook version {})", routed.explanation, rules.version),
                    why => {
                        format!("{} (rulebook version {}); {why}: to its community", routed.explanation, rules.version)
                    }
                },
                rulebook_version: rules.version,
                fallback,
            }),
            department: routed.rule.department.clone(),
            // The case's clocks and opening time are set by `Open`, from the
            // acceptance time.
            deadlines: Vec::new(),
            possibly_same_as,
            opened_at_unix_ms: 0,
        };
        let command = CaseCommand::Open {
            opened: Box::new(opened),
            owner: first,
            summon: if emergency { routed.rule.emergency_departments.clone() } else { Vec::new() },
            reports,
            clock: Clock {
                now_unix_ms: accepted_at,
                calendar: in_force.calendar.clone(),
                plan: rules.sla.plan_for(&category, priority as i32, emergency),
            },
        };
        let meta = CommandMeta {
            command_id: format!("open-{id}"),
            principal: "service:dispatch".into(),
            decided_at_unix_ms: accepted_at,
            request_digest: 0,
        };
        self.cases.execute(id, &command, &meta).await.map_err(|e| match e {
            gridwork_eventstore::ExecuteError::Store(s) => ApplyError::from_store(s),
            gridwork_eventstore::ExecuteError::Rejected(r) => ApplyError::Invalid(r.to_string()),
        })?;
        Ok(())
    }
}

/// Cases.
pub const CASES: TableDef = TableDef {
    name: "dispatch_cases",
    columns: "(case_id TEXT PRIMARY KEY, status TEXT NOT NULL, owner_tier BIGINT NOT NULL, owner_id TEXT NOT NULL, \
              category_code TEXT NOT NULL, priority BIGINT NOT NULL, emergency BIGINT NOT NULL, grid_id TEXT NOT NULL, \
              community_id TEXT NOT NULL, street_id TEXT NOT NULL, district_id TEXT NOT NULL, department TEXT NOT NULL, \
              rule_id TEXT NOT NULL, routing TEXT NOT NULL, assignment BIGINT NOT NULL, rating BIGINT NOT NULL, \
              breaches BIGINT NOT NULL, opened_at_ms BIGINT NOT NULL, closed_at_ms BIGINT NOT NULL, position BIGINT NOT NULL, \
              round BIGINT NOT NULL, supervised BIGINT NOT NULL, close_outcome BIGINT NOT NULL, \
              opened_day TEXT NOT NULL, case_number TEXT NOT NULL, rulebook_version BIGINT NOT NULL, fallback TEXT NOT NULL, \
              possibly_same_as TEXT NOT NULL, merged_into TEXT NOT NULL)",
    indexes: &[
        "owner_tier, owner_id, status",
        "status",
        "case_number",
        "opened_at_ms, case_id",
        "opened_day",
        "street_id",
        "community_id",
        "grid_id",
    ],
};

/// Deadlines. `scope`: case, owner, rating or summons. `state`: pending, met,
/// met_late (met after its breach), breached, superseded (its owner changed or
/// its summons ended) or expired (a rating window that passed).
pub const DEADLINES: TableDef = TableDef {
    name: "dispatch_deadlines",
    columns: "(case_id TEXT NOT NULL, deadline_id TEXT NOT NULL, kind BIGINT NOT NULL, scope TEXT NOT NULL, due_ms BIGINT NOT NULL, \
              owner_tier BIGINT NOT NULL, owner_id TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (case_id, deadline_id))",
    indexes: &["state, due_ms", "scope, state, due_ms"],
};

/// Summonses: a department's work items, one row per department per whistle.
pub const SUMMONSES: TableDef = TableDef {
    name: "dispatch_summonses",
    columns: "(case_id TEXT NOT NULL, department TEXT NOT NULL, whistle BIGINT NOT NULL, status BIGINT NOT NULL, \
              report_by_ms BIGINT NOT NULL, summoned_at_ms BIGINT NOT NULL, updated_at_ms BIGINT NOT NULL, position BIGINT NOT NULL, \
              PRIMARY KEY (case_id, department, whistle))",
    indexes: &["department, status, report_by_ms"],
};

/// Ratings: per round, the deciding one (the reporter's, or staff's for
/// them) and each linked reporter's.
pub const RATINGS: TableDef = TableDef {
    name: "dispatch_ratings",
    columns: "(case_id TEXT NOT NULL, round BIGINT NOT NULL, rating BIGINT NOT NULL, solved BIGINT NOT NULL, rated_by TEXT NOT NULL, \
              comment TEXT NOT NULL, at_ms BIGINT NOT NULL, decides BIGINT NOT NULL, sealed_comment TEXT NOT NULL, \
              PRIMARY KEY (case_id, round, rated_by))",
    indexes: &[],
};

/// The "me too" reports linked to a case, each reporter's own account.
/// `attributes` and `media` are newline-separated.
pub const REPORTS: TableDef = TableDef {
    name: "dispatch_case_reports",
    columns: "(case_id TEXT NOT NULL, report_id TEXT NOT NULL, source TEXT NOT NULL, description TEXT NOT NULL, \
              attributes TEXT NOT NULL, address_text TEXT NOT NULL, media TEXT NOT NULL, reported_at_ms BIGINT NOT NULL, \
              position BIGINT NOT NULL, sealed_description TEXT NOT NULL, sealed_address_text TEXT NOT NULL, \
              PRIMARY KEY (case_id, report_id))",
    indexes: &[],
};

/// The timeline.
pub const TIMELINE: TableDef = TableDef {
    name: "dispatch_timeline",
    columns: "(case_id TEXT NOT NULL, sequence BIGINT NOT NULL, idx BIGINT NOT NULL, at_ms BIGINT NOT NULL, event_type TEXT NOT NULL, \
              summary TEXT NOT NULL, principal TEXT NOT NULL, PRIMARY KEY (case_id, sequence, idx))",
    indexes: &[],
};

/// Projects `DISPATCH`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cases;

/// "tier id", for people.
pub fn owner_label(o: &Option<pb::Owner>) -> String {
    label(&o.clone().unwrap_or_default())
}

fn summary(event: &CaseEvent) -> (&'static str, String) {
    match event {
        CaseEvent::Opened(o) => ("opened", format!("opened: {}", o.routing.clone().unwrap_or_default().explanation)),
        CaseEvent::Assigned(a) => ("assigned", format!("assigned to {} ({})", owner_label(&a.owner), a.reason)),
        CaseEvent::Acknowledged(a) => ("acknowledged", format!("acknowledged by {}", owner_label(&a.owner))),
        CaseEvent::ProgressRecorded(p) => ("progress", format!("{}: {}", owner_label(&p.owner), p.notes)),
        CaseEvent::HandedBack(h) => ("handed_back", format!("handed back by {}: {}", owner_label(&h.owner), h.reason)),
        CaseEvent::SlaBreached(b) => (
            "sla_breached",
            format!("deadline {} missed by {}", b.deadline.clone().unwrap_or_default().id, owner_label(&b.owner)),
        ),
        CaseEvent::SupervisionOpened(s) => {
            ("supervision_opened", format!("district {} supervises: {}", s.district_id, s.reason))
        }
        CaseEvent::WhistleBlown(w) => ("whistle_blown", format!("street summoned {}", w.departments.join(", "))),
        CaseEvent::DepartmentReported(d) => ("department_reported", format!("{} reported for duty", d.department)),
        CaseEvent::SummonsProgressRecorded(p) => ("summons_progress", format!("{}: {}", p.department, p.notes)),
        CaseEvent::SummonsCompleted(c) => {
            ("summons_completed", format!("{} completed its part: {}", c.department, c.notes))
        }
        CaseEvent::SummonsReleased(r) => {
            ("summons_released", format!("{} released by {}: {}", r.department, owner_label(&r.by), r.reason))
        }
        CaseEvent::Resolved(r) => ("resolved", format!("resolved by {}: {}", owner_label(&r.owner), r.notes)),
        CaseEvent::Verified(v) => (
            "verified",
            format!(
                "rated {} ({}) by {}",
                rating_label(v.rating),
                match pb::ResolutionAnswer::try_from(v.solved).unwrap_or(pb::ResolutionAnswer::Unspecified) {
                    pb::ResolutionAnswer::Solved => "solved",
                    pb::ResolutionAnswer::NotSolved => "not solved",
                    pb::ResolutionAnswer::Unspecified => "solved? not asked",
                },
                v.by
            ),
        ),
        CaseEvent::Closed(c) if c.outcome == pb::CloseOutcome::NotRated as i32 => {
            ("closed", "closed, not rated: the rating window passed".into())
        }
        CaseEvent::Closed(c) if c.outcome == pb::CloseOutcome::Merged as i32 => ("closed", "closed, merged".into()),
        CaseEvent::Closed(_) => ("closed", "closed".into()),
        CaseEvent::Merged(m) => ("merged", format!("merged into {} by {}: {}", m.into_case_id, m.by, m.reason)),
        CaseEvent::ReportLinked(r) => (
            "report_linked",
            match r.source.as_str() {
                "" => format!("another report: {}", r.report_id),
                // A sealed account is read with the case, never copied here.
                source if r.description.is_empty() => format!("another report ({source}): {}", r.report_id),
                source => format!("another report ({source}): {}", r.description),
            },
        ),
        CaseEvent::Reopened(r) => ("reopened", format!("reopened: {}", r.reason)),
        CaseEvent::PriorityRaised(p) => (
            "priority_raised",
            format!("priority raised to {}: {} ({} clocks brought forward)", p.priority, p.reason, p.deadlines.len()),
        ),
    }
}

fn scope_of(d: &pb::Deadline) -> &'static str {
    DeadlineId::parse(&d.id).map_or("owner", |id| id.scope().label())
}

/// The id as this build spells it (events from older builds wrote `1:ack`,
/// `w1:police`), so a row written from an old event and one matched by a new
/// event are the same row.
fn normalised(id: &str) -> String {
    DeadlineId::parse(id).map_or_else(|| id.to_string(), |d| d.to_string())
}

/// `HL-20261123-0042`: the district id in capitals (letters and digits, at
/// most eight), the city date, the day's count in the district (four digits
/// or more).
pub fn case_number(district: &str, day: time::Date, n: i64) -> String {
    format!("{}{n:04}", case_number_stem(district, day))
}

/// `HL-20261123-`: every number of that prefix and day starts so.
fn case_number_stem(district: &str, day: time::Date) -> String {
    let prefix: String =
        district.chars().filter(char::is_ascii_alphanumeric).take(8).collect::<String>().to_ascii_uppercase();
    let prefix = if prefix.is_empty() { "C".to_string() } else { prefix };
    format!("{prefix}-{:04}{:02}{:02}-", day.year(), u8::from(day.month()), day.day())
}

/// Statements on one case's rows, inside the commit's transaction.
struct Rows<'a> {
    tx: &'a mut AnyConnection,
    cases: String,
    deadlines: String,
    summonses: String,
    id: &'a str,
    position: i64,
}

impl Rows<'_> {
    async fn run(&mut self, sql: String, binds: &[Bind<'_>]) -> Result<u64, ApplyError> {
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for b in binds {
            q = match b {
                Bind::Int(v) => q.bind(*v),
                Bind::Text(v) => q.bind(*v),
            };
        }
        Ok(q.execute(&mut *self.tx).await?.rows_affected())
    }

    /// The short number of the next case opened in `district` on `day` (city
    /// date): `HL-20261123-0042`. Taken in stream order, inside the commit's
    /// transaction, so a rebuild gives every case the same number again.
    /// Counted per number prefix, not per district id: two districts whose
    /// ids give the same prefix share one count, so no number is given twice.
    async fn next_case_number(&mut self, district: &str, day: time::Date) -> Result<String, ApplyError> {
        let stem = case_number_stem(district, day);
        let (count,): (i64,) = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT COUNT(*) FROM {} WHERE opened_day = $1 AND case_number LIKE $2",
            self.cases
        )))
        .bind(day.to_string())
        .bind(format!("{stem}%"))
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(case_number(district, day, count + 1))
    }

    /// Update the case row; it must exist.
    async fn case(&mut self, set: &str, binds: &[Bind<'_>]) -> Result<(), ApplyError> {
        let n = binds.len();
        let sql = format!(
            "UPDATE {} SET {set}{}position = ${} WHERE case_id = ${}",
            self.cases,
            if set.is_empty() { "" } else { ", " },
            n + 1,
            n + 2
        );
        let mut all = binds.to_vec();
        all.push(Bind::Int(self.position));
        all.push(Bind::Text(self.id));
        if self.run(sql, &all).await? != 1 {
            return Err(ApplyError::Invalid(format!("case {} unknown to the read model", self.id)));
        }
        Ok(())
    }

    async fn insert_deadline(&mut self, d: &pb::Deadline, owner: &pb::Owner) -> Result<(), ApplyError> {
        let sql = format!(
            "INSERT INTO {} (case_id, deadline_id, kind, scope, due_ms, owner_tier, owner_id, state) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending') \
             ON CONFLICT (case_id, deadline_id) DO UPDATE SET due_ms = excluded.due_ms, owner_tier = excluded.owner_tier, owner_id = excluded.owner_id, state = 'pending'",
            self.deadlines
        );
        let id = self.id;
        let deadline_id = normalised(&d.id);
        self.run(
            sql,
            &[
                Bind::Text(id),
                Bind::Text(&deadline_id),
                Bind::Int(i64::from(d.kind)),
                Bind::Text(scope_of(d)),
                Bind::Int(d.due_unix_ms),
                Bind::Int(i64::from(owner.tier)),
                Bind::Text(&owner.id),
            ],
        )
        .await?;
        Ok(())
    }

    /// Move deadlines from one state to another.
    async fn deadlines(&mut self, from: &str, to: &str, which: &str, binds: &[Bind<'_>]) -> Result<(), ApplyError> {
        let n = binds.len();
        let sql = format!(
            "UPDATE {} SET state = '{to}' WHERE case_id = ${} AND state = '{from}' AND {which}",
            self.deadlines,
            n + 1
        );
        let mut all = binds.to_vec();
        all.push(Bind::Text(self.id));
        self.run(sql, &all).await?;
        Ok(())
    }

    async fn summons(&mut self, department: &str, status: pb::SummonsStatus, at: i64) -> Result<(), ApplyError> {
        let sql = format!(
            "UPDATE {} SET status = $1, updated_at_ms = $2, position = $3 WHERE case_id = $4 AND department = $5 \
             AND whistle = (SELECT MAX(whistle) FROM {} WHERE case_id = $4 AND department = $5)",
            self.summonses, self.summonses
        );
        let (id, position) = (self.id, self.position);
        self.run(
            sql,
            &[Bind::Int(status as i64), Bind::Int(at), Bind::Int(position), Bind::Text(id), Bind::Text(department)],
        )
        .await?;
        let which = "scope = 'summons' AND owner_id = $1";
        if status == pb::SummonsStatus::Reported {
            self.deadlines("breached", "met_late", which, &[Bind::Text(department)]).await?;
        }
        self.deadlines(
            "pending",
            if status == pb::SummonsStatus::Reported { "met" } else { "superseded" },
            which,
            &[Bind::Text(department)],
        )
        .await
    }
}

#[derive(Debug, Clone, Copy)]
enum Bind<'a> {
    Int(i64),
    Text(&'a str),
}

impl Projection for Cases {
    fn name(&self) -> &str {
        "dispatch_cases"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[CASES, DEADLINES, SUMMONSES, RATINGS, REPORTS, TIMELINE]
    }

    /// 2: case-level clocks (deadline scope), summonses, ratings, supervision.
    /// 3: case numbers, opening day, indexes for the area lists.
    /// 4: the rulebook version and the routing fallback.
    /// 5: possibly the same as, merged into.
    /// 6: linked reports; linked reporters' ratings.
    /// 7: linked reports' accounts kept sealed (opened when read); rating
    /// comments likewise.
    fn version(&self) -> u32 {
        7
    }

    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        // The rulebook shares the stream; these tables are the cases'.
        if !commit.subject.starts_with("dispatch.case.") {
            return Ok(());
        }
        let id = commit.aggregate_id();
        let at = commit.body.decided_at_unix_ms;
        let principal = commit.principal().to_string();
        let timeline = tables.name(TIMELINE.name);
        let ratings = tables.name(RATINGS.name);
        let reports = tables.name(REPORTS.name);
        let mut rows = Rows {
            tx,
            cases: tables.name(CASES.name),
            deadlines: tables.name(DEADLINES.name),
            summonses: tables.name(SUMMONSES.name),
            id,
            position: commit.sequence as i64,
        };
        use Bind::{Int, Text};
        for (idx, event) in commit.decode_events::<CaseEvent>()?.into_iter().enumerate() {
            let (kind, summary) = summary(&event);
            match &event {
                CaseEvent::Opened(o) => {
                    let routing = o.routing.clone().unwrap_or_default();
                    let day = gridwork_runtime::clock::city_today(at);
                    let number = rows.next_case_number(&o.district_id, day).await?;
                    let sql = format!(
                        "INSERT INTO {} (case_id, status, owner_tier, owner_id, category_code, priority, emergency, grid_id, \
                         community_id, street_id, district_id, department, rule_id, routing, assignment, rating, breaches, \
                         opened_at_ms, closed_at_ms, position, round, supervised, close_outcome, opened_day, case_number, \
                         rulebook_version, fallback, possibly_same_as, merged_into) \
                         VALUES ($1, 'new', 0, '', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, 0, 0, $12, 0, $13, 1, 0, 0, $14, $15, \
                         $16, $17, $18, '')",
                        rows.cases
                    );
                    rows.run(
                        sql,
                        &[
                            Text(id),
                            Text(&o.category_code),
                            Int(i64::from(o.priority)),
                            Int(i64::from(o.emergency)),
                            Text(&o.grid_id),
                            Text(&o.community_id),
                            Text(&o.street_id),
                            Text(&o.district_id),
                            Text(&o.department),
                            Text(&routing.rule_id),
                            Text(&routing.explanation),
                            Int(at),
                            Int(rows.position),
                            Text(&day.to_string()),
                            Text(&number),
                            Int(i64::from(routing.rulebook_version)),
                            Text(&routing.fallback),
                            Text(&o.possibly_same_as),
                        ],
                    )
                    .await?;
                    for d in &o.deadlines {
                        rows.insert_deadline(d, &pb::Owner::default()).await?;
                    }
                }
                CaseEvent::PriorityRaised(p) => {
                    rows.case("priority = $1", &[Int(i64::from(p.priority))]).await?;
                    for d in &p.deadlines {
                        let sql = format!(
                            "UPDATE {} SET due_ms = $1 WHERE case_id = $2 AND deadline_id = $3 AND state = 'pending'",
                            rows.deadlines
                        );
                        let deadline_id = normalised(&d.id);
                        rows.run(sql, &[Int(d.due_unix_ms), Text(id), Text(&deadline_id)]).await?;
                    }
                }
                CaseEvent::Assigned(a) => {
                    let o = a.owner.clone().unwrap_or_default();
                    rows.case(
                        "status = 'assigned', owner_tier = $1, owner_id = $2, assignment = $3",
                        &[Int(i64::from(o.tier)), Text(&o.id), Int(i64::from(a.assignment))],
                    )
                    .await?;
                    // Events from before case clocks carried respond and resolve per assignment.
                    let legacy = a.deadlines.iter().any(|d| scope_of(d) == "case");
                    let which = if legacy { "scope IN ('owner', 'case')" } else { "scope = 'owner'" };
                    rows.deadlines("pending", "superseded", which, &[]).await?;
                    for d in &a.deadlines {
                        rows.insert_deadline(d, &o).await?;
                    }
                }
                CaseEvent::Acknowledged(_) => {
                    rows.case("status = 'acknowledged'", &[]).await?;
                    rows.deadlines("pending", "met", "scope = 'owner'", &[]).await?;
                }
                CaseEvent::ProgressRecorded(_) => {
                    rows.case("", &[]).await?;
                    let respond = format!("scope = 'case' AND kind = {}", pb::DeadlineKind::Respond as i32);
                    rows.deadlines("pending", "met", &respond, &[]).await?;
                    rows.deadlines("breached", "met_late", &respond, &[]).await?;
                }
                CaseEvent::SlaBreached(b) => {
                    rows.case("breaches = breaches + 1", &[]).await?;
                    let d = normalised(&b.deadline.clone().unwrap_or_default().id);
                    rows.deadlines("pending", "breached", "deadline_id = $1", &[Text(&d)]).await?;
                }
                CaseEvent::SupervisionOpened(_) => rows.case("supervised = 1", &[]).await?,
                CaseEvent::WhistleBlown(w) => {
                    for d in &w.departments {
                        let deadline = pb::Deadline {
                            id: DeadlineId::Summons { whistle: w.whistle, department: d.clone() }.to_string(),
                            kind: pb::DeadlineKind::Acknowledge as i32,
                            due_unix_ms: w.acknowledge_by_unix_ms,
                        };
                        rows.insert_deadline(
                            &deadline,
                            &pb::Owner { tier: pb::Tier::Department as i32, id: d.clone() },
                        )
                        .await?;
                        let sql = format!(
                            "INSERT INTO {} (case_id, department, whistle, status, report_by_ms, summoned_at_ms, updated_at_ms, position) \
                             VALUES ($1, $2, $3, $4, $5, $6, $6, $7)",
                            rows.summonses
                        );
                        let position = rows.position;
                        rows.run(
                            sql,
                            &[
                                Text(id),
                                Text(d),
                                Int(i64::from(w.whistle)),
                                Int(pb::SummonsStatus::Summoned as i64),
                                Int(w.acknowledge_by_unix_ms),
                                Int(at),
                                Int(position),
                            ],
                        )
                        .await?;
                    }
                    rows.case("", &[]).await?;
                }
                CaseEvent::DepartmentReported(d) => {
                    rows.summons(&d.department, pb::SummonsStatus::Reported, d.at_unix_ms).await?;
                    rows.case("", &[]).await?;
                }
                CaseEvent::SummonsProgressRecorded(_) => rows.case("", &[]).await?,
                CaseEvent::SummonsCompleted(c) => {
                    rows.summons(&c.department, pb::SummonsStatus::Completed, c.at_unix_ms).await?;
                    rows.case("", &[]).await?;
                }
                CaseEvent::SummonsReleased(r) => {
                    rows.summons(&r.department, pb::SummonsStatus::Released, r.at_unix_ms).await?;
                    rows.case("", &[]).await?;
                }
                CaseEvent::Resolved(r) => {
                    rows.case("status = 'resolved'", &[]).await?;
                    // As the aggregate: every clock still pending ends here.
                    rows.deadlines("pending", "met", "1 = 1", &[]).await?;
                    rows.deadlines("breached", "met_late", "scope = 'case'", &[]).await?;
                    if let Some(d) = &r.rate_by {
                        rows.insert_deadline(d, &pb::Owner::default()).await?;
                    }
                }
                CaseEvent::Verified(v) => {
                    // A linked reporter's rating is counted, and decides nothing.
                    let decides = !matches!(Rater::parse(&v.by), Some(Rater::LinkedReporter(_)));
                    if decides {
                        rows.case("rating = $1", &[Int(i64::from(v.rating))]).await?;
                        rows.deadlines("pending", "met", "scope = 'rating'", &[]).await?;
                    }
                    // Ratings from before rounds were recorded carry round 0: the
                    // case's current round is the one rated.
                    let round = if v.round > 0 {
                        i64::from(v.round).to_string()
                    } else {
                        format!("(SELECT round FROM {} WHERE case_id = $1)", rows.cases)
                    };
                    let sql = format!(
                        "INSERT INTO {ratings} (case_id, round, rating, solved, rated_by, comment, at_ms, decides, \
                         sealed_comment) VALUES ($1, {round}, $2, $3, $4, $5, $6, $7, $8) \
                         ON CONFLICT (case_id, round, rated_by) DO NOTHING"
                    );
                    let sealed_comment = gridwork_personal::to_column(v.sealed_comment.as_ref());
                    rows.run(
                        sql,
                        &[
                            Text(id),
                            Int(i64::from(v.rating)),
                            Int(i64::from(v.solved)),
                            Text(&v.by),
                            Text(&v.comment),
                            Int(if v.at_unix_ms > 0 { v.at_unix_ms } else { at }),
                            Int(i64::from(decides)),
                            Text(&sealed_comment),
                        ],
                    )
                    .await?;
                }
                CaseEvent::Closed(c) => {
                    rows.case(
                        "status = 'closed', closed_at_ms = $1, close_outcome = $2",
                        &[Int(c.at_unix_ms), Int(i64::from(c.outcome))],
                    )
                    .await?;
                    // A merged case met nothing: its clocks are the other case's now.
                    let to = match pb::CloseOutcome::try_from(c.outcome) {
                        Ok(pb::CloseOutcome::NotRated) => "expired",
                        Ok(pb::CloseOutcome::Merged) => "superseded",
                        _ => "met",
                    };
                    rows.deadlines("pending", to, "1 = 1", &[]).await?;
                }
                CaseEvent::Merged(m) => rows.case("merged_into = $1", &[Text(&m.into_case_id)]).await?,
                CaseEvent::ReportLinked(r) => {
                    let sql = format!(
                        "INSERT INTO {reports} (case_id, report_id, source, description, attributes, address_text, media, \
                         reported_at_ms, position, sealed_description, sealed_address_text) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                         ON CONFLICT (case_id, report_id) DO NOTHING"
                    );
                    let (attributes, media) = (r.attributes.join("\n"), r.media.join("\n"));
                    let sealed_description = gridwork_personal::to_column(r.sealed_description.as_ref());
                    let sealed_address_text = gridwork_personal::to_column(r.sealed_address_text.as_ref());
                    let position = rows.position;
                    rows.run(
                        sql,
                        &[
                            Text(id),
                            Text(&r.report_id),
                            Text(&r.source),
                            Text(&r.description),
                            Text(&attributes),
                            Text(&r.address_text),
                            Text(&media),
                            Int(r.reported_at_unix_ms),
                            Int(position),
                            Text(&sealed_description),
                            Text(&sealed_address_text),
                        ],
                    )
                    .await?;
                    rows.case("", &[]).await?;
                }
                CaseEvent::Reopened(r) => {
                    rows.case("round = round + 1, supervised = 0", &[]).await?;
                    for d in &r.deadlines {
                        rows.insert_deadline(d, &pb::Owner::default()).await?;
                    }
                }
                CaseEvent::HandedBack(_) => {}
            }
            let sql = format!(
                "INSERT INTO {timeline} (case_id, sequence, idx, at_ms, event_type, summary, principal) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            );
            let position = rows.position;
            rows.run(
                sql,
                &[Text(id), Int(position), Int(idx as i64), Int(at), Text(kind), Text(&summary), Text(&principal)],
            )
            .await?;
        }
        Ok(())
    }
}

/// Lower-case label of a rating.
pub fn rating_label(r: i32) -> &'static str {
    match pb::Rating::try_from(r).unwrap_or(pb::Rating::Unspecified) {
        pb::Rating::Satisfied => "satisfied",
        pb::Rating::BasicallySatisfied => "basically satisfied",
        pb::Rating::Unsatisfied => "unsatisfied",
        pb::Rating::Unspecified => "unrated",
    }
}
