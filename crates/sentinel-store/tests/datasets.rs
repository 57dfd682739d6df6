//! The two datasets of SPEC §1.3 through the public API: VirusTotal results and labelled
//! samples, their precedence rules and their CSV import and export; and the safelist and
//! badlist. On both backends, and with replicas writing one PostgreSQL database at once.

use std::fs;
use std::sync::{Arc, Barrier};

use sentinel_store::{
    HashList, ImportReport, LabelSource, ListEntry, ListQuery, NewListEntry, Store, StoreError, VtReportRow,
};
use sha2::{Digest, Sha256};

mod backends;
use backends::{Backend, Fixture, each_backend};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn report(seed: &str, fetched_at: i64, malicious: u32) -> VtReportRow {
    VtReportRow {
        sha256: sha256(seed.as_bytes()),
        last_analysis_date: Some(fetched_at - 100),
        fetched_at,
        malicious,
        suspicious: 1,
        undetected: 60,
        harmless: 0,
        // Commas, quotes and a newline: the CSV must quote them.
        report_json: format!(
            r#"{{"engines":[{{"engine":"A, \"quoted\"","result":"Trojan\n{seed}"}}],"malicious":{malicious}}}"#
        ),
    }
}

#[test]
fn vt_reports_round_trip_and_the_latest_fetch_wins() {
    each_backend(|fixture| vt_reports_round_trip(&fixture.open()));
}

fn vt_reports_round_trip(store: &Store) {
    let first = report("a", 1_000, 3);
    assert_eq!(store.vt_report(&first.sha256).unwrap(), None);
    assert!(
        store.put_vt_report(&VtReportRow { sha256: first.sha256.to_uppercase(), ..first.clone() }).unwrap()
    );
    assert_eq!(store.vt_report(&first.sha256.to_uppercase()).unwrap(), Some(first.clone()));

    let older = VtReportRow { fetched_at: 900, malicious: 50, ..first.clone() };
    assert!(!store.put_vt_report(&older).unwrap());
    assert_eq!(store.vt_report(&first.sha256).unwrap(), Some(first.clone()));

    let newer = VtReportRow { fetched_at: 2_000, last_analysis_date: None, malicious: 9, ..first.clone() };
    assert!(store.put_vt_report(&newer).unwrap());
    assert_eq!(store.vt_report(&first.sha256).unwrap(), Some(newer.clone()));
    let same_second = VtReportRow { malicious: 10, ..newer.clone() };
    assert!(store.put_vt_report(&same_second).unwrap());
    assert_eq!(store.vt_report(&first.sha256).unwrap().unwrap().malicious, 10);

    for bad in [
        VtReportRow { report_json: "{not json".into(), ..first.clone() },
        VtReportRow { report_json: String::new(), ..first.clone() },
        VtReportRow { report_json: format!("\"{}\"", "x".repeat(5 * 1024 * 1024)), ..first.clone() },
    ] {
        assert!(matches!(store.put_vt_report(&bad), Err(StoreError::InvalidVtReport(_))));
    }
    let bad_hash = VtReportRow { sha256: "abc".into(), ..first.clone() };
    assert!(matches!(store.put_vt_report(&bad_hash), Err(StoreError::InvalidSha256(_))));
    assert!(matches!(store.vt_report("abc"), Err(StoreError::InvalidSha256(_))));
}

#[test]
fn vt_reports_csv_export_imports_into_another_store() {
    // Every pair of backends: a dataset moves between SQLite and PostgreSQL by its CSV.
    for source in [Backend::Sqlite, Backend::Postgres] {
        for target in [Backend::Sqlite, Backend::Postgres] {
            eprintln!("--- from {source:?} to {target:?}");
            vt_reports_csv_round_trip(&Fixture::new(source).open(), &Fixture::new(target).open());
        }
    }
}

