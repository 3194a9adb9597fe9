//! The incident aggregate (subject `intake.incident.<id>`): a report from the
//! moment it arrives to the triage decision. Dispatch takes over from
//! `IncidentAccepted`.
//!
//! States: `Reported` → (`Claimed`) → `Accepted` | `Rejected` | `Duplicate`;
//! after acceptance the incident follows dispatch's case: `Resolved` →
//! `Closed`, or back to `Accepted` when a rating reopens it.
//! Emergencies are reported and accepted in one commit. While open (reported,
//! claimed, accepted or resolved), "me too" reports are linked to it, and after
//! `escalate_after` of them its priority goes up one step.
//!
//! What a report is to the incidents near it is decided here, from facts the
//! application found (the nearest open or recently closed incident of the same
//! category): near an open one, an ordinary report is a "me too", but an
//! emergency is never merged — it is dispatched and flagged as possibly the
//! same; near a closed one, a report is a new incident, noted as a recurrence.

use gridwork_eventstore::{Aggregate, DecodeError};
use gridwork_proto::gridwork::intake::v1 as pb;
use prost::Message as _;

pub use crate::events::IncidentEvent;

/// Where an incident stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// Nothing reported yet.
    #[default]
    New,
    /// Reported, awaiting triage.
    Reported,
    /// Accepted: dispatch owns it now.
    Accepted,
    /// Rejected by triage.
    Rejected,
    /// Marked a duplicate of another incident.
    Duplicate,
    /// Accepted, and dispatch's case reports it resolved (rating awaited).
    Resolved,
    /// Accepted, and dispatch's case has closed.
    Closed,
    /// Transferred to the body it belongs to, which accepted it (转办).
    Transferred,
}

impl Status {
    /// Lower-case name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Reported => "reported",
            Status::Accepted => "accepted",
            Status::Rejected => "rejected",
            Status::Duplicate => "duplicate",
            Status::Resolved => "resolved",
            Status::Closed => "closed",
            Status::Transferred => "transferred",
        }
    }
}

/// A triage lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Holder.
    pub by: String,
    /// Expiry, ms since the epoch.
    pub until_unix_ms: i64,
}

/// An incident's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Incident {
    /// Status.
    pub status: Status,
    /// The report as recorded.
    pub report: Option<pb::IncidentReported>,
    /// Current priority.
    pub priority: i32,
    /// Live or expired triage lock.
    pub claim: Option<Claim>,
    /// Linked "me too" reports.
    pub linked: Vec<String>,
    /// When each was made (ms since the epoch; 0 if its link did not say), in
    /// the order of `linked`: kept for every link, beyond the accounts' cap,
    /// so a resolution's late-unlink needs no read of thousands of me-toos.
    pub linked_reported_at: Vec<i64>,
    /// The original this report was linked to ("" if none).
    pub duplicate_of: String,
    /// `dispatch_sequence` of the last case outcome followed (0 if none).
    pub case_sequence: u64,
    /// Where a transfer is pending to, or went ("" if none).
    pub transfer_to: String,
    /// The open incident it was flagged as possibly the same as ("" if none).
    pub possibly_same_as: String,
    /// The linked reports' own accounts, in link order.
    pub linked_accounts: Vec<pb::LinkedReport>,
    /// The reporter's contact was erased.
    pub contact_erased: bool,
    /// When its case's current round was resolved (0 while it is not).
    pub resolved_at_unix_ms: i64,
}

impl Incident {
    /// The reporter left a contact (sealed in the report, or, before
    /// sealing, in the legacy table) and it has not been erased.
    pub fn holds_contact(&self) -> bool {
        !self.contact_erased
            && self.report.as_ref().is_some_and(|r| r.sealed_contact.is_some() || !r.contact_ref.is_empty())
    }
}

/// The incident of the same category that a new report lies near, as the
/// duplicate zone decided it (or, for a closed one, as the application found
/// it).
#[derive(Debug, Clone, PartialEq)]
pub enum Nearby {
    /// An open incident, and the category links reports to it: this one is a
    /// "me too" (an emergency never is: it is flagged instead).
    Same {
        /// Its id.
        incident_id: String,
        /// Metres between the two reports.
        distance_m: f64,
    },
    /// An open incident that this one may repeat, for triage (or, for an
    /// emergency, a dispatcher) to merge or not.
    Possibly {
        /// Its id.
        incident_id: String,
        /// Metres between the two reports.
        distance_m: f64,
    },
    /// An incident within the radius whose case is resolved (awaiting the
    /// rating) or closed within the recurrence window: the problem is back.
    Closed {
        /// Its id.
        incident_id: String,
    },
}

/// Where dispatch's case stands, as intake follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaseStage {
    /// Resolved by its owner; the rating is awaited.
    Resolved,
    /// Ended.
    Closed,
    /// Sent back to work by an unsatisfied rating.
    Reopened,
}

