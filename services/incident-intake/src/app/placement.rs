//! Placing a report: on the grid tree from the local `GRID` copy, and in its
//! duplicate zone, where the nearby incidents are judged on the leader before a
//! report is linked to one; the recurrence note from the read model.

use super::*;

/// How long a zone entry whose incident is not (yet) written counts as a
/// report being recorded at this moment; after it, as one that never was.
pub(crate) const PENDING_GRACE_MS: i64 = 30_000;

/// At most this many nearby incidents are looked at for one report.
pub(super) const MAX_CANDIDATES: usize = 8;

/// How long a report waits for the read model's recurrence lookup.
pub(super) const RECURRENCE_LOOKUP_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// What an incident found near a new report is to it.
pub(super) enum Verdict {
    /// Open (or being written right now): the report may be the same problem.
    Open,
    /// Out of the zone for good: never written, rejected, merged, transferred,
    /// or corrected to another category or place.
    Gone,
    /// Its case was resolved or closed: the report may be a recurrence.
    Closed,
}

/// Judge `incident`, placed in `zone_id` at `placed_at_unix_ms`, as of `now`.
pub(super) fn judge(incident: &Incident, placed_at_unix_ms: i64, now: i64, zone_id: &str) -> Verdict {
    // Triage moved it to another category or place since it was placed
    // here: it is no longer this zone's.
    if let Some(r) = &incident.report
        && zone::zone_id(&r.grid_path.clone().unwrap_or_default().grid_id, &r.category_code) != zone_id
    {
        return Verdict::Gone;
    }
    match incident.status {
        Status::Reported | Status::Accepted => Verdict::Open,
        // Placed, and its incident not written yet: being recorded right now
        // (it counts as open), or never (a crash between the two commits).
        Status::New if now - placed_at_unix_ms < PENDING_GRACE_MS => Verdict::Open,
        Status::New | Status::Rejected | Status::Duplicate | Status::Transferred => Verdict::Gone,
        Status::Resolved | Status::Closed => Verdict::Closed,
    }
}

/// Locks striping the zones: placements in one zone take turns inside a
/// replica, so a burst of calls about one fire waits its turn instead of
/// conflicting at the server and running out of retries (replicas still
/// serialise through the zone's expected sequence).
pub(super) const ZONE_STRIPES: usize = 1024;

/// What a report's category does with reports near an open one of it.
pub(super) fn duplicate_policy(category: &pb::Category) -> Option<Policy> {
    match pb::DuplicatePolicy::try_from(category.duplicate_policy) {
        Ok(pb::DuplicatePolicy::Never) => None,
        Ok(pb::DuplicatePolicy::Suggest) => Some(Policy::Suggest),
        // An emergency is never merged, whatever an old catalogue says.
        _ if category.emergency => Some(Policy::Suggest),
        Ok(pb::DuplicatePolicy::AutoLink) => Some(Policy::AutoLink),
        // A version published before the policy existed: nothing is merged
        // unasked (a neighbour dispute would be); a person decides.
        Ok(pb::DuplicatePolicy::Unspecified) | Err(_) => Some(Policy::Suggest),
    }
}

