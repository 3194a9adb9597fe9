//! Issue 4's end-to-end flows over the whole mesh: real nats-server, real SQLite,
//! one shared manual clock.

use std::time::{Duration, Instant};

use gridwork_e2e::{STEP, X0, Y0, dispatch_app, mesh, uuid};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::intake::v1 as intake_pb;
use tonic::Code;

/// Monday 2026-03-02 10:00 in UTC+8.
fn monday_ten() -> i64 {
    (time::macros::datetime!(2026-03-02 10:00 +8).unix_timestamp_nanos() / 1_000_000) as i64
}

const MINUTE: i64 = 60_000;

fn owner(tier: pb::Tier, id: &str) -> Option<pb::Owner> {
    Some(pb::Owner { tier: tier as i32, id: id.into() })
}

fn report(category: &str) -> intake_pb::ReportIncidentRequest {
    let selected =
        |v: &str| intake_pb::attribute_value::Value::Selected(intake_pb::SelectedValues { values: vec![v.into()] });
    let attributes = match category {
        "fire" => vec![intake_pb::AttributeValue { code: "people-trapped".into(), value: Some(selected("no")) }],
        _ => {
            vec![intake_pb::AttributeValue { code: "hazard".into(), value: Some(selected("e-bike-charging-indoors")) }]
        }
    };
    intake_pb::ReportIncidentRequest {
        command_id: uuid(),
        source: intake_pb::Source::RiderInformant as i32,
        category_code: category.into(),
        location: Some(intake_pb::report_incident_request::Location::Point(intake_pb::GeoPoint {
            lat: Y0 + 0.5 * STEP,
            lon: X0 + 0.5 * STEP,
        })),
        description: "e-bikes charging in the stairwell of building 3".into(),
        attributes,
        contact: Some(intake_pb::Contact { name: "Wang Changyin".into(), phone: "13800000000".into() }),
        ..Default::default()
    }
}

async fn case_when_opened(m: &mut gridwork_e2e::Mesh, id: &str) -> pb::Case {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match m.dispatch.get_case(pb::GetCaseRequest { case_id: id.into(), min_position: 0 }).await {
            Ok(r) => return r.into_inner().case.expect("case"),
            Err(s) if s.code() == Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("case {id} never opened: {s:?}"),
        }
    }
}

async fn get(m: &mut gridwork_e2e::Mesh, id: &str, min_position: u64) -> pb::Case {
    m.dispatch
        .get_case(pb::GetCaseRequest { case_id: id.into(), min_position })
        .await
        .expect("get")
        .into_inner()
        .case
        .expect("case")
}

fn pos<T>(p: Option<T>) -> u64
where
    T: Into<Option<pb::CommitPosition>>,
{
    p.and_then(Into::into).map_or(0, |p: pb::CommitPosition| p.sequence)
}

