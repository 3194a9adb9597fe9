//! `gridctl units …`, `workers …`, `heads …` and `locate`: the grid registry.

use clap::{Subcommand, ValueEnum};
use gridwork_proto::gridwork::grid::v1 as pb;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_client::GridRegistryServiceClient;

use crate::{Command, out};

/// A client of the registry.
pub type Registry = GridRegistryServiceClient<crate::caller::Conn>;

#[derive(Subcommand)]
pub enum Units {
    /// One unit with its head, staff and flags.
    Get {
        /// Unit id.
        unit: String,
    },
    /// A unit's children (districts when no parent is given).
    Children {
        /// Parent id.
        parent: Option<String>,
    },
    /// Units whose name contains the text.
    Search {
        /// Text to find.
        query: String,
        /// Only this kind.
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// At most this many (pages are followed up to it).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Register a unit under its parent, with its boundary.
    Register {
        /// Unit id.
        unit: String,
        /// Kind.
        #[arg(long, value_enum)]
        kind: KindArg,
        /// Name.
        #[arg(long)]
        name: String,
        /// Parent id (none for a district).
        #[arg(long, default_value = "")]
        parent: String,
        /// File holding the boundary as a GeoJSON Polygon or MultiPolygon.
        #[arg(long)]
        boundary: String,
        /// For a special grid: mall, school, hospital or enterprise.
        #[arg(long)]
        site: Option<String>,
    },
    /// Redraw a unit's boundary (it must stay inside its parent and off its siblings).
    Redraw {
        /// Unit id.
        unit: String,
        /// File holding the new GeoJSON boundary.
        #[arg(long)]
        boundary: String,
    },
    /// Record a unit's number of households (bands: grid 300-500, micro-grid 50-70).
    Households {
        /// Unit id.
        unit: String,
        /// Households.
        households: u32,
    },
    /// Record the party branch or group of a unit.
    PartyBranch {
        /// Unit id.
        unit: String,
        /// Name.
        #[arg(long)]
        name: String,
        /// A party group (党小组) rather than a branch (党支部).
        #[arg(long)]
        group: bool,
        /// Secretary.
        #[arg(long)]
        secretary: String,
    },
}

#[derive(Subcommand)]
pub enum Workers {
    /// Enrol a worker.
    Add {
        /// Unit id.
        unit: String,
        /// Person id.
        person: String,
        /// Name.
        name: String,
        /// Role.
        #[arg(long, value_enum)]
        role: RoleArg,
    },
    /// Dismiss a worker (the history is kept).
    Dismiss {
        /// Unit id.
        unit: String,
        /// Person id.
        person: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum Heads {
    /// Appoint a certified head (replaces the head in post, recorded as replaced).
    Appoint {
        /// Unit id.
        unit: String,
        /// Person id.
        person: String,
        /// Name.
        name: String,
        /// Certificate number.
        #[arg(long)]
        certificate: String,
        /// Issuing body.
        #[arg(long)]
        issuer: String,
        /// Last valid day, YYYY-MM-DD.
        #[arg(long)]
        expires_on: String,
        /// Why the head in post, if any, is replaced (required then).
        #[arg(long, default_value = "")]
        replacing_reason: String,
    },
    /// Record the head's renewed certificate (the term goes on).
    Renew {
        /// Unit id.
        unit: String,
        /// Person id of the head in post.
        person: String,
        /// New certificate number.
        #[arg(long)]
        certificate: String,
        /// Issuing body.
        #[arg(long)]
        issuer: String,
        /// New last valid day, YYYY-MM-DD.
        #[arg(long)]
        expires_on: String,
    },
    /// End the head's term; the unit is vacant until the next appointment.
    Vacate {
        /// Unit id.
        unit: String,
        /// Person id of the head in post.
        person: String,
        /// Why.
        #[arg(long, value_enum)]
        departure: DepartureArg,
        /// The reason in words.
        #[arg(long)]
        note: String,
    },
    /// Every head a unit has had, newest first.
    History {
        /// Unit id.
        unit: String,
    },
    /// Units in a subtree that need a head: vacant, expired, or expiring soon.
    Needed {
        /// Subtree root (district, street, community or grid).
        under: String,
        /// Also certificates running out within this many days.
        #[arg(long, default_value_t = 0)]
        within_days: u32,
        /// At most this many (all pages are fetched up to it).
        #[arg(long, default_value_t = 200)]
        limit: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DepartureArg {
    Dismissed,
    Resigned,
    Transferred,
    Other,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    District,
    Street,
    Community,
    Grid,
    SpecialGrid,
    MicroGrid,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum RoleArg {
    FullTime,
    ResidentVolunteer,
    RetiredPartyMember,
    PropertyStaff,
    RiderInformant,
}

fn kind_name(k: i32) -> &'static str {
    match pb::UnitKind::try_from(k).unwrap_or(pb::UnitKind::Unspecified) {
        pb::UnitKind::District => "district",
        pb::UnitKind::Street => "street",
        pb::UnitKind::Community => "community",
        pb::UnitKind::Grid => "grid",
        pb::UnitKind::MicroGrid => "micro-grid",
        pb::UnitKind::SpecialGrid => "special-grid",
        pb::UnitKind::Unspecified => "?",
    }
}

fn role_name(r: i32) -> &'static str {
    match pb::WorkerRole::try_from(r).unwrap_or(pb::WorkerRole::Unspecified) {
        pb::WorkerRole::FullTime => "full-time",
        pb::WorkerRole::ResidentVolunteer => "resident-volunteer",
        pb::WorkerRole::RetiredPartyMember => "retired-party-member",
        pb::WorkerRole::PropertyStaff => "property-staff",
        pb::WorkerRole::RiderInformant => "rider-informant",
        pb::WorkerRole::Unspecified => "?",
    }
}

fn band_name(b: i32) -> &'static str {
    match pb::HouseholdBand::try_from(b).unwrap_or(pb::HouseholdBand::Unspecified) {
        pb::HouseholdBand::Within => "within band",
        pb::HouseholdBand::Below => "BELOW band",
        pb::HouseholdBand::Above => "ABOVE band",
        pb::HouseholdBand::Unspecified => "",
    }
}

pub async fn connect(endpoint: &str) -> anyhow::Result<Registry> {
    Ok(GridRegistryServiceClient::new(crate::caller::connect(endpoint, "the grid registry").await?))
}

pub async fn run(endpoint: &str, command: Command) -> anyhow::Result<Result<(), tonic::Status>> {
    let mut registry = connect(endpoint).await?;
    Ok(match command {
        Command::SeedDemo => crate::seed::seed_demo(registry).await,
        Command::Heads(h) => heads(&mut registry, h).await,
        Command::Units(Units::Get { unit }) => get(&mut registry, unit).await,
        Command::Units(Units::Children { parent }) => children(&mut registry, parent.unwrap_or_default()).await,
        Command::Units(Units::Search { query, kind, limit }) => search(&mut registry, query, kind, limit).await,
        Command::Locate { lat, lon } => locate(&mut registry, lat, lon).await,
        Command::Units(Units::Register { unit, kind, name, parent, boundary, site }) => {
            let special_site = match site.as_deref() {
                None => pb::SpecialSite::Unspecified,
                Some(s) => pb::SpecialSite::from_str_name(&format!("SPECIAL_SITE_{}", s.to_ascii_uppercase()))
                    .filter(|s| *s != pb::SpecialSite::Unspecified)
                    .ok_or_else(|| anyhow::anyhow!("--site {s:?}: mall, school, hospital or enterprise"))?,
            };
            let request = pb::RegisterUnitRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                unit_id: unit.clone(),
                parent_id: parent,
                kind: kind_proto(kind) as i32,
                name,
                boundary_geojson: read_boundary(&boundary)?,
                special_site: special_site as i32,
            };
            match registry.register_unit(request).await {
                Ok(r) => {
                    crate::emit(r.get_ref(), "gridwork.grid.v1.RegisterUnitResponse");
                    visible(&mut registry, &unit, r.into_inner().position, &format!("registered {unit}")).await
                }
                Err(e) => Err(e),
            }
        }
        Command::Units(Units::Redraw { unit, boundary }) => {
            let request = pb::RedrawBoundaryRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                unit_id: unit.clone(),
                boundary_geojson: read_boundary(&boundary)?,
            };
            match registry.redraw_boundary(request).await {
                Ok(r) => {
                    crate::emit(r.get_ref(), "gridwork.grid.v1.RedrawBoundaryResponse");
                    visible(&mut registry, &unit, r.into_inner().position, &format!("redrew {unit}")).await
                }
                Err(e) => Err(e),
            }
        }
        Command::Units(Units::Households { unit, households }) => {
            let request = pb::SetHouseholdsRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                unit_id: unit.clone(),
                households,
            };
            match registry.set_households(request).await {
                Ok(r) => {
                    crate::emit(r.get_ref(), "gridwork.grid.v1.SetHouseholdsResponse");
                    let done = format!("{unit} has {households} households");
                    visible(&mut registry, &unit, r.into_inner().position, &done).await
                }
                Err(e) => Err(e),
            }
        }
        Command::Units(Units::PartyBranch { unit, name, group, secretary }) => {
            let kind = if group { pb::PartyOrgKind::Group } else { pb::PartyOrgKind::Branch };
            let request = pb::SetPartyBranchRequest {
                command_id: uuid::Uuid::now_v7().to_string(),
                unit_id: unit.clone(),
                name: name.clone(),
                kind: kind as i32,
                secretary,
            };
            match registry.set_party_branch(request).await {
                Ok(r) => {
                    crate::emit(r.get_ref(), "gridwork.grid.v1.SetPartyBranchResponse");
                    visible(&mut registry, &unit, r.into_inner().position, &format!("{name} recorded for {unit}")).await
                }
                Err(e) => Err(e),
            }
        }
        Command::Workers(Workers::Add { unit, person, name, role }) => {
            let role = match role {
                RoleArg::FullTime => pb::WorkerRole::FullTime,
                RoleArg::ResidentVolunteer => pb::WorkerRole::ResidentVolunteer,
                RoleArg::RetiredPartyMember => pb::WorkerRole::RetiredPartyMember,
                RoleArg::PropertyStaff => pb::WorkerRole::PropertyStaff,
                RoleArg::RiderInformant => pb::WorkerRole::RiderInformant,
            };
            let r = registry
                .add_worker(pb::AddWorkerRequest {
                    command_id: uuid::Uuid::now_v7().to_string(),
                    unit_id: unit.clone(),
                    person_id: person.clone(),
                    name,
                    role: role as i32,
                })
                .await;
            match r {
                Ok(r) => {
                    crate::emit(r.get_ref(), "gridwork.grid.v1.AddWorkerResponse");
                    visible(&mut registry, &unit, r.into_inner().position, &format!("added {person} to {unit}")).await
                }
                Err(e) => Err(e),
            }
        }
        Command::Workers(Workers::Dismiss { unit, person, reason }) => {
            let r = registry
                .dismiss_worker(pb::DismissWorkerRequest {
                    command_id: uuid::Uuid::now_v7().to_string(),
                    unit_id: unit.clone(),
                    person_id: person.clone(),
                    reason,
                })
                .await;
            match r {
                Ok(r) => {
                    crate::emit(r.get_ref(), "gridwork.grid.v1.DismissWorkerResponse");
                    visible(&mut registry, &unit, r.into_inner().position, &format!("dismissed {person} from {unit}"))
                        .await
                }
                Err(e) => Err(e),
            }
        }
        Command::Login { .. }
        | Command::NatsUsers { .. }
        | Command::Incidents(_)
        | Command::Cases(_)
        | Command::Rules(_)
        | Command::Calendar(_) => Ok(()),
    })
}

