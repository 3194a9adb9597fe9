//! Dispatch's read side: cases, queues, overdue cases and summonses from the
//! `dispatch_*` read model (`projection::Cases`).

use gridwork_eventstore::projection::{ReadStore, Tables};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_runtime::ServiceError;
use sqlx::AssertSqlSafe;

use crate::domain::deadline::{DeadlineId, Scope};
use crate::projection::{CASES, DEADLINES, RATINGS, REPORTS, SUMMONSES, TIMELINE};

/// What `ListCases` filters on, parsed at the edge.
#[derive(Debug, Clone, Default)]
pub struct CaseQuery {
    /// Area subtree root ("" for all).
    pub area_id: String,
    /// Statuses ("" none: every opened case).
    pub statuses: Vec<String>,
    /// Category ("" for all).
    pub category_code: String,
    /// Opened at or after.
    pub opened_from_ms: Option<i64>,
    /// Opened before.
    pub opened_before_ms: Option<i64>,
}

impl CaseQuery {
    /// The page-token scope of these filters (a token is taken back only with them).
    pub fn scope(&self) -> String {
        let bound = |t: Option<i64>| t.map_or_else(String::new, |t| t.to_string());
        let (from, before, statuses) =
            (bound(self.opened_from_ms), bound(self.opened_before_ms), self.statuses.join(","));
        gridwork_runtime::page::scope(LIST_CASES, &[&self.area_id, &statuses, &self.category_code, &from, &before])
    }
}

/// The page-token scope of an owner's work queue.
pub fn queue_scope(owner: &pb::Owner) -> String {
    gridwork_runtime::page::scope(LIST_QUEUE, &[&owner.tier.to_string(), &owner.id])
}

/// The page-token scope of the overdue list of `area`.
pub fn overdue_scope(area: &str) -> String {
    gridwork_runtime::page::scope(LIST_OVERDUE, &[area])
}

/// The page-token scope of a department's summons queue.
pub fn summonses_scope(department: &str, include_finished: bool) -> String {
    gridwork_runtime::page::scope(LIST_SUMMONSES, &[department, if include_finished { "all" } else { "open" }])
}

/// Queries at one moment (`now_unix_ms` decides what is overdue).
pub struct Queries<'a> {
    pub(crate) store: &'a ReadStore,
    pub(crate) now_unix_ms: i64,
    /// Reports' accounts are kept sealed and opened here.
    pub(crate) keys: &'a gridwork_personal::KeyStore,
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
    district_id: String,
    opened_at_ms: i64,
    case_number: String,
    rulebook_version: i64,
    fallback: String,
    possibly_same_as: String,
    merged_into: String,
}

const CASE_COLUMNS: &str = "case_id, status, owner_tier, owner_id, category_code, priority, emergency, grid_id, community_id, \
    street_id, department, rule_id, routing, rating, breaches, position, round, supervised, close_outcome, district_id, \
    opened_at_ms, case_number, rulebook_version, fallback, possibly_same_as, merged_into";

/// A value bound to a numbered placeholder.
#[derive(Debug, Clone)]
enum Value {
    Int(i64),
    Text(String),
}

/// A `WHERE` clause built from conditions, each with its own placeholders.
#[derive(Debug, Default)]
struct Filter {
    conditions: Vec<String>,
    values: Vec<Value>,
}

impl Filter {
    /// Bind `value`; its placeholder (`$n`).
    fn bind(&mut self, value: Value) -> String {
        self.values.push(value);
        format!("${}", self.values.len())
    }
    fn text(&mut self, v: &str) -> String {
        self.bind(Value::Text(v.to_string()))
    }
    fn int(&mut self, v: i64) -> String {
        self.bind(Value::Int(v))
    }
    fn and(&mut self, condition: String) {
        self.conditions.push(condition);
    }
    /// Cases placed in `area`'s subtree (a district, street, community or grid).
    fn area(&mut self, area: &str) {
        if !area.is_empty() {
            let a = self.text(area);
            self.and(format!("(c.district_id = {a} OR c.street_id = {a} OR c.community_id = {a} OR c.grid_id = {a})"));
        }
    }
    fn sql(&self) -> String {
        if self.conditions.is_empty() { "1 = 1".into() } else { self.conditions.join(" AND ") }
    }
}

