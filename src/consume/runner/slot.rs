//! Starting a delivery on the loop's task: polled once as it starts, it
//! joins the set of running deliveries only when it waits. Most handlers
//! finish on their first poll and so do most acks: such a delivery costs
//! the set nothing (no task of its own, no wake-up through its queue), and
//! its allocation is kept for the next one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::stream::FuturesUnordered;
use futures_util::FutureExt;

/// The deliveries that wait: each in the slot it started in.
pub(super) type Running<F> = FuturesUnordered<Slot<F>>;

/// A delivery's future in an allocation of its own: the future does not
/// move once polled, and the allocation outlives it.
pub(super) struct Slot<F>(Pin<Box<Option<F>>>);

impl<F: Future<Output = ()>> Future for Slot<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.0.as_mut().as_pin_mut() {
            Some(delivery) => delivery.poll(cx),
            None => Poll::Ready(()),
        }
    }
}

/// Starts `delivery`, in the `spare` slot when there is one. A delivery
/// that finishes at once leaves its slot as the spare; one that waits
/// takes its slot into `running`.
///
/// Polled without a waker: a delivery that waits is polled again by the
/// set, which polls every future pushed into it, and registers its wakers
/// then.
pub(super) fn start<F: Future<Output = ()>>(
    running: &mut Running<F>,
    spare: &mut Option<Slot<F>>,
    delivery: F,
) {
    let mut slot = match spare.take() {
        Some(mut slot) => {
            slot.0.set(Some(delivery));
            slot
        }
        None => Slot(Box::pin(Some(delivery))),
    };
    if (&mut slot).now_or_never().is_some() {
        // Dropped now, not when the slot is next used.
        slot.0.set(None);
        *spare = Some(slot);
    } else {
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

    /// A delivery that finishes at once is done and leaves its slot to the
    /// next one; one that waits takes its slot into the set and finishes
    /// there.
    #[tokio::test]
    async fn finished_deliveries_leave_their_slot_and_waiting_ones_run_in_the_set() {
        let done = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut released = Some(released);
        let mut delivery = |wait: bool| {
            let done = done.clone();
            let released = if wait { released.take() } else { None };
            async move {
                if let Some(released) = released {
                    released.await.unwrap();
                }
                done.fetch_add(1, Ordering::SeqCst);
            }
        };
        let address = |spare: &Option<Slot<_>>| {
            spare
                .as_ref()
                .map(|slot| std::ptr::from_ref(slot.0.as_ref().get_ref()))
        };
        let mut running = Running::new();
        let mut spare = None;

        start(&mut running, &mut spare, delivery(false));
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert!(running.is_empty());
        let first = address(&spare);
        assert!(first.is_some(), "a finished delivery leaves its slot");

        start(&mut running, &mut spare, delivery(false));
        assert_eq!(done.load(Ordering::SeqCst), 2);
        assert!(running.is_empty());
        assert_eq!(address(&spare), first, "the next delivery reused the slot");

        start(&mut running, &mut spare, delivery(true));
        assert_eq!(done.load(Ordering::SeqCst), 2);
        assert_eq!(running.len(), 1);
        assert!(spare.is_none(), "the waiting delivery took the spare slot");

        release.send(()).unwrap();
        running.next().await.unwrap();
        assert_eq!(done.load(Ordering::SeqCst), 3);
        assert!(running.is_empty());
    }
}
