//! A slow handler under a fast producer, with a million-event backlog and a
//! server that would hand over all of it (`max_ack_pending` above the
//! backlog): the client's own bounds (prefetch and concurrency) are what keep
//! its memory flat, and the backlog stays on the server.
//!
//! Its own binary (one test): it reads the resident set size of the whole
//! process, which other tests would disturb. Not scaled: a million events is
//! the point, and the bound does not depend on the count.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

mod checker;
mod support;
use checker::{chaos_stream, eventually, op, rss_kib, Op, Running};

const BACKLOG: usize = 1_000_000;
/// Filler bytes: the event is about 130 bytes of JSON data and some 350
/// bytes of CloudEvents headers.
const PAD: usize = 100;
/// The server would deliver the whole backlog: only the client limits it.
const MAX_ACK_PENDING: i64 = 2 * BACKLOG as i64;
const CONCURRENCY: usize = 4;
const PREFETCH: usize = 64;
/// Published per `publish_many` call, with a big window: the producer runs
/// far ahead of 4 handlers at 5 ms each.
const CHUNK: usize = 5_000;
const WINDOW: usize = 1_000;
const HANDLER_DELAY: Duration = Duration::from_millis(5);

/// What the client may keep per event it holds (message, headers, decoded
/// envelope and its task), generously: the whole event is about 500 bytes.
const KIB_PER_HELD_EVENT: u64 = 8;
/// Allocator and runtime noise that does not grow with the backlog: arenas,
/// buffers of the connection and of the publisher's chunks growing once.
const SLACK_KIB: u64 = 24 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handler_under_a_fast_producer_keeps_memory_bounded() {
    let server = support::shared_server().await;
    let env = support::unique("mem");
    let client = support::connect(&server.url(), &env, |_| {}).await;
    let stream = support::unique("MEM");
    chaos_stream(&client, &stream, 1).await;
    let publisher = client.publisher();
    let acked = Arc::new(AtomicUsize::new(0));
    // Publishes one chunk; counts its acks (a set of a million ids would
    // itself grow the memory measured).
    let publish_chunk = |first: usize| {
        let publisher = publisher.clone();
        let acked = acked.clone();
        async move {
            let events: Vec<Op> = (first..first + CHUNK).map(|n| op("mem", n, PAD)).collect();
            let results = publisher.publish_many(&events, WINDOW).await;
            let ok = results.iter().filter(|r| r.is_ok()).count();
            acked.fetch_add(ok, Ordering::SeqCst);
            assert_eq!(ok, CHUNK, "{:?}", results.iter().find(|r| r.is_err()));
        }
    };

    let handled = Arc::new(AtomicUsize::new(0));
    let running = Running::start(
        jetevents::consume::Consumer::builder(&client, "slow")
            .stream(&stream)
            .dead_letter_stream(format!("{stream}_DL"))
            .max_ack_pending(MAX_ACK_PENDING)
            .concurrency(CONCURRENCY)
            .prefetch(PREFETCH)
            .pull_expiry(Duration::from_millis(500))
            .with_state(handled.clone())
            .handle(
                |_event: Op, ctx: jetevents::consume::Context<Arc<AtomicUsize>>| async move {
                    tokio::time::sleep(HANDLER_DELAY).await;
                    ctx.state().fetch_add(1, Ordering::SeqCst);
                    Ok::<_, jetevents::consume::HandlerError>(())
                },
            )
            .build()
            .await
            .unwrap(),
    );
    let consumer_info = || async {
        let stream = client
            .jetstream()
            .unwrap()
            .get_stream(&stream)
            .await
            .unwrap();
        stream.consumer_info("slow").await.unwrap()
    };

    // Warm up with one chunk: connection, publisher, consumer and allocator
    // reach their working size before the baseline.
    publish_chunk(0).await;
    eventually("a first batch handled", Duration::from_secs(60), || async {
        handled.load(Ordering::SeqCst) >= PREFETCH
    })
    .await;
    let baseline = rss_kib();

    let peak = Cell::new(baseline);
    let most_ack_pending = Cell::new(0);
    let sample = |info: &async_nats::jetstream::consumer::Info| {
        peak.set(peak.get().max(rss_kib()));
        most_ack_pending.set(most_ack_pending.get().max(info.num_ack_pending));
    };
    let mut most_pending = 0;
    for first in (CHUNK..BACKLOG).step_by(CHUNK) {
        publish_chunk(first).await;
        let info = consumer_info().await;
        most_pending = most_pending.max(info.num_pending);
        sample(&info);
    }
    // The whole backlog is out: keep measuring while the handlers take
    // another few prefetches from it.
    let handled_after_publishing = handled.load(Ordering::SeqCst);
    eventually(
        "handling goes on after publishing",
        Duration::from_secs(60),
        || async {
            sample(&consumer_info().await);
            handled.load(Ordering::SeqCst) >= handled_after_publishing + 4 * PREFETCH
        },
    )
    .await;

    let (peak, most_ack_pending) = (peak.get(), most_ack_pending.get());
    let growth = peak.saturating_sub(baseline);
    let held = (PREFETCH + CONCURRENCY) as u64;
    let bound = held * KIB_PER_HELD_EVENT + SLACK_KIB;
    println!(
        "rss baseline {baseline} KiB, peak {peak} KiB, growth {growth} KiB (bound {bound} KiB); \
         most pending on the server {most_pending}, most ack pending {most_ack_pending}, \
         handled {} of {}",
        handled.load(Ordering::SeqCst),
        acked.load(Ordering::SeqCst)
    );
    // The client holds at most prefetch + concurrency events; a client that
    // buffered the backlog would hold hundreds of MiB of it.
    assert!(
        growth <= bound,
        "memory grew by {growth} KiB, more than {bound} KiB"
    );
    // The server really held a large backlog for this consumer, and did not
    // cap what it handed over: the client did.
    assert!(
        most_pending >= (BACKLOG / 2) as u64,
        "the backlog on the server stayed small: {most_pending}"
    );
    // Held by the client (prefetch + concurrency), plus acks on their way:
    // the runner pulls again as soon as a handler returns, before the server
    // has processed that handler's ack.
    assert!(
        most_ack_pending <= 2 * (PREFETCH + CONCURRENCY),
        "{most_ack_pending} events ack pending: the client pulled beyond its prefetch"
    );

    running.stop().await;
    // Nothing lost: the stream holds every acked event once, and each is
    // either handled (and acked) or still waiting for the group. Nothing
    // handled twice: no event was redelivered.
    let stored = client
        .jetstream()
        .unwrap()
        .get_stream(&stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(stored, acked.load(Ordering::SeqCst) as u64);
    eventually(
        "the group accounts for every stored event",
        Duration::from_secs(30),
        || async {
            let info = consumer_info().await;
            handled.load(Ordering::SeqCst) as u64 + info.num_ack_pending as u64 + info.num_pending
                == stored
        },
    )
    .await;
    assert_eq!(consumer_info().await.num_redelivered, 0);
    // The row scripts/fault-suite.sh collects (no fault injected; the
    // accounting above stands for lost = unexpected = duplicates = 0).
    println!(
        "FAULT-ROW | slow-handler-memory | {stored} | none: RSS +{} MiB (bound {} MiB), {most_pending} pending | {stored} | 0 | 0 | 0 (0 stored) | 0 | 0 (0 ops)",
        growth / 1024,
        bound / 1024
    );
}
