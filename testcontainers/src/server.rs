//! One NATS server: [`NatsServer`] and its builder.

use std::path::PathBuf;
use std::process::Child;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use testcontainers::{ContainerAsync, GenericImage};

use crate::config::{self, Auth, ClusterNode, LaunchParams, Tls, TlsFiles};
use crate::docker;
use crate::error::{HarnessError, HarnessErrorKind};
use crate::http;
use crate::process;

/// Env var choosing the backend: `docker`, `binary` or `external`.
pub const BACKEND_ENV: &str = "JETEVENTS_TEST_BACKEND";
/// Env var with the URL of an existing server for [`Backend::External`].
pub const NATS_URL_ENV: &str = "NATS_URL";
/// Env var with the monitoring URL of an external server (default `http://127.0.0.1:8222`).
pub const NATS_MONITOR_URL_ENV: &str = "NATS_MONITOR_URL";

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(25);

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
        let url = std::env::var(NATS_URL_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "nats://127.0.0.1:4222".to_string());
        let client_port = port_of(&url).unwrap_or(4222);
        let monitor = std::env::var(NATS_MONITOR_URL_ENV)
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "http://127.0.0.1:8222".to_string());
        let http_port = port_of(&monitor).unwrap_or(8222);
        Ok(NatsServer {
            backend: Backend::External,
            dir: None,
            launch: None,
            client_port,
            http_port,
            auth: self.auth,
            tls: self.tls,
            tls_files: None,
            jetstream: self.jetstream,
            clustered: false,
            runner: Runner::External { url },
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
            Backend::Binary => {
                let bin = process::find_binary()?;
                let log = dir.path().join("server.log");
                let child = process::spawn(&bin, &launch, &log).await?;
                Runner::Binary {
                    bin,
                    log,
                    child: Mutex::new(Some(child)),
                }
            }
            _ => {
                let container = docker::start(
                    &launch,
                    dir.path(),
                    docker::HostPorts {
                        client: client_port,
                        http: http_port,
                    },
                )
                .await
                .map_err(|e| HarnessError::with_source(HarnessErrorKind::Start, "container", e))?;
                Runner::Docker {
                    id: container.id().to_string(),
                    container: Some(Box::new(container)),
                }
            }
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

fn port_of(url: &str) -> Option<u16> {
    url.rsplit(':').next()?.trim_end_matches('/').parse().ok()
}

/// Picks `n` distinct free ports on 127.0.0.1 (all listeners are held until every
/// port is chosen so the OS cannot hand one out twice).
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>, HarnessError> {
    let mut listeners = Vec::with_capacity(n);
    for _ in 0..n {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| HarnessError::with_source(HarnessErrorKind::Start, "free port", e))?;
        listeners.push(l);
    }
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(|e| HarnessError::with_source(HarnessErrorKind::Start, "free port", e))
        })
        .collect()
}

enum Runner {
    Binary {
        bin: PathBuf,
        log: PathBuf,
        child: Mutex<Option<Child>>,
    },
    Docker {
        id: String,
        container: Option<Box<ContainerAsync<GenericImage>>>,
    },
    External {
        url: String,
    },
}

/// A real nats-server for one test: random ports on 127.0.0.1, a temporary file
/// store, killed and cleaned up on drop.
///
/// ```no_run
/// # async fn f() -> Result<(), jetevents_testcontainers::HarnessError> {
/// let mut server = jetevents_testcontainers::NatsServer::start().await?;
/// // connect a client to server.url() ...
/// server.restart().await?; // same ports, same store
/// # Ok(()) }
/// ```
pub struct NatsServer {
    backend: Backend,
    // Holds config, certificates, log and store; removed on drop.
    dir: Option<tempfile::TempDir>,
    launch: Option<config::Launch>,
    client_port: u16,
    http_port: u16,
    auth: Auth,
    tls: Tls,
    tls_files: Option<TlsFiles>,
    jetstream: bool,
    clustered: bool,
    runner: Runner,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("backend", &self.backend)
            .field("url", &self.url())
            .field("monitor_url", &self.monitor_url())
            .field("pid", &self.pid())
            .field("container_id", &self.container_id())
            .finish_non_exhaustive()
    }
}

impl NatsServer {
    /// Starts a JetStream server with default options on the backend from the
    /// environment.
    pub async fn start() -> Result<NatsServer, HarnessError> {
        Self::builder().start().await
    }

    /// A builder for non-default options.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// The client URL: `nats://127.0.0.1:PORT`, or `tls://...` with TLS.
    pub fn url(&self) -> String {
        match &self.runner {
            Runner::External { url } => url.clone(),
            _ => {
                let scheme = if self.tls == Tls::None { "nats" } else { "tls" };
                format!("{scheme}://127.0.0.1:{}", self.client_port)
            }
        }
    }

