//! Personal data that can be erased from an append-only log (crypto-shredding).
//!
//! Owns: the personal-data key store — one AES-256 data key per data subject
//! (a report, a case, a person), kept in the JetStream stream
//! [`STREAM`] apart from every event stream — and sealing and opening with it
//! ([`Sealed`]: AES-256-GCM, the key's name and the field as associated
//! data). Erasure writes a tombstone in place of the key and then securely
//! deletes (overwrites) the message that held it: every sealed copy — the
//! streams, their replicas, snapshots, read models, a partner's archive — is
//! unreadable from then on, and an erased subject never gets a fresh key.
//! Must not depend on: the event store or any service; services call it.
//!
//! One message per key on `personal.key.<name>` (the name is
//! `<context>.<kind>.<id>`, for example `intake.incident.0192…`):
//! - made with `Nats-Expected-Last-Subject-Sequence: 0`, so two replicas
//!   sealing for one subject at once agree on one key (the loser reads the
//!   winner's);
//! - erased by a tombstone written against the key's sequence, naming it,
//!   and then `STREAM.MSG.DELETE` of that sequence without `no_erase` (the
//!   server overwrites the record on disk); a crash between the two is
//!   finished by erasing again (the tombstone names what is left to scrub).
//!
//! The stream denies purges and has no limits that delete (a lost key is
//! lost data); deletes are allowed, for the scrub. Reads go to the stream's
//! leader (no direct gets): a key just made is seen at once. Live keys are
//! cached in memory for [`CACHE_TTL`]; another process's erasure reaches
//! this one's cache within that time (this one's own at once).
//!
//! Not yet: the keys are stored as they are, not wrapped under a key-
//! encryption key, so whoever may read the stream may read the keys (NATS
//! permissions give it to the services that seal, and the operator); and a
//! restore of the stream from a backup taken before an erasure brings the
//! key back — replay the erasures recorded in the event streams after one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use bytes::Bytes;
use gridwork_proto::gridwork::personal::v1 as pb;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom as _, SystemRandom};

pub use pb::Sealed;

/// The key store's stream.
pub const STREAM: &str = "PERSONAL_KEYS";

/// Its subjects: `personal.key.<name>`.
pub const SUBJECT_PREFIX: &str = "personal.key.";

/// What read models and views show where erased personal data was.
pub const ERASED: &str = "[erased]";

/// How long a live key is kept in memory.
pub const CACHE_TTL: Duration = Duration::from_secs(30);

const KEY_LEN: usize = 32;
const LIVE: u8 = 1;
const TOMBSTONE: u8 = 0;

/// The key store failed, or a sealed value is not what it claims.
#[derive(Debug, thiserror::Error)]
pub enum PersonalError {
    /// The store could not be reached or answered with an error: retry.
    #[error("personal-data key store unavailable: {0}")]
    Unavailable(String),
    /// A key name that is not `<context>.<kind>.<id>` of `[A-Za-z0-9_-]`.
    #[error("invalid personal-data key name {0:?}: want <context>.<kind>.<id>, each 1-128 of [A-Za-z0-9_-]")]
    InvalidName(String),
    /// Sealed data whose key the store never held (a store restored without
    /// it, or data from another deployment): not the same as erased.
    #[error("no key {0} in the personal-data key store")]
    Missing(String),
    /// The value does not open under its key for this field: altered, or
    /// moved from another subject or field.
    #[error("sealed {key} does not open as {field}")]
    Corrupt {
        /// The key named.
        key: String,
        /// The field it was opened as.
        field: String,
    },
    /// A message in the store that is neither a key nor a tombstone.
    #[error("malformed entry in the personal-data key store for {0}")]
    Malformed(String),
}

fn unavailable(e: impl std::fmt::Display) -> PersonalError {
    PersonalError::Unavailable(e.to_string())
}

/// What opening a sealed value gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The plaintext.
    Plain(Vec<u8>),
    /// The key was erased: the data is gone for good.
    Erased,
}

impl Opened {
    /// The plaintext as text, or [`ERASED`].
    pub fn text(self) -> String {
        match self {
            Opened::Plain(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Opened::Erased => ERASED.to_string(),
        }
    }
}

/// A key's state in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Never made.
    Missing,
    /// Live: data sealed under it opens.
    Live,
    /// Erased at this time (ms since the epoch).
    Erased {
        /// When.
        at_unix_ms: i64,
    },
}

/// The name of a data subject's key: `<context>.<kind>.<id>`.
pub fn key_name(context: &str, kind: &str, id: &str) -> Result<String, PersonalError> {
    let name = format!("{context}.{kind}.{id}");
    let ok = [context, kind, id].iter().all(|part| {
        (1..=128).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    });
    if ok { Ok(name) } else { Err(PersonalError::InvalidName(name)) }
}

fn check_name(name: &str) -> Result<(), PersonalError> {
    let parts: Vec<&str> = name.split('.').collect();
    match parts.as_slice() {
        [context, kind, id] => key_name(context, kind, id).map(|_| ()),
        _ => Err(PersonalError::InvalidName(name.to_string())),
    }
}

