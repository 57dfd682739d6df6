//! Readers for the training and evaluation data, and splits that keep
//! identical sequences on one side.
//!
//! * MalBehavD-V1 CSV: `sha256,labels,0,1,…` — label 1 = malware, 0 = benign,
//!   then the API names in order, padded with empty cells. Any CSV in that
//!   schema can be evaluated.
//! * Mal-API-2019 subset: `100_calls.zip` (one line of comma-separated API
//!   index numbers per sample) and `ApiIndex.txt` (`name=number` lines).
//!
//! All readers are bounded (file size, rows, columns) because `sentinel eval`
//! runs on files from anywhere.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use crate::error::DatasetError;
use crate::sequence::ApiCallSequence;

/// Largest CSV or text file read.
const MAX_FILE_BYTES: u64 = 1 << 30;
/// Most rows read from one CSV.
const MAX_ROWS: usize = 2_000_000;
/// Longest `sha256` cell kept (anything longer is not a hash).
const MAX_ID_LEN: usize = 128;

/// The eight Mal-API-2019 families.
pub const MAL_API_FAMILIES: [&str; 8] =
    ["Adware", "Backdoor", "Downloader", "Dropper", "Spyware", "Trojan", "Virus", "Worms"];

/// Samples per family in the `100_calls` subset.
const MAL_API_BLOCK: usize = 101;

/// One labelled sequence of a MalBehavD-style CSV.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledSequence {
    pub sha256: String,
    pub malicious: bool,
    pub calls: ApiCallSequence,
}

/// One Mal-API-2019 sample with its family.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilySample {
    pub family: String,
    pub calls: ApiCallSequence,
}

fn open_bounded(path: &Path) -> Result<std::io::Take<std::fs::File>, DatasetError> {
    let file = std::fs::File::open(path).map_err(|source| DatasetError::Io { path: path.into(), source })?;
    let size = file.metadata().map_err(|source| DatasetError::Io { path: path.into(), source })?.len();
    if size > MAX_FILE_BYTES {
        return Err(DatasetError::TooLarge { what: path.display().to_string(), limit: MAX_FILE_BYTES });
    }
    Ok(file.take(MAX_FILE_BYTES))
}

/// Reads a MalBehavD-style CSV file.
pub fn load_labelled_csv(path: &Path) -> Result<Vec<LabelledSequence>, DatasetError> {
    read_labelled_csv(open_bounded(path)?)
}

/// Reads a MalBehavD-style CSV: a header row, then `sha256,label,call,call,…`.
pub fn read_labelled_csv(reader: impl Read) -> Result<Vec<LabelledSequence>, DatasetError> {
    let mut csv = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(reader);
    let headers = csv.headers()?.clone();
    let first = headers.get(0).unwrap_or("").trim().to_ascii_lowercase();
    let second = headers.get(1).unwrap_or("").trim().to_ascii_lowercase();
    if first != "sha256" || !(second == "labels" || second == "label") {
        return Err(DatasetError::Invalid(format!(
            "expected a header starting with `sha256,labels`, found `{},{}`",
            headers.get(0).unwrap_or(""),
            headers.get(1).unwrap_or("")
        )));
    }
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    while csv.read_record(&mut record)? {
        let line = record.position().map_or(0, |p| p.line());
        if rows.len() >= MAX_ROWS {
            return Err(DatasetError::Invalid(format!("more than {MAX_ROWS} rows")));
        }
        let sha256 = record.get(0).unwrap_or("").trim();
        if sha256.len() > MAX_ID_LEN {
            return Err(DatasetError::Malformed { line, message: "the sha256 cell is too long".into() });
        }
        let malicious = match record.get(1).map(str::trim) {
            Some("1") | Some("1.0") => true,
            Some("0") | Some("0.0") => false,
            other => {
                return Err(DatasetError::Malformed {
                    line,
                    message: format!("label must be 0 or 1, found {:?}", other.unwrap_or("")),
                });
            }
        };
        let calls = ApiCallSequence::from_calls(record.iter().skip(2).filter(|cell| !cell.trim().is_empty()));
        rows.push(LabelledSequence { sha256: sha256.to_owned(), malicious, calls });
    }
    if rows.is_empty() {
        return Err(DatasetError::Invalid("the CSV has no data rows".into()));
    }
    Ok(rows)
}

