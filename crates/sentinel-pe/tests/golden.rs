//! Golden files: each synthetic input tests/golden/NAME.bin sits beside NAME.json, the output
//! both schemas must give for it (values by column name, or the error). Needs no Python, so it
//! pins the behaviour everywhere; `SENTINEL_BLESS=1` rewrites the JSON files after a deliberate
//! change, to be reviewed in the diff.

mod support;

use serde_json::{Map, Value, json};

use sentinel_pe::{PE_HEADER_COLUMNS, PE_RICH_COLUMNS, PeError, pe_header_features, pe_rich_features};

fn error_json(error: &PeError) -> Value {
    let kind = match error {
        PeError::NotPe(_) => "NotPe",
        PeError::Truncated(_) => "Truncated",
        PeError::Malformed(_) => "Malformed",
    };
    json!({ "kind": kind, "message": error.to_string() })
}

fn named(columns: &[&str], values: &[f64]) -> Value {
    let map: Map<String, Value> =
        columns.iter().zip(values).map(|(c, v)| ((*c).to_string(), json!(v))).collect();
    Value::Object(map)
}

fn outputs(bytes: &[u8]) -> Value {
    let header = match pe_header_features(bytes) {
        Ok(values) => json!({ "values": named(&PE_HEADER_COLUMNS, &values) }),
        Err(error) => json!({ "error": error_json(&error) }),
    };
    let rich = match pe_rich_features(bytes) {
        Ok(values) => json!({ "values": named(PE_RICH_COLUMNS, &values) }),
        Err(error) => json!({ "error": error_json(&error) }),
    };
    json!({ "pe_header": header, "pe_rich": rich })
}

/// Differences between expected and actual JSON, as "path: expected X, got Y" lines. Numbers
/// compare with a relative tolerance of 1e-12: JSON text round-trips an f64 only to the last bit.
fn differences(path: &str, expected: &Value, actual: &Value, out: &mut Vec<String>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for key in e.keys().chain(a.keys().filter(|k| !e.contains_key(*k))) {
                let (ev, av) = (e.get(key).unwrap_or(&Value::Null), a.get(key).unwrap_or(&Value::Null));
                differences(&format!("{path}.{key}"), ev, av, out);
            }
        }
        (Value::Number(e), Value::Number(a)) => {
            let (e, a) = (e.as_f64().unwrap_or(f64::NAN), a.as_f64().unwrap_or(f64::NAN));
            if (e - a).abs() > 1e-12 * e.abs().max(a.abs()).max(1.0) {
                out.push(format!("{path}: expected {e}, got {a}"));
            }
        }
        _ if expected != actual => out.push(format!("{path}: expected {expected}, got {actual}")),
        _ => {}
    }
}

#[test]
fn golden_files_match() {
    let dir = support::crate_dir().join("tests/golden");
    let bless = std::env::var("SENTINEL_BLESS").is_ok_and(|v| v == "1");
    let inputs: Vec<_> = support::regular_files(&dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "bin"))
        .collect();
    assert!(inputs.len() >= 20, "golden inputs missing: run tests/golden/make_inputs.py");
    let mut failures = Vec::new();
    for input in &inputs {
        let actual = outputs(&std::fs::read(input).expect("read input"));
        let expected_path = input.with_extension("json");
        if bless {
            let text = serde_json::to_string_pretty(&actual).expect("serialise") + "\n";
            std::fs::write(&expected_path, text).expect("write golden output");
            continue;
        }
        let name = input.file_stem().and_then(|s| s.to_str()).unwrap_or("?").to_string();
        let Ok(text) = std::fs::read_to_string(&expected_path) else {
            failures.push(format!("{name}: no {} (run with SENTINEL_BLESS=1)", expected_path.display()));
            continue;
        };
        let expected: Value = serde_json::from_str(&text).expect("golden output is JSON");
        differences(&name, &expected, &actual, &mut failures);
    }
    assert!(failures.is_empty(), "{} golden mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// The golden set covers what it claims to: both PE flavours, every error kind, zero padding.
#[test]
fn golden_set_covers_the_interesting_cases() {
    let dir = support::crate_dir().join("tests/golden");
    let header =
        |name: &str| pe_header_features(&std::fs::read(dir.join(format!("{name}.bin"))).expect("read"));
    let column = |name: &str| PE_HEADER_COLUMNS.iter().position(|&c| c == name).expect("column");

    let pe32 = header("pe32_minimal").expect("PE32 accepted");
    assert_eq!(pe32[column("Magic")], 0x10B as f64);
    assert_eq!(pe32[column("ImageBase")], 0x40_0000 as f64);
    let pe64 = header("pe32plus_minimal").expect("PE32+ accepted");
    assert_eq!(pe64[column("Magic")], 0x20B as f64);
    assert_eq!(pe64[column("ImageBase")], 0x1_4000_0000u64 as f64);

    assert!(matches!(header("empty"), Err(PeError::Truncated(_))));
    assert!(matches!(header("elf_header"), Err(PeError::NotPe(_))));
    assert!(matches!(header("ne_signature"), Err(PeError::NotPe(_))));
    assert!(matches!(header("lfanew_past_end"), Err(PeError::Malformed(_))));
    assert!(matches!(header("section_table_cut"), Err(PeError::Truncated(_))));
    assert!(matches!(header("optional_header_68_bytes"), Err(PeError::Truncated(_))));

    // 70 bytes of optional header: Subsystem (bytes 68-69) is read, everything after is zero.
    let padded = header("optional_header_70_bytes_padded").expect("padded like pefile");
    assert_eq!(padded[column("Subsystem")], 3.0);
    assert_eq!(padded[column("DllCharacteristics")], 0.0);
    assert_eq!(padded[column("NumberOfRvaAndSizes")], 0.0);

    let rich = |name: &str| pe_rich_features(&std::fs::read(dir.join(format!("{name}.bin"))).expect("read"));
    let rich_column = |name: &str| PE_RICH_COLUMNS.iter().position(|&c| c == name).expect("column");
    let minimal = rich("pe32_minimal").expect("rich features");
    assert_eq!(minimal.len(), PE_RICH_COLUMNS.len());
    assert_eq!(minimal[rich_column("import_dll_count")], 1.0);
    assert_eq!(minimal[rich_column("import_function_count")], 2.0);
    assert_eq!(minimal[rich_column("api_process_injection")], 1.0);
    assert_eq!(minimal[rich_column("api_dynamic_loading")], 1.0);
    assert_eq!(minimal[rich_column("resource_count")], 1.0);
    assert_eq!(minimal[rich_column("resource_total_size")], 64.0);
    assert_eq!(minimal[rich_column("resource_entropy")], 6.0);
    assert_eq!(minimal[rich_column("has_rich_header")], 1.0);
    assert_eq!(minimal[rich_column("overlay_size")], 0.0);
    let overlay = rich("pe32_overlay").expect("rich features");
    assert_eq!(overlay[rich_column("overlay_size")], 2048.0);
    assert_eq!(overlay[rich_column("overlay_entropy")], 8.0);
    assert_eq!(overlay[rich_column("has_rich_header")], 0.0);
    // A resource directory pointing back at itself is walked to the depth cap, not forever.
    let looped = rich("resource_loop").expect("rich features");
    assert_eq!(looped[rich_column("resource_count")], 0.0);
}
