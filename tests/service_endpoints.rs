//! Typed request-reply against a real server: discovery, statistics, typed
//! errors, deadlines, queue groups, user layers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::service::{Info, Stats};
use jetevents::envelope::Envelope;
use jetevents::service::{
    BoxError, CallErrorKind, Context, EndpointError, EndpointRequest, StartErrorKind,
    REQUEST_SCHEMA, REQUEST_TYPE, RESPONSE_SCHEMA,
};

mod service_common;
mod support;
use service_common::{ask_service, client, eventually, quote, unique, QuoteGiven, QuoteRequested};

/// Quotes 100 cents per character of the sku; `missing` is not found.
async fn price(request: QuoteRequested, ctx: Context<String>) -> Result<QuoteGiven, EndpointError> {
    if request.sku == "missing" {
        return Err(EndpointError::new(404, "no such sku"));
    }
    Ok(QuoteGiven {
        cents: 100 * request.sku.len() as u64,
        instance: ctx.state().clone(),
    })
}

/// Starts service `name` (version 1.0.0, state "a") with the `price`
/// endpoint on `client`.
async fn start_price_service(
    client: &jetevents::client::Client,
    name: &str,
) -> jetevents::service::RunningService {
    client
        .service(name, "1.0.0")
        .with_state("a".to_owned())
        .endpoint(price)
        .start()
        .await
        .unwrap()
}

/// The endpoint statistics of `service`'s one instance: (requests, errors).
async fn endpoint_counts(client: &jetevents::client::Client, service: &str) -> (usize, usize) {
    let stats: Stats = ask_service(client, "STATS", service).await;
    let endpoint = &stats.endpoints[0];
    (endpoint.requests, endpoint.errors)
}

#[tokio::test]
async fn discovery_lists_the_endpoints_with_their_schemas() {
    let client = client().await;
    let name = unique("pricing");
    let running = client
        .service(&name, "1.2.3")
        .description("quotes")
        .with_state("a".to_owned())
        .endpoint(price)
        .start()
        .await
        .unwrap();

    let info: Info = ask_service(&client, "INFO", &name).await;
    assert_eq!(
        (info.name.as_str(), info.version.as_str()),
        (name.as_str(), "1.2.3")
    );
    assert_eq!(info.description, "quotes");
    assert_eq!(info.endpoints.len(), 1);
    let endpoint = &info.endpoints[0];
    assert_eq!(
        endpoint.subject,
        format!("rpc.{}.pricing.quote.requested.v1", client.subjects().env())
    );
    assert_eq!(
        endpoint.metadata[REQUEST_TYPE],
        "pricing.quote.requested.v1"
    );
    let request: serde_json::Value =
        serde_json::from_str(&endpoint.metadata[REQUEST_SCHEMA]).unwrap();
    assert_eq!(request["properties"]["sku"]["type"], "string");
    let response: serde_json::Value =
        serde_json::from_str(&endpoint.metadata[RESPONSE_SCHEMA]).unwrap();
    assert_eq!(response["properties"]["cents"]["type"], "integer");
    assert_eq!(running.info().await.unwrap().endpoints, info.endpoints);
    running.stop().await;
}

#[tokio::test]
async fn stats_count_requests_and_errors_and_remote_errors_arrive_typed() {
    let client = client().await;
    let name = unique("pricing");
    let running = start_price_service(&client, &name).await;

    for sku in ["a", "bb", "ccc"] {
        let answer: QuoteGiven = client.call(&quote(sku)).await.unwrap();
        assert_eq!(answer.cents, 100 * sku.len() as u64);
    }
    let err = client
        .call::<_, QuoteGiven>(&quote("missing"))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind(),
        &CallErrorKind::Remote {
            code: 404,
            message: "no such sku".to_owned()
        }
    );
    assert_eq!(endpoint_counts(&client, &name).await, (4, 1));
    running.stop().await;
}

