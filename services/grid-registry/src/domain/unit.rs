//! The unit aggregate: one node of the organisation tree (subject
//! `grid.unit.<id>`; the city root is `grid.unit.root`).
//!
//! A unit's *children* — their ids, kinds and boundaries — live in the unit's own
//! state, so registering a child or redrawing its boundary is a command on the
//! parent: the sibling-overlap rule is then checked and committed under one
//! expected sequence, and two operators drawing neighbouring micro-grids at the
//! same moment cannot both win. The unit's own staff, households and party branch
//! are commands on the unit itself.

use std::collections::BTreeMap;

use gridwork_eventstore::{Aggregate, DecodeError};
use gridwork_proto::gridwork::grid::v1 as pb;
use prost::Message as _;
use time::Date;

pub use crate::events::UnitEvent;
use gridwork_geo::Boundary;
pub use gridwork_geo::Kind;

/// The id of the city root, parent of every district.
pub const ROOT: &str = "root";

/// The band a household count falls in for `kind`.
pub fn band(kind: Kind, households: Option<u32>) -> pb::HouseholdBand {
    match (kind.household_band(), households) {
        (Some((lo, _)), Some(n)) if n < lo => pb::HouseholdBand::Below,
        (Some((_, hi)), Some(n)) if n > hi => pb::HouseholdBand::Above,
        (Some(_), Some(_)) => pb::HouseholdBand::Within,
        _ => pb::HouseholdBand::Unspecified,
    }
}

/// A child as its parent knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Child {
    /// The registration event, as stored.
    pub registered: pb::ChildRegistered,
    /// Its kind.
    pub kind: Kind,
    /// Its boundary (None only if stored data were unreadable).
    pub boundary: Option<Boundary>,
}

/// A unit's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Unit {
    /// Children by id.
    pub children: BTreeMap<String, Child>,
    /// Household count.
    pub households: Option<u32>,
    /// Current head.
    pub head: Option<pb::Head>,
    /// Current workers by person id.
    pub workers: BTreeMap<String, pb::Worker>,
    /// Party organisation.
    pub party_branch: Option<pb::PartyBranch>,
}

/// What the parent is, looked up by the caller from the read model.
#[derive(Debug, Clone)]
pub struct ParentFacts {
    /// Parent's kind.
    pub kind: Kind,
    /// Parent's id, for messages.
    pub id: String,
    /// Parent's own boundary (none for the root).
    pub boundary: Option<Boundary>,
}

/// Commands on a unit.
#[derive(Debug, Clone)]
pub enum UnitCommand {
    /// Register a child under this unit.
    RegisterChild {
        /// New id.
        child_id: String,
        /// Kind.
        kind: Kind,
        /// Name.
        name: String,
        /// Boundary.
        boundary: Boundary,
        /// Site, for special grids.
        special_site: pb::SpecialSite,
        /// This unit's facts.
        parent: ParentFacts,
    },
    /// Redraw a child's boundary.
    RedrawChild {
        /// Child id.
        child_id: String,
        /// New boundary.
        boundary: Boundary,
        /// This unit's facts.
        parent: ParentFacts,
        /// The child's own children, which must stay inside.
        grandchildren: Vec<(String, Boundary)>,
    },
    /// Record the household count.
    CountHouseholds {
        /// Households.
        households: u32,
    },
    /// Appoint the head.
    AppointHead {
        /// This unit's kind.
        kind: Kind,
        /// The head.
        head: pb::Head,
        /// Certificate expiry, parsed.
        expires_on: Date,
        /// Today, from the injected clock.
        today: Date,
        /// Why the head in post, if any, is replaced.
        replacing_reason: Option<String>,
    },
    /// Record the renewed certificate of the head in post.
    RenewHeadCertificate {
        /// Who the caller believes is the head.
        person_id: String,
        /// The renewed certificate.
        certificate: pb::Certificate,
        /// Its last valid day, parsed.
        expires_on: Date,
        /// Today, in the city's time zone.
        today: Date,
    },
    /// End the head's term.
    VacateHead {
        /// Who the caller believes is the head.
        person_id: String,
        /// Why.
        departure: Departure,
        /// The reason in words.
        note: String,
        /// Today, in the city's time zone.
        today: Date,
    },
    /// Enrol a worker.
    AddWorker {
        /// This unit's kind.
        kind: Kind,
        /// The worker (joined_on set by the caller from the clock).
        worker: pb::Worker,
    },
    /// Dismiss a worker.
    DismissWorker {
        /// Person id.
        person_id: String,
        /// Reason.
        reason: String,
        /// Today.
        today: Date,
    },
    /// Record the party organisation.
    SetPartyBranch {
        /// This unit's kind.
        kind: Kind,
        /// The organisation.
        branch: pb::PartyBranch,
    },
}

