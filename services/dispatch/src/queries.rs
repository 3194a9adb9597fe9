//! Dispatch's read side: cases, queues, overdue cases and summonses from the
//! `dispatch_*` read model (`projection::Cases`).

use gridwork_eventstore::projection::{ReadStore, Tables};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_runtime::ServiceError;
use sqlx::AssertSqlSafe;

use crate::domain::deadline::{DeadlineId, Scope};
use crate::projection::{CASES, DEADLINES, RATINGS, SUMMONSES, TIMELINE};

/// Queries at one moment (`now_unix_ms` decides what is overdue).
pub struct Queries<'a> {
    pub(crate) store: &'a ReadStore,
    pub(crate) now_unix_ms: i64,
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
    round: i64,
    supervised: i64,
    close_outcome: i64,
}

const CASE_COLUMNS: &str = "case_id, status, owner_tier, owner_id, category_code, priority, emergency, grid_id, community_id, \
    street_id, department, rule_id, routing, rating, breaches, position, round, supervised, close_outcome";

/// Case-level clocks not met, for the overdue test: `(scope 'case', pending or breached)`.
const OPEN_CASE_CLOCK: &str = "d.scope = 'case' AND d.state IN ('pending', 'breached')";

#[derive(Debug, sqlx::FromRow)]
struct SummonsRow {
    case_id: String,
    department: String,
    whistle: i64,
    status: i64,
    report_by_ms: i64,
    summoned_at_ms: i64,
    updated_at_ms: i64,
    position: i64,
}

impl From<SummonsRow> for pb::Summons {
    fn from(r: SummonsRow) -> Self {
        pb::Summons {
            case_id: r.case_id,
            department: r.department,
            whistle: r.whistle as u32,
            status: r.status as i32,
            report_by_unix_ms: r.report_by_ms,
            summoned_at_unix_ms: r.summoned_at_ms,
            updated_at_unix_ms: r.updated_at_ms,
            position: r.position as u64,
        }
    }
}

