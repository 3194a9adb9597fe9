//! Settings every service shares. Each is an environment variable with a flag of
//! the same meaning; the defaults are the embedded development set-up.

use std::net::SocketAddr;
use std::time::Duration;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Common service settings (`#[command(flatten)]` them into a service's config).
#[derive(Debug, Clone, clap::Args)]
pub struct CommonConfig {
    /// NATS server URL, or several of one cluster, comma-separated.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Read-model database: `sqlite://var/<service>.db?mode=rwc` or `postgres://…`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,
    /// JetStream replicas for this service's stream (1 in development, 3 in production).
    #[arg(long, env = "STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// Seconds between NOT_SERVING and closing the listener on SIGTERM, so
    /// load balancers stop routing first.
    #[arg(long, env = "DRAIN_SECONDS", default_value_t = 5)]
    pub drain_seconds: u64,
    /// Who may call: the keys that sign callers' tokens and what a token must say.
    #[command(flatten)]
    pub auth: gridwork_auth::AuthConfig,
}

impl CommonConfig {
    /// The read-store URL, defaulting to `sqlite://var/<service>.db?mode=rwc`.
    pub fn database_url(&self, service: &str) -> String {
        self.database_url.clone().unwrap_or_else(|| format!("sqlite://var/{service}.db?mode=rwc"))
    }

    /// The drain delay.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_seconds)
    }
}
