//! How a server is chosen and configured: [`Backend`] and [`NatsServerBuilder`].

use crate::config::{self, Auth, ClusterNode, LaunchParams, Tls};
use crate::docker;
use crate::error::{HarnessError, HarnessErrorKind};

use super::binary::BinaryServer;
use super::docker::DockerServer;
use super::external::ExternalServer;
use super::{free_ports, NatsServer, Runner};

/// Env var choosing the backend: `docker`, `binary` or `external`.
pub const BACKEND_ENV: &str = "JETEVENTS_TEST_BACKEND";

/// Where the server runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A container started through testcontainers-rs.
    Docker,
    /// A local `nats-server` process.
    Binary,
    /// An already running server at `$NATS_URL`; it cannot be killed or restarted.
    External,
}

impl Backend {
    /// The backend named by `$JETEVENTS_TEST_BACKEND`; when unset, [`Backend::Docker`]
    /// if a docker engine answers and has the image, else [`Backend::Binary`] (with a
    /// note on stderr), or an error when [`crate::docker_required`].
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), jetevents_testcontainers::HarnessError> {
    /// let backend = jetevents_testcontainers::Backend::from_env().await?;
    /// println!("tests run on {backend:?}");
    /// # Ok(()) }
    /// ```
    pub async fn from_env() -> Result<Self, HarnessError> {
        match std::env::var(BACKEND_ENV).ok().as_deref() {
            Some("docker") => Ok(Self::Docker),
            Some("binary") => Ok(Self::Binary),
            Some("external") => Ok(Self::External),
            None | Some("") => {
                if docker::docker_available().await {
                    Ok(Self::Docker)
                } else if crate::docker_required() {
                    // CI promised docker: falling back would pass without
                    // testing the backend it asked for.
                    Err(HarnessError::new(
                        HarnessErrorKind::Docker,
                        format!(
                            "{}=1 but no docker engine answers or the image is missing",
                            crate::REQUIRE_DOCKER_ENV
                        ),
                    ))
                } else {
                    eprintln!(
                        "jetevents-testcontainers: docker skipped (no engine or image): nats-server binary backend"
                    );
                    Ok(Self::Binary)
                }
            }
            Some(other) => Err(HarnessError::new(
                HarnessErrorKind::Config,
                format!("{BACKEND_ENV}={other}: expected docker, binary or external"),
            )),
        }
    }
}

/// Options for a server; get one from [`NatsServer::builder`].
///
/// ```no_run
/// # async fn f() -> Result<(), jetevents_testcontainers::HarnessError> {
/// use jetevents_testcontainers::{Auth, Backend, NatsServer, Tls};
/// let server = NatsServer::builder()
///     .backend(Backend::Binary)
///     .auth(Auth::Token("s3cret".into()))
///     .tls(Tls::Tls)
///     .max_payload(64 * 1024)
///     .start()
///     .await?;
/// println!("{}", server.url());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    backend: Option<Backend>,
    auth: Auth,
    tls: Tls,
    jetstream: bool,
    max_payload: u32,
    sync_interval: String,
    server_name: Option<String>,
    cluster: Option<ClusterNode>,
    ports: Option<(u16, u16)>,
}

/// nats-server's own default.
const DEFAULT_SYNC_INTERVAL: &str = "2m";

impl Default for NatsServerBuilder {
    fn default() -> Self {
        Self {
            backend: None,
            auth: Auth::None,
            tls: Tls::None,
            jetstream: true,
            max_payload: 1024 * 1024,
            sync_interval: DEFAULT_SYNC_INTERVAL.to_owned(),
            server_name: None,
            cluster: None,
            ports: None,
        }
    }
}

