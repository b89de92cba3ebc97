//! One NATS server: [`NatsServer`], started by [`NatsServerBuilder`] on one of
//! three backends, each in its own module (a local process, a container, or a
//! server that runs already).

mod binary;
mod builder;
mod docker;
mod external;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::config::{self, Auth, Tls, TlsFiles};
use crate::error::{HarnessError, HarnessErrorKind};
use crate::http;

use binary::BinaryServer;
use docker::DockerServer;
use external::ExternalServer;

pub use builder::{Backend, NatsServerBuilder};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(25);

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

/// The backend-specific half of a [`NatsServer`].
enum Runner {
    Binary(BinaryServer),
    Docker(DockerServer),
    External(ExternalServer),
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
    // Dropped first (fields drop in order): the process or container must be
    // gone before its store is removed.
    runner: Runner,
    backend: Backend,
    // Holds config, certificates, log and store; removed on drop (the store
    // is root-owned inside docker; we are the same user on the binary backend).
    dir: Option<tempfile::TempDir>,
    launch: Option<config::Launch>,
    client_port: u16,
    http_port: u16,
    auth: Auth,
    tls: Tls,
    tls_files: Option<TlsFiles>,
    jetstream: bool,
    clustered: bool,
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
            Runner::External(external) => external.url.clone(),
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
            Runner::Binary(binary) => binary.pid(),
            _ => None,
        }
    }

    /// The container id (docker backend).
    pub fn container_id(&self) -> Option<String> {
        match &self.runner {
            Runner::Docker(container) => Some(container.id().to_owned()),
            _ => None,
        }
    }

    /// The server's log so far (binary backend; empty otherwise), for debugging.
    pub fn log(&self) -> String {
        match &self.runner {
            Runner::Binary(binary) => binary.log(),
            _ => String::new(),
        }
    }

    fn unsupported(&self, what: &str) -> HarnessError {
        HarnessError::new(
            HarnessErrorKind::Unsupported,
            format!("{what} is not possible on an external server"),
        )
    }

    /// Whether the server process/container is running (a paused one is).
    pub async fn is_running(&self) -> bool {
        match &self.runner {
            Runner::Binary(binary) => binary.is_running(),
            Runner::Docker(container) => container.is_running().await,
            Runner::External(external) => external.is_running().await,
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
        if let Runner::External(_) = self.runner {
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
                let log = match &self.runner {
                    Runner::Binary(binary) => binary.log_tail(),
                    _ => String::new(),
                };
                return Err(HarnessError::new(
                    HarnessErrorKind::Start,
                    format!("nats-server exited before it was ready; log:\n{log}"),
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

    /// Kills the server at once (SIGKILL / `docker kill`), without a clean shutdown.
    pub async fn kill(&mut self) -> Result<(), HarnessError> {
        match &mut self.runner {
            Runner::Binary(binary) => {
                binary.kill();
                Ok(())
            }
            Runner::Docker(container) => {
                if container.is_running().await {
                    container.cli("kill").await?;
                }
                self.wait_for_exit(Duration::from_secs(30)).await
            }
            Runner::External(_) => Err(self.unsupported("kill")),
        }
    }

    /// Stops the server gracefully (SIGTERM / `docker stop`) and waits for it to exit.
    pub async fn stop(&mut self) -> Result<(), HarnessError> {
        match &self.runner {
            Runner::Binary(binary) => {
                if binary.signal(libc::SIGTERM)? {
                    self.wait_for_exit(Duration::from_secs(30)).await?;
                }
                Ok(())
            }
            Runner::Docker(container) => container.stop().await,
            Runner::External(_) => Err(self.unsupported("stop")),
        }
    }

    /// Starts the server again on the same ports with the same file store (stopping
    /// it gracefully first if it still runs) and waits until it is ready.
    pub async fn restart(&mut self) -> Result<(), HarnessError> {
        if let Runner::External(_) = self.runner {
            return Err(self.unsupported("restart"));
        }
        if self.is_running().await {
            self.stop().await?;
        }
        match &self.runner {
            Runner::Binary(binary) => {
                let launch = self.launch.as_ref().ok_or_else(|| {
                    HarnessError::new(HarnessErrorKind::Start, "no launch configuration")
                })?;
                binary.respawn(launch).await?;
            }
            Runner::Docker(container) => container.start_again().await?,
            Runner::External(_) => {}
        }
        self.wait_ready().await
    }

    /// Puts the server into lame duck mode (SIGUSR2, as `nats-server --signal ldm`
    /// does / `docker kill -s SIGUSR2`): it stops accepting clients, tells connected
    /// ones (they see a lame duck event), closes them over the lame duck duration
    /// (30 s, the server's minimum; grace period 1 s) and exits.
    pub async fn lame_duck(&mut self) -> Result<(), HarnessError> {
        match &self.runner {
            Runner::Binary(binary) => binary.signal_running(libc::SIGUSR2),
            Runner::Docker(container) => container.signal("SIGUSR2").await,
            Runner::External(_) => Err(self.unsupported("lame duck")),
        }
    }

    /// Pauses the server process (SIGSTOP / `docker pause`) and returns once
    /// it is stopped: it keeps its sockets open but answers nothing, as a
    /// process stalled by a long GC, swapping or a frozen VM. Peers and clients notice only through their
    /// own timeouts. [`NatsServer::resume`] lets it carry on where it stopped.
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), jetevents_testcontainers::HarnessError> {
    /// let server = jetevents_testcontainers::NatsServer::start().await?;
    /// server.pause().await?;
    /// assert!(server.is_running().await); // paused, not gone
    /// server.resume().await?;
    /// # Ok(()) }
    /// ```
    pub async fn pause(&self) -> Result<(), HarnessError> {
        match &self.runner {
            Runner::Binary(binary) => binary.set_stopped(true).await,
            Runner::Docker(container) => container.cli("pause").await,
            Runner::External(_) => Err(self.unsupported("pause")),
        }
    }

    /// Resumes a server paused by [`NatsServer::pause`] (SIGCONT / `docker unpause`).
    pub async fn resume(&self) -> Result<(), HarnessError> {
        match &self.runner {
            Runner::Binary(binary) => binary.set_stopped(false).await,
            Runner::Docker(container) => container.cli("unpause").await,
            Runner::External(_) => Err(self.unsupported("resume")),
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
