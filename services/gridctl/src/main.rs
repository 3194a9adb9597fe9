//! gridctl: the operator CLI. A plain gRPC client of the services; everything it
//! does, grpcurl can do too (README lists the equivalents).

use std::io::Write as _;

use clap::{Parser, Subcommand, ValueEnum};
use tonic_types::StatusExt as _;

mod caller;
mod cases;
mod incidents;
mod json;
mod login;
mod rules;
mod seed;
mod units;

use units::{Heads, Units, Workers};

/// One line on standard output. A reader that has gone away (`gridctl … |
/// head`) ends the program quietly instead of panicking as `println!` would;
/// any other write error is reported.
pub fn write_line(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(format_args!("{args}\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("gridctl: writing output: {e}");
        std::process::exit(1);
    }
}

/// `println!` for gridctl's lines for people (see [`write_line`]); silent
/// under `--output json`, where [`emit`] prints the messages instead.
#[macro_export]
macro_rules! out {
    () => { if !$crate::json_output() { $crate::write_line(format_args!("")) } };
    ($($arg:tt)*) => { if !$crate::json_output() { $crate::write_line(format_args!($($arg)*)) } };
}

static OUTPUT: std::sync::OnceLock<Output> = std::sync::OnceLock::new();

/// Whether `--output json` was asked for.
pub fn json_output() -> bool {
    matches!(OUTPUT.get(), Some(Output::Json))
}

/// Under `--output json`, `message` (of type `full_name`) as one line of
/// JSON (the proto3 JSON mapping): what a command answered, or one item of a
/// list. Nothing in text output.
pub fn emit(message: &impl prost::Message, full_name: &str) {
    if !json_output() {
        return;
    }
    match json::to_json_line(message, full_name) {
        Ok(line) => write_line(format_args!("{line}")),
        Err(e) => {
            eprintln!("gridctl: {full_name} as JSON: {e}");
            std::process::exit(1);
        }
    }
}

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
    /// Output: lines for people, or JSON Lines: each answer, or each item of
    /// a list, as one line in the proto3 JSON mapping (`rules show` and
    /// `calendar show` print one indented document, to edit and publish).
    #[arg(long, value_enum, default_value = "text", global = true)]
    output: Output,
    /// The bearer token to call with (default: the one `gridctl login` saved
    /// under --var).
    #[arg(long, env = "GRIDWORK_TOKEN", default_value = "", hide_env_values = true, global = true)]
    token: String,
    /// PEM CA that signed the services' certificates: call over TLS
    /// (`https://` endpoints).
    #[arg(long, env = "GRIDCTL_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for services that require one (mTLS).
    #[arg(long, env = "GRIDCTL_TLS_CERT", requires = "tls_key", global = true)]
    tls_cert: Option<std::path::PathBuf>,
    /// PEM key of the client certificate.
    #[arg(long, env = "GRIDCTL_TLS_KEY", requires = "tls_cert", global = true)]
    tls_key: Option<std::path::PathBuf>,
    /// The development state directory: `make run`'s signing key and the
    /// token `gridctl login` saves.
    #[arg(long, env = "GRIDWORK_VAR", default_value = "var", global = true)]
    var: std::path::PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Development: sign a token with the mesh's development key (made under
    /// --var on first use) and save it for the next commands. A production
    /// mesh refuses it: there, tokens come from the city's identity provider.
    Login {
        /// A grant: `role` or `role:scope` (`street:hl-s0`,
        /// `department:fire`, `dispatcher`); repeat for several.
        #[arg(long = "as", value_name = "ROLE[:SCOPE]")]
        grants: Vec<String>,
        /// Who: recorded as the principal of every command sent with it.
        #[arg(long, default_value = "dev")]
        subject: String,
        /// How long the token lasts.
        #[arg(long, default_value_t = 8)]
        hours: u64,
        /// Print the token instead of saving it (`GRIDWORK_TOKEN=$(…)`).
        #[arg(long)]
        print: bool,
    },
    /// Write NATS users for a server that names them by nkey: a seed per
    /// service, partner bureau and the operator (made once, kept after), and
    /// `users.conf` binding each to its subject permissions (`nats-server -c`).
    NatsUsers {
        /// Where: `<user>.nk` (owner-only), `permissions.conf`, `users.conf`.
        #[arg(long)]
        dir: std::path::PathBuf,
        /// The permissions of each user.
        #[arg(long, default_value = "deploy/nats/permissions.conf")]
        permissions: std::path::PathBuf,
    },
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
    /// Grid heads: appoint, renew, vacate, history, units needing one.
    #[command(subcommand)]
    Heads(Heads),
    /// Incidents in intake: report, triage, read.
    #[command(subcommand)]
    Incidents(Incidents),
    /// Cases in dispatch: read, act as an owner, rate.
    #[command(subcommand)]
    Cases(Cases),
    /// Dispatch's rulebook: departments, routing rules, SLA plans.
    #[command(subcommand)]
    Rules(Rules),
    /// Dispatch's working calendar: public holidays and make-up working days.
    #[command(subcommand)]
    Calendar(Calendar),
}

