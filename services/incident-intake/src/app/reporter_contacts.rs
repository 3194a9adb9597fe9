//! Reading a reporter's contact to call back (each read recorded) and erasing it.

use super::*;

impl Intake {
    /// Give staff the reporter's contact to call back: the read is recorded
    /// on the incident (who, why) before the contact leaves the vault.
    pub async fn read_contact(
        &self,
        incident_id: &str,
        command_id: CommandKey,
        principal: String,
        purpose: String,
    ) -> Result<(pb::Contact, CommitOutcome<IncidentEvent>), ServiceError> {
        let now = self.clock.now_unix_ms();
        let command = IncidentCommand::ReadContact { by: principal.clone(), purpose, now_unix_ms: now };
        let outcome = self.incidents.execute(incident_id, &command, &meta(command_id, principal, now)).await?;
        let report = self.incidents.load_current(incident_id).await?.state.report.unwrap_or_default();
        // Erased between the record and this read: nothing to give.
        let contact = self
            .vault
            .open_contact(incident_id, &report)
            .await?
            .ok_or_else(|| ServiceError::from(IncidentRejection::ContactErased))?;
        Ok((contact, outcome))
    }

    /// Erase a reporter's contact for good: recorded on the incident, then
    /// its key destroyed (the eraser reactor destroys it too, should this
    /// process stop in between). `true` if a contact was held and is gone.
    pub async fn erase_contact(
        &self,
        incident_id: &str,
        command_id: CommandKey,
        principal: String,
        reason: String,
    ) -> Result<(bool, CommitOutcome<IncidentEvent>), ServiceError> {
        let now = self.clock.now_unix_ms();
        let command = IncidentCommand::EraseContact { by: principal.clone(), reason, now_unix_ms: now };
        let outcome = self.incidents.execute(incident_id, &command, &meta(command_id, principal, now)).await?;
        let erased = outcome.events.iter().any(|e| matches!(e, IncidentEvent::ContactErased(_)));
        if erased {
            self.vault.shred(incident_id, now).await?;
        }
        Ok((erased, outcome))
    }
}
