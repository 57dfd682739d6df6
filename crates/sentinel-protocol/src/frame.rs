//! The byte layout of §1.1 and a pure decoder and encoder for it.
//!
//! The decoder works on a byte slice and never blocks: it either finds a whole
//! frame, asks for more bytes, or fails. Limits are checked as soon as a length
//! header is visible, so an oversized announcement is refused before its body
//! arrives. The async [`FrameReader`](crate::FrameReader) drives this same
//! decoder, so what the fuzzer and golden tests exercise is what serves traffic.

use std::ops::Range;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

use crate::command::Command;
use crate::limits::Limits;
use crate::request::Request;
use crate::response::{ErrorDetail, ListDetail, Reason, Response};

/// The 4 bytes that end a frame's fields.
pub const TERMINATOR: &[u8; 4] = b"_END";
/// The terminator read as a little-endian length: no field may be this large.
pub const TERMINATOR_AS_LENGTH: u32 = u32::from_le_bytes(*TERMINATOR);
/// Response status: success, fields follow.
pub const STATUS_YES: u32 = 1029;
/// Response status: failure; nothing follows unless the connection opted in to details.
pub const STATUS_NO: u32 = 1030;

/// Why bytes could not be read as a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("a field of {size} bytes is over the limit of {limit} bytes")]
    FieldTooLarge { size: u32, limit: u32 },
    #[error("more than {limit} fields")]
    TooManyFields { limit: usize },
    #[error("the frame is over the limit of {limit} bytes")]
    FrameTooLarge { limit: u64 },
    /// A complete, well-framed request with a command this side does not know:
    /// the stream is still in sync, `frame_len` bytes were consumed.
    #[error("unknown command {command}")]
    UnknownCommand { command: u32, frame_len: usize },
    #[error("unknown response status {0}")]
    UnknownStatus(u32),
    #[error("a score field of {0} bytes (scores are 4-byte f32)")]
    BadScore(usize),
    #[error("a malformed error detail")]
    BadErrorDetail,
    #[error("a malformed list detail")]
    BadListDetail,
    #[error("the connection closed in the middle of a frame")]
    Truncated,
    #[error("the frame was not complete within {0:?}")]
    FrameTimeout(Duration),
    #[error("no frame within {0:?}")]
    IdleTimeout(Duration),
    /// The memory budget of frames being read cannot cover this frame now.
    #[error(
        "the server cannot take a frame of {wanted} bytes now: the memory for frames being read is in use"
    )]
    MemoryBudget { wanted: u64 },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// Whether the stream is still in sync after this error, so the connection
    /// can carry on after answering `No`. Every other error loses the framing.
    pub fn keeps_stream(&self) -> bool {
        matches!(self, FrameError::UnknownCommand { .. })
    }

    /// The reason reported to clients that opted in to error details.
    pub fn reason(&self) -> Reason {
        match self {
            FrameError::FieldTooLarge { .. }
            | FrameError::TooManyFields { .. }
            | FrameError::FrameTooLarge { .. } => Reason::TooLarge,
            FrameError::UnknownCommand { .. } => Reason::UnknownCommand,
            FrameError::FrameTimeout(_) | FrameError::IdleTimeout(_) => Reason::Timeout,
            FrameError::MemoryBudget { .. } => Reason::Busy,
            FrameError::UnknownStatus(_)
            | FrameError::BadScore(_)
            | FrameError::BadErrorDetail
            | FrameError::BadListDetail
            | FrameError::Truncated => Reason::Malformed,
            FrameError::Io(_) => Reason::Internal,
        }
    }
}

/// Where a frame's parts lie in a buffer.
#[derive(Debug)]
pub(crate) struct FrameLayout {
    /// The first u32: a command or a status.
    pub head: u32,
    pub fields: Vec<Range<usize>>,
    /// Total length, terminator included (4 for a bare `No`).
    pub len: usize,
}

