//! The gateway over HTTP against a real nats-server: authorization, resume,
//! resets, token expiry, slow clients, shutdown, shared live subscriptions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(15);

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn missing_invalid_or_expired_token_is_401_and_a_filter_outside_grants_is_403() {
    let world = World::start(|_, _| {}).await;
    let status = |path: String, headers: Vec<(&'static str, String)>| {
        let addr = world.addr;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            SseClient::connect(addr, &path, &headers, None).await.status
        }
    };
    assert_eq!(status("/events".into(), vec![]).await, 401);
    assert_eq!(
        status("/events".into(), vec![("authorization", bearer("a.b.c"))]).await,
        401
    );
    let expired = token(Duration::ZERO, r#"{"patterns":["demo.>"]}"#);
    assert_eq!(
        status("/events".into(), vec![("authorization", bearer(&expired))]).await,
        401
    );
    let forged = format!("{}x", demo_token());
    assert_eq!(status(format!("/events?token={forged}"), vec![]).await, 401);
    let ticks_only = token(
        Duration::from_secs(60),
        &format!(r#"{{"types":["{TICK}"]}}"#),
    );
    let forbidden = format!("/events?types={TOCK}&token={ticks_only}");
    assert_eq!(status(forbidden, vec![]).await, 403);
    assert_eq!(
        status(
            "/events?pattern=demo.%3E".into(),
            vec![("cookie", format!("jetevents_token={ticks_only}"))]
        )
        .await,
        403
    );
    // The same token within its grants, from the query and from the cookie.
    assert_eq!(
        status(format!("/events?types={TICK}&token={ticks_only}"), vec![]).await,
        200
    );
    assert_eq!(
        status(
            "/events".into(),
            vec![("cookie", format!("a=b; jetevents_token={ticks_only}"))]
        )
        .await,
        200
    );
}

#[tokio::test]
async fn resume_delivers_exactly_the_missed_events_then_live_ones() {
    let world = World::start(|_, _| {}).await;
    let token = demo_token();
    let auth = bearer(&token);
    let path = format!("/events?types={TICK}");
    let mut first = SseClient::connect(world.addr, &path, &[("authorization", &auth)], None).await;
    for n in 1..=3 {
        world.publish(n).await;
    }
    let mut last_id = None;
    for n in 1..=3 {
        let frame = first.next_within(WAIT).await.unwrap();
        assert_eq!(frame.n(), Some(n));
        last_id = frame.id;
    }
    drop(first);
    // Missed: ticks 4..=6, with a tock in between that the filter leaves out.
    for n in 4..=6 {
        world.publish(n).await;
        world.client.publisher().publish(&Tock { n }).await.unwrap();
    }
    let last_id = last_id.unwrap();
    let mut again = SseClient::connect(
        world.addr,
        &path,
        &[("authorization", &auth), ("last-event-id", &last_id)],
        None,
    )
    .await;
    let mut seen = Vec::new();
    for _ in 4..=6 {
        seen.push(again.next_within(WAIT).await.unwrap().n().unwrap());
    }
    world.publish(7).await;
    seen.push(again.next_within(WAIT).await.unwrap().n().unwrap());
    assert_eq!(
        seen,
        [4, 5, 6, 7],
        "exactly the missed events, in order, then live"
    );
}

#[tokio::test]
async fn a_reset_event_replaces_history_that_is_gone_or_a_recreated_stream() {
    let world = World::start(|_, stream| stream.max_messages = 2).await;
    let auth = bearer(&demo_token());
    let mut live =
        SseClient::connect(world.addr, "/events", &[("authorization", &auth)], None).await;
    world.publish(1).await;
    let old_id = live.next_within(WAIT).await.unwrap().id.unwrap();
    drop(live);
    for n in 2..=5 {
        world.publish(n).await;
    }
    let mut client = SseClient::connect(
        world.addr,
        "/events",
        &[("authorization", &auth), ("last-event-id", &old_id)],
        None,
    )
    .await;
    let reset = client.next_within(WAIT).await.unwrap();
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert_eq!(reset.reason().as_deref(), Some("history-gone"));
    assert!(
        reset.id.unwrap().ends_with(".5"),
        "resume from the stream's end"
    );
    world.publish(6).await;
    assert_eq!(client.next_within(WAIT).await.unwrap().n(), Some(6));
    drop(client);

    // The same name, a new stream: sequences restart, the epoch tells.
    let jetstream = world.client.jetstream().unwrap();
    let config = jetstream
        .get_stream(&world.stream)
        .await
        .unwrap()
        .cached_info()
        .config
        .clone();
    jetstream.delete_stream(&world.stream).await.unwrap();
    jetstream.create_stream(config).await.unwrap();
    world.publish(1).await;
    let recent_id = old_id
        .rsplit_once('.')
        .map(|(head, _)| format!("{head}.1"))
        .unwrap();
    let mut client = SseClient::connect(
        world.addr,
        "/events",
        &[("authorization", &auth), ("last-event-id", &recent_id)],
        None,
    )
    .await;
    let reset = client.next_within(WAIT).await.unwrap();
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert_eq!(reset.reason().as_deref(), Some("stream-recreated"));
}

#[tokio::test]
async fn a_token_expiring_mid_stream_ends_it_with_a_final_event() {
    let world = World::start(|_, _| {}).await;
    let short = token(Duration::from_secs(2), r#"{"patterns":["demo.>"]}"#);
    let mut client = SseClient::connect(
        world.addr,
        "/events",
        &[("authorization", &bearer(&short))],
        None,
    )
    .await;
    assert_eq!(client.status, 200);
    world.publish(1).await;
    assert_eq!(client.next_within(WAIT).await.unwrap().n(), Some(1));
    client.expect_end("token-expired", WAIT).await;
}

#[tokio::test]
async fn a_failed_catch_up_read_ends_the_stream_so_the_client_resumes() {
    // One consumer at most: the live subscription's. The resuming client's
    // catch-up read (its own ordered consumer) is refused by the server.
    let world = World::start(|_, stream| stream.max_consumers = 1).await;
    let auth = bearer(&demo_token());
    let mut live =
        SseClient::connect(world.addr, "/events", &[("authorization", &auth)], None).await;
    for n in 1..=3 {
        world.publish(n).await;
    }
    let first_id = live.next_within(WAIT).await.unwrap().id.unwrap();
    let mut resuming = SseClient::connect(
        world.addr,
        "/events",
        &[("authorization", &auth), ("last-event-id", &first_id)],
        None,
    )
    .await;
    assert_eq!(resuming.status, 200);
    resuming.expect_end("stream-unavailable", WAIT).await;
    // The live client is unaffected.
    assert_eq!(live.next_within(WAIT).await.unwrap().n(), Some(2));
}

#[tokio::test]
async fn a_slow_client_is_disconnected_while_another_keeps_receiving() {
    let world = World::start(|gateway, _| {
        gateway.buffer = 4;
        gateway.live_capacity = 8;
    })
    .await;
    let auth = bearer(&demo_token());
    let headers = [("authorization", auth.as_str())];
    let mut fast = SseClient::connect(world.addr, "/events", &headers, None).await;
    // Never read until the end: a tiny receive window, then full buffers.
    let mut slow = SseClient::connect(world.addr, "/events", &headers, Some(4096)).await;
    let pad = "x".repeat(128 * 1024);
    let total = 100;
    for n in 1..=total {
        world
            .client
            .publisher()
            .publish(&Tick {
                n,
                pad: pad.clone(),
            })
            .await
            .unwrap();
        // In step with the fast client, which therefore never falls behind.
        assert_eq!(fast.next_within(WAIT).await.unwrap().n(), Some(n));
    }
    let mut received = Vec::new();
    let end = loop {
        let frame = slow
            .next_within(WAIT)
            .await
            .expect("an end event before the stream closes");
        match frame.n() {
            Some(n) => received.push(n),
            None => break frame,
        }
    };
    assert_eq!(end.event.as_deref(), Some("end"));
    assert_eq!(end.reason().as_deref(), Some("slow-consumer"));
    assert!(
        (received.len() as u64) < total,
        "the slow client was cut off"
    );
    assert_eq!(
        received,
        (1..=received.len() as u64).collect::<Vec<_>>(),
        "what it got has no gap"
    );
    assert_eq!(slow.next_within(WAIT).await, None);
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect_and_the_server_stops() {
    let mut world = World::start(|_, _| {}).await;
    let auth = bearer(&demo_token());
    let mut client =
        SseClient::connect(world.addr, "/events", &[("authorization", &auth)], None).await;
    world.publish(1).await;
    assert_eq!(client.next_within(WAIT).await.unwrap().n(), Some(1));
    world.gateway.shutdown();
    client.expect_end("shutdown", WAIT).await;
    // The server's graceful shutdown completes once the streams have ended.
    tokio::time::timeout(WAIT, world.stop_serving())
        .await
        .expect("server stopped");
}

#[tokio::test]
async fn clients_of_one_filter_share_one_live_subscription() {
    let world = World::start(|_, _| {}).await;
    let auth = bearer(&demo_token());
    let headers = [("authorization", auth.as_str())];
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            SseClient::connect(world.addr, &format!("/events?types={TICK}"), &headers, None).await,
        );
    }
    let _other =
        SseClient::connect(world.addr, &format!("/events?types={TOCK}"), &headers, None).await;
    assert_eq!(world.gateway.live_subscriptions(), 2);
    // On the server: one consumer per filter, not per client.
    let jetstream = world.client.jetstream().unwrap();
    let mut stream = jetstream.get_stream(&world.stream).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.consumer_count, 2);
    world.publish(1).await;
    for client in &mut clients {
        assert_eq!(client.next_within(WAIT).await.unwrap().n(), Some(1));
    }
}

#[tokio::test]
async fn websocket_streams_events_and_resumes_from_a_token() {
    let world = World::start(|_, _| {}).await;
    let token = demo_token();
    let url = |resume: &str| format!("ws://{}/ws?types={TICK}&token={token}{resume}", world.addr);
    let (mut socket, _) = tokio_tungstenite::connect_async(url("")).await.unwrap();
    world.publish(1).await;
    world.publish(2).await;
    assert_eq!(next_event(&mut socket).await.1, 1);
    let (resume, n) = next_event(&mut socket).await;
    assert_eq!(n, 2);
    drop(socket);
    world.publish(3).await;
    world.publish(4).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(url(&format!("&resume={resume}")))
        .await
        .unwrap();
    assert_eq!(next_event(&mut socket).await.1, 3);
    assert_eq!(next_event(&mut socket).await.1, 4);
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next event of a WebSocket stream: its id and tick number.
async fn next_event(socket: &mut Socket) -> (String, u64) {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if let Message::Text(text) = message {
            let json: serde_json::Value = serde_json::from_str(&text).unwrap();
            let n = json["event"]["data"]["n"].as_u64().unwrap();
            return (json["id"].as_str().unwrap().to_owned(), n);
        }
    }
}
