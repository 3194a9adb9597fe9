//! proto ⇄ domain for the registry: every request parsed here, every invalid
//! field named in one `INVALID_ARGUMENT`.

use gridwork_eventstore::CommitOutcome;
use gridwork_proto::gridwork::grid::v1 as pb;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_server::GridRegistryService;
use gridwork_runtime::request::{access, principal, read_wait};
use gridwork_runtime::{ServiceError, Violations};
use time::Date;
use tonic::{Request, Response, Status};

use crate::app::{Registry, UnitRow, head_need, needs_head};
use crate::domain::unit::{Departure, Kind, ROOT, UnitCommand, band};
use crate::events::UnitEvent;
use gridwork_geo::Boundary;

/// The page-token tag of `ListUnitsNeedingHead`.
const NEEDING_HEAD: &str = "units-needing-head";

/// The name `SearchUnits` gives its page tokens.
const SEARCH: &str = "search";

/// The gRPC face of [`Registry`].
pub struct RegistryGrpc {
    registry: Registry,
}

impl RegistryGrpc {
    /// Serve `registry`.
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

/// A unit id: valid, and not the reserved root.
fn checked_unit_id(v: &mut Violations, field: &str, value: &str) -> String {
    let id = v.id(field, value);
    if id == ROOT {
        v.add(field, "\"root\" is reserved for the city root");
    }
    id
}

/// A GeoJSON boundary, parsed and validated.
fn boundary(v: &mut Violations, field: &str, value: &str) -> Option<Boundary> {
    Boundary::parse(value).map_err(|e| v.add(field, e)).ok()
}

/// A date, YYYY-MM-DD.
fn date(v: &mut Violations, field: &str, value: &str) -> Option<Date> {
    Date::parse(value, &time::format_description::well_known::Iso8601::DATE)
        .map_err(|_| v.add(field, "must be a date YYYY-MM-DD"))
        .ok()
}

/// A certificate, checked field by field, with its last day parsed.
fn certificate(v: &mut Violations, c: Option<&pb::Certificate>) -> Option<(pb::Certificate, Date)> {
    let Some(c) = c else {
        v.add("certificate", "is required");
        return None;
    };
    let certificate = pb::Certificate {
        number: v.text("certificate.number", &c.number, 1, 64),
        issuer: v.text("certificate.issuer", &c.issuer, 1, 200),
        expires_on: c.expires_on.clone(),
    };
    date(v, "certificate.expires_on", &c.expires_on).map(|d| (certificate, d))
}

/// The head a term row describes.
fn head_of(row: &UnitRow) -> Option<pb::Head> {
    let person_id = row.head_person_id.as_ref()?;
    Some(pb::Head {
        person_id: person_id.clone(),
        name: row.head_name.clone().unwrap_or_default(),
        certificate: Some(pb::Certificate {
            number: row.cert_number.clone().unwrap_or_default(),
            issuer: row.cert_issuer.clone().unwrap_or_default(),
            expires_on: row.cert_expires_on.clone().unwrap_or_default(),
        }),
        appointed_on: row.head_appointed_on.clone().unwrap_or_default(),
    })
}

fn position(outcome: &CommitOutcome<UnitEvent>) -> Option<pb::CommitPosition> {
    Some(pb::CommitPosition { sequence: outcome.sequence, replayed: outcome.replayed })
}

fn summary(row: &UnitRow) -> pb::Unit {
    pb::Unit {
        unit_id: row.unit_id.clone(),
        parent_id: row.parent_id.clone(),
        kind: row.kind as i32,
        name: row.name.clone(),
        special_site: row.special_site as i32,
        households: row.households.unwrap_or(0) as u32,
        household_band: band(row.kind(), row.households.map(|h| h as u32)) as i32,
        ancestor_ids: row.ancestors.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
        position: row.position as u64,
        ..Default::default()
    }
}

#[tonic::async_trait]
impl GridRegistryService for RegistryGrpc {
    async fn register_unit(
        &self,
        request: Request<pb::RegisterUnitRequest>,
    ) -> Result<Response<pb::RegisterUnitResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        let parent_id =
            if r.parent_id.is_empty() { String::new() } else { checked_unit_id(&mut v, "parent_id", &r.parent_id) };
        let kind = pb::UnitKind::try_from(r.kind).ok().and_then(Kind::from_proto);
        if kind.is_none() {
            v.add("kind", "must be a unit kind");
        }
        if parent_id.is_empty() && kind.is_some_and(|k| k != Kind::District) {
            v.add("parent_id", "is required for every kind but a district");
        }
        let name = v.text("name", &r.name, 1, 200);
        let boundary = boundary(&mut v, "boundary_geojson", &r.boundary_geojson);
        let site = pb::SpecialSite::try_from(r.special_site).unwrap_or(pb::SpecialSite::Unspecified);
        match (kind, site) {
            (Some(Kind::SpecialGrid), pb::SpecialSite::Unspecified) => {
                v.add("special_site", "is required for a special grid")
            }
            (Some(k), s) if k != Kind::SpecialGrid && s != pb::SpecialSite::Unspecified => {
                v.add("special_site", "is only for special grids")
            }
            _ => {}
        }
        let (kind, boundary) = v.finish_with(kind.zip(boundary), "boundary_geojson")?;
        let outcome = self.registry.register(unit_id, parent_id, kind, name, boundary, site, command_id, who).await?;
        Ok(Response::new(pb::RegisterUnitResponse { position: position(&outcome) }))
    }

