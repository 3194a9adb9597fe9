//! The whole mesh in one process for end-to-end tests: a private nats-server,
//! the grid registry, intake and dispatch on their own SQLite files, one shared
//! manual clock, and typed clients.

use std::sync::Arc;
use std::time::Duration;

use gridwork_proto::gridwork::dispatch::v1 as dpb;
use gridwork_proto::gridwork::dispatch::v1::dispatch_service_client::DispatchServiceClient;
use gridwork_proto::gridwork::dispatch::v1::rulebook_service_client::RulebookServiceClient;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_client::GridRegistryServiceClient;
use gridwork_proto::gridwork::intake::v1 as ipb;
use gridwork_proto::gridwork::intake::v1::intake_service_client::IntakeServiceClient;
use gridwork_runtime::clock::ManualClock;
use gridwork_runtime::server::ServerHandle;
use gridwork_testkit::auth::{Authed, authed};
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use gridwork_testkit::service_config;
use tonic::transport::Channel;

pub use gridwork_testkit::tree::{STEP, X0, Y0, cells};

/// A running mesh.
pub struct Mesh {
    /// The private nats-server.
    pub nats: NatsServer,
    /// The shared clock.
    pub clock: ManualClock,
    /// Registry client.
    pub registry: GridRegistryServiceClient<Authed>,
    /// Intake client.
    pub intake: IntakeServiceClient<Authed>,
    /// Dispatch client.
    pub dispatch: DispatchServiceClient<Authed>,
    /// Dispatch's rulebook client.
    pub rulebook: RulebookServiceClient<Authed>,
    /// The dispatch app (its scheduler is driven by the test).
    pub dispatch_app: gridwork_dispatch::App,
    /// The intake app.
    pub intake_app: gridwork_incident_intake::App,
    /// The dispatch database (to restart dispatch on it).
    pub dispatch_db: TestDb,
    _apps: (gridwork_grid_registry::App, Vec<ServerHandle>),
    _dbs: (TestDb, TestDb),
}

impl Mesh {
    /// The registry's gRPC endpoint.
    pub fn registry_endpoint(&self) -> String {
        self._apps.1[0].endpoint()
    }

    /// Intake's gRPC endpoint.
    pub fn intake_endpoint(&self) -> String {
        self._apps.1[1].endpoint()
    }

    /// Dispatch's gRPC endpoint.
    pub fn dispatch_endpoint(&self) -> String {
        self._apps.1[2].endpoint()
    }
}

/// A plain channel to every service of the mesh, and the sample ledger
/// beside it, for tests that call every RPC by its path.
pub struct EveryService {
    registry: Channel,
    intake: Channel,
    dispatch: Channel,
    sample: Channel,
    _ledger: (gridwork_sample_ledger::App, ServerHandle, TestDb),
}

impl EveryService {
    /// Start the sample ledger on `m`'s NATS and connect to every service.
    pub async fn start(m: &Mesh) -> Self {
        let ledger_db = TestDb::sqlite().expect("db");
        let ledger = gridwork_sample_ledger::App::build(
            &service_config(&m.nats.url(), &ledger_db.url),
            Arc::new(m.clock.clone()),
        )
        .await
        .expect("ledger");
        let ledger_server = ledger.spawn(Duration::from_millis(50)).await.expect("serve");
        let connect = |endpoint: String| async move {
            Channel::from_shared(endpoint).expect("endpoint").connect().await.expect("connect")
        };
        Self {
            registry: connect(m.registry_endpoint()).await,
            intake: connect(m.intake_endpoint()).await,
            dispatch: connect(m.dispatch_endpoint()).await,
            sample: connect(ledger_server.endpoint()).await,
            _ledger: (ledger, ledger_server, ledger_db),
        }
    }

    /// The channel serving the RPC at `path` (`/gridwork.grid.v1.…/Method`).
    pub fn channel_for(&self, path: &str) -> &Channel {
        match path.split('/').nth(1).unwrap_or_default() {
            s if s.starts_with("gridwork.grid.") => &self.registry,
            s if s.starts_with("gridwork.intake.") => &self.intake,
            s if s.starts_with("gridwork.dispatch.") => &self.dispatch,
            _ => &self.sample,
        }
    }
}

/// A fire hazard (e-bikes charging indoors) reported through `source` at
/// cell (`x`, 0.5) of the test plane: 0.5 lies in grid g.
pub fn hazard_report(source: ipb::Source, x: f64) -> ipb::ReportIncidentRequest {
    let selected = |v: &str| ipb::attribute_value::Value::Selected(ipb::SelectedValues { values: vec![v.into()] });
    ipb::ReportIncidentRequest {
        command_id: uuid(),
        source: source as i32,
        category_code: "fire-hazard".into(),
        location: Some(ipb::report_incident_request::Location::Point(ipb::GeoPoint {
            lat: Y0 + 0.5 * STEP,
            lon: X0 + x * STEP,
        })),
        description: "e-bikes charging in the stairwell of building 3".into(),
        attributes: vec![ipb::AttributeValue {
            code: "hazard".into(),
            value: Some(selected("e-bike-charging-indoors")),
        }],
        ..Default::default()
    }
}

