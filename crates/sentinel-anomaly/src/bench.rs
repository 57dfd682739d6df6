//! The benchmark harness behind `sentinel bench anomaly` (cargo feature
//! `bench`): loads ADBench `.npz` files and NSL-KDD, splits them with ADBench's
//! protocol (stratified 70/30, unsupervised: labels of the training split are
//! not used), fits and scores every model single- and multi-threaded, and runs
//! the scikit-learn peer script on the very same matrices, written to `.npy`
//! files so that both implementations see identical data.
//!
//! One file above 500 lines, on purpose: the split protocol, Sentinel's runs and the peer's runs
//! share the private `Split` and `Run` types, which modules of their own would have to publish
//! crate-wide; the data loaders live beside it (`bench/npz.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use ndarray::{Array1, Array2};
use rand::seq::SliceRandom;
use rand::{SeedableRng, seq::index::sample};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::{Deserialize, Serialize};

use crate::{
    ColumnKind, Combination, Detector, Ensemble, EnsembleParams, IsolationForest, IsolationForestParams,
    LocalOutlierFactor, LofParams, Matrix, MissingPolicy, Model, OneClassSvm, OneClassSvmParams,
    PreprocessParams, Preprocessor, RandomFeatureOneClassSvm, RandomFeatureParams, Scaling, Value, Weighting,
};

mod npz;

pub use npz::load_npz;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error(transparent)]
    Anomaly(#[from] crate::AnomalyError),
    #[error(transparent)]
    Metric(#[from] sentinel_metrics::MetricError),
    #[error("scikit-learn peer: {0}")]
    Peer(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, BenchError>;

/// A labelled data set: features and `true` for anomalies.
pub struct Labelled {
    pub name: String,
    pub x: Matrix,
    pub y: Vec<bool>,
}

/// NSL-KDD prepared for the unsupervised protocol: the training matrix holds the
/// normal rows of KDDTrain+ only; all of KDDTest+ is scored, and apart its harder subset.
pub struct NslKdd {
    pub train: Matrix,
    pub test: Labelled,
    /// KDDTest-21: the rows of KDDTest+ whose difficulty (the number of 21 classifiers of the
    /// data set's authors that got the row right) is below 21.
    pub test_21: Labelled,
    /// A labelled sample of KDDTrain+ (normal and attacks), the "analyst
    /// feedback" the stacking ensemble learns from.
    pub feedback: Labelled,
}

/// Positions of the symbolic columns of NSL-KDD's 41 features.
const NSL_KDD_CATEGORICAL: [usize; 3] = [1, 2, 3];
const NSL_KDD_FEATURES: usize = 41;
/// KDDTest-21 keeps the rows of KDDTest+ whose difficulty column is below this.
const KDD_TEST_21_DIFFICULTY: u32 = 21;
/// Size of the labelled feedback sample drawn from KDDTrain+.
const FEEDBACK_ROWS: usize = 2000;

/// Reads KDDTrain+.txt and KDDTest+.txt from `dir` and encodes them as the
/// published scikit-learn baseline does: one-hot categoricals, log1p then
/// min-max scaling of numeric columns, fitted on the normal training rows.
pub fn load_nsl_kdd(dir: &Path) -> Result<NslKdd> {
    let train_text = std::fs::read_to_string(dir.join("KDDTrain+.txt"))?;
    let test_text = std::fs::read_to_string(dir.join("KDDTest+.txt"))?;
    let train = parse_nsl_kdd(&train_text, &dir.join("KDDTrain+.txt"))?;
    let test = parse_nsl_kdd(&test_text, &dir.join("KDDTest+.txt"))?;
    let schema: Vec<ColumnKind> =
        (0..NSL_KDD_FEATURES)
            .map(|c| {
                if NSL_KDD_CATEGORICAL.contains(&c) {
                    ColumnKind::Categorical
                } else {
                    ColumnKind::LogNumeric
                }
            })
            .collect();
    let normal: Vec<Vec<Value<'_>>> =
        train.iter().filter(|row| !row.attack).map(|row| row.values.clone()).collect();
    let params = PreprocessParams { scaling: Scaling::MinMax, missing: MissingPolicy::Reject };
    let preprocessor = Preprocessor::fit(&schema, &normal, &params)?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let picked = sample(&mut rng, train.len(), FEEDBACK_ROWS.min(train.len())).into_vec();
    let feedback_rows: Vec<Vec<Value<'_>>> = picked.iter().map(|&i| train[i].values.clone()).collect();
    let test_rows: Vec<Vec<Value<'_>>> = test.iter().map(|row| row.values.clone()).collect();
    let hard: Vec<usize> = (0..test.len()).filter(|&i| test[i].difficulty < KDD_TEST_21_DIFFICULTY).collect();
    let test_x = preprocessor.transform(&test_rows)?;
    Ok(NslKdd {
        train: preprocessor.transform(&normal)?,
        test_21: Labelled {
            name: NslKddTest::Hard.name().into(),
            x: test_x.select_rows(&hard)?,
            y: hard.iter().map(|&i| test[i].attack).collect(),
        },
        test: Labelled {
            name: NslKddTest::All.name().into(),
            x: test_x,
            y: test.iter().map(|row| row.attack).collect(),
        },
        feedback: Labelled {
            name: "nsl-kdd feedback".into(),
            x: preprocessor.transform(&feedback_rows)?,
            y: picked.iter().map(|&i| train[i].attack).collect(),
        },
    })
}

/// One line of an NSL-KDD file: the 41 features, whether it is an attack, its difficulty.
struct NslKddRow<'a> {
    values: Vec<Value<'a>>,
    attack: bool,
    difficulty: u32,
}

fn parse_nsl_kdd<'a>(text: &'a str, path: &Path) -> Result<Vec<NslKddRow<'a>>> {
    let mut rows = Vec::new();
    for (line_number, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.trim().split(',').collect();
        if fields.len() != NSL_KDD_FEATURES + 2 {
            return Err(BenchError::Data {
                path: path.to_owned(),
                message: format!(
                    "line {}: {} fields, expected 43 (41 features, label, difficulty)",
                    line_number + 1,
                    fields.len()
                ),
            });
        }
        let difficulty = fields[NSL_KDD_FEATURES + 1].parse().map_err(|_| BenchError::Data {
            path: path.to_owned(),
            message: format!("line {}: the difficulty is not a whole number", line_number + 1),
        })?;
        let mut values = Vec::with_capacity(NSL_KDD_FEATURES);
        for (column, field) in fields[..NSL_KDD_FEATURES].iter().enumerate() {
            values.push(if NSL_KDD_CATEGORICAL.contains(&column) {
                Value::Category(field)
            } else {
                Value::Number(field.parse().map_err(|_| BenchError::Data {
                    path: path.to_owned(),
                    message: format!("line {}: column {column} is not a number", line_number + 1),
                })?)
            });
        }
        rows.push(NslKddRow { values, attack: fields[NSL_KDD_FEATURES] != "normal", difficulty });
    }
    Ok(rows)
}

