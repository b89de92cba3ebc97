//! Reading stored events: upcasting of old event versions on load, in
//! replays and in projections (on a real nats-server); replays of any
//! selection from the start, a stream sequence or a point in time, catching
//! up or live (each case on a real nats-server and on the in-memory
//! JetStream).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use jetevents::error::BoxError;
use jetevents::eventstore::projection::{KvCheckpoints, Projected, Projection, ProjectionRunner};
use jetevents::eventstore::{
    Aggregate, EventStore, Expected, LoadError, Replay, ReplayFrom, Upcasts,
};
use serde::{Deserialize, Serialize};

#[macro_use]
mod eventstore_support;
use eventstore_support::{
    deposits, fresh_store, kv_bucket, run_until_caught_up, Account, AccountEvent, Backend, World,
};

on_both_backends!(
    a_catch_up_replay_ends_at_the_last_event_and_a_live_one_continues,
    a_replay_starts_at_a_stream_sequence_or_a_point_in_time,
);

const WAIT: Duration = Duration::from_secs(20);

/// `deposited.v1` as the first release stored it (the test's `Account`
/// still writes it).
#[derive(Serialize, Deserialize)]
struct DepositedV1 {
    amount: u64,
}
impl jetevents::Event for DepositedV1 {
    const TYPE: &'static str = "bank.account.deposited.v1";
}

/// `deposited.v2`: with a currency.
#[derive(Serialize, Deserialize)]
struct DepositedV2 {
    amount: u64,
    currency: String,
}
impl jetevents::Event for DepositedV2 {
    const TYPE: &'static str = "bank.account.deposited.v2";
}

/// `deposited.v3`, the current version: in cents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct DepositedV3 {
    cents: u64,
    currency: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum CurrentEvent {
    #[serde(rename = "opened.v1")]
    Opened { owner: String },
    #[serde(rename = "deposited.v3")]
    Deposited(DepositedV3),
}

/// The account of a later release, reading the events `Account` stored.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct CurrentAccount {
    deposits: Vec<DepositedV3>,
}

impl Aggregate for CurrentAccount {
    const KIND: &'static str = Account::KIND;
    type Event = CurrentEvent;
    type Command = ();
    type Error = std::convert::Infallible;

    fn apply(&mut self, event: &CurrentEvent) {
        if let CurrentEvent::Deposited(deposit) = event {
            self.deposits.push(deposit.clone());
        }
    }

    fn handle(&self, _: &()) -> Result<Vec<CurrentEvent>, Self::Error> {
        Ok(vec![])
    }

    /// v1 -> v2 typed, v2 -> v3 on the JSON: both steps run on a v1 event.
    fn upcasts() -> Upcasts {
        Upcasts::new()
            .upcast(|old: DepositedV1| DepositedV2 {
                amount: old.amount,
                currency: "EUR".into(),
            })
            .json(
                <DepositedV2 as jetevents::Event>::TYPE,
                "bank.account.deposited.v3",
                |data| {
                    let amount = data["amount"].as_u64().ok_or("no amount")?;
                    Ok(serde_json::json!({ "cents": amount * 100, "currency": data["currency"] }))
                },
            )
    }
}

fn in_cents(amounts: &[u64]) -> Vec<DepositedV3> {
    amounts
        .iter()
        .map(|amount| DepositedV3 {
            cents: amount * 100,
            currency: "EUR".into(),
        })
        .collect()
}

/// Every item of a catch-up replay, which must end.
async fn collect<A: Aggregate>(store: &EventStore, replay: Replay) -> Vec<Projected<A>> {
    let events = store.replay::<A>(replay).await.unwrap();
    let items: Vec<Result<Projected<A>, LoadError>> =
        tokio::time::timeout(WAIT, events.collect()).await.unwrap();
    items.into_iter().map(Result::unwrap).collect()
}

fn sequences<A: Aggregate>(events: &[Projected<A>]) -> Vec<u64> {
    events.iter().map(|event| event.sequence).collect()
}

/// Cents deposited per account, in memory.
struct CentsPerAccount;

impl Projection for CentsPerAccount {
    type Aggregate = CurrentAccount;
    type Model = HashMap<String, u64>;

    async fn apply(
        &mut self,
        model: &mut HashMap<String, u64>,
        event: &Projected<CurrentAccount>,
    ) -> Result<(), BoxError> {
        if let CurrentEvent::Deposited(deposit) = &event.event {
            *model.entry(event.key.clone()).or_default() += deposit.cents;
        }
        Ok(())
    }

    async fn clear(&mut self, model: &mut HashMap<String, u64>) -> Result<(), BoxError> {
        model.clear();
        Ok(())
    }
}