/// A boundary file's GeoJSON (the registry checks it and names what is wrong).
fn read_boundary(path: &str) -> anyhow::Result<String> {
    use anyhow::Context as _;
    std::fs::read_to_string(path).with_context(|| format!("--boundary: reading {path}"))
}

fn kind_proto(kind: KindArg) -> pb::UnitKind {
    match kind {
        KindArg::District => pb::UnitKind::District,
        KindArg::Street => pb::UnitKind::Street,
        KindArg::Community => pb::UnitKind::Community,
        KindArg::Grid => pb::UnitKind::Grid,
        KindArg::SpecialGrid => pb::UnitKind::SpecialGrid,
        KindArg::MicroGrid => pb::UnitKind::MicroGrid,
    }
}

/// Wait until the read model shows a write, so the next command sees it.
async fn visible(
    registry: &mut Registry,
    unit: &str,
    position: Option<pb::CommitPosition>,
    done: &str,
) -> Result<(), tonic::Status> {
    let sequence = position.unwrap_or_default().sequence;
    registry.get_unit(pb::GetUnitRequest { unit_id: unit.to_string(), min_position: sequence }).await?;
    out!("{done} (position {sequence})");
    Ok(())
}

async fn get(registry: &mut Registry, unit: String) -> Result<(), tonic::Status> {
    let u = registry
        .get_unit(pb::GetUnitRequest { unit_id: unit, min_position: 0 })
        .await?
        .into_inner()
        .unit
        .unwrap_or_default();
    crate::emit(&u, "gridwork.grid.v1.Unit");
    out!("{} ({}) {}", u.unit_id, kind_name(u.kind), u.name);
    out!("  path: {}", if u.ancestor_ids.is_empty() { "(top)".to_string() } else { u.ancestor_ids.join(" > ") });
    if u.households > 0 {
        out!("  households: {} ({})", u.households, band_name(u.household_band));
    }
    if let Some(h) = &u.head {
        let c = h.certificate.clone().unwrap_or_default();
        out!(
            "  head: {} ({}), certificate {} from {}, valid to {}",
            h.name,
            h.person_id,
            c.number,
            c.issuer,
            c.expires_on
        );
    }
    if u.needs_head {
        out!("  NEEDS A HEAD: {}", u.needs_head_reason);
    }
    if let Some(p) = &u.party_branch {
        let kind = if p.kind == pb::PartyOrgKind::Group as i32 { "party group" } else { "party branch" };
        out!("  {kind}: {} (secretary {})", p.name, p.secretary);
    }
    for w in &u.current_workers {
        out!("  worker: {} ({}) {} since {}", w.name, w.person_id, role_name(w.role), w.joined_on);
    }
    for w in &u.past_workers {
        out!(
            "  past:   {} ({}) {} {} .. {}: {}",
            w.name,
            w.person_id,
            role_name(w.role),
            w.joined_on,
            w.left_on,
            w.dismissal_reason
        );
    }
    out!("  boundary: {} characters of GeoJSON; position {}", u.boundary_geojson.len(), u.position);
    Ok(())
}