/// Why a head's term ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Departure {
    /// Dismissed (免职).
    Dismissed,
    /// Resigned.
    Resigned,
    /// Transferred to another post.
    Transferred,
    /// Another head was appointed.
    Replaced,
    /// Another reason, in the note.
    Other,
}

impl Departure {
    /// From the wire; `None` for unspecified.
    pub fn from_proto(d: pb::HeadDeparture) -> Option<Self> {
        Some(match d {
            pb::HeadDeparture::Unspecified => return None,
            pb::HeadDeparture::Dismissed => Self::Dismissed,
            pb::HeadDeparture::Resigned => Self::Resigned,
            pb::HeadDeparture::Transferred => Self::Transferred,
            pb::HeadDeparture::Replaced => Self::Replaced,
            pb::HeadDeparture::Other => Self::Other,
        })
    }

    /// To the wire.
    pub fn to_proto(self) -> pb::HeadDeparture {
        match self {
            Self::Dismissed => pb::HeadDeparture::Dismissed,
            Self::Resigned => pb::HeadDeparture::Resigned,
            Self::Transferred => pb::HeadDeparture::Transferred,
            Self::Replaced => pb::HeadDeparture::Replaced,
            Self::Other => pb::HeadDeparture::Other,
        }
    }
}

/// Rules a command can break; each names the unit or field concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum UnitRejection {
    /// Wrong level under this parent.
    #[error("a {child} cannot be registered under {parent_id} (a {parent})", child = .child.label(), parent = .parent.label())]
    KindNotAllowed {
        /// Child kind.
        child: Kind,
        /// Parent kind.
        parent: Kind,
        /// Parent id.
        parent_id: String,
    },
    /// Id taken under this parent.
    #[error("unit {0} is already registered")]
    AlreadyRegistered(String),
    /// Boundary not inside the parent's.
    #[error("boundary of {child_id} is not inside its parent {parent_id}")]
    OutsideParent {
        /// Child id.
        child_id: String,
        /// Parent id.
        parent_id: String,
    },
    /// Boundary shares area with a sibling.
    #[error("boundary of {child_id} overlaps its sibling {sibling_id}")]
    OverlapsSibling {
        /// Child id.
        child_id: String,
        /// Sibling id.
        sibling_id: String,
    },
    /// No such child under this parent.
    #[error("{child_id} is not registered under {parent_id}")]
    UnknownChild {
        /// Child id.
        child_id: String,
        /// Parent id.
        parent_id: String,
    },
    /// A redraw would leave a grandchild outside.
    #[error("the new boundary of {child_id} would leave {grandchild_id} outside it")]
    LeavesChildOutside {
        /// Child id.
        child_id: String,
        /// Grandchild id.
        grandchild_id: String,
    },
    /// Staff on a level without staff.
    #[error("a {} has no head, workers or party branch; use a grid, special grid or micro-grid", .0.label())]
    NoStaffAtThisLevel(Kind),
    /// Certificate expired.
    #[error("certificate.expires_on: certificate {number} expired on {expires_on}")]
    CertificateExpired {
        /// Number.
        number: String,
        /// Expiry.
        expires_on: String,
    },
    /// The person is already the head in post.
    #[error("person_id: {0} is already the head here; renew the certificate instead of appointing again")]
    AlreadyHead(String),
    /// No head in post.
    #[error("the unit has no head in post")]
    NoHead,
    /// Appointing over a head in post without saying why they go.
    #[error("replacing_reason: {0} is the head in post; say why they are replaced (or vacate the post first)")]
    HeadInPost(String),
    /// The person named is not the head in post.
    #[error("person_id: {person_id} is not the head in post (the head is {head})")]
    NotTheHead {
        /// Person named.
        person_id: String,
        /// The head in post.
        head: String,
    },
    /// A renewal that does not run past the certificate it renews.
    #[error("certificate.expires_on: the renewal runs to {expires_on}, not past the current certificate's {current}")]
    RenewalNotLater {
        /// The renewal's last day.
        expires_on: String,
        /// The current certificate's last day.
        current: String,
    },
    /// Already a current worker.
    #[error("{0} is already a worker here")]
    AlreadyWorking(String),
    /// Not a current worker.
    #[error("{0} is not a current worker here")]
    NotAWorker(String),
}

