//! Cost budgets against the local AWS (issue 14): the platform sets a tenant's
//! budget through api-admin, api-chat bills answers against it, job-queue-sweep
//! alerts once per threshold and period, and the hard limit refuses inference
//! (chat, streamed chat, embeddings, jobs) with a `budget-exceeded` problem
//! while reads keep working, until the period ends or the budget is raised.

// Test code: a failed expectation should fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use harness::chat::{PATH, completion, setup, streamed};
use harness::{
    alert_webhook, body_json, chat_handle, issue_token, json_request, local_aws, request_with,
    sdk_config_for, status_and_json, usage_items, with_bearer,
};
use serde_json::{Value, json};
use sophia_shared::clock::{next_midnight, next_month_start, now_secs, rfc3339};
use sophia_shared::config::Env;

struct Budgeted {
    s: harness::chat::Setup,
    admin: api_admin::handler::Deps,
    sweeper: job_queue_sweep::handler::Deps,
    platform_token: String,
    tenant_admin_token: String,
}

async fn budgeted() -> Budgeted {
    let s = setup(1, &[]).await;
    let sdk = sdk_config_for(&local_aws().endpoint).await;
    let env = Env::new(&s.stack.env);
    Budgeted {
        admin: api_admin::handler::Deps::from_env(&env, &sdk)
            .await
            .unwrap(),
        sweeper: job_queue_sweep::handler::Deps::from_env(&env, &sdk).unwrap(),
        platform_token: issue_token(&s.stack, "platform", &["admin", "platform"]).await,
        tenant_admin_token: issue_token(&s.stack, "tenant-a", &["admin"]).await,
        s,
    }
}

impl Budgeted {
    async fn admin(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let request = with_bearer(request_with(method, path, body.as_ref()), token);
        // On the heap, as every call below: the handlers' futures together are
        // too big for a test thread's stack in an unoptimized build.
        status_and_json(&Box::pin(api_admin::handler::handle(&self.admin, request)).await)
    }

    async fn set_budget(&self, budget: Value) -> Value {
        let path = "/v1/admin/tenants/tenant-a/budget";
        let (status, body) = self
            .admin(&self.platform_token, "PUT", path, Some(budget))
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// One chat request of tenant-a through api-chat, read to its end (so it is billed).
    async fn chat(&self, body: &Value) -> (u16, Value, Option<String>) {
        let request = self
            .s
            .deps
            .authorize(json_request("POST", PATH, body, None));
        let response = Box::pin(chat_handle(&self.s.deps, request)).await;
        let retry_after = response
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (
            response.status().as_u16(),
            body_json(&response),
            retry_after,
        )
    }

    /// One run of job-queue-sweep: the budget alerts it sent.
    async fn sweep(&self) -> Vec<String> {
        Box::pin(job_queue_sweep::handler::handle(
            &self.sweeper,
            json!({"run": "test"}),
        ))
        .await
        .unwrap()
        .budget_alerts
    }
}

/// What tenant-a's answers cost so far this month, in micro-USD, from the usage rows.
async fn spent_micro(b: &Budgeted) -> f64 {
    usage_items(&b.s.stack, "tenant-a", "usage#")
        .await
        .iter()
        .map(|item| harness::number_of(item, "cost_micro_usd"))
        .sum()
}

fn assert_budget_exceeded(status: u16, body: &Value, period: &str, resets_at: &str) {
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["type"], "urn:sophia:problem:budget-exceeded", "{body}");
    assert_eq!(body["retryable"], true);
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains(period) && detail.contains(resets_at),
        "{detail}"
    );
}

