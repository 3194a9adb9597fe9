//! The service catalogue: publishing a version (checked as a whole) and reading one.

use super::*;

impl Intake {
    /// Publish a catalogue version.
    pub async fn publish_catalogue(
        &self,
        categories: Vec<pb::Category>,
        command_id: CommandKey,
        principal: String,
    ) -> Result<(u32, CommitOutcome<crate::events::CatalogueEvent>), ServiceError> {
        check_definition(&categories).map_err(ServiceError::invalid_all)?;
        let now = self.clock.now_unix_ms();
        let outcome = self
            .catalogue
            .execute(CITY, &CatalogueCommand::Publish { categories }, &meta(command_id, principal, now))
            .await?;
        let crate::events::CatalogueEvent::VersionPublished(e) =
            outcome.events.first().ok_or_else(|| ServiceError::Internal("publish decided nothing".into()))?;
        Ok((e.version, outcome.clone()))
    }

    /// A catalogue version (0 = latest).
    pub async fn catalogue(
        &self,
        version: u32,
    ) -> Result<Arc<crate::domain::catalogue::CatalogueVersion>, ServiceError> {
        let loaded = self.catalogue.load_shared(CITY).await?;
        loaded.state.version(version).cloned().ok_or_else(|| match version {
            0 => ServiceError::NotFound("no catalogue has been published".into()),
            v => ServiceError::NotFound(format!("catalogue_version: version {v} does not exist")),
        })
    }
}
