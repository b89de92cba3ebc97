//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    let mut config = Config {
        servers: vec![url.to_owned()],
        env: env.to_owned(),
        source: "/tests".to_owned(),
        ..Config::default()
    };
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
