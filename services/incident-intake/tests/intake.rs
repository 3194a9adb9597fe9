//! Intake over gRPC beside a real grid registry, on one real nats-server.

use std::sync::Arc;
use std::time::Duration;

use gridwork_incident_intake::app::Rules;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_client::GridRegistryServiceClient;
use gridwork_proto::gridwork::intake::v1 as pb;
use gridwork_proto::gridwork::intake::v1::intake_service_client::IntakeServiceClient;
use gridwork_runtime::clock::ManualClock;
use gridwork_runtime::server::ServerHandle;
use gridwork_testkit::auth::{Authed, authed};
use gridwork_testkit::db::TestDb;
use gridwork_testkit::nats::NatsServer;
use gridwork_testkit::service_config;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use gridwork_testkit::tree::{STEP, X0, Y0};
const T0: i64 = 1_772_323_200_000;

struct Mesh {
    nats: NatsServer,
    dbs: (TestDb, TestDb),
    _registry: (gridwork_grid_registry::App, ServerHandle),
    intake_app: gridwork_incident_intake::App,
    _intake_server: ServerHandle,
    intake: IntakeServiceClient<Authed>,
}

fn uuid() -> String {
    uuid::Uuid::now_v7().to_string()
}

async fn channel(server: &ServerHandle) -> Authed {
    authed(Channel::from_shared(server.endpoint()).expect("endpoint").connect().await.expect("connect"))
}

async fn mesh() -> Mesh {
    gridwork_testkit::init_tracing();
    let nats = NatsServer::start().await.expect("nats");
    let (registry_db, intake_db) = (TestDb::sqlite().expect("db"), TestDb::sqlite().expect("db"));
    let clock = ManualClock::at(T0);
    let registry_app =
        gridwork_grid_registry::App::build(&service_config(&nats.url(), &registry_db.url), Arc::new(clock.clone()))
            .await
            .expect("registry");
    let registry_server = registry_app.spawn(Duration::from_millis(50)).await.expect("serve");
    let mut registry = GridRegistryServiceClient::new(channel(&registry_server).await);
    let last = gridwork_testkit::tree::register(&mut registry).await.expect("test tree");
    let rules = Rules { escalate_after: 2, ..Rules::default() };
    let intake_app =
        gridwork_incident_intake::App::build(&service_config(&nats.url(), &intake_db.url), Arc::new(clock), rules)
            .await
            .expect("intake");
    // Intake places reports from its own copy of GRID: let it catch up.
    intake_app.intake().grid().wait_for(last, Duration::from_secs(10)).await.expect("grid copy");
    let intake_server = intake_app.spawn(Duration::from_millis(50)).await.expect("serve");
    let intake = IntakeServiceClient::new(channel(&intake_server).await);
    Mesh {
        nats,
        dbs: (registry_db, intake_db),
        _registry: (registry_app, registry_server),
        intake_app,
        _intake_server: intake_server,
        intake,
    }
}

/// A second intake replica on the mesh's stream, with its own read store,
/// serving once its copy of GRID has caught up.
async fn replica(m: &Mesh) -> (gridwork_incident_intake::App, ServerHandle, TestDb) {
    let db = TestDb::sqlite().expect("db");
    let replica = gridwork_incident_intake::App::build(
        &service_config(&m.nats.url(), &db.url),
        Arc::new(ManualClock::at(T0)),
        Rules { escalate_after: 2, ..Rules::default() },
    )
    .await
    .expect("replica");
    let grid_head = m.intake_app.intake().grid().position();
    replica.intake().grid().wait_for(grid_head, Duration::from_secs(10)).await.expect("grid copy");
    let server = replica.spawn(Duration::from_millis(50)).await.expect("serve");
    (replica, server, db)
}

fn hazard(x: f64, y: f64) -> pb::ReportIncidentRequest {
    pb::ReportIncidentRequest {
        command_id: uuid(),
        source: pb::Source::RiderInformant as i32,
        category_code: "fire-hazard".into(),
        catalogue_version: 0,
        location: Some(pb::report_incident_request::Location::Point(pb::GeoPoint {
            lat: Y0 + y * STEP,
            lon: X0 + x * STEP,
        })),
        description: "e-bikes charging in the stairwell".into(),
        attributes: vec![pb::AttributeValue {
            code: "hazard".into(),
            value: Some(pb::attribute_value::Value::Selected(pb::SelectedValues {
                values: vec!["e-bike-charging-indoors".into()],
            })),
        }],
        contact: Some(pb::Contact { name: "Wang".into(), phone: "+86 138 0000 0000".into() }),
        urgency: 0,
        reporter_id: "rider-7".into(),
        ..Default::default()
    }
}

fn as_user<T>(user: &str, role: Option<&str>, msg: T) -> tonic::Request<T> {
    // No role named: the tests' default caller's.
    let grants: Vec<&str> = role.map_or(gridwork_testkit::auth::DEFAULT_GRANTS.to_vec(), |r| r.split(',').collect());
    gridwork_testkit::auth::as_caller(tonic::Request::new(msg), user, &grants)
}

fn fields(s: &tonic::Status) -> Vec<String> {
    s.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect())
        .unwrap_or_default()
}

async fn incident(c: &mut IntakeServiceClient<Authed>, id: &str, min_position: u64) -> pb::Incident {
    c.get_incident(pb::GetIncidentRequest { incident_id: id.into(), min_position })
        .await
        .expect("get")
        .into_inner()
        .incident
        .expect("incident")
}

#[tokio::test]
async fn a_rider_report_is_validated_placed_in_its_micro_grid_and_kept_free_of_personal_data() {
    let mut m = mesh().await;
    let c = &mut m.intake;

    let mut bad = hazard(0.5, 0.5);
    bad.attributes.clear();
    bad.category_code = "fire-hazard".into();
    bad.description = " ".into();
    bad.location = None;
    bad.source = 0;
    let e = c.report_incident(bad).await.expect_err("invalid");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(fields(&e), ["source", "location", "description"]);
    let mut missing_attribute = hazard(0.5, 0.5);
    missing_attribute.attributes.clear();
    assert_eq!(fields(&c.report_incident(missing_attribute).await.expect_err("attr")), ["attributes.hazard"]);
    let mut unknown = hazard(0.5, 0.5);
    unknown.category_code = "ufo".into();
    assert_eq!(fields(&c.report_incident(unknown).await.expect_err("category")), ["category_code"]);
    let e = c.report_incident(hazard(9.0, 9.0)).await.expect_err("outside");
    assert_eq!(e.code(), Code::FailedPrecondition);

    let r = c.report_incident(hazard(0.5, 0.5)).await.expect("report").into_inner();
    assert!(r.duplicate_of.is_empty() && !r.accepted);
    let i = incident(c, &r.incident_id, r.position.expect("pos").sequence).await;
    let path = i.grid_path.clone().expect("path");
    assert_eq!((path.district_id.as_str(), path.grid_id.as_str(), path.micro_grid_id.as_str()), ("d", "g", "m1"));
    assert_eq!(i.status, pb::IncidentStatus::Reported as i32);
    assert_eq!(i.open311_status, "open");
    assert_eq!(i.priority, pb::Priority::High as i32, "the category's default");
    assert!(i.has_contact);
    assert_eq!(i.history.len(), 1);

    // The stored event holds no contact data.
    let js = async_nats::jetstream::new(async_nats::connect(m.nats.url()).await.expect("connect"));
    let stored = js
        .get_stream("INTAKE")
        .await
        .expect("stream")
        .direct_get_last_for_subject(format!("intake.incident.{}", r.incident_id))
        .await
        .expect("commit");
    let text = String::from_utf8_lossy(&stored.payload);
    assert!(!text.contains("138 0000") && !text.contains("Wang"), "personal data leaked into the event");
}

