//! One call of the handler stack, run to its end: outcome, panic, timeout
//! or shutdown. Around it: the timeout and the in-progress acks.

use std::any::Any;
use std::future::Future;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::consume::outcome::Outcome;
use crate::error::BoxError;
use crate::transport::Delivery;

use super::progress::ProgressAck;
use crate::consume::settle_report::{SettleOperation, SettleReporter};

/// How a handler call ended.
pub(super) enum Ended {
    /// Returned, failed, panicked or timed out.
    Finished(Outcome),
    /// Cancelled by a shutdown.
    Stopped,
}

/// What the stack's call gave: its outcome, its error or its panic.
type Caught = Result<Result<Outcome, BoxError>, Box<dyn Any + Send>>;

impl From<Caught> for Ended {
    fn from(caught: Caught) -> Self {
        Self::Finished(match caught {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(err)) => Outcome::from_stack_error(err),
            Err(panic) => Outcome::failed_run(
                "panic",
                format!("handler panicked: {}", panic_message(panic.as_ref())),
            ),
        })
    }
}

/// The in-progress acks of a running handler's event.
pub(super) struct KeepAlive<'a, D> {
    pub(super) message: &'a D,
    pub(super) interval: Duration,
    pub(super) reporter: &'a SettleReporter,
    pub(super) stream_sequence: u64,
}

/// Runs a handler call to its end: its result, its timeout or shutdown.
/// The timeout does not run while a layer holds the call (`held`, `None`
/// when no layer can): it starts again, whole, when the hold ends.
///
/// Its event gets in-progress acks meanwhile, sent next to the call rather
/// than before it: an ack waiting for room in the client's queue (a stalled
/// connection) must not stop the call from being polled. On timeout the
/// call is dropped, and with it the acks.
pub(super) async fn run_handler<C, D: Delivery>(
    call: C,
    timeout: Duration,
    keep_alive: KeepAlive<'_, D>,
    mut stopped: watch::Receiver<bool>,
    mut held: Option<watch::Receiver<bool>>,
) -> Ended
where
    C: Future<Output = Caught>,
{
    tokio::pin!(call);
    // Most handlers finish on their first poll: no timers for them, and the
    // waiting is boxed, so every delivery's future does not carry its size
    // (the runner moves each one into the slot it starts in).
    if let Some(caught) = call.as_mut().now_or_never() {
        return caught.into();
    }
    Box::pin(async {
        let KeepAlive {
            message,
            interval,
            reporter,
            stream_sequence,
        } = keep_alive;
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut progress = tokio::time::interval_at(Instant::now() + interval, interval);
        let mut progress_ack = ProgressAck::default();
        let mut holding = is_held(&mut held);
        let mut hold_reported = held.is_some();
        loop {
            tokio::select! {
                caught = &mut call => break caught.into(),
                changed = hold_changed(&mut held), if hold_reported => match changed {
                    Ok(()) => {
                        holding = is_held(&mut held);
                        deadline.as_mut().reset(Instant::now() + timeout);
                    }
                    // The call is over: its scope went with it.
                    Err(_) => hold_reported = false,
                },
                () = &mut deadline, if !holding => break Ended::Finished(Outcome::failed_run(
                    "timeout",
                    format!("handler timed out after {timeout:?}"),
                )),
                _ = progress.tick() => progress_ack.start(message),
                sent = std::future::poll_fn(|cx| progress_ack.poll_sent(cx)),
                    if progress_ack.is_sending() =>
                {
                    if let Err(err) = sent {
                        reporter.failed(
                            stream_sequence,
                            SettleOperation::Progress,
                            &err,
                            "the event may be redelivered while its handler runs",
                        );
                    }
                }
                changed = stopped.changed() => {
                    if changed.is_err() || *stopped.borrow() {
                        break Ended::Stopped;
                    }
                }
            }
        }
    })
    .await
}

/// Whether a layer holds the call now.
fn is_held(held: &mut Option<watch::Receiver<bool>>) -> bool {
    held.as_mut().is_some_and(|held| *held.borrow_and_update())
}

/// The next change of the hold; never, when nothing can hold the call.
async fn hold_changed(
    held: &mut Option<watch::Receiver<bool>>,
) -> Result<(), watch::error::RecvError> {
    match held {
        Some(held) => held.changed().await,
        None => std::future::pending().await,
    }
}

fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(text) = panic.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = panic.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
