//! Reading and writing frames over async byte streams.
//!
//! [`FrameReader`] buffers bytes from the stream and hands them to the pure
//! decoder of [`frame`](crate::frame) until a frame is complete, so limits are
//! enforced by the same code the fuzzer exercises. It also owns the two
//! timeouts: the idle timeout runs while no frame has started, the frame
//! timeout from a frame's first byte to its last. Given a [`MemoryBudget`], it
//! reserves each frame's announced bytes before reading them.

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::budget::{MemoryBudget, Reservation, UNCOUNTED_FRAME_BYTES};
use crate::frame::{self, FrameError, FrameLayout, Scan, TERMINATOR};
use crate::limits::Limits;
use crate::request::Request;
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
    pub async fn read_request(&mut self) -> Result<Option<Request>, FrameError> {
        let limits = self.limits;
        let Some((layout, frame)) = self.read_frame(|buf| frame::scan_frame(buf, &limits)).await? else {
            return Ok(None);
        };
        frame::request_from(layout, &frame).map(Some)
    }

    /// Reads the next response; `error_detail` tells whether this connection
    /// opted in to error details. `Ok(None)` when the peer closed the stream.
    pub async fn read_response(&mut self, error_detail: bool) -> Result<Option<Response>, FrameError> {
        let limits = self.limits;
        let scan = |buf: &[u8]| frame::scan_response(buf, &limits, error_detail);
        let Some((layout, frame)) = self.read_frame(scan).await? else { return Ok(None) };
        frame::response_from(layout, &frame).map(Some)
    }

    async fn read_frame(
        &mut self,
        scan: impl Fn(&[u8]) -> Result<Scan, FrameError>,
    ) -> Result<Option<(FrameLayout, Bytes)>, FrameError> {
        if let Some(reservation) = &mut self.reservation {
            reservation.clear();
        }
        loop {
            let at_least = match scan(&self.buffer)? {
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
