//! The case aggregate (subject `dispatch.case.<incident id>`): one accepted
//! incident on its way up and down the ladder (grid → community → street →
//! department), against its deadlines, to a rated close.
//!
//! The states form an explicit graph; any other transition is refused naming the
//! current state:
//!
//! ```text
//! New ─open→ Assigned ─acknowledge→ Acknowledged ─resolve→ Resolved ─verify(ok)→ Closed
//!              ↑  │ hand back (before acknowledging), reassign, escalate      │
//!              └──┴────────────────────────────── verify(unsatisfied): reopen ┘
//! ```
//!
//! Deadlines are state: each assignment carries its acknowledge / respond /
//! resolve deadlines, computed in `decide` from the injected time, the SLA plan and
//! the working calendar. `Escalate` names a deadline; it acts only if that deadline
//! is still pending and past due, so a scheduler that fires twice (a restart
//! between firing and recording) escalates once.

use std::collections::BTreeMap;
use std::sync::Arc;

use gridwork_eventstore::{Aggregate, DecodeError};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use time::Duration;

use super::calendar::{Counting, WorkingCalendar};
pub use crate::events::CaseEvent;

/// Where a case stands.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Status {
    /// Not opened.
    #[default]
    New,
    /// Owned, not yet acknowledged.
    Assigned,
    /// Acknowledged by its owner.
    Acknowledged,
    /// Resolved, awaiting the reporter's rating.
    Resolved,
    /// Closed.
    Closed,
}

impl Status {
    /// Lower-case name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Status::New => "new",
            Status::Assigned => "assigned",
            Status::Acknowledged => "acknowledged",
            Status::Resolved => "resolved",
            Status::Closed => "closed",
        }
    }
}

/// Durations of one assignment's three clocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlaPlan {
    /// To acknowledge.
    pub acknowledge: Duration,
    /// To respond (first action).
    pub respond: Duration,
    /// To resolve.
    pub resolve: Duration,
    /// Wall clock (emergencies, urgent) or working time.
    pub counting: Counting,
}

/// Time, calendar and plan, injected into every command that sets deadlines.
#[derive(Debug, Clone)]
pub struct Clock {
    /// Now, ms since the epoch.
    pub now_unix_ms: i64,
    /// The working calendar.
    pub calendar: Arc<WorkingCalendar>,
    /// The SLA plan for this case's category and priority.
    pub plan: SlaPlan,
}

