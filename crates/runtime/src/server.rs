//! Connecting to NATS and the read store, and serving gRPC.
//!
//! Health follows readiness, not liveness of the process: the overall status
//! (`""`) and each named service are SERVING only while NATS is connected, the
//! read store answers and none of its projections is stalled, and go NOT_SERVING
//! the moment one of these fails or a shutdown begins. Shutdown: NOT_SERVING, wait the drain delay so load balancers stop
//! routing, then stop accepting and finish in-flight calls.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::connection::State;
use async_nats::jetstream;
use gridwork_auth::{AuthConfig, AuthLayer, Verifier};
use gridwork_eventstore::projection::ReadStore;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::Extractor;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// A service's connections: NATS, JetStream and (optionally) its read store.
#[derive(Clone)]
pub struct Runtime {
    /// The service's name, for logs and metrics.
    pub service: &'static str,
    /// The NATS client (reconnects by itself).
    pub nats: async_nats::Client,
    /// JetStream on that client.
    pub js: jetstream::Context,
    /// The read-model database, when the service has one.
    pub store: Option<ReadStore>,
    /// Verifies callers' tokens; a runtime without one does not serve.
    pub verifier: Option<Arc<Verifier>>,
    /// Request limits (message size, writes per principal).
    pub limits: crate::limits::LimitsConfig,
    /// TLS on the gRPC port, if configured.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

impl Runtime {
    /// Start the command index of `stream` in the read store (one per stream,
    /// shared by every repository on it): the idempotency horizon.
    pub async fn command_index(&self, stream: &str) -> anyhow::Result<gridwork_eventstore::CommandIndex> {
        let store = self.store.clone().ok_or_else(|| anyhow::anyhow!("the command index needs a read store"))?;
        let horizon = gridwork_eventstore::RepositoryOptions::default().idempotency_horizon;
        Ok(gridwork_eventstore::CommandIndex::start(self.js.clone(), stream, store, horizon).await?)
    }

    /// Connect to NATS (retrying for up to `connect_timeout`) and open the read store.
    /// `nats_url` may list several servers of a cluster, comma-separated; the
    /// client connects to any of them and learns the rest from the cluster.
    pub async fn connect(
        service: &'static str,
        common: &crate::CommonConfig,
        database_url: Option<&str>,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        let nats_url = common.nats_url.as_str();
        if common.auth.production() && common.nats_nkey_file.is_none() && common.nats_creds.is_none() {
            anyhow::bail!(
                "NATS: a production service connects as its own NATS user: set NATS_NKEY_FILE (gridctl nats-users) \
                 or NATS_CREDS; a development mesh sets GRIDWORK_DEVELOPMENT=1 (make run does)"
            );
        }
        let deadline = tokio::time::Instant::now() + connect_timeout;
        let nkey = match &common.nats_nkey_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the NATS nkey seed {} (NATS_NKEY_FILE)", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let nats = loop {
            let mut options = async_nats::ConnectOptions::new();
            if let Some(creds) = &common.nats_creds {
                options = async_nats::ConnectOptions::with_credentials_file(creds)
                    .await
                    .with_context(|| format!("reading the NATS credentials {} (NATS_CREDS)", creds.display()))?;
            }
            if let Some(seed) = &nkey {
                options = options.nkey(seed.clone());
            }
            // TLS to NATS (mTLS with a client certificate): the services'
            // only link to each other is NATS, so this is service-to-service.
            if let Some(ca) = &common.nats_tls_ca {
                options = options.add_root_certificates(ca.clone()).require_tls(true);
            }
            if let (Some(cert), Some(key)) = (&common.nats_tls_cert, &common.nats_tls_key) {
                options = options.add_client_certificate(cert.clone(), key.clone()).require_tls(true);
            }
            // Replies on the service's own inbox prefix: its NATS user may
            // subscribe there and nowhere else (deploy/nats/permissions.conf).
            let options = options
                .name(service)
                .custom_inbox_prefix(inbox_prefix(service))
                .max_reconnects(None)
                .connection_timeout(Duration::from_secs(2))
                .request_timeout(Some(Duration::from_secs(5)));
            let servers: Vec<&str> = nats_url.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
            match options.connect(servers.as_slice()).await {
                Ok(client) => break client,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    warn!(error = %e, nats_url, "NATS not reachable yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("connecting to NATS at {nats_url}")),
            }
        };
        let js = jetstream::new(nats.clone());
        let store = match database_url {
            Some(url) => Some(ReadStore::connect(url).await.with_context(|| format!("opening read store {url}"))?),
            None => None,
        };
        let tls = common.tls.server()?;
        Ok(Self { service, nats, js, store, verifier: None, limits: common.limits.clone(), tls })
    }

