//! Level 2's view of a JetStream: one stream, one durable pull consumer and
//! its raw deliveries, over async-nats on a real server and over the
//! in-memory engine. The runner always sends progress acks and never holds
//! a delivery unsettled, so what it cannot reach is tested here.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use bytes::Bytes;
use futures_util::StreamExt;
use jetevents::testing::{ConsumerConfig, MemoryJetStream, StreamConfig};

use crate::consume_common::unique;

/// The consumer's settings a case chooses; the rest are the server's defaults.
#[derive(Clone, Debug)]
pub struct Settings {
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub backoff: Vec<Duration>,
    pub max_ack_pending: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(1),
            max_deliver: -1,
            backoff: Vec::new(),
            max_ack_pending: 1000,
        }
    }
}

/// A delivery and where it stands.
pub struct Got<M> {
    pub stream_sequence: u64,
    pub delivered: u64,
    pub message: M,
}

/// The consumer info a case looks at.
#[derive(Debug, PartialEq, Eq)]
pub struct Counts {
    pub num_pending: u64,
    pub num_ack_pending: usize,
    pub num_redelivered: usize,
    pub ack_floor_stream_sequence: u64,
}

/// One stream (subjects `<name>.>`) and its durable consumer `conf`.
#[allow(async_fn_in_trait)]
pub trait Engine {
    type Message;
    /// Stores an empty message on `<stream>.<token>`; returns its sequence.
    async fn publish(&self, token: &str) -> u64;
    async fn create_consumer(&mut self, settings: Settings);
    /// The next delivery within `wait`, or `None`.
    async fn next(&self, wait: Duration) -> Option<Got<Self::Message>>;
    async fn ack(&self, message: &Self::Message);
    async fn nak(&self, message: &Self::Message, delay: Option<Duration>);
    async fn in_progress(&self, message: &Self::Message);
    async fn term(&self, message: &Self::Message);
    async fn consumer_info(&self) -> Counts;
}

const CONSUMER: &str = "conf";

/// A stream and consumer on the shared nats-server, through async-nats.
pub struct Nats {
    context: jetstream::Context,
    stream: jetstream::stream::Stream,
    subject: String,
    consumer: Option<jetstream::consumer::Consumer<pull::Config>>,
}

impl Nats {
    pub async fn new() -> Nats {
        let server = jetevents_testcontainers::shared().await;
        let client = async_nats::connect(server.url()).await.unwrap();
        let context = jetstream::new(client);
        let name = unique("CONF");
        let stream = context
            .create_stream(jetstream::stream::Config {
                name: name.clone(),
                subjects: vec![format!("{name}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
        Nats {
            context,
            stream,
            subject: name,
            consumer: None,
        }
    }

    fn consumer(&self) -> &jetstream::consumer::Consumer<pull::Config> {
        self.consumer.as_ref().expect("create_consumer first")
    }
}

impl Engine for Nats {
    type Message = jetstream::Message;

    async fn publish(&self, token: &str) -> u64 {
        let subject = format!("{}.{token}", self.subject);
        let ack = self.context.publish(subject, Bytes::new()).await.unwrap();
        ack.await.unwrap().sequence
    }

    async fn create_consumer(&mut self, settings: Settings) {
        let config = pull::Config {
            durable_name: Some(CONSUMER.to_owned()),
            ack_wait: settings.ack_wait,
            max_deliver: settings.max_deliver,
            backoff: settings.backoff,
            max_ack_pending: settings.max_ack_pending,
            ..Default::default()
        };
        self.consumer = Some(self.stream.create_consumer(config).await.unwrap());
    }

    async fn next(&self, wait: Duration) -> Option<Got<Self::Message>> {
        let mut batch = self
            .consumer()
            .fetch()
            .max_messages(1)
            .expires(wait)
            .messages()
            .await
            .unwrap();
        let message = batch.next().await?.unwrap();
        let info = message.info().unwrap();
        Some(Got {
            stream_sequence: info.stream_sequence,
            delivered: u64::try_from(info.delivered).unwrap(),
            message,
        })
    }

    // Every settlement waits for the server's confirmation, so the next
    // pull or consumer info sees it (as the engine's, which is synchronous).
    async fn ack(&self, message: &Self::Message) {
        message.double_ack().await.unwrap();
    }

    async fn nak(&self, message: &Self::Message, delay: Option<Duration>) {
        message.double_ack_with(AckKind::Nak(delay)).await.unwrap();
    }

    async fn in_progress(&self, message: &Self::Message) {
        message.double_ack_with(AckKind::Progress).await.unwrap();
    }

    async fn term(&self, message: &Self::Message) {
        message.double_ack_with(AckKind::Term).await.unwrap();
    }

    async fn consumer_info(&self) -> Counts {
        let info = self.stream.consumer_info(CONSUMER).await.unwrap();
        Counts {
            num_pending: info.num_pending,
            num_ack_pending: info.num_ack_pending,
            num_redelivered: info.num_redelivered,
            ack_floor_stream_sequence: info.ack_floor.stream_sequence,
        }
    }
}

/// A stream and consumer on a new in-memory JetStream.
pub struct Memory {
    engine: MemoryJetStream,
    stream: String,
}

impl Memory {
    pub fn new() -> Memory {
        let engine = MemoryJetStream::new();
        let stream = unique("CONF");
        let subjects = [format!("{stream}.>")];
        engine
            .create_stream(StreamConfig::new(&stream, subjects))
            .unwrap();
        Memory { engine, stream }
    }
}

impl Engine for Memory {
    type Message = jetevents::testing::Delivery;

    async fn publish(&self, token: &str) -> u64 {
        let subject = format!("{}.{token}", self.stream);
        let ack = self.engine.publish(&subject, None, Bytes::new()).unwrap();
        ack.sequence
    }

    async fn create_consumer(&mut self, settings: Settings) {
        let mut config = ConsumerConfig::new(CONSUMER);
        config.ack_wait = settings.ack_wait;
        config.max_deliver = settings.max_deliver;
        config.backoff = settings.backoff;
        config.max_ack_pending = settings.max_ack_pending;
        self.engine.create_consumer(&self.stream, config).unwrap();
    }

    async fn next(&self, wait: Duration) -> Option<Got<Self::Message>> {
        let next = self.engine.next(&self.stream, CONSUMER);
        let message = tokio::time::timeout(wait, next).await.ok()?.unwrap();
        let info = message.info();
        Some(Got {
            stream_sequence: info.stream_sequence,
            delivered: info.delivered,
            message,
        })
    }

    async fn ack(&self, message: &Self::Message) {
        message.ack().unwrap();
    }

    async fn nak(&self, message: &Self::Message, delay: Option<Duration>) {
        message.nak(delay).unwrap();
    }

    async fn in_progress(&self, message: &Self::Message) {
        message.in_progress().unwrap();
    }

    async fn term(&self, message: &Self::Message) {
        message.term().unwrap();
    }

    async fn consumer_info(&self) -> Counts {
        let info = self.engine.consumer_info(&self.stream, CONSUMER).unwrap();
        Counts {
            num_pending: info.num_pending,
            num_ack_pending: info.num_ack_pending,
            num_redelivered: info.num_redelivered,
            ack_floor_stream_sequence: info.ack_floor.stream_sequence,
        }
    }
}
