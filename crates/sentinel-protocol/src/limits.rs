//! The bounds every frame reader enforces, so that a peer cannot make this
//! side allocate, wait or loop without limit.
//!
//! Sizes are checked from the length headers, before any body byte is read:
//! a peer announcing a 1 GiB field is refused after sending 12 bytes.

use std::time::Duration;

use crate::frame::TERMINATOR_AS_LENGTH;

/// Frame size and time limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted field, in bytes. Must stay below `"_END"` read as a
    /// length (0x444E455F), or a terminator could be taken for a length.
    pub max_field_size: u32,
    /// Most fields in one frame (the specification defines 3; extensions add more).
    pub max_fields: usize,
    /// Largest frame, all headers and fields included.
    pub max_frame_size: u64,
    /// Time allowed from a frame's first byte to its last: a client trickling
    /// bytes cannot hold a connection for longer.
    pub frame_timeout: Duration,
    /// Time allowed between frames before the connection is closed.
    pub idle_timeout: Duration,
}

/// A limit that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("max_field_size {0} must be between 1 and {max} bytes", max = TERMINATOR_AS_LENGTH - 1)]
    FieldSize(u32),
    #[error("max_fields must be at least 1")]
    NoFields,
    #[error("max_frame_size {frame} is smaller than max_field_size {field} plus headers")]
    FrameSmallerThanField { frame: u64, field: u32 },
    #[error("timeouts must be longer than zero")]
    ZeroTimeout,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_field_size: 64 * 1024 * 1024,
            max_fields: 16,
            max_frame_size: 80 * 1024 * 1024,
            frame_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl Limits {
    /// Checks that these limits can accept at least one maximal field and that
    /// no field length can be confused with the terminator.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if self.max_field_size == 0 || self.max_field_size >= TERMINATOR_AS_LENGTH {
            return Err(LimitsError::FieldSize(self.max_field_size));
        }
        if self.max_fields == 0 {
            return Err(LimitsError::NoFields);
        }
        // command + one length header + the field + terminator.
        if self.max_frame_size < u64::from(self.max_field_size) + 12 {
            return Err(LimitsError::FrameSmallerThanField {
                frame: self.max_frame_size,
                field: self.max_field_size,
            });
        }
        if self.frame_timeout.is_zero() || self.idle_timeout.is_zero() {
            return Err(LimitsError::ZeroTimeout);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_impossible_limits_are_refused() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let limits = Limits { max_field_size: TERMINATOR_AS_LENGTH, ..Limits::default() };
        assert!(matches!(limits.validate(), Err(LimitsError::FieldSize(_))));
        let limits = Limits { max_frame_size: 100, ..Limits::default() };
        assert!(matches!(limits.validate(), Err(LimitsError::FrameSmallerThanField { .. })));
        let limits = Limits { max_fields: 0, ..Limits::default() };
        assert_eq!(limits.validate(), Err(LimitsError::NoFields));
        let limits = Limits { idle_timeout: Duration::ZERO, ..Limits::default() };
        assert_eq!(limits.validate(), Err(LimitsError::ZeroTimeout));
    }
}
