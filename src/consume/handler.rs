//! What a handler's failure says, and the options of a route.
//!
//! A handler is any `async fn(E, Context<S>) -> Result<(), HandlerError>`
//! (or a closure of that shape, or another return type that is
//! [`IntoOutcome`](super::IntoOutcome)). The consumer decodes the event,
//! calls the function and turns its result into an ack decision; handlers
//! never ack.

use std::fmt;
use std::time::Duration;

use crate::error::BoxError;

/// Why a handler did not handle an event, and whether trying again can help.
///
/// `?` on any error type that implements `std::error::Error` gives a
/// **transient** error: the event is retried with the consumer's
/// [`RetryPolicy`](super::RetryPolicy). Say [`HandlerError::permanent`] when a
/// retry cannot help (invalid data, a rule the event breaks): the event goes to
/// the dead-letter stream at once.
///
/// Like `anyhow::Error`, `HandlerError` does not implement `std::error::Error`
/// itself; that is what lets it convert from every error type.
///
/// ```
/// use jetevents::consume::{HandlerError, ResultExt};
///
/// fn parse_amount(raw: &str) -> Result<u64, HandlerError> {
///     // A malformed amount stays malformed: no point retrying.
///     let amount: u64 = raw.parse().permanent()?;
///     Ok(amount)
/// }
///
/// fn read_config() -> Result<String, HandlerError> {
///     // Plain `?`: an I/O error is worth retrying.
///     Ok(std::fs::read_to_string("/nonexistent/jetevents.toml")?)
/// }
///
/// assert!(parse_amount("12x").unwrap_err().is_permanent());
/// assert!(read_config().unwrap_err().is_transient());
/// ```
pub struct HandlerError {
    kind: HandlerErrorKind,
    retry_after: Option<Duration>,
    source: BoxError,
}

/// Whether a [`HandlerError`] is worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandlerErrorKind {
    /// May succeed later (a dependency is down, a lock is taken): Nak with the
    /// retry policy's delay, dead-letter after the last attempt.
    Transient,
    /// Will never succeed: dead-letter now.
    Permanent,
}

impl fmt::Display for HandlerErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        })
    }
}

impl HandlerError {
    /// A failure worth retrying later.
    ///
    /// ```
    /// let err = jetevents::consume::HandlerError::transient("inventory service down");
    /// assert!(err.is_transient());
    /// assert_eq!(err.to_string(), "inventory service down");
    /// ```
    pub fn transient(source: impl Into<BoxError>) -> Self {
        Self {
            kind: HandlerErrorKind::Transient,
            retry_after: None,
            source: source.into(),
        }
    }

    /// A failure no retry can fix: the event is dead-lettered at once.
    ///
    /// ```
    /// let err = jetevents::consume::HandlerError::permanent("unknown customer");
    /// assert!(err.is_permanent());
    /// ```
    pub fn permanent(source: impl Into<BoxError>) -> Self {
        Self {
            kind: HandlerErrorKind::Permanent,
            retry_after: None,
            source: source.into(),
        }
    }

    /// Asks for this delay before the next attempt instead of the retry
    /// policy's (e.g. a rate limit's `Retry-After`). Ignored for permanent
    /// errors and on the last attempt.
    ///
    /// ```
    /// use std::time::Duration;
    /// let err = jetevents::consume::HandlerError::transient("rate limited")
    ///     .retry_after(Duration::from_secs(30));
    /// assert_eq!(err.retry_delay(), Some(Duration::from_secs(30)));
    /// ```
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Transient or permanent.
    pub fn kind(&self) -> HandlerErrorKind {
        self.kind
    }

    /// Whether the event will be retried (unless it was the last attempt).
    pub fn is_transient(&self) -> bool {
        self.kind == HandlerErrorKind::Transient
    }

    /// Whether the event goes to the dead-letter stream at once.
    pub fn is_permanent(&self) -> bool {
        self.kind == HandlerErrorKind::Permanent
    }

    /// The delay asked for with [`retry_after`](Self::retry_after).
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.source.as_ref()
    }

    /// Consumes the error, giving the underlying one.
    pub fn into_source(self) -> BoxError {
        self.source
    }

    /// The error and its causes, `": "`-joined: what goes into the
    /// dead-letter entry and the span.
    pub(crate) fn chain(&self) -> String {
        crate::error::error_chain(self.source.as_ref())
    }
}

impl<E> From<E> for HandlerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(err: E) -> Self {
        Self::transient(err)
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("retry_after", &self.retry_after)
            .field("source", &self.source)
            .finish()
    }
}

/// Marks the error of a `Result` as transient or permanent, for `?`.
///
/// ```
/// use jetevents::consume::{HandlerError, ResultExt};
///
/// let result: Result<u32, HandlerError> = "x".parse::<u32>().permanent();
/// assert!(result.unwrap_err().is_permanent());
/// let result: Result<u32, HandlerError> = "7".parse::<u32>().transient();
/// assert_eq!(result.unwrap(), 7);
/// ```
pub trait ResultExt<T> {
    /// Makes the error a [`HandlerError::permanent`].
    fn permanent(self) -> Result<T, HandlerError>;
    /// Makes the error a [`HandlerError::transient`].
    fn transient(self) -> Result<T, HandlerError>;
}

impl<T, E> ResultExt<T> for Result<T, E>
where
    E: Into<BoxError>,
{
    fn permanent(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::permanent)
    }

    fn transient(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::transient)
    }
}

/// Settings of one route that override the consumer's, given to
/// [`ConsumerBuilder::handle_with`](super::ConsumerBuilder::handle_with) or
/// [`handle_pattern_with`](super::ConsumerBuilder::handle_pattern_with).
///
/// ```
/// use std::time::Duration;
/// use jetevents::consume::HandlerOptions;
///
/// // A report that may take a while, in a consumer of quick handlers.
/// let options = HandlerOptions::new().timeout(Duration::from_secs(30 * 60));
/// assert_eq!(options.handler_timeout(), Some(Duration::from_secs(1800)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HandlerOptions {
    timeout: Option<Duration>,
}

impl HandlerOptions {
    /// No overrides: the consumer's settings apply.
    pub fn new() -> Self {
        Self::default()
    }

    /// How long one call of this handler may run before it is cancelled and
    /// its event retried (instead of the consumer's
    /// [`handler_timeout`](super::ConsumerBuilder::handler_timeout)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The timeout set with [`timeout`](Self::timeout), if any.
    pub fn handler_timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("saving booking")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn question_mark_is_transient_and_keeps_the_cause_chain() {
        fn handler() -> Result<(), HandlerError> {
            Err(Outer(std::io::Error::other("disk full")))?;
            Ok(())
        }
        let err = handler().unwrap_err();
        assert!(err.is_transient());
        assert_eq!(err.kind(), HandlerErrorKind::Transient);
        assert_eq!(err.chain(), "saving booking: disk full");
        assert_eq!(err.to_string(), "saving booking");
        assert!(format!("{err:?}").contains("Transient"));
    }

    #[test]
    fn permanent_and_retry_after() {
        let err = HandlerError::permanent(String::from("bad data")).retry_after(Duration::ZERO);
        assert!(err.is_permanent());
        assert_eq!(err.retry_delay(), Some(Duration::ZERO));
        assert_eq!(err.into_source().to_string(), "bad data");
    }
}
