//! Percent-encoding of NATS header values, as the CloudEvents NATS (and HTTP)
//! binding defines it.
//!
//! **Encoding is strict**: space, `"`, `%` and everything outside
//! `U+0021..=U+007E` become `%XX` per UTF-8 byte, upper-case hex.
//!
//! **Decoding is lenient**, as the binding asks receivers to be: other SDKs
//! write values raw (the JavaScript SDK's HTTP binary binding, which services
//! reuse over NATS, copies attribute values as they are).
//!
//! - `%XX` with two hex digits of either case is one byte; a `%` that starts
//!   no such escape (`50% off`, `100%`, `%zz`, `%4`) is kept literally.
//! - Raw UTF-8 and double quotes inside a value are kept as they are.
//! - A value that is one whole RFC 7230 quoted-string (`"..."`, with `\"`
//!   and `\\` escapes inside) is unquoted, then percent-decoded. Any other
//!   value with quotes (`"hi" she said`, `"unclosed`) is raw text.
//! - The result must be UTF-8 (escapes that decode to overlong forms,
//!   surrogates or broken sequences are refused) without control
//!   characters, else [`DecodeErrorKind::InvalidHeaderValue`]. Raw bytes
//!   that are not UTF-8 never get here: async-nats refuses such a header
//!   block, and the consumer dead-letters it as undeliverable.
//!
//! A raw value and an encoded one cannot always be told apart: a raw `%41`
//! reads as `A`, a raw `100%25` as `100%`, a raw `"hi"` as `hi`. A valid
//! escape, and a whole quoted-string, always win, so that every value a
//! strict encoder writes decodes exactly.

use std::borrow::Cow;

use super::{DecodeError, DecodeErrorKind};
use crate::Error;

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

#[inline]
fn needs_encoding(byte: u8) -> bool {
    !(0x21..=0x7e).contains(&byte) || byte == b'"' || byte == b'%'
}

/// Whether `value` is printable ASCII without `"` and `%` (U+0021..=U+007E
/// less those two): it needs no percent-encoding, and it has no control
/// characters.
///
/// Almost every value of every event is plain, so this reads eight bytes at a
/// time (the has-less / has-more / has-zero-byte bit tricks, each exact as a
/// yes/no answer).
pub(crate) fn is_plain(value: &str) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    fn has_zero_byte(word: u64) -> bool {
        word.wrapping_sub(ONES) & !word & HIGHS != 0
    }
    fn word_needs_encoding(word: u64) -> bool {
        let below_0x21 = word.wrapping_sub(ONES * 0x21) & !word & HIGHS;
        let above_0x7e = (word.wrapping_add(ONES) | word) & HIGHS;
        below_0x21 | above_0x7e != 0
            || has_zero_byte(word ^ (ONES * u64::from(b'"')))
            || has_zero_byte(word ^ (ONES * u64::from(b'%')))
    }
    let bytes = value.as_bytes();
    if bytes.len() < 8 {
        return !bytes.iter().any(|&b| needs_encoding(b));
    }
    let word = |chunk: &[u8]| <[u8; 8]>::try_from(chunk).map(u64::from_le_bytes);
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        match word(chunk) {
            Ok(word) if !word_needs_encoding(word) => {}
            _ => return false,
        }
    }
    if chunks.remainder().is_empty() {
        return true;
    }
    // The last eight bytes, overlapping the chunks already read.
    matches!(word(&bytes[bytes.len() - 8..]), Ok(word) if !word_needs_encoding(word))
}

/// The header value for `value`.
pub(crate) fn encode(value: &str) -> String {
    if is_plain(value) {
        return value.to_owned();
    }
    let extra = value.bytes().filter(|&b| needs_encoding(b)).count() * 2;
    let mut out = String::with_capacity(value.len() + extra);
    for byte in value.bytes() {
        if needs_encoding(byte) {
            out.push('%');
            out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
            out.push(char::from(HEX_UPPER[usize::from(byte & 0x0f)]));
        } else {
            out.push(char::from(byte));
        }
    }
    out
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        _ => None,
    }
}

