//! A durable pull consumer: what it delivers next and what settling does, as
//! nats-server's `consumer.go` does it. The server's names are kept in the
//! comments (`o.sseq`, `o.rdc`, `checkPending`, ...) to make the two easy to
//! compare.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

use super::error::MemoryErrorKind;
use super::message::{Advisory, DeliveryInfo, Settlement, StoredMessage};
use super::subject;

/// The server's default ack wait.
const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(30);
/// The server's default max ack pending.
const DEFAULT_MAX_ACK_PENDING: i64 = 1000;

/// Where a new consumer starts in its stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliverPolicy {
    /// From the first message.
    #[default]
    All,
    /// Only messages stored after the consumer was created.
    New,
    /// From this stream sequence on.
    ByStartSequence(u64),
}

/// A durable pull consumer's configuration (the part of async-nats's
/// `consumer::pull::Config` the engine implements; acks are always explicit).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerConfig {
    /// The durable name, shared by every caller of [`next`](super::MemoryJetStream::next).
    pub durable_name: String,
    /// Subjects to deliver; empty means every subject of the stream. They may
    /// not overlap each other.
    pub filter_subjects: Vec<String>,
    /// How long a delivery may stay unacknowledged before it is redelivered.
    /// With `backoff`, the server replaces it with `backoff[0]`.
    pub ack_wait: Duration,
    /// Deliveries per message at most; -1 (or 0) means unlimited.
    pub max_deliver: i64,
    /// Waits before redelivery after the 1st, 2nd, ... delivery when a delivery
    /// is not acknowledged (the last one repeats). A Nak with a delay is
    /// measured as the server measures it: from `now + delay - ack_wait`
    /// against the current step, so after the n-th delivery it waits
    /// `delay + backoff[n-1] - backoff[0]`.
    pub backoff: Vec<Duration>,
    /// Unacknowledged deliveries at most before new messages stop flowing
    /// (redeliveries still flow); 0 means the default of 1000, -1 unlimited.
    pub max_ack_pending: i64,
    /// Where the consumer starts.
    pub deliver_policy: DeliverPolicy,
}

impl ConsumerConfig {
    /// A configuration for the durable `name` with the server's defaults.
    pub fn new(durable_name: impl Into<String>) -> Self {
        Self {
            durable_name: durable_name.into(),
            filter_subjects: Vec::new(),
            ack_wait: DEFAULT_ACK_WAIT,
            max_deliver: -1,
            backoff: Vec::new(),
            max_ack_pending: DEFAULT_MAX_ACK_PENDING,
            deliver_policy: DeliverPolicy::All,
        }
    }

    /// The configuration with the server's defaults applied
    /// (`setConsumerConfigDefaults`), or why the server would refuse it.
    pub(crate) fn normalized(mut self) -> Result<Self, MemoryErrorKind> {
        if !subject::is_valid_name(&self.durable_name) {
            return Err(MemoryErrorKind::InvalidName(self.durable_name));
        }
        if let Some(invalid) = self
            .filter_subjects
            .iter()
            .find(|filter| !subject::is_valid_pattern(filter))
        {
            return Err(MemoryErrorKind::InvalidSubject(invalid.clone()));
        }
        let filters = &self.filter_subjects;
        let overlapping = filters.iter().enumerate().any(|(i, first)| {
            filters[i + 1..]
                .iter()
                .any(|second| subject::overlap(first, second))
        });
        if overlapping {
            return Err(MemoryErrorKind::OverlappingFilterSubjects);
        }
        if self.max_deliver == 0 || self.max_deliver < -1 {
            self.max_deliver = -1;
        }
        if self.ack_wait.is_zero() {
            self.ack_wait = DEFAULT_ACK_WAIT;
        }
        if let Some(first) = self.backoff.first() {
            self.ack_wait = *first;
        }
        if self.max_ack_pending == 0 {
            self.max_ack_pending = DEFAULT_MAX_ACK_PENDING;
        }
        let steps = i64::try_from(self.backoff.len()).unwrap_or(i64::MAX);
        if steps > 0 && self.max_deliver != -1 && steps > self.max_deliver {
            return Err(MemoryErrorKind::MaxDeliverBackoff);
        }
        Ok(self)
    }

