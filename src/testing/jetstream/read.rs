//! Reading a stream back by subject filter, as JetStream's direct gets and
//! ordered consumers do: the last or next matching message, and waiting for
//! the next one to be stored.

use std::time::SystemTime;

use super::error::{MemoryError, MemoryErrorKind};
use super::message::StoredMessage;
use super::stream::Stream;
use super::subject;
use super::MemoryJetStream;

impl MemoryJetStream {
    /// Runs `read` on `stream` under the state's lock.
    fn read_stream<T>(
        &self,
        stream: &str,
        read: impl FnOnce(&Stream) -> T,
    ) -> Result<T, MemoryError> {
        let state = self.state();
        let stream = state
            .streams
            .get(stream)
            .ok_or(MemoryErrorKind::StreamNotFound)?;
        Ok(read(stream))
    }

    /// The last message of `stream` on a subject matching `filter` (a direct
    /// get of the last message for a subject).
    pub(crate) fn last_message_for(
        &self,
        stream: &str,
        filter: &str,
    ) -> Result<Option<StoredMessage>, MemoryError> {
        self.read_stream(stream, |stream| {
            stream
                .messages
                .iter()
                .rev()
                .find(|message| subject::matches(filter, &message.subject))
                .cloned()
        })
    }

    /// The first message of `stream` on a subject matching `filter` at or
    /// after sequence `from` (a direct get of the next message for a subject).
    pub(crate) fn next_message_for(
        &self,
        stream: &str,
        filter: &str,
        from: u64,
    ) -> Result<Option<StoredMessage>, MemoryError> {
        self.read_stream(stream, |stream| {
            stored_from(stream, from)
                .find(|message| subject::matches(filter, &message.subject))
                .cloned()
        })
    }

    /// How many messages of `stream` at or after `from` match `filter`.
    pub(crate) fn count_matching(
        &self,
        stream: &str,
        filter: &str,
        from: u64,
    ) -> Result<u64, MemoryError> {
        self.read_stream(stream, |stream| {
            let count = stored_from(stream, from)
                .filter(|message| subject::matches(filter, &message.subject))
                .count();
            u64::try_from(count).unwrap_or(u64::MAX)
        })
    }

    /// The sequence of the first message of `stream` stored at or after
    /// `time`, or the next sequence to be stored when there is none.
    pub(crate) fn first_sequence_since(
        &self,
        stream: &str,
        time: SystemTime,
    ) -> Result<u64, MemoryError> {
        self.read_stream(stream, |stream| {
            stream
                .messages
                .iter()
                .find(|message| message.published >= time)
                .map_or(stream.last_sequence() + 1, |message| message.sequence)
        })
    }

    /// Waits for the first message of `stream` matching `filter` at or after
    /// `from`, stored already or not yet; an error once the stream is gone.
    pub(crate) async fn wait_message_for(
        &self,
        stream: &str,
        filter: &str,
        from: u64,
    ) -> Result<StoredMessage, MemoryError> {
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a message stored in between is
            // not missed.
            changed.as_mut().enable();
            if let Some(message) = self.next_message_for(stream, filter, from)? {
                return Ok(message);
            }
            changed.await;
        }
    }
}

/// The messages of `stream` from sequence `from` on.
fn stored_from(stream: &Stream, from: u64) -> impl Iterator<Item = &StoredMessage> {
    // Sequences start at 1 and nothing is removed: message `n` is at `n - 1`.
    let skip = usize::try_from(from.saturating_sub(1)).unwrap_or(usize::MAX);
    stream.messages.iter().skip(skip)
}