/// Commands on a case.
#[derive(Debug, Clone)]
pub enum CaseCommand {
    /// Open from an accepted incident (idempotent: an open case ignores it).
    Open {
        /// The case facts and routing.
        opened: Box<pb::CaseOpened>,
        /// First owner, from routing.
        owner: pb::Owner,
        /// For emergencies: departments summoned at once.
        summon: Vec<String>,
        /// How long summoned departments have to report.
        summon_within: Duration,
        /// Time.
        clock: Clock,
    },
    /// The owner acknowledges.
    Acknowledge {
        /// Who.
        by: pb::Owner,
        /// Now.
        now_unix_ms: i64,
    },
    /// The owner records action on site (meets the respond deadline).
    RecordProgress {
        /// Who.
        by: pb::Owner,
        /// Notes.
        notes: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// The owner hands the case back, before acknowledging it.
    HandBack {
        /// Who.
        by: pb::Owner,
        /// Why.
        reason: String,
        /// Time.
        clock: Clock,
    },
    /// A dispatcher moves the case from the owner they saw to another.
    Reassign {
        /// The owner the dispatcher saw; a different current owner refuses.
        expected: pb::Owner,
        /// New owner.
        to: pb::Owner,
        /// Time.
        clock: Clock,
    },
    /// A deadline fell due (from the scheduler).
    Escalate {
        /// The deadline's id.
        deadline_id: String,
        /// Time.
        clock: Clock,
    },
    /// The street summons departments (街道吹哨).
    BlowWhistle {
        /// Who (must be the owning street).
        by: pb::Owner,
        /// Department codes.
        departments: Vec<String>,
        /// Time to report.
        within: Duration,
        /// Now.
        now_unix_ms: i64,
    },
    /// A summoned department reports for duty (部门报到).
    DepartmentReport {
        /// Department code.
        department: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// The owner resolves.
    Resolve {
        /// Who.
        by: pb::Owner,
        /// Notes.
        notes: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// The reporter (or staff for them) rates the resolution.
    Verify {
        /// Rating.
        rating: pb::Rating,
        /// Who.
        by: String,
        /// Comment.
        comment: String,
        /// Time (deadlines restart on reopening).
        clock: Clock,
    },
}

/// Rules a case command can break.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CaseRejection {
    /// Not allowed in the current state.
    #[error("cannot {action} a case that is {}", .state.label())]
    InvalidTransition {
        /// What was tried.
        action: std::borrow::Cow<'static, str>,
        /// The current state.
        state: Status,
    },
    /// Only the owner may do this.
    #[error("only the owner ({owner}) may {action}")]
    NotOwner {
        /// What was tried.
        action: std::borrow::Cow<'static, str>,
        /// The owner.
        owner: String,
    },
    /// The dispatcher's view is stale.
    #[error("the case is owned by {current}, not {expected}")]
    OwnerChanged {
        /// The current owner.
        current: String,
        /// What the dispatcher saw.
        expected: String,
    },
    /// Hand back without anyone to hand back to.
    #[error("the case has no previous owner to hand back to")]
    NothingToHandBackTo,
    /// Whistle from someone other than the owning street.
    #[error("only the street that owns the case may blow the whistle")]
    NotTheStreet,
    /// A department that was not summoned.
    #[error("department {0} was not summoned, or has already reported")]
    NotSummoned(String),
}

/// A pending summons.
#[derive(Debug, Clone, PartialEq)]
struct Summons {
    reported: bool,
}

/// A case's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Case {
    /// Facts from opening.
    pub opened: Option<pb::CaseOpened>,
    /// Status.
    pub status: Status,
    /// Current owner.
    pub owner: Option<pb::Owner>,
    /// Owner before the current one.
    pub previous_owner: Option<pb::Owner>,
    /// Assignments so far.
    pub assignment: u32,
    /// Deadlines not yet met, missed or superseded, by id.
    pub pending: BTreeMap<String, pb::Deadline>,
    /// Summoned departments.
    summoned: BTreeMap<String, Summons>,
    /// Whistles blown so far.
    whistles: u32,
}

fn label(o: &pb::Owner) -> String {
    let tier = match pb::Tier::try_from(o.tier).unwrap_or(pb::Tier::Unspecified) {
        pb::Tier::Grid => "grid",
        pb::Tier::Community => "community",
        pb::Tier::Street => "street",
        pb::Tier::Department => "department",
        pb::Tier::Unspecified => "?",
    };
    format!("{tier} {}", o.id)
}

fn owner(tier: pb::Tier, id: &str) -> pb::Owner {
    pb::Owner { tier: tier as i32, id: id.to_string() }
}

impl Case {
    fn deadlines(&self, assignment: u32, clock: &Clock) -> Vec<pb::Deadline> {
        let at = |d: Duration| clock.calendar.add(clock.now_unix_ms, d, clock.plan.counting);
        [
            (pb::DeadlineKind::Acknowledge, "ack", clock.plan.acknowledge),
            (pb::DeadlineKind::Respond, "respond", clock.plan.respond),
            (pb::DeadlineKind::Resolve, "resolve", clock.plan.resolve),
        ]
        .into_iter()
        .map(|(kind, name, d)| pb::Deadline {
            id: format!("{assignment}:{name}"),
            kind: kind as i32,
            due_unix_ms: at(d),
        })
        .collect()
    }

    fn assign(&self, to: pb::Owner, reason: &str, clock: &Clock) -> CaseEvent {
        let assignment = self.assignment + 1;
        CaseEvent::Assigned(pb::CaseAssigned {
            assignment,
            owner: Some(to),
            reason: reason.into(),
            deadlines: self.deadlines(assignment, clock),
        })
    }

