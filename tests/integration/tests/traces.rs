//! End-to-end traces (issue 14): with an OTLP endpoint configured, the
//! functions export OpenTelemetry spans, and one trace follows a job from
//! `POST /v1/jobs` through SQS (the trace context in a message attribute) into
//! worker-inference and its fleet call, and a chat request into the fleet (the
//! `traceparent` the simulator receives names the attempt's span). The
//! receiver is the one `make dev` runs (`devtools::traces`), in-process here.
//! A collector that hangs costs an invocation the flush timeout, never its answer.
//!
//! One test: the tracing subscriber is global to the process, so every check
//! shares one receiver.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use devtools::traces::{Collected, Span};
use harness::{body_json, chat_handle, json_request};
use sophia_shared::config::Env;
use sophia_shared::observability::otel;

/// The receiver on its own thread and runtime, for the whole process.
fn start_receiver() -> (String, Collected) {
    let collected = Collected::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let serving = collected.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            devtools::traces::serve(listener, serving, None)
                .await
                .unwrap();
        });
    });
    (url, collected)
}

fn one<'a>(spans: &'a [Span], what: &str, pick: impl Fn(&Span) -> bool) -> &'a Span {
    let found: Vec<&Span> = spans.iter().filter(|s| pick(s)).collect();
    assert_eq!(found.len(), 1, "exactly one {what} among {spans:#?}");
    found[0]
}

fn child_of<'a>(spans: &'a [Span], parent: &Span, name: &str) -> &'a Span {
    one(spans, name, |s| {
        s.name == name
            && s.trace_id == parent.trace_id
            && s.parent_span_id.as_deref() == Some(parent.span_id.as_str())
    })
}

#[tokio::test]
async fn a_job_and_a_chat_request_are_each_one_trace_from_the_api_to_the_fleet() {
    let (url, collected) = start_receiver();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", url.as_str()),
        ("OTEL_FLUSH_TIMEOUT_MS", "500"),
    ];
    sophia_shared::startup::init_observability("integration", &Env::new(&env)).unwrap();
    assert!(otel::enabled());

    // A job: submitted through api-jobs, run by worker-inference.
    let s = harness::jobs::setup(&[]).await;
    let response =
        Box::pin(s.submit(&s.token_a, &harness::jobs::completion("trace me"), None)).await;
    assert_eq!(response.status(), 202);
    let job_id = harness::jobs::job_id(&response);
    otel::flush().await;
    assert_eq!(Box::pin(s.poll_once(false)).await, 1);
    otel::flush().await;
    assert_eq!(s.status(&job_id).await["status"], "done");

    let spans = collected.spans();
    let submit = one(&spans, "POST /v1/jobs request", |s| {
        s.name == "POST /v1/jobs" && s.kind == "server"
    });
    assert!(
        submit.parent_span_id.is_none(),
        "the request started the trace"
    );
    let run = child_of(&spans, submit, "job");
    assert_eq!(run.kind, "consumer");
    assert_eq!(run.attributes["job_id"], job_id);
    let attempt = child_of(&spans, run, "fleet attempt");
    assert_eq!(attempt.kind, "client");
    assert_eq!(attempt.attributes["endpoint"], "primary");
    assert_eq!(attempt.attributes["outcome"], "ok");
    let named = format!("00-{}-{}-01", attempt.trace_id, attempt.span_id);
    assert!(
        s.sim.sim.traceparents().contains(&named),
        "the simulator was told its parent is the attempt: {:?}",
        s.sim.sim.traceparents()
    );

    // A chat request continuing its caller's trace.
    let chat = harness::chat::setup(1, &[]).await;
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = chat.deps.authorize(json_request(
        "POST",
        harness::chat::PATH,
        &harness::chat::completion("traced chat"),
        None,
    ));
    request.headers_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let answer = Box::pin(chat_handle(&chat.deps, request)).await;
    assert_eq!(answer.status(), 200, "{}", body_json(&answer));
    otel::flush().await;
    let spans = collected.spans();
    let served = one(&spans, "the chat request", |s| {
        s.name == "POST /v1/chat/completions" && s.trace_id == caller_trace
    });
    assert_eq!(served.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
    let attempt = child_of(&spans, served, "fleet attempt");
    let named = format!("00-{caller_trace}-{}-01", attempt.span_id);
    assert!(chat.sims[0].sim.traceparents().contains(&named));
    let text = collected.render(5);
    assert!(text.contains("POST /v1/chat/completions"), "{text}");

    // A collector that hangs: the answer is unchanged, the flush gives up in time.
    collected.stall(true);
    let request = chat.deps.authorize(json_request(
        "POST",
        harness::chat::PATH,
        &harness::chat::completion("collector down"),
        None,
    ));
    let answer = Box::pin(chat_handle(&chat.deps, request)).await;
    assert_eq!(answer.status(), 200);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), otel::flush())
        .await
        .expect("the flush is bounded by OTEL_FLUSH_TIMEOUT_MS (500 ms)");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "it did wait for the collector"
    );
    collected.stall(false);
}