/// Writes sequences in the MalBehavD schema (used to hand the exact same split
/// to the scikit-learn baseline).
pub fn write_labelled_csv(path: &Path, rows: &[&LabelledSequence]) -> Result<(), DatasetError> {
    let width = rows.iter().map(|r| r.calls.len()).max().unwrap_or(0);
    let mut out = csv::WriterBuilder::new().flexible(true).from_path(path)?;
    let header: Vec<String> = ["sha256".to_owned(), "labels".to_owned()]
        .into_iter()
        .chain((0..width).map(|i| i.to_string()))
        .collect();
    out.write_record(&header)?;
    for row in rows {
        let mut record = vec![row.sha256.clone(), if row.malicious { "1" } else { "0" }.to_owned()];
        record.extend(row.calls.calls().iter().cloned());
        out.write_record(&record)?;
    }
    out.flush().map_err(|source| DatasetError::Io { path: path.into(), source })?;
    Ok(())
}

/// Reads the Mal-API-2019 subset.
///
/// `labels`, when given, is a text file with one family name per line, in the
/// order of the sequences (the upstream `100_types` file). Without it the
/// families are assigned as the data set describes the subset: 8 blocks of 101
/// consecutive sequences, families in alphabetical order (see
/// docs/dynamic-analysis.md for why this is an assumption).
pub fn load_mal_api(
    calls_zip: &Path,
    api_index: &Path,
    labels: Option<&Path>,
) -> Result<Vec<FamilySample>, DatasetError> {
    let mut index_text = String::new();
    open_bounded(api_index)?
        .read_to_string(&mut index_text)
        .map_err(|source| DatasetError::Io { path: api_index.into(), source })?;
    let mut names: HashMap<u32, String> = HashMap::new();
    for (number, line) in index_text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (name, id) = line.split_once('=').ok_or_else(|| DatasetError::Malformed {
            line: number as u64 + 1,
            message: "expected `name=number`".into(),
        })?;
        let id: u32 = id.trim().parse().map_err(|_| DatasetError::Malformed {
            line: number as u64 + 1,
            message: format!("`{id}` is not a number"),
        })?;
        names.insert(id, name.trim().to_owned());
    }

    let file = std::fs::File::open(calls_zip)
        .map_err(|source| DatasetError::Io { path: calls_zip.into(), source })?;
    let mut archive = zip::ZipArchive::new(file)?;
    if archive.len() != 1 {
        return Err(DatasetError::Invalid(format!(
            "expected one file in the archive, found {}",
            archive.len()
        )));
    }
    let mut text = String::new();
    let entry = archive.by_index(0)?;
    // The declared size can lie; `take` bounds what is actually inflated.
    let mut limited = entry.take(MAX_FILE_BYTES + 1);
    limited
        .read_to_string(&mut text)
        .map_err(|source| DatasetError::Io { path: calls_zip.into(), source })?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(DatasetError::TooLarge { what: "the archive's content".into(), limit: MAX_FILE_BYTES });
    }

    let mut sequences = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut calls = ApiCallSequence::new();
        for id in line.split(',').filter(|s| !s.trim().is_empty()) {
            let id: u32 = id.trim().parse().map_err(|_| DatasetError::Malformed {
                line: number as u64 + 1,
                message: format!("`{id}` is not an API index"),
            })?;
            let name = names.get(&id).ok_or_else(|| DatasetError::Malformed {
                line: number as u64 + 1,
                message: format!("API index {id} is not in the index file"),
            })?;
            if !calls.push(name) {
                break;
            }
        }
        sequences.push(calls);
    }

    let families: Vec<String> = match labels {
        Some(path) => {
            let mut text = String::new();
            open_bounded(path)?
                .read_to_string(&mut text)
                .map_err(|source| DatasetError::Io { path: path.into(), source })?;
            text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect()
        }
        None => {
            if sequences.len() != MAL_API_BLOCK * MAL_API_FAMILIES.len() {
                return Err(DatasetError::Invalid(format!(
                    "without a labels file the subset must hold {} sequences, found {}",
                    MAL_API_BLOCK * MAL_API_FAMILIES.len(),
                    sequences.len()
                )));
            }
            (0..sequences.len()).map(|i| MAL_API_FAMILIES[i / MAL_API_BLOCK].to_owned()).collect()
        }
    };
    if families.len() != sequences.len() {
        return Err(DatasetError::Invalid(format!(
            "{} labels for {} sequences",
            families.len(),
            sequences.len()
        )));
    }
    Ok(families.into_iter().zip(sequences).map(|(family, calls)| FamilySample { family, calls }).collect())
}

/// A small deterministic generator (SplitMix64) for shuffles: splits must be
/// reproducible from a seed on every platform and Rust version.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

/// Groups of row indices that share a key, in first-seen order.
fn groups_by_key<K: std::hash::Hash + Eq>(keys: &[K]) -> Vec<Vec<usize>> {
    let mut position: HashMap<&K, usize> = HashMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (row, key) in keys.iter().enumerate() {
        let g = *position.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(row);
    }
    groups
}

