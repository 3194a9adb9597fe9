//! Intake's application service: validate against the catalogue, place on the
//! tree from the local `GRID` copy, link "me too" reports, triage, read.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use gridwork_eventstore::projection::{ReadStore, RunnerHandle, Tables};
use gridwork_eventstore::{CommandKey, CommandMeta, CommitOutcome, ExecuteError, Repository};
use gridwork_geo::{Kind, LocateIndex, UnitRow};
use gridwork_proto::gridwork::intake::v1 as pb;
use gridwork_runtime::ServiceError;
use gridwork_runtime::clock::Clock;
use sqlx::AssertSqlSafe;

use crate::contacts::Vault;
use crate::domain::catalogue::{Catalogue, CatalogueCommand, CatalogueRejection, check_definition};
use crate::domain::incident::{Incident, IncidentCommand, IncidentRejection, Nearby, Status};
use crate::domain::zone::{self, Policy, Reach, Spot, Zone, ZoneCommand, ZoneEvent};
use crate::events::IncidentEvent;
use crate::projection::{GRID_UNITS, HISTORY, INCIDENTS};

/// The one catalogue aggregate's id.
pub const CITY: &str = "city";

/// Tunable intake rules.
#[derive(Debug, Clone)]
pub struct Rules {
    /// A report of the same category within this distance of an open incident…
    pub duplicate_radius_m: f64,
    /// …and this long after it is a "me too".
    pub duplicate_window_ms: i64,
    /// A report of the same category within the radius of an incident whose
    /// case closed less than this long ago is a recurrence of it.
    pub recurrence_window_ms: i64,
    /// Raise the original's priority once this many reports are linked.
    pub escalate_after: usize,
    /// How long a triage claim lasts.
    pub claim_ttl_ms: i64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            duplicate_radius_m: 100.0,
            duplicate_window_ms: 24 * 3_600_000,
            recurrence_window_ms: 30 * 24 * 3_600_000,
            escalate_after: 3,
            claim_ttl_ms: 10 * 60_000,
        }
    }
}

/// Where a report is.
#[derive(Debug, Clone)]
pub enum Location {
    /// Coordinates.
    Point {
        /// Latitude.
        lat: f64,
        /// Longitude.
        lon: f64,
    },
    /// An address resolved by the caller to a unit.
    Address {
        /// Address text, kept on the report: how the handler finds the door.
        text: String,
        /// Unit id.
        unit_id: String,
    },
}

/// A parsed report.
#[derive(Debug, Clone)]
pub struct ReportInput {
    /// Channel.
    pub source: pb::Source,
    /// Category code.
    pub category_code: String,
    /// Catalogue version (0 = latest).
    pub catalogue_version: u32,
    /// Location.
    pub location: Location,
    /// Description.
    pub description: String,
    /// Attributes.
    pub attributes: Vec<pb::AttributeValue>,
    /// Contact (name, phone).
    pub contact: Option<(String, String)>,
    /// Urgency override.
    pub urgency: Option<pb::Priority>,
    /// Reporter id.
    pub reporter_id: String,
    /// The camera or sensor that raised it.
    pub device: Option<pb::Device>,
    /// The partner system's reference.
    pub partner_reference: Option<pb::PartnerReference>,
    /// Media.
    pub media: Vec<pb::MediaRef>,
}

/// Which incidents to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct IncidentFilter<'a> {
    /// In this unit's subtree ("" for anywhere).
    pub unit_id: &'a str,
    /// With this status.
    pub status: Option<pb::IncidentStatus>,
    /// Of this category ("" for any).
    pub category: &'a str,
    /// Transferred, or pending transfer, to this body ("" for any).
    pub transfer_to: &'a str,
    /// At most this many.
    pub limit: u32,
    /// Only this incident.
    pub only_id: Option<&'a str>,
}

/// A category correction, parsed.
#[derive(Debug, Clone)]
pub struct Reclassification {
    /// The new category.
    pub category_code: String,
    /// Attributes for it.
    pub attributes: Vec<pb::AttributeValue>,
    /// The priority to give it (None: the category's default).
    pub priority: Option<pb::Priority>,
    /// Why.
    pub note: String,
}

/// What a report produced.
#[derive(Debug, Clone)]
pub struct Reported {
    /// Incident id.
    pub incident_id: String,
    /// The commit.
    pub outcome: CommitOutcome<IncidentEvent>,
    /// The open incident it was linked to.
    pub duplicate_of: Option<String>,
    /// The open emergency it may repeat (it was dispatched anyway).
    pub possibly_same_as: Option<String>,
    /// The recently closed incident it is a recurrence of.
    pub recurrence_of: Option<String>,
    /// Accepted at once (emergency).
    pub accepted: bool,
    /// The partner reference was reported before: nothing new was recorded.
    pub already_reported: bool,
}

/// A row of `intake_incidents`.
#[derive(Debug, sqlx::FromRow)]
struct IncidentRow {
    incident_id: String,
    status: i64,
    source: i64,
    category_code: String,
    catalogue_version: i64,
    lat: f64,
    lon: f64,
    district_id: String,
    street_id: String,
    community_id: String,
    grid_id: String,
    micro_grid_id: String,
    description: String,
    priority: i64,
    emergency: i64,
    claimed_by: String,
    claim_until_ms: i64,
    duplicate_of: String,
    reported_at_ms: i64,
    contact_ref: String,
    position: i64,
    possibly_same_as: String,
    recurrence_of: String,
    closed_at_ms: i64,
    address_text: String,
    transfer_to: String,
    /// A duplicate's original's status (0 if none).
    original_status: i64,
}

