//! What becomes of a delivery, and how a handler's return value says it.

use std::fmt;
use std::time::Duration;

use crate::error::{error_chain, BoxError};

use super::dead_letter::DeadLetterReason;
use super::handler::HandlerError;

/// What the consumer does with an event once the handler stack is done
/// with it: ack, retry (with the retry policy's delay or a given one) or
/// dead-letter. The runner settles it; handlers and layers never ack.
///
/// ```
/// use std::time::Duration;
/// use jetevents::consume::Outcome;
///
/// // A downstream said 429, come back in 30 s.
/// let outcome = Outcome::retry_after(Duration::from_secs(30));
/// assert_eq!(outcome.retry_delay(), Some(Duration::from_secs(30)));
/// assert!(Outcome::ack().is_ack());
/// assert!(Outcome::dead_letter("unknown customer").is_dead_letter());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome(pub(crate) Settle);

/// The outcome as the runner reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    /// A failed run: retried unless it was the last attempt.
    Retry {
        /// Instead of the retry policy's delay.
        after: Option<Duration>,
        /// The span's `error.type`.
        error_type: &'static str,
        error: String,
    },
    DeadLetter {
        reason: DeadLetterReason,
        error: String,
    },
}

impl Outcome {
    /// Handled: ack.
    pub fn ack() -> Self {
        Self(Settle::Ack)
    }

    /// A failed run worth retrying, after the retry policy's delay (a
    /// dead letter on the last attempt).
    pub fn retry() -> Self {
        Self::retry_because(None, "retry", "the handler asked for a retry".to_owned())
    }

    /// A failed run to retry after `delay` instead of the retry policy's
    /// (a rate limit's `Retry-After`); a dead letter on the last attempt.
    pub fn retry_after(delay: Duration) -> Self {
        Self::retry_because(
            Some(delay),
            "retry",
            format!("the handler asked for a retry after {delay:?}"),
        )
    }

    /// Never handle this event: copy it to the dead-letter stream with
    /// `reason`, then terminate it.
    pub fn dead_letter(reason: impl Into<String>) -> Self {
        Self(Settle::DeadLetter {
            reason: DeadLetterReason::Permanent,
            error: reason.into(),
        })
    }

    /// Whether the event is acked.
    pub fn is_ack(&self) -> bool {
        matches!(self.0, Settle::Ack)
    }

    /// Whether the event is retried (unless it was the last attempt).
    pub fn is_retry(&self) -> bool {
        matches!(self.0, Settle::Retry { .. })
    }

    /// Whether the event goes to the dead-letter stream.
    pub fn is_dead_letter(&self) -> bool {
        matches!(self.0, Settle::DeadLetter { .. })
    }

    /// The delay asked for before the retry, if any.
    pub fn retry_delay(&self) -> Option<Duration> {
        match self.0 {
            Settle::Retry { after, .. } => after,
            _ => None,
        }
    }

    fn retry_because(after: Option<Duration>, error_type: &'static str, error: String) -> Self {
        Self(Settle::Retry {
            after,
            error_type,
            error,
        })
    }

    /// A run that failed outside the handler's return value (a panic, a
    /// timeout): retried with the retry policy's delay.
    pub(crate) fn failed_run(error_type: &'static str, error: String) -> Self {
        Self::retry_because(None, error_type, error)
    }

    /// The data did not decode into the route's type.
    pub(crate) fn undecodable(err: &BoxError) -> Self {
        Self(Settle::DeadLetter {
            reason: DeadLetterReason::Undecodable,
            error: error_chain(err.as_ref()),
        })
    }

    /// The span's `error.type` and the error, unless acked.
    pub(crate) fn failure(&self) -> Option<(&'static str, &str)> {
        match &self.0 {
            Settle::Ack => None,
            Settle::Retry {
                error_type, error, ..
            } => Some((error_type, error)),
            Settle::DeadLetter { reason, error } => Some((reason.error_type(), error)),
        }
    }

