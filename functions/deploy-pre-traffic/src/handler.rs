//! CodeDeploy's `BeforeAllowTraffic` hook: before any traffic shifts to a
//! release, every new function version is invoked directly (its version ARN,
//! never the alias) with samples from `events/` whose answers are known and
//! which change nothing: a liveness check, unauthenticated requests to
//! protected routes (401 problems), a poison queue record (reported in
//! `batchItemFailures`), a malformed scheduled event (refused as
//! `NonRetryable.Invalid`). Any 5xx, wrong status, wrong problem type, function
//! error or timeout fails the hook, and CodeDeploy rolls the deployment back.
//!
//! The verdict is reported exactly once ([`sophia_shared::ops::deploy_hook`]),
//! also when the checks fail or the invocation is about to run out of time:
//! the checks get the invocation's time minus a margin for the report.
//!
//! Invocations of a version ARN are not alias invocations, so they do not
//! count in the new-version alarms (`ExecutedVersion` of the alias `live`).

use std::time::{Duration, Instant};

use aws_sdk_lambda::primitives::Blob;
use serde_json::{Value, json};
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::ops::deploy_hook::{
    HookError, HookEvent, codedeploy_client, report, report_margin, verdict, work_until,
};

pub const SERVICE: &str = "deploy-pre-traffic";

/// What an invocation of a sample must answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Expect {
    /// An API Gateway answer with this status and, when given, problem type
    /// (`urn:sophia:problem:<slug>`).
    Http(u16, Option<&'static str>),
    /// A queue batch whose `batchItemFailures` are exactly these message IDs.
    BatchFailures(&'static [&'static str]),
    /// A function error of this type (the input refused, nothing retried).
    Refused(&'static str),
}

/// One sample of one function.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    pub function: &'static str,
    pub sample: &'static str,
    pub event: &'static str,
    pub expect: Expect,
}

macro_rules! check {
    ($function:literal, $sample:literal, $expect:expr) => {
        Check {
            function: $function,
            sample: $sample,
            event: include_str!(concat!("../../../events/", $function, "/", $sample)),
            expect: $expect,
        }
    };
}

const UNAUTHORIZED: Expect = Expect::Http(401, Some("unauthorized"));

/// Every function's checks; samples that would write, bill or call the fleet
/// are not among them.
pub const CHECKS: &[Check] = &[
    check!("api-health", "health.json", Expect::Http(200, None)),
    check!(
        "api-health",
        "unknown-route.json",
        Expect::Http(404, Some("route-not-found"))
    ),
    check!("api-chat", "models.json", UNAUTHORIZED),
    check!("api-auth", "token-bad-key.json", UNAUTHORIZED),
    check!(
        "api-auth",
        "refresh-malformed.json",
        Expect::Http(400, Some("malformed-json"))
    ),
    check!("api-admin", "list-keys.json", UNAUTHORIZED),
    check!("api-jobs", "read-unknown.json", UNAUTHORIZED),
    check!("api-dashboard", "document.json", UNAUTHORIZED),
    check!("api-memory", "get-unknown.json", UNAUTHORIZED),
    check!("api-mcp", "resource-metadata.json", Expect::Http(200, None)),
    check!(
        "worker-inference",
        "batch.json",
        Expect::BatchFailures(&["0c5e7f2a-2222-4c1e-9a55-000000000002"])
    ),
    check!(
        "worker-memory-embed",
        "batch.json",
        Expect::BatchFailures(&["7d5e7f2a-2222-4c1e-9a55-000000000002"])
    ),
    check!(
        "job-queue-sweep",
        "bad.json",
        Expect::Refused("NonRetryable.Invalid")
    ),
    check!(
        "job-slo-check",
        "bad.json",
        Expect::Refused("NonRetryable.Invalid")
    ),
    check!(
        "job-drift-detect",
        "bad.json",
        Expect::Refused("NonRetryable.Invalid")
    ),
    check!(
        "job-fleet-probe",
        "bad.json",
        Expect::Refused("NonRetryable.Invalid")
    ),
    check!(
        "job-secret-rotate",
        "bad.json",
        Expect::Refused("NonRetryable.Invalid")
    ),
];

/// A function's new version: its name and what to invoke (a version ARN in
/// AWS; the function's name under `cargo lambda watch`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewVersion {
    pub function: String,
    pub target: String,
}

