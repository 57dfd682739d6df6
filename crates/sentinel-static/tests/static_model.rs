//! The static classifier's public behaviour: the committed model loads and gives
//! calibrated, explained verdicts; hostile input is an error, never a panic; the
//! training pipeline learns, splits the corpus by package and records its
//! evaluation; model files are checked when loaded.

use sentinel_metrics::Report;
use sentinel_pe::PE_HEADER_COLUMNS;
use sentinel_static::{
    AnalyseError, Corpus, CorpusFile, CrossSourceOptions, EXCLUDED_FEATURES, FEATURE_GROUPS, FEATURES,
    LabelledRows, ModelError, StaticModel, TrainError, TrainingOptions, cross_source, read_header_csv_from,
    train,
};
use sentinel_testkit::Prerequisite;

struct Lcg(u64);

impl Lcg {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn column(name: &str) -> usize {
    PE_HEADER_COLUMNS.iter().position(|c| *c == name).unwrap()
}

/// Synthetic header rows: malware has fewer sections and a smaller code size,
/// with overlap so that the task is not trivially separable.
fn synthetic(rows: usize, seed: u64) -> LabelledRows {
    let mut rng = Lcg(seed);
    let mut data = LabelledRows::default();
    for _ in 0..rows {
        let malware = rng.uniform() < 0.6;
        let mut row = [0.0; FEATURES];
        for value in row.iter_mut() {
            *value = (rng.uniform() * 100.0).floor();
        }
        let shift = if malware { 0.0 } else { 4.0 };
        row[column("NumberOfSections")] = (rng.uniform() * 8.0 + shift).floor();
        row[column("SizeOfCode")] = ((rng.uniform() + if malware { 0.0 } else { 0.7 }) * 100_000.0).floor();
        row[column("e_magic")] = 23117.0;
        data.push(&row, malware);
    }
    data
}

fn to_csv(rows: &LabelledRows) -> String {
    let mut text = PE_HEADER_COLUMNS.join(",") + ",Malware\n";
    for i in 0..rows.len() {
        let cells: Vec<String> = rows.row(i).iter().map(|v| v.to_string()).collect();
        text += &format!("{},{}\n", cells.join(","), u8::from(rows.labels[i]));
    }
    text
}

fn small_options() -> TrainingOptions {
    let mut options = TrainingOptions { seed: 3, ..TrainingOptions::default() };
    options.params.max_iter = 40;
    options
}

#[test]
fn builtin_model_loads_and_scores() {
    let model = StaticModel::builtin();
    assert!(model.version().starts_with("pe-header-"), "{}", model.version());
    assert!((0.0..=1.0).contains(&model.threshold()));
    let row = synthetic(1, 1);
    let verdict = model.verdict(row.row(0)).unwrap();
    assert!((0.0..=1.0).contains(&verdict.score));
    assert_eq!(verdict.malicious, verdict.score >= model.threshold());
}

#[test]
fn non_pe_input_is_not_pe() {
    let model = StaticModel::builtin();
    let eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    for bytes in [&b""[..], b"MZ", b"\x7fELF\x02\x01\x01", &eicar[..], &[0u8; 4096][..]] {
        match model.analyse(bytes) {
            Err(AnalyseError::NotPe(_)) | Err(AnalyseError::Malformed(_)) => {}
            other => panic!("{:?}: expected an error, got {other:?}", &bytes[..bytes.len().min(8)]),
        }
    }
    assert!(matches!(model.analyse(&eicar[..]), Err(AnalyseError::NotPe(_))));
}

#[test]
fn verdicts_are_explained_by_their_contributions() {
    let model = StaticModel::builtin();
    for (i, row) in synthetic(20, 2).values.chunks(FEATURES).enumerate() {
        let verdict = model.verdict(row).unwrap();
        assert!((0.0..=1.0).contains(&verdict.score), "row {i}");
        let magnitudes: Vec<f64> = verdict.contributions.iter().map(|c| c.contribution.abs()).collect();
        assert!(magnitudes.windows(2).all(|w| w[0] >= w[1]), "row {i}: not sorted");
        for contribution in &verdict.contributions {
            let f = column(&contribution.feature);
            assert_eq!(contribution.value, row[f]);
        }
        assert_eq!(verdict.score, model.score_features(row).unwrap());
    }
}

#[test]
fn corpus_files_get_verdicts_when_the_corpus_is_present() {
    // The benign corpus of corpus/build.py: `SENTINEL_CORPUS_DIR`, else `<workspace>/corpus/files`.
    let dir = std::env::var_os("SENTINEL_CORPUS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../corpus/files"));
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries.filter_map(Result::ok).map(|entry| entry.path()).filter(|p| p.is_file()).collect()
        })
        .unwrap_or_default();
    if files.is_empty() {
        Prerequisite::Corpus.missing(format!(
            "no corpus at {} (build it with `python3 corpus/build.py`, or set SENTINEL_CORPUS_DIR)",
            dir.display()
        ));
        return;
    }
    files.sort();
    let model = StaticModel::builtin();
    let mut scored = 0;
    for path in files.iter().take(30) {
        let bytes = std::fs::read(path).unwrap();
        if let Ok(verdict) = model.analyse(&bytes) {
            assert!((0.0..=1.0).contains(&verdict.score));
            scored += 1;
        }
    }
    assert!(scored > 0, "no corpus file was scored");
}

