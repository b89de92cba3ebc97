//! The handler stack: a delivery goes through tower layers to the router
//! and comes back as an [`Outcome`].
//!
//! The request is a [`Delivery`]; the stack's error type is [`BoxError`],
//! so off-the-shelf tower layers (`tower::timeout`,
//! `tower::limit::ConcurrencyLimit`) compose. An error out of the stack is a
//! transient failure, unless it carries a
//! [`HandlerError`](super::HandlerError), which keeps its kind. The order of
//! the consumer's own concerns around it is in the
//! [module docs](super#middleware).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::envelope::Envelope;
pub use crate::error::BoxError;

use super::context::Context;
use super::outcome::Outcome;
use super::router::{Route, Routes};

/// One event on its way through the handler stack: the decoded envelope
/// and the handler's [`Context`] (delivery count, stream sequence, subject,
/// group, publisher, state). What tower layers see as their request.
///
/// ```
/// use std::task::{Context as TaskContext, Poll};
/// use jetevents::consume::{BoxError, Delivery, Outcome};
///
/// /// Acks events of a test source without running the handler.
/// #[derive(Clone)]
/// struct SkipTestEvents<Inner>(Inner);
///
/// impl<S, Inner> tower::Service<Delivery<S>> for SkipTestEvents<Inner>
/// where
///     Inner: tower::Service<Delivery<S>, Response = Outcome, Error = BoxError>,
///     Inner::Future: Send + 'static,
/// {
///     type Response = Outcome;
///     type Error = BoxError;
///     type Future = futures_util::future::BoxFuture<'static, Result<Outcome, BoxError>>;
///
///     fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
///         self.0.poll_ready(cx)
///     }
///
///     fn call(&mut self, delivery: Delivery<S>) -> Self::Future {
///         if delivery.envelope().source == "/test" {
///             return Box::pin(async { Ok(Outcome::ack()) });
///         }
///         Box::pin(self.0.call(delivery))
///     }
/// }
/// ```
#[derive(Clone, Debug)]
pub struct Delivery<S = ()> {
    context: Context<S>,
}

impl<S> Delivery<S> {
    pub(crate) fn new(context: Context<S>) -> Self {
        Self { context }
    }

    /// The event's envelope: every attribute and extension, and the raw data.
    pub fn envelope(&self) -> &Envelope {
        self.context.envelope()
    }

    /// What the handler gets with the event.
    pub fn context(&self) -> &Context<S> {
        &self.context
    }

    /// The handler's context, giving up the delivery.
    pub fn into_context(self) -> Context<S> {
        self.context
    }

    /// The same delivery with other state.
    pub(crate) fn map_state<S2>(self, f: impl FnOnce(S) -> S2) -> Delivery<S2> {
        Delivery {
            context: self.context.map_state(f),
        }
    }
}

/// The future of a route: the one boxed future of a delivery.
pub(crate) type RouteFuture = BoxFuture<'static, Result<Outcome, BoxError>>;

/// The service a consumer's layer wraps: the routes and the layers inside
/// it, boxed (the consumer boxes a stack once, at its end).
pub type HandlerService<S> = BoxCloneSyncService<Delivery<S>, Outcome, BoxError>;

/// A user's layer, applied when the consumer is built.
#[doc(hidden)]
pub type LayerFn<S> = Arc<dyn Fn(HandlerService<S>) -> HandlerService<S> + Send + Sync>;

/// A tower layer a consumer takes: its service takes a [`Delivery`], gives
/// an [`Outcome`] and fails with an error convertible to [`BoxError`].
/// Implemented for every such layer; named so the builders' bounds are
/// written once.
pub trait HandlerLayer<S>: Layer<HandlerService<S>> + Send + Sync + 'static {
    /// The layer as the router keeps it.
    #[doc(hidden)]
    fn into_layer_fn(self) -> LayerFn<S>;
}

impl<S, L> HandlerLayer<S> for L
where
    S: Send + Sync + 'static,
    L: Layer<HandlerService<S>> + Send + Sync + 'static,
    L::Service: Service<Delivery<S>, Response = Outcome> + Clone + Send + Sync + 'static,
    <L::Service as Service<Delivery<S>>>::Error: Into<BoxError>,
    <L::Service as Service<Delivery<S>>>::Future: Send + 'static,
{
    fn into_layer_fn(self) -> LayerFn<S> {
        boxed_layer(self)
    }
}