/// The associated data: the key's name and the field, so that a sealed value
/// opens only as what it was sealed as.
fn aad(key: &str, field: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(key.len() + field.len() + 1);
    aad.extend_from_slice(key.as_bytes());
    aad.push(0);
    aad.extend_from_slice(field.as_bytes());
    aad
}

/// An entry of the store, decoded.
enum Entry {
    Live { key: [u8; KEY_LEN], sequence: u64 },
    Tombstone { at_unix_ms: i64, scrub: u64 },
}

fn decode(name: &str, payload: &[u8], sequence: u64) -> Result<Entry, PersonalError> {
    match payload {
        [LIVE, key @ ..] if key.len() == KEY_LEN => {
            let mut k = [0u8; KEY_LEN];
            k.copy_from_slice(key);
            Ok(Entry::Live { key: k, sequence })
        }
        [TOMBSTONE, rest @ ..] if rest.len() == 16 => {
            let at = i64::from_be_bytes(rest[..8].try_into().unwrap_or_default());
            let scrub = u64::from_be_bytes(rest[8..].try_into().unwrap_or_default());
            Ok(Entry::Tombstone { at_unix_ms: at, scrub })
        }
        _ => Err(PersonalError::Malformed(name.to_string())),
    }
}

fn tombstone(at_unix_ms: i64, scrub: u64) -> Bytes {
    let mut value = Vec::with_capacity(17);
    value.push(TOMBSTONE);
    value.extend_from_slice(&at_unix_ms.to_be_bytes());
    value.extend_from_slice(&scrub.to_be_bytes());
    value.into()
}

/// The stream's configuration: file storage, `replicas` replicas, nothing
/// deleted by limits, purges denied, deletes allowed (the scrub), reads on
/// the leader.
pub fn stream_config(replicas: usize) -> stream::Config {
    stream::Config {
        name: STREAM.into(),
        description: Some("Personal-data keys (crypto-shredding): one per data subject; erased by tombstone".into()),
        subjects: vec![format!("{SUBJECT_PREFIX}>")],
        storage: stream::StorageType::File,
        num_replicas: replicas.max(1),
        retention: stream::RetentionPolicy::Limits,
        deny_delete: false,
        deny_purge: true,
        allow_direct: false,
        ..Default::default()
    }
}

/// The key store.
#[derive(Clone)]
pub struct KeyStore {
    js: jetstream::Context,
    stream: stream::Stream,
    cache: moka::sync::Cache<String, Arc<[u8; KEY_LEN]>>,
    rng: Arc<SystemRandom>,
}

impl KeyStore {
    /// Open the store, making its stream (with `replicas` replicas) if it is
    /// missing. An existing stream that could lose keys (limits that delete,
    /// purges allowed, memory storage) is refused.
    pub async fn connect(js: jetstream::Context, replicas: usize) -> Result<Self, PersonalError> {
        let mut stream = match js.get_stream(STREAM).await {
            Ok(stream) => stream,
            Err(_) => js.get_or_create_stream(stream_config(replicas)).await.map_err(unavailable)?,
        };
        let config = &stream.info().await.map_err(unavailable)?.config;
        let lossy = config.storage != stream::StorageType::File
            || !config.deny_purge
            || config.max_age != Duration::ZERO
            || config.max_messages > 0
            || config.max_bytes > 0
            || config.max_messages_per_subject > 0
            || config.retention != stream::RetentionPolicy::Limits;
        if lossy {
            return Err(PersonalError::Unavailable(format!(
                "stream {STREAM} could lose keys (limits, purges, retention or storage); refusing it"
            )));
        }
        let cache = moka::sync::Cache::builder().max_capacity(200_000).time_to_live(CACHE_TTL).build();
        Ok(Self { js, stream, cache, rng: Arc::new(SystemRandom::new()) })
    }

    /// Keep live keys in memory for `ttl` instead of [`CACHE_TTL`] (how long
    /// another process's erasure may take to reach this one).
    pub fn with_cache_ttl(mut self, ttl: Duration) -> Self {
        self.cache = moka::sync::Cache::builder().max_capacity(200_000).time_to_live(ttl).build();
        self
    }

