//! Responses: `Yes` with its f32 scores, `No`, the opt-in error detail a
//! `No` carries on connections that asked for it, and the opt-in list detail of
//! a `Yes` answered from the safelist or badlist.

use std::fmt;

use crate::command::Analysis;

/// A response frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    /// Status 1029. For analyses: the combined verdict `y`, then one score per
    /// analysis performed, in the order performed. For [`Command::Options`]:
    /// one value per requested option, 1.0 when turned on, 0.0 when unknown.
    ///
    /// [`Command::Options`]: crate::Command::Options
    Yes(Vec<f32>),
    /// Status 1029 answered from the safelist or badlist, without analysis: the
    /// scores of a `Yes` (the list's verdict in every place) and the entry that
    /// gave them. Written as a plain `Yes` unless the connection turned on
    /// `list_detail`; then the scores are followed by an empty field and the
    /// detail's fields.
    Listed(Vec<f32>, ListDetail),
    /// Status 1030. The detail is written only on connections that opted in;
    /// elsewhere a `No` is exactly the 4 status bytes whatever it holds here.
    No(Option<ErrorDetail>),
}

impl Response {
    /// A `No` carrying why, for connections that opted in.
    pub fn failure(detail: ErrorDetail) -> Response {
        Response::No(Some(detail))
    }

    /// The combined verdict of a `Yes`.
    pub fn verdict(&self) -> Option<f32> {
        match self {
            Response::Yes(scores) | Response::Listed(scores, _) => scores.first().copied(),
            Response::No(_) => None,
        }
    }

    /// The scores of a `Yes`, listed or not.
    pub fn scores(&self) -> Option<&[f32]> {
        match self {
            Response::Yes(scores) | Response::Listed(scores, _) => Some(scores),
            Response::No(_) => None,
        }
    }
}

/// Which list answered a `Yes`, and why: sent after the scores on connections
/// that turned on `list_detail`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListDetail {
    /// `safelist` or `badlist`.
    pub list: String,
    /// Why the hash is listed, at most [`MAX_MESSAGE_LEN`] bytes.
    pub reason: String,
    /// Where the decision comes from (a ticket, a feed, an analyst).
    pub source: String,
}

impl ListDetail {
    /// A detail with the texts cut to [`MAX_MESSAGE_LEN`] bytes.
    pub fn new(list: impl Into<String>, reason: impl Into<String>, source: impl Into<String>) -> ListDetail {
        ListDetail {
            list: truncated(list.into()),
            reason: truncated(reason.into()),
            source: truncated(source.into()),
        }
    }
}

