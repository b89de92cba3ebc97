//! Serving one endpoint: every request through the endpoint's stack (span,
//! metrics, lineage, timeout, panic catch, the user's layers, handler) to
//! its answer.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{self, Request};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use opentelemetry::KeyValue;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::codec::{self, Encoding};
use crate::envelope::Envelope;
use crate::lineage::Lineage;
use crate::metrics::Metrics;
use crate::publish::Publisher;
use crate::semconv::{
    CLOUDEVENTS_EVENT_TYPE, ERROR_TYPE, MESSAGING_CONSUMER_GROUP_NAME, MESSAGING_OPERATION_NAME,
    MESSAGING_SYSTEM, NATS,
};
use crate::trace::TraceHeaders;

use super::cloudevent::Attributes;
use super::context::Context;
use super::endpoint_error::EndpointError;
use super::handler::{Answer, Response};
use super::stack::Stack;
use super::wire::read_budget;

/// What every request of one endpoint shares.
pub(crate) struct EndpointRuntime<S> {
    pub(crate) service: Arc<str>,
    /// The CloudEvents `source` of the responses.
    pub(crate) source: Arc<str>,
    pub(crate) stack: Stack<S>,
    pub(crate) timeout: Duration,
    pub(crate) publisher: Publisher,
    pub(crate) metrics: Metrics,
    pub(crate) state: S,
    /// The metric attributes of a request answered without error, built
    /// once rather than per request.
    pub(crate) answered_attributes: Vec<KeyValue>,
}

/// Serves `requests` with at most `max_in_flight` handlers at once, until the
/// endpoint is stopped; then waits for the requests in flight.
pub(crate) async fn serve_endpoint<S: Clone + Send + Sync + 'static>(
    mut requests: service::endpoint::Endpoint,
    runtime: Arc<EndpointRuntime<S>>,
    max_in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let mut in_flight = JoinSet::new();
    while let Some(request) = requests.next().await {
        // Bounds the handlers running at once; further requests wait in
        // the subscription's buffer.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let runtime = runtime.clone();
        let mut serving = Box::pin(async move {
            serve_request(&runtime, request).await;
            drop(slot);
        });
        // Most requests are answered on their first poll: a task of their
        // own would only add a hop between threads to every call. The rest
        // go on in one (polled again there, so nothing waits on this poll).
        if serving.as_mut().now_or_never().is_none() {
            in_flight.spawn(serving);
        }
        // Reap finished requests so the set does not grow.
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

/// One request through the stack, answered.
async fn serve_request<S: Clone + Send + Sync + 'static>(
    runtime: &EndpointRuntime<S>,
    request: Request,
) {
    let received = Instant::now();
    let subject = request.message.subject.as_str();
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {subject}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %subject,
        messaging.consumer.group.name = %runtime.service,
        messaging.message.id = tracing::field::Empty,
        messaging.message.conversation_id = tracing::field::Empty,
        cloudevents.event_id = tracing::field::Empty,
        cloudevents.event_type = tracing::field::Empty,
        cloudevents.event_source = tracing::field::Empty,
        cloudevents.event_spec_version = "1.0",
        error.type = tracing::field::Empty,
    );
    let headers = request.message.headers.as_ref();
    let deadline = read_budget(headers).map(|budget| received + budget);
    let answer = match codec::decode(headers, &request.message.payload) {
        Err(err) => Err(EndpointError::new(
            EndpointError::BAD_REQUEST,
            format!("request is not a CloudEvent: {err}"),
        )),
        Ok(envelope) => {
            crate::trace::continue_in_process_span(&span, &envelope);
            let lineage = Lineage::new(
                envelope.id.clone(),
                envelope
                    .correlation_id()
                    .unwrap_or(envelope.id.as_str())
                    .to_owned(),
                runtime.service.clone(),
            );
            run_handler(runtime, envelope, lineage.clone(), deadline)
                .instrument(span.clone())
                .await
                .and_then(|response| encode_response(runtime, response, &lineage, &span))
        }
    };
    let error_type = answer.as_ref().err().map(error_type);
    if let Some(error_type) = error_type {
        span.record(ERROR_TYPE, error_type);
        span.record("otel.status_code", "ERROR");
    }
    let elapsed = received.elapsed().as_secs_f64();
    match error_type {
        None => runtime
            .metrics
            .process_duration
            .record(elapsed, &runtime.answered_attributes),
        Some(error_type) => runtime
            .metrics
            .process_duration
            .record(elapsed, &error_attributes(runtime, error_type)),
    }
    respond(request, answer, &span).await;
}

