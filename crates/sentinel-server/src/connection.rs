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

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sentinel_protocol::{
    Command, ErrorDetail, FrameError, FrameReader, OPTION_ERROR_DETAIL, Request, Response, write_response,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::watch;

use crate::state::Shared;
use crate::status::{COMMAND_INVALID, OUTCOME_YES};

/// After answering a lost frame, how long to keep reading (and discarding)
/// what the client is still sending before closing. Closing a socket with
/// unread data makes the kernel reset the connection, which can destroy the
/// `No` before the client reads it.
const LINGER: Duration = Duration::from_secs(1);

/// Serves `stream` until the client leaves, the framing is lost, it idles out
/// or the server shuts down (between requests: a request in progress is finished).
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = FrameReader::new(read, shared.settings.limits());
    let mut error_detail = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stopping| *stopping) => return,
            next = reader.read_request() => next,
        };
        let (response, keep_open) = match next {
            Ok(None) => return,
            Ok(Some(request)) if request.command() == Command::Options => {
                let (response, turned_on) = options(&request);
                // The answer to the options request itself is a Yes either way.
                error_detail |= turned_on;
                shared.status.request_done(Command::Options.name(), OUTCOME_YES);
                (response, true)
            }
            Ok(Some(request)) => {
                let command = request.command();
                let response = shared.analyser.respond(request, peer.ip()).await;
                shared.status.request_done(command.name(), outcome(&response));
                (response, true)
            }
            Err(FrameError::IdleTimeout(_)) => return,
            Err(FrameError::Io(error)) => {
                tracing::debug!(%peer, %error, "connection failed");
                return;
            }
            Err(error) => {
                tracing::debug!(%peer, %error, "invalid frame");
                let reason = error.reason();
                shared.status.request_done(COMMAND_INVALID, reason.name());
                (
                    Response::failure(ErrorDetail::new(reason).with_message(error.to_string())),
                    error.keeps_stream(),
                )
            }
        };
        let written = tokio::time::timeout(
            shared.settings.frame_timeout,
            write_response(&mut write, &response, error_detail),
        )
        .await;
        if !matches!(written, Ok(Ok(()))) {
            return;
        }
        if !keep_open {
            linger_close(reader.into_inner(), write).await;
            return;
        }
    }
}

/// Answers the options request: 1.0 for each option turned on, 0.0 for names
/// this server does not know. Returns whether error details are now on.
fn options(request: &Request) -> (Response, bool) {
    let mut error_detail = false;
    let accepted = request
        .fields()
        .iter()
        .map(|name| {
            if name.as_ref() == OPTION_ERROR_DETAIL.as_bytes() {
                error_detail = true;
                1.0
            } else {
                0.0
            }
        })
        .collect();
    (Response::Yes(accepted), error_detail)
}

fn outcome(response: &Response) -> &'static str {
    match response {
        Response::Yes(_) => OUTCOME_YES,
        Response::No(detail) => {
            detail.as_ref().and_then(ErrorDetail::reason).map_or("no", |reason| reason.name())
        }
    }
}

/// Sends FIN, then discards input for up to [`LINGER`] so the client can read
/// the last answer before the connection goes away.
async fn linger_close(mut read: tokio::net::tcp::OwnedReadHalf, mut write: OwnedWriteHalf) {
    let _ = write.shutdown().await;
    let mut sink = vec![0u8; 16 * 1024];
    let _ =
        tokio::time::timeout(LINGER, async { while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {} })
            .await;
}
