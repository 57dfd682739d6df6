//! Large writes sent to the disk a piece at a time, so that they do not hold up the requests'
//! own flushes: the zeros that prepare and retire the sample journal's segments (tens of
//! megabytes), and the vault files the settling and compaction threads write while requests are
//! coming.
//!
//! Written whole and then flushed, such a write reaches the device as one block of dirty pages,
//! and a request's `fdatasync` queued behind it waits for all of it: a journal segment's 64 MiB
//! of zeros held the requests' flushes for tens of milliseconds (docs/benchmarks.md). Here each
//! [`CHUNK`] is handed to the device and waited for (`sync_file_range`, no cache flush) before
//! the next is written, so no more than a chunk is ever ahead of a request's record; and while
//! requests are appending records, the writer rests between chunks for as long as a chunk took.
//! The caller's fsync then has little left to write, and is still what makes the bytes durable.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Instant;

/// Bytes written, then sent to the disk, at a time.
const CHUNK: usize = 256 << 10;

/// Writes `bytes` at `offset` of `file`, a [`CHUNK`] at a time, each sent to the disk before
/// the next; while `busy()` (requests are appending records) it rests after each chunk for as
/// long as the chunk took. Not durable until the caller's fsync.
pub(crate) fn write_at(file: &File, offset: u64, bytes: &[u8], busy: &dyn Fn() -> bool) -> io::Result<()> {
    let mut at = offset;
    let mut chunks = bytes.chunks(CHUNK).peekable();
    while let Some(chunk) = chunks.next() {
        let started = Instant::now();
        file.write_all_at(chunk, at)?;
        write_out(file, at, chunk.len())?;
        at += chunk.len() as u64;
        if chunks.peek().is_some() && busy() {
            std::thread::sleep(started.elapsed());
        }
    }
    Ok(())
}

/// Writes zeros from `from` to `to` of `file` as [`write_at`] writes bytes.
pub(crate) fn write_zeros(file: &File, from: u64, to: u64, busy: &dyn Fn() -> bool) -> io::Result<()> {
    let zeros = vec![0u8; CHUNK];
    let mut offset = from;
    while offset < to {
        let len = (to - offset).min(CHUNK as u64) as usize;
        let started = Instant::now();
        // One chunk: written and sent to the disk, no rest.
        write_at(file, offset, &zeros[..len], &|| false)?;
        offset += len as u64;
        if offset < to && busy() {
            std::thread::sleep(started.elapsed());
        }
    }
    Ok(())
}

/// Sends the written bytes of `file` from `offset` to the disk and waits for them, without a
/// flush of the device's cache or of the file's metadata (`sync_file_range`): an fsync still
/// has to follow for them to be durable.
#[cfg(target_os = "linux")]
fn write_out(file: &File, offset: u64, len: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags =
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (Ok(offset), Ok(len)) = (libc::off64_t::try_from(offset), libc::off64_t::try_from(len)) else {
        // Beyond what the call takes: the caller's fsync writes it.
        return Ok(());
    };
    // SAFETY: sync_file_range reads no memory of ours; it acts on the descriptor `file` keeps
    // open for the call, and a failure changes nothing.
    if unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) } == 0 {
        return Ok(());
    }
    let error = io::Error::last_os_error();
    match error.raw_os_error() {
        // A file system or sandbox without the call: the caller's fsync writes the bytes, all
        // at once as before.
        Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE) => Ok(()),
        _ => Err(error),
    }
}

#[cfg(not(target_os = "linux"))]
fn write_out(_: &File, _: u64, _: usize) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::io::Read;

    use super::*;

    fn contents(file: &mut File) -> Vec<u8> {
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn bytes_land_at_their_offset_and_the_writer_asks_between_chunks_whether_to_rest() {
        let mut file = tempfile::tempfile().unwrap();
        let bytes: Vec<u8> = (0..3 * CHUNK + 1234).map(|i| (i % 251) as u8).collect();
        let asked = Cell::new(0);
        let busy = || {
            asked.set(asked.get() + 1);
            true
        };
        write_at(&file, 100, &bytes, &busy).unwrap();
        let written = contents(&mut file);
        assert_eq!(written.len(), 100 + bytes.len());
        assert!(written[..100].iter().all(|&byte| byte == 0));
        assert_eq!(&written[100..], &bytes[..]);
        // Four chunks, and a rest is considered between each two.
        assert_eq!(asked.get(), 3);
    }

    #[test]
    fn zeros_replace_exactly_the_range() {
        let mut file = tempfile::tempfile().unwrap();
        let len = 2 * CHUNK + 4096;
        file.write_all_at(&vec![0xff; len], 0).unwrap();
        let asked = Cell::new(0);
        let busy = || {
            asked.set(asked.get() + 1);
            false
        };
        write_zeros(&file, 4096, len as u64 - 4096, &busy).unwrap();
        let written = contents(&mut file);
        assert_eq!(written.len(), len);
        assert!(written[..4096].iter().all(|&byte| byte == 0xff));
        assert!(written[4096..len - 4096].iter().all(|&byte| byte == 0));
        assert!(written[len - 4096..].iter().all(|&byte| byte == 0xff));
        // Two chunks (the second shorter): asked once, between them.
        assert_eq!(asked.get(), 1);
    }
}
