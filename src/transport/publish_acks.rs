//! Publish acks on one wildcard inbox per connection, matched to their
//! messages here rather than by async-nats' request machinery.
//!
//! A JetStream publish is a request: the stream answers on the message's
//! reply subject. async-nats' `send_publish` builds that request per message:
//! a random inbox name, an entry in its connection-wide map keyed by that
//! string, a semaphore permit and two timers. Here a publisher's acks come to
//! one subscription `<inbox>.<connection id>.*` and each message's reply
//! subject ends in a sequential number, so the waiting senders are a queue
//! indexed by that number: no hashing, and no timer per message. Deadlines
//! are kept in sweeper ticks (the ack timeout in tenths): a sweep every tick
//! answers the overdue ones `TimedOut`, which is what the timer did, at most
//! one tick later.
//!
//! What the publisher sees is unchanged: the same `PublishAck` and the same
//! async-nats error kinds (no responders, wrong last sequence, timed out,
//! broken pipe), so its retry, conflict and `OutcomeUnknown` handling stays
//! as it was. A late ack after its timeout is dropped: that publish was
//! already reported as of unknown outcome, never as stored.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::ErrorCode;
use async_nats::{HeaderMap, Message, StatusCode};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::oneshot;

/// Why a waiting sender was answered without an ack.
#[derive(Debug)]
enum NoAck {
    TimedOut,
}

type Answer = Result<Message, NoAck>;

/// The acks still to come, in the order their messages were sent.
///
/// Slot `i` belongs to reply number `first + i`. Reply numbers only grow and
/// the timeout is the same for all, so the oldest deadline is always in
/// front and sweeping stops at the first one still in time.
struct Waiting {
    first: u64,
    slots: VecDeque<Slot>,
}

struct Slot {
    /// The sweeper tick at which it is overdue.
    due: u64,
    /// `None` once answered (or given up on by its sender).
    answer: Option<oneshot::Sender<Answer>>,
}

impl Waiting {
    /// Takes the sender waiting for reply `number`, if any still waits.
    fn take(&mut self, number: u64) -> Option<oneshot::Sender<Answer>> {
        let index = usize::try_from(number.checked_sub(self.first)?).ok()?;
        let sender = self.slots.get_mut(index)?.answer.take();
        self.drop_answered_front();
        sender
    }

    fn drop_answered_front(&mut self) {
        while self.slots.front().is_some_and(|slot| slot.answer.is_none()) {
            self.slots.pop_front();
            self.first += 1;
        }
    }

    /// Answers `TimedOut` to every slot due at `tick` or before.
    fn sweep(&mut self, tick: u64) {
        while let Some(slot) = self.slots.front_mut() {
            if slot.answer.is_some() && slot.due > tick {
                break;
            }
            if let Some(answer) = slot.answer.take() {
                let _ = answer.send(Err(NoAck::TimedOut));
            }
            self.slots.pop_front();
            self.first += 1;
        }
    }
}

struct Shared {
    waiting: Mutex<Waiting>,
    /// Sweeper ticks so far; deadlines are counted in them.
    tick: AtomicU64,
}

