//! The levels of the organisation tree (DOMAIN.md): district → street →
//! community → grid / special grid → micro-grid, under the city root.

use gridwork_proto::gridwork::grid::v1 as pb;

/// A level of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// The city root (not a stored unit).
    Root,
    /// District.
    District,
    /// Street.
    Street,
    /// Community.
    Community,
    /// Grid.
    Grid,
    /// Special grid.
    SpecialGrid,
    /// Micro-grid.
    MicroGrid,
}

impl Kind {
    /// From the proto enum; `None` for unspecified.
    pub fn from_proto(k: pb::UnitKind) -> Option<Self> {
        Some(match k {
            pb::UnitKind::Unspecified => return None,
            pb::UnitKind::District => Kind::District,
            pb::UnitKind::Street => Kind::Street,
            pb::UnitKind::Community => Kind::Community,
            pb::UnitKind::Grid => Kind::Grid,
            pb::UnitKind::MicroGrid => Kind::MicroGrid,
            pb::UnitKind::SpecialGrid => Kind::SpecialGrid,
        })
    }

    /// To the proto enum.
    pub fn to_proto(self) -> pb::UnitKind {
        match self {
            Kind::Root => pb::UnitKind::Unspecified,
            Kind::District => pb::UnitKind::District,
            Kind::Street => pb::UnitKind::Street,
            Kind::Community => pb::UnitKind::Community,
            Kind::Grid => pb::UnitKind::Grid,
            Kind::MicroGrid => pb::UnitKind::MicroGrid,
            Kind::SpecialGrid => pb::UnitKind::SpecialGrid,
        }
    }

    /// Depth in the tree (district = 1).
    pub fn depth(self) -> u8 {
        match self {
            Kind::Root => 0,
            Kind::District => 1,
            Kind::Street => 2,
            Kind::Community => 3,
            Kind::Grid | Kind::SpecialGrid => 4,
            Kind::MicroGrid => 5,
        }
    }

    /// Whether `child` may sit directly under this kind.
    pub fn allows_child(self, child: Kind) -> bool {
        matches!(
            (self, child),
            (Kind::Root, Kind::District)
                | (Kind::District, Kind::Street)
                | (Kind::Street, Kind::Community)
                | (Kind::Community, Kind::Grid | Kind::SpecialGrid)
                | (Kind::Grid | Kind::SpecialGrid, Kind::MicroGrid)
        )
    }

    /// Whether the kind has a head, workers and a party organisation.
    pub fn has_staff(self) -> bool {
        matches!(self, Kind::Grid | Kind::SpecialGrid | Kind::MicroGrid)
    }

    /// The standard household band, where there is one.
    pub fn household_band(self) -> Option<(u32, u32)> {
        match self {
            Kind::Grid => Some((300, 500)),
            Kind::MicroGrid => Some((50, 70)),
            _ => None,
        }
    }

    /// Lower-case name for messages.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Root => "city root",
            Kind::District => "district",
            Kind::Street => "street",
            Kind::Community => "community",
            Kind::Grid => "grid",
            Kind::SpecialGrid => "special grid",
            Kind::MicroGrid => "micro-grid",
        }
    }
}
