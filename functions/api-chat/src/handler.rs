//! The OpenAI-compatible inference routes, on the API's one base URL:
//!
//! | route | scope | what |
//! |---|---|---|
//! | `POST /v1/chat/completions` | chat | a completion in one piece, or with `stream: true` as server-sent events |
//! | `POST /v1/embeddings` | chat | embeddings of text or token IDs, as floats or base64 |
//! | `GET /v1/models`, `GET /v1/models/{id}` | chat | the chat and embedding models served here |
//!
//! One function answers both response modes: API Gateway's REST API invokes it
//! with response streaming (`ResponseTransferMode: STREAM`), and a one-piece
//! answer is a stream of one chunk. The fleet client fails over until the first
//! chunk arrives; once bytes went to the caller, a broken upstream ends the
//! stream with an explicit `error` event and no `[DONE]`.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::StreamBody;
use lambda_http::http::{HeaderValue, Method, StatusCode, header};
use lambda_http::{Body, Request, Response};
use sophia_shared::auth::{Authenticator, SCOPE_CHAT};
use sophia_shared::aws::AwsSettings;
use sophia_shared::background::{self, Answering};
use sophia_shared::config::{ConfigError, Env};
use sophia_shared::guard::bulkhead::BulkheadPermit;
use sophia_shared::guard::known_room::KnownRoom;
use sophia_shared::http::policy::HttpPolicy;
use sophia_shared::http::request::{ApiRequest, json_response};
use sophia_shared::http::routing::Route;
use sophia_shared::http::serve;
use sophia_shared::inference::Inference;
use sophia_shared::inference::cache::{CACHE_HEADER, CacheLookup, CacheOutcome};
use sophia_shared::inference::chat::ChatRequest;
use sophia_shared::inference::embeddings::{EmbeddingsRequest, to_openai};
use sophia_shared::inference::ledger::Owed;
use sophia_shared::inference::usage::Settlement;
use sophia_shared::jobs::store::JobStore;
use sophia_shared::jobs::submit::{self as jobs, JobRequest};
use sophia_shared::problem::ApiError;
use sophia_shared::startup::InitError;

use crate::sse::{Pump, SseStream};

/// The function's name, used as the `Service` metric dimension.
pub const SERVICE: &str = "api-chat";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatRoute {
    Completions,
    Embeddings,
    Models,
    Model,
}

pub const ROUTES: [Route<ChatRoute>; 4] = [
    Route::protected(
        Method::POST,
        "/v1/chat/completions",
        ChatRoute::Completions,
        SCOPE_CHAT,
    )
    .sheds_when_busy()
    .rate_limited_alongside(),
    Route::protected(
        Method::POST,
        "/v1/embeddings",
        ChatRoute::Embeddings,
        SCOPE_CHAT,
    )
    .sheds_when_busy()
    .rate_limited_alongside(),
    Route::protected(Method::GET, "/v1/models", ChatRoute::Models, SCOPE_CHAT),
    Route::protected(Method::GET, "/v1/models/{id}", ChatRoute::Model, SCOPE_CHAT),
];

/// Everything the handler needs, built once per cold start.
pub struct Deps {
    pub http: HttpPolicy,
    pub inference: Arc<Inference>,
    /// Where `Prefer: respond-async` (and `async-fallback` in an outage) puts requests.
    pub jobs: JobStore,
    /// Callers whose completions start the fleet call alongside their admission.
    pub known_room: KnownRoom,
}

/// AWS settings come first: they are needed to build the SDK configuration that
/// [`Deps::from_env`] takes.
pub fn aws_settings(env: &Env<'_>) -> Result<AwsSettings, ConfigError> {
    AwsSettings::from_env(env)
}

impl Deps {
    /// Reads the inference settings ([`Inference::from_env`]: models, prices,
    /// limits, the fleet), the jobs table and queue, and the HTTP policy.
    pub async fn from_env(env: &Env<'_>, sdk: &aws_config::SdkConfig) -> Result<Self, InitError> {
        // The fleet client is built while the signing keys are read.
        let (auth, inference) =
            Authenticator::from_env_while(env, sdk, || Inference::from_env(SERVICE, env, sdk))
                .await?;
        Self::with_parts(env, sdk, auth, inference)
    }

