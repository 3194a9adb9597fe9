//! Issue 9's dispatch rules over the whole mesh (real nats-server, real SQLite,
//! one manual clock): case-level clocks that no hand-off resets, overdue and
//! district supervision, working days on the shipped holiday calendar, and the
//! rating window.

use std::time::{Duration, Instant};

use gridwork_e2e::{Mesh, STEP, X0, Y0, mesh, mesh_on, uuid};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::intake::v1 as intake_pb;
use gridwork_testkit::db::TestDb;
use tonic::Code;

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

fn at(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn owner(tier: pb::Tier, id: &str) -> Option<pb::Owner> {
    Some(pb::Owner { tier: tier as i32, id: id.into() })
}

/// Report `category` (no attributes needed) in micro-grid m1 and accept it; its case id.
async fn accepted(m: &mut Mesh, category: &str) -> String {
    let attributes = if category == "fire-hazard" {
        let v = intake_pb::attribute_value::Value::Selected(intake_pb::SelectedValues {
            values: vec!["e-bike-charging-indoors".into()],
        });
        vec![intake_pb::AttributeValue { code: "hazard".into(), value: Some(v) }]
    } else {
        vec![]
    };
    let reported = m
        .intake
        .report_incident(intake_pb::ReportIncidentRequest {
            command_id: uuid(),
            source: intake_pb::Source::GridWorker as i32,
            category_code: category.into(),
            location: Some(intake_pb::report_incident_request::Location::Point(intake_pb::GeoPoint {
                lat: Y0 + 0.5 * STEP,
                lon: X0 + 0.5 * STEP,
            })),
            description: format!("{category}: seen on the morning round"),
            attributes,
            ..Default::default()
        })
        .await
        .expect("report")
        .into_inner();
    let id = reported.incident_id;
    if !reported.accepted {
        m.intake
            .accept_incident(intake_pb::AcceptIncidentRequest { command_id: uuid(), incident_id: id.clone() })
            .await
            .expect("accept");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match m.dispatch.get_case(pb::GetCaseRequest { case_id: id.clone(), min_position: 0 }).await {
            Ok(_) => return id,
            Err(s) if s.code() == Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("case {id} never opened: {s:?}"),
        }
    }
}

/// The read model's position once it has every commit so far.
async fn settled(m: &Mesh) -> u64 {
    let projection = m.dispatch_app.dispatch().projection();
    projection.wait_for_stream_head(Duration::from_secs(10)).await.expect("the read model catches up");
    projection.position().max(1)
}

/// The case once the read model has every commit so far.
async fn case(m: &mut Mesh, id: &str) -> pb::Case {
    let settled = settled(m).await;
    m.dispatch
        .get_case(pb::GetCaseRequest { case_id: id.into(), min_position: settled })
        .await
        .expect("get")
        .into_inner()
        .case
        .expect("case")
}

async fn overdue(m: &mut Mesh) -> Vec<String> {
    let settled = settled(m).await;
    let cases = m
        .dispatch
        .list_overdue(pb::ListOverdueRequest { limit: 50, min_position: settled })
        .await
        .expect("overdue")
        .into_inner()
        .cases;
    cases.into_iter().map(|c| c.case_id).collect()
}

/// Advance the clock and let the scheduler act, until it has nothing more to do.
async fn pass(m: &mut Mesh, ms: i64) -> usize {
    m.clock.advance_ms(ms);
    let mut fired = 0;
    loop {
        let n = m.dispatch_app.dispatch().fire_due_deadlines().await.expect("tick");
        if n == 0 {
            return fired;
        }
        fired += n;
    }
}

fn due(case: &pb::Case, id: &str) -> Option<i64> {
    case.pending_deadlines.iter().find(|d| d.id == id).map(|d| d.due_unix_ms)
}

/// Monday 2026-03-02 10:00 in the city's time zone.
fn monday_ten() -> i64 {
    at(time::macros::datetime!(2026-03-02 10:00 +8))
}

#[tokio::test]
async fn a_case_past_its_clocks_is_overdue_and_supervised_until_resolved_and_a_reopened_round_starts_clean() {
    overdue_and_supervision(&mut mesh(monday_ten()).await).await;
}

#[tokio::test]
async fn an_unrated_resolution_closes_not_rated_once_the_window_passes_and_intake_shows_it_closed() {
    unrated_closes(&mut mesh(monday_ten()).await).await;
}

/// The same stories with dispatch's read model on PostgreSQL: its deadline,
/// summons and rating rows, and the overdue query, are SQL both must run.
#[tokio::test]
async fn clocks_overdue_supervision_and_the_rating_window_hold_with_dispatch_on_postgresql() {
    for story in 0..2 {
        let Some(db) =
            TestDb::postgres("clocks_overdue_supervision_and_the_rating_window_hold_with_dispatch_on_postgresql")
                .await
                .expect("pg")
        else {
            return;
        };
        let mut m = mesh_on(monday_ten(), db).await;
        if story == 0 {
            overdue_and_supervision(&mut m).await;
        } else {
            unrated_closes(&mut m).await;
        }
        let Mesh { dispatch_db, dispatch_app, .. } = m;
        drop(dispatch_app);
        dispatch_db.cleanup().await;
    }
}

/// A fire hazard (high priority, counted round the clock): acknowledge 2 h per
/// owner, respond 8 h and resolve 3 days per case, from Monday 10:00.
async fn overdue_and_supervision(m: &mut Mesh) {
    let start = monday_ten();
    let id = accepted(m, "fire-hazard").await;
    let opened = case(m, &id).await;
    assert_eq!(due(&opened, "resolve:1"), Some(start + 72 * HOUR));
    assert_eq!(due(&opened, "respond:1"), Some(start + 8 * HOUR));
    assert_eq!(due(&opened, "ack:1"), Some(start + 2 * HOUR));

    // The grid, then the community, miss their acknowledgements: each loses the
    // case one rung up, each new owner with its own clock; the case's clocks do
    // not move, and a missed owner's clock alone is not an overdue case.
    assert_eq!(pass(m, 2 * HOUR + MINUTE).await, 1);
    let escalated = case(m, &id).await;
    assert_eq!(escalated.owner, owner(pb::Tier::Community, "c"));
    assert_eq!(due(&escalated, "ack:2"), Some(start + 4 * HOUR + MINUTE));
    assert_eq!(due(&escalated, "resolve:1"), Some(start + 72 * HOUR));
    assert!(overdue(m).await.is_empty(), "an owner's missed clock alone is not overdue");
    assert_eq!(pass(m, 2 * HOUR).await, 1);
    let street = owner(pb::Tier::Street, "s");
    assert_eq!(case(m, &id).await.owner, street);

    // The street takes it on and summons the police, who are late to report.
    acknowledge(m, &id, &street).await;
    summon_police(m, &id, &street).await;
    // Nobody acts on site within 8 hours: a warning on the record, the case is
    // overdue, and the street still holds it (moving it is the dispatcher's call).
    pass(m, 4 * HOUR).await;
    let late = case(m, &id).await;
    assert!(late.overdue, "respond passed with no action on site");
    assert_eq!((late.owner.clone(), late.status.as_str(), late.supervised), (street.clone(), "acknowledged", false));
    assert_eq!(overdue(m).await, [id.as_str()]);
    let queue = summonses(m, "police", false).await;
    assert_eq!(
        queue.iter().map(|s| (s.case_id.as_str(), s.status)).collect::<Vec<_>>(),
        [(id.as_str(), pb::SummonsStatus::Summoned as i32)]
    );
    m.dispatch
        .report_for_duty(pb::ReportForDutyRequest {
            command_id: uuid(),
            case_id: id.clone(),
            department: "police".into(),
        })
        .await
        .expect("late, but reporting");

    // The resolve clock passes: the district supervises (督办), once; still listed.
    pass(m, 72 * HOUR).await;
    let supervised = case(m, &id).await;
    assert_eq!(supervised.owner, street);
    assert!(supervised.supervised && supervised.overdue, "{supervised:?}");
    let kinds: Vec<_> = supervised.timeline.iter().map(|t| t.event_type.as_str()).collect();
    assert_eq!(kinds.iter().filter(|k| **k == "supervision_opened").count(), 1, "{kinds:?}");
    assert_eq!(overdue(m).await, [id.as_str()], "still listed, supervised");
    assert_eq!(pass(m, 24 * HOUR).await, 0, "nothing more fires");

    // The police complete their part; the street resolves: no longer overdue.
    m.dispatch
        .complete_summons(pb::CompleteSummonsRequest {
            command_id: uuid(),
            case_id: id.clone(),
            department: "police".into(),
            notes: "chargers confiscated".into(),
        })
        .await
        .expect("complete");
    m.dispatch
        .resolve_case(pb::ResolveCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: street.clone(),
            notes: "charging moved outdoors".into(),
        })
        .await
        .expect("resolve");
    assert!(overdue(m).await.is_empty());
    assert!(!case(m, &id).await.overdue);

    // Rated unsatisfied: a new round with its own clocks, no rating window left
    // over, not supervised; the police can be summoned again.
    m.dispatch
        .verify_case(pb::VerifyCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            rating: pb::Rating::Unsatisfied as i32,
            by: "staff:callback-3".into(),
            comment: "chargers back in the stairwell".into(),
            solved: pb::ResolutionAnswer::NotSolved as i32,
        })
        .await
        .expect("rate");
    let round_two = case(m, &id).await;
    assert_eq!((round_two.round, round_two.supervised), (2, false));
    let pending: Vec<_> = round_two.pending_deadlines.iter().map(|d| d.id.split(':').next().unwrap_or("")).collect();
    assert!(!pending.contains(&"rate") && pending.contains(&"resolve"), "{pending:?}");
    assert_eq!(round_two.ratings.len(), 1);
    assert_eq!((round_two.ratings[0].round, round_two.ratings[0].by.as_str()), (1, "staff:callback-3"));
    acknowledge(m, &id, &street).await;
    summon_police(m, &id, &street).await;
    let open: Vec<_> = summonses(m, "police", false).await.iter().map(|s| s.whistle).collect();
    assert_eq!(open, [2]);
    assert_eq!(summonses(m, "police", true).await.len(), 2, "the first summons is kept, completed");
}

