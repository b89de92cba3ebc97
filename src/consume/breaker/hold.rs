//! A delivery held by a layer (an open breaker) is not a handler running:
//! the runner stops its handler timeout while it is held, so holding never
//! turns into a timed-out run, a failed attempt.
//!
//! The runner scopes each handler call with [`scoped`]; a layer marks the
//! wait with [`Held`]. Outside the runner (the ephemeral consumer, a test
//! calling a layer directly) marking does nothing.

use std::future::Future;

use tokio::sync::watch;

tokio::task_local! {
    static HOLD: watch::Sender<bool>;
}

/// `call` with its holds reported on the receiver.
pub(crate) fn scoped<F: Future>(
    call: F,
) -> (impl Future<Output = F::Output>, watch::Receiver<bool>) {
    let (held, watched) = watch::channel(false);
    (HOLD.scope(held, call), watched)
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
    let _ = HOLD.try_with(|hold| hold.send_replace(held));
}
