//! Liveness and readiness.
//!
//! `GET /health` does no I/O: it answers whether this process can serve at all.
//! `GET /ready` checks every dependency a request may need — DynamoDB, SQS and each
//! fleet endpoint — concurrently, each under a short timeout, so the whole check
//! costs one timeout at worst. It answers 200 when all are fine, else a 503
//! `not-ready` problem that names the failing dependencies and carries every
//! dependency's status and latency. `GET /openapi.json` is the API's contract.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use futures_util::future::join_all;
use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use sophia_shared::aws::AwsSettings;
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::fleet::settings::{Endpoint, parse_endpoints};
use sophia_shared::http::policy::HttpPolicy;
use sophia_shared::http::request::{ApiRequest, json_response};
use sophia_shared::http::routing::Route;
use sophia_shared::http::serve;
use sophia_shared::observability::RequestContext;
use sophia_shared::outbound::{OutboundClient, OutboundError, OutboundSettings};
use sophia_shared::problem::ApiError;

pub const SERVICE: &str = "api-health";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthRoute {
    Liveness,
    Readiness,
    OpenApi,
}

pub const ROUTES: [Route<HealthRoute>; 3] = [
    Route::public(Method::GET, "/health", HealthRoute::Liveness),
    Route::public(Method::GET, "/ready", HealthRoute::Readiness),
    Route::public(Method::GET, "/openapi.json", HealthRoute::OpenApi),
];

/// The API's contract, served as it is in the repository (`api/openapi.json`).
pub const OPENAPI: &str = include_str!("../../../api/openapi.json");

/// The item readiness reads: its absence is fine, only the round trip matters.
const READINESS_KEY: &str = "readiness#probe";

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub state_table: String,
    pub jobs_queue_url: String,
    pub fleet: Vec<Endpoint>,
    pub check_timeout: Duration,
    pub http: HttpPolicy,
    pub aws: AwsSettings,
    pub outbound: OutboundSettings,
}

impl HealthConfig {
    /// `STATE_TABLE`, `JOBS_QUEUE_URL`, `FLEET_ENDPOINTS` (required);
    /// `READY_CHECK_TIMEOUT_MS` (default 800) plus the shared HTTP, AWS and outbound settings.
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        let fleet = parse_endpoints("FLEET_ENDPOINTS", &env.list("FLEET_ENDPOINTS"))?;
        if fleet.is_empty() {
            return Err(ConfigError::new(
                "FLEET_ENDPOINTS",
                "is required: name=url pairs, comma-separated",
            ));
        }
        Ok(Self {
            state_table: env.required("STATE_TABLE")?,
            jobs_queue_url: env.required("JOBS_QUEUE_URL")?,
            fleet,
            check_timeout: env.millis_or("READY_CHECK_TIMEOUT_MS", 800, 10_000)?,
            http: HttpPolicy::from_env(SERVICE, env)?,
            aws: AwsSettings::from_env(env)?,
            outbound: OutboundSettings::from_env(env)?,
        })
    }
}

/// Clients built once per cold start.
pub struct Deps {
    pub config: HealthConfig,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub sqs: aws_sdk_sqs::Client,
    pub outbound: OutboundClient,
}

impl Deps {
    pub fn new(config: HealthConfig, sdk: &aws_config::SdkConfig) -> Result<Self, OutboundError> {
        Ok(Self {
            outbound: OutboundClient::new(config.outbound)?,
            dynamodb: aws_sdk_dynamodb::Client::new(sdk),
            sqs: aws_sdk_sqs::Client::new(sdk),
            config,
        })
    }
}

pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    serve(&deps.config.http, &ROUTES, request, |api| route(deps, api)).await
}

