//! The rules a case command can break, each named for the caller.

use super::*;

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
    /// A case stays in the district it was opened in: a unit of another
    /// district neither knows the place nor answers to this district's
    /// supervision (a report in the wrong district is transferred in intake).
    #[error("{owner} is in district {owner_district}, not in this case's district {case_district}")]
    OtherDistrict {
        /// The owner refused.
        owner: String,
        /// Its district.
        owner_district: String,
        /// The case's district.
        case_district: String,
    },
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
