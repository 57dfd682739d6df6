//! Behaviour of the store through its public API, on real files in temporary directories, on
//! both backends (`backends::each_backend`), and with several replicas sharing one PostgreSQL
//! database and one vault.

use std::fs;
use std::sync::{Arc, Barrier};

use bytes::Bytes;
use sentinel_store::{
    NewVerdict, NewYaraMatches, Store, StoreError, StoreSettings, VaultCompression, VerifiedSample,
    YaraMatchRecord,
};
use serde_json::json;
use sha2::{Digest, Sha256};

mod backends;
use backends::{Backend, Fixture, each_backend};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A few KiB that look like the start of a Windows executable.
fn fake_executable(seed: u32) -> Vec<u8> {
    let mut bytes = b"MZ\x90\x00\x03\x00\x00\x00".to_vec();
    bytes.extend((0..4096u32).map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8));
    bytes.extend(seed.to_le_bytes());
    bytes
}

/// Vault files compressed before the answer: for tests that inspect a file, which background
/// compression would otherwise replace while they look.
fn inline() -> StoreSettings {
    StoreSettings { vault_compression: VaultCompression::Inline, ..StoreSettings::default() }
}

fn verdict<'a>(sha256: &'a str, analysis: &'a str, score: f64) -> NewVerdict<'a> {
    NewVerdict { sha256, analysis, model_version: "static-2026.11", score, client: "central-7" }
}

#[test]
fn sample_round_trip_and_reopen() {
    each_backend(|fixture| {
        let data_dir = fixture.data_dir();
        let sample = fake_executable(1);
        let hash = sha256(&sample);
        {
            let store = fixture.open();
            assert_eq!(store.sample(&hash).unwrap(), None);
            assert_eq!(store.read_sample(&hash).unwrap(), None);
            // Upper case is accepted and normalised.
            let record = store.record_sample(&hash.to_uppercase(), &sample).unwrap();
            assert_eq!(record.sha256, hash);
            assert_eq!(record.size, sample.len() as u64);
            assert_eq!(record.first_seen, record.last_seen);
            let path = record.stored_path.clone().unwrap();
            assert_eq!(
                path,
                data_dir.join("samples").join(&hash[0..2]).join(&hash[2..4]).join(format!("{hash}.zst"))
            );
            assert_eq!(store.sample(&hash).unwrap(), Some(record));
        }
        assert_eq!(data_dir.join("sentinel.db").is_file(), fixture.backend == Backend::Sqlite);
        let store = fixture.open();
        assert_eq!(store.read_sample(&hash.to_uppercase()).unwrap(), Some(sample));
    });
}

#[test]
fn recording_the_same_sample_twice_writes_the_file_once() {
    each_backend(|fixture| {
        let store = fixture.try_open(inline()).unwrap();
        let sample = fake_executable(2);
        let first = store.record_sample(&sha256(&sample), &sample).unwrap();
        let path = first.stored_path.clone().unwrap();
        let modified = fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));

        let second = store.record_sample(&sha256(&sample), &sample).unwrap();
        assert_eq!(second.first_seen, first.first_seen);
        assert!(second.last_seen >= first.last_seen);
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), modified);
        let incoming: Vec<_> = fs::read_dir(fixture.data_dir().join("samples/incoming")).unwrap().collect();
        assert!(incoming.is_empty(), "temporary files left behind: {incoming:?}");
    });
}

