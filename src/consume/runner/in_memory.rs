//! The consumer on the in-memory JetStream of the test kit: its durable
//! consumer is created from the same settings as on NATS, and its
//! deliveries go through the same per-delivery code (decode, route,
//! handle, retry decision, dead letter, settle) as the pull loop's.
//!
//! What only JetStream needs (pull requests, the watchdog, recovery, the
//! group filter's periodic check) has no counterpart here: the engine
//! hands out one delivery per call and cannot lose a connection.

use std::sync::Arc;

use async_nats::jetstream::consumer::DeliverPolicy as NatsDeliverPolicy;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::watch;

use crate::client::Client;
use crate::consume::router;
use crate::consume::settings::{self, Settings};
use crate::consume::stack::Handlers;
use crate::consume::{ConsumeError, ConsumeErrorKind, Consumer, Source};
use crate::error::Error;
use crate::testing::{ConsumerConfig, DeliverPolicy, MemoryErrorKind, MemoryJetStream};

use super::delivery::process;
use super::shutdown::shutdown;
use super::Runtime;

/// Creates (or widens, like on NATS) the group's durable consumer on the
/// in-memory JetStream.
#[allow(clippy::too_many_arguments)]
pub(in crate::consume) async fn build<S>(
    memory: MemoryJetStream,
    client: Client,
    group: String,
    stream: Option<String>,
    filters: Vec<String>,
    handlers: Handlers<S>,
    state: S,
    settings: Settings,
) -> Result<Consumer<S>, ConsumeError> {
    let stream = match stream {
        Some(stream) => stream,
        None => {
            let first = filters.first().cloned().unwrap_or_default();
            memory.stream_for_subject(&first).ok_or_else(|| {
                Error::new(ConsumeErrorKind::StreamNotFound(format!(
                    "no stream captures {first}"
                )))
            })?
        }
    };
    if memory.stream_info(&stream).is_none() {
        return Err(Error::new(ConsumeErrorKind::StreamNotFound(stream)));
    }
    crate::consume::dead_letter::ensure_stream(&client, &settings.dead_letter)
        .await
        .map_err(|err| Error::with_source(ConsumeErrorKind::DeadLetterStream, err))?;
    let wanted = settings::consumer_config(&group, &filters, &settings);
    // The group's filter only widens, as on NATS (see `group_filter`).
    let mut group_filters = filters.clone();
    if !settings.replace_group_filter {
        if let Some(existing) = memory.consumer_info(&stream, &group) {
            group_filters.extend(existing.config.filter_subjects);
        }
    }
    let mut config = ConsumerConfig::new(group.clone());
    config.filter_subjects = router::minimal_filters(group_filters);
    config.ack_wait = wanted.ack_wait;
    config.max_deliver = wanted.max_deliver;
    config.backoff = wanted.backoff;
    config.max_ack_pending = wanted.max_ack_pending;
    config.deliver_policy = match wanted.deliver_policy {
        NatsDeliverPolicy::New => DeliverPolicy::New,
        _ => DeliverPolicy::All,
    };
    memory.create_consumer(&stream, config).map_err(|err| {
        let kind = match err.kind() {
            MemoryErrorKind::StreamNotFound => ConsumeErrorKind::StreamNotFound(stream.clone()),
            _ => ConsumeErrorKind::CreateConsumer,
        };
        Error::with_source(kind, err)
    })?;
    Ok(Consumer {
        client,
        group,
        stream,
        filters,
        handlers,
        state,
        settings,
        source: Source::Memory(memory),
    })
}

/// Hands deliveries to handlers within the concurrency until `signal`,
/// then shuts down like the pull loop.
pub(super) async fn run<S>(
    shared: Arc<Runtime<S>>,
    memory: MemoryJetStream,
    stream: String,
    signal: super::Signal,
) -> Result<(), ConsumeError>
where
    S: Clone + Send + Sync + 'static,
{
    let group = shared.group.clone();
    let concurrency = shared.settings.concurrency.max(1);
    let (stop, stopped) = watch::channel(false);
    let mut tasks = FuturesUnordered::new();
    let stopping = signal;
    tokio::pin!(stopping);
    let result = loop {
        // What is deliverable now, up to the free handlers.
        while tasks.len() < concurrency {
            match memory.try_next(&stream, &group) {
                Some(delivery) => tasks.push(process(delivery, shared.clone(), stopped.clone())),
                None => break,
            }
        }
        tokio::select! {
            biased;
            () = &mut stopping => break Ok(()),
            Some(()) = tasks.next(), if !tasks.is_empty() => {}
            next = memory.next(&stream, &group), if tasks.len() < concurrency => match next {
                Ok(delivery) => tasks.push(process(delivery, shared.clone(), stopped.clone())),
                Err(err) => {
                    let kind = match err.kind() {
                        MemoryErrorKind::StreamNotFound => {
                            ConsumeErrorKind::StreamNotFound(stream.clone())
                        }
                        _ => ConsumeErrorKind::Unavailable,
                    };
                    break Err(Error::with_source(kind, err));
                }
            },
        }
    };
    let undelivered: Vec<crate::testing::Delivery> = Vec::new();
    shutdown(&shared, undelivered, tasks, stop).await;
    result
}