    /// Everything but the authenticator from the environment (tests give their own).
    pub fn with_authenticator(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        auth: Arc<Authenticator>,
    ) -> Result<Self, InitError> {
        Self::with_parts(env, sdk, auth, Inference::from_env(SERVICE, env, sdk)?)
    }

    fn with_parts(
        env: &Env<'_>,
        sdk: &aws_config::SdkConfig,
        auth: Arc<Authenticator>,
        inference: Inference,
    ) -> Result<Self, InitError> {
        let dynamodb = aws_sdk_dynamodb::Client::new(sdk);
        Ok(Self {
            http: HttpPolicy::protected_from_env(SERVICE, env, auth, dynamodb)?
                .with_bulkhead(inference.fleet.bulkhead()),
            inference: Arc::new(inference),
            jobs: JobStore::from_env(env, sdk)?,
            known_room: KnownRoom::from_env(env)?,
        })
    }
}

pub type StreamingBody = StreamBody<SseStream>;

/// What runs after the caller has the whole answer: billing, the cache entry.
type Tail = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The entry point: every route, both response modes.
///
/// A whole answer (JSON or problem) carries `Content-Length` and is one data
/// frame; its [`Tail`] runs when the body is polled after that frame, so the
/// caller has every byte before billing starts, and the invocation ends only
/// when billing is done (Lambda freezes an instance once its response ends, so
/// work left to a background task could wait for the next request or never run).
pub async fn handle(deps: &Deps, request: Request) -> Response<StreamingBody> {
    // The answer is in progress until its last byte: work the request leaves
    // behind (a lease refill) waits until then.
    let answering = Answering::start();
    let stash: Mutex<Option<SseStream>> = Mutex::new(None);
    let tail: Mutex<Option<Tail>> = Mutex::new(None);
    let (stash_ref, tail_ref) = (&stash, &tail);
    let response = serve(&deps.http, &ROUTES, request, |mut api| async move {
        let permit = api.permit.take();
        match api.route {
            ChatRoute::Completions => {
                let answer = completions(deps, &api, permit).await?;
                match answer {
                    Answer::Whole(response, after) => {
                        *lock(tail_ref) = after;
                        response
                    }
                    Answer::Stream(stream, outcome) => {
                        *lock(stash_ref) = Some(stream);
                        Ok(marked(event_stream_head(), outcome))
                    }
                }
            }
            ChatRoute::Embeddings => embeddings(deps, &api, permit).await,
            ChatRoute::Models => json_response(StatusCode::OK, &deps.inference.catalog.list()),
            ChatRoute::Model => {
                let id = api.param("id").unwrap_or_default();
                match deps.inference.catalog.get(id) {
                    Some(model) => json_response(StatusCode::OK, &model),
                    None => Err(ApiError::NotFound { what: "model" }),
                }
            }
        }
    })
    .await;
    let stream = into_inner(stash);
    let tail = into_inner(tail);
    let (mut parts, body) = response.into_parts();
    // The pipeline may have turned the answer into a 429 (a rate limit that was
    // checked alongside the handler): then the stash is not the answer.
    if parts.status == StatusCode::OK
        && let Some(stream) = stream
    {
        return Response::from_parts(parts, StreamBody::new(stream));
    }
    let bytes = Bytes::copy_from_slice(body.as_ref());
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    use futures_util::StreamExt;
    let whole = futures_util::stream::once(async move { Ok(Frame::data(bytes)) });
    let after = futures_util::stream::once(async move {
        drop(answering);
        // Work the request left (a lease refill) runs now, beside billing;
        // the invocation ends after both.
        background::tail_beside_work(async move {
            if let Some(tail) = tail {
                tail.await;
            }
        })
        .await;
    })
    .filter_map(|()| async { None });
    Response::from_parts(parts, StreamBody::new(Box::pin(whole.chain(after))))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn into_inner<T>(mutex: Mutex<T>) -> T {
    mutex
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Answer {
    /// A JSON answer or a problem, with what runs once the caller has it.
    Whole(Result<Response<Body>, ApiError>, Option<Tail>),
    /// With what the cache did, if the caller asked for it (it never serves streams).
    Stream(SseStream, Option<CacheOutcome>),
}

/// The answer with `x-sophia-cache` saying what the cache did, if it was asked.
fn marked(mut response: Response<Body>, outcome: Option<CacheOutcome>) -> Response<Body> {
    if let Some(outcome) = outcome {
        response.headers_mut().insert(
            CACHE_HEADER,
            HeaderValue::from_static(outcome.header_value()),
        );
    }
    response
}

fn event_stream_head() -> Response<Body> {
    let mut response = Response::new(Body::Empty);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// The request's bulkhead slot (the one the pipeline took, else a new one)
/// once the rate limits (checked since the request came in) and one request
/// counted against the tenant's daily quota both agree: one round trip.
async fn admit(
    deps: &Deps,
    api: &ApiRequest<ChatRoute>,
    permit: Option<BulkheadPermit>,
    tenant: &str,
) -> Result<BulkheadPermit, ApiError> {
    let permit = slot(deps, permit)?;
    admission(deps, api, tenant).await?;
    Ok(permit)
}

fn slot(deps: &Deps, permit: Option<BulkheadPermit>) -> Result<BulkheadPermit, ApiError> {
    match permit {
        Some(permit) => Ok(permit),
        None => deps.inference.admit(),
    }
}

/// The rate limits and one request counted against the daily quota, together:
/// how many requests are left after this one (the least of them; 0 if unknown).
async fn admission(
    deps: &Deps,
    api: &ApiRequest<ChatRoute>,
    tenant: &str,
) -> Result<u64, ApiError> {
    let quotas = &deps.inference.billing.quotas;
    let (limited, reserved) =
        futures_util::join!(api.rate_limit_decision(), quotas.reserve_counted(tenant));
    let rate_left = match limited {
        Some(decision) => {
            if let Err(denied) = sophia_shared::http::limited(decision) {
                if reserved.is_ok() {
                    quotas.release(tenant).await;
                }
                return Err(denied);
            }
            u64::from(decision.remaining)
        }
        None => u64::MAX,
    };
    Ok(reserved?.map_or(0, |quota_left| quota_left.min(rate_left)))
}

/// What [`admitted_with`] came to.
enum Admitted<T> {
    Yes(T),
    /// Refused before the fleet was asked.
    Refused(ApiError),
    /// Refused while the fleet worked: its result, to be discarded.
    RefusedAlongside(ApiError, T),
}

/// Admission, and `fleet` (a completion's fleet call with its ledger entry):
/// together for a caller this instance admitted a moment ago ([`KnownRoom`]),
/// else one after the other, so an unknown or refused caller costs the fleet
/// nothing.
async fn admitted_with<T>(
    deps: &Deps,
    api: &ApiRequest<ChatRoute>,
    tenant: &str,
    caller: &str,
    fleet: impl std::future::Future<Output = T>,
) -> Admitted<T> {
    // On the heap: the fleet call with its ledger write is a large future, and
    // joined with admission it would be copied into the caller's frame.
    let fleet = Box::pin(fleet);
    let (left, admitted) = if deps.known_room.has_room(caller) {
        // The fleet future first: its request leaves before admission's SDK
        // call is built and signed, so that work overlaps the fleet's answer.
        match futures_util::join!(fleet, admission(deps, api, tenant)) {
            (done, Ok(left)) => (Some(left), Admitted::Yes(done)),
            (done, Err(denied)) => (None, Admitted::RefusedAlongside(denied, done)),
        }
    } else {
        match admission(deps, api, tenant).await {
            Ok(left) => (Some(left), Admitted::Yes(fleet.await)),
            Err(denied) => (None, Admitted::Refused(denied)),
        }
    };
    deps.known_room.record(caller, left);
    admitted
}

async fn completions(
    deps: &Deps,
    api: &ApiRequest<ChatRoute>,
    permit: Option<BulkheadPermit>,
) -> Result<Answer, ApiError> {
    let principal = api.principal()?.clone();
    let chat: ChatRequest = api.json()?;
    // Only a job uses it, but a malformed key is refused whatever the route does.
    sophia_shared::jobs::idempotency_key(&api.headers)?;
    let limits = &deps.inference.chat_limits;
    chat.validate(limits)?;
    let body = chat.upstream_body(limits)?;
    let job = JobRequest {
        upstream: &body,
        model: &chat.model,
        stream: chat.stream,
    };
    let as_job = |quotas| jobs::submit(&deps.jobs, job, &principal, &api.headers, SERVICE, quotas);
    if jobs::prefers(&api.headers, jobs::RESPOND_ASYNC) {
        // A job does not call the fleet now: its slot is not needed.
        drop(permit);
        api.rate_limit().await?;
        let quotas = deps.inference.billing.quotas.as_ref();
        let submitted = as_job(Some(quotas)).await?;
        return Ok(whole(applied(submitted, jobs::RESPOND_ASYNC)));
    }
    let cache = &deps.inference.cache;
    let lookup = cache
        .lookup_for(
            api.headers.get(CACHE_HEADER),
            &principal.tenant,
            &chat,
            &body,
        )
        .await?;
    if let CacheLookup::Key(key) = &lookup
        && let Some(answer) = cache.get(&principal.tenant, key).await
    {
        // No fleet call and no quota: only the answer, counted as cached.
        drop(permit);
        api.rate_limit().await?;
        let response = marked(
            json_response(StatusCode::OK, &answer)?,
            Some(CacheOutcome::Hit),
        );
        let inference = deps.inference.clone();
        let tail: Tail = Box::pin(async move {
            inference
                .billing
                .account_cached(&principal.tenant, &chat.model)
                .await;
        });
        return Ok(Answer::Whole(Ok(response), Some(tail)));
    }
    let outcome = match lookup {
        CacheLookup::NotAsked => None,
        CacheLookup::Bypass => Some(CacheOutcome::Bypass),
        CacheLookup::Key(_) => Some(CacheOutcome::Miss),
    };
    let permit = slot(deps, permit)?;
    let owed = Owed::new(
        &principal.tenant,
        &chat.model,
        &api.ctx.request_id,
        api.body.len(),
    );
    let caller = format!("{}/{}", principal.tenant, principal.subject);
    if chat.stream {
        let events = stream(deps, api, &caller, permit, owed, &chat, &body).await?;
        return Ok(Answer::Stream(events, outcome));
    }
    let fleet = deps.inference.complete_owed(permit, owed, &body, &api.ctx);
    let (reply, settlement) =
        match admitted_with(deps, api, &principal.tenant, &caller, fleet).await {
            Admitted::Yes(done) => done,
            Admitted::Refused(denied) => return Err(denied),
            Admitted::RefusedAlongside(denied, (_, settlement)) => {
                // The answer is discarded: nothing is billed, the entry is closed.
                let unbilled = Settlement {
                    usage: None,
                    ..settlement
                };
                let inference = deps.inference.clone();
                let tail: Tail = Box::pin(async move { unbilled.settle(&inference.billing).await });
                return Ok(Answer::Whole(Err(denied), Some(tail)));
            }
        };
    let inference = deps.inference.clone();
    let (tenant, model) = (principal.tenant.clone(), chat.model.clone());
    let cached = match (&reply, lookup) {
        (Ok(reply), CacheLookup::Key(key)) => Some((key, reply.body.clone())),
        _ => None,
    };
    let tail: Tail = Box::pin(async move {
        let billing = settlement.settle(&inference.billing);
        match cached {
            Some((key, answer)) => {
                let stored = inference.cache.put(&tenant, &key, &model, &answer);
                futures_util::join!(billing, stored);
            }
            None => billing.await,
        }
    });
    match reply {
        Ok(reply) => {
            let response = json_response(StatusCode::OK, &reply.body).map(|r| marked(r, outcome));
            Ok(Answer::Whole(response, Some(tail)))
        }
        Err(error) => {
            tracing::warn!(%error, "chat completion failed");
            let error = error.to_api_error();
            // Graceful degradation the caller opted into: a job instead of a 503.
            if error.is_retryable() && jobs::prefers(&api.headers, jobs::ASYNC_FALLBACK) {
                tracing::info!("fleet unavailable; the request becomes a job");
                // The request was counted against the quota above.
                let submitted = as_job(None).await;
                let response = submitted.map(|r| applied(r, jobs::ASYNC_FALLBACK));
                return Ok(Answer::Whole(response, Some(tail)));
            }
            Ok(Answer::Whole(Err(error), Some(tail)))
        }
    }
}

fn whole(response: Response<Body>) -> Answer {
    Answer::Whole(Ok(response), None)
}

async fn stream(
    deps: &Deps,
    api: &ApiRequest<ChatRoute>,
    caller: &str,
    permit: BulkheadPermit,
    owed: Owed,
    chat: &ChatRequest,
    body: &serde_json::Value,
) -> Result<SseStream, ApiError> {
    let billing = &deps.inference.billing;
    let fleet = async {
        // The fleet call first: it leaves before the ledger's PutItem is signed.
        let (upstream, opened) = futures_util::join!(
            deps.inference.fleet.chat_stream(permit, body, &api.ctx),
            billing.ledger.open(&owed)
        );
        (opened, upstream)
    };
    let (admitted, (opened, upstream)) =
        match admitted_with(deps, api, &owed.tenant, caller, fleet).await {
            Admitted::Yes(done) => (Ok(()), done),
            Admitted::Refused(denied) => return Err(denied),
            Admitted::RefusedAlongside(denied, done) => (Err(denied), done),
        };
    let settlement = Settlement {
        owed,
        opened: opened
            .inspect_err(
                |error| tracing::error!(%error, "opening the ledger entry failed; billing inline"),
            )
            .is_ok(),
        usage: None,
    };
    if let Err(denied) = admitted {
        // Not one byte went out: the stream is dropped and its entry closed unbilled.
        drop(upstream);
        settlement.settle(billing).await;
        return Err(denied);
    }
    let upstream = match upstream {
        Ok(upstream) => upstream,
        Err(error) => {
            tracing::warn!(%error, "chat stream could not start");
            // No answer: the entry is closed unbilled (an error answer is not hurried).
            settlement.settle(billing).await;
            return Err(error.to_api_error());
        }
    };
    let pump = Pump::new(
        upstream,
        chat.wants_stream_usage(),
        billing.clone(),
        settlement,
        api.ctx.correlation_id.clone(),
    );
    Ok(pump.into_stream())
}

async fn embeddings(
    deps: &Deps,
    api: &ApiRequest<ChatRoute>,
    permit: Option<BulkheadPermit>,
) -> Result<Response<Body>, ApiError> {
    let principal = api.principal()?;
    let request: EmbeddingsRequest = api.json()?;
    request.validate(&deps.inference.embedding_limits)?;
    let permit = admit(deps, api, permit, &principal.tenant).await?;
    let embedded = deps
        .inference
        .embedder()
        .embed(permit, &principal.tenant, &request, &api.ctx)
        .await?;
    tracing::info!(endpoint = %embedded.endpoint, inputs = embedded.vectors.len(), "embeddings answered");
    json_response(
        StatusCode::OK,
        &to_openai(&embedded, request.encoding_format.unwrap_or_default()),
    )
}

/// Marks a 202 with the preference that produced it (RFC 7240 `Preference-Applied`).
fn applied(mut response: Response<Body>, preference: &'static str) -> Response<Body> {
    response
        .headers_mut()
        .insert("preference-applied", HeaderValue::from_static(preference));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use sophia_shared::auth::store::AuthStore;
    use sophia_shared::auth::tokens::{KeyRing, SigningKey};
    use sophia_shared::auth::{AuthSettings, KeySource};

    fn test_ring() -> KeyRing {
        KeyRing::new(
            SigningKey::new("test", b"unit-test-signing-key-material-32b!").unwrap(),
            vec![],
        )
    }

    const ENV: [(&str, &str); 12] = [
        ("CHAT_MODELS", "sophia-small"),
        ("EMBEDDING_MODELS", "sophia-embed"),
        (
            "PRICE_TABLE",
            r#"{"sophia-small": {"prompt_per_mtok": 0.1, "completion_per_mtok": 0.3}, "sophia-embed": {"prompt_per_mtok": 0.02, "completion_per_mtok": 0}}"#,
        ),
        ("STATE_TABLE", "state"),
        ("USAGE_TABLE", "usage"),
        ("JOBS_TABLE", "jobs"),
        ("JOBS_QUEUE_URL", "http://127.0.0.1:9/queue/jobs"),
        ("AUTH_TABLE", "auth"),
        ("SIGNING_KEYS_SECRET", "keys"),
        // Caches long enough that no request below reads DynamoDB.
        ("REVOCATION_CACHE_MS", "600000"),
        // Nothing listens here; the requests below never get that far.
        ("FLEET_ENDPOINTS", "primary=http://127.0.0.1:9"),
        ("MODELS_CREATED", "1767225600"),
    ];

    async fn offline_deps() -> (Deps, String) {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let settings = AuthSettings::from_env(&Env::new(&ENV)).unwrap();
        let keys = KeySource::fixed(
            aws_sdk_secretsmanager::Client::new(&sdk),
            "keys".into(),
            test_ring(),
        );
        let store = Arc::new(AuthStore::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            "auth".into(),
        ));
        let auth = Arc::new(Authenticator::new(&settings, Arc::new(keys), store));
        auth.preload_revocations(Default::default()).await;
        let token = settings
            .policy
            .sign(
                &test_ring(),
                &settings
                    .policy
                    .claims("key:test", "tenant-a", &["chat".into()], "fam"),
            )
            .unwrap();
        (
            Deps::with_authenticator(&Env::new(&ENV), &sdk, auth).unwrap(),
            token,
        )
    }

    fn event(file: &str, token: Option<&str>) -> Request {
        let path = format!(
            "{}/../../events/api-chat/{file}",
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

    async fn answer(
        deps: &Deps,
        request: Request,
    ) -> (StatusCode, lambda_http::http::HeaderMap, serde_json::Value) {
        let response = handle(deps, request).await;
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    /// The same files `cargo lambda invoke --data-file` uses, with a fresh token
    /// added (a sample cannot hold one that stays valid); all are answered before
    /// any network I/O.
    #[tokio::test]
    async fn offline_sample_events_get_their_documented_answers() {
        let (deps, token) = offline_deps().await;
        for (file, status, slug) in [
            ("malformed-body.json", 400, Some("malformed-json")),
            ("unknown-field.json", 400, Some("invalid-request")),
            ("unknown-model.json", 400, Some("invalid-request")),
            (
                "wrong-content-type.json",
                415,
                Some("unsupported-media-type"),
            ),
            ("embeddings-empty.json", 400, Some("invalid-request")),
            ("model-unknown.json", 404, Some("not-found")),
            ("models.json", 200, None),
        ] {
            let (got, headers, body) = answer(&deps, event(file, Some(&token))).await;
            assert_eq!(got, status, "{file}");
            match slug {
                Some(slug) => {
                    assert_eq!(
                        headers["content-type"], "application/problem+json",
                        "{file}"
                    );
                    assert_eq!(body["type"], format!("urn:sophia:problem:{slug}"), "{file}");
                }
                None => assert_eq!(body["data"][0]["id"], "sophia-small", "{file}"),
            }
        }
    }

    #[tokio::test]
    async fn without_a_token_every_sample_is_401_with_a_challenge() {
        let (deps, _) = offline_deps().await;
        for file in [
            "completion.json",
            "stream.json",
            "embeddings.json",
            "models.json",
            "malformed-body.json",
        ] {
            let (status, headers, _) = answer(&deps, event(file, None)).await;
            assert_eq!(status, 401, "{file}");
            assert_eq!(headers["www-authenticate"], r#"Bearer realm="sophia""#);
        }
    }

    #[tokio::test]
    async fn a_token_without_the_chat_scope_is_403() {
        let (deps, _) = offline_deps().await;
        let policy = AuthSettings::from_env(&Env::new(&ENV)).unwrap().policy;
        let token = policy
            .sign(
                &test_ring(),
                &policy.claims("s", "t", &["jobs".into()], "f"),
            )
            .unwrap();
        let (status, headers, _) = answer(&deps, event("completion.json", Some(&token))).await;
        assert_eq!(status, 403);
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("insufficient_scope")
        );
    }

    #[tokio::test]
    async fn missing_configuration_is_named() {
        let sdk = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        let env = [("CHAT_MODELS", "m")];
        let Err(InitError::Config(error)) = Deps::from_env(&Env::new(&env), &sdk).await else {
            panic!("expected a configuration error");
        };
        assert_eq!(error.variable, "AUTH_TABLE");
    }
}