#[tokio::test]
async fn thresholds_alert_once_each_and_the_hard_limit_refuses_inference_until_the_budget_allows_it()
 {
    let b = budgeted().await;
    let alerts = alert_webhook(&b.s.stack).await;
    let question = completion("how far along is the migration");

    // One answer's cost sets the budget: each answer is 30 % of it. (A budget
    // set while api-chat believes the tenant has none counts within 30 s; the
    // sweep's run covers that gap in production.)
    b.set_budget(json!({"monthly_usd": 1000})).await;
    let (status, _, _) = b.chat(&question).await;
    assert_eq!(status, 200);
    let one = spent_micro(&b).await;
    assert!(one > 0.0);
    let monthly_usd = one * 10.0 / 3.0 / 1e6;
    let status = b.set_budget(json!({"monthly_usd": monthly_usd})).await;
    assert_eq!(
        status["budget"]["alert_thresholds_percent"],
        json!([50, 80, 100])
    );
    assert_eq!(status["periods"][0]["period"], "monthly");
    assert!(
        (status["periods"][0]["percent"].as_f64().unwrap() - 30.0).abs() < 0.5,
        "{status}"
    );
    assert!(status["blocked_until"].is_null());
    assert!(b.sweep().await.is_empty(), "30 %: no threshold yet");

    // 60 %: the 50 % alert, once, however often the sweep runs.
    assert_eq!(b.chat(&question).await.0, 200);
    let sent = b.sweep().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        sent[0].starts_with("budget#tenant-a#") && sent[0].ends_with("#50"),
        "{sent:?}"
    );
    assert!(b.sweep().await.is_empty());

    // 90 %: the 80 % alert, once.
    assert_eq!(b.chat(&question).await.0, 200);
    let sent = b.sweep().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].ends_with("#80"), "{sent:?}");

    // The request that crosses 100 % completes and is billed...
    let (status, answer, _) = b.chat(&question).await;
    assert_eq!(status, 200, "{answer}");
    assert!(spent_micro(&b).await > monthly_usd * 1e6);

    // ...and inference after it is refused until the month ends.
    let resets_at = rfc3339(next_month_start(now_secs()));
    let (status, body, retry_after) = b.chat(&question).await;
    assert_budget_exceeded(status, &body, "monthly", &resets_at);
    let retry_after: u64 = retry_after.expect("Retry-After").parse().unwrap();
    assert!(retry_after > 0 && retry_after <= next_month_start(now_secs()) - now_secs() + 5);
    let (status, body, _) = b.chat(&streamed("and now in pieces")).await;
    assert_budget_exceeded(status, &body, "monthly", &resets_at);
    let embeddings = json!({"model": "sophia-embed", "input": "Dana owns the migration"});
    let request =
        b.s.deps
            .authorize(json_request("POST", "/v1/embeddings", &embeddings, None));
    let response = Box::pin(chat_handle(&b.s.deps, request)).await;
    assert_budget_exceeded(
        response.status().as_u16(),
        &body_json(&response),
        "monthly",
        &resets_at,
    );
    let jobs_env = b.s.stack.env_with(&[(
        "FLEET_ENDPOINTS",
        &format!("primary={}", b.s.sims[0].base_url()),
    )]);
    let sdk = sdk_config_for(&local_aws().endpoint).await;
    let jobs = api_jobs::handler::Deps::from_env(&Env::new(&jobs_env), &sdk)
        .await
        .unwrap();
    let jobs_token = issue_token(&b.s.stack, "tenant-a", &["jobs"]).await;
    let request = with_bearer(
        json_request("POST", "/v1/jobs", &question, None),
        &jobs_token,
    );
    let response = Box::pin(api_jobs::handler::handle(&jobs, request)).await;
    assert_budget_exceeded(
        response.status().as_u16(),
        &body_json(&response),
        "monthly",
        &resets_at,
    );
    let answered = b.s.sims[0]
        .sim
        .counters
        .completions
        .load(std::sync::atomic::Ordering::SeqCst);

    // Reads keep working: the model list, the tenant's own budget.
    let request =
        b.s.deps
            .authorize(json_request("GET", "/v1/models", &Value::Null, None));
    assert_eq!(
        Box::pin(chat_handle(&b.s.deps, request)).await.status(),
        200
    );
    let (status, own) = b
        .admin(&b.tenant_admin_token, "GET", "/v1/admin/budget", None)
        .await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["blocked_until"], resets_at.as_str());
    assert_eq!(own["periods"][0]["crossed_percent"], json!([50, 80, 100]));

    // The 100 % alert, once; three messages in all, one per threshold.
    let sent = b.sweep().await;
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(sent[0].ends_with("#100"), "{sent:?}");
    assert!(b.sweep().await.is_empty());
    let messages = alerts.lock().unwrap().clone();
    assert_eq!(messages.len(), 3, "{messages:?}");
    assert!(
        messages[2].contains("inference is refused until"),
        "{messages:?}"
    );

    // The next period starts unblocked, its spend at zero.
    let next_month = next_month_start(now_secs()) + 60;
    let quotas = &b.s.deps.inference.billing.quotas;
    let quota = quotas.quota("tenant-a").await.unwrap();
    assert!(
        quotas
            .reserve_counted_at("tenant-a", quota, next_month)
            .await
            .is_ok()
    );
    let budgets = &b.s.deps.inference.billing.budgets;
    let budget = budgets.get("tenant-a").await.unwrap().unwrap();
    let then = budgets
        .status("tenant-a", &budget, next_month)
        .await
        .unwrap();
    assert_eq!(then.periods[0].spent_usd, 0.0);
    assert!(then.blocked_until.is_none() && then.periods[0].crossed_percent.is_empty());
    assert_eq!(
        b.s.sims[0]
            .sim
            .counters
            .completions
            .load(std::sync::atomic::Ordering::SeqCst),
        answered,
        "no refused request reached the fleet"
    );

    // Raising the budget lifts the block at once.
    let status = b
        .set_budget(json!({"monthly_usd": monthly_usd * 100.0}))
        .await;
    assert!(status["blocked_until"].is_null(), "{status}");
    assert_eq!(b.chat(&question).await.0, 200);

    // A daily budget below today's spend blocks until midnight, with the period named.
    let today_usd = spent_micro(&b).await / 1e6;
    let status = b
        .set_budget(json!({"monthly_usd": monthly_usd * 100.0, "daily_usd": today_usd / 2.0}))
        .await;
    let midnight = rfc3339(next_midnight(now_secs()));
    assert_eq!(status["blocked_until"], midnight.as_str(), "{status}");
    let (status, body, _) = b.chat(&question).await;
    assert_budget_exceeded(status, &body, "daily", &midnight);

    // Removing the budget lifts it too; every change is audited.
    let path = "/v1/admin/tenants/tenant-a/budget";
    let (status, _) = b.admin(&b.platform_token, "DELETE", path, None).await;
    assert_eq!(status, 204);
    assert_eq!(b.chat(&question).await.0, 200);
    let (status, _) = b
        .admin(&b.tenant_admin_token, "GET", "/v1/admin/budget", None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = b.admin(&b.platform_token, "DELETE", path, None).await;
    assert_eq!(status, 404, "nothing left to remove");
    let (status, log) = b
        .admin(&b.tenant_admin_token, "GET", "/v1/admin/audit", None)
        .await;
    assert_eq!(status, 200);
    let changes = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "budget.changed")
        .count();
    assert_eq!(changes, 5);
}

