//! Starting a delivery on the loop's task: polled once as it starts, it
//! joins the set of running deliveries only when it waits. Most handlers
//! finish on their first poll and so do most acks: such a delivery costs
//! the set nothing (no task of its own, no wake-up through its queue), and
//! its allocation is kept for the next one. A delivery that waited gives
//! its allocation back to the loop's free slots when it ends: a delivery's
//! future is over 1 KB, more than the allocator's per-thread cache serves,
//! and each new allocation of that size made the allocator sort its free
//! lists (glibc's `malloc_consolidate`).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use futures_util::stream::FuturesUnordered;
use futures_util::FutureExt;

/// The deliveries that wait: each in the slot it started in.
pub(super) type Running<F> = FuturesUnordered<Slot<F>>;

/// The allocation a delivery's future runs in.
type Place<F> = Pin<Box<Option<F>>>;

/// A delivery's future in an allocation of its own: the future does not
/// move once polled, and the allocation outlives it.
pub(super) struct Slot<F> {
    /// `None` only while it is dropped.
    future: Option<Place<F>>,
    /// Where the slot goes when it is dropped, once it joined the set.
    free: Option<FreeSlots<F>>,
}

/// The allocations of deliveries that waited and ended, for the next ones
/// that wait. At most as many as ever waited at once (the concurrency).
pub(super) struct FreeSlots<F>(Arc<Mutex<Vec<Place<F>>>>);

impl<F> Clone for FreeSlots<F> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<F> Default for FreeSlots<F> {
    fn default() -> Self {
        Self(Arc::default())
    }
}

impl<F> FreeSlots<F> {
    fn take(&self) -> Option<Place<F>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).pop()
    }

    fn give(&self, slot: Place<F>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(slot);
    }
}

impl<F> Drop for Slot<F> {
    fn drop(&mut self) {
        if let (Some(free), Some(mut future)) = (self.free.take(), self.future.take()) {
            // A delivery cut short (shutdown) ends here, as it would have
            // with its allocation.
            future.set(None);
            free.give(future);
        }
    }
}

impl<F: Future<Output = ()>> Future for Slot<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self
            .future
            .as_mut()
            .and_then(|future| future.as_mut().as_pin_mut())
        {
            Some(delivery) => delivery.poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// Starts `delivery`, in the `spare` slot when there is one, else in a
/// free one. A delivery that finishes at once leaves its slot as the
/// spare; one that waits takes its slot into `running`, and gives it to
/// `free` when it ends.
///
/// Polled without a waker: a delivery that waits is polled again by the
/// set, which polls every future pushed into it, and registers its wakers
/// then.
pub(super) fn start<F: Future<Output = ()>>(
    running: &mut Running<F>,
    spare: &mut Option<Slot<F>>,
    free: &FreeSlots<F>,
    delivery: F,
) {
    let future = match spare.take().and_then(|mut slot| slot.future.take()) {
        Some(future) => Some(future),
        None => free.take(),
    };
    let future = match future {
        Some(mut future) => {
            future.set(Some(delivery));
            future
        }
        None => Box::pin(Some(delivery)),
    };
    let mut slot = Slot {
        future: Some(future),
        free: None,
    };
    if (&mut slot).now_or_never().is_some() {
        // Dropped now, not when the slot is next used.
        if let Some(future) = &mut slot.future {
            future.set(None);
        }
        *spare = Some(slot);
    } else {
        slot.free = Some(free.clone());
        running.push(slot);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use futures_util::StreamExt;

    use super::*;

    /// The address of a slot's allocation.
    fn address<F>(slot: &Place<F>) -> *const Option<F> {
        std::ptr::from_ref(slot.as_ref().get_ref())
    }

    fn free_count<F>(free: &FreeSlots<F>) -> usize {
        free.0.lock().unwrap().len()
    }

    /// A delivery that finishes at once is done and leaves its slot to the
    /// next one; one that waits takes its slot into the set, finishes
    /// there, and leaves its slot to the next one that waits.
    #[tokio::test]
    async fn finished_deliveries_leave_their_slot_to_the_next() {
        let done = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let (release_again, released_again) = tokio::sync::oneshot::channel::<()>();
        let mut gates = vec![released_again, released];
        let mut delivery = |wait: bool| {
            let done = done.clone();
            let gate = if wait { gates.pop() } else { None };
            async move {
                if let Some(gate) = gate {
                    gate.await.unwrap();
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        };
        let spare_address = |spare: &Option<Slot<_>>| {
            spare
                .as_ref()
                .and_then(|slot| slot.future.as_ref().map(address))
        };
        let mut running = Running::new();
        let mut spare = None;
        let free = FreeSlots::default();

        start(&mut running, &mut spare, &free, delivery(false));
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert!(running.is_empty());
        let first = spare_address(&spare);
        assert!(first.is_some(), "a finished delivery leaves its slot");

        start(&mut running, &mut spare, &free, delivery(false));
        assert_eq!(done.load(Ordering::SeqCst), 2);
        assert!(running.is_empty());
        assert_eq!(
            spare_address(&spare),
            first,
            "the next delivery reused the slot"
        );

        start(&mut running, &mut spare, &free, delivery(true));
        assert_eq!(done.load(Ordering::SeqCst), 2);
        assert_eq!(running.len(), 1);
        assert!(spare.is_none(), "the waiting delivery took the spare slot");

        release.send(()).unwrap();
        running.next().await.unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 3);
        assert!(running.is_empty());
        assert_eq!(free_count(&free), 1, "the waiting delivery left its slot");
        let freed = free.0.lock().unwrap().first().map(address);
        assert_eq!(freed, first, "the slot it left is the one it took");

        // The next delivery that waits, with no spare, takes the free slot.
        start(&mut running, &mut spare, &free, delivery(true));
        assert_eq!(running.len(), 1);
        assert_eq!(free_count(&free), 0, "the free slot was taken");
        release_again.send(()).unwrap();
        running.next().await.unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 4);
        assert_eq!(free_count(&free), 1);
    }

    /// A delivery dropped before it ends (a shutdown past its grace) is
    /// dropped with its slot's return: nothing of it stays in the free slot.
    #[tokio::test]
    async fn a_delivery_dropped_while_waiting_is_dropped_and_its_slot_freed() {
        let dropped = Arc::new(AtomicUsize::new(0));
        struct CountsDrop(Arc<AtomicUsize>);
        impl Drop for CountsDrop {
            fn drop(&mut self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let guard = CountsDrop(dropped.clone());
        let mut running = Running::new();
        let mut spare = None;
        let free = FreeSlots::default();
        start(&mut running, &mut spare, &free, async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        assert_eq!(running.len(), 1);
        drop(running);
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "the delivery was dropped"
        );
        assert_eq!(free_count(&free), 1, "its slot was freed");
        assert!(
            free.0.lock().unwrap()[0].is_none(),
            "the free slot holds no delivery"
        );
    }
}
