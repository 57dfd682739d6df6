//! `sentinel bench`: the anomaly bench reads ADBench files in the element types
//! users have (int32 labels, as ADBench ships), reports and skips a file it
//! cannot read and runs the others; the server bench's help shows its defaults
//! in the form the option accepts, and its compare run reports each server's stages.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use ndarray::{Array1, Array2};
use ndarray_npy::NpzWriter;

fn sentinel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sentinel"))
}

/// 300 normal rows near the origin and 15 anomalies far from it, X as float32
/// and y as int32.
fn write_adbench_file(path: &Path) {
    let rows = 315;
    let x = Array2::from_shape_fn((rows, 3), |(row, col)| {
        let spread = ((row * 7 + col * 13) % 17) as f32 / 17.0;
        if row < 300 { spread } else { 20.0 + spread }
    });
    let y = Array1::from_shape_fn(rows, |row| i32::from(row >= 300));
    let mut npz = NpzWriter::new_compressed(File::create(path).unwrap());
    npz.add_array("X", &x).unwrap();
    npz.add_array("y", &y).unwrap();
    npz.finish().unwrap();
}

#[test]
fn an_unreadable_file_is_reported_and_the_others_still_run() {
    let dir = tempfile::tempdir().unwrap();
    write_adbench_file(&dir.path().join("1_good.npz"));
    std::fs::write(dir.path().join("0_broken.npz"), b"PK\x03\x04 not really a zip archive").unwrap();
    let output = sentinel()
        .args([
            "bench",
            "anomaly",
            "--models",
            "iforest",
            "--seeds",
            "0",
            "--threads",
            "1",
            "--no-peer",
            "--json",
        ])
        .arg("--data")
        .arg(dir.path())
        .arg("--nsl-kdd")
        .arg(dir.path().join("no-nsl-kdd"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("skipped") && stderr.contains("0_broken.npz"), "{stderr}");
    let records: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["dataset"], "1_good");
    // The anomalies are far from every normal row: the forest finds them.
    assert!(records[0]["roc_auc"].as_f64().unwrap() > 0.9, "{records:?}");
}

#[test]
fn the_server_bench_shows_its_default_sizes_in_the_form_it_accepts() {
    let output = sentinel().args(["bench", "server", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("[default: 10,100,1024,5120,20480]"), "{help}");
}

/// A compare run of one small size: each server's stages are read from its metrics, one
/// observation of each stage per timed request, and none of a stage no request ran.
#[test]
fn the_server_compare_reports_where_each_servers_time_went_from_its_metrics() {
    let output = sentinel()
        .args(["bench", "server", "--compare", "background,inline", "--sizes-kib", "16", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2, "one row per server: {rows:?}");
    for row in rows {
        let stages = &row["stages"];
        let mean = |stage: &str| stages[stage].as_f64().unwrap_or_else(|| panic!("no {stage} in {row}"));
        for stage in ["receive", "hash", "sample_write", "static", "list", "record", "answer"] {
            assert!(mean(stage) > 0.0, "{stage} in {row}");
        }
        // The waited path is inside the request, which also holds the stages beside it (the
        // list lookup runs beside the sample's write).
        let waited = mean("hash") + mean("sample_write").max(mean("list")) + mean("record");
        assert!(mean("request") > waited, "{row}");
        assert!(mean("request") < row["p99_ms"].as_f64().unwrap() * 10.0, "{row}");
        // The slowest request is the last of the sorted times: at least the p99.
        assert!(row["max_ms"].as_f64().unwrap() >= row["p99_ms"].as_f64().unwrap(), "{row}");
        // Requests over 5 ms, by stage, from the histograms: none counted more than were timed.
        let slow = row["slow_stages"].as_object().unwrap_or_else(|| panic!("no slow_stages in {row}"));
        assert!(
            slow.values().all(|count| count.as_u64().unwrap() <= row["requests"].as_u64().unwrap()),
            "{row}"
        );
        assert!(stages["virustotal"].is_null() && stages["dynamic"].is_null(), "{row}");
    }
}

/// Requests sent at a link's speed arrive at that speed (the frame takes the link's time to
/// come in), and the server's work after the last byte is a small part of the request.
#[test]
fn the_server_compare_over_a_paced_link_shows_the_time_after_the_last_byte() {
    let output = sentinel()
        .args([
            "bench",
            "server",
            "--compare",
            "background",
            "--sizes-kib",
            "64",
            "--link-mbit",
            "50",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = &rows[0];
    assert_eq!(row["link_mbit"], 50, "{row}");
    // 64 KiB at 50 Mbit/s take 10.5 ms on the link.
    let transfer_ms = 64.0 * 1024.0 * 8.0 / 50e6 * 1000.0;
    assert!(row["p50_ms"].as_f64().unwrap() >= transfer_ms - 0.5, "{row}");
    let stages = &row["stages"];
    let receive = stages["receive"].as_f64().unwrap();
    let after_receive = stages["after_receive"].as_f64().unwrap();
    assert!(receive >= transfer_ms - 2.0, "the frame came in faster than the link: {row}");
    assert!(after_receive > 0.0 && after_receive < receive, "{row}");
    let request = stages["request"].as_f64().unwrap();
    assert!((request - receive - after_receive).abs() < 1e-9, "{row}");
}

/// The scale-out bench with tiny counts: every posted connection is stored in each mode (the
/// command fails otherwise), the cached report is answered without a second VirusTotal call, and
/// the fleet estimate is the arithmetic of the measured rate.
#[test]
fn the_scale_out_bench_stores_every_record_in_each_mode_and_estimates_from_the_measure() {
    let output = sentinel()
        .args([
            "bench",
            "scale-out",
            "--agents",
            "6",
            "--connections",
            "3",
            "--clients",
            "2",
            "--vt-requests",
            "5",
            "--settle-seconds",
            "1",
            "--fleet-hosts",
            "100",
            "--fleet-connections",
            "10",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for run in ["embedded", "broker_1_worker", "broker_2_workers"] {
        assert_eq!(report["ingest"][run]["rows"], 18, "{report:#}");
        assert!(report["ingest"][run]["records_per_s"].as_f64().unwrap() > 0.0, "{report:#}");
    }
    for store in ["sqlite", "postgres"] {
        let cache_hit = &report["vt_cache_hit"][store];
        assert!(cache_hit["p50_ms"].as_f64().unwrap() <= cache_hit["p99_ms"].as_f64().unwrap(), "{report:#}");
    }
    let fleet = &report["fleet"];
    assert_eq!(fleet["records_per_s"], 1000.0);
    assert_eq!(fleet["database_rows_per_s"], 1100.0);
    let per_worker = fleet["records_per_s_per_worker"].as_f64().unwrap();
    assert_eq!(fleet["workers"].as_f64().unwrap(), (1000.0 / per_worker).ceil(), "{report:#}");
}
