//! Graceful shutdown: undelivered events go back, in-flight handlers drain.

use std::future::Future;
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::settle::nak_now;
use super::Runtime;
use crate::consume::settle_report::SettleOperation;
use crate::transport::delivery::sequence_of;
use crate::transport::Delivery;

/// How long handlers get to settle after being told to stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Naks the events received but not started, lets in-flight handlers
/// finish within the grace period, then tells the rest to Nak and stop,
/// and flushes the acks.
pub(super) async fn shutdown<S, D: Delivery>(
    shared: &Runtime<S>,
    undelivered: Vec<D>,
    mut tasks: FuturesUnordered<impl Future<Output = ()>>,
    stop: watch::Sender<bool>,
) {
    let settings = &shared.settings;
    let deadline = Instant::now() + settings.shutdown_grace;
    // Side by side with the handlers: a Nak waiting for room in the
    // client's queue must not hold them up, nor they it.
    let give_back = futures_util::future::join_all(undelivered.into_iter().map(|message| {
        let sequence = sequence_of(&message);
        let nak = nak_now(
            shared.reporter.clone(),
            message,
            "the event comes back after the ack wait",
        );
        async move {
            if tokio::time::timeout_at(deadline, nak).await.is_err() {
                shared.reporter.failed(
                    sequence,
                    SettleOperation::Nak,
                    &"not sent within the shutdown grace",
                    "the event comes back after the ack wait",
                );
            }
        }
    }));
    let drain = tokio::time::timeout_at(deadline, async { while tasks.next().await.is_some() {} });
    let (_, drained) = futures_util::future::join(give_back, drain).await;
    if drained.is_err() {
        tracing::warn!(
            consumer = %shared.group,
            in_flight = tasks.len(),
            "shutdown grace over; Naking the events of handlers still running"
        );
        // An error means no handler is left to tell.
        let _ = stop.send(true);
        let settle = async { while tasks.next().await.is_some() {} };
        if tokio::time::timeout(STOP_GRACE, settle).await.is_err() {
            tracing::warn!(
                consumer = %shared.group,
                in_flight = tasks.len(),
                "handlers still settling after the stop grace; their events come back after \
                 the ack wait"
            );
        }
    }
    if let Err(err) = shared.client.transport().flush().await {
        tracing::warn!(consumer = %shared.group, error = %err, "flushing acks on shutdown failed");
    }
}
