//! Helpers of the gateway's tests: a real nats-server, a stream, a gateway on
//! a loopback port, signed tokens and a small SSE client.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::stream::Config as StreamConfig;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http_body_util::BodyExt;
use jetevents::client::Client;
use jetevents::config::Config;
use jetevents::event::Event;
use jetevents_gateway::{Gateway, GatewayConfig, KeySet};
use serde::{Deserialize, Serialize};

pub const SECRET: &[u8] = b"test secret of the gateway tests, 32+ bytes";
pub const TICK: &str = "demo.clock.ticked.v1";
pub const TOCK: &str = "demo.clock.tocked.v1";

/// An event of type [`TICK`]; `pad` makes it as large as a test needs.
#[derive(Serialize, Deserialize)]
pub struct Tick {
    pub n: u64,
    #[serde(default)]
    pub pad: String,
}
impl Event for Tick {
    const TYPE: &'static str = TICK;
    fn key(&self) -> Option<String> {
        Some(format!("k{}", self.n % 2))
    }
}

/// An event of another type, for filters.
#[derive(Serialize, Deserialize)]
pub struct Tock {
    pub n: u64,
}
impl Event for Tock {
    const TYPE: &'static str = TOCK;
}

pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A token signed with [`SECRET`], valid for `ttl`, granting `grants` (JSON).
pub fn token(ttl: Duration, grants: &str) -> String {
    let exp = (SystemTime::now() + ttl)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"sub":"{}","exp":{exp},"events":{grants}}}"#,
        unique("u")
    ));
    let signed = format!("{header}.{claims}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
    let signature = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signed.as_bytes()));
    format!("{signed}.{signature}")
}

/// A token for every `demo.>` event, valid for an hour.
pub fn demo_token() -> String {
    token(Duration::from_secs(3600), r#"{"patterns":["demo.>"]}"#)
}

/// A server, a client, a stream over `{env}.demo.>` and a gateway serving it.
pub struct World {
    pub server: jetevents_testcontainers::NatsServer,
    pub client: Client,
    pub stream: String,
    pub gateway: Gateway,
    gateway_config: GatewayConfig,
    pub addr: SocketAddr,
    serve: tokio::task::JoinHandle<()>,
}

impl World {
    pub async fn start(adjust: impl FnOnce(&mut GatewayConfig, &mut StreamConfig)) -> World {
        let server = jetevents_testcontainers::NatsServer::start().await.unwrap();
        let env = unique("e");
        let config = Config::default()
            .with_servers([server.url()])
            .with_env(&env)
            .with_source("/gateway-tests");
        let client = Client::connect(config).await.unwrap();
        let stream = unique("S");
        let mut stream_config = StreamConfig {
            name: stream.clone(),
            subjects: vec![format!("{env}.demo.>")],
            ..Default::default()
        };
        let mut gateway_config = GatewayConfig::new(&stream);
        gateway_config.heartbeat = Duration::from_secs(30);
        adjust(&mut gateway_config, &mut stream_config);
        client
            .jetstream()
            .unwrap()
            .create_stream(stream_config)
            .await
            .unwrap();
        let keys = KeySet::new().with_hs256(None, SECRET.to_vec());
        let gateway = Gateway::new(&client, keys, gateway_config.clone())
            .await
            .unwrap();
        let (addr, serve) = serve(gateway.clone(), None).await;
        World {
            server,
            client,
            stream,
            gateway,
            gateway_config,
            addr,
            serve,
        }
    }

    pub async fn publish(&self, n: u64) -> u64 {
        self.client
            .publisher()
            .publish(&Tick {
                n,
                pad: String::new(),
            })
            .await
            .unwrap()
            .sequence
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{path_and_query}", self.addr)
    }

    /// Stops serving (after a shutdown, open streams end first).
    pub async fn stop_serving(&mut self) {
        (&mut self.serve).await.unwrap();
    }

    /// Shuts the gateway down and waits until its server stopped.
    pub async fn stop_gateway(&mut self) {
        self.gateway.shutdown();
        self.stop_serving().await;
    }

    /// A new gateway (as a restarted process would be) on the same address.
    pub async fn start_gateway(&mut self) {
        let keys = KeySet::new().with_hs256(None, SECRET.to_vec());
        self.gateway = Gateway::new(&self.client, keys, self.gateway_config.clone())
            .await
            .unwrap();
        let (_, serve) = serve(self.gateway.clone(), Some(self.addr)).await;
        self.serve = serve;
    }
}

/// Serves `gateway`'s router (and the example page at `/`) on `addr` or a free
/// loopback port, until the gateway shuts down.
pub async fn serve(
    gateway: Gateway,
    addr: Option<SocketAddr>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener =
        tokio::net::TcpListener::bind(addr.unwrap_or_else(|| "127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
    let addr = listener.local_addr().unwrap();
    let app = gateway.router().route(
        "/",
        axum::routing::get(|| async { axum::response::Html(jetevents_gateway::EXAMPLE_PAGE) }),
    );
    let down = gateway.clone();
    let serve = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { down.stopped().await })
            .await
            .unwrap();
    });
    (addr, serve)
}

