//! | route | scope | what |
//! |---|---|---|
//! | `POST /v1/jobs` | jobs | a chat-completion request (validated like the chat route) becomes a job: `202 Accepted`, `Location: /v1/jobs/{id}`; `Idempotency-Key` makes it safe to repeat |
//! | `GET /v1/jobs/{id}` | jobs | the job's status and, once done, its result; another tenant's job is a 404 |
//!
//! The worker (`worker-inference`) runs the job; see `sophia_shared::jobs` for the
//! status machine and how a job whose message could not be sent is repaired.

use std::sync::Arc;

use lambda_http::http::{Method, StatusCode};
use lambda_http::{Body, Request, Response};
use sophia_shared::auth::{Authenticator, SCOPE_JOBS};
use sophia_shared::config::Env;
use sophia_shared::guard::quota::Quotas;
use sophia_shared::http::policy::HttpPolicy;
use sophia_shared::http::request::{ApiRequest, json_response};
use sophia_shared::http::routing::Route;
use sophia_shared::http::serve;
use sophia_shared::inference::chat::{ChatRequest, Limits};
use sophia_shared::jobs::store::JobStore;
use sophia_shared::jobs::submit::{JobRequest, read_own, submit};
use sophia_shared::problem::ApiError;
use sophia_shared::startup::InitError;

pub const SERVICE: &str = "api-jobs";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobsRoute {
    Submit,
    Read,
}

pub const ROUTES: [Route<JobsRoute>; 2] = [
    Route::protected(Method::POST, "/v1/jobs", JobsRoute::Submit, SCOPE_JOBS),
    Route::protected(Method::GET, "/v1/jobs/{id}", JobsRoute::Read, SCOPE_JOBS),
];

pub struct Deps {
    pub http: HttpPolicy,
    pub limits: Limits,
    pub quotas: Quotas,
    pub jobs: JobStore,
}

impl Deps {
    /// `CHAT_MODELS` and the chat limits, `JOBS_TABLE`, `JOBS_QUEUE_URL`,
    /// `AUTH_TABLE`, `USAGE_TABLE`, `STATE_TABLE`, `SIGNING_KEYS_SECRET`.
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
        Ok(Self {
            http: HttpPolicy::protected_from_env(SERVICE, env, auth, dynamodb.clone())?,
            limits: Limits::from_env(env)?,
            quotas: Quotas::from_env(env, dynamodb)?,
            jobs: JobStore::from_env(env, sdk)?,
        })
    }
}

pub async fn handle(deps: &Deps, request: Request) -> Response<Body> {
    serve(&deps.http, &ROUTES, request, |api| route(deps, api)).await
}

async fn route(deps: &Deps, api: ApiRequest<JobsRoute>) -> Result<Response<Body>, ApiError> {
    let principal = api.principal()?;
    match api.route {
        JobsRoute::Submit => {
            let chat: ChatRequest = api.json()?;
            chat.validate(&deps.limits)?;
            let upstream = chat.upstream_body(&deps.limits)?;
            let job = JobRequest {
                upstream: &upstream,
                model: &chat.model,
                stream: chat.stream,
            };
            submit(
                &deps.jobs,
                job,
                principal,
                &api.headers,
                SERVICE,
                Some(&deps.quotas),
            )
            .await
        }
        JobsRoute::Read => {
            let id = api.param("id").unwrap_or_default();
            let job = read_own(&deps.jobs, &principal.tenant, id).await?;
            json_response(StatusCode::OK, &job.to_public_json())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sophia_shared::auth::store::AuthStore;
    use sophia_shared::auth::tokens::{KeyRing, SigningKey};
    use sophia_shared::auth::{AuthSettings, KeySource};

    fn ring() -> KeyRing {
        KeyRing::new(
            SigningKey::new("test", b"unit-test-signing-key-material-32b!").unwrap(),
            vec![],
        )
    }

    /// Dependencies that never reach AWS for the requests below.
    async fn offline() -> (Deps, String) {
        let env = [
            ("CHAT_MODELS", "sophia-small"),
            ("STATE_TABLE", "state"),
            ("USAGE_TABLE", "usage"),
            ("AUTH_TABLE", "auth"),
            ("JOBS_TABLE", "jobs"),
            ("JOBS_QUEUE_URL", "http://127.0.0.1:9/queue/jobs"),
            ("SIGNING_KEYS_SECRET", "keys"),
            ("REVOCATION_CACHE_MS", "600000"),
        ];
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
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
        let claims = settings
            .policy
            .claims("key:test", "tenant-a", &["jobs".into()], "fam");
        let token = settings.policy.sign(&ring(), &claims).unwrap();
        (
            Deps::with_authenticator(&Env::new(&env), &sdk, auth).unwrap(),
            token,
        )
    }

    fn event(file: &str, token: Option<&str>) -> Request {
        let path = format!(
            "{}/../../events/api-jobs/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut request =
            lambda_http::request::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        request
    }

    #[tokio::test]
    async fn samples_without_a_token_are_401() {
        let (deps, _) = offline().await;
        for file in ["submit.json", "submit-stream.json", "read-unknown.json"] {
            assert_eq!(
                handle(&deps, event(file, None)).await.status(),
                401,
                "{file}"
            );
        }
    }

    #[tokio::test]
    async fn refused_submissions_never_reach_storage() {
        let (deps, token) = offline().await;
        let response = handle(&deps, event("submit-stream.json", Some(&token))).await;
        assert_eq!(response.status(), 400);
        // A path that cannot be a job ID is a 404 without a lookup.
        let bad_id = lambda_http::http::Request::builder()
            .method("GET")
            .uri("/v1/jobs/not-a-job")
            .header("authorization", format!("Bearer {token}"))
            .body(Body::Empty)
            .unwrap();
        let response = handle(&deps, bad_id).await;
        assert_eq!(response.status(), 404);
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
}
