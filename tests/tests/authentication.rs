//! Issue 10, authentication: against real services on a real nats-server, every
//! RPC needs a verified bearer token; health and reflection stay open; the
//! principal in the events is the token's subject, never client metadata; keys
//! rotate without a restart; production refuses the development key.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gridwork_auth::{AuthConfig, Signer, TokenSpec, write_jwks};
use gridwork_proto::gridwork::grid::v1 as gpb;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_client::GridRegistryServiceClient;
use gridwork_proto::gridwork::intake::v1 as pb;
use gridwork_proto::gridwork::intake::v1::intake_service_client::IntakeServiceClient;
use gridwork_runtime::clock::ManualClock;
use gridwork_testkit::auth::{Authed, authed_as, bearer};
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use tonic::Code;
use tonic::transport::Channel;

const MONDAY_TEN: i64 = 1_795_312_800_000;

struct Keys {
    dir: tempfile::TempDir,
    first: Signer,
}

impl Keys {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let first = Signer::generate_ed25519("city-idp-1").expect("key");
        write_jwks(&dir.path().join("jwks.json"), &[first.jwk().cloned().expect("jwk")]).expect("jwks");
        Self { dir, first }
    }
    fn file(&self) -> std::path::PathBuf {
        self.dir.path().join("jwks.json")
    }
    fn config(&self) -> AuthConfig {
        AuthConfig::with_jwks(self.file())
    }
}

fn token(signer: &Signer, subject: &str, grants: &[&str]) -> String {
    signer.mint(&TokenSpec::new(subject, grants).expect("spec")).expect("mint")
}

async fn channel(endpoint: String) -> Channel {
    Channel::from_shared(endpoint).expect("endpoint").connect().await.expect("connect")
}

fn with_token<T>(msg: T, token: &str) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("authorization", bearer(token));
    r
}

fn register(id: &str) -> gpb::RegisterUnitRequest {
    gpb::RegisterUnitRequest {
        command_id: uuid::Uuid::now_v7().to_string(),
        unit_id: id.into(),
        parent_id: String::new(),
        kind: gpb::UnitKind::District as i32,
        name: id.into(),
        boundary_geojson: gridwork_e2e::cells(40.0, 0.0, 1.0, 1.0),
        ..Default::default()
    }
}

