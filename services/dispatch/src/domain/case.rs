//! The case aggregate (subject `dispatch.case.<incident id>`): one accepted
//! incident on its way up and down the ladder (grid → community → street →
//! department), against its deadlines, to a rated close.
//!
//! The states form an explicit graph; any other transition is refused naming the
//! current state:
//!
//! ```text
//! New ─open→ Assigned ─acknowledge→ Acknowledged ─resolve→ Resolved ─rate (satisfied)→ Closed
//!              ↑  │ hand back (to the dispatch centre), reassign, escalate  │ ─rating window passes→ Closed (not rated)
//!              └──┴──────────────────────────────── rate (unsatisfied): reopen ┘
//! ```
//!
//! **Clocks.** The case's own respond and resolve clocks run from acceptance
//! (from the reopening, for a new round) and no hand-off resets them; each owner
//! has an acknowledge clock of its own; a resolution starts the rating window.
//! All are state, computed in `decide` from the injected time, the SLA plan and
//! the working calendar. `FireDeadline` names one; it acts only if that deadline
//! is still pending and past due, so a scheduler that fires twice (a restart
//! between firing and recording) acts once. A missed acknowledge clock moves the
//! case one rung up (with no rung above, the district supervises: 督办); a missed
//! respond clock is a warning on the record; a missed resolve clock puts the case
//! under district supervision wherever it is. Moving a case that is being worked
//! is the dispatcher's decision, not the clock's.
//!
//! **Summonses.** The owning street summons departments (街道吹哨); each summons
//! is a work item — summoned, reported for duty, completed or released — and the
//! case resolves only when none is outstanding.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use gridwork_eventstore::{Aggregate, DecodeError};
use gridwork_proto::gridwork::dispatch::v1 as pb;

use super::calendar::{Span, WorkingCalendar};
use super::deadline::{DeadlineId, Scope};
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

/// The lengths of a case's clocks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlaPlan {
    /// Each owner, to acknowledge.
    pub acknowledge: Span,
    /// The case, to respond (first action on site), from acceptance.
    pub respond: Span,
    /// The case, to resolve, from acceptance.
    pub resolve: Span,
    /// A summoned department, to report for duty.
    pub summons: Span,
    /// The reporter, to rate a resolution.
    pub rate: Span,
}

impl SlaPlan {
    /// The same lengths counted round the clock: office hours as wall time,
    /// working days as calendar days.
    pub fn round_the_clock(self) -> Self {
        let wall = |s: Span| match s {
            Span::OfficeHours(d) => Span::Wall(d),
            Span::WorkingDays(n) => Span::CalendarDays(n),
            other => other,
        };
        Self {
            acknowledge: wall(self.acknowledge),
            respond: wall(self.respond),
            resolve: wall(self.resolve),
            summons: wall(self.summons),
            rate: self.rate,
        }
    }
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

impl Clock {
    fn deadline(&self, id: DeadlineId, kind: pb::DeadlineKind, span: Span) -> pb::Deadline {
        pb::Deadline { id: id.to_string(), kind: kind as i32, due_unix_ms: self.calendar.after(self.now_unix_ms, span) }
    }

    /// A round's respond and resolve clocks, from now.
    fn case_clocks(&self, round: u32) -> Vec<pb::Deadline> {
        vec![
            self.deadline(DeadlineId::Respond(round), pb::DeadlineKind::Respond, self.plan.respond),
            self.deadline(DeadlineId::Resolve(round), pb::DeadlineKind::Resolve, self.plan.resolve),
        ]
    }
}

/// The rung above an owner, as the organisation tree stands.
#[derive(Debug, Clone, PartialEq)]
pub struct Above {
    /// The owner looked up.
    pub of: pb::Owner,
    /// Its parent's rung.
    pub parent: pb::Owner,
}

/// Who rated: the reporter, or staff on the reporter's behalf (a call-back, 回访).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rater {
    /// The reporter.
    Reporter,
    /// A member of staff, by id.
    Staff(String),
    /// The reporter of a "me too" linked to the case, by its report id: the
    /// rating is recorded and counted, and decides nothing.
    LinkedReporter(String),
}

