//! The test harness every Gridwork test stands on.
//!
//! - [`nats`]: a private `nats-server -js` on a free port with a temp store, that
//!   a test can kill and restart (same port, same store).
//! - [`db`]: a fresh SQLite file or a fresh PostgreSQL database per test.
//!   PostgreSQL comes from `GRIDWORK_TEST_POSTGRES_URL`; when it is unset the
//!   test says it skipped, loudly, and returns.
//! - [`auth`]: a per-process signing key the test services trust, tokens, and
//!   clients that send one on every call.
//! - [`tree`]: a small organisation tree registered through the registry's API.
//! - [`init_tracing`]: test logging plus a W3C propagator and an in-process
//!   OpenTelemetry tracer, so trace-continuity tests see real trace ids.
//!
//! Owns no production code path; services depend on it only as a dev-dependency.

pub mod auth;
pub mod db;
pub mod nats;
pub mod tree;

use std::sync::Once;

/// Install test tracing once per process: `RUST_LOG`-filtered output captured by
/// the test runner, W3C trace propagation, and an SDK tracer (no exporter) so spans
/// carry real trace ids.
pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(gridwork_runtime::telemetry::init_for_tests);
}

/// Service settings for a test: the given NATS and database, ports chosen by the
/// harness (services are spawned on `127.0.0.1:0`), R1 streams, no drain delay.
pub fn service_config(nats_url: &str, database_url: &str) -> gridwork_runtime::CommonConfig {
    gridwork_runtime::CommonConfig {
        nats_url: nats_url.into(),
        nats_nkey_file: None,
        nats_creds: None,
        nats_tls_ca: None,
        nats_tls_cert: None,
        nats_tls_key: None,
        database_url: Some(database_url.into()),
        grpc_addr: ([127, 0, 0, 1], 0).into(),
        metrics_addr: ([127, 0, 0, 1], 0).into(),
        log_format: gridwork_runtime::config::LogFormat::Pretty,
        stream_replicas: 1,
        drain_seconds: 0,
        auth: auth::config(),
        // Tests write as one principal far faster than any person: the
        // limits' own test sets them tight (tests/tests/limits.rs).
        tls: gridwork_runtime::config::TlsConfig::default(),
        limits: gridwork_runtime::limits::LimitsConfig {
            write_rate_per_second: 1_000_000.0,
            write_burst: 1_000_000,
            ..Default::default()
        },
    }
}

/// A fresh random id usable as an aggregate id.
pub fn unique_id(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}
