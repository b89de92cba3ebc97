//! The binary-mode headers every typed event of one type carries alike
//! (`ce-specversion`, `ce-source`, `ce-type`, `ce-datacontenttype`,
//! `ce-dataschema`), checked and encoded once for a `publish_many` or
//! `ingest` call instead of once per event.

use async_nats::HeaderMap;

use crate::codec::binary::{
    attribute_value, CE_DATACONTENTTYPE, CE_DATASCHEMA, CE_SOURCE, CE_SPECVERSION, CE_TYPE,
};
use crate::codec::{self, EncodeError};

/// The headers an event of one type starts from.
pub(super) struct SharedHeaders {
    headers: HeaderMap,
}

impl SharedHeaders {
    /// The shared headers of events of `event_type` from `source`; an
    /// error when a value is invalid (each event's own encoding then
    /// refuses it, naming that event).
    pub(super) fn new(
        source: &str,
        event_type: &str,
        data_schema: Option<&str>,
    ) -> Result<SharedHeaders, EncodeError> {
        let mut headers = HeaderMap::new();
        headers.insert(CE_SPECVERSION, codec::SPEC_VERSION);
        headers.insert(CE_SOURCE, attribute_value("source", source, true)?);
        headers.insert(CE_TYPE, attribute_value("type", event_type, true)?);
        headers.insert(CE_DATACONTENTTYPE, codec::APPLICATION_JSON);
        if let Some(schema) = data_schema {
            headers.insert(CE_DATASCHEMA, attribute_value("dataschema", schema, true)?);
        }
        Ok(SharedHeaders { headers })
    }

    /// The header map itself, for the one event it was made for.
    pub(super) fn into_map(self) -> HeaderMap {
        self.headers
    }

    /// A header map holding the shared headers, for one event's own to be
    /// added to. Cloning the map copies its table as it is: no hashing and
    /// no checking of the values again.
    pub(super) fn start(&self) -> HeaderMap {
        self.headers.clone()
    }
}
