//! The life of one delivery: decode, route, handle, decide how to settle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, Either};
use opentelemetry::KeyValue;
use tokio::sync::watch;
use tracing::Instrument;

use crate::claim_check::{ClaimCheck, ClaimCheckErrorKind};
use crate::consume::breaker::hold;
use crate::consume::context::Context;
use crate::consume::dead_letter::DeadLetterReason;
use crate::consume::metrics::{metric_attributes, InFlight};
use crate::consume::outcome::Settle;
use crate::consume::stack::Delivery as StackDelivery;
#[cfg(feature = "encryption")]
use crate::encryption::EncryptionErrorKind;
use crate::error::error_chain;
use crate::transport::Delivery;

use super::call::{run_handler, Ended, KeepAlive};
use super::settle::settle;
use super::unhandled::unhandled;
use super::Runtime;

/// How a delivery ends.
pub(super) enum Decision {
    Ack,
    /// A handler run failed transiently with attempts left: record the
    /// failed runs, then Nak with the retry delay.
    Retry {
        delay: Duration,
        failed_runs: u32,
    },
    /// Nak without a failed run: shutdown, or a type left for another
    /// instance.
    Nak {
        delay: Duration,
        reason: &'static str,
    },
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
        /// Failed handler runs, when they were looked up.
        failed_runs: Option<u32>,
    },
}

/// One delivery, from decoding to settling, inside its process span.
///
/// What needs no waiting (metadata, span, decoding) is done here, before
/// the future is made: the future then holds only what the handler and
/// the settling need, and every running delivery's future is that much
/// smaller (the runner moves each into its set of running handlers).
pub(super) fn process<S: Clone + Send + Sync + 'static, D: Delivery>(
    message: D,
    shared: Arc<Runtime<S>>,
    stopped: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let subject = message.shared_subject();
    let (delivered, stream, stream_sequence) = match message.info() {
        Ok(info) => (info.delivered, info.stream, info.stream_sequence),
        // Only JetStream messages reach a pull consumer; if the reply subject
        // is unreadable nothing can be acked either.
        Err(err) => {
            tracing::warn!(
                consumer = %shared.group,
                subject = %subject,
                error = %err,
                "delivery without JetStream metadata cannot be handled or acked; dropped"
            );
            return Either::Left(std::future::ready(()));
        }
    };
    let span = tracing::info_span!(
        "process",
        // Formatted only for a span or log someone collects: tracing builds
        // the fields of a disabled span too when its `log` feature is on.
        otel.name = %ProcessName(&subject),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %subject,
        messaging.destination.template = %DestinationTemplate(&subject),
        messaging.consumer.group.name = %shared.group,
        messaging.message.id = tracing::field::Empty,
        messaging.message.conversation_id = tracing::field::Empty,
        messaging.nats.stream = %stream,
        // Signed: tracing-opentelemetry exports u64 fields as strings.
        messaging.nats.stream.sequence = i64::try_from(stream_sequence).unwrap_or(i64::MAX),
        messaging.nats.message.delivery_count = i64::try_from(delivered).unwrap_or(i64::MAX),
        cloudevents.event_id = tracing::field::Empty,
        cloudevents.event_type = tracing::field::Empty,
        cloudevents.event_source = tracing::field::Empty,
        cloudevents.event_spec_version = "1.0",
        jetevents.settle = tracing::field::Empty,
        jetevents.nak_delay_ms = tracing::field::Empty,
        jetevents.dead_letter.reason = tracing::field::Empty,
        jetevents.terminated = tracing::field::Empty,
        jetevents.unhandled = tracing::field::Empty,
        jetevents.breaker.state = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );

    let envelope = crate::codec::decode(message.headers(), message.payload());
    let event_type = envelope
        .as_ref()
        .map(|envelope| envelope.event_type.clone())
        .unwrap_or_else(|_| "undecodable".to_owned());
    // Looked up once: every metric of a successful delivery records these.
    let attributes = shared.attributes.of(&event_type);
    shared.client.metrics().consumed.add(1, &attributes);
    // A disabled span (nobody collects it) has no parent to set: parsing the
    // trace context would be wasted on every delivery.
    if let (Ok(envelope), false) = (&envelope, span.is_disabled()) {
        // Before the span is first entered, so it starts as the child.
        crate::trace::continue_in_process_span(&span, envelope);
    }

    let work = async move {
        let decision = match envelope {
            Err(err) => Decision::DeadLetter {
                reason: DeadLetterReason::Undecodable,
                error: error_chain(&err),
                failed_runs: None,
            },
            Ok(envelope) => {
                let readable = match readable(&shared, envelope, delivered) {
                    Readable::AsIs(envelope) => Ok(envelope),
                    Readable::Read(reading) => reading.await,
                };
                match readable {
                    Err(decision) => decision,
                    Ok(envelope) => {
                        let delivery = DeliveryFacts {
                            subject: &subject,
                            delivered,
                            stream_sequence,
                            event_type: &event_type,
                            attributes: &attributes,
                        };
                        decide(&shared, envelope, delivery, &message, stopped).await
                    }
                }
            }
        };
        let failure_parts = (
            subject.as_str(),
            stream.as_str(),
            stream_sequence,
            delivered,
        );
        settle(
            &shared,
            &message,
            decision,
            failure_parts,
            &event_type,
            &attributes,
        )
        .await;
    };
    Either::Right(work.instrument(span))
}