#[tokio::test]
async fn a_rider_report_of_a_fire_hazard_goes_up_the_ladder_and_closes_only_when_the_reporter_is_satisfied() {
    let mut m = mesh(monday_ten()).await;
    // Reported by a rider, placed in its micro-grid, accepted in triage.
    let reported = m.intake.report_incident(report("fire-hazard")).await.expect("report").into_inner();
    let id = reported.incident_id.clone();
    let incident = m
        .intake
        .get_incident(intake_pb::GetIncidentRequest {
            incident_id: id.clone(),
            min_position: reported.position.expect("p").sequence,
        })
        .await
        .expect("incident")
        .into_inner()
        .incident
        .expect("incident");
    assert_eq!(incident.grid_path.expect("path").micro_grid_id, "m1");
    m.intake
        .accept_incident(intake_pb::AcceptIncidentRequest { command_id: uuid(), incident_id: id.clone() })
        .await
        .expect("accept");

    // Dispatch opens the case and routes it to the grid head, saying why.
    let case = case_when_opened(&mut m, &id).await;
    assert_eq!(case.owner, owner(pb::Tier::Grid, "g"));
    assert_eq!(case.routing.as_ref().map(|r| r.rule_id.as_str()), Some("fire-hazard"));
    assert_eq!(case.pending_deadlines.len(), 3);

    // The acknowledge deadline (2 working hours) passes: escalated to the community.
    m.clock.advance_ms(121 * MINUTE);
    assert_eq!(m.dispatch_app.dispatch().fire_due_deadlines().await.expect("tick"), 1);
    let settle = m.dispatch_app.dispatch().projection().position() + 1;
    let case = get(&mut m, &id, settle).await;
    assert_eq!(case.owner, owner(pb::Tier::Community, "c"));
    assert_eq!(case.breaches, 1);

    // The community passes it to the street, which acknowledges and blows the whistle.
    m.dispatch
        .assign_case(pb::AssignCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            expected_owner: owner(pb::Tier::Community, "c"),
            to: owner(pb::Tier::Street, "s"),
        })
        .await
        .expect("to the street");
    let street = owner(pb::Tier::Street, "s");
    m.dispatch
        .acknowledge_case(pb::AcknowledgeCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: street.clone(),
        })
        .await
        .expect("ack");
    let whistle = m
        .dispatch
        .blow_whistle(pb::BlowWhistleRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: street.clone(),
            departments: vec!["fire-brigade".into(), "urban-management".into()],
        })
        .await
        .expect("whistle")
        .into_inner();
    assert_eq!(whistle.report_by_unix_ms, monday_ten() + 121 * MINUTE + 30 * MINUTE);
    for department in ["fire-brigade", "urban-management"] {
        m.dispatch
            .report_for_duty(pb::ReportForDutyRequest {
                command_id: uuid(),
                case_id: id.clone(),
                department: department.into(),
            })
            .await
            .expect("report for duty");
    }
    m.dispatch
        .record_progress(pb::RecordProgressRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: street.clone(),
            notes: "on site".into(),
        })
        .await
        .expect("progress");
    m.dispatch
        .resolve_case(pb::ResolveCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: street.clone(),
            notes: "bikes moved, socket removed".into(),
        })
        .await
        .expect("resolve");

    // The reporter is unsatisfied: reopened, fresh deadlines, back to the street.
    let verdict = m
        .dispatch
        .verify_case(pb::VerifyCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            rating: pb::Rating::Unsatisfied as i32,
            by: "reporter".into(),
            comment: "they are back".into(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(verdict.outcome, "reopened");
    let case = get(&mut m, &id, pos(Some(verdict.position))).await;
    assert_eq!((case.status.as_str(), case.open311_status.as_str()), ("assigned", "open"));
    assert_eq!(case.owner, street);
    m.dispatch
        .acknowledge_case(pb::AcknowledgeCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: street.clone(),
        })
        .await
        .expect("ack");
    m.dispatch
        .resolve_case(pb::ResolveCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: street.clone(),
            notes: "charging point installed outside".into(),
        })
        .await
        .expect("resolve");
    let verdict = m
        .dispatch
        .verify_case(pb::VerifyCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            rating: pb::Rating::Satisfied as i32,
            by: "reporter".into(),
            comment: "".into(),
        })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(verdict.outcome, "closed");

    let case = get(&mut m, &id, pos(Some(verdict.position))).await;
    assert_eq!((case.status.as_str(), case.open311_status.as_str()), ("closed", "closed"));
    let steps: Vec<&str> = case.timeline.iter().map(|t| t.event_type.as_str()).collect();
    assert_eq!(
        steps,
        [
            "opened",
            "assigned",
            "sla_breached",
            "assigned",
            "assigned",
            "acknowledged",
            "whistle_blown",
            "department_reported",
            "department_reported",
            "progress",
            "resolved",
            "verified",
            "reopened",
            "assigned",
            "acknowledged",
            "resolved",
            "verified",
            "closed"
        ]
    );
    assert!(case.timeline[1].summary.contains("grid g (routed)"), "{:?}", case.timeline[1]);
    assert!(case.timeline[3].summary.contains("community c (escalated)"), "{:?}", case.timeline[3]);
}

#[tokio::test]
async fn an_escalation_happens_exactly_once_across_a_dispatch_restart_and_concurrent_schedulers() {
    let mut m = mesh(monday_ten()).await;
    let reported = m.intake.report_incident(report("fire-hazard")).await.expect("report").into_inner();
    let id = reported.incident_id.clone();
    m.intake
        .accept_incident(intake_pb::AcceptIncidentRequest { command_id: uuid(), incident_id: id.clone() })
        .await
        .expect("accept");
    case_when_opened(&mut m, &id).await;

    // The deadline passes while dispatch is down: it is killed before its scheduler runs.
    m.clock.advance_ms(121 * MINUTE);
    let restarted = dispatch_app_on(&m).await;
    let other_replica = dispatch_app_on(&m).await;
    let (a, b) = tokio::join!(restarted.dispatch().fire_due_deadlines(), other_replica.dispatch().fire_due_deadlines());
    let fired = a.expect("a") + b.expect("b") + restarted.dispatch().fire_due_deadlines().await.expect("again");
    assert_eq!(fired, 1, "one escalation between two replicas and a repeat");
    let settle = restarted.dispatch().projection().position();
    let case = get(&mut m, &id, settle).await;
    let breaches = case.timeline.iter().filter(|t| t.event_type == "sla_breached").count();
    assert_eq!(breaches, 1);
    assert_eq!(case.owner, owner(pb::Tier::Community, "c"));
}

