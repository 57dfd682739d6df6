//! Reading and writing frames over async byte streams.
//!
//! [`FrameReader`] buffers bytes from the stream and hands them to the pure
//! decoder of [`frame`](crate::frame) until a frame is complete, so limits are
//! enforced by the same code the fuzzer exercises. It also owns the two
//! timeouts: the idle timeout runs while no frame has started, the frame
//! timeout from a frame's first byte to its last. Given a [`MemoryBudget`], it
//! reserves each frame's announced bytes before reading them.
//!
//! It hashes an analysis request's executable (field `[0]`) while the rest of
//! the frame is still arriving, so that the SHA-256 every such request needs is
//! ready when the frame is: a megabyte of hashing is more than half a
//! millisecond, which no longer waits for the last byte.

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::budget::{MemoryBudget, Reservation, UNCOUNTED_FRAME_BYTES};
use crate::command::Command;
use crate::frame::{self, FrameError, FrameLayout, Scan, TERMINATOR, TERMINATOR_AS_LENGTH, u32_at};
use crate::limits::Limits;
use crate::request::{Request, Sha256Hash};
use crate::response::Response;

/// Smallest read: enough for small frames in one system call.
const MIN_READ: usize = 8 * 1024;
/// Largest read-ahead reservation: buffers grow with the data that arrives,
/// not with the length a peer announces.
const MAX_READ: usize = 1024 * 1024;

/// Reads frames from `R` within [`Limits`].
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buffer: BytesMut,
    limits: Limits,
    /// When the frame being read got its first byte; `None` between frames.
    frame_started: Option<Instant>,
    /// When the frame last read got its first byte.
    last_frame_started: Option<Instant>,
    /// What the frame being read (or the request last read) holds of the
    /// server's memory budget; `None` without a budget.
    reservation: Option<Reservation>,
    /// The executable of the analysis request being read, hashed so far.
    executable_hash: Option<ExecutableHash>,
}

/// Where an analysis request's executable starts in its frame: after the command and the
/// field's length.
const EXECUTABLE_AT: usize = 8;
/// Most bytes hashed at once (about 0.15 ms): a read can bring megabytes, and the connections
/// sharing the thread get it back between slices.
const HASH_SLICE: usize = 256 * 1024;

