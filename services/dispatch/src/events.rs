//! Event names, versions and encoding for the `DISPATCH` stream; the events are
//! the `gridwork.dispatch.v1` messages themselves.

use gridwork_eventstore::{DecodeError, DomainEvent};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use prost::Message as _;

macro_rules! events {
    ($(#[$doc:meta])* $enum:ident { $($variant:ident($message:ident) = $name:literal,)* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $enum {
            $(
                #[doc = concat!("`", $name, "`.")]
                $variant(pb::$message),
            )*
        }

        impl DomainEvent for $enum {
            fn event_type(&self) -> &'static str {
                match self {
                    $($enum::$variant(_) => $name,)*
                }
            }

            fn encode(&self) -> Vec<u8> {
                match self {
                    $($enum::$variant(e) => e.encode_to_vec(),)*
                }
            }

            fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, DecodeError> {
                if schema_version != 1 {
                    return Err(DecodeError::unknown(event_type, format!("schema version {schema_version} is not one this build reads")));
                }
                match event_type {
                    $($name => pb::$message::decode(payload).map($enum::$variant).map_err(|e| DecodeError::new(event_type, e)),)*
                    other => Err(DecodeError::unknown(other, "an event type this build does not know")),
                }
            }
        }
    };
}

events! {
    /// Something that happened to a case.
    CaseEvent {
    Opened(CaseOpened) = "dispatch.case.opened",
    Assigned(CaseAssigned) = "dispatch.case.assigned",
    Acknowledged(CaseAcknowledged) = "dispatch.case.acknowledged",
    ProgressRecorded(ProgressRecorded) = "dispatch.case.progress_recorded",
    HandedBack(CaseHandedBack) = "dispatch.case.handed_back",
    SlaBreached(SlaBreached) = "dispatch.case.sla_breached",
    WhistleBlown(WhistleBlown) = "dispatch.case.whistle_blown",
    DepartmentReported(DepartmentReported) = "dispatch.case.department_reported",
    Resolved(CaseResolved) = "dispatch.case.resolved",
    Verified(CaseVerified) = "dispatch.case.verified",
    Closed(CaseClosed) = "dispatch.case.closed",
    Reopened(CaseReopened) = "dispatch.case.reopened",
    SupervisionOpened(SupervisionOpened) = "dispatch.case.supervision_opened",
    SummonsProgressRecorded(SummonsProgressRecorded) = "dispatch.case.summons_progress_recorded",
    SummonsCompleted(SummonsCompleted) = "dispatch.case.summons_completed",
    SummonsReleased(SummonsReleased) = "dispatch.case.summons_released",
    PriorityRaised(CasePriorityRaised) = "dispatch.case.priority_raised",
    Merged(CaseMerged) = "dispatch.case.merged",
    ReportLinked(CaseReportLinked) = "dispatch.case.report_linked",
    }
}

events! {
    /// Something that happened to the city's rulebook.
    RulebookEvent {
        Published(RulebookPublished) = "dispatch.rulebook.published",
        CalendarYearPublished(CalendarYearPublished) = "dispatch.rulebook.calendar_year_published",
    }
}
