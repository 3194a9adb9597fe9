//! Load → decide → append for the registry, the read-model queries, and the
//! locate index kept in step with the projection. No proto types cross into the
//! domain from here except the event messages themselves.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use gridwork_eventstore::projection::{ReadStore, RunnerHandle, Tables};
use gridwork_eventstore::{CommandKey, CommandMeta, CommitOutcome, Repository};
use gridwork_proto::gridwork::grid::v1 as pb;
use gridwork_runtime::ServiceError;
use gridwork_runtime::clock::Clock;
use sqlx::AssertSqlSafe;
use time::Date;

use crate::domain::unit::{Kind, ParentFacts, ROOT, Unit, UnitCommand, UnitRejection, parse_date};
use crate::events::UnitEvent;
use crate::projection::{HEAD_TERMS, STAFF, UNITS};
use gridwork_geo::Boundary;
use gridwork_geo::LocateIndex;

/// How long a command waits for the read model to reflect earlier commits.
const SYNC_WAIT: Duration = Duration::from_secs(10);

/// A unit row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UnitRow {
    /// Id.
    pub unit_id: String,
    /// Parent ("" for districts).
    pub parent_id: String,
    /// Kind (proto number).
    pub kind: i64,
    /// Name.
    pub name: String,
    /// Site (proto number).
    pub special_site: i64,
    /// Boundary.
    pub boundary_geojson: String,
    /// Ancestor ids, comma-separated, district first.
    pub ancestors: String,
    /// Households.
    pub households: Option<i64>,
    /// Head.
    pub head_person_id: Option<String>,
    /// Head's name.
    pub head_name: Option<String>,
    /// Certificate number.
    pub cert_number: Option<String>,
    /// Certificate issuer.
    pub cert_issuer: Option<String>,
    /// Certificate expiry.
    pub cert_expires_on: Option<String>,
    /// Day appointed.
    pub head_appointed_on: Option<String>,
    /// Party organisation name.
    pub party_name: Option<String>,
    /// Its kind.
    pub party_kind: Option<i64>,
    /// Its secretary.
    pub party_secretary: Option<String>,
    /// Position of the last change.
    pub position: i64,
}

impl UnitRow {
    /// Kind, parsed.
    pub fn kind(&self) -> Kind {
        pb::UnitKind::try_from(self.kind as i32).ok().and_then(Kind::from_proto).unwrap_or(Kind::Grid)
    }
}

/// A staff row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StaffRow {
    /// Person.
    pub person_id: String,
    /// Name.
    pub name: String,
    /// Role (0 = head).
    pub role: i64,
    /// Joined.
    pub joined_on: String,
    /// Left.
    pub left_on: Option<String>,
    /// Why.
    pub dismissal_reason: Option<String>,
}

/// A head's term row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HeadTermRow {
    /// Person.
    pub person_id: String,
    /// Name.
    pub name: String,
    /// Appointed.
    pub appointed_on: String,
    /// Left (None while in post).
    pub left_on: Option<String>,
    /// Why it ended (proto number; 0 while in post).
    pub departure: i64,
    /// In words.
    pub note: String,
    /// Last certificate's number.
    pub cert_number: String,
    /// Its issuer.
    pub cert_issuer: String,
    /// Its last day.
    pub cert_expires_on: String,
    /// Renewals in the term.
    pub renewals: i64,
}

/// Why a unit needs a head on `today`, counting certificates that run out
/// within `within_days` as needing one too.
pub fn head_need(row: &UnitRow, today: Date, within_days: u32) -> Option<(pb::HeadNeed, String)> {
    if !row.kind().has_staff() {
        return None;
    }
    let (Some(_), Some(expires)) = (&row.head_person_id, &row.cert_expires_on) else {
        return Some((pb::HeadNeed::Vacant, "no head in post".into()));
    };
    let head = format!(
        "certificate {} of head {}",
        row.cert_number.as_deref().unwrap_or(""),
        row.head_name.as_deref().unwrap_or("")
    );
    match parse_date(expires) {
        Some(d) if d < today => Some((pb::HeadNeed::CertificateExpired, format!("{head} expired on {expires}"))),
        Some(d) if within_days > 0 && d <= today.saturating_add(time::Duration::days(i64::from(within_days))) => {
            Some((pb::HeadNeed::CertificateExpiring, format!("{head} expires on {expires}")))
        }
        Some(_) => None,
        None => Some((pb::HeadNeed::CertificateExpired, format!("certificate expiry {expires:?} is unreadable"))),
    }
}

/// Why a unit needs a head today, if it does.
pub fn needs_head(row: &UnitRow, today: Date) -> Option<String> {
    head_need(row, today, 0).map(|(_, reason)| reason)
}

