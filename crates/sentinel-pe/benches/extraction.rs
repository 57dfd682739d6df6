//! Feature extraction speed against Python's pefile on the benign corpus, from one run:
//! `cargo bench -p sentinel-pe --bench extraction`. Prints files/s and MB/s of the Rust
//! `pe-header` and `pe-rich` extractions and of pefile (benches/pefile_peer.py): its header
//! parse (`fast_load=True`, what `pe-header` reproduces) and its full load (all data
//! directories, the peer of `pe-rich`), then the ratios. One thread each side.

use std::hint::black_box;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sentinel_pe::{pe_header_features, pe_rich_features};

fn corpus_dir() -> PathBuf {
    std::env::var_os("SENTINEL_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../corpus/files"))
}

fn corpus() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

struct Rate {
    files_per_second: f64,
    megabytes_per_second: f64,
}

impl Rate {
    fn new(files: usize, bytes: usize, elapsed: Duration) -> Self {
        let seconds = elapsed.as_secs_f64().max(1e-9);
        Self { files_per_second: files as f64 / seconds, megabytes_per_second: bytes as f64 / 1e6 / seconds }
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<28} {:>10.0} files/s {:>10.1} MB/s",
            self.files_per_second, self.megabytes_per_second
        );
    }
}

/// Best of `rounds` timings of `extract` over all blobs, returning the number of errors seen.
fn time_rust(blobs: &[Vec<u8>], rounds: usize, extract: impl Fn(&[u8]) -> bool) -> (Duration, usize) {
    let mut best = Duration::MAX;
    let mut errors = 0;
    for _ in 0..rounds {
        let started = Instant::now();
        errors = blobs.iter().filter(|blob| !extract(black_box(blob))).count();
        best = best.min(started.elapsed());
    }
    (best, errors)
}

/// pefile's (header parse, full load) rates on the same files.
fn pefile_rates(paths: &[PathBuf]) -> Option<(Rate, Rate)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pefile_peer.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|err| eprintln!("pefile peer not run: python3: {err}"))
        .ok()?;
    let input: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    child.stdin.take()?.write_all(input.as_bytes()).ok()?;
    let output = child.wait_with_output().ok()?;
    if !output.status.success() {
        eprintln!("pefile peer failed ({}); is pefile installed?", output.status);
        return None;
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    let rate = |mode: &str| -> Option<Rate> {
        let run = &report[mode];
        println!("pefile ({mode}) rejected {} files", run["errors"]);
        let files = run["files"].as_u64()? as usize;
        let bytes = run["bytes"].as_u64()? as usize;
        Some(Rate::new(files, bytes, Duration::from_secs_f64(run["seconds"].as_f64()?)))
    };
    Some((rate("fast")?, rate("full")?))
}

fn main() {
    let paths = corpus();
    if paths.is_empty() {
        println!("SKIPPED: no corpus at {} (python3 corpus/build.py)", corpus_dir().display());
        return;
    }
    let blobs: Vec<Vec<u8>> = paths.iter().map(|p| std::fs::read(p).expect("read corpus file")).collect();
    let bytes: usize = blobs.iter().map(Vec::len).sum();
    println!("corpus: {} files, {:.1} MB", blobs.len(), bytes as f64 / 1e6);

    let (header_time, header_errors) = time_rust(&blobs, 5, |b| black_box(pe_header_features(b)).is_ok());
    let header = Rate::new(blobs.len(), bytes, header_time);
    let (rich_time, rich_errors) = time_rust(&blobs, 3, |b| black_box(pe_rich_features(b)).is_ok());
    let rich = Rate::new(blobs.len(), bytes, rich_time);
    println!("rust rejected {header_errors} (pe-header) and {rich_errors} (pe-rich) files");
    header.print("rust pe-header");
    rich.print("rust pe-rich");
    if let Some((fast, full)) = pefile_rates(&paths) {
        fast.print("pefile fast_load=True");
        full.print("pefile full load");
        println!(
            "ratio (files/s): rust pe-header / pefile fast_load = {:.0}x, rust pe-rich / pefile full load = {:.1}x",
            header.files_per_second / fast.files_per_second,
            rich.files_per_second / full.files_per_second
        );
    }
}
