//! Content types of event data: which count as JSON.

/// The media type of JSON data.
pub const APPLICATION_JSON: &str = "application/json";

/// Whether data of content type `ct` is JSON; no content type counts as JSON,
/// as the JSON event format says.
pub(crate) fn is_json_content_type(ct: Option<&str>) -> bool {
    let Some(ct) = ct else { return true };
    let media_type = media_type(ct);
    media_type.eq_ignore_ascii_case(APPLICATION_JSON)
        || media_type.eq_ignore_ascii_case("text/json")
        || ends_with_ignore_case(media_type, "+json")
}

/// The media type of a content type, without parameters.
pub(crate) fn media_type(ct: &str) -> &str {
    ct.split(';').next().unwrap_or("").trim()
}

pub(crate) fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

fn ends_with_ignore_case(s: &str, suffix: &str) -> bool {
    s.len() >= suffix.len()
        && s.as_bytes()[s.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}
