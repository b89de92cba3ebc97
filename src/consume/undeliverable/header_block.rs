//! Raw NATS header blocks (`NATS/1.0[ status]\r\n`, `Name: value\r\n`
//! lines, a blank line): read leniently from what the server stored, and
//! written from a header map for the in-memory JetStream, which stores maps.

use async_nats::header::HeaderName;
use async_nats::HeaderMap;

/// Approximate wire size of `headers`.
pub(super) fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, values)| {
            let name: &str = name.as_ref();
            values
                .iter()
                .map(|value| name.len() + value.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum()
}

/// What could be read from a raw header block.
#[derive(Debug, Default)]
pub(super) struct ParsedHeaderBlock {
    /// Every line that is UTF-8 and a valid `name: value` header, read the
    /// way async-nats reads them (value trimmed, continuation lines joined).
    pub(super) headers: HeaderMap,
    /// What was left out, for the dead letter's error text.
    pub(super) problems: Vec<String>,
}

/// Reads a NATS header block (`NATS/1.0[ status]\r\n` then header lines)
/// line by line, keeping what can be carried as headers and noting the
/// rest. A line is dropped when it is not UTF-8, has no `:`, has an invalid
/// header name, or has control characters in its value (they would corrupt
/// the copy's own header block).
pub(super) fn parse_header_block(block: &[u8]) -> ParsedHeaderBlock {
    let mut parsed = ParsedHeaderBlock::default();
    let mut lines = block
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .enumerate();
    match lines.next() {
        Some((_, version)) if version.starts_with(b"NATS/1.0") => {}
        _ => parsed.problems.push("no NATS/1.0 version line".to_owned()),
    }
    // The header being read, until a line that does not continue it.
    let mut current: Option<(HeaderName, String)> = None;
    // Whether continuation lines belong to a header that was dropped.
    let mut dropping = false;
    for (index, line) in lines {
        let number = index + 1;
        if line.is_empty() {
            continue;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            parsed.problems.push(format!("line {number} is not UTF-8"));
            if line.first().is_some_and(u8::is_ascii_whitespace) {
                // Part of the header being read: it cannot be carried whole.
                current = None;
            } else {
                flush(&mut parsed.headers, current.take());
            }
            dropping = true;
            continue;
        };
        if line.starts_with(char::is_whitespace) {
            if dropping {
                continue;
            }
            if let Some((_, value)) = current.as_mut() {
                if line.chars().any(|c| c.is_control() && c != '\t') {
                    parsed
                        .problems
                        .push(format!("line {number} has control characters"));
                    current = None;
                    dropping = true;
                } else {
                    value.push_str(line);
                }
                continue;
            }
        }
        flush(&mut parsed.headers, current.take());
        dropping = true;
        let Some((name, value)) = line.split_once(':') else {
            parsed.problems.push(format!("line {number} has no ':'"));
            continue;
        };
        let Ok(name) = name.parse::<HeaderName>().map_err(drop).and_then(|name| {
            // async-nats accepts an empty name, which no header can have.
            let text: &str = name.as_ref();
            if text.is_empty() {
                Err(())
            } else {
                Ok(name)
            }
        }) else {
            parsed
                .problems
                .push(format!("line {number} has an invalid header name"));
            continue;
        };
        if value.chars().any(|c| c.is_control() && c != '\t') {
            parsed
                .problems
                .push(format!("line {number} has control characters"));
            continue;
        }
        dropping = false;
        current = Some((name, value.trim_start().to_owned()));
    }
    flush(&mut parsed.headers, current.take());
    parsed
}

fn flush(headers: &mut HeaderMap, header: Option<(HeaderName, String)>) {
    if let Some((name, mut value)) = header {
        value.truncate(value.trim_end().len());
        headers.append(name, value);
    }
}

/// The header block a NATS client sends for `headers`.
#[cfg(feature = "testing")]
pub(super) fn encode_header_block(headers: &HeaderMap) -> Vec<u8> {
    let mut block = b"NATS/1.0\r\n".to_vec();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for value in values {
            block.extend_from_slice(name.as_bytes());
            block.extend_from_slice(b": ");
            block.extend_from_slice(value.as_str().as_bytes());
            block.extend_from_slice(b"\r\n");
        }
    }
    block.extend_from_slice(b"\r\n");
    block
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
        headers.get(name).map(|value| value.as_str())
    }

    #[test]
    fn a_valid_block_is_read_like_async_nats_reads_it() {
        let parsed = parse_header_block(
            b"NATS/1.0\r\nce-id: e-1\r\nce-type:  a.b.c.v1  \r\nx-long: one\r\n two\r\nce-id: e-2\r\n\r\n",
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(value(&parsed.headers, "ce-type"), Some("a.b.c.v1"));
        assert_eq!(value(&parsed.headers, "x-long"), Some("one two"));
        let ids: Vec<&str> = parsed
            .headers
            .get_all("ce-id")
            .map(|value| value.as_str())
            .collect();
        assert_eq!(ids, ["e-1", "e-2"]);
    }

    #[test]
    fn unreadable_lines_are_left_out_and_named() {
        let parsed = parse_header_block(
            b"NATS/1.0\r\nce-specversion: 1.0\r\nce-id: \xff\xfe\xc0\xaf\r\n continued\r\nno colon here\r\nbad name: x\r\nce-source: /raw\r\nce-note: a\x07b\r\n\r\n",
        );
        assert_eq!(value(&parsed.headers, "ce-specversion"), Some("1.0"));
        assert_eq!(value(&parsed.headers, "ce-source"), Some("/raw"));
        assert!(parsed.headers.get("ce-id").is_none());
        assert!(parsed.headers.get("ce-note").is_none());
        assert_eq!(parsed.headers.iter().count(), 2);
        assert_eq!(
            parsed.problems,
            [
                "line 3 is not UTF-8",
                "line 5 has no ':'",
                "line 6 has an invalid header name",
                "line 8 has control characters",
            ]
        );
    }

    #[test]
    fn a_block_without_version_line_is_reported() {
        let parsed = parse_header_block(b"ce-id: x\r\n\r\n");
        assert_eq!(parsed.problems, ["no NATS/1.0 version line"]);
        assert!(parsed.headers.get("ce-id").is_none());

        let empty = parse_header_block(b"");
        assert_eq!(empty.problems, ["no NATS/1.0 version line"]);
        assert_eq!(empty.headers.iter().count(), 0);
    }

    #[cfg(feature = "testing")]
    #[test]
    fn an_encoded_block_reads_back_as_the_same_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("ce-id", "e-1");
        headers.append("x-many", "one");
        headers.append("x-many", "two");
        let parsed = parse_header_block(&encode_header_block(&headers));
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.headers, headers);
    }
}
