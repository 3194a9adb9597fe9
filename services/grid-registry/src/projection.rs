//! The registry's read model: `grid_units` (one row per unit), `grid_staff`
//! (every worker membership, current and past) and `grid_head_terms` (every
//! head's term of office, current and past, with how it ended).

use gridwork_eventstore::RecordedCommit;
use gridwork_eventstore::projection::{ApplyError, Projection, TableDef, Tables};
use sqlx::{AnyConnection, AssertSqlSafe};

use gridwork_proto::gridwork::grid::v1 as pb;

use crate::domain::unit::ROOT;
use crate::events::UnitEvent;

/// Units.
pub const UNITS: TableDef = TableDef {
    name: "grid_units",
    columns: "(unit_id TEXT PRIMARY KEY, parent_id TEXT NOT NULL, kind BIGINT NOT NULL, name TEXT NOT NULL, \
              special_site BIGINT NOT NULL, boundary_geojson TEXT NOT NULL, ancestors TEXT NOT NULL, \
              households BIGINT, head_person_id TEXT, head_name TEXT, cert_number TEXT, cert_issuer TEXT, \
              cert_expires_on TEXT, head_appointed_on TEXT, party_name TEXT, party_kind BIGINT, \
              party_secretary TEXT, position BIGINT NOT NULL)",
    indexes: &["parent_id", "name", "position"],
};

/// Staff memberships.
pub const STAFF: TableDef = TableDef {
    name: "grid_staff",
    columns: "(unit_id TEXT NOT NULL, person_id TEXT NOT NULL, name TEXT NOT NULL, role BIGINT NOT NULL, \
              joined_on TEXT NOT NULL, left_on TEXT, dismissal_reason TEXT, joined_position BIGINT NOT NULL, \
              PRIMARY KEY (unit_id, person_id, joined_position))",
    indexes: &["unit_id"],
};

/// Heads' terms of office.
pub const HEAD_TERMS: TableDef = TableDef {
    name: "grid_head_terms",
    columns: "(unit_id TEXT NOT NULL, person_id TEXT NOT NULL, name TEXT NOT NULL, appointed_on TEXT NOT NULL, \
              left_on TEXT, departure BIGINT NOT NULL, note TEXT NOT NULL, cert_number TEXT NOT NULL, \
              cert_issuer TEXT NOT NULL, cert_expires_on TEXT NOT NULL, renewals BIGINT NOT NULL, \
              appointed_position BIGINT NOT NULL, PRIMARY KEY (unit_id, appointed_position))",
    indexes: &["unit_id"],
};

/// Projects the `GRID` stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct Registry;

fn must_touch(result: sqlx::any::AnyQueryResult, what: &str) -> Result<(), ApplyError> {
    if result.rows_affected() == 0 {
        return Err(ApplyError::Invalid(format!("{what}: no such row")));
    }
    Ok(())
}

impl Projection for Registry {
    fn name(&self) -> &str {
        "grid_registry"
    }

