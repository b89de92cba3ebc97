//! Saga transitions per second: sagas started and moved on by events
//! published beforehand, applied by one host (KV compare-and-set per
//! transition), timed from the host's start until every saga finished.
//!
//! ```text
//! JETEVENTS_NATS_SERVER_BIN=/path/to/nats-server cargo bench --bench saga
//! ```
//!
//! `JE_BENCH_SAGAS` (default 200) sagas, `JE_BENCH_SAGA_STEPS` (default 4)
//! events after the start of each, `JE_BENCH_SAGA_CONCURRENCY` (default 32)
//! handlers at once. Prints transitions per second.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jetevents::client::Client;
use jetevents::consume::HandlerError;
use jetevents::provision::StreamSpec;
use jetevents::publish::PublishOptions;
use jetevents::saga::{Saga, Step, Transition};
use serde::{Deserialize, Serialize};
use support::{env, Background};

#[derive(Serialize, Deserialize)]
struct Started {
    steps: u32,
}

impl jetevents::Event for Started {
    const TYPE: &'static str = "bench.saga.started.v1";
}

#[derive(Serialize, Deserialize)]
struct Stepped;

impl jetevents::Event for Stepped {
    const TYPE: &'static str = "bench.saga.stepped.v1";
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Progress {
    steps: u32,
    done: u32,
}

/// Events of one saga are handled concurrently, in any order: both types
/// start it, and it completes once the start and every step arrived.
async fn started(
    event: Started,
    step: Step<Progress>,
) -> Result<Transition<Progress>, HandlerError> {
    let mut progress = step.into_state();
    progress.steps = event.steps;
    Ok(settle(progress))
}

async fn stepped(_: Stepped, step: Step<Progress>) -> Result<Transition<Progress>, HandlerError> {
    let mut progress = step.into_state();
    progress.done += 1;
    Ok(settle(progress))
}

fn settle(progress: Progress) -> Transition<Progress> {
    let finished = progress.steps > 0 && progress.done >= progress.steps;
    let transition = Transition::to(progress);
    if finished {
        transition.complete()
    } else {
        transition
    }
}

/// How many sagas finished: the archive bucket's stream holds one message
/// per finished saga.
async fn finished(client: &Client) -> u64 {
    let mut archive = client
        .jetstream()
        .unwrap()
        .get_stream("KV_SAGA_bench_DONE")
        .await
        .unwrap();
    archive.info().await.unwrap().state.messages
}

#[tokio::main]
async fn main() {
    let sagas = env("JE_BENCH_SAGAS", 200);
    let steps = env("JE_BENCH_SAGA_STEPS", 4);
    let concurrency = env("JE_BENCH_SAGA_CONCURRENCY", 32);
    let (_server, client) = support::server_and_client().await;
    let stream = StreamSpec::new("BENCH", vec!["bench.bench.>".to_owned()]);
    // Declares the stream and the buckets before the events are published.
    let host = Saga::new("bench")
        .start(started)
        .start(stepped)
        .consumer(&client, "bench-saga", &stream)
        .await
        .unwrap()
        .concurrency(concurrency)
        .build()
        .await
        .unwrap();

    let publisher = client.publisher();
    let publishes = (0..sagas).flat_map(|saga| {
        let publisher = publisher.clone();
        (0..=steps).map(move |step| {
            let publisher = publisher.clone();
            async move {
                let options = PublishOptions::new().correlation_id(format!("saga-{saga}"));
                if step == 0 {
                    let event = Started {
                        steps: steps as u32,
                    };
                    publisher.publish_with(&event, options).await.unwrap();
                } else {
                    publisher.publish_with(&Stepped, options).await.unwrap();
                }
            }
        })
    });
    futures_util::stream::iter(publishes)
        .buffered(64)
        .collect::<Vec<()>>()
        .await;

    let began = Instant::now();
    let running = Background::spawn(|stopped| host.run_until(stopped));
    while finished(&client).await < sagas as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = began.elapsed();
    running.stop().await;

    let transitions = sagas * (steps + 1);
    println!(
        "sagas: {sagas} x {} transitions, concurrency {concurrency}: {:.0} transitions/s ({:.2} s)",
        steps + 1,
        transitions as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
}
