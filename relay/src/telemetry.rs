//! Logs and traces. Logs go to stderr (text or JSON, filtered by `AETHER_LOG`).
//! Traces are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, and are off otherwise: then no
//! span is even created on the write path.
//!
//! One write is followed from the client gateway (`relay.write`) through the
//! edge's forward to its owner (`owner.apply`) and on to the other owners
//! (`replica.apply`): the W3C `traceparent` travels in gRPC metadata for
//! unary calls and in a field of each forwarded write and replication batch
//! on streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

use crate::config::LogFormat;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// True when traces are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Flushes and stops the exporter when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            eprintln!("flushing traces failed: {e}");
        }
    }
}

/// Installs the global subscriber. Must run inside the tokio runtime (the
/// OTLP exporter is a tonic client). `service` names the process in traces
/// unless `OTEL_SERVICE_NAME` is set.
pub fn init(format: LogFormat, service: &str) -> anyhow::Result<Telemetry> {
    init_for(format, service, "aether_relay")
}

/// [`init`] for another binary of the project: spans of module `target`
/// (its crate name, e.g. `aether_operator`) are exported.
pub fn init_for(format: LogFormat, service: &str, target: &str) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_env("AETHER_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt_layer = fmt::layer().with_writer(std::io::stderr);
    let fmt_layer = match format {
        LogFormat::Text => fmt_layer.boxed(),
        LogFormat::Json => fmt_layer.json().boxed(),
    };
    let endpoint_set = ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
    let registry = tracing_subscriber::registry().with(fmt_layer.with_filter(filter));
    if !endpoint_set {
        registry.try_init()?;
        return Ok(Telemetry { provider: None });
    }
    // Endpoint, headers, timeout and protocol details come from the standard OTEL_* variables.
    let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
    let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
        exporter,
        opentelemetry_sdk::runtime::Tokio,
    )
    .build();
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| service.to_owned());
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer(target.replace('_', "-"));
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(Targets::new().with_target(target.to_owned(), tracing::Level::INFO));
    registry.with(otel).try_init()?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Telemetry { provider: Some(provider) })
}

/// The current span's W3C `traceparent` ("" when tracing is off).
pub fn traceparent() -> String {
    if !enabled() {
        return String::new();
    }
    let cx = tracing::Span::current().context();
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the remote `traceparent` (ignored when empty or invalid).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if traceparent.is_empty() || !enabled() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(cx);
}

/// Adds the current `traceparent` to an outgoing call's metadata.
pub fn inject<T>(req: &mut tonic::Request<T>) {
    let tp = traceparent();
    if !tp.is_empty()
        && let Ok(v) = tp.parse()
    {
        req.metadata_mut().insert("traceparent", v);
    }
}

/// The `traceparent` of an incoming call ("" when absent).
pub fn extract<T>(req: &tonic::Request<T>) -> String {
    req.metadata().get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
}
