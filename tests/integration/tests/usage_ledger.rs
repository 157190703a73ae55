//! Billing after the answer (issue 16): api-chat bills a completion once the
//! caller has every byte of it, never before, and never loses it. The answer
//! is read here exactly as a client reads it (up to its `Content-Length`, or to
//! `[DONE]`); dropping the body at that point is an instance that died before
//! its billing ran, and job-queue-sweep must then bill it, once.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use harness::chat::{Chat, PATH, completion, setup, streamed};
use harness::{json_request, local_aws, number_of, usage_items};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sophia_shared::config::Env;
use sophia_shared::inference::ledger::Owed;

/// The answer to `body` as a client has it: status and every byte the answer
/// announced (`Content-Length`) or, for a stream, up to `[DONE]`. The body is
/// then dropped without being polled again unless `finish` is set.
async fn read_answer(chat: &Chat, body: &Value, finish: bool) -> (u16, String) {
    let request = chat.authorize(json_request("POST", PATH, body, None));
    let response = api_chat::handler::handle(chat, request).await;
    let status = response.status().as_u16();
    let length: Option<usize> = response
        .headers()
        .get("content-length")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    loop {
        let complete = match length {
            Some(length) => bytes.len() >= length,
            None => bytes.ends_with(b"data: [DONE]\n\n"),
        };
        if complete {
            break;
        }
        let frame = body.frame().await.expect("the answer ended early").unwrap();
        bytes.extend_from_slice(&frame.into_data().unwrap());
    }
    if finish {
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
    (status, String::from_utf8(bytes).unwrap())
}

async fn unsettled(chat: &Chat) -> Vec<Owed> {
    chat.inference
        .billing
        .ledger
        .unsettled(u64::MAX, 1)
        .await
        .unwrap()
}

async fn sweep(stack: &harness::Provisioned) -> job_queue_sweep::handler::SweepReport {
    let sdk = harness::sdk_config_for(&local_aws().endpoint).await;
    let env = stack.env_with(&[("SWEEP_UNBILLED_AFTER_SECS", "0")]);
    let sweeper = job_queue_sweep::handler::Deps::from_env(&Env::new(&env), &sdk).unwrap();
    job_queue_sweep::handler::handle(&sweeper, json!({"run": "test"}))
        .await
        .unwrap()
}

#[tokio::test]
async fn an_answer_whose_instance_died_before_billing_is_billed_once_by_the_sweep() {
    let s = setup(1, &[]).await;
    let body = completion("the instance dies after answering");
    let (status, text) = read_answer(&s.deps, &body, false).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    // The caller has its answer; the usage is owed, not billed.
    assert!(usage_items(&s.stack, "tenant-a", "usage#").await.is_empty());
    let owed = unsettled(&s.deps).await;
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].tenant, "tenant-a");
    assert_eq!(owed[0].model, "sophia-small");
    let estimate = owed[0].prompt_tokens_estimate;
    assert!(estimate > 0);

    let report = sweep(&s.stack).await;
    assert_eq!(
        (
            report.unbilled.billed_estimated,
            report.unbilled.billed_exactly
        ),
        (1, 0)
    );
    let items = usage_items(&s.stack, "tenant-a", "usage#").await;
    assert_eq!(items.len(), 1);
    assert_eq!(number_of(&items[0], "requests"), 1.0);
    assert_eq!(number_of(&items[0], "recovered_requests"), 1.0);
    assert_eq!(number_of(&items[0], "prompt_tokens"), estimate as f64);
    assert_eq!(number_of(&items[0], "completion_tokens"), 0.0);
    assert!(number_of(&items[0], "cost_micro_usd") > 0.0);
    let daily = usage_items(&s.stack, "tenant-a", "daily#").await;
    assert_eq!(number_of(&daily[0], "tokens"), estimate as f64);
    assert_eq!(number_of(&daily[0], "requests"), 1.0);

    // Exactly once: the entry is gone, and a second sweep bills nothing.
    assert!(unsettled(&s.deps).await.is_empty());
    let again = sweep(&s.stack).await;
    assert_eq!(
        again.unbilled.billed_estimated + again.unbilled.billed_exactly,
        0
    );
    let items = usage_items(&s.stack, "tenant-a", "usage#").await;
    assert_eq!(number_of(&items[0], "requests"), 1.0);
}

#[tokio::test]
async fn a_finished_answer_is_billed_by_its_function_and_leaves_the_sweep_nothing() {
    let s = setup(1, &[]).await;
    let (status, text) = read_answer(&s.deps, &completion("one piece"), true).await;
    assert_eq!(status, 200);
    let whole: Value = serde_json::from_str(&text).unwrap();
    let (status, events) = read_answer(&s.deps, &streamed("in pieces"), true).await;
    assert_eq!(status, 200);
    assert!(events.ends_with("data: [DONE]\n\n"));

    assert!(unsettled(&s.deps).await.is_empty());
    let items = usage_items(&s.stack, "tenant-a", "usage#").await;
    assert_eq!(number_of(&items[0], "requests"), 2.0);
    assert_eq!(number_of(&items[0], "recovered_requests"), 0.0);
    assert!(
        number_of(&items[0], "completion_tokens")
            > whole["usage"]["completion_tokens"].as_f64().unwrap(),
        "both answers' own tokens"
    );
    let report = sweep(&s.stack).await;
    assert_eq!(report.unbilled, Default::default());

    // A stream the fleet could not start is no answer: its entry is closed unbilled.
    harness::chat::fault(&s.sims[0], fleet_sim::FaultMode::Error).await;
    let (status, _) = read_answer(&s.deps, &streamed("refused"), true).await;
    assert!([502, 503].contains(&status), "{status}");
    assert!(unsettled(&s.deps).await.is_empty());
    let items = usage_items(&s.stack, "tenant-a", "usage#").await;
    assert_eq!(number_of(&items[0], "requests"), 2.0);
}

