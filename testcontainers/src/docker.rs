//! The docker backend: nats-server in a container, through testcontainers-rs.

use std::time::Duration;

use testcontainers::core::{ContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::OnceCell;

use crate::config::Launch;
use crate::error::{HarnessError, HarnessErrorKind};

/// Image env var.
pub(crate) const IMAGE_ENV: &str = "JETEVENTS_NATS_IMAGE";
/// Network env var.
pub(crate) const NETWORK_ENV: &str = "JETEVENTS_DOCKER_NETWORK";
/// Default image: the official one (its entrypoint is nats-server, like ours).
pub(crate) const DEFAULT_IMAGE: &str = "nats:2.15.1";
/// Label put on every container; its value is the pid of the test process.
pub const CONTAINER_LABEL: &str = "jetevents-testcontainers";

/// The image to run (`$JETEVENTS_NATS_IMAGE` or `nats:2.15.1`).
pub(crate) fn image() -> String {
    std::env::var(IMAGE_ENV)
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_string())
}

/// Whether containers share the host's network: `JETEVENTS_DOCKER_NETWORK=host`;
/// any other value means port mapping; unset means port mapping unless the engine
/// has no `bridge` network (dockerd started with `--bridge=none`), where mapping
/// cannot work.
///
/// ```no_run
/// # async fn f() {
/// if jetevents_testcontainers::docker_host_network().await {
///     println!("containers use host networking on 127.0.0.1");
/// }
/// # }
/// ```
pub async fn docker_host_network() -> bool {
    match std::env::var(NETWORK_ENV) {
        Ok(v) if !v.is_empty() => v == "host",
        _ => {
            static NO_BRIDGE: OnceCell<bool> = OnceCell::const_new();
            *NO_BRIDGE
                .get_or_init(|| async {
                    cli(&["network", "inspect", "--format", "{{.Name}}", "bridge"])
                        .await
                        .is_err()
                })
                .await
        }
    }
}

fn split_image(image: &str) -> (String, String) {
    let slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[slash..].rfind(':') {
        Some(i) => (
            image[..slash + i].to_string(),
            image[slash + i + 1..].to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

fn docker_err(
    what: impl Into<String>,
    e: impl std::error::Error + Send + Sync + 'static,
) -> HarnessError {
    HarnessError::with_source(HarnessErrorKind::Docker, what, e)
}

/// Runs the docker CLI (for what testcontainers does not offer: signals, label
/// queries) and returns stdout.
pub(crate) async fn cli(args: &[&str]) -> Result<String, HarnessError> {
    let run = tokio::process::Command::new("docker")
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .map_err(|e| docker_err(format!("docker {} timed out", args.join(" ")), e))?
        .map_err(|e| docker_err(format!("docker {}", args.join(" ")), e))?;
    if !out.status.success() {
        return Err(HarnessError::new(
            HarnessErrorKind::Docker,
            format!(
                "docker {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a docker engine answers and the image is present locally. Cached for the
/// process. An absent image counts as unavailable because pulling may be impossible
/// (no registry) and would be slow anyway.
pub async fn docker_available() -> bool {
    static AVAILABLE: OnceCell<bool> = OnceCell::const_new();
    *AVAILABLE
        .get_or_init(|| async {
            cli(&["version", "--format", "{{.Server.Version}}"])
                .await
                .is_ok()
                && cli(&["image", "inspect", "--format", "{{.Id}}", &image()])
                    .await
                    .is_ok()
        })
        .await
}

/// Removes containers labelled by test processes that no longer exist (a poor man's
/// Ryuk: a test process that aborted could not remove its containers). Returns how
/// many were removed. Runs automatically once per process before the first container
/// starts.
pub async fn reap_orphaned_containers() -> Result<usize, HarnessError> {
    let filter = format!("label={CONTAINER_LABEL}");
    let format = format!("{{{{.ID}}}} {{{{.Label \"{CONTAINER_LABEL}\"}}}}");
    let listing = cli(&["ps", "-a", "--filter", &filter, "--format", &format]).await?;
    let mut removed = 0;
    for line in listing.lines() {
        let mut parts = line.split_whitespace();
        let (Some(id), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid != std::process::id() && !crate::process::pid_alive(pid) {
            cli(&["rm", "-f", "-v", id]).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

async fn reap_once() {
    static REAPED: OnceCell<()> = OnceCell::const_new();
    REAPED
        .get_or_init(|| async {
            if let Err(err) = reap_orphaned_containers().await {
                eprintln!("jetevents-testcontainers: reaping old containers failed: {err}");
            }
        })
        .await;
}

/// Ports the server listens on, as seen from the host.
#[derive(Debug, Clone, Copy)]
pub(crate) struct HostPorts {
    pub(crate) client: u16,
    pub(crate) http: u16,
}

/// Starts a container running nats-server with `launch`. The temp dir is bind
/// mounted at the same path, so config, certificate and store paths are identical
/// inside and out, and the store survives a container restart.
pub(crate) async fn start(
    launch: &Launch,
    dir: &std::path::Path,
    ports: HostPorts,
) -> Result<ContainerAsync<GenericImage>, HarnessError> {
    reap_once().await;
    let (name, tag) = split_image(&image());
    let dir_s = dir.display().to_string();
    let config = launch.config_path.display().to_string();
    let mut request = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
        .with_cmd(["-c", config.as_str(), "-a", launch.listen_host.as_str()])
        .with_mount(Mount::bind_mount(dir_s.clone(), dir_s))
        .with_label(CONTAINER_LABEL, std::process::id().to_string())
        .with_startup_timeout(Duration::from_secs(30));
    for (k, v) in &launch.env {
        request = request.with_env_var(k, v);
    }
    if docker_host_network().await {
        request = request.with_network("host");
    } else {
        request = request
            .with_mapped_port(ports.client, ContainerPort::Tcp(4222))
            .with_mapped_port(ports.http, ContainerPort::Tcp(8222));
    }
    request
        .start()
        .await
        .map_err(|e| docker_err("starting the nats container", e))
}
