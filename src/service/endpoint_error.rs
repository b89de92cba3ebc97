//! [`EndpointError`]: what an endpoint answers instead of a response.

use crate::publish::PublishError;

/// A failed request, as the caller receives it: a code (HTTP-like by
/// convention: 400 bad request, 404 not found, 500 internal, 504 timed out)
/// and a message, sent in the protocol's `Nats-Service-Error-Code` and
/// `Nats-Service-Error` headers and counted as an error in `$SRV.STATS`.
///
/// A handler returns `Result<Resp, E>` for any `E: Into<EndpointError>`;
/// implement `From<YourError> for EndpointError` to choose the codes.
///
/// ```
/// use jetevents::service::EndpointError;
///
/// let err = EndpointError::new(404, "no such sku");
/// assert_eq!((err.code(), err.message()), (404, "no such sku"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code} {message}")]
pub struct EndpointError {
    code: u16,
    message: String,
}

impl EndpointError {
    /// Code of a request that could not be decoded.
    pub const BAD_REQUEST: u16 = 400;
    /// Code of a handler that panicked or a response that could not be encoded.
    pub const INTERNAL: u16 = 500;
    /// Code of a handler that ran past the deadline.
    pub const TIMED_OUT: u16 = 504;

    /// An error with `code` and `message`.
    pub fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// The code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// A follow-up event that could not be published fails the request as an
/// internal error, so `ctx.publish(..).await?` works in an endpoint.
impl From<PublishError> for EndpointError {
    fn from(err: PublishError) -> Self {
        Self::new(Self::INTERNAL, err.to_string())
    }
}
