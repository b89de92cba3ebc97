//! A saga definition: its name, the event that starts it and the events
//! that move it on, hosted as a consumer group.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};

use super::error::{SagaError, SagaErrorKind};
use super::host::{Host, Route, SagaHandler};
use super::store::Store;
use super::transition::{Step, Transition};
use crate::client::Client;
use crate::consume::{Consumer, ConsumerBuilder, HandlerError};
use crate::event::Event;
use crate::provision::StreamSpec;

/// A saga (process manager): state of type `S` keyed by correlation id,
/// started by one event type and moved on by others.
///
/// ```no_run
/// use jetevents::consume::HandlerError;
/// use jetevents::saga::{Saga, Step, Transition};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderPlaced { order: String }
/// # impl jetevents::Event for OrderPlaced { const TYPE: &'static str = "shop.order.placed.v1"; }
/// # #[derive(serde::Serialize, serde::Deserialize)] struct OrderShipped { order: String }
/// # impl jetevents::Event for OrderShipped { const TYPE: &'static str = "shop.order.shipped.v1"; }
///
/// async fn placed(event: OrderPlaced, step: Step<u32>) -> Result<Transition<u32>, HandlerError> {
///     Ok(Transition::to(step.into_state() + 1))
/// }
/// async fn shipped(_: OrderShipped, step: Step<u32>) -> Result<Transition<u32>, HandlerError> {
///     Ok(Transition::to(step.into_state() + 1).complete())
/// }
///
/// # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let stream = jetevents::provision::StreamSpec::for_domain(client.subjects(), "SHOP", "shop")?;
/// Saga::new("order")
///     .start(placed)
///     .on(shipped)
///     .consumer(&client, "order-saga", &stream)
///     .await?
///     .build()
///     .await?
///     .run()
///     .await?;
/// # Ok(()) }
/// ```
pub struct Saga<S> {
    name: String,
    routes: HashMap<&'static str, Route<S>>,
}

impl<S> std::fmt::Debug for Saga<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saga")
            .field("name", &self.name)
            .field("events", &self.routes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl<S> Saga<S>
where
    S: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static,
{
    /// A saga named `name` (letters, digits, `-` and `_`): its buckets are
    /// `SAGA_{name}` (running) and `SAGA_{name}_DONE` (finished).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            routes: HashMap::new(),
        }
    }

    /// Events of type `E` start a saga (keyed by their correlation id, or
    /// their id when they have none) with `S::default()`; one arriving for a
    /// running or finished saga is applied like any [`on`](Self::on) event
    /// (or ignored when finished).
    pub fn start<E, F, Fut>(self, handler: F) -> Self
    where
        E: Event,
        F: Fn(E, Step<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Transition<S>, HandlerError>> + Send + 'static,
    {
        self.route(true, handler)
    }

    /// Events of type `E` move a running saga on; for a saga not running
    /// (never started, or finished) they are acked and ignored.
    pub fn on<E, F, Fut>(self, handler: F) -> Self
    where
        E: Event,
        F: Fn(E, Step<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Transition<S>, HandlerError>> + Send + 'static,
    {
        self.route(false, handler)
    }

    fn route<E, F, Fut>(mut self, starts: bool, handler: F) -> Self
    where
        E: Event,
        F: Fn(E, Step<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Transition<S>, HandlerError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let handler: SagaHandler<S> = Arc::new(move |envelope, step| {
            let handler = handler.clone();
            Box::pin(async move {
                // Undecodable data will not decode on a retry either.
                let event = envelope
                    .decode_data::<E>()
                    .map_err(HandlerError::permanent)?;
                handler(event, step).await
            })
        });
        self.routes.insert(E::TYPE, Route { starts, handler });
        self
    }

    /// The consumer of group `group` on the stream `stream` declares that
    /// runs this saga, to configure further (concurrency, retry, layers) and
    /// run. Opens (or creates) the saga's buckets, and declares `stream`
    /// (with [`Client::ensure_stream`]) holding the saga's timers as well:
    /// message schedules allowed, subjects `{env}.sagatimer.{name}.>` added.
    /// Other declarations of the same stream should come from
    /// [`timer_stream`](Self::timer_stream), or they undo each other's
    /// subjects.
    pub async fn consumer(
        self,
        client: &Client,
        group: impl Into<String>,
        stream: &StreamSpec,
    ) -> Result<ConsumerBuilder<()>, SagaError> {
        if !self.routes.values().any(|route| route.starts) || !is_name(&self.name) {
            return Err(SagaError::new(SagaErrorKind::InvalidDefinition));
        }
        let jetstream = client
            .jetstream()
            .ok_or_else(|| SagaError::new(SagaErrorKind::NeedsNats))?
            .clone();
        let timer_prefix = timer_prefix(client, &self.name);
        client
            .ensure_stream(&self.timer_stream(client, stream.clone()))
            .await
            .map_err(|err| SagaError::with_source(SagaErrorKind::Stream, err))?;
        let stream = stream.name.clone();
        let host = Arc::new(Host {
            store: Store::open(&jetstream, &self.name).await?,
            publisher: client.publisher(),
            jetstream,
            stream: stream.clone(),
            timer_prefix,
            name: self.name,
            routes: self.routes,
        });
        let types: Vec<&'static str> = host.routes.keys().copied().collect();
        let mut builder = Consumer::builder(client, group).stream(stream);
        for event_type in types {
            let host = host.clone();
            builder = builder.handle_pattern(event_type, move |envelope, _| {
                let host = host.clone();
                async move { host.handle(envelope).await }
            });
        }
        Ok(builder)
    }
}

impl<S> Saga<S> {
    /// `stream` as this saga needs it: its timers' subjects added, message
    /// schedules allowed (the schedule and its target must be in one
    /// stream). [`consumer`](Self::consumer) declares it.
    pub fn timer_stream(&self, client: &Client, mut stream: StreamSpec) -> StreamSpec {
        let timers = format!("{}.>", timer_prefix(client, &self.name));
        if !stream.subjects.contains(&timers) {
            stream.subjects.push(timers);
        }
        stream.allow_message_schedules(true)
    }
}

/// `{env}.sagatimer.{saga}`: the subjects of the saga's timers.
fn timer_prefix(client: &Client, saga: &str) -> String {
    format!("{}.sagatimer.{saga}", client.subjects().env())
}

pub(crate) fn is_name(name: &str) -> bool {
    super::transition::is_timer_name(name)
}
