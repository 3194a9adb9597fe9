//! Intake's read models: its own copy of the tree's boundaries (from `GRID`, to
//! place reports without calling the registry) and the incidents with their
//! history (from `INTAKE`); and the linker, a reactor on `INTAKE`.

use gridwork_eventstore::projection::{ApplyError, Projection, TableDef, Tables, UnknownEvents};
use gridwork_eventstore::{ExecuteError, Reactor, RecordedCommit};
use gridwork_proto::gridwork::grid::v1 as grid_pb;
use gridwork_proto::gridwork::intake::v1 as pb;
use prost::Message as _;
use sqlx::{AnyConnection, AssertSqlSafe};

use crate::domain::incident::{IncidentCommand, IncidentRejection};
use crate::events::IncidentEvent;

/// Units of the tree as intake needs them.
pub const GRID_UNITS: TableDef = TableDef {
    name: "intake_grid_units",
    columns: "(unit_id TEXT PRIMARY KEY, parent_id TEXT NOT NULL, kind BIGINT NOT NULL, name TEXT NOT NULL, \
              boundary_geojson TEXT NOT NULL, position BIGINT NOT NULL)",
    indexes: &["position"],
};

/// Projects `GRID` boundaries. Reads the registry's published event messages
/// (`gridwork.grid.v1`), not its code.
#[derive(Debug, Clone, Copy, Default)]
pub struct GridCopy;

impl Projection for GridCopy {
    fn name(&self) -> &str {
        "intake_grid"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[GRID_UNITS]
    }

    /// Another context's stream: an event type added there is not this
    /// service's business until it is taught to read it.
    fn unknown_events(&self) -> UnknownEvents {
        UnknownEvents::Skip
    }

    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        let table = tables.name(GRID_UNITS.name);
        let parent = match commit.aggregate_id() {
            "root" => "",
            other => other,
        };
        for e in commit.events_at_version(1)? {
            let decode = |err: prost::DecodeError| gridwork_eventstore::DecodeError::new(e.event_type.clone(), err);
            match e.event_type.as_str() {
                "grid.unit.child_registered" => {
                    let c = grid_pb::ChildRegistered::decode(e.payload.as_slice()).map_err(decode)?;
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {table} (unit_id, parent_id, kind, name, boundary_geojson, position) \
                         VALUES ($1, $2, $3, $4, $5, $6)"
                    )))
                    .bind(&c.child_id)
                    .bind(parent)
                    .bind(i64::from(c.kind))
                    .bind(&c.name)
                    .bind(&c.boundary_geojson)
                    .bind(commit.sequence as i64)
                    .execute(&mut *tx)
                    .await?;
                }
                "grid.unit.child_boundary_redrawn" => {
                    let c = grid_pb::ChildBoundaryRedrawn::decode(e.payload.as_slice()).map_err(decode)?;
                    sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {table} SET boundary_geojson = $1, position = $2 WHERE unit_id = $3"
                    )))
                    .bind(&c.boundary_geojson)
                    .bind(commit.sequence as i64)
                    .bind(&c.child_id)
                    .execute(&mut *tx)
                    .await?;
                }
                // Staff, households and party branches do not place anything.
                _ => {}
            }
        }
        Ok(())
    }
}

/// The process manager that links a duplicate to its original: on every
/// `IncidentMarkedDuplicate` (automatic "me too" or triage's decision) it records
/// `ReportLinked` on the original, idempotent by the duplicate's id. One consumer
/// does them in stream order, so a burst of reports of one fire does not contend
/// for the original.
pub struct Linker {
    /// Incidents.
    pub incidents: gridwork_eventstore::Repository<crate::domain::incident::Incident>,
    /// Raise the original's priority after this many links.
    pub escalate_after: usize,
}

impl Reactor for Linker {
    fn name(&self) -> &str {
        "intake_linker"
    }

    /// Its own service's stream: an event type it does not know is a newer
    /// replica's, and may be a duplicate to link; wait for the upgrade.
    fn unknown_events(&self) -> UnknownEvents {
        UnknownEvents::Stall
    }

