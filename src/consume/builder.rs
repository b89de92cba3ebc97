//! Configuring and building a durable [`Consumer`].

use std::time::Duration;

use async_nats::jetstream::consumer::DeliverPolicy;

use crate::client::Client;
use crate::error::Error;

use super::router::{self, Router};
use super::settings::{self, Settings};
use super::{
    dead_letter, group_filter, runner, AckMode, ConsumeError, ConsumeErrorKind, Consumer,
    DeadLetterConfig, RetryPolicy, ServerBackoff, UnhandledPolicy,
};

#[cfg(doc)]
use super::DELIVERY_MARGIN;

/// Configures a [`Consumer`]. Handlers see state `S` (see
/// [`with_state`](ConsumerBuilder::with_state)).
pub struct ConsumerBuilder<S = ()> {
    client: Client,
    group: String,
    stream: Option<String>,
    router: Router<S>,
    state: S,
    settings: Settings,
}

impl<S> std::fmt::Debug for ConsumerBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("group", &self.group)
            .field("stream", &self.stream)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ConsumerBuilder<()> {
    pub(super) fn new(client: &Client, group: String) -> Self {
        Self {
            client: client.clone(),
            group,
            stream: None,
            router: Router::default(),
            state: (),
            settings: Settings::default(),
        }
    }

    /// State every handler gets through [`Context::state`](super::Context::state) (a database pool,
    /// a client, an `Arc` of anything). Handlers added before see `()`.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use jetevents::consume::{Consumer, Context, HandlerError};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Paid { invoice: String }
    /// # impl jetevents::Event for Paid { const TYPE: &'static str = "billing.invoice.paid.v1"; }
    ///
    /// #[derive(Clone)]
    /// struct AppState { ledger: Arc<std::sync::Mutex<Vec<String>>> }
    ///
    /// async fn on_paid(event: Paid, ctx: Context<AppState>) -> Result<(), HandlerError> {
    ///     ctx.state().ledger.lock().map_err(|_| HandlerError::transient("poisoned"))?.push(event.invoice);
    ///     Ok(())
    /// }
    ///
    /// # fn f(client: jetevents::client::Client) {
    /// let state = AppState { ledger: Arc::default() };
    /// let builder = Consumer::builder(&client, "ledger").with_state(state).handle(on_paid);
    /// # }
    /// ```
    pub fn with_state<S2: Clone + Send + Sync + 'static>(self, state: S2) -> ConsumerBuilder<S2> {
        ConsumerBuilder {
            client: self.client,
            group: self.group,
            stream: self.stream,
            router: self.router.with_state(),
            state,
            settings: self.settings,
        }
    }
}

