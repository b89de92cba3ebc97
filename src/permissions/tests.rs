#![allow(clippy::unwrap_used)]

use super::*;

fn billing() -> ServiceAccess {
    ServiceAccess::new("dev")
        .unwrap()
        .publishes(EventType::parse("billing.invoice.issued.v1").unwrap())
        .consumes("BOOKING", "billing")
        .unwrap()
        .dead_letters(DeadLetterConfig::new("DEAD_LETTERS", "deadletter"))
        .unwrap()
}

#[test]
fn a_service_publishes_only_its_own_event_types() {
    let publish = billing().permissions().publish;
    assert!(publish.contains(&"dev.billing.invoice.issued.v1".to_owned()));
    assert!(publish.contains(&"dev.billing.invoice.issued.v1.*".to_owned()));
    let events: Vec<&String> = publish.iter().filter(|s| s.starts_with("dev.")).collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(!publish.iter().any(|s| s == ">" || s == "$JS.API.>"));
}

#[test]
fn a_service_reads_only_its_own_groups() {
    let publish = billing().permissions().publish;
    for subject in [
        "$JS.API.CONSUMER.INFO.BOOKING.billing",
        "$JS.API.CONSUMER.CREATE.BOOKING.billing.>",
        "$JS.API.CONSUMER.MSG.NEXT.BOOKING.billing",
        "$JS.ACK.BOOKING.billing.>",
        "deadletter.billing.>",
        "$JS.API.STREAM.INFO.DEAD_LETTERS",
    ] {
        assert!(
            publish.contains(&subject.to_owned()),
            "{subject}: {publish:?}"
        );
    }
    let consumer_calls: Vec<&String> = publish
        .iter()
        .filter(|s| s.starts_with("$JS.API.CONSUMER.") || s.starts_with("$JS.ACK."))
        .collect();
    assert!(
        consumer_calls
            .iter()
            .all(|s| s.contains(".BOOKING.billing")),
        "{consumer_calls:?}"
    );
    assert_eq!(
        billing().permissions().subscribe,
        [
            "_INBOX.>",
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.BOOKING.billing"
        ]
    );
}

#[test]
fn streams_are_created_only_when_provisioned() {
    let plain = billing().permissions().publish;
    let created: Vec<&String> = plain
        .iter()
        .filter(|s| s.starts_with("$JS.API.STREAM.CREATE"))
        .collect();
    // Only the account's shared attempts bucket, which groups create.
    assert_eq!(created, ["$JS.API.STREAM.CREATE.KV_jetevents_attempts"]);
    let owner = billing()
        .provisions("BILLING")
        .unwrap()
        .permissions()
        .publish;
    assert!(owner.contains(&"$JS.API.STREAM.CREATE.BILLING".to_owned()));
    assert!(owner.contains(&"$JS.API.STREAM.UPDATE.BILLING".to_owned()));
}

#[test]
fn names_that_would_widen_a_subject_are_refused() {
    let access = ServiceAccess::new("dev").unwrap();
    assert!(access.clone().consumes("BOOKING", "*").is_err());
    assert!(access.clone().consumes("A.B", "billing").is_err());
    assert!(access.clone().provisions(">").is_err());
    assert!(access.clone().claim_checks("DOCS.>").is_err());
    assert!(ServiceAccess::new("de v").is_err());
}

#[test]
fn a_claim_check_bucket_opens_only_its_own_object_store() {
    let publish = billing()
        .claim_checks("DOCS")
        .unwrap()
        .permissions()
        .publish;
    let object_store: Vec<&String> = publish
        .iter()
        .filter(|s| s.contains("OBJ_") || s.starts_with("$O."))
        .collect();
    assert!(!object_store.is_empty());
    assert!(
        object_store
            .iter()
            .all(|s| s.contains("OBJ_DOCS") || s.starts_with("$O.DOCS.")),
        "{object_store:?}"
    );
    assert!(!billing()
        .permissions()
        .publish
        .iter()
        .any(|s| s.contains("OBJ_")));
}

#[test]
fn config_entries_quote_subjects_and_keep_password_variables() {
    let permissions = billing().permissions();
    let user = permissions.user_entry("billing", "$BILLING_PASSWORD");
    assert!(user.contains("user: \"billing\""), "{user}");
    assert!(user.contains("password: $BILLING_PASSWORD\n"), "{user}");
    assert!(user.contains("\"$JS.ACK.BOOKING.billing.>\""), "{user}");
    assert!(
        user.contains("subscribe: {\n      allow: [\n        \"_INBOX.>\""),
        "{user}"
    );
    let literal = permissions.user_entry("billing", "pw\"x");
    assert!(literal.contains(r#"password: "pw\"x""#), "{literal}");
    let nkey = permissions.nkey_entry("UABC");
    assert!(
        nkey.starts_with("{\n  nkey: \"UABC\"\n  permissions: {"),
        "{nkey}"
    );
}
