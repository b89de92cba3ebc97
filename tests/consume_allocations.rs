//! Heap allocations per consumed event, on the thread that consumes: a
//! guard on what the runner adds to every delivery. Allocations are counted,
//! not timed: the count of one build is the same on a busy machine and a
//! quiet one, so an allocation added to every delivery shows here while a
//! few-percent CPU change would be lost in the noise of a timing.
//!
//! What is counted: everything the consuming thread allocates while events
//! `WARMUP + 1 ..= WARMUP + COUNTED` are handled (a current-thread runtime:
//! the runner, its pull requests, async-nats' reading of the messages, the
//! decoding, the acks). The bound is today's count with less than one
//! allocation per event of headroom: a change that removes allocations
//! lowers it, one that adds one per delivery fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jetevents::consume::{Context, HandlerError};

mod consume_common;
mod support;
use consume_common::{eventually, OrderPlaced, Running, World};

/// The system allocator, counting the allocations of each thread.
struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

thread_local! {
    /// Const and without drop: readable from the allocator at any time,
    /// and itself allocation-free.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn counted() {
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

/// Allocations of this thread so far.
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter only observes calls.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        counted();
        // SAFETY: the caller's contract for `alloc` holds for `System` too.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        counted();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` came from `System` with `layout`.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        counted();
        // SAFETY: `pointer` came from `System` with `layout`.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

/// Events handled before counting starts: the consumer's first pulls and
/// the connection's buffers growing are not per-event costs.
const WARMUP: u64 = 100;
/// Events handled while counting.
const COUNTED: u64 = 400;
/// Allocations per consumed event, at most (see the module docs).
const BOUND: f64 = 29.0;

/// A backlog of typed events consumed by a no-op handler on a current-thread
/// runtime, every delivery acked: the consume scenario of `benches/compare`.
#[tokio::test(flavor = "current_thread")]
async fn consuming_an_event_allocates_no_more_than_the_bound() {
    let world = World::on_shared_server().await;
    for n in 1..=WARMUP + COUNTED {
        world.publish(n).await;
    }

    let handled = Arc::new(AtomicU64::new(0));
    // The thread's count when the warm-up ended and when the last event came.
    let marks = Arc::new(Mutex::new(Vec::new()));
    let consumer = world
        .consumer("allocations")
        .handle({
            let (handled, marks) = (handled.clone(), marks.clone());
            move |_event: OrderPlaced, _ctx: Context| {
                let n = handled.fetch_add(1, Ordering::SeqCst) + 1;
                if n == WARMUP || n == WARMUP + COUNTED {
                    marks
                        .lock()
                        .unwrap()
                        .push((allocations(), std::thread::current().id()));
                }
                async { Ok::<(), HandlerError>(()) }
            }
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    eventually("every event handled", Duration::from_secs(30), || async {
        handled.load(Ordering::SeqCst) >= WARMUP + COUNTED
    })
    .await;
    world.wait_settled("allocations").await;
    running.stop().await;

    let marks = marks.lock().unwrap().clone();
    let [(start, start_thread), (end, end_thread)] = marks[..] else {
        panic!("expected two marks, got {marks:?}");
    };
    assert_eq!(
        start_thread, end_thread,
        "the runtime moved to another thread"
    );
    assert_eq!(
        start_thread,
        std::thread::current().id(),
        "not the test's thread"
    );
    let per_event = (end - start) as f64 / COUNTED as f64;
    println!("allocations per consumed event: {per_event:.2}");
    assert!(
        per_event <= BOUND,
        "{per_event:.2} allocations per consumed event, more than {BOUND}"
    );
}