/// How long a zone entry whose incident is not (yet) written counts as a
/// report being recorded at this moment; after it, as one that never was.
pub(crate) const PENDING_GRACE_MS: i64 = 30_000;

/// At most this many nearby incidents are looked at for one report.
const MAX_CANDIDATES: usize = 8;

/// How long a report waits for the read model's recurrence lookup.
const RECURRENCE_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// What an incident found near a new report is to it.
enum Verdict {
    /// Open (or being written right now): the report may be the same problem.
    Open,
    /// Out of the zone for good: never written, rejected, merged, transferred,
    /// or corrected to another category or place.
    Gone,
    /// Its case was resolved or closed: the report may be a recurrence.
    Closed,
}

/// Judge `incident`, placed in `zone_id` at `placed_at_unix_ms`, as of `now`.
fn judge(incident: &Incident, placed_at_unix_ms: i64, now: i64, zone_id: &str) -> Verdict {
    // Triage moved it to another category or place since it was placed
    // here: it is no longer this zone's.
    if let Some(r) = &incident.report
        && zone::zone_id(&r.grid_path.clone().unwrap_or_default().grid_id, &r.category_code) != zone_id
    {
        return Verdict::Gone;
    }
    match incident.status {
        Status::Reported | Status::Accepted => Verdict::Open,
        // Placed, and its incident not written yet: being recorded right now
        // (it counts as open), or never (a crash between the two commits).
        Status::New if now - placed_at_unix_ms < PENDING_GRACE_MS => Verdict::Open,
        Status::New | Status::Rejected | Status::Duplicate | Status::Transferred => Verdict::Gone,
        Status::Resolved | Status::Closed => Verdict::Closed,
    }
}

/// Locks striping the zones: placements in one zone take turns inside a
/// replica, so a burst of calls about one fire waits its turn instead of
/// conflicting at the server and running out of retries (replicas still
/// serialise through the zone's expected sequence).
const ZONE_STRIPES: usize = 1024;

/// What a report's category does with reports near an open one of it.
fn duplicate_policy(category: &pb::Category) -> Option<Policy> {
    match pb::DuplicatePolicy::try_from(category.duplicate_policy) {
        Ok(pb::DuplicatePolicy::Never) => None,
        Ok(pb::DuplicatePolicy::Suggest) => Some(Policy::Suggest),
        // An emergency is never merged, whatever an old catalogue says.
        _ if category.emergency => Some(Policy::Suggest),
        Ok(pb::DuplicatePolicy::AutoLink) => Some(Policy::AutoLink),
        // A version published before the policy existed: nothing is merged
        // unasked (a neighbour dispute would be); a person decides.
        Ok(pb::DuplicatePolicy::Unspecified) | Err(_) => Some(Policy::Suggest),
    }
}

/// The incident id a partner's reference names: a name-based UUID (v5) of the
/// system and reference, the same on every replica and every retry.
pub fn partner_incident_id(r: &pb::PartnerReference) -> String {
    const NAMESPACE: uuid::Uuid = uuid::uuid!("6f1c9a52-3b0e-4d7a-9c55-0b8a7d3e2f10");
    uuid::Uuid::new_v5(&NAMESPACE, format!("{}\u{0}{}", r.system, r.reference).as_bytes()).to_string()
}

/// The intake application service.
#[derive(Clone)]
pub struct Intake {
    incidents: Repository<Incident>,
    zones: Repository<Zone>,
    zone_locks: Arc<[tokio::sync::Mutex<()>]>,
    catalogue: Repository<Catalogue>,
    store: ReadStore,
    grid: Arc<RunnerHandle>,
    projection: Arc<RunnerHandle>,
    index: Arc<RwLock<LocateIndex>>,
    clock: Arc<dyn Clock>,
    rules: Rules,
    vault: Vault,
}

fn meta(command_id: CommandKey, principal: String, now: i64) -> CommandMeta {
    CommandMeta::new(command_id, principal, now)
}

pub use crate::domain::zone::haversine_m;