/// The registry application service.
#[derive(Clone)]
pub struct Registry {
    repository: Repository<Unit>,
    store: ReadStore,
    projection: Arc<RunnerHandle>,
    index: Arc<RwLock<LocateIndex>>,
    clock: Arc<dyn Clock>,
}

const UNIT_COLUMNS: &str = "unit_id, parent_id, kind, name, special_site, boundary_geojson, ancestors, households, \
     head_person_id, head_name, cert_number, cert_issuer, cert_expires_on, head_appointed_on, party_name, party_kind, \
     party_secretary, position";

impl Registry {
    /// Wire the parts together and load the locate index.
    pub async fn new(
        repository: Repository<Unit>,
        store: ReadStore,
        projection: Arc<RunnerHandle>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServiceError> {
        let registry =
            Self { repository, store, projection, index: Arc::new(RwLock::new(LocateIndex::default())), clock };
        registry.refresh_index().await?;
        Ok(registry)
    }

    /// Today in the city's time zone, from the injected clock.
    pub fn today(&self) -> Date {
        gridwork_runtime::clock::city_today(self.clock.now_unix_ms())
    }

    /// The projection (rebuilds, positions).
    pub fn projection(&self) -> &RunnerHandle {
        &self.projection
    }

    fn meta(&self, command_id: CommandKey, principal: String) -> CommandMeta {
        CommandMeta::new(command_id, principal, self.clock.now_unix_ms())
    }

    /// Wait until the read model reflects every commit in the stream, so the
    /// facts a command is checked against are current.
    async fn sync(&self) -> Result<(), ServiceError> {
        self.projection.wait_for_stream_head(SYNC_WAIT).await?;
        Ok(())
    }

    /// Wait for `min_position` (read-your-writes), bounded.
    pub async fn wait(&self, min_position: u64, wait: Duration) -> Result<(), ServiceError> {
        if min_position > 0 {
            self.projection.wait_for(min_position, wait).await?;
        }
        Ok(())
    }

    async fn execute(
        &self,
        aggregate: &str,
        command: UnitCommand,
        meta: CommandMeta,
    ) -> Result<CommitOutcome<UnitEvent>, ServiceError> {
        Ok(self.repository.execute(aggregate, &command, &meta).await?)
    }

    async fn parent_facts(&self, parent_id: &str) -> Result<ParentFacts, ServiceError> {
        if parent_id.is_empty() {
            return Ok(ParentFacts { kind: Kind::Root, id: ROOT.into(), boundary: None });
        }
        let row = self.unit(parent_id).await?.ok_or_else(|| ServiceError::FailedPrecondition {
            kind: "UNKNOWN_PARENT".into(),
            subject: "parent_id".into(),
            description: format!("parent_id: unit {parent_id} does not exist"),
        })?;
        let boundary = Boundary::parse(&row.boundary_geojson).map_err(ServiceError::Internal)?;
        Ok(ParentFacts { kind: row.kind(), id: parent_id.into(), boundary: Some(boundary) })
    }

    async fn existing(&self, unit_id: &str) -> Result<UnitRow, ServiceError> {
        self.unit(unit_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("unit_id: unit {unit_id} does not exist")))
    }

    /// Register a unit under `parent_id` ("" for a district).
    #[allow(clippy::too_many_arguments)]
    pub async fn register(
        &self,
        unit_id: String,
        parent_id: String,
        kind: Kind,
        name: String,
        boundary: Boundary,
        special_site: pb::SpecialSite,
        command_id: CommandKey,
        principal: String,
    ) -> Result<CommitOutcome<UnitEvent>, ServiceError> {
        self.sync().await?;
        let parent = self.parent_facts(&parent_id).await?;
        if let Some(existing) = self.unit(&unit_id).await? {
            // A retry of the same registration answers from the original commit.
            if existing.parent_id != parent_id {
                return Err(ServiceError::FailedPrecondition {
                    kind: "UNIT_EXISTS".into(),
                    subject: "unit_id".into(),
                    description: format!("unit_id: unit {unit_id} already exists under {}", existing.parent_id),
                });
            }
        }
        let aggregate = if parent_id.is_empty() { ROOT.to_string() } else { parent_id };
        let command = UnitCommand::RegisterChild { child_id: unit_id, kind, name, boundary, special_site, parent };
        self.execute(&aggregate, command, self.meta(command_id, principal)).await
    }

    /// Redraw a unit's boundary.
    pub async fn redraw(
        &self,
        unit_id: String,
        boundary: Boundary,
        command_id: CommandKey,
        principal: String,
    ) -> Result<CommitOutcome<UnitEvent>, ServiceError> {
        self.sync().await?;
        let row = self.existing(&unit_id).await?;
        let parent = self.parent_facts(&row.parent_id).await?;
        let own = self.repository.load(&unit_id).await?;
        let grandchildren =
            own.state.children.iter().filter_map(|(id, c)| c.boundary.clone().map(|b| (id.clone(), b))).collect();
        let aggregate = if row.parent_id.is_empty() { ROOT.to_string() } else { row.parent_id };
        let command = UnitCommand::RedrawChild { child_id: unit_id, boundary, parent, grandchildren };
        self.execute(&aggregate, command, self.meta(command_id, principal)).await
    }