async fn children(registry: &mut Registry, parent: String) -> Result<(), tonic::Status> {
    let units = registry
        .list_children(pb::ListChildrenRequest { parent_id: parent, min_position: 0 })
        .await?
        .into_inner()
        .units;
    for u in &units {
        crate::emit(u, "gridwork.grid.v1.Unit");
        let households = if u.households > 0 {
            format!("  {} households {}", u.households, band_name(u.household_band))
        } else {
            String::new()
        };
        out!("{:<24} {:<13} {}{households}", u.unit_id, kind_name(u.kind), u.name);
    }
    out!("({} units)", units.len());
    Ok(())
}

async fn search(
    registry: &mut Registry,
    query: String,
    kind: Option<KindArg>,
    limit: u32,
) -> Result<(), tonic::Status> {
    let kind = kind.map_or(pb::UnitKind::Unspecified, kind_proto);
    let (mut shown, mut page_token) = (0u32, String::new());
    loop {
        let request = pb::SearchUnitsRequest {
            query: query.clone(),
            kind: kind as i32,
            limit: (limit - shown).min(500),
            min_position: 0,
            page_token,
        };
        let page = registry.search_units(request).await?.into_inner();
        for u in &page.units {
            crate::emit(u, "gridwork.grid.v1.Unit");
            out!("{:<24} {:<13} {}", u.unit_id, kind_name(u.kind), u.name);
        }
        shown += u32::try_from(page.units.len()).unwrap_or(u32::MAX);
        if page.next_page_token.is_empty() || shown >= limit {
            if !page.next_page_token.is_empty() {
                out!("(first {limit} shown; --limit for more)");
            }
            break;
        }
        page_token = page.next_page_token;
    }
    out!("({shown} shown)");
    Ok(())
}