impl Rater {
    /// `reporter`, `staff:<id>` or `reporter:<report id>` (ids 1-64
    /// characters); anyone else may not rate.
    pub fn parse(by: &str) -> Option<Self> {
        let id = |prefix: &str| by.strip_prefix(prefix).filter(|s| !s.is_empty() && s.len() <= 64).map(String::from);
        match by {
            "reporter" => Some(Rater::Reporter),
            _ => id("staff:").map(Rater::Staff).or_else(|| id("reporter:").map(Rater::LinkedReporter)),
        }
    }

    fn label(&self) -> String {
        match self {
            Rater::Reporter => "reporter".into(),
            Rater::Staff(id) => format!("staff:{id}"),
            Rater::LinkedReporter(id) => format!("reporter:{id}"),
        }
    }
}

/// Commands on a case.
#[derive(Debug, Clone)]
pub enum CaseCommand {
    /// The incident's priority rose: bring the open clocks forward.
    RaisePriority {
        /// The new priority.
        priority: i32,
        /// Why.
        reason: String,
        /// Now, and the plan for the new priority.
        clock: Clock,
    },
    /// Open from an accepted incident (idempotent: an open case ignores it).
    Open {
        /// The case facts and routing.
        opened: Box<pb::CaseOpened>,
        /// First owner, from routing.
        owner: pb::Owner,
        /// For emergencies: departments summoned at once.
        summon: Vec<String>,
        /// "Me too" reports linked before acceptance.
        reports: Vec<pb::CaseReportLinked>,
        /// Time, from the acceptance.
        clock: Clock,
    },
    /// Intake linked another report of the same problem to the incident.
    LinkReport {
        /// Its account.
        report: pb::CaseReportLinked,
    },
    /// The owner acknowledges.
    Acknowledge {
        /// Who.
        by: pb::Owner,
        /// Now.
        now_unix_ms: i64,
    },
    /// The owner records action on site (meets the respond clock).
    RecordProgress {
        /// Who.
        by: pb::Owner,
        /// Notes.
        notes: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// The owner hands the case back to the dispatch centre, before acknowledging it.
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
    FireDeadline {
        /// Which.
        deadline: DeadlineId,
        /// Time.
        clock: Clock,
        /// The rung above an owner in the organisation tree as it stands (a
        /// grid's community, a community's street), when the caller knows it;
        /// used only if that owner still holds the case, else the case's own
        /// placement decides.
        above: Option<Above>,
    },
    /// The street summons departments (街道吹哨).
    BlowWhistle {
        /// Who (must be the owning street).
        by: pb::Owner,
        /// Department codes.
        departments: Vec<String>,
        /// Time.
        clock: Clock,
    },
    /// A summoned department reports for duty (部门报到).
    ReportForDuty {
        /// Department code.
        department: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// A summoned department records action.
    SummonsProgress {
        /// Department code.
        department: String,
        /// Notes.
        notes: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// A summoned department's part is done.
    CompleteSummons {
        /// Department code.
        department: String,
        /// Notes.
        notes: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// The case's owner releases a summoned department.
    ReleaseSummons {
        /// Who (the owner).
        by: pb::Owner,
        /// Department code.
        department: String,
        /// Why.
        reason: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// The owner resolves.
    Resolve {
        /// Who.
        by: pb::Owner,
        /// Notes.
        notes: String,
        /// Time (the rating window starts).
        clock: Clock,
    },
    /// A dispatcher merges this case into another open one about the same problem.
    Merge {
        /// The case it is merged into.
        into: String,
        /// That case as read from its stream just before (`None`: it does
        /// not exist).
        target: Option<MergeTarget>,
        /// Who.
        by: String,
        /// Why.
        reason: String,
        /// Now.
        now_unix_ms: i64,
    },
    /// The reporter (or staff for them) rates the resolution.
    Verify {
        /// Satisfaction (never unspecified: the gRPC edge refuses it).
        rating: pb::Rating,
        /// Was the problem solved?
        solved: bool,
        /// Who.
        by: Rater,
        /// Comment.
        comment: String,
        /// Time (a reopening starts a new round's clocks).
        clock: Clock,
    },
}

/// The case another is to be merged into, as read from its stream just before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergeTarget {
    /// Its status.
    pub status: Status,
    /// What it was merged into itself ("" if nothing).
    pub merged_into: String,
    /// When it opened (0 before 2026-11-24).
    pub opened_at_unix_ms: i64,
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
    /// Reassigning to the owner it already has would only restart its clock.
    #[error("the case is already owned by {0}")]
    AlreadyOwner(String),
    /// The dispatch centre assigns cases; it does not acknowledge, resolve or hand back.
    #[error("the dispatch centre assigns a case to a rung; it cannot {0} it")]
    CentreAssigns(std::borrow::Cow<'static, str>),
    /// Whistle from someone other than the owning street.
    #[error("only the street that owns the case may blow the whistle")]
    NotTheStreet,
    /// A department without a summons in the needed state.
    #[error("department {0} has no open summons on this case")]
    NotSummoned(String),
    /// A summoned department acting before reporting for duty.
    #[error("department {0} must report for duty first")]
    SummonsNotReported(String),
    /// Resolving while summoned departments are still at work.
    #[error("summoned departments have not completed or been released: {}", .0.join(", "))]
    SummonsOutstanding(Vec<String>),
    /// Merging a case into itself.
    #[error("into_case_id: a case cannot be merged into itself")]
    SelfMerge,
    /// Merging into a case that does not exist.
    #[error("into_case_id: no such case")]
    TargetUnknown,
    /// Merging into a case that is no longer being worked.
    #[error("into_case_id: the case is {}: a case is merged only into an open one", .0.label())]
    TargetNotOpen(Status),
    /// A linked reporter's rating for a report not linked to the case.
    #[error("by: report {0} is not linked to this case")]
    NotLinked(String),
    /// A linked reporter's second rating of a round.
    #[error("by: {0} has already rated this round")]
    AlreadyRated(String),
    /// A linked reporter's rating after the rating window.
    #[error("the rating window of this case's resolution has passed")]
    RatingWindowPassed,
    /// Merging into a case merged itself.
    #[error("into_case_id: the case was merged into {0}: merge into {0} instead")]
    TargetMerged(String),
    /// Merging into a case opened after this one: cases merge into the first,
    /// so two dispatchers merging two cases into each other cannot close both.
    #[error("into_case_id: {0} was opened after this case: merge it into this one instead")]
    TargetNewer(String),
}

/// A department's summons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Summons {
    whistle: u32,
    status: pb::SummonsStatus,
}

impl Summons {
    fn active(&self) -> bool {
        matches!(self.status, pb::SummonsStatus::Summoned | pb::SummonsStatus::Reported)
    }
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
    /// Assignments so far.
    pub assignment: u32,
    /// Handling round: 1, +1 per reopening.
    pub round: u32,
    /// Deadlines not yet met, missed or superseded, by id.
    pub pending: BTreeMap<String, pb::Deadline>,
    /// Under district supervision.
    pub supervised: bool,
    /// Every department summoned, by code.
    summonses: BTreeMap<String, Summons>,
    /// Whistles blown so far.
    whistles: u32,
    /// The case it was merged into ("" if none).
    pub merged_into: String,
    /// The me-too reports linked to it.
    pub linked_reports: BTreeSet<String>,
    /// Who has rated the current round.
    rated_this_round: BTreeSet<String>,
    /// Since the current round's resolution: linked reporters may rate until
    /// then (`None` while the round is unresolved).
    rate_until_unix_ms: Option<i64>,
    /// When the current round was resolved (`None` while it is not).
    resolved_at_unix_ms: Option<i64>,
}

/// "tier id", for people: "street s", "dispatch centre d".
pub fn label(o: &pb::Owner) -> String {
    let tier = match pb::Tier::try_from(o.tier).unwrap_or(pb::Tier::Unspecified) {
        pb::Tier::Grid => "grid",
        pb::Tier::Community => "community",
        pb::Tier::Street => "street",
        pb::Tier::Department => "department",
        pb::Tier::DispatchCentre => "dispatch centre",
        pb::Tier::Unspecified => "?",
    };
    format!("{tier} {}", o.id)
}

fn owner(tier: pb::Tier, id: &str) -> pb::Owner {
    pb::Owner { tier: tier as i32, id: id.to_string() }
}

fn is_centre(o: &pb::Owner) -> bool {
    o.tier == pb::Tier::DispatchCentre as i32
}

impl Case {
    fn assign(&self, to: pb::Owner, reason: &str, clock: &Clock) -> CaseEvent {
        let assignment = self.assignment + 1;
        // The dispatch centre assigns rather than acknowledges: it has no
        // acknowledge clock; the case's own clocks keep running while it decides.
        let deadlines = if is_centre(&to) {
            vec![]
        } else {
            vec![clock.deadline(DeadlineId::Ack(assignment), pb::DeadlineKind::Acknowledge, clock.plan.acknowledge)]
        };
        CaseEvent::Assigned(pb::CaseAssigned { assignment, owner: Some(to), reason: reason.into(), deadlines })
    }

    fn require_owner(&self, by: &pb::Owner, action: &'static str) -> Result<(), CaseRejection> {
        match &self.owner {
            Some(o) if o == by => Ok(()),
            Some(o) => Err(CaseRejection::NotOwner { action: action.into(), owner: label(o) }),
            None => Err(CaseRejection::InvalidTransition { action: action.into(), state: self.status }),
        }
    }

    /// The owner acting on the case itself (not the dispatch centre).
    fn require_handler(&self, by: &pb::Owner, action: &'static str) -> Result<(), CaseRejection> {
        self.require_owner(by, action)?;
        if is_centre(by) {
            return Err(CaseRejection::CentreAssigns(action.into()));
        }
        Ok(())
    }

    fn require(&self, action: &'static str, allowed: &[Status]) -> Result<(), CaseRejection> {
        if allowed.contains(&self.status) {
            Ok(())
        } else {
            Err(CaseRejection::InvalidTransition { action: action.into(), state: self.status })
        }
    }

    /// The rung above the current owner: `above` (the owner's parent in the
    /// tree as it stands) for a grid or a community, so a case reassigned to
    /// another community escalates to that community's street; else
    /// [`Case::next_tier`].
    pub fn next_tier_from(&self, above: Option<&Above>) -> Option<pb::Owner> {
        let current = self.owner.as_ref()?;
        let tier = pb::Tier::try_from(current.tier).unwrap_or(pb::Tier::Unspecified);
        let above = above.filter(|a| &a.of == current).map(|a| &a.parent);
        match (tier, above) {
            (pb::Tier::Grid, Some(a)) if a.tier == pb::Tier::Community as i32 => Some(a.clone()),
            (pb::Tier::Community, Some(a)) if a.tier == pb::Tier::Street as i32 => Some(a.clone()),
            _ => self.next_tier(),
        }
    }

    /// The rung above the current owner by the case's own placement, if there is one.
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

    /// Departments whose summons is still open, in code order.
    pub fn outstanding_summonses(&self) -> Vec<String> {
        self.summonses.iter().filter(|(_, s)| s.active()).map(|(d, _)| d.clone()).collect()
    }

    /// A summons in the state an action needs.
    fn summons(&self, department: &str, need_reported: bool) -> Result<(), CaseRejection> {
        match self.summonses.get(department).map(|s| s.status) {
            Some(pb::SummonsStatus::Reported) => Ok(()),
            Some(pb::SummonsStatus::Summoned) if need_reported => {
                Err(CaseRejection::SummonsNotReported(department.into()))
            }
            Some(pb::SummonsStatus::Summoned) => Ok(()),
            _ => Err(CaseRejection::NotSummoned(department.into())),
        }
    }

    fn whistle(&self, departments: Vec<String>, clock: &Clock) -> CaseEvent {
        CaseEvent::WhistleBlown(pb::WhistleBlown {
            departments,
            acknowledge_by_unix_ms: clock.calendar.after(clock.now_unix_ms, clock.plan.summons),
            whistle: self.whistles + 1,
        })
    }

    /// District supervision (督办), once per round.
    fn supervise(&self, clock: &Clock, why: String) -> Vec<CaseEvent> {
        if self.supervised {
            return vec![];
        }
        let district = self.opened.as_ref().map(|o| o.district_id.clone()).unwrap_or_default();
        vec![CaseEvent::SupervisionOpened(pb::SupervisionOpened {
            district_id: district,
            reason: why,
            at_unix_ms: clock.now_unix_ms,
        })]
    }

    fn fire(&self, id: &DeadlineId, clock: &Clock, above: Option<&Above>) -> Vec<CaseEvent> {
        // Found by meaning, not spelling: events from older builds spell ids the old way.
        let Some(deadline) = self.pending.values().find(|d| DeadlineId::parse(&d.id).as_ref() == Some(id)) else {
            return vec![];
        };
        if deadline.due_unix_ms > clock.now_unix_ms {
            return vec![];
        }
        match id.scope() {
            Scope::Rating if self.status == Status::Resolved => vec![CaseEvent::Closed(pb::CaseClosed {
                at_unix_ms: clock.now_unix_ms,
                outcome: pb::CloseOutcome::NotRated as i32,
            })],
            Scope::Rating => vec![],
            Scope::Summons => vec![CaseEvent::SlaBreached(pb::SlaBreached {
                deadline: Some(deadline.clone()),
                owner: Some(owner(pb::Tier::Department, id.department().unwrap_or_default())),
            })],
            scope => {
                let mut events = vec![CaseEvent::SlaBreached(pb::SlaBreached {
                    deadline: Some(deadline.clone()),
                    owner: self.owner.clone(),
                })];
                let holder = self.owner.as_ref().map(label).unwrap_or_default();
                match (scope, id) {
                    // An owner that does not take the case on loses it one rung up;
                    // with no rung above, the district supervises.
                    (Scope::Owner, _) => match self.next_tier_from(above) {
                        Some(up) => events.push(self.assign(up, "escalated", clock)),
                        None => {
                            events.extend(self.supervise(clock, format!("{holder} did not acknowledge, no rung above")))
                        }
                    },
                    // Past the resolve clock the case is overdue: the district
                    // supervises (督办) whoever holds it; moving it is the dispatcher's call.
                    (_, DeadlineId::Resolve(_)) => {
                        events.extend(self.supervise(clock, format!("not resolved in time, held by {holder}")))
                    }
                    // A missed respond clock is a warning (预警) on the record, and
                    // the case is overdue until someone acts on site.
                    _ => {}
                }
                events
            }
        }
    }
}

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
            CaseCommand::Reassign { expected, to, clock } => {
                self.require("reassign", &active)?;
                match &self.owner {
                    Some(current) if current != expected => {
                        return Err(CaseRejection::OwnerChanged { current: label(current), expected: label(expected) });
                    }
                    Some(current) if current == to => return Err(CaseRejection::AlreadyOwner(label(current))),
                    _ => {}
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
            CaseCommand::Verify { rating, solved, by, comment, clock } => {
                if let Rater::LinkedReporter(report) = by {
                    return self.linked_rating(report, *rating, *solved, comment, clock.now_unix_ms);
                }
                self.require("rate", &[Status::Resolved])?;
                let verified = CaseEvent::Verified(pb::CaseVerified {
                    rating: *rating as i32,
                    by: by.label(),
                    comment: comment.clone(),
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
                                reason: format!("rated unsatisfied: {comment}"),
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
    fn linked_rating(
        &self,
        report: &str,
        rating: pb::Rating,
        solved: bool,
        comment: &str,
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
            solved: if solved { pb::ResolutionAnswer::Solved } else { pb::ResolutionAnswer::NotSolved } as i32,
            round: self.round,
            at_unix_ms: now_unix_ms,
        })])
    }

    fn summons_moved(&mut self, department: &str, to: pb::SummonsStatus) {
        if let Some(s) = self.summonses.get_mut(department) {
            s.status = to;
        }
        self.pending.retain(|id, _| DeadlineId::parse(id).is_none_or(|d| d.department() != Some(department)));
    }
}

#[cfg(test)]
mod tests {
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
        CaseCommand::Open {
            opened: Box::new(opened()),
            owner: grid(),
            summon: vec![],
            reports: vec![],
            clock: clock(0),
        }
    }

    fn fire(id: DeadlineId, now: i64) -> CaseCommand {
        CaseCommand::FireDeadline { deadline: id, clock: clock(now), above: None }
    }

    fn reassign(from: pb::Owner, to: pb::Owner, now: i64) -> CaseCommand {
        CaseCommand::Reassign { expected: from, to, clock: clock(now) }
    }

    fn ack(by: pb::Owner) -> CaseCommand {
        CaseCommand::Acknowledge { by, now_unix_ms: 1 }
    }

    fn resolve(by: pb::Owner, now: i64) -> CaseCommand {
        CaseCommand::Resolve { by, notes: "cleared the stairwell".into(), clock: clock(now) }
    }

    fn rate(rating: pb::Rating, now: i64) -> CaseCommand {
        CaseCommand::Verify { rating, solved: true, by: Rater::Reporter, comment: "".into(), clock: clock(now) }
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
        given::<Case>([]).when(CaseCommand::LinkReport { report: linked("r1") }).then_expect_error(
            CaseRejection::InvalidTransition { action: "link a report to".into(), state: Status::New },
        );

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
        let back =
            state(&[CaseCommand::HandBack { by: grid(), reason: "not a grid matter".into(), clock: clock(MIN) }]);
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
        given_state(summoned.clone())
            .when(report("police"))
            .then_expect_error(CaseRejection::NotSummoned("police".into()));
        given_state(summoned.clone())
            .when(report("housing"))
            .then_expect_error(CaseRejection::NotSummoned("housing".into()));
        // Summoning a department already at work does nothing.
        given_state(summoned.clone()).when(whistle(&["police"], 5 * MIN)).then_expect_events([]);
        // Urban management never reports: a breach is recorded, the owner stays.
        let id = DeadlineId::Summons { whistle: 1, department: "urban-management".into() };
        let late = summoned.decide(&fire(id, 31 * MIN)).expect("breach");
        assert_eq!(late.len(), 1);
        assert!(
            matches!(&late[0], CaseEvent::SlaBreached(b) if b.owner == Some(owner(pb::Tier::Department, "urban-management")))
        );
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
        given_state(done.clone())
            .when(complete("police"))
            .then_expect_error(CaseRejection::NotSummoned("police".into()));
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
        given_state(done.clone()).when(release(grid())).then_expect_error(CaseRejection::NotOwner {
            action: "release a summons".into(),
            owner: "street s".into(),
        });
        let released = done.clone().fold(&done.decide(&release(street())).expect("release"));
        assert!(released.outstanding_summonses().is_empty());
        let resolved = released.clone().fold(&released.decide(&resolve(street(), 2 * HOUR)).expect("resolves"));
        // A resolved case takes no report for duty.
        given_state(resolved.clone()).when(report("police")).then_expect_error(CaseRejection::InvalidTransition {
            action: "report for duty on".into(),
            state: Status::Resolved,
        });
        // Reopened, the street can summon the police again.
        let reopened =
            resolved.clone().fold(&resolved.decide(&rate(pb::Rating::Unsatisfied, 3 * HOUR)).expect("reopen"));
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
        given::<Case>(history(&[ack(grid()), resolve(grid(), 2)]))
            .when(rate(pb::Rating::Satisfied, 5))
            .then_expect_events([
                CaseEvent::Verified(pb::CaseVerified {
                    rating: pb::Rating::Satisfied as i32,
                    by: "reporter".into(),
                    comment: "".into(),
                    solved: pb::ResolutionAnswer::Solved as i32,
                    round: 1,
                    at_unix_ms: 5,
                }),
                CaseEvent::Closed(pb::CaseClosed { at_unix_ms: 5, outcome: pb::CloseOutcome::Rated as i32 }),
            ]);
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
        assert!(
            on.pending.contains_key("summons:1:police"),
            "a summons clock is named from its event: {:?}",
            on.pending
        );
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
}
