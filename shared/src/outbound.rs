//! The one place that makes outbound HTTP calls.
//!
//! Clippy's `disallowed-methods` forbids building a reqwest client anywhere else, so
//! every call gets connection reuse (one pool per cold start), a connect timeout, a
//! per-call timeout that never outlives the invocation, and trace/correlation
//! propagation.

use std::time::Duration;

use bytes::Bytes;

use http::StatusCode;

use crate::config::{ConfigError, Env};
use crate::observability::{CORRELATION_HEADER, RequestContext, TRACEPARENT_HEADER};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundSettings {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
}

impl OutboundSettings {
    /// `OUTBOUND_CONNECT_TIMEOUT_MS` (default 500) and `OUTBOUND_POOL_IDLE_MS` (default
    /// 50000, below the fleet's usual keep-alive so we never reuse a socket the server
    /// has just closed).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            connect_timeout: env.millis_or("OUTBOUND_CONNECT_TIMEOUT_MS", 500, 10_000)?,
            pool_idle_timeout: env.millis_or("OUTBOUND_POOL_IDLE_MS", 50_000, 600_000)?,
        })
    }
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_millis(500),
            pool_idle_timeout: Duration::from_secs(50),
        }
    }
}

/// Why an outbound call failed. Retryability is decided here once, for everyone.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("building the HTTP client failed: {0}")]
    Build(String),
    #[error("could not connect")]
    Connect,
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("no time left before the invocation deadline")]
    NoTimeLeft,
    #[error("answered with status {0}")]
    Status(StatusCode),
    #[error("the connection failed mid-request")]
    Transport,
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

impl OutboundError {
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Connect | Self::Timeout(_) | Self::Transport => true,
            Self::Status(status) => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            Self::Build(_) | Self::NoTimeLeft | Self::TooLarge(_) => false,
        }
    }

    /// A short, stable word for logs, metrics and readiness output.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Build(_) => "client_error",
            Self::Connect => "unreachable",
            Self::Timeout(_) | Self::NoTimeLeft => "timeout",
            Self::Status(_) => "bad_status",
            Self::Transport => "transport",
            Self::TooLarge(_) => "too_large",
        }
    }

    fn from_reqwest(error: &reqwest::Error, timeout: Duration) -> Self {
        if error.is_timeout() {
            Self::Timeout(timeout)
        } else if error.is_connect() {
            Self::Connect
        } else {
            Self::Transport
        }
    }
}

/// A reusable HTTP client; clone freely (clones share the connection pool).
#[derive(Debug, Clone)]
pub struct OutboundClient {
    http: reqwest::Client,
}

