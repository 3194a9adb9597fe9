//! Where a grant holds. A role is held city-wide, for a unit of the
//! organisation tree and its subtree (`street:s1` acts in every community and
//! grid of street `s1`), for one department (`department:fire-brigade`), or
//! for the caller's own things (a rider's own reports). The layer checks that
//! the caller holds the RPC's permission by some grant and hands the handler
//! an [`Access`]; a handler whose permission depends on the place or the owner
//! asks it whether the grants cover what the request acts on
//! ([`Access::require`]), with the unit's ancestors from the service's own
//! copy of `GRID` — never a call to the registry.

use std::fmt;
use std::sync::Arc;

use crate::policy::{Permission, roles};
use crate::{Grant, GrantError, Principal};

/// What a role's grants are held for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    /// City-wide: the grant names no scope.
    Global,
    /// A unit of the organisation tree and everything under it (the scope is
    /// the unit's id).
    Unit,
    /// One functional department (the scope is its code).
    Department,
    /// The caller's own things — what the token's subject made (no scope).
    Own,
}

impl ScopeKind {
    /// What a grant of this kind is held for, for people.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Global => "city-wide",
            Self::Unit => "a unit of the tree and its subtree",
            Self::Department => "one department",
            Self::Own => "the caller's own reports",
        }
    }
}

/// What grants of `role` are held for. A role this build does not know holds
/// no permission, so its grants are city-wide and harmless.
pub fn scope_kind(role: &str) -> ScopeKind {
    match role {
        roles::GRID_WORKER | roles::GRID_HEAD | roles::COMMUNITY | roles::STREET => ScopeKind::Unit,
        roles::DEPARTMENT => ScopeKind::Department,
        roles::RIDER | roles::PARTNER_SYSTEM => ScopeKind::Own,
        _ => ScopeKind::Global,
    }
}

/// Whether `grant` names a scope exactly when its role needs one: a token
/// granting `grid-worker` without a grid, or `dispatcher:s1` (a city-wide
/// role narrowed to a place it would not be held to), is refused whole.
pub fn check_grant(grant: &Grant) -> Result<(), GrantError> {
    let err = |reason| Err(GrantError { grant: grant.to_string().chars().take(80).collect(), reason });
    match (scope_kind(&grant.role), &grant.scope) {
        (ScopeKind::Unit, None) => err("the role is held for a unit of the tree: role:<unit id>"),
        (ScopeKind::Department, None) => err("the role is held for one department: department:<code>"),
        (ScopeKind::Global, Some(_)) => err("the role is city-wide and takes no scope"),
        (ScopeKind::Own, Some(_)) => err("the role acts on the caller's own things and takes no scope"),
        _ => Ok(()),
    }
}

/// The level of a unit of the organisation tree, as the scope check needs it:
/// a grant of a unit role holds only for a unit of that role's level
/// (`street:<a grid>` or `grid-head:<a street>` holds for nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// A district.
    District,
    /// A street (街道).
    Street,
    /// A community (社区).
    Community,
    /// A grid, or a special grid (网格).
    Grid,
    /// A micro-grid (微网格).
    MicroGrid,
    /// Anything else (the city root).
    Other,
}

impl Level {
    /// The level of a unit of kind `number` (`gridwork.grid.v1.UnitKind`:
    /// 1 district, 2 street, 3 community, 4 grid, 5 micro-grid, 6 special grid).
    pub fn of_unit_kind(number: i32) -> Self {
        match number {
            1 => Self::District,
            2 => Self::Street,
            3 => Self::Community,
            4 | 6 => Self::Grid,
            5 => Self::MicroGrid,
            _ => Self::Other,
        }
    }
}

/// The level a unit role's grant must name.
fn level_of(role: &str) -> Option<Level> {
    match role {
        roles::GRID_WORKER | roles::GRID_HEAD => Some(Level::Grid),
        roles::COMMUNITY => Some(Level::Community),
        roles::STREET => Some(Level::Street),
        _ => None,
    }
}