impl<S: Clone + Send + Sync + 'static> ConsumerBuilder<S> {
    /// The stream to consume. Default: the stream that captures the filter
    /// subjects.
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = Some(stream.into());
        self
    }

    route_methods!();

    /// An additional filter subject (beyond those derived from the handlers).
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.settings.extra_filters.push(subject.into());
        self
    }

    /// Decrypts encrypted events before the handler stack (see
    /// [`encryption`](crate::encryption)); one that cannot be decrypted is
    /// dead-lettered with [`DeadLetterReason::Undecryptable`](super::DeadLetterReason::Undecryptable),
    /// still encrypted. Events in plaintext pass as they are.
    #[cfg(feature = "encryption")]
    #[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
    pub fn decrypt_with(mut self, encryption: crate::encryption::Encryption) -> Self {
        self.settings.decryption = Some(encryption);
        self
    }

    /// Attempts and delays for transient failures.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.settings.retry = policy;
        self
    }

    /// This instance's place in a priority group of the group (ADR-42):
    /// a primary or standby of the overflow policy, or a level of the
    /// prioritized one (see [`priority`](super::priority)). Every instance
    /// of the group must set one, with the same group name and policy.
    pub fn priority(mut self, priority: super::Priority) -> Self {
        self.settings.priority = Some(priority);
        self
    }

    /// Guards every route with `breaker` and stops pulling while it is
    /// open: while a downstream is down, events stay held or on the
    /// server, spending neither attempts nor deliveries (see
    /// [`CircuitBreaker`](super::CircuitBreaker)). Like [`layer`](Self::layer),
    /// it wraps the layers added before.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use jetevents::consume::{BreakerConfig, CircuitBreaker, Consumer, Context, HandlerError};
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Paid;
    /// # impl jetevents::Event for Paid { const TYPE: &'static str = "billing.invoice.paid.v1"; }
    /// # async fn on_paid(_: Paid, _: Context) -> Result<(), HandlerError> { Ok(()) }
    /// # fn f(client: jetevents::client::Client) {
    /// let breaker = CircuitBreaker::new("ledger-api", BreakerConfig::default());
    /// let builder = Consumer::builder(&client, "ledger")
    ///     .handle(on_paid)
    ///     .circuit_breaker(&breaker);
    /// # }
    /// ```
    pub fn circuit_breaker(mut self, breaker: &super::CircuitBreaker) -> Self {
        breaker.bind_metrics(self.client.metrics());
        self.settings.breakers.push(breaker.clone());
        self.layer(breaker.layer())
    }

    /// How many handlers run at once in this instance (default 8).
    ///
    /// Handlers run concurrently on the consumer's own task, as futures: a
    /// handler that waits (I/O, timers) lets the others run, but one that
    /// computes for long or blocks holds them all and the pulling too. Move
    /// such work to `tokio::task::spawn_blocking` or a spawned task inside
    /// the handler.
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.settings.concurrency = handlers.max(1);
        self
    }

    /// The dead-letter stream's name (default `DEAD_LETTERS`); created if
    /// missing.
    pub fn dead_letter_stream(mut self, stream: impl Into<String>) -> Self {
        self.settings.dead_letter.stream = stream.into();
        self
    }

    /// The dead-letter stream's name and subject prefix.
    pub fn dead_letter(mut self, config: DeadLetterConfig) -> Self {
        self.settings.dead_letter = config;
        self
    }

    /// What to do with events of types this instance has no handler for
    /// (default: leave them for an instance that has one).
    pub fn unhandled(mut self, policy: UnhandledPolicy) -> Self {
        self.settings.unhandled = policy;
        self
    }

    /// Plain or confirmed acks (default plain).
    pub fn ack_mode(mut self, mode: AckMode) -> Self {
        self.settings.ack_mode = mode;
        self
    }

    /// How long the server waits for an ack before redelivering (default
    /// 30 s). Handlers may run longer: they get in-progress acks.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.settings.ack_wait = ack_wait;
        self
    }

    /// Events delivered and not yet acked across all instances of the group
    /// (default: the server's, 1000).
    pub fn max_ack_pending(mut self, max: i64) -> Self {
        self.settings.max_ack_pending = Some(max);
        self
    }

    /// Deliveries after which the server stops redelivering (default: the
    /// retry policy's attempts + 1 + [`DELIVERY_MARGIN`]). Attempts are
    /// failed handler runs, counted by the runner; this is the server's
    /// safety bound above them.
    pub fn max_deliver(mut self, max: i64) -> Self {
        self.settings.max_deliver = Some(max);
        self
    }

    /// The server-side backoff (default: none, see [`ServerBackoff`]).
    pub fn server_backoff(mut self, backoff: ServerBackoff) -> Self {
        self.settings.server_backoff = backoff;
        self
    }

    /// How long one handler call may run (default 5 minutes; a route can
    /// set its own with [`handle_with`](Self::handle_with)).
    ///
    /// A call still running then is cancelled (its future dropped, so it
    /// stops at its next `.await`) and its event is retried like after a
    /// transient error, with the retry policy's delay (dead-lettered if it
    /// was the last attempt); the span and the metrics say
    /// `error.type=timeout`. Without a timeout, a handler that never returns
    /// would keep its event, kept alive by in-progress acks, from every
    /// instance forever.
    ///
    /// It also bounds how long a received event may wait for a free handler:
    /// one that waited longer is Naked without delay, so another instance of
    /// the group can take it instead of it waiting behind slow or hung
    /// handlers here (that costs it a delivery, as any redelivery). Size
    /// [`prefetch`](Self::prefetch) so the handlers get through it within
    /// the timeout.
    ///
    /// `Duration::MAX` turns the timeout off.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.settings.handler_timeout = timeout;
        self
    }

    /// How long shutdown waits for in-flight handlers (default 10 s).
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.settings.shutdown_grace = grace;
        self
    }

    /// How long one pull request waits for events (default 10 s). Also the
    /// period of the watchdog that checks the consumer when pulls stay empty.
    pub fn pull_expiry(mut self, expiry: Duration) -> Self {
        self.settings.pull_expiry = expiry.max(Duration::from_millis(100));
        self
    }

    /// How many events the runner keeps requested from the server or
    /// received and waiting for a free handler (default: twice the
    /// concurrency, at least 256 and at most 512). The next pull goes out
    /// while handlers run, so the round trip to the server is not paid per
    /// batch. Waiting events get in-progress acks like running ones, so a
    /// large prefetch with slow handlers causes no redeliveries, but it
    /// keeps events from other instances of the group: lower it when a few
    /// slow events should spread across instances. An event that waits
    /// longer than the [handler timeout](Self::handler_timeout) is given
    /// back to the group.
    pub fn prefetch(mut self, events: usize) -> Self {
        self.settings.prefetch = Some(events.max(1));
        self
    }

    /// This instance's filter subjects replace the group's, even where that
    /// narrows it (the default only ever widens it: see the
    /// [group filter](super#rolling-deploys)). Use it once every instance of
    /// the group runs a version that no longer handles the dropped types:
    /// their events published from then on are not delivered to the group.
    pub fn replace_group_filter(mut self) -> Self {
        self.settings.replace_group_filter = true;
        self
    }

    /// A new group starts with events published from now on, instead of every
    /// event in the stream (the default). Has no effect on an existing group.
    pub fn deliver_new(mut self) -> Self {
        self.settings.deliver_policy = DeliverPolicy::New;
        self
    }

    /// Validates the settings, creates the dead-letter stream if missing and
    /// creates (or updates) the durable consumer.
    ///
    /// A JetStream API request the connection's user may not make (stream
    /// info, consumer creation) fails at once with
    /// [`ConsumeErrorKind::PermissionDenied`] instead of waiting for the
    /// request timeout.
    pub async fn build(self) -> Result<Consumer<S>, ConsumeError> {
        let client = self.client.clone();
        client
            .fail_fast_on_api_denial(self.build_unguarded())
            .await
            .unwrap_or_else(|violation| {
                Err(Error::new(ConsumeErrorKind::PermissionDenied {
                    subject: violation.subject,
                }))
            })
    }

    async fn build_unguarded(self) -> Result<Consumer<S>, ConsumeError> {
        let prepared = self.prepare()?;
        #[cfg(feature = "testing")]
        if let Some(memory) = prepared.client.memory() {
            return runner::in_memory::build(
                memory.clone(),
                prepared.client.clone(),
                prepared.group,
                prepared.stream,
                prepared.filters,
                prepared.handlers,
                prepared.state,
                prepared.settings,
            )
            .await;
        }
        prepared.attach().await
    }

    /// Validates the group and builds the handler stack and the filters:
    /// everything but the server's side.
    pub(super) fn prepare(self) -> Result<Prepared<S>, ConsumeError> {
        let invalid = |reason: String| Error::new(ConsumeErrorKind::InvalidConfig(reason));
        crate::subject::validate_token(&self.group)
            .map_err(|err| invalid(format!("group {:?}: {err}", self.group)))?;
        let subjects = self.client.subjects();
        let mut filters = self.router.filters(subjects);
        filters.extend(self.settings.extra_filters.iter().cloned());
        let filters = router::minimal_filters(filters);
        let handlers = self.router.build(subjects).map_err(invalid)?;
        if let Some(reason) = self
            .settings
            .priority
            .as_ref()
            .and_then(|p| p.invalid_group())
        {
            return Err(invalid(reason));
        }
        Ok(Prepared {
            client: self.client,
            group: self.group,
            stream: self.stream,
            filters,
            handlers,
            state: self.state,
            settings: self.settings,
        })
    }
}

