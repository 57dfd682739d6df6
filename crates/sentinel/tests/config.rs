//! Configuration as the binary reads it: a setting of a nested table set from
//! the environment reaches the part it configures and is checked like one
//! written in the file, and an error names the variable it came from.

use std::process::Command;

#[test]
fn a_misspelt_nested_setting_from_the_environment_stops_the_server_and_is_named() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .env("SENTINEL_NETWORK__API__MAX_BATCH_ITEMZ", "5")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("SENTINEL_NETWORK__API__MAX_BATCH_ITEMZ"), "{stderr}");
}

#[test]
fn a_nested_setting_from_the_environment_is_typed_and_checked() {
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .env("SENTINEL_NETWORK__API__MAX_BATCH_ITEMS", "many")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("SENTINEL_NETWORK__API__MAX_BATCH_ITEMS") && stderr.contains("many"), "{stderr}");
}

#[test]
fn a_nested_setting_from_the_environment_reaches_the_service() {
    // 0 is a well-formed number that the network service's own checks refuse: the
    // refusal shows the value travelled from the variable to `[network.api]`.
    let data_dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sentinel"))
        .args(["serve", "--tcp-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir.path())
        .env("SENTINEL_NETWORK__API__MAX_BATCH_ITEMS", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("invalid network setting api"), "{stderr}");
}