#[tokio::test]
async fn a_bad_budget_is_a_400_and_only_the_platform_sets_one() {
    let b = budgeted().await;
    let path = "/v1/admin/tenants/tenant-a/budget";
    for bad in [
        json!({"monthly_usd": 0}),
        json!({"monthly_usd": -1}),
        json!({"monthly_usd": "ten"}),
        json!({"monthly_usd": 1e12}),
        json!({"monthly_usd": 10, "daily_usd": 0}),
        json!({"monthly_usd": 10, "alert_thresholds_percent": [0, 50]}),
        json!({"monthly_usd": 10, "surprise": true}),
        json!({}),
    ] {
        let (status, body) = b
            .admin(&b.platform_token, "PUT", path, Some(bad.clone()))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["type"]
                .as_str()
                .unwrap()
                .starts_with("urn:sophia:problem:")
        );
    }
    let (status, _) = b
        .admin(
            &b.platform_token,
            "PUT",
            "/v1/admin/tenants/no%20way/budget",
            Some(json!({"monthly_usd": 1})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = b
        .admin(
            &b.tenant_admin_token,
            "PUT",
            path,
            Some(json!({"monthly_usd": 1000})),
        )
        .await;
    assert_eq!(status, 403, "a tenant's admin cannot raise its own budget");
    let (status, _) = b
        .admin(&b.tenant_admin_token, "GET", "/v1/admin/budget", None)
        .await;
    assert_eq!(status, 404, "no budget yet");
}
