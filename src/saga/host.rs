//! Applying one event to its saga: read the record, run the handler, store
//! the new record with a compare-and-set (again on the newer record when
//! another instance got there first), then send what the transition asked
//! for and archive a finished saga.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream;
use chrono::Utc;
use futures_util::future::BoxFuture;
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use super::error::{SagaError, SagaErrorKind};
use super::record::{Pending, PendingTimeout, SagaRecord, SagaStatus, StoredEvent};
use super::schedule::Schedule;
use super::store::{key_of, Store, Written};
use super::transition::{Ending, Step, Transition};
use crate::consume::HandlerError;
use crate::envelope::Envelope;
use crate::event::EventType;
use crate::publish::{PublishOptions, Publisher};

/// The extension naming the timer of a timeout event.
pub(crate) const TIMER_EXTENSION: &str = "sagatimer";

/// How many times a transition is made again on a newer record before the
/// event is Naked (and retried later).
const MAX_CONFLICTS: usize = 32;

/// Namespace of the ids of what transitions send (fixed forever).
const SEND_NAMESPACE: Uuid = Uuid::from_u128(0x5a6a_0c3e_27b1_4f0e_9d43_b1d2_7c55_e0a1);

pub(crate) type SagaHandler<S> = Arc<
    dyn Fn(Envelope, Step<S>) -> BoxFuture<'static, Result<Transition<S>, HandlerError>>
        + Send
        + Sync,
>;

pub(crate) struct Route<S> {
    pub starts: bool,
    pub handler: SagaHandler<S>,
}

/// One saga definition, running in one instance.
pub(crate) struct Host<S> {
    pub name: String,
    pub routes: HashMap<&'static str, Route<S>>,
    pub store: Store,
    pub publisher: Publisher,
    pub jetstream: jetstream::Context,
    pub stream: String,
    /// `{env}.sagatimer.{saga}`: a timer's schedule subject is
    /// `{prefix}.{key}.{timer}`.
    pub timer_prefix: String,
}

fn send_error(err: impl Into<crate::error::BoxError>) -> SagaError {
    SagaError::with_source(SagaErrorKind::Send, err)
}

fn transient(err: SagaError) -> HandlerError {
    HandlerError::transient(err)
}

