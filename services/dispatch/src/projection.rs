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
//!   scheduler's input) and `dispatch_timeline`.

use std::sync::Arc;

use gridwork_eventstore::projection::{ApplyError, Projection, TableDef, Tables, UnknownEvents};
use gridwork_eventstore::{CommandMeta, Reactor, RecordedCommit, Repository};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::intake::v1 as intake_pb;
use prost::Message as _;
use sqlx::{AnyConnection, AssertSqlSafe};
use time::Duration;

use crate::domain::calendar::WorkingCalendar;
use crate::domain::case::{Case, CaseCommand, CaseEvent, Clock};
use crate::domain::routing::{Area, FirstTier, Rule, route, sla_plan_for};

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
    /// Routing rules.
    pub rules: Arc<Vec<Rule>>,
    /// Calendar.
    pub calendar: Arc<WorkingCalendar>,
    /// How long summoned departments have to report.
    pub summon_within: Duration,
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
                }
                "intake.incident.accepted" => {
                    let accepted = intake_pb::IncidentAccepted::decode(e.payload.as_slice()).map_err(decode)?;
                    self.open_case(tx, table, id, accepted.at_unix_ms).await?;
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Incoming {
    async fn open_case(
        &self,
        tx: &mut AnyConnection,
        table: &str,
        id: &str,
        accepted_at: i64,
    ) -> Result<(), ApplyError> {
        type Row = (String, i64, i64, String, String, String, String);
        let row: Option<Row> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT category_code, priority, emergency, district_id, street_id, community_id, grid_id FROM {table} WHERE incident_id = $1"
        )))
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let (category, priority, emergency, district, street, community, grid) =
            row.ok_or_else(|| ApplyError::Invalid(format!("accepted incident {id} was never reported")))?;
        let emergency = emergency != 0;
        let area = Area {
            district: district.clone(),
            street: street.clone(),
            community: community.clone(),
            grid: grid.clone(),
        };
        let routed = route(&self.rules, &category, &area)
            .ok_or_else(|| ApplyError::Invalid(format!("no routing rule for {category}")))?;
        let first = match routed.rule.first_tier {
            FirstTier::Grid => pb::Owner { tier: pb::Tier::Grid as i32, id: grid.clone() },
            FirstTier::Community => pb::Owner { tier: pb::Tier::Community as i32, id: community.clone() },
            FirstTier::Street => pb::Owner { tier: pb::Tier::Street as i32, id: street.clone() },
        };
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
                explanation: routed.explanation.clone(),
            }),
            department: routed.rule.department.clone(),
        };
        let command = CaseCommand::Open {
            opened: Box::new(opened),
            owner: first,
            summon: if emergency { routed.rule.emergency_departments.clone() } else { Vec::new() },
            summon_within: self.summon_within,
            clock: Clock {
                now_unix_ms: accepted_at,
                calendar: self.calendar.clone(),
                plan: sla_plan_for(&category, priority as i32, emergency),
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
              breaches BIGINT NOT NULL, opened_at_ms BIGINT NOT NULL, closed_at_ms BIGINT NOT NULL, position BIGINT NOT NULL)",
    indexes: &["owner_tier, owner_id, status", "status"],
};

