//! An order saga: reserve stock, charge payment, ship; a payment failure or
//! a payment timeout releases the stock. Run against a local server
//! (nats-server 2.12+; `Config::from_env` picks it):
//!
//! ```text
//! cargo run --example order_saga
//! ```

use std::time::Duration;

use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::consume::HandlerError;
use jetevents::provision::StreamSpec;
use jetevents::publish::PublishOptions;
use jetevents::saga::{Saga, SagaStatus, Sagas, Step, Transition};
use serde::{Deserialize, Serialize};

macro_rules! events {
    ($($name:ident = $ty:literal),* $(,)?) => {$(
        #[derive(Clone, Debug, Serialize, Deserialize)]
        struct $name { order: String }
        impl jetevents::Event for $name { const TYPE: &'static str = $ty; }
    )*};
}

events! {
    OrderPlaced = "shop.order.placed.v1",
    ReserveStock = "shop.stock.reserve.v1",
    StockReserved = "shop.stock.reserved.v1",
    ReleaseStock = "shop.stock.release.v1",
    ChargePayment = "shop.payment.charge.v1",
    PaymentCharged = "shop.payment.charged.v1",
    PaymentFailed = "shop.payment.failed.v1",
    PaymentTimedOut = "shop.payment.timedout.v1",
    ShipOrder = "shop.shipping.ship.v1",
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Order {
    id: String,
    stage: String,
}

type Result<T> = std::result::Result<T, HandlerError>;

async fn placed(event: OrderPlaced, _: Step<Order>) -> Result<Transition<Order>> {
    let order = Order {
        id: event.order.clone(),
        stage: "reserving".into(),
    };
    Transition::to(order)
        .send(&ReserveStock {
            order: event.order.clone(),
        })?
        .compensate_with(&ReleaseStock { order: event.order })
}

async fn reserved(_: StockReserved, step: Step<Order>) -> Result<Transition<Order>> {
    let mut order = step.into_state();
    order.stage = "paying".into();
    let id = order.id.clone();
    let due = chrono::Utc::now() + chrono::Duration::seconds(30);
    Transition::to(order)
        .send(&ChargePayment { order: id.clone() })?
        .timeout("payment", due, &PaymentTimedOut { order: id })
}

async fn charged(_: PaymentCharged, step: Step<Order>) -> Result<Transition<Order>> {
    let mut order = step.into_state();
    order.stage = "shipping".into();
    let id = order.id.clone();
    Ok(Transition::to(order)
        .send(&ShipOrder { order: id })?
        .complete())
}

async fn failed(_: PaymentFailed, step: Step<Order>) -> Result<Transition<Order>> {
    Ok(Transition::to(step.into_state()).fail("payment failed"))
}

async fn timed_out(_: PaymentTimedOut, step: Step<Order>) -> Result<Transition<Order>> {
    Ok(Transition::to(step.into_state()).fail("payment timed out"))
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    // The server from the environment (see `Config::from_env`), localhost by default.
    let mut config = Config::from_env()?;
    config.env = "demo".into();
    config.source = "/order-saga".into();
    let client = Client::connect(config).await?;
    // The saga declares its stream, with its timers' subjects added.
    let stream = StreamSpec::new("SHOP", vec!["demo.shop.>".into()]);

    let consumer = Saga::new("order")
        .start(placed)
        .on(reserved)
        .on(charged)
        .on(failed)
        .on(timed_out)
        .consumer(&client, "order-saga", &stream)
        .await?
        .build()
        .await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let host = tokio::spawn(consumer.run_until(async move {
        let _ = stopped.await;
    }));

    // Play stock and payment: order 1 is paid, order 2's payment fails.
    let publisher = client.publisher();
    for (order, paid) in [("order-1", true), ("order-2", false)] {
        let options = || PublishOptions::new().correlation_id(order);
        publisher
            .publish_with(
                &OrderPlaced {
                    order: order.into(),
                },
                options(),
            )
            .await?;
        publisher
            .publish_with(
                &StockReserved {
                    order: order.into(),
                },
                options(),
            )
            .await?;
        if paid {
            publisher
                .publish_with(
                    &PaymentCharged {
                        order: order.into(),
                    },
                    options(),
                )
                .await?;
        } else {
            publisher
                .publish_with(
                    &PaymentFailed {
                        order: order.into(),
                    },
                    options(),
                )
                .await?;
        }
    }

    let sagas = Sagas::<Order>::open(&client, "order").await?;
    for order in ["order-1", "order-2"] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let saga = sagas.get(order).await?;
            if let Some(saga) = saga.filter(|s| s.status != SagaStatus::Running) {
                println!("{order}: {:?} at stage {}", saga.status, saga.state.stage);
                break;
            }
            if tokio::time::Instant::now() > deadline {
                println!("{order}: still running");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = stop.send(());
    host.await??;
    Ok(())
}
