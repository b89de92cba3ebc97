//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jetevents::client::Client;
use jetevents::config::Config;

/// The one server of this test binary (tests that need their own start one).
pub async fn shared_server() -> &'static jetevents_testcontainers::SharedServer {
    jetevents_testcontainers::shared().await
}

/// A name unique in this process, safe as a subject token and stream name.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Connects to `url` with subject environment `env`, after `adjust` edits the
/// configuration.
pub async fn connect(url: &str, env: &str, adjust: impl FnOnce(&mut Config)) -> Client {
    let mut config = Config::default()
        .with_servers([url])
        .with_env(env)
        .with_source("/tests");
    adjust(&mut config);
    Client::connect(config).await.unwrap()
}

/// A `tracing` writer that keeps everything written, to search it afterwards.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn contents(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Polls `check` every 20 ms until it holds; fails the test after `limit`.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `dead_letters` holds an entry; then every entry (up to 50).
pub async fn dead_lettered(
    what: &str,
    dead_letters: &jetevents::consume::DeadLetters,
    limit: Duration,
) -> Vec<jetevents::consume::dead_letter::DeadLetter> {
    eventually(what, limit, || async {
        dead_letters
            .list(50)
            .await
            .map(|l| !l.is_empty())
            .unwrap_or(false)
    })
    .await;
    dead_letters.list(50).await.unwrap()
}

/// A running consumer and the trigger of its shutdown.
pub struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), jetevents::consume::ConsumeError>>,
}

impl Running {
    /// Runs `consumer` on a task until [`Running::stop`].
    pub fn start<S: Clone + Send + Sync + 'static>(
        consumer: jetevents::consume::Consumer<S>,
    ) -> Running {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(consumer.run_until(async move {
            let _ = stopped.await;
        }));
        Running {
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for the runner to return (it must return
    /// `Ok`).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), &mut self.task)
            .await
            .expect("runner did not stop")
            .unwrap()
            .unwrap();
    }

    /// Whether the runner returned (it should not, until stopped).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}