/// The outcome of scanning a buffer for one frame.
#[derive(Debug)]
pub(crate) enum Scan {
    Complete(FrameLayout),
    /// The buffer holds a valid beginning; at least this many bytes are needed.
    Incomplete {
        at_least: usize,
    },
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Scans `head, fields…, _END`, checking every limit as soon as the bytes that
/// could break it are visible.
pub(crate) fn scan_frame(buf: &[u8], limits: &Limits) -> Result<Scan, FrameError> {
    let Some(head) = u32_at(buf, 0) else { return Ok(Scan::Incomplete { at_least: 4 }) };
    scan_fields(buf, head, limits)
}

fn scan_fields(buf: &[u8], head: u32, limits: &Limits) -> Result<Scan, FrameError> {
    let mut fields = Vec::new();
    let mut at = 4usize;
    loop {
        let Some(word) = u32_at(buf, at) else { return Ok(Scan::Incomplete { at_least: at + 4 }) };
        if word == TERMINATOR_AS_LENGTH {
            return Ok(Scan::Complete(FrameLayout { head, fields, len: at + 4 }));
        }
        if fields.len() >= limits.max_fields {
            return Err(FrameError::TooManyFields { limit: limits.max_fields });
        }
        if word > limits.max_field_size {
            return Err(FrameError::FieldTooLarge { size: word, limit: limits.max_field_size });
        }
        let body = at + 4;
        let end = body + word as usize;
        // The terminator still has to come: count it now so a frame that can
        // only end over the limit is refused before its body is read.
        if end as u64 + 4 > limits.max_frame_size {
            return Err(FrameError::FrameTooLarge { limit: limits.max_frame_size });
        }
        if buf.len() < end {
            return Ok(Scan::Incomplete { at_least: end + 4 });
        }
        fields.push(body..end);
        at = end;
    }
}

/// Scans a response; on a connection without error details a `No` is the bare status.
pub(crate) fn scan_response(buf: &[u8], limits: &Limits, error_detail: bool) -> Result<Scan, FrameError> {
    let Some(status) = u32_at(buf, 0) else { return Ok(Scan::Incomplete { at_least: 4 }) };
    match status {
        STATUS_YES => scan_fields(buf, status, limits),
        STATUS_NO if error_detail => scan_fields(buf, status, limits),
        STATUS_NO => Ok(Scan::Complete(FrameLayout { head: status, fields: Vec::new(), len: 4 })),
        other => Err(FrameError::UnknownStatus(other)),
    }
}

/// Builds the request of a scanned frame whose bytes are `frame`.
pub(crate) fn request_from(layout: FrameLayout, frame: &Bytes) -> Result<Request, FrameError> {
    let Some(command) = Command::from_wire(layout.head) else {
        return Err(FrameError::UnknownCommand { command: layout.head, frame_len: layout.len });
    };
    Ok(Request::new(command, layout.fields.into_iter().map(|range| frame.slice(range)).collect()))
}

/// Builds the response of a scanned frame whose bytes are `frame`.
pub(crate) fn response_from(layout: FrameLayout, frame: &[u8]) -> Result<Response, FrameError> {
    let fields = layout.fields.into_iter().map(|range| &frame[range]);
    if layout.head == STATUS_YES {
        let fields: Vec<&[u8]> = fields.collect();
        // An empty field is no score: it opens the list detail.
        let (scores, detail) = match fields.iter().position(|field| field.is_empty()) {
            Some(at) => (&fields[..at], Some(&fields[at + 1..])),
            None => (&fields[..], None),
        };
        let scores = scores
            .iter()
            .map(|field| {
                <[u8; 4]>::try_from(*field)
                    .map(f32::from_le_bytes)
                    .map_err(|_| FrameError::BadScore(field.len()))
            })
            .collect::<Result<Vec<f32>, FrameError>>()?;
        let Some(detail) = detail else { return Ok(Response::Yes(scores)) };
        // list, reason, source; later fields are for future use.
        let text = |index: usize| detail.get(index).map(|field| String::from_utf8_lossy(field).into_owned());
        let (Some(list), Some(reason), Some(source)) = (text(0), text(1), text(2)) else {
            return Err(FrameError::BadListDetail);
        };
        return Ok(Response::Listed(scores, ListDetail { list, reason, source }));
    }
    let fields: Vec<&[u8]> = fields.collect();
    if fields.is_empty() && layout.len == 4 {
        return Ok(Response::No(None));
    }
    // code, name, then optional step and message; later fields are for future use.
    let code = fields
        .first()
        .and_then(|field| <[u8; 4]>::try_from(*field).ok())
        .map(u32::from_le_bytes)
        .ok_or(FrameError::BadErrorDetail)?;
    let text = |index: usize| fields.get(index).map(|field| String::from_utf8_lossy(field).into_owned());
    let name = text(1).ok_or(FrameError::BadErrorDetail)?;
    let step = text(2).filter(|step| !step.is_empty());
    let message = text(3).unwrap_or_default();
    Ok(Response::No(Some(ErrorDetail::from_wire(code, name, step, message))))
}

/// Decodes one request from the start of `buf`: `Ok(None)` when more bytes
/// are needed, else the request and how many bytes it took.
pub fn decode_request(buf: &[u8], limits: &Limits) -> Result<Option<(Request, usize)>, FrameError> {
    match scan_frame(buf, limits)? {
        Scan::Incomplete { .. } => Ok(None),
        Scan::Complete(layout) => {
            let len = layout.len;
            let frame = Bytes::copy_from_slice(&buf[..len]);
            Ok(Some((request_from(layout, &frame)?, len)))
        }
    }
}

/// Decodes one response from the start of `buf`, `error_detail` telling
/// whether the connection opted in (which changes what a `No` looks like).
pub fn decode_response(
    buf: &[u8],
    limits: &Limits,
    error_detail: bool,
) -> Result<Option<(Response, usize)>, FrameError> {
    match scan_response(buf, limits, error_detail)? {
        Scan::Incomplete { .. } => Ok(None),
        Scan::Complete(layout) => {
            let len = layout.len;
            Ok(Some((response_from(layout, buf)?, len)))
        }
    }
}

fn put_field(out: &mut BytesMut, field: &[u8]) {
    // Fields longer than u32::MAX cannot be framed; callers build requests from
    // files they have already bounded, and the decoder refuses such lengths anyway.
    out.put_u32_le(u32::try_from(field.len()).unwrap_or(u32::MAX));
    out.put_slice(field);
}

/// Appends the frame of `request` to `out`.
pub fn encode_request(request: &Request, out: &mut BytesMut) {
    out.put_u32_le(request.command().wire());
    for field in request.fields() {
        put_field(out, field);
    }
    out.put_slice(TERMINATOR);
}

/// What a connection turned on with the options request: it changes how answers are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnswerOptions {
    /// Every `No` carries an error detail.
    pub error_detail: bool,
    /// A `Yes` answered from a list carries which list, and why.
    pub list_detail: bool,
}