    async fn redraw_boundary(
        &self,
        request: Request<pb::RedrawBoundaryRequest>,
    ) -> Result<Response<pb::RedrawBoundaryResponse>, Status> {
        let who = principal(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        let boundary = boundary(&mut v, "boundary_geojson", &r.boundary_geojson);
        let boundary = v.finish_with(boundary, "boundary_geojson")?;
        let outcome = self.registry.redraw(unit_id, boundary, command_id, who).await?;
        Ok(Response::new(pb::RedrawBoundaryResponse { position: position(&outcome) }))
    }

    async fn set_households(
        &self,
        request: Request<pb::SetHouseholdsRequest>,
    ) -> Result<Response<pb::SetHouseholdsResponse>, Status> {
        let access = access(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        if r.households > 1_000_000 {
            v.add("households", "must be at most 1000000");
        }
        v.finish()?;
        let households = r.households;
        let (outcome, kind) = self
            .registry
            .on_unit(&unit_id, command_id, &access, |_, _| UnitCommand::CountHouseholds { households })
            .await?;
        Ok(Response::new(pb::SetHouseholdsResponse {
            position: position(&outcome),
            band: band(kind, Some(households)) as i32,
        }))
    }

    async fn appoint_head(
        &self,
        request: Request<pb::AppointHeadRequest>,
    ) -> Result<Response<pb::AppointHeadResponse>, Status> {
        let access = access(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        let person_id = checked_unit_id(&mut v, "person_id", &r.person_id);
        let name = v.text("name", &r.name, 1, 100);
        let replacing_reason =
            (!r.replacing_reason.is_empty()).then(|| v.text("replacing_reason", &r.replacing_reason, 1, 500));
        let certificate = certificate(&mut v, r.certificate.as_ref());
        let (certificate, expires_on) = v.finish_with(certificate, "certificate")?;
        let (outcome, _) = self
            .registry
            .on_unit(&unit_id, command_id, &access, |kind, today| UnitCommand::AppointHead {
                kind,
                head: pb::Head { person_id, name, certificate: Some(certificate), appointed_on: today.to_string() },
                expires_on,
                today,
                replacing_reason,
            })
            .await?;
        Ok(Response::new(pb::AppointHeadResponse { position: position(&outcome) }))
    }

    async fn renew_head_certificate(
        &self,
        request: Request<pb::RenewHeadCertificateRequest>,
    ) -> Result<Response<pb::RenewHeadCertificateResponse>, Status> {
        let access = access(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        let person_id = checked_unit_id(&mut v, "person_id", &r.person_id);
        let certificate = certificate(&mut v, r.certificate.as_ref());
        let (certificate, expires_on) = v.finish_with(certificate, "certificate")?;
        let (outcome, _) = self
            .registry
            .on_unit(&unit_id, command_id, &access, |_, today| UnitCommand::RenewHeadCertificate {
                person_id,
                certificate,
                expires_on,
                today,
            })
            .await?;
        Ok(Response::new(pb::RenewHeadCertificateResponse { position: position(&outcome) }))
    }

    async fn vacate_head(
        &self,
        request: Request<pb::VacateHeadRequest>,
    ) -> Result<Response<pb::VacateHeadResponse>, Status> {
        let access = access(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        let person_id = checked_unit_id(&mut v, "person_id", &r.person_id);
        let note = v.text("note", &r.note, 1, 500);
        let departure = match pb::HeadDeparture::try_from(r.departure).ok().and_then(Departure::from_proto) {
            Some(Departure::Replaced) => {
                v.add("departure", "REPLACED is recorded by appointing the new head");
                None
            }
            Some(d) => Some(d),
            None => {
                v.add("departure", "must be dismissed, resigned, transferred or other");
                None
            }
        };
        let departure = v.finish_with(departure, "departure")?;
        let (outcome, _) = self
            .registry
            .on_unit(&unit_id, command_id, &access, |_, today| UnitCommand::VacateHead {
                person_id,
                departure,
                note,
                today,
            })
            .await?;
        Ok(Response::new(pb::VacateHeadResponse { position: position(&outcome) }))
    }

    async fn list_head_history(
        &self,
        request: Request<pb::ListHeadHistoryRequest>,
    ) -> Result<Response<pb::ListHeadHistoryResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        v.finish()?;
        self.registry.wait(r.min_position, wait).await?;
        if self.registry.unit(&unit_id).await?.is_none() {
            return Err(ServiceError::NotFound(format!("unit_id: unit {unit_id} does not exist")).into());
        }
        let terms = self
            .registry
            .head_terms(&unit_id)
            .await?
            .into_iter()
            .map(|t| pb::HeadTerm {
                person_id: t.person_id,
                name: t.name,
                appointed_on: t.appointed_on,
                left_on: t.left_on.unwrap_or_default(),
                departure: t.departure as i32,
                note: t.note,
                certificate: Some(pb::Certificate {
                    number: t.cert_number,
                    issuer: t.cert_issuer,
                    expires_on: t.cert_expires_on,
                }),
                renewals: t.renewals as u32,
            })
            .collect();
        Ok(Response::new(pb::ListHeadHistoryResponse { terms }))
    }

    async fn list_units_needing_head(
        &self,
        request: Request<pb::ListUnitsNeedingHeadRequest>,
    ) -> Result<Response<pb::ListUnitsNeedingHeadResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        let root = checked_unit_id(&mut v, "under_unit_id", &r.under_unit_id);
        if r.expiring_within_days > 366 {
            v.add("expiring_within_days", "must be at most 366");
        }
        if r.page_size > 500 {
            v.add("page_size", "must be at most 500");
        }
        let scope =
            gridwork_runtime::page::scope(NEEDING_HEAD, &[&r.under_unit_id, &r.expiring_within_days.to_string()]);
        let after =
            gridwork_runtime::page::decode_scoped(&mut v, &r.page_token, &scope, 1).and_then(|k| k.into_iter().next());
        v.finish()?;
        let page_size = if r.page_size == 0 { 100 } else { r.page_size };
        self.registry.wait(r.min_position, wait).await?;
        if self.registry.unit(&root).await?.is_none() {
            return Err(ServiceError::NotFound(format!("under_unit_id: unit {root} does not exist")).into());
        }
        let today = self.registry.today();
        let within = r.expiring_within_days;
        let cutoff = today.saturating_add(time::Duration::days(i64::from(within) + i64::from(within > 0)));
        let after = after.unwrap_or_default();
        let rows = self.registry.units_without_valid_head(&root, cutoff, &after, page_size + 1).await?;
        let more = rows.len() > page_size as usize;
        let mut units = Vec::with_capacity(rows.len().min(page_size as usize));
        for row in rows.iter().take(page_size as usize) {
            // The query's cutoff and this rule agree; a row the rule clears
            // (an unreadable expiry is kept as a need) is not listed.
            if let Some((need, reason)) = head_need(row, today, within) {
                let mut unit = summary(row);
                unit.head = head_of(row);
                units.push(pb::UnitNeedingHead { unit: Some(unit), need: need as i32, reason });
            }
        }
        let next_page_token = match rows.get(page_size as usize - 1) {
            Some(last) if more => gridwork_runtime::page::encode_scoped(&scope, &[&last.unit_id]),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListUnitsNeedingHeadResponse { units, next_page_token }))
    }

    async fn add_worker(
        &self,
        request: Request<pb::AddWorkerRequest>,
    ) -> Result<Response<pb::AddWorkerResponse>, Status> {
        let access = access(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        let person_id = checked_unit_id(&mut v, "person_id", &r.person_id);
        let name = v.text("name", &r.name, 1, 100);
        if pb::WorkerRole::try_from(r.role).unwrap_or(pb::WorkerRole::Unspecified) == pb::WorkerRole::Unspecified {
            v.add("role", "must be a worker role");
        }
        v.finish()?;
        let role = r.role;
        let (outcome, _) = self
            .registry
            .on_unit(&unit_id, command_id, &access, |kind, today| UnitCommand::AddWorker {
                kind,
                worker: pb::Worker { person_id, name, role, joined_on: today.to_string(), ..Default::default() },
            })
            .await?;
        Ok(Response::new(pb::AddWorkerResponse { position: position(&outcome) }))
    }

    async fn dismiss_worker(
        &self,
        request: Request<pb::DismissWorkerRequest>,
    ) -> Result<Response<pb::DismissWorkerResponse>, Status> {
        let access = access(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        let person_id = checked_unit_id(&mut v, "person_id", &r.person_id);
        let reason = v.text("reason", &r.reason, 1, 500);
        v.finish()?;
        let (outcome, _) = self
            .registry
            .on_unit(&unit_id, command_id, &access, |_, today| UnitCommand::DismissWorker { person_id, reason, today })
            .await?;
        Ok(Response::new(pb::DismissWorkerResponse { position: position(&outcome) }))
    }

    async fn set_party_branch(
        &self,
        request: Request<pb::SetPartyBranchRequest>,
    ) -> Result<Response<pb::SetPartyBranchResponse>, Status> {
        let access = access(&request)?;
        let r = request.into_inner();
        let mut v = Violations::default();
        let command_id = v.command_id(&r.command_id, &r);
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        let name = v.text("name", &r.name, 1, 200);
        let secretary = v.text("secretary", &r.secretary, 1, 100);
        if pb::PartyOrgKind::try_from(r.kind).unwrap_or(pb::PartyOrgKind::Unspecified) == pb::PartyOrgKind::Unspecified
        {
            v.add("kind", "must be a branch or a group");
        }
        v.finish()?;
        let branch = pb::PartyBranch { name, kind: r.kind, secretary };
        let (outcome, _) = self
            .registry
            .on_unit(&unit_id, command_id, &access, |kind, _| UnitCommand::SetPartyBranch { kind, branch })
            .await?;
        Ok(Response::new(pb::SetPartyBranchResponse { position: position(&outcome) }))
    }

    async fn get_unit(&self, request: Request<pb::GetUnitRequest>) -> Result<Response<pb::GetUnitResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        let unit_id = checked_unit_id(&mut v, "unit_id", &r.unit_id);
        v.finish()?;
        self.registry.wait(r.min_position, wait).await?;
        let row = self
            .registry
            .unit(&unit_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound(format!("unit_id: unit {unit_id} does not exist")))?;
        let mut unit = summary(&row);
        unit.boundary_geojson.clone_from(&row.boundary_geojson);
        unit.head = head_of(&row);
        if let Some(reason) = needs_head(&row, self.registry.today()) {
            unit.needs_head = true;
            unit.needs_head_reason = reason;
        }
        if let Some(name) = &row.party_name {
            unit.party_branch = Some(pb::PartyBranch {
                name: name.clone(),
                kind: row.party_kind.unwrap_or(0) as i32,
                secretary: row.party_secretary.clone().unwrap_or_default(),
            });
        }
        for s in self.registry.staff(&unit_id).await? {
            let worker = pb::Worker {
                person_id: s.person_id,
                name: s.name,
                role: s.role as i32,
                joined_on: s.joined_on,
                left_on: s.left_on.clone().unwrap_or_default(),
                dismissal_reason: s.dismissal_reason.unwrap_or_default(),
            };
            if s.left_on.is_some() { unit.past_workers.push(worker) } else { unit.current_workers.push(worker) }
        }
        Ok(Response::new(pb::GetUnitResponse { unit: Some(unit) }))
    }

    async fn list_children(
        &self,
        request: Request<pb::ListChildrenRequest>,
    ) -> Result<Response<pb::ListChildrenResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        if !r.parent_id.is_empty() {
            checked_unit_id(&mut v, "parent_id", &r.parent_id);
        }
        v.finish()?;
        self.registry.wait(r.min_position, wait).await?;
        let units = self.registry.children(&r.parent_id).await?.iter().map(summary).collect();
        Ok(Response::new(pb::ListChildrenResponse { units }))
    }

    async fn search_units(
        &self,
        request: Request<pb::SearchUnitsRequest>,
    ) -> Result<Response<pb::SearchUnitsResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        let query = v.text("query", &r.query, 1, 100);
        if r.limit > 500 {
            v.add("limit", "must be at most 500");
        }
        let kind = match pb::UnitKind::try_from(r.kind) {
            Ok(k) => Kind::from_proto(k),
            Err(_) => {
                v.add("kind", "unknown unit kind");
                None
            }
        };
        let scope = gridwork_runtime::page::scope(SEARCH, &[&query, &r.kind.to_string()]);
        let after = gridwork_runtime::page::decode_scoped(&mut v, &r.page_token, &scope, 2);
        v.finish()?;
        let limit = if r.limit == 0 { 50 } else { r.limit };
        self.registry.wait(r.min_position, wait).await?;
        let after = after.as_ref().map(|k| (k[0].as_str(), k[1].as_str()));
        let mut rows = self.registry.search(&query, kind, after, limit + 1).await?;
        let next_page_token = match rows.len() > limit as usize {
            true => {
                rows.truncate(limit as usize);
                rows.last()
                    .map_or_else(String::new, |u| gridwork_runtime::page::encode_scoped(&scope, &[&u.name, &u.unit_id]))
            }
            false => String::new(),
        };
        let units = rows.iter().map(summary).collect();
        Ok(Response::new(pb::SearchUnitsResponse { units, next_page_token }))
    }

    async fn locate(&self, request: Request<pb::LocateRequest>) -> Result<Response<pb::LocateResponse>, Status> {
        let wait = read_wait(&request);
        let r = request.into_inner();
        let mut v = Violations::default();
        if !r.lat.is_finite() || !(-90.0..=90.0).contains(&r.lat) {
            v.add("lat", "must be between -90 and 90");
        }
        if !r.lon.is_finite() || !(-180.0..=180.0).contains(&r.lon) {
            v.add("lon", "must be between -180 and 180");
        }
        v.finish()?;
        self.registry.wait(r.min_position, wait).await?;
        let path = self.registry.locate(r.lon, r.lat).await?;
        Ok(Response::new(pb::LocateResponse { path }))
    }
}
