//! One protocol connection: read a request, answer it, repeat.
//!
//! Requests on a connection are answered one at a time, in order (the
//! protocol has no request ids). Error details are sent only after the client
//! opted in with the options command. A request that fails gets `No` and the
//! connection goes on; when the framing is lost (oversized or malformed
//! headers, a truncated or timed-out frame) the connection is answered `No`
//! and closed, because the next bytes can no longer be trusted to start a
//! frame. An idle connection is closed without a word: an unsolicited `No`
//! would be read as the answer to the client's next request.
//!
//! A client may also turn on list details: a `Yes` answered from the safelist or
//! badlist then says which list, and why.
//!
//! The same code serves the plain port and the TLS port (the stream is any byte
//! stream). Per connection: the first request must start within
//! `first_byte_timeout`; frames are read within the server's memory budget
//! (`busy` when it is spent); each analysis request is admitted by the client's
//! limits (`rate_limited` when over them).
//!
//! Every request answered leaves one line in the access log (command, outcome and reason, bytes
//! read and written, latency), refused ones included; a connection that never sent a request
//! leaves a `connection` line through the refusal log instead.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use sentinel_protocol::{
    AnswerOptions, Command, ErrorDetail, FrameError, FrameReader, Limits, OPTION_ERROR_DETAIL,
    OPTION_LIST_DETAIL, Reason, Request, Response, TERMINATOR, encode_answer,
};
use sentinel_transport::{AccessEntry, AccessKind, AccessStatus, ClientKey};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;

use crate::stage_times::Stage;
use crate::state::Shared;
use crate::status::{COMMAND_INVALID, OUTCOME_YES};

/// Longest client name recorded with a verdict, in bytes (the store's limit for labels).
const MAX_CLIENT_LABEL: usize = 256;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    /// What its limits are counted against: its certificate's subject, else its address.
    pub key: ClientKey,
    /// How its verdicts name it: the subject's distinguished name, else the address in the form
    /// `[privacy] ip_storage` stores addresses (a pseudonym by default).
    pub label: String,
    /// The address it connects from.
    pub address: IpAddr,
    /// How the access log names it: `cert:SUBJECT` on a mutual-TLS connection, else nobody.
    pub principal: Option<String>,
    /// Its address as the access log writes it.
    pub rendered_address: String,
}

impl Peer {
    /// The client `key` connecting from `address`, named as `[privacy]` and the access log say.
    pub(crate) fn new(key: ClientKey, address: IpAddr, shared: &Shared) -> Peer {
        let (mut label, principal) = match &key {
            ClientKey::Certificate(subject) => (subject.to_string(), Some(format!("cert:{subject}"))),
            ClientKey::Address(_) => (shared.client_addresses.display(address), None),
        };
        if label.len() > MAX_CLIENT_LABEL {
            let mut end = MAX_CLIENT_LABEL;
            while !label.is_char_boundary(end) {
                end -= 1;
            }
            label.truncate(end);
        }
        Peer { key, label, address, principal, rendered_address: shared.access_log.render(address) }
    }
}

