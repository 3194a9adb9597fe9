//! Dispatch — in progress (issue 4): the pure domain only so far.
//!
//! Will own the `DISPATCH` stream (subjects `dispatch.case.<incident id>`). Built:
//! the case aggregate — the ladder (grid → community → street → department),
//! exactly one owner, hand-back only before acknowledging, reassignment that
//! refuses a stale view, the street's whistle and departments reporting for duty,
//! emergencies summoning several departments at once, deadlines as state with
//! idempotent escalation and SLA breaches, resolution, rating and reopening — and
//! the working-day calendar. Not built yet: the process manager consuming
//! `IncidentAccepted`, routing rules, the deadline scheduler, the read models and
//! the gRPC API. See the issue note.

pub mod domain;
pub mod events;
pub mod projection;
