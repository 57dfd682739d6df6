//! A log file that rotates by size: when the next line would take the file past `max_size`,
//! `access.log` becomes `access.log.1`, `access.log.1` becomes `access.log.2`, and so on up to
//! `access.log.N` (`N` = `max_files`); the oldest beyond that is deleted. A line is never split
//! across two files, so every file holds whole lines. Files are created readable by their owner
//! only (0600): they name clients and principals.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// The current file, with what is known of its size.
#[derive(Debug)]
pub(crate) struct RotatingFile {
    path: PathBuf,
    max_size: u64,
    max_files: usize,
    file: BufWriter<File>,
    size: u64,
}

impl RotatingFile {
    /// Opens (appends to) `path`, creating it and its directory if needed.
    pub(crate) fn open(path: &Path, max_size: u64, max_files: usize) -> io::Result<RotatingFile> {
        if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile { path: path.to_owned(), max_size, max_files, file: BufWriter::new(file), size })
    }

    /// Appends `line` (with its newline), rotating first if it would not fit. A line longer
    /// than `max_size` on its own goes alone into a fresh file.
    pub(crate) fn write_line(&mut self, line: &[u8]) -> io::Result<()> {
        let length = line.len() as u64;
        if self.size > 0 && self.size.saturating_add(length) > self.max_size {
            self.rotate()?;
        }
        self.file.write_all(line)?;
        self.size += length;
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    /// Shifts every kept file one place, drops the one beyond `max_files`, starts a new file.
    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let numbered = |index: usize| {
            let mut name = self.path.clone().into_os_string();
            name.push(format!(".{index}"));
            PathBuf::from(name)
        };
        if self.max_files == 0 {
            remove_if_present(&self.path)?;
        } else {
            remove_if_present(&numbered(self.max_files))?;
            for index in (1..self.max_files).rev() {
                rename_if_present(&numbered(index), &numbered(index + 1))?;
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        self.file = BufWriter::new(open_append(&self.path)?);
        self.size = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(number: usize) -> Vec<u8> {
        format!("{number:09}\n").into_bytes() // 10 bytes
    }

    fn lines_of(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
    }

    #[test]
    fn files_rotate_at_the_size_and_keep_max_files_of_whole_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs").join("access.log");
        let mut file = RotatingFile::open(&path, 30, 2).unwrap();
        for number in 0..10 {
            file.write_line(&line(number)).unwrap();
        }
        file.flush().unwrap();
        // Three lines per file: 9 | 6 7 8 | 3 4 5; 0 1 2 were dropped with the third file.
        assert_eq!(lines_of(&path), ["000000009"]);
        assert_eq!(lines_of(&dir.path().join("logs/access.log.1")), ["000000006", "000000007", "000000008"]);
        assert_eq!(lines_of(&dir.path().join("logs/access.log.2")), ["000000003", "000000004", "000000005"]);
        assert!(!dir.path().join("logs/access.log.3").exists());
        for name in ["access.log", "access.log.1", "access.log.2"] {
            let size = std::fs::metadata(dir.path().join("logs").join(name)).unwrap().len();
            assert!(size <= 30, "{name}: {size} bytes");
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn reopening_appends_and_counts_what_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut file = RotatingFile::open(&path, 25, 3).unwrap();
        file.write_line(&line(1)).unwrap();
        file.flush().unwrap();
        drop(file);
        let mut file = RotatingFile::open(&path, 25, 3).unwrap();
        file.write_line(&line(2)).unwrap();
        file.write_line(&line(3)).unwrap();
        file.flush().unwrap();
        assert_eq!(lines_of(&dir.path().join("access.log.1")), ["000000001", "000000002"]);
        assert_eq!(lines_of(&path), ["000000003"]);
    }

    #[test]
    fn without_history_a_full_file_starts_over_and_a_long_line_stands_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let mut file = RotatingFile::open(&path, 15, 0).unwrap();
        file.write_line(&line(1)).unwrap();
        file.write_line(b"a line longer than the limit\n").unwrap();
        file.flush().unwrap();
        assert_eq!(lines_of(&path), ["a line longer than the limit"]);
        file.write_line(&line(2)).unwrap();
        file.flush().unwrap();
        assert_eq!(lines_of(&path), ["000000002"]);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
