//! Publish acks on one wildcard inbox per connection, matched to their
//! messages here rather than by async-nats' request machinery.
//!
//! A JetStream publish is a request: the stream answers on the message's
//! reply subject. async-nats' `send_publish` builds that request per message:
//! a random inbox name, an entry in its connection-wide map keyed by that
//! string, a semaphore permit and two timers. Here a publisher's acks come to
//! one subscription `<inbox>.<connection id>.*` and each message's reply
//! subject ends in a sequential number, so the waiting senders are slots in
//! a queue indexed by that number: no hashing, no channel and no timer per
//! message.
//!
//! No task sits between the subscription and the senders (a hop through
//! one cost as much as it saved): whichever ack future is polled reads
//! every ack that has arrived, files each in its slot and wakes its owner
//! (as nats.go's async publisher files acks from the subscription's
//! callback). The last future to read registers its waker with the
//! subscription and with one shared timer at the oldest deadline; when it
//! leaves, it wakes another waiting owner to take over, so acks and
//! timeouts keep being read while anyone waits, and nothing runs while
//! nobody does.
//!
//! What the publisher sees is unchanged: the same `PublishAck` and the same
//! async-nats error kinds (no responders, wrong last sequence, timed out,
//! broken pipe), so its retry, conflict and `OutcomeUnknown` handling stays
//! as it was. A late ack after its timeout is dropped: that publish was
//! already reported as of unknown outcome, never as stored.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::ErrorCode;
use async_nats::{HeaderMap, Message, StatusCode, Subject};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use tokio::time::{Instant, Sleep};

use super::message_buffer::MessageBuffer;

/// Why a waiting sender was answered without an ack.
#[derive(Debug)]
enum NoAck {
    TimedOut,
    /// The subscription ended: the connection or the publisher is gone.
    Closed,
}

type Answer = Result<Message, NoAck>;

enum Slot {
    /// Sent, no answer yet.
    Waiting {
        /// When it is overdue.
        due: Instant,
        /// Whom to wake with the answer, once its future was polled.
        owner: Option<Waker>,
    },
    /// Answered, not yet taken by its future.
    Answered(Answer),
    /// Taken, or given up on by its sender.
    Done,
}

/// The acks still to come, in the order their messages were sent, and the
/// means to read them.
///
/// Slot `i` belongs to reply number `first + i`. Reply numbers only grow and
/// the timeout is the same for all, so the oldest deadline is always the
/// first waiting slot's, at `unanswered` or after.
struct Acks {
    first: u64,
    slots: VecDeque<Slot>,
    /// No slot before this number is waiting: each slot is passed once.
    unanswered: u64,
    /// `None` once it ended or the publisher was dropped.
    subscription: Option<async_nats::Subscriber>,
    /// Fires at the oldest deadline, polled by whoever reads the acks.
    deadline: Option<Pin<Box<Sleep>>>,
    /// Registered with the subscription and the deadline by the last read.
    reader: Option<Waker>,
    /// Where the subjects and replies of the messages sent are written.
    subjects: MessageBuffer,
}

impl Acks {
    fn slot(&mut self, number: u64) -> Option<&mut Slot> {
        let index = usize::try_from(number.checked_sub(self.first)?).ok()?;
        self.slots.get_mut(index)
    }

    /// Adds a waiting slot; its reply number.
    fn push(&mut self, due: Instant) -> u64 {
        self.slots.push_back(Slot::Waiting { due, owner: None });
        self.first + self.slots.len() as u64 - 1
    }

    /// The reply subject of reply `number`: `prefix` and the number, which
    /// `reply_number` reads back. Both parts are ours (an inbox async-nats
    /// made and a decimal number), so the subject is valid.
    fn reply_subject(&mut self, prefix: &str, number: u64) -> Subject {
        self.subjects
            .subject(&[prefix, itoa::Buffer::new().format(number)])
    }

    /// Files `answer` for reply `number`, if its sender still waits.
    fn answer(&mut self, number: u64, answer: Answer, reader: &Waker) {
        let Some(slot) = self.slot(number) else {
            return;
        };
        if let Slot::Waiting { owner, .. } = slot {
            let owner = owner.take();
            *slot = Slot::Answered(answer);
            if let Some(owner) = owner.filter(|owner| !owner.will_wake(reader)) {
                owner.wake();
            }
        }
    }

