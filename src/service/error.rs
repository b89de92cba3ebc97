//! The errors of calling an endpoint and of starting a service.

use std::fmt;

use crate::Error;

/// Error of [`Caller::call`](super::Caller::call).
pub type CallError = Error<CallErrorKind>;

/// What went wrong with a call.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallErrorKind {
    /// No instance serves the endpoint: known at once, no waiting.
    NoResponders,
    /// No answer within the timeout. The endpoint may still have done the
    /// work: the outcome is unknown.
    TimedOut,
    /// The endpoint answered with an error.
    Remote {
        /// `Nats-Service-Error-Code`.
        code: u16,
        /// `Nats-Service-Error`.
        message: String,
    },
    /// The answer is not a CloudEvent of the response type.
    Undecodable,
    /// The request could not be built (serialization, type, subject).
    InvalidRequest,
    /// The request could not be sent (connection, permissions).
    Request,
}

impl fmt::Display for CallErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoResponders => f.write_str("no instance serves the endpoint"),
            Self::TimedOut => f.write_str("no answer before the timeout (outcome unknown)"),
            Self::Remote { code, message } => write!(f, "endpoint failed: {code} {message}"),
            Self::Undecodable => f.write_str("undecodable response"),
            Self::InvalidRequest => f.write_str("invalid request"),
            Self::Request => f.write_str("request could not be sent"),
        }
    }
}

/// Error of [`ServiceBuilder::start`](super::ServiceBuilder::start).
pub type StartError = Error<StartErrorKind>;

/// What went wrong starting a service.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StartErrorKind {
    /// The name is not `A-Z a-z 0-9 - _`, the version not semver, or a
    /// request type is invalid or served twice.
    InvalidSpec,
    /// The client has no NATS connection (the in-memory test client).
    NeedsNats,
    /// The server refused a subscription.
    Subscribe,
}

impl fmt::Display for StartErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidSpec => f.write_str("invalid service declaration"),
            Self::NeedsNats => f.write_str("services need a NATS connection"),
            Self::Subscribe => f.write_str("could not subscribe the service's subjects"),
        }
    }
}
