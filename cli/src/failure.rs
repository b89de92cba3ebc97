//! Why a command failed, as the one line the user sees.

use std::fmt;

/// A failed command: its message, already one line.
#[derive(Debug)]
pub struct Failure(String);

impl Failure {
    /// A failure described by `message`.
    pub fn new(message: impl Into<String>) -> Self {
        Self(one_line(&message.into()))
    }

    /// `error`, prefixed with what was being done.
    pub fn during(what: &str, error: impl fmt::Display) -> Self {
        Self::new(format!("{what}: {error}"))
    }
}

/// Every library and client error converts; its `Display` already carries
/// its causes.
impl<E: std::error::Error> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::new(error.to_string())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Server and parser messages may span lines; the user gets one.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