/// Row indices of a train/test split in which rows with equal keys (here:
/// identical call sequences) are always on the same side. Groups are shuffled
/// by `seed` within each `stratum` (the label of their first row) so both sides
/// keep the class balance. Returns `(train, test)`, each sorted.
pub fn split_grouped<K: std::hash::Hash + Eq, S: std::hash::Hash + Eq + Ord + Clone>(
    keys: &[K],
    strata: &[S],
    test_fraction: f64,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let mut rng = SplitMix64::new(seed);
    let mut by_stratum: std::collections::BTreeMap<S, Vec<Vec<usize>>> = Default::default();
    for group in groups_by_key(keys) {
        by_stratum.entry(strata[group[0]].clone()).or_default().push(group);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (_, mut groups) in by_stratum {
        rng.shuffle(&mut groups);
        let rows: usize = groups.iter().map(Vec::len).sum();
        let wanted = (rows as f64 * test_fraction).round() as usize;
        let mut taken = 0;
        for group in groups {
            if taken < wanted {
                taken += group.len();
                test.extend(group);
            } else {
                train.extend(group);
            }
        }
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

/// A fold number in `0..folds` for each row, equal keys in the same fold,
/// groups dealt round-robin after a seeded shuffle within each stratum.
pub(crate) fn grouped_folds<K: std::hash::Hash + Eq, S: std::hash::Hash + Eq + Ord + Clone>(
    keys: &[K],
    strata: &[S],
    folds: usize,
    seed: u64,
) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed ^ 0x5eed_f01d);
    let mut by_stratum: std::collections::BTreeMap<S, Vec<Vec<usize>>> = Default::default();
    for group in groups_by_key(keys) {
        by_stratum.entry(strata[group[0]].clone()).or_default().push(group);
    }
    let mut fold_of = vec![0; keys.len()];
    let mut next = 0;
    for (_, mut groups) in by_stratum {
        rng.shuffle(&mut groups);
        for group in groups {
            for row in group {
                fold_of[row] = next % folds.max(1);
            }
            next += 1;
        }
    }
    fold_of
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_are_read_with_padding_and_rejections() {
        let text = "sha256,labels,0,1,2\nabc,1,NtClose,LdrLoadDll,\ndef,0,RegOpenKeyExW,,\n";
        let rows = read_labelled_csv(text.as_bytes()).unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].malicious && !rows[1].malicious);
        assert_eq!(rows[0].calls.calls(), ["ntclose", "ldrloaddll"]);
        assert_eq!(rows[1].calls.len(), 1);
    }

    #[test]
    fn csv_errors_are_clear() {
        let bad_header = read_labelled_csv("id,y,0\na,1,NtClose\n".as_bytes()).unwrap_err();
        assert!(bad_header.to_string().contains("sha256,labels"), "{bad_header}");
        let bad_label = read_labelled_csv("sha256,labels,0\na,yes,NtClose\n".as_bytes()).unwrap_err();
        assert!(bad_label.to_string().contains("label must be 0 or 1"), "{bad_label}");
        let empty = read_labelled_csv("sha256,labels,0\n".as_bytes()).unwrap_err();
        assert!(empty.to_string().contains("no data rows"), "{empty}");
        let long_id = format!("sha256,labels,0\n{},1,NtClose\n", "a".repeat(500));
        assert!(read_labelled_csv(long_id.as_bytes()).is_err());
    }

    #[test]
    fn grouped_split_never_separates_equal_keys_and_is_seeded() {
        let keys: Vec<u32> = (0..200).map(|i| i % 70).collect();
        let strata: Vec<bool> = keys.iter().map(|k| k % 2 == 0).collect();
        let (train, test) = split_grouped(&keys, &strata, 0.25, 7);
        assert_eq!(train.len() + test.len(), 200);
        let test_keys: std::collections::HashSet<_> = test.iter().map(|&i| keys[i]).collect();
        assert!(train.iter().all(|&i| !test_keys.contains(&keys[i])));
        assert!((40..=60).contains(&test.len()), "{}", test.len());
        assert_eq!(split_grouped(&keys, &strata, 0.25, 7), (train.clone(), test.clone()));
        assert_ne!(split_grouped(&keys, &strata, 0.25, 8).1, test);
        let folds = grouped_folds(&keys, &strata, 5, 1);
        for (i, &k) in keys.iter().enumerate() {
            assert_eq!(folds[i], folds[keys.iter().position(|&x| x == k).unwrap()]);
        }
    }
}
