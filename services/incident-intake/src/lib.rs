//! Incident intake: reports validated against the versioned service
//! catalogue, placed on the tree, "me too" links, triage, and each accepted
//! incident's case followed to its end.
//!
//! Owns the `INTAKE` stream (subjects `intake.incident.<id>`, the duplicate
//! zones at `intake.zone.<grid>_<category>`, the catalogue at
//! `intake.catalogue.city`) and reads `GRID` into its own copy of the tree's
//! boundaries (never calling the grid registry). Reporters' contact data is kept
//! out of every event, in an erasable table. Dispatch takes over from
//! `IncidentAccepted`; intake reads `DISPATCH` to follow the case's outcome.
//!
//! - `domain/`: the catalogue and incident aggregates (pure).
//! - `events.rs`: event types and encoding.
//! - `app/`: the application service, one file per role — `report.rs` (taking a
//!   report), `placement.rs` (tree, zone, candidates, recurrence), `triage.rs`,
//!   `catalogue.rs`, `reporter_contacts.rs`, `queries.rs`.
//! - `grpc.rs`: proto ⇄ domain with field-named errors.
//! - `projection.rs`: the local tree copy and the incidents read model.
//! - `follow.rs`: the reactor following dispatch's cases.

pub mod app;
pub mod contacts;
pub mod domain;
pub mod events;
pub mod follow;
pub mod grpc;
pub mod projection;

use std::sync::Arc;
use std::time::Duration;

use gridwork_eventstore::projection::{ProjectionRunner, RunnerConfig};
use gridwork_eventstore::{
    Aggregate as _, Repository, RepositoryOptions, StreamSpec, ensure_read_stream, ensure_stream,
};
use gridwork_proto::gridwork::intake::v1::intake_service_server::{IntakeServiceServer, SERVICE_NAME};
use gridwork_runtime::clock::Clock;
use gridwork_runtime::{CommonConfig, Runtime, ServerHandle};

use crate::app::{Intake, Rules};
use crate::domain::catalogue::{Catalogue, CatalogueCommand, default_categories};
use crate::domain::incident::Incident;
use crate::domain::zone::Zone;

/// The service's name.
pub const SERVICE: &str = "incident-intake";

/// Configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "incident-intake", about = "Gridwork's incident intake")]
pub struct Config {
    /// Settings every service shares.
    #[command(flatten)]
    pub common: CommonConfig,
    /// A report of the same category within this many metres of an open incident is a "me too".
    #[arg(long, env = "DUPLICATE_RADIUS_M", default_value_t = 100.0)]
    pub duplicate_radius_m: f64,
    /// …if reported within this many minutes of the last report placed on it.
    #[arg(long, env = "DUPLICATE_WINDOW_MINUTES", default_value_t = 1440)]
    pub duplicate_window_minutes: i64,
    /// A report near an incident whose case closed less than this many days
    /// ago is a new incident, noted as its recurrence.
    #[arg(long, env = "RECURRENCE_WINDOW_DAYS", default_value_t = 30)]
    pub recurrence_window_days: i64,
    /// Raise the original's priority once this many reports are linked to it.
    #[arg(long, env = "ESCALATE_AFTER_REPORTS", default_value_t = 3)]
    pub escalate_after: usize,
    /// How long a triage claim lasts, in minutes.
    #[arg(long, env = "CLAIM_TTL_MINUTES", default_value_t = 10)]
    pub claim_ttl_minutes: i64,
    /// The contact vault (the keys of reporters' sealed contacts): its own
    /// database, never a read model. Default: beside a SQLite read store,
    /// `…-contacts.db`; with PostgreSQL, the read store's database (give it
    /// a database of its own in production).
    #[arg(long, env = "CONTACTS_DATABASE_URL")]
    pub contacts_database_url: Option<String>,
}

/// The contact vault's database by default: a SQLite file of its own beside
/// the read store's, or (PostgreSQL) the read store's database.
pub fn default_vault_url(database_url: &str) -> String {
    match database_url.rsplit_once(".db") {
        Some((file, rest)) if database_url.starts_with("sqlite:") => format!("{file}-contacts.db{rest}"),
        _ => database_url.to_string(),
    }
}

impl Config {
    /// The intake rules these settings describe.
    pub fn rules(&self) -> Rules {
        Rules {
            duplicate_radius_m: self.duplicate_radius_m,
            duplicate_window_ms: self.duplicate_window_minutes * 60_000,
            recurrence_window_ms: self.recurrence_window_days.max(0) * 24 * 3_600_000,
            escalate_after: self.escalate_after.max(1),
            claim_ttl_ms: self.claim_ttl_minutes.max(1) * 60_000,
        }
    }
}

/// A built service, ready to run.
pub struct App {
    runtime: Runtime,
    intake: Intake,
    linker: gridwork_eventstore::projection::RunnerHandle,
    follower: gridwork_eventstore::projection::RunnerHandle,
    eraser: gridwork_eventstore::projection::RunnerHandle,
}

impl App {
    /// Connect, provision `INTAKE` (and `GRID`, which it reads), start both
    /// projections, and publish the default catalogue if none exists.
    pub async fn build(common: &CommonConfig, clock: Arc<dyn Clock>, rules: Rules) -> anyhow::Result<Self> {
        Self::build_with_vault(common, clock, rules, None).await
    }

