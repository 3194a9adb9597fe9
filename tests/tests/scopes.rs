//! Issue 10, scopes on the tree: a role held for a unit acts in that unit's
//! subtree, a department as itself, a rider on its own reports — decided by
//! each service's own copy of `GRID`. For each, an allowed and a refused
//! caller; a refusal is `PERMISSION_DENIED` naming the permission and writes
//! nothing.
//!
//! The tree: the test district d > s > c > g (micro-grids m1, m2) and beside
//! it d2 > s2 > c2 > g2.

use std::time::Duration;

use gridwork_e2e::{cells, mesh, stream_messages, uuid};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::dispatch::v1::dispatch_service_client::DispatchServiceClient;
use gridwork_proto::gridwork::grid::v1 as gpb;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_client::GridRegistryServiceClient;
use gridwork_proto::gridwork::intake::v1 as ipb;
use gridwork_proto::gridwork::intake::v1::intake_service_client::IntakeServiceClient;
use gridwork_testkit::auth::{Authed, authed_as};
use tonic::Code;
use tonic::transport::Channel;

/// Monday 2026-03-02 10:00 in UTC+8.
fn monday_ten() -> i64 {
    (time::macros::datetime!(2026-03-02 10:00 +8).unix_timestamp_nanos() / 1_000_000) as i64
}

async fn as_caller(endpoint: String, subject: &str, grants: &[&str]) -> Authed {
    let channel = Channel::from_shared(endpoint).expect("endpoint").connect().await.expect("connect");
    authed_as(channel, subject, grants)
}

async fn intake_as(m: &gridwork_e2e::Mesh, subject: &str, grants: &[&str]) -> IntakeServiceClient<Authed> {
    IntakeServiceClient::new(as_caller(m.intake_endpoint(), subject, grants).await)
}

async fn dispatch_as(m: &gridwork_e2e::Mesh, subject: &str, grants: &[&str]) -> DispatchServiceClient<Authed> {
    DispatchServiceClient::new(as_caller(m.dispatch_endpoint(), subject, grants).await)
}

async fn registry_as(m: &gridwork_e2e::Mesh, subject: &str, grants: &[&str]) -> GridRegistryServiceClient<Authed> {
    GridRegistryServiceClient::new(as_caller(m.registry_endpoint(), subject, grants).await)
}

/// Register d2 > s2 > c2 > g2 beside the test district, and wait until intake
/// and dispatch hold it.
async fn second_district(m: &mut gridwork_e2e::Mesh) {
    use gpb::UnitKind::*;
    let mut last = 0;
    for (id, parent, kind, (w, h)) in [
        ("d2", "", District, (4.0, 4.0)),
        ("s2", "d2", Street, (4.0, 4.0)),
        ("c2", "s2", Community, (4.0, 4.0)),
        ("g2", "c2", Grid, (2.0, 2.0)),
    ] {
        let request = gpb::RegisterUnitRequest {
            command_id: uuid(),
            unit_id: id.into(),
            parent_id: parent.into(),
            kind: kind as i32,
            name: id.into(),
            boundary_geojson: cells(10.0, 0.0, w, h),
            special_site: 0,
        };
        last =
            m.registry.register_unit(request).await.expect("register").into_inner().position.map_or(0, |p| p.sequence);
    }
    m.intake_app.intake().grid().wait_for(last, Duration::from_secs(10)).await.expect("intake's copy");
    m.dispatch_app.dispatch().grid().wait_for(last, Duration::from_secs(10)).await.expect("dispatch's copy");
}

/// A report at cell (x, 0.5) of the test plane: x = 0.5 lies in grid g, 10.5 in g2.
fn report_at(x: f64, category: &str) -> ipb::ReportIncidentRequest {
    let mut report = gridwork_e2e::hazard_report(ipb::Source::GridWorker, x);
    if category == "fire" {
        let selected = ipb::attribute_value::Value::Selected(ipb::SelectedValues { values: vec!["no".into()] });
        report.category_code = category.into();
        report.attributes = vec![ipb::AttributeValue { code: "people-trapped".into(), value: Some(selected) }];
    }
    report
}

fn denied(result: Result<impl std::fmt::Debug, tonic::Status>, permission: &str, what: &str) {
    let status = result.expect_err(what);
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    assert!(status.message().contains(permission), "{what}: the refusal names {permission}: {status:?}");
}

async fn case_when_opened(m: &mut gridwork_e2e::Mesh, id: &str) -> pb::Case {
    gridwork_e2e::case_when_opened(&mut m.dispatch, id).await
}

fn owner(tier: pb::Tier, id: &str) -> Option<pb::Owner> {
    Some(pb::Owner { tier: tier as i32, id: id.into() })
}