async fn acknowledge(m: &mut Mesh, id: &str, by: &Option<pb::Owner>) {
    let request = pb::AcknowledgeCaseRequest { command_id: uuid(), case_id: id.into(), acting_as: by.clone() };
    m.dispatch.acknowledge_case(request).await.expect("ack");
}

/// The street summons the police.
async fn summon_police(m: &mut Mesh, id: &str, street: &Option<pb::Owner>) {
    let request = pb::BlowWhistleRequest {
        command_id: uuid(),
        case_id: id.into(),
        acting_as: street.clone(),
        departments: vec!["police".into()],
    };
    m.dispatch.blow_whistle(request).await.expect("whistle");
}

async fn summonses(m: &mut Mesh, department: &str, include_finished: bool) -> Vec<pb::Summons> {
    let settled = settled(m).await;
    m.dispatch
        .list_summonses(pb::ListSummonsesRequest {
            department: department.into(),
            include_finished,
            limit: 50,
            min_position: settled,
        })
        .await
        .expect("summonses")
        .into_inner()
        .summonses
}

#[tokio::test]
async fn a_hand_back_goes_to_the_dispatch_centre_and_the_case_clock_keeps_running() {
    let start = at(time::macros::datetime!(2026-03-02 10:00 +8));
    let mut m = mesh(start).await;
    let id = accepted(&mut m, "fire-hazard").await;
    pass(&mut m, 2 * HOUR + MINUTE).await;
    m.dispatch
        .hand_back_case(pb::HandBackCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: owner(pb::Tier::Community, "c"),
            reason: "a building matter, not the community's".into(),
        })
        .await
        .expect("hand back");
    let back = case(&mut m, &id).await;
    assert_eq!(back.owner, owner(pb::Tier::DispatchCentre, "d"), "not back to the grid that breached");
    assert_eq!(due(&back, "resolve:1"), Some(start + 72 * HOUR));
    let queue = m
        .dispatch
        .list_work_queue(pb::ListWorkQueueRequest {
            owner: owner(pb::Tier::DispatchCentre, "d"),
            limit: 10,
            min_position: back.position,
        })
        .await
        .expect("the centre's queue")
        .into_inner()
        .cases;
    assert_eq!(queue.iter().map(|c| c.case_id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    let e = m
        .dispatch
        .acknowledge_case(pb::AcknowledgeCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: owner(pb::Tier::DispatchCentre, "d"),
        })
        .await
        .expect_err("the centre assigns");
    assert_eq!(e.code(), Code::FailedPrecondition);
    m.dispatch
        .assign_case(pb::AssignCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            expected_owner: owner(pb::Tier::DispatchCentre, "d"),
            to: owner(pb::Tier::Street, "s"),
        })
        .await
        .expect("the centre assigns the street");
    let assigned = case(&mut m, &id).await;
    assert_eq!(due(&assigned, "resolve:1"), Some(start + 72 * HOUR), "no hand-off resets the case clock");
}