/// Unresolved statuses.
const OPEN_STATUSES: &str = "c.status IN ('assigned', 'acknowledged')";

/// Page-token tags, one per list.
pub const LIST_CASES: &str = "cases";
/// The work queue's tag.
pub const LIST_QUEUE: &str = "queue";
/// The overdue list's tag.
pub const LIST_OVERDUE: &str = "overdue";
/// The summons queue's tag.
pub const LIST_SUMMONSES: &str = "summonses";

/// Sort key of a case with no clock to sort by: last.
const NO_DUE: i64 = i64::MAX;

/// One page of a list and the token for the next, if there is one.
#[derive(Debug)]
pub struct Page<T> {
    /// The rows.
    pub items: Vec<T>,
    /// Token for the next page; empty on the last.
    pub next_page_token: String,
}

/// Where a page starts: strictly after this sort key.
#[derive(Debug, Clone, Default)]
pub struct After {
    /// The key's number part (a time or a due time).
    pub number: i64,
    /// The key's text parts (ids), in sort order.
    pub ids: Vec<String>,
}

impl After {
    /// A page token given out for `scope` (a list and its filters) with `ids`
    /// id parts, parsed by the gRPC edge; a token of another list, or of the
    /// same list under other filters, is refused naming `page_token`.
    pub fn decode(v: &mut gridwork_runtime::Violations, token: &str, scope: &str, ids: usize) -> Option<After> {
        let parts = gridwork_runtime::page::decode_scoped(v, token, scope, ids + 1)?;
        let number = gridwork_runtime::page::number(v, &parts[0]);
        Some(After { number, ids: parts[1..].to_vec() })
    }

