//! Dispatch's own copy of the organisation tree (from `GRID`, the registry's
//! published events, not its code): each unit's parent and kind, and whether a
//! head is in post with a valid certificate. Routing reads it to send a case to
//! the community when its grid has no head (兜底), escalation to find the rung
//! above whoever holds a case now, and the edge to check that an owner a
//! dispatcher names exists and is of the tier named.

use gridwork_eventstore::RecordedCommit;
use gridwork_eventstore::projection::{ApplyError, Projection, TableDef, Tables, UnknownEvents};
use gridwork_proto::gridwork::dispatch::v1 as pb;
use gridwork_proto::gridwork::grid::v1 as grid_pb;
use prost::Message as _;
use sqlx::{AnyConnection, AssertSqlSafe};

/// Units: parent, kind, head in post ('' when vacant) and the last valid day of
/// the head's certificate (YYYY-MM-DD, city time).
pub const UNITS: TableDef = TableDef {
    name: "dispatch_units",
    columns: "(unit_id TEXT PRIMARY KEY, parent_id TEXT NOT NULL, kind BIGINT NOT NULL, head_person TEXT NOT NULL, \
              head_expires_on TEXT NOT NULL, position BIGINT NOT NULL)",
    indexes: &[],
};

/// Projects `GRID` into [`UNITS`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GridCopy;

impl Projection for GridCopy {
    fn name(&self) -> &str {
        "dispatch_grid"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[UNITS]
    }

    /// 2: certificate days normalised to YYYY-MM-DD.
    fn version(&self) -> u32 {
        2
    }

    /// Another context's stream: an event type added there is not this
    /// service's business until it is taught to read it.
    fn unknown_events(&self) -> UnknownEvents {
        UnknownEvents::Skip
    }

    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        let table = tables.name(UNITS.name);
        let unit = match commit.aggregate_id() {
            "root" => "",
            other => other,
        };
        for e in commit.events_at_version(1)? {
            let decode = |err: prost::DecodeError| gridwork_eventstore::DecodeError::new(e.event_type.clone(), err);
            let (sql, binds): (String, Vec<String>) = match e.event_type.as_str() {
                "grid.unit.child_registered" => {
                    let c = grid_pb::ChildRegistered::decode(e.payload.as_slice()).map_err(decode)?;
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {table} (unit_id, parent_id, kind, head_person, head_expires_on, position) \
                         VALUES ($1, $2, $3, '', '', $4)"
                    )))
                    .bind(&c.child_id)
                    .bind(unit)
                    .bind(i64::from(c.kind))
                    .bind(commit.sequence as i64)
                    .execute(&mut *tx)
                    .await?;
                    continue;
                }
                "grid.unit.head_appointed" => {
                    let h =
                        grid_pb::HeadAppointed::decode(e.payload.as_slice()).map_err(decode)?.head.unwrap_or_default();
                    let expires = iso_day(&h.certificate.unwrap_or_default().expires_on);
                    ("head_person = $1, head_expires_on = $2".into(), vec![h.person_id, expires])
                }
                "grid.unit.head_certificate_renewed" => {
                    let r = grid_pb::HeadCertificateRenewed::decode(e.payload.as_slice()).map_err(decode)?;
                    ("head_expires_on = $1".into(), vec![iso_day(&r.certificate.unwrap_or_default().expires_on)])
                }
                "grid.unit.head_vacated" => {
                    grid_pb::HeadVacated::decode(e.payload.as_slice()).map_err(decode)?;
                    ("head_person = '', head_expires_on = ''".into(), vec![])
                }
                // Boundaries, staff, households and party branches route nothing.
                _ => continue,
            };
            let n = binds.len();
            let mut q = sqlx::query(AssertSqlSafe(format!(
                "UPDATE {table} SET {sql}, position = ${} WHERE unit_id = ${}",
                n + 1,
                n + 2
            )));
            for b in binds {
                q = q.bind(b);
            }
            q.bind(commit.sequence as i64).bind(unit).execute(&mut *tx).await?;
        }
        Ok(())
    }
}

