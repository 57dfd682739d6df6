//! Whether what the static model learns transfers from one source of
//! executables to another, feature group by feature group, and which
//! `pe-header` fields the shipped model therefore does not use.
//!
//! A model trained and tested on one data set scores it almost perfectly
//! (ROC AUC 0.995) and another source much worse: it learns the quirks of its
//! training set — which linker built its benign files, whether their checksum is
//! filled in — as much as what separates malware from software. The honest
//! measure available here is across sources: the header data set (mostly
//! Microsoft-built benign files) against the benign corpus (real packages built
//! by other toolchains, `corpus/`), with the corpus package as the unit kept out.
//! [`cross_source`] measures each protocol on all features, on the shipped
//! selection, and with each feature group removed or kept alone.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_xoshiro::Xoshiro256PlusPlus;
use sentinel_metrics::roc_auc;
use sentinel_pe::PE_HEADER_COLUMNS;
use serde::Serialize;

use crate::TrainError;
use crate::corpus::Corpus;
use crate::header_csv::{FEATURES, LabelledRows};
use crate::training::{TrainingOptions, deduplicate, fit, split_header};

/// A named set of `pe-header` columns that record one kind of fact about a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FeatureGroup {
    pub name: &'static str,
    pub features: &'static [&'static str],
    /// The fields record how or when the file was built (a toolchain's version or
    /// default, a checksum), not what the program does or how it is laid out.
    pub build_metadata: bool,
}

/// The 50 `pe-header` columns in groups; every column is in exactly one group.
pub const FEATURE_GROUPS: [FeatureGroup; 12] = [
    FeatureGroup {
        name: "dos_stub",
        features: &[
            "e_magic",
            "e_cblp",
            "e_cp",
            "e_crlc",
            "e_cparhdr",
            "e_minalloc",
            "e_maxalloc",
            "e_ss",
            "e_sp",
            "e_ip",
            "e_cs",
            "e_lfarlc",
            "e_ovno",
            "e_oemid",
            "e_oeminfo",
        ],
        build_metadata: true,
    },
    FeatureGroup { name: "checksums", features: &["e_csum", "CheckSum"], build_metadata: true },
    FeatureGroup {
        name: "linker_version",
        features: &["MajorLinkerVersion", "MinorLinkerVersion"],
        build_metadata: true,
    },
    FeatureGroup {
        name: "image_version",
        features: &["MajorImageVersion", "MinorImageVersion"],
        build_metadata: true,
    },
    FeatureGroup {
        name: "os_subsystem_version",
        features: &[
            "MajorOperatingSystemVersion",
            "MinorOperatingSystemVersion",
            "MajorSubsystemVersion",
            "MinorSubsystemVersion",
        ],
        build_metadata: true,
    },
    FeatureGroup {
        name: "symbols",
        features: &["PointerToSymbolTable", "NumberOfSymbols"],
        build_metadata: true,
    },
    FeatureGroup {
        name: "layout",
        features: &[
            "e_lfanew",
            "NumberOfSections",
            "SizeOfOptionalHeader",
            "Magic",
            "SizeOfHeaders",
            "SectionAlignment",
            "FileAlignment",
            "LoaderFlags",
            "NumberOfRvaAndSizes",
        ],
        build_metadata: false,
    },
    FeatureGroup {
        name: "sizes",
        features: &["SizeOfCode", "SizeOfInitializedData", "SizeOfUninitializedData", "SizeOfImage"],
        build_metadata: false,
    },
    FeatureGroup {
        name: "entry_point",
        features: &["AddressOfEntryPoint", "BaseOfCode"],
        build_metadata: false,
    },
    FeatureGroup { name: "image_base", features: &["ImageBase"], build_metadata: false },
    FeatureGroup {
        name: "flags",
        features: &["Characteristics", "DllCharacteristics", "Subsystem"],
        build_metadata: false,
    },
    FeatureGroup {
        name: "stack_heap",
        features: &["SizeOfStackReserve", "SizeOfStackCommit", "SizeOfHeapReserve", "SizeOfHeapCommit"],
        build_metadata: false,
    },
];

/// The columns the shipped model does not use (the default of
/// [`TrainingOptions::excluded_features`], in column order): build metadata whose removal does
/// not lower the cross-source figures (docs/static-model.md, "What transfers").
pub const EXCLUDED_FEATURES: &[&str] = &["e_csum", "MajorLinkerVersion", "MinorLinkerVersion", "CheckSum"];

