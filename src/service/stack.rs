//! An endpoint's tower stack: a request goes through the user's layers to
//! the handler and comes back as the response envelope.
//!
//! The request is an [`EndpointRequest`]; the stack's error type is
//! [`BoxError`], so off-the-shelf tower layers compose. An error out of the
//! stack answers the caller with its code and message when it is an
//! [`EndpointError`], as an internal error (500) otherwise. The order of the
//! endpoint's own concerns around the layers is in the
//! [module docs](super).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

use crate::envelope::Envelope;
pub use crate::error::BoxError;

use super::context::Context;
use super::endpoint_error::EndpointError;
use super::handler::{Answer, ErasedHandler, Response};

/// One request on its way through an endpoint's layers: its [`Context`]
/// (envelope, caller's deadline, state, publisher). What tower layers see as
/// their request.
#[derive(Clone, Debug)]
pub struct EndpointRequest<S = ()> {
    context: Context<S>,
}

impl<S> EndpointRequest<S> {
    pub(crate) fn new(context: Context<S>) -> Self {
        Self { context }
    }

    /// The request as a CloudEvent.
    pub fn envelope(&self) -> &Envelope {
        self.context.envelope()
    }

    /// What the handler gets with the request.
    pub fn context(&self) -> &Context<S> {
        &self.context
    }

    /// The handler's context, giving up the request.
    pub fn into_context(self) -> Context<S> {
        self.context
    }
}

/// The service an endpoint's layer wraps: the handler and the layers inside
/// it, boxed.
pub type EndpointService<S> = BoxCloneSyncService<EndpointRequest<S>, Envelope, BoxError>;

/// A user's layer, applied when the service starts.
#[doc(hidden)]
pub type EndpointLayerFn<S> = Arc<dyn Fn(EndpointService<S>) -> EndpointService<S> + Send + Sync>;

/// A tower layer a service's endpoints take: its service takes an
/// [`EndpointRequest`], gives the response [`Envelope`] and fails with an
/// error convertible to [`BoxError`]. Implemented for every such layer;
/// named so the builder's bound is written once.
pub trait EndpointLayer<S>: Layer<EndpointService<S>> + Send + Sync + 'static {
    /// The layer as the builder keeps it.
    #[doc(hidden)]
    fn into_layer_fn(self) -> EndpointLayerFn<S>;
}

impl<S, L> EndpointLayer<S> for L
where
    S: Send + Sync + 'static,
    L: Layer<EndpointService<S>> + Send + Sync + 'static,
    L::Service: Service<EndpointRequest<S>, Response = Envelope> + Clone + Send + Sync + 'static,
    <L::Service as Service<EndpointRequest<S>>>::Error: Into<BoxError>,
    <L::Service as Service<EndpointRequest<S>>>::Future: Send + 'static,
{
    fn into_layer_fn(self) -> EndpointLayerFn<S> {
        crate::consume::stack::boxed_layer(self)
    }
}

/// An endpoint's handler behind its layers.
pub(crate) enum Stack<S> {
    /// No layers: a request costs the handler's boxed future and nothing
    /// more.
    Bare(ErasedHandler<S>),
    Layered(EndpointService<S>),
}

impl<S: Send + Sync + 'static> Stack<S> {
    /// `handler` inside `layers`; as in axum, a layer added later wraps the
    /// ones added before. The layers see responses from `source`.
    pub(crate) fn new(
        handler: ErasedHandler<S>,
        layers: &[EndpointLayerFn<S>],
        source: Arc<str>,
    ) -> Self {
        if layers.is_empty() {
            return Self::Bare(handler);
        }
        let handler = BoxCloneSyncService::new(HandlerService { handler, source });
        Self::Layered(layers.iter().fold(handler, |stack, layer| layer(stack)))
    }

    /// The answer to the request of `context`.
    pub(crate) async fn call(&self, context: Context<S>) -> Answer {
        match self {
            Self::Bare(handler) => handler(context).await.map(Response::Typed),
            Self::Layered(stack) => stack
                .clone()
                .oneshot(EndpointRequest::new(context))
                .await
                .map(Response::Envelope)
                .map_err(endpoint_error),
        }
    }
}

/// The caller's view of an error out of the layers.
fn endpoint_error(err: BoxError) -> EndpointError {
    match err.downcast::<EndpointError>() {
        Ok(err) => *err,
        Err(err) => EndpointError::new(EndpointError::INTERNAL, err.to_string()),
    }
}

/// The handler as the innermost service of the layers, its responses
/// made envelopes from `source`.
struct HandlerService<S> {
    handler: ErasedHandler<S>,
    source: Arc<str>,
}

impl<S> Clone for HandlerService<S> {
    fn clone(&self) -> Self {
        Self {
            handler: self.handler.clone(),
            source: self.source.clone(),
        }
    }
}

impl<S: Send + 'static> Service<EndpointRequest<S>> for HandlerService<S> {
    type Response = Envelope;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Envelope, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: EndpointRequest<S>) -> Self::Future {
        let context = request.into_context();
        let lineage = context.lineage().clone();
        let answer = (self.handler)(context);
        let source = self.source.clone();
        Box::pin(async move {
            let response = answer.await.map_err(BoxError::from)?;
            Ok(response.into_envelope(&source, &lineage))
        })
    }
}