impl Shared {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        // The lock guards plain queue operations that cannot leave it
        // inconsistent, so a poisoned lock is still usable.
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's publish acks.
pub(crate) struct PublishAcks {
    nats: async_nats::Client,
    /// `<inbox>.<id>.`; a message's reply subject is this and its number.
    prefix: String,
    shared: Arc<Shared>,
    timeout: Duration,
    /// How many ticks an ack may take.
    ticks_per_timeout: u64,
    /// Dropped with this: ends the demultiplexer and its subscription, so the
    /// task does not keep the connection open after the client is gone.
    _stop: oneshot::Sender<()>,
}

impl std::fmt::Debug for PublishAcks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishAcks")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Sweeps per ack timeout: a timeout is reported at most a tenth late.
const TICKS_PER_TIMEOUT: u32 = 10;
const MIN_TICK: Duration = Duration::from_millis(5);
const MAX_TICK: Duration = Duration::from_millis(250);

impl PublishAcks {
    /// Subscribes the connection's ack inbox and starts its demultiplexer.
    pub(crate) async fn start(
        nats: async_nats::Client,
        timeout: Duration,
    ) -> Result<PublishAcks, async_nats::SubscribeError> {
        let inbox = nats.new_inbox();
        let prefix = format!("{inbox}.");
        let subscription = nats.subscribe(format!("{inbox}.*")).await?;
        let tick = (timeout / TICKS_PER_TIMEOUT).clamp(MIN_TICK, MAX_TICK);
        let ticks_per_timeout =
            u64::try_from(timeout.as_nanos().div_ceil(tick.as_nanos().max(1))).unwrap_or(u64::MAX);
        let shared = Arc::new(Shared {
            waiting: Mutex::new(Waiting {
                first: 0,
                slots: VecDeque::new(),
            }),
            tick: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(demultiplex(subscription, shared.clone(), tick, stopped));
        Ok(PublishAcks {
            nats,
            prefix,
            shared,
            timeout,
            ticks_per_timeout,
            _stop: stop,
        })
    }

    /// Publishes a message to be stored; the returned future resolves to
    /// the stream's ack, as async-nats' `send_publish` would.
    pub(crate) async fn send(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<
        impl std::future::Future<Output = Result<PublishAck, PublishError>> + Send + 'static,
        PublishError,
    > {
        let (answer, answered) = oneshot::channel();
        let number = {
            let mut waiting = self.shared.waiting();
            let number = waiting.first + waiting.slots.len() as u64;
            waiting.slots.push_back(Slot {
                due: self.shared.tick.load(Ordering::Relaxed) + self.ticks_per_timeout,
                answer: Some(answer),
            });
            number
        };
        let mut reply = String::with_capacity(self.prefix.len() + 20);
        reply.push_str(&self.prefix);
        reply.push_str(itoa::Buffer::new().format(number));

        let publish = self
            .nats
            .publish_with_reply_and_headers(subject, reply, headers, payload);
        tokio::pin!(publish);
        // The connection takes it at once unless its buffer is full (a
        // reconnect): only then is a timer worth its cost.
        let sent = match publish.as_mut().now_or_never() {
            Some(sent) => sent.map_err(send_failure),
            None => match tokio::time::timeout(self.timeout, publish).await {
                Ok(sent) => sent.map_err(send_failure),
                Err(_) => Err(PublishError::new(PublishErrorKind::TimedOut)),
            },
        };
        if let Err(err) = sent {
            self.shared.waiting().take(number);
            return Err(err);
        }
        Ok(async move {
            match answered.await {
                Ok(Ok(message)) => read_ack(&message),
                Ok(Err(NoAck::TimedOut)) => Err(PublishError::new(PublishErrorKind::TimedOut)),
                // The demultiplexer is gone: the connection was closed.
                Err(_) => Err(PublishError::new(PublishErrorKind::BrokenPipe)),
            }
        })
    }
}

fn send_failure(err: async_nats::PublishError) -> PublishError {
    let kind = match err.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded => {
            PublishErrorKind::MaxPayloadExceeded
        }
        _ => PublishErrorKind::Other,
    };
    PublishError::with_source(kind, err)
}

/// The stream's answer: an ack or an API error, in one pass (async-nats'
/// untagged `Response` buffers the whole reply to try each form in turn).
#[derive(serde::Deserialize)]
struct AckReply {
    #[serde(default)]
    error: Option<async_nats::jetstream::Error>,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    domain: String,
    #[serde(default)]
    duplicate: bool,
}

/// The stream's answer, with the error kinds async-nats gives it.
fn read_ack(message: &Message) -> Result<PublishAck, PublishError> {
    if message.status == Some(StatusCode::NO_RESPONDERS) {
        return Err(PublishError::new(PublishErrorKind::StreamNotFound));
    }
    let reply: AckReply = serde_json::from_slice(&message.payload)
        .map_err(|err| PublishError::with_source(PublishErrorKind::Other, err))?;
    if let Some(error) = reply.error {
        return Err(match error.error_code() {
            ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID => {
                PublishError::with_source(PublishErrorKind::WrongLastMessageId, error)
            }
            ErrorCode::STREAM_WRONG_LAST_SEQUENCE => {
                PublishError::with_source(PublishErrorKind::WrongLastSequence, error)
            }
            _ => PublishError::with_source(PublishErrorKind::Other, error),
        });
    }
    Ok(PublishAck {
        stream: reply.stream,
        sequence: reply.seq,
        domain: reply.domain,
        duplicate: reply.duplicate,
        ..PublishAck::default()
    })
}

/// Hands each ack to its waiting sender and sweeps the overdue ones, until
/// the acks' owner is dropped or the connection is closed.
async fn demultiplex(
    mut subscription: async_nats::Subscriber,
    shared: Arc<Shared>,
    tick: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stopped => break,
            message = subscription.next() => {
                let Some(message) = message else { break };
                let number = message
                    .subject
                    .as_str()
                    .rsplit('.')
                    .next()
                    .and_then(|number| number.parse::<u64>().ok());
                let sender = number.and_then(|number| shared.waiting().take(number));
                if let Some(sender) = sender {
                    let _ = sender.send(Ok(message));
                }
            }
            _ = ticks.tick() => {
                let tick = shared.tick.fetch_add(1, Ordering::Relaxed) + 1;
                shared.waiting().sweep(tick);
            }
        }
    }
    let _ = subscription.unsubscribe().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn waiting_with(dues: &[u64]) -> (Waiting, Vec<oneshot::Receiver<Answer>>) {
        let mut waiting = Waiting {
            first: 0,
            slots: VecDeque::new(),
        };
        let receivers = dues
            .iter()
            .map(|due| {
                let (answer, answered) = oneshot::channel();
                waiting.slots.push_back(Slot {
                    due: *due,
                    answer: Some(answer),
                });
                answered
            })
            .collect();
        (waiting, receivers)
    }