    async fn entry(&self, name: &str) -> Result<Option<Entry>, PersonalError> {
        match self.stream.get_last_raw_message_by_subject(&format!("{SUBJECT_PREFIX}{name}")).await {
            Ok(message) => decode(name, &message.payload, message.sequence).map(Some),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The state of `name`'s key.
    pub async fn state(&self, name: &str) -> Result<KeyState, PersonalError> {
        check_name(name)?;
        Ok(match self.entry(name).await? {
            None => KeyState::Missing,
            Some(Entry::Live { .. }) => KeyState::Live,
            Some(Entry::Tombstone { at_unix_ms, .. }) => KeyState::Erased { at_unix_ms },
        })
    }

    /// Publish `value` on `name`'s subject if its last sequence is
    /// `expected`; `Ok(false)` if it is not.
    async fn publish_if(&self, name: &str, value: Bytes, expected: u64) -> Result<bool, PersonalError> {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        let ack = self
            .js
            .publish_with_headers(format!("{SUBJECT_PREFIX}{name}"), headers, value)
            .await
            .map_err(unavailable)?;
        match ack.await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    /// The live key of `name`, made if there is none; `None` once erased.
    async fn key_for_sealing(&self, name: &str) -> Result<Option<Arc<[u8; KEY_LEN]>>, PersonalError> {
        if let Some(key) = self.cache.get(name) {
            return Ok(Some(key));
        }
        // Two tries: a lost race to make it reads the winner's key.
        for _ in 0..2 {
            match self.entry(name).await? {
                Some(Entry::Live { key, .. }) => {
                    let key = Arc::new(key);
                    self.cache.insert(name.to_string(), key.clone());
                    return Ok(Some(key));
                }
                Some(Entry::Tombstone { .. }) => return Ok(None),
                None => {
                    let mut fresh = [0u8; KEY_LEN];
                    self.rng.fill(&mut fresh).map_err(|_| unavailable("no randomness"))?;
                    let mut value = Vec::with_capacity(1 + KEY_LEN);
                    value.push(LIVE);
                    value.extend_from_slice(&fresh);
                    if self.publish_if(name, value.into(), 0).await? {
                        let key = Arc::new(fresh);
                        self.cache.insert(name.to_string(), key.clone());
                        return Ok(Some(key));
                    }
                }
            }
        }
        Err(PersonalError::Unavailable(format!("key {name} changed twice while it was being made")))
    }

    /// The live key of `name` for opening.
    async fn key_for_opening(&self, name: &str) -> Result<Option<Arc<[u8; KEY_LEN]>>, PersonalError> {
        if let Some(key) = self.cache.get(name) {
            return Ok(Some(key));
        }
        match self.entry(name).await? {
            Some(Entry::Live { key, .. }) => {
                let key = Arc::new(key);
                self.cache.insert(name.to_string(), key.clone());
                Ok(Some(key))
            }
            Some(Entry::Tombstone { .. }) => Ok(None),
            None => Err(PersonalError::Missing(name.to_string())),
        }
    }

    /// Seal `plain` as `field` under `name`'s key (made on first use).
    /// `None` once `name` was erased: nothing is sealed under it again.
    pub async fn seal(&self, name: &str, field: &str, plain: &[u8]) -> Result<Option<Sealed>, PersonalError> {
        check_name(name)?;
        let Some(key) = self.key_for_sealing(name).await? else { return Ok(None) };
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| unavailable("no randomness"))?;
        let mut sealed = plain.to_vec();
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key[..]).map_err(|_| unavailable("bad key length"))?);
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(name, field).as_slice()),
            &mut sealed,
        )
        .map_err(|_| unavailable("sealing failed"))?;
        Ok(Some(Sealed { key: name.to_string(), nonce: nonce.to_vec(), ciphertext: sealed }))
    }

    /// Open `sealed` as `field`: the plaintext, or [`Opened::Erased`].
    pub async fn open(&self, sealed: &Sealed, field: &str) -> Result<Opened, PersonalError> {
        check_name(&sealed.key)?;
        let Some(key) = self.key_for_opening(&sealed.key).await? else { return Ok(Opened::Erased) };
        let corrupt = || PersonalError::Corrupt { key: sealed.key.clone(), field: field.to_string() };
        let nonce = Nonce::try_assume_unique_for_key(&sealed.nonce).map_err(|_| corrupt())?;
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key[..]).map_err(|_| corrupt())?);
        let mut bytes = sealed.ciphertext.clone();
        let plain = key
            .open_in_place(nonce, Aad::from(aad(&sealed.key, field).as_slice()), &mut bytes)
            .map_err(|_| corrupt())?;
        Ok(Opened::Plain(plain.to_vec()))
    }

    /// Erase `name`'s key at `at_unix_ms`: a tombstone in its place, then the
    /// key's message overwritten. Idempotent; erasing a key never made
    /// leaves a tombstone all the same (nothing is sealed under it later).
    /// `true` if a live key was destroyed by this call.
    pub async fn erase(&self, name: &str, at_unix_ms: i64) -> Result<bool, PersonalError> {
        check_name(name)?;
        self.cache.invalidate(name);
        let mut destroyed = false;
        let scrub = loop {
            match self.entry(name).await? {
                Some(Entry::Tombstone { scrub, .. }) => break scrub,
                Some(Entry::Live { sequence, .. }) => {
                    if self.publish_if(name, tombstone(at_unix_ms, sequence), sequence).await? {
                        destroyed = true;
                        break sequence;
                    }
                }
                None => {
                    if self.publish_if(name, tombstone(at_unix_ms, 0), 0).await? {
                        break 0;
                    }
                }
            }
        };
        self.cache.invalidate(name);
        if scrub > 0
            && let Err(e) = self.stream.delete_message(scrub).await
        {
            // Refused because it is gone already (an earlier erasure, or
            // another replica's at the same time, scrubbed it) is done; any
            // other refusal is retried by erasing again.
            match self.stream.get_raw_message(scrub).await {
                Err(gone) if gone.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
                _ => return Err(unavailable(format!("scrubbing key {name} at {scrub}: {e}"))),
            }
        }
        Ok(destroyed)
    }
}
