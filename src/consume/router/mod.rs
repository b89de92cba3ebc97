//! The route table: CloudEvents type to a route that decodes the event and
//! calls its typed handler, and the filter subjects that make the server
//! deliver exactly those types. Upcasts are resolved when the consumer is
//! built, so no type-erased event crosses from decoding to the handler.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;

use crate::envelope::Envelope;
use crate::error::BoxError;
use crate::event::{Event, EventType};
use crate::subject::Subjects;

use super::context::Context;
use super::handler::HandlerOptions;
use super::outcome::{IntoOutcome, Outcome};
use super::stack::{Delivery, HandlerService, Handlers, LayerFn, RouteFuture};

/// Decodes a delivery and calls its handler.
type RouteFn<S> = Arc<dyn Fn(Delivery<S>) -> RouteFuture + Send + Sync>;

/// Decodes an envelope's data into `E`, from `E` itself or an upcast older
/// type.
type Decode<E> = Arc<dyn Fn(&Envelope) -> Result<E, BoxError> + Send + Sync>;

/// Makes a handler's route for another decoder of its type (an upcast).
/// The decoder comes type-erased from the upcast's entry: a build-time
/// lookup in a table of several event types, never one per delivery.
type RouteMaker<S> = Arc<dyn Fn(&(dyn Any + Send + Sync)) -> Option<RouteFn<S>> + Send + Sync>;

/// A typed handler, as added.
struct HandlerEntry<S> {
    route: RouteFn<S>,
    make: RouteMaker<S>,
    options: HandlerOptions,
    layers: Vec<LayerFn<S>>,
}

/// An older type handled by the handler of `target` after `decode`.
struct UpcastEntry {
    from: &'static str,
    target: &'static str,
    /// A `Decode<New>`.
    decode: Arc<dyn Any + Send + Sync>,
}

/// A handler of raw envelopes for every type a glob matches.
struct PatternEntry<S> {
    pattern: String,
    route: RouteFn<S>,
    options: HandlerOptions,
    layers: Vec<LayerFn<S>>,
}

/// The route a route-level layer applies to.
#[derive(Clone, Copy)]
enum LastRoute {
    Handler(&'static str),
    Pattern(usize),
}

/// Builds the routes and collects the layers: the state of the consumer
/// builders' route methods.
pub(crate) struct Router<S> {
    /// Every routed type (handled or upcast), to catch one routed twice.
    types: BTreeSet<&'static str>,
    handlers: BTreeMap<&'static str, HandlerEntry<S>>,
    upcasts: Vec<UpcastEntry>,
    patterns: Vec<PatternEntry<S>>,
    last: Option<LastRoute>,
    /// The consumer's layers, innermost first.
    layers: Vec<LayerFn<S>>,
    /// The first configuration mistake, reported by `build`.
    error: Option<String>,
}

impl<S> Default for Router<S> {
    fn default() -> Self {
        Self {
            types: BTreeSet::new(),
            handlers: BTreeMap::new(),
            upcasts: Vec::new(),
            patterns: Vec::new(),
            last: None,
            layers: Vec::new(),
            error: None,
        }
    }
}

/// One route as the runner uses it.
pub(crate) struct Route<S> {
    call: RouteCall<S>,
    pub(crate) options: HandlerOptions,
}

/// What calls a route's handler: a clone is what a delivery's future owns.
pub(crate) enum RouteCall<S> {
    Direct(RouteFn<S>),
    /// With route-level layers.
    Layered(HandlerService<S>),
}

// By hand: a derive would ask `S: Clone`.
impl<S> Clone for RouteCall<S> {
    fn clone(&self) -> Self {
        match self {
            Self::Direct(call) => Self::Direct(call.clone()),
            Self::Layered(stack) => Self::Layered(stack.clone()),
        }
    }
}

impl<S: Clone + Send + Sync + 'static> RouteCall<S> {
    /// Calls the route's layers and handler with `delivery`.
    pub(crate) fn run(&self, delivery: Delivery<S>) -> RouteFuture {
        match self {
            Self::Direct(call) => call(delivery),
            Self::Layered(stack) => Box::pin(tower::ServiceExt::oneshot(stack.clone(), delivery)),
        }
    }
}

/// The resolved table: every type (upcast ones included) to its route.
pub(crate) struct Routes<S> {
    types: HashMap<&'static str, Route<S>>,
    patterns: Vec<(String, Route<S>)>,
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// The route of events of `event_type`; `None`: not handled here.
    pub(crate) fn find(&self, event_type: &str) -> Option<&Route<S>> {
        self.types.get(event_type).or_else(|| {
            self.patterns
                .iter()
                .find(|(pattern, _)| type_matches(pattern, event_type))
                .map(|(_, route)| route)
        })
    }

