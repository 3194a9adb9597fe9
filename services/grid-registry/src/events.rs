//! Event names, versions and encoding. The events are the protobuf messages of
//! `gridwork.grid.v1` (events.proto) themselves: one schema, no mapping layer.

use gridwork_eventstore::{DecodeError, DomainEvent};
use gridwork_proto::gridwork::grid::v1 as pb;
use prost::Message as _;

/// Something that happened to a unit (or, for the first two, to a child of it).
#[derive(Debug, Clone, PartialEq)]
pub enum UnitEvent {
    /// `grid.unit.child_registered`, on the parent's subject.
    ChildRegistered(pb::ChildRegistered),
    /// `grid.unit.child_boundary_redrawn`, on the parent's subject.
    ChildBoundaryRedrawn(pb::ChildBoundaryRedrawn),
    /// `grid.unit.households_counted`.
    HouseholdsCounted(pb::HouseholdsCounted),
    /// `grid.unit.head_appointed`.
    HeadAppointed(pb::HeadAppointed),
    /// `grid.unit.head_vacated`.
    HeadVacated(pb::HeadVacated),
    /// `grid.unit.head_certificate_renewed`.
    HeadCertificateRenewed(pb::HeadCertificateRenewed),
    /// `grid.unit.worker_added`.
    WorkerAdded(pb::WorkerAdded),
    /// `grid.unit.worker_dismissed`.
    WorkerDismissed(pb::WorkerDismissed),
    /// `grid.unit.party_branch_set`.
    PartyBranchSet(pb::PartyBranchSet),
}

/// Event type names.
pub mod types {
    /// A child was registered under the unit.
    pub const CHILD_REGISTERED: &str = "grid.unit.child_registered";
    /// A child's boundary was redrawn.
    pub const CHILD_BOUNDARY_REDRAWN: &str = "grid.unit.child_boundary_redrawn";
    /// Households were counted.
    pub const HOUSEHOLDS_COUNTED: &str = "grid.unit.households_counted";
    /// A head was appointed.
    pub const HEAD_APPOINTED: &str = "grid.unit.head_appointed";
    /// The head's term ended.
    pub const HEAD_VACATED: &str = "grid.unit.head_vacated";
    /// The head in post renewed the certificate.
    pub const HEAD_CERTIFICATE_RENEWED: &str = "grid.unit.head_certificate_renewed";
    /// A worker was added.
    pub const WORKER_ADDED: &str = "grid.unit.worker_added";
    /// A worker was dismissed.
    pub const WORKER_DISMISSED: &str = "grid.unit.worker_dismissed";
    /// The party organisation was set.
    pub const PARTY_BRANCH_SET: &str = "grid.unit.party_branch_set";
}

impl DomainEvent for UnitEvent {
    fn event_type(&self) -> &'static str {
        match self {
            UnitEvent::ChildRegistered(_) => types::CHILD_REGISTERED,
            UnitEvent::ChildBoundaryRedrawn(_) => types::CHILD_BOUNDARY_REDRAWN,
            UnitEvent::HouseholdsCounted(_) => types::HOUSEHOLDS_COUNTED,
            UnitEvent::HeadAppointed(_) => types::HEAD_APPOINTED,
            UnitEvent::HeadVacated(_) => types::HEAD_VACATED,
            UnitEvent::HeadCertificateRenewed(_) => types::HEAD_CERTIFICATE_RENEWED,
            UnitEvent::WorkerAdded(_) => types::WORKER_ADDED,
            UnitEvent::WorkerDismissed(_) => types::WORKER_DISMISSED,
            UnitEvent::PartyBranchSet(_) => types::PARTY_BRANCH_SET,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            UnitEvent::ChildRegistered(e) => e.encode_to_vec(),
            UnitEvent::ChildBoundaryRedrawn(e) => e.encode_to_vec(),
            UnitEvent::HouseholdsCounted(e) => e.encode_to_vec(),
            UnitEvent::HeadAppointed(e) => e.encode_to_vec(),
            UnitEvent::HeadVacated(e) => e.encode_to_vec(),
            UnitEvent::HeadCertificateRenewed(e) => e.encode_to_vec(),
            UnitEvent::WorkerAdded(e) => e.encode_to_vec(),
            UnitEvent::WorkerDismissed(e) => e.encode_to_vec(),
            UnitEvent::PartyBranchSet(e) => e.encode_to_vec(),
        }
    }

    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        if schema_version != 1 {
            return Err(DecodeError::unknown(
                event_type,
                format!("schema version {schema_version} is not one this build reads"),
            ));
        }
        let err = |e: prost::DecodeError| DecodeError::new(event_type, e);
        Ok(match event_type {
            types::CHILD_REGISTERED => UnitEvent::ChildRegistered(pb::ChildRegistered::decode(payload).map_err(err)?),
            types::CHILD_BOUNDARY_REDRAWN => {
                UnitEvent::ChildBoundaryRedrawn(pb::ChildBoundaryRedrawn::decode(payload).map_err(err)?)
            }
            types::HOUSEHOLDS_COUNTED => {
                UnitEvent::HouseholdsCounted(pb::HouseholdsCounted::decode(payload).map_err(err)?)
            }
            types::HEAD_APPOINTED => UnitEvent::HeadAppointed(pb::HeadAppointed::decode(payload).map_err(err)?),
            types::HEAD_VACATED => UnitEvent::HeadVacated(pb::HeadVacated::decode(payload).map_err(err)?),
            types::HEAD_CERTIFICATE_RENEWED => {
                UnitEvent::HeadCertificateRenewed(pb::HeadCertificateRenewed::decode(payload).map_err(err)?)
            }
            types::WORKER_ADDED => UnitEvent::WorkerAdded(pb::WorkerAdded::decode(payload).map_err(err)?),
            types::WORKER_DISMISSED => UnitEvent::WorkerDismissed(pb::WorkerDismissed::decode(payload).map_err(err)?),
            types::PARTY_BRANCH_SET => UnitEvent::PartyBranchSet(pb::PartyBranchSet::decode(payload).map_err(err)?),
            other => return Err(DecodeError::unknown(other, "an event type this build does not know")),
        })
    }
}
