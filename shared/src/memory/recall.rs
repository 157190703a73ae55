//! Hybrid recall over one user's memories, in memory, exact.
//!
//! Three rankings of the candidates that pass the filters:
//! - **vector**: cosine similarity of every candidate's vector with the query's
//!   (exact: every candidate is scored, so recall against brute force is 100 %);
//! - **lexical**: BM25 (k1 = 1.2, b = 0.75) of the query's terms in each text, with
//!   document frequencies over the candidates;
//! - **recency**: most recently updated first.
//!
//! They are fused by reciprocal rank fusion (score = Σ 1 / (60 + rank)), which
//! needs no calibration between the signals' scales: a memory near the top of
//! any ranking rises. Recency only counts among memories another signal found,
//! so an unrelated recent memory does not outrank a relevant old one. Without a
//! query vector (the fleet could not embed it) the vector ranking is absent and
//! the answer says it was degraded.

use std::collections::HashMap;

use serde::Serialize;

use crate::memory::vector::Quantized;

const RRF_K: f64 = 60.0;
const BM25_K1: f64 = 1.2;
const BM25_B: f64 = 0.75;

/// Words that carry no topic; leaving them out of the lexical index keeps BM25
/// about what a memory is about.
const STOPWORDS: [&str; 44] = [
    "a", "an", "and", "are", "as", "at", "be", "by", "do", "does", "did", "for", "from", "has",
    "have", "how", "i", "in", "is", "it", "its", "of", "on", "or", "our", "so", "that", "the",
    "their", "this", "to", "was", "we", "were", "what", "when", "where", "which", "who", "why",
    "will", "with", "you", "your",
];

/// The lexical terms of a text: lowercase words of letters and digits, without
/// stopwords, with a trailing plural or third-person `s` cut ("owns" meets "own").
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        .filter(|word| !STOPWORDS.contains(&word.as_str()))
        .map(|word| match word.strip_suffix('s') {
            Some(stem) if stem.chars().count() >= 3 && !stem.ends_with('s') => stem.to_owned(),
            _ => word,
        })
        .collect()
}

/// A memory's text as the lexical ranking needs it: term frequencies and length.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TermCounts {
    counts: HashMap<String, u32>,
    length: u32,
}

impl TermCounts {
    pub fn of(text: &str) -> Self {
        let mut counts = HashMap::new();
        let mut length = 0u32;
        for term in terms(text) {
            *counts.entry(term).or_insert(0) += 1;
            length += 1;
        }
        Self { counts, length }
    }

    fn count(&self, term: &str) -> u32 {
        self.counts.get(term).copied().unwrap_or(0)
    }
}

/// One candidate: what ranking needs of a memory.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    pub terms: &'a TermCounts,
    /// `None` while the vector is pending (or from another model).
    pub vector: Option<&'a Quantized>,
    pub updated_at: u64,
}

/// Why a memory was recalled: each signal's score and rank (1 = best), when it
/// ranked it at all.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Signals {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_similarity: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vector_rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lexical_score: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lexical_rank: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recency_rank: Option<usize>,
}

/// A ranked candidate: its index in the input, its fused score and signals.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub index: usize,
    pub score: f64,
    pub signals: Signals,
}

