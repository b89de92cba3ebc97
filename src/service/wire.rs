//! What request-reply puts on the wire besides the CloudEvent: the endpoint
//! subject and the caller's time budget.

use std::time::Duration;

use async_nats::header::{HeaderName, HeaderValue};
use async_nats::HeaderMap;

use crate::event::EventType;
use crate::subject::Subjects;

/// Header carrying the caller's time budget, in whole milliseconds left when
/// the request was sent. Relative, as gRPC's `grpc-timeout`: an absolute
/// deadline would depend on the two hosts' clocks agreeing.
pub const REQUEST_TIMEOUT_HEADER: &str = "Jetevents-Request-Timeout";

/// [`REQUEST_TIMEOUT_HEADER`] as a name built once: a `&str` name is checked
/// and copied on every insert and lookup.
const REQUEST_TIMEOUT: HeaderName = HeaderName::from_static(REQUEST_TIMEOUT_HEADER);

/// The subject of the endpoint answering `request_type`:
/// `rpc.{env}.{request type}`.
///
/// ```
/// use jetevents::{EventType, Subjects};
///
/// let subjects = Subjects::new("dev").unwrap();
/// let request = EventType::parse("pricing.quote.requested.v1").unwrap();
/// assert_eq!(
///     jetevents::service::endpoint_subject(&subjects, &request),
///     "rpc.dev.pricing.quote.requested.v1"
/// );
/// ```
pub fn endpoint_subject(subjects: &Subjects, request_type: &EventType) -> String {
    // Pieces pushed into one allocation: every call builds this subject, and
    // `format!` took as long as validating the type.
    let (env, request_type) = (subjects.env(), request_type.as_str());
    let mut subject = String::with_capacity("rpc..".len() + env.len() + request_type.len());
    for piece in ["rpc.", env, ".", request_type] {
        subject.push_str(piece);
    }
    subject
}

/// Writes `budget` into the request's headers.
pub(crate) fn write_budget(headers: &mut HeaderMap, budget: Duration) {
    let millis = u64::try_from(budget.as_millis()).unwrap_or(u64::MAX);
    headers.insert(REQUEST_TIMEOUT, HeaderValue::from(millis));
}

/// The caller's budget, when the request carries a readable one. An
/// unreadable budget is ignored: the endpoint's own timeout still holds.
pub(crate) fn read_budget(headers: Option<&HeaderMap>) -> Option<Duration> {
    let value = headers?.get(REQUEST_TIMEOUT)?;
    value
        .as_str()
        .trim()
        .parse()
        .ok()
        .map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_round_trips_and_garbage_is_ignored() {
        let mut headers = HeaderMap::new();
        write_budget(&mut headers, Duration::from_millis(1500));
        assert_eq!(
            read_budget(Some(&headers)),
            Some(Duration::from_millis(1500))
        );
        let mut garbage = HeaderMap::new();
        garbage.insert(REQUEST_TIMEOUT_HEADER, "soon");
        assert_eq!(read_budget(Some(&garbage)), None);
        assert_eq!(read_budget(None), None);
    }
}