    /// The largest request message a service decodes (each service sets it
    /// on its gRPC servers: `max_decoding_message_size`).
    pub fn max_request_bytes(&self) -> usize {
        self.limits.max_request_bytes
    }

    /// Connect as `service` with `common`'s settings and its authentication:
    /// what every service does first.
    pub async fn start(
        service: &'static str,
        common: &crate::CommonConfig,
        database_url: Option<&str>,
        connect_timeout: Duration,
    ) -> anyhow::Result<Self> {
        // The keys first: a service that could not verify a caller must not
        // start provisioning streams.
        let verifier = start_verifier(&common.auth)?;
        let mut runtime = Self::connect(service, common, database_url, connect_timeout).await?;
        runtime.verifier = Some(verifier);
        Ok(runtime)
    }

    /// Serve `routes` (plus health and reflection) on `listener`, and `/metrics`
    /// on `metrics_listener`, until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        routes: Routes,
        service_names: &[&'static str],
        drain: Duration,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let verifier = self
            .verifier
            .clone()
            .context("no authentication configured: every RPC needs a verified caller (Runtime::start)")?;
        let (health, health_service) = tonic_health::server::health_reporter();
        // Both reflection versions: many stock clients (Python grpcio-reflection,
        // Postman, grpcui, older grpcurl, Evans) speak only v1alpha.
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(gridwork_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection = reflection_builder().build_v1().context("building the reflection service")?;
        let reflection_v1alpha =
            reflection_builder().build_v1alpha().context("building the v1alpha reflection service")?;
        let mut names = vec![""];
        names.extend_from_slice(service_names);
        for name in &names {
            health.set_service_status(*name, ServingStatus::NotServing).await;
        }
        let (stopping_tx, stopping_rx) = watch::channel(false);
        let readiness = tokio::spawn(readiness_loop(self.clone(), health.clone(), names.clone(), stopping_rx));
        if let Some(listener) = metrics_listener {
            let handle = metrics_handle();
            tokio::spawn(async move {
                let app = axum::Router::new()
                    .route("/metrics", axum::routing::get(move || std::future::ready(handle.render())));
                if let Err(e) = axum::serve(listener, app).await {
                    warn!(error = %e, "metrics endpoint stopped");
                }
            });
        }
        let routes = routes.add_service(health_service).add_service(reflection).add_service(reflection_v1alpha);
        let drain_signal = {
            let health = health.clone();
            async move {
                shutdown.await;
                info!("shutting down: NOT_SERVING, draining");
                let _ = stopping_tx.send(true);
                for name in &names {
                    health.set_service_status(*name, ServingStatus::NotServing).await;
                }
                tokio::time::sleep(drain).await;
            }
        };
        // Bounds no token is needed to reach: a connection opens at most so
        // many streams and has at most so many calls in flight, and no call
        // runs longer than a minute (reads wait at most 30 s for a position).
        let mut server = tonic::transport::Server::builder()
            .max_concurrent_streams(crate::limits::MAX_CONCURRENT_STREAMS)
            .concurrency_limit_per_connection(crate::limits::MAX_CONCURRENT_STREAMS as usize)
            .timeout(crate::limits::CALL_TIMEOUT);
        if let Some(tls) = self.tls.clone() {
            server =
                server.tls_config(tls).context("TLS settings (TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE)")?;
        }
        let result = server
            .trace_fn(request_span)
            .layer(tower::util::MapResponseLayer::new(crate::limits::refusal::<tonic::body::Body>))
            .layer(AuthLayer::new(verifier))
            .layer(crate::limits::LimitsLayer::new(&self.limits))
            .add_routes(routes)
            // Our own listener (bound before serving, so a test or the
            // readiness check knows the port): tonic's `tcp_nodelay` applies
            // only to listeners it binds, so set it here. Without it a reply
            // written in two frames waits for the client's delayed ACK (40 ms
            // on Linux): GetCase took 44 ms where its queries took 1.
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                drain_signal,
            )
            .await;
        readiness.abort();
        result.context("gRPC server failed")
    }