impl Aggregate for Unit {
    const CONTEXT: &'static str = "grid";
    const TYPE: &'static str = "unit";
    const STATE_VERSION: u32 = 1;
    type Command = UnitCommand;
    type Event = UnitEvent;
    type Rejection = UnitRejection;

    fn decide(&self, command: &UnitCommand) -> Result<Vec<UnitEvent>, UnitRejection> {
        match command {
            UnitCommand::RegisterChild { child_id, kind, name, boundary, special_site, parent } => {
                if !parent.kind.allows_child(*kind) {
                    return Err(UnitRejection::KindNotAllowed {
                        child: *kind,
                        parent: parent.kind,
                        parent_id: parent.id.clone(),
                    });
                }
                if self.children.contains_key(child_id) {
                    return Err(UnitRejection::AlreadyRegistered(child_id.clone()));
                }
                self.check_placement(child_id, boundary, parent)?;
                Ok(vec![UnitEvent::ChildRegistered(pb::ChildRegistered {
                    child_id: child_id.clone(),
                    kind: kind.to_proto() as i32,
                    name: name.clone(),
                    boundary_geojson: boundary.geojson.clone(),
                    special_site: *special_site as i32,
                })])
            }
            UnitCommand::RedrawChild { child_id, boundary, parent, grandchildren } => {
                if !self.children.contains_key(child_id) {
                    return Err(UnitRejection::UnknownChild {
                        child_id: child_id.clone(),
                        parent_id: parent.id.clone(),
                    });
                }
                self.check_placement(child_id, boundary, parent)?;
                if let Some((grandchild_id, _)) = grandchildren.iter().find(|(_, b)| !boundary.covers(b)) {
                    return Err(UnitRejection::LeavesChildOutside {
                        child_id: child_id.clone(),
                        grandchild_id: grandchild_id.clone(),
                    });
                }
                Ok(vec![UnitEvent::ChildBoundaryRedrawn(pb::ChildBoundaryRedrawn {
                    child_id: child_id.clone(),
                    boundary_geojson: boundary.geojson.clone(),
                })])
            }
            UnitCommand::CountHouseholds { households } => {
                if self.households == Some(*households) {
                    return Ok(vec![]);
                }
                Ok(vec![UnitEvent::HouseholdsCounted(pb::HouseholdsCounted { households: *households })])
            }
            UnitCommand::AppointHead { kind, head, expires_on, today, replacing_reason } => {
                if !kind.has_staff() {
                    return Err(UnitRejection::NoStaffAtThisLevel(*kind));
                }
                if expires_on < today {
                    let c = head.certificate.clone().unwrap_or_default();
                    return Err(UnitRejection::CertificateExpired { number: c.number, expires_on: c.expires_on });
                }
                let mut events = Vec::with_capacity(2);
                if let Some(current) = &self.head {
                    if current.person_id == head.person_id {
                        return Err(UnitRejection::AlreadyHead(head.person_id.clone()));
                    }
                    let Some(reason) = replacing_reason else {
                        return Err(UnitRejection::HeadInPost(current.person_id.clone()));
                    };
                    events.push(UnitEvent::HeadVacated(pb::HeadVacated {
                        person_id: current.person_id.clone(),
                        left_on: today.to_string(),
                        departure: pb::HeadDeparture::Replaced as i32,
                        note: format!("replaced by {} ({}): {reason}", head.name, head.person_id),
                    }));
                }
                events.push(UnitEvent::HeadAppointed(pb::HeadAppointed { head: Some(head.clone()) }));
                Ok(events)
            }
            UnitCommand::RenewHeadCertificate { person_id, certificate, expires_on, today } => {
                let current = self.head_in_post(person_id)?;
                if expires_on < today {
                    return Err(UnitRejection::CertificateExpired {
                        number: certificate.number.clone(),
                        expires_on: certificate.expires_on.clone(),
                    });
                }
                let current_expiry = current.certificate.as_ref().map(|c| c.expires_on.clone()).unwrap_or_default();
                if parse_date(&current_expiry).is_some_and(|d| *expires_on <= d) {
                    return Err(UnitRejection::RenewalNotLater {
                        expires_on: certificate.expires_on.clone(),
                        current: current_expiry,
                    });
                }
                Ok(vec![UnitEvent::HeadCertificateRenewed(pb::HeadCertificateRenewed {
                    person_id: person_id.clone(),
                    certificate: Some(certificate.clone()),
                    renewed_on: today.to_string(),
                })])
            }
            UnitCommand::VacateHead { person_id, departure, note, today } => {
                self.head_in_post(person_id)?;
                Ok(vec![UnitEvent::HeadVacated(pb::HeadVacated {
                    person_id: person_id.clone(),
                    left_on: today.to_string(),
                    departure: departure.to_proto() as i32,
                    note: note.clone(),
                })])
            }
            UnitCommand::AddWorker { kind, worker } => {
                if !kind.has_staff() {
                    return Err(UnitRejection::NoStaffAtThisLevel(*kind));
                }
                if self.workers.contains_key(&worker.person_id) {
                    return Err(UnitRejection::AlreadyWorking(worker.person_id.clone()));
                }
                Ok(vec![UnitEvent::WorkerAdded(pb::WorkerAdded { worker: Some(worker.clone()) })])
            }
            UnitCommand::DismissWorker { person_id, reason, today } => {
                if !self.workers.contains_key(person_id) {
                    return Err(UnitRejection::NotAWorker(person_id.clone()));
                }
                Ok(vec![UnitEvent::WorkerDismissed(pb::WorkerDismissed {
                    person_id: person_id.clone(),
                    left_on: today.to_string(),
                    reason: reason.clone(),
                })])
            }
            UnitCommand::SetPartyBranch { kind, branch } => {
                if !kind.has_staff() {
                    return Err(UnitRejection::NoStaffAtThisLevel(*kind));
                }
                if self.party_branch.as_ref() == Some(branch) {
                    return Ok(vec![]);
                }
                Ok(vec![UnitEvent::PartyBranchSet(pb::PartyBranchSet { party_branch: Some(branch.clone()) })])
            }
        }
    }

