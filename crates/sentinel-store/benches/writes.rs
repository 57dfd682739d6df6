//! Write throughput of the store under concurrency: 64 threads (as many as the clients the server
//! must serve at once) write for a fixed time each, and the bench prints acknowledged writes per
//! second. Run with `cargo bench -p sentinel-store --bench writes`; the figures are in
//! docs/storage.md. The data directory is a temporary directory: it must be on a real disk
//! (set TMPDIR), since fsync on tmpfs costs nothing and would flatter the result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sentinel_store::{NewVerdict, Store, StoreSettings};
use sha2::{Digest, Sha256};

const THREADS: u64 = 64;
const DURATION: Duration = Duration::from_secs(3);

/// One write: what a caller does for one request.
type Write = fn(&Store, u64);

fn sample(index: u64) -> Vec<u8> {
    let mut bytes = format!("MZ bench sample {index} ").into_bytes();
    bytes.extend((0..4096u64).map(|i| (i.wrapping_mul(index | 1) % 251) as u8));
    bytes
}

fn verdict<'a>(sha256: &'a str, analysis: &'a str) -> NewVerdict<'a> {
    NewVerdict { sha256, analysis, model_version: "bench", score: 0.5, client: "bench" }
}

fn one_verdict(store: &Store, index: u64) {
    let hash = hex::encode(Sha256::digest(index.to_le_bytes()));
    store.record_verdict(&verdict(&hash, "static")).expect("record_verdict");
}

/// A 4 KiB sample and two verdicts, one call each: how a request was recorded before
/// `record_analysis` existed.
fn sample_and_verdicts_separately(store: &Store, index: u64) {
    let bytes = sample(index);
    let hash = hex::encode(Sha256::digest(&bytes));
    store.record_sample(&hash, &bytes).expect("record_sample");
    store.record_verdict(&verdict(&hash, "static")).expect("record_verdict");
    store.record_verdict(&verdict(&hash, "combined")).expect("record_verdict");
}

/// The same request recorded in one call.
fn sample_and_verdicts_together(store: &Store, index: u64) {
    let bytes = sample(index);
    let hash = hex::encode(Sha256::digest(&bytes));
    let verdicts = [verdict(&hash, "static"), verdict(&hash, "combined")];
    store.record_analysis(Some((&hash, &bytes)), &verdicts).expect("record_analysis");
}

/// Runs one workload and returns its data directory, so that deleting it (thousands of files)
/// happens after all measurements instead of disturbing the next one.
fn run(name: &str, threads: u64, write: Write) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Arc::new(Store::open(dir.path(), StoreSettings::default()).expect("open store"));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|thread| {
            let (store, done) = (Arc::clone(&store), Arc::clone(&done));
            std::thread::spawn(move || {
                let mut index = thread << 32;
                while started.elapsed() < DURATION {
                    write(&store, index);
                    index += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("bench thread panicked");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let done = done.load(Ordering::Relaxed);
    let stats = store.write_stats();
    let per_transaction = stats.writes as f64 / stats.transactions.max(1) as f64;
    println!(
        "{name:<40} {threads:>3} threads  {:>7.0} calls/s  ({done} in {elapsed:.1} s, {per_transaction:.1} writes/transaction)",
        done as f64 / elapsed
    );
    dir
}

fn main() {
    let _dirs = [
        run("record_verdict", 1, one_verdict),
        run("record_verdict", THREADS, one_verdict),
        run("record_sample + 2 x record_verdict", THREADS, sample_and_verdicts_separately),
        run("record_analysis (sample + 2 verdicts)", THREADS, sample_and_verdicts_together),
    ];
}