/// What `decide` knows of a delivery besides its envelope.
struct DeliveryFacts<'a> {
    subject: &'a async_nats::Subject,
    delivered: u64,
    stream_sequence: u64,
    event_type: &'a str,
    /// The metric attributes of a successful delivery of this type.
    attributes: &'a Arc<[KeyValue]>,
}

/// Runs the handler (with in-progress acks) and decides how to settle.
async fn decide<S: Clone + Send + Sync + 'static, D: Delivery>(
    shared: &Runtime<S>,
    envelope: crate::envelope::Envelope,
    delivery: DeliveryFacts<'_>,
    message: &D,
    stopped: watch::Receiver<bool>,
) -> Decision {
    let DeliveryFacts {
        subject,
        delivered,
        stream_sequence,
        event_type,
        attributes,
    } = delivery;
    let retry = &shared.settings.retry;
    let Some(route) = shared.handlers.routes().find(&envelope.event_type) else {
        return unhandled(shared, &envelope.event_type, delivered);
    };
    let timeout = route
        .options
        .handler_timeout()
        .unwrap_or(shared.settings.handler_timeout);
    // Attempts are failed handler runs, not deliveries (see `attempts`).
    // Boxed, for the same reason as the reading of the data: only a
    // redelivery looks the count up.
    let failed_before = if delivered > 1 {
        Box::pin(shared.failed_runs.before(stream_sequence, delivered)).await
    } else {
        0
    };
    if failed_before >= retry.attempts() {
        // Its last failed run was recorded but not followed by a dead
        // letter (a crash in between, or a policy with fewer attempts now).
        return Decision::DeadLetter {
            reason: DeadLetterReason::AttemptsExhausted,
            error: format!(
                "the handler failed {failed_before} times; the retry policy allows {} attempts",
                retry.attempts()
            ),
            failed_runs: Some(failed_before),
        };
    }

    let context = Context::new(
        envelope,
        subject.clone(),
        shared.group.clone(),
        delivered,
        Some(stream_sequence),
        shared.publisher.clone(),
        shared.state.clone(),
    );
    let metrics = shared.client.metrics();
    let (call, held) = hold::scoped(
        shared.handlers.call(StackDelivery::new(context)),
        shared.handlers.has_layers(),
    );
    let started = std::time::Instant::now();
    let in_flight = InFlight::start(metrics.handlers_in_flight.clone(), attributes.clone());
    let keep_alive = KeepAlive {
        message,
        interval: shared.progress_interval,
        reporter: &shared.reporter,
        stream_sequence,
    };
    let ended = run_handler(call, timeout, keep_alive, stopped, held).await;
    drop(in_flight);
    let error_type = match &ended {
        Ended::Stopped => Some("shutdown"),
        Ended::Finished(outcome) => outcome.failure().map(|(error_type, _)| error_type),
    };
    let elapsed = started.elapsed().as_secs_f64();
    match error_type {
        None => metrics.process_duration.record(elapsed, attributes),
        Some(error) => metrics.process_duration.record(
            elapsed,
            &metric_attributes(&shared.group, event_type, Some(error)),
        ),
    }
    let outcome = match ended {
        // Shutdown: let another instance take it now.
        Ended::Stopped => {
            return Decision::Nak {
                delay: Duration::ZERO,
                reason: "shutdown",
            }
        }
        Ended::Finished(outcome) => outcome,
    };

    let failed_runs = failed_before + 1;
    let decision = match outcome.0 {
        Settle::Ack => Decision::Ack,
        Settle::DeadLetter { reason, error } => {
            // Undecodable data is not a failed run; settle records it.
            let failed_runs = (reason == DeadLetterReason::Permanent).then(|| {
                tracing::Span::current().record("error.type", "permanent");
                failed_runs
            });
            Decision::DeadLetter {
                reason,
                error,
                failed_runs,
            }
        }
        Settle::Retry {
            after,
            error_type,
            error,
        } => {
            record_retried_failure(error_type, &error);
            if retry.is_last_attempt(u64::from(failed_runs)) {
                Decision::DeadLetter {
                    reason: DeadLetterReason::AttemptsExhausted,
                    error,
                    failed_runs: Some(failed_runs),
                }
            } else {
                Decision::Retry {
                    delay: after.unwrap_or_else(|| retry.delay(u64::from(failed_runs))),
                    failed_runs,
                }
            }
        }
    };
    // An event that ends after failed runs leaves no record behind.
    if failed_before > 0 && matches!(decision, Decision::Ack | Decision::DeadLetter { .. }) {
        Box::pin(shared.failed_runs.forget(stream_sequence)).await;
    }
    decision
}

