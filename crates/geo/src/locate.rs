//! Point → path lookup: an R-tree over every unit's bounding box, refined by an
//! exact point-in-polygon test (edges inclusive).
//!
//! The index is built from the read model and refreshed incrementally: rows whose
//! `position` is newer than the index's are re-read, so a redrawn boundary is seen
//! as soon as its commit is projected.

use std::collections::HashMap;

use geo::{BoundingRect as _, Intersects as _, Point, Polygon};
use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{AABB, RTree};

use crate::Kind;
use crate::geometry::Boundary;

type Entry = GeomWithData<Rectangle<[f64; 2]>, u32>;

/// One indexed unit.
#[derive(Debug, Clone)]
pub struct IndexedUnit {
    /// Id.
    pub id: String,
    /// Parent id ("" for districts).
    pub parent_id: String,
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    polygon: Polygon<f64>,
    rect: Option<Rectangle<[f64; 2]>>,
}

impl IndexedUnit {
    /// A point guaranteed to lie inside the unit (lon, lat), for things placed
    /// by address rather than by coordinates.
    pub fn interior_point(&self) -> Option<(f64, f64)> {
        use geo::InteriorPoint as _;
        self.polygon.interior_point().map(|p| (p.x(), p.y()))
    }
}

/// A unit as loaded from the read model.
#[derive(Debug, Clone)]
pub struct UnitShape {
    /// Id.
    pub id: String,
    /// Parent id.
    pub parent_id: String,
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Boundary.
    pub boundary: Boundary,
}

/// A unit as a read model stores it: id, parent id, kind (proto number), name,
/// boundary GeoJSON, position of its last change.
pub type UnitRow = (String, String, i64, String, String, i64);

/// The spatial index.
#[derive(Default)]
pub struct LocateIndex {
    tree: RTree<Entry>,
    units: Vec<IndexedUnit>,
    by_id: HashMap<String, u32>,
    /// Stream position the index reflects.
    pub position: u64,
}

fn rect_of(p: &Polygon<f64>) -> Option<Rectangle<[f64; 2]>> {
    p.bounding_rect().map(|r| Rectangle::from_corners([r.min().x, r.min().y], [r.max().x, r.max().y]))
}

impl LocateIndex {
    /// Build from many units at once (bulk-loaded R-tree).
    pub fn build(shapes: impl IntoIterator<Item = UnitShape>, position: u64) -> Self {
        let mut index = LocateIndex { position, ..Default::default() };
        let mut entries = Vec::new();
        for s in shapes {
            if let Some(entry) = index.push(s) {
                entries.push(entry);
            }
        }
        index.tree = RTree::bulk_load(entries);
        index
    }

    /// Append a unit not yet indexed; its R-tree entry is returned, not inserted.
    fn push(&mut self, s: UnitShape) -> Option<Entry> {
        let i = self.units.len() as u32;
        let rect = rect_of(&s.boundary.polygon);
        self.by_id.insert(s.id.clone(), i);
        self.units.push(IndexedUnit {
            id: s.id,
            parent_id: s.parent_id,
            kind: s.kind,
            name: s.name,
            polygon: s.boundary.polygon,
            rect,
        });
        rect.map(|r| GeomWithData::new(r, i))
    }

    /// Apply the read model's rows changed since [`LocateIndex::position`]
    /// (`(id, parent id, kind as a proto number, name, GeoJSON, position)`), and
    /// move the position to at least `target`. The first call builds the R-tree in
    /// bulk; later ones upsert. Rows whose stored boundary cannot be read are
    /// skipped and returned with the reason, for the caller to log.
    pub fn apply_rows(&mut self, rows: Vec<UnitRow>, target: u64) -> Vec<(String, String)> {
        let mut newest = target.max(self.position);
        let mut shapes = Vec::with_capacity(rows.len());
        let mut unreadable = Vec::new();
        for (id, parent_id, kind, name, geojson, position) in rows {
            newest = newest.max(position as u64);
            let kind = gridwork_proto::gridwork::grid::v1::UnitKind::try_from(kind as i32)
                .ok()
                .and_then(Kind::from_proto)
                .unwrap_or(Kind::Grid);
            match Boundary::parse(&geojson) {
                Ok(boundary) => shapes.push(UnitShape { id, parent_id, kind, name, boundary }),
                Err(e) => unreadable.push((id, e)),
            }
        }
        if self.is_empty() {
            *self = LocateIndex::build(shapes, newest);
        } else {
            for s in shapes {
                self.upsert(s);
            }
            self.position = newest;
        }
        unreadable
    }

