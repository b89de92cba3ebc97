//! A delivery held by a layer (an open breaker) is not a handler running:
//! the runner stops its handler timeout while it is held, so holding never
//! turns into a timed-out run, a failed attempt.
//!
//! The runner scopes each handler call with [`scoped`]; a layer marks the
//! wait with [`Held`]. Outside the runner (the ephemeral consumer, a test
//! calling a layer directly) marking does nothing.

use std::future::Future;

use futures_util::future::Either;

use tokio::sync::watch;

tokio::task_local! {
    static HOLD: Option<watch::Sender<bool>>;
}

/// `call` with its holds reported on the receiver. Without layers
/// (`may_hold` false) nothing can hold the call: no channel is made, which
/// would cost an allocation and its wake-ups on every delivery, and no
/// scope either, which would cost two thread-local swaps on every poll.
/// Marking outside any scope does nothing, as inside a scope of `None`;
/// only a call nested in another one's scope (a handler's own call on its
/// task) still gets a scope of `None`, so it cannot mark the outer call.
pub(crate) fn scoped<F: Future>(
    call: F,
    may_hold: bool,
) -> (
    impl Future<Output = F::Output>,
    Option<watch::Receiver<bool>>,
) {
    if !may_hold {
        if HOLD.try_with(|_| ()).is_err() {
            return (Either::Left(call), None);
        }
        return (Either::Right(HOLD.scope(None, call)), None);
    }
    let (held, watched) = watch::channel(false);
    (Either::Right(HOLD.scope(Some(held), call)), Some(watched))
}

/// The delivery of this task is held while this lives.
pub(crate) struct Held(());

impl Held {
    pub(crate) fn start() -> Self {
        mark(true);
        Self(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        mark(false);
    }
}

fn mark(held: bool) {
    // Outside a runner's call there is no one to tell.
    let _ = HOLD.try_with(|hold| hold.as_ref().map(|hold| hold.send_replace(held)));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A call no layer can hold gets no scope of its own, yet a hold marked
    /// inside it, nested in a call that can be held, does not reach the
    /// outer call.
    #[tokio::test]
    async fn a_hold_inside_a_call_no_layer_can_hold_does_not_reach_an_outer_call() {
        let (outer, held) = scoped(
            async {
                let (inner, inner_held) = scoped(
                    async {
                        let _held = Held::start();
                    },
                    false,
                );
                assert!(inner_held.is_none());
                inner.await;
            },
            true,
        );
        let held = held.unwrap();
        // Kept, not dropped, after it finishes: the scope's sender lives
        // as long as the call, and the receiver is read meanwhile.
        tokio::pin!(outer);
        (&mut outer).await;
        assert!(
            !held.has_changed().unwrap(),
            "the outer call was marked held"
        );

        // Outside any scope, marking does nothing (and does not panic).
        let (alone, none) = scoped(async { Held::start() }, false);
        assert!(none.is_none());
        drop(alone.await);
    }
}
