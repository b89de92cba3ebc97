//! The docker backend's side of a server: a container started through
//! testcontainers-rs, driven by the docker CLI where testcontainers has no call.

use std::path::Path;

use testcontainers::{ContainerAsync, GenericImage};

use crate::config::Launch;
use crate::docker::{self, HostPorts};
use crate::error::{HarnessError, HarnessErrorKind};

/// A container and its id (kept after the handle is gone, for the CLI).
pub(super) struct DockerServer {
    id: String,
    container: Option<Box<ContainerAsync<GenericImage>>>,
}

impl DockerServer {
    pub(super) async fn start(
        launch: &Launch,
        dir: &Path,
        ports: HostPorts,
    ) -> Result<Self, HarnessError> {
        let container = docker::start(launch, dir, ports)
            .await
            .map_err(|e| HarnessError::with_source(HarnessErrorKind::Start, "container", e))?;
        Ok(Self {
            id: container.id().to_string(),
            container: Some(Box::new(container)),
        })
    }

    pub(super) fn id(&self) -> &str {
        &self.id
    }

    pub(super) async fn is_running(&self) -> bool {
        match &self.container {
            Some(c) => c.is_running().await.unwrap_or(false),
            None => false,
        }
    }

    /// `docker <command> <id>`: kill, pause, unpause.
    pub(super) async fn cli(&self, command: &str) -> Result<(), HarnessError> {
        docker::cli(&[command, &self.id]).await.map(|_| ())
    }

    pub(super) async fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        docker::cli(&["kill", "-s", signal, &self.id])
            .await
            .map(|_| ())
    }

    pub(super) async fn stop(&self) -> Result<(), HarnessError> {
        if let Some(c) = &self.container {
            c.stop_with_timeout(Some(30)).await.map_err(|e| {
                HarnessError::with_source(HarnessErrorKind::Docker, "docker stop", e)
            })?;
        }
        Ok(())
    }

    pub(super) async fn start_again(&self) -> Result<(), HarnessError> {
        if let Some(c) = &self.container {
            c.start().await.map_err(|e| {
                HarnessError::with_source(HarnessErrorKind::Docker, "docker start", e)
            })?;
        }
        Ok(())
    }
}

impl Drop for DockerServer {
    fn drop(&mut self) {
        let Some(c) = self.container.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            // testcontainers removes it (blocking until done).
            drop(*c);
        } else {
            // Outside a runtime testcontainers' drop would panic: remove it
            // with the CLI and let the handle go without its async drop.
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v", self.id.as_str()])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            std::mem::forget(*c);
        }
    }
}