/// Issue 9, item 6: a contact is sealed into the report's own commit under a
/// key only the vault holds; staff with the callback role read it, each read
/// recorded before the contact is given; erasure is a command with an id, a
/// principal and a record, destroys the key (so the sealed copy in the log
/// is unreadable), and is finished from the log if the process stopped
/// between the record and the key.
#[tokio::test]
async fn contacts_are_read_by_role_with_each_read_recorded_and_erased_for_good() {
    let mut m = mesh().await;
    let c = &mut m.intake;
    let r = c.report_incident(hazard(0.5, 0.5)).await.expect("report").into_inner();
    let read = |id: &str, purpose: &str| pb::ReadReporterContactRequest {
        command_id: uuid(),
        incident_id: id.into(),
        purpose: purpose.into(),
    };
    let denied = c.read_reporter_contact(as_user("w7", None, read(&r.incident_id, "回访"))).await.expect_err("no role");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("callback"), "{denied:?}");
    let bad =
        c.read_reporter_contact(as_user("w7", Some("callback"), read(&r.incident_id, ""))).await.expect_err("why");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("purpose"), "{bad:?}");
    let got = c
        .read_reporter_contact(as_user("w7", Some("triage,callback"), read(&r.incident_id, "回访: did the fix hold?")))
        .await
        .expect("read")
        .into_inner();
    assert_eq!(got.contact, Some(pb::Contact { name: "Wang".into(), phone: "+86 138 0000 0000".into() }));
    let i = incident(c, &r.incident_id, got.position.expect("recorded").sequence).await;
    assert!(
        i.history
            .iter()
            .any(|h| h.event_type == "contact_read" && h.principal == "w7" && h.summary.contains("did the fix hold")),
        "each read is on the record: {:?}",
        i.history
    );
    let anonymous =
        c.report_incident(pb::ReportIncidentRequest { contact: None, ..hazard(1.5, 0.5) }).await.expect("r");
    let none = c
        .read_reporter_contact(as_user("w7", Some("callback"), read(&anonymous.into_inner().incident_id, "回访")))
        .await
        .expect_err("none left");
    assert_eq!(none.code(), Code::FailedPrecondition, "{none:?}");

    // Erasure: by role, with an id and a reason, recorded; a retry answers the same.
    let erase = pb::EraseReporterContactRequest {
        command_id: uuid(),
        incident_id: r.incident_id.clone(),
        reason: "the reporter asked (个人信息保护法 art. 47)".into(),
    };
    let denied = c.erase_reporter_contact(as_user("w7", Some("callback"), erase.clone())).await.expect_err("role");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let erased = c.erase_reporter_contact(as_user("dpo-1", Some("privacy"), erase.clone())).await.expect("erase");
    assert!(erased.get_ref().erased);
    let again = c.erase_reporter_contact(as_user("dpo-1", Some("privacy"), erase)).await.expect("retry").into_inner();
    assert!(again.erased && again.position.is_some_and(|p| p.replayed), "{again:?}");
    let i = incident(c, &r.incident_id, erased.into_inner().position.expect("pos").sequence).await;
    assert!(!i.has_contact);
    assert!(i.history.iter().any(|h| h.event_type == "contact_erased" && h.principal == "dpo-1"), "{:?}", i.history);
    let gone = c
        .read_reporter_contact(as_user("w7", Some("callback"), read(&r.incident_id, "回访")))
        .await
        .expect_err("erased");
    assert_eq!(gone.code(), Code::FailedPrecondition, "{gone:?}");
    assert!(gone.message().contains("erased"), "{gone:?}");

    // The crash window: the erasure is recorded and the process stops before
    // destroying the key. The eraser finishes it from the log.
    let second = c.report_incident(hazard(1.5, 0.9)).await.expect("report").into_inner();
    let incidents = m.intake_app.intake().incidents().clone();
    let meta = gridwork_eventstore::CommandMeta {
        command_id: uuid(),
        principal: "dpo-1".into(),
        decided_at_unix_ms: T0,
        request_digest: 0,
    };
    let command = gridwork_incident_intake::domain::incident::IncidentCommand::EraseContact {
        by: "dpo-1".into(),
        reason: "retention ended".into(),
        now_unix_ms: T0,
    };
    let vault = m.intake_app.intake().vault().clone();
    let report = incidents.load_current(&second.incident_id).await.expect("load").state.report.expect("report");
    let sealed = vault.open_contact(&second.incident_id, &report).await.expect("vault");
    assert_eq!(sealed.map(|c| c.name), Some("Wang".to_string()), "the sealed copy opens under its key");
    let recorded = incidents.execute(&second.incident_id, &command, &meta).await.expect("recorded");
    m.intake_app.contact_eraser().wait_for(recorded.sequence, Duration::from_secs(10)).await.expect("eraser");
    let opened = vault.open_contact(&second.incident_id, &report).await.expect("vault");
    assert_eq!(opened, None, "the key is destroyed: the copy in the log opens no more");
}