fn vt_reports_csv_round_trip(source: &Store, target: &Store) {
    let reports: Vec<_> =
        ["a", "b", "c"].iter().enumerate().map(|(i, seed)| report(seed, 1_000 + i as i64, 2)).collect();
    for report in &reports {
        source.put_vt_report(report).unwrap();
    }
    let no_date = VtReportRow { last_analysis_date: None, ..report("d", 5, 0) };
    source.put_vt_report(&no_date).unwrap();

    let mut csv = Vec::new();
    assert_eq!(source.export_vt_reports_csv(&mut csv).unwrap(), 4);
    let text = String::from_utf8(csv.clone()).unwrap();
    assert!(
        text.starts_with(
            "sha256,last_analysis_date,fetched_at,malicious,suspicious,undetected,harmless,report_json\n"
        ),
        "{text}"
    );

    // The target already has a later report on "a": it is kept.
    let later_a = VtReportRow { fetched_at: 10_000, ..reports[0].clone() };
    target.put_vt_report(&later_a).unwrap();
    let mut given = Vec::new();
    let imported = target
        .import_vt_reports_csv(csv.as_slice(), |row| {
            given.push(row.sha256.clone());
            Ok(())
        })
        .unwrap();
    assert_eq!(imported, ImportReport { rows_imported: 3, rows_unchanged: 1, ..ImportReport::default() });
    // Only the rows stored are given to the caller (to label their samples), not the one kept out.
    given.sort();
    let mut expected: Vec<String> =
        reports[1..].iter().chain([&no_date]).map(|row| row.sha256.clone()).collect();
    expected.sort();
    assert_eq!(given, expected);
    assert_eq!(target.vt_report(&reports[0].sha256).unwrap(), Some(later_a));
    for expected in reports[1..].iter().chain([&no_date]) {
        assert_eq!(target.vt_report(&expected.sha256).unwrap().as_ref(), Some(expected));
    }
}

#[test]
fn vt_reports_csv_import_skips_bad_rows_and_says_why() {
    each_backend(|fixture| vt_reports_csv_import_with_bad_rows(&fixture.open()));
}

fn vt_reports_csv_import_with_bad_rows(store: &Store) {
    let good = sha256(b"good");
    let mut csv =
        b"sha256,last_analysis_date,fetched_at,malicious,suspicious,undetected,harmless,report_json\n"
            .to_vec();
    csv.extend(format!("{good},,100,1,0,50,2,{{}}\n").as_bytes()); // line 2: good
    csv.extend(b"nothex,,100,1,0,50,2,{}\n"); // 3
    csv.extend(format!("{good},,100,-1,0,50,2,{{}}\n").as_bytes()); // 4: negative count
    csv.extend(format!("{good},,soon,1,0,50,2,{{}}\n").as_bytes()); // 5
    csv.extend(format!("{good},,100,1,0,50,2,not json\n").as_bytes()); // 6
    csv.extend(format!("{good},,100,1\n").as_bytes()); // 7: too few fields
    csv.extend(format!("{good},,100,1,0,50,2,\"").as_bytes()); // 8: not UTF-8
    csv.extend(b"\xff\"\n");
    csv.extend(format!("{},7,200,0,0,70,3,[]\n", sha256(b"second")).as_bytes()); // 9: good
    let report = store.import_vt_reports_csv(csv.as_slice(), |_| Ok(())).unwrap();
    assert_eq!((report.rows_imported, report.rows_unchanged, report.rows_rejected), (2, 0, 6));
    let lines: Vec<u64> = report.errors.iter().map(|error| error.line).collect();
    assert_eq!(lines, [3, 4, 5, 6, 7, 8]);
    assert!(report.errors[0].reason.contains("SHA-256"), "{:?}", report.errors[0]);
    assert!(report.errors[1].reason.contains("malicious"), "{:?}", report.errors[1]);
    assert!(report.errors[4].reason.contains("8"), "{:?}", report.errors[4]);
    assert_eq!(store.vt_report(&sha256(b"second")).unwrap().unwrap().last_analysis_date, Some(7));

    let wrong_header = b"sha256,fetched_at\nabc,1\n";
    assert!(matches!(
        store.import_vt_reports_csv(wrong_header.as_slice(), |_| Ok(())),
        Err(StoreError::CsvHeader { .. })
    ));
}

