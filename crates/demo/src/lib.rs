//! A demo district shaped like DOMAIN.md's figures (Huolong district of Puyang:
//! 696 grids, 3,984 micro-grids): one district, 7 streets, 35 communities, 700
//! grids (some of them special grids for a mall, school, hospital or enterprise),
//! 4,200 micro-grids.
//!
//! Boundaries come from one jittered lattice: every micro-grid is a lattice cell,
//! every grid a 2×3 block of cells, every community 4×5 grids, every street a
//! column of communities. Neighbours share the very same vertices, so siblings
//! touch without overlapping and every child lies exactly inside its parent, and
//! the shapes look drawn rather than ruled. Pure and deterministic: the same seed
//! gives the same district.
//!
//! Its staff ([`staff`]) are dated relative to the day the demo is seeded, so
//! the demo never ages out: certificates run one to two years from today, one
//! head in forty has a certificate running out within three weeks, and one
//! staffed unit in ninety-seven has never had a head appointed (vacant).

use gridwork_geo::Kind;
use gridwork_geo::polygon_geojson;
use time::{Date, Duration};

/// Shape of a generated district.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    /// Streets (columns of communities).
    pub streets: usize,
    /// Communities per street.
    pub communities_per_street: usize,
    /// Grids across a community.
    pub community_grids_x: usize,
    /// Grids down a community.
    pub community_grids_y: usize,
    /// Micro-grids across a grid.
    pub grid_cells_x: usize,
    /// Micro-grids down a grid.
    pub grid_cells_y: usize,
    /// South-west corner (lon, lat).
    pub origin: (f64, f64),
    /// Cell size in degrees (lon, lat): ~100 m × 100 m by default.
    pub cell: (f64, f64),
    /// Deterministic seed for the jitter and the figures.
    pub seed: u64,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            streets: 7,
            communities_per_street: 5,
            community_grids_x: 4,
            community_grids_y: 5,
            grid_cells_x: 2,
            grid_cells_y: 3,
            origin: (115.0, 35.72),
            cell: (0.0011, 0.0009),
            seed: 2024,
        }
    }
}

/// One unit to register, parent first.
#[derive(Debug, Clone)]
pub struct DemoUnit {
    /// Id.
    pub id: String,
    /// Parent id ("" for the district).
    pub parent_id: String,
    /// Kind.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Boundary, GeoJSON.
    pub boundary_geojson: String,
    /// Household count (grids and micro-grids).
    pub households: Option<u32>,
    /// Site number for special grids (1 mall, 2 school, 3 hospital, 4 enterprise).
    pub special_site: i32,
}

