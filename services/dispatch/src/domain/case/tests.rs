//! Given/when/then for every rule and rejection of the case.

use gridwork_eventstore::testing::{given, given_state};
use time::Duration;

use super::*;

const MIN: i64 = 60_000;
const HOUR: i64 = 60 * MIN;

fn plan() -> SlaPlan {
    SlaPlan {
        acknowledge: Span::Wall(Duration::minutes(30)),
        respond: Span::Wall(Duration::hours(2)),
        resolve: Span::Wall(Duration::hours(24)),
        summons: Span::Wall(Duration::minutes(30)),
        rate: Span::CalendarDays(7),
    }
}

fn clock(now: i64) -> Clock {
    Clock { now_unix_ms: now, calendar: Arc::new(WorkingCalendar::default()), plan: plan() }
}

fn opened() -> pb::CaseOpened {
    pb::CaseOpened {
        incident_id: "i1".into(),
        category_code: "fire-hazard".into(),
        grid_id: "g".into(),
        community_id: "c".into(),
        street_id: "s".into(),
        district_id: "d".into(),
        department: "fire-brigade".into(),
        routing: Some(pb::RoutingDecision {
            rule_id: "r1".into(),
            explanation: "fire-hazard anywhere".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn grid() -> pb::Owner {
    owner(pb::Tier::Grid, "g")
}
fn community() -> pb::Owner {
    owner(pb::Tier::Community, "c")
}
fn street() -> pb::Owner {
    owner(pb::Tier::Street, "s")
}
fn department() -> pb::Owner {
    owner(pb::Tier::Department, "fire-brigade")
}
fn centre() -> pb::Owner {
    owner(pb::Tier::DispatchCentre, "d")
}

fn open_cmd() -> CaseCommand {
    CaseCommand::Open { opened: Box::new(opened()), owner: grid(), summon: vec![], reports: vec![], clock: clock(0) }
}

fn id_of(department: &str) -> DeadlineId {
    DeadlineId::Summons { whistle: 1, department: department.into() }
}

fn fire(id: DeadlineId, now: i64) -> CaseCommand {
    CaseCommand::FireDeadline { deadline: id, clock: clock(now), above: None }
}

fn reassign(from: pb::Owner, to: pb::Owner, now: i64) -> CaseCommand {
    // A unit of the case's district "d" (departments are city-wide).
    let to_district = (to.tier != pb::Tier::Department as i32).then(|| "d".to_string());
    CaseCommand::Reassign { expected: from, to, to_district, clock: clock(now) }
}

fn ack(by: pb::Owner) -> CaseCommand {
    CaseCommand::Acknowledge { by, now_unix_ms: 1 }
}

fn resolve(by: pb::Owner, now: i64) -> CaseCommand {
    CaseCommand::Resolve { by, notes: "cleared the stairwell".into(), clock: clock(now) }
}

fn rate(rating: pb::Rating, now: i64) -> CaseCommand {
    CaseCommand::Verify {
        rating,
        solved: true,
        by: Rater::Reporter,
        comment: "".into(),
        sealed_comment: None,
        clock: clock(now),
    }
}

fn whistle(departments: &[&str], now: i64) -> CaseCommand {
    CaseCommand::BlowWhistle {
        by: street(),
        departments: departments.iter().map(|d| d.to_string()).collect(),
        clock: clock(now),
    }
}

fn report(department: &str) -> CaseCommand {
    CaseCommand::ReportForDuty { department: department.into(), now_unix_ms: 1 }
}

fn complete(department: &str) -> CaseCommand {
    CaseCommand::CompleteSummons { department: department.into(), notes: "pump cleared".into(), now_unix_ms: 2 }
}

/// Run `steps` from an opened case; each must succeed.
fn history(steps: &[CaseCommand]) -> Vec<CaseEvent> {
    let mut state = Case::default();
    let mut events = Vec::new();
    for c in std::iter::once(&open_cmd()).chain(steps) {
        let new = state.decide(c).expect("step succeeds");
        state = state.fold(&new);
        events.extend(new);
    }
    events
}

fn state(steps: &[CaseCommand]) -> Case {
    given::<Case>(history(steps)).state().clone()
}

fn due(case: &Case, id: DeadlineId) -> Option<i64> {
    case.pending.get(&id.to_string()).map(|d| d.due_unix_ms)
}

fn raise(priority: i32, now: i64) -> CaseCommand {
    // The urgent plan: 10 minutes to acknowledge, 1 hour to respond, 4 to resolve.
    let plan = SlaPlan {
        acknowledge: Span::Wall(Duration::minutes(10)),
        respond: Span::Wall(Duration::hours(1)),
        resolve: Span::Wall(Duration::hours(4)),
        ..plan()
    };
    CaseCommand::RaisePriority {
        priority,
        reason: "3 further reports".into(),
        clock: Clock { now_unix_ms: now, calendar: Arc::new(WorkingCalendar::default()), plan },
    }
}

#[test]
fn a_priority_rise_brings_the_open_clocks_forward_never_back_and_only_on_an_open_case() {
    // At 1:30 the respond clock (due 2:00) is nearer than now + 1 h: kept;
    // acknowledge (0:30) has passed unmet and is nearer: kept; resolve (24:00)
    // comes forward to 5:30.
    let raised = Case::default().fold(&history(&[])).decide(&raise(3, 90 * MIN)).expect("raised");
    let [CaseEvent::PriorityRaised(p)] = raised.as_slice() else { panic!("{raised:?}") };
    let clocks: Vec<_> = p.deadlines.iter().map(|d| (d.id.as_str(), d.due_unix_ms)).collect();
    assert_eq!(clocks, [("resolve:1", 90 * MIN + 4 * HOUR)]);
    assert_eq!(p.priority, 3);
    let mut history_raised = history(&[]);
    history_raised.extend(raised.clone());
    let after = given::<Case>(history_raised.clone()).state().clone();
    assert_eq!(due(&after, DeadlineId::Resolve(1)), Some(90 * MIN + 4 * HOUR));
    assert_eq!(after.opened.as_ref().map(|o| o.priority), Some(3));
    // The same or a lower priority again changes nothing.
    given::<Case>(history_raised.clone()).when(raise(3, 2 * HOUR)).then_expect_events([]);
    given::<Case>(history_raised).when(raise(2, 2 * HOUR)).then_expect_events([]);
    // A resolved case is not sped up.
    given::<Case>(history(&[ack(grid()), resolve(grid(), HOUR)])).when(raise(3, 2 * HOUR)).then_expect_events([]);
}

#[test]
fn opening_starts_the_case_clocks_and_the_owners_and_is_idempotent() {
    let events = history(&[]);
    let CaseEvent::Opened(o) = &events[0] else { panic!("{events:?}") };
    let clocks: Vec<_> = o.deadlines.iter().map(|d| (d.id.as_str(), d.due_unix_ms)).collect();
    assert_eq!(clocks, [("respond:1", 2 * HOUR), ("resolve:1", 24 * HOUR)]);
    let CaseEvent::Assigned(a) = &events[1] else { panic!("{events:?}") };
    assert_eq!(a.owner.as_ref(), Some(&grid()));
    let own: Vec<_> = a.deadlines.iter().map(|d| (d.id.as_str(), d.due_unix_ms)).collect();
    assert_eq!(own, [("ack:1", 30 * MIN)]);
    given::<Case>(events).when(open_cmd()).then_expect_events([]);
}

#[test]
fn a_missed_acknowledgement_escalates_once_and_no_hand_off_resets_the_case_clocks() {
    let events = history(&[]);
    given::<Case>(events.clone()).when(fire(DeadlineId::Ack(1), 29 * MIN)).then_expect_events([]);
    let escalated = state(&[fire(DeadlineId::Ack(1), 31 * MIN)]);
    assert_eq!(escalated.owner, Some(community()));
    // The community's own acknowledge clock starts now; the case's do not move.
    assert_eq!(due(&escalated, DeadlineId::Ack(2)), Some(61 * MIN));
    assert_eq!(due(&escalated, DeadlineId::Resolve(1)), Some(24 * HOUR));
    assert_eq!(due(&escalated, DeadlineId::Respond(1)), Some(2 * HOUR));
    // Fired again after a restart: nothing more happens.
    let all = history(&[fire(DeadlineId::Ack(1), 31 * MIN)]);
    given::<Case>(all.clone()).when(fire(DeadlineId::Ack(1), 40 * MIN)).then_expect_events([]);
    // Reassigned on and on: still the same resolve clock.
    let later = state(&[
        fire(DeadlineId::Ack(1), 31 * MIN),
        reassign(community(), street(), 5 * HOUR),
        reassign(street(), grid(), 6 * HOUR),
    ]);
    assert_eq!(due(&later, DeadlineId::Resolve(1)), Some(24 * HOUR));
    assert_eq!(due(&later, DeadlineId::Ack(4)), Some(6 * HOUR + 30 * MIN));
    assert_eq!(later.pending.len(), 3, "one owner clock and the two case clocks: {:?}", later.pending);
}

#[test]
fn escalation_follows_the_current_owners_parent_not_the_cases_first_placement() {
    // Reassigned to another community, which lets its clock lapse: the
    // case goes to that community's street, as the tree stands.
    let other = pb::Owner { tier: pb::Tier::Community as i32, id: "c2".into() };
    let its_street = pb::Owner { tier: pb::Tier::Street as i32, id: "s2".into() };
    let moved = history(&[reassign(grid(), other.clone(), 10 * MIN)]);
    let lapse = CaseCommand::FireDeadline {
        deadline: DeadlineId::Ack(2),
        clock: clock(3 * HOUR),
        above: Some(Above { of: other.clone(), parent: its_street.clone() }),
    };
    given::<Case>(moved.clone()).when(lapse).then_with(|events| {
        let to = events.iter().find_map(|e| match e {
            CaseEvent::Assigned(a) => a.owner.clone(),
            _ => None,
        });
        assert_eq!(to, Some(its_street.clone()), "{events:?}");
    });
    // Not knowing the tree, the case's own placement decides; so it does
    // when the lookup was for an owner who no longer holds the case.
    let blind = state(&[reassign(grid(), other.clone(), 10 * MIN), fire(DeadlineId::Ack(2), 3 * HOUR)]);
    assert_eq!(blind.owner, Some(street()));
    let stale = CaseCommand::FireDeadline {
        deadline: DeadlineId::Ack(2),
        clock: clock(3 * HOUR),
        above: Some(Above { of: grid(), parent: its_street.clone() }),
    };
    given::<Case>(moved).when(stale).then_with(|events| {
        let to = events.iter().find_map(|e| match e {
            CaseEvent::Assigned(a) => a.owner.clone(),
            _ => None,
        });
        assert_eq!(to, Some(street()), "{events:?}");
    });
    // A parent of the wrong tier is not taken for the rung above.
    let wrong = CaseCommand::FireDeadline {
        deadline: DeadlineId::Ack(1),
        clock: clock(31 * MIN),
        above: Some(Above { of: grid(), parent: its_street }),
    };
    given::<Case>(history(&[])).when(wrong).then_with(|events| {
        let to = events.iter().find_map(|e| match e {
            CaseEvent::Assigned(a) => a.owner.clone(),
            _ => None,
        });
        assert_eq!(to, Some(community()), "{events:?}");
    });
}

/// Merge into `into`, opened an hour before this one (at 0) unless said.
fn merge(into: &str, target: Option<(Status, &str)>) -> CaseCommand {
    merge_opened(into, target, -HOUR)
}

fn merge_opened(into: &str, target: Option<(Status, &str)>, opened_at_unix_ms: i64) -> CaseCommand {
    CaseCommand::Merge {
        into: into.into(),
        target: target.map(|(status, m)| MergeTarget { status, merged_into: m.to_string(), opened_at_unix_ms }),
        by: "dispatcher-1".into(),
        reason: "the same fire".into(),
        now_unix_ms: HOUR,
    }
}

#[test]
fn a_case_merges_only_into_another_open_case_and_closes_releasing_its_summonses() {
    // Departments summoned by the street: merging releases them,
    // records the merge and closes the case as merged.
    let whistled = history(&[reassign(grid(), street(), MIN), whistle(&["police"], 10 * MIN)]);
    given::<Case>(whistled).when(merge("other", Some((Status::Assigned, "")))).then_with(|events| {
        assert_eq!(events.len(), 3, "{events:?}");
        assert!(matches!(&events[0], CaseEvent::SummonsReleased(r) if r.department == "police"), "{events:?}");
        assert!(matches!(&events[1], CaseEvent::Merged(m) if m.into_case_id == "other"));
        assert!(matches!(&events[2], CaseEvent::Closed(c) if c.outcome == pb::CloseOutcome::Merged as i32));
    });
    let opened = history(&[]);
    given::<Case>(opened.clone())
        .when(merge("i1", Some((Status::Assigned, ""))))
        .then_expect_error(CaseRejection::SelfMerge);
    given::<Case>(opened.clone()).when(merge("other", None)).then_expect_error(CaseRejection::TargetUnknown);
    given::<Case>(opened.clone())
        .when(merge("other", Some((Status::Closed, ""))))
        .then_expect_error(CaseRejection::TargetNotOpen(Status::Closed));
    given::<Case>(opened.clone())
        .when(merge("other", Some((Status::Closed, "third"))))
        .then_expect_error(CaseRejection::TargetMerged("third".into()));
    given::<Case>(opened.clone())
        .when(merge("other", Some((Status::New, ""))))
        .then_expect_error(CaseRejection::TargetUnknown);
    // Only into the case opened first, ties broken by id: of two
    // dispatchers merging i1 and other into each other, one is refused.
    given::<Case>(opened.clone())
        .when(merge_opened("other", Some((Status::Assigned, "")), MIN))
        .then_expect_error(CaseRejection::TargetNewer("other".into()));
    given::<Case>(opened.clone())
        .when(merge_opened("other", Some((Status::Assigned, "")), 0))
        .then_expect_error(CaseRejection::TargetNewer("other".into()));
    given::<Case>(opened.clone())
        .when(merge_opened("a-first", Some((Status::Assigned, "")), 0))
        .then_with(|events| assert!(matches!(events.last(), Some(CaseEvent::Closed(_))), "{events:?}"));
    // A resolved case awaits its rating: it is not merged away.
    let resolved = history(&[ack(grid()), resolve(grid(), HOUR)]);
    given::<Case>(resolved)
        .when(merge("other", Some((Status::Assigned, ""))))
        .then_expect_error(CaseRejection::InvalidTransition { action: "merge".into(), state: Status::Resolved });
    let merged = state(&[merge("other", Some((Status::Acknowledged, "")))]);
    assert_eq!((merged.status, merged.merged_into.as_str()), (Status::Closed, "other"));
    assert!(merged.pending.is_empty());
    assert_eq!(Case::decode_state(&merged.encode_state()).expect("decodes"), merged);
}

fn linked(id: &str) -> pb::CaseReportLinked {
    pb::CaseReportLinked {
        report_id: id.into(),
        source: "hotline".into(),
        description: format!("{id}: smoke in the stairwell"),
        ..Default::default()
    }
}

fn linked_rate(report: &str, rating: pb::Rating, now: i64) -> CaseCommand {
    CaseCommand::Verify {
        rating,
        solved: false,
        by: Rater::LinkedReporter(report.into()),
        comment: "still smells of smoke".into(),
        sealed_comment: None,
        clock: clock(now),
    }
}

#[test]
fn me_too_reports_reach_the_case_once_and_their_reporters_rate_without_deciding() {
    // Linked before acceptance: the case opens with them, each once.
    let open = CaseCommand::Open {
        opened: Box::new(opened()),
        owner: grid(),
        summon: vec![],
        reports: vec![linked("r1"), linked("r1")],
        clock: clock(0),
    };
    let events = Case::default().decide(&open).expect("open");
    assert_eq!(events.iter().filter(|e| matches!(e, CaseEvent::ReportLinked(_))).count(), 1, "{events:?}");
    let with_r1 = given::<Case>(events).state().clone();
    // Linked later: once (the reactor may deliver twice); never before a case.
    given_state(with_r1.clone())
        .when(CaseCommand::LinkReport { report: linked("r2") })
        .then_expect_events([CaseEvent::ReportLinked(linked("r2"))]);
    given_state(with_r1.clone()).when(CaseCommand::LinkReport { report: linked("r1") }).then_expect_events([]);
    given::<Case>([])
        .when(CaseCommand::LinkReport { report: linked("r1") })
        .then_expect_error(CaseRejection::InvalidTransition { action: "link a report to".into(), state: Status::New });

    // Rating: only a linked report's reporter, only once resolved.
    given_state(with_r1.clone())
        .when(linked_rate("r1", pb::Rating::Satisfied, MIN))
        .then_expect_error(CaseRejection::InvalidTransition { action: "rate".into(), state: Status::Assigned });
    let resolved = [ack(grid()), resolve(grid(), HOUR)].iter().fold(with_r1.clone(), |state, c| {
        let new = state.decide(c).expect("step");
        state.fold(&new)
    });
    given_state(resolved.clone())
        .when(linked_rate("r9", pb::Rating::Satisfied, 2 * HOUR))
        .then_expect_error(CaseRejection::NotLinked("r9".into()));
    // A report made before the resolution links after it; one made
    // after it (the fix did not hold) is intake's to give back to triage.
    let r3 = resolved.decide(&CaseCommand::LinkReport { report: linked("r3") }).expect("made before");
    let resolved = resolved.fold(&r3);
    given_state(resolved.clone())
        .when(CaseCommand::LinkReport {
            report: pb::CaseReportLinked { reported_at_unix_ms: 2 * HOUR, ..linked("r4") },
        })
        .then_expect_error(CaseRejection::InvalidTransition {
            action: "link a report made after the resolution to".into(),
            state: Status::Resolved,
        });
    // Unsatisfied, not solved: recorded, and the case stays resolved,
    // its rating window still running — the reporter decides.
    let rated = resolved.decide(&linked_rate("r1", pb::Rating::Unsatisfied, 2 * HOUR)).expect("linked rating");
    assert!(matches!(&rated[..], [CaseEvent::Verified(v)] if v.by == "reporter:r1"), "{rated:?}");
    let after = resolved.clone().fold(&rated);
    assert_eq!(after.status, Status::Resolved);
    assert_eq!(after.pending, resolved.pending, "the rating window stays");
    given_state(after.clone())
        .when(linked_rate("r1", pb::Rating::Satisfied, 3 * HOUR))
        .then_expect_error(CaseRejection::AlreadyRated("reporter:r1".into()));
    assert_eq!(Case::decode_state(&after.encode_state()).expect("decodes"), after);
    // The reporter closes it; a linked reporter may still rate within the
    // window of the resolution, and not after.
    let closed = after.clone().fold(&after.decide(&rate(pb::Rating::Satisfied, 3 * HOUR)).expect("rate"));
    assert_eq!(closed.status, Status::Closed);
    given_state(closed.clone()).when(CaseCommand::LinkReport { report: linked("r5") }).then_expect_error(
        CaseRejection::InvalidTransition { action: "link a report to".into(), state: Status::Closed },
    );
    given_state(closed.clone())
        .when(linked_rate("r3", pb::Rating::Satisfied, 4 * HOUR))
        .then_with(|e| assert!(matches!(e, [CaseEvent::Verified(_)]), "{e:?}"));
    given_state(closed)
        .when(linked_rate("r3", pb::Rating::Satisfied, 30 * 24 * HOUR))
        .then_expect_error(CaseRejection::RatingWindowPassed);
}

#[test]
fn reassigning_to_the_current_owner_is_refused_rather_than_restarting_its_clock() {
    given::<Case>(history(&[]))
        .when(reassign(grid(), grid(), 20 * MIN))
        .then_expect_error(CaseRejection::AlreadyOwner("grid g".into()));
}

#[test]
fn a_case_is_never_reassigned_to_a_unit_of_another_district() {
    let elsewhere =
        |to: pb::Owner| CaseCommand::Reassign { expected: grid(), to, to_district: Some("d2".into()), clock: clock(2) };
    given::<Case>(history(&[])).when(elsewhere(community())).then_expect_error(CaseRejection::OtherDistrict {
        owner: "community c".into(),
        owner_district: "d2".into(),
        case_district: "d".into(),
    });
    // Its own district's dispatch centre, yes; another's, no.
    let centre = owner(pb::Tier::DispatchCentre, "d2");
    given::<Case>(history(&[])).when(elsewhere(centre)).then_expect_error(CaseRejection::OtherDistrict {
        owner: "dispatch centre d2".into(),
        owner_district: "d2".into(),
        case_district: "d".into(),
    });
}

#[test]
fn a_dispatcher_with_a_stale_view_cannot_reassign() {
    given::<Case>(history(&[reassign(grid(), street(), 1)]))
        .when(reassign(grid(), community(), 2))
        .then_expect_error(CaseRejection::OwnerChanged { current: "street s".into(), expected: "grid g".into() });
}

#[test]
fn a_hand_back_goes_to_the_dispatch_centre_never_to_the_rung_that_breached() {
    // The grid missed its acknowledgement; the community hands the case back.
    let events = history(&[fire(DeadlineId::Ack(1), 31 * MIN)]);
    let back = given::<Case>(events.clone()).state().clone();
    let handed = back
        .decide(&CaseCommand::HandBack {
            by: community(),
            reason: "belongs to the housing office".into(),
            clock: clock(40 * MIN),
        })
        .expect("hand back");
    assert!(matches!(&handed[1], CaseEvent::Assigned(a) if a.owner == Some(centre()) && a.reason == "handed back"));
    let at_centre = back.fold(&handed);
    assert_eq!(due(&at_centre, DeadlineId::Resolve(1)), Some(24 * HOUR), "the case clock runs on");
    // The centre assigns; it does not take the case on itself.
    for (command, action) in [
        (ack(centre()), "acknowledge"),
        (CaseCommand::HandBack { by: centre(), reason: "x".into(), clock: clock(41 * MIN) }, "hand back"),
    ] {
        given_state(at_centre.clone()).when(command).then_expect_error(CaseRejection::CentreAssigns(action.into()));
    }
    let reassigned = at_centre.decide(&reassign(centre(), street(), 42 * MIN)).expect("the centre assigns");
    assert!(matches!(&reassigned[0], CaseEvent::Assigned(a) if a.owner == Some(street())));
    // Only the owner hands back, and only before acknowledging.
    given::<Case>(events.clone())
        .when(ack(grid()))
        .then_expect_error(CaseRejection::NotOwner { action: "acknowledge".into(), owner: "community c".into() });
    let mut acked = events;
    acked.push(CaseEvent::Acknowledged(pb::CaseAcknowledged { owner: Some(community()), at_unix_ms: 0 }));
    given::<Case>(acked)
        .when(CaseCommand::HandBack { by: community(), reason: "x".into(), clock: clock(33 * MIN) })
        .then_expect_error(CaseRejection::InvalidTransition {
            action: "hand back".into(),
            state: Status::Acknowledged,
        });
}

#[test]
fn a_missed_deadline_at_the_top_rung_opens_district_supervision_once() {
    let at_top = state(&[reassign(grid(), department(), 0)]);
    let events = at_top.decide(&fire(DeadlineId::Ack(2), 31 * MIN)).expect("fires");
    assert!(matches!(&events[0], CaseEvent::SlaBreached(b) if b.owner == Some(department())));
    assert!(matches!(&events[1], CaseEvent::SupervisionOpened(s) if s.district_id == "d"));
    let supervised = at_top.fold(&events);
    assert!(supervised.supervised);
    // The resolve clock passes too: a breach, no second supervision.
    let later = supervised.decide(&fire(DeadlineId::Resolve(1), 25 * HOUR)).expect("fires");
    assert_eq!(later.len(), 1);
    assert!(matches!(&later[0], CaseEvent::SlaBreached(_)));
}

#[test]
fn a_missed_resolve_clock_brings_supervision_where_the_case_is_and_a_missed_respond_clock_is_a_warning() {
    let acked = state(&[ack(grid())]);
    // Respond: a breach on the record; the grid keeps working the case.
    let warned = acked.decide(&fire(DeadlineId::Respond(1), 3 * HOUR)).expect("fires");
    assert_eq!(warned.len(), 1);
    assert!(matches!(&warned[0], CaseEvent::SlaBreached(b) if b.owner == Some(grid())));
    let acked = acked.fold(&warned);
    assert_eq!((acked.status, acked.owner.clone()), (Status::Acknowledged, Some(grid())));
    given_state(acked.clone()).when(fire(DeadlineId::Resolve(1), 23 * HOUR)).then_expect_events([]);
    // Resolve: supervised by the district, still with the grid.
    let events = acked.decide(&fire(DeadlineId::Resolve(1), 25 * HOUR)).expect("fires");
    assert!(matches!(&events[0], CaseEvent::SlaBreached(b) if b.owner == Some(grid())));
    assert!(matches!(&events[1], CaseEvent::SupervisionOpened(s) if s.reason.contains("grid g")));
    assert_eq!(events.len(), 2, "nobody is moved by the clock: {events:?}");
}

#[test]
fn a_whistle_naming_a_department_twice_summons_it_once() {
    let owned = state(&[reassign(grid(), street(), 0)]);
    let events = owned.decide(&whistle(&["police", "housing", "police"], 0)).expect("whistle");
    assert!(matches!(&events[0], CaseEvent::WhistleBlown(w) if w.departments == ["housing", "police"]));
}

#[test]
fn a_reopened_round_has_no_rating_window_and_no_supervision_until_it_too_runs_late() {
    let late = state(&[ack(grid()), fire(DeadlineId::Resolve(1), 25 * HOUR), resolve(grid(), 26 * HOUR)]);
    assert!(late.supervised);
    assert!(due(&late, DeadlineId::Rate(1)).is_some());
    let round_two = late.clone().fold(&late.decide(&rate(pb::Rating::Unsatisfied, 27 * HOUR)).expect("reopen"));
    assert_eq!(due(&round_two, DeadlineId::Rate(1)), None, "the rated round's window is over");
    assert!(!round_two.supervised);
    given_state(round_two).when(fire(DeadlineId::Rate(1), 30 * 24 * HOUR)).then_expect_events([]);
}

#[test]
fn the_dispatch_centre_has_no_acknowledge_clock_of_its_own() {
    let back = state(&[CaseCommand::HandBack { by: grid(), reason: "not a grid matter".into(), clock: clock(MIN) }]);
    assert_eq!(back.owner, Some(centre()));
    let ids: Vec<_> = back.pending.keys().map(String::as_str).collect();
    assert_eq!(ids, ["resolve:1", "respond:1"]);
}

#[test]
fn the_street_blows_the_whistle_and_departments_report_or_are_in_breach() {
    let owned = history(&[reassign(grid(), street(), 0)]);
    given::<Case>(owned.clone())
        .when(CaseCommand::BlowWhistle { by: grid(), departments: vec!["police".into()], clock: clock(0) })
        .then_expect_error(CaseRejection::NotTheStreet);
    let summoned =
        state(&[reassign(grid(), street(), 0), whistle(&["police", "urban-management"], 0), report("police")]);
    given_state(summoned.clone()).when(report("police")).then_expect_error(CaseRejection::NotSummoned("police".into()));
    given_state(summoned.clone())
        .when(report("housing"))
        .then_expect_error(CaseRejection::NotSummoned("housing".into()));
    // Summoning a department already at work does nothing.
    given_state(summoned.clone()).when(whistle(&["police"], 5 * MIN)).then_expect_events([]);
    // Urban management never reports: a breach is on its record, the
    // district supervises the case, the owner stays.
    let id = DeadlineId::Summons { whistle: 1, department: "urban-management".into() };
    let late = summoned.decide(&fire(id, 31 * MIN)).expect("breach");
    assert_eq!(late.len(), 2, "{late:?}");
    assert!(
        matches!(&late[0], CaseEvent::SlaBreached(b) if b.owner == Some(owner(pb::Tier::Department, "urban-management")))
    );
    assert!(
        matches!(&late[1], CaseEvent::SupervisionOpened(s) if s.district_id == "d" && s.reason.contains("urban-management"))
    );
    let supervised = summoned.clone().fold(&late);
    assert!(supervised.supervised && supervised.owner == Some(street()));
    // A second department missing its window adds its breach; the
    // supervision is already open.
    let police = DeadlineId::Summons { whistle: 1, department: "police".into() };
    let unreported = state(&[reassign(grid(), street(), 0), whistle(&["police", "urban-management"], 0)]);
    let first = unreported.decide(&fire(id_of("urban-management"), 31 * MIN)).expect("breach");
    let after = unreported.clone().fold(&first);
    let second = after.decide(&fire(police, 31 * MIN)).expect("breach");
    assert!(matches!(second.as_slice(), [CaseEvent::SlaBreached(_)]), "{second:?}");
}

#[test]
fn a_summons_is_a_work_item_and_the_case_resolves_only_when_none_is_outstanding() {
    let steps = [reassign(grid(), street(), 0), ack(street()), whistle(&["police", "housing"], 0)];
    let summoned = state(&steps);
    given_state(summoned.clone())
        .when(complete("police"))
        .then_expect_error(CaseRejection::SummonsNotReported("police".into()));
    given_state(summoned.clone())
        .when(resolve(street(), 2 * HOUR))
        .then_expect_error(CaseRejection::SummonsOutstanding(vec!["housing".into(), "police".into()]));
    let working = summoned.clone().fold(&summoned.decide(&report("police")).expect("report"));
    let progress =
        CaseCommand::SummonsProgress { department: "police".into(), notes: "on site".into(), now_unix_ms: 3 };
    assert!(matches!(&working.decide(&progress).expect("progress")[0], CaseEvent::SummonsProgressRecorded(_)));
    let done = working.clone().fold(&working.decide(&complete("police")).expect("complete"));
    given_state(done.clone()).when(complete("police")).then_expect_error(CaseRejection::NotSummoned("police".into()));
    given_state(done.clone())
        .when(resolve(street(), 2 * HOUR))
        .then_expect_error(CaseRejection::SummonsOutstanding(vec!["housing".into()]));
    // Only the owner releases a department.
    let release = |by| CaseCommand::ReleaseSummons {
        by,
        department: "housing".into(),
        reason: "not a housing matter".into(),
        now_unix_ms: 4,
    };
    given_state(done.clone())
        .when(release(grid()))
        .then_expect_error(CaseRejection::NotOwner { action: "release a summons".into(), owner: "street s".into() });
    let released = done.clone().fold(&done.decide(&release(street())).expect("release"));
    assert!(released.outstanding_summonses().is_empty());
    let resolved = released.clone().fold(&released.decide(&resolve(street(), 2 * HOUR)).expect("resolves"));
    // A resolved case takes no report for duty.
    given_state(resolved.clone()).when(report("police")).then_expect_error(CaseRejection::InvalidTransition {
        action: "report for duty on".into(),
        state: Status::Resolved,
    });
    // Reopened, the street can summon the police again.
    let reopened = resolved.clone().fold(&resolved.decide(&rate(pb::Rating::Unsatisfied, 3 * HOUR)).expect("reopen"));
    let again = reopened.clone().fold(&reopened.decide(&ack(street())).expect("ack"));
    let second = again.decide(&whistle(&["police"], 4 * HOUR)).expect("whistle");
    assert!(matches!(&second[0], CaseEvent::WhistleBlown(w) if w.whistle == 2 && w.departments == ["police"]));
}

#[test]
fn an_unrated_resolution_closes_not_rated_when_the_window_passes() {
    let resolved = state(&[ack(grid()), resolve(grid(), HOUR)]);
    assert_eq!(due(&resolved, DeadlineId::Rate(1)), Some(HOUR + 7 * 24 * HOUR));
    given_state(resolved.clone()).when(fire(DeadlineId::Rate(1), 7 * 24 * HOUR)).then_expect_events([]);
    given_state(resolved.clone()).when(fire(DeadlineId::Rate(1), 8 * 24 * HOUR)).then_expect_events([
        CaseEvent::Closed(pb::CaseClosed { at_unix_ms: 8 * 24 * HOUR, outcome: pb::CloseOutcome::NotRated as i32 }),
    ]);
    let closed = history(&[ack(grid()), resolve(grid(), HOUR), fire(DeadlineId::Rate(1), 8 * 24 * HOUR)]);
    given::<Case>(closed)
        .when(rate(pb::Rating::Satisfied, 9 * 24 * HOUR))
        .then_expect_error(CaseRejection::InvalidTransition { action: "rate".into(), state: Status::Closed });
}

#[test]
fn unsatisfied_reopens_a_new_round_with_its_own_clocks_and_satisfied_closes_rated() {
    let resolved = state(&[ack(grid()), resolve(grid(), 2)]);
    let reopened = resolved
        .decide(&CaseCommand::Verify {
            rating: pb::Rating::Unsatisfied,
            solved: false,
            by: Rater::Staff("w7".into()),
            comment: "bikes are back".into(),
            sealed_comment: None,
            clock: clock(100 * MIN),
        })
        .expect("verify");
    assert!(
        matches!(&reopened[0], CaseEvent::Verified(v) if v.by == "staff:w7" && v.round == 1 && v.solved == pb::ResolutionAnswer::NotSolved as i32)
    );
    assert!(
        matches!(&reopened[1], CaseEvent::Reopened(r) if r.round == 2 && r.deadlines[1].id == "resolve:2" && r.deadlines[1].due_unix_ms == 100 * MIN + 24 * HOUR)
    );
    assert!(matches!(&reopened[2], CaseEvent::Assigned(a) if a.reason == "reopened" && a.owner == Some(grid())));
    let round_two = resolved.fold(&reopened);
    assert_eq!(round_two.round, 2);
    assert_eq!(due(&round_two, DeadlineId::Resolve(1)), None);
    given::<Case>(history(&[ack(grid()), resolve(grid(), 2)])).when(rate(pb::Rating::Satisfied, 5)).then_expect_events(
        [
            CaseEvent::Verified(pb::CaseVerified {
                rating: pb::Rating::Satisfied as i32,
                by: "reporter".into(),
                comment: "".into(),
                solved: pb::ResolutionAnswer::Solved as i32,
                round: 1,
                at_unix_ms: 5,
                sealed_comment: None,
            }),
            CaseEvent::Closed(pb::CaseClosed { at_unix_ms: 5, outcome: pb::CloseOutcome::Rated as i32 }),
        ],
    );
}

#[test]
fn only_the_reporter_or_staff_may_rate() {
    assert_eq!(Rater::parse("reporter"), Some(Rater::Reporter));
    assert_eq!(Rater::parse("staff:w7"), Some(Rater::Staff("w7".into())));
    for nobody in ["neighbour", "staff:", "", "Reporter", &format!("staff:{}", "x".repeat(65))] {
        assert_eq!(Rater::parse(nobody), None, "{nobody}");
    }
}

#[test]
fn transitions_outside_the_graph_name_the_current_state() {
    given::<Case>(history(&[]))
        .when(resolve(grid(), 1))
        .then_expect_error(CaseRejection::InvalidTransition { action: "resolve".into(), state: Status::Assigned });
    given::<Case>(history(&[]))
        .when(rate(pb::Rating::Satisfied, 1))
        .then_expect_error(CaseRejection::InvalidTransition { action: "rate".into(), state: Status::Assigned });
    given::<Case>([])
        .when(ack(grid()))
        .then_expect_error(CaseRejection::InvalidTransition { action: "acknowledge".into(), state: Status::New });
}

#[test]
fn events_written_before_case_clocks_still_fold_and_escalate() {
    let old =
        |id: &str, kind: pb::DeadlineKind, due| pb::Deadline { id: id.into(), kind: kind as i32, due_unix_ms: due };
    let events = vec![
        CaseEvent::Opened(opened()),
        CaseEvent::Assigned(pb::CaseAssigned {
            assignment: 1,
            owner: Some(grid()),
            reason: "routed".into(),
            deadlines: vec![
                old("1:ack", pb::DeadlineKind::Acknowledge, 30 * MIN),
                old("1:respond", pb::DeadlineKind::Respond, 2 * HOUR),
                old("1:resolve", pb::DeadlineKind::Resolve, 24 * HOUR),
            ],
        }),
        CaseEvent::WhistleBlown(pb::WhistleBlown {
            departments: vec!["police".into()],
            acknowledge_by_unix_ms: 10 * MIN,
            whistle: 1,
        }),
    ];
    let state = given::<Case>(events).state().clone();
    assert_eq!(state.round, 1);
    let fired = state.decide(&fire(DeadlineId::parse("1:ack").expect("old id"), 31 * MIN)).expect("fires");
    assert!(matches!(&fired[1], CaseEvent::Assigned(a) if a.owner == Some(community())));
    let on = state.fold(&fired);
    assert_eq!(on.pending.get("1:resolve").map(|d| d.due_unix_ms), Some(24 * HOUR));
    assert!(on.pending.contains_key("summons:1:police"), "a summons clock is named from its event: {:?}", on.pending);
    assert_eq!(on.outstanding_summonses(), ["police"]);
}

#[test]
fn state_survives_a_snapshot_round_trip() {
    let state = state(&[
        reassign(grid(), street(), 0),
        whistle(&["police", "housing"], 0),
        report("police"),
        fire(DeadlineId::Ack(2), 31 * MIN),
        fire(DeadlineId::Ack(3), 62 * MIN),
    ]);
    assert!(state.supervised && state.owner == Some(department()), "street, then brigade, missed: {state:?}");
    assert_eq!(Case::decode_state(&state.encode_state()).expect("decodes"), state);
}

#[test]
fn an_emergency_summons_its_departments_on_opening_within_the_plans_window() {
    let command = CaseCommand::Open {
        opened: Box::new(pb::CaseOpened { emergency: true, ..opened() }),
        owner: street(),
        summon: vec!["fire-brigade".into(), "police".into()],
        reports: vec![],
        clock: clock(0),
    };
    let events = Case::default().decide(&command).expect("open");
    assert!(
        matches!(&events[2], CaseEvent::WhistleBlown(w) if w.departments.len() == 2 && w.acknowledge_by_unix_ms == 30 * MIN)
    );
}
