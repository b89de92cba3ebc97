//! The order saga against a real nats-server: happy path, compensation in
//! reverse order, a timeout by server message schedule (also across a server
//! restart), and two instances racing on one saga.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod consume_common;
mod saga_common;
mod support;

use jetevents::saga::SagaStatus;
use jetevents_testcontainers::NatsServer;
use saga_common::*;

fn placed(order: &str, payment_seconds: i64) -> OrderPlaced {
    OrderPlaced {
        order: order.into(),
        payment_seconds,
    }
}

/// Starts the saga of `order` and answers its stock reservation.
async fn reserve_stock(world: &World, order: &str, payment_seconds: i64) {
    world.publish(order, &placed(order, payment_seconds)).await;
    world.wait_commands(order, 1).await;
    world
        .publish(
            order,
            &StockReserved {
                order: order.into(),
            },
        )
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_path_reserves_charges_ships_and_archives() {
    let world = World::new().await;
    let host = world.host(4).await;
    let order = "o-happy";
    reserve_stock(&world, order, 600).await;
    world.wait_commands(order, 2).await;
    let running = world.sagas().await.running().await.unwrap();
    let saga = running
        .iter()
        .find(|s| s.correlation_id == order)
        .expect("listed as running");
    assert_eq!(saga.state.stage, "paying");
    assert!(
        saga.pending_timeouts.contains_key("payment"),
        "the payment timer is pending"
    );

    world
        .publish(
            order,
            &PaymentCharged {
                order: order.into(),
            },
        )
        .await;
    let done = world
        .wait_saga(order, |s| s.status == SagaStatus::Completed)
        .await;
    assert!(done.pending_timeouts.is_empty());
    world.wait_commands(order, 3).await;
    assert_eq!(
        world.commands_of(order),
        [
            "shop.stock.reserve.v1",
            "shop.payment.charge.v1",
            "shop.shipping.ship.v1"
        ]
    );
    assert!(world
        .sagas()
        .await
        .running()
        .await
        .unwrap()
        .iter()
        .all(|s| s.correlation_id != order));
    // The start event again (a redelivery, a replay) starts nothing.
    world.publish(order, &placed(order, 600)).await;
    world
        .publish(
            order,
            &OrderNoted {
                order: order.into(),
            },
        )
        .await;
    host.stop().await;
    assert_eq!(world.commands_of(order).len(), 3);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_failure_compensates_in_reverse_order() {
    let world = World::new().await;
    let host = world.host(4).await;
    let order = "o-fails";
    reserve_stock(&world, order, 600).await;
    world.wait_commands(order, 2).await;
    world
        .publish(
            order,
            &PaymentFailed {
                order: order.into(),
            },
        )
        .await;
    let done = world
        .wait_saga(order, |s| s.status != SagaStatus::Running)
        .await;
    assert_eq!(
        done.status,
        SagaStatus::Compensated {
            reason: "payment failed".into()
        }
    );
    world.wait_commands(order, 4).await;
    assert_eq!(
        world.commands_of(order),
        [
            "shop.stock.reserve.v1",
            "shop.payment.charge.v1",
            "shop.payment.void.v1",
            "shop.stock.release.v1",
        ]
    );
    host.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_timeout_fires_and_compensates() {
    let world = World::new().await;
    let host = world.host(4).await;
    let order = "o-slow";
    reserve_stock(&world, order, 2).await;
    let done = world
        .wait_saga(order, |s| s.status != SagaStatus::Running)
        .await;
    assert_eq!(
        done.status,
        SagaStatus::Compensated {
            reason: "payment timed out".into()
        }
    );
    world.wait_commands(order, 4).await;
    assert_eq!(
        world.commands_of(order)[2..],
        ["shop.payment.void.v1", "shop.stock.release.v1"]
    );
    // Payment arriving after the timeout moves nothing.
    world
        .publish(
            order,
            &PaymentCharged {
                order: order.into(),
            },
        )
        .await;
    host.stop().await;
    assert_eq!(world.commands_of(order).len(), 4);
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_scheduled_before_a_server_restart_fires_after_it_and_compensates() {
    // A server of its own: the test restarts it, keeping its file store.
    let mut server = NatsServer::start().await.unwrap();
    let world = World::on(&server.url()).await;
    let host = world.host(4).await;
    let order = "o-restart";
    reserve_stock(&world, order, 4).await;
    world.wait_schedule(order, "payment").await;
    server.restart().await.unwrap();
    let done = world
        .wait_saga(order, |s| s.status != SagaStatus::Running)
        .await;
    assert_eq!(
        done.status,
        SagaStatus::Compensated {
            reason: "payment timed out".into()
        }
    );
    world.wait_commands(order, 4).await;
    assert_eq!(
        world.commands_of(order)[2..],
        ["shop.payment.void.v1", "shop.stock.release.v1"]
    );
    host.stop().await;
    world.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_saga_never_lose_an_update() {
    const NOTES: u64 = 40;
    let world = World::new().await;
    let first = world.host(8).await;
    let second = world.host(8).await;
    let order = "o-busy";
    world.publish(order, &placed(order, 600)).await;
    world.wait_commands(order, 1).await;
    for _ in 0..NOTES {
        world
            .publish(
                order,
                &OrderNoted {
                    order: order.into(),
                },
            )
            .await;
    }
    let saga = world.wait_saga(order, |s| s.state.notes >= NOTES).await;
    first.stop().await;
    second.stop().await;
    let saga = world
        .sagas()
        .await
        .get(order)
        .await
        .unwrap()
        .map_or(saga.state.notes, |s| s.state.notes);
    assert_eq!(saga, NOTES, "each note applied exactly once");
    world.stop().await;
}