impl Intake {
    pub(super) async fn refresh_index(&self) -> Result<(), ServiceError> {
        let from = self.index.read().map_or(0, |i| i.position);
        let target = self.grid.position();
        if target <= from && from != 0 {
            return Ok(());
        }
        let table = Tables::Live.name(GRID_UNITS.name);
        let rows: Vec<UnitRow> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT unit_id, parent_id, kind, name, boundary_geojson, position FROM {table} WHERE position > $1"
        )))
        .bind(from as i64)
        .fetch_all(self.store.pool())
        .await?;
        let mut index = self.index.write().map_err(|_| ServiceError::Internal("locate index poisoned".into()))?;
        for (unit, reason) in index.apply_rows(rows, target) {
            tracing::error!(%unit, %reason, "stored boundary unreadable; not indexed");
        }
        Ok(())
    }

    /// Place a location on the tree: (lat, lon, path).
    pub(super) async fn place(&self, location: &Location) -> Result<(f64, f64, pb::GridPath), ServiceError> {
        self.refresh_index().await?;
        let index = self.index.read().map_err(|_| ServiceError::Internal("locate index poisoned".into()))?;
        let (lat, lon, path) = match location {
            Location::Point { lat, lon } => (*lat, *lon, index.locate(*lon, *lat)),
            Location::Address { unit_id, .. } => {
                let path = index.path_to(unit_id);
                let Some((lon, lat)) = path.last().and_then(|u| u.interior_point()) else {
                    return Err(ServiceError::invalid(
                        "address.unit_id",
                        format!("unit {unit_id} is not a known unit"),
                    ));
                };
                (lat, lon, path)
            }
        };
        let mut grid_path = pb::GridPath::default();
        for unit in &path {
            match unit.kind {
                Kind::District => grid_path.district_id.clone_from(&unit.id),
                Kind::Street => grid_path.street_id.clone_from(&unit.id),
                Kind::Community => grid_path.community_id.clone_from(&unit.id),
                Kind::Grid | Kind::SpecialGrid => grid_path.grid_id.clone_from(&unit.id),
                Kind::MicroGrid => grid_path.micro_grid_id.clone_from(&unit.id),
                Kind::Root => {}
            }
        }
        if grid_path.grid_id.is_empty() {
            return Err(ServiceError::FailedPrecondition {
                kind: "OUTSIDE_GRIDS".into(),
                subject: "location".into(),
                description: format!("location: ({lat}, {lon}) lies in no registered grid"),
            });
        }
        Ok((lat, lon, grid_path))
    }

    /// The nearest incident of `category` within the radius whose case is
    /// resolved (awaiting the rating) or closed within the recurrence window,
    /// from the read model: a note for people ("this came back"), never a
    /// decision, so a lagging read model costs a missing note, not a
    /// swallowed report. A report next to a resolved case is not merged into
    /// it: a repeat call after the handler reported the fix is evidence that
    /// the fix did not hold.
    pub(super) async fn find_recurrence(
        &self,
        category: &str,
        lat: f64,
        lon: f64,
        now: i64,
    ) -> Result<Option<String>, ServiceError> {
        let table = Tables::Live.name(INCIDENTS.name);
        // A bounding box first (1° of latitude ≈ 111 km), then the exact distance.
        let dlat = self.rules.duplicate_radius_m / 111_000.0;
        let dlon = dlat / lat.to_radians().cos().max(0.01);
        let rows: Vec<(String, f64, f64)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT incident_id, lat, lon FROM {table} WHERE category_code = $1 \
             AND (status = $2 OR (status = $3 AND closed_at_ms >= $4)) \
             AND lat BETWEEN $5 AND $6 AND lon BETWEEN $7 AND $8"
        )))
        .bind(category)
        .bind(pb::IncidentStatus::Resolved as i64)
        .bind(pb::IncidentStatus::Closed as i64)
        .bind(now - self.rules.recurrence_window_ms)
        .bind(lat - dlat)
        .bind(lat + dlat)
        .bind(lon - dlon)
        .bind(lon + dlon)
        .fetch_all(self.store.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, a, b)| (haversine_m(lat, lon, a, b), id))
            .filter(|(d, _)| *d <= self.rules.duplicate_radius_m)
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, id)| id))
    }

    /// Place a report in its duplicate zone and say what it is near. The zone
    /// decides under its expected sequence, so reports at one spot at once
    /// are decided one after the other, each seeing those before it. The
    /// candidates' own states (read from the stream's leader, not a read
    /// model) say which are finished: those are not offered, and are
    /// forgotten by the zone.
    pub(super) async fn place_in_zone(
        &self,
        zone_id: &str,
        spot: Spot,
        policy: Policy,
        now: i64,
        key: &CommandKey,
        principal: &str,
    ) -> Result<(Option<Nearby>, Option<String>), ServiceError> {
        // The key names the incident being placed.
        let incident_id = key.id.as_str();
        let reach = Reach { radius_m: self.rules.duplicate_radius_m, window_ms: self.rules.duplicate_window_ms };
        let stripe = gridwork_eventstore::envelope::request_digest(zone_id.as_bytes()) as usize % self.zone_locks.len();
        let _turn = self.zone_locks[stripe].lock().await;
        // The warm copy (no round trip): another replica may have placed
        // reports since, but the placement is decided again on the leader's
        // head if so (its commit names the sequence it was decided on), and
        // an entry placed since this read is offered, not judged unseen.
        let zone = self.zones.load_shared(zone_id).await?;
        let mut finished = std::collections::BTreeSet::new();
        let mut closed_near = None;
        let mut unchecked: std::collections::BTreeSet<String> =
            zone.state.entries.iter().map(|e| e.incident_id.clone()).collect();
        // Each candidate's own state, from the leader, nearest first until
        // one is open: a warm copy could be one another replica has since
        // relocated, reclassified or closed, and a report linked to it would
        // follow another problem.
        let mut judged_open = None;
        for (entry, _) in zone.state.candidates(&spot, now, reach).into_iter().take(MAX_CANDIDATES) {
            if entry.incident_id == incident_id {
                continue;
            }
            let candidate = self.incidents.load_current_shared(&entry.incident_id).await?;
            unchecked.remove(&entry.incident_id);
            match judge(&candidate.state, entry.placed_at_unix_ms, now, zone_id) {
                Verdict::Open => {
                    judged_open = Some(entry.incident_id.clone());
                    break;
                }
                Verdict::Gone => {}
                Verdict::Closed => {
                    closed_near.get_or_insert_with(|| entry.incident_id.clone());
                }
            }
            finished.insert(entry.incident_id.clone());
        }
        // Issued with the report, it carries the report's age: a young
        // placement is not looked up in the command index (a busy zone forgets
        // ids quickly, and the index may lag under load).
        let mut step = "place";
        let placed = loop {
            let command = ZoneCommand::Place {
                incident_id: incident_id.to_string(),
                spot: spot.clone(),
                at_unix_ms: now,
                policy,
                reach,
                finished: finished.clone(),
                unchecked: unchecked.clone(),
            };
            let id = gridwork_eventstore::command_index::derived_in_call(step, incident_id);
            let key = CommandKey { id, request_digest: key.request_digest };
            let outcome = self.zones.execute(zone_id, &command, &meta(key, principal.to_string(), now)).await?;
            let Some(ZoneEvent::ReportPlaced(placed)) = outcome.events.into_iter().next() else {
                return Err(ServiceError::Internal("zone placement decided nothing".into()));
            };
            // The zone offers an entry placed since its copy here was read (by
            // another replica): that copy may be minutes old, so the entry is
            // judged on the leader too before a report is linked to it. One
            // found gone is forgotten and the report placed again, once, as
            // an original (never linked to what it judged unseen).
            let near = placed.near_incident_id.clone();
            if near.is_empty() || judged_open.as_deref() == Some(near.as_str()) || step != "place" {
                break placed;
            }
            let candidate = self.incidents.load_current_shared(&near).await?;
            let placed_at =
                zone.state.entries.iter().find(|e| e.incident_id == near).map_or(now, |e| e.placed_at_unix_ms);
            match judge(&candidate.state, placed_at, now, zone_id) {
                Verdict::Open => break placed,
                Verdict::Gone => {}
                Verdict::Closed => {
                    closed_near.get_or_insert_with(|| near.clone());
                }
            }
            unchecked.remove(&near);
            finished.insert(near);
            // Every entry it now holds is unchecked (the warm copy is the
            // placement's own state: it was brought to the head if it
            // conflicted), so the second placement offers none.
            let fresh = self.zones.load_shared(zone_id).await?;
            unchecked
                .extend(fresh.state.entries.iter().map(|e| e.incident_id.clone()).filter(|id| !finished.contains(id)));
            step = "place-again";
        };
        let nearby = match (placed.near_incident_id.as_str(), placed.linked) {
            ("", _) => None,
            (near, true) => Some(Nearby::Same { incident_id: near.into(), distance_m: placed.distance_m }),
            (near, false) => Some(Nearby::Possibly { incident_id: near.into(), distance_m: placed.distance_m }),
        };
        Ok((nearby, closed_near))
    }
}