    /// The client port on 127.0.0.1.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The monitoring URL: `http://127.0.0.1:MPORT`.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// The monitoring port on 127.0.0.1.
    pub fn monitor_port(&self) -> u16 {
        self.http_port
    }

    /// Where this server runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The authentication the server requires.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The generated certificates, when TLS is on.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls_files.as_ref()
    }

    /// The CA certificate to trust, when TLS is on.
    pub fn ca_cert_path(&self) -> Option<PathBuf> {
        self.tls_files.as_ref().map(TlsFiles::ca_cert_path)
    }

    /// The client certificate for mutual TLS, when TLS is on.
    pub fn client_cert_path(&self) -> Option<PathBuf> {
        self.tls_files.as_ref().map(TlsFiles::client_cert_path)
    }

    /// The client key for mutual TLS, when TLS is on.
    pub fn client_key_path(&self) -> Option<PathBuf> {
        self.tls_files.as_ref().map(TlsFiles::client_key_path)
    }

    /// The directory holding config, certificates, log and store (none for
    /// an external server).
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// The server process id (binary backend, while running).
    pub fn pid(&self) -> Option<u32> {
        match &self.runner {
            Runner::Binary { child, .. } => {
                child.lock().ok().and_then(|c| c.as_ref().map(|c| c.id()))
            }
            _ => None,
        }
    }

    /// The container id (docker backend).
    pub fn container_id(&self) -> Option<String> {
        match &self.runner {
            Runner::Docker { id, .. } => Some(id.clone()),
            _ => None,
        }
    }

    /// The server's log so far (binary backend; empty otherwise), for debugging.
    pub fn log(&self) -> String {
        match &self.runner {
            Runner::Binary { log, .. } => std::fs::read_to_string(log).unwrap_or_default(),
            _ => String::new(),
        }
    }

    fn unsupported(&self, what: &str) -> HarnessError {
        HarnessError::new(
            HarnessErrorKind::Unsupported,
            format!("{what} is not possible on an external server"),
        )
    }

    /// Whether the server process/container is running.
    pub async fn is_running(&self) -> bool {
        match &self.runner {
            Runner::Binary { child, .. } => match child.lock() {
                Ok(mut guard) => match guard.as_mut() {
                    Some(c) => matches!(c.try_wait(), Ok(None)),
                    None => false,
                },
                Err(_) => false,
            },
            Runner::Docker { container, .. } => match container {
                Some(c) => c.is_running().await.unwrap_or(false),
                None => false,
            },
            Runner::External { .. } => {
                tokio::net::TcpStream::connect(("127.0.0.1", self.client_port))
                    .await
                    .is_ok()
            }
        }
    }

    /// Waits until the server is ready: `/healthz?js-enabled-only=true` answers 200
    /// (plain `/healthz` without JetStream, and for a cluster node, where it also
    /// means the node is current with the cluster). Fails after 30 s or when the
    /// server exits.
    pub async fn wait_ready(&self) -> Result<(), HarnessError> {
        let path = if self.clustered || !self.jetstream {
            "/healthz"
        } else {
            "/healthz?js-enabled-only=true"
        };
        self.wait_ready_path(path).await
    }

    async fn wait_ready_path(&self, path: &str) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        if let Runner::External { .. } = self.runner {
            while Instant::now() < deadline {
                if self.is_running().await {
                    return Ok(());
                }
                tokio::time::sleep(POLL).await;
            }
            return Err(HarnessError::new(
                HarnessErrorKind::NotReady,
                format!("nothing answers at {}", self.url()),
            ));
        }
        let mut last;
        loop {
            match http::get(self.http_port, path).await {
                Ok((200, _)) => return Ok(()),
                Ok((status, body)) => last = format!("{status} {body}"),
                Err(err) => last = err.to_string(),
            }
            if !self.is_running().await {
                return Err(HarnessError::new(
                    HarnessErrorKind::Start,
                    format!(
                        "nats-server exited before it was ready; log:\n{}",
                        self.log_tail()
                    ),
                ));
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::new(
                    HarnessErrorKind::NotReady,
                    format!("{path} still answers {last}"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn log_tail(&self) -> String {
        match &self.runner {
            Runner::Binary { log, .. } => process::log_tail(log),
            _ => String::new(),
        }
    }

    /// Kills the server at once (SIGKILL / `docker kill`), without a clean shutdown.
    pub async fn kill(&mut self) -> Result<(), HarnessError> {
        match &mut self.runner {
            Runner::Binary { child, .. } => {
                let taken = child.get_mut().ok().and_then(Option::take);
                if let Some(mut c) = taken {
                    kill_child(&mut c);
                }
                Ok(())
            }
            Runner::Docker { id, .. } => {
                let id = id.clone();
                if self.is_running().await {
                    docker::cli(&["kill", &id]).await?;
                }
                self.wait_for_exit(Duration::from_secs(30)).await
            }
            Runner::External { .. } => Err(self.unsupported("kill")),
        }
    }

    /// Stops the server gracefully (SIGTERM / `docker stop`) and waits for it to exit.
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        match &self.runner {
            Runner::Binary { child, .. } => {
                let signalled = match child.lock() {
                    Ok(guard) => match guard.as_ref() {
                        Some(c) => process::signal(c, libc::SIGTERM).map(|_| true),
                        None => Ok(false),
                    },
                    Err(_) => Ok(false),
                };
                if signalled? {
                    self.wait_for_exit(Duration::from_secs(30)).await?;
                }
                Ok(())
            }
            Runner::Docker { container, .. } => {
                if let Some(c) = container {
                    c.stop_with_timeout(Some(30)).await.map_err(|e| {
                        HarnessError::with_source(HarnessErrorKind::Docker, "docker stop", e)
                    })?;
                }
                Ok(())
            }
            Runner::External { .. } => Err(self.unsupported("stop")),
        }
    }

    /// Starts the server again on the same ports with the same file store (stopping
    /// it gracefully first if it still runs) and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        if let Runner::External { .. } = self.runner {
            return Err(self.unsupported("restart"));
        }
        if self.is_running().await {
            self.stop().await?;
        }
        match &self.runner {
            Runner::Binary { bin, log, child } => {
                let launch = self.launch.as_ref().ok_or_else(|| {
                    HarnessError::new(HarnessErrorKind::Start, "no launch configuration")
                })?;
                let new = process::spawn(bin, launch, log).await?;
                if let Ok(mut guard) = child.lock() {
                    if let Some(mut old) = guard.replace(new) {
                        kill_child(&mut old);
                    }
                }
            }
            Runner::Docker { container, .. } => {
                if let Some(c) = container {
                    c.start().await.map_err(|e| {
                        HarnessError::with_source(HarnessErrorKind::Docker, "docker start", e)
                    })?;
                }
            }
            Runner::External { .. } => {}
        }
        self.wait_ready().await
    }

    /// Puts the server into lame duck mode (SIGUSR2, as `nats-server --signal ldm`
    /// does / `docker kill -s SIGUSR2`): it stops accepting clients, tells connected
    /// ones (they see a lame duck event), closes them over the lame duck duration
    /// (30 s, the server's minimum; grace period 1 s) and exits.
    pub async fn lame_duck(&mut self) -> Result<(), HarnessError> {
        match &self.runner {
            Runner::Binary { child, .. } => match child.lock() {
                Ok(guard) => match guard.as_ref() {
                    Some(c) => process::signal(c, libc::SIGUSR2),
                    None => Err(HarnessError::new(
                        HarnessErrorKind::Io,
                        "server not running",
                    )),
                },
                Err(_) => Err(HarnessError::new(HarnessErrorKind::Io, "lock poisoned")),
            },
            Runner::Docker { id, .. } => docker::cli(&["kill", "-s", "SIGUSR2", id])
                .await
                .map(|_| ()),
            Runner::External { .. } => Err(self.unsupported("lame duck")),
        }
    }

    /// Waits until the server process/container has exited, up to `timeout`.
    pub async fn wait_for_exit(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        while self.is_running().await {
            if Instant::now() >= deadline {
                return Err(HarnessError::new(
                    HarnessErrorKind::Io,
                    format!("server still running after {timeout:?}"),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    /// The name the server was started with (as reported by the monitoring endpoint).
    pub async fn server_name(&self) -> Result<String, HarnessError> {
        let varz = http::get_json(self.http_port, "/varz").await?;
        varz["server_name"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| {
                HarnessError::new(HarnessErrorKind::Monitoring, "no server_name in /varz")
            })
    }

    /// A monitoring endpoint's JSON, e.g. `/jsz` or `/varz`.
    pub async fn monitor_json(&self, path: &str) -> Result<serde_json::Value, HarnessError> {
        http::get_json(self.http_port, path).await
    }
}

fn kill_child(child: &mut Child) {
    // Already exited is fine; the wait reaps it either way.
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        match &mut self.runner {
            Runner::Binary { child, .. } => {
                if let Some(mut c) = child.get_mut().ok().and_then(Option::take) {
                    kill_child(&mut c);
                }
            }
            Runner::Docker { id, container } => {
                if let Some(c) = container.take() {
                    if tokio::runtime::Handle::try_current().is_ok() {
                        // testcontainers removes it (blocking until done).
                        drop(*c);
                    } else {
                        // Outside a runtime testcontainers' drop would panic: remove it
                        // with the CLI and let the handle go without its async drop.
                        let _ = std::process::Command::new("docker")
                            .args(["rm", "-f", "-v", id.as_str()])
                            .stdout(std::process::Stdio::null())
                            .stderr(std::process::Stdio::null())
                            .status();
                        std::mem::forget(*c);
                    }
                }
            }
            Runner::External { .. } => {}
        }
        // The store is root-owned inside docker; TempDir's drop removes it (we are
        // the same user on the binary backend).
        drop(self.dir.take());
    }
}
