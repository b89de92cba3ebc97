//! One message handed to a consumer, and the ways to settle it.

use std::borrow::Cow;
use std::future::Future;
use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::error::BoxError;

/// Where a delivery comes from and how often it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DeliveryInfo<'a> {
    /// Borrowed where the transport can: read for every delivery, it would
    /// otherwise be a copy per event.
    pub(crate) stream: Cow<'a, str>,
    pub(crate) stream_sequence: u64,
    /// 1 on the first delivery.
    pub(crate) delivered: u64,
    /// Events of the consumer's filter not delivered yet, behind this one.
    pub(crate) pending: u64,
}

/// A message delivered to a consumer. Settling it is the transport's:
/// each call sends one acknowledgement and says whether it went out.
pub(crate) trait Delivery: Send + Sync + 'static {
    fn subject(&self) -> &str;
    /// The subject as the handler's context keeps it; transports that hold
    /// a shared one hand out a reference count rather than a copy.
    fn shared_subject(&self) -> async_nats::Subject {
        async_nats::Subject::from(self.subject())
    }
    fn headers(&self) -> Option<&HeaderMap>;
    fn payload(&self) -> &Bytes;
    /// Its stream position and delivery count; an error when the
    /// transport cannot tell (and so cannot settle it either).
    fn info(&self) -> Result<DeliveryInfo<'_>, BoxError>;
    /// Done. `confirmed`: wait until the server says it took the ack.
    ///
    /// Not boxed, unlike the rarer settlements: every handled event is
    /// acked, and its delivery's future holds this one in place of an
    /// allocation per event.
    fn ack(&self, confirmed: bool) -> impl Future<Output = Result<(), BoxError>> + Send + '_;
    /// Deliver it again after `delay`.
    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), BoxError>>;
    /// Never deliver it again.
    fn term(&self) -> BoxFuture<'_, Result<(), BoxError>>;
    /// Still working on it: restart its ack wait. `'static` so it can be
    /// polled on its own while the handler runs.
    fn progress(&self) -> BoxFuture<'static, Result<(), BoxError>>;
}

/// The stream sequence of a delivery, for reports (0 if it has none).
pub(crate) fn sequence_of(delivery: &impl Delivery) -> u64 {
    delivery.info().map_or(0, |info| info.stream_sequence)
}