/// Deadlines: pending, met, breached or superseded.
pub const DEADLINES: TableDef = TableDef {
    name: "dispatch_deadlines",
    columns: "(case_id TEXT NOT NULL, deadline_id TEXT NOT NULL, kind BIGINT NOT NULL, due_ms BIGINT NOT NULL, \
              owner_tier BIGINT NOT NULL, owner_id TEXT NOT NULL, state TEXT NOT NULL, PRIMARY KEY (case_id, deadline_id))",
    indexes: &["state, due_ms"],
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

fn owner_label(o: &Option<pb::Owner>) -> String {
    let o = o.clone().unwrap_or_default();
    let tier = match pb::Tier::try_from(o.tier).unwrap_or(pb::Tier::Unspecified) {
        pb::Tier::Grid => "grid",
        pb::Tier::Community => "community",
        pb::Tier::Street => "street",
        pb::Tier::Department => "department",
        pb::Tier::Unspecified => "?",
    };
    format!("{tier} {}", o.id)
}

impl Projection for Cases {
    fn name(&self) -> &str {
        "dispatch_cases"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[CASES, DEADLINES, TIMELINE]
    }

    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        let cases = tables.name(CASES.name);
        let deadlines = tables.name(DEADLINES.name);
        let timeline = tables.name(TIMELINE.name);
        let id = commit.aggregate_id();
        let position = commit.sequence as i64;
        let at = commit.body.decided_at_unix_ms;
        let principal = commit.principal().to_string();
        let exec = |sql: String| sqlx::query(AssertSqlSafe(sql));
        for (idx, event) in commit.decode_events::<CaseEvent>()?.into_iter().enumerate() {
            let (kind, summary) = match &event {
                CaseEvent::Opened(o) => {
                    ("opened", format!("opened: {}", o.routing.clone().unwrap_or_default().explanation))
                }
                CaseEvent::Assigned(a) => ("assigned", format!("assigned to {} ({})", owner_label(&a.owner), a.reason)),
                CaseEvent::Acknowledged(a) => ("acknowledged", format!("acknowledged by {}", owner_label(&a.owner))),
                CaseEvent::ProgressRecorded(p) => ("progress", format!("{}: {}", owner_label(&p.owner), p.notes)),
                CaseEvent::HandedBack(h) => {
                    ("handed_back", format!("handed back by {}: {}", owner_label(&h.owner), h.reason))
                }
                CaseEvent::SlaBreached(b) => (
                    "sla_breached",
                    format!(
                        "deadline {} missed by {}",
                        b.deadline.clone().unwrap_or_default().id,
                        owner_label(&b.owner)
                    ),
                ),
                CaseEvent::WhistleBlown(w) => {
                    ("whistle_blown", format!("street summoned {}", w.departments.join(", ")))
                }
                CaseEvent::DepartmentReported(d) => {
                    ("department_reported", format!("{} reported for duty", d.department))
                }
                CaseEvent::Resolved(r) => ("resolved", format!("resolved by {}: {}", owner_label(&r.owner), r.notes)),
                CaseEvent::Verified(v) => ("verified", format!("rated {} by {}", rating_label(v.rating), v.by)),
                CaseEvent::Closed(_) => ("closed", "closed".into()),
                CaseEvent::Reopened(r) => ("reopened", format!("reopened: {}", r.reason)),
            };
            match event {
                CaseEvent::Opened(o) => {
                    exec(format!(
                        "INSERT INTO {cases} (case_id, status, owner_tier, owner_id, category_code, priority, emergency, grid_id, \
                         community_id, street_id, district_id, department, rule_id, routing, assignment, rating, breaches, \
                         opened_at_ms, closed_at_ms, position) VALUES ($1, 'new', 0, '', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, 0, 0, 0, $12, 0, $13)"
                    ))
                    .bind(id)
                    .bind(&o.category_code)
                    .bind(i64::from(o.priority))
                    .bind(i64::from(o.emergency))
                    .bind(&o.grid_id)
                    .bind(&o.community_id)
                    .bind(&o.street_id)
                    .bind(&o.district_id)
                    .bind(&o.department)
                    .bind(o.routing.clone().unwrap_or_default().rule_id)
                    .bind(o.routing.clone().unwrap_or_default().explanation)
                    .bind(at)
                    .bind(position)
                    .execute(&mut *tx)
                    .await?;
                }
                CaseEvent::Assigned(a) => {
                    let o = a.owner.clone().unwrap_or_default();
                    exec(format!(
                        "UPDATE {cases} SET status = 'assigned', owner_tier = $1, owner_id = $2, assignment = $3, position = $4 WHERE case_id = $5"
                    ))
                    .bind(i64::from(o.tier))
                    .bind(&o.id)
                    .bind(i64::from(a.assignment))
                    .bind(position)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    exec(format!("UPDATE {deadlines} SET state = 'superseded' WHERE case_id = $1 AND state = 'pending' AND deadline_id NOT LIKE 'w%'"))
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    for d in a.deadlines {
                        exec(format!(
                            "INSERT INTO {deadlines} (case_id, deadline_id, kind, due_ms, owner_tier, owner_id, state) VALUES ($1, $2, $3, $4, $5, $6, 'pending')"
                        ))
                        .bind(id)
                        .bind(&d.id)
                        .bind(i64::from(d.kind))
                        .bind(d.due_unix_ms)
                        .bind(i64::from(o.tier))
                        .bind(&o.id)
                        .execute(&mut *tx)
                        .await?;
                    }
                }
                CaseEvent::Acknowledged(_) => {
                    set_case(tx, &cases, id, position, "status = 'acknowledged'").await?;
                    meet(tx, &deadlines, id, "kind = 1 AND deadline_id NOT LIKE 'w%'").await?;
                }
                CaseEvent::ProgressRecorded(_) => {
                    set_case(tx, &cases, id, position, "position = position").await?;
                    meet(tx, &deadlines, id, "kind = 2").await?;
                }
                CaseEvent::SlaBreached(b) => {
                    set_case(tx, &cases, id, position, "breaches = breaches + 1").await?;
                    exec(format!("UPDATE {deadlines} SET state = 'breached' WHERE case_id = $1 AND deadline_id = $2"))
                        .bind(id)
                        .bind(b.deadline.unwrap_or_default().id)
                        .execute(&mut *tx)
                        .await?;
                }
                CaseEvent::WhistleBlown(w) => {
                    for d in &w.departments {
                        exec(format!(
                            "INSERT INTO {deadlines} (case_id, deadline_id, kind, due_ms, owner_tier, owner_id, state) VALUES ($1, $2, 1, $3, $4, $5, 'pending')"
                        ))
                        .bind(id)
                        .bind(format!("w{}:{d}", w.whistle))
                        .bind(w.acknowledge_by_unix_ms)
                        .bind(pb::Tier::Department as i64)
                        .bind(d)
                        .execute(&mut *tx)
                        .await?;
                    }
                    set_case(tx, &cases, id, position, "position = position").await?;
                }
                CaseEvent::DepartmentReported(d) => {
                    exec(format!("UPDATE {deadlines} SET state = 'met' WHERE case_id = $1 AND owner_id = $2 AND deadline_id LIKE 'w%' AND state = 'pending'"))
                        .bind(id)
                        .bind(&d.department)
                        .execute(&mut *tx)
                        .await?;
                    set_case(tx, &cases, id, position, "position = position").await?;
                }
                CaseEvent::Resolved(_) => {
                    set_case(tx, &cases, id, position, "status = 'resolved'").await?;
                    meet(tx, &deadlines, id, "1 = 1").await?;
                }
                CaseEvent::Verified(v) => {
                    exec(format!("UPDATE {cases} SET rating = $1, position = $2 WHERE case_id = $3"))
                        .bind(i64::from(v.rating))
                        .bind(position)
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
                CaseEvent::Closed(c) => {
                    exec(format!(
                        "UPDATE {cases} SET status = 'closed', closed_at_ms = $1, position = $2 WHERE case_id = $3"
                    ))
                    .bind(c.at_unix_ms)
                    .bind(position)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                }
                CaseEvent::HandedBack(_) | CaseEvent::Reopened(_) => {}
            }
            exec(format!(
                "INSERT INTO {timeline} (case_id, sequence, idx, at_ms, event_type, summary, principal) VALUES ($1, $2, $3, $4, $5, $6, $7)"
            ))
            .bind(id)
            .bind(position)
            .bind(idx as i64)
            .bind(at)
            .bind(kind)
            .bind(summary)
            .bind(&principal)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

async fn set_case(tx: &mut AnyConnection, cases: &str, id: &str, position: i64, set: &str) -> Result<(), ApplyError> {
    let sql = if set == "position = position" {
        format!("UPDATE {cases} SET position = $1 WHERE case_id = $2")
    } else {
        format!("UPDATE {cases} SET {set}, position = $1 WHERE case_id = $2")
    };
    let r = sqlx::query(AssertSqlSafe(sql)).bind(position).bind(id).execute(&mut *tx).await?;
    if r.rows_affected() != 1 {
        return Err(ApplyError::Invalid(format!("case {id} unknown to the read model")));
    }
    Ok(())
}

async fn meet(tx: &mut AnyConnection, deadlines: &str, id: &str, which: &str) -> Result<(), ApplyError> {
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {deadlines} SET state = 'met' WHERE case_id = $1 AND state = 'pending' AND {which}"
    )))
    .bind(id)
    .execute(&mut *tx)
    .await?;
    Ok(())
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
