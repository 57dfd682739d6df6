//! The benign corpus (`corpus/`, assembled by `corpus/build.py`): real Windows
//! executables from public packages, listed in `manifest.csv` (columns
//! `source,package,version,file,sha256,size`) and stored as `files/<sha256>`.
//! Files of one package share a toolchain and code, so the package — the
//! (source, package) pair — is the unit kept out of training for evaluation.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::DataError;
use crate::header_csv::FEATURES;

/// One corpus file's features.
#[derive(Debug, Clone, PartialEq)]
pub struct CorpusFile {
    /// `source/package`: the hold-out group.
    pub package: String,
    pub sha256: String,
    pub features: [f64; FEATURES],
}

/// The corpus files that yield `pe-header` features, and what was left out.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Corpus {
    pub files: Vec<CorpusFile>,
    /// Files listed but absent from `files/` (a partial corpus build).
    pub absent: usize,
    /// Files present that pefile's rules reject (not PE, truncated…).
    pub rejected: usize,
}

impl Corpus {
    /// Number of distinct packages among the usable files.
    pub fn packages(&self) -> usize {
        let mut names: Vec<&str> = self.files.iter().map(|f| f.package.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        names.len()
    }
}

/// Reads `dir/manifest.csv` and extracts the features of every file present.
pub fn read_corpus(dir: &Path) -> Result<Corpus, DataError> {
    let manifest_path = dir.join("manifest.csv");
    let io_error = |path: &Path, e: std::io::Error| DataError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let manifest = std::fs::File::open(&manifest_path).map_err(|e| io_error(&manifest_path, e))?;
    let mut reader = csv::Reader::from_reader(manifest);
    let headers = reader.headers().map_err(|e| DataError::Csv(e.to_string()))?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| DataError::MissingColumns(name.to_owned()))
    };
    let (source, package, sha256) = (column("source")?, column("package")?, column("sha256")?);

    // sha256 -> package; a file listed twice is kept in its first package only.
    let mut entries: BTreeMap<String, String> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| DataError::Csv(e.to_string()).in_file(&manifest_path))?;
        let digest = record.get(sha256).unwrap_or("").to_ascii_lowercase();
        // The digest becomes a file name: accept nothing but 64 hex digits.
        if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(DataError::Csv(format!("invalid sha256 {digest:?}")).in_file(&manifest_path));
        }
        let group = format!("{}/{}", record.get(source).unwrap_or(""), record.get(package).unwrap_or(""));
        if let std::collections::btree_map::Entry::Vacant(slot) = entries.entry(digest.clone()) {
            slot.insert(group);
            order.push(digest);
        }
    }

    let results: Vec<Result<Option<CorpusFile>, DataError>> = order
        .par_iter()
        .map(|digest| {
            let path = dir.join("files").join(digest);
            let bytes = match std::fs::read(&path) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_error(&path, e)),
            };
            let actual = hex::encode(Sha256::digest(&bytes));
            if actual != *digest {
                return Err(DataError::Csv(format!("corpus file {} has sha256 {actual}", path.display())));
            }
            Ok(sentinel_pe::pe_header_features(&bytes).ok().map(|features| CorpusFile {
                package: entries[digest].clone(),
                sha256: digest.clone(),
                features,
            }))
        })
        .collect();

    let mut corpus = Corpus::default();
    for (digest, result) in order.iter().zip(results) {
        match result? {
            Some(file) => corpus.files.push(file),
            None if dir.join("files").join(digest).exists() => corpus.rejected += 1,
            None => corpus.absent += 1,
        }
    }
    Ok(corpus)
}
