//! Live fan-out: one ordered JetStream consumer per distinct set of filter
//! subjects, shared by every client that asks for it through a broadcast
//! channel. The channel's ring is shared memory; a client that falls more than
//! its capacity behind sees `Lagged` and is disconnected as slow.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_nats::jetstream::consumer::{pull::OrderedConfig, DeliverPolicy};
use async_nats::jetstream::stream::Stream as JetStream;
use futures_util::StreamExt;
use tokio::sync::{broadcast, watch};

use crate::event::StreamEvent;

type Sender = broadcast::Sender<Arc<StreamEvent>>;

struct Hub {
    sender: Sender,
    /// `true` once the consumer exists: everything stored after that is broadcast.
    started: watch::Receiver<bool>,
}

/// The live subscriptions of one stream, by filter subjects.
#[derive(Clone)]
pub(crate) struct Hubs {
    stream: JetStream,
    capacity: usize,
    hubs: Arc<Mutex<HashMap<Vec<String>, Hub>>>,
}

/// A client's share of a live subscription.
pub(crate) struct LiveFeed {
    pub(crate) receiver: broadcast::Receiver<Arc<StreamEvent>>,
}

impl Hubs {
    pub(crate) fn new(stream: JetStream, capacity: usize) -> Self {
        Self {
            stream,
            capacity,
            hubs: Arc::default(),
        }
    }

    /// Joins (or starts) the live subscription of `subjects`. Returns once the
    /// subscription broadcasts every event stored from now on, so that a
    /// catch-up read up to the stream's end afterwards leaves no gap.
    pub(crate) async fn join(&self, subjects: &[String]) -> LiveFeed {
        let (receiver, mut started) = {
            let mut hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
            match hubs.get(subjects) {
                Some(hub) => (hub.sender.subscribe(), hub.started.clone()),
                None => {
                    let (sender, receiver) = broadcast::channel(self.capacity);
                    let (started_tx, started) = watch::channel(false);
                    hubs.insert(
                        subjects.to_vec(),
                        Hub {
                            sender: sender.clone(),
                            started: started.clone(),
                        },
                    );
                    tokio::spawn(self.clone().run(subjects.to_vec(), sender, started_tx));
                    (receiver, started)
                }
            }
        };
        // A hub that fails to start drops its watch sender: the feed then ends
        // as closed, and the client is told to reconnect.
        let _ = started.wait_for(|started| *started).await;
        LiveFeed { receiver }
    }

    async fn run(self, subjects: Vec<String>, sender: Sender, started: watch::Sender<bool>) {
        if let Err(error) = self.forward(&subjects, &sender, started).await {
            tracing::warn!(%error, ?subjects, "live subscription ended");
            self.remove(&subjects, &sender);
        }
    }

    async fn forward(
        &self,
        subjects: &[String],
        sender: &Sender,
        started: watch::Sender<bool>,
    ) -> Result<(), async_nats::Error> {
        let info = self.stream.get_info().await?;
        let consumer = self
            .stream
            .create_consumer(OrderedConfig {
                filter_subjects: subjects.to_vec(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: info.state.last_sequence + 1,
                },
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        let _ = started.send(true);
        let mut idle = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else { return Ok(()) };
                    let message = message?;
                    if let Some(event) = StreamEvent::from_message(&message) {
                        let _ = sender.send(Arc::new(event));
                    }
                }
                _ = idle.tick() => {}
            }
            if self.retire_if_unused(subjects, sender) {
                return Ok(());
            }
        }
    }

    /// Removes the hub when nobody listens; under the map's lock, so a client
    /// joining at the same moment either finds it alive or starts a new one.
    fn retire_if_unused(&self, subjects: &[String], sender: &Sender) -> bool {
        let mut hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
        if sender.receiver_count() == 0 {
            remove_own(&mut hubs, subjects, sender);
            return true;
        }
        false
    }

    fn remove(&self, subjects: &[String], sender: &Sender) {
        let mut hubs = self.hubs.lock().unwrap_or_else(PoisonError::into_inner);
        remove_own(&mut hubs, subjects, sender);
    }

    /// How many live subscriptions are open (one per distinct filter).
    pub(crate) fn len(&self) -> usize {
        self.hubs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Removes the hub of `subjects` only if it is still the one of `sender`: a
/// newer hub for the same filter may have replaced it.
fn remove_own(hubs: &mut HashMap<Vec<String>, Hub>, subjects: &[String], sender: &Sender) {
    if hubs
        .get(subjects)
        .is_some_and(|hub| hub.sender.same_channel(sender))
    {
        hubs.remove(subjects);
    }
}
