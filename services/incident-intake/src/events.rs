//! Event names, versions and encoding for the `INTAKE` stream. The events are
//! the protobuf messages of `gridwork.intake.v1` (events.proto) themselves.

use gridwork_eventstore::{DecodeError, DomainEvent};
use gridwork_proto::gridwork::intake::v1 as pb;
use prost::Message as _;

/// Something that happened to an incident.
#[derive(Debug, Clone, PartialEq)]
pub enum IncidentEvent {
    /// `intake.incident.reported` (boxed: by far the largest event).
    Reported(Box<pb::IncidentReported>),
    /// `intake.incident.claimed`.
    Claimed(pb::IncidentClaimed),
    /// `intake.incident.claim_broken`.
    ClaimBroken(pb::ClaimBroken),
    /// `intake.incident.accepted`: dispatch reacts to this.
    Accepted(pb::IncidentAccepted),
    /// `intake.incident.rejected`.
    Rejected(pb::IncidentRejected),
    /// `intake.incident.marked_duplicate`.
    MarkedDuplicate(pb::IncidentMarkedDuplicate),
    /// `intake.incident.report_linked`.
    ReportLinked(pb::ReportLinked),
    /// `intake.incident.priority_raised`.
    PriorityRaised(pb::PriorityRaised),
    /// `intake.incident.case_outcome_recorded`: dispatch's case moved.
    CaseOutcomeRecorded(pb::CaseOutcomeRecorded),
    /// `intake.incident.possible_duplicate_flagged`: an emergency near an open one.
    PossibleDuplicateFlagged(pb::PossibleDuplicateFlagged),
    /// `intake.incident.recurrence_noted`: near one closed recently.
    RecurrenceNoted(pb::RecurrenceNoted),
    /// `intake.incident.duplicate_unlinked`: its original could not take it.
    DuplicateUnlinked(pb::DuplicateUnlinked),
    /// `intake.incident.reclassified`: triage corrected the category.
    Reclassified(pb::IncidentReclassified),
    /// `intake.incident.relocated`: triage corrected the place.
    Relocated(pb::IncidentRelocated),
    /// `intake.incident.priority_reassessed`: triage set the priority.
    PriorityReassessed(pb::PriorityReassessed),
    /// `intake.incident.transfer_requested`: sent to the body it belongs to (转办).
    TransferRequested(pb::TransferRequested),
    /// `intake.incident.transfer_accepted`: the receiver took it on.
    TransferAccepted(pb::TransferAccepted),
    /// `intake.incident.transfer_declined`: the receiver refused it.
    TransferDeclined(pb::TransferDeclined),
    /// `intake.incident.transfer_withdrawn`: it lapsed unanswered.
    TransferWithdrawn(pb::TransferWithdrawn),
    /// `intake.incident.contact_read`: staff read the contact (回访).
    ContactRead(pb::ContactRead),
    /// `intake.incident.contact_erased`: the contact's key was destroyed.
    ContactErased(pb::ContactErased),
}

/// Event type names.
pub mod types {
    /// Reported.
    pub const REPORTED: &str = "intake.incident.reported";
    /// Claimed.
    pub const CLAIMED: &str = "intake.incident.claimed";
    /// Claim broken.
    pub const CLAIM_BROKEN: &str = "intake.incident.claim_broken";
    /// Accepted.
    pub const ACCEPTED: &str = "intake.incident.accepted";
    /// Rejected.
    pub const REJECTED: &str = "intake.incident.rejected";
    /// Marked duplicate.
    pub const MARKED_DUPLICATE: &str = "intake.incident.marked_duplicate";
    /// Report linked.
    pub const REPORT_LINKED: &str = "intake.incident.report_linked";
    /// Priority raised.
    pub const PRIORITY_RAISED: &str = "intake.incident.priority_raised";
    /// Dispatch's case for the incident moved.
    pub const CASE_OUTCOME_RECORDED: &str = "intake.incident.case_outcome_recorded";
    /// An emergency reported near an open one of its category.
    pub const POSSIBLE_DUPLICATE_FLAGGED: &str = "intake.incident.possible_duplicate_flagged";
    /// Reported near one of its category closed recently.
    pub const RECURRENCE_NOTED: &str = "intake.incident.recurrence_noted";
    /// A "me too" back in triage: its original could not take it.
    pub const DUPLICATE_UNLINKED: &str = "intake.incident.duplicate_unlinked";
    /// Triage corrected the category.
    pub const RECLASSIFIED: &str = "intake.incident.reclassified";
    /// Triage corrected the place.
    pub const RELOCATED: &str = "intake.incident.relocated";
    /// Triage set the priority.
    pub const PRIORITY_REASSESSED: &str = "intake.incident.priority_reassessed";
    /// Sent to the body it belongs to.
    pub const TRANSFER_REQUESTED: &str = "intake.incident.transfer_requested";
    /// The receiver took it on.
    pub const TRANSFER_ACCEPTED: &str = "intake.incident.transfer_accepted";
    /// The receiver refused it.
    pub const TRANSFER_DECLINED: &str = "intake.incident.transfer_declined";
    /// It lapsed unanswered.
    pub const TRANSFER_WITHDRAWN: &str = "intake.incident.transfer_withdrawn";
    /// Contact read.
    pub const CONTACT_READ: &str = "intake.incident.contact_read";
    /// Contact erased.
    pub const CONTACT_ERASED: &str = "intake.incident.contact_erased";
}

