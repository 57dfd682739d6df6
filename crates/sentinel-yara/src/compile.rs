//! Reading a rules directory and compiling it: every `*.yar` / `*.yara` file directly in it, in
//! name order, each in a namespace named after the file so that two files may reuse a rule name.
//! All or nothing: one file that does not compile fails the whole set, so that the rules in
//! service are always exactly the directory's content at some moment.

use std::path::{Path, PathBuf};

use crate::error::YaraError;

/// A rule file larger than this is refused: rule sets are text, and a huge one is a mistake.
const MAX_RULE_FILE_BYTES: u64 = 16 * 1024 * 1024;
/// More files than this is refused: a directory of samples given by mistake, not of rules.
const MAX_RULE_FILES: usize = 10_000;

/// A compiled set and what it was compiled from.
pub(crate) struct Compiled {
    pub rules: yara_x::Rules,
    pub files: usize,
    /// The compiler's warnings, one line each (file:line: text).
    pub warnings: Vec<String>,
    /// `yara-` and 16 hex digits naming the sources: same files, same version.
    pub version: String,
}

/// Compiles the rule files of `directory`.
pub(crate) fn compile_directory(directory: &Path) -> Result<Compiled, YaraError> {
    let files = rule_files(directory)?;
    let mut compiler = yara_x::Compiler::new();
    let mut digest = Fnv64::new();
    for path in &files {
        let source = read_rule_file(path)?;
        let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
        digest.write(name.as_bytes());
        digest.write(&[0]);
        digest.write(source.as_bytes());
        digest.write(&[0]);
        compiler.new_namespace(&namespace_of(path));
        let code = yara_x::SourceCode::from(source.as_str()).with_origin(path.display().to_string());
        compiler
            .add_source(code)
            .map_err(|error| YaraError::Compile { path: path.clone(), report: error.to_string() })?;
    }
    let warnings = compiler.warnings().iter().map(|warning| warning.to_string()).collect();
    Ok(Compiled {
        rules: compiler.build(),
        files: files.len(),
        warnings,
        version: format!("yara-{:016x}", digest.finish()),
    })
}

/// The rule files directly in `directory`, sorted by name.
fn rule_files(directory: &Path) -> Result<Vec<PathBuf>, YaraError> {
    let io = |source| YaraError::Io { path: directory.to_owned(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_rule_file =
            path.extension().is_some_and(|extension| extension == "yar" || extension == "yara");
        if is_rule_file && path.is_file() {
            if files.len() == MAX_RULE_FILES {
                return Err(YaraError::TooManyFiles {
                    directory: directory.to_owned(),
                    limit: MAX_RULE_FILES,
                });
            }
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn read_rule_file(path: &Path) -> Result<String, YaraError> {
    let io = |source| YaraError::Io { path: path.to_owned(), source };
    let size = std::fs::metadata(path).map_err(io)?.len();
    if size > MAX_RULE_FILE_BYTES {
        return Err(YaraError::TooLarge { path: path.to_owned(), limit: MAX_RULE_FILE_BYTES });
    }
    let bytes = std::fs::read(path).map_err(io)?;
    String::from_utf8(bytes).map_err(|_| YaraError::Compile {
        path: path.to_owned(),
        report: "the file is not UTF-8 text".to_owned(),
    })
}

/// The file's stem, as a YARA identifier: letters, digits and `_`, not starting with a digit.
fn namespace_of(path: &Path) -> String {
    let stem = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    let mut namespace: String =
        stem.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
    if !namespace.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        namespace.insert(0, '_');
    }
    namespace
}

/// FNV-1a, 64 bits: a stable name for the sources (not a security property: the rules come from
/// the operator's own directory).
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_identifiers_named_after_the_file() {
        assert_eq!(namespace_of(Path::new("/r/packers.yar")), "packers");
        assert_eq!(namespace_of(Path::new("/r/apt-28 rules.yara")), "apt_28_rules");
        assert_eq!(namespace_of(Path::new("/r/2024.yar")), "_2024");
    }

    #[test]
    fn only_rule_files_count_and_the_version_follows_their_content() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("a.yar"), "rule a { condition: true }").unwrap();
        std::fs::write(directory.path().join("notes.txt"), "not a rule").unwrap();
        let first = compile_directory(directory.path()).unwrap();
        assert_eq!(first.files, 1);
        assert_eq!(compile_directory(directory.path()).unwrap().version, first.version);
        std::fs::write(directory.path().join("a.yar"), "rule a { condition: false }").unwrap();
        assert_ne!(compile_directory(directory.path()).unwrap().version, first.version);
    }

    #[test]
    fn a_file_that_does_not_compile_names_itself_and_its_line() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("good.yar"), "rule good { condition: true }").unwrap();
        std::fs::write(directory.path().join("broken.yar"), "rule broken {\n  condition: $missing\n}")
            .unwrap();
        let error = compile_directory(directory.path()).err().expect("a broken rule must fail the set");
        let message = error.to_string();
        assert!(message.contains("broken.yar"), "{message}");
        assert!(message.contains("$missing"), "{message}");
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let error = compile_directory(Path::new("/nonexistent/rules")).err().unwrap();
        assert!(matches!(error, YaraError::Io { .. }), "{error}");
    }
}
