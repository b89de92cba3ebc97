//! A stream: its configuration, its messages, and the checks a publish goes
//! through, in the order nats-server makes them (`processJetStreamMsg`):
//! expected stream, expected last subject sequence, expected last sequence,
//! duplicate id, expected last id, size.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use async_nats::header::{
    NATS_EXPECTED_LAST_MESSAGE_ID, NATS_EXPECTED_LAST_SEQUENCE,
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_EXPECTED_STREAM, NATS_MESSAGE_ID,
};
use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::time::Instant;

use super::consumer::Consumer;
use super::error::{MemoryErrorKind, PublishErrorKind};
use super::message::StoredMessage;
use super::subject;

/// Header naming the subject filter for `Nats-Expected-Last-Subject-Sequence`
/// (async-nats has no constant for it).
pub const NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT: &str =
    "Nats-Expected-Last-Subject-Sequence-Subject";

/// The server's default duplicate window.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// A stream's configuration, as in async-nats's `stream::Config` (the part the
/// engine implements).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamConfig {
    /// The stream's name.
    pub name: String,
    /// Subjects the stream captures, NATS wildcards allowed. Empty means the
    /// stream's name, as on the server.
    pub subjects: Vec<String>,
    /// How long a `Nats-Msg-Id` is remembered for deduplication; zero means the
    /// server's default of two minutes.
    pub duplicate_window: Duration,
}

impl StreamConfig {
    /// A configuration with `name`, `subjects` and the defaults.
    pub fn new(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
        }
    }

    /// The configuration with the server's defaults filled in, or why it is invalid.
    pub(crate) fn normalized(mut self) -> Result<Self, MemoryErrorKind> {
        if !subject::is_valid_name(&self.name) {
            return Err(MemoryErrorKind::InvalidName(self.name));
        }
        if self.subjects.is_empty() {
            self.subjects = vec![self.name.clone()];
        }
        if let Some(invalid) = self.subjects.iter().find(|s| !subject::is_valid_pattern(s)) {
            return Err(MemoryErrorKind::InvalidSubject(invalid.clone()));
        }
        if self.duplicate_window.is_zero() {
            self.duplicate_window = DEFAULT_DUPLICATE_WINDOW;
        }
        Ok(self)
    }

    /// Whether this stream captures `subject`.
    pub(crate) fn captures(&self, subject: &str) -> bool {
        self.subjects
            .iter()
            .any(|filter| subject::matches(filter, subject))
    }

    /// Whether any subject of this stream is also one of `other`'s.
    pub(crate) fn overlaps(&self, other: &StreamConfig) -> bool {
        self.subjects.iter().any(|mine| {
            other
                .subjects
                .iter()
                .any(|theirs| subject::overlap(mine, theirs))
        })
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self::new("", Vec::<String>::new())
    }
}

/// A stream's configuration and state.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamInfo {
    /// The configuration, defaults filled in.
    pub config: StreamConfig,
    /// Number of messages stored.
    pub messages: u64,
    /// Sequence of the first message (1 when empty, as on the server).
    pub first_sequence: u64,
    /// Sequence of the last message (0 when empty).
    pub last_sequence: u64,
    /// Number of consumers.
    pub consumer_count: usize,
}

/// The answer to a stored (or deduplicated) publish.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishAck {
    /// The stream that stored the message.
    pub stream: String,
    /// Its sequence in the stream; for a duplicate, the original's sequence.
    pub sequence: u64,
    /// Whether the message was a duplicate within the window (not stored again).
    pub duplicate: bool,
}

/// A message on its way into a stream.
pub(crate) struct Incoming<'a> {
    pub(crate) subject: &'a str,
    pub(crate) headers: Option<&'a HeaderMap>,
    pub(crate) payload: Bytes,
    pub(crate) now: Instant,
    pub(crate) wall_clock: SystemTime,
    pub(crate) max_payload: usize,
}

/// Why an atomic batch stored nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BatchRefusal {
    /// A message was refused.
    Refused(PublishErrorKind),
    /// A message id is already stored, as `sequence`.
    Duplicate { sequence: u64 },
}

/// A stream's state inside the engine.
#[derive(Debug)]
pub(crate) struct Stream {
    pub(crate) config: StreamConfig,
    /// Messages in sequence order; nothing is ever removed, so the sequence of
    /// `messages[i]` is `i + 1`.
    pub(crate) messages: Vec<StoredMessage>,
    /// `Nats-Msg-Id` to (sequence, stored at).
    dedup: HashMap<String, (u64, Instant)>,
    /// The id of the last stored message, empty when it had none.
    last_msg_id: String,
    pub(crate) consumers: BTreeMap<String, Consumer>,
}

impl Stream {
    pub(crate) fn new(config: StreamConfig) -> Self {
        Self {
            config,
            messages: Vec::new(),
            dedup: HashMap::new(),
            last_msg_id: String::new(),
            consumers: BTreeMap::new(),
        }
    }

    pub(crate) fn last_sequence(&self) -> u64 {
        self.messages.len() as u64
    }

    pub(crate) fn info(&self) -> StreamInfo {
        StreamInfo {
            config: self.config.clone(),
            messages: self.last_sequence(),
            first_sequence: 1,
            last_sequence: self.last_sequence(),
            consumer_count: self.consumers.len(),
        }
    }

