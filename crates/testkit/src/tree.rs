//! A small organisation tree registered through the grid registry's API, for
//! tests of anything that places things on it.
//!
//! District `d` > street `s` > community `c` (all 4 × 4 cells) > grid `g` (2 × 2) >
//! micro-grids `m1` (cell 0,0) and `m2` (cell 1,0); a cell is [`STEP`] degrees
//! (~450 m) from ([`X0`], [`Y0`]).

use gridwork_proto::gridwork::grid::v1 as pb;
use gridwork_proto::gridwork::grid::v1::grid_registry_service_client::GridRegistryServiceClient;

/// West edge of the test district.
pub const X0: f64 = 115.03;
/// South edge of the test district.
pub const Y0: f64 = 35.76;
/// One cell, in degrees.
pub const STEP: f64 = 0.005;

/// GeoJSON for the rectangle of cells `(x, y)`, `w` × `h`.
pub fn cells(x: f64, y: f64, w: f64, h: f64) -> String {
    let (x, y, w, h) = (X0 + x * STEP, Y0 + y * STEP, w * STEP, h * STEP);
    let ring = [[x, y], [x + w, y], [x + w, y + h], [x, y + h], [x, y]];
    format!(r#"{{"type":"Polygon","coordinates":[{}]}}"#, serde_ring(&ring))
}

fn serde_ring(ring: &[[f64; 2]]) -> String {
    let points: Vec<String> = ring.iter().map(|[a, b]| format!("[{a},{b}]")).collect();
    format!("[{}]", points.join(","))
}

/// Register the tree and appoint grid g's head; returns the `GRID` position of
/// the last write.
pub async fn register(client: &mut GridRegistryServiceClient<crate::auth::Authed>) -> anyhow::Result<u64> {
    use pb::UnitKind::*;
    let mut last = 0;
    for (id, parent, kind, boundary) in [
        ("d", "", District, cells(0.0, 0.0, 4.0, 4.0)),
        ("s", "d", Street, cells(0.0, 0.0, 4.0, 4.0)),
        ("c", "s", Community, cells(0.0, 0.0, 4.0, 4.0)),
        ("g", "c", Grid, cells(0.0, 0.0, 2.0, 2.0)),
        ("m1", "g", MicroGrid, cells(0.0, 0.0, 1.0, 1.0)),
        ("m2", "g", MicroGrid, cells(1.0, 0.0, 1.0, 1.0)),
    ] {
        let request = pb::RegisterUnitRequest {
            command_id: uuid::Uuid::now_v7().to_string(),
            unit_id: id.into(),
            parent_id: parent.into(),
            kind: kind as i32,
            name: id.into(),
            boundary_geojson: boundary,
            special_site: 0,
        };
        last = client.register_unit(request).await?.into_inner().position.map_or(0, |p| p.sequence);
    }
    // Grid g has a certified head, so cases routed to it stay there.
    let head = pb::AppointHeadRequest {
        command_id: uuid::Uuid::now_v7().to_string(),
        unit_id: "g".into(),
        person_id: "p-head-g".into(),
        name: "Head of g".into(),
        certificate: Some(pb::Certificate {
            number: "GH-0001".into(),
            issuer: "district".into(),
            expires_on: "2099-12-31".into(),
        }),
        replacing_reason: String::new(),
    };
    last = client.appoint_head(head).await?.into_inner().position.map_or(last, |p| p.sequence);
    Ok(last)
}