/// What a request acts on, for the scope check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// A place: the unit and its ancestors up to its district, each with its
    /// level, from the service's own copy of the tree (an empty chain is a
    /// unit it does not know: only a city-wide grant covers it).
    Place(&'a [(String, Level)]),
    /// A department, by code.
    Department(&'a str),
    /// Something the subject named made (a report, a visit).
    MadeBy(&'a str),
}

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Place([]) => f.write_str("a unit outside the known tree"),
            Self::Place([(unit, _), ..]) => write!(f, "unit {unit}"),
            Self::Department(code) => write!(f, "department {code}"),
            Self::MadeBy(subject) => write!(f, "what {subject} made"),
        }
    }
}

/// Whether `grant`, held by `subject`, covers `target`.
pub fn covers(grant: &Grant, subject: &str, target: &Target<'_>) -> bool {
    match (scope_kind(&grant.role), grant.scope.as_deref(), target) {
        (ScopeKind::Global, _, _) => true,
        (ScopeKind::Unit, Some(scope), Target::Place(chain)) => {
            chain.iter().any(|(unit, level)| unit == scope && level_of(&grant.role) == Some(*level))
        }
        (ScopeKind::Department, Some(scope), Target::Department(code)) => scope == *code,
        (ScopeKind::Own, _, Target::MadeBy(maker)) => subject == *maker,
        _ => false,
    }
}

/// A verified caller and the permission the layer admitted it under: what a
/// handler asks whether the caller's grants reach what the request acts on.
#[derive(Debug, Clone)]
pub struct Access {
    /// The caller.
    pub principal: Arc<Principal>,
    /// The RPC's permission (from [`crate::policy::RPCS`]).
    pub permission: &'static Permission,
}

impl Access {
    /// The caller's subject, as event headers record it.
    pub fn subject(&self) -> &str {
        &self.principal.subject
    }