#[tokio::test]
async fn old_event_versions_load_replay_and_project_as_the_current_one() {
    let (client, store) = fresh_store().await;
    let opened = AccountEvent::Opened {
        owner: "ada".into(),
    };
    store
        .append::<Account>("k", vec![opened], Expected::NoStream)
        .await
        .unwrap();
    store
        .append::<Account>("k", deposits([5, 7]), Expected::Version(1))
        .await
        .unwrap();

    let loaded = store.load::<CurrentAccount>("k").await.unwrap();
    assert_eq!(loaded.state.deposits, in_cents(&[5, 7]));
    assert_eq!(loaded.version, 3);

    let replayed = collect::<CurrentAccount>(&store, Replay::instance("k")).await;
    let events: Vec<CurrentEvent> = replayed.into_iter().map(|event| event.event).collect();
    let current: Vec<CurrentEvent> = in_cents(&[5, 7])
        .into_iter()
        .map(CurrentEvent::Deposited)
        .collect();
    assert_eq!(events[1..], current);

    let bucket = kv_bucket(&client, "checkpoints").await;
    let checkpoints = KvCheckpoints::new(bucket, "cents", HashMap::new());
    let runner = ProjectionRunner::new(store.clone(), CentsPerAccount, checkpoints);
    let runner = run_until_caught_up(runner).await;
    assert_eq!(runner.checkpoints().model().get("k"), Some(&1_200));
}

/// Opens accounts `acc-0` and `acc-1` with two deposits each, then
/// returns the stream sequences of the six events.
async fn two_accounts(store: &EventStore) -> Vec<u64> {
    let mut stored = Vec::new();
    for key in ["acc-0", "acc-1"] {
        let mut events = vec![AccountEvent::Opened {
            owner: "ada".into(),
        }];
        events.extend(deposits([1, 2]));
        let appended = store
            .append::<Account>(key, events, Expected::NoStream)
            .await
            .unwrap();
        stored.extend(appended.first_sequence..appended.first_sequence + 3);
    }
    stored
}

async fn a_catch_up_replay_ends_at_the_last_event_and_a_live_one_continues(on: Backend) {
    let world = World::fresh(on).await;
    let (client, store) = (&world.client, &world.store);
    let stored = two_accounts(store).await;

    let every = collect::<Account>(store, Replay::every()).await;
    assert_eq!(sequences(&every), stored);
    let keys: Vec<&str> = every.iter().map(|event| event.key.as_str()).collect();
    assert_eq!(keys, ["acc-0", "acc-0", "acc-0", "acc-1", "acc-1", "acc-1"]);
    let versions: Vec<u64> = every.iter().map(|event| event.version).collect();
    assert_eq!(versions, [1, 2, 3, 1, 2, 3]);

    let one = collect::<Account>(store, Replay::instance("acc-1")).await;
    assert_eq!(sequences(&one), stored[3..]);

    let opened = format!("{}.bank.account.opened.*.*", client.subjects().env());
    let only_opened = collect::<Account>(store, Replay::subjects(opened)).await;
    assert_eq!(sequences(&only_opened), [stored[0], stored[3]]);

    // Live: the stored events, then one stored after the replay started.
    let mut live = store
        .replay::<Account>(Replay::every().live())
        .await
        .unwrap();
    let caught_up = next_items(&mut live, 6).await;
    assert_eq!(sequences(&caught_up), stored);
    let later = store
        .append::<Account>("acc-0", deposits([9]), Expected::Version(3))
        .await
        .unwrap();
    let next = next_items(&mut live, 1).await;
    assert_eq!(sequences(&next), [later.first_sequence]);
    assert_eq!(next[0].event, AccountEvent::Deposited { amount: 9 });
}

async fn next_items<A: Aggregate>(
    events: &mut (impl Stream<Item = Result<Projected<A>, LoadError>> + Unpin),
    count: usize,
) -> Vec<Projected<A>> {
    let mut items = Vec::new();
    while items.len() < count {
        let item = tokio::time::timeout(WAIT, events.next()).await.unwrap();
        items.push(item.expect("the live replay ended").unwrap());
    }
    items
}

async fn a_replay_starts_at_a_stream_sequence_or_a_point_in_time(on: Backend) {
    let store = &World::fresh(on).await.store;
    let first = two_accounts(store).await;
    // The server stamps events with its clock, the same machine's.
    let between = chrono::Utc::now();
    let second = two_accounts_more(store).await;

    let since_time =
        collect::<Account>(store, Replay::every().from(ReplayFrom::Time(between))).await;
    assert_eq!(sequences(&since_time), second);

    let since_sequence =
        collect::<Account>(store, Replay::every().from(ReplayFrom::Sequence(first[4]))).await;
    assert_eq!(
        sequences(&since_sequence),
        [&first[4..], &second[..]].concat()
    );

    let past_the_end = ReplayFrom::Sequence(second[second.len() - 1] + 1);
    assert!(
        collect::<Account>(store, Replay::every().from(past_the_end))
            .await
            .is_empty()
    );
    let empty = &World::fresh(on).await.store;
    assert!(collect::<Account>(empty, Replay::every()).await.is_empty());
}

/// Two more deposits in each of the accounts [`two_accounts`] opened.
async fn two_accounts_more(store: &EventStore) -> Vec<u64> {
    let mut stored = Vec::new();
    for key in ["acc-0", "acc-1"] {
        let appended = store
            .append::<Account>(key, deposits([3, 4]), Expected::Version(3))
            .await
            .unwrap();
        stored.extend(appended.first_sequence..appended.first_sequence + 2);
    }
    stored
}
