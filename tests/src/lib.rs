//! The whole mesh in one process for end-to-end tests: a private nats-server,
//! the grid registry, intake and dispatch on their own SQLite files, one shared
//! manual clock, and typed clients.

use std::sync::Arc;
use std::time::Duration;

use gridwork_geo::polygon_geojson;
use gridwork_proto::gridwork::dispatch::v1::dispatch_service_client::DispatchServiceClient;
use gridwork_proto::gridwork::grid::v1 as grid_pb;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_client::GridRegistryServiceClient;
use gridwork_proto::gridwork::intake::v1::intake_service_client::IntakeServiceClient;
use gridwork_runtime::clock::ManualClock;
use gridwork_runtime::server::ServerHandle;
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use gridwork_testkit::service_config;
use tonic::transport::Channel;

/// South-west corner of the test district.
pub const X0: f64 = 115.03;
/// South-west corner of the test district.
pub const Y0: f64 = 35.76;
/// One cell, ~450 m.
pub const STEP: f64 = 0.005;

/// A running mesh.
pub struct Mesh {
    /// The private nats-server.
    pub nats: NatsServer,
    /// The shared clock.
    pub clock: ManualClock,
    /// Registry client.
    pub registry: GridRegistryServiceClient<Channel>,
    /// Intake client.
    pub intake: IntakeServiceClient<Channel>,
    /// Dispatch client.
    pub dispatch: DispatchServiceClient<Channel>,
    /// The dispatch app (its scheduler is driven by the test).
    pub dispatch_app: gridwork_dispatch::App,
    /// The intake app.
    pub intake_app: gridwork_incident_intake::App,
    /// The dispatch database (to restart dispatch on it).
    pub dispatch_db: TestDb,
    _apps: (gridwork_grid_registry::App, Vec<ServerHandle>),
    _dbs: (TestDb, TestDb),
}

/// A fresh v7 UUID string.
pub fn uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// A square of cells from the district's corner.
pub fn cells(x: f64, y: f64, w: f64, h: f64) -> String {
    let (x, y, w, h) = (X0 + x * STEP, Y0 + y * STEP, w * STEP, h * STEP);
    polygon_geojson(&[(x, y), (x + w, y), (x + w, y + h), (x, y + h)])
}

async fn channel(server: &ServerHandle) -> Channel {
    Channel::from_shared(server.endpoint()).expect("endpoint").connect().await.expect("connect")
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
    gridwork_testkit::init_tracing();
    let nats = NatsServer::start().await.expect("nats");
    let clock = ManualClock::at(now_unix_ms);
    let (registry_db, intake_db, dispatch_db) =
        (TestDb::sqlite().expect("db"), TestDb::sqlite().expect("db"), TestDb::sqlite().expect("db"));
    let registry_app =
        gridwork_grid_registry::App::build(&service_config(&nats.url(), &registry_db.url), Arc::new(clock.clone()))
            .await
            .expect("registry");
    let registry_server = registry_app.spawn(Duration::from_millis(50)).await.expect("serve");
    let mut registry = GridRegistryServiceClient::new(channel(&registry_server).await);
    use grid_pb::UnitKind::*;
    let mut last = 0;
    for (id, parent, kind, boundary) in [
        ("d", "", District, cells(0.0, 0.0, 4.0, 4.0)),
        ("s", "d", Street, cells(0.0, 0.0, 4.0, 4.0)),
        ("c", "s", Community, cells(0.0, 0.0, 4.0, 4.0)),
        ("g", "c", Grid, cells(0.0, 0.0, 2.0, 2.0)),
        ("m1", "g", MicroGrid, cells(0.0, 0.0, 1.0, 1.0)),
        ("m2", "g", MicroGrid, cells(1.0, 0.0, 1.0, 1.0)),
    ] {
        let request = grid_pb::RegisterUnitRequest {
            command_id: uuid(),
            unit_id: id.into(),
            parent_id: parent.into(),
            kind: kind as i32,
            name: id.into(),
            boundary_geojson: boundary,
            special_site: 0,
        };
        last = registry.register_unit(request).await.expect("register").into_inner().position.expect("pos").sequence;
    }
    let intake_app = gridwork_incident_intake::App::build(
        &service_config(&nats.url(), &intake_db.url),
        Arc::new(clock.clone()),
        gridwork_incident_intake::app::Rules::default(),
    )
    .await
    .expect("intake");
    intake_app.intake().grid().wait_for(last, Duration::from_secs(10)).await.expect("intake's grid copy");
    let intake_server = intake_app.spawn(Duration::from_millis(50)).await.expect("serve");
    let dispatch_app = dispatch_app(&nats, &dispatch_db, &clock).await;
    let dispatch_server = dispatch_app.spawn(Duration::from_millis(50)).await.expect("serve");
    Mesh {
        clock,
        registry,
        intake: IntakeServiceClient::new(channel(&intake_server).await),
        dispatch: DispatchServiceClient::new(channel(&dispatch_server).await),
        dispatch_app,
        intake_app,
        dispatch_db,
        _apps: (registry_app, vec![registry_server, intake_server, dispatch_server]),
        _dbs: (registry_db, intake_db),
        nats,
    }
}