/// ADBench's split: 30 % of each class to the test set, shuffled by `seed`.
pub fn stratified_split(labels: &[bool], seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for class in [false, true] {
        let mut rows: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        rows.shuffle(&mut rng);
        let n_test = (rows.len() as f64 * 0.3).round() as usize;
        test.extend_from_slice(&rows[..n_test]);
        train.extend_from_slice(&rows[n_test..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// The models the bench knows, by the names used on the command line and in the output.
pub const MODELS: [&str; 5] = ["iforest", "lof", "ocsvm", "ocsvm-rff", "ensemble"];

/// What to run.
pub struct BenchPlan {
    /// `.npz` files to run, each with ADBench's protocol.
    pub npz_files: Vec<PathBuf>,
    /// The NSL-KDD folder and the test sets to score, when it is to be run.
    pub nsl_kdd: Option<(PathBuf, Vec<NslKddTest>)>,
    pub models: Vec<String>,
    pub seeds: Vec<u64>,
    /// Thread counts to time Sentinel with (1 = single-threaded).
    pub threads: Vec<usize>,
    /// The exact One-Class SVM (both implementations) is fitted on at most this many training rows.
    pub ocsvm_max_rows: usize,
    /// The scikit-learn peer, unless skipped.
    pub peer: Option<Peer>,
}

/// The NSL-KDD test sets, each a data set of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NslKddTest {
    /// All of KDDTest+.
    All,
    /// KDDTest-21, its rows with difficulty below 21.
    Hard,
}

impl NslKddTest {
    pub const ALL: [NslKddTest; 2] = [NslKddTest::All, NslKddTest::Hard];

    /// The data set's name in the bench's output and `--datasets`.
    pub fn name(self) -> &'static str {
        match self {
            NslKddTest::All => "nsl-kdd",
            NslKddTest::Hard => "nsl-kdd-21",
        }
    }
}

/// How to run the scikit-learn peer script.
pub struct Peer {
    pub python: String,
    pub script: PathBuf,
}

/// The `implementation` of Sentinel's results, and of the peer's (`bench/anomaly_sklearn.py`).
const SENTINEL: &str = "sentinel";
const PEER: &str = "scikit-learn";

/// One line of the results: a data set × model × implementation × thread count,
/// averaged over the seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchRecord {
    pub dataset: String,
    pub model: String,
    pub implementation: String,
    pub threads: usize,
    pub seeds: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub roc_auc: f64,
    pub roc_auc_std: f64,
    /// On Sentinel's lines with a scikit-learn peer and two seeds or more: the standard error
    /// of the mean AUC difference from the peer, the runs paired by split. The two draw from
    /// different random generators, so a randomised model's difference varies from seed to
    /// seed; one within about two standard errors of 0 is that noise.
    pub roc_auc_difference_se: Option<f64>,
    pub pr_auc: f64,
    pub fit_seconds: f64,
    pub score_seconds: f64,
}

/// One run of one model on one split, as both implementations report it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Run {
    dataset: String,
    model: String,
    implementation: String,
    threads: usize,
    seed: u64,
    n_train: usize,
    n_test: usize,
    roc_auc: f64,
    pr_auc: f64,
    fit_seconds: f64,
    score_seconds: f64,
}