/// `text` cut to [`MAX_MESSAGE_LEN`] bytes on a character boundary.
fn truncated(mut text: String) -> String {
    if text.len() > MAX_MESSAGE_LEN {
        let mut end = MAX_MESSAGE_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Why a request failed: a stable numeric code (what programs should match on)
/// and a stable name (what people read). Codes are never reused or renumbered;
/// new reasons get new codes, so clients must accept codes they do not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// 1: the bytes are not a valid request (bad framing, truncated, a field of
    /// the wrong form such as a SHA-256 that is not 64 hex digits).
    Malformed,
    /// 2: the command value is not one this server knows.
    UnknownCommand,
    /// 3: a field, the field count or the whole frame is over the server's limits.
    TooLarge,
    /// 4: the frame did not arrive in time, or an analysis ran out of time.
    Timeout,
    /// 5: the executable does not hash to the SHA-256 given with it.
    HashMismatch,
    /// 6: a field the command needs is absent or empty.
    MissingField,
    /// 7: the executable is not a PE file.
    NotPe,
    /// 8: the analysis is not available on this server (not configured, no model).
    Unavailable,
    /// 9: the server is saturated (no analysis worker free, or the memory budget of
    /// frames being read is spent); retry later.
    Busy,
    /// 10: the server failed (storage, a bug); the request may be retried.
    Internal,
    /// 11: the client's VirusTotal quota is exhausted.
    QuotaExceeded,
    /// 12: VirusTotal refused the client's API key.
    WrongCredentials,
    /// 13: the sample is unknown (to VirusTotal) and no executable was sent to upload.
    NotFound,
    /// 14: the analysis ran but gave nothing to score: the sandbox's analysis of the
    /// executable failed, or its report was unusable or held no API call.
    AnalysisFailed,
    /// 15: this client is over its own limits (request rate, requests in flight);
    /// retry later. Other clients are not affected (that would be `busy`).
    RateLimited,
}

impl Reason {
    /// Every reason, in code order.
    pub const ALL: [Reason; 15] = [
        Reason::Malformed,
        Reason::UnknownCommand,
        Reason::TooLarge,
        Reason::Timeout,
        Reason::HashMismatch,
        Reason::MissingField,
        Reason::NotPe,
        Reason::Unavailable,
        Reason::Busy,
        Reason::Internal,
        Reason::QuotaExceeded,
        Reason::WrongCredentials,
        Reason::NotFound,
        Reason::AnalysisFailed,
        Reason::RateLimited,
    ];

    /// The stable numeric code.
    pub fn code(self) -> u32 {
        match self {
            Reason::Malformed => 1,
            Reason::UnknownCommand => 2,
            Reason::TooLarge => 3,
            Reason::Timeout => 4,
            Reason::HashMismatch => 5,
            Reason::MissingField => 6,
            Reason::NotPe => 7,
            Reason::Unavailable => 8,
            Reason::Busy => 9,
            Reason::Internal => 10,
            Reason::QuotaExceeded => 11,
            Reason::WrongCredentials => 12,
            Reason::NotFound => 13,
            Reason::AnalysisFailed => 14,
            Reason::RateLimited => 15,
        }
    }

    /// The stable name.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnknownCommand => "unknown_command",
            Reason::TooLarge => "too_large",
            Reason::Timeout => "timeout",
            Reason::HashMismatch => "hash_mismatch",
            Reason::MissingField => "missing_field",
            Reason::NotPe => "not_pe",
            Reason::Unavailable => "unavailable",
            Reason::Busy => "busy",
            Reason::Internal => "internal",
            Reason::QuotaExceeded => "quota_exceeded",
            Reason::WrongCredentials => "wrong_credentials",
            Reason::NotFound => "not_found",
            Reason::AnalysisFailed => "analysis_failed",
            Reason::RateLimited => "rate_limited",
        }
    }

    /// The reason for a code, `None` for codes this side does not know.
    pub fn from_code(code: u32) -> Option<Reason> {
        Reason::ALL.into_iter().find(|reason| reason.code() == code)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The machine-readable reason sent after a `No` status on connections that
/// opted in: the reason's code and name, the analysis step that failed (for
/// combined commands) and a short message for people.
///
/// Kept as received (code and name rather than a [`Reason`]) so a client can
/// show reasons added by newer servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    code: u32,
    name: String,
    step: Option<String>,
    message: String,
}

/// Longest message sent, in bytes: details are for diagnosis, not for payloads.
pub const MAX_MESSAGE_LEN: usize = 512;

impl ErrorDetail {
    /// A detail for `reason`, with no step and no message.
    pub fn new(reason: Reason) -> ErrorDetail {
        ErrorDetail {
            code: reason.code(),
            name: reason.name().to_owned(),
            step: None,
            message: String::new(),
        }
    }

    /// Names the analysis step that failed.
    pub fn with_step(mut self, step: Analysis) -> ErrorDetail {
        self.step = Some(step.name().to_owned());
        self
    }

    /// Adds a message for people, cut to [`MAX_MESSAGE_LEN`] bytes.
    pub fn with_message(mut self, message: impl Into<String>) -> ErrorDetail {
        self.message = truncated(message.into());
        self
    }

    pub(crate) fn from_wire(code: u32, name: String, step: Option<String>, message: String) -> ErrorDetail {
        ErrorDetail { code, name, step, message }
    }

    /// The numeric reason code.
    pub fn code(&self) -> u32 {
        self.code
    }

    /// The reason's name as sent.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The reason, when this side knows the code.
    pub fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.code)
    }

    /// The analysis step that failed, if the failure belongs to one.
    pub fn step(&self) -> Option<&str> {
        self.step.as_deref()
    }

    /// The message for people (may be empty).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.code)?;
        if let Some(step) = &self.step {
            write!(f, " in step {step}")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_stable_and_distinct() {
        let codes: Vec<u32> = Reason::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes, (1..=15).collect::<Vec<u32>>());
        for reason in Reason::ALL {
            assert_eq!(Reason::from_code(reason.code()), Some(reason));
        }
        assert_eq!(Reason::from_code(0), None);
        assert_eq!(Reason::NotPe.name(), "not_pe");
        assert_eq!((Reason::RateLimited.code(), Reason::RateLimited.name()), (15, "rate_limited"));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let detail = ErrorDetail::new(Reason::Internal).with_message("é".repeat(MAX_MESSAGE_LEN));
        assert_eq!(detail.message().len(), MAX_MESSAGE_LEN);
        let detail = ErrorDetail::new(Reason::Internal).with_message(format!("a{}", "é".repeat(300)));
        assert_eq!(detail.message().len(), MAX_MESSAGE_LEN - 1);
    }
}
