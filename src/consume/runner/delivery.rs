//! The life of one delivery: decode, route, handle, decide how to settle.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::Either;
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
use crate::span_fields::{process_span, Delivered};
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
/// smaller (the runner moves each into the slot it starts in, see
/// `slot`).
pub(super) fn process<S: Clone + Send + Sync + 'static, D: Delivery>(
    message: D,
    shared: Arc<Runtime<S>>,
    stopped: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static {
    let subject = message.shared_subject();
    // The stream's name is borrowed from the message, so read in a scope of
    // its own: the message moves into the future below.
    let info = match message.info() {
        Ok(info) => info,
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
    let (delivered, stream_sequence) = (info.delivered, info.stream_sequence);
    let span = process_span(Delivered {
        group: &shared.group,
        subject: &subject,
        stream: &info.stream,
        stream_sequence,
        delivered,
    });
    drop(info);

    let envelope = crate::codec::decode(message.headers(), message.payload());
    // Looked up once: every metric of a successful delivery records these.
    let attributes = shared.attributes.of(envelope
        .as_ref()
        .map_or(UNDECODABLE, |envelope| envelope.event_type.as_str()));
    shared.client.metrics().record_consumed(&attributes);
    // A disabled span (nobody collects it) has no parent to set: parsing the
    // trace context would be wasted on every delivery.
    if let (Ok(envelope), false) = (&envelope, span.is_disabled()) {
        // Before the span is first entered, so it starts as the child.
        crate::trace::continue_in_process_span(&span, envelope);
    }
    let facts = DeliveryFacts {
        subject,
        delivered,
        stream_sequence,
        attributes,
    };
    // The handler's context is made here when it can be: the future then
    // holds it (a reference count) rather than the envelope.
    let arrived = match envelope {
        Err(err) => Arrived::Undecodable(err),
        Ok(envelope) if needs_reading(&shared.settings, &envelope) => {
            Arrived::ToRead(Box::new(envelope))
        }
        Ok(envelope) => Arrived::Ready(handler_context(&shared, envelope, &facts)),
    };

    let work = async move {
        // The type of an event whose data could not be read, for its metrics.
        let mut unread_type = None;
        let context = match arrived {
            Arrived::Undecodable(err) => Err(Decision::DeadLetter {
                reason: DeadLetterReason::Undecodable,
                error: error_chain(&err),
                failed_runs: None,
            }),
            Arrived::Ready(context) => Ok(context),
            Arrived::ToRead(envelope) => {
                unread_type = Some(envelope.event_type.clone());
                Box::pin(read(&shared, *envelope, delivered))
                    .await
                    .map(|envelope| handler_context(&shared, envelope, &facts))
            }
        };
        let (decision, context) = match context {
            Err(decision) => (decision, None),
            Ok(context) => {
                // Inline, not boxed: a delivery's future lives in a slot the
                // runner reuses (see `slot`), so its size costs no allocation
                // per event, while a box here cost one. Settling's rare part
                // and the handler's waiting stay boxed: they would make every
                // slot larger.
                let decision = decide(&shared, &context, &facts, &message, stopped).await;
                (decision, Some(context))
            }
        };
        let event_type = match (&context, &unread_type) {
            (Some(context), _) => context.event_type(),
            (None, Some(unread_type)) => unread_type.as_str(),
            (None, None) => UNDECODABLE,
        };
        let failure_parts = (facts.subject.as_str(), stream_sequence, delivered);
        settle(
            &shared,
            &message,
            decision,
            failure_parts,
            event_type,
            &facts.attributes,
        )
        .await;
    };
    Either::Right(work.instrument(span))
}

/// The event type of undecodable deliveries, in metrics.
const UNDECODABLE: &str = "undecodable";

/// A delivery's envelope, on its way to the handler.
enum Arrived<S> {
    Undecodable(crate::codec::DecodeError),
    /// Readable as it is: its handler's context is made.
    Ready(Context<S>),
    /// Its data must be fetched or decrypted first. Boxed: every delivery's
    /// future would carry its size while almost none take this path.
    ToRead(Box<crate::envelope::Envelope>),
}

/// What `decide` knows of a delivery besides its context.
struct DeliveryFacts {
    subject: async_nats::Subject,
    delivered: u64,
    stream_sequence: u64,
    /// The metric attributes of a successful delivery of this type.
    attributes: Arc<[KeyValue]>,
}

/// The context the handler of `envelope` gets.
fn handler_context<S: Clone>(
    shared: &Runtime<S>,
    envelope: crate::envelope::Envelope,
    facts: &DeliveryFacts,
) -> Context<S> {
    Context::new(
        envelope,
        facts.subject.clone(),
        shared.group.clone(),
        facts.delivered,
        Some(facts.stream_sequence),
        shared.publisher.clone(),
        shared.state.clone(),
    )
}

/// Runs the handler (with in-progress acks) and decides how to settle.
async fn decide<S: Clone + Send + Sync + 'static, D: Delivery>(
    shared: &Runtime<S>,
    context: &Context<S>,
    facts: &DeliveryFacts,
    message: &D,
    stopped: watch::Receiver<bool>,
) -> Decision {
    let DeliveryFacts {
        delivered,
        stream_sequence,
        ref attributes,
        ..
    } = *facts;
    let event_type = context.event_type();
    let retry = &shared.settings.retry;
    let Some(route) = shared.handlers.routes().find(event_type) else {
        return unhandled(shared, event_type, delivered);
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

    let metrics = shared.client.metrics();
    let (call, held) = hold::scoped(
        shared
            .handlers
            .call(route, StackDelivery::new(context.clone())),
        shared.handlers.has_layers(),
    );
    let started = std::time::Instant::now();
    let in_flight = InFlight::start(&metrics.handlers_in_flight, attributes);
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
        None => metrics.record_processed(elapsed, attributes),
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

/// Whether the envelope's data must be fetched (a claim check) or
/// decrypted before its handler can read it.
fn needs_reading(
    settings: &crate::consume::Settings,
    envelope: &crate::envelope::Envelope,
) -> bool {
    envelope.extension(crate::claim_check::OBJECT).is_some() || decrypts(settings)
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