#[test]
fn manual_labels_take_precedence_over_automatic_ones() {
    each_backend(|fixture| {
        let store = fixture.open();
        let hash = sha256(b"labelled");
        assert_eq!(store.label(&hash).unwrap(), None);

        assert!(store.set_label(&hash.to_uppercase(), 1, LabelSource::VirusTotal, None).unwrap());
        assert!(
            store.set_label(&hash, 0, LabelSource::Import, None).unwrap(),
            "automatic replaces automatic"
        );
        assert_eq!(store.label(&hash).unwrap().unwrap().y, 0);
        assert!(store.set_label(&hash, 1, LabelSource::Manual, Some("analyst: dropper")).unwrap());
        assert!(!store.set_label(&hash, 0, LabelSource::VirusTotal, None).unwrap());
        assert!(!store.set_label(&hash, 0, LabelSource::Import, Some("ignored")).unwrap());
        let label = store.label(&hash).unwrap().unwrap();
        assert_eq!(
            (label.y, label.source, label.note.as_deref()),
            (1, LabelSource::Manual, Some("analyst: dropper"))
        );
        assert_eq!(label.sha256, hash);
        assert!(label.labelled_at > 1_700_000_000);
        assert_eq!(label.file_path, None, "never recorded, so no vault file");
        assert!(store.set_label(&hash, 0, LabelSource::Manual, None).unwrap(), "manual corrects manual");
        assert_eq!(store.label(&hash).unwrap().unwrap().y, 0);

        assert!(matches!(
            store.set_label(&hash, 2, LabelSource::Manual, None),
            Err(StoreError::InvalidLabel(_))
        ));
        let long_note = "n".repeat(5000);
        assert!(matches!(
            store.set_label(&hash, 1, LabelSource::Manual, Some(&long_note)),
            Err(StoreError::InvalidLabel(_))
        ));
        assert!(matches!(
            store.set_label("zz", 1, LabelSource::Manual, None),
            Err(StoreError::InvalidSha256(_))
        ));
        assert_eq!(LabelSource::VirusTotal.to_string(), "virustotal");
    });
}

#[test]
fn labelled_samples_export_and_import_with_their_files() {
    // Every pair of backends: a dataset moves between SQLite and PostgreSQL by its CSV.
    for from in [Backend::Sqlite, Backend::Postgres] {
        for to in [Backend::Sqlite, Backend::Postgres] {
            eprintln!("--- from {from:?} to {to:?}");
            labelled_samples_round_trip(&Fixture::new(from), &Fixture::new(to));
        }
    }
}

fn labelled_samples_round_trip(from: &Fixture, to: &Fixture) {
    let source = from.open();
    let kept = b"MZ kept sample".to_vec();
    let hash_only = sha256(b"never uploaded");
    source.record_sample(&sha256(&kept), &kept).unwrap();
    source.set_label(&sha256(&kept), 1, LabelSource::VirusTotal, None).unwrap();
    source.set_label(&hash_only, 0, LabelSource::Manual, None).unwrap();

    let samples = source.labelled_samples().unwrap();
    assert_eq!(samples.len(), 2);
    let kept_row = samples.iter().find(|sample| sample.sha256 == sha256(&kept)).unwrap();
    let vault_path = source.sample(&sha256(&kept)).unwrap().unwrap().stored_path.unwrap();
    assert_eq!(kept_row.file_path.as_ref(), Some(&vault_path));
    assert_eq!(samples.iter().find(|sample| sample.sha256 == hash_only).unwrap().file_path, None);

    let mut csv = Vec::new();
    assert_eq!(source.export_labels_csv(&mut csv).unwrap(), 2);
    let text = String::from_utf8(csv.clone()).unwrap();
    assert!(text.starts_with("file_path,sha256,y\n"), "{text}");
    assert!(text.contains(&format!("{},{},1\n", vault_path.display(), sha256(&kept))), "{text}");
    assert!(text.contains(&format!(",{hash_only},0\n")), "{text}");

    // The exported vault file is read back through its defanged format into the new vault.
    let target = to.open();
    let report = target.import_labels_csv(csv.as_slice()).unwrap();
    assert_eq!(report, ImportReport { rows_imported: 2, samples_stored: 1, ..ImportReport::default() });
    assert_eq!(target.read_sample(&sha256(&kept)).unwrap(), Some(kept.clone()));
    let imported = target.label(&sha256(&kept)).unwrap().unwrap();
    assert_eq!((imported.y, imported.source), (1, LabelSource::Import));
    assert!(imported.file_path.unwrap().starts_with(to.data_dir()));
    assert_eq!(target.label(&hash_only).unwrap().unwrap().source, LabelSource::Import);
}