#[tokio::test]
async fn a_grid_worker_reports_in_its_own_subtree_and_a_rider_anywhere_but_reads_only_its_own() {
    let mut m = mesh(monday_ten()).await;
    second_district(&mut m).await;
    let js = async_nats::jetstream::new(async_nats::connect(m.nats.url()).await.expect("nats"));

    let mut worker = intake_as(&m, "worker-g", &["grid-worker:g"]).await;
    worker.report_incident(report_at(0.5, "fire-hazard")).await.expect("in its own grid");
    let before = stream_messages(&js).await;
    denied(worker.report_incident(report_at(10.5, "fire-hazard")).await, "intake.report", "a point in g2");
    let mut by_address = report_at(0.5, "fire-hazard");
    by_address.location = Some(ipb::report_incident_request::Location::Address(ipb::ResolvedAddress {
        text: "building 3, g2".into(),
        unit_id: "g2".into(),
    }));
    denied(worker.report_incident(by_address).await, "intake.report", "an address in g2");
    assert_eq!(stream_messages(&js).await, before, "a refused report wrote something");

    // A community reports anywhere in its subtree; a neighbour's street not.
    let mut community = intake_as(&m, "community-c", &["community:c"]).await;
    community.report_incident(report_at(0.5, "fire-hazard")).await.expect("a grid of its community");
    let mut street2 = intake_as(&m, "street-s2", &["street:s2"]).await;
    denied(street2.report_incident(report_at(0.5, "fire-hazard")).await, "intake.report", "s2 in g");
    street2.report_incident(report_at(10.5, "fire-hazard")).await.expect("s2 in its own g2");

    // A rider reports wherever its route takes it, and reads only its own.
    let mut rider = intake_as(&m, "rider-7", &["rider"]).await;
    let as_rider = |mut r: ipb::ReportIncidentRequest| {
        r.source = ipb::Source::RiderInformant as i32;
        r
    };
    // A rider reports as a rider: not as a grid worker, nor with an urgency.
    denied(rider.report_incident(report_at(11.5, "fire-hazard")).await, "intake.report", "a rider as a grid worker");
    let urgent = ipb::ReportIncidentRequest {
        urgency: ipb::Priority::Urgent as i32,
        ..as_rider(report_at(11.5, "fire-hazard"))
    };
    denied(rider.report_incident(urgent).await, "intake.report", "a rider setting the urgency");
    let own = rider.report_incident(as_rider(report_at(11.5, "fire-hazard"))).await.expect("rider in g2").into_inner();
    let someone_elses = m.intake.report_incident(report_at(0.5, "fire-hazard")).await.expect("report").into_inner();
    let got = rider
        .get_incident(ipb::GetIncidentRequest {
            incident_id: own.incident_id.clone(),
            min_position: own.position.map_or(0, |p| p.sequence),
        })
        .await
        .expect("its own report")
        .into_inner()
        .incident
        .expect("incident");
    let names: Vec<_> = got.history.iter().map(|h| h.principal.as_str()).collect();
    assert!(names.iter().all(|p| ["rider-7", ""].contains(p)), "staff names are not a rider's to read: {names:?}");
    // Triage claims it: the rider sees that it was claimed, not by whom.
    let claimed = m
        .intake
        .claim_incident(ipb::ClaimIncidentRequest {
            command_id: uuid(),
            incident_id: own.incident_id.clone(),
            break_lock: false,
        })
        .await
        .expect("claim")
        .into_inner();
    let got = rider
        .get_incident(ipb::GetIncidentRequest {
            incident_id: own.incident_id.clone(),
            min_position: claimed.position.map_or(0, |p| p.sequence),
        })
        .await
        .expect("its own report")
        .into_inner()
        .incident
        .expect("incident");
    assert!(got.history.iter().any(|h| h.event_type == "claimed"), "{:?}", got.history);
    assert!(got.claimed_by.is_empty(), "who claimed it: {}", got.claimed_by);
    assert!(
        got.history.iter().all(|h| !h.summary.contains("tester") && !h.principal.contains("tester")),
        "a staff name reached the rider: {:?}",
        got.history
    );
    denied(
        rider
            .get_incident(ipb::GetIncidentRequest {
                incident_id: someone_elses.incident_id.clone(),
                min_position: someone_elses.position.map_or(0, |p| p.sequence),
            })
            .await,
        "intake.read",
        "another's report",
    );
    let listed = rider
        .list_incidents(ipb::ListIncidentsRequest { limit: 100, ..Default::default() })
        .await
        .expect("list")
        .into_inner()
        .incidents;
    let ids: Vec<_> = listed.iter().map(|i| i.incident_id.as_str()).collect();
    assert_eq!(ids, [own.incident_id.as_str()], "a rider lists only its own reports");
    assert!(listed.iter().all(|i| i.claimed_by.is_empty()), "the list shows who claimed it");
    let all = m.intake.list_incidents(ipb::ListIncidentsRequest { limit: 100, ..Default::default() }).await;
    assert_eq!(all.expect("list").into_inner().incidents.len(), 5, "staff list every report");
}

