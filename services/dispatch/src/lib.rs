//! Dispatch — in progress (issue 4): cases up and down the ladder against their
//! deadlines.
//!
//! Owns the `DISPATCH` stream (subjects `dispatch.case.<incident id>` and the
//! rulebook's `dispatch.rulebook.city`); reads `INTAKE` through its process
//! manager ([`projection::Incoming`]), which opens a case for every accepted
//! incident, routed by the rulebook in force, and `GRID` into its own copy of
//! the tree ([`grid::GridCopy`]). A scheduler escalates missed deadlines. See
//! ARCHITECTURE.md for what is built and what is not.
//!
//! - `domain/`: the case aggregate, the working calendar, routing and SLA plans.
//! - `events.rs`: event types and encoding.
//! - `app.rs`: commands, the deadline scheduler, queries.
//! - `grpc.rs`: proto ⇄ domain with field-named errors.
//! - `projection.rs`: the process manager and the cases read model.
//! - `queries.rs`: the read side.

pub mod app;
pub mod domain;
pub mod events;
pub mod grid;
pub mod grpc;
pub mod policy;
pub mod projection;
pub mod queries;

use std::sync::Arc;
use std::time::Duration;

use gridwork_eventstore::projection::{ProjectionRunner, RunnerConfig};
use gridwork_eventstore::{
    Aggregate as _, Repository, RepositoryOptions, StreamSpec, ensure_read_stream, ensure_stream,
};
use gridwork_proto::gridwork::dispatch::v1::dispatch_service_server::{DispatchServiceServer, SERVICE_NAME};
use gridwork_proto::gridwork::dispatch::v1::rulebook_service_server::{
    RulebookServiceServer, SERVICE_NAME as RULEBOOK_SERVICE_NAME,
};
use gridwork_runtime::clock::Clock;
use gridwork_runtime::{CommonConfig, Runtime, ServerHandle};

use crate::app::Dispatch;
use crate::domain::calendar::WorkingCalendar;
use crate::domain::case::Case;
use crate::domain::routing::Terms;
use crate::domain::rulebook::Rulebook;
use crate::policy::Policy;

/// The service's name.
pub const SERVICE: &str = "dispatch";

/// Configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "dispatch", about = "Gridwork's dispatch")]
pub struct Config {
    /// Settings every service shares.
    #[command(flatten)]
    pub common: CommonConfig,
    /// How often the scheduler looks for missed deadlines, in milliseconds (0: never; tests drive it).
    #[arg(long, env = "DEADLINE_TICK_MS", default_value_t = 1000)]
    pub deadline_tick_ms: u64,
    /// Minutes summoned departments have to report for duty (counted like the
    /// case's clocks: office time for ordinary cases, wall time for emergencies).
    #[arg(long, env = "SUMMON_WITHIN_MINUTES", default_value_t = 30)]
    pub summon_within_minutes: i64,
    /// Calendar days a reporter has to rate a resolution; unrated by then, the
    /// case closes "not rated".
    #[arg(long, env = "RATING_WINDOW_DAYS", default_value_t = 7)]
    pub rating_window_days: u32,
    /// Public holidays beyond the shipped China calendar, YYYY-MM-DD, comma-separated.
    #[arg(long, env = "HOLIDAYS", value_delimiter = ',')]
    pub holidays: Vec<String>,
    /// Make-up working days (调休) beyond the shipped calendar, YYYY-MM-DD, comma-separated.
    #[arg(long, env = "MAKE_UP_WORKDAYS", value_delimiter = ',')]
    pub workdays: Vec<String>,
}

/// Dispatch's own settings beyond the common ones.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Scheduler tick (zero: the caller drives it).
    pub tick: Duration,
    /// Summons and rating windows.
    pub terms: Terms,
    /// The working calendar.
    pub calendar: WorkingCalendar,
}

impl Default for Settings {
    fn default() -> Self {
        Self { tick: Duration::ZERO, terms: Terms::default(), calendar: WorkingCalendar::china() }
    }
}

impl Config {
    /// Parse the settings; a malformed date names its flag.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let parse = |flag: &str, v: &str| {
            time::Date::parse(v.trim(), &time::format_description::well_known::Iso8601::DATE)
                .map_err(|_| anyhow::anyhow!("{flag}: {v:?} is not a date YYYY-MM-DD"))
        };
        let mut calendar = WorkingCalendar::china();
        for d in self.holidays.iter().filter(|d| !d.trim().is_empty()) {
            calendar.holidays.insert(parse("HOLIDAYS", d)?);
        }
        for d in self.workdays.iter().filter(|d| !d.trim().is_empty()) {
            calendar.workdays.insert(parse("MAKE_UP_WORKDAYS", d)?);
        }
        Ok(Settings {
            tick: Duration::from_millis(self.deadline_tick_ms),
            terms: Terms {
                summon_within: time::Duration::minutes(self.summon_within_minutes.max(1)),
                rating_window_days: self.rating_window_days.max(1),
            },
            calendar,
        })
    }
}

/// A built service, ready to run.
pub struct App {
    runtime: Runtime,
    dispatch: Dispatch,
    _scheduler: Option<tokio::task::JoinHandle<()>>,
}

