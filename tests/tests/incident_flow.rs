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
    gridwork_e2e::case_when_opened(&mut m.dispatch, id).await
}

/// A fire hazard reported in grid g, accepted by triage: its id and the case
/// dispatch opened for it.
async fn accepted_fire_hazard(m: &mut gridwork_e2e::Mesh) -> (String, pb::Case) {
    let id = m.intake.report_incident(report("fire-hazard")).await.expect("report").into_inner().incident_id;
    m.intake
        .accept_incident(intake_pb::AcceptIncidentRequest { command_id: uuid(), incident_id: id.clone() })
        .await
        .expect("accept");
    let case = case_when_opened(m, &id).await;
    (id, case)
}

async fn get(m: &mut gridwork_e2e::Mesh, id: &str, min_position: u64) -> pb::Case {
    m.dispatch
        .get_case(pb::GetCaseRequest { case_id: id.into(), min_position, ..Default::default() })
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
    let mut reported_at = 0;
    for department in ["fire-brigade", "urban-management"] {
        let r = m
            .dispatch
            .report_for_duty(pb::ReportForDutyRequest {
                command_id: uuid(),
                case_id: id.clone(),
                department: department.into(),
            })
            .await
            .expect("report for duty")
            .into_inner();
        reported_at = pos(Some(r.position));
    }
    // The case cannot resolve while a summoned department is still at work.
    let e = m
        .dispatch
        .resolve_case(pb::ResolveCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: street.clone(),
            notes: "too soon".into(),
        })
        .await
        .expect_err("summonses outstanding");
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("fire-brigade, urban-management"), "{}", e.message());
    let listed = m
        .dispatch
        .list_summonses(pb::ListSummonsesRequest {
            department: "fire-brigade".into(),
            include_finished: false,
            limit: 10,
            min_position: reported_at,
            ..Default::default()
        })
        .await
        .expect("the brigade's queue")
        .into_inner()
        .summonses;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].case_id.as_str(), listed[0].status), (id.as_str(), pb::SummonsStatus::Reported as i32));
    m.dispatch
        .complete_summons(pb::CompleteSummonsRequest {
            command_id: uuid(),
            case_id: id.clone(),
            department: "fire-brigade".into(),
            notes: "extinguisher and socket checked".into(),
        })
        .await
        .expect("complete");
    m.dispatch
        .release_summons(pb::ReleaseSummonsRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: street.clone(),
            department: "urban-management".into(),
            reason: "no street furniture involved".into(),
        })
        .await
        .expect("release");
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
            solved: pb::ResolutionAnswer::NotSolved as i32,
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
            solved: pb::ResolutionAnswer::Solved as i32,
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
            "summons_completed",
            "summons_released",
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
    let ratings: Vec<_> = case.ratings.iter().map(|r| (r.round, r.rating, r.solved)).collect();
    assert_eq!(
        ratings,
        [
            (1, pb::Rating::Unsatisfied as i32, pb::ResolutionAnswer::NotSolved as i32),
            (2, pb::Rating::Satisfied as i32, pb::ResolutionAnswer::Solved as i32)
        ]
    );
    assert_eq!((case.round, case.close_outcome), (2, pb::CloseOutcome::Rated as i32));
}

