//! The consumer runtime: durable consumers shared by a service's instances,
//! typed handlers, Nak-based retry, dead letters and graceful shutdown.
//!
//! ```no_run
//! use std::time::Duration;
//! use jetevents::consume::{Consumer, Context, HandlerError, RetryPolicy};
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct AppointmentConfirmed { appointment_id: String }
//! # impl jetevents::Event for AppointmentConfirmed { const TYPE: &'static str = "booking.appointment.confirmed.v1"; }
//!
//! async fn on_confirmed(event: AppointmentConfirmed, ctx: Context<()>) -> Result<(), HandlerError> {
//!     println!("confirmed {} (delivery {})", event.appointment_id, ctx.delivery_count());
//!     Ok(())
//! }
//!
//! # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! Consumer::builder(&client, "reminders")
//!     .stream("BOOKING")
//!     .handle(on_confirmed)
//!     .retry(RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(30)).max_attempts(5))
//!     .concurrency(16)
//!     .build()
//!     .await?
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! # Groups
//!
//! The group name is the durable consumer's name. Every instance of a service
//! uses the same group, so they share one server-side cursor and each event is
//! handled by one of them; another service with another group gets every event
//! too. The consumer's filter subjects are derived from the handled types.
//!
//! # Rolling deploys
//!
//! Instances of different versions of a service may share the group, as they
//! do during a rolling deploy or a rollback. None of them loses or acks an
//! event it cannot handle:
//!
//! - **The group's filter only widens.** An instance writes the union of the
//!   filter on the server and its own (and nothing when the server's already
//!   covers its own), so a newer version adds its types and an older one,
//!   starting or recovering, never removes them. Each instance looks again
//!   every 15 s and widens the filter back if something narrowed it.
//!   Subjects on the server that an instance does not handle are drift,
//!   reported at `WARN` and in `jetevents.consume.filter_drift`. Narrowing is
//!   deliberate: [`ConsumerBuilder::replace_group_filter`].
//! - **Unknown types are left for an instance that handles them**: Naked with
//!   a growing delay (250 ms up to 5 s), counted in
//!   `jetevents.consume.unhandled` and never as an attempt. Acking or
//!   dead-lettering them is a policy with a wait ([`UnhandledPolicy`]).
//! - **Attempts are failed handler runs**, not deliveries: an event Naked at a
//!   shutdown, left for another version or redelivered after a lost
//!   connection keeps its attempts. Instances share the count through the
//!   KV bucket [`ATTEMPTS_BUCKET`]; the server's `max_deliver` (attempts + 1 +
//!   [`DELIVERY_MARGIN`] by default) stays as a safety bound above them.
//!
//! Events of a type published before any instance of the group asked for it
//! are not delivered to the group when a new version widens the filter: the
//! group's cursor has passed them. Rolling back is as safe as rolling
//! forward: the older version leaves the newer type's events for the newer
//! instances still running, and if none is left they wait (up to
//! `max_deliver`, then dead-lettered `undeliverable`) for one to return.
//!
//! The cost is latency: while old instances are in the group, an event of a
//! new type can come back to them several times before a new instance gets
//! it. In `tests/consume_deployments.rs`, which rolls a group from version 1
//! to version 2 and back while both types are published (and restarts an
//! instance ten times in the middle of its handler), the last such event was
//! handled 4 to 73 s after it was published.
//!
//! # Acking (the runner owns it)
//!
//! | handler result / situation               | settle                                    |
//! |------------------------------------------|-------------------------------------------|
//! | `Ok(())`                                 | ack (double ack with [`AckMode::Confirmed`]) |
//! | transient error or panic, attempts left  | failed run recorded, Nak with the [`RetryPolicy`] delay |
//! | transient error on the last attempt      | dead letter, then Term                    |
//! | permanent error                          | dead letter, then Term                    |
//! | undecodable message or data              | dead letter, then Term (first delivery)   |
//! | type without handler                     | [`UnhandledPolicy`]: left for another instance (Nak, 250 ms to 5 s), or ack / dead letter after a set wait |
//! | still running at ack wait / 3            | in-progress ack (repeated)                |
//! | still running at the handler timeout     | cancelled; Nak with the [`RetryPolicy`] delay (`error.type=timeout`), dead letter on the last attempt |
//! | received, waiting for a free handler     | in-progress ack (repeated)                |
//! | waiting longer than the handler timeout  | Nak without delay (another instance takes it) |
//! | received but not started at shutdown     | Nak without delay                         |
//! | still running when shutdown grace ends   | Nak without delay (another instance takes it) |
//! | never settled by the last delivery (the client could not read it, every attempt crashed the instance) | dead letter `undeliverable`, copied from the stream when the server reports max deliveries |
//!
//! Retry is decided before poison handling: an event is dead-lettered only when
//! retrying cannot help or the attempts are used up. A retry is never a loop
//! inside the consumer: the Nak asks the server to redeliver later, and the
//! consumer handles other events meanwhile.
//!
//! If dead-lettering fails (dead-letter stream unavailable) the event is Naked
//! with the retry delay instead of terminated, so it is not lost.
//!
//! An ack, Nak, Term, in-progress ack or dead-letter copy that fails is
//! logged at `WARN` with the group and the event's stream sequence, and
//! counted in `jetevents.consume.settle_failures` (attribute `operation`:
//! `ack`, `nak`, `term`, `progress` or `dead_letter`).

