//! `make bench` (grid registry): Locate latency with 450,000 micro-grids loaded,
//! and the time to load them (GeoJSON parse + validation, then the R-tree).
//!
//! Environment: BENCH_MICRO_GRIDS (default 450_000), BENCH_LOOKUPS (default 200_000).

use std::time::Instant;

use gridwork_demo::{Lattice, Layout};
use gridwork_geo::Kind;
use gridwork_geo::locate::{LocateIndex, UnitShape};
use gridwork_geo::{Boundary, polygon_geojson};
use hdrhistogram::Histogram;
use rand::Rng as _;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let micro_grids = env("BENCH_MICRO_GRIDS", 450_000);
    let lookups = env("BENCH_LOOKUPS", 200_000);
    // Grids of 2×3 micro-grids on a lattice about 5:4.
    let grids_x = ((micro_grids as f64 / 6.0 * 1.25).sqrt()).round() as usize;
    let grids_y = (micro_grids / 6).div_ceil(grids_x);
    let (w, h) = (grids_x * 2, grids_y * 3);
    let layout = Layout::default();
    let lattice = Lattice::new(layout, w, h);

    let started = Instant::now();
    let mut texts = Vec::with_capacity(grids_x * grids_y * 7);
    for gx in 0..grids_x {
        for gy in 0..grids_y {
            let grid = format!("g{gx}-{gy}");
            let (i, j) = (gx * 2, gy * 3);
            texts.push((grid.clone(), String::new(), Kind::Grid, polygon_geojson(&lattice.block(i, j, i + 2, j + 3))));
            for mx in 0..2 {
                for my in 0..3 {
                    let ring = lattice.block(i + mx, j + my, i + mx + 1, j + my + 1);
                    texts.push((format!("{grid}-m{mx}{my}"), grid.clone(), Kind::MicroGrid, polygon_geojson(&ring)));
                }
            }
        }
    }
    let generated = started.elapsed();
    let started = Instant::now();
    let shapes: Vec<UnitShape> = texts
        .into_iter()
        .map(|(id, parent_id, kind, geojson)| UnitShape {
            name: id.clone(),
            id,
            parent_id,
            kind,
            boundary: Boundary::parse(&geojson).expect("valid"),
        })
        .collect();
    let parsed = started.elapsed();
    let started = Instant::now();
    let index = LocateIndex::build(shapes, 1);
    let built = started.elapsed();
    let loaded_micro = grids_x * grids_y * 6;

    let (ox, oy) = layout.origin;
    let (dx, dy) = layout.cell;
    let mut rng = rand::rng();
    let points: Vec<(f64, f64)> = (0..lookups)
        .map(|_| (ox + rng.random_range(0.0..w as f64) * dx, oy + rng.random_range(0.0..h as f64) * dy))
        .collect();
    // Warm up, then time each lookup.
    let mut found = 0usize;
    for &(x, y) in points.iter().take(10_000) {
        found += index.locate(x, y).len();
    }
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut deepest = 0usize;
    let all = Instant::now();
    for &(x, y) in &points {
        let t = Instant::now();
        let path = index.locate(x, y);
        let ns = t.elapsed().as_nanos() as u64;
        hist.record(ns.max(1)).expect("record");
        if path.last().is_some_and(|u| u.kind == Kind::MicroGrid) {
            deepest += 1;
        }
    }
    let total = all.elapsed();
    std::hint::black_box(found);

    println!("\n== Locate (grid registry): {} micro-grids + {} grids loaded ==", loaded_micro, grids_x * grids_y);
    println!(
        "load: generate GeoJSON {:.2} s, parse + validate {:.2} s, build R-tree {:.2} s",
        generated.as_secs_f64(),
        parsed.as_secs_f64(),
        built.as_secs_f64()
    );
    println!(
        "locate p50 {:.1} µs  p99 {:.1} µs  max {:.1} µs  ({} lookups, {:.0}/s single-threaded; {:.1}% resolved to a micro-grid)   (target p99 <= 50 µs)",
        hist.value_at_quantile(0.5) as f64 / 1000.0,
        hist.value_at_quantile(0.99) as f64 / 1000.0,
        hist.max() as f64 / 1000.0,
        lookups,
        lookups as f64 / total.as_secs_f64(),
        deepest as f64 * 100.0 / lookups as f64
    );
}
