//! Incident intake — IN PROGRESS (issue 4): the pure domain only so far.
//!
//! Will own the `INTAKE` stream (subjects `intake.incident.<id>`,
//! `intake.catalogue.<city>`). Built: the versioned service catalogue with typed
//! attribute validation (`domain/catalogue.rs`) and the incident aggregate with
//! triage, claims, emergencies and "me too" linking (`domain/incident.rs`), tested
//! given/when/then. Not built yet: the gRPC API, placement from a local read model
//! of `GRID`, duplicate detection by radius and window, the erasable contact store,
//! the read model and queries. See the issue note.

pub mod app;
pub mod domain;
pub mod events;
pub mod projection;