/// `excluded[f]` is true for the named columns; an unknown name is an error.
pub(crate) fn feature_mask(names: &[String]) -> Result<[bool; FEATURES], TrainError> {
    let mut mask = [false; FEATURES];
    for name in names {
        let f = PE_HEADER_COLUMNS
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| TrainError::UnknownFeature(name.clone()))?;
        mask[f] = true;
    }
    Ok(mask)
}

/// Settings of [`cross_source`].
#[derive(Debug, Clone, PartialEq)]
pub struct CrossSourceOptions {
    /// The pipeline's settings (seed, splits, boosting, target FPR); its
    /// `excluded_features` is the "shipped" selection.
    pub training: TrainingOptions,
    /// Folds of corpus packages for the unseen-package protocol (at least 3: one
    /// tested, one for calibration, the rest trained on).
    pub folds: usize,
    /// Also measure each feature group removed from all features, and kept alone.
    pub ablations: bool,
}

/// One feature selection under every protocol.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TransferFigures {
    /// The selection: `all`, `shipped`, `without <group>` or `only <group>`.
    pub name: String,
    /// Columns the trees could use.
    pub features: usize,
    /// Trained on the data set alone: ROC AUC on its own held-out rows.
    pub in_source_auc: f64,
    /// Trained on the data set alone: ROC AUC of its held-out malware against
    /// every corpus file (benign software of another source).
    pub corpus_auc: f64,
    /// Trained on the data set alone: corpus files at or above its threshold
    /// (chosen at the target FPR on the data set's calibration rows).
    pub corpus_false_positive_rate: f64,
    /// Trained on the data set and the corpus packages of the other folds: mean
    /// over folds of the ROC AUC of the data set's held-out malware against the
    /// held-out fold's files.
    pub unseen_package_auc: f64,
    /// Standard deviation of that AUC over the folds.
    pub unseen_package_auc_sd: f64,
    /// Files of held-out packages at or above their fold model's threshold
    /// (the shipped threshold rule), pooled over the folds.
    pub unseen_package_false_positive_rate: f64,
}

/// Every selection's figures, and the sizes behind them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossSourceReport {
    pub seed: u64,
    pub folds: usize,
    pub header_train_rows: usize,
    pub header_calibration_rows: usize,
    pub header_test_rows: usize,
    pub header_test_malware: usize,
    pub corpus_files: usize,
    pub corpus_packages: usize,
    pub shipped_excluded: Vec<String>,
    pub selections: Vec<TransferFigures>,
}

fn std_dev(values: &[f64]) -> f64 {
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
}

/// The fixed data: the data set split as the pipeline splits it, and the corpus
/// files in folds of whole packages.
struct Sources {
    train: LabelledRows,
    calibration: LabelledRows,
    test: LabelledRows,
    test_malware: Vec<usize>,
    /// Per fold, its corpus files (benign).
    folds: Vec<LabelledRows>,
    corpus_all: LabelledRows,
}

impl Sources {
    /// Scores of the data set's held-out malware then of `benign`, with labels.
    fn malware_against(&self, malware_scores: &[f64], benign_scores: &[f64]) -> (Vec<f64>, Vec<bool>) {
        let mut scores: Vec<f64> = self.test_malware.iter().map(|&i| malware_scores[i]).collect();
        let mut labels = vec![true; scores.len()];
        scores.extend_from_slice(benign_scores);
        labels.resize(scores.len(), false);
        (scores, labels)
    }

