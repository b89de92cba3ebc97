//! Connection settings, from code or from the environment.
//!
//! ```
//! use std::time::Duration;
//! use jetevents::config::{Auth, Config, Secret};
//!
//! let config = Config::default()
//!     .with_servers(["nats://127.0.0.1:4222"])
//!     .with_source("/booking-service")
//!     .with_env("dev")
//!     .with_auth(Auth::Token(Secret::new("s3cret")))
//!     .with_ack_timeout(Duration::from_secs(2));
//! // Secrets never show in Debug output.
//! assert!(!format!("{config:?}").contains("s3cret"));
//!
//! // Fields can be set one by one too. `Config` is `#[non_exhaustive]`, so new
//! // settings are not a breaking change: build it from `Config::default()`,
//! // not with a struct literal.
//! let mut config = Config::default();
//! config.name = Some("booking-1".into());
//! ```
//!
//! A struct literal does not compile outside the crate, which is what lets a
//! release add settings:
//!
//! ```compile_fail
//! let config = jetevents::config::Config {
//!     env: "dev".into(),
//!     ..Default::default()
//! };
//! ```

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::backoff::Backoff;
use crate::codec::Encoding;
use crate::error::Error;

/// Everything needed to connect and publish.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Server URLs, tried in order (`nats://host:port`, `tls://host:port`).
    pub servers: Vec<String>,
    /// Connection name shown in the server's monitoring (`connz`).
    pub name: Option<String>,
    /// CloudEvents `source` of the events this service publishes, e.g.
    /// `/booking-service`.
    pub source: String,
    /// First subject token: the environment (`dev`, `prod`, a tenant).
    pub env: String,
    /// How to authenticate.
    pub auth: Auth,
    /// TLS settings.
    pub tls: TlsConfig,
    /// How long the first connection may take before `connect` fails.
    pub connect_timeout: Duration,
    /// How long to wait for one PubAck before the attempt counts as timed out.
    pub ack_timeout: Duration,
    /// How long any other JetStream API request may take: creating and
    /// reading streams, consumers and key-value buckets, dead-letter
    /// redrives, saga timers. Kept apart from [`Config::ack_timeout`] because
    /// a short ack timeout (fast retries during leader elections) would fail
    /// a consumer's creation on a busy cluster, where it can take seconds.
    pub api_timeout: Duration,
    /// How often the client pings the server. A connection that stops
    /// answering (a black-holed network, a frozen server) is dropped and
    /// reconnected after three unanswered pings, so this sets how soon a
    /// silent failure is noticed: about three times this value.
    pub ping_interval: Duration,
    /// Retries of a publish whose outcome is unknown (ack timeout) or that met
    /// no stream leader (503 / no responders during an election).
    pub publish_retry: PublishRetry,
    /// Encoding used when a publish does not choose one.
    pub encoding: Encoding,
    /// Meter for jetevents' metrics; `None`: the global meter provider's, as
    /// installed by the application before connecting (a no-op by default).
    pub meter: Option<opentelemetry::metrics::Meter>,
}

/// async-nats pings every 60 s, so a black-holed connection went unnoticed
/// for three minutes; 10 s notices it in about 30 s for a few bytes a
/// minute.
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(10);

impl Default for Config {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            name: None,
            source: "/jetevents".to_owned(),
            env: "dev".to_owned(),
            auth: Auth::None,
            tls: TlsConfig::default(),
            connect_timeout: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(5),
            api_timeout: Duration::from_secs(5),
            ping_interval: DEFAULT_PING_INTERVAL,
            publish_retry: PublishRetry::default(),
            encoding: Encoding::Binary,
            meter: None,
        }
    }
}

