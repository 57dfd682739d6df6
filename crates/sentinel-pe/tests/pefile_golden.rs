//! The `pe-header` schema against Python's pefile, the library that produced the training data:
//! on the synthetic golden inputs, on every file of the benign corpus, and on malformed variants
//! of corpus files made at run time. Both must accept and reject the same files and report the
//! same 50 values.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;

use sentinel_pe::{PE_HEADER_COLUMNS, pe_header_values};
use support::{PefileAnswer, corpus_files, pefile_answers, regular_files};

/// Compares Rust and pefile on every path; panics with a readable diff of the disagreements.
fn assert_agreement(paths: &[PathBuf]) {
    let Some(answers) = pefile_answers(paths) else { return };
    let (disagreements, accepted, rejected) = disagreements(paths, &answers);
    eprintln!("{} files: {accepted} accepted and {rejected} rejected by both", paths.len());
    assert!(
        disagreements.is_empty(),
        "{} disagreements with pefile (first 40):\n{}",
        disagreements.len(),
        disagreements.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Every difference between Rust and pefile, then how many files both accepted and rejected.
fn disagreements(paths: &[PathBuf], answers: &HashMap<PathBuf, PefileAnswer>) -> (Vec<String>, usize, usize) {
    let mut disagreements = Vec::new();
    let (mut accepted, mut rejected) = (0usize, 0usize);
    for path in paths {
        let bytes = std::fs::read(path).expect("read input");
        let ours = pe_header_values(&bytes);
        let theirs: &PefileAnswer = answers.get(path).expect("pefile answered every path");
        match (&ours, theirs) {
            (Ok(ours), Ok(theirs)) => {
                accepted += 1;
                for ((column, a), b) in PE_HEADER_COLUMNS.iter().zip(ours).zip(theirs) {
                    if a != b {
                        disagreements.push(format!("{}: {column}: rust {a}, pefile {b}", path.display()));
                    }
                }
            }
            (Err(_), Err(_)) => rejected += 1,
            (Ok(_), Err(theirs)) => {
                disagreements.push(format!("{}: rust accepts, pefile rejects ({theirs})", path.display()))
            }
            (Err(ours), Ok(_)) => {
                disagreements.push(format!("{}: rust rejects ({ours}), pefile accepts", path.display()))
            }
        }
    }
    (disagreements, accepted, rejected)
}

#[test]
fn golden_inputs_agree_with_pefile() {
    let inputs: Vec<PathBuf> = regular_files(&support::crate_dir().join("tests/golden"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    assert!(inputs.len() >= 20, "golden inputs missing: run tests/golden/make_inputs.py");
    assert_agreement(&inputs);
}

#[test]
fn corpus_agrees_with_pefile() {
    let Some(files) = corpus_files() else { return };
    assert_agreement(&files);
}

/// Malformed variants of the well-formed golden inputs and of a sample of corpus files.
#[test]
fn malformed_variants_agree_with_pefile() {
    let golden = support::crate_dir().join("tests/golden");
    let mut seeds = vec![golden.join("pe32_minimal.bin"), golden.join("pe32plus_minimal.bin")];
    if let Some(files) = corpus_files() {
        // A spread of small files (the variants are written to disk, some at full size).
        let small: Vec<PathBuf> =
            files.into_iter().filter(|p| p.metadata().is_ok_and(|m| m.len() <= 1 << 20)).collect();
        let step = (small.len() / 24).max(1);
        seeds.extend(small.into_iter().step_by(step).take(24));
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut paths = Vec::new();
    for (i, seed) in seeds.iter().enumerate() {
        let bytes = std::fs::read(seed).expect("read seed");
        for (name, variant) in variants(&bytes) {
            let path = dir.path().join(format!("{i:02}-{name}"));
            std::fs::write(&path, variant).expect("write variant");
            paths.push(path);
        }
    }
    eprintln!("{} variants of {} files", paths.len(), seeds.len());
    assert_agreement(&paths);
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    bytes.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn with(bytes: &[u8], at: usize, value: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    if let Some(slot) = out.get_mut(at..at + value.len()) {
        slot.copy_from_slice(value);
    }
    out
}

/// Named malformations of a PE file: truncations at every header boundary, a corrupted
/// e_lfanew, signatures of other formats, zeroed or resized optional headers, absurd section
/// counts and section entries, and seeded random byte flips in the headers.
fn variants(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let len = bytes.len();
    let nt = read_u32(bytes, 0x3C).unwrap_or(0x40) as usize;
    let optional = nt + 24;
    let optional_size =
        bytes.get(nt + 20..nt + 22).map_or(224, |b| usize::from(u16::from_le_bytes([b[0], b[1]])));
    let sections = optional + optional_size;
    let mut out = Vec::new();

    let mut cuts = vec![0, 1, 2, 32, 63, 64, 65, len / 2, len.saturating_sub(1)];
    cuts.extend([nt.saturating_sub(1), nt, nt + 1, nt + 3, nt + 4, nt + 14, nt + 23]);
    for extra in [0, 1, 2, 40, 68, 69, 70, 72, 73, 80, 95, 96, 100, 111, 112, 200] {
        cuts.push(optional + extra);
    }
    for extra in [0, 1, 20, 39, 40, 41, 79, 80, 81, 119] {
        cuts.push(sections + extra);
    }
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts.into_iter().filter(|&c| c < len) {
        out.push((format!("cut-{cut}"), bytes[..cut].to_vec()));
    }

    let lfanews = [
        0u32,
        1,
        0x40,
        (len as u32).saturating_sub(4),
        (len as u32).saturating_sub(3),
        len as u32,
        len as u32 + 1,
        u32::MAX,
        nt as u32 + 1,
    ];
    for e_lfanew in lfanews {
        out.push((format!("lfanew-{e_lfanew}"), with(bytes, 0x3C, &e_lfanew.to_le_bytes())));
    }
    for (name, signature) in [
        ("ne", 0x454Eu32),
        ("le", 0x454C),
        ("lx", 0x584C),
        ("te", 0x5A56),
        ("zero", 0),
        ("pe-hi", 0x0100_4550),
    ] {
        out.push((format!("signature-{name}"), with(bytes, nt, &signature.to_le_bytes())));
    }
    for magic in [0x10Bu16, 0x20B, 0x107, 0] {
        out.push((format!("magic-{magic:x}"), with(bytes, optional, &magic.to_le_bytes())));
    }
    out.push(("zeroed-optional-header".into(), with(bytes, optional, &vec![0; optional_size.min(240)])));
    for count in [0u16, 97, 0x7FF, 0xFFFF] {
        out.push((format!("sections-{count}"), with(bytes, nt + 6, &count.to_le_bytes())));
    }
    for size in [0u16, 1, 0xFFFF] {
        out.push((format!("optional-size-{size}"), with(bytes, nt + 20, &size.to_le_bytes())));
    }
    // Section entries whose sizes and pointers trigger pefile's sanity warnings (three of them
    // stop its section walk), then the table cut in the middle of the next entry.
    let mut insane = bytes.to_vec();
    for at in (sections..sections + 40 * 3).step_by(40) {
        for (field, value) in [(8, u32::MAX), (12, 0x7FFF_F001), (16, u32::MAX), (20, 0xFFFF_FE01)] {
            if let Some(slot) = insane.get_mut(at + field..at + field + 4) {
                slot.copy_from_slice(&value.to_le_bytes());
            }
        }
    }
    out.push(("insane-sections".into(), insane.clone()));
    if sections + 60 < len {
        out.push(("insane-sections-cut".into(), insane[..sections + 60].to_vec()));
    }

    // Seeded xorshift: the same flips on every run.
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ len as u64;
    let header_span = (sections + 40 * 4).min(len).max(1);
    for round in 0..16 {
        let mut flipped = bytes.to_vec();
        for _ in 0..4 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let at = (state % header_span as u64) as usize;
            flipped[at] ^= (state >> 32) as u8 | 1;
        }
        out.push((format!("flip-{round}"), flipped));
    }
    out
}

/// A disagreement is reported with the file, the field and both values.
#[test]
fn a_disagreement_names_file_field_and_values() {
    let path = support::crate_dir().join("tests/golden/pe32_minimal.bin");
    let mut values = pe_header_values(&std::fs::read(&path).expect("read")).expect("accepted").to_vec();
    let image_base = PE_HEADER_COLUMNS.iter().position(|&c| c == "ImageBase").expect("column");
    let ours = values[image_base];
    values[image_base] = 1;
    let answers = HashMap::from([(path.clone(), Ok(values))]);
    let (found, accepted, rejected) = disagreements(std::slice::from_ref(&path), &answers);
    assert_eq!((accepted, rejected), (1, 0));
    assert_eq!(found, vec![format!("{}: ImageBase: rust {ours}, pefile 1", path.display())]);

    let answers = HashMap::from([(path.clone(), Err("'DOS Header magic not found.'".to_string()))]);
    let (found, _, _) = disagreements(std::slice::from_ref(&path), &answers);
    assert_eq!(found.len(), 1);
    assert!(found[0].ends_with("rust accepts, pefile rejects ('DOS Header magic not found.')"), "{found:?}");
}
