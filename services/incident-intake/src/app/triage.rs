//! Triage's corrections and decisions on an incident.

use super::*;

/// A category correction, parsed.
#[derive(Debug, Clone)]
pub struct Reclassification {
    /// The new category.
    pub category_code: String,
    /// Attributes for it.
    pub attributes: Vec<pb::AttributeValue>,
    /// The priority to give it (None: the category's default).
    pub priority: Option<pb::Priority>,
    /// Why.
    pub note: String,
}

impl Intake {
    /// A triage command on an incident.
    pub async fn triage(
        &self,
        incident_id: &str,
        command_id: CommandKey,
        principal: String,
        build: impl FnOnce(i64) -> IncidentCommand,
    ) -> Result<CommitOutcome<IncidentEvent>, ServiceError> {
        let now = self.clock.now_unix_ms();
        let command = build(now);
        Ok(self.incidents.execute(incident_id, &command, &meta(command_id, principal, now)).await?)
    }

    /// Triage corrects the category: the new category and its attributes are
    /// checked against the catalogue (latest version); the priority is the one
    /// given, else the new category's default.
    pub async fn reclassify(
        &self,
        incident_id: &str,
        command_id: CommandKey,
        principal: String,
        change: Reclassification,
    ) -> Result<CommitOutcome<IncidentEvent>, ServiceError> {
        let Reclassification { category_code, attributes, priority, note } = change;
        let catalogue = self.catalogue(0).await?;
        let category = catalogue.category(&category_code).map_err(|(f, d)| ServiceError::invalid(f, d))?.clone();
        let problems = catalogue.check_attributes(&category, &attributes);
        if !problems.is_empty() {
            return Err(ServiceError::invalid_all(problems));
        }
        // Unless triage gives one, the priority never drops by a change of
        // category (a me-too rise or an earlier reassessment stands): the
        // higher of the current one and the new category's default.
        let current = self.incidents.load_current(incident_id).await?.state.priority;
        let priority = match priority {
            Some(p) => p,
            None => pb::Priority::try_from(current.max(category.default_priority)).unwrap_or_default(),
        };
        self.triage(incident_id, command_id, principal.clone(), |now| IncidentCommand::Reclassify {
            category_code: category.code.clone(),
            catalogue_version: catalogue.version,
            attributes,
            emergency: category.emergency,
            priority,
            by: principal,
            note,
            now_unix_ms: now,
        })
        .await
    }

    /// Triage corrects where the problem is: placed again in the tree.
    pub async fn relocate(
        &self,
        incident_id: &str,
        command_id: CommandKey,
        principal: String,
        location: Location,
        note: String,
    ) -> Result<(pb::GridPath, CommitOutcome<IncidentEvent>), ServiceError> {
        let (lat, lon, grid_path) = self.place(&location).await?;
        let address_text = match &location {
            Location::Address { text, .. } => text.trim().to_string(),
            Location::Point { .. } => String::new(),
        };
        let path = grid_path.clone();
        // The address is sealed under the incident's key; whether it changed
        // is decided here, where the old one can be opened.
        let loaded = self.incidents.load_current(incident_id).await?;
        // No key is made for an incident that does not exist.
        if loaded.state.status == crate::domain::incident::Status::New {
            return Err(crate::domain::incident::IncidentRejection::NotReported.into());
        }
        let current = loaded.state.report.unwrap_or_default();
        let old_address = self
            .vault
            .open_text(
                &current.address_text,
                current.sealed_address_text.as_ref(),
                crate::contacts::field::ADDRESS_TEXT,
            )
            .await?;
        let same_address = old_address == address_text;
        let sealed_address_text =
            self.vault.seal_text(incident_id, crate::contacts::field::ADDRESS_TEXT, &address_text).await?;
        let outcome = self
            .triage(incident_id, command_id, principal.clone(), |now| IncidentCommand::Relocate {
                lat,
                lon,
                grid_path,
                address_text: String::new(),
                sealed_address_text,
                same_address,
                by: principal,
                note,
                now_unix_ms: now,
            })
            .await?;
        Ok((path, outcome))
    }

    /// An incident's status and, for a duplicate, its original: read from the
    /// stream's leader, not a read model.
    pub async fn status_of(&self, incident_id: &str) -> Result<(Status, String), ServiceError> {
        let loaded = self.incidents.load_current(incident_id).await?;
        Ok((loaded.state.status, loaded.state.duplicate_of.clone()))
    }
}