mod attempts;
mod context;
pub mod dead_letter;
mod ephemeral;
mod group_filter;
mod handler;
mod retry;
mod router;
mod runner;
mod undeliverable;

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};

use crate::client::Client;
use crate::envelope::Envelope;
use crate::error::Error;
use crate::event::Event;

pub use attempts::BUCKET as ATTEMPTS_BUCKET;
pub use context::Context;
pub use dead_letter::{
    DeadLetter, DeadLetterConfig, DeadLetterError, DeadLetterErrorKind, DeadLetterReason,
    DeadLetters, Redriven,
};
pub use ephemeral::{EphemeralBuilder, EphemeralConsumer};
pub use handler::{HandlerError, HandlerErrorKind, HandlerOptions, ResultExt};
pub use retry::RetryPolicy;

use router::Router;

/// What an instance does with an event of a type it has no handler for.
///
/// Such events reach an instance when the group's filter is wider than its
/// own handlers: during a rolling deploy a newer version of the service
/// asked for one more type (see the [group filter](self#rolling-deploys)),
/// a pattern or extra filter subject matched, or a handler was removed.
/// Another instance of the group may well handle it, so by default it is
/// left for one: Naked with a delay that grows with its deliveries (250 ms,
/// 500 ms, 1 s... up to 5 s), counted in `jetevents.consume.unhandled` and
/// never against the event's attempts.
///
/// Acking or dead-lettering such events is a deliberate choice, made after a
/// wait long enough for a rolling deploy: the wait counts the delays the
/// event has been left for (its first delivery to the group counts as zero),
/// so `AckAfter(Duration::ZERO)` acks at once.
///
/// An event left for others still uses deliveries: the consumer's
/// `max_deliver` (default: the retry policy's attempts plus
/// [`DELIVERY_MARGIN`]) bounds how long it waits; at that bound the server
/// gives up and the event is dead-lettered `undeliverable`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnhandledPolicy {
    /// Leave it for an instance that handles it (default).
    #[default]
    Leave,
    /// Ack it once it has been left for others this long: this group is
    /// not interested.
    AckAfter(Duration),
    /// Dead-letter it with reason `unhandled` once it has been left for
    /// others this long.
    DeadLetterAfter(Duration),
}

/// Deliveries the server allows beyond the retry policy's attempts by
/// default: deliveries that were not failed handler runs (shutdowns, lost
/// connections, events left for another version) use them, not attempts.
pub const DELIVERY_MARGIN: i64 = 100;

