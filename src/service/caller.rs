//! [`Caller`]: asking an endpoint and waiting for its typed answer.

use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::header::HeaderName;
use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use async_nats::{HeaderMap, Message};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::client::{Client, NeedsNats};
use crate::event::{Event, EventType};
use crate::trace::TraceHeaders;
use crate::Error;

use super::cloudevent::{read_data, Attributes};
use super::error::{CallError, CallErrorKind};
use super::wire::{endpoint_subject, write_budget};

/// The protocol's error headers as names built once: a `&str` name is
/// checked and copied on every lookup, and every answer is looked up.
const SERVICE_ERROR: HeaderName = HeaderName::from_static(NATS_SERVICE_ERROR);
const SERVICE_ERROR_CODE: HeaderName = HeaderName::from_static(NATS_SERVICE_ERROR_CODE);

/// How long a call waits for its answer unless told otherwise.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Calls endpoints with a timeout, which also travels to the endpoint as
/// its deadline.
///
/// ```no_run
/// # use std::time::Duration;
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct QuoteRequested { sku: String }
/// # impl jetevents::Event for QuoteRequested { const TYPE: &'static str = "pricing.quote.requested.v1"; }
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct QuoteGiven { cents: u64 }
/// # impl jetevents::Event for QuoteGiven { const TYPE: &'static str = "pricing.quote.given.v1"; }
/// use jetevents::service::CallErrorKind;
///
/// # async fn run(client: jetevents::client::Client) {
/// let caller = client.caller().timeout(Duration::from_millis(300));
/// match caller.call::<_, QuoteGiven>(&QuoteRequested { sku: "A-1".into() }).await {
///     Ok(quote) => println!("{} cents", quote.cents),
///     Err(err) => match err.kind() {
///         CallErrorKind::NoResponders => println!("pricing is down"),
///         CallErrorKind::Remote { code: 404, .. } => println!("no such sku"),
///         _ => println!("failed: {err}"),
///     },
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Caller {
    client: Client,
    timeout: Duration,
}

/// Defined here rather than in [`client`](crate::client), so the client does
/// not import the services built on it.
impl Client {
    /// A caller with the [default timeout](DEFAULT_CALL_TIMEOUT).
    pub fn caller(&self) -> Caller {
        Caller {
            client: self.clone(),
            timeout: DEFAULT_CALL_TIMEOUT,
        }
    }

    /// Calls the endpoint of `Req` with the default timeout; see
    /// [`Caller::call`].
    pub async fn call<Req: Event, Resp: Event>(&self, request: &Req) -> Result<Resp, CallError> {
        self.caller().call(request).await
    }
}

impl Caller {
    /// How long to wait for the answer; the endpoint gets the same budget.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `request` to the endpoint serving `Req` and decodes its answer
    /// as `Resp`.
    ///
    /// Fails with [`NoResponders`](CallErrorKind::NoResponders) at once when
    /// no instance serves it, [`TimedOut`](CallErrorKind::TimedOut) after the
    /// timeout, [`Remote`](CallErrorKind::Remote) with the endpoint's code
    /// and message, [`Undecodable`](CallErrorKind::Undecodable) when the
    /// answer is not a `Resp` CloudEvent. Inside a consumer's or endpoint's
    /// handler, the request is caused by the event being handled.
    pub async fn call<Req: Event, Resp: Event>(&self, request: &Req) -> Result<Resp, CallError> {
        let nats = self.client.nats().ok_or_else(|| {
            Error::with_source(CallErrorKind::Request, NeedsNats("request-reply"))
        })?;
        let request_type = EventType::of::<Req>()
            .map_err(|err| Error::with_source(CallErrorKind::InvalidRequest, err))?;
        let subject = endpoint_subject(self.client.subjects(), &request_type);
        let span = tracing::info_span!(
            "call",
            otel.name = %format_args!("call {subject}"),
            otel.kind = "client",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.operation.name = "call",
            messaging.destination.name = %subject,
            cloudevents.event_type = Req::TYPE,
            error.type = tracing::field::Empty,
        );
        let trace = if span.is_disabled() {
            crate::trace::current_context()
        } else {
            span.context()
        };
        let cause = handled_event_ids();
        let (correlation_id, causation_id) = match &cause {
            Some((event_id, correlation_id)) => {
                (Some(correlation_id.as_str()), Some(event_id.as_str()))
            }
            None => (None, None),
        };
        let mut headers = Attributes {
            id: crate::envelope::new_id(),
            source: &self.client.config().source,
            event_type: Req::TYPE,
            data_schema: Req::data_schema(),
            partition_key: request.key(),
            correlation_id,
            causation_id,
            trace: TraceHeaders::of(&trace),
        }
        .headers()
        .map_err(|err| Error::with_source(CallErrorKind::InvalidRequest, err))?;
        let payload = serde_json::to_vec(request)
            .map_err(|err| Error::with_source(CallErrorKind::InvalidRequest, err))?;
        write_budget(&mut headers, self.timeout);
        let sent = async_nats::Request::new()
            .payload(payload.into())
            .headers(headers)
            .timeout(Some(self.timeout));
        let answer = async {
            let reply = nats.send_request(subject, sent).await.map_err(|err| {
                // The first two say all there is; the others keep the cause.
                match err.kind() {
                    RequestErrorKind::NoResponders => Error::new(CallErrorKind::NoResponders),
                    RequestErrorKind::TimedOut => Error::new(CallErrorKind::TimedOut),
                    _ => Error::with_source(CallErrorKind::Request, err),
                }
            })?;
            decode_answer(reply)
        }
        .instrument(span.clone())
        .await;
        if let Err(err) = &answer {
            span.record("error.type", error_type(err.kind()));
        }
        answer
    }
}

/// Inside a handler, the request is a follow-up of the event handled: its
/// id (the request's causation) and correlation.
fn handled_event_ids() -> Option<(String, String)> {
    crate::lineage::handled(|lineage| {
        (
            lineage.event_id().to_owned(),
            lineage.correlation_id().to_owned(),
        )
    })
}

/// The endpoint's error, or its response decoded.
fn decode_answer<Resp: Event>(reply: Message) -> Result<Resp, CallError> {
    if let Some(remote) = remote_error(reply.headers.as_ref()) {
        return Err(Error::new(remote));
    }
    read_data(reply.headers.as_ref(), &reply.payload)
        .map_err(|err| Error::with_source(CallErrorKind::Undecodable, err))
}

/// The protocol's error headers, when the endpoint failed. A code that is not
/// a number still marks an error (code 0 keeps the message).
fn remote_error(headers: Option<&HeaderMap>) -> Option<CallErrorKind> {
    let headers = headers?;
    let code = headers.get(SERVICE_ERROR_CODE)?;
    Some(CallErrorKind::Remote {
        code: code.as_str().trim().parse().unwrap_or(0),
        message: headers
            .get(SERVICE_ERROR)
            .map(|message| message.as_str().to_owned())
            .unwrap_or_default(),
    })
}

fn error_type(kind: &CallErrorKind) -> &'static str {
    match kind {
        CallErrorKind::NoResponders => "no_responders",
        CallErrorKind::TimedOut => "timeout",
        CallErrorKind::Remote { .. } => "remote",
        CallErrorKind::Undecodable => "undecodable",
        CallErrorKind::InvalidRequest => "invalid_request",
        _ => "request",
    }
}
