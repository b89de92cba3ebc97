//! The gateway's metrics, recorded into an in-memory exporter while real
//! clients connect, fail authorization, receive and resume.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../tests/metrics_reader/mod.rs"]
mod metrics_reader;
mod support;

use std::time::Duration;

use jetevents_gateway::{Gateway, GatewayConfig, GatewayMetrics, KeySet};
use metrics_reader::{Metrics, Recorder};
use opentelemetry::KeyValue;
use support::*;

#[tokio::test]
async fn connections_events_auth_failures_and_resumes_are_counted() {
    let world = World::start(|_, _| {}).await;
    let recorder = Recorder::new();
    let keys = KeySet::new().with_hs256(None, SECRET.to_vec());
    let metrics = GatewayMetrics::new(&recorder.meter());
    let gateway = Gateway::with_metrics(
        &world.client,
        keys,
        GatewayConfig::new(&world.stream),
        metrics,
    )
    .await
    .unwrap();
    let (addr, _serve) = serve(gateway, None).await;
    let wait = Duration::from_secs(15);

    assert_eq!(
        SseClient::connect(addr, "/events", &[], None).await.status,
        401
    );
    let auth = format!("Bearer {}", demo_token());
    let mut client = SseClient::connect(addr, "/events", &[("authorization", &auth)], None).await;
    world.publish(1).await;
    let id = client.next_within(wait).await.unwrap().id.unwrap();
    let _resumed = SseClient::connect(
        addr,
        "/events",
        &[("authorization", &auth), ("last-event-id", &id)],
        None,
    )
    .await;

    let totals = recorder.totals();
    let metrics = Metrics(&totals);
    assert_eq!(
        metrics.sum_u64(
            "jetevents.gateway.auth_failures",
            &[KeyValue::new("reason", "missing")]
        ),
        1
    );
    assert_eq!(
        metrics.sum_u64(
            "messaging.client.sent.messages",
            &[KeyValue::new("transport", "sse")]
        ),
        1
    );
    assert_eq!(
        metrics.sum_u64(
            "jetevents.gateway.resumes",
            &[KeyValue::new("outcome", "resumed")]
        ),
        1
    );
    assert_eq!(metrics.sum_i64_points("jetevents.gateway.connections"), [2]);
}