pub struct Deps {
    pub lambda: aws_sdk_lambda::Client,
    pub codedeploy: aws_sdk_codedeploy::Client,
    pub versions: Vec<NewVersion>,
    /// Kept back from the invocation's time for the report.
    pub report_margin: Duration,
}

impl Deps {
    pub fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, ConfigError> {
        let versions = parse_versions(&env.required("NEW_VERSIONS")?)
            .map_err(|reason| ConfigError::new("NEW_VERSIONS", reason))?;
        // Locally the functions run under `cargo lambda watch`, which serves
        // Lambda's Invoke API, and CodeDeploy is a stand-in (no local server has it).
        // Each check bounds its own invocation (the hook's time), and a sample is
        // invoked once: a retry would hide a version that fails now and then.
        let mut lambda = aws_sdk_lambda::config::Builder::from(sdk)
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(900))
                    .operation_attempt_timeout(Duration::from_secs(900))
                    .build(),
            )
            .retry_config(aws_config::retry::RetryConfig::disabled());
        if let Some(url) = env.optional("LAMBDA_ENDPOINT_URL") {
            lambda = lambda.endpoint_url(url);
        }
        Ok(Self {
            lambda: aws_sdk_lambda::Client::from_conf(lambda.build()),
            codedeploy: codedeploy_client(env, sdk),
            versions,
            report_margin: report_margin(env)?,
        })
    }
}

/// `api-health=arn:…:function:x:7,api-chat=…`: every function once, each with checks.
pub fn parse_versions(text: &str) -> Result<Vec<NewVersion>, String> {
    let mut versions: Vec<NewVersion> = Vec::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((function, target)) = pair.split_once('=') else {
            return Err(format!("{pair:?} is not function=version"));
        };
        let (function, target) = (function.trim(), target.trim());
        if target.is_empty() {
            return Err(format!("{function} has no version"));
        }
        if !CHECKS.iter().any(|c| c.function == function) {
            return Err(format!("{function} has no pre-traffic check"));
        }
        if versions.iter().any(|v| v.function == function) {
            return Err(format!("{function} is listed twice"));
        }
        versions.push(NewVersion {
            function: function.to_owned(),
            target: target.to_owned(),
        });
    }
    if versions.is_empty() {
        return Err("no function listed".to_owned());
    }
    Ok(versions)
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub function: String,
    pub sample: &'static str,
    /// `None` when the answer was the expected one.
    pub failure: Option<String>,
    pub millis: u128,
}

/// Runs the checks, then reports the verdict; `deadline` is the invocation's.
pub async fn handle(deps: &Deps, event: Value, deadline: Instant) -> Result<Value, HookError> {
    let event = HookEvent::parse(event)?;
    let checks_until = work_until(deadline, deps.report_margin);
    tracing::info!(
        deployment = %event.deployment_id,
        versions = deps.versions.len(),
        millis_left = %deadline.saturating_duration_since(Instant::now()).as_millis(),
        millis_for_checks = %checks_until.saturating_duration_since(Instant::now()).as_millis(),
        "pre-traffic checks starting"
    );
    let outcomes = run_checks(deps, checks_until).await;
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.failure.is_some()).collect();
    for outcome in &outcomes {
        match &outcome.failure {
            None => {
                tracing::info!(function = %outcome.function, sample = outcome.sample, millis = %outcome.millis, "pre-traffic check passed")
            }
            Some(failure) => {
                tracing::error!(function = %outcome.function, sample = outcome.sample, %failure, "pre-traffic check failed")
            }
        }
    }
    let status = verdict(failed.is_empty());
    report(&deps.codedeploy, &event, status.clone(), deadline).await?;
    tracing::info!(deployment = %event.deployment_id, status = %status.as_str(), checks = outcomes.len(), failed = failed.len(), "verdict reported");
    Ok(json!({
        "deployment_id": event.deployment_id,
        "status": status.as_str(),
        "checks": outcomes.len(),
        "failed": failed.iter().map(|o| json!({
            "function": o.function, "sample": o.sample, "failure": o.failure,
        })).collect::<Vec<_>>(),
    }))
}

