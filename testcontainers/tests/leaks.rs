//! Servers leave nothing behind: not when dropped, not when the test process dies.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::backends;
use jetevents_testcontainers::{pid_alive, Backend, NatsServer};

const CHILD_ENV: &str = "JETEVENTS_LEAK_CHILD";

async fn container_exists(id: &str) -> bool {
    tokio::process::Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", id])
        .output()
        .await
        .unwrap()
        .status
        .success()
}

async fn eventually(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done().await {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn dropping_a_server_removes_it() {
    for backend in backends().await {
        let server = NatsServer::builder()
            .backend(backend)
            .start()
            .await
            .unwrap();
        let dir = server.dir().unwrap().to_path_buf();
        assert!(dir.is_dir());
        let name = dir.file_name().unwrap().to_str().unwrap();
        let own_prefix = format!("jetevents-nats-{}-", std::process::id());
        assert!(
            name.starts_with(&own_prefix),
            "{name} does not name its process"
        );
        match backend {
            Backend::Binary => {
                let pid = server.pid().unwrap();
                assert!(pid_alive(pid));
                drop(server);
                assert!(!pid_alive(pid), "nats-server {pid} survived drop");
            }
            _ => {
                let id = server.container_id().unwrap();
                assert!(container_exists(&id).await);
                drop(server);
                assert!(!container_exists(&id).await, "container {id} survived drop");
            }
        }
        assert!(!dir.exists(), "{} survived drop", dir.display());
    }
}

/// Not a test on its own: the body of the child process spawned by
/// `an_aborted_test_process_leaves_nothing` (ignored, so it never passes
/// without running; without the env var it fails).
#[tokio::test]
#[ignore = "run as a child process by an_aborted_test_process_leaves_nothing"]
async fn leak_child_entry() {
    let backend = std::env::var(CHILD_ENV)
        .unwrap_or_else(|_| panic!("{CHILD_ENV} is set by the parent test"));
    let backend = if backend == "docker" {
        Backend::Docker
    } else {
        Backend::Binary
    };
    let server = NatsServer::builder()
        .backend(backend)
        .start()
        .await
        .unwrap();
    let mut out = std::io::stdout();
    writeln!(out, "LEAK-DIR={}", server.dir().unwrap().display()).unwrap();
    match (server.pid(), server.container_id()) {
        (Some(pid), _) => writeln!(out, "LEAK-PID={pid}").unwrap(),
        (_, Some(id)) => writeln!(out, "LEAK-CONTAINER={id}").unwrap(),
        _ => unreachable!(),
    }
    out.flush().unwrap();
    // Worse than a panic: no unwinding, so no Drop runs.
    std::process::abort();
}

#[tokio::test]
async fn an_aborted_test_process_leaves_nothing() {
    // Orphans are re-parented to us instead of init (which may not reap in a
    // container), so the killed server can be reaped and its pid is really gone.
    // SAFETY: prctl with integer arguments only.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    for backend in backends().await {
        let temp_root = private_temp_root();
        let name = if backend == Backend::Docker {
            "docker"
        } else {
            "binary"
        };
        let output = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "leak_child_entry",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, name)
            .env("TMPDIR", temp_root.path())
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "the child must die");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let dir = stdout
            .lines()
            .find_map(|l| l.split_once("LEAK-DIR=").map(|(_, v)| v.trim().to_owned()))
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| panic!("child printed no dir; stdout:\n{stdout}"));
        if let Some(pid) = stdout
            .lines()
            .find_map(|l| l.split_once("LEAK-PID=").map(|(_, v)| v))
        {
            let pid: u32 = pid.trim().parse().unwrap();
            eventually("nats-server outlived its aborted parent", async || {
                !pid_alive(pid)
            })
            .await;
        } else if let Some(id) = stdout
            .lines()
            .find_map(|l| l.split_once("LEAK-CONTAINER=").map(|(_, v)| v))
        {
            let id = id.trim().to_string();
            // The container outlives the aborted process until a reaper runs (the
            // first container of the next test process runs it automatically).
            assert!(container_exists(&id).await, "expected the orphan to exist");
            let removed = jetevents_testcontainers::reap_orphaned_containers()
                .await
                .unwrap();
            assert!(removed >= 1);
            assert!(!container_exists(&id).await, "container {id} not reaped");
        } else {
            panic!(
                "child printed no server id; stdout:\n{stdout}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        // Its dir too outlives it until a reaper runs (the next server start
        // of any test process runs it automatically; none looks into this
        // temp root).
        assert!(dir.is_dir(), "expected the orphaned dir to exist");
        assert_eq!(dir.parent(), Some(temp_root.path()));
        let removed = jetevents_testcontainers::reap_orphaned_dirs(temp_root.path());
        assert!(removed >= 1);
        assert!(!dir.exists(), "{} not reaped", dir.display());
    }
}

/// Not a test on its own: the body of the child process spawned by
/// `the_shared_server_is_removed_with_its_dir_at_exit` (ignored, so it never
/// passes without running; without the env var it fails).
#[tokio::test]
#[ignore = "run as a child process by the_shared_server_is_removed_with_its_dir_at_exit"]
async fn shared_child_entry() {
    assert!(
        std::env::var(SHARED_CHILD_ENV).is_ok(),
        "{SHARED_CHILD_ENV} is set by the parent test"
    );
    let server = jetevents_testcontainers::shared().await;
    let mut out = std::io::stdout();
    writeln!(out, "SHARED-DIR={}", server.dir().unwrap().display()).unwrap();
    out.flush().unwrap();
}

const SHARED_CHILD_ENV: &str = "JETEVENTS_SHARED_CHILD";

/// A temp root of the child's own (`TMPDIR`): no other process's reaper
/// looks into it.
fn private_temp_root() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("leaks-test-")
        .tempdir()
        .unwrap()
}

#[tokio::test]
async fn the_shared_server_is_removed_with_its_dir_at_exit() {
    let temp_root = private_temp_root();
    let output = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "shared_child_entry",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SHARED_CHILD_ENV, "1")
        .env("TMPDIR", temp_root.path())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}");
    let dir = stdout
        .lines()
        .find_map(|l| {
            l.split_once("SHARED-DIR=")
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("child printed no dir; stdout:\n{stdout}"));
    // Removed by the child's exit handler: no reaper looks into this root.
    assert!(dir.starts_with(&temp_root.path().display().to_string()));
    assert!(
        !std::path::Path::new(&dir).exists(),
        "{dir} outlived the process"
    );
}