#[cfg(unix)]
#[test]
fn vault_files_are_defanged() {
    use std::os::unix::fs::PermissionsExt;

    each_backend(|fixture| {
        for (seed, compression) in [(3, VaultCompression::Inline), (33, VaultCompression::Background)] {
            let settings = StoreSettings { vault_compression: compression, ..StoreSettings::default() };
            let store = fixture.try_open(settings).unwrap();
            let sample = fake_executable(seed);
            let path = store.record_sample(&sha256(&sample), &sample).unwrap().stored_path.unwrap();

            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
            let contents = fs::read(&path).unwrap();
            assert!(contents.starts_with(b"SENTINEL-SAMPLE\0"));
            assert!(!contents.starts_with(b"MZ"));
            assert!(!contents.windows(sample.len()).any(|window| window == sample), "stored as it is");
            // The format version after the magic: 3 is masked. With background compression the
            // compaction thread may already have replaced the masked file by its zstd form (1).
            let version = u32::from_le_bytes(contents[16..20].try_into().unwrap());
            let expected: &[u32] = match compression {
                VaultCompression::Inline => &[1],
                VaultCompression::Background => &[3, 1],
            };
            assert!(expected.contains(&version), "{compression:?} wrote format version {version}");
            if version == 3 {
                // Masked: not even 16 bytes of the sample in a row (zstd keeps literals as they are).
                assert!(
                    !contents.windows(16).any(|window| sample.windows(16).any(|part| part == window)),
                    "the sample's bytes are in its masked vault file"
                );
            }
            // The data directory itself is the fixture's, made by the test harness.
            let mut private = vec![fixture.data_dir().join("samples")];
            if fixture.backend == Backend::Sqlite {
                private.push(fixture.data_dir().join("sentinel.db"));
            }
            for private in private {
                let mode = fs::metadata(&private).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{} is mode {mode:o}", private.display());
            }
        }
    });
}

#[test]
fn invalid_hashes_and_mismatched_bytes_are_rejected() {
    each_backend(|fixture| {
        let store = fixture.open();
        let sample = fake_executable(4);
        let other = sha256(b"something else");
        for bad in ["", "00", &"g".repeat(64), &format!("{}0", sha256(&sample)), "../../etc/passwd"] {
            assert!(
                matches!(store.record_sample(bad, &sample), Err(StoreError::InvalidSha256(_))),
                "{bad:?}"
            );
            assert!(matches!(store.sample(bad), Err(StoreError::InvalidSha256(_))), "{bad:?}");
            assert!(matches!(store.read_sample(bad), Err(StoreError::InvalidSha256(_))), "{bad:?}");
            assert!(matches!(store.verdicts(bad), Err(StoreError::InvalidSha256(_))), "{bad:?}");
        }
        assert!(matches!(store.record_sample(&other, &sample), Err(StoreError::HashMismatch { .. })));
        assert_eq!(store.sample(&other).unwrap(), None);
        assert!(
            fs::read_dir(fixture.data_dir().join("samples"))
                .unwrap()
                .all(|entry| entry.unwrap().file_name() == "incoming")
        );
    });
}

#[test]
fn verdict_round_trip_and_validation() {
    each_backend(|fixture| {
        let store = fixture.open();
        // A hash-only VirusTotal verdict needs no recorded sample.
        let hash = sha256(b"never uploaded");
        let first = store.record_verdict(&verdict(&hash.to_uppercase(), "virustotal", 0.25)).unwrap();
        let second = store.record_verdict(&verdict(&hash, "combined", 1.0)).unwrap();
        assert!(second > first);

        let verdicts = store.verdicts(&hash).unwrap();
        assert_eq!(verdicts.len(), 2);
        assert_eq!(
            (verdicts[0].id, verdicts[0].analysis.as_str(), verdicts[0].score),
            (first, "virustotal", 0.25)
        );
        assert_eq!(
            (verdicts[1].id, verdicts[1].analysis.as_str(), verdicts[1].score),
            (second, "combined", 1.0)
        );
        assert_eq!(verdicts[0].sha256, hash);
        assert_eq!(verdicts[0].model_version, "static-2026.11");
        assert_eq!(verdicts[0].client, "central-7");
        assert!(verdicts[0].created_at > 1_700_000_000);
        assert!(store.verdicts(&sha256(b"other")).unwrap().is_empty());

        let long = "x".repeat(257);
        let invalid = [
            verdict(&hash, "STATIC", 0.5),
            verdict(&hash, "", 0.5),
            verdict(&hash, "static", -0.1),
            verdict(&hash, "static", 1.5),
            verdict(&hash, "static", f64::NAN),
            NewVerdict { model_version: "", ..verdict(&hash, "static", 0.5) },
            NewVerdict { model_version: &long, ..verdict(&hash, "static", 0.5) },
            NewVerdict { client: &long, ..verdict(&hash, "static", 0.5) },
        ];
        for bad in &invalid {
            assert!(matches!(store.record_verdict(bad), Err(StoreError::InvalidVerdict(_))), "{bad:?}");
        }
        assert_eq!(store.verdicts(&hash).unwrap().len(), 2);

        // The newest first, as many as asked.
        let third = store.record_verdict(&verdict(&hash, "static", 0.5)).unwrap();
        let latest: Vec<i64> =
            store.latest_verdicts(&hash, 2).unwrap().iter().map(|verdict| verdict.id).collect();
        assert_eq!(latest, [third, second]);
        assert!(store.latest_verdicts(&hash, 0).unwrap().is_empty());
        assert_eq!(store.latest_verdicts(&hash, usize::MAX).unwrap().len(), 3);
    });
}

