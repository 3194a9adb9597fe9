//! Reads of the incident read model (`INCIDENTS`, `HISTORY`).

use super::*;
use crate::contacts::field::{ADDRESS_TEXT, DESCRIPTION};

/// Which incidents to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct IncidentFilter<'a> {
    /// In this unit's subtree ("" for anywhere).
    pub unit_id: &'a str,
    /// With this status.
    pub status: Option<pb::IncidentStatus>,
    /// Of this category ("" for any).
    pub category: &'a str,
    /// Transferred, or pending transfer, to this body ("" for any).
    pub transfer_to: &'a str,
    /// At most this many.
    pub limit: u32,
    /// Only this incident.
    pub only_id: Option<&'a str>,
    /// Strictly after this sort key (reported at, incident id), newest first.
    pub after: Option<(i64, &'a str)>,
    /// Reported by this principal ("" for anyone): a rider's own reports.
    pub reported_by: &'a str,
}

/// A row of `intake_incidents`.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct IncidentRow {
    incident_id: String,
    status: i64,
    source: i64,
    category_code: String,
    catalogue_version: i64,
    lat: f64,
    lon: f64,
    district_id: String,
    street_id: String,
    community_id: String,
    grid_id: String,
    micro_grid_id: String,
    description: String,
    priority: i64,
    emergency: i64,
    claimed_by: String,
    claim_until_ms: i64,
    duplicate_of: String,
    reported_at_ms: i64,
    contact_ref: String,
    position: i64,
    possibly_same_as: String,
    recurrence_of: String,
    closed_at_ms: i64,
    address_text: String,
    transfer_to: String,
    sealed_description: String,
    sealed_address_text: String,
    /// A duplicate's original's status (0 if none).
    original_status: i64,
}

impl Intake {
    /// Wait for `min_position` (read-your-writes), bounded.
    pub async fn wait(&self, min_position: u64, wait: Duration) -> Result<(), ServiceError> {
        if min_position > 0 {
            self.projection.wait_for(min_position, wait).await?;
        }
        Ok(())
    }

    /// A read model's personal field: its plain text (earlier events), or its
    /// sealed column opened.
    async fn open_column(&self, plain: &str, sealed: &str, field: &str) -> Result<String, ServiceError> {
        Ok(gridwork_personal::open_column_for_view(self.vault.keys(), plain.to_string(), sealed, field).await?)
    }

