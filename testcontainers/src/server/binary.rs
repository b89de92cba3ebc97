//! The binary backend's side of a server: a local `nats-server` child process.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Mutex;

use crate::config::Launch;
use crate::error::{HarnessError, HarnessErrorKind};
use crate::process;

/// A running (or killed) nats-server process and what it takes to start it again.
pub(super) struct BinaryServer {
    bin: PathBuf,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

impl BinaryServer {
    /// Spawns nats-server with `launch`; its output goes to `dir/server.log`.
    pub(super) async fn spawn(launch: &Launch, dir: &Path) -> Result<Self, HarnessError> {
        let bin = process::find_binary()?;
        let log = dir.join("server.log");
        let child = process::spawn(&bin, launch, &log).await?;
        Ok(Self {
            bin,
            log,
            child: Mutex::new(Some(child)),
        })
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child
            .lock()
            .ok()
            .and_then(|c| c.as_ref().map(Child::id))
    }

    pub(super) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(super) fn log_tail(&self) -> String {
        process::log_tail(&self.log)
    }

    pub(super) fn is_running(&self) -> bool {
        match self.child.lock() {
            Ok(mut guard) => match guard.as_mut() {
                Some(c) => matches!(c.try_wait(), Ok(None)),
                None => false,
            },
            Err(_) => false,
        }
    }

    /// Sends `signal`; `Ok(false)` when no process runs.
    pub(super) fn signal(&self, signal: libc::c_int) -> Result<bool, HarnessError> {
        let guard = self
            .child
            .lock()
            .map_err(|_| HarnessError::new(HarnessErrorKind::Io, "lock poisoned"))?;
        match guard.as_ref() {
            Some(c) => process::signal(c, signal).map(|()| true),
            None => Ok(false),
        }
    }

    /// Sends `signal` to a process that must be running.
    pub(super) fn signal_running(&self, signal: libc::c_int) -> Result<(), HarnessError> {
        if self.signal(signal)? {
            Ok(())
        } else {
            Err(HarnessError::new(
                HarnessErrorKind::Io,
                "server not running",
            ))
        }
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) the process and waits until
    /// the kernel reports it so: a signal is only queued when `kill` returns,
    /// and a test must not see the server answer after `pause`.
    pub(super) async fn set_stopped(&self, stopped: bool) -> Result<(), HarnessError> {
        let signal = if stopped {
            libc::SIGSTOP
        } else {
            libc::SIGCONT
        };
        self.signal_running(signal)?;
        let pid = self.pid().unwrap_or_default();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while process::is_stopped(pid) != stopped {
            if std::time::Instant::now() >= deadline {
                return Err(HarnessError::new(
                    HarnessErrorKind::Io,
                    format!(
                        "process {pid} not {} after 5 s",
                        if stopped { "stopped" } else { "continued" }
                    ),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        Ok(())
    }

    pub(super) fn kill(&mut self) {
        if let Some(mut c) = self.child.get_mut().ok().and_then(Option::take) {
            kill_child(&mut c);
        }
    }

    /// Spawns the process again with `launch` (the old one, if any, is killed).
    pub(super) async fn respawn(&self, launch: &Launch) -> Result<(), HarnessError> {
        let new = process::spawn(&self.bin, launch, &self.log).await?;
        if let Ok(mut guard) = self.child.lock() {
            if let Some(mut old) = guard.replace(new) {
                kill_child(&mut old);
            }
        }
        Ok(())
    }
}

impl Drop for BinaryServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill_child(child: &mut Child) {
    // Already exited is fine; the wait reaps it either way. A stopped
    // (SIGSTOPped) process dies of SIGKILL too.
    let _ = child.kill();
    let _ = child.wait();
}