/// One SSE event as read.
#[derive(Debug, Clone, PartialEq)]
pub struct SseFrame {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseFrame {
    /// The CloudEvent's `data.n` of a tick.
    pub fn n(&self) -> Option<u64> {
        let json: serde_json::Value = serde_json::from_str(&self.data).ok()?;
        json["data"]["n"].as_u64()
    }
    pub fn reason(&self) -> Option<String> {
        let json: serde_json::Value = serde_json::from_str(&self.data).ok()?;
        json["reason"].as_str().map(str::to_owned)
    }
}

/// A minimal SSE client over one HTTP/1 connection.
pub struct SseClient {
    pub status: u16,
    body: Option<hyper::body::Incoming>,
    text: String,
}

impl SseClient {
    /// GETs `path_and_query` with `headers`; `recv_buffer` shrinks the socket's
    /// receive buffer (a slow client).
    pub async fn connect(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
        recv_buffer: Option<u32>,
    ) -> SseClient {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let tcp = socket.connect(addr).await.unwrap();
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut request = hyper::Request::get(path_and_query).header("host", addr.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(
                request
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status().as_u16();
        SseClient {
            status,
            body: Some(response.into_body()),
            text: String::new(),
        }
    }

    /// The whole body of a plain (not SSE) response.
    pub async fn body_text(mut self) -> String {
        let body = self
            .body
            .take()
            .unwrap()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        String::from_utf8_lossy(&body).into_owned()
    }

    /// The next event (heartbeat comments skipped); `None` at the end of the stream.
    pub async fn next(&mut self) -> Option<SseFrame> {
        loop {
            if let Some(end) = self.text.find("\n\n") {
                let block: String = self.text.drain(..end + 2).collect();
                let mut frame = SseFrame {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut comment_only = true;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        frame.id = Some(v.trim_start().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        frame.event = Some(v.trim_start().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        frame.data.push_str(v.trim_start());
                    } else {
                        continue;
                    }
                    comment_only = false;
                }
                if comment_only {
                    continue;
                }
                return Some(frame);
            }
            let chunk = self.body.as_mut()?.frame().await;
            match chunk {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.text.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                _ => {
                    self.body = None;
                    return None;
                }
            }
        }
    }

    /// The next event, failing the test after `limit`.
    pub async fn next_within(&mut self, limit: Duration) -> Option<SseFrame> {
        tokio::time::timeout(limit, self.next())
            .await
            .expect("timed out waiting for an SSE event")
    }

    /// Asserts the next event is `end` with `reason`, and that the stream then closes.
    pub async fn expect_end(&mut self, reason: &str, limit: Duration) {
        let end = self.next_within(limit).await;
        let end = end.expect("an end event before the stream closes");
        assert_eq!(end.event.as_deref(), Some("end"), "{end:?}");
        assert_eq!(end.reason().as_deref(), Some(reason));
        assert_eq!(self.next_within(limit).await, None, "the stream is closed");
    }
}
