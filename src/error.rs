//! The error type shared by every operation: `Error<Kind>`.
//!
//! Each operation has its own kind enum (marked `#[non_exhaustive]`) and an alias
//! such as [`ConsumeError`](crate::consume::ConsumeError) = `Error<ConsumeErrorKind>`. The
//! kind says *what* went wrong in terms a caller can act on; the source, when
//! there is one, keeps the underlying error for logs. This is the pattern of
//! async-nats, so users of both libraries read errors the same way.
//! [`PublishError`](crate::publish::PublishError) wraps one and adds the id of
//! the event, to publish it again with.

use std::fmt;

/// Boxed source error kept inside an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An error of one operation, with a typed kind and the underlying cause.
///
/// ```
/// use jetevents::Error;
///
/// #[derive(Debug, Clone, PartialEq)]
/// enum LookupErrorKind { Missing }
/// impl std::fmt::Display for LookupErrorKind {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("missing")
///     }
/// }
///
/// let err: Error<LookupErrorKind> = Error::new(LookupErrorKind::Missing);
/// assert_eq!(err.kind(), &LookupErrorKind::Missing);
/// assert_eq!(err.to_string(), "missing");
/// ```
pub struct Error<Kind> {
    kind: Kind,
    source: Option<BoxError>,
}

impl<Kind> Error<Kind> {
    /// An error of `kind` without an underlying cause.
    pub fn new(kind: Kind) -> Self {
        Self { kind, source: None }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(kind: Kind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// What went wrong, for a caller to match on.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// Consumes the error, giving its kind.
    pub fn into_kind(self) -> Kind {
        self.kind
    }

    /// Turns this error into one of another operation, keeping the cause chain.
    pub fn map_kind<Other>(self, f: impl FnOnce(Kind) -> Other) -> Error<Other> {
        Error {
            kind: f(self.kind),
            source: self.source,
        }
    }
}

impl<Kind: fmt::Display> fmt::Display for Error<Kind> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{}: {}", self.kind, source),
            None => write!(f, "{}", self.kind),
        }
    }
}

impl<Kind: fmt::Debug> fmt::Debug for Error<Kind> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl<Kind: fmt::Debug + fmt::Display> std::error::Error for Error<Kind> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|source| source.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl<Kind> From<Kind> for Error<Kind> {
    fn from(kind: Kind) -> Self {
        Self::new(kind)
    }
}

/// The error and its causes on one line, `": "`-joined. Many errors (ours,
/// async-nats's) already print their source in `Display`: a cause whose text
/// is already there is not repeated.
pub(crate) fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        if !text.contains(&next_text) {
            text.push_str(": ");
            text.push_str(&next_text);
        }
        cause = next.source();
    }
    text
}