impl<S> Host<S>
where
    S: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static,
{
    pub async fn handle(&self, envelope: Envelope) -> Result<(), HandlerError> {
        let Some(route) = self.routes.get(envelope.event_type.as_str()) else {
            return Ok(());
        };
        let correlation_id = envelope
            .correlation_id()
            .unwrap_or(envelope.id.as_str())
            .to_owned();
        let key = key_of(&correlation_id);
        let fired_timer = envelope
            .extension(TIMER_EXTENSION)
            .and_then(|value| value.as_str())
            .map(str::to_owned);
        for _ in 0..MAX_CONFLICTS {
            let (record, revision) = match self.store.load::<S>(&key).await.map_err(transient)? {
                Some(loaded) => loaded,
                None if route.starts && fired_timer.is_none() => {
                    if self.store.is_archived(&key).await.map_err(transient)? {
                        return Ok(());
                    }
                    (SagaRecord::new(&correlation_id, S::default()), 0)
                }
                // Not started, or finished: nothing to move on.
                None => return Ok(()),
            };
            // A transition stored but not (all) sent: finish it first.
            if !record.outbox.is_empty() || record.status != SagaStatus::Running {
                self.settle(&key, record, revision).await?;
                continue;
            }
            if record.applied.contains(&envelope.id) {
                return Ok(());
            }
            if let Some(timer) = &fired_timer {
                let pending = record.timeouts.get(timer);
                if pending.is_none_or(|pending| pending.event_id != envelope.id) {
                    // Cancelled, replaced or already handled.
                    return Ok(());
                }
            }
            let step = Step {
                state: record.state.clone(),
                correlation_id: correlation_id.clone(),
                event_id: envelope.id.clone(),
            };
            let transition = (route.handler)(envelope.clone(), step).await?;
            let next = self.apply(record, transition, &envelope.id, fired_timer.as_deref());
            match self
                .store
                .write(&key, &next, revision)
                .await
                .map_err(transient)?
            {
                Written::Stored(revision) => return self.settle(&key, next, revision).await,
                Written::Conflict => continue,
            }
        }
        Err(HandlerError::transient(format!(
            "saga {}: {MAX_CONFLICTS} conflicting writes in a row",
            self.name
        )))
    }

    /// The record after `transition`, with what to send in its outbox.
    fn apply(
        &self,
        mut record: SagaRecord<S>,
        transition: Transition<S>,
        event_id: &str,
        fired_timer: Option<&str>,
    ) -> SagaRecord<S> {
        let mut ordinal = 0u32;
        let mut identify = |mut event: StoredEvent| {
            let name = format!("{}\u{0}{event_id}\u{0}{ordinal}", self.name);
            event.id = Uuid::new_v5(&SEND_NAMESPACE, name.as_bytes()).to_string();
            event.cause = event_id.to_owned();
            ordinal = ordinal.saturating_add(1);
            event
        };
        record.state = transition.state;
        record.applied.push(event_id.to_owned());
        record.updated_at = Utc::now();
        if let Some(timer) = fired_timer {
            record.timeouts.remove(timer);
        }
        for compensation in transition.compensations {
            record.compensations.push(identify(compensation));
        }
        let mut outbox = Vec::new();
        for event in transition.sends {
            outbox.push(Pending::Publish(identify(event)));
        }
        for timer in transition.cancels {
            if record.timeouts.remove(&timer).is_some() {
                outbox.push(Pending::Cancel { timer });
            }
        }
        for (timer, at, event) in transition.timeouts {
            let event = identify(event);
            // A replaced timer goes first, or both would fire.
            if record.timeouts.contains_key(&timer) {
                outbox.push(Pending::Cancel {
                    timer: timer.clone(),
                });
            }
            record.timeouts.insert(
                timer.clone(),
                PendingTimeout {
                    at,
                    event_id: event.id.clone(),
                },
            );
            outbox.push(Pending::Schedule { timer, at, event });
        }
        if let Some(ending) = transition.ending {
            if let Ending::Fail(reason) = ending {
                for compensation in record.compensations.iter().rev() {
                    outbox.push(Pending::Publish(compensation.clone()));
                }
                record.status = SagaStatus::Compensated { reason };
            } else {
                record.status = SagaStatus::Completed;
            }
            for timer in std::mem::take(&mut record.timeouts).into_keys() {
                outbox.push(Pending::Cancel { timer });
            }
        }
        record.outbox = outbox;
        record
    }

    /// Sends the outbox (again: every send is idempotent), then clears it,
    /// or archives the saga when it finished.
    async fn settle(
        &self,
        key: &str,
        mut record: SagaRecord<S>,
        revision: u64,
    ) -> Result<(), HandlerError> {
        for pending in &record.outbox {
            self.send(key, &record.correlation_id, pending)
                .await
                .map_err(transient)?;
        }
        record.outbox.clear();
        if record.status != SagaStatus::Running {
            return self
                .store
                .archive(key, &record, revision)
                .await
                .map_err(transient);
        }
        // A conflict means another instance moved on: it sent this outbox
        // too before storing its own.
        self.store
            .write(key, &record, revision)
            .await
            .map(|_| ())
            .map_err(transient)
    }

    async fn send(
        &self,
        key: &str,
        correlation_id: &str,
        pending: &Pending,
    ) -> Result<(), SagaError> {
        match pending {
            Pending::Publish(event) => {
                let (subject, envelope) = self.envelope(event, correlation_id)?;
                self.publisher
                    .publish_envelope(&subject, envelope, PublishOptions::new())
                    .await
                    .map_err(send_error)?;
            }
            Pending::Schedule { timer, at, event } => {
                let (target, mut envelope) = self.envelope(event, correlation_id)?;
                envelope
                    .set_extension(TIMER_EXTENSION, timer.as_str())
                    .map_err(send_error)?;
                let (mut headers, payload) =
                    crate::codec::encode(&envelope, crate::codec::Encoding::Binary)
                        .map_err(send_error)?;
                Schedule::at(*at, target).add_to(&mut headers);
                // No `Nats-Msg-Id`: sent again, the schedule replaces itself.
                self.jetstream
                    .publish_with_headers(self.timer_subject(key, timer), headers, payload)
                    .await
                    .map_err(send_error)?
                    .await
                    .map_err(send_error)?;
            }
            Pending::Cancel { timer } => {
                let stream = self
                    .jetstream
                    .get_stream_no_info(&self.stream)
                    .await
                    .map_err(send_error)?;
                stream
                    .purge()
                    .filter(self.timer_subject(key, timer))
                    .await
                    .map_err(send_error)?;
            }
        }
        Ok(())
    }

    fn timer_subject(&self, key: &str, timer: &str) -> String {
        format!("{}.{key}.{timer}", self.timer_prefix)
    }

    fn envelope(
        &self,
        event: &StoredEvent,
        correlation_id: &str,
    ) -> Result<(String, Envelope), SagaError> {
        let event_type = EventType::parse(&event.event_type).map_err(send_error)?;
        let subject = self
            .publisher
            .client()
            .subjects()
            .event(&event_type, event.key.as_deref())
            .map_err(send_error)?;
        let data = serde_json::to_vec(&event.data).map_err(send_error)?;
        let mut envelope = Envelope::new(
            self.publisher.client().config().source.clone(),
            event.event_type.clone(),
        );
        envelope.id.clone_from(&event.id);
        envelope.data_content_type = Some(crate::codec::APPLICATION_JSON.to_owned());
        envelope.data = Some(data.into());
        envelope.set_correlation_id(correlation_id);
        envelope.set_causation_id(event.cause.clone());
        if let Some(key) = &event.key {
            envelope.set_partition_key(key.clone());
        }
        Ok((subject, envelope))
    }
}
