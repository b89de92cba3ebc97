//! The test harness: a service's consumers and publishers on the
//! in-memory JetStream, and what happened to its events, typed.

use std::future::Future;
use std::time::Duration;

use crate::client::{Client, ConnectError};
use crate::config::Config;
use crate::consume::dead_letter::DeadLetter;
use crate::consume::{ConsumeError, Consumer, DeadLetterConfig};
use crate::envelope::Envelope;
use crate::event::Event;

use super::jetstream::{ConsumerInfo, MemoryJetStream};
use super::report::{self, Report};

/// How long (on tokio's clock) [`TestKit::wait_idle`] waits by default: a
/// day of virtual time, microseconds of wall time under a paused clock.
pub const DEFAULT_IDLE_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// How often, on tokio's clock, idleness is looked at: soon after a
/// change, less often the longer nothing changes (under a paused clock
/// every look is a turn of the runtime: an hour of retries looked at
/// every 10 ms would cost seconds of wall time).
const FIRST_IDLE_POLL: Duration = Duration::from_millis(1);
const MAX_IDLE_POLL: Duration = Duration::from_secs(1);

/// A service's world in a unit test: an in-memory JetStream, a [`Client`]
/// on it for the service's real publishers and consumers, and typed views
/// of what was published, handled, retried and dead-lettered.
///
/// Run tests with tokio's clock paused (`#[tokio::test(start_paused =
/// true)]`): retry delays, ack waits and timeouts then pass as soon as
/// nothing else can run.
///
/// ```
/// use jetevents::consume::{Consumer, Context, HandlerError};
/// use jetevents::provision::StreamSpec;
/// use jetevents::testing::TestKit;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct OrderPlaced { order: String }
/// # impl jetevents::Event for OrderPlaced { const TYPE: &'static str = "shop.order.placed.v1"; }
///
/// async fn on_placed(_: OrderPlaced, _: Context<()>) -> Result<(), HandlerError> {
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let kit = TestKit::new();
/// let spec = StreamSpec::for_domain(kit.client().subjects(), "SHOP", "shop")?;
/// kit.client().ensure_stream(&spec).await?;
/// let consumer = Consumer::builder(kit.client(), "billing")
///     .handle(on_placed)
///     .build()
///     .await?;
/// let running = kit.run(consumer);
///
/// kit.client().publisher().publish(&OrderPlaced { order: "o-1".into() }).await?;
/// let info = kit.wait_idle("SHOP", "billing").await?;
/// assert_eq!(info.delivered.stream_sequence, 1);
/// assert!(kit.dead_letters().is_empty());
/// running.stop().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct TestKit {
    jetstream: MemoryJetStream,
    client: Client,
}

impl Default for TestKit {
    fn default() -> Self {
        Self::new()
    }
}

impl TestKit {
    /// A new in-memory JetStream and a client on it, for the environment
    /// `test` with the source `/test-kit`.
    pub fn new() -> Self {
        let jetstream = MemoryJetStream::new();
        let subjects = crate::subject::Subjects::for_tests();
        let config = Config {
            source: "/test-kit".to_owned(),
            env: subjects.env().to_owned(),
            ..Config::default()
        };
        let client = Client::in_memory_with(config, subjects, &jetstream);
        Self { jetstream, client }
    }

    /// A client with `config` (environment, source, encoding, publish
    /// settings; the servers are not used) on a new in-memory JetStream.
    pub fn with_config(config: Config) -> Result<Self, ConnectError> {
        let jetstream = MemoryJetStream::new();
        let client = Client::in_memory(config, &jetstream)?;
        Ok(Self { jetstream, client })
    }

    /// The client: give it to the service's code as it would get a
    /// connected one.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The in-memory JetStream, for what the typed views do not show.
    pub fn jetstream(&self) -> &MemoryJetStream {
        &self.jetstream
    }