#[tokio::test]
async fn owners_act_in_their_subtree_and_departments_only_as_themselves() {
    let mut m = mesh(monday_ten()).await;
    second_district(&mut m).await;
    // A fire in g is accepted at once, owned by street s, and summons the
    // fire brigade, the police and emergency medical.
    let fire = m.intake.report_incident(report_at(0.5, "fire")).await.expect("fire").into_inner().incident_id;
    let case = case_when_opened(&mut m, &fire).await;
    assert_eq!(case.owner, owner(pb::Tier::Street, "s"));
    let timeline = case.timeline.len();

    // Departments answer only their own summonses.
    let mut police = dispatch_as(&m, "police-desk", &["department:police"]).await;
    let for_duty = |department: &str| pb::ReportForDutyRequest {
        command_id: uuid(),
        case_id: fire.clone(),
        department: department.into(),
    };
    denied(police.report_for_duty(for_duty("fire-brigade")).await, "dispatch.summons", "the brigade's summons");
    denied(
        police
            .complete_summons(pb::CompleteSummonsRequest {
                command_id: uuid(),
                case_id: fire.clone(),
                department: "fire-brigade".into(),
                notes: "done".into(),
            })
            .await,
        "dispatch.summons",
        "completing the brigade's summons",
    );
    police.report_for_duty(for_duty("police")).await.expect("its own summons");

    // The street blows the whistle for its own case; another street cannot,
    // acting as s, nor the grid worker of a grid beneath it (no whistle).
    let whistle = |acting: &str| pb::BlowWhistleRequest {
        command_id: uuid(),
        case_id: fire.clone(),
        acting_as: owner(pb::Tier::Street, acting),
        departments: vec!["urban-management".into()],
    };
    let mut street2 = dispatch_as(&m, "street-s2", &["street:s2"]).await;
    denied(street2.blow_whistle(whistle("s")).await, "dispatch.whistle", "s2 acting as s");
    let mut street = dispatch_as(&m, "street-s", &["street:s"]).await;
    street.blow_whistle(whistle("s")).await.expect("s blows the whistle on its own case");

    // Owner actions: the owner's own subtree only (s acts as itself; the
    // head of g2 may not act as s; a head of g acting as s is out of its reach).
    let ack = |acting: Option<pb::Owner>| pb::AcknowledgeCaseRequest {
        command_id: uuid(),
        case_id: fire.clone(),
        acting_as: acting,
    };
    let mut head_g2 = dispatch_as(&m, "head-g2", &["grid-head:g2"]).await;
    denied(head_g2.acknowledge_case(ack(owner(pb::Tier::Street, "s"))).await, "dispatch.handle", "g2 as s");
    let mut head_g = dispatch_as(&m, "head-g", &["grid-head:g"]).await;
    denied(head_g.acknowledge_case(ack(owner(pb::Tier::Street, "s"))).await, "dispatch.handle", "g as its street");
    denied(street2.acknowledge_case(ack(owner(pb::Tier::Grid, "g"))).await, "dispatch.handle", "s2 as g");
    let by_community =
        dispatch_as(&m, "community-c", &["community:c"]).await.acknowledge_case(ack(owner(pb::Tier::Grid, "g"))).await;
    let status = by_community.expect_err("c may act as g, but g does not own the case");
    assert_eq!(status.code(), Code::FailedPrecondition, "past the scope, the case's own rule: {status:?}");
    // The reporter's rating is recorded by the call-back, not by the grid
    // that handled the case (回访 is independent of the handlers).
    let rate = pb::VerifyCaseRequest {
        command_id: uuid(),
        case_id: fire.clone(),
        rating: pb::Rating::Satisfied as i32,
        solved: pb::ResolutionAnswer::Solved as i32,
        by: "reporter".into(),
        comment: String::new(),
    };
    let mut worker_g = dispatch_as(&m, "worker-g", &["grid-worker:g"]).await;
    denied(worker_g.verify_case(rate).await, "dispatch.rate", "a worker of the case's grid rating it");

    let acked = street.acknowledge_case(ack(owner(pb::Tier::Street, "s"))).await.expect("the owner acknowledges");
    let min_position = acked.into_inner().position.map_or(0, |p| p.sequence);

    // The refusals and the precondition wrote nothing: the case moved only
    // by the police, the whistle and the acknowledgement.
    let after = m
        .dispatch
        .get_case(pb::GetCaseRequest { case_id: fire.clone(), min_position, ..Default::default() })
        .await
        .expect("get")
        .into_inner()
        .case
        .expect("case");
    let by: Vec<_> = after.timeline[timeline..].iter().map(|t| (t.principal.as_str(), t.event_type.as_str())).collect();
    assert_eq!(
        by,
        [("police-desk", "department_reported"), ("street-s", "whistle_blown"), ("street-s", "acknowledged")],
        "only the allowed callers' steps"
    );
}