#[tokio::test]
async fn an_escalation_happens_exactly_once_across_a_dispatch_restart_and_concurrent_schedulers() {
    let mut m = mesh(monday_ten()).await;
    let (id, _) = accepted_fire_hazard(&mut m).await;

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
    let (id, _) = accepted_fire_hazard(&mut m).await;
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
        case.pending_deadlines.iter().filter(|d| d.id.starts_with("summons:")).map(|d| d.id.as_str()).collect();
    summons.sort();
    assert_eq!(summons, ["summons:1:emergency-medical", "summons:1:fire-brigade", "summons:1:police"]);
    let departments: Vec<_> = case.summonses.iter().map(|s| (s.department.as_str(), s.status)).collect();
    let summoned = pb::SummonsStatus::Summoned as i32;
    assert_eq!(departments, [("emergency-medical", summoned), ("fire-brigade", summoned), ("police", summoned)]);
    // The fire brigade reports for duty; the others let the window pass: each
    // has a breach on its record and the district supervises the case (督办).
    m.dispatch
        .report_for_duty(pb::ReportForDutyRequest {
            command_id: uuid(),
            case_id: reported.incident_id.clone(),
            department: "fire-brigade".into(),
        })
        .await
        .expect("report for duty");
    m.clock.advance_ms(31 * 60_000);
    let fired = m.dispatch_app.dispatch().fire_due_deadlines().await.expect("tick");
    assert!(fired >= 2, "the two summons windows fired: {fired}");
    let give_up = Instant::now() + Duration::from_secs(10);
    let case = loop {
        let case = get(&mut m, &reported.incident_id, 0).await;
        let summons_breaches = case.timeline.iter().filter(|t| t.summary.contains("deadline summons:")).count();
        if case.supervised && summons_breaches == 2 {
            break case;
        }
        assert!(Instant::now() < give_up, "not supervised with two breaches: {:?}", case.timeline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let missed: Vec<_> =
        case.timeline.iter().filter(|t| t.summary.contains("deadline summons:")).map(|t| t.summary.as_str()).collect();
    assert!(missed.iter().all(|s| !s.contains("fire-brigade")), "the brigade reported: {missed:?}");
    assert!(
        case.timeline
            .iter()
            .any(|t| t.event_type == "supervision_opened" && t.summary.contains("did not report for duty"))
    );
}

#[tokio::test]
async fn invalid_transitions_and_bad_input_are_refused_and_write_nothing() {
    let mut m = mesh(monday_ten()).await;
    let (id, before) = accepted_fire_hazard(&mut m).await;
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
            solved: pb::ResolutionAnswer::Solved as i32,
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
            acting_as: owner(pb::Tier::Community, "c"),
            reason: "not mine".into(),
        })
        .await
        .expect_err("only the owner hands back");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = m
        .dispatch
        .verify_case(pb::VerifyCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            rating: pb::Rating::Satisfied as i32,
            by: "reporter".into(),
            comment: "".into(),
            solved: 0,
        })
        .await
        .expect_err("solved? must be answered");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("solved"), "{}", e.message());
    let e = m
        .dispatch
        .assign_case(pb::AssignCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            expected_owner: grid.clone(),
            to: grid.clone(),
        })
        .await
        .expect_err("already the owner");
    assert_eq!(e.code(), Code::FailedPrecondition);
    // The summons RPCs name each bad field.
    let e = m
        .dispatch
        .blow_whistle(pb::BlowWhistleRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: grid.clone(),
            departments: vec!["police".into(), "police".into()],
        })
        .await
        .expect_err("named twice");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("departments[1]"), "{}", e.message());
    let e = m
        .dispatch
        .complete_summons(pb::CompleteSummonsRequest {
            command_id: "not-a-uuid".into(),
            case_id: id.clone(),
            department: "".into(),
            notes: "".into(),
        })
        .await
        .expect_err("bad input");
    assert_eq!(e.code(), Code::InvalidArgument);
    for field in ["command_id", "department", "notes"] {
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    let e = m
        .dispatch
        .list_summonses(pb::ListSummonsesRequest {
            department: "".into(),
            include_finished: false,
            limit: 0,
            min_position: 0,
            ..Default::default()
        })
        .await
        .expect_err("no department");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("department"), "{}", e.message());
    let after = get(&mut m, &id, 0).await;
    assert_eq!(after.timeline.len(), before.timeline.len(), "nothing written");
    drop(m.intake_app);
}

/// Intake's view of `id`, once its projection has it.
async fn incident(m: &mut gridwork_e2e::Mesh, id: &str) -> intake_pb::Incident {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match m.intake.get_incident(intake_pb::GetIncidentRequest { incident_id: id.into(), min_position: 0 }).await {
            Ok(r) => return r.into_inner().incident.expect("incident"),
            Err(s) if s.code() == Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(s) => panic!("incident {id}: {s:?}"),
        }
    }
}

