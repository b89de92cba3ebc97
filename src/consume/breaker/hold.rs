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
