//! What a client asks to see (types, a type glob, a key), checked against what
//! its token grants, and turned into JetStream filter subjects plus the test
//! every event passes before it is sent.
//!
//! Globs are over the four type tokens (`booking.appointment.*.v1`,
//! `booking.>`), as [`Subjects::filters_for_pattern`] takes them.

use jetevents::event::EventType;
use jetevents::subject::{escape_key, Subjects};
use serde::Deserialize;

/// The filters of one request (`?types=a,b&pattern=booking.>&key=42`).
#[derive(Clone, Debug, Default, Deserialize)]
#[non_exhaustive]
pub struct Filter {
    /// Comma-separated event types; empty: no restriction by type list.
    #[serde(default)]
    pub types: Option<String>,
    /// A glob over the type tokens.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Only events with this key (the subject's key token).
    #[serde(default)]
    pub key: Option<String>,
}

/// The event types and type globs a token lets its bearer see (its claims).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub struct Grants {
    /// Event types, exactly.
    #[serde(default)]
    pub types: Vec<String>,
    /// Globs over the type tokens.
    #[serde(default)]
    pub patterns: Vec<String>,
}

impl Grants {
    /// Grants of `types` and `patterns`.
    pub fn new(types: Vec<String>, patterns: Vec<String>) -> Self {
        Self { types, patterns }
    }

    fn allows_type(&self, event_type: &str) -> bool {
        self.types.iter().any(|t| t == event_type)
            || self.patterns.iter().any(|p| glob_covers(p, event_type))
    }

    fn allows_glob(&self, glob: &str) -> bool {
        self.patterns.iter().any(|p| glob_covers(p, glob))
    }
}

/// Why a request's filter is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// Malformed: a bad type, glob or key (400).
    #[error("invalid filter: {0}")]
    Invalid(String),
    /// Outside what the token grants (403).
    #[error("filter outside the token's grants: {0}")]
    Forbidden(String),
}

/// A filter checked against grants: the subjects to read and the test each
/// event passes.
#[derive(Clone, Debug)]
pub(crate) struct Selection {
    /// JetStream filter subjects, sorted: the key of a shared live subscription.
    pub(crate) subjects: Vec<String>,
    types: Vec<String>,
    pattern: Option<String>,
    escaped_key: Option<String>,
    grants: Grants,
}

impl Selection {
    pub(crate) fn resolve(
        filter: &Filter,
        grants: &Grants,
        subjects: &Subjects,
    ) -> Result<Self, FilterError> {
        let invalid = |e: &dyn std::fmt::Display| FilterError::Invalid(e.to_string());
        let types: Vec<String> = filter
            .types
            .iter()
            .flat_map(|t| t.split(','))
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect();
        let escaped_key = match &filter.key {
            Some(key) => Some(escape_key(key).map_err(|e| invalid(&e))?),
            None => None,
        };
        let pattern = filter.pattern.as_deref().map(normalize_glob);
        let mut nats = Vec::new();
        for event_type in &types {
            let parsed = EventType::parse(event_type).map_err(|e| invalid(&e))?;
            if !grants.allows_type(event_type) {
                return Err(FilterError::Forbidden(event_type.clone()));
            }
            match &filter.key {
                Some(key) => nats.push(
                    subjects
                        .event(&parsed, Some(key))
                        .map_err(|e| invalid(&e))?,
                ),
                None => nats.extend(subjects.filters_for_type(&parsed)),
            }
        }
        if let Some(glob) = &pattern {
            let filters = subjects
                .filters_for_pattern(glob)
                .map_err(|e| invalid(&e))?;
            if !grants.allows_glob(glob) && !grants.allows_type(glob) {
                return Err(FilterError::Forbidden(glob.clone()));
            }
            if types.is_empty() {
                nats.extend(filters);
            }
        }
        if types.is_empty() && pattern.is_none() {
            // No filter asked for: everything the token grants.
            if grants.types.is_empty() && grants.patterns.is_empty() {
                return Err(FilterError::Forbidden("the token grants no events".into()));
            }
            for event_type in &grants.types {
                let parsed = EventType::parse(event_type).map_err(|e| invalid(&e))?;
                nats.extend(subjects.filters_for_type(&parsed));
            }
            for glob in &grants.patterns {
                nats.extend(
                    subjects
                        .filters_for_pattern(glob)
                        .map_err(|e| invalid(&e))?,
                );
            }
        }
        nats.sort();
        nats.dedup();
        Ok(Self {
            subjects: nats,
            types,
            pattern,
            escaped_key,
            grants: grants.clone(),
        })
    }