#[test]
fn samples_are_not_kept_when_disabled_or_too_large() {
    each_backend(|fixture| {
        let settings = StoreSettings { max_sample_size: 100, ..StoreSettings::default() };
        let store = fixture.try_open(settings).unwrap();
        let large = fake_executable(5);
        let small = b"MZ tiny".to_vec();
        let record = store.record_sample(&sha256(&large), &large).unwrap();
        assert_eq!((record.size, record.stored_path), (large.len() as u64, None));
        assert_eq!(store.read_sample(&sha256(&large)).unwrap(), None);
        assert!(store.record_sample(&sha256(&small), &small).unwrap().stored_path.is_some());

        let settings = StoreSettings { keep_samples: false, ..StoreSettings::default() };
        let none = Fixture::new(fixture.backend);
        let store = none.try_open(settings).unwrap();
        assert_eq!(store.record_sample(&sha256(&small), &small).unwrap().stored_path, None);
        assert_eq!(store.read_sample(&sha256(&small)).unwrap(), None);
        assert_eq!(fs::read_dir(none.data_dir().join("samples")).unwrap().count(), 1, "only incoming/");
    });
}

#[test]
fn corrupt_vault_files_are_detected_on_read() {
    each_backend(|fixture| {
        let store = fixture.try_open(inline()).unwrap();
        let sample = fake_executable(6);
        let hash = sha256(&sample);
        let path = store.record_sample(&hash, &sample).unwrap().stored_path.unwrap();
        let original = fs::read(&path).unwrap();
        let decoy = fake_executable(7);
        let decoy_file =
            fs::read(store.record_sample(&sha256(&decoy), &decoy).unwrap().stored_path.unwrap()).unwrap();

        let mut flipped_payload = original.clone();
        *flipped_payload.last_mut().unwrap() ^= 0x40;
        let mut flipped_size = original.clone();
        flipped_size[20] ^= 0x01;
        let mut no_magic = original.clone();
        no_magic[0] = b'M';
        let corruptions = [
            ("flipped payload byte", flipped_payload),
            ("wrong size in header", flipped_size),
            ("bad magic", no_magic),
            ("truncated", original[..original.len() / 2].to_vec()),
            ("header only", original[..60].to_vec()),
            ("empty", Vec::new()),
            ("another sample's file", decoy_file),
            ("raw sample", sample.clone()),
        ];
        for (what, contents) in corruptions {
            fs::write(&path, contents).unwrap();
            let result = store.read_sample(&hash);
            assert!(matches!(result, Err(StoreError::CorruptVaultFile { .. })), "{what}: {result:?}");
        }
        fs::remove_file(&path).unwrap();
        assert!(matches!(store.read_sample(&hash), Err(StoreError::MissingVaultFile { .. })));

        // Recording the sample again restores the missing file.
        store.record_sample(&hash, &sample).unwrap();
        assert_eq!(store.read_sample(&hash).unwrap(), Some(sample));
    });
}

#[test]
fn empty_sample_round_trips() {
    each_backend(|fixture| {
        let store = fixture.open();
        let record = store.record_sample(&sha256(b""), b"").unwrap();
        assert_eq!(record.size, 0);
        assert_eq!(store.read_sample(&sha256(b"")).unwrap(), Some(Vec::new()));
    });
}

