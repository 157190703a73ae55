//! Chat completions as asynchronous jobs, shared by `POST /v1/jobs` (api-jobs) and
//! `POST /v1/chat/completions` with `Prefer: respond-async` (api-chat).
//!
//! The answer is `202 Accepted` with `Location: /v1/jobs/{id}`; the job's state is
//! read there. `Idempotency-Key` makes a submission safe to repeat.

use crate::auth::{Principal, SCOPE_JOBS};
use crate::guard::quota::Quotas;
use crate::jobs::store::JobStore;
use crate::jobs::{Job, NewJob, Submission, idempotency_key, job_id, valid_job_id};
use crate::observability::MetricSet;
use crate::problem::ApiError;
use lambda_http::http::{HeaderMap, HeaderValue, StatusCode, header};
use lambda_http::{Body, Response};

/// `Prefer: respond-async` (RFC 7240): always answer with a job.
pub const RESPOND_ASYNC: &str = "respond-async";
/// `Prefer: async-fallback`: answer in one piece, but become a job instead of a
/// 503 when the fleet is unavailable.
pub const ASYNC_FALLBACK: &str = "async-fallback";

/// Whether the `Prefer` headers carry `preference` (case-insensitive; parameters ignored).
pub fn prefers(headers: &HeaderMap, preference: &str) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|item| item.split(';').next())
        .any(|token| token.trim().eq_ignore_ascii_case(preference))
}

/// A validated chat-completion request, as a job stores it.
#[derive(Debug, Clone, Copy)]
pub struct JobRequest<'a> {
    /// The body the fleet will get.
    pub upstream: &'a serde_json::Value,
    pub model: &'a str,
    /// Whether the caller asked for a stream (refused: a job is not streamed).
    pub stream: bool,
}

/// Stores the validated request (`upstream`: the body the fleet will get) as a
/// job and sends it to the worker, answering `202 Accepted` with `Location`.
/// `Idempotency-Key` comes from `headers`. With `quotas`, a new job counts one
/// request against the tenant's daily quota; a replayed key (or a refused one)
/// does not.
pub async fn submit(
    store: &JobStore,
    job: JobRequest<'_>,
    principal: &Principal,
    headers: &HeaderMap,
    service: &'static str,
    quotas: Option<&Quotas>,
) -> Result<Response<Body>, ApiError> {
    let key = idempotency_key(headers)?;
    let submission = submit_job(store, job, principal, key.as_deref(), service, quotas).await?;
    let job = &submission.job;
    let mut response =
        crate::http::request::json_response(StatusCode::ACCEPTED, &job.to_public_json())?;
    let location = HeaderValue::from_str(&format!("/v1/jobs/{}", job.id))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    response.headers_mut().insert(header::LOCATION, location);
    if submission.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// [`submit`] without HTTP: the job tools call this. `key` is an
/// already-validated idempotency key (see [`crate::jobs::valid_idempotency_key`]).
pub async fn submit_job(
    store: &JobStore,
    job: JobRequest<'_>,
    principal: &Principal,
    key: Option<&str>,
    service: &'static str,
    quotas: Option<&Quotas>,
) -> Result<Submission, ApiError> {
    let JobRequest {
        upstream,
        model,
        stream,
    } = job;
    if !principal.scopes.iter().any(|scope| scope == SCOPE_JOBS) {
        return Err(ApiError::Forbidden {
            scope: SCOPE_JOBS.to_owned(),
        });
    }
    if stream {
        return Err(ApiError::invalid(
            "a job's answer is read from GET /v1/jobs/{id}, not streamed; leave stream unset",
        ));
    }
    let request = upstream.to_string();
    if let Some(quotas) = quotas {
        let seen = match key {
            Some(key) => store
                .get(&job_id(&principal.tenant, Some(key)))
                .await
                .map_err(|error| error.to_api_error())?
                .is_some(),
            None => false,
        };
        if !seen {
            quotas.reserve(&principal.tenant).await?;
        }
    }
    let submission = store
        .submit(NewJob {
            tenant: &principal.tenant,
            model,
            request: &request,
            idempotency_key: key,
        })
        .await
        .map_err(|error| {
            tracing::warn!(%error, "submitting a job failed");
            error.to_api_error()
        })?;
    let job = &submission.job;
    tracing::info!(
        job_id = %job.id,
        replayed = submission.replayed,
        enqueued = submission.enqueued,
        "job accepted"
    );
    if !submission.replayed {
        MetricSet::new("Sophia")
            .dimension("Service", service)
            .count("JobsSubmitted", 1.0)
            .count(
                "JobsNotEnqueued",
                if submission.enqueued { 0.0 } else { 1.0 },
            )
            .emit();
    }
    Ok(submission)
}

/// The caller's job `id`; another tenant's job is a 404 exactly like a missing
/// one. Shared by `GET /v1/jobs/{id}` and the `job_status` tool.
pub async fn read_own(store: &JobStore, tenant: &str, id: &str) -> Result<Job, ApiError> {
    let not_found = ApiError::NotFound { what: "job" };
    if !valid_job_id(id) {
        return Err(not_found);
    }
    let job = store.get(id).await.map_err(|error| {
        tracing::warn!(%error, job_id = id, "reading a job failed");
        error.to_api_error()
    })?;
    match job {
        Some(job) if job.tenant == tenant => Ok(job),
        _ => Err(not_found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preferences_are_found_among_others() {
        let mut headers = HeaderMap::new();
        assert!(!prefers(&headers, RESPOND_ASYNC));
        headers.insert("prefer", "wait=10, Respond-Async".parse().unwrap());
        assert!(prefers(&headers, RESPOND_ASYNC));
        assert!(!prefers(&headers, ASYNC_FALLBACK));
        headers.append("prefer", "async-fallback; x=1".parse().unwrap());
        assert!(prefers(&headers, ASYNC_FALLBACK));
        headers.insert("prefer", "respond-asyncx".parse().unwrap());
        assert!(!prefers(&headers, RESPOND_ASYNC));
    }
}
