//! The [`Event`] trait a serde type implements to be published, and
//! [`EventType`], its validated CloudEvents `type`.

use std::fmt;

use crate::token::{validate_name_token, SubjectError, SubjectErrorKind};
use crate::Error;

/// A serde type that can be published and consumed as a CloudEvent.
///
/// The type's data travels as JSON (`datacontenttype: application/json`).
///
/// ```
/// use jetevents::event::{Event, EventType};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct AppointmentConfirmed {
///     appointment_id: String,
///     patient_id: String,
/// }
///
/// impl Event for AppointmentConfirmed {
///     const TYPE: &'static str = "booking.appointment.confirmed.v1";
///
///     fn key(&self) -> Option<String> {
///         Some(self.appointment_id.clone())
///     }
/// }
///
/// let ty = EventType::of::<AppointmentConfirmed>().unwrap();
/// assert_eq!(ty.entity(), "appointment");
/// ```
pub trait Event: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// CloudEvents type `{domain}.{entity}.{action}.{version}`, e.g.
    /// `"booking.appointment.confirmed.v1"`.
    const TYPE: &'static str;

    /// Aggregate id / partition key: becomes the last subject token (escaped)
    /// and the `partitionkey` extension.
    fn key(&self) -> Option<String> {
        None
    }

    /// Optional `dataschema` URI of this type's data.
    fn data_schema() -> Option<&'static str> {
        None
    }
}

/// A validated CloudEvents type `{domain}.{entity}.{action}.{version}`.
///
/// Each of the four parts is one subject token (see
/// [`validate_token`](crate::subject::validate_token)); the version is `v` followed by digits.
///
/// ```
/// use jetevents::event::EventType;
///
/// let ty = EventType::parse("booking.appointment.confirmed.v1").unwrap();
/// assert_eq!(ty.domain(), "booking");
/// assert_eq!(ty.version(), "v1");
/// assert_eq!(ty.to_string(), "booking.appointment.confirmed.v1");
/// assert!(EventType::parse("booking.appointment.confirmed").is_err());
/// assert!(EventType::parse("booking.appointment.confirmed.1").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventType {
    full: String,
    // Byte offsets of the three dots separating the tokens.
    dots: [usize; 3],
}

impl EventType {
    /// Parses and validates `s`.
    pub fn parse(s: &str) -> Result<EventType, SubjectError> {
        let invalid = |reason: &'static str| {
            Error::new(SubjectErrorKind::InvalidEventType {
                event_type: s.to_owned(),
                reason,
            })
        };
        let mut dots = [0usize; 3];
        let mut count = 0;
        for (i, byte) in s.bytes().enumerate() {
            if byte == b'.' {
                if count == 3 {
                    return Err(invalid("more than four tokens"));
                }
                dots[count] = i;
                count += 1;
            }
        }
        if count != 3 {
            return Err(invalid(
                "expected four tokens {domain}.{entity}.{action}.{version}",
            ));
        }
        let ty = EventType {
            full: s.to_owned(),
            dots,
        };
        for token in [ty.domain(), ty.entity(), ty.action(), ty.version()] {
            validate_name_token(token).map_err(|err| {
                Error::with_source(
                    SubjectErrorKind::InvalidEventType {
                        event_type: s.to_owned(),
                        reason: "invalid token",
                    },
                    err,
                )
            })?;
        }
        let version = ty.version();
        let digits = version.strip_prefix('v').unwrap_or("");
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid("version must be 'v' followed by digits"));
        }
        Ok(ty)
    }

    /// The type of `E`, from `E::TYPE`.
    pub fn of<E: Event>() -> Result<EventType, SubjectError> {
        EventType::parse(E::TYPE)
    }

    /// The full type string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// First token, e.g. `booking`.
    pub fn domain(&self) -> &str {
        &self.full[..self.dots[0]]
    }

    /// Second token, e.g. `appointment`.
    pub fn entity(&self) -> &str {
        &self.full[self.dots[0] + 1..self.dots[1]]
    }

    /// Third token, e.g. `confirmed`.
    pub fn action(&self) -> &str {
        &self.full[self.dots[1] + 1..self.dots[2]]
    }

    /// Fourth token, e.g. `v1`.
    pub fn version(&self) -> &str {
        &self.full[self.dots[2] + 1..]
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl AsRef<str> for EventType {
    fn as_ref(&self) -> &str {
        &self.full
    }
}

impl std::str::FromStr for EventType {
    type Err = SubjectError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::parse(s)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn rejects_bad_types() {
        for bad in [
            "",
            "a.b.c",
            "a.b.c.d.e",
            "a..c.v1",
            "a.b.c.v",
            "a.b.c.vx",
            "a.b.c.V1",
            "a.*.c.v1",
            "a.>.c.v1",
            "a. .c.v1",
            "a.b.c.v1 ",
        ] {
            assert!(EventType::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn accessors() {
        let ty = EventType::parse("d.e.a.v12").unwrap();
        assert_eq!(
            [ty.domain(), ty.entity(), ty.action(), ty.version()],
            ["d", "e", "a", "v12"]
        );
    }
}