/// How a handled event is acked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum AckMode {
    /// Send the ack and move on (default). A lost ack means a redelivery.
    #[default]
    Ack,
    /// Wait for the server to confirm the ack (double ack). Use it with
    /// handlers whose side effects must happen at most once: an unconfirmed
    /// ack is reported on the span instead of silently ignored.
    Confirmed,
}

/// The server-side backoff of the durable consumer: how long the server
/// waits before redelivering an event that was neither acked nor Naked (the
/// instance crashed or lost its connection).
///
/// Off by default, because a backoff also lengthens every Nak delay:
/// nats-server (2.15.1, measured by `tests/consume_deployments.rs`'s rolling
/// deploy before this default changed) times a Naked event against the
/// backoff entry of its delivery instead of the ack wait, so a Nak asking
/// for `d` after delivery `n` comes back after `d + backoff[n] - ack_wait`.
/// With the derived backoff and the default retry policy that roughly
/// doubled every retry delay.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum ServerBackoff {
    /// From the retry policy: [`RetryPolicy::server_backoff`]. Nak delays
    /// grow by the difference between an entry and the ack wait (see above).
    Derived,
    /// None (default): a delivery that is neither acked nor Naked comes back
    /// after the ack wait.
    #[default]
    Off,
    /// These delays, one per delivery (the last repeats).
    Custom(Vec<Duration>),
}

/// What went wrong building or running a consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConsumeErrorKind {
    /// The builder's settings are inconsistent (no handlers, an invalid group
    /// name or event type, an upcast without a handler for its target, ...).
    InvalidConfig(String),
    /// The event stream does not exist (or no stream captures the filters).
    StreamNotFound(String),
    /// The dead-letter stream could not be created.
    DeadLetterStream,
    /// The durable consumer could not be created or updated (e.g. a setting
    /// the server cannot change on an existing consumer).
    CreateConsumer,
    /// The connection's user may not make a JetStream API request the
    /// consumer needs (the server refused `subject`).
    PermissionDenied {
        /// The refused API subject.
        subject: String,
    },
    /// Subscribing failed: an ephemeral consumer's queue subscription, or the
    /// durable runner's reply inbox (the connection is closed).
    Subscribe,
    /// The server did not answer (disconnected, timeout, JetStream not
    /// ready). The runner retries this itself; only `build` returns it.
    Unavailable,
}

impl std::fmt::Display for ConsumeErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InvalidConfig(reason) => write!(f, "invalid consumer configuration: {reason}"),
            Self::StreamNotFound(stream) => write!(f, "stream not found: {stream}"),
            Self::DeadLetterStream => f.write_str("dead-letter stream could not be created"),
            Self::CreateConsumer => f.write_str("durable consumer could not be created"),
            Self::PermissionDenied { subject } => write!(f, "permission denied for {subject}"),
            Self::Subscribe => f.write_str("subscribe failed"),
            Self::Unavailable => f.write_str("server unavailable"),
        }
    }
}

/// Error of building or running a consumer.
pub type ConsumeError = Error<ConsumeErrorKind>;

/// Prefetch without [`ConsumerBuilder::prefetch`]: twice the concurrency,
/// within these bounds.
const DEFAULT_MIN_PREFETCH: usize = 256;
const DEFAULT_MAX_PREFETCH: usize = 512;

