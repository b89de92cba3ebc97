//! Acking, Naking and dead-lettering a delivery, and reporting what fails.

use std::time::Duration;

use chrono::Utc;
use opentelemetry::KeyValue;

use crate::consume::dead_letter::{self, DeadLetterReason, Failure};
use crate::consume::metrics::metric_attributes;
use crate::consume::settle_report::{SettleOperation, SettleReporter};
use crate::consume::AckMode;
use crate::transport::delivery::sequence_of;
use crate::transport::Delivery;

use super::delivery::Decision;
use super::Runtime;

/// Acks, Naks or dead-letters, and records the outcome on the span.
pub(super) async fn settle<S, D: Delivery>(
    shared: &Runtime<S>,
    message: &D,
    decision: Decision,
    (subject, stream_sequence, delivered): (&str, u64, u64),
    event_type: &str,
    attributes: &[KeyValue],
) {
    let span = tracing::Span::current();
    let metrics = shared.client.metrics();
    match decision {
        Decision::Ack => {
            span.record("jetevents.settle", "ack");
            let acked = message
                .ack(shared.settings.ack_mode == AckMode::Confirmed)
                .await;
            if let Err(err) = acked {
                span.record("otel.status_code", "ERROR");
                span.record(
                    "otel.status_description",
                    format!("ack failed: {err}").as_str(),
                );
                shared.reporter.failed(
                    stream_sequence,
                    SettleOperation::Ack,
                    &err,
                    "the event will be redelivered",
                );
            }
        }
        Decision::Retry { delay, failed_runs } => {
            metrics.consume_retries.add(1, attributes);
            // Before the Nak: the next delivery, on any instance, reads it.
            Box::pin(async {
                shared
                    .failed_runs
                    .record(stream_sequence, failed_runs)
                    .await;
                nak(shared, &span, message, delay, "transient").await
            })
            .await
        }
        Decision::Nak { delay, reason } => {
            Box::pin(nak(shared, &span, message, delay, reason)).await
        }
        Decision::DeadLetter {
            reason,
            error,
            failed_runs,
        } => {
            // Boxed: rare, and large; every delivery's future would carry it.
            Box::pin(async {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", error.as_str());
                span.record("jetevents.dead_letter.reason", reason.as_str());
                if matches!(
                    reason,
                    DeadLetterReason::Undecodable
                        | DeadLetterReason::Unhandled
                        | DeadLetterReason::Undecryptable
                        | DeadLetterReason::Shredded
                        | DeadLetterReason::ClaimMissing
                        | DeadLetterReason::ClaimCorrupt
                ) {
                    // Handler failures recorded theirs in `decide`.
                    span.record("error.type", reason.as_str());
                }
                // Read again rather than carried by every delivery: it was read
                // once before the delivery was handled, so it reads now too.
                let info = message.info().ok();
                let failure = Failure {
                    reason,
                    error: &error,
                    subject,
                    stream: info.as_ref().map_or("", |info| &info.stream),
                    stream_sequence,
                    consumer: &shared.group,
                    delivery_count: delivered,
                    failed_runs,
                    // A partition consumes in order: what waits behind this
                    // event is its partition's backlog, which the copy records.
                    held_behind: shared
                        .settings
                        .pinned
                        .as_ref()
                        .and(info.as_ref())
                        .map(|info| info.pending),
                };
                // Boxed: the copy's publish future is large, and every delivery's
                // future would carry its size while almost none take this path.
                match Box::pin(copy_to_dead_letters(shared, message, &failure)).await {
                    Ok(()) => {
                        span.record("jetevents.settle", "dead_letter");
                        metrics.dead_lettered.add(
                            1,
                            &metric_attributes(
                                &shared.group,
                                event_type,
                                Some(failure.reason.as_str()),
                            ),
                        );
                        tracing::warn!(reason = %failure.reason, error = %error, "event dead-lettered");
                        match message.term().await {
                            Ok(()) => {
                                span.record("jetevents.terminated", true);
                            }
                            Err(err) => {
                                span.record("jetevents.terminated", false);
                                shared.reporter.failed(
                                    stream_sequence,
                                    SettleOperation::Term,
                                    &err,
                                    "the event comes back and its copy is stored once",
                                );
                            }
                        }
                    }
                    Err(err) => {
                        // Keep the event: it comes back and is dead-lettered then
                        // (the copy's message id makes a second copy a no-op).
                        shared.reporter.failed(
                            stream_sequence,
                            SettleOperation::DeadLetter,
                            &err,
                            "Naking instead",
                        );
                        let delay = shared
                            .settings
                            .retry
                            .delay(u64::from(failed_runs.unwrap_or(1)));
                        nak(shared, &span, message, delay, "dead_letter_failed").await;
                    }
                }
            })
            .await
        }
    }
}

async fn nak<S, D: Delivery>(
    shared: &Runtime<S>,
    span: &tracing::Span,
    message: &D,
    delay: Duration,
    reason: &str,
) {
    span.record("jetevents.settle", "nak");
    span.record(
        "jetevents.nak_delay_ms",
        i64::try_from(delay.as_millis()).unwrap_or(i64::MAX),
    );
    tracing::debug!(delay_ms = delay.as_millis() as u64, reason, "event Naked");
    // Always with a delay (zero only on shutdown): a bare Nak redelivers at
    // once and a failing handler would spin.
    if let Err(err) = message.nak(delay).await {
        shared.reporter.failed(
            sequence_of(message),
            SettleOperation::Nak,
            &err,
            "the event comes back after the ack wait",
        );
    }
}

async fn copy_to_dead_letters<S, D: Delivery>(
    shared: &Runtime<S>,
    message: &D,
    failure: &Failure<'_>,
) -> Result<(), crate::error::BoxError> {
    let (subject, headers) = dead_letter::dead_letter_message(
        &shared.settings.dead_letter,
        message.headers(),
        failure,
        Utc::now(),
    );
    shared
        .client
        .transport()
        .send(&subject, headers, message.payload().clone())
        .await?
        .await?;
    Ok(())
}

/// Naks `message` without delay; a failure is reported with `consequence`.
pub(super) async fn nak_now<D: Delivery>(
    reporter: SettleReporter,
    message: D,
    consequence: &'static str,
) {
    if let Err(err) = message.nak(Duration::ZERO).await {
        reporter.failed(
            sequence_of(&message),
            SettleOperation::Nak,
            &err,
            consequence,
        );
    }
}
