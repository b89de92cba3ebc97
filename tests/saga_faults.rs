//! The saga checker: the order saga's host runs in a child process (this
//! test binary, re-executed) that is SIGKILLed at random points while 200
//! sagas run at once; stock and payment answer from the parent. In the end
//! every saga is completed or compensated, each with every transition
//! applied once, and every command of each saga is in the stream once.
//! It prints the checker's row (`scripts/fault-suite.sh`): each expected
//! transition and command is an op, applied (handled) by what the saga
//! records and the stream holds. `JETEVENTS_FAULT_SCALE` multiplies the
//! sagas and the kills.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod checker;
mod consume_common;
mod saga_common;
mod support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use checker::{scaled, Bounds, Checker};
use futures_util::StreamExt;
use jetevents::client::Client;
use jetevents::consume::{Consumer, Context, HandlerError};
use jetevents::publish::PublishOptions;
use jetevents::saga::SagaStatus;
use saga_common::*;
use support::Running;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Sagas per unit of `JETEVENTS_FAULT_SCALE`.
const SAGAS: usize = 200;
/// How many times a host is started and SIGKILLed before one runs to the
/// end, per unit of `JETEVENTS_FAULT_SCALE`.
const KILLS: usize = 6;
const CHILD_URL: &str = "SAGA_CHILD_URL";
const CHILD_ENV: &str = "SAGA_CHILD_ENV";
const CHILD_STREAM: &str = "SAGA_CHILD_STREAM";
const CHILD_SAGA: &str = "SAGA_CHILD_SAGA";

/// The host that gets killed. Runs only when re-executed by the checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run as a child process by another test"]
async fn child_saga_host() {
    let (Ok(url), Ok(env), Ok(stream), Ok(saga)) = (
        std::env::var(CHILD_URL),
        std::env::var(CHILD_ENV),
        std::env::var(CHILD_STREAM),
        std::env::var(CHILD_SAGA),
    ) else {
        panic!("{CHILD_URL}, {CHILD_ENV}, {CHILD_STREAM} and {CHILD_SAGA} are set by the parent");
    };
    let client = support::connect(&url, &env, |_| {}).await;
    let consumer = host_consumer(&client, &saga, &stream).await;
    println!("READY");
    consumer.run_until(std::future::pending()).await.unwrap();
}

/// A host instance. Its events come back soon after a kill, while their
/// sagas still run: applied again, a transition would show.
async fn host_consumer(client: &Client, saga: &str, stream: &str) -> Consumer<()> {
    let env = client.subjects().env().to_owned();
    host(client, saga, &shop_stream(stream, &env))
        .await
        .concurrency(32)
        .ack_wait(Duration::from_secs(1))
        .build()
        .await
        .unwrap()
}

/// Whether the payment of order `n` fails (the saga compensates).
fn payment_fails(n: usize) -> bool {
    n.is_multiple_of(5)
}

fn order_name(n: usize) -> String {
    format!("o-{n:03}")
}

/// Stock and payment: each command answered with its event, published as a
/// follow-up (so a redelivered command's answer is deduplicated).
async fn services(world: &World) -> Running {
    let consumer = Consumer::builder(&world.client, format!("{}-services", world.saga))
        .stream(&world.stream)
        .handle(|command: ReserveStock, ctx: Context| async move {
            ctx.publish(&StockReserved {
                order: command.order,
            })
            .await
            .map_err(HandlerError::transient)?;
            Ok::<_, HandlerError>(())
        })
        .handle(|command: ChargePayment, ctx: Context| async move {
            let n: usize = command.order[2..].parse().unwrap();
            let order = command.order;
            let sent = if payment_fails(n) {
                ctx.publish(&PaymentFailed { order }).await
            } else {
                ctx.publish(&PaymentCharged { order }).await
            };
            sent.map_err(HandlerError::transient)?;
            Ok::<_, HandlerError>(())
        })
        .concurrency(32)
        .build()
        .await
        .unwrap();
    Running::start(consumer)
}

/// A small xorshift: random kill points without a dependency, the seed
/// printed so a failing run can be told apart.
struct KillPoints(u64);