#[tokio::test]
async fn a_street_or_community_acts_as_a_grid_beneath_it_and_no_other() {
    let mut m = mesh(monday_ten()).await;
    second_district(&mut m).await;
    let hazard = m.intake.report_incident(report_at(0.5, "fire-hazard")).await.expect("report").into_inner();
    m.intake
        .accept_incident(ipb::AcceptIncidentRequest { command_id: uuid(), incident_id: hazard.incident_id.clone() })
        .await
        .expect("accept");
    let case = case_when_opened(&mut m, &hazard.incident_id).await;
    assert_eq!(case.owner, owner(pb::Tier::Grid, "g"));
    let ack = || pb::AcknowledgeCaseRequest {
        command_id: uuid(),
        case_id: hazard.incident_id.clone(),
        acting_as: owner(pb::Tier::Grid, "g"),
    };
    let mut community2 = dispatch_as(&m, "community-c2", &["community:c2"]).await;
    denied(community2.acknowledge_case(ack()).await, "dispatch.handle", "c2 as g");
    let mut head_g2 = dispatch_as(&m, "head-g2", &["grid-head:g2"]).await;
    denied(head_g2.acknowledge_case(ack()).await, "dispatch.handle", "g2 as g");
    // The street steps in for its grid (the grid's head is away).
    let mut street = dispatch_as(&m, "street-s", &["street:s"]).await;
    street.acknowledge_case(ack()).await.expect("s acts as g, beneath it");
    let mut community = dispatch_as(&m, "community-c", &["community:c"]).await;
    community
        .record_progress(pb::RecordProgressRequest {
            command_id: uuid(),
            case_id: hazard.incident_id.clone(),
            acting_as: owner(pb::Tier::Grid, "g"),
            notes: "building manager called".into(),
        })
        .await
        .expect("c acts as g, beneath it");
    denied(
        community2
            .resolve_case(pb::ResolveCaseRequest {
                command_id: uuid(),
                case_id: hazard.incident_id.clone(),
                acting_as: owner(pb::Tier::Grid, "g"),
                notes: "done".into(),
            })
            .await,
        "dispatch.handle",
        "c2 resolving as g",
    );
}

#[tokio::test]
async fn a_street_keeps_the_staff_of_its_own_subtree_only() {
    let mut m = mesh(monday_ten()).await;
    second_district(&mut m).await;
    let add = |unit: &str| gpb::AddWorkerRequest {
        command_id: uuid(),
        unit_id: unit.into(),
        person_id: format!("p-{unit}-1"),
        name: "Li Na".into(),
        role: gpb::WorkerRole::FullTime as i32,
    };
    let mut street2 = registry_as(&m, "street-s2", &["street:s2"]).await;
    denied(street2.add_worker(add("g")).await, "registry.staff", "s2 staffing g");
    denied(
        street2
            .vacate_head(gpb::VacateHeadRequest {
                command_id: uuid(),
                unit_id: "g".into(),
                person_id: "p-head-g".into(),
                departure: gpb::HeadDeparture::Resigned as i32,
                note: "moved away".into(),
            })
            .await,
        "registry.staff",
        "s2 vacating g's head",
    );
    street2.add_worker(add("g2")).await.expect("s2 staffs its own grid");
    let mut community = registry_as(&m, "community-c", &["community:c"]).await;
    community.add_worker(add("g")).await.expect("c staffs its grid");
    let staff = m
        .registry
        .get_unit(gpb::GetUnitRequest { unit_id: "g".into(), ..Default::default() })
        .await
        .expect("get")
        .into_inner();
    let head = staff.unit.expect("unit").head.expect("head in post");
    assert_eq!(head.person_id, "p-head-g", "the refused vacate changed nothing");
}

#[tokio::test]
async fn a_token_whose_grant_misstates_its_scope_is_refused_whole() {
    let m = mesh(monday_ten()).await;
    for grants in [&["dispatcher:s"][..], &["grid-worker"], &["department"], &["rider:r7"], &["hotline", "street"]] {
        let mut intake = intake_as(&m, "odd", grants).await;
        let status = intake.get_catalogue(ipb::GetCatalogueRequest::default()).await.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{grants:?}: {status:?}");
    }
}
