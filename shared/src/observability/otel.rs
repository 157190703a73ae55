//! OpenTelemetry traces: every `tracing` span of a function becomes an OTel span
//! (tracing-opentelemetry), exported over OTLP/HTTP at the end of each invocation.
//!
//! Off unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set ([`OtelSettings::from_env`]): then no layer is installed and spans cost
//! what they cost before (a `tracing` span for the JSON logs).
//!
//! Written around the SDK rather than with its batch processor or the Lambda
//! runtime's `OpenTelemetryLayer`, because neither fits Lambda's model with an
//! async exporter: the batch processor exports from a background thread on a
//! timer, and Lambda freezes an instance between invocations, so spans would
//! wait for the next invocation or be lost when the instance is recycled; the
//! runtime layer's flush is a blocking callback, while our exporter's HTTP
//! client is the async one every outbound call uses. So finished spans wait in
//! memory ([`SpanBuffer`], a `SpanProcessor`, bounded), and [`flush`] exports
//! them with the OTLP exporter at the end of each invocation, under
//! `OTEL_FLUSH_TIMEOUT_MS`: a collector that is slow or down costs an
//! invocation at most that, and never fails it (the spans are dropped, counted
//! in a warning).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracer, SdkTracerProvider, SpanData, SpanExporter, SpanProcessor,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TraceContext;
use crate::config::{ConfigError, Env};

/// Finished spans kept for the next flush at most; more are dropped and counted.
const MAX_BUFFERED: usize = 2048;

/// Where and how traces are exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtelSettings {
    /// The OTLP/HTTP traces URL (`…/v1/traces`).
    pub endpoint: String,
    /// How long the end of an invocation may wait for the export.
    pub flush_timeout: Duration,
}

