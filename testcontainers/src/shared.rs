//! One server per test process, for tests that do not need their own.

use std::sync::OnceLock;

use tokio::sync::OnceCell;

use crate::error::{HarnessError, HarnessErrorKind};
use crate::server::{Backend, NatsServer};

/// Connection details of the process-wide server from [`shared`]. It cannot be
/// killed or restarted: other tests use it at the same time.
#[derive(Debug, Clone)]
pub struct SharedServer {
    url: String,
    client_port: u16,
    monitor_url: String,
    backend: Backend,
    dir: Option<std::path::PathBuf>,
}

impl SharedServer {
    /// The client URL.
    pub fn url(&self) -> String {
        self.url.clone()
    }
    /// The client port on 127.0.0.1.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }
    /// The monitoring URL.
    pub fn monitor_url(&self) -> String {
        self.monitor_url.clone()
    }
    /// Where it runs.
    pub fn backend(&self) -> Backend {
        self.backend
    }
    /// Its config, log and store directory, removed when the process exits.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_deref()
    }
}

enum Cleanup {
    Pid(u32),
    Container(String),
    Nothing,
}

/// What to stop at exit, and the server's dir to remove after it.
static CLEANUP: OnceLock<(Cleanup, Option<std::path::PathBuf>)> = OnceLock::new();

extern "C" fn cleanup_at_exit() {
    // Statics are never dropped: remove the shared server when the test binary exits.
    let Some((cleanup, dir)) = CLEANUP.get() else {
        return;
    };
    match cleanup {
        Cleanup::Pid(pid) => {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(*pid as libc::pid_t, libc::SIGKILL);
            }
        }
        Cleanup::Container(id) => {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v", id.as_str()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        Cleanup::Nothing => {}
    }
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// The process-wide server (JetStream, default options, backend from the
/// environment), started on first use. Tests that only publish and consume on their
/// own subjects and streams can share it instead of starting their own.
///
/// It lives on a dedicated thread with its own runtime, so it outlives the
/// `#[tokio::test]` runtime that first asked for it; it is removed when the process
/// exits, with its dir (atexit; for processes that abort, the binary dies with its
/// parent, and containers and dirs are reaped by the next test process).
///
/// # Panics
///
/// When the server cannot be started (the test cannot run without it); use
/// [`try_shared`] to handle that.
///
/// ```no_run
/// # async fn f() {
/// let server = jetevents_testcontainers::shared().await;
/// println!("{}", server.url());
/// # }
/// ```
#[allow(clippy::panic)] // A test helper: failing to start the server fails the test.
pub async fn shared() -> &'static SharedServer {
    match try_shared().await {
        Ok(server) => server,
        Err(err) => panic!("jetevents-testcontainers: shared server did not start: {err}"),
    }
}

/// Like [`shared`], returning the start failure instead of panicking.
///
/// ```no_run
/// # async fn f() -> Result<(), jetevents_testcontainers::HarnessError> {
/// let server = jetevents_testcontainers::try_shared().await?;
/// println!("{}", server.url());
/// # Ok(()) }
/// ```
pub async fn try_shared() -> Result<&'static SharedServer, HarnessError> {
    static SHARED: OnceCell<SharedServer> = OnceCell::const_new();
    SHARED.get_or_try_init(start_shared).await
}

async fn start_shared() -> Result<SharedServer, HarnessError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("jetevents-shared-nats".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(HarnessError::with_source(
                        HarnessErrorKind::Start,
                        "runtime for the shared server",
                        e,
                    )));
                    return;
                }
            };
            let server = match runtime.block_on(NatsServer::start()) {
                Ok(server) => server,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let cleanup = match (server.pid(), server.container_id()) {
                (Some(pid), _) => Cleanup::Pid(pid),
                (_, Some(id)) => Cleanup::Container(id),
                _ => Cleanup::Nothing,
            };
            let dir = server.dir().map(std::path::Path::to_path_buf);
            if CLEANUP.set((cleanup, dir.clone())).is_ok() {
                // SAFETY: registers a plain extern "C" fn with no arguments.
                unsafe {
                    libc::atexit(cleanup_at_exit);
                }
            }
            let info = SharedServer {
                url: server.url(),
                client_port: server.client_port(),
                monitor_url: server.monitor_url(),
                backend: server.backend(),
                dir,
            };
            if tx.send(Ok(info)).is_err() {
                return;
            }
            // Keep the server (and the runtime its container handle belongs to) for
            // the life of the process.
            let _keep = (server, runtime);
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| {
            HarnessError::with_source(HarnessErrorKind::Start, "shared server thread", e)
        })?;
    rx.await
        .map_err(|_| HarnessError::new(HarnessErrorKind::Start, "shared server thread died"))?
}
