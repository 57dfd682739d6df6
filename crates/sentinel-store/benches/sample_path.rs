//! Where the time of storing one sample goes: each step the store takes for a new sample, timed
//! alone on the same bytes (1 MiB by default, an argument in KiB changes it), then the store's
//! own calls. It answers "which step is worth making faster" for `sentinel bench server`'s
//! latency; the figures are in docs/benchmarks.md.
//!
//! Run with `cargo bench -p sentinel-store --bench sample_path [-- SIZE_KIB]`. The data
//! directory is a temporary directory: put it on the disk to be measured (set TMPDIR), since
//! fsync on tmpfs costs nothing.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use sentinel_store::{NewVerdict, Store, StoreSettings, VaultCompression, VerifiedSample};
use sha2::{Digest, Sha256};

/// Timed repetitions of each step (after one untimed warm-up).
const ROUNDS: usize = 60;

/// Bytes like a packed executable's: pseudo-random, incompressible (xorshift64*, as the
/// synthetic PE files of `sentinel bench server`). `seed` makes each call's bytes new.
fn random_bytes(size: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut bytes = vec![0u8; size];
    for chunk in bytes.chunks_mut(8) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
    bytes[..2].copy_from_slice(b"MZ");
    bytes
}

struct Timing {
    name: String,
    times: Vec<Duration>,
    note: String,
}

impl Timing {
    fn print(&self) {
        let mut sorted = self.times.clone();
        sorted.sort();
        let at = |fraction: f64| {
            let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
            sorted[index].as_secs_f64() * 1000.0
        };
        println!("| {} | {:.3} | {:.3} | {} |", self.name, at(0.5), at(0.99), self.note);
    }
}

/// Times `step` on fresh inputs made by `input` (not timed).
fn time<T>(name: &str, note: &str, mut input: impl FnMut(u64) -> T, mut step: impl FnMut(T)) -> Timing {
    step(input(u64::MAX));
    let times = (0..ROUNDS as u64)
        .map(|round| {
            let input = input(round);
            let started = Instant::now();
            step(input);
            started.elapsed()
        })
        .collect();
    Timing { name: name.to_owned(), times, note: note.to_owned() }
}

fn zstd_size(bytes: &[u8], level: i32) -> usize {
    zstd::bulk::compress(bytes, level).expect("zstd").len()
}

fn write_durably(dir: &Path, name: &str, bytes: &[u8]) {
    let temporary = dir.join("incoming").join(format!("{name}.tmp"));
    let mut file = OpenOptions::new().write(true).create_new(true).open(&temporary).expect("create");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("fsync");
    drop(file);
    fs::rename(&temporary, dir.join("leaf").join(name)).expect("rename");
    sync_dir(&dir.join("leaf"));
}

/// Makes a directory's entries durable.
fn sync_dir(dir: &Path) {
    File::open(dir).and_then(|handle| handle.sync_all()).expect("directory fsync");
}

/// A new fan-out leaf as the vault makes one for a hash whose `ab/cd/` directory is not known
/// durable yet (`Vault::create_fan_out`): each directory created, then its parent fsynced.
fn make_leaf_durably(dir: &Path, seed: u64) {
    let first = dir.join("fan-out").join(format!("{seed:x}"));
    let leaf = first.join("cd");
    fs::create_dir(&first).expect("first level");
    sync_dir(&dir.join("fan-out"));
    fs::create_dir(&leaf).expect("leaf");
    sync_dir(&first);
}

/// A file allocated and written once in full, then overwritten one sample-sized slot at a time:
/// the least a durable write of a sample's bytes can cost on this disk (one data flush, no
/// file-system metadata to commit), the floor under any sample journal.
struct AllocatedJournal {
    file: File,
    slot: usize,
}

impl AllocatedJournal {
    fn new(dir: &Path, slot: usize) -> AllocatedJournal {
        let mut file = File::create(dir.join("journal")).expect("journal");
        for _ in 0..=ROUNDS {
            file.write_all(&vec![0u8; slot]).expect("allocate");
        }
        file.sync_all().expect("fsync");
        AllocatedJournal { file, slot }
    }

    fn write_durably(&self, round: u64, bytes: &[u8]) {
        use std::os::unix::fs::FileExt;
        let offset = (round as usize % (ROUNDS + 1) * self.slot) as u64;
        self.file.write_all_at(bytes, offset).expect("write");
        self.file.sync_data().expect("fdatasync");
    }
}

fn verdict(sha256: &str) -> NewVerdict<'_> {
    NewVerdict { sha256, analysis: "static", model_version: "bench", score: 0.5, client: "bench" }
}