    fn require_owner(&self, by: &pb::Owner, action: &'static str) -> Result<(), CaseRejection> {
        match &self.owner {
            Some(o) if o == by => Ok(()),
            Some(o) => Err(CaseRejection::NotOwner { action: action.into(), owner: label(o) }),
            None => Err(CaseRejection::InvalidTransition { action: action.into(), state: self.status }),
        }
    }

    fn require(&self, action: &'static str, allowed: &[Status]) -> Result<(), CaseRejection> {
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(CaseRejection::InvalidTransition { action: action.into(), state: self.status })
        }
    }

    /// The rung above the current owner, if there is one.
    pub fn next_tier(&self) -> Option<pb::Owner> {
        let opened = self.opened.as_ref()?;
        let current = self.owner.as_ref()?;
        match pb::Tier::try_from(current.tier).unwrap_or(pb::Tier::Unspecified) {
            pb::Tier::Grid => Some(owner(pb::Tier::Community, &opened.community_id)),
            pb::Tier::Community => Some(owner(pb::Tier::Street, &opened.street_id)),
            pb::Tier::Street if !opened.department.is_empty() => Some(owner(pb::Tier::Department, &opened.department)),
            _ => None,
        }
    }
}

impl Aggregate for Case {
    const CONTEXT: &'static str = "dispatch";
    const TYPE: &'static str = "case";
    const STATE_VERSION: u32 = 1;
    type Command = CaseCommand;
    type Event = CaseEvent;
    type Rejection = CaseRejection;

