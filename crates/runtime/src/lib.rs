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
//!
//! Must not depend on: any service crate or domain type.

pub mod clock;
pub mod config;
pub mod request;
pub mod server;
pub mod status;
pub mod telemetry;
pub mod validate;

pub use config::CommonConfig;
pub use server::{Runtime, ServerHandle};
pub use status::{FieldViolation, ServiceError};
pub use validate::Violations;
