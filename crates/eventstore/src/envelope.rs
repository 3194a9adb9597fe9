//! The commit message: one JetStream message per command.
//!
//! Subject: `<context>.<aggregate>.<id>`. Body: a protobuf
//! `gridwork.eventstore.v1.Commit` holding every event the command decided. Headers
//! carry what infrastructure reads without decoding the body:
//!
//! | header | meaning |
//! |---|---|
//! | `ce-specversion`, `ce-id`, `ce-source`, `ce-type`, `ce-time` | CloudEvents 1.0 attributes of the commit; `ce-id` is `<subject>@<previous sequence>`, unique per commit |
//! | `traceparent` (and `tracestate`) | W3C trace context of the command |
//! | `Gridwork-Schema-Version` | version of the commit envelope |
//! | `Nats-Msg-Id` | `<subject>/<command id>`: server-side dedupe |
//! | `Nats-Expected-Last-Subject-Sequence` | the sequence the decision was made on; stored with the message, it is the back-pointer the cold path walks |
//!
//! Nothing the body holds is repeated in a header: the command id, the
//! principal and the aggregate are read from the body. (Commits written before
//! 2026-11-24 also carry `ce-subject`, `Gridwork-Command-Id` and
//! `Gridwork-Principal`; nothing reads them.) Every header costs each reader a
//! parse and allocations per message, and the server its bytes.

use async_nats::HeaderMap;
use async_nats::jetstream::message::StreamMessage;
use bytes::Bytes;
use gridwork_proto::gridwork::eventstore::v1 as pb;
use prost::Message as _;

use crate::aggregate::{Aggregate, DecodeError, DomainEvent};

/// Version of the commit envelope (body and headers) written by this crate.
pub const ENVELOPE_VERSION: u32 = 1;

/// Header names.
pub mod headers {
    /// CloudEvents spec version.
    pub const CE_SPECVERSION: &str = "ce-specversion";
    /// CloudEvents id: `<subject>@<previous sequence>`, unique per commit (the
    /// server admits one commit per subject after a given sequence).
    pub const CE_ID: &str = "ce-id";
    /// CloudEvents source: `gridwork/<context>`.
    pub const CE_SOURCE: &str = "ce-source";
    /// CloudEvents type: the event type for a one-event commit, else [`COMMIT_TYPE`].
    pub const CE_TYPE: &str = "ce-type";
    /// CloudEvents time (RFC 3339).
    pub const CE_TIME: &str = "ce-time";
    /// `ce-type` of a commit holding more than one event.
    pub const COMMIT_TYPE: &str = "gridwork.eventstore.v1.Commit";
    /// `ce-type` of a command that changed nothing (no events).
    pub const NO_OP_TYPE: &str = "gridwork.eventstore.v1.NoOp";
    /// `ce-type` of a command the aggregate refused (no events).
    pub const REJECTED_TYPE: &str = "gridwork.eventstore.v1.Rejected";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// W3C trace state.
    pub const TRACESTATE: &str = "tracestate";
    /// Envelope schema version.
    pub const SCHEMA_VERSION: &str = "Gridwork-Schema-Version";
    /// Server-side dedupe key.
    pub const MSG_ID: &str = "Nats-Msg-Id";
    /// Optimistic-concurrency precondition, and the stored back-pointer.
    pub const EXPECTED_LAST_SUBJECT_SEQUENCE: &str = "Nats-Expected-Last-Subject-Sequence";
}

/// Who issued a command, when, and under which id. Time is injected: the kernel
/// never reads a clock on the caller's behalf.
#[derive(Debug, Clone)]
pub struct CommandMeta {
    /// Client command id; retries with the same id apply once.
    pub command_id: String,
    /// The acting principal, e.g. `"user:42"`.
    pub principal: String,
    /// When the command was decided, milliseconds since the Unix epoch.
    pub decided_at_unix_ms: i64,
    /// [`request_digest`] of the client's request, 0 when there is none (a
    /// process manager's command): the same command id with another digest is
    /// refused.
    pub request_digest: u64,
}

