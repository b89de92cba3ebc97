//! The order saga of the saga tests, and a world that runs it against the
//! shared server while the test plays stock and payment services.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use jetevents::client::Client;
use jetevents::consume::{Consumer, ConsumerBuilder, Context, HandlerError};
use jetevents::provision::StreamSpec;
use jetevents::publish::PublishOptions;
use jetevents::saga::{Saga, SagaSummary, Sagas, Step, Transition};
use serde::{Deserialize, Serialize};

use crate::consume_common::Log;
use crate::support::{connect, eventually, shared_server, unique, Running};

macro_rules! events {
    ($($name:ident = $ty:literal),* $(,)?) => {$(
        #[derive(Clone, Debug, Serialize, Deserialize)]
        pub struct $name { pub order: String }
        impl jetevents::Event for $name { const TYPE: &'static str = $ty; }
    )*};
}

events! {
    ReserveStock = "shop.stock.reserve.v1",
    StockReserved = "shop.stock.reserved.v1",
    ReleaseStock = "shop.stock.release.v1",
    ChargePayment = "shop.payment.charge.v1",
    PaymentCharged = "shop.payment.charged.v1",
    PaymentFailed = "shop.payment.failed.v1",
    VoidPayment = "shop.payment.void.v1",
    PaymentTimedOut = "shop.payment.timedout.v1",
    ShipOrder = "shop.shipping.ship.v1",
    OrderNoted = "shop.order.noted.v1",
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OrderPlaced {
    pub order: String,
    /// How long payment may take before the saga compensates.
    pub payment_seconds: i64,
}
impl jetevents::Event for OrderPlaced {
    const TYPE: &'static str = "shop.order.placed.v1";
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct OrderState {
    pub order: String,
    pub payment_seconds: i64,
    pub stage: String,
    pub notes: u64,
    /// The transitions applied, in order: one applied twice shows here.
    pub history: Vec<String>,
}

/// The state after `transition`, written down in its history.
fn moved(mut state: OrderState, transition: &str) -> OrderState {
    state.history.push(transition.to_owned());
    state
}

async fn placed(
    event: OrderPlaced,
    _: Step<OrderState>,
) -> Result<Transition<OrderState>, HandlerError> {
    let state = OrderState {
        order: event.order.clone(),
        payment_seconds: event.payment_seconds,
        stage: "reserving".into(),
        notes: 0,
        history: vec!["placed".to_owned()],
    };
    let order = event.order;
    Transition::to(state)
        .send(&ReserveStock {
            order: order.clone(),
        })?
        .compensate_with(&ReleaseStock { order })
}

async fn reserved(
    _: StockReserved,
    step: Step<OrderState>,
) -> Result<Transition<OrderState>, HandlerError> {
    let mut state = moved(step.into_state(), "reserved");
    state.stage = "paying".into();
    let order = state.order.clone();
    let due = chrono::Utc::now() + chrono::Duration::seconds(state.payment_seconds);
    Transition::to(state)
        .send(&ChargePayment {
            order: order.clone(),
        })?
        .compensate_with(&VoidPayment {
            order: order.clone(),
        })?
        .timeout("payment", due, &PaymentTimedOut { order })
}

async fn charged(
    _: PaymentCharged,
    step: Step<OrderState>,
) -> Result<Transition<OrderState>, HandlerError> {
    let mut state = moved(step.into_state(), "charged");
    state.stage = "shipping".into();
    let order = state.order.clone();
    Ok(Transition::to(state)
        .cancel_timeout("payment")
        .send(&ShipOrder { order })?
        .complete())
}

async fn failed(
    _: PaymentFailed,
    step: Step<OrderState>,
) -> Result<Transition<OrderState>, HandlerError> {
    Ok(Transition::to(moved(step.into_state(), "failed")).fail("payment failed"))
}

async fn timed_out(
    _: PaymentTimedOut,
    step: Step<OrderState>,
) -> Result<Transition<OrderState>, HandlerError> {
    Ok(Transition::to(moved(step.into_state(), "timed out")).fail("payment timed out"))
}

async fn noted(
    _: OrderNoted,
    step: Step<OrderState>,
) -> Result<Transition<OrderState>, HandlerError> {
    let mut state = step.into_state();
    state.notes += 1;
    Ok(Transition::to(state))
}

pub fn order_saga(name: &str) -> Saga<OrderState> {
    Saga::new(name)
        .start(placed)
        .on(reserved)
        .on(charged)
        .on(failed)
        .on(timed_out)
        .on(noted)
}

/// The consumer of a host instance of the order saga `saga` on `spec`,
/// to configure and build.
pub async fn host(client: &Client, saga: &str, spec: &StreamSpec) -> ConsumerBuilder<()> {
    order_saga(saga)
        .consumer(client, format!("{saga}-host"), spec)
        .await
        .unwrap()
}

/// The stream `name` of the saga tests in environment `env`.
pub fn shop_stream(name: &str, env: &str) -> StreamSpec {
    StreamSpec::new(name, vec![format!("{env}.shop.>")])
}

/// A stream, the saga's name, and a recorder of the commands it sends (in
/// stream order: one handler at a time).
pub struct World {
    pub client: Client,
    pub spec: StreamSpec,
    pub stream: String,
    pub saga: String,
    pub commands: Log<(String, String)>,
    recorder: Running,
}

impl World {
    pub async fn new() -> World {
        World::on(&shared_server().await.url()).await
    }

    /// A world on the server at `url` (one a test restarts, say).
    pub async fn on(url: &str) -> World {
        let env = unique("saga");
        let client = connect(url, &env, |_| {}).await;
        let spec = shop_stream(&unique("SAGA_TEST"), &env);
        client.ensure_stream(&spec).await.unwrap();
        let stream = spec.name.clone();
        let commands = Log::default();
        let mut recorder = Consumer::builder(&client, unique("recorder")).stream(&stream);
        for pattern in [
            "shop.stock.reserve.v1",
            "shop.stock.release.v1",
            "shop.payment.charge.v1",
            "shop.payment.void.v1",
            "shop.shipping.ship.v1",
        ] {
            let log = commands.clone();
            recorder = recorder.handle_pattern(pattern, move |envelope, ctx: Context| {
                let log = log.clone();
                async move {
                    let correlation = ctx.correlation_id().unwrap_or_default().to_owned();
                    log.push((envelope.event_type, correlation));
                }
            });
        }
        let recorder = Running::start(recorder.concurrency(1).build().await.unwrap());
        World {
            client,
            spec,
            stream,
            saga: unique("order"),
            commands,
            recorder,
        }
    }

    /// A saga host instance.
    pub async fn host(&self, concurrency: usize) -> Running {
        let consumer = host(&self.client, &self.saga, &self.spec)
            .await
            .concurrency(concurrency)
            .build()
            .await
            .unwrap();
        Running::start(consumer)
    }

    /// Publishes `event` in the conversation of `order`.
    pub async fn publish<E: jetevents::Event>(&self, order: &str, event: &E) {
        self.client
            .publisher()
            .publish_with(event, PublishOptions::new().correlation_id(order))
            .await
            .unwrap();
    }

    /// The commands sent for `order`, in stream order.
    pub fn commands_of(&self, order: &str) -> Vec<String> {
        self.commands
            .items()
            .into_iter()
            .filter(|(_, correlation)| correlation == order)
            .map(|(event_type, _)| event_type)
            .collect()
    }

    pub async fn wait_commands(&self, order: &str, count: usize) {
        eventually(
            &format!("{count} commands of {order}"),
            Duration::from_secs(60),
            || async { self.commands_of(order).len() >= count },
        )
        .await;
    }

    /// Waits until the schedule of the timer `timer` of `order` is stored
    /// in the saga's stream.
    pub async fn wait_schedule(&self, order: &str, timer: &str) {
        let subject = format!(
            "{}.sagatimer.{}.{order}.{timer}",
            self.client.subjects().env(),
            self.saga
        );
        let jetstream = self.client.jetstream().unwrap();
        eventually(
            &format!("the schedule on {subject}"),
            Duration::from_secs(60),
            || async {
                let Ok(stream) = jetstream.get_stream_no_info(&self.stream).await else {
                    return false;
                };
                stream
                    .get_last_raw_message_by_subject(&subject)
                    .await
                    .is_ok()
            },
        )
        .await;
    }

    pub async fn sagas(&self) -> Sagas<OrderState> {
        Sagas::open(&self.client, &self.saga).await.unwrap()
    }

    /// Waits until the saga of `order` is stored and `done` holds for it.
    pub async fn wait_saga(
        &self,
        order: &str,
        done: impl Fn(&SagaSummary<OrderState>) -> bool,
    ) -> SagaSummary<OrderState> {
        let sagas = self.sagas().await;
        eventually(
            &format!("saga {order}"),
            Duration::from_secs(60),
            || async { matches!(sagas.get(order).await.unwrap(), Some(saga) if done(&saga)) },
        )
        .await;
        sagas.get(order).await.unwrap().unwrap()
    }

    pub async fn stop(self) {
        self.recorder.stop().await;
    }
}
