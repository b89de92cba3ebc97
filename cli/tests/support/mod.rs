//! Running the built `jetevents` binary against the test binary's server.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jetevents::client::Client;
use jetevents::config::Config;

/// The one server of this test binary.
pub async fn server_url() -> String {
    jetevents_testcontainers::shared().await.url()
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

/// The command with a clean environment: the server's URL, subject
/// environment `env`, and a config dir without `nats` contexts.
pub fn jetevents(url: &str, env: &str, config_home: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_jetevents"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", config_home)
        .env("XDG_CONFIG_HOME", config_home)
        .env("NATS_URL", url)
        .env("JETEVENTS_ENV", env)
        .env("JETEVENTS_SOURCE", "/cli-tests")
        .stdin(Stdio::null());
    command
}

/// One test's world: a subject environment, a stream capturing it, a client.
pub struct World {
    pub url: String,
    pub env: String,
    pub stream: String,
    pub client: Client,
    pub home: tempfile::TempDir,
}

impl World {
    pub async fn new() -> World {
        let url = server_url().await;
        let env = unique("e");
        let stream = unique("S");
        let client = Client::connect(
            Config::default()
                .with_servers([url.clone()])
                .with_env(env.clone())
                .with_source("/cli-tests"),
        )
        .await
        .unwrap();
        client
            .jetstream()
            .unwrap()
            .create_stream(async_nats::jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![format!("{env}.>")],
                ..Default::default()
            })
            .await
            .unwrap();
        World {
            url,
            env,
            stream,
            client,
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = jetevents(&self.url, &self.env, self.home.path());
        command.args(args);
        command
    }

    /// Runs the command; it must succeed. Its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let output = self.command(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    /// Runs the command with `input` on stdin; it must succeed.
    pub fn ok_with_stdin(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{args:?} failed: {}",
            text(&output.stderr)
        );
        text(&output.stdout)
    }

    /// Publishes an event through the command; its receipt.
    pub fn publish(
        &self,
        event_type: &str,
        key: &str,
        data: &str,
        extra: &[&str],
    ) -> serde_json::Value {
        let mut args = vec!["publish", "--type", event_type, "--key", key, "-o", "json"];
        args.extend_from_slice(extra);
        args.push(data);
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// Messages in `stream` now.
    pub async fn stream_messages(&self, stream: &str) -> u64 {
        let mut stream = self
            .client
            .jetstream()
            .unwrap()
            .get_stream(stream)
            .await
            .unwrap();
        stream.info().await.unwrap().state.messages
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Every line of `stdout` as JSON.
pub fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

/// A failed run: exit code 1 and exactly one line on stderr, no panic.
pub fn assert_one_line_failure(output: &Output, expected: &str) {
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(expected), "{expected:?} not in {stderr:?}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

/// Whether `condition` came true within `limit` (checked every 20 ms).
pub async fn came_true<F, Fut>(limit: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