impl KillPoints {
    fn new() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
        println!("kill point seed {seed}");
        Self(seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

/// Starts a host in a child process and waits until it is consuming.
async fn start_child(world: &World, url: &str) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_saga_host",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_ENV, world.client.subjects().env())
        .env(CHILD_STREAM, &world.stream)
        .env(CHILD_SAGA, &world.saga)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    loop {
        let line = lines.next_line().await.unwrap().expect("the child exited");
        if line.contains("READY") {
            break;
        }
    }
    child
}

/// How many sagas are archived (finished).
async fn finished(world: &World) -> u64 {
    let mut archive = world
        .client
        .jetstream()
        .unwrap()
        .get_stream(format!("KV_SAGA_{}_DONE", world.saga))
        .await
        .unwrap();
    archive.info().await.unwrap().state.messages
}

/// The commands of the saga.
const COMMANDS: [&str; 5] = [
    "shop.stock.reserve.v1",
    "shop.stock.release.v1",
    "shop.payment.charge.v1",
    "shop.payment.void.v1",
    "shop.shipping.ship.v1",
];

/// How many times each command (type, order) is in the stream.
async fn commands_in_stream(world: &World) -> BTreeMap<(String, String), usize> {
    let stream = world
        .client
        .jetstream()
        .unwrap()
        .get_stream(&world.stream)
        .await
        .unwrap();
    let reader = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let total = reader.cached_info().num_pending as usize;
    let mut messages = reader.messages().await.unwrap().take(total);
    let mut counts = BTreeMap::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let envelope =
            jetevents::codec::decode(message.headers.as_ref(), &message.payload).unwrap();
        if COMMANDS.contains(&envelope.event_type.as_str()) {
            let order = envelope.correlation_id().unwrap().to_owned();
            *counts.entry((envelope.event_type, order)).or_default() += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_sigkilled_at_random_points_during_200_sagas_loses_and_repeats_nothing() {
    let url = support::shared_server().await.url();
    let world = World::on(&url).await;
    let (sagas_count, kills) = (scaled(SAGAS), scaled(KILLS));
    let services = services(&world).await;
    let publisher = world.client.publisher();
    for n in 0..sagas_count {
        let order = order_name(n);
        let placed = OrderPlaced {
            order: order.clone(),
            payment_seconds: 600,
        };
        publisher
            .publish_with(&placed, PublishOptions::new().correlation_id(&order))
            .await
            .unwrap();
    }

    let mut kill_points = KillPoints::new();
    let share = (sagas_count / (kills + 1)) as u64;
    for round in 0..kills as u64 {
        let mut child = start_child(&world, &url).await;
        // Killed once a random number of sagas more finished (so each host
        // dies in the middle of the work), a random moment later.
        let target = round * share + 1 + kill_points.below(share);
        support::eventually(
            &format!("{target} sagas finished"),
            Duration::from_secs(120),
            || async { finished(&world).await >= target },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(kill_points.below(100))).await;
        // `kill` is SIGKILL.
        child.kill().await.unwrap();
        println!("host killed with {} sagas finished", finished(&world).await);
    }
    let survivor = Running::start(host_consumer(&world.client, &world.saga, &world.stream).await);
    support::eventually("every saga finished", Duration::from_secs(120), || async {
        finished(&world).await >= sagas_count as u64
    })
    .await;
    survivor.stop().await;

    let sagas = world.sagas().await;
    assert!(
        sagas.running().await.unwrap().is_empty(),
        "none left running"
    );
    let commands = commands_in_stream(&world).await;
    let checker = Checker::new("saga-host-sigkill");
    let mut expected_runs = Vec::new();
    for n in 0..sagas_count {
        let order = order_name(n);
        let saga = sagas.get(&order).await.unwrap();
        let (status, history, sent): (_, &[&str], &[&str]) = if payment_fails(n) {
            (
                SagaStatus::Compensated {
                    reason: "payment failed".into(),
                },
                &["placed", "reserved", "failed"],
                &[
                    "shop.stock.reserve.v1",
                    "shop.payment.charge.v1",
                    "shop.payment.void.v1",
                    "shop.stock.release.v1",
                ],
            )
        } else {
            (
                SagaStatus::Completed,
                &["placed", "reserved", "charged"],
                &[
                    "shop.stock.reserve.v1",
                    "shop.payment.charge.v1",
                    "shop.shipping.ship.v1",
                ],
            )
        };
        // Ops: the transitions the saga must apply and the commands it
        // must send, each once.
        for op in history.iter().chain(sent) {
            checker.acked(&format!("{order}/{op}"));
        }
        for applied in saga.iter().flat_map(|saga| &saga.state.history) {
            checker.handled(&format!("{order}/{applied}"));
        }
        expected_runs.push((order, saga, status, history, sent));
    }
    for ((command, order), count) in &commands {
        for _ in 0..*count {
            checker.handled(&format!("{order}/{command}"));
        }
    }
    checker.nothing_stored();
    checker.report().assert_holds(&Bounds {
        faults: format!("host SIGKILL x{kills}"),
        extra_handlings: 0,
        unknown: 0,
        refused: 0,
    });
    for (order, saga, status, history, sent) in expected_runs {
        let saga = saga.expect("none lost");
        assert_eq!(saga.status, status, "{order}");
        assert_eq!(saga.state.history, history, "{order}: each transition once");
        for command in sent {
            assert_eq!(
                commands.get(&(command.to_string(), order.clone())),
                Some(&1),
                "{order}: {command} sent once"
            );
        }
    }
    let expected: usize = (0..sagas_count)
        .map(|n| if payment_fails(n) { 4 } else { 3 })
        .sum();
    assert_eq!(
        commands.values().sum::<usize>(),
        expected,
        "no other command sent"
    );
    services.stop().await;
    world.stop().await;
}