/// Appends the frame of `response` to `out`. `error_detail` tells whether the
/// connection opted in: without it a `No` is the bare status, whatever detail
/// the response holds. With it every `No` carries a detail (`internal` when the
/// response has none), so the client can always read the fields it expects.
/// A [`Response::Listed`] is written as a plain `Yes`.
pub fn encode_response(response: &Response, error_detail: bool, out: &mut BytesMut) {
    encode_answer(response, AnswerOptions { error_detail, list_detail: false }, out);
}

/// Appends the frame of `response` to `out` as a connection with `options` expects it: as
/// [`encode_response`] does, and with `list_detail` a [`Response::Listed`] carries its detail
/// after its scores: an empty field, then the list, the reason and the source.
pub fn encode_answer(response: &Response, options: AnswerOptions, out: &mut BytesMut) {
    let error_detail = options.error_detail;
    match response {
        Response::Yes(scores) | Response::Listed(scores, _) => {
            out.put_u32_le(STATUS_YES);
            for score in scores {
                put_field(out, &score.to_le_bytes());
            }
            if let (Response::Listed(_, detail), true) = (response, options.list_detail) {
                put_field(out, &[]);
                put_field(out, detail.list.as_bytes());
                put_field(out, detail.reason.as_bytes());
                put_field(out, detail.source.as_bytes());
            }
            out.put_slice(TERMINATOR);
        }
        Response::No(detail) => {
            out.put_u32_le(STATUS_NO);
            if !error_detail {
                return;
            }
            let internal = ErrorDetail::new(Reason::Internal);
            let detail = detail.as_ref().unwrap_or(&internal);
            put_field(out, &detail.code().to_le_bytes());
            put_field(out, detail.name().as_bytes());
            put_field(out, detail.step().unwrap_or_default().as_bytes());
            put_field(out, detail.message().as_bytes());
            out.put_slice(TERMINATOR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Analysis;

    #[test]
    fn encoded_frames_decode_to_themselves() {
        let request = Request::new(
            Command::StaticAnalyseWithVt,
            vec![Bytes::from_static(b"MZ"), Bytes::new(), Bytes::from_static(b"key")],
        );
        let mut out = BytesMut::new();
        encode_request(&request, &mut out);
        let (decoded, len) = decode_request(&out, &Limits::default()).unwrap().unwrap();
        assert_eq!((decoded, len), (request, out.len()));

        let detail =
            ErrorDetail::new(Reason::QuotaExceeded).with_step(Analysis::VirusTotal).with_message("429");
        for (response, error_detail) in [
            (Response::Yes(vec![0.25, 0.5]), false),
            (Response::No(None), false),
            (Response::failure(detail), true),
        ] {
            let mut out = BytesMut::new();
            encode_response(&response, error_detail, &mut out);
            let (decoded, len) = decode_response(&out, &Limits::default(), error_detail).unwrap().unwrap();
            assert_eq!((decoded, len), (response, out.len()));
        }
    }

    #[test]
    fn a_listed_yes_carries_its_detail_only_when_asked() {
        let detail = ListDetail::new("badlist", "ransomware, ticket 42", "soc");
        let listed = Response::Listed(vec![1.0, 1.0], detail);
        let mut plain = BytesMut::new();
        encode_response(&listed, true, &mut plain);
        let (decoded, _) = decode_response(&plain, &Limits::default(), true).unwrap().unwrap();
        assert_eq!(decoded, Response::Yes(vec![1.0, 1.0]));
        let mut detailed = BytesMut::new();
        encode_answer(&listed, AnswerOptions { error_detail: false, list_detail: true }, &mut detailed);
        let (decoded, len) = decode_response(&detailed, &Limits::default(), false).unwrap().unwrap();
        assert_eq!((decoded, len), (listed, detailed.len()));
        // An empty field without the three texts after it is not a detail.
        let mut short = BytesMut::new();
        short.put_u32_le(STATUS_YES);
        put_field(&mut short, &1.0f32.to_le_bytes());
        put_field(&mut short, &[]);
        put_field(&mut short, b"badlist");
        short.put_slice(TERMINATOR);
        assert!(matches!(decode_response(&short, &Limits::default(), false), Err(FrameError::BadListDetail)));
    }

    #[test]
    fn a_no_without_opt_in_is_exactly_the_status() {
        let mut out = BytesMut::new();
        encode_response(&Response::failure(ErrorDetail::new(Reason::NotPe)), false, &mut out);
        assert_eq!(&out[..], &STATUS_NO.to_le_bytes());
    }

    #[test]
    fn every_prefix_of_a_frame_is_incomplete_not_an_error() {
        let request = Request::new(Command::AllAnalyse, vec![Bytes::from_static(b"abc"), Bytes::new()]);
        let mut out = BytesMut::new();
        encode_request(&request, &mut out);
        for end in 0..out.len() {
            assert!(decode_request(&out[..end], &Limits::default()).unwrap().is_none(), "prefix {end}");
        }
    }
}