/// The SHA-256 of field `[0]` of the request being read, over the bytes arrived so far.
#[derive(Debug)]
struct ExecutableHash {
    hasher: Sha256,
    /// Bytes of the field hashed.
    hashed: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, limits: Limits) -> FrameReader<R> {
        FrameReader {
            inner,
            buffer: BytesMut::new(),
            limits,
            frame_started: None,
            last_frame_started: None,
            reservation: None,
            executable_hash: None,
        }
    }

    /// Counts the frames read from now on against `budget`: a frame over
    /// [`UNCOUNTED_FRAME_BYTES`] is read only while the budget covers it. The
    /// bytes of a frame stay reserved until the next read starts (the request
    /// they became has been handled by then) or the reader is dropped.
    pub fn set_memory_budget(&mut self, budget: &MemoryBudget) {
        self.reservation = Some(budget.reservation());
    }

    /// When the frame last read got its first byte (a pipelined frame's, when the frame before
    /// it was read), so a server can time a request from its first byte: `None` before the
    /// first frame.
    pub fn last_frame_started(&self) -> Option<std::time::Instant> {
        self.last_frame_started.map(Instant::into_std)
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Changes the limits for the frames read from now on.
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Reads the next request. `Ok(None)` when the peer closed the stream
    /// between frames. After an error for which
    /// [`FrameError::keeps_stream`] is false the reader must not be used again.
    ///
    /// An analysis request with an executable comes with its SHA-256
    /// ([`Request::executable_sha256`]), hashed as the bytes arrived.
    pub async fn read_request(&mut self) -> Result<Option<Request>, FrameError> {
        let limits = self.limits;
        self.executable_hash = None;
        let scan = |buf: &[u8]| frame::scan_frame(buf, &limits);
        let Some((layout, frame)) = self.read_frame(scan, true).await? else {
            return Ok(None);
        };
        let digest = self.executable_hash.take().map(|hash| Sha256Hash(hash.hasher.finalize().into()));
        let request = frame::request_from(layout, &frame)?;
        Ok(Some(match digest {
            Some(digest) => request.with_executable_sha256(digest),
            None => request,
        }))
    }

    /// Reads the next response; `error_detail` tells whether this connection
    /// opted in to error details. `Ok(None)` when the peer closed the stream.
    pub async fn read_response(&mut self, error_detail: bool) -> Result<Option<Response>, FrameError> {
        let limits = self.limits;
        let scan = |buf: &[u8]| frame::scan_response(buf, &limits, error_detail);
        let Some((layout, frame)) = self.read_frame(scan, false).await? else { return Ok(None) };
        frame::response_from(layout, &frame).map(Some)
    }

    /// Reads the next frame; with `hash_executable`, hashes an analysis request's field `[0]`
    /// into [`FrameReader::executable_hash`] as it arrives.
    async fn read_frame(
        &mut self,
        scan: impl Fn(&[u8]) -> Result<Scan, FrameError>,
        hash_executable: bool,
    ) -> Result<Option<(FrameLayout, Bytes)>, FrameError> {
        if let Some(reservation) = &mut self.reservation {
            reservation.clear();
        }
        loop {
            // Scanned first: bytes of a frame refused for its size are not hashed.
            let scanned = scan(&self.buffer)?;
            if hash_executable {
                while self.hash_executable() {
                    tokio::task::yield_now().await;
                }
            }
            let at_least = match scanned {
                Scan::Complete(layout) => {
                    let frame = self.buffer.split_to(layout.len).freeze();
                    // A frame complete in bytes already buffered started when they came.
                    self.last_frame_started = Some(self.frame_started.unwrap_or_else(Instant::now));
                    // Bytes already here belong to the next (pipelined) frame,
                    // whose clock starts now.
                    self.frame_started = (!self.buffer.is_empty()).then(Instant::now);
                    return Ok(Some((layout, frame)));
                }
                Scan::Incomplete { at_least } => at_least,
            };
            self.reserve(at_least)?;
            let (deadline, timeout_error) = match self.frame_started {
                Some(started) => {
                    (started + self.limits.frame_timeout, FrameError::FrameTimeout(self.limits.frame_timeout))
                }
                None => (
                    Instant::now() + self.limits.idle_timeout,
                    FrameError::IdleTimeout(self.limits.idle_timeout),
                ),
            };
            let wanted = at_least.saturating_sub(self.buffer.len()).clamp(MIN_READ, MAX_READ);
            self.buffer.reserve(wanted);
            let read = tokio::time::timeout_at(deadline, self.inner.read_buf(&mut self.buffer))
                .await
                .map_err(|_| timeout_error)??;
            if read == 0 {
                return if self.buffer.is_empty() { Ok(None) } else { Err(FrameError::Truncated) };
            }
            self.frame_started.get_or_insert_with(Instant::now);
        }
    }

    /// Hashes up to [`HASH_SLICE`] of the bytes of an analysis request's field `[0]` that
    /// arrived and are not hashed yet; whether some of them are still left. A frame whose
    /// command is not an analysis, or that has no field, is not hashed.
    fn hash_executable(&mut self) -> bool {
        let (Some(command), Some(length)) = (u32_at(&self.buffer, 0), u32_at(&self.buffer, 4)) else {
            return false;
        };
        let analysis = Command::from_wire(command).is_some_and(|command| !command.analyses().is_empty());
        // An empty executable (a hash-only VirusTotal request) has nothing to hash.
        if !analysis || length == 0 || length == TERMINATOR_AS_LENGTH {
            return false;
        }
        let arrived = (EXECUTABLE_AT + length as usize).min(self.buffer.len());
        let hash =
            self.executable_hash.get_or_insert_with(|| ExecutableHash { hasher: Sha256::new(), hashed: 0 });
        let from = EXECUTABLE_AT + hash.hashed;
        let end = arrived.min(from + HASH_SLICE);
        if end > from {
            hash.hasher.update(&self.buffer[from..end]);
            hash.hashed = end - EXECUTABLE_AT;
        }
        arrived > end
    }

    /// Reserves `frame_bytes` for the frame being read, before its body is read.
    fn reserve(&mut self, frame_bytes: usize) -> Result<(), FrameError> {
        let Some(reservation) = &mut self.reservation else { return Ok(()) };
        if frame_bytes <= UNCOUNTED_FRAME_BYTES || reservation.grow_to(frame_bytes as u64) {
            return Ok(());
        }
        Err(FrameError::MemoryBudget { wanted: frame_bytes as u64 })
    }

    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes `request`, sending large fields straight from their buffers, and flushes.
pub async fn write_request<W: AsyncWrite + Unpin>(writer: &mut W, request: &Request) -> std::io::Result<()> {
    writer.write_all(&request.command().wire().to_le_bytes()).await?;
    for field in request.fields() {
        let len = u32::try_from(field.len()).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "a field over 4 GiB cannot be sent")
        })?;
        writer.write_all(&len.to_le_bytes()).await?;
        writer.write_all(field).await?;
    }
    writer.write_all(TERMINATOR).await?;
    writer.flush().await
}

/// Writes `response` in one write and flushes; see
/// [`encode_response`](crate::encode_response) for `error_detail`.
pub async fn write_response<W: AsyncWrite + Unpin>(
    writer: &mut W,
    response: &Response,
    error_detail: bool,
) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    frame::encode_response(response, error_detail, &mut out);
    writer.write_all(&out).await?;
    writer.flush().await
}
