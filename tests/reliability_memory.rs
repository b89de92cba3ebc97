//! A slow handler under a fast producer: the consumer pulls only what its
//! handler slots can take, so the client's memory stays bounded however large
//! the backlog on the server grows.
//!
//! Its own binary (one test): it reads the resident set size of the whole
//! process, which other tests would disturb.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

mod checker;
mod support;
use checker::{chaos_stream, consumer, eventually, op, rss_kib, scaled, Checker, Running};

const EVENT_BYTES: usize = 16 * 1024;
const MAX_ACK_PENDING: i64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_under_a_fast_producer_keeps_memory_bounded() {
    let server = support::shared_server().await;
    let env = support::unique("mem");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("MEM");
    chaos_stream(&client, &stream, 1).await;
    let count = scaled(1_000);
    let checker = Checker::new("slow-handler-memory");
    let publisher = client.publisher();

    // Warm up: connection, consumer and allocator reach their working size.
    let warmup: Vec<_> = (0..50).map(|n| op("warm", n, EVENT_BYTES)).collect();
    for (event, result) in warmup.iter().zip(publisher.publish_many(&warmup, 50).await) {
        checker.record(&event.op, &result);
    }
    drop(warmup);
    let running = Running::start(
        consumer(
            &client,
            "slow",
            &stream,
            &checker,
            Duration::from_millis(10),
        )
        .max_ack_pending(MAX_ACK_PENDING)
        .concurrency(4)
        .ack_wait(Duration::from_secs(5))
        .pull_expiry(Duration::from_millis(500))
        .build()
        .await
        .unwrap(),
    );
    eventually("warm-up handled", Duration::from_secs(30), || async {
        checker.handled_distinct() == 50
    })
    .await;
    let baseline = rss_kib();

    // The fast producer: the whole backlog, in chunks (so the producer's own
    // buffers stay small), far faster than 4 handlers at 10 ms each.
    let mut peak = baseline;
    for chunk in 0..count / 50 {
        let events: Vec<_> = (0..50)
            .map(|n| op("mem", chunk * 50 + n, EVENT_BYTES))
            .collect();
        for (event, result) in events.iter().zip(publisher.publish_many(&events, 50).await) {
            checker.record(&event.op, &result);
        }
        peak = peak.max(rss_kib());
    }
    let (pending, ack_pending) = {
        let stream = client.jetstream().get_stream(&stream).await.unwrap();
        let info = stream.consumer_info("slow").await.unwrap();
        (info.num_pending, info.num_ack_pending)
    };
    // Measure while the backlog is still far larger than what may be in
    // flight: at least ten times max_ack_pending waits on the server.
    let mut samples = 0;
    while checker.handled_distinct() < 50 + count / 2 {
        peak = peak.max(rss_kib());
        samples += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let backlog_kib = (pending as usize * EVENT_BYTES / 1024) as u64;
    let growth = peak.saturating_sub(baseline);
    println!(
        "rss baseline {baseline} KiB, peak {peak} KiB, growth {growth} KiB over {samples} samples; \
         backlog after publishing {pending} events ({backlog_kib} KiB), ack pending {ack_pending}"
    );
    assert!(
        pending >= 10 * MAX_ACK_PENDING as u64,
        "the backlog never exceeded ten times max_ack_pending: {pending}"
    );
    assert!(ack_pending <= MAX_ACK_PENDING as usize);
    // Buffering the backlog would cost at least its size; the bound is half
    // of it (measured growth is a small fraction: see RELIABILITY.md).
    assert!(
        growth < backlog_kib / 2,
        "memory grew by {growth} KiB with a backlog of {backlog_kib} KiB"
    );

    eventually("every event handled", Duration::from_secs(120), || async {
        checker.all_acked_handled()
    })
    .await;
    running.stop().await;
    checker
        .report()
        .assert_no_loss()
        .assert_no_duplicates()
        .assert_all_acked();
}