    fn evolve(mut self, event: &UnitEvent) -> Self {
        match event {
            UnitEvent::ChildRegistered(e) => {
                let kind = pb::UnitKind::try_from(e.kind).ok().and_then(Kind::from_proto).unwrap_or(Kind::Grid);
                let boundary = Boundary::parse(&e.boundary_geojson).ok();
                self.children.insert(e.child_id.clone(), Child { registered: e.clone(), kind, boundary });
            }
            UnitEvent::ChildBoundaryRedrawn(e) => {
                if let Some(child) = self.children.get_mut(&e.child_id) {
                    child.registered.boundary_geojson.clone_from(&e.boundary_geojson);
                    child.boundary = Boundary::parse(&e.boundary_geojson).ok();
                }
            }
            UnitEvent::HouseholdsCounted(e) => self.households = Some(e.households),
            UnitEvent::HeadAppointed(e) => self.head = e.head.clone(),
            UnitEvent::HeadVacated(e) => {
                if self.head.as_ref().is_some_and(|h| h.person_id == e.person_id) {
                    self.head = None;
                }
            }
            UnitEvent::HeadCertificateRenewed(e) => {
                if let Some(head) = self.head.as_mut().filter(|h| h.person_id == e.person_id) {
                    head.certificate.clone_from(&e.certificate);
                }
            }
            UnitEvent::WorkerAdded(e) => {
                if let Some(w) = &e.worker {
                    self.workers.insert(w.person_id.clone(), w.clone());
                }
            }
            UnitEvent::WorkerDismissed(e) => {
                self.workers.remove(&e.person_id);
            }
            UnitEvent::PartyBranchSet(e) => self.party_branch = e.party_branch.clone(),
        }
        self
    }

