//! Crash safety with a real process: a child process records samples and verdicts from several
//! threads at once, so that their writes are grouped into shared transactions, and prints a
//! line after each acknowledged write; the test kills it with SIGKILL at an arbitrary point
//! (in the middle of a batch), reopens the store and checks that every acknowledged write is
//! there and the database is consistent. Three rounds on the same directory also exercise
//! recovery from a killed writer. On both backends: on PostgreSQL the child writes the scratch
//! database of the test (and the vault in the data directory) as a replica would.
//!
//! SIGKILL loses what the process had not handed to the kernel; it does not simulate power loss
//! (the page cache survives), which the fsync discipline covers and this test cannot.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use sentinel_store::{NewVerdict, Store, StoreSettings, VerifiedSample};
use sha2::{Digest, Sha256};

mod backends;
use backends::{Fixture, each_backend};

/// Set in the child: the data directory and the first index to write, and on PostgreSQL the
/// database's URL.
const CHILD_DIR_ENV: &str = "SENTINEL_STORE_CRASH_CHILD_DIR";
const CHILD_START_ENV: &str = "SENTINEL_STORE_CRASH_CHILD_START";
const CHILD_POSTGRES_ENV: &str = "SENTINEL_STORE_CRASH_CHILD_POSTGRES";
/// The child stops by itself after this many writes, in case the parent died without killing it.
const CHILD_MAX_WRITES: u64 = 5_000;
/// Writer threads in the child.
const CHILD_THREADS: u64 = 8;
const ROUNDS: u64 = 3;
/// Acknowledgements to wait for before killing the child in a round.
const ACKS_BEFORE_KILL: u64 = 60;

fn sample(index: u64) -> Vec<u8> {
    let mut bytes = format!("sample {index} ").into_bytes();
    bytes.extend((0..20_000u64).map(|i| (i.wrapping_mul(index + 7) % 253) as u8));
    bytes
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The child's side: runs only when re-executed by `acknowledged_writes_survive_sigkill`.
#[test]
fn crash_child() {
    let (Some(dir), Some(start)) = (std::env::var_os(CHILD_DIR_ENV), std::env::var_os(CHILD_START_ENV))
    else {
        return;
    };
    let start: u64 = start.to_str().unwrap().parse().unwrap();
    let store = match std::env::var(CHILD_POSTGRES_ENV) {
        Ok(url) => Store::open_postgres(&url, Path::new(&dir), StoreSettings::default()),
        Err(_) => Store::open(Path::new(&dir), StoreSettings::default()),
    };
    let store = Arc::new(store.unwrap());
    store.start_sample_journal().unwrap();
    let threads: Vec<_> = (0..CHILD_THREADS)
        .map(|thread| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for index in (start + thread..start + CHILD_MAX_WRITES).step_by(CHILD_THREADS as usize) {
                    let bytes = sample(index);
                    let hash = sha256(&bytes);
                    let verdict = NewVerdict {
                        sha256: &hash,
                        analysis: "static",
                        model_version: "m1",
                        score: 0.5,
                        client: "child",
                    };
                    // In turn the three ways of recording a request; the third is the
                    // server's, through the sample journal on SQLite.
                    match index % 3 {
                        0 => {
                            store.record_analysis(Some((&hash, &bytes)), &[verdict]).unwrap();
                        }
                        1 => {
                            store.record_sample(&hash, &bytes).unwrap();
                            store.record_verdict(&verdict).unwrap();
                        }
                        _ => {
                            let sample = VerifiedSample::new(bytes.into(), Some(&hash)).unwrap();
                            store.keep_sample_file(&sample).unwrap();
                            store.record_verified(&sample, &[verdict]).unwrap();
                        }
                    }
                    // println! writes the whole line under stdout's lock and flushes it: the
                    // parent sees the line once written.
                    println!("ack {index}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// Kills the child if the test fails before doing so, so no writer outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    each_backend(|fixture| crash_rounds(&fixture));
}

fn crash_rounds(fixture: &Fixture) {
    let mut acknowledged: Vec<u64> = Vec::new();
    for round in 0..ROUNDS {
        let start = round * CHILD_MAX_WRITES;
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_DIR_ENV, fixture.data_dir())
            .env(CHILD_START_ENV, start.to_string())
            .env_remove(CHILD_POSTGRES_ENV)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(database) = &fixture.database {
            command.env(CHILD_POSTGRES_ENV, database.url());
        }
        let child = command.spawn().unwrap();
        let mut child = KillOnDrop(child);
        let stdout = BufReader::new(child.0.stdout.take().unwrap());
        let mut acks_this_round = 0;
        for line in stdout.lines() {
            let Some(index) = line.unwrap().strip_prefix("ack ").map(|index| index.parse::<u64>().unwrap())
            else {
                continue;
            };
            acknowledged.push(index);
            acks_this_round += 1;
            if acks_this_round == ACKS_BEFORE_KILL {
                // SIGKILL, in the middle of the next write. Lines already in the pipe are
                // read on and count as acknowledged too.
                child.0.kill().unwrap();
            }
        }
        let status = child.0.wait().unwrap();
        #[cfg(unix)]
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9),
            "round {round}: the child was not killed by SIGKILL: {status}"
        );
        assert!(acks_this_round >= ACKS_BEFORE_KILL, "round {round}: child died early: {status}");
    }

    let store = fixture.open();
    for &index in &acknowledged {
        let bytes = sample(index);
        let hash = sha256(&bytes);
        let record = store.sample(&hash).unwrap().unwrap_or_else(|| panic!("sample {index} lost"));
        assert_eq!(record.size, bytes.len() as u64);
        assert_eq!(store.read_sample(&hash).unwrap(), Some(bytes), "sample {index}");
        assert_eq!(store.verdicts(&hash).unwrap().len(), 1, "verdict of sample {index}");
    }

    // Every row that claims a vault file (acknowledged or not) has a readable one. The child's
    // threads write indexes in step, so what one committed unacknowledged is within a few steps
    // of the last acknowledged index; the count of such rows shows none is left out.
    let mut listing_a_file = 0;
    for round in 0..ROUNDS {
        let start = round * CHILD_MAX_WRITES;
        let last =
            acknowledged.iter().copied().filter(|&index| index / CHILD_MAX_WRITES == round).max().unwrap();
        for index in start..=last + 16 * CHILD_THREADS {
            let hash = sha256(&sample(index));
            if store.sample(&hash).unwrap().is_some_and(|record| record.stored_path.is_some()) {
                assert_eq!(store.read_sample(&hash).unwrap(), Some(sample(index)), "sample {index}");
                listing_a_file += 1;
            }
        }
    }
    assert!(listing_a_file >= acknowledged.len());
    let listed = "SELECT count(*) FROM samples WHERE stored_path IS NOT NULL";
    match &fixture.database {
        None => {
            let database = rusqlite::Connection::open(fixture.data_dir().join("sentinel.db")).unwrap();
            let integrity: String =
                database.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
            assert_eq!(integrity, "ok");
            let rows: i64 = database.query_row(listed, [], |row| row.get(0)).unwrap();
            assert_eq!(rows, listing_a_file as i64);
        }
        Some(database) => assert_eq!(database.query_i64(listed).unwrap(), listing_a_file as i64),
    }
}
