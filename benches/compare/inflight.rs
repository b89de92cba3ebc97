//! Scenario 10: heap bytes per in-flight event, counted by the bench's
//! allocator ([`crate::heap`]) in a child process per measurement
//! (`JE_BENCH_CHILD=inflight`).
//!
//! - publish: the peak heap of `publish_many` (raw: scenario 1's windowed
//!   loop) over the same events with window `W1` and `W2`;
//! - consume: the heap held once a group has received all it may hold, with
//!   `max_ack_pending` (and jetevents' prefetch) `W1` and `W2`; the jetevents
//!   handlers never return, the raw loop keeps every message unacked.
//!
//! Bytes per in-flight event is the difference over the difference in
//! events in flight, so what does not depend on the window (the events'
//! own vector, the results, the connection) cancels.

use std::future::pending;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use futures_util::StreamExt;
use jetevents::consume::{Consumer, Context, HandlerError};
use serde_json::json;

use crate::common::{self, child_env, order, recreate_stream, Raw, Side, STREAM};
use crate::consume::{fill_backlog, filters};
use crate::heap;
use crate::publish::raw_publish_many;
use crate::report::{Metric, Scenario};
use crate::Settings;

/// Whether this process is a scenario-10 child.
pub fn is_child() -> bool {
    std::env::var("JE_BENCH_CHILD").is_ok_and(|kind| kind == "inflight")
}

/// The child's whole life: measure once, print one JSON line.
pub fn child(settings: &Settings) {
    let side = child_env("JE_BENCH_CHILD_SIDE");
    let work = child_env("JE_BENCH_CHILD_WORK");
    let url = child_env("JE_BENCH_CHILD_URL");
    let group = child_env("JE_BENCH_CHILD_GROUP");
    let size: usize = child_env("JE_BENCH_CHILD_SIZE").parse().expect("size");
    let runtime = common::runtime(settings.threads);
    let settings = settings.clone();
    let report = common::run_placed(&runtime, settings.spawn, async move {
        let (bytes, in_flight) = match (work.as_str(), side == Side::Jetevents.name()) {
            ("publish", jetevents) => (publish_peak(&settings, &url, jetevents, size).await, size),
            (_, true) => jetevents_held(&url, &group, size).await,
            (_, false) => raw_held(&url, &group, size).await,
        };
        json!({ "side": side, "work": work, "size": size, "bytes": bytes, "in_flight": in_flight })
    });
    println!("{report}");
}

/// Peak heap while publishing every event with `window` acks in flight.
async fn publish_peak(settings: &Settings, url: &str, jetevents: bool, window: usize) -> usize {
    let events = common::events(0, settings.events);
    if jetevents {
        let je = common::jetevents_client(url).await;
        let publisher = je.publisher();
        let base = heap::live();
        heap::reset_peak();
        let results = publisher.publish_many(&events, window).await;
        assert!(
            results.iter().all(Result::is_ok),
            "jetevents publish failed"
        );
        heap::peak() - base
    } else {
        let raw = Raw::connect(url).await;
        let base = heap::live();
        heap::reset_peak();
        assert_eq!(raw_publish_many(&raw, &events, window).await, events.len());
        heap::peak() - base
    }
}

