//! A client behind a link of a given speed, for `sentinel bench server --compare --link-mbit`:
//! it writes each request frame in slices spaced so the frame leaves at that rate, as a central
//! server's request arrives over a real network, instead of at loopback speed. The server's
//! stage times then show how much of its work the transfer hides, and how long the answer takes
//! once the last byte is in.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::BytesMut;
use sentinel_protocol::{FrameReader, Limits, Request, Response, encode_request};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

/// The slices' spacing: the timer's resolution, so each slice leaves when it is due.
const SLICE_TIME: Duration = Duration::from_millis(1);

/// A protocol connection whose requests leave at `mbit` megabits per second.
pub(super) struct PacedClient {
    reader: FrameReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Bytes the link carries in [`SLICE_TIME`].
    slice: usize,
}

impl PacedClient {
    pub async fn connect(address: SocketAddr, mbit: u64) -> anyhow::Result<PacedClient> {
        let stream =
            TcpStream::connect(address).await.with_context(|| format!("cannot connect to {address}"))?;
        // Each slice leaves as it is written, not when the kernel has gathered a segment.
        stream.set_nodelay(true)?;
        let (read, writer) = stream.into_split();
        let bytes_per_second = mbit.saturating_mul(1_000_000) / 8;
        let slice = (bytes_per_second as f64 * SLICE_TIME.as_secs_f64()) as usize;
        Ok(PacedClient { reader: FrameReader::new(read, Limits::default()), writer, slice: slice.max(1) })
    }

    /// Sends `request` at the link's rate and reads its response.
    pub async fn request(&mut self, request: &Request) -> anyhow::Result<Response> {
        let mut frame = BytesMut::new();
        encode_request(request, &mut frame);
        let started = Instant::now();
        for (index, slice) in frame.chunks(self.slice).enumerate() {
            // Due when the link has carried the slices before it; the first at once (a timer
            // would wait for its next tick).
            if index > 0 {
                tokio::time::sleep_until(started + SLICE_TIME * index as u32).await;
            }
            self.writer.write_all(slice).await?;
        }
        self.reader.read_response(false).await?.context("the server closed the connection")
    }
}
