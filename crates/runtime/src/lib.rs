//! The service runtime: everything a Gridwork service needs that is not its domain.
//!
//! - [`config`]: common settings from the environment, overridable with flags.
//! - [`telemetry`]: `tracing` (JSON or pretty, `RUST_LOG`), OTLP export when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set, W3C trace context propagation.
//! - [`status`]: the one mapping from errors to `tonic::Status`, with
//!   `google.rpc.BadRequest` field violations.
//! - [`server`]: connect NATS and the read store, serve gRPC with health and
//!   reflection, Prometheus `/metrics`, readiness that follows NATS and the
//!   database, and a graceful drain on SIGTERM.
//! - [`clock`]: the injected clock; aggregates never read time themselves.
//! - the allocator: every binary that links the runtime (services, gridctl,
//!   their tests and benchmarks) allocates with mimalloc. A command or a
//!   projected commit makes many small, short-lived allocations (headers,
//!   protobuf strings); glibc's malloc spent a sixth of the append path's
//!   client time freeing and consolidating them. The default feature
//!   `mimalloc`; without it, the system allocator.
//!
//! Must not depend on: any service crate or domain type.

pub mod clock;
pub mod config;
pub mod limits;
pub mod page;
pub mod request;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod validate;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use config::CommonConfig;
pub use server::{Runtime, ServerHandle};
pub use status::{FieldViolation, ServiceError};
pub use validate::Violations;
