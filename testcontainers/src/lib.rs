//! Real NATS servers for jetevents' integration tests.
//!
//! Every integration test gets a real `nats-server` (JetStream, file store in a
//! temporary directory, random ports on 127.0.0.1) that is killed and cleaned up
//! when dropped. Modelled on nats.rs's `nats-server` test crate; this crate does not
//! depend on a NATS client (readiness and cluster state come from the monitoring
//! port over plain HTTP).
//!
//! ```no_run
//! # async fn f() -> Result<(), jetevents_testcontainers::HarnessError> {
//! use jetevents_testcontainers::NatsServer;
//! let mut server = NatsServer::start().await?;
//! // let client = async_nats::connect(server.url()).await?;
//! server.kill().await?;
//! server.restart().await?; // same ports, same store: streams survive
//! # Ok(()) }
//! ```
//!
//! # Backends
//!
//! - [`Backend::Docker`]: a container through testcontainers-rs. The temp dir
//!   (config, certificates, store) is bind mounted at the same path, so the store
//!   survives `kill` + `restart`. Containers are labelled
//!   `jetevents-testcontainers=<pid of the test process>`; the first container a
//!   process starts first removes containers of processes that no longer exist (see
//!   [`reap_orphaned_containers`]).
//! - [`Backend::Binary`]: a local `nats-server` process, always with `-a 127.0.0.1`.
//!   It is spawned with `PR_SET_PDEATHSIG(SIGKILL)` from one long-lived spawner
//!   thread, so it dies with the test process even when that aborts.
//! - [`Backend::External`]: an already running server at `$NATS_URL`; `kill`,
//!   `stop`, `restart` and `lame_duck` return [`HarnessErrorKind::Unsupported`].
//!
//! A server's temp dir is named `jetevents-nats-<pid of the test process>-*`. It
//! goes with the server when dropped, and with the [`shared`] server when the
//! process exits; the first server a process starts removes the dirs of processes
//! that no longer exist (see [`reap_orphaned_dirs`]).
//!
//! Servers run with the config files in this crate's `nats/` folder
//! (`single.conf`, `cluster-node.conf`, `auth-*.conf`, `tls.conf`, `mtls.conf`),
//! embedded at compile time and filled in through environment variables.
//! Certificates for TLS are generated at test time with rcgen.
//!
//! # Clusters and faults
//!
//! [`NatsCluster`] starts three routed JetStream nodes. Every route
//! connection goes through a [`FaultProxy`] of its own pair of nodes, so
//! [`NatsCluster::isolate`] and [`NatsCluster::partition`] cut the cluster
//! into sides (clients stay connected to their node) until
//! [`NatsCluster::heal`]; [`NatsServer::pause`] stops a node's process
//! (SIGSTOP, or `docker pause`) until [`NatsServer::resume`]. Loopback only.
//!
//! # Environment variables
//!
//! | Variable | Meaning |
//! |---|---|
//! | `JETEVENTS_TEST_BACKEND` | `docker`, `binary` or `external`. Unset: docker when an engine answers and the image is present locally, else binary. |
//! | `NATS_URL` | the server for `external` (default `nats://127.0.0.1:4222`). |
//! | `NATS_MONITOR_URL` | its monitoring URL (default `http://127.0.0.1:8222`). |
//! | `JETEVENTS_NATS_SERVER_BIN` | the nats-server binary; else `<workspace>/.tools/nats-server/nats-server`, else `nats-server` on `PATH`. |
//! | `JETEVENTS_NATS_IMAGE` | docker image (default `nats:2.15.1`; CI uses `jetevents/nats:2.15.1`). Its entrypoint must be nats-server. |
//! | `JETEVENTS_DOCKER_NETWORK` | `host`: host networking, server bound to 127.0.0.1 on ports we pick (needed for clusters). Any other value: ports 4222/8222 mapped to free host ports on the host. Unset: mapping, or host networking when the engine has no `bridge` network (`dockerd --bridge=none`). |
//! | `JETEVENTS_REQUIRE_DOCKER` | `1`: tests that run a scenario on docker fail when no engine/image is available instead of skipping (read by the tests, see [`docker_required`]). |

mod cluster;
mod config;
mod docker;
mod error;
mod http;
mod partition;
mod process;
pub mod proxy;
mod server;
mod shared;

pub use cluster::NatsCluster;
pub use config::{Auth, NkeyUser, Permissions, Tls, TlsFiles};
pub use docker::{
    docker_available, docker_host_network, reap_orphaned_containers, CONTAINER_LABEL,
};
pub use error::{HarnessError, HarnessErrorKind};
pub use process::{pid_alive, reap_orphaned_dirs};
pub use proxy::{FaultMode, FaultProxy};
pub use server::{Backend, NatsServer, NatsServerBuilder};
pub use shared::{shared, try_shared, SharedServer};

/// Env var that makes docker mandatory for the tests.
pub const REQUIRE_DOCKER_ENV: &str = "JETEVENTS_REQUIRE_DOCKER";

/// Whether `JETEVENTS_REQUIRE_DOCKER=1`.
///
/// ```
/// let _strict = jetevents_testcontainers::docker_required();
/// ```
pub fn docker_required() -> bool {
    std::env::var(REQUIRE_DOCKER_ENV).is_ok_and(|v| v == "1")
}

/// The backends a test should cover: always [`Backend::Binary`], plus
/// [`Backend::Docker`] when [`docker_available`]. Prints a note when docker is
/// skipped; returns an error when it is missing but [`docker_required`].
///
/// ```no_run
/// # async fn f() -> Result<(), jetevents_testcontainers::HarnessError> {
/// for backend in jetevents_testcontainers::test_backends().await? {
///     let server = jetevents_testcontainers::NatsServer::builder().backend(backend).start().await?;
///     # let _ = server;
/// }
/// # Ok(()) }
/// ```
pub async fn test_backends() -> Result<Vec<Backend>, HarnessError> {
    let mut backends = vec![Backend::Binary];
    if docker_available().await {
        backends.push(Backend::Docker);
    } else if docker_required() {
        return Err(HarnessError::new(
            HarnessErrorKind::Docker,
            "JETEVENTS_REQUIRE_DOCKER=1 but no docker engine answers or the image is missing",
        ));
    } else {
        eprintln!("docker backend skipped: no docker engine answers or the image is missing");
    }
    Ok(backends)
}