    /// Stores `incoming` after the server's checks, or says why not.
    pub(crate) fn store(&mut self, incoming: Incoming<'_>) -> Result<PublishAck, PublishErrorKind> {
        let header = |name: &str| {
            incoming
                .headers
                .and_then(|headers| headers.get(name))
                .map(|value| value.as_str().to_owned())
        };
        if let Some(expected) = header(NATS_EXPECTED_STREAM.as_ref()) {
            if !expected.is_empty() && expected != self.config.name {
                return Err(PublishErrorKind::StreamNameMismatch);
            }
        }
        let filter = header(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT).filter(|f| !f.is_empty());
        match header(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE.as_ref()).filter(|s| !s.is_empty()) {
            Some(expected) => {
                let filter = filter.as_deref().unwrap_or(incoming.subject);
                let actual = self.last_sequence_matching(filter);
                if parse_sequence(&expected) != actual {
                    return Err(PublishErrorKind::WrongLastSequence { actual });
                }
            }
            None if filter.is_some() => return Err(PublishErrorKind::MissingLastSubjectSequence),
            None => {}
        }
        if let Some(expected) =
            header(NATS_EXPECTED_LAST_SEQUENCE.as_ref()).filter(|s| !s.is_empty())
        {
            let actual = self.last_sequence();
            if parse_sequence(&expected) != actual {
                return Err(PublishErrorKind::WrongLastSequence { actual });
            }
        }
        let msg_id = header(NATS_MESSAGE_ID.as_ref()).unwrap_or_default();
        if let Some(original) = self.duplicate_of(&msg_id, incoming.now) {
            return Ok(PublishAck {
                stream: self.config.name.clone(),
                sequence: original,
                duplicate: true,
            });
        }
        if let Some(expected) =
            header(NATS_EXPECTED_LAST_MESSAGE_ID.as_ref()).filter(|s| !s.is_empty())
        {
            if expected != self.last_msg_id {
                return Err(PublishErrorKind::WrongLastMsgId {
                    actual: self.last_msg_id.clone(),
                });
            }
        }
        let size = match incoming.headers {
            Some(headers) => crate::codec::wire_size(headers, incoming.payload.len()),
            None => incoming.payload.len(),
        };
        if size > incoming.max_payload {
            return Err(PublishErrorKind::MaxPayloadExceeded {
                limit: incoming.max_payload,
                size,
            });
        }

        let sequence = self.last_sequence() + 1;
        self.messages.push(StoredMessage {
            subject: incoming.subject.to_owned(),
            headers: incoming.headers.filter(|h| !h.is_empty()).cloned(),
            payload: incoming.payload,
            sequence,
            published: incoming.wall_clock,
        });
        if !msg_id.is_empty() {
            self.dedup.insert(msg_id.clone(), (sequence, incoming.now));
        }
        self.last_msg_id = msg_id;
        Ok(PublishAck {
            stream: self.config.name.clone(),
            sequence,
            duplicate: false,
        })
    }

    /// Stores `batch` as an atomic batch: every message after the checks of
    /// [`Stream::store`], contiguous, or none of them. A message whose id is
    /// already stored refuses the whole batch, as on the server.
    pub(crate) fn store_batch(
        &mut self,
        batch: Vec<Incoming<'_>>,
    ) -> Result<(u64, u64), BatchRefusal> {
        let before = self.messages.len();
        let last_msg_id = self.last_msg_id.clone();
        let mut stored = Ok((self.last_sequence() + 1, self.last_sequence()));
        for incoming in batch {
            match self.store(incoming) {
                Ok(ack) if ack.duplicate => {
                    stored = Err(BatchRefusal::Duplicate {
                        sequence: ack.sequence,
                    });
                    break;
                }
                Ok(ack) => {
                    if let Ok((_, last)) = &mut stored {
                        *last = ack.sequence;
                    }
                }
                Err(kind) => {
                    stored = Err(BatchRefusal::Refused(kind));
                    break;
                }
            }
        }
        if stored.is_err() {
            // Undo what the batch stored so far.
            for message in self.messages.drain(before..) {
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|headers| headers.get(NATS_MESSAGE_ID))
                    .map(|id| id.as_str().to_owned());
                if let Some(id) = id {
                    self.dedup.remove(&id);
                }
            }
            self.last_msg_id = last_msg_id;
        }
        stored
    }

    /// The sequence `msg_id` was stored under, if within the duplicate window.
    fn duplicate_of(&mut self, msg_id: &str, now: Instant) -> Option<u64> {
        let window = self.config.duplicate_window;
        // Forget ids once out of the window, as the server's purge timer does.
        self.dedup
            .retain(|_, (_, stored_at)| now.saturating_duration_since(*stored_at) < window);
        if msg_id.is_empty() {
            return None;
        }
        self.dedup.get(msg_id).map(|(sequence, _)| *sequence)
    }

    /// The last sequence among subjects matching `filter`, 0 if none.
    fn last_sequence_matching(&self, filter: &str) -> u64 {
        self.messages
            .iter()
            .rev()
            .find(|message| subject::matches(filter, &message.subject))
            .map_or(0, |message| message.sequence)
    }
}

/// The server parses expected sequences leniently: anything not a number
/// becomes a value no stream has, so the check fails.
fn parse_sequence(text: &str) -> u64 {
    text.trim().parse().unwrap_or(u64::MAX)
}
