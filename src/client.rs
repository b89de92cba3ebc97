//! The connection: one [`Client`] per service, cheap to clone, shared by its
//! publishers and consumers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::broadcast;

use crate::config::{Auth, Config};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::subject::Subjects;
use crate::transport::nats::NatsTransport;
use crate::transport::Transport;

/// What went wrong connecting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// The configuration cannot be used (bad URL, bad environment token,
    /// unreadable credentials file).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// The server refused the credentials (wrong token, password, nkey or
    /// credentials). Not retried: a wrong secret does not get better.
    #[error("authentication failed")]
    AuthenticationFailed,
    /// TLS could not be set up or the handshake failed (unknown CA, missing
    /// client certificate for mutual TLS).
    #[error("TLS failed")]
    Tls,
    /// No server answered within the connect timeout.
    #[error("connect timed out")]
    TimedOut,
    /// The server could not be reached (refused, DNS, I/O).
    #[error("server unreachable")]
    Unreachable,
}

/// Error of [`Client::connect`].
pub type ConnectError = Error<ConnectErrorKind>;

/// Which operation the server refused for lack of permission.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Operation {
    /// Publishing to a subject.
    Publish,
    /// Subscribing to a subject.
    Subscribe,
}

/// A permission violation the server reported on this connection.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PermissionViolation {
    /// What was refused.
    pub operation: Operation,
    /// On which subject.
    pub subject: String,
}

impl PermissionViolation {
    /// Reads the server's `-ERR 'Permissions Violation for Publish to "x"'` text.
    ///
    /// ```
    /// use jetevents::client::{Operation, PermissionViolation};
    /// let violation = PermissionViolation::parse(r#"Permissions Violation for Publish to "dev.a.b""#).unwrap();
    /// assert_eq!(violation.operation, Operation::Publish);
    /// assert_eq!(violation.subject, "dev.a.b");
    /// ```
    pub fn parse(message: &str) -> Option<PermissionViolation> {
        let message = message.trim().trim_matches('\'');
        let lower = message.to_ascii_lowercase();
        let (operation, prefix) = if lower.starts_with("permissions violation for publish to ") {
            (
                Operation::Publish,
                "permissions violation for publish to ".len(),
            )
        } else if lower.starts_with("permissions violation for subscription to ") {
            (
                Operation::Subscribe,
                "permissions violation for subscription to ".len(),
            )
        } else {
            return None;
        };
        let rest = message.get(prefix..)?.trim();
        // Subscription violations may name a queue group after the subject.
        let subject = rest.trim_matches('"').split('"').next()?.to_owned();
        Some(PermissionViolation { operation, subject })
    }
}

/// A connection to NATS with JetStream, the configuration it was made from and
/// the subject naming of this service. Clone it freely: clones share the
/// connection.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = jetevents::client::Client::connect(jetevents::config::Config::from_env()?).await?;
/// let publisher = client.publisher();
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    config: Config,
    subjects: Subjects,
    violations: broadcast::Sender<PermissionViolation>,
    /// Connections lost so far: the consumer runner changes how it pulls
    /// after one.
    disconnects: Arc<AtomicU64>,
    metrics: Metrics,
    transport: Arc<dyn Transport>,
}

/// What the client's events are stored in.
enum Backend {
    Nats(Arc<NatsTransport>),
    #[cfg(feature = "testing")]
    Memory(crate::testing::MemoryJetStream),
}