    /// A command on the unit itself, by a caller whose grants reach it (a
    /// street or community keeps the staff of its own subtree); `build`
    /// receives the unit's kind and today.
    pub async fn on_unit(
        &self,
        unit_id: &str,
        command_id: CommandKey,
        access: &gridwork_auth::Access,
        build: impl FnOnce(Kind, Date) -> UnitCommand,
    ) -> Result<(CommitOutcome<UnitEvent>, Kind), ServiceError> {
        self.sync().await?;
        let row = self.existing(unit_id).await?;
        self.authorise(access, unit_id).await?;
        let kind = row.kind();
        let command = build(kind, self.today());
        Ok((self.execute(unit_id, command, self.meta(command_id, access.subject().to_string())).await?, kind))
    }

    /// Whether the caller's grants reach unit `unit_id`: a city-wide grant
    /// does; a unit grant does for the unit and everything under it, by the
    /// registry's own tree. `PERMISSION_DENIED` naming the permission if not.
    pub async fn authorise(&self, access: &gridwork_auth::Access, unit_id: &str) -> Result<(), ServiceError> {
        if access.unrestricted() {
            return Ok(());
        }
        self.refresh_index().await?;
        let chain: Vec<(String, gridwork_auth::Level)> = {
            let index = self.index.read().map_err(|_| ServiceError::Internal("locate index poisoned".into()))?;
            index
                .path_to(unit_id)
                .into_iter()
                .rev()
                .map(|u| (u.id.clone(), gridwork_auth::Level::of_unit_kind(u.kind.to_proto() as i32)))
                .collect()
        };
        Ok(access.require(&[gridwork_auth::Target::Place(&chain)])?)
    }

    /// One unit row.
    pub async fn unit(&self, unit_id: &str) -> Result<Option<UnitRow>, ServiceError> {
        let table = Tables::Live.name(UNITS.name);
        Ok(sqlx::query_as(AssertSqlSafe(format!("SELECT {UNIT_COLUMNS} FROM {table} WHERE unit_id = $1")))
            .bind(unit_id)
            .fetch_optional(self.store.pool())
            .await?)
    }