#[test]
fn labels_csv_import_checks_files_and_reports_bad_rows() {
    each_backend(|fixture| {
        let dir = tempfile::tempdir().unwrap();
        let store = fixture.open();
        let raw = b"MZ raw sample on disk".to_vec();
        let raw_path = dir.path().join("raw.exe");
        fs::write(&raw_path, &raw).unwrap();
        let manual = sha256(b"manual");
        store.set_label(&manual, 1, LabelSource::Manual, None).unwrap();
        let missing = sha256(b"missing file");

        let mut csv = String::from("file_path,sha256,y\n");
        csv += &format!("{},{},1\n", raw_path.display(), sha256(&raw)); // 2: file stored
        csv += &format!("{},{missing},0\n", dir.path().join("gone.exe").display()); // 3: label only
        csv += &format!("{},{},1\n", raw_path.display(), sha256(b"other")); // 4: hash mismatch
        csv += &format!(",{manual},0\n"); // 5: manual label kept
        csv += &format!(",{missing},2\n"); // 6: bad y
        csv += ",123,1\n"; // 7: bad hash
        csv += &format!("{missing},0\n"); // 8: two fields
        csv += &format!(",{},0.5\n", sha256(b"probability")); // 9: y is not 0/1
        let report = store.import_labels_csv(csv.as_bytes()).unwrap();
        assert_eq!(
            (report.rows_imported, report.rows_unchanged, report.rows_rejected, report.samples_stored),
            (2, 1, 5, 1),
            "{report:?}"
        );
        let lines: Vec<u64> = report.errors.iter().map(|error| error.line).collect();
        assert_eq!(lines, [4, 6, 7, 8, 9]);
        assert!(report.errors[0].reason.contains("hash"), "{:?}", report.errors[0]);
        assert_eq!(store.read_sample(&sha256(&raw)).unwrap(), Some(raw));
        assert_eq!(store.label(&missing).unwrap().unwrap().file_path, None);
        assert_eq!(store.label(&manual).unwrap().unwrap().y, 1);
        assert_eq!(store.label(&sha256(b"other")).unwrap(), None);

        assert!(matches!(
            store.import_labels_csv("sha256,y\n".as_bytes()),
            Err(StoreError::CsvHeader { .. })
        ));
    });
}

#[test]
fn large_label_imports_span_several_transactions() {
    each_backend(|fixture| {
        let store = fixture.open();
        let mut csv = String::from("file_path,sha256,y\n");
        for i in 0..1_234u32 {
            csv += &format!(",{},{}\n", sha256(&i.to_le_bytes()), i % 2);
        }
        // A later row of a hash wins over an earlier one, in the same batch as in another.
        csv += &format!(",{},0\n,{},1\n", sha256(b"twice"), sha256(b"twice"));
        let report = store.import_labels_csv(csv.as_bytes()).unwrap();
        assert_eq!(report.rows_imported, 1_236);
        let samples = store.labelled_samples().unwrap();
        assert_eq!(samples.len(), 1_235);
        assert!(samples.windows(2).all(|pair| pair[0].sha256 < pair[1].sha256), "in hash order, each once");
        assert_eq!(store.label(&sha256(&7u32.to_le_bytes())).unwrap().unwrap().y, 1);
        assert_eq!(store.label(&sha256(b"twice")).unwrap().unwrap().y, 1);
        // The export reads the dataset a page at a time: all of it, in hash order.
        let mut exported = Vec::new();
        assert_eq!(store.export_labels_csv(&mut exported).unwrap(), 1_235);
        let mut reader = csv::Reader::from_reader(exported.as_slice());
        let hashes: Vec<String> = reader.records().map(|record| record.unwrap()[1].to_owned()).collect();
        assert_eq!(hashes, samples.iter().map(|sample| sample.sha256.clone()).collect::<Vec<_>>());
    });
}

#[test]
fn vt_reports_export_reads_a_dataset_larger_than_a_page() {
    each_backend(|fixture| {
        let store = fixture.open();
        let count = 600;
        for i in 0..count {
            store.put_vt_report(&report(&format!("report {i}"), 1_000, 1)).unwrap();
        }
        let mut csv = Vec::new();
        assert_eq!(store.export_vt_reports_csv(&mut csv).unwrap(), count);
        let mut reader = csv::Reader::from_reader(csv.as_slice());
        let hashes: Vec<String> = reader.records().map(|record| record.unwrap()[0].to_owned()).collect();
        assert_eq!(hashes.len() as u64, count);
        assert!(hashes.windows(2).all(|pair| pair[0] < pair[1]), "rows are in hash order, each once");
    });
}

