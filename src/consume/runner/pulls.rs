//! The pull requests of the loop: the one inbox they are answered on, what
//! comes in on it, and which are still open.

use std::collections::VecDeque;
use std::time::Duration;

use std::sync::Arc;

use async_nats::jetstream;
use tokio::time::Instant;

use crate::client::Client;
use crate::consume::{ConsumeError, ConsumeErrorKind};
use crate::error::Error;
use crate::transport::nats_delivery::{Acks, NatsDelivery};

/// Bound on subscribing the pull inbox.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a runner still waiting for the connection says so.
const DISCONNECTED_REPORT: Duration = Duration::from_secs(30);

/// The pull requests still open, oldest first, and how many events each may
/// still bring.
#[derive(Default)]
pub(super) struct Pulls {
    open: VecDeque<Pull>,
}

struct Pull {
    reply: String,
    remaining: usize,
    deadline: Instant,
}

impl Pulls {
    pub(super) fn sent(&mut self, reply: String, batch: usize, deadline: Instant) {
        self.open.push_back(Pull {
            reply,
            remaining: batch,
            deadline,
        });
    }

    /// Events still to come for the open pulls.
    pub(super) fn outstanding(&self) -> usize {
        self.open.iter().map(|pull| pull.remaining).sum()
    }

    /// One event came. Events carry their own subject, not the pull's, but
    /// the server serves a consumer's pulls in order: it counts against the
    /// oldest.
    pub(super) fn received(&mut self) {
        if let Some(oldest) = self.open.front_mut() {
            oldest.remaining = oldest.remaining.saturating_sub(1);
            if oldest.remaining == 0 {
                // The server sends no end-of-pull status once a pull is filled.
                self.open.pop_front();
            }
        }
    }

    pub(super) fn contains(&self, reply: &str) -> bool {
        self.open.iter().any(|pull| pull.reply == reply)
    }

    pub(super) fn end(&mut self, reply: &str) {
        self.open.retain(|pull| pull.reply != reply);
    }

    /// Drops the pulls past their deadline; true when there were any.
    pub(super) fn drop_overdue(&mut self, now: Instant) -> bool {
        let before = self.open.len();
        self.open.retain(|pull| pull.deadline > now);
        self.open.len() != before
    }

    pub(super) fn forget(&mut self) {
        self.open.clear();
    }
}

/// The one inbox every pull of a runner is answered on: pull `n` replies to
/// `{prefix}.{n}`, all through one wildcard subscription that lives as long
/// as the runner (the client renews it on reconnect). An event the server
/// sends for a pull the loop already gave up on (its request held up by a
/// stalled network, or sent late after a reconnect) still arrives here;
/// with an inbox per pull it would go to a dropped subscription and stay
/// unacked until the ack wait.
pub(super) struct Inbox {
    prefix: String,
    pub(super) subscription: async_nats::Subscriber,
    pulls: u64,
}

impl Inbox {
    pub(super) async fn subscribe(client: &Client) -> Result<Self, ConsumeError> {
        let nats = &client
            .nats_transport("a pull inbox")
            .map_err(|err| Error::with_source(ConsumeErrorKind::Subscribe, err))?
            .nats;
        let prefix = nats.new_inbox();
        let subscription =
            tokio::time::timeout(SUBSCRIBE_TIMEOUT, nats.subscribe(format!("{prefix}.*")))
                .await
                .map_err(|err| Error::with_source(ConsumeErrorKind::Subscribe, err))?
                .map_err(|err| Error::with_source(ConsumeErrorKind::Subscribe, err))?;
        Ok(Self {
            prefix,
            subscription,
            pulls: 0,
        })
    }

    /// The reply subject of the next pull.
    pub(super) fn next_reply(&mut self) -> String {
        self.pulls += 1;
        format!("{}.{}", self.prefix, self.pulls)
    }
}

/// What came in on the pull inbox.
// Matched as soon as it is built, never stored: boxing the event would
// only add an allocation per delivery.
#[allow(clippy::large_enum_variant)]
pub(super) enum Incoming {
    Event(NatsDelivery),
    /// A status about the pull replied to on `reply`.
    Status {
        reply: String,
        status: PullStatus,
    },
}

pub(super) enum PullStatus {
    /// The pull is over: expired, or nothing to deliver.
    Ended,
    Heartbeat,
    /// The pull named a pin the server no longer holds for this client
    /// (pinned consumers): the pull is over, the next goes without a pin.
    Unpinned,
    /// The server refused the pull (consumer gone, leader change, no
    /// responders).
    Refused(String),
}

pub(super) fn classify(message: async_nats::Message, acks: &Arc<Acks>) -> Incoming {
    use async_nats::StatusCode;
    let status = match message.status {
        None | Some(StatusCode::OK) => {
            return Incoming::Event(NatsDelivery::new(message, acks.clone()))
        }
        Some(StatusCode::TIMEOUT | StatusCode::NOT_FOUND) => PullStatus::Ended,
        Some(StatusCode::IDLE_HEARTBEAT) => PullStatus::Heartbeat,
        Some(StatusCode::PIN_ID_MISMATCH) => PullStatus::Unpinned,
        Some(status) => PullStatus::Refused(match &message.description {
            Some(description) => format!("{status} {description}"),
            None => status.to_string(),
        }),
    };
    Incoming::Status {
        reply: message.subject.to_string(),
        status,
    }
}

/// Whether the client is connected, saying so now and then while it is not.
pub(super) fn connected(
    client: &Client,
    group: &str,
    disconnected_since: &mut Option<Instant>,
) -> bool {
    use async_nats::connection::State;
    if client
        .nats()
        .is_some_and(|nats| nats.connection_state() == State::Connected)
    {
        *disconnected_since = None;
        return true;
    }
    let now = Instant::now();
    match disconnected_since {
        None => {
            tracing::debug!(consumer = %group, "not connected; pulling waits for the connection");
            *disconnected_since = Some(now);
        }
        Some(since) if now.duration_since(*since) >= DISCONNECTED_REPORT => {
            tracing::warn!(consumer = %group, "still not connected; no events are consumed");
            *disconnected_since = Some(now);
        }
        Some(_) => {}
    }
    false
}

/// Sends a pull request of `consumer`, answered on `reply`. A pinned
/// consumer's requests name its priority group and the pin this client
/// holds (async-nats's `request_batch` sends neither).
pub(super) async fn request(
    client: &Client,
    consumer: &jetstream::consumer::PullConsumer,
    batch: jetstream::consumer::pull::BatchConfig,
    pin: Option<&str>,
    reply: String,
) -> Result<(), crate::error::BoxError> {
    if batch.group.is_none() {
        return Ok(consumer.request_batch(batch, reply.into()).await?);
    }
    let mut request = serde_json::to_value(&batch)?;
    if let (Some(pin), Some(fields)) = (pin, request.as_object_mut()) {
        fields.insert("id".to_owned(), pin.into());
    }
    let info = consumer.cached_info();
    let subject = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        info.stream_name, info.name
    );
    let nats = &client.nats_transport("a pull request")?.nats;
    nats.publish_with_reply(subject, reply, serde_json::to_vec(&request)?.into())
        .await?;
    Ok(())
}

/// The pin a pinned consumer's event carries (`Nats-Pin-Id`).
pub(super) fn pin_of(delivery: &NatsDelivery) -> Option<String> {
    delivery
        .message
        .headers
        .as_ref()?
        .get("Nats-Pin-Id")
        .map(|pin| pin.as_str().to_owned())
}
