//! The store's SQLite files under SQLCipher: keying each connection, telling a plain file from
//! an encrypted one and a right key from a wrong one before anything is written, and rewriting
//! a file under another key (`sqlcipher_export`) for `sentinel store encrypt` and `rekey`.
//!
//! Without a key SQLCipher is plain SQLite, so a keyless store is unchanged. With one, every
//! page (the header included) is encrypted and authenticated. SQLCipher only notices a wrong key
//! when it first reads a page ("file is not a database"), so [`apply_key`] reads the schema
//! right after keying, and [`probe`] does so on a read-only connection that cannot create or
//! change a file: a store opened with the wrong key is refused before it is touched.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode, OpenFlags};
use zeroize::Zeroizing;

use crate::StoreError;
use crate::store_key::{KeyPurpose, StoreKey};

/// The first 16 bytes of every plain SQLite database file; SQLCipher encrypts them too.
const PLAIN_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The SQLCipher key of one database file: a subkey of the store key, in SQLCipher's raw-key
/// form (`x'<64 hex>'`), which skips the key derivation (PBKDF2) a passphrase would need on
/// every connection.
#[derive(Clone)]
pub(crate) struct DatabaseKey {
    raw_key_literal: Zeroizing<String>,
    fingerprint: String,
}

impl DatabaseKey {
    pub(crate) fn new(store_key: &StoreKey, purpose: KeyPurpose) -> DatabaseKey {
        let subkey = store_key.derive(purpose);
        let raw_key_literal = Zeroizing::new(format!("x'{}'", hex::encode(subkey.as_slice())));
        DatabaseKey { raw_key_literal, fingerprint: store_key.fingerprint() }
    }
}

/// What a database file holds, judged from its first bytes without opening it.
#[derive(Debug, PartialEq, Eq)]
enum FileState {
    /// Missing or empty: SQLite creates it, encrypted if a key is given.
    New,
    Plain,
    /// Encrypted, or not SQLite at all: only a key can tell.
    Opaque,
}

fn file_state(path: &Path) -> Result<FileState, StoreError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(FileState::New),
        Err(error) => return Err(StoreError::Io { path: path.to_owned(), source: error }),
    };
    let mut header = Vec::with_capacity(PLAIN_HEADER.len());
    (&mut file).take(PLAIN_HEADER.len() as u64).read_to_end(&mut header).map_err(StoreError::io(path))?;
    Ok(match header.as_slice() {
        [] => FileState::New,
        header if header == PLAIN_HEADER => FileState::Plain,
        _ => FileState::Opaque,
    })
}

/// Checks, without writing anything, that the database file at `path` can be opened with `key`:
/// a plain file with no key, an encrypted one with its key, or no file yet.
pub(crate) fn probe(path: &Path, key: Option<&DatabaseKey>) -> Result<(), StoreError> {
    match (file_state(path)?, key) {
        (FileState::New, _) => Ok(()),
        (FileState::Plain, None) => Ok(()),
        (FileState::Plain, Some(_)) => Err(StoreError::NotEncrypted { path: path.to_owned() }),
        (FileState::Opaque, None) => Err(StoreError::StoreKeyMissing { path: path.to_owned() }),
        (FileState::Opaque, Some(key)) => {
            // Read-only and without CREATE: this connection cannot change or create any file.
            let connection = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            apply_key(&connection, Some(key), path)
        }
    }
}

