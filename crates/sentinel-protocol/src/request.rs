//! A decoded request: the command and its fields, with typed accessors for
//! the fields §1.1 defines (`[0]` executable, `[1]` SHA-256, `[2]` VirusTotal
//! API key) and the check that the executable matches its hash.
//!
//! The API key is the client's secret: [`ApiKey`] and [`Request`] never print it.

use std::fmt;

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::command::Command;
use crate::response::Reason;

/// Index of the executable's bytes.
pub const FIELD_EXECUTABLE: usize = 0;
/// Index of the executable's SHA-256 (64 hex ASCII characters).
pub const FIELD_SHA256: usize = 1;
/// Index of the client's VirusTotal API key.
pub const FIELD_API_KEY: usize = 2;
/// Index of the first extension field.
pub const FIRST_EXTRA_FIELD: usize = 3;

/// The option name that turns on error details for a connection.
pub const OPTION_ERROR_DETAIL: &str = "error_detail";

/// The option name that makes a `Yes` answered from the safelist or badlist say so, and why.
pub const OPTION_LIST_DETAIL: &str = "list_detail";

/// One request.
#[derive(Clone)]
pub struct Request {
    command: Command,
    fields: Vec<Bytes>,
    /// The SHA-256 of field `[0]`, when the reader hashed it as it arrived.
    executable_sha256: Option<Sha256Hash>,
}

/// Requests are equal by what they say: the digest is only ever the one of their executable.
impl PartialEq for Request {
    fn eq(&self, other: &Request) -> bool {
        self.command == other.command && self.fields == other.fields
    }
}

impl Eq for Request {}

/// A field of a request that is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the SHA-256 field is not 64 hexadecimal characters")]
    InvalidSha256,
    #[error("the API key field is not printable ASCII")]
    InvalidApiKey,
    #[error("the {0} field is missing or empty")]
    MissingField(&'static str),
}

impl RequestError {
    /// The reason reported to clients that opted in to error details.
    pub fn reason(&self) -> Reason {
        match self {
            RequestError::InvalidSha256 | RequestError::InvalidApiKey => Reason::Malformed,
            RequestError::MissingField(_) => Reason::MissingField,
        }
    }
}

/// A SHA-256 digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Sha256Hash {
        Sha256Hash(Sha256::digest(bytes).into())
    }

    /// Parses 64 hex digits, either case.
    pub fn from_hex(text: &[u8]) -> Option<Sha256Hash> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text, &mut digest).ok()?;
        Some(Sha256Hash(digest))
    }

    /// Lower-case hex, the form stored and logged.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Hash({self})")
    }
}

/// A client's VirusTotal API key. Its `Debug` and `Display` are redacted so it
/// cannot reach a log by accident; [`ApiKey::expose`] is the one way to read it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ApiKey<'a>(&'a str);

impl<'a> ApiKey<'a> {
    /// The key itself, for the one place that sends it to VirusTotal.
    pub fn expose(&self) -> &'a str {
        self.0
    }
}

impl fmt::Debug for ApiKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl fmt::Display for ApiKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Request {
    /// A request with `fields` in wire order.
    pub fn new(command: Command, fields: Vec<Bytes>) -> Request {
        Request { command, fields, executable_sha256: None }
    }

    /// This request with the SHA-256 of its executable, which the caller computed from field
    /// `[0]` itself ([`crate::FrameReader`], as the bytes arrived).
    pub(crate) fn with_executable_sha256(self, digest: Sha256Hash) -> Request {
        debug_assert_eq!(Some(digest), self.executable().map(|executable| Sha256Hash::of(executable)));
        Request { executable_sha256: Some(digest), ..self }
    }

    /// The opt-in request turning on the named options for the connection.
    pub fn options(names: &[&str]) -> Request {
        let fields = names.iter().map(|name| Bytes::copy_from_slice(name.as_bytes())).collect();
        Request { command: Command::Options, fields, executable_sha256: None }
    }