async fn dispatch_app_on(m: &gridwork_e2e::Mesh) -> gridwork_dispatch::App {
    dispatch_app(&m.nats, &m.dispatch_db, &m.clock).await
}

#[tokio::test]
async fn two_dispatchers_assigning_at_once_leave_exactly_one_owner() {
    let mut m = mesh(monday_ten()).await;
    let reported = m.intake.report_incident(report("fire-hazard")).await.expect("report").into_inner();
    let id = reported.incident_id.clone();
    m.intake
        .accept_incident(intake_pb::AcceptIncidentRequest { command_id: uuid(), incident_id: id.clone() })
        .await
        .expect("accept");
    case_when_opened(&mut m, &id).await;
    let assign = |to: &str| pb::AssignCaseRequest {
        command_id: uuid(),
        case_id: id.clone(),
        expected_owner: owner(pb::Tier::Grid, "g"),
        to: owner(pb::Tier::Department, to),
    };
    let (mut a, mut b) = (m.dispatch.clone(), m.dispatch.clone());
    let (ra, rb) = tokio::join!(a.assign_case(assign("police")), b.assign_case(assign("housing")));
    let wins = [ra.is_ok(), rb.is_ok()].into_iter().filter(|w| *w).count();
    assert_eq!(wins, 1, "{ra:?} {rb:?}");
    // The read model must have applied the winner's commit before it is read.
    let settle = [&ra, &rb]
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .filter_map(|r| r.get_ref().position.as_ref().map(|p| p.sequence))
        .max()
        .expect("the winner's position");
    let loser = ra.err().or(rb.err()).expect("a loser");
    assert!(matches!(loser.code(), Code::FailedPrecondition | Code::Aborted), "{loser:?}");
    let case = get(&mut m, &id, settle).await;
    let assigned = case.timeline.iter().filter(|t| t.summary.contains("reassigned")).count();
    assert_eq!(assigned, 1, "one reassignment recorded");
}

#[tokio::test]
async fn a_fire_skips_triage_and_summons_several_departments_at_once() {
    let mut m = mesh(monday_ten()).await;
    let reported = m.intake.report_incident(report("fire")).await.expect("report").into_inner();
    assert!(reported.accepted);
    let case = case_when_opened(&mut m, &reported.incident_id).await;
    assert!(case.emergency);
    assert_eq!(case.owner, owner(pb::Tier::Street, "s"));
    let mut summons: Vec<_> =
        case.pending_deadlines.iter().filter(|d| d.id.starts_with('w')).map(|d| d.id.as_str()).collect();
    summons.sort();
    assert_eq!(summons, ["w1:emergency-medical", "w1:fire-brigade", "w1:police"]);
}

#[tokio::test]
async fn invalid_transitions_and_bad_input_are_refused_and_write_nothing() {
    let mut m = mesh(monday_ten()).await;
    let reported = m.intake.report_incident(report("fire-hazard")).await.expect("report").into_inner();
    let id = reported.incident_id.clone();
    m.intake
        .accept_incident(intake_pb::AcceptIncidentRequest { command_id: uuid(), incident_id: id.clone() })
        .await
        .expect("accept");
    let before = case_when_opened(&mut m, &id).await;
    let grid = owner(pb::Tier::Grid, "g");
    let e = m
        .dispatch
        .resolve_case(pb::ResolveCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: grid.clone(),
            notes: "done".into(),
        })
        .await
        .expect_err("not acknowledged");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("assigned"), "names the current state: {}", e.message());
    let e = m
        .dispatch
        .verify_case(pb::VerifyCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            rating: 1,
            by: "neighbour".into(),
            comment: "".into(),
        })
        .await
        .expect_err("only reporter or staff");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = m
        .dispatch
        .acknowledge_case(pb::AcknowledgeCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: owner(pb::Tier::Street, "s"),
        })
        .await
        .expect_err("not the owner");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = m
        .dispatch
        .blow_whistle(pb::BlowWhistleRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: grid.clone(),
            departments: vec![],
        })
        .await
        .expect_err("bad input");
    assert_eq!(e.code(), Code::InvalidArgument);
    let e = m
        .dispatch
        .hand_back_case(pb::HandBackCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: grid.clone(),
            reason: "not mine".into(),
        })
        .await
        .expect_err("nobody to hand back to");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let after = get(&mut m, &id, 0).await;
    assert_eq!(after.timeline.len(), before.timeline.len(), "nothing written");
    drop(m.intake_app);
}