/// After answering a lost frame, how long to keep reading (and discarding)
/// what the client is still sending before closing. Closing a socket with
/// unread data makes the kernel reset the connection, which can destroy the
/// `No` before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Serves `stream` until the client leaves, the framing is lost, it idles out
/// or the server shuts down (between requests: a request in progress is finished).
pub(crate) async fn serve<S>(stream: S, peer: Peer, shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (read, mut write) = tokio::io::split(stream);
    let limits = shared.settings.limits();
    // Until its first request starts, a connection waits `first_byte_timeout` (or `idle_timeout`
    // when that is shorter: a connection that never spoke is never kept longer than an idle one).
    let first_byte_timeout = shared.settings.first_byte_timeout.min(limits.idle_timeout);
    let mut reader = FrameReader::new(read, Limits { idle_timeout: first_byte_timeout, ..limits });
    reader.set_memory_budget(&shared.budget);
    let mut first = true;
    let mut options = AnswerOptions::default();
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stopping| *stopping) => return,
            next = reader.read_request() => next,
        };
        if std::mem::take(&mut first) {
            if matches!(next, Err(FrameError::IdleTimeout(_))) {
                return shared.refuse("first_byte_timeout", &peer.key, peer.address);
            }
            reader.set_limits(limits);
        }
        let started = Instant::now();
        // From the frame's first byte, for the stage and request times; `None` for no frame.
        let first_byte = matches!(next, Ok(Some(_))).then(|| reader.last_frame_started()).flatten();
        if let Some(first_byte) = first_byte {
            shared
                .analyser
                .stage_times
                .observe(Stage::Receive, started.saturating_duration_since(first_byte));
        }
        let (command, bytes_in) = match &next {
            Ok(Some(request)) => (request.command().name(), frame_length(request)),
            _ => (COMMAND_INVALID, 0),
        };
        let (response, keep_open) = match next {
            Ok(None) => return,
            Ok(Some(request)) if request.command() == Command::Options => {
                let (response, turned_on) = turn_on(&request);
                // The answer to the options request itself is a Yes either way.
                options.error_detail |= turned_on.error_detail;
                options.list_detail |= turned_on.list_detail;
                shared.status.request_done(Command::Options.name(), OUTCOME_YES);
                (response, true)
            }
            Ok(Some(request)) => {
                let command = request.command();
                let response = match shared.client_limits.admit(&peer.key) {
                    Ok(in_flight) => {
                        let response = shared.analyser.respond(request, &peer.label).await;
                        drop(in_flight);
                        response
                    }
                    Err(refusal) => {
                        shared.refusals.refused(refusal.reason(), &peer.key);
                        Response::failure(
                            ErrorDetail::new(Reason::RateLimited).with_message(refusal.to_string()),
                        )
                    }
                };
                shared.status.request_done(command.name(), outcome(&response));
                (response, true)
            }
            Err(FrameError::IdleTimeout(_)) => return,
            Err(FrameError::Io(error)) => {
                tracing::debug!(client = peer.label, %error, "connection failed");
                return;
            }
            Err(error) => {
                if matches!(error, FrameError::MemoryBudget { .. }) {
                    shared.refusals.refused("frame_memory_budget", &peer.key);
                }
                tracing::debug!(client = peer.label, %error, "invalid frame");
                let reason = error.reason();
                shared.status.request_done(COMMAND_INVALID, reason.name());
                (
                    Response::failure(ErrorDetail::new(reason).with_message(error.to_string())),
                    error.keeps_stream(),
                )
            }
        };
        let mut frame = BytesMut::new();
        encode_answer(&response, options, &mut frame);
        let answering = Instant::now();
        let written = tokio::time::timeout(shared.settings.frame_timeout, async {
            write.write_all(&frame).await?;
            write.flush().await
        })
        .await;
        let sent = matches!(written, Ok(Ok(())));
        if let (Some(first_byte), true) = (first_byte, sent) {
            let stage_times = &shared.analyser.stage_times;
            stage_times.since(Stage::Answer, answering);
            stage_times.request(command, first_byte.elapsed());
        }
        shared.access_log.record(AccessEntry {
            kind: AccessKind::Protocol,
            principal: peer.principal.clone(),
            client: Some(peer.rendered_address.clone()),
            method: None,
            route: None,
            command: Some(command.to_owned()),
            status: AccessStatus::Outcome(
                if matches!(response, Response::No(_)) { "no" } else { "yes" }.to_owned(),
            ),
            reason: match (&response, sent) {
                (_, false) => Some("write_failed".to_owned()),
                (Response::No(_), true) => Some(outcome(&response).to_owned()),
                (Response::Yes(_) | Response::Listed(..), true) => None,
            },
            bytes_in,
            bytes_out: if sent { frame.len() as u64 } else { 0 },
            latency: started.elapsed(),
        });
        if !sent {
            return;
        }
        if !keep_open {
            linger_close(reader.into_inner(), write).await;
            return;
        }
    }
}

/// Answers the options request: 1.0 for each option turned on, 0.0 for names
/// this server does not know. Returns the options it names.
fn turn_on(request: &Request) -> (Response, AnswerOptions) {
    let mut named = AnswerOptions::default();
    let accepted = request
        .fields()
        .iter()
        .map(|name| {
            if name.as_ref() == OPTION_ERROR_DETAIL.as_bytes() {
                named.error_detail = true;
                1.0
            } else if name.as_ref() == OPTION_LIST_DETAIL.as_bytes() {
                named.list_detail = true;
                1.0
            } else {
                0.0
            }
        })
        .collect();
    (Response::Yes(accepted), named)
}

/// The length of `request`'s frame on the wire: the command, each field with its length, the
/// terminator.
fn frame_length(request: &Request) -> u64 {
    let fields: usize = request.fields().iter().map(|field| 4 + field.len()).sum();
    (4 + fields + TERMINATOR.len()) as u64
}

fn outcome(response: &Response) -> &'static str {
    match response {
        Response::Yes(_) | Response::Listed(..) => OUTCOME_YES,
        Response::No(detail) => {
            detail.as_ref().and_then(ErrorDetail::reason).map_or("no", |reason| reason.name())
        }
    }
}

/// Sends FIN, then discards input for up to [`LINGER`] so the client can read
/// the last answer before the connection goes away.
async fn linger_close<S: AsyncRead + AsyncWrite>(mut read: ReadHalf<S>, mut write: WriteHalf<S>) {
    let _ = write.shutdown().await;
    let mut sink = vec![0u8; 16 * 1024];
    let _ =
        tokio::time::timeout(LINGER, async { while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {} })
            .await;
}