    /// Takes the answer for reply `number`, once there is one.
    fn take(&mut self, number: u64) -> Option<Answer> {
        let slot = self.slot(number)?;
        if !matches!(slot, Slot::Answered(_)) {
            return None;
        }
        let Slot::Answered(answer) = std::mem::replace(slot, Slot::Done) else {
            return None;
        };
        self.drop_done_front();
        Some(answer)
    }

    /// Gives up on reply `number`; its waker, if it had parked one.
    fn abandon(&mut self, number: u64) -> Option<Waker> {
        let slot = self.slot(number)?;
        let owner = match std::mem::replace(slot, Slot::Done) {
            Slot::Waiting { owner, .. } => owner,
            _ => None,
        };
        self.drop_done_front();
        owner
    }

    fn drop_done_front(&mut self) {
        while matches!(self.slots.front(), Some(Slot::Done)) {
            self.slots.pop_front();
            self.first += 1;
        }
        self.unanswered = self.unanswered.max(self.first);
    }

    /// The oldest waiting slot's number and deadline.
    fn oldest_waiting(&mut self) -> Option<(u64, Instant)> {
        loop {
            let number = self.unanswered;
            match self.slot(number)? {
                Slot::Waiting { due, .. } => return Some((number, *due)),
                _ => self.unanswered += 1,
            }
        }
    }

    /// Reads every ack that has arrived and times out the overdue, with
    /// `cx`'s waker registered to be woken for the next.
    fn read(&mut self, cx: &mut Context<'_>) {
        let reader = cx.waker();
        while let Some(subscription) = self.subscription.as_mut() {
            match subscription.poll_next_unpin(cx) {
                Poll::Ready(Some(message)) => {
                    if let Some(number) = reply_number(&message.subject) {
                        self.answer(number, Ok(message), reader);
                    }
                }
                Poll::Ready(None) => self.close(),
                Poll::Pending => break,
            }
        }
        if !self.reader.as_ref().is_some_and(|r| r.will_wake(reader)) {
            self.reader = Some(reader.clone());
        }
        loop {
            let now = Instant::now();
            while let Some((number, due)) = self.oldest_waiting() {
                if due > now {
                    break;
                }
                self.answer(number, Err(NoAck::TimedOut), reader);
            }
            let Some((_, due)) = self.oldest_waiting() else {
                return;
            };
            let deadline = self
                .deadline
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
            if deadline.deadline() != due {
                // Deadlines only move forward: the runtime's timer wheel is
                // not touched until the earlier one fires.
                deadline.as_mut().reset(due);
            }
            if deadline.as_mut().poll(cx).is_pending() {
                return;
            }
        }
    }

    /// Ends reading: every waiting sender is answered `Closed`.
    fn close(&mut self) {
        // Dropping the subscription unsubscribes it.
        self.subscription = None;
        self.deadline = None;
        for slot in &mut self.slots {
            if let Slot::Waiting { owner, .. } = slot {
                if let Some(owner) = owner.take() {
                    owner.wake();
                }
                *slot = Slot::Answered(Err(NoAck::Closed));
            }
        }
    }

    /// A future that read the acks leaves: if the reader's waker is its
    /// own, another waiting owner is woken to read from now on.
    fn hand_over(&mut self, leaving: &Waker) {
        if !self.reader.as_ref().is_some_and(|r| r.will_wake(leaving)) {
            return;
        }
        let next = self.slots.iter().find_map(|slot| match slot {
            Slot::Waiting {
                owner: Some(owner), ..
            } if !owner.will_wake(leaving) => Some(owner.clone()),
            _ => None,
        });
        if let Some(next) = next {
            self.reader = None;
            next.wake();
        }
    }
}

struct Shared {
    acks: Mutex<Acks>,
}

