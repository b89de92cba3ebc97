//! The two transports over one [`Session`]: SSE and WebSocket. Everything that
//! can refuse a request (token, filter, limits, stream) is decided before the
//! response starts, so refusals are plain HTTP statuses.

use std::convert::Infallible;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::auth::token_of;
use crate::filter::{Filter, FilterError, Selection};
use crate::limits::LimitHit;
use crate::metrics::reason;
use crate::position::Position;
use crate::session::{Frame, Framer, Session};
use crate::Gateway;

/// Query parameters of both endpoints.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Params {
    #[serde(default)]
    types: Option<String>,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    token: Option<String>,
    /// Resume token (WebSocket; SSE also takes `Last-Event-ID`).
    #[serde(default)]
    resume: Option<String>,
}

/// A request refused before streaming.
struct Refusal(StatusCode, &'static str);

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let mut response = (self.0, self.1).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

async fn open(
    gateway: &Gateway,
    headers: &HeaderMap,
    params: Params,
    transport: &'static str,
) -> Result<(Session, usize), Refusal> {
    let inner = &gateway.inner;
    let metrics = &inner.metrics;
    if *inner.shutdown.borrow() {
        return Err(Refusal(StatusCode::SERVICE_UNAVAILABLE, "shutting down"));
    }
    let token = token_of(headers, params.token.as_deref()).ok_or_else(|| {
        metrics.auth_failures.add(1, &reason("missing"));
        Refusal(StatusCode::UNAUTHORIZED, "no token")
    })?;
    let claims = inner.keys.verify(token).map_err(|error| {
        metrics.auth_failures.add(1, &reason(error.label()));
        Refusal(StatusCode::UNAUTHORIZED, "invalid or expired token")
    })?;
    let filter = Filter {
        types: params.types,
        pattern: params.pattern,
        key: params.key,
    };
    let selection = Selection::resolve(&filter, &claims.grants, &inner.subjects).map_err(
        |error| match error {
            FilterError::Forbidden(_) => {
                metrics.auth_failures.add(1, &reason("forbidden"));
                Refusal(StatusCode::FORBIDDEN, "filter outside the token's grants")
            }
            _ => Refusal(StatusCode::BAD_REQUEST, "invalid filter"),
        },
    )?;
    let holder = claims
        .subject
        .clone()
        .unwrap_or_else(|| token.rsplit('.').next().unwrap_or_default().to_owned());
    let slot = inner.limits.acquire(&holder).map_err(|hit| {
        let which = match hit {
            LimitHit::Total => "total",
            LimitHit::PerToken => "per-token",
        };
        metrics.refused.add(1, &reason(which));
        Refusal(StatusCode::TOO_MANY_REQUESTS, "too many connections")
    })?;
    // Join the live feed before reading the stream's end: every event after
    // that end reaches the feed, so catch-up plus live leaves no gap.
    let live = inner.hubs.join(&selection.subjects).await;
    let info = inner
        .stream
        .get_info()
        .await
        .map_err(|_| Refusal(StatusCode::SERVICE_UNAVAILABLE, "stream unavailable"))?;
    let epoch = info.created.unix_timestamp_nanos();
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(params.resume);
    let (catch_up_from, reset) = match resume {
        None => (None, None),
        Some(id) => {
            let outcome = match id.parse::<Position>() {
                Ok(p)
                    if p.stream == inner.config.stream
                        && p.epoch == epoch
                        && p.sequence <= last =>
                {
                    if p.sequence + 1 < first {
                        (None, Some("history-gone"))
                    } else {
                        (Some(p.sequence + 1), None)
                    }
                }
                _ => (None, Some("stream-recreated")),
            };
            let label = if outcome.1.is_some() {
                "reset"
            } else {
                "resumed"
            };
            metrics
                .resumes
                .add(1, &[opentelemetry::KeyValue::new("outcome", label)]);
            outcome
        }
    };
    let session = Session {
        stream: inner.stream.clone(),
        framer: Framer {
            stream_name: inner.config.stream.clone(),
            epoch,
            metrics: metrics.clone(),
            transport,
        },
        selection,
        live,
        catch_up_from,
        catch_up_to: last,
        reset,
        expires_at: claims.expires_at,
        heartbeat: inner.config.heartbeat,
        shutdown: inner.shutdown.subscribe(),
        slot,
    };
    Ok((session, inner.config.buffer))
}

fn start(session: Session, buffer: usize) -> mpsc::Receiver<Frame> {
    let (out, frames) = mpsc::channel(buffer.max(1));
    session.spawn(out);
    frames
}

pub(crate) async fn sse(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    match open(&gateway, &headers, params, "sse").await {
        Ok((session, buffer)) => Sse::new(sse_events(start(session, buffer))).into_response(),
        Err(refusal) => refusal.into_response(),
    }
}

fn sse_events(frames: mpsc::Receiver<Frame>) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    stream::unfold(frames, |mut frames| async move {
        let event = match frames.recv().await? {
            Frame::Event { id, json } => SseEvent::default().id(id).data(&json.json),
            Frame::Control { name, id, data } => {
                let event = SseEvent::default().event(name).data(data);
                match id {
                    Some(id) => event.id(id),
                    None => event,
                }
            }
            Frame::Heartbeat => SseEvent::default().comment("heartbeat"),
        };
        Some((Ok(event), frames))
    })
}

pub(crate) async fn websocket(
    State(gateway): State<Gateway>,
    headers: HeaderMap,
    Query(params): Query<Params>,
    upgrade: WebSocketUpgrade,
) -> Response {
    match open(&gateway, &headers, params, "websocket").await {
        Ok((session, buffer)) => {
            let frames = start(session, buffer);
            upgrade.on_upgrade(move |socket| forward_websocket(socket, frames))
        }
        Err(refusal) => refusal.into_response(),
    }
}

/// Events as `{"id": ..., "event": <CloudEvent>}` text messages, control
/// events as `{"control": "reset" | "end", "id": ..., "data": ...}`,
/// heartbeats as pings.
async fn forward_websocket(mut socket: WebSocket, mut frames: mpsc::Receiver<Frame>) {
    loop {
        let message = tokio::select! {
            frame = frames.recv() => match frame {
                Some(Frame::Event { id, json }) => Message::Text(
                    format!(r#"{{"id":"{id}","event":{}}}"#, json.json).into(),
                ),
                Some(Frame::Control { name, id, data }) => {
                    let id = id.map_or_else(|| "null".to_owned(), |id| format!(r#""{id}""#));
                    Message::Text(format!(r#"{{"control":"{name}","id":{id},"data":{data}}}"#).into())
                }
                Some(Frame::Heartbeat) => Message::Ping(bytes::Bytes::new()),
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => continue,
            },
        };
        if socket.send(message).await.is_err() {
            return;
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
