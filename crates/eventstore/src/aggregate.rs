//! The aggregate shape: pure `decide` and `evolve`.
//!
//! An aggregate does no IO, reads no clock and draws no random numbers: time, ids
//! and anything looked up elsewhere arrive inside the command. That makes its
//! rules testable given / when / then (see [`crate::testing`]) and makes a retry
//! after a concurrency conflict safe: deciding again on fresher state is just a
//! function call.

use std::fmt::Debug;

/// An event could not be decoded from its stored form.
#[derive(Debug, thiserror::Error)]
#[error("cannot decode {what}: {reason}")]
pub struct DecodeError {
    /// What was being decoded, e.g. the event type.
    pub what: String,
    /// Why it failed.
    pub reason: String,
    /// The data was written by newer code than this (an event type or schema
    /// version this build does not know): not damaged, merely ahead. Loads
    /// answer UNAVAILABLE (an upgraded replica can), projections stall or skip
    /// by their policy — such a commit is never parked as poison.
    pub newer: bool,
}

impl DecodeError {
    /// A decode error for `what` because of `reason`: the bytes are damaged or
    /// do not match their declared type.
    pub fn new(what: impl Into<String>, reason: impl ToString) -> Self {
        Self { what: what.into(), reason: reason.to_string(), newer: false }
    }

    /// `what` was written by newer code: an unknown event type, or a schema
    /// version this build cannot read.
    pub fn unknown(what: impl Into<String>, reason: impl ToString) -> Self {
        Self { what: what.into(), reason: reason.to_string(), newer: true }
    }
}

/// One step of an event type's upcaster chain: turns a stored payload of
/// `event_type` at `from_version` into the payload of `from_version + 1`.
/// Steps are pure functions of the bytes; the chain runs on every read (loads,
/// projections, rebuilds), so stored events are never rewritten.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    /// The event type it applies to.
    pub event_type: &'static str,
    /// The stored version it reads.
    pub from_version: u32,
    /// The step.
    pub upcast: fn(&[u8]) -> Result<Vec<u8>, DecodeError>,
}

/// A domain event and its stored form.
///
/// Events are append-only facts. A change of meaning is a new event type or a new
/// `schema_version`, with an [`Upcaster`] from the old version in
/// [`DomainEvent::upcasters`]; stored events are never rewritten. The rules are
/// in ARCHITECTURE.md, "Schema evolution".
pub trait DomainEvent: Clone + Debug + Send + Sync + Sized + 'static {
    /// Stable type name, e.g. `"sample.ledger.deposited"`; stored in the commit,
    /// never in the subject.
    fn event_type(&self) -> &'static str;
    /// Schema version of [`DomainEvent::encode`]'s output: the current version
    /// of its type.
    fn schema_version(&self) -> u32 {
        1
    }
    /// The event's payload (protobuf).
    fn encode(&self) -> Vec<u8>;
    /// Decode a payload at its type's *current* version (the kernel has run
    /// the upcasters first). An unknown type or another version is
    /// [`DecodeError::unknown`]: written by a build this one does not know.
    fn decode(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<Self, DecodeError>;
    /// The upcaster chain: one step per (type, old version). Empty until a
    /// type's schema changes.
    fn upcasters() -> &'static [Upcaster] {
        &[]
    }
}

/// Decode a stored event: run its upcaster chain from `schema_version` as far
/// as it goes, then [`DomainEvent::decode`].
pub fn decode_stored<E: DomainEvent>(event_type: &str, schema_version: u32, payload: &[u8]) -> Result<E, DecodeError> {
    let mut version = schema_version;
    let mut bytes = std::borrow::Cow::Borrowed(payload);
    while let Some(step) = E::upcasters().iter().find(|u| u.event_type == event_type && u.from_version == version) {
        bytes = std::borrow::Cow::Owned((step.upcast)(&bytes)?);
        version += 1;
    }
    E::decode(event_type, version, &bytes)
}

/// An event-sourced aggregate: state folded from its own events.
pub trait Aggregate: Default + Clone + Debug + Send + Sync + 'static {
    /// Bounded context, the first subject token and the stream's subject prefix,
    /// e.g. `"grid"`.
    const CONTEXT: &'static str;
    /// Aggregate type, the second subject token, e.g. `"incident"`.
    const TYPE: &'static str;
    /// Version of [`Aggregate::encode_state`]; a snapshot with another version is ignored.
    const STATE_VERSION: u32;

    /// What callers ask for.
    type Command: Debug + Send + Sync;
    /// What happened.
    type Event: DomainEvent;
    /// Why a command was refused: a broken rule, named. Stored (as JSON) with
    /// the command's id, so that a retry is refused the same way.
    type Rejection: std::error::Error + serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static;

    /// Decide which events a command produces on this state, or refuse it.
    /// Synchronous and deterministic. An empty vector means "nothing to do"; it
    /// is stored as a no-op (no events), like a refusal, so that both are
    /// checked against the current state by the server and remembered.
    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Rejection>;

    /// Fold one event into the state. Moves data only; never rejects.
    fn evolve(self, event: &Self::Event) -> Self;

    /// Encode the state for a snapshot.
    fn encode_state(&self) -> Vec<u8>;

    /// Decode a snapshot written by [`Aggregate::encode_state`] at [`Aggregate::STATE_VERSION`].
    fn decode_state(bytes: &[u8]) -> Result<Self, DecodeError>;

    /// Roughly how many bytes this state holds: what the warm cache weighs it
    /// by. The encoded snapshot's length unless an aggregate knows better.
    /// The repository measures it when a state is first cached, then every 16
    /// commits — not on every command.
    fn weight(&self) -> usize {
        self.encode_state().len()
    }

    /// Fold many events, in order.
    fn fold<'a>(self, events: impl IntoIterator<Item = &'a Self::Event>) -> Self {
        events.into_iter().fold(self, |state, event| state.evolve(event))
    }
}

/// Checks that an aggregate id can be a subject token and a KV key:
/// 1–128 characters of `[A-Za-z0-9_-]`.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > 128 {
        return Err("must be at most 128 characters".into());
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        return Err("may contain only letters, digits, '_' and '-'".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_id;

    #[test]
    fn ids_that_cannot_be_subject_tokens_are_refused() {
        assert!(validate_id("01JABC-de_f").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a.b").is_err());
        assert!(validate_id("a*").is_err());
        assert!(validate_id("a b").is_err());
        assert!(validate_id(&"x".repeat(129)).is_err());
    }
}