/// How gridctl prints what it reads.
#[derive(Clone, Copy, ValueEnum)]
pub enum Output {
    /// Lines for people.
    Text,
    /// JSON.
    Json,
}

#[derive(Subcommand)]
pub enum Rules {
    /// A rulebook version (default: the one in force). `--output json` prints
    /// it in the form `rules publish` reads.
    Show {
        /// Version; 0 for the one in force.
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Publish a new version from a JSON file (edit what `rules show --output
    /// json` printed), over the version you edited.
    Publish {
        /// The rulebook, JSON.
        file: String,
        /// The version the file was edited from (0: the built-in one).
        #[arg(long)]
        expected_version: u32,
        /// What changed and why (overrides the file's note).
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum Calendar {
    /// One year's holidays and make-up working days as in force.
    Show {
        /// The year.
        year: i32,
    },
    /// Set one year (it replaces the year's shipped days), e.g. from the State
    /// Council's notice.
    Publish {
        /// The year.
        year: i32,
        /// A public holiday, YYYY-MM-DD (repeatable).
        #[arg(long = "holiday")]
        holidays: Vec<String>,
        /// A make-up working day (调休), YYYY-MM-DD (repeatable).
        #[arg(long = "workday")]
        workdays: Vec<String>,
        /// Every holiday and make-up day of the year is given.
        #[arg(long)]
        complete: bool,
        /// Why, e.g. the notice's number.
        #[arg(long, default_value = "")]
        note: String,
    },
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
        /// The camera that raised it (required with --source camera).
        #[arg(long)]
        device: Option<String>,
        /// The camera's confidence, 0-1.
        #[arg(long, default_value_t = 1.0)]
        confidence: f64,
        /// A partner system's reference, SYSTEM:REFERENCE (a feed's retry of it
        /// makes no second incident).
        #[arg(long)]
        partner: Option<String>,
        /// A photo or video URL (repeatable).
        #[arg(long)]
        media: Vec<String>,
        /// The reporter's name, to call back (kept sealed, erasable).
        #[arg(long, requires = "phone")]
        contact_name: Option<String>,
        /// The reporter's phone.
        #[arg(long)]
        phone: Option<String>,
    },
    /// Publish a new catalogue version from a JSON file: what `incidents
    /// catalogue --output json` printed, edited (every category of the new
    /// version, with its attributes and duplicate policy).
    PublishCatalogue {
        /// The file.
        file: String,
    },
    /// One incident with its history.
    Get {
        /// Incident id.
        id: String,
    },
    /// Incidents in an area, newest first: a triage desk's list, or with
    /// --transfer-to a receiving body's queue.
    List {
        /// District, street, community, grid or micro-grid id (default: all).
        #[arg(long, default_value = "")]
        area: String,
        /// Only this status: reported, accepted, rejected, duplicate,
        /// resolved, closed or transferred.
        #[arg(long)]
        status: Option<String>,
        /// Only this category.
        #[arg(long, default_value = "")]
        category: String,
        /// Only those transferred, or waiting to be, to this body (KIND:ID).
        #[arg(long, default_value = "")]
        transfer_to: String,
        /// At most this many (pages are followed up to it).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
    },
    /// Claim an incident for triage: others see it is being handled.
    Claim {
        /// Incident id.
        id: String,
        /// Take over someone else's live claim (admins only).
        #[arg(long)]
        break_lock: bool,
    },
    /// Accept an incident for dispatch.
    Accept {
        /// Incident id.
        id: String,
    },
    /// Read the reporter's contact to call back (回访; needs the grant callback: gridctl login --as callback).
    /// Each read is recorded on the incident with who and why.
    Contact {
        /// Incident id.
        id: String,
        /// Why.
        #[arg(long)]
        purpose: String,
    },
    /// Erase the reporter's contact for good (needs the grant privacy: gridctl login --as privacy).
    EraseContact {
        /// Incident id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Triage: correct the category (attributes for the new one with --attr).
    Reclassify {
        /// Incident id.
        id: String,
        /// The new category code.
        category: String,
        /// A list attribute value, CODE=VALUE (repeatable).
        #[arg(long = "attr")]
        attributes: Vec<String>,
        /// Priority to give it (default: the category's).
        #[arg(long, value_enum)]
        priority: Option<PriorityArg>,
        /// Why.
        #[arg(long)]
        note: String,
    },
    /// Triage: correct where the problem is.
    Relocate {
        /// Incident id.
        id: String,
        /// Latitude.
        #[arg(allow_negative_numbers = true)]
        lat: f64,
        /// Longitude.
        #[arg(allow_negative_numbers = true)]
        lon: f64,
        /// Why.
        #[arg(long)]
        note: String,
    },
    /// Triage: set the priority, up or down.
    Prioritise {
        /// Incident id.
        id: String,
        /// Priority.
        #[arg(value_enum)]
        priority: PriorityArg,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Triage: send it to the body it belongs to (转办), e.g. district:hx.
    Transfer {
        /// Incident id.
        id: String,
        /// The receiving body, KIND:ID.
        to: String,
        /// Why it belongs there.
        #[arg(long)]
        reason: String,
    },
    /// The receiver's answer to a transfer (accepts unless --decline).
    AnswerTransfer {
        /// Incident id.
        id: String,
        /// Answering as this body, KIND:ID.
        #[arg(long = "as")]
        as_receiver: String,
        /// Decline it (give the reason in --note).
        #[arg(long)]
        decline: bool,
        /// The receiver's reference, or why it declines.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Triage: take back a transfer nobody has answered.
    WithdrawTransfer {
        /// Incident id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Triage: reject (spam, not-governance; out of jurisdiction is a transfer).
    Reject {
        /// Incident id.
        id: String,
        /// spam or not-governance.
        reason: String,
        /// Note.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// Triage: mark as a duplicate of an open incident.
    Duplicate {
        /// Incident id.
        id: String,
        /// The original.
        of: String,
    },
    /// The service catalogue.
    Catalogue,
}

/// A priority on the command line.
#[derive(Clone, Copy, ValueEnum)]
pub enum PriorityArg {
    /// Low.
    Low,
    /// Normal.
    Normal,
    /// High.
    High,
    /// Urgent.
    Urgent,
}

impl PriorityArg {
    /// The protobuf value.
    pub fn proto(self) -> gridwork_proto::gridwork::intake::v1::Priority {
        use gridwork_proto::gridwork::intake::v1::Priority as P;
        match self {
            PriorityArg::Low => P::Low,
            PriorityArg::Normal => P::Normal,
            PriorityArg::High => P::High,
            PriorityArg::Urgent => P::Urgent,
        }
    }
}

#[derive(Subcommand)]
enum Cases {
    /// One case with its timeline.
    Get {
        /// Case id (the incident id) or case number (HL-20261123-0042).
        id: String,
    },
    /// Cases in an area's subtree, newest first.
    List {
        /// District, street, community or grid id (default: every case).
        #[arg(long, default_value = "")]
        area: String,
        /// Only this status (repeatable): assigned, acknowledged, resolved, closed.
        #[arg(long = "status")]
        statuses: Vec<String>,
        /// Only this category.
        #[arg(long, default_value = "")]
        category: String,
        /// Opened on or after this day (YYYY-MM-DD, city time).
        #[arg(long)]
        from: Option<String>,
        /// Opened on or before this day (YYYY-MM-DD, city time).
        #[arg(long)]
        until: Option<String>,
        /// At most this many (pages are followed up to it).
        #[arg(long, default_value_t = 100)]
        limit: usize,
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
    /// Record progress as the owner (it stops no clock).
    Progress {
        /// Case id.
        id: String,
        /// Acting as TIER:ID.
        #[arg(long = "as")]
        acting_as: String,
        /// Notes.
        #[arg(long)]
        notes: String,
    },
    /// Hand the case back as its owner: it goes to the dispatch centre, never
    /// down to the tier that missed its deadline.
    HandBack {
        /// Case id.
        id: String,
        /// Acting as TIER:ID.
        #[arg(long = "as")]
        acting_as: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// As a dispatcher: give the case to another owner.
    Assign {
        /// Case id.
        id: String,
        /// The owner you saw (TIER:ID): refused if it has changed since.
        #[arg(long)]
        from: String,
        /// The new owner, TIER:ID.
        #[arg(long)]
        to: String,
    },
    /// As the street: blow the whistle, summoning departments (吹哨).
    Whistle {
        /// Case id.
        id: String,
        /// Acting as street:ID.
        #[arg(long = "as")]
        acting_as: String,
        /// A department code to summon (repeatable).
        #[arg(long = "department", required = true)]
        departments: Vec<String>,
    },
    /// As a summoned department: report for duty (报到).
    ReportForDuty {
        /// Case id.
        id: String,
        /// Department code.
        #[arg(long)]
        department: String,
    },
    /// As a summoned department: record progress on the summons.
    SummonsProgress {
        /// Case id.
        id: String,
        /// Department code.
        #[arg(long)]
        department: String,
        /// Notes.
        #[arg(long)]
        notes: String,
    },
    /// As a summoned department: complete its part.
    CompleteSummons {
        /// Case id.
        id: String,
        /// Department code.
        #[arg(long)]
        department: String,
        /// Notes.
        #[arg(long)]
        notes: String,
    },
    /// As the case's owner: release a summoned department it no longer needs.
    ReleaseSummons {
        /// Case id.
        id: String,
        /// Acting as TIER:ID.
        #[arg(long = "as")]
        acting_as: String,
        /// Department code.
        #[arg(long)]
        department: String,
        /// Why.
        #[arg(long)]
        reason: String,
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
        /// Who rates: "reporter" (decides), "staff:<id>" for them, or
        /// "reporter:<report id>" for a linked "me too" (recorded).
        #[arg(long, default_value = "reporter")]
        by: String,
    },
    /// As a dispatcher: merge a case into another open one about the same problem.
    Merge {
        /// The case to merge (it closes).
        id: String,
        /// The case it is the same problem as.
        #[arg(long)]
        into: String,
        /// Why.
        #[arg(long)]
        reason: String,
    },
    /// Unresolved cases past a case-level deadline, city-wide or in an area.
    Overdue {
        /// District, street, community or grid id (default: city-wide).
        #[arg(long, default_value = "")]
        area: String,
    },
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
pub fn command_id(parts: &[&str]) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u128::from(b);
            h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013B);
        }
    }
    // Version 8 (custom): never read as a UUIDv7 with a timestamp in it.
    uuid::Builder::from_custom_bytes(h.to_be_bytes()).into_uuid().to_string()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = OUTPUT.set(cli.output);
    if let Command::NatsUsers { dir, permissions } = &cli.command {
        let users = gridwork_auth::nats_users::write_users(dir, permissions)?;
        println!("{}", users.config().display());
        return Ok(());
    }
    if let Command::Login { grants, subject, hours, print } = &cli.command {
        return login::run(&cli.var, subject, grants, *hours, *print);
    }
    caller::set(&cli.token, &cli.var)?;
    caller::set_tls(cli.tls_ca.as_deref(), cli.tls_cert.as_deref().zip(cli.tls_key.as_deref()))?;
    let result = match cli.command {
        Command::Incidents(c) => incidents::run(&cli.intake, c).await?,
        Command::Cases(c) => cases::run(&cli.dispatch, c).await?,
        Command::Rules(c) => rules::run_rules(&cli.dispatch, cli.output, c).await?,
        Command::Calendar(c) => rules::run_calendar(&cli.dispatch, cli.output, c).await?,
        other => units::run(&cli.registry, other).await?,
    };
    if let Err(status) = result {
        eprintln!("{}", explain(&status));
        std::process::exit(1);
    }
    Ok(())
}