#[test]
fn concurrent_writers_and_readers_lose_nothing() {
    const THREADS: u32 = 8;
    const PER_THREAD: u32 = 25;
    each_backend(|fixture| {
        let store = Arc::new(fixture.open());
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    for i in 0..PER_THREAD {
                        // Every thread also records the shared samples 0..5, racing on the same files.
                        let seed = if i < 5 { i } else { 1000 * (thread + 1) + i };
                        let sample = fake_executable(seed);
                        let hash = sha256(&sample);
                        store.record_sample(&hash, &sample).unwrap();
                        store.record_verdict(&verdict(&hash, "static", f64::from(i) / 100.0)).unwrap();
                        assert_eq!(store.read_sample(&hash).unwrap(), Some(sample));
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        for seed in 0..5 {
            let hash = sha256(&fake_executable(seed));
            assert_eq!(store.verdicts(&hash).unwrap().len(), THREADS as usize);
        }
        for thread in 0..THREADS {
            for i in 5..PER_THREAD {
                let hash = sha256(&fake_executable(1000 * (thread + 1) + i));
                assert!(store.sample(&hash).unwrap().unwrap().stored_path.is_some());
                assert_eq!(store.verdicts(&hash).unwrap().len(), 1);
            }
        }
        // Closed first: background compression may be writing a file of its own in incoming/.
        drop(store);
        assert!(fs::read_dir(fixture.data_dir().join("samples/incoming")).unwrap().next().is_none());
    });
}

#[test]
fn store_is_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Store>();
}

#[test]
fn readiness_probe_succeeds_on_a_healthy_store() {
    each_backend(|fixture| {
        let store = fixture.open();
        store.is_writable().unwrap();
        assert!(fs::read_dir(fixture.data_dir().join("samples/incoming")).unwrap().next().is_none());
    });
}

