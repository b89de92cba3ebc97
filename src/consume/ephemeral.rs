//! Core-NATS queue groups for ephemeral events: not stored, not acked, not
//! retried. Same handler shape as the durable consumer.

use std::future::Future;
use std::sync::Arc;

use futures_util::StreamExt;
use tokio::sync::{broadcast, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::client::{Client, Operation};
use crate::error::Error;

use super::context::Context;
use super::outcome::Outcome;
use super::router::{self, Router};
use super::stack::{Delivery, Handlers};
use super::{ConsumeError, ConsumeErrorKind};

/// Handles ephemeral events (published with core NATS, not stored) in a
/// queue group: each event goes to one member of the group.
///
/// Nothing is acked or retried: a failing handler's event is gone (the span
/// records the error). Use the durable [`Consumer`](super::Consumer) for
/// events that matter.
///
/// ```no_run
/// use jetevents::consume::{Context, EphemeralConsumer, HandlerError};
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct CursorMoved { x: i32, y: i32 }
/// # impl jetevents::Event for CursorMoved { const TYPE: &'static str = "ui.cursor.moved.v1"; }
///
/// async fn on_moved(event: CursorMoved, _: Context) -> Result<(), HandlerError> {
///     println!("{},{}", event.x, event.y);
///     Ok(())
/// }
///
/// # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
/// EphemeralConsumer::builder(&client, "presence")
///     .handle(on_moved)
///     .build()
///     .await?
///     .run_until(jetevents::consume::shutdown_signal())
///     .await;
/// # Ok(()) }
/// ```
pub struct EphemeralConsumer<S = ()> {
    client: Client,
    group: String,
    handlers: Arc<Handlers<S>>,
    state: S,
    concurrency: usize,
    subscriptions: Vec<async_nats::Subscriber>,
}

impl<S> std::fmt::Debug for EphemeralConsumer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralConsumer")
            .field("group", &self.group)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

/// Configures an [`EphemeralConsumer`].
pub struct EphemeralBuilder<S = ()> {
    client: Client,
    group: String,
    router: Router<S>,
    state: S,
    concurrency: usize,
}

impl<S> std::fmt::Debug for EphemeralBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralBuilder")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl EphemeralConsumer<()> {
    /// An ephemeral consumer in queue group `group`.
    pub fn builder(client: &Client, group: impl Into<String>) -> EphemeralBuilder<()> {
        EphemeralBuilder {
            client: client.clone(),
            group: group.into(),
            router: Router::default(),
            state: (),
            concurrency: 64,
        }
    }
}

impl EphemeralBuilder<()> {
    /// State every handler gets through [`Context::state`].
    pub fn with_state<S2: Clone + Send + Sync + 'static>(self, state: S2) -> EphemeralBuilder<S2> {
        EphemeralBuilder {
            client: self.client,
            group: self.group,
            router: self.router.with_state(),
            state,
            concurrency: self.concurrency,
        }
    }
}

impl<S: Clone + Send + Sync + 'static> EphemeralBuilder<S> {
    route_methods!();

    /// Handlers running at once (default 64). While all are busy, events
    /// queue in the subscription (and core NATS drops them if it overflows).
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.concurrency = handlers.max(1);
        self
    }

    /// Subscribes to the handled types' subjects in the queue group.
    ///
    /// A subscription the connection's user may not make fails with
    /// [`ConsumeErrorKind::PermissionDenied`].
    pub async fn build(self) -> Result<EphemeralConsumer<S>, ConsumeError> {
        let invalid = |reason: String| Error::new(ConsumeErrorKind::InvalidConfig(reason));
        crate::subject::validate_token(&self.group)
            .map_err(|err| invalid(format!("group {:?}: {err}", self.group)))?;
        let subjects = self.client.subjects();
        let filters = router::minimal_filters(self.router.filters(subjects));
        let handlers = self.router.build(subjects).map_err(invalid)?;
        let mut violations = self.client.permission_violations();
        let connection = self
            .client
            .nats_transport("an ephemeral consumer")
            .map_err(|err| Error::with_source(ConsumeErrorKind::Subscribe, err))?;
        let nats = &connection.nats;
        let mut subscriptions = Vec::new();
        for filter in &filters {
            let subscription = nats
                .queue_subscribe(filter.clone(), self.group.clone())
                .await
                .map_err(|err| Error::with_source(ConsumeErrorKind::Subscribe, err))?;
            subscriptions.push(subscription);
        }
        nats.flush()
            .await
            .map_err(|err| Error::with_source(ConsumeErrorKind::Subscribe, err))?;
        // A round trip proves the server has processed the subscriptions (it
        // handles a connection's operations in order), so an event published
        // right after `build` is not missed, and a refused subscription has
        // been reported by then. Its answer does not matter: an error reply
        // is a round trip too.
        let _ = tokio::time::timeout(
            self.client.config().api_timeout,
            connection.jetstream.query_account(),
        )
        .await;
        // The refusal reaches us through the connection's event task, which
        // may run a moment after the reply.
        let grace = tokio::time::sleep(REFUSAL_GRACE);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                violation = violations.recv() => match violation {
                    Ok(violation)
                        if violation.operation == Operation::Subscribe
                            && filters.contains(&violation.subject) =>
                    {
                        return Err(Error::new(ConsumeErrorKind::PermissionDenied {
                            subject: violation.subject,
                        }));
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                () = &mut grace => break,
            }
        }
        Ok(EphemeralConsumer {
            client: self.client,
            group: self.group,
            handlers: Arc::new(handlers),
            state: self.state,
            concurrency: self.concurrency,
            subscriptions,
        })
    }
}