/// A split ready to run: training matrix (all rows, labels unused), test rows
/// and labels, and the rows the exact One-Class SVM is fitted on.
struct Split<'a> {
    dataset: &'a str,
    seed: u64,
    train: Matrix,
    test: &'a Matrix,
    labels: &'a [bool],
    ocsvm_rows: Vec<usize>,
    feedback: Option<&'a Labelled>,
}

/// Runs the plan, calling `progress` with a line of text as it goes.
pub fn run(plan: &BenchPlan, mut progress: impl FnMut(&str)) -> Result<Vec<BenchRecord>> {
    let mut runs = Vec::new();
    let scratch = std::env::temp_dir().join(format!("sentinel-bench-anomaly-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let outcome = (|| -> Result<()> {
        for path in &plan.npz_files {
            // A file that cannot be read (another format, damaged) is reported and
            // skipped: the other data sets still run.
            let data = match load_npz(path) {
                Ok(data) => data,
                Err(error) => {
                    progress(&format!("skipped: {error}"));
                    continue;
                }
            };
            for &seed in &plan.seeds {
                let (train_rows, test_rows) = stratified_split(&data.y, seed);
                let test = data.x.select_rows(&test_rows)?;
                let labels: Vec<bool> = test_rows.iter().map(|&i| data.y[i]).collect();
                let train = data.x.select_rows(&train_rows)?;
                let ocsvm_rows = subsample_rows(train.rows(), plan.ocsvm_max_rows, seed);
                let split = Split {
                    dataset: &data.name,
                    seed,
                    train,
                    test: &test,
                    labels: &labels,
                    ocsvm_rows,
                    feedback: None,
                };
                run_split(plan, &split, &scratch, &mut runs, &mut progress)?;
            }
        }
        if let Some((dir, tests)) = &plan.nsl_kdd {
            let data = load_nsl_kdd(dir)?;
            // The NSL-KDD split is fixed; seeds vary the models' randomness and the SVM sample.
            for test in tests {
                let test = match test {
                    NslKddTest::All => &data.test,
                    NslKddTest::Hard => &data.test_21,
                };
                for &seed in &plan.seeds {
                    let split = Split {
                        dataset: &test.name,
                        seed,
                        train: data.train.clone(),
                        test: &test.x,
                        labels: &test.y,
                        ocsvm_rows: subsample_rows(data.train.rows(), plan.ocsvm_max_rows, seed),
                        feedback: Some(&data.feedback),
                    };
                    run_split(plan, &split, &scratch, &mut runs, &mut progress)?;
                }
            }
        }
        Ok(())
    })();
    // The scratch folder holds copies of the data: remove it whatever happened.
    let _ = std::fs::remove_dir_all(&scratch);
    outcome?;
    Ok(summarise(&runs))
}

fn subsample_rows(rows: usize, max_rows: usize, seed: u64) -> Vec<usize> {
    if rows <= max_rows {
        return (0..rows).collect();
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5EED);
    let mut picked = sample(&mut rng, rows, max_rows).into_vec();
    picked.sort_unstable();
    picked
}