/// A day as YYYY-MM-DD, whatever ISO 8601 form the registry kept it in
/// (`20260303` and `2026-062` read as 2026-03-03), so days compare as text;
/// left as given if it is no date at all.
fn iso_day(s: &str) -> String {
    match time::Date::parse(s.trim(), &time::format_description::well_known::Iso8601::DATE) {
        Ok(d) => format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day()),
        Err(_) => s.to_string(),
    }
}

/// A unit as dispatch knows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UnitRow {
    /// Id.
    pub unit_id: String,
    /// Parent id ('' for a district).
    pub parent_id: String,
    /// `gridwork.grid.v1.UnitKind` number.
    pub kind: i64,
    /// Person id of the head in post ('' when vacant).
    pub head_person: String,
    /// Last valid day of the head's certificate.
    pub head_expires_on: String,
}

impl UnitRow {
    /// The dispatch tier this unit is a rung of: a grid (special grids too), a
    /// community or a street. Micro-grids and districts hold no cases.
    pub fn tier(&self) -> Option<pb::Tier> {
        use grid_pb::UnitKind as K;
        match K::try_from(self.kind as i32).unwrap_or(K::Unspecified) {
            K::Grid | K::SpecialGrid => Some(pb::Tier::Grid),
            K::Community => Some(pb::Tier::Community),
            K::Street => Some(pb::Tier::Street),
            _ => None,
        }
    }

    /// Why the unit's head cannot take a case on `today` (YYYY-MM-DD, city
    /// time), if they cannot.
    pub fn no_head(&self, today: &str) -> Option<String> {
        if self.head_person.is_empty() {
            Some(format!("grid {} has no head in post (vacant)", self.unit_id))
        } else if !self.head_expires_on.is_empty() && self.head_expires_on.as_str() < today {
            Some(format!(
                "grid {}'s head {} holds a certificate that expired on {}",
                self.unit_id, self.head_person, self.head_expires_on
            ))
        } else {
            None
        }
    }
}

/// One unit from the live table.
pub async fn unit(conn: &mut AnyConnection, id: &str) -> Result<Option<UnitRow>, sqlx::Error> {
    let table = Tables::Live.name(UNITS.name);
    sqlx::query_as(AssertSqlSafe(format!(
        "SELECT unit_id, parent_id, kind, head_person, head_expires_on FROM {table} WHERE unit_id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

/// Unit `id` and its ancestors up to its district, nearest first, from the
/// copy of the tree; empty for a unit the copy does not know.
pub async fn chain(conn: &mut AnyConnection, id: &str) -> Result<Vec<UnitRow>, sqlx::Error> {
    let mut chain: Vec<UnitRow> = Vec::new();
    let mut at = id.to_string();
    // District > street > community > grid > micro-grid: a few hops; a
    // chain longer than any tree is one that loops, and ends there.
    while chain.len() < 16 {
        let Some(u) = unit(&mut *conn, &at).await? else { break };
        at = u.parent_id.clone();
        chain.push(u);
        if at.is_empty() || chain.iter().any(|c| c.unit_id == at) {
            break;
        }
    }
    Ok(chain)
}

/// The district unit `id` lies in (itself, for a district), by its parents in
/// the copy of the tree; none if the chain breaks off.
pub async fn district_of(conn: &mut AnyConnection, id: &str) -> Result<Option<String>, sqlx::Error> {
    let district = i64::from(gridwork_proto::gridwork::grid::v1::UnitKind::District as i32);
    Ok(chain(conn, id).await?.into_iter().find(|u| u.kind == district).map(|u| u.unit_id))
}

#[cfg(test)]
mod tests {
    #[test]
    fn certificate_days_in_any_iso_form_compare_as_days() {
        assert_eq!(super::iso_day("20260303"), "2026-03-03");
        assert_eq!(super::iso_day("2026-062"), "2026-03-03");
        assert_eq!(super::iso_day("2026-03-03"), "2026-03-03");
        let unit = super::UnitRow {
            unit_id: "g".into(),
            parent_id: "c".into(),
            kind: 4,
            head_person: "p".into(),
            head_expires_on: super::iso_day("20260303"),
        };
        assert!(unit.no_head("2026-03-03").is_none(), "valid on its last day");
        assert!(unit.no_head("2026-03-04").is_some());
    }
}
