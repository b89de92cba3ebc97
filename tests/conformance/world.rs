//! One case's world on either transport: the consumer tests' [`World`]
//! (its own environment, event stream and dead-letter stream) and what the
//! public API cannot show on both (dead letters, consumer counts).

use std::time::Duration;

use jetevents::config::Config;
use jetevents::consume::dead_letter::DeadLetter;
use jetevents::testing::TestKit;

use crate::consume_common::{eventually, unique, World};

/// How long (wall clock) a case waits for what it expects.
pub const LIMIT: Duration = Duration::from_secs(20);

/// A [`World`] on a real nats-server or on the in-memory JetStream.
pub struct Setup {
    pub world: World,
    /// The test kit on the in-memory side; `None` on the real server.
    kit: Option<TestKit>,
}

impl Setup {
    /// A world on the shared nats-server of this test binary.
    pub async fn nats() -> Setup {
        Setup {
            world: World::on_shared_server().await,
            kit: None,
        }
    }

    /// A world on a new in-memory JetStream.
    pub async fn memory() -> Setup {
        let kit = TestKit::with_config(
            Config::default()
                .with_env(unique("env"))
                .with_source("/consume-tests"),
        )
        .unwrap();
        Setup {
            world: World::provision(kit.client().clone()).await,
            kit: Some(kit),
        }
    }

    /// Every entry of this world's dead-letter stream.
    pub async fn dead_letters(&self) -> Vec<DeadLetter> {
        match &self.kit {
            Some(kit) => kit.dead_letters_in(&self.world.dead_letters),
            None => self.world.dead_letter_api().list(50).await.unwrap(),
        }
    }

    /// Waits until the dead-letter stream holds `count` entries; returns them.
    pub async fn wait_dead_letters(&self, count: usize) -> Vec<DeadLetter> {
        eventually("dead letters", LIMIT, || async {
            self.dead_letters().await.len() >= count
        })
        .await;
        self.dead_letters().await
    }

    /// `group`'s (pending, ack pending).
    pub async fn consumer_counts(&self, group: &str) -> (u64, usize) {
        match &self.kit {
            Some(kit) => {
                let info = kit
                    .jetstream()
                    .consumer_info(&self.world.stream, group)
                    .unwrap();
                (info.num_pending, info.num_ack_pending)
            }
            None => self.world.consumer_counts(group).await,
        }
    }

    /// Waits until `group` has nothing pending and nothing unacked.
    pub async fn wait_settled(&self, group: &str) {
        eventually("consumer settled", LIMIT, || async {
            self.consumer_counts(group).await == (0, 0)
        })
        .await;
    }
}
