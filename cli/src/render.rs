//! Output: aligned tables for people, JSON lines for scripts.

use std::io::Write;

use jetevents::codec::{self, Encoding};
use jetevents::Envelope;
use serde_json::Value;

use crate::failure::Failure;

/// Rows printed with each column as wide as its widest cell.
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn print(&self) -> Result<(), Failure> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        let mut out = std::io::stdout().lock();
        for row in std::iter::once(&header).chain(&self.rows) {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            writeln!(out, "{}", cells.join("  ").trim_end())?;
        }
        Ok(())
    }
}

/// Prints `value` as one JSON line.
pub fn json_line(value: &impl serde::Serialize) -> Result<(), Failure> {
    let line = serde_json::to_string(value)?;
    writeln!(std::io::stdout().lock(), "{line}")?;
    Ok(())
}

/// The event in the CloudEvents JSON format (what structured mode sends).
pub fn cloudevent_json(envelope: &Envelope) -> Result<Value, Failure> {
    let (_, payload) = codec::encode(envelope, Encoding::Structured)?;
    Ok(serde_json::from_slice(&payload)?)
}

/// The data as text: JSON compacted, other UTF-8 as is, bytes by their size.
pub fn data_text(data: Option<&[u8]>) -> String {
    match data {
        None => String::new(),
        Some(bytes) => match serde_json::from_slice::<Value>(bytes) {
            Ok(json) => json.to_string(),
            Err(_) => match std::str::from_utf8(bytes) {
                Ok(text) => text.to_owned(),
                Err(_) => format!("<{} bytes>", bytes.len()),
            },
        },
    }
}

/// The trace id of a W3C `traceparent` (`00-{trace id}-{span id}-{flags}`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn trace_id_is_read_from_traceparent() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("garbage"), None);
    }

    #[test]
    fn data_text_shows_json_text_and_bytes() {
        assert_eq!(data_text(Some(b"{ \"a\": 1 }")), "{\"a\":1}");
        assert_eq!(data_text(Some(b"plain")), "plain");
        assert_eq!(data_text(Some(&[0xff, 0xfe])), "<2 bytes>");
    }
}
