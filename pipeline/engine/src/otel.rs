//! Exporting spans to an OpenTelemetry collector (OTLP over HTTP, protobuf), when the services
//! are started with `--otlp-endpoint` (`OTEL_EXPORTER_OTLP_ENDPOINT`, e.g.
//! `http://localhost:4318`). Off by default: then recording a span costs one atomic load.
//!
//! The spans are the ones whose ids travel in `traceparent` headers ([`wire::trace`]):
//! wagon-lits' answer to a command request (its parent: the caller's span, if the request had
//! one) and dev-materiels' decision for each update (its parent: the command's span). A collector
//! thus shows a command from the API call to each update it caused, across both services.
//! Spans go out in batches from a background thread; [`shutdown`] sends what is left.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use wire::TraceParent;

struct Exporter {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

static EXPORTER: OnceLock<Exporter> = OnceLock::new();

thread_local! {
    /// The ids the next span started on this thread must have: those of its `traceparent`.
    static NEXT_IDS: Cell<Option<(u128, u64)>> = const { Cell::new(None) };
}

/// Gives a span the ids set in [`NEXT_IDS`] (the SDK's span builder takes none), random ones
/// otherwise. The trace id is asked for only when the span has no parent.
#[derive(Debug, Default)]
struct TraceparentIds(RandomIdGenerator);

impl IdGenerator for TraceparentIds {
    fn new_trace_id(&self) -> TraceId {
        NEXT_IDS.with(Cell::get).map_or_else(|| self.0.new_trace_id(), |(trace, _)| TraceId::from(trace))
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_IDS.with(Cell::get).map_or_else(|| self.0.new_span_id(), |(_, span)| SpanId::from(span))
    }
}

/// The exporter could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot export spans to {endpoint}: {reason}")]
pub struct OtelError {
    endpoint: String,
    reason: String,
}

/// Starts exporting the spans of this process (named `service`) to the collector at `endpoint`
/// (its base URL; spans go to `<endpoint>/v1/traces`).
pub fn init(endpoint: &str, service: &'static str) -> Result<(), OtelError> {
    let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
    let exporter = SpanExporter::builder()
        .with_http()
        .with_endpoint(url)
        .build()
        .map_err(|e| OtelError { endpoint: endpoint.to_string(), reason: e.to_string() })?;
    let provider = SdkTracerProvider::builder()
        .with_id_generator(TraceparentIds::default())
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build();
    let tracer = provider.tracer("rail-orders");
    let _ = EXPORTER.set(Exporter { provider, tracer });
    tracing::info!(%endpoint, service, "exporting spans over OTLP/HTTP");
    Ok(())
}

fn context(trace: &TraceParent) -> SpanContext {
    SpanContext::new(
        TraceId::from_bytes(trace.trace_id.to_be_bytes()),
        SpanId::from_bytes(trace.span_id.to_be_bytes()),
        if trace.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() },
        true,
        TraceState::default(),
    )
}

/// Records the finished span `span`, started at `start`, child of `parent` (if any).
pub fn span(
    name: impl Into<std::borrow::Cow<'static, str>>,
    kind: SpanKind,
    span: &TraceParent,
    parent: Option<&TraceParent>,
    start: SystemTime,
    attributes: impl FnOnce() -> Vec<KeyValue>,
) {
    let Some(exporter) = EXPORTER.get() else { return };
    let attributes = attributes();
    let parent = match parent {
        Some(parent) => Context::new().with_remote_span_context(context(parent)),
        None => Context::new(),
    };
    NEXT_IDS.with(|ids| ids.set(Some((span.trace_id, span.span_id))));
    let mut recorded = exporter
        .tracer
        .span_builder(name)
        .with_kind(kind)
        .with_start_time(start)
        .with_attributes(attributes)
        .start_with_context(&exporter.tracer, &parent);
    NEXT_IDS.with(|ids| ids.set(None));
    recorded.end();
}

/// Sends the spans not exported yet; call before the process exits.
pub fn shutdown() {
    if let Some(exporter) = EXPORTER.get() {
        if let Err(err) = exporter.provider.shutdown() {
            tracing::warn!(error = %err, "could not send the last spans");
        }
    }
}