/// Replicas label the same samples at once, automatically (VirusTotal, imports) and by hand: a
/// manual label, once written, is never replaced by an automatic one, whatever the interleaving.
#[test]
fn manual_labels_keep_precedence_while_replicas_label_at_once() {
    const REPLICAS: usize = 4;
    const HASHES: usize = 40;
    each_backend(|fixture| {
        let hashes: Arc<Vec<String>> =
            Arc::new((0..HASHES).map(|i| sha256(format!("raced {i}").as_bytes())).collect());
        let start = Arc::new(Barrier::new(REPLICAS + 1));
        let automatic: Vec<_> = (0..REPLICAS)
            .map(|replica| {
                // Opened before its thread starts: a store that cannot open fails the test rather
                // than leave the other threads waiting at the barrier.
                let (store, hashes, start) = (fixture.open(), Arc::clone(&hashes), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    for round in 0..3 {
                        for hash in hashes.iter() {
                            store.set_label(hash, 1, LabelSource::VirusTotal, None).unwrap();
                        }
                        // Half the replicas import the hashes too, in opposite orders, so their
                        // batches lock the same rows at once.
                        if replica % 2 == 1 {
                            let mut rows: Vec<&String> = hashes.iter().collect();
                            if (replica + round) % 4 == 1 {
                                rows.reverse();
                            }
                            let csv: String = std::iter::once("file_path,sha256,y\n".to_owned())
                                .chain(rows.iter().map(|hash| format!(",{hash},1\n")))
                                .collect();
                            let report = store.import_labels_csv(csv.as_bytes()).unwrap();
                            assert_eq!(report.rows_rejected, 0, "{report}");
                        }
                    }
                })
            })
            .collect();
        let manual = {
            let (store, hashes, start) = (fixture.open(), Arc::clone(&hashes), Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                for hash in hashes.iter() {
                    assert!(store.set_label(hash, 0, LabelSource::Manual, Some("analyst")).unwrap());
                }
            })
        };
        manual.join().unwrap();
        for replica in automatic {
            replica.join().unwrap();
        }
        let store = fixture.open();
        for hash in hashes.iter() {
            let label = store.label(hash).unwrap().unwrap();
            assert_eq!(
                (label.y, label.source, label.note.as_deref()),
                (0, LabelSource::Manual, Some("analyst"))
            );
        }
    });
}

const LISTED: &str = "9F2981A7A1B3E1C1C2D1E0F0A0B0C0D0E0F0A1B2C3D4E5F60718293A4B5C6D7E";

fn list_entry<'a>(list: HashList, reason: &'a str) -> NewListEntry<'a> {
    NewListEntry { sha256: LISTED, list, reason, source: "analyst", added_by: "cli:test" }
}

#[test]
fn a_hash_is_on_one_list_at_most_and_moves_between_them() {
    each_backend(|fixture| {
        let store = fixture.open();
        assert_eq!(store.list_entry(LISTED).unwrap(), None);
        assert_eq!(store.add_list_entry(&list_entry(HashList::Safe, "signed installer")).unwrap(), None);
        let listed = store.list_entry(&LISTED.to_lowercase()).unwrap().unwrap();
        assert_eq!((listed.list, listed.reason.as_str()), (HashList::Safe, "signed installer"));
        assert_eq!(listed.sha256, LISTED.to_lowercase());
        assert!(listed.added_at > 1_700_000_000);

        let previous = store.add_list_entry(&list_entry(HashList::Bad, "ransomware, ticket 42")).unwrap();
        assert_eq!(previous, Some(listed));
        assert_eq!(store.list_entry(LISTED).unwrap().unwrap().list, HashList::Bad);
        // Removing it from the list it is not on changes nothing.
        assert_eq!(store.remove_list_entry(HashList::Safe, LISTED).unwrap(), None);
        let removed = store.remove_list_entry(HashList::Bad, LISTED).unwrap().unwrap();
        assert_eq!(removed.reason, "ransomware, ticket 42");
        assert_eq!(store.list_entry(LISTED).unwrap(), None);
        assert_eq!(store.remove_list_entry(HashList::Bad, LISTED).unwrap(), None);
    });
}