#[test]
fn training_learns_and_evaluation_of_a_csv_is_sane() {
    let model = train(&synthetic(1500, 10), None, &small_options()).unwrap();
    let evaluation = model.evaluation();
    assert!(evaluation.header_test.roc_auc > 0.9, "{}", evaluation.header_test.roc_auc);
    assert!(evaluation.held_out_packages.is_none());

    // Score a CSV written here, through the same reader `sentinel eval static` uses.
    let test = read_header_csv_from(to_csv(&synthetic(600, 11)).as_bytes()).unwrap();
    let scores = model.score_rows(&test.values).unwrap();
    assert!(scores.iter().all(|s| (0.0..=1.0).contains(s)));
    let report = Report::new(&scores, &test.labels, model.threshold()).unwrap();
    assert!(report.roc_auc > 0.9 && report.roc_auc <= 1.0, "{}", report.roc_auc);
    assert!(report.accuracy > 0.8, "{}", report.accuracy);
    // Calibrated: the mean score is close to the share of malware.
    let mean = scores.iter().sum::<f64>() / scores.len() as f64;
    let share = test.positives() as f64 / test.len() as f64;
    assert!((mean - share).abs() < 0.08, "mean score {mean}, malware share {share}");

    // Round trip through the file format keeps every score.
    let loaded = StaticModel::from_slice(&model.to_json()).unwrap();
    assert_eq!(loaded.version(), model.version());
    assert_eq!(loaded.score_rows(&test.values).unwrap(), scores);
}

#[test]
fn training_is_reproducible_under_a_seed() {
    let data = synthetic(800, 12);
    let first = train(&data, None, &small_options()).unwrap();
    let second = train(&data, None, &small_options()).unwrap();
    assert_eq!(first.to_json(), second.to_json());
}

#[test]
fn corpus_packages_are_held_out_whole_and_reduce_false_positives() {
    // Benign files of "other toolchains": benign except for a malware-like section count.
    let mut rng = Lcg(20);
    let mut corpus = Corpus::default();
    let source = synthetic(3000, 21);
    let mut k = 0;
    for i in 0..source.len() {
        if source.labels[i] || corpus.files.len() >= 240 {
            continue;
        }
        let mut features = [0.0; FEATURES];
        features.copy_from_slice(source.row(i));
        features[column("NumberOfSections")] = (rng.uniform() * 4.0).floor();
        features[column("SizeOfCode")] = (rng.uniform() * 100_000.0).floor();
        features[column("Subsystem")] = 1000.0 + (k % 3) as f64;
        corpus.files.push(CorpusFile {
            package: format!("pypi/p{}", k % 12),
            sha256: format!("{k:064x}"),
            features,
        });
        k += 1;
    }
    let header = synthetic(1500, 22);
    let model = train(&header, Some(&corpus), &small_options()).unwrap();
    let split = model.training().corpus.clone().unwrap();
    assert_eq!(split.packages, 12);
    assert_eq!(split.train_packages + split.calibration_packages + split.test_packages, 12);
    assert_eq!(
        split.train_files + split.calibration_files + split.test_files + split.test_files_seen_in_training,
        240
    );
    let evaluation = model.evaluation();
    let held_out = evaluation.held_out_packages.as_ref().unwrap();
    assert_eq!(held_out.packages, split.test_packages);
    let baseline = evaluation.header_only_baseline.as_ref().unwrap();
    assert!(
        held_out.false_positive_rate < baseline.held_out_packages.false_positive_rate,
        "with corpus {} vs without {}",
        held_out.false_positive_rate,
        baseline.held_out_packages.false_positive_rate
    );
}

#[test]
fn bad_model_files_are_clear_errors() {
    let model = StaticModel::builtin();
    let mut json: serde_json::Value = serde_json::from_slice(&model.to_json()).unwrap();
    json["format_version"] = 7.into();
    assert!(matches!(
        StaticModel::from_slice(&serde_json::to_vec(&json).unwrap()),
        Err(ModelError::Version { found: 7, .. })
    ));
    json["format_version"] = 1.into();
    json["schema"] = "pe-rich".into();
    assert!(matches!(
        StaticModel::from_slice(&serde_json::to_vec(&json).unwrap()),
        Err(ModelError::Schema(_))
    ));
    json["schema"] = "pe-header".into();
    json["feature_columns"][0] = "something_else".into();
    assert!(matches!(
        StaticModel::from_slice(&serde_json::to_vec(&json).unwrap()),
        Err(ModelError::Format(_))
    ));
    json["feature_columns"][0] = PE_HEADER_COLUMNS[0].into();
    json["threshold"] = 3.into();
    assert!(matches!(
        StaticModel::from_slice(&serde_json::to_vec(&json).unwrap()),
        Err(ModelError::Format(_))
    ));
    assert!(StaticModel::from_slice(b"{\"schema\": ").is_err());
    assert!(matches!(
        StaticModel::load(std::path::Path::new("/nonexistent/static.json")),
        Err(ModelError::Io { .. })
    ));
}

