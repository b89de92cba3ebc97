//! Secrets (tokens, passwords) never appear in logs, spans or Debug output.
//! One test in its own binary: it installs a global tracing subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use jetevents::client::Client;
use jetevents::config::{Auth, Config, Secret};
use jetevents::provision::StreamSpec;
use jetevents_testcontainers::NatsServer;
use serde::{Deserialize, Serialize};

mod support;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct AccountOpened {
    account_id: String,
}

impl jetevents::Event for AccountOpened {
    const TYPE: &'static str = "bank.account.opened.v1";
    fn key(&self) -> Option<String> {
        Some(self.account_id.clone())
    }
}

fn opened(id: &str) -> AccountOpened {
    AccountOpened {
        account_id: id.to_owned(),
    }
}

#[tokio::test]
async fn secrets_never_reach_logs_or_debug_output() {
    let server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::Token(
            "tok-7f3a9c-secret".into(),
        ))
        .start()
        .await
        .unwrap();
    let captured = support::LogCapture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_writer(captured.clone())
        .finish();
    // Global, not thread-local: the connection's tasks log too. This binary
    // holds this one test so nothing else installs a subscriber.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let config = Config::default()
        .with_servers([server.url()])
        .with_env("dev")
        .with_auth(Auth::Token(Secret::new("tok-7f3a9c-secret")));
    let client = Client::connect(config.clone()).await.unwrap();
    client
        .ensure_stream(&StreamSpec::new("BANK", vec!["dev.bank.>".into()]))
        .await
        .unwrap();
    client.publisher().publish(&opened("acc-s")).await.unwrap();
    let wrong = config
        .clone()
        .with_auth(Auth::Token(Secret::new("tok-wrong-secret")));
    let err = Client::connect(wrong).await.unwrap_err();

    let logs = captured.contents();
    assert!(logs.contains("publish"), "the capture saw nothing: {logs}");
    for text in [
        logs,
        format!("{config:?}"),
        format!("{client:?}"),
        format!("{err:?} {err}"),
    ] {
        assert!(!text.contains("tok-7f3a9c-secret"), "secret leaked: {text}");
        assert!(!text.contains("tok-wrong-secret"), "secret leaked: {text}");
    }
}