    /// Runs `consumer` on a task until [`RunningConsumer::stop`].
    pub fn run<S: Clone + Send + Sync + 'static>(&self, consumer: Consumer<S>) -> RunningConsumer {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(consumer.run_until(async move {
            let _ = stopped.await;
        }));
        RunningConsumer { stop, task }
    }

    /// Every event stored in `stream`, decoded, in stream order; messages
    /// that are not CloudEvents are left out.
    pub fn events(&self, stream: &str) -> Vec<Envelope> {
        self.jetstream
            .messages(stream)
            .iter()
            .filter_map(|message| {
                crate::codec::decode(message.headers.as_ref(), &message.payload).ok()
            })
            .collect()
    }

    /// The events of type `E` published to any stream, as `E`, in the
    /// order they were stored (dead-letter copies left out).
    pub fn published<E: Event>(&self) -> Vec<E> {
        report::decode_all(&report::published_events(&self.jetstream))
    }

    /// The events of type `E` stored in `stream`, as `E`, in stream order.
    pub fn published_in<E: Event>(&self, stream: &str) -> Vec<E> {
        report::decode_all(&self.events(stream))
    }

    /// What `group` did with the events of `stream` so far: handled,
    /// retried, dead-lettered, terminated, and what its handlers published.
    /// See [`Report`] for an example.
    pub fn report(&self, stream: &str, group: &str) -> Report {
        Report::read(&self.jetstream, stream, group)
    }

    /// The entries of the default dead-letter stream.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.dead_letters_in(&DeadLetterConfig::default())
    }

    /// The entries of the dead-letter stream `config` names.
    pub fn dead_letters_in(&self, config: &DeadLetterConfig) -> Vec<DeadLetter> {
        dead_letters_in(&self.jetstream, config)
    }

    /// Waits until `group` on `stream` has nothing left to deliver and
    /// nothing unacknowledged (every event acked or terminated, retries
    /// included), for at most [`DEFAULT_IDLE_LIMIT`] of tokio's clock.
    /// Returns the consumer's final state.
    pub async fn wait_idle(&self, stream: &str, group: &str) -> Result<ConsumerInfo, NotIdle> {
        self.wait_idle_for(stream, group, DEFAULT_IDLE_LIMIT).await
    }

    /// [`wait_idle`](Self::wait_idle) with another limit.
    pub async fn wait_idle_for(
        &self,
        stream: &str,
        group: &str,
        limit: Duration,
    ) -> Result<ConsumerInfo, NotIdle> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut poll = FIRST_IDLE_POLL;
        let mut last_seen = None;
        loop {
            let info = self.jetstream.consumer_info(stream, group);
            let seen = info.as_ref().map(|info| (info.delivered, info.ack_floor));
            poll = if seen == last_seen {
                (poll * 2).min(MAX_IDLE_POLL)
            } else {
                FIRST_IDLE_POLL
            };
            last_seen = seen;
            if let Some(info) = &info {
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    return Ok(info.clone());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(NotIdle {
                    stream: stream.to_owned(),
                    group: group.to_owned(),
                    limit,
                    last: info,
                });
            }
            tokio::time::sleep(poll).await;
        }
    }
}

/// The entries of the dead-letter stream `config` names, decoded.
pub(super) fn dead_letters_in(
    jetstream: &MemoryJetStream,
    config: &DeadLetterConfig,
) -> Vec<DeadLetter> {
    jetstream
        .messages(&config.stream)
        .into_iter()
        .filter_map(|message| {
            let headers = message.headers?;
            DeadLetter::from_parts(message.sequence, &headers, message.payload).ok()
        })
        .collect()
}

/// A consumer running on a task of the test.
#[derive(Debug)]
pub struct RunningConsumer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ConsumeError>>,
}

impl RunningConsumer {
    /// Shuts the consumer down gracefully and returns what its run returned.
    pub fn stop(self) -> impl Future<Output = Result<(), ConsumeError>> {
        let _ = self.stop.send(());
        async move {
            match self.task.await {
                Ok(result) => result,
                // A panic in the runner is the test's failure.
                Err(err) => std::panic::resume_unwind(err.into_panic()),
            }
        }
    }
}

/// [`TestKit::wait_idle`] ran out of time.
#[derive(Clone, Debug, thiserror::Error)]
#[error("consumer {group} on {stream} not idle after {limit:?}: {last:?}")]
#[non_exhaustive]
pub struct NotIdle {
    /// The stream.
    pub stream: String,
    /// The group.
    pub group: String,
    /// How long it waited (tokio's clock).
    pub limit: Duration,
    /// The consumer's last state (`None`: no such consumer).
    pub last: Option<ConsumerInfo>,
}
