//! The route table: CloudEvents type to decoder and handler, and the filter
//! subjects that make the server deliver exactly those types.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use crate::envelope::Envelope;
use crate::event::{Event, EventType};
use crate::subject::Subjects;

use super::context::Context;
use super::handler::{
    self, AnyEvent, Decoder, ErasedHandler, HandlerError, HandlerFuture, HandlerOptions,
    RoutedHandler,
};

/// A route for one event type: how to decode it and which handler (by the
/// type it decodes to) gets it.
struct TypeRoute {
    decode: Decoder,
    target: &'static str,
}

/// A handler of raw envelopes for every type a glob matches.
struct PatternRoute<S> {
    pattern: String,
    handler: RoutedHandler<S>,
}

/// What the runner does with one envelope.
pub(crate) enum Resolved<S> {
    /// Call `handler` with the decoded event.
    Handle {
        event: AnyEvent,
        handler: RoutedHandler<S>,
    },
    /// The data did not decode into the route's type.
    Undecodable(crate::error::BoxError),
    /// No route for this type.
    Unhandled,
}

/// Routes by CloudEvents type, built by the consumer builders.
pub(crate) struct Router<S> {
    types: BTreeMap<&'static str, TypeRoute>,
    handlers: HashMap<&'static str, RoutedHandler<S>>,
    patterns: Vec<PatternRoute<S>>,
    /// The first configuration mistake, reported by `build`.
    error: Option<String>,
}

impl<S> Default for Router<S> {
    fn default() -> Self {
        Self {
            types: BTreeMap::new(),
            handlers: HashMap::new(),
            patterns: Vec::new(),
            error: None,
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Router<S> {
    fn fail(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(message);
        }
    }

    fn add_type(&mut self, event_type: &'static str, route: TypeRoute) {
        if let Err(err) = EventType::parse(event_type) {
            self.fail(format!("invalid event type {event_type:?}: {err}"));
            return;
        }
        if self.types.insert(event_type, route).is_some() {
            self.fail(format!("event type {event_type} is routed twice"));
        }
    }

    pub(crate) fn handle<E, F, Fut>(&mut self, handler: F, options: HandlerOptions)
    where
        E: Event,
        F: Fn(E, Context<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.add_type(
            E::TYPE,
            TypeRoute {
                decode: handler::decoder::<E>(),
                target: E::TYPE,
            },
        );
        self.handlers.insert(
            E::TYPE,
            RoutedHandler {
                call: handler::erase(handler),
                options,
            },
        );
    }

    pub(crate) fn upcast<Old, New, F>(&mut self, upcast: F)
    where
        Old: Event,
        New: Event,
        F: Fn(Old) -> New + Send + Sync + 'static,
    {
        self.add_type(
            Old::TYPE,
            TypeRoute {
                decode: handler::upcast_decoder::<Old, New, F>(upcast),
                target: New::TYPE,
            },
        );
    }

    pub(crate) fn handle_pattern<F, Fut>(
        &mut self,
        pattern: &str,
        handler: F,
        options: HandlerOptions,
    ) where
        F: Fn(Envelope, Context<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let erased: ErasedHandler<S> = Arc::new(move |event: AnyEvent, context: Context<S>| {
            match event.downcast::<Envelope>() {
                Ok(envelope) => Box::pin(handler(*envelope, context)) as HandlerFuture,
                Err(_) => Box::pin(std::future::ready(Err(HandlerError::permanent(
                    "jetevents bug: pattern route received a typed event",
                )))),
            }
        });
        self.patterns.push(PatternRoute {
            pattern: pattern.to_owned(),
            handler: RoutedHandler {
                call: erased,
                options,
            },
        });
    }

    /// Checks the table; returns the first mistake.
    pub(crate) fn validate(&self, subjects: &Subjects) -> Result<(), String> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if self.types.is_empty() && self.patterns.is_empty() {
            return Err("no handlers: add one with `handle`".to_owned());
        }
        for (event_type, route) in &self.types {
            if !self.handlers.contains_key(route.target) {
                return Err(format!(
                    "{event_type} is upcast to {}, which has no handler",
                    route.target
                ));
            }
        }
        for route in &self.patterns {
            subjects
                .filters_for_pattern(&route.pattern)
                .map_err(|err| format!("invalid pattern {:?}: {err}", route.pattern))?;
        }
        Ok(())
    }

    /// The filter subjects covering every routed type and pattern, without
    /// filters another one already covers (the server rejects overlaps).
    pub(crate) fn filters(&self, subjects: &Subjects) -> Vec<String> {
        let mut filters = Vec::new();
        for event_type in self.types.keys() {
            if let Ok(event_type) = EventType::parse(event_type) {
                filters.extend(subjects.filters_for_type(&event_type));
            }
        }
        for route in &self.patterns {
            if let Ok(pattern_filters) = subjects.filters_for_pattern(&route.pattern) {
                filters.extend(pattern_filters);
            }
        }
        minimal_filters(filters)
    }

    /// The route of `envelope`, with its data decoded.
    pub(crate) fn resolve(&self, envelope: &Envelope) -> Resolved<S> {
        if let Some(route) = self.types.get(envelope.event_type.as_str()) {
            let Some(handler) = self.handlers.get(route.target) else {
                return Resolved::Unhandled;
            };
            return match (route.decode)(envelope) {
                Ok(event) => Resolved::Handle {
                    event,
                    handler: handler.clone(),
                },
                Err(err) => Resolved::Undecodable(err),
            };
        }
        for route in &self.patterns {
            if type_matches(&route.pattern, &envelope.event_type) {
                return Resolved::Handle {
                    event: Box::new(envelope.clone()),
                    handler: route.handler.clone(),
                };
            }
        }
        Resolved::Unhandled
    }
}

impl Router<()> {
    /// The same routes for handlers that see state `S2`: handlers written
    /// for `()` ignore it.
    pub(crate) fn with_state<S2: Clone + Send + Sync + 'static>(self) -> Router<S2> {
        let adapt = |handler: RoutedHandler<()>| -> RoutedHandler<S2> {
            let call = handler.call;
            RoutedHandler {
                call: Arc::new(move |event: AnyEvent, context: Context<S2>| {
                    call(event, context.map_state(|_| ()))
                }),
                options: handler.options,
            }
        };
        Router {
            types: self.types,
            handlers: self
                .handlers
                .into_iter()
                .map(|(name, handler)| (name, adapt(handler)))
                .collect(),
            patterns: self
                .patterns
                .into_iter()
                .map(|route| PatternRoute {
                    pattern: route.pattern,
                    handler: adapt(route.handler),
                })
                .collect(),
            error: self.error,
        }
    }
}

