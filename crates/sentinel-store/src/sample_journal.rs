//! The sample journal: where a new sample's vault file is made durable on the request's path
//! with one data flush, instead of the new file, rename and two directory fsyncs the vault
//! needs, each a journal commit of the file system (docs/benchmarks.md, "The disk's floor").
//!
//! The journal is a few segment files in `samples/journal/`, written with zeros and fsynced
//! before they take records (`prepare`), so appending a record overwrites blocks the file already
//! owns and `fdatasync` has no metadata to commit. A record is the vault file's bytes as the
//! vault would write them (masked or compressed, sealed when the store has a key) behind a small
//! header, at a block-aligned offset. Once its record is durable a sample counts as stored; the
//! vault's settling thread (`vault_settling.rs`) then writes its file the usual way, and the
//! record is released.
//!
//! Each segment has a generation, in its first block and in every record written to it. When all
//! of a segment's records are settled it is retired: its generation goes up, which voids its old
//! records at once, and the blocks they used are written with zeros (no sample's bytes outlive
//! its file's deletion or re-encryption), then it is reused. At
//! start-up [`SampleJournal::recover`] walks every segment for records of its current generation:
//! those are the samples acknowledged but not settled when the process stopped; the vault checks
//! each against its hash, writes its file, and the segments are retired.
//!
//! One process journals a vault at a time: it holds `samples/journal/owner.lock`. Another
//! process opening the same store (a command beside the server) writes its samples' files
//! directly, as a store on PostgreSQL always does.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::StoreError;
use crate::background_writes::write_zeros;
use crate::sample_hash::SampleHash;

/// Directory of the journal, inside the vault's.
pub(crate) const JOURNAL_DIR: &str = "journal";
const OWNER_LOCK: &str = "owner.lock";
/// Records start at multiples of this, and a segment's first block is its header.
const BLOCK: u64 = 4096;
const SEGMENT_MAGIC: &[u8; 16] = b"SENTINEL-JOURNAL";
const SEGMENT_VERSION: u32 = 1;
const SEGMENT_HEADER_LEN: usize = SEGMENT_MAGIC.len() + 4 + 8;
const RECORD_MAGIC: &[u8; 8] = b"SNTL-REC";
/// Magic, generation (u64 LE), the sample's raw SHA-256, the length of the contents (u64 LE).
const RECORD_HEADER_LEN: usize = RECORD_MAGIC.len() + 8 + 32 + 8;
/// Most segment files: the journal takes at most this many times [`MAX_SEGMENT_LEN`] of disk.
const MAX_SEGMENTS: usize = 4;
const MIN_SEGMENT_LEN: u64 = 1 << 20;
const MAX_SEGMENT_LEN: u64 = 64 << 20;
/// A segment is sized to hold this many of the largest records seen: the journal absorbs a
/// burst of that many samples per segment before their files must be written.
const RECORDS_PER_SEGMENT: u64 = 64;
/// A segment taking records whose records are all settled is swapped for a fresh one once no
/// record came for this long, so that settled records do not stay valid for days (a crash
/// would then write the files of samples that retention has deleted since).
const IDLE_ROTATION: Duration = Duration::from_secs(5);
/// While records are being appended (the last came within this), the store's background
/// writes rest between their pieces (`background_writes.rs`): a segment is retired or grown
/// before it is needed, and a file settled after its record, so this only spreads them out.
const BUSY_WINDOW: Duration = Duration::from_millis(20);

/// Where a record is: enough to read it back and to release it.
#[derive(Debug, Clone, Copy)]
struct Location {
    segment: usize,
    generation: u64,
    offset: u64,
    len: u64,
}

struct Segment {
    file: Arc<File>,
    generation: u64,
    /// Bytes written with zeros (or records) and fsynced: records go below this.
    len: u64,
    /// Where the next record goes; [`BLOCK`] in a segment holding no record of its generation.
    next: u64,
    /// Records reserved or written and not yet released.
    unsettled: usize,
}

#[derive(Default)]
struct State {
    segments: Vec<Segment>,
    /// The segment taking records.
    active: Option<usize>,
    /// A retired, prepared segment to switch to when the active one is full.
    standby: Option<usize>,
    /// Records durable and not settled, by sample.
    index: HashMap<SampleHash, Location>,
    /// The largest record asked for, header included, rounded to blocks: segments are sized on it.
    largest_record: u64,
    last_append: Option<Instant>,
}

pub(crate) struct SampleJournal {
    dir: PathBuf,
    state: Mutex<State>,
    _owner: File,
}

