//! Taking a report: the partner feed's retries, the catalogue check, placement,
//! the sealed contact, and the incident's own commit.

use super::*;

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

/// The incident id a partner's reference names: a name-based UUID (v5) of the
/// system and reference, the same on every replica and every retry.
pub fn partner_incident_id(r: &pb::PartnerReference) -> String {
    const NAMESPACE: uuid::Uuid = uuid::uuid!("6f1c9a52-3b0e-4d7a-9c55-0b8a7d3e2f10");
    uuid::Uuid::new_v5(&NAMESPACE, format!("{}\u{0}{}", r.system, r.reference).as_bytes()).to_string()
}

impl Intake {
    /// Record a report. The incident id is the command id, so a retried report
    /// lands once. Run to its end in a task of its own: a caller that gives up
    /// (a deadline, a dropped connection) must not leave a report placed in
    /// its zone and never written.
    pub async fn report(
        &self,
        input: ReportInput,
        command_id: CommandKey,
        access: Arc<gridwork_auth::Access>,
    ) -> Result<Reported, ServiceError> {
        use tracing::Instrument as _;
        let this = self.clone();
        tokio::spawn(async move { this.report_to_end(input, command_id, &access).await }.in_current_span())
            .await
            .map_err(|e| ServiceError::Internal(format!("report task: {e}")))?
    }

    pub(super) async fn report_to_end(
        &self,
        input: ReportInput,
        command_id: CommandKey,
        access: &gridwork_auth::Access,
    ) -> Result<Reported, ServiceError> {
        let principal = access.subject().to_string();
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
        // A grid worker (head, community, street) reports in its own subtree;
        // a report is its reporter's own, so a rider or a partner system
        // reports wherever it is.
        use gridwork_auth::Level;
        let chain: Vec<(String, Level)> = [
            (&grid_path.micro_grid_id, Level::MicroGrid),
            (&grid_path.grid_id, Level::Grid),
            (&grid_path.community_id, Level::Community),
            (&grid_path.street_id, Level::Street),
            (&grid_path.district_id, Level::District),
        ]
        .into_iter()
        .filter(|(u, _)| !u.is_empty())
        .map(|(u, l)| (u.clone(), l))
        .collect();
        access.require(&[gridwork_auth::Target::Place(&chain), gridwork_auth::Target::MadeBy(&principal)])?;
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
        let recorded = self.incidents.load_shared(&incident_id).await?.state.status != Status::New;
        // The account likewise, under the incident's personal-data key —
        // unless the report is recorded already: its commit answers (a
        // retry), and its key may be erased by now.
        let (sealed_description, sealed_description_excerpt, sealed_address_text) = if recorded {
            (None, None, None)
        } else {
            use crate::contacts::field::{ADDRESS_TEXT, DESCRIPTION};
            use crate::domain::incident::LINKED_DESCRIPTION_CHARS;
            let excerpt = (input.description.chars().count() > LINKED_DESCRIPTION_CHARS)
                .then(|| input.description.chars().take(LINKED_DESCRIPTION_CHARS).collect::<String>());
            (
                self.vault.seal_text(&incident_id, DESCRIPTION, &input.description).await?,
                match excerpt {
                    Some(excerpt) => self.vault.seal_text(&incident_id, DESCRIPTION, &excerpt).await?,
                    None => None,
                },
                self.vault.seal_text(&incident_id, ADDRESS_TEXT, &address_text).await?,
            )
        };
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
            description: String::new(),
            sealed_description,
            sealed_description_excerpt,
            attributes: input.attributes,
            priority: input.urgency.map_or(category.default_priority, |p| p as i32),
            contact_ref: String::new(),
            sealed_contact,
            reported_at_unix_ms: now,
            emergency: category.emergency,
            reporter_id: input.reporter_id,
            address_text: String::new(),
            sealed_address_text,
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
    pub(super) async fn reported_before(
        &self,
        incident_id: &str,
        input: &ReportInput,
    ) -> Result<Option<Reported>, ServiceError> {
        let existing = self.incidents.load_current(incident_id).await?;
        if existing.state.status == Status::New {
            return Ok(None);
        }
        let first = existing.state.report.clone().unwrap_or_default();
        let description = self
            .vault
            .open_text(&first.description, first.sealed_description.as_ref(), crate::contacts::field::DESCRIPTION)
            .await?;
        // Erased since: the content cannot be compared, and the reference
        // is the partner's own: answered as the report it made.
        let erased = description == gridwork_personal::ERASED;
        if (!erased && description != input.description.trim()) || first.source != input.source as i32 {
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
}
