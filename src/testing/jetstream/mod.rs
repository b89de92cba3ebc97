//! [`MemoryJetStream`]: streams, durable pull consumers and their deliveries in
//! memory, on tokio's clock.

mod consumer;
mod error;
mod history;
mod kv;
mod message;
mod read;
mod stream;
mod subject;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{broadcast, Notify};
use tokio::time::Instant;

use crate::nats::HeaderMap;

pub use consumer::{ConsumerConfig, ConsumerInfo, DeliverPolicy, SequencePair};
pub use error::{
    AckError, AckErrorKind, MemoryError, MemoryErrorKind, PublishError, PublishErrorKind,
};
pub use history::{Action, HistoryEntry};
pub use message::{Advisory, Delivery, DeliveryInfo, StoredMessage};
pub use stream::{
    PublishAck, StreamConfig, StreamInfo, NATS_EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT,
};

use consumer::{Consumer, StreamView};
use history::History;
pub(crate) use kv::{KvRefusal, MemoryKeyValue};
use message::Settlement;
pub(crate) use stream::BatchRefusal;
use stream::{Incoming, Stream};

/// nats-server's default `max_payload`: 1 MiB.
const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Advisories kept for a slow receiver before it lags.
const ADVISORY_CAPACITY: usize = 1024;

/// An in-memory JetStream on tokio's clock. Cloning is cheap and every clone
/// is the same server.
///
/// ```
/// use bytes::Bytes;
/// use jetevents::testing::{ConsumerConfig, MemoryJetStream, StreamConfig};
///
/// # tokio_test_block_on(async {
/// let js = MemoryJetStream::new();
/// js.create_stream(StreamConfig::new("ORDERS", ["orders.>"]))?;
/// js.create_consumer("ORDERS", ConsumerConfig::new("billing"))?;
/// js.publish("orders.created", None, Bytes::from_static(b"{}"))?;
///
/// let delivery = js.next("ORDERS", "billing").await?;
/// assert_eq!(delivery.subject(), "orders.created");
/// delivery.ack()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryJetStream {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Woken on every change a waiting caller may care about.
    changed: Notify,
    advisories: broadcast::Sender<Advisory>,
    history: History,
    max_payload: usize,
    /// Maps the tokio clock to wall-clock time for `published`.
    started: (Instant, SystemTime),
}

#[derive(Debug, Default)]
struct State {
    streams: BTreeMap<String, Stream>,
    buckets: BTreeMap<String, MemoryKeyValue>,
}

impl Default for MemoryJetStream {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryJetStream {
    /// An empty server with nats-server's default `max_payload` (1 MiB).
    pub fn new() -> Self {
        Self::with_max_payload(DEFAULT_MAX_PAYLOAD)
    }

