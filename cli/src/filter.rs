//! Which events to show: type globs, source, correlation id, time, and the
//! subject patterns the server filters on.

use chrono::{DateTime, Utc};
use clap::Args;
use jetevents::Envelope;

use crate::failure::Failure;

/// Filters on decoded attributes, shared by the commands that read events.
#[derive(Debug, Args)]
pub struct FilterArgs {
    /// Only types matching this glob (`*` any run of characters, `?` one).
    #[arg(long = "type")]
    pub type_glob: Option<String>,
    /// Only events from this CloudEvents source.
    #[arg(long)]
    pub source: Option<String>,
    /// Only events with this `correlationid`.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Only events stored since this time (RFC 3339) or for this long
    /// (`30m`, `24h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
}

/// A checked set of attribute filters.
#[derive(Debug, Default)]
pub struct EventFilter {
    pub type_glob: Option<Glob>,
    pub source: Option<String>,
    pub correlation_id: Option<String>,
    pub key: Option<String>,
}

impl EventFilter {
    /// True when some filter needs the decoded event (undecodable ones
    /// cannot match it).
    pub fn reads_attributes(&self) -> bool {
        self.type_glob.is_some()
            || self.source.is_some()
            || self.correlation_id.is_some()
            || self.key.is_some()
    }

    pub fn matches(&self, envelope: &Envelope) -> bool {
        self.type_glob
            .as_ref()
            .is_none_or(|glob| glob.matches(&envelope.event_type))
            && self.source.as_ref().is_none_or(|s| *s == envelope.source)
            && self
                .correlation_id
                .as_deref()
                .is_none_or(|id| envelope.correlation_id() == Some(id))
            && self
                .key
                .as_deref()
                .is_none_or(|key| envelope.partition_key() == Some(key))
    }
}

/// A type glob: `*` matches any run of characters, `?` one character.
#[derive(Clone, Debug)]
pub struct Glob(Vec<char>);

impl Glob {
    /// Checks `pattern`: CloudEvents types are printable and have no spaces.
    pub fn parse(pattern: &str) -> Result<Glob, Failure> {
        if pattern.is_empty() || pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Failure::new(format!(
                "invalid type filter {pattern:?}: empty or with spaces"
            )));
        }
        Ok(Glob(pattern.chars().collect()))
    }

    pub fn matches(&self, text: &str) -> bool {
        let text: Vec<char> = text.chars().collect();
        glob_match(&self.0, &text)
    }
}

/// Iterative wildcard matching with one backtrack point: linear for the
/// patterns people type.
fn glob_match(pattern: &[char], text: &[char]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Checks a NATS subject pattern before the server sees it, for a clear
/// message: non-empty tokens, `>` only last, wildcards only as whole tokens.
pub fn check_subject_pattern(pattern: &str) -> Result<(), Failure> {
    let invalid = |why: &str| Failure::new(format!("invalid subject filter {pattern:?}: {why}"));
    if pattern.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("spaces or control characters"));
    }
    let tokens: Vec<&str> = pattern.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(invalid("empty token"));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err(invalid("'>' must be the last token"));
        }
        if token.len() > 1 && token.contains(['*', '>']) {
            return Err(invalid("wildcards must be whole tokens"));
        }
    }
    Ok(())
}

impl FilterArgs {
    /// The attribute filters, checked, and the start time.
    pub fn check(
        &self,
        key: Option<String>,
    ) -> Result<(EventFilter, Option<DateTime<Utc>>), Failure> {
        let filter = EventFilter {
            type_glob: self.type_glob.as_deref().map(Glob::parse).transpose()?,
            source: self.source.clone(),
            correlation_id: self.correlation_id.clone(),
            key,
        };
        let since = self
            .since
            .as_deref()
            .map(crate::duration::parse_since)
            .transpose()
            .map_err(Failure::new)?;
        Ok((filter, since))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_types() {
        let glob = Glob::parse("booking.*.confirmed.v?").unwrap();
        assert!(glob.matches("booking.appointment.confirmed.v1"));
        assert!(!glob.matches("booking.appointment.cancelled.v1"));
        assert!(!glob.matches("xbooking.appointment.confirmed.v1"));
        assert!(Glob::parse("*").unwrap().matches(""));
        assert!(Glob::parse("a*b*c").unwrap().matches("aXbYbZc"));
        assert!(!Glob::parse("a*b*c").unwrap().matches("aXbYbZ"));
        assert!(Glob::parse("with space").is_err());
    }

    #[test]
    fn subject_patterns_are_checked() {
        for good in ["dev.booking.>", "dev.*.appointment.*", ">"] {
            check_subject_pattern(good).unwrap();
        }
        for bad in ["dev..x", "dev.>.x", "dev.a*", "", "dev x"] {
            assert!(check_subject_pattern(bad).is_err(), "{bad}");
        }
    }
}
