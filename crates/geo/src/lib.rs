//! Shared geography of the organisation tree: its levels, validated GeoJSON
//! boundaries and the point → path index.
//!
//! - [`kind`]: the levels (district … micro-grid) and their rules.
//! - [`geometry`]: GeoJSON polygons parsed and validated; containment and overlap.
//! - [`locate`]: an R-tree over boundaries answering which units contain a point.
//!
//! Used by the grid registry (which owns the tree) and by every context that
//! places things from its own read model of the `GRID` stream (intake, stations).
//! Must not depend on: the event store, any service, IO of any kind.

pub mod geometry;
pub mod kind;
pub mod locate;

pub use geometry::{Boundary, polygon_geojson};
pub use kind::Kind;
pub use locate::{IndexedUnit, LocateIndex, UnitRow, UnitShape};
