//! Fuzzes `codec::decode` with arbitrary headers and payloads, and checks
//! that whatever decodes also encodes and decodes back to the same envelope
//! in both modes.
//!
//! Input layout: byte 0 selects "no headers" (odd) or "headers"; bytes 1..3
//! are the header block length (little endian); the header block is parsed
//! the way async-nats parses a received one (UTF-8 lines, `Name: value`,
//! trimmed values); the rest is the payload.
#![no_main]

use std::str::FromStr;

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::HeaderMap;
use bytes::Bytes;
use jetevents::codec::{self, Encoding};
use jetevents::envelope::{Envelope, ExtensionValue};
use libfuzzer_sys::fuzz_target;

fn header_map(block: &[u8]) -> Option<HeaderMap> {
    // async-nats drops the connection on a non-UTF-8 header block, so such
    // a block never reaches the decoder.
    let text = std::str::from_utf8(block).ok()?;
    let mut headers = HeaderMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_str(name),
            HeaderValue::from_str(value.trim()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    Some(headers)
}

fn as_binary_sees_it(envelope: &Envelope) -> Envelope {
    let mut expected = envelope.clone();
    expected.extensions = envelope
        .extensions
        .clone()
        .into_iter()
        .map(|(name, value)| (name, ExtensionValue::String(value.to_string())))
        .collect();
    if expected.data.as_ref().is_some_and(|d| d.is_empty()) {
        expected.data = None;
    }
    expected
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let with_headers = data[0] % 2 == 0;
    let block_len = usize::from(u16::from_le_bytes([data[1], data[2]]));
    let rest = &data[3..];
    let split = block_len.min(rest.len());
    let (block, payload) = rest.split_at(split);
    let payload = Bytes::copy_from_slice(payload);
    let headers = if with_headers {
        match header_map(block) {
            Some(headers) => Some(headers),
            None => return,
        }
    } else {
        None
    };
    let Ok(envelope) = codec::decode(headers.as_ref(), &payload) else {
        return;
    };
    // What decodes must encode, and come back the same.
    let (h, p) = codec::encode(&envelope, Encoding::Structured).expect("structured encode");
    let again = codec::decode(Some(&h), &p).expect("structured re-decode");
    assert_eq!(again, envelope);
    let (h, p) = codec::encode(&envelope, Encoding::Binary).expect("binary encode");
    let again = codec::decode(Some(&h), &p).expect("binary re-decode");
    assert_eq!(again, as_binary_sees_it(&envelope));
});
