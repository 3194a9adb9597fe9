//! The event-sourcing kernel of Gridwork, over NATS JetStream.
//!
//! Owns how a command becomes one commit in a stream, and how commits become read
//! models. Every service stands on it; it holds no domain code.
//!
//! - [`aggregate`]: the pure `decide` / `evolve` shape every aggregate takes, and
//!   the [`aggregate::DomainEvent`] codec (with its upcasting hook).
//! - [`testing`]: given / when / then for aggregates, without NATS.
//! - [`envelope`]: the commit message: subject, headers (CloudEvents attributes,
//!   `traceparent`, command id, principal, schema version) and protobuf body.
//! - [`repository`]: load (warm cache, back-pointer chain, KV snapshots) and
//!   execute (optimistic concurrency enforced by the server, bounded retries,
//!   idempotent command ids).
//! - [`provision`]: idempotent stream and snapshot-bucket set-up, and the
//!   server-version check that refuses unsafe replica settings.
//! - [`projection`]: the runner that turns a stream into SQL rows with its
//!   position in the same transaction, on SQLite or PostgreSQL; rebuild, parking
//!   of poison events, lag, read-your-writes.
//! - [`reactor`]: process managers (commits in, commands out) on the same
//!   runner, with their own position, never rebuilt.
//! - [`trace`]: W3C trace context carried in NATS headers.
//!
//! Must not depend on: tonic, any service crate, any domain type. Errors are
//! `thiserror` enums; mapping them to gRPC status lives in `gridwork-runtime`.

pub mod aggregate;
pub mod command_index;
mod direct;
pub mod envelope;
pub mod error;
pub mod projection;
pub mod provision;
pub mod reactor;
pub mod repository;
pub mod testing;
pub mod trace;

pub use aggregate::{Aggregate, DecodeError, DomainEvent, Upcaster, decode_stored};
pub use command_index::{CommandIndex, CommandTag};
pub use envelope::{CommandKey, CommandMeta, RecordedCommit};
pub use error::{ExecuteError, StoreError};
pub use provision::{StreamSpec, check_server_version, ensure_read_stream, ensure_stream};
pub use reactor::Reactor;
pub use repository::{CommitOutcome, Loaded, Repository, RepositoryOptions};