    /// The types and type patterns handled here, sorted.
    pub(crate) fn handled(&self) -> Vec<String> {
        let mut handled: Vec<String> = (self.types.keys().map(|name| (*name).to_owned()))
            .chain(self.patterns.iter().map(|(pattern, _)| pattern.clone()))
            .collect();
        handled.sort_unstable();
        handled.dedup();
        handled
    }

    /// Whether a route has layers of its own.
    pub(crate) fn has_route_layers(&self) -> bool {
        self.types
            .values()
            .chain(self.patterns.iter().map(|(_, route)| route))
            .any(|route| matches!(route.call, RouteCall::Layered(_)))
    }

    /// Hands `delivery` to its route.
    pub(crate) fn dispatch(&self, delivery: Delivery<S>) -> RouteFuture {
        let event_type = &delivery.envelope().event_type;
        match self.find(event_type) {
            Some(route) => route.call.run(delivery),
            // The runner routes only types it found; a layer changed it.
            None => {
                let error = format!("no route for type {event_type}");
                Box::pin(std::future::ready(Err(BoxError::from(error))))
            }
        }
    }
}

impl<S: Clone + Send + Sync + 'static> Route<S> {
    /// What calls this route, for a delivery's future to own.
    pub(crate) fn call(&self) -> RouteCall<S> {
        self.call.clone()
    }

    fn new(route: RouteFn<S>, options: HandlerOptions, layers: &[LayerFn<S>]) -> Self {
        let call = if layers.is_empty() {
            RouteCall::Direct(route)
        } else {
            let inner = tower::util::BoxCloneSyncService::new(tower::service_fn(move |delivery| {
                route(delivery)
            }));
            RouteCall::Layered(layers.iter().fold(inner, |stack, layer| layer(stack)))
        };
        Self { call, options }
    }
}

/// The route of a typed handler decoding with `decode`.
fn typed_route<E, S, F, Fut>(decode: Decode<E>, handler: Arc<F>) -> RouteFn<S>
where
    E: Event,
    S: Clone + Send + Sync + 'static,
    F: Fn(E, Context<S>) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoOutcome,
{
    Arc::new(move |delivery: Delivery<S>| -> RouteFuture {
        let context = delivery.into_context();
        match decode(context.envelope()) {
            Ok(event) => {
                let call = handler(event, context);
                Box::pin(async move { Ok(call.await.into_outcome()) })
            }
            Err(err) => Box::pin(std::future::ready(Ok(Outcome::undecodable(&err)))),
        }
    })
}

