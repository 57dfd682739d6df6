//! Fuzzes the protocol's pure frame decoder (the code every server connection
//! runs on untrusted bytes): it must never panic, never report more bytes than
//! it was given, and whatever request it accepts must re-encode to exactly the
//! bytes it consumed.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use sentinel_protocol::{FrameError, Limits, decode_request, decode_response, encode_request};

fuzz_target!(|data: &[u8]| {
    // Small limits so that the limit checks are reached; default ones for the real path.
    let small = Limits {
        max_field_size: 256,
        max_fields: 6,
        max_frame_size: 1024,
        frame_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(1),
    };
    for limits in [small, Limits::default()] {
        let mut rest = data;
        while !rest.is_empty() {
            match decode_request(rest, &limits) {
                Ok(Some((request, len))) => {
                    assert!(len <= rest.len() && len >= 8);
                    let mut encoded = Default::default();
                    encode_request(&request, &mut encoded);
                    assert_eq!(&encoded[..], &rest[..len]);
                    assert!(request.fields().len() <= limits.max_fields);
                    rest = &rest[len..];
                }
                Err(FrameError::UnknownCommand { frame_len, .. }) => {
                    assert!(frame_len <= rest.len() && frame_len >= 8);
                    rest = &rest[frame_len..];
                }
                Ok(None) | Err(_) => break,
            }
        }
        for error_detail in [false, true] {
            if let Ok(Some((_, len))) = decode_response(data, &limits, error_detail) {
                assert!(len <= data.len());
            }
        }
    }
});