impl DomainEvent for IncidentEvent {
    fn event_type(&self) -> &'static str {
        match self {
            IncidentEvent::Reported(_) => types::REPORTED,
            IncidentEvent::Claimed(_) => types::CLAIMED,
            IncidentEvent::ClaimBroken(_) => types::CLAIM_BROKEN,
            IncidentEvent::Accepted(_) => types::ACCEPTED,
            IncidentEvent::Rejected(_) => types::REJECTED,
            IncidentEvent::MarkedDuplicate(_) => types::MARKED_DUPLICATE,
            IncidentEvent::ReportLinked(_) => types::REPORT_LINKED,
            IncidentEvent::PriorityRaised(_) => types::PRIORITY_RAISED,
            IncidentEvent::CaseOutcomeRecorded(_) => types::CASE_OUTCOME_RECORDED,
            IncidentEvent::PossibleDuplicateFlagged(_) => types::POSSIBLE_DUPLICATE_FLAGGED,
            IncidentEvent::RecurrenceNoted(_) => types::RECURRENCE_NOTED,
            IncidentEvent::DuplicateUnlinked(_) => types::DUPLICATE_UNLINKED,
            IncidentEvent::Reclassified(_) => types::RECLASSIFIED,
            IncidentEvent::Relocated(_) => types::RELOCATED,
            IncidentEvent::PriorityReassessed(_) => types::PRIORITY_REASSESSED,
            IncidentEvent::TransferRequested(_) => types::TRANSFER_REQUESTED,
            IncidentEvent::TransferAccepted(_) => types::TRANSFER_ACCEPTED,
            IncidentEvent::TransferDeclined(_) => types::TRANSFER_DECLINED,
            IncidentEvent::TransferWithdrawn(_) => types::TRANSFER_WITHDRAWN,
            IncidentEvent::ContactRead(_) => types::CONTACT_READ,
            IncidentEvent::ContactErased(_) => types::CONTACT_ERASED,
        }
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            IncidentEvent::Reported(e) => e.encode_to_vec(),
            IncidentEvent::Claimed(e) => e.encode_to_vec(),
            IncidentEvent::ClaimBroken(e) => e.encode_to_vec(),
            IncidentEvent::Accepted(e) => e.encode_to_vec(),
            IncidentEvent::Rejected(e) => e.encode_to_vec(),
            IncidentEvent::MarkedDuplicate(e) => e.encode_to_vec(),
            IncidentEvent::ReportLinked(e) => e.encode_to_vec(),
            IncidentEvent::PriorityRaised(e) => e.encode_to_vec(),
            IncidentEvent::CaseOutcomeRecorded(e) => e.encode_to_vec(),
            IncidentEvent::PossibleDuplicateFlagged(e) => e.encode_to_vec(),
            IncidentEvent::RecurrenceNoted(e) => e.encode_to_vec(),
            IncidentEvent::DuplicateUnlinked(e) => e.encode_to_vec(),
            IncidentEvent::Reclassified(e) => e.encode_to_vec(),
            IncidentEvent::Relocated(e) => e.encode_to_vec(),
            IncidentEvent::PriorityReassessed(e) => e.encode_to_vec(),
            IncidentEvent::TransferRequested(e) => e.encode_to_vec(),
            IncidentEvent::TransferAccepted(e) => e.encode_to_vec(),
            IncidentEvent::TransferDeclined(e) => e.encode_to_vec(),
            IncidentEvent::TransferWithdrawn(e) => e.encode_to_vec(),
            IncidentEvent::ContactRead(e) => e.encode_to_vec(),
            IncidentEvent::ContactErased(e) => e.encode_to_vec(),
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
            types::REPORTED => IncidentEvent::Reported(Box::new(pb::IncidentReported::decode(payload).map_err(err)?)),
            types::CLAIMED => IncidentEvent::Claimed(pb::IncidentClaimed::decode(payload).map_err(err)?),
            types::CLAIM_BROKEN => IncidentEvent::ClaimBroken(pb::ClaimBroken::decode(payload).map_err(err)?),
            types::ACCEPTED => IncidentEvent::Accepted(pb::IncidentAccepted::decode(payload).map_err(err)?),
            types::REJECTED => IncidentEvent::Rejected(pb::IncidentRejected::decode(payload).map_err(err)?),
            types::MARKED_DUPLICATE => {
                IncidentEvent::MarkedDuplicate(pb::IncidentMarkedDuplicate::decode(payload).map_err(err)?)
            }
            types::REPORT_LINKED => IncidentEvent::ReportLinked(pb::ReportLinked::decode(payload).map_err(err)?),
            types::PRIORITY_RAISED => IncidentEvent::PriorityRaised(pb::PriorityRaised::decode(payload).map_err(err)?),
            types::CASE_OUTCOME_RECORDED => {
                IncidentEvent::CaseOutcomeRecorded(pb::CaseOutcomeRecorded::decode(payload).map_err(err)?)
            }
            types::POSSIBLE_DUPLICATE_FLAGGED => {
                IncidentEvent::PossibleDuplicateFlagged(pb::PossibleDuplicateFlagged::decode(payload).map_err(err)?)
            }
            types::RECURRENCE_NOTED => {
                IncidentEvent::RecurrenceNoted(pb::RecurrenceNoted::decode(payload).map_err(err)?)
            }
            types::DUPLICATE_UNLINKED => {
                IncidentEvent::DuplicateUnlinked(pb::DuplicateUnlinked::decode(payload).map_err(err)?)
            }
            types::RECLASSIFIED => IncidentEvent::Reclassified(pb::IncidentReclassified::decode(payload).map_err(err)?),
            types::RELOCATED => IncidentEvent::Relocated(pb::IncidentRelocated::decode(payload).map_err(err)?),
            types::PRIORITY_REASSESSED => {
                IncidentEvent::PriorityReassessed(pb::PriorityReassessed::decode(payload).map_err(err)?)
            }
            types::TRANSFER_REQUESTED => {
                IncidentEvent::TransferRequested(pb::TransferRequested::decode(payload).map_err(err)?)
            }
            types::TRANSFER_ACCEPTED => {
                IncidentEvent::TransferAccepted(pb::TransferAccepted::decode(payload).map_err(err)?)
            }
            types::TRANSFER_DECLINED => {
                IncidentEvent::TransferDeclined(pb::TransferDeclined::decode(payload).map_err(err)?)
            }
            types::CONTACT_READ => IncidentEvent::ContactRead(pb::ContactRead::decode(payload).map_err(err)?),
            types::CONTACT_ERASED => IncidentEvent::ContactErased(pb::ContactErased::decode(payload).map_err(err)?),
            types::TRANSFER_WITHDRAWN => {
                IncidentEvent::TransferWithdrawn(pb::TransferWithdrawn::decode(payload).map_err(err)?)
            }
            other => return Err(DecodeError::unknown(other, "an event type this build does not know")),
        })
    }
}

/// Something that happened to the service catalogue.
#[derive(Debug, Clone, PartialEq)]
pub enum CatalogueEvent {
    /// `intake.catalogue.version_published`.
    VersionPublished(pb::CatalogueVersionPublished),
}

/// `intake.catalogue.version_published`.
pub const CATALOGUE_VERSION_PUBLISHED: &str = "intake.catalogue.version_published";

impl DomainEvent for CatalogueEvent {
    fn event_type(&self) -> &'static str {
        CATALOGUE_VERSION_PUBLISHED
    }

    fn encode(&self) -> Vec<u8> {
        let CatalogueEvent::VersionPublished(e) = self;
        e.encode_to_vec()
    }

    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
        if event_type != CATALOGUE_VERSION_PUBLISHED || schema_version != 1 {
            return Err(DecodeError::unknown(
                event_type,
                format!("an event type or version ({schema_version}) this build does not know"),
            ));
        }
        pb::CatalogueVersionPublished::decode(payload)
            .map(CatalogueEvent::VersionPublished)
            .map_err(|e| DecodeError::new(event_type, e))
    }
}
