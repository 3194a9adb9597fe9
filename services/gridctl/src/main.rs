//! gridctl: the operator CLI. A plain gRPC client of the services; everything it
//! does, grpcurl can do too (README lists the equivalents).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use gridwork_geo::Kind;
use gridwork_grid_registry::demo::{self, DemoUnit, Layout};
use gridwork_proto::gridwork::grid::v1 as pb;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_client::GridRegistryServiceClient;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

type Registry = GridRegistryServiceClient<Channel>;

mod cases;
mod incidents;

#[derive(Parser)]
#[command(name = "gridctl", about = "Operate a Gridwork mesh")]
struct Cli {
    /// Grid registry gRPC endpoint.
    #[arg(long, env = "GRIDCTL_REGISTRY", default_value = "http://127.0.0.1:50052", global = true)]
    registry: String,
    /// Incident intake gRPC endpoint.
    #[arg(long, env = "GRIDCTL_INTAKE", default_value = "http://127.0.0.1:50053", global = true)]
    intake: String,
    /// Dispatch gRPC endpoint.
    #[arg(long, env = "GRIDCTL_DISPATCH", default_value = "http://127.0.0.1:50054", global = true)]
    dispatch: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Register the demo district (7 streets, 35 communities, 700 grids, 4,200
    /// micro-grids) with households, certified heads, workers and party branches.
    /// Safe to run twice.
    SeedDemo,
    /// Units of the organisation tree.
    #[command(subcommand)]
    Units(Units),
    /// The path from district to micro-grid at a point.
    Locate {
        /// Latitude.
        #[arg(allow_negative_numbers = true)]
        lat: f64,
        /// Longitude.
        #[arg(allow_negative_numbers = true)]
        lon: f64,
    },
    /// Grid workers.
    #[command(subcommand)]
    Workers(Workers),
    /// Incidents in intake: report, triage, read.
    #[command(subcommand)]
    Incidents(Incidents),
    /// Cases in dispatch: read, act as an owner, rate.
    #[command(subcommand)]
    Cases(Cases),
}

#[derive(Subcommand)]
enum Incidents {
    /// Report a problem at a point.
    Report {
        /// Category code (see `incidents catalogue`).
        category: String,
        /// Latitude.
        #[arg(allow_negative_numbers = true)]
        lat: f64,
        /// Longitude.
        #[arg(allow_negative_numbers = true)]
        lon: f64,
        /// What is wrong.
        #[arg(long)]
        description: String,
        /// Channel.
        #[arg(long, value_enum, default_value = "resident")]
        source: SourceArg,
        /// A list attribute value, CODE=VALUE (repeatable; values of one code are combined).
        #[arg(long = "attr")]
        attributes: Vec<String>,
    },
    /// One incident with its history.
    Get {
        /// Incident id.
        id: String,
    },
    /// Accept an incident for dispatch.
    Accept {
        /// Incident id.
        id: String,
    },
    /// The service catalogue.
    Catalogue,
}

#[derive(Subcommand)]
enum Cases {
    /// One case with its timeline.
    Get {
        /// Case id (the incident id).
        id: String,
    },
    /// An owner's work queue, e.g. `grid:hl-s0-c0-g01`.
    Queue {
        /// TIER:ID.
        owner: String,
    },
    /// Acknowledge as the owner.
    Ack {
        /// Case id.
        id: String,
        /// Acting as TIER:ID.
        #[arg(long = "as")]
        acting_as: String,
    },
    /// Resolve as the owner.
    Resolve {
        /// Case id.
        id: String,
        /// Acting as TIER:ID.
        #[arg(long = "as")]
        acting_as: String,
        /// Notes.
        #[arg(long)]
        notes: String,
    },
    /// Rate the resolution as the reporter: satisfied? and, separately, solved?
    Rate {
        /// Case id.
        id: String,
        /// Rating.
        #[arg(value_enum)]
        rating: RatingArg,
        /// Was the problem solved (yes or no)?
        #[arg(long, value_enum)]
        solved: SolvedArg,
        /// Comment.
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Unresolved cases past a case-level deadline, city-wide.
    Overdue,
    /// A department's summonses (its work items on cases others own).
    Summonses {
        /// Department code, e.g. fire-brigade.
        department: String,
        /// Also completed and released ones.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum SolvedArg {
    Yes,
    No,
}

#[derive(Clone, Copy, ValueEnum)]
enum SourceArg {
    GridWorker,
    Resident,
    RiderInformant,
    Hotline,
    Camera,
    PartnerBureau,
}

#[derive(Clone, Copy, ValueEnum)]
enum RatingArg {
    Satisfied,
    BasicallySatisfied,
    Unsatisfied,
}

#[derive(Subcommand)]
enum Units {
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
    },
}

#[derive(Subcommand)]
enum Workers {
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

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    District,
    Street,
    Community,
    Grid,
    SpecialGrid,
    MicroGrid,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
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

/// A gRPC error as a readable line, field violations included.
fn explain(status: &tonic::Status) -> String {
    match status.get_error_details().bad_request() {
        Some(bad) => {
            let mut line = format!("{:?}:", status.code());
            for v in &bad.field_violations {
                line.push_str(&format!("\n  {}: {}", v.field, v.description));
            }
            line
        }
        None => format!("{:?}: {}", status.code(), status.message()),
    }
}

/// Deterministic command ids, so running the seed twice applies it once.
fn command_id(parts: &[&str]) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u128::from(b);
            h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
        }
    }
    uuid::Uuid::from_u128(h).to_string()
}

