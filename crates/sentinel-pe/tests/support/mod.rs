//! What the integration tests and the benchmark share: where the corpus is, how to list its
//! files, and how to ask Python's pefile (through tests/pefile_header.py) for its answers.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sentinel_testkit::Prerequisite;

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The benign corpus built by corpus/build.py: `SENTINEL_CORPUS_DIR`, else `<workspace>/corpus/files`.
pub fn corpus_dir() -> PathBuf {
    std::env::var_os("SENTINEL_CORPUS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../../corpus/files"))
}

/// The corpus files, sorted; `None` (after saying why) when the corpus is absent and not
/// required (`SENTINEL_REQUIRE_CORPUS`).
pub fn corpus_files() -> Option<Vec<PathBuf>> {
    let dir = corpus_dir();
    let files = regular_files(&dir);
    if files.is_empty() {
        let message = format!(
            "no corpus at {} (build it with `python3 corpus/build.py`, or set SENTINEL_CORPUS_DIR)",
            dir.display()
        );
        Prerequisite::Corpus.missing(message);
        return None;
    }
    Some(files)
}

pub fn regular_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "part"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// What pefile says about one file: the 50 header values, or its error message.
pub type PefileAnswer = Result<Vec<u64>, String>;

/// Runs tests/pefile_header.py over the files; `None` (after saying why) when Python or pefile
/// is not installed and the peers are not required (`SENTINEL_REQUIRE_PEERS`).
pub fn pefile_answers(paths: &[PathBuf]) -> Option<HashMap<PathBuf, PefileAnswer>> {
    let script = crate_dir().join("tests/pefile_header.py");
    let child = Command::new("python3")
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(err) => {
            Prerequisite::Peers.missing(format!("python3 cannot run ({err})"));
            return None;
        }
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
    // Feed stdin from another thread: the script answers while it reads.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut answers = HashMap::new();
    for line in stdout.lines() {
        let line = line.expect("read pefile_header.py output");
        let value: serde_json::Value = serde_json::from_str(&line).expect("pefile_header.py prints JSON");
        let path = PathBuf::from(value["path"].as_str().expect("path"));
        let answer = match value.get("values") {
            Some(values) => Ok(values
                .as_array()
                .expect("values array")
                .iter()
                .map(|v| v.as_u64().expect("unsigned integer"))
                .collect()),
            None => Err(value["error"].as_str().unwrap_or("?").to_string()),
        };
        answers.insert(path, answer);
    }
    writer.join().expect("stdin writer").expect("write paths to python3");
    let status = child.wait().expect("wait for python3");
    if !status.success() {
        Prerequisite::Peers.missing(format!(
            "pefile_header.py failed ({status}); is pefile installed (pip install -r .ci/requirements.txt)?"
        ));
        return None;
    }
    Some(answers)
}