/// Wait until intake shows `id` in `status` (it follows dispatch's case
/// through its own reactor on `DISPATCH`).
async fn intake_status(m: &mut gridwork_e2e::Mesh, id: &str, status: intake_pb::IncidentStatus) -> intake_pb::Incident {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let i = incident(m, id).await;
        if i.status == status as i32 {
            return i;
        }
        assert!(Instant::now() < deadline, "intake never showed {id} {status:?}: {i:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `count` me-toos are linked on `original` (the linker's work,
/// on the aggregate itself), then accept it in triage; its case once opened.
async fn accept_once_linked(m: &mut gridwork_e2e::Mesh, original: &str, count: usize) -> pb::Case {
    let incidents = m.intake_app.intake().incidents().clone();
    // The linker links one at a time: a hundred take a while on a busy,
    // unoptimised build.
    let deadline = Instant::now() + Duration::from_secs(120);
    while incidents.load_current(original).await.expect("load").state.linked.len() < count {
        assert!(Instant::now() < deadline, "{count} me-toos were never all linked on {original}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    m.intake
        .accept_incident(intake_pb::AcceptIncidentRequest { command_id: uuid(), incident_id: original.into() })
        .await
        .expect("accept");
    case_when_opened(m, original).await
}

/// Wait until `report` is among the reports linked to `case`.
async fn linked_to_case(m: &mut gridwork_e2e::Mesh, case: &str, report: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shown = get(m, case, 0).await;
        if shown.linked_reports.iter().any(|r| r.report_id == report) {
            return;
        }
        assert!(Instant::now() < deadline, "{report}'s account never reached the case of {case}: {shown:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Resolve an open case as its owner and rate it satisfied: it closes.
async fn resolve_and_close(m: &mut gridwork_e2e::Mesh, id: &str) {
    resolve(m, id).await;
    let verdict = m
        .dispatch
        .verify_case(pb::VerifyCaseRequest {
            command_id: uuid(),
            case_id: id.into(),
            rating: pb::Rating::Satisfied as i32,
            by: "reporter".into(),
            comment: String::new(),
            solved: pb::ResolutionAnswer::Solved as i32,
        })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!(verdict.outcome, "closed");
}

/// Acknowledge and resolve an open case as its owner, every summoned
/// department having reported and completed first (the rating is awaited).
async fn resolve(m: &mut gridwork_e2e::Mesh, id: &str) {
    let case = case_when_opened(m, id).await;
    let acting_as = case.owner.clone();
    for s in case.summonses.iter().filter(|s| s.status == pb::SummonsStatus::Summoned as i32) {
        m.dispatch
            .report_for_duty(pb::ReportForDutyRequest {
                command_id: uuid(),
                case_id: id.into(),
                department: s.department.clone(),
            })
            .await
            .expect("report for duty");
        m.dispatch
            .complete_summons(pb::CompleteSummonsRequest {
                command_id: uuid(),
                case_id: id.into(),
                department: s.department.clone(),
                notes: "done on site".into(),
            })
            .await
            .expect("complete");
    }
    m.dispatch
        .acknowledge_case(pb::AcknowledgeCaseRequest {
            command_id: uuid(),
            case_id: id.into(),
            acting_as: acting_as.clone(),
        })
        .await
        .expect("ack");
    m.dispatch
        .resolve_case(pb::ResolveCaseRequest {
            command_id: uuid(),
            case_id: id.into(),
            acting_as,
            notes: "put out; building checked".into(),
        })
        .await
        .expect("resolve");
}

fn fire_at(lat: f64, lon: f64) -> intake_pb::ReportIncidentRequest {
    let yes = intake_pb::attribute_value::Value::Selected(intake_pb::SelectedValues { values: vec!["yes".into()] });
    intake_pb::ReportIncidentRequest {
        category_code: "fire".into(),
        location: Some(intake_pb::report_incident_request::Location::Point(intake_pb::GeoPoint { lat, lon })),
        description: "smoke from a third-floor window, someone calling for help".into(),
        attributes: vec![intake_pb::AttributeValue { code: "people-trapped".into(), value: Some(yes) }],
        ..report("fire")
    }
}

/// Issue 9, item 1: a second, separate fire 30 m from an open one used to be
/// linked as a "me too" and nobody was dispatched. Emergencies are never
/// merged: it is dispatched and flagged. Intake follows the first case to its
/// closure, and a report next to a closed incident is a new incident, noted as
/// a recurrence.
#[tokio::test]
async fn a_second_fire_nearby_is_dispatched_and_flagged_and_intake_follows_each_case_to_its_end() {
    let mut m = mesh(monday_ten()).await;
    let (lat, lon) = (Y0 + 0.5 * STEP, X0 + 0.5 * STEP);
    let first = m.intake.report_incident(fire_at(lat, lon)).await.expect("first fire").into_inner();
    assert!(first.accepted && first.possibly_same_as.is_empty(), "{first:?}");
    case_when_opened(&mut m, &first.incident_id).await;

    // 30 m north, ten minutes later.
    m.clock.advance_ms(10 * MINUTE);
    let second = m.intake.report_incident(fire_at(lat + 30.0 / 111_000.0, lon)).await.expect("second").into_inner();
    assert!(second.duplicate_of.is_empty(), "an emergency is never merged: {second:?}");
    assert!(second.accepted, "dispatched at once: {second:?}");
    assert_eq!(second.possibly_same_as, first.incident_id, "flagged for a dispatcher");
    let case = case_when_opened(&mut m, &second.incident_id).await;
    assert!(!case.case_id.is_empty(), "somebody is dispatched to the second fire");
    let shown = incident(&mut m, &second.incident_id).await;
    assert_eq!(shown.possibly_same_as, first.incident_id);

    // The first case is resolved and rated: intake shows it closed, and Open311 too.
    resolve_and_close(&mut m, &first.incident_id).await;
    let closed = intake_status(&mut m, &first.incident_id, intake_pb::IncidentStatus::Closed).await;
    assert_eq!(closed.open311_status, "closed");
    assert!(closed.closed_at_unix_ms > 0);
    let steps: Vec<&str> = closed.history.iter().map(|h| h.event_type.as_str()).collect();
    assert!(steps.ends_with(&["case_outcome_recorded", "case_outcome_recorded"]), "resolved, then closed: {steps:?}");

    // A fire-hazard report is accepted, handled and closed; the same hazard
    // reported there again is a new incident, a recurrence, awaiting triage.
    let hazard = m.intake.report_incident(report("fire-hazard")).await.expect("hazard").into_inner();
    m.intake
        .accept_incident(intake_pb::AcceptIncidentRequest {
            command_id: uuid(),
            incident_id: hazard.incident_id.clone(),
        })
        .await
        .expect("accept");
    resolve_and_close(&mut m, &hazard.incident_id).await;
    intake_status(&mut m, &hazard.incident_id, intake_pb::IncidentStatus::Closed).await;
    m.clock.advance_ms(60 * MINUTE);
    let again = m.intake.report_incident(report("fire-hazard")).await.expect("again").into_inner();
    assert!(again.duplicate_of.is_empty(), "not a me-too of a closed incident: {again:?}");
    assert_eq!(again.recurrence_of, hazard.incident_id);
    let again = incident(&mut m, &again.incident_id).await;
    assert_eq!(again.status, intake_pb::IncidentStatus::Reported as i32, "awaits triage like any new report");
    assert_eq!(again.recurrence_of, hazard.incident_id);

    // Reported again after the handler said it was fixed, before the rating:
    // the fix did not hold. A new incident, not a me-too merged into a case
    // about to close.
    let elsewhere = |r: intake_pb::ReportIncidentRequest| intake_pb::ReportIncidentRequest {
        command_id: uuid(),
        location: Some(intake_pb::report_incident_request::Location::Point(intake_pb::GeoPoint {
            lat: Y0 + 0.1 * STEP,
            lon: X0 + 0.1 * STEP,
        })),
        ..r
    };
    let blocked = m.intake.report_incident(elsewhere(report("fire-hazard"))).await.expect("blocked").into_inner();
    m.intake
        .accept_incident(intake_pb::AcceptIncidentRequest {
            command_id: uuid(),
            incident_id: blocked.incident_id.clone(),
        })
        .await
        .expect("accept");
    resolve(&mut m, &blocked.incident_id).await;
    intake_status(&mut m, &blocked.incident_id, intake_pb::IncidentStatus::Resolved).await;
    let back = m.intake.report_incident(elsewhere(report("fire-hazard"))).await.expect("back").into_inner();
    assert!(back.duplicate_of.is_empty(), "not merged into a resolved case: {back:?}");
    assert_eq!(back.recurrence_of, blocked.incident_id);
}

/// Issue 9, item 1 (the other half): the flagged fire is the same fire. A
/// dispatcher merges its case into the first: it closes as merged, the
/// departments summoned to it are released (they work the first case), and
/// intake shows the report closed with the case it went to. A case is merged
/// only into an open case that was not merged itself.
#[tokio::test]
async fn a_dispatcher_merges_a_flagged_fire_into_the_first_and_its_summonses_are_released() {
    let mut m = mesh(monday_ten()).await;
    let (lat, lon) = (Y0 + 0.5 * STEP, X0 + 0.5 * STEP);
    let first = m.intake.report_incident(fire_at(lat, lon)).await.expect("first fire").into_inner();
    case_when_opened(&mut m, &first.incident_id).await;
    m.clock.advance_ms(5 * MINUTE);
    let second = m.intake.report_incident(fire_at(lat + 30.0 / 111_000.0, lon)).await.expect("second").into_inner();
    let case = case_when_opened(&mut m, &second.incident_id).await;
    assert_eq!(case.possibly_same_as, first.incident_id, "dispatch shows the flag: {case:?}");
    assert!(
        case.summonses.iter().any(|s| s.status == pb::SummonsStatus::Summoned as i32),
        "an emergency summons its departments: {case:?}"
    );

    // A call about the same fire from across the street, which triage
    // linked to the second: it goes with the second wherever that goes.
    let call = intake_pb::ReportIncidentRequest {
        command_id: uuid(),
        location: Some(intake_pb::report_incident_request::Location::Point(intake_pb::GeoPoint {
            lat: Y0 + 0.1 * STEP,
            lon: X0 + 0.1 * STEP,
        })),
        description: "flames seen from across the street".into(),
        ..report("fire-hazard")
    };
    let call = m.intake.report_incident(call).await.expect("call").into_inner();
    m.intake
        .mark_duplicate(intake_pb::MarkDuplicateRequest {
            command_id: uuid(),
            incident_id: call.incident_id.clone(),
            of_incident_id: second.incident_id.clone(),
        })
        .await
        .expect("triage links the call to the second fire");
    linked_to_case(&mut m, &second.incident_id, &call.incident_id).await;

    let merge_as = |roles: &str, case_id: &str, into: &str| {
        let request = tonic::Request::new(pb::MergeCaseRequest {
            command_id: uuid(),
            case_id: case_id.into(),
            into_case_id: into.into(),
            reason: "the same fire, seen from the next building".into(),
        });
        gridwork_testkit::auth::as_caller(request, "dispatcher-1", &[roles])
    };
    let merge = |case_id: &str, into: &str| merge_as("dispatcher", case_id, into);
    let refused = m.dispatch.merge_case(merge_as("triage", &second.incident_id, &first.incident_id)).await;
    let refused = refused.expect_err("not a dispatcher");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("dispatcher"), "{refused:?}");
    let bad = m.dispatch.merge_case(merge(&second.incident_id, &second.incident_id)).await.expect_err("self");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("into_case_id"), "{bad:?}");
    // Into the case opened first only: two dispatchers merging the two
    // into each other at once cannot close both.
    let bad = m.dispatch.merge_case(merge(&first.incident_id, &second.incident_id)).await.expect_err("newer");
    assert_eq!(bad.code(), Code::FailedPrecondition, "{bad:?}");
    assert!(bad.message().contains("opened after"), "{bad:?}");
    let bad = m.dispatch.merge_case(merge(&second.incident_id, &uuid())).await.expect_err("unknown");
    assert_eq!(bad.code(), Code::NotFound, "{bad:?}");
    let bad = m.dispatch.merge_case(merge(&second.incident_id, "")).await.expect_err("blank");
    assert_eq!(bad.code(), Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("into_case_id"), "{bad:?}");

    let merged = m.dispatch.merge_case(merge(&second.incident_id, &first.incident_id)).await.expect("merge");
    let merged = get(&mut m, &second.incident_id, pos(merged.into_inner().position)).await;
    assert_eq!(merged.status, "closed", "{merged:?}");
    assert_eq!(merged.merged_into, first.incident_id);
    assert!(
        merged.summonses.iter().all(|s| s.status == pb::SummonsStatus::Released as i32),
        "nobody owes the merged case anything: {merged:?}"
    );
    // Intake says where it went, and the report is a "me too" of the first
    // from now: its account reaches the first case's handler, and its
    // reporter follows that case (not a closed one nobody works).
    let shown = intake_status(&mut m, &second.incident_id, intake_pb::IncidentStatus::Duplicate).await;
    assert_eq!(shown.duplicate_of, first.incident_id, "{shown:?}");
    assert!(
        shown.history.iter().any(|h| h.summary.contains(&format!("merged into the case of {}", first.incident_id))),
        "intake says where it went: {shown:?}"
    );
    assert_eq!(shown.original_status, intake_pb::IncidentStatus::Accepted as i32, "it follows the first: {shown:?}");
    linked_to_case(&mut m, &first.incident_id, &second.incident_id).await;
    // Its own me-too went with it: linked on to the first, account and all.
    linked_to_case(&mut m, &first.incident_id, &call.incident_id).await;
    // Dispatch may show the link before intake's own read model does.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let shown = incident(&mut m, &call.incident_id).await;
        if shown.duplicate_of == first.incident_id {
            break;
        }
        assert!(Instant::now() < deadline, "the call never followed the merge: {shown:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Merged once; the first case is untouched and still open.
    let again = m.dispatch.merge_case(merge(&second.incident_id, &first.incident_id)).await.expect_err("closed");
    assert_eq!(again.code(), Code::FailedPrecondition, "{again:?}");
    let target = get(&mut m, &first.incident_id, 0).await;
    assert_ne!(target.status, "closed");

    // A third report, merged into a case that has since closed, is refused.
    m.clock.advance_ms(5 * MINUTE);
    let third = m.intake.report_incident(fire_at(lat, lon + 30.0 / 95_000.0)).await.expect("third").into_inner();
    case_when_opened(&mut m, &third.incident_id).await;
    let bad = m.dispatch.merge_case(merge(&third.incident_id, &second.incident_id)).await.expect_err("merged target");
    assert_eq!(bad.code(), Code::FailedPrecondition, "{bad:?}");
    assert!(bad.message().contains(&first.incident_id), "points at the case it went to: {bad:?}");
    resolve_and_close(&mut m, &first.incident_id).await;
    let bad = m.dispatch.merge_case(merge(&third.incident_id, &first.incident_id)).await.expect_err("closed target");
    assert_eq!(bad.code(), Code::FailedPrecondition, "{bad:?}");
    assert!(bad.message().contains("closed"), "{bad:?}");
}

/// Issue 9, item 2: a "me too" is more than a counter. Its reporter's own
/// account (description, attributes, address) reaches the handler — linked
/// before acceptance or after — and that reporter follows the original's
/// outcome and may rate it: recorded and counted, deciding nothing.
#[tokio::test]
async fn me_too_accounts_reach_the_handler_and_their_reporters_follow_and_rate_the_outcome() {
    let mut m = mesh(monday_ten()).await;
    let original = m.intake.report_incident(report("fire-hazard")).await.expect("original").into_inner();
    let me_too = |description: &str| intake_pb::ReportIncidentRequest {
        command_id: uuid(),
        description: description.into(),
        ..report("fire-hazard")
    };
    let early = m.intake.report_incident(me_too("three e-bikes on the second floor landing")).await.expect("early");
    let early = early.into_inner();
    assert_eq!(early.duplicate_of, original.incident_id, "{early:?}");
    // The link lands on the original before triage accepts it.
    let case = accept_once_linked(&mut m, &original.incident_id, 1).await;
    assert_eq!(case.linked_reports.len(), 1, "linked before acceptance, the case opens with it: {case:?}");
    assert_eq!(case.linked_reports[0].description, "three e-bikes on the second floor landing");
    assert_eq!(case.linked_reports[0].attributes, ["hazard: e-bike-charging-indoors"]);

    let late = m.intake.report_incident(me_too("now a cable runs from a window too")).await.expect("late").into_inner();
    assert_eq!(late.duplicate_of, original.incident_id, "{late:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let case = loop {
        let case = get(&mut m, &original.incident_id, 0).await;
        if case.linked_reports.len() == 2 || Instant::now() > deadline {
            break case;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(case.linked_reports[1].description, "now a cable runs from a window too", "{case:?}");
    // The timeline names the report; its account, sealed, is read with the
    // case and never copied into a summary in plain.
    assert!(case.timeline.iter().any(|t| t.summary.contains(&late.incident_id)), "{case:?}");
    assert!(!case.timeline.iter().any(|t| t.summary.contains("now a cable runs")), "{case:?}");
    let shown = incident(&mut m, &original.incident_id).await;
    let accounts: Vec<&str> = shown.linked_accounts.iter().map(|a| a.description.as_str()).collect();
    assert_eq!(accounts, ["three e-bikes on the second floor landing", "now a cable runs from a window too"]);
    let follower = incident(&mut m, &early.incident_id).await;
    assert_eq!(follower.original_status, intake_pb::IncidentStatus::Accepted as i32);
    assert_eq!(follower.open311_status, "open", "a me-too is as open as its original");

    // Resolved: the me-too reporters rate, recorded; the reporter decides.
    resolve(&mut m, &original.incident_id).await;
    let rate = |by: String, rating: pb::Rating| pb::VerifyCaseRequest {
        command_id: uuid(),
        case_id: original.incident_id.clone(),
        rating: rating as i32,
        by,
        comment: String::new(),
        solved: pb::ResolutionAnswer::NotSolved as i32,
    };
    let linked_rating = m
        .dispatch
        .verify_case(rate(format!("reporter:{}", early.incident_id), pb::Rating::Unsatisfied))
        .await
        .expect("linked rating")
        .into_inner();
    assert_eq!(linked_rating.outcome, "recorded", "a me-too's rating decides nothing");
    let stranger = m.dispatch.verify_case(rate(format!("reporter:{}", uuid()), pb::Rating::Unsatisfied)).await;
    assert_eq!(stranger.expect_err("not linked").code(), Code::FailedPrecondition);
    let twice = m.dispatch.verify_case(rate(format!("reporter:{}", early.incident_id), pb::Rating::Satisfied)).await;
    assert_eq!(twice.expect_err("rated").code(), Code::FailedPrecondition);
    let case = get(&mut m, &original.incident_id, pos(linked_rating.position)).await;
    assert_eq!(case.status, "resolved", "still awaiting the reporter: {case:?}");
    let verdict =
        m.dispatch.verify_case(rate("reporter".into(), pb::Rating::Satisfied)).await.expect("verify").into_inner();
    assert_eq!(verdict.outcome, "closed");
    // After closing, within the rating window, the late reporter rates too.
    let after = m
        .dispatch
        .verify_case(pb::VerifyCaseRequest {
            comment: "Mr Zhao on floor 3 says thanks".into(),
            ..rate(format!("reporter:{}", late.incident_id), pb::Rating::Satisfied)
        })
        .await
        .expect("late rating")
        .into_inner();
    assert_eq!(after.outcome, "recorded");
    let case = get(&mut m, &original.incident_id, pos(after.position)).await;
    assert_eq!(case.ratings.len(), 3, "every caller counted: {case:?}");
    assert!(case.ratings.iter().any(|r| r.comment == "Mr Zhao on floor 3 says thanks"), "opened when read: {case:?}");
    assert_eq!(case.rating, pb::Rating::Satisfied as i32, "the reporter's rating is the case's");
    let follower = intake_status(&mut m, &original.incident_id, intake_pb::IncidentStatus::Closed).await;
    assert!(follower.closed_at_unix_ms > 0);
    let follower = incident(&mut m, &early.incident_id).await;
    assert_eq!(follower.original_status, intake_pb::IncidentStatus::Closed as i32);
    assert_eq!(follower.open311_status, "closed");

    // Issue 10: the late reporter's data erased in intake reaches the
    // handler's copy in dispatch: its account opens as erased there too.
    let erase = intake_pb::EraseReporterContactRequest {
        command_id: uuid(),
        incident_id: late.incident_id.clone(),
        reason: "the reporter asked".into(),
    };
    let erase = gridwork_testkit::auth::as_caller(tonic::Request::new(erase), "dpo-1", &["privacy"]);
    m.intake.erase_reporter_contact(erase).await.expect("erase");
    let case = get(&mut m, &original.incident_id, 0).await;
    let accounts: Vec<&str> = case.linked_reports.iter().map(|r| r.description.as_str()).collect();
    assert_eq!(accounts, ["three e-bikes on the second floor landing", "[erased]"], "{case:?}");
    // The reporter's rating comment, sealed under the same key, with it.
    let late_rating = format!("reporter:{}", late.incident_id);
    let comment = |case: &pb::Case| case.ratings.iter().find(|r| r.by == late_rating).map(|r| r.comment.clone());
    assert_eq!(comment(&case).as_deref(), Some("[erased]"), "{case:?}");
    let js = async_nats::jetstream::new(async_nats::connect(m.nats.url()).await.expect("connect"));
    let stream = js.get_stream("DISPATCH").await.expect("stream");
    let last = stream.get_info().await.expect("info").state.last_sequence;
    for seq in 1..=last {
        let text = String::from_utf8_lossy(&stream.get_raw_message(seq).await.expect("message").payload).into_owned();
        assert!(!text.contains("Mr Zhao") && !text.contains("cable runs"), "plain personal data at {seq}: {text}");
    }
}

/// Issue 9 review: an incident carries the first 100 accounts to its case; a
/// reporter linked before acceptance beyond those still follows the case and
/// may rate it — the acceptance carries every linked id.
#[tokio::test]
async fn every_reporter_linked_before_acceptance_may_rate_even_beyond_the_carried_accounts() {
    let mut m = mesh(monday_ten()).await;
    let original = m.intake.report_incident(report("fire-hazard")).await.expect("original").into_inner();
    let mut last = String::new();
    for _ in 0..101 {
        let me_too = m.intake.report_incident(report("fire-hazard")).await.expect("me too").into_inner();
        assert_eq!(me_too.duplicate_of, original.incident_id);
        last = me_too.incident_id;
    }
    let case = accept_once_linked(&mut m, &original.incident_id, 101).await;
    assert_eq!(case.linked_reports.len(), 101, "every linked report, 100 with their accounts");
    resolve(&mut m, &original.incident_id).await;
    let rated = m
        .dispatch
        .verify_case(pb::VerifyCaseRequest {
            command_id: uuid(),
            case_id: original.incident_id.clone(),
            rating: pb::Rating::Satisfied as i32,
            by: format!("reporter:{last}"),
            comment: String::new(),
            solved: pb::ResolutionAnswer::Solved as i32,
        })
        .await;
    assert!(rated.is_ok(), "the 101st reporter rates: {rated:?}");
}

/// A case stays in its district: a dispatcher cannot give it to a street, or
/// the dispatch centre, of another district; nothing is written, and a unit of
/// its own district still takes it.
#[tokio::test]
async fn a_case_is_not_assigned_to_a_unit_of_another_district() {
    use gridwork_proto::gridwork::grid::v1 as gpb;
    let mut m = mesh(monday_ten()).await;
    for (unit_id, parent_id, kind) in [("d2", "", gpb::UnitKind::District), ("s2", "d2", gpb::UnitKind::Street)] {
        m.registry
            .register_unit(gpb::RegisterUnitRequest {
                command_id: uuid(),
                unit_id: unit_id.into(),
                parent_id: parent_id.into(),
                kind: kind as i32,
                name: unit_id.into(),
                boundary_geojson: gridwork_testkit::tree::cells(10.0, 0.0, 4.0, 4.0),
                special_site: 0,
            })
            .await
            .expect("register");
    }
    let (id, before) = accepted_fire_hazard(&mut m).await;
    let assign = |to: Option<pb::Owner>| pb::AssignCaseRequest {
        command_id: uuid(),
        case_id: id.clone(),
        expected_owner: owner(pb::Tier::Grid, "g"),
        to,
    };
    for to in [owner(pb::Tier::Street, "s2"), owner(pb::Tier::DispatchCentre, "d2")] {
        let e = m.dispatch.assign_case(assign(to.clone())).await.expect_err("another district");
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("not in this case's district d"), "{}", e.message());
    }
    let after = get(&mut m, &id, 0).await;
    assert_eq!((after.owner, after.timeline.len()), (before.owner, before.timeline.len()), "nothing written");
    m.dispatch.assign_case(assign(owner(pb::Tier::Street, "s"))).await.expect("its own district's street");
}