    /// Refuses what the server does not let an update change
    /// (`checkNewConsumerConfig`).
    fn check_update(&self, updated: &ConsumerConfig) -> Result<(), MemoryErrorKind> {
        use DeliverPolicy::ByStartSequence;
        match (self.deliver_policy, updated.deliver_policy) {
            (ByStartSequence(old), ByStartSequence(new)) if old != new => {
                Err(MemoryErrorKind::NotUpdatable("start sequence"))
            }
            (old, new) if std::mem::discriminant(&old) != std::mem::discriminant(&new) => {
                Err(MemoryErrorKind::NotUpdatable("deliver policy"))
            }
            _ => Ok(()),
        }
    }
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self::new("")
    }
}

/// A consumer sequence and the stream sequence that goes with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SequencePair {
    /// The consumer's sequence (one per delivery).
    pub consumer_sequence: u64,
    /// The stream's sequence.
    pub stream_sequence: u64,
}

/// A consumer's configuration and state, as the server's consumer info.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsumerInfo {
    /// The stream.
    pub stream: String,
    /// The durable name.
    pub name: String,
    /// The configuration, defaults applied.
    pub config: ConsumerConfig,
    /// The last delivery, and the stream sequence the consumer has looked at.
    pub delivered: SequencePair,
    /// Everything at or below it is acknowledged or terminated (a message
    /// past max deliver leaves pending but not the floor behind it, as on
    /// the server).
    pub ack_floor: SequencePair,
    /// Deliveries waiting for an ack.
    pub num_ack_pending: usize,
    /// Messages delivered more than once and not acknowledged yet.
    pub num_redelivered: usize,
    /// Callers waiting in [`next`](super::MemoryJetStream::next).
    pub num_waiting: usize,
    /// Messages matching the filter not delivered yet.
    pub num_pending: u64,
}

/// An unacknowledged delivery (the server's `Pending`). Its timestamp is
/// `since - early`: a Nak with a delay sets it to `now + delay - ack_wait`,
/// which may lie before any `Instant`.
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// The consumer sequence of the first delivery (kept on redelivery).
    consumer_sequence: u64,
    since: Instant,
    early: Duration,
}

/// A consumer's state inside the engine.
#[derive(Debug)]
pub(crate) struct Consumer {
    pub(crate) config: ConsumerConfig,
    /// Next stream sequence to look at for new messages (`o.sseq`).
    next_stream_sequence: u64,
    /// Next consumer sequence to hand out (`o.dseq`).
    next_consumer_sequence: u64,
    /// (`o.adflr`, `o.asflr`).
    ack_floor: SequencePair,
    /// By stream sequence (`o.pending`).
    pending: BTreeMap<u64, Pending>,
    /// Deliveries minus one, per redelivered stream sequence (`o.rdc`).
    redelivered: HashMap<u64, u64>,
    /// Stream sequences due for redelivery, in the order they became due (`o.rdq`).
    redeliver_queue: VecDeque<u64>,
    /// Callers blocked in `next`.
    pub(crate) waiting: usize,
}

/// What a consumer needs to know of its stream.
pub(crate) struct StreamView<'a> {
    pub(crate) name: &'a str,
    pub(crate) messages: &'a [StoredMessage],
}

impl Consumer {
    /// A consumer starting where `config.deliver_policy` says.
    pub(crate) fn new(config: ConsumerConfig, stream_last_sequence: u64) -> Self {
        let next_stream_sequence = match config.deliver_policy {
            DeliverPolicy::All => 1,
            DeliverPolicy::New => stream_last_sequence + 1,
            DeliverPolicy::ByStartSequence(start) => start.max(1),
        };
        Self {
            config,
            next_stream_sequence,
            next_consumer_sequence: 1,
            ack_floor: SequencePair {
                consumer_sequence: 0,
                stream_sequence: next_stream_sequence - 1,
            },
            pending: BTreeMap::new(),
            redelivered: HashMap::new(),
            redeliver_queue: VecDeque::new(),
            waiting: 0,
        }
    }