#[tokio::test]
async fn me_too_reports_within_the_radius_are_linked_and_raise_the_priority_and_others_are_not() {
    let mut m = mesh().await;
    let c = &mut m.intake;
    let first = c.report_incident(hazard(0.5, 0.5)).await.expect("report").into_inner();
    // ~45 m away: linked.
    let second = c.report_incident(hazard(0.6, 0.5)).await.expect("report").into_inner();
    assert_eq!(second.duplicate_of, first.incident_id);
    // ~450 m away: a separate incident.
    let far = c.report_incident(hazard(1.5, 0.5)).await.expect("report").into_inner();
    assert!(far.duplicate_of.is_empty());
    let third = c.report_incident(hazard(0.5, 0.6)).await.expect("report").into_inner();
    assert_eq!(third.duplicate_of, first.incident_id);

    // The linker records the links on the original, one at a time, shortly after.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let original = loop {
        let original = incident(c, &first.incident_id, third.position.expect("pos").sequence).await;
        if original.priority == pb::Priority::Urgent as i32 || std::time::Instant::now() > deadline {
            break original;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(original.linked_reports, [second.incident_id.clone(), third.incident_id.clone()]);
    assert_eq!(original.priority, pb::Priority::Urgent as i32, "raised after two me-too reports");
    let linked = original.history.iter().filter(|h| h.event_type == "report_linked").count();
    assert_eq!(linked, 2, "each me-too linked once");
    let dup = incident(c, &second.incident_id, 0).await;
    assert_eq!(dup.status, pb::IncidentStatus::Duplicate as i32);
    assert_eq!(dup.duplicate_of, first.incident_id);
}

#[tokio::test]
async fn an_emergency_skips_triage_and_triage_honours_claims() {
    let mut m = mesh().await;
    let c = &mut m.intake;
    let mut fire = hazard(1.5, 0.5);
    fire.category_code = "fire".into();
    fire.attributes = vec![pb::AttributeValue {
        code: "people-trapped".into(),
        value: Some(pb::attribute_value::Value::Selected(pb::SelectedValues { values: vec!["unknown".into()] })),
    }];
    let r = c.report_incident(fire).await.expect("fire").into_inner();
    assert!(r.accepted, "emergencies go straight to dispatch");
    let i = incident(c, &r.incident_id, r.position.expect("pos").sequence).await;
    assert_eq!(i.status, pb::IncidentStatus::Accepted as i32);

    let r = c.report_incident(hazard(0.5, 0.5)).await.expect("report").into_inner();
    let id = r.incident_id.clone();
    c.claim_incident(as_user(
        "ann",
        None,
        pb::ClaimIncidentRequest { command_id: uuid(), incident_id: id.clone(), break_lock: false },
    ))
    .await
    .expect("claim");
    let e = c
        .accept_incident(as_user(
            "bob",
            None,
            pb::AcceptIncidentRequest { command_id: uuid(), incident_id: id.clone() },
        ))
        .await
        .expect_err("locked");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("claimed by ann"), "{}", e.message());
    let e = c
        .claim_incident(as_user(
            "bob",
            None,
            pb::ClaimIncidentRequest { command_id: uuid(), incident_id: id.clone(), break_lock: true },
        ))
        .await
        .expect_err("not the shift lead");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("intake.triage.break-claim") && e.message().contains("triage-lead"), "{e:?}");
    c.claim_incident(as_user(
        "root",
        Some("triage-lead"),
        pb::ClaimIncidentRequest { command_id: uuid(), incident_id: id.clone(), break_lock: true },
    ))
    .await
    .expect("admin breaks the lock");
    let e = c
        .reject_incident(as_user(
            "root",
            None,
            pb::RejectIncidentRequest { command_id: uuid(), incident_id: id.clone(), reason: 0, note: "".into() },
        ))
        .await
        .expect_err("reason");
    assert_eq!(fields(&e), ["reason"]);
    let rejected = c
        .reject_incident(as_user(
            "root",
            None,
            pb::RejectIncidentRequest {
                command_id: uuid(),
                incident_id: id.clone(),
                reason: pb::RejectionReason::NotGovernance as i32,
                note: "private matter".into(),
            },
        ))
        .await
        .expect("reject")
        .into_inner();
    let e = c
        .accept_incident(as_user(
            "root",
            None,
            pb::AcceptIncidentRequest { command_id: uuid(), incident_id: id.clone() },
        ))
        .await
        .expect_err("already decided");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("rejected"), "{}", e.message());
    let i = incident(c, &id, rejected.position.expect("pos").sequence).await;
    assert_eq!(i.open311_status, "closed");
    let timeline: Vec<_> = i.history.iter().map(|h| (h.event_type.as_str(), h.principal.as_str())).collect();
    assert_eq!(
        timeline,
        [
            ("reported", "tester"),
            ("claimed", "ann"),
            ("claim_broken", "root"),
            ("claimed", "root"),
            ("rejected", "root")
        ]
    );
    let listed = c
        .list_incidents(pb::ListIncidentsRequest {
            unit_id: "m1".into(),
            status: pb::IncidentStatus::Rejected as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.incidents.iter().map(|i| i.incident_id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    drop(m.intake_app);
}

fn report_of(category: &str, location: pb::report_incident_request::Location) -> pb::ReportIncidentRequest {
    pb::ReportIncidentRequest {
        command_id: uuid(),
        source: pb::Source::Hotline as i32,
        category_code: category.into(),
        location: Some(location),
        description: format!("{category} reported by phone"),
        reporter_id: "hotline-3".into(),
        ..Default::default()
    }
}

fn point(x: f64, y: f64) -> pb::report_incident_request::Location {
    pb::report_incident_request::Location::Point(pb::GeoPoint { lat: Y0 + y * STEP, lon: X0 + x * STEP })
}

fn address(text: &str) -> pb::report_incident_request::Location {
    pb::report_incident_request::Location::Address(pb::ResolvedAddress { text: text.into(), unit_id: "m1".into() })
}

#[tokio::test]
async fn simultaneous_reports_at_one_spot_on_two_replicas_make_exactly_one_original() {
    let mut m = mesh().await;
    let (_replica, replica_server, db) = replica(&m).await;

    // Each on its own connection, released together.
    let n = 32;
    let start = Arc::new(tokio::sync::Barrier::new(n));
    let mut reports = Vec::new();
    for i in 0..n {
        let server = if i % 2 == 0 { &m._intake_server } else { &replica_server };
        let mut client = IntakeServiceClient::new(channel(server).await);
        let start = start.clone();
        reports.push(tokio::spawn(async move {
            start.wait().await;
            client.report_incident(report_of("sanitation", point(0.3, 0.3))).await.expect("report").into_inner()
        }));
    }
    let mut answers = Vec::new();
    for r in reports {
        answers.push(r.await.expect("task"));
    }
    let originals: Vec<_> = answers.iter().filter(|a| a.duplicate_of.is_empty()).collect();
    assert_eq!(originals.len(), 1, "one original, the rest linked to it: {answers:#?}");
    let original = &originals[0].incident_id;
    assert!(answers.iter().all(|a| a.duplicate_of.is_empty() || a.duplicate_of == *original));

    // Every me-too is linked to it (each once), none is left behind.
    let head = answers.iter().filter_map(|a| a.position.as_ref()).map(|p| p.sequence).max().expect("positions");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let o = incident(&mut m.intake, original, head).await;
        if o.linked_reports.len() == n - 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "linked {} of {}", o.linked_reports.len(), n - 1);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(replica_server);
    drop(db);
}

#[tokio::test]
async fn reporting_goes_on_while_the_read_model_is_stalled_and_still_finds_the_me_too() {
    use sqlx::Connection as _;
    let mut m = mesh().await;
    let c = &mut m.intake;
    // Another writer holds the read store's write lock: the incidents
    // projection cannot apply anything until it lets go.
    let mut lock = sqlx::SqliteConnection::connect(&m.dbs.1.url).await.expect("connect");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut lock).await.expect("lock");
    let started = std::time::Instant::now();
    let first = c.report_incident(report_of("sanitation", point(1.5, 1.5))).await.expect("report").into_inner();
    let second = c.report_incident(report_of("sanitation", point(1.5, 1.5))).await.expect("report").into_inner();
    assert!(started.elapsed() < Duration::from_secs(5), "reports waited for the read model: {:?}", started.elapsed());
    assert_eq!(second.duplicate_of, first.incident_id, "decided from the zone, not the stalled read model");
    sqlx::query("ROLLBACK").execute(&mut lock).await.expect("unlock");
    let seen = incident(c, &second.incident_id, second.position.expect("pos").sequence).await;
    assert_eq!(seen.duplicate_of, first.incident_id);
}