/// Every check of every listed version, concurrently, each bounded by `until`.
pub async fn run_checks(deps: &Deps, until: Instant) -> Vec<Outcome> {
    let runs = deps.versions.iter().flat_map(|version| {
        CHECKS
            .iter()
            .filter(move |check| check.function == version.function)
            .map(move |check| run_check(deps, version, check, until))
    });
    futures_util::future::join_all(runs).await
}

async fn run_check(deps: &Deps, version: &NewVersion, check: &Check, until: Instant) -> Outcome {
    let started = Instant::now();
    let left = until.saturating_duration_since(started);
    let invoke = deps
        .lambda
        .invoke()
        .function_name(&version.target)
        .payload(Blob::new(check.event.as_bytes()))
        .send();
    let failure = match tokio::time::timeout(left, invoke).await {
        Err(_) => Some(format!(
            "no answer within {} ms (the hook's time)",
            left.as_millis()
        )),
        Ok(Err(error)) => match emulated_answer(&error) {
            Some((function_error, payload)) => judge(check.expect, function_error, &payload).err(),
            None => Some(format!(
                "invoking {} failed: {}",
                version.target,
                aws_sdk_lambda::error::DisplayErrorContext(error)
            )),
        },
        Ok(Ok(output)) => {
            let payload = output.payload().map(|p| p.as_ref()).unwrap_or_default();
            judge(check.expect, output.function_error(), payload).err()
        }
    };
    Outcome {
        function: version.function.clone(),
        sample: check.sample,
        failure,
        millis: started.elapsed().as_millis(),
    }
}

/// What `cargo lambda watch` answers where Lambda answers differently, as the
/// function's answer: a function error is HTTP 500 with the error
/// (`{"errorType", "errorMessage"}`) as the body, where Lambda answers 200 with
/// `X-Amz-Function-Error`; a streaming function's answer comes back as the
/// HTTP response it streamed (its status and body), where Lambda's Invoke
/// buffers the stream into the payload. Lambda's own errors carry neither
/// shape and stay failed invocations.
fn emulated_answer(
    error: &aws_sdk_lambda::error::SdkError<
        aws_sdk_lambda::operation::invoke::InvokeError,
        aws_sdk_lambda::config::http::HttpResponse,
    >,
) -> Option<(Option<&'static str>, Vec<u8>)> {
    let raw = error.raw_response()?;
    let body = raw.body().bytes()?;
    if raw.headers().get("lambda-runtime-function-response-mode") == Some("streaming") {
        let answer = json!({
            "statusCode": raw.status().as_u16(),
            "body": String::from_utf8_lossy(body),
        });
        return Some((None, answer.to_string().into_bytes()));
    }
    if raw.status().as_u16() != 500 {
        return None;
    }
    let answer: Value = serde_json::from_slice(body).ok()?;
    answer.get("errorType")?.as_str()?;
    Some((Some("Unhandled"), body.to_vec()))
}

/// Whether an answer is the expected one; the reason when it is not.
pub fn judge(expect: Expect, function_error: Option<&str>, payload: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(payload);
    if let Expect::Refused(error_type) = expect {
        let answer: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let got = answer["errorType"].as_str().unwrap_or_default();
        return match function_error {
            Some(_) if got == error_type => Ok(()),
            Some(_) => Err(format!("refused as {got:?}, not {error_type}: {text:.300}")),
            None => Err(format!("accepted a malformed event: {text:.300}")),
        };
    }
    if let Some(kind) = function_error {
        return Err(format!("function error ({kind}): {text:.300}"));
    }
    match expect {
        Expect::Http(status, problem) => {
            let (answer, body) = api_answer(payload)?;
            let got = answer["statusCode"].as_u64().unwrap_or(0);
            if got != u64::from(status) {
                return Err(format!("status {got}, expected {status}: {body:.300}"));
            }
            if let Some(slug) = problem {
                let problem: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let kind = problem["type"].as_str().unwrap_or_default();
                if kind != format!("urn:sophia:problem:{slug}") {
                    return Err(format!("problem type {kind:?}, expected {slug}"));
                }
            }
            Ok(())
        }
        Expect::BatchFailures(expected) => {
            let answer: Value = serde_json::from_slice(payload)
                .map_err(|e| format!("the batch answer is not JSON ({e}): {text:.300}"))?;
            let mut failed: Vec<&str> = answer["batchItemFailures"]
                .as_array()
                .ok_or_else(|| format!("no batchItemFailures in {text:.300}"))?
                .iter()
                .filter_map(|f| f["itemIdentifier"].as_str())
                .collect();
            failed.sort_unstable();
            let mut expected = expected.to_vec();
            expected.sort_unstable();
            if failed == expected {
                Ok(())
            } else {
                Err(format!(
                    "batchItemFailures {failed:?}, expected {expected:?}"
                ))
            }
        }
        Expect::Refused(_) => Ok(()),
    }
}

