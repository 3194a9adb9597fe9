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
//! lost data); deletes are allowed, for the scrub, which deletes only a live
//! key on the tombstone's own subject. Reads go to the stream's leader (no
//! direct gets): a key just made is seen at once. Live keys are cached in
//! memory for at most [`CACHE_TTL`]; every process also listens on
//! `personal.key.>` and forgets a key the moment its tombstone passes, and
//! remembers every erasure it saw for as long as it runs, so a key erased
//! here is never used here again and one erased elsewhere at worst within
//! the TTL (when a reconnect lost the tombstone's message).
//!
//! Not yet: the keys are stored as they are, not wrapped under a key-
//! encryption key (a KMS), so whoever may read the stream may read the keys,
//! and a replica's Raft log keeps a key's bytes until it is compacted (the
//! scrub overwrites the stored message, not the log); NATS permissions
//! cannot divide the stream's read and delete API by subject; a restore of
//! the stream from a backup taken before an erasure brings the key back —
//! replay the erasures recorded in the event streams after one.

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

/// What views show where a sealed value cannot be opened (its key missing
/// from the store, or the value altered): one field, never the whole read.
pub const UNAVAILABLE: &str = "[unavailable]";

/// A read model's column ([`to_column`]) for a view: `plain` where nothing
/// was sealed (earlier events), else [`open_for_view`]; a column that does
/// not decode is [`UNAVAILABLE`] too, with a warning.
pub async fn open_column_for_view(
    keys: &KeyStore,
    plain: String,
    column: &str,
    field: &str,
) -> Result<String, PersonalError> {
    match from_column(column) {
        Ok(None) => Ok(plain),
        Ok(Some(sealed)) => open_for_view(keys, &sealed, field).await,
        Err(e) => {
            tracing::warn!(field, error = %e, "a read model's sealed column that does not decode is shown as unavailable");
            Ok(UNAVAILABLE.to_string())
        }
    }
}

/// Open `sealed` as `field` for a view: the text, [`ERASED`], or
/// [`UNAVAILABLE`] with a warning naming the key (never the text) when the
/// key is missing or the value does not open. Only an unreachable store is
/// an error (retry).
pub async fn open_for_view(keys: &KeyStore, sealed: &Sealed, field: &str) -> Result<String, PersonalError> {
    match keys.open(sealed, field).await {
        Ok(opened) => Ok(opened.text()),
        Err(e @ PersonalError::Unavailable(_)) => Err(e),
        Err(e) => {
            tracing::warn!(key = %sealed.key, field, error = %e, "a sealed value that does not open is shown as unavailable");
            Ok(UNAVAILABLE.to_string())
        }
    }
}

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
    /// The store's stream is configured so that keys could be lost, come
    /// back or be copied out: not retried, fixed by an operator.
    #[error("{0}")]
    Unsafe(String),
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

/// The key of a report's personal data — its reporter's
/// account and everything sealed for that reporter elsewhere (a rating
/// comment in dispatch): `intake.incident.<incident id>`. One key per
/// reporter, so one erasure reaches every copy.
pub fn report_key(incident_id: &str) -> Result<String, PersonalError> {
    key_name("intake", "incident", incident_id)
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
    /// Every erasure this process made or saw go by: never opened again
    /// here, whatever a cache or a lagging read says.
    erased: Arc<std::sync::RwLock<std::collections::HashSet<String>>>,
    rng: Arc<SystemRandom>,
}

