//! The stream of an ingest: a fast-ingest batch belongs to one stream, so
//! [`Publisher::ingest`] finds the stream capturing each event's subject
//! before it sends anything, and refuses a call whose events are not all
//! captured by one stream.
//!
//! Without the check a batch meets the second stream's first event as a
//! gap: the batch ends, the rest of the call is published one by one after
//! it, and the stream no longer holds the events in input order.

use async_nats::jetstream::response::Response;

use super::{PublishErrorKind, Publisher};

/// What captures the subjects of one `ingest` call.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Capture {
    /// One stream captures them all, or the lookup failed (a busy cluster):
    /// the batches' answers tell the rest.
    OneStream,
    /// No stream captures any of them.
    NoStream,
    /// Not all in one stream: why, for every event.
    NotOneStream(PublishErrorKind),
}

/// The streams that may capture an ingest's subjects.
enum Streams {
    /// Their names and subjects, as the server listed them.
    Listed(Vec<(String, Vec<String>)>),
    #[cfg(feature = "testing")]
    Memory(crate::testing::MemoryJetStream),
}

impl Streams {
    fn capturing(&self, subject: &str) -> Option<String> {
        match self {
            Streams::Listed(streams) => streams
                .iter()
                .find(|(_, patterns)| patterns.iter().any(|pattern| captures(pattern, subject)))
                .map(|(name, _)| name.clone()),
            #[cfg(feature = "testing")]
            Streams::Memory(memory) => memory.stream_for_subject(subject),
        }
    }
}

impl Publisher {
    /// What captures `subjects`, the subjects of one event type: `unkeyed`
    /// (the type's subject) or `unkeyed` and a key token.
    pub(super) async fn capture_of(&self, unkeyed: &str, subjects: &[String]) -> Capture {
        let Some((first, rest)) = subjects.split_first() else {
            return Capture::OneStream;
        };
        let Some(streams) = self.streams_for(unkeyed, subjects).await else {
            return Capture::OneStream;
        };
        let first_stream = streams.capturing(first);
        for subject in rest {
            let stream = streams.capturing(subject);
            if stream != first_stream {
                return Capture::NotOneStream(PublishErrorKind::NotOneStream {
                    subject: subject.clone(),
                    stream,
                    first_stream,
                });
            }
        }
        match first_stream {
            Some(_) => Capture::OneStream,
            None => Capture::NoStream,
        }
    }

    /// The streams whose subjects overlap those of the call: one request
    /// per subject shape (with and without a key). `None` when the server
    /// did not answer, or has more such streams than one page lists.
    async fn streams_for(&self, unkeyed: &str, subjects: &[String]) -> Option<Streams> {
        #[cfg(feature = "testing")]
        if let Some(memory) = self.client.memory() {
            return Some(Streams::Memory(memory.clone()));
        }
        let jetstream = self.client.jetstream()?;
        let keyed = format!("{unkeyed}.*");
        let mut filters = Vec::with_capacity(2);
        if subjects.iter().any(|subject| subject == unkeyed) {
            filters.push(unkeyed);
        }
        if subjects.iter().any(|subject| subject != unkeyed) {
            filters.push(&keyed);
        }
        let mut streams: Vec<(String, Vec<String>)> = Vec::new();
        for filter in filters {
            let request = serde_json::json!({ "subject": filter });
            let page: Response<StreamList> = jetstream
                .request("STREAM.LIST", &request)
                .await
                .map_err(|err| tracing::debug!(error = %err, "ingest: streams not listed"))
                .ok()?;
            let Response::Ok(page) = page else {
                return None;
            };
            if page.total > page.streams.len() {
                return None;
            }
            for info in page.streams {
                let config = info.config;
                if !streams.iter().any(|(name, _)| *name == config.name) {
                    streams.push((config.name, config.subjects));
                }
            }
        }
        Some(Streams::Listed(streams))
    }
}

/// A page of JetStream's stream list.
#[derive(serde::Deserialize)]
struct StreamList {
    total: usize,
    #[serde(default, deserialize_with = "null_is_empty")]
    streams: Vec<async_nats::jetstream::stream::Info>,
}

fn null_is_empty<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<async_nats::jetstream::stream::Info>, D::Error> {
    use serde::Deserialize;
    Ok(Option::deserialize(deserializer)?.unwrap_or_default())
}

/// Whether the stream subject `pattern` (wildcards allowed) captures the
/// literal `subject`.
fn captures(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for token in pattern.split('.') {
        match (token, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (literal, Some(other)) if literal == other => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::captures;

    #[test]
    fn stream_subjects_capture_literal_subjects_token_by_token() {
        assert!(captures("dev.bank.>", "dev.bank.account.opened.v1.a1"));
        assert!(captures(
            "dev.bank.*.*.*.*",
            "dev.bank.account.opened.v1.a1"
        ));
        assert!(captures(
            "dev.bank.account.opened.v1",
            "dev.bank.account.opened.v1"
        ));
        assert!(!captures("dev.bank.*.*.*", "dev.bank.account.opened.v1.a1"));
        assert!(!captures(
            "dev.bank.account.opened.v1.*",
            "dev.bank.account.opened.v1"
        ));
        assert!(!captures("dev.bank.>", "dev.bank"));
        assert!(!captures(
            "dev.bank.account.opened.v1.a1",
            "dev.bank.account.opened.v1.a10"
        ));
    }
}
