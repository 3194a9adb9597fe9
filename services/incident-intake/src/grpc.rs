//! proto ⇄ domain for intake: every request parsed here, every invalid field
//! named in one `INVALID_ARGUMENT`.

use gridwork_auth::Target;
use gridwork_eventstore::CommitOutcome;
use gridwork_proto::gridwork::intake::v1 as pb;
use gridwork_proto::gridwork::intake::v1::intake_service_server::IntakeService;
use gridwork_runtime::Violations;
use gridwork_runtime::request::{access, principal, read_wait};
use tonic::{Request, Response, Status};

use crate::app::{IncidentFilter, Intake, Location, Reclassification, ReportInput};
use crate::domain::incident::IncidentCommand;

/// The gRPC face of [`Intake`].
pub struct IntakeGrpc {
    intake: Intake,
}

/// The name [`ListIncidents`](pb::intake_service_server::IntakeService::list_incidents) gives its page tokens.
const LIST_INCIDENTS: &str = "incidents";

impl IntakeGrpc {
    /// Serve `intake`.
    pub fn new(intake: Intake) -> Self {
        Self { intake }
    }
}

fn position<E>(outcome: &CommitOutcome<E>) -> Option<pb::CommitPosition> {
    Some(pb::CommitPosition { sequence: outcome.sequence, replayed: outcome.replayed })
}

/// What a reporter reading its own report (a rider, a partner system) may
/// see of it: what it reported and where it stands, not who on the staff did
/// what (names sit in the history's summaries too), nor the other reporters'
/// accounts and reports.
fn own_view(incident: &mut pb::Incident, subject: &str) {
    incident.claimed_by.clear();
    incident.linked_accounts.clear();
    incident.linked_reports.clear();
    for h in &mut incident.history {
        if h.principal != subject {
            h.principal.clear();
            h.summary = h.event_type.replace('_', " ");
        }
    }
}