/// The content of `raw` when it is one whole RFC 7230 quoted-string, its
/// backslash escapes resolved; `None` for anything else, which is raw text.
fn unquote(raw: &str) -> Option<String> {
    let inner = raw.strip_prefix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    loop {
        match chars.next()? {
            '"' => break,
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    // Text after the closing quote: the quotes were part of the value.
    chars.as_str().is_empty().then_some(out)
}

/// `text` with every `%XX` escape replaced by its byte; a `%` that starts
/// no escape is kept. Fails when the bytes are not UTF-8.
fn percent_decode(text: &str) -> Result<String, std::string::FromUtf8Error> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text.as_bytes();
    while let Some(at) = rest.iter().position(|&b| b == b'%') {
        let (literal, from_percent) = rest.split_at(at);
        out.extend_from_slice(literal);
        let escaped = match from_percent {
            [_, hi, lo, ..] => hex_value(*hi).zip(hex_value(*lo)),
            _ => None,
        };
        let consumed = match escaped {
            Some((hi, lo)) => {
                out.push((hi << 4) | lo);
                3
            }
            None => {
                out.push(b'%');
                1
            }
        };
        rest = from_percent.get(consumed..).unwrap_or_default();
    }
    out.extend_from_slice(rest);
    // from_utf8 rejects overlong forms and surrogates as the binding requires.
    String::from_utf8(out)
}

/// The attribute value of the header `header` whose value is `raw`: unquoted
/// if it is one quoted-string, one round of lenient percent-decoding (see
/// the module docs), checked to be UTF-8 without control characters.
pub(crate) fn decode<'a>(raw: &'a str, header: &str) -> Result<Cow<'a, str>, DecodeError> {
    // Almost every value: nothing quoted, escaped or forbidden, one scan,
    // and no copy until the caller keeps it.
    if is_plain(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let invalid = || DecodeErrorKind::InvalidHeaderValue {
        header: header.to_owned(),
    };
    let unquoted = unquote(raw);
    let text = unquoted.as_deref().unwrap_or(raw);
    let value = if text.contains('%') {
        percent_decode(text).map_err(|err| Error::with_source(invalid(), err))?
    } else {
        unquoted.unwrap_or_else(|| raw.to_owned())
    };
    if super::has_control_chars(&value) {
        return Err(Error::new(invalid()));
    }
    Ok(Cow::Owned(value))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn spec_example() {
        let encoded = encode("Euro \u{20AC} \u{1F600}");
        assert_eq!(encoded, "Euro%20%E2%82%AC%20%F0%9F%98%80");
        assert_eq!(decode(&encoded, "ce-x").unwrap(), "Euro \u{20AC} \u{1F600}");
        assert_eq!(decode("euro%e2%82%ac", "ce-x").unwrap(), "euro\u{20AC}");
    }

    #[test]
    fn quoted() {
        assert_eq!(decode(r#""a b\"c""#, "ce-x").unwrap(), "a b\"c");
        // Not one quoted-string: raw text.
        assert_eq!(decode(r#""abc"#, "ce-x").unwrap(), r#""abc"#);
    }

    #[test]
    fn plain_agrees_with_the_byte_rule() {
        let mut values: Vec<String> = vec![
            String::new(),
            "0197a3c4-7d2e-7c41-9b8e-2f3a4b5c6d7e".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            "application/json".into(),
            "caf\u{e9} au lait, s'il vous pla\u{ee}t".into(),
        ];
        // Every byte value at every position of strings of 1 to 20 bytes.
        for len in 1..=20 {
            for position in 0..len {
                for byte in 0u8..=0x7f {
                    let mut bytes = vec![b'a'; len];
                    bytes[position] = byte;
                    values.push(String::from_utf8(bytes).unwrap());
                }
                let mut text = "a".repeat(len);
                text.insert(position, '\u{80}');
                values.push(text);
                let mut text = "~".repeat(len);
                text.insert(position, '\u{ff}');
                values.push(text);
            }
        }
        for value in values {
            let expected = !value.bytes().any(needs_encoding);
            assert_eq!(is_plain(&value), expected, "{value:?}");
            assert_eq!(encode(&value) == value, expected, "{value:?}");
        }
    }

    #[test]
    fn rejects_overlong() {
        let err = decode("%C0%A0", "ce-x").unwrap_err();
        assert!(matches!(
            err.kind(),
            DecodeErrorKind::InvalidHeaderValue { .. }
        ));
    }
}
