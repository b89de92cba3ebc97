//! [`ServiceBuilder`]: declaring a service's endpoints and starting it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::ServiceExt;
use schemars::JsonSchema;

use crate::client::{Client, NeedsNats};
use crate::event::{Event, EventType};
use crate::Error;

use super::context::Context;
use super::endpoint_error::EndpointError;
use super::error::{StartError, StartErrorKind};
use super::handler::{erase, without_state, ErasedHandler};
use super::running::RunningService;
use super::schema::endpoint_metadata;
use super::serve::{answered_attributes, serve_endpoint, EndpointRuntime};
use super::stack::{EndpointLayer, EndpointLayerFn, Stack};
use super::wire::endpoint_subject;

/// How long a handler may run when the caller sent no shorter budget.
pub const DEFAULT_ENDPOINT_TIMEOUT: Duration = Duration::from_secs(30);

/// Handlers one endpoint of one instance runs at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// A service being declared: name, version, endpoints, state. See the
/// [module docs](super) for an example.
pub struct ServiceBuilder<S = ()> {
    client: Client,
    name: String,
    version: String,
    description: Option<String>,
    timeout: Duration,
    max_in_flight: usize,
    state: S,
    endpoints: Vec<EndpointSpec<S>>,
    layers: Vec<EndpointLayerFn<S>>,
    /// `with_state` came after `layer`: reported by `start`.
    layers_before_state: bool,
}

/// One endpoint as declared.
struct EndpointSpec<S> {
    request_type: &'static str,
    metadata: HashMap<String, String>,
    handler: ErasedHandler<S>,
}

/// Defined here rather than in [`client`](crate::client), so the client does
/// not import the services built on it.
impl Client {
    /// Declares the service `name` (`A-Z a-z 0-9 - _`) at `version`
    /// (semver). Every instance started with the same name shares its
    /// endpoints' requests.
    pub fn service(&self, name: impl Into<String>, version: impl Into<String>) -> ServiceBuilder {
        ServiceBuilder {
            client: self.clone(),
            name: name.into(),
            version: version.into(),
            description: None,
            timeout: DEFAULT_ENDPOINT_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            state: (),
            endpoints: Vec::new(),
            layers: Vec::new(),
            layers_before_state: false,
        }
    }
}

