//! The reader hashes an analysis request's executable as its bytes arrive: the digest it hands
//! over with the request must be the executable's, however the frame was cut on its way, and
//! only requests that carry an executable get one.

use bytes::{Bytes, BytesMut};
use sentinel_protocol::{Command, FrameReader, Limits, Request, Sha256Hash, encode_request};
use tokio::io::AsyncWriteExt;

/// Bytes that differ all along, so a piece hashed twice or skipped changes the digest.
fn executable(len: usize) -> Bytes {
    (0..len).map(|at| (at.wrapping_mul(7919) >> 3) as u8).collect::<Vec<u8>>().into()
}

fn frame_of(request: &Request) -> BytesMut {
    let mut frame = BytesMut::new();
    encode_request(request, &mut frame);
    frame
}

#[tokio::test]
async fn a_trickled_executable_is_hashed_whatever_its_pieces() {
    let sample = executable(300 * 1024 + 17);
    let sha256 = Sha256Hash::of(&sample);
    let request = Request::new(
        Command::StaticAnalyse,
        vec![sample.clone(), Bytes::from(sha256.to_hex()), Bytes::new()],
    );
    let frame = frame_of(&request).freeze();
    // Pieces that cut the command, the length, the executable and the fields after it; a pipe
    // narrower than most of them, so the reader sees each arrive in several reads.
    let cuts = [0, 3, 6, 9, 4_000, 65_537, 200_003, sample.len() + 8, sample.len() + 40, frame.len()];
    let (mut writer, pipe) = tokio::io::duplex(8 * 1024);
    let sending = tokio::spawn(async move {
        for piece in cuts.windows(2) {
            writer.write_all(&frame[piece[0]..piece[1]]).await.unwrap();
            tokio::task::yield_now().await;
        }
        writer
    });
    let mut reader = FrameReader::new(pipe, Limits::default());
    let read = reader.read_request().await.unwrap().expect("a request");
    assert_eq!(read, request);
    assert_eq!(read.executable_sha256(), Some(sha256));
    drop(sending.await.unwrap());
    assert!(reader.read_request().await.unwrap().is_none());
}

#[tokio::test]
async fn pipelined_requests_each_get_their_own_digest_and_only_analyses_with_an_executable() {
    let first = executable(70_000);
    let second = executable(5);
    let requests = [
        Request::new(Command::AllAnalyse, vec![first.clone()]),
        Request::options(&["error_detail"]),
        // A hash-only VirusTotal request: nothing to hash.
        Request::new(Command::VtAnalyse, vec![Bytes::new(), Bytes::from(Sha256Hash::of(b"x").to_hex())]),
        Request::new(Command::DynamicAnalyse, vec![second.clone(), Bytes::new()]),
        // No field at all.
        Request::new(Command::StaticAnalyse, Vec::new()),
    ];
    let mut bytes = BytesMut::new();
    for request in &requests {
        bytes.extend_from_slice(&frame_of(request));
    }
    let mut reader = FrameReader::new(&bytes[..], Limits::default());
    let mut digests = Vec::new();
    while let Some(request) = reader.read_request().await.unwrap() {
        digests.push(request.executable_sha256());
    }
    assert_eq!(digests, [Some(Sha256Hash::of(&first)), None, None, Some(Sha256Hash::of(&second)), None]);
}

/// Also a large executable arriving in one read, which is hashed in several slices.
#[tokio::test]
async fn a_request_built_in_memory_has_no_digest_and_equals_the_one_read() {
    let sample = executable(700 * 1024 + 3);
    let request = Request::new(Command::StaticAnalyse, vec![sample.clone()]);
    assert_eq!(request.executable_sha256(), None);
    let frame = frame_of(&request);
    let read = FrameReader::new(&frame[..], Limits::default()).read_request().await.unwrap().unwrap();
    // Equal by what they say, though only the one read carries the digest.
    assert_eq!(read, request);
    assert_eq!(read.executable_sha256(), Some(Sha256Hash::of(&sample)));
}
