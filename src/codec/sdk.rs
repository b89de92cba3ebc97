//! Conversions between an envelope and the CloudEvents SDK's event. Here
//! rather than in the envelope's module: reading the SDK's event checks it
//! against the codec's rules, so whatever converts also encodes.

use bytes::Bytes;

use super::{check_decoded, is_json_content_type, DecodeError, DecodeErrorKind};
use crate::envelope::{Envelope, ExtensionName, ExtensionValue, Extensions};
use crate::Error;

/// Converts to the CloudEvents SDK's event.
///
/// JSON data becomes `Data::Json` when it parses, other data `Data::Binary`.
/// The SDK stores `dataschema` as an absolute URL: a `data_schema` that does
/// not parse as one is dropped.
impl From<Envelope> for cloudevents::Event {
    fn from(envelope: Envelope) -> Self {
        use cloudevents::event::{AttributesWriter, TryIntoUrl};

        let mut event = cloudevents::Event::default();
        event.set_id(envelope.id);
        event.set_source(envelope.source);
        event.set_type(envelope.event_type);
        event.set_subject(envelope.subject);
        event.set_time(envelope.time);
        if let Some(data) = envelope.data {
            let is_json = is_json_content_type(envelope.data_content_type.as_deref());
            let data = match is_json
                .then(|| serde_json::from_slice::<serde_json::Value>(&data).ok())
                .flatten()
            {
                Some(value) => cloudevents::Data::Json(value),
                None => cloudevents::Data::Binary(data.to_vec()),
            };
            event.set_data_unchecked(data);
        }
        event.set_datacontenttype(envelope.data_content_type);
        if let Some(url) = envelope.data_schema.and_then(|s| s.into_url().ok()) {
            event.set_dataschema(Some(url));
        }
        for (name, value) in envelope.extensions {
            let value = match value {
                ExtensionValue::String(s) => cloudevents::event::ExtensionValue::String(s),
                ExtensionValue::Boolean(b) => cloudevents::event::ExtensionValue::Boolean(b),
                ExtensionValue::Integer(i) => cloudevents::event::ExtensionValue::Integer(i),
            };
            event.set_extension(name.as_str(), value);
        }
        event
    }
}

/// Converts from the CloudEvents SDK's event (spec version 1.0 only).
impl TryFrom<cloudevents::Event> for Envelope {
    type Error = DecodeError;

    fn try_from(event: cloudevents::Event) -> Result<Self, Self::Error> {
        use cloudevents::event::{AttributesReader, SpecVersion};

        if event.specversion() != SpecVersion::V10 {
            return Err(Error::new(DecodeErrorKind::UnsupportedSpecVersion(
                event.specversion().to_string(),
            )));
        }
        let mut extensions = Extensions::new();
        for (name, value) in event.iter_extensions() {
            let Some(name) = ExtensionName::parse(name) else {
                return Err(Error::new(DecodeErrorKind::InvalidAttribute {
                    name: name.to_owned(),
                    reason: "invalid extension name".to_owned(),
                }));
            };
            let value = match value {
                cloudevents::event::ExtensionValue::String(s) => ExtensionValue::String(s.clone()),
                cloudevents::event::ExtensionValue::Boolean(b) => ExtensionValue::Boolean(*b),
                cloudevents::event::ExtensionValue::Integer(i) => ExtensionValue::Integer(*i),
            };
            extensions.set(name, value);
        }
        let data = match event.data() {
            None => None,
            Some(cloudevents::Data::Binary(bytes)) => Some(Bytes::copy_from_slice(bytes)),
            Some(cloudevents::Data::String(s)) => Some(Bytes::copy_from_slice(s.as_bytes())),
            Some(cloudevents::Data::Json(value)) => {
                Some(Bytes::from(serde_json::to_vec(value).map_err(|err| {
                    Error::with_source(DecodeErrorKind::InvalidJson, err)
                })?))
            }
        };
        let envelope = Envelope {
            id: event.id().to_owned(),
            source: event.source().to_string(),
            event_type: event.ty().to_owned(),
            subject: event.subject().map(str::to_owned),
            time: event.time().copied(),
            data_content_type: event.datacontenttype().map(str::to_owned),
            data_schema: event.dataschema().map(|url| url.to_string()),
            extensions,
            data,
        };
        check_decoded(&envelope)?;
        Ok(envelope)
    }
}