#[tokio::test]
async fn a_late_settlement_after_the_sweep_bills_nothing_twice() {
    let s = setup(1, &[]).await;
    let billing = &s.deps.inference.billing;
    // 40 bytes of request: an estimate of 10 prompt tokens.
    let owed = Owed::new("tenant-b", "sophia-small", "late-request", 40);
    billing.ledger.open(&owed).await.unwrap();
    let report = sweep(&s.stack).await;
    assert_eq!(report.unbilled.billed_estimated, 1);
    // The function was only slow, not dead: its settlement finds the entry gone.
    let usage = sophia_shared::inference::usage::Usage {
        prompt_tokens: 100,
        completion_tokens: 20,
    };
    billing.settle(&owed, true, Some(&usage)).await;
    let items = usage_items(&s.stack, "tenant-b", "usage#").await;
    assert_eq!(number_of(&items[0], "requests"), 1.0);
    assert_eq!(
        number_of(&items[0], "prompt_tokens"),
        10.0,
        "the estimate, once"
    );
    assert_eq!(number_of(&items[0], "completion_tokens"), 0.0);
}

/// An entry whose write "failed" on our side may still land (found by `make
/// chaos`: the local AWS paused for 3 s wrote it when it resumed). The answer
/// is then billed with a tombstone in the entry's place, so the sweep never
/// bills it again, whether the entry landed before the billing or after it.
#[tokio::test]
async fn an_entry_that_lands_after_its_write_timed_out_is_never_billed_twice() {
    let s = setup(1, &[]).await;
    let billing = &s.deps.inference.billing;
    let usage = sophia_shared::inference::usage::Usage {
        prompt_tokens: 100,
        completion_tokens: 20,
    };
    // Landed before the function billed (its write only timed out on our side).
    let early = Owed::new("tenant-c", "sophia-small", "landed-early", 40);
    billing.ledger.open(&early).await.unwrap();
    billing.settle(&early, false, Some(&usage)).await;
    // The same billing applied again (an SDK retry of a write whose answer was
    // lost in a timeout): the tombstone cancels it.
    billing.settle(&early, false, Some(&usage)).await;
    // Lands after the function billed: the write finds the tombstone.
    let late = Owed::new("tenant-c", "sophia-small", "lands-late", 40);
    billing.settle(&late, false, Some(&usage)).await;
    billing.ledger.open(&late).await.unwrap();
    // No answer at all, and the entry lands anyway: closed, never billed.
    let unanswered = Owed::new("tenant-c", "sophia-small", "no-answer", 40);
    billing.settle(&unanswered, false, None).await;
    billing.ledger.open(&unanswered).await.unwrap();

    // An answer without any entry (embeddings, a tool's completion) is billed
    // the same way, with a receipt of its own.
    billing.account("tenant-c", "sophia-small", &usage).await;

    let report = sweep(&s.stack).await;
    assert_eq!(
        report.unbilled,
        Default::default(),
        "nothing left to recover"
    );
    let items = usage_items(&s.stack, "tenant-c", "usage#").await;
    assert_eq!(
        number_of(&items[0], "requests"),
        3.0,
        "the three answers, once each"
    );
    assert_eq!(number_of(&items[0], "prompt_tokens"), 300.0);
    assert_eq!(number_of(&items[0], "recovered_requests"), 0.0);
    let daily = usage_items(&s.stack, "tenant-c", "daily#").await;
    assert_eq!(
        number_of(&daily[0], "tokens"),
        360.0,
        "the quota counted once each"
    );
}

/// A caller this instance admitted with room to spare has its next fleet call
/// started alongside the admission writes (issue 16). When that admission
/// refuses (here: the tenant's other callers spent the daily quota meanwhile),
/// the answer is discarded: 429, nothing billed, the ledger entry closed. The
/// caller's next request then waits for admission and costs the fleet nothing.
#[tokio::test]
async fn a_refusal_found_alongside_the_fleet_call_discards_the_answer_and_bills_nothing() {
    let s = setup(1, &[("TENANT_DEFAULT_REQUESTS_PER_DAY", "4")]).await;
    let sim = &s.sims[0];
    for round in ["admitted first", "admitted alongside"] {
        let (status, _) = read_answer(&s.deps, &completion(round), true).await;
        assert_eq!(status, 200, "{round}");
    }
    assert_eq!(harness::chat::calls(sim), 2);
    // Two more requests of the tenant, counted by other instances.
    let quotas = &s.deps.inference.billing.quotas;
    quotas.reserve("tenant-a").await.unwrap();
    quotas.reserve("tenant-a").await.unwrap();

    // Room was known: the fleet is asked, but the quota refuses the answer.
    let (status, text) = read_answer(&s.deps, &streamed("crosses the quota"), true).await;
    assert_eq!(status, 429, "{text}");
    assert!(
        !text.contains("data:"),
        "not one event of the discarded stream"
    );
    assert_eq!(
        harness::chat::calls(sim),
        3,
        "the fleet call went alongside"
    );
    // Refused: the caller waits for admission first, and the fleet is not asked.
    let (status, _) = read_answer(&s.deps, &completion("refused first"), true).await;
    assert_eq!(status, 429);
    assert_eq!(harness::chat::calls(sim), 3);

    assert!(unsettled(&s.deps).await.is_empty(), "the entry was closed");
    let items = usage_items(&s.stack, "tenant-a", "usage#").await;
    assert_eq!(
        number_of(&items[0], "requests"),
        2.0,
        "only the two answers"
    );
    let daily = usage_items(&s.stack, "tenant-a", "daily#").await;
    assert_eq!(number_of(&daily[0], "requests"), 4.0);
}
