#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! FaultProxy against a real TCP echo server and a real nats-server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::{ConnectOptions, Event};
use futures_util::StreamExt;
use jetevents_testcontainers::{FaultMode, FaultProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// Upper bound for things that must happen; generous so slow CI does not flake.
const DEADLINE: Duration = Duration::from_secs(10);
/// Window for "nothing arrives" checks; the only unavoidable timing in these tests.
const QUIET: Duration = Duration::from_millis(250);

/// A loopback TCP server that echoes every byte back on each connection.
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    timeout(DEADLINE, stream.read_exact(&mut buf))
        .await
        .expect("bytes did not arrive before the deadline")
        .unwrap();
    buf
}

async fn assert_echo(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.unwrap();
    assert_eq!(read_exactly(stream, bytes.len()).await, bytes);
}

async fn assert_nothing_arrives(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match timeout(QUIET, stream.read(&mut buf)).await {
        Err(_elapsed) => {}
        Ok(read) => panic!("expected silence, got {read:?} ({:?})", &buf[..]),
    }
}

/// Waits until the peer closes: EOF or a reset both count.
async fn assert_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let read = timeout(DEADLINE, stream.read(&mut buf))
        .await
        .expect("connection still open at the deadline");
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected close, got {n} bytes: {:?}", &buf[..n]),
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn pass_forwards_both_ways_and_counts_connections() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    assert_eq!(proxy.mode(), FaultMode::Pass);
    assert_eq!(proxy.connections(), 0);
    assert!(proxy.url().starts_with("nats://127.0.0.1:"));
    assert_eq!(proxy.url(), format!("nats://{}", proxy.local_addr()));

    let mut first = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let mut second = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_echo(&mut first, b"hello").await;
    assert_echo(&mut second, b"world").await;
    wait_until("two connections", || proxy.connections() == 2).await;

    drop(first);
    wait_until("one connection", || proxy.connections() == 1).await;
    assert_echo(&mut second, b"still here").await;
}

#[tokio::test]
async fn stall_holds_bytes_until_pass() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_echo(&mut stream, b"before").await;

    proxy.set_mode(FaultMode::Stall);
    assert_eq!(proxy.mode(), FaultMode::Stall);
    stream.write_all(b"held").await.unwrap();
    assert_nothing_arrives(&mut stream).await;
    assert_eq!(proxy.connections(), 1, "stall keeps the connection open");

    proxy.set_mode(FaultMode::Pass);
    assert_eq!(read_exactly(&mut stream, 4).await, b"held");
    assert_echo(&mut stream, b"after").await;
}

#[tokio::test]
async fn drop_discards_bytes_for_good() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_echo(&mut stream, b"before").await;

    proxy.set_mode(FaultMode::Drop);
    stream.write_all(b"lost").await.unwrap();
    wait_until("bytes discarded", || proxy.discarded_bytes() == 4).await;
    assert_nothing_arrives(&mut stream).await;
    assert_eq!(proxy.connections(), 1, "drop keeps the connection open");

    proxy.set_mode(FaultMode::Pass);
    // Had "lost" been forwarded, its echo would come before this one.
    assert_echo(&mut stream, b"kept").await;
    assert_nothing_arrives(&mut stream).await;
}

#[tokio::test]
async fn drop_replies_forwards_requests_and_discards_answers() {
    let (upstream, talk, heard) = recording_talker_server().await;
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();

    proxy.set_mode(FaultMode::DropReplies);
    stream.write_all(b"request").await.unwrap();
    wait_until("the request forwarded", || {
        heard.lock().unwrap().as_slice() == b"request"
    })
    .await;
    talk.send(b"answer").unwrap();
    wait_until("the answer discarded", || proxy.discarded_bytes() == 6).await;
    assert_nothing_arrives(&mut stream).await;

    proxy.set_mode(FaultMode::Pass);
    talk.send(b"kept").unwrap();
    assert_eq!(read_exactly(&mut stream, 4).await, b"kept");
}

