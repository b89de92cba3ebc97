//! The NATS side of the watcher: the advisory arrives on
//! `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}` and the
//! stored message is read through the JSON `STREAM.MSG.GET` API (its reply
//! is a plain JSON message, so the original header block never reaches the
//! client's header parser).

use async_nats::jetstream::response::Response;
use async_nats::jetstream::ErrorCode;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::sync::broadcast;

use crate::client::Operation;
use crate::codec::base64;

use super::{retry_delay, MaxDeliveries, Skip, Stored, Watcher, ATTEMPTS};

/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}`
/// (schema `io.nats.jetstream.advisory.v1.max_deliver`), the fields we use.
#[derive(Debug, Deserialize)]
struct Advisory {
    stream_seq: u64,
    #[serde(default)]
    deliveries: u64,
}

/// The reply of `$JS.API.STREAM.MSG.GET.{stream}`.
#[derive(Debug, Deserialize)]
struct MsgGet {
    message: StoredJson,
}

#[derive(Debug, Deserialize)]
struct StoredJson {
    subject: String,
    #[serde(default)]
    hdrs: Option<String>,
    #[serde(default)]
    data: Option<String>,
}

/// Subscribes to the advisories and dead-letters what they name, until
/// the client closes or the user may not subscribe.
pub(super) async fn run(watcher: Watcher) {
    let subject = format!(
        "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{}.{}",
        watcher.stream, watcher.group
    );
    // Before subscribing, so a refusal cannot slip past.
    let mut violations = watcher.client.permission_violations();
    let Some(nats) = watcher.client.nats() else {
        return;
    };
    let mut advisories = match nats.subscribe(subject.clone()).await {
        Ok(subscription) => subscription,
        Err(err) => {
            tracing::warn!(
                consumer = %watcher.group,
                stream = %watcher.stream,
                error = %err,
                "cannot watch max-deliveries advisories; events the client cannot receive \
                 will not be dead-lettered"
            );
            return;
        }
    };
    let mut watching_violations = true;
    loop {
        tokio::select! {
            advisory = advisories.next() => match advisory {
                Some(advisory) => on_advisory(&watcher, &advisory.payload).await,
                // Only a closed client ends the subscription.
                None => return,
            },
            violation = violations.recv(), if watching_violations => match violation {
                Ok(violation)
                    if violation.operation == Operation::Subscribe
                        && violation.subject == subject =>
                {
                    tracing::warn!(
                        consumer = %watcher.group,
                        stream = %watcher.stream,
                        subject = %subject,
                        "not allowed to subscribe to max-deliveries advisories; events the \
                         client cannot receive will not be dead-lettered"
                    );
                    // Unsubscribing stops the client from asking again
                    // (and being refused again) on every reconnect.
                    if let Err(err) = advisories.unsubscribe().await {
                        tracing::debug!(error = %err, "unsubscribing the advisories failed");
                    }
                    return;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => watching_violations = false,
            },
        }
    }
}

async fn on_advisory(watcher: &Watcher, payload: &[u8]) {
    let advisory: Advisory = match serde_json::from_slice(payload) {
        Ok(advisory) => advisory,
        Err(err) => {
            tracing::warn!(consumer = %watcher.group, error = %err, "unreadable max-deliveries advisory");
            return;
        }
    };
    let stored = fetch(watcher, advisory.stream_seq).await;
    let advisory = MaxDeliveries {
        stream_sequence: advisory.stream_seq,
        deliveries: advisory.deliveries,
    };
    watcher.on_max_deliveries(&advisory, stored).await;
}

/// The stored message at `sequence`, through the JSON API.
async fn fetch(watcher: &Watcher, sequence: u64) -> Result<Stored, Skip> {
    let subject = format!("STREAM.MSG.GET.{}", watcher.stream);
    let request = serde_json::json!({ "seq": sequence });
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(retry_delay(attempt)).await;
        }
        let Some(jetstream) = watcher.client.jetstream() else {
            return Err(Skip::Failed("no NATS connection".to_owned()));
        };
        let response: Result<Response<MsgGet>, _> =
            jetstream.request(subject.clone(), &request).await;
        match response {
            Ok(Response::Ok(found)) => return decode(found.message),
            Ok(Response::Err { error }) if error.error_code() == ErrorCode::NO_MESSAGE_FOUND => {
                return Err(Skip::Deleted)
            }
            Ok(Response::Err { error }) => last = error.to_string(),
            Err(err) => last = err.to_string(),
        }
    }
    Err(Skip::Failed(format!(
        "reading the stored message failed: {last}"
    )))
}

fn decode(stored: StoredJson) -> Result<Stored, Skip> {
    let header_block = match &stored.hdrs {
        Some(encoded) => Some(
            base64::decode(encoded)
                .ok_or_else(|| Skip::Failed("stored headers are not base64".to_owned()))?,
        ),
        None => None,
    };
    let payload = match &stored.data {
        Some(encoded) => Bytes::from(
            base64::decode(encoded)
                .ok_or_else(|| Skip::Failed("stored payload is not base64".to_owned()))?,
        ),
        None => Bytes::new(),
    };
    Ok(Stored {
        subject: stored.subject,
        header_block,
        payload,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_advisory_and_the_stored_message_are_read() {
        let advisory: Advisory = serde_json::from_str(
            r#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-01-01T00:00:00Z","stream":"S","consumer":"g","stream_seq":7,"deliveries":3}"#,
        )
        .unwrap();
        assert_eq!((advisory.stream_seq, advisory.deliveries), (7, 3));
        let stored: Response<MsgGet> = serde_json::from_str(
            r#"{"type":"io.nats.jetstream.api.v1.stream_msg_get_response","message":{"subject":"a.b","seq":7,"hdrs":"TkFUUy8xLjANCg0K","data":"e30=","time":"2026-01-01T00:00:00Z"}}"#,
        )
        .unwrap();
        let Response::Ok(stored) = stored else {
            panic!("not a message")
        };
        assert_eq!(stored.message.subject, "a.b");
        assert_eq!(stored.message.data.as_deref(), Some("e30="));
        let missing: Response<MsgGet> = serde_json::from_str(
            r#"{"type":"io.nats.jetstream.api.v1.stream_msg_get_response","error":{"code":404,"err_code":10037,"description":"no message found"}}"#,
        )
        .unwrap();
        assert!(matches!(
            missing,
            Response::Err { error } if error.error_code() == ErrorCode::NO_MESSAGE_FOUND
        ));
    }
}