#[test]
fn settings_reject_unknown_keys_and_impossible_values() {
    let settings: StoreSettings = serde_json::from_str(r#"{"sample_retention": "90days"}"#).unwrap();
    assert_eq!(
        settings,
        StoreSettings {
            sample_retention: Some(std::time::Duration::from_secs(90 * 86_400)),
            ..StoreSettings::default()
        }
    );
    assert!(settings.keep_samples);
    assert!(serde_json::from_str::<StoreSettings>(r#"{"sample_retention_day": 90}"#).is_err());

    each_backend(|fixture| {
        for bad in [
            StoreSettings { sample_retention: Some(std::time::Duration::ZERO), ..StoreSettings::default() },
            StoreSettings { compression_level: 0, ..StoreSettings::default() },
            StoreSettings { compression_level: 23, ..StoreSettings::default() },
        ] {
            assert!(matches!(fixture.try_open(bad), Err(StoreError::InvalidSettings(_))));
        }
    });
}

#[test]
fn a_foreign_database_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("sentinel.db"), b"not a database at all, just some text").unwrap();
    assert!(Store::open(dir.path(), StoreSettings::default()).is_err());
}

#[test]
fn a_vault_directory_removed_by_hand_is_recreated() {
    each_backend(|fixture| {
        let store = fixture.open();
        let sample = fake_executable(8);
        let path = store.record_sample(&sha256(&sample), &sample).unwrap().stored_path.unwrap();
        fs::remove_dir_all(path.parent().unwrap().parent().unwrap()).unwrap();
        assert!(matches!(store.read_sample(&sha256(&sample)), Err(StoreError::MissingVaultFile { .. })));

        // Another sample in the same leaf directory, then the first one again.
        let neighbour = (9..).map(fake_executable).find(|other| sha256(other)[..4] == sha256(&sample)[..4]);
        let neighbour = neighbour.unwrap();
        store.record_sample(&sha256(&neighbour), &neighbour).unwrap();
        store.record_sample(&sha256(&sample), &sample).unwrap();
        assert_eq!(store.read_sample(&sha256(&sample)).unwrap(), Some(sample));
        assert_eq!(store.read_sample(&sha256(&neighbour)).unwrap(), Some(neighbour));
    });
}

#[test]
fn record_analysis_writes_a_sample_and_its_verdicts_together() {
    each_backend(|fixture| {
        let store = fixture.open();
        let sample = fake_executable(20);
        let hash = sha256(&sample);
        let verdicts = [verdict(&hash, "static", 0.75), verdict(&hash, "combined", 0.5)];
        let (record, ids) = store.record_analysis(Some((&hash, &sample)), &verdicts).unwrap();
        let record = record.unwrap();
        assert_eq!((record.sha256.as_str(), record.size), (hash.as_str(), sample.len() as u64));
        assert_eq!(ids.len(), 2);
        let stored = store.verdicts(&hash).unwrap();
        assert_eq!(stored.iter().map(|verdict| verdict.id).collect::<Vec<_>>(), ids);
        assert_eq!((stored[0].analysis.as_str(), stored[1].score), ("static", 0.5));
        assert_eq!(store.read_sample(&hash).unwrap(), Some(sample.clone()));

        // A hash-only request: verdicts without a sample.
        let hash_only = sha256(b"hash only");
        let (record, ids) = store.record_analysis(None, &[verdict(&hash_only, "virustotal", 0.1)]).unwrap();
        assert_eq!((record, ids.len()), (None, 1));

        // One invalid verdict: nothing of the request is recorded.
        let other = fake_executable(21);
        let other_hash = sha256(&other);
        let invalid = [verdict(&other_hash, "static", 0.2), verdict(&other_hash, "static", 2.0)];
        let result = store.record_analysis(Some((&other_hash, &other)), &invalid);
        assert!(matches!(result, Err(StoreError::InvalidVerdict(_))), "{result:?}");
        assert_eq!(store.sample(&other_hash).unwrap(), None);
        assert!(store.verdicts(&other_hash).unwrap().is_empty());
        let mismatched =
            store.record_analysis(Some((&hash_only, &other)), &[verdict(&hash_only, "static", 0.2)]);
        assert!(matches!(mismatched, Err(StoreError::HashMismatch { .. })));
        assert_eq!(store.verdicts(&hash_only).unwrap().len(), 1);
    });
}

#[test]
fn concurrent_writes_are_grouped_and_none_is_lost() {
    const THREADS: u64 = 64;
    const PER_THREAD: u64 = 6;
    each_backend(|fixture| {
        let store = Arc::new(fixture.open());
        let before = store.write_stats();
        let threads: Vec<_> = (0..THREADS)
            .map(|thread| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..PER_THREAD {
                        let hash = sha256(format!("{thread} {i}").as_bytes());
                        if i % 2 == 0 {
                            ids.push(store.record_verdict(&verdict(&hash, "static", 0.5)).unwrap());
                        } else {
                            let sample = fake_executable((thread * 100 + i) as u32);
                            let sample_hash = sha256(&sample);
                            let verdicts = [verdict(&sample_hash, "static", 0.5)];
                            ids.extend(
                                store.record_analysis(Some((&sample_hash, &sample)), &verdicts).unwrap().1,
                            );
                        }
                    }
                    ids
                })
            })
            .collect();
        let mut ids: Vec<i64> = threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len() as u64, THREADS * PER_THREAD, "every write got its own id");
        for thread in 0..THREADS {
            for i in 0..PER_THREAD {
                let hash = match i % 2 {
                    0 => sha256(format!("{thread} {i}").as_bytes()),
                    _ => sha256(&fake_executable((thread * 100 + i) as u32)),
                };
                assert_eq!(store.verdicts(&hash).unwrap().len(), 1, "thread {thread} write {i}");
            }
        }
        let stats = store.write_stats();
        let (transactions, writes) = (stats.transactions - before.transactions, stats.writes - before.writes);
        match fixture.backend {
            Backend::Sqlite => {
                assert_eq!(writes, THREADS * PER_THREAD);
                assert!(transactions < writes, "{transactions} transactions for {writes} concurrent writes");
            }
            // PostgreSQL groups nothing itself: no statistics to show.
            Backend::Postgres => assert_eq!((transactions, writes), (0, 0)),
        }
    });
}

/// Bytes zstd shrinks to a fraction, as an unpacked executable's.
fn compressible_executable(seed: u8) -> Vec<u8> {
    let mut bytes = b"MZ\x90\x00".to_vec();
    bytes.extend((0..100_000u32).map(|i| if i % 101 == 0 { seed } else { (i % 5) as u8 }));
    bytes
}

