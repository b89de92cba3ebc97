//! Typed request-reply on the NATS services framework.
//!
//! A service has a name and a version and serves endpoints; every instance
//! started with the same name joins one queue group per endpoint, so each
//! request is answered by one instance. The server-side protocol is the NATS
//! micro-services one (async-nats `service`): `$SRV.PING`, `$SRV.INFO` and
//! `$SRV.STATS` discover the instances, their endpoints (with the JSON Schema
//! of request and response in each endpoint's metadata) and their request and
//! error counts.
//!
//! An endpoint is a plain `async fn(Req, Context<S>) -> Result<Resp, E>` where
//! `Req` and `Resp` are [`Event`](crate::Event)s and `E` converts into an
//! [`EndpointError`] (a code and a message). One endpoint per request type:
//! its subject is `rpc.{env}.{request type}` (outside the `{env}.` subjects
//! streams capture, so no stream stores a request and acks it in the
//! endpoint's place).
//!
//! On the wire, request and response are binary-mode CloudEvents carrying
//! the attributes a call needs: the four CloudEvents requires, `dataschema`
//! and `partitionkey` when the type has them, the lineage and the trace
//! context; not the optional `time` and `datacontenttype` (the data is JSON,
//! which is what no content type means), as every header costs both sides
//! CPU. The caller's trace context travels in the request and the endpoint's
//! span continues it, so one trace runs from the caller through the endpoint
//! to the events it publishes. The caller's time budget travels in the
//! `Jetevents-Request-Timeout` header; the endpoint sees it as
//! [`Context::deadline`] and stops working when it passes.
//!
//! Each request goes through the endpoint's stack, outermost first: the
//! `process` span (continuing the caller's trace), the metrics
//! (`messaging.process.duration`), the lineage (follow-ups are caused by the
//! request), the timeout (the caller's deadline or the endpoint's own,
//! whichever comes first: 504), the panic catch (500), the user's layers
//! ([`ServiceBuilder::layer`], any tower layer over [`EndpointRequest`]s;
//! a layer's [`EndpointError`] answers the caller with its code, any other
//! error with 500), the handler.
//!
//! ```no_run
//! use jetevents::service::{Context, EndpointError};
//! # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! # struct QuoteRequested { sku: String }
//! # impl jetevents::Event for QuoteRequested { const TYPE: &'static str = "pricing.quote.requested.v1"; }
//! # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
//! # struct QuoteGiven { cents: u64 }
//! # impl jetevents::Event for QuoteGiven { const TYPE: &'static str = "pricing.quote.given.v1"; }
//!
//! async fn quote(request: QuoteRequested, _: Context) -> Result<QuoteGiven, EndpointError> {
//!     match request.sku.as_str() {
//!         "" => Err(EndpointError::new(400, "empty sku")),
//!         _ => Ok(QuoteGiven { cents: 1250 }),
//!     }
//! }
//!
//! # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! let service = client.service("pricing", "1.0.0").endpoint(quote).start().await?;
//! let answer: QuoteGiven = client.call(&QuoteRequested { sku: "A-1".into() }).await?;
//! assert_eq!(answer.cents, 1250);
//! service.stop().await;
//! # Ok(()) }
//! ```

mod builder;
mod caller;
mod cloudevent;
mod context;
mod endpoint_error;
mod error;
mod handler;
mod running;
mod schema;
mod serve;
mod stack;
mod wire;

pub use builder::{ServiceBuilder, DEFAULT_ENDPOINT_TIMEOUT, DEFAULT_MAX_IN_FLIGHT};
pub use caller::{Caller, DEFAULT_CALL_TIMEOUT};
pub use context::Context;
pub use endpoint_error::EndpointError;
pub use error::{CallError, CallErrorKind, StartError, StartErrorKind};
pub use running::RunningService;
pub use schema::{REQUEST_SCHEMA, REQUEST_TYPE, RESPONSE_SCHEMA, RESPONSE_TYPE};
pub use stack::{BoxError, EndpointLayer, EndpointRequest, EndpointService};
pub use wire::{endpoint_subject, REQUEST_TIMEOUT_HEADER};
