//! The stream of an ingest: a fast-ingest batch belongs to one stream, so
//! [`Publisher::ingest`] finds the stream capturing each event's subject
//! before it sends anything, and refuses a call whose events are not all
//! captured by one stream.
//!
//! Without the check a batch meets the second stream's first event as a
//! gap: the batch ends, the rest of the call is published one by one after
//! it, and the stream no longer holds the events in input order.

use std::collections::HashMap;

use async_nats::jetstream::context::GetStreamByNameErrorKind;

use super::{PublishErrorKind, Publisher};

/// What captures the subjects of one `ingest` call.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Capture {
    /// One stream captures them all, or the lookup failed (a busy cluster):
    /// the batches' answers tell the rest.
    ByOne,
    /// No stream captures any of them.
    ByNone,
    /// Not all in one stream: why, for every event.
    Mixed(PublishErrorKind),
}

/// Distinct subjects looked up one by one, at most, when a type's keys are
/// captured by streams listing literal keys; beyond it the batches'
/// answers tell the rest.
const MAX_SUBJECT_LOOKUPS: usize = 256;

impl Publisher {
    /// What captures `subjects`, the subjects of one event type: `unkeyed`
    /// (the type's subject) or `unkeyed` and a key token.
    /// Made one at a time, not kept: an ingest may hold a million events.
    pub(super) async fn capture_of(
        &self,
        unkeyed: &str,
        mut subjects: impl Iterator<Item = String>,
    ) -> Capture {
        let Some(first) = subjects.next() else {
            return Capture::ByOne;
        };
        let mut lookup = Lookup::new(self, unkeyed);
        let Some(first_stream) = lookup.stream_of(&first).await else {
            return Capture::ByOne;
        };
        for subject in subjects {
            let Some(stream) = lookup.stream_of(&subject).await else {
                return Capture::ByOne;
            };
            if stream != first_stream {
                return Capture::Mixed(PublishErrorKind::NotOneStream {
                    subject,
                    stream,
                    first_stream,
                });
            }
        }
        match first_stream {
            Some(_) => Capture::ByOne,
            None => Capture::ByNone,
        }
    }
}

/// Finds the streams capturing the subjects of one type with as few
/// requests as their subjects allow. Only `$JS.API.STREAM.NAMES` is asked
/// (every publisher may; see [`permissions`](crate::permissions)): a
/// request the user may not make would wait for its timeout.
struct Lookup<'a> {
    publisher: &'a Publisher,
    unkeyed: &'a str,
    /// The stream of the unkeyed subject, once asked.
    of_unkeyed: Option<Option<String>>,
    /// The stream of every keyed subject, once known to be the same for
    /// all keys (a wildcard stream subject, or none at all).
    of_every_key: Option<Option<String>>,
    /// Some stream lists literal keys: keyed subjects are asked one by one.
    keys_vary: bool,
    asked: HashMap<String, Option<String>>,
}

impl<'a> Lookup<'a> {
    fn new(publisher: &'a Publisher, unkeyed: &'a str) -> Self {
        Self {
            publisher,
            unkeyed,
            of_unkeyed: None,
            of_every_key: None,
            keys_vary: false,
            asked: HashMap::new(),
        }
    }

    /// The stream capturing `subject` (`Some(None)`: none); `None` when it
    /// could not be found out.
    async fn stream_of(&mut self, subject: &str) -> Option<Option<String>> {
        #[cfg(feature = "testing")]
        if let Some(memory) = self.publisher.client.memory() {
            return Some(memory.stream_for_subject(subject));
        }
        if subject == self.unkeyed {
            if self.of_unkeyed.is_none() {
                self.of_unkeyed = Some(self.names(subject).await?);
            }
            return self.of_unkeyed.clone();
        }
        if self.of_every_key.is_none() && !self.keys_vary {
            // A key no stream can list: a stream capturing it captures
            // every key with a wildcard.
            let any_key = format!("{}.{}", self.unkeyed, uuid::Uuid::now_v7().simple());
            match self.names(&any_key).await? {
                Some(stream) => self.of_every_key = Some(Some(stream)),
                None => match self.names(&format!("{}.*", self.unkeyed)).await? {
                    None => self.of_every_key = Some(None),
                    Some(_) => self.keys_vary = true,
                },
            }
        }
        if let Some(every_key) = &self.of_every_key {
            return Some(every_key.clone());
        }
        if let Some(known) = self.asked.get(subject) {
            return Some(known.clone());
        }
        if self.asked.len() >= MAX_SUBJECT_LOOKUPS {
            return None;
        }
        let stream = self.names(subject).await?;
        self.asked.insert(subject.to_owned(), stream.clone());
        Some(stream)
    }

    /// The first stream whose subjects overlap `filter` (`Some(None)`:
    /// none); `None` when the server did not answer.
    async fn names(&self, filter: &str) -> Option<Option<String>> {
        let jetstream = self.publisher.client.jetstream()?;
        match jetstream.stream_by_subject(filter).await {
            Ok(stream) => Some(Some(stream)),
            Err(err) if matches!(err.kind(), GetStreamByNameErrorKind::NotFound) => Some(None),
            Err(err) => {
                tracing::debug!(error = %err, filter, "ingest: streams not looked up");
                None
            }
        }
    }
}