async fn route(deps: &Deps, api: ApiRequest<HealthRoute>) -> Result<Response<Body>, ApiError> {
    match api.route {
        HealthRoute::Liveness => json_response(
            StatusCode::OK,
            &serde_json::json!({
                "status": "ok",
                "service": SERVICE,
                "version": env!("CARGO_PKG_VERSION"),
            }),
        ),
        HealthRoute::Readiness => readiness(deps, &api.ctx).await,
        HealthRoute::OpenApi => Response::builder()
            .status(StatusCode::OK)
            .header(lambda_http::http::header::CONTENT_TYPE, "application/json")
            .body(Body::Text(OPENAPI.to_owned()))
            .map_err(|error| ApiError::internal(format!("building the document: {error}"))),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    Down,
}

async fn readiness(deps: &Deps, ctx: &RequestContext) -> Result<Response<Body>, ApiError> {
    let limit = deps
        .config
        .check_timeout
        .min(ctx.remaining(Duration::from_millis(100)));
    let (dynamodb, sqs, fleet) = futures_util::join!(
        timed("dynamodb".to_owned(), limit, check_dynamodb(deps)),
        timed("sqs".to_owned(), limit, check_sqs(deps)),
        join_all(deps.config.fleet.iter().map(|endpoint| {
            timed(
                format!("fleet:{}", endpoint.name),
                limit,
                check_fleet(deps, endpoint, limit, ctx),
            )
        })),
    );
    let mut checks = vec![dynamodb, sqs];
    checks.extend(fleet);
    let failing: Vec<&str> = checks
        .iter()
        .filter(|check| check.status == CheckStatus::Down)
        .map(|check| check.name.as_str())
        .collect();
    if failing.is_empty() {
        return json_response(
            StatusCode::OK,
            &serde_json::json!({ "status": "ready", "checks": checks }),
        );
    }
    for check in checks
        .iter()
        .filter(|check| check.status == CheckStatus::Down)
    {
        tracing::warn!(dependency = %check.name, reason = ?check.reason, "dependency not ready");
    }
    Err(ApiError::NotReady {
        failing: failing.join(", "),
        checks: serde_json::to_value(&checks)
            .map_err(|error| ApiError::internal(format!("serializing checks: {error}")))?,
    })
}

/// Runs one check under `limit`, measuring its latency.
async fn timed<F>(name: String, limit: Duration, check: F) -> Check
where
    F: Future<Output = Result<(), &'static str>>,
{
    let started = Instant::now();
    let outcome = match tokio::time::timeout(limit, check).await {
        Ok(outcome) => outcome,
        Err(_) => Err("timeout"),
    };
    Check {
        name,
        status: if outcome.is_ok() {
            CheckStatus::Ok
        } else {
            CheckStatus::Down
        },
        latency_ms: (started.elapsed().as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        reason: outcome.err(),
    }
}

async fn check_dynamodb(deps: &Deps) -> Result<(), &'static str> {
    deps.dynamodb
        .get_item()
        .table_name(&deps.config.state_table)
        .key("pk", AttributeValue::S(READINESS_KEY.to_owned()))
        .key("sk", AttributeValue::S(READINESS_KEY.to_owned()))
        .send()
        .await
        .map(|_| ())
        .map_err(|error| classify_sdk_error("dynamodb", &error))
}

async fn check_sqs(deps: &Deps) -> Result<(), &'static str> {
    deps.sqs
        .get_queue_attributes()
        .queue_url(&deps.config.jobs_queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map(|_| ())
        .map_err(|error| classify_sdk_error("sqs", &error))
}

async fn check_fleet(
    deps: &Deps,
    endpoint: &Endpoint,
    limit: Duration,
    ctx: &RequestContext,
) -> Result<(), &'static str> {
    let url = format!("{}/health", endpoint.base_url);
    deps.outbound
        .get_ok(&url, limit, Some(ctx))
        .await
        .map(|_| ())
        .map_err(|error| {
            tracing::debug!(endpoint = %endpoint.name, %error, "fleet readiness check failed");
            error.kind()
        })
}

/// A coarse, public reason for an SDK failure; the full error goes to the log only.
fn classify_sdk_error<E, R>(
    dependency: &'static str,
    error: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> &'static str
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::SdkError;
    tracing::debug!(dependency, error = %aws_sdk_dynamodb::error::DisplayErrorContext(error), "readiness check failed");
    match error {
        SdkError::TimeoutError(_) => "timeout",
        SdkError::DispatchFailure(failure) if failure.is_timeout() => "timeout",
        SdkError::DispatchFailure(_) => "unreachable",
        SdkError::ServiceError(_) => "rejected",
        _ => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<(&'static str, &'static str)> {
        vec![
            ("STATE_TABLE", "t"),
            ("JOBS_QUEUE_URL", "http://127.0.0.1:1/q"),
            ("FLEET_ENDPOINTS", "primary=http://127.0.0.1:1"),
        ]
    }

    #[test]
    fn config_names_missing_variables() {
        for missing in ["STATE_TABLE", "JOBS_QUEUE_URL", "FLEET_ENDPOINTS"] {
            let vars: Vec<_> = env().into_iter().filter(|(k, _)| *k != missing).collect();
            let error = HealthConfig::from_env(&Env::new(&vars)).unwrap_err();
            assert_eq!(error.variable, missing);
        }
        assert!(HealthConfig::from_env(&Env::new(&env())).is_ok());
    }

    /// The same files `cargo lambda invoke --data-file` uses; none of these needs I/O.
    #[tokio::test]
    async fn sample_events_get_their_documented_answers() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let config = HealthConfig::from_env(&Env::new(&env())).unwrap();
        let deps = Deps::new(config, &sdk).unwrap();
        for (file, status, problem) in [
            ("health.json", 200, None),
            ("unknown-route.json", 404, Some("route-not-found")),
            ("wrong-method.json", 405, Some("method-not-allowed")),
            ("oversized-body.json", 413, Some("payload-too-large")),
        ] {
            let path = format!(
                "{}/../../events/api-health/{file}",
                env!("CARGO_MANIFEST_DIR")
            );
            let event = std::fs::read_to_string(&path).unwrap();
            let request = lambda_http::request::from_str(&event).unwrap();
            let response = handle(&deps, request).await;
            assert_eq!(response.status(), status, "{file}");
            assert!(
                response.headers().contains_key("x-correlation-id"),
                "{file}"
            );
            assert_eq!(response.headers()["x-frame-options"], "DENY", "{file}");
            if let Some(slug) = problem {
                assert_eq!(
                    response.headers()["content-type"],
                    "application/problem+json"
                );
                let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
                assert_eq!(body["type"], format!("urn:sophia:problem:{slug}"), "{file}");
            }
        }
    }

    #[tokio::test]
    async fn timed_reports_timeouts() {
        let check = timed("slow".into(), Duration::from_millis(10), async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        })
        .await;
        assert_eq!(check.status, CheckStatus::Down);
        assert_eq!(check.reason, Some("timeout"));
        assert!(check.latency_ms < 1000.0);
    }
}