    /// [`App::build`], with the contact vault at `vault_url` (default:
    /// [`default_vault_url`] of the read store's).
    pub async fn build_with_vault(
        common: &CommonConfig,
        clock: Arc<dyn Clock>,
        rules: Rules,
        vault_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let database_url = common.database_url(SERVICE);
        let runtime = Runtime::start(SERVICE, common, Some(&database_url), Duration::from_secs(30)).await?;
        let spec = StreamSpec::events(Incident::CONTEXT, common.stream_replicas);
        let grid = StreamSpec::events("grid", common.stream_replicas);
        let dispatch = StreamSpec::events("dispatch", common.stream_replicas);
        ensure_stream(&runtime.nats, &runtime.js, &spec).await?;
        ensure_read_stream(&runtime.nats, &runtime.js, &grid).await?;
        ensure_read_stream(&runtime.nats, &runtime.js, &dispatch).await?;
        let options = RepositoryOptions::default;
        let bucket = spec.snapshot_bucket();
        let index = runtime.command_index(&spec.name).await?;
        let incidents = Repository::<Incident>::new(runtime.js.clone(), &spec.name, Some(&bucket), options())
            .await?
            .with_command_index(index.clone());
        let zones = Repository::<Zone>::new(runtime.js.clone(), &spec.name, Some(&bucket), options())
            .await?
            .with_command_index(index.clone());
        let catalogue = Repository::<Catalogue>::new(runtime.js.clone(), &spec.name, Some(&bucket), options())
            .await?
            .with_command_index(index);
        let store = runtime.store.clone().ok_or_else(|| anyhow::anyhow!("read store missing"))?;
        let vault_url = vault_url.unwrap_or_else(|| {
            let url = default_vault_url(&database_url);
            if url == database_url {
                // A rebuild drops only the read model's own tables, so the keys
                // survive it; but whoever may read the read model's database
                // may read the keys too. Production gives the vault its own.
                tracing::warn!(
                    "CONTACTS_DATABASE_URL is not set: the contact vault shares the read model's database; \
                     give it a database of its own (and its own credentials) in production"
                );
            }
            url
        });
        let shared = vault_url == database_url;
        let vault_store = if shared {
            store.clone()
        } else {
            gridwork_eventstore::projection::ReadStore::connect(&vault_url).await?
        };
        let keys = gridwork_personal::KeyStore::connect(runtime.js.clone(), common.stream_replicas).await?;
        let vault = contacts::Vault::open(vault_store, store.clone(), shared, keys)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let eraser = ProjectionRunner::start_reactor(
            runtime.js.clone(),
            store.clone(),
            contacts::Eraser { vault: vault.clone() },
            RunnerConfig::new(&spec.name),
        )
        .await?;
        let grid_copy = ProjectionRunner::start(
            runtime.js.clone(),
            store.clone(),
            projection::GridCopy,
            RunnerConfig::new(&grid.name),
        )
        .await?;
        let linker = projection::Linker { incidents: incidents.clone(), escalate_after: rules.escalate_after };
        let linker =
            ProjectionRunner::start_reactor(runtime.js.clone(), store.clone(), linker, RunnerConfig::new(&spec.name))
                .await?;
        let follower = follow::CaseFollower { incidents: incidents.clone() };
        let follower = ProjectionRunner::start_reactor(
            runtime.js.clone(),
            store.clone(),
            follower,
            RunnerConfig::new(&dispatch.name),
        )
        .await?;
        let incidents_view = ProjectionRunner::start(
            runtime.js.clone(),
            store.clone(),
            projection::Incidents,
            RunnerConfig::new(&spec.name),
        )
        .await?;
        if catalogue.load(app::CITY).await?.state.latest().is_none() {
            let meta = gridwork_eventstore::CommandMeta {
                command_id: "default-catalogue-v1".into(),
                principal: "system".into(),
                decided_at_unix_ms: clock.now_unix_ms(),
                request_digest: 0,
            };
            catalogue
                .execute(app::CITY, &CatalogueCommand::Publish { categories: default_categories() }, &meta)
                .await
                .map_err(|e| anyhow::anyhow!("publishing the default catalogue: {e}"))?;
        }
        let intake = Intake::new(
            incidents,
            zones,
            catalogue,
            store,
            Arc::new(grid_copy),
            Arc::new(incidents_view),
            clock,
            rules,
            vault,
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Self { runtime, intake, linker, follower, eraser })
    }

    /// The process manager linking duplicates to their originals.
    pub fn linker(&self) -> &gridwork_eventstore::projection::RunnerHandle {
        &self.linker
    }

    /// The process manager following dispatch's cases.
    pub fn case_follower(&self) -> &gridwork_eventstore::projection::RunnerHandle {
        &self.follower
    }

    /// The process manager destroying erased contacts' keys.
    pub fn contact_eraser(&self) -> &gridwork_eventstore::projection::RunnerHandle {
        &self.eraser
    }

    /// The application service.
    pub fn intake(&self) -> &Intake {
        &self.intake
    }

    fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            IntakeServiceServer::new(grpc::IntakeGrpc::new(self.intake.clone()))
                .max_decoding_message_size(self.runtime.max_request_bytes()),
        )
    }

    /// Serve until SIGTERM / Ctrl-C.
    pub async fn run_until_stopped(self, common: &CommonConfig) -> anyhow::Result<()> {
        let routes = self.routes();
        self.runtime.run_until_stopped(common, routes, &[SERVICE_NAME]).await
    }

    /// Serve in the background on `127.0.0.1:0` (tests).
    pub async fn spawn(&self, drain: Duration) -> anyhow::Result<ServerHandle> {
        self.runtime.clone().spawn_on_loopback(self.routes(), &[SERVICE_NAME], drain).await
    }
}
