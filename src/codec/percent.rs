//! Percent-encoding of NATS header values, as the CloudEvents NATS (and HTTP)
//! binding defines it: space, `"`, `%` and everything outside `U+0021..=U+007E`
//! become `%XX` per UTF-8 byte, upper-case hex on encode, either case on decode.

use super::{DecodeError, DecodeErrorKind};
use crate::Error;

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

#[inline]
fn needs_encoding(byte: u8) -> bool {
    !(0x21..=0x7e).contains(&byte) || byte == b'"' || byte == b'%'
}

/// The header value for `value`.
pub(crate) fn encode(value: &str) -> String {
    let extra = value.bytes().filter(|&b| needs_encoding(b)).count() * 2;
    if extra == 0 {
        return value.to_owned();
    }
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

/// Removes the RFC 7230 double quotes around `raw`, if any, processing
/// backslash escapes inside them.
fn unquote<'a>(raw: &'a str, header: &str) -> Result<std::borrow::Cow<'a, str>, DecodeError> {
    let Some(inner) = raw.strip_prefix('"') else {
        return Ok(std::borrow::Cow::Borrowed(raw));
    };
    let invalid = || {
        Error::new(DecodeErrorKind::InvalidHeaderValue {
            header: header.to_owned(),
        })
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    loop {
        match chars.next() {
            None => return Err(invalid()),
            Some('"') => break,
            Some('\\') => out.push(chars.next().ok_or_else(invalid)?),
            Some(c) => out.push(c),
        }
    }
    if chars.next().is_some() {
        // Text after the closing quote: not a quoted-string.
        return Err(invalid());
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// The attribute value of the header `header` whose value is `raw`: quotes
/// removed, one round of percent-decoding, checked to be UTF-8 without
/// control characters.
pub(crate) fn decode(raw: &str, header: &str) -> Result<String, DecodeError> {
    let unquoted = unquote(raw, header)?;
    let value = if !unquoted.contains('%') {
        unquoted.into_owned()
    } else {
        let bytes = unquoted.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(Error::new(DecodeErrorKind::InvalidPercentEncoding {
                        header: header.to_owned(),
                    }));
                };
                out.push((hi << 4) | lo);
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        // from_utf8 rejects overlong forms and surrogates as the binding requires.
        String::from_utf8(out).map_err(|err| {
            Error::with_source(
                DecodeErrorKind::InvalidHeaderValue {
                    header: header.to_owned(),
                },
                err,
            )
        })?
    };
    if super::has_control_chars(&value) {
        return Err(Error::new(DecodeErrorKind::InvalidHeaderValue {
            header: header.to_owned(),
        }));
    }
    Ok(value)
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
        assert!(decode(r#""abc"#, "ce-x").is_err());
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