    /// Applies an updated configuration, if the server would.
    pub(crate) fn update(&mut self, config: ConsumerConfig) -> Result<(), MemoryErrorKind> {
        self.config.check_update(&config)?;
        self.config = config;
        Ok(())
    }

    pub(crate) fn info(&self, stream: &StreamView<'_>) -> ConsumerInfo {
        ConsumerInfo {
            stream: stream.name.to_owned(),
            name: self.config.durable_name.clone(),
            config: self.config.clone(),
            delivered: SequencePair {
                consumer_sequence: self.next_consumer_sequence - 1,
                stream_sequence: self.next_stream_sequence - 1,
            },
            ack_floor: self.ack_floor,
            num_ack_pending: self.pending.len(),
            num_redelivered: self.redelivered.len(),
            num_waiting: self.waiting,
            num_pending: self.num_pending(stream.messages),
        }
    }

    /// Moves pending deliveries whose ack wait, backoff step or Nak delay is
    /// over to the redelivery queue (`checkPending`).
    pub(crate) fn expire(&mut self, now: Instant, stream: &str, advisories: &mut Vec<Advisory>) {
        if self.pending.is_empty() {
            return;
        }
        let mut expired = Vec::new();
        let sequences: Vec<u64> = self.pending.keys().copied().collect();
        for sequence in sequences {
            if self.redeliver_queue.contains(&sequence) {
                continue;
            }
            match self.due(sequence) {
                Some(due)
                    if due <= now && !self.has_max_deliveries(sequence, stream, advisories) =>
                {
                    expired.push((due, sequence));
                }
                _ => {}
            }
        }
        // The server's timer fires at each deadline and queues what expired
        // then in stream order; in virtual time that is (deadline, sequence).
        expired.sort();
        self.redeliver_queue
            .extend(expired.into_iter().map(|(_, sequence)| sequence));
        if self.pending.is_empty() {
            self.redeliver_queue.clear();
        }
    }