#[tokio::test]
async fn a_slow_endpoint_gives_a_typed_timeout_and_stops_at_the_callers_deadline() {
    let client = client().await;
    let name = unique("pricing");
    let budgets = Arc::new(Mutex::new(Vec::new()));
    let running = client
        .service(&name, "1.0.0")
        .with_state(budgets.clone())
        .endpoint(
            |_: QuoteRequested, ctx: Context<Arc<Mutex<Vec<Option<Duration>>>>>| async move {
                ctx.state().lock().unwrap().push(ctx.remaining());
                std::future::pending::<Result<QuoteGiven, EndpointError>>().await
            },
        )
        .start()
        .await
        .unwrap();

    let budget = Duration::from_millis(300);
    let err = client
        .caller()
        .timeout(budget)
        .call::<_, QuoteGiven>(&quote("a"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &CallErrorKind::TimedOut);
    let seen = budgets.lock().unwrap().clone();
    let remaining = seen[0].expect("the endpoint sees the caller's deadline");
    assert!(remaining <= budget, "{remaining:?}");
    // The endpoint gave up at the caller's deadline, not its own 30 s timeout.
    eventually(
        "the endpoint answered 504",
        Duration::from_secs(10),
        || async { endpoint_counts(&client, &name).await == (1, 1) },
    )
    .await;
    running.stop().await;
}

#[tokio::test]
async fn no_instance_gives_no_responders_without_waiting_for_the_timeout() {
    let client = client().await;
    let err = client
        .caller()
        // Were the caller waiting, this would end the test as a timeout.
        .timeout(Duration::from_secs(120))
        .call::<_, QuoteGiven>(&quote("a"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &CallErrorKind::NoResponders);
}

#[tokio::test]
async fn a_panicking_endpoint_answers_an_internal_error() {
    let client = client().await;
    let running = client
        .service(unique("pricing"), "1.0.0")
        .endpoint(|request: QuoteRequested, _: Context| async move {
            assert_ne!(request.sku, "boom", "the handler panics");
            Ok::<_, EndpointError>(QuoteGiven {
                cents: 1,
                instance: String::new(),
            })
        })
        .start()
        .await
        .unwrap();
    let err = client
        .call::<_, QuoteGiven>(&quote("boom"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), CallErrorKind::Remote { code: 500, .. }),
        "{err}"
    );
    // The instance survives its handler's panic.
    let answer: QuoteGiven = client.call(&quote("fine")).await.unwrap();
    assert_eq!(answer.cents, 1);
    running.stop().await;
}

#[tokio::test]
async fn an_answer_of_another_type_is_undecodable() {
    #[derive(Debug, serde::Serialize, serde::Deserialize)]
    struct Refund {
        cents: u64,
    }
    impl jetevents::Event for Refund {
        const TYPE: &'static str = "pricing.refund.given.v1";
    }
    let client = client().await;
    let running = start_price_service(&client, &unique("pricing")).await;
    let err = client.call::<_, Refund>(&quote("a")).await.unwrap_err();
    assert_eq!(err.kind(), &CallErrorKind::Undecodable);
    running.stop().await;
}

/// Once `start` returns, the server routes requests to the service: a
/// caller on another connection, asking right away, is answered (not told
/// there are no responders). Twenty services, each in its own environment.
#[tokio::test]
async fn a_started_service_answers_a_caller_on_another_connection_at_once() {
    let server = support::shared_server().await;
    for _ in 0..20 {
        let env = unique("env");
        let serving = support::connect(&server.url(), &env, |_| {}).await;
        let calling = support::connect(&server.url(), &env, |_| {}).await;
        let running = start_price_service(&serving, &unique("pricing")).await;
        let answer: QuoteGiven = calling.call(&quote("ab")).await.unwrap();
        assert_eq!(answer.cents, 200);
        running.stop().await;
    }
}

/// A service user who may subscribe to the service's subjects and publish
/// replies, but not publish to `$SRV.INFO`, still starts (without waiting
/// for the INFO request's timeout) and answers.
#[tokio::test]
async fn a_service_that_may_not_ask_its_own_info_still_starts_and_answers() {
    let server = jetevents_testcontainers::NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::UserPassword {
            user: "svc".into(),
            password: "svc-pw".into(),
            permissions: Some(jetevents_testcontainers::Permissions {
                publish_allow: vec!["rpc.>".into(), "_INBOX.>".into(), "$JS.API.INFO".into()],
                subscribe_allow: vec!["rpc.>".into(), "$SRV.>".into(), "_INBOX.>".into()],
            }),
        })
        .start()
        .await
        .unwrap();
    let client = support::connect(&server.url(), &unique("env"), |config| {
        config.auth = jetevents::config::Auth::UserPassword {
            user: "svc".into(),
            password: jetevents::config::Secret::new("svc-pw"),
        };
    })
    .await;
    let mut violations = client.permission_violations();
    let running = tokio::time::timeout(
        Duration::from_secs(5),
        start_price_service(&client, &unique("pricing")),
    )
    .await
    .expect("start waited for the refused INFO request's timeout");
    let refused = violations.recv().await.unwrap();
    assert!(refused.subject.starts_with("$SRV.INFO."), "{refused:?}");
    // On the service's own connection, after its subscriptions.
    let answer: QuoteGiven = client.call(&quote("abc")).await.unwrap();
    assert_eq!(answer.cents, 300);
    running.stop().await;
}