#[tokio::test]
async fn working_day_clocks_skip_the_national_day_holiday_and_count_the_make_up_saturday() {
    // Wednesday 2026-09-30 10:00, sanitation (normal priority, working time):
    // resolve in 5 working days. 1–7 October are off; the 8th and 9th count,
    // Saturday the 10th is a make-up working day, then Monday 12th and Tuesday 13th.
    let start = at(time::macros::datetime!(2026-09-30 10:00 +8));
    let mut m = mesh(start).await;
    let id = accepted(&mut m, "sanitation").await;
    let opened = case(&mut m, &id).await;
    assert_eq!(due(&opened, "resolve:1"), Some(at(time::macros::datetime!(2026-10-13 17:30 +8))));
    // Acknowledge in 4 office hours: 10:00–17:30 gives 7.5 on the 30th.
    assert_eq!(due(&opened, "ack:1"), Some(at(time::macros::datetime!(2026-09-30 14:00 +8))));
    // An elder's need does not wait for the holiday to end.
    let elder = accepted(&mut m, "elderly-welfare").await;
    let elder = case(&mut m, &elder).await;
    assert_eq!(due(&elder, "resolve:1").map(|d| d - start), Some(24 * HOUR), "{elder:?}");
}

async fn unrated_closes(m: &mut Mesh) {
    let start = monday_ten();
    let id = accepted(m, "fire-hazard").await;
    let grid = owner(pb::Tier::Grid, "g");
    acknowledge(m, &id, &grid).await;
    m.dispatch
        .resolve_case(pb::ResolveCaseRequest {
            command_id: uuid(),
            case_id: id.clone(),
            acting_as: grid,
            notes: "chargers moved".into(),
        })
        .await
        .expect("resolve");
    let resolved = case(m, &id).await;
    assert_eq!(due(&resolved, "rate:1"), Some(start + 7 * 24 * HOUR));
    assert_eq!(pass(m, 7 * 24 * HOUR - MINUTE).await, 0, "the window is still open");
    // Two replicas' schedulers at once close it once.
    m.clock.advance_ms(2 * MINUTE);
    let other = gridwork_e2e::dispatch_app(&m.nats, &m.dispatch_db, &m.clock).await;
    let (a, b) = tokio::join!(m.dispatch_app.dispatch().fire_due_deadlines(), other.dispatch().fire_due_deadlines());
    assert_eq!(a.expect("a") + b.expect("b"), 1);
    let closed = case(m, &id).await;
    assert_eq!((closed.status.as_str(), closed.close_outcome), ("closed", pb::CloseOutcome::NotRated as i32));
    assert!(closed.ratings.is_empty());
    let e = m
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
        .expect_err("too late to rate");
    assert_eq!(e.code(), Code::FailedPrecondition);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let i = m
            .intake
            .get_incident(intake_pb::GetIncidentRequest { incident_id: id.clone(), min_position: 0 })
            .await
            .expect("incident")
            .into_inner()
            .incident
            .expect("incident");
        if i.status == intake_pb::IncidentStatus::Closed as i32 {
            break;
        }
        assert!(Instant::now() < deadline, "intake never showed the case closed: {i:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