    /// An empty server refusing messages over `bytes` (headers and payload).
    pub fn with_max_payload(bytes: usize) -> Self {
        let (advisories, _) = broadcast::channel(ADVISORY_CAPACITY);
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                advisories,
                history: History::default(),
                max_payload: bytes,
                started: (Instant::now(), SystemTime::now()),
            }),
        }
    }

    /// The largest message (header block plus payload) accepted.
    pub fn max_payload(&self) -> usize {
        self.shared.max_payload
    }

    /// Creates a stream; creating it again with the same configuration is a no-op.
    pub fn create_stream(&self, config: StreamConfig) -> Result<StreamInfo, MemoryError> {
        let config = config.normalized()?;
        let mut state = self.state();
        if let Some(existing) = state.streams.get(&config.name) {
            return if existing.config == config {
                Ok(existing.info())
            } else {
                Err(MemoryErrorKind::StreamNameInUse.into())
            };
        }
        if state
            .streams
            .values()
            .any(|other| other.config.overlaps(&config))
        {
            return Err(MemoryErrorKind::SubjectsOverlap.into());
        }
        let stream = Stream::new(config);
        let info = stream.info();
        state.streams.insert(info.config.name.clone(), stream);
        Ok(info)
    }

    /// Changes a stream's subjects or duplicate window.
    pub fn update_stream(&self, config: StreamConfig) -> Result<StreamInfo, MemoryError> {
        let config = config.normalized()?;
        let mut state = self.state();
        let overlaps = state
            .streams
            .values()
            .any(|other| other.config.name != config.name && other.config.overlaps(&config));
        let stream = state
            .streams
            .get_mut(&config.name)
            .ok_or(MemoryErrorKind::StreamNotFound)?;
        if overlaps {
            return Err(MemoryErrorKind::SubjectsOverlap.into());
        }
        stream.config = config;
        Ok(stream.info())
    }

    /// Deletes a stream, its messages and consumers; callers waiting on them get an error.
    pub fn delete_stream(&self, name: &str) -> Result<(), MemoryError> {
        let removed = self.state().streams.remove(name);
        self.shared.changed.notify_waiters();
        removed
            .map(drop)
            .ok_or_else(|| MemoryErrorKind::StreamNotFound.into())
    }

    /// The names of every stream, sorted.
    pub fn stream_names(&self) -> Vec<String> {
        self.state().streams.keys().cloned().collect()
    }

    /// A stream's configuration and state.
    pub fn stream_info(&self, name: &str) -> Option<StreamInfo> {
        self.state().streams.get(name).map(Stream::info)
    }

    /// The stream that captures `subject`, if any.
    pub fn stream_for_subject(&self, subject: &str) -> Option<String> {
        self.state()
            .streams
            .values()
            .find(|stream| stream.config.captures(subject))
            .map(|stream| stream.config.name.clone())
    }

    /// Publishes a message as a JetStream publish does, honouring `Nats-Msg-Id`
    /// and the `Nats-Expected-*` headers, and returns the server's ack.
    pub fn publish(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<PublishAck, PublishError> {
        if !subject::is_literal(subject) {
            return Err(PublishErrorKind::InvalidSubject.into());
        }
        let now = Instant::now();
        let incoming = Incoming {
            subject,
            headers,
            payload,
            now,
            wall_clock: self.wall_clock(now),
            max_payload: self.shared.max_payload,
        };
        let ack = {
            let mut state = self.state();
            let stream = state
                .streams
                .values_mut()
                .find(|stream| stream.config.captures(subject))
                .ok_or(PublishErrorKind::NoStream)?;
            stream.store(incoming)?
        };
        self.shared.changed.notify_waiters();
        Ok(ack)
    }

    /// Publishes `batch` (subject, headers, payload) as a JetStream atomic
    /// batch: all stored contiguously in one stream, after the checks of a
    /// publish, or none. Answers the first and last sequence.
    pub(crate) fn publish_batch(
        &self,
        batch: Vec<(String, HeaderMap, Bytes)>,
    ) -> Result<(String, u64, u64), BatchRefusal> {
        let refused = |kind: PublishErrorKind| BatchRefusal::Refused(kind);
        if batch
            .iter()
            .any(|(subject, _, _)| !subject::is_literal(subject))
        {
            return Err(refused(PublishErrorKind::InvalidSubject));
        }
        let now = Instant::now();
        let wall_clock = self.wall_clock(now);
        let stored = {
            let mut state = self.state();
            let first = batch.first().map(|(subject, _, _)| subject.as_str());
            let stream = state
                .streams
                .values_mut()
                .find(|stream| first.is_some_and(|subject| stream.config.captures(subject)))
                .ok_or(refused(PublishErrorKind::NoStream))?;
            if !batch
                .iter()
                .all(|(subject, _, _)| stream.config.captures(subject))
            {
                return Err(refused(PublishErrorKind::NoStream));
            }
            let incoming = batch
                .iter()
                .map(|(subject, headers, payload)| Incoming {
                    subject,
                    headers: Some(headers),
                    payload: payload.clone(),
                    now,
                    wall_clock,
                    max_payload: self.shared.max_payload,
                })
                .collect();
            let (first, last) = stream.store_batch(incoming)?;
            (stream.config.name.clone(), first, last)
        };
        self.shared.changed.notify_waiters();
        Ok(stored)
    }

    /// The key-value bucket `name`, created empty on first use, its
    /// entries expiring `max_age` after their write (as JetStream's
    /// `create_or_update_key_value`, a later call sets the max age).
    pub(crate) fn key_value(&self, name: &str, max_age: Option<Duration>) -> MemoryKeyValue {
        let mut state = self.state();
        let bucket = state
            .buckets
            .entry(name.to_owned())
            .or_insert_with(|| MemoryKeyValue::with_max_age(max_age));
        bucket.set_max_age(max_age);
        bucket.clone()
    }

    /// Every message of a stream, in order (empty if there is no such stream).
    pub fn messages(&self, stream: &str) -> Vec<StoredMessage> {
        self.state()
            .streams
            .get(stream)
            .map(|stream| stream.messages.clone())
            .unwrap_or_default()
    }

    /// Creates a durable consumer, or updates it with what the server lets an
    /// update change.
    pub fn create_consumer(
        &self,
        stream: &str,
        config: ConsumerConfig,
    ) -> Result<ConsumerInfo, MemoryError> {
        let config = config.normalized()?;
        let info = {
            let mut state = self.state();
            let stream = state
                .streams
                .get_mut(stream)
                .ok_or(MemoryErrorKind::StreamNotFound)?;
            let name = config.durable_name.clone();
            match stream.consumers.get_mut(&name) {
                Some(existing) => existing.update(config)?,
                None => {
                    let consumer = Consumer::new(config, stream.last_sequence());
                    stream.consumers.insert(name.clone(), consumer);
                }
            }
            let view = StreamView {
                name: &stream.config.name,
                messages: &stream.messages,
            };
            stream
                .consumers
                .get(&name)
                .map(|consumer| consumer.info(&view))
        };
        self.shared.changed.notify_waiters();
        info.ok_or_else(|| MemoryErrorKind::ConsumerNotFound.into())
    }

    /// A consumer's state, after processing what its clock says is due.
    pub fn consumer_info(&self, stream: &str, consumer: &str) -> Option<ConsumerInfo> {
        let mut advisories = Vec::new();
        let info = self
            .with_consumer(stream, consumer, |consumer, view| {
                consumer.expire(Instant::now(), view.name, &mut advisories);
                consumer.info(view)
            })
            .ok();
        self.emit(advisories);
        info
    }

    /// Deletes a consumer; callers waiting on it get an error.
    pub fn delete_consumer(&self, stream: &str, consumer: &str) -> Result<(), MemoryError> {
        let removed = {
            let mut state = self.state();
            let stream = state
                .streams
                .get_mut(stream)
                .ok_or(MemoryErrorKind::StreamNotFound)?;
            stream.consumers.remove(consumer)
        };
        self.shared.changed.notify_waiters();
        removed
            .map(drop)
            .ok_or_else(|| MemoryErrorKind::ConsumerNotFound.into())
    }

    /// Waits (on tokio's clock) for the next delivery of the durable
    /// `consumer`. Any number of callers may wait on one durable: each
    /// delivery goes to one of them, as with a real server's pull requests.
    pub async fn next(&self, stream: &str, consumer: &str) -> Result<Delivery, MemoryError> {
        let _waiting = WaitingGuard::register(self, stream, consumer)?;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            // Registered before looking, so a change in between is not missed.
            changed.as_mut().enable();
            let (delivery, next_due) = self.poll_next(stream, consumer)?;
            if let Some(delivery) = delivery {
                return Ok(delivery);
            }
            match next_due {
                Some(due) => {
                    tokio::select! {
                        _ = changed => {}
                        _ = tokio::time::sleep_until(due) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// The next delivery if one is ready now (a pull with no wait).
    pub fn try_next(&self, stream: &str, consumer: &str) -> Option<Delivery> {
        self.poll_next(stream, consumer)
            .ok()
            .and_then(|(delivery, _)| delivery)
    }

    /// A receiver of every advisory emitted from now on.
    pub fn advisories(&self) -> broadcast::Receiver<Advisory> {
        self.shared.advisories.subscribe()
    }

    /// One pull: a delivery if ready, else when the next redelivery is due.
    fn poll_next(
        &self,
        stream: &str,
        consumer: &str,
    ) -> Result<(Option<Delivery>, Option<Instant>), MemoryError> {
        let now = Instant::now();
        let mut advisories = Vec::new();
        let polled = self.with_consumer(stream, consumer, |consumer, view| {
            consumer.expire(now, view.name, &mut advisories);
            let next = consumer.take_next(now, view, &mut advisories);
            (next, consumer.next_due())
        });
        self.emit(advisories);
        let (next, next_due) = polled?;
        let delivery = next.map(|(message, info)| {
            self.shared.history.delivered(&info);
            Delivery {
                engine: self.clone(),
                message,
                info,
            }
        });
        Ok((delivery, next_due))
    }

    /// Settles a delivery with its consumer (see [`Delivery`]).
    pub(crate) fn settle(
        &self,
        delivery: &DeliveryInfo,
        settlement: Settlement,
    ) -> Result<(), AckError> {
        let now = Instant::now();
        let mut advisories = Vec::new();
        self.with_consumer(&delivery.stream, &delivery.consumer, |consumer, view| {
            consumer.expire(now, view.name, &mut advisories);
            consumer.settle(now, delivery, settlement, &mut advisories);
        })
        .map_err(ack_error)?;
        self.shared.history.settled(delivery, settlement);
        self.emit(advisories);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    /// Terminates a delivery with its consumer (see [`Delivery::term`]).
    pub(crate) fn terminate(&self, delivery: &DeliveryInfo, reason: &str) -> Result<(), AckError> {
        let advisory = self
            .with_consumer(&delivery.stream, &delivery.consumer, |consumer, _| {
                consumer.terminate(delivery, reason)
            })
            .map_err(ack_error)?;
        self.shared.history.terminated(delivery, reason);
        self.emit(vec![advisory]);
        self.shared.changed.notify_waiters();
        Ok(())
    }

    fn with_consumer<T>(
        &self,
        stream: &str,
        consumer: &str,
        f: impl FnOnce(&mut Consumer, &StreamView<'_>) -> T,
    ) -> Result<T, MemoryError> {
        let mut state = self.state();
        let stream = state
            .streams
            .get_mut(stream)
            .ok_or(MemoryErrorKind::StreamNotFound)?;
        let view = StreamView {
            name: &stream.config.name,
            messages: &stream.messages,
        };
        let consumer = stream
            .consumers
            .get_mut(consumer)
            .ok_or(MemoryErrorKind::ConsumerNotFound)?;
        Ok(f(consumer, &view))
    }

    fn emit(&self, advisories: Vec<Advisory>) {
        for advisory in advisories {
            self.shared.history.advised(&advisory);
            // No receiver is fine: nobody listens to the advisory subjects.
            let _ = self.shared.advisories.send(advisory);
        }
    }

    fn wall_clock(&self, now: Instant) -> SystemTime {
        let (instant, wall) = self.shared.started;
        wall + now.saturating_duration_since(instant)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-done change behind
        // (every change is made after its checks), so the state stays usable.
        self.shared
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn ack_error(error: MemoryError) -> AckError {
    error.map_kind(|kind| match kind {
        MemoryErrorKind::StreamNotFound => AckErrorKind::StreamNotFound,
        _ => AckErrorKind::ConsumerNotFound,
    })
}

/// Counts a caller of `next` in `num_waiting` while it waits, also when its
/// future is dropped.
struct WaitingGuard<'a> {
    engine: &'a MemoryJetStream,
    stream: &'a str,
    consumer: &'a str,
}

impl<'a> WaitingGuard<'a> {
    fn register(
        engine: &'a MemoryJetStream,
        stream: &'a str,
        consumer: &'a str,
    ) -> Result<Self, MemoryError> {
        engine.with_consumer(stream, consumer, |consumer, _| consumer.waiting += 1)?;
        Ok(Self {
            engine,
            stream,
            consumer,
        })
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        // The consumer may be gone (deleted while waiting): nothing to count then.
        let _ = self
            .engine
            .with_consumer(self.stream, self.consumer, |consumer, _| {
                consumer.waiting = consumer.waiting.saturating_sub(1)
            });
    }
}
