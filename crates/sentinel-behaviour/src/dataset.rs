//! Readers for the training and evaluation data, and splits that keep
//! identical sequences on one side.
//!
//! * MalBehavD-V1 CSV: `sha256,labels,0,1,…` — label 1 = malware, 0 = benign,
//!   then the API names in order, padded with empty cells. Any CSV in that
//!   schema can be evaluated.
//! * Mal-API-2019 subset: `100_calls.zip` (one line of comma-separated API
//!   index numbers per sample), `ApiIndex.txt` (`name=number` lines) and a
//!   family labels file (`row,family`, row = 0-based line of the calls text).
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

/// Longest family name accepted in a labels file.
const MAX_FAMILY_NAME_LEN: usize = 64;

/// Reads Mal-API-2019's API index: `name=number` lines.
fn read_api_index(api_index: &Path) -> Result<HashMap<u32, String>, DatasetError> {
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
    Ok(names)
}

/// The text of the calls file: `100_calls.zip` (one member, inflated with a
/// bound, since the declared size can lie) or the text inside it.
fn read_calls_text(calls: &Path) -> Result<String, DatasetError> {
    let io = |source| DatasetError::Io { path: calls.into(), source };
    let mut file = open_bounded(calls)?;
    let mut magic = [0u8; 4];
    let read = file.read(&mut magic).map_err(io)?;
    let mut text = String::new();
    if read == 4 && magic == *b"PK\x03\x04" {
        let mut archive = zip::ZipArchive::new(std::fs::File::open(calls).map_err(io)?)?;
        if archive.len() != 1 {
            return Err(DatasetError::Invalid(format!(
                "expected one file in the archive, found {}",
                archive.len()
            )));
        }
        let entry = archive.by_index(0)?;
        entry.take(MAX_FILE_BYTES + 1).read_to_string(&mut text).map_err(io)?;
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(DatasetError::TooLarge {
                what: "the archive's content".into(),
                limit: MAX_FILE_BYTES,
            });
        }
    } else {
        let mut bytes = magic[..read].to_vec();
        file.read_to_end(&mut bytes).map_err(io)?;
        text = String::from_utf8(bytes).map_err(|_| {
            DatasetError::Invalid(format!("{} is neither a zip archive nor text", calls.display()))
        })?;
    }
    Ok(text)
}

/// Reads the Mal-API-2019 call sequences: `calls` is `100_calls.zip` or the
/// text inside it (one line of comma-separated API index numbers per sample),
/// `api_index` is `ApiIndex.txt`. Element `i` is line `i` (0-based) of the
/// text, the row number the labels files use; an empty line is an empty
/// sequence, so the numbering never shifts.
pub fn load_mal_api_calls(calls: &Path, api_index: &Path) -> Result<Vec<ApiCallSequence>, DatasetError> {
    let names = read_api_index(api_index)?;
    let text = read_calls_text(calls)?;
    let mut sequences = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if sequences.len() >= MAX_ROWS {
            return Err(DatasetError::Invalid(format!("more than {MAX_ROWS} sequences")));
        }
        let mut sequence = ApiCallSequence::new();
        for id in line.split(',').filter(|s| !s.trim().is_empty()) {
            let id: u32 = id.trim().parse().map_err(|_| DatasetError::Malformed {
                line: number as u64 + 1,
                message: format!("`{}` is not an API index", id.chars().take(32).collect::<String>()),
            })?;
            let name = names.get(&id).ok_or_else(|| DatasetError::Malformed {
                line: number as u64 + 1,
                message: format!("API index {id} is not in the index file"),
            })?;
            if !sequence.push(name) {
                break;
            }
        }
        sequences.push(sequence);
    }
    if sequences.is_empty() {
        return Err(DatasetError::Invalid(format!("{} holds no sequence", calls.display())));
    }
    Ok(sequences)
}

/// One line of a family labels file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FamilyLabel {
    /// 0-based line number of the sequence in the calls text.
    pub row: usize,
    pub family: String,
}

/// Reads a family labels file (`families.csv`): a `row,family` header, then
/// one labelled row per line. Rows must be distinct; family names 1 to 64
/// bytes.
pub fn read_family_labels(path: &Path) -> Result<Vec<FamilyLabel>, DatasetError> {
    let mut csv = csv::ReaderBuilder::new().has_headers(true).from_reader(open_bounded(path)?);
    let headers = csv.headers()?.clone();
    let header: Vec<String> = headers.iter().map(|h| h.trim().to_ascii_lowercase()).collect();
    if header != ["row", "family"] {
        return Err(DatasetError::Invalid(format!(
            "{}: expected the header `row,family`, found `{}`",
            path.display(),
            headers.iter().collect::<Vec<_>>().join(",").chars().take(80).collect::<String>()
        )));
    }
    let mut labels = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut record = csv::StringRecord::new();
    while csv.read_record(&mut record)? {
        let line = record.position().map_or(0, |p| p.line());
        if labels.len() >= MAX_ROWS {
            return Err(DatasetError::Invalid(format!("more than {MAX_ROWS} labels")));
        }
        let cell = record.get(0).unwrap_or("").trim();
        let row: usize = cell.parse().map_err(|_| DatasetError::Malformed {
            line,
            message: format!("`{}` is not a row number", cell.chars().take(32).collect::<String>()),
        })?;
        let family = record.get(1).unwrap_or("").trim();
        if family.is_empty() || family.len() > MAX_FAMILY_NAME_LEN {
            return Err(DatasetError::Malformed {
                line,
                message: format!("the family name must be 1 to {MAX_FAMILY_NAME_LEN} bytes"),
            });
        }
        if !seen.insert(row) {
            return Err(DatasetError::Malformed { line, message: format!("row {row} is labelled twice") });
        }
        labels.push(FamilyLabel { row, family: family.to_owned() });
    }
    if labels.is_empty() {
        return Err(DatasetError::Invalid(format!("{} has no labelled row", path.display())));
    }
    Ok(labels)
}

