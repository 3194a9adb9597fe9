//! The contact vault: where a reporter's contact can be read from, and erased.
//!
//! A contact is personal data that must be readable for a call-back (回访) and
//! erasable for good, yet the report it belongs to lives in an append-only log
//! that partner bureaus copy. So the contact travels *in the report's own
//! commit*, sealed (AES-256-GCM) under a key of its own, and only the key lives
//! here: a report whose commit fails leaves at most a key that opens nothing,
//! never an orphan contact; erasing the key makes every copy of the contact —
//! the log, its replicas, a partner's archive — unreadable at once
//! (crypto-shredding).
//!
//! The vault is its own store (`CONTACTS_DATABASE_URL`), not a read model: no
//! projection rebuild or dropped read database takes the keys with it. Erased
//! keys leave a tombstone, so an erased incident never gets a fresh key.
//!
//! Contacts taken before sealing sit whole in the legacy table
//! `intake_contacts` of the read store; they are read and erased there.
//!
//! The report's own account — its description and address text, and the
//! same of every me-too linked to it — is sealed too, under the incident's
//! key in the shared personal-data key store (`gridwork_personal`,
//! `intake.incident.<id>`), which dispatch opens as well; erasing a
//! reporter's data destroys both keys.

use gridwork_eventstore::projection::ReadStore;
use gridwork_proto::gridwork::intake::v1 as pb;
use gridwork_runtime::ServiceError;
use prost::Message as _;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};
use sqlx::AssertSqlSafe;

/// The vault's table: one key per incident with a contact.
pub const KEYS: &str = "intake_contact_keys";

/// Contacts stored whole, before sealing (read store).
pub const LEGACY: &str = "intake_contacts";

/// The read model's `contact_ref` of a report whose contact is sealed.
pub const SEALED: &str = "sealed";

/// The keys, in their own store.
#[derive(Clone)]
pub struct Vault {
    store: ReadStore,
    legacy: ReadStore,
    /// The vault is the read store's own database (PostgreSQL default).
    shared: bool,
    rng: SystemRandom,
    /// The personal-data key store: the report's account.
    keys: gridwork_personal::KeyStore,
}

/// The fields of a report's account, as the associated data names them.
pub mod field {
    /// The description.
    pub const DESCRIPTION: &str = "description";
    /// The address text.
    pub const ADDRESS_TEXT: &str = "address_text";
}

/// The name of an incident's personal-data key.
pub fn key_name(incident_id: &str) -> Result<String, ServiceError> {
    Ok(gridwork_personal::report_key(incident_id)?)
}

fn internal(what: &str) -> ServiceError {
    ServiceError::Internal(format!("contact vault: {what}"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    s.len()
        .is_multiple_of(2)
        .then(|| (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect())
        .flatten()
}

fn aead_key(key: &[u8]) -> Result<LessSafeKey, ServiceError> {
    Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).map_err(|_| internal("a key of the wrong length"))?))
}