    fn tables(&self) -> &'static [TableDef] {
        &[UNITS, STAFF, HEAD_TERMS]
    }

    /// 2: heads' terms moved out of `grid_staff` into `grid_head_terms`.
    fn version(&self) -> u32 {
        2
    }

    async fn apply(&self, tx: &mut AnyConnection, tables: Tables, commit: &RecordedCommit) -> Result<(), ApplyError> {
        let units = tables.name(UNITS.name);
        let staff = tables.name(STAFF.name);
        let terms = tables.name(HEAD_TERMS.name);
        let unit = commit.aggregate_id();
        let position = commit.sequence as i64;
        for event in commit.decode_events::<UnitEvent>()? {
            match event {
                UnitEvent::ChildRegistered(e) => {
                    let (parent_id, ancestors) = if unit == ROOT {
                        (String::new(), String::new())
                    } else {
                        let row: Option<(String,)> =
                            sqlx::query_as(AssertSqlSafe(format!("SELECT ancestors FROM {units} WHERE unit_id = $1")))
                                .bind(unit)
                                .fetch_optional(&mut *tx)
                                .await?;
                        let above = row.ok_or_else(|| ApplyError::Invalid(format!("parent {unit} unknown")))?.0;
                        let ancestors = if above.is_empty() { unit.to_string() } else { format!("{above},{unit}") };
                        (unit.to_string(), ancestors)
                    };
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {units} (unit_id, parent_id, kind, name, special_site, boundary_geojson, ancestors, position) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                    )))
                    .bind(&e.child_id)
                    .bind(parent_id)
                    .bind(i64::from(e.kind))
                    .bind(&e.name)
                    .bind(i64::from(e.special_site))
                    .bind(&e.boundary_geojson)
                    .bind(ancestors)
                    .bind(position)
                    .execute(&mut *tx)
                    .await?;
                }
                UnitEvent::ChildBoundaryRedrawn(e) => {
                    let r = sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {units} SET boundary_geojson = $1, position = $2 WHERE unit_id = $3"
                    )))
                    .bind(&e.boundary_geojson)
                    .bind(position)
                    .bind(&e.child_id)
                    .execute(&mut *tx)
                    .await?;
                    must_touch(r, &e.child_id)?;
                }
                UnitEvent::HouseholdsCounted(e) => {
                    let r = sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {units} SET households = $1, position = $2 WHERE unit_id = $3"
                    )))
                    .bind(i64::from(e.households))
                    .bind(position)
                    .bind(unit)
                    .execute(&mut *tx)
                    .await?;
                    must_touch(r, unit)?;
                }
                UnitEvent::HeadAppointed(e) => {
                    let head = e.head.unwrap_or_default();
                    let cert = head.certificate.clone().unwrap_or_default();
                    let r = sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {units} SET head_person_id = $1, head_name = $2, cert_number = $3, cert_issuer = $4, \
                         cert_expires_on = $5, head_appointed_on = $6, position = $7 WHERE unit_id = $8"
                    )))
                    .bind(&head.person_id)
                    .bind(&head.name)
                    .bind(&cert.number)
                    .bind(&cert.issuer)
                    .bind(&cert.expires_on)
                    .bind(&head.appointed_on)
                    .bind(position)
                    .bind(unit)
                    .execute(&mut *tx)
                    .await?;
                    must_touch(r, unit)?;
                    // Streams from before HeadVacated replaced a head silently.
                    sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {terms} SET left_on = $1, departure = $2, note = $3 \
                         WHERE unit_id = $4 AND left_on IS NULL"
                    )))
                    .bind(&head.appointed_on)
                    .bind(pb::HeadDeparture::Replaced as i64)
                    .bind(format!("replaced by {} ({})", head.name, head.person_id))
                    .bind(unit)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {terms} (unit_id, person_id, name, appointed_on, departure, note, cert_number, \
                         cert_issuer, cert_expires_on, renewals, appointed_position) \
                         VALUES ($1, $2, $3, $4, 0, '', $5, $6, $7, 0, $8)"
                    )))
                    .bind(unit)
                    .bind(&head.person_id)
                    .bind(&head.name)
                    .bind(&head.appointed_on)
                    .bind(&cert.number)
                    .bind(&cert.issuer)
                    .bind(&cert.expires_on)
                    .bind(position)
                    .execute(&mut *tx)
                    .await?;
                }
                UnitEvent::HeadVacated(e) => {
                    let r = sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {units} SET head_person_id = NULL, head_name = NULL, cert_number = NULL, \
                         cert_issuer = NULL, cert_expires_on = NULL, head_appointed_on = NULL, position = $1 \
                         WHERE unit_id = $2 AND head_person_id = $3"
                    )))
                    .bind(position)
                    .bind(unit)
                    .bind(&e.person_id)
                    .execute(&mut *tx)
                    .await?;
                    must_touch(r, &format!("head {} of {unit}", e.person_id))?;
                    sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {terms} SET left_on = $1, departure = $2, note = $3 \
                         WHERE unit_id = $4 AND person_id = $5 AND left_on IS NULL"
                    )))
                    .bind(&e.left_on)
                    .bind(i64::from(e.departure))
                    .bind(&e.note)
                    .bind(unit)
                    .bind(&e.person_id)
                    .execute(&mut *tx)
                    .await?;
                }
                UnitEvent::HeadCertificateRenewed(e) => {
                    let cert = e.certificate.unwrap_or_default();
                    let r = sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {units} SET cert_number = $1, cert_issuer = $2, cert_expires_on = $3, position = $4 \
                         WHERE unit_id = $5 AND head_person_id = $6"
                    )))
                    .bind(&cert.number)
                    .bind(&cert.issuer)
                    .bind(&cert.expires_on)
                    .bind(position)
                    .bind(unit)
                    .bind(&e.person_id)
                    .execute(&mut *tx)
                    .await?;
                    must_touch(r, &format!("head {} of {unit}", e.person_id))?;
                    sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {terms} SET cert_number = $1, cert_issuer = $2, cert_expires_on = $3, \
                         renewals = renewals + 1 WHERE unit_id = $4 AND person_id = $5 AND left_on IS NULL"
                    )))
                    .bind(&cert.number)
                    .bind(&cert.issuer)
                    .bind(&cert.expires_on)
                    .bind(unit)
                    .bind(&e.person_id)
                    .execute(&mut *tx)
                    .await?;
                }
                UnitEvent::WorkerAdded(e) => {
                    let w = e.worker.unwrap_or_default();
                    insert_staff(tx, &staff, unit, &w.person_id, &w.name, i64::from(w.role), &w.joined_on, position)
                        .await?;
                    touch(tx, &units, unit, position).await?;
                }
                UnitEvent::WorkerDismissed(e) => {
                    let r = sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {staff} SET left_on = $1, dismissal_reason = $2 \
                         WHERE unit_id = $3 AND person_id = $4 AND left_on IS NULL"
                    )))
                    .bind(&e.left_on)
                    .bind(&e.reason)
                    .bind(unit)
                    .bind(&e.person_id)
                    .execute(&mut *tx)
                    .await?;
                    must_touch(r, &e.person_id)?;
                    touch(tx, &units, unit, position).await?;
                }
                UnitEvent::PartyBranchSet(e) => {
                    let p = e.party_branch.unwrap_or_default();
                    let r = sqlx::query(AssertSqlSafe(format!(
                        "UPDATE {units} SET party_name = $1, party_kind = $2, party_secretary = $3, position = $4 \
                         WHERE unit_id = $5"
                    )))
                    .bind(&p.name)
                    .bind(i64::from(p.kind))
                    .bind(&p.secretary)
                    .bind(position)
                    .bind(unit)
                    .execute(&mut *tx)
                    .await?;
                    must_touch(r, unit)?;
                }
            }
        }
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
async fn insert_staff(
    tx: &mut AnyConnection,
    staff: &str,
    unit: &str,
    person_id: &str,
    name: &str,
    role: i64,
    joined_on: &str,
    position: i64,
) -> Result<(), ApplyError> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {staff} (unit_id, person_id, name, role, joined_on, joined_position) VALUES ($1, $2, $3, $4, $5, $6)"
    )))
    .bind(unit)
    .bind(person_id)
    .bind(name)
    .bind(role)
    .bind(joined_on)
    .bind(position)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

async fn touch(tx: &mut AnyConnection, units: &str, unit: &str, position: i64) -> Result<(), ApplyError> {
    let r = sqlx::query(AssertSqlSafe(format!("UPDATE {units} SET position = $1 WHERE unit_id = $2")))
        .bind(position)
        .bind(unit)
        .execute(&mut *tx)
        .await?;
    must_touch(r, unit)
}