impl Intake {
    /// Wire the parts together.
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        incidents: Repository<Incident>,
        zones: Repository<Zone>,
        catalogue: Repository<Catalogue>,
        store: ReadStore,
        grid: Arc<RunnerHandle>,
        projection: Arc<RunnerHandle>,
        clock: Arc<dyn Clock>,
        rules: Rules,
        vault: Vault,
    ) -> Result<Self, ServiceError> {
        let zone_locks = (0..ZONE_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect();
        Ok(Self {
            incidents,
            zones,
            zone_locks,
            catalogue,
            store,
            grid,
            projection,
            index: Arc::default(),
            clock,
            rules,
            vault,
        })
    }

    /// The incidents projection (positions, rebuilds).
    pub fn projection(&self) -> &RunnerHandle {
        &self.projection
    }

    /// The local copy of the tree (positions).
    pub fn grid(&self) -> &RunnerHandle {
        &self.grid
    }

    /// Publish a catalogue version.
    pub async fn publish_catalogue(
        &self,
        categories: Vec<pb::Category>,
        command_id: CommandKey,
        principal: String,
    ) -> Result<(u32, CommitOutcome<crate::events::CatalogueEvent>), ServiceError> {
        check_definition(&categories).map_err(ServiceError::invalid_all)?;
        let now = self.clock.now_unix_ms();
        let outcome = self
            .catalogue
            .execute(CITY, &CatalogueCommand::Publish { categories }, &meta(command_id, principal, now))
            .await?;
        let crate::events::CatalogueEvent::VersionPublished(e) =
            outcome.events.first().ok_or_else(|| ServiceError::Internal("publish decided nothing".into()))?;
        Ok((e.version, outcome.clone()))
    }

    /// A catalogue version (0 = latest).
    pub async fn catalogue(&self, version: u32) -> Result<crate::domain::catalogue::CatalogueVersion, ServiceError> {
        let state = self.catalogue.load(CITY).await?.state;
        state.version(version).cloned().ok_or_else(|| match version {
            0 => ServiceError::NotFound("no catalogue has been published".into()),
            v => ServiceError::NotFound(format!("catalogue_version: version {v} does not exist")),
        })
    }

    async fn refresh_index(&self) -> Result<(), ServiceError> {
        let from = self.index.read().map_or(0, |i| i.position);
        let target = self.grid.position();
        if target <= from && from != 0 {
            return Ok(());
        }
        let table = Tables::Live.name(GRID_UNITS.name);
        let rows: Vec<UnitRow> = sqlx::query_as(AssertSqlSafe(format!(
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

    /// Place a location on the tree: (lat, lon, path).
    async fn place(&self, location: &Location) -> Result<(f64, f64, pb::GridPath), ServiceError> {
        self.refresh_index().await?;
        let index = self.index.read().map_err(|_| ServiceError::Internal("locate index poisoned".into()))?;
        let (lat, lon, path) = match location {
            Location::Point { lat, lon } => (*lat, *lon, index.locate(*lon, *lat)),
            Location::Address { unit_id, .. } => {
                let path = index.path_to(unit_id);
                let Some((lon, lat)) = path.last().and_then(|u| u.interior_point()) else {
                    return Err(ServiceError::invalid(
                        "address.unit_id",
                        format!("unit {unit_id} is not a known unit"),
                    ));
                };
                (lat, lon, path)
            }
        };
        let mut grid_path = pb::GridPath::default();
        for unit in &path {
            match unit.kind {
                Kind::District => grid_path.district_id.clone_from(&unit.id),
                Kind::Street => grid_path.street_id.clone_from(&unit.id),
                Kind::Community => grid_path.community_id.clone_from(&unit.id),
                Kind::Grid | Kind::SpecialGrid => grid_path.grid_id.clone_from(&unit.id),
                Kind::MicroGrid => grid_path.micro_grid_id.clone_from(&unit.id),
                Kind::Root => {}
            }
        }
        if grid_path.grid_id.is_empty() {
            return Err(ServiceError::FailedPrecondition {
                kind: "OUTSIDE_GRIDS".into(),
                subject: "location".into(),
                description: format!("location: ({lat}, {lon}) lies in no registered grid"),
            });
        }
        Ok((lat, lon, grid_path))
    }

    /// The nearest incident of `category` within the radius whose case is
    /// resolved (awaiting the rating) or closed within the recurrence window,
    /// from the read model: a note for people ("this came back"), never a
    /// decision, so a lagging read model costs a missing note, not a
    /// swallowed report. A report next to a resolved case is not merged into
    /// it: a repeat call after the handler reported the fix is evidence that
    /// the fix did not hold.
    async fn find_recurrence(
        &self,
        category: &str,
        lat: f64,
        lon: f64,
        now: i64,
    ) -> Result<Option<String>, ServiceError> {
        let table = Tables::Live.name(INCIDENTS.name);
        // A bounding box first (1° of latitude ≈ 111 km), then the exact distance.
        let dlat = self.rules.duplicate_radius_m / 111_000.0;
        let dlon = dlat / lat.to_radians().cos().max(0.01);
        let rows: Vec<(String, f64, f64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT incident_id, lat, lon FROM {table} WHERE category_code = $1 \
             AND (status = $2 OR (status = $3 AND closed_at_ms >= $4)) \
             AND lat BETWEEN $5 AND $6 AND lon BETWEEN $7 AND $8"
        )))
        .bind(category)
        .bind(pb::IncidentStatus::Resolved as i64)
        .bind(pb::IncidentStatus::Closed as i64)
        .bind(now - self.rules.recurrence_window_ms)
        .bind(lat - dlat)
        .bind(lat + dlat)
        .bind(lon - dlon)
        .bind(lon + dlon)
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, a, b)| (haversine_m(lat, lon, a, b), id))
            .filter(|(d, _)| *d <= self.rules.duplicate_radius_m)
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, id)| id))
    }

    /// Place a report in its duplicate zone and say what it is near. The zone
    /// decides under its expected sequence, so reports at one spot at once
    /// are decided one after the other, each seeing those before it. The
    /// candidates' own states (read from the stream's leader, not a read
    /// model) say which are finished: those are not offered, and are
    /// forgotten by the zone.
    async fn place_in_zone(
        &self,
        zone_id: &str,
        spot: Spot,
        policy: Policy,
        now: i64,
        key: &CommandKey,
        principal: &str,
    ) -> Result<(Option<Nearby>, Option<String>), ServiceError> {
        // The key names the incident being placed.
        let incident_id = key.id.as_str();
        let reach = Reach { radius_m: self.rules.duplicate_radius_m, window_ms: self.rules.duplicate_window_ms };
        let stripe = gridwork_eventstore::envelope::request_digest(zone_id.as_bytes()) as usize % self.zone_locks.len();
        let _turn = self.zone_locks[stripe].lock().await;
        // The warm copy (no round trip): another replica may have placed
        // reports since, but the placement is decided again on the leader's
        // head if so (its commit names the sequence it was decided on), and
        // an entry placed since this read is offered, not judged unseen.
        let zone = self.zones.load(zone_id).await?;
        let mut finished = std::collections::BTreeSet::new();
        let mut closed_near = None;
        let mut unchecked: std::collections::BTreeSet<String> =
            zone.state.entries.iter().map(|e| e.incident_id.clone()).collect();
        // Each candidate's own state, from the leader, nearest first until
        // one is open: a warm copy could be one another replica has since
        // relocated, reclassified or closed, and a report linked to it would
        // follow another problem.
        let mut judged_open = None;
        for (entry, _) in zone.state.candidates(&spot, now, reach).into_iter().take(MAX_CANDIDATES) {
            if entry.incident_id == incident_id {
                continue;
            }
            let candidate = self.incidents.load_current(&entry.incident_id).await?;
            unchecked.remove(&entry.incident_id);
            match judge(&candidate.state, entry.placed_at_unix_ms, now, zone_id) {
                Verdict::Open => {
                    judged_open = Some(entry.incident_id.clone());
                    break;
                }
                Verdict::Gone => {}
                Verdict::Closed => {
                    closed_near.get_or_insert_with(|| entry.incident_id.clone());
                }
            }
            finished.insert(entry.incident_id.clone());
        }
        // Issued with the report, it carries the report's age: a young
        // placement is not looked up in the command index (a busy zone forgets
        // ids quickly, and the index may lag under load).
        let mut step = "place";
        let placed = loop {
            let command = ZoneCommand::Place {
                incident_id: incident_id.to_string(),
                spot: spot.clone(),
                at_unix_ms: now,
                policy,
                reach,
                finished: finished.clone(),
                unchecked: unchecked.clone(),
            };
            let id = gridwork_eventstore::command_index::derived_in_call(step, incident_id);
            let key = CommandKey { id, request_digest: key.request_digest };
            let outcome = self.zones.execute(zone_id, &command, &meta(key, principal.to_string(), now)).await?;
            let Some(ZoneEvent::ReportPlaced(placed)) = outcome.events.into_iter().next() else {
                return Err(ServiceError::Internal("zone placement decided nothing".into()));
            };
            // The zone offers an entry placed since its copy here was read (by
            // another replica): that copy may be minutes old, so the entry is
            // judged on the leader too before a report is linked to it. One
            // found gone is forgotten and the report placed again, once, as
            // an original (never linked to what it judged unseen).
            let near = placed.near_incident_id.clone();
            if near.is_empty() || judged_open.as_deref() == Some(near.as_str()) || step != "place" {
                break placed;
            }
            let candidate = self.incidents.load_current(&near).await?;
            let placed_at =
                zone.state.entries.iter().find(|e| e.incident_id == near).map_or(now, |e| e.placed_at_unix_ms);
            match judge(&candidate.state, placed_at, now, zone_id) {
                Verdict::Open => break placed,
                Verdict::Gone => {}
                Verdict::Closed => {
                    closed_near.get_or_insert_with(|| near.clone());
                }
            }
            unchecked.remove(&near);
            finished.insert(near);
            // Every entry it now holds is unchecked (the warm copy is the
            // placement's own state: it was brought to the head if it
            // conflicted), so the second placement offers none.
            let fresh = self.zones.load(zone_id).await?;
            unchecked
                .extend(fresh.state.entries.iter().map(|e| e.incident_id.clone()).filter(|id| !finished.contains(id)));
            step = "place-again";
        };
        let nearby = match (placed.near_incident_id.as_str(), placed.linked) {
            ("", _) => None,
            (near, true) => Some(Nearby::Same { incident_id: near.into(), distance_m: placed.distance_m }),
            (near, false) => Some(Nearby::Possibly { incident_id: near.into(), distance_m: placed.distance_m }),
        };
        Ok((nearby, closed_near))
    }

    /// Record a report. The incident id is the command id, so a retried report
    /// lands once. Run to its end in a task of its own: a caller that gives up
    /// (a deadline, a dropped connection) must not leave a report placed in
    /// its zone and never written.
    pub async fn report(
        &self,
        input: ReportInput,
        command_id: CommandKey,
        principal: String,
    ) -> Result<Reported, ServiceError> {
        use tracing::Instrument as _;
        let this = self.clone();
        tokio::spawn(async move { this.report_to_end(input, command_id, principal).await }.in_current_span())
            .await
            .map_err(|e| ServiceError::Internal(format!("report task: {e}")))?
    }

    async fn report_to_end(
        &self,
        input: ReportInput,
        command_id: CommandKey,
        principal: String,
    ) -> Result<Reported, ServiceError> {
        // A partner's reference names the incident: its feed's retry, under
        // whatever command id, lands on the incident the first one made —
        // answered before anything is checked again (the catalogue may have
        // changed since).
        let incident_id = match &input.partner_reference {
            Some(r) => partner_incident_id(r),
            None => command_id.id.clone(),
        };
        let partner = input.partner_reference.is_some();
        if partner && let Some(earlier) = self.reported_before(&incident_id, &input).await? {
            return Ok(earlier);
        }
        let catalogue = self.catalogue(input.catalogue_version).await.map_err(|e| match e {
            ServiceError::NotFound(m) => ServiceError::FailedPrecondition {
                kind: "NO_CATALOGUE".into(),
                subject: "catalogue_version".into(),
                description: m,
            },
            other => other,
        })?;
        let category = catalogue.category(&input.category_code).map_err(|(f, d)| ServiceError::invalid(f, d))?.clone();
        let problems = catalogue.check_attributes(&category, &input.attributes);
        if !problems.is_empty() {
            return Err(ServiceError::invalid_all(problems));
        }
        let (lat, lon, grid_path) = self.place(&input.location).await?;
        let now = self.clock.now_unix_ms();
        let address_text = match &input.location {
            Location::Address { text, .. } => text.trim().to_string(),
            Location::Point { .. } => String::new(),
        };
        // The contact is sealed into the report's own commit, under a key
        // the vault makes first: a vault that cannot take it fails the report
        // before anything is placed, and a commit that fails leaves a key
        // that opens nothing.
        let sealed_contact = match &input.contact {
            Some((name, phone)) => {
                let contact = pb::Contact { name: name.clone(), phone: phone.clone() };
                self.vault.seal(&incident_id, &contact, now).await?
            }
            None => None,
        };
        // A report already recorded under this id (a retry, or the id reused
        // for another report) is not placed again: the incident's own commit
        // answers it, as it did or with the reuse refused.
        // The warm copy or one cold read (a new id is in no cache): a retry
        // racing its own first attempt past a lagging replica is placed
        // again under the same key, and its commit answers as the first did.
        let recorded = self.incidents.load(&incident_id).await?.state.status != Status::New;
        let nearby = match duplicate_policy(&category).filter(|_| !recorded) {
            // Never compared: each report is about its own people.
            None => None,
            Some(policy) => {
                let spot = Spot { lat, lon, address_key: zone::address_key(&address_text) };
                let zone_id = zone::zone_id(&grid_path.grid_id, &category.code);
                // Two retries of one partner reference racing each other
                // place it once: the placement's key is the incident's alone.
                let request_digest = if partner {
                    gridwork_eventstore::envelope::request_digest(incident_id.as_bytes())
                } else {
                    command_id.request_digest
                };
                let placing = CommandKey { id: incident_id.clone(), request_digest };
                let (nearby, closed_near) =
                    self.place_in_zone(&zone_id, spot, policy, now, &placing, &principal).await?;
                match (nearby, closed_near) {
                    (Some(n), _) => Some(n),
                    (None, Some(closed)) => Some(Nearby::Closed { incident_id: closed }),
                    // From the read model, and only a note: a read store
                    // that cannot answer now (its pool taken by runners
                    // waiting on a write lock, a database restarting) costs
                    // the note, never the report.
                    (None, None) => {
                        let recurrence = tokio::time::timeout(
                            RECURRENCE_LOOKUP_TIMEOUT,
                            self.find_recurrence(&category.code, lat, lon, now),
                        )
                        .await;
                        match recurrence {
                            Ok(Ok(found)) => {
                                found.filter(|id| *id != incident_id).map(|incident_id| Nearby::Closed { incident_id })
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "no recurrence lookup: the report is recorded without the note");
                                None
                            }
                            Err(_) => {
                                tracing::warn!("recurrence lookup timed out: the report is recorded without the note");
                                None
                            }
                        }
                    }
                }
            }
        };
        let retry = partner.then(|| input.clone());
        let report = pb::IncidentReported {
            source: input.source as i32,
            category_code: category.code.clone(),
            catalogue_version: catalogue.version,
            lat,
            lon,
            grid_path: Some(grid_path),
            description: input.description,
            attributes: input.attributes,
            priority: input.urgency.map_or(category.default_priority, |p| p as i32),
            contact_ref: String::new(),
            sealed_contact,
            reported_at_unix_ms: now,
            emergency: category.emergency,
            reporter_id: input.reporter_id,
            address_text,
            device: input.device,
            partner_reference: input.partner_reference,
            media: input.media,
        };
        let outcome = match self
            .incidents
            .execute(
                &incident_id,
                &IncidentCommand::Report { report: Box::new(report), nearby },
                &meta(command_id, principal, now),
            )
            .await
        {
            // The racing retry of a partner reference that landed first answers.
            Err(ExecuteError::Rejected(IncidentRejection::AlreadyReported)) if partner => {
                if let Some(retry) = &retry
                    && let Some(earlier) = self.reported_before(&incident_id, retry).await?
                {
                    return Ok(earlier);
                }
                return Err(IncidentRejection::AlreadyReported.into());
            }
            other => other?,
        };
        // Linking to the original is the linker's job (projection::Linker), one
        // at a time, so a burst of "me too" reports does not fight over it.
        // From the commit (a retry answers as the original did).
        let mut reported = Reported {
            incident_id,
            duplicate_of: None,
            possibly_same_as: None,
            recurrence_of: None,
            accepted: false,
            already_reported: false,
            outcome: CommitOutcome { sequence: 0, events: Vec::new(), replayed: false },
        };
        for e in &outcome.events {
            match e {
                IncidentEvent::MarkedDuplicate(d) => reported.duplicate_of = Some(d.of_incident_id.clone()),
                IncidentEvent::PossibleDuplicateFlagged(f) => {
                    reported.possibly_same_as = Some(f.of_incident_id.clone())
                }
                IncidentEvent::RecurrenceNoted(r) => reported.recurrence_of = Some(r.of_incident_id.clone()),
                IncidentEvent::Accepted(_) => reported.accepted = true,
                _ => {}
            }
        }
        reported.outcome = outcome;
        Ok(reported)
    }

    /// The answer for a report already recorded under `incident_id` (a
    /// partner's reference seen before), if it is: the same report again is a
    /// retry, answered with the incident it made; different content under the
    /// same reference (an urging call, a re-sent ticket) is refused so the
    /// partner knows, never taken as a retry and dropped.
    async fn reported_before(&self, incident_id: &str, input: &ReportInput) -> Result<Option<Reported>, ServiceError> {
        let existing = self.incidents.load_current(incident_id).await?;
        if existing.state.status == Status::New {
            return Ok(None);
        }
        let first = existing.state.report.clone().unwrap_or_default();
        if first.description != input.description.trim() || first.source != input.source as i32 {
            return Err(ServiceError::FailedPrecondition {
                kind: "PARTNER_REFERENCE_REUSED".into(),
                subject: "partner_reference".into(),
                description: format!(
                    "partner_reference: reported before with other content, as incident {incident_id}: send what is new \
                     about it to that incident, not as a new report"
                ),
            });
        }
        Ok(Some(Reported {
            incident_id: incident_id.to_string(),
            outcome: CommitOutcome { sequence: existing.sequence, events: Vec::new(), replayed: true },
            duplicate_of: (!existing.state.duplicate_of.is_empty()).then(|| existing.state.duplicate_of.clone()),
            possibly_same_as: None,
            recurrence_of: None,
            accepted: existing.state.status == Status::Accepted,
            already_reported: true,
        }))
    }

    /// A triage command on an incident.
    pub async fn triage(
        &self,
        incident_id: &str,
        command_id: CommandKey,
        principal: String,
        build: impl FnOnce(i64) -> IncidentCommand,
    ) -> Result<CommitOutcome<IncidentEvent>, ServiceError> {
        let now = self.clock.now_unix_ms();
        let command = build(now);
        Ok(self.incidents.execute(incident_id, &command, &meta(command_id, principal, now)).await?)
    }

    /// Triage corrects the category: the new category and its attributes are
    /// checked against the catalogue (latest version); the priority is the one
    /// given, else the new category's default.
    pub async fn reclassify(
        &self,
        incident_id: &str,
        command_id: CommandKey,
        principal: String,
        change: Reclassification,
    ) -> Result<CommitOutcome<IncidentEvent>, ServiceError> {
        let Reclassification { category_code, attributes, priority, note } = change;
        let catalogue = self.catalogue(0).await?;
        let category = catalogue.category(&category_code).map_err(|(f, d)| ServiceError::invalid(f, d))?.clone();
        let problems = catalogue.check_attributes(&category, &attributes);
        if !problems.is_empty() {
            return Err(ServiceError::invalid_all(problems));
        }
        // Unless triage gives one, the priority never drops by a change of
        // category (a me-too rise or an earlier reassessment stands): the
        // higher of the current one and the new category's default.
        let current = self.incidents.load_current(incident_id).await?.state.priority;
        let priority = match priority {
            Some(p) => p,
            None => pb::Priority::try_from(current.max(category.default_priority)).unwrap_or_default(),
        };
        self.triage(incident_id, command_id, principal.clone(), |now| IncidentCommand::Reclassify {
            category_code: category.code.clone(),
            catalogue_version: catalogue.version,
            attributes,
            emergency: category.emergency,
            priority,
            by: principal,
            note,
            now_unix_ms: now,
        })
        .await
    }

    /// Triage corrects where the problem is: placed again in the tree.
    pub async fn relocate(
        &self,
        incident_id: &str,
        command_id: CommandKey,
        principal: String,
        location: Location,
        note: String,
    ) -> Result<(pb::GridPath, CommitOutcome<IncidentEvent>), ServiceError> {
        let (lat, lon, grid_path) = self.place(&location).await?;
        let address_text = match &location {
            Location::Address { text, .. } => text.trim().to_string(),
            Location::Point { .. } => String::new(),
        };
        let path = grid_path.clone();
        let outcome = self
            .triage(incident_id, command_id, principal.clone(), |now| IncidentCommand::Relocate {
                lat,
                lon,
                grid_path,
                address_text,
                by: principal,
                note,
                now_unix_ms: now,
            })
            .await?;
        Ok((path, outcome))
    }

    /// An incident's status and, for a duplicate, its original: read from the
    /// stream's leader, not a read model.
    pub async fn status_of(&self, incident_id: &str) -> Result<(Status, String), ServiceError> {
        let loaded = self.incidents.load_current(incident_id).await?;
        Ok((loaded.state.status, loaded.state.duplicate_of.clone()))
    }

    /// The incidents' repository (tests drive commands through it).
    pub fn incidents(&self) -> &Repository<Incident> {
        &self.incidents
    }

    /// The contact vault.
    pub fn vault(&self) -> &Vault {
        &self.vault
    }

    /// The claim length.
    pub fn claim_ttl_ms(&self) -> i64 {
        self.rules.claim_ttl_ms
    }

    /// Wait for `min_position` (read-your-writes), bounded.
    pub async fn wait(&self, min_position: u64, wait: Duration) -> Result<(), ServiceError> {
        if min_position > 0 {
            self.projection.wait_for(min_position, wait).await?;
        }
        Ok(())
    }

    /// Incidents matching the filters, newest first, without history.
    pub async fn list(&self, filter: IncidentFilter<'_>) -> Result<Vec<pb::Incident>, ServiceError> {
        let IncidentFilter { unit_id, status, category, transfer_to, limit, only_id } = filter;
        let table = Tables::Live.name(INCIDENTS.name);
        let rows: Vec<IncidentRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT incident_id, status, source, category_code, catalogue_version, lat, lon, district_id, street_id, \
             community_id, grid_id, micro_grid_id, description, priority, emergency, claimed_by, claim_until_ms, \
             duplicate_of, reported_at_ms, contact_ref, position, possibly_same_as, recurrence_of, closed_at_ms, \
             address_text, transfer_to, \
             COALESCE((SELECT o.status FROM {table} o WHERE o.incident_id = t.duplicate_of), 0) AS original_status \
             FROM {table} t \
             WHERE ($1 = '' OR district_id = $1 OR street_id = $1 OR community_id = $1 OR grid_id = $1 OR micro_grid_id = $1) \
             AND ($2 = 0 OR status = $2) AND ($3 = '' OR category_code = $3) AND ($4 = '' OR incident_id = $4) \
             AND ($6 = '' OR transfer_to = $6) \
             ORDER BY reported_at_ms DESC, incident_id LIMIT $5"
        )))
        .bind(unit_id)
        .bind(status.map_or(0, |s| s as i64))
        .bind(category)
        .bind(only_id.unwrap_or(""))
        .bind(i64::from(limit))
        .bind(transfer_to)
        .fetch_all(self.store.pool())
        .await?;
        let now = self.clock.now_unix_ms();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let status = r.status as i32;
            // Open until its case closes (or triage ends it): a resolved
            // case awaits the reporter's rating, still open to Open311. A
            // "me too" is as open as its original: its reporter follows that.
            // Only an original at work or finished is followed: one in a
            // state that gives its me-toos back (rejected, transferred,
            // merged itself) says nothing of this report's outcome.
            let original = pb::IncidentStatus::try_from(r.original_status as i32).ok().filter(|s| {
                matches!(
                    s,
                    pb::IncidentStatus::Reported
                        | pb::IncidentStatus::Accepted
                        | pb::IncidentStatus::Resolved
                        | pb::IncidentStatus::Closed
                )
            });
            let followed = original.map_or(status, |s| s as i32);
            let open = matches!(
                pb::IncidentStatus::try_from(followed),
                Ok(pb::IncidentStatus::Reported | pb::IncidentStatus::Accepted | pb::IncidentStatus::Resolved)
            );
            let has_contact = self.vault.holds_ref(&r.incident_id, &r.contact_ref).await?;
            out.push(pb::Incident {
                incident_id: r.incident_id,
                status,
                open311_status: if open { "open".into() } else { "closed".into() },
                source: r.source as i32,
                category_code: r.category_code,
                catalogue_version: r.catalogue_version as u32,
                lat: r.lat,
                lon: r.lon,
                grid_path: Some(pb::GridPath {
                    district_id: r.district_id,
                    street_id: r.street_id,
                    community_id: r.community_id,
                    grid_id: r.grid_id,
                    micro_grid_id: r.micro_grid_id,
                }),
                description: r.description,
                priority: r.priority as i32,
                emergency: r.emergency != 0,
                claimed_by: if r.claim_until_ms > now { r.claimed_by } else { String::new() },
                duplicate_of: r.duplicate_of,
                linked_reports: Vec::new(),
                reported_at_unix_ms: r.reported_at_ms,
                has_contact,
                history: Vec::new(),
                position: r.position as u64,
                possibly_same_as: r.possibly_same_as,
                recurrence_of: r.recurrence_of,
                closed_at_unix_ms: r.closed_at_ms,
                address_text: r.address_text,
                transfer_to: r.transfer_to,
                original_status: original.map_or(0, |s| s as i32),
                linked_accounts: Vec::new(),
                // Channel data is read from the incident itself (`get`).
                device: None,
                partner_reference: None,
                media: Vec::new(),
            });
        }
        Ok(out)
    }

    /// One incident with its history and linked reports.
    pub async fn get(&self, incident_id: &str) -> Result<pb::Incident, ServiceError> {
        let mut incident = self
            .list(IncidentFilter { limit: 1, only_id: Some(incident_id), ..IncidentFilter::default() })
            .await?
            .pop()
            .ok_or_else(|| ServiceError::NotFound(format!("incident_id: incident {incident_id} does not exist")))?;
        // The channel data as reported: from the incident's own stream.
        // The channel data as reported and the me-toos' accounts: from the
        // incident's own stream.
        let state = self.incidents.load(incident_id).await?.state;
        if let Some(report) = state.report {
            incident.device = report.device;
            incident.partner_reference = report.partner_reference;
            incident.media = report.media;
        }
        incident.linked_accounts = state.linked_accounts;
        let history = Tables::Live.name(HISTORY.name);
        let rows: Vec<(i64, i64, String, String, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT sequence, at_ms, event_type, summary, principal FROM {history} WHERE incident_id = $1 ORDER BY sequence, idx"
        )))
        .bind(incident_id)
        .fetch_all(self.store.pool())
        .await?;
        incident.history = rows
            .into_iter()
            .map(|(sequence, at, event_type, summary, principal)| pb::HistoryEntry {
                sequence: sequence as u64,
                at_unix_ms: at,
                event_type,
                summary,
                principal,
            })
            .collect();
        let table = Tables::Live.name(INCIDENTS.name);
        let linked: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT incident_id FROM {table} WHERE duplicate_of = $1 ORDER BY reported_at_ms, incident_id"
        )))
        .bind(incident_id)
        .fetch_all(self.store.pool())
        .await?;
        incident.linked_reports = linked.into_iter().map(|(id,)| id).collect();
        Ok(incident)
    }

    /// Give staff the reporter's contact to call back: the read is recorded
    /// on the incident (who, why) before the contact leaves the vault.
    pub async fn read_contact(
        &self,
        incident_id: &str,
        command_id: CommandKey,
        principal: String,
        purpose: String,
    ) -> Result<(pb::Contact, CommitOutcome<IncidentEvent>), ServiceError> {
        let now = self.clock.now_unix_ms();
        let command = IncidentCommand::ReadContact { by: principal.clone(), purpose, now_unix_ms: now };
        let outcome = self.incidents.execute(incident_id, &command, &meta(command_id, principal, now)).await?;
        let report = self.incidents.load_current(incident_id).await?.state.report.unwrap_or_default();
        // Erased between the record and this read: nothing to give.
        let contact = self
            .vault
            .open_contact(incident_id, &report)
            .await?
            .ok_or_else(|| ServiceError::from(IncidentRejection::ContactErased))?;
        Ok((contact, outcome))
    }

    /// Erase a reporter's contact for good: recorded on the incident, then
    /// its key destroyed (the eraser reactor destroys it too, should this
    /// process stop in between). `true` if a contact was held and is gone.
    pub async fn erase_contact(
        &self,
        incident_id: &str,
        command_id: CommandKey,
        principal: String,
        reason: String,
    ) -> Result<(bool, CommitOutcome<IncidentEvent>), ServiceError> {
        let now = self.clock.now_unix_ms();
        let command = IncidentCommand::EraseContact { by: principal.clone(), reason, now_unix_ms: now };
        let outcome = self.incidents.execute(incident_id, &command, &meta(command_id, principal, now)).await?;
        let erased = outcome.events.iter().any(|e| matches!(e, IncidentEvent::ContactErased(_)));
        if erased {
            self.vault.shred(incident_id, now).await?;
        }
        Ok((erased, outcome))
    }
}