    /// A unit's workers, current and past, oldest first.
    pub async fn staff(&self, unit_id: &str) -> Result<Vec<StaffRow>, ServiceError> {
        let table = Tables::Live.name(STAFF.name);
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT person_id, name, role, joined_on, left_on, dismissal_reason FROM {table} \
             WHERE unit_id = $1 ORDER BY joined_position"
        )))
        .bind(unit_id)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// A unit's heads' terms, newest first.
    pub async fn head_terms(&self, unit_id: &str) -> Result<Vec<HeadTermRow>, ServiceError> {
        let table = Tables::Live.name(HEAD_TERMS.name);
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT person_id, name, appointed_on, left_on, departure, note, cert_number, cert_issuer, \
             cert_expires_on, renewals FROM {table} WHERE unit_id = $1 ORDER BY appointed_position DESC"
        )))
        .bind(unit_id)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Units with staff in the subtree under `root` (itself included) that
    /// have no head, or whose head's certificate runs out before `cutoff`
    /// (YYYY-MM-DD, exclusive), by id, after `after`.
    pub async fn units_without_valid_head(
        &self,
        root: &str,
        cutoff: Date,
        after: &str,
        limit: u32,
    ) -> Result<Vec<UnitRow>, ServiceError> {
        let table = Tables::Live.name(UNITS.name);
        // Ids are [A-Za-z0-9_-]: only '_' is special to LIKE.
        let pattern = format!("%,{},%", root.replace('_', "\\_"));
        let staffed: Vec<i64> =
            [Kind::Grid, Kind::SpecialGrid, Kind::MicroGrid].iter().map(|k| k.to_proto() as i64).collect();
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {UNIT_COLUMNS} FROM {table} \
             WHERE kind IN ($1, $2, $3) AND (unit_id = $4 OR (',' || ancestors || ',') LIKE $5 ESCAPE '\\') \
             AND (head_person_id IS NULL OR cert_expires_on IS NULL OR cert_expires_on < $6) \
             AND unit_id > $7 ORDER BY unit_id LIMIT $8"
        )))
        .bind(staffed[0])
        .bind(staffed[1])
        .bind(staffed[2])
        .bind(root)
        .bind(pattern)
        .bind(cutoff.to_string())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Children of `parent_id` ("" for districts), by name.
    pub async fn children(&self, parent_id: &str) -> Result<Vec<UnitRow>, ServiceError> {
        let table = Tables::Live.name(UNITS.name);
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {UNIT_COLUMNS} FROM {table} WHERE parent_id = $1 ORDER BY name, unit_id"
        )))
        .bind(parent_id)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Units whose name contains `query` (case-insensitive for ASCII).
    pub async fn search(
        &self,
        query: &str,
        kind: Option<Kind>,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<UnitRow>, ServiceError> {
        let table = Tables::Live.name(UNITS.name);
        let escaped = query.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
        let pattern = format!("%{}%", escaped.to_lowercase());
        let kind_number = kind.map_or(0, |k| k.to_proto() as i64);
        // Keyset: strictly after the last (name, id) of the page before.
        let (after_name, after_id) = after.unwrap_or(("", ""));
        Ok(sqlx::query_as(AssertSqlSafe(format!(
            "SELECT {UNIT_COLUMNS} FROM {table} WHERE LOWER(name) LIKE $1 ESCAPE '\\' AND ($2 = 0 OR kind = $2) \
             AND ($4 = 0 OR name > $5 OR (name = $5 AND unit_id > $6)) \
             ORDER BY name, unit_id LIMIT $3"
        )))
        .bind(pattern)
        .bind(kind_number)
        .bind(i64::from(limit))
        .bind(i64::from(after.is_some()))
        .bind(after_name)
        .bind(after_id)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Bring the locate index up to the projection's position.
    pub async fn refresh_index(&self) -> Result<(), ServiceError> {
        let target = self.projection.position();
        let from = self.index.read().map_or(0, |i| i.position);
        if target <= from && from != 0 {
            return Ok(());
        }
        let table = Tables::Live.name(UNITS.name);
        let rows: Vec<gridwork_geo::UnitRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT unit_id, parent_id, kind, name, boundary_geojson, position FROM {table} WHERE position > $1"
        )))
        .bind(from as i64)
        .fetch_all(self.store.pool())
        .await?;
        let mut index = self.index.write().map_err(|_| ServiceError::Internal("locate index poisoned".into()))?;
        for (unit, reason) in index.apply_rows(rows, target) {
            tracing::error!(%unit, %reason, "stored boundary unreadable; not indexed");
        }
        Ok(())
    }

    /// The path containing a point.
    pub async fn locate(&self, lon: f64, lat: f64) -> Result<Vec<pb::PathEntry>, ServiceError> {
        self.refresh_index().await?;
        let index = self.index.read().map_err(|_| ServiceError::Internal("locate index poisoned".into()))?;
        Ok(index
            .locate(lon, lat)
            .into_iter()
            .map(|u| pb::PathEntry { unit_id: u.id.clone(), kind: u.kind.to_proto() as i32, name: u.name.clone() })
            .collect())
    }
}

impl From<UnitRejection> for ServiceError {
    fn from(r: UnitRejection) -> Self {
        let (kind, subject) = match &r {
            UnitRejection::KindNotAllowed { parent_id, .. } => ("KIND_NOT_ALLOWED", format!("kind under {parent_id}")),
            UnitRejection::AlreadyRegistered(id) => ("UNIT_EXISTS", format!("unit {id}")),
            UnitRejection::OutsideParent { child_id, .. } => ("OUTSIDE_PARENT", format!("unit {child_id}")),
            UnitRejection::OverlapsSibling { child_id, .. } => ("OVERLAPS_SIBLING", format!("unit {child_id}")),
            UnitRejection::UnknownChild { child_id, .. } => ("UNKNOWN_UNIT", format!("unit {child_id}")),
            UnitRejection::LeavesChildOutside { grandchild_id, .. } => {
                ("LEAVES_CHILD_OUTSIDE", format!("unit {grandchild_id}"))
            }
            UnitRejection::NoStaffAtThisLevel(_) => ("NO_STAFF_AT_THIS_LEVEL", "unit_id".into()),
            UnitRejection::CertificateExpired { .. } => ("CERTIFICATE_EXPIRED", "certificate.expires_on".into()),
            UnitRejection::AlreadyHead(_) => ("ALREADY_HEAD", "person_id".into()),
            UnitRejection::HeadInPost(_) => ("HEAD_IN_POST", "replacing_reason".into()),
            UnitRejection::NoHead => ("NO_HEAD", "unit_id".into()),
            UnitRejection::NotTheHead { .. } => ("NOT_THE_HEAD", "person_id".into()),
            UnitRejection::RenewalNotLater { .. } => ("RENEWAL_NOT_LATER", "certificate.expires_on".into()),
            UnitRejection::AlreadyWorking(id) => ("ALREADY_WORKING", format!("person {id}")),
            UnitRejection::NotAWorker(id) => ("NOT_A_WORKER", format!("person {id}")),
        };
        ServiceError::FailedPrecondition { kind: kind.into(), subject, description: r.to_string() }
    }
}