impl Queries<'_> {
    async fn cases(
        &self,
        filter: &str,
        order: &str,
        text: &str,
        number: i64,
        limit: u32,
    ) -> Result<Vec<pb::Case>, ServiceError> {
        let cases = Tables::Live.name(CASES.name);
        let rows: Vec<CaseRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {CASE_COLUMNS} FROM {cases} c WHERE {filter} ORDER BY {order} LIMIT $3"
        )))
        .bind(text)
        .bind(number)
        .bind(i64::from(limit))
        .fetch_all(self.store.pool())
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            out.push(self.case_view(r).await?);
        }
        Ok(out)
    }

    async fn case_view(&self, r: CaseRow) -> Result<pb::Case, ServiceError> {
        let deadlines = Tables::Live.name(DEADLINES.name);
        let open: Vec<(String, i64, i64, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT deadline_id, kind, due_ms, state FROM {deadlines} WHERE case_id = $1 AND state IN ('pending', 'breached') ORDER BY due_ms"
        )))
        .bind(&r.case_id)
        .fetch_all(self.store.pool())
        .await?;
        let unresolved = r.status == "assigned" || r.status == "acknowledged";
        let overdue = unresolved
            && open.iter().any(|(id, _, due, _)| {
                *due <= self.now_unix_ms && DeadlineId::parse(id).is_some_and(|d| d.scope() == Scope::Case)
            });
        Ok(pb::Case {
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
            pending_deadlines: open
                .into_iter()
                .filter(|(_, _, _, state)| state == "pending")
                .map(|(id, kind, due, _)| pb::Deadline { id, kind: kind as i32, due_unix_ms: due })
                .collect(),
            breaches: r.breaches as u32,
            rating: r.rating as i32,
            timeline: Vec::new(),
            position: r.position as u64,
            supervised: r.supervised != 0,
            round: r.round as u32,
            close_outcome: r.close_outcome as i32,
            ratings: Vec::new(),
            summonses: Vec::new(),
            overdue,
        })
    }

    /// One case with its timeline, ratings and summonses.
    pub async fn case(&self, case_id: &str) -> Result<pb::Case, ServiceError> {
        let mut case = self
            .cases("c.case_id = $1 AND $2 = $2", "c.case_id", case_id, 0, 1)
            .await?
            .pop()
            .ok_or_else(|| ServiceError::NotFound(format!("case_id: case {case_id} does not exist")))?;
        let pool = self.store.pool();
        let timeline = Tables::Live.name(TIMELINE.name);
        let rows: Vec<(i64, i64, String, String, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT sequence, at_ms, event_type, summary, principal FROM {timeline} WHERE case_id = $1 ORDER BY sequence, idx"
        )))
        .bind(case_id)
        .fetch_all(pool)
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
        let ratings = Tables::Live.name(RATINGS.name);
        let rows: Vec<(i64, i64, i64, String, String, i64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT round, rating, solved, rated_by, comment, at_ms FROM {ratings} WHERE case_id = $1 ORDER BY round"
        )))
        .bind(case_id)
        .fetch_all(pool)
        .await?;
        case.ratings = rows
            .into_iter()
            .map(|(round, rating, solved, by, comment, at)| pb::RatingEntry {
                round: round as u32,
                rating: rating as i32,
                solved: solved as i32,
                by,
                comment,
                at_unix_ms: at,
            })
            .collect();
        let summonses = Tables::Live.name(SUMMONSES.name);
        let rows: Vec<SummonsRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT case_id, department, whistle, status, report_by_ms, summoned_at_ms, updated_at_ms, position FROM {summonses} \
             WHERE case_id = $1 ORDER BY whistle, department"
        )))
        .bind(case_id)
        .fetch_all(pool)
        .await?;
        case.summonses = rows.into_iter().map(Into::into).collect();
        Ok(case)
    }

    /// An owner's open cases, soonest pending deadline first.
    pub async fn work_queue(&self, owner: &pb::Owner, limit: u32) -> Result<Vec<pb::Case>, ServiceError> {
        let deadlines = Tables::Live.name(DEADLINES.name);
        self.cases(
            "c.owner_id = $1 AND c.owner_tier = $2 AND c.status IN ('assigned', 'acknowledged')",
            &format!("(SELECT MIN(d.due_ms) FROM {deadlines} d WHERE d.case_id = c.case_id AND d.state = 'pending'), c.case_id"),
            &owner.id,
            i64::from(owner.tier),
            limit,
        )
        .await
    }

    /// Unresolved cases past a case-level clock (respond with no action on site
    /// yet, or resolve), supervised or not, most overdue first.
    pub async fn overdue(&self, limit: u32) -> Result<Vec<pb::Case>, ServiceError> {
        let deadlines = Tables::Live.name(DEADLINES.name);
        self.cases(
            &format!(
                "$1 = $1 AND c.status IN ('assigned', 'acknowledged') AND EXISTS (SELECT 1 FROM {deadlines} d \
                 WHERE d.case_id = c.case_id AND {OPEN_CASE_CLOCK} AND d.due_ms <= $2)"
            ),
            &format!(
                "(SELECT MIN(d.due_ms) FROM {deadlines} d WHERE d.case_id = c.case_id AND {OPEN_CASE_CLOCK}), c.case_id"
            ),
            "",
            self.now_unix_ms,
            limit,
        )
        .await
    }

    /// A department's summonses: open ones (or all), soonest report-by first.
    pub async fn summonses(
        &self,
        department: &str,
        include_finished: bool,
        limit: u32,
    ) -> Result<Vec<pb::Summons>, ServiceError> {
        let summonses = Tables::Live.name(SUMMONSES.name);
        let rows: Vec<SummonsRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT case_id, department, whistle, status, report_by_ms, summoned_at_ms, updated_at_ms, position FROM {summonses} \
             WHERE department = $1 AND (status IN ({}, {}) OR $2 = 1) ORDER BY report_by_ms, case_id LIMIT $3",
            pb::SummonsStatus::Summoned as i32,
            pb::SummonsStatus::Reported as i32
        )))
        .bind(department)
        .bind(i64::from(include_finished))
        .bind(i64::from(limit))
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows.into_iter().map(Into::into).collect())
    }
}