/// Waits until the group holds `expected` unacked deliveries, or their
/// number has not grown for two seconds; returns it.
async fn settled_ack_pending(raw: &Raw, group: &str, expected: usize) -> usize {
    let stream = raw.js.get_stream(STREAM).await.expect("stream");
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut last, mut since) = (0, Instant::now());
    while Instant::now() < deadline {
        if let Ok(info) = stream.consumer_info(group).await {
            let pending = info.num_ack_pending;
            if pending >= expected
                || (pending > 0 && pending == last && since.elapsed() > Duration::from_secs(2))
            {
                return pending;
            }
            if pending != last {
                (last, since) = (pending, Instant::now());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{group}: deliveries did not settle ({last} unacked)");
}

/// The heap above `base` once it stops growing: the server counts a message
/// as pending when it sends it, so under load the client may still be
/// reading the last of them when the count settles.
async fn settled_heap(base: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = heap::live().saturating_sub(base);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = heap::live().saturating_sub(base);
        if now.abs_diff(last) <= last / 100 || Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Heap held by a jetevents consumer whose handlers never return, once it
/// holds all the server lets it (`limit` unacked).
async fn jetevents_held(url: &str, group: &str, limit: usize) -> (usize, usize) {
    let je = common::jetevents_client(url).await;
    let raw = Raw::connect(url).await;
    let base = heap::live();
    let consumer = Consumer::builder(&je, group)
        .stream(STREAM)
        .max_ack_pending(limit as i64)
        .prefetch(limit)
        .handle(|_: common::AppointmentBooked, _: Context| async {
            pending::<()>().await;
            Ok::<(), HandlerError>(())
        })
        .build()
        .await
        .expect("jetevents consumer");
    let running = tokio::spawn(consumer.run_until(pending::<()>()));
    let in_flight = settled_ack_pending(&raw, group, limit).await;
    let held = settled_heap(base).await;
    running.abort();
    (held, in_flight)
}

/// Heap held by a raw consumer that keeps every message it receives,
/// unacked, with `limit` unacked allowed.
async fn raw_held(url: &str, group: &str, limit: usize) -> (usize, usize) {
    let raw = Raw::connect(url).await;
    let je = common::jetevents_client(url).await;
    let base = heap::live();
    let stream = raw.js.get_stream(STREAM).await.expect("stream");
    let consumer: PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(group.to_owned()),
            ack_policy: AckPolicy::Explicit,
            max_ack_pending: limit as i64,
            filter_subjects: filters(&je),
            ..Default::default()
        })
        .await
        .expect("raw consumer");
    let running = tokio::spawn(async move {
        let mut messages = consumer.messages().await.expect("messages");
        let mut kept = Vec::new();
        while let Some(Ok(message)) = messages.next().await {
            kept.push(message);
        }
    });
    let in_flight = settled_ack_pending(&raw, group, limit).await;
    let held = settled_heap(base).await;
    running.abort();
    (held, in_flight)
}

/// Scenario 10.
pub async fn inflight(settings: &Settings, raw: &Raw, url: &str) -> Scenario {
    let sizes = [settings.window, settings.inflight_window];
    assert!(
        sizes[0] < sizes[1] && sizes[1] <= settings.events,
        "scenario 10 needs JE_BENCH_WINDOW < JE_BENCH_INFLIGHT_WINDOW <= JE_BENCH_EVENTS"
    );
    let mut scenario = Scenario::new(
        "10",
        format!(
            "heap per in-flight event (counting allocator), windows {} and {}",
            sizes[0], sizes[1]
        ),
    );
    let mut extra = Vec::new();
    for work in ["publish", "consume"] {
        if work == "consume" {
            fill_backlog(raw, settings.events).await;
        }
        // Per side: (bytes, in flight) at each size.
        let mut measured = [[(0usize, 0usize); 2]; 2];
        for (index, size) in sizes.into_iter().enumerate() {
            for side in order(index) {
                if work == "publish" {
                    recreate_stream(&raw.js).await;
                }
                let group = format!("inflight-{}-{size}", side.name());
                let vars = [
                    ("JE_BENCH_CHILD_SIDE", side.name().to_owned()),
                    ("JE_BENCH_CHILD_WORK", work.to_owned()),
                    ("JE_BENCH_CHILD_URL", url.to_owned()),
                    ("JE_BENCH_CHILD_GROUP", group.clone()),
                    ("JE_BENCH_CHILD_SIZE", size.to_string()),
                ];
                let report =
                    tokio::task::spawn_blocking(move || common::run_child("inflight", &vars))
                        .await
                        .expect("child join");
                if work == "consume" {
                    let stream = raw.js.get_stream(STREAM).await.expect("stream");
                    let _ = stream.delete_consumer(&group).await;
                }
                let bytes = report["bytes"].as_u64().unwrap_or(0) as usize;
                let in_flight = report["in_flight"].as_u64().unwrap_or(0) as usize;
                eprintln!(
                    "  [10] {work} {:<9} size {size:>6}: {bytes:>10} heap bytes, {in_flight} in flight",
                    side.name()
                );
                let slot = if side == Side::Jetevents { 0 } else { 1 };
                measured[slot][index] = (bytes, in_flight);
                extra.push(report);
            }
        }
        let per_event = |[(small, small_n), (large, large_n)]: [(usize, usize); 2]| {
            (large as f64 - small as f64) / (large_n as f64 - small_n as f64).max(1.0)
        };
        let mut metric = Metric::lower(
            format!("{work}: bytes per in-flight event"),
            "B/event",
            per_event(measured[0]),
            per_event(measured[1]),
            2048.0,
        );
        metric.absolute = true;
        scenario.push(metric);
    }
    scenario.extra = json!({ "children": extra });
    scenario
}