impl Shared {
    fn acks(&self) -> MutexGuard<'_, Acks> {
        // The lock guards queue operations that leave it consistent at every
        // step, so a poisoned lock is still usable.
        self.acks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's publish acks.
pub(crate) struct PublishAcks {
    nats: async_nats::Client,
    /// `<inbox>.<id>.`; a message's reply subject is this and its number.
    prefix: String,
    shared: Arc<Shared>,
    timeout: Duration,
}

impl std::fmt::Debug for PublishAcks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishAcks")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Ends the subscription with the publisher, so that it does not keep
/// receiving after the client is gone.
impl Drop for PublishAcks {
    fn drop(&mut self) {
        self.shared.acks().close();
    }
}

impl PublishAcks {
    /// Subscribes the connection's ack inbox.
    pub(crate) async fn start(
        nats: async_nats::Client,
        timeout: Duration,
    ) -> Result<PublishAcks, async_nats::SubscribeError> {
        let inbox = nats.new_inbox();
        let prefix = format!("{inbox}.");
        let subscription = nats.subscribe(format!("{inbox}.*")).await?;
        let shared = Arc::new(Shared {
            acks: Mutex::new(Acks {
                first: 0,
                slots: VecDeque::new(),
                unanswered: 0,
                subscription: Some(subscription),
                deadline: None,
                reader: None,
                subjects: MessageBuffer::for_subjects(),
            }),
        });
        Ok(PublishAcks {
            nats,
            prefix,
            shared,
            timeout,
        })
    }

    /// Publishes a message to be stored; the returned future resolves to
    /// the stream's ack, as async-nats' `send_publish` would. The subject
    /// and the reply go out as slices of the shared subject buffer (see
    /// [`MessageBuffer`]).
    pub(crate) async fn send(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<AckFuture, PublishError> {
        let (number, subject, reply) = {
            let mut acks = self.shared.acks();
            if acks.subscription.is_none() {
                return Err(PublishError::new(PublishErrorKind::BrokenPipe));
            }
            // The reader may be busy sending rather than awaiting its ack:
            // what has arrived is filed now, for the others waiting.
            if let Some(reader) = acks.reader.clone() {
                acks.read(&mut Context::from_waker(&reader));
            }
            let number = acks.push(Instant::now() + self.timeout);
            let subject = acks.subjects.subject(&[subject]);
            let reply = acks.reply_subject(&self.prefix, number);
            (number, subject, reply)
        };
        let pending = AckFuture {
            shared: self.shared.clone(),
            number,
            settled: false,
        };

        // Boxed rather than pinned here, so that the caller's future stays
        // small (see `NatsTransport::send`).
        let mut publish = Box::pin(
            self.nats
                .publish_with_reply_and_headers(subject, reply, headers, payload),
        );
        // The connection takes it at once unless its buffer is full (a
        // reconnect): only then is a timer worth its cost.
        let sent = match publish.as_mut().now_or_never() {
            Some(sent) => sent.map_err(send_failure),
            None => match tokio::time::timeout(self.timeout, publish).await {
                Ok(sent) => sent.map_err(send_failure),
                Err(_) => Err(PublishError::new(PublishErrorKind::TimedOut)),
            },
        };
        // On an error `pending` is dropped, which gives up its slot.
        sent.map(|()| pending)
    }
}

/// The number a reply subject ends in: which sender the ack is for.
fn reply_number(subject: &str) -> Option<u64> {
    subject.rsplit('.').next()?.parse().ok()
}

/// The stream's answer to one message sent.
pub(crate) struct AckFuture {
    shared: Arc<Shared>,
    number: u64,
    settled: bool,
}

impl Future for AckFuture {
    type Output = Result<PublishAck, PublishError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shared = self.shared.clone();
        let mut acks = shared.acks();
        let answer = match acks.take(self.number) {
            Some(answer) => answer,
            None => {
                acks.read(cx);
                match acks.take(self.number) {
                    Some(answer) => answer,
                    None => {
                        if let Some(Slot::Waiting { owner, .. }) = acks.slot(self.number) {
                            if !owner.as_ref().is_some_and(|o| o.will_wake(cx.waker())) {
                                *owner = Some(cx.waker().clone());
                            }
                        }
                        return Poll::Pending;
                    }
                }
            }
        };
        acks.hand_over(cx.waker());
        drop(acks);
        self.settled = true;
        Poll::Ready(match answer {
            Ok(message) => read_ack(&message),
            Err(NoAck::TimedOut) => Err(PublishError::new(PublishErrorKind::TimedOut)),
            Err(NoAck::Closed) => Err(PublishError::new(PublishErrorKind::BrokenPipe)),
        })
    }
}

/// A sender that stops waiting gives up its slot, and hands the reading
/// over if it was the one reading.
impl Drop for AckFuture {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut acks = self.shared.acks();
        if let Some(owner) = acks.abandon(self.number) {
            acks.hand_over(&owner);
        }
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

#[cfg(test)]
mod tests;