#[tokio::test]
async fn each_category_compares_reports_as_its_duplicate_policy_says() {
    let mut m = mesh().await;
    let c = &mut m.intake;
    // NEVER: two neighbour disputes at one door are two disputes.
    let a = c.report_incident(report_of("neighbour-dispute", point(0.2, 0.8))).await.expect("report").into_inner();
    let b = c.report_incident(report_of("neighbour-dispute", point(0.2, 0.8))).await.expect("report").into_inner();
    assert!(a.duplicate_of.is_empty() && b.duplicate_of.is_empty() && b.possibly_same_as.is_empty());

    // SUGGEST: a second public-safety report nearby is its own incident, awaiting triage, flagged.
    let a = c.report_incident(report_of("public-safety", point(0.4, 0.8))).await.expect("report").into_inner();
    let b = c.report_incident(report_of("public-safety", point(0.41, 0.8))).await.expect("report").into_inner();
    assert_eq!((b.duplicate_of.as_str(), b.possibly_same_as.as_str()), ("", a.incident_id.as_str()));
    let flagged = incident(c, &b.incident_id, b.position.expect("pos").sequence).await;
    assert_eq!(flagged.status, pb::IncidentStatus::Reported as i32);
    assert_eq!(flagged.possibly_same_as, a.incident_id);

    // AUTO_LINK by address: only the same door is the same report, however it is typed.
    let a = c.report_incident(report_of("sanitation", address("3 Xinhua Rd, Bldg 2"))).await.expect("r").into_inner();
    let same = c.report_incident(report_of("sanitation", address("3 xinhua rd bldg 2"))).await.expect("r").into_inner();
    let other = c.report_incident(report_of("sanitation", address("9 Xinhua Rd"))).await.expect("r").into_inner();
    assert_eq!(same.duplicate_of, a.incident_id);
    assert!(other.duplicate_of.is_empty(), "another door in the same micro-grid is another report");
    let kept = incident(c, &other.incident_id, other.position.expect("pos").sequence).await;
    assert_eq!(kept.address_text, "9 Xinhua Rd", "the handler finds the door by it");
}

