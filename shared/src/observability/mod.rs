//! Structured JSON logs, request identity (request ID, correlation ID, trace) and
//! CloudWatch Embedded Metric Format output.
//!
//! Every log line written inside a request span carries `request_id`,
//! `correlation_id` and `trace_id` (via the span list of the JSON formatter), so
//! CloudWatch Logs Insights can follow one request across functions. With an
//! OTLP endpoint configured, the same spans are exported as OpenTelemetry
//! traces ([`otel`]).

pub mod otel;

use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use http::HeaderMap;
use serde_json::{Map, Value};

pub const CORRELATION_HEADER: &str = "x-correlation-id";
pub const TRACEPARENT_HEADER: &str = "traceparent";
pub const XRAY_HEADER: &str = "x-amzn-trace-id";
const MAX_CORRELATION_ID_LEN: usize = 128;

/// Installs the JSON log subscriber once per cold start, without traces (see
/// [`init`]).
pub fn init_logging() {
    let _ = init("sophia", None);
}

/// Installs the subscriber once per cold start: JSON logs whose level comes from
/// `RUST_LOG`, else Lambda's `AWS_LAMBDA_LOG_LEVEL`, else `info`; and, given an
/// exporter, OpenTelemetry spans of `service` from every `info` span (whatever
/// the log level). A second init in a process (tests) keeps the first.
pub fn init(
    service: &str,
    otel: Option<(&otel::OtelSettings, Arc<dyn opentelemetry_http::HttpClient>)>,
) -> Result<(), String> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::{EnvFilter, Layer, filter::LevelFilter};
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| std::env::var("AWS_LAMBDA_LOG_LEVEL").ok())
        .map(|level| level.to_ascii_lowercase())
        .unwrap_or_else(|| "info".to_owned());
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(false)
        .with_span_list(true)
        .flatten_event(true)
        .with_target(false)
        .with_writer(std::io::stdout)
        .with_filter(EnvFilter::new(filter));
    let tracer = match otel {
        Some((settings, client)) => otel::tracer(service, settings, client)?,
        None => None,
    };
    // The runtime's own per-invocation span is left out: its trace is not the
    // caller's, so every invocation would add a one-span trace of its own.
    let traces = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(LevelFilter::INFO)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                !meta.target().starts_with("lambda_runtime")
                    && !meta.target().starts_with("lambda_http")
            }))
    });
    let subscriber = tracing_subscriber::registry().with(logs).with(traces);
    // A second init (tests, or a library calling it twice) keeps the first subscriber.
    let _ = tracing::subscriber::set_global_default(subscriber);
    Ok(())
}

/// Runs one invocation's `work`, then exports the spans finished so far
/// ([`otel::flush`], bounded, never failing it).
pub async fn flushed<F: Future>(work: F) -> F::Output {
    let output = work.await;
    otel::flush().await;
    output
}

/// [`flushed`] inside an `invocation` span: the root span of an event-driven
/// function's invocation (`trigger`: `pubsub` for queues, `timer` for
/// schedules, `other`), named after the function.
pub async fn invocation<F: Future>(
    function: &str,
    trigger: &'static str,
    request_id: String,
    work: F,
) -> F::Output {
    let span = tracing::info_span!(
        "invocation",
        otel.name = %function,
        otel.kind = "server",
        faas.trigger = trigger,
        faas.invocation_id = %request_id,
    );
    flushed(work.instrument(span)).await
}

/// W3C trace context of the current request: the trace ID we continue (or start)
/// and the span ID we present as parent to anything we call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits: this function's span.
    pub span_id: String,
    pub sampled: bool,
    /// The caller's span, when the request continues a trace.
    pub parent_span_id: Option<String>,
}

impl TraceContext {
    /// Continues the caller's trace from `traceparent`, else from the X-Ray header
    /// (API Gateway's or the Lambda runtime's), else starts a new one.
    pub fn from_headers(headers: &HeaderMap, xray_fallback: Option<&str>) -> Self {
        let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
        if let Some(parsed) = header(TRACEPARENT_HEADER).and_then(parse_traceparent) {
            return parsed;
        }
        if let Some(parsed) = header(XRAY_HEADER).or(xray_fallback).and_then(parse_xray) {
            return parsed;
        }
        Self::new_trace()
    }

