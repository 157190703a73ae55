//! | route | scope | what |
//! |---|---|---|
//! | `GET /v1/dashboard` | admin | the operator's view in one JSON document |
//! | `GET /dashboard` | public | the web page: a sign-in form and its script ([`crate::page`]) |
//! | `GET /dashboard/app.js`, `/dashboard/app.css` | public | the page's only script and stylesheet |
//! | `GET /dashboard/view` | admin | the same document as HTML, for the page |
//!
//! With scope `admin` alone a caller sees its own tenant's usage, cost, budget
//! and job counts; with `platform` too, every tenant's and the operations sections: SLOs, fleet,
//! queues, drift, secret ages and alerts (they describe the platform, not one tenant).
//!
//! Every section is read concurrently under `DASHBOARD_SECTION_TIMEOUT_MS`; a
//! section that fails or runs out of time answers `{"error": …}` while the
//! others still answer, and each says the time its data describes (`as_of`)
//! and how stale that is. Reads only: the route never writes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};
use sophia_shared::auth::store::AuthStore;
use sophia_shared::auth::{Authenticator, SCOPE_ADMIN, SCOPE_PLATFORM};
use sophia_shared::clock::{now_secs, rfc3339};
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::fleet::health::SharedHealth;
use sophia_shared::fleet::settings::parse_endpoints;
use sophia_shared::guard::quota::Quotas;
use sophia_shared::http::policy::HttpPolicy;
use sophia_shared::http::request::{ApiRequest, json_response};
use sophia_shared::http::routing::Route;
use sophia_shared::http::serve;
use sophia_shared::inference::budget::Budgets;
use sophia_shared::jobs::store::JobStore;
use sophia_shared::ops::slo::{parse_slos, period_from_env};
use sophia_shared::problem::ApiError;
use sophia_shared::startup::InitError;

use crate::page;
use crate::sections::{self, Section, Sources, TenantView, parse_queues};

pub const SERVICE: &str = "api-dashboard";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DashboardRoute {
    Document,
    Page,
    Script,
    Styles,
    View,
}

pub const ROUTES: [Route<DashboardRoute>; 5] = [
    Route::protected(
        Method::GET,
        "/v1/dashboard",
        DashboardRoute::Document,
        SCOPE_ADMIN,
    ),
    Route::public(Method::GET, "/dashboard", DashboardRoute::Page),
    Route::public(Method::GET, "/dashboard/app.js", DashboardRoute::Script),
    Route::public(Method::GET, "/dashboard/app.css", DashboardRoute::Styles),
    Route::protected(
        Method::GET,
        "/dashboard/view",
        DashboardRoute::View,
        SCOPE_ADMIN,
    ),
];

pub struct Deps {
    pub http: HttpPolicy,
    pub sources: Sources,
    pub section_timeout: Duration,
}

impl Deps {
    /// `STATE_TABLE`, `USAGE_TABLE`, `AUTH_TABLE`, `JOBS_TABLE` (and
    /// `JOBS_QUEUE_URL`, `JOB_RETENTION_DAYS`), `SIGNING_KEYS_SECRET`,
    /// `SLOS`, `SLO_PERIOD_DAYS`, `FLEET_ENDPOINTS`, `DASHBOARD_QUEUES`,
    /// `STACK_NAME`, `DASHBOARD_SECTION_TIMEOUT_MS` (2000),
    /// `DASHBOARD_MAX_TENANTS` (100).
    pub async fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        let auth = Authenticator::from_env(env, sdk).await?;
        Self::with_authenticator(env, sdk, auth)
    }

    pub fn with_authenticator(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        auth: Arc<Authenticator>,
    ) -> Result<Self, InitError> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        let state_table = env.required("STATE_TABLE")?;
        let timeout_ms: u64 = env.parse_or("DASHBOARD_SECTION_TIMEOUT_MS", 2000)?;
        if !(100..=20_000).contains(&timeout_ms) {
            return Err(
                ConfigError::new("DASHBOARD_SECTION_TIMEOUT_MS", "must be 100 to 20000").into(),
            );
        }
        let max_tenants: usize = env.parse_or("DASHBOARD_MAX_TENANTS", 100)?;
        if !(1..=10_000).contains(&max_tenants) {
            return Err(ConfigError::new("DASHBOARD_MAX_TENANTS", "must be 1 to 10000").into());
        }
        let endpoints = parse_endpoints("FLEET_ENDPOINTS", &env.list("FLEET_ENDPOINTS"))?
            .into_iter()
            .map(|endpoint| endpoint.name)
            .collect();
        let usage_table = env.required("USAGE_TABLE")?;
        let auth_table = env.required("AUTH_TABLE")?;
        let quotas = Quotas::from_env(env, dynamodb.clone())?;
        let sources = Sources {
            sqs: aws_sdk_sqs::Client::new(sdk),
            cloudwatch: aws_sdk_cloudwatch::Client::new(sdk),
            secrets: aws_sdk_secretsmanager::Client::new(sdk),
            budgets: Budgets::new(
                dynamodb.clone(),
                auth_table.clone(),
                usage_table.clone(),
                Arc::new(quotas),
            ),
            usage_table,
            jobs: JobStore::from_env(env, sdk)?,
            auth: AuthStore::new(dynamodb.clone(), auth_table),
            health: SharedHealth::new(dynamodb.clone(), state_table.clone(), Duration::ZERO),
            slos: parse_slos(&env.required("SLOS")?)?,
            slo_period: period_from_env(env)?,
            endpoints,
            queues: parse_queues(&env.required("DASHBOARD_QUEUES")?)?,
            stack: env.optional("STACK_NAME"),
            max_tenants,
            state_table,
            dynamodb: dynamodb.clone(),
        };
        Ok(Self {
            http: HttpPolicy::protected_from_env(SERVICE, env, auth, dynamodb)?,
            sources,
            section_timeout: Duration::from_millis(timeout_ms),
        })
    }
}

pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    serve(&deps.http, &ROUTES, request, |api| route(deps, api)).await
}

async fn route(deps: &Deps, api: ApiRequest<DashboardRoute>) -> Result<Response<Body>, ApiError> {
    match api.route {
        DashboardRoute::Document => {
            let view = viewer(&api)?;
            json_response(StatusCode::OK, &document(deps, &view).await)
        }
        DashboardRoute::View => {
            let view = viewer(&api)?;
            let html = page::render(&document(deps, &view).await)?;
            page::text_response("text/html; charset=utf-8", html)
        }
        DashboardRoute::Page => {
            page::text_response("text/html; charset=utf-8", page::SHELL.to_owned())
        }
        DashboardRoute::Script => {
            page::text_response("text/javascript; charset=utf-8", page::SCRIPT.to_owned())
        }
        DashboardRoute::Styles => {
            page::text_response("text/css; charset=utf-8", page::STYLES.to_owned())
        }
    }
}

/// Every tenant with scope `platform`, else the caller's own.
fn viewer(api: &ApiRequest<DashboardRoute>) -> Result<TenantView, ApiError> {
    let principal = api.principal()?;
    Ok(if principal.scopes.iter().any(|s| s == SCOPE_PLATFORM) {
        TenantView::All
    } else {
        TenantView::Own(principal.tenant.clone())
    })
}

/// The whole document for `view`.
pub async fn document(deps: &Deps, view: &TenantView) -> Value {
    let src = &deps.sources;
    let now = now_secs();
    let limit = deps.section_timeout;
    let mut sections = serde_json::Map::new();
    if *view == TenantView::All {
        let (slos, fleet, queues, usage, budgets, jobs, drift, secrets, alerts) = tokio::join!(
            bounded(limit, now, sections::slos(src)),
            bounded(limit, now, sections::fleet(src, now)),
            bounded(limit, now, sections::queues(src, now)),
            bounded(limit, now, sections::usage(src, view, now)),
            bounded(limit, now, sections::budgets(src, view, now)),
            bounded(limit, now, sections::jobs(src, view)),
            bounded(limit, now, sections::drift(src)),
            bounded(limit, now, sections::secrets(src, now)),
            bounded(limit, now, sections::alerts(src)),
        );
        for (name, section) in [
            ("slos", slos),
            ("fleet", fleet),
            ("queues", queues),
            ("usage", usage),
            ("budgets", budgets),
            ("jobs", jobs),
            ("drift", drift),
            ("secrets", secrets),
            ("alerts", alerts),
        ] {
            sections.insert(name.to_owned(), section);
        }
    } else {
        let (usage, budgets, jobs) = tokio::join!(
            bounded(limit, now, sections::usage(src, view, now)),
            bounded(limit, now, sections::budgets(src, view, now)),
            bounded(limit, now, sections::jobs(src, view)),
        );
        sections.insert("usage".to_owned(), usage);
        sections.insert("budgets".to_owned(), budgets);
        sections.insert("jobs".to_owned(), jobs);
    }
    json!({
        "generated_at": rfc3339(now),
        "view": match view {
            TenantView::All => json!({ "tenants": "all" }),
            TenantView::Own(tenant) => json!({ "tenant": tenant }),
        },
        "sections": sections,
    })
}

