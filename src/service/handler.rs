//! Adapting a typed `async fn(Req, Context<S>) -> Result<Resp, E>` into the
//! one boxed shape the endpoint stack calls.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::envelope::Envelope;
use crate::event::Event;
use crate::lineage::Lineage;

use super::context::Context;
use super::endpoint_error::EndpointError;

/// An endpoint with its types erased: the request envelope in, the response
/// envelope (or the error to answer) out.
pub(crate) type ErasedHandler<S> =
    Arc<dyn Fn(Context<S>) -> BoxFuture<'static, Answer> + Send + Sync>;

/// What an endpoint answers.
pub(crate) type Answer = Result<Envelope, EndpointError>;

/// Erases `handler`; its responses get `source` as CloudEvents `source`.
pub(crate) fn erase<Req, Resp, E, F, Fut, S>(handler: F, source: Arc<str>) -> ErasedHandler<S>
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
        let lineage = context.lineage().clone();
        let response = handler(request, context);
        let source = source.clone();
        Box::pin(async move {
            let response = response.await.map_err(Into::into)?;
            let mut envelope = Envelope::from_event(&*source, &response).map_err(|err| {
                EndpointError::new(
                    EndpointError::INTERNAL,
                    format!("unencodable response: {err}"),
                )
            })?;
            answer_in_lineage(&lineage, &mut envelope);
            Ok(envelope)
        })
    })
}

/// `handler`, taking the context of a builder with other state.
pub(crate) fn without_state<S2: Send + 'static>(handler: ErasedHandler<()>) -> ErasedHandler<S2> {
    Arc::new(move |context: Context<S2>| handler(context.map_state(|_| ())))
}

/// The response is caused by the request it answers and shares its
/// correlation (the request's id when it has none): the request's lineage
/// holds both already.
fn answer_in_lineage(lineage: &Lineage, response: &mut Envelope) {
    response.set_correlation_id(lineage.correlation_id());
    response.set_causation_id(lineage.event_id());
}
