//! The example page in a real headless Chromium against the gateway and a real
//! nats-server: live events appear in its DOM; after a gateway restart the page
//! reconnects on its own (Last-Event-ID) and shows every event published while
//! the gateway was down exactly once, in order.
//!
//! The DOM is read through the DevTools protocol on a loopback WebSocket
//! (`Runtime.evaluate`), polled with a deadline: that waits for the page's
//! JavaScript, whatever the timing. `JETEVENTS_CHROMIUM` names the browser
//! (default `chromium`, which scripts/test.sh installs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(60);

/// A headless Chromium showing one page, killed on drop.
struct Browser {
    _process: tokio::process::Child,
    _profile: tempfile::TempDir,
    devtools: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Browser {
    async fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let binary = std::env::var("JETEVENTS_CHROMIUM").unwrap_or_else(|_| "chromium".into());
        let mut process = tokio::process::Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
            ])
            .arg("--remote-debugging-address=127.0.0.1")
            .arg("--remote-debugging-port=0")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium (scripts/test.sh installs it)");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let mut lines = BufReader::new(process.stderr.take().unwrap()).lines();
        let port = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(rest) = line.split("ws://127.0.0.1:").nth(1) {
                    return rest.split('/').next().unwrap().parse::<u16>().unwrap();
                }
            }
            panic!("chromium exited without a DevTools port");
        })
        .await
        .expect("chromium's DevTools port");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let page = page_websocket(port).await;
        let (devtools, _) = tokio_tungstenite::connect_async(page).await.unwrap();
        Browser {
            _process: process,
            _profile: profile,
            devtools,
            next_id: 0,
        }
    }

    /// Evaluates `expression` in the page; its value as JSON.
    async fn evaluate(&mut self, expression: &str) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = serde_json::json!({
            "id": id,
            "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true },
        });
        self.devtools
            .send(Message::Text(request.to_string().into()))
            .await
            .unwrap();
        loop {
            let message = self.devtools.next().await.unwrap().unwrap();
            let Message::Text(text) = message else {
                continue;
            };
            let reply: serde_json::Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                return reply["result"]["result"]["value"].clone();
            }
        }
    }

    /// The `n` of every tick the page lists, in DOM order.
    async fn ticks(&mut self) -> Vec<u64> {
        let texts = self
            .evaluate("[...document.querySelectorAll('#events li')].map(li => li.textContent)")
            .await;
        texts
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|text| text.as_str()?.split_once(' '))
                    .filter_map(|(_, data)| serde_json::from_str::<serde_json::Value>(data).ok())
                    .filter_map(|data| data["n"].as_u64())
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn wait_for_ticks(&mut self, expected: &[u64]) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let ticks = self.ticks().await;
            if ticks == expected {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline && expected.starts_with(&ticks),
                "the page shows {ticks:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The DevTools WebSocket of the first page target (`GET /json/list`).
async fn page_websocket(port: u16) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let body = SseClient::connect(addr, "/json/list", &[], None)
            .await
            .body_text()
            .await;
        let targets: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let page = targets.as_array().and_then(|targets| {
            targets.iter().find(|t| t["type"] == "page")?["webSocketDebuggerUrl"]
                .as_str()
                .map(str::to_owned)
        });
        if let Some(page) = page {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no page target in chromium"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_example_page_shows_live_events_and_every_event_missed_during_a_restart_once() {
    let mut world = World::start(|_, _| {}).await;
    let mut browser = Browser::open(&world.url(&format!("/?token={}", demo_token()))).await;
    let deadline = std::time::Instant::now() + WAIT;
    while browser
        .evaluate("document.getElementById('status').textContent")
        .await
        != "live"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the page never went live"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 1..=3 {
        world.publish(n).await;
    }
    browser.wait_for_ticks(&[1, 2, 3]).await;

    world.stop_gateway().await;
    for n in 4..=6 {
        world.publish(n).await;
    }
    world.start_gateway().await;
    browser.wait_for_ticks(&[1, 2, 3, 4, 5, 6]).await;
    world.publish(7).await;
    browser.wait_for_ticks(&[1, 2, 3, 4, 5, 6, 7]).await;
}