/// A boxed service of a stack: requests `Req`, responses `Resp`.
type BoxedService<Req, Resp> = BoxCloneSyncService<Req, Resp, BoxError>;

/// A layer kept as a function over boxed services.
pub(crate) type BoxedLayerFn<Req, Resp> =
    Arc<dyn Fn(BoxedService<Req, Resp>) -> BoxedService<Req, Resp> + Send + Sync>;

/// A layer as a function from a boxed service to the boxed layered one:
/// how consumers and service endpoints keep their users' layers.
pub(crate) fn boxed_layer<Req, Resp, L>(layer: L) -> BoxedLayerFn<Req, Resp>
where
    Req: 'static,
    Resp: 'static,
    L: Layer<BoxedService<Req, Resp>> + Send + Sync + 'static,
    L::Service: Service<Req, Response = Resp> + Clone + Send + Sync + 'static,
    <L::Service as Service<Req>>::Error: Into<BoxError>,
    <L::Service as Service<Req>>::Future: Send + 'static,
{
    Arc::new(move |inner| BoxCloneSyncService::new(layer.layer(inner).map_err(Into::into)))
}

/// The router behind the consumer's layers: what every delivery of a
/// consumer, durable or ephemeral, is handed to.
pub(crate) struct Handlers<S> {
    routes: Arc<Routes<S>>,
    /// The consumer's layers around the router; `None` without any, so a
    /// delivery costs the route's boxed future and nothing more.
    layered: Option<HandlerService<S>>,
    /// Whether any layer (the consumer's or a route's) is in the way.
    has_layers: bool,
}

// By hand: a derive would ask `S: Clone` of the handle, not of the state.
impl<S> Clone for Handlers<S> {
    fn clone(&self) -> Self {
        Self {
            routes: self.routes.clone(),
            layered: self.layered.clone(),
            has_layers: self.has_layers,
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Handlers<S> {
    pub(crate) fn new(routes: Routes<S>, layers: &[LayerFn<S>]) -> Self {
        let routes = Arc::new(routes);
        let layered = (!layers.is_empty()).then(|| {
            let router = BoxCloneSyncService::new(RouterService(routes.clone()));
            // Like axum's: a layer added later wraps those added before.
            layers.iter().fold(router, |stack, layer| layer(stack))
        });
        let has_layers = layered.is_some() || routes.has_route_layers();
        Self {
            routes,
            layered,
            has_layers,
        }
    }

    /// Whether a layer may wrap a call: only a layer can hold one (an open
    /// breaker), so without any the runner watches for no holds.
    pub(crate) fn has_layers(&self) -> bool {
        self.has_layers
    }

    /// The route table, to look up a type's options.
    pub(crate) fn routes(&self) -> &Routes<S> {
        &self.routes
    }

    /// Runs `delivery` through the stack, in the lineage of its event, with
    /// a panic anywhere in it (a layer's `call`, a handler's first poll)
    /// caught. `route` is the one the caller found for the delivery's type:
    /// without consumer layers it is called as it is, not looked up again.
    pub(crate) fn call(
        &self,
        route: &Route<S>,
        delivery: Delivery<S>,
    ) -> impl Future<Output = Result<Result<Outcome, BoxError>, Box<dyn Any + Send>>> + Send + 'static
    {
        let lineage = delivery.context().lineage();
        let target = match &self.layered {
            None => Ok(route.call()),
            Some(stack) => Err(stack.clone()),
        };
        let call = async move {
            match target {
                Ok(route) => route.run(delivery).await,
                // The consumer's layers may change the delivery: the router
                // inside them looks its route up.
                Err(stack) => stack.oneshot(delivery).await,
            }
        };
        crate::lineage::with_lineage(lineage, AssertUnwindSafe(call).catch_unwind())
    }
}

/// The router as the innermost service of the consumer's layers.
pub(crate) struct RouterService<S>(pub(crate) Arc<Routes<S>>);

impl<S> Clone for RouterService<S> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<S: Clone + Send + Sync + 'static> Service<Delivery<S>> for RouterService<S> {
    type Response = Outcome;
    type Error = BoxError;
    type Future = RouteFuture;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery<S>) -> RouteFuture {
        self.0.dispatch(delivery)
    }
}
