//! Who may call what: the one table of permissions and the RPCs that need
//! them. The authentication layer checks it before any handler runs (an RPC
//! missing from the table is refused: default deny); where a permission also
//! depends on the place or the owner (a street acts in its own subtree, a
//! department on its own cases), the handler checks the grant's scope.
//! ARCHITECTURE.md, "Who may do what", is this table in prose.

/// The roles a token's grants name.
pub mod roles {
    /// Reports in its own grids (scope: a grid).
    pub const GRID_WORKER: &str = "grid-worker";
    /// A grid head: acts on the cases its grid owns (scope: a grid).
    pub const GRID_HEAD: &str = "grid-head";
    /// A community office (scope: a community and its grids).
    pub const COMMUNITY: &str = "community";
    /// A street office: acts in its subtree and blows the whistle (scope: a street).
    pub const STREET: &str = "street";
    /// A functional department: its own cases and summonses (scope: its code).
    pub const DEPARTMENT: &str = "department";
    /// The command centre's dispatcher: assigns, merges, releases summonses.
    pub const DISPATCHER: &str = "dispatcher";
    /// Intake triage.
    pub const TRIAGE: &str = "triage";
    /// The triage shift lead: may also break another's triage claim.
    pub const TRIAGE_LEAD: &str = "triage-lead";
    /// A hotline call-taker (12345): reports what callers say.
    pub const HOTLINE: &str = "hotline";
    /// Calls reporters back (回访): reads a contact, records the rating.
    pub const CALLBACK: &str = "callback";
    /// The data-protection officer: erases personal data.
    pub const PRIVACY: &str = "privacy";
    /// Keeps the organisation tree and its staff.
    pub const REGISTRY_ADMIN: &str = "registry-admin";
    /// Publishes intake's category catalogue.
    pub const CATALOGUE_ADMIN: &str = "catalogue-admin";
    /// Publishes dispatch's rulebook and working calendar.
    pub const ROUTING_ADMIN: &str = "routing-admin";
    /// A delivery rider: own reports (later: own station visits).
    pub const RIDER: &str = "rider";
    /// A partner system feeding reports (cameras, sensors, the 110 link).
    pub const PARTNER_SYSTEM: &str = "partner-system";
    /// Reads everything, changes nothing (later: the audit records too).
    pub const AUDITOR: &str = "auditor";
    /// Operates the sample ledger (the kernel's demonstration service).
    pub const LEDGER_OPERATOR: &str = "ledger-operator";

    /// Every role a grant may name.
    pub const ALL: &[&str] = &[
        GRID_WORKER,
        GRID_HEAD,
        COMMUNITY,
        STREET,
        DEPARTMENT,
        DISPATCHER,
        TRIAGE,
        TRIAGE_LEAD,
        HOTLINE,
        CALLBACK,
        PRIVACY,
        REGISTRY_ADMIN,
        CATALOGUE_ADMIN,
        ROUTING_ADMIN,
        RIDER,
        PARTNER_SYSTEM,
        AUDITOR,
        LEDGER_OPERATOR,
    ];
}

use roles::*;

/// A permission: what it lets a caller do, and the roles that hold it.
#[derive(Debug, PartialEq, Eq)]
pub struct Permission {
    /// Its name, as refusals give it (`dispatch.handle`).
    pub name: &'static str,
    /// What it allows, for people.
    pub allows: &'static str,
    /// The roles that hold it.
    pub roles: &'static [&'static str],
}

impl Permission {
    /// Whether `principal` holds it (by role; a scope is the handler's check).
    pub fn held_by(&self, principal: &crate::Principal) -> bool {
        self.roles.iter().any(|r| principal.has_role(r))
    }

    /// Whether calls needing it write (an event, or a read that is itself
    /// recorded, as a contact read is): the per-principal write rate applies.
    pub fn writes(&self) -> bool {
        !READS.contains(&self)
    }

    /// The `PERMISSION_DENIED` for a caller without it: names the permission
    /// and the roles that hold it.
    pub fn denied(&self) -> tonic::Status {
        tonic::Status::permission_denied(format!(
            "{} needs the permission {}, held by the role{} {}",
            self.allows,
            self.name,
            if self.roles.len() == 1 { "" } else { "s" },
            self.roles.join(", ")
        ))
    }
}