impl OutboundClient {
    // The single sanctioned construction of a reqwest client (see clippy.toml).
    #[allow(clippy::disallowed_methods)]
    pub fn new(settings: OutboundSettings) -> Result<Self, OutboundError> {
        let http = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(settings.pool_idle_timeout)
            .tcp_nodelay(true)
            .user_agent(concat!("sophia-functions/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| OutboundError::Build(error.to_string()))?;
        Ok(Self { http })
    }

    /// The pooled client, for the fleet client in this crate only.
    pub(crate) fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET url`, successful only on a 2xx status, within `timeout` and within the
    /// request's deadline when there is one. Used by readiness checks and probes.
    pub async fn get_ok(
        &self,
        url: &str,
        timeout: Duration,
        ctx: Option<&RequestContext>,
    ) -> Result<StatusCode, OutboundError> {
        let timeout = match ctx {
            Some(ctx) => timeout.min(ctx.remaining(Duration::from_millis(50))),
            None => timeout,
        };
        if timeout.is_zero() {
            return Err(OutboundError::NoTimeLeft);
        }
        let mut request = self.http.get(url).timeout(timeout);
        if let Some(ctx) = ctx {
            request = request
                .header(TRACEPARENT_HEADER, ctx.trace.traceparent_now())
                .header(CORRELATION_HEADER, ctx.correlation_id.as_str());
        }
        let response = request
            .send()
            .await
            .map_err(|error| OutboundError::from_reqwest(&error, timeout))?;
        let status = response.status();
        if status.is_success() {
            Ok(status)
        } else {
            Err(OutboundError::Status(status))
        }
    }
}

impl OutboundClient {
    /// `POST url` with a JSON body (and a bearer token), successful only on 2xx,
    /// within `timeout`. Used by the fleet probe's tiny completion.
    pub async fn post_json_ok(
        &self,
        url: &str,
        body: &serde_json::Value,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<StatusCode, OutboundError> {
        self.send_json_ok(http::Method::POST, url, body, bearer, timeout)
            .await
    }

    /// Any method with a JSON body, successful only on 2xx within `timeout`.
    pub async fn send_json_ok(
        &self,
        method: http::Method,
        url: &str,
        body: &serde_json::Value,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<StatusCode, OutboundError> {
        self.send_json(method, url, body, bearer, timeout)
            .await
            .map(|(status, _)| status)
    }

    /// Like [`Self::send_json_ok`], with the answer's body.
    pub async fn send_json(
        &self,
        method: http::Method,
        url: &str,
        body: &serde_json::Value,
        bearer: Option<&str>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), OutboundError> {
        let mut request = self.http.request(method, url).timeout(timeout).json(body);
        if let Some(token) = bearer {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|error| OutboundError::from_reqwest(&error, timeout))?;
        let status = response.status();
        // Read the body so that a server dying mid-answer counts as a failure.
        let bytes = response
            .bytes()
            .await
            .map_err(|error| OutboundError::from_reqwest(&error, timeout))?;
        if status.is_success() {
            Ok((status, bytes))
        } else {
            Err(OutboundError::Status(status))
        }
    }
}

/// One request of [`OutboundClient::exchange`].
#[derive(Debug)]
pub struct Exchange<'a> {
    pub method: http::Method,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    /// The JSON body; none for a `GET`.
    pub json: Option<&'a serde_json::Value>,
    pub timeout: Duration,
    /// Answers larger than this fail with [`OutboundError::TooLarge`].
    pub max_answer_bytes: usize,
    /// Trace and correlation headers, and a deadline the timeout never outlives.
    pub ctx: Option<&'a RequestContext>,
}

/// Whatever the server answered, whatever its status.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl OutboundClient {
    /// A request (JSON body or none) with extra headers; any status is an answer (protocols
    /// such as MCP give 4xx statuses a meaning). The body is read in chunks up
    /// to `max_answer_bytes`, so a hostile server cannot exhaust memory.
    pub async fn exchange(&self, exchange: Exchange<'_>) -> Result<Answer, OutboundError> {
        let timeout = match exchange.ctx {
            Some(ctx) => exchange
                .timeout
                .min(ctx.remaining(Duration::from_millis(50))),
            None => exchange.timeout,
        };
        if timeout.is_zero() {
            return Err(OutboundError::NoTimeLeft);
        }
        let mut request = self
            .http
            .request(exchange.method, exchange.url)
            .timeout(timeout);
        if let Some(json) = exchange.json {
            request = request.json(json);
        }
        for (name, value) in exchange.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        if let Some(ctx) = exchange.ctx {
            request = request
                .header(TRACEPARENT_HEADER, ctx.trace.traceparent_now())
                .header(CORRELATION_HEADER, ctx.correlation_id.as_str());
        }
        let mut response = request
            .send()
            .await
            .map_err(|error| OutboundError::from_reqwest(&error, timeout))?;
        let status = response.status();
        let headers = response.headers().clone();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|error| OutboundError::from_reqwest(&error, timeout))?
        {
            if body.len() + chunk.len() > exchange.max_answer_bytes {
                return Err(OutboundError::TooLarge(exchange.max_answer_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body: Bytes::from(body),
        })
    }
}

/// Answers to a trace export larger than this are refused (a collector answers
/// a few bytes).
const MAX_EXPORT_ANSWER_BYTES: usize = 64 * 1024;

/// The OTLP exporter's HTTP client (`observability::otel`): trace exports take
/// the same pool, connect timeout and answer-size bound as every other call.
/// The export's time is bounded by its caller, the end-of-invocation flush.
#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OutboundClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let mut response = self
            .http
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body)
            .send()
            .await?;
        let mut answer = http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = response.headers().clone();
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if bytes.len() + chunk.len() > MAX_EXPORT_ANSWER_BYTES {
                return Err(Box::new(OutboundError::TooLarge(MAX_EXPORT_ANSWER_BYTES)));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(answer.body(Bytes::from(bytes))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_statuses_only() {
        for (code, retryable) in [
            (429, true),
            (503, true),
            (502, true),
            (400, false),
            (401, false),
            (500, false),
        ] {
            let status = StatusCode::from_u16(code).unwrap();
            assert_eq!(
                OutboundError::Status(status).is_retryable(),
                retryable,
                "{code}"
            );
        }
        assert!(!OutboundError::NoTimeLeft.is_retryable());
        assert!(OutboundError::Connect.is_retryable());
    }

    #[tokio::test]
    async fn refused_connection_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let client = OutboundClient::new(OutboundSettings::default()).unwrap();
        let error = client
            .get_ok(
                &format!("http://127.0.0.1:{port}/health"),
                Duration::from_secs(1),
                None,
            )
            .await
            .unwrap_err();
        assert_eq!(error.kind(), "unreachable");
    }
}