impl ServiceBuilder<()> {
    /// State every endpoint's [`Context::state`] gives (cloned per request).
    pub fn with_state<S2: Clone + Send + Sync + 'static>(self, state: S2) -> ServiceBuilder<S2> {
        ServiceBuilder {
            client: self.client,
            name: self.name,
            version: self.version,
            description: self.description,
            timeout: self.timeout,
            max_in_flight: self.max_in_flight,
            state,
            endpoints: self
                .endpoints
                .into_iter()
                .map(|endpoint| EndpointSpec {
                    request_type: endpoint.request_type,
                    metadata: endpoint.metadata,
                    handler: without_state(endpoint.handler),
                })
                .collect(),
            layers: Vec::new(),
            // Layers are typed by the state: they cannot follow it.
            layers_before_state: self.layers_before_state || !self.layers.is_empty(),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> ServiceBuilder<S> {
    /// A description discovery shows.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// The longest a handler may run; a caller's shorter budget wins. Past
    /// it the caller gets code 504. Default: [`DEFAULT_ENDPOINT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Handlers each endpoint runs at once on this instance; further
    /// requests wait (or go to another instance). Default:
    /// [`DEFAULT_MAX_IN_FLIGHT`].
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = max_in_flight.max(1);
        self
    }

    /// Serves requests of type `Req` with `handler`, answering `Resp`. The
    /// JSON Schemas of both go into the endpoint's metadata.
    pub fn endpoint<Req, Resp, E, F, Fut>(mut self, handler: F) -> Self
    where
        Req: Event + JsonSchema,
        Resp: Event + JsonSchema,
        E: Into<EndpointError>,
        F: Fn(Req, Context<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    {
        self.endpoints.push(EndpointSpec {
            request_type: Req::TYPE,
            metadata: endpoint_metadata::<Req, Resp>(),
            handler: erase(handler),
        });
        self
    }

    /// A tower layer around every endpoint of this service: its service
    /// takes an [`EndpointRequest`](super::EndpointRequest), gives the response envelope and fails
    /// with any error convertible to [`BoxError`](super::BoxError) (an
    /// [`EndpointError`] answers the caller with its code and message, any
    /// other error with 500). It runs inside the endpoint's own concerns
    /// (see the [module docs](super)): under the deadline, panics caught.
    ///
    /// As in axum, a layer added later wraps the ones added before (runs
    /// first). Add layers after `with_state`: they are typed by the state.
    ///
    /// ```no_run
    /// use jetevents::service::{Context, EndpointError};
    /// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// # struct QuoteRequested { sku: String }
    /// # impl jetevents::Event for QuoteRequested { const TYPE: &'static str = "pricing.quote.requested.v1"; }
    /// # #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    /// # struct QuoteGiven { cents: u64 }
    /// # impl jetevents::Event for QuoteGiven { const TYPE: &'static str = "pricing.quote.given.v1"; }
    /// # async fn quote(_: QuoteRequested, _: Context) -> Result<QuoteGiven, EndpointError> { Ok(QuoteGiven { cents: 1 }) }
    /// # async fn run(client: jetevents::client::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// // At most 8 quotes computed at once on this instance.
    /// let service = client
    ///     .service("pricing", "1.0.0")
    ///     .endpoint(quote)
    ///     .layer(tower::limit::ConcurrencyLimitLayer::new(8))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn layer<L: EndpointLayer<S>>(mut self, layer: L) -> Self {
        self.layers.push(layer.into_layer_fn());
        self
    }

    /// Registers the service and its endpoints with the server and serves
    /// them until [`RunningService::stop`] (or drop).
    pub async fn start(self) -> Result<RunningService, StartError> {
        let nats = self
            .client
            .nats()
            .ok_or_else(|| Error::with_source(StartErrorKind::NeedsNats, NeedsNats("a service")))?;
        if self.layers_before_state {
            return Err(Error::with_source(
                StartErrorKind::InvalidSpec,
                "`with_state` must come before `layer`",
            ));
        }
        let subjects = self.endpoint_subjects()?;
        let mut service = nats.service_builder();
        if let Some(description) = &self.description {
            service = service.description(description);
        }
        let service = service
            .start(&self.name, &self.version)
            .await
            .map_err(|err| {
                let invalid = err
                    .downcast_ref::<std::io::Error>()
                    .is_some_and(|err| err.kind() == std::io::ErrorKind::InvalidInput);
                let kind = if invalid {
                    StartErrorKind::InvalidSpec
                } else {
                    StartErrorKind::Subscribe
                };
                Error::with_source(kind, err)
            })?;
        let service_name: Arc<str> = self.name.as_str().into();
        let source: Arc<str> = self.client.config().source.as_str().into();
        let mut served = Vec::with_capacity(self.endpoints.len());
        for (endpoint, subject) in self.endpoints.into_iter().zip(subjects) {
            let added = service
                .endpoint_builder()
                .name(endpoint.request_type.replace('.', "-"))
                .metadata(endpoint.metadata)
                .add(subject)
                .await;
            let requests = match added {
                Ok(requests) => requests,
                Err(err) => {
                    let _ = service.stop().await;
                    return Err(Error::with_source(StartErrorKind::Subscribe, err));
                }
            };
            let runtime = Arc::new(EndpointRuntime {
                answered_attributes: answered_attributes(&service_name, endpoint.request_type),
                service: service_name.clone(),
                source: source.clone(),
                stack: Stack::new(endpoint.handler, &self.layers, source.clone()),
                timeout: self.timeout,
                publisher: self.client.publisher(),
                metrics: self.client.metrics().clone(),
                state: self.state.clone(),
            });
            served.push((requests, runtime));
        }
        let endpoints = served
            .into_iter()
            .map(|(requests, runtime)| {
                tokio::spawn(serve_endpoint(requests, runtime, self.max_in_flight))
            })
            .collect();
        RunningService::new(&self.client, service, nats.clone(), endpoints)
            .await
            .map_err(|err| Error::with_source(StartErrorKind::Subscribe, err))
    }

    /// The subject of every endpoint, checking each request type is valid
    /// and served once.
    fn endpoint_subjects(&self) -> Result<Vec<String>, StartError> {
        let mut subjects: Vec<String> = Vec::with_capacity(self.endpoints.len());
        for endpoint in &self.endpoints {
            let request_type = EventType::parse(endpoint.request_type)
                .map_err(|err| Error::with_source(StartErrorKind::InvalidSpec, err))?;
            let subject = endpoint_subject(self.client.subjects(), &request_type);
            if subjects.contains(&subject) {
                return Err(Error::with_source(
                    StartErrorKind::InvalidSpec,
                    format!("two endpoints serve {request_type}"),
                ));
            }
            subjects.push(subject);
        }
        Ok(subjects)
    }
}