/// A small deterministic hash → [0, 1).
fn unit_random(seed: u64, a: u64, b: u64) -> f64 {
    let mut x = seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 33;
    x = x.wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    x ^= x >> 33;
    x = x.wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    x ^= x >> 33;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The jittered lattice all boundaries are walked on.
pub struct Lattice {
    layout: Layout,
    /// Cells across.
    pub width: usize,
    /// Cells down.
    pub height: usize,
}

impl Lattice {
    /// A lattice of `width` × `height` cells.
    pub fn new(layout: Layout, width: usize, height: usize) -> Self {
        Self { layout, width, height }
    }

    /// Vertex (i, j), jittered by up to a fifth of a cell (border vertices too:
    /// the district's own edge is drawn, not ruled).
    pub fn vertex(&self, i: usize, j: usize) -> (f64, f64) {
        let (ox, oy) = self.layout.origin;
        let (dx, dy) = self.layout.cell;
        let jx = (unit_random(self.layout.seed, i as u64, j as u64) - 0.5) * 0.4 * dx;
        let jy = (unit_random(self.layout.seed ^ 0xABCD, i as u64, j as u64) - 0.5) * 0.4 * dy;
        (ox + i as f64 * dx + jx, oy + j as f64 * dy + jy)
    }

    /// The ring around cells `[i0, i1) × [j0, j1)`, counter-clockwise.
    pub fn block(&self, i0: usize, j0: usize, i1: usize, j1: usize) -> Vec<(f64, f64)> {
        let mut ring = Vec::with_capacity(2 * (i1 - i0 + j1 - j0) + 1);
        ring.extend((i0..i1).map(|i| self.vertex(i, j0)));
        ring.extend((j0..j1).map(|j| self.vertex(i1, j)));
        ring.extend((i0 + 1..=i1).rev().map(|i| self.vertex(i, j1)));
        ring.extend((j0 + 1..=j1).rev().map(|j| self.vertex(i0, j)));
        ring.push(ring[0]);
        ring
    }
}

/// The demo district, parents before children.
pub fn district(layout: Layout) -> Vec<DemoUnit> {
    let (gx, gy) = (layout.grid_cells_x, layout.grid_cells_y);
    let (cx, cy) = (layout.community_grids_x * gx, layout.community_grids_y * gy);
    let lattice = Lattice::new(layout, layout.streets * cx, layout.communities_per_street * cy);
    let geo = |i0, j0, i1, j1| polygon_geojson(&lattice.block(i0, j0, i1, j1));
    let mut units = vec![DemoUnit {
        id: "hl".into(),
        parent_id: String::new(),
        kind: Kind::District,
        name: "华龙区 Huolong District".into(),
        boundary_geojson: geo(0, 0, lattice.width, lattice.height),
        households: None,
        special_site: 0,
    }];
    let mut grid_number = 0u64;
    for s in 0..layout.streets {
        let street = format!("hl-s{s}");
        units.push(DemoUnit {
            id: street.clone(),
            parent_id: "hl".into(),
            kind: Kind::Street,
            name: format!("{}街道 Street {}", ["中原", "人民", "胜利", "建设", "黄河", "昆吾", "长庆"][s % 7], s + 1),
            boundary_geojson: geo(s * cx, 0, (s + 1) * cx, lattice.height),
            households: None,
            special_site: 0,
        });
        for c in 0..layout.communities_per_street {
            let community = format!("{street}-c{c}");
            let (ci, cj) = (s * cx, c * cy);
            units.push(DemoUnit {
                id: community.clone(),
                parent_id: street.clone(),
                kind: Kind::Community,
                name: format!("{}社区 Community {}-{}", ["绿城", "濮上", "开州", "石化", "大庆"][c % 5], s + 1, c + 1),
                boundary_geojson: geo(ci, cj, ci + cx, cj + cy),
                households: None,
                special_site: 0,
            });
            for x in 0..layout.community_grids_x {
                for y in 0..layout.community_grids_y {
                    grid_number += 1;
                    let grid = format!("{community}-g{x}{y}");
                    let (i, j) = (ci + x * gx, cj + y * gy);
                    let special = grid_number.is_multiple_of(47);
                    let r = unit_random(layout.seed, grid_number, 7);
                    // Most grids within 300-500 households; a few outside the band.
                    let households = if r < 0.04 {
                        280 + (r * 400.0) as u32
                    } else if r > 0.97 {
                        510 + (r * 30.0) as u32
                    } else {
                        300 + (r * 200.0) as u32
                    };
                    units.push(DemoUnit {
                        id: grid.clone(),
                        parent_id: community.clone(),
                        kind: if special { Kind::SpecialGrid } else { Kind::Grid },
                        name: if special {
                            format!("专属网格 Special grid {grid_number}")
                        } else {
                            format!("第{grid_number}网格 Grid {grid_number}")
                        },
                        boundary_geojson: geo(i, j, i + gx, j + gy),
                        households: Some(households),
                        special_site: if special { (grid_number / 47 % 4 + 1) as i32 } else { 0 },
                    });
                    for mx in 0..gx {
                        for my in 0..gy {
                            let r = unit_random(layout.seed, grid_number, (mx * 10 + my) as u64);
                            units.push(DemoUnit {
                                id: format!("{grid}-m{mx}{my}"),
                                parent_id: grid.clone(),
                                kind: Kind::MicroGrid,
                                name: format!("微网格 Micro-grid {grid_number}-{}", mx * gy + my + 1),
                                boundary_geojson: geo(i + mx, j + my, i + mx + 1, j + my + 1),
                                households: Some(50 + (r * 21.0) as u32),
                                special_site: 0,
                            });
                        }
                    }
                }
            }
        }
    }
    units
}

/// How a demo worker serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DemoRole {
    /// Full-time grid worker.
    FullTime,
    /// Delivery rider enrolled as an informant.
    RiderInformant,
    /// Retired party member.
    RetiredPartyMember,
}

/// A demo grid head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoHead {
    /// Person id.
    pub person_id: String,
    /// Name.
    pub name: String,
    /// Certificate number.
    pub certificate_number: String,
    /// Issuer.
    pub issuer: String,
    /// Certificate's last valid day.
    pub expires_on: Date,
}

/// A demo worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoWorker {
    /// Person id.
    pub person_id: String,
    /// Name.
    pub name: String,
    /// Role.
    pub role: DemoRole,
}