    /// A trace of its own.
    pub fn new_trace() -> Self {
        Self {
            trace_id: random_hex(16),
            span_id: random_hex(8),
            sampled: false,
            parent_span_id: None,
        }
    }

    /// The trace of the current span, when it is exported ([`otel`]); else a new one.
    pub fn of_current_span() -> Self {
        let mut trace = Self::new_trace();
        trace.adopt(&tracing::Span::current());
        trace
    }

    /// Takes `span`'s trace and span IDs when it is exported ([`otel`]), so the
    /// IDs in logs and in `traceparent` are the exported span's.
    pub fn adopt(&mut self, span: &tracing::Span) {
        if let Some((trace_id, span_id)) = otel::ids_of(span) {
            self.trace_id = trace_id;
            self.span_id = span_id;
            self.sampled = true;
        }
    }

    /// The `traceparent` value to send downstream: same trace, our span as parent.
    pub fn traceparent(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{}-{flags}", self.trace_id, self.span_id)
    }

    /// The `traceparent` of the current span (say, one fleet attempt's) when
    /// spans are exported, else [`Self::traceparent`].
    pub fn traceparent_now(&self) -> String {
        otel::current_traceparent().unwrap_or_else(|| self.traceparent())
    }
}

fn is_lower_hex(value: &str, len: usize) -> bool {
    value.len() == len
        && value
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn parse_traceparent(value: &str) -> Option<TraceContext> {
    let mut parts = value.trim().split('-');
    let (version, trace_id, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let all_zero = |s: &str| s.bytes().all(|b| b == b'0');
    if version != "00" || !is_lower_hex(trace_id, 32) || all_zero(trace_id) {
        return None;
    }
    if !is_lower_hex(flags, 2) {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    Some(TraceContext {
        trace_id: trace_id.to_owned(),
        span_id: random_hex(8),
        sampled,
        parent_span_id: (is_lower_hex(parent, 16) && !all_zero(parent)).then(|| parent.to_owned()),
    })
}

/// `Root=1-5759e988-bd862e3fe1be46a994272793;Parent=…;Sampled=1`: the X-Ray root's
/// epoch and unique parts concatenated are exactly a W3C trace ID.
fn parse_xray(value: &str) -> Option<TraceContext> {
    let mut root = None;
    let mut parent = None;
    let mut sampled = false;
    for field in value.split(';') {
        match field.trim().split_once('=') {
            Some(("Root", v)) => root = Some(v),
            Some(("Parent", v)) if is_lower_hex(v, 16) => parent = Some(v.to_owned()),
            Some(("Sampled", v)) => sampled = v == "1",
            _ => {}
        }
    }
    let mut parts = root?.split('-');
    let (version, epoch, unique) = (parts.next()?, parts.next()?, parts.next()?);
    if version != "1" || !is_lower_hex(epoch, 8) || !is_lower_hex(unique, 24) {
        return None;
    }
    Some(TraceContext {
        trace_id: format!("{epoch}{unique}"),
        span_id: random_hex(8),
        sampled,
        parent_span_id: parent,
    })
}

fn random_hex(bytes: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(bytes * 2);
    for _ in 0..bytes {
        let _ = write!(out, "{:02x}", fastrand::u8(..));
    }
    // An all-zero ID is invalid in W3C trace context.
    if out.bytes().all(|b| b == b'0') {
        out.replace_range(out.len() - 1.., "1");
    }
    out
}

/// The caller's correlation ID if it is safe to log and echo, else a new one.
/// Anything else (too long, control characters, spaces) is replaced rather than
/// echoed: header values end up in logs and in other services' headers.
pub fn correlation_id(headers: &HeaderMap) -> String {
    headers
        .get(CORRELATION_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| is_safe_id(value))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

fn is_safe_id(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_CORRELATION_ID_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Who a request is, for logs, metrics and downstream propagation.
#[derive(Debug, Clone)]
pub struct RequestContext {
    pub request_id: String,
    pub correlation_id: String,
    pub trace: TraceContext,
    /// When the invocation must have answered (Lambda's deadline); calls made on
    /// behalf of this request must finish before it.
    pub deadline: std::time::Instant,
}

impl RequestContext {
    /// Time left before the deadline, minus `margin` for writing the answer.
    pub fn remaining(&self, margin: Duration) -> Duration {
        self.deadline
            .saturating_duration_since(std::time::Instant::now())
            .saturating_sub(margin)
    }
}

/// Converts Lambda's deadline (epoch milliseconds) into an `Instant`. A missing or
/// past deadline (tests, local tools) falls back to `default_budget` from now.
pub fn deadline_from_epoch_ms(deadline_ms: u64, default_budget: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    let now_ms = crate::clock::now_ms();
    if deadline_ms > now_ms {
        now + Duration::from_millis(deadline_ms - now_ms)
    } else {
        now + default_budget
    }
}

/// Where EMF documents also go, besides stdout. Unset in Lambda (CloudWatch reads
/// stdout there); the local stack and the tests set it to put the metrics into
/// the local CloudWatch, standing in for CloudWatch's EMF extraction.
static EMF_SINK: std::sync::OnceLock<EmfSink> = std::sync::OnceLock::new();
type EmfSink = Box<dyn Fn(&Value) + Send + Sync>;

/// Sets the EMF sink once per process; false if one was set already.
pub fn set_emf_sink(sink: impl Fn(&Value) + Send + Sync + 'static) -> bool {
    EMF_SINK.set(Box::new(sink)).is_ok()
}

/// One CloudWatch EMF document: metrics under a namespace with one dimension set,
/// plus properties that are searchable in Logs Insights but are not dimensions.
#[derive(Debug, Clone)]
pub struct MetricSet {
    namespace: &'static str,
    dimensions: Vec<(&'static str, String)>,
    metrics: Vec<(&'static str, &'static str, f64)>,
    properties: Map<String, Value>,
}

impl MetricSet {
    pub fn new(namespace: &'static str) -> Self {
        Self {
            namespace,
            dimensions: Vec::new(),
            metrics: Vec::new(),
            properties: Map::new(),
        }
    }

    pub fn dimension(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.dimensions.push((name, value.into()));
        self
    }

    pub fn count(mut self, name: &'static str, value: f64) -> Self {
        self.metrics.push((name, "Count", value));
        self
    }

    pub fn millis(mut self, name: &'static str, value: f64) -> Self {
        self.metrics.push((name, "Milliseconds", value));
        self
    }

    pub fn property(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.properties.insert(name.to_owned(), value.into());
        self
    }

    /// The EMF JSON document, e.g. for tests.
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self.document(crate::clock::now_ms())).unwrap_or(Value::Null)
    }

    /// Writes the document as one stdout line, where the Lambda log agent picks it up.
    pub fn emit(&self) {
        let document = self.document(crate::clock::now_ms());
        if let Some(sink) = EMF_SINK.get() {
            sink(&serde_json::to_value(&document).unwrap_or(Value::Null));
        }
        // Serialized straight from the set (every request emits one or two of
        // these): building a `Value` first cost as much again.
        let mut line = Vec::with_capacity(512);
        if serde_json::to_writer(&mut line, &document).is_ok() {
            line.push(b'\n');
            let _ = std::io::stdout().lock().write_all(&line);
        }
    }

    fn document(&self, timestamp: u64) -> EmfDocument<'_> {
        EmfDocument {
            set: self,
            timestamp,
        }
    }
}

/// A [`MetricSet`] as EMF: its properties, dimensions and metrics as top-level
/// members (a later kind wins a name clash, as a map insert would: metrics over
/// dimensions over properties, so no member appears twice) and the `_aws`
/// directive naming them.
struct EmfDocument<'a> {
    set: &'a MetricSet,
    timestamp: u64,
}

impl serde::Serialize for EmfDocument<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let set = self.set;
        let metric = |name: &str| set.metrics.iter().any(|(m, _, _)| *m == name);
        let dimension = |name: &str| set.dimensions.iter().any(|(d, _)| *d == name);
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in &set.properties {
            if name != "_aws" && !metric(name) && !dimension(name) {
                map.serialize_entry(name, value)?;
            }
        }
        for (index, (name, value)) in set.dimensions.iter().enumerate() {
            let later = set.dimensions[index + 1..].iter().any(|(d, _)| d == name);
            if !later && !metric(name) {
                map.serialize_entry(name, value)?;
            }
        }
        for (index, (name, _, value)) in set.metrics.iter().enumerate() {
            if !set.metrics[index + 1..].iter().any(|(m, _, _)| m == name) {
                map.serialize_entry(name, value)?;
            }
        }
        let directive = EmfDirective {
            namespace: set.namespace,
            dimensions: [set.dimensions.iter().map(|(name, _)| *name).collect()],
            metrics: set
                .metrics
                .iter()
                .map(|(name, unit, _)| EmfMetric { name, unit })
                .collect(),
        };
        map.serialize_entry(
            "_aws",
            &EmfMetadata {
                timestamp: self.timestamp,
                cloud_watch_metrics: [directive],
            },
        )?;
        map.end()
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct EmfMetadata<'a> {
    timestamp: u64,
    cloud_watch_metrics: [EmfDirective<'a>; 1],
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct EmfDirective<'a> {
    namespace: &'a str,
    dimensions: [Vec<&'a str>; 1],
    metrics: Vec<EmfMetric<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct EmfMetric<'a> {
    name: &'a str,
    unit: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn traceparent_is_continued() {
        let h = headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        let trace = TraceContext::from_headers(&h, None);
        assert_eq!(trace.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(trace.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert!(trace.sampled);
        assert_ne!(trace.span_id, "00f067aa0ba902b7");
        assert!(
            trace
                .traceparent()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }

    #[test]
    fn xray_root_becomes_the_trace_id() {
        let h = headers(&[(
            "x-amzn-trace-id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
        )]);
        let trace = TraceContext::from_headers(&h, None);
        assert_eq!(trace.trace_id, "5759e988bd862e3fe1be46a994272793");
        assert_eq!(trace.parent_span_id.as_deref(), Some("53995c3f42cd8ad8"));
    }

    #[test]
    fn invalid_trace_headers_start_a_new_trace() {
        let h = headers(&[
            (
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            ("x-amzn-trace-id", "Root=garbage"),
        ]);
        let trace = TraceContext::from_headers(&h, None);
        assert!(is_lower_hex(&trace.trace_id, 32));
        assert!(is_lower_hex(&trace.span_id, 16));
    }

    #[test]
    fn safe_correlation_ids_are_kept_and_unsafe_ones_replaced() {
        assert_eq!(
            correlation_id(&headers(&[(CORRELATION_HEADER, "req-42.a:b")])),
            "req-42.a:b"
        );
        let long = "a".repeat(200);
        for bad in ["has space", "quote\"", long.as_str()] {
            let id = correlation_id(&headers(&[(CORRELATION_HEADER, bad)]));
            assert_ne!(id, bad);
            assert!(uuid::Uuid::parse_str(&id).is_ok());
        }
        assert!(uuid::Uuid::parse_str(&correlation_id(&HeaderMap::new())).is_ok());
    }

    #[test]
    fn emf_document_declares_its_metrics_and_dimensions() {
        let doc = MetricSet::new("Sophia")
            .dimension("Service", "api-health")
            .dimension("Route", "GET /health")
            .count("Requests", 1.0)
            .millis("Latency", 2.5)
            .property("correlation_id", "c1")
            .to_json();
        assert_eq!(doc["Service"], "api-health");
        assert_eq!(doc["Requests"], 1.0);
        assert_eq!(doc["Latency"], 2.5);
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "Sophia");
        assert_eq!(directive["Dimensions"][0], json!(["Service", "Route"]));
        assert_eq!(
            directive["Metrics"][1],
            json!({"Name": "Latency", "Unit": "Milliseconds"})
        );
        assert!(doc["_aws"]["Timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    }

    #[test]
    fn an_emf_line_names_each_member_once_and_matches_the_document() {
        let set = MetricSet::new("Sophia")
            .property("Service", "a property")
            .property("outcome", "ok")
            .dimension("Service", "api-chat")
            .count("Requests", 1.0)
            .millis("Requests", 3.0);
        let line = serde_json::to_string(&set.document(42)).unwrap();
        assert_eq!(line.matches("\"Service\":").count(), 1, "{line}");
        assert_eq!(line.matches("\"Requests\":").count(), 1, "{line}");
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["Service"], "api-chat");
        assert_eq!(parsed["Requests"], 3.0);
        assert_eq!(parsed["outcome"], "ok");
        assert_eq!(parsed["_aws"]["Timestamp"], 42);
        let mut document = set.to_json();
        document["_aws"]["Timestamp"] = json!(42);
        assert_eq!(parsed, document);
    }

    #[test]
    fn deadline_falls_back_when_absent() {
        let deadline = deadline_from_epoch_ms(0, Duration::from_secs(3));
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(left > Duration::from_secs(2) && left <= Duration::from_secs(3));
    }
}
