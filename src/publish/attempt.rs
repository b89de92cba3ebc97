//! Sending a prepared event until it settles: one attempt, its ack, what a
//! failure means (retry with the same id, or final), and the receipt or
//! error it ends with.

use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::broadcast;

use super::prepare::Prepared;
use super::{error_type, PublishError, PublishErrorKind, Publisher, Receipt};
use crate::client::{Operation, PermissionViolation};
use crate::semconv::{
    ERROR_TYPE, MESSAGING_NATS_STREAM_SEQUENCE, OTEL_STATUS_CODE, OTEL_STATUS_DESCRIPTION,
};
use crate::transport::{PendingStore, StoreFailure, StoreFailureKind, Stored, StreamLookup};

pub(super) enum AttemptError {
    /// Worth another attempt with the same id.
    Retryable {
        timed_out: bool,
        source: StoreFailure,
    },
    /// Final.
    Final(PublishError),
}

impl Publisher {
    /// Records the outcome of one event in the metrics.
    pub(super) fn record(&self, prepared: &Prepared<'_>, error: Option<&PublishError>) {
        let attributes = self.record_settled(prepared, error);
        self.client.metrics().sent.add(1, attributes.as_slice());
    }

    /// Records the outcome of one event on its span and its duration, and
    /// returns its `sent` attributes: the caller counts it there, alone or
    /// with others of the same attributes.
    pub(super) fn record_settled(
        &self,
        prepared: &Prepared<'_>,
        error: Option<&PublishError>,
    ) -> crate::metrics::PublishAttributes {
        let error_type = error.map(|err| error_type(err.kind()));
        if let (Some(error_type), Some(err)) = (error_type, error) {
            prepared.span.record(ERROR_TYPE, error_type);
            if !prepared.span.is_disabled() {
                prepared
                    .span
                    .record(OTEL_STATUS_DESCRIPTION, err.to_string().as_str());
            }
        }
        let attributes =
            crate::metrics::publish_attributes(prepared.metric_type.clone(), error_type);
        self.client
            .metrics()
            .record_publish_duration(prepared.started.elapsed().as_secs_f64(), &attributes);
        attributes
    }

    pub(super) async fn send_with_retries(
        &self,
        mut prepared: Prepared<'_>,
    ) -> Result<Receipt, PublishError> {
        let result = self.attempt_until_settled(&mut prepared).await;
        self.record(&prepared, result.as_ref().err());
        settled(prepared, result)
    }

    async fn attempt_until_settled(
        &self,
        prepared: &mut Prepared<'_>,
    ) -> Result<Stored, PublishError> {
        let policy = self.client.config().publish_retry;
        let max_attempts = policy.max_attempts.max(1);
        let mut violations = self.client.permission_violations();
        let mut any_timeout = false;
        let mut last_source = None;
        for attempt in 1..=max_attempts {
            if attempt > 1 {
                tracing::debug!(attempt, "retrying publish with the same message id");
                self.client.metrics().publish_retries.add(
                    1,
                    crate::metrics::publish_attributes(prepared.metric_type.clone(), None)
                        .as_slice(),
                );
                tokio::time::sleep(policy.delay(attempt - 1)).await;
            }
            let outcome = match self.send(prepared).await {
                Ok(ack) => self.await_ack(prepared, ack, &mut violations).await,
                Err(err) => Err(err),
            };
            match outcome {
                Ok(ack) => {
                    prepared.span.record(
                        MESSAGING_NATS_STREAM_SEQUENCE,
                        i64::try_from(ack.sequence).unwrap_or(i64::MAX),
                    );
                    return Ok(ack);
                }
                Err(AttemptError::Final(err)) => {
                    prepared.span.record(OTEL_STATUS_CODE, "ERROR");
                    return Err(err);
                }
                Err(AttemptError::Retryable { timed_out, source }) => {
                    if !timed_out && self.is_missing_stream(&prepared.subject).await {
                        prepared.span.record(OTEL_STATUS_CODE, "ERROR");
                        return Err(PublishError::with_source(
                            PublishErrorKind::NoStream {
                                subject: prepared.subject.clone(),
                            },
                            source,
                        ));
                    }
                    any_timeout |= timed_out;
                    last_source = Some(source);
                }
            }
        }
        prepared.span.record(OTEL_STATUS_CODE, "ERROR");
        let kind = if any_timeout {
            PublishErrorKind::OutcomeUnknown {
                attempts: max_attempts,
            }
        } else {
            PublishErrorKind::Unavailable {
                attempts: max_attempts,
            }
        };
        Err(match last_source {
            Some(source) => PublishError::with_source(kind, source),
            None => PublishError::new(kind),
        })
    }