/// A section's answer within `limit`: its data, `as_of` and `stale_seconds`,
/// or `error`.
async fn bounded(
    limit: Duration,
    now: u64,
    read: impl Future<Output = Result<Section, String>>,
) -> Value {
    // On the heap: six sections' SDK futures together are too big for a
    // thread's stack in an unoptimized build.
    match tokio::time::timeout(limit, Box::pin(read)).await {
        Ok(Ok(section)) => json!({
            "data": section.data,
            "as_of": section.as_of.map(rfc3339),
            "stale_seconds": section.as_of.map(|at| now.saturating_sub(at)),
        }),
        Ok(Err(error)) => {
            tracing::warn!(%error, "a dashboard section could not be read");
            json!({ "error": error })
        }
        Err(_) => json!({ "error": format!("not read within {} ms", limit.as_millis()) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sophia_shared::auth::tokens::{KeyRing, SigningKey};
    use sophia_shared::auth::{AuthSettings, KeySource};

    fn ring() -> KeyRing {
        KeyRing::new(
            SigningKey::new("test", b"unit-test-signing-key-material-32b!").unwrap(),
            vec![],
        )
    }

    const SLOS: &str = r#"[{"name": "chat-availability", "service": "api-chat", "route": "/v1/chat/completions", "sli": "availability", "objective_percent": 99.9}]"#;

    /// Dependencies whose AWS endpoint is a closed port: every read fails fast.
    async fn offline(timeout_ms: &str) -> (Deps, String) {
        let env = [
            ("STATE_TABLE", "state"),
            ("USAGE_TABLE", "usage"),
            ("AUTH_TABLE", "auth"),
            ("JOBS_TABLE", "jobs"),
            ("JOBS_QUEUE_URL", "http://127.0.0.1:9/1/jobs"),
            ("SIGNING_KEYS_SECRET", "keys"),
            ("REVOCATION_CACHE_MS", "600000"),
            ("SLOS", SLOS),
            ("FLEET_ENDPOINTS", "primary=http://127.0.0.1:9"),
            (
                "DASHBOARD_QUEUES",
                r#"[{"name": "jobs", "url": "http://127.0.0.1:9/1/jobs"}]"#,
            ),
            ("DASHBOARD_SECTION_TIMEOUT_MS", timeout_ms),
        ];
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url("http://127.0.0.1:9")
            .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
                aws_sdk_dynamodb::config::Credentials::new("test", "test", None, None, "test"),
            ))
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .build();
        let settings = AuthSettings::from_env(&Env::new(&env)).unwrap();
        let keys = KeySource::fixed(
            aws_sdk_secretsmanager::Client::new(&sdk),
            "keys".into(),
            ring(),
        );
        let store = Arc::new(AuthStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            "auth".into(),
        ));
        let auth = Arc::new(Authenticator::new(&settings, Arc::new(keys), store));
        auth.preload_revocations(Default::default()).await;
        let claims = settings.policy.claims(
            "key:test",
            "tenant-a",
            &["admin".into(), "platform".into()],
            "fam",
        );
        let token = settings.policy.sign(&ring(), &claims).unwrap();
        (
            Deps::with_authenticator(&Env::new(&env), &sdk, auth).unwrap(),
            token,
        )
    }

    #[tokio::test]
    async fn a_section_that_cannot_be_read_says_so_and_the_document_still_answers() {
        let (deps, token) = offline("500").await;
        let request = lambda_http::http::Request::builder()
            .method("GET")
            .uri("/v1/dashboard")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::Empty)
            .unwrap();
        let response = handle(&deps, request).await;
        assert_eq!(response.status(), 200);
        let body: Value = serde_json::from_slice(response.body()).unwrap();
        for name in [
            "slos", "fleet", "usage", "budgets", "jobs", "drift", "secrets", "alerts",
        ] {
            assert!(
                body["sections"][name]["error"].is_string(),
                "{name}: {}",
                body["sections"][name]
            );
        }
        // Queue rows carry their own errors; the section itself answers.
        let queues = &body["sections"]["queues"]["data"]["queues"];
        assert!(queues[0]["error"].is_string(), "{queues}");
        assert!(body["generated_at"].as_str().unwrap().ends_with('Z'));
    }

    #[tokio::test]
    async fn the_document_needs_a_token() {
        let (deps, _) = offline("500").await;
        let path = format!(
            "{}/../../events/api-dashboard/document.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let request =
            lambda_http::request::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let response = handle(&deps, request).await;
        assert_eq!(response.status(), 401);
    }
}
