//! `POST /v1/embeddings`, OpenAI-compatible, and the embedding of texts that the
//! assistant's memory needs: one validation, one fleet call, one accounting.
//!
//! Input is a string, an array of strings, an array of token IDs or an array of
//! such arrays. The fleet is always asked for floats; `encoding_format: base64`
//! (what the official SDKs send by default) is produced here, as OpenAI does it:
//! the little-endian bytes of the `f32` vector, base64-encoded. That way the
//! answer is the same whatever the fleet supports.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::config::{ConfigError, Env};
use crate::fleet::client::FleetClient;
use crate::guard::bulkhead::BulkheadPermit;
use crate::inference::usage::{Billing, Usage};
use crate::observability::RequestContext;
use crate::problem::ApiError;

/// Bounds from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddingLimits {
    pub models: Vec<String>,
    pub max_inputs: usize,
    pub max_input_chars: usize,
    pub max_total_chars: usize,
    pub max_input_tokens: usize,
    pub max_dimensions: u32,
}

impl EmbeddingLimits {
    /// `EMBEDDING_MODELS` (may be empty: no embeddings route), and the bounds
    /// `EMBEDDING_MAX_INPUTS` (256), `EMBEDDING_MAX_INPUT_CHARS` (32000),
    /// `EMBEDDING_MAX_TOTAL_CHARS` (400000), `EMBEDDING_MAX_INPUT_TOKENS` (8192),
    /// `EMBEDDING_MAX_DIMENSIONS` (4096).
    pub fn from_env(env: &Env<'_>) -> Result<Self, ConfigError> {
        Ok(Self {
            models: env.list("EMBEDDING_MODELS"),
            max_inputs: env.parse_or("EMBEDDING_MAX_INPUTS", 256)?,
            max_input_chars: env.parse_or("EMBEDDING_MAX_INPUT_CHARS", 32_000)?,
            max_total_chars: env.parse_or("EMBEDDING_MAX_TOTAL_CHARS", 400_000)?,
            max_input_tokens: env.parse_or("EMBEDDING_MAX_INPUT_TOKENS", 8_192)?,
            max_dimensions: env.parse_or("EMBEDDING_MAX_DIMENSIONS", 4_096)?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

/// What may be embedded: text, or token IDs (as tokenizing clients send them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl EmbeddingInput {
    fn count(&self) -> usize {
        match self {
            Self::Text(_) | Self::Tokens(_) => 1,
            Self::Texts(texts) => texts.len(),
            Self::TokenLists(lists) => lists.len(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(default, skip_serializing)]
    pub encoding_format: Option<EncodingFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dimensions: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

impl EmbeddingsRequest {
    /// Every failure is a 400 naming the limit or the field.
    pub fn validate(&self, limits: &EmbeddingLimits) -> Result<(), ApiError> {
        if !limits.models.iter().any(|model| model == &self.model) {
            return Err(ApiError::invalid(format!(
                "model {:?} is not an embedding model here; available: {}",
                self.model.chars().take(100).collect::<String>(),
                if limits.models.is_empty() {
                    "none".to_owned()
                } else {
                    limits.models.join(", ")
                }
            )));
        }
        let count = self.input.count();
        if count == 0 {
            return Err(ApiError::invalid("input must not be empty"));
        }
        if count > limits.max_inputs {
            return Err(ApiError::invalid(format!(
                "input has {count} items; at most {} are allowed",
                limits.max_inputs
            )));
        }
        match &self.input {
            EmbeddingInput::Text(text) => check_text(0, text, limits)?,
            EmbeddingInput::Texts(texts) => {
                let mut total = 0usize;
                for (index, text) in texts.iter().enumerate() {
                    check_text(index, text, limits)?;
                    total += text.chars().count();
                }
                if total > limits.max_total_chars {
                    return Err(ApiError::invalid(format!(
                        "input has {total} characters in all; at most {} are allowed",
                        limits.max_total_chars
                    )));
                }
            }
            EmbeddingInput::Tokens(tokens) => check_tokens(0, tokens, limits)?,
            EmbeddingInput::TokenLists(lists) => {
                for (index, tokens) in lists.iter().enumerate() {
                    check_tokens(index, tokens, limits)?;
                }
            }
        }
        if let Some(dimensions) = self.dimensions
            && !(1..=limits.max_dimensions).contains(&dimensions)
        {
            return Err(ApiError::invalid(format!(
                "dimensions must be between 1 and {}",
                limits.max_dimensions
            )));
        }
        if self.user.as_ref().is_some_and(|u| u.chars().count() > 256) {
            return Err(ApiError::invalid("user is longer than 256 characters"));
        }
        Ok(())
    }
}

fn check_text(index: usize, text: &str, limits: &EmbeddingLimits) -> Result<(), ApiError> {
    if text.trim().is_empty() {
        return Err(ApiError::invalid(format!(
            "input[{index}] is empty; every input needs text"
        )));
    }
    let chars = text.chars().count();
    if chars > limits.max_input_chars {
        return Err(ApiError::invalid(format!(
            "input[{index}] has {chars} characters; at most {} are allowed",
            limits.max_input_chars
        )));
    }
    Ok(())
}

fn check_tokens(index: usize, tokens: &[u32], limits: &EmbeddingLimits) -> Result<(), ApiError> {
    if tokens.is_empty() {
        return Err(ApiError::invalid(format!("input[{index}] has no tokens")));
    }
    if tokens.len() > limits.max_input_tokens {
        return Err(ApiError::invalid(format!(
            "input[{index}] has {} tokens; at most {} are allowed",
            tokens.len(),
            limits.max_input_tokens
        )));
    }
    Ok(())
}

/// Vectors from the fleet, in input order, with the usage they cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub model: String,
    pub vectors: Vec<Vec<f32>>,
    pub usage: Usage,
    /// The fleet endpoint that answered (logs, metrics).
    pub endpoint: String,
}

/// What an embedding call needs: the fleet and the billing of its tenant.
#[derive(Debug, Clone, Copy)]
pub struct Embedder<'a> {
    pub fleet: &'a FleetClient,
    pub billing: &'a Billing,
}

impl Embedder<'_> {
    /// Embeds a validated request for `tenant` in the slot `permit`, and accounts
    /// its tokens. The fleet's answer is checked: one finite vector per input,
    /// all of one length, else a 502.
    pub async fn embed(
        &self,
        permit: BulkheadPermit,
        tenant: &str,
        request: &EmbeddingsRequest,
        ctx: &RequestContext,
    ) -> Result<Embedded, ApiError> {
        let body = serde_json::to_value(request)
            .map_err(|error| ApiError::internal(format!("serializing embeddings: {error}")))?;
        let reply = self
            .fleet
            .embeddings(permit, &body, ctx)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "embeddings failed");
                error.to_api_error()
            })?;
        let vectors = read_vectors(&reply.body, request.input.count()).map_err(|problem| {
            tracing::error!(endpoint = %reply.endpoint, problem, "the fleet's embeddings are unusable");
            ApiError::BadGateway
        })?;
        let usage = Usage {
            prompt_tokens: reply.body["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
            completion_tokens: 0,
        };
        self.billing.account(tenant, &request.model, &usage).await;
        Ok(Embedded {
            model: request.model.clone(),
            vectors,
            usage,
            endpoint: reply.endpoint,
        })
    }
}

fn read_vectors(body: &Value, expected: usize) -> Result<Vec<Vec<f32>>, String> {
    let data = body["data"].as_array().ok_or("no data array")?;
    if data.len() != expected {
        return Err(format!("{} vectors for {expected} inputs", data.len()));
    }
    let mut slots: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (position, item) in data.iter().enumerate() {
        let index = item["index"].as_u64().map_or(position, |i| i as usize);
        let values = item["embedding"]
            .as_array()
            .ok_or("an embedding is not an array")?;
        let vector: Vec<f32> = values
            .iter()
            .map(|v| v.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
            .collect::<Option<_>>()
            .ok_or("an embedding holds a non-number")?;
        let slot = slots.get_mut(index).ok_or("an index out of range")?;
        if slot.replace(vector).is_some() {
            return Err("an index appears twice".to_owned());
        }
    }
    let vectors: Vec<Vec<f32>> = slots
        .into_iter()
        .collect::<Option<_>>()
        .ok_or("an index is missing")?;
    let length = vectors.first().map_or(0, Vec::len);
    if length == 0 || vectors.iter().any(|v| v.len() != length) {
        return Err("vectors of different or zero length".to_owned());
    }
    Ok(vectors)
}

/// OpenAI's answer: `{"object": "list", "data": [...], "model", "usage"}`.
pub fn to_openai(embedded: &Embedded, format: EncodingFormat) -> Value {
    let data: Vec<Value> = embedded
        .vectors
        .iter()
        .enumerate()
        .map(|(index, vector)| {
            let embedding = match format {
                EncodingFormat::Float => json!(vector),
                EncodingFormat::Base64 => Value::String(to_base64(vector)),
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list",
        "data": data,
        "model": embedded.model,
        "usage": {
            "prompt_tokens": embedded.usage.prompt_tokens,
            "total_tokens": embedded.usage.prompt_tokens,
        },
    })
}

/// The little-endian bytes of the `f32`s, base64: what OpenAI sends.
pub fn to_base64(vector: &[f32]) -> String {
    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> EmbeddingLimits {
        EmbeddingLimits {
            models: vec!["sophia-embed".into()],
            max_inputs: 3,
            max_input_chars: 20,
            max_total_chars: 30,
            max_input_tokens: 4,
            max_dimensions: 64,
        }
    }

    fn parse(value: Value) -> Result<EmbeddingsRequest, ApiError> {
        crate::http::request::parse_json(value.to_string().as_bytes())
    }

    #[test]
    fn every_input_shape_is_accepted() {
        for input in [
            json!("one text"),
            json!(["a", "b"]),
            json!([1, 2, 3]),
            json!([[1, 2], [3]]),
        ] {
            let request = parse(json!({"model": "sophia-embed", "input": input})).unwrap();
            request.validate(&limits()).unwrap();
        }
        let request = parse(
            json!({"model": "sophia-embed", "input": "x", "encoding_format": "base64", "dimensions": 8, "user": "u"}),
        )
        .unwrap();
        assert_eq!(request.encoding_format, Some(EncodingFormat::Base64));
        let upstream = serde_json::to_value(&request).unwrap();
        assert!(
            upstream.get("encoding_format").is_none(),
            "floats are asked of the fleet"
        );
        assert_eq!(upstream["dimensions"], 8);
    }

    #[test]
    fn bad_input_is_a_400_naming_the_limit() {
        for (body, expected) in [
            (
                json!({"model": "gpt-x", "input": "a"}),
                "not an embedding model",
            ),
            (
                json!({"model": "sophia-embed", "input": []}),
                "must not be empty",
            ),
            (
                json!({"model": "sophia-embed", "input": ""}),
                "input[0] is empty",
            ),
            (
                json!({"model": "sophia-embed", "input": ["a", " "]}),
                "input[1] is empty",
            ),
            (
                json!({"model": "sophia-embed", "input": ["a", "b", "c", "d"]}),
                "at most 3",
            ),
            (
                json!({"model": "sophia-embed", "input": "x".repeat(21)}),
                "at most 20",
            ),
            (
                json!({"model": "sophia-embed", "input": ["x".repeat(20), "y".repeat(20)]}),
                "in all",
            ),
            (
                json!({"model": "sophia-embed", "input": [1, 2, 3, 4, 5]}),
                "tokens",
            ),
            (
                json!({"model": "sophia-embed", "input": "a", "dimensions": 0}),
                "dimensions",
            ),
            (
                json!({"model": "sophia-embed", "input": "a", "dimensions": 65}),
                "dimensions",
            ),
        ] {
            let error = parse(body.clone())
                .and_then(|r| r.validate(&limits()).map(|_| r))
                .unwrap_err();
            assert_eq!(error.status(), 400, "{body}");
            assert!(error.to_string().contains(expected), "{body}: {error}");
        }
        for body in [
            json!({"model": "sophia-embed", "input": 5}),
            json!({"model": "sophia-embed", "input": [-1]}),
            json!({"model": "sophia-embed", "input": "a", "encoding_format": "int8"}),
            json!({"model": "sophia-embed", "input": "a", "extra": 1}),
        ] {
            assert_eq!(parse(body.clone()).unwrap_err().status(), 400, "{body}");
        }
    }

    #[test]
    fn fleet_vectors_are_checked_and_reordered_by_index() {
        let body = json!({"data": [
            {"index": 1, "embedding": [0.0, 1.0]},
            {"index": 0, "embedding": [1.0, 0.0]},
        ]});
        assert_eq!(
            read_vectors(&body, 2).unwrap(),
            vec![vec![1.0, 0.0], vec![0.0, 1.0]]
        );
        for bad in [
            json!({"data": [{"index": 0, "embedding": [1.0]}]}),
            json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [1.0]}]}),
            json!({"data": [{"index": 0, "embedding": [1.0]}, {"index": 1, "embedding": [1.0, 2.0]}]}),
            json!({"data": [{"index": 0, "embedding": ["x"]}, {"index": 1, "embedding": [1.0]}]}),
            json!({"nothing": true}),
        ] {
            assert!(read_vectors(&bad, 2).is_err(), "{bad}");
        }
    }

    #[test]
    fn base64_is_little_endian_f32_like_openai() {
        assert_eq!(to_base64(&[1.0]), "AACAPw==");
        let embedded = Embedded {
            model: "m".into(),
            vectors: vec![vec![1.0, -2.5]],
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 0,
            },
            endpoint: "primary".into(),
        };
        let answer = to_openai(&embedded, EncodingFormat::Float);
        assert_eq!(answer["data"][0]["embedding"], json!([1.0, -2.5]));
        assert_eq!(answer["usage"]["total_tokens"], 3);
        let answer = to_openai(&embedded, EncodingFormat::Base64);
        assert!(answer["data"][0]["embedding"].is_string());
    }
}