/// Handler timeout without [`ConsumerBuilder::handler_timeout`]: long enough
/// for any handler that is working (a slow API, a large batch), short enough
/// that a hung one does not hold its event, and those prefetched behind it,
/// for hours.
const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Settings shared by the builder, the consumer and the runner.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub retry: RetryPolicy,
    pub concurrency: usize,
    pub dead_letter: DeadLetterConfig,
    pub unhandled: UnhandledPolicy,
    pub ack_mode: AckMode,
    pub ack_wait: Duration,
    pub max_ack_pending: Option<i64>,
    pub max_deliver: Option<i64>,
    pub server_backoff: ServerBackoff,
    pub shutdown_grace: Duration,
    pub handler_timeout: Duration,
    pub pull_expiry: Duration,
    pub prefetch: Option<usize>,
    pub deliver_policy: DeliverPolicy,
    pub extra_filters: Vec<String>,
    pub replace_group_filter: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            concurrency: 8,
            dead_letter: DeadLetterConfig::default(),
            unhandled: UnhandledPolicy::default(),
            ack_mode: AckMode::default(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: None,
            max_deliver: None,
            server_backoff: ServerBackoff::default(),
            shutdown_grace: Duration::from_secs(10),
            handler_timeout: DEFAULT_HANDLER_TIMEOUT,
            pull_expiry: Duration::from_secs(10),
            prefetch: None,
            deliver_policy: DeliverPolicy::All,
            extra_filters: Vec::new(),
            replace_group_filter: false,
        }
    }
}

impl Settings {
    fn max_deliver(&self) -> i64 {
        // Attempts are failed handler runs, counted by the runner; the
        // server's bound sits above them, for deliveries that were not
        // attempts and for events that never get settled (an instance that
        // crashes on every run), which the undeliverable watcher then
        // dead-letters.
        self.max_deliver.unwrap_or_else(|| {
            i64::from(self.retry.attempts())
                .saturating_add(1)
                .saturating_add(DELIVERY_MARGIN)
        })
    }

    fn backoff(&self) -> Vec<Duration> {
        let mut backoff = match &self.server_backoff {
            ServerBackoff::Derived => self.retry.server_backoff(self.ack_wait),
            ServerBackoff::Off => Vec::new(),
            ServerBackoff::Custom(delays) => delays.clone(),
        };
        // The server requires max_deliver > number of backoff entries.
        let max_deliver = self.max_deliver();
        if max_deliver > 0 {
            backoff.truncate(usize::try_from(max_deliver - 1).unwrap_or(0));
        }
        backoff
    }

    /// Events the runner keeps requested or received beyond its running
    /// handlers: enough to hide the pull round trip, few enough that none
    /// waits long (waiting ones get in-progress acks all the same).
    pub(crate) fn prefetch(&self) -> usize {
        self.prefetch
            .unwrap_or_else(|| {
                (2 * self.concurrency).clamp(DEFAULT_MIN_PREFETCH, DEFAULT_MAX_PREFETCH)
            })
            .max(1)
    }

    /// The longest the server waits before redelivering an unacked event:
    /// the ack wait, or the longest backoff entry.
    pub(crate) fn redelivery_period(&self) -> Duration {
        self.backoff()
            .into_iter()
            .chain(std::iter::once(self.ack_wait))
            .max()
            .unwrap_or(self.ack_wait)
    }

    /// How often a running handler's event gets an in-progress ack: a third
    /// of the shortest time the server waits for an ack.
    pub(crate) fn progress_interval(&self) -> Duration {
        let shortest = self
            .backoff()
            .into_iter()
            .chain(std::iter::once(self.ack_wait))
            .min()
            .unwrap_or(self.ack_wait);
        (shortest / 3).max(Duration::from_millis(10))
    }
}

/// Namespace of the durable consumer runtime: start with
/// [`Consumer::builder`].
pub struct Consumer<S = ()> {
    client: Client,
    group: String,
    stream: String,
    filters: Vec<String>,
    router: Router<S>,
    state: S,
    settings: Settings,
    consumer: async_nats::jetstream::consumer::PullConsumer,
    /// Subjects of the group's filter this instance does not handle, as
    /// last reported.
    drift: Vec<String>,
    /// The stream's replicas: the attempts bucket gets as many.
    replicas: usize,
}

