//! The grid registry: the organisation tree and where things are.
//!
//! Owns the `GRID` stream (subjects `grid.unit.<id>`, the city root being
//! `grid.unit.root`) and the `grid_units` / `grid_staff` read model. Districts,
//! streets, communities, grids, special grids and micro-grids with GeoJSON
//! boundaries (validated: closed rings, valid geometry, inside the parent, no
//! overlap with siblings), household counts flagged against the standard bands,
//! certified grid heads, workers with a kept history, party branches, and
//! `Locate(lat, lon)` over an R-tree.
//!
//! - `domain/`: the pure unit aggregate and geometry rules.
//! - `events.rs`: event types and encoding.
//! - `app.rs`: commands (checked against current read-model facts), queries, the
//!   locate index.
//! - `grpc.rs`: proto ⇄ domain with field-named errors.
//! - `projection.rs`: the read model.
//! - geometry and the spatial index live in `gridwork-geo`, shared with every
//!   context that places things on the tree.

pub mod app;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod projection;

use std::sync::Arc;
use std::time::Duration;

use gridwork_eventstore::projection::{ProjectionRunner, RunnerConfig};
use gridwork_eventstore::{Aggregate as _, Repository, RepositoryOptions, StreamSpec, ensure_stream};
use gridwork_proto::gridwork::grid::v1::grid_registry_service_server::{GridRegistryServiceServer, SERVICE_NAME};
use gridwork_runtime::clock::Clock;
use gridwork_runtime::{CommonConfig, Runtime, ServerHandle};

use crate::app::Registry;
use crate::domain::unit::Unit;

/// The service's name.
pub const SERVICE: &str = "grid-registry";

/// Configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "grid-registry", about = "Gridwork's grid registry")]
pub struct Config {
    /// Settings every service shares.
    #[command(flatten)]
    pub common: CommonConfig,
}

/// A built service, ready to run.
pub struct App {
    runtime: Runtime,
    registry: Registry,
}

impl App {
    /// Connect, provision the `GRID` stream, start the projection, load the index.
    pub async fn build(common: &CommonConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let database_url = common.database_url(SERVICE);
        let runtime = Runtime::start(SERVICE, common, Some(&database_url), Duration::from_secs(30)).await?;
        let spec = StreamSpec::events(Unit::CONTEXT, common.stream_replicas);
        ensure_stream(&runtime.nats, &runtime.js, &spec).await?;
        let repository = Repository::<Unit>::new(
            runtime.js.clone(),
            &spec.name,
            Some(&spec.snapshot_bucket()),
            RepositoryOptions::default(),
        )
        .await?
        .with_command_index(runtime.command_index(&spec.name).await?);
        let store = runtime.store.clone().ok_or_else(|| anyhow::anyhow!("read store missing"))?;
        let projection = ProjectionRunner::start(
            runtime.js.clone(),
            store.clone(),
            projection::Registry,
            RunnerConfig::new(&spec.name),
        )
        .await?;
        let registry = Registry::new(repository, store, Arc::new(projection), clock)
            .await
            .map_err(|e| anyhow::anyhow!("loading the locate index: {e}"))?;
        Ok(Self { runtime, registry })
    }

    /// The application service.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            GridRegistryServiceServer::new(grpc::RegistryGrpc::new(self.registry.clone()))
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