/// The handler in the request's lineage, under the deadline, its panics
/// caught.
async fn run_handler<S: Clone + Send + Sync + 'static>(
    runtime: &EndpointRuntime<S>,
    envelope: Envelope,
    lineage: Lineage,
    caller_deadline: Option<Instant>,
) -> Answer {
    let own_deadline = Instant::now() + runtime.timeout;
    let deadline = caller_deadline.map_or(own_deadline, |caller| caller.min(own_deadline));
    let context = Context::new(
        Arc::new(envelope),
        caller_deadline,
        lineage.clone(),
        runtime.publisher.clone(),
        runtime.state.clone(),
    );
    let handled = crate::lineage::with_lineage(
        lineage,
        AssertUnwindSafe(runtime.stack.call(context)).catch_unwind(),
    );
    match tokio::time::timeout_at(deadline, handled).await {
        Err(_elapsed) => Err(EndpointError::new(
            EndpointError::TIMED_OUT,
            "deadline exceeded",
        )),
        Ok(Err(_panic)) => Err(EndpointError::new(
            EndpointError::INTERNAL,
            "endpoint panicked",
        )),
        Ok(Ok(answer)) => answer,
    }
}

/// The response as a binary-mode CloudEvent carrying the endpoint span's
/// trace context and the request's lineage: a handler's typed response
/// written straight into headers, an envelope out of the user's layers
/// through the codec.
fn encode_response<S>(
    runtime: &EndpointRuntime<S>,
    response: Response,
    lineage: &Lineage,
    span: &tracing::Span,
) -> Result<(HeaderMap, Bytes), EndpointError> {
    let trace = TraceHeaders::of(&span.context());
    let encoded = match response {
        Response::Typed(typed) => Attributes {
            id: crate::envelope::new_id(),
            source: &runtime.source,
            event_type: typed.event_type,
            data_schema: typed.data_schema,
            partition_key: typed.partition_key,
            correlation_id: Some(lineage.correlation_id()),
            causation_id: Some(lineage.event_id()),
            trace,
        }
        .headers()
        .map(|headers| (headers, typed.data)),
        Response::Envelope(mut envelope) => {
            if let Some(trace) = trace {
                trace.write_into(&mut envelope);
            }
            codec::encode(&envelope, Encoding::Binary)
        }
    };
    encoded.map_err(|err| {
        EndpointError::new(
            EndpointError::INTERNAL,
            format!("unencodable response: {err}"),
        )
    })
}

/// Sends the response, or the error in the protocol's headers (which
/// `$SRV.STATS` counts).
async fn respond(
    request: Request,
    answer: Result<(HeaderMap, Bytes), EndpointError>,
    span: &tracing::Span,
) {
    let reply = match answer {
        Ok((headers, payload)) => request.respond_with_headers(Ok(payload), headers).await,
        Err(err) => request.respond(Err(service_error(&err))).await,
    };
    if let Err(err) = reply {
        // The caller may be gone; nothing else to do.
        tracing::debug!(parent: span, error = %err, "answer not sent");
    }
}

fn service_error(err: &EndpointError) -> service::error::Error {
    service::error::Error {
        status: err.message().to_owned(),
        code: usize::from(err.code()),
    }
}

/// The low-cardinality `error.type` of an answer.
fn error_type(err: &EndpointError) -> &'static str {
    match err.code() {
        EndpointError::BAD_REQUEST => "bad_request",
        EndpointError::TIMED_OUT => "timeout",
        EndpointError::INTERNAL => "internal",
        _ => "endpoint_error",
    }
}

fn error_attributes<S>(runtime: &EndpointRuntime<S>, error: &'static str) -> Vec<KeyValue> {
    let mut attributes = runtime.answered_attributes.clone();
    attributes.push(KeyValue::new(ERROR_TYPE, error));
    attributes
}

/// The attributes of every request of the endpoint of `request_type`.
pub(crate) fn answered_attributes(service: &str, request_type: &'static str) -> Vec<KeyValue> {
    vec![
        KeyValue::new(MESSAGING_SYSTEM, NATS),
        KeyValue::new(MESSAGING_OPERATION_NAME, "process"),
        KeyValue::new(MESSAGING_CONSUMER_GROUP_NAME, service.to_owned()),
        KeyValue::new(CLOUDEVENTS_EVENT_TYPE, request_type),
    ]
}