    #[test]
    fn an_ack_finds_its_sender_by_number_and_only_once() {
        let (mut waiting, _receivers) = waiting_with(&[10, 10, 10]);
        assert!(waiting.take(1).is_some());
        assert!(waiting.take(1).is_none(), "answered twice");
        assert_eq!(waiting.slots.len(), 3, "an answer behind the front is kept");
        assert!(waiting.take(0).is_some());
        assert_eq!(waiting.first, 2, "answered front slots are dropped");
        assert!(waiting.take(7).is_none(), "a number never sent");
    }

    fn reply(payload: &'static str) -> Message {
        Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            payload: Bytes::from_static(payload.as_bytes()),
            headers: None,
            status: None,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn reads_acks_and_errors_as_async_nats_does() {
        let ack =
            read_ack(&reply(r#"{"stream":"ORDERS","seq":42,"duplicate":true}"#)).expect("ack");
        assert_eq!(
            (ack.stream.as_str(), ack.sequence, ack.duplicate),
            ("ORDERS", 42, true)
        );
        let err = read_ack(&reply(
            r#"{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 7"}}"#,
        ))
        .expect_err("wrong last sequence");
        assert_eq!(err.kind(), PublishErrorKind::WrongLastSequence);
        assert!(err.to_string().contains("wrong last sequence: 7"), "{err}");
        let err = read_ack(&reply(
            r#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"}}"#,
        ))
        .expect_err("other error");
        assert_eq!(err.kind(), PublishErrorKind::Other);
        let mut no_responders = reply("");
        no_responders.status = Some(StatusCode::NO_RESPONDERS);
        assert_eq!(
            read_ack(&no_responders).expect_err("no stream").kind(),
            PublishErrorKind::StreamNotFound
        );
    }

    #[test]
    fn sweeping_times_out_only_the_overdue() {
        let (mut waiting, mut receivers) = waiting_with(&[3, 3, 5]);
        waiting.sweep(3);
        assert!(matches!(receivers[0].try_recv(), Ok(Err(NoAck::TimedOut))));
        assert!(matches!(receivers[1].try_recv(), Ok(Err(NoAck::TimedOut))));
        assert!(receivers[2].try_recv().is_err(), "not yet due");
        assert_eq!(waiting.first, 2);
        assert!(
            waiting.take(0).is_none(),
            "a late ack after its timeout finds nobody"
        );
        assert!(waiting.take(2).is_some());
    }
}