impl CommandMeta {
    /// The meta of a client's command.
    pub fn new(key: CommandKey, principal: String, decided_at_unix_ms: i64) -> Self {
        Self { command_id: key.id, principal, decided_at_unix_ms, request_digest: key.request_digest }
    }
}

/// A client's command id and the digest of the request it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandKey {
    /// The command id.
    pub id: String,
    /// [`request_digest`] of the request.
    pub request_digest: u64,
}

/// FNV-1a 64 of a request's encoding: what the command id stands for.
pub fn request_digest(encoded: &[u8]) -> u64 {
    let digest =
        encoded.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    // 0 means "no digest".
    digest.max(1)
}

/// What a command decided, as stored.
#[derive(Debug)]
pub enum Decision<'a, E> {
    /// These events (at least one).
    Events(&'a [E]),
    /// Nothing to do.
    NoOp,
    /// Refused; the refusal as JSON.
    Rejected(&'a str),
}

/// The subject of an aggregate instance.
pub fn subject<A: Aggregate>(id: &str) -> String {
    format!("{}.{}.{}", A::CONTEXT, A::TYPE, id)
}

/// The dedupe key of a command on a subject: scoped, so the same command id on two
/// aggregates are two commands.
pub fn msg_id(subject: &str, command_id: &str) -> String {
    format!("{subject}/{command_id}")
}

impl<E> Clone for Decision<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Decision<'_, E> {}

/// Build the headers and body of a commit.
pub fn encode_commit<A: Aggregate>(
    id: &str,
    expected_sequence: u64,
    meta: &CommandMeta,
    decision: Decision<'_, A::Event>,
) -> (HeaderMap, Bytes) {
    let subject = subject::<A>(id);
    let (events, outcome, rejection): (&[A::Event], _, _) = match decision {
        Decision::Events(events) => (events, pb::Outcome::Applied, String::new()),
        Decision::NoOp => (&[], pb::Outcome::NoOp, String::new()),
        Decision::Rejected(json) => (&[], pb::Outcome::Rejected, json.to_string()),
    };
    let body = pb::Commit {
        command_id: meta.command_id.clone(),
        aggregate_type: A::TYPE.to_string(),
        aggregate_id: id.to_string(),
        events: events
            .iter()
            .map(|e| pb::CommitEvent {
                event_type: e.event_type().to_string(),
                schema_version: e.schema_version(),
                payload: e.encode(),
            })
            .collect(),
        decided_at_unix_ms: meta.decided_at_unix_ms,
        principal: meta.principal.clone(),
        outcome: outcome as i32,
        rejection,
        request_digest: meta.request_digest,
    };
    // Names are static, values moved in: a commit's headers cost one
    // allocation per value. (The body's content type, protobuf, is fixed and
    // documented rather than repeated in every message.)
    let msg_id = msg_id(&subject, &meta.command_id);
    let mut h = HeaderMap::new();
    h.insert(name(headers::CE_SPECVERSION), "1.0");
    // Unique per commit: the server admits one commit per subject after a
    // given sequence.
    h.insert(name(headers::CE_ID), format!("{subject}@{expected_sequence}"));
    h.insert(name(headers::CE_SOURCE), format!("gridwork/{}", A::CONTEXT));
    let ce_type = match (outcome, events) {
        (pb::Outcome::NoOp, _) => headers::NO_OP_TYPE,
        (pb::Outcome::Rejected, _) => headers::REJECTED_TYPE,
        (_, [one]) => one.event_type(),
        _ => headers::COMMIT_TYPE,
    };
    h.insert(name(headers::CE_TYPE), ce_type);
    h.insert(name(headers::CE_TIME), rfc3339(meta.decided_at_unix_ms));
    h.insert(name(headers::SCHEMA_VERSION), ENVELOPE_VERSION.to_string());
    h.insert(name(headers::MSG_ID), msg_id);
    h.insert(name(headers::EXPECTED_LAST_SUBJECT_SEQUENCE), expected_sequence.to_string());
    crate::trace::inject_current(&mut h);
    (h, Bytes::from(body.encode_to_vec()))
}

/// A header name without copying it.
const fn name(static_name: &'static str) -> async_nats::header::HeaderName {
    async_nats::header::HeaderName::from_static(static_name)
}

fn rfc3339(unix_ms: i64) -> String {
    let nanos = i128::from(unix_ms) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// A stored commit with its position, before its events are decoded into a domain
/// type. Projections receive these.
#[derive(Debug, Clone)]
pub struct RecordedCommit {
    /// Stream sequence of this commit.
    pub sequence: u64,
    /// Sequence of the previous commit on the same subject (0 if first).
    pub previous: u64,
    /// The subject, `<context>.<aggregate>.<id>`.
    pub subject: String,
    /// All headers as stored.
    pub headers: HeaderMap,
    /// The decoded body.
    pub body: pb::Commit,
    /// The envelope version it was written with (`Gridwork-Schema-Version`).
    pub envelope_version: u32,
    /// When the server stored it, ms since the epoch (the stream's own clock,
    /// unlike the body's `decided_at_unix_ms`, which a process manager copies
    /// from the commit it reacts to); 0 where the reader did not say.
    pub stored_at_unix_ms: i64,
    /// Skip events this build does not know instead of failing on them (a
    /// projection's [`crate::projection::UnknownEvents::Skip`]).
    skip_unknown: bool,
}

impl RecordedCommit {
    /// Parse a message read from the stream.
    pub fn from_parts(sequence: u64, subject: &str, headers: HeaderMap, payload: &[u8]) -> Result<Self, DecodeError> {
        Self::parse(sequence, subject, headers, payload).map_err(|(e, _)| e)
    }

    /// [`RecordedCommit::from_parts`], giving the headers back with the error
    /// (a projection parks the message as it was).
    pub fn parse(
        sequence: u64,
        subject: &str,
        headers: HeaderMap,
        payload: &[u8],
    ) -> Result<Self, (DecodeError, HeaderMap)> {
        let (envelope_version, body, previous) = match Self::check(sequence, &headers, payload) {
            Ok(parts) => parts,
            Err(e) => return Err((e, headers)),
        };
        Ok(Self {
            sequence,
            previous,
            subject: subject.to_string(),
            headers,
            body,
            envelope_version,
            stored_at_unix_ms: 0,
            skip_unknown: false,
        })
    }

    fn check(sequence: u64, headers: &HeaderMap, payload: &[u8]) -> Result<(u32, pb::Commit, u64), DecodeError> {
        // The envelope's version before anything else: a newer envelope may not
        // decode as this one at all, and that is not damage.
        let envelope_version = match find_header(headers, headers::SCHEMA_VERSION).map(|v| v.parse::<u32>()) {
            None => 1, // written before the header existed
            Some(Ok(v)) if v <= ENVELOPE_VERSION => v,
            Some(v) => {
                return Err(DecodeError::unknown(
                    format!("commit at sequence {sequence}"),
                    format!("envelope version {v:?} is not one this build reads"),
                ));
            }
        };
        let body =
            pb::Commit::decode(payload).map_err(|e| DecodeError::new(format!("commit at sequence {sequence}"), e))?;
        let previous = header_u64(headers, headers::EXPECTED_LAST_SUBJECT_SEQUENCE).ok_or_else(|| {
            DecodeError::new(
                format!("commit at sequence {sequence}"),
                "missing Nats-Expected-Last-Subject-Sequence header",
            )
        })?;
        Ok((envelope_version, body, previous))
    }

    /// The same commit, with events of types or versions this build does not
    /// know left out of [`RecordedCommit::decode_events`] (counted in
    /// `eventstore_unknown_events_skipped_total`) instead of failing it.
    pub fn skipping_unknown_events(mut self) -> Self {
        self.skip_unknown = true;
        self
    }

    /// Parse a message fetched with a direct get.
    pub fn from_stream_message(m: StreamMessage) -> Result<Self, DecodeError> {
        let stored_at = unix_ms(m.time);
        Ok(Self::from_parts(m.sequence, m.subject.as_str(), m.headers, &m.payload)?.stored_at(stored_at))
    }

    /// The same commit, stored by the server at `unix_ms`.
    pub fn stored_at(mut self, unix_ms: i64) -> Self {
        self.stored_at_unix_ms = unix_ms;
        self
    }

    /// The command id that produced this commit.
    pub fn command_id(&self) -> &str {
        &self.body.command_id
    }

    /// Who issued the command.
    pub fn principal(&self) -> &str {
        &self.body.principal
    }

    /// What the command came to (commits from before outcomes were recorded
    /// count as applied).
    pub fn outcome(&self) -> pb::Outcome {
        match pb::Outcome::try_from(self.body.outcome) {
            Ok(pb::Outcome::Unspecified) | Err(_) => pb::Outcome::Applied,
            Ok(o) => o,
        }
    }

    /// The aggregate id, the last subject token.
    pub fn aggregate_id(&self) -> &str {
        &self.body.aggregate_id
    }

    /// For readers that decode another context's payloads themselves, by type
    /// name: the events, provided the envelope and every event are at the
    /// `version` the reader knows. Anything newer is [`DecodeError::unknown`]
    /// (the projection stalls, never parks and never misreads the bytes);
    /// event types the reader does not match are its own to ignore.
    pub fn events_at_version(&self, version: u32) -> Result<&[pb::CommitEvent], DecodeError> {
        let what = || format!("commit at sequence {}", self.sequence);
        if self.envelope_version > ENVELOPE_VERSION {
            return Err(DecodeError::unknown(what(), format!("envelope version {} is newer", self.envelope_version)));
        }
        if let Some(e) = self.body.events.iter().find(|e| e.schema_version != version) {
            return Err(DecodeError::unknown(
                what(),
                format!("{} at schema version {}, this reader knows {version}", e.event_type, e.schema_version),
            ));
        }
        Ok(&self.body.events)
    }

    /// Decode the events into a domain type, each through its upcaster chain.
    /// A commit in an envelope newer than this build, or an event it does not
    /// know, is [`DecodeError::unknown`] — unless the commit was marked
    /// [`RecordedCommit::skipping_unknown_events`], which leaves such events out.
    pub fn decode_events<E: DomainEvent>(&self) -> Result<Vec<E>, DecodeError> {
        if self.envelope_version > ENVELOPE_VERSION {
            return Err(DecodeError::unknown(
                format!("commit at sequence {}", self.sequence),
                format!("envelope version {} is newer than this build's {ENVELOPE_VERSION}", self.envelope_version),
            ));
        }
        let mut events = Vec::with_capacity(self.body.events.len());
        for e in &self.body.events {
            match crate::aggregate::decode_stored::<E>(&e.event_type, e.schema_version, &e.payload) {
                Ok(event) => events.push(event),
                Err(err) if err.newer && self.skip_unknown => {
                    metrics::counter!("eventstore_unknown_events_skipped_total", "event_type" => e.event_type.clone())
                        .increment(1);
                    tracing::debug!(sequence = self.sequence, event_type = %e.event_type, version = e.schema_version,
                                    "skipping an event this build does not know");
                }
                Err(err) => return Err(err),
            }
        }
        Ok(events)
    }

    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// A header's (first) value. A scan of the few headers a commit has:
/// `HeaderMap::get` with a `&str` builds an owned header name and hashes it
/// with SipHash on every call, which on the read path of every projection
/// (three lookups per commit) cost more than the rest of parsing the envelope.
pub fn find_header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.iter().find(|(n, _)| AsRef::<str>::as_ref(*n) == name).and_then(|(_, values)| values.first()).map(|v| v.as_str())
}

fn header_u64(h: &HeaderMap, name: &str) -> Option<u64> {
    find_header(h, name).and_then(|v| v.parse().ok())
}

/// A server timestamp in ms since the epoch.
pub(crate) fn unix_ms(time: async_nats::datetime::DateTime) -> i64 {
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}
