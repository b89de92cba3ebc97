//! NATS subject patterns as the engine needs them: `*` matches one token, `>`
//! one or more trailing tokens; names of streams and consumers.

/// Whether the literal `subject` matches the pattern `filter`.
pub(crate) fn matches(filter: &str, subject: &str) -> bool {
    let mut pattern = filter.split('.');
    let mut literal = subject.split('.');
    loop {
        match (pattern.next(), literal.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(wanted), Some(token)) if wanted == token => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether some literal subject matches both patterns (the server's
/// "subjects collide").
pub(crate) fn overlap(first: &str, second: &str) -> bool {
    let mut first = first.split('.');
    let mut second = second.split('.');
    loop {
        match (first.next(), second.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(a), Some(b)) if a == b || a == "*" || b == "*" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A subject or filter: non-empty tokens without whitespace, `>` only last.
pub(crate) fn is_valid_pattern(pattern: &str) -> bool {
    let last = pattern.split('.').count() - 1;
    pattern.split('.').enumerate().all(|(index, token)| {
        !token.is_empty()
            && !token.chars().any(|c| c.is_whitespace() || c.is_control())
            && (token != ">" || index == last)
    })
}

/// A subject messages can be published to: valid and without wildcards.
pub(crate) fn is_literal(subject: &str) -> bool {
    is_valid_pattern(subject) && subject.split('.').all(|token| token != "*" && token != ">")
}

/// A stream or durable name: what the server accepts inside an API subject.
pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.chars().any(|c| {
            matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(matches("a.*.c", "a.b.c"));
        assert!(matches("a.>", "a.b.c"));
        assert!(!matches("a.>", "a"));
        assert!(!matches("a.*", "a.b.c"));
        assert!(matches("a.b", "a.b"));
        assert!(!matches("a.b", "a.b.c"));
    }

    #[test]
    fn overlapping_patterns_are_detected() {
        assert!(overlap("a.*", "a.b"));
        assert!(overlap("a.>", "*.b.c"));
        assert!(!overlap("a.*", "a.b.c"));
        assert!(!overlap("a.b", "a.c"));
        assert!(overlap("a.*.c", "a.b.*"));
    }

    #[test]
    fn patterns_and_names_are_validated() {
        assert!(is_valid_pattern("a.*.>"));
        assert!(!is_valid_pattern("a.>.b"));
        assert!(!is_valid_pattern("a..b"));
        assert!(!is_valid_pattern(""));
        assert!(is_literal("a.b"));
        assert!(!is_literal("a.*"));
        assert!(is_valid_name("ORDERS"));
        assert!(!is_valid_name("ORD.ERS"));
        assert!(!is_valid_name(""));
    }
}
