//! `POST /v1/embeddings`: vectors whose similarity means something.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Json;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Faulted, SimState, aborted, gate, openai_error};

#[derive(Debug, Deserialize)]
struct EmbeddingsRequest {
    model: Option<String>,
    input: Value,
    dimensions: Option<usize>,
}

/// Words that carry no topic; leaving them out makes similarity mean something.
const STOPWORDS: [&str; 40] = [
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "for", "from", "has", "have",
    "how", "i", "in", "is", "it", "of", "on", "or", "our", "so", "that", "the", "their", "this",
    "to", "was", "we", "what", "when", "where", "which", "who", "why", "will", "with", "you",
];

/// The terms of a text: lowercase alphanumeric words, stopwords out, a trailing
/// plural or verb `s` cut (so "owns" and "own", "deploys" and "deploy" meet).
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .filter(|word| !STOPWORDS.contains(&word.as_str()))
        .map(|word| match word.strip_suffix('s') {
            Some(stem) if stem.len() >= 3 && !stem.ends_with('s') => stem.to_owned(),
            _ => word,
        })
        .collect()
}

/// FNV-1a, then MurmurHash3's finalizer: FNV's low bits barely differ between
/// similar strings ("18" and "54"), and the dimension is taken from the low bits.
fn feature_hash(text: &str) -> u64 {
    let mut state: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        state ^= u64::from(byte);
        state = state.wrapping_mul(0x0100_0000_01b3);
    }
    state ^= state >> 33;
    state = state.wrapping_mul(0xff51_afd7_ed55_8ccd);
    state ^= state >> 33;
    state = state.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    state ^ (state >> 33)
}

/// An embedding whose similarity means something: each term and each pair of
/// adjacent terms is hashed to a dimension with a sign (the hashing trick),
/// bigrams at half weight, and the vector is L2-normalised. Texts sharing words
/// point the same way: "Who runs the Q3 migration?" is closer to "Dana owns the
/// Q3 migration" than to "Deploys freeze on Fridays". A text without terms gets
/// a fixed unit vector.
pub fn embed(text: &str, dims: usize) -> Vec<f32> {
    let dims = dims.max(1);
    let mut vector = vec![0.0f32; dims];
    let terms = terms(text);
    let mut add = |feature: &str, weight: f32| {
        let hash = feature_hash(feature);
        let index = (hash % dims as u64) as usize;
        let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
        vector[index] += sign * weight;
    };
    for term in &terms {
        add(term, 1.0);
    }
    for pair in terms.windows(2) {
        add(&format!("{} {}", pair[0], pair[1]), 0.5);
    }
    let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm <= f32::EPSILON {
        vector[0] = 1.0;
        return vector;
    }
    for x in &mut vector {
        *x /= norm;
    }
    vector
}

pub(crate) async fn embeddings(
    axum::extract::State(sim): SimState,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let faulted = match gate(&sim, &headers, true).await {
        Err(response) | Ok(Faulted::Respond(response)) => return response,
        Ok(Faulted::Abort) => return aborted(),
        Ok(pass) => pass,
    };
    if let Faulted::Pass {
        delay: Some(delay), ..
    } = faulted
    {
        tokio::time::sleep(delay).await;
    }
    sim.keep_request(&body);
    let request: EmbeddingsRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("invalid JSON: {error}"),
            );
        }
    };
    // Token IDs stand for words "t<id>", so token input embeds deterministically too.
    let tokens_text = |items: &[Value]| -> String {
        items
            .iter()
            .map(|token| format!("t{token}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let inputs: Vec<String> = match request.input {
        Value::String(text) => vec![text],
        Value::Array(items) if items.iter().all(Value::is_number) && !items.is_empty() => {
            vec![tokens_text(&items)]
        }
        Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                Value::String(text) => text,
                Value::Array(tokens) => tokens_text(&tokens),
                other => other.to_string(),
            })
            .collect(),
        _ => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "input must be a string or an array of strings",
            );
        }
    };
    let behaviour = sim.behaviour().await;
    if behaviour.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behaviour.latency_ms)).await;
    }
    sim.counters.embeddings.fetch_add(1, Ordering::Relaxed);
    let dims = request.dimensions.unwrap_or(behaviour.embedding_dims);
    let tokens: usize = inputs
        .iter()
        .map(|text| text.split_whitespace().count())
        .sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| json!({ "object": "embedding", "index": index, "embedding": embed(text, dims) }))
        .collect();
    Json(json!({
        "object": "list",
        "data": data,
        "model": request.model.unwrap_or(behaviour.model),
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn related_texts_are_closer_than_unrelated_ones() {
        let query = embed("Who runs the Q3 migration?", 64);
        let related = embed("Dana owns the Q3 migration", 64);
        let unrelated = embed("Deploys freeze on Fridays", 64);
        assert!(cosine(&query, &related) > cosine(&query, &unrelated) + 0.3);
        let norm: f32 = related.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert_eq!(
            embed("Dana owns the Q3 migration", 64),
            related,
            "deterministic"
        );
        assert_eq!(embed("", 8).len(), 8);
        assert_eq!(
            terms("Deploys freeze, on Fridays!"),
            ["deploy", "freeze", "friday"]
        );
    }
}