    async fn react(&self, _tx: &mut AnyConnection, commit: &RecordedCommit) -> Result<(), ApplyError> {
        if !commit.subject.starts_with("intake.incident.") {
            return Ok(());
        }
        let id = commit.aggregate_id().to_string();
        for event in commit.decode_events::<IncidentEvent>()? {
            match event {
                IncidentEvent::MarkedDuplicate(d) => {
                    // The me-too's own account travels with the link, for the
                    // handler of the original (its contact stays behind).
                    let me_too = self.incidents.load_current(&id).await.map_err(ApplyError::from_store)?.state;
                    let account = me_too.report.as_ref().map(|r| crate::domain::incident::linked_account(&id, r));
                    let command = IncidentCommand::LinkReport {
                        report_id: id.clone(),
                        account,
                        now_unix_ms: commit.body.decided_at_unix_ms,
                        escalate_after: self.escalate_after,
                    };
                    let meta = self.meta(format!("link-{id}"), commit);
                    let mut outcome = self.incidents.execute(&d.of_incident_id, &command, &meta).await;
                    // An original placed moments ago whose own commit has not
                    // landed yet (reports at one spot at once): wait for it,
                    // within the grace the zone gives it, before calling it
                    // never written.
                    while matches!(outcome, Err(ExecuteError::Rejected(IncidentRejection::NotReported)))
                        && gridwork_eventstore::projection::store::now_ms()
                            < commit.body.decided_at_unix_ms + crate::app::PENDING_GRACE_MS
                    {
                        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                        outcome = self.incidents.execute(&d.of_incident_id, &command, &meta).await;
                    }
                    match outcome {
                        // Its own me-toos follow it to the incident it went to
                        // (a dispatcher merged its case, or triage merged it).
                        Ok(_) => {
                            for report_id in &me_too.linked {
                                let command =
                                    IncidentCommand::Relink { from: id.clone(), to: d.of_incident_id.clone() };
                                let meta = self.meta(format!("relink-{}", commit.sequence), commit);
                                match self.incidents.execute(report_id, &command, &meta).await {
                                    Ok(_) | Err(ExecuteError::Rejected(_)) => {}
                                    Err(ExecuteError::Store(e)) => return Err(ApplyError::from_store(e)),
                                }
                            }
                        }
                        // The original went on to another incident itself
                        // (merged): linked on to that one, one hop, if it is
                        // open — never round a ring of duplicates.
                        Err(ExecuteError::Rejected(IncidentRejection::NotOpen(
                            crate::domain::incident::Status::Duplicate,
                        ))) if self.relink_on(&id, &d.of_incident_id, commit).await? => {}
                        // The original was rejected, closed or merged before
                        // the link, or never written: the report goes back
                        // to triage as an incident of its own, never dropped.
                        Err(ExecuteError::Rejected(refusal)) => {
                            self.unlink(&id, &d.of_incident_id, refusal.to_string(), commit).await?
                        }
                        Err(ExecuteError::Store(e)) => return Err(ApplyError::from_store(e)),
                    }
                }
                // Resolved or closed at T: a me-too reported after T was
                // linked in the moments before intake learnt of it (dispatch's
                // outcome lags). It says the fix did not hold — triage's to
                // judge as a new incident, not a report closed unseen.
                IncidentEvent::CaseOutcomeRecorded(o)
                    if matches!(
                        pb::CaseStage::try_from(o.stage),
                        Ok(pb::CaseStage::Resolved | pb::CaseStage::Closed)
                    ) =>
                {
                    let original = self.incidents.load_current(&id).await.map_err(ApplyError::from_store)?.state;
                    // Judged on the state this outcome left, not a later one
                    // (a replayed batch: reopened since, linked anew), and
                    // not for a merge — its me-toos are linked on with it.
                    if original.case_sequence != o.dispatch_sequence
                        || original.status == crate::domain::incident::Status::Duplicate
                    {
                        continue;
                    }
                    let reason =
                        format!("reported after {id}'s case was resolved or closed: the fix may not have held");
                    // When each was reported: kept with every link (state 8),
                    // else carried with the first accounts, else — links
                    // written before either — read from the me-too itself (a
                    // few at a time: a city-wide outage draws thousands, and
                    // the linker waits for them).
                    use futures::{StreamExt as _, TryStreamExt as _};
                    let mut carried: std::collections::HashMap<String, i64> =
                        original.linked_accounts.iter().map(|a| (a.report_id.clone(), a.reported_at_unix_ms)).collect();
                    for (report_id, at) in original.linked.iter().zip(&original.linked_reported_at) {
                        if *at > 0 {
                            carried.insert(report_id.clone(), *at);
                        }
                    }
                    let incidents = self.incidents.clone();
                    let times: Vec<(String, i64)> = futures::stream::iter(original.linked.clone())
                        .map(|report_id: String| {
                            let (carried, incidents) = (carried.get(&report_id).copied(), incidents.clone());
                            async move {
                                let reported_at = match carried {
                                    Some(at) => at,
                                    None => {
                                        let me_too =
                                            incidents.load_current(&report_id).await.map_err(ApplyError::from_store)?;
                                        me_too.state.report.map_or(0, |r| r.reported_at_unix_ms)
                                    }
                                };
                                Ok::<_, ApplyError>((report_id, reported_at))
                            }
                        })
                        .buffered(16)
                        .try_collect()
                        .await?;
                    for (report_id, reported_at) in times {
                        if reported_at > o.at_unix_ms {
                            self.unlink(&report_id, &id, reason.clone(), commit).await?;
                        }
                    }
                }
                // Rejecting an original (as spam, say) says nothing about the
                // reports linked to it: each goes back to triage.
                IncidentEvent::Rejected(r) => {
                    let original = self.incidents.load_current(&id).await.map_err(ApplyError::from_store)?;
                    let reason = format!("{id} was rejected ({})", reason_label(r.reason));
                    for report_id in &original.state.linked {
                        self.unlink(report_id, &id, reason.clone(), commit).await?;
                    }
                }
                // Taken on by another body: the reports linked to it go back to
                // triage here, to be sent after it (or dealt with) — not left
                // as duplicates of a report this city no longer holds.
                IncidentEvent::TransferAccepted(t) => {
                    let original = self.incidents.load_current(&id).await.map_err(ApplyError::from_store)?;
                    let reason = format!("{id} was transferred to {}", t.to);
                    for report_id in &original.state.linked {
                        self.unlink(report_id, &id, reason.clone(), commit).await?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}

impl Linker {
    fn meta(&self, command_id: String, commit: &RecordedCommit) -> gridwork_eventstore::CommandMeta {
        gridwork_eventstore::CommandMeta {
            command_id,
            principal: "service:intake-linker".into(),
            decided_at_unix_ms: commit.body.decided_at_unix_ms,
            request_digest: 0,
        }
    }

    /// `report_id`'s original went on to another incident: link it on there
    /// if that one is open. False if it is not (the caller gives the report
    /// back).
    async fn relink_on(&self, report_id: &str, original: &str, commit: &RecordedCommit) -> Result<bool, ApplyError> {
        use crate::domain::incident::Status;
        let went_to = self.incidents.load_current(original).await.map_err(ApplyError::from_store)?.state.duplicate_of;
        if went_to.is_empty() || went_to == report_id {
            return Ok(false);
        }
        let target = self.incidents.load_current(&went_to).await.map_err(ApplyError::from_store)?.state;
        if !matches!(target.status, Status::Reported | Status::Accepted) {
            return Ok(false);
        }
        let command = IncidentCommand::Relink { from: original.to_string(), to: went_to };
        let meta = self.meta(format!("relink-{}", commit.sequence), commit);
        match self.incidents.execute(report_id, &command, &meta).await {
            Ok(_) => Ok(true),
            Err(ExecuteError::Rejected(_)) => Ok(false),
            Err(ExecuteError::Store(e)) => Err(ApplyError::from_store(e)),
        }
    }

    /// Give `report_id` back to triage, if it is still linked to `original`.
    async fn unlink(
        &self,
        report_id: &str,
        original: &str,
        reason: String,
        commit: &RecordedCommit,
    ) -> Result<(), ApplyError> {
        let command = IncidentCommand::Unlink { of_incident_id: original.to_string(), reason };
        // One per commit reacted to: the same report may be linked, given
        // back and linked again later.
        let meta = self.meta(format!("unlink-{}", commit.sequence), commit);
        match self.incidents.execute(report_id, &command, &meta).await {
            Ok(_) | Err(ExecuteError::Rejected(_)) => Ok(()),
            Err(ExecuteError::Store(e)) => Err(ApplyError::from_store(e)),
        }
    }
}

/// Incidents.
pub const INCIDENTS: TableDef = TableDef {
    name: "intake_incidents",
    columns: "(incident_id TEXT PRIMARY KEY, status BIGINT NOT NULL, source BIGINT NOT NULL, category_code TEXT NOT NULL, \
              catalogue_version BIGINT NOT NULL, lat DOUBLE PRECISION NOT NULL, lon DOUBLE PRECISION NOT NULL, \
              district_id TEXT NOT NULL, street_id TEXT NOT NULL, community_id TEXT NOT NULL, grid_id TEXT NOT NULL, \
              micro_grid_id TEXT NOT NULL, description TEXT NOT NULL, priority BIGINT NOT NULL, emergency BIGINT NOT NULL, \
              claimed_by TEXT NOT NULL, claim_until_ms BIGINT NOT NULL, duplicate_of TEXT NOT NULL, \
              reported_at_ms BIGINT NOT NULL, contact_ref TEXT NOT NULL, position BIGINT NOT NULL, \
              possibly_same_as TEXT NOT NULL, recurrence_of TEXT NOT NULL, closed_at_ms BIGINT NOT NULL, \
              address_text TEXT NOT NULL, transfer_to TEXT NOT NULL, sealed_description TEXT NOT NULL, \
              sealed_address_text TEXT NOT NULL)",
    indexes: &["grid_id, status", "category_code, status", "reported_at_ms", "duplicate_of"],
};

/// Every event of every incident, for the timeline.
pub const HISTORY: TableDef = TableDef {
    name: "intake_incident_history",
    columns: "(incident_id TEXT NOT NULL, sequence BIGINT NOT NULL, idx BIGINT NOT NULL, at_ms BIGINT NOT NULL, \
              event_type TEXT NOT NULL, summary TEXT NOT NULL, principal TEXT NOT NULL, \
              PRIMARY KEY (incident_id, sequence, idx))",
    indexes: &[],
};

/// Projects incidents.
#[derive(Debug, Clone, Copy, Default)]
pub struct Incidents;

/// Status numbers stored (the `IncidentStatus` proto values).
fn status_number(s: pb::IncidentStatus) -> i64 {
    s as i64
}

impl Projection for Incidents {
    fn name(&self) -> &str {
        "intake_incidents"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[INCIDENTS, HISTORY]
    }

    /// 2: the case's outcome (resolved, closed), possible duplicates and
    /// recurrences. 3: the address text; "me too" reports given back to
    /// triage. 4: triage's corrections and transfers (`transfer_to`).
    /// 5: sealed contacts (`contact_ref` = "sealed"), contact reads and
    /// erasures in the history. 6: a correction clears `possibly_same_as`; a
    /// report given back after its case was merged away stays closed.
    /// 7: the account sealed (`sealed_description`, `sealed_address_text`,
    /// opened when read); a me-too's description no longer in the history;
    /// an erasure blanks an account kept in plain.
    fn version(&self) -> u32 {
        7
    }

    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        if !commit.subject.starts_with("intake.incident.") {
            return Ok(());
        }
        let incidents = tables.name(INCIDENTS.name);
        let history = tables.name(HISTORY.name);
        let id = commit.aggregate_id();
        let position = commit.sequence as i64;
        let at = commit.body.decided_at_unix_ms;
        let principal = commit.principal().to_string();
        for (idx, event) in commit.decode_events::<IncidentEvent>()?.into_iter().enumerate() {
            let (event_type, summary) = match &event {
                IncidentEvent::Reported(r) => {
                    ("reported", format!("reported: {} via {}", r.category_code, source_label(r.source)))
                }
                IncidentEvent::Claimed(c) => ("claimed", format!("claimed by {}", c.by)),
                IncidentEvent::ClaimBroken(c) => ("claim_broken", format!("{} broke {}'s claim", c.by, c.holder)),
                IncidentEvent::Accepted(a) if a.automatic => ("accepted", "accepted without triage (emergency)".into()),
                IncidentEvent::Accepted(a) => ("accepted", format!("accepted by {}", a.by)),
                IncidentEvent::Rejected(r) => {
                    ("rejected", format!("rejected by {}: {} {}", r.by, reason_label(r.reason), r.note))
                }
                IncidentEvent::MarkedDuplicate(d) => ("marked_duplicate", format!("duplicate of {}", d.of_incident_id)),
                IncidentEvent::ReportLinked(l) => (
                    "report_linked",
                    match &l.report {
                        // An account in plain (earlier events); a sealed one is
                        // read with the incident, never copied into the history.
                        Some(r) if !r.description.is_empty() => format!("me too: {} ({})", l.report_id, r.description),
                        _ => format!("me too: {}", l.report_id),
                    },
                ),
                IncidentEvent::PriorityRaised(p) => ("priority_raised", format!("priority raised: {}", p.reason)),
                IncidentEvent::CaseOutcomeRecorded(o) => ("case_outcome_recorded", outcome_summary(o)),
                IncidentEvent::PossibleDuplicateFlagged(f) => (
                    "possible_duplicate_flagged",
                    format!(
                        "possibly the same as {} ({:.0} m away): for a person to merge or not",
                        f.of_incident_id, f.distance_m
                    ),
                ),
                IncidentEvent::RecurrenceNoted(r) => {
                    ("recurrence_noted", format!("recurrence of {}, closed earlier", r.of_incident_id))
                }
                IncidentEvent::DuplicateUnlinked(u) => (
                    "duplicate_unlinked",
                    format!("back to triage: {} could not take it ({})", u.of_incident_id, u.reason),
                ),
                IncidentEvent::Reclassified(r) => (
                    "reclassified",
                    format!("reclassified by {}: {} → {} ({})", r.by, r.from_category_code, r.category_code, r.note),
                ),
                IncidentEvent::Relocated(r) => {
                    let path = r.grid_path.clone().unwrap_or_default();
                    ("relocated", format!("relocated by {} to {} ({})", r.by, path.micro_grid_id, r.note))
                }
                IncidentEvent::PriorityReassessed(p) => (
                    "priority_reassessed",
                    format!("priority set by {}: {} → {} ({})", p.by, p.from, p.priority, p.reason),
                ),
                IncidentEvent::TransferRequested(t) => {
                    ("transfer_requested", format!("transfer to {} requested by {}: {}", t.to, t.by, t.reason))
                }
                IncidentEvent::TransferAccepted(t) => (
                    "transfer_accepted",
                    format!(
                        "{} accepted the transfer{}",
                        t.to,
                        if t.reference.is_empty() { String::new() } else { format!(" as {}", t.reference) }
                    ),
                ),
                IncidentEvent::TransferDeclined(t) => {
                    ("transfer_declined", format!("{} declined the transfer: {}; back in triage", t.to, t.reason))
                }
                IncidentEvent::TransferWithdrawn(t) => {
                    ("transfer_withdrawn", format!("transfer to {} withdrawn by {}: {}", t.to, t.by, t.reason))
                }
                IncidentEvent::ContactRead(c) => ("contact_read", format!("contact read by {}: {}", c.by, c.purpose)),
                IncidentEvent::ContactErased(c) => {
                    ("contact_erased", format!("contact erased by {}: {}", c.by, c.reason))
                }
            };
            match event {
                IncidentEvent::Reported(r) => {
                    let path = r.grid_path.clone().unwrap_or_default();
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {incidents} (incident_id, status, source, category_code, catalogue_version, lat, lon, \
                         district_id, street_id, community_id, grid_id, micro_grid_id, description, priority, emergency, \
                         claimed_by, claim_until_ms, duplicate_of, reported_at_ms, contact_ref, position, \
                         possibly_same_as, recurrence_of, closed_at_ms, address_text, transfer_to, sealed_description, \
                         sealed_address_text) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, '', 0, '', $16, $17, $18, \
                         '', '', 0, $19, '', $20, $21)"
                    )))
                    .bind(id)
                    .bind(status_number(pb::IncidentStatus::Reported))
                    .bind(i64::from(r.source))
                    .bind(&r.category_code)
                    .bind(i64::from(r.catalogue_version))
                    .bind(r.lat)
                    .bind(r.lon)
                    .bind(&path.district_id)
                    .bind(&path.street_id)
                    .bind(&path.community_id)
                    .bind(&path.grid_id)
                    .bind(&path.micro_grid_id)
                    .bind(&r.description)
                    .bind(i64::from(r.priority))
                    .bind(i64::from(r.emergency))
                    .bind(r.reported_at_unix_ms)
                    // Sealed: the vault knows whether its key is live.
                    .bind(if r.sealed_contact.is_some() { crate::contacts::SEALED } else { r.contact_ref.as_str() })
                    .bind(position)
                    .bind(&r.address_text)
                    .bind(gridwork_personal::to_column(r.sealed_description.as_ref()))
                    .bind(gridwork_personal::to_column(r.sealed_address_text.as_ref()))
                    .execute(&mut *tx)
                    .await?;
                }
                IncidentEvent::Claimed(c) => {
                    update(tx, &incidents, id, position, "claimed_by = $3, claim_until_ms = $4", |q| {
                        q.bind(c.by.clone()).bind(c.until_unix_ms)
                    })
                    .await?
                }
                IncidentEvent::ClaimBroken(_) => {
                    update(tx, &incidents, id, position, "claimed_by = '', claim_until_ms = 0", |q| q).await?
                }
                IncidentEvent::Accepted(_) => {
                    set_status(tx, &incidents, id, position, pb::IncidentStatus::Accepted).await?
                }
                IncidentEvent::Rejected(_) => {
                    set_status(tx, &incidents, id, position, pb::IncidentStatus::Rejected).await?
                }
                IncidentEvent::MarkedDuplicate(d) => {
                    set_status(tx, &incidents, id, position, pb::IncidentStatus::Duplicate).await?;
                    update(tx, &incidents, id, position, "duplicate_of = $3", |q| q.bind(d.of_incident_id.clone()))
                        .await?
                }
                IncidentEvent::ReportLinked(_) => update(tx, &incidents, id, position, "", |q| q).await?,
                IncidentEvent::PriorityRaised(p) => {
                    update(tx, &incidents, id, position, "priority = $3", |q| q.bind(i64::from(p.priority))).await?
                }
                IncidentEvent::CaseOutcomeRecorded(o) => {
                    let (status, closed_at) = match pb::CaseStage::try_from(o.stage) {
                        Ok(pb::CaseStage::Resolved) => (pb::IncidentStatus::Resolved, 0),
                        Ok(pb::CaseStage::Closed) => (pb::IncidentStatus::Closed, o.at_unix_ms),
                        _ => (pb::IncidentStatus::Accepted, 0),
                    };
                    update(tx, &incidents, id, position, "status = $3, closed_at_ms = $4", |q| {
                        q.bind(status_number(status)).bind(closed_at)
                    })
                    .await?
                }
                IncidentEvent::PossibleDuplicateFlagged(f) => {
                    update(tx, &incidents, id, position, "possibly_same_as = $3", |q| q.bind(f.of_incident_id.clone()))
                        .await?
                }
                IncidentEvent::RecurrenceNoted(r) => {
                    update(tx, &incidents, id, position, "recurrence_of = $3", |q| q.bind(r.of_incident_id.clone()))
                        .await?
                }
                // Back to triage, or closed if its own case was merged away
                // (as the aggregate decides: it had a case outcome).
                IncidentEvent::DuplicateUnlinked(_) => {
                    let set = "status = CASE WHEN closed_at_ms > 0 THEN $3 ELSE $4 END, duplicate_of = ''";
                    update(tx, &incidents, id, position, set, |q| {
                        q.bind(status_number(pb::IncidentStatus::Closed))
                            .bind(status_number(pb::IncidentStatus::Reported))
                    })
                    .await?
                }
                IncidentEvent::Reclassified(r) => {
                    let set = "category_code = $3, catalogue_version = $4, emergency = $5, priority = $6, possibly_same_as = ''";
                    update(tx, &incidents, id, position, set, |q| {
                        q.bind(r.category_code.clone())
                            .bind(i64::from(r.catalogue_version))
                            .bind(i64::from(r.emergency))
                            .bind(i64::from(r.priority))
                    })
                    .await?
                }
                IncidentEvent::Relocated(r) => {
                    let path = r.grid_path.clone().unwrap_or_default();
                    let set = "lat = $3, lon = $4, district_id = $5, street_id = $6, community_id = $7, grid_id = $8, \
                               micro_grid_id = $9, address_text = $10, sealed_address_text = $11, possibly_same_as = ''";
                    update(tx, &incidents, id, position, set, |q| {
                        q.bind(r.lat)
                            .bind(r.lon)
                            .bind(path.district_id)
                            .bind(path.street_id)
                            .bind(path.community_id)
                            .bind(path.grid_id)
                            .bind(path.micro_grid_id)
                            .bind(r.address_text.clone())
                            .bind(gridwork_personal::to_column(r.sealed_address_text.as_ref()))
                    })
                    .await?
                }
                IncidentEvent::PriorityReassessed(p) => {
                    update(tx, &incidents, id, position, "priority = $3", |q| q.bind(i64::from(p.priority))).await?
                }
                IncidentEvent::TransferRequested(t) => {
                    update(tx, &incidents, id, position, "transfer_to = $3", |q| q.bind(t.to.clone())).await?
                }
                IncidentEvent::TransferAccepted(_) => {
                    update(tx, &incidents, id, position, "status = $3, claimed_by = '', claim_until_ms = 0", |q| {
                        q.bind(status_number(pb::IncidentStatus::Transferred))
                    })
                    .await?
                }
                IncidentEvent::TransferDeclined(_) | IncidentEvent::TransferWithdrawn(_) => {
                    update(tx, &incidents, id, position, "transfer_to = ''", |q| q).await?
                }
                IncidentEvent::ContactRead(_) => update(tx, &incidents, id, position, "", |q| q).await?,
                // An account kept in plain (events written before sealing)
                // is blanked here — the read model can forget what the log
                // cannot; a rebuild blanks it again at the same event. A
                // sealed one needs nothing: its key is gone.
                IncidentEvent::ContactErased(_) => {
                    let set = "contact_ref = '', \
                               description = CASE WHEN description = '' THEN '' ELSE $3 END, \
                               address_text = CASE WHEN address_text = '' THEN '' ELSE $3 END";
                    update(tx, &incidents, id, position, set, |q| q.bind(gridwork_personal::ERASED)).await?;
                    sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {history} SET summary = $1 WHERE event_type = 'report_linked' AND summary LIKE $2"
                    )))
                    .bind(format!("me too: {id}"))
                    .bind(format!("me too: {id} (%"))
                    .execute(&mut *tx)
                    .await?;
                }
            }
            sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {history} (incident_id, sequence, idx, at_ms, event_type, summary, principal) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)"
            )))
            .bind(id)
            .bind(position)
            .bind(idx as i64)
            .bind(at)
            .bind(event_type)
            .bind(summary)
            .bind(&principal)
            .execute(&mut *tx)
            .await?;
        }
        Ok(())
    }
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// `UPDATE … SET <set>, position = $2 WHERE incident_id = $1`; `$3…` bound by `bind`.
async fn update(
    tx: &mut AnyConnection,
    table: &str,
    id: &str,
    position: i64,
    set: &str,
    bind: impl FnOnce(AnyQuery<'_>) -> AnyQuery<'_>,
) -> Result<(), ApplyError> {
    let sql = if set.is_empty() {
        format!("UPDATE {table} SET position = $2 WHERE incident_id = $1")
    } else {
        format!("UPDATE {table} SET {set}, position = $2 WHERE incident_id = $1")
    };
    let query = bind(sqlx::query(AssertSqlSafe(sql)).bind(id.to_string()).bind(position));
    let r = query.execute(&mut *tx).await?;
    if r.rows_affected() != 1 {
        return Err(ApplyError::Invalid(format!("incident {id} unknown to the read model")));
    }
    Ok(())
}

async fn set_status(
    tx: &mut AnyConnection,
    table: &str,
    id: &str,
    position: i64,
    status: pb::IncidentStatus,
) -> Result<(), ApplyError> {
    update(tx, table, id, position, "status = $3, claimed_by = '', claim_until_ms = 0, transfer_to = ''", |q| {
        q.bind(status_number(status))
    })
    .await
}

fn outcome_summary(o: &pb::CaseOutcomeRecorded) -> String {
    let stage = match pb::CaseStage::try_from(o.stage) {
        Ok(pb::CaseStage::Resolved) => "case resolved",
        Ok(pb::CaseStage::Closed) => "case closed",
        Ok(pb::CaseStage::Reopened) => "case reopened",
        _ => "case moved",
    };
    if o.note.is_empty() { stage.to_string() } else { format!("{stage}: {}", o.note) }
}

/// Lower-case label of a source.
pub fn source_label(source: i32) -> &'static str {
    match pb::Source::try_from(source).unwrap_or(pb::Source::Unspecified) {
        pb::Source::GridWorker => "grid worker",
        pb::Source::Resident => "resident",
        pb::Source::RiderInformant => "rider informant",
        pb::Source::Hotline => "hotline",
        pb::Source::Camera => "camera",
        pb::Source::PartnerBureau => "partner bureau",
        pb::Source::Unspecified => "unknown source",
    }
}

fn reason_label(reason: i32) -> &'static str {
    match pb::RejectionReason::try_from(reason).unwrap_or(pb::RejectionReason::Unspecified) {
        pb::RejectionReason::Spam => "spam",
        pb::RejectionReason::OutOfJurisdiction => "out of jurisdiction",
        pb::RejectionReason::NotGovernance => "not a governance matter",
        pb::RejectionReason::Unspecified => "unspecified",
    }
}
