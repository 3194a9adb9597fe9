//! Logging and tracing set-up.
//!
//! `RUST_LOG` filters (default `info`); `LOG_FORMAT` picks pretty or JSON; when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans are exported over OTLP/gRPC. The
//! W3C trace-context propagator is always installed so `traceparent` crosses gRPC
//! metadata and NATS headers.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _, fmt};

use crate::config::LogFormat;

/// Flushes exported spans when dropped; keep it alive in `main`.
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// Install logging and tracing for a service.
pub fn init(service: &'static str, format: LogFormat) -> anyhow::Result<TelemetryGuard> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    // RUST_LOG filters what is logged, never what is traced: trace context must
    // cross every hop even when logging is quiet.
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer(service)).with_filter(LevelFilter::INFO);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = format == LogFormat::Json;
    let logs = if json {
        fmt::layer().json().with_current_span(true).with_filter(filter).boxed()
    } else {
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        fmt::layer().with_ansi(ansi).with_filter(filter).boxed()
    };
    tracing_subscriber::registry().with(logs).with(otel).try_init()?;
    Ok(TelemetryGuard { provider })
}

/// Install test telemetry: output captured by the test runner, W3C propagation,
/// and an SDK tracer with no exporter so spans carry real trace ids.
pub fn init_for_tests() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let provider = SdkTracerProvider::builder().build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("test")).with_filter(LevelFilter::INFO);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ =
        tracing_subscriber::registry().with(fmt::layer().with_test_writer().with_filter(filter)).with(otel).try_init();
}
