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

    /// Erase a reporter's data for good — the contact and the report's own
    /// account, with or without a contact: recorded on the incident, then
    /// the keys destroyed (the eraser reactor destroys them too, should this
    /// process stop in between; a retry destroys them again). `true` once
    /// the data is gone.
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
        // Also on a retry or a second erasure: idempotent, and it finishes
        // one that stopped between the record and the keys.
        self.vault.shred(incident_id, now).await?;
        Ok((erased, outcome))
    }
}
