//! A local OTLP/HTTP trace receiver a person can read: the functions export
//! their spans to it (`OTEL_EXPORTER_OTLP_ENDPOINT`), and it shows them as one
//! indented tree per trace, newest first, at `GET /` (and appends each export
//! to a log file). No collector or Jaeger package exists on crates.io, PyPI or
//! Debian for this machine, so `make dev` runs this one; the integration tests
//! run it in-process to check the parent/child chain of a job's spans.
//!
//! It accepts `POST /v1/traces` with `application/x-protobuf` bodies (the OTLP
//! exporter's default), keeps the last [`MAX_SPANS`] spans in memory, and
//! answers an empty `ExportTraceServiceResponse`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;

/// Spans kept in memory; older ones are forgotten.
pub const MAX_SPANS: usize = 20_000;
/// Traces shown by `GET /` (`?limit=N` shows up to 1000).
const TRACES_SHOWN: usize = 25;

/// One received span, IDs in lowercase hex.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    pub service: String,
    pub name: String,
    pub kind: String,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: BTreeMap<String, String>,
}

impl Span {
    pub fn duration_ms(&self) -> f64 {
        self.end_unix_nanos.saturating_sub(self.start_unix_nanos) as f64 / 1e6
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// The spans of one OTLP/HTTP protobuf export.
pub fn decode(body: &[u8]) -> Result<Vec<Span>, String> {
    let request = ExportTraceServiceRequest::decode(body).map_err(|e| e.to_string())?;
    let mut spans = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        let service = resource
            .get("service.name")
            .cloned()
            .unwrap_or_else(|| "unknown".to_owned());
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                let kind = SpanKind::try_from(span.kind)
                    .map(|k| {
                        k.as_str_name()
                            .trim_start_matches("SPAN_KIND_")
                            .to_ascii_lowercase()
                    })
                    .unwrap_or_default();
                spans.push(Span {
                    service: service.clone(),
                    name: span.name,
                    kind,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: (!span.parent_span_id.is_empty())
                        .then(|| hex(&span.parent_span_id)),
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    attributes: attributes(&span.attributes),
                });
            }
        }
    }
    Ok(spans)
}

/// Every span received so far (the last [`MAX_SPANS`]); clones share them.
#[derive(Debug, Clone, Default)]
pub struct Collected {
    spans: Arc<Mutex<VecDeque<Span>>>,
    /// While set, exports are never answered (a collector that hangs).
    stalled: Arc<std::sync::atomic::AtomicBool>,
}

