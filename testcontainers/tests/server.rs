//! Single-server scenarios, each on the binary backend and (when available) docker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use async_nats::jetstream;
use common::{backends, create_stream, options, publish, roundtrip, unique};
use jetevents_testcontainers::{Auth, Backend, NatsServer, NkeyUser, Permissions, Tls};

#[tokio::test]
async fn start_publish_and_consume() {
    for backend in backends().await {
        let server = NatsServer::builder()
            .backend(backend)
            .start()
            .await
            .unwrap();
        assert_eq!(server.backend(), backend);
        assert_eq!(
            server.url(),
            format!("nats://127.0.0.1:{}", server.client_port())
        );
        assert!(server.monitor_url().starts_with("http://127.0.0.1:"));
        let client = async_nats::connect(server.url()).await.unwrap();
        roundtrip(client).await;
    }
}

#[tokio::test]
async fn kill_then_restart_keeps_the_file_store() {
    for backend in backends().await {
        let mut server = NatsServer::builder()
            .backend(backend)
            .start()
            .await
            .unwrap();
        let port = server.client_port();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client);
        let name = unique("KEEP");
        create_stream(&js, &name, 1).await;
        let seq = publish(&js, format!("{name}.a"), "survives").await;

        server.kill().await.unwrap();
        assert!(
            !server.is_running().await,
            "{backend:?}: still running after kill"
        );
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err(),
            "{backend:?}: port still answers after kill"
        );

        server.restart().await.unwrap();
        assert_eq!(server.client_port(), port);
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let stream = js.get_stream(&name).await.unwrap();
        let message = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(&message.payload[..], b"survives", "{backend:?}");
    }
}

#[tokio::test]
async fn graceful_stop_then_restart() {
    for backend in backends().await {
        let mut server = NatsServer::builder()
            .backend(backend)
            .start()
            .await
            .unwrap();
        server.stop().await.unwrap();
        assert!(
            !server.is_running().await,
            "{backend:?}: running after stop"
        );
        assert!(async_nats::connect(server.url()).await.is_err());
        server.restart().await.unwrap();
        roundtrip(async_nats::connect(server.url()).await.unwrap()).await;
    }
}

#[tokio::test]
async fn lame_duck_mode_tells_clients_and_the_server_exits() {
    for backend in backends().await {
        let mut server = NatsServer::builder()
            .backend(backend)
            .start()
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = options()
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            })
            .connect(server.url())
            .await
            .unwrap();
        server.lame_duck().await.unwrap();
        let saw_ldm = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(event) = rx.recv().await {
                if matches!(event, async_nats::Event::LameDuckMode) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(saw_ldm, "{backend:?}: no lame duck event");
        drop(client);
        server
            .wait_for_exit(Duration::from_secs(45))
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: {e}"));
    }
}

async fn connect_err(url: &str, opts: async_nats::ConnectOptions) -> String {
    match opts.connect(url).await {
        Ok(_) => panic!("connection to {url} was accepted"),
        Err(err) => err.to_string(),
    }
}

#[tokio::test]
async fn token_auth_rejects_wrong_token() {
    for backend in backends().await {
        let server = NatsServer::builder()
            .backend(backend)
            .auth(Auth::Token("right-token".into()))
            .start()
            .await
            .unwrap();
        let err = connect_err(&server.url(), options().token("wrong".into())).await;
        assert!(err.contains("authorization"), "{backend:?}: {err}");
        connect_err(&server.url(), options()).await;
        let client = options()
            .token("right-token".into())
            .connect(server.url())
            .await
            .unwrap();
        roundtrip(client).await;
    }
}