/// A NATS-only operation asked of a client on the in-memory JetStream.
#[derive(Clone, Copy, Debug, thiserror::Error)]
#[error("{0} needs a NATS connection; this client runs on the in-memory JetStream")]
pub(crate) struct NeedsNats(pub(crate) &'static str);

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Pings more often than this would only load the server.
const MIN_PING_INTERVAL: Duration = Duration::from_millis(100);

/// Acks a pipelined publisher may await at once; our own window is below it.
pub(crate) const MAX_ACKS_IN_FLIGHT: usize = 65_536;

impl Client {
    /// Connects with `config`. Wrong credentials and TLS failures fail at once
    /// with a typed error instead of retrying forever; after the first
    /// connection, the client reconnects on its own.
    pub async fn connect(config: Config) -> Result<Client, ConnectError> {
        let subjects = Subjects::new(config.env.clone()).map_err(|err| {
            Error::with_source(
                ConnectErrorKind::InvalidConfig(
                    "JETEVENTS_ENV / env is not a valid subject token".into(),
                ),
                err,
            )
        })?;
        if config.servers.is_empty() {
            return Err(Error::new(ConnectErrorKind::InvalidConfig(
                "no server URL".into(),
            )));
        }

        let (violations, _) = broadcast::channel(64);
        let disconnects = Arc::new(AtomicU64::new(0));
        let mut options = async_nats::ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .ping_interval(config.ping_interval.max(MIN_PING_INTERVAL))
            .event_callback({
                let violations = violations.clone();
                let disconnects = disconnects.clone();
                move |event| {
                    let violations = violations.clone();
                    let disconnects = disconnects.clone();
                    async move { on_connection_event(event, &violations, &disconnects) }
                }
            });
        if let Some(name) = &config.name {
            options = options.name(name);
        }
        options = match &config.auth {
            Auth::None => options,
            Auth::Token(token) => options.token(token.expose().to_owned()),
            Auth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_owned())
            }
            Auth::NkeySeed(seed) => options.nkey(seed.expose().to_owned()),
            Auth::CredentialsFile(path) => options.credentials_file(path).await.map_err(|err| {
                Error::with_source(
                    ConnectErrorKind::InvalidConfig(format!(
                        "credentials file {} unreadable",
                        path.display()
                    )),
                    err,
                )
            })?,
        };
        if config.tls.required {
            options = options.require_tls(true);
        }
        if let Some(ca) = &config.tls.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&config.tls.client_cert, &config.tls.client_key) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }

        let servers = config
            .servers
            .iter()
            .map(|url| url.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| {
                Error::with_source(
                    ConnectErrorKind::InvalidConfig("invalid server URL".into()),
                    err,
                )
            })?;
        let nats = options.connect(servers).await.map_err(|err| {
            let kind = match err.kind() {
                async_nats::ConnectErrorKind::Authentication
                | async_nats::ConnectErrorKind::AuthorizationViolation => {
                    ConnectErrorKind::AuthenticationFailed
                }
                async_nats::ConnectErrorKind::Tls => ConnectErrorKind::Tls,
                async_nats::ConnectErrorKind::TimedOut => ConnectErrorKind::TimedOut,
                async_nats::ConnectErrorKind::ServerParse => {
                    ConnectErrorKind::InvalidConfig("invalid server URL".into())
                }
                // A failed TLS handshake (unknown CA, refused or missing
                // client certificate) reaches us as an I/O error of kind
                // InvalidData carrying rustls's error.
                async_nats::ConnectErrorKind::Io if is_tls_failure(&err) => ConnectErrorKind::Tls,
                _ => ConnectErrorKind::Unreachable,
            };
            Error::with_source(kind, err)
        })?;

        let jetstream = jetstream::ContextBuilder::new()
            .timeout(config.api_timeout)
            .max_ack_inflight(MAX_ACKS_IN_FLIGHT)
            .build(nats.clone());
        let transport = Arc::new(NatsTransport::new(nats, jetstream, config.ack_timeout));
        Ok(Client::assemble(
            Backend::Nats(transport.clone()),
            transport,
            config,
            subjects,
            violations,
            disconnects,
        ))
    }

    fn assemble(
        backend: Backend,
        transport: Arc<dyn Transport>,
        config: Config,
        subjects: Subjects,
        violations: broadcast::Sender<PermissionViolation>,
        disconnects: Arc<AtomicU64>,
    ) -> Client {
        let metrics = match &config.meter {
            Some(meter) => Metrics::new(meter),
            None => Metrics::global(),
        };
        Client {
            inner: Arc::new(Inner {
                backend,
                transport,
                config,
                subjects,
                violations,
                disconnects,
                metrics,
            }),
        }
    }

    /// A client whose events are stored in `jetstream`, an in-memory
    /// JetStream: for a service's unit tests (see [`crate::testing`]).
    /// `config` gives the environment, the source and the publish settings;
    /// its servers and credentials are not used.
    #[cfg(feature = "testing")]
    #[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
    pub fn in_memory(
        config: Config,
        jetstream: &crate::testing::MemoryJetStream,
    ) -> Result<Client, ConnectError> {
        let subjects = Subjects::new(config.env.clone()).map_err(|err| {
            Error::with_source(
                ConnectErrorKind::InvalidConfig(
                    "JETEVENTS_ENV / env is not a valid subject token".into(),
                ),
                err,
            )
        })?;
        Ok(Client::in_memory_with(config, subjects, jetstream))
    }

    #[cfg(feature = "testing")]
    pub(crate) fn in_memory_with(
        config: Config,
        subjects: Subjects,
        jetstream: &crate::testing::MemoryJetStream,
    ) -> Client {
        // Nothing reports permission violations in memory.
        let (violations, _) = broadcast::channel(1);
        Client::assemble(
            Backend::Memory(jetstream.clone()),
            Arc::new(jetstream.clone()),
            config,
            subjects,
            violations,
            Arc::new(AtomicU64::new(0)),
        )
    }

    /// The NATS side of this client, or `NeedsNats` naming `what` was
    /// asked of an in-memory one.
    #[cfg_attr(not(feature = "testing"), allow(unused_variables))]
    pub(crate) fn nats_transport(&self, what: &'static str) -> Result<&NatsTransport, NeedsNats> {
        match &self.inner.backend {
            Backend::Nats(nats) => Ok(nats),
            #[cfg(feature = "testing")]
            Backend::Memory(_) => Err(NeedsNats(what)),
        }
    }

    /// The in-memory JetStream this client runs on, if it does.
    #[cfg(feature = "testing")]
    pub(crate) fn memory(&self) -> Option<&crate::testing::MemoryJetStream> {
        match &self.inner.backend {
            Backend::Memory(memory) => Some(memory),
            Backend::Nats(_) => None,
        }
    }

    /// Where messages are stored: the seam the publisher and the consumers
    /// talk to.
    pub(crate) fn transport(&self) -> &dyn Transport {
        self.inner.transport.as_ref()
    }

    /// How many times the connection was lost since connecting.
    pub(crate) fn disconnects(&self) -> u64 {
        self.inner.disconnects.load(Ordering::Relaxed)
    }

    /// The underlying async-nats client, for what jetevents does not wrap
    /// (`None` for a client on the in-memory JetStream).
    pub fn nats(&self) -> Option<&crate::nats::Client> {
        self.nats_transport("the async-nats client")
            .ok()
            .map(|nats| &nats.nats)
    }

    /// The JetStream context (its timeout is the configured ack timeout;
    /// `None` for a client on the in-memory JetStream).
    pub fn jetstream(&self) -> Option<&crate::nats::jetstream::Context> {
        self.nats_transport("the JetStream context")
            .ok()
            .map(|nats| &nats.jetstream)
    }

    /// The configuration this client was made from.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Subject naming for this service's environment.
    pub fn subjects(&self) -> &Subjects {
        &self.inner.subjects
    }

    /// The metrics instruments of this client.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Permission violations the server reports from now on. The publisher
    /// uses this to turn a refused publish into `PermissionDenied` instead of
    /// waiting for an ack that never comes.
    pub fn permission_violations(&self) -> broadcast::Receiver<PermissionViolation> {
        self.inner.violations.subscribe()
    }

    /// Runs `work` (JetStream API requests), or stops it as soon as the server
    /// reports that this connection may not publish to a `$JS.API.` subject:
    /// such a request gets no reply, and waiting for its timeout would hide the
    /// real cause.
    pub(crate) async fn fail_fast_on_api_denial<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, PermissionViolation> {
        let mut violations = self.permission_violations();
        let denied = async {
            loop {
                match violations.recv().await {
                    Ok(v)
                        if v.operation == Operation::Publish
                            && v.subject.starts_with("$JS.API.")
                            // Message reads come from the dead-letter
                            // watchers and tools on this connection, never
                            // from the guarded work (provisioning, building
                            // consumers): their denial is theirs.
                            && !v.subject.starts_with("$JS.API.STREAM.MSG.GET.")
                            && !v.subject.starts_with("$JS.API.DIRECT.GET.") =>
                    {
                        return v
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
                }
            }
        };
        tokio::select! {
            biased;
            output = work => Ok(output),
            violation = denied => Err(violation),
        }
    }

    /// Flushes what is buffered and closes the connection.
    pub async fn close(self) {
        // Errors here mean the connection is gone already: nothing to flush.
        if let Ok(nats) = self.nats_transport("closing") {
            let _ = nats.nats.flush().await;
            let _ = nats.nats.drain().await;
        }
    }
}

/// Whether a connect error's cause is a TLS failure rather than the network.
fn is_tls_failure(err: &async_nats::ConnectError) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::InvalidData {
                return true;
            }
        }
        let text = cause.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("tls") || text.contains("handshake") {
            return true;
        }
        source = cause.source();
    }
    false
}

fn on_connection_event(
    event: async_nats::Event,
    violations: &broadcast::Sender<PermissionViolation>,
    disconnects: &AtomicU64,
) {
    match event {
        async_nats::Event::ServerError(async_nats::ServerError::Other(message)) => {
            if let Some(violation) = PermissionViolation::parse(&message) {
                tracing::warn!(
                    operation = ?violation.operation,
                    subject = %violation.subject,
                    "permission violation"
                );
                // No receiver means no publish is waiting on it: nothing to do.
                let _ = violations.send(violation);
            } else {
                tracing::warn!(error = %message, "server error");
            }
        }
        async_nats::Event::Disconnected => {
            disconnects.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("disconnected from NATS")
        }
        async_nats::Event::Connected => tracing::info!("connected to NATS"),
        async_nats::Event::LameDuckMode => tracing::warn!("NATS server entered lame duck mode"),
        other => tracing::debug!(event = %other, "NATS connection event"),
    }
}