impl<S> std::fmt::Debug for Consumer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("group", &self.group)
            .field("stream", &self.stream)
            .field("filters", &self.filters)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Consumer<()> {
    /// A consumer of `group`: the durable name shared by every instance of one
    /// service (letters, digits, `-` and `_`).
    pub fn builder(client: &Client, group: impl Into<String>) -> ConsumerBuilder<()> {
        ConsumerBuilder {
            client: client.clone(),
            group: group.into(),
            stream: None,
            router: Router::default(),
            state: (),
            settings: Settings::default(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Consumer<S> {
    /// The group (durable consumer name).
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The stream consumed.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// This instance's filter subjects (the group's may be wider: see the
    /// [group filter](self#rolling-deploys)).
    pub fn filter_subjects(&self) -> &[String] {
        &self.filters
    }

    /// Runs until `signal` completes, then shuts down gracefully: stops
    /// fetching, lets in-flight handlers finish within the shutdown grace,
    /// Naks (without delay) the events of handlers still running after it so
    /// another instance takes them, and flushes.
    ///
    /// Events the server had sent but the runner had not started when the
    /// signal came are Naked without delay at once, so another instance
    /// takes them without waiting for the ack wait (a Nak the client cannot
    /// send within the shutdown grace is reported, and the event comes back
    /// after the ack wait).
    ///
    /// ```no_run
    /// # async fn f(consumer: jetevents::consume::Consumer) -> Result<(), jetevents::consume::ConsumeError> {
    /// // Any future works as the signal: a oneshot, a `CancellationToken`'s
    /// // `cancelled_owned()`, `tokio::signal::ctrl_c()`...
    /// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    /// let runner = tokio::spawn(consumer.run_until(async move {
    ///     let _ = stopped.await;
    /// }));
    /// // ... later:
    /// let _ = stop.send(());
    /// runner.await.expect("runner panicked")?;
    /// # Ok(()) }
    /// ```
    ///
    /// Handlers still running after the grace are cancelled (their futures
    /// dropped) once their events are Naked.
    ///
    /// Returns an error only when consuming cannot go on: the stream was
    /// deleted, or the durable consumer cannot be recreated with this
    /// configuration. Lost connections, server restarts and a deleted durable
    /// consumer are recovered from (with `WARN` events on the way): the runner
    /// never stalls silently.
    pub async fn run_until<F>(self, signal: F) -> Result<(), ConsumeError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        runner::run(self, signal).await
    }

    /// Runs until Ctrl-C or SIGTERM ([`shutdown_signal`]).
    pub async fn run(self) -> Result<(), ConsumeError> {
        self.run_until(shutdown_signal()).await
    }
}

/// Completes on Ctrl-C, or SIGTERM on Unix: the usual signal to pass to
/// [`Consumer::run_until`].
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

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
    /// State every handler gets through [`Context::state`] (a database pool,
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

    /// Routes events of type `E::TYPE` to `handler`, a plain
    /// `async fn(E, Context<S>) -> Result<(), HandlerError>`.
    pub fn handle<E, F, Fut>(mut self, handler: F) -> Self
    where
        E: Event,
        F: Fn(E, Context<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.router
            .handle::<E, F, Fut>(handler, HandlerOptions::default());
        self
    }

    /// Like [`handle`](Self::handle), with settings of this route that
    /// override the consumer's (a longer or shorter timeout).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use jetevents::consume::{Consumer, Context, HandlerError, HandlerOptions};
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)] struct Placed { id: String }
    /// # impl jetevents::Event for Placed { const TYPE: &'static str = "shop.order.placed.v1"; }
    /// # #[derive(Serialize, Deserialize)] struct Closed { day: String }
    /// # impl jetevents::Event for Closed { const TYPE: &'static str = "shop.day.closed.v1"; }
    ///
    /// async fn on_placed(_: Placed, _: Context) -> Result<(), HandlerError> { Ok(()) }
    /// async fn build_daily_report(_: Closed, _: Context) -> Result<(), HandlerError> { Ok(()) }
    ///
    /// # fn f(client: jetevents::client::Client) {
    /// let builder = Consumer::builder(&client, "shop-reports")
    ///     .handler_timeout(Duration::from_secs(30))
    ///     .handle(on_placed)
    ///     .handle_with(
    ///         build_daily_report,
    ///         HandlerOptions::new().timeout(Duration::from_secs(20 * 60)),
    ///     );
    /// # }
    /// ```
    pub fn handle_with<E, F, Fut>(mut self, handler: F, options: HandlerOptions) -> Self
    where
        E: Event,
        F: Fn(E, Context<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.router.handle::<E, F, Fut>(handler, options);
        self
    }

    /// Accepts events of an older version `Old` too: they are converted with
    /// `upcast` and handled by the handler of `New` (which must be added with
    /// [`handle`](Self::handle), before or after).
    ///
    /// ```no_run
    /// use jetevents::consume::{Consumer, Context, HandlerError};
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct BookedV1 { id: String }
    /// impl jetevents::Event for BookedV1 { const TYPE: &'static str = "booking.appointment.booked.v1"; }
    /// #[derive(Serialize, Deserialize)]
    /// struct BookedV2 { id: String, channel: String }
    /// impl jetevents::Event for BookedV2 { const TYPE: &'static str = "booking.appointment.booked.v2"; }
    ///
    /// async fn on_booked(event: BookedV2, _: Context) -> Result<(), HandlerError> { Ok(()) }
    ///
    /// # fn f(client: jetevents::client::Client) {
    /// let builder = Consumer::builder(&client, "calendar")
    ///     .handle(on_booked)
    ///     .upcast(|old: BookedV1| BookedV2 { id: old.id, channel: "unknown".into() });
    /// # }
    /// ```
    pub fn upcast<Old, New, F>(mut self, upcast: F) -> Self
    where
        Old: Event,
        New: Event,
        F: Fn(Old) -> New + Send + Sync + 'static,
    {
        self.router.upcast::<Old, New, F>(upcast);
        self
    }

    /// Routes every event whose type matches `pattern` (a glob over the four
    /// type tokens: `booking.appointment.*`, `booking.>`) and has no typed
    /// handler to `handler`, which gets the raw [`Envelope`].
    pub fn handle_pattern<F, Fut>(mut self, pattern: &str, handler: F) -> Self
    where
        F: Fn(Envelope, Context<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.router
            .handle_pattern(pattern, handler, HandlerOptions::default());
        self
    }

    /// Like [`handle_pattern`](Self::handle_pattern), with settings of this
    /// route that override the consumer's.
    pub fn handle_pattern_with<F, Fut>(
        mut self,
        pattern: &str,
        handler: F,
        options: HandlerOptions,
    ) -> Self
    where
        F: Fn(Envelope, Context<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.router.handle_pattern(pattern, handler, options);
        self
    }

    /// An additional filter subject (beyond those derived from the handlers).
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.settings.extra_filters.push(subject.into());
        self
    }

    /// Attempts and delays for transient failures.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.settings.retry = policy;
        self
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
    /// [group filter](self#rolling-deploys)). Use it once every instance of
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
        let invalid = |reason: String| Error::new(ConsumeErrorKind::InvalidConfig(reason));
        crate::subject::validate_token(&self.group)
            .map_err(|err| invalid(format!("group {:?}: {err}", self.group)))?;
        let subjects = self.client.subjects();
        self.router.validate(subjects).map_err(invalid)?;
        let mut filters = self.router.filters(subjects);
        filters.extend(self.settings.extra_filters.iter().cloned());
        let filters = router::minimal_filters(filters);

        let jetstream = self.client.jetstream();
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
        let ensured = group_filter(&self.group, &filters, &self.settings)
            .ensure(&stream)
            .await?;
        let drift = group_filter::report_drift(
            &self.group,
            &filters,
            ensured.drift,
            &[],
            &self.client.metrics().filter_drift,
        );
        let consumer = ensured.consumer;
        Ok(Consumer {
            drift,
            replicas: stream.cached_info().config.num_replicas,
            client: self.client,
            group: self.group,
            stream: stream_name,
            filters,
            router: self.router,
            state: self.state,
            settings: self.settings,
            consumer,
        })
    }
}

