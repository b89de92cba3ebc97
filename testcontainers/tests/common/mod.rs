//! Helpers shared by the harness's own tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use jetevents_testcontainers::Backend;

/// Backends to cover: binary, plus docker when available (fails when required).
pub async fn backends() -> Vec<Backend> {
    let backends = jetevents_testcontainers::test_backends().await.unwrap();
    eprintln!("backends: {backends:?}");
    backends
}

/// A name unique in this process.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub fn options() -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(Some(0))
}

/// Creates a file-backed stream `name` on `name.>` with `replicas`.
/// Creates the stream, retrying for a while: right after a cluster forms, R3
/// placement can be refused until every peer has caught up with the meta leader.
pub async fn create_stream(js: &jetstream::Context, name: &str, replicas: usize) -> stream::Stream {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let created = js
            .create_stream(stream::Config {
                name: name.to_string(),
                subjects: vec![format!("{name}.>")],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                ..Default::default()
            })
            .await;
        match created {
            Ok(stream) => return stream,
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("create_stream {name}: {err}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(err) => panic!("create_stream {name}: {err}"),
        }
    }
}

/// Publishes `payload` to `subject` and waits for the stream's ack; returns the seq.
/// Right after a replicated stream is created its leader may not be elected
/// yet (no responders, "stream not found"): retried within a deadline.
pub async fn publish(js: &jetstream::Context, subject: String, payload: &'static str) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let attempt = async {
            js.publish(subject.clone(), payload.into())
                .await?
                .await
                .map_err(async_nats::Error::from)
        };
        match attempt.await {
            Ok(ack) => return ack.sequence,
            Err(err) if std::time::Instant::now() < deadline => {
                eprintln!("publish to {subject}: {err}; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(err) => panic!("publish to {subject}: {err}"),
        }
    }
}

/// Reads the next message of `stream` through a new pull consumer and acks it.
pub async fn consume_one(stream: &stream::Stream) -> Vec<u8> {
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
        .await
        .expect("a message within 10s")
        .unwrap()
        .unwrap();
    message.ack().await.unwrap();
    message.payload.to_vec()
}

/// Stream-create, publish-with-ack and consume through `url`.
pub async fn roundtrip(client: async_nats::Client) {
    let js = jetstream::new(client);
    let name = unique("RT");
    let stream = create_stream(&js, &name, 1).await;
    publish(&js, format!("{name}.a"), "hello").await;
    assert_eq!(consume_one(&stream).await, b"hello");
}