/// Records on the process span a handler failure that is retried.
fn record_retried_failure(error_type: &str, error: &str) {
    let span = tracing::Span::current();
    span.record("error.type", error_type);
    span.record("otel.status_code", "ERROR");
    span.record("otel.status_description", error);
}

/// `process {template}` of a subject, for the span's name.
struct ProcessName<'a>(&'a str);

impl std::fmt::Display for ProcessName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {}", DestinationTemplate(self.0))
    }
}

/// The subject with its key token replaced by `{key}`.
struct DestinationTemplate<'a>(&'a str);

impl std::fmt::Display for DestinationTemplate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::subject::destination_template(self.0))
    }
}

/// An envelope its handler can read, or the reading that makes it so.
enum Readable<'a> {
    AsIs(crate::envelope::Envelope),
    /// Boxed: its futures are large, and every delivery's future would
    /// carry their size while almost none take this path.
    Read(BoxFuture<'a, Result<crate::envelope::Envelope, Decision>>),
}

/// The envelope as it is, unless its data must be fetched (a claim check)
/// or decrypted first.
fn readable<S: Sync>(
    shared: &Runtime<S>,
    envelope: crate::envelope::Envelope,
    delivered: u64,
) -> Readable<'_> {
    let claim_checked = envelope.extension(crate::claim_check::OBJECT).is_some();
    if claim_checked || decrypts(&shared.settings) {
        Readable::Read(Box::pin(read(shared, envelope, delivered)))
    } else {
        Readable::AsIs(envelope)
    }
}

#[cfg(feature = "encryption")]
fn decrypts(settings: &crate::consume::Settings) -> bool {
    settings.decryption.is_some()
}

#[cfg(not(feature = "encryption"))]
fn decrypts(_settings: &crate::consume::Settings) -> bool {
    false
}

/// The envelope with its claim-checked data fetched and its data decrypted
/// when the consumer decrypts, or how to settle an event whose data cannot
/// be read.
async fn read<S>(
    shared: &Runtime<S>,
    mut envelope: crate::envelope::Envelope,
    delivered: u64,
) -> Result<crate::envelope::Envelope, Decision> {
    // Before decrypting: the bucket holds what was encrypted.
    if let Err(err) = ClaimCheck::fetch(&shared.client, &mut envelope).await {
        let reason = match err.kind() {
            ClaimCheckErrorKind::Store(_) => {
                return Err(Decision::Nak {
                    delay: shared.settings.retry.delay(delivered),
                    reason: "claim_check_unavailable",
                })
            }
            ClaimCheckErrorKind::DigestMismatch { .. } | ClaimCheckErrorKind::Malformed(_) => {
                DeadLetterReason::ClaimCorrupt
            }
            _ => DeadLetterReason::ClaimMissing,
        };
        return Err(Decision::DeadLetter {
            reason,
            error: error_chain(&err),
            failed_runs: None,
        });
    }
    decrypted(&shared.settings, envelope).await
}

/// The envelope with its data decrypted when the consumer decrypts, or the
/// dead letter of an event it cannot decrypt.
#[cfg(feature = "encryption")]
async fn decrypted(
    settings: &crate::consume::Settings,
    mut envelope: crate::envelope::Envelope,
) -> Result<crate::envelope::Envelope, Decision> {
    let Some(decryption) = &settings.decryption else {
        return Ok(envelope);
    };
    match decryption.open(&mut envelope).await {
        Ok(()) => Ok(envelope),
        Err(err) => Err(Decision::DeadLetter {
            reason: match err.kind() {
                EncryptionErrorKind::Shredded => DeadLetterReason::Shredded,
                _ => DeadLetterReason::Undecryptable,
            },
            error: error_chain(&err),
            failed_runs: None,
        }),
    }
}

/// Without the `encryption` feature every envelope is readable as it is.
#[cfg(not(feature = "encryption"))]
async fn decrypted(
    _settings: &crate::consume::Settings,
    envelope: crate::envelope::Envelope,
) -> Result<crate::envelope::Envelope, Decision> {
    Ok(envelope)
}