/// The configuration problems that could lose, resurrect or copy a key.
fn unsafe_settings(config: &stream::Config, replicas: usize) -> Vec<String> {
    let mut found = Vec::new();
    let mut check = |bad: bool, what: &str| {
        if bad {
            found.push(what.to_string());
        }
    };
    check(config.storage != stream::StorageType::File, "memory storage");
    check(config.retention != stream::RetentionPolicy::Limits, "retention other than limits");
    check(config.max_age != Duration::ZERO, "max_age");
    check(config.max_messages > 0 || config.max_bytes > 0, "max_msgs or max_bytes");
    check(config.max_messages_per_subject > 0, "max_msgs_per_subject");
    check(!config.deny_purge, "purges allowed");
    check(config.deny_delete, "deletes denied (the scrub needs them)");
    check(config.sealed, "sealed");
    check(config.no_ack, "no_ack");
    check(config.mirror.is_some() || config.sources.as_ref().is_some_and(|s| !s.is_empty()), "a mirror or sources");
    check(config.republish.is_some(), "republish (copies keys out)");
    check(config.subject_transform.is_some(), "a subject transform");
    // Per-message TTLs (2.11) are not visible without async-nats'
    // `server_2_11` feature; publishes here never ask for one.
    check(config.persist_mode.is_some_and(|m| m != stream::PersistenceMode::Default), "asynchronous persistence");
    check(config.num_replicas < replicas.max(1), "fewer replicas than the event streams");
    found
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
        let found = unsafe_settings(config, replicas);
        if !found.is_empty() {
            return Err(PersonalError::Unsafe(format!(
                "stream {STREAM} could lose, bring back or copy keys ({}); refusing it",
                found.join(", ")
            )));
        }
        let cache = moka::sync::Cache::builder().max_capacity(200_000).time_to_live(CACHE_TTL).build();
        let store = Self { js, stream, cache, erased: Arc::default(), rng: Arc::new(SystemRandom::new()) };
        store.listen().await?;
        Ok(store)
    }

    /// Forget a key the moment its tombstone passes (a core subscription on
    /// the stream's subjects: every publish reaches it).
    async fn listen(&self) -> Result<(), PersonalError> {
        use futures::StreamExt as _;
        let mut tombstones = self.js.client().subscribe(format!("{SUBJECT_PREFIX}>")).await.map_err(unavailable)?;
        let (cache, erased) = (self.cache.clone(), Arc::downgrade(&self.erased));
        tokio::spawn(async move {
            while let Some(message) = tombstones.next().await {
                if message.payload.first() != Some(&TOMBSTONE) {
                    continue;
                }
                let Some(name) = message.subject.as_str().strip_prefix(SUBJECT_PREFIX) else { continue };
                let Some(erased) = erased.upgrade() else { return };
                erased.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_string());
                cache.invalidate(name);
            }
        });
        Ok(())
    }

    fn seen_erased(&self, name: &str) -> bool {
        self.erased.read().unwrap_or_else(std::sync::PoisonError::into_inner).contains(name)
    }

    /// Cache `key` for `name`, unless `name` was erased meanwhile.
    fn remember(&self, name: &str, key: [u8; KEY_LEN]) -> Option<Arc<[u8; KEY_LEN]>> {
        let key = Arc::new(key);
        // Checked after inserting too: an erasure between the check and the
        // insert takes it out again.
        if self.seen_erased(name) {
            return None;
        }
        self.cache.insert(name.to_string(), key.clone());
        if self.seen_erased(name) {
            self.cache.invalidate(name);
            return None;
        }
        Some(key)
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
        if self.seen_erased(name) {
            return Ok(None);
        }
        if let Some(key) = self.cache.get(name) {
            return Ok(Some(key));
        }
        // Two tries: a lost race to make it reads the winner's key.
        for _ in 0..2 {
            match self.entry(name).await? {
                Some(Entry::Live { key, .. }) => return Ok(self.remember(name, key)),
                Some(Entry::Tombstone { .. }) => return Ok(None),
                None => {
                    let mut fresh = [0u8; KEY_LEN];
                    self.rng.fill(&mut fresh).map_err(|_| unavailable("no randomness"))?;
                    let mut value = Vec::with_capacity(1 + KEY_LEN);
                    value.push(LIVE);
                    value.extend_from_slice(&fresh);
                    if self.publish_if(name, value.into(), 0).await? {
                        return Ok(self.remember(name, fresh));
                    }
                }
            }
        }
        Err(PersonalError::Unavailable(format!("key {name} changed twice while it was being made")))
    }

    /// The live key of `name` for opening.
    async fn key_for_opening(&self, name: &str) -> Result<Option<Arc<[u8; KEY_LEN]>>, PersonalError> {
        if self.seen_erased(name) {
            return Ok(None);
        }
        if let Some(key) = self.cache.get(name) {
            return Ok(Some(key));
        }
        match self.entry(name).await? {
            Some(Entry::Live { key, .. }) => Ok(self.remember(name, key)),
            // Final: remembered, never asked again.
            Some(Entry::Tombstone { .. }) => {
                self.erased.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_string());
                Ok(None)
            }
            None => Err(PersonalError::Missing(name.to_string())),
        }
    }

    /// Seal `plain` as `field` under `name`'s key (made on first use).
    /// `None` once `name` was erased: nothing is sealed under it again.
    pub async fn seal(&self, name: &str, field: &str, plain: &[u8]) -> Result<Option<Sealed>, PersonalError> {
        check_name(name)?;
        let Some(key) = self.key_for_sealing(name).await? else { return Ok(None) };
        self.seal_with(name, &key, field, plain).map(Some)
    }

    /// Seal under `name`'s key only if it exists: for a service that may
    /// read another's keys but not make them (dispatch sealing a reporter's
    /// comment under the report's key in intake). `None` once erased;
    /// [`PersonalError::Missing`] if it was never made.
    pub async fn seal_existing(&self, name: &str, field: &str, plain: &[u8]) -> Result<Option<Sealed>, PersonalError> {
        check_name(name)?;
        let Some(key) = self.key_for_opening(name).await? else { return Ok(None) };
        self.seal_with(name, &key, field, plain).map(Some)
    }

    fn seal_with(&self, name: &str, key: &[u8; KEY_LEN], field: &str, plain: &[u8]) -> Result<Sealed, PersonalError> {
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
        Ok(Sealed { key: name.to_string(), nonce: nonce.to_vec(), ciphertext: sealed })
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
        self.erased.write().unwrap_or_else(std::sync::PoisonError::into_inner).insert(name.to_string());
        self.cache.invalidate(name);
        let subject = format!("{SUBJECT_PREFIX}{name}");
        let mut destroyed = false;
        let mut scrub = None;
        for _ in 0..10 {
            let last = match self.stream.get_last_raw_message_by_subject(&subject).await {
                Ok(message) => Some(message),
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
                Err(e) => return Err(unavailable(e)),
            };
            let (expected, names) = match last.as_ref().map(|m| (decode(name, &m.payload, m.sequence), m.sequence)) {
                Some((Ok(Entry::Tombstone { scrub: earlier, .. }), _)) => {
                    scrub = Some(earlier);
                    break;
                }
                Some((Ok(Entry::Live { sequence, .. }), _)) => (sequence, sequence),
                // Something that is neither: tombstoned over all the same,
                // never left to block the erasure.
                Some((Err(_), sequence)) => (sequence, 0),
                None => (0, 0),
            };
            if self.publish_if(name, tombstone(at_unix_ms, names), expected).await? {
                destroyed = names > 0;
                scrub = Some(names);
                break;
            }
        }
        let Some(scrub) = scrub else {
            return Err(PersonalError::Unavailable(format!("key {name} kept changing while it was being erased")));
        };
        self.cache.invalidate(name);
        if scrub > 0 {
            self.scrub(name, &subject, scrub).await?;
        }
        Ok(destroyed)
    }

    /// Overwrite the message at `sequence` if it is `name`'s live key; gone
    /// already (an earlier erasure, or another replica's at the same time)
    /// is done. Anything else there is left alone: a tombstone names only
    /// its own key.
    async fn scrub(&self, name: &str, subject: &str, sequence: u64) -> Result<(), PersonalError> {
        match self.stream.get_raw_message(sequence).await {
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => return Ok(()),
            Err(e) => return Err(unavailable(e)),
            Ok(message) if message.subject.as_str() == subject && message.payload.first() == Some(&LIVE) => {}
            Ok(_) => {
                tracing::warn!(key = name, sequence, "a tombstone names a message that is not its key; left alone");
                return Ok(());
            }
        }
        match self.stream.delete_message(sequence).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(PersonalError::Unavailable(format!("key {name} at {sequence} was not scrubbed"))),
            Err(e) => match self.stream.get_raw_message(sequence).await {
                Err(gone) if gone.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(()),
                _ => Err(unavailable(format!("scrubbing key {name} at {sequence}: {e}"))),
            },
        }
    }
}

