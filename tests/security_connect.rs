//! Every authentication method and TLS: the right secret connects, a wrong
//! one fails fast with a typed `ConnectErrorKind` (no reconnect loop: the
//! connect returns; the timeout around it only guards against a hang).
//!
//! The token case with a wrong token is in `tests/publish.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use jetevents::client::{Client, ConnectError, ConnectErrorKind};
use jetevents::config::{Auth, Config, Secret, TlsConfig};
use jetevents_testcontainers::{NatsServer, NkeyUser, Tls};

/// Far longer than any connect should take: only a hang reaches it.
const HANG_GUARD: Duration = Duration::from_secs(60);

fn config(url: String, auth: Auth, tls: TlsConfig) -> Config {
    // A short connect timeout would turn a slow failure into TimedOut; the
    // default keeps the error the server's.
    Config::default()
        .with_servers([url])
        .with_auth(auth)
        .with_tls(tls)
}

async fn connect(config: Config) -> Result<Client, ConnectError> {
    tokio::time::timeout(HANG_GUARD, Client::connect(config))
        .await
        .expect("connect hung: a wrong secret must fail, not retry forever")
}

async fn refused(config: Config) -> ConnectErrorKind {
    let err = connect(config).await.unwrap_err();
    err.kind().clone()
}

/// The client works: a round trip to the server succeeds.
async fn assert_usable(client: Client) {
    client.nats().unwrap().flush().await.unwrap();
    client.jetstream().unwrap().query_account().await.unwrap();
}

#[tokio::test]
async fn token_auth_without_a_token_is_refused() {
    let server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::Token("tok-right".into()))
        .start()
        .await
        .unwrap();
    let ok = config(
        server.url(),
        Auth::Token(Secret::new("tok-right")),
        TlsConfig::default(),
    );
    assert_usable(connect(ok).await.unwrap()).await;
    let none = config(server.url(), Auth::None, TlsConfig::default());
    assert_eq!(refused(none).await, ConnectErrorKind::AuthenticationFailed);
}

#[tokio::test]
async fn user_and_password() {
    let server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::UserPassword {
            user: "svc".into(),
            password: "pw-right".into(),
            permissions: None,
        })
        .start()
        .await
        .unwrap();
    let with = |user: &str, password: &str| {
        config(
            server.url(),
            Auth::UserPassword {
                user: user.into(),
                password: Secret::new(password),
            },
            TlsConfig::default(),
        )
    };
    assert_usable(connect(with("svc", "pw-right")).await.unwrap()).await;
    assert_eq!(
        refused(with("svc", "pw-wrong")).await,
        ConnectErrorKind::AuthenticationFailed
    );
    assert_eq!(
        refused(with("intruder", "pw-right")).await,
        ConnectErrorKind::AuthenticationFailed
    );
    let none = config(server.url(), Auth::None, TlsConfig::default());
    assert_eq!(refused(none).await, ConnectErrorKind::AuthenticationFailed);
}

#[tokio::test]
async fn nkey() {
    let user = NkeyUser::generate();
    let server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::Nkey(user.clone()))
        .start()
        .await
        .unwrap();
    let with = |seed: &str| {
        config(
            server.url(),
            Auth::NkeySeed(Secret::new(seed)),
            TlsConfig::default(),
        )
    };
    assert_usable(connect(with(user.seed())).await.unwrap()).await;
    // A valid seed of another user: the signature checks out, the key is unknown.
    let stranger = NkeyUser::generate();
    assert_eq!(
        refused(with(stranger.seed())).await,
        ConnectErrorKind::AuthenticationFailed
    );
}

#[tokio::test]
async fn a_malformed_nkey_seed_is_refused_without_reaching_the_server() {
    let user = NkeyUser::generate();
    let server = NatsServer::builder()
        .auth(jetevents_testcontainers::Auth::Nkey(user))
        .start()
        .await
        .unwrap();
    let bad = config(
        server.url(),
        Auth::NkeySeed(Secret::new("SUNOTAVALIDSEED")),
        TlsConfig::default(),
    );
    let kind = refused(bad).await;
    assert!(
        matches!(
            kind,
            ConnectErrorKind::AuthenticationFailed | ConnectErrorKind::InvalidConfig(_)
        ),
        "{kind:?}"
    );
}

fn tls_with(ca: Option<PathBuf>, cert: Option<(PathBuf, PathBuf)>) -> TlsConfig {
    let mut tls = TlsConfig::default().with_required(true);
    if let Some(ca) = ca {
        tls = tls.with_ca_file(ca);
    }
    if let Some((cert, key)) = cert {
        tls = tls.with_client_identity(cert, key);
    }
    tls
}

/// A TLS server, and client settings that must each be refused.
async fn tls_cases(mode: Tls) -> (NatsServer, NatsServer, Config, Vec<(&'static str, Config)>) {
    let server = NatsServer::builder().tls(mode).start().await.unwrap();
    // A second server: its CA and client certificate are foreign to the first.
    let other = NatsServer::builder().tls(mode).start().await.unwrap();
    let ca = server.ca_cert_path();
    let own_cert = Some((
        server.client_cert_path().unwrap(),
        server.client_key_path().unwrap(),
    ));
    let foreign_cert = Some((
        other.client_cert_path().unwrap(),
        other.client_key_path().unwrap(),
    ));
    let url = server.url();
    let ok = config(
        url.clone(),
        Auth::None,
        tls_with(ca.clone(), own_cert.clone()),
    );
    let mut refused = vec![
        // The system roots do not know the test CA.
        (
            "system roots",
            config(url.clone(), Auth::None, tls_with(None, own_cert.clone())),
        ),
        // Another CA does not vouch for this server.
        (
            "foreign CA",
            config(
                url.clone(),
                Auth::None,
                tls_with(other.ca_cert_path(), own_cert),
            ),
        ),
    ];
    if mode == Tls::MutualTls {
        refused.push((
            "no client certificate",
            config(url.clone(), Auth::None, tls_with(ca.clone(), None)),
        ));
        refused.push((
            "foreign client certificate",
            config(url, Auth::None, tls_with(ca, foreign_cert)),
        ));
    }
    (server, other, ok, refused)
}

#[tokio::test]
async fn tls_and_mutual_tls_connect_with_the_right_certificates_and_fail_fast_otherwise() {
    for mode in [Tls::Tls, Tls::MutualTls] {
        let (_server, _other, ok, refused_cases) = tls_cases(mode).await;
        assert_usable(connect(ok).await.unwrap()).await;
        for (case, config) in refused_cases {
            // Returns (no reconnect loop) with an error.
            let kind = refused(config).await;
            println!("{mode:?} {case}: {kind:?}");
        }
    }
}

/// Fails today: the handshake failures come from async-nats as
/// `ConnectErrorKind::Io` (rustls's error inside an `io::Error` of kind
/// `InvalidData`), which `Client::connect` maps to `Unreachable`.
#[tokio::test]
async fn tls_failures_are_typed_tls() {
    for mode in [Tls::Tls, Tls::MutualTls] {
        let (_server, _other, _ok, refused_cases) = tls_cases(mode).await;
        for (case, config) in refused_cases {
            assert_eq!(
                refused(config).await,
                ConnectErrorKind::Tls,
                "{mode:?} {case}"
            );
        }
    }
}

#[tokio::test]
async fn nothing_listening_is_unreachable_not_a_hang() {
    // A port that was free a moment ago: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let nobody = config(
        format!("nats://127.0.0.1:{port}"),
        Auth::None,
        TlsConfig::default(),
    );
    assert_eq!(refused(nobody).await, ConnectErrorKind::Unreachable);
}