/// A [`talker_server`] that also keeps every byte its client sends.
async fn recording_talker_server() -> (
    SocketAddr,
    mpsc::UnboundedSender<&'static [u8]>,
    std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<&'static [u8]>();
    let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = heard.clone();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        tokio::spawn(async move {
            let mut buf = [0u8; 64];
            while let Ok(read @ 1..) = reader.read(&mut buf).await {
                log.lock().unwrap().extend_from_slice(&buf[..read]);
            }
        });
        while let Some(bytes) = rx.recv().await {
            writer.write_all(bytes).await.unwrap();
        }
    });
    (addr, tx, heard)
}

/// A loopback server that accepts one connection and writes whatever the test
/// sends on the returned channel, so faults can be checked server-to-client.
async fn talker_server() -> (SocketAddr, mpsc::UnboundedSender<&'static [u8]>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<&'static [u8]>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        while let Some(bytes) = rx.recv().await {
            stream.write_all(bytes).await.unwrap();
        }
    });
    (addr, tx)
}

#[tokio::test]
async fn stall_and_drop_apply_server_to_client() {
    let (upstream, talk) = talker_server().await;
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    talk.send(b"hi").unwrap();
    assert_eq!(read_exactly(&mut stream, 2).await, b"hi");

    proxy.set_mode(FaultMode::Stall);
    talk.send(b"held").unwrap();
    assert_nothing_arrives(&mut stream).await;
    proxy.set_mode(FaultMode::Pass);
    assert_eq!(read_exactly(&mut stream, 4).await, b"held");

    proxy.set_mode(FaultMode::Drop);
    talk.send(b"lost").unwrap();
    wait_until("bytes discarded", || proxy.discarded_bytes() == 4).await;
    assert_nothing_arrives(&mut stream).await;
    proxy.set_mode(FaultMode::Pass);
    talk.send(b"kept").unwrap();
    assert_eq!(read_exactly(&mut stream, 4).await, b"kept");
}

#[tokio::test]
async fn close_cuts_open_connections_and_refuses_new_ones_until_pass() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut open = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_echo(&mut open, b"before").await;
    wait_until("one connection", || proxy.connections() == 1).await;

    proxy.set_mode(FaultMode::Close);
    assert_closed(&mut open).await;
    wait_until("no connections", || proxy.connections() == 0).await;

    let mut refused = TcpStream::connect(proxy.local_addr()).await.unwrap();
    // Writing first makes sure a forwarded connection would have echoed.
    let _ = refused.write_all(b"anyone?").await;
    assert_closed(&mut refused).await;
    assert_eq!(proxy.connections(), 0);

    proxy.set_mode(FaultMode::Pass);
    let mut fresh = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_echo(&mut fresh, b"back").await;
}

#[tokio::test]
async fn dropping_the_proxy_closes_connections_and_listener() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let addr = proxy.local_addr();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    assert_echo(&mut stream, b"before").await;

    drop(proxy);
    assert_closed(&mut stream).await;
    let deadline = Instant::now() + DEADLINE;
    while TcpStream::connect(addr).await.is_ok() {
        assert!(Instant::now() < deadline, "listener still accepting");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn non_loopback_upstreams_are_rejected() {
    for addr in [
        "10.0.0.1:4222",
        "192.0.2.7:4222",
        "[2001:db8::1]:4222",
        "[::ffff:10.0.0.1]:4222",
        "0.0.0.0:4222",
    ] {
        let err = FaultProxy::start(addr.parse().unwrap()).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{addr}");
    }
    // Any loopback form is fine; nothing is dialled until a client connects.
    for addr in ["127.0.0.2:4222", "[::1]:4222", "[::ffff:127.0.0.1]:4222"] {
        FaultProxy::start(addr.parse().unwrap()).await.unwrap();
    }
}

/// A nats-server child process, killed on drop.
struct NatsServer {
    child: Child,
    addr: SocketAddr,
}

impl NatsServer {
    async fn start() -> NatsServer {
        let bin = std::env::var_os("JETEVENTS_NATS_SERVER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/work/main/.tools/nats-server/nats-server"));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", bin.display()));
        let server = NatsServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let deadline = Instant::now() + DEADLINE;
        while TcpStream::connect(server.addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start listening"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Answers every request on `subject` with its own payload, on a direct
/// (unproxied) connection so only the client under test sees faults.
async fn echo_responder(server: &NatsServer, subject: &'static str) {
    let client = async_nats::connect(server.addr.to_string()).await.unwrap();
    let mut requests = client.subscribe(subject).await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            if let Some(reply) = request.reply {
                client.publish(reply, request.payload).await.unwrap();
            }
        }
    });
}