/// A sealed value as a read model's text column keeps it: the encoded
/// [`Sealed`] in hex, "" for none. Read models keep personal data sealed,
/// so an erasure reaches them without a rebuild.
pub fn to_column(sealed: Option<&Sealed>) -> String {
    use prost::Message as _;
    sealed.map(|s| s.encode_to_vec().iter().map(|b| format!("{b:02x}")).collect()).unwrap_or_default()
}

/// The sealed value in a read model's column ([`to_column`]).
pub fn from_column(column: &str) -> Result<Option<Sealed>, PersonalError> {
    use prost::Message as _;
    if column.is_empty() {
        return Ok(None);
    }
    let malformed = || PersonalError::Malformed(format!("a read model's sealed column ({} characters)", column.len()));
    if !column.len().is_multiple_of(2) {
        return Err(malformed());
    }
    let bytes = (0..column.len())
        .step_by(2)
        .map(|i| column.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(malformed)?;
    Sealed::decode(bytes.as_slice()).map(Some).map_err(|_| malformed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_round_trips_through_a_column_and_garbage_is_refused() {
        let sealed = Sealed { key: "intake.incident.a".into(), nonce: vec![1; 12], ciphertext: vec![0, 255, 7] };
        assert_eq!(from_column(&to_column(Some(&sealed))).expect("decodes"), Some(sealed));
        assert_eq!(to_column(None), "");
        assert_eq!(from_column("").expect("none"), None);
        assert!(from_column("abc").is_err());
        assert!(from_column("zz").is_err());
    }
}