#[tokio::test]
async fn user_password_auth_and_publish_permissions() {
    for backend in backends().await {
        let server = NatsServer::builder()
            .backend(backend)
            .auth(Auth::UserPassword {
                user: "svc".into(),
                password: "pw".into(),
                permissions: Some(Permissions::publish_only(["dev.allowed.>"])),
            })
            .start()
            .await
            .unwrap();
        let err = connect_err(
            &server.url(),
            options().user_and_password("svc".into(), "bad".into()),
        )
        .await;
        assert!(err.contains("authorization"), "{backend:?}: {err}");

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let client = options()
            .user_and_password("svc".into(), "pw".into())
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(event);
                }
            })
            .connect(server.url())
            .await
            .unwrap();
        // Allowed subject: a plain request-free publish is accepted silently, and
        // JetStream API calls work.
        let js = jetstream::new(client.clone());
        js.create_stream(jetstream::stream::Config {
            name: "ALLOWED".into(),
            subjects: vec!["dev.allowed.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
        js.publish("dev.allowed.x", "ok".into())
            .await
            .unwrap()
            .await
            .unwrap();
        client.publish("dev.denied.x", "no".into()).await.unwrap();
        client.flush().await.unwrap();
        let violation = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(event) = rx.recv().await {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(msg)) = &event
                {
                    if msg.contains("Permissions Violation") && msg.contains("dev.denied.x") {
                        return true;
                    }
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(violation, "{backend:?}: no permissions violation reported");
    }
}

#[tokio::test]
async fn nkey_auth_rejects_an_unknown_key() {
    for backend in backends().await {
        let user = NkeyUser::generate();
        let server = NatsServer::builder()
            .backend(backend)
            .auth(Auth::Nkey(user.clone()))
            .start()
            .await
            .unwrap();
        let stranger = NkeyUser::generate();
        let err = connect_err(&server.url(), options().nkey(stranger.seed().into())).await;
        assert!(err.contains("authorization"), "{backend:?}: {err}");
        let client = options()
            .nkey(user.seed().into())
            .connect(server.url())
            .await
            .unwrap();
        roundtrip(client).await;
    }
}

#[tokio::test]
async fn tls_needs_the_ca() {
    for backend in backends().await {
        let server = NatsServer::builder()
            .backend(backend)
            .tls(Tls::Tls)
            .start()
            .await
            .unwrap();
        assert!(server.url().starts_with("tls://127.0.0.1:"));
        // Without our CA the server certificate is not trusted.
        connect_err(&server.url(), options()).await;
        let client = options()
            .add_root_certificates(server.ca_cert_path().unwrap())
            .connect(server.url())
            .await
            .unwrap();
        roundtrip(client).await;
    }
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate() {
    for backend in backends().await {
        let server = NatsServer::builder()
            .backend(backend)
            .tls(Tls::MutualTls)
            .start()
            .await
            .unwrap();
        let ca = server.ca_cert_path().unwrap();
        connect_err(&server.url(), options().add_root_certificates(ca.clone())).await;
        let client = options()
            .add_root_certificates(ca)
            .add_client_certificate(
                server.client_cert_path().unwrap(),
                server.client_key_path().unwrap(),
            )
            .connect(server.url())
            .await
            .unwrap();
        roundtrip(client).await;
    }
}

#[tokio::test]
async fn max_payload_is_applied() {
    for backend in backends().await {
        let server = NatsServer::builder()
            .backend(backend)
            .max_payload(4096)
            .start()
            .await
            .unwrap();
        let client = async_nats::connect(server.url()).await.unwrap();
        assert_eq!(client.server_info().max_payload, 4096, "{backend:?}");
    }
}

#[tokio::test]
async fn sync_interval_is_applied() {
    for backend in backends().await {
        let always = NatsServer::builder()
            .backend(backend)
            .sync_interval("always")
            .start()
            .await
            .unwrap();
        let config = &always.monitor_json("/jsz").await.unwrap()["config"];
        assert_eq!(config["sync_always"], true, "{backend:?}: {config}");
        roundtrip(async_nats::connect(always.url()).await.unwrap()).await;

        let every_ten = NatsServer::builder()
            .backend(backend)
            .sync_interval("10s")
            .start()
            .await
            .unwrap();
        let config = &every_ten.monitor_json("/jsz").await.unwrap()["config"];
        assert_eq!(
            config["sync_interval"], 10_000_000_000u64,
            "{backend:?}: {config}"
        );
        assert_ne!(config["sync_always"], true, "{backend:?}: {config}");
    }
}

#[tokio::test]
async fn jetstream_can_be_disabled() {
    let server = NatsServer::builder()
        .backend(Backend::Binary)
        .jetstream(false)
        .start()
        .await
        .unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    assert!(!client.server_info().jetstream);
}

#[tokio::test]
async fn external_backend_cannot_be_killed() {
    // NATS_URL is not set by this test (env changes race with other tests): the
    // external server is only described, never contacted.
    let mut server = NatsServer::builder()
        .backend(Backend::External)
        .start()
        .await
        .unwrap();
    assert_eq!(server.backend(), Backend::External);
    let err = server.kill().await.unwrap_err();
    assert_eq!(
        err.kind(),
        jetevents_testcontainers::HarnessErrorKind::Unsupported
    );
    assert!(server.restart().await.is_err());
    assert!(server.lame_duck().await.is_err());
}

#[tokio::test]
async fn shared_server_from_one_test() {
    let shared = jetevents_testcontainers::shared().await;
    roundtrip(async_nats::connect(shared.url()).await.unwrap()).await;
}

#[tokio::test]
async fn shared_server_from_another_test() {
    let shared = jetevents_testcontainers::shared().await;
    let again = jetevents_testcontainers::shared().await;
    assert!(std::ptr::eq(shared, again), "one server per process");
    roundtrip(async_nats::connect(shared.url()).await.unwrap()).await;
}
