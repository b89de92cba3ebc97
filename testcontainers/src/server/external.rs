//! The external backend's side of a server: one that runs already, at
//! `$NATS_URL`; it can be used, not killed, stopped or restarted.

/// Env var with the URL of an existing server for [`super::Backend::External`].
pub const NATS_URL_ENV: &str = "NATS_URL";
/// Env var with the monitoring URL of an external server (default `http://127.0.0.1:8222`).
pub const NATS_MONITOR_URL_ENV: &str = "NATS_MONITOR_URL";

/// Where the external server answers.
pub(super) struct ExternalServer {
    pub(super) url: String,
    pub(super) client_port: u16,
    pub(super) http_port: u16,
}

impl ExternalServer {
    /// The server named by `$NATS_URL` and `$NATS_MONITOR_URL`.
    pub(super) fn from_env() -> Self {
        let url = env_or(NATS_URL_ENV, "nats://127.0.0.1:4222");
        let monitor = env_or(NATS_MONITOR_URL_ENV, "http://127.0.0.1:8222");
        Self {
            client_port: port_of(&url).unwrap_or(4222),
            http_port: port_of(&monitor).unwrap_or(8222),
            url,
        }
    }

    /// Whether something accepts connections on its client port.
    pub(super) async fn is_running(&self) -> bool {
        tokio::net::TcpStream::connect(("127.0.0.1", self.client_port))
            .await
            .is_ok()
    }
}

fn env_or(var: &str, default: &str) -> String {
    std::env::var(var)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}
