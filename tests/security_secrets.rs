//! Passwords and nkey seeds (right and wrong ones) never appear in logs,
//! spans (publish and process), `Debug` output or error messages, with every
//! level enabled, the NATS client's own logs included.
//!
//! One test in its own binary: it installs a global tracing subscriber. The
//! token case is `tests/secrets.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use jetevents::client::Client;
use jetevents::config::{Auth, Config, Secret};
use jetevents_testcontainers::{NatsServer, NkeyUser};

mod checker;
mod support;
use checker::{chaos_stream, consumer, eventually, op, Checker, Running};

const PASSWORD: &str = "pw-4d1c9e-secret";
const WRONG_PASSWORD: &str = "pw-wrong-77aa-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_nkey_seeds_never_reach_logs_spans_or_debug_output() {
    let captured = support::LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_writer(captured.clone())
        .finish();
    // Global: the connection's own tasks log too. Alone in this binary.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let user_server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::UserPassword {
            user: "svc".into(),
            password: PASSWORD.into(),
            permissions: None,
        })
        .start()
        .await
        .unwrap();
    let nkey_user = NkeyUser::generate();
    let wrong_nkey = NkeyUser::generate();
    let nkey_server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::Nkey(nkey_user.clone()))
        .start()
        .await
        .unwrap();

    let password_config = Config::default()
        .with_servers([user_server.url()])
        .with_env("dev")
        .with_auth(Auth::UserPassword {
            user: "svc".into(),
            password: Secret::new(PASSWORD),
        });
    let nkey_config = Config::default()
        .with_servers([nkey_server.url()])
        .with_env("dev")
        .with_auth(Auth::NkeySeed(Secret::new(nkey_user.seed())));
    let mut texts = vec![format!("{password_config:?}"), format!("{nkey_config:?}")];

    // Publish and consume on both connections: publish and process spans.
    for config in [&password_config, &nkey_config] {
        let client = Client::connect(config.clone()).await.unwrap();
        chaos_stream(&client, "CHAOS", 1).await;
        let checker = Checker::new("secrets");
        let result = client.publisher().publish(&op("secret", 0, 10)).await;
        checker.record("secret-0", &result);
        let built = consumer(&client, "auditors", "CHAOS", &checker, Duration::ZERO)
            .build()
            .await
            .unwrap();
        texts.push(format!("{built:?}"));
        let running = Running::start(built);
        eventually("handled", Duration::from_secs(30), || async {
            checker.all_acked_handled()
        })
        .await;
        running.stop().await;
        texts.push(format!("{client:?}"));
        client.close().await;
    }

    // Wrong secrets: the errors, their sources and Debug.
    let wrong_password = password_config.clone().with_auth(Auth::UserPassword {
        user: "svc".into(),
        password: Secret::new(WRONG_PASSWORD),
    });
    let wrong_seed = nkey_config
        .clone()
        .with_auth(Auth::NkeySeed(Secret::new(wrong_nkey.seed())));
    for config in [wrong_password, wrong_seed] {
        texts.push(format!("{config:?}"));
        let err = Client::connect(config).await.unwrap_err();
        let mut chain = format!("{err} {err:?}");
        let mut source = std::error::Error::source(&err);
        while let Some(cause) = source {
            chain.push_str(&format!(" {cause} {cause:?}"));
            source = cause.source();
        }
        texts.push(chain);
    }

    let logs = captured.contents();
    assert!(
        logs.contains("process"),
        "the capture saw no process span: {logs}"
    );
    assert!(logs.contains("publish"), "the capture saw no publish span");
    texts.push(logs);
    let secrets = [
        PASSWORD,
        WRONG_PASSWORD,
        nkey_user.seed(),
        wrong_nkey.seed(),
    ];
    for text in &texts {
        for secret in secrets {
            assert!(!text.contains(secret), "a secret leaked into: {text}");
        }
    }
}
