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
//! # Middleware
//!
//! A delivery goes through a stack of tower layers to the router and comes
//! back as an [`Outcome`]; the runner settles it. The request is a
//! [`Delivery`], the error [`BoxError`], so any tower layer composes
//! (`tower::timeout`, `tower::limit`, yours). The consumer's own concerns
//! come in this order, outermost first (as in axum's docs, a layer above
//! wraps the ones below):
//!
//! | # | layer | what it does |
//! |---|-------|--------------|
//! | 1 | trace | the `process` span, continuing the producer's trace; in the runner's entry function, since it needs the decoded envelope |
//! | 2 | dead letter / settle | ack, Nak with a delay, or copy to the dead-letter stream and Term (the table below) |
//! | 3 | retry decision | attempts so far (shared by the group), the [`RetryPolicy`] delay or the one asked for, dead letter after the last attempt; before the call: an event whose attempts are used up is dead-lettered without a run |
//! | 4 | metrics | handler duration and in-flight gauge, by `error.type` |
//! | 5 | timeout | the [handler timeout](ConsumerBuilder::handler_timeout) of the route |
//! | 6 | progress acks, shutdown | in-progress acks while the call runs; shutdown cancels it |
//! | 7 | catch panic | a panic anywhere below is a failed run |
//! | 8 | lineage | follow-ups published by the handler get ids derived from this event |
//! | 9 | [`ConsumerBuilder::layer`] | yours, for every route (the last added runs first) |
//! | 10 | router | finds the route by CloudEvents type |
//! | 11 | [`ConsumerBuilder::route_layer`] | yours, for one route (and the types upcast to it) |
//! | 12 | handler | decodes the event (undecodable: dead letter) and calls it; its return value becomes an [`Outcome`] |
//!
//! Your layers sit inside the timeout and the progress acks, so one that
//! waits (a rate limit, a concurrency limit) neither lets the event's ack
//! wait run out nor escapes the timeout, and inside the panic catching.
//! A [`CircuitBreaker`] holding a delivery stops its timeout: held is not
//! running (see [`breaker`]). Types no instance route handles never reach
//! them ([`UnhandledPolicy`]).
//! Layers 1 to 8 are one generic future in the runner, not boxed services:
//! a delivery with no layers of yours costs one boxed future. The
//! [`EphemeralConsumer`] runs the same stack from the panic catching in
//! (no settling, retry, timeout or progress acks: its events are not stored).
//!
//! ```no_run
//! use std::time::Duration;
//! use jetevents::consume::{Consumer, Context, HandlerError};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Paid;
//! # impl jetevents::Event for Paid { const TYPE: &'static str = "billing.invoice.paid.v1"; }
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Refunded;
//! # impl jetevents::Event for Refunded { const TYPE: &'static str = "billing.invoice.refunded.v1"; }
//! # async fn on_paid(_: Paid, _: Context) -> Result<(), HandlerError> { Ok(()) }
//! # async fn on_refunded(_: Refunded, _: Context) -> Result<(), HandlerError> { Ok(()) }
//! # fn f(client: jetevents::client::Client) {
//! let builder = Consumer::builder(&client, "ledger")
//!     .handle(on_paid)
//!     // The refund API allows 2 calls at once: this route only.
//!     .handle(on_refunded)
//!     .route_layer(tower::limit::ConcurrencyLimitLayer::new(2))
//!     // Every route.
//!     .layer(tower::timeout::TimeoutLayer::new(Duration::from_secs(5)));
//! # }
//! ```
//!
//! # Priorities and circuit breaking
//!
//! - Some event types first: give them their own consumer (their own
//!   group, filter and concurrency); a consumer takes its events in stream
//!   order and cannot move one ahead of its backlog.
//! - Which instances consume: [`priority`] groups (overflow standby pools,
//!   prioritized levels), [`ConsumerBuilder::priority`].
//! - A downstream that is down: a [`CircuitBreaker`] holds the deliveries
//!   instead of spending their attempts, [`ConsumerBuilder::circuit_breaker`].
//!
//! # Acking (the runner owns it)
//!
//! A handler returns `Result<(), HandlerError>`, `()` or an [`Outcome`]
//! ([`IntoOutcome`]); a layer's error counts as a transient error (a
//! [`HandlerError`] in it keeps its kind).
//!
//! | handler result / situation               | settle                                    |
//! |------------------------------------------|-------------------------------------------|
//! | `Ok(())`, `()`, [`Outcome::ack`]         | ack (double ack with [`AckMode::Confirmed`]) |
//! | transient error, [`Outcome::retry`], an error out of a layer, or a panic (handler or layer), attempts left | failed run recorded, Nak with the [`RetryPolicy`] delay |
//! | [`Outcome::retry_after`] or [`HandlerError::retry_after`], attempts left | failed run recorded, Nak with the delay asked for |
//! | transient error on the last attempt      | dead letter, then Term                    |
//! | permanent error, [`Outcome::dead_letter`] | dead letter, then Term                   |
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

#[macro_use]
mod route_methods;

mod attempts;
pub mod breaker;
mod builder;
mod context;
pub mod dead_letter;
mod ephemeral;
mod error;
mod group_filter;
mod handler;
pub(crate) mod metrics;
mod outcome;
pub mod partitioned;
mod policy;
pub mod priority;
mod retry;
mod router;
mod runner;
mod settings;
mod settle_report;
pub(crate) mod stack;
mod undeliverable;

use std::future::Future;

use crate::client::Client;

pub use attempts::BUCKET as ATTEMPTS_BUCKET;
pub use breaker::{
    BreakerConfig, BreakerState, BreakerWindow, CircuitBreaker, CircuitBreakerLayer,
    CircuitBreakerService,
};
pub use builder::ConsumerBuilder;
pub use context::Context;
pub use dead_letter::{
    DeadLetter, DeadLetterConfig, DeadLetterError, DeadLetterErrorKind, DeadLetterReason,
    DeadLetters, Redriven,
};
pub use ephemeral::{EphemeralBuilder, EphemeralConsumer};
pub use error::{ConsumeError, ConsumeErrorKind};
pub use handler::{HandlerError, HandlerErrorKind, HandlerOptions, ResultExt};
pub use outcome::{IntoOutcome, Outcome};
pub use policy::{AckMode, ServerBackoff, UnhandledPolicy, DELIVERY_MARGIN};
pub use priority::Priority;
pub use retry::RetryPolicy;
pub use stack::{BoxError, Delivery, HandlerLayer, HandlerService};

use settings::Settings;
use stack::Handlers;

/// Namespace of the durable consumer runtime: start with
/// [`Consumer::builder`].
pub struct Consumer<S = ()> {
    client: Client,
    group: String,
    stream: String,
    filters: Vec<String>,
    handlers: Handlers<S>,
    state: S,
    settings: Settings,
    source: Source,
}

/// Where a consumer's deliveries come from.
enum Source {
    Nats {
        consumer: Box<async_nats::jetstream::consumer::PullConsumer>,
        /// Subjects of the group's filter this instance does not handle, as
        /// last reported.
        drift: Vec<String>,
        /// The stream's replicas: the attempts bucket gets as many.
        replicas: usize,
    },
    /// The durable consumer of the same name on the in-memory JetStream.
    #[cfg(feature = "testing")]
    Memory(crate::testing::MemoryJetStream),
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
        ConsumerBuilder::new(client, group.into())
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
