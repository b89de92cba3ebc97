//! One client's stream, whatever the transport: the events it missed (a
//! per-client ordered read), then live ones from the shared feed, with
//! heartbeats, and a final control frame when the gateway ends it.
//!
//! Frames go through a bounded channel the transport drains. Catch-up waits
//! for room (it reads at the client's pace); live delivery does not: a full
//! channel or a lagging feed ends the stream as `slow-consumer`, and the
//! client resumes from its last id.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use futures_util::StreamExt;
use opentelemetry::KeyValue;
use tokio::sync::{broadcast, mpsc, watch};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::event::StreamEvent;
use crate::filter::Selection;
use crate::hub::LiveFeed;
use crate::limits::Slot;
use crate::metrics::{reason, GatewayMetrics};
use crate::position::Position;

/// What a transport writes.
#[derive(Debug)]
pub(crate) enum Frame {
    /// A CloudEvent (JSON) and its id.
    Event {
        id: String,
        json: Arc<StreamEvent>,
    },
    /// A control event: `reset` (with the id to resume from) or `end`.
    Control {
        name: &'static str,
        id: Option<String>,
        data: String,
    },
    Heartbeat,
}

/// Why the gateway ended a stream (the `end` event's reason).
#[derive(Clone, Copy, Debug)]
pub(crate) enum EndReason {
    SlowConsumer,
    TokenExpired,
    Shutdown,
    StreamUnavailable,
}

impl EndReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndReason::SlowConsumer => "slow-consumer",
            EndReason::TokenExpired => "token-expired",
            EndReason::Shutdown => "shutdown",
            EndReason::StreamUnavailable => "stream-unavailable",
        }
    }
}

/// Everything a session needs, decided before the response starts.
pub(crate) struct Session {
    pub(crate) stream: async_nats::jetstream::stream::Stream,
    pub(crate) framer: Framer,
    pub(crate) selection: Selection,
    pub(crate) live: LiveFeed,
    /// Read from here to `catch_up_to` (inclusive) before going live.
    pub(crate) catch_up_from: Option<u64>,
    pub(crate) catch_up_to: u64,
    /// A reset to announce first.
    pub(crate) reset: Option<&'static str>,
    pub(crate) expires_at: SystemTime,
    pub(crate) heartbeat: Duration,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) slot: Slot,
}

/// Turns stored events into frames: ids, the send span, the sent counter.
pub(crate) struct Framer {
    pub(crate) stream_name: String,
    pub(crate) epoch: i128,
    pub(crate) metrics: GatewayMetrics,
    pub(crate) transport: &'static str,
}

type Out = mpsc::Sender<Frame>;

impl Session {
    /// Counts the connection open (before the response, so that a client
    /// that got its headers is counted), then runs it in a task.
    pub(crate) fn spawn(self, out: Out) {
        let attributes = [KeyValue::new("transport", self.framer.transport)];
        self.framer.metrics.connections.add(1, &attributes);
        tokio::spawn(self.run(out));
    }