    /// An error out of the handler stack: transient, unless it carries a
    /// [`HandlerError`], which keeps its kind.
    pub(crate) fn from_stack_error(err: BoxError) -> Self {
        match err.downcast::<CarriedHandlerError>() {
            Ok(carried) => carried.0.into(),
            Err(err) => Self::retry_because(None, "transient", error_chain(err.as_ref())),
        }
    }
}

impl DeadLetterReason {
    /// The span's `error.type` of a handler run that dead-letters at once.
    fn error_type(&self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            _ => "permanent",
        }
    }
}

impl From<HandlerError> for Outcome {
    fn from(err: HandlerError) -> Self {
        if err.is_permanent() {
            Self(Settle::DeadLetter {
                reason: DeadLetterReason::Permanent,
                error: err.chain(),
            })
        } else {
            Self::retry_because(err.retry_delay(), "transient", err.chain())
        }
    }
}

/// What a handler returns, made an [`Outcome`] (as axum's
/// `IntoResponse`): `Result<(), HandlerError>`, `()` or [`Outcome`].
///
/// ```
/// use std::time::Duration;
/// use jetevents::consume::{Context, HandlerError, Outcome};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Paid;
/// # impl jetevents::Event for Paid { const TYPE: &'static str = "billing.invoice.paid.v1"; }
///
/// // The usual shape.
/// async fn on_paid(_: Paid, _: Context) -> Result<(), HandlerError> { Ok(()) }
/// // Says when to come back.
/// async fn on_paid_throttled(_: Paid, _: Context) -> Outcome {
///     Outcome::retry_after(Duration::from_secs(30))
/// }
/// // Cannot fail.
/// async fn on_paid_counted(_: Paid, _: Context) {}
/// ```
pub trait IntoOutcome {
    /// The outcome this value stands for.
    fn into_outcome(self) -> Outcome;
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Outcome {
        self
    }
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Outcome {
        Outcome::ack()
    }
}

// One `Result` only, with `HandlerError` only: the closures `|e, ctx|
// async { Ok(()) }` and `async { Err(HandlerError::..) }` then infer
// their types as they did before outcomes. A second one (such as
// `Result<Outcome, HandlerError>`) would make both ambiguous; a
// `HandlerError` says retry-after and dead-letter already.
impl IntoOutcome for Result<(), HandlerError> {
    fn into_outcome(self) -> Outcome {
        self.map_or_else(Outcome::from, |()| Outcome::ack())
    }
}

/// A [`HandlerError`] on its way through the stack's `BoxError`, so a
/// layer's permanent error stays permanent.
struct CarriedHandlerError(HandlerError);

impl fmt::Debug for CarriedHandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for CarriedHandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for CarriedHandlerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source().source()
    }
}

/// A layer returns a `HandlerError` with `?` or `.into()`; it keeps its
/// kind (a permanent one dead-letters the event).
impl From<HandlerError> for BoxError {
    fn from(err: HandlerError) -> Self {
        Box::new(CarriedHandlerError(err))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn handler_errors_keep_their_kind_through_the_stack() {
        let permanent: BoxError = HandlerError::permanent("bad data").into();
        assert!(Outcome::from_stack_error(permanent).is_dead_letter());
        let transient: BoxError = HandlerError::transient("busy")
            .retry_after(Duration::from_secs(3))
            .into();
        let outcome = Outcome::from_stack_error(transient);
        assert_eq!(outcome.retry_delay(), Some(Duration::from_secs(3)));
        let other: BoxError = "deadline elapsed".into();
        let outcome = Outcome::from_stack_error(other);
        assert!(outcome.is_retry());
        assert_eq!(outcome.retry_delay(), None);
    }

    #[test]
    fn return_values_become_outcomes() {
        assert!(().into_outcome().is_ack());
        assert!(Ok::<(), HandlerError>(()).into_outcome().is_ack());
        assert!(Err::<(), _>(HandlerError::permanent("x"))
            .into_outcome()
            .is_dead_letter());
        let asked =
            Err::<(), _>(HandlerError::transient("429").retry_after(Duration::from_millis(5)));
        assert_eq!(
            asked.into_outcome().retry_delay(),
            Some(Duration::from_millis(5))
        );
    }
}
