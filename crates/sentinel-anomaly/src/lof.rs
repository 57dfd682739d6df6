//! Local Outlier Factor (Breunig et al. 2000) in scikit-learn's novelty mode: fit
//! on normal data, then score new points against it. A point's local reachability
//! density is the inverse of its mean reachability distance to its k nearest
//! training neighbours, where reach(p, o) = max(d(p, o), k-distance(o)); its LOF is
//! its neighbours' mean density over its own. Densities of the training rows are
//! computed once at fit (each row's neighbours excluding itself, as scikit-learn's
//! `kneighbors()` does) and a new point costs one k-NN query.
//!
//! The neighbour search is chosen as scikit-learn's `algorithm="auto"` does: a
//! k-d tree up to 15 dimensions, exact blocked brute force above, where trees
//! stop pruning (NSL-KDD's 122 one-hot and scaled features).
//!
//! The fitted model keeps its training rows (LOF is defined by them); the saved
//! file holds the rows and densities and the index is rebuilt on load.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::brute::BruteForce;
use crate::detector::{Contamination, Detector, contamination_threshold};
use crate::error::{AnomalyError, Result};
use crate::kdtree::{KdTree, Neighbours};
use crate::matrix::Matrix;

/// Hyper-parameters of [`LocalOutlierFactor::fit`]; the defaults are scikit-learn's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LofParams {
    pub n_neighbors: usize,
    pub contamination: Contamination,
}

impl Default for LofParams {
    fn default() -> Self {
        LofParams { n_neighbors: 20, contamination: Contamination::Auto }
    }
}

/// scikit-learn adds this to mean reachability distances so that duplicates
/// (distance 0) give a large but finite density.
const DENSITY_EPSILON: f64 = 1e-10;

/// scikit-learn's `contamination="auto"` offset: a LOF above 1.5 is an outlier.
const AUTO_THRESHOLD: f64 = 1.5;

/// Above this many dimensions the neighbour search is brute force
/// (scikit-learn's threshold for `algorithm="auto"`).
const MAX_TREE_DIMENSIONS: usize = 15;

/// The neighbour search over the training rows.
#[derive(Debug, Clone)]
enum Index {
    Tree(KdTree),
    Brute(BruteForce),
}

impl Index {
    fn build(data: &Matrix) -> Index {
        if data.cols() > MAX_TREE_DIMENSIONS {
            Index::Brute(BruteForce::build(data))
        } else {
            Index::Tree(KdTree::build(data))
        }
    }

    /// The k nearest rows of `training` (the rows the index was built from)
    /// to `x`, skipping the row `exclude`.
    fn nearest(&self, training: &Matrix, x: &[f64], exclude: Option<usize>, found: &mut Neighbours) {
        match self {
            Index::Tree(tree) => tree.nearest(x, exclude, found),
            Index::Brute(_) => BruteForce::nearest(training, x, exclude, found),
        }
    }

    /// The k nearest rows of `training` to every row of `queries`; with
    /// `exclude_self`, query i is training row i and not its own neighbour.
    fn nearest_all(
        &self,
        training: &Matrix,
        queries: &Matrix,
        k: usize,
        exclude_self: bool,
    ) -> Vec<Neighbours> {
        match self {
            Index::Tree(tree) => (0..queries.rows())
                .into_par_iter()
                .map(|row| {
                    let mut found = Neighbours::new(k);
                    tree.nearest(queries.row(row), exclude_self.then_some(row), &mut found);
                    found
                })
                .collect(),
            Index::Brute(brute) => brute.nearest_all(training, queries, k, exclude_self),
        }
    }
}

/// A fitted LOF in novelty mode.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "SavedLof", into = "SavedLof")]
pub struct LocalOutlierFactor {
    training: Matrix,
    k: usize,
    k_distances: Vec<f64>,
    densities: Vec<f64>,
    threshold: f64,
    index: Index,
}