/// A consumer's handlers, filters and settings before its durable consumer
/// exists on the server; partitioned groups attach one per partition.
#[derive(Clone)]
pub(super) struct Prepared<S> {
    pub(super) client: Client,
    pub(super) group: String,
    pub(super) stream: Option<String>,
    pub(super) filters: Vec<String>,
    pub(super) handlers: super::stack::Handlers<S>,
    pub(super) state: S,
    pub(super) settings: Settings,
}

impl<S: Clone + Send + Sync + 'static> Prepared<S> {
    /// Creates the dead-letter stream if missing and creates (or updates)
    /// the durable consumer on the NATS server.
    pub(super) async fn attach(self) -> Result<Consumer<S>, ConsumeError> {
        let jetstream = &self
            .client
            .nats_transport("a durable consumer")
            .map_err(|err| Error::with_source(ConsumeErrorKind::Unavailable, err))?
            .jetstream;
        let filters = self.filters;
        let stream_name = match self.stream {
            Some(stream) => stream,
            None => {
                let first = filters.first().cloned().unwrap_or_default();
                jetstream
                    .stream_by_subject(first.clone())
                    .await
                    .map_err(|err| {
                        Error::with_source(
                            ConsumeErrorKind::StreamNotFound(format!("no stream captures {first}")),
                            err,
                        )
                    })?
            }
        };
        let stream = runner::get_stream(&self.client, &stream_name).await?;
        dead_letter::ensure_stream(&self.client, &self.settings.dead_letter)
            .await
            .map_err(|err| Error::with_source(ConsumeErrorKind::DeadLetterStream, err))?;
        let ensured = settings::group_filter(&self.group, &filters, &self.settings)
            .ensure(&stream)
            .await?;
        let drift = group_filter::report_drift(
            &self.group,
            &filters,
            ensured.drift,
            &[],
            &self.client.metrics().filter_drift,
        );
        let source = super::Source::Nats {
            consumer: Box::new(ensured.consumer),
            drift,
            replicas: stream.cached_info().config.num_replicas,
        };
        Ok(Consumer {
            source,
            client: self.client,
            group: self.group,
            stream: stream_name,
            filters,
            handlers: self.handlers,
            state: self.state,
            settings: self.settings,
        })
    }
}
