//! The TCP protocol between central servers and the malware AI server
//! (SPEC §1.1), with this implementation's opt-in extensions: error details
//! after a `No`, list details after a `Yes` answered from the safelist or
//! badlist.
//!
//! A request is a `u32` command, length-prefixed fields and the terminator
//! `_END`; a response is `Yes` (1029) with f32 score fields and `_END`, or a
//! bare `No` (1030). `docs/protocol.md` describes the bytes with examples.
//!
//! The crate has three layers: a pure decoder/encoder over byte slices
//! ([`decode_request`], [`encode_response`]…) that fuzzing and golden tests
//! drive; [`FrameReader`] and the `write_*` functions, which run that decoder
//! over async streams with size limits and timeouts ([`Limits`]); and
//! [`Client`], the async client used by the command line, the tests and the
//! load generator.

mod budget;
mod client;
mod command;
mod frame;
mod limits;
mod request;
mod response;
mod stream;

pub use budget::{MemoryBudget, Reservation, UNCOUNTED_FRAME_BYTES};
pub use client::{Client, ClientError};
pub use command::{Analysis, Command};
pub use frame::{
    AnswerOptions, FrameError, STATUS_NO, STATUS_YES, TERMINATOR, TERMINATOR_AS_LENGTH, decode_request,
    decode_response, encode_answer, encode_request, encode_response,
};
pub use limits::{Limits, LimitsError};
pub use request::{
    ApiKey, FIELD_API_KEY, FIELD_EXECUTABLE, FIELD_SHA256, FIRST_EXTRA_FIELD, OPTION_ERROR_DETAIL,
    OPTION_LIST_DETAIL, Request, RequestError, Sha256Hash,
};
pub use response::{ErrorDetail, ListDetail, MAX_MESSAGE_LEN, Reason, Response};
pub use stream::{FrameReader, write_request, write_response};