impl LocalOutlierFactor {
    pub fn fit(data: &Matrix, params: &LofParams) -> Result<LocalOutlierFactor> {
        data.check_trainable()?;
        params.contamination.validate()?;
        if params.n_neighbors == 0 {
            return Err(AnomalyError::Parameter("n_neighbors must be at least 1".into()));
        }
        if data.rows() < 2 {
            return Err(AnomalyError::Empty("LOF needs at least two training rows"));
        }
        if data.rows() > u32::MAX as usize {
            return Err(AnomalyError::Parameter("too many training rows".into()));
        }
        let k = params.n_neighbors.min(data.rows() - 1);
        let index = Index::build(data);
        let neighbours: Vec<(f64, Vec<(f64, usize)>)> = index
            .nearest_all(data, data, k, true)
            .into_par_iter()
            .map(|found| {
                let list: Vec<(f64, usize)> = found.sorted().collect();
                (list.last().map_or(0.0, |&(d, _)| d), list)
            })
            .collect();
        let k_distances: Vec<f64> = neighbours.iter().map(|(kd, _)| *kd).collect();
        let densities: Vec<f64> =
            neighbours.par_iter().map(|(_, list)| density(list.iter().copied(), &k_distances, k)).collect();
        let mut lof = LocalOutlierFactor {
            training: data.clone(),
            k,
            k_distances,
            densities,
            threshold: AUTO_THRESHOLD,
            index,
        };
        if let Contamination::Fraction(fraction) = params.contamination {
            // scikit-learn sets the offset from the training rows' own LOF.
            let training_lof: Vec<f64> = neighbours
                .par_iter()
                .enumerate()
                .map(|(row, (_, list))| lof.factor(list.iter().copied(), lof.densities[row]))
                .collect();
            lof.threshold = contamination_threshold(&training_lof, fraction);
        }
        Ok(lof)
    }

    fn factor(&self, neighbours: impl Iterator<Item = (f64, usize)>, own_density: f64) -> f64 {
        let mean_density: f64 = neighbours.map(|(_, o)| self.densities[o]).sum::<f64>() / self.k as f64;
        mean_density / own_density
    }

    /// The LOF of `x`, using `found` as scratch space for its neighbours.
    pub fn score_with(&self, x: &[f64], found: &mut Neighbours) -> f64 {
        self.index.nearest(&self.training, x, None, found);
        let own = density(found.sorted(), &self.k_distances, self.k);
        self.factor(found.sorted(), own)
    }

    /// Scratch space for [`LocalOutlierFactor::score_with`], reusable across calls.
    pub fn scratch(&self) -> Neighbours {
        Neighbours::new(self.k)
    }
}

fn density(neighbours: impl Iterator<Item = (f64, usize)>, k_distances: &[f64], k: usize) -> f64 {
    let reach: f64 = neighbours.map(|(d, o)| d.max(k_distances[o])).sum();
    1.0 / (reach / k as f64 + DENSITY_EPSILON)
}

impl Detector for LocalOutlierFactor {
    fn n_features(&self) -> usize {
        self.training.cols()
    }

    fn score_checked(&self, x: &[f64]) -> f64 {
        self.score_with(x, &mut self.scratch())
    }

    fn threshold(&self) -> f64 {
        self.threshold
    }

