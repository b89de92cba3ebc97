//! Adapting a typed `async fn(Req, Context<S>) -> Result<Resp, E>` into the
//! one boxed shape the endpoint stack calls.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;

use crate::envelope::content_type::APPLICATION_JSON;
use crate::envelope::Envelope;
use crate::event::Event;
use crate::lineage::Lineage;

use super::context::Context;
use super::endpoint_error::EndpointError;

/// An endpoint with its types erased: the request's context in, the typed
/// response (or the error to answer) out.
pub(crate) type ErasedHandler<S> = Arc<
    dyn Fn(Context<S>) -> BoxFuture<'static, Result<TypedResponse, EndpointError>> + Send + Sync,
>;

/// What an endpoint answers.
pub(crate) type Answer = Result<Response, EndpointError>;

/// A response on its way to the caller.
#[derive(Debug)]
pub(crate) enum Response {
    /// Straight from the handler: encoded without an envelope.
    Typed(TypedResponse),
    /// Out of the user's layers, which see (and may change) the envelope.
    Envelope(Envelope),
}

/// A handler's response as the endpoint encodes it: its static attributes,
/// its key and its JSON. Its id, source and lineage are the endpoint's.
#[derive(Debug)]
pub(crate) struct TypedResponse {
    pub(crate) event_type: &'static str,
    pub(crate) data_schema: Option<&'static str>,
    pub(crate) partition_key: Option<String>,
    pub(crate) data: Bytes,
}

impl TypedResponse {
    fn of<E: Event>(response: &E) -> Result<Self, EndpointError> {
        let data = serde_json::to_vec(response).map_err(|err| {
            EndpointError::new(
                EndpointError::INTERNAL,
                format!("unencodable response: {err}"),
            )
        })?;
        Ok(Self {
            event_type: E::TYPE,
            data_schema: E::data_schema(),
            partition_key: response.key(),
            data: Bytes::from(data),
        })
    }

    /// The response as a full envelope from `source`, for the user's
    /// layers: caused by the request it answers and sharing its correlation
    /// (the request's id when it has none), which the request's lineage
    /// holds.
    pub(crate) fn into_envelope(self, source: &str, lineage: &Lineage) -> Envelope {
        let mut envelope = Envelope::new(source, self.event_type);
        envelope.data_content_type = Some(APPLICATION_JSON.to_owned());
        envelope.data_schema = self.data_schema.map(str::to_owned);
        if let Some(key) = self.partition_key {
            envelope.set_partition_key(key);
        }
        envelope.set_correlation_id(lineage.correlation_id());
        envelope.set_causation_id(lineage.event_id());
        envelope.data = Some(self.data);
        envelope
    }
}

/// Erases `handler`.
pub(crate) fn erase<Req, Resp, E, F, Fut, S>(handler: F) -> ErasedHandler<S>
where
    Req: Event,
    Resp: Event,
    E: Into<EndpointError>,
    F: Fn(Req, Context<S>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    S: Send + 'static,
{
    Arc::new(move |context: Context<S>| {
        let request = match context.envelope().decode_data::<Req>() {
            Ok(request) => request,
            Err(err) => {
                let answer = Err(EndpointError::new(
                    EndpointError::BAD_REQUEST,
                    format!("undecodable request: {err}"),
                ));
                return Box::pin(std::future::ready(answer));
            }
        };
        let response = handler(request, context);
        Box::pin(async move { TypedResponse::of(&response.await.map_err(Into::into)?) })
    })
}

/// `handler`, taking the context of a builder with other state.
pub(crate) fn without_state<S2: Send + 'static>(handler: ErasedHandler<()>) -> ErasedHandler<S2> {
    Arc::new(move |context: Context<S2>| handler(context.map_state(|_| ())))
}
