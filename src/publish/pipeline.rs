//! Publishing many events pipelined: a bounded window of acks in flight,
//! settled oldest first against one deadline timer.

use std::collections::VecDeque;
use std::future::Future;

use tokio::sync::broadcast;
use tracing::Instrument;

use super::attempt::{settled, AttemptError};
use super::prepare::{OneType, Prepared};
use super::{PublishError, PublishErrorKind, PublishOptions, Publisher, Receipt};
use crate::client::PermissionViolation;
use crate::event::Event;
use crate::metrics::HeldBackCounts;
use crate::transport::{PendingStore, StoreFailure, StoreFailureKind};

/// Events prepared before they are sent together: an eighth of the window,
/// at most 32. Enough for the connection to write several per system call;
/// few enough that the window stays nearly full and the first of them does
/// not wait long.
fn send_burst(window: usize) -> usize {
    (window / 8).clamp(1, 32)
}

/// The state of one `publish_many` call.
struct Pipeline<'a> {
    /// One slot per input event, filled as results come in.
    results: Vec<Option<Result<Receipt, PublishError>>>,
    /// Events to try again, one by one, once the pipeline is empty.
    retry_later: Vec<(usize, Prepared<'a>)>,
    /// Sent events awaiting their ack, oldest first.
    in_flight: VecDeque<(usize, Prepared<'a>, PendingStore)>,
    violations: broadcast::Receiver<PermissionViolation>,
    /// The ack deadline of the oldest event in flight. One timer for the
    /// whole pipeline, moved forward for each ack: deadlines only grow, and
    /// moving a timer forward does not touch the runtime's timer wheel,
    /// where a timer per ack would register and deregister every time.
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// Counts not yet added to their counters.
    uncounted: HeldBackCounts,
}

impl Publisher {
    /// Publishes many events pipelined: up to `window` acks are awaited at
    /// once, and sending waits (backpressure) while the window is full.
    /// Returns one result per event, in input order.
    ///
    /// Without faults the events are stored in input order. An event whose
    /// attempt timed out or met no stream leader is retried (same id) after the
    /// events already in flight, so under faults each event is still stored
    /// once, but a retried one may land after later ones.
    ///
    /// ```no_run
    /// # use serde::{Deserialize, Serialize};
    /// # #[derive(Serialize, Deserialize)]
    /// # struct Tick { n: u64 }
    /// # impl jetevents::Event for Tick { const TYPE: &'static str = "demo.clock.ticked.v1"; }
    /// # async fn run(publisher: jetevents::publish::Publisher) {
    /// let ticks: Vec<Tick> = (0..10_000).map(|n| Tick { n }).collect();
    /// let results = publisher.publish_many(&ticks, 256).await;
    /// assert!(results.iter().all(|r| r.is_ok()));
    /// # }
    /// ```
    pub async fn publish_many<E: Event>(
        &self,
        events: &[E],
        window: usize,
    ) -> Vec<Result<Receipt, PublishError>> {
        let window = window.clamp(1, crate::client::MAX_ACKS_IN_FLIGHT);
        let mut results: Vec<Option<Result<Receipt, PublishError>>> =
            Vec::with_capacity(events.len());
        results.resize_with(events.len(), || None);
        let options = PublishOptions::default();
        // The type is the same for every event: parsed and encoded once.
        let one_type = OneType::of::<E>(self);
        let mut pipeline = Pipeline {
            results,
            retry_later: Vec::new(),
            in_flight: VecDeque::with_capacity(window),
            violations: self.client.permission_violations(),
            deadline: Box::pin(tokio::time::sleep(self.client.config().ack_timeout)),
            uncounted: HeldBackCounts::new(self.client.metrics().clone()),
        };

        let burst = send_burst(window);
        let mut ready = Vec::with_capacity(burst);
        for (index, event) in events.iter().enumerate() {
            if pipeline.in_flight.len() + ready.len() >= window {
                self.send_ready(&mut pipeline, &mut ready).await;
                // Room for a whole burst, not for one event: the next
                // events then go out together.
                while pipeline.in_flight.len() > window - burst {
                    self.settle_oldest(&mut pipeline).await;
                }
            }
            match self.prepare_one_of_many(&one_type, event, &options).await {
                Ok(prepared) => ready.push((index, prepared)),
                Err(err) => pipeline.results[index] = Some(Err(err)),
            }
            if ready.len() >= burst {
                self.send_ready(&mut pipeline, &mut ready).await;
            }
        }
        self.send_ready(&mut pipeline, &mut ready).await;
        while !pipeline.in_flight.is_empty() {
            self.settle_oldest(&mut pipeline).await;
        }
        pipeline.uncounted.add();
        let Pipeline {
            mut results,
            retry_later,
            ..
        } = pipeline;
        for (index, prepared) in retry_later {
            let span = prepared.span.clone();
            results[index] = Some(self.send_with_retries(prepared).instrument(span).await);
        }
        results
            .into_iter()
            .map(|result| {
                result.unwrap_or_else(|| {
                    Err(PublishError::new(PublishErrorKind::OutcomeUnknown {
                        attempts: 0,
                    }))
                })
            })
            .collect()
    }

    /// Sends the prepared events back to back, with no encoding between
    /// them: the connection's task, woken by the first, finds more of them
    /// queued and writes them to the socket together, and the server reads
    /// them together (its CPU per event measured about 10% lower, compare
    /// scenario 1's "server CPU").
    async fn send_ready<'a>(
        &self,
        pipeline: &mut Pipeline<'a>,
        ready: &mut Vec<(usize, Prepared<'a>)>,
    ) {
        for (index, mut prepared) in ready.drain(..) {
            // The ack deadline counts from the send.
            prepared.started = std::time::Instant::now();
            match self.send(&mut prepared).await {
                Ok(ack) => {
                    pipeline.uncounted.sent();
                    pipeline.in_flight.push_back((index, prepared, ack));
                }
                Err(AttemptError::Final(err)) => {
                    self.record(&prepared, Some(&err));
                    pipeline.results[index] = Some(settled(prepared, Err(err)));
                }
                Err(AttemptError::Retryable { .. }) => pipeline.retry_later.push((index, prepared)),
            }
        }
        pipeline.uncounted.add();
    }

    /// Awaits the oldest ack in flight and files its result.
    async fn settle_oldest(&self, pipeline: &mut Pipeline<'_>) {
        let Some((index, prepared, ack)) = pipeline.in_flight.pop_front() else {
            return;
        };
        // async-nats starts an ack's timer when the ack is first awaited, and
        // the window awaits its acks one after another: after a server crash
        // that would add up to window x ack timeout. Count from the send.
        let due =
            tokio::time::Instant::from_std(prepared.started) + self.client.config().ack_timeout;
        let timed = {
            let awaited = self.await_ack(&prepared, ack, &mut pipeline.violations);
            let mut awaited = std::pin::pin!(awaited);
            // When the ack has arrived already, the timer is not touched.
            let ready = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(match awaited.as_mut().poll(cx) {
                    std::task::Poll::Ready(outcome) => Some(outcome),
                    std::task::Poll::Pending => None,
                })
            })
            .await;
            match ready {
                Some(outcome) => Some(outcome),
                None => {
                    pipeline.deadline.as_mut().reset(due);
                    tokio::select! {
                        biased;
                        outcome = awaited => Some(outcome),
                        () = pipeline.deadline.as_mut() => None,
                    }
                }
            }
        };
        let outcome = match timed {
            Some(outcome) => outcome,
            None => Err(AttemptError::Retryable {
                timed_out: true,
                source: StoreFailure {
                    kind: StoreFailureKind::TimedOut,
                    source: "no ack within the ack timeout".into(),
                },
            }),
        };
        pipeline.uncounted.settled();
        let result = match outcome {
            Ok(ack) => Ok(ack),
            Err(AttemptError::Final(err)) => Err(err),
            Err(AttemptError::Retryable { .. }) => {
                // Settled (and recorded) by the retry after the pipeline.
                pipeline.retry_later.push((index, prepared));
                return;
            }
        };
        match &result {
            Ok(_) => {
                let attributes = self.record_settled(&prepared, None);
                pipeline.uncounted.stored(attributes);
            }
            Err(err) => self.record(&prepared, Some(err)),
        }
        pipeline.results[index] = Some(settled(prepared, result));
    }
}