    /// Incidents matching the filters, newest first, without history.
    pub async fn list(&self, filter: IncidentFilter<'_>) -> Result<Vec<pb::Incident>, ServiceError> {
        let IncidentFilter { unit_id, status, category, transfer_to, limit, only_id, after, reported_by } = filter;
        let (after_ms, after_id) = after.unwrap_or((i64::MAX, ""));
        let table = Tables::Live.name(INCIDENTS.name);
        let history = Tables::Live.name(HISTORY.name);
        let rows: Vec<IncidentRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT incident_id, status, source, category_code, catalogue_version, lat, lon, district_id, street_id, \
             community_id, grid_id, micro_grid_id, description, priority, emergency, claimed_by, claim_until_ms, \
             duplicate_of, reported_at_ms, contact_ref, position, possibly_same_as, recurrence_of, closed_at_ms, \
             address_text, transfer_to, sealed_description, sealed_address_text, \
             COALESCE((SELECT o.status FROM {table} o WHERE o.incident_id = t.duplicate_of), 0) AS original_status \
             FROM {table} t \
             WHERE ($1 = '' OR district_id = $1 OR street_id = $1 OR community_id = $1 OR grid_id = $1 OR micro_grid_id = $1) \
             AND ($2 = 0 OR status = $2) AND ($3 = '' OR category_code = $3) AND ($4 = '' OR incident_id = $4) \
             AND ($6 = '' OR transfer_to = $6) \
             AND ($9 = '' OR EXISTS (SELECT 1 FROM {history} h WHERE h.incident_id = t.incident_id \
                  AND h.event_type = 'reported' AND h.principal = $9)) \
             AND (reported_at_ms < $7 OR (reported_at_ms = $7 AND incident_id > $8)) \
             ORDER BY reported_at_ms DESC, incident_id LIMIT $5"
        )))
        .bind(unit_id)
        .bind(status.map_or(0, |s| s as i64))
        .bind(category)
        .bind(only_id.unwrap_or(""))
        .bind(i64::from(limit))
        .bind(transfer_to)
        .bind(after_ms)
        .bind(after_id)
        .bind(reported_by)
        .fetch_all(self.store.pool())
        .await?;
        let now = self.clock.now_unix_ms();
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let status = r.status as i32;
            // Open until its case closes (or triage ends it): a resolved
            // case awaits the reporter's rating, still open to Open311. A
            // "me too" is as open as its original: its reporter follows that.
            // Only an original at work or finished is followed: one in a
            // state that gives its me-toos back (rejected, transferred,
            // merged itself) says nothing of this report's outcome.
            let original = pb::IncidentStatus::try_from(r.original_status as i32).ok().filter(|s| {
                matches!(
                    s,
                    pb::IncidentStatus::Reported
                        | pb::IncidentStatus::Accepted
                        | pb::IncidentStatus::Resolved
                        | pb::IncidentStatus::Closed
                )
            });
            let followed = original.map_or(status, |s| s as i32);
            let open = matches!(
                pb::IncidentStatus::try_from(followed),
                Ok(pb::IncidentStatus::Reported | pb::IncidentStatus::Accepted | pb::IncidentStatus::Resolved)
            );
            let has_contact = self.vault.holds_ref(&r.incident_id, &r.contact_ref).await?;
            let description = self.open_column(&r.description, &r.sealed_description, DESCRIPTION).await?;
            let address_text = self.open_column(&r.address_text, &r.sealed_address_text, ADDRESS_TEXT).await?;
            out.push(pb::Incident {
                incident_id: r.incident_id,
                status,
                open311_status: if open { "open".into() } else { "closed".into() },
                source: r.source as i32,
                category_code: r.category_code,
                catalogue_version: r.catalogue_version as u32,
                lat: r.lat,
                lon: r.lon,
                grid_path: Some(pb::GridPath {
                    district_id: r.district_id,
                    street_id: r.street_id,
                    community_id: r.community_id,
                    grid_id: r.grid_id,
                    micro_grid_id: r.micro_grid_id,
                }),
                description,
                priority: r.priority as i32,
                emergency: r.emergency != 0,
                claimed_by: if r.claim_until_ms > now { r.claimed_by } else { String::new() },
                duplicate_of: r.duplicate_of,
                linked_reports: Vec::new(),
                reported_at_unix_ms: r.reported_at_ms,
                has_contact,
                history: Vec::new(),
                position: r.position as u64,
                possibly_same_as: r.possibly_same_as,
                recurrence_of: r.recurrence_of,
                closed_at_unix_ms: r.closed_at_ms,
                address_text,
                transfer_to: r.transfer_to,
                original_status: original.map_or(0, |s| s as i32),
                linked_accounts: Vec::new(),
                // Channel data is read from the incident itself (`get`).
                device: None,
                partner_reference: None,
                media: Vec::new(),
            });
        }
        Ok(out)
    }

    /// Who reported incident `incident_id` (the principal of its history's
    /// `reported` entry), if the read model holds it.
    pub async fn reporter_of(&self, incident_id: &str) -> Result<Option<String>, ServiceError> {
        let history = Tables::Live.name(HISTORY.name);
        Ok(sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT principal FROM {history} WHERE incident_id = $1 AND event_type = 'reported' \
             ORDER BY sequence LIMIT 1"
        )))
        .bind(incident_id)
        .fetch_optional(self.store.pool())
        .await?)
    }

    /// One incident with its history and linked reports.
    pub async fn get(&self, incident_id: &str) -> Result<pb::Incident, ServiceError> {
        let mut incident = self
            .list(IncidentFilter { limit: 1, only_id: Some(incident_id), ..IncidentFilter::default() })
            .await?
            .pop()
            .ok_or_else(|| ServiceError::NotFound(format!("incident_id: incident {incident_id} does not exist")))?;
        // The channel data as reported: from the incident's own stream.
        // The channel data as reported and the me-toos' accounts: from the
        // incident's own stream.
        let state = self.incidents.load(incident_id).await?.state;
        if let Some(report) = state.report {
            incident.device = report.device;
            incident.partner_reference = report.partner_reference;
            incident.media = report.media;
        }
        incident.linked_accounts = Vec::with_capacity(state.linked_accounts.len());
        for mut account in state.linked_accounts {
            account.description = self
                .vault
                .open_text(&account.description, account.sealed_description.take().as_ref(), DESCRIPTION)
                .await?;
            account.address_text = self
                .vault
                .open_text(&account.address_text, account.sealed_address_text.take().as_ref(), ADDRESS_TEXT)
                .await?;
            incident.linked_accounts.push(account);
        }
        let history = Tables::Live.name(HISTORY.name);
        let rows: Vec<(i64, i64, String, String, String)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT sequence, at_ms, event_type, summary, principal FROM {history} WHERE incident_id = $1 ORDER BY sequence, idx"
        )))
        .bind(incident_id)
        .fetch_all(self.store.pool())
        .await?;
        incident.history = rows
            .into_iter()
            .map(|(sequence, at, event_type, summary, principal)| pb::HistoryEntry {
                sequence: sequence as u64,
                at_unix_ms: at,
                event_type,
                summary,
                principal,
            })
            .collect();
        let table = Tables::Live.name(INCIDENTS.name);
        let linked: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT incident_id FROM {table} WHERE duplicate_of = $1 ORDER BY reported_at_ms, incident_id"
        )))
        .bind(incident_id)
        .fetch_all(self.store.pool())
        .await?;
        incident.linked_reports = linked.into_iter().map(|(id,)| id).collect();
        Ok(incident)
    }
}