/// The labelled samples: each label joined with its sequence. A label whose
/// row is not in `sequences` is an error (the files do not belong together).
pub fn label_sequences(
    sequences: &[ApiCallSequence],
    labels: &[FamilyLabel],
) -> Result<Vec<FamilySample>, DatasetError> {
    labels
        .iter()
        .map(|label| {
            let calls = sequences.get(label.row).ok_or_else(|| {
                DatasetError::Invalid(format!(
                    "the labels name row {} but the calls file has {} rows (0 to {})",
                    label.row,
                    sequences.len(),
                    sequences.len().saturating_sub(1)
                ))
            })?;
            Ok(FamilySample { family: label.family.clone(), calls: calls.clone() })
        })
        .collect()
}

/// Reads the labelled Mal-API-2019 samples: the sequences of `calls` (zip or
/// text) named by `labels` (`row,family`), in the order of the labels file.
/// Unlabelled sequences are left out.
pub fn load_mal_api(
    calls: &Path,
    api_index: &Path,
    labels: &Path,
) -> Result<Vec<FamilySample>, DatasetError> {
    let sequences = load_mal_api_calls(calls, api_index)?;
    label_sequences(&sequences, &read_family_labels(labels)?)
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
    fn mal_api_calls_keep_line_numbers_from_zip_or_text_and_join_labels() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join("ApiIndex.txt");
        std::fs::write(&index, "ntclose=0\nldrloaddll=1\nregopenkeyexw=2\n").unwrap();
        // Line 1 is empty: it stays row 1, so row 2 keeps its number.
        let text = "0,1,1\n\n2,0\n";
        let text_path = dir.path().join("calls.txt");
        std::fs::write(&text_path, text).unwrap();
        let zip_path = dir.path().join("calls.zip");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&zip_path).unwrap());
        zip.start_file("calls.txt", zip::write::SimpleFileOptions::default()).unwrap();
        std::io::Write::write_all(&mut zip, text.as_bytes()).unwrap();
        zip.finish().unwrap();
        for path in [&text_path, &zip_path] {
            let sequences = load_mal_api_calls(path, &index).unwrap();
            assert_eq!(sequences.len(), 3);
            assert_eq!(sequences[0].calls(), ["ntclose", "ldrloaddll", "ldrloaddll"]);
            assert!(sequences[1].is_empty());
            assert_eq!(sequences[2].calls(), ["regopenkeyexw", "ntclose"]);
        }
        let labels_path = dir.path().join("families.csv");
        std::fs::write(&labels_path, "row,family\n2,Worms\n0,Adware\n").unwrap();
        let samples = load_mal_api(&zip_path, &index, &labels_path).unwrap();
        assert_eq!(samples.len(), 2);
        assert_eq!((samples[0].family.as_str(), samples[0].calls.len()), ("Worms", 2));
        assert_eq!((samples[1].family.as_str(), samples[1].calls.len()), ("Adware", 3));

        std::fs::write(&labels_path, "row,family\n3,Worms\n").unwrap();
        let error = load_mal_api(&zip_path, &index, &labels_path).unwrap_err().to_string();
        assert!(error.contains("row 3 but the calls file has 3 rows"), "{error}");
        std::fs::write(&text_path, "0,9\n").unwrap();
        let error = load_mal_api_calls(&text_path, &index).unwrap_err().to_string();
        assert!(error.contains("line 1: API index 9 is not in the index file"), "{error}");
    }

    #[test]
    fn family_labels_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.csv");
        let read = |text: &str| {
            std::fs::write(&path, text).unwrap();
            read_family_labels(&path).map_err(|e| e.to_string())
        };
        assert_eq!(
            read(" Row , Family \n4, Trojan \n").unwrap(),
            [FamilyLabel { row: 4, family: "Trojan".into() }]
        );
        assert!(read("row,label\n4,Trojan\n").unwrap_err().contains("expected the header `row,family`"));
        assert!(read("row,family\n-1,Trojan\n").unwrap_err().contains("`-1` is not a row number"));
        assert!(read("row,family\n4,Trojan\n4,Worms\n").unwrap_err().contains("row 4 is labelled twice"));
        let long = format!("row,family\n4,{}\n", "x".repeat(65));
        assert!(read(&long).unwrap_err().contains("1 to 64 bytes"));
        assert!(read("row,family\n").unwrap_err().contains("no labelled row"));
        assert!(read("row,family\n1,a,b\n").is_err(), "a third column is a CSV error");
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
