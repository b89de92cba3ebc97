//! Publishing typed events and knowing whether JetStream stored them.
//!
//! Every publish awaits the server's PubAck. The event id is sent as
//! `Nats-Msg-Id`, so a retried publish is stored once within the stream's
//! duplicate window; retries after an ack timeout or a 503 (no stream leader
//! during an election) reuse it. When the retry budget runs out after a timeout
//! the error is [`PublishErrorKind::OutcomeUnknown`]: the event may or may not
//! be stored, and publishing it again with the same id is safe: the error's
//! [`event_id`](PublishError::event_id), passed to [`PublishOptions::id`].
//!
//! Events published while a handler runs get ids derived from the handled
//! event, so a handler run again after a failure publishes its follow-ups
//! under the same ids and they are stored once: see [`Lineage`](crate::lineage::Lineage).

use opentelemetry::StringValue;
use tracing::Instrument;

mod attempt;
mod error;
mod ingest;
mod one_stream;
mod options;
mod outgoing;
mod pipeline;
mod prepare;
mod shared_headers;

pub use error::{PublishError, PublishErrorKind};
pub use ingest::{IngestPath, IngestReport, Ingested};
pub use options::{PublishOptions, Receipt};

use crate::client::Client;
use crate::envelope::Envelope;
use crate::event::Event;
use error::error_type;
use outgoing::Outgoing;
use prepare::event_type_of;

/// Publishes events of one service. Cheap to clone.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)]
/// # struct AppointmentConfirmed { appointment_id: String }
/// # impl jetevents::Event for AppointmentConfirmed {
/// #     const TYPE: &'static str = "booking.appointment.confirmed.v1";
/// #     fn key(&self) -> Option<String> { Some(self.appointment_id.clone()) }
/// # }
/// # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let publisher = client.publisher();
/// let receipt = publisher
///     .publish(&AppointmentConfirmed { appointment_id: "a-1".into() })
///     .await?;
/// println!("stored as {} #{}", receipt.stream, receipt.sequence);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Publisher {
    client: Client,
    #[cfg(feature = "encryption")]
    encryption: Option<crate::encryption::Encryption>,
    claim_check: Option<crate::claim_check::ClaimCheck>,
}

/// Defined here rather than in [`client`](crate::client), so the client
/// does not import the publisher built on it.
impl Client {
    /// A publisher on this connection.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            client: self.clone(),
            #[cfg(feature = "encryption")]
            encryption: None,
            claim_check: None,
        }
    }
}

impl Publisher {
    /// The client this publisher uses.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// This publisher, encrypting the data of the events `encryption`
    /// applies to (see [`encryption`](crate::encryption)). Those events go
    /// through an envelope whatever the encoding.
    #[cfg(feature = "encryption")]
    #[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
    pub fn with_encryption(mut self, encryption: crate::encryption::Encryption) -> Self {
        self.encryption = Some(encryption);
        self
    }

    /// This publisher, moving data that would not fit a message (or over
    /// the claim check's threshold) to its Object Store bucket (see
    /// [`claim_check`](crate::claim_check)); encrypted data is stored
    /// encrypted. Its events go through an envelope whatever the encoding.
    pub fn with_claim_check(mut self, claim_check: crate::claim_check::ClaimCheck) -> Self {
        self.claim_check = Some(claim_check);
        self
    }

    /// Publishes `event` and awaits the server's ack.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Receipt, PublishError> {
        self.publish_with(event, PublishOptions::default()).await
    }

    /// Publishes `event` with `options` and awaits the server's ack.
    pub async fn publish_with<E: Event>(
        &self,
        event: &E,
        options: PublishOptions,
    ) -> Result<Receipt, PublishError> {
        let event_type = event_type_of::<E>()?;
        #[cfg(feature = "encryption")]
        self.load_keys(
            E::TYPE,
            options.key.clone().or_else(|| event.key()).as_deref(),
        )
        .await?;
        let mut prepared = self.prepare_event(&event_type, None, event, &options)?;
        self.store_claim(&mut prepared).await?;
        let span = prepared.span.clone();
        self.send_with_retries(prepared).instrument(span).await
    }

    /// Publishes a ready envelope on `subject` (for events that are not Rust
    /// types here: relays, redrives, tests). It keeps the envelope's id, also
    /// inside a handler (no derived follow-up id), unless `options` set one.
    pub async fn publish_envelope(
        &self,
        subject: &str,
        mut envelope: Envelope,
        options: PublishOptions,
    ) -> Result<Receipt, PublishError> {
        if let Some(id) = &options.id {
            envelope.id.clone_from(id);
        }
        #[cfg(feature = "encryption")]
        self.load_keys(&envelope.event_type, envelope.partition_key())
            .await?;
        let metric_type = StringValue::from(envelope.event_type.clone());
        let encoding = options.encoding.unwrap_or(self.client.config().encoding);
        let outgoing = Outgoing::Envelope { envelope, encoding };
        let mut prepared =
            self.prepare(subject.to_owned(), outgoing, &options, metric_type, None)?;
        self.store_claim(&mut prepared).await?;
        let span = prepared.span.clone();
        self.send_with_retries(prepared).instrument(span).await
    }
}