/// How long `build` waits, after its round trip, for the refusal of a
/// subscription to come through the connection's event task.
const REFUSAL_GRACE: std::time::Duration = std::time::Duration::from_millis(250);

impl<S: Clone + Send + Sync + 'static> EphemeralConsumer<S> {
    /// Handles events until `signal` completes, then unsubscribes and waits
    /// for the handlers running.
    pub async fn run_until<F: Future<Output = ()> + Send>(self, signal: F) {
        let EphemeralConsumer {
            client,
            group,
            handlers,
            state,
            concurrency,
            subscriptions,
        } = self;
        let publisher = client.publisher();
        let group: Arc<str> = Arc::from(group);
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut messages = futures_util::stream::select_all(subscriptions);
        let mut tasks = JoinSet::new();
        tokio::pin!(signal);
        loop {
            while tasks.try_join_next().is_some() {}
            let permit = tokio::select! {
                biased;
                () = &mut signal => break,
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let message = tokio::select! {
                biased;
                () = &mut signal => break,
                message = messages.next() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let handlers = handlers.clone();
            let state = state.clone();
            let publisher = publisher.clone();
            let group = group.clone();
            tasks.spawn(async move {
                let _permit = permit;
                handle_one(message, &handlers, state, publisher, group).await;
            });
        }
        drop(messages);
        while tasks.join_next().await.is_some() {}
    }
}

async fn handle_one<S: Clone + Send + Sync + 'static>(
    message: async_nats::Message,
    handlers: &Handlers<S>,
    state: S,
    publisher: crate::publish::Publisher,
    group: Arc<str>,
) {
    let subject = message.subject.clone();
    let span = tracing::info_span!(
        "process",
        // Evaluated only for a span someone collects, like every field.
        otel.name = %format_args!("process {}", crate::subject::destination_template(&subject)),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.destination.name = %subject,
        messaging.destination.template = %crate::subject::destination_template(&subject),
        messaging.consumer.group.name = %group,
        messaging.operation.name = "process",
        messaging.message.id = tracing::field::Empty,
        messaging.message.conversation_id = tracing::field::Empty,
        cloudevents.event_id = tracing::field::Empty,
        cloudevents.event_type = tracing::field::Empty,
        cloudevents.event_source = tracing::field::Empty,
        error.type = tracing::field::Empty,
    );
    let envelope = match crate::codec::decode(message.headers.as_ref(), &message.payload) {
        Ok(envelope) => envelope,
        Err(err) => {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", "undecodable");
            span.in_scope(|| tracing::warn!(error = %err, "undecodable ephemeral event dropped"));
            return;
        }
    };
    crate::trace::continue_in_process_span(&span, &envelope);

    let work = async {
        let Some(route) = handlers.routes().find(&envelope.event_type) else {
            return;
        };
        let context = Context::new(envelope, subject.clone(), group, 1, None, publisher, state);
        // The same stack as the durable consumer's; only the settling
        // differs: nothing to settle, a failure is recorded and dropped.
        let outcome = match handlers.call(route, Delivery::new(context)).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) => Outcome::from_stack_error(err),
            Err(_) => Outcome::failed_run("panic", "handler panicked".to_owned()),
        };
        if let Some((kind, error)) = outcome.failure() {
            let span = tracing::Span::current();
            span.record("otel.status_code", "ERROR");
            span.record("otel.status_description", error);
            span.record("error.type", kind);
            tracing::warn!(error = %error, kind, "ephemeral event handler failed; event dropped");
        }
    };
    work.instrument(span).await;
}