async fn connect(endpoint: &str) -> anyhow::Result<Registry> {
    let channel = Channel::from_shared(endpoint.to_string())?
        .connect()
        .await
        .with_context(|| format!("connecting to the grid registry at {endpoint}"))?;
    Ok(GridRegistryServiceClient::new(channel))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Incidents(c) => incidents::run(&cli.intake, c).await?,
        Command::Cases(c) => cases::run(&cli.dispatch, c).await?,
        other => registry_command(&cli.registry, other).await?,
    };
    if let Err(status) = result {
        eprintln!("{}", explain(&status));
        std::process::exit(1);
    }
    Ok(())
}

async fn registry_command(endpoint: &str, command: Command) -> anyhow::Result<Result<(), tonic::Status>> {
    let mut registry = connect(endpoint).await?;
    Ok(match command {
        Command::SeedDemo => seed_demo(registry).await,
        Command::Units(Units::Get { unit }) => get(&mut registry, unit).await,
        Command::Units(Units::Children { parent }) => children(&mut registry, parent.unwrap_or_default()).await,
        Command::Units(Units::Search { query, kind }) => search(&mut registry, query, kind).await,
        Command::Locate { lat, lon } => locate(&mut registry, lat, lon).await,
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
                    visible(&mut registry, &unit, r.into_inner().position, &format!("dismissed {person} from {unit}"))
                        .await
                }
                Err(e) => Err(e),
            }
        }
        Command::Incidents(_) | Command::Cases(_) => Ok(()),
    })
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
    println!("{done} (position {sequence})");
    Ok(())
}

async fn get(registry: &mut Registry, unit: String) -> Result<(), tonic::Status> {
    let u = registry
        .get_unit(pb::GetUnitRequest { unit_id: unit, min_position: 0 })
        .await?
        .into_inner()
        .unit
        .unwrap_or_default();
    println!("{} ({}) {}", u.unit_id, kind_name(u.kind), u.name);
    println!("  path: {}", if u.ancestor_ids.is_empty() { "(top)".to_string() } else { u.ancestor_ids.join(" > ") });
    if u.households > 0 {
        println!("  households: {} ({})", u.households, band_name(u.household_band));
    }
    if let Some(h) = &u.head {
        let c = h.certificate.clone().unwrap_or_default();
        println!(
            "  head: {} ({}), certificate {} from {}, valid to {}",
            h.name, h.person_id, c.number, c.issuer, c.expires_on
        );
    }
    if u.needs_head {
        println!("  NEEDS A HEAD: {}", u.needs_head_reason);
    }
    if let Some(p) = &u.party_branch {
        let kind = if p.kind == pb::PartyOrgKind::Group as i32 { "party group" } else { "party branch" };
        println!("  {kind}: {} (secretary {})", p.name, p.secretary);
    }
    for w in &u.current_workers {
        println!("  worker: {} ({}) {} since {}", w.name, w.person_id, role_name(w.role), w.joined_on);
    }
    for w in &u.past_workers {
        println!(
            "  past:   {} ({}) {} {} .. {}: {}",
            w.name,
            w.person_id,
            role_name(w.role),
            w.joined_on,
            w.left_on,
            w.dismissal_reason
        );
    }
    println!("  boundary: {} characters of GeoJSON; position {}", u.boundary_geojson.len(), u.position);
    Ok(())
}

async fn children(registry: &mut Registry, parent: String) -> Result<(), tonic::Status> {
    let units = registry
        .list_children(pb::ListChildrenRequest { parent_id: parent, min_position: 0 })
        .await?
        .into_inner()
        .units;
    for u in &units {
        let households = if u.households > 0 {
            format!("  {} households {}", u.households, band_name(u.household_band))
        } else {
            String::new()
        };
        println!("{:<24} {:<13} {}{households}", u.unit_id, kind_name(u.kind), u.name);
    }
    println!("({} units)", units.len());
    Ok(())
}

async fn search(registry: &mut Registry, query: String, kind: Option<KindArg>) -> Result<(), tonic::Status> {
    let kind = kind.map_or(pb::UnitKind::Unspecified, |k| match k {
        KindArg::District => pb::UnitKind::District,
        KindArg::Street => pb::UnitKind::Street,
        KindArg::Community => pb::UnitKind::Community,
        KindArg::Grid => pb::UnitKind::Grid,
        KindArg::SpecialGrid => pb::UnitKind::SpecialGrid,
        KindArg::MicroGrid => pb::UnitKind::MicroGrid,
    });
    let units =
        registry.search_units(pb::SearchUnitsRequest { query, kind: kind as i32, limit: 20 }).await?.into_inner().units;
    for u in &units {
        println!("{:<24} {:<13} {}", u.unit_id, kind_name(u.kind), u.name);
    }
    println!("({} shown)", units.len());
    Ok(())
}

