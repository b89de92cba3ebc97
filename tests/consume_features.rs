//! Follow-up events, upcasting, pattern routes, ephemeral queue groups and
//! trace continuation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use jetevents::codec::{self, Encoding};
use jetevents::consume::{AckMode, Context, EphemeralConsumer, HandlerError};
use jetevents::envelope::Envelope;
use jetevents::publish::PublishOptions;
use serde::{Deserialize, Serialize};

mod consume_common;
mod support;
use consume_common::{eventually, order, Log, OrderPlaced, OrderShipped, Running, World};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct OrderPlacedV2 {
    order: String,
    n: u64,
    channel: String,
}

impl jetevents::Event for OrderPlacedV2 {
    const TYPE: &'static str = "shop.order.placed.v2";
    fn key(&self) -> Option<String> {
        Some(self.order.clone())
    }
}

/// (event id, causation id, correlation id) of every shipped event seen.
type Lineages = Log<(String, Option<String>, Option<String>)>;

#[tokio::test]
async fn follow_up_events_carry_causation_and_correlation() {
    let world = World::on_shared_server().await;
    let shipped: Lineages = Log::default();
    let consumer = world
        .consumer("warehouse")
        .ack_mode(AckMode::Confirmed)
        .with_state(shipped.clone())
        .handle(|event: OrderPlaced, ctx: Context<Lineages>| async move {
            ctx.publish(&OrderShipped { order: event.order }).await?;
            Ok(())
        })
        .handle(|_: OrderShipped, ctx: Context<Lineages>| async move {
            ctx.state().push((
                ctx.id().to_owned(),
                ctx.causation_id().map(str::to_owned),
                ctx.correlation_id().map(str::to_owned),
            ));
            Ok(())
        })
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);

    let plain = world.publish(1).await;
    let flowing = world
        .client
        .publisher()
        .publish_with(&order(2), PublishOptions::new().correlation_id("flow-2"))
        .await
        .unwrap()
        .event_id;
    eventually(
        "both follow-ups handled",
        Duration::from_secs(20),
        || async { shipped.len() == 2 },
    )
    .await;
    let by_cause: BTreeMap<Option<String>, Option<String>> = shipped
        .items()
        .into_iter()
        .map(|(_, causation, correlation)| (causation, correlation))
        .collect();
    // No correlation id on the cause: its own id starts the conversation.
    assert_eq!(by_cause[&Some(plain.clone())], Some(plain));
    assert_eq!(by_cause[&Some(flowing)], Some("flow-2".to_owned()));
    world.wait_settled("warehouse").await;
    running.stop().await;
}

#[tokio::test]
async fn older_versions_are_upcast_to_the_handled_one() {
    let world = World::on_shared_server().await;
    let seen: Log<(String, OrderPlacedV2)> = Log::default();
    let consumer = world
        .consumer("analytics")
        .with_state(seen.clone())
        .handle(
            |event: OrderPlacedV2, ctx: Context<Log<(String, OrderPlacedV2)>>| async move {
                ctx.state().push((ctx.event_type().to_owned(), event));
                Ok(())
            },
        )
        .upcast(|old: OrderPlaced| OrderPlacedV2 {
            order: old.order,
            n: old.n,
            channel: "legacy".into(),
        })
        .build()
        .await
        .unwrap();
    let env = world.client.subjects().env().to_owned();
    let mut filters = consumer.filter_subjects().to_vec();
    filters.sort();
    assert_eq!(
        filters,
        [
            format!("{env}.shop.order.placed.v1"),
            format!("{env}.shop.order.placed.v1.*"),
            format!("{env}.shop.order.placed.v2"),
            format!("{env}.shop.order.placed.v2.*"),
        ]
    );
    let running = Running::start(consumer);
    world.publish(1).await;
    world
        .client
        .publisher()
        .publish(&OrderPlacedV2 {
            order: "o-2".into(),
            n: 2,
            channel: "web".into(),
        })
        .await
        .unwrap();
    eventually("both versions handled", Duration::from_secs(20), || async {
        seen.len() == 2
    })
    .await;
    let mut items = seen.items();
    items.sort_by_key(|(_, event)| event.n);
    assert_eq!(items[0].0, "shop.order.placed.v1");
    assert_eq!(items[0].1.channel, "legacy");
    assert_eq!(items[1].0, "shop.order.placed.v2");
    assert_eq!(items[1].1.channel, "web");
    running.stop().await;
}

