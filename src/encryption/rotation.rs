//! Retiring a key-encryption key: moving what it wrapped under the newest
//! key. What can move on an immutable stream: see [Rotation](super#rotation).

use async_nats::jetstream::kv;
use futures_util::StreamExt;

use super::aggregate::{context, format_entry, parse_entry, partition_key_of};
use super::{
    associated_data, extension, set_wrapped_key, Encryption, EncryptionError, EncryptionErrorKind,
    ALGORITHM, KEY_ID, KEY_SCOPE,
};
use crate::client::Client;
use crate::envelope::Envelope;
use crate::publish::{PublishOptions, Publisher};
use crate::stream_scan::StreamScan;

/// What [`Encryption::republish_rewrapped`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RewrapReport {
    /// Events re-published.
    pub republished: usize,
    /// Of those, events whose data key was rewrapped under the newest key.
    pub rewrapped: usize,
}

impl Encryption {
    /// Rewraps the data key of an event encrypted with its own data key
    /// under the newest key-encryption key. The data and every other
    /// attribute stay as they are. Returns whether anything changed: not
    /// for plaintext, an aggregate's data key, or a key already the newest.
    pub fn rewrap(&self, envelope: &mut Envelope) -> Result<bool, EncryptionError> {
        if extension(envelope, ALGORITHM)?.is_none() || extension(envelope, KEY_SCOPE)?.is_some() {
            return Ok(false);
        }
        let aad = associated_data(envelope);
        let data_key = self.unwrap_event_key(envelope, &aad)?;
        let wrapped = self.keys.wrap(&data_key, &aad)?;
        if extension(envelope, KEY_ID)? == Some(wrapped.key_id.as_str()) {
            return Ok(false);
        }
        set_wrapped_key(envelope, wrapped)?;
        Ok(true)
    }

    /// Rewraps every aggregate data key in the
    /// [`per_aggregate`](Self::per_aggregate) bucket under the newest
    /// key-encryption key, in place. A key shredded or changed meanwhile is
    /// left alone. Returns how many were rewrapped.
    pub async fn rewrap_aggregate_keys(&self) -> Result<usize, EncryptionError> {
        let aggregates = self
            .aggregates
            .as_ref()
            .ok_or_else(|| EncryptionError::new(EncryptionErrorKind::NotLoaded))?;
        let store = aggregates.store();
        let mut names = store
            .keys()
            .await
            .map_err(|err| aggregates.store_error(err))?;
        let mut rewrapped = 0;
        while let Some(name) = names.next().await {
            let name = name.map_err(|err| aggregates.store_error(err))?;
            let Some(entry) = store
                .entry(name.as_str())
                .await
                .map_err(|err| aggregates.store_error(err))?
            else {
                continue;
            };
            if entry.operation != kv::Operation::Put {
                continue;
            }
            let context = context(&partition_key_of(&name)?);
            let wrapped = parse_entry(&entry.value)?;
            let data_key = self.keys.unwrap(&wrapped, &context)?;
            let newest = self.keys.wrap(&data_key, &context)?;
            if newest.key_id == wrapped.key_id {
                continue;
            }
            match store
                .update(name.as_str(), format_entry(&newest), entry.revision)
                .await
            {
                Ok(_) => rewrapped += 1,
                Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(err) => return Err(aggregates.store_error(err)),
            }
        }
        Ok(rewrapped)
    }

    /// Re-publishes every event stored now in `from_stream` through
    /// `publisher`, on the subject `subject` gives for its original one,
    /// with its id kept and its data key [rewrapped](Self::rewrap). Events
    /// that are not encrypted are copied as they are. Running it again
    /// within the target stream's duplicate window stores nothing twice.
    pub async fn republish_rewrapped(
        &self,
        client: &Client,
        from_stream: &str,
        publisher: &Publisher,
        subject: impl Fn(&str) -> String,
    ) -> Result<RewrapReport, EncryptionError> {
        let copy_error = |err: crate::error::BoxError| {
            EncryptionError::with_source(
                EncryptionErrorKind::Republish(format!("stream {from_stream}")),
                err,
            )
        };
        let jetstream = client
            .jetstream()
            .ok_or_else(|| copy_error("re-publishing needs a NATS connection".into()))?;
        let stream = jetstream
            .get_stream(from_stream)
            .await
            .map_err(|err| copy_error(err.into()))?;
        let mut scan = StreamScan::start(&stream, false)
            .await
            .map_err(copy_error)?;
        let mut report = RewrapReport::default();
        while let Some(message) = scan.next().await {
            let (_, message) = message.map_err(copy_error)?;
            let mut envelope = crate::codec::decode(message.headers.as_ref(), &message.payload)
                .map_err(|err| copy_error(err.into()))?;
            if self.rewrap(&mut envelope)? {
                report.rewrapped += 1;
            }
            publisher
                .publish_envelope(&subject(&message.subject), envelope, PublishOptions::new())
                .await
                .map_err(|err| copy_error(err.into()))?;
            report.republished += 1;
        }
        Ok(report)
    }
}