/// The staff who read the tree, incidents and cases.
const STAFF: &[&str] = &[
    GRID_WORKER,
    GRID_HEAD,
    COMMUNITY,
    STREET,
    DEPARTMENT,
    DISPATCHER,
    TRIAGE,
    TRIAGE_LEAD,
    HOTLINE,
    CALLBACK,
    REGISTRY_ADMIN,
    CATALOGUE_ADMIN,
    ROUTING_ADMIN,
    AUDITOR,
];

macro_rules! permissions {
    ($($id:ident = $name:literal, $allows:literal, $roles:expr;)*) => {
        $(
            #[doc = $allows]
            pub const $id: Permission = Permission { name: $name, allows: $allows, roles: $roles };
        )*
        /// Every permission.
        pub const PERMISSIONS: &[&Permission] = &[$(&$id),*];
    };
}

permissions! {
    REGISTRY_READ = "registry.read", "reading the organisation tree", STAFF;
    REGISTRY_STRUCTURE = "registry.structure", "changing the organisation tree (units, boundaries, households, party branches)", &[REGISTRY_ADMIN];
    REGISTRY_STAFF = "registry.staff", "appointing and dismissing grid heads and workers", &[REGISTRY_ADMIN, STREET, COMMUNITY];
    INTAKE_REPORT = "intake.report", "reporting an incident", &[GRID_WORKER, GRID_HEAD, COMMUNITY, STREET, HOTLINE, RIDER, PARTNER_SYSTEM, TRIAGE, TRIAGE_LEAD, DISPATCHER];
    INTAKE_READ = "intake.read", "reading incidents", &[GRID_WORKER, GRID_HEAD, COMMUNITY, STREET, DEPARTMENT, DISPATCHER, TRIAGE, TRIAGE_LEAD, HOTLINE, CALLBACK, AUDITOR, RIDER, PARTNER_SYSTEM];
    INTAKE_CATALOGUE_READ = "intake.catalogue.read", "reading the category catalogue", &[GRID_WORKER, GRID_HEAD, COMMUNITY, STREET, DEPARTMENT, DISPATCHER, TRIAGE, TRIAGE_LEAD, HOTLINE, CALLBACK, CATALOGUE_ADMIN, ROUTING_ADMIN, AUDITOR, RIDER, PARTNER_SYSTEM];
    INTAKE_CATALOGUE_PUBLISH = "intake.catalogue.publish", "publishing the category catalogue", &[CATALOGUE_ADMIN];
    INTAKE_TRIAGE = "intake.triage", "triaging incidents (claim, accept, reject, link, correct, transfer)", &[TRIAGE, TRIAGE_LEAD, DISPATCHER];
    INTAKE_BREAK_CLAIM = "intake.triage.break-claim", "breaking another's triage claim (ClaimIncident break_lock)", &[TRIAGE_LEAD];
    INTAKE_CONTACT_READ = "intake.contact.read", "reading a reporter's contact", &[CALLBACK];
    INTAKE_CONTACT_ERASE = "intake.contact.erase", "erasing a reporter's contact", &[PRIVACY];
    DISPATCH_READ = "dispatch.read", "reading cases, queues and summonses", STAFF;
    DISPATCH_HANDLE = "dispatch.handle", "acting on a case as its owner (acknowledge, progress, resolve, hand back)", &[GRID_HEAD, COMMUNITY, STREET, DEPARTMENT];
    DISPATCH_ASSIGN = "dispatch.assign", "assigning and merging cases", &[DISPATCHER];
    DISPATCH_WHISTLE = "dispatch.whistle", "blowing the whistle and releasing summonses", &[STREET, DISPATCHER];
    DISPATCH_SUMMONS = "dispatch.summons", "answering a summons (report for duty, progress, complete)", &[DEPARTMENT];
    DISPATCH_RATE = "dispatch.rate", "recording the reporter's rating of a fix (回访: by the call-back or the hotline, never by those who handled it)", &[CALLBACK, HOTLINE];
    DISPATCH_RULES_READ = "dispatch.rules.read", "reading the rulebook and the working calendar", STAFF;
    DISPATCH_RULES_PUBLISH = "dispatch.rules.publish", "publishing the rulebook or a calendar year", &[ROUTING_ADMIN];
    LEDGER_READ = "ledger.read", "reading sample-ledger accounts", &[LEDGER_OPERATOR, AUDITOR];
    LEDGER_WRITE = "ledger.write", "changing sample-ledger accounts", &[LEDGER_OPERATOR];
}

