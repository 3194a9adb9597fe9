//! A case's clocks: assigning with an owner's acknowledge clock, escalation one
//! rung up, district supervision (督办), and what a fired deadline does.

use super::*;

impl Case {
    pub(super) fn assign(&self, to: pb::Owner, reason: &str, clock: &Clock) -> CaseEvent {
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

    pub(super) fn require_owner(&self, by: &pb::Owner, action: &'static str) -> Result<(), CaseRejection> {
        match &self.owner {
            Some(o) if o == by => Ok(()),
            Some(o) => Err(CaseRejection::NotOwner { action: action.into(), owner: label(o) }),
            None => Err(CaseRejection::InvalidTransition { action: action.into(), state: self.status }),
        }
    }

    /// The owner acting on the case itself (not the dispatch centre).
    pub(super) fn require_handler(&self, by: &pb::Owner, action: &'static str) -> Result<(), CaseRejection> {
        self.require_owner(by, action)?;
        if is_centre(by) {
            return Err(CaseRejection::CentreAssigns(action.into()));
        }
        Ok(())
    }

    pub(super) fn require(&self, action: &'static str, allowed: &[Status]) -> Result<(), CaseRejection> {
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
    pub(super) fn summons(&self, department: &str, need_reported: bool) -> Result<(), CaseRejection> {
        match self.summonses.get(department).map(|s| s.status) {
            Some(pb::SummonsStatus::Reported) => Ok(()),
            Some(pb::SummonsStatus::Summoned) if need_reported => {
                Err(CaseRejection::SummonsNotReported(department.into()))
            }
            Some(pb::SummonsStatus::Summoned) => Ok(()),
            _ => Err(CaseRejection::NotSummoned(department.into())),
        }
    }

    pub(super) fn whistle(&self, departments: Vec<String>, clock: &Clock) -> CaseEvent {
        CaseEvent::WhistleBlown(pb::WhistleBlown {
            departments,
            acknowledge_by_unix_ms: clock.calendar.after(clock.now_unix_ms, clock.plan.summons),
            whistle: self.whistles + 1,
        })
    }

    /// District supervision (督办), once per round.
    pub(super) fn supervise(&self, clock: &Clock, why: String) -> Vec<CaseEvent> {
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

    pub(super) fn fire(&self, id: &DeadlineId, clock: &Clock, above: Option<&Above>) -> Vec<CaseEvent> {
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
            // A summoned department that does not report for duty (吹哨不报到):
            // a breach on its record, and the district supervises the case —
            // the street that blew the whistle cannot order a department
            // about; the district can.
            Scope::Summons => {
                let department = id.department().unwrap_or_default();
                let mut events = vec![CaseEvent::SlaBreached(pb::SlaBreached {
                    deadline: Some(deadline.clone()),
                    owner: Some(owner(pb::Tier::Department, department)),
                })];
                events.extend(self.supervise(clock, format!("department {department} did not report for duty")));
                events
            }
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