#[tonic::async_trait]
impl IntakeService for IntakeGrpc {
    async fn publish_catalogue(
        &self,
        request: Request<pb::PublishCatalogueRequest>,
    ) -> Result<Response<pb::PublishCatalogueResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        v.finish()?;
        let (version, outcome) = self.intake.publish_catalogue(r.categories, command_id, who).await?;
        Ok(Response::new(pb::PublishCatalogueResponse { position: position(&outcome), version }))
    }

    async fn get_catalogue(
        &self,
        request: Request<pb::GetCatalogueRequest>,
    ) -> Result<Response<pb::GetCatalogueResponse>, Status> {
        let c = self.intake.catalogue(request.into_inner().version).await?;
        Ok(Response::new(pb::GetCatalogueResponse {
            version: c.version,
            categories: c.categories.values().cloned().collect(),
        }))
    }

    async fn report_incident(
        &self,
        request: Request<pb::ReportIncidentRequest>,
    ) -> Result<Response<pb::ReportIncidentResponse>, Status> {
        let access = access(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let source = pb::Source::try_from(r.source).unwrap_or(pb::Source::Unspecified);
        if source == pb::Source::Unspecified {
            v.add("source", "must be a report channel");
        }
        if r.category_code.is_empty() {
            v.add("category_code", "is required");
        }
        let location = match r.location {
            None => {
                v.add("location", "exactly one of point or address is required");
                None
            }
            Some(pb::report_incident_request::Location::Point(p)) => {
                point(&mut v, &p);
                Some(Location::Point { lat: p.lat, lon: p.lon })
            }
            Some(pb::report_incident_request::Location::Address(a)) => {
                let text = v.text("address.text", &a.text, 1, 500);
                let unit_id = v.id("address.unit_id", &a.unit_id);
                Some(Location::Address { text, unit_id })
            }
        };
        let description = v.text("description", &r.description, 1, 4000);
        let contact = match r.contact {
            Some(c) if !c.name.trim().is_empty() || !c.phone.trim().is_empty() => {
                let name = v.text("contact.name", &c.name, 0, 100);
                let phone = c.phone.trim().to_string();
                if phone.len() > 32 || !phone.chars().all(|ch| ch.is_ascii_digit() || "+- ()".contains(ch)) {
                    v.add("contact.phone", "must be at most 32 digits, spaces or +-()");
                }
                Some((name, phone))
            }
            _ => None,
        };
        let urgency = optional_priority(&mut v, "urgency", r.urgency);
        if r.reporter_id.len() > 128 {
            v.add("reporter_id", "must be at most 128 characters");
        }
        let device = channel::device(&mut v, source, r.device);
        // The channel is the caller's own (a rider reports as a rider, the
        // hotline as the hotline); triage and dispatch may file for any.
        if source != pb::Source::Unspecified && !channel::allowed(&access, source) {
            return Err(Status::permission_denied(format!(
                "source: reporting through {} is not among the caller's roles' channels (intake.report)",
                source.as_str_name().trim_start_matches("SOURCE_").to_lowercase()
            )));
        }
        if r.urgency != 0 && access.only_own() {
            return Err(Status::permission_denied(
                "urgency: a rider or partner system reports what it saw; triage sets the urgency (intake.report)",
            ));
        }
        let partner_reference = channel::partner_reference(&mut v, r.partner_reference);
        let media = channel::media(&mut v, r.media);
        let location = v.finish_with(location, "location")?;
        if let Some(reference) = &partner_reference
            && (!access.principal.has_role(gridwork_auth::policy::roles::PARTNER_SYSTEM)
                || reference.system != access.subject())
        {
            // A reference names the incident (its feed's retries land on it):
            // only the system itself, calling as itself, may send one.
            return Err(Status::permission_denied(format!(
                "partner_reference.system: a partner reference is sent only by that partner system, calling as \
                 itself with the role {} (subject {:?})",
                gridwork_auth::policy::roles::PARTNER_SYSTEM,
                reference.system.chars().take(32).collect::<String>()
            )));
        }
        let input = ReportInput {
            source,
            category_code: r.category_code,
            catalogue_version: r.catalogue_version,
            location,
            description,
            attributes: r.attributes,
            contact,
            urgency,
            reporter_id: r.reporter_id,
            device,
            partner_reference,
            media,
        };
        let reported = self.intake.report(input, command_id, access).await?;
        Ok(Response::new(pb::ReportIncidentResponse {
            incident_id: reported.incident_id,
            position: position(&reported.outcome),
            duplicate_of: reported.duplicate_of.unwrap_or_default(),
            already_reported: reported.already_reported,
            accepted: reported.accepted,
            possibly_same_as: reported.possibly_same_as.unwrap_or_default(),
            recurrence_of: reported.recurrence_of.unwrap_or_default(),
        }))
    }

    async fn claim_incident(
        &self,
        request: Request<pb::ClaimIncidentRequest>,
    ) -> Result<Response<pb::ClaimIncidentResponse>, Status> {
        let who = principal(&request)?;
        let may_break = gridwork_runtime::request::caller(&request)
            .is_some_and(|p| gridwork_auth::policy::INTAKE_BREAK_CLAIM.held_by(p));
        let r = request.into_inner();
        if r.break_lock && !may_break {
            return Err(gridwork_auth::policy::INTAKE_BREAK_CLAIM.denied());
        }
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        v.finish()?;
        let ttl_ms = self.intake.claim_ttl_ms();
        let outcome = self
            .intake
            .triage(&id, command_id, who.clone(), |now| IncidentCommand::Claim {
                by: who,
                now_unix_ms: now,
                ttl_ms,
                admin: r.break_lock,
            })
            .await?;
        let until = outcome
            .events
            .iter()
            .find_map(|e| match e {
                crate::events::IncidentEvent::Claimed(c) => Some(c.until_unix_ms),
                _ => None,
            })
            .unwrap_or_default();
        Ok(Response::new(pb::ClaimIncidentResponse { position: position(&outcome), until_unix_ms: until }))
    }

    async fn accept_incident(
        &self,
        request: Request<pb::AcceptIncidentRequest>,
    ) -> Result<Response<pb::AcceptIncidentResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        v.finish()?;
        let outcome = self
            .intake
            .triage(&id, command_id, who.clone(), |now| IncidentCommand::Accept { by: who, now_unix_ms: now })
            .await?;
        Ok(Response::new(pb::AcceptIncidentResponse { position: position(&outcome) }))
    }

    async fn reject_incident(
        &self,
        request: Request<pb::RejectIncidentRequest>,
    ) -> Result<Response<pb::RejectIncidentResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        let reason = pb::RejectionReason::try_from(r.reason).unwrap_or(pb::RejectionReason::Unspecified);
        if reason == pb::RejectionReason::Unspecified {
            v.add("reason", "must be spam, out of jurisdiction or not a governance matter");
        }
        let note = v.text("note", &r.note, 0, 1000);
        v.finish()?;
        let outcome = self
            .intake
            .triage(&id, command_id, who.clone(), |now| IncidentCommand::Reject {
                by: who,
                reason,
                note,
                now_unix_ms: now,
            })
            .await?;
        Ok(Response::new(pb::RejectIncidentResponse { position: position(&outcome) }))
    }

    async fn reclassify_incident(
        &self,
        request: Request<pb::ReclassifyIncidentRequest>,
    ) -> Result<Response<pb::ReclassifyIncidentResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        if r.category_code.is_empty() {
            v.add("category_code", "is required");
        }
        let priority = optional_priority(&mut v, "priority", r.priority);
        let note = v.text("note", &r.note, 1, 500);
        v.finish()?;
        let change = Reclassification { category_code: r.category_code, attributes: r.attributes, priority, note };
        let outcome = self.intake.reclassify(&id, command_id, who, change).await?;
        let accepted = outcome.events.iter().any(|e| matches!(e, crate::events::IncidentEvent::Accepted(_)));
        Ok(Response::new(pb::ReclassifyIncidentResponse { position: position(&outcome), accepted }))
    }

    async fn relocate_incident(
        &self,
        request: Request<pb::RelocateIncidentRequest>,
    ) -> Result<Response<pb::RelocateIncidentResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        let location = match r.location {
            None => {
                v.add("location", "exactly one of point or address is required");
                None
            }
            Some(pb::relocate_incident_request::Location::Point(p)) => {
                point(&mut v, &p);
                Some(Location::Point { lat: p.lat, lon: p.lon })
            }
            Some(pb::relocate_incident_request::Location::Address(a)) => {
                let text = v.text("address.text", &a.text, 1, 500);
                let unit_id = v.id("address.unit_id", &a.unit_id);
                Some(Location::Address { text, unit_id })
            }
        };
        let note = v.text("note", &r.note, 1, 500);
        let location = v.finish_with(location, "location")?;
        let (path, outcome) = self.intake.relocate(&id, command_id, who, location, note).await?;
        Ok(Response::new(pb::RelocateIncidentResponse { position: position(&outcome), grid_path: Some(path) }))
    }

    async fn reassess_priority(
        &self,
        request: Request<pb::ReassessPriorityRequest>,
    ) -> Result<Response<pb::ReassessPriorityResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        let priority = optional_priority(&mut v, "priority", r.priority);
        if priority.is_none() {
            v.add("priority", "is required");
        }
        let reason = v.text("reason", &r.reason, 1, 500);
        let priority = v.finish_with(priority, "priority")?;
        let outcome = self
            .intake
            .triage(&id, command_id, who.clone(), |now| IncidentCommand::ReassessPriority {
                priority,
                by: who,
                reason,
                now_unix_ms: now,
            })
            .await?;
        Ok(Response::new(pb::ReassessPriorityResponse { position: position(&outcome) }))
    }

    async fn transfer_incident(
        &self,
        request: Request<pb::TransferIncidentRequest>,
    ) -> Result<Response<pb::TransferIncidentResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        let to = receiver(&mut v, "to", &r.to);
        let reason = v.text("reason", &r.reason, 1, 500);
        v.finish()?;
        let outcome = self
            .intake
            .triage(&id, command_id, who.clone(), |now| IncidentCommand::Transfer {
                to,
                reason,
                by: who,
                now_unix_ms: now,
            })
            .await?;
        Ok(Response::new(pb::TransferIncidentResponse { position: position(&outcome) }))
    }

    async fn withdraw_transfer(
        &self,
        request: Request<pb::WithdrawTransferRequest>,
    ) -> Result<Response<pb::WithdrawTransferResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        let reason = v.text("reason", &r.reason, 1, 500);
        v.finish()?;
        let outcome = self
            .intake
            .triage(&id, command_id, who.clone(), |now| IncidentCommand::WithdrawTransfer {
                by: who,
                reason,
                now_unix_ms: now,
            })
            .await?;
        Ok(Response::new(pb::WithdrawTransferResponse { position: position(&outcome) }))
    }

    async fn answer_transfer(
        &self,
        request: Request<pb::AnswerTransferRequest>,
    ) -> Result<Response<pb::AnswerTransferResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        let as_receiver = receiver(&mut v, "as_receiver", &r.as_receiver);
        // A refusal says why; an acceptance may give the receiver's reference.
        let note = v.text("note", &r.note, if r.accept { 0 } else { 1 }, 500);
        v.finish()?;
        let outcome = self
            .intake
            .triage(&id, command_id, who.clone(), |now| IncidentCommand::AnswerTransfer {
                as_receiver,
                accept: r.accept,
                note,
                by: who,
                now_unix_ms: now,
            })
            .await?;
        Ok(Response::new(pb::AnswerTransferResponse { position: position(&outcome) }))
    }

    async fn mark_duplicate(
        &self,
        request: Request<pb::MarkDuplicateRequest>,
    ) -> Result<Response<pb::MarkDuplicateResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        let of = v.id("of_incident_id", &r.of_incident_id);
        v.finish()?;
        let target = self.intake.status_of(&of).await?;
        let own_id = id.clone();
        let outcome = self
            .intake
            .triage(&id, command_id, who.clone(), |now| IncidentCommand::MarkDuplicate {
                of_incident_id: of,
                target,
                own_id,
                by: who,
                now_unix_ms: now,
            })
            .await?;
        Ok(Response::new(pb::MarkDuplicateResponse { position: position(&outcome) }))
    }

    async fn get_incident(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::GetIncidentResponse>, Status> {
        let wait = read_wait(&request);
        let access = access(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let id = v.id("incident_id", &r.incident_id);
        v.finish()?;
        self.intake.wait(r.min_position, wait).await?;
        if access.only_own() {
            // A rider or partner system reads its own reports, and of them
            // not the other reporters' accounts nor the staff's names.
            let reporter = self.intake.reporter_of(&id).await?.unwrap_or_default();
            access.require(&[Target::MadeBy(&reporter)])?;
            let mut incident = self.intake.get(&id).await?;
            own_view(&mut incident, access.subject());
            return Ok(Response::new(pb::GetIncidentResponse { incident: Some(incident) }));
        }
        Ok(Response::new(pb::GetIncidentResponse { incident: Some(self.intake.get(&id).await?) }))
    }

    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let wait = read_wait(&request);
        let access = access(&request)?;
        // A rider or partner system lists only what it reported.
        let reported_by = if access.only_own() { access.subject().to_string() } else { String::new() };
        let r = request.into_inner();
        let mut v = Violations::default();
        if !r.unit_id.is_empty() {
            v.id("unit_id", &r.unit_id);
        }
        let status = match pb::IncidentStatus::try_from(r.status) {
            Ok(pb::IncidentStatus::Unspecified) => None,
            Ok(s) => Some(s),
            Err(_) => {
                v.add("status", "unknown status");
                None
            }
        };
        if r.limit > 500 {
            v.add("limit", "must be at most 500");
        }
        let status_filter = r.status.to_string();
        let scope = gridwork_runtime::page::scope(
            LIST_INCIDENTS,
            &[&r.unit_id, &status_filter, &r.category_code, &r.transfer_to, &reported_by],
        );
        let after_key = gridwork_runtime::page::decode_scoped(&mut v, &r.page_token, &scope, 2)
            .map(|k| (gridwork_runtime::page::number(&mut v, &k[0]), k[1].clone()));
        v.finish()?;
        self.intake.wait(r.min_position, wait).await?;
        let limit = if r.limit == 0 { 50 } else { r.limit };
        let filter = IncidentFilter {
            unit_id: &r.unit_id,
            status,
            category: &r.category_code,
            transfer_to: &r.transfer_to,
            limit: limit + 1,
            only_id: None,
            after: after_key.as_ref().map(|(at, id)| (*at, id.as_str())),
            reported_by: &reported_by,
        };
        let mut incidents = self.intake.list(filter).await?;
        if access.only_own() {
            incidents.iter_mut().for_each(|i| own_view(i, access.subject()));
        }
        let next_page_token = match incidents.len() > limit as usize {
            true => {
                incidents.truncate(limit as usize);
                let last = incidents.last().map(|i| (i.reported_at_unix_ms.to_string(), i.incident_id.as_str()));
                last.map_or_else(String::new, |(at, id)| gridwork_runtime::page::encode_scoped(&scope, &[&at, id]))
            }
            false => String::new(),
        };
        Ok(Response::new(pb::ListIncidentsResponse { incidents, next_page_token }))
    }

    async fn erase_reporter_contact(
        &self,
        request: Request<pb::EraseReporterContactRequest>,
    ) -> Result<Response<pb::EraseReporterContactResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        let reason = v.text("reason", &r.reason, 1, 500);
        v.finish()?;
        let (erased, outcome) = self.intake.erase_contact(&id, command_id, who, reason).await?;
        Ok(Response::new(pb::EraseReporterContactResponse {
            erased,
            position: if erased { position(&outcome) } else { None },
        }))
    }

    async fn read_reporter_contact(
        &self,
        request: Request<pb::ReadReporterContactRequest>,
    ) -> Result<Response<pb::ReadReporterContactResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let id = v.id("incident_id", &r.incident_id);
        let purpose = v.text("purpose", &r.purpose, 1, 500);
        v.finish()?;
        let (contact, outcome) = self.intake.read_contact(&id, command_id, who, purpose).await?;
        Ok(Response::new(pb::ReadReporterContactResponse { contact: Some(contact), position: position(&outcome) }))
    }
}