/// Whether CloudEvents type `event_type` matches glob `pattern` (tokens:
/// literal, `*`, trailing `>`; fewer than four tokens ending in `*` are padded
/// with `*`, as in [`Subjects::filters_for_pattern`]).
pub(crate) fn type_matches(pattern: &str, event_type: &str) -> bool {
    let mut pattern_tokens: Vec<&str> = pattern.split('.').collect();
    if pattern_tokens.last() == Some(&"*") {
        while pattern_tokens.len() < 4 {
            pattern_tokens.push("*");
        }
    }
    let type_tokens: Vec<&str> = event_type.split('.').collect();
    for (i, token) in pattern_tokens.iter().enumerate() {
        match *token {
            ">" => return type_tokens.len() > i,
            "*" if i < type_tokens.len() => {}
            literal if type_tokens.get(i) == Some(&literal) => {}
            _ => return false,
        }
    }
    pattern_tokens.len() == type_tokens.len()
}

/// Whether every subject filter `narrow` matches is matched by `wide`.
pub(crate) fn covers(wide: &str, narrow: &str) -> bool {
    let wide: Vec<&str> = wide.split('.').collect();
    let narrow: Vec<&str> = narrow.split('.').collect();
    for (i, token) in wide.iter().enumerate() {
        match (*token, narrow.get(i)) {
            (">", Some(_)) => return true,
            (_, None) => return false,
            ("*", Some(&other)) if other != ">" => {}
            (literal, Some(&other)) if literal == other => {}
            _ => return false,
        }
    }
    wide.len() == narrow.len()
}

/// Filters without duplicates and without those another filter covers.
pub(crate) fn minimal_filters(mut filters: Vec<String>) -> Vec<String> {
    filters.sort();
    filters.dedup();
    let kept: Vec<String> = filters
        .iter()
        .filter(|narrow| {
            !filters
                .iter()
                .any(|wide| wide != *narrow && covers(wide, narrow))
        })
        .cloned()
        .collect();
    kept
}

#[cfg(test)]
mod tests {
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

    async fn ok<E>(_: E, _: Context<()>) -> Result<(), HandlerError> {
        Ok(())
    }

    fn envelope_of<E: Event>(event: &E) -> Envelope {
        Envelope::from_event("/test", event).unwrap()
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
    fn resolves_typed_upcast_pattern_undecodable_and_unhandled() {
        let subjects = Subjects::new("dev").unwrap();
        let mut router = Router::<()>::default();
        router.handle(ok::<PlacedV2>, HandlerOptions::default());
        router.upcast(|old: Placed| PlacedV2 {
            n: old.n,
            channel: "legacy".into(),
        });
        router.handle_pattern(
            "billing.>",
            |_: Envelope, _: Context<()>| async { Ok(()) },
            HandlerOptions::default(),
        );
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

        match router.resolve(&envelope_of(&Placed { n: 4 })) {
            Resolved::Handle { event, .. } => {
                let upcast = event.downcast::<PlacedV2>().unwrap();
                assert_eq!((upcast.n, upcast.channel.as_str()), (4, "legacy"));
            }
            _ => panic!("v1 not upcast"),
        }
        match router.resolve(&envelope_of(&PlacedV2 {
            n: 5,
            channel: "web".into(),
        })) {
            Resolved::Handle { event, .. } => assert!(event.downcast::<PlacedV2>().is_ok()),
            _ => panic!("v2 not routed"),
        }
        let pattern = Envelope::new("/test", "billing.invoice.paid.v1");
        match router.resolve(&pattern) {
            Resolved::Handle { event, .. } => assert!(event.downcast::<Envelope>().is_ok()),
            _ => panic!("pattern not routed"),
        }
        let mut wrong_data = envelope_of(&Placed { n: 1 });
        wrong_data.data = Some("[1, 2]".into());
        assert!(matches!(
            router.resolve(&wrong_data),
            Resolved::Undecodable(_)
        ));
        let other = Envelope::new("/test", "shop.order.cancelled.v1");
        assert!(matches!(router.resolve(&other), Resolved::Unhandled));
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
}