    fn encode_state(&self) -> Vec<u8> {
        pb::UnitState {
            children: self.children.values().map(|c| c.registered.clone()).collect(),
            households: self.households,
            head: self.head.clone(),
            workers: self.workers.values().cloned().collect(),
            party_branch: self.party_branch.clone(),
        }
        .encode_to_vec()
    }

    fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError> {
        let s = pb::UnitState::decode(bytes).map_err(|e| DecodeError::new("unit state", e))?;
        let mut unit = Unit::default();
        for c in s.children {
            unit = unit.evolve(&UnitEvent::ChildRegistered(c));
        }
        unit.households = s.households;
        unit.head = s.head;
        unit.workers = s.workers.into_iter().map(|w| (w.person_id.clone(), w)).collect();
        unit.party_branch = s.party_branch;
        Ok(unit)
    }
}

/// A date, YYYY-MM-DD.
pub fn parse_date(s: &str) -> Option<Date> {
    Date::parse(s, &time::format_description::well_known::Iso8601::DATE).ok()
}

impl Unit {
    /// The head in post, if it is `person_id`.
    fn head_in_post(&self, person_id: &str) -> Result<&pb::Head, UnitRejection> {
        let head = self.head.as_ref().ok_or(UnitRejection::NoHead)?;
        if head.person_id != person_id {
            return Err(UnitRejection::NotTheHead { person_id: person_id.into(), head: head.person_id.clone() });
        }
        Ok(head)
    }