#[tokio::test]
async fn rejecting_an_original_gives_its_me_toos_back_to_triage_visibly() {
    let mut m = mesh().await;
    let c = &mut m.intake;
    let original = c.report_incident(report_of("sanitation", point(1.2, 1.2))).await.expect("report").into_inner();
    let me_too = c.report_incident(report_of("sanitation", point(1.2, 1.2))).await.expect("report").into_inner();
    assert_eq!(me_too.duplicate_of, original.incident_id);
    // Linked first (a report whose link arrives after the rejection goes back
    // too: the link is refused).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let linked = |i: &pb::Incident| i.history.iter().any(|h| h.event_type == "report_linked");
    while !linked(&incident(c, &original.incident_id, me_too.position.expect("pos").sequence).await) {
        assert!(std::time::Instant::now() < deadline, "never linked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rejected = c
        .reject_incident(as_user(
            "triage-1",
            None,
            pb::RejectIncidentRequest {
                command_id: uuid(),
                incident_id: original.incident_id.clone(),
                reason: pb::RejectionReason::Spam as i32,
                note: "prank call".into(),
            },
        ))
        .await
        .expect("reject")
        .into_inner();
    let at = rejected.position.expect("pos").sequence;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let back = loop {
        let back = incident(c, &me_too.incident_id, at).await;
        if back.status == pb::IncidentStatus::Reported as i32 || std::time::Instant::now() > deadline {
            break back;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(back.status, pb::IncidentStatus::Reported as i32, "awaiting triage again: {back:#?}");
    assert!(back.duplicate_of.is_empty());
    assert!(back.history.iter().any(|h| h.event_type == "duplicate_unlinked"), "{:#?}", back.history);
    // A new report there now starts its own incident: the rejected one is no original.
    let next = c.report_incident(report_of("sanitation", point(1.2, 1.2))).await.expect("report").into_inner();
    assert!(next.duplicate_of.is_empty(), "{next:?}");

    // Triage cannot merge a report into the rejected incident either, nor
    // into a duplicate: each refusal names the target and writes nothing.
    let merge = |of: &str| {
        as_user(
            "triage-1",
            None,
            pb::MarkDuplicateRequest {
                command_id: uuid(),
                incident_id: next.incident_id.clone(),
                of_incident_id: of.into(),
            },
        )
    };
    let e = c.mark_duplicate(merge(&original.incident_id)).await.expect_err("rejected target");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().starts_with("of_incident_id:"), "{}", e.message());
    let dup = c.report_incident(report_of("sanitation", point(1.2, 1.2))).await.expect("report").into_inner();
    assert_eq!(dup.duplicate_of, next.incident_id);
    let e = c
        .mark_duplicate(as_user(
            "triage-1",
            None,
            pb::MarkDuplicateRequest {
                command_id: uuid(),
                incident_id: back.incident_id.clone(),
                of_incident_id: dup.incident_id.clone(),
            },
        ))
        .await
        .expect_err("duplicate target");
    assert!(e.message().contains(&format!("merge into {}", next.incident_id)), "{}", e.message());
    let unchanged = incident(c, &next.incident_id, dup.position.expect("pos").sequence).await;
    assert_eq!(unchanged.status, pb::IncidentStatus::Reported as i32);
}

#[tokio::test]
async fn a_retried_report_answers_as_before_and_an_id_reused_elsewhere_places_nothing() {
    let mut m = mesh().await;
    let c = &mut m.intake;
    let first = report_of("sanitation", point(0.7, 1.7));
    let a = c.report_incident(first.clone()).await.expect("report").into_inner();
    let a_again = c.report_incident(first.clone()).await.expect("retry").into_inner();
    let seq = |p: &Option<pb::CommitPosition>| p.as_ref().map(|p| p.sequence);
    assert_eq!((a_again.incident_id.as_str(), seq(&a_again.position)), (a.incident_id.as_str(), seq(&a.position)));
    assert!(a_again.position.as_ref().is_some_and(|p| p.replayed));
    let second = report_of("sanitation", point(0.7, 1.7));
    let b = c.report_incident(second.clone()).await.expect("report").into_inner();
    let b_again = c.report_incident(second).await.expect("retry").into_inner();
    assert_eq!(b.duplicate_of, a.incident_id);
    assert_eq!((b_again.duplicate_of, seq(&b_again.position)), (b.duplicate_of, seq(&b.position)), "as before");

    // The first id reused for another report, of another category elsewhere:
    // refused, and nothing is placed in that zone under it.
    let mut reused = report_of("parking", point(1.7, 0.3));
    reused.command_id = first.command_id.clone();
    let e = c.report_incident(reused).await.expect_err("a reused command id");
    assert_ne!(e.code(), Code::Ok);
    let next = c.report_incident(report_of("parking", point(1.7, 0.3))).await.expect("report").into_inner();
    assert!(next.duplicate_of.is_empty(), "linked to a report that was refused: {next:?}");
}

#[tokio::test]
async fn channel_data_is_checked_kept_and_a_partner_feeds_retries_make_one_incident() {
    let mut m = mesh().await;
    let c = &mut m.intake;
    // A camera report names its device; confidence is a probability; media
    // are https URLs or object keys with a media type.
    let mut camera = hazard(0.5, 0.5);
    camera.source = pb::Source::Camera as i32;
    camera.media = vec![pb::MediaRef { url: "ftp://x".into(), content_type: "text/plain".into() }];
    let e = c.report_incident(camera.clone()).await.expect_err("no device");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(fields(&e), ["device", "media[0].url", "media[0].content_type"]);
    camera.device = Some(pb::Device { device_id: "cam-g-017".into(), kind: "camera".into(), confidence: 1.5 });
    camera.media =
        vec![pb::MediaRef { url: "https://media.example/g/017.jpg".into(), content_type: "image/jpeg".into() }];
    assert_eq!(fields(&c.report_incident(camera.clone()).await.expect_err("confidence")), ["device.confidence"]);
    camera.device.as_mut().expect("device").confidence = 0.87;
    let r = c.report_incident(camera).await.expect("camera report").into_inner();
    let i = incident(c, &r.incident_id, r.position.expect("pos").sequence).await;
    assert_eq!(i.device.expect("device").device_id, "cam-g-017");
    assert_eq!(i.media.len(), 1);

    // A 12345 ticket sent six times at once by its feed, each time under a
    // new command id (a category compared with reports nearby, so the
    // placement races too), then once late: one incident, and the retries
    // say so.
    let ticket = |command_id: String| pb::ReportIncidentRequest {
        command_id,
        source: pb::Source::Hotline as i32,
        category_code: "sanitation".into(),
        location: Some(pb::report_incident_request::Location::Point(pb::GeoPoint {
            lat: Y0 + 1.5 * STEP,
            lon: X0 + 1.5 * STEP,
        })),
        description: "rubbish piled at the gate of building 3".into(),
        partner_reference: Some(pb::PartnerReference { system: "12345".into(), reference: "T-20260301-0042".into() }),
        ..Default::default()
    };
    // The 12345 feed calls as itself: a partner reference is a partner
    // system's own, sent under its own name.
    let feed = |r| gridwork_testkit::auth::as_caller(tonic::Request::new(r), "12345", &["partner-system"]);
    let mut sends = Vec::new();
    for _ in 0..6 {
        let mut client = c.clone();
        sends.push(tokio::spawn(async move { client.report_incident(feed(ticket(uuid()))).await }));
    }
    let mut answers = Vec::new();
    for send in sends {
        answers.push(send.await.expect("task").expect("every send is answered").into_inner());
    }
    let first = answers.iter().find(|a| !a.already_reported).expect("one send recorded it").clone();
    assert_eq!(answers.iter().filter(|a| !a.already_reported).count(), 1, "{answers:?}");
    assert!(answers.iter().all(|a| a.incident_id == first.incident_id), "{answers:?}");
    let late = c.report_incident(feed(ticket(uuid()))).await.expect("a late retry").into_inner();
    assert!(late.already_reported && late.incident_id == first.incident_id);
    let i = incident(c, &first.incident_id, first.position.expect("pos").sequence).await;
    assert_eq!(i.partner_reference.expect("kept").reference, "T-20260301-0042");
    let listed = c
        .list_incidents(pb::ListIncidentsRequest {
            category_code: "sanitation".into(),
            limit: 50,
            min_position: late.position.expect("pos").sequence,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .incidents;
    assert_eq!(listed.len(), 1, "one incident for one ticket: {listed:?}");
    // The same reference with other content is not a retry: refused, so the
    // feed knows, not answered as if it were the first.
    let mut urging = ticket(uuid());
    urging.description = "still there after three days".into();
    let e = c.report_incident(feed(urging)).await.expect_err("reused reference");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("partner_reference"), "{e:?}");
    // A bad reference is named.
    let mut bad = ticket(uuid());
    bad.partner_reference = Some(pb::PartnerReference { system: "12 345".into(), reference: String::new() });
    assert_eq!(
        fields(&c.report_incident(feed(bad)).await.expect_err("bad reference")),
        ["partner_reference.system", "partner_reference.reference"]
    );
    // Only the partner system itself sends its references: another caller
    // (a rider, the hotline) could otherwise take the id the feed's next
    // ticket will need.
    let e = c.report_incident(ticket(uuid())).await.expect_err("not the feed");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let e = c
        .report_incident(gridwork_testkit::auth::as_caller(
            tonic::Request::new(ticket(uuid())),
            "110",
            &["partner-system"],
        ))
        .await
        .expect_err("another partner naming 12345");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("partner_reference.system"), "{e:?}");
}

/// Issue 9 review: dispatch's outcome reaches intake moments after it is
/// decided. A "me too" reported after the case was resolved, linked in those
/// moments, says the fix did not hold: when intake learns of the resolution
/// it gives that report back to triage, and keeps those reported before.
#[tokio::test]
async fn a_me_too_reported_after_the_resolution_intake_had_not_yet_heard_of_goes_back_to_triage() {
    use gridwork_incident_intake::domain::incident::{CaseStage, IncidentCommand};
    let mut m = mesh().await;
    let c = &mut m.intake;
    let incidents = m.intake_app.intake().incidents().clone();
    let mut pairs = Vec::new();
    for x in [0.4, 1.6] {
        let original = c.report_incident(report_of("sanitation", point(x, 0.4))).await.expect("report").into_inner();
        c.accept_incident(as_user(
            "triage-1",
            None,
            pb::AcceptIncidentRequest { command_id: uuid(), incident_id: original.incident_id.clone() },
        ))
        .await
        .expect("accept");
        let me_too = c.report_incident(report_of("sanitation", point(x, 0.4))).await.expect("report").into_inner();
        assert_eq!(me_too.duplicate_of, original.incident_id);
        pairs.push((original, me_too));
    }
    // Both linked (the linker's work) before dispatch's outcome arrives.
    let linked_by = pairs.iter().map(|(_, me_too)| me_too.position.expect("pos").sequence).max().expect("two");
    m.intake_app.linker().wait_for(linked_by, Duration::from_secs(10)).await.expect("linker");
    // Both me-toos were reported at T0. The first original's case was
    // resolved a moment before that, the second's at that very moment.
    let mut last = 0;
    for ((original, _), resolved_at) in pairs.iter().zip([T0 - 1, T0]) {
        let follow = IncidentCommand::FollowCase {
            stage: CaseStage::Resolved,
            at_unix_ms: resolved_at,
            note: "cleared".into(),
            dispatch_sequence: 1,
            merged_into: String::new(),
        };
        let meta = gridwork_eventstore::CommandMeta {
            command_id: uuid(),
            principal: "service:intake-case-follower".into(),
            decided_at_unix_ms: T0,
            request_digest: 0,
        };
        last = incidents.execute(&original.incident_id, &follow, &meta).await.expect("follow").sequence;
    }
    m.intake_app.linker().wait_for(last, Duration::from_secs(10)).await.expect("linker");
    let (after, before) = (&pairs[0].1, &pairs[1].1);
    let back = incidents.load_current(&after.incident_id).await.expect("load").state;
    assert_eq!(
        (back.status, back.duplicate_of.as_str()),
        (gridwork_incident_intake::domain::incident::Status::Reported, ""),
        "reported after the resolution: back in triage"
    );
    let kept = incidents.load_current(&before.incident_id).await.expect("load").state;
    assert_eq!(kept.duplicate_of, pairs[1].0.incident_id, "reported by the resolution: still a me-too: {kept:?}");
}

/// Issue 9 review: a replica's warm copy of an incident can be one another
/// replica has since corrected. A report near it is judged against the
/// incident as it stands on the stream's leader, never the stale copy: here
/// the incident was reclassified elsewhere, so a new report of the old
/// category at its spot is an incident of its own, not a "me too" of it.
#[tokio::test]
async fn a_report_is_never_linked_to_an_incident_another_replica_has_since_corrected() {
    let mut m = mesh().await;
    let (_replica, replica_server, db) = replica(&m).await;
    let mut other = IntakeServiceClient::new(channel(&replica_server).await);

    // Reported here: this replica holds a warm copy of it, and of its zone.
    let c = &mut m.intake;
    let first = c.report_incident(report_of("sanitation", point(1.1, 0.6))).await.expect("report").into_inner();
    let again = c.report_incident(report_of("sanitation", point(1.1, 0.6))).await.expect("report").into_inner();
    assert_eq!(again.duplicate_of, first.incident_id, "a me-too while it is what it was");
    // The other replica's triage finds it is a parked car, not rubbish.
    other
        .reclassify_incident(as_user(
            "triage-2",
            None,
            pb::ReclassifyIncidentRequest {
                command_id: uuid(),
                incident_id: first.incident_id.clone(),
                category_code: "parking".into(),
                note: "a car, not rubbish".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("reclassify");
    // Rubbish reported at that spot now is not about the parked car.
    let next = c.report_incident(report_of("sanitation", point(1.1, 0.6))).await.expect("report").into_inner();
    assert!(next.duplicate_of.is_empty(), "linked to an incident that is no longer sanitation: {next:?}");
    drop(replica_server);
    drop(db);
}

/// Issue 9 review: triage links a report to an original in the moment that
/// original is itself merged into another (each decided on what it read just
/// before). The link it cannot take is carried on to where the original
/// went, one hop — the report follows the live incident, not a duplicate.
#[tokio::test]
async fn a_me_too_of_an_original_merged_meanwhile_is_linked_on_to_where_it_went() {
    use gridwork_incident_intake::domain::incident::{IncidentCommand, Status};
    let mut m = mesh().await;
    let c = &mut m.intake;
    let first = c.report_incident(report_of("sanitation", point(0.4, 1.6))).await.expect("report").into_inner();
    let second = c.report_incident(report_of("sanitation", point(1.6, 1.6))).await.expect("report").into_inner();
    let call = c.report_incident(report_of("parking", point(0.9, 0.9))).await.expect("report").into_inner();
    assert!(second.duplicate_of.is_empty() && call.duplicate_of.is_empty());
    let merged = c
        .mark_duplicate(as_user(
            "triage-1",
            None,
            pb::MarkDuplicateRequest {
                command_id: uuid(),
                incident_id: second.incident_id.clone(),
                of_incident_id: first.incident_id.clone(),
            },
        ))
        .await
        .expect("second merged into first")
        .into_inner();
    // Decided on a read of `second` from just before that merge.
    let incidents = m.intake_app.intake().incidents().clone();
    let stale = IncidentCommand::MarkDuplicate {
        of_incident_id: second.incident_id.clone(),
        target: (Status::Reported, String::new()),
        own_id: call.incident_id.clone(),
        by: "triage-2".into(),
        now_unix_ms: T0,
    };
    let meta = gridwork_eventstore::CommandMeta {
        command_id: uuid(),
        principal: "triage-2".into(),
        decided_at_unix_ms: T0,
        request_digest: 0,
    };
    let marked = incidents.execute(&call.incident_id, &stale, &meta).await.expect("marked");
    let head = marked.sequence.max(merged.position.expect("pos").sequence);
    m.intake_app.linker().wait_for(head, Duration::from_secs(10)).await.expect("linker");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let original = incidents.load_current(&first.incident_id).await.expect("load").state;
        let me_too = incidents.load_current(&call.incident_id).await.expect("load").state;
        if original.linked.contains(&call.incident_id) {
            assert_eq!((me_too.status, me_too.duplicate_of.as_str()), (Status::Duplicate, first.incident_id.as_str()));
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never linked on to {}: {me_too:?}", first.incident_id);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// ListIncidents pages by keyset (newest first, ties by id): the pages
/// together are the list, with no row twice even when reports land between
/// pages; a token asked back with other filters is refused, naming it.
#[tokio::test]
async fn incidents_list_in_pages_that_neither_repeat_nor_skip_and_tokens_keep_their_filters() {
    let mut m = mesh().await;
    let c = &mut m.intake;
    let mut last = 0;
    for i in 0..7 {
        let r = c.report_incident(hazard(0.05 + 0.12 * f64::from(i), 0.5)).await.expect("report").into_inner();
        last = r.position.expect("position").sequence;
    }
    let all = c
        .list_incidents(pb::ListIncidentsRequest { limit: 500, min_position: last, ..Default::default() })
        .await
        .expect("list")
        .into_inner();
    assert!(all.next_page_token.is_empty(), "one page holds them all");
    let all: Vec<String> = all.incidents.into_iter().map(|i| i.incident_id).collect();
    assert_eq!(all.len(), 7);

    let (mut seen, mut token, mut pages) = (Vec::<String>::new(), String::new(), 0);
    loop {
        let page = c
            .list_incidents(pb::ListIncidentsRequest { limit: 3, page_token: token, ..Default::default() })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        seen.extend(page.incidents.into_iter().map(|i| i.incident_id));
        if pages == 1 {
            // A report lands between the first and second page.
            let r = c.report_incident(hazard(0.9, 0.9)).await.expect("report").into_inner();
            c.get_incident(pb::GetIncidentRequest {
                incident_id: r.incident_id,
                min_position: r.position.expect("position").sequence,
            })
            .await
            .expect("visible");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), seen.len(), "no incident on two pages: {seen:?}");
    assert!(all.iter().all(|id| seen.contains(id)), "every incident listed before is on a page");
    assert_eq!(seen[..3], all[..3], "the first page is the list's head");
    assert!(pages >= 3);

    let first = c
        .list_incidents(pb::ListIncidentsRequest {
            limit: 3,
            category_code: "fire-hazard".into(),
            ..Default::default()
        })
        .await
        .expect("page")
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    let refused = c
        .list_incidents(pb::ListIncidentsRequest {
            limit: 3,
            category_code: "parking".into(),
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .expect_err("a token of other filters");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(fields(&refused), ["page_token"]);
    drop(m.intake_app);
}

/// Issue 9 review: two triage staff merge A into B and B into A at the same
/// moment, each decided on a read from before the other's merge. Both land;
/// the linker, taking them in stream order, leaves one original with the
/// other linked to it — never a ring of two duplicates with nobody handling
/// the problem.
#[tokio::test]
async fn two_triage_merges_of_a_pair_into_each_other_leave_one_original() {
    use gridwork_incident_intake::domain::incident::{IncidentCommand, Status};
    let m = mesh().await;
    let mut c = m.intake.clone();
    let a = c.report_incident(report_of("parking", point(0.3, 1.7))).await.expect("report").into_inner();
    let b = c.report_incident(report_of("parking", point(1.7, 0.3))).await.expect("report").into_inner();
    assert!(a.duplicate_of.is_empty() && b.duplicate_of.is_empty());
    let incidents = m.intake_app.intake().incidents().clone();
    let merge = |own: &str, into: &str, by: &str| {
        let command = IncidentCommand::MarkDuplicate {
            of_incident_id: into.to_string(),
            // Each decided on the other as it was before either merge.
            target: (Status::Reported, String::new()),
            own_id: own.to_string(),
            by: by.into(),
            now_unix_ms: T0,
        };
        let meta = gridwork_eventstore::CommandMeta {
            command_id: uuid(),
            principal: by.into(),
            decided_at_unix_ms: T0,
            request_digest: 0,
        };
        (own.to_string(), command, meta)
    };
    let (first, second) =
        (merge(&a.incident_id, &b.incident_id, "triage-1"), merge(&b.incident_id, &a.incident_id, "triage-2"));
    let one = incidents.execute(&first.0, &first.1, &first.2).await.expect("A into B");
    let two = incidents.execute(&second.0, &second.1, &second.2).await.expect("B into A");
    m.intake_app.linker().wait_for(one.sequence.max(two.sequence), Duration::from_secs(10)).await.expect("linker");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sa = incidents.load_current(&a.incident_id).await.expect("load").state;
        let sb = incidents.load_current(&b.incident_id).await.expect("load").state;
        let settled = |dup: &gridwork_incident_intake::domain::incident::Incident,
                       orig: &gridwork_incident_intake::domain::incident::Incident,
                       dup_id: &str,
                       orig_id: &str| {
            dup.status == Status::Duplicate
                && dup.duplicate_of == orig_id
                && orig.status == Status::Reported
                && orig.duplicate_of.is_empty()
                && orig.linked.iter().any(|l| l == dup_id)
        };
        if settled(&sb, &sa, &b.incident_id, &a.incident_id) || settled(&sa, &sb, &a.incident_id, &b.incident_id) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not settled into one original: A {:?} of {:?} linked {:?}; B {:?} of {:?} linked {:?}",
            sa.status,
            sa.duplicate_of,
            sa.linked,
            sb.status,
            sb.duplicate_of,
            sb.linked
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(m.intake_app);
}

/// Issue 10, personal data: a report's account (description, address) and a
/// me-too's travel sealed under their own keys; staff read them through the
/// service, a contact read by role is recorded and refused without it; the
/// erasure destroys the keys, after which the sealed copy in the stream opens
/// as erased, the read model — live and rebuilt from zero — shows
/// "[erased]" on the report and on the original's copy of the me-too's
/// account, and what statistics need (category, grid path, status, counts)
/// is unchanged.
#[tokio::test]
async fn a_reports_account_is_sealed_and_its_erasure_reaches_every_copy_but_not_the_statistics() {
    let mut m = mesh().await;
    let c = &mut m.intake;
    let original = c
        .report_incident(pb::ReportIncidentRequest {
            description: "Mrs Li lives alone, water through the ceiling".into(),
            location: Some(address("3-2-401 Xinhua Rd")),
            ..hazard(0.5, 0.5)
        })
        .await
        .expect("report")
        .into_inner();
    let me_too = c
        .report_incident(pb::ReportIncidentRequest {
            description: "my neighbour Mr Zhao says the same".into(),
            location: Some(address("3-2-401 Xinhua Rd")),
            // No contact given: the account is erased all the same.
            contact: None,
            ..hazard(0.5, 0.5)
        })
        .await
        .expect("me too")
        .into_inner();
    assert_eq!(me_too.duplicate_of, original.incident_id, "same address, same category: linked");

    // Nothing of the account is in the stream in plain.
    let js = async_nats::jetstream::new(async_nats::connect(m.nats.url()).await.expect("connect"));
    let stream = js.get_stream("INTAKE").await.expect("stream");
    let last = stream.get_info().await.expect("info").state.last_sequence;
    for seq in 1..=last {
        let message = stream.get_raw_message(seq).await.expect("message");
        let text = String::from_utf8_lossy(&message.payload);
        for plain in ["Mrs Li", "Xinhua", "Mr Zhao", "138 0000"] {
            assert!(!text.contains(plain), "{plain} in plain at {seq} on {}", message.subject);
        }
    }

    // Staff read it through the service, opened.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let shown = loop {
        let shown = incident(c, &original.incident_id, me_too.position.expect("pos").sequence).await;
        if !shown.linked_accounts.is_empty() || std::time::Instant::now() > deadline {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(shown.description, "Mrs Li lives alone, water through the ceiling");
    assert_eq!(shown.address_text, "3-2-401 Xinhua Rd");
    let accounts: Vec<&str> = shown.linked_accounts.iter().map(|a| a.description.as_str()).collect();
    assert_eq!(accounts, ["my neighbour Mr Zhao says the same"]);
    // The contact: read by the callback role (recorded), refused without it.
    let read = pb::ReadReporterContactRequest {
        command_id: uuid(),
        incident_id: original.incident_id.clone(),
        purpose: "回访".into(),
    };
    let got = c.read_reporter_contact(as_user("w7", Some("callback"), read.clone())).await.expect("read");
    assert_eq!(got.into_inner().contact.map(|c| c.name), Some("Wang".to_string()));
    let refused = c.read_reporter_contact(as_user("w8", Some("triage"), read)).await.expect_err("no role");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let before = c
        .list_incidents(pb::ListIncidentsRequest { limit: 500, ..Default::default() })
        .await
        .expect("list")
        .into_inner()
        .incidents;
    let statistics = |list: &[pb::Incident]| -> Vec<(String, i32, Option<pb::GridPath>, String)> {
        list.iter().map(|i| (i.category_code.clone(), i.status, i.grid_path.clone(), i.duplicate_of.clone())).collect()
    };

    // Erase both reporters' data.
    let mut at = 0;
    for id in [&original.incident_id, &me_too.incident_id] {
        let erase = pb::EraseReporterContactRequest {
            command_id: uuid(),
            incident_id: id.clone(),
            reason: "the reporter asked (个人信息保护法 art. 47)".into(),
        };
        let erased = c.erase_reporter_contact(as_user("dpo-1", Some("privacy"), erase)).await.expect("erase");
        at = erased.into_inner().position.expect("pos").sequence;
    }
    let shown = incident(c, &original.incident_id, at).await;
    assert_eq!(shown.description, "[erased]");
    assert_eq!(shown.address_text, "[erased]");
    assert_eq!(shown.linked_accounts[0].description, "[erased]", "the original's copy of the me-too's account");
    assert_eq!(incident(c, &me_too.incident_id, at).await.description, "[erased]");

    // The sealed copy in the stream opens as erased, for any process.
    let keys = gridwork_personal::KeyStore::connect(js.clone(), 1).await.expect("key store");
    let report = m.intake_app.intake().incidents().load_current(&original.incident_id).await.expect("load");
    let sealed = report.state.report.expect("report").sealed_description.expect("sealed in the event");
    assert_eq!(keys.open(&sealed, "description").await.expect("open"), gridwork_personal::Opened::Erased);

    // Rebuilt from zero: still erased; the statistics as they were.
    m.intake_app.intake().projection().rebuild().await.expect("rebuild");
    let rebuilt = incident(c, &original.incident_id, 0).await;
    assert_eq!((rebuilt.description.as_str(), rebuilt.address_text.as_str()), ("[erased]", "[erased]"));
    let after = c
        .list_incidents(pb::ListIncidentsRequest { limit: 500, ..Default::default() })
        .await
        .expect("list")
        .into_inner()
        .incidents;
    assert_eq!(statistics(&after), statistics(&before), "category, status, placement and links unchanged");
    assert!(after.iter().all(|i| i.description == "[erased]"), "{after:?}");
}

/// An account recorded in plain before sealing cannot be erased from the log
/// (it denies deletes), but the read model forgets it: the erasure blanks it,
/// and a rebuild from zero blanks it again at the same event.
#[tokio::test]
async fn an_account_kept_in_plain_before_sealing_is_blanked_in_the_read_model_on_erasure() {
    let mut m = mesh().await;
    let id = uuid();
    let report = pb::IncidentReported {
        source: pb::Source::Hotline as i32,
        category_code: "fire-hazard".into(),
        lat: Y0 + 0.5 * STEP,
        lon: X0 + 0.5 * STEP,
        grid_path: Some(pb::GridPath {
            district_id: "d".into(),
            street_id: "s".into(),
            community_id: "c".into(),
            grid_id: "g".into(),
            micro_grid_id: "m1".into(),
        }),
        description: "Mr Qian in 5-1-202 smells smoke".into(),
        address_text: "5-1-202 Xinhua Rd".into(),
        priority: pb::Priority::High as i32,
        reported_at_unix_ms: T0,
        ..Default::default()
    };
    let meta = gridwork_eventstore::CommandMeta {
        command_id: uuid(),
        principal: "hotline-1".into(),
        decided_at_unix_ms: T0,
        request_digest: 0,
    };
    let command =
        gridwork_incident_intake::domain::incident::IncidentCommand::Report { report: Box::new(report), nearby: None };
    let recorded =
        m.intake_app.intake().incidents().execute(&id, &command, &meta).await.expect("a report as recorded before");
    let c = &mut m.intake;
    let shown = incident(c, &id, recorded.sequence).await;
    assert_eq!(shown.description, "Mr Qian in 5-1-202 smells smoke", "plain, as it was recorded");
    let erase = pb::EraseReporterContactRequest {
        command_id: uuid(),
        incident_id: id.clone(),
        reason: "the reporter asked".into(),
    };
    let erased = c.erase_reporter_contact(as_user("dpo-1", Some("privacy"), erase)).await.expect("erase").into_inner();
    let shown = incident(c, &id, erased.position.expect("recorded").sequence).await;
    assert_eq!((shown.description.as_str(), shown.address_text.as_str()), ("[erased]", "[erased]"));
    m.intake_app.intake().projection().rebuild().await.expect("rebuild");
    let rebuilt = incident(c, &id, 0).await;
    assert_eq!((rebuilt.description.as_str(), rebuilt.address_text.as_str()), ("[erased]", "[erased]"));
}
