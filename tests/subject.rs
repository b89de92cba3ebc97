//! Subject builders and filter patterns.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jetevents::event::{Event, EventType};
use jetevents::subject::{
    escape_key, unescape_key, validate_token, SubjectErrorKind, Subjects, MAX_KEY_TOKEN_LEN,
};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct AppointmentConfirmed {
    appointment_id: String,
}

impl Event for AppointmentConfirmed {
    const TYPE: &'static str = "booking.appointment.confirmed.v1";
    fn key(&self) -> Option<String> {
        Some(self.appointment_id.clone())
    }
}

#[derive(Serialize, Deserialize)]
struct Unkeyed;

impl Event for Unkeyed {
    const TYPE: &'static str = "ops.cache.flushed.v3";
}

#[derive(Serialize, Deserialize)]
struct BadType;

impl Event for BadType {
    const TYPE: &'static str = "ops.cache.flushed";
}

fn assert_literal(subject: &str, tokens: usize) {
    let parts: Vec<&str> = subject.split('.').collect();
    assert_eq!(parts.len(), tokens, "{subject}");
    for part in parts {
        validate_token(part).unwrap();
    }
}

#[test]
fn token_rules() {
    for good in ["a", "booking", "A-Z_09", "$x", "a@b", "%41"] {
        validate_token(good).unwrap();
    }
    type Check = fn(&SubjectErrorKind) -> bool;
    let cases: [(&str, Check); 8] = [
        ("", |k| matches!(k, SubjectErrorKind::EmptyToken)),
        ("a.b", |k| {
            matches!(k, SubjectErrorKind::InvalidToken { .. })
        }),
        ("*", |k| matches!(k, SubjectErrorKind::InvalidToken { .. })),
        ("a>", |k| matches!(k, SubjectErrorKind::InvalidToken { .. })),
        ("a b", |k| {
            matches!(k, SubjectErrorKind::InvalidToken { .. })
        }),
        ("a\tb", |k| {
            matches!(k, SubjectErrorKind::InvalidToken { .. })
        }),
        ("a\u{7f}", |k| {
            matches!(k, SubjectErrorKind::InvalidToken { .. })
        }),
        ("café", |k| {
            matches!(k, SubjectErrorKind::InvalidToken { .. })
        }),
    ];
    for (bad, check) in cases {
        let err = validate_token(bad).unwrap_err();
        assert!(check(err.kind()), "{bad:?}: {err}");
    }
}

#[test]
fn event_subjects() {
    let subjects = Subjects::new("prod").unwrap();
    assert_eq!(subjects.env(), "prod");
    let event = AppointmentConfirmed {
        appointment_id: "a-17".into(),
    };
    let subject = subjects.for_event(&event).unwrap();
    assert_eq!(subject, "prod.booking.appointment.confirmed.v1.a-17");
    assert_literal(&subject, 6);

    let subject = subjects.for_event(&Unkeyed).unwrap();
    assert_eq!(subject, "prod.ops.cache.flushed.v3");
    assert_literal(&subject, 5);

    let err = subjects.for_event(&BadType).unwrap_err();
    assert!(matches!(
        err.kind(),
        SubjectErrorKind::InvalidEventType { .. }
    ));
}

#[test]
fn hostile_keys_stay_one_token() {
    let subjects = Subjects::new("dev").unwrap();
    let ty = EventType::of::<AppointmentConfirmed>().unwrap();
    for key in [
        "ana.lima@example.com",
        "a.>",
        "*",
        ">",
        "path/to/file name.txt",
        "tab\there",
        "line\r\nbreak",
        "日本語",
        "emoji 😀",
        "%2E",
        "..",
        " ",
    ] {
        let subject = subjects.event(&ty, Some(key)).unwrap();
        assert_literal(&subject, 6);
        let token = subject.rsplit('.').next().unwrap();
        assert_eq!(unescape_key(token).unwrap(), key);
    }
    assert_eq!(
        escape_key("ana.lima@example.com").unwrap(),
        "ana%2Elima@example%2Ecom"
    );
}