/// What this instance wants of the group's durable consumer.
pub(crate) fn group_filter(
    group: &str,
    filters: &[String],
    settings: &Settings,
) -> group_filter::GroupFilter {
    group_filter::GroupFilter {
        config: consumer_config(group, filters, settings),
        mine: filters.to_vec(),
        replace: settings.replace_group_filter,
    }
}

/// The durable consumer's configuration with this instance's filters.
pub(crate) fn consumer_config(
    group: &str,
    filters: &[String],
    settings: &Settings,
) -> pull::Config {
    let mut config = pull::Config {
        durable_name: Some(group.to_owned()),
        description: Some(format!("jetevents consumer group {group}")),
        deliver_policy: settings.deliver_policy,
        ack_policy: AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_deliver: settings.max_deliver(),
        max_ack_pending: settings.max_ack_pending.unwrap_or_default(),
        backoff: settings.backoff(),
        ..Default::default()
    };
    group_filter::set_filters(&mut config, filters);
    config
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn consumer_config_follows_the_retry_policy() {
        let settings = Settings {
            retry: RetryPolicy::fixed(Duration::from_secs(2)).max_attempts(3),
            ack_wait: Duration::from_secs(9),
            server_backoff: ServerBackoff::Derived,
            ..Settings::default()
        };
        assert!(Settings::default().backoff().is_empty());
        let config = consumer_config("billing", &["dev.a.b.c.v1".into()], &settings);
        assert_eq!(config.durable_name.as_deref(), Some("billing"));
        assert_eq!(config.max_deliver, 4 + DELIVERY_MARGIN);
        assert_eq!(config.backoff, vec![Duration::from_secs(11); 3]);
        assert_eq!(config.filter_subject, "dev.a.b.c.v1");
        assert!(config.filter_subjects.is_empty());
        assert_eq!(settings.progress_interval(), Duration::from_secs(3));

        let config = consumer_config("billing", &["x.a".into(), "x.b".into()], &settings);
        assert_eq!(config.filter_subject, "");
        assert_eq!(config.filter_subjects.len(), 2);
    }

    #[test]
    fn prefetch_and_redelivery_period_follow_the_settings() {
        let defaults = Settings::default();
        assert_eq!(defaults.prefetch(), 256);
        let wide = Settings {
            concurrency: 400,
            ..Settings::default()
        };
        assert_eq!(wide.prefetch(), 512);
        let chosen = Settings {
            prefetch: Some(2),
            ..Settings::default()
        };
        assert_eq!(chosen.prefetch(), 2);
        // The longest backoff entry when it exceeds the ack wait.
        let settings = Settings {
            retry: RetryPolicy::fixed(Duration::from_secs(2)).max_attempts(3),
            ack_wait: Duration::from_secs(9),
            server_backoff: ServerBackoff::Derived,
            ..Settings::default()
        };
        assert_eq!(settings.redelivery_period(), Duration::from_secs(11));
        let off = Settings {
            server_backoff: ServerBackoff::Off,
            ack_wait: Duration::from_secs(9),
            ..Settings::default()
        };
        assert_eq!(off.redelivery_period(), Duration::from_secs(9));
    }

    #[test]
    fn backoff_fits_a_lower_max_deliver() {
        let settings = Settings {
            max_deliver: Some(2),
            server_backoff: ServerBackoff::Custom(vec![Duration::from_millis(30); 5]),
            ..Settings::default()
        };
        assert_eq!(settings.backoff(), vec![Duration::from_millis(30)]);
        assert_eq!(settings.progress_interval(), Duration::from_millis(10));
        let off = Settings {
            server_backoff: ServerBackoff::Off,
            ..Settings::default()
        };
        assert!(off.backoff().is_empty());
        assert_eq!(off.progress_interval(), Duration::from_secs(10));
    }
}