    /// Whether an event of `event_type` on `subject` goes to this client: the
    /// grants are checked again per event, whatever the subjects matched.
    pub(crate) fn admits(&self, event_type: &str, subject: &str) -> bool {
        self.grants.allows_type(event_type)
            && (self.types.is_empty() || self.types.iter().any(|t| t == event_type))
            && self
                .pattern
                .as_deref()
                .is_none_or(|p| glob_covers(p, event_type))
            && self
                .escaped_key
                .as_deref()
                .is_none_or(|key| subject.split('.').nth(5) == Some(key))
    }
}

/// A glob of fewer than four tokens ending in `*` stands for four tokens.
fn normalize_glob(glob: &str) -> String {
    let tokens = glob.split('.').count();
    if glob.ends_with('*') && tokens < 4 {
        let mut padded = glob.to_owned();
        for _ in tokens..4 {
            padded.push_str(".*");
        }
        return padded;
    }
    glob.to_owned()
}

/// Whether every type `inner` matches (a type or a glob) is matched by `outer`.
fn glob_covers(outer: &str, inner: &str) -> bool {
    let outer = normalize_glob(outer);
    let inner = normalize_glob(inner);
    let mut inner_tokens = inner.split('.');
    for outer_token in outer.split('.') {
        if outer_token == ">" {
            return inner_tokens.next().is_some();
        }
        match inner_tokens.next() {
            Some(">") | None => return false,
            Some(token) if outer_token == "*" || outer_token == token => {}
            Some(_) => return false,
        }
    }
    inner_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn globs_cover_types_and_narrower_globs() {
        assert!(glob_covers("booking.>", "booking.appointment.confirmed.v1"));
        assert!(glob_covers("booking.*", "booking.appointment.confirmed.v1"));
        assert!(glob_covers("booking.>", "booking.appointment.*"));
        assert!(!glob_covers("booking.appointment.*", "booking.>"));
        assert!(!glob_covers(
            "billing.>",
            "booking.appointment.confirmed.v1"
        ));
        assert!(!glob_covers(
            "booking.appointment.confirmed.v1",
            "booking.appointment.confirmed.v2"
        ));
    }

    #[test]
    fn requests_outside_grants_are_forbidden() {
        let subjects = Subjects::new("t").unwrap();
        let grants = Grants::new(vec!["a.b.c.v1".into()], vec!["booking.>".into()]);
        let ask = |types: Option<&str>, pattern: Option<&str>| {
            let filter = Filter {
                types: types.map(Into::into),
                pattern: pattern.map(Into::into),
                key: None,
            };
            Selection::resolve(&filter, &grants, &subjects)
        };
        assert!(ask(Some("a.b.c.v1"), None).is_ok());
        assert!(ask(None, Some("booking.appointment.*")).is_ok());
        assert!(matches!(
            ask(Some("a.b.c.v2"), None),
            Err(FilterError::Forbidden(_))
        ));
        assert!(matches!(
            ask(None, Some(">")),
            Err(FilterError::Forbidden(_))
        ));
        assert!(matches!(
            ask(Some("nope"), None),
            Err(FilterError::Invalid(_))
        ));
        let all = ask(None, None).unwrap();
        assert_eq!(all.subjects, ["t.a.b.c.v1", "t.a.b.c.v1.*", "t.booking.>"]);
        assert!(all.admits("booking.x.y.v1", "t.booking.x.y.v1"));
        assert!(!all.admits("other.x.y.v1", "t.other.x.y.v1"));
    }
}