#[test]
fn list_entries_need_a_reason_and_a_source_without_control_characters() {
    each_backend(|fixture| {
        let store = fixture.open();
        for bad in ["", "  ", "line\nbreak", &"x".repeat(1025)] {
            let error = store.add_list_entry(&list_entry(HashList::Bad, bad)).unwrap_err();
            assert!(matches!(error, StoreError::InvalidListEntry(_)), "{bad:?}: {error}");
        }
        let bad_hash = NewListEntry { sha256: "abc", ..list_entry(HashList::Bad, "why") };
        assert!(matches!(store.add_list_entry(&bad_hash), Err(StoreError::InvalidSha256(_))));
        assert_eq!(store.list_entry(LISTED).unwrap(), None);
    });
}

#[test]
fn lists_round_trip_through_csv_and_bad_rows_are_reported() {
    for from in [Backend::Sqlite, Backend::Postgres] {
        for to in [Backend::Sqlite, Backend::Postgres] {
            eprintln!("--- from {from:?} to {to:?}");
            lists_csv_round_trip(&Fixture::new(from).open(), &Fixture::new(to).open());
        }
    }
}

fn lists_csv_round_trip(store: &Store, copy: &Store) {
    let csv = format!(
        "sha256,reason,source\n{},\"known good, vendor\",\n{LISTED},test fixture,feed-1\nnot-a-hash,x,y\n{},,z\n",
        "a".repeat(64),
        "b".repeat(64)
    );
    let report = store.import_list_csv(HashList::Safe, csv.as_bytes(), "cli:test").unwrap();
    assert_eq!((report.rows_imported, report.rows_rejected), (2, 2), "{report}");
    assert_eq!(report.errors.iter().map(|error| error.line).collect::<Vec<_>>(), [4, 5]);
    let first = store.list_entry(&"a".repeat(64)).unwrap().unwrap();
    assert_eq!((first.source.as_str(), first.added_by.as_str()), ("import", "cli:test"));

    let mut exported = Vec::new();
    assert_eq!(store.export_list_csv(HashList::Safe, &mut exported).unwrap(), 2);
    copy.import_list_csv(HashList::Safe, exported.as_slice(), "cli:other").unwrap();
    let query = ListQuery { list: HashList::Safe, after: None, limit: None };
    let strip = |entries: Vec<ListEntry>| {
        entries.into_iter().map(|entry| (entry.sha256, entry.reason, entry.source)).collect::<Vec<_>>()
    };
    assert_eq!(strip(copy.list_entries(&query).unwrap()), strip(store.list_entries(&query).unwrap()));
    assert!(store.list_entries(&ListQuery { list: HashList::Bad, ..query.clone() }).unwrap().is_empty());

    // Ordered by hash: "9f29…" comes before "aaaa…".
    let first_page = ListQuery { list: HashList::Safe, after: None, limit: Some(1) };
    assert_eq!(strip(store.list_entries(&first_page).unwrap())[0].0, LISTED.to_lowercase());
    let next_page = ListQuery { after: Some(LISTED.to_owned()), ..first_page };
    assert_eq!(strip(store.list_entries(&next_page).unwrap())[0].0, "a".repeat(64));
    assert!(store.import_list_csv(HashList::Bad, "sha256,why\n".as_bytes(), "cli:test").is_err());
}

#[test]
fn a_list_larger_than_an_export_page_is_exported_whole_and_in_order() {
    each_backend(|fixture| {
        let store = fixture.open();
        let count = 1_100;
        let mut csv = String::from("sha256,reason,source\n");
        for i in 0..count {
            csv += &format!("{},bulk {i},feed\n", sha256(format!("listed {i}").as_bytes()));
        }
        assert_eq!(
            store.import_list_csv(HashList::Bad, csv.as_bytes(), "cli:test").unwrap().rows_imported,
            count
        );
        let mut exported = Vec::new();
        assert_eq!(store.export_list_csv(HashList::Bad, &mut exported).unwrap(), count);
        let mut reader = csv::Reader::from_reader(exported.as_slice());
        let hashes: Vec<String> = reader.records().map(|record| record.unwrap()[0].to_owned()).collect();
        assert_eq!(hashes.len() as u64, count);
        assert!(hashes.windows(2).all(|pair| pair[0] < pair[1]), "rows are in hash order, each once");
    });
}