/// A step of [`SampleJournal::prepare`], decided under the lock and done outside it.
enum Preparation {
    Retire { segment: usize, file: Arc<File>, generation: u64, used: u64 },
    Extend { segment: usize, file: Arc<File>, from: u64, to: u64 },
    Create { len: u64 },
}

impl SampleJournal {
    /// Opens the journal in `vault_dir/journal` for this process (creating it if missing and
    /// `create`), or `None` when another process journals this vault or there is no journal to
    /// open. What the segments hold from before is recovered first ([`SampleJournal::recover`],
    /// with `settle`); returns how many records were.
    pub(crate) fn open(
        vault_dir: &Path,
        create: bool,
        settle: impl FnMut(SampleHash, Vec<u8>) -> Result<bool, StoreError>,
    ) -> Result<Option<(SampleJournal, u64)>, StoreError> {
        let dir = vault_dir.join(JOURNAL_DIR);
        match create {
            true => crate::vault::create_private_dir(&dir, vault_dir)?,
            false if !dir.try_exists().map_err(StoreError::io(&dir))? => return Ok(None),
            false => {}
        }
        let lock_path = dir.join(OWNER_LOCK);
        let owner = private_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(StoreError::io(&lock_path))?;
        match owner.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(None),
            Err(TryLockError::Error(error)) => return Err(StoreError::Io { path: lock_path, source: error }),
        }
        let mut segments = Vec::new();
        for index in 0..MAX_SEGMENTS {
            let path = segment_path(&dir, index);
            let file = match OpenOptions::new().read(true).write(true).open(&path) {
                Ok(file) => file,
                Err(error) if error.kind() == ErrorKind::NotFound => break,
                Err(error) => return Err(StoreError::Io { path, source: error }),
            };
            let generation = read_segment_header(&file).map_err(StoreError::io(&path))?;
            // The first block is the header's, and no segment is made larger than the largest,
            // whatever a damaged file's length.
            let file_len = file.metadata().map_err(StoreError::io(&path))?.len();
            let len = (file_len / BLOCK * BLOCK).clamp(BLOCK, MAX_SEGMENT_LEN);
            let Some(generation) = generation else {
                // Segments are renamed into place whole, so this is damage: nothing in it can be
                // trusted to belong to a generation. It is made again.
                tracing::warn!(path = %path.display(), "sample journal segment without a valid header; rewriting it");
                write_segment_header(&file, 1)
                    .and_then(|()| file.sync_data())
                    .map_err(StoreError::io(&path))?;
                segments.push(Segment {
                    file: Arc::new(file),
                    generation: 1,
                    len,
                    next: BLOCK,
                    unsettled: 0,
                });
                continue;
            };
            // Until recovery says otherwise, a segment may hold records of its generation.
            segments.push(Segment { file: Arc::new(file), generation, len, next: len, unsettled: 0 });
        }
        let state = State { segments, ..State::default() };
        let journal = SampleJournal { dir, state: Mutex::new(state), _owner: owner };
        let recovered = journal.recover(settle)?;
        Ok(Some((journal, recovered)))
    }

    /// Gives `settle` every record of each segment's current generation, with its sample's hash,
    /// then retires every segment. `settle` checks the contents against the hash (a record cut
    /// short by a crash fails) and returns whether they were whole; the records it was given
    /// must be durable elsewhere when it returns. Returns how many records it took.
    fn recover(
        &self,
        mut settle: impl FnMut(SampleHash, Vec<u8>) -> Result<bool, StoreError>,
    ) -> Result<u64, StoreError> {
        let segments: Vec<(usize, Arc<File>, u64, u64)> = self
            .state()
            .segments
            .iter()
            .enumerate()
            .map(|(index, segment)| (index, Arc::clone(&segment.file), segment.generation, segment.len))
            .collect();
        let mut recovered = 0;
        for (index, file, generation, len) in segments {
            let path = segment_path(&self.dir, index);
            let mut offset = BLOCK;
            let mut header = [0u8; RECORD_HEADER_LEN];
            let mut holds_records = false;
            while offset + RECORD_HEADER_LEN as u64 <= len {
                file.read_exact_at(&mut header, offset).map_err(StoreError::io(&path))?;
                let Some((hash, contents_len)) = parse_record_header(&header, generation)
                    .filter(|(_, contents_len)| *contents_len <= len - offset - RECORD_HEADER_LEN as u64)
                else {
                    offset += BLOCK;
                    continue;
                };
                holds_records = true;
                let mut contents = vec![0u8; contents_len as usize];
                file.read_exact_at(&mut contents, offset + RECORD_HEADER_LEN as u64)
                    .map_err(StoreError::io(&path))?;
                if settle(hash, contents)? {
                    recovered += 1;
                    offset += record_space(contents_len);
                } else {
                    offset += BLOCK;
                }
            }
            // Their files are durable now: the records are voided, so that they are never written
            // again (retention may delete those files later).
            let generation = match holds_records {
                true => {
                    void_records(&file, generation + 1, len, &|| false).map_err(StoreError::io(&path))?;
                    generation + 1
                }
                false => generation,
            };
            let mut state = self.state();
            state.segments[index].generation = generation;
            state.segments[index].next = BLOCK;
        }
        Ok(recovered)
    }

    /// Appends `contents` (the sample's vault file) durably and indexes it under `hash`. Returns
    /// false, having written nothing, when no prepared segment has room: the caller then writes
    /// the file itself, and has a segment prepared.
    pub(crate) fn append(&self, hash: &SampleHash, contents: &[u8]) -> Result<bool, StoreError> {
        let (file, location) = {
            let mut state = self.state();
            state.largest_record = state.largest_record.max(record_space(contents.len() as u64));
            let Some(location) = state.reserve(contents.len() as u64) else {
                return Ok(false);
            };
            state.last_append = Some(Instant::now());
            (Arc::clone(&state.segments[location.segment].file), location)
        };
        let mut header = Vec::with_capacity(RECORD_HEADER_LEN);
        header.extend_from_slice(RECORD_MAGIC);
        header.extend_from_slice(&location.generation.to_le_bytes());
        header.extend_from_slice(hash.raw());
        header.extend_from_slice(&location.len.to_le_bytes());
        let written = file
            .write_all_at(&header, location.offset)
            .and_then(|()| file.write_all_at(contents, location.offset + RECORD_HEADER_LEN as u64))
            .and_then(|()| file.sync_data());
        let mut state = self.state();
        if let Err(error) = written {
            state.release(location);
            return Err(StoreError::Io { path: segment_path(&self.dir, location.segment), source: error });
        }
        if let Some(replaced) = state.index.insert(hash.clone(), location) {
            // The same sample journaled twice at once: the older record is not needed.
            state.release(replaced);
        }
        Ok(true)
    }

    /// Whether the sample has a record not yet settled.
    pub(crate) fn contains(&self, hash: &SampleHash) -> bool {
        self.state().index.contains_key(hash)
    }

    /// The contents of the sample's unsettled record, or `None` if it has none (any more).
    pub(crate) fn read(&self, hash: &SampleHash) -> Result<Option<Vec<u8>>, StoreError> {
        let Some((location, file)) = ({
            let state = self.state();
            state
                .index
                .get(hash)
                .map(|location| (*location, Arc::clone(&state.segments[location.segment].file)))
        }) else {
            return Ok(None);
        };
        let path = segment_path(&self.dir, location.segment);
        let mut header = [0u8; RECORD_HEADER_LEN];
        file.read_exact_at(&mut header, location.offset).map_err(StoreError::io(&path))?;
        // Released and overwritten since the lookup: the caller reads the vault file instead.
        if parse_record_header(&header, location.generation) != Some((hash.clone(), location.len)) {
            return Ok(None);
        }
        let mut contents = vec![0u8; location.len as usize];
        file.read_exact_at(&mut contents, location.offset + RECORD_HEADER_LEN as u64)
            .map_err(StoreError::io(&path))?;
        Ok(Some(contents))
    }

    /// Forgets the sample's record (its file is durable now, or the sample was deleted). Returns
    /// the record's contents length, or `None` if it had none.
    pub(crate) fn release(&self, hash: &SampleHash) -> Option<u64> {
        let mut state = self.state();
        let location = state.index.remove(hash)?;
        state.release(location);
        Some(location.len)
    }

    /// How long since the last record was appended (since the journal opened, if none was).
    pub(crate) fn idle_for(&self) -> Duration {
        self.state().last_append.map_or(Duration::MAX, |last| last.elapsed())
    }

    /// Whether requests are appending records now (the last within [`BUSY_WINDOW`]): the
    /// store's background writes rest between their pieces meanwhile.
    pub(crate) fn is_busy(&self) -> bool {
        self.idle_for() < BUSY_WINDOW
    }

    /// Whether records must be settled now to make room: no segment is standing by for when
    /// the one taking records is full, because every other one holds unsettled records.
    pub(crate) fn is_pressed(&self) -> bool {
        let state = self.state();
        state.active.is_some() && state.standby.is_none()
    }

    /// Voids the records of every segment whose records are all settled, the one taking records
    /// included: for a store that closes, so that the samples' bytes do not stay in the journal.
    pub(crate) fn retire_settled(&self) -> Result<(), StoreError> {
        let settled: Vec<(usize, Arc<File>, u64, u64)> = self
            .state()
            .segments
            .iter()
            .enumerate()
            .filter(|(_, segment)| segment.next > BLOCK && segment.unsettled == 0)
            .map(|(index, segment)| (index, Arc::clone(&segment.file), segment.generation + 1, segment.next))
            .collect();
        for (index, file, generation, used) in settled {
            void_records(&file, generation, used, &|| false)
                .map_err(StoreError::io(segment_path(&self.dir, index)))?;
            let mut state = self.state();
            state.segments[index].generation = generation;
            state.segments[index].next = BLOCK;
        }
        Ok(())
    }

    /// Whether a segment is ready to take records.
    #[cfg(test)]
    pub(crate) fn is_ready(&self) -> bool {
        let state = self.state();
        state.active.is_some() || state.standby.is_some()
    }

    /// The samples with unsettled records.
    pub(crate) fn unsettled(&self) -> Vec<SampleHash> {
        self.state().index.keys().cloned().collect()
    }

    /// Does one step of keeping a segment ready for records: switch to the standby segment,
    /// retire a settled segment, grow one, or create one. Returns whether there was a step to
    /// do; the settling thread calls it until there is none.
    pub(crate) fn prepare(&self) -> Result<bool, StoreError> {
        let step = match self.state().next_preparation() {
            Some(step) => step,
            None => return Ok(false),
        };
        let busy = || self.is_busy();
        match step {
            Preparation::Retire { segment, file, generation, used } => {
                let path = segment_path(&self.dir, segment);
                void_records(&file, generation, used, &busy).map_err(StoreError::io(&path))?;
                let mut state = self.state();
                state.segments[segment].generation = generation;
                state.segments[segment].next = BLOCK;
            }
            Preparation::Extend { segment, file, from, to } => {
                let path = segment_path(&self.dir, segment);
                write_zeros(&file, from, to, &busy)
                    .and_then(|()| file.sync_all())
                    .map_err(StoreError::io(&path))?;
                self.state().segments[segment].len = to;
            }
            Preparation::Create { len } => {
                let index = self.state().segments.len();
                let path = segment_path(&self.dir, index);
                let temporary = path.with_extension("new");
                let create = || -> io::Result<File> {
                    let file = private_options()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(true)
                        .open(&temporary)?;
                    write_segment_header(&file, 1)?;
                    write_zeros(&file, BLOCK, len, &busy)?;
                    file.sync_all()?;
                    fs::rename(&temporary, &path)?;
                    Ok(file)
                };
                let file = create().map_err(StoreError::io(&path))?;
                crate::vault::sync_dir(&self.dir)?;
                let segment = Segment { file: Arc::new(file), generation: 1, len, next: BLOCK, unsettled: 0 };
                self.state().segments.push(segment);
            }
        }
        Ok(true)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every change to the state is made whole under the lock, so a panic elsewhere cannot
        // leave it half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl State {
    /// Reserves room for a record of `contents_len` bytes in the active segment, switching to
    /// the standby one if the active one is full.
    fn reserve(&mut self, contents_len: u64) -> Option<Location> {
        let space = record_space(contents_len);
        let fits = |segment: &Segment| segment.next + space <= segment.len;
        let active = match self.active {
            Some(active) if fits(&self.segments[active]) => active,
            _ => {
                let standby = self.standby.filter(|&standby| fits(&self.segments[standby]))?;
                self.standby = None;
                self.active = Some(standby);
                standby
            }
        };
        let segment = &mut self.segments[active];
        let location = Location {
            segment: active,
            generation: segment.generation,
            offset: segment.next,
            len: contents_len,
        };
        segment.next += space;
        segment.unsettled += 1;
        Some(location)
    }

    fn release(&mut self, location: Location) {
        let segment = &mut self.segments[location.segment];
        if segment.generation == location.generation {
            segment.unsettled = segment.unsettled.saturating_sub(1);
        }
    }

    /// The size a new segment should have.
    fn wanted_len(&self) -> u64 {
        let wanted = self.largest_record.saturating_mul(RECORDS_PER_SEGMENT).div_ceil(MIN_SEGMENT_LEN)
            * MIN_SEGMENT_LEN;
        wanted.clamp(MIN_SEGMENT_LEN, MAX_SEGMENT_LEN)
    }

    fn next_preparation(&mut self) -> Option<Preparation> {
        let wanted = self.wanted_len();
        let is_free = |state: &State, index: usize| {
            state.active != Some(index)
                && state.standby != Some(index)
                && state.segments[index].unsettled == 0
        };
        // A standby segment too small for today's records is grown before it takes any.
        if let Some(standby) = self.standby
            && self.segments[standby].len < wanted
        {
            self.standby = None;
        }
        // The active segment makes way for the standby one when it has no room left for the
        // largest record, or when its records are all settled and none came for a while.
        if let (Some(active), Some(standby)) = (self.active, self.standby) {
            let segment = &self.segments[active];
            let idle = self.last_append.is_none_or(|last| last.elapsed() >= IDLE_ROTATION);
            let full = segment.len.saturating_sub(segment.next) < self.largest_record;
            let settled = segment.next > BLOCK && segment.unsettled == 0 && idle;
            if full || settled {
                self.active = Some(standby);
                self.standby = None;
            }
        }
        if self.active.is_none()
            && let Some(standby) = self.standby.take()
        {
            self.active = Some(standby);
        }
        // A segment whose records are all settled is retired.
        if let Some(segment) =
            (0..self.segments.len()).find(|&index| is_free(self, index) && self.segments[index].next > BLOCK)
        {
            let file = Arc::clone(&self.segments[segment].file);
            let (generation, used) = (self.segments[segment].generation + 1, self.segments[segment].next);
            return Some(Preparation::Retire { segment, file, generation, used });
        }
        if self.standby.is_some() {
            return None;
        }
        if let Some(segment) = (0..self.segments.len()).find(|&index| is_free(self, index)) {
            let len = self.segments[segment].len;
            if len >= wanted {
                self.standby = Some(segment);
                return self.next_preparation();
            }
            let file = Arc::clone(&self.segments[segment].file);
            return Some(Preparation::Extend { segment, file, from: len, to: wanted });
        }
        (self.segments.len() < MAX_SEGMENTS).then_some(Preparation::Create { len: wanted })
    }
}

