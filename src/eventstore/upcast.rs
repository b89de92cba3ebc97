//! Upcasting: events stored in an older version read as the current one.
//!
//! An event's version is the last token of its CloudEvents type
//! (`bank.account.deposited.v1`). An aggregate lists, in
//! [`Aggregate::upcasts`](super::Aggregate::upcasts), one step per old
//! version to the next; a stored event goes through the steps from its own
//! type until no step starts at the type reached, then decodes as the
//! aggregate's event. The same chain runs on load, in projections and in
//! replays, so stored events are never rewritten.
//!
//! A step is typed, like the consumer's
//! [`upcast`](crate::consume::ConsumerBuilder::upcast) (an old
//! [`Event`] struct into a newer one), or works on the JSON data when the
//! old shape has no Rust type any more.
//!
//! ```
//! use jetevents::eventstore::Upcasts;
//! # use serde::{Deserialize, Serialize};
//! #[derive(Serialize, Deserialize)]
//! struct DepositedV1 { cents: u64 }
//! impl jetevents::Event for DepositedV1 { const TYPE: &'static str = "bank.account.deposited.v1"; }
//! #[derive(Serialize, Deserialize)]
//! struct DepositedV2 { amount: u64, currency: String }
//! impl jetevents::Event for DepositedV2 { const TYPE: &'static str = "bank.account.deposited.v2"; }
//!
//! let upcasts = Upcasts::new()
//!     .upcast(|old: DepositedV1| DepositedV2 { amount: old.cents, currency: "EUR".into() })
//!     .json("bank.account.opened.v1", "bank.account.opened.v2", |mut data| {
//!         data["channel"] = "branch".into();
//!         Ok(data)
//!     });
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::error::BoxError;
use crate::event::Event;

type Convert = Arc<dyn Fn(Value) -> Result<Value, BoxError> + Send + Sync>;

/// One step: from a type to the next version's type.
#[derive(Clone)]
struct Step {
    to: String,
    convert: Convert,
}

/// The upcast steps of one aggregate's events, keyed by the type they read.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Upcasts {
    steps: HashMap<String, Step>,
}

impl fmt::Debug for Upcasts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps = f.debug_map();
        for (from, step) in &self.steps {
            steps.entry(from, &step.to);
        }
        steps.finish()
    }
}

/// Why a stored event could not be brought to the current version.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpcastFailure {
    #[error("upcasting {from} to {to} failed")]
    Step {
        from: String,
        to: String,
        #[source]
        source: BoxError,
    },
    #[error("the upcasts from {0} loop")]
    Cycle(String),
}

impl Upcasts {
    /// No steps: every event is read as stored.
    pub fn new() -> Upcasts {
        Upcasts::default()
    }

    /// Reads events of `Old`'s type as `New`'s type, converted by `upcast`
    /// (a step of the chain: `New` may itself be upcast further).
    pub fn upcast<Old, New, F>(self, upcast: F) -> Upcasts
    where
        Old: Event,
        New: Event,
        F: Fn(Old) -> New + Send + Sync + 'static,
    {
        self.json(Old::TYPE, New::TYPE, move |data| {
            let old = serde_json::from_value::<Old>(data)?;
            Ok(serde_json::to_value(upcast(old))?)
        })
    }

    /// Reads events of type `from` as type `to`, their JSON data converted
    /// by `convert` (`null` for an event without data). Types are full
    /// CloudEvents types; a second step from the same type replaces the
    /// first.
    pub fn json<F>(mut self, from: &str, to: &str, convert: F) -> Upcasts
    where
        F: Fn(Value) -> Result<Value, BoxError> + Send + Sync + 'static,
    {
        self.steps.insert(
            from.to_owned(),
            Step {
                to: to.to_owned(),
                convert: Arc::new(convert),
            },
        );
        self
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The type and data an event of `event_type` with `data` has once
    /// every step from its type ran: the new type (`None` when no step
    /// starts at it) and the data.
    pub(crate) fn apply(
        &self,
        event_type: &str,
        data: Option<Value>,
    ) -> Result<(Option<String>, Option<Value>), UpcastFailure> {
        let Some(mut step) = self.steps.get(event_type) else {
            return Ok((None, data));
        };
        let mut from = event_type.to_owned();
        let mut data = data.unwrap_or(Value::Null);
        // Each step at most once: more means a loop.
        for _ in 0..self.steps.len() {
            data = (step.convert)(data).map_err(|source| UpcastFailure::Step {
                from: from.clone(),
                to: step.to.clone(),
                source,
            })?;
            from.clone_from(&step.to);
            match self.steps.get(&from) {
                Some(next) => step = next,
                None => {
                    let data = (!data.is_null()).then_some(data);
                    return Ok((Some(from), data));
                }
            }
        }
        Err(UpcastFailure::Cycle(event_type.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(field: &'static str) -> impl Fn(Value) -> Result<Value, BoxError> {
        move |mut data| {
            data[field] = true.into();
            Ok(data)
        }
    }

    #[test]
    fn a_chain_runs_every_step_from_the_stored_version() -> Result<(), UpcastFailure> {
        let upcasts = Upcasts::new()
            .json("a.b.c.v1", "a.b.c.v2", add("two"))
            .json("a.b.c.v2", "a.b.c.v3", add("three"));
        let from_v1 = upcasts.apply("a.b.c.v1", Some(serde_json::json!({})))?;
        assert_eq!(
            from_v1,
            (
                Some("a.b.c.v3".to_owned()),
                Some(serde_json::json!({"two": true, "three": true}))
            )
        );
        let from_v2 = upcasts.apply("a.b.c.v2", Some(serde_json::json!({})))?;
        assert_eq!(
            from_v2,
            (
                Some("a.b.c.v3".to_owned()),
                Some(serde_json::json!({"three": true}))
            )
        );
        assert_eq!(upcasts.apply("a.b.c.v3", None)?, (None, None));
        Ok(())
    }

    #[test]
    fn a_loop_of_steps_is_an_error_not_a_hang() {
        let upcasts = Upcasts::new()
            .json("a.b.c.v1", "a.b.c.v2", Ok)
            .json("a.b.c.v2", "a.b.c.v1", Ok);
        assert!(matches!(
            upcasts.apply("a.b.c.v1", None),
            Err(UpcastFailure::Cycle(_))
        ));
    }
}