#[tokio::test]
async fn upcast_without_a_target_handler_is_a_configuration_error() {
    let world = World::on_shared_server().await;
    let err = world
        .consumer("broken")
        .upcast(|old: OrderPlaced| OrderPlacedV2 {
            order: old.order,
            n: old.n,
            channel: String::new(),
        })
        .build()
        .await
        .unwrap_err();
    assert!(matches!(
        err.kind(),
        jetevents::consume::ConsumeErrorKind::InvalidConfig(reason) if reason.contains("shop.order.placed.v2")
    ));
}

#[tokio::test]
async fn pattern_routes_take_the_types_without_a_typed_handler() {
    let world = World::on_shared_server().await;
    let seen: Log<(&'static str, String)> = Log::default();
    let consumer = world
        .consumer("firehose")
        .with_state(seen.clone())
        .handle(
            |event: OrderPlaced, ctx: Context<Log<(&'static str, String)>>| async move {
                ctx.state().push(("typed", event.order));
                Ok(())
            },
        )
        .handle_pattern(
            "shop.order.*",
            |envelope: Envelope, ctx: Context<Log<(&'static str, String)>>| async move {
                ctx.state().push(("pattern", envelope.event_type));
                Ok(())
            },
        )
        .build()
        .await
        .unwrap();
    let running = Running::start(consumer);
    world.publish(1).await;
    world.publish_shipped("o-1").await;
    eventually("both handled", Duration::from_secs(20), || async {
        seen.len() == 2
    })
    .await;
    let mut items = seen.items();
    items.sort();
    assert_eq!(
        items,
        [
            ("pattern", "shop.order.shipped.v1".to_owned()),
            ("typed", "o-1".to_owned())
        ]
    );
    running.stop().await;
}

#[tokio::test]
async fn ephemeral_events_are_shared_by_a_queue_group() {
    let world = World::on_shared_server().await;
    let seen: Log<(&'static str, u64)> = Log::default();
    let mut runners = Vec::new();
    for instance in ["a", "b"] {
        let consumer = EphemeralConsumer::builder(&world.client, "presence")
            .with_state(seen.clone())
            .handle(
                move |event: OrderPlaced, ctx: Context<Log<(&'static str, u64)>>| async move {
                    assert_eq!(ctx.delivery_count(), 1);
                    assert_eq!(ctx.stream_sequence(), None);
                    ctx.state().push((instance, event.n));
                    if event.n == 0 {
                        return Err(HandlerError::transient("ignored: ephemeral"));
                    }
                    Ok(())
                },
            )
            .build()
            .await
            .unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(consumer.run_until(async move {
            let _ = stopped.await;
        }));
        runners.push((stop, task));
    }

    const EVENTS: u64 = 40;
    for n in 0..EVENTS {
        let mut envelope = Envelope::from_event("/tests", &order(n)).unwrap();
        envelope.subject = None;
        let (headers, payload) = codec::encode(&envelope, Encoding::Binary).unwrap();
        world
            .client
            .nats()
            .unwrap()
            .publish_with_headers(world.subject_of(n), headers, payload)
            .await
            .unwrap();
    }
    world.client.nats().unwrap().flush().await.unwrap();
    eventually(
        "ephemeral events handled",
        Duration::from_secs(20),
        || async { seen.len() == EVENTS as usize },
    )
    .await;
    let items = seen.items();
    let mut numbers: Vec<u64> = items.iter().map(|(_, n)| *n).collect();
    numbers.sort_unstable();
    assert_eq!(numbers, (0..EVENTS).collect::<Vec<_>>(), "each once");
    assert!(items.iter().any(|(i, _)| *i == "a") && items.iter().any(|(i, _)| *i == "b"));

    for (stop, task) in runners {
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
}