/// Chainable setters `with_<field>(value)` for a `#[non_exhaustive]` settings
/// struct, which users cannot build with a struct literal.
macro_rules! with_setters {
    ($($(#[$doc:meta])* $setter:ident => $field:ident: $ty:ty),+ $(,)?) => {
        $(
            $(#[$doc])*
            #[must_use]
            pub fn $setter(mut self, value: impl Into<$ty>) -> Self {
                self.$field = value.into();
                self
            }
        )+
    };
}

impl Config {
    with_setters! {
        /// Sets [`Config::source`].
        with_source => source: String,
        /// Sets [`Config::env`].
        with_env => env: String,
        /// Sets [`Config::auth`].
        with_auth => auth: Auth,
        /// Sets [`Config::tls`].
        with_tls => tls: TlsConfig,
        /// Sets [`Config::connect_timeout`].
        with_connect_timeout => connect_timeout: Duration,
        /// Sets [`Config::ack_timeout`].
        with_ack_timeout => ack_timeout: Duration,
        /// Sets [`Config::api_timeout`].
        with_api_timeout => api_timeout: Duration,
        /// Sets [`Config::ping_interval`].
        with_ping_interval => ping_interval: Duration,
        /// Sets [`Config::publish_retry`].
        with_publish_retry => publish_retry: PublishRetry,
        /// Sets [`Config::encoding`].
        with_encoding => encoding: Encoding,
        /// Sets [`Config::meter`].
        with_meter => meter: Option<opentelemetry::metrics::Meter>,
    }

    /// Sets [`Config::name`].
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets [`Config::servers`].
    #[must_use]
    pub fn with_servers(mut self, servers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.servers = servers.into_iter().map(Into::into).collect();
        self
    }
}

/// The retry budget of one publish. Every attempt reuses the event id as
/// `Nats-Msg-Id`, so the server stores the event once however often it is sent
/// (within the stream's duplicate window).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishRetry {
    /// Attempts in all, the first included. `1` disables retries.
    pub max_attempts: u32,
    /// Delay before the first retry; doubled for each further one.
    pub initial_delay: Duration,
    /// Upper bound of the delay between attempts.
    pub max_delay: Duration,
}

impl Default for PublishRetry {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
        }
    }
}

impl PublishRetry {
    /// `max_attempts` in all (the first included), waiting `initial_delay`
    /// before the first retry, doubled up to `max_delay`.
    pub fn new(max_attempts: u32, initial_delay: Duration, max_delay: Duration) -> Self {
        Self {
            max_attempts,
            initial_delay,
            max_delay,
        }
    }

    /// Delay before retry number `retry` (1 = the first retry).
    ///
    /// ```
    /// use std::time::Duration;
    /// let retry = jetevents::config::PublishRetry::default();
    /// assert_eq!(retry.delay(1), Duration::from_millis(100));
    /// assert_eq!(retry.delay(2), Duration::from_millis(200));
    /// assert_eq!(retry.delay(30), Duration::from_secs(2));
    /// ```
    pub fn delay(&self, retry: u32) -> Duration {
        self.backoff().delay(u64::from(retry))
    }

    /// The schedule of delays between attempts: doubling from
    /// `initial_delay`, capped at `max_delay`, without jitter.
    pub fn backoff(&self) -> Backoff {
        Backoff::exponential(self.initial_delay, self.max_delay)
    }
}

/// A secret string (token, password, nkey seed). Its `Debug` and `Display`
/// print `***`, so it cannot leak through logs, spans or error messages.
///
/// ```
/// let secret = jetevents::config::Secret::new("hunter2");
/// assert_eq!(format!("{secret:?} {secret}"), "*** ***");
/// assert_eq!(secret.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for handing to the NATS client. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How the connection authenticates.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub enum Auth {
    /// No credentials.
    #[default]
    None,
    /// A token (`authorization { token: ... }`).
    Token(Secret),
    /// User and password.
    UserPassword {
        /// User name (not secret).
        user: String,
        /// Password.
        password: Secret,
    },
    /// An nkey seed (`SU...`); the public key is derived from it.
    NkeySeed(Secret),
    /// A `.creds` file (JWT and nkey seed), as issued by `nsc`.
    CredentialsFile(PathBuf),
}

/// TLS settings. With none of the files set, TLS is still used for `tls://`
/// URLs and when `required` is set, verified against the system roots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsConfig {
    /// Refuse to talk to the server without TLS.
    pub required: bool,
    /// CA certificate (PEM) that signed the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Client certificate (PEM), for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM), for mutual TLS.
    pub client_key: Option<PathBuf>,
}

impl TlsConfig {
    with_setters! {
        /// Sets [`TlsConfig::required`].
        with_required => required: bool,
    }