    /// When the next pending delivery not yet queued for redelivery is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.pending
            .keys()
            .filter(|sequence| !self.redeliver_queue.contains(sequence))
            .filter_map(|sequence| self.due(*sequence))
            .min()
    }

    /// The next delivery for a waiting caller, if any (`getNextMsg`):
    /// redeliveries first, then new messages unless max ack pending is reached.
    pub(crate) fn take_next(
        &mut self,
        now: Instant,
        stream: &StreamView<'_>,
        advisories: &mut Vec<Advisory>,
    ) -> Option<(StoredMessage, DeliveryInfo)> {
        while let Some(sequence) = self.redeliver_queue.pop_front() {
            let deliveries = self.increment_deliveries(sequence);
            let max_deliver = u64::try_from(self.config.max_deliver).unwrap_or(0);
            if max_deliver > 0 && deliveries > max_deliver {
                if deliveries == max_deliver + 1 {
                    advisories.push(self.max_deliveries_advisory(
                        stream.name,
                        sequence,
                        max_deliver,
                    ));
                }
                // Out of pending, but not acked: the server leaves the ack
                // floor where it is (seen on 2.15.1 in tests/conformance).
                self.pending.remove(&sequence);
                continue;
            }
            let message = message_at(stream.messages, sequence)?.clone();
            return Some(self.deliver(now, stream, message, deliveries));
        }
        let limit = usize::try_from(self.config.max_ack_pending).unwrap_or(0);
        if limit > 0 && self.pending.len() >= limit {
            return None;
        }
        let start = index_of(self.next_stream_sequence);
        let next = stream
            .messages
            .get(start..)
            .unwrap_or_default()
            .iter()
            .find(|message| self.wants(&message.subject))
            .cloned();
        match next {
            Some(message) => {
                self.next_stream_sequence = message.sequence + 1;
                Some(self.deliver(now, stream, message, 1))
            }
            None => {
                // The server moves its pointer to the stream's end on an empty pull.
                let last = stream.messages.len() as u64;
                self.next_stream_sequence = self.next_stream_sequence.max(last + 1);
                None
            }
        }
    }

    /// Acks, naks or extends a delivery (`processAckMsg`, `processNak`,
    /// `progressUpdate`). Settling what is no longer pending does nothing.
    pub(crate) fn settle(
        &mut self,
        now: Instant,
        delivery: &DeliveryInfo,
        settlement: Settlement,
        advisories: &mut Vec<Advisory>,
    ) {
        let sequence = delivery.stream_sequence;
        match settlement {
            Settlement::Ack => self.ack(sequence),
            Settlement::InProgress => {
                if let Some(pending) = self.pending.get_mut(&sequence) {
                    pending.since = now;
                    pending.early = Duration::ZERO;
                }
            }
            Settlement::Nak(delay) => {
                if delivery.consumer_sequence <= self.ack_floor.consumer_sequence
                    || !self.pending.contains_key(&sequence)
                {
                    return;
                }
                advisories.push(Advisory::Nak {
                    stream: delivery.stream.clone(),
                    consumer: delivery.consumer.clone(),
                    stream_sequence: sequence,
                    deliveries: delivery.delivered,
                });
                let ack_wait = self.config.ack_wait;
                match delay {
                    Some(delay) => {
                        self.redeliver_queue.retain(|queued| *queued != sequence);
                        if let Some(pending) = self.pending.get_mut(&sequence) {
                            // The server offsets from "now - ack wait", so the
                            // delay is counted against the current backoff step.
                            pending.since = now.checked_add(delay).unwrap_or(now);
                            pending.early = ack_wait;
                        }
                    }
                    None if !self.redeliver_queue.contains(&sequence) => {
                        self.redeliver_queue.push_back(sequence);
                    }
                    None => {}
                }
            }
        }
    }

    /// Terminates a delivery: acked, then the advisory, pending or not
    /// (`processTerm`).
    pub(crate) fn terminate(&mut self, delivery: &DeliveryInfo, reason: &str) -> Advisory {
        self.ack(delivery.stream_sequence);
        Advisory::Terminated {
            stream: delivery.stream.clone(),
            consumer: delivery.consumer.clone(),
            stream_sequence: delivery.stream_sequence,
            deliveries: delivery.delivered,
            reason: reason.to_owned(),
        }
    }

    fn ack(&mut self, sequence: u64) {
        if let Some(pending) = self.pending.remove(&sequence) {
            self.move_ack_floor(pending.consumer_sequence, sequence);
        }
        self.redelivered.remove(&sequence);
        self.redeliver_queue.retain(|queued| *queued != sequence);
    }

    fn deliver(
        &mut self,
        now: Instant,
        stream: &StreamView<'_>,
        message: StoredMessage,
        deliveries: u64,
    ) -> (StoredMessage, DeliveryInfo) {
        let consumer_sequence = self.next_consumer_sequence;
        self.next_consumer_sequence += 1;
        // `trackPending`: a redelivery keeps its first consumer sequence.
        let pending = self.pending.entry(message.sequence).or_insert(Pending {
            consumer_sequence,
            since: now,
            early: Duration::ZERO,
        });
        pending.since = now;
        pending.early = Duration::ZERO;
        let info = DeliveryInfo {
            stream: stream.name.to_owned(),
            consumer: self.config.durable_name.clone(),
            stream_sequence: message.sequence,
            consumer_sequence,
            delivered: deliveries,
            pending: self.num_pending(stream.messages),
            published: message.published,
        };
        (message, info)
    }

    /// When `sequence` is due for redelivery; `None` if never (a wait too long
    /// for the clock).
    fn due(&self, sequence: u64) -> Option<Instant> {
        let pending = self.pending.get(&sequence)?;
        let deadline = pending.since.checked_add(self.redelivery_wait(sequence))?;
        Some(deadline.checked_sub(pending.early).unwrap_or(pending.since))
    }

    /// The ack wait, or with backoff the step for this many redeliveries so far.
    fn redelivery_wait(&self, sequence: u64) -> Duration {
        let redeliveries = self.redelivered.get(&sequence).copied().unwrap_or(0);
        let step = usize::try_from(redeliveries).unwrap_or(usize::MAX);
        match self.config.backoff.len() {
            0 => self.config.ack_wait,
            steps => self.config.backoff[step.min(steps - 1)],
        }
    }

    /// The server's `deliveryCount`: redeliveries so far, but at least 1.
    fn delivery_count(&self, sequence: u64) -> u64 {
        self.redelivered.get(&sequence).copied().unwrap_or(0).max(1)
    }

    /// The server's `incDeliveryCount`: this redelivery's count.
    fn increment_deliveries(&mut self, sequence: u64) -> u64 {
        let redeliveries = self.redelivered.entry(sequence).or_insert(0);
        *redeliveries += 1;
        *redeliveries + 1
    }

    /// The server's `hasMaxDeliveries`, run as a delivery expires. With its
    /// delivery count it only catches `max_deliver == 1` here; higher limits are
    /// caught in `take_next`, when a caller is waiting, as on the server.
    fn has_max_deliveries(
        &mut self,
        sequence: u64,
        stream: &str,
        advisories: &mut Vec<Advisory>,
    ) -> bool {
        let max_deliver = u64::try_from(self.config.max_deliver).unwrap_or(0);
        if max_deliver == 0 {
            return false;
        }
        let deliveries = self.delivery_count(sequence);
        if deliveries < max_deliver {
            return false;
        }
        if deliveries == max_deliver {
            advisories.push(self.max_deliveries_advisory(stream, sequence, deliveries));
        }
        // As in `take_next`: the ack floor stays.
        self.pending.remove(&sequence);
        self.redelivered.insert(sequence, deliveries);
        true
    }

    fn max_deliveries_advisory(&self, stream: &str, sequence: u64, deliveries: u64) -> Advisory {
        Advisory::MaxDeliveries {
            stream: stream.to_owned(),
            consumer: self.config.durable_name.clone(),
            stream_sequence: sequence,
            deliveries,
        }
    }

    /// The server's `moveAckFloor`, after `stream_sequence` left pending.
    fn move_ack_floor(&mut self, consumer_sequence: u64, stream_sequence: u64) {
        if self.pending.is_empty() {
            self.ack_floor = self.delivered();
        } else if consumer_sequence == self.ack_floor.consumer_sequence + 1 {
            self.ack_floor = SequencePair {
                consumer_sequence,
                stream_sequence,
            };
            let above = self
                .pending
                .range(stream_sequence + 1..self.next_stream_sequence)
                .next();
            if let Some((next_pending, pending)) = above {
                if pending.consumer_sequence > 0 {
                    self.ack_floor = SequencePair {
                        consumer_sequence: pending.consumer_sequence - 1,
                        stream_sequence: next_pending - 1,
                    };
                }
            }
        }
    }

    fn delivered(&self) -> SequencePair {
        SequencePair {
            consumer_sequence: self.next_consumer_sequence - 1,
            stream_sequence: self.next_stream_sequence - 1,
        }
    }

    fn wants(&self, subject: &str) -> bool {
        self.config.filter_subjects.is_empty()
            || self
                .config
                .filter_subjects
                .iter()
                .any(|filter| subject::matches(filter, subject))
    }

    fn num_pending(&self, messages: &[StoredMessage]) -> u64 {
        let start = index_of(self.next_stream_sequence);
        messages
            .get(start..)
            .unwrap_or_default()
            .iter()
            .filter(|message| self.wants(&message.subject))
            .count() as u64
    }
}

/// Index in a stream's messages of `sequence` (sequences start at 1).
fn index_of(sequence: u64) -> usize {
    usize::try_from(sequence.saturating_sub(1)).unwrap_or(usize::MAX)
}

fn message_at(messages: &[StoredMessage], sequence: u64) -> Option<&StoredMessage> {
    messages.get(index_of(sequence))
}
