//! `jetevents-gateway`: the gateway's router and its example page on one port.
//!
//! Configuration from the environment: `NATS_URL`, `JETEVENTS_ENV` (the
//! subject environment, as the library reads it), `GATEWAY_STREAM`,
//! `GATEWAY_LISTEN` (default `127.0.0.1:8080`), and the keys: `GATEWAY_JWKS`
//! (a JWK set document) or `GATEWAY_HS256_SECRET`. Ctrl-C or SIGTERM shuts
//! down gracefully: clients get `end` / `shutdown` and reconnect.

use axum::response::Html;
use axum::routing::get;
use jetevents_gateway::{Gateway, GatewayConfig, KeySet, EXAMPLE_PAGE};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let var = |name: &str| std::env::var(name).ok();
    let keys = match (var("GATEWAY_JWKS"), var("GATEWAY_HS256_SECRET")) {
        (Some(jwks), _) => KeySet::from_jwks(&jwks)?,
        (None, Some(secret)) => KeySet::new().with_hs256(None, secret.into_bytes()),
        (None, None) => return Err("set GATEWAY_JWKS or GATEWAY_HS256_SECRET".into()),
    };
    let stream = var("GATEWAY_STREAM").ok_or("set GATEWAY_STREAM")?;
    let listen = var("GATEWAY_LISTEN").unwrap_or_else(|| "127.0.0.1:8080".into());
    let client = jetevents::client::Client::connect(jetevents::config::Config::from_env()?).await?;
    let gateway = Gateway::new(&client, keys, GatewayConfig::new(stream)).await?;
    let app = gateway
        .router()
        .route("/", get(|| async { Html(EXAMPLE_PAGE) }));
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!(
        "jetevents-gateway listening on http://{}",
        listener.local_addr()?
    );
    let on_signal = gateway.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            on_signal.shutdown();
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