    pub fn command(&self) -> Command {
        self.command
    }

    /// All fields, in wire order.
    pub fn fields(&self) -> &[Bytes] {
        &self.fields
    }

    /// Field `[0]`, the executable (may be empty, e.g. for command 3).
    pub fn executable(&self) -> Option<&Bytes> {
        self.fields.get(FIELD_EXECUTABLE)
    }

    /// The SHA-256 of field `[0]` when it is already known: a [`crate::FrameReader`] hashed the
    /// executable of an analysis request as its bytes arrived. `None` for a request built here,
    /// or without an executable.
    pub fn executable_sha256(&self) -> Option<Sha256Hash> {
        self.executable_sha256
    }

    /// Field `[1]` parsed; `None` when absent or empty.
    pub fn sha256(&self) -> Result<Option<Sha256Hash>, RequestError> {
        match self.fields.get(FIELD_SHA256) {
            None => Ok(None),
            Some(field) if field.is_empty() => Ok(None),
            Some(field) => Sha256Hash::from_hex(field).map(Some).ok_or(RequestError::InvalidSha256),
        }
    }

    /// Field `[2]`; `None` when absent or empty.
    pub fn api_key(&self) -> Result<Option<ApiKey<'_>>, RequestError> {
        match self.fields.get(FIELD_API_KEY) {
            None => Ok(None),
            Some(field) if field.is_empty() => Ok(None),
            Some(field) => {
                if !field.iter().all(|byte| byte.is_ascii_graphic()) {
                    return Err(RequestError::InvalidApiKey);
                }
                // Printable ASCII is valid UTF-8.
                std::str::from_utf8(field)
                    .map(|key| Some(ApiKey(key)))
                    .map_err(|_| RequestError::InvalidApiKey)
            }
        }
    }

    /// Fields `[3..]`, reserved for extensions and tolerated.
    pub fn extra_fields(&self) -> &[Bytes] {
        self.fields.get(FIRST_EXTRA_FIELD..).unwrap_or_default()
    }
}

impl fmt::Debug for Request {
    /// Field sizes only: fields hold executables and the client's API key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sizes: Vec<usize> = self.fields.iter().map(Bytes::len).collect();
        f.debug_struct("Request").field("command", &self.command).field("field_sizes", &sizes).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(fields: &[&[u8]]) -> Request {
        Request::new(Command::AllAnalyse, fields.iter().map(|f| Bytes::copy_from_slice(f)).collect())
    }

    const ABC_SHA256: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn the_hash_field_is_parsed_in_either_case_and_absent_when_empty() {
        let upper = request(&[b"abc", ABC_SHA256.to_uppercase().as_bytes()]);
        assert_eq!(upper.sha256().unwrap().unwrap().to_hex(), ABC_SHA256);
        assert_eq!(upper.sha256().unwrap(), Some(Sha256Hash::of(b"abc")));
        assert_eq!(request(&[b"abc", b"zz"]).sha256(), Err(RequestError::InvalidSha256));
        assert_eq!(request(&[b"abc"]).sha256(), Ok(None));
        assert_eq!(request(&[]).sha256(), Ok(None));
        assert_eq!(request(&[b"", b""]).sha256(), Ok(None));
    }

    #[test]
    fn the_api_key_is_validated_and_never_printed() {
        let with_key = request(&[b"", b"", b"secret-key-123", b"extra"]);
        let key = with_key.api_key().unwrap().unwrap();
        assert_eq!(key.expose(), "secret-key-123");
        assert!(!format!("{key:?} {key} {with_key:?}").contains("secret"));
        assert_eq!(with_key.extra_fields().len(), 1);
        assert_eq!(request(&[b"", b"", b"bad key"]).api_key(), Err(RequestError::InvalidApiKey));
        assert_eq!(request(&[b"", b"", b""]).api_key(), Ok(None));
        assert!(request(&[b""]).extra_fields().is_empty());
    }
}