    fn decide(&self, command: &CaseCommand) -> Result<Vec<CaseEvent>, CaseRejection> {
        match command {
            CaseCommand::Open { opened, owner: first, summon, summon_within, clock } => {
                if self.status != Status::New {
                    // Idempotent by incident: the process manager may deliver twice.
                    return Ok(vec![]);
                }
                let mut events =
                    vec![CaseEvent::Opened((**opened).clone()), self.assign(first.clone(), "routed", clock)];
                if !summon.is_empty() {
                    events.push(CaseEvent::WhistleBlown(pb::WhistleBlown {
                        departments: summon.clone(),
                        acknowledge_by_unix_ms: clock.now_unix_ms + summon_within.whole_milliseconds() as i64,
                        whistle: self.whistles + 1,
                    }));
                }
                Ok(events)
            }
            CaseCommand::Acknowledge { by, now_unix_ms } => {
                self.require("acknowledge", &[Status::Assigned])?;
                self.require_owner(by, "acknowledge")?;
                Ok(vec![CaseEvent::Acknowledged(pb::CaseAcknowledged {
                    owner: Some(by.clone()),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            CaseCommand::RecordProgress { by, notes, now_unix_ms } => {
                self.require("record progress on", &[Status::Acknowledged])?;
                self.require_owner(by, "record progress")?;
                Ok(vec![CaseEvent::ProgressRecorded(pb::ProgressRecorded {
                    owner: Some(by.clone()),
                    notes: notes.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            CaseCommand::HandBack { by, reason, clock } => {
                self.require("hand back", &[Status::Assigned])?;
                self.require_owner(by, "hand back")?;
                let previous = self.previous_owner.clone().ok_or(CaseRejection::NothingToHandBackTo)?;
                Ok(vec![
                    CaseEvent::HandedBack(pb::CaseHandedBack { owner: Some(by.clone()), reason: reason.clone() }),
                    self.assign(previous, "handed back", clock),
                ])
            }
            CaseCommand::Reassign { expected, to, clock } => {
                self.require("reassign", &[Status::Assigned, Status::Acknowledged])?;
                match &self.owner {
                    Some(current) if current != expected => {
                        return Err(CaseRejection::OwnerChanged { current: label(current), expected: label(expected) });
                    }
                    _ => {}
                }
                Ok(vec![self.assign(to.clone(), "reassigned", clock)])
            }
            CaseCommand::Escalate { deadline_id, clock } => {
                let Some(deadline) = self.pending.get(deadline_id) else { return Ok(vec![]) };
                if deadline.due_unix_ms > clock.now_unix_ms {
                    return Ok(vec![]);
                }
                let breached_by = if deadline_id.starts_with('w') {
                    // A summons: the department is in breach; the owner does not change.
                    owner(pb::Tier::Department, deadline_id.split_once(':').map_or("", |(_, d)| d))
                } else {
                    self.owner.clone().unwrap_or_default()
                };
                let mut events = vec![CaseEvent::SlaBreached(pb::SlaBreached {
                    deadline: Some(deadline.clone()),
                    owner: Some(breached_by),
                })];
                if !deadline_id.starts_with('w')
                    && let Some(up) = self.next_tier()
                {
                    events.push(self.assign(up, "escalated", clock));
                }
                Ok(events)
            }
            CaseCommand::BlowWhistle { by, departments, within, now_unix_ms } => {
                self.require("blow the whistle on", &[Status::Assigned, Status::Acknowledged])?;
                if by.tier != pb::Tier::Street as i32 || self.owner.as_ref() != Some(by) {
                    return Err(CaseRejection::NotTheStreet);
                }
                let fresh: Vec<String> =
                    departments.iter().filter(|d| !self.summoned.contains_key(*d)).cloned().collect();
                if fresh.is_empty() {
                    return Ok(vec![]);
                }
                Ok(vec![CaseEvent::WhistleBlown(pb::WhistleBlown {
                    departments: fresh,
                    acknowledge_by_unix_ms: now_unix_ms + within.whole_milliseconds() as i64,
                    whistle: self.whistles + 1,
                })])
            }
            CaseCommand::DepartmentReport { department, now_unix_ms } => {
                match self.summoned.get(department) {
                    Some(s) if !s.reported => {}
                    _ => return Err(CaseRejection::NotSummoned(department.clone())),
                }
                Ok(vec![CaseEvent::DepartmentReported(pb::DepartmentReported {
                    department: department.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            CaseCommand::Resolve { by, notes, now_unix_ms } => {
                self.require("resolve", &[Status::Acknowledged])?;
                self.require_owner(by, "resolve")?;
                Ok(vec![CaseEvent::Resolved(pb::CaseResolved {
                    owner: Some(by.clone()),
                    notes: notes.clone(),
                    at_unix_ms: *now_unix_ms,
                })])
            }
            CaseCommand::Verify { rating, by, comment, clock } => {
                self.require("verify", &[Status::Resolved])?;
                let verified = CaseEvent::Verified(pb::CaseVerified {
                    rating: *rating as i32,
                    by: by.clone(),
                    comment: comment.clone(),
                });
                match rating {
                    pb::Rating::Unsatisfied => {
                        let back_to = self.owner.clone().unwrap_or_default();
                        Ok(vec![
                            verified,
                            CaseEvent::Reopened(pb::CaseReopened { reason: format!("rated unsatisfied: {comment}") }),
                            self.assign(back_to, "reopened", clock),
                        ])
                    }
                    _ => Ok(vec![verified, CaseEvent::Closed(pb::CaseClosed { at_unix_ms: clock.now_unix_ms })]),
                }
            }
        }
    }

    fn evolve(mut self, event: &CaseEvent) -> Self {
        match event {
            CaseEvent::Opened(e) => self.opened = Some(e.clone()),
            CaseEvent::Assigned(e) => {
                if self.owner != e.owner {
                    self.previous_owner = self.owner.take();
                }
                self.owner = e.owner.clone();
                self.assignment = e.assignment;
                self.status = Status::Assigned;
                // A new assignment supersedes the old clocks (summonses stay).
                self.pending.retain(|id, _| id.starts_with('w'));
                for d in &e.deadlines {
                    self.pending.insert(d.id.clone(), d.clone());
                }
            }
            CaseEvent::Acknowledged(_) => {
                self.status = Status::Acknowledged;
                self.pending.retain(|_, d| d.kind != pb::DeadlineKind::Acknowledge as i32 || d.id.starts_with('w'));
            }
            CaseEvent::ProgressRecorded(_) => {
                self.pending.retain(|_, d| d.kind != pb::DeadlineKind::Respond as i32);
            }
            CaseEvent::HandedBack(_) => {}
            CaseEvent::SlaBreached(e) => {
                if let Some(d) = &e.deadline {
                    self.pending.remove(&d.id);
                }
            }
            CaseEvent::WhistleBlown(e) => {
                self.whistles = e.whistle;
                for d in &e.departments {
                    self.summoned.insert(d.clone(), Summons { reported: false });
                    let id = format!("w{}:{d}", e.whistle);
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
            CaseEvent::DepartmentReported(e) => {
                if let Some(s) = self.summoned.get_mut(&e.department) {
                    s.reported = true;
                }
                let suffix = format!(":{}", e.department);
                self.pending.retain(|id, _| !(id.starts_with('w') && id.ends_with(&suffix)));
            }
            CaseEvent::Resolved(_) => {
                self.status = Status::Resolved;
                self.pending.clear();
            }
            CaseEvent::Verified(_) => {}
            CaseEvent::Closed(_) => {
                self.status = Status::Closed;
                self.pending.clear();
            }
            CaseEvent::Reopened(_) => {}
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
            previous_owner: self.previous_owner.clone(),
            assignment: self.assignment,
            pending: self.pending.values().cloned().collect(),
            summoned: self.summoned.iter().map(|(d, s)| (d.clone(), s.reported)).collect(),
            whistles: self.whistles,
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
        Ok(Self {
            opened: s.opened,
            status,
            owner: s.owner,
            previous_owner: s.previous_owner,
            assignment: s.assignment,
            pending: s.pending.into_iter().map(|d| (d.id.clone(), d)).collect(),
            summoned: s.summoned.into_iter().map(|(d, reported)| (d, Summons { reported })).collect(),
            whistles: s.whistles,
        })
    }
}

#[cfg(test)]
mod tests {
    use gridwork_eventstore::testing::given;

    use super::*;

    const MIN: i64 = 60_000;

    fn clock(now: i64) -> Clock {
        Clock {
            now_unix_ms: now,
            calendar: Arc::new(WorkingCalendar::default()),
            plan: SlaPlan {
                acknowledge: Duration::minutes(30),
                respond: Duration::hours(2),
                resolve: Duration::hours(24),
                counting: Counting::Wall,
            },
        }
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
            routing: Some(pb::RoutingDecision { rule_id: "r1".into(), explanation: "fire-hazard anywhere".into() }),
            ..Default::default()
        }
    }

    fn grid() -> pb::Owner {
        owner(pb::Tier::Grid, "g")
    }

    fn open_cmd() -> CaseCommand {
        CaseCommand::Open {
            opened: Box::new(opened()),
            owner: grid(),
            summon: vec![],
            summon_within: Duration::minutes(30),
            clock: clock(0),
        }
    }

    fn history(extra: &[CaseCommand]) -> Vec<CaseEvent> {
        let mut state = Case::default();
        let mut events = Vec::new();
        for c in std::iter::once(&open_cmd()).chain(extra) {
            let new = state.decide(c).expect("step succeeds");
            state = state.fold(&new);
            events.extend(new);
        }
        events
    }

    #[test]
    fn opening_routes_to_the_first_owner_with_three_deadlines_and_is_idempotent() {
        let events = history(&[]);
        let CaseEvent::Assigned(a) = &events[1] else { panic!("{events:?}") };
        assert_eq!(a.owner.as_ref(), Some(&grid()));
        let due: Vec<_> = a.deadlines.iter().map(|d| (d.id.as_str(), d.due_unix_ms)).collect();
        assert_eq!(due, [("1:ack", 30 * MIN), ("1:respond", 120 * MIN), ("1:resolve", 1440 * MIN)]);
        given::<Case>(events).when(open_cmd()).then_expect_events([]);
    }

    #[test]
    fn a_missed_acknowledge_deadline_escalates_once_to_the_community() {
        let events = history(&[]);
        let escalate = |now| CaseCommand::Escalate { deadline_id: "1:ack".into(), clock: clock(now) };
        given::<Case>(events.clone()).when(escalate(29 * MIN)).then_expect_events([]);
        let after = {
            let state = given::<Case>(events.clone()).state().clone();
            state.decide(&escalate(31 * MIN)).expect("escalates")
        };
        assert!(matches!(&after[0], CaseEvent::SlaBreached(b) if b.owner.as_ref() == Some(&grid())));
        assert!(
            matches!(&after[1], CaseEvent::Assigned(a) if a.owner.as_ref() == Some(&owner(pb::Tier::Community, "c")) && a.reason == "escalated")
        );
        let mut all = events;
        all.extend(after);
        // Fired again after a restart: nothing more happens.
        given::<Case>(all).when(escalate(40 * MIN)).then_expect_events([]);
    }

    #[test]
    fn only_the_owner_acknowledges_and_hands_back_only_before_acknowledging() {
        let events = history(&[CaseCommand::Escalate { deadline_id: "1:ack".into(), clock: clock(31 * MIN) }]);
        let community = owner(pb::Tier::Community, "c");
        given::<Case>(events.clone())
            .when(CaseCommand::Acknowledge { by: grid(), now_unix_ms: 32 * MIN })
            .then_expect_error(CaseRejection::NotOwner { action: "acknowledge".into(), owner: "community c".into() });
        let state = given::<Case>(events.clone()).state().clone();
        let back = state
            .decide(&CaseCommand::HandBack {
                by: community.clone(),
                reason: "belongs to the grid".into(),
                clock: clock(32 * MIN),
            })
            .expect("hand back");
        assert!(matches!(&back[1], CaseEvent::Assigned(a) if a.owner.as_ref() == Some(&grid())));
        let mut acked = events;
        acked.push(CaseEvent::Acknowledged(pb::CaseAcknowledged { owner: Some(community.clone()), at_unix_ms: 0 }));
        given::<Case>(acked)
            .when(CaseCommand::HandBack { by: community, reason: "x".into(), clock: clock(33 * MIN) })
            .then_expect_error(CaseRejection::InvalidTransition {
                action: "hand back".into(),
                state: Status::Acknowledged,
            });
    }

    #[test]
    fn a_dispatcher_with_a_stale_view_cannot_reassign() {
        let events =
            history(&[CaseCommand::Reassign { expected: grid(), to: owner(pb::Tier::Street, "s"), clock: clock(1) }]);
        given::<Case>(events)
            .when(CaseCommand::Reassign { expected: grid(), to: owner(pb::Tier::Community, "c"), clock: clock(2) })
            .then_expect_error(CaseRejection::OwnerChanged { current: "street s".into(), expected: "grid g".into() });
    }

    #[test]
    fn the_street_blows_the_whistle_and_departments_report_or_are_in_breach() {
        let street = owner(pb::Tier::Street, "s");
        let events = history(&[CaseCommand::Reassign { expected: grid(), to: street.clone(), clock: clock(0) }]);
        given::<Case>(events.clone())
            .when(CaseCommand::BlowWhistle {
                by: grid(),
                departments: vec!["police".into()],
                within: Duration::minutes(30),
                now_unix_ms: 0,
            })
            .then_expect_error(CaseRejection::NotTheStreet);
        let mut state = given::<Case>(events).state().clone();
        let whistle = CaseCommand::BlowWhistle {
            by: street.clone(),
            departments: vec!["police".into(), "urban-management".into()],
            within: Duration::minutes(30),
            now_unix_ms: 0,
        };
        let blown = state.decide(&whistle).expect("whistle");
        state = state.fold(&blown);
        state = state.clone().fold(
            &state
                .decide(&CaseCommand::DepartmentReport { department: "police".into(), now_unix_ms: 10 * MIN })
                .expect("report"),
        );
        assert_eq!(
            state.decide(&CaseCommand::DepartmentReport { department: "police".into(), now_unix_ms: 11 * MIN }),
            Err(CaseRejection::NotSummoned("police".into()))
        );
        // Urban management never reports: a breach is recorded, the owner stays.
        let late = state
            .decide(&CaseCommand::Escalate { deadline_id: "w1:urban-management".into(), clock: clock(31 * MIN) })
            .expect("breach");
        assert_eq!(late.len(), 1);
        assert!(
            matches!(&late[0], CaseEvent::SlaBreached(b) if b.owner.as_ref().map(|o| o.id.as_str()) == Some("urban-management"))
        );
    }

    #[test]
    fn unsatisfied_reopens_with_fresh_deadlines_and_satisfied_closes() {
        let events = history(&[
            CaseCommand::Acknowledge { by: grid(), now_unix_ms: 1 },
            CaseCommand::Resolve { by: grid(), notes: "cleared the stairwell".into(), now_unix_ms: 2 },
        ]);
        let state = given::<Case>(events.clone()).state().clone();
        let reopened = state
            .decide(&CaseCommand::Verify {
                rating: pb::Rating::Unsatisfied,
                by: "reporter".into(),
                comment: "bikes are back".into(),
                clock: clock(100 * MIN),
            })
            .expect("verify");
        assert!(matches!(&reopened[1], CaseEvent::Reopened(_)));
        assert!(
            matches!(&reopened[2], CaseEvent::Assigned(a) if a.reason == "reopened" && a.deadlines[0].due_unix_ms == 130 * MIN)
        );
        given::<Case>(events.clone())
            .when(CaseCommand::Verify {
                rating: pb::Rating::Satisfied,
                by: "reporter".into(),
                comment: "".into(),
                clock: clock(5),
            })
            .then_expect_events([
                CaseEvent::Verified(pb::CaseVerified {
                    rating: pb::Rating::Satisfied as i32,
                    by: "reporter".into(),
                    comment: "".into(),
                }),
                CaseEvent::Closed(pb::CaseClosed { at_unix_ms: 5 }),
            ]);
    }

    #[test]
    fn transitions_outside_the_graph_name_the_current_state() {
        given::<Case>(history(&[]))
            .when(CaseCommand::Resolve { by: grid(), notes: "".into(), now_unix_ms: 1 })
            .then_expect_error(CaseRejection::InvalidTransition { action: "resolve".into(), state: Status::Assigned });
        given::<Case>(history(&[]))
            .when(CaseCommand::Verify {
                rating: pb::Rating::Satisfied,
                by: "r".into(),
                comment: "".into(),
                clock: clock(1),
            })
            .then_expect_error(CaseRejection::InvalidTransition { action: "verify".into(), state: Status::Assigned });
        given::<Case>([])
            .when(CaseCommand::Acknowledge { by: grid(), now_unix_ms: 1 })
            .then_expect_error(CaseRejection::InvalidTransition { action: "acknowledge".into(), state: Status::New });
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let street = owner(pb::Tier::Street, "s");
        let mut state = Case::default();
        for c in [
            open_cmd(),
            CaseCommand::Reassign { expected: grid(), to: street.clone(), clock: clock(0) },
            CaseCommand::BlowWhistle {
                by: street,
                departments: vec!["police".into()],
                within: Duration::minutes(30),
                now_unix_ms: 0,
            },
            CaseCommand::DepartmentReport { department: "police".into(), now_unix_ms: 1 },
        ] {
            let events = state.decide(&c).expect("step");
            state = state.fold(&events);
        }
        assert_eq!(Case::decode_state(&state.encode_state()).expect("decodes"), state);
    }

    #[test]
    fn an_emergency_summons_its_departments_on_opening() {
        let command = CaseCommand::Open {
            opened: Box::new(pb::CaseOpened { emergency: true, ..opened() }),
            owner: owner(pb::Tier::Street, "s"),
            summon: vec!["fire-brigade".into(), "police".into()],
            summon_within: Duration::minutes(10),
            clock: clock(0),
        };
        let events = Case::default().decide(&command).expect("open");
        assert!(
            matches!(&events[2], CaseEvent::WhistleBlown(w) if w.departments.len() == 2 && w.acknowledge_by_unix_ms == 10 * MIN)
        );
    }
}
