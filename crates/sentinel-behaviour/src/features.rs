//! TF-IDF over API-call n-grams.
//!
//! An n-gram is identified by a 64-bit FNV-1a hash of its names, so the model
//! file stores numbers rather than strings and scoring never allocates the
//! n-gram text unless an explanation is asked for. The vocabulary is the set
//! of n-grams seen in at least `min_df` training sequences; 64-bit hashes of a
//! few tens of thousands of n-grams do not collide in practice.
//!
//! Weighting follows scikit-learn's `TfidfVectorizer(sublinear_tf=True)`:
//! `(1 + ln tf) * idf`, `idf = ln((1 + n) / (1 + df)) + 1`, then L2
//! normalisation, so the Rust model and the Python baseline see the same
//! numbers. One dense feature follows the sparse ones: the log length of the
//! sequence, which TF-IDF normalisation otherwise hides.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;

/// Longest n-gram supported.
pub(crate) const MAX_NGRAM: usize = 5;

/// Number of dense features appended after the n-gram features.
pub(crate) const DENSE_FEATURES: usize = 1;

/// A sparse feature vector: sorted, distinct indices and their values.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SparseVector {
    pub indices: Vec<u32>,
    pub values: Vec<f64>,
}

impl SparseVector {
    pub fn dot(&self, dense: &[f64]) -> f64 {
        self.indices.iter().zip(&self.values).map(|(&i, &v)| dense[i as usize] * v).sum()
    }
}

/// The fitted n-gram vocabulary and its IDF weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NgramSpace {
    /// Longest n-gram used (n-grams of 1..=max_n calls).
    pub max_n: usize,
    /// Hash of each vocabulary n-gram, ascending; feature `i` is `ngram_hashes[i]`.
    pub ngram_hashes: Vec<u64>,
    pub idf: Vec<f32>,
    #[serde(skip)]
    index: HashMap<u64, u32>,
}

/// FNV-1a over the names with a separator byte, prefixed by the order so that
/// a 1-gram can never equal a 2-gram.
fn ngram_hash(names: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    feed(names.len() as u8);
    for name in names {
        for &b in name.as_bytes() {
            feed(b);
        }
        feed(0x1f);
    }
    hash
}

