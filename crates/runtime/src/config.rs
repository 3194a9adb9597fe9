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
    /// File holding this service's NATS user nkey seed (`SU…`), for a server
    /// that names its users by nkey (`gridctl nats-users` makes them; see
    /// `deploy/nats/permissions.conf`).
    #[arg(long, env = "NATS_NKEY_FILE")]
    pub nats_nkey_file: Option<std::path::PathBuf>,
    /// A NATS credentials file (user JWT and seed), for a server in operator mode.
    #[arg(long, env = "NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// PEM CA that signed the NATS servers' certificates: connect over TLS
    /// only (and verify the server).
    #[arg(long, env = "NATS_TLS_CA")]
    pub nats_tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate for NATS servers that require one (mTLS).
    #[arg(long, env = "NATS_TLS_CERT", requires = "nats_tls_key")]
    pub nats_tls_cert: Option<std::path::PathBuf>,
    /// PEM key of that client certificate.
    #[arg(long, env = "NATS_TLS_KEY", requires = "nats_tls_cert")]
    pub nats_tls_key: Option<std::path::PathBuf>,
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
    /// Request limits: message size, writes per principal.
    #[command(flatten)]
    pub limits: crate::limits::LimitsConfig,
    /// TLS on the gRPC port (and mTLS with a client CA).
    #[command(flatten)]
    pub tls: TlsConfig,
}

/// TLS on a service's gRPC port. With a certificate and key the service
/// speaks TLS only; with a client CA too, every caller must present a
/// certificate that CA signed (mTLS: the services and tools of the mesh),
/// before its bearer token is even read. Health is served on the same port, so
/// probes speak TLS too (the metrics port stays plaintext).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsConfig {
    /// PEM certificate chain the service presents.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// PEM CA certificate(s) whose client certificates are required (mTLS).
    #[arg(long, env = "TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<std::path::PathBuf>,
}

impl TlsConfig {
    /// The server's TLS settings, if TLS is on.
    pub fn server(&self) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
        use anyhow::Context as _;
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else {
            anyhow::ensure!(
                self.tls_client_ca_file.is_none(),
                "TLS_CLIENT_CA_FILE needs TLS_CERT_FILE and TLS_KEY_FILE"
            );
            return Ok(None);
        };
        let read = |p: &std::path::PathBuf, what: &str| {
            std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))
        };
        let identity = tonic::transport::Identity::from_pem(read(cert, "TLS certificate")?, read(key, "TLS key")?);
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.tls_client_ca_file {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca, "client CA")?));
        }
        // Parsed now, at start, not when the port opens after the streams and
        // projections have started.
        tonic::transport::Server::builder()
            .tls_config(tls.clone())
            .context("TLS_CERT_FILE, TLS_KEY_FILE or TLS_CLIENT_CA_FILE is not usable PEM")?;
        Ok(Some(tls))
    }
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