impl Vault {
    /// Open the vault (`store`, creating its table) beside the read store
    /// that holds the legacy contacts (`shared`: they are one database).
    pub async fn open(
        store: ReadStore,
        legacy: ReadStore,
        shared: bool,
        keys: gridwork_personal::KeyStore,
    ) -> Result<Self, ServiceError> {
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {KEYS} (incident_id TEXT PRIMARY KEY, key_hex TEXT NOT NULL, \
             created_at_ms BIGINT NOT NULL, erased_at_ms BIGINT NOT NULL)"
        )))
        .execute(store.pool())
        .await?;
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {LEGACY} (contact_ref TEXT PRIMARY KEY, incident_id TEXT NOT NULL, \
             name TEXT NOT NULL, phone TEXT NOT NULL, created_at_ms BIGINT NOT NULL)"
        )))
        .execute(legacy.pool())
        .await?;
        Ok(Self { store, legacy, shared, rng: SystemRandom::new(), keys })
    }

    /// Seal `text` as `field` of `incident_id`'s account (`None` for an
    /// empty text). An incident whose data was erased takes none again:
    /// FAILED_PRECONDITION `PERSONAL_DATA_ERASED`.
    pub async fn seal_text(
        &self,
        incident_id: &str,
        field: &str,
        text: &str,
    ) -> Result<Option<gridwork_personal::Sealed>, ServiceError> {
        if text.is_empty() {
            return Ok(None);
        }
        match self.keys.seal(&key_name(incident_id)?, field, text.as_bytes()).await? {
            Some(sealed) => Ok(Some(sealed)),
            None => Err(ServiceError::FailedPrecondition {
                kind: "PERSONAL_DATA_ERASED".into(),
                subject: "incident".into(),
                description: format!("incident {incident_id}: its reporter's data was erased; nothing is added to it"),
            }),
        }
    }

    /// A field of an account: the plain text where it was never sealed
    /// (earlier events), else the sealed value opened, [`gridwork_personal::ERASED`]
    /// once erased.
    pub async fn open_text(
        &self,
        plain: &str,
        sealed: Option<&gridwork_personal::Sealed>,
        field: &str,
    ) -> Result<String, ServiceError> {
        match sealed {
            None => Ok(plain.to_string()),
            Some(sealed) => Ok(gridwork_personal::open_for_view(&self.keys, sealed, field).await?),
        }
    }

    /// The personal-data key store.
    pub fn keys(&self) -> &gridwork_personal::KeyStore {
        &self.keys
    }

    /// Seal `contact` for `incident_id` under its key, made on first use (a
    /// retried report gets the key the first attempt stored). `None` once the
    /// contact was erased: nothing is sealed again.
    pub async fn seal(
        &self,
        incident_id: &str,
        contact: &pb::Contact,
        now_unix_ms: i64,
    ) -> Result<Option<pb::SealedContact>, ServiceError> {
        let mut fresh = [0u8; 32];
        self.rng.fill(&mut fresh).map_err(|_| internal("no randomness"))?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {KEYS} (incident_id, key_hex, created_at_ms, erased_at_ms) VALUES ($1, $2, $3, 0) \
             ON CONFLICT (incident_id) DO NOTHING"
        )))
        .bind(incident_id)
        .bind(hex(&fresh))
        .bind(now_unix_ms)
        .execute(self.store.pool())
        .await?;
        let Some(key) = self.key(incident_id).await? else { return Ok(None) };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| internal("no randomness"))?;
        let mut sealed = contact.encode_to_vec();
        aead_key(&key)?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(incident_id.as_bytes()),
                &mut sealed,
            )
            .map_err(|_| internal("sealing failed"))?;
        Ok(Some(pb::SealedContact { nonce: nonce.to_vec(), ciphertext: sealed }))
    }

    /// The live key of `incident_id` (`None`: none, or erased).
    async fn key(&self, incident_id: &str) -> Result<Option<Vec<u8>>, ServiceError> {
        let row: Option<(String,)> = sqlx::query_as(AssertSqlSafe(format!(
            "SELECT key_hex FROM {KEYS} WHERE incident_id = $1 AND erased_at_ms = 0"
        )))
        .bind(incident_id)
        .fetch_optional(self.store.pool())
        .await?;
        row.map(|(k,)| unhex(&k).ok_or_else(|| internal("a malformed key"))).transpose()
    }

    /// Open the contact of `report` (`None`: none left, or erased).
    pub async fn open_contact(
        &self,
        incident_id: &str,
        report: &pb::IncidentReported,
    ) -> Result<Option<pb::Contact>, ServiceError> {
        if let Some(sealed) = &report.sealed_contact {
            let Some(key) = self.key(incident_id).await? else { return Ok(None) };
            let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| internal("a malformed nonce"))?;
            let mut bytes = sealed.ciphertext.clone();
            let plain = aead_key(&key)?
                .open_in_place(nonce, Aad::from(incident_id.as_bytes()), &mut bytes)
                .map_err(|_| internal("a sealed contact that does not open under its key"))?;
            return pb::Contact::decode(&*plain)
                .map(Some)
                .map_err(|_| internal("a sealed contact that does not decode"));
        }
        if report.contact_ref.is_empty() {
            return Ok(None);
        }
        let row: Option<(String, String)> =
            sqlx::query_as(AssertSqlSafe(format!("SELECT name, phone FROM {LEGACY} WHERE contact_ref = $1")))
                .bind(&report.contact_ref)
                .fetch_optional(self.legacy.pool())
                .await?;
        Ok(row.map(|(name, phone)| pb::Contact { name, phone }))
    }

    /// Whether a contact can still be opened, by the read model's
    /// `contact_ref`: [`SEALED`] (its key is live), a legacy reference (its
    /// row is there), or "" (none).
    pub async fn holds_ref(&self, incident_id: &str, contact_ref: &str) -> Result<bool, ServiceError> {
        match contact_ref {
            "" => Ok(false),
            SEALED => Ok(self.key(incident_id).await?.is_some()),
            legacy => {
                let row: Option<(String,)> =
                    sqlx::query_as(AssertSqlSafe(format!("SELECT contact_ref FROM {LEGACY} WHERE contact_ref = $1")))
                        .bind(legacy)
                        .fetch_optional(self.legacy.pool())
                        .await?;
                Ok(row.is_some())
            }
        }
    }

    /// Destroy `incident_id`'s key (leaving a tombstone) and any legacy
    /// contact. Idempotent.
    pub async fn shred(&self, incident_id: &str, now_unix_ms: i64) -> Result<(), ServiceError> {
        let mut legacy = self.legacy.pool().acquire().await?;
        self.shred_within(&mut legacy, incident_id, now_unix_ms).await
    }

    /// [`Vault::shred`] inside `read_tx`, a transaction on the read store
    /// (a reactor's, which on SQLite holds the database's write lock: the
    /// read store is written through it, never beside it).
    pub async fn shred_within(
        &self,
        read_tx: &mut sqlx::AnyConnection,
        incident_id: &str,
        now_unix_ms: i64,
    ) -> Result<(), ServiceError> {
        // The account's key first: idempotent, like the rest.
        self.keys.erase(&key_name(incident_id)?, now_unix_ms.max(1)).await?;
        let tombstone = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {KEYS} (incident_id, key_hex, created_at_ms, erased_at_ms) VALUES ($1, '', $2, $2) \
             ON CONFLICT (incident_id) DO UPDATE SET key_hex = '', erased_at_ms = $2 WHERE {KEYS}.erased_at_ms = 0"
        )))
        .bind(incident_id)
        .bind(now_unix_ms.max(1));
        if self.shared {
            tombstone.execute(&mut *read_tx).await?;
        } else {
            tombstone.execute(self.store.pool()).await?;
        }
        sqlx::query(AssertSqlSafe(format!("DELETE FROM {LEGACY} WHERE incident_id = $1")))
            .bind(incident_id)
            .execute(&mut *read_tx)
            .await?;
        Ok(())
    }
}