#[test]
fn excluded_features_never_move_a_score() {
    let mut options = small_options();
    options.excluded_features = vec!["SizeOfCode".into(), "CheckSum".into()];
    let model = train(&synthetic(1500, 30), None, &options).unwrap();
    assert_eq!(model.training().excluded_features, ["SizeOfCode", "CheckSum"]);
    // The other signal is still learnt.
    assert!(model.evaluation().header_test.roc_auc > 0.8, "{}", model.evaluation().header_test.roc_auc);
    let (code, checksum) = (column("SizeOfCode"), column("CheckSum"));
    for row in synthetic(50, 31).values.chunks(FEATURES) {
        let verdict = model.verdict(row).unwrap();
        assert!(verdict.contributions.iter().all(|c| c.feature != "SizeOfCode" && c.feature != "CheckSum"));
        let mut changed = row.to_vec();
        changed[code] = 7e9;
        changed[checksum] = 123_456.0;
        assert_eq!(model.score_features(&changed).unwrap(), verdict.score);
    }

    options.excluded_features = vec!["TimeDateStamp".into()];
    assert!(matches!(
        train(&synthetic(300, 32), None, &options),
        Err(TrainError::UnknownFeature(name)) if name == "TimeDateStamp"
    ));
}

#[test]
fn feature_groups_cover_every_column_once_and_the_builtin_model_leaves_out_the_shipped_selection() {
    let mut grouped: Vec<&str> = FEATURE_GROUPS.iter().flat_map(|g| g.features.iter().copied()).collect();
    grouped.sort_unstable();
    let mut columns = PE_HEADER_COLUMNS.to_vec();
    columns.sort_unstable();
    assert_eq!(grouped, columns);
    // Only build metadata is left out.
    for feature in EXCLUDED_FEATURES {
        let group = FEATURE_GROUPS.iter().find(|g| g.features.contains(feature)).unwrap();
        assert!(group.build_metadata, "{feature} is in {}", group.name);
    }
    assert_eq!(StaticModel::builtin().training().excluded_features, EXCLUDED_FEATURES);
    assert_eq!(TrainingOptions::default().excluded_features, EXCLUDED_FEATURES);
}

#[test]
fn cross_source_measures_every_selection_on_unseen_packages() {
    let header = synthetic(1200, 40);
    let mut rng = Lcg(41);
    let mut corpus = Corpus::default();
    let source = synthetic(2000, 42);
    for i in (0..source.len()).filter(|&i| !source.labels[i]).take(120) {
        let mut features = [0.0; FEATURES];
        features.copy_from_slice(source.row(i));
        features[column("SizeOfCode")] = (rng.uniform() * 100_000.0).floor();
        let k = corpus.files.len();
        corpus.files.push(CorpusFile {
            package: format!("npm/p{}", k % 6),
            sha256: format!("{k:064x}"),
            features,
        });
    }
    let mut training = small_options();
    training.params.max_iter = 15;
    let options = CrossSourceOptions { training, folds: 3, ablations: true };
    let report = cross_source(&header, &corpus, &options).unwrap();
    assert_eq!((report.corpus_files, report.corpus_packages, report.folds), (120, 6, 3));
    assert_eq!(report.selections.len(), 2 + 2 * FEATURE_GROUPS.len());
    let find = |name: &str| report.selections.iter().find(|s| s.name == name).unwrap();
    assert_eq!(find("all").features, FEATURES);
    assert_eq!(find("shipped").features, FEATURES - EXCLUDED_FEATURES.len());
    assert_eq!(find("without dos_stub").features, FEATURES - 15);
    assert_eq!(find("only image_base").features, 1);
    for s in &report.selections {
        for figure in
            [s.in_source_auc, s.corpus_auc, s.unseen_package_auc, s.unseen_package_false_positive_rate]
        {
            assert!((0.0..=1.0).contains(&figure), "{}: {figure}", s.name);
        }
    }
    // The signal that separates the data set's classes is there with all features
    // and gone with the groups that carry it removed.
    assert!(find("all").in_source_auc > 0.85, "{}", find("all").in_source_auc);
    assert!(find("only image_base").in_source_auc < 0.7, "{}", find("only image_base").in_source_auc);

    let too_few = CrossSourceOptions { folds: 7, ..options };
    assert!(matches!(cross_source(&header, &corpus, &too_few), Err(TrainError::TooFew(_))));
}