/// Channel data: the device that raised a report, a partner's reference, media.
mod channel {
    use gridwork_proto::gridwork::intake::v1 as pb;
    use gridwork_runtime::Violations;

    /// A camera report names its device; the confidence is a probability.
    pub fn device(v: &mut Violations, source: pb::Source, device: Option<pb::Device>) -> Option<pb::Device> {
        let Some(d) = device else {
            if source == pb::Source::Camera {
                v.add("device", "a camera report names the device that raised it");
            }
            return None;
        };
        let id_ok = |s: &str| {
            !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        };
        if !id_ok(&d.device_id) {
            v.add("device.device_id", "must be 1-128 of [A-Za-z0-9_.:-]");
        }
        if d.kind.len() > 32 || !d.kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            v.add("device.kind", "must be at most 32 of [a-z0-9-]");
        }
        if !d.confidence.is_finite() || !(0.0..=1.0).contains(&d.confidence) {
            v.add("device.confidence", "must be between 0 and 1");
        }
        Some(d)
    }

    /// Whether `source` is a channel of one of the caller's roles that may
    /// report.
    pub fn allowed(access: &gridwork_auth::Access, source: pb::Source) -> bool {
        use gridwork_auth::policy::roles::*;
        use pb::Source as S;
        access.grants().any(|g| match g.role.as_str() {
            TRIAGE | TRIAGE_LEAD | DISPATCHER => true,
            GRID_WORKER | GRID_HEAD | COMMUNITY | STREET => matches!(source, S::GridWorker | S::Resident),
            HOTLINE => matches!(source, S::Hotline | S::Resident),
            RIDER => source == S::RiderInformant,
            // A 12345 platform's feed files hotline tickets.
            PARTNER_SYSTEM => matches!(source, S::Camera | S::PartnerBureau | S::Hotline),
            _ => false,
        })
    }

    /// A partner's reference: a system code and its own id.
    pub fn partner_reference(v: &mut Violations, r: Option<pb::PartnerReference>) -> Option<pb::PartnerReference> {
        let r = r?;
        if r.system.is_empty()
            || r.system.len() > 32
            || !r.system.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            v.add("partner_reference.system", "must be 1-32 of [a-z0-9-], e.g. 12345");
        }
        let reference = r.reference.trim();
        if reference.is_empty() || reference.chars().count() > 64 || reference.chars().any(char::is_control) {
            v.add("partner_reference.reference", "must be 1-64 printable characters");
        }
        Some(pb::PartnerReference { system: r.system, reference: reference.to_string() })
    }

    /// At most ten media references, each an https URL or object key with a
    /// media type.
    pub fn media(v: &mut Violations, media: Vec<pb::MediaRef>) -> Vec<pb::MediaRef> {
        if media.len() > 10 {
            v.add("media", "at most 10 items");
        }
        for (i, m) in media.iter().enumerate() {
            let at = format!("media[{i}]");
            let scheme_ok = ["https://", "s3://", "oss://", "media:"].iter().any(|p| m.url.starts_with(p));
            if !scheme_ok || m.url.len() > 2000 || m.url.chars().any(|c| c.is_whitespace() || c.is_control()) {
                v.add(
                    format!("{at}.url"),
                    "must be an https URL or an object key (s3://, oss://, media:), at most 2000 characters",
                );
            }
            if !["image/", "video/", "audio/"].iter().any(|p| m.content_type.starts_with(p))
                || m.content_type.len() > 100
            {
                v.add(format!("{at}.content_type"), "must be image/*, video/* or audio/*");
            }
        }
        media
    }
}

/// A priority, or none for "unspecified".
fn optional_priority(v: &mut Violations, field: &str, p: i32) -> Option<pb::Priority> {
    match pb::Priority::try_from(p) {
        Ok(pb::Priority::Unspecified) => None,
        Ok(p) => Some(p),
        Err(_) => {
            v.add(field, "unknown priority");
            None
        }
    }
}

/// A point's coordinates.
fn point(v: &mut Violations, p: &pb::GeoPoint) {
    if !p.lat.is_finite() || !(-90.0..=90.0).contains(&p.lat) {
        v.add("point.lat", "must be between -90 and 90");
    }
    if !p.lon.is_finite() || !(-180.0..=180.0).contains(&p.lon) {
        v.add("point.lon", "must be between -180 and 180");
    }
}

/// A receiving body: KIND:ID, each of [a-z0-9-].
fn receiver(v: &mut Violations, field: &str, s: &str) -> String {
    let ok = |t: &str| {
        !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    match s.split_once(':') {
        Some((kind, id)) if ok(kind) && ok(id) => {}
        _ => v.add(field, "must be KIND:ID of [a-z0-9-], e.g. district:hx or utility:state-grid"),
    }
    s.to_string()
}