async fn next_event(events: &mut mpsc::UnboundedReceiver<Event>, wanted: fn(&Event) -> bool) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("event did not arrive before the deadline")
            .expect("event channel closed");
        if wanted(&event) {
            return;
        }
    }
}

#[tokio::test]
async fn nats_request_reply_passes_through() {
    let server = NatsServer::start().await;
    echo_responder(&server, "svc.echo").await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();

    let client = async_nats::connect(proxy.url()).await.unwrap();
    let reply = timeout(DEADLINE, client.request("svc.echo", "ping".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.payload.as_ref(), b"ping");
    assert_eq!(proxy.connections(), 1);
}

#[tokio::test]
async fn nats_close_disconnects_then_client_reconnects_on_pass() {
    let server = NatsServer::start().await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let client = ConnectOptions::new()
        .event_callback(move |event| {
            let events_tx = events_tx.clone();
            async move {
                let _ = events_tx.send(event);
            }
        })
        // Keep retrying quickly so reconnection follows Pass closely.
        .reconnect_delay_callback(|_| Duration::from_millis(20))
        .connect(proxy.url())
        .await
        .unwrap();
    let mut subscription = client.subscribe("after.reconnect").await.unwrap();
    client.flush().await.unwrap();

    proxy.set_mode(FaultMode::Close);
    next_event(&mut events, |e| matches!(e, Event::Disconnected)).await;
    assert_ne!(
        client.connection_state(),
        async_nats::connection::State::Connected
    );

    proxy.set_mode(FaultMode::Pass);
    next_event(&mut events, |e| matches!(e, Event::Connected)).await;

    client
        .publish("after.reconnect", "hello".into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let message = timeout(DEADLINE, subscription.next())
        .await
        .expect("message after reconnect did not arrive")
        .unwrap();
    assert_eq!(message.payload.as_ref(), b"hello");
}

#[tokio::test]
async fn nats_stall_times_out_requests_then_pass_delivers_held_traffic() {
    let server = NatsServer::start().await;
    echo_responder(&server, "svc.echo").await;
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let client = async_nats::connect(proxy.url()).await.unwrap();
    let mut subscription = client.subscribe("during.stall").await.unwrap();
    // Also sets up the request inbox subscription before the stall.
    let reply = client.request("svc.echo", "warm".into()).await.unwrap();
    assert_eq!(reply.payload.as_ref(), b"warm");

    proxy.set_mode(FaultMode::Stall);
    client.publish("during.stall", "held".into()).await.unwrap();
    // async-nats' flush only drains the socket write buffer (no PING/PONG),
    // so a round trip is what shows the stall.
    let stalled = client
        .send_request(
            "svc.echo",
            async_nats::Request::new()
                .payload("stalled".into())
                .timeout(Some(QUIET)),
        )
        .await
        .unwrap_err();
    assert_eq!(stalled.kind(), async_nats::RequestErrorKind::TimedOut);
    assert!(
        timeout(QUIET, subscription.next()).await.is_err(),
        "message crossed a stalled proxy"
    );

    proxy.set_mode(FaultMode::Pass);
    let held = timeout(DEADLINE, subscription.next())
        .await
        .expect("held message was not delivered after Pass")
        .unwrap();
    assert_eq!(held.payload.as_ref(), b"held");
    let reply = timeout(DEADLINE, client.request("svc.echo", "again".into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.payload.as_ref(), b"again");
}