#[test]
fn key_errors() {
    assert_eq!(
        escape_key("").unwrap_err().kind(),
        &SubjectErrorKind::EmptyToken
    );
    let long = "é".repeat(MAX_KEY_TOKEN_LEN / 6 + 1);
    assert_eq!(
        escape_key(&long).unwrap_err().kind(),
        &SubjectErrorKind::KeyTooLong {
            len: long.len() * 3,
            limit: MAX_KEY_TOKEN_LEN
        }
    );
    let subjects = Subjects::new("dev").unwrap();
    let ty = EventType::of::<AppointmentConfirmed>().unwrap();
    assert!(matches!(
        subjects.event(&ty, Some(&long)).unwrap_err().kind(),
        SubjectErrorKind::KeyTooLong { .. }
    ));
    for bad in ["%2e", "%41", "a.b", "%", "%C3", "%FF", "a b"] {
        assert!(
            matches!(
                unescape_key(bad).unwrap_err().kind(),
                SubjectErrorKind::InvalidEscape { .. }
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn invalid_env_and_domain() {
    assert!(Subjects::new("prod.eu").is_err());
    assert!(Subjects::new("").is_err());
    assert!(Subjects::new(">").is_err());
    let subjects = Subjects::new("prod").unwrap();
    assert_eq!(subjects.domain("booking").unwrap(), "prod.booking.>");
    assert!(subjects.domain("booking.*").is_err());
    assert!(subjects.domain("").is_err());
}

#[test]
fn type_filters() {
    let subjects = Subjects::new("prod").unwrap();
    let ty = EventType::of::<AppointmentConfirmed>().unwrap();
    assert_eq!(
        subjects.filters_for_type(&ty),
        [
            "prod.booking.appointment.confirmed.v1",
            "prod.booking.appointment.confirmed.v1.*"
        ]
    );
}

#[test]
fn pattern_filters() {
    let subjects = Subjects::new("prod").unwrap();
    let cases: [(&str, &[&str]); 6] = [
        (
            "booking.appointment.confirmed.v1",
            &[
                "prod.booking.appointment.confirmed.v1",
                "prod.booking.appointment.confirmed.v1.*",
            ],
        ),
        (
            "booking.*.confirmed.*",
            &["prod.booking.*.confirmed.*", "prod.booking.*.confirmed.*.*"],
        ),
        (
            "booking.appointment.*",
            &[
                "prod.booking.appointment.*.*",
                "prod.booking.appointment.*.*.*",
            ],
        ),
        ("*", &["prod.*.*.*.*", "prod.*.*.*.*.*"]),
        ("booking.>", &["prod.booking.>"]),
        (">", &["prod.>"]),
    ];
    for (pattern, expected) in cases {
        assert_eq!(
            subjects.filters_for_pattern(pattern).unwrap(),
            expected,
            "{pattern}"
        );
    }
    for bad in [
        "",
        "booking",
        "booking.appointment",
        "a.b.c.d.e",
        "a.b.c.d.>",
        "a.>.c",
        "a..b.*",
        "a b.*",
        "booking.appt.confirmed.v1.key",
    ] {
        let err = subjects.filters_for_pattern(bad).unwrap_err();
        assert!(
            matches!(err.kind(), SubjectErrorKind::InvalidPattern { .. }),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn event_type_parts() {
    let ty = EventType::parse("booking.appointment.confirmed.v12").unwrap();
    assert_eq!(ty.domain(), "booking");
    assert_eq!(ty.entity(), "appointment");
    assert_eq!(ty.action(), "confirmed");
    assert_eq!(ty.version(), "v12");
    assert_eq!(ty.as_str(), "booking.appointment.confirmed.v12");
    assert_eq!(format!("{ty}"), "booking.appointment.confirmed.v12");
    let err = EventType::parse("booking.appointment.confirmed.1").unwrap_err();
    assert!(matches!(
        err.kind(),
        SubjectErrorKind::InvalidEventType { .. }
    ));
}
