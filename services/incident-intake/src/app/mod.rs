//! Intake's application service: validate against the catalogue, place on the
//! tree from the local `GRID` copy, link "me too" reports, triage, read.
//!
//! One file per role, each an `impl Intake` block over the parts wired here:
//! `report` (taking a report), `placement` (the tree, the duplicate zone, the
//! candidates judged on the leader, the recurrence note), `triage`,
//! `catalogue`, `reporter_contacts` (call-back reads and erasure), `queries`.

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

mod catalogue;
mod placement;
mod queries;
mod report;
mod reporter_contacts;
mod triage;

pub(crate) use placement::PENDING_GRACE_MS;
use placement::{RECURRENCE_LOOKUP_TIMEOUT, ZONE_STRIPES, duplicate_policy};
pub use queries::IncidentFilter;
pub use report::{Location, ReportInput, Reported, partner_incident_id};
pub use triage::Reclassification;

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