impl Collected {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Span>> {
        self.spans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes the receiver hang on every export (`true`) or answer again (tests).
    pub fn stall(&self, stalled: bool) {
        self.stalled
            .store(stalled, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn add(&self, spans: Vec<Span>) {
        let mut all = self.lock();
        all.extend(spans);
        while all.len() > MAX_SPANS {
            all.pop_front();
        }
    }

    pub fn spans(&self) -> Vec<Span> {
        self.lock().iter().cloned().collect()
    }

    /// The `limit` most recent traces as indented trees, newest first.
    pub fn render(&self, limit: usize) -> String {
        render(&self.spans(), limit)
    }
}

/// `spans` as one tree per trace (children under their parent, by start time),
/// the traces newest first; a span whose parent never arrived is a root.
pub fn render(spans: &[Span], limit: usize) -> String {
    let mut traces: HashMap<&str, Vec<&Span>> = HashMap::new();
    for span in spans {
        traces.entry(span.trace_id.as_str()).or_default().push(span);
    }
    let mut order: Vec<(&str, u64)> = traces
        .iter()
        .map(|(id, spans)| {
            (
                *id,
                spans.iter().map(|s| s.start_unix_nanos).min().unwrap_or(0),
            )
        })
        .collect();
    order.sort_by_key(|(_, start)| std::cmp::Reverse(*start));
    let mut out = String::new();
    for (trace_id, _) in order.into_iter().take(limit) {
        let mut members = traces.remove(trace_id).unwrap_or_default();
        members.sort_by_key(|s| s.start_unix_nanos);
        let ids: std::collections::HashSet<&str> =
            members.iter().map(|s| s.span_id.as_str()).collect();
        let services: std::collections::BTreeSet<&str> =
            members.iter().map(|s| s.service.as_str()).collect();
        out.push_str(&format!(
            "trace {trace_id}: {} spans from {}\n",
            members.len(),
            services.into_iter().collect::<Vec<_>>().join(", ")
        ));
        let roots: Vec<&Span> = members
            .iter()
            .copied()
            .filter(|s| s.parent_span_id.as_deref().is_none_or(|p| !ids.contains(p)))
            .collect();
        for root in roots {
            tree(&mut out, root, &members, 1);
        }
        out.push('\n');
    }
    if out.is_empty() {
        out.push_str("no traces yet: call the API, then reload\n");
    }
    out
}

fn tree(out: &mut String, span: &Span, all: &[&Span], depth: usize) {
    let shown: Vec<String> = span
        .attributes
        .iter()
        .filter(|(k, _)| {
            !k.starts_with("code.")
                && !k.starts_with("thread.")
                && k.as_str() != "busy_ns"
                && k.as_str() != "idle_ns"
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    out.push_str(&format!(
        "{:indent$}{} · {} [{}] {:.1} ms  span {}  {}\n",
        "",
        span.service,
        span.name,
        span.kind,
        span.duration_ms(),
        span.span_id,
        shown.join(" "),
        indent = depth * 2
    ));
    for child in all
        .iter()
        .filter(|s| s.parent_span_id.as_deref() == Some(span.span_id.as_str()))
    {
        tree(out, child, all, depth + 1);
    }
}

/// Serves the receiver on `listener` until the process ends; each export is
/// also appended to `log` (one line per span) when given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    collected: Collected,
    log: Option<PathBuf>,
) -> std::io::Result<()> {
    let receiving = collected.clone();
    let app = axum::Router::new()
        .route(
            "/v1/traces",
            axum::routing::post(move |body: Bytes| {
                let collected = receiving.clone();
                let log = log.clone();
                async move {
                    if collected.stalled.load(std::sync::atomic::Ordering::SeqCst) {
                        std::future::pending::<()>().await;
                    }
                    receive(&collected, log.as_ref(), &body)
                }
            }),
        )
        .route(
            "/",
            axum::routing::get(move |query: axum::extract::RawQuery| {
                // `?limit=N`: more (or fewer) traces than the default, at most 1000.
                let limit = query
                    .0
                    .as_deref()
                    .and_then(|q| q.strip_prefix("limit="))
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(TRACES_SHOWN)
                    .min(1000);
                let page = collected.render(limit);
                async move { ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], page) }
            }),
        );
    axum::serve(listener, app).await
}

fn receive(collected: &Collected, log: Option<&PathBuf>, body: &[u8]) -> axum::response::Response {
    let spans = match decode(body) {
        Ok(spans) => spans,
        Err(error) => return (StatusCode::BAD_REQUEST, error).into_response(),
    };
    if let Some(path) = log
        && let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        for span in &spans {
            let _ = writeln!(
                file,
                "{} trace {} span {} parent {} {:.1} ms {}",
                span.service,
                span.trace_id,
                span.span_id,
                span.parent_span_id.as_deref().unwrap_or("-"),
                span.duration_ms(),
                span.name
            );
        }
    }
    collected.add(spans);
    (
        [(header::CONTENT_TYPE, "application/x-protobuf")],
        Vec::<u8>::new(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, start: u64) -> Span {
        Span {
            service: "svc".into(),
            name: format!("span-{id}"),
            kind: "server".into(),
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_owned),
            start_unix_nanos: start,
            end_unix_nanos: start + 2_000_000,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn children_are_indented_under_their_parent() {
        let text = render(
            &[
                span("b", Some("a"), 2),
                span("a", None, 1),
                span("c", Some("b"), 3),
            ],
            10,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("trace t1: 3 spans"));
        assert!(lines[1].starts_with("  svc · span-a"));
        assert!(lines[2].starts_with("    svc · span-b"));
        assert!(lines[3].starts_with("      svc · span-c"));
        assert!(render(&[], 10).starts_with("no traces yet"));
    }
}