fn run_split(
    plan: &BenchPlan,
    split: &Split<'_>,
    scratch: &Path,
    runs: &mut Vec<Run>,
    progress: &mut impl FnMut(&str),
) -> Result<()> {
    let wants = |model: &str| plan.models.iter().any(|m| m == model);
    for &threads in &plan.threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(|e| BenchError::Peer(format!("thread pool: {e}")))?;
        let mut fitted: Vec<Model> = Vec::new();
        for model in MODELS.iter().filter(|m| wants(m) && **m != "ensemble") {
            let (fitted_model, run) = pool.install(|| run_sentinel(model, split, threads))?;
            progress(&format!(
                "{} seed {} {model} sentinel ×{threads}: AUC {:.4} fit {:.3}s score {:.3}s",
                split.dataset, split.seed, run.roc_auc, run.fit_seconds, run.score_seconds
            ));
            runs.push(run);
            if *model != "ocsvm-rff" {
                fitted.push(fitted_model);
            }
        }
        if wants("ensemble") && !fitted.is_empty() {
            for run in pool.install(|| run_ensembles(fitted, split, threads))? {
                progress(&format!(
                    "{} seed {} {} sentinel ×{threads}: AUC {:.4} fit {:.3}s score {:.3}s",
                    split.dataset, split.seed, run.model, run.roc_auc, run.fit_seconds, run.score_seconds
                ));
                runs.push(run);
            }
        }
    }
    if let Some(peer) = &plan.peer {
        let peer_models: Vec<&str> =
            MODELS.iter().copied().filter(|m| wants(m) && *m != "ensemble").collect();
        if !peer_models.is_empty() {
            for run in run_peer(peer, plan, split, &peer_models, scratch)? {
                progress(&format!(
                    "{} seed {} {} scikit-learn ×{}: AUC {:.4} fit {:.3}s score {:.3}s",
                    split.dataset,
                    split.seed,
                    run.model,
                    run.threads,
                    run.roc_auc,
                    run.fit_seconds,
                    run.score_seconds
                ));
                runs.push(run);
            }
        }
    }
    Ok(())
}

fn run_sentinel(model: &str, split: &Split<'_>, threads: usize) -> Result<(Model, Run)> {
    let seed = split.seed;
    let start = Instant::now();
    let (fitted, n_train) = match model {
        "iforest" => {
            let params = IsolationForestParams { seed, ..IsolationForestParams::default() };
            (Model::IsolationForest(IsolationForest::fit(&split.train, &params)?), split.train.rows())
        }
        "lof" => (
            Model::LocalOutlierFactor(LocalOutlierFactor::fit(&split.train, &LofParams::default())?),
            split.train.rows(),
        ),
        "ocsvm" => {
            let sample = split.train.select_rows(&split.ocsvm_rows)?;
            (Model::OneClassSvm(OneClassSvm::fit(&sample, &OneClassSvmParams::default())?), sample.rows())
        }
        "ocsvm-rff" => {
            let params = RandomFeatureParams { seed, ..RandomFeatureParams::default() };
            (
                Model::RandomFeatureOneClassSvm(RandomFeatureOneClassSvm::fit(&split.train, &params)?),
                split.train.rows(),
            )
        }
        other => return Err(BenchError::Peer(format!("unknown model {other:?}"))),
    };
    let fit_seconds = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let scores = fitted.score(split.test)?;
    let score_seconds = start.elapsed().as_secs_f64();
    let run = record(split, model, SENTINEL, threads, n_train, &scores, fit_seconds, score_seconds)?;
    Ok((fitted, run))
}

/// Rows of the training data used to calibrate ensembles: enough for stable
/// quantiles, few enough that scoring them with every member stays cheap.
const CALIBRATION_ROWS: usize = 5000;