#[tokio::test]
async fn every_call_needs_a_verified_token_and_the_principal_is_the_tokens_subject() {
    gridwork_testkit::init_tracing();
    let keys = Keys::new();
    let nats = NatsServer::start().await.expect("nats");
    let clock = ManualClock::at(MONDAY_TEN);
    let (registry_db, intake_db) = (TestDb::sqlite().expect("db"), TestDb::sqlite().expect("db"));
    let config = |db: &TestDb| gridwork_runtime::CommonConfig {
        auth: keys.config(),
        ..gridwork_testkit::service_config(&nats.url(), &db.url)
    };
    let registry_app =
        gridwork_grid_registry::App::build(&config(&registry_db), Arc::new(clock.clone())).await.expect("registry");
    let registry_server = registry_app.spawn(Duration::from_millis(50)).await.expect("serve");
    let raw = channel(registry_server.endpoint()).await;
    let mut anonymous = GridRegistryServiceClient::new(raw.clone());

    // No token, a malformed one, one for someone else's audience, an expired
    // one, and one signed by a key nobody published: UNAUTHENTICATED, and
    // nothing written.
    let denied = anonymous.register_unit(register("nobody")).await.expect_err("no token");
    assert_eq!(denied.code(), Code::Unauthenticated, "{denied:?}");
    assert!(denied.message().contains("bearer token"), "{denied:?}");
    let other_audience = keys
        .first
        .mint(&TokenSpec { audience: "another-app".into(), ..TokenSpec::new("x", &["registry-admin"]).expect("s") })
        .expect("mint");
    let expired = keys
        .first
        .mint_raw(&serde_json_value(&[
            ("sub", "x".into()),
            ("exp", (now() - 3600).into()),
            ("nbf", (now() - 7200).into()),
        ]))
        .expect("mint");
    let stranger = Signer::generate_ed25519("city-idp-1").expect("impostor with a known kid");
    for (bad, says) in [
        ("garbage".to_string(), "not a JWT"),
        (other_audience, "not meant for"),
        (expired, "expired"),
        (token(&stranger, "x", &["registry-admin"]), "signature"),
    ] {
        let denied = anonymous.register_unit(with_token(register("nobody"), &bad)).await.expect_err("refused");
        assert_eq!(denied.code(), Code::Unauthenticated, "{denied:?}");
        assert!(denied.message().contains(says), "{says:?}: {denied:?}");
    }
    // Reads too: every RPC.
    let denied = anonymous
        .get_unit(gpb::GetUnitRequest { unit_id: "nobody".into(), ..Default::default() })
        .await
        .expect_err("read");
    assert_eq!(denied.code(), Code::Unauthenticated);

    // Health and reflection stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(raw.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .expect("health without a token")
            .into_inner()
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::{ServerReflectionRequest, server_reflection_request::MessageRequest};
    let mut reflection = ServerReflectionClient::new(raw.clone());
    let ask = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([ask]))
        .await
        .expect("reflection without a token")
        .into_inner();
    let listed = answers.message().await.expect("answer").expect("one");
    assert!(format!("{listed:?}").contains("gridwork.grid.v1.GridRegistryService"), "{listed:?}");

    // A valid token works; the tree is registered by a registry admin.
    let mut admin: GridRegistryServiceClient<Authed> = GridRegistryServiceClient::new(authed_as(raw.clone(), "x", &[]));
    // (the test kit's process-wide key is not this mesh's: refused)
    assert_eq!(
        admin.get_unit(gpb::GetUnitRequest::default()).await.expect_err("other key").code(),
        Code::Unauthenticated
    );
    admin = GridRegistryServiceClient::new(tonic::service::interceptor::InterceptedService::new(
        raw.clone(),
        gridwork_testkit::auth::Bearer::new(&token(&keys.first, "registry-admin:li", &["registry-admin"])),
    ));
    let last = gridwork_testkit::tree::register(&mut admin).await.expect("tree with a valid token");

    // The principal recorded is the token's subject, whatever the metadata says.
    let intake_app = gridwork_incident_intake::App::build(
        &config(&intake_db),
        Arc::new(clock.clone()),
        gridwork_incident_intake::app::Rules::default(),
    )
    .await
    .expect("intake");
    intake_app.intake().grid().wait_for(last, Duration::from_secs(10)).await.expect("grid copy");
    let intake_server = intake_app.spawn(Duration::from_millis(50)).await.expect("serve");
    let mut intake = IntakeServiceClient::new(channel(intake_server.endpoint()).await);
    let rider = token(&keys.first, "rider:wang", &["rider"]);
    let mut report = with_token(fire_hazard(), &rider);
    report.metadata_mut().insert("x-gridwork-principal", "user:someone-else".parse().expect("ascii"));
    let reported = intake.report_incident(report).await.expect("report").into_inner();
    let shown = intake
        .get_incident(with_token(
            pb::GetIncidentRequest {
                incident_id: reported.incident_id.clone(),
                min_position: reported.position.map_or(0, |p| p.sequence),
            },
            &rider,
        ))
        .await
        .expect("get")
        .into_inner()
        .incident
        .expect("incident");
    assert!(!shown.history.is_empty());
    assert!(shown.history.iter().all(|h| h.principal == "rider:wang"), "{:?}", shown.history);

    // Rotation without a restart: a second key's token is refused until the
    // key is published, then works at once; the first key, retired, stops.
    let second = Signer::generate_ed25519("city-idp-2").expect("key");
    let new_token = token(&second, "rider:wang", &["rider"]);
    let get =
        |t: &str| with_token(pb::GetIncidentRequest { incident_id: reported.incident_id.clone(), min_position: 0 }, t);
    let denied = intake.get_incident(get(&new_token)).await.expect_err("not published");
    assert!(denied.message().contains("unknown key"), "{denied:?}");
    write_jwks(&keys.file(), &[keys.first.jwk().cloned().expect("jwk"), second.jwk().cloned().expect("jwk")])
        .expect("both");
    intake.get_incident(get(&new_token)).await.expect("the new key works without a restart");
    intake.get_incident(get(&rider)).await.expect("the old one still works");
    write_jwks(&keys.file(), &[second.jwk().cloned().expect("jwk")]).expect("retire the first");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match intake.get_incident(get(&rider)).await {
            Err(s) if s.code() == Code::Unauthenticated => break,
            other => {
                assert!(Instant::now() < deadline, "a retired key still accepted: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    intake.get_incident(get(&new_token)).await.expect("the new key works");
}

#[tokio::test]
async fn a_production_service_refuses_the_development_key_and_issuer() {
    gridwork_testkit::init_tracing();
    let dir = tempfile::tempdir().expect("dir");
    gridwork_auth::dev_signer(dir.path()).expect("the key make run makes");
    let nats = NatsServer::start().await.expect("nats");
    let db = TestDb::sqlite().expect("db");
    let dev = AuthConfig::with_jwks(dir.path().join("dev-jwks.json"));
    let production = AuthConfig { development: false, jwt_issuer: "https://idp.city.example".into(), ..dev.clone() };
    for auth in [production, AuthConfig { development: false, ..dev }] {
        let config = gridwork_runtime::CommonConfig { auth, ..gridwork_testkit::service_config(&nats.url(), &db.url) };
        let err = gridwork_grid_registry::App::build(&config, Arc::new(ManualClock::at(MONDAY_TEN)))
            .await
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains("production"), "{err:#}");
    }
    let missing = gridwork_runtime::CommonConfig {
        auth: AuthConfig::with_jwks(Path::new("/nonexistent/jwks.json")),
        ..gridwork_testkit::service_config(&nats.url(), &db.url)
    };
    let err = gridwork_grid_registry::App::build(&missing, Arc::new(ManualClock::at(MONDAY_TEN)))
        .await
        .err()
        .expect("no keys, no service");
    assert!(format!("{err:#}").contains("JWKS_FILE"), "{err:#}");
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64
}

fn serde_json_value(over: &[(&str, serde_json::Value)]) -> serde_json::Value {
    let mut claims = serde_json::json!({
        "sub": "user:w7", "iss": "gridwork-dev", "aud": "gridwork", "iat": now(), "nbf": now(), "exp": now() + 600
    });
    for (k, v) in over {
        claims[*k] = v.clone();
    }
    claims
}

fn fire_hazard() -> pb::ReportIncidentRequest {
    let selected = |v: &str| pb::attribute_value::Value::Selected(pb::SelectedValues { values: vec![v.into()] });
    pb::ReportIncidentRequest {
        command_id: uuid::Uuid::now_v7().to_string(),
        source: pb::Source::RiderInformant as i32,
        category_code: "fire-hazard".into(),
        location: Some(pb::report_incident_request::Location::Point(pb::GeoPoint {
            lat: gridwork_e2e::Y0 + 0.5 * gridwork_e2e::STEP,
            lon: gridwork_e2e::X0 + 0.5 * gridwork_e2e::STEP,
        })),
        description: "e-bikes charging in the stairwell".into(),
        attributes: vec![pb::AttributeValue { code: "hazard".into(), value: Some(selected("wiring")) }],
        ..Default::default()
    }
}