#[test]
fn a_verified_sample_is_hashed_once_and_recorded_with_its_verdicts_in_one_transaction() {
    each_backend(|fixture| {
        let store = fixture.open();
        let bytes = fake_executable(40);
        let hash = sha256(&bytes);

        let unclaimed = VerifiedSample::new(Bytes::from(bytes.clone()), None).unwrap();
        assert_eq!(unclaimed.sha256(), hash);
        let claimed = VerifiedSample::new(Bytes::from(bytes.clone()), Some(&hash.to_uppercase())).unwrap();
        assert_eq!(claimed.sha256(), hash);
        assert!(matches!(
            VerifiedSample::new(Bytes::from(bytes.clone()), Some(&sha256(b"other"))),
            Err(StoreError::HashMismatch { .. })
        ));
        assert!(matches!(
            VerifiedSample::new(Bytes::from(bytes.clone()), Some("12")),
            Err(StoreError::InvalidSha256(_))
        ));
        assert!(!format!("{claimed:?}").contains("MZ"), "Debug shows the hash and size, not the bytes");

        // The file first, durably, without a row; then the row with the verdicts.
        store.keep_sample_file(&claimed).unwrap();
        assert_eq!(store.sample(&hash).unwrap(), None);
        let before = store.write_stats();
        let (record, ids) = store
            .record_verified(&claimed, &[verdict(&hash, "static", 0.25), verdict(&hash, "combined", 0.5)])
            .unwrap();
        let after = store.write_stats();
        if fixture.backend == Backend::Sqlite {
            assert_eq!(after.transactions - before.transactions, 1, "row and verdicts in one transaction");
        }
        assert_eq!(ids.len(), 2);
        assert!(record.stored_path.is_some());
        assert_eq!(store.verdicts(&hash).unwrap().len(), 2);
        assert_eq!(store.read_sample(&hash).unwrap(), Some(bytes.clone()));

        // Without keep_sample_file, record_verified writes the file itself; an invalid verdict
        // records nothing, not even the sample.
        let other = VerifiedSample::new(Bytes::from(fake_executable(41)), None).unwrap();
        let other_hash = other.sha256().to_owned();
        assert!(store.record_verified(&other, &[verdict(&other_hash, "static", 2.0)]).is_err());
        assert_eq!(store.sample(&other_hash).unwrap(), None);
        store.record_verified(&other, &[]).unwrap();
        assert_eq!(store.read_sample(&other_hash).unwrap(), Some(fake_executable(41)));
    });
}

#[test]
fn background_compression_replaces_masked_files_and_every_read_succeeds_meanwhile() {
    each_backend(|fixture| {
        let store = fixture.open();
        let samples: Vec<Vec<u8>> = (0..8).map(compressible_executable).collect();
        let paths: Vec<_> = samples
            .iter()
            .map(|sample| store.record_sample(&sha256(sample), sample).unwrap().stored_path.unwrap())
            .collect();
        let masked_len = samples[0].len() as u64 + 60;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            // Reads never fail, whichever form each file is in at the moment.
            for sample in &samples {
                assert_eq!(store.read_sample(&sha256(sample)).unwrap().as_ref(), Some(sample));
            }
            if paths.iter().all(|path| fs::metadata(path).unwrap().len() < masked_len / 4) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the files were never compressed");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        drop(store);
        assert!(fs::read_dir(fixture.data_dir().join("samples/incoming")).unwrap().next().is_none());

        // Reopened inline, the store reads files of both forms.
        let store = fixture.try_open(inline()).unwrap();
        let late = compressible_executable(99);
        store.record_sample(&sha256(&late), &late).unwrap();
        for sample in samples.iter().chain([&late]) {
            assert_eq!(store.read_sample(&sha256(sample)).unwrap().as_ref(), Some(sample));
        }
    });
}