    /// Bind the configured addresses and serve until SIGTERM / Ctrl-C.
    pub async fn run_until_stopped(
        self,
        common: &crate::CommonConfig,
        routes: Routes,
        service_names: &[&'static str],
    ) -> anyhow::Result<()> {
        let listener =
            TcpListener::bind(common.grpc_addr).await.with_context(|| format!("binding {}", common.grpc_addr))?;
        let metrics =
            TcpListener::bind(common.metrics_addr).await.with_context(|| format!("binding {}", common.metrics_addr))?;
        info!(service = self.service, grpc = %common.grpc_addr, metrics = %common.metrics_addr, "listening");
        self.serve(listener, Some(metrics), routes, service_names, common.drain(), shutdown_signal()).await
    }

    /// Serve in the background on `127.0.0.1:0` (tests, tools).
    pub async fn spawn_on_loopback(
        self,
        routes: Routes,
        service_names: &'static [&'static str],
        drain: Duration,
    ) -> anyhow::Result<ServerHandle> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let metrics = TcpListener::bind("127.0.0.1:0").await?;
        self.spawn(listener, Some(metrics), routes, service_names, drain)
    }

    /// Serve in the background on already-bound listeners; the handle stops it.
    pub fn spawn(
        self,
        listener: TcpListener,
        metrics_listener: Option<TcpListener>,
        routes: Routes,
        service_names: &'static [&'static str],
        drain: Duration,
    ) -> anyhow::Result<ServerHandle> {
        let addr = listener.local_addr()?;
        let metrics_addr = metrics_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(self.serve(listener, metrics_listener, routes, service_names, drain, async move {
            let _ = rx.await;
        }));
        Ok(ServerHandle { addr, metrics_addr, shutdown: Some(tx), task })
    }
}

/// The inbox prefix `service`'s replies arrive on: `_INBOX_<service>`.
pub fn inbox_prefix(service: &str) -> String {
    format!("_INBOX_{service}")
}

fn start_verifier(config: &AuthConfig) -> anyhow::Result<Arc<Verifier>> {
    Verifier::start(config).with_context(|| {
        format!(
            "authentication: the keys that sign callers' tokens ({}, JWKS_FILE); in development `gridctl login` \
             or `make run` makes them",
            config.jwks_file.display()
        )
    })
}

/// A server running in the background.
pub struct ServerHandle {
    /// Where gRPC listens.
    pub addr: SocketAddr,
    /// Where `/metrics` listens.
    pub metrics_addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl ServerHandle {
    /// `http://<addr>` for clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Begin a graceful shutdown (as SIGTERM would) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shut down gracefully and wait.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        self.task.await?
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// The process-wide Prometheus recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); then ours only renders.
            let _ = metrics::set_global_recorder(recorder);
            let upkeep = handle.clone();
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

async fn readiness_loop(
    runtime: Runtime,
    health: HealthReporter,
    names: Vec<&'static str>,
    stopping: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        if *stopping.borrow() {
            return;
        }
        let nats_ok = runtime.nats.connection_state() == State::Connected;
        let db_ok = match &runtime.store {
            Some(store) => tokio::time::timeout(Duration::from_secs(1), store.ping()).await.is_ok_and(|r| r.is_ok()),
            None => true,
        };
        // A projection that cannot apply (read-only, full, missing table) while
        // the database still answers a ping: the service's reads are not current.
        let stalled = runtime.store.as_ref().map(|s| s.stalled()).unwrap_or_default();
        let ready = nats_ok && db_ok && stalled.is_empty();
        if last != Some(ready) && !*stopping.borrow() {
            let status = if ready { ServingStatus::Serving } else { ServingStatus::NotServing };
            if ready {
                info!(service = runtime.service, "ready: SERVING");
            } else {
                warn!(service = runtime.service, nats_ok, db_ok, ?stalled, "not ready: NOT_SERVING");
            }
            for name in &names {
                health.set_service_status(*name, status).await;
            }
            metrics::gauge!("service_ready", "service" => runtime.service).set(if ready { 1.0 } else { 0.0 });
            last = Some(ready);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct HttpHeaders<'a>(&'a http::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// One span per RPC, continuing the caller's trace from `traceparent` metadata.
fn request_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!("grpc.request", rpc = %request.uri().path());
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HttpHeaders(request.headers())));
    use opentelemetry::trace::TraceContextExt as _;
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
    span
}
