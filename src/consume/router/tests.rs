#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
use super::*;

#[derive(serde::Serialize, serde::Deserialize)]
struct Placed {
    n: u64,
}
impl Event for Placed {
    const TYPE: &'static str = "shop.order.placed.v1";
}
#[derive(serde::Serialize, serde::Deserialize)]
struct PlacedV2 {
    n: u64,
    channel: String,
}
impl Event for PlacedV2 {
    const TYPE: &'static str = "shop.order.placed.v2";
}
#[derive(serde::Serialize, serde::Deserialize)]
struct Bad;
impl Event for Bad {
    const TYPE: &'static str = "not a type";
}

async fn ok<E>(_: E, _: Context<()>) -> Result<(), crate::consume::HandlerError> {
    Ok(())
}

/// A router handling `PlacedV2`, upcasting `Placed` to it, and handling the
/// type pattern `pattern` with an envelope handler.
fn upcasting_router(pattern: &str) -> Router<()> {
    let mut router = Router::<()>::default();
    router.handle(ok::<PlacedV2>, HandlerOptions::default());
    router.upcast(|old: Placed| PlacedV2 {
        n: old.n,
        channel: "legacy".into(),
    });
    router.handle_pattern(
        pattern,
        |_: Envelope, _: Context<()>| async { Ok(()) },
        HandlerOptions::default(),
    );
    router
}

#[test]
fn configuration_mistakes_are_reported() {
    let subjects = Subjects::new("dev").unwrap();
    let empty = Router::<()>::default();
    assert!(empty
        .validate(&subjects)
        .unwrap_err()
        .contains("no handlers"));

    let mut twice = Router::<()>::default();
    twice.handle(ok::<Placed>, HandlerOptions::default());
    twice.handle(ok::<Placed>, HandlerOptions::default());
    assert!(twice.validate(&subjects).unwrap_err().contains("twice"));

    let mut bad = Router::<()>::default();
    bad.handle(ok::<Bad>, HandlerOptions::default());
    assert!(bad
        .validate(&subjects)
        .unwrap_err()
        .contains("invalid event type"));

    let mut dangling = Router::<()>::default();
    dangling.upcast(|old: Placed| PlacedV2 {
        n: old.n,
        channel: String::new(),
    });
    assert!(dangling
        .validate(&subjects)
        .unwrap_err()
        .contains("no handler"));

    let mut bad_pattern = Router::<()>::default();
    bad_pattern.handle_pattern(
        "shop.>.x",
        |_: Envelope, _: Context<()>| async { Ok(()) },
        HandlerOptions::default(),
    );
    assert!(bad_pattern
        .validate(&subjects)
        .unwrap_err()
        .contains("pattern"));
}

#[test]
fn routes_typed_upcast_and_pattern_types_only() {
    let subjects = Subjects::new("dev").unwrap();
    let router = upcasting_router("billing.>");
    router.validate(&subjects).unwrap();
    assert_eq!(
        router.filters(&subjects),
        [
            "dev.billing.>",
            "dev.shop.order.placed.v1",
            "dev.shop.order.placed.v1.*",
            "dev.shop.order.placed.v2",
            "dev.shop.order.placed.v2.*",
        ]
    );

    // Decoding, upcasting and calling are covered end to end in
    // tests/consume_features.rs; here, which types find a route.
    let handlers = router.build(&subjects).unwrap();
    let routes = handlers.routes();
    assert!(routes.find("shop.order.placed.v1").is_some());
    assert!(routes.find("shop.order.placed.v2").is_some());
    assert!(routes.find("billing.invoice.paid.v1").is_some());
    assert!(routes.find("shop.order.cancelled.v1").is_none());
}

#[test]
fn glob_matching_of_types() {
    assert!(type_matches(
        "booking.>",
        "booking.appointment.confirmed.v1"
    ));
    assert!(type_matches(
        "booking.appointment.*",
        "booking.appointment.confirmed.v1"
    ));
    assert!(type_matches(
        "booking.*.confirmed.v1",
        "booking.x.confirmed.v1"
    ));
    assert!(!type_matches(
        "booking.*.confirmed.v1",
        "booking.x.cancelled.v1"
    ));
    assert!(!type_matches(
        "billing.>",
        "booking.appointment.confirmed.v1"
    ));
    assert!(!type_matches(
        "booking.appointment.confirmed.v1.*",
        "booking.appointment.confirmed.v1"
    ));
    assert!(type_matches(
        "booking.appointment.confirmed.v1",
        "booking.appointment.confirmed.v1"
    ));
}

#[test]
fn covered_filters_are_dropped() {
    assert!(covers(
        "dev.booking.>",
        "dev.booking.appointment.confirmed.v1.*"
    ));
    assert!(covers("dev.*.x", "dev.a.x"));
    assert!(!covers("dev.*.x", "dev.>"));
    assert!(!covers("dev.a", "dev.a.b"));
    assert!(!covers("dev.a.b", "dev.a"));
    let filters = minimal_filters(vec![
        "dev.booking.appointment.confirmed.v1".into(),
        "dev.booking.appointment.confirmed.v1.*".into(),
        "dev.booking.>".into(),
        "dev.billing.invoice.paid.v1".into(),
        "dev.billing.invoice.paid.v1".into(),
    ]);
    assert_eq!(filters, ["dev.billing.invoice.paid.v1", "dev.booking.>"]);
}

/// A partitioned member lists `handled` in its membership entry, and the
/// others read it with `type_matches`: they must agree with `find`, an
/// upcast's older type included (it finds the upcast's route).
#[test]
fn handled_lists_every_type_that_finds_a_route() {
    let subjects = Subjects::new("dev").unwrap();
    let router = upcasting_router("billing.*");
    let handlers = router.build(&subjects).unwrap();
    let routes = handlers.routes();
    let handled = routes.handled();
    assert_eq!(
        handled,
        ["billing.*", "shop.order.placed.v1", "shop.order.placed.v2"]
    );
    for event_type in [
        "shop.order.placed.v1",
        "shop.order.placed.v2",
        "shop.order.placed.v3",
        "shop.order.cancelled.v1",
        "billing.invoice.paid.v1",
        "billing.invoice.paid",
    ] {
        let listed = handled
            .iter()
            .any(|handled| type_matches(handled, event_type));
        assert_eq!(routes.find(event_type).is_some(), listed, "{event_type}");
    }
}