/// The top `k` candidates for a query (its terms, and its vector if embedded).
/// A candidate is returned only if the vector or the lexical ranking found it:
/// a vector similarity of at least `min_similarity`, or a lexical match.
pub fn rank(
    candidates: &[Candidate<'_>],
    query_text: &str,
    query_vector: Option<&Quantized>,
    min_similarity: f32,
    k: usize,
) -> Vec<Ranked> {
    let mut signals = vec![Signals::default(); candidates.len()];
    let mut fused = vec![0.0f64; candidates.len()];

    if let Some(query) = query_vector {
        let mut scored: Vec<(usize, f32)> = candidates
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.vector.map(|v| (i, query.cosine(v))))
            .filter(|(_, similarity)| *similarity >= min_similarity)
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (rank, (i, similarity)) in scored.into_iter().enumerate() {
            signals[i].vector_similarity = Some((similarity * 10_000.0).round() / 10_000.0);
            signals[i].vector_rank = Some(rank + 1);
            fused[i] += 1.0 / (RRF_K + (rank + 1) as f64);
        }
    }

    let query_terms = {
        let mut terms = terms(query_text);
        terms.sort();
        terms.dedup();
        terms
    };
    if !query_terms.is_empty() && !candidates.is_empty() {
        let n = candidates.len() as f64;
        let average = candidates
            .iter()
            .map(|c| f64::from(c.terms.length))
            .sum::<f64>()
            / n;
        let idf: Vec<f64> = query_terms
            .iter()
            .map(|term| {
                let df = candidates
                    .iter()
                    .filter(|c| c.terms.count(term) > 0)
                    .count() as f64;
                ((n - df + 0.5) / (df + 0.5) + 1.0).ln()
            })
            .collect();
        let mut scored: Vec<(usize, f64)> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let length = f64::from(c.terms.length);
                let norm = BM25_K1 * (1.0 - BM25_B + BM25_B * length / average.max(1.0));
                let score = query_terms
                    .iter()
                    .zip(&idf)
                    .map(|(term, idf)| {
                        let tf = f64::from(c.terms.count(term));
                        idf * tf * (BM25_K1 + 1.0) / (tf + norm)
                    })
                    .sum::<f64>();
                (i, score)
            })
            .filter(|(_, score)| *score > 0.0)
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        for (rank, (i, score)) in scored.into_iter().enumerate() {
            signals[i].lexical_score = Some((score * 1000.0).round() / 1000.0);
            signals[i].lexical_rank = Some(rank + 1);
            fused[i] += 1.0 / (RRF_K + (rank + 1) as f64);
        }
    }

    let mut found: Vec<usize> = (0..candidates.len())
        .filter(|&i| signals[i].vector_rank.is_some() || signals[i].lexical_rank.is_some())
        .collect();
    let mut by_recency = found.clone();
    by_recency.sort_by(|&a, &b| candidates[b].updated_at.cmp(&candidates[a].updated_at));
    for (rank, &i) in by_recency.iter().enumerate() {
        signals[i].recency_rank = Some(rank + 1);
        fused[i] += 1.0 / (RRF_K + (rank + 1) as f64);
    }
    found.sort_by(|&a, &b| {
        fused[b]
            .total_cmp(&fused[a])
            .then(candidates[b].updated_at.cmp(&candidates[a].updated_at))
    });
    found
        .into_iter()
        .take(k)
        .map(|i| Ranked {
            index: i,
            score: (fused[i] * 1_000_000.0).round() / 1_000_000.0,
            signals: signals[i].clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates<'a>(
        texts: &'a [TermCounts],
        vectors: &'a [Option<Quantized>],
        times: &[u64],
    ) -> Vec<Candidate<'a>> {
        texts
            .iter()
            .zip(vectors)
            .zip(times)
            .map(|((terms, vector), updated_at)| Candidate {
                terms,
                vector: vector.as_ref(),
                updated_at: *updated_at,
            })
            .collect()
    }

    #[test]
    fn terms_drop_stopwords_and_plural_s() {
        assert_eq!(
            terms("Who owns the Q3 migrations?"),
            ["own", "q3", "migration"]
        );
        assert_eq!(
            terms("Deploys freeze on Fridays"),
            ["deploy", "freeze", "friday"]
        );
        assert_eq!(terms("glass bus"), ["glass", "bus"]);
    }

    #[test]
    fn lexical_ranking_finds_the_matching_memory_and_skips_unrelated_ones() {
        let texts: Vec<TermCounts> = [
            "Dana owns the Q3 migration",
            "Deploys freeze on Fridays",
            "Lunch is at noon",
        ]
        .iter()
        .map(|t| TermCounts::of(t))
        .collect();
        let vectors = vec![None, None, None];
        let ranked = rank(
            &candidates(&texts, &vectors, &[1, 2, 3]),
            "Who runs the Q3 migration?",
            None,
            0.5,
            5,
        );
        assert_eq!(ranked.len(), 1, "{ranked:?}");
        assert_eq!(ranked[0].index, 0);
        assert_eq!(ranked[0].signals.lexical_rank, Some(1));
        assert!(ranked[0].signals.vector_rank.is_none());
    }

    #[test]
    fn vectors_lexical_and_recency_fuse() {
        let texts: Vec<TermCounts> = ["alpha beta", "gamma delta", "alpha gamma"]
            .iter()
            .map(|t| TermCounts::of(t))
            .collect();
        let q = Quantized::from_f32(&[1.0, 0.0, 0.0]);
        let vectors = vec![
            Some(Quantized::from_f32(&[0.9, 0.1, 0.0])),
            Some(Quantized::from_f32(&[0.0, 1.0, 0.0])),
            Some(Quantized::from_f32(&[0.7, 0.7, 0.0])),
        ];
        let ranked = rank(
            &candidates(&texts, &vectors, &[10, 30, 20]),
            "alpha",
            Some(&q),
            0.5,
            3,
        );
        let order: Vec<usize> = ranked.iter().map(|r| r.index).collect();
        assert_eq!(
            order,
            [0, 2],
            "the orthogonal, non-matching memory is not recalled"
        );
        assert!(ranked[0].score > ranked[1].score);
        assert_eq!(ranked[0].signals.vector_rank, Some(1));
        assert!(
            ranked[0].signals.lexical_rank.is_some() && ranked[0].signals.recency_rank.is_some()
        );
        assert_eq!(rank(&[], "alpha", Some(&q), 0.5, 3), vec![]);
    }
}
