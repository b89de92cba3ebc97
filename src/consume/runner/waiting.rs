//! Events received and waiting for a free handler.

use std::collections::VecDeque;
use std::task::Poll;

use tokio::time::Instant;

use crate::transport::delivery::sequence_of;
use crate::transport::Delivery;

use super::progress::ProgressAck;
use super::settle::nak_now;
use super::Runtime;
use crate::consume::settle_report::SettleOperation;

/// An event received and not yet handed to a handler.
pub(super) struct Waiting<D> {
    pub(super) message: D,
    arrived: Instant,
    /// When it came, or when it last got an in-progress ack.
    since: Instant,
    progress: ProgressAck,
}

impl<D: Delivery> Waiting<D> {
    pub(super) fn new(message: D, arrived: Instant) -> Self {
        Self {
            message,
            arrived,
            since: arrived,
            progress: ProgressAck::default(),
        }
    }
}

/// Keeps the events waiting for a free handler: in-progress acks for those
/// that wait longer than running handlers may go without one (a slow
/// handler must not let the prefetched events behind it be redelivered to
/// another instance), but not without bound: an event that waited longer
/// than the handler timeout sits behind handlers that are slow or hung, and
/// is Naked without delay so another instance of the group takes it
/// (unless a consumer-wide breaker holds calls: then it waits for the
/// breaker, as the running ones do).
///
/// Awaits nothing: the loop calls it, and while the loop waits no handler
/// is polled.
pub(super) fn keep_waiting_alive<S, D: Delivery>(
    waiting: &mut VecDeque<Waiting<D>>,
    shared: &Runtime<S>,
) {
    let now = Instant::now();
    // The queue is in order of arrival: the overdue ones are in front.
    while let Some(event) = waiting.pop_front() {
        if now.duration_since(event.arrived) < shared.settings.handler_timeout
            || shared.settings.breaker_holding()
        {
            waiting.push_front(event);
            break;
        }
        tracing::warn!(
            consumer = %shared.group,
            stream_sequence = sequence_of(&event.message),
            "event waited longer than the handler timeout for a free handler; Naking it for \
             another instance"
        );
        tokio::spawn(nak_now(
            shared.reporter.clone(),
            event.message,
            "the event comes back after the ack wait",
        ));
    }
    let mut context = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
    for event in waiting.iter_mut() {
        if let Poll::Ready(Err(err)) = event.progress.poll_sent(&mut context) {
            shared.reporter.failed(
                sequence_of(&event.message),
                SettleOperation::Progress,
                &err,
                "the event may be redelivered while it waits",
            );
        }
        if now.duration_since(event.since) >= shared.progress_interval {
            event.since = now;
            event.progress.start(&event.message);
        }
    }
}