async fn locate(registry: &mut Registry, lat: f64, lon: f64) -> Result<(), tonic::Status> {
    let path = registry.locate(pb::LocateRequest { lat, lon, min_position: 0 }).await?.into_inner().path;
    if path.is_empty() {
        println!("({lat}, {lon}) is in no registered district");
    }
    for (depth, p) in path.iter().enumerate() {
        println!("{}{} ({}) {}", "  ".repeat(depth), p.unit_id, kind_name(p.kind), p.name);
    }
    Ok(())
}

async fn seed_demo(registry: Registry) -> Result<(), tonic::Status> {
    let started = Instant::now();
    let units = demo::district(Layout::default());
    let mut by_depth: BTreeMap<u8, BTreeMap<String, Vec<DemoUnit>>> = BTreeMap::new();
    for u in &units {
        by_depth.entry(u.kind.depth()).or_default().entry(u.parent_id.clone()).or_default().push(u.clone());
    }
    let permits = Arc::new(Semaphore::new(24));
    let mut registered = 0usize;
    for (_, groups) in by_depth {
        let mut tasks = Vec::new();
        for (_, group) in groups {
            let (mut client, permits) = (registry.clone(), permits.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.map_err(|_| tonic::Status::cancelled("stopped"))?;
                let mut n = 0usize;
                for u in group {
                    seed_unit(&mut client, &u).await?;
                    n += 1;
                }
                Ok::<usize, tonic::Status>(n)
            }));
        }
        for t in tasks {
            registered += t.await.map_err(|e| tonic::Status::internal(e.to_string()))??;
        }
    }
    println!("seeded {registered} units of the demo district in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Already there (a second run): fine.
fn tolerate_existing(r: Result<(), tonic::Status>) -> Result<(), tonic::Status> {
    match r {
        Err(s) if s.code() == tonic::Code::FailedPrecondition && s.message().contains("already") => Ok(()),
        other => other,
    }
}

async fn seed_unit(client: &mut Registry, u: &DemoUnit) -> Result<(), tonic::Status> {
    tolerate_existing(
        client
            .register_unit(pb::RegisterUnitRequest {
                command_id: command_id(&["register", &u.id]),
                unit_id: u.id.clone(),
                parent_id: u.parent_id.clone(),
                kind: u.kind.to_proto() as i32,
                name: u.name.clone(),
                boundary_geojson: u.boundary_geojson.clone(),
                special_site: u.special_site,
            })
            .await
            .map(|_| ()),
    )?;
    if let Some(households) = u.households {
        client
            .set_households(pb::SetHouseholdsRequest {
                command_id: command_id(&["households", &u.id]),
                unit_id: u.id.clone(),
                households,
            })
            .await?;
    }
    if !u.kind.has_staff() {
        return Ok(());
    }
    let n = u.id.bytes().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    let surnames = ["王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴"];
    let head_name =
        format!("{}{}", surnames[(n % 10) as usize], ["建国", "秀英", "伟", "芳", "军", "静"][(n / 10 % 6) as usize]);
    // Certificates run to 2027-2028; one grid in forty expires at the end of this year.
    let expires = if n % 40 == 0 { "2026-12-31".to_string() } else { format!("{}-{:02}-28", 2027 + n % 2, n % 12 + 1) };
    client
        .appoint_head(pb::AppointHeadRequest {
            command_id: command_id(&["head", &u.id]),
            unit_id: u.id.clone(),
            person_id: format!("p-{}", u.id),
            name: head_name.clone(),
            certificate: Some(pb::Certificate {
                number: format!("HL-{:06}", n % 1_000_000),
                issuer: "华龙区社会工作部".into(),
                expires_on: expires,
            }),
        })
        .await?;
    if u.kind == Kind::MicroGrid {
        return Ok(());
    }
    client
        .set_party_branch(pb::SetPartyBranchRequest {
            command_id: command_id(&["party", &u.id]),
            unit_id: u.id.clone(),
            name: format!("{}党支部", u.name),
            kind: pb::PartyOrgKind::Branch as i32,
            secretary: head_name,
        })
        .await?;
    let mut workers = vec![(format!("w-{}-1", u.id), "专职网格员", pb::WorkerRole::FullTime)];
    if n % 3 == 0 {
        workers.push((format!("r-{}-1", u.id), "外卖骑手 rider", pb::WorkerRole::RiderInformant));
    }
    if n % 4 == 0 {
        workers.push((format!("v-{}-1", u.id), "退休党员", pb::WorkerRole::RetiredPartyMember));
    }
    for (person, name, role) in workers {
        tolerate_existing(
            client
                .add_worker(pb::AddWorkerRequest {
                    command_id: command_id(&["worker", &u.id, &person]),
                    unit_id: u.id.clone(),
                    person_id: person,
                    name: name.into(),
                    role: role as i32,
                })
                .await
                .map(|_| ()),
        )?;
    }
    Ok(())
}
