//! Conformance tests from hand-built frames: `tests/frames/*.hex` are the
//! inputs, `tests/frames/*.expected` what the decoder and the async reader
//! must make of them (see `tests/frames/README.md`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use sentinel_protocol::{
    FrameError, FrameReader, Limits, Request, Response, decode_request, decode_response,
};
use tokio::io::AsyncWriteExt;

fn limits() -> Limits {
    Limits {
        max_field_size: 1024,
        max_fields: 8,
        max_frame_size: 2048,
        frame_timeout: Duration::from_millis(50),
        idle_timeout: Duration::from_millis(50),
    }
}

fn parse_hex(text: &str) -> Vec<u8> {
    let mut bytes = Vec::new();
    for line in text.lines() {
        let code = line.split('#').next().unwrap_or_default();
        for token in code.split_whitespace() {
            let (byte, count) = match token.split_once('*') {
                Some((byte, count)) => (byte, count.parse::<usize>().expect("repeat count")),
                None => (token, 1),
            };
            let byte = u8::from_str_radix(byte, 16).unwrap_or_else(|_| panic!("bad hex byte {token:?}"));
            bytes.extend(std::iter::repeat_n(byte, count));
        }
    }
    bytes
}

fn show_field(field: &Bytes) -> String {
    if field.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        format!("{:?}", String::from_utf8_lossy(field))
    } else {
        format!("0x{}", hex::encode(field))
    }
}

fn show_request(request: &Request) -> String {
    let fields: Vec<String> = request.fields().iter().map(show_field).collect();
    format!("request {} [{}]", request.command(), fields.join(", "))
}

fn show_response(response: &Response) -> String {
    match response {
        Response::Yes(scores) => format!("Yes {scores:?}"),
        Response::Listed(scores, detail) => {
            format!(
                "Yes {scores:?} list={} reason={:?} source={:?}",
                detail.list, detail.reason, detail.source
            )
        }
        Response::No(None) => "No".to_owned(),
        Response::No(Some(detail)) => format!(
            "No code={} name={} step={} message={:?}",
            detail.code(),
            detail.name(),
            detail.step().unwrap_or("-"),
            detail.message()
        ),
    }
}

fn decode_requests(bytes: &[u8], out: &mut String) {
    let mut rest = bytes;
    loop {
        if rest.is_empty() {
            writeln!(out, "decode: end").unwrap();
            return;
        }
        match decode_request(rest, &limits()) {
            Ok(Some((request, len))) => {
                writeln!(out, "decode: {} len={len}", show_request(&request)).unwrap();
                rest = &rest[len..];
            }
            Ok(None) => {
                writeln!(out, "decode: incomplete").unwrap();
                return;
            }
            Err(error @ FrameError::UnknownCommand { frame_len, .. }) => {
                writeln!(out, "decode: error {error:?}").unwrap();
                rest = &rest[frame_len..];
            }
            Err(error) => {
                writeln!(out, "decode: error {error:?}").unwrap();
                return;
            }
        }
    }
}

async fn read_requests<R: tokio::io::AsyncRead + Unpin>(label: &str, source: R, out: &mut String) {
    let mut reader = FrameReader::new(source, limits());
    loop {
        match reader.read_request().await {
            Ok(Some(request)) => writeln!(out, "{label}: {}", show_request(&request)).unwrap(),
            Ok(None) => {
                writeln!(out, "{label}: end").unwrap();
                return;
            }
            Err(error) => {
                writeln!(out, "{label}: error {error:?}").unwrap();
                if !error.keeps_stream() {
                    return;
                }
            }
        }
    }
}

/// A stream that delivers `bytes` and then stays open, sending nothing more.
async fn stalled_stream(bytes: &[u8]) -> (tokio::io::DuplexStream, tokio::io::DuplexStream) {
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    writer.write_all(bytes).await.unwrap();
    (writer, reader)
}

async fn observe(name: &str, bytes: &[u8]) -> String {
    let mut out = String::new();
    if name.starts_with("response_") {
        let error_detail = name.contains("detail");
        match decode_response(bytes, &limits(), error_detail) {
            Ok(Some((response, len))) => writeln!(out, "decode: {} len={len}", show_response(&response)),
            Ok(None) => writeln!(out, "decode: incomplete"),
            Err(error) => writeln!(out, "decode: error {error:?}"),
        }
        .unwrap();
        match FrameReader::new(bytes, limits()).read_response(error_detail).await {
            Ok(Some(response)) => writeln!(out, "stream-eof: {}", show_response(&response)),
            Ok(None) => writeln!(out, "stream-eof: end"),
            Err(error) => writeln!(out, "stream-eof: error {error:?}"),
        }
        .unwrap();
    } else {
        decode_requests(bytes, &mut out);
        read_requests("stream-eof", bytes, &mut out).await;
        let (_keep_open, stalled) = stalled_stream(bytes).await;
        read_requests("stream-stall", stalled, &mut out).await;
    }
    out
}

fn golden_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/frames");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "hex"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn every_golden_frame_is_read_as_expected() {
    let files = golden_files();
    assert!(files.len() >= 30, "golden frames missing: {}", files.len());
    let mut failures = Vec::new();
    for hex_path in files {
        let name = hex_path.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = parse_hex(&std::fs::read_to_string(&hex_path).unwrap());
        let expected = std::fs::read_to_string(hex_path.with_extension("expected"))
            .unwrap_or_else(|_| panic!("{name}.expected is missing"));
        let observed = observe(&name, &bytes).await;
        if observed != expected {
            failures.push(format!("{name}\n--- expected\n{expected}--- observed\n{observed}"));
        }
    }
    assert!(failures.is_empty(), "{} golden mismatches:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn the_hex_syntax_reads_comments_and_repeats() {
    assert_eq!(parse_hex("01 02 # three\n ff*3\n"), [1, 2, 0xff, 0xff, 0xff]);
}