    fn encode(scope: &str, number: i64, ids: &[&str]) -> String {
        let n = number.to_string();
        let mut parts = vec![n.as_str()];
        parts.extend_from_slice(ids);
        gridwork_runtime::page::encode_scoped(scope, &parts)
    }
}

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
    /// Cases matching `filter`, ordered by `key` (ascending or descending) then
    /// case id, the page after `after`; `key` is a number-valued SQL
    /// expression over `c`.
    async fn case_page(
        &self,
        scope: &str,
        mut filter: Filter,
        key: &str,
        descending: bool,
        after: Option<&After>,
        limit: u32,
    ) -> Result<Page<pb::Case>, ServiceError> {
        let cases = Tables::Live.name(CASES.name);
        let (cmp, dir) = if descending { ("<", "DESC") } else { (">", "ASC") };
        if let Some(after) = after {
            let n = filter.int(after.number);
            let id = filter.text(after.ids.first().map_or("", String::as_str));
            filter.and(format!("(({key}) {cmp} {n} OR (({key}) = {n} AND c.case_id {cmp} {id}))"));
        }
        let limit_at = filter.int(i64::from(limit) + 1);
        let sql = format!(
            "SELECT {CASE_COLUMNS}, ({key}) AS sort_key FROM {cases} c WHERE {} ORDER BY sort_key {dir}, c.case_id {dir} \
             LIMIT {limit_at}",
            filter.sql()
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for value in &filter.values {
            query = match value {
                Value::Int(v) => query.bind(*v),
                Value::Text(v) => query.bind(v.clone()),
            };
        }
        let rows = query.fetch_all(self.store.pool()).await?;
        let more = rows.len() > limit as usize;
        let mut items = Vec::with_capacity(rows.len().min(limit as usize));
        let mut last = None;
        for row in rows.iter().take(limit as usize) {
            use sqlx::Row as _;
            let sort_key: i64 = row.try_get("sort_key")?;
            let case = <CaseRow as sqlx::FromRow<'_, sqlx::any::AnyRow>>::from_row(row)?;
            last = Some((sort_key, case.case_id.clone()));
            items.push(self.case_view(case).await?);
        }
        let next_page_token = match (more, last) {
            (true, Some((n, id))) => After::encode(scope, n, &[&id]),
            _ => String::new(),
        };
        Ok(Page { items, next_page_token })
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
            possibly_same_as: r.possibly_same_as,
            merged_into: r.merged_into,
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
            routing: Some(pb::RoutingDecision {
                rule_id: r.rule_id,
                explanation: r.routing,
                rulebook_version: r.rulebook_version as u32,
                fallback: r.fallback,
            }),
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
            linked_reports: Vec::new(),
            summonses: Vec::new(),
            overdue,
            case_number: r.case_number,
            district_id: r.district_id,
            opened_at_unix_ms: r.opened_at_ms,
        })
    }

    /// The case id of a case number, if there is such a case.
    pub async fn case_id_of_number(&self, number: &str) -> Result<String, ServiceError> {
        let cases = Tables::Live.name(CASES.name);
        let row: Option<(String,)> =
            sqlx::query_as(AssertSqlSafe(format!("SELECT case_id FROM {cases} WHERE case_number = $1")))
                .bind(number)
                .fetch_optional(self.store.pool())
                .await?;
        row.map(|(id,)| id).ok_or_else(|| ServiceError::NotFound(format!("case_number: no case numbered {number}")))
    }

    /// Cases by area subtree, status, category and opening time, newest first.
    pub async fn list(&self, q: &CaseQuery, after: Option<&After>, limit: u32) -> Result<Page<pb::Case>, ServiceError> {
        let mut f = Filter::default();
        f.area(&q.area_id);
        if !q.statuses.is_empty() {
            let list: Vec<String> = q.statuses.iter().map(|s| f.text(s)).collect();
            f.and(format!("c.status IN ({})", list.join(", ")));
        } else {
            f.and("c.status <> 'new'".into());
        }
        if !q.category_code.is_empty() {
            let c = f.text(&q.category_code);
            f.and(format!("c.category_code = {c}"));
        }
        if let Some(from) = q.opened_from_ms {
            let t = f.int(from);
            f.and(format!("c.opened_at_ms >= {t}"));
        }
        if let Some(before) = q.opened_before_ms {
            let t = f.int(before);
            f.and(format!("c.opened_at_ms < {t}"));
        }
        self.case_page(&q.scope(), f, "c.opened_at_ms", true, after, limit).await
    }

    /// One case with its timeline, ratings, summonses and linked reports.
    pub async fn case(&self, case_id: &str) -> Result<pb::Case, ServiceError> {
        let mut f = Filter::default();
        let id = f.text(case_id);
        f.and(format!("c.case_id = {id}"));
        let mut case = self
            .case_page(LIST_CASES, f, "CAST(0 AS BIGINT)", false, None, 1)
            .await?
            .items
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
        type RatingRow = (i64, i64, i64, String, String, i64, i64, String);
        let rows: Vec<RatingRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT round, rating, solved, rated_by, comment, at_ms, decides, sealed_comment FROM {ratings} \
             WHERE case_id = $1 ORDER BY round, at_ms, rated_by"
        )))
        .bind(case_id)
        .fetch_all(pool)
        .await?;
        let mut ratings = Vec::with_capacity(rows.len());
        for (round, rating, solved, by, comment, at, decides, sealed) in rows {
            ratings.push(pb::RatingEntry {
                round: round as u32,
                rating: rating as i32,
                solved: solved as i32,
                by,
                comment: gridwork_personal::open_column_for_view(self.keys, comment, &sealed, "comment").await?,
                at_unix_ms: at,
                decides: decides != 0,
            });
        }
        case.ratings = ratings;
        let summonses = Tables::Live.name(SUMMONSES.name);
        let rows: Vec<SummonsRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT case_id, department, whistle, status, report_by_ms, summoned_at_ms, updated_at_ms, position FROM {summonses} \
             WHERE case_id = $1 ORDER BY whistle, department"
        )))
        .bind(case_id)
        .fetch_all(pool)
        .await?;
        case.summonses = rows.into_iter().map(Into::into).collect();
        let reports = Tables::Live.name(REPORTS.name);
        type ReportRow = (String, String, String, String, String, String, i64, String, String);
        let rows: Vec<ReportRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT report_id, source, description, attributes, address_text, media, reported_at_ms, sealed_description, \
             sealed_address_text FROM {reports} WHERE case_id = $1 ORDER BY position, report_id"
        )))
        .bind(case_id)
        .fetch_all(pool)
        .await?;
        let lines = |s: String| if s.is_empty() { Vec::new() } else { s.split('\n').map(String::from).collect() };
        let mut linked = Vec::with_capacity(rows.len());
        for (report_id, source, description, attributes, address_text, media, reported_at, sealed_d, sealed_a) in rows {
            linked.push(pb::CaseReportLinked {
                report_id,
                source,
                description: gridwork_personal::open_column_for_view(self.keys, description, &sealed_d, "description")
                    .await?,
                attributes: lines(attributes),
                address_text: gridwork_personal::open_column_for_view(
                    self.keys,
                    address_text,
                    &sealed_a,
                    "address_text",
                )
                .await?,
                media: lines(media),
                reported_at_unix_ms: reported_at,
                sealed_description: None,
                sealed_address_text: None,
            });
        }
        case.linked_reports = linked;
        Ok(case)
    }

    /// An owner's open cases, soonest pending deadline first (cases with no
    /// pending clock last).
    pub async fn work_queue(
        &self,
        owner: &pb::Owner,
        after: Option<&After>,
        limit: u32,
    ) -> Result<Page<pb::Case>, ServiceError> {
        let deadlines = Tables::Live.name(DEADLINES.name);
        let mut f = Filter::default();
        let (id, tier) = (f.text(&owner.id), f.int(i64::from(owner.tier)));
        f.and(format!("c.owner_id = {id} AND c.owner_tier = {tier} AND {OPEN_STATUSES}"));
        let key = format!(
            "COALESCE((SELECT MIN(d.due_ms) FROM {deadlines} d WHERE d.case_id = c.case_id AND d.state = 'pending'), {NO_DUE})"
        );
        self.case_page(&queue_scope(owner), f, &key, false, after, limit).await
    }

    /// Unresolved cases past a case-level clock (respond with no action on site
    /// yet, or resolve), supervised or not, in `area` (empty: city-wide), most
    /// overdue first.
    pub async fn overdue(&self, area: &str, after: Option<&After>, limit: u32) -> Result<Page<pb::Case>, ServiceError> {
        let deadlines = Tables::Live.name(DEADLINES.name);
        let mut f = Filter::default();
        f.area(area);
        let now = f.int(self.now_unix_ms);
        f.and(format!(
            "{OPEN_STATUSES} AND EXISTS (SELECT 1 FROM {deadlines} d WHERE d.case_id = c.case_id AND {OPEN_CASE_CLOCK} \
             AND d.due_ms <= {now})"
        ));
        let key = format!(
            "COALESCE((SELECT MIN(d.due_ms) FROM {deadlines} d WHERE d.case_id = c.case_id AND {OPEN_CASE_CLOCK}), {NO_DUE})"
        );
        self.case_page(&overdue_scope(area), f, &key, false, after, limit).await
    }

    /// A department's summonses: open ones (or all), soonest report-by first.
    pub async fn summonses(
        &self,
        department: &str,
        include_finished: bool,
        after: Option<&After>,
        limit: u32,
    ) -> Result<Page<pb::Summons>, ServiceError> {
        let summonses = Tables::Live.name(SUMMONSES.name);
        let (after_due, after_case, after_whistle) = match after {
            Some(a) => (
                a.number,
                a.ids.first().cloned().unwrap_or_default(),
                a.ids.get(1).and_then(|w| w.parse::<i64>().ok()).unwrap_or(i64::MAX),
            ),
            None => (i64::MIN, String::new(), 0),
        };
        let rows: Vec<SummonsRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT case_id, department, whistle, status, report_by_ms, summoned_at_ms, updated_at_ms, position FROM {summonses} \
             WHERE department = $1 AND (status IN ({}, {}) OR $2 = 1) \
             AND (report_by_ms > $3 OR (report_by_ms = $3 AND (case_id > $4 OR (case_id = $4 AND whistle > $5)))) \
             ORDER BY report_by_ms, case_id, whistle LIMIT $6",
            pb::SummonsStatus::Summoned as i32,
            pb::SummonsStatus::Reported as i32
        )))
        .bind(department)
        .bind(i64::from(include_finished))
        .bind(after_due)
        .bind(after_case)
        .bind(after_whistle)
        .bind(i64::from(limit) + 1)
        .fetch_all(self.store.pool())
        .await?;
        let more = rows.len() > limit as usize;
        let next_page_token = match rows.get((limit as usize).saturating_sub(1)) {
            Some(last) if more => After::encode(
                &summonses_scope(department, include_finished),
                last.report_by_ms,
                &[&last.case_id, &last.whistle.to_string()],
            ),
            _ => String::new(),
        };
        Ok(Page { items: rows.into_iter().take(limit as usize).map(Into::into).collect(), next_page_token })
    }
}