/// Every n-gram (1..=max_n) of `tokens` as (hash, start, length).
fn ngrams<'a>(tokens: &'a [&'a str], max_n: usize) -> impl Iterator<Item = (u64, usize, usize)> + 'a {
    (1..=max_n).flat_map(move |n| {
        tokens.windows(n).enumerate().map(move |(start, window)| (ngram_hash(window), start, n))
    })
}

impl NgramSpace {
    /// Learns the vocabulary (n-grams in at least `min_df` documents, at most
    /// `max_features` of them, the most frequent first) and IDF.
    pub fn fit(documents: &[Vec<&str>], max_n: usize, min_df: u32, max_features: usize) -> NgramSpace {
        let max_n = max_n.clamp(1, MAX_NGRAM);
        let mut df: HashMap<u64, u32> = HashMap::new();
        for doc in documents {
            let mut seen: Vec<u64> = ngrams(doc, max_n).map(|(h, _, _)| h).collect();
            seen.sort_unstable();
            seen.dedup();
            for h in seen {
                *df.entry(h).or_default() += 1;
            }
        }
        let mut kept: Vec<(u64, u32)> = df.into_iter().filter(|&(_, count)| count >= min_df.max(1)).collect();
        if kept.len() > max_features {
            // Most frequent first, ties broken by hash so the choice is deterministic.
            kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            kept.truncate(max_features);
        }
        kept.sort_unstable();
        let n = documents.len() as f64;
        let idf = kept
            .iter()
            .map(|&(_, count)| (((1.0 + n) / (1.0 + f64::from(count))).ln() + 1.0) as f32)
            .collect();
        let mut space = NgramSpace {
            max_n,
            ngram_hashes: kept.into_iter().map(|(h, _)| h).collect(),
            idf,
            index: HashMap::new(),
        };
        space.build_index();
        space
    }

    /// Checks a deserialised space and builds its lookup table.
    pub fn validate(&mut self, what: &str) -> Result<(), ModelError> {
        if !(1..=MAX_NGRAM).contains(&self.max_n) {
            return Err(ModelError::Invalid(format!("{what}: max_n must be 1..={MAX_NGRAM}")));
        }
        if self.idf.len() != self.ngram_hashes.len() {
            return Err(ModelError::Invalid(format!("{what}: idf and ngram_hashes differ in length")));
        }
        if !self.ngram_hashes.windows(2).all(|w| w[0] < w[1]) {
            return Err(ModelError::Invalid(format!("{what}: ngram_hashes must be strictly ascending")));
        }
        if self.idf.iter().any(|v| !v.is_finite() || *v < 0.0) {
            return Err(ModelError::Invalid(format!("{what}: idf values must be finite and non-negative")));
        }
        self.build_index();
        Ok(())
    }

    fn build_index(&mut self) {
        self.index = self.ngram_hashes.iter().enumerate().map(|(i, &h)| (h, i as u32)).collect();
    }

    /// Number of features: the vocabulary plus the dense features.
    pub fn dimension(&self) -> usize {
        self.ngram_hashes.len() + DENSE_FEATURES
    }

    /// The feature vector of `tokens`, and for each feature index the position
    /// and length of its first occurrence (for explanations).
    pub fn transform(&self, tokens: &[&str]) -> (SparseVector, Vec<(usize, usize)>) {
        let mut counts: HashMap<u32, (u32, usize, usize)> = HashMap::new();
        for (hash, start, len) in ngrams(tokens, self.max_n) {
            if let Some(&index) = self.index.get(&hash) {
                counts.entry(index).or_insert((0, start, len)).0 += 1;
            }
        }
        let mut entries: Vec<(u32, f64, (usize, usize))> = counts
            .into_iter()
            .map(|(index, (tf, start, len))| {
                (index, (1.0 + f64::from(tf).ln()) * f64::from(self.idf[index as usize]), (start, len))
            })
            .collect();
        entries.sort_unstable_by_key(|e| e.0);
        let norm = entries.iter().map(|e| e.1 * e.1).sum::<f64>().sqrt();
        let mut vector = SparseVector::default();
        let mut spans = Vec::with_capacity(entries.len() + DENSE_FEATURES);
        for (index, value, span) in entries {
            vector.indices.push(index);
            vector.values.push(if norm > 0.0 { value / norm } else { 0.0 });
            spans.push(span);
        }
        // ln(1 + length) scaled to about [0, 1] for sequences of up to a few thousand calls.
        vector.indices.push(self.ngram_hashes.len() as u32);
        vector.values.push((1.0 + tokens.len() as f64).ln() / 8.0);
        spans.push((0, 0));
        (vector, spans)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tfidf_matches_scikit_learn_formula() {
        let docs = vec![vec!["a", "b", "a"], vec!["a", "c"]];
        let space = NgramSpace::fit(&docs, 1, 1, usize::MAX);
        assert_eq!(space.dimension(), 4);
        let (v, _) = space.transform(&["a", "b", "a"]);
        // idf(a) = ln(3/3)+1 = 1, idf(b) = ln(3/2)+1; tf(a) = 2 -> 1 + ln 2.
        let a = 1.0 + 2f64.ln();
        let b = (1.5f64).ln() + 1.0;
        let norm = (a * a + b * b).sqrt();
        let mut values: Vec<f64> = v.values[..2].to_vec();
        values.sort_by(f64::total_cmp);
        assert!((values[0] - b / norm).abs() < 1e-6 && (values[1] - a / norm).abs() < 1e-6);
        assert_eq!(*v.indices.last().unwrap(), 3);
    }

    #[test]
    fn min_df_prunes_rare_ngrams_and_unknown_ngrams_are_ignored() {
        let docs = vec![vec!["a", "b"], vec!["a", "c"]];
        let space = NgramSpace::fit(&docs, 2, 2, usize::MAX);
        assert_eq!(space.ngram_hashes.len(), 1); // only "a" is in both
        let (v, spans) = space.transform(&["x", "a"]);
        assert_eq!(v.indices.len(), 2);
        assert_eq!(spans[0], (1, 1));
        let capped = NgramSpace::fit(&[vec!["a", "b"], vec!["a", "c"], vec!["b"]], 1, 1, 2);
        assert_eq!(capped.dimension(), 3, "a and b (2 documents each) beat c");
    }
}