fn run_ensembles(members: Vec<Model>, split: &Split<'_>, threads: usize) -> Result<Vec<Run>> {
    let calibration =
        split.train.select_rows(&subsample_rows(split.train.rows(), CALIBRATION_ROWS, split.seed))?;
    let mut runs = Vec::new();
    // Unsupervised everywhere: the default (the central members), and the plain average of
    // all members; with labelled feedback (NSL-KDD), the default then weighted by each
    // member's measured AUC, and stacking.
    let mut variants = vec![
        (Combination::Average, Weighting::Central, None, "ensemble"),
        (Combination::Average, Weighting::Equal, None, "ensemble-average"),
    ];
    if let Some(feedback) = split.feedback {
        variants.push((Combination::Average, Weighting::Central, Some(feedback), "ensemble-weighted"));
        variants.push((Combination::Stacking, Weighting::Central, Some(feedback), "ensemble-stacking"));
    }
    for (combination, weighting, feedback, name) in variants {
        let start = Instant::now();
        let params = EnsembleParams { combination, weighting, ..EnsembleParams::default() };
        let mut ensemble = Ensemble::new(members.clone(), &calibration, params)?;
        if let Some(feedback) = feedback {
            ensemble.learn_from_feedback(&feedback.x, &feedback.y)?;
        }
        let fit_seconds = start.elapsed().as_secs_f64();
        let start = Instant::now();
        let scores = ensemble.score(split.test)?;
        let score_seconds = start.elapsed().as_secs_f64();
        runs.push(record(
            split,
            name,
            SENTINEL,
            threads,
            split.train.rows(),
            &scores,
            fit_seconds,
            score_seconds,
        )?);
    }
    Ok(runs)
}

#[allow(clippy::too_many_arguments)]
fn record(
    split: &Split<'_>,
    model: &str,
    implementation: &str,
    threads: usize,
    n_train: usize,
    scores: &[f64],
    fit_seconds: f64,
    score_seconds: f64,
) -> Result<Run> {
    Ok(Run {
        dataset: split.dataset.to_owned(),
        model: model.to_owned(),
        implementation: implementation.to_owned(),
        threads,
        seed: split.seed,
        n_train,
        n_test: split.test.rows(),
        roc_auc: sentinel_metrics::roc_auc(scores, split.labels)?,
        pr_auc: sentinel_metrics::average_precision(scores, split.labels)?,
        fit_seconds,
        score_seconds,
    })
}

#[derive(Serialize)]
struct PeerJob<'a> {
    dataset: &'a str,
    seed: u64,
    train: PathBuf,
    test: PathBuf,
    labels: PathBuf,
    ocsvm_rows: PathBuf,
    models: &'a [&'a str],
    threads: &'a [usize],
    rff_components: usize,
}