async fn locate(registry: &mut Registry, lat: f64, lon: f64) -> Result<(), tonic::Status> {
    let located = registry.locate(pb::LocateRequest { lat, lon, min_position: 0 }).await?.into_inner();
    crate::emit(&located, "gridwork.grid.v1.LocateResponse");
    let path = located.path;
    if path.is_empty() {
        out!("({lat}, {lon}) is in no registered district");
    }
    for (depth, p) in path.iter().enumerate() {
        out!("{}{} ({}) {}", "  ".repeat(depth), p.unit_id, kind_name(p.kind), p.name);
    }
    Ok(())
}

fn departure_name(d: i32) -> &'static str {
    match pb::HeadDeparture::try_from(d).unwrap_or(pb::HeadDeparture::Unspecified) {
        pb::HeadDeparture::Dismissed => "dismissed",
        pb::HeadDeparture::Resigned => "resigned",
        pb::HeadDeparture::Transferred => "transferred",
        pb::HeadDeparture::Replaced => "replaced",
        pb::HeadDeparture::Other => "other",
        pb::HeadDeparture::Unspecified => "",
    }
}

fn need_name(n: i32) -> &'static str {
    match pb::HeadNeed::try_from(n).unwrap_or(pb::HeadNeed::Unspecified) {
        pb::HeadNeed::Vacant => "VACANT",
        pb::HeadNeed::CertificateExpired => "EXPIRED",
        pb::HeadNeed::CertificateExpiring => "expiring",
        pb::HeadNeed::Unspecified => "?",
    }
}