fn main() {
    let size_kib: usize = std::env::args()
        .skip(1)
        .find(|argument| !argument.starts_with('-'))
        .map_or(1024, |argument| argument.parse().expect("SIZE_KIB, a number"));
    let size = size_kib * 1024;
    let dir = tempfile::tempdir().expect("temporary directory");
    for sub in ["incoming", "leaf", "fan-out"] {
        fs::create_dir(dir.path().join(sub)).expect("directory");
    }
    let random = |seed| random_bytes(size, seed);
    let sample_random = random(1);
    let ratio =
        |bytes: &[u8], level| format!("{:.2} of the size", zstd_size(bytes, level) as f64 / size as f64);

    println!("{size_kib} KiB per sample, {ROUNDS} rounds, data directory {}", dir.path().display());
    println!("| step | p50 ms | p99 ms | |");
    println!("|---|---:|---:|---|");
    let mut timings = vec![
        time("SHA-256, sha2 (SHA-NI when the CPU has it)", "", random, |bytes| {
            std::hint::black_box(Sha256::digest(&bytes));
        }),
        time("SHA-256, aws-lc-rs", "", random, |bytes| {
            std::hint::black_box(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes));
        }),
    ];
    for level in [3, 1, -1] {
        timings.push(time(
            &format!("zstd level {level}, incompressible bytes"),
            &ratio(&sample_random, level),
            random,
            |bytes| {
                std::hint::black_box(zstd::bulk::compress(&bytes, level).expect("zstd"));
            },
        ));
    }
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("key"));
    timings.push(time("AES-256-GCM seal (aws-lc-rs)", "", random, |mut bytes| {
        let nonce = Nonce::assume_unique_for_key([1u8; 12]);
        key.seal_in_place_append_tag(nonce, Aad::from(b"header"), &mut bytes).expect("seal");
    }));
    timings.push(time(
        "write + fsync file, rename, fsync directory",
        "what the vault does for a new file",
        |seed| (seed, random(seed)),
        |(seed, bytes)| write_durably(dir.path(), &format!("file-{seed}"), &bytes),
    ));
    timings.push(time(
        "new fan-out leaf: two mkdirs, each parent fsynced",
        "what a new sample pays when its vault/ab/cd/ is new",
        |seed| seed,
        |seed| make_leaf_durably(dir.path(), seed),
    ));
    let journal = AllocatedJournal::new(dir.path(), size);
    timings.push(time(
        "write into an allocated file + fdatasync",
        "the floor of any durable sample write",
        |seed| (seed, random(seed)),
        |(seed, bytes)| journal.write_durably(seed, &bytes),
    ));
    for timing in &timings {
        timing.print();
    }

    let store_dir = tempfile::tempdir_in(dir.path()).expect("store directory");
    let hash = |bytes: &[u8]| hex::encode(Sha256::digest(bytes));
    let mut store_timings = Vec::new();
    for compression in [VaultCompression::Inline, VaultCompression::Background] {
        let settings = StoreSettings { vault_compression: compression, ..StoreSettings::default() };
        let store = Store::open(&store_dir.path().join(compression.name()), settings).expect("open store");
        store_timings.push(time(
            &format!(
                "request recorded as before: hash, record_sample, hash, record_analysis(verdict); {}",
                compression.name()
            ),
            "two hashes, two transactions",
            |seed| random(seed ^ 1 << 40),
            |bytes| {
                let sha256 = hash(&bytes);
                store.record_sample(&sha256, &bytes).expect("record");
                store.record_analysis(None, &[verdict(&sha256)]).expect("record");
            },
        ));
        store_timings.push(time(
            &format!(
                "request recorded now: VerifiedSample, keep_sample_file, record_verified; {}",
                compression.name()
            ),
            "one hash, one transaction",
            |seed| bytes::Bytes::from(random(seed ^ 1 << 41)),
            |bytes| {
                let sample = VerifiedSample::new(bytes, None).expect("sample");
                store.keep_sample_file(&sample).expect("vault file");
                let sha256 = sample.sha256().to_owned();
                store.record_verified(&sample, &[verdict(&sha256)]).expect("record");
            },
        ));
    }
    // As the server records a request: the sample through the journal (a segment is made ready
    // in the background after the first samples, so a few go first, untimed).
    let store = Store::open(&store_dir.path().join("journal"), StoreSettings::default()).expect("open store");
    assert!(store.start_sample_journal().expect("start the journal"), "the journal is this process's");
    let record_request = |bytes: bytes::Bytes| {
        let sample = VerifiedSample::new(bytes, None).expect("sample");
        store.keep_sample_file(&sample).expect("journal record");
        let sha256 = sample.sha256().to_owned();
        store.record_verified(&sample, &[verdict(&sha256)]).expect("record");
    };
    for seed in 0..4 {
        record_request(bytes::Bytes::from(random(seed ^ 1 << 43)));
        std::thread::sleep(Duration::from_millis(200));
    }
    store_timings.push(time(
        "request recorded through the sample journal: VerifiedSample, keep_sample_file, record_verified; background",
        "one hash, two data flushes, the vault file written after",
        |seed| bytes::Bytes::from(random(seed ^ 1 << 42)),
        record_request,
    ));
    drop(store);
    let store =
        Store::open(&store_dir.path().join("verdicts"), StoreSettings::default()).expect("open store");
    store_timings.push(time(
        "Store::record_verdict alone",
        "one transaction: the WAL fsync",
        |seed| hash(&seed.to_le_bytes()),
        |sha256| {
            store.record_verdict(&verdict(&sha256)).expect("record");
        },
    ));
    for timing in &store_timings {
        timing.print();
    }
}