/// Keys a newly opened connection (nothing to do without a key) and proves the key right by
/// reading the schema, before the connection is used for anything else.
pub(crate) fn apply_key(
    connection: &Connection,
    key: Option<&DatabaseKey>,
    path: &Path,
) -> Result<(), StoreError> {
    if let Some(key) = key {
        // SQLCipher would also print its own line ("hmac check failed") on stderr for a wrong
        // key; the store's error says it better, and names the file.
        connection.execute_batch("PRAGMA cipher_log_level = NONE;")?;
        let statement = Zeroizing::new(format!("PRAGMA key = \"{}\";", key.raw_key_literal.as_str()));
        connection.execute_batch(&statement)?;
    }
    match connection.query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get::<_, i64>(0)) {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(failure, _)) if failure.code == ErrorCode::NotADatabase => {
            Err(match key {
                Some(key) => {
                    StoreError::WrongStoreKey { path: path.to_owned(), fingerprint: key.fingerprint.clone() }
                }
                None => StoreError::StoreKeyMissing { path: path.to_owned() },
            })
        }
        Err(error) => Err(error.into()),
    }
}

/// Whether a database file needed rewriting under the target key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reencryption {
    /// Rewritten under the target key.
    Rewritten,
    /// Already under the target key (a resumed run), or no file: nothing to do.
    AlreadyDone,
}

/// Makes the file at `path` encrypted under `target`, from plain (`current` is `None`) or from
/// `current`. Done by `sqlcipher_export` into a new file beside it, fsynced, then renamed over
/// the original: at any moment the file is wholly under one key, so an interrupted run leaves a
/// usable database, and running again finishes the work. A file already under `target` is left
/// alone. The store must not be open (the caller holds the store's exclusive lock).
pub(crate) fn reencrypt(
    path: &Path,
    current: Option<&DatabaseKey>,
    target: &DatabaseKey,
) -> Result<Reencryption, StoreError> {
    match file_state(path)? {
        FileState::New => return Ok(Reencryption::AlreadyDone),
        FileState::Plain if current.is_some() => {
            return Err(StoreError::NotEncrypted { path: path.to_owned() });
        }
        FileState::Plain => {}
        FileState::Opaque => match probe(path, Some(target)) {
            Ok(()) => return Ok(Reencryption::AlreadyDone),
            Err(StoreError::WrongStoreKey { .. }) if current.is_some() => probe(path, current)?,
            Err(error) => return Err(error),
        },
    }
    export(path, current, target)?;
    Ok(Reencryption::Rewritten)
}

fn export(path: &Path, current: Option<&DatabaseKey>, target: &DatabaseKey) -> Result<(), StoreError> {
    let exported = sibling(path, ".export");
    // Left by an interrupted run: never the database itself, which is only ever renamed over.
    for leftover in [exported.clone(), sibling(&exported, "-journal")] {
        remove_if_present(&leftover)?;
    }
    create_private_file(&exported)?;
    {
        let source = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        apply_key(&source, current, path)?;
        // Everything committed moves from the WAL into the file that is exported.
        source.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        let user_version: i64 = source.query_row("PRAGMA user_version", [], |row| row.get(0))?;
        let application_id: i64 = source.query_row("PRAGMA application_id", [], |row| row.get(0))?;
        let exported_name = exported.to_str().ok_or_else(|| StoreError::Io {
            path: exported.clone(),
            source: std::io::Error::new(ErrorKind::InvalidInput, "the path is not UTF-8"),
        })?;
        source.execute(
            "ATTACH DATABASE ?1 AS target KEY ?2",
            rusqlite::params![exported_name, target.raw_key_literal.as_str()],
        )?;
        source.query_row("SELECT sqlcipher_export('target')", [], |_| Ok(()))?;
        // sqlcipher_export copies tables and rows, not the header fields the migrations use.
        source.execute_batch(&format!(
            "PRAGMA target.user_version = {user_version}; PRAGMA target.application_id = {application_id};
             DETACH DATABASE target;"
        ))?;
    }
    File::open(&exported).and_then(|file| file.sync_all()).map_err(StoreError::io(&exported))?;
    // Closing the last connection checkpointed and deleted the WAL; what is left must not be
    // applied to the new file.
    let wal = sibling(path, "-wal");
    match fs::metadata(&wal) {
        Ok(metadata) if metadata.len() > 0 => {
            return Err(StoreError::StoreInUse {
                data_dir: path.parent().map(Path::to_owned).unwrap_or_default(),
                activity: "a database still has a write-ahead log after closing (another process has it open)",
            });
        }
        _ => {}
    }
    remove_if_present(&wal)?;
    remove_if_present(&sibling(path, "-shm"))?;
    fs::rename(&exported, path).map_err(StoreError::io(path))?;
    match path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        Some(parent) => crate::vault::sync_dir(parent),
        None => Ok(()),
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn remove_if_present(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Err(error) if error.kind() != ErrorKind::NotFound => {
            Err(StoreError::Io { path: path.to_owned(), source: error })
        }
        _ => Ok(()),
    }
}

fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map(drop).map_err(StoreError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> DatabaseKey {
        DatabaseKey::new(
            &StoreKey::from_hex(&format!("{byte:02x}").repeat(32)).unwrap(),
            KeyPurpose::MalwareDatabase,
        )
    }

    fn create(path: &Path, key: Option<&DatabaseKey>) {
        let connection = Connection::open(path).unwrap();
        apply_key(&connection, key, path).unwrap();
        let mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).unwrap();
        assert_eq!(mode, "wal");
        connection
            .execute_batch(
                "PRAGMA user_version = 7; PRAGMA application_id = 42;
                 CREATE TABLE t (x TEXT); INSERT INTO t VALUES ('kept row');",
            )
            .unwrap();
    }

    fn rows(path: &Path, key: Option<&DatabaseKey>) -> (String, i64, i64) {
        let connection = Connection::open(path).unwrap();
        apply_key(&connection, key, path).unwrap();
        let row = connection.query_row("SELECT x FROM t", [], |row| row.get(0)).unwrap();
        let version = connection.query_row("PRAGMA user_version", [], |row| row.get(0)).unwrap();
        let id = connection.query_row("PRAGMA application_id", [], |row| row.get(0)).unwrap();
        (row, version, id)
    }

    #[test]
    fn a_plain_file_is_encrypted_then_rekeyed_keeping_rows_and_header_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        create(&path, None);
        let (first, second) = (key(1), key(2));

        assert!(matches!(probe(&path, Some(&first)), Err(StoreError::NotEncrypted { .. })));
        assert_eq!(reencrypt(&path, None, &first).unwrap(), Reencryption::Rewritten);
        assert!(!fs::read(&path).unwrap().starts_with(PLAIN_HEADER));
        assert!(matches!(probe(&path, None), Err(StoreError::StoreKeyMissing { .. })));
        assert_eq!(rows(&path, Some(&first)), ("kept row".into(), 7, 42));
        assert_eq!(reencrypt(&path, None, &first).unwrap(), Reencryption::AlreadyDone);

        assert!(matches!(reencrypt(&path, Some(&key(3)), &second), Err(StoreError::WrongStoreKey { .. })));
        assert_eq!(reencrypt(&path, Some(&first), &second).unwrap(), Reencryption::Rewritten);
        assert!(matches!(probe(&path, Some(&first)), Err(StoreError::WrongStoreKey { .. })));
        assert_eq!(rows(&path, Some(&second)), ("kept row".into(), 7, 42));
        // Resumed after the rename: nothing left to do.
        assert_eq!(reencrypt(&path, Some(&first), &second).unwrap(), Reencryption::AlreadyDone);
        let leftovers: Vec<_> =
            fs::read_dir(dir.path()).unwrap().map(|entry| entry.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["db"]);
    }

    #[test]
    fn a_wrong_key_is_detected_without_changing_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        create(&path, Some(&key(1)));
        drop(Connection::open(&path).unwrap());
        let before = fs::read(&path).unwrap();
        let error = probe(&path, Some(&key(2))).unwrap_err();
        assert!(matches!(error, StoreError::WrongStoreKey { .. }), "{error}");
        assert_eq!(fs::read(&path).unwrap(), before);
        probe(&path, Some(&key(1))).unwrap();
    }
}