/// The API Gateway answer and its body text, from a buffered answer or from a
/// streamed one (a JSON prelude, eight NUL bytes, then the body).
fn api_answer(payload: &[u8]) -> Result<(Value, String), String> {
    const SEPARATOR: &[u8] = &[0; 8];
    let (prelude, streamed_body) = match payload.windows(8).position(|w| w == SEPARATOR) {
        Some(at) => (&payload[..at], Some(&payload[at + 8..])),
        None => (payload, None),
    };
    let answer: Value = serde_json::from_slice(prelude).map_err(|e| {
        format!(
            "not an API Gateway answer ({e}): {:.300}",
            String::from_utf8_lossy(payload)
        )
    })?;
    let body = match streamed_body {
        Some(body) => String::from_utf8_lossy(body).into_owned(),
        None => answer["body"].as_str().unwrap_or_default().to_owned(),
    };
    Ok((answer, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_but_the_hooks_has_a_check() {
        let mut functions: Vec<String> = std::fs::read_dir("..")
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| !name.starts_with("deploy-"))
            .collect();
        functions.sort();
        for function in &functions {
            assert!(
                CHECKS.iter().any(|c| c.function == function),
                "{function} has no pre-traffic check"
            );
        }
        assert!(
            CHECKS
                .iter()
                .all(|c| functions.iter().any(|f| f == c.function))
        );
    }

    #[test]
    fn versions_are_listed_once_each_with_checks() {
        let parsed = parse_versions("api-health=arn:1, api-chat=arn:2").unwrap();
        assert_eq!(parsed[1].function, "api-chat");
        assert_eq!(parsed[1].target, "arn:2");
        assert!(parse_versions("").is_err());
        assert!(parse_versions("api-health").is_err());
        assert!(parse_versions("api-health=").is_err());
        assert!(parse_versions("api-health=a,api-health=b").is_err());
        assert!(
            parse_versions("api-nothing=a")
                .unwrap_err()
                .contains("no pre-traffic check")
        );
    }

    #[test]
    fn answers_are_judged_strictly() {
        let ok = br#"{"statusCode":401,"body":"{\"type\":\"urn:sophia:problem:unauthorized\"}"}"#;
        assert_eq!(judge(UNAUTHORIZED, None, ok), Ok(()));
        let server_error = br#"{"statusCode":500,"body":"{}"}"#;
        assert!(
            judge(UNAUTHORIZED, None, server_error)
                .unwrap_err()
                .contains("status 500")
        );
        let other_problem = br#"{"statusCode":401,"body":"{\"type\":\"urn:sophia:problem:x\"}"}"#;
        assert!(judge(UNAUTHORIZED, None, other_problem).is_err());
        let mut streamed = br#"{"statusCode":401,"headers":{}}"#.to_vec();
        streamed.extend_from_slice(&[0; 8]);
        streamed.extend_from_slice(br#"{"type":"urn:sophia:problem:unauthorized"}"#);
        assert_eq!(judge(UNAUTHORIZED, None, &streamed), Ok(()));
        assert!(judge(UNAUTHORIZED, Some("Unhandled"), ok).is_err());

        let refused = br#"{"errorType":"NonRetryable.Invalid","errorMessage":"bad"}"#;
        let expect = Expect::Refused("NonRetryable.Invalid");
        assert_eq!(judge(expect, Some("Unhandled"), refused), Ok(()));
        assert!(judge(expect, None, b"{}").unwrap_err().contains("accepted"));
        let retryable = br#"{"errorType":"Retryable.Storage"}"#;
        assert!(judge(expect, Some("Unhandled"), retryable).is_err());

        let batch = Expect::BatchFailures(&["b"]);
        let answer = br#"{"batchItemFailures":[{"itemIdentifier":"b"}]}"#;
        assert_eq!(judge(batch, None, answer), Ok(()));
        assert!(judge(batch, None, br#"{"batchItemFailures":[]}"#).is_err());
    }
}