impl NatsServerBuilder {
    /// Run on this backend instead of the one from the environment.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = Some(backend);
        self
    }
    /// Client authentication (default none).
    pub fn auth(mut self, auth: Auth) -> Self {
        self.auth = auth;
        self
    }
    /// TLS for client connections (default none).
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = tls;
        self
    }
    /// Enable JetStream with a file store (default true).
    pub fn jetstream(mut self, enabled: bool) -> Self {
        self.jetstream = enabled;
        self
    }
    /// Largest message payload in bytes (default 1 MiB).
    pub fn max_payload(mut self, bytes: u32) -> Self {
        self.max_payload = bytes;
        self
    }
    /// How often JetStream's file store is fsynced: a duration such as
    /// `"10s"`, or `"always"` to sync every write before acking it (default
    /// the server's own, `"2m"`).
    pub fn sync_interval(mut self, interval: impl Into<String>) -> Self {
        self.sync_interval = interval.into();
        self
    }
    /// Server name (default `jetevents-<client port>`).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }
    pub(crate) fn cluster(mut self, node: ClusterNode, client: u16, http: u16) -> Self {
        self.cluster = Some(node);
        self.ports = Some((client, http));
        self
    }

    /// Starts the server and waits until it is ready.
    pub async fn start(self) -> Result<NatsServer, HarnessError> {
        let backend = match self.backend {
            Some(b) => b,
            None => Backend::from_env().await?,
        };
        match backend {
            Backend::External => self.start_external(),
            Backend::Binary | Backend::Docker => {
                // A port picked free may be taken before the server binds it.
                let attempts = if self.ports.is_some() { 1 } else { 3 };
                let mut last = None;
                for _ in 0..attempts {
                    match self.clone().start_once(backend).await {
                        Ok(server) => return Ok(server),
                        Err(err) if err.kind() == HarnessErrorKind::Start => last = Some(err),
                        Err(err) => return Err(err),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    HarnessError::new(HarnessErrorKind::Start, "no start attempt made")
                }))
            }
        }
    }

    fn start_external(self) -> Result<NatsServer, HarnessError> {
        if !matches!(self.auth, Auth::None) || self.tls != Tls::None || self.cluster.is_some() {
            return Err(HarnessError::new(
                HarnessErrorKind::Unsupported,
                "an external server cannot be configured with auth, TLS or clustering",
            ));
        }
        let external = ExternalServer::from_env();
        Ok(NatsServer {
            backend: Backend::External,
            dir: None,
            launch: None,
            client_port: external.client_port,
            http_port: external.http_port,
            auth: self.auth,
            tls: self.tls,
            tls_files: None,
            jetstream: self.jetstream,
            clustered: false,
            runner: Runner::External(external),
        })
    }

    async fn start_once(self, backend: Backend) -> Result<NatsServer, HarnessError> {
        if backend == Backend::Docker
            && self.cluster.is_some()
            && !docker::docker_host_network().await
        {
            return Err(HarnessError::new(
                HarnessErrorKind::Unsupported,
                "a docker cluster needs JETEVENTS_DOCKER_NETWORK=host (nodes route over 127.0.0.1)",
            ));
        }
        crate::process::reap_orphaned_dirs_once();
        let dir = tempfile::Builder::new()
            .prefix(&crate::process::store_dir_prefix())
            .tempdir()
            .map_err(|e| HarnessError::with_source(HarnessErrorKind::Config, "temp dir", e))?;
        let (client_port, http_port) = match self.ports {
            Some(p) => p,
            None => {
                let p = free_ports(2)?;
                (p[0], p[1])
            }
        };
        let tls_files = match self.tls {
            Tls::None => None,
            _ => Some(config::generate_certificates(dir.path())?),
        };
        let mapped = backend == Backend::Docker && !docker::docker_host_network().await;
        let (listen_host, inner_client, inner_http) = if mapped {
            ("0.0.0.0", 4222, 8222)
        } else {
            ("127.0.0.1", client_port, http_port)
        };
        let server_name = self
            .server_name
            .clone()
            .unwrap_or_else(|| format!("jetevents-{client_port}"));
        let launch = config::prepare(&LaunchParams {
            dir: dir.path(),
            server_name: &server_name,
            listen_host,
            client_port: inner_client,
            http_port: inner_http,
            max_payload: self.max_payload,
            sync_interval: &self.sync_interval,
            jetstream: self.jetstream,
            auth: &self.auth,
            tls: tls_files.as_ref().map(|f| (self.tls, f)),
            cluster: self.cluster.as_ref(),
        })?;
        let runner = match backend {
            Backend::Binary => Runner::Binary(BinaryServer::spawn(&launch, dir.path()).await?),
            _ => Runner::Docker(
                DockerServer::start(
                    &launch,
                    dir.path(),
                    docker::HostPorts {
                        client: client_port,
                        http: http_port,
                    },
                )
                .await?,
            ),
        };
        let server = NatsServer {
            backend,
            dir: Some(dir),
            launch: Some(launch),
            client_port,
            http_port,
            auth: self.auth,
            tls: self.tls,
            tls_files,
            jetstream: self.jetstream,
            clustered: self.cluster.is_some(),
            runner,
        };
        // A new cluster node cannot be fully healthy before its peers run.
        let path = if server.jetstream {
            "/healthz?js-enabled-only=true"
        } else {
            "/healthz"
        };
        server.wait_ready_path(path).await?;
        Ok(server)
    }
}
