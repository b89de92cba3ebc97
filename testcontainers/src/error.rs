//! The harness's error type.

use std::error::Error as StdError;
use std::fmt;

/// What went wrong while running a test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HarnessErrorKind {
    /// No `nats-server` binary was found (env, `.tools/` or `PATH`).
    BinaryNotFound,
    /// Starting the server process or container failed.
    Start,
    /// The server did not become ready before the deadline.
    NotReady,
    /// A docker engine or container operation failed.
    Docker,
    /// The operation is not possible on this backend (e.g. killing an external server).
    Unsupported,
    /// Writing the configuration, certificates or keys failed.
    Config,
    /// The monitoring endpoint could not be read or did not say what was asked.
    Monitoring,
    /// Another I/O failure (signals, process wait).
    Io,
}

impl fmt::Display for HarnessErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::BinaryNotFound => "nats-server binary not found",
            Self::Start => "failed to start nats-server",
            Self::NotReady => "nats-server not ready in time",
            Self::Docker => "docker operation failed",
            Self::Unsupported => "operation not supported by this backend",
            Self::Config => "failed to prepare server configuration",
            Self::Monitoring => "monitoring endpoint error",
            Self::Io => "I/O error",
        };
        f.write_str(s)
    }
}

/// Error returned by every fallible operation of this crate.
///
/// ```
/// use jetevents_testcontainers::{HarnessError, HarnessErrorKind};
/// let err = HarnessError::new(HarnessErrorKind::Unsupported, "kill on an external server");
/// assert_eq!(err.kind(), HarnessErrorKind::Unsupported);
/// assert!(err.to_string().contains("external"));
/// ```
#[derive(Debug)]
pub struct HarnessError {
    kind: HarnessErrorKind,
    detail: String,
    source: Option<Box<dyn StdError + Send + Sync + 'static>>,
}

impl HarnessError {
    /// An error of `kind` with a human readable detail.
    pub fn new(kind: HarnessErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            source: None,
        }
    }

    /// An error of `kind` caused by `source`.
    pub fn with_source(
        kind: HarnessErrorKind,
        detail: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind,
            detail: detail.into(),
            source: Some(source.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> HarnessErrorKind {
        self.kind
    }
}

impl fmt::Display for HarnessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}: {}", self.kind, self.detail)
        }?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for HarnessError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
