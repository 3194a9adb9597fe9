//! What can be asked of a case, and the injected time, calendar and plan it is decided with.

use super::*;

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
    pub(super) fn deadline(&self, id: DeadlineId, kind: pb::DeadlineKind, span: Span) -> pb::Deadline {
        pb::Deadline { id: id.to_string(), kind: kind as i32, due_unix_ms: self.calendar.after(self.now_unix_ms, span) }
    }

    /// A round's respond and resolve clocks, from now.
    pub(super) fn case_clocks(&self, round: u32) -> Vec<pb::Deadline> {
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

    pub(super) fn label(&self) -> String {
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
        /// The district the new owner's unit lies in (the registry's tree),
        /// for a grid, community, street or dispatch centre; none for a
        /// department (departments serve the whole city).
        to_district: Option<String>,
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
        /// Comment ("" when sealed).
        comment: String,
        /// The comment sealed under the rater's report key.
        sealed_comment: Option<gridwork_personal::Sealed>,
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