#[test]
fn vault_compression_setting_is_read_from_configuration() {
    let settings: StoreSettings = serde_json::from_str(r#"{"vault_compression": "inline"}"#).unwrap();
    assert_eq!(settings.vault_compression, VaultCompression::Inline);
    assert_eq!(StoreSettings::default().vault_compression, VaultCompression::Background);
    assert!(serde_json::from_str::<StoreSettings>(r#"{"vault_compression": "later"}"#).is_err());
}

const YARA_SHA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

/// Records what `ruleset` found, with no verdict, as a server request does.
fn record_matches(
    store: &Store,
    sha256: &str,
    ruleset: &str,
    matches: &[YaraMatchRecord],
) -> Result<(), StoreError> {
    store.record_request(sha256, None, &[], Some(NewYaraMatches { ruleset, matches })).map(drop)
}

fn found(rule: &str) -> YaraMatchRecord {
    YaraMatchRecord {
        ruleset: String::new(),
        namespace: "markers".to_owned(),
        rule: rule.to_owned(),
        tags: vec!["dropper".to_owned()],
        metadata: json!({"severity": "high", "score": 80}).as_object().unwrap().clone(),
        matched_at: 0,
    }
}

#[test]
fn yara_matches_are_kept_per_rule_set_and_a_rescan_by_the_same_set_replaces_them() {
    each_backend(|fixture| {
        let store = fixture.open();
        record_matches(&store, YARA_SHA, "yara-1", &[found("a"), found("b")]).unwrap();
        record_matches(&store, YARA_SHA, "yara-1", &[found("b")]).unwrap();
        record_matches(&store, YARA_SHA, "yara-2", &[found("c"), found("B")]).unwrap();
        let recorded: Vec<(String, String)> =
            store.yara_matches(YARA_SHA).unwrap().into_iter().map(|m| (m.ruleset, m.rule)).collect();
        // Recorded in the same second: by rule set, then rule names in byte order ("B" before "c").
        let expected = [("yara-1", "b"), ("yara-2", "B"), ("yara-2", "c")];
        assert_eq!(recorded, expected.map(|(set, rule)| (set.to_owned(), rule.to_owned())));
        let one = &store.yara_matches(&YARA_SHA.to_uppercase()).unwrap()[0];
        assert_eq!(one.tags, ["dropper"]);
        assert_eq!(one.metadata["score"], 80);
        assert!(one.matched_at > 1_700_000_000);

        // A restart keeps them.
        drop(store);
        let store = fixture.open();
        assert_eq!(store.yara_matches(YARA_SHA).unwrap().len(), 3);
        assert!(store.yara_matches(&"b".repeat(64)).unwrap().is_empty());
    });
}

#[test]
fn oversized_or_nameless_yara_matches_are_refused() {
    each_backend(|fixture| {
        let store = fixture.open();
        let mut huge = found("a");
        huge.metadata.insert("description".to_owned(), json!("x".repeat(16 * 1024)));
        let nameless = found("");
        for (ruleset, matches) in [("yara-1", vec![huge]), ("yara-1", vec![nameless]), ("", vec![found("a")])]
        {
            let error = record_matches(&store, YARA_SHA, ruleset, &matches).unwrap_err();
            assert!(matches!(error, StoreError::InvalidYaraMatch(_)), "{error}");
        }
        assert!(matches!(
            record_matches(&store, "not a hash", "yara-1", &[]),
            Err(StoreError::InvalidSha256(_))
        ));
        assert!(store.yara_matches(YARA_SHA).unwrap().is_empty());
    });
}

#[test]
fn a_requests_sample_verdicts_and_matches_are_recorded_together_or_not_at_all() {
    each_backend(|fixture| {
        let store = fixture.open();
        let bytes = fake_executable(50);
        let sample = VerifiedSample::new(Bytes::from(bytes.clone()), None).unwrap();
        let hash = sample.sha256().to_owned();
        let verdicts = [verdict(&hash, "static", 0.9)];
        let nameless = [found("")];
        let refused = store.record_request(
            &hash,
            Some(&sample),
            &verdicts,
            Some(NewYaraMatches { ruleset: "yara-1", matches: &nameless }),
        );
        assert!(matches!(refused, Err(StoreError::InvalidYaraMatch(_))));
        assert!(store.verdicts(&hash).unwrap().is_empty(), "a refused match keeps its verdict out too");
        assert_eq!(store.sample(&hash).unwrap(), None, "and its sample");

        // A match on a duplicate rule fails in the database, after the sample's row was written:
        // the transaction takes everything back.
        let twice = [found("a"), found("a")];
        let failed = store.record_request(
            &hash,
            Some(&sample),
            &verdicts,
            Some(NewYaraMatches { ruleset: "yara-1", matches: &twice }),
        );
        assert!(failed.is_err());
        assert_eq!(store.sample(&hash).unwrap(), None);
        assert!(store.verdicts(&hash).unwrap().is_empty());

        let good = [found("a")];
        let ids = store
            .record_request(
                &hash,
                Some(&sample),
                &verdicts,
                Some(NewYaraMatches { ruleset: "yara-1", matches: &good }),
            )
            .unwrap();
        assert_eq!(ids.len(), 1);
        assert_eq!(store.verdicts(&hash).unwrap()[0].id, ids[0]);
        assert_eq!(store.yara_matches(&hash).unwrap()[0].rule, "a");
        assert_eq!(store.read_sample(&hash).unwrap(), Some(bytes));

        // Without a sample: the verdicts and matches only.
        let other = sha256(b"hash only");
        let ids = store
            .record_request(
                &other,
                None,
                &[verdict(&other, "static", 0.1)],
                Some(NewYaraMatches { ruleset: "yara-1", matches: &good }),
            )
            .unwrap();
        assert_eq!(store.verdicts(&other).unwrap()[0].id, ids[0]);
        assert_eq!(store.sample(&other).unwrap(), None);
    });
}

/// Replicas (stores on one database and one vault) record the same samples at once, each with
/// a verdict and what its YARA rules found: every verdict is kept with its own id, each sample has
/// one row and a readable file, and each sample's matches of the rule set are one replica's
/// whole set, never a mix nor a failure.
#[test]
fn replicas_recording_the_same_samples_at_once_keep_every_verdict_and_one_set_of_matches() {
    const REPLICAS: usize = 4;
    const SAMPLES: u32 = 20;
    each_backend(|fixture| {
        let start = Arc::new(Barrier::new(REPLICAS));
        let replicas: Vec<_> = (0..REPLICAS)
            .map(|replica| {
                // Opened before its thread starts: a store that cannot open fails the test rather
                // than leave the other threads waiting at the barrier.
                let (store, start) = (fixture.open(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    let rules =
                        [found(&format!("replica_{replica}_a")), found(&format!("replica_{replica}_b"))];
                    let mut ids = Vec::new();
                    for seed in 0..SAMPLES {
                        let sample =
                            VerifiedSample::new(Bytes::from(fake_executable(100 + seed)), None).unwrap();
                        let hash = sample.sha256().to_owned();
                        let matches = NewYaraMatches { ruleset: "yara-1", matches: &rules };
                        ids.extend(
                            store
                                .record_request(
                                    &hash,
                                    Some(&sample),
                                    &[verdict(&hash, "static", 0.5)],
                                    Some(matches),
                                )
                                .unwrap(),
                        );
                        // A request on the hash alone: no sample's row to serialise it.
                        let matches = NewYaraMatches { ruleset: "yara-2", matches: &rules };
                        store.record_request(&hash, None, &[], Some(matches)).unwrap();
                    }
                    ids
                })
            })
            .collect();
        let mut ids: Vec<i64> = replicas.into_iter().flat_map(|replica| replica.join().unwrap()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), REPLICAS * SAMPLES as usize, "every verdict got its own id");

        let store = fixture.open();
        for seed in 0..SAMPLES {
            let bytes = fake_executable(100 + seed);
            let hash = sha256(&bytes);
            assert_eq!(store.verdicts(&hash).unwrap().len(), REPLICAS);
            let record = store.sample(&hash).unwrap().unwrap();
            assert!(record.first_seen <= record.last_seen);
            assert_eq!(store.read_sample(&hash).unwrap(), Some(bytes));
            let matches = store.yara_matches(&hash).unwrap();
            for ruleset in ["yara-1", "yara-2"] {
                let rules: Vec<&str> =
                    matches.iter().filter(|m| m.ruleset == ruleset).map(|m| m.rule.as_str()).collect();
                assert_eq!(rules.len(), 2, "{ruleset}: {rules:?}");
                let replica = rules[0].trim_end_matches("_a");
                assert_eq!(
                    rules,
                    [format!("{replica}_a"), format!("{replica}_b")],
                    "{ruleset}: one replica's set"
                );
            }
        }
    });
}
