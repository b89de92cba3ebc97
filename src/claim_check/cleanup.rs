//! Removing objects whose events are gone: the claim check's retention.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::stream::Stream;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{now_millis, store_error, ClaimCheck, ClaimCheckError, BUCKET, OBJECT, STORED_AT};
use crate::client::Client;
use crate::stream_scan::StreamScan;

/// What [`ClaimCheck::remove_orphans`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CleanupReport {
    /// Objects some message still refers to, or younger than the grace period.
    pub kept: usize,
    /// Objects deleted: no message refers to them.
    pub removed: Vec<String>,
}

impl ClaimCheck {
    /// Deletes the bucket's objects that no message in `streams` refers to
    /// and that were stored more than `grace` ago. Pass every stream that
    /// may hold a reference: the event stream and its dead-letter stream
    /// (a redrive needs the object). `grace` must exceed the time between
    /// storing an object and its event being stored (publish retries
    /// included): an object is stored first.
    ///
    /// It reads the streams' headers only (and the whole message of an
    /// event in structured mode), once per call: run it periodically, not
    /// per event.
    pub async fn remove_orphans(
        &self,
        client: &Client,
        streams: &[&str],
        grace: Duration,
    ) -> Result<CleanupReport, ClaimCheckError> {
        let cutoff =
            now_millis().saturating_sub(i64::try_from(grace.as_millis()).unwrap_or(i64::MAX));
        let mut referenced = HashSet::new();
        for stream in streams {
            self.collect_references(client, stream, &mut referenced)
                .await?;
        }
        let bucket_error =
            |err: Box<dyn std::error::Error + Send + Sync>| store_error(&self.bucket, err);
        let mut objects = self
            .store
            .list()
            .await
            .map_err(|err| bucket_error(err.into()))?;
        let mut report = CleanupReport::default();
        while let Some(object) = objects.next().await {
            let object = object.map_err(|err| bucket_error(err.into()))?;
            let stored_at = object
                .metadata
                .get(STORED_AT)
                .and_then(|millis| millis.parse::<i64>().ok());
            // An object without the mark was not stored by a claim check:
            // not ours to delete.
            let orphan = !referenced.contains(&object.name)
                && stored_at.is_some_and(|stored_at| stored_at <= cutoff);
            if !orphan {
                report.kept += 1;
                continue;
            }
            self.store
                .delete(&object.name)
                .await
                .map_err(|err| bucket_error(err.into()))?;
            report.removed.push(object.name);
        }
        Ok(report)
    }

    /// Adds the objects of this bucket that messages of `stream` refer to.
    async fn collect_references(
        &self,
        client: &Client,
        stream: &str,
        referenced: &mut HashSet<String>,
    ) -> Result<(), ClaimCheckError> {
        let stream_error = |err: Box<dyn std::error::Error + Send + Sync>| {
            ClaimCheckError::with_source(
                super::ClaimCheckErrorKind::Store(format!("stream {stream}")),
                err,
            )
        };
        let jetstream = client
            .jetstream()
            .ok_or_else(|| ClaimCheckError::new(super::ClaimCheckErrorKind::NeedsNats))?;
        let stream = jetstream
            .get_stream(stream)
            .await
            .map_err(|err| stream_error(err.into()))?;
        let mut scan = StreamScan::start(&stream, true)
            .await
            .map_err(stream_error)?;
        while let Some(message) = scan.next().await {
            let (sequence, message) = message.map_err(stream_error)?;
            if let Some(object) = self.reference(&stream, &message, sequence).await {
                referenced.insert(object);
            }
        }
        Ok(())
    }

    /// The object of this bucket a message refers to: from its headers in
    /// binary mode, from the whole message in structured mode.
    async fn reference(
        &self,
        stream: &Stream,
        message: &async_nats::jetstream::Message,
        sequence: u64,
    ) -> Option<String> {
        let envelope = match crate::codec::decode(message.headers.as_ref(), &Bytes::new()) {
            Ok(envelope) => envelope,
            Err(_) => {
                let raw = stream.get_raw_message(sequence).await.ok()?;
                crate::codec::decode(Some(&raw.headers), &raw.payload).ok()?
            }
        };
        let bucket = envelope.extension(BUCKET)?.as_str()?;
        let object = envelope.extension(OBJECT)?.as_str()?;
        (bucket == self.bucket).then(|| object.to_owned())
    }
}