impl App {
    /// Connect, provision `DISPATCH` (and `INTAKE` and `GRID`, which it reads),
    /// bring the copy of the tree up to `GRID`'s head, then start the process
    /// manager, the read model and (unless `tick` is zero) the scheduler.
    pub async fn build(common: &CommonConfig, clock: Arc<dyn Clock>, settings: Settings) -> anyhow::Result<Self> {
        let tick = settings.tick;
        let database_url = common.database_url(SERVICE);
        let runtime = Runtime::start(SERVICE, common, Some(&database_url), Duration::from_secs(30)).await?;
        let spec = StreamSpec::events(Case::CONTEXT, common.stream_replicas);
        let intake = StreamSpec::events("intake", common.stream_replicas);
        let grid = StreamSpec::events("grid", common.stream_replicas);
        ensure_stream(&runtime.nats, &runtime.js, &spec).await?;
        ensure_read_stream(&runtime.nats, &runtime.js, &intake).await?;
        ensure_read_stream(&runtime.nats, &runtime.js, &grid).await?;
        let cases = Repository::<Case>::new(
            runtime.js.clone(),
            &spec.name,
            Some(&spec.snapshot_bucket()),
            RepositoryOptions::default(),
        )
        .await?
        .with_command_index(runtime.command_index(&spec.name).await?);
        let store = runtime.store.clone().ok_or_else(|| anyhow::anyhow!("read store missing"))?;
        let book = Repository::<Rulebook>::new(
            runtime.js.clone(),
            &spec.name,
            Some(&spec.snapshot_bucket()),
            RepositoryOptions::default(),
        )
        .await?
        .with_command_index(runtime.command_index(&spec.name).await?);
        let policy = Policy::new(book, Arc::new(settings.calendar), &settings.terms);
        let in_force = policy.in_force().await?;
        let year = time::OffsetDateTime::from_unix_timestamp(clock.now_unix_ms() / 1000)
            .map(|t| t.to_offset(in_force.calendar.offset).year())
            .unwrap_or_default();
        for y in [year, year + 1] {
            if !in_force.calendar.complete_years.contains(&y) {
                tracing::warn!(
                    year = y,
                    "calendar_coverage: the working calendar has not every public holiday and make-up day of this year; \
                     add them (gridctl calendar publish, or HOLIDAYS and MAKE_UP_WORKDAYS) or working-day deadlines will count them as working days"
                );
            }
        }
        let grid_copy =
            ProjectionRunner::start(runtime.js.clone(), store.clone(), grid::GridCopy, RunnerConfig::new(&grid.name))
                .await?;
        // Routing, escalation and the check of named owners read the copy: no
        // case is opened or command taken before it holds the tree as it
        // stands (a first start replays all of GRID).
        grid_copy
            .wait_for_stream_head(Duration::from_secs(600))
            .await
            .map_err(|e| anyhow::anyhow!("dispatch's copy of the organisation tree did not catch up: {e}"))?;
        let incoming = projection::Incoming { cases: cases.clone(), policy: policy.clone() };
        let incoming = ProjectionRunner::start_reactor(
            runtime.js.clone(),
            store.clone(),
            incoming,
            RunnerConfig::new(&intake.name),
        )
        .await?;
        let view = ProjectionRunner::start(
            runtime.js.clone(),
            store.clone(),
            projection::Cases,
            RunnerConfig::new(&spec.name),
        )
        .await?;
        let keys = gridwork_personal::KeyStore::connect(runtime.js.clone(), common.stream_replicas).await?;
        let dispatch = Dispatch::new(
            cases,
            store,
            app::Runners { cases: Arc::new(view), incoming: Arc::new(incoming), grid: Arc::new(grid_copy) },
            clock,
            policy,
            keys,
        );
        let scheduler = (!tick.is_zero()).then(|| dispatch.spawn_scheduler(tick));
        Ok(Self { runtime, dispatch, _scheduler: scheduler })
    }

    /// The application service.
    pub fn dispatch(&self) -> &Dispatch {
        &self.dispatch
    }

    fn routes(&self) -> tonic::service::Routes {
        tonic::service::Routes::new(
            DispatchServiceServer::new(grpc::DispatchGrpc::new(self.dispatch.clone()))
                .max_decoding_message_size(self.runtime.max_request_bytes()),
        )
        .add_service(
            RulebookServiceServer::new(grpc::RulebookGrpc::new(self.dispatch.clone()))
                .max_decoding_message_size(self.runtime.max_request_bytes()),
        )
    }

    /// Serve until SIGTERM / Ctrl-C.
    pub async fn run_until_stopped(self, common: &CommonConfig) -> anyhow::Result<()> {
        let routes = self.routes();
        self.runtime.clone().run_until_stopped(common, routes, &[SERVICE_NAME, RULEBOOK_SERVICE_NAME]).await
    }

    /// Serve in the background on `127.0.0.1:0` (tests).
    pub async fn spawn(&self, drain: Duration) -> anyhow::Result<ServerHandle> {
        self.runtime.clone().spawn_on_loopback(self.routes(), &[SERVICE_NAME, RULEBOOK_SERVICE_NAME], drain).await
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(s) = &self._scheduler {
            s.abort();
        }
    }
}