/// Bytes a record of `contents_len` bytes takes in a segment, header included.
fn record_space(contents_len: u64) -> u64 {
    (RECORD_HEADER_LEN as u64 + contents_len).div_ceil(BLOCK) * BLOCK
}

fn segment_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("segment-{index}.journal"))
}

fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

fn write_segment_header(file: &File, generation: u64) -> io::Result<()> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_LEN);
    header.extend_from_slice(SEGMENT_MAGIC);
    header.extend_from_slice(&SEGMENT_VERSION.to_le_bytes());
    header.extend_from_slice(&generation.to_le_bytes());
    file.write_all_at(&header, 0)
}

/// The generation of a segment, or `None` if its header is not a valid one.
fn read_segment_header(file: &File) -> io::Result<Option<u64>> {
    let mut header = [0u8; SEGMENT_HEADER_LEN];
    match file.read_exact_at(&mut header, 0) {
        Ok(()) => {}
        Err(error) if error.kind() == ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let Some(rest) = header.strip_prefix(SEGMENT_MAGIC) else { return Ok(None) };
    let (version, generation) = rest.split_at(4);
    if version != SEGMENT_VERSION.to_le_bytes() {
        return Ok(None);
    }
    Ok(generation.try_into().ok().map(u64::from_le_bytes))
}

/// The sample and contents length a record header names, if it is one of `generation`.
fn parse_record_header(header: &[u8; RECORD_HEADER_LEN], generation: u64) -> Option<(SampleHash, u64)> {
    let rest = header.strip_prefix(RECORD_MAGIC)?;
    let (recorded_generation, rest) = rest.split_first_chunk::<8>()?;
    let (raw_hash, rest) = rest.split_first_chunk::<32>()?;
    let len = u64::from_le_bytes(*rest.first_chunk::<8>()?);
    (u64::from_le_bytes(*recorded_generation) == generation).then(|| (SampleHash::from_raw(*raw_hash), len))
}

/// Voids a segment's records, whose files are durable: its generation goes up, and the blocks
/// they used, up to `used`, are written with zeros, so that no sample's bytes stay on the disk
/// after its file is deleted (retention) or re-encrypted (`sentinel store encrypt`). `busy`
/// tells whether requests are appending records (`background_writes.rs`).
fn void_records(file: &File, generation: u64, used: u64, busy: &dyn Fn() -> bool) -> io::Result<()> {
    write_segment_header(file, generation)?;
    write_zeros(file, BLOCK, used, busy)?;
    file.sync_data()
}