    /// The grants through which the caller holds the permission.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> {
        self.principal.grants.iter().filter(|g| self.permission.roles.contains(&g.role.as_str()))
    }

    /// Whether a city-wide grant gives the permission (no scope to check).
    pub fn unrestricted(&self) -> bool {
        self.grants().any(|g| scope_kind(&g.role) == ScopeKind::Global)
    }

    /// Whether the caller holds the permission only for its own things (a
    /// rider, a partner system): its reads are narrowed to what it made.
    pub fn only_own(&self) -> bool {
        self.grants().all(|g| scope_kind(&g.role) == ScopeKind::Own)
    }

    /// Whether some grant with the permission covers some target.
    pub fn covers(&self, targets: &[Target<'_>]) -> bool {
        self.grants().any(|g| targets.iter().any(|t| covers(g, self.subject(), t)))
    }

    /// `PERMISSION_DENIED` unless some grant with the permission covers one of
    /// `targets` (the first names what is refused). The refusal names the
    /// permission and the grants that fall short.
    pub fn require(&self, targets: &[Target<'_>]) -> Result<(), Denied> {
        if self.covers(targets) {
            return Ok(());
        }
        let held: Vec<String> = self.grants().map(ToString::to_string).collect();
        let what = targets.first().map_or_else(|| "this".to_string(), ToString::to_string);
        Err(Denied(format!(
            "{} on {what} needs the permission {} for it: the caller's grant{} {} do{} not reach it",
            self.permission.allows,
            self.permission.name,
            if held.len() == 1 { "" } else { "s" },
            held.join(", "),
            if held.len() == 1 { "es" } else { "" },
        )))
    }
}

/// A scope check's refusal: `PERMISSION_DENIED` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl From<Denied> for tonic::Status {
    fn from(d: Denied) -> Self {
        tonic::Status::permission_denied(d.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{DISPATCH_HANDLE, DISPATCH_SUMMONS, INTAKE_READ, INTAKE_REPORT};

    fn access(grants: &[&str], permission: &'static Permission) -> Access {
        let grants = grants.iter().map(|g| g.parse().expect("grant")).collect();
        Access {
            principal: Arc::new(Principal {
                subject: "u1".into(),
                grants,
                token_id: String::new(),
                expires_at_unix: 0,
            }),
            permission,
        }
    }

    /// A chain nearest first: grid, community, street, district (as long as given).
    fn chain(units: &[&str]) -> Vec<(String, Level)> {
        let levels = [Level::Grid, Level::Community, Level::Street, Level::District];
        let skip = levels.len().saturating_sub(units.len());
        units.iter().zip(&levels[skip..]).map(|(u, l)| (u.to_string(), *l)).collect()
    }

    #[test]
    fn a_grant_names_a_scope_exactly_when_its_role_is_held_for_one() {
        for ok in ["street:s1", "department:fire-brigade", "dispatcher", "rider", "some-future-role"] {
            check_grant(&ok.parse().expect("grant")).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["street", "grid-worker", "department", "dispatcher:s1", "rider:r9", "auditor:d"] {
            assert!(check_grant(&bad.parse().expect("grant")).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_unit_grant_covers_its_subtree_and_nothing_beside_or_above_it() {
        let street = access(&["street:s1"], &DISPATCH_HANDLE);
        let grid_in_s1 = chain(&["g1", "c1", "s1", "d"]);
        assert!(street.require(&[Target::Place(&grid_in_s1)]).is_ok());
        assert!(street.require(&[Target::Place(&chain(&["s1", "d"]))]).is_ok(), "itself");
        assert!(street.require(&[Target::Place(&chain(&["g2", "c2", "s2", "d"]))]).is_err(), "a sibling's grid");
        assert!(street.require(&[Target::Place(&chain(&["d"]))]).is_err(), "the district above");
        assert!(street.require(&[Target::Place(&[])]).is_err(), "a unit the service does not know");
        assert!(street.require(&[Target::Department("s1")]).is_err(), "a department that shares the id");
        assert!(!street.unrestricted());
        // A grant naming a unit of another level than its role's holds for nothing.
        let head_of_a_street = access(&["grid-head:s1"], &DISPATCH_HANDLE);
        assert!(head_of_a_street.require(&[Target::Place(&grid_in_s1)]).is_err(), "grid-head:<street>");
        let street_of_a_grid = access(&["street:g1"], &DISPATCH_HANDLE);
        assert!(street_of_a_grid.require(&[Target::Place(&grid_in_s1)]).is_err(), "street:<grid>");
        let head = access(&["grid-head:g1"], &DISPATCH_HANDLE);
        assert!(head.require(&[Target::Place(&grid_in_s1)]).is_ok(), "its own grid");
    }

    #[test]
    fn a_department_acts_only_as_itself() {
        let fire = access(&["department:fire-brigade"], &DISPATCH_SUMMONS);
        assert!(fire.require(&[Target::Department("fire-brigade")]).is_ok());
        let refused = tonic::Status::from(fire.require(&[Target::Department("police")]).expect_err("another"));
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            "answering a summons (report for duty, progress, complete) on department police needs the permission \
             dispatch.summons for it: the caller's grant department:fire-brigade does not reach it"
        );
    }

    #[test]
    fn own_grants_cover_what_the_caller_made_and_global_ones_everything() {
        let rider = access(&["rider"], &INTAKE_READ);
        assert!(rider.require(&[Target::Place(&chain(&["g"])), Target::MadeBy("u1")]).is_ok());
        assert!(rider.require(&[Target::Place(&chain(&["g"])), Target::MadeBy("u2")]).is_err());
        // Grants for roles without the permission count for nothing.
        let both = access(&["street:s1", "callback"], &INTAKE_REPORT);
        assert!(both.require(&[Target::Place(&chain(&["g9", "s9"]))]).is_err());
        assert!(!both.unrestricted(), "callback does not report");
        let hotline = access(&["hotline"], &INTAKE_REPORT);
        assert!(hotline.unrestricted() && hotline.require(&[Target::Place(&[])]).is_ok());
    }
}