/// Destroys the key of every erased contact, from the log: an erasure
/// recorded by a process that stopped before destroying the key is finished
/// here (the vault's `shred` is idempotent).
pub struct Eraser {
    /// The vault.
    pub vault: Vault,
}

impl gridwork_eventstore::Reactor for Eraser {
    fn name(&self) -> &str {
        "intake_contact_eraser"
    }

    /// Its own service's stream: an unknown type may be a newer replica's
    /// erasure; wait for the upgrade rather than skip it.
    fn unknown_events(&self) -> gridwork_eventstore::projection::UnknownEvents {
        gridwork_eventstore::projection::UnknownEvents::Stall
    }

    async fn react(
        &self,
        tx: &mut sqlx::AnyConnection,
        commit: &gridwork_eventstore::RecordedCommit,
    ) -> Result<(), gridwork_eventstore::projection::ApplyError> {
        if !commit.subject.starts_with("intake.incident.") {
            return Ok(());
        }
        for e in &commit.body.events {
            if e.event_type == crate::events::types::CONTACT_ERASED {
                let erased = pb::ContactErased::decode(e.payload.as_slice())
                    .map_err(|err| gridwork_eventstore::DecodeError::new(e.event_type.clone(), err))?;
                // A vault that cannot be reached is an outage, retried.
                self.vault.shred_within(tx, commit.aggregate_id(), erased.at_unix_ms).await.map_err(|err| {
                    gridwork_eventstore::projection::ApplyError::Unavailable(format!("contact vault: {err}"))
                })?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(unhex(&hex(&bytes)).as_deref(), Some(&bytes[..]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
