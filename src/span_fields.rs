//! Span field values that need formatting, as `Display` wrappers: a layer
//! formats them only when it records the field, and they write straight
//! into its buffer (no intermediate `String`).

use std::fmt;

/// `messaging.destination.template`: the subject with its key token
/// replaced by `{key}` ([`crate::subject::destination_template`]).
pub(crate) struct DestinationTemplate<'a>(pub(crate) &'a str);

impl fmt::Display for DestinationTemplate<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::subject::before_key(self.0) {
            Some(prefix) => {
                f.write_str(prefix)?;
                f.write_str(".{key}")
            }
            None => f.write_str(self.0),
        }
    }
}

/// `otel.name` of a messaging span: `{operation} {destination template}`.
pub(crate) struct OperationName<'a> {
    pub(crate) operation: &'static str,
    pub(crate) subject: &'a str,
}

impl fmt::Display for OperationName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.operation)?;
        f.write_str(" ")?;
        DestinationTemplate(self.subject).fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_destination_template() {
        for subject in [
            "prod.booking.appointment.confirmed.v1.a-42",
            "prod.booking.appointment.confirmed.v1",
            "prod.booking.appointment.confirmed.v1.a.b",
            "plain",
        ] {
            let template = crate::subject::destination_template(subject);
            assert_eq!(DestinationTemplate(subject).to_string(), template);
            let name = OperationName {
                operation: "publish",
                subject,
            };
            assert_eq!(name.to_string(), format!("publish {template}"));
        }
    }
}
