//! The bytes of many outgoing messages (subjects, replies, payloads),
//! carved one after another from one refcounted buffer.
//!
//! Given a `String` subject, async-nats copies it into a fresh `Bytes` of
//! its own (`ToSubject for String`); a payload from `serde_json::to_vec`
//! costs a growing `Vec` and, as `Bytes`, a box for its refcount. Their
//! last owner is async-nats' connection task, which on a multi-thread
//! runtime frees them on another thread than the publisher's: the
//! allocator's per-thread cache of the publishing thread never gets them
//! back, and its arena lock is taken from both sides. Slices of a shared
//! buffer cost no allocation per message, and one free per buffer, when
//! the last message in it has been written.

use async_nats::Subject;
use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

/// Room for the subjects and replies of a few dozen messages.
const SUBJECTS_CHUNK: usize = 4 * 1024;

/// Room for the payloads of a few dozen typical events.
const PAYLOADS_CHUNK: usize = 32 * 1024;

/// Hands out slices of a shared buffer, starting a new one when it is full.
#[derive(Debug)]
pub(crate) struct MessageBuffer {
    /// Empty between messages: its capacity is the room left.
    buffer: BytesMut,
    /// The size of a new buffer.
    chunk: usize,
    /// The last JSON written: room the next one probably needs.
    last_json_len: usize,
}

impl MessageBuffer {
    /// A buffer for subjects and reply subjects.
    pub(crate) fn for_subjects() -> MessageBuffer {
        MessageBuffer::with_chunk(SUBJECTS_CHUNK)
    }

    /// A buffer for event payloads.
    pub(crate) fn for_payloads() -> MessageBuffer {
        MessageBuffer::with_chunk(PAYLOADS_CHUNK)
    }

    fn with_chunk(chunk: usize) -> MessageBuffer {
        MessageBuffer {
            // Allocated at the first message, not before.
            buffer: BytesMut::new(),
            chunk,
            last_json_len: 0,
        }
    }

    /// Makes sure `len` bytes fit without growing the buffer in place.
    fn room(&mut self, len: usize) {
        if self.buffer.capacity() < len || self.buffer.capacity() == 0 {
            // The full buffer lives on in the slices already handed out.
            self.buffer = BytesMut::with_capacity(self.chunk.max(len));
        }
    }

    /// `parts` one after the other, as one subject. async-nats still checks
    /// the result as it checks every subject (not empty, no whitespace):
    /// this saves the copy, not the validation.
    pub(crate) fn subject(&mut self, parts: &[&str]) -> Subject {
        self.room(parts.iter().map(|part| part.len()).sum());
        for part in parts {
            self.buffer.extend_from_slice(part.as_bytes());
        }
        // Concatenated `str`s are UTF-8, so the check cannot fail; were it
        // to, the empty subject is refused by async-nats, never sent.
        Subject::from_utf8(self.buffer.split().freeze()).unwrap_or_else(|_| Subject::from(""))
    }

    /// `value` as JSON.
    pub(crate) fn json(&mut self, value: &impl Serialize) -> Result<Bytes, serde_json::Error> {
        self.room(self.last_json_len);
        // A value larger than the room left grows the buffer: bytes moves
        // what was written so far into a new one of at least `chunk`.
        if let Err(err) = serde_json::to_writer((&mut self.buffer).writer(), value) {
            self.buffer.clear();
            return Err(err);
        }
        self.last_json_len = self.buffer.len();
        Ok(self.buffer.split().freeze())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn subjects_are_distinct_slices_of_one_buffer() {
        let mut buffer = MessageBuffer::for_subjects();
        let first = buffer.subject(&["_INBOX.a.", "1"]);
        let second = buffer.subject(&["_INBOX.a.", "2"]);
        assert_eq!(first.as_str(), "_INBOX.a.1");
        assert_eq!(second.as_str(), "_INBOX.a.2");
        assert_eq!(
            first.as_ptr().wrapping_add(first.len()),
            second.as_ptr(),
            "the second follows the first in the same buffer"
        );
    }

    #[test]
    fn a_full_buffer_is_replaced_and_its_slices_stay_intact() {
        let mut buffer = MessageBuffer::for_subjects();
        let long = "x".repeat(SUBJECTS_CHUNK - 1);
        let first = buffer.subject(&[&long, "1"]);
        let second = buffer.subject(&["orders.", "2"]);
        let huge = "y".repeat(2 * SUBJECTS_CHUNK);
        let third = buffer.subject(&[&huge]);
        assert_eq!(first.as_str(), format!("{long}1"));
        assert_eq!(second.as_str(), "orders.2");
        assert_eq!(third.as_str(), huge);
    }

    #[test]
    fn payloads_are_the_json_of_their_values_whatever_their_size() {
        let mut buffer = MessageBuffer::for_payloads();
        let values: Vec<serde_json::Value> = [1, PAYLOADS_CHUNK / 3, 2 * PAYLOADS_CHUNK, 5]
            .into_iter()
            .map(|size| serde_json::json!({ "data": "z".repeat(size) }))
            .collect();
        let payloads: Vec<Bytes> = values.iter().map(|v| buffer.json(v).unwrap()).collect();
        for (value, payload) in values.iter().zip(&payloads) {
            assert_eq!(payload, &serde_json::to_vec(value).unwrap());
        }
    }

    #[test]
    fn a_value_that_fails_to_serialize_leaves_nothing_behind() {
        struct Fails;
        impl Serialize for Fails {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                use serde::ser::{Error, SerializeMap};
                let mut map = serializer.serialize_map(None)?;
                map.serialize_entry("half", "written")?;
                Err(S::Error::custom("refused"))
            }
        }
        let mut buffer = MessageBuffer::for_payloads();
        assert!(buffer.json(&Fails).is_err());
        assert_eq!(buffer.json(&1).unwrap(), &b"1"[..]);
    }
}