impl From<IncidentRejection> for ServiceError {
    fn from(r: IncidentRejection) -> Self {
        let kind = match &r {
            IncidentRejection::AlreadyReported => "ALREADY_REPORTED",
            IncidentRejection::NotAwaitingTriage(_) => "NOT_AWAITING_TRIAGE",
            IncidentRejection::ClaimedByOther { .. } => "CLAIMED_BY_OTHER",
            IncidentRejection::NotOpen(_) => "NOT_OPEN",
            IncidentRejection::SelfDuplicate => "SELF_DUPLICATE",
            IncidentRejection::NotAccepted(_) => "NOT_ACCEPTED",
            IncidentRejection::TargetNotOpen(_) => "TARGET_NOT_OPEN",
            IncidentRejection::TargetIsDuplicate { .. } => "TARGET_IS_DUPLICATE",
            IncidentRejection::TargetNotReported => return ServiceError::NotFound(r.to_string()),
            IncidentRejection::NotReported => return ServiceError::NotFound(format!("incident_id: {r}")),
            IncidentRejection::Unchanged(_) => "UNCHANGED",
            IncidentRejection::TransferPending(_) => "TRANSFER_PENDING",
            IncidentRejection::NoTransfer => "NO_TRANSFER",
            IncidentRejection::NoContact => "NO_CONTACT",
            IncidentRejection::ContactErased => "CONTACT_ERASED",
            IncidentRejection::NotTheReceiver { .. } => "NOT_THE_RECEIVER",
            IncidentRejection::TransferInstead => "TRANSFER_INSTEAD",
        };
        ServiceError::FailedPrecondition { kind: kind.into(), subject: "incident".into(), description: r.to_string() }
    }
}

impl From<crate::domain::zone::ZoneRejection> for ServiceError {
    fn from(r: crate::domain::zone::ZoneRejection) -> Self {
        match r {}
    }
}

impl From<CatalogueRejection> for ServiceError {
    fn from(r: CatalogueRejection) -> Self {
        ServiceError::FailedPrecondition {
            kind: "CATALOGUE_UNCHANGED".into(),
            subject: "categories".into(),
            description: r.to_string(),
        }
    }
}
