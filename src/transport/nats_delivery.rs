//! A message pulled from a JetStream consumer, and its settling over the
//! connection it came on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::AckKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::future::{BoxFuture, Either};
use futures_util::{FutureExt, StreamExt};

use super::{Delivery, DeliveryInfo};
use crate::error::BoxError;

/// A message pulled from a JetStream consumer. async-nats's
/// `jetstream::Message` carries its own copy of the JetStream context (a
/// client's worth of reference counts and a prefix string, made and dropped
/// per message); these share one [`Acks`] per consumer.
pub(crate) struct NatsDelivery {
    pub(crate) message: async_nats::Message,
    acks: Arc<Acks>,
}

/// What settling a delivery needs: the connection, and how long a confirmed
/// ack waits for the server's answer.
#[derive(Debug)]
pub(crate) struct Acks {
    client: async_nats::Client,
    confirm_timeout: Duration,
}

impl Acks {
    pub(crate) fn new(client: async_nats::Client, confirm_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            client,
            confirm_timeout,
        })
    }
}

impl NatsDelivery {
    pub(crate) fn new(message: async_nats::Message, acks: Arc<Acks>) -> Self {
        Self { message, acks }
    }

    /// The reply subject every JetStream delivery is settled on.
    fn reply(&self) -> Result<&async_nats::Subject, BoxError> {
        self.message
            .reply
            .as_ref()
            .ok_or_else(|| BoxError::from("no reply subject: not a JetStream message"))
    }

    async fn send(&self, payload: Bytes) -> Result<(), BoxError> {
        let reply = self.reply()?.clone();
        self.acks.client.publish(reply, payload).await?;
        Ok(())
    }

    /// Acks and waits for the server to confirm it (as async-nats's
    /// `double_ack`, bounded by the JetStream API timeout).
    async fn confirmed_ack(&self) -> Result<(), BoxError> {
        let reply = self.reply()?.clone();
        let client = &self.acks.client;
        let inbox = client.new_inbox();
        let mut answer = client.subscribe(inbox.clone()).await?;
        client
            .publish_with_reply(reply, inbox, AckKind::Ack.into())
            .await?;
        match tokio::time::timeout(self.acks.confirm_timeout, answer.next()).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(BoxError::from("the ack's answer subscription was dropped")),
            Err(_) => Err(BoxError::from("confirmed ack timed out")),
        }
    }
}

impl Delivery for NatsDelivery {
    fn subject(&self) -> &str {
        self.message.subject.as_str()
    }

    fn shared_subject(&self) -> async_nats::Subject {
        self.message.subject.clone()
    }

    fn headers(&self) -> Option<&HeaderMap> {
        self.message.headers.as_ref()
    }

    fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    fn info(&self) -> Result<DeliveryInfo<'_>, BoxError> {
        parse_ack_subject(self.reply()?.as_str())
    }

    fn ack(&self, confirmed: bool) -> impl Future<Output = Result<(), BoxError>> + Send + '_ {
        if confirmed {
            // Boxed: its subscription and timer would make every ack's
            // future larger, for the few consumers that confirm.
            Either::Left(self.confirmed_ack().boxed())
        } else {
            // Empty, as async-nats's `ack` sends it.
            Either::Right(self.send(Bytes::new()))
        }
    }

    fn nak(&self, delay: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
        self.send(AckKind::Nak(Some(delay)).into()).boxed()
    }

    fn term(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        self.send(AckKind::Term.into()).boxed()
    }

    fn progress(&self) -> BoxFuture<'static, Result<(), BoxError>> {
        let reply = self.message.reply.clone();
        let acks = self.acks.clone();
        async move {
            // Every JetStream delivery has a reply subject: it is how it is acked.
            let Some(reply) = reply else {
                return Ok(());
            };
            acks.client
                .publish(reply, AckKind::Progress.into())
                .await
                .map_err(BoxError::from)
        }
        .boxed()
    }
}

/// The delivery's position from its ack subject (ADR-15):
/// `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>`,
/// or with `<domain>.<account hash>.` before the stream and an optional
/// token after `<pending>`. Only what the consumer uses is parsed (not the
/// timestamp, which async-nats's `info` converts on every call).
fn parse_ack_subject(reply: &str) -> Result<DeliveryInfo<'_>, BoxError> {
    let tokens = reply
        .strip_prefix("$JS.ACK.")
        .ok_or_else(|| BoxError::from(format!("not a JetStream ack subject: {reply}")))?;
    let mut tokens = tokens.split('.');
    let mut all: [&str; 9] = [""; 9];
    let mut count = 0;
    for slot in &mut all {
        match tokens.next() {
            Some(token) => {
                *slot = token;
                count += 1;
            }
            None => break,
        }
    }
    // The older 7-token form has no domain and account hash.
    let position = match count {
        9 => &all[2..],
        7 => &all[..7],
        _ => return Err(BoxError::from(format!("malformed ack subject: {reply}"))),
    };
    let number = |index: usize| -> Result<u64, BoxError> {
        position
            .get(index)
            .and_then(|token| token.parse().ok())
            .ok_or_else(|| BoxError::from(format!("malformed ack subject: {reply}")))
    };
    Ok(DeliveryInfo {
        stream: position.first().copied().unwrap_or_default().into(),
        delivered: number(2)?.max(1),
        stream_sequence: number(3)?,
        pending: number(6)?,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::parse_ack_subject;

    /// Both ADR-15 forms, with and without domain and trailing token.
    #[test]
    fn reads_both_ack_subject_forms() {
        let subjects = [
            "$JS.ACK.ORDERS.workers.3.120.77.1700000000000000000.5",
            "$JS.ACK._.ACCHASH.ORDERS.workers.3.120.77.1700000000000000000.5",
            "$JS.ACK.hub.ACCHASH.ORDERS.workers.3.120.77.1700000000000000000.5.tok.more",
        ];
        for subject in subjects {
            let info = parse_ack_subject(subject).unwrap();
            assert_eq!(info.stream, "ORDERS", "{subject}");
            assert_eq!(info.delivered, 3, "{subject}");
            assert_eq!(info.stream_sequence, 120, "{subject}");
            assert_eq!(info.pending, 5, "{subject}");
        }
    }

    #[test]
    fn malformed_ack_subjects_are_errors() {
        for subject in [
            "_INBOX.abc",
            "$JS.ACK.ORDERS.workers.3",
            "$JS.ACK.ORDERS.workers.x.120.77.1.5",
            "$JS.ACK.d.h.ORDERS.workers.3.120.77.1",
        ] {
            assert!(parse_ack_subject(subject).is_err(), "{subject}");
        }
    }
}