async fn heads(registry: &mut Registry, command: Heads) -> Result<(), tonic::Status> {
    let new_id = || uuid::Uuid::now_v7().to_string();
    match command {
        Heads::Appoint { unit, person, name, certificate, issuer, expires_on, replacing_reason } => {
            let r = registry
                .appoint_head(pb::AppointHeadRequest {
                    command_id: new_id(),
                    unit_id: unit.clone(),
                    person_id: person.clone(),
                    name,
                    certificate: Some(pb::Certificate { number: certificate, issuer, expires_on }),
                    replacing_reason,
                })
                .await?;
            crate::emit(r.get_ref(), "gridwork.grid.v1.AppointHeadResponse");
            visible(registry, &unit, r.into_inner().position, &format!("appointed {person} head of {unit}")).await
        }
        Heads::Renew { unit, person, certificate, issuer, expires_on } => {
            let r = registry
                .renew_head_certificate(pb::RenewHeadCertificateRequest {
                    command_id: new_id(),
                    unit_id: unit.clone(),
                    person_id: person.clone(),
                    certificate: Some(pb::Certificate { number: certificate, issuer, expires_on }),
                })
                .await?;
            crate::emit(r.get_ref(), "gridwork.grid.v1.RenewHeadCertificateResponse");
            visible(registry, &unit, r.into_inner().position, &format!("renewed the certificate of {person}")).await
        }
        Heads::Vacate { unit, person, departure, note } => {
            let departure = match departure {
                DepartureArg::Dismissed => pb::HeadDeparture::Dismissed,
                DepartureArg::Resigned => pb::HeadDeparture::Resigned,
                DepartureArg::Transferred => pb::HeadDeparture::Transferred,
                DepartureArg::Other => pb::HeadDeparture::Other,
            };
            let r = registry
                .vacate_head(pb::VacateHeadRequest {
                    command_id: new_id(),
                    unit_id: unit.clone(),
                    person_id: person.clone(),
                    departure: departure as i32,
                    note,
                })
                .await?;
            crate::emit(r.get_ref(), "gridwork.grid.v1.VacateHeadResponse");
            visible(registry, &unit, r.into_inner().position, &format!("{unit} has no head: {person} left")).await
        }
        Heads::History { unit } => {
            let terms = registry
                .list_head_history(pb::ListHeadHistoryRequest { unit_id: unit, min_position: 0 })
                .await?
                .into_inner()
                .terms;
            for t in &terms {
                crate::emit(t, "gridwork.grid.v1.HeadTerm");
                let c = t.certificate.clone().unwrap_or_default();
                let until = if t.left_on.is_empty() { "in post".to_string() } else { t.left_on.clone() };
                out!(
                    "{} .. {:<10} {} ({}), certificate {} to {}{}",
                    t.appointed_on,
                    until,
                    t.name,
                    t.person_id,
                    c.number,
                    c.expires_on,
                    if t.renewals > 0 { format!(", renewed {}×", t.renewals) } else { String::new() }
                );
                if !t.left_on.is_empty() {
                    out!("    {}: {}", departure_name(t.departure), t.note);
                }
            }
            out!("({} terms)", terms.len());
            Ok(())
        }
        Heads::Needed { under, within_days, limit } => {
            let (mut shown, mut page_token) = (0usize, String::new());
            loop {
                let page = registry
                    .list_units_needing_head(pb::ListUnitsNeedingHeadRequest {
                        under_unit_id: under.clone(),
                        expiring_within_days: within_days,
                        page_size: 200,
                        page_token,
                        min_position: 0,
                    })
                    .await?
                    .into_inner();
                for n in &page.units {
                    if shown == limit {
                        out!("(first {limit} shown; --limit for more)");
                        return Ok(());
                    }
                    crate::emit(n, "gridwork.grid.v1.UnitNeedingHead");
                    let u = n.unit.clone().unwrap_or_default();
                    out!("{:<24} {:<13} {:<8} {}", u.unit_id, kind_name(u.kind), need_name(n.need), n.reason);
                    shown += 1;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            out!("({shown} units)");
            Ok(())
        }
    }
}
