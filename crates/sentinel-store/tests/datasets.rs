//! The two datasets of SPEC §1.3 through the public API: VirusTotal results and labelled
//! samples, their precedence rules and their CSV import and export.

use std::fs;

use sentinel_store::{ImportReport, LabelSource, Store, StoreError, StoreSettings, VtReportRow};
use sha2::{Digest, Sha256};

mod backends;
use backends::{Backend, Fixture, each_backend};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(dir, StoreSettings::default()).unwrap()
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
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let hash = sha256(b"labelled");
    assert_eq!(store.label(&hash).unwrap(), None);

    assert!(store.set_label(&hash.to_uppercase(), 1, LabelSource::VirusTotal, None).unwrap());
    assert!(store.set_label(&hash, 0, LabelSource::Import, None).unwrap(), "automatic replaces automatic");
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

    assert!(matches!(store.set_label(&hash, 2, LabelSource::Manual, None), Err(StoreError::InvalidLabel(_))));
    let long_note = "n".repeat(5000);
    assert!(matches!(
        store.set_label(&hash, 1, LabelSource::Manual, Some(&long_note)),
        Err(StoreError::InvalidLabel(_))
    ));
    assert!(matches!(store.set_label("zz", 1, LabelSource::Manual, None), Err(StoreError::InvalidSha256(_))));
    assert_eq!(LabelSource::VirusTotal.to_string(), "virustotal");
}

#[test]
fn labelled_samples_export_and_import_with_their_files() {
    let dir = tempfile::tempdir().unwrap();
    let source = open(&dir.path().join("source"));
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
    let target = open(&dir.path().join("target"));
    let report = target.import_labels_csv(csv.as_slice()).unwrap();
    assert_eq!(report, ImportReport { rows_imported: 2, samples_stored: 1, ..ImportReport::default() });
    assert_eq!(target.read_sample(&sha256(&kept)).unwrap(), Some(kept.clone()));
    let imported = target.label(&sha256(&kept)).unwrap().unwrap();
    assert_eq!((imported.y, imported.source), (1, LabelSource::Import));
    assert!(imported.file_path.unwrap().starts_with(dir.path().join("target")));
    assert_eq!(target.label(&hash_only).unwrap().unwrap().source, LabelSource::Import);
}

#[test]
fn labels_csv_import_checks_files_and_reports_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir.path().join("store"));
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

    assert!(matches!(store.import_labels_csv("sha256,y\n".as_bytes()), Err(StoreError::CsvHeader { .. })));
}

#[test]
fn large_label_imports_span_several_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut csv = String::from("file_path,sha256,y\n");
    for i in 0..1_234u32 {
        csv += &format!(",{},{}\n", sha256(&i.to_le_bytes()), i % 2);
    }
    let report = store.import_labels_csv(csv.as_bytes()).unwrap();
    assert_eq!(report.rows_imported, 1_234);
    assert_eq!(store.labelled_samples().unwrap().len(), 1_234);
    assert_eq!(store.label(&sha256(&7u32.to_le_bytes())).unwrap().unwrap().y, 1);
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
