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

use gridwork_eventstore::{Aggregate, DecodeError};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::calendar::{Span, WorkingCalendar};
use super::deadline::{DeadlineId, Scope};
pub use crate::events::CaseEvent;

mod aggregate;
mod clocks;
mod command;
mod rejection;
#[cfg(test)]
mod tests;

pub use command::{Above, CaseCommand, Clock, MergeTarget, Rater, SlaPlan};
pub use rejection::CaseRejection;

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

pub(super) fn owner(tier: pb::Tier, id: &str) -> pb::Owner {
    pb::Owner { tier: tier as i32, id: id.to_string() }
}

pub(super) fn is_centre(o: &pb::Owner) -> bool {
    o.tier == pb::Tier::DispatchCentre as i32
}
