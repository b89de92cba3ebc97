//! Scenario 5: peak client memory with a growing backlog and a slow handler.
//!
//! Peak RSS is per process, so every measurement runs in a child process (this
//! same binary, selected by `JE_BENCH_CHILD`): it connects, consumes the
//! backlog with a slow handler for a fixed time while sampling `VmRSS`, and
//! prints its peak as one JSON line. A bounded consumer's peak does not depend
//! on the backlog; one that buffers what the server sends grows with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jetevents::consume::{Consumer, Context, HandlerError};
use serde_json::json;
use tokio::sync::Notify;

use crate::common::{self, child_env, order, Raw, Side, STREAM};
use crate::consume::{fill, Tally};
use crate::report::{Metric, Scenario};
use crate::Settings;

/// `VmRSS` or `VmHWM` of this process, KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with(field))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kib| kib.parse().ok())
        })
        .unwrap_or(0)
}

/// Whether this process is a scenario-5 child.
pub fn is_child() -> bool {
    std::env::var("JE_BENCH_CHILD").is_ok_and(|mode| mode == "memory")
}

/// The child's whole life: consume, sample, print one JSON line.
pub fn child(settings: &Settings) {
    let side = child_env("JE_BENCH_CHILD_SIDE");
    let url = child_env("JE_BENCH_CHILD_URL");
    let group = child_env("JE_BENCH_CHILD_GROUP");
    let runtime = common::runtime(settings.threads);
    let settings = settings.clone();
    let report = common::run_placed(&runtime, settings.spawn, async move {
        let baseline_kib = status_kib("VmRSS:");
        let slow = Duration::from_millis(settings.slow_handler_ms);
        let tally = Tally::new(usize::MAX);
        let stop = Arc::new(Notify::new());
        let running = if side == "jetevents" {
            let je = common::jetevents_client(&url).await;
            let mut builder = Consumer::builder(&je, &group)
                .stream(STREAM)
                .max_ack_pending(settings.memory_max_ack_pending)
                .with_state(tally.clone())
                .handle(
                    move |event: common::AppointmentBooked, ctx: Context<Arc<Tally>>| async move {
                        tokio::time::sleep(slow).await;
                        std::hint::black_box(&event);
                        ctx.state().hit();
                        Ok::<(), HandlerError>(())
                    },
                );
            if let Some(concurrency) = settings.concurrency {
                builder = builder.concurrency(concurrency);
            }
            let consumer = builder.build().await.expect("jetevents consumer");
            let stop = stop.clone();
            tokio::spawn(async move {
                let _ = consumer
                    .run_until(async move { stop.notified().await })
                    .await;
            })
        } else {
            let raw = Raw::connect(&url).await;
            let stream = raw.js.get_stream(STREAM).await.expect("stream");
            let consumer = stream
                .create_consumer(async_nats::jetstream::consumer::pull::Config {
                    durable_name: Some(group.clone()),
                    ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
                    max_ack_pending: settings.memory_max_ack_pending,
                    filter_subjects: vec![
                        "bench.booking.appointment.booked.v1".to_owned(),
                        "bench.booking.appointment.booked.v1.*".to_owned(),
                    ],
                    ..Default::default()
                })
                .await
                .expect("raw consumer");
            let tally = tally.clone();
            tokio::spawn(async move {
                let mut messages = consumer.messages().await.expect("messages");
                while let Some(Ok(message)) = messages.next().await {
                    let decoded = common::raw_decode(message.headers.as_ref(), &message.payload);
                    tokio::time::sleep(slow).await;
                    std::hint::black_box(&decoded);
                    let _ = message.ack().await;
                    tally.hit();
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(settings.memory_secs);
        let mut peak_kib = 0;
        while Instant::now() < deadline {
            peak_kib = peak_kib.max(status_kib("VmRSS:"));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let handled = tally.handled();
        stop.notify_one();
        running.abort();
        json!({
            "side": side,
            "baseline_kib": baseline_kib,
            "peak_rss_kib": peak_kib,
            "hwm_kib": status_kib("VmHWM:"),
            "peak_heap_bytes": crate::heap::peak(),
            "handled": handled,
        })
    });
    println!("{report}");
}

/// Runs one child and reads its report.
fn run_child(side: Side, url: &str, group: &str) -> serde_json::Value {
    common::run_child(
        "memory",
        &[
            ("JE_BENCH_CHILD_SIDE", side.name().to_owned()),
            ("JE_BENCH_CHILD_URL", url.to_owned()),
            ("JE_BENCH_CHILD_GROUP", group.to_owned()),
        ],
    )
}

/// Scenario 5: for each backlog size (ascending), top the stream up to that
/// many events and measure each side's peak RSS in a fresh process.
pub async fn memory(settings: &Settings, raw: &Raw, url: &str) -> Scenario {
    let mut backlogs = settings.backlogs.clone();
    backlogs.sort_unstable();
    common::recreate_stream(&raw.js).await;
    let mut stored = 0usize;
    let mut series = Vec::new();
    let mut peaks: Vec<(usize, f64, f64)> = Vec::new();
    let mut heap_peaks: Vec<(usize, f64, f64)> = Vec::new();
    for (index, backlog) in backlogs.iter().copied().enumerate() {
        if backlog > stored {
            let start = Instant::now();
            fill(raw, &common::events(stored as u64, backlog - stored)).await;
            eprintln!(
                "  backlog topped up to {backlog} events in {:.1}s",
                start.elapsed().as_secs_f64()
            );
            stored = backlog;
        }
        let mut peak = [0.0, 0.0];
        let mut heap_peak = [0.0, 0.0];
        for side in order(index) {
            let group = format!("mem-{}-{backlog}", side.name());
            let url = url.to_owned();
            let group_for_child = group.clone();
            let report =
                tokio::task::spawn_blocking(move || run_child(side, &url, &group_for_child))
                    .await
                    .expect("child join");
            let peak_kib = report["peak_rss_kib"].as_u64().unwrap_or(0);
            let slot = if side == Side::Jetevents { 0 } else { 1 };
            peak[slot] = peak_kib as f64 / 1024.0;
            heap_peak[slot] =
                report["peak_heap_bytes"].as_u64().unwrap_or(0) as f64 / 1024.0 / 1024.0;
            eprintln!(
                "  [5] backlog {backlog:>8} {:<9} peak RSS {:>7.1} MiB (start {:.1} MiB, handled {})",
                side.name(),
                peak[slot],
                report["baseline_kib"].as_u64().unwrap_or(0) as f64 / 1024.0,
                report["handled"]
            );
            let stream = raw.js.get_stream(STREAM).await.expect("stream");
            let _ = stream.delete_consumer(&group).await;
            series.push(json!({"backlog": backlog, "report": report}));
        }
        peaks.push((backlog, peak[0], peak[1]));
        heap_peaks.push((backlog, heap_peak[0], heap_peak[1]));
    }
    let mut scenario = Scenario::new(
        "5",
        format!(
            "peak client RSS and heap, backlog, slow handler ({} ms/event, {} s), max_ack_pending {}",
            settings.slow_handler_ms, settings.memory_secs, settings.memory_max_ack_pending
        ),
    );
    push_series(&mut scenario, "peak RSS", &peaks);
    push_series(&mut scenario, "peak heap", &heap_peaks);
    scenario.extra = json!({ "children": series });
    scenario
}

/// One metric per backlog of `what` (MiB), and its growth from the smallest
/// backlog to the largest, which must stay under 10%.
fn push_series(scenario: &mut Scenario, what: &str, peaks: &[(usize, f64, f64)]) {
    for (backlog, je, raw) in peaks {
        scenario.push(Metric::lower(
            format!("{what}, backlog {backlog}"),
            "MiB",
            *je,
            *raw,
            0.0,
        ));
    }
    if let (Some(first), Some(last)) = (peaks.first(), peaks.last()) {
        if last.0 > first.0 {
            let mut growth = Metric::lower(
                format!("{what} growth {} -> {}", first.0, last.0),
                "x",
                last.1 / first.1,
                last.2 / first.2,
                1.10,
            );
            growth.absolute = true;
            scenario.push(growth);
        }
    }
}