    /// Insert or replace one unit.
    pub fn upsert(&mut self, s: UnitShape) {
        let rect = rect_of(&s.boundary.polygon);
        match self.by_id.get(&s.id).copied() {
            Some(i) => {
                let unit = &mut self.units[i as usize];
                if let Some(old) = unit.rect.take() {
                    self.tree.remove(&GeomWithData::new(old, i));
                }
                unit.polygon = s.boundary.polygon;
                unit.name = s.name;
                unit.rect = rect;
                if let Some(r) = rect {
                    self.tree.insert(GeomWithData::new(r, i));
                }
            }
            None => {
                if let Some(entry) = self.push(s) {
                    self.tree.insert(entry);
                }
            }
        }
    }

    /// The path from district down to unit `id` (empty if unknown).
    pub fn path_to(&self, id: &str) -> Vec<&IndexedUnit> {
        let mut path = Vec::new();
        let mut current = self.by_id.get(id).map(|&i| &self.units[i as usize]);
        while let Some(unit) = current {
            path.push(unit);
            current = self.by_id.get(&unit.parent_id).map(|&i| &self.units[i as usize]);
        }
        path.reverse();
        path
    }

    /// Number of units indexed.
    pub fn len(&self) -> usize {
        self.units.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.units.is_empty()
    }

    /// The path from district down to the deepest unit whose boundary contains
    /// (or has on its edge) the point. On a shared edge the unit with the smaller
    /// id wins, so the answer is deterministic.
    pub fn locate(&self, lon: f64, lat: f64) -> Vec<&IndexedUnit> {
        let point = Point::new(lon, lat);
        let deepest = self
            .tree
            .locate_in_envelope_intersecting(&AABB::from_point([lon, lat]))
            .map(|e| &self.units[e.data as usize])
            .filter(|u| u.polygon.intersects(&point))
            .max_by(|a, b| a.kind.depth().cmp(&b.kind.depth()).then_with(|| b.id.cmp(&a.id)));
        deepest.map_or_else(Vec::new, |unit| self.path_to(&unit.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geometry::polygon_geojson;

    fn shape(id: &str, parent: &str, kind: Kind, x: f64, y: f64, size: f64) -> UnitShape {
        UnitShape {
            id: id.into(),
            parent_id: parent.into(),
            kind,
            name: id.into(),
            boundary: Boundary::parse(&polygon_geojson(&[(x, y), (x + size, y), (x + size, y + size), (x, y + size)]))
                .expect("valid"),
        }
    }

    fn ids(path: Vec<&IndexedUnit>) -> Vec<String> {
        path.into_iter().map(|u| u.id.clone()).collect()
    }

    #[test]
    fn a_point_resolves_to_its_full_path_inside_on_the_edge_and_outside() {
        let index = LocateIndex::build(
            [
                shape("d", "", Kind::District, 0.0, 0.0, 4.0),
                shape("g", "d", Kind::Grid, 0.0, 0.0, 2.0),
                shape("m1", "g", Kind::MicroGrid, 0.0, 0.0, 1.0),
                shape("m2", "g", Kind::MicroGrid, 1.0, 0.0, 1.0),
            ],
            1,
        );
        assert_eq!(ids(index.locate(0.5, 0.5)), ["d", "g", "m1"]);
        assert_eq!(ids(index.locate(1.5, 0.5)), ["d", "g", "m2"]);
        assert_eq!(ids(index.locate(1.0, 0.5)), ["d", "g", "m1"], "shared edge: smaller id");
        assert_eq!(ids(index.locate(1.5, 1.5)), ["d", "g"], "inside the grid, in no micro-grid");
        assert_eq!(ids(index.locate(3.0, 3.0)), ["d"]);
        assert!(index.locate(9.0, 9.0).is_empty(), "outside everything");
    }

    #[test]
    fn a_redrawn_boundary_moves_the_answer() {
        let mut index = LocateIndex::build(
            [shape("d", "", Kind::District, 0.0, 0.0, 4.0), shape("m", "d", Kind::MicroGrid, 0.0, 0.0, 1.0)],
            1,
        );
        assert_eq!(ids(index.locate(2.5, 2.5)), ["d"]);
        index.upsert(shape("m", "d", Kind::MicroGrid, 2.0, 2.0, 1.0));
        assert_eq!(ids(index.locate(2.5, 2.5)), ["d", "m"]);
        assert_eq!(ids(index.locate(0.5, 0.5)), ["d"]);
    }
}
