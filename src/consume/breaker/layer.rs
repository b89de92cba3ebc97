//! The breaker as a tower layer over the handler stack.

use std::task::{Context as TaskContext, Poll};

use futures_util::future::BoxFuture;
use tower::{Layer, Service, ServiceExt};

use crate::consume::outcome::Outcome;
use crate::consume::stack::Delivery;
use crate::error::BoxError;

use super::machine::CallResult;
use super::{BreakerState, CircuitBreaker};

/// Wraps a handler stack in a [`CircuitBreaker`]: from
/// [`CircuitBreaker::layer`].
#[derive(Clone, Debug)]
pub struct CircuitBreakerLayer {
    breaker: CircuitBreaker,
}

impl CircuitBreakerLayer {
    pub(super) fn new(breaker: CircuitBreaker) -> Self {
        Self { breaker }
    }
}

impl<Inner> Layer<Inner> for CircuitBreakerLayer {
    type Service = CircuitBreakerService<Inner>;

    fn layer(&self, inner: Inner) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
        }
    }
}

/// The service of [`CircuitBreakerLayer`].
#[derive(Clone, Debug)]
pub struct CircuitBreakerService<Inner> {
    inner: Inner,
    breaker: CircuitBreaker,
}

impl<S, Inner> Service<Delivery<S>> for CircuitBreakerService<Inner>
where
    S: Clone + Send + Sync + 'static,
    Inner: Service<Delivery<S>, Response = Outcome, Error = BoxError> + Clone + Send + 'static,
    Inner::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Outcome, BoxError>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        // The inner service is made ready once the breaker lets the call
        // through: readiness must not be taken while the call is held.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, delivery: Delivery<S>) -> Self::Future {
        let breaker = self.breaker.clone();
        let inner = self.inner.clone();
        Box::pin(async move {
            breaker.bind_metrics(delivery.context().publisher().client().metrics());
            loop {
                let permit = breaker.admit().await;
                let probe = permit.is_probe();
                let result = inner.clone().oneshot(delivery.clone()).await;
                let transition = permit.finish(classify(&result));
                // A failed probe: the downstream is still down. Held for
                // the next probe rather than spending one of its attempts.
                if probe && transition == Some(BreakerState::Open) {
                    delivery.context().lineage().restart();
                    continue;
                }
                // Once per delivery: a span field recorded twice is
                // exported twice.
                let admitted_in = if probe {
                    BreakerState::HalfOpen
                } else {
                    BreakerState::Closed
                };
                tracing::Span::current().record("jetevents.breaker.state", admitted_in.as_str());
                return result;
            }
        })
    }
}

/// An ack succeeded, a retry failed; a dead letter says nothing about the
/// downstream.
fn classify(result: &Result<Outcome, BoxError>) -> CallResult {
    match result {
        Ok(outcome) if outcome.is_ack() => CallResult::Success,
        Ok(outcome) if outcome.is_retry() => CallResult::Failure,
        Ok(_) => CallResult::Ignored,
        Err(_) => CallResult::Failure,
    }
}