    /// After a no-responders reply: is there really no stream for the subject,
    /// or is its leader being elected? Only a definite "none" counts; a failed
    /// lookup (the cluster is busy electing) means "try again".
    async fn is_missing_stream(&self, subject: &str) -> bool {
        self.client.transport().stream_for_subject(subject).await == StreamLookup::NotFound
    }

    /// Sends one attempt; the returned future resolves to its ack.
    pub(super) async fn send(
        &self,
        prepared: &mut Prepared<'_>,
    ) -> Result<PendingStore, AttemptError> {
        let (headers, payload) = self.wire(prepared).map_err(AttemptError::Final)?;
        self.client
            .transport()
            .send(&prepared.subject, headers, payload)
            .await
            .map_err(|err| self.classify(prepared, err))
    }

    /// The headers and payload of the next attempt: the first attempt's,
    /// encoded when the event was prepared, or encoded again (same bytes).
    pub(super) fn wire(
        &self,
        prepared: &mut Prepared<'_>,
    ) -> Result<(HeaderMap, Bytes), PublishError> {
        match prepared.first_attempt.take() {
            Some(first) => Ok(first),
            None => prepared
                .outgoing
                .encode(
                    &self.client.config().source,
                    prepared.expected_last_subject_sequence,
                    None,
                )
                .map_err(|err| PublishError::with_source(PublishErrorKind::InvalidEvent, err)),
        }
    }

    pub(super) async fn await_ack(
        &self,
        prepared: &Prepared<'_>,
        ack: PendingStore,
        violations: &mut broadcast::Receiver<PermissionViolation>,
    ) -> Result<Stored, AttemptError> {
        // A publish the server refuses for permissions never gets an ack: the
        // refusal comes as an asynchronous -ERR naming the subject.
        let subject = prepared.subject.as_str();
        let denied = async {
            loop {
                match violations.recv().await {
                    Ok(v) if v.operation == Operation::Publish && v.subject == subject => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        tokio::select! {
            biased;
            ack = ack => match ack {
                Ok(ack) => Ok(ack),
                Err(err) => Err(self.classify(prepared, err)),
            },
            () = denied => Err(AttemptError::Final(PublishError::new(PublishErrorKind::PermissionDenied {
                subject: prepared.subject.clone(),
            }))),
        }
    }

    pub(super) fn classify(&self, prepared: &Prepared<'_>, err: StoreFailure) -> AttemptError {
        match err.kind {
            StoreFailureKind::TimedOut => AttemptError::Retryable {
                timed_out: true,
                source: err,
            },
            // No responders: no stream captures the subject, or its leader is
            // being elected. `is_missing_stream` tells them apart later.
            StoreFailureKind::NoResponders => AttemptError::Retryable {
                timed_out: false,
                source: err,
            },
            StoreFailureKind::WrongLastSequence { actual } => {
                AttemptError::Final(PublishError::with_source(
                    PublishErrorKind::Conflict {
                        expected: prepared.expected_last_subject_sequence.unwrap_or_default(),
                        actual,
                    },
                    err,
                ))
            }
            StoreFailureKind::MaxPayloadExceeded => {
                let size = prepared.wire_size;
                AttemptError::Final(PublishError::with_source(
                    PublishErrorKind::PayloadTooLarge {
                        size,
                        limit: self.client.transport().max_payload(),
                    },
                    err,
                ))
            }
            // An attempt with this id is still being stored: its outcome
            // is as unknown as after a timeout; the retry (same id) gets
            // the dedup ack once it is stored, or stores it.
            StoreFailureKind::BrokenPipe | StoreFailureKind::DuplicateInProcess => {
                AttemptError::Retryable {
                    timed_out: true,
                    source: err,
                }
            }
            StoreFailureKind::Rejected => {
                AttemptError::Final(PublishError::with_source(PublishErrorKind::Rejected, err))
            }
        }
    }
}

/// The result of a settled event: its receipt, or the error naming its id.
pub(super) fn settled(
    prepared: Prepared<'_>,
    result: Result<Stored, PublishError>,
) -> Result<Receipt, PublishError> {
    match result {
        Ok(ack) => Ok(receipt(prepared, ack)),
        Err(err) => Err(err.for_event(prepared.outgoing.event_id())),
    }
}

/// The receipt of a settled event, taking its id and subject.
fn receipt(prepared: Prepared<'_>, ack: Stored) -> Receipt {
    Receipt {
        event_id: prepared.outgoing.into_event_id(),
        subject: prepared.subject,
        stream: ack.stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    }
}
