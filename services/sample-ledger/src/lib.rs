//! The sample ledger: the kernel's conformance service.
//!
//! Owns the `SAMPLE` stream (subjects `sample.ledger.<account id>`) and the
//! `sample_accounts` read model. It is deliberately tiny — open, deposit,
//! withdraw, post several entries as one commit, read with `min_position` — so that
//! every path of the event-store kernel is exercised end to end over gRPC, real
//! NATS and real databases before domain services rely on it. It is also the
//! template every service follows:
//!
//! - `domain/`: pure aggregate (`decide` / `evolve`), tested given/when/then.
//! - `events.rs`: event names, versions, protobuf encoding, upcasting.
//! - `app.rs`: load → decide → append; reads; no proto types.
//! - `grpc.rs`: proto ⇄ domain with field-named errors.
//! - `projection.rs`: the read model.
//! - `main.rs`: telemetry → config → [`App::build`] → run.

pub mod app;
pub mod domain;
pub mod events;
pub mod grpc;
pub mod projection;

use std::sync::Arc;
use std::time::Duration;

use gridwork_eventstore::projection::{ProjectionRunner, RunnerConfig};
use gridwork_eventstore::{Repository, RepositoryOptions, StreamSpec, ensure_stream};
use gridwork_proto::gridwork::sample::v1::ledger_service_server::{LedgerServiceServer, SERVICE_NAME};
use gridwork_runtime::clock::Clock;
use gridwork_runtime::{CommonConfig, Runtime, ServerHandle};

use crate::app::Ledgers;
use crate::domain::ledger::Ledger;

/// The service's name.
pub const SERVICE: &str = "sample-ledger";

/// Configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "sample-ledger", about = "Gridwork's kernel conformance service")]
pub struct Config {
    /// Settings every service shares.
    #[command(flatten)]
    pub common: CommonConfig,
}

/// A built service, ready to run.
pub struct App {
    runtime: Runtime,
    ledgers: Ledgers,
}

impl App {
    /// Connect, provision the stream, start the projection.
    pub async fn build(common: &CommonConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let database_url = common.database_url(SERVICE);
        let runtime = Runtime::start(SERVICE, common, Some(&database_url), Duration::from_secs(30)).await?;
        let spec = StreamSpec::events(<Ledger as gridwork_eventstore::Aggregate>::CONTEXT, common.stream_replicas);
        ensure_stream(&runtime.nats, &runtime.js, &spec).await?;
        let repository = Repository::<Ledger>::new(
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
            projection::Accounts,
            RunnerConfig::new(&spec.name),
        )
        .await?;
        let ledgers = Ledgers::new(repository, store, Arc::new(projection), clock);
        Ok(Self { runtime, ledgers })
    }

    /// The application service (tests reach the projection through it).
    pub fn ledgers(&self) -> &Ledgers {
        &self.ledgers
    }

    fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            LedgerServiceServer::new(grpc::LedgerGrpc::new(self.ledgers.clone()))
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
