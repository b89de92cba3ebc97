//! # jetevents
//!
//! Typed CloudEvents over NATS JetStream: a publisher that knows whether the
//! server stored each event, durable consumers shared by a service's instances,
//! typed handlers with Nak-based retry and dead-lettering, and W3C trace context
//! carried in every event.
//!
//! The pieces, one module each:
//! - [`event`]: the [`Event`] trait a serde type implements to be published;
//! - [`envelope`]: CloudEvents 1.0 attributes and extensions around the data;
//! - [`codec`]: the CloudEvents NATS protocol binding, binary and structured;
//! - [`subject`]: subject names and consumer filters built from validated tokens;
//! - [`backoff`]: the one schedule of delays every retry uses;
//! - [`config`] and [`client`]: connecting, from code or the environment;
//! - [`provision`]: declaring streams idempotently;
//! - [`lineage`]: the event a handler handles, the cause of what it publishes;
//! - [`claim_check`]: data too large for a message kept in an Object Store
//!   bucket, the event carrying a reference and a digest;
//! - [`publish`]: publishing with acks, dedup, optimistic concurrency, pipelining;
//! - [`consume`]: the consumer runtime;
//! - [`eventstore`]: event sourcing: aggregates appended atomically with an
//!   expected version, loaded from snapshots and their events;
//! - [`service`]: typed request-reply on the NATS services framework;
//! - [`trace`]: W3C trace context in and out of events;
//! - [`metrics`]: OpenTelemetry messaging metrics;
//! - [`nats`]: the async-nats types the API uses, and their version policy;
//! - [`permissions`]: the NATS permissions a service needs, from what it declares;
//! - `encryption` (feature `encryption`): envelope encryption of event data;
//! - `testing` (feature `testing`): an in-memory JetStream on tokio's clock
//!   for a service's own unit tests.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
pub mod claim_check;
pub mod client;
pub mod codec;
pub mod config;
pub mod consume;
#[cfg(feature = "encryption")]
#[cfg_attr(docsrs, doc(cfg(feature = "encryption")))]
pub mod encryption;
pub mod envelope;
pub mod error;
pub mod event;
pub mod eventstore;
pub mod lineage;
pub mod metrics;
pub mod nats;
pub mod permissions;
pub mod provision;
pub mod publish;
pub mod saga;
mod semconv;
pub mod service;
#[doc(hidden)]
pub mod span_fields;
mod stream_scan;
pub mod subject;
mod token;
pub mod trace;
mod transport;

#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;

pub use codec::{DecodeError, EncodeError, Encoding};
pub use envelope::{Envelope, ExtensionName, ExtensionValue, Extensions};
pub use error::{BoxError, Error};
pub use event::{Event, EventType};
pub use subject::{SubjectError, Subjects};