    fn score(&self, data: &Matrix) -> Result<Vec<f64>> {
        data.check_scorable(self.n_features())?;
        Ok(self
            .index
            .nearest_all(&self.training, data, self.k, false)
            .par_iter()
            .map(|found| {
                let own = density(found.sorted(), &self.k_distances, self.k);
                self.factor(found.sorted(), own)
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_xoshiro::Xoshiro256PlusPlus;

    /// Checks that the brute force finds the tree's neighbours, for every row
    /// of `data` (excluding itself) and for `queries`.
    fn assert_brute_matches_tree(data: &Matrix, queries: &Matrix, k: usize) {
        let (tree, brute) = (Index::Tree(KdTree::build(data)), Index::Brute(BruteForce::build(data)));
        for exclude_self in [true, false] {
            let queries = if exclude_self { data } else { queries };
            let (a, b) = (
                tree.nearest_all(data, queries, k, exclude_self),
                brute.nearest_all(data, queries, k, exclude_self),
            );
            // Which of several neighbours tied at the k-th distance is kept may
            // differ (as between scikit-learn's algorithms); the distances may not.
            let distances = |found: &Neighbours| found.sorted().map(|(d, _)| d).collect::<Vec<_>>();
            for (row, (a, b)) in a.iter().zip(&b).enumerate() {
                assert_eq!(distances(a), distances(b), "row {row}");
                let mut one = Neighbours::new(k);
                brute.nearest(data, queries.row(row), exclude_self.then_some(row), &mut one);
                assert_eq!(
                    one.sorted().collect::<Vec<_>>(),
                    b.sorted().collect::<Vec<_>>(),
                    "row {row}, one query"
                );
            }
        }
    }

    #[test]
    fn brute_force_finds_the_same_neighbours_as_the_tree() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        // Rounded values make exact duplicates and ties, as one-hot data does.
        let values: Vec<f64> = (0..700 * 20).map(|_| (rng.random::<f64>() * 4.0).round()).collect();
        let data = Matrix::new(values, 20).unwrap();
        let queries = data.select_rows(&(0..50).collect::<Vec<_>>()).unwrap();
        assert_brute_matches_tree(&data, &queries, 7);
    }

    #[test]
    fn brute_force_is_exact_far_from_the_origin_and_at_tiny_distances() {
        // Rows a millionth apart, a million from the origin: single precision
        // cannot tell them apart there, which the screen must allow for.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
        let values: Vec<f64> = (0..600 * 18).map(|_| 1e6 + rng.random::<f64>() * 1e-6).collect();
        let data = Matrix::new(values, 18).unwrap();
        let queries =
            Matrix::new((0..40 * 18).map(|_| 1e6 + rng.random::<f64>() * 1e-6).collect(), 18).unwrap();
        assert_brute_matches_tree(&data, &queries, 5);
    }

    #[test]
    fn brute_force_is_exact_beyond_single_precision_range() {
        // Squares of 1e25 overflow `f32`; 1e-42 is below its normal range.
        for scale in [1e25, 1e-42] {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(6);
            let values: Vec<f64> =
                (0..300 * 16).map(|_| (rng.random::<f64>() * 8.0).round() * scale).collect();
            let data = Matrix::new(values, 16).unwrap();
            let queries = data.select_rows(&(0..20).collect::<Vec<_>>()).unwrap();
            assert_brute_matches_tree(&data, &queries, 6);
        }
    }

    #[test]
    fn brute_force_answers_queries_among_many_duplicates() {
        // More rows tied at distance 0 than a screen may hold as candidates:
        // those queries fall back to the exact scan, and still get the right
        // (lowest-numbered) neighbours.
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let dims = 17;
        let mut values: Vec<f64> = (0..5_000).flat_map(|_| vec![0.5; dims]).collect();
        values.extend((0..300 * dims).map(|_| rng.random::<f64>()));
        let data = Matrix::new(values, dims).unwrap();
        let queries =
            Matrix::new([vec![0.5; dims], (0..dims).map(|_| rng.random()).collect()].concat(), dims).unwrap();
        let brute = BruteForce::build(&data);
        let found = brute.nearest_all(&data, &queries, 4, false);
        assert_eq!(found[0].sorted().collect::<Vec<_>>(), vec![(0.0, 0), (0.0, 1), (0.0, 2), (0.0, 3)]);
        let mut expected = Neighbours::new(4);
        BruteForce::nearest(&data, queries.row(1), None, &mut expected);
        assert_eq!(found[1].sorted().collect::<Vec<_>>(), expected.sorted().collect::<Vec<_>>());
    }
}

/// What a saved LOF holds: everything but the neighbour index, which is rebuilt on load.
#[derive(Serialize, Deserialize)]
struct SavedLof {
    n_features: usize,
    training: Vec<f64>,
    k: usize,
    k_distances: Vec<f64>,
    densities: Vec<f64>,
    threshold: f64,
}

impl From<LocalOutlierFactor> for SavedLof {
    fn from(lof: LocalOutlierFactor) -> SavedLof {
        SavedLof {
            n_features: lof.training.cols(),
            training: lof.training.values().to_vec(),
            k: lof.k,
            k_distances: lof.k_distances,
            densities: lof.densities,
            threshold: lof.threshold,
        }
    }
}

impl TryFrom<SavedLof> for LocalOutlierFactor {
    type Error = AnomalyError;

    fn try_from(saved: SavedLof) -> Result<LocalOutlierFactor> {
        let corrupt = |what: &str| AnomalyError::CorruptModel(format!("local outlier factor: {what}"));
        let training = Matrix::new(saved.training, saved.n_features).map_err(|e| corrupt(&e.to_string()))?;
        let rows = training.rows();
        if rows < 2 || saved.k == 0 || saved.k >= rows || rows > u32::MAX as usize {
            return Err(corrupt("bad shape"));
        }
        if saved.k_distances.len() != rows || saved.densities.len() != rows {
            return Err(corrupt("array lengths do not match the training rows"));
        }
        let finite = |v: &f64| v.is_finite() && *v >= 0.0;
        if !saved.k_distances.iter().all(finite) || !saved.densities.iter().all(finite) {
            return Err(corrupt("non-finite or negative value"));
        }
        if !saved.threshold.is_finite() {
            return Err(corrupt("non-finite threshold"));
        }
        let index = Index::build(&training);
        Ok(LocalOutlierFactor {
            training,
            k: saved.k,
            k_distances: saved.k_distances,
            densities: saved.densities,
            threshold: saved.threshold,
            index,
        })
    }
}