fn run_peer(
    peer: &Peer,
    plan: &BenchPlan,
    split: &Split<'_>,
    models: &[&str],
    scratch: &Path,
) -> Result<Vec<Run>> {
    let write_error =
        |e: ndarray_npy::WriteNpyError| BenchError::Peer(format!("cannot write the split: {e}"));
    let as_array = |m: &Matrix| {
        Array2::from_shape_vec((m.rows(), m.cols()), m.values().to_vec())
            .map_err(|e| BenchError::Peer(e.to_string()))
    };
    let job = PeerJob {
        dataset: split.dataset,
        seed: split.seed,
        train: scratch.join("train.npy"),
        test: scratch.join("test.npy"),
        labels: scratch.join("labels.npy"),
        ocsvm_rows: scratch.join("ocsvm_rows.npy"),
        models,
        threads: &plan.threads,
        rff_components: RandomFeatureParams::default().n_components,
    };
    ndarray_npy::write_npy(&job.train, &as_array(&split.train)?).map_err(write_error)?;
    ndarray_npy::write_npy(&job.test, &as_array(split.test)?).map_err(write_error)?;
    let labels: Array1<i64> = split.labels.iter().map(|&l| i64::from(l)).collect();
    ndarray_npy::write_npy(&job.labels, &labels).map_err(write_error)?;
    let rows: Array1<i64> = split.ocsvm_rows.iter().map(|&r| r as i64).collect();
    ndarray_npy::write_npy(&job.ocsvm_rows, &rows).map_err(write_error)?;
    let job_path = scratch.join("job.json");
    std::fs::write(&job_path, serde_json::to_vec(&job).map_err(|e| BenchError::Peer(e.to_string()))?)?;
    let output = Command::new(&peer.python)
        .arg(&peer.script)
        .arg(&job_path)
        .output()
        .map_err(|e| BenchError::Peer(format!("cannot run {}: {e}", peer.python)))?;
    if !output.status.success() {
        return Err(BenchError::Peer(format!(
            "{} failed ({}): {}",
            peer.script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| BenchError::Peer(format!("unreadable output: {e}")))
}

/// Averages runs over seeds.
fn summarise(runs: &[Run]) -> Vec<BenchRecord> {
    let mut groups: BTreeMap<(String, String, String, usize), Vec<&Run>> = BTreeMap::new();
    for run in runs {
        let key = (run.dataset.clone(), run.model.clone(), run.implementation.clone(), run.threads);
        groups.entry(key).or_default().push(run);
    }
    groups
        .iter()
        .map(|((dataset, model, implementation, threads), group)| {
            let n = group.len() as f64;
            let mean = |f: fn(&Run) -> f64| group.iter().map(|r| f(r)).sum::<f64>() / n;
            let roc_auc = mean(|r| r.roc_auc);
            let variance = group.iter().map(|r| (r.roc_auc - roc_auc).powi(2)).sum::<f64>() / n;
            let roc_auc_difference_se =
                (implementation == SENTINEL).then(|| difference_standard_error(group, runs)).flatten();
            BenchRecord {
                dataset: dataset.clone(),
                model: model.clone(),
                implementation: implementation.clone(),
                threads: *threads,
                roc_auc_difference_se,
                seeds: group.len(),
                n_train: group[0].n_train,
                n_test: group[0].n_test,
                roc_auc,
                roc_auc_std: variance.sqrt(),
                pr_auc: mean(|r| r.pr_auc),
                fit_seconds: mean(|r| r.fit_seconds),
                score_seconds: mean(|r| r.score_seconds),
            }
        })
        .collect()
}

/// The standard error of the mean of Sentinel's AUC minus scikit-learn's over the splits of
/// `ours` (one line's runs), each paired with the peer's run on the same split (the same thread
/// count, or its only one), or `None` when a split has no peer run or there are fewer than two.
fn difference_standard_error(ours: &[&Run], runs: &[Run]) -> Option<f64> {
    let differences: Vec<f64> = ours
        .iter()
        .map(|mine| {
            let same_split = |r: &&Run| {
                r.implementation == PEER
                    && r.dataset == mine.dataset
                    && r.model == mine.model
                    && r.seed == mine.seed
            };
            let peer =
                runs.iter().filter(same_split).min_by_key(|r| (r.threads != mine.threads, r.threads))?;
            Some(mine.roc_auc - peer.roc_auc)
        })
        .collect::<Option<_>>()?;
    let n = differences.len();
    if n < 2 {
        return None;
    }
    let mean = differences.iter().sum::<f64>() / n as f64;
    let variance = differences.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    Some((variance / n as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(implementation: &str, threads: usize, seed: u64, roc_auc: f64) -> Run {
        Run {
            dataset: "cardio".into(),
            model: "iforest".into(),
            implementation: implementation.into(),
            threads,
            seed,
            n_train: 10,
            n_test: 5,
            roc_auc,
            pr_auc: 0.5,
            fit_seconds: 1.0,
            score_seconds: 1.0,
        }
    }

    #[test]
    fn the_auc_difference_carries_its_standard_error_over_paired_splits() {
        // Per-split differences +0.01 and +0.03: mean +0.02, sample sd √2·0.01, standard error 0.01.
        // The peer ran single-threaded only: both of Sentinel's thread counts pair with it.
        let runs = vec![
            run(SENTINEL, 1, 0, 0.91),
            run(SENTINEL, 1, 1, 0.83),
            run(SENTINEL, 2, 0, 0.91),
            run(SENTINEL, 2, 1, 0.83),
            run(PEER, 1, 0, 0.90),
            run(PEER, 1, 1, 0.80),
        ];
        let records = summarise(&runs);
        let ours: Vec<&BenchRecord> = records.iter().filter(|r| r.implementation == SENTINEL).collect();
        assert_eq!(ours.len(), 2);
        for record in ours {
            assert!((record.roc_auc - 0.87).abs() < 1e-12);
            let se = record.roc_auc_difference_se.unwrap();
            assert!((se - 0.01).abs() < 1e-12, "{se}");
        }
        let peer = records.iter().find(|r| r.implementation == PEER).unwrap();
        assert_eq!(peer.roc_auc_difference_se, None);

        // One seed, or a split the peer did not run: no standard error.
        assert_eq!(summarise(&runs[..1])[0].roc_auc_difference_se, None);
        let unpaired = [run(SENTINEL, 1, 0, 0.9), run(SENTINEL, 1, 5, 0.9), run(PEER, 1, 0, 0.9)];
        let records = summarise(&unpaired);
        assert_eq!(
            records.iter().find(|r| r.implementation == SENTINEL).unwrap().roc_auc_difference_se,
            None
        );
    }
}
