//! In-progress acks, one at a time per event.

use std::task::Poll;

use futures_util::future::BoxFuture;

use crate::error::BoxError;
use crate::transport::Delivery;

/// One event's in-progress ack on its way into the client. At most one per
/// event: while the client's queue is full (a stalled or lost connection)
/// more would only queue behind it. Polled next to what the caller waits
/// for, never awaited on its own, so a full queue holds up nothing else.
#[derive(Default)]
pub(super) struct ProgressAck {
    sending: Option<BoxFuture<'static, Result<(), BoxError>>>,
}

impl ProgressAck {
    /// Sends one, unless the last one is still waiting for the client.
    pub(super) fn start(&mut self, delivery: &impl Delivery) {
        if self.sending.is_some() {
            return;
        }
        self.sending = Some(delivery.progress());
    }

    pub(super) fn is_sending(&self) -> bool {
        self.sending.is_some()
    }

    /// Ready with the outcome once the client took (or refused) the ack.
    pub(super) fn poll_sent(
        &mut self,
        context: &mut std::task::Context<'_>,
    ) -> Poll<Result<(), BoxError>> {
        let Some(sending) = self.sending.as_mut() else {
            return Poll::Pending;
        };
        let sent = futures_util::ready!(sending.as_mut().poll(context));
        self.sending = None;
        Poll::Ready(sent)
    }
}