/// The permissions that only read; every other one writes.
pub const READS: &[&Permission] =
    &[&REGISTRY_READ, &INTAKE_READ, &INTAKE_CATALOGUE_READ, &DISPATCH_READ, &DISPATCH_RULES_READ, &LEDGER_READ];

/// Every RPC and the permission it needs (full gRPC path).
pub const RPCS: &[(&str, &Permission)] = &[
    ("/gridwork.grid.v1.GridRegistryService/GetUnit", &REGISTRY_READ),
    ("/gridwork.grid.v1.GridRegistryService/ListChildren", &REGISTRY_READ),
    ("/gridwork.grid.v1.GridRegistryService/Locate", &REGISTRY_READ),
    ("/gridwork.grid.v1.GridRegistryService/SearchUnits", &REGISTRY_READ),
    ("/gridwork.grid.v1.GridRegistryService/ListHeadHistory", &REGISTRY_READ),
    ("/gridwork.grid.v1.GridRegistryService/ListUnitsNeedingHead", &REGISTRY_READ),
    ("/gridwork.grid.v1.GridRegistryService/RegisterUnit", &REGISTRY_STRUCTURE),
    ("/gridwork.grid.v1.GridRegistryService/RedrawBoundary", &REGISTRY_STRUCTURE),
    ("/gridwork.grid.v1.GridRegistryService/SetHouseholds", &REGISTRY_STRUCTURE),
    ("/gridwork.grid.v1.GridRegistryService/SetPartyBranch", &REGISTRY_STRUCTURE),
    ("/gridwork.grid.v1.GridRegistryService/AddWorker", &REGISTRY_STAFF),
    ("/gridwork.grid.v1.GridRegistryService/DismissWorker", &REGISTRY_STAFF),
    ("/gridwork.grid.v1.GridRegistryService/AppointHead", &REGISTRY_STAFF),
    ("/gridwork.grid.v1.GridRegistryService/RenewHeadCertificate", &REGISTRY_STAFF),
    ("/gridwork.grid.v1.GridRegistryService/VacateHead", &REGISTRY_STAFF),
    ("/gridwork.intake.v1.IntakeService/ReportIncident", &INTAKE_REPORT),
    ("/gridwork.intake.v1.IntakeService/GetIncident", &INTAKE_READ),
    ("/gridwork.intake.v1.IntakeService/ListIncidents", &INTAKE_READ),
    ("/gridwork.intake.v1.IntakeService/GetCatalogue", &INTAKE_CATALOGUE_READ),
    ("/gridwork.intake.v1.IntakeService/PublishCatalogue", &INTAKE_CATALOGUE_PUBLISH),
    ("/gridwork.intake.v1.IntakeService/ClaimIncident", &INTAKE_TRIAGE),
    ("/gridwork.intake.v1.IntakeService/AcceptIncident", &INTAKE_TRIAGE),
    ("/gridwork.intake.v1.IntakeService/RejectIncident", &INTAKE_TRIAGE),
    ("/gridwork.intake.v1.IntakeService/MarkDuplicate", &INTAKE_TRIAGE),
    ("/gridwork.intake.v1.IntakeService/ReclassifyIncident", &INTAKE_TRIAGE),
    ("/gridwork.intake.v1.IntakeService/RelocateIncident", &INTAKE_TRIAGE),
    ("/gridwork.intake.v1.IntakeService/ReassessPriority", &INTAKE_TRIAGE),
    ("/gridwork.intake.v1.IntakeService/TransferIncident", &INTAKE_TRIAGE),
    ("/gridwork.intake.v1.IntakeService/WithdrawTransfer", &INTAKE_TRIAGE),
    ("/gridwork.intake.v1.IntakeService/AnswerTransfer", &INTAKE_TRIAGE),
    ("/gridwork.intake.v1.IntakeService/ReadReporterContact", &INTAKE_CONTACT_READ),
    ("/gridwork.intake.v1.IntakeService/EraseReporterContact", &INTAKE_CONTACT_ERASE),
    ("/gridwork.dispatch.v1.DispatchService/GetCase", &DISPATCH_READ),
    ("/gridwork.dispatch.v1.DispatchService/ListCases", &DISPATCH_READ),
    ("/gridwork.dispatch.v1.DispatchService/ListWorkQueue", &DISPATCH_READ),
    ("/gridwork.dispatch.v1.DispatchService/ListOverdue", &DISPATCH_READ),
    ("/gridwork.dispatch.v1.DispatchService/ListSummonses", &DISPATCH_READ),
    ("/gridwork.dispatch.v1.DispatchService/AcknowledgeCase", &DISPATCH_HANDLE),
    ("/gridwork.dispatch.v1.DispatchService/RecordProgress", &DISPATCH_HANDLE),
    ("/gridwork.dispatch.v1.DispatchService/ResolveCase", &DISPATCH_HANDLE),
    ("/gridwork.dispatch.v1.DispatchService/HandBackCase", &DISPATCH_HANDLE),
    ("/gridwork.dispatch.v1.DispatchService/AssignCase", &DISPATCH_ASSIGN),
    ("/gridwork.dispatch.v1.DispatchService/MergeCase", &DISPATCH_ASSIGN),
    ("/gridwork.dispatch.v1.DispatchService/BlowWhistle", &DISPATCH_WHISTLE),
    ("/gridwork.dispatch.v1.DispatchService/ReleaseSummons", &DISPATCH_WHISTLE),
    ("/gridwork.dispatch.v1.DispatchService/ReportForDuty", &DISPATCH_SUMMONS),
    ("/gridwork.dispatch.v1.DispatchService/RecordSummonsProgress", &DISPATCH_SUMMONS),
    ("/gridwork.dispatch.v1.DispatchService/CompleteSummons", &DISPATCH_SUMMONS),
    ("/gridwork.dispatch.v1.DispatchService/VerifyCase", &DISPATCH_RATE),
    ("/gridwork.dispatch.v1.RulebookService/GetRulebook", &DISPATCH_RULES_READ),
    ("/gridwork.dispatch.v1.RulebookService/GetCalendarYear", &DISPATCH_RULES_READ),
    ("/gridwork.dispatch.v1.RulebookService/PublishRulebook", &DISPATCH_RULES_PUBLISH),
    ("/gridwork.dispatch.v1.RulebookService/PublishCalendarYear", &DISPATCH_RULES_PUBLISH),
    ("/gridwork.sample.v1.LedgerService/GetAccount", &LEDGER_READ),
    ("/gridwork.sample.v1.LedgerService/OpenAccount", &LEDGER_WRITE),
    ("/gridwork.sample.v1.LedgerService/Deposit", &LEDGER_WRITE),
    ("/gridwork.sample.v1.LedgerService/Withdraw", &LEDGER_WRITE),
    ("/gridwork.sample.v1.LedgerService/PostEntries", &LEDGER_WRITE),
];

/// Permissions a handler checks for part of a request (the layer has already
/// checked the RPC's own): the same table, the same refusal.
pub const IN_HANDLERS: &[&Permission] = &[&INTAKE_BREAK_CLAIM];

/// The permission the RPC at `path` needs, if the table names it.
pub fn permission_for(path: &str) -> Option<&'static Permission> {
    RPCS.iter().find(|(p, _)| *p == path).map(|(_, permission)| *permission)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_permission_is_needed_by_some_rpc_and_held_by_known_roles() {
        for permission in PERMISSIONS {
            assert!(
                RPCS.iter().any(|(_, p)| p == permission) || IN_HANDLERS.contains(permission),
                "{} is needed by no RPC",
                permission.name
            );
            for role in permission.roles {
                assert!(roles::ALL.contains(role), "{}: unknown role {role}", permission.name);
            }
        }
        let mut paths: Vec<_> = RPCS.iter().map(|(p, _)| *p).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), RPCS.len(), "an RPC listed twice");
    }

    #[test]
    fn a_refusal_names_the_permission_and_the_roles_that_hold_it() {
        let status = INTAKE_CONTACT_READ.denied();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            status.message(),
            "reading a reporter's contact needs the permission intake.contact.read, held by the role callback"
        );
    }
}
