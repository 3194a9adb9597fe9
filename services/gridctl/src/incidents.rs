//! `gridctl incidents …`: intake's reports and triage.

use std::collections::BTreeMap;

use crate::caller::Conn;
use gridwork_proto::gridwork::intake::v1 as pb;
use gridwork_proto::gridwork::intake::v1::intake_service_client::IntakeServiceClient;

use crate::{Incidents, SourceArg, out};

async fn connect(endpoint: &str) -> anyhow::Result<IntakeServiceClient<Conn>> {
    Ok(IntakeServiceClient::new(crate::caller::connect(endpoint, "incident intake").await?))
}

fn status_name(s: i32) -> &'static str {
    match pb::IncidentStatus::try_from(s).unwrap_or(pb::IncidentStatus::Unspecified) {
        pb::IncidentStatus::Reported => "reported",
        pb::IncidentStatus::Accepted => "accepted",
        pb::IncidentStatus::Rejected => "rejected",
        pb::IncidentStatus::Duplicate => "duplicate",
        pb::IncidentStatus::Resolved => "resolved",
        pb::IncidentStatus::Closed => "closed",
        pb::IncidentStatus::Transferred => "transferred",
        pb::IncidentStatus::Unspecified => "?",
    }
}

/// Run one `incidents` command.
pub async fn run(endpoint: &str, command: Incidents) -> anyhow::Result<Result<(), tonic::Status>> {
    let mut c = connect(endpoint).await?;
    Ok(match command {
        Incidents::Report {
            category,
            lat,
            lon,
            description,
            source,
            attributes,
            device,
            confidence,
            partner,
            media,
            contact_name,
            phone,
        } => {
            let source = match source {
                SourceArg::GridWorker => pb::Source::GridWorker,
                SourceArg::Resident => pb::Source::Resident,
                SourceArg::RiderInformant => pb::Source::RiderInformant,
                SourceArg::Hotline => pb::Source::Hotline,
                SourceArg::Camera => pb::Source::Camera,
                SourceArg::PartnerBureau => pb::Source::PartnerBureau,
            };
            let attributes = list_attributes(attributes)?;
            let request = pb::ReportIncidentRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                source: source as i32,
                category_code: category,
                location: Some(pb::report_incident_request::Location::Point(pb::GeoPoint { lat, lon })),
                description,
                attributes,
                device: device.map(|device_id| pb::Device { device_id, kind: "camera".into(), confidence }),
                contact: phone.map(|phone| pb::Contact { name: contact_name.unwrap_or_default(), phone }),
                partner_reference: match partner {
                    None => None,
                    Some(p) => {
                        let Some((system, reference)) = p.split_once(':') else {
                            anyhow::bail!("--partner {p:?}: write SYSTEM:REFERENCE, e.g. 12345:T-20261124-0042");
                        };
                        Some(pb::PartnerReference { system: system.into(), reference: reference.into() })
                    }
                },
                media: media
                    .into_iter()
                    .map(|url| {
                        let lower = url.to_lowercase();
                        let content_type = if lower.ends_with(".mp4") || lower.ends_with(".mov") {
                            "video/mp4"
                        } else if lower.ends_with(".png") {
                            "image/png"
                        } else {
                            "image/jpeg"
                        };
                        pb::MediaRef { url, content_type: content_type.into() }
                    })
                    .collect(),
                ..Default::default()
            };
            match c.report_incident(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    crate::emit(&r, "gridwork.intake.v1.ReportIncidentResponse");
                    let sequence = r.position.unwrap_or_default().sequence;
                    // Visible before returning, so the next command sees it.
                    c.get_incident(pb::GetIncidentRequest {
                        incident_id: r.incident_id.clone(),
                        min_position: sequence,
                    })
                    .await
                    .ok();
                    out!("incident {}", r.incident_id);
                    if r.already_reported {
                        out!("  already reported under this partner reference: nothing new recorded");
                    }
                    if !r.duplicate_of.is_empty() {
                        out!("  linked as a \"me too\" of {}", r.duplicate_of);
                    }
                    if !r.possibly_same_as.is_empty() {
                        let who = if r.accepted { "dispatched anyway; a dispatcher" } else { "triage" };
                        out!("  possibly the same as {} ({who} decides)", r.possibly_same_as);
                    }
                    if !r.recurrence_of.is_empty() {
                        out!("  a recurrence of {}, closed earlier", r.recurrence_of);
                    }
                    if r.accepted {
                        out!("  emergency: accepted at once, dispatched");
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Incidents::Get { id } => {
            match c.get_incident(pb::GetIncidentRequest { incident_id: id, min_position: 0 }).await {
                Ok(r) => {
                    let i = r.into_inner().incident.unwrap_or_default();
                    crate::emit(&i, "gridwork.intake.v1.Incident");
                    let p = i.grid_path.clone().unwrap_or_default();
                    out!("{} {} ({}) priority {}", i.incident_id, i.category_code, status_name(i.status), i.priority);
                    out!(
                        "  at {:.5}, {:.5}: {} > {} > {} > {} > {}",
                        i.lat,
                        i.lon,
                        p.district_id,
                        p.street_id,
                        p.community_id,
                        p.grid_id,
                        p.micro_grid_id
                    );
                    if !i.address_text.is_empty() {
                        out!("  address: {}", i.address_text);
                    }
                    out!("  {}", i.description);
                    if !i.duplicate_of.is_empty() {
                        let original = pb::IncidentStatus::try_from(i.original_status)
                            .map_or("unknown", |s| s.as_str_name().trim_start_matches("INCIDENT_STATUS_"));
                        out!("  duplicate of {} (which is {})", i.duplicate_of, original.to_lowercase());
                    }
                    if !i.possibly_same_as.is_empty() {
                        out!("  possibly the same as {}", i.possibly_same_as);
                    }
                    if !i.recurrence_of.is_empty() {
                        out!("  a recurrence of {}", i.recurrence_of);
                    }
                    for l in &i.linked_reports {
                        match i.linked_accounts.iter().find(|a| &a.report_id == l) {
                            Some(a) if !a.description.is_empty() => out!("  me too: {l}: {}", a.description),
                            _ => out!("  me too: {l}"),
                        }
                    }
                    for h in &i.history {
                        out!("  #{:<6} {:<18} {} ({})", h.sequence, h.event_type, h.summary, h.principal);
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Incidents::List { area, status, category, transfer_to, limit } => {
            let status = match status.as_deref() {
                None => pb::IncidentStatus::Unspecified,
                Some(name) => pb::IncidentStatus::from_str_name(&format!(
                    "INCIDENT_STATUS_{}",
                    name.to_ascii_uppercase()
                ))
                .filter(|s| *s != pb::IncidentStatus::Unspecified)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--status {name:?}: reported, accepted, rejected, duplicate, resolved, closed or transferred"
                    )
                })?,
            };
            let (mut shown, mut page_token) = (0u32, String::new());
            loop {
                let request = pb::ListIncidentsRequest {
                    unit_id: area.clone(),
                    status: status as i32,
                    category_code: category.clone(),
                    limit: (limit - shown).min(500),
                    min_position: 0,
                    transfer_to: transfer_to.clone(),
                    page_token,
                };
                let page = match c.list_incidents(request).await {
                    Ok(r) => r.into_inner(),
                    Err(e) => return Ok(Err(e)),
                };
                for i in &page.incidents {
                    crate::emit(i, "gridwork.intake.v1.Incident");
                    out!(
                        "{:<38} {:<20} {:<11} priority {} {}",
                        i.incident_id,
                        i.category_code,
                        status_name(i.status),
                        i.priority,
                        i.grid_path.as_ref().map_or("", |p| p.grid_id.as_str())
                    );
                }
                shown += u32::try_from(page.incidents.len()).unwrap_or(u32::MAX);
                if page.next_page_token.is_empty() || shown >= limit {
                    break;
                }
                page_token = page.next_page_token;
            }
            out!("({shown} incidents)");
            Ok(())
        }
        Incidents::PublishCatalogue { file } => {
            use anyhow::Context as _;
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
            // What `incidents catalogue --output json` printed (its version
            // is the one edited; the service numbers the new one).
            let edited: pb::GetCatalogueResponse =
                crate::json::from_json(&text, "gridwork.intake.v1.GetCatalogueResponse")
                    .with_context(|| format!("{file} is not a catalogue in JSON"))?;
            let request = pb::PublishCatalogueRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                categories: edited.categories,
            };
            c.publish_catalogue(request).await.map(|r| {
                let r = r.into_inner();
                crate::emit(&r, "gridwork.intake.v1.PublishCatalogueResponse");
                out!("published catalogue version {}", r.version);
            })
        }
        Incidents::Claim { id, break_lock } => {
            let request = pb::ClaimIncidentRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id.clone(),
                break_lock,
            };
            c.claim_incident(request).await.map(|r| {
                let r = r.into_inner();
                crate::emit(&r, "gridwork.intake.v1.ClaimIncidentResponse");
                out!("claimed {id} until {}", crate::cases::local(r.until_unix_ms));
            })
        }
        Incidents::Contact { id, purpose } => {
            let request = pb::ReadReporterContactRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id,
                purpose,
            };
            c.read_reporter_contact(request).await.map(|r| {
                let r = r.into_inner();
                crate::emit(&r, "gridwork.intake.v1.ReadReporterContactResponse");
                let contact = r.contact.unwrap_or_default();
                out!("{} {} (this read is recorded)", contact.name, contact.phone);
            })
        }
        Incidents::EraseContact { id, reason } => {
            let request = pb::EraseReporterContactRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id.clone(),
                reason,
            };
            c.erase_reporter_contact(request).await.map(|r| {
                let r = r.into_inner();
                crate::emit(&r, "gridwork.intake.v1.EraseReporterContactResponse");
                if r.erased {
                    out!("erased the contact of {id}: its key is destroyed");
                } else {
                    out!("{id} holds no contact: nothing erased");
                }
            })
        }
        Incidents::Accept { id } => {
            match c
                .accept_incident(pb::AcceptIncidentRequest {
                    command_id: uuid::Uuid::now_v7().to_string(),
                    incident_id: id.clone(),
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    crate::emit(&r, "gridwork.intake.v1.AcceptIncidentResponse");
                    let sequence = r.position.unwrap_or_default().sequence;
                    c.get_incident(pb::GetIncidentRequest { incident_id: id.clone(), min_position: sequence })
                        .await
                        .ok();
                    out!("accepted {id}: dispatch opens its case");
                    Ok(())
                }
                Err(e) => Err(e),
            }
        }
        Incidents::Reclassify { id, category, attributes, priority, note } => {
            let request = pb::ReclassifyIncidentRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id.clone(),
                category_code: category.clone(),
                attributes: list_attributes(attributes)?,
                priority: priority.map_or(0, |p| p.proto() as i32),
                note,
            };
            c.reclassify_incident(request).await.map(|r| {
                let r = r.into_inner();
                crate::emit(&r, "gridwork.intake.v1.ReclassifyIncidentResponse");
                out!("{id} is now {category}{}", if r.accepted { ": an emergency, dispatched" } else { "" });
            })
        }
        Incidents::Relocate { id, lat, lon, note } => {
            let request = pb::RelocateIncidentRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id.clone(),
                location: Some(pb::relocate_incident_request::Location::Point(pb::GeoPoint { lat, lon })),
                note,
            };
            c.relocate_incident(request).await.map(|r| {
                let r = r.into_inner();
                crate::emit(&r, "gridwork.intake.v1.RelocateIncidentResponse");
                let path = r.grid_path.unwrap_or_default();
                out!("{id} is now in {} (grid {})", path.micro_grid_id, path.grid_id);
            })
        }
        Incidents::Prioritise { id, priority, reason } => {
            let request = pb::ReassessPriorityRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id.clone(),
                priority: priority.proto() as i32,
                reason,
            };
            c.reassess_priority(request).await.map(|r| {
                crate::emit(r.get_ref(), "gridwork.intake.v1.ReassessPriorityResponse");
                out!("{id}: priority set")
            })
        }
        Incidents::Transfer { id, to, reason } => {
            let request = pb::TransferIncidentRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id.clone(),
                to: to.clone(),
                reason,
            };
            c.transfer_incident(request).await.map(|r| {
                crate::emit(r.get_ref(), "gridwork.intake.v1.TransferIncidentResponse");
                out!("{id}: transfer to {to} requested; it stays in triage here until {to} accepts")
            })
        }
        Incidents::AnswerTransfer { id, as_receiver, decline, note } => {
            let request = pb::AnswerTransferRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id.clone(),
                as_receiver: as_receiver.clone(),
                accept: !decline,
                note,
            };
            c.answer_transfer(request).await.map(|r| {
                crate::emit(r.get_ref(), "gridwork.intake.v1.AnswerTransferResponse");
                out!("{id}: {as_receiver} {}", if decline { "declined; back in triage" } else { "accepted it" })
            })
        }
        Incidents::WithdrawTransfer { id, reason } => {
            let request = pb::WithdrawTransferRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id.clone(),
                reason,
            };
            c.withdraw_transfer(request).await.map(|r| {
                crate::emit(r.get_ref(), "gridwork.intake.v1.WithdrawTransferResponse");
                out!("{id}: transfer withdrawn; back in triage here")
            })
        }
        Incidents::Reject { id, reason, note } => {
            let request = pb::RejectIncidentRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id.clone(),
                reason: match reason.as_str() {
                    "spam" => pb::RejectionReason::Spam,
                    "not-governance" => pb::RejectionReason::NotGovernance,
                    _ => pb::RejectionReason::OutOfJurisdiction,
                } as i32,
                note,
            };
            c.reject_incident(request).await.map(|r| {
                crate::emit(r.get_ref(), "gridwork.intake.v1.RejectIncidentResponse");
                out!("{id}: rejected")
            })
        }
        Incidents::Duplicate { id, of } => {
            let request = pb::MarkDuplicateRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                incident_id: id.clone(),
                of_incident_id: of.clone(),
            };
            c.mark_duplicate(request).await.map(|r| {
                crate::emit(r.get_ref(), "gridwork.intake.v1.MarkDuplicateResponse");
                out!("{id}: a duplicate of {of}")
            })
        }
        Incidents::Catalogue => match c.get_catalogue(pb::GetCatalogueRequest { version: 0 }).await {
            Ok(r) => {
                let r = r.into_inner();
                crate::emit(&r, "gridwork.intake.v1.GetCatalogueResponse");
                out!("catalogue version {}", r.version);
                for cat in r.categories {
                    let attrs: Vec<String> = cat
                        .attributes
                        .iter()
                        .map(|a| {
                            let values = if a.allowed_values.is_empty() {
                                String::new()
                            } else {
                                format!("={}", a.allowed_values.join("|"))
                            };
                            format!("{}{}{values}", a.code, if a.required { "*" } else { "" })
                        })
                        .collect();
                    out!(
                        "  {:<24} {:<8} {}  {}",
                        cat.code,
                        if cat.emergency { "EMERG" } else { "" },
                        cat.name,
                        attrs.join(" ")
                    );
                }
                Ok(())
            }
            Err(e) => Err(e),
        },
    })
}

/// `--attr CODE=VALUE` list values, combined per code.
fn list_attributes(attributes: Vec<String>) -> anyhow::Result<Vec<pb::AttributeValue>> {
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for a in attributes {
        let Some((code, value)) = a.split_once('=') else {
            anyhow::bail!("--attr {a:?}: write CODE=VALUE");
        };
        grouped.entry(code.to_string()).or_default().push(value.to_string());
    }
    Ok(grouped
        .into_iter()
        .map(|(code, values)| pb::AttributeValue {
            code,
            value: Some(pb::attribute_value::Value::Selected(pb::SelectedValues { values })),
        })
        .collect())
}
