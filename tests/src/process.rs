//! The client as a live process the test controls: its own terminalwire
//! home (so files can be put in the authority's storage before a run and
//! checked after it), its pid, its streams; and memory figures from `/proc`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::client_binary;

/// A terminalwire home for client runs, deleted when dropped.
#[derive(Debug)]
pub struct ClientHome {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Default for ClientHome {
    fn default() -> Self {
        ClientHome::new()
    }
}

impl ClientHome {
    /// A new, empty home in a temporary folder (symlinks resolved, so the
    /// paths the client reports are the paths the test uses).
    pub fn new() -> ClientHome {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        ClientHome { _dir: dir, root }
    }

    /// The home folder (`TERMINALWIRE_HOME`).
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The storage folder of the authority of `url` (a loopback
    /// `ws://127.0.0.1:PORT/...` URL): created (mode 0700) if missing.
    pub fn storage_dir(&self, url: &str) -> PathBuf {
        let authority = url
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(rest))
            .unwrap();
        let storage = self
            .root
            .join("authorities")
            .join(authority)
            .join("storage");
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&storage)
            .unwrap();
        storage
    }

    /// `terminalwire ARGS...` with this home: stdin null, stdout and stderr
    /// piped, killed when dropped. Change what the test needs, then spawn.
    pub fn command<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = tokio::process::Command::new(client_binary());
        command
            .args(args)
            .env("TERMINALWIRE_HOME", &self.root)
            .env_remove("CLICOLOR_FORCE")
            .env_remove("TERMINALWIRE_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs `terminalwire ARGS...` with this home to its end; fails the
    /// test if it runs longer than [`crate::CLIENT_DEADLINE`].
    pub async fn run<I, S>(&self, args: I) -> std::process::Output
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let child = self.command(args).spawn().unwrap();
        tokio::time::timeout(crate::CLIENT_DEADLINE, child.wait_with_output())
            .await
            .expect("the client hung")
            .unwrap()
    }
}

/// A `kB` figure of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in bytes;
/// `pid` `None` is this process. `None` when the process or field is gone.
pub fn proc_status_bytes(pid: Option<u32>, field: &str) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// Samples this process's resident memory on a thread until dropped, to
/// find how far it rose above where it started.
#[derive(Debug)]
pub struct RssSampler {
    baseline: u64,
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Default for RssSampler {
    fn default() -> Self {
        RssSampler::start()
    }
}

impl RssSampler {
    /// Starts sampling `VmRSS` every 10 ms.
    pub fn start() -> RssSampler {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let baseline = proc_status_bytes(None, "VmRSS").unwrap();
        let peak = std::sync::Arc::new(AtomicU64::new(baseline));
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let peak = peak.clone();
            let stop = stop.clone();
            move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Some(rss) = proc_status_bytes(None, "VmRSS") {
                        peak.fetch_max(rss, Ordering::Relaxed);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            }
        });
        RssSampler {
            baseline,
            peak,
            stop,
            thread: Some(thread),
        }
    }

    /// The highest sample so far minus the first.
    pub fn growth(&self) -> u64 {
        self.peak
            .load(std::sync::atomic::Ordering::Relaxed)
            .saturating_sub(self.baseline)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The process id of the running client `child`.
fn pid_of(child: &tokio::process::Child) -> rustix::process::Pid {
    child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32))
        .expect("the client is running")
}

/// Sends `signal` to the client process `child` again and again (two sent
/// at once would be one: a second Ctrl-C must come after the first) until
/// it ends; its exit code. Fails the test when it has not ended within
/// `within`, saying it `kept` doing what the test describes.
pub async fn signal_until_ended(
    child: &mut tokio::process::Child,
    signal: rustix::process::Signal,
    within: std::time::Duration,
    kept: &str,
) -> Option<i32> {
    let pid = pid_of(child);
    let ended = tokio::time::timeout(within, async {
        loop {
            rustix::process::kill_process(pid, signal).expect("the signal is sent");
            if let Ok(status) =
                tokio::time::timeout(std::time::Duration::from_millis(200), child.wait()).await
            {
                return status.expect("the client's status").code();
            }
        }
    })
    .await;
    ended.unwrap_or_else(|_| panic!("the client kept {kept}"))
}

/// Sends `signal` to the client process `child` and waits for it to end;
/// its exit code. Fails the test when it has not ended within `within`,
/// saying it `kept` doing what the test describes.
pub async fn signal_and_wait(
    child: &mut tokio::process::Child,
    signal: rustix::process::Signal,
    within: std::time::Duration,
    kept: &str,
) -> Option<i32> {
    let pid = pid_of(child);
    rustix::process::kill_process(pid, signal).expect("the signal is sent");
    tokio::time::timeout(within, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the client kept {kept}"))
        .expect("the client's status")
        .code()
}