/// Commands on an incident. Time comes in with the command.
#[derive(Debug, Clone)]
pub enum IncidentCommand {
    /// Record a new report (already validated against the catalogue and placed).
    Report {
        /// The report (boxed: it is by far the largest command).
        report: Box<pb::IncidentReported>,
        /// The nearest incident of the same category it lies near, if any.
        nearby: Option<Nearby>,
    },
    /// Follow dispatch's case for this incident.
    FollowCase {
        /// Where the case now stands.
        stage: CaseStage,
        /// When dispatch decided it, ms since the epoch.
        at_unix_ms: i64,
        /// Resolution notes or the reason for reopening.
        note: String,
        /// Sequence of dispatch's commit: outcomes apply in this order.
        dispatch_sequence: u64,
        /// The case was merged into this one's case ("" if not): the report
        /// becomes a "me too" of that incident, its reporter following it.
        merged_into: String,
    },
    /// A "me too" of an original that has itself become a duplicate of
    /// another (triage's merge or a dispatcher's): linked on to that one.
    Relink {
        /// The original it is linked to now.
        from: String,
        /// The one that original went to.
        to: String,
    },
    /// Take the triage lock.
    Claim {
        /// Who.
        by: String,
        /// Now.
        now_unix_ms: i64,
        /// Lock length.
        ttl_ms: i64,
        /// Admins may break someone else's live lock.
        admin: bool,
    },
    /// Accept for dispatch.
    Accept {
        /// Who.
        by: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// Reject.
    Reject {
        /// Who.
        by: String,
        /// Why.
        reason: pb::RejectionReason,
        /// Note.
        note: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// Mark as a duplicate of another incident.
    MarkDuplicate {
        /// The original.
        of_incident_id: String,
        /// The original's status and, if it is a duplicate itself, its own
        /// original, as read from its stream just before.
        target: (Status, String),
        /// This incident's id (to refuse self-reference).
        own_id: String,
        /// Who.
        by: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// Give a "me too" whose original could not take it back to triage.
    Unlink {
        /// The original it was linked to.
        of_incident_id: String,
        /// Why the link failed.
        reason: String,
    },
    /// Triage corrects the category (the new category and attributes already
    /// checked against the catalogue).
    Reclassify {
        /// The new category.
        category_code: String,
        /// The catalogue version checked against.
        catalogue_version: u32,
        /// Attributes for it.
        attributes: Vec<pb::AttributeValue>,
        /// Whether it is an emergency.
        emergency: bool,
        /// The priority from now.
        priority: pb::Priority,
        /// Who.
        by: String,
        /// Why.
        note: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// Triage corrects where the problem is (already placed).
    Relocate {
        /// Latitude.
        lat: f64,
        /// Longitude.
        lon: f64,
        /// The new placement.
        grid_path: pb::GridPath,
        /// Address text ("" for a point, or sealed).
        address_text: String,
        /// The address text sealed under the incident's key.
        sealed_address_text: Option<gridwork_personal::Sealed>,
        /// Whether the address is the one the incident has (decided by the
        /// caller, who can open a sealed one).
        same_address: bool,
        /// Who.
        by: String,
        /// Why.
        note: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// Triage sets the priority, up or down.
    ReassessPriority {
        /// The priority.
        priority: pb::Priority,
        /// Who.
        by: String,
        /// Why.
        reason: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// Triage sends the report to the body it belongs to (转办).
    Transfer {
        /// The receiving body.
        to: String,
        /// Why.
        reason: String,
        /// Who.
        by: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// Triage takes back a transfer nobody has answered.
    WithdrawTransfer {
        /// Who.
        by: String,
        /// Why.
        reason: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// The receiver answers a transfer.
    AnswerTransfer {
        /// The body answering.
        as_receiver: String,
        /// Accept or decline.
        accept: bool,
        /// The receiver's reference, or why it declines.
        note: String,
        /// Who.
        by: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// Staff read the reporter's contact to call back (回访): recorded.
    ReadContact {
        /// Who.
        by: String,
        /// Why.
        purpose: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// Erase the reporter's contact for good: recorded.
    EraseContact {
        /// Who.
        by: String,
        /// Why.
        reason: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// Link a "me too" report to this open incident.
    LinkReport {
        /// The other report's incident id.
        report_id: String,
        /// Its reporter's account, as reported (never the contact).
        account: Option<pb::LinkedReport>,
        /// Now.
        now_unix_ms: i64,
        /// Raise priority once this many reports are linked.
        escalate_after: usize,
    },
}

/// Rules a command can break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum IncidentRejection {
    /// Reporting twice under one id.
    #[error("incident already reported")]
    AlreadyReported,
    /// Triage on an incident that is not awaiting triage.
    #[error("incident is {}, not awaiting triage", .0.label())]
    NotAwaitingTriage(Status),
    /// Someone else holds a live lock.
    #[error("incident is claimed by {by} until {until_unix_ms}")]
    ClaimedByOther {
        /// Holder.
        by: String,
        /// Expiry.
        until_unix_ms: i64,
    },
    /// The incident is closed to "me too" links.
    #[error("incident is {}, not open", .0.label())]
    NotOpen(Status),
    /// A duplicate of itself.
    #[error("an incident cannot duplicate itself")]
    SelfDuplicate,
    /// No such incident.
    #[error("no incident has been reported under this id")]
    NotReported,
    /// Merged into an incident that was never reported.
    #[error("of_incident_id: no incident has been reported under this id")]
    TargetNotReported,
    /// Merged into a finished incident.
    #[error("of_incident_id: the incident is {}, not open: a report is merged only into a live one", .0.label())]
    TargetNotOpen(Status),
    /// Merged into a duplicate.
    #[error("of_incident_id: the incident is itself a duplicate of {original}: merge into {original} instead")]
    TargetIsDuplicate {
        /// The duplicate's own original.
        original: String,
    },
    /// A case outcome for an incident that was never accepted.
    #[error("incident is {}, and was never accepted for dispatch", .0.label())]
    NotAccepted(Status),
    /// A correction that changes nothing.
    #[error("nothing to change: the {0} is already that")]
    Unchanged(String),
    /// A second transfer while one is pending.
    #[error("a transfer to {0} is pending: wait for its answer")]
    TransferPending(String),
    /// An answer with no transfer pending.
    #[error("no transfer is pending")]
    NoTransfer,
    /// An answer from a body the transfer does not name.
    #[error("the transfer is to {to}, not to this body")]
    NotTheReceiver {
        /// The body named.
        to: String,
    },
    /// Out of jurisdiction is no reason to close a report: transfer it.
    #[error(
        "a report for another body is transferred (TransferIncident), not rejected: the first receiver stays responsible until it is accepted"
    )]
    TransferInstead,
    /// Reading a contact the reporter never left.
    #[error("incident_id: the reporter left no contact")]
    NoContact,
    /// Reading a contact that was erased.
    #[error("incident_id: the reporter's contact was erased")]
    ContactErased,
}

/// What dispatch needs of the incident as accepted.
fn settled(
    report: &pb::IncidentReported,
    priority: i32,
    possibly_same_as: &str,
    linked: &[pb::LinkedReport],
    linked_ids: &[String],
) -> pb::AcceptedIncident {
    let carried: std::collections::BTreeSet<&str> = linked.iter().map(|a| a.report_id.as_str()).collect();
    pb::AcceptedIncident {
        category_code: report.category_code.clone(),
        priority,
        emergency: report.emergency,
        grid_path: report.grid_path.clone(),
        possibly_same_as: possibly_same_as.to_string(),
        linked: linked.to_vec(),
        more_linked: linked_ids.iter().filter(|id| !carried.contains(id.as_str())).cloned().collect(),
    }
}

/// How many linked reports' accounts an incident keeps and carries to its
/// case (every link is still counted and listed by id).
pub const MAX_LINKED_ACCOUNTS: usize = 100;
/// A linked account's description is carried up to this many characters (the
/// whole of it stays on the me-too's own incident).
pub const LINKED_DESCRIPTION_CHARS: usize = 500;
/// A linked account carries this many media references at most.
pub const LINKED_MEDIA: usize = 10;

/// A report's own account, as a "me too" linked to another carries it (never
/// the reporter's contact).
pub fn linked_account(report_id: &str, report: &pb::IncidentReported) -> pb::LinkedReport {
    pb::LinkedReport {
        report_id: report_id.to_string(),
        source: report.source,
        category_code: report.category_code.clone(),
        description: report.description.chars().take(LINKED_DESCRIPTION_CHARS).collect(),
        attributes: report.attributes.clone(),
        address_text: report.address_text.clone(),
        // Sealed under the me-too's own key, so its erasure reaches this copy
        // too; the excerpt where there is one (a whole 4,000-character
        // account, a hundred times over, would not fit a message).
        sealed_description: report.sealed_description_excerpt.clone().or_else(|| report.sealed_description.clone()),
        sealed_address_text: report.sealed_address_text.clone(),
        media: report.media.iter().take(LINKED_MEDIA).cloned().collect(),
        reported_at_unix_ms: report.reported_at_unix_ms,
        lat: report.lat,
        lon: report.lon,
    }
}

fn next_priority(p: i32) -> i32 {
    (p + 1).min(pb::Priority::Urgent as i32)
}

impl Incident {
    /// A pending transfer ends when the first receiver decides the report
    /// itself: said in the stream, so the receiver sees it lapse.
    fn lapse(&self, by: &str, why: &str, now_unix_ms: i64) -> Vec<IncidentEvent> {
        if self.transfer_to.is_empty() {
            return vec![];
        }
        vec![IncidentEvent::TransferWithdrawn(pb::TransferWithdrawn {
            to: self.transfer_to.clone(),
            by: by.to_string(),
            reason: why.to_string(),
            at_unix_ms: now_unix_ms,
        })]
    }

    fn triage_guard(&self, by: &str, now: i64) -> Result<(), IncidentRejection> {
        match self.status {
            Status::Reported => {}
            Status::New => return Err(IncidentRejection::NotReported),
            other => return Err(IncidentRejection::NotAwaitingTriage(other)),
        }
        match &self.claim {
            Some(c) if c.by != by && c.until_unix_ms > now => {
                Err(IncidentRejection::ClaimedByOther { by: c.by.clone(), until_unix_ms: c.until_unix_ms })
            }
            _ => Ok(()),
        }
    }
}

impl Aggregate for Incident {
    const CONTEXT: &'static str = "intake";
    const TYPE: &'static str = "incident";
    /// 3: status 7 (transferred) and `transfer_to`.
    /// 6: a correction clears `possibly_same_as`; accounts kept up to
    /// [`MAX_LINKED_ACCOUNTS`]; a report given back after its case was merged
    /// is closed. 7: when the case was resolved. 8: when each linked report
    /// was made.
    /// 9: the sealed account (IncidentReported 19-20, LinkedReport 11-12):
    /// a snapshot written by a replica that did not know them would have
    /// dropped them.
    const STATE_VERSION: u32 = 9;
    type Command = IncidentCommand;
    type Event = IncidentEvent;
    type Rejection = IncidentRejection;

    fn decide(&self, command: &IncidentCommand) -> Result<Vec<IncidentEvent>, IncidentRejection> {
        match command {
            IncidentCommand::Report { report, nearby } => {
                if self.status != Status::New {
                    return Err(IncidentRejection::AlreadyReported);
                }
                let mut events = vec![IncidentEvent::Reported(report.clone())];
                let mut possibly_same_as = String::new();
                match nearby {
                    // An emergency is never merged: a second fire 30 m away
                    // may be a second fire. It is dispatched, and a dispatcher
                    // told it may be the same.
                    Some(Nearby::Same { incident_id, distance_m } | Nearby::Possibly { incident_id, distance_m })
                        if report.emergency || matches!(nearby, Some(Nearby::Possibly { .. })) =>
                    {
                        events.push(IncidentEvent::PossibleDuplicateFlagged(pb::PossibleDuplicateFlagged {
                            of_incident_id: incident_id.clone(),
                            distance_m: *distance_m,
                        }));
                        possibly_same_as.clone_from(incident_id);
                    }
                    Some(Nearby::Same { incident_id, .. } | Nearby::Possibly { incident_id, .. }) => {
                        events.push(IncidentEvent::MarkedDuplicate(pb::IncidentMarkedDuplicate {
                            of_incident_id: incident_id.clone(),
                            by: "system".into(),
                        }));
                        return Ok(events);
                    }
                    // The problem came back after its case closed: a new
                    // incident, not a "me too" of a finished one.
                    Some(Nearby::Closed { incident_id }) => {
                        events.push(IncidentEvent::RecurrenceNoted(pb::RecurrenceNoted {
                            of_incident_id: incident_id.clone(),
                        }));
                    }
                    None => {}
                }
                if report.emergency {
                    events.push(IncidentEvent::Accepted(pb::IncidentAccepted {
                        by: "system".into(),
                        at_unix_ms: report.reported_at_unix_ms,
                        automatic: true,
                        settled: Some(settled(report, report.priority, &possibly_same_as, &[], &[])),
                    }));
                }
                Ok(events)
            }
            IncidentCommand::FollowCase { stage, at_unix_ms, note, dispatch_sequence, merged_into } => {
                // Outcomes arrive in dispatch's stream order; one already
                // followed (a redelivery) changes nothing.
                if *dispatch_sequence <= self.case_sequence && self.status != Status::New {
                    return Ok(vec![]);
                }
                match self.status {
                    Status::Accepted | Status::Resolved | Status::Closed => {}
                    Status::New => return Err(IncidentRejection::NotReported),
                    other => return Err(IncidentRejection::NotAccepted(other)),
                }
                let stage = match stage {
                    CaseStage::Resolved => pb::CaseStage::Resolved,
                    CaseStage::Closed => pb::CaseStage::Closed,
                    CaseStage::Reopened => pb::CaseStage::Reopened,
                };
                let mut events = vec![IncidentEvent::CaseOutcomeRecorded(pb::CaseOutcomeRecorded {
                    stage: stage as i32,
                    at_unix_ms: *at_unix_ms,
                    note: note.clone(),
                    dispatch_sequence: *dispatch_sequence,
                })];
                // Merged by a dispatcher: the report is a "me too" of the
                // other incident from now, so the linker carries its account
                // (and its own me-toos) there, and its reporter follows and
                // may rate that case, not a closed one nobody works.
                if !merged_into.is_empty() {
                    events.push(IncidentEvent::MarkedDuplicate(pb::IncidentMarkedDuplicate {
                        of_incident_id: merged_into.clone(),
                        by: "dispatch (case merged)".into(),
                    }));
                }
                Ok(events)
            }
            IncidentCommand::Relink { from, to } => {
                // Only the link it names: one given back or linked elsewhere
                // since changes nothing.
                if self.status != Status::Duplicate || self.duplicate_of != *from || from == to {
                    return Ok(vec![]);
                }
                Ok(vec![IncidentEvent::MarkedDuplicate(pb::IncidentMarkedDuplicate {
                    of_incident_id: to.clone(),
                    by: format!("linker ({from} went to {to})"),
                })])
            }
            IncidentCommand::Claim { by, now_unix_ms, ttl_ms, admin } => {
                let guard = self.triage_guard(by, *now_unix_ms);
                let mut events = Vec::new();
                match guard {
                    Ok(()) => {}
                    Err(IncidentRejection::ClaimedByOther { by: holder, .. }) if *admin => {
                        events.push(IncidentEvent::ClaimBroken(pb::ClaimBroken { by: by.clone(), holder }));
                    }
                    Err(e) => return Err(e),
                }
                events.push(IncidentEvent::Claimed(pb::IncidentClaimed {
                    by: by.clone(),
                    until_unix_ms: now_unix_ms + ttl_ms,
                }));
                Ok(events)
            }
            IncidentCommand::Accept { by, now_unix_ms } => {
                self.triage_guard(by, *now_unix_ms)?;
                let mut events = self.lapse(by, "accepted here", *now_unix_ms);
                events.push(IncidentEvent::Accepted(pb::IncidentAccepted {
                    by: by.clone(),
                    at_unix_ms: *now_unix_ms,
                    automatic: false,
                    settled: self.report.as_ref().map(|r| {
                        settled(r, self.priority, &self.possibly_same_as, &self.linked_accounts, &self.linked)
                    }),
                }));
                Ok(events)
            }
            IncidentCommand::Reject { by, reason, note, now_unix_ms } => {
                self.triage_guard(by, *now_unix_ms)?;
                if *reason == pb::RejectionReason::OutOfJurisdiction {
                    return Err(IncidentRejection::TransferInstead);
                }
                let mut events = self.lapse(by, "rejected here", *now_unix_ms);
                events.push(IncidentEvent::Rejected(pb::IncidentRejected {
                    by: by.clone(),
                    reason: *reason as i32,
                    note: note.clone(),
                }));
                Ok(events)
            }
            IncidentCommand::MarkDuplicate { of_incident_id, target, own_id, by, now_unix_ms } => {
                if of_incident_id == own_id {
                    return Err(IncidentRejection::SelfDuplicate);
                }
                // A report is merged into a live incident, never into a
                // finished one (it would be closed unseen) nor into a
                // duplicate (a chain nobody follows).
                match target {
                    (Status::Reported | Status::Accepted, _) => {}
                    (Status::New, _) => return Err(IncidentRejection::TargetNotReported),
                    (Status::Duplicate, original) => {
                        return Err(IncidentRejection::TargetIsDuplicate { original: original.clone() });
                    }
                    (other, _) => return Err(IncidentRejection::TargetNotOpen(*other)),
                }
                self.triage_guard(by, *now_unix_ms)?;
                let mut events = self.lapse(by, "merged here", *now_unix_ms);
                events.push(IncidentEvent::MarkedDuplicate(pb::IncidentMarkedDuplicate {
                    of_incident_id: of_incident_id.clone(),
                    by: by.clone(),
                }));
                Ok(events)
            }
            IncidentCommand::Unlink { of_incident_id, reason } => {
                // Only the link it names: a redelivered failure after triage
                // has since decided (or linked it elsewhere) changes nothing.
                if self.status != Status::Duplicate || self.duplicate_of != *of_incident_id {
                    return Ok(vec![]);
                }
                Ok(vec![IncidentEvent::DuplicateUnlinked(pb::DuplicateUnlinked {
                    of_incident_id: of_incident_id.clone(),
                    reason: reason.clone(),
                })])
            }
            IncidentCommand::Reclassify {
                category_code,
                catalogue_version,
                attributes,
                emergency,
                priority,
                by,
                note,
                now_unix_ms,
            } => {
                self.triage_guard(by, *now_unix_ms)?;
                let report = self.report.as_ref().ok_or(IncidentRejection::NotReported)?;
                if report.category_code == *category_code && report.attributes == *attributes {
                    return Err(IncidentRejection::Unchanged("category".into()));
                }
                let mut events = vec![IncidentEvent::Reclassified(pb::IncidentReclassified {
                    from_category_code: report.category_code.clone(),
                    category_code: category_code.clone(),
                    catalogue_version: *catalogue_version,
                    attributes: attributes.clone(),
                    emergency: *emergency,
                    priority: *priority as i32,
                    by: by.clone(),
                    note: note.clone(),
                })];
                // An emergency found in triage is dispatched at once, as if
                // reported as one.
                if *emergency {
                    events.extend(self.lapse(by, "an emergency, dispatched here", *now_unix_ms));
                    let corrected = pb::IncidentReported {
                        category_code: category_code.clone(),
                        emergency: true,
                        ..report.clone()
                    };
                    events.push(IncidentEvent::Accepted(pb::IncidentAccepted {
                        by: by.clone(),
                        at_unix_ms: *now_unix_ms,
                        automatic: true,
                        settled: Some(settled(
                            &corrected,
                            *priority as i32,
                            &self.possibly_same_as,
                            &self.linked_accounts,
                            &self.linked,
                        )),
                    }));
                }
                Ok(events)
            }
            IncidentCommand::Relocate {
                lat,
                lon,
                grid_path,
                address_text,
                sealed_address_text,
                same_address,
                by,
                note,
                now_unix_ms,
            } => {
                self.triage_guard(by, *now_unix_ms)?;
                let report = self.report.as_ref().ok_or(IncidentRejection::NotReported)?;
                if report.lat == *lat && report.lon == *lon && *same_address {
                    return Err(IncidentRejection::Unchanged("location".into()));
                }
                Ok(vec![IncidentEvent::Relocated(pb::IncidentRelocated {
                    lat: *lat,
                    lon: *lon,
                    grid_path: Some(grid_path.clone()),
                    address_text: address_text.clone(),
                    sealed_address_text: sealed_address_text.clone(),
                    by: by.clone(),
                    note: note.clone(),
                })])
            }
            IncidentCommand::ReassessPriority { priority, by, reason, now_unix_ms } => {
                self.triage_guard(by, *now_unix_ms)?;
                if self.priority == *priority as i32 {
                    return Err(IncidentRejection::Unchanged("priority".into()));
                }
                Ok(vec![IncidentEvent::PriorityReassessed(pb::PriorityReassessed {
                    from: self.priority,
                    priority: *priority as i32,
                    by: by.clone(),
                    reason: reason.clone(),
                })])
            }
            IncidentCommand::Transfer { to, reason, by, now_unix_ms } => {
                self.triage_guard(by, *now_unix_ms)?;
                if !self.transfer_to.is_empty() {
                    return Err(IncidentRejection::TransferPending(self.transfer_to.clone()));
                }
                Ok(vec![IncidentEvent::TransferRequested(pb::TransferRequested {
                    to: to.clone(),
                    reason: reason.clone(),
                    by: by.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            IncidentCommand::WithdrawTransfer { by, reason, now_unix_ms } => {
                self.triage_guard(by, *now_unix_ms)?;
                if self.transfer_to.is_empty() {
                    return Err(IncidentRejection::NoTransfer);
                }
                Ok(self.lapse(by, reason, *now_unix_ms))
            }
            IncidentCommand::AnswerTransfer { as_receiver, accept, note, by, now_unix_ms } => {
                // Pending only while the first receiver still holds it in
                // triage: once it accepted or closed the report itself, there
                // is nothing to answer.
                if self.status != Status::Reported || self.transfer_to.is_empty() {
                    return Err(IncidentRejection::NoTransfer);
                }
                if self.transfer_to != *as_receiver {
                    return Err(IncidentRejection::NotTheReceiver { to: self.transfer_to.clone() });
                }
                Ok(vec![if *accept {
                    IncidentEvent::TransferAccepted(pb::TransferAccepted {
                        to: as_receiver.clone(),
                        by: by.clone(),
                        reference: note.clone(),
                        at_unix_ms: *now_unix_ms,
                    })
                } else {
                    IncidentEvent::TransferDeclined(pb::TransferDeclined {
                        to: as_receiver.clone(),
                        by: by.clone(),
                        reason: note.clone(),
                        at_unix_ms: *now_unix_ms,
                    })
                }])
            }
            IncidentCommand::ReadContact { by, purpose, now_unix_ms } => {
                if self.status == Status::New {
                    return Err(IncidentRejection::NotReported);
                }
                if self.contact_erased {
                    return Err(IncidentRejection::ContactErased);
                }
                if !self.holds_contact() {
                    return Err(IncidentRejection::NoContact);
                }
                Ok(vec![IncidentEvent::ContactRead(pb::ContactRead {
                    by: by.clone(),
                    purpose: purpose.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            IncidentCommand::EraseContact { by, reason, now_unix_ms } => {
                if self.status == Status::New {
                    return Err(IncidentRejection::NotReported);
                }
                // Erased already: nothing to do. Otherwise there is always
                // something to erase — the contact if one was given, and the
                // report's own account (description, address) in any case.
                if self.contact_erased {
                    return Ok(vec![]);
                }
                Ok(vec![IncidentEvent::ContactErased(pb::ContactErased {
                    by: by.clone(),
                    reason: reason.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            IncidentCommand::LinkReport { report_id, account, now_unix_ms, escalate_after } => {
                // A resolved case awaits its rating: a report made since says
                // the fix did not hold, a recurrence, not a "me too" closed
                // unseen. One made before it whose link lands after (the
                // linker lags, or a dispatcher merged its case meanwhile) is
                // that problem's: linked, its reporter may rate the fix.
                let before_resolution = account
                    .as_ref()
                    .is_some_and(|a| a.reported_at_unix_ms > 0 && a.reported_at_unix_ms <= self.resolved_at_unix_ms);
                match self.status {
                    Status::Reported | Status::Accepted => {}
                    Status::Resolved if before_resolution => {}
                    Status::New => return Err(IncidentRejection::NotReported),
                    other => return Err(IncidentRejection::NotOpen(other)),
                }
                if self.linked.contains(report_id) {
                    return Ok(vec![]);
                }
                let mut events = vec![IncidentEvent::ReportLinked(pb::ReportLinked {
                    report_id: report_id.clone(),
                    at_unix_ms: *now_unix_ms,
                    report: account.clone(),
                    original_in_triage: self.status == Status::Reported,
                })];
                if self.linked.len() + 1 == *escalate_after && self.priority < pb::Priority::Urgent as i32 {
                    events.push(IncidentEvent::PriorityRaised(pb::PriorityRaised {
                        priority: next_priority(self.priority),
                        reason: format!("{escalate_after} further reports of the same problem nearby"),
                    }));
                }
                Ok(events)
            }
        }
    }

    fn evolve(mut self, event: &IncidentEvent) -> Self {
        match event {
            IncidentEvent::Reported(e) => {
                self.status = Status::Reported;
                self.priority = e.priority;
                self.report = Some((**e).clone());
            }
            IncidentEvent::Claimed(e) => {
                self.claim = Some(Claim { by: e.by.clone(), until_unix_ms: e.until_unix_ms });
            }
            IncidentEvent::ClaimBroken(_) => self.claim = None,
            // The first receiver decided itself: a pending transfer lapses.
            IncidentEvent::Accepted(_) => {
                self.status = Status::Accepted;
                self.claim = None;
                self.transfer_to.clear();
            }
            IncidentEvent::Rejected(_) => {
                self.status = Status::Rejected;
                self.claim = None;
                self.transfer_to.clear();
            }
            IncidentEvent::MarkedDuplicate(e) => {
                self.status = Status::Duplicate;
                self.duplicate_of.clone_from(&e.of_incident_id);
                self.claim = None;
                self.transfer_to.clear();
            }
            // Corrected: what it was flagged as possibly the same as was a
            // report of the old category or place (so, too, on relocation).
            IncidentEvent::Reclassified(e) => {
                self.possibly_same_as.clear();
                if let Some(r) = self.report.as_mut() {
                    r.category_code.clone_from(&e.category_code);
                    r.catalogue_version = e.catalogue_version;
                    r.attributes.clone_from(&e.attributes);
                    r.emergency = e.emergency;
                }
                self.priority = e.priority;
            }
            IncidentEvent::Relocated(e) => {
                self.possibly_same_as.clear();
                if let Some(r) = self.report.as_mut() {
                    r.lat = e.lat;
                    r.lon = e.lon;
                    r.grid_path.clone_from(&e.grid_path);
                    r.address_text.clone_from(&e.address_text);
                    r.sealed_address_text.clone_from(&e.sealed_address_text);
                }
            }
            IncidentEvent::PriorityReassessed(e) => self.priority = e.priority,
            IncidentEvent::TransferRequested(e) => self.transfer_to.clone_from(&e.to),
            IncidentEvent::TransferAccepted(_) => {
                self.status = Status::Transferred;
                self.claim = None;
            }
            IncidentEvent::TransferDeclined(_) | IncidentEvent::TransferWithdrawn(_) => self.transfer_to.clear(),
            // Back to triage — unless it had a case of its own, merged into
            // the original's (only a dispatcher's merge makes a duplicate of
            // an incident with a case): that case is closed, and so is it.
            IncidentEvent::DuplicateUnlinked(_) => {
                self.status = if self.case_sequence > 0 { Status::Closed } else { Status::Reported };
                self.duplicate_of.clear();
            }
            IncidentEvent::ReportLinked(e) => {
                self.linked.push(e.report_id.clone());
                self.linked_reported_at.push(e.report.as_ref().map_or(0, |r| r.reported_at_unix_ms));
                // The first accounts travel with the incident to dispatch; a
                // burst of hundreds more adds nothing a handler reads, and
                // every later command would carry them.
                if self.linked_accounts.len() < MAX_LINKED_ACCOUNTS {
                    self.linked_accounts.extend(e.report.clone());
                }
            }
            IncidentEvent::PriorityRaised(e) => self.priority = e.priority,
            IncidentEvent::ContactRead(_) => {}
            IncidentEvent::ContactErased(_) => self.contact_erased = true,
            IncidentEvent::CaseOutcomeRecorded(e) => {
                self.status = match pb::CaseStage::try_from(e.stage) {
                    Ok(pb::CaseStage::Resolved) => {
                        self.resolved_at_unix_ms = e.at_unix_ms;
                        Status::Resolved
                    }
                    Ok(pb::CaseStage::Closed) => Status::Closed,
                    // Reopened; an unknown stage leaves the case at work.
                    _ => {
                        self.resolved_at_unix_ms = 0;
                        Status::Accepted
                    }
                };
                self.case_sequence = e.dispatch_sequence;
            }
            IncidentEvent::PossibleDuplicateFlagged(e) => self.possibly_same_as.clone_from(&e.of_incident_id),
            // A link for people to follow; nothing the incident decides on.
            IncidentEvent::RecurrenceNoted(_) => {}
        }
        self
    }

    fn encode_state(&self) -> Vec<u8> {
        let status = match self.status {
            Status::New => 0,
            Status::Reported => 1,
            Status::Accepted => 2,
            Status::Rejected => 3,
            Status::Duplicate => 4,
            Status::Resolved => 5,
            Status::Closed => 6,
            Status::Transferred => 7,
        };
        pb::IncidentState {
            report: self.report.clone(),
            status,
            priority: self.priority,
            claim_by: self.claim.as_ref().map(|c| c.by.clone()).unwrap_or_default(),
            claim_until_unix_ms: self.claim.as_ref().map_or(0, |c| c.until_unix_ms),
            linked: self.linked.clone(),
            case_sequence: self.case_sequence,
            duplicate_of: self.duplicate_of.clone(),
            transfer_to: self.transfer_to.clone(),
            possibly_same_as: self.possibly_same_as.clone(),
            linked_accounts: self.linked_accounts.clone(),
            contact_erased: self.contact_erased,
            resolved_at_unix_ms: self.resolved_at_unix_ms,
            linked_reported_at: self.linked_reported_at.clone(),
        }
        .encode_to_vec()
    }

    fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError> {
        let s = pb::IncidentState::decode(bytes).map_err(|e| DecodeError::new("incident state", e))?;
        let status = match s.status {
            0 => Status::New,
            1 => Status::Reported,
            2 => Status::Accepted,
            3 => Status::Rejected,
            4 => Status::Duplicate,
            5 => Status::Resolved,
            6 => Status::Closed,
            7 => Status::Transferred,
            other => return Err(DecodeError::new("incident state", format!("unknown status {other}"))),
        };
        let claim = (!s.claim_by.is_empty()).then_some(Claim { by: s.claim_by, until_unix_ms: s.claim_until_unix_ms });
        Ok(Self {
            status,
            report: s.report,
            priority: s.priority,
            claim,
            linked: s.linked,
            case_sequence: s.case_sequence,
            duplicate_of: s.duplicate_of,
            transfer_to: s.transfer_to,
            possibly_same_as: s.possibly_same_as,
            linked_accounts: s.linked_accounts,
            contact_erased: s.contact_erased,
            resolved_at_unix_ms: s.resolved_at_unix_ms,
            linked_reported_at: s.linked_reported_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use gridwork_eventstore::testing::given;

    use super::*;

    fn report(emergency: bool) -> pb::IncidentReported {
        pb::IncidentReported {
            source: pb::Source::RiderInformant as i32,
            category_code: if emergency { "fire".into() } else { "fire-hazard".into() },
            catalogue_version: 1,
            priority: pb::Priority::High as i32,
            reported_at_unix_ms: 1_000,
            emergency,
            ..Default::default()
        }
    }

    fn reported() -> IncidentEvent {
        IncidentEvent::Reported(Box::new(report(false)))
    }

    fn account(id: &str) -> pb::LinkedReport {
        pb::LinkedReport {
            description: format!("{id}: water through the ceiling"),
            ..linked_account(id, &report(false))
        }
    }

    fn claim(by: &str, now: i64, admin: bool) -> IncidentCommand {
        IncidentCommand::Claim { by: by.into(), now_unix_ms: now, ttl_ms: 600_000, admin }
    }

    fn claimed(by: &str, until: i64) -> IncidentEvent {
        IncidentEvent::Claimed(pb::IncidentClaimed { by: by.into(), until_unix_ms: until })
    }

    fn reclassify(category: &str, emergency: bool) -> IncidentCommand {
        IncidentCommand::Reclassify {
            category_code: category.into(),
            catalogue_version: 1,
            attributes: vec![],
            emergency,
            priority: pb::Priority::Urgent,
            by: "triage-1".into(),
            note: "the caller smelled smoke".into(),
            now_unix_ms: 5_000,
        }
    }

    fn transfer(to: &str) -> IncidentCommand {
        IncidentCommand::Transfer {
            to: to.into(),
            reason: "the address is in the next district".into(),
            by: "triage-1".into(),
            now_unix_ms: 5_000,
        }
    }

    fn answer(as_receiver: &str, accept: bool) -> IncidentCommand {
        IncidentCommand::AnswerTransfer {
            as_receiver: as_receiver.into(),
            accept,
            note: "HX-88".into(),
            by: "hx-triage".into(),
            now_unix_ms: 6_000,
        }
    }

    fn transferred(to: &str) -> IncidentEvent {
        IncidentEvent::TransferRequested(pb::TransferRequested {
            to: to.into(),
            reason: "the address is in the next district".into(),
            by: "triage-1".into(),
            at_unix_ms: 5_000,
        })
    }

    fn accepted() -> IncidentEvent {
        IncidentEvent::Accepted(pb::IncidentAccepted {
            by: "triage-1".into(),
            at_unix_ms: 5_000,
            automatic: false,
            settled: Some(settled(&report(false), pb::Priority::High as i32, "", &[], &[])),
        })
    }

    #[test]
    fn triage_corrects_the_category_and_an_emergency_found_so_is_dispatched_at_once() {
        given::<Incident>([reported()]).when(reclassify("fire", true)).then_with(|events| {
            assert!(matches!(&events[0], IncidentEvent::Reclassified(r) if r.from_category_code == "fire-hazard"));
            // Dispatch opens the case from what triage settled, not the report.
            assert!(matches!(&events[1], IncidentEvent::Accepted(a) if a.automatic
                && a.settled.as_ref().is_some_and(|s| s.category_code == "fire" && s.emergency
                    && s.priority == pb::Priority::Urgent as i32)));
        });
        let state = given::<Incident>([reported()]).state().clone().evolve(&IncidentEvent::Reclassified(
            pb::IncidentReclassified { category_code: "sanitation".into(), priority: 2, ..Default::default() },
        ));
        assert_eq!(state.report.expect("report").category_code, "sanitation");
        assert_eq!(state.priority, 2);
        given::<Incident>([reported()])
            .when(reclassify("fire-hazard", false))
            .then_expect_error(IncidentRejection::Unchanged("category".into()));
        // Dispatch owns it once accepted: triage corrects nothing more.
        given::<Incident>([reported(), accepted()])
            .when(reclassify("sanitation", false))
            .then_expect_error(IncidentRejection::NotAwaitingTriage(Status::Accepted));
        // Another's live claim is respected.
        given::<Incident>([reported(), claimed("triage-2", 9_000)])
            .when(reclassify("sanitation", false))
            .then_expect_error(IncidentRejection::ClaimedByOther { by: "triage-2".into(), until_unix_ms: 9_000 });
    }

    #[test]
    fn triage_sets_the_priority_up_or_down_but_not_to_what_it_is() {
        let lower = |p| IncidentCommand::ReassessPriority {
            priority: p,
            by: "triage-1".into(),
            reason: "no one at risk".into(),
            now_unix_ms: 5_000,
        };
        given::<Incident>([reported()]).when(lower(pb::Priority::Low)).then_expect_events([
            IncidentEvent::PriorityReassessed(pb::PriorityReassessed {
                from: pb::Priority::High as i32,
                priority: pb::Priority::Low as i32,
                by: "triage-1".into(),
                reason: "no one at risk".into(),
            }),
        ]);
        given::<Incident>([reported()])
            .when(lower(pb::Priority::High))
            .then_expect_error(IncidentRejection::Unchanged("priority".into()));
    }

    #[test]
    fn a_transfer_stays_with_the_first_receiver_until_the_receiver_accepts() {
        given::<Incident>([reported()]).when(transfer("district:hx")).then_expect_events([transferred("district:hx")]);
        let pending = [reported(), transferred("district:hx")];
        given::<Incident>(pending.clone())
            .when(transfer("utility:gas"))
            .then_expect_error(IncidentRejection::TransferPending("district:hx".into()));
        given::<Incident>(pending.clone())
            .when(answer("district:zz", true))
            .then_expect_error(IncidentRejection::NotTheReceiver { to: "district:hx".into() });
        given::<Incident>([reported()])
            .when(answer("district:hx", true))
            .then_expect_error(IncidentRejection::NoTransfer);
        let accepted_there = given::<Incident>(pending.clone()).state().clone().evolve(
            &IncidentEvent::TransferAccepted(pb::TransferAccepted { to: "district:hx".into(), ..Default::default() }),
        );
        assert_eq!(accepted_there.status, Status::Transferred);
        given::<Incident>(pending.clone()).when(answer("district:hx", false)).then_with(|events| {
            assert!(matches!(&events[0], IncidentEvent::TransferDeclined(d) if d.reason == "HX-88"));
        });
        let declined = given::<Incident>(pending.clone()).state().clone().evolve(&IncidentEvent::TransferDeclined(
            pb::TransferDeclined { to: "district:hx".into(), ..Default::default() },
        ));
        assert_eq!((declined.status, declined.transfer_to.as_str()), (Status::Reported, ""));
        // Still responsible, the first receiver may decide itself; the
        // transfer then has nothing to answer.
        given::<Incident>(pending.clone())
            .when(IncidentCommand::Accept { by: "triage-1".into(), now_unix_ms: 5_500 })
            .then_with(|events| {
                assert!(
                    matches!(&events[0], IncidentEvent::TransferWithdrawn(w) if w.to == "district:hx"),
                    "the receiver sees it lapse: {events:?}"
                );
                assert!(matches!(&events[1], IncidentEvent::Accepted(_)));
            });
        let withdrawn =
            IncidentEvent::TransferWithdrawn(pb::TransferWithdrawn { to: "district:hx".into(), ..Default::default() });
        let mut decided = pending.to_vec();
        decided.extend([withdrawn, accepted()]);
        given::<Incident>(decided).when(answer("district:hx", true)).then_expect_error(IncidentRejection::NoTransfer);
        let withdraw = |now| IncidentCommand::WithdrawTransfer {
            by: "triage-1".into(),
            reason: "sent to the wrong district".into(),
            now_unix_ms: now,
        };
        given::<Incident>(pending.clone()).when(withdraw(5_500)).then_with(|events| {
            assert!(
                matches!(&events[0], IncidentEvent::TransferWithdrawn(w) if w.reason == "sent to the wrong district")
            );
        });
        given::<Incident>([reported()]).when(withdraw(5_500)).then_expect_error(IncidentRejection::NoTransfer);
        // And the state survives a snapshot.
        let state = given::<Incident>(pending).state().clone();
        assert_eq!(Incident::decode_state(&state.encode_state()).expect("decodes"), state);
    }

    #[test]
    fn a_report_for_another_body_is_transferred_not_rejected() {
        given::<Incident>([reported()])
            .when(IncidentCommand::Reject {
                by: "triage-1".into(),
                reason: pb::RejectionReason::OutOfJurisdiction,
                note: String::new(),
                now_unix_ms: 5_000,
            })
            .then_expect_error(IncidentRejection::TransferInstead);
    }

    #[test]
    fn an_ordinary_report_awaits_triage() {
        given::<Incident>([])
            .when(IncidentCommand::Report { report: Box::new(report(false)), nearby: None })
            .then_expect_events([reported()]);
    }

    #[test]
    fn an_emergency_skips_triage_in_the_same_commit() {
        given::<Incident>([])
            .when(IncidentCommand::Report { report: Box::new(report(true)), nearby: None })
            .then_expect_events([IncidentEvent::Reported(Box::new(report(true))), auto_accepted()]);
    }

    #[test]
    fn a_me_too_report_is_recorded_as_a_duplicate_in_the_same_commit() {
        given::<Incident>([])
            .when(IncidentCommand::Report { report: Box::new(report(false)), nearby: Some(open_nearby("orig")) })
            .then_expect_events([
                reported(),
                IncidentEvent::MarkedDuplicate(pb::IncidentMarkedDuplicate {
                    of_incident_id: "orig".into(),
                    by: "system".into(),
                }),
            ]);
    }

    fn open_nearby(id: &str) -> Nearby {
        Nearby::Same { incident_id: id.into(), distance_m: 30.0 }
    }

    fn auto_accepted() -> IncidentEvent {
        IncidentEvent::Accepted(pb::IncidentAccepted {
            by: "system".into(),
            at_unix_ms: 1_000,
            automatic: true,
            settled: Some(settled(&report(true), pb::Priority::High as i32, "", &[], &[])),
        })
    }

    #[test]
    fn an_emergency_near_an_open_one_is_dispatched_and_flagged_never_merged() {
        given::<Incident>([])
            .when(IncidentCommand::Report { report: Box::new(report(true)), nearby: Some(open_nearby("first-fire")) })
            .then_expect_events([
                IncidentEvent::Reported(Box::new(report(true))),
                IncidentEvent::PossibleDuplicateFlagged(pb::PossibleDuplicateFlagged {
                    of_incident_id: "first-fire".into(),
                    distance_m: 30.0,
                }),
                // Dispatch is told, so a dispatcher can merge the cases.
                IncidentEvent::Accepted(pb::IncidentAccepted {
                    by: "system".into(),
                    at_unix_ms: 1_000,
                    automatic: true,
                    settled: Some(settled(&report(true), pb::Priority::High as i32, "first-fire", &[], &[])),
                }),
            ]);
    }

    #[test]
    fn a_report_only_suggested_as_the_same_awaits_triage_flagged() {
        given::<Incident>([])
            .when(IncidentCommand::Report {
                report: Box::new(report(false)),
                nearby: Some(Nearby::Possibly { incident_id: "orig".into(), distance_m: 12.0 }),
            })
            .then_expect_events([
                reported(),
                IncidentEvent::PossibleDuplicateFlagged(pb::PossibleDuplicateFlagged {
                    of_incident_id: "orig".into(),
                    distance_m: 12.0,
                }),
            ]);
    }

    fn marked_duplicate_of(id: &str) -> IncidentEvent {
        IncidentEvent::MarkedDuplicate(pb::IncidentMarkedDuplicate { of_incident_id: id.into(), by: "system".into() })
    }

    #[test]
    fn a_me_too_its_original_could_not_take_goes_back_to_triage() {
        let unlink = |of: &str| IncidentCommand::Unlink { of_incident_id: of.into(), reason: "rejected".into() };
        let unlinked = IncidentEvent::DuplicateUnlinked(pb::DuplicateUnlinked {
            of_incident_id: "orig".into(),
            reason: "rejected".into(),
        });
        given::<Incident>([reported(), marked_duplicate_of("orig")])
            .when(unlink("orig"))
            .then_expect_events([unlinked.clone()]);
        let back = given::<Incident>([reported(), marked_duplicate_of("orig"), unlinked.clone()]);
        assert_eq!((back.state().status, back.state().duplicate_of.as_str()), (Status::Reported, ""));
        // Triage can act on it again.
        back.when(IncidentCommand::Accept { by: "t".into(), now_unix_ms: 5 }).then_with(|e| assert_eq!(e.len(), 1));
        // A stale failure (linked elsewhere since, or already back) changes nothing.
        given::<Incident>([reported(), marked_duplicate_of("other")]).when(unlink("orig")).then_expect_events([]);
        given::<Incident>([reported(), marked_duplicate_of("orig"), unlinked])
            .when(unlink("orig"))
            .then_expect_events([]);
    }

    #[test]
    fn a_report_near_a_closed_incident_is_a_new_incident_noted_as_a_recurrence() {
        let closed = || Some(Nearby::Closed { incident_id: "fixed-last-week".into() });
        let recurrence =
            || IncidentEvent::RecurrenceNoted(pb::RecurrenceNoted { of_incident_id: "fixed-last-week".into() });
        given::<Incident>([])
            .when(IncidentCommand::Report { report: Box::new(report(false)), nearby: closed() })
            .then_expect_events([reported(), recurrence()]);
        given::<Incident>([])
            .when(IncidentCommand::Report { report: Box::new(report(true)), nearby: closed() })
            .then_expect_events([IncidentEvent::Reported(Box::new(report(true))), recurrence(), auto_accepted()]);
    }

    fn outcome(stage: pb::CaseStage, sequence: u64) -> IncidentEvent {
        IncidentEvent::CaseOutcomeRecorded(pb::CaseOutcomeRecorded {
            stage: stage as i32,
            at_unix_ms: 7,
            note: String::new(),
            dispatch_sequence: sequence,
        })
    }

    fn follow(stage: CaseStage, sequence: u64) -> IncidentCommand {
        IncidentCommand::FollowCase {
            stage,
            at_unix_ms: 7,
            note: String::new(),
            dispatch_sequence: sequence,
            merged_into: String::new(),
        }
    }

    #[test]
    fn a_case_merged_by_a_dispatcher_makes_its_report_a_me_too_of_the_other() {
        let accepted = || IncidentEvent::Accepted(pb::IncidentAccepted::default());
        let merged = IncidentCommand::FollowCase {
            stage: CaseStage::Closed,
            at_unix_ms: 7,
            note: String::new(),
            dispatch_sequence: 50,
            merged_into: "first".into(),
        };
        let to_first = IncidentEvent::MarkedDuplicate(pb::IncidentMarkedDuplicate {
            of_incident_id: "first".into(),
            by: "dispatch (case merged)".into(),
        });
        given::<Incident>([reported(), accepted()])
            .when(merged.clone())
            .then_expect_events([outcome(pb::CaseStage::Closed, 50), to_first.clone()]);
        let history = [reported(), accepted(), outcome(pb::CaseStage::Closed, 50), to_first];
        let state = given::<Incident>(history.clone()).state().clone();
        assert_eq!((state.status, state.duplicate_of.as_str()), (Status::Duplicate, "first"));
        // Redelivered: nothing more.
        given::<Incident>(history.clone()).when(merged).then_expect_events([]);
        // The other closed before the link: given back, it is closed with its
        // case — not put back in triage with a case that cannot reopen.
        let unlinked = IncidentEvent::DuplicateUnlinked(pb::DuplicateUnlinked {
            of_incident_id: "first".into(),
            reason: "first is closed".into(),
        });
        given::<Incident>(history.clone())
            .when(IncidentCommand::Unlink { of_incident_id: "first".into(), reason: "first is closed".into() })
            .then_expect_events([unlinked.clone()]);
        let back = given::<Incident>(history.into_iter().chain([unlinked]).collect::<Vec<_>>());
        assert_eq!(back.state().status, Status::Closed);
    }

    #[test]
    fn a_me_too_of_an_original_gone_elsewhere_is_linked_on_to_where_it_went() {
        let relink = |from: &str| IncidentCommand::Relink { from: from.into(), to: "first".into() };
        given::<Incident>([reported(), marked_duplicate_of("second")]).when(relink("second")).then_with(|e| {
            assert!(matches!(e, [IncidentEvent::MarkedDuplicate(d)] if d.of_incident_id == "first"), "{e:?}")
        });
        // Linked elsewhere since, given back, or already there: nothing.
        given::<Incident>([reported(), marked_duplicate_of("third")]).when(relink("second")).then_expect_events([]);
        given::<Incident>([reported()]).when(relink("second")).then_expect_events([]);
        given::<Incident>([reported(), marked_duplicate_of("first")]).when(relink("first")).then_expect_events([]);
    }

    #[test]
    fn an_accepted_incident_follows_its_case_to_closure_in_dispatchs_order() {
        let accepted = || IncidentEvent::Accepted(pb::IncidentAccepted::default());
        given::<Incident>([reported(), accepted()])
            .when(follow(CaseStage::Resolved, 40))
            .then_expect_events([outcome(pb::CaseStage::Resolved, 40)]);
        let resolved = given::<Incident>([reported(), accepted(), outcome(pb::CaseStage::Resolved, 40)]);
        assert_eq!(resolved.state().status, Status::Resolved);
        // A redelivered or older outcome changes nothing.
        given::<Incident>([reported(), accepted(), outcome(pb::CaseStage::Resolved, 40)])
            .when(follow(CaseStage::Reopened, 40))
            .then_expect_events([]);
        let closed = given::<Incident>([reported(), accepted(), outcome(pb::CaseStage::Closed, 41)]);
        assert_eq!(closed.state().status, Status::Closed);
        let reopened = given::<Incident>([
            reported(),
            accepted(),
            outcome(pb::CaseStage::Resolved, 40),
            outcome(pb::CaseStage::Reopened, 41),
        ]);
        assert_eq!(reopened.state().status, Status::Accepted);
    }

    #[test]
    fn only_an_accepted_incident_has_a_case_to_follow() {
        given::<Incident>([reported()])
            .when(follow(CaseStage::Closed, 3))
            .then_expect_error(IncidentRejection::NotAccepted(Status::Reported));
        given::<Incident>([]).when(follow(CaseStage::Closed, 3)).then_expect_error(IncidentRejection::NotReported);
    }

    #[test]
    fn neither_a_closed_nor_a_resolved_incident_takes_more_me_too_reports() {
        let accepted = || IncidentEvent::Accepted(pb::IncidentAccepted::default());
        let link =
            IncidentCommand::LinkReport { report_id: "r".into(), account: None, now_unix_ms: 9, escalate_after: 5 };
        given::<Incident>([reported(), accepted(), outcome(pb::CaseStage::Closed, 41)])
            .when(link.clone())
            .then_expect_error(IncidentRejection::NotOpen(Status::Closed));
        // Resolved: a report now says the fix did not hold (a recurrence).
        given::<Incident>([reported(), accepted(), outcome(pb::CaseStage::Resolved, 41)])
            .when(link)
            .then_expect_error(IncidentRejection::NotOpen(Status::Resolved));
    }

    #[test]
    fn a_live_claim_keeps_others_out_until_it_expires_or_an_admin_breaks_it() {
        given::<Incident>([reported(), claimed("ann", 5_000)])
            .when(claim("bob", 4_000, false))
            .then_expect_error(IncidentRejection::ClaimedByOther { by: "ann".into(), until_unix_ms: 5_000 });
        given::<Incident>([reported(), claimed("ann", 5_000)])
            .when(IncidentCommand::Accept { by: "bob".into(), now_unix_ms: 4_000 })
            .then_expect_error(IncidentRejection::ClaimedByOther { by: "ann".into(), until_unix_ms: 5_000 });
        given::<Incident>([reported(), claimed("ann", 5_000)])
            .when(claim("bob", 5_001, false))
            .then_expect_events([claimed("bob", 605_001)]);
        given::<Incident>([reported(), claimed("ann", 5_000)]).when(claim("root", 4_000, true)).then_expect_events([
            IncidentEvent::ClaimBroken(pb::ClaimBroken { by: "root".into(), holder: "ann".into() }),
            claimed("root", 604_000),
        ]);
    }

    #[test]
    fn the_claim_holder_may_decide() {
        given::<Incident>([reported(), claimed("ann", 5_000)])
            .when(IncidentCommand::Reject {
                by: "ann".into(),
                reason: pb::RejectionReason::Spam,
                note: "advert".into(),
                now_unix_ms: 4_000,
            })
            .then_expect_events([IncidentEvent::Rejected(pb::IncidentRejected {
                by: "ann".into(),
                reason: pb::RejectionReason::Spam as i32,
                note: "advert".into(),
            })]);
    }

    #[test]
    fn a_decided_incident_cannot_be_triaged_again() {
        let accepted = IncidentEvent::Accepted(pb::IncidentAccepted::default());
        given::<Incident>([reported(), accepted])
            .when(IncidentCommand::Accept { by: "ann".into(), now_unix_ms: 1 })
            .then_expect_error(IncidentRejection::NotAwaitingTriage(Status::Accepted));
        given::<Incident>([])
            .when(IncidentCommand::Accept { by: "ann".into(), now_unix_ms: 1 })
            .then_expect_error(IncidentRejection::NotReported);
    }

    fn mark_duplicate(of: &str, target: (Status, &str)) -> IncidentCommand {
        IncidentCommand::MarkDuplicate {
            of_incident_id: of.into(),
            target: (target.0, target.1.into()),
            own_id: "a".into(),
            by: "x".into(),
            now_unix_ms: 1,
        }
    }

    #[test]
    fn an_incident_is_not_a_duplicate_of_itself() {
        given::<Incident>([reported()])
            .when(mark_duplicate("a", (Status::Reported, "")))
            .then_expect_error(IncidentRejection::SelfDuplicate);
    }

    #[test]
    fn a_report_is_merged_only_into_a_live_incident_that_is_no_duplicate_itself() {
        for status in [Status::Reported, Status::Accepted] {
            given::<Incident>([reported()])
                .when(mark_duplicate("b", (status, "")))
                .then_with(|e| assert!(matches!(e, [IncidentEvent::MarkedDuplicate(_)]), "{e:?}"));
        }
        for status in [Status::Resolved, Status::Closed, Status::Rejected] {
            given::<Incident>([reported()])
                .when(mark_duplicate("b", (status, "")))
                .then_expect_error(IncidentRejection::TargetNotOpen(status));
        }
        given::<Incident>([reported()])
            .when(mark_duplicate("b", (Status::Duplicate, "c")))
            .then_expect_error(IncidentRejection::TargetIsDuplicate { original: "c".into() });
        given::<Incident>([reported()])
            .when(mark_duplicate("b", (Status::New, "")))
            .then_expect_error(IncidentRejection::TargetNotReported);
    }

    #[test]
    fn a_contact_is_read_only_while_held_and_each_read_and_erasure_is_recorded() {
        let sealed = pb::SealedContact { nonce: vec![1; 12], ciphertext: vec![2; 40] };
        let with_contact =
            IncidentEvent::Reported(Box::new(pb::IncidentReported { sealed_contact: Some(sealed), ..report(false) }));
        let read = |by: &str| IncidentCommand::ReadContact {
            by: by.into(),
            purpose: "回访: did the repair hold?".into(),
            now_unix_ms: 7,
        };
        let erase =
            IncidentCommand::EraseContact { by: "dpo-1".into(), reason: "the reporter asked".into(), now_unix_ms: 8 };
        let erased = IncidentEvent::ContactErased(pb::ContactErased {
            by: "dpo-1".into(),
            reason: "the reporter asked".into(),
            at_unix_ms: 8,
        });
        given::<Incident>([with_contact.clone()]).when(read("w7")).then_expect_events([IncidentEvent::ContactRead(
            pb::ContactRead { by: "w7".into(), purpose: "回访: did the repair hold?".into(), at_unix_ms: 7 },
        )]);
        given::<Incident>([reported()]).when(read("w7")).then_expect_error(IncidentRejection::NoContact);
        given::<Incident>([]).when(read("w7")).then_expect_error(IncidentRejection::NotReported);
        given::<Incident>([with_contact.clone()]).when(erase.clone()).then_expect_events([erased.clone()]);
        given::<Incident>([with_contact.clone(), erased.clone()])
            .when(read("w7"))
            .then_expect_error(IncidentRejection::ContactErased);
        // Erasing again records nothing; a report without a contact still
        // has its own account to erase (issue 10).
        given::<Incident>([with_contact, erased.clone()]).when(erase.clone()).then_expect_events([]);
        given::<Incident>([reported()]).when(erase).then_expect_events([erased]);
    }

    #[test]
    fn enough_me_too_reports_raise_the_priority_once() {
        let link = |id: &str| IncidentCommand::LinkReport {
            report_id: id.into(),
            account: Some(account(id)),
            now_unix_ms: 9,
            escalate_after: 2,
        };
        let linked = |id: &str| {
            IncidentEvent::ReportLinked(pb::ReportLinked {
                report_id: id.into(),
                at_unix_ms: 9,
                report: Some(account(id)),
                original_in_triage: true,
            })
        };
        given::<Incident>([reported()]).when(link("r1")).then_expect_events([linked("r1")]);
        given::<Incident>([reported(), linked("r1")]).when(link("r2")).then_expect_events([
            linked("r2"),
            IncidentEvent::PriorityRaised(pb::PriorityRaised {
                priority: pb::Priority::Urgent as i32,
                reason: "2 further reports of the same problem nearby".into(),
            }),
        ]);
        given::<Incident>([reported(), linked("r1")]).when(link("r1")).then_expect_events([]);
        // The accounts travel with the acceptance: the case opens with them.
        given::<Incident>([reported(), linked("r1"), linked("r2")])
            .when(IncidentCommand::Accept { by: "ann".into(), now_unix_ms: 10 })
            .then_with(|e| {
                let [IncidentEvent::Accepted(a)] = e else { panic!("{e:?}") };
                let linked = &a.settled.as_ref().expect("settled").linked;
                assert_eq!(linked, &[account("r1"), account("r2")]);
            });
        // Linked to an accepted original: dispatch's to carry to its case.
        let accepted = IncidentEvent::Accepted(pb::IncidentAccepted::default());
        given::<Incident>([reported(), accepted])
            .when(link("r3"))
            .then_with(|e| assert!(matches!(e, [IncidentEvent::ReportLinked(l)] if !l.original_in_triage), "{e:?}"));
        let rejected = IncidentEvent::Rejected(pb::IncidentRejected::default());
        given::<Incident>([reported(), rejected])
            .when(link("r3"))
            .then_expect_error(IncidentRejection::NotOpen(Status::Rejected));
    }

    #[test]
    fn an_incident_carries_the_first_accounts_and_every_linked_id_to_its_case() {
        let linked = |i: usize| {
            IncidentEvent::ReportLinked(pb::ReportLinked {
                report_id: format!("r{i}"),
                at_unix_ms: 9,
                report: Some(pb::LinkedReport { reported_at_unix_ms: 1_000 + i as i64, ..account(&format!("r{i}")) }),
                original_in_triage: true,
            })
        };
        let history: Vec<_> = std::iter::once(reported()).chain((0..MAX_LINKED_ACCOUNTS + 2).map(linked)).collect();
        let state = given::<Incident>(history.clone()).state().clone();
        assert_eq!((state.linked.len(), state.linked_accounts.len()), (MAX_LINKED_ACCOUNTS + 2, MAX_LINKED_ACCOUNTS));
        // When each was made, beyond the accounts' cap too, through a snapshot.
        let expected: Vec<i64> = (0..MAX_LINKED_ACCOUNTS + 2).map(|i| 1_000 + i as i64).collect();
        assert_eq!(state.linked_reported_at, expected);
        let restored = Incident::decode_state(&state.encode_state()).expect("decode");
        assert_eq!(restored.linked_reported_at, expected);
        given::<Incident>(history).when(IncidentCommand::Accept { by: "ann".into(), now_unix_ms: 10 }).then_with(|e| {
            let [IncidentEvent::Accepted(a)] = e else { panic!("{e:?}") };
            let settled = a.settled.as_ref().expect("settled");
            assert_eq!(settled.linked.len(), MAX_LINKED_ACCOUNTS);
            // The rest by id: their reporters may rate the case too.
            assert_eq!(
                settled.more_linked,
                [format!("r{MAX_LINKED_ACCOUNTS}"), format!("r{}", MAX_LINKED_ACCOUNTS + 1)]
            );
        });
    }

    #[test]
    fn a_resolved_incident_takes_a_late_link_only_for_a_report_made_before_the_resolution() {
        let accepted = || IncidentEvent::Accepted(pb::IncidentAccepted::default());
        // Resolved at 7 (the `outcome` helper's time).
        let resolved = [reported(), accepted(), outcome(pb::CaseStage::Resolved, 40)];
        let link = |id: &str, reported_at: i64| IncidentCommand::LinkReport {
            report_id: id.into(),
            account: Some(pb::LinkedReport { reported_at_unix_ms: reported_at, ..account(id) }),
            now_unix_ms: 9,
            escalate_after: 5,
        };
        given::<Incident>(resolved.clone())
            .when(link("before", 5))
            .then_with(|e| assert!(matches!(e, [IncidentEvent::ReportLinked(l)] if l.report_id == "before"), "{e:?}"));
        given::<Incident>(resolved.clone())
            .when(link("after", 8))
            .then_expect_error(IncidentRejection::NotOpen(Status::Resolved));
        // Reopened and resolved again: the new resolution's time counts.
        let again =
            [reported(), accepted(), outcome(pb::CaseStage::Resolved, 40), outcome(pb::CaseStage::Reopened, 41)];
        let state = given::<Incident>(again).state().clone();
        assert_eq!(state.resolved_at_unix_ms, 0);
        let state = given::<Incident>(resolved).state().clone();
        assert_eq!(Incident::decode_state(&state.encode_state()).expect("decodes"), state);
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let state = given::<Incident>([reported(), claimed("ann", 5)]).state().clone();
        assert_eq!(Incident::decode_state(&state.encode_state()).expect("decodes"), state);
        let accepted = IncidentEvent::Accepted(pb::IncidentAccepted::default());
        let state = given::<Incident>([reported(), accepted, outcome(pb::CaseStage::Closed, 9)]).state().clone();
        assert_eq!(Incident::decode_state(&state.encode_state()).expect("decodes"), state);
    }
}