#[tokio::test]
async fn two_instances_share_the_requests_each_handled_once() {
    let client = client().await;
    let name = unique("pricing");
    let handled_by = Arc::new(Mutex::new(Vec::new()));
    let mut instances = Vec::new();
    for label in ["first", "second"] {
        let log = handled_by.clone();
        let running = client
            .service(&name, "1.0.0")
            .endpoint(move |_: QuoteRequested, _: Context| {
                log.lock().unwrap().push(label);
                std::future::ready(Ok::<_, EndpointError>(QuoteGiven {
                    cents: 1,
                    instance: label.to_owned(),
                }))
            })
            .start()
            .await
            .unwrap();
        instances.push(running);
    }
    for n in 0..40 {
        let _: QuoteGiven = client.call(&quote(&format!("sku{n}"))).await.unwrap();
    }
    for running in instances {
        running.stop().await;
    }
    let handled_by = handled_by.lock().unwrap().clone();
    // Every request handled by exactly one instance, both taking some.
    assert_eq!(handled_by.len(), 40, "{handled_by:?}");
    let distinct: HashSet<_> = handled_by.iter().collect();
    assert_eq!(distinct.len(), 2, "{handled_by:?}");
}

/// An auth layer: only requests from `allowed` reach the handler; the
/// others are answered 403.
#[derive(Clone)]
struct RequireSource<Inner> {
    inner: Inner,
    allowed: &'static str,
}

impl<S, Inner> tower::Service<EndpointRequest<S>> for RequireSource<Inner>
where
    Inner: tower::Service<EndpointRequest<S>, Response = Envelope, Error = BoxError>,
    Inner::Future: Send + 'static,
{
    type Response = Envelope;
    type Error = BoxError;
    type Future = futures_util::future::BoxFuture<'static, Result<Envelope, BoxError>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: EndpointRequest<S>) -> Self::Future {
        if request.envelope().source != self.allowed {
            let refused = EndpointError::new(
                403,
                format!("{} may not ask for quotes", request.envelope().source),
            );
            return Box::pin(async move { Err(refused.into()) });
        }
        Box::pin(self.inner.call(request))
    }
}

fn require_source<Inner>(
    allowed: &'static str,
) -> impl tower::Layer<Inner, Service = RequireSource<Inner>> + Clone {
    tower::layer::layer_fn(move |inner| RequireSource { inner, allowed })
}

#[tokio::test]
async fn a_user_layer_rejects_requests_before_the_handler_with_its_code() {
    let client = client().await;
    let handled = Arc::new(AtomicUsize::new(0));
    let running = client
        .service(unique("pricing"), "1.0.0")
        .with_state("a".to_owned())
        .endpoint({
            let handled = handled.clone();
            move |request: QuoteRequested, ctx: Context<String>| {
                handled.fetch_add(1, Ordering::SeqCst);
                price(request, ctx)
            }
        })
        .layer(require_source("/trusted"))
        .start()
        .await
        .unwrap();

    let err = client.call::<_, QuoteGiven>(&quote("a")).await.unwrap_err();
    assert_eq!(
        err.kind(),
        &CallErrorKind::Remote {
            code: 403,
            message: "/service-tests may not ask for quotes".to_owned()
        }
    );
    assert_eq!(handled.load(Ordering::SeqCst), 0, "the handler never ran");

    let server = support::shared_server().await;
    let trusted = support::connect(&server.url(), client.subjects().env(), |config| {
        config.source = "/trusted".to_owned();
    })
    .await;
    let answer: QuoteGiven = trusted.call(&quote("bb")).await.unwrap();
    assert_eq!(answer.cents, 200);
    assert_eq!(handled.load(Ordering::SeqCst), 1);
    running.stop().await;

    // Layers are typed by the state: one before `with_state` is refused.
    let misordered = client
        .service(unique("pricing"), "1.0.0")
        .layer(require_source("/trusted"))
        .with_state("a".to_owned())
        .endpoint(price)
        .start()
        .await
        .unwrap_err();
    assert_eq!(misordered.kind(), &StartErrorKind::InvalidSpec);
}
