//! `decide` and `evolve`: every rule of the case, and how its events fold into state.

use super::*;

impl Aggregate for Case {
    const CONTEXT: &'static str = "dispatch";
    const TYPE: &'static str = "case";
    /// 4: when the round was resolved (`resolved_at_unix_ms`).
    const STATE_VERSION: u32 = 4;
    type Command = CaseCommand;
    type Event = CaseEvent;
    type Rejection = CaseRejection;

    fn decide(&self, command: &CaseCommand) -> Result<Vec<CaseEvent>, CaseRejection> {
        let active = [Status::Assigned, Status::Acknowledged];
        match command {
            CaseCommand::Open { opened, owner: first, summon, reports, clock } => {
                if self.status != Status::New {
                    // Idempotent by incident: the process manager may deliver twice.
                    return Ok(vec![]);
                }
                let opened = pb::CaseOpened {
                    deadlines: clock.case_clocks(1),
                    opened_at_unix_ms: clock.now_unix_ms,
                    ..(**opened).clone()
                };
                let mut events = vec![CaseEvent::Opened(opened), self.assign(first.clone(), "routed", clock)];
                if !summon.is_empty() {
                    events.push(self.whistle(summon.clone(), clock));
                }
                let mut seen = BTreeSet::new();
                events.extend(
                    reports
                        .iter()
                        .filter(|r| seen.insert(r.report_id.clone()))
                        .map(|r| CaseEvent::ReportLinked(r.clone())),
                );
                Ok(events)
            }
            CaseCommand::LinkReport { report } => {
                // A report made before the resolution is the handler's to read
                // and its reporter's to rate, even if its link lands after it.
                // One made after it says the fix did not hold, and a closed
                // case takes none: intake gives those back to triage when it
                // learns of the resolution (the reactor ignores this refusal).
                // Once per report: the reactor may deliver twice.
                let after_resolution =
                    self.resolved_at_unix_ms.is_some_and(|resolved| report.reported_at_unix_ms > resolved);
                if matches!(self.status, Status::New | Status::Closed) || after_resolution {
                    return Err(CaseRejection::InvalidTransition {
                        action: if after_resolution {
                            "link a report made after the resolution to".into()
                        } else {
                            "link a report to".into()
                        },
                        state: self.status,
                    });
                }
                if self.linked_reports.contains(&report.report_id) {
                    return Ok(vec![]);
                }
                Ok(vec![CaseEvent::ReportLinked(report.clone())])
            }
            CaseCommand::RaisePriority { priority, reason, clock } => {
                let current = self.opened.as_ref().map_or(0, |o| o.priority);
                // Only an open case is sped up, and only by a higher priority: a
                // repeated or lower one changes nothing (the reactor may deliver twice).
                if !active.contains(&self.status) || *priority <= current {
                    return Ok(vec![]);
                }
                let plan = &clock.plan;
                let deadlines = self
                    .pending
                    .values()
                    .filter_map(|d| {
                        let span = match DeadlineId::parse(&d.id)? {
                            DeadlineId::Ack(_) => plan.acknowledge,
                            DeadlineId::Respond(_) => plan.respond,
                            DeadlineId::Resolve(_) => plan.resolve,
                            _ => return None,
                        };
                        let due = clock.calendar.after(clock.now_unix_ms, span);
                        (due < d.due_unix_ms).then(|| pb::Deadline { due_unix_ms: due, ..d.clone() })
                    })
                    .collect();
                Ok(vec![CaseEvent::PriorityRaised(pb::CasePriorityRaised {
                    priority: *priority,
                    reason: reason.clone(),
                    deadlines,
                    at_unix_ms: clock.now_unix_ms,
                })])
            }
            CaseCommand::Acknowledge { by, now_unix_ms } => {
                self.require("acknowledge", &[Status::Assigned])?;
                self.require_handler(by, "acknowledge")?;
                Ok(vec![CaseEvent::Acknowledged(pb::CaseAcknowledged {
                    owner: Some(by.clone()),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            CaseCommand::RecordProgress { by, notes, now_unix_ms } => {
                self.require("record progress on", &[Status::Acknowledged])?;
                self.require_handler(by, "record progress on")?;
                Ok(vec![CaseEvent::ProgressRecorded(pb::ProgressRecorded {
                    owner: Some(by.clone()),
                    notes: notes.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            CaseCommand::HandBack { by, reason, clock } => {
                self.require("hand back", &[Status::Assigned])?;
                self.require_handler(by, "hand back")?;
                // Back to the dispatch centre, never to the rung that just let it lapse.
                let district = self.opened.as_ref().map(|o| o.district_id.as_str()).unwrap_or_default();
                Ok(vec![
                    CaseEvent::HandedBack(pb::CaseHandedBack { owner: Some(by.clone()), reason: reason.clone() }),
                    self.assign(owner(pb::Tier::DispatchCentre, district), "handed back", clock),
                ])
            }
            CaseCommand::Reassign { expected, to, to_district, clock } => {
                self.require("reassign", &active)?;
                match &self.owner {
                    Some(current) if current != expected => {
                        return Err(CaseRejection::OwnerChanged { current: label(current), expected: label(expected) });
                    }
                    Some(current) if current == to => return Err(CaseRejection::AlreadyOwner(label(current))),
                    _ => {}
                }
                let case_district = self.opened.as_ref().map(|o| o.district_id.as_str()).unwrap_or_default();
                if let Some(owner_district) = to_district
                    && !case_district.is_empty()
                    && owner_district != case_district
                {
                    return Err(CaseRejection::OtherDistrict {
                        owner: label(to),
                        owner_district: owner_district.clone(),
                        case_district: case_district.to_string(),
                    });
                }
                Ok(vec![self.assign(to.clone(), "reassigned", clock)])
            }
            CaseCommand::FireDeadline { deadline, clock, above } => Ok(self.fire(deadline, clock, above.as_ref())),
            CaseCommand::BlowWhistle { by, departments, clock } => {
                self.require("blow the whistle on", &active)?;
                if by.tier != pb::Tier::Street as i32 || self.owner.as_ref() != Some(by) {
                    return Err(CaseRejection::NotTheStreet);
                }
                // A department already at work is not summoned twice; one whose
                // earlier summons finished (a reopened case) is summoned anew.
                let fresh: Vec<String> = departments
                    .iter()
                    .filter(|d| !self.summonses.get(*d).is_some_and(Summons::active))
                    .cloned()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                if fresh.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![self.whistle(fresh, clock)])
            }
            CaseCommand::ReportForDuty { department, now_unix_ms } => {
                self.require("report for duty on", &active)?;
                match self.summonses.get(department).map(|s| s.status) {
                    Some(pb::SummonsStatus::Summoned) => {}
                    _ => return Err(CaseRejection::NotSummoned(department.clone())),
                }
                Ok(vec![CaseEvent::DepartmentReported(pb::DepartmentReported {
                    department: department.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            CaseCommand::SummonsProgress { department, notes, now_unix_ms } => {
                self.require("record summons progress on", &active)?;
                self.summons(department, true)?;
                Ok(vec![CaseEvent::SummonsProgressRecorded(pb::SummonsProgressRecorded {
                    department: department.clone(),
                    notes: notes.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            CaseCommand::CompleteSummons { department, notes, now_unix_ms } => {
                self.require("complete a summons on", &active)?;
                self.summons(department, true)?;
                Ok(vec![CaseEvent::SummonsCompleted(pb::SummonsCompleted {
                    department: department.clone(),
                    notes: notes.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            CaseCommand::ReleaseSummons { by, department, reason, now_unix_ms } => {
                self.require("release a summons on", &active)?;
                self.require_owner(by, "release a summons")?;
                self.summons(department, false)?;
                Ok(vec![CaseEvent::SummonsReleased(pb::SummonsReleased {
                    department: department.clone(),
                    by: Some(by.clone()),
                    reason: reason.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            CaseCommand::Resolve { by, notes, clock } => {
                self.require("resolve", &[Status::Acknowledged])?;
                self.require_handler(by, "resolve")?;
                let outstanding = self.outstanding_summonses();
                if !outstanding.is_empty() {
                    return Err(CaseRejection::SummonsOutstanding(outstanding));
                }
                Ok(vec![CaseEvent::Resolved(pb::CaseResolved {
                    owner: Some(by.clone()),
                    notes: notes.clone(),
                    at_unix_ms: clock.now_unix_ms,
                    rate_by: Some(clock.deadline(
                        DeadlineId::Rate(self.round),
                        pb::DeadlineKind::Rate,
                        clock.plan.rate,
                    )),
                })])
            }
            CaseCommand::Merge { into, target, by, reason, now_unix_ms } => {
                self.require("merge", &active)?;
                let own = self.opened.as_ref().map(|o| o.incident_id.as_str()).unwrap_or_default();
                if into == own {
                    return Err(CaseRejection::SelfMerge);
                }
                let Some(target) = target.as_ref().filter(|t| t.status != Status::New) else {
                    return Err(CaseRejection::TargetUnknown);
                };
                if !target.merged_into.is_empty() {
                    return Err(CaseRejection::TargetMerged(target.merged_into.clone()));
                }
                if matches!(target.status, Status::Resolved | Status::Closed) {
                    return Err(CaseRejection::TargetNotOpen(target.status));
                }
                // Into the earlier case only (ties by id): each merge goes one
                // way in one order, so no two merges close a pair or a ring.
                let own_opened = self.opened.as_ref().map(|o| o.opened_at_unix_ms).unwrap_or_default();
                if (target.opened_at_unix_ms, into.as_str()) > (own_opened, own) {
                    return Err(CaseRejection::TargetNewer(into.clone()));
                }
                // The departments still at work here are released: the case
                // they were summoned to is the other one now.
                let mut events: Vec<CaseEvent> = self
                    .outstanding_summonses()
                    .into_iter()
                    .map(|department| {
                        CaseEvent::SummonsReleased(pb::SummonsReleased {
                            department,
                            by: self.owner.clone(),
                            reason: format!("merged into {into}"),
                            at_unix_ms: *now_unix_ms,
                        })
                    })
                    .collect();
                events.push(CaseEvent::Merged(pb::CaseMerged {
                    into_case_id: into.clone(),
                    by: by.clone(),
                    reason: reason.clone(),
                    at_unix_ms: *now_unix_ms,
                }));
                events.push(CaseEvent::Closed(pb::CaseClosed {
                    at_unix_ms: *now_unix_ms,
                    outcome: pb::CloseOutcome::Merged as i32,
                }));
                Ok(events)
            }
            CaseCommand::Verify { rating, solved, by, comment, sealed_comment, clock } => {
                if let Rater::LinkedReporter(report) = by {
                    return self.linked_rating(report, *rating, *solved, comment, sealed_comment, clock.now_unix_ms);
                }
                self.require("rate", &[Status::Resolved])?;
                let verified = CaseEvent::Verified(pb::CaseVerified {
                    rating: *rating as i32,
                    by: by.label(),
                    comment: comment.clone(),
                    sealed_comment: sealed_comment.clone(),
                    solved: if *solved { pb::ResolutionAnswer::Solved } else { pb::ResolutionAnswer::NotSolved } as i32,
                    round: self.round,
                    at_unix_ms: clock.now_unix_ms,
                });
                match rating {
                    pb::Rating::Unsatisfied => {
                        // 重办: back to the owner who resolved it, with a new round's clocks.
                        let back_to = self.owner.clone().unwrap_or_default();
                        let round = self.round + 1;
                        Ok(vec![
                            verified,
                            CaseEvent::Reopened(pb::CaseReopened {
                                // A comment in plain only (a sealed one is read
                                // with the rating, never copied here).
                                reason: if comment.is_empty() {
                                    "rated unsatisfied".into()
                                } else {
                                    format!("rated unsatisfied: {comment}")
                                },
                                round,
                                deadlines: clock.case_clocks(round),
                            }),
                            self.assign(back_to, "reopened", clock),
                        ])
                    }
                    _ => Ok(vec![
                        verified,
                        CaseEvent::Closed(pb::CaseClosed {
                            at_unix_ms: clock.now_unix_ms,
                            outcome: pb::CloseOutcome::Rated as i32,
                        }),
                    ]),
                }
            }
        }
    }

    fn evolve(mut self, event: &CaseEvent) -> Self {
        let remove = |pending: &mut BTreeMap<String, pb::Deadline>, keep: &dyn Fn(&DeadlineId) -> bool| {
            pending.retain(|id, _| DeadlineId::parse(id).is_none_or(|d| keep(&d)));
        };
        match event {
            CaseEvent::Opened(e) => {
                self.opened = Some(e.clone());
                self.round = 1;
                for d in &e.deadlines {
                    self.pending.insert(d.id.clone(), d.clone());
                }
            }
            CaseEvent::Assigned(e) => {
                self.owner = e.owner.clone();
                self.assignment = e.assignment;
                self.status = Status::Assigned;
                // The new owner's clock replaces the last owner's. Events from
                // before case-level clocks carried respond and resolve per
                // assignment: those replace the case clocks, as they did then.
                let legacy =
                    e.deadlines.iter().any(|d| DeadlineId::parse(&d.id).is_some_and(|d| d.scope() == Scope::Case));
                remove(&mut self.pending, &|d| !(d.scope() == Scope::Owner || (legacy && d.scope() == Scope::Case)));
                for d in &e.deadlines {
                    self.pending.insert(d.id.clone(), d.clone());
                }
            }
            CaseEvent::Acknowledged(_) => {
                self.status = Status::Acknowledged;
                remove(&mut self.pending, &|d| d.scope() != Scope::Owner);
            }
            CaseEvent::ProgressRecorded(_) => {
                remove(&mut self.pending, &|d| !matches!(d, DeadlineId::Respond(_)));
            }
            CaseEvent::HandedBack(_) | CaseEvent::SummonsProgressRecorded(_) => {}
            CaseEvent::Verified(e) => {
                // A linked reporter's rating decides nothing: the window stays.
                if !matches!(Rater::parse(&e.by), Some(Rater::LinkedReporter(_))) {
                    remove(&mut self.pending, &|d| d.scope() != Scope::Rating);
                }
                self.rated_this_round.insert(e.by.clone());
            }
            CaseEvent::SlaBreached(e) => {
                // By meaning: an old event's "w1:police" is today's "summons:1:police".
                if let Some(breached) = e.deadline.as_ref().and_then(|d| DeadlineId::parse(&d.id)) {
                    remove(&mut self.pending, &|d| *d != breached);
                } else if let Some(d) = &e.deadline {
                    self.pending.remove(&d.id);
                }
            }
            CaseEvent::SupervisionOpened(_) => self.supervised = true,
            CaseEvent::WhistleBlown(e) => {
                self.whistles = e.whistle;
                for d in &e.departments {
                    self.summonses
                        .insert(d.clone(), Summons { whistle: e.whistle, status: pb::SummonsStatus::Summoned });
                    let id = DeadlineId::Summons { whistle: e.whistle, department: d.clone() }.to_string();
                    self.pending.insert(
                        id.clone(),
                        pb::Deadline {
                            id,
                            kind: pb::DeadlineKind::Acknowledge as i32,
                            due_unix_ms: e.acknowledge_by_unix_ms,
                        },
                    );
                }
            }
            CaseEvent::DepartmentReported(e) => self.summons_moved(&e.department, pb::SummonsStatus::Reported),
            CaseEvent::SummonsCompleted(e) => self.summons_moved(&e.department, pb::SummonsStatus::Completed),
            CaseEvent::SummonsReleased(e) => self.summons_moved(&e.department, pb::SummonsStatus::Released),
            CaseEvent::Merged(e) => self.merged_into.clone_from(&e.into_case_id),
            CaseEvent::ReportLinked(e) => {
                self.linked_reports.insert(e.report_id.clone());
            }
            CaseEvent::Resolved(e) => {
                self.status = Status::Resolved;
                self.pending.clear();
                // A resolution from before the rating window had none to give.
                self.rate_until_unix_ms = Some(e.rate_by.as_ref().map_or(e.at_unix_ms, |d| d.due_unix_ms));
                self.resolved_at_unix_ms = Some(e.at_unix_ms);
                if let Some(d) = &e.rate_by {
                    self.pending.insert(d.id.clone(), d.clone());
                }
            }
            CaseEvent::Closed(_) => {
                self.status = Status::Closed;
                self.pending.clear();
            }
            CaseEvent::PriorityRaised(e) => {
                if let Some(opened) = self.opened.as_mut() {
                    opened.priority = e.priority;
                }
                for d in &e.deadlines {
                    if let Some(pending) = self.pending.get_mut(&d.id) {
                        pending.due_unix_ms = d.due_unix_ms;
                    }
                }
            }
            CaseEvent::Reopened(e) => {
                self.round = if e.round > 0 { e.round } else { self.round + 1 };
                self.rated_this_round.clear();
                self.rate_until_unix_ms = None;
                self.resolved_at_unix_ms = None;
                // A new round is supervised only if it, too, runs late.
                self.supervised = false;
                for d in &e.deadlines {
                    self.pending.insert(d.id.clone(), d.clone());
                }
            }
        }
        self
    }

    fn encode_state(&self) -> Vec<u8> {
        use prost::Message as _;
        let status = match self.status {
            Status::New => 0,
            Status::Assigned => 1,
            Status::Acknowledged => 2,
            Status::Resolved => 3,
            Status::Closed => 4,
        };
        pb::CaseState {
            opened: self.opened.clone(),
            status,
            owner: self.owner.clone(),
            previous_owner: None,
            assignment: self.assignment,
            pending: self.pending.values().cloned().collect(),
            summoned: Default::default(),
            whistles: self.whistles,
            summonses: self
                .summonses
                .iter()
                .map(|(d, s)| pb::SummonsState { department: d.clone(), whistle: s.whistle, status: s.status as i32 })
                .collect(),
            round: self.round,
            supervised: self.supervised,
            merged_into: self.merged_into.clone(),
            linked_reports: self.linked_reports.iter().cloned().collect(),
            rated_this_round: self.rated_this_round.iter().cloned().collect(),
            rate_until_unix_ms: self.rate_until_unix_ms.unwrap_or(0),
            resolved_at_unix_ms: self.resolved_at_unix_ms.unwrap_or(0),
        }
        .encode_to_vec()
    }

    fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError> {
        use prost::Message as _;
        let s = pb::CaseState::decode(bytes).map_err(|e| DecodeError::new("case state", e))?;
        let status = match s.status {
            0 => Status::New,
            1 => Status::Assigned,
            2 => Status::Acknowledged,
            3 => Status::Resolved,
            4 => Status::Closed,
            other => return Err(DecodeError::new("case state", format!("unknown status {other}"))),
        };
        let summonses = s
            .summonses
            .into_iter()
            .map(|x| {
                let status = pb::SummonsStatus::try_from(x.status)
                    .map_err(|_| DecodeError::new("case state", format!("unknown summons status {}", x.status)))?;
                Ok((x.department, Summons { whistle: x.whistle, status }))
            })
            .collect::<Result<_, DecodeError>>()?;
        Ok(Self {
            opened: s.opened,
            status,
            owner: s.owner,
            assignment: s.assignment,
            round: s.round,
            pending: s.pending.into_iter().map(|d| (d.id.clone(), d)).collect(),
            supervised: s.supervised,
            summonses,
            whistles: s.whistles,
            merged_into: s.merged_into,
            linked_reports: s.linked_reports.into_iter().collect(),
            rated_this_round: s.rated_this_round.into_iter().collect(),
            rate_until_unix_ms: (s.rate_until_unix_ms != 0).then_some(s.rate_until_unix_ms),
            resolved_at_unix_ms: (s.resolved_at_unix_ms != 0).then_some(s.resolved_at_unix_ms),
        })
    }
}

impl Case {
    /// A linked "me too" reporter rates: recorded and counted (the 12345
    /// rates count every caller), deciding nothing — the case's own reporter
    /// (or staff for them) closes or reopens it. Allowed from the round's
    /// resolution to the end of its rating window, even once the case has
    /// closed; once per reporter and round.
    pub(super) fn linked_rating(
        &self,
        report: &str,
        rating: pb::Rating,
        solved: bool,
        comment: &str,
        sealed_comment: &Option<gridwork_personal::Sealed>,
        now_unix_ms: i64,
    ) -> Result<Vec<CaseEvent>, CaseRejection> {
        if !self.linked_reports.contains(report) {
            return Err(CaseRejection::NotLinked(report.to_string()));
        }
        let Some(until) = self.rate_until_unix_ms.filter(|_| matches!(self.status, Status::Resolved | Status::Closed))
        else {
            return Err(CaseRejection::InvalidTransition { action: "rate".into(), state: self.status });
        };
        if self.status == Status::Closed && now_unix_ms > until {
            return Err(CaseRejection::RatingWindowPassed);
        }
        let by = Rater::LinkedReporter(report.to_string()).label();
        if self.rated_this_round.contains(&by) {
            return Err(CaseRejection::AlreadyRated(by));
        }
        Ok(vec![CaseEvent::Verified(pb::CaseVerified {
            rating: rating as i32,
            by,
            comment: comment.to_string(),
            sealed_comment: sealed_comment.clone(),
            solved: if solved { pb::ResolutionAnswer::Solved } else { pb::ResolutionAnswer::NotSolved } as i32,
            round: self.round,
            at_unix_ms: now_unix_ms,
        })])
    }

    pub(super) fn summons_moved(&mut self, department: &str, to: pb::SummonsStatus) {
        if let Some(s) = self.summonses.get_mut(department) {
            s.status = to;
        }
        self.pending.retain(|id, _| DeadlineId::parse(id).is_none_or(|d| d.department() != Some(department)));
    }
}
