//! The binary backend: a local `nats-server` process.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use crate::config::Launch;
use crate::error::{HarnessError, HarnessErrorKind};

/// Environment variable naming the nats-server binary.
pub(crate) const BIN_ENV: &str = "JETEVENTS_NATS_SERVER_BIN";

/// Finds the nats-server binary: `$JETEVENTS_NATS_SERVER_BIN`, then
/// `<workspace>/.tools/nats-server/nats-server`, then `nats-server` on `PATH`.
pub(crate) fn find_binary() -> Result<PathBuf, HarnessError> {
    if let Some(path) = std::env::var_os(BIN_ENV).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Ok(path);
        }
        return Err(HarnessError::new(
            HarnessErrorKind::BinaryNotFound,
            format!("{BIN_ENV}={} is not a file", path.display()),
        ));
    }
    let tools = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(".tools/nats-server/nats-server");
    if tools.is_file() {
        return Ok(tools);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(HarnessError::new(
        HarnessErrorKind::BinaryNotFound,
        format!(
            "set {BIN_ENV}, or install it to {} (nats/install-nats-server.sh), or put nats-server on PATH",
            tools.display()
        ),
    ))
}

struct SpawnRequest {
    command: Command,
    reply: tokio::sync::oneshot::Sender<io::Result<Child>>,
}

/// Children are spawned from one thread that lives as long as the process, because
/// PR_SET_PDEATHSIG fires when the *spawning thread* exits, not the process: a
/// server spawned from a test's thread would die when that test's thread ends.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        let spawned = std::thread::Builder::new()
            .name("jetevents-nats-spawner".into())
            .spawn(move || {
                while let Ok(mut request) = rx.recv() {
                    let _ = request.reply.send(request.command.spawn());
                }
            });
        if let Err(err) = spawned {
            // Without the thread every spawn reports this failure through the
            // dropped reply channel.
            eprintln!("jetevents-testcontainers: cannot start spawner thread: {err}");
        }
        Mutex::new(tx)
    })
}

/// Starts `nats-server -c <config> -a <host>` with the launch environment; output
/// goes to `log`.
pub(crate) async fn spawn(bin: &Path, launch: &Launch, log: &Path) -> Result<Child, HarnessError> {
    use std::os::unix::process::CommandExt;

    let start_err = |what: &str, e: io::Error| {
        HarnessError::with_source(HarnessErrorKind::Start, what.to_string(), e)
    };
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| start_err("opening the server log", e))?;
    let log_err = log_file
        .try_clone()
        .map_err(|e| start_err("opening the server log", e))?;
    let mut command = Command::new(bin);
    command
        .arg("-c")
        .arg(&launch.config_path)
        .arg("-a")
        .arg(&launch.listen_host)
        .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(log_err);
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only calls
    // async-signal-safe functions (prctl, getppid).
    unsafe {
        command.pre_exec(move || {
            // The server must not outlive the test process, even when it aborts.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let (reply, rx) = tokio::sync::oneshot::channel();
    spawner()
        .lock()
        .map_err(|_| HarnessError::new(HarnessErrorKind::Start, "spawner lock poisoned"))?
        .send(SpawnRequest { command, reply })
        .map_err(|_| HarnessError::new(HarnessErrorKind::Start, "spawner thread is gone"))?;
    rx.await
        .map_err(|_| HarnessError::new(HarnessErrorKind::Start, "spawner thread is gone"))?
        .map_err(|e| start_err(&format!("spawning {}", bin.display()), e))
}

/// Sends `signal` to the process.
pub(crate) fn signal(child: &Child, signal: libc::c_int) -> Result<(), HarnessError> {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(HarnessError::with_source(
            HarnessErrorKind::Io,
            format!("signal {signal} to {pid}"),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Temp dirs of servers start with this, then the pid of the process that
/// made them.
const STORE_DIR_PREFIX: &str = "jetevents-nats-";

/// The prefix of this process's server dirs: `jetevents-nats-{pid}-`.
pub(crate) fn store_dir_prefix() -> String {
    format!("{STORE_DIR_PREFIX}{}-", std::process::id())
}

/// Removes the server dirs of processes that no longer exist (a test binary
/// that aborted, or was killed, could not remove them), once per process.
pub(crate) fn reap_orphaned_dirs_once() {
    static REAPED: std::sync::Once = std::sync::Once::new();
    REAPED.call_once(|| {
        let removed = reap_orphaned_dirs(&std::env::temp_dir());
        if removed > 0 {
            eprintln!(
                "jetevents-testcontainers: removed {removed} server dirs of exited processes"
            );
        }
    });
}

/// Removes the server dirs in `temp` whose process is gone; returns how many.
pub fn reap_orphaned_dirs(temp: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(temp) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(owner) = name
            .to_str()
            .and_then(|name| name.strip_prefix(STORE_DIR_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if owner != std::process::id()
            && !pid_alive(owner)
            && std::fs::remove_dir_all(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Whether a process with this pid exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    if unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 {
        return false;
    }
    // A killed child of a dead parent may linger as a zombie until init reaps it.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => false,
    }
}

/// Whether the process is stopped by a signal (state `T` in `/proc/{pid}/stat`).
pub(crate) fn is_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        == Some('T')
}

/// The last lines of the server log, for error messages.
pub(crate) fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(15);
    lines[start..].join("\n")
}