impl<S: Clone + Send + Sync + 'static> Router<S> {
    fn fail(&mut self, message: String) {
        if self.error.is_none() {
            self.error = Some(message);
        }
    }

    fn add_type(&mut self, event_type: &'static str) {
        if let Err(err) = EventType::parse(event_type) {
            self.fail(format!("invalid event type {event_type:?}: {err}"));
            return;
        }
        if !self.types.insert(event_type) {
            self.fail(format!("event type {event_type} is routed twice"));
        }
    }

    pub(crate) fn handle<E, F, Fut>(&mut self, handler: F, options: HandlerOptions)
    where
        E: Event,
        F: Fn(E, Context<S>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoOutcome,
    {
        self.add_type(E::TYPE);
        let handler = Arc::new(handler);
        let own: Decode<E> =
            Arc::new(|envelope: &Envelope| envelope.decode_data::<E>().map_err(BoxError::from));
        let for_upcasts = handler.clone();
        let make: RouteMaker<S> = Arc::new(move |decode: &(dyn Any + Send + Sync)| {
            decode
                .downcast_ref::<Decode<E>>()
                .map(|decode| typed_route(decode.clone(), for_upcasts.clone()))
        });
        self.handlers.insert(
            E::TYPE,
            HandlerEntry {
                route: typed_route(own, handler),
                make,
                options,
                layers: Vec::new(),
            },
        );
        self.last = Some(LastRoute::Handler(E::TYPE));
    }

    pub(crate) fn upcast<Old, New, F>(&mut self, upcast: F)
    where
        Old: Event,
        New: Event,
        F: Fn(Old) -> New + Send + Sync + 'static,
    {
        self.add_type(Old::TYPE);
        let decode: Decode<New> = Arc::new(move |envelope: &Envelope| {
            envelope
                .decode_data::<Old>()
                .map(&upcast)
                .map_err(BoxError::from)
        });
        self.upcasts.push(UpcastEntry {
            from: Old::TYPE,
            target: New::TYPE,
            decode: Arc::new(decode),
        });
    }

    pub(crate) fn handle_pattern<F, Fut>(
        &mut self,
        pattern: &str,
        handler: F,
        options: HandlerOptions,
    ) where
        F: Fn(Envelope, Context<S>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: IntoOutcome,
    {
        let route: RouteFn<S> = Arc::new(move |delivery: Delivery<S>| -> RouteFuture {
            let context = delivery.into_context();
            let call = handler(context.envelope().clone(), context);
            Box::pin(async move { Ok(call.await.into_outcome()) })
        });
        self.patterns.push(PatternEntry {
            pattern: pattern.to_owned(),
            route,
            options,
            layers: Vec::new(),
        });
        self.last = Some(LastRoute::Pattern(self.patterns.len() - 1));
    }

    /// A layer around every route.
    pub(crate) fn layer(&mut self, layer: LayerFn<S>) {
        self.layers.push(layer);
    }

    /// A layer around the route added last.
    pub(crate) fn route_layer(&mut self, layer: LayerFn<S>) {
        let layers = match self.last {
            Some(LastRoute::Handler(event_type)) => self
                .handlers
                .get_mut(event_type)
                .map(|entry| &mut entry.layers),
            Some(LastRoute::Pattern(index)) => {
                self.patterns.get_mut(index).map(|entry| &mut entry.layers)
            }
            None => None,
        };
        match layers {
            Some(layers) => layers.push(layer),
            None => self.fail("`route_layer` before any handler: add one with `handle`".to_owned()),
        }
    }

    /// Checks the table; returns the first mistake.
    pub(crate) fn validate(&self, subjects: &Subjects) -> Result<(), String> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        if self.types.is_empty() && self.patterns.is_empty() {
            return Err("no handlers: add one with `handle`".to_owned());
        }
        for upcast in &self.upcasts {
            if !self.handlers.contains_key(upcast.target) {
                return Err(format!(
                    "{} is upcast to {}, which has no handler",
                    upcast.from, upcast.target
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
        for event_type in &self.types {
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

    /// The routes, upcasts resolved, behind the consumer's layers.
    pub(crate) fn build(self, subjects: &Subjects) -> Result<Handlers<S>, String> {
        self.validate(subjects)?;
        let mut types = HashMap::new();
        for upcast in &self.upcasts {
            let Some(target) = self.handlers.get(upcast.target) else {
                continue;
            };
            let Some(route) = (target.make)(upcast.decode.as_ref()) else {
                return Err(format!(
                    "{} is upcast to {}, whose handler takes another Rust type",
                    upcast.from, upcast.target
                ));
            };
            types.insert(
                upcast.from,
                Route::new(route, target.options, &target.layers),
            );
        }
        for (event_type, entry) in self.handlers {
            types.insert(
                event_type,
                Route::new(entry.route, entry.options, &entry.layers),
            );
        }
        let patterns = self
            .patterns
            .into_iter()
            .map(|entry| {
                let route = Route::new(entry.route, entry.options, &entry.layers);
                (entry.pattern, route)
            })
            .collect();
        Ok(Handlers::new(Routes { types, patterns }, &self.layers))
    }
}

impl Router<()> {
    /// The same routes for handlers that see state `S2`: handlers written
    /// for `()` ignore it. Layers are typed by the state they see, so they
    /// come after.
    pub(crate) fn with_state<S2: Clone + Send + Sync + 'static>(self) -> Router<S2> {
        let adapt = |route: RouteFn<()>| -> RouteFn<S2> {
            Arc::new(move |delivery: Delivery<S2>| route(delivery.map_state(|_| ())))
        };
        let has_layers = !self.layers.is_empty()
            || self.handlers.values().any(|entry| !entry.layers.is_empty())
            || self.patterns.iter().any(|entry| !entry.layers.is_empty());
        let mut error = self.error;
        if has_layers && error.is_none() {
            error = Some("`with_state` must come before `layer` and `route_layer`".to_owned());
        }
        Router {
            types: self.types,
            handlers: self
                .handlers
                .into_iter()
                .map(|(name, entry)| {
                    let make = entry.make;
                    let entry = HandlerEntry {
                        route: adapt(entry.route),
                        make: Arc::new(move |decode: &(dyn Any + Send + Sync)| {
                            make(decode).map(adapt)
                        }),
                        options: entry.options,
                        layers: Vec::new(),
                    };
                    (name, entry)
                })
                .collect(),
            upcasts: self.upcasts,
            patterns: self
                .patterns
                .into_iter()
                .map(|entry| PatternEntry {
                    pattern: entry.pattern,
                    route: adapt(entry.route),
                    options: entry.options,
                    layers: Vec::new(),
                })
                .collect(),
            last: self.last,
            layers: Vec::new(),
            error,
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
mod tests;