impl OtelSettings {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full URL), else
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` with `/v1/traces` appended (as the OTLP
    /// exporter specification says); neither: `None`, tracing off.
    /// `OTEL_FLUSH_TIMEOUT_MS` (300) bounds each invocation's export.
    pub fn from_env(env: &Env<'_>) -> Result<Option<Self>, ConfigError> {
        let endpoint = match env.optional("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(url) => url,
            None => match env.optional("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => format!("{}/v1/traces", base.trim_end_matches('/')),
                None => return Ok(None),
            },
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError::new(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("must be an http(s) URL, not {endpoint:?}"),
            ));
        }
        Ok(Some(Self {
            endpoint,
            flush_timeout: env.millis_or("OTEL_FLUSH_TIMEOUT_MS", 300, 5_000)?,
        }))
    }
}

/// Finished spans waiting for the end of the invocation.
#[derive(Debug, Default)]
struct SpanBuffer {
    spans: Mutex<Vec<SpanData>>,
    dropped: AtomicU64,
}

impl SpanBuffer {
    fn take(&self) -> Vec<SpanData> {
        std::mem::take(&mut *self.spans.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[derive(Debug)]
struct Buffering(Arc<SpanBuffer>);

impl SpanProcessor for Buffering {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let mut spans = self.0.spans.lock().unwrap_or_else(|e| e.into_inner());
        if spans.len() < MAX_BUFFERED {
            spans.push(span);
        } else {
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

struct Export {
    buffer: Arc<SpanBuffer>,
    exporter: opentelemetry_otlp::SpanExporter,
    flush_timeout: Duration,
    /// Kept so the tracer's spans keep reaching the buffer.
    _provider: SdkTracerProvider,
}

static EXPORT: OnceLock<Export> = OnceLock::new();

/// The tracer every span of this process goes to, exporting to `settings`
/// through `client`; `None` if tracing was set up before in this process.
pub(super) fn tracer(
    service: &str,
    settings: &OtelSettings,
    client: Arc<dyn opentelemetry_http::HttpClient>,
) -> Result<Option<SdkTracer>, String> {
    let buffer = Arc::new(SpanBuffer::default());
    let resource = opentelemetry_sdk::Resource::builder_empty()
        .with_service_name(service.to_owned())
        .build();
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_shared_http_client(client)
        .with_endpoint(settings.endpoint.clone())
        .with_timeout(settings.flush_timeout)
        .build()
        .map_err(|error| format!("the OTLP exporter: {error}"))?;
    exporter.set_resource(&resource);
    let provider = SdkTracerProvider::builder()
        .with_span_processor(Buffering(buffer.clone()))
        // Every request is traced: the caller's sampling decision (an X-Ray
        // header says "not sampled" for most requests) is not followed.
        .with_sampler(Sampler::AlwaysOn)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("sophia");
    let export = Export {
        buffer,
        exporter,
        flush_timeout: settings.flush_timeout,
        _provider: provider,
    };
    Ok(EXPORT.set(export).is_ok().then_some(tracer))
}

/// Whether spans are exported in this process.
pub fn enabled() -> bool {
    EXPORT.get().is_some()
}

/// Exports the spans finished so far, within the flush timeout; what cannot be
/// sent in time is dropped with a warning. Never fails.
pub async fn flush() {
    let Some(export) = EXPORT.get() else {
        return;
    };
    let dropped = export.buffer.dropped.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        tracing::warn!(dropped, "spans dropped: more finished than one flush keeps");
    }
    let batch = export.buffer.take();
    if batch.is_empty() {
        return;
    }
    let count = batch.len();
    match tokio::time::timeout(export.flush_timeout, export.exporter.export(batch)).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::warn!(%error, spans = count, "exporting spans failed; dropped"),
        Err(_) => tracing::warn!(
            spans = count,
            timeout_ms = export.flush_timeout.as_millis() as u64,
            "exporting spans took too long; dropped"
        ),
    }
}

/// The OTel context of a remote parent, from a `traceparent` value.
fn remote(trace_id: &str, parent_span_id: &str, sampled: bool) -> Option<opentelemetry::Context> {
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(parent_span_id).ok()?,
        if sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        },
        true,
        TraceState::default(),
    );
    context
        .is_valid()
        .then(|| opentelemetry::Context::new().with_remote_span_context(context))
}

/// Makes `span` the child of the caller's span that `incoming` names, when
/// tracing is on and the caller sent one.
pub fn continue_trace(span: &tracing::Span, incoming: &TraceContext) {
    if !enabled() {
        return;
    }
    let Some(parent) = incoming.parent_span_id.as_deref() else {
        return;
    };
    if let Some(cx) = remote(&incoming.trace_id, parent, incoming.sampled) {
        let _ = span.set_parent(cx);
    }
}

/// [`continue_trace`] from a `traceparent` header value (e.g. one carried by a
/// queue message).
pub fn continue_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if let Some(incoming) = super::parse_traceparent(traceparent) {
        continue_trace(span, &incoming);
    }
}

/// Names `span`'s OTel span (a started span takes no `otel.name` record);
/// `name` is only called when tracing is on.
pub fn rename(span: &tracing::Span, name: impl FnOnce() -> String) {
    if enabled() {
        span.context().span().update_name(name());
    }
}

/// (trace ID, span ID) of `span`'s OTel span, when tracing is on.
pub fn ids_of(span: &tracing::Span) -> Option<(String, String)> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let context = cx.span().span_context().clone();
    context.is_valid().then(|| {
        (
            context.trace_id().to_string(),
            context.span_id().to_string(),
        )
    })
}

/// The `traceparent` naming the current span as parent, when tracing is on.
pub fn current_traceparent() -> Option<String> {
    let (trace_id, span_id) = ids_of(&tracing::Span::current())?;
    let current = TraceContext {
        trace_id,
        span_id,
        sampled: true,
        parent_span_id: None,
    };
    Some(current.traceparent())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_follows_the_otlp_variables() {
        let none: [(&str, &str); 0] = [];
        assert_eq!(OtelSettings::from_env(&Env::new(&none)).unwrap(), None);
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/")];
        let settings = OtelSettings::from_env(&Env::new(&base)).unwrap().unwrap();
        assert_eq!(settings.endpoint, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(settings.flush_timeout, Duration::from_millis(300));
        let full = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "https://collector/traces",
            ),
            ("OTEL_FLUSH_TIMEOUT_MS", "50"),
        ];
        let settings = OtelSettings::from_env(&Env::new(&full)).unwrap().unwrap();
        assert_eq!(settings.endpoint, "https://collector/traces");
        assert_eq!(settings.flush_timeout, Duration::from_millis(50));
        let bad = [("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318")];
        assert!(OtelSettings::from_env(&Env::new(&bad)).is_err());
    }

    #[test]
    fn a_remote_parent_needs_valid_ids() {
        assert!(remote("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", true).is_some());
        assert!(remote("00000000000000000000000000000000", "00f067aa0ba902b7", true).is_none());
        assert!(remote("4bf92f3577b34da6a3ce929d0e0e4736", "nothex", true).is_none());
    }
}
