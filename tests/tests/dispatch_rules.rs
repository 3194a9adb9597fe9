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
    accepted_at(m, category, 0.5, 0.5).await
}

/// Report `category` at cell coordinates (`x`, `y`) and accept it; its case id.
async fn accepted_at(m: &mut Mesh, category: &str, x: f64, y: f64) -> String {
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
                lat: Y0 + y * STEP,
                lon: X0 + x * STEP,
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
        match m.dispatch.get_case(pb::GetCaseRequest { case_id: id.clone(), ..Default::default() }).await {
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
        .get_case(pb::GetCaseRequest { case_id: id.into(), min_position: settled, ..Default::default() })
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
        .list_overdue(pb::ListOverdueRequest { limit: 50, min_position: settled, ..Default::default() })
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
    // Listed in its street, found by its number (this story runs on both engines).
    let request = pb::ListCasesRequest {
        area_id: "s".into(),
        statuses: vec!["assigned".into()],
        category_code: "fire-hazard".into(),
        opened_from_unix_ms: start - HOUR,
        page_size: 1,
        ..Default::default()
    };
    assert_eq!(numbers(&all_pages(m, request).await), ["D-20260302-0001"]);
    let by_number = m
        .dispatch
        .get_case(pb::GetCaseRequest { case_number: "D-20260302-0001".into(), ..Default::default() })
        .await
        .expect("by number");
    assert_eq!(by_number.into_inner().case.map(|c| c.case_id), Some(id.clone()));

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
    // The police let the summons window pass: the district supervises (督办).
    pass(m, 4 * HOUR).await;
    let late = case(m, &id).await;
    assert!(late.overdue, "respond passed with no action on site");
    assert_eq!((late.owner.clone(), late.status.as_str(), late.supervised), (street.clone(), "acknowledged", true));
    assert!(
        late.timeline
            .iter()
            .any(|t| t.event_type == "supervision_opened" && t.summary.contains("police did not report for duty")),
        "{:?}",
        late.timeline
    );
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

    // The resolve clock passes: supervised already, so once; still listed.
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
            ..Default::default()
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
            ..Default::default()
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
    // Nobody acts as a dispatch centre on a case: no grant with the owner's
    // permission reaches it (the centre assigns, with dispatch.assign).
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
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

/// Every page of `ListCases` for `request`, following the tokens; between the
/// first and second page, `between` runs (to write while a reader pages).
async fn all_pages(m: &mut Mesh, mut request: pb::ListCasesRequest) -> Vec<pb::Case> {
    request.min_position = settled(m).await;
    let mut all = Vec::new();
    loop {
        let page = m.dispatch.list_cases(request.clone()).await.expect("list").into_inner();
        all.extend(page.cases);
        if page.next_page_token.is_empty() {
            return all;
        }
        request.page_token = page.next_page_token;
    }
}

fn numbers(cases: &[pb::Case]) -> Vec<String> {
    cases.iter().map(|c| c.case_number.clone()).collect()
}

async fn listed(m: &mut Mesh, area: &str, statuses: &[&str], category: &str, from: i64, before: i64) -> Vec<String> {
    let request = pb::ListCasesRequest {
        area_id: area.into(),
        statuses: statuses.iter().map(|s| s.to_string()).collect(),
        category_code: category.into(),
        opened_from_unix_ms: from,
        opened_before_unix_ms: before,
        page_size: 2,
        ..Default::default()
    };
    numbers(&all_pages(m, request).await)
}

#[tokio::test]
async fn cases_are_numbered_per_district_and_day_and_listed_by_area_status_category_and_date_in_pages() {
    let mut m = mesh(monday_ten()).await;
    // A second grid g2 (cells 2..4 × 0..2) in community c, with micro-grid m3.
    let mut last = 0;
    for (unit, parent, kind, boundary) in [
        ("g2", "c", gridwork_proto::gridwork::grid::v1::UnitKind::Grid, gridwork_e2e::cells(2.0, 0.0, 2.0, 2.0)),
        ("m3", "g2", gridwork_proto::gridwork::grid::v1::UnitKind::MicroGrid, gridwork_e2e::cells(2.0, 0.0, 1.0, 1.0)),
    ] {
        let p = m
            .registry
            .register_unit(gridwork_proto::gridwork::grid::v1::RegisterUnitRequest {
                command_id: uuid(),
                unit_id: unit.into(),
                parent_id: parent.into(),
                kind: kind as i32,
                name: unit.into(),
                boundary_geojson: boundary,
                special_site: 0,
            })
            .await
            .expect("register")
            .into_inner()
            .position
            .expect("position")
            .sequence;
        last = p;
    }
    // g2 has a certified head, so its cases stay in its own queue.
    let appointed = m
        .registry
        .appoint_head(grid_pb::AppointHeadRequest {
            command_id: uuid(),
            unit_id: "g2".into(),
            person_id: "p-head-g2".into(),
            name: "Head of g2".into(),
            certificate: certificate("2099-12-31"),
            replacing_reason: String::new(),
        })
        .await
        .expect("appoint")
        .into_inner();
    last = last.max(appointed.position.expect("position").sequence);
    m.intake_app.intake().grid().wait_for(last, Duration::from_secs(10)).await.expect("intake's grid copy");
    tree_copied(&m, last).await;

    // Monday: a (g, sanitation), b (g2, elderly), c (g, elderly); Tuesday: d (g2, sanitation).
    let a = accepted_at(&mut m, "sanitation", 0.5, 0.5).await;
    m.clock.advance_ms(MINUTE);
    let b = accepted_at(&mut m, "elderly-welfare", 2.5, 0.5).await;
    m.clock.advance_ms(MINUTE);
    let c = accepted_at(&mut m, "elderly-welfare", 0.5, 0.5).await;
    m.clock.advance_ms(24 * HOUR);
    let d = accepted_at(&mut m, "sanitation", 2.5, 0.5).await;
    let number = |case: &pb::Case| case.case_number.clone();
    let (na, nb, nc, nd) = (
        number(&case(&mut m, &a).await),
        number(&case(&mut m, &b).await),
        number(&case(&mut m, &c).await),
        number(&case(&mut m, &d).await),
    );
    assert_eq!(
        [na.as_str(), nb.as_str(), nc.as_str(), nd.as_str()],
        ["D-20260302-0001", "D-20260302-0002", "D-20260302-0003", "D-20260303-0001"],
        "one count per district and city day"
    );

    // A case is found by its number, however it is typed.
    let by_number = m
        .dispatch
        .get_case(pb::GetCaseRequest { case_number: "d-20260302-0002".into(), ..Default::default() })
        .await
        .expect("by number")
        .into_inner()
        .case
        .expect("case");
    assert_eq!(by_number.case_id, b);
    let e = m
        .dispatch
        .get_case(pb::GetCaseRequest { case_number: "D-20991231-0001".into(), ..Default::default() })
        .await
        .expect_err("no such number");
    assert_eq!(e.code(), Code::NotFound);

    // By area subtree, newest first: a grid sees its own, the community and up see both grids'.
    assert_eq!(listed(&mut m, "g", &[], "", 0, 0).await, [nc.as_str(), na.as_str()]);
    assert_eq!(listed(&mut m, "g2", &[], "", 0, 0).await, [nd.as_str(), nb.as_str()]);
    for area in ["c", "s", "d", ""] {
        assert_eq!(
            listed(&mut m, area, &[], "", 0, 0).await,
            [nd.as_str(), nc.as_str(), nb.as_str(), na.as_str()],
            "area {area:?}"
        );
    }
    // By category, and by opening day in the city's time zone.
    assert_eq!(listed(&mut m, "d", &[], "elderly-welfare", 0, 0).await, [nc.as_str(), nb.as_str()]);
    let tuesday = at(time::macros::datetime!(2026-03-03 00:00 +8));
    assert_eq!(listed(&mut m, "d", &[], "", tuesday, 0).await, [nd.as_str()]);
    assert_eq!(listed(&mut m, "d", &[], "", 0, tuesday).await, [nc.as_str(), nb.as_str(), na.as_str()]);

    // By status: a resolved.
    acknowledge(&mut m, &a, &owner(pb::Tier::Grid, "g")).await;
    m.dispatch
        .resolve_case(pb::ResolveCaseRequest {
            command_id: uuid(),
            case_id: a.clone(),
            acting_as: owner(pb::Tier::Grid, "g"),
            notes: "swept".into(),
        })
        .await
        .expect("resolve");
    assert_eq!(listed(&mut m, "d", &["resolved"], "", 0, 0).await, [na.as_str()]);
    assert_eq!(
        listed(&mut m, "d", &["assigned", "acknowledged"], "", 0, 0).await,
        [nd.as_str(), nc.as_str(), nb.as_str()]
    );

    // Paging one by one while a new case opens between pages: the pages go on
    // from where they stopped, nothing repeated or skipped.
    let first = m
        .dispatch
        .list_cases(pb::ListCasesRequest {
            area_id: "d".into(),
            page_size: 1,
            min_position: settled(&m).await,
            ..Default::default()
        })
        .await
        .expect("first page")
        .into_inner();
    assert_eq!(numbers(&first.cases), [nd.as_str()]);
    let e = m
        .dispatch
        .list_work_queue(pb::ListWorkQueueRequest {
            owner: owner(pb::Tier::Grid, "g"),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect_err("another list's token");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    // The same list under other filters: its key would start the page
    // somewhere in another list.
    let e = m
        .dispatch
        .list_cases(pb::ListCasesRequest {
            area_id: "d".into(),
            category_code: "fire-hazard".into(),
            page_size: 1,
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a token of other filters");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("page_token") || format!("{e:?}").contains("other filters"), "{e:?}");
    m.clock.advance_ms(MINUTE);
    let e_case = accepted_at(&mut m, "elderly-welfare", 2.5, 0.5).await;
    let rest = all_pages(
        &mut m,
        pb::ListCasesRequest {
            area_id: "d".into(),
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(numbers(&rest), [nc.as_str(), nb.as_str(), na.as_str()]);
    assert_eq!(case(&mut m, &e_case).await.case_number, "D-20260303-0002");

    // The work queue pages too.
    let mut queue = Vec::new();
    let mut token = String::new();
    loop {
        let page = m
            .dispatch
            .list_work_queue(pb::ListWorkQueueRequest {
                owner: owner(pb::Tier::Grid, "g2"),
                limit: 1,
                page_token: token,
                min_position: settled(&m).await,
            })
            .await
            .expect("queue")
            .into_inner();
        queue.extend(page.cases.into_iter().map(|c| c.case_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    queue.sort();
    let mut expected = vec![b.clone(), d.clone(), e_case.clone()];
    expected.sort();
    assert_eq!(queue, expected);

    // Numbers are the same after a rebuild from the stream.
    m.dispatch_app.dispatch().projection().rebuild().await.expect("rebuild");
    assert_eq!(listed(&mut m, "d", &[], "", 0, tuesday).await, [nc.as_str(), nb.as_str(), na.as_str()]);

    // Bad input names the field.
    let e = m
        .dispatch
        .list_cases(pb::ListCasesRequest {
            area_id: "a.b".into(),
            statuses: vec!["open".into()],
            opened_from_unix_ms: 10,
            opened_before_unix_ms: 5,
            page_size: 501,
            page_token: "zz".into(),
            ..Default::default()
        })
        .await
        .expect_err("bad input");
    assert_eq!(e.code(), Code::InvalidArgument);
    for field in ["area_id", "statuses[0]", "opened_before_unix_ms", "page_size", "page_token"] {
        assert!(e.message().contains(field) || format!("{:?}", e.details()).contains(field), "{field}: {e:?}");
    }
    let e = m
        .dispatch
        .get_case(pb::GetCaseRequest { case_id: a.clone(), case_number: na.clone(), ..Default::default() })
        .await
        .expect_err("both");
    assert_eq!(e.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn more_reports_of_an_open_case_raise_its_priority_and_bring_its_clocks_forward() {
    let mut m = mesh(monday_ten()).await;
    let id = accepted(&mut m, "sanitation").await;
    let before = case(&mut m, &id).await;
    m.clock.advance_ms(HOUR);
    // Three more reports of the same problem at the same spot: "me too"s, and
    // intake raises the incident's priority; dispatch brings the open case's
    // clocks forward to what the new priority allows from now.
    for _ in 0..3 {
        accepted_or_linked(&mut m, "sanitation").await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let after = loop {
        let c = case(&mut m, &id).await;
        if c.priority > before.priority || Instant::now() > deadline {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(after.priority > before.priority, "priority rose: {} -> {}", before.priority, after.priority);
    let (was, now) = (due(&before, "resolve:1").expect("resolve"), due(&after, "resolve:1").expect("resolve"));
    assert!(now < was, "resolve clock brought forward: {was} -> {now}");
    assert!(now > monday_ten() + HOUR, "counted from the rise, not from the past");
    assert!(after.timeline.iter().any(|t| t.event_type == "priority_raised"), "{:?}", after.timeline);
}

/// A report of `category` in micro-grid m1 that may become a "me too".
async fn accepted_or_linked(m: &mut Mesh, category: &str) {
    m.intake
        .report_incident(intake_pb::ReportIncidentRequest {
            command_id: uuid(),
            source: intake_pb::Source::Resident as i32,
            category_code: category.into(),
            location: Some(intake_pb::report_incident_request::Location::Point(intake_pb::GeoPoint {
                lat: Y0 + 0.5 * STEP,
                lon: X0 + 0.5 * STEP,
            })),
            description: format!("{category}: still there"),
            ..Default::default()
        })
        .await
        .expect("report");
}

/// The rulebook in force.
async fn rulebook(m: &mut Mesh) -> pb::Rulebook {
    let r = m.rulebook.get_rulebook(pb::GetRulebookRequest { version: 0 }).await.expect("get").into_inner();
    r.rulebook.expect("rulebook")
}

/// Publish `book` over `expected_version`.
async fn publish(m: &mut Mesh, book: pb::Rulebook, expected_version: u32) -> Result<u32, tonic::Status> {
    m.rulebook
        .publish_rulebook(pb::PublishRulebookRequest { command_id: uuid(), rulebook: Some(book), expected_version })
        .await
        .map(|r| r.into_inner().version)
}

fn violated(e: &tonic::Status) -> String {
    format!("{} {:?}", e.message(), e.details())
}

/// Add `categories` (emergencies, no attributes) to intake's catalogue.
async fn add_emergency_categories(m: &mut Mesh, codes: &[&str]) {
    let mut categories = m
        .intake
        .get_catalogue(intake_pb::GetCatalogueRequest { version: 0 })
        .await
        .expect("catalogue")
        .into_inner()
        .categories;
    for code in codes {
        categories.push(intake_pb::Category {
            code: code.to_string(),
            name: format!("{code} (emergency)"),
            group: "public safety".into(),
            default_priority: intake_pb::Priority::Urgent as i32,
            emergency: true,
            attributes: vec![],
            duplicate_policy: intake_pb::DuplicatePolicy::Suggest as i32,
        });
    }
    m.intake
        .publish_catalogue(intake_pb::PublishCatalogueRequest { command_id: uuid(), categories })
        .await
        .expect("publish catalogue");
}

fn summoned(c: &pb::Case) -> Vec<String> {
    let mut d: Vec<String> = c.summonses.iter().map(|s| s.department.clone()).collect();
    d.sort();
    d
}

#[tokio::test]
async fn the_rulebook_is_data_checked_as_a_whole_and_a_new_emergency_category_summons_someone() {
    let mut m = mesh(monday_ten()).await;
    // A city starts on the built-in rulebook, version 0.
    let builtin = rulebook(&mut m).await;
    assert_eq!((builtin.version, builtin.rules[0].id.as_str()), (0, "default"));

    // A rule naming a department the rulebook does not have is refused, naming
    // the field, and nothing is published.
    let mut bad = builtin.clone();
    bad.rules[2].department = "fire-brigde".into();
    bad.rules[0].emergency_departments.clear();
    let e = publish(&mut m, bad, 0).await.expect_err("refused");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    for field in ["rulebook.rules[2].department", "rulebook.rules[0].emergency_departments"] {
        assert!(violated(&e).contains(field), "{field}: {e:?}");
    }
    assert_eq!(rulebook(&mut m).await.version, 0);

    // Version 1: a gas company, and gas leaks to it with the fire brigade.
    let mut v1 = builtin.clone();
    v1.departments.push(pb::Department { code: "gas-company".into(), name: "燃气公司 Gas company".into() });
    v1.rules.push(pb::RoutingRule {
        id: "gas-leak".into(),
        category_code: "gas-leak".into(),
        first_tier: pb::Tier::Street as i32,
        department: "gas-company".into(),
        emergency_departments: vec!["fire-brigade".into(), "gas-company".into()],
        ..Default::default()
    });
    v1.note = "gas leaks".into();
    assert_eq!(publish(&mut m, v1.clone(), 0).await.expect("published"), 1);
    // Publishing over a version someone else replaced is refused, even a
    // change of its own; the same content read back is no new version.
    let mut edited = v1.clone();
    edited.sla.as_mut().expect("sla").rating_window_days = 10;
    let e = publish(&mut m, edited, 0).await.expect_err("stale");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let in_force = rulebook(&mut m).await;
    assert_eq!((in_force.version, in_force.note.as_str()), (1, "gas leaks"));
    let e = publish(&mut m, in_force.clone(), 1).await.expect_err("unchanged");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("unchanged"), "{e:?}");

    // The catalogue gains two emergency categories; only one has a rule of its own.
    add_emergency_categories(&mut m, &["gas-leak", "chemical-spill"]).await;
    let gas = accepted(&mut m, "gas-leak").await;
    let gas = case(&mut m, &gas).await;
    let routing = gas.routing.clone().expect("routing");
    assert_eq!((routing.rule_id.as_str(), routing.rulebook_version), ("gas-leak", 1));
    assert_eq!(gas.department, "gas-company");
    assert_eq!(summoned(&gas), ["fire-brigade", "gas-company"]);
    // An emergency category nobody wrote a rule for still summons the
    // catch-all's responders (119, 110 and 120), never nobody.
    let spill = accepted(&mut m, "chemical-spill").await;
    let spill = case(&mut m, &spill).await;
    assert_eq!(spill.routing.clone().expect("routing").rule_id, "default");
    assert_eq!(summoned(&spill), ["emergency-medical", "fire-brigade", "police"]);
}

#[tokio::test]
async fn a_case_keeps_the_plan_it_was_routed_under_and_every_target_must_exist() {
    let mut m = mesh(monday_ten()).await;
    let old = accepted(&mut m, "sanitation").await;
    // Version 1 gives normal cases one office hour to acknowledge, not four.
    let mut v1 = rulebook(&mut m).await;
    let normal = v1.sla.as_mut().expect("sla").priorities.iter_mut().find(|p| p.priority == 2).expect("normal");
    normal.plan.as_mut().expect("plan").acknowledge =
        Some(pb::Span { length: Some(pb::span::Length::OfficeMinutes(60)) });
    assert_eq!(publish(&mut m, v1, 0).await.expect("published"), 1);
    let new = accepted_at(&mut m, "sanitation", 1.5, 0.5).await;
    let grid = owner(pb::Tier::Grid, "g");
    let community = owner(pb::Tier::Community, "c");
    for id in [&old, &new] {
        m.dispatch
            .assign_case(pb::AssignCaseRequest {
                command_id: uuid(),
                case_id: id.clone(),
                expected_owner: grid.clone(),
                to: community.clone(),
            })
            .await
            .expect("assign");
    }
    let (old, new) = (case(&mut m, &old).await, case(&mut m, &new).await);
    assert_eq!(old.routing.clone().expect("routing").rulebook_version, 0);
    assert_eq!(new.routing.clone().expect("routing").rulebook_version, 1);
    // The community's acknowledge clock: four office hours on the old case
    // (its version's plan), one on the new.
    assert_eq!(due(&old, "ack:2"), Some(monday_ten() + 4 * HOUR), "{:?}", old.pending_deadlines);
    assert_eq!(due(&new, "ack:2"), Some(monday_ten() + HOUR), "{:?}", new.pending_deadlines);

    // Targets must exist: a department the rulebook lacks is INVALID_ARGUMENT.
    let e = m
        .dispatch
        .assign_case(pb::AssignCaseRequest {
            command_id: uuid(),
            case_id: new.case_id.clone(),
            expected_owner: community.clone(),
            to: owner(pb::Tier::Department, "ministry-of-silly-walks"),
        })
        .await
        .expect_err("no such department");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(violated(&e).contains("to.id"), "{e:?}");
    let e = m
        .dispatch
        .blow_whistle(pb::BlowWhistleRequest {
            command_id: uuid(),
            case_id: new.case_id.clone(),
            acting_as: community.clone(),
            departments: vec!["police".into(), "ghostbusters".into()],
        })
        .await
        .expect_err("no such department");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(violated(&e).contains("departments[1]"), "{e:?}");
    assert_eq!(case(&mut m, &new.case_id).await.owner, community, "nothing written");
}

#[tokio::test]
async fn a_published_calendar_year_moves_working_day_clocks_set_from_then_on() {
    // Thursday 2027-02-04 10:00: only the statutory days of the 2027 Spring
    // Festival are in the shipped data, not the State Council's arrangement.
    let thursday = at(time::macros::datetime!(2027-02-04 10:00 +8));
    let mut m = mesh(thursday).await;
    let shipped = m.rulebook.get_calendar_year(pb::GetCalendarYearRequest { year: 2027 }).await.expect("get");
    let shipped = shipped.into_inner().year.expect("year");
    assert_eq!((shipped.revision, shipped.complete), (0, false));
    let before = accepted(&mut m, "sanitation").await;
    // A malformed year is refused naming each date; nothing changes.
    let bad = pb::CalendarYear {
        year: 2027,
        holidays: vec!["2027-02-05".into()],
        make_up_workdays: vec!["2027-02-17".into()],
        ..Default::default()
    };
    let e = m
        .rulebook
        .publish_calendar_year(pb::PublishCalendarYearRequest { command_id: uuid(), year: Some(bad) })
        .await
        .expect_err("a Wednesday is no make-up day");
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(violated(&e).contains("year.make_up_workdays[0]"), "{e:?}");
    // The festival, 2027-02-05 to 02-11, entered through the API.
    let mut festival = shipped.clone();
    festival.holidays.extend((9..=11).map(|d| format!("2027-02-{d:02}")));
    festival.note = "Spring Festival".into();
    let r = m
        .rulebook
        .publish_calendar_year(pb::PublishCalendarYearRequest { command_id: uuid(), year: Some(festival) })
        .await
        .expect("published")
        .into_inner();
    assert_eq!(r.revision, 1);
    let after = accepted_at(&mut m, "sanitation", 1.5, 0.5).await;
    let (before, after) = (case(&mut m, &before).await, case(&mut m, &after).await);
    // Two working days to respond: as shipped (the four statutory days, 5th to
    // 8th, off), Tuesday 9th and Wednesday 10th; with the whole festival
    // entered, Friday 12th and Monday 15th. The earlier case keeps the due
    // time it was given.
    assert_eq!(due(&before, "respond:1"), Some(at(time::macros::datetime!(2027-02-10 17:30 +8))));
    assert_eq!(due(&after, "respond:1"), Some(at(time::macros::datetime!(2027-02-15 17:30 +8))));
    let read = m.rulebook.get_calendar_year(pb::GetCalendarYearRequest { year: 2027 }).await.expect("get");
    let read = read.into_inner().year.expect("year");
    assert_eq!((read.revision, read.note.as_str()), (1, "Spring Festival"));
    assert!(read.holidays.contains(&"2027-02-08".to_string()));
}

use gridwork_proto::gridwork::grid::v1 as grid_pb;

/// Wait until dispatch's copy of the tree holds `position`.
async fn tree_copied(m: &Mesh, position: u64) {
    let grid = m.dispatch_app.dispatch().grid();
    grid.wait_for(position, Duration::from_secs(10)).await.expect("dispatch's grid copy catches up");
}

fn certificate(expires_on: &str) -> Option<grid_pb::Certificate> {
    Some(grid_pb::Certificate { number: "GH-0002".into(), issuer: "district".into(), expires_on: expires_on.into() })
}

#[tokio::test]
async fn a_grid_with_no_head_in_post_sends_its_cases_to_the_community_and_says_why() {
    let mut m = mesh(monday_ten()).await;
    let held = accepted(&mut m, "sanitation").await;
    assert_eq!(case(&mut m, &held).await.owner, owner(pb::Tier::Grid, "g"), "a certified head keeps the case");
    let vacated = m
        .registry
        .vacate_head(grid_pb::VacateHeadRequest {
            command_id: uuid(),
            unit_id: "g".into(),
            person_id: "p-head-g".into(),
            departure: grid_pb::HeadDeparture::Dismissed as i32,
            note: "dismissed as ineffective".into(),
        })
        .await
        .expect("vacate")
        .into_inner();
    tree_copied(&m, vacated.position.expect("position").sequence).await;
    let vacant = accepted_at(&mut m, "sanitation", 1.5, 0.5).await;
    let vacant = case(&mut m, &vacant).await;
    assert_eq!(vacant.owner, owner(pb::Tier::Community, "c"));
    let routing = vacant.routing.clone().expect("routing");
    assert_eq!(routing.fallback, "grid g has no head in post (vacant)");
    assert!(routing.explanation.contains("to its community"), "{routing:?}");
    assert!(vacant.timeline[0].summary.contains("no head in post"), "{:?}", vacant.timeline);

    // A new head whose certificate runs out tomorrow: after that, the
    // community takes the grid's cases again.
    let appointed = m
        .registry
        .appoint_head(grid_pb::AppointHeadRequest {
            command_id: uuid(),
            unit_id: "g".into(),
            person_id: "p-new".into(),
            name: "New head".into(),
            certificate: certificate("2026-03-03"),
            replacing_reason: String::new(),
        })
        .await
        .expect("appoint")
        .into_inner();
    tree_copied(&m, appointed.position.expect("position").sequence).await;
    let kept = accepted_at(&mut m, "parking", 0.5, 0.5).await;
    let kept = case(&mut m, &kept).await;
    assert_eq!(kept.owner, owner(pb::Tier::Grid, "g"));
    assert_eq!(kept.routing.expect("routing").fallback, "");
    m.clock.advance_ms(2 * 24 * HOUR);
    let expired = accepted_at(&mut m, "parking", 1.5, 0.5).await;
    let expired = case(&mut m, &expired).await;
    assert_eq!(expired.owner, owner(pb::Tier::Community, "c"));
    assert_eq!(
        expired.routing.expect("routing").fallback,
        "grid g's head p-new holds a certificate that expired on 2026-03-03"
    );
}

#[tokio::test]
async fn escalation_follows_the_current_owners_parent_and_named_owners_must_exist() {
    let mut m = mesh(monday_ten()).await;
    // A second street s2 > c2 beside the first, in the same district (a case
    // stays in its district): the district is drawn wider to hold it.
    m.registry
        .redraw_boundary(grid_pb::RedrawBoundaryRequest {
            command_id: uuid(),
            unit_id: "d".into(),
            boundary_geojson: gridwork_e2e::cells(0.0, 0.0, 8.0, 4.0),
        })
        .await
        .expect("redraw the district");
    let mut last = 0;
    for (unit, parent, kind) in [("s2", "d", grid_pb::UnitKind::Street), ("c2", "s2", grid_pb::UnitKind::Community)] {
        let r = m
            .registry
            .register_unit(grid_pb::RegisterUnitRequest {
                command_id: uuid(),
                unit_id: unit.into(),
                parent_id: parent.into(),
                kind: kind as i32,
                name: unit.into(),
                boundary_geojson: gridwork_e2e::cells(4.0, 0.0, 4.0, 4.0),
                special_site: 0,
            })
            .await
            .expect("register")
            .into_inner();
        last = r.position.expect("position").sequence;
    }
    tree_copied(&m, last).await;
    let id = accepted(&mut m, "sanitation").await;
    let assign = |to: Option<pb::Owner>, expected: Option<pb::Owner>| pb::AssignCaseRequest {
        command_id: uuid(),
        case_id: id.clone(),
        expected_owner: expected,
        to,
    };
    // Owners a dispatcher names must exist and be of the tier named.
    for (to, why) in [
        (owner(pb::Tier::Community, "nowhere"), "is not in the organisation tree"),
        (owner(pb::Tier::Community, "g"), "is not a community"),
        (owner(pb::Tier::Street, "c2"), "is not a street"),
    ] {
        let e = m.dispatch.assign_case(assign(to, owner(pb::Tier::Grid, "g"))).await.expect_err("refused");
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(violated(&e).contains("to.id") && violated(&e).contains(why), "{why}: {e:?}");
    }
    m.dispatch.assign_case(assign(owner(pb::Tier::Community, "c2"), owner(pb::Tier::Grid, "g"))).await.expect("assign");
    // c2 lets its acknowledge clock lapse: the case goes to c2's street, not
    // to the street the case was first placed in.
    assert!(pass(&mut m, 5 * HOUR).await >= 1);
    let c = case(&mut m, &id).await;
    assert_eq!(c.owner, owner(pb::Tier::Street, "s2"), "{:?}", c.timeline);
    assert_eq!(c.street_id, "s", "the placement is unchanged");
}

/// Report `category` at cell (`x`, `y`) as a resident asking for `urgency`; the answer.
async fn reported_at(
    m: &mut Mesh,
    category: &str,
    x: f64,
    y: f64,
    urgency: intake_pb::Priority,
) -> intake_pb::ReportIncidentResponse {
    m.intake
        .report_incident(intake_pb::ReportIncidentRequest {
            command_id: uuid(),
            source: intake_pb::Source::Resident as i32,
            category_code: category.into(),
            location: Some(intake_pb::report_incident_request::Location::Point(intake_pb::GeoPoint {
                lat: Y0 + y * STEP,
                lon: X0 + x * STEP,
            })),
            description: format!("{category}: by the gate"),
            urgency: urgency as i32,
            ..Default::default()
        })
        .await
        .expect("report")
        .into_inner()
}

async fn incident(m: &mut Mesh, id: &str, min_position: u64) -> intake_pb::Incident {
    m.intake
        .get_incident(intake_pb::GetIncidentRequest { incident_id: id.into(), min_position })
        .await
        .expect("get")
        .into_inner()
        .incident
        .expect("incident")
}

/// Wait for dispatch's case of `id`.
async fn case_opened(m: &mut Mesh, id: &str) -> pb::Case {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match m.dispatch.get_case(pb::GetCaseRequest { case_id: id.into(), ..Default::default() }).await {
            Ok(_) => return case(m, id).await,
            Err(s) if s.code() == Code::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(s) => panic!("case {id} never opened: {s:?}"),
        }
    }
}

#[tokio::test]
async fn triage_corrects_category_place_and_priority_and_the_case_opens_with_what_triage_settled() {
    let mut m = mesh(monday_ten()).await;
    // A resident reports "sanitation", urgent, in m1: it is a parked car
    // blocking the fire lane by the gate in m2 — normal, not urgent.
    let r = reported_at(&mut m, "sanitation", 0.5, 0.5, intake_pb::Priority::Urgent).await;
    let id = r.incident_id.clone();
    let reclassified = m
        .intake
        .reclassify_incident(intake_pb::ReclassifyIncidentRequest {
            command_id: uuid(),
            incident_id: id.clone(),
            category_code: "parking".into(),
            note: "a car, not rubbish".into(),
            ..Default::default()
        })
        .await
        .expect("reclassify")
        .into_inner();
    assert!(!reclassified.accepted);
    let relocated = m
        .intake
        .relocate_incident(intake_pb::RelocateIncidentRequest {
            command_id: uuid(),
            incident_id: id.clone(),
            location: Some(intake_pb::relocate_incident_request::Location::Point(intake_pb::GeoPoint {
                lat: Y0 + 0.5 * STEP,
                lon: X0 + 1.5 * STEP,
            })),
            note: "the east gate".into(),
        })
        .await
        .expect("relocate")
        .into_inner();
    assert_eq!(relocated.grid_path.expect("path").micro_grid_id, "m2");
    let e = m
        .intake
        .reassess_priority(intake_pb::ReassessPriorityRequest {
            command_id: uuid(),
            incident_id: id.clone(),
            priority: intake_pb::Priority::Low as i32,
            reason: String::new(),
        })
        .await
        .expect_err("a reason is required");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(violated(&e).contains("reason"), "{e:?}");
    m.intake
        .reassess_priority(intake_pb::ReassessPriorityRequest {
            command_id: uuid(),
            incident_id: id.clone(),
            priority: intake_pb::Priority::Normal as i32,
            reason: "it blocks the fire lane".into(),
        })
        .await
        .expect("reassess");
    let a = m
        .intake
        .accept_incident(intake_pb::AcceptIncidentRequest { command_id: uuid(), incident_id: id.clone() })
        .await
        .expect("accept")
        .into_inner();
    let i = incident(&mut m, &id, a.position.expect("pos").sequence).await;
    assert_eq!(i.category_code, "parking");
    assert_eq!(i.priority, intake_pb::Priority::Normal as i32, "the caller asked urgent; triage decided");
    assert_eq!(i.grid_path.expect("path").micro_grid_id, "m2");
    let kinds: Vec<&str> = i.history.iter().map(|h| h.event_type.as_str()).collect();
    assert!(kinds.contains(&"reclassified") && kinds.contains(&"relocated") && kinds.contains(&"priority_reassessed"));
    let c = case_opened(&mut m, &id).await;
    assert_eq!((c.category_code.as_str(), c.priority), ("parking", intake_pb::Priority::Normal as i32));
    assert_eq!(c.department, "traffic-police", "routed by the corrected category");

    // The old category's zone no longer holds it: a sanitation report at the
    // first spot is an incident of its own, not a "me too" of a parked car.
    let again = reported_at(&mut m, "sanitation", 0.5, 0.5, intake_pb::Priority::Normal).await;
    assert!(again.duplicate_of.is_empty(), "linked to a reclassified incident: {again:?}");

    // A report found in triage to be a fire is dispatched at once.
    let smoke = reported_at(&mut m, "sanitation", 0.5, 1.5, intake_pb::Priority::Normal).await;
    let people = intake_pb::AttributeValue {
        code: "people-trapped".into(),
        value: Some(intake_pb::attribute_value::Value::Selected(intake_pb::SelectedValues {
            values: vec!["unknown".into()],
        })),
    };
    let e = m
        .intake
        .reclassify_incident(intake_pb::ReclassifyIncidentRequest {
            command_id: uuid(),
            incident_id: smoke.incident_id.clone(),
            category_code: "fire".into(),
            note: "smoke from the bin store".into(),
            ..Default::default()
        })
        .await
        .expect_err("a fire needs its attribute");
    assert!(violated(&e).contains("attributes.people-trapped"), "{e:?}");
    let fire = m
        .intake
        .reclassify_incident(intake_pb::ReclassifyIncidentRequest {
            command_id: uuid(),
            incident_id: smoke.incident_id.clone(),
            category_code: "fire".into(),
            attributes: vec![people],
            note: "smoke from the bin store".into(),
            ..Default::default()
        })
        .await
        .expect("reclassify")
        .into_inner();
    assert!(fire.accepted);
    let c = case_opened(&mut m, &smoke.incident_id).await;
    assert!(c.emergency && c.owner == owner(pb::Tier::Street, "s"), "{c:?}");
    assert_eq!(summoned(&c), ["emergency-medical", "fire-brigade", "police"]);
}

#[tokio::test]
async fn a_transfer_stays_in_triage_until_the_receiver_accepts_and_a_refusal_brings_it_back() {
    let mut m = mesh(monday_ten()).await;
    let r = reported_at(&mut m, "neighbour-dispute", 0.5, 0.5, intake_pb::Priority::Normal).await;
    let id = r.incident_id.clone();
    // Out of jurisdiction is no reason to close it.
    let e = m
        .intake
        .reject_incident(intake_pb::RejectIncidentRequest {
            command_id: uuid(),
            incident_id: id.clone(),
            reason: intake_pb::RejectionReason::OutOfJurisdiction as i32,
            note: String::new(),
        })
        .await
        .expect_err("transfer instead");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    let transfer = |to: &str| intake_pb::TransferIncidentRequest {
        command_id: uuid(),
        incident_id: id.clone(),
        to: to.into(),
        reason: "the flats are across the district line".into(),
    };
    let e = m.intake.transfer_incident(transfer("hx")).await.expect_err("KIND:ID");
    assert!(violated(&e).contains("to"), "{e:?}");
    m.intake.transfer_incident(transfer("district:hx")).await.expect("transfer");
    let answer = |accept: bool, note: &str| intake_pb::AnswerTransferRequest {
        command_id: uuid(),
        incident_id: id.clone(),
        as_receiver: "district:hx".into(),
        accept,
        note: note.into(),
    };
    let declined = m.intake.answer_transfer(answer(false, "not ours either")).await.expect("decline").into_inner();
    let i = incident(&mut m, &id, declined.position.expect("pos").sequence).await;
    assert_eq!((i.status, i.transfer_to.as_str()), (intake_pb::IncidentStatus::Reported as i32, ""), "back in triage");
    m.intake.transfer_incident(transfer("district:hx")).await.expect("transfer again");
    let pending = incident(&mut m, &id, 0).await;
    assert_eq!(pending.status, intake_pb::IncidentStatus::Reported as i32, "the first receiver stays responsible");
    let accepted = m.intake.answer_transfer(answer(true, "HX-20260302-7")).await.expect("accept").into_inner();
    let i = incident(&mut m, &id, accepted.position.expect("pos").sequence).await;
    assert_eq!((i.status, i.transfer_to.as_str()), (intake_pb::IncidentStatus::Transferred as i32, "district:hx"));
    assert!(i.history.iter().any(|h| h.summary.contains("HX-20260302-7")), "{:?}", i.history);
    // The receiver's queue lists it.
    let queue = m
        .intake
        .list_incidents(intake_pb::ListIncidentsRequest {
            transfer_to: "district:hx".into(),
            min_position: accepted.position.expect("pos").sequence,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .incidents;
    assert_eq!(queue.iter().map(|i| i.incident_id.as_str()).collect::<Vec<_>>(), [id.as_str()]);

    // A transfer the first receiver then decides itself lapses, visibly.
    let other = reported_at(&mut m, "neighbour-dispute", 1.5, 0.5, intake_pb::Priority::Normal).await;
    m.intake
        .transfer_incident(intake_pb::TransferIncidentRequest {
            command_id: uuid(),
            incident_id: other.incident_id.clone(),
            to: "district:hx".into(),
            reason: "maybe theirs".into(),
        })
        .await
        .expect("transfer");
    let a = m
        .intake
        .accept_incident(intake_pb::AcceptIncidentRequest {
            command_id: uuid(),
            incident_id: other.incident_id.clone(),
        })
        .await
        .expect("accepted here after all")
        .into_inner();
    let i = incident(&mut m, &other.incident_id, a.position.expect("pos").sequence).await;
    assert_eq!(i.transfer_to, "");
    assert!(i.history.iter().any(|h| h.event_type == "transfer_withdrawn"), "{:?}", i.history);
    let late = intake_pb::AnswerTransferRequest {
        command_id: uuid(),
        incident_id: other.incident_id.clone(),
        as_receiver: "district:hx".into(),
        accept: true,
        note: String::new(),
    };
    assert_eq!(m.intake.answer_transfer(late).await.expect_err("lapsed").code(), Code::FailedPrecondition);
    // Its case opens here; the transferred one has none.
    case_opened(&mut m, &other.incident_id).await;
    let e = m.dispatch.get_case(pb::GetCaseRequest { case_id: id.clone(), ..Default::default() }).await;
    assert_eq!(e.expect_err("no case").code(), Code::NotFound);
}
