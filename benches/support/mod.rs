//! What the benches share: knobs from the environment, a local nats-server
//! with a client, and a consumer running in the background until the
//! measurement is over.

// Each bench includes this module and uses a part of it.
#![allow(dead_code)]

use std::fmt::Debug;
use std::future::Future;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use jetevents::client::Client;
use jetevents::config::Config;
use jetevents_testcontainers::{Backend, NatsServer};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The variable `name` as a number, else `default`.
pub fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(default)
}

/// A nats-server from the local binary, and a client of env `bench`.
pub async fn server_and_client() -> (NatsServer, Client) {
    server_and_client_as("bench", "/bench").await
}

/// A nats-server from the local binary, and a client of subject environment
/// `env` publishing as CloudEvents source `source`.
pub async fn server_and_client_as(env: &str, source: &str) -> (NatsServer, Client) {
    let server = NatsServer::builder()
        .backend(Backend::Binary)
        .start()
        .await
        .expect("start nats-server (binary backend)");
    let client = Client::connect(
        Config::default()
            .with_servers([server.url()])
            .with_env(env)
            .with_source(source),
    )
    .await
    .unwrap();
    (server, client)
}

/// A consumer's `run_until` in a task, until [`Background::stop`].
pub struct Background<E> {
    stop: oneshot::Sender<()>,
    running: JoinHandle<Result<(), E>>,
}

impl<E: Debug + Send + 'static> Background<E> {
    /// Spawns `run` with the signal that [`Background::stop`] fires.
    pub fn spawn<R>(run: impl FnOnce(BoxFuture<'static, ()>) -> R) -> Self
    where
        R: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let running = tokio::spawn(run(stopped.map(|_| ()).boxed()));
        Self { stop, running }
    }

    /// Signals the consumer to stop and waits until it did, without error.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.running.await.unwrap().unwrap();
    }
}