    fn measure(
        &self,
        name: String,
        excluded: &[bool; FEATURES],
        options: &TrainingOptions,
    ) -> Result<TransferFigures, TrainError> {
        // Protocol A: one source (the data set) to another (the corpus).
        let alone = fit(&self.train, None, &self.calibration, None, excluded, options)?;
        let test_scores = alone.scores(&self.test)?;
        let in_source_auc = roc_auc(&test_scores, &self.test.labels)?;
        let corpus_scores = alone.scores(&self.corpus_all)?;
        let (scores, labels) = self.malware_against(&test_scores, &corpus_scores);
        let corpus_auc = roc_auc(&scores, &labels)?;
        let flagged = corpus_scores.iter().filter(|&&s| s >= alone.threshold).count();

        // Protocol B: packages never seen, with the corpus in training as shipped.
        let k = self.folds.len();
        let (mut aucs, mut fold_flagged, mut fold_files) = (Vec::with_capacity(k), 0, 0);
        for held in 0..k {
            let calibration_fold = (held + 1) % k;
            let mut corpus_train = LabelledRows::default();
            for (_, rows) in
                self.folds.iter().enumerate().filter(|(f, _)| *f != held && *f != calibration_fold)
            {
                corpus_train.values.extend_from_slice(&rows.values);
                corpus_train.labels.extend_from_slice(&rows.labels);
            }
            let fitted = fit(
                &self.train,
                Some(&corpus_train),
                &self.calibration,
                Some(&self.folds[calibration_fold]),
                excluded,
                options,
            )?;
            let held_scores = fitted.scores(&self.folds[held])?;
            let (scores, labels) = self.malware_against(&fitted.scores(&self.test)?, &held_scores);
            aucs.push(roc_auc(&scores, &labels)?);
            fold_flagged += held_scores.iter().filter(|&&s| s >= fitted.threshold).count();
            fold_files += held_scores.len();
        }
        Ok(TransferFigures {
            name,
            features: excluded.iter().filter(|&&e| !e).count(),
            in_source_auc,
            corpus_auc,
            corpus_false_positive_rate: flagged as f64 / self.corpus_all.len() as f64,
            unseen_package_auc: aucs.iter().sum::<f64>() / k as f64,
            unseen_package_auc_sd: std_dev(&aucs),
            unseen_package_false_positive_rate: fold_flagged as f64 / fold_files as f64,
        })
    }
}

/// Measures the cross-source protocols on all features, on the shipped
/// selection (`options.training.excluded_features`) and, with `ablations`, with
/// each [`FEATURE_GROUPS`] entry removed from all features and kept alone.
///
/// - **data set → corpus**: trained and calibrated on the data set alone; its
///   held-out malware against every corpus file.
/// - **unseen packages**: the corpus packages in `folds` seeded folds; for each,
///   trained on the data set and the packages of the other folds but one, which
///   calibrates and sets the threshold by the shipped rule; the held-out fold's
///   files against the data set's held-out malware.
pub fn cross_source(
    header: &LabelledRows,
    corpus: &Corpus,
    options: &CrossSourceOptions,
) -> Result<CrossSourceReport, TrainError> {
    let training = &options.training;
    let shipped = feature_mask(&training.excluded_features)?;
    let mut packages: Vec<&str> = corpus.files.iter().map(|f| f.package.as_str()).collect();
    packages.sort_unstable();
    packages.dedup();
    if options.folds < 3 || packages.len() < options.folds {
        return Err(TrainError::TooFew(format!(
            "{} corpus packages for {} folds; the unseen-package protocol needs at least 3 folds of one package or more",
            packages.len(),
            options.folds
        )));
    }
    let (unique, _) = deduplicate(header);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(training.seed);
    let split = split_header(&unique, training, &mut rng);
    packages.shuffle(&mut rng);
    let mut folds = vec![LabelledRows::default(); options.folds];
    let mut corpus_all = LabelledRows::default();
    for file in &corpus.files {
        let position =
            packages.iter().position(|p| *p == file.package).expect("every file's package is listed");
        folds[position % options.folds].push(&file.features, false);
        corpus_all.push(&file.features, false);
    }
    let test_malware: Vec<usize> = (0..split.test.len()).filter(|&i| split.test.labels[i]).collect();
    if test_malware.is_empty() || split.test.positives() == split.test.len() {
        return Err(TrainError::TooFew("the data set's held-out rows need both labels".into()));
    }
    let sources = Sources {
        train: split.train,
        calibration: split.calibration,
        test: split.test,
        test_malware,
        folds,
        corpus_all,
    };

    let mut selections = vec![
        sources.measure("all".into(), &[false; FEATURES], training)?,
        sources.measure("shipped".into(), &shipped, training)?,
    ];
    if options.ablations {
        for group in &FEATURE_GROUPS {
            let names: Vec<String> = group.features.iter().map(|f| (*f).to_owned()).collect();
            let without = feature_mask(&names)?;
            selections.push(sources.measure(format!("without {}", group.name), &without, training)?);
            let only = without.map(|e| !e);
            selections.push(sources.measure(format!("only {}", group.name), &only, training)?);
        }
    }
    Ok(CrossSourceReport {
        seed: training.seed,
        folds: options.folds,
        header_train_rows: sources.train.len(),
        header_calibration_rows: sources.calibration.len(),
        header_test_rows: sources.test.len(),
        header_test_malware: sources.test_malware.len(),
        corpus_files: sources.corpus_all.len(),
        corpus_packages: packages.len(),
        shipped_excluded: training.excluded_features.clone(),
        selections,
    })
}
