//! `sentinel bench anomaly`: every anomaly detector on every ADBench-format data
//! set of a folder (ADBench's protocol: stratified 70/30 split, several seeds,
//! unsupervised) and on NSL-KDD (fit on the normal rows of KDDTrain+, score
//! KDDTest+ and its harder subset KDDTest-21), next to scikit-learn on the same matrices in the
//! same run.

use std::path::PathBuf;

use anyhow::Context;
use sentinel_anomaly::bench::{BenchPlan, BenchRecord, MODELS, NslKddTest, Peer};

use crate::commands::table::{self, Style};
use crate::config::Config;

/// The scikit-learn peer, written to a temporary file and run with `--python`.
const PEER_SCRIPT: &str = include_str!("../../../../../bench/anomaly_sklearn.py");

#[derive(clap::Args)]
pub struct Args {
    /// A folder of ADBench-format `.npz` files (keys `X` and `y`).
    #[arg(long, default_value = "../shared/data/anomaly/adbench")]
    data: PathBuf,
    /// The NSL-KDD folder (KDDTrain+.txt, KDDTest+.txt); skipped when absent.
    #[arg(long, default_value = "../shared/data/network/nsl-kdd")]
    nsl_kdd: PathBuf,
    /// Only the data sets whose name contains one of these (e.g. `http,cardio,nsl-kdd`; NSL-KDD
    /// gives two: `nsl-kdd`, all of KDDTest+, and `nsl-kdd-21`, KDDTest-21).
    #[arg(long, value_delimiter = ',')]
    datasets: Vec<String>,
    /// Only these models: iforest, lof, ocsvm, ocsvm-rff, ensemble.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    /// Split seeds (ADBench uses three).
    #[arg(long, value_delimiter = ',', default_value = "0,1,2")]
    seeds: Vec<u64>,
    /// Thread counts to time Sentinel and scikit-learn with; default 1 and all cores.
    #[arg(long, value_delimiter = ',')]
    threads: Vec<usize>,
    /// The exact One-Class SVM is fitted on at most this many training rows, by both implementations.
    #[arg(long, default_value_t = 20_000)]
    ocsvm_max_rows: usize,
    /// Skip scikit-learn.
    #[arg(long)]
    no_peer: bool,
    /// The Python interpreter with scikit-learn.
    #[arg(long, default_value = "python3")]
    python: String,
    /// Print a JSON array of results instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args, _config: &Config) -> anyhow::Result<()> {
    let selected =
        |name: &str| args.datasets.is_empty() || args.datasets.iter().any(|d| name.contains(d.as_str()));
    let mut npz_files: Vec<PathBuf> = std::fs::read_dir(&args.data)
        .with_context(|| format!("cannot read the data folder {}", args.data.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "npz"))
        .filter(|path| path.file_stem().is_some_and(|s| selected(&s.to_string_lossy())))
        .collect();
    npz_files.sort();
    let nsl_kdd_tests: Vec<NslKddTest> = NslKddTest::ALL.into_iter().filter(|t| selected(t.name())).collect();
    let nsl_kdd = (!nsl_kdd_tests.is_empty() && args.nsl_kdd.join("KDDTrain+.txt").is_file())
        .then(|| (args.nsl_kdd.clone(), nsl_kdd_tests.clone()));
    if nsl_kdd.is_none() && !nsl_kdd_tests.is_empty() {
        eprintln!("NSL-KDD not found in {}: skipped", args.nsl_kdd.display());
    }
    let models: Vec<String> = if args.models.is_empty() {
        MODELS.iter().map(|m| m.to_string()).collect()
    } else {
        args.models.clone()
    };
    if let Some(unknown) = models.iter().find(|m| !MODELS.contains(&m.as_str())) {
        anyhow::bail!("unknown model {unknown:?}; known: {}", MODELS.join(", "));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = if args.threads.is_empty() {
        if cores > 1 { vec![1, cores] } else { vec![1] }
    } else {
        args.threads.clone()
    };
    if threads.contains(&0) {
        anyhow::bail!("thread counts must be at least 1");
    }
    let script_dir = std::env::temp_dir().join(format!("sentinel-peer-{}", std::process::id()));
    let peer = if args.no_peer {
        None
    } else {
        std::fs::create_dir_all(&script_dir)?;
        let script = script_dir.join("anomaly_sklearn.py");
        std::fs::write(&script, PEER_SCRIPT)?;
        Some(Peer { python: args.python.clone(), script })
    };
    let plan = BenchPlan {
        npz_files,
        nsl_kdd,
        models,
        seeds: args.seeds.clone(),
        threads,
        ocsvm_max_rows: args.ocsvm_max_rows,
        peer,
    };
    let started = std::time::Instant::now();
    let outcome = sentinel_anomaly::bench::run(&plan, |line| eprintln!("{line}"));
    let _ = std::fs::remove_dir_all(&script_dir);
    let records = outcome?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
    } else {
        print_table(&records);
        println!("total bench time: {:.0} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

/// One line per data set × model × thread count: Sentinel next to scikit-learn.
/// A peer without threads (libsvm, SGD) is compared at every thread count. The AUC
/// difference carries its standard error over the seeds when there are several.
fn print_table(records: &[BenchRecord]) {
    let header = [
        "dataset", "model", "thr", "AUC", "sk AUC", "ΔAUC", "fit s", "sk fit", "×", "score s", "sk score",
        "×",
    ];
    let mut table = table::new(Style::Markdown, &header, &[2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    for ours in records.iter().filter(|r| r.implementation == "sentinel") {
        let peer = records
            .iter()
            .filter(|r| {
                r.implementation == "scikit-learn" && r.dataset == ours.dataset && r.model == ours.model
            })
            .min_by_key(|r| (r.threads != ours.threads, r.threads));
        let (auc, fit, score) = match peer {
            Some(p) => (
                format!("{:.4}", p.roc_auc),
                format!("{:.3}", p.fit_seconds),
                format!("{:.3}", p.score_seconds),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let ratio =
            |theirs: Option<f64>, mine: f64| theirs.map_or("-".into(), |t| format!("{:.1}", t / mine));
        table.add_row([
            ours.dataset.clone(),
            ours.model.clone(),
            ours.threads.to_string(),
            format!("{:.4}", ours.roc_auc),
            auc,
            peer.map_or("-".into(), |p| {
                let difference = format!("{:+.4}", ours.roc_auc - p.roc_auc);
                match ours.roc_auc_difference_se {
                    Some(se) => format!("{difference} ±{se:.4}"),
                    None => difference,
                }
            }),
            format!("{:.3}", ours.fit_seconds),
            fit,
            ratio(peer.map(|p| p.fit_seconds), ours.fit_seconds),
            format!("{:.3}", ours.score_seconds),
            score,
            ratio(peer.map(|p| p.score_seconds), ours.score_seconds),
        ]);
    }
    println!("{table}");
}