/// A staffed unit's demo staff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoStaff {
    /// The head; none for a vacant unit.
    pub head: Option<DemoHead>,
    /// Party branch name and secretary (grids and special grids).
    pub party_branch: Option<(String, String)>,
    /// Workers (grids and special grids).
    pub workers: Vec<DemoWorker>,
}

/// The staff of `unit` when the demo is seeded on `today` (city time); `None`
/// for a level without staff.
pub fn staff(unit: &DemoUnit, today: Date) -> Option<DemoStaff> {
    if !unit.kind.has_staff() {
        return None;
    }
    let n = unit.id.bytes().fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(b)));
    let surnames = ["王", "李", "张", "刘", "陈", "杨", "赵", "黄", "周", "吴"];
    let head_name =
        format!("{}{}", surnames[(n % 10) as usize], ["建国", "秀英", "伟", "芳", "军", "静"][(n / 10 % 6) as usize]);
    // One to two years from today; one in forty within three weeks.
    let days = if n % 40 == 0 { 20 } else { 365 + i64::from(n % 365) };
    let head = (n % 97 != 0).then(|| DemoHead {
        person_id: format!("p-{}", unit.id),
        name: head_name.clone(),
        certificate_number: format!("HL-{:06}", n % 1_000_000),
        issuer: "华龙区社会工作部".into(),
        expires_on: today.saturating_add(Duration::days(days)),
    });
    if unit.kind == Kind::MicroGrid {
        return Some(DemoStaff { head, party_branch: None, workers: vec![] });
    }
    let mut workers =
        vec![DemoWorker {
            person_id: format!("w-{}-1", unit.id), name: "专职网格员".into(), role: DemoRole::FullTime
        }];
    if n % 3 == 0 {
        workers.push(DemoWorker {
            person_id: format!("r-{}-1", unit.id),
            name: "外卖骑手 rider".into(),
            role: DemoRole::RiderInformant,
        });
    }
    if n % 4 == 0 {
        workers.push(DemoWorker {
            person_id: format!("v-{}-1", unit.id),
            name: "退休党员".into(),
            role: DemoRole::RetiredPartyMember,
        });
    }
    Some(DemoStaff { head, party_branch: Some((format!("{}党支部", unit.name), head_name)), workers })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridwork_geo::Boundary;
    use time::macros::date;

    #[test]
    fn demo_staff_is_dated_from_the_seeding_day_and_never_ages_out() {
        let units = district(Layout::default());
        for today in [date!(2026 - 11 - 24), date!(2027 - 01 - 01), date!(2031 - 06 - 30)] {
            let heads: Vec<DemoHead> = units.iter().filter_map(|u| staff(u, today)).filter_map(|s| s.head).collect();
            assert!(heads.iter().all(|h| h.expires_on > today), "every certificate valid on {today}");
            let soon = heads.iter().filter(|h| h.expires_on <= today + Duration::days(30)).count();
            let staffed = units.iter().filter(|u| u.kind.has_staff()).count();
            assert!(soon > 0 && soon < heads.len() / 10, "a few certificates run out within a month: {soon}");
            assert!(heads.len() < staffed && heads.len() > staffed * 95 / 100, "a few units are vacant");
        }
    }

    #[test]
    fn the_demo_district_has_the_articles_proportions() {
        let units = district(Layout::default());
        let count = |k: Kind| units.iter().filter(|u| u.kind == k).count();
        assert_eq!(count(Kind::District), 1);
        assert_eq!(count(Kind::Street), 7);
        assert_eq!(count(Kind::Community), 35);
        assert_eq!(count(Kind::Grid) + count(Kind::SpecialGrid), 700);
        assert!(count(Kind::SpecialGrid) >= 10);
        assert_eq!(count(Kind::MicroGrid), 4200);
    }

    #[test]
    fn demo_boundaries_are_valid_nest_and_do_not_overlap() {
        let layout = Layout {
            streets: 1,
            communities_per_street: 1,
            community_grids_x: 2,
            community_grids_y: 2,
            ..Layout::default()
        };
        let units = district(layout);
        let parsed: Vec<_> =
            units.iter().map(|u| Boundary::parse(&u.boundary_geojson).expect("valid boundary")).collect();
        for (a, ua) in units.iter().enumerate() {
            if let Some(p) = units.iter().position(|u| u.id == ua.parent_id) {
                assert!(parsed[p].covers(&parsed[a]), "{} inside {}", ua.id, ua.parent_id);
            }
            for (b, ub) in units.iter().enumerate().skip(a + 1) {
                if ua.parent_id == ub.parent_id {
                    assert!(!parsed[a].overlaps_area(&parsed[b]), "{} and {} overlap", ua.id, ub.id);
                }
            }
        }
    }
}