/// Replicas put one hash on a list at once, each with its own reason: every add is told about
/// the entry it replaced, and these answers chain — one add found no entry, every other one
/// replaced exactly one other add's entry, and the last add's entry is the one listed.
#[test]
fn replicas_adding_one_hash_at_once_each_replace_exactly_one_entry() {
    const REPLICAS: usize = 4;
    const ADDS: usize = 15;
    each_backend(|fixture| {
        let start = Arc::new(Barrier::new(REPLICAS));
        let replicas: Vec<_> = (0..REPLICAS)
            .map(|replica| {
                // Opened before its thread starts: a store that cannot open fails the test rather
                // than leave the other threads waiting at the barrier.
                let (store, start) = (fixture.open(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    (0..ADDS)
                        .map(|add| {
                            let reason = format!("replica {replica} add {add}");
                            let list = if add % 2 == 0 { HashList::Bad } else { HashList::Safe };
                            let replaced = store.add_list_entry(&list_entry(list, &reason)).unwrap();
                            (reason, replaced.map(|entry| entry.reason))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let answers: Vec<(String, Option<String>)> =
            replicas.into_iter().flat_map(|replica| replica.join().unwrap()).collect();
        let store = fixture.open();
        let last = store.list_entry(LISTED).unwrap().unwrap().reason;
        let mut replaced: Vec<String> = answers.iter().filter_map(|(_, replaced)| replaced.clone()).collect();
        assert_eq!(answers.len() - replaced.len(), 1, "one add found the hash unlisted");
        replaced.push(last);
        replaced.sort();
        let mut added: Vec<String> = answers.into_iter().map(|(reason, _)| reason).collect();
        added.sort();
        assert_eq!(replaced, added, "each entry was replaced once, except the one listed");
    });
}

/// Two replicas import the same labels (and list entries) at once in opposite orders, again and again: each
/// transaction writes its rows in one order (the hashes'), so neither deadlocks the other, and
/// the later row of each hash wins within each import.
#[test]
fn replicas_importing_the_same_labels_in_opposite_orders_both_succeed() {
    const ROWS: usize = 400;
    const ROUNDS: usize = 4;
    each_backend(|fixture| {
        let start = Arc::new(Barrier::new(2));
        let importers: Vec<_> = [false, true]
            .into_iter()
            .map(|reversed| {
                // Opened before its thread starts: a store that cannot open fails the test rather
                // than leave the other threads waiting at the barrier.
                let (store, start) = (fixture.open(), Arc::clone(&start));
                std::thread::spawn(move || {
                    let mut hashes: Vec<String> =
                        (0..ROWS).map(|i| sha256(format!("imported {i}").as_bytes())).collect();
                    if reversed {
                        hashes.reverse();
                    }
                    let csv: String = std::iter::once("file_path,sha256,y\n".to_owned())
                        .chain(hashes.iter().map(|hash| format!(",{hash},0\n,{hash},1\n")))
                        .collect();
                    let list_csv: String = std::iter::once("sha256,reason,source\n".to_owned())
                        .chain(hashes.iter().map(|hash| format!("{hash},bulk,feed\n")))
                        .collect();
                    // Every round's outcome is kept, not unwrapped here: a failing thread must still
                    // meet the other at each barrier.
                    let mut imported = Vec::new();
                    for _ in 0..ROUNDS {
                        start.wait();
                        imported
                            .push(store.import_labels_csv(csv.as_bytes()).map(|report| report.rows_imported));
                        start.wait();
                        let list = store.import_list_csv(HashList::Bad, list_csv.as_bytes(), "cli:test");
                        imported.push(list.map(|report| 2 * report.rows_imported));
                    }
                    imported
                })
            })
            .collect();
        for importer in importers {
            for imported in importer.join().unwrap() {
                assert_eq!(imported.unwrap(), 2 * ROWS as u64);
            }
        }
        let store = fixture.open();
        let listed =
            store.list_entries(&ListQuery { list: HashList::Bad, after: None, limit: None }).unwrap();
        assert_eq!(listed.len(), ROWS);
        let samples = store.labelled_samples().unwrap();
        assert_eq!(samples.len(), ROWS);
        assert!(samples.iter().all(|sample| sample.y == 1 && sample.source == LabelSource::Import));
    });
}
