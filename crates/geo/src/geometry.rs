//! Boundaries: GeoJSON polygons parsed into `geo` polygons, validated, and the
//! spatial rules between them (containment, sibling overlap).

use geo::{Coord, LineString, Polygon, Relate as _, Validation as _};

/// A parsed, valid boundary with its GeoJSON text kept for storage.
#[derive(Debug, Clone, PartialEq)]
pub struct Boundary {
    /// The original GeoJSON text, normalised (whitespace-free).
    pub geojson: String,
    /// The polygon, lon/lat.
    pub polygon: Polygon<f64>,
}

impl Boundary {
    /// Parse and validate a GeoJSON Polygon: closed rings of at least four
    /// positions, lon in -180..180 and lat in -90..90, and a valid geometry (no
    /// self-intersections, holes inside the shell).
    pub fn parse(geojson: &str) -> Result<Self, String> {
        let value: serde_json::Value = serde_json::from_str(geojson).map_err(|e| format!("is not JSON: {e}"))?;
        if value.get("type").and_then(|t| t.as_str()) != Some("Polygon") {
            return Err("must be a GeoJSON object with \"type\": \"Polygon\"".into());
        }
        let rings = value
            .get("coordinates")
            .and_then(|c| c.as_array())
            .ok_or("must have \"coordinates\": an array of linear rings")?;
        if rings.is_empty() {
            return Err("must have at least one ring".into());
        }
        let mut parsed = Vec::with_capacity(rings.len());
        for (r, ring) in rings.iter().enumerate() {
            let positions = ring.as_array().ok_or(format!("ring {r} is not an array"))?;
            if positions.len() < 4 {
                return Err(format!("ring {r} has {} positions; a closed ring needs at least 4", positions.len()));
            }
            let mut coords = Vec::with_capacity(positions.len());
            for (i, p) in positions.iter().enumerate() {
                let pair =
                    p.as_array().filter(|a| a.len() >= 2).ok_or(format!("ring {r} position {i} is not [lon, lat]"))?;
                let (lon, lat) = (pair[0].as_f64(), pair[1].as_f64());
                let (Some(lon), Some(lat)) = (lon, lat) else {
                    return Err(format!("ring {r} position {i} is not numeric"));
                };
                if !(-180.0..=180.0).contains(&lon) || !(-90.0..=90.0).contains(&lat) {
                    return Err(format!("ring {r} position {i} ({lon}, {lat}) is outside lon -180..180 / lat -90..90"));
                }
                coords.push(Coord { x: lon, y: lat });
            }
            if coords.first() != coords.last() {
                return Err(format!("ring {r} is not closed: its first and last positions differ"));
            }
            parsed.push(LineString::from(coords));
        }
        let exterior = parsed.remove(0);
        let polygon = Polygon::new(exterior, parsed);
        if let Err(e) = polygon.check_validation() {
            return Err(format!("is not a valid polygon: {e}"));
        }
        Ok(Self { geojson: value.to_string(), polygon })
    }

    /// True when `other` lies inside this boundary (its edge may run along ours).
    pub fn covers(&self, other: &Boundary) -> bool {
        self.polygon.relate(&other.polygon).is_covers()
    }

    /// True when the interiors intersect: sharing an edge or a corner is fine,
    /// sharing area is not.
    pub fn overlaps_area(&self, other: &Boundary) -> bool {
        let m = self.polygon.relate(&other.polygon);
        m.is_intersects() && !m.is_touches()
    }
}

/// GeoJSON for a polygon given as a closed or open list of (lon, lat).
pub fn polygon_geojson(points: &[(f64, f64)]) -> String {
    let mut ring: Vec<[f64; 2]> = points.iter().map(|&(x, y)| [x, y]).collect();
    if let Some(&first) = ring.first()
        && ring.last() != Some(&first)
    {
        ring.push(first);
    }
    serde_json::json!({ "type": "Polygon", "coordinates": [ring] }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x: f64, y: f64, size: f64) -> Boundary {
        Boundary::parse(&polygon_geojson(&[(x, y), (x + size, y), (x + size, y + size), (x, y + size)])).expect("valid")
    }

    #[test]
    fn a_valid_polygon_parses() {
        let b = square(114.0, 35.0, 0.01);
        assert_eq!(b.polygon.exterior().0.len(), 5);
    }

    #[test]
    fn an_open_ring_is_refused() {
        let e = Boundary::parse(r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[1,1],[0,1]]]}"#).expect_err("open");
        assert!(e.contains("not closed"), "{e}");
    }

    #[test]
    fn a_self_intersecting_bow_tie_is_refused() {
        let e = Boundary::parse(r#"{"type":"Polygon","coordinates":[[[0,0],[1,1],[1,0],[0,1],[0,0]]]}"#)
            .expect_err("bow tie");
        assert!(e.contains("not a valid polygon"), "{e}");
    }

    #[test]
    fn other_geometry_types_and_bad_coordinates_are_refused() {
        assert!(Boundary::parse(r#"{"type":"Point","coordinates":[0,0]}"#).is_err());
        assert!(Boundary::parse(r#"{"type":"Polygon","coordinates":[[[0,0],[200,0],[1,1],[0,0]]]}"#).is_err());
        assert!(Boundary::parse(r#"{"type":"Polygon","coordinates":[[[0,0],[1,0],[0,0]]]}"#).is_err());
        assert!(Boundary::parse("not json").is_err());
        assert!(Boundary::parse(r#"{"type":"Polygon","coordinates":[]}"#).is_err());
    }

    #[test]
    fn neighbours_sharing_an_edge_do_not_overlap_but_shifted_ones_do() {
        let a = square(0.0, 0.0, 1.0);
        assert!(!a.overlaps_area(&square(1.0, 0.0, 1.0)), "shared edge");
        assert!(!a.overlaps_area(&square(1.0, 1.0, 1.0)), "shared corner");
        assert!(a.overlaps_area(&square(0.5, 0.5, 1.0)), "shared area");
        assert!(!a.overlaps_area(&square(3.0, 3.0, 1.0)), "apart");
    }

    #[test]
    fn a_parent_covers_children_on_its_edge_but_not_outside_it() {
        let parent = square(0.0, 0.0, 2.0);
        assert!(parent.covers(&square(0.0, 0.0, 1.0)), "child along the edge");
        assert!(parent.covers(&parent.clone()), "identical");
        assert!(!parent.covers(&square(1.5, 1.5, 1.0)), "sticks out");
    }
}