    fn check_placement(&self, child_id: &str, boundary: &Boundary, parent: &ParentFacts) -> Result<(), UnitRejection> {
        if let Some(outer) = &parent.boundary
            && !outer.covers(boundary)
        {
            return Err(UnitRejection::OutsideParent { child_id: child_id.into(), parent_id: parent.id.clone() });
        }
        for (sibling_id, sibling) in &self.children {
            if sibling_id == child_id {
                continue;
            }
            if sibling.boundary.as_ref().is_some_and(|b| b.overlaps_area(boundary)) {
                return Err(UnitRejection::OverlapsSibling {
                    child_id: child_id.into(),
                    sibling_id: sibling_id.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use gridwork_eventstore::testing::given;
    use time::macros::date;

    use super::*;
    use gridwork_geo::polygon_geojson;

    fn square(x: f64, y: f64, size: f64) -> Boundary {
        Boundary::parse(&polygon_geojson(&[(x, y), (x + size, y), (x + size, y + size), (x, y + size)])).expect("valid")
    }

    fn grid_facts() -> ParentFacts {
        ParentFacts { kind: Kind::Grid, id: "g1".into(), boundary: Some(square(0.0, 0.0, 2.0)) }
    }

    fn register(id: &str, b: Boundary) -> UnitCommand {
        UnitCommand::RegisterChild {
            child_id: id.into(),
            kind: Kind::MicroGrid,
            name: id.into(),
            boundary: b,
            special_site: pb::SpecialSite::Unspecified,
            parent: grid_facts(),
        }
    }

    fn registered(id: &str, b: &Boundary) -> UnitEvent {
        UnitEvent::ChildRegistered(pb::ChildRegistered {
            child_id: id.into(),
            kind: pb::UnitKind::MicroGrid as i32,
            name: id.into(),
            boundary_geojson: b.geojson.clone(),
            special_site: 0,
        })
    }

    #[test]
    fn a_micro_grid_inside_its_grid_is_registered() {
        let b = square(0.0, 0.0, 1.0);
        given::<Unit>([]).when(register("m1", b.clone())).then_expect_events([registered("m1", &b)]);
    }

    #[test]
    fn a_micro_grid_outside_its_grid_is_refused_naming_both() {
        given::<Unit>([])
            .when(register("m1", square(1.5, 1.5, 1.0)))
            .then_expect_error(UnitRejection::OutsideParent { child_id: "m1".into(), parent_id: "g1".into() });
    }

    #[test]
    fn overlapping_siblings_are_refused_and_neighbours_accepted() {
        let a = square(0.0, 0.0, 1.0);
        given::<Unit>([registered("m1", &a)])
            .when(register("m2", square(0.5, 0.0, 1.0)))
            .then_expect_error(UnitRejection::OverlapsSibling { child_id: "m2".into(), sibling_id: "m1".into() });
        let b = square(1.0, 0.0, 1.0);
        given::<Unit>([registered("m1", &a)])
            .when(register("m2", b.clone()))
            .then_expect_events([registered("m2", &b)]);
    }

    #[test]
    fn a_unit_cannot_sit_at_the_wrong_level() {
        let command = UnitCommand::RegisterChild {
            child_id: "c".into(),
            kind: Kind::Community,
            name: "c".into(),
            boundary: square(0.0, 0.0, 1.0),
            special_site: pb::SpecialSite::Unspecified,
            parent: grid_facts(),
        };
        given::<Unit>([]).when(command).then_expect_error(UnitRejection::KindNotAllowed {
            child: Kind::Community,
            parent: Kind::Grid,
            parent_id: "g1".into(),
        });
    }

    #[test]
    fn an_id_is_registered_once() {
        let a = square(0.0, 0.0, 1.0);
        given::<Unit>([registered("m1", &a)])
            .when(register("m1", a.clone()))
            .then_expect_error(UnitRejection::AlreadyRegistered("m1".into()));
    }

    #[test]
    fn a_redraw_may_not_leave_a_grandchild_outside_or_overlap_a_sibling() {
        let a = square(0.0, 0.0, 1.0);
        let b = square(1.0, 0.0, 1.0);
        let redraw = |boundary: Boundary, grandchildren: Vec<(String, Boundary)>| UnitCommand::RedrawChild {
            child_id: "m1".into(),
            boundary,
            parent: grid_facts(),
            grandchildren,
        };
        given::<Unit>([registered("m1", &a), registered("m2", &b)])
            .when(redraw(square(0.0, 0.0, 1.5), vec![]))
            .then_expect_error(UnitRejection::OverlapsSibling { child_id: "m1".into(), sibling_id: "m2".into() });
        given::<Unit>([registered("m1", &a)])
            .when(redraw(square(0.0, 0.0, 0.5), vec![("x".into(), square(0.6, 0.6, 0.2))]))
            .then_expect_error(UnitRejection::LeavesChildOutside { child_id: "m1".into(), grandchild_id: "x".into() });
        let smaller = square(0.0, 0.0, 0.5);
        given::<Unit>([registered("m1", &a)]).when(redraw(smaller.clone(), vec![])).then_expect_events([
            UnitEvent::ChildBoundaryRedrawn(pb::ChildBoundaryRedrawn {
                child_id: "m1".into(),
                boundary_geojson: smaller.geojson.clone(),
            }),
        ]);
        given::<Unit>([])
            .when(redraw(smaller, vec![]))
            .then_expect_error(UnitRejection::UnknownChild { child_id: "m1".into(), parent_id: "g1".into() });
    }

    fn head(expires_on: &str) -> pb::Head {
        pb::Head {
            person_id: "p1".into(),
            name: "Li".into(),
            certificate: Some(pb::Certificate {
                number: "C-1".into(),
                issuer: "Huolong".into(),
                expires_on: expires_on.into(),
            }),
            appointed_on: "2026-01-01".into(),
        }
    }

    #[test]
    fn a_head_with_an_expired_certificate_is_refused() {
        given::<Unit>([])
            .when(UnitCommand::AppointHead {
                kind: Kind::Grid,
                head: head("2025-12-31"),
                expires_on: date!(2025 - 12 - 31),
                today: date!(2026 - 01 - 01),
                replacing_reason: None,
            })
            .then_expect_error(UnitRejection::CertificateExpired {
                number: "C-1".into(),
                expires_on: "2025-12-31".into(),
            });
        given::<Unit>([])
            .when(UnitCommand::AppointHead {
                kind: Kind::Grid,
                head: head("2026-01-01"),
                expires_on: date!(2026 - 01 - 01),
                today: date!(2026 - 01 - 01),
                replacing_reason: None,
            })
            .then_expect_events([UnitEvent::HeadAppointed(pb::HeadAppointed { head: Some(head("2026-01-01")) })]);
    }

    fn appointed(person: &str, expires_on: &str) -> UnitEvent {
        UnitEvent::HeadAppointed(pb::HeadAppointed {
            head: Some(pb::Head { person_id: person.into(), ..head(expires_on) }),
        })
    }

    #[test]
    fn a_head_in_post_is_replaced_only_with_a_reason() {
        let UnitCommand::AppointHead { kind, head, expires_on, today, .. } = appoint("p2") else {
            unreachable!("appoint builds an appointment")
        };
        let silent = UnitCommand::AppointHead { kind, head, expires_on, today, replacing_reason: None };
        given::<Unit>([appointed("p1", "2027-01-01")])
            .when(silent)
            .then_expect_error(UnitRejection::HeadInPost("p1".into()));
        given::<Unit>([appointed("p1", "2027-01-01")]).when(appoint("p2")).then_with(|events| {
            assert!(
                matches!(&events[0], UnitEvent::HeadVacated(v) if v.note.contains("moved to another district")),
                "{events:?}"
            );
        });
    }

    fn appoint(person: &str) -> UnitCommand {
        UnitCommand::AppointHead {
            kind: Kind::Grid,
            head: pb::Head { person_id: person.into(), name: format!("{person} name"), ..head("2027-01-01") },
            expires_on: date!(2027 - 01 - 01),
            today: date!(2026 - 06 - 01),
            replacing_reason: Some("moved to another district".into()),
        }
    }

    fn renew(person: &str, expires_on: Date) -> UnitCommand {
        UnitCommand::RenewHeadCertificate {
            person_id: person.into(),
            certificate: pb::Certificate {
                number: "C-2".into(),
                issuer: "Huolong".into(),
                expires_on: expires_on.to_string(),
            },
            expires_on,
            today: date!(2026 - 06 - 01),
        }
    }

    fn vacate(person: &str) -> UnitCommand {
        UnitCommand::VacateHead {
            person_id: person.into(),
            departure: Departure::Dismissed,
            note: "complaints".into(),
            today: date!(2026 - 06 - 01),
        }
    }

    #[test]
    fn appointing_the_head_in_post_again_is_refused_and_another_head_ends_the_term_as_replaced() {
        given::<Unit>([appointed("p1", "2026-12-31")])
            .when(appoint("p1"))
            .then_expect_error(UnitRejection::AlreadyHead("p1".into()));
        given::<Unit>([appointed("p1", "2026-12-31")]).when(appoint("p2")).then_expect_events([
            UnitEvent::HeadVacated(pb::HeadVacated {
                person_id: "p1".into(),
                left_on: "2026-06-01".into(),
                departure: pb::HeadDeparture::Replaced as i32,
                note: "replaced by p2 name (p2): moved to another district".into(),
            }),
            UnitEvent::HeadAppointed(pb::HeadAppointed {
                head: Some(pb::Head { person_id: "p2".into(), name: "p2 name".into(), ..head("2027-01-01") }),
            }),
        ]);
    }

    #[test]
    fn a_renewal_names_the_head_in_post_runs_later_and_is_valid_today() {
        given::<Unit>([]).when(renew("p1", date!(2027 - 06 - 01))).then_expect_error(UnitRejection::NoHead);
        given::<Unit>([appointed("p1", "2026-12-31")])
            .when(renew("p2", date!(2027 - 06 - 01)))
            .then_expect_error(UnitRejection::NotTheHead { person_id: "p2".into(), head: "p1".into() });
        given::<Unit>([appointed("p1", "2026-12-31")]).when(renew("p1", date!(2026 - 12 - 31))).then_expect_error(
            UnitRejection::RenewalNotLater { expires_on: "2026-12-31".into(), current: "2026-12-31".into() },
        );
        given::<Unit>([appointed("p1", "2026-01-31")]).when(renew("p1", date!(2026 - 05 - 31))).then_expect_error(
            UnitRejection::CertificateExpired { number: "C-2".into(), expires_on: "2026-05-31".into() },
        );
        let renewed = given::<Unit>([appointed("p1", "2026-01-31")]).when(renew("p1", date!(2028 - 01 - 31)));
        renewed.then_expect_events([UnitEvent::HeadCertificateRenewed(pb::HeadCertificateRenewed {
            person_id: "p1".into(),
            certificate: Some(pb::Certificate {
                number: "C-2".into(),
                issuer: "Huolong".into(),
                expires_on: "2028-01-31".into(),
            }),
            renewed_on: "2026-06-01".into(),
        })]);
    }

    #[test]
    fn vacating_names_the_head_in_post_and_leaves_the_unit_without_one() {
        given::<Unit>([]).when(vacate("p1")).then_expect_error(UnitRejection::NoHead);
        given::<Unit>([appointed("p1", "2026-12-31")])
            .when(vacate("p2"))
            .then_expect_error(UnitRejection::NotTheHead { person_id: "p2".into(), head: "p1".into() });
        let vacated = UnitEvent::HeadVacated(pb::HeadVacated {
            person_id: "p1".into(),
            left_on: "2026-06-01".into(),
            departure: pb::HeadDeparture::Dismissed as i32,
            note: "complaints".into(),
        });
        given::<Unit>([appointed("p1", "2026-12-31")]).when(vacate("p1")).then_expect_events([vacated.clone()]);
        given::<Unit>([appointed("p1", "2026-12-31"), vacated])
            .when(vacate("p1"))
            .then_expect_error(UnitRejection::NoHead);
    }

    #[test]
    fn streets_have_no_staff() {
        given::<Unit>([])
            .when(UnitCommand::AddWorker { kind: Kind::Street, worker: pb::Worker::default() })
            .then_expect_error(UnitRejection::NoStaffAtThisLevel(Kind::Street));
    }

    #[test]
    fn a_worker_is_dismissed_once_and_only_if_current() {
        let worker = pb::Worker {
            person_id: "w1".into(),
            name: "Zhao".into(),
            role: 5,
            joined_on: "2026-01-01".into(),
            ..Default::default()
        };
        let added = UnitEvent::WorkerAdded(pb::WorkerAdded { worker: Some(worker.clone()) });
        let dismiss = || UnitCommand::DismissWorker {
            person_id: "w1".into(),
            reason: "ineffective".into(),
            today: date!(2026 - 02 - 01),
        };
        given::<Unit>([added.clone()]).when(dismiss()).then_expect_events([UnitEvent::WorkerDismissed(
            pb::WorkerDismissed { person_id: "w1".into(), left_on: "2026-02-01".into(), reason: "ineffective".into() },
        )]);
        let dismissed =
            UnitEvent::WorkerDismissed(pb::WorkerDismissed { person_id: "w1".into(), ..Default::default() });
        given::<Unit>([added.clone(), dismissed])
            .when(dismiss())
            .then_expect_error(UnitRejection::NotAWorker("w1".into()));
        given::<Unit>([added])
            .when(UnitCommand::AddWorker { kind: Kind::MicroGrid, worker })
            .then_expect_error(UnitRejection::AlreadyWorking("w1".into()));
    }

    #[test]
    fn household_bands_follow_the_standards() {
        assert_eq!(band(Kind::Grid, Some(299)), pb::HouseholdBand::Below);
        assert_eq!(band(Kind::Grid, Some(300)), pb::HouseholdBand::Within);
        assert_eq!(band(Kind::Grid, Some(501)), pb::HouseholdBand::Above);
        assert_eq!(band(Kind::MicroGrid, Some(70)), pb::HouseholdBand::Within);
        assert_eq!(band(Kind::MicroGrid, Some(71)), pb::HouseholdBand::Above);
        assert_eq!(band(Kind::Community, Some(5000)), pb::HouseholdBand::Unspecified);
        assert_eq!(band(Kind::Grid, None), pb::HouseholdBand::Unspecified);
    }

    #[test]
    fn state_survives_a_snapshot_round_trip() {
        let a = square(0.0, 0.0, 1.0);
        let state = given::<Unit>([
            registered("m1", &a),
            UnitEvent::HouseholdsCounted(pb::HouseholdsCounted { households: 60 }),
        ])
        .state()
        .clone();
        assert_eq!(Unit::decode_state(&state.encode_state()).expect("decodes"), state);
    }
}