/// Case `id` once dispatch has opened it (bounded: 15 s).
pub async fn case_when_opened(dispatch: &mut DispatchServiceClient<Authed>, id: &str) -> dpb::Case {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match dispatch.get_case(dpb::GetCaseRequest { case_id: id.into(), ..Default::default() }).await {
            Ok(r) => return r.into_inner().case.expect("case"),
            Err(s) if s.code() == tonic::Code::NotFound && std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("case {id} never opened: {s:?}"),
        }
    }
}

/// The messages in all of Gridwork's streams: a refused call leaves it as it was.
pub async fn stream_messages(js: &async_nats::jetstream::Context) -> u64 {
    let mut total = 0;
    for name in ["GRID", "INTAKE", "DISPATCH", "SAMPLE"] {
        if let Ok(mut stream) = js.get_stream(name).await {
            total += stream.info().await.expect("info").state.messages;
        }
    }
    total
}

/// A fresh v7 UUID string.
pub fn uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn channel(server: &ServerHandle) -> Authed {
    authed(Channel::from_shared(server.endpoint()).expect("endpoint").connect().await.expect("connect"))
}

/// Build a dispatch app on `nats` and `db` whose scheduler the test drives.
pub async fn dispatch_app(nats: &NatsServer, db: &TestDb, clock: &ManualClock) -> gridwork_dispatch::App {
    gridwork_dispatch::App::build(
        &service_config(&nats.url(), &db.url),
        Arc::new(clock.clone()),
        gridwork_dispatch::Settings::default(),
    )
    .await
    .expect("dispatch builds")
}

/// Start everything at `now_unix_ms` and register district d > street s >
/// community c > grid g > micro-grids m1, m2.
pub async fn mesh(now_unix_ms: i64) -> Mesh {
    mesh_on(now_unix_ms, TestDb::sqlite().expect("db")).await
}

/// [`mesh`] with dispatch's read model on `dispatch_db` (e.g. PostgreSQL).
pub async fn mesh_on(now_unix_ms: i64, dispatch_db: TestDb) -> Mesh {
    let nats = NatsServer::start().await.expect("nats");
    mesh_with(now_unix_ms, nats, dispatch_db, |_, nats_url, db_url| service_config(nats_url, db_url)).await
}

/// [`mesh`] on `nats`, each service configured by `config(service, nats
/// URL, database URL)` (e.g. with its own NATS user).
pub async fn mesh_with(
    now_unix_ms: i64,
    nats: NatsServer,
    dispatch_db: TestDb,
    config: impl Fn(&str, &str, &str) -> gridwork_runtime::CommonConfig,
) -> Mesh {
    gridwork_testkit::init_tracing();
    let clock = ManualClock::at(now_unix_ms);
    let (registry_db, intake_db) = (TestDb::sqlite().expect("db"), TestDb::sqlite().expect("db"));
    let registry_app = gridwork_grid_registry::App::build(
        &config(gridwork_grid_registry::SERVICE, &nats.url(), &registry_db.url),
        Arc::new(clock.clone()),
    )
    .await
    .expect("registry");
    let registry_server = registry_app.spawn(Duration::from_millis(50)).await.expect("serve");
    let mut registry = GridRegistryServiceClient::new(channel(&registry_server).await);
    let last = gridwork_testkit::tree::register(&mut registry).await.expect("test tree");
    let intake_app = gridwork_incident_intake::App::build(
        &config(gridwork_incident_intake::SERVICE, &nats.url(), &intake_db.url),
        Arc::new(clock.clone()),
        gridwork_incident_intake::app::Rules::default(),
    )
    .await
    .expect("intake");
    intake_app.intake().grid().wait_for(last, Duration::from_secs(10)).await.expect("intake's grid copy");
    let intake_server = intake_app.spawn(Duration::from_millis(50)).await.expect("serve");
    let dispatch_app = gridwork_dispatch::App::build(
        &config(gridwork_dispatch::SERVICE, &nats.url(), &dispatch_db.url),
        Arc::new(clock.clone()),
        gridwork_dispatch::Settings::default(),
    )
    .await
    .expect("dispatch builds");
    dispatch_app.dispatch().grid().wait_for(last, Duration::from_secs(10)).await.expect("dispatch's grid copy");
    let dispatch_server = dispatch_app.spawn(Duration::from_millis(50)).await.expect("serve");
    Mesh {
        clock,
        registry,
        intake: IntakeServiceClient::new(channel(&intake_server).await),
        dispatch: DispatchServiceClient::new(channel(&dispatch_server).await),
        rulebook: RulebookServiceClient::new(channel(&dispatch_server).await),
        dispatch_app,
        intake_app,
        dispatch_db,
        _apps: (registry_app, vec![registry_server, intake_server, dispatch_server]),
        _dbs: (registry_db, intake_db),
        nats,
    }
}
