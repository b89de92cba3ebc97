//! # jetevents-gateway
//!
//! CloudEvents from a NATS JetStream stream to browsers, over Server-Sent
//! Events (`GET /events`) and WebSocket (`GET /ws`), as an axum [`Router`] to
//! mount in a service or as the `jetevents-gateway` binary.
//!
//! - **Filters**: `?types=a.b.c.v1,d.e.f.v1`, `?pattern=booking.>` (a glob over
//!   the type tokens), `?key=42`, within what the token grants.
//! - **Ids are positions**: `{stream}.{stream creation epoch}.{sequence}`
//!   ([`Position`]). A client reconnecting with `Last-Event-ID` (SSE) or
//!   `?resume=<id>` gets exactly the events it missed, then live ones. When
//!   that history is gone (limits, purge) or the stream was recreated, it gets
//!   a `reset` event (whose id is the new resume point) instead of a gap.
//! - **Authorization**: bearer JWT (HS256, RS256, EdDSA; [`KeySet`]), or the
//!   `jetevents_token` cookie, or `?token=` for `EventSource`. A bad token is
//!   401, a filter outside the grants 403, too many connections 429. A token
//!   that expires mid-stream ends it with `end` / `token-expired`.
//! - **Backpressure**: each connection has a bounded buffer
//!   ([`GatewayConfig::buffer`]); a client that cannot keep up gets `end` /
//!   `slow-consumer` and can resume. Heartbeats keep idle streams open;
//!   [`Gateway::shutdown`] ends every stream with `end` / `shutdown`.
//! - **Fan-out**: clients with the same filter share one live JetStream
//!   subscription; catch-up reads are per client and ordered.
//!
//! ```no_run
//! # async fn f(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
//! use jetevents_gateway::{Gateway, GatewayConfig, KeySet};
//! let keys = KeySet::new().with_hs256(None, b"a long random secret".to_vec());
//! let gateway = Gateway::new(&client, keys, GatewayConfig::new("ORDERS")).await?;
//! let app = axum::Router::new().nest("/live", gateway.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! let shutdown = gateway.clone();
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async move { shutdown.shutdown() })
//!     .await?;
//! # Ok(()) }
//! ```

mod auth;
mod event;
mod filter;
mod http;
mod hub;
mod limits;
mod metrics;
mod position;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use jetevents::subject::Subjects;
use tokio::sync::watch;

pub use auth::{AuthError, Claims, InvalidKeySet, KeySet, TOKEN_COOKIE};
pub use filter::{Filter, FilterError, Grants};
pub use metrics::{GatewayMetrics, SCOPE};
pub use position::{InvalidPosition, Position};

/// The example page: live events, reconnecting on its own (`static/index.html`).
pub const EXAMPLE_PAGE: &str = include_str!("../static/index.html");

/// How a gateway serves its stream.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct GatewayConfig {
    /// The JetStream stream clients read.
    pub stream: String,
    /// Frames buffered per connection before the client counts as slow.
    pub buffer: usize,
    /// Events a live subscription keeps for its slowest client before that
    /// client lags and is disconnected.
    pub live_capacity: usize,
    /// Interval of heartbeats (SSE comments, WebSocket pings).
    pub heartbeat: Duration,
    /// Open streams at most, in total.
    pub max_connections: usize,
    /// Open streams at most per token (`sub`, else the token itself).
    pub max_connections_per_token: usize,
}

impl GatewayConfig {
    /// Defaults for the stream `stream`: 256 frames per connection, 1,024 live
    /// events, heartbeats every 15 s, 10,000 connections, 8 per token.
    pub fn new(stream: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            buffer: 256,
            live_capacity: 1024,
            heartbeat: Duration::from_secs(15),
            max_connections: 10_000,
            max_connections_per_token: 8,
        }
    }
}

/// Why a gateway cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The client has no JetStream (an in-memory client).
    #[error("the client is not connected to NATS")]
    NotNats,
    /// The stream cannot be looked up.
    #[error("stream {stream}: {source}")]
    Stream {
        /// The configured stream.
        stream: String,
        /// The lookup error.
        source: async_nats::jetstream::context::GetStreamError,
    },
}

pub(crate) struct Inner {
    pub(crate) stream: async_nats::jetstream::stream::Stream,
    pub(crate) subjects: Subjects,
    pub(crate) config: GatewayConfig,
    pub(crate) keys: KeySet,
    pub(crate) hubs: hub::Hubs,
    pub(crate) limits: limits::Limits,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) shutdown: watch::Sender<bool>,
}

/// A gateway to one stream: cheap to clone, shared by its routes.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) inner: Arc<Inner>,
}

impl Gateway {
    /// A gateway to `config.stream` over `client`'s connection, with metrics on
    /// the client's meter configuration (the global provider by default).
    pub async fn new(
        client: &jetevents::client::Client,
        keys: KeySet,
        config: GatewayConfig,
    ) -> Result<Self, GatewayError> {
        Self::with_metrics(client, keys, config, GatewayMetrics::global()).await
    }

    /// As [`Gateway::new`], recording into `metrics`.
    pub async fn with_metrics(
        client: &jetevents::client::Client,
        keys: KeySet,
        config: GatewayConfig,
        metrics: GatewayMetrics,
    ) -> Result<Self, GatewayError> {
        let jetstream = client.jetstream().ok_or(GatewayError::NotNats)?;
        let stream = jetstream
            .get_stream(&config.stream)
            .await
            .map_err(|source| GatewayError::Stream {
                stream: config.stream.clone(),
                source,
            })?;
        let (shutdown, _) = watch::channel(false);
        Ok(Self {
            inner: Arc::new(Inner {
                hubs: hub::Hubs::new(stream.clone(), config.live_capacity),
                limits: limits::Limits::new(
                    config.max_connections,
                    config.max_connections_per_token,
                ),
                stream,
                subjects: client.subjects().clone(),
                config,
                keys,
                metrics,
                shutdown,
            }),
        })
    }

    /// The routes: `GET /events` (SSE) and `GET /ws` (WebSocket).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/events", get(http::sse))
            .route("/ws", get(http::websocket))
            .with_state(self.clone())
    }

    /// Ends every stream with an `end` event of reason `shutdown` (clients
    /// reconnect, to another instance or this one restarted) and refuses new
    /// ones with 503.
    pub fn shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// Resolves once [`Gateway::shutdown`] was called: the graceful-shutdown
    /// signal of the server the router is mounted in.
    pub async fn stopped(&self) {
        let mut shutdown = self.inner.shutdown.subscribe();
        let _ = shutdown.wait_for(|down| *down).await;
    }

    /// Live subscriptions open now: one per distinct filter, however many
    /// clients share it.
    pub fn live_subscriptions(&self) -> usize {
        self.inner.hubs.len()
    }
}