    /// Verifies the server against the CA certificate in `ca_file` (PEM).
    #[must_use]
    pub fn with_ca_file(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(ca_file.into());
        self
    }

    /// Presents this client certificate and key (PEM), for mutual TLS.
    #[must_use]
    pub fn with_client_identity(
        mut self,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Self {
        self.client_cert = Some(cert.into());
        self.client_key = Some(key.into());
        self
    }
}

/// What went wrong reading a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigErrorKind {
    /// An environment variable holds a value that cannot be used.
    #[error("invalid value for {variable}: {reason}")]
    InvalidValue {
        /// The variable's name.
        variable: String,
        /// Why it was refused (never the value: it may be a secret).
        reason: String,
    },
    /// Two settings contradict each other.
    #[error("conflicting settings: {0}")]
    Conflict(String),
}

/// Error of [`Config::from_env`].
pub type ConfigError = Error<ConfigErrorKind>;

impl Config {
    /// Reads the configuration from the process environment; unset variables keep
    /// their defaults.
    ///
    /// | variable | meaning |
    /// |---|---|
    /// | `NATS_URL` | server URLs, comma separated |
    /// | `JETEVENTS_NAME` | connection name |
    /// | `JETEVENTS_SOURCE` | CloudEvents `source` |
    /// | `JETEVENTS_ENV` | subject environment prefix |
    /// | `JETEVENTS_TOKEN` | token auth |
    /// | `JETEVENTS_USER`, `JETEVENTS_PASSWORD` | user/password auth |
    /// | `JETEVENTS_NKEY_SEED` | nkey seed auth |
    /// | `JETEVENTS_CREDS_FILE` | credentials file |
    /// | `JETEVENTS_TLS_REQUIRED` | `true`/`false` |
    /// | `JETEVENTS_TLS_CA`, `JETEVENTS_TLS_CERT`, `JETEVENTS_TLS_KEY` | PEM files |
    /// | `JETEVENTS_CONNECT_TIMEOUT`, `JETEVENTS_ACK_TIMEOUT`, `JETEVENTS_API_TIMEOUT`, `JETEVENTS_PING_INTERVAL` | durations: `500ms`, `5s`, `1m` |
    /// | `JETEVENTS_PUBLISH_ATTEMPTS` | attempts per publish, first included |
    /// | `JETEVENTS_ENCODING` | `binary` or `structured` |
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`], reading variables through `lookup` (handy in
    /// tests, which should not mutate the process environment).
    ///
    /// ```
    /// use std::time::Duration;
    /// use jetevents::config::{Auth, Config};
    ///
    /// let config = Config::from_lookup(|name| match name {
    ///     "NATS_URL" => Some("nats://127.0.0.1:4222,nats://127.0.0.1:4223".into()),
    ///     "JETEVENTS_ENV" => Some("prod".into()),
    ///     "JETEVENTS_TOKEN" => Some("t0ken".into()),
    ///     "JETEVENTS_ACK_TIMEOUT" => Some("750ms".into()),
    ///     _ => None,
    /// })
    /// .unwrap();
    /// assert_eq!(config.servers.len(), 2);
    /// assert_eq!(config.env, "prod");
    /// assert!(matches!(config.auth, Auth::Token(_)));
    /// assert_eq!(config.ack_timeout, Duration::from_millis(750));
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());

        if let Some(urls) = get("NATS_URL") {
            config.servers = urls
                .split(',')
                .map(|url| url.trim().to_owned())
                .filter(|url| !url.is_empty())
                .collect();
        }
        config.name = get("JETEVENTS_NAME").or(config.name);
        if let Some(source) = get("JETEVENTS_SOURCE") {
            config.source = source;
        }
        if let Some(env) = get("JETEVENTS_ENV") {
            config.env = env;
        }

        let token = get("JETEVENTS_TOKEN");
        let user = get("JETEVENTS_USER");
        let password = get("JETEVENTS_PASSWORD");
        let seed = get("JETEVENTS_NKEY_SEED");
        let creds = get("JETEVENTS_CREDS_FILE");
        let methods = [
            token.is_some(),
            user.is_some(),
            seed.is_some(),
            creds.is_some(),
        ]
        .iter()
        .filter(|set| **set)
        .count();
        if methods > 1 {
            return Err(Error::new(ConfigErrorKind::Conflict(
                "set only one of JETEVENTS_TOKEN, JETEVENTS_USER, JETEVENTS_NKEY_SEED, JETEVENTS_CREDS_FILE"
                    .to_owned(),
            )));
        }
        config.auth = match (token, user, password, seed, creds) {
            (Some(token), ..) => Auth::Token(Secret::new(token)),
            (_, Some(user), Some(password), ..) => Auth::UserPassword {
                user,
                password: Secret::new(password),
            },
            (_, Some(_), None, ..) => {
                return Err(invalid(
                    "JETEVENTS_PASSWORD",
                    "required with JETEVENTS_USER",
                ))
            }
            (_, None, Some(_), ..) => {
                return Err(invalid(
                    "JETEVENTS_USER",
                    "required with JETEVENTS_PASSWORD",
                ))
            }
            (_, _, _, Some(seed), _) => Auth::NkeySeed(Secret::new(seed)),
            (_, _, _, _, Some(creds)) => Auth::CredentialsFile(PathBuf::from(creds)),
            _ => Auth::None,
        };

        if let Some(required) = get("JETEVENTS_TLS_REQUIRED") {
            config.tls.required = parse_bool("JETEVENTS_TLS_REQUIRED", &required)?;
        }
        config.tls.ca_file = get("JETEVENTS_TLS_CA").map(PathBuf::from);
        config.tls.client_cert = get("JETEVENTS_TLS_CERT").map(PathBuf::from);
        config.tls.client_key = get("JETEVENTS_TLS_KEY").map(PathBuf::from);
        if config.tls.client_cert.is_some() != config.tls.client_key.is_some() {
            return Err(Error::new(ConfigErrorKind::Conflict(
                "JETEVENTS_TLS_CERT and JETEVENTS_TLS_KEY go together".to_owned(),
            )));
        }

        if let Some(value) = get("JETEVENTS_CONNECT_TIMEOUT") {
            config.connect_timeout = parse_duration("JETEVENTS_CONNECT_TIMEOUT", &value)?;
        }
        if let Some(value) = get("JETEVENTS_ACK_TIMEOUT") {
            config.ack_timeout = parse_duration("JETEVENTS_ACK_TIMEOUT", &value)?;
        }
        if let Some(value) = get("JETEVENTS_API_TIMEOUT") {
            config.api_timeout = parse_duration("JETEVENTS_API_TIMEOUT", &value)?;
        }
        if let Some(value) = get("JETEVENTS_PING_INTERVAL") {
            config.ping_interval = parse_duration("JETEVENTS_PING_INTERVAL", &value)?;
            if config.ping_interval.is_zero() {
                return Err(invalid("JETEVENTS_PING_INTERVAL", "a duration above zero"));
            }
        }
        if let Some(value) = get("JETEVENTS_PUBLISH_ATTEMPTS") {
            config.publish_retry.max_attempts = value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|attempts| *attempts >= 1)
                .ok_or_else(|| {
                    invalid("JETEVENTS_PUBLISH_ATTEMPTS", "a whole number, 1 or more")
                })?;
        }
        if let Some(value) = get("JETEVENTS_ENCODING") {
            config.encoding = match value.trim().to_ascii_lowercase().as_str() {
                "binary" => Encoding::Binary,
                "structured" => Encoding::Structured,
                _ => return Err(invalid("JETEVENTS_ENCODING", "binary or structured")),
            };
        }
        Ok(config)
    }
}

fn invalid(variable: &str, reason: &str) -> ConfigError {
    Error::new(ConfigErrorKind::InvalidValue {
        variable: variable.to_owned(),
        reason: reason.to_owned(),
    })
}

fn parse_bool(variable: &str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(invalid(variable, "true or false")),
    }
}

/// Parses `250ms`, `5s`, `2m`; a bare number is seconds.
fn parse_duration(variable: &str, value: &str) -> Result<Duration, ConfigError> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| invalid(variable, "a duration such as 500ms, 5s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(number)),
        "" | "s" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number.saturating_mul(60))),
        _ => Err(invalid(variable, "a duration such as 500ms, 5s or 1m")),
    }
}

#[cfg(test)]
mod tests;
