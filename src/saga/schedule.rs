//! Server message scheduling (nats-server 2.12+, ADR-51): a message on a
//! schedule subject, held by the stream, that the server publishes to a
//! target subject of the same stream at a time. async-nats has the header
//! names only; this is the small builder of the headers.

use async_nats::header::{HeaderMap, NATS_SCHEDULE, NATS_SCHEDULE_TARGET};
use chrono::{DateTime, SecondsFormat, Utc};

/// One message the server publishes once, at `at`, on `target`.
///
/// ```
/// use jetevents::saga::Schedule;
/// let at = chrono::DateTime::parse_from_rfc3339("2030-01-02T03:04:05Z").unwrap().to_utc();
/// let headers = Schedule::at(at, "dev.shop.order.timedout.v1").headers();
/// assert_eq!(headers.get("Nats-Schedule").unwrap().as_str(), "@at 2030-01-02T03:04:05Z");
/// assert_eq!(headers.get("Nats-Schedule-Target").unwrap().as_str(), "dev.shop.order.timedout.v1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    at: DateTime<Utc>,
    target: String,
}

impl Schedule {
    /// Fires once at `at` (whole seconds: the server's resolution), on `target`.
    pub fn at(at: DateTime<Utc>, target: impl Into<String>) -> Self {
        Self {
            at,
            target: target.into(),
        }
    }

    /// When it fires.
    pub fn time(&self) -> DateTime<Utc> {
        self.at
    }

    /// The headers that make a message on a schedule subject this schedule.
    pub fn headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::new();
        self.add_to(&mut headers);
        headers
    }

    /// Adds the schedule's headers to `headers` (an event's, say).
    pub fn add_to(&self, headers: &mut HeaderMap) {
        let at = self.at.to_rfc3339_opts(SecondsFormat::Secs, true);
        headers.insert(NATS_SCHEDULE, format!("@at {at}").as_str());
        headers.insert(NATS_SCHEDULE_TARGET, self.target.as_str());
    }
}
