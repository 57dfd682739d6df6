//! A memory budget shared by every connection of a server for the frames they
//! are reading, so that many clients announcing large fields at once cannot
//! take the memory between them.
//!
//! A [`FrameReader`](crate::FrameReader) given a budget reserves a frame's
//! bytes as soon as a length header announces them, before reading (and so
//! before allocating) the body; the reservation lasts until the reader starts
//! on the next frame, which on a server is after the request was answered.
//! When the budget cannot cover a frame the reader fails with
//! [`FrameError::MemoryBudget`](crate::FrameError::MemoryBudget) at once
//! rather than waiting: the client is told the server is busy.
//!
//! Frames up to [`UNCOUNTED_FRAME_BYTES`] are not counted: what they hold is
//! already bounded by the number of connections, and the small requests
//! (options, a lookup by hash) keep working while large uploads hold the budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Frames up to this size are read without a reservation.
pub const UNCOUNTED_FRAME_BYTES: usize = 64 * 1024;

/// Bytes available to frames being read, shared by clones.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    inner: Arc<Counter>,
}

#[derive(Debug)]
struct Counter {
    capacity: u64,
    used: AtomicU64,
}

impl MemoryBudget {
    /// A budget of `capacity` bytes.
    pub fn new(capacity: u64) -> MemoryBudget {
        MemoryBudget { inner: Arc::new(Counter { capacity, used: AtomicU64::new(0) }) }
    }

    /// The budget's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.inner.capacity
    }

    /// Bytes reserved now.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Relaxed)
    }

    /// An empty reservation to grow with [`Reservation::grow_to`].
    pub fn reservation(&self) -> Reservation {
        Reservation { budget: Arc::clone(&self.inner), bytes: 0 }
    }
}

/// Bytes taken from a [`MemoryBudget`], given back when dropped or cleared.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Counter>,
    bytes: u64,
}

impl Reservation {
    /// Makes the reservation at least `bytes`; `false` (and unchanged) when the
    /// budget does not have the difference.
    pub fn grow_to(&mut self, bytes: u64) -> bool {
        let Some(more) = bytes.checked_sub(self.bytes).filter(|more| *more > 0) else { return true };
        let taken = self.budget.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            used.checked_add(more).filter(|total| *total <= self.budget.capacity)
        });
        if taken.is_ok() {
            self.bytes = bytes;
        }
        taken.is_ok()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives everything back.
    pub fn clear(&mut self) {
        if self.bytes > 0 {
            self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
            self.bytes = 0;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_budget_and_give_it_back() {
        let budget = MemoryBudget::new(100);
        let mut first = budget.reservation();
        let mut second = budget.reservation();
        assert!(first.grow_to(60));
        assert!(!second.grow_to(50), "60 + 50 is over 100");
        assert_eq!((second.bytes(), budget.used()), (0, 60));
        assert!(second.grow_to(40));
        assert!(first.grow_to(60), "growing to what is held takes nothing");
        assert!(!first.grow_to(61));
        drop(first);
        assert_eq!(budget.used(), 40);
        second.clear();
        assert_eq!(budget.used(), 0);
        assert!(budget.reservation().grow_to(100));
    }

    /// A static-analysis frame with one field of `len` bytes.
    fn frame(len: usize) -> Vec<u8> {
        let mut frame = 1u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&(len as u32).to_le_bytes());
        frame.extend(std::iter::repeat_n(0x4d, len));
        frame.extend_from_slice(crate::TERMINATOR);
        frame
    }

    #[tokio::test]
    async fn a_reader_takes_a_large_frame_only_within_the_budget_and_frees_it_at_the_next_read() {
        use crate::{FrameError, FrameReader, Limits};
        let budget = MemoryBudget::new(300 * 1024);
        let held = {
            let mut other = budget.reservation();
            assert!(other.grow_to(200 * 1024));
            other
        };
        // 200 KiB held elsewhere: a 150 KiB frame is refused from its header, small frames pass.
        let mut bytes = frame(100);
        bytes.extend(frame(150 * 1024));
        let mut reader = FrameReader::new(&bytes[..], Limits::default());
        reader.set_memory_budget(&budget);
        assert_eq!(reader.read_request().await.unwrap().unwrap().fields()[0].len(), 100);
        let refused = reader.read_request().await.unwrap_err();
        assert!(matches!(refused, FrameError::MemoryBudget { wanted } if wanted > 150 * 1024), "{refused:?}");
        assert_eq!(refused.reason(), crate::Reason::Busy);
        assert_eq!(budget.used(), 200 * 1024);

        drop(held);
        let bytes = [frame(150 * 1024), frame(10)].concat();
        let mut reader = FrameReader::new(&bytes[..], Limits::default());
        reader.set_memory_budget(&budget);
        assert_eq!(reader.read_request().await.unwrap().unwrap().fields()[0].len(), 150 * 1024);
        assert!(budget.used() > 150 * 1024, "held while the request is handled");
        reader.read_request().await.unwrap().unwrap();
        assert_eq!(budget.used(), 0, "given back when the next frame is read");
    }
}