    /// Runs until the client leaves or the gateway ends the stream.
    async fn run(mut self, out: Out) {
        let attributes = [KeyValue::new("transport", self.framer.transport)];
        let end = self.stream_frames(&out).await;
        if let Some(end) = end {
            self.framer.metrics.dropped.add(1, &reason(end.as_str()));
            let data = format!(r#"{{"reason":"{}"}}"#, end.as_str());
            let frame = Frame::Control {
                name: "end",
                id: None,
                data,
            };
            // The end frame waits a heartbeat for room, then gives up: a
            // stalled client must not hold the session.
            let _ = out.send_timeout(frame, self.heartbeat).await;
        }
        self.framer.metrics.connections.add(-1, &attributes);
        drop(self.slot);
    }

    /// `None` when the client went away; else why the gateway ends the stream.
    async fn stream_frames(&mut self, out: &Out) -> Option<EndReason> {
        if let Some(reason) = self.reset {
            let frame = Frame::Control {
                name: "reset",
                id: Some(self.framer.position(self.catch_up_to)),
                data: format!(
                    r#"{{"reason":"{reason}","resume":"{}"}}"#,
                    self.framer.position(self.catch_up_to)
                ),
            };
            out.send(frame).await.ok()?;
        }
        let expiry = tokio::time::sleep(
            self.expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default(),
        );
        tokio::pin!(expiry);
        let mut last = self.catch_up_to;
        if let Some(from) = self.catch_up_from {
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                result = self.catch_up(from, out) => match result {
                    Ok(caught_up) => last = caught_up,
                    Err(end) => return end,
                },
                _ = &mut expiry => return Some(EndReason::TokenExpired),
                _ = shutdown.wait_for(|down| *down) => return Some(EndReason::Shutdown),
            }
        }
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                received = self.live.receiver.recv() => match received {
                    Ok(event) if event.sequence > last => {
                        last = event.sequence;
                        if !self.selection.admits(&event.event_type, &event.subject) {
                            continue;
                        }
                        match out.try_send(self.framer.frame(event)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => return Some(EndReason::SlowConsumer),
                            Err(mpsc::error::TrySendError::Closed(_)) => return None,
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return Some(EndReason::SlowConsumer),
                    Err(broadcast::error::RecvError::Closed) => return Some(EndReason::StreamUnavailable),
                },
                _ = heartbeat.tick() => match out.try_send(Frame::Heartbeat) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => return Some(EndReason::SlowConsumer),
                    Err(mpsc::error::TrySendError::Closed(_)) => return None,
                },
                _ = &mut expiry => return Some(EndReason::TokenExpired),
                _ = self.shutdown.wait_for(|down| *down) => return Some(EndReason::Shutdown),
                _ = out.closed() => return None,
            }
        }
    }

    /// Sends the stored events `from..=catch_up_to` that pass the filter, at
    /// the client's pace. Returns the last sequence read; else, as
    /// [`Session::stream_frames`], `None` when the client left. A failed read
    /// ends the stream as `stream-unavailable`: going live instead would skip
    /// what was not read, and the client resumes from its last id.
    async fn catch_up(&self, from: u64, out: &Out) -> Result<u64, Option<EndReason>> {
        let mut last = from.saturating_sub(1);
        if from > self.catch_up_to {
            return Ok(self.catch_up_to);
        }
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                filter_subjects: self.selection.subjects.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: from,
                },
                ..Default::default()
            })
            .await
            .map_err(read_failed)?;
        // Nothing stored matches: the ordered read would only wait for new events.
        if consumer.cached_info().num_pending == 0 {
            return Ok(self.catch_up_to);
        }
        let mut messages = consumer.messages().await.map_err(read_failed)?;
        loop {
            let message = messages
                .next()
                .await
                .ok_or_else(|| read_failed("the ordered read ended"))?
                .map_err(read_failed)?;
            let info = message.info().map_err(read_failed)?;
            let (sequence, pending) = (info.stream_sequence, info.pending);
            if sequence > self.catch_up_to {
                break;
            }
            last = sequence;
            if let Some(event) = StreamEvent::from_message(&message) {
                if self.selection.admits(&event.event_type, &event.subject)
                    && out.send(self.framer.frame(Arc::new(event))).await.is_err()
                {
                    return Err(None);
                }
            }
            if pending == 0 || sequence == self.catch_up_to {
                break;
            }
        }
        Ok(last.max(self.catch_up_to))
    }
}

/// Logs why a catch-up read failed; the stream ends as `stream-unavailable`.
fn read_failed(error: impl std::fmt::Display) -> Option<EndReason> {
    tracing::warn!(%error, "catch-up read failed");
    Some(EndReason::StreamUnavailable)
}

impl Framer {
    fn position(&self, sequence: u64) -> String {
        Position::new(self.stream_name.clone(), self.epoch, sequence).to_string()
    }

    fn frame(&self, event: Arc<StreamEvent>) -> Frame {
        let span = tracing::info_span!(
            "send",
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.name = "send",
            messaging.destination.name = %self.stream_name,
            cloudevents.event_type = %event.event_type,
            jetevents.gateway.transport = self.transport,
        );
        let _ = span.set_parent(event.trace.clone());
        let _entered = span.enter();
        self.metrics
            .sent
            .add(1, &[KeyValue::new("transport", self.transport)]);
        Frame::Event {
            id: self.position(event.sequence),
            json: event,
        }
    }
}
